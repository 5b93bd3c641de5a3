"""Rows files as content teams keep them: Excel workbooks, blank rows, other encodings, and
text that is not valid Unicode. Workbooks are real .xlsx files written with openpyxl."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import openpyxl
import pytest

from batchgen import workbooks
from batchgen.errors import ManifestInvalid
from batchgen.rows import read_rows
from batchgen.validate import check_manifest
from tests.e2e import batchgen, rows
from tests.workbooks import bomb, inline, row, write_workbook


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


# --- hostile workbooks: bombs refused by named limits, every damaged cell placed ---------


def test_a_workbook_bomb_of_millions_of_empty_rows_is_refused_naming_the_limit(tmp_path):
    bomb(tmp_path / "prompts.xlsx", empty_rows=2_000_000)  # ~20 KB on disk
    ledger = tmp_path / "ledger.db"
    result = batchgen("validate", str(manifest(tmp_path, "prompts.xlsx")), ledger=ledger)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr and "Warning" not in result.stderr
    [problem] = [line for line in result.stderr.splitlines() if ": jobs[0]" in line]
    assert problem.endswith(
        "jobs[0].rows: rows file " + str(tmp_path / "prompts.xlsx") + " has more than "
        f"{workbooks.MAX_WORKBOOK_ROWS:,} rows (empty ones count too), the limit for a workbook"
    )


def wide_row(cells: int) -> str:
    return "<row>" + "<c/>" * cells + "</row>"


@pytest.mark.parametrize(
    "rows_xml, limit",
    [
        ([wide_row(workbooks.MAX_ROW_CELLS + 1)],
         f"{workbooks.MAX_ROW_CELLS:,} cells, the limit for a row"),
        ([wide_row(10_000)] * (workbooks.MAX_WORKBOOK_CELLS // 10_000 + 1),
         f"{workbooks.MAX_WORKBOOK_CELLS:,} cells (empty ones count too), the limit"),
        ([b" " * (workbooks.MAX_WORKBOOK_UNPACKED_BYTES + 1)],
         f"MiB, more than the {workbooks.MAX_WORKBOOK_UNPACKED_BYTES // 2**20} MiB limit"),
    ],
    ids=["cells in a row", "cells", "unpacked size"],
)  # fmt: skip
def test_a_workbook_beyond_each_limit_is_refused_naming_it(tmp_path, rows_xml, limit):
    header = row(1, inline("A1", "sku"), inline("B1", "description"))
    write_workbook(tmp_path / "prompts.xlsx", [header, *rows_xml])
    [problem] = problems(manifest(tmp_path, "prompts.xlsx"))
    assert "jobs[0].rows: rows file " in problem and limit in problem


def test_the_rows_of_a_sheet_are_counted_again_as_they_stream(tmp_path, monkeypatch):
    # The first pass counts <row> elements; openpyxl streams the same XML, counted again.
    cells = [["sku", "description"], *[[f"S{i}", "A cat"] for i in range(5)]]
    workbook(tmp_path / "prompts.xlsx", {"S": cells})
    monkeypatch.setattr(workbooks, "check_size", lambda archive: None)
    monkeypatch.setattr(workbooks, "MAX_WORKBOOK_ROWS", 3)
    found = read_rows(str(tmp_path / "prompts.xlsx"), limit=100)
    assert found.error is not None and "has more than 3 rows" in found.error


def test_a_row_numbered_in_the_millions_is_read_without_the_rows_before_it(tmp_path):
    header = row(1, inline("A1", "sku"), inline("B1", "description"))
    far = row(6_000_000, inline("A6000000", "S1"), inline("B6000000", "A cat"))
    write_workbook(tmp_path / "prompts.xlsx", [header, far])
    found = read_rows(str(tmp_path / "prompts.xlsx"), limit=100)
    assert [(r.line, r.variables) for r in found.rows] == [
        (6_000_000, {"sku": "S1", "description": "A cat"})
    ]


def encrypted_parts(path: Path) -> Path:
    """The workbook at `path`, each part marked encrypted in the zip's directory."""
    data = bytearray(path.read_bytes())
    at = data.find(b"PK\x01\x02")
    while at != -1:
        data[at + 8] |= 1  # general purpose flag bit 0: encrypted
        at = data.find(b"PK\x01\x02", at + 4)
    path.write_bytes(data)
    return path


def test_a_password_protected_workbook_is_a_clear_error_not_a_traceback(tmp_path):
    # Excel saves a workbook with a password as an OLE file (like an old .xls), not a zip.
    (tmp_path / "locked.xlsx").write_bytes(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(512))
    workbook(tmp_path / "parts.xlsx", {"S": [["sku", "description"], ["S1", "A cat"]]})
    encrypted_parts(tmp_path / "parts.xlsx")
    for name in ("locked.xlsx", "parts.xlsx"):
        [problem] = problems(manifest(tmp_path, name))
        assert "not a readable .xlsx workbook" in problem
        assert problem.endswith("save it in Excel as .xlsx without a password")


DAMAGED_CELLS = [
    (
        '<c r="B3" t="s"><v>999</v></c>',
        "cell B3: points at shared string 999, but the workbook has 3 (a damaged workbook)",
    ),
    (
        '<c r="B3"><v>12abc</v></c>',
        "cell B3: holds '12abc', which is not a number (a damaged workbook)",
    ),
    (
        '<c r="B3" s="1"><v>3000000</v></c>',  # a date in the year 10113
        "cell B3: holds the date 3000000, beyond the dates Excel can show (to 9999-12-31)",
    ),
    ('<c r="B3" t="e"><v>#N/A</v></c>', "cell B3: shows the error #N/A"),
    (
        '<c r="B3"><f>A3*2</f></c>',
        "cell B3: a formula whose value was never computed (the file was written by a "
        "program): open it in Excel or LibreOffice and save it",
    ),
]


@pytest.mark.parametrize("cell, message", DAMAGED_CELLS, ids=lambda v: v[:20])
def test_a_damaged_or_uncomputed_cell_is_a_problem_placed_by_sheet_row_and_cell(
    tmp_path, monkeypatch, cell, message
):
    monkeypatch.chdir(tmp_path)
    write_workbook(
        tmp_path / "prompts.xlsx",
        [
            row(1, '<c r="A1" t="s"><v>0</v></c>', '<c r="B1" t="s"><v>1</v></c>'),
            row(2, inline("A2", "S1"), '<c r="B2" t="s"><v>2</v></c>'),
            row(3, inline("A3", "S2"), cell),
            row(4, inline("A4", "S3"), '<c r="B4"><f>1+1</f><v>2</v></c>'),
        ],
        shared_strings=["sku", "description", "A cat"],
    )
    manifest(tmp_path, "prompts.xlsx")
    with warnings.catch_warnings(record=True) as caught:  # openpyxl warns of some: unseen
        warnings.simplefilter("always")
        found = problems(Path("m.yaml"))
    assert caught == []
    assert found == [f"prompts.xlsx#Sheet1:3:2: jobs[0]: {message}"]


def test_a_formula_computed_to_empty_text_is_an_empty_cell(tmp_path):
    write_workbook(
        tmp_path / "prompts.xlsx",
        [
            row(1, inline("A1", "sku"), inline("B1", "description"), inline("C1", "note")),
            row(2, inline("A2", "S1"), inline("B2", "A cat"),
                '<c r="C2" t="str"><f>""</f><v></v></c>'),  # =IF(..., "", ...)
        ],
    )  # fmt: skip
    jobs = check_manifest(manifest(tmp_path, "prompts.xlsx")).jobs
    assert [(job.id, job.prompt) for job in jobs] == [("row-S1", "A cat, studio light")]


# --- empty cells: unset fields, missing variables ---------------------------------------


@pytest.mark.parametrize(
    "name, text, place",
    [
        ("r.csv", "sku,duration,description\nS1,,A cat\nS2,,\n", "r.csv:3:3: jobs[0] (row-S2): "),
        ("r.jsonl", '{"sku": "S1", "description": "A cat"}\n{"sku": "S2", "description": null}\n',
         "r.jsonl:2:1: jobs[0] (row-S2): "),
    ],
)  # fmt: skip
def test_an_empty_cell_a_template_uses_is_a_problem_naming_the_cell(
    tmp_path, monkeypatch, name, text, place
):
    monkeypatch.chdir(tmp_path)
    (tmp_path / name).write_text(text, encoding="utf-8")
    manifest(tmp_path, name)
    assert problems(Path("m.yaml")) == [
        f"{place}column description is empty, but the prompt uses {{description}}"
    ]


def test_an_empty_workbook_cell_a_template_uses_is_a_problem_naming_the_cell(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cells = [["sku", "duration", "description"], ["S1", None, "A cat"], [None, 10, "A dog"]]
    workbook(tmp_path / "prompts.xlsx", {"Sheet1": cells})
    manifest(tmp_path, "prompts.xlsx")
    assert problems(Path("m.yaml")) == [
        "prompts.xlsx#Sheet1:3:1: jobs[0]: cell A3: column sku is empty, but the id uses {sku}"
    ]


def test_an_empty_cell_no_template_uses_is_fine_and_an_empty_field_takes_the_default(tmp_path):
    (tmp_path / "r.csv").write_text(
        "sku,duration,description,note\nS1,,A cat,\nS2,10,A dog,keep dry\n", encoding="utf-8"
    )
    jobs = check_manifest(manifest(tmp_path, "r.csv")).jobs
    assert [(job.id, job.prompt, job.duration) for job in jobs] == [
        ("row-S1", "A cat, studio light", None),  # the catalog's default is sent
        ("row-S2", "A dog, studio light", 10),
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
