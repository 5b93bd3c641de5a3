"""Read a job's rows file (PRODUCT.md §3) into rows of typed job fields and text variables.

Kept apart from expand.py because reading a file is a job of its own: size and encoding
limits, two formats, and turning CSV text into typed fields, each problem pinned to a line.

- UTF-8 (a BOM is skipped); CSV with a header; JSON Lines one object per line. A file is
  read whole, so it must fit in MAX_ROWS_BYTES.
- An empty CSV cell (or a JSON null) in a field column leaves that field unset for the row.
- CSV text is converted: duration to a whole number, tags split on commas, media parsed as
  a JSON list. JSON values keep their own types, which must already be the field's.
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

from batchgen.problems import shown
from batchgen.schema import JOB_FIELDS
from batchgen.templates import as_text

MAX_ROWS_BYTES = 100 * 1024 * 1024  # a rows file is read whole; 100,000 long rows fit easily

_WHOLE_NUMBER = re.compile(r"\s*[0-9]+\s*")


@dataclass(slots=True, eq=False)
class Row:
    """One row of a rows file: the job fields it sets and its other columns as variables."""

    line: int
    fields: dict[str, Any]
    variables: dict[str, str]


@dataclass(eq=False)
class RowsFile:
    """A rows file as read: its usable rows and what was wrong with the others."""

    file: str  # as shown in problems: relative to where the manifest was named
    header_line: int = 1
    columns: list[str] = field(default_factory=list)
    rows: list[Row] = field(default_factory=list)
    problems: list[tuple[int, int, str]] = field(default_factory=list)  # line, col, message
    truncated: bool = False  # stopped reading at the row limit
    error: str | None = None  # the file could not be read at all


def read_rows(file: str, limit: int) -> RowsFile:
    """Read a .csv or .jsonl rows file, at most `limit` rows; never raises for bad input."""
    result = RowsFile(file)
    suffix = os.path.splitext(file)[1].lower()
    if suffix not in (".csv", ".jsonl"):
        result.error = f"rows file {file} must be a .csv or .jsonl file"
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
        with open(file, "rb") as f:
            raw = f.read(MAX_ROWS_BYTES + 1)
    except OSError as e:
        result.error = f"cannot read rows file {file}: {e.strerror or e}"
        return result
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        result.problems.append((line, 1, f"not UTF-8 text (byte 0x{raw[e.start]:02x})"))
        return result
    records = _csv_records(text, result) if suffix == ".csv" else _jsonl_records(text, result)
    for line, values in records:
        if len(result.rows) >= limit:
            result.truncated = True
            break
        row = _convert_row(line, values, csv_text=suffix == ".csv", rows=result)
        if row is not None:
            result.rows.append(row)
    return result


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
            if not record or record == [""]:
                continue
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
        columns.update(dict.fromkeys(value))
        rows.columns = list(columns)
        yield line, value


def _convert_row(line: int, values: dict[str, Any], csv_text: bool, rows: RowsFile) -> Row | None:
    """Split a record into job fields (converted to their types) and template variables."""
    fields: dict[str, Any] = {}
    variables: dict[str, str] = {}
    ok = True
    for name, value in values.items():
        if name not in JOB_FIELDS:
            if value is not None:
                variables[name] = as_text(value)
            continue
        if value is None or value == "":
            continue  # unset: the job's defaults apply
        converted, error = _convert_field(name, value, csv_text)
        if error:
            rows.problems.append((line, 1, f"column {name}: {error}"))
            ok = False
        else:
            fields[name] = converted
    return Row(line, fields, variables) if ok else None


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
