"""Expansion (PRODUCT.md §3): defaults, matrix × rows × takes, templates, ids."""

from __future__ import annotations

import hashlib
import json
import math
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from batchgen.errors import ManifestInvalid
from batchgen.job import Job, canonical_json
from batchgen.templates import parse_template
from batchgen.validate import check_manifest


def expand(directory: Path, manifest: dict[str, Any] | str, **files: str) -> list[Job]:
    """Write a manifest (and its rows files) into `directory` and expand it."""
    for name, text in files.items():
        (directory / name.replace("_", ".")).write_text(text, encoding="utf-8")
    text = manifest if isinstance(manifest, str) else yaml.safe_dump(manifest, sort_keys=False)
    path = directory / "m.yaml"
    path.write_text(text, encoding="utf-8")
    return check_manifest(path).jobs


def problems(directory: Path, manifest: dict[str, Any] | str, **files: str) -> list[str]:
    with pytest.raises(ManifestInvalid) as raised:
        expand(directory, manifest, **files)
    prefix = f"{directory}/"
    return [str(p).removeprefix(prefix) for p in raised.value.problems]


def messages(found: list[str]) -> list[str]:
    """Problem lines without FILE:LINE:COL (for manifests whose layout safe_dump chose)."""
    return [line.split(": ", 1)[1] for line in found]


def doc(*jobs: dict[str, Any], **top: Any) -> dict[str, Any]:
    return {"version": 1, "campaign": "c", **top, "jobs": list(jobs)}


GROK = {"model": "grok-video-3"}


# --- order and counts -----------------------------------------------------------------


def test_rows_then_matrix_in_key_order_then_takes(tmp_path):
    jobs = expand(
        tmp_path,
        doc(
            {
                **GROK,
                "id": "{sku}-{a}-{b}-{take}",
                "prompt": "p",
                "rows": "r.csv",
                "matrix": {"a": [1, 2], "b": ["x", "y"]},
                "takes": 2,
            }
        ),
        r_csv="sku\nS1\nS2\n",
    )
    assert [job.id for job in jobs][:9] == [
        "S1-1-x-1", "S1-1-x-2", "S1-1-y-1", "S1-1-y-2",
        "S1-2-x-1", "S1-2-x-2", "S1-2-y-1", "S1-2-y-2",
        "S2-1-x-1",
    ]  # fmt: skip
    assert len(jobs) == 2 * 4 * 2


def test_jobs_keep_manifest_order(tmp_path):
    jobs = expand(
        tmp_path,
        doc({**GROK, "id": "b", "prompt": "p"}, {**GROK, "id": "a", "prompt": "p"}),
    )
    assert [job.id for job in jobs] == ["b", "a"]


# --- defaults -------------------------------------------------------------------------


def test_a_default_the_model_does_not_take_is_not_applied(tmp_path):
    jobs = expand(
        tmp_path,
        doc(
            {"id": "veo", "model": "veo3.1", "variant": "veo3.1-fast", "prompt": "p"},
            {"id": "poster", "model": "jimeng-5.0", "prompt": "p"},
            {"id": "grok", "prompt": "p"},
            defaults={"model": "grok-video-3", "duration": 10, "resolution": "2k", "media": []},
        ),
    )
    veo, poster, grok = jobs
    assert veo.duration is None and veo.resolution is None and veo.media is None
    assert poster.duration is None and poster.resolution == "2k"
    assert grok.duration == 10 and grok.resolution is None and grok.media is None


def test_a_default_the_model_takes_but_refuses_is_an_error(tmp_path):
    found = problems(
        tmp_path,
        doc({"id": "veo", "model": "veo3.1", "variant": "veo3.1-fast", "prompt": "p"},
            defaults={"ratio": "1:1"}),
    )  # fmt: skip
    assert messages(found) == [
        "jobs[0] (veo): ratio '1:1' is not allowed for veo3.1 (allowed: 16:9, 9:16)"
    ]


def test_a_jobs_own_tags_replace_the_defaults_tags(tmp_path):
    jobs = expand(
        tmp_path,
        doc(
            {**GROK, "id": "a", "prompt": "p"},
            {**GROK, "id": "b", "prompt": "p", "tags": ["hero"]},
            defaults={"tags": ["spring", "2025"]},
        ),
    )
    assert [job.tags for job in jobs] == [["spring", "2025"], ["hero"]]


def test_matrix_and_rows_set_fields_over_defaults(tmp_path):
    jobs = expand(
        tmp_path,
        doc(
            {"id": "m-{model}", "prompt": "p", "matrix": {"model": ["grok-video-3", "veo3.1"]}},
            {"id": "r-{n}", "prompt": "p", "rows": "r.jsonl"},
            defaults={
                "model": "jimeng-video-seedance-2.0",
                "duration": 5,
                "variant": "veo3.1-fast",
            },
        ),
        r_jsonl='{"n": 1, "duration": 10, "model": "grok-video-3"}\n{"n": 2, "duration": null}\n',
    )
    assert [(job.id, job.model, job.duration, job.variant) for job in jobs] == [
        ("m-grok-video-3", "grok-video-3", 5, None),
        ("m-veo3.1", "veo3.1", None, "veo3.1-fast"),
        ("r-1", "grok-video-3", 10, None),
        ("r-2", "jimeng-video-seedance-2.0", 5, None),
    ]


# --- templates ------------------------------------------------------------------------


def test_templates_use_matrix_rows_take_and_the_jobs_fields(tmp_path):
    [job] = expand(
        tmp_path,
        doc(
            {
                "id": "{sku}-{colour}-{model}-{duration}-{ratio}-{take}",
                "prompt": "A {colour} {sku} in {{braces}}",
                "model": "jimeng-video-seedance-2.0",
                "ratio": "16:9",
                "ref_mode": "omni",
                "media": [{"type": "image", "url": "https://example.com/{sku}.jpg"}],
                "matrix": {"colour": ["red"]},
                "rows": "r.csv",
            }
        ),
        r_csv="sku\nshoe\n",
    )
    # {duration} is the duration that will be sent: the catalog default, 5
    assert job.id == "shoe-red-jimeng-video-seedance-2.0-5-16:9-1"
    assert job.prompt == "A red shoe in {braces}"
    assert job.media == [{"type": "image", "url": "https://example.com/shoe.jpg"}]
    assert job.duration is None  # the catalog default is not baked in


def test_templates_in_defaults_are_rendered_per_job(tmp_path):
    jobs = expand(
        tmp_path,
        doc(
            {**GROK, "matrix": {"animal": ["cat", "dog"]}, "id": "{animal}"},
            defaults={"prompt": "A {animal} at dusk"},
        ),
    )
    assert [job.prompt for job in jobs] == ["A cat at dusk", "A dog at dusk"]


def test_values_from_a_rows_file_are_taken_literally(tmp_path):
    [job] = expand(
        tmp_path,
        doc({**GROK, "id": "r", "rows": "r.csv"}),
        r_csv='prompt\n"A {not a template} }"\n',
    )
    assert job.prompt == "A {not a template} }"


def test_matrix_values_render_as_text(tmp_path):
    jobs = expand(
        tmp_path,
        doc({**GROK, "id": "v-{v}", "prompt": "p", "matrix": {"v": [1, 2.5, 3.0, True]}}),
    )
    assert [job.id for job in jobs] == ["v-1", "v-2.5", "v-3", "v-true"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("plain", ("plain", ())),
        ("a {x} b", ("a {x} b", ("x",))),
        ("{{x}}", ("{x}", ())),
        ("{a}{b}{a}", ("{a}{b}{a}", ("a", "b"))),
        ("{{{a}}}", ("{{{a}}}", ("a",))),
    ],
)
def test_parse_template(text, expected):
    template = parse_template(text)
    assert template.error is None
    assert (template.pattern, template.names) == expected


@pytest.mark.parametrize("text", ["{", "}", "a {b", "{a b}", "{}", "{1x}", "{a:02d}", "{a!r}"])
def test_malformed_templates_are_errors(text):
    assert parse_template(text).error


def test_a_field_variable_without_a_value_is_an_error(tmp_path):
    found = problems(tmp_path, doc({**GROK, "id": "x-{variant}", "prompt": "p"}))
    assert messages(found) == ["jobs[0]: {variant} has no value for this job"]


# --- rows files -----------------------------------------------------------------------


def test_csv_text_is_converted_to_field_types_and_empty_cells_are_unset(tmp_path):
    jobs = expand(
        tmp_path,
        doc(
            {"id": "r-{n}", "prompt": "p", "rows": "r.csv"},
            defaults={"model": "jimeng-video-seedance-2.0", "duration": 5, "tags": ["d"]},
        ),
        r_csv=(
            "n,duration,tags,media,ref_mode\n"
            '1, 10 ,"a, b",,\n'
            '2,,,"[{""type"": ""image"", ""url"": ""https://example.com/x.jpg""}]",omni\n'
        ),
    )
    assert [(j.duration, j.tags, j.media, j.ref_mode) for j in jobs] == [
        (10, ["a", "b"], None, None),
        (5, ["d"], [{"type": "image", "url": "https://example.com/x.jpg"}], "omni"),
    ]


def test_jsonl_values_keep_their_json_types(tmp_path):
    [job] = expand(
        tmp_path,
        doc({**GROK, "id": "r-{n}-{flag}", "prompt": "p", "rows": "r.jsonl"}),
        r_jsonl='{"n": 7, "flag": false, "tags": ["x"], "duration": 15}\n\n',
    )
    assert (job.id, job.tags, job.duration) == ("r-7-false", ["x"], 15)


def test_rows_paths_are_relative_to_the_manifest(tmp_path, monkeypatch):
    sub = tmp_path / "sub"
    sub.mkdir()
    (sub / "r.csv").write_text("n\n1\n")
    (sub / "m.yaml").write_text(
        yaml.safe_dump(doc({**GROK, "id": "r-{n}", "prompt": "p", "rows": "r.csv"}))
    )
    monkeypatch.chdir(tmp_path)
    assert [job.id for job in check_manifest("sub/m.yaml").jobs] == ["r-1"]


def test_problems_in_rows_name_the_rows_file_and_line(tmp_path, monkeypatch):
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sub" / "r.csv").write_text("n,duration\n1,5\n2,x\n3,20\n")
    (tmp_path / "sub" / "m.yaml").write_text(
        yaml.safe_dump(doc({**GROK, "id": "r-{n}", "prompt": "p", "rows": "r.csv"}))
    )
    with pytest.raises(ManifestInvalid) as raised:
        check_manifest("sub/m.yaml")
    assert [str(p) for p in raised.value.problems] == [
        "sub/r.csv:3:1: jobs[0]: column duration: 'x' is not a whole number of seconds",
        "sub/r.csv:4:1: jobs[0] (r-3): duration 20 is not allowed for grok-video-3 "
        "(allowed: 5, 10, 15)",
    ]


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ('{"id": 5}\n', "column id: 5 is not text"),
        ('{"tags": "a"}\n', "column tags: 'a' is not a list of tags (non-empty text)"),
        ('{"duration": true}\n', "column duration: True is not a whole number of seconds"),
        ('{"variant": ["veo3.1-fast"]}\n', "column variant: ['veo3.1-fast'] is not text"),
    ],
)
def test_jsonl_values_of_the_wrong_type_are_problems(tmp_path, rows, message):
    found = problems(tmp_path, doc({**GROK, "prompt": "p", "rows": "r.jsonl"}), r_jsonl=rows)
    assert found == [f"r.jsonl:1:1: jobs[0]: {message}"]


def test_a_rows_file_without_rows_is_a_problem(tmp_path):
    found = problems(tmp_path, doc({**GROK, "prompt": "p", "rows": "r.csv"}), r_csv="n\n")
    assert messages(found) == [f"jobs[0].rows: rows file {tmp_path}/r.csv has no rows"]


def test_take_is_reserved(tmp_path):
    found = problems(
        tmp_path, doc({**GROK, "id": "{take}", "prompt": "p", "matrix": {"take": [1, 2]}})
    )
    assert messages(found) == [
        "jobs[0].matrix.take: take is the take number (1..takes), not a matrix key"
    ]


# --- ids ------------------------------------------------------------------------------


def hash_id(fields: dict[str, Any], take: int = 1) -> str:
    content = canonical_json({**fields, "take": take})
    return "job-" + hashlib.sha256(content.encode()).hexdigest()[:10]


def test_an_id_less_job_is_named_by_its_content_and_take(tmp_path):
    jobs = expand(
        tmp_path,
        doc({"prompt": "A cat", "takes": 2}, defaults={**GROK, "duration": 5, "tags": ["t"]}),
    )
    fields = {"model": "grok-video-3", "prompt": "A cat", "duration": 5, "tags": ["t"]}
    assert [job.id for job in jobs] == [hash_id(fields, 1), hash_id(fields, 2)]


def test_an_id_is_checked_as_a_file_name(tmp_path):
    found = problems(
        tmp_path,
        doc(
            {**GROK, "id": "a\tb", "prompt": "p"},
            {**GROK, "id": "x" * 201, "prompt": "p"},
            {**GROK, "id": "back\\slash", "prompt": "p"},
        ),
    )
    assert [line.split(": ", 2)[-1] for line in found] == [
        "id 'a\\tb' contains '/', '\\' or a control character",
        f"id '{'x' * 56}... is longer than 200 characters",
        "id 'back\\\\slash' contains '/', '\\' or a control character",
    ]


# --- properties -----------------------------------------------------------------------

names = st.text(alphabet="abcdefghij", min_size=1, max_size=4)
words = st.text(alphabet="abcdefghijklmnopqrstuvwxyz -", min_size=1, max_size=12)
matrices = st.dictionaries(
    names.map(lambda n: "v" + n), st.lists(words, min_size=1, max_size=3, unique=True),
    max_size=3,
)  # fmt: skip


@st.composite
def job_specs(draw: st.DrawFn) -> dict[str, Any]:
    """A job with an optional matrix, rows count and takes, with or without an id."""
    job: dict[str, Any] = {
        "prompt": draw(words) + " " + str(draw(st.integers(0, 10**9))),
        "model": draw(st.sampled_from(["grok-video-3", "jimeng-video-seedance-2.0-fast"])),
    }
    matrix = draw(matrices)
    if matrix:
        job["matrix"] = matrix
        job["prompt"] += " " + " ".join("{" + key + "}" for key in matrix)
    if draw(st.booleans()):
        job["takes"] = draw(st.integers(1, 3))
    rows = draw(st.integers(0, 3))
    if rows:
        job["rows"] = rows  # replaced by a file name when written
        job["prompt"] += " {row}"
    return job


def base_prompt(job: dict[str, Any]) -> str:
    """The prompt before its placeholders: two jobs whose templates differ only in variable
    names would render the same content, which rightly gets the same generated id."""
    return str(job["prompt"]).split("{")[0]


def write_and_expand(directory: Path, jobs: list[dict[str, Any]]) -> list[Job]:
    written = []
    for i, job in enumerate(jobs):
        job = dict(job)
        if "rows" in job:
            name = f"rows{i}.csv"
            (directory / name).write_text("row\n" + "".join(f"r{n}\n" for n in range(job["rows"])))
            job["rows"] = name
        written.append(job)
    path = directory / "m.yaml"
    path.write_text(yaml.safe_dump(doc(*written)), encoding="utf-8")
    return check_manifest(path).jobs


def expected_count(job: dict[str, Any]) -> int:
    matrix = math.prod(len(values) for values in job.get("matrix", {}).values())
    return matrix * job.get("rows", 1) * job.get("takes", 1)


@settings(max_examples=60, deadline=None)
@given(st.lists(job_specs(), min_size=1, max_size=4, unique_by=base_prompt))
def test_the_job_count_is_the_product_of_matrix_sizes_rows_and_takes(jobs):
    with tempfile.TemporaryDirectory() as directory:
        expanded = write_and_expand(Path(directory), jobs)
    assert len(expanded) == sum(expected_count(job) for job in jobs)
    assert len({job.id for job in expanded}) == len(expanded)  # generated ids are unique


@settings(max_examples=60, deadline=None)
@given(
    st.lists(job_specs(), min_size=2, max_size=4, unique_by=base_prompt),
    st.randoms(use_true_random=False),
)
def test_generated_ids_do_not_depend_on_the_other_jobs_or_their_order(jobs, random):
    with tempfile.TemporaryDirectory() as directory:
        before = write_and_expand(Path(directory), jobs)
        shuffled = list(jobs)
        random.shuffle(shuffled)
        after = write_and_expand(Path(directory), shuffled[1:])  # reordered, one removed

    def by_id(expanded: list[Job]) -> dict[str, str]:
        return {job.id: json.dumps(job.request()) + str(job.tags) for job in expanded}

    kept = by_id(after)
    assert kept.items() <= by_id(before).items()
    assert len(kept) == len(after)


@settings(max_examples=40, deadline=None)
@given(matrices.filter(bool), st.integers(1, 3))
def test_ids_templated_with_every_variable_are_unique(matrix, takes):
    template = "|".join("{" + key + "}" for key in matrix) + "|{take}"  # values have no |
    with tempfile.TemporaryDirectory() as directory:
        jobs = write_and_expand(
            Path(directory),
            [{**GROK, "id": template, "prompt": "p", "matrix": matrix, "takes": takes}],
        )
    assert len({job.id for job in jobs}) == len(jobs) == expected_count({"matrix": matrix}) * takes
