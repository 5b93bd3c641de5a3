"""Reading a file's marks (PRODUCT.md §13): C2PA manifests with issuer, generator, source
type and validation; XMP DigitalSourceType; other AI labels; and hostile files, which get
a verdict within seconds, never a traceback. Certificates are made here, offline."""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import pytest

from batchgen.provenance import certs, marks, sign, xmp
from batchgen.sandbox import media

PROVIDER = {"claim_generator_info": [{"name": "okaypic", "version": "1"}], "title": "result"}


@pytest.fixture(scope="module")
def provider() -> certs.Credentials:
    return certs.make("Okaypic Provider")


def signed(tmp_path: Path, provider: certs.Credentials, kind: str) -> Path:
    data, mime = (media.png("a"), "image/png") if kind == "png" else (
        media.mp4("a", seconds=1), "video/mp4")  # fmt: skip
    path = tmp_path / f"signed.{kind}"
    path.write_bytes(sign.sign_bytes(data, mime, provider.chain, provider.key, PROVIDER))
    return path


@pytest.mark.parametrize("kind", ["png", "mp4"])
def test_a_provider_signed_file_reads_as_valid_but_untrusted_with_its_issuer(
    tmp_path, provider, kind
):
    record = marks.read(signed(tmp_path, provider, kind))
    (manifest,) = record["c2pa"]["manifests"]
    assert record["c2pa"]["state"] == "valid" and record["c2pa"]["untrusted"]
    assert manifest["issuer"] == "Okaypic Provider"
    assert manifest["claim_generator"] == "okaypic 1"
    assert manifest["digital_source_type"] == xmp.TRAINED
    assert marks.verdict(record) == "valid" and record["marked"]


def test_its_root_given_as_trust_anchor_makes_it_trusted(tmp_path, provider):
    anchor = tmp_path / "root.pem"
    anchor.write_bytes(provider.root)
    record = marks.read(signed(tmp_path, provider, "png"), trust_anchor=anchor)
    assert record["c2pa"]["state"] == "trusted" and not record["c2pa"]["untrusted"]


@pytest.mark.parametrize("kind", ["png", "mp4"])
def test_bytes_changed_after_signing_read_as_invalid(tmp_path, provider, kind):
    path = signed(tmp_path, provider, kind)
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF  # in the pixels (PNG IDAT... IEND is 12 bytes) or the MP4's mdat
    path.write_bytes(bytes(data))
    record = marks.read(path)
    assert record["c2pa"]["state"] == "invalid" and record["c2pa"]["failures"]
    assert marks.verdict(record) == "invalid"


def test_a_file_without_marks_is_recorded_as_such(tmp_path):
    path = tmp_path / "plain.png"
    path.write_bytes(media.png("b"))
    record = marks.read(path)
    assert record == {"c2pa": None, "xmp": None, "labels": [], "marked": False, "error": None}
    assert marks.verdict(record) == "none" and marks.summary(record) == "none"


def test_xmp_digital_source_type_and_a_tc260_label_are_found(tmp_path):
    packet = (
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF '
        'xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        '<rdf:Description xmlns:Iptc4xmpExt="http://iptc.org/std/Iptc4xmpExt/2008-02-29/" '
        'xmlns:TC260="http://www.tc260.org.cn/ns/AIGC/1.0/" '
        f'Iptc4xmpExt:DigitalSourceType="{xmp.TRAINED}">'
        '<TC260:AIGC>{"Label":"1","ContentProducer":"001191110108MA01"}</TC260:AIGC>'
        "</rdf:Description></rdf:RDF></x:xmpmeta>"
    ).encode()
    path = tmp_path / "labelled.png"
    path.write_bytes(_with_chunk(media.png("c"), b"iTXt", b"XML:com.adobe.xmp\0\0\0\0\0" + packet))
    record = marks.read(path)
    assert record["xmp"]["digital_source_type"] == xmp.TRAINED
    (label,) = record["labels"]
    assert label["label"] == "TC260 AIGC" and "ContentProducer" in label["value"]
    assert marks.summary(record) == "XMP trainedAlgorithmicMedia; TC260 AIGC"


def test_a_packet_declaring_entities_is_never_expanded(tmp_path):
    bomb = (
        b'<!DOCTYPE x [<!ENTITY a "aaaaaaaaaa">]>'
        b'<x:xmpmeta xmlns:x="adobe:ns:meta/">&a;</x:xmpmeta>'
    )
    path = tmp_path / "bomb.png"
    path.write_bytes(_with_chunk(media.png("d"), b"iTXt", bomb))
    assert marks.read(path)["xmp"] is None


def _with_chunk(png: bytes, kind: bytes, body: bytes) -> bytes:
    chunk = struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    return png[:33] + chunk + png[33:]  # after the signature and IHDR


@pytest.mark.parametrize("damage", ["truncated mp4", "corrupt manifest", "huge manifest"])
def test_a_hostile_file_gets_a_clear_verdict_never_a_traceback(tmp_path, provider, damage):
    if damage == "truncated mp4":
        data = signed(tmp_path, provider, "mp4").read_bytes()
        data = data[: len(data) // 2]
    elif damage == "corrupt manifest":
        data = bytearray(signed(tmp_path, provider, "png").read_bytes())
        at = data.find(marks.C2PA_STORE)
        data[at + 200 : at + 400] = b"\xff" * 200
    else:  # a JUMBF box claiming 2 GB, 64 MB of noise in it
        box = struct.pack(">I", 0x7FFFFFFF) + b"jumb" + struct.pack(">I", 0x7FFFFFF0)
        data = _with_chunk(media.png("e"), b"caBX", box + marks.C2PA_STORE + os.urandom(1 << 26))
    path = tmp_path / ("hostile.mp4" if damage == "truncated mp4" else "hostile.png")
    path.write_bytes(bytes(data))
    record = marks.read(path)
    assert marks.verdict(record) == "invalid"
    assert record["c2pa"]["state"] == "invalid"
    assert marks.summary(record).startswith("C2PA invalid")


def test_a_reader_that_dies_or_hangs_is_an_invalid_verdict(tmp_path, provider, monkeypatch):
    path = signed(tmp_path, provider, "png")
    monkeypatch.setattr(marks, "READ_TIMEOUT", 0.001)
    record = marks.read(path)
    assert record["c2pa"]["state"] == "invalid" and "within" in record["c2pa"]["error"]


def test_an_unreadable_file_is_said_so(tmp_path):
    record = marks.read(tmp_path / "missing.png")
    assert record["error"] and marks.verdict(record) == "invalid"
