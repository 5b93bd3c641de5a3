"""The manifest's JSON Schema (2020-12), generated from the model catalog.

Two parts, both generated here:

- the **structure**: keys, their types, and the names the catalog knows (models, ratios,
  variants, ref modes, resolutions, media types). `batchgen validate` checks it first
  (`validator()`), and builds its own messages from its errors;
- the **per-model rules** (`rules=True`, in the committed file only): what each model
  takes, as `if`/`then` on the `model` a job states (on itself, in its matrix, or through
  `defaults`), so an editor flags a grok `duration: 7`, a Veo job without `variant` or
  media without `ref_mode` while the manifest is typed. `batchgen validate` does not use
  them: it checks the same facts on every expanded job against the catalog
  (`catalog.check_request`), which also sees values from rows files and says more
  precisely where and why. The rules are never stricter than that check (a test holds
  them to it); what they cannot see (rows files, duplicate ids, unknown matrix
  variables) is left to `batchgen validate`.

`python -m batchgen.schema` rewrites the committed copies: batchgen/manifest.schema.json
(package data, installed with batchgen) and, in a checkout, schemas/manifest.schema.json
(where editors point: `# yaml-language-server: $schema=../schemas/manifest.schema.json`).
`--check` exits 1 when a copy is stale.
"""

from __future__ import annotations

import argparse
import json
import sys
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator

from batchgen import catalog
from batchgen.templates import TEMPLATE_PATTERN, uses_variable_pattern

PACKAGE_DIR = Path(__file__).resolve().parent
SCHEMA_NAME = "manifest.schema.json"
# In a checkout, the copy editors point at; in an installed package, absent.
CHECKOUT_SCHEMA = PACKAGE_DIR.parent / "schemas" / SCHEMA_NAME
CAMPAIGN_PATTERN = "^[a-z0-9][a-z0-9._-]{0,63}$"
CAMPAIGN_RULE = "1-64 lowercase letters, digits, '.', '_' or '-', starting with a letter or digit"
MAX_BUDGET_USD = 10_000_000  # a sane cap: sums of many budgets stay far inside SQLite's integers

JOB_FIELDS: tuple[str, ...] = ("id", "model", *catalog.REQUEST_FIELDS, "tags")
EXPANDERS = ("matrix", "rows", "takes")
# Fields a template may name ({duration}); the others are lists.
SCALAR_VARIABLES = ("model", "duration", "ratio", "variant", "ref_mode", "resolution")
# Each value of a constrained field must be in the model's list (or duration range).
CONSTRAINED = ("duration", "ratio", "variant", "ref_mode", "resolution")
# An id becomes a file name (PRODUCT.md §9): no path separators or control characters.
SAFE_ID_PATTERN = r"^[^/\\\u0000-\u001f\u007f]*$"

_DESCRIPTIONS = {
    "id": "Unique within the campaign; a template ({name}). Absent: job- + a content hash.",
    "model": "A model from the catalog.",
    "prompt": "What to generate; a template ({name}, {{ and }} for literal braces).",
    "duration": "Seconds of video (per-second models only).",
    "ratio": "Aspect ratio; which ones a model takes is in the catalog.",
    "variant": "Veo 3.1 only: the variant (required there).",
    "ref_mode": "Seedance only: how media are used; required with media.",
    "media": "Reference media; each url is a template.",
    "resolution": "Image models only.",
    "tags": "Labels for reports; a job's own tags replace the defaults' tags.",
}


def _union(lists: list[list[str]]) -> list[str]:
    """Every name in `lists`, once, in order of first appearance."""
    return list(dict.fromkeys(name for names in lists for name in names))


def build(cat: catalog.Catalog | None = None, rules: bool = True) -> dict[str, Any]:
    """The manifest schema for `cat` (the packaged catalog by default); `rules=False`:
    the structure only, without the per-model rules (what `batchgen validate` checks)."""
    data = (cat or catalog.load()).data
    specs = list(data["models"].values())
    fields: dict[str, Any] = {
        "id": {"type": "string", "minLength": 1},
        "model": {"enum": list(data["models"])},
        "prompt": {"type": "string"},
        "duration": {"type": "integer"},
        "ratio": {"enum": _union([s.get("ratios", []) for s in specs])},
        "variant": {"enum": _union([list(s.get("variants", {})) for s in specs])},
        "ref_mode": {"enum": _union([list(s.get("ref_modes", {})) for s in specs])},
        "media": {"type": "array", "items": {"$ref": "#/$defs/media_item"}},
        "resolution": {"enum": _union([s.get("resolutions", []) for s in specs])},
        "tags": {"type": "array", "items": {"type": "string", "minLength": 1}},
    }
    assert tuple(fields) == JOB_FIELDS, "every job field needs a schema"
    for name, rule in fields.items():
        rule["description"] = _DESCRIPTIONS[name]
    field_refs = {name: {"$ref": f"#/$defs/{name}"} for name in JOB_FIELDS}
    schema: dict[str, Any] = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "batchgen manifest, version 1",
        "description": "Generated from batchgen/catalog.json by `python -m batchgen.schema`.",
        "type": "object",
        "required": ["version", "campaign", "jobs"],
        "additionalProperties": False,
        "properties": {
            "version": {"const": 1, "description": "The manifest format version."},
            "campaign": {
                "type": "string",
                "pattern": CAMPAIGN_PATTERN,
                "description": f"The campaign's name: {CAMPAIGN_RULE}.",
            },
            "budget_usd": {
                "type": "number",
                "minimum": 0,
                "maximum": MAX_BUDGET_USD,
                "description": "Hard cap on this campaign's spend, in US dollars "
                "(leave it out for no cap).",
            },
            "defaults": {
                "type": "object",
                "additionalProperties": False,
                "properties": field_refs,
                "description": "Fields for every job; a default its model does not take is "
                "not applied.",
            },
            "jobs": {
                "type": "array",
                "minItems": 1,
                "items": {"$ref": "#/$defs/job"},
            },
        },
        "$defs": {
            **fields,
            "media_item": {
                "type": "object",
                "required": ["type", "url"],
                "additionalProperties": False,
                "properties": {
                    "type": {"enum": data["media_types"]},
                    "url": {"type": "string", "minLength": 1},
                },
            },
            "job": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    **field_refs,
                    "matrix": {"$ref": "#/$defs/matrix"},
                    "rows": {
                        "type": "string",
                        "minLength": 1,
                        "description": "A .csv (with a header), .jsonl or .xlsx file "
                        "(prompts.xlsx#Sheet name for another sheet than the first), relative "
                        "to the manifest: one job per row; columns are variables, and a "
                        "column named like a job field sets it.",
                    },
                    "takes": {
                        "type": "integer",
                        "minimum": 1,
                        "description": "Independent generations of each job; {take} = 1..N.",
                    },
                },
            },
            "matrix": {
                "type": "object",
                "minProperties": 1,
                "description": "Cartesian product of the lists, in key order; a key named like "
                "a job field sets it, any other key is a template variable.",
                "properties": {
                    name: {"type": "array", "minItems": 1, "items": {"$ref": f"#/$defs/{name}"}}
                    for name in JOB_FIELDS
                },
                "additionalProperties": {
                    "type": "array",
                    "minItems": 1,
                    "items": {"type": ["string", "number", "boolean"]},
                },
            },
        },
    }
    if rules:
        _add_rules(schema, data)
    return schema


# --- the per-model rules (for editors) ---------------------------------------------------
#
# A job "is M" when it states model M itself, or its matrix lists M (each value of the
# matrix is combined with the job's own fields), or it states no model, has no rows file
# (a column could set one) and `defaults` says M. A value the rules check is one written
# on the job or in its matrix, or a default the job takes (it sets the field nowhere
# itself). A rows file may set any field, so a job with one is never said to lack one.


def _has(name: str) -> dict[str, Any]:
    return {"required": [name]}


def _is(name: str, value: Any) -> dict[str, Any]:
    return {"required": [name], "properties": {name: {"const": value}}}


def _matrix_has(name: str) -> dict[str, Any]:
    return {"required": ["matrix"], "properties": {"matrix": _has(name)}}


def _matrix_lists(name: str, value: Any) -> dict[str, Any]:
    lists = {"required": [name], "properties": {name: {"contains": {"const": value}}}}
    return {"required": ["matrix"], "properties": {"matrix": lists}}


def _sets(name: str) -> dict[str, Any]:
    """The job sets field `name` (or may: its rows file could)."""
    return _say({"anyOf": [_has(name), _has("rows"), _matrix_has(name)]}, f"{name} is required")


def _lacks(name: str) -> dict[str, Any]:
    return {"not": _sets(name)}


def _default(condition: dict[str, Any]) -> dict[str, Any]:
    """The manifest's `defaults` exist and meet `condition`."""
    return {"required": ["defaults"], "properties": {"defaults": condition}}


def _every_job(rule: dict[str, Any]) -> dict[str, Any]:
    return {"properties": {"jobs": {"items": rule}}}


def _say(rule: dict[str, Any], message: str) -> dict[str, Any]:
    """`rule`, with the message an editor shows when a value breaks it (`errorMessage` is
    yaml-language-server's keyword; other validators ignore it)."""
    return {**rule, "errorMessage": message}


def _when(condition: dict[str, Any], then: Any, description: str) -> dict[str, Any]:
    return {"description": description, "if": condition, "then": then}


def _allowed(spec: dict[str, Any], name: str) -> dict[str, Any] | None:
    """What a value of constrained field `name` must be for a model of `spec`."""
    if name == "duration":
        rule = spec.get("durations", {})
        if "values" in rule:
            return {"enum": rule["values"]}
        return {"minimum": rule["min"], "maximum": rule["max"]} if rule else None
    listed = {"ratio": "ratios", "variant": "variants", "ref_mode": "ref_modes",
              "resolution": "resolutions"}[name]  # fmt: skip
    values = spec.get(listed)
    return {"enum": list(values)} if values else None


def _words(allowed: dict[str, Any]) -> str:
    if "enum" in allowed:
        return "one of " + ", ".join(map(str, allowed["enum"]))
    return f"{allowed['minimum']}-{allowed['maximum']}"


def _media_limits(types: list[str], max_items: int | None, per_type: dict[str, int]) -> Any:
    """What a media list must be: item types, at most `max_items`, at most N of a type."""
    kinds = _say({"enum": types}, "media type must be one of " + ", ".join(types) + " here")
    rule: dict[str, Any] = {"items": {"properties": {"type": kinds}}}
    if max_items is not None:
        rule = _say({**rule, "maxItems": max_items}, f"at most {max_items} media items here")
    limits = [
        _say(
            {"contains": _is("type", kind), "minContains": 0, "maxContains": limit},
            f"at most {limit} {kind} item(s) here",
        )
        for kind, limit in per_type.items()
    ]
    if limits:
        rule["allOf"] = limits
    return rule


def _on_job_and_matrix(name: str, rule: Any) -> dict[str, Any]:
    """`rule` for field `name` on the job and for each value of its matrix."""
    return {
        name: rule,
        "matrix": {"properties": {name: {"items": rule}}},
    }


def _model_rules(model: str, spec: dict[str, Any]) -> dict[str, Any]:
    """What a job of `model` must be, on its own fields and matrix (see above)."""
    taken = set(spec["fields"])
    properties: dict[str, Any] = {}
    matrix: dict[str, Any] = {}
    for name in catalog.REQUEST_FIELDS:
        if name not in taken:
            # An empty media list sends nothing: only a non-empty one is refused.
            refused = _say({"maxItems": 0} if name == "media" else {"not": {}},
                           f"{name} is not accepted by {model}")  # fmt: skip
            properties[name] = refused
            matrix[name] = {"items": refused}
        elif name in CONSTRAINED and (allowed := _allowed(spec, name)) is not None:
            allowed = _say(allowed, f"{name} must be {_words(allowed)} for {model}")
            properties[name] = allowed
            matrix[name] = {"items": allowed}
    # A scalar field the model does not take never has a value: {variant} for grok.
    unknowable = [name for name in SCALAR_VARIABLES if name != "model" and name not in taken]
    if unknowable:
        names = ", ".join("{" + name + "}" for name in unknowable)
        never = _say({"not": {"pattern": uses_variable_pattern(unknowable)}},
                     f"{names} has no value for {model}")  # fmt: skip
        for name in ("id", "prompt"):
            properties[name] = never
            matrix[name] = {"items": never}
    properties["matrix"] = {"properties": matrix}
    rules: dict[str, Any] = {
        "description": f"What {model} takes (from the catalog).",
        "properties": properties,
    }
    media_rules = []
    if "media" in taken:
        for ref_mode, rule in spec.get("ref_modes", {}).items():
            limits = _media_limits(rule["types"], rule["max_items"], rule["max_per_type"])
            media_rules.append(
                _when(
                    {"anyOf": [_is("ref_mode", ref_mode), _matrix_lists("ref_mode", ref_mode)]},
                    {"properties": _on_job_and_matrix("media", limits)},
                    f"media with ref_mode {ref_mode}",
                )
            )
        if "ref_modes" not in spec:
            types = spec.get("media_types", [])
            properties["media"] = _media_limits(types, None, {})
            properties["matrix"]["properties"]["media"] = {"items": properties["media"]}
            for variant, rule in spec.get("variants", {}).items():
                limits = _media_limits(types, rule["max_images"], {})
                media_rules.append(
                    _when(
                        {"anyOf": [_is("variant", variant), _matrix_lists("variant", variant)]},
                        {"properties": _on_job_and_matrix("media", limits)},
                        f"media with variant {variant}",
                    )
                )
    if media_rules:
        rules["allOf"] = media_rules
    return rules


def _job_rules() -> dict[str, Any]:
    """What every job must be, whatever its model: well-formed templates, a usable id, a
    non-empty prompt, and each field set in one place."""
    template = _say({"pattern": TEMPLATE_PATTERN},
                    "a stray brace: write {name} for a variable, {{ and }} for braces")  # fmt: skip
    prompt = {"allOf": [template, _say({"pattern": "\\S"}, "the prompt is empty")]}
    media = {"items": {"properties": {"url": template}}}
    identifier = {
        "allOf": [
            template,
            _say({"pattern": SAFE_ID_PATTERN}, "an id has no '/', '\\' or control characters"),
            _say({"not": {"enum": [".", ".."]}}, "an id cannot be '.' or '..'"),
        ]
    }
    properties = {
        "id": identifier,
        "prompt": prompt,
        "media": media,
        "matrix": {
            "properties": {
                "take": False,  # {take} is the take number
                "id": {"items": identifier},
                "prompt": {"items": prompt},
                "media": {"items": media},
            }
        },
    }
    once = [
        _when(
            _has(name),
            {"properties": {"matrix": {"not": _has(name)}}},
            f"{name} is set on the job or by its matrix, not both",
        )  # fmt: skip
        for name in JOB_FIELDS
    ]
    return {"properties": properties, "allOf": once}


def _add_rules(schema: dict[str, Any], data: dict[str, Any]) -> None:
    """Add the per-model rules to a structure schema (in place)."""
    models: dict[str, Any] = data["models"]
    defs = schema["$defs"]
    defs["job_rules"] = _job_rules()
    for model, spec in models.items():
        defs[f"rules-{model}"] = _model_rules(model, spec)
    states = {
        model: {"anyOf": [_is("model", model), _matrix_lists("model", model)]} for model in models
    }
    inherits_model = _lacks("model")
    job_checks: list[Any] = [{"$ref": "#/$defs/job_rules"}]
    root_checks: list[Any] = []
    for model, spec in models.items():
        model_rules = {"$ref": f"#/$defs/rules-{model}"}
        job_checks.append(_when(states[model], model_rules, f"a job of {model}"))
        default_model = _default(_is("model", model))
        root_checks.append(
            _when(
                default_model,
                _every_job(_when(inherits_model, model_rules, f"a job of {model} by default")),
                f"defaults.model is {model}",
            )
        )
        # A field the model requires, and ref_mode with media: set somewhere.
        required: list[tuple[str, dict[str, Any]]] = [
            (name, {}) for name in spec.get("required", [])
        ]
        if spec.get("ref_modes"):
            required.append(("ref_mode", {"required": ["media"],
                                          "properties": {"media": {"minItems": 1}}}))  # fmt: skip
        for name, trigger in required:
            no_default = {"not": _default(_has(name))}
            what = f"{model} needs {name}" + (" with media" if trigger else "")
            root_checks.append(
                _when(
                    no_default,
                    _every_job(_when({"allOf": [states[model], trigger]}, _sets(name), what)),
                    what,
                )
            )
            root_checks.append(
                _when(
                    {"allOf": [default_model, no_default]},
                    _every_job(_when({"allOf": [inherits_model, trigger]}, _sets(name), what)),
                    what + " (defaults.model)",
                )
            )
        # A default value the model takes must be one it allows, where a job takes it.
        for name in CONSTRAINED:
            allowed = _allowed(spec, name) if name in spec["fields"] else None
            if allowed is None:
                continue
            bad_default = _default({"required": [name], "properties": {name: {"not": allowed}}})
            what = f"defaults.{name} is not allowed for {model}"
            root_checks.append(
                _when(
                    bad_default,
                    _every_job(_when({"allOf": [states[model], _lacks(name)]}, False, what)),
                    what,
                )
            )
            root_checks.append(
                _when(
                    {"allOf": [default_model, bad_default]},
                    _every_job(_when({"allOf": [inherits_model, _lacks(name)]}, False, what)),
                    what + " (defaults.model)",
                )
            )
    # Every job needs a model and a prompt, from somewhere.
    for name in ("model", "prompt"):
        root_checks.append(
            _when(
                {"not": _default(_has(name))},
                _every_job(_sets(name)),
                f"every job needs {name}",
            )
        )
    defs["job"]["allOf"] = job_checks
    schema["allOf"] = root_checks


def render(schema: dict[str, Any]) -> str:
    """The committed spelling: two-space indent, keys in build order, final newline."""
    return json.dumps(schema, indent=2, ensure_ascii=False) + "\n"


@cache
def validator() -> Draft202012Validator:
    """The compiled validator of the generated schema (built once per process).

    It checks the same rules with every `$ref` replaced by its definition: resolving
    references is half of jsonschema's time on a manifest of many inline jobs.
    """
    schema = build(rules=False)
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(_inline_refs(schema, schema["$defs"]))


def _inline_refs(node: Any, defs: dict[str, Any]) -> Any:
    """`node` with each local {"$ref": "#/$defs/name"} replaced by that definition."""
    if isinstance(node, list):
        return [_inline_refs(item, defs) for item in node]
    if not isinstance(node, dict):
        return node
    inlined = {key: _inline_refs(value, defs) for key, value in node.items() if key != "$defs"}
    ref = inlined.pop("$ref", None)
    if ref is None:
        return inlined
    return {**_inline_refs(defs[ref.removeprefix("#/$defs/")], defs), **inlined}


def packaged_schema() -> str:
    """The schema file installed with the package (package data), as text."""
    return resources.files("batchgen").joinpath(SCHEMA_NAME).read_text(encoding="utf-8")


def committed_copies() -> list[Path]:
    """Where the schema is committed: in the package, and in a checkout's schemas/."""
    copies = [PACKAGE_DIR / SCHEMA_NAME]
    if (PACKAGE_DIR.parent / "pyproject.toml").is_file():
        copies.append(CHECKOUT_SCHEMA)
    return copies


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m batchgen.schema",
        description="Write the manifest JSON Schema generated from the catalog (by default "
        "into the package and, in a checkout, schemas/).",
    )
    parser.add_argument("paths", nargs="*", type=Path, metavar="PATH")
    parser.add_argument("--check", action="store_true", help="exit 1 if a file is stale")
    args = parser.parse_args(argv)
    text = render(build())
    stale = 0
    for path in args.paths or committed_copies():
        current = path.read_text(encoding="utf-8") if path.is_file() else None
        if current == text:
            continue
        if args.check:
            print(f"{path} is stale: run python -m batchgen.schema", file=sys.stderr)
            stale += 1
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        print(f"wrote {path}")
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
