"""The manifest JSON Schema: generated from the catalog, committed, and never stale."""

from __future__ import annotations

import copy
import itertools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from batchgen import catalog, schema
from batchgen.errors import ManifestInvalid
from batchgen.manifest import load

ROOT = Path(__file__).resolve().parent.parent
COMMITTED = ROOT / "schemas" / "manifest.schema.json"
PACKAGED = ROOT / "batchgen" / "manifest.schema.json"


@pytest.mark.parametrize("path", [COMMITTED, PACKAGED], ids=["schemas/", "batchgen/"])
def test_the_committed_schema_is_what_the_catalog_generates(path):
    assert path.read_text(encoding="utf-8") == schema.render(schema.build()), (
        f"{path} is stale: run `python -m batchgen.schema`"
    )


def test_the_copy_editors_use_and_the_packaged_copy_are_identical():
    assert COMMITTED.read_bytes() == PACKAGED.read_bytes()
    assert schema.packaged_schema() == PACKAGED.read_text(encoding="utf-8")


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
    assert built["properties"]["budget_usd"]["maximum"] == schema.MAX_BUDGET_USD
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


def test_in_a_checkout_the_command_keeps_both_copies():
    assert schema.committed_copies() == [PACKAGED, COMMITTED]


def test_python_m_batchgen_schema_check_passes_on_the_committed_file():
    result = subprocess.run(
        [sys.executable, "-m", "batchgen.schema", "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


def test_the_runtime_validator_checks_exactly_the_structure_part_of_the_schema():
    """validator() inlines $refs for speed; it must find the same errors in the same places
    as the structure schema (the per-model rules are the catalog check's, on expanded jobs)."""
    committed = Draft202012Validator(schema.build(rules=False))
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


# --- the schema alone, as an editor uses it ---------------------------------------------
#
# An editor (yaml-language-server, check-jsonschema) loads the YAML plainly and validates
# it with the committed schema: no expansion, no rows files, no catalog code.

CORPUS = ROOT / "tests" / "bad_manifests"

# Files plain YAML loading refuses: the editor's YAML parser flags them, not the schema.
NOT_YAML = {"bad-indentation.yaml", "not-utf8.yaml", "python-tag.yaml", "syntax-error.yaml"}

# What the schema alone cannot see: rows files, duplicates, counts after expansion.
ONLY_BATCHGEN_VALIDATE = {
    "duplicate-ids.yaml",  # unique ids after expansion
    "duplicate-keys.yaml",  # plain YAML loading keeps the last of two keys
    "rows-forbidden-field.yaml",
    "rows-malformed-jsonl.yaml",
    "rows-malformed.yaml",
    "rows-missing.yaml",
    "rows-unconvertible.yaml",
    "too-many-jobs.yaml",  # a count after expansion
    "unknown-model-from-rows.yaml",
}

# Before the per-model rules, the schema caught only the structural ones (19 files).
CAUGHT_BY_THE_SCHEMA = {
    # structure
    "alias-bomb.yaml", "bad-campaign.yaml", "bad-matrix.yaml", "bad-media-item.yaml",
    "bad-ratio.yaml", "bad-ref-mode.yaml", "bad-resolution.yaml", "deep-nesting.yaml",
    "defaults-broken.yaml", "empty.yaml", "missing-required-keys.yaml", "negative-budget.yaml",
    "non-integer-duration.yaml", "recursive-alias.yaml", "takes-zero.yaml", "unknown-model.yaml",
    "unknown-top-level-key.yaml", "unknown-variant.yaml", "wrong-version.yaml",
    # per-model and per-job rules
    "duration-on-veo-and-image.yaml", "empty-prompt.yaml", "field-set-twice.yaml",
    "first-last-three-images.yaml", "first-last-video.yaml", "grok-duration.yaml",
    "malformed-template.yaml", "matrix-forbidden-field.yaml", "media-on-grok.yaml",
    "missing-model.yaml", "missing-variant.yaml", "omni-too-many.yaml", "omni-two-videos.yaml",
    "ref-mode-missing.yaml", "seedance-duration.yaml", "unknown-variable.yaml",
    "unsafe-id.yaml", "veo-too-many-images.yaml", "veo-video-media.yaml",
}  # fmt: skip


def editor_errors(path: Path, first_only: bool = False) -> list[Any] | None:
    """The committed schema's errors on the plainly loaded YAML; None if it is not YAML.
    `first_only`: stop at the first (an alias bomb has a billion values to report on)."""
    import yaml

    try:
        data = yaml.safe_load(path.read_bytes())
    except (yaml.YAMLError, RecursionError):
        return None
    validator = Draft202012Validator(json.loads(COMMITTED.read_text(encoding="utf-8")))
    try:
        errors = validator.iter_errors(data)
        return list(itertools.islice(errors, 1) if first_only else errors)
    except RecursionError:  # a self-referencing alias: the editor's YAML layer refuses it
        return None


def test_the_schema_alone_catches_exactly_the_expected_bad_manifests():
    caught, accepted, not_yaml = set(), set(), set()
    for path in sorted(CORPUS.glob("*.yaml")):
        errors = editor_errors(path, first_only=True)
        if errors is None:
            not_yaml.add(path.name)
        elif errors:
            caught.add(path.name)
        else:
            accepted.add(path.name)
    assert not_yaml == NOT_YAML
    assert accepted == ONLY_BATCHGEN_VALIDATE
    assert caught == CAUGHT_BY_THE_SCHEMA
    assert len(caught) == 38 and len(caught | accepted | not_yaml) == 51


@pytest.mark.parametrize("path", sorted((ROOT / "manifests").glob("*.yaml")), ids=lambda p: p.name)
def test_every_example_manifest_passes_the_schema_loaded_plainly(path):
    assert editor_errors(path) == []


@pytest.mark.parametrize(
    "job, where",
    [
        ({"model": "grok-video-3", "prompt": "x", "duration": 7}, ["duration"]),
        ({"model": "veo3.1", "prompt": "x", "variant": "veo3.1-fast", "duration": 8}, ["duration"]),
        ({"model": "jimeng-5.0", "prompt": "x", "duration": 5}, ["duration"]),
        ({"model": "grok-video-3", "prompt": "x", "ratio": "16:9"}, ["ratio"]),
        ({"model": "grok-video-3", "prompt": "x", "resolution": "2k"}, ["resolution"]),
        ({"model": "veo3.1", "prompt": "x"}, []),
        ({"model": "grok-video-3", "prompt": ""}, ["prompt"]),
        (
            {"model": "jimeng-video-seedance-2.0", "prompt": "x",
             "media": [{"type": "image", "url": "https://e.com/a.jpg"}]},
            [],
        ),
    ],
)  # fmt: skip
def test_a_model_rule_points_the_editor_at_the_offending_value(job, where):
    validator = Draft202012Validator(json.loads(COMMITTED.read_text(encoding="utf-8")))
    errors = list(validator.iter_errors({"version": 1, "campaign": "c", "jobs": [job]}))
    assert {tuple(e.absolute_path) for e in errors} == {("jobs", 0, *where)}
    assert all(e.schema.get("errorMessage") for e in errors if where)


def test_rules_from_defaults_apply_to_the_jobs_that_take_them():
    validator = Draft202012Validator(json.loads(COMMITTED.read_text(encoding="utf-8")))

    def errors(defaults: dict[str, Any], job: dict[str, Any]) -> int:
        manifest = {"version": 1, "campaign": "c", "defaults": defaults, "jobs": [job]}
        return len(list(validator.iter_errors(manifest)))

    grok = {"model": "grok-video-3"}
    assert errors({**grok, "duration": 7}, {"prompt": "x"}) == 1
    assert errors({**grok, "duration": 7}, {"prompt": "x", "duration": 5}) == 0
    assert errors({"duration": 7}, {"prompt": "x", "model": "grok-video-3"}) == 1
    assert errors({"duration": 7}, {"prompt": "x", "model": "veo3.1", "variant": "veo3.1-pro"}) == 0
    assert errors({"variant": "veo3.1-pro"}, {"prompt": "x", "model": "veo3.1"}) == 0
    assert errors({"prompt": "x", **grok}, {"id": "a"}) == 0
    assert errors(grok, {"prompt": "x", "rows": "r.csv"}) == 0  # a column may set anything


def test_a_template_is_well_formed_for_the_schema_exactly_when_it_parses():
    import re

    from hypothesis import given
    from hypothesis import strategies as st

    from batchgen.templates import TEMPLATE_PATTERN, parse_template

    @given(st.text(alphabet="{}ab_-1 ", max_size=12))
    def check(text: str) -> None:
        assert (re.search(TEMPLATE_PATTERN, text) is not None) == (
            parse_template(text).error is None
        ), text

    check()


def test_the_rules_never_refuse_a_manifest_batchgen_validate_accepts(tmp_path):
    """An editor must not flag what runs: on random manifests near the rules' edges (jobs
    the catalog allows, some moved into defaults or a matrix, some given one odd value),
    every one check_manifest accepts also passes the committed schema."""
    import yaml
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from batchgen.validate import check_manifest

    validator = Draft202012Validator(json.loads(COMMITTED.read_text(encoding="utf-8")))
    models = catalog.load().data["models"]
    odd = {
        "duration": [4, 7, 10, 16], "ratio": ["16:9", "2:3", "21:9"],
        "variant": ["veo3.1-pro"], "ref_mode": ["omni", "first-last"],
        "resolution": ["4k"], "prompt": ["{variant} {{x}}", "{take}"],
        "id": ["a-{take}", "b-{ref_mode}"],
        "media": [[], [{"type": "video", "url": "https://e.com/v.mp4"}]],
    }  # fmt: skip

    def media_items(n: int, kinds: list[str]) -> list[dict[str, str]]:
        return [{"type": kinds[i % len(kinds)], "url": f"https://e.com/{i}"} for i in range(n)]

    @st.composite
    def a_job(draw: Any) -> dict[str, Any]:
        name = draw(st.sampled_from(list(models)))
        spec = models[name]
        job: dict[str, Any] = {"model": name, "prompt": "A {model} cat"}
        if "duration" in spec["fields"]:
            rule = spec["durations"]
            job["duration"] = draw(
                st.sampled_from(rule.get("values") or [rule["min"], rule["max"]])
            )
        job["ratio"] = draw(st.sampled_from(spec["ratios"]))
        choices = {
            "variant": spec.get("variants"),
            "ref_mode": spec.get("ref_modes"),
            "resolution": spec.get("resolutions"),
        }
        for field, options in choices.items():
            if options and draw(st.booleans()):
                job[field] = draw(st.sampled_from(list(options)))
        if "variant" in spec.get("required", []):
            job.setdefault("variant", next(iter(spec["variants"])))
        if "media" in spec["fields"] and draw(st.booleans()):
            if "ref_mode" in job:
                rule = spec["ref_modes"][job["ref_mode"]]
                job["media"] = media_items(draw(st.integers(1, rule["max_items"])), rule["types"])
            elif "variant" in job:
                limit = spec["variants"][job["variant"]]["max_images"]
                job["media"] = media_items(draw(st.integers(1, limit)), spec["media_types"])
        if draw(st.integers(0, 3)) == 0:  # one odd value
            field = draw(st.sampled_from(sorted(odd)))
            job[field] = draw(st.sampled_from(odd[field]))
        if draw(st.booleans()):  # one field through the matrix instead
            field = draw(st.sampled_from(sorted(job)))
            job["matrix"] = {field: [job.pop(field)]}
        return job

    @st.composite
    def a_manifest(draw: Any) -> dict[str, Any]:
        jobs = draw(st.lists(a_job(), min_size=1, max_size=3))
        defaults: dict[str, Any] = {}
        for field in draw(st.sets(st.sampled_from(["model", "duration", "ratio", "variant",
                                                   "ref_mode", "media", "prompt"]))):  # fmt: skip
            # a value the first job has, moved into defaults (off every job that has it)
            if field in jobs[0] and all(job.get(field) == jobs[0][field] for job in jobs):
                defaults[field] = jobs[0][field]
                for job in jobs:
                    del job[field]
        for i, job in enumerate(jobs):
            job.setdefault("id", f"j{i}-{{take}}")
        manifest = {"version": 1, "campaign": "c", "jobs": jobs}
        return {**manifest, "defaults": defaults} if defaults else manifest

    path = tmp_path / "m.yaml"
    accepted = refused = 0

    @settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
    @given(a_manifest())
    def check(manifest: dict[str, Any]) -> None:
        nonlocal accepted, refused
        path.write_text(yaml.safe_dump(manifest), encoding="utf-8")
        try:
            check_manifest(path)
        except ManifestInvalid:
            refused += 1
            return
        accepted += 1
        assert [e.message for e in validator.iter_errors(manifest)] == [], manifest

    check()
    assert accepted > 100 and refused > 20  # both sides of the edge were explored


def test_the_schema_is_installed_with_the_package_and_found_there(tmp_path):
    """A non-editable install (the wheel pip builds from this tree, installed into a folder
    of its own) carries the schema as package data, and its `--check` passes."""
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "batchgen", source / "batchgen",
                    ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    target = tmp_path / "site-packages"
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target"]
    built = subprocess.run([*pip, str(target), str(source)], capture_output=True, text=True,
                           timeout=300)  # fmt: skip
    assert built.returncode == 0, built.stderr
    assert (target / "batchgen" / "manifest.schema.json").is_file()
    env = {**os.environ, "PYTHONPATH": str(target), "PYTHONNOUSERSITE": "1"}

    def installed(*args: str) -> subprocess.CompletedProcess[str]:
        # -P: not the current directory first; cwd elsewhere: only the installed copy is found.
        return subprocess.run(
            [sys.executable, "-P", *args],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    found = installed("-c", "import batchgen.schema as s; print(s.committed_copies())")
    assert found.stdout.strip() == repr([target / "batchgen" / "manifest.schema.json"])
    check = installed("-m", "batchgen.schema", "--check")
    assert check.returncode == 0, check.stderr
    (target / "batchgen" / "manifest.schema.json").write_text("{}\n", encoding="utf-8")
    stale = installed("-m", "batchgen.schema", "--check")
    assert stale.returncode == 1 and str(target) in stale.stderr
