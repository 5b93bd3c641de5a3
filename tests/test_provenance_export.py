"""`export --layout`: a template of known fields giving one path per file inside --to;
anything else is a usage error (exit 2) before any copy."""

from __future__ import annotations

from pathlib import Path

import pytest

from batchgen.errors import UsageProblem
from batchgen.provenance.export import Export, _targets, check_layout


def row(job: str, path: str, verdict: str | None = "approved") -> dict:
    return {"campaign": "spring launch", "job_id": job, "model": "veo3.1", "verdict": verdict,
            "path": path, "n": 0}  # fmt: skip


def test_a_layout_places_each_file_by_its_fields_made_safe():
    options = Export(to=Path("x"), layout="{campaign}/{verdict}/{model}-{stem}.{ext}")
    rows = [row("cat", "out/spring/cat.mp4"), row("dog", "out/spring/dog.png", None)]
    first, second = _targets(rows, options)
    assert first.endswith("/approved/veo3.1-cat.mp4") and "/" not in first.split("/")[0]
    assert second.endswith("/unreviewed/veo3.1-dog.png")


@pytest.mark.parametrize(
    "layout, words",
    [("{foo}/{file}", "unknown field {foo}"), ("../{file}", "inside --to"),
     ("/abs/{file}", "inside --to"), ("{campaign", "--layout")],
)  # fmt: skip
def test_a_bad_layout_is_a_usage_error_naming_it(layout, words):
    with pytest.raises(UsageProblem, match="--layout") as caught:
        check_layout(layout)
    assert words in str(caught.value) and caught.value.exit_code == 2


def test_a_layout_giving_two_files_one_path_is_refused_naming_both():
    options = Export(to=Path("x"), layout="{campaign}/{verdict}")
    with pytest.raises(UsageProblem, match="two files one path") as caught:
        _targets([row("a", "out/c/a.png"), row("b", "out/c/b.png")], options)
    assert "out/c/a.png" in str(caught.value) and "out/c/b.png" in str(caught.value)


def test_paths_differing_by_case_alone_are_one_path():
    options = Export(to=Path("x"), layout="{job}.png")
    with pytest.raises(UsageProblem):
        _targets([row("Cat", "out/c/Cat.png"), row("cat", "out/c/cat+1.png")], options)
