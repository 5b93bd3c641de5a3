"""Scheduling benchmark: batchgen's makespan and polls against the sandbox over real HTTP,
next to the ideal and next to a plain 3-thread polling script, in every progress
behaviour of the sandbox (PRODUCT.md §8, §11).

How it measures:
- The sandbox runs in this process, served on 127.0.0.1, with its own jitter (±10 %),
  `time_scale` 0.03 (the 45 grok-video-3 / Seedance jobs generate in 1.1-2.6 s each) and
  `--progress MODE`. Its clock is time.time (the ledger's wall clock), so the sandbox's
  truth and the processes' timestamps are on one clock.
- batchgen: a ledger is built with `Ledger.ingest`, then the real `batchgen resume
  --poll-interval 0.1` runs in a subprocess against the sandbox.
  makespan = first submission (sandbox truth) -> last completion seen by batchgen
  (attempts.finished_at in the ledger).
- script: the same jobs against a fresh sandbox with the same seed and mode, by a
  separate process (this file with --script) running 3 threads that each submit a job and
  poll it every 0.1 s (httpx, sync, no adaptivity), then take the next; makespan = first
  submission -> last completion the script saw.
- ideal: the same tasks' generation times (ends_at - submitted_at in the truth), in the
  same order, list-scheduled on 3 slots that are never idle: zero overhead.
- polls per task and 429s come from the sandbox's truth; lag = completion seen - ends_at.
- batchgen and the script are compared by span over their own ideal: the script's threads
  submit in a racy order, so its tasks draw other generation times from the same seeded
  sandbox, and its ideal differs by up to 1 %.
- The machine's load (`/proc/loadavg`, 1 minute) is recorded before each measurement:
  the benchmark runs 3 processes' worth of work and is sensitive to other load.

Run: python bench/schedule.py [--progress MODE ...] [--runs 3] [--jobs 45] [--seed 1]
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import json
import os
import queue
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import common  # noqa: I001  (puts the repository on sys.path first)
import httpx

from batchgen import catalog
from batchgen.job import Campaign, Job
from batchgen.ledger import Ledger
from batchgen.progress_curves import PROGRESS_MODES
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
TARGET = 0.03


def make_jobs(n: int) -> list[Job]:
    jobs = []
    for i, (model, duration) in zip(range(n), itertools.cycle(SHAPES), strict=False):
        ratio = "1:1" if model == "grok-video-3" else "16:9"
        jobs.append(
            Job("bench", f"clip-{i:03d}", model, f"benchmark clip {i}", duration, ratio=ratio)
        )
    return jobs


def make_sandbox(seed: int, progress: str) -> Sandbox:
    # time.time, not the default time.monotonic: one clock with the ledger's timestamps
    config = SandboxConfig(time_scale=TIME_SCALE, seed=seed, progress=progress)
    return Sandbox(config, clock=time.time)


def ideal_makespan(durations: list[float], slots: int = CONCURRENCY) -> float:
    """List scheduling: each task, in order, starts on the first slot free; no overhead."""
    free = [0.0] * slots
    end = 0.0
    for d in durations:
        start = heapq.heappop(free)
        heapq.heappush(free, start + d)
        end = max(end, start + d)
    return end


def load() -> float:
    """The 1-minute load average, as `uptime` shows it."""
    return float(Path("/proc/loadavg").read_text().split()[0])


@dataclass
class Outcome:
    name: str
    makespan: float
    ideal: float
    polls: list[int]
    lags: list[float]
    responses_429: int
    peak_active: int
    completed: int
    load: float
    detail: dict[str, list[float]] = field(default_factory=dict)

    @property
    def over(self) -> float:
        return self.makespan / self.ideal - 1


def from_truth(name: str, truth: Truth, seen: dict[str, float], load_before: float) -> Outcome:
    """Makespan (first submission -> last completion seen), ideal, polls, lags, 429s."""
    subs = sorted(truth.submissions, key=lambda s: s.submitted_at)
    first = subs[0].submitted_at
    return Outcome(
        name=name,
        makespan=max(seen.values()) - first,
        ideal=ideal_makespan([s.ends_at - s.submitted_at for s in subs]),
        polls=[truth.polls.get(s.task_id, 0) for s in subs],
        lags=[seen[s.task_id] - s.ends_at for s in subs if s.task_id in seen],
        responses_429=sum(c.get("429", 0) for r, c in truth.responses.items() if "POST" in r),
        peak_active=max(truth.peak_active.values(), default=0),
        completed=sum(1 for s in subs if s.status == "completed"),
        load=load_before,
    )


# ---------------------------------------------------------------------------- batchgen


def run_batchgen(jobs: list[Job], seed: int, progress: str, workdir: Path) -> Outcome:
    ledger_path = workdir / f"schedule-{progress}-{seed}.db"
    ledger = Ledger(ledger_path)
    ledger.ingest(Campaign("bench", "bench/schedule.py", "-", None), jobs)
    ledger.close()
    sandbox = make_sandbox(seed, progress)
    load_before = load()
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
    outcome = from_truth("batchgen", truth, seen, load_before)
    submitted = {s.task_id: s.submitted_at for s in truth.submissions}
    starts = sorted(submitted.values())
    seen_sorted = sorted(seen.values())
    outcome.detail = {
        "slot refilled after (next submit - seen)": [
            starts[k] - seen_sorted[k - CONCURRENCY] for k in range(CONCURRENCY, len(starts))
        ],
        "intent stamp -> answer stamp (commit + POST)": [
            common.iso_seconds(a) - common.iso_seconds(s) for _, s, a, _ in attempts
        ],
        "process wall time": [wall],
    }
    return outcome


# ---------------------------------------------------------------------------- the script


def script(base_url: str, jobs: list[dict[str, object]]) -> dict[str, float]:
    """What a user would write by hand: 3 threads, submit, poll every 0.1 s, repeat.
    Returns when each task was seen finished (time.time)."""
    model_of = catalog.load()
    todo: queue.Queue[dict[str, object]] = queue.Queue()
    for job in jobs:
        todo.put(job)
    seen: dict[str, float] = {}
    lock = threading.Lock()

    def worker() -> None:
        headers = {"Authorization": f"Bearer {common.SANDBOX_KEY}"}
        with httpx.Client(base_url=base_url, headers=headers, timeout=30) as http:
            while True:
                try:
                    body = todo.get_nowait()
                except queue.Empty:
                    return
                model = model_of.model(str(body["model"]))
                assert model is not None
                while True:
                    r = http.post(model.submit_path, json=body)
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

    threads = [threading.Thread(target=worker) for _ in range(CONCURRENCY)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return seen


def run_script(jobs: list[Job], seed: int, progress: str) -> Outcome:
    """The script in a process of its own (as a user runs it), against a fresh sandbox."""
    sandbox = make_sandbox(seed, progress)
    bodies = json.dumps([job.request() for job in jobs])
    load_before = load()
    with serve(sandbox) as served:
        child = subprocess.run(
            [sys.executable, __file__, "--script", served.base_url],
            input=bodies,
            capture_output=True,
            text=True,
            check=True,
            timeout=600,
        )
        truth = sandbox.truth()
    return from_truth("script", truth, json.loads(child.stdout), load_before)


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
        f"  {o.name:9s} makespan {o.makespan:7.3f} s   ideal {o.ideal:7.3f} s   "
        f"over ideal {100 * o.over:+6.2f} %   polls/task {statistics.fmean(o.polls):5.2f} "
        f"(max {max(o.polls):3d})   mean lag {1000 * statistics.fmean(o.lags):5.1f} ms   "
        f"429s {o.responses_429}   peak active {o.peak_active}   completed {o.completed}   "
        f"load {o.load:.2f}",
        flush=True,
    )
    for label, values in o.detail.items():
        print(f"            {label:46s} {ms(values)}")


def summary(outcomes: list[Outcome]) -> str:
    """best / median span over ideal, polls per task, mean lag, over the runs."""
    over = sorted(o.over for o in outcomes)
    polls = statistics.median(statistics.fmean(o.polls) for o in outcomes)
    lag = statistics.median(statistics.fmean(o.lags) for o in outcomes)
    return (
        f"{1 + over[0]:.4f} / {1 + statistics.median(over):.4f} | {polls:.2f} | {1000 * lag:.1f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=45)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--runs", type=int, default=1, help="repeat with seeds seed..seed+runs-1")
    parser.add_argument("--progress", nargs="+", choices=PROGRESS_MODES, default=PROGRESS_MODES)
    parser.add_argument("--no-script", action="store_true", help="skip the baseline script")
    parser.add_argument("--script", metavar="BASE_URL", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.script:  # the child process: job bodies on stdin, seen times on stdout
        print(json.dumps(script(args.script, json.loads(sys.stdin.read()))))
        return
    common.header("schedule: batchgen vs ideal vs a 3-thread polling script, per progress mode")
    jobs = make_jobs(args.jobs)
    print(
        f"{len(jobs)} jobs: {', '.join(f'{m} {d}s' for m, d in SHAPES)} (cycled); "
        f"time_scale {TIME_SCALE}, jitter +-10 %, --poll-interval {POLL_INTERVAL}, "
        f"{CONCURRENCY} slots; uptime: {os.getloadavg()}\n",
        flush=True,
    )
    ours: dict[str, list[Outcome]] = {}
    theirs: dict[str, list[Outcome]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-schedule-") as tmp:
        for seed in range(args.seed, args.seed + args.runs):
            for progress in args.progress:
                print(f"-- progress {progress}, seed {seed}")
                ours.setdefault(progress, []).append(run_batchgen(jobs, seed, progress, Path(tmp)))
                show(ours[progress][-1])
                if not args.no_script:
                    theirs.setdefault(progress, []).append(run_script(jobs, seed, progress))
                    show(theirs[progress][-1])

    print(f"\nper progress mode over {args.runs} run(s): span/ideal best / median | polls/task")
    print("(median) | mean lag (median); loads are the 1-minute load average before each run\n")
    print(
        "| progress | batchgen span/ideal | polls/task | mean lag | script span/ideal "
        "| polls/task | mean lag | 429s | loads | target |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    met_all = True
    for progress in args.progress:
        mine, script_runs = ours[progress], theirs.get(progress, [])
        worst = max(o.over for o in mine)
        met = worst <= TARGET and all(o.responses_429 == 0 for o in mine)
        if script_runs:
            met = (
                met
                and statistics.fmean(p for o in mine for p in o.polls)
                < statistics.fmean(p for o in script_runs for p in o.polls)
                # each against its own ideal: the script's threads submit in a racy order,
                # so its tasks draw other generation times from the same seeded sandbox
                and all(a.over <= b.over for a, b in zip(mine, script_runs, strict=True))
            )
        met_all = met_all and met
        loads = ", ".join(f"{o.load:.1f}" for o in mine + script_runs)
        baseline = summary(script_runs) if script_runs else "- | - | -"
        print(
            f"| {progress} | {summary(mine)} | {baseline} | "
            f"{sum(o.responses_429 for o in mine)} | {loads} | {common.verdict(met)} |"
        )
    print(
        "\ntarget (every run within 3 % of ideal, no 429, fewer polls than the script and a "
        f"span over ideal no longer than its own in every run): {common.verdict(met_all)}"
    )


if __name__ == "__main__":
    main()
