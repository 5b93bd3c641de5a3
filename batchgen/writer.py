"""The run's ledger writes that must not fail (PRODUCT.md §6: nothing answered is lost).

A write that fails (another program holds the lock, the disk is full) is retried with
growing pauses; while any write fails the run submits nothing new; an answer the write
would record (a task id, a completion) is kept meanwhile in the ledger's recovery file,
which the next command applies if this run has to end first. Writes worth having but not
worth waiting for (progress, a log event) are tried once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

from batchgen.errors import LedgerWriteFailed
from batchgen.ledger import Ledger, LedgerJob

T = TypeVar("T")

WRITE_WAIT = 0.25  # seconds a ledger write waits for a lock before the run gets control back
WRITE_RETRY_CAP = 5.0  # longest pause between two tries of a write that failed
BLOCKED_REPORT_EVERY = 10.0  # seconds between two "cannot write the ledger" lines

Reporter = Callable[[LedgerJob | None, str], None]


class Abandoned(Exception):
    """The run ended while a ledger write was failing: the job stops where it is (an
    answer it held is in the recovery file, a submission not recorded reads as unknown)."""


async def pause(seconds: float, stop: asyncio.Event) -> bool:
    """Sleep, waking early when `stop` is set; True when it was."""
    if stop.is_set():
        return True
    try:
        await asyncio.wait_for(stop.wait(), timeout=seconds)
    except TimeoutError:
        return False
    return True


class LedgerWriter:
    """Writes for one run: `record` until it works, `try_once`, and `writable` (wait while
    writes fail). `halt_all` ends the retries (the run is stopping); `halt_submits` ends
    the wait of a submission for the ledger."""

    def __init__(
        self,
        ledger: Ledger,
        report: Reporter,
        halt_all: asyncio.Event,
        halt_submits: asyncio.Event,
        clock: Callable[[], float],
    ):
        self.ledger, self.report, self.clock = ledger, report, clock
        self.halt_all, self.halt_submits = halt_all, halt_submits
        self.ok = asyncio.Event()  # cleared while a write keeps failing
        self.ok.set()
        self.failing = 0
        self.blocked_reported = 0.0  # when the last "cannot write" line was said

    async def record(
        self,
        write: Callable[[], T],
        job: LedgerJob | None = None,
        held: dict[str, Any] | None = None,
    ) -> T:
        """Write to the ledger until it works.

        While it fails: no new submission, `held` (the answer this write records) kept in
        the recovery file, a line every few seconds, a retry with growing pauses. If the
        run must end first, a write holding an answer gets one last try, then the job is
        abandoned with the answer in the recovery file (and on stderr); other writes are
        abandoned at once (what they would record, resume finds again)."""
        failures = 0
        try:
            while True:
                try:
                    result = self.ledger.try_write(write, WRITE_WAIT)
                except LedgerWriteFailed as e:
                    failures += 1
                    if failures == 1:
                        self._failed(str(e), held)
                    elif self.clock() - self.blocked_reported >= BLOCKED_REPORT_EVERY:
                        self._report_blocked(str(e))
                    if self.halt_all.is_set() and (held is None or failures > 1):
                        if held is not None:
                            self._report_unrecorded(job, held)
                        raise Abandoned from e
                    await pause(min(WRITE_RETRY_CAP, WRITE_WAIT * 2**failures), self.halt_all)
                    continue
                if failures:
                    if held is not None:
                        self.ledger.release_answer(held)
                    self.report(job, "recorded in the ledger after all")
                return result
        except asyncio.CancelledError:
            if failures and held is not None:
                self._report_unrecorded(job, held)
            raise
        finally:
            if failures:
                self.failing -= 1
                if not self.failing:
                    self.ok.set()

    def try_once(self, write: Callable[[], object]) -> None:
        """A write worth having but not worth waiting for (progress, a log event)."""
        try:
            self.ledger.try_write(write, WRITE_WAIT)
        except LedgerWriteFailed:
            pass

    async def writable(self) -> bool:
        """Wait while ledger writes fail; False when submitting stops meanwhile."""
        while not self.ok.is_set():
            if await pause(1.0, self.halt_submits):
                return False
        return not self.halt_submits.is_set()

    def _failed(self, error: str, held: dict[str, Any] | None) -> None:
        self.failing += 1
        self.ok.clear()
        if held is not None:
            problem = self.ledger.hold_answer(held)
            if problem is not None:
                self.report(
                    None,
                    f"cannot write {self.ledger.recovery_path} either ({problem}): "
                    f"{_answer_named(held)} is kept in this run's memory only",
                )
        self._report_blocked(error)

    def _report_blocked(self, error: str) -> None:
        # Says an answer is kept in the recovery file only when the file holds one.
        self.blocked_reported = self.clock()
        kept = self.ledger.held_count()
        where = f", {kept} answer(s) kept in {self.ledger.recovery_path.name}" if kept else ""
        self.report(
            None,
            f"cannot write the ledger ({error}): submitting nothing until it works; "
            f"{self.failing} write(s) waiting{where}; retrying",
        )

    def _report_unrecorded(self, job: LedgerJob | None, held: dict[str, Any]) -> None:
        if self.ledger.holds(held):
            where = (
                f"kept in {self.ledger.recovery_path}, which the next batchgen command on "
                "this ledger applies first"
            )
        else:
            where = f"not in {self.ledger.recovery_path} either (it could not be written)"
        self.report(job, f"NOT RECORDED in the ledger: {_answer_named(held)}; {where}")


def _answer_named(held: dict[str, Any]) -> str:
    """An answer held for the ledger, in words: `task T of c/j`."""
    what = "task" if held["kind"] == "created" else "the completion of task"
    return f"{what} {held['task_id']} of {held['campaign']}/{held['job_id']}"
