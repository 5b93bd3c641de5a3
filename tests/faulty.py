"""A test-only entry point: the real `batchgen` command, with a deadline shortened or the
ledger's "disk" filled at a named scheduler checkpoint.

    python -m tests.faulty [--set MODULE:NAME=SECONDS]... [--fill-ledger POINT N]
                           [--fill-disk POINT N] [--free-after SECONDS]
                           -- [batchgen arguments...]

- `--set batchgen.client:REQUEST_DEADLINE=1` sets a module's number before the command
  runs (a deadline a test cannot wait out at its real value);
- `--fill-ledger POINT N`: the N-th time the scheduler reaches POINT (see
  tests/crashing.CHECKPOINTS), the ledger is filled to its page limit on the runner's own
  connection (`PRAGMA max_page_count` at its current size, then filler events until
  SQLite says "database or disk is full"), so every later write that needs a page fails
  exactly as on a full disk; with `--free-after S` the limit is lifted S seconds later
  ("the disk was freed");
- `--fill-disk POINT N`: the same, and no file of the process can grow any more either
  (`RLIMIT_FSIZE` 0, SIGXFSZ ignored: a write fails with EFBIG, as a full disk's with
  ENOSPC), so the recovery file cannot be written; `--free-after` lifts both.

Like tests/crashing.py, the arming lives here, never in batchgen's own code paths.
"""

from __future__ import annotations

import asyncio
import importlib
import resource
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

from batchgen import cli
from batchgen.ledger import Ledger
from batchgen.scheduler import Scheduler

FILLER_KIND = "test_disk_filler"
_schedulers: list[Scheduler] = []


def remember_schedulers() -> None:
    original = Scheduler.__init__

    def init(self: Scheduler, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        _schedulers.append(self)

    Scheduler.__init__ = init  # type: ignore[method-assign]


def fill(ledger: Ledger) -> int:
    """Fill the ledger file to its limit; the number of filler rows it took."""
    db = ledger.conn
    pages = db.execute("PRAGMA page_count").fetchone()[0]
    db.execute(f"PRAGMA max_page_count = {pages}")
    db.execute("PRAGMA synchronous = OFF")  # filling is not what is tested: fast
    rows = 0
    try:
        while True:
            db.execute("INSERT INTO events (at, kind) VALUES ('', ?)", (FILLER_KIND,))
            rows += 1
    except sqlite3.OperationalError as e:
        assert "full" in str(e), e
    finally:
        db.execute("PRAGMA synchronous = FULL")
    print(f"tests.faulty: ledger filled ({rows} filler rows)", file=sys.stderr, flush=True)
    return rows


def fill_files() -> None:
    """No file of this process can grow from now on (see the module's docstring)."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
    print("tests.faulty: files cannot grow", file=sys.stderr, flush=True)


def free(ledger: Ledger) -> None:
    hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]
    resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))
    ledger.conn.execute("PRAGMA max_page_count = 1073741823")
    print("tests.faulty: ledger space freed", file=sys.stderr, flush=True)


def arm_fill(point: str, nth: int, free_after: float | None, files: bool = False) -> None:
    seen = 0

    def checkpoint(name: str) -> None:
        nonlocal seen
        if name != point:
            return
        seen += 1
        if seen != nth:
            return
        ledger = _schedulers[-1].ledger
        fill(ledger)
        if files:
            fill_files()
        if free_after is not None:
            asyncio.get_running_loop().call_later(free_after, free, ledger)

    Scheduler.checkpoint = staticmethod(checkpoint)  # type: ignore[method-assign]


def set_number(assignment: str) -> None:
    target, _, value = assignment.partition("=")
    module_name, _, name = target.partition(":")
    module = importlib.import_module(module_name)
    if not hasattr(module, name):
        raise SystemExit(f"{module_name} has no {name}")
    setattr(module, name, float(value))


def main(argv: list[str]) -> None:
    if "--" not in argv:
        raise SystemExit(
            f"usage: python -m tests.faulty [options] -- [batchgen args...]\n{__doc__}"
        )
    split = argv.index("--")
    options, args = argv[:split], argv[split + 1 :]
    remember_schedulers()
    fill_at: tuple[str, int] | None = None
    files = False
    free_after: float | None = None
    i = 0
    while i < len(options):
        if options[i] == "--set":
            set_number(options[i + 1])
            i += 2
        elif options[i] in ("--fill-ledger", "--fill-disk"):
            fill_at = (options[i + 1], int(options[i + 2]))
            files = options[i] == "--fill-disk"
            i += 3
        elif options[i] == "--free-after":
            free_after = float(options[i + 1])
            i += 2
        else:
            raise SystemExit(f"unknown option {options[i]!r}")
    if fill_at is not None:
        arm_fill(*fill_at, free_after, files)
    sys.argv = ["batchgen", *args]
    cli.main()


# ---------------------------------------------------------------------- for the tests

ROOT = Path(__file__).resolve().parent.parent


def faulty_command(faults: list[str], *args: str) -> list[str]:
    return [sys.executable, "-m", "tests.faulty", *faults, "--", *args]


def run_faulty(
    faults: list[str], *args: str, env: dict[str, str], timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run `batchgen ARGS` with `faults` (see the module's options) to its end."""
    return subprocess.run(
        faulty_command(faults, *args),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        stdin=subprocess.DEVNULL,
    )


def spawn_faulty(faults: list[str], *args: str, env: dict[str, str]) -> subprocess.Popen[str]:
    """Start `batchgen ARGS` with `faults`, for tests that signal it or read it as it runs."""
    return subprocess.Popen(
        faulty_command(faults, *args),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        stdin=subprocess.DEVNULL,
        env=env,
    )


if __name__ == "__main__":
    main(sys.argv[1:])
