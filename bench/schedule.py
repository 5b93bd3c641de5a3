"""Scheduling benchmark: batchgen's makespan and polls against the sandbox, next to the
ideal and next to a plain 3-thread polling script (PRODUCT.md §11).

How it measures:
- The sandbox runs in this process, served on 127.0.0.1, with its own jitter (±10 %) and
  `time_scale` 0.03, so the 45 grok-video-3 / Seedance jobs generate in 1-3 s each. Its
  clock is time.time (the ledger's wall clock), so the sandbox's truth and the ledger's
  timestamps are on one clock.
- batchgen: a ledger is built with `Ledger.ingest`, then the real `batchgen resume
  --poll-interval 0.1` runs in a subprocess against the sandbox.
  makespan = first submission (sandbox truth) -> last completion seen by batchgen
  (attempts.finished_at in the ledger).
- ideal: the same tasks' generation times (ends_at - submitted_at in the truth), in the
  same order, list-scheduled on 3 slots that are never idle: zero overhead.
- script: the same jobs against a fresh sandbox with the same seed, by 3 threads that
  each submit a job and poll it every 0.1 s (httpx, sync, no adaptivity), then take the
  next; makespan = first submission -> last completion the script saw.
- polls per task and 429s come from the sandbox's truth.
- Where batchgen's overhead goes: how late each completion is noticed (seen - ends_at),
  how long a freed slot takes to be refilled (next submission - completion seen), the
  submit round trip including its commit, and one fsync'd ledger transaction.

Run: python bench/schedule.py [--jobs 45] [--seed 1] [--runs 1]
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import queue
import sqlite3
import statistics
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import common  # noqa: I001  (puts the repository on sys.path first)
import httpx

from batchgen import catalog
from batchgen.job import Campaign, Job
from batchgen.ledger import Ledger
from batchgen.sandbox import Sandbox, SandboxConfig, Truth, serve

CONCURRENCY = 3
POLL_INTERVAL = 0.1
TIME_SCALE = 0.03  # catalog typical times x 0.03: every task below takes 1-3 s
# (model, duration): typical generation 40-80 s, so 1.2-2.4 s here, each +-10 % jitter
SHAPES = [
    ("grok-video-3", 5),
    ("jimeng-video-seedance-2.0-fast", 5),
    ("grok-video-3", 10),
    ("jimeng-video-seedance-2.0-fast", 10),
    ("grok-video-3", 15),
    ("jimeng-video-seedance-2.0", 5),
]
TARGET, STRETCH = 0.03, 0.01


def make_jobs(n: int) -> list[Job]:
    jobs = []
    for i, (model, duration) in zip(range(n), itertools.cycle(SHAPES), strict=False):
        ratio = "1:1" if model == "grok-video-3" else "16:9"
        jobs.append(
            Job("bench", f"clip-{i:03d}", model, f"benchmark clip {i}", duration, ratio=ratio)
        )
    return jobs


def make_sandbox(seed: int) -> Sandbox:
    # time.time, not the default time.monotonic: one clock with the ledger's timestamps
    return Sandbox(SandboxConfig(time_scale=TIME_SCALE, seed=seed), clock=time.time)


def ideal_makespan(durations: list[float], slots: int = CONCURRENCY) -> float:
    """List scheduling: each task, in order, starts on the first slot free; no overhead."""
    free = [0.0] * slots
    end = 0.0
    for d in durations:
        start = heapq.heappop(free)
        heapq.heappush(free, start + d)
        end = max(end, start + d)
    return end


@dataclass
class Outcome:
    name: str
    makespan: float
    ideal: float
    polls: list[int]
    responses_429: int
    peak_active: int
    completed: int
    detail: dict[str, Any]

    @property
    def over(self) -> float:
        return self.makespan / self.ideal - 1


def from_truth(name: str, truth: Truth, seen: dict[str, float], detail: dict[str, Any]) -> Outcome:
    """Makespan (first submission -> last completion seen), ideal, polls, 429s."""
    subs = sorted(truth.submissions, key=lambda s: s.submitted_at)
    first = subs[0].submitted_at
    return Outcome(
        name=name,
        makespan=max(seen.values()) - first,
        ideal=ideal_makespan([s.ends_at - s.submitted_at for s in subs]),
        polls=[truth.polls.get(s.task_id, 0) for s in subs],
        responses_429=sum(c.get("429", 0) for r, c in truth.responses.items() if "POST" in r),
        peak_active=max(truth.peak_active.values(), default=0),
        completed=sum(1 for s in subs if s.status == "completed"),
        detail=detail,
    )


# ---------------------------------------------------------------------------- batchgen


def run_batchgen(jobs: list[Job], seed: int, workdir: Path) -> Outcome:
    ledger_path = workdir / f"schedule-{seed}.db"
    ledger = Ledger(ledger_path)
    ledger.ingest(Campaign("bench", "bench/schedule.py", "-", None), jobs)
    ledger.close()
    sandbox = make_sandbox(seed)
    with serve(sandbox) as served:
        result, wall = common.batchgen(
            "resume",
            "--poll-interval",
            str(POLL_INTERVAL),
            ledger=ledger_path,
            base_url=served.base_url,
            key=common.SANDBOX_KEY,
        )
        common.check(result)
        truth = sandbox.truth()
    db = sqlite3.connect(ledger_path)
    attempts = db.execute(
        "SELECT task_id, started_at, answered_at, finished_at FROM attempts"
        " WHERE state = 'completed'"
    ).fetchall()
    db.close()
    seen = {t: common.iso_seconds(f) for t, _, _, f in attempts}
    ends = {s.task_id: s.ends_at for s in truth.submissions}
    submitted = {s.task_id: s.submitted_at for s in truth.submissions}
    late = [seen[t] - ends[t] for t in seen]
    starts = sorted(submitted.values())
    seen_sorted = sorted(seen.values())
    refill = [starts[k] - seen_sorted[k - CONCURRENCY] for k in range(CONCURRENCY, len(starts))]
    round_trip = [common.iso_seconds(a) - common.iso_seconds(s) for _, s, a, _ in attempts]
    to_service = [submitted[t] - common.iso_seconds(s) for t, s, _, _ in attempts]
    detail = {
        "2nd and 3rd submissions after the 1st": [s - starts[0] for s in starts[1:CONCURRENCY]],
        "completion noticed late by (seen - ends_at)": late,
        "slot refilled after (next submit - seen)": refill,
        "intent stamp -> service has the task": to_service,
        "intent stamp -> answer stamp (commit + POST)": round_trip,
        "process wall time": [wall],
    }
    return from_truth("batchgen", truth, seen, detail)


# ---------------------------------------------------------------------------- the script


def run_script(jobs: list[Job], seed: int) -> Outcome:
    """What a user would write by hand: 3 threads, submit, poll every 0.1 s, repeat."""
    sandbox = make_sandbox(seed)
    model_of = catalog.load()
    todo: queue.Queue[Job] = queue.Queue()
    for job in jobs:
        todo.put(job)
    seen: dict[str, float] = {}
    lock = threading.Lock()

    def worker(base_url: str) -> None:
        headers = {"Authorization": f"Bearer {common.SANDBOX_KEY}"}
        with httpx.Client(base_url=base_url, headers=headers, timeout=30) as http:
            while True:
                try:
                    job = todo.get_nowait()
                except queue.Empty:
                    return
                model = model_of.model(job.model)
                assert model is not None
                while True:
                    r = http.post(model.submit_path, json=job.request())
                    if r.status_code == 200:
                        break
                    time.sleep(POLL_INTERVAL)  # 429: try again shortly
                task_id = r.json()["taskId"]
                while True:
                    time.sleep(POLL_INTERVAL)
                    state = http.get(model.poll_path(task_id)).json().get("status")
                    if state in ("completed", "failed"):
                        with lock:
                            seen[task_id] = time.time()
                        break

    with serve(sandbox) as served:
        threads = [
            threading.Thread(target=worker, args=(served.base_url,)) for _ in range(CONCURRENCY)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        truth = sandbox.truth()
    return from_truth("script", truth, seen, {})


# ---------------------------------------------------------------------------- fsync


def commit_seconds(workdir: Path, n: int = 200) -> list[float]:
    """One small write transaction on a ledger as batchgen opens it (WAL, synchronous=FULL)."""
    ledger = Ledger(workdir / "fsync.db")
    ledger.ingest(Campaign("fsync", "-", "-", None), make_jobs(1))
    samples = []
    for i in range(n):
        started = time.perf_counter()
        with ledger.transaction() as db:
            db.execute("UPDATE jobs SET progress = ? WHERE campaign = 'fsync'", (i % 100,))
        samples.append(time.perf_counter() - started)
    ledger.close()
    return samples


# ---------------------------------------------------------------------------- report


def ms(values: list[float]) -> str:
    if not values:
        return "-"
    return (
        f"mean {1000 * statistics.fmean(values):6.1f} ms, median "
        f"{1000 * statistics.median(values):6.1f} ms, max {1000 * max(values):6.1f} ms"
    )


def show(o: Outcome) -> None:
    print(
        f"{o.name:9s} makespan {o.makespan:7.3f} s   ideal {o.ideal:7.3f} s   "
        f"over ideal {100 * o.over:+6.2f} %   polls/task mean {statistics.fmean(o.polls):5.2f} "
        f"max {max(o.polls):3d} (total {sum(o.polls)})   429s {o.responses_429}   "
        f"peak active {o.peak_active}   completed {o.completed}"
    )
    for label, values in o.detail.items():
        print(f"          {label:46s} {ms(values)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=45)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--runs", type=int, default=1, help="repeat with seeds seed..seed+runs-1")
    parser.add_argument("--no-script", action="store_true", help="skip the baseline script")
    args = parser.parse_args()
    common.header("schedule: batchgen vs ideal vs a 3-thread polling script")
    jobs = make_jobs(args.jobs)
    print(
        f"{len(jobs)} jobs: {', '.join(f'{m} {d}s' for m, d in SHAPES)} (cycled); "
        f"time_scale {TIME_SCALE}, jitter +-10 %, --poll-interval {POLL_INTERVAL}, "
        f"{CONCURRENCY} slots\n"
    )
    ours: list[Outcome] = []
    theirs: list[Outcome] = []
    with tempfile.TemporaryDirectory(prefix="bench-schedule-") as tmp:
        work = Path(tmp)
        fsync = commit_seconds(work)
        print(f"one ledger write transaction (WAL, synchronous=FULL): {ms(fsync)}\n")
        for seed in range(args.seed, args.seed + args.runs):
            print(f"-- seed {seed}")
            ours.append(run_batchgen(jobs, seed, work))
            show(ours[-1])
            if not args.no_script:
                theirs.append(run_script(jobs, seed))
                show(theirs[-1])
            print()

    over = max(o.over for o in ours)
    polls = statistics.fmean(p for o in ours for p in o.polls)
    print("targets (PRODUCT.md §11)")
    print(
        f"  makespan within 3 % of ideal (worst run {100 * over:+.2f} %): "
        f"{common.verdict(over <= TARGET)}; stretch 1 %: {common.verdict(over <= STRETCH)}"
    )
    print(
        f"  zero 429s provoked ({sum(o.responses_429 for o in ours)}): "
        f"{common.verdict(all(o.responses_429 == 0 for o in ours))}"
    )
    if theirs:
        script_polls = statistics.fmean(p for o in theirs for p in o.polls)
        pairs = list(zip(ours, theirs, strict=True))
        beats = all(a.makespan < b.makespan for a, b in pairs)
        versus = ", ".join(f"{a.makespan:.2f} vs {b.makespan:.2f} s" for a, b in pairs)
        print(
            f"  fewer polls than the script ({polls:.2f} vs {script_polls:.2f} per task): "
            f"{common.verdict(polls < script_polls)}"
        )
        print(
            f"  shorter makespan than the script in every run ({versus}): {common.verdict(beats)}"
        )


if __name__ == "__main__":
    main()
