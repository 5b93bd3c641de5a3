"""The ledger's base: the connection, its transactions and events, the shared dataclasses
and the small helpers every part of the ledger uses.

The other modules of this package add the ledger's methods as mixins of `LedgerBase`;
`batchgen.ledger.Ledger` puts them together.
"""

from __future__ import annotations

import os
import socket
import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from batchgen.errors import LedgerError
from batchgen.job import canonical_json
from batchgen.migrations import migrate

DEFAULT_PATH = "batchgen.db"
UNFINISHED = ("queued", "submitting", "running")


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class LedgerJob:
    """A job as the scheduler sees it: enough to submit and poll it."""

    campaign: str
    id: str
    model: str
    kind: str
    request: dict[str, Any]
    fingerprint: str
    price_micros: int
    duration: int | None
    status: str
    task_id: str | None
    attempts: int
    submitted_at: str | None = None

    @property
    def key(self) -> tuple[str, str]:
        return (self.campaign, self.id)


@dataclass
class Money:
    """Sums over attempts, in micro-dollars (see the README for each meaning)."""

    spent: int = 0
    in_flight: int = 0
    unknown: int = 0
    refunded: int = 0


@dataclass
class IngestResult:
    new: int
    unchanged: int
    replaced: int


class LedgerBase:
    """The ledger's connection: opened (and migrated) on construction, written in
    `BEGIN IMMEDIATE` transactions."""

    # Money follows the attempt-state rules in migrations.py, written once here: spent,
    # in flight, unknown and refunded, as SQL over `attempts a`.
    _ATTEMPT_MONEY = (
        "CASE WHEN a.state IN ('completed', 'failed') THEN a.cost_micro_usd ELSE 0 END",
        "CASE WHEN a.state = 'running' THEN a.cost_micro_usd ELSE 0 END",
        "CASE WHEN a.state IN ('unknown', 'sending') THEN a.unit_price_micro_usd ELSE 0 END",
        "a.refunded_micro_usd",
    )

    def __init__(self, path: str | Path, create: bool = True):
        self.path = Path(path)
        if not create and not self.path.exists():
            raise LedgerError(f"{self.path}: no ledger here (run `batchgen ingest` or `run` first)")
        try:
            self.conn = sqlite3.connect(
                self.path, isolation_level=None, timeout=30, check_same_thread=False
            )
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=FULL")
            self.conn.execute("PRAGMA foreign_keys=ON")
            self.conn.execute("PRAGMA busy_timeout=30000")
            migrate(self.conn)
        except sqlite3.DatabaseError as e:
            raise LedgerError(f"{self.path}: cannot open the ledger: {e}") from e

    def close(self) -> None:
        self.conn.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
        except BaseException:
            # SQLite may have rolled back already (a full disk): keep the real error.
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    @contextmanager
    def snapshot(self) -> Iterator[None]:
        """Read several things as of one moment: in WAL mode every statement of a read
        transaction sees the same committed state, whatever a runner commits meanwhile."""
        self.conn.execute("BEGIN")
        try:
            yield
        finally:
            self.conn.execute("COMMIT")

    def _event(
        self, kind: str, campaign: str | None = None, job_id: str | None = None, **detail: Any
    ) -> None:
        self.conn.execute(
            "INSERT INTO events (at, campaign, job_id, kind, detail) VALUES (?, ?, ?, ?, ?)",
            (now(), campaign, job_id, kind, canonical_json(detail) if detail else None),
        )

    def query(self, sql: str, params: Iterable[Any] | dict[str, Any] = ()) -> list[dict[str, Any]]:
        return list(
            _dicts(self.conn.execute(sql, params if isinstance(params, dict) else list(params)))
        )


def _dicts(cursor: sqlite3.Cursor) -> Iterator[dict[str, Any]]:
    """The rows of a query as dicts by column name (as sqlite-utils' `query` gives them)."""
    keys = [column[0] for column in cursor.description]
    return (dict(zip(keys, row, strict=True)) for row in cursor)


def _campaign_filter(
    campaigns: list[str] | None, column: str = "campaign"
) -> tuple[str, list[Any]]:
    if not campaigns:
        return "", []
    return f"AND {column} IN ({', '.join('?' * len(campaigns))})", list(campaigns)


def _alive(pid: int, host: str) -> bool:
    if host != socket.gethostname():
        return True  # cannot tell from here: assume it lives
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
