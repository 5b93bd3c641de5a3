"""The ledger: batchgen's SQLite file, and the only package that speaks SQL.

Every write is one `BEGIN IMMEDIATE` transaction on a WAL database with
`synchronous=FULL`, so a kill -9 at any moment leaves the last committed state, which is
always one the scheduler can resume from. Table and column meanings are in docs/ledger.md.

The package's modules, each a part of the one `Ledger` class:
- base: the connection, transactions, events, shared dataclasses and helpers;
- ingest: writing a campaign's expanded jobs;
- scheduling: the scheduler's reads and writes, money and counts;
- claims: runners and their heartbeats, claims (a job, a key's slot, its cost, in one
  transaction) and the takeover of a dead runner's attempts;
- reads: what status, report, plan and download read (and their few writes);
- review: verdicts, the review page's reads, and `retry --rejected`.
- recovery: writes that may fail, and the recovery file of answers not yet recorded,
  applied by every opening for writing before anything else.
"""

from pathlib import Path

from batchgen.ledger.base import (
    DEFAULT_OUT,
    DEFAULT_PATH,
    UNFINISHED,
    IngestResult,
    LedgerJob,
    Money,
    now,
    unusable,
)
from batchgen.ledger.claims import ClaimsMixin, Orphan, Takeover
from batchgen.ledger.ingest import JOB_INSERT_COLUMNS, IngestMixin
from batchgen.ledger.reads import ReadsMixin
from batchgen.ledger.recovery import RecoveryMixin
from batchgen.ledger.review import ReviewMixin, VerdictRefused

__all__ = [
    "DEFAULT_OUT",
    "DEFAULT_PATH",
    "JOB_INSERT_COLUMNS",
    "UNFINISHED",
    "VerdictRefused",
    "IngestResult",
    "Ledger",
    "LedgerJob",
    "Money",
    "Orphan",
    "Takeover",
    "now",
    "unusable",
]


class Ledger(IngestMixin, RecoveryMixin, ClaimsMixin, ReviewMixin, ReadsMixin):
    """batchgen's ledger: one SQLite file, migrated on opening (`Ledger(path)`) or read
    without writing (`Ledger.read_only(path)`). Opening it for writing first records the
    answers a run left in its recovery file (ledger/recovery.py)."""

    def __init__(self, path: str | Path, create: bool = True):
        super().__init__(path, create)
        try:
            self.apply_recovery()
        except BaseException:
            self.close()
            raise
