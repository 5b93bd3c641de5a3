"""Scale benchmark: a year of campaigns in one ledger (1,000,000 jobs, bench/year_ledger.py)
and the commands a team runs on it every day (PRODUCT.md §11: `status` and `resume` under
1 s, `status --json` streaming under 100 MB).

What it measures, each the real `batchgen` command in a subprocess (bench/common.py):
- `status`, `status --json > /dev/null`: wall time and peak RSS of the process;
- `report` by campaign, model and status, and `report --jobs --format csv > /dev/null`;
- `resume` start-up: from launching the process to its first decision reaching the
  service, i.e. the first HTTP request the sandbox receives (a poll of a task in flight, or
  a submission), on a copy of the ledger; then it is interrupted (SIGINT) and the time to
  its exit is shown too (PRODUCT.md §6: within 2 s). The sandbox has an empty balance, so a
  submission is answered 402 and submits nothing. Two selections: every campaign (tasks in
  flight, lost tasks, an interrupted submission, 32,000 queued jobs), and
  `--campaign y2026-w49` (20,000 jobs just ingested: its first request is a submission);
- the review page's first page: `batchgen review` started on the ledger, then the page's
  first request (`GET /api/results?limit=...`) timed from sending to the last byte, and the
  next poll (`?since=VERSION`, nothing changed).
Each figure is the best of --repeat runs, with the median beside it; the machine's load
(`uptime`) is printed before and after, since the machine may be shared.

With --postgres the ledger is a PostgreSQL database (bench/common.py: a throwaway cluster,
or the server of --postgres URL): the same year ledger, built on SQLite and copied there
(year_ledger.postgres_ledger); each `resume` runs on a database made from it as a
template.

Run: python bench/scale.py [--repeat 3] [--jobs 1000000] [--only status,resume,...]
     [--postgres [URL]]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

import common  # noqa: I001  (puts the repository on sys.path first)
import httpx
import year_ledger

from batchgen.sandbox import Response, Sandbox, SandboxConfig, serve

TARGET_S = 1.0
JSON_TARGET_MB = 100
PARTS = ("status", "report", "resume", "review")


class FirstRequest(Sandbox):
    """The sandbox, noting when (time.time) its first API request arrived, and what it was."""

    first: float | None = None
    what: str = ""

    def handle(
        self, method: str, target: str, headers: Mapping[str, str], body: bytes = b""
    ) -> Response:
        if self.first is None and target.startswith("/api/"):
            self.first = time.time()
            self.what = f"{method} {target.split('?')[0]}"
        return super().handle(method, target, headers, body)


def peak_rss_mb(pid: int) -> float:
    """The high-water RSS of a running process (VmHWM), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def resume_startup(ledger: common.Location, *options: str) -> dict[str, object]:
    """`batchgen resume OPTIONS` on `ledger` against an empty-balance sandbox: seconds from
    launch to the first request, what it was, peak RSS then, and seconds from SIGINT to
    the process's exit (with its exit code)."""
    sandbox = FirstRequest(SandboxConfig(keys={common.SANDBOX_KEY: 0}), clock=time.time)
    with serve(sandbox) as served:
        env = common.command_env(ledger, served.base_url, common.SANDBOX_KEY)
        started = time.time()
        process = subprocess.Popen(
            [sys.executable, "-m", "batchgen", "resume", "--no-download", *options],
            env=env,
            cwd=common.ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        while sandbox.first is None and process.poll() is None and time.time() - started < 120:
            time.sleep(0.002)
        first = sandbox.first
        rss = peak_rss_mb(process.pid) if process.poll() is None else float("nan")
        interrupted = time.time()
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=120)
        ended = time.time()
    if first is None:
        sys.exit(f"resume made no request (exit {process.returncode}):\n{err[-3000:]}")
    return {
        "startup": first - started,
        "first": sandbox.what,
        "rss": rss,
        "exit_after_sigint": ended - interrupted,
        "code": process.returncode,
    }


def review_first_page(ledger: common.Location, limit: int = 200) -> dict[str, float]:
    """`batchgen review --port 0` on `ledger`: seconds from launch to its address printed,
    the page's first request for results, and its next poll with nothing changed."""
    env = common.command_env(ledger)
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "batchgen", "review", "--port", "0"],
        env=env,
        cwd=common.ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        ready = time.perf_counter() - started
        match = re.fullmatch(r"review page: (http://127\.0\.0\.1:\d+/)\n", line)
        assert match, line
        url = match[1] + "api/results"
        with httpx.Client(timeout=120) as client:
            t0 = time.perf_counter()
            answer = client.get(url, params={"limit": limit})
            first = time.perf_counter() - t0
            answer.raise_for_status()
            data = answer.json()
            shown = sum(len(g["results"]) for g in data["groups"])
            t0 = time.perf_counter()
            again = client.get(url, params={"limit": limit, "since": data["version"]})
            second = time.perf_counter() - t0
            assert again.json().get("unchanged"), again.text[:200]
        rss = peak_rss_mb(process.pid)
    finally:
        process.terminate()
        process.wait(timeout=60)
    return {
        "ready": ready,
        "first": first,
        "since": second,
        "shown": shown,
        "bytes": len(answer.content),
        "rss": rss,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=year_ledger.JOBS)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--only", default=",".join(PARTS), help="comma-separated: " + ", ".join(PARTS)
    )
    parser.add_argument("--cache", type=Path, default=None, help="where the ledger is kept")
    common.add_postgres_option(parser)
    args = parser.parse_args()
    parts = set(args.only.split(","))
    common.header(f"scale: a year of campaigns, {args.jobs:,} jobs in one ledger")
    server = common.postgres_server(args.postgres)
    try:
        run(args, parts, server)
    finally:
        if server is not None:
            server.close()


def run(args: argparse.Namespace, parts: set[str], server: common.Postgres | None) -> None:
    print(f"load before: {common.load()}")
    path, built = year_ledger.cached_ledger(args.cache, args.jobs)
    how = f"built in {built:.1f} s" if built is not None else "reused from an earlier run"
    print(f"ledger: {path} ({path.stat().st_size / 2**20:,.0f} MB), {how}")
    ledger: common.Location = path
    year = year_ledger.database_name(path)
    if server is not None:
        ledger, copied = year_ledger.postgres_ledger(server, path)
        how = f"copied in {copied:.1f} s" if copied is not None else "there from an earlier run"
        print(f"on PostgreSQL: database {year} ({server.size(year)}), {how}")

    db = common.connect(ledger)
    rows = {t: db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
            for t in ("jobs", "attempts", "files", "verdicts", "events")}  # fmt: skip
    statuses = dict(db.execute("SELECT status, COUNT(*) FROM jobs GROUP BY status").fetchall())
    db.close()
    print("rows: " + ", ".join(f"{n:,} {t}" for t, n in rows.items()))
    print("jobs: " + ", ".join(f"{n:,} {s}" for s, n in sorted(statuses.items())) + "\n")

    figures: dict[str, list[float]] = {}
    memory: dict[str, float] = {}
    notes: dict[str, str] = {}

    def sample(name: str, seconds: float, rss: float | None = None) -> None:
        figures.setdefault(name, []).append(seconds)
        if rss is not None and rss == rss:
            memory[name] = max(memory.get(name, 0.0), rss)

    commands: list[tuple[str, list[str]]] = []
    if "status" in parts:
        commands += [("status", ["status"]), ("status --json > /dev/null", ["status", "--json"])]
    if "report" in parts:
        commands += [
            ("report (by campaign)", ["report"]),
            ("report --by model", ["report", "--by", "model"]),
            ("report --by status", ["report", "--by", "status"]),
            ("report --jobs --format csv > /dev/null", ["report", "--jobs", "--format", "csv"]),
        ]
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        work = Path(tmp)
        for _ in range(args.repeat):
            for name, command in commands:
                wall, rss = common.measure(*command, ledger=ledger)
                sample(name, wall, rss)
            if "resume" in parts:
                for name, options in (
                    ("resume, every campaign", []),
                    ("resume --campaign y2026-w49 (all queued)", ["--campaign", "y2026-w49"]),
                ):
                    copy = fresh_copy(ledger, work, server, year)
                    got = resume_startup(copy, *options)
                    sample(f"{name}: start-up to first request", got["startup"], got["rss"])  # type: ignore[arg-type]
                    sample(f"{name}: SIGINT to exit", got["exit_after_sigint"])  # type: ignore[arg-type]
                    notes[f"{name}: start-up to first request"] = f"first: {got['first']}"
                    if server is not None:
                        server.drop(RESUME_DATABASE)
                    for leftover in work.glob("resume.db*"):
                        leftover.unlink()
            if "review" in parts:
                got = review_first_page(ledger)
                sample("review: launch to address printed", got["ready"])
                sample("review: first page GET /api/results?limit=200", got["first"], got["rss"])
                sample("review: next poll, unchanged (?since=)", got["since"])
                notes["review: first page GET /api/results?limit=200"] = (
                    f"{got['shown']:.0f} results, {got['bytes'] / 1024:.0f} KB"
                )
    for name, samples in figures.items():
        rss = f", peak RSS {memory[name]:.0f} MB" if name in memory else ""
        note = f"  ({notes[name]})" if name in notes else ""
        print(f"  {name:58s} {common.best(samples)}{rss}{note}")
    print()
    for name, limit in (
        ("status", TARGET_S),
        ("resume, every campaign: start-up to first request", TARGET_S),
        ("resume --campaign y2026-w49 (all queued): start-up to first request", TARGET_S),
    ):
        if name in figures:
            best = min(figures[name])
            print(f"  {name} < {limit:.0f} s: {best:.3f} s {common.verdict(best < limit)}")
    if "status --json > /dev/null" in memory:
        mb = memory["status --json > /dev/null"]
        print(f"  status --json < {JSON_TARGET_MB} MB: {mb:.0f} MB "
              f"{common.verdict(mb < JSON_TARGET_MB)}")  # fmt: skip
    print(f"\nload after: {common.load()}")
    print(json.dumps({k: sorted(v) for k, v in figures.items()}), file=sys.stderr)
    os.environ.pop("BATCHGEN_LEDGER", None)


RESUME_DATABASE = "bench_resume"


def fresh_copy(
    ledger: common.Location, work: Path, server: common.Postgres | None, year: str
) -> common.Location:
    """A copy of the year ledger for one `resume`, on disk before the run (its first
    commit must not pay for the copy): a file copied and fsync'd, or a database made
    from the year's as its template (CREATE DATABASE ... TEMPLATE: the files copied,
    checkpointed)."""
    if server is not None:
        return server.create(RESUME_DATABASE, template=year)
    copy = work / "resume.db"
    shutil.copy(ledger, copy)
    with open(copy, "rb+") as f:
        os.fsync(f.fileno())
    return copy


if __name__ == "__main__":
    main()
