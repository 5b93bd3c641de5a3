"""What marks a file carries: its C2PA manifest store, its XMP labels, other AI labels.

`read(path)` answers with a record (plain JSON data, what the ledger keeps):

    {"c2pa": null | {"state": "trusted" | "valid" | "invalid" | "unchecked",
                     "manifests": [{"issuer", "common_name", "claim_generator",
                                    "digital_source_type", "signed_at", "active",
                                    "batchgen"}, ...],      # the active one first
                     "failures": ["assertion.dataHash.mismatch", ...],
                     "untrusted": bool, "error": null | "..."},
     "xmp": {"digital_source_type", "creator_tool", "description"},
     "labels": [{"label": "TC260 AIGC", ...}], "marked": bool, "error": null | "..."}

"valid" means every signature and hash checks but an issuer is not among the trust
anchors (a provider's own CA, unless given); "invalid" that a hash, a signature or the
manifest itself is broken (bytes changed after signing, a forged or corrupt manifest).

A C2PA manifest store is looked for by its JUMBF box (a memory-mapped search, so a huge
file costs nothing); only a file that has one is handed to the CAI's reader, and in a
process of its own, with a memory limit and a deadline: a huge or hostile manifest, or a
truncated file, gives an "invalid" verdict within seconds, never a crash of batchgen.
"""

from __future__ import annotations

import json
import mmap
import subprocess
import sys
from pathlib import Path
from typing import Any

from batchgen.provenance import xmp

# A C2PA manifest store's JUMBF description box: "jumd", then the store's type UUID
# (63327061-0011-0010-8000-00AA00389B71, whose first 4 bytes spell "c2pa").
C2PA_STORE = b"jumd" + bytes.fromhex("63327061001100108000 00aa00389b71".replace(" ", ""))
READ_TIMEOUT = 20.0  # seconds for the CAI reader on one file
MEMORY_LIMIT = 1 << 30  # bytes of address space for the reader's process
UNTRUSTED = "signingCredential.untrusted"
# The reader's settings: offline, whatever the file says (no remote manifest, no OCSP).
OFFLINE = {"verify": {"remote_manifest_fetch": False, "ocsp_fetch": False}}


def read(path: str | Path, trust_anchor: str | Path | None = None) -> dict[str, Any]:
    """The marks `path` carries (see the module's docstring); never raises for a bad
    file: what could not be read is said in `error`."""
    path = Path(path)
    record: dict[str, Any] = {
        "c2pa": None,
        "xmp": None,
        "labels": [],
        "marked": False,
        "error": None,
    }
    try:
        found = xmp.read(path)
        has_store = _has_c2pa_store(path)
    except (OSError, ValueError) as e:
        record["error"] = f"cannot read {path.name}: {e.strerror if isinstance(e, OSError) else e}"
        return record
    record["labels"] = found.pop("labels")
    if any(found.values()):
        record["xmp"] = found
    if has_store:
        record["c2pa"] = _read_c2pa(path, trust_anchor)
    record["marked"] = bool(
        record["c2pa"] or record["labels"] or (record["xmp"] or {}).get("digital_source_type")
    )
    return record


def verdict(record: dict[str, Any]) -> str:
    """ "invalid" (a broken mark or an unreadable file), "none" (no AI mark), or "valid"."""
    c2pa = record.get("c2pa")
    if record.get("error") or (c2pa and c2pa["state"] == "invalid"):
        return "invalid"
    return "valid" if record.get("marked") else "none"


def summary(record: dict[str, Any] | None) -> str:
    """One short line: "C2PA valid (Issuer); XMP trainedAlgorithmicMedia", or "none"."""
    if record is None:
        return ""
    if record.get("error"):
        return f"unreadable: {record['error']}"
    parts = []
    c2pa = record.get("c2pa")
    if c2pa:
        issuers = ", ".join(dict.fromkeys(m["issuer"] or "?" for m in c2pa["manifests"]))
        part = f"C2PA {c2pa['state']}" + (f" ({issuers})" if issuers else "")
        if c2pa.get("error") or c2pa.get("failures"):
            part += ": " + (c2pa.get("error") or ", ".join(c2pa["failures"][:3]))
        parts.append(part)
    source = (record.get("xmp") or {}).get("digital_source_type")
    if source:
        parts.append(f"XMP {source.rsplit('/', 1)[-1]}")
    parts += [label["label"] for label in record.get("labels", [])]
    return "; ".join(parts) or "none"


def _has_c2pa_store(path: Path) -> bool:
    with open(path, "rb") as f:
        if f.seek(0, 2) == 0:
            return False
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            return data.find(C2PA_STORE) >= 0


def _read_c2pa(path: Path, trust_anchor: str | Path | None) -> dict[str, Any]:
    """The manifest store, read by the CAI's reader in a process of its own."""
    command = [sys.executable, "-m", "batchgen.provenance.marks", str(path)]
    if trust_anchor is not None:
        command.append(str(trust_anchor))
    failed = {"state": "invalid", "manifests": [], "failures": [], "untrusted": False}
    try:
        done = subprocess.run(command, capture_output=True, timeout=READ_TIMEOUT)
    except subprocess.TimeoutExpired:
        return {**failed, "error": f"the manifest could not be read within {READ_TIMEOUT:g} s"}
    try:
        answer: dict[str, Any] = json.loads(done.stdout)
        return answer
    except ValueError:
        return {
            **failed,
            "error": "the manifest could not be read (the reader stopped: "
            f"exit {done.returncode}, too big or corrupt)",
        }


def c2pa_store(path: str, trust_anchor: str | None = None) -> dict[str, Any]:
    """The manifest store of `path` (the reader's process runs this)."""
    try:
        import c2pa
    except ImportError:
        return {
            "state": "unchecked",
            "manifests": [],
            "failures": [],
            "untrusted": False,
            "error": "c2pa-python is not installed (pip install 'batchgen[provenance]')",
        }
    settings: dict[str, Any] = {"verify": dict(OFFLINE["verify"])}
    if trust_anchor is not None:
        settings["trust"] = {"trust_anchors": Path(trust_anchor).read_text()}
        settings["verify"]["verify_trust"] = True
    try:
        context = c2pa.Context.from_dict(settings)
        with open(path, "rb") as f:
            reader = c2pa.Reader(mime_type(path), f, None, context)
            store = json.loads(reader.json())
    except c2pa.C2paError as e:
        return {
            "state": "invalid",
            "manifests": [],
            "failures": [],
            "untrusted": False,
            "error": f"the manifest could not be read: {type(e).__name__}",
        }
    return _store(store)


def mime_type(path: str) -> str:
    suffix = Path(path).suffix.lower()
    return {
        ".png": "image/png",
        ".jpg": "image/jpeg",
        ".jpeg": "image/jpeg",
        ".mp4": "video/mp4",
        ".mov": "video/quicktime",
        ".webp": "image/webp",
    }.get(suffix, "application/octet-stream")


def _store(store: dict[str, Any]) -> dict[str, Any]:
    """The reader's JSON, cut down to what a person or a compliance officer asks: each
    manifest, the active one first then its parents, with its own validation (a parent's
    as checked when it was taken in, plus what reading found since)."""
    manifests = store.get("manifests") or {}
    results = store.get("validation_results") or {}
    deltas: list[dict[str, Any]] = []
    for delta in results.get("ingredientDeltas") or []:
        deltas += (delta.get("validationDeltas") or {}).get("failure", [])
    chain: list[dict[str, Any]] = []
    label: str | None = store.get("active_manifest")
    checked: dict[str, Any] = results.get("activeManifest") or {}
    seen: set[str] = set()
    while label is not None and label in manifests and label not in seen:
        seen.add(label)
        manifest = manifests[label]
        failures = [f["code"] for f in checked.get("failure", [])]
        if chain:
            failures += [f["code"] for f in deltas]
        trusted = None
        if any(f["code"] == "signingCredential.trusted" for f in checked.get("success", [])):
            trusted = True
        elif UNTRUSTED in failures:
            trusted = False
        broken = list(dict.fromkeys(c for c in failures if c != UNTRUSTED))
        state = "invalid" if broken else "trusted" if trusted else "valid"
        chain.append({**_manifest(manifest, not chain), "state": state, "failures": broken})
        parents = [
            i for i in manifest.get("ingredients", []) if i.get("relationship") == "parentOf"
        ]
        label = parents[0].get("active_manifest") if parents else None
        checked = (
            (parents[0].get("validation_results") or {}).get("activeManifest") or {}
            if parents
            else {}
        )
    if not chain:
        return {
            "state": "invalid",
            "manifests": [],
            "failures": [],
            "untrusted": False,
            "error": "no active manifest",
        }
    failures = list(dict.fromkeys(c for m in chain for c in m["failures"]))
    overall = (store.get("validation_state") or "").lower()
    state = chain[0]["state"]
    if failures or overall not in ("valid", "trusted"):
        state = "invalid"
    return {
        "state": state,
        "manifests": chain,
        "failures": failures,
        "untrusted": any(m["state"] == "valid" for m in chain),
        "error": None,
    }


def _manifest(manifest: dict[str, Any], active: bool) -> dict[str, Any]:
    signature = manifest.get("signature_info") or {}
    generator = (manifest.get("claim_generator_info") or [{}])[0]
    name = " ".join(str(generator.get(k, "")) for k in ("name", "version")).strip()
    source, batchgen = None, None
    for assertion in manifest.get("assertions", []):
        if assertion.get("label", "").startswith("c2pa.actions"):
            for action in (assertion.get("data") or {}).get("actions", []):
                source = source or action.get("digitalSourceType")
        elif assertion.get("label") == "org.batchgen.export":
            batchgen = assertion.get("data")
    return {
        "issuer": signature.get("issuer"),
        "common_name": signature.get("common_name"),
        "claim_generator": name or manifest.get("claim_generator"),
        "digital_source_type": source,
        "signed_at": signature.get("time"),
        "active": active,
        "batchgen": batchgen,
    }


if __name__ == "__main__":  # the reader's own process: python -m batchgen.provenance.marks
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
    print(json.dumps(c2pa_store(*sys.argv[1:3]), ensure_ascii=False))
