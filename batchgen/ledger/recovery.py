"""When the ledger cannot be written: nothing the service answered is lost (PRODUCT.md §6).

A write that fails (another program holds the lock, the disk is full, an I/O error) is
reported as `LedgerWriteFailed` by `try_write`, which waits only briefly for a lock so the
run stays responsive (its caller retries). An answer that cannot be recorded yet — a task
id, a completion — is held meanwhile in a *recovery file* beside the ledger
(`<ledger>.recovery.jsonl`, one JSON object a line, fsync'd), and taken out again once
it is recorded. If the run must end first (Ctrl-C, a kill), the file stays, and the next
batchgen that opens the ledger for writing applies it before anything else
(`apply_recovery`, from `Ledger.__init__`): a task id that was paid for is polled, never
generated again.

Applying is idempotent: an answer already recorded (by the run itself, in the end) is
skipped, so a file applied twice, or applied while its run is still retrying, records
each answer once.
"""

from __future__ import annotations

import json
import os
import sqlite3
import sys
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import Any, TypeVar

from batchgen.durable import fsync_dir
from batchgen.errors import LedgerError, LedgerWriteFailed
from batchgen.ledger.base import now
from batchgen.ledger.scheduling import SchedulingMixin

T = TypeVar("T")

BUSY_TIMEOUT_MS = 30_000  # what every ledger connection waits for a lock (base.py)
RECOVERY_SUFFIX = ".recovery.jsonl"


class RecoveryMixin(SchedulingMixin):
    """Writes that may fail, the recovery file, and applying it."""

    # ---------------------------------------------------------------- writes that may fail

    def try_write(self, write: Callable[[], T], wait: float) -> T:
        """Run one ledger write, waiting at most `wait` seconds for the lock; a failure the
        caller may retry later (locked, disk full, I/O error) is LedgerWriteFailed, with
        nothing of the write applied."""
        self.conn.execute(f"PRAGMA busy_timeout = {max(0, int(wait * 1000))}")
        try:
            return write()
        except sqlite3.OperationalError as e:
            # A COMMIT that failed (disk full) leaves its transaction open: end it, so the
            # next try starts clean.
            if self.conn.in_transaction:
                with suppress(sqlite3.Error):
                    self.conn.execute("ROLLBACK")
            raise LedgerWriteFailed(str(e) or type(e).__name__) from e
        finally:
            self.conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")

    # ---------------------------------------------------------------- the recovery file

    @property
    def recovery_path(self) -> Path:
        return self.path.with_name(self.path.name + RECOVERY_SUFFIX)

    def hold_answer(self, answer: dict[str, Any]) -> str | None:
        """Add an answer not yet recorded to the recovery file, durably; None when done,
        else why it could not be written (the caller then shows the answer on stderr)."""
        # A leading newline: a line a crash cut short never swallows this one.
        line = "\n" + json.dumps(answer, ensure_ascii=True, sort_keys=True) + "\n"
        try:
            new = not self.recovery_path.exists()
            fd = os.open(self.recovery_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            try:
                os.write(fd, line.encode("ascii"))
                os.fsync(fd)
            finally:
                os.close(fd)
            if new:
                fsync_dir(self.recovery_path.parent)
        except OSError as e:
            return f"{type(e).__name__}: {e}"
        return None

    def release_answer(self, answer: dict[str, Any]) -> None:
        """Take a recorded answer out of the recovery file (the file goes when empty)."""
        self._release_answers([answer])

    def _release_answers(self, answers: list[dict[str, Any]]) -> None:
        # Only these: a run still retrying may have added others meanwhile. (Two processes
        # rewriting the file at the same instant could still drop a line: the run that
        # added it keeps it in memory and on stderr, and records it when its write works.)
        held = self._held_answers()
        kept = [a for a in held if a not in answers]
        if len(kept) == len(held):
            return
        with suppress(OSError):  # left in: applying it later finds it recorded
            self._write_held(kept)

    def _held_answers(self) -> list[dict[str, Any]]:
        try:
            text = self.recovery_path.read_text(encoding="ascii", errors="replace")
        except FileNotFoundError:
            return []
        except OSError as e:
            raise LedgerError(f"{self.recovery_path}: cannot read the recovery file: {e}") from e
        answers = []
        for line in text.splitlines():
            if not line.strip():
                continue
            try:
                answer = json.loads(line)
            except ValueError:
                continue  # a line cut short by a crash mid-write: it was never released
            if isinstance(answer, dict):
                answers.append(answer)
        return answers

    def _write_held(self, answers: list[dict[str, Any]]) -> None:
        if not answers:
            self.recovery_path.unlink(missing_ok=True)
            return
        temp = self.recovery_path.with_name(self.recovery_path.name + ".tmp")
        text = "".join(json.dumps(a, ensure_ascii=True, sort_keys=True) + "\n" for a in answers)
        with temp.open("w", encoding="ascii") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, self.recovery_path)

    # ---------------------------------------------------------------- applying it

    def apply_recovery(self) -> None:
        """Record every answer a run left in the recovery file, then remove the file; one
        line on stderr says what was applied."""
        held = self._held_answers()
        if not held:
            self.recovery_path.unlink(missing_ok=True)
            return
        try:
            with self.transaction() as db:
                applied = sum(self._apply(db, answer) for answer in held)
                self._event("recovered", file=str(self.recovery_path), answers=held)
        except sqlite3.OperationalError as e:
            raise LedgerError(
                f"{self.path}: cannot apply {self.recovery_path.name} ({len(held)} answer(s) "
                f"a run could not record): {e}; nothing else was done, try again"
            ) from e
        self._release_answers(held)
        print(
            f"{self.recovery_path}: recorded {applied} answer(s) that a run could not write "
            f"to the ledger ({len(held) - applied} already there)",
            file=sys.stderr,
            flush=True,
        )

    def _apply(self, db: sqlite3.Connection, answer: dict[str, Any]) -> bool:
        kind = answer.get("kind")
        try:
            if kind == "created":
                return self._record_created(
                    db,
                    str(answer["campaign"]),
                    str(answer["job_id"]),
                    int(answer["attempt"]),
                    int(answer["http_status"]),
                    str(answer["task_id"]),
                    str(answer["answered_at"]),
                    late=True,
                )
            if kind == "completed":
                return self._record_completed(
                    db,
                    str(answer["campaign"]),
                    str(answer["job_id"]),
                    str(answer["task_id"]),
                    [str(u) for u in answer["result_urls"]],
                    str(answer.get("at") or now()),
                )
        except (KeyError, TypeError, ValueError):
            pass
        return False
