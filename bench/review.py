"""Review page benchmark: on a ledger of 10,000 results, the review server's first page and
its answers to filter changes (PRODUCT.md §12, issue 24: each under 200 ms), and what one
lightbox step asks of the server.

How it measures:
- The ledger: 10,000 jobs in 5 campaigns of 2,000 (4 takes of each prompt, two models,
  tags), all completed with a result URL, brought there by SQL in one transaction as the
  scheduler writes it (bench/status.py does the same); the first 1,000 have a saved
  file on disk (a small PNG) recorded in `files` with the marks read on save (a
  provider's C2PA manifest, as the sandbox's --provenance signs it; each card's marks
  are read with its files, in the page's one query); 3,000 have a verdict given by one
  of three reviewers (a tenth of those a second verdict on top: history), by
  `Ledger.record_verdict`-shaped SQL (the triggers keep the totals as they would).
- The server: the real review application (`batchgen.review.open_review`: Starlette on
  uvicorn, in a thread of this process), asked over real HTTP on 127.0.0.1 by an httpx
  client that keeps its connection, as the page's fetch does.
- Each figure is the wall time of one request, from sending it to the whole JSON body
  read, best of --repeat (the median beside it). "first page" is the page's first
  request (no `since`); each filter change is the request the page sends when a select
  or the search box changes (from the first page, limit 200). A filter that matches
  few results reads further down the ledger: those are listed too.
- A lightbox step asks the server nothing but the next result's file (the page already
  holds the results; the step redraws two elements, no page load): its GET is timed.
  The browser test checks that no page load happens (tests/test_review_browser.py).

Run: python bench/review.py [--repeat 7] [--results 10000]
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import statistics
import tempfile
import time
import zlib
from pathlib import Path

import common  # noqa: I001  (puts the repository on sys.path first)
import httpx

from batchgen.job import Campaign, Job
from batchgen.ledger import Ledger, now
from batchgen.provenance.xmp import TRAINED
from batchgen.review import open_review

TARGET = 0.200  # seconds
CAMPAIGNS = 5
SAVED = 1000
JUDGED = 0.30
REVIEWERS = ("Ada", "Grace", "Lin")
# The marks `download` records of a file the sandbox signed with --provenance (456 bytes).
PROVIDER_MARKS = json.dumps(
    {
        "c2pa": {
            "state": "valid",
            "manifests": [
                {
                    "issuer": "Okaypic Sandbox",
                    "common_name": "Okaypic Sandbox content signing",
                    "claim_generator": "okaypic-sandbox 1",
                    "digital_source_type": TRAINED,
                    "signed_at": None,
                    "active": True,
                    "batchgen": None,
                    "state": "valid",
                    "failures": [],
                }
            ],
            "failures": [],
            "untrusted": True,
            "error": None,
        },
        "xmp": None,
        "labels": [],
        "marked": True,
        "error": None,
    }
)


def tiny_png() -> bytes:
    """A 2x2 PNG: enough for a browser, and for the server to send."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return len(data).to_bytes(4, "big") + body + zlib.crc32(body).to_bytes(4, "big")

    raw = b"".join(b"\x00" + b"\xff\x00\x00" * 2 for _ in range(2))
    header = (2).to_bytes(4, "big") * 2 + bytes([8, 2, 0, 0, 0])
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def build_ledger(path: Path, out: Path, n: int) -> dict[str, int]:
    """A ledger of `n` completed results (see the module's docstring); returns counts."""
    per_campaign = n // CAMPAIGNS
    ledger = Ledger(path)
    for c in range(CAMPAIGNS):
        campaign = f"week-{c + 1}"
        jobs = [
            Job(
                campaign,
                f"shot-{i:05d}",
                ("grok-video-3", "jimeng-video-seedance-2.0-fast")[i % 2],
                f"Product {i // 4} on a marble table, {('dawn', 'neon')[i // 4 % 2]} light",
                5,
                ratio="1:1",
                tags=["bench", f"line-{i // 4 % 9}"],
            )
            for i in range(per_campaign)
        ]
        ledger.ingest(Campaign(campaign, "bench/review.py", "-", None), jobs)
    ledger.close()
    png = tiny_png()
    stamp = now()
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("BEGIN IMMEDIATE")
    rows = db.execute(
        "SELECT campaign, id, fingerprint, price_micro_usd FROM jobs ORDER BY ref"
    ).fetchall()
    db.executemany(
        "INSERT INTO attempts (campaign, job_id, started_at, answered_at, fingerprint,"
        " http_status, outcome, counted, task_id, unit_price_micro_usd, cost_micro_usd,"
        " state, finished_at) VALUES (?, ?, ?, ?, ?, 200, 'created', 1, ?, ?, ?,"
        " 'completed', ?)",
        ((c, i, stamp, stamp, fp, f"task-{c}-{i}", p, p, stamp) for c, i, fp, p in rows),
    )
    db.executemany(
        "UPDATE jobs SET status = 'completed', task_id = ?, progress = 100, attempts = 1,"
        " cost_micro_usd = ?, result_urls = ?, submitted_at = ?, finished_at = ?,"
        " updated_at = ? WHERE campaign = ? AND id = ?",
        (
            (
                f"task-{c}-{i}",
                p,
                f'["https://cdn.example.com/{c}/{i}.png"]',
                stamp,
                stamp,
                stamp,
                c,
                i,
            )
            for c, i, _, p in rows
        ),  # fmt: skip
    )
    # The newest campaign is the page's first: its first SAVED results have their files.
    newest = db.execute("SELECT name FROM campaigns ORDER BY created_at DESC, name").fetchone()[0]
    saved = [(c, i) for c, i, _, _ in rows if c == newest][:SAVED]
    for c, i in saved:
        file = out / c / f"{i}.png"
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_bytes(png)
    db.executemany(
        "INSERT INTO files (campaign, job_id, n, url, path, size, sha256, downloaded_at,"
        " provenance) VALUES (?, ?, 0, ?, ?, ?, '-', ?, ?)",
        (
            (
                c,
                i,
                f"https://cdn.example.com/{c}/{i}.png",
                str(out / c / f"{i}.png"),
                len(png),
                stamp,
                PROVIDER_MARKS,
            )
            for c, i in saved
        ),  # fmt: skip
    )
    judged = rows[:: int(1 / JUDGED)][: int(n * JUDGED)]
    verdicts = [
        (c, i, f"task-{c}-{i}", ("approved", "rejected")[k % 3 == 0], REVIEWERS[k % 3], stamp)
        for k, (c, i, _, _) in enumerate(judged)
    ]
    verdicts += [(c, i, t, "approved", "Ada", stamp) for c, i, t, _, _, _ in verdicts[::10]]
    db.executemany(
        "INSERT INTO verdicts (campaign, job_id, task_id, attempt_id, verdict, reviewer, at)"
        " SELECT ?1, ?2, ?3, (SELECT MAX(id) FROM attempts WHERE campaign = ?1"
        " AND job_id = ?2), ?4, ?5, ?6",
        verdicts,
    )
    db.execute("COMMIT")
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    counts = {
        "results": db.execute("SELECT COUNT(*) FROM jobs WHERE status = 'completed'").fetchone()[0],
        "saved files": len(saved),
        "verdicts": len(verdicts),
    }
    db.close()
    return counts


def timed(client: httpx.Client, path: str, repeat: int, **params: str) -> list[float]:
    """Seconds of each of `repeat` GETs of `path` (the whole body read)."""
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        answer = client.get(path, params=params)
        answer.read()
        times.append(time.perf_counter() - started)
        assert answer.status_code in (200, 206), (path, params, answer.status_code)
    return times


def line(name: str, times: list[float], note: str = "") -> bool:
    best, median = min(times), statistics.median(times)
    met = best < TARGET
    print(
        f"  {name:<44} {best * 1000:7.1f} ms (median {median * 1000:6.1f})"
        f"  {'met' if met else 'MISSED'}{('  ' + note) if note else ''}"
    )
    return met


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    common.header(f"the review page on {args.results:,} results")
    print(f"load before: {common.load()}\n")
    with tempfile.TemporaryDirectory(prefix="bench-review-") as tmp:
        work = Path(tmp)
        started = time.perf_counter()
        counts = build_ledger(work / "l.db", work / "out", args.results)
        print(
            "ledger: " + ", ".join(f"{v:,} {k}" for k, v in counts.items())
            + f", built in {time.perf_counter() - started:.1f} s\n"
        )  # fmt: skip
        server = open_review(work / "l.db", [], work / "out", 0)
        server.start()
        met = []
        try:
            with httpx.Client(base_url=server.url, timeout=60) as client:
                first = client.get("/api/results").json()
                print(f"first page: {first['shown']} results in {len(first['groups'])} groups"
                      f" of {first['total_jobs']:,} jobs; more: {first['more']}\n")  # fmt: skip
                print(f"each request, best of {args.repeat} (target < {TARGET * 1000:.0f} ms):")
                met.append(line("first page (no filter)", timed(client, "/api/results",
                                                                  args.repeat)))  # fmt: skip
                version = first["version"]
                met.append(
                    line(
                        "poll, nothing changed (since=version)",
                        timed(client, "/api/results", args.repeat, since=version),
                    )
                )
                filters: list[tuple[str, dict[str, str], str]] = [
                    ("campaign (the oldest)", {"campaign": "week-1"}, ""),
                    ("status = completed", {"status": "completed"}, ""),
                    ("model", {"model": "grok-video-3"}, ""),
                    ("tag", {"tag": "line-3"}, ""),
                    ("verdict = unreviewed", {"verdict": "unreviewed"}, ""),
                    ("verdict = rejected", {"verdict": "rejected"}, ""),
                    ("reviewer = Grace", {"reviewer": "Grace"}, ""),
                    ("search: a prompt's words", {"q": "product 17 on"}, "matches few"),
                    (
                        "search: one id in the oldest campaign",
                        {"q": "shot-01999"},
                        "reads every campaign",
                    ),
                    ("reviewer nobody is (no match)", {"reviewer": "Zed"}, "reads every campaign"),
                    ("marks = valid (a provider's C2PA)", {"marks": "valid"}, ""),
                    ("marks = invalid (no match)", {"marks": "invalid"}, "reads every campaign"),
                    ("status = failed (no match)", {"status": "failed"}, "on its index"),
                    (
                        "verdict + reviewer + model",
                        {"verdict": "approved", "reviewer": "Ada", "model": "grok-video-3"},
                        "",
                    ),  # fmt: skip
                ]
                print("filter changes:")
                for name, params, note in filters:
                    met.append(line(name, timed(client, "/api/results", args.repeat,
                                                **params), note))  # fmt: skip
                # Show more: 400 and 2,000 (the most one answer holds).
                print("show more:")
                for limit in ("400", "2000"):
                    line(f"limit={limit}", timed(client, "/api/results", args.repeat,
                                                 limit=limit), "(no target)")  # fmt: skip
                print("a lightbox step (the next result's file, nothing else):")
                sources = [m["src"] for g in first["groups"] for r in g["results"]
                           for m in r["media"] if m["local"]][:args.repeat]  # fmt: skip
                step = []
                for src in sources:
                    started = time.perf_counter()
                    assert client.get(src).status_code == 200
                    step.append(time.perf_counter() - started)
                met.append(line("GET /files/… of the next result", step))
        finally:
            server.stop()
    print(f"\nload after: {common.load()}")
    print(f"\n{sum(met)} of {len(met)} figures under {TARGET * 1000:.0f} ms")


if __name__ == "__main__":
    main()
