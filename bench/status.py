"""Status and resume benchmark: `batchgen status`, `status --json` and `resume` start-up
on a 100,000-job ledger (PRODUCT.md §11: each under 1 s).

How it measures:
- The ledger: 100,000 jobs ingested with `Ledger.ingest`, then brought to the state of
  a long run halfway through by SQL in one transaction, written as the scheduler writes
  it: 60,000 completed (each with its attempt, task id, result URL, cost, and its
  `submitted`/`completed` events), 1,000 failed after a refunded failed task, 500 held
  after an unknown outcome, the rest queued. (No task is left running: the sandbox
  below could not answer polls of tasks it never created.)
- status: `batchgen status` and `batchgen status --json` (stdout to /dev/null), wall
  time and peak RSS of the process, from a small launcher (bench/common.py).
- resume start-up, on that ledger and on one of 100,000 jobs just ingested (all queued):
  the real `batchgen resume` against the sandbox served on 127.0.0.1
  with an empty balance, so its first submission is answered 402 and it stops at once:
  start-up = from launching the process to the sandbox receiving that first request;
  the whole run (start-up, the 402, marking the stop, exit) is shown beside it.
Each figure is the best of --repeat runs (the median beside it), on a copy of the same
ledger each time.

Run: python bench/status.py [--repeat 5] [--jobs 100000]
"""

from __future__ import annotations

import argparse
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

import common  # noqa: I001  (puts the repository on sys.path first)

from batchgen.job import Campaign, Job
from batchgen.ledger import Ledger, now
from batchgen.sandbox import Response, Sandbox, SandboxConfig, serve

TARGET = 1.0
COMPLETED, FAILED, HELD = 0.60, 0.01, 0.005


def build_ledger(path: Path, n: int, halfway: bool = True) -> dict[str, int]:
    """A ledger of n jobs, all queued, or (`halfway`) as a long run leaves it halfway."""
    jobs = [
        Job(
            "bench-status",
            f"clip-{i:06d}",
            ("grok-video-3", "jimeng-video-seedance-2.0-fast")[i % 2],
            f"Product {i} on a marble table, slow pan",
            (5, 10)[i % 3 % 2],
            ratio=("1:1", "16:9")[i % 2],
            tags=["bench", f"batch-{i % 7}"],
        )
        for i in range(n)
    ]
    ledger = Ledger(path)
    ledger.ingest(Campaign("bench-status", "bench/status.py", "-", None), jobs)
    ledger.close()
    if not halfway:
        return {"queued": n}
    done, failed, held = int(n * COMPLETED), int(n * FAILED), int(n * HELD)
    stamp = now()
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("BEGIN IMMEDIATE")
    rows = db.execute(
        "SELECT id, fingerprint, price_micro_usd FROM jobs ORDER BY position"
    ).fetchall()
    completed = rows[:done]
    db.executemany(
        "INSERT INTO attempts (campaign, job_id, started_at, answered_at, fingerprint,"
        " http_status, outcome, counted, task_id, unit_price_micro_usd, cost_micro_usd,"
        " state, finished_at) VALUES ('bench-status', ?, ?, ?, ?, 200, 'created', 1, ?, ?, ?,"
        " 'completed', ?)",
        ((i, stamp, stamp, fp, f"task-{i}", p, p, stamp) for i, fp, p in completed),
    )
    db.executemany(
        "UPDATE jobs SET status = 'completed', task_id = ?, progress = 100, attempts = 1,"
        " cost_micro_usd = ?, result_urls = ?, submitted_at = ?, finished_at = ?,"
        " updated_at = ? WHERE campaign = 'bench-status' AND id = ?",
        (
            (f"task-{i}", p, f'["https://cdn.example.com/{i}.mp4"]', stamp, stamp, stamp, i)
            for i, _, p in completed
        ),
    )
    db.executemany(
        "INSERT INTO events (at, campaign, job_id, kind, detail) VALUES"
        " (?, 'bench-status', ?, ?, ?)",
        (
            (stamp, i, kind, f'{{"task_id":"task-{i}"}}')
            for i, _, _ in completed
            for kind in ("submitted", "completed")
        ),
    )
    for state, chosen, job_status, error in (
        ("failed", rows[done : done + failed], "failed", "task failed: Generation failed"),
        ("unknown", rows[done + failed : done + failed + held], "held", "ReadTimeout"),
    ):
        db.executemany(
            "INSERT INTO attempts (campaign, job_id, started_at, answered_at, fingerprint,"
            " http_status, outcome, counted, task_id, unit_price_micro_usd, cost_micro_usd,"
            " refunded_micro_usd, state, error, finished_at) VALUES ('bench-status', ?, ?, ?,"
            " ?, NULL, ?, 1, NULL, ?, ?, ?, ?, ?, ?)",
            (
                (
                    i,
                    stamp,
                    stamp,
                    fp,
                    state,
                    p,
                    p if state == "unknown" else 0,
                    p if state == "failed" else 0,
                    state,
                    error,
                    stamp,
                )
                for i, fp, p in chosen
            ),
        )
        db.executemany(
            "UPDATE jobs SET status = ?, attempts = 1, last_error = ?, reason = ?,"
            " finished_at = ?, updated_at = ? WHERE campaign = 'bench-status' AND id = ?",
            (
                (
                    job_status,
                    error,
                    "unknown outcome" if job_status == "held" else None,
                    stamp,
                    stamp,
                    i,
                )
                for i, _, _ in chosen
            ),
        )
    db.execute("COMMIT")
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    counts = dict(db.execute("SELECT status, COUNT(*) FROM jobs GROUP BY status").fetchall())
    db.close()
    return counts


class FirstRequest(Sandbox):
    """The sandbox, noting when (time.time) its first API request arrived."""

    first: float | None = None

    def handle(
        self, method: str, target: str, headers: Mapping[str, str], body: bytes = b""
    ) -> Response:
        if self.first is None and target.startswith("/api/"):
            self.first = time.time()
        return super().handle(method, target, headers, body)


def resume_startup(ledger: Path) -> tuple[float, float]:
    """(seconds to the first request, seconds of the whole run) of `batchgen resume`."""
    sandbox = FirstRequest(SandboxConfig(keys={common.SANDBOX_KEY: 0}), clock=time.time)
    with serve(sandbox) as served:
        env = common.command_env(ledger, served.base_url, common.SANDBOX_KEY)
        started = time.time()
        result = subprocess.run(
            [sys.executable, "-m", "batchgen", "resume"],
            env=env,
            cwd=common.ROOT,
            capture_output=True,
            text=True,
            timeout=300,
        )
        ended = time.time()
    common.check(result, expected=(3,))  # 3: the balance ran out, resumable
    assert "balance" in result.stderr, result.stderr
    assert sandbox.first is not None
    return sandbox.first - started, ended - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    common.header("status and resume on a 100,000-job ledger")
    with tempfile.TemporaryDirectory(prefix="bench-status-") as tmp:
        work = Path(tmp)
        original = work / "original.db"
        started = time.perf_counter()
        counts = build_ledger(original, args.jobs)
        size = original.stat().st_size / 2**20
        print(
            f"ledger: {sum(counts.values()):,} jobs "
            f"({', '.join(f'{v:,} {k}' for k, v in sorted(counts.items()))}), "
            f"{size:.0f} MB, built in {time.perf_counter() - started:.1f} s\n"
        )
        fresh = work / "fresh.db"
        build_ledger(fresh, args.jobs, halfway=False)
        print(f"and a fresh one: {args.jobs:,} jobs just ingested, all queued\n")
        figures: dict[str, list[float]] = {}
        memory: dict[str, float] = {}
        for i in range(args.repeat):
            for name, command in (
                ("status", ["status"]),
                ("status --json > /dev/null", ["status", "--json"]),
            ):
                copy = work / f"status-{i}.db"
                shutil.copy(original, copy)
                wall, rss = common.measure(*command, ledger=copy)
                figures.setdefault(name, []).append(wall)
                memory[name] = max(memory.get(name, 0.0), rss)
            for name, source in (("resume", original), ("resume, all queued", fresh)):
                copy = work / f"resume-{i}.db"
                shutil.copy(source, copy)
                first, whole = resume_startup(copy)
                figures.setdefault(f"{name}: start-up to first request", []).append(first)
                figures.setdefault(f"{name}: whole run, stopped by 402", []).append(whole)
        for name, samples in figures.items():
            rss = f", peak RSS {memory[name]:.0f} MB" if name in memory else ""
            print(f"  {name:47s} {common.best(samples)}{rss}")
        print()
        for name in (
            "status",
            "status --json > /dev/null",
            "resume: start-up to first request",
            "resume, all queued: start-up to first request",
        ):
            best = min(figures[name])
            print(f"  {name} < {TARGET:.0f} s: {best:.3f} s {common.verdict(best < TARGET)}")


if __name__ == "__main__":
    main()
