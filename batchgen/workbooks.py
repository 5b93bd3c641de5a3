"""Read one sheet of an Excel workbook (.xlsx) for rows.py: bounded, and every cell placed.

A workbook is a zip of XML, and a few dozen KB of zip can unpack to millions of rows, so
each step is bounded before the next one starts (the limits below, named in docs/manifest.md):
1. the sizes the zip declares for its parts (zipfile never unpacks a part beyond them);
2. one streaming pass of expat over every XML part, which keeps nothing: rows, cells,
   cells in a row and XML elements are counted before openpyxl parses anything (openpyxl
   loads shared strings and styles whole, builds a row's cells at once, and keeps an empty
   element per row until the sheet ends);
3. openpyxl, read-only, streams the sheet's rows, counted again as they come.

A cell openpyxl cannot read (a shared string that is not there, a number that is not one,
a date past 9999), a formula whose value was never computed, and an error value (`#N/A`)
are problems placed at their cell; openpyxl's warnings are never shown.
"""

from __future__ import annotations

import datetime
import warnings
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from xml.parsers import expat

import openpyxl
from openpyxl.utils import coordinate_to_tuple
from openpyxl.worksheet._reader import WorkSheetParser  # private: see _CellParser
from openpyxl.xml.constants import SHEET_MAIN_NS

from batchgen.rows import RowsFile, add_rows, cell_name
from batchgen.templates import as_text

MAX_WORKBOOK_UNPACKED_BYTES = 100 * 1024 * 1024  # the parts' sizes unpacked, all together
MAX_WORKBOOK_ROWS = 1_048_576  # rows in a sheet (and in all sheets), empty ones too: Excel's
MAX_WORKBOOK_CELLS = 2_000_000  # cells, empty ones too: 100,000 rows of 20 columns
MAX_ROW_CELLS = 16_384  # cells in one row: Excel's number of columns
MAX_WORKBOOK_ELEMENTS = 4 * MAX_WORKBOOK_CELLS  # XML elements in all parts (a cell is 2-3)

# What a damaged workbook makes openpyxl (or zipfile, zlib, the XML parsers) raise.
DAMAGED = (
    zipfile.BadZipFile,
    RuntimeError,  # zipfile: an encrypted part, a compression method it does not know
    zlib.error,
    EOFError,
    OSError,
    KeyError,
    IndexError,
    ValueError,
    TypeError,
    AttributeError,
    OverflowError,
    SyntaxError,  # xml.etree's ParseError
    expat.ExpatError,
)

_VALUE = f"{{{SHEET_MAIN_NS}}}v"
_FORMULA = f"{{{SHEET_MAIN_NS}}}f"
_KINDS = {"n": "number", "s": "shared string number", "b": "boolean (1 or 0)", "d": "date"}
_XML_START = b"\xef\xbb\xbf \t\r\n"  # what may come before an XML part's first '<'
_OLE = b"\xd0\xcf\x11\xe0"  # the start of an OLE file: .xls, or an encrypted .xlsx
_SAVE = "save it in Excel as .xlsx without a password"


class TooLarge(Exception):
    """The workbook is beyond one of the limits; the message says which."""


@dataclass(frozen=True, slots=True)
class CellProblem:
    """A cell whose value cannot be used, and why (said after `cell B7: `)."""

    message: str


def read_workbook(path: str, sheet: str | None, limit: int, result: RowsFile) -> RowsFile:
    """Read one sheet (the first, or `sheet`) of the workbook at `path` into `result`, at
    most `limit` rows; never raises for bad input."""
    unreadable = f"cannot read rows file {path}: not a readable .xlsx workbook"
    if _is_ole_file(path):
        result.error = f"{unreadable}: a password-protected workbook, or an old .xls; {_SAVE}"
        return result
    try:
        with zipfile.ZipFile(path) as archive:
            check_size(archive)
    except TooLarge as e:
        result.error = f"rows file {path} {e}"
        return result
    except RuntimeError:
        result.error = f"{unreadable}: a part of it is encrypted or compressed in a way "
        result.error += f"zip readers do not know; {_SAVE}"
        return result
    except DAMAGED as e:
        result.error = f"{unreadable} ({e})"
        return result
    with warnings.catch_warnings():
        # openpyxl warns of what it mends or leaves out (styles, extensions, a date out of
        # range); only values matter here, and a value it cannot give is a CellProblem.
        warnings.simplefilter("ignore")
        try:
            book = openpyxl.load_workbook(path, read_only=True, data_only=True)
        except DAMAGED as e:
            result.error = f"{unreadable} ({e})"
            return result
        try:
            titles = book.sheetnames
            if sheet is not None and sheet not in titles:
                sheets = ", ".join(titles)
                result.error = f"rows file {path} has no sheet {sheet!r} (sheets: {sheets})"
                return result
            worksheet = book[sheet] if sheet is not None else book.worksheets[0]
            result.file = f"{path}#{worksheet.title}"
            columns: dict[str, int] = {}
            records = _sheet_records(_sheet_rows(book, worksheet), result, columns)
            add_rows(records, limit, result, csv_text=True, columns=columns)
        except TooLarge as e:
            result.error = f"rows file {path} {e}"
        except DAMAGED as e:
            result.error = f"{unreadable} ({e})"
        finally:
            book.close()
    return result


def _is_ole_file(path: str) -> bool:
    with open(path, "rb") as f:
        return f.read(len(_OLE)) == _OLE


# --- 1 and 2: what the zip unpacks to, before openpyxl reads it ---------------------------


def check_size(archive: zipfile.ZipFile) -> None:
    """Raise TooLarge if the workbook unpacks beyond a limit: in bytes, as declared by the
    zip; then in rows, cells and elements, counted in one streaming pass that keeps
    nothing (so a bomb is refused in about a second, in a few MB)."""
    unpacked = sum(info.file_size for info in archive.infolist())
    if unpacked > MAX_WORKBOOK_UNPACKED_BYTES:
        raise TooLarge(
            f"unpacks to {unpacked / 2**20:,.1f} MiB, more than the "
            f"{MAX_WORKBOOK_UNPACKED_BYTES // 2**20} MiB limit for a workbook"
        )
    count = _Count()
    for info in archive.infolist():
        with archive.open(info) as part:
            count.part(part)


class _Count:
    """Counts of a workbook's XML, fed one part after the other to expat."""

    def __init__(self) -> None:
        self.rows = self.cells = self.row_cells = self.elements = 0
        self.sheet: bool | None = None  # is the part being read a worksheet (None: unknown)

    def part(self, part: Any) -> None:
        chunk = part.read(1 << 16)
        if chunk.lstrip(_XML_START)[:1] != b"<":
            return  # not XML (an image, a macro project): openpyxl does not parse it
        parser = expat.ParserCreate()
        parser.StartElementHandler = self.start
        self.sheet = None
        try:
            while chunk:
                parser.Parse(chunk, False)
                chunk = part.read(1 << 16)
            parser.Parse(b"", True)
        except expat.ExpatError:
            pass  # broken XML: openpyxl says so if the part is one it reads

    def start(self, tag: str, attributes: Any) -> None:
        self.elements += 1
        if self.elements > MAX_WORKBOOK_ELEMENTS:
            raise TooLarge(
                f"holds more than {MAX_WORKBOOK_ELEMENTS:,} XML elements, the limit for a workbook"
            )
        name = tag.rpartition(":")[2]
        if self.sheet is None:
            self.sheet = name == "worksheet"  # the part's root element
        elif not self.sheet:
            return
        elif name == "c":
            self.cells += 1
            self.row_cells += 1
            if self.cells > MAX_WORKBOOK_CELLS:
                raise TooLarge(too_many("cells", MAX_WORKBOOK_CELLS))
            if self.row_cells > MAX_ROW_CELLS:
                raise TooLarge(
                    f"has a row of more than {MAX_ROW_CELLS:,} cells, the limit for a row"
                )
        elif name == "row":
            self.rows += 1
            self.row_cells = 0
            if self.rows > MAX_WORKBOOK_ROWS:
                raise TooLarge(too_many("rows", MAX_WORKBOOK_ROWS))


def too_many(what: str, limit: int) -> str:
    return f"has more than {limit:,} {what} (empty ones count too), the limit for a workbook"


# --- 3: the sheet, streamed ---------------------------------------------------------------


class _CellParser(WorkSheetParser):  # type: ignore[misc]
    """openpyxl's sheet parser, giving a CellProblem as the value of a cell it cannot read
    or that has no usable value.

    openpyxl's own parser, from a private module: iter_rows() would yield an empty row for
    each row number the XML skips (millions for one `<row r="6000000">`), could not say
    which cell failed, and gives a formula without a computed value as an empty cell.
    """

    row_counter: int  # where the parser is: set by openpyxl
    col_counter: int

    def parse_cell(self, element: Any) -> dict[str, Any]:
        kind = element.get("t", "n")
        try:
            cell: dict[str, Any] = super().parse_cell(element)
        except DAMAGED:
            return self._unreadable(element, kind)
        value = cell["value"]
        if value is None and element.find(_FORMULA) is not None:
            if element.find(_VALUE) is None:  # an empty <v> is a computed empty text
                cell["value"] = CellProblem(
                    "a formula whose value was never computed (the file was written by a "
                    "program): open it in Excel or LibreOffice and save it"
                )
        elif cell["data_type"] == "e":
            if kind == "e":
                cell["value"] = CellProblem(f"shows the error {value}")
            else:  # openpyxl gave up on the number as a date (and warned)
                raw = element.findtext(_VALUE)
                cell["value"] = CellProblem(
                    f"holds the date {raw}, beyond the dates Excel can show (to 9999-12-31)"
                )
        return cell

    def _unreadable(self, element: Any, kind: str) -> dict[str, Any]:
        ref, raw = element.get("r"), element.findtext(_VALUE)
        counted: tuple[int, int] = (self.row_counter, self.col_counter)
        try:
            row, column = coordinate_to_tuple(ref) if ref else counted
        except DAMAGED:
            row, column = counted[0], counted[1] + 1
            self.col_counter = column
            message = f"is named {ref!r}, which is not a cell's name (a damaged workbook)"
        else:
            known = len(self.shared_strings)
            if kind == "s" and raw is not None and raw.strip().isdigit() and int(raw) >= known:
                message = (
                    f"points at shared string {int(raw)}, but the workbook has {known} "
                    "(a damaged workbook)"
                )
            else:
                what = _KINDS.get(kind, f"value of type {kind!r}")
                message = f"holds {raw!r}, which is not a {what} (a damaged workbook)"
        return {"row": row, "column": column, "value": CellProblem(message)}


def _sheet_rows(book: Any, worksheet: Any) -> Iterator[list[dict[str, Any]]]:
    """The rows the sheet's XML holds (each a list of cells: {row, column, value}), counted
    against the limits as they come."""
    rows = cells = 0
    with worksheet._get_source() as source:
        parser = _CellParser(
            source,
            worksheet._shared_strings,
            data_only=True,
            epoch=book.epoch,
            date_formats=book._date_formats,
            timedelta_formats=book._timedelta_formats,
        )
        for _, row in parser.parse():
            rows += 1
            cells += len(row)
            if rows > MAX_WORKBOOK_ROWS:
                raise TooLarge(too_many("rows", MAX_WORKBOOK_ROWS))
            if cells > MAX_WORKBOOK_CELLS:
                raise TooLarge(too_many("cells", MAX_WORKBOOK_CELLS))
            yield row


def _sheet_records(
    sheet_rows: Iterator[list[dict[str, Any]]], rows: RowsFile, columns: dict[str, int]
) -> Iterator[tuple[int, dict[str, Any]]]:
    """Each non-empty sheet row after the header as (row number, column -> cell text)."""
    header: list[str] | None = None
    for cells in sheet_rows:
        filled = []
        broken = False
        for cell in cells:
            line, col, value = cell["row"], cell["column"], cell["value"]
            if isinstance(value, CellProblem):
                rows.problems.append((line, col, f"cell {cell_name(col, line)}: {value.message}"))
                broken = True
            elif value is not None and (text := _cell_text(value)).strip():
                filled.append((line, col, text))
        if broken:
            if header is None:
                return
            continue
        if not filled:
            continue
        line = filled[0][0]
        if header is None:
            header = _sheet_header(line, filled, rows, columns)
            if header is None:
                return
            continue
        beyond = [col for _, col, _ in filled if col > len(header)]
        if beyond:
            name = cell_name(beyond[0], line)
            message = f"cell {name} has a value, but its column has no name in the header"
            rows.problems.append((line, beyond[0], message))
            continue
        values = dict.fromkeys(header, "")
        for _, col, text in filled:
            values[header[col - 1]] = text
        yield line, values


def _sheet_header(
    line: int, filled: list[tuple[int, int, str]], rows: RowsFile, columns: dict[str, int]
) -> list[str] | None:
    """The header row's names by column (None, with problems, if it is unusable)."""
    width = max(col for _, col, _ in filled)
    names = [""] * width
    for _, col, text in filled:
        names[col - 1] = text.strip()
    rows.header_line, rows.columns = line, names
    for col, name in enumerate(names, 1):
        cell = cell_name(col, line)
        if not name:
            rows.problems.append((line, col, f"cell {cell}: the header's column has no name"))
        elif name in columns:
            rows.problems.append((line, col, f"cell {cell}: column {name!r} appears twice"))
        else:
            columns[name] = col
    return None if rows.problems else names


def _cell_text(value: Any) -> str:
    """A spreadsheet cell as the text a person sees: a date as a date, anything else as a
    template shows its value (a whole number without '.0')."""
    if isinstance(value, datetime.datetime) and value.time() == datetime.time():
        return value.date().isoformat()
    if isinstance(value, datetime.date | datetime.time):
        return value.isoformat()
    return as_text(value)
