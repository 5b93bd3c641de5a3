"""A throwaway PostgreSQL cluster for the tests: `initdb` in a temporary directory (in memory
when /dev/shm has room), a server on a free port of 127.0.0.1 with trust authentication
(no password), and a fresh database per test (`new_database`). tests/conftest.py starts
one cluster per pytest(-xdist) worker.

PostgreSQL refuses to run as root, and CI runs as root: then the cluster's directory
belongs to the `postgres` system user (which Debian's postgresql package creates) and
initdb and pg_ctl run as that user (`runuser`, util-linux, on every Debian).

No server is left behind: `stop()` at the end of the session and at exit, and a cluster
whose test process was killed (kill -9, no atexit) is stopped by the next `start_cluster()`
on the machine, which finds it by its owner's pid.

Measured on the 2-core development machine (PostgreSQL 15, fsync off, in /dev/shm):
`start_cluster()` (initdb and start) 0.51 s; `new_database()` 10-11 ms (its CREATE
DATABASE ... TEMPLATE template0 STRATEGY FILE_COPY 7-8 ms, PostgreSQL 15's default WAL_LOG
12-19 ms; the connection 3 ms); `drop_database()` 6 ms; `stop()` 0.16 s.
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import LiteralString

import psycopg
import pytest
from psycopg import sql

from batchgen.processes import pid_running

USER = "batchgen"  # the cluster's superuser, the name in every URL
SYSTEM_USER = "postgres"  # who runs the server when the tests run as root
PREFIX = "batchgen-pg-"  # the clusters' directories, in one of PLACES
# A memory file system when it has room, else the temporary directory: creating a database
# takes 7-8 ms in /dev/shm, 60-130 ms on the disk of the machine measured (shared, busy).
PLACES = (Path("/dev/shm"), Path(tempfile.gettempdir()))
ROOM_NEEDED = 2 * 1024**3  # bytes free in /dev/shm to use it
OWNER_FILE = "owner.pid"  # the pid of the process that started the cluster
INSTALL_HINT = "apt-get install postgresql"
START_TRIES = 3  # a free port may be taken by another process before the server binds it

_counter = itertools.count(1)


class PostgresUnavailable(Exception):
    """No PostgreSQL server binaries on this machine (or no user to run them as)."""


def server_bindir() -> Path | None:
    """Where initdb and pg_ctl are: `pg_config --bindir` (its libpq-dev copy may name a
    directory without the server), else Debian's highest /usr/lib/postgresql/N/bin,
    else the PATH; None when none has them."""
    candidates = []
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        bindir = subprocess.run(
            ["pg_config", "--bindir"], capture_output=True, text=True, check=True
        ).stdout.strip()
        candidates.append(Path(bindir))
    versions = glob.glob("/usr/lib/postgresql/*/bin")
    candidates += [Path(p) for p in sorted(versions, key=_major_version, reverse=True)]
    on_path = shutil.which("pg_ctl")
    if on_path:
        candidates.append(Path(on_path).resolve().parent)
    for bindir in candidates:
        if (bindir / "pg_ctl").is_file() and (bindir / "initdb").is_file():
            return bindir
    return None


def _major_version(bindir: str) -> int:
    version = Path(bindir).parent.name  # /usr/lib/postgresql/15/bin
    return int(version) if version.isdigit() else -1


@dataclass
class Cluster:
    """A running server: its directory (data/, server.log, the socket), its port."""

    base: Path
    port: int
    bindir: Path
    run_as: list[str]  # the prefix that runs a command as the server's user

    @property
    def data(self) -> Path:
        return self.base / "data"

    def url(self, database: str) -> str:
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{database}"

    def pg_ctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return _run(
            self.run_as, self.bindir, self.base, "pg_ctl", "-D", str(self.data), *args, check=check
        )

    def stop(self) -> None:
        """Stop the server at once (nothing in it is kept) and remove its directory;
        again, or on a cluster already gone, does nothing."""
        if self.base.exists():
            _stop(self.run_as, self.bindir, self.base)


def start_cluster(durable: bool = False) -> Cluster:
    """initdb a new cluster in a temporary directory and start its server on a free port
    (another port if one is taken meanwhile); stopped at exit at the latest. The tests'
    cluster skips durability (in memory when it can, no fsync); `durable`: on the disk of
    the temporary directory with PostgreSQL's own settings (fsync, synchronous commits,
    full page writes), as a real server keeps its data (for the benchmarks)."""
    bindir = server_bindir()
    if bindir is None:
        raise PostgresUnavailable(f"no PostgreSQL server binaries (pg_ctl): {INSTALL_HINT}")
    run_as = _run_as()
    stop_abandoned_clusters(run_as, bindir)
    place = PLACES[1] if durable else _place()
    base = Path(tempfile.mkdtemp(prefix=PREFIX, dir=place))
    (base / OWNER_FILE).write_text(str(os.getpid()), encoding="utf-8")
    if run_as:
        system_user = pwd.getpwnam(SYSTEM_USER)
        os.chown(base, system_user.pw_uid, system_user.pw_gid)
    cluster = Cluster(base, 0, bindir, run_as)
    atexit.register(cluster.stop)
    try:
        initdb = ["-D", str(cluster.data), "--auth=trust", "-U", USER, "-E", "UTF8"]
        _run(run_as, bindir, base, "initdb", *initdb, "--locale=C", "--no-instructions")
        log = base / "server.log"
        for _ in range(START_TRIES):
            cluster.port = _free_port()
            options = (
                f"-k {base} -p {cluster.port} -c listen_addresses=127.0.0.1 -c max_connections=200"
            )
            if not durable:
                options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
            started = cluster.pg_ctl("-w", "-l", str(log), "-o", options, "start", check=False)
            if started.returncode == 0:
                return cluster
        raise RuntimeError(
            f"PostgreSQL did not start in {base}: {started.stderr.strip()}\n"
            + log.read_text(encoding="utf-8", errors="replace")[-2000:]
        )
    except BaseException:
        cluster.stop()
        raise


def cluster_for_tests() -> Cluster:
    """start_cluster(); without PostgreSQL, the test is skipped saying how to install it,
    or fails under CI (the CI variable set): CI never skips PostgreSQL silently."""
    try:
        return start_cluster()
    except PostgresUnavailable as missing:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the PostgreSQL tests, but {missing}", pytrace=False)
        pytest.skip(str(missing))


def new_database(cluster: Cluster, copy_of: str | None = None) -> str:
    """A new, empty database on the cluster (a name of its own); its URL. `copy_of`: a
    copy of that database (its URL; nothing may be connected to it) instead, far quicker
    than making the same ledger again (migrating a ledger takes 0.3-0.5 s)."""
    name = f"test_{os.getpid()}_{next(_counter)}"
    template = "template0" if copy_of is None else copy_of.rsplit("/", 1)[1]
    # template0: nothing another test put in template1; FILE_COPY: no WAL for the copy
    _admin(cluster, "CREATE DATABASE {} TEMPLATE {} STRATEGY FILE_COPY", name, template)
    return cluster.url(name)


def drop_database(cluster: Cluster, url: str) -> None:
    """Drop a database of new_database's, closing what is still connected to it (a
    runner a test left behind): databases do not pile up on disk over a session."""
    name = url.rsplit("/", 1)[1]
    _admin(cluster, "DROP DATABASE IF EXISTS {} WITH (FORCE)", name)


def _admin(cluster: Cluster, statement: LiteralString, *databases: str) -> None:
    # autocommit: CREATE and DROP DATABASE cannot run in a transaction
    with psycopg.connect(cluster.url("postgres"), autocommit=True) as connection:
        connection.execute(sql.SQL(statement).format(*map(sql.Identifier, databases)))


def stop_abandoned_clusters(run_as: list[str], bindir: Path) -> None:
    """Stop and remove the clusters whose test process is gone (killed before its atexit):
    never one whose process still runs, another worker's or another person's."""
    for place in PLACES:
        for base in place.glob(f"{PREFIX}*"):
            try:
                owner = int((base / OWNER_FILE).read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue  # being set up, or not ours to read
            if not pid_running(owner):
                _stop(run_as, bindir, base)


def _place() -> Path:
    memory = PLACES[0]
    if memory.is_dir() and os.access(memory, os.W_OK | os.X_OK):
        if shutil.disk_usage(memory).free >= ROOM_NEEDED:
            return memory
    return PLACES[1]


def _stop(run_as: list[str], bindir: Path, base: Path) -> None:
    server = base / "data" / "postmaster.pid"  # there while the server runs
    if server.exists():
        stop = ["-D", str(base / "data"), "-m", "immediate", "-w", "stop"]
        _run(run_as, bindir, base, "pg_ctl", *stop, check=False)
    if not server.exists():  # never the directory of a server still running (not ours)
        shutil.rmtree(base, ignore_errors=True)


def _run_as() -> list[str]:
    """[] when not root; else runuser as the postgres system user."""
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        raise PostgresUnavailable(
            f"the tests run as root, which PostgreSQL refuses, and there is no "
            f"{SYSTEM_USER!r} user to run it as: {INSTALL_HINT} creates it"
        ) from None
    return ["runuser", "-u", SYSTEM_USER, "--"]


def _run(
    run_as: list[str], bindir: Path, cwd: Path, program: str, *args: str, check: bool = True
) -> subprocess.CompletedProcess[str]:
    # cwd: the server's user may not be allowed into the test's working directory
    result = subprocess.run(
        [*run_as, str(bindir / program), *args], capture_output=True, text=True, cwd=cwd
    )
    if check and result.returncode != 0:
        raise RuntimeError(f"{program} failed in {cwd}: {result.stderr.strip()}")
    return result


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
