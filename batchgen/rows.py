"""Read a job's rows file (PRODUCT.md §3) into rows of typed job fields and text variables.

Kept apart from expand.py because reading a file is a job of its own: size and encoding
limits, three formats, and turning cell text into typed fields, each problem pinned to a
line (or a sheet's row and column).

- CSV with a header and JSON Lines (one object per line): UTF-8, a BOM is skipped; read
  whole, so a file must fit in MAX_ROWS_BYTES. Excel workbooks (.xlsx): the first sheet,
  or `book.xlsx#Sheet name`; the first non-empty row is the header. A workbook's problems
  are placed as `book.xlsx#Sheet name:ROW:COLUMN` (column A = 1).
- A row whose cells are all empty (blank text, JSON null) is skipped: never a job.
- An empty cell (or a JSON null) in a field column leaves that field unset for the row.
  An empty cell in another column is no variable for the row: a template that uses it is
  a problem placed at the cell (see `empty_cell`), one that does not is fine.
- Workbooks are read by workbooks.py, within its limits (MAX_WORKBOOK_*).
- CSV and spreadsheet cells are text to convert: duration to a whole number, tags split on
  commas, media parsed as a JSON list. JSON values keep their own types, which must already
  be the field's. Text must be valid Unicode (JSON can spell a lone surrogate; it is refused).
- Columns that are not job fields become template variables, as text.
- Bad input never raises: it is reported in `RowsFile.problems` or `RowsFile.error`.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from batchgen.problems import Position, shown
from batchgen.schema import JOB_FIELDS
from batchgen.templates import as_text

MAX_ROWS_BYTES = 100 * 1024 * 1024  # a rows file is read whole; 100,000 long rows fit easily
FORMATS = (".csv", ".jsonl", ".xlsx")

_WHOLE_NUMBER = re.compile(r"\s*[0-9]+\s*")
_SURROGATE = re.compile("[\ud800-\udfff]")
_HOW_TO_SAVE_UTF8 = {
    ".csv": 'save it as UTF-8 (in Excel: Save As, "CSV UTF-8 (Comma delimited) (*.csv)"; '
    'in Google Sheets: File > Download > "Comma-separated values")',
    ".jsonl": "save it as UTF-8",
}


@dataclass(slots=True, eq=False)
class Row:
    """One row of a rows file: the job fields it sets and its other columns as variables."""

    line: int
    fields: dict[str, Any]
    variables: dict[str, str]
    columns: dict[str, int] | None = None  # a spreadsheet's column number of each field


@dataclass(eq=False)
class RowsFile:
    """A rows file as read: its usable rows and what was wrong with the others."""

    file: str  # as shown in problems: relative to where the manifest was named
    kind: str = ".csv"  # the format: ".csv", ".jsonl" or ".xlsx"
    header_line: int = 1
    columns: list[str] = field(default_factory=list)
    rows: list[Row] = field(default_factory=list)
    problems: list[tuple[int, int, str]] = field(default_factory=list)  # line, col, message
    truncated: bool = False  # stopped reading at the row limit
    error: str | None = None  # the file could not be read at all

    def column(self, name: str) -> int:
        """Column `name`'s number (1 in JSON Lines, whose keys are not in columns)."""
        if self.kind == ".jsonl" or name not in self.columns:
            return 1
        return self.columns.index(name) + 1


def empty_cell(rows: RowsFile, row: Row, name: str, used_by: str) -> tuple[Position, str]:
    """Where a row's empty cell in column `name` is, and the problem of a template (in
    `used_by`, e.g. "the prompt") that uses it."""
    col = rows.column(name)
    cell = f"cell {cell_name(col, row.line)}: " if rows.kind == ".xlsx" else ""
    return (
        rows.file,
        row.line,
        col,
    ), f"{cell}column {name} is empty, but {used_by} uses {{{name}}}"


def cell_name(col: int, line: int) -> str:
    """How a spreadsheet names the cell at row `line`, column `col`: `C7`."""
    from openpyxl.utils import get_column_letter  # only a workbook's problems need it

    return f"{get_column_letter(col)}{line}"


def split_sheet(name: str) -> tuple[str, str | None]:
    """`book.xlsx#Sheet name` -> ("book.xlsx", "Sheet name"); any other name: (name, None)."""
    path, hash_, sheet = name.rpartition("#")
    if hash_ and path.lower().endswith(".xlsx"):
        return path, sheet
    return name, None


def read_rows(file: str, limit: int) -> RowsFile:
    """Read a .csv, .jsonl or .xlsx rows file, at most `limit` rows; never raises for bad
    input. `file` may name a workbook's sheet: `book.xlsx#Sheet name`."""
    file, sheet = split_sheet(file)
    result = RowsFile(file)
    suffix = os.path.splitext(file)[1].lower()
    result.kind = suffix
    if suffix not in FORMATS:
        hint = " (save a .xls workbook as .xlsx)" if suffix == ".xls" else ""
        result.error = f"rows file {file} must be a .csv, .jsonl or .xlsx file{hint}"
        return result
    try:
        info = os.stat(file)
        if not stat.S_ISREG(info.st_mode):
            result.error = f"cannot read rows file {file}: not a regular file"
            return result
        if info.st_size > MAX_ROWS_BYTES:
            mib = MAX_ROWS_BYTES // 1024 // 1024
            result.error = f"rows file {file} is larger than the {mib} MiB limit"
            return result
        if suffix == ".xlsx":
            from batchgen.workbooks import read_workbook  # openpyxl: only for workbooks

            return read_workbook(file, sheet, limit, result)
        with open(file, "rb") as f:
            raw = f.read(MAX_ROWS_BYTES + 1)
    except OSError as e:
        result.error = f"cannot read rows file {file}: {e.strerror or e}"
        return result
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        message = f"not UTF-8 text (byte 0x{raw[e.start]:02x}): {_HOW_TO_SAVE_UTF8[suffix]}"
        result.problems.append((line, 1, message))
        return result
    records = _csv_records(text, result) if suffix == ".csv" else _jsonl_records(text, result)
    add_rows(records, limit, result, csv_text=suffix == ".csv")
    return result


def add_rows(
    records: Iterator[tuple[int, dict[str, Any]]],
    limit: int,
    rows: RowsFile,
    csv_text: bool,
    columns: dict[str, int] | None = None,
) -> None:
    """Convert records (line, column -> value) into rows (the readers skip blank ones)."""
    for line, values in records:
        if len(rows.rows) >= limit:
            rows.truncated = True
            break
        row = _convert_row(line, values, csv_text, rows, columns)
        if row is not None:
            rows.rows.append(row)


def _empty(value: Any) -> bool:
    return value is None or value == [] or (isinstance(value, str) and not value.strip())


def _csv_records(text: str, rows: RowsFile) -> Iterator[tuple[int, dict[str, Any]]]:
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    header: list[str] | None = None
    try:
        while True:
            line = reader.line_num + 1
            try:
                record = next(reader)
            except StopIteration:
                return
            if not "".join(record).strip():
                continue  # a blank line, or a row of empty cells: never a job
            if header is None:
                header = [name.strip() for name in record]
                rows.header_line, rows.columns = line, header
                for i, name in enumerate(header, 1):
                    if not name:
                        rows.problems.append((line, 1, f"column {i} of the header has no name"))
                    elif header.index(name) < i - 1:
                        rows.problems.append((line, 1, f"column {name!r} appears twice"))
                if rows.problems:
                    return
                continue
            if len(record) != len(header):
                values = "value" if len(record) == 1 else "values"
                message = f"row has {len(record)} {values}; the header has {len(header)} columns"
                rows.problems.append((line, 1, message))
                continue
            yield line, dict(zip(header, record, strict=True))
    except csv.Error as e:
        rows.problems.append((reader.line_num, 1, f"malformed CSV: {e}"))


def _jsonl_records(text: str, rows: RowsFile) -> Iterator[tuple[int, dict[str, Any]]]:
    columns: dict[str, None] = {}
    for line, content in enumerate(text.split("\n"), 1):
        if not content.strip():
            continue
        try:
            value = json.loads(content)
        except ValueError as e:
            message = f"invalid JSON: {getattr(e, 'msg', e)}"
            rows.problems.append((line, getattr(e, "colno", 1), message))
            continue
        if not isinstance(value, dict):
            rows.problems.append((line, 1, "each line must be a JSON object"))
            continue
        # Raw text is valid UTF-8; only a \u escape can spell half a character.
        if "\\u" in content and _SURROGATE.search(json.dumps(value, ensure_ascii=False)):
            message = (
                "text with a lone surrogate (an escape such as \\ud83d without its pair) "
                "is not valid Unicode: write the character itself, or both halves"
            )
            rows.problems.append((line, 1 + max(content.lower().find("\\ud"), 0), message))
            continue
        if all(_empty(cell) for cell in value.values()):
            continue  # {} or nothing but nulls and blanks: never a job
        columns.update(dict.fromkeys(value))
        rows.columns = list(columns)
        yield line, value


def _convert_row(
    line: int,
    values: dict[str, Any],
    csv_text: bool,
    rows: RowsFile,
    columns: dict[str, int] | None = None,
) -> Row | None:
    """Split a record into job fields (converted to their types) and template variables."""
    fields: dict[str, Any] = {}
    variables: dict[str, str] = {}
    ok = True
    for name, value in values.items():
        if name not in JOB_FIELDS:
            if not _empty(value):
                variables[name] = as_text(value)
            continue
        if value is None or value == "":
            continue  # unset: the job's defaults apply
        converted, error = _convert_field(name, value, csv_text)
        if error:
            col = columns[name] if columns else 1
            cell = f"cell {cell_name(col, line)}: " if columns else ""
            rows.problems.append((line, col, f"{cell}column {name}: {error}"))
            ok = False
        else:
            fields[name] = converted
    return Row(line, fields, variables, columns) if ok else None


def _convert_field(name: str, value: Any, csv_text: bool) -> tuple[Any, str | None]:
    """A rows value as the job field `name`, or an error saying why it cannot be."""
    if name == "duration":
        if csv_text:
            if _WHOLE_NUMBER.fullmatch(value):
                return int(value), None
            return None, f"{value!r} is not a whole number of seconds"
        if isinstance(value, bool) or not isinstance(value, int):
            return None, f"{value!r} is not a whole number of seconds"
        return value, None
    if name == "tags":
        if csv_text:
            return [tag.strip() for tag in value.split(",") if tag.strip()], None
        if not isinstance(value, list) or not all(isinstance(t, str) and t for t in value):
            return None, f"{shown(value)} is not a list of tags (non-empty text)"
        return value, None
    if name == "media":
        if csv_text:
            try:
                value = json.loads(value)
            except ValueError:
                return None, f"{shown(value)} is not a JSON list of {{type, url}} items"
        return value, None  # the catalog checks the items
    if not isinstance(value, str):
        return None, f"{shown(value)} is not text"
    return value, None
