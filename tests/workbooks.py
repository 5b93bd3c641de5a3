"""Hand-made .xlsx files: the sheet XML written as given, so a test (or bench/xlsx_bomb.py)
can build what Excel never would — a bomb of millions of empty rows small on disk, a cell
pointing at a shared string that is not there, a formula without a computed value."""

from __future__ import annotations

import zipfile
from collections.abc import Iterable
from pathlib import Path
from xml.sax.saxutils import escape

MAIN = "http://schemas.openxmlformats.org/spreadsheetml/2006/main"
RELS = "http://schemas.openxmlformats.org/officeDocument/2006/relationships"
PACKAGE_RELS = "http://schemas.openxmlformats.org/package/2006/relationships"
TYPES = "http://schemas.openxmlformats.org/package/2006/content-types"
SHEET_TYPE = "application/vnd.openxmlformats-officedocument.spreadsheetml.worksheet+xml"
BOOK_TYPE = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet.main+xml"
STRINGS_TYPE = "application/vnd.openxmlformats-officedocument.spreadsheetml.sharedStrings+xml"
STYLES_TYPE = "application/vnd.openxmlformats-officedocument.spreadsheetml.styles+xml"
DOC_RELS = "http://schemas.openxmlformats.org/officeDocument/2006/relationships"

# Style 1 is a date (number format 14, m/d/yyyy): a number in a cell with s="1" is a date.
STYLES = (
    f'<styleSheet xmlns="{MAIN}"><cellXfs count="2"><xf numFmtId="0"/>'
    '<xf numFmtId="14" applyNumberFormat="1"/></cellXfs></styleSheet>'
)


def inline(ref: str, text: str) -> str:
    """A cell holding `text` as an inline string."""
    return f'<c r="{ref}" t="inlineStr"><is><t>{escape(text)}</t></is></c>'


def row(number: int, *cells: str) -> str:
    return f'<row r="{number}">{"".join(cells)}</row>'


def write_workbook(
    path: Path,
    rows: Iterable[str | bytes],
    shared_strings: list[str] | None = None,
    sheet: str = "Sheet1",
) -> Path:
    """An .xlsx file of one sheet whose <sheetData> holds `rows` (XML, streamed into the
    zip: a bomb need not fit in memory), with a date style and these shared strings."""
    book = (
        f'<workbook xmlns="{MAIN}" xmlns:r="{RELS}"><sheets>'
        f'<sheet name="{escape(sheet)}" sheetId="1" r:id="rId1"/></sheets></workbook>'
    )
    parts = [
        ("xl/worksheets/sheet1.xml", SHEET_TYPE, "worksheet"),
        ("xl/styles.xml", STYLES_TYPE, "styles"),
    ]
    if shared_strings is not None:
        parts.append(("xl/sharedStrings.xml", STRINGS_TYPE, "sharedStrings"))
    book_rels = "".join(
        f'<Relationship Id="rId{i}" Type="{DOC_RELS}/{kind}" Target="{name[3:]}"/>'
        for i, (name, _, kind) in enumerate(parts, 1)
    )
    overrides = "".join(
        f'<Override PartName="/{name}" ContentType="{kind}"/>'
        for name, kind, _ in [("xl/workbook.xml", BOOK_TYPE, ""), *parts]
    )
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as z:
        z.writestr(
            "[Content_Types].xml",
            f'<Types xmlns="{TYPES}"><Default Extension="rels" '
            'ContentType="application/vnd.openxmlformats-package.relationships+xml"/>'
            f"{overrides}</Types>",
        )
        z.writestr(
            "_rels/.rels",
            f'<Relationships xmlns="{PACKAGE_RELS}"><Relationship Id="rId1" '
            f'Type="{DOC_RELS}/officeDocument" Target="xl/workbook.xml"/></Relationships>',
        )
        z.writestr("xl/workbook.xml", book)
        z.writestr(
            "xl/_rels/workbook.xml.rels",
            f'<Relationships xmlns="{PACKAGE_RELS}">{book_rels}</Relationships>',
        )
        z.writestr("xl/styles.xml", STYLES)
        if shared_strings is not None:
            items = "".join(f"<si><t>{escape(s)}</t></si>" for s in shared_strings)
            z.writestr(
                "xl/sharedStrings.xml",
                f'<sst xmlns="{MAIN}" count="{len(shared_strings)}">{items}</sst>',
            )
        with z.open("xl/worksheets/sheet1.xml", "w", force_zip64=True) as f:
            f.write(f'<worksheet xmlns="{MAIN}"><sheetData>'.encode())
            for text in rows:
                f.write(text.encode() if isinstance(text, str) else text)
            f.write(b"</sheetData></worksheet>")
    return path


def bomb(path: Path, empty_rows: int) -> Path:
    """A workbook whose header and one job are followed by `empty_rows` empty rows: a few
    dozen KB on disk per million rows."""
    header = row(1, inline("A1", "sku"), inline("B1", "description"))
    first = row(2, inline("A2", "S1"), inline("B2", "A cat"))
    chunk = b"<row/>" * 10_000
    return write_workbook(path, [header, first, *(chunk for _ in range(empty_rows // 10_000))])
