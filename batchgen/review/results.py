"""What the review page shows: the ledger's jobs grouped by campaign and prompt, each with
the media a browser can load (a saved file served by the review server, or else the
service's own URL, marked as not saved), its facts, cost, attempts and verdict."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from batchgen.money import usd
from batchgen.review.files import VIDEO_EXTENSIONS, extension, locate


def file_route(campaign: str, job_id: str, n: int) -> str:
    """The review server's URL path of a job's saved result file `n`."""
    return f"/files/{quote(campaign, safe='')}/{quote(job_id, safe='')}/{n}"


def media(job: dict[str, Any], out_dir: str | Path) -> list[dict[str, Any]]:
    """One entry per result URL: {n, type (image|video), src, local}; `local` is False when
    the file was not saved (or is gone) and the browser must load the service's URL."""
    saved = {f["n"]: f for f in job["files"]}
    entries = []
    for n, url in enumerate(job["result_urls"]):
        record = saved.get(n)
        name = record["path"] if record else str(url)
        kind = "video" if extension(name) in VIDEO_EXTENSIONS else job["kind"]
        if record and record["url"] == url and locate(out_dir, record["path"], record["size"]):
            entries.append(
                {
                    "n": n,
                    "type": kind,
                    "src": file_route(job["campaign"], job["id"], n),
                    "local": True,
                    "path": record["path"],
                }  # fmt: skip
            )
        elif isinstance(url, str) and urlsplit(url).scheme in ("http", "https"):
            entries.append({"n": n, "type": kind, "src": url, "local": False, "path": None})
    return entries


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
