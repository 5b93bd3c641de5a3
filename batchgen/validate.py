"""Check a manifest in three layers and expand it (PRODUCT.md §4); `check_manifest` is the API.

1. YAML (manifest.py): syntax, safe tags only, no duplicate keys, size/alias/depth limits.
   When it fails, its problems are all there is to say.
2. Structure, against the JSON Schema generated from the catalog (schema.py, without its
   per-model rules: layer 3 checks those facts on every expanded job).
3. Every expanded job (expand.py) against the catalog (`catalog.check_request`), along
   with rows files, templates and ids.

All problems at once: a structural problem stops only what it makes meaningless. A broken
field (on a job or in `defaults`) is unknown to the jobs that would take it: not filled in
and not reported again, while the rest of each job is still checked. Only a job that cannot
be expanded (not a mapping, a broken matrix, rows or takes) is left out, and every job
only when the manifest has no usable `jobs` list.

Problems of layers 2 and 3 are reported together, sorted by file, line and column. Nothing
is written anywhere.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Hashable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from jsonschema import ValidationError

from batchgen import catalog, manifest, schema
from batchgen.bulk import collector_paused
from batchgen.errors import ManifestInvalid
from batchgen.expand import ExpandedJob, Expansion
from batchgen.job import Campaign, Job, canonical_json
from batchgen.manifest import Document, KeyPath, format_path
from batchgen.money import to_micros
from batchgen.problems import Problems, shown


@dataclass
class Manifest:
    """A valid manifest: its campaign and its jobs, expanded, in manifest order."""

    campaign: Campaign
    jobs: list[Job]


def check_manifest(path: str | Path, max_jobs: int = 100_000) -> Manifest:
    """Load, validate (all three layers) and expand the manifest at `path`.

    Raises ManifestInvalid listing every problem (sorted by file and line), and nothing
    else for bad input. Catalog defaults are not baked into the jobs (Job.request() adds
    them), so a catalog change does not change what the manifest says.
    """
    with collector_paused():  # 100,000 jobs, no cycles (bulk.py)
        return _check(path, max_jobs)


def _check(path: str | Path, max_jobs: int) -> Manifest:
    doc = manifest.load(path)
    problems = Problems()
    damage = _check_structure(doc, problems)
    campaign = _campaign(doc, problems)
    jobs: list[ExpandedJob] = []
    if not damage.no_jobs:
        data = doc.data
        defaults = data.get("defaults", {}) if isinstance(data.get("defaults", {}), dict) else {}
        sound_defaults = {
            name: value
            for name, value in defaults.items()
            if name in schema.JOB_FIELDS and name not in damage.defaults
        }
        sound = [
            (i, job, frozenset(damage.fields.get(i, ())))
            for i, job in enumerate(data["jobs"])
            if i not in damage.jobs
        ]
        expansion = Expansion(
            doc, campaign.name, sound_defaults, problems, max_jobs, frozenset(damage.defaults)
        )
        jobs = expansion.run(sound)
        _check_catalog(expansion, jobs, problems)
    if problems:
        found = problems.sorted()
        named = campaign.name and not any(p.path == "campaign" for p in found)
        raise ManifestInvalid(found, campaign.name if named else None)
    return Manifest(campaign, [expanded.job for expanded in jobs])


def _campaign(doc: Document, problems: Problems) -> Campaign:
    """The campaign the manifest names (with the budget checked as money)."""
    data = doc.data if isinstance(doc.data, dict) else {}
    name = data.get("campaign")
    budget = data.get("budget_usd")
    budget_micros = None
    if isinstance(budget, int | float) and not isinstance(budget, bool) and budget >= 0:
        try:
            if not math.isfinite(budget):
                raise ValueError("not finite")
            budget_micros = to_micros(Decimal(str(budget)))
        except ValueError:
            where = (doc.file, *doc.position(("budget_usd",)))
            message = f"budget_usd {budget} must be a finite amount in whole micro-dollars"
            problems.add(where, "budget_usd", message)
    return Campaign(name if isinstance(name, str) else "", doc.file, doc.sha256, budget_micros)


# --- layer 2: structure ----------------------------------------------------------------


@dataclass
class Damage:
    """What the schema's problems make meaningless to check further."""

    no_jobs: bool = False  # no usable jobs list: nothing to expand
    defaults: set[str] = field(default_factory=set)  # broken default fields
    jobs: set[int] = field(default_factory=set)  # jobs that cannot be expanded
    fields: dict[int, set[str]] = field(default_factory=dict)  # a job's broken fields

    def note(self, path: KeyPath, unknown_key: bool) -> None:
        """Record what a problem at `path` breaks (an unknown key breaks nothing else)."""
        if not path or path == ("jobs",):
            self.no_jobs = True
        elif path[0] == "defaults":
            if len(path) == 1:
                self.defaults.update(schema.JOB_FIELDS)  # not a mapping: every default
            elif not unknown_key:
                self.defaults.add(str(path[1]))
        elif path[0] == "jobs" and isinstance(path[1], int):
            index = path[1]
            if len(path) == 2 or path[2] in schema.EXPANDERS:
                self.jobs.add(index)
            elif not unknown_key:
                self.fields.setdefault(index, set()).add(str(path[2]))


def _check_structure(doc: Document, problems: Problems) -> Damage:
    """Report every schema error; return what they break."""
    damage = Damage()
    for error in schema.validator().iter_errors(doc.data):
        for path, message, at_key in _schema_problems(error):
            position = doc.key_position(path) if at_key else doc.position(path)
            problems.add((doc.file, *position), format_path(path), message)
            damage.note(path, unknown_key=at_key and error.validator == "additionalProperties")
    return damage


_TYPE_WORDS = {
    "string": "text",
    "integer": "a whole number",
    "number": "a number",
    "boolean": "true/false",
    "object": "a mapping",
    "array": "a list",
    "null": "null",
}


def _schema_problems(error: ValidationError) -> list[tuple[KeyPath, str, bool]]:
    """One schema error as (key path, message, point at the key rather than the value)."""
    path: KeyPath = tuple(error.absolute_path)
    value, rule, kind = error.instance, error.validator_value, error.validator
    name = _name(path)
    if kind == "additionalProperties":
        allowed = list(error.schema.get("properties", {}))
        extra = [key for key in value if key not in allowed]
        return [((*path, key), _unknown_key(key, allowed), True) for key in extra]
    if kind == "required":
        missing = [key for key in rule if key not in value]
        return [((*path, key), f"{key} is required", False) for key in missing]
    if kind == "type":
        if not path and value is None:
            return [(path, "the manifest is empty (it needs version, campaign and jobs)", False)]
        types = [_TYPE_WORDS.get(t, t) for t in ([rule] if isinstance(rule, str) else rule)]
        words = ", ".join(types[:-1]) + " or " + types[-1] if len(types) > 1 else types[0]
        message = f"{name} must be {words} (got {_describe(value)})"
    elif kind == "const":
        message = f"{name} must be {rule!r} (got {_describe(value)})"
    elif kind == "enum":
        choices = ", ".join(map(str, rule))
        if isinstance(value, dict | list):
            message = f"{name} must be one of: {choices} (got {_describe(value)})"
        else:
            message = f"{name} {_describe(value)} is not one of: {choices}"
    elif kind == "pattern":
        rule_text = schema.CAMPAIGN_RULE if rule == schema.CAMPAIGN_PATTERN else rule
        message = f"{name} {_describe(value)} is not allowed: {rule_text}"
    elif kind == "minimum":
        message = f"{name} must be at least {rule} (got {_describe(value)})"
    elif kind == "maximum":
        message = f"{name} must be at most {rule:,} (got {_describe(value)})"
        if path == ("budget_usd",):
            message += "; leave budget_usd out for no cap"
    elif kind in ("minItems", "minLength", "minProperties") and rule == 1:
        message = f"{name} must not be empty"
    else:
        message = f"{name}: {error.message}"
    return [(path, message, False)]


def _name(path: KeyPath) -> str:
    """How a message names the value at `path`: from its last key on ("tags[0]")."""
    keys = [i for i, step in enumerate(path) if isinstance(step, str)]
    return format_path(path[keys[-1] :]) if keys else format_path(path)


def _unknown_key(key: str, allowed: list[str]) -> str:
    close = difflib.get_close_matches(key, allowed, n=1)
    if close:
        return f"unknown key {key!r} (did you mean {close[0]!r}?)"
    return f"unknown key {key!r} (allowed: {', '.join(allowed)})"


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return shown(value)


# --- layer 3: the catalog --------------------------------------------------------------


def _check_catalog(expansion: Expansion, jobs: list[ExpandedJob], problems: Problems) -> None:
    """catalog.check_request on every job, once per distinct shape (prompt text aside).

    100,000 jobs that differ only in their prompt cost one check; each job's problems
    still point at where its own values were written.
    """
    found: dict[Hashable, list[tuple[str, str]]] = {}
    for expanded in jobs:
        job = expanded.job
        shape: Hashable
        if job.media is None:  # the common case: _shape's answer without the request dict
            prompt = job.prompt
            shape = (job.model, job.duration, job.ratio, job.variant, job.ref_mode,
                     job.resolution, type(job.duration),
                     isinstance(prompt, str) and bool(prompt.strip()))  # fmt: skip
        else:
            shape = _shape(_request(job))
        if shape not in found:
            found[shape] = catalog.check_request(_request(job))
        for name, message in found[shape]:
            if name.partition("[")[0] in expanded.unknown:
                continue  # its problem is already reported where it was written
            where = expansion.position(expanded, name)
            problems.add(where, expanded.jobpath, message, repeats=(where, message))


def _request(job: Job) -> dict[str, Any]:
    """What catalog.check_request checks of a job."""
    return {
        "model": job.model,
        "prompt": job.prompt,
        "duration": job.duration,
        "ratio": job.ratio,
        "variant": job.variant,
        "ref_mode": job.ref_mode,
        "media": job.media,
        "resolution": job.resolution,
    }


def _shape(request: dict[str, Any]) -> Hashable:
    """What check_request's answer depends on: every value but the prompt's and urls' text."""
    prompt = request["prompt"]
    prompt_given = isinstance(prompt, str) and bool(prompt.strip())
    media = request["media"]
    if media is None:  # the common case; every other value is text or a number
        # type(): 5.0 == 5 as a key, but check_request accepts only the integer.
        return (*(request[name] for name in _SCALARS), type(request["duration"]), prompt_given)
    shape = {**request, "prompt": prompt_given}
    if isinstance(media, list):
        shape["media"] = [
            {**item, "url": isinstance(item.get("url"), str) and bool(item["url"].strip())}
            if isinstance(item, dict)
            else item
            for item in media
        ]
    return canonical_json(shape)


_SCALARS = ("model", "duration", "ratio", "variant", "ref_mode", "resolution")
