"""Expand a manifest's jobs (PRODUCT.md §3): defaults, rows × matrix × takes, templates, ids.

Input: the parts of a loaded manifest whose structure is sound, and the fields the schema
found broken (in `defaults` or on a job). Output: one `ExpandedJob` per job to run (a
`batchgen.job.Job` plus where each of its values was written, so a problem can point at
it), and problems. Catalog rules are checked afterwards, by validate.py.

All problems at once (PRODUCT.md §4): a field whose value is already known to be wrong
(a schema problem, a default that is, or a template that could not be rendered) is
*unknown* for the job: it is neither filled from `defaults` nor reported again, and the
rest of the job is still expanded and checked (`ExpandedJob.unknown`).
Reading rows files is rows.py's job and template syntax templates.py's; this module
decides how their rows, variables and templates combine into jobs.

Choices where §3 is silent:
- Order: for each row of `rows`, for each matrix combination (key order, last key varying
  fastest), takes 1..N. Without `takes`, a job has one take, and `{take}` is 1.
- A field is set in one place per job: on the job, by its matrix, or by its rows file;
  two of them is a problem. `defaults` fill what none of them sets, and only the fields
  the job's model takes (so `duration: 5` in defaults does not reach a veo3.1 job).
- tags: a job's own tags (or its matrix's or rows') replace the defaults' tags, never merge.
- Template variables: matrix keys, rows columns, `take`, and the job's scalar fields
  model, duration, ratio, variant, ref_mode, resolution, with the catalog default when the
  manifest leaves a field out (`{duration}` is the duration that will be sent).
- Templates are rendered in id, prompt and media urls written in the YAML (on the job, in
  defaults or in a matrix). Values read from a rows file are data, taken literally.
  A template that uses a rows column whose cell is empty in the job's row is a problem,
  placed at the cell (an empty cell no template uses is fine).
- A generated id is `job-` + 10 hex digits of SHA-256 over the canonical JSON of the job's
  set fields (manifest defaults applied, catalog defaults not, empty lists left out) and
  its take number: it does not depend on the job's position in the manifest.
- An id must be usable as a file name: 1-200 characters, no '/', '\\' or control
  characters, not '.' or '..'.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
from dataclasses import dataclass, field
from functools import cache
from itertools import product
from typing import Any

from batchgen import catalog
from batchgen.job import Job, canonical_json
from batchgen.manifest import Document, KeyPath, format_path
from batchgen.problems import Position, Problems, shown
from batchgen.rows import Row, RowsFile, empty_cell, read_rows
from batchgen.schema import JOB_FIELDS, SCALAR_VARIABLES
from batchgen.templates import as_text, parse_template

MAX_ID_LENGTH = 200  # ids become file names (PRODUCT.md §9)

ALWAYS_TAKEN = frozenset({"id", "model", "tags"})  # fields every model takes (not sent)

_UNSAFE_ID = re.compile(r"[\x00-\x1f\x7f/\\]")
_KNOWN: frozenset[str] = frozenset()  # shared by every job whose values are all known


@dataclass(eq=False)
class JobSpec:
    """One entry of the manifest's `jobs`, ready to expand."""

    index: int
    own: dict[str, Any]  # job fields written on the job itself
    matrix_keys: list[str]
    matrix_values: list[list[Any]]
    matrix_fields: list[tuple[str, int]]  # (field, its index in matrix_keys)
    takes: int
    rows: RowsFile | None
    known: frozenset[str]  # variables its templates may use
    broken: frozenset[str] = frozenset()  # fields written on it that the schema refused
    # (variable, its index in matrix_keys, each value's text): the matrix keys that are
    # template variables only, spelled once rather than once per expanded job.
    matrix_texts: list[tuple[str, int, list[str]]] = field(default_factory=list)

    @property
    def path(self) -> KeyPath:
        return ("jobs", self.index)

    @property
    def size(self) -> int:
        return (
            (len(self.rows.rows) if self.rows else 1)
            * math.prod(len(values) for values in self.matrix_values)
            * self.takes
        )


@dataclass(slots=True, eq=False)
class ExpandedJob:
    """A job to run, and enough about its origin to say where each value was written."""

    job: Job
    spec: JobSpec
    row: Row | None
    combo: tuple[int, ...]  # index of the value taken from each matrix key
    take: int
    unknown: frozenset[str] = frozenset()  # fields whose problem is already reported

    @property
    def jobpath(self) -> str:
        if "id" in self.unknown:
            return f"jobs[{self.spec.index}]"
        return f"jobs[{self.spec.index}] ({self.job.id})"


@dataclass(slots=True, eq=False)
class _Draft:
    """An expanded job while its fields are merged and its templates rendered."""

    spec: JobSpec
    row: Row | None
    combo: tuple[int, ...]
    take: int
    fields: dict[str, Any]
    unknown: set[str]
    id: str | None = None

    @property
    def jobpath(self) -> str:
        index = self.spec.index
        return f"jobs[{index}] ({self.id})" if self.id is not None else f"jobs[{index}]"


@dataclass
class Expansion:
    """Expands the schema-valid jobs of one manifest; see the module docstring."""

    doc: Document
    campaign: str
    defaults: dict[str, Any]
    problems: Problems
    max_jobs: int
    broken_defaults: frozenset[str] = frozenset()  # refused by the schema: unknown values
    jobs: list[ExpandedJob] = field(default_factory=list)
    _rows_files: dict[str, RowsFile] = field(default_factory=dict)
    _ids: dict[str, ExpandedJob] = field(default_factory=dict)
    _defaults_by_model: dict[Any, dict[str, Any]] = field(default_factory=dict)

    def run(self, jobs: list[tuple[int, dict[str, Any], frozenset[str]]]) -> list[ExpandedJob]:
        """Expand `jobs` (index in the manifest, job, its fields the schema refused) in
        order; problems go to `problems`."""
        specs = [
            spec
            for index, job, broken in jobs
            if (spec := self._spec(index, job, broken)) is not None
        ]
        total = sum(spec.size for spec in specs)
        if total > self.max_jobs:
            more = "more than " if any(s.rows and s.rows.truncated for s in specs) else ""
            self.problems.add(
                self._at(("jobs",)),
                "jobs",
                f"the manifest expands to {more}{total:,} jobs; "
                f"the limit is {self.max_jobs:,} (--max-jobs)",
            )
            return []
        for spec in specs:
            self._expand(spec)
        return self.jobs

    # where things are

    def _at(self, path: KeyPath) -> Position:
        return (self.doc.file, *self.doc.position(path))

    def position(self, expanded: ExpandedJob, name: str) -> Position:
        """Where the value of field `name` (or "media[2]") of an expanded job was written."""
        base = name.partition("[")[0]
        present = getattr(expanded.job, base, None) not in (None, [])
        return self._where(expanded.spec, expanded.row, expanded.combo, name, present)

    def _where(
        self,
        spec: JobSpec,
        row: Row | None,
        combo: tuple[int, ...],
        name: str,
        present: bool,
        below: KeyPath = (),
    ) -> Position:
        """Where field `name` came from: the matrix, the rows file, the job, or defaults.

        The sources never overlap (see `_spec`), so the first that sets the field is it.
        `present` says whether the job has the field at all (else: the job's own position).
        """
        base, _, rest = name.partition("[")
        item: KeyPath = (int(rest[:-1]),) if rest else ()
        if base in spec.matrix_keys:
            k = spec.matrix_keys.index(base)
            return self._at((*spec.path, "matrix", base, combo[k], *item, *below))
        if row is not None and base in row.fields:
            assert spec.rows is not None
            return (spec.rows.file, row.line, row.columns.get(base, 1) if row.columns else 1)
        if base in spec.own:
            return self._at((*spec.path, base, *item, *below))
        if present and base in self.defaults:
            return self._at(("defaults", base, *item, *below))
        return self._at(spec.path)

    # preparing a job

    def _spec(self, index: int, job: dict[str, Any], broken: frozenset[str]) -> JobSpec | None:
        path: KeyPath = ("jobs", index)
        own = {name: job[name] for name in JOB_FIELDS if name in job and name not in broken}
        matrix: dict[str, list[Any]] = job.get("matrix", {})
        rows = self._rows(index, job["rows"]) if "rows" in job else None
        ok = rows is not None or "rows" not in job
        for key in matrix:
            if key == "take":
                message = "take is the take number (1..takes), not a matrix key"
                self._spec_problem((*path, "matrix", key), message)
                ok = False
            elif key in own:
                message = f"{key} is set both on the job and by its matrix"
                self._spec_problem((*path, "matrix", key), message)
                ok = False
        if rows is not None:
            for column in rows.columns:
                clash = None
                if column == "take":
                    clash = "take is the take number (1..takes), not a column"
                elif column in own:
                    clash = f"column {column} sets {column}, which the job sets too"
                elif column in matrix:
                    clash = f"column {column} is also a key of the job's matrix"
                if clash:
                    where = (rows.file, rows.header_line, 1)
                    self.problems.add(where, format_path(path), clash)
                    ok = False
        if not ok:
            return None
        known = {"take", *SCALAR_VARIABLES}
        known.update(key for key in matrix if key not in JOB_FIELDS)
        if rows is not None:
            known.update(column for column in rows.columns if column not in JOB_FIELDS)
        keys = list(matrix)
        return JobSpec(
            index,
            own,
            keys,
            list(matrix.values()),
            [(key, k) for k, key in enumerate(keys) if key in JOB_FIELDS],
            int(job.get("takes", 1)),
            rows,
            frozenset(known),
            broken,
            [
                (key, k, [as_text(value) for value in matrix[key]])
                for k, key in enumerate(keys)
                if key not in JOB_FIELDS
            ],
        )

    def _spec_problem(self, path: KeyPath, message: str) -> None:
        where = (self.doc.file, *self.doc.key_position(path))
        self.problems.add(where, format_path(path), message)

    def _rows(self, index: int, name: str) -> RowsFile | None:
        """The job's rows file, read once per file; its problems reported for this job."""
        file = os.path.join(os.path.dirname(self.doc.file), name)
        rows = self._rows_files.get(file)
        if rows is None:
            rows = self._rows_files[file] = read_rows(file, limit=self.max_jobs + 1)
        path: KeyPath = ("jobs", index, "rows")
        if rows.error:
            self.problems.add(self._at(path), format_path(path), rows.error)
            return None
        for line, col, message in rows.problems:
            self.problems.add((rows.file, line, col), f"jobs[{index}]", message)
        if not rows.rows and not rows.problems:
            self.problems.add(self._at(path), format_path(path), f"rows file {file} has no rows")
            return None
        return rows

    # expanding a job

    def _expand(self, spec: JobSpec) -> None:
        rows: list[Row | None] = list(spec.rows.rows) if spec.rows else [None]
        combos = list(product(*(range(len(values)) for values in spec.matrix_values)))
        # Nothing unknown (the usual case): defaults fill in with one dict merge per job.
        clean = not spec.broken and not self.broken_defaults
        default_model = self.defaults.get("model")
        for row, combo, take in product(rows, combos, range(1, spec.takes + 1)):
            fields = dict(spec.own)
            if row is not None:
                fields.update(row.fields)
            for key, k in spec.matrix_fields:
                fields[key] = spec.matrix_values[k][combo[k]]
            if clean:
                fields = {**self._defaults_taken(fields.get("model", default_model)), **fields}
                draft = _Draft(spec, row, combo, take, fields, set())
            else:
                draft = _Draft(spec, row, combo, take, fields, self._unknown(spec, fields))
            self._render(draft)
            self._add(draft)

    def _unknown(self, spec: JobSpec, fields: dict[str, Any]) -> set[str]:
        """Fill in a job's defaults, leaving out the fields whose values are unknown (broken
        on the job or in defaults): those, which `fields` then lacks."""
        unknown = set(spec.broken)
        if "model" not in fields and "model" in self.broken_defaults:
            unknown.add("model")
        model = None if "model" in unknown else fields.get("model", self.defaults.get("model"))
        for name, value in self._defaults_taken(model).items():
            if name not in unknown:
                fields.setdefault(name, value)
        unknown.update(
            name for name in self.broken_defaults if name not in fields and _takes(model, name)
        )
        return unknown

    def _defaults_taken(self, model_name: Any) -> dict[str, Any]:
        """The defaults that apply to a job of `model_name` (all of them if it is unknown)."""
        key = model_name if isinstance(model_name, str) else None
        taken = self._defaults_by_model.get(key)
        if taken is None:
            taken = {name: v for name, v in self.defaults.items() if _takes(key, name)}
            self._defaults_by_model[key] = taken
        return taken

    def _render(self, draft: _Draft) -> None:
        """Render the templates of a draft's id, prompt and media urls. A field whose
        template cannot be rendered becomes unknown (its problem is reported once)."""
        fields = draft.fields
        literal = draft.row.fields if draft.row is not None else {}
        variables = _Variables(draft)
        for name in ("id", "prompt"):
            if name in fields and name not in literal:
                text = self._fill(draft, name, fields[name], variables)
                if text is None:
                    del fields[name]
                    draft.unknown.add(name)
                else:
                    fields[name] = text
            if name == "id" and "id" in fields:
                draft.id = fields["id"]
        if fields.get("media") and "media" not in literal:
            media = []
            for i, item in enumerate(fields["media"]):
                url = self._fill(draft, f"media[{i}]", item["url"], variables, ("url",))
                if url is None:
                    del fields["media"]
                    draft.unknown.add("media")
                    return
                media.append({**item, "url": url})
            fields["media"] = media

    def _fill(
        self,
        draft: _Draft,
        name: str,
        text: str,
        variables: _Variables,
        below: KeyPath = (),
    ) -> str | None:
        """Render one template, or report why it cannot be and return None."""
        template = parse_template(text)
        message = template.error
        if message is None:
            try:
                return template.render(variables)
            except _UnknownValue:
                return None  # the value's own problem is reported where it was written
            except _EmptyCell as e:
                assert draft.spec.rows is not None and draft.row is not None
                used_by = f"the {name}" if name in ("id", "prompt") else f"the url of {name}"
                where, message = empty_cell(draft.spec.rows, draft.row, e.args[0], used_by)
                self.problems.add(where, draft.jobpath, message, repeats=(where, message))
                return None
            except KeyError as e:
                missing = str(e.args[0])
                if missing in draft.spec.known:
                    message = f"{{{missing}}} has no value for this job"
                else:
                    known = ", ".join(sorted(draft.spec.known))
                    message = f"unknown variable {{{missing}}} (known: {known})"
        where = self._where(draft.spec, draft.row, draft.combo, name, True, below)
        self.problems.add(where, draft.jobpath, message, repeats=(where, message))
        return None

    def _add(self, draft: _Draft) -> None:
        """Make the Job, give it its id, and check the id is usable and unique.

        Every job is kept for the catalog check, also one whose id is unusable or taken
        (all problems at once); an id is claimed only when it is the job's real one."""
        fields = draft.fields
        for name in ("media", "tags"):
            if fields.get(name) == []:
                del fields[name]
        job_id = fields.get("id")
        generated = job_id is None
        if job_id is None:
            content = {name: value for name, value in fields.items() if name != "id"}
            content["take"] = draft.take
            digest = hashlib.sha256(canonical_json(content).encode()).hexdigest()
            job_id = draft.id = "job-" + digest[:10]
        get = fields.get
        job = Job(  # by position: 100,000 times
            self.campaign,
            job_id,
            get("model"),  # type: ignore[arg-type]  # the catalog layer checks them
            get("prompt"),  # type: ignore[arg-type]
            get("duration"),
            get("ratio"),
            get("variant"),
            get("ref_mode"),
            get("resolution"),
            get("media"),
            list(get("tags", ())),
        )
        unknown = frozenset(draft.unknown) if draft.unknown else _KNOWN
        expanded = ExpandedJob(job, draft.spec, draft.row, draft.combo, draft.take, unknown)
        self.jobs.append(expanded)
        if "id" in unknown or (generated and unknown):
            return  # not its real id: nothing to say about it
        reason = _id_problem(job_id)
        first = self._ids.get(job_id)
        if reason is None and first is None:
            self._ids[job_id] = expanded
            return
        where = self.position(expanded, "id")
        if reason is not None:
            self.problems.add(where, expanded.jobpath, f"id {shown(job_id)} {reason}")
            return
        assert first is not None
        index = first.spec.index
        if index == draft.spec.index:
            hint = "put what varies in the id, e.g. {take} or a matrix key"
            message = (
                f"duplicate id {job_id!r}: jobs[{index}] expands to it more than once ({hint})"
            )
            self.problems.add(where, expanded.jobpath, message, repeats=("duplicate", index))
        else:
            message = f"duplicate id {job_id!r} (first used by {first.jobpath})"
            self.problems.add(where, expanded.jobpath, message)


class _UnknownValue(KeyError):
    """A template names a field whose value is unknown (its problem is already reported)."""


class _EmptyCell(KeyError):
    """A template uses a rows column whose cell is empty in the job's row."""


class _Variables(dict[str, str]):
    """The template variables of one draft. Those that cost nothing to know (take, the
    matrix's variables, the row's columns) are there from the start, so rendering finds
    them without a call into Python; the job's own fields are looked up only when a
    template asks (`__missing__`)."""

    def __init__(self, draft: _Draft):
        super().__init__()
        self.draft = draft
        # None of these is a job field, so none can be unknown (see __missing__'s order).
        self["take"] = str(draft.take)
        for name, k, texts in draft.spec.matrix_texts:
            self[name] = texts[draft.combo[k]]
        if draft.row is not None:
            self.update(draft.row.variables)

    def __missing__(self, name: str) -> str:
        draft = self.draft
        spec, row, fields = draft.spec, draft.row, draft.fields
        if name in draft.unknown:
            raise _UnknownValue(name)
        if name == "take":
            return str(draft.take)
        if name in spec.matrix_keys and name not in JOB_FIELDS:
            k = spec.matrix_keys.index(name)
            return as_text(spec.matrix_values[k][draft.combo[k]])
        if row is not None and name in row.variables:
            return row.variables[name]
        if row is not None and spec.rows and name in spec.rows.columns and name not in JOB_FIELDS:
            raise _EmptyCell(name)  # a column that is not a field, empty in this row
        if name in SCALAR_VARIABLES:
            value = fields.get(name)
            if value is None:
                model = _model(fields.get("model"))
                if model is not None and name in model.fields:
                    value = model.defaults.get(name)
            if value is not None:
                return as_text(value)
        raise KeyError(name)


def _takes(model_name: Any, name: str) -> bool:
    """Whether a job of `model_name` takes field `name` (any field, if the model is unknown)."""
    model = _model(model_name)
    return model is None or name in ALWAYS_TAKEN or name in model.fields


def _model(name: Any) -> catalog.Model | None:
    return _models().get(name) if isinstance(name, str) else None


@cache
def _models() -> dict[str, catalog.Model]:
    return catalog.load().models


def _id_problem(job_id: str) -> str | None:
    """Why `job_id` cannot be an id (it becomes a file name), or None."""
    if not job_id:
        return "is empty"
    if len(job_id) > MAX_ID_LENGTH:
        return f"is longer than {MAX_ID_LENGTH} characters"
    if job_id in (".", ".."):
        return "cannot be a file name"
    if _UNSAFE_ID.search(job_id):
        return "contains '/', '\\' or a control character"
    return None
