"""Helpers for end-to-end tests: the real `batchgen` command in a subprocess, a real ledger
file, and the sandbox served over HTTP on 127.0.0.1 by the test process."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import select
import sqlite3
import struct
import subprocess
import sys
import termios
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

from batchgen.ledger.db import PgConnection, PostgresDialect, companion, is_url

FAST = ["--poll-interval", "0.02", "--retry-delay", "0.01"]


def command_env(
    ledger: Path | str, base_url: str | None, key: str | None, keys: str | None = None
) -> dict[str, str]:
    """The command's environment: this ledger, service and key(s) (`keys`: the value of
    OKAYPIC_API_KEYS), and none of the developer's own."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("OKAYPIC_API_KEY", "OKAYPIC_API_KEYS", "OKAYPIC_BASE_URL", "BATCHGEN_LEDGER")
    }
    if keys is not None:
        env["OKAYPIC_API_KEYS"] = keys
    env["BATCHGEN_LEDGER"] = str(ledger)
    env["BATCHGEN_OUT"] = str(out_dir(ledger))  # run/resume save files by default
    if base_url is not None:
        env["OKAYPIC_BASE_URL"] = base_url
    if key is not None:
        env["OKAYPIC_API_KEY"] = key
    return env


def batchgen(
    *args: str,
    ledger: Path | str,
    base_url: str | None = None,
    key: str | None = None,
    timeout: float = 120,
    keys: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run the real command to its end."""
    return subprocess.run(
        [sys.executable, "-m", "batchgen", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=command_env(ledger, base_url, key, keys),
        stdin=subprocess.DEVNULL,
    )


def on_sandbox(
    sandbox: Any, *args: str, ledger: Path | str, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run the real command to its end against a served sandbox, with its key."""
    return batchgen(
        *args, ledger=ledger, base_url=sandbox.base_url, key=sandbox.key, timeout=timeout
    )


def spawn(
    *args: str,
    ledger: Path | str,
    base_url: str | None = None,
    key: str | None = None,
    stdout: Any = subprocess.PIPE,
    keys: str | None = None,
) -> subprocess.Popen[str]:
    """Start the real command, for tests that signal or kill it."""
    return subprocess.Popen(
        [sys.executable, "-m", "batchgen", *args],
        stdout=stdout,
        stderr=subprocess.PIPE,
        text=True,
        stdin=subprocess.DEVNULL,
        env=command_env(ledger, base_url, key, keys),
    )


def write_manifest(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text).lstrip(), encoding="utf-8")
    return path


def grok_batch(path: Path, n: int, campaign: str = "e2e", budget: str | None = None) -> Path:
    """n cheap grok jobs ($0.10 each at 5 s)."""
    lines = ["version: 1", f"campaign: {campaign}"]
    if budget is not None:
        lines.append(f"budget_usd: {budget}")
    lines += [
        'defaults: {model: grok-video-3, duration: 5, ratio: "1:1"}',
        "jobs:",
        '  - id: "clip-{n}"',
        '    prompt: "clip number {n}"',
        f"    matrix: {{n: {list(range(1, n + 1))}}}",
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def report_text(ledger: Path | str, *args: str) -> str:
    """What the real `batchgen report ARGS` prints (it must succeed)."""
    result = batchgen("report", *args, ledger=ledger)
    assert result.returncode == 0, result.stderr
    return result.stdout


def run_on_a_terminal(args: list[str], env: dict[str, str], timeout: float = 60) -> tuple[int, str]:
    """Run the real command with a pseudo-terminal as its stdin, stdout and stderr (wide,
    so nothing wraps); its exit code and everything it wrote."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 400, 0, 0))
    process = subprocess.Popen(
        [sys.executable, "-m", "batchgen", *args],
        stdin=follower,
        stdout=follower,
        stderr=follower,
        env={**env, "TERM": "xterm-256color", "COLUMNS": "400", "LINES": "50"},
        close_fds=True,
    )
    os.close(follower)
    output = bytearray()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([leader], [], [], 0.1)
        if ready:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # the terminal closed: every process holding it has ended
                break
            if not chunk:
                break
            output += chunk
        elif process.poll() is not None:
            break
    os.close(leader)
    try:
        code = process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        raise
    return code, output.decode("utf-8", "replace")


# Two results, an image and a video (with --provenance, signed as a provider would).
POSTER_AND_CLIP = """
    version: 1
    campaign: launch
    jobs:
      - id: poster
        model: jimeng-5.0
        prompt: Minimalist poster of a red bicycle
      - id: clip
        model: grok-video-3
        duration: 5
        ratio: "1:1"
        prompt: A cat playing piano
"""


def generated(
    make_sandbox, tmp_path: Path, provenance: bool, served: list | None = None
) -> tuple[Path, dict[str, Path]]:
    """Run the two jobs on a sandbox and download them: the ledger and job id -> file
    (the sandbox is appended to `served`)."""
    sandbox = make_sandbox(time_scale=0.001, provenance=provenance)
    if served is not None:
        served.append(sandbox)
    tmp_path.mkdir(parents=True, exist_ok=True)
    ledger = tmp_path / "ledger.db"
    manifest = write_manifest(tmp_path / "m.yaml", POSTER_AND_CLIP)
    result = on_sandbox(sandbox, "run", str(manifest), *FAST, ledger=ledger)
    assert result.returncode == 0, result.stderr
    result = on_sandbox(sandbox, "download", "--out", str(tmp_path / "out"), ledger=ledger)
    assert result.returncode == 0, result.stderr
    files = {r["job_id"]: Path(r["path"]) for r in rows(ledger, "SELECT job_id, path FROM files")}
    assert set(files) == {"poster", "clip"}
    return ledger, files


def out_dir(ledger: Path | str) -> Path:
    """Where a command saves files for this ledger in a test: beside a SQLite file; the
    test's BATCHGEN_OUT (conftest) for a PostgreSQL ledger."""
    if is_url(ledger):
        return Path(os.environ["BATCHGEN_OUT"])
    return Path(ledger).parent / "out"


def rows(ledger: Path | str, sql: str, *params: Any) -> list[dict[str, Any]]:
    """A query's rows as dicts, on either kind of ledger (`?` placeholders)."""
    if is_url(ledger):
        pg = PgConnection(str(ledger))
        try:
            cursor = pg.execute(sql, params)
            names = [column.name for column in cursor.description]
            return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
        finally:
            pg.close()
    db = sqlite3.connect(ledger)
    db.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in db.execute(sql, params)]
    finally:
        db.close()


def ledger_written(ledger: Path | str) -> bool:
    """Has anything been written to the ledger: a SQLite file created, or a table in the
    PostgreSQL database (which exists, empty, before any command runs)?"""
    if not is_url(ledger):
        return Path(ledger).exists()
    pg = PgConnection(str(ledger))
    try:
        return bool(PostgresDialect().tables(pg))
    finally:
        pg.close()


def stored_bytes(ledger: Path | str) -> bytes:
    """All a ledger keeps, to search for a secret: a SQLite file and the files beside it
    (its WAL, the recovery file, the sandbox's state); every row of every table of a
    PostgreSQL database, as text, and the files that go with it in the state directory."""
    if not is_url(ledger):
        path = Path(ledger)
        return b"".join(p.read_bytes() for p in path.parent.glob(path.name + "*") if p.is_file())
    kept = companion(ledger, "")
    found = [p.read_bytes() for p in kept.parent.glob(kept.name + "*") if p.is_file()]
    pg = PgConnection(str(ledger))
    try:
        for table in sorted(PostgresDialect().tables(pg)):
            texts = pg.execute(f'SELECT t::text FROM "{table}" t').fetchall()
            found += [text.encode() for (text,) in texts]
    finally:
        pg.close()
    return b"\n".join(found)


def ledger_content(ledger: Path | str) -> bytes:
    """What a ledger holds, to compare before and after a command that must not write: a
    SQLite file's bytes and its WAL's, the rows of a PostgreSQL database's tables."""
    if is_url(ledger):
        return stored_bytes(ledger)
    path = Path(ledger)
    wal = path.with_name(path.name + "-wal")
    return path.read_bytes() + (wal.read_bytes() if wal.exists() else b"")


def status_json(ledger: Path | str) -> dict[str, Any]:
    result = batchgen("status", "--json", ledger=ledger)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def ledger_spent_micros(ledger: Path | str) -> int:
    return rows(
        ledger,
        "SELECT COALESCE(SUM(cost_micro_usd), 0) AS s FROM attempts"
        " WHERE state IN ('completed', 'failed')",
    )[0]["s"]


def recorded_task_ids(ledger: Path | str) -> list[str]:
    return [
        r["task_id"] for r in rows(ledger, "SELECT task_id FROM attempts WHERE task_id IS NOT NULL")
    ]


def known_completed_micros(ledger: Path | str, truth: Any) -> int:
    """What the service says the tasks the ledger knows of cost, those that completed."""
    known = set(recorded_task_ids(ledger))
    return sum(
        s.price_micros for s in truth.submissions if s.status == "completed" and s.task_id in known
    )


def wait_for(predicate: Any, timeout: float = 30.0, what: str = "the condition") -> None:
    """Poll `predicate` until it holds (an event a test waits for, not a timed claim)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


class StderrWatch:
    """Reads a spawned command's stderr line by line in a thread, so a test can wait for
    a line (e.g. "cannot write the ledger") while the command runs, and read it all after."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        assert process.stderr is not None
        self.process = process
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(process.stderr,), daemon=True)
        self._thread.start()

    def _read(self, stream: Any) -> None:
        for line in stream:
            self.lines.append(line)

    def wait_for_line(self, text: str, timeout: float = 30.0) -> str:
        wait_for(lambda: any(text in line for line in self.lines), timeout, repr(text))
        return next(line for line in self.lines if text in line)

    def text(self) -> str:
        self._thread.join(timeout=10)
        return "".join(self.lines)
