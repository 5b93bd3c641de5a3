"""What the benchmarks share: the machine they ran on, the real `batchgen` command in a
subprocess, a PostgreSQL server to put ledgers on (`--postgres`), and a few
numbers-to-text helpers.

Not a benchmark itself. Each bench/*.py script puts the repository root on `sys.path`
(batchgen need not be installed) and runs the CLI as `python -m batchgen` with the same
root on PYTHONPATH, exactly as a user's shell would run it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sqlite3
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from batchgen.keys import SANDBOX_KEY as SANDBOX_KEY  # noqa: E402  (once the path is set)
from batchgen.ledger.db import PgConnection, is_url  # noqa: E402

# A ledger as the benchmarks name it: a SQLite file's path, or a PostgreSQL URL.
Location = Path | str


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


def folder_of(ledger: Location) -> Path:
    """Where a ledger's by-products go (result files, and for a PostgreSQL ledger the
    companion files batchgen keeps in the user's state directory): beside a SQLite file;
    for a URL, a folder of the benchmarks' in the temporary directory."""
    if not is_url(ledger):
        return Path(ledger).parent
    folder = Path(tempfile.gettempdir()) / "batchgen-bench-postgres"
    folder.mkdir(exist_ok=True)
    return folder


def connect(ledger: Location) -> Any:
    """A connection for the benchmark's own reads of a ledger: sqlite3's, or the ledger's
    PostgreSQL connection, which answers as sqlite3's does (`?`, rows as tuples)."""
    if is_url(ledger):
        return PgConnection(str(ledger))
    return sqlite3.connect(ledger)


def command_env(
    ledger: Location,
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
    env["BATCHGEN_OUT"] = str(folder_of(ledger) / "out")  # run/resume save files by default
    if is_url(ledger):  # the recovery file and the like, out of the user's home
        env["XDG_STATE_HOME"] = str(folder_of(ledger) / "state")
    if base_url is not None:
        env["OKAYPIC_BASE_URL"] = base_url
    if key is not None:
        env["OKAYPIC_API_KEY"] = key
    if keys is not None:
        env["OKAYPIC_API_KEYS"] = ",".join(keys)
    return env


def batchgen(
    *args: str,
    ledger: Location,
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
    ledger: Location,
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


def measure(*args: str, ledger: Location, base_url: str | None = None) -> tuple[float, float]:
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


# ---------------------------------------------------------------------------- PostgreSQL


def add_postgres_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--postgres",
        nargs="?",
        const="",
        metavar="URL",
        help="put the ledgers on PostgreSQL: a throwaway cluster started for the run, or the "
        "server of URL (e.g. postgresql://me@host/postgres; it needs CREATEDB)",
    )


class Postgres:
    """A PostgreSQL server the benchmark makes its ledgers' databases on: a throwaway
    cluster (`url` None), or the server an existing database's URL names.

    The throwaway cluster is tests/postgres.py's, the one the tests use (importing from
    tests/ here is deliberate: one way to start a server as root, and to sweep one left
    behind), durable: its data on disk, fsync, synchronous commits and full page writes
    on, as a real server keeps them (the tests' cluster turns them off), since the SQLite
    ledger's figures are measured with synchronous=FULL.
    """

    def __init__(self, url: str | None = None):
        self.cluster: Any = None
        if url:
            self.admin_url = url
        else:
            from tests.postgres import start_cluster  # bench may use the tests' helper

            self.cluster = start_cluster(durable=True)
            self.admin_url = self.cluster.url("postgres")
        self.made: list[str] = []

    def url(self, database: str) -> str:
        return urlunsplit(urlsplit(self.admin_url)._replace(path=f"/{database}"))

    def admin(self, statement: str, *params: object) -> list[tuple[Any, ...]]:
        """A statement on the server's admin database, outside any transaction."""
        import psycopg

        with psycopg.connect(self.admin_url, autocommit=True) as connection:
            cursor = connection.execute(statement, params or None)  # type: ignore[arg-type]
            return cursor.fetchall() if cursor.description else []

    def exists(self, database: str) -> bool:
        return bool(self.admin("SELECT 1 FROM pg_database WHERE datname = %s", database))

    def create(self, database: str, template: str | None = None) -> str:
        """A new database (dropped first if it is there): its URL. From a template: a copy
        of that database's files (FILE_COPY, checkpointed and fsync'd before it returns),
        the quick way to a fresh copy of a large ledger."""
        self.drop(database)
        copy = f" TEMPLATE {template} STRATEGY FILE_COPY" if template else ""
        self.admin(f"CREATE DATABASE {database}{copy}")
        self.made.append(database)
        return self.url(database)

    def drop(self, database: str) -> None:
        self.admin(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")

    def size(self, database: str) -> str:
        return str(self.admin("SELECT pg_size_pretty(pg_database_size(%s))", database)[0][0])

    def describe(self) -> str:
        """The server's version, its durability settings, shared_buffers and where its data
        is, in one line for the benchmark's header."""
        (version,) = self.admin("SHOW server_version")[0]
        settings = ", ".join(
            f"{name} {self.admin(f'SHOW {name}')[0][0]}"
            for name in ("fsync", "synchronous_commit", "full_page_writes", "shared_buffers")
        )
        where = f"a throwaway cluster in {self.cluster.base}" if self.cluster else "given"
        return f"PostgreSQL {version} ({where}; {settings})"

    def close(self) -> None:
        """Drop the databases `create` made, or stop the throwaway cluster."""
        if self.cluster is not None:
            self.cluster.stop()
            return
        for database in self.made:
            self.drop(database)


def postgres_server(url: str | None) -> Postgres | None:
    """The server --postgres names (None: the benchmark runs on SQLite, as before)."""
    if url is None:
        return None
    server = Postgres(url or None)
    print(f"server  : {server.describe()}\n")
    return server
