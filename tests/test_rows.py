"""Rows files as content teams keep them: Excel workbooks, blank rows, other encodings, and
text that is not valid Unicode. Workbooks are real .xlsx files written with openpyxl."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import openpyxl
import pytest

from batchgen.errors import ManifestInvalid
from batchgen.validate import check_manifest
from tests.e2e import batchgen, rows


def workbook(path: Path, sheets: dict[str, list[list[Any]]]) -> Path:
    """An .xlsx file with these sheets (in order), each a list of rows of cell values."""
    book = openpyxl.Workbook()
    book.remove(book.active)
    for title, cells in sheets.items():
        sheet = book.create_sheet(title)
        for r, values in enumerate(cells, 1):
            for c, value in enumerate(values, 1):
                if value is not None:
                    sheet.cell(row=r, column=c, value=value)
    book.save(path)
    return path


def manifest(tmp_path: Path, rows_name: str, extra: str = "") -> Path:
    path = tmp_path / "m.yaml"
    path.write_text(
        "version: 1\ncampaign: c\n"
        f"{extra}"
        "defaults: {model: grok-video-3}\n"
        "jobs:\n"
        f'  - {{id: "row-{{sku}}", rows: "{rows_name}",'
        ' prompt: "{description}, studio light"}\n',
        encoding="utf-8",
    )
    return path


def problems(path: Path) -> list[str]:
    with pytest.raises(ManifestInvalid) as raised:
        check_manifest(path)
    return [str(problem) for problem in raised.value.problems]


PROMPTS = [
    ["sku", "description", "duration", "tags"],
    ["S1", "A red sneaker", 10, "shoes, red"],
    [None, None, None, None],
    ["S2", "A blue backpack", None, None],
]


# --- Excel workbooks ------------------------------------------------------------------


def test_a_workbooks_first_sheet_is_read_like_a_csv(tmp_path):
    workbook(tmp_path / "prompts.xlsx", {"Prompts": PROMPTS, "Notes": [["ignored"]]})
    jobs = check_manifest(manifest(tmp_path, "prompts.xlsx")).jobs
    assert [(j.id, j.prompt, j.duration, j.tags) for j in jobs] == [
        ("row-S1", "A red sneaker, studio light", 10, ["shoes", "red"]),
        ("row-S2", "A blue backpack, studio light", None, []),
    ]


def test_a_named_sheet_is_read_with_a_hash(tmp_path):
    workbook(
        tmp_path / "prompts.xlsx",
        {"Draft": [["sku", "description"], ["D1", "draft"]], "Final cut": PROMPTS},
    )
    jobs = check_manifest(manifest(tmp_path, "prompts.xlsx#Final cut")).jobs
    assert [job.id for job in jobs] == ["row-S1", "row-S2"]


def test_a_problem_in_a_workbook_names_the_sheet_row_and_column(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cells = [
        [],  # the header may start lower down
        ["sku", "description", "duration"],
        ["S1", "A cat", "five"],
        ["S2", "A dog", 7],
        ["S3", "A bird", 5.0],  # a whole number stored as a float is that number
    ]
    workbook(tmp_path / "prompts.xlsx", {"Sheet1": cells})
    manifest(tmp_path, "prompts.xlsx")
    assert problems(Path("m.yaml")) == [
        "prompts.xlsx#Sheet1:3:3: jobs[0]: cell C3: column duration: 'five' is not a whole "
        "number of seconds",
        "prompts.xlsx#Sheet1:4:3: jobs[0] (row-S2): duration 7 is not allowed for "
        "grok-video-3 (allowed: 5, 10, 15)",
    ]


def test_an_unknown_sheet_a_damaged_workbook_and_an_old_xls_are_clear_errors(tmp_path):
    workbook(tmp_path / "prompts.xlsx", {"Prompts": PROMPTS, "Other": [["x"]]})
    (tmp_path / "broken.xlsx").write_bytes(b"PK\x03\x04 not really a zip")
    (tmp_path / "old.xls").write_bytes(b"\xd0\xcf\x11\xe0")
    found = problems(manifest(tmp_path, "prompts.xlsx#Nope"))
    assert len(found) == 1 and "has no sheet 'Nope' (sheets: Prompts, Other)" in found[0]
    found = problems(manifest(tmp_path, "broken.xlsx"))
    assert len(found) == 1 and "not a readable .xlsx workbook" in found[0]
    found = problems(manifest(tmp_path, "old.xls"))
    assert len(found) == 1 and "save a .xls workbook as .xlsx" in found[0]


def test_a_header_without_a_name_and_a_value_outside_the_header_are_placed(tmp_path):
    workbook(tmp_path / "a.xlsx", {"S": [["sku", None, "description"], ["S1", "x", "A cat"]]})
    workbook(tmp_path / "b.xlsx", {"S": [["sku", "description"], ["S1", "A cat", "stray"]]})
    assert [p.split(": ", 1)[1] for p in problems(manifest(tmp_path, "a.xlsx"))] == [
        "jobs[0]: cell B1: the header's column has no name"
    ]
    found = problems(manifest(tmp_path, "b.xlsx"))
    assert [p.split(": jobs[0]: ")[0].rsplit("/", 1)[-1] for p in found] == ["b.xlsx#S:2:3"]
    assert "cell C2 has a value, but its column has no name in the header" in found[0]


def test_an_ingested_workbook_lands_in_the_ledger(tmp_path):
    workbook(tmp_path / "prompts.xlsx", {"Prompts": PROMPTS})
    ledger = tmp_path / "ledger.db"
    result = batchgen("ingest", str(manifest(tmp_path, "prompts.xlsx")), ledger=ledger)
    assert result.returncode == 0, result.stderr
    assert rows(ledger, "SELECT id, duration FROM jobs ORDER BY position") == [
        {"id": "row-S1", "duration": 10},
        {"id": "row-S2", "duration": 5},  # the catalog's default, sent
    ]


# --- blank rows are never jobs (a job from nothing is still billed) -----------------------


@pytest.mark.parametrize(
    "name, text",
    [
        ("r.csv", "sku,description\nS1,A cat\n,\n , \n\nS2,A dog\n"),
        ("r.jsonl", '{"sku": "S1", "description": "A cat"}\n{}\n{"sku": null, "description": " "}\n'
                    '{"sku": "S2", "description": "A dog"}\n'),
    ],
)  # fmt: skip
def test_a_row_of_empty_cells_is_skipped(tmp_path, name, text):
    (tmp_path / name).write_text(text, encoding="utf-8")
    jobs = check_manifest(manifest(tmp_path, name)).jobs
    assert [(job.id, job.prompt) for job in jobs] == [
        ("row-S1", "A cat, studio light"),
        ("row-S2", "A dog, studio light"),
    ]


def test_a_workbook_row_of_blank_cells_is_skipped(tmp_path):
    cells = [["sku", "description"], ["S1", "A cat"], ["", "   "], [None, None], ["S2", "A dog"]]
    workbook(tmp_path / "r.xlsx", {"S": cells})
    assert [j.id for j in check_manifest(manifest(tmp_path, "r.xlsx")).jobs] == ["row-S1", "row-S2"]


def test_a_rows_file_of_blank_rows_only_has_no_rows(tmp_path):
    (tmp_path / "r.csv").write_text("sku,description\n,\n", encoding="utf-8")
    found = problems(manifest(tmp_path, "r.csv"))
    assert len(found) == 1 and "has no rows" in found[0]


# --- encodings and invalid text --------------------------------------------------------


def test_a_csv_that_is_not_utf8_says_how_to_save_it_as_utf8(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "r.csv").write_bytes("sku,description\nS1,Café crème\n".encode("cp1252"))
    manifest(tmp_path, "r.csv")
    assert problems(Path("m.yaml")) == [
        "r.csv:2:1: jobs[0]: not UTF-8 text (byte 0xe9): save it as UTF-8 (in Excel: Save As, "
        '"CSV UTF-8 (Comma delimited) (*.csv)"; in Google Sheets: File > Download > '
        '"Comma-separated values")'
    ]


def test_a_lone_surrogate_in_json_lines_is_a_validation_error_not_an_ingest_crash(tmp_path):
    lines = [
        {"sku": "S1", "description": "A cat \U0001f431"},  # a real emoji (an escaped pair)
        {"sku": "S2", "description": "A dog \\ud83d"},  # half of one
    ]
    text = json.dumps(lines[0]) + "\n" + json.dumps(lines[1]).replace("\\\\", "\\") + "\n"
    (tmp_path / "r.jsonl").write_text(text, encoding="utf-8")
    ledger = tmp_path / "ledger.db"
    result = batchgen("ingest", str(manifest(tmp_path, "r.jsonl")), ledger=ledger)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "r.jsonl:2:" in result.stderr and "lone surrogate" in result.stderr
    assert not ledger.exists()


def test_a_budget_beyond_any_sane_amount_is_a_validation_error_not_an_overflow(tmp_path):
    (tmp_path / "r.csv").write_text("sku,description\nS1,A cat\n", encoding="utf-8")
    path = manifest(tmp_path, "r.csv", extra="budget_usd: 100000000000000\n")
    ledger = tmp_path / "ledger.db"
    for command in ("validate", "ingest"):
        result = batchgen(command, str(path), ledger=ledger)
        assert result.returncode == 1, result.stderr
        assert "Traceback" not in result.stderr
        assert "budget_usd must be at most 10,000,000 (got 100000000000000)" in result.stderr
    assert not ledger.exists()
