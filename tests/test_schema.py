"""The manifest JSON Schema: generated from the catalog, committed, and never stale."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator

from batchgen import catalog, schema
from batchgen.errors import ManifestInvalid
from batchgen.manifest import load

ROOT = Path(__file__).resolve().parent.parent
COMMITTED = ROOT / "schemas" / "manifest.schema.json"


def test_the_committed_schema_is_what_the_catalog_generates():
    assert COMMITTED.read_text(encoding="utf-8") == schema.render(schema.build()), (
        "schemas/manifest.schema.json is stale: run `python -m batchgen.schema`"
    )


def test_the_schema_is_valid_json_schema_2020_12():
    committed = json.loads(COMMITTED.read_text(encoding="utf-8"))
    assert committed["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    Draft202012Validator.check_schema(committed)


def test_names_come_from_the_catalog():
    built = schema.build()
    data = catalog.load().data
    assert built["$defs"]["model"]["enum"] == list(data["models"])
    assert built["$defs"]["variant"]["enum"] == list(data["models"]["veo3.1"]["variants"])
    assert built["$defs"]["ref_mode"]["enum"] == ["omni", "first-last"]
    assert built["$defs"]["resolution"]["enum"] == ["1k", "2k", "4k"]
    assert set(built["$defs"]["ratio"]["enum"]) == {
        ratio for spec in data["models"].values() for ratio in spec["ratios"]
    }
    assert built["$defs"]["media_item"]["properties"]["type"]["enum"] == data["media_types"]


def test_a_new_catalog_model_reaches_the_schema():
    data = copy.deepcopy(catalog.load().data)
    data["models"]["new-model"] = {**data["models"]["grok-video-3"], "ratios": ["7:5"]}
    built = schema.build(catalog.Catalog(data))
    assert "new-model" in built["$defs"]["model"]["enum"]
    assert "7:5" in built["$defs"]["ratio"]["enum"]


def test_the_structure_follows_the_spec():
    built = schema.build()
    assert built["required"] == ["version", "campaign", "jobs"]
    assert built["additionalProperties"] is False
    assert built["properties"]["version"]["const"] == 1
    assert built["properties"]["campaign"]["pattern"] == "^[a-z0-9][a-z0-9._-]{0,63}$"
    assert built["properties"]["budget_usd"]["minimum"] == 0
    job = built["$defs"]["job"]
    assert job["additionalProperties"] is False
    assert list(job["properties"]) == [*schema.JOB_FIELDS, "matrix", "rows", "takes"]
    assert set(schema.JOB_FIELDS) == {
        "id", "prompt", "model", "duration", "ratio", "variant", "ref_mode", "media",
        "resolution", "tags",
    }  # fmt: skip


@pytest.mark.parametrize("path", sorted((ROOT / "manifests").glob("*.yaml")), ids=lambda p: p.name)
def test_every_example_manifest_passes_the_committed_schema(path):
    committed = json.loads(COMMITTED.read_text(encoding="utf-8"))
    Draft202012Validator(committed).validate(load(path).data)


def test_the_check_option_finds_a_stale_file_and_the_command_rewrites_it(tmp_path, capsys):
    target = tmp_path / "manifest.schema.json"
    target.write_text("{}\n")
    assert schema.main([str(target), "--check"]) == 1
    assert schema.main([str(target)]) == 0
    assert target.read_text(encoding="utf-8") == COMMITTED.read_text(encoding="utf-8")
    assert schema.main([str(target), "--check"]) == 0


def test_python_m_batchgen_schema_check_passes_on_the_committed_file():
    result = subprocess.run(
        [sys.executable, "-m", "batchgen.schema", "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


def test_the_runtime_validator_checks_exactly_what_the_committed_schema_says():
    """validator() inlines $refs for speed; it must find the same errors in the same places."""
    committed = Draft202012Validator(json.loads(COMMITTED.read_text(encoding="utf-8")))
    assert "$ref" not in json.dumps(schema.validator().schema)
    corpus = ROOT / "tests" / "bad_manifests"
    checked = 0
    for path in sorted(corpus.glob("*.yaml")):
        try:
            data = load(path).data
        except ManifestInvalid:  # YAML-level problems: nothing for the schema to see
            continue
        found = sorted(
            (list(e.absolute_path), e.validator) for e in schema.validator().iter_errors(data)
        )
        expected = sorted((list(e.absolute_path), e.validator) for e in committed.iter_errors(data))
        assert found == expected, path.name
        checked += 1
    assert checked > 30
