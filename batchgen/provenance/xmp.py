"""XMP: the labels a file carries as metadata, read and written.

Reading scans the file for XMP packets (the XMP specification's own fallback, which
needs no knowledge of the container): at most `MAX_PACKETS` packets of at most
`MAX_PACKET` bytes each, through a memory map, so a huge file costs neither time nor
memory. A packet declaring entities is refused (no entity expansion, ever).

Writing: pyexiv2 for PNG and JPEG (in-process), Debian's exiftool for MP4 (exiv2 does
not write into MP4); both are in `batchgen[provenance]` or the system.
"""

from __future__ import annotations

import mmap
import shutil
import subprocess
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from typing import Any

IPTC_EXT = "http://iptc.org/std/Iptc4xmpExt/2008-02-29/"
TRAINED = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
START, END = b"<x:xmpmeta", b"</x:xmpmeta>"
MAX_PACKET = 1 << 20
MAX_PACKETS = 4
EXIFTOOL_TIMEOUT = 60.0
IMAGES = {".png", ".jpg", ".jpeg"}
VIDEOS = {".mp4", ".mov", ".m4v"}


class XmpUnavailable(Exception):
    """XMP cannot be written into this file here (its format, or a missing tool)."""


def packets(path: Path) -> list[bytes]:
    """The XMP packets found in the file, in order (at most MAX_PACKETS)."""
    found: list[bytes] = []
    with open(path, "rb") as f:
        if f.seek(0, 2) == 0:
            return found
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            at = 0
            while len(found) < MAX_PACKETS:
                start = data.find(START, at)
                if start < 0:
                    break
                end = data.find(END, start, start + MAX_PACKET)
                if end < 0:
                    at = start + len(START)
                    continue
                found.append(data[start : end + len(END)])
                at = end
    return found


def read(path: Path) -> dict[str, Any]:
    """The AI labels in the file's XMP: `digital_source_type` (IPTC), `creator_tool`,
    `description` (None when absent) and `labels` (others, e.g. TC260's AIGC label)."""
    found: dict[str, Any] = {
        "digital_source_type": None,
        "creator_tool": None,
        "description": None,
        "labels": [],
    }
    for packet in packets(path):
        if b"<!ENTITY" in packet or b"<!DOCTYPE" in packet:
            continue
        try:
            root = ElementTree.fromstring(packet)
        except ElementTree.ParseError:
            continue
        for element in root.iter():
            for name, value in [(element.tag, _text(element)), *element.attrib.items()]:
                _note(found, name, value)
    return found


def _text(element: ElementTree.Element) -> str | None:
    """An element's value: its text, or its first rdf:li's (dc:description is an Alt)."""
    text = (element.text or "").strip()
    if text:
        return text
    if element.get(_rdf("resource")):
        return element.get(_rdf("resource"))
    for item in element.iter(_rdf("li")):
        if (item.text or "").strip():
            return item.text.strip()  # type: ignore[union-attr]
    return None


def _rdf(name: str) -> str:
    return "{http://www.w3.org/1999/02/22-rdf-syntax-ns#}" + name


def _note(found: dict[str, Any], name: str, value: str | None) -> None:
    if not value or not name.startswith("{"):
        return
    namespace, _, local = name[1:].partition("}")
    if local == "DigitalSourceType" and found["digital_source_type"] is None:
        found["digital_source_type"] = value
    elif local == "CreatorTool" and namespace == "http://ns.adobe.com/xap/1.0/":
        found["creator_tool"] = found["creator_tool"] or value
    elif local == "description" and namespace == "http://purl.org/dc/elements/1.1/":
        found["description"] = found["description"] or value
    elif local.upper() == "AIGC":  # TC260 (GB 45438-2025): a JSON text in XMP
        label = {"label": "TC260 AIGC", "namespace": namespace, "value": value[:2000]}
        if label not in found["labels"]:
            found["labels"].append(label)


def write(path: Path, fields: dict[str, str], suffix: str | None = None) -> None:
    """Write XMP `fields` (digital_source_type, creator_tool, description) into `path`
    in place: a temporary copy the caller owns, never a saved original; `suffix`: the
    format's extension when the path's is not it."""
    suffix = (suffix or path.suffix).lower()  # a temporary file says what it will be
    if suffix in IMAGES:
        _write_exiv2(path, fields)
    elif suffix in VIDEOS:
        _write_exiftool(path, fields)
    else:
        raise XmpUnavailable(f"no XMP writer for {suffix or 'files without an extension'}")


def _write_exiv2(path: Path, fields: dict[str, str]) -> None:
    try:
        import pyexiv2
    except ImportError:
        raise XmpUnavailable(
            "pyexiv2 is not installed (pip install 'batchgen[provenance]')"
        ) from None
    names = {
        "digital_source_type": "Xmp.iptcExt.DigitalSourceType",
        "creator_tool": "Xmp.xmp.CreatorTool",
        "description": "Xmp.dc.description",
    }
    image = pyexiv2.ImageData(path.read_bytes())
    try:
        image.modify_xmp({names[k]: v for k, v in fields.items()})
        path.write_bytes(image.get_bytes())
    except Exception as e:  # exiv2's own errors (a damaged file) are RuntimeError and kin
        raise XmpUnavailable(f"exiv2 could not write XMP: {e}") from None
    finally:
        image.close()


def _write_exiftool(path: Path, fields: dict[str, str]) -> None:
    exiftool = shutil.which("exiftool")
    if exiftool is None:
        raise XmpUnavailable(
            "exiftool is not installed (apt-get install libimage-exiftool-perl): "
            "it writes XMP into MP4"
        )
    names = {
        "digital_source_type": "XMP-iptcExt:DigitalSourceType",
        "creator_tool": "XMP-xmp:CreatorTool",
        "description": "XMP-dc:Description",
    }
    # Arguments through a file (-@ -): a prompt is never taken for an option.
    arguments = ["-q", "-q", "-m", "-overwrite_original", "-charset", "UTF8"]
    arguments += [f"-{names[k]}={v.replace(chr(10), ' ')}" for k, v in fields.items()]
    arguments.append(str(path))
    try:
        done = subprocess.run(
            [exiftool, "-@", "-"],
            input="\n".join(arguments).encode(),
            capture_output=True,
            timeout=EXIFTOOL_TIMEOUT,
        )
    except subprocess.TimeoutExpired:
        raise XmpUnavailable(f"exiftool took over {EXIFTOOL_TIMEOUT:g} s") from None
    if done.returncode != 0:
        message = done.stderr.decode(errors="replace").strip().splitlines()
        raise XmpUnavailable(f"exiftool could not write XMP: {message[-1] if message else '?'}")
