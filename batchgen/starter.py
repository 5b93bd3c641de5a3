"""`batchgen init [DIR]`: the files a newcomer starts from, written into DIR.

They are package data (batchgen/examples/, and the manifest schema an editor checks them
against), so `init` works from an installed batchgen as well as from a checkout. The
Excel rows template is made from the CSV one as it is written: one source, the same rows.

Nothing is ever overwritten: if any file would be, `init` writes none and names them.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from batchgen.errors import BatchgenError
from batchgen.schema import SCHEMA_NAME

EXAMPLES = "examples"
# What `init` writes, in this order: name -> where its text comes from in the package.
COPIED = {
    "example.yaml": f"{EXAMPLES}/example.yaml",
    "rows-example.yaml": f"{EXAMPLES}/rows-example.yaml",
    "prompts.csv": f"{EXAMPLES}/prompts.csv",
    SCHEMA_NAME: SCHEMA_NAME,  # the manifests' `$schema`: editors flag mistakes as you type
}
WORKBOOK = "prompts.xlsx"  # the rows of prompts.csv, as a workbook
SHEET = "prompts"
FIRST_MANIFEST = "example.yaml"


class WouldOverwrite(BatchgenError):
    """`init` found files of its own name in DIR: it writes nothing (exit 1)."""


@dataclass(frozen=True)
class Written:
    folder: Path
    names: list[str]


def names() -> list[str]:
    """Every file `init` writes."""
    return [*COPIED, WORKBOOK]


def write_examples(folder: str | Path) -> Written:
    """Write the example manifests, the rows templates (CSV and xlsx) and the schema into
    `folder` (created if missing). WouldOverwrite, before anything is written, when one
    of them is there already."""
    target = Path(folder)
    existing = [name for name in names() if os.path.lexists(target / name)]
    if existing:
        raise WouldOverwrite(
            f"{target} already has {', '.join(existing)}: init never overwrites a file; "
            "move them away, or init another folder (nothing was written)"
        )
    try:
        target.mkdir(parents=True, exist_ok=True)
        package = resources.files("batchgen")
        for name, source in COPIED.items():
            _create(target / name, package.joinpath(source).read_bytes())
        _write_workbook(target / WORKBOOK, (target / "prompts.csv").read_text(encoding="utf-8"))
    except OSError as e:
        raise BatchgenError(f"cannot write into {target}: {e.strerror or e}") from None
    return Written(target, names())


def _create(path: Path, data: bytes) -> None:
    with open(path, "xb") as f:  # "x": a file that appeared meanwhile is not overwritten
        f.write(data)


def _write_workbook(path: Path, rows_csv: str) -> None:
    from openpyxl import Workbook

    book = Workbook()
    sheet = book.active
    assert sheet is not None
    sheet.title = SHEET
    for number, row in enumerate(csv.reader(rows_csv.splitlines())):
        # numbers as numbers (a person's spreadsheet has them so), empty cells empty
        sheet.append([_cell(value) if number else value for value in row])
    with open(path, "xb") as f:
        book.save(f)


def _cell(value: str) -> int | str | None:
    if value == "":
        return None
    return int(value) if value.isdigit() else value
