"""check_manifest: every bad manifest gets exactly its expected lines; every example passes."""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from batchgen import manifest
from batchgen.errors import ManifestInvalid
from batchgen.validate import Manifest, check_manifest

TESTS = Path(__file__).resolve().parent
CORPUS = TESTS / "bad_manifests"
EXAMPLES = TESTS.parent / "manifests"
BAD = sorted(path.name for path in CORPUS.glob("*.yaml"))

# How many jobs each example expands to (the docs and the sandbox runs rely on these).
EXAMPLE_JOBS = {"quickstart.yaml": 6, "spring-launch.yaml": 36}


def problems_of(path: str | Path, **options: int) -> list[str]:
    with pytest.raises(ManifestInvalid) as raised:
        check_manifest(path, **options)
    return [str(problem) for problem in raised.value.problems]


def write(tmp_path: Path, text: str, name: str = "m.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_the_corpus_is_large_enough_and_every_manifest_has_its_expected_lines():
    assert len(BAD) >= 35
    assert all((CORPUS / name).with_suffix(".expected").is_file() for name in BAD)


# Syntax errors are worded by the parser: these expectations are libyaml's (PyYAML's wheels
# bundle it; without it, PyYAML's own parser says the same thing in other words).
LIBYAML_WORDING = {"bad-indentation.yaml"}


@pytest.mark.parametrize("name", BAD)
def test_a_bad_manifest_reports_exactly_its_expected_lines(name, monkeypatch):
    if name in LIBYAML_WORDING and not yaml.__with_libyaml__:
        pytest.skip("the expected wording is libyaml's")
    monkeypatch.chdir(CORPUS)  # FILE in each line is the path as given: the bare name
    options = {}
    limit = re.search(r"max_jobs=(\d+)", Path(name).read_text(encoding="utf-8", errors="replace"))
    if limit:
        options["max_jobs"] = int(limit.group(1))
    expected = Path(name).with_suffix(".expected").read_text(encoding="utf-8").splitlines()
    assert problems_of(name, **options) == expected


def test_the_spec_example_line_is_reproduced_exactly(monkeypatch):
    monkeypatch.chdir(CORPUS)
    assert (
        "grok-duration.yaml:14:15: jobs[1] (hero-sneaker-grok-video-3-1): duration 20 is not "
        "allowed for grok-video-3 (allowed: 5, 10, 15)"
    ) in problems_of("grok-duration.yaml")


@pytest.mark.parametrize("name", sorted(EXAMPLE_JOBS))
def test_every_example_manifest_is_valid_and_expands_to_its_job_count(name):
    result = check_manifest(EXAMPLES / name)
    assert len(result.jobs) == EXAMPLE_JOBS[name]
    assert len({job.id for job in result.jobs}) == len(result.jobs)
    budget = result.campaign.budget_micros
    assert budget is not None and sum(job.cost_micros() for job in result.jobs) <= budget


def test_the_examples_are_exactly_the_files_with_known_counts():
    assert sorted(path.name for path in EXAMPLES.glob("*.yaml")) == sorted(EXAMPLE_JOBS)


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_every_example_points_editors_at_the_schema(path):
    first = path.read_text(encoding="utf-8").splitlines()[0]
    assert first == "# yaml-language-server: $schema=../schemas/manifest.schema.json"


def test_the_spring_launch_example_uses_every_model_variant_and_ref_mode():
    jobs = check_manifest(EXAMPLES / "spring-launch.yaml").jobs
    assert {job.model for job in jobs} == {
        "jimeng-video-seedance-2.0",
        "jimeng-video-seedance-2.0-fast",
        "grok-video-3",
        "veo3.1",
        "jimeng-5.0",
    }
    assert {job.variant for job in jobs} - {None} == {
        "veo3.1-fast",
        "veo3.1-components",
        "veo3.1-pro",
    }
    assert {job.ref_mode for job in jobs} - {None} == {"omni", "first-last"}
    assert any(job.id.startswith("job-") for job in jobs)


def test_the_manifest_names_its_campaign_file_hash_and_budget(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    text = "version: 1\ncampaign: c1\nbudget_usd: 12.34\njobs:\n"
    text += "  - {id: a, model: grok-video-3, prompt: A cat}\n"
    write(tmp_path, text)
    result = check_manifest("m.yaml")
    assert isinstance(result, Manifest)
    assert result.campaign.name == "c1"
    assert result.campaign.manifest_path == "m.yaml"
    assert result.campaign.manifest_sha256 == hashlib.sha256(text.encode()).hexdigest()
    assert result.campaign.budget_micros == 12_340_000


def test_no_budget_means_no_cap(tmp_path):
    path = write(tmp_path, "version: 1\ncampaign: c\njobs: [{model: grok-video-3, prompt: x}]\n")
    assert check_manifest(path).campaign.budget_micros is None


def test_catalog_defaults_are_not_baked_into_jobs(tmp_path):
    path = write(
        tmp_path,
        "version: 1\ncampaign: c\njobs:\n"
        "  - {id: a, model: jimeng-video-seedance-2.0, prompt: A cat}\n"
        "  - {id: b, model: jimeng-5.0, prompt: A poster}\n",
    )
    seedance, image = check_manifest(path).jobs
    assert seedance.duration is None and seedance.request()["duration"] == 5
    assert image.resolution is None and image.request()["resolution"] == "1k"


def test_problems_of_all_layers_are_reported_together_and_sorted(tmp_path):
    path = write(
        tmp_path,
        "version: 1\ncampaign: Bad Name\njobs:\n"
        "  - {id: a, model: grok-video-3, prompt: A cat, duration: 7}\n"
        "  - {id: b, model: grok-video-3, prompt: A dog, colour: red}\n",
    )
    found = problems_of(path)
    assert len(found) == 3
    assert "campaign 'Bad Name' is not allowed" in found[0]
    assert "duration 7 is not allowed for grok-video-3" in found[1]
    assert "unknown key 'colour'" in found[2]


def test_a_job_with_a_structural_problem_is_not_checked_against_the_catalog(tmp_path):
    path = write(
        tmp_path,
        "version: 1\ncampaign: c\njobs:\n"
        "  - {id: a, model: grok-video-3, prompt: A cat, duration: 7, takes: 0}\n",
    )
    assert problems_of(path) == [f"{path}:4:69: jobs[0].takes: takes must be at least 1 (got 0)"]


def test_a_problem_shared_by_many_expanded_jobs_is_one_line_with_a_count(tmp_path):
    path = write(
        tmp_path,
        "version: 1\ncampaign: c\ndefaults: {model: grok-video-3, duration: 7}\njobs:\n"
        '  - {id: "a-{n}", prompt: A cat, matrix: {n: [1, 2, 3]}}\n'
        "  - {id: b, prompt: A dog}\n",
    )
    assert problems_of(path) == [
        f"{path}:3:43: jobs[0] (a-1): duration 7 is not allowed for grok-video-3 "
        "(allowed: 5, 10, 15) (and 3 more expanded jobs like it)"
    ]


def test_an_oversized_file_is_refused_before_parsing(tmp_path):
    path = tmp_path / "big.yaml"
    with open(path, "w", encoding="utf-8") as f:
        f.write("version: 1\ncampaign: big\njobs:\n")
        line = "  - {model: grok-video-3, prompt: " + "x" * 200 + "}\n"
        f.write(line * (manifest.MAX_BYTES // len(line) + 1))
    assert problems_of(path) == [
        f"{path}:1:1: manifest: the manifest is 10.0 MiB, more than the 10 MiB limit"
    ]


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p.mkdir(), "cannot read the manifest: it is a directory"),
        (lambda p: None, "cannot read the manifest: No such file or directory"),
        (lambda p: os.mkfifo(p), "cannot read the manifest: it is not a regular file"),
        (lambda p: p.write_bytes(b"\x00\x01\x02binary"), "character #x0000 is not allowed"),
        (lambda p: p.write_bytes(bytes(range(128, 256))), "the manifest is not UTF-8 text"),
        (lambda p: p.write_text("- just\n- a list\n"), "manifest must be a mapping (got a list)"),
    ],
    ids=["directory", "missing", "fifo", "nul-bytes", "not-utf8", "a-list"],
)
def test_unreadable_or_unusable_input_is_a_problem_not_a_traceback(tmp_path, make, message):
    path = tmp_path / "m.yaml"
    make(path)
    found = problems_of(path)
    assert len(found) == 1 and message in found[0] and found[0].startswith(f"{path}:")


def test_expansion_is_capped_before_jobs_are_built(tmp_path):
    values = "[" + ", ".join(str(i) for i in range(1000)) + "]"
    path = write(
        tmp_path,
        "version: 1\ncampaign: c\njobs:\n"
        f'  - id: "x-{{a}}-{{b}}-{{c}}"\n    model: grok-video-3\n    prompt: p\n'
        f"    matrix: {{a: {values}, b: {values}, c: {values}}}\n    takes: 1000\n",
    )
    assert problems_of(path) == [
        f"{path}:4:3: jobs: the manifest expands to 1,000,000,000,000 jobs; "
        "the limit is 100,000 (--max-jobs)"
    ]


def test_a_huge_rows_file_is_read_only_up_to_the_limit(tmp_path):
    (tmp_path / "rows.csv").write_text("n\n" + "".join(f"{i}\n" for i in range(50)))
    path = write(
        tmp_path,
        'version: 1\ncampaign: c\njobs:\n  - {id: "r-{n}", rows: rows.csv, '
        "model: grok-video-3, prompt: p}\n",
    )
    assert problems_of(path, max_jobs=10) == [
        f"{path}:4:3: jobs: the manifest expands to more than 11 jobs; the limit is 10 (--max-jobs)"
    ]


def test_validation_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "rows.csv").write_text("sku\nA1\n")
    write(
        tmp_path,
        'version: 1\ncampaign: c\njobs:\n  - {id: "r-{sku}", rows: rows.csv, '
        "model: grok-video-3, prompt: p}\n",
    )
    write(tmp_path, "version: 1\ncampaign: c\njobs: [{model: nope}]\n", "bad.yaml")
    before = sorted(os.listdir(tmp_path))
    check_manifest("m.yaml")
    problems_of("bad.yaml")
    assert sorted(os.listdir(tmp_path)) == before
    assert not Path(os.environ["BATCHGEN_LEDGER"]).exists()


def test_100_000_jobs_expand(tmp_path):
    """Not timed here (bench/ is for timings); it proves the path works at full size."""
    values = "[" + ", ".join(f"v{i}" for i in range(100)) + "]"
    path = write(
        tmp_path,
        "version: 1\ncampaign: c\ndefaults: {model: grok-video-3}\njobs:\n"
        f'  - id: "x-{{a}}-{{b}}-{{take}}"\n    prompt: "A {{a}} and a {{b}}"\n'
        f"    matrix: {{a: {values}, b: {values}}}\n    takes: 10\n",
    )
    jobs = check_manifest(path).jobs
    assert len(jobs) == 100_000 and jobs[-1].id == "x-v99-v99-10"


# --- no input makes check_manifest fail with anything but ManifestInvalid ----------------

_text = st.text(alphabet="ab{}/ -_x1", max_size=8)
_any = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 20) | st.floats(allow_nan=True) | _text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_text, inner, max_size=3),
    max_leaves=6,
)
_media = st.lists(
    st.fixed_dictionaries(
        {"type": st.sampled_from(["image", "video", "audio", "gif"]), "url": _text}
    )
    | _any,
    max_size=4,
)
_field_values = {
    "id": _text,
    "prompt": _text,
    "model": st.sampled_from(["grok-video-3", "veo3.1", "jimeng-5.0", "nope"]),
    "duration": st.integers(-1, 20) | st.floats(0, 20),
    "ratio": st.sampled_from(["16:9", "1:1", "2:3", "5:4"]),
    "variant": st.sampled_from(["veo3.1-fast", "veo3.1-pro", "x"]),
    "ref_mode": st.sampled_from(["omni", "first-last", "x"]),
    "media": _media,
    "resolution": st.sampled_from(["1k", "8k"]),
    "tags": st.lists(_text, max_size=2),
}
_fields = st.fixed_dictionaries(
    {}, optional={name: value | _any for name, value in _field_values.items()}
)
_matrix = st.dictionaries(
    st.sampled_from(["model", "duration", "take", "n", "sku", "media", "id"]),
    st.lists(_any, max_size=3) | _any,
    max_size=3,
)
_jobs = st.lists(
    _fields.flatmap(
        lambda fields: st.fixed_dictionaries(
            {},
            optional={
                "matrix": _matrix,
                "takes": st.integers(-1, 3) | _any,
                "rows": st.sampled_from(["r.csv", "r.jsonl", "gone.csv", "r.txt"]) | _any,
            },
        ).map(lambda expanders: {**fields, **expanders})
    )
    | _any,
    max_size=4,
)
_manifests = st.fixed_dictionaries(
    {"version": st.just(1) | _any, "campaign": st.just("c") | _text, "jobs": _jobs | _any},
    optional={"defaults": _fields | _any, "budget_usd": st.floats() | _any, "extra": _any},
)
_ROWS = {
    "r.csv": 'n,sku,duration,model,tags\n1,a{x},5,grok-video-3,"t1,t2"\n2,b,x,,\n3,c\n',
    "r.jsonl": '{"n": 1, "duration": 10, "media": [{"type": "image"}]}\n{"n": [2]}\nnot json\n',
}


@settings(max_examples=300, deadline=None)
@given(_manifests | _any)
def test_any_manifest_structure_gives_a_manifest_or_manifest_invalid(data):
    with tempfile.TemporaryDirectory() as directory:
        for name, text in _ROWS.items():
            (Path(directory) / name).write_text(text, encoding="utf-8")
        path = Path(directory) / "m.yaml"
        path.write_text(yaml.safe_dump(data), encoding="utf-8")
        try:
            result = check_manifest(path, max_jobs=50)
        except ManifestInvalid as e:
            assert e.problems == sorted(e.problems)
            assert all(p.line >= 1 and p.col >= 1 and p.message for p in e.problems)
        else:
            assert all(job.request() and job.cost_micros() >= 0 for job in result.jobs)


# --- all problems at once (PRODUCT.md §4): no layer hides another's problems -------------

BROKEN_EVERYWHERE = """\
version: 1
campaign: Bad Name
defaults: {model: grok-video-3, duration: five, colour: red}
jobs:
  - {id: a, prompt: A cat, ratio: "16:9", size: big}
  - {id: dup, prompt: "A {mood} cat"}
  - {id: dup, prompt: A dog, duration: 7}
  - {id: "m-{model}", model: 5, prompt: A cat, duration: 99}
  - {id: v, model: veo3.1, prompt: A ship, tags: [ok, ""]}
  - {id: t, prompt: A cat, matrix: {n: []}, ratio: "16:9"}
"""

EVERY_PROBLEM = [
    "m.yaml:2:11: campaign: campaign 'Bad Name' is not allowed: 1-64 lowercase letters, "
    "digits, '.', '_' or '-', starting with a letter or digit",
    "m.yaml:3:43: defaults.duration: duration must be a whole number (got 'five')",
    "m.yaml:3:49: defaults.colour: unknown key 'colour' (allowed: id, model, prompt, duration, "
    "ratio, variant, ref_mode, media, resolution, tags)",
    # a job with an unknown key is still checked against the catalog
    "m.yaml:5:35: jobs[0] (a): ratio '16:9' is not allowed for grok-video-3 (allowed: 2:3, "
    "3:2, 1:1)",
    "m.yaml:5:43: jobs[0].size: unknown key 'size' (allowed: id, model, prompt, duration, "
    "ratio, variant, ref_mode, media, resolution, tags, matrix, rows, takes)",
    # a template problem does not hide the duplicate id
    "m.yaml:6:23: jobs[1] (dup): unknown variable {mood} (known: duration, model, ratio, "
    "ref_mode, resolution, take, variant)",
    "m.yaml:7:10: jobs[2] (dup): duplicate id 'dup' (first used by jobs[1] (dup))",
    "m.yaml:7:40: jobs[2] (dup): duration 7 is not allowed for grok-video-3 (allowed: 5, 10, 15)",
    # a broken model: nothing about the model twice, nor the templates that name it
    "m.yaml:8:30: jobs[3].model: model 5 is not one of: jimeng-video-seedance-2.0, "
    "jimeng-video-seedance-2.0-fast, grok-video-3, veo3.1, jimeng-5.0",
    # a broken tag: the rest of the job is checked
    "m.yaml:9:5: jobs[4] (v): variant is required for veo3.1",
    "m.yaml:9:55: jobs[4].tags[1]: tags[1] must not be empty",
    # a broken matrix: the job cannot be expanded, so nothing else is said about it
    "m.yaml:10:40: jobs[5].matrix.n: n must not be empty",
]


def test_every_problem_of_every_layer_is_reported_at_once(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path, BROKEN_EVERYWHERE)
    assert problems_of("m.yaml") == EVERY_PROBLEM


def test_fixing_the_reported_problems_reveals_no_new_ones(tmp_path, monkeypatch):
    """The layered reporting this replaces showed a few problems, then more once they
    were fixed: fixing the structural ones (same lines, same places) reveals nothing new."""
    monkeypatch.chdir(tmp_path)
    fixed = (
        BROKEN_EVERYWHERE.replace("Bad Name", "bad-name")
        .replace("duration: five,", "duration:    5,")
        .replace(", size: big", "")
        .replace("model: 5,", "model: grok-video-3,")
        .replace('[ok, ""]', "[ok]")
        .replace("{n: []}", "{n: [1]}")
    )
    write(tmp_path, BROKEN_EVERYWHERE)
    before = problems_of("m.yaml")
    write(tmp_path, fixed)
    after = problems_of("m.yaml")
    new = [line for line in after if line not in before]
    # Only what the fix itself introduced: the job that now has a model of its own and the
    # job whose matrix now expands are checked for the first time.
    assert new == [
        "m.yaml:8:69: jobs[3] (m-grok-video-3): duration 99 is not allowed for grok-video-3 "
        "(allowed: 5, 10, 15)",
        "m.yaml:10:53: jobs[5] (t): ratio '16:9' is not allowed for grok-video-3 (allowed: "
        "2:3, 3:2, 1:1)",
    ]


def test_a_duplicate_id_is_reported_when_the_first_job_has_a_template_problem(tmp_path):
    path = write(
        tmp_path,
        "version: 1\ncampaign: c\ndefaults: {model: grok-video-3}\njobs:\n"
        '  - {id: cat, prompt: "A {nope} cat"}\n'
        "  - {id: cat, prompt: A cat}\n",
    )
    found = problems_of(path)
    assert len(found) == 2
    assert "unknown variable {nope}" in found[0]
    assert "duplicate id 'cat' (first used by jobs[0] (cat))" in found[1]


def test_a_broken_default_model_leaves_only_the_jobs_with_their_own_model_checked(tmp_path):
    path = write(
        tmp_path,
        "version: 1\ncampaign: c\ndefaults: {model: sora-9, duration: 7}\njobs:\n"
        "  - {id: a, prompt: A cat}\n"
        "  - {id: b, prompt: A cat, model: grok-video-3}\n"
        "  - {id: c, prompt: A cat, model: veo3.1}\n",
    )
    found = problems_of(path)
    assert [line.split(": ", 1)[1] for line in found] == [
        "defaults.model: model 'sora-9' is not one of: jimeng-video-seedance-2.0, "
        "jimeng-video-seedance-2.0-fast, grok-video-3, veo3.1, jimeng-5.0",
        "jobs[1] (b): duration 7 is not allowed for grok-video-3 (allowed: 5, 10, 15)",
        "jobs[2] (c): variant is required for veo3.1",
    ]
