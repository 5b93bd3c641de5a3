"""When the ledger cannot be written: nothing the service answered is lost (PRODUCT.md §6).

A write that fails (another program holds the lock, the disk is full, an I/O error) is
reported as `LedgerWriteFailed` by `try_write`, which waits only briefly for a lock so the
run stays responsive (its caller retries). An answer that cannot be recorded yet — a task
id, a completion — is held meanwhile in a *recovery file* beside the ledger
(`<ledger>.recovery.jsonl`, one JSON object a line, fsync'd; a PostgreSQL ledger's is in
this machine's state directory, db.companion), and taken out again once
it is recorded. If the run must end first (Ctrl-C, a kill), the file stays, and the next
batchgen that opens the ledger for writing applies it before anything else
(`apply_recovery`, from `Ledger.__init__`): a task id that was paid for is polled, never
generated again.

Applying is idempotent: an answer already recorded (by the run itself, in the end) is
skipped, so a file applied twice, or applied while its run is still retrying, records
each answer once. A line that is no answer this batchgen can record (cut short by a
crash, an unknown `kind`, a field missing or malformed, an attempt or task this ledger
does not have) is never dropped: applying moves it to `<ledger>.recovery.jsonl.rejected`
beside the file and says so. The file exists only while it holds something.
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
from batchgen.ledger.base import BUSY_TIMEOUT_MS, now
from batchgen.ledger.db import Connection, companion, database_errors, pg_waitable
from batchgen.ledger.scheduling import SchedulingMixin

T = TypeVar("T")

RECOVERY_SUFFIX = ".recovery.jsonl"
REJECTED_SUFFIX = ".rejected"


class RecoveryMixin(SchedulingMixin):
    """Writes that may fail, the recovery file, and applying it."""

    # ---------------------------------------------------------------- writes that may fail

    def try_write(self, write: Callable[[], T], wait: float) -> T:
        """Run one ledger write, waiting at most `wait` seconds for the lock; a failure the
        caller may retry later (locked, disk full, I/O error) is LedgerWriteFailed, with
        nothing of the write applied."""
        self.lock_wait(wait)
        try:
            return write()
        except database_errors() as e:
            if not (isinstance(e, sqlite3.OperationalError) or pg_waitable(e)):
                raise
            # A COMMIT that failed (disk full) leaves its transaction open: end it, so the
            # next try starts clean.
            if self.conn.in_transaction:
                with suppress(*database_errors()):
                    self.conn.execute("ROLLBACK")
            raise LedgerWriteFailed(str(e).strip() or type(e).__name__) from e
        finally:
            with suppress(*database_errors()):  # a server gone: set again on reconnecting
                self.lock_wait(BUSY_TIMEOUT_MS / 1000)

    # ---------------------------------------------------------------- the recovery file

    @property
    def recovery_path(self) -> Path:
        return companion(self.location, RECOVERY_SUFFIX)

    @property
    def rejected_path(self) -> Path:
        """Where applying the recovery file moves the lines it cannot record."""
        return self.recovery_path.with_name(self.recovery_path.name + REJECTED_SUFFIX)

    def hold_answer(self, answer: dict[str, Any]) -> str | None:
        """Add an answer not yet recorded to the recovery file, durably; None when done,
        else why it could not be written (nothing of it is then left in the file)."""
        # A leading newline: a line a crash cut short never swallows this one.
        data = ("\n" + _line(answer) + "\n").encode("ascii")
        new = False
        try:
            folder = self.recovery_path.parent
            if not folder.is_dir():  # a PostgreSQL ledger's: this machine's state directory
                folder.mkdir(parents=True, exist_ok=True)
                fsync_dir(folder.parent)
            new = not self.recovery_path.exists()
            fd = os.open(self.recovery_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            try:
                before = os.fstat(fd).st_size
                try:
                    written = os.write(fd, data)
                    if written != len(data):
                        raise OSError(f"{written} of {len(data)} bytes written")
                    os.fsync(fd)
                except OSError:
                    # A full disk: take back what part went in (only this run adds lines).
                    with suppress(OSError):
                        os.ftruncate(fd, before)
                    raise
            finally:
                os.close(fd)
            if new:
                fsync_dir(self.recovery_path.parent)
        except OSError as e:
            if new:  # created for this answer, it holds nothing: it does not stay
                with suppress(OSError):
                    self.recovery_path.unlink(missing_ok=True)
            return f"{type(e).__name__}: {e}"
        return None

    def release_answer(self, answer: dict[str, Any]) -> None:
        """Take a recorded answer out of the recovery file (the file goes when empty)."""
        self._release(lambda line: _parsed(line) == answer)

    def holds(self, answer: dict[str, Any]) -> bool:
        """Whether the recovery file holds `answer`: a message may then say it is kept."""
        return answer in self._readable_answers()

    def held_count(self) -> int:
        """How many answers the recovery file holds (0: nothing to say it keeps)."""
        return len(self._readable_answers())

    def _readable_answers(self) -> list[dict[str, Any]]:
        try:
            return self._held_answers()
        except LedgerError:  # unreadable: nothing can be said to be kept in it
            return []

    def _release(self, gone: Callable[[str], bool]) -> None:
        # Only these lines: a run still retrying may have added others meanwhile. (Two
        # processes rewriting the file at the same instant could still drop a line: the run
        # that added it keeps it in memory and on stderr, and records it when its write
        # works.) A file that holds nothing (a 0-byte one a full disk left) is removed.
        lines = self._held_lines()
        kept = [line for line in lines if not gone(line)]
        if kept and len(kept) == len(lines):
            return
        with suppress(OSError):  # left in: applying it later finds it recorded
            self._write_held(kept)

    def _held_lines(self) -> list[str]:
        """The recovery file's lines that are not blank (blank ones separate answers)."""
        try:
            text = self.recovery_path.read_text(encoding="ascii", errors="replace")
        except FileNotFoundError:
            return []
        except OSError as e:
            raise LedgerError(f"{self.recovery_path}: cannot read the recovery file: {e}") from e
        return [line for line in text.splitlines() if line.strip()]

    def _held_answers(self) -> list[dict[str, Any]]:
        return [a for a in map(_parsed, self._held_lines()) if a is not None]

    def _write_held(self, lines: list[str]) -> None:
        if not lines:
            self.recovery_path.unlink(missing_ok=True)
            return
        temp = self.recovery_path.with_name(self.recovery_path.name + ".tmp")
        with temp.open("w", encoding="ascii", errors="replace") as f:
            f.write("".join(line + "\n" for line in lines))
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, self.recovery_path)

    def _reject(self, lines: list[str]) -> None:
        """Add lines applying cannot record to the rejected file, durably."""
        with self.rejected_path.open("a", encoding="ascii", errors="replace") as f:
            f.write("".join(line + "\n" for line in lines))
            f.flush()
            os.fsync(f.fileno())
        fsync_dir(self.rejected_path.parent)

    # ---------------------------------------------------------------- applying it

    def apply_recovery(self) -> None:
        """Record every answer a run left in the recovery file, move aside the lines that
        are no such answer, then remove the file; a line on stderr says what was done."""
        lines = self._held_lines()
        if not lines:
            self.recovery_path.unlink(missing_ok=True)
            return
        try:
            with self.transaction() as db:
                done = {line: self._apply(db, _parsed(line)) for line in lines}
                self._event(
                    "recovered",
                    file=str(self.recovery_path),
                    answers=[_parsed(line) for line, ok in done.items() if ok is not None],
                    rejected=sum(ok is None for ok in done.values()),
                )
        except sqlite3.OperationalError as e:
            raise LedgerError(
                f"{self.name}: cannot apply {self.recovery_path.name} ({len(lines)} line(s) "
                f"a run could not record): {e}; nothing else was done, try again"
            ) from e
        applied = sum(ok is True for ok in done.values())
        already = sum(ok is False for ok in done.values())
        if applied or already:
            print(
                f"{self.recovery_path}: recorded {applied} answer(s) that a run could not "
                f"write to the ledger ({already} already there)",
                file=sys.stderr,
                flush=True,
            )
        moved = self._move_rejected([line for line, ok in done.items() if ok is None])
        self._release(lambda line: line in done and (done[line] is not None or moved))

    def _move_rejected(self, rejected: list[str]) -> bool:
        """Put the lines applying cannot record in the rejected file, saying so; False
        when that cannot be written (they then stay in the recovery file)."""
        if not rejected:
            return True
        what = (
            f"{len(rejected)} line(s) that are no answer this batchgen can record (cut "
            "short, an unknown kind, a field missing or malformed, or not in this ledger)"
        )
        try:
            self._reject(rejected)
        except OSError as e:
            print(
                f"{self.recovery_path}: {what} stay in it: cannot write {self.rejected_path} "
                f"({type(e).__name__}: {e})",
                file=sys.stderr,
                flush=True,
            )
            return False
        print(
            f"{self.recovery_path}: {what} moved to {self.rejected_path}; nothing was "
            "recorded from them",
            file=sys.stderr,
            flush=True,
        )
        return True

    def _apply(self, db: Connection, answer: dict[str, Any] | None) -> bool | None:
        """True: recorded now; False: already in the ledger; None: no answer this batchgen
        can record (see the module's docstring)."""
        if answer is None:
            return None
        try:
            if answer.get("kind") == "created":
                campaign, job_id = _text(answer, "campaign"), _text(answer, "job_id")
                attempt, task_id = _number(answer, "attempt"), _text(answer, "task_id")
                http_status, answered_at = (
                    _number(answer, "http_status"),
                    _text(answer, "answered_at"),
                )
                known = db.execute(
                    "SELECT 1 FROM attempts WHERE id = ? AND campaign = ? AND job_id = ?",
                    (attempt, campaign, job_id),
                ).fetchone()
                if known is None:
                    return None
                return self._record_created(
                    db, campaign, job_id, attempt, http_status, task_id, answered_at, late=True
                )
            if answer.get("kind") == "completed":
                campaign, job_id = _text(answer, "campaign"), _text(answer, "job_id")
                task_id, urls = _text(answer, "task_id"), answer["result_urls"]
                if not isinstance(urls, list) or not all(isinstance(u, str) for u in urls):
                    return None
                at = answer.get("at") or now()
                if not isinstance(at, str):
                    return None
                known = db.execute(
                    "SELECT 1 FROM attempts WHERE campaign = ? AND job_id = ? AND task_id = ?",
                    (campaign, job_id, task_id),
                ).fetchone()
                if known is None:
                    return None
                return self._record_completed(db, campaign, job_id, task_id, urls, at)
        except (KeyError, TypeError):
            return None
        return None


def _line(answer: dict[str, Any]) -> str:
    return json.dumps(answer, ensure_ascii=True, sort_keys=True)


def _parsed(line: str) -> dict[str, Any] | None:
    """The answer a line holds; None for a line cut short by a crash, or no JSON object."""
    try:
        answer = json.loads(line)
    except ValueError:
        return None
    return answer if isinstance(answer, dict) else None


def _text(answer: dict[str, Any], field: str) -> str:
    value = answer[field]
    if not isinstance(value, str) or not value:
        raise TypeError(field)
    return value


def _number(answer: dict[str, Any], field: str) -> int:
    value = answer[field]
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(field)
    return value
