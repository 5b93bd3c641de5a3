"""The manifest's JSON Schema (2020-12), generated from the model catalog.

Two parts, both generated here:

- the **structure**: keys, their types, and the names the catalog knows (models, ratios,
  variants, ref modes, resolutions, media types). `batchgen validate` checks it first
  (`validator()`), and builds its own messages from its errors;
- the **per-model rules** (schema_rules.py; `rules=True`, in the committed file only):
  what each model takes, as `if`/`then` on the `model` a job states (on itself, in its
  matrix, or through `defaults`), so an editor flags a grok `duration: 7`, a Veo job
  without `variant` or media without `ref_mode` while the manifest is typed. `batchgen
  validate` does not use them: it checks the same facts on every expanded job against
  the catalog (`catalog.check_request`), which also sees values from rows files and says
  more precisely where and why. The rules are never stricter than that check (a test
  holds them to it); what they cannot see (rows files, duplicate ids, unknown matrix
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
from batchgen.schema_rules import add_rules

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
        add_rules(schema, data, JOB_FIELDS, SCALAR_VARIABLES)
    return schema


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
