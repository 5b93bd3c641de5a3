"""What the review page shows: the ledger's jobs grouped by campaign and prompt, each with
the media a browser can load (a saved file served by the review server, or else the
service's own URL, marked as not saved) and the marks each file carried when it was saved
(its provenance, PRODUCT §13), its facts, cost, attempts and verdict."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from batchgen.money import usd
from batchgen.provenance.marks import verdict as marks_verdict
from batchgen.review.files import VIDEO_EXTENSIONS, extension, locate


def file_route(campaign: str, job_id: str, n: int) -> str:
    """The review server's URL path of a job's saved result file `n`."""
    return f"/files/{quote(campaign, safe='')}/{quote(job_id, safe='')}/{n}"


def media(job: dict[str, Any], out_dir: str | Path) -> list[dict[str, Any]]:
    """One entry per result URL: {n, type (image|video), src, local, path, provenance,
    marks}; `local` is False when the file was not saved (or is gone) and the browser must
    load the service's URL. `provenance` is the record of the marks read when the file was
    saved (None: not read, or never saved), `marks` what the page says of them (None:
    never saved)."""
    saved = {f["n"]: f for f in job["files"]}
    entries = []
    for n, url in enumerate(job["result_urls"]):
        record = saved.get(n)
        if record and record["url"] != url:
            record = None  # a file of another result, saved under this number before
        name = record["path"] if record else str(url)
        kind = "video" if extension(name) in VIDEO_EXTENSIONS else job["kind"]
        found = {
            "provenance": record.get("provenance") if record else None,
            "marks": marks(record.get("provenance")) if record else None,
        }
        if record and locate(out_dir, record["path"], record["size"]):
            entries.append(
                {
                    "n": n,
                    "type": kind,
                    "src": file_route(job["campaign"], job["id"], n),
                    "local": True,
                    "path": record["path"],
                    **found,
                }  # fmt: skip
            )
        elif isinstance(url, str) and urlsplit(url).scheme in ("http", "https"):
            entries.append(
                {"n": n, "type": kind, "src": url, "local": False, "path": None, **found}
            )
    return entries


def marks(record: dict[str, Any] | None) -> dict[str, Any]:
    """What the page says of one saved file's marks (the record of
    batchgen.provenance.marks.read, None when they were not read): its state (valid,
    invalid, none or unread), a short badge for the card ("C2PA ✓ Okaypic", "C2PA invalid",
    "XMP: trainedAlgorithmicMedia", "no marks") and the details, a line each."""
    if record is None:
        return {
            "state": "unread",
            "badge": "marks not read",
            "details": ["The marks of this file were not read when it was saved "
                        "(`batchgen download` reads them)."],
        }  # fmt: skip
    state = marks_verdict(record)
    if record.get("error"):
        return {"state": state, "badge": "marks unreadable", "details": [record["error"]]}
    c2pa = record.get("c2pa")
    source = (record.get("xmp") or {}).get("digital_source_type")
    labels = [label.get("label") or "?" for label in record.get("labels") or []]
    details = []
    if c2pa:
        manifests = c2pa.get("manifests") or []
        issuer = next((m.get("issuer") or m.get("common_name") for m in manifests), None) or ""
        sound = c2pa["state"] in ("trusted", "valid")
        badge = f"C2PA ✓ {issuer}".strip() if sound else f"C2PA {c2pa['state']}"
        said = f"C2PA: {c2pa['state']}"
        if c2pa["state"] == "valid" and c2pa.get("untrusted"):
            said += " (signatures and hashes check; the issuer is not among the trust anchors)"
        if c2pa.get("error"):
            said += f": {c2pa['error']}"
        if c2pa.get("failures"):
            said += f"; failures: {', '.join(c2pa['failures'])}"
        details.append(said)
        for m in manifests:
            facts = [
                f"issuer {m.get('issuer') or m.get('common_name') or 'unknown'}",
                f"claim generator {m.get('claim_generator') or 'unknown'}",
                f"digital source type {_last(m.get('digital_source_type')) or 'not declared'}",
                f"validation {m.get('state', c2pa['state'])}",
            ]
            if m.get("signed_at"):
                facts.append(f"signed {m['signed_at']}")
            which = "active manifest" if m.get("active") else "parent manifest"
            details.append(f"{which}: " + " · ".join(facts))
    elif source:
        badge = f"XMP: {_last(source)}"
    elif labels:
        badge = labels[0]
    else:
        badge = "no marks"
    xmp = record.get("xmp") or {}
    if source:
        details.append(f"XMP DigitalSourceType: {_last(source)}")
    for key, name in (("creator_tool", "CreatorTool"), ("description", "Description")):
        if xmp.get(key):
            details.append(f"XMP {name}: {xmp[key]}")
    details += [f"AI label: {label}" for label in labels]
    if not details:
        details.append("No C2PA manifest, no XMP DigitalSourceType, no other AI label.")
    return {"state": state, "badge": badge, "details": details}


def _last(uri: str | None) -> str | None:
    """An IPTC digital source type's name: the last part of its URI."""
    return uri.rstrip("/").rsplit("/", 1)[-1] if uri else uri


def entry(job: dict[str, Any], out_dir: str | Path) -> dict[str, Any]:
    """One job as a card of the page."""
    return {
        "key": f"{job['campaign']}/{job['id']}",
        "campaign": job["campaign"],
        "id": job["id"],
        "prompt": job["prompt"],
        "model": job["model"],
        "variant": job["variant"],
        "kind": job["kind"],
        "duration": job["duration"],
        "ratio": job["ratio"],
        "resolution": job["resolution"],
        "tags": job["tags"],
        "status": job["status"],
        "reason": job["reason"],
        "progress": job["progress"],
        "error": job["last_error"],
        "task_id": job["task_id"],
        "cost_usd": usd(job["cost_micro_usd"]),
        "attempts": job["attempts"],
        "finished_at": job["finished_at"],
        "verdict": job["verdict"],
        "note": job["note"],
        "verdict_at": job["verdict_at"],
        "reviewer": job["reviewer"],
        "history": job["history"],  # every verdict and note on this result, newest first
        "media": media(job, out_dir) if job["status"] == "completed" else [],
    }


def grouped(jobs: Iterable[dict[str, Any]], out_dir: str | Path) -> list[dict[str, Any]]:
    """Cards grouped by (campaign, prompt), groups in the order of their first job, so the
    takes, models and matrix variants of one prompt sit side by side."""
    groups: dict[tuple[str, str], dict[str, Any]] = {}
    for job in jobs:
        key = (job["campaign"], job["prompt"])
        group = groups.get(key)
        if group is None:
            group = groups[key] = {
                "key": hashlib.sha256("\n".join(key).encode("utf-8", "replace")).hexdigest()[:16],
                "campaign": job["campaign"],
                "prompt": job["prompt"],
                "results": [],
            }
        group["results"].append(entry(job, out_dir))
    return list(groups.values())
