"""`batchgen verify FILE…`: what each file's marks say, and whether they hold.

Exit codes (PRODUCT.md §13): 0 every file's marks are valid, 1 one is invalid or forged
(a broken hash or signature, a corrupt manifest: this wins over 3), 3 one has none.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from batchgen.errors import BatchgenError, UsageProblem
from batchgen.provenance.marks import read, verdict

EXIT = {"valid": 0, "invalid": 1, "none": 3}
XMP_NAMES = {"digital_source_type": "Iptc4xmpExt:DigitalSourceType",
             "creator_tool": "xmp:CreatorTool", "description": "dc:description"}  # fmt: skip


def check_anchor(path: str | None) -> None:
    """A --trust-anchor that is not a readable PEM certificate: UsageProblem (exit 2)."""
    if path is None:
        return
    try:
        text = Path(path).read_bytes()
    except OSError as e:
        raise UsageProblem(f"--trust-anchor {path}: {e.strerror}") from None
    try:
        from cryptography import x509

        x509.load_pem_x509_certificates(text)
    except ImportError:
        pass  # the reader says what it can without it
    except ValueError:
        raise UsageProblem(f"--trust-anchor {path}: not a PEM certificate") from None


def verify(paths: list[str], trust_anchor: str | None = None) -> list[dict[str, Any]]:
    """Each file's record (marks.read) with its `file` and `verdict`."""
    try:
        import c2pa  # noqa: F401
    except ImportError:
        raise BatchgenError(
            "verify needs c2pa-python to check manifests: pip install 'batchgen[provenance]'"
        ) from None
    check_anchor(trust_anchor)
    results = []
    for path in paths:
        record = read(path, trust_anchor)
        results.append({"file": path, "verdict": verdict(record), **record})
    return results


def exit_code(results: list[dict[str, Any]]) -> int:
    return max((EXIT[r["verdict"]] for r in results), default=0, key=lambda c: (c == 1, c))


def text(results: list[dict[str, Any]]) -> str:
    """What a person reads: per file its verdict, then each manifest and label."""
    lines = []
    for r in results:
        lines.append(f"{r['file']}: {_verdict_words(r)}")
        if r["error"]:
            lines.append(f"  error: {r['error']}")
        c2pa = r["c2pa"]
        if c2pa:
            if c2pa.get("error"):
                lines.append(f"  C2PA: {c2pa['error']}")
            for n, m in enumerate(c2pa["manifests"], start=1):
                role = "active" if m["active"] else "parent" if n == 2 else "ingredient"
                parts = [f"issuer {m['issuer'] or '?'}"]
                if m["claim_generator"]:
                    parts.append(f"by {m['claim_generator']}")
                if m["digital_source_type"]:
                    parts.append(m["digital_source_type"].rsplit("/", 1)[-1])
                state = m.get("state", c2pa["state"])
                if state == "valid":
                    state = "valid (issuer not among the trust anchors)"
                if m.get("failures"):
                    state += ": " + ", ".join(m["failures"])
                lines.append(f"  C2PA manifest {n} ({role}): {', '.join(parts)}; {state}")
                if m.get("batchgen"):
                    lines.append(f"    batchgen: {_fields(m['batchgen'])}")
        for name, value in (r["xmp"] or {}).items():
            if value:
                lines.append(f"  XMP {XMP_NAMES.get(name, name)}: {value}")
        for label in r["labels"]:
            lines.append(f"  {label['label']}: {label['value']}")
    return "\n".join(lines)


def _verdict_words(record: dict[str, Any]) -> str:
    return {
        "valid": "valid",
        "invalid": "INVALID (changed after signing, forged or unreadable)",
        "none": "no AI marks (no C2PA manifest, no XMP DigitalSourceType, no AI label)",
    }[record["verdict"]]


def _fields(data: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in data.items())
