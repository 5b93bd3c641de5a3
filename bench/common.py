"""What the benchmarks share: the machine they ran on, the real `batchgen` command in a
subprocess, and a few numbers-to-text helpers.

Not a benchmark itself. Each bench/*.py script puts the repository root on `sys.path`
(batchgen need not be installed) and runs the CLI as `python -m batchgen` with the same
root on PYTHONPATH, exactly as a user's shell would run it.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import sqlite3
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from batchgen.keys import SANDBOX_KEY as SANDBOX_KEY  # noqa: E402  (once the path is set)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def header(title: str) -> None:
    """Print what ran where and when, so a figure pasted elsewhere keeps its context."""
    print(f"== {title}")
    print(f"command : {shlex.join([sys.executable, *sys.argv])}")
    print(f"date    : {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}")
    system = f"{platform.system()} {platform.release()}"
    print(f"machine : {os.cpu_count()} cores ({cpu_model()}), {system}")
    print(f"python  : {platform.python_version()}, SQLite {sqlite3.sqlite_version}")
    print()


def load() -> str:
    """The machine's load, as `uptime` says it (other work may share the machine)."""
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def command_env(
    ledger: Path,
    base_url: str | None = None,
    key: str | None = None,
    keys: list[str] | None = None,
) -> dict[str, str]:
    """The environment of a user's shell pointed at this ledger (and service, with a key
    in OKAYPIC_API_KEY or several in OKAYPIC_API_KEYS); none of the caller's own keys."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("OKAYPIC_API_KEY", "OKAYPIC_API_KEYS", "OKAYPIC_BASE_URL", "BATCHGEN_LEDGER")
    }
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["BATCHGEN_LEDGER"] = str(ledger)
    env["BATCHGEN_OUT"] = str(ledger.parent / "out")  # run/resume save files by default
    if base_url is not None:
        env["OKAYPIC_BASE_URL"] = base_url
    if key is not None:
        env["OKAYPIC_API_KEY"] = key
    if keys is not None:
        env["OKAYPIC_API_KEYS"] = ",".join(keys)
    return env


def batchgen(
    *args: str,
    ledger: Path,
    base_url: str | None = None,
    key: str | None = None,
    keys: list[str] | None = None,
    stdout: int | None = subprocess.PIPE,
    timeout: float = 600,
) -> tuple[subprocess.CompletedProcess[str], float]:
    """Run the real command to its end: (the finished process, its wall time in seconds)."""
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "batchgen", *args],
        stdout=stdout,
        stderr=subprocess.PIPE,
        text=True,
        timeout=timeout,
        env=command_env(ledger, base_url, key, keys),
        stdin=subprocess.DEVNULL,
        cwd=ROOT,
    )
    return result, time.perf_counter() - started


def batchgens(
    count: int,
    *args: str,
    ledger: Path,
    base_url: str | None = None,
    key: str | None = None,
    keys: list[str] | None = None,
    timeout: float = 600,
) -> tuple[list[subprocess.CompletedProcess[str]], float]:
    """Run `count` copies of the real command at once on one ledger (several runners),
    each to its end: (the finished processes, the wall time until the last ended)."""
    started = time.perf_counter()
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "batchgen", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=command_env(ledger, base_url, key, keys),
            stdin=subprocess.DEVNULL,
            cwd=ROOT,
        )
        for _ in range(count)
    ]
    done = []
    for process in processes:
        out, err = process.communicate(timeout=timeout)
        done.append(subprocess.CompletedProcess(process.args, process.returncode, out, err))
    return done, time.perf_counter() - started


# Runs argv[1:] and prints its wall time and peak RSS. A separate, small process starts
# the command: Linux carries the high-water RSS of the process that exec()s into the new
# program, so a command started straight from a benchmark holding 100,000 rows would
# inherit the benchmark's peak, not show its own.
_MEASURE = """
import json, os, subprocess, sys, tempfile, time
with tempfile.TemporaryFile() as err:
    started = time.perf_counter()
    process = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=err)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    err.seek(0)
    print(json.dumps({"wall": wall, "code": os.waitstatus_to_exitcode(status),
                      "maxrss_kb": usage.ru_maxrss, "stderr": err.read().decode()[-3000:]}))
"""


def measure(*args: str, ledger: Path, base_url: str | None = None) -> tuple[float, float]:
    """Run `batchgen ARGS` to its end: (wall seconds, peak RSS in MB of that process)."""
    command = [sys.executable, "-c", _MEASURE, sys.executable, "-m", "batchgen", *args]
    env = command_env(ledger, base_url, SANDBOX_KEY if base_url else None)
    out = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, check=True)
    result = json.loads(out.stdout)
    if result["code"] != 0:
        sys.exit(f"`batchgen {shlex.join(args)}` exited {result['code']}:\n{result['stderr']}")
    return result["wall"], result["maxrss_kb"] / 1024  # Linux reports kilobytes


def check(result: subprocess.CompletedProcess[str], expected: tuple[int, ...] = (0,)) -> None:
    if result.returncode not in expected:
        sys.exit(
            f"`{shlex.join(map(str, result.args))}` exited {result.returncode}:\n"
            f"{(result.stderr or '')[-3000:]}"
        )


def iso_seconds(stamp: str) -> float:
    """A ledger timestamp (ISO UTC) as epoch seconds: the clock of time.time()."""
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def best(samples: list[float]) -> str:
    """`min (median of n)` in seconds: the minimum is the figure, the median its noise."""
    ordered = sorted(samples)
    median = ordered[len(ordered) // 2]
    return f"{ordered[0]:.3f} s (median {median:.3f} s of {len(ordered)})"


def verdict(met: bool) -> str:
    return "MET" if met else "MISSED"
