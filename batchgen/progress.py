"""What a run shows while it works: a live display on a terminal, plain log lines otherwise.

Both go to stderr, so stdout stays for data. A plain log line reads
`2026-11-24T07:31:02Z spring-launch/cat-piano: submitted, task 8c1f…`, and every minute
a status line, so an overnight log tells its own story. On a terminal each event line
starts with the local time (`07:31:02 spring-launch/cat-piano: completed`).

`--log FILE` appends the same plain log lines to a file (`LogFile`), also when the screen
shows the live display: `make_display` then writes every event to both.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TextIO

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn
from rich.text import Text

from batchgen.durations import elapsed
from batchgen.ledger import LedgerJob
from batchgen.money import usd
from batchgen.text import shown


@dataclass
class Snapshot:
    total: int
    done: int  # completed + failed
    running: int
    spent_micros: int
    budget_micros: int | None
    eta_seconds: float | None


def describe(s: Snapshot) -> str:
    budget = f" of ${usd(s.budget_micros)}" if s.budget_micros is not None else ""
    eta = f", ETA {elapsed(s.eta_seconds)}" if s.eta_seconds is not None else ""
    return (
        f"{s.done}/{s.total} done, {s.running} running, spent ${usd(s.spent_micros)}{budget}{eta}"
    )


class PlainLog:
    """Timestamped lines, for logs and pipes."""

    refresh_every = 60.0  # seconds between status lines

    def __init__(self, stream: TextIO = sys.stderr):
        self.stream = stream

    def event(self, job: LedgerJob | None, text: str) -> None:
        self._line(_event_text(job, text))

    def refresh(self, snapshot: Snapshot) -> None:
        self._line(describe(snapshot))

    def close(self, snapshot: Snapshot) -> None:
        self._line(describe(snapshot))

    def _line(self, text: str) -> None:
        stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        print(f"{stamp} {text}", file=self.stream, flush=True)


class LogFile(PlainLog):
    """The `--log` file: plain log lines appended, whatever the screen shows. A file that
    can no longer be written (a full disk) is said once on stderr and left alone: the run
    goes on."""

    def __init__(self, path: str, stream: TextIO):
        super().__init__(stream)
        self.path = path
        self.broken = False

    @classmethod
    def open(cls, path: str) -> LogFile:
        """Open FILE to append (OSError when it cannot be: the caller says so)."""
        return cls(path, open(path, "a", encoding="utf-8", errors="replace", buffering=1))

    def lines(self, texts: list[str]) -> None:
        """Lines from outside the run's display (the summary, notifications), one each."""
        for text in texts:
            self._line(shown(text))

    def end(self) -> None:
        try:
            self.stream.close()
        except OSError:
            pass

    def _line(self, text: str) -> None:
        if self.broken:
            return
        try:
            super()._line(text)
        except (OSError, ValueError) as e:  # ValueError: a file closed under us
            self.broken = True
            print(
                shown(f"warning: cannot write the log file {self.path} ({e}); not logging to it"),
                file=sys.stderr,
                flush=True,
            )


class LiveDisplay:
    """A one-line live status (rich's progress bar and the counts) under the scrolling
    events, for a person at a terminal."""

    refresh_every = 0.5

    def __init__(self, console: Console | None = None):
        self.console = console or Console(stderr=True)
        # markup=False: the status is shown as written, like every event line.
        self.progress = Progress(
            BarColumn(bar_width=24),
            TextColumn("{task.description}", markup=False),
            console=self.console,
            refresh_per_second=4,
            transient=True,
        )
        self.status = self.progress.add_task("starting…", total=None)
        self.progress.start()

    def event(self, job: LedgerJob | None, text: str) -> None:
        # A Text, never a markup string: ids and the service's words are shown as written.
        stamp = datetime.now().strftime("%H:%M:%S ")  # the person's own clock
        line = Text(stamp + _event_text(job, text))
        if job:
            line.stylize("bold", len(stamp), len(stamp) + len(shown(f"{job.campaign}/{job.id}")))
        self.console.print(line, highlight=False)

    def refresh(self, snapshot: Snapshot) -> None:
        self.progress.update(
            self.status,
            total=snapshot.total,
            completed=snapshot.done,
            description=describe(snapshot),
        )

    def close(self, snapshot: Snapshot) -> None:
        self.progress.stop()
        self.console.print(Text(describe(snapshot)), highlight=False)


def _event_text(job: LedgerJob | None, text: str) -> str:
    """One event as one line of plain text (ids and messages come from outside)."""
    return shown(f"{job.campaign}/{job.id}: {text}" if job else text)


class Tee:
    """The screen's display and the `--log` file: every event to both; the file gets a
    status line each minute however often the screen refreshes."""

    def __init__(
        self,
        screen: PlainLog | LiveDisplay,
        log: LogFile,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.screen = screen
        self.log = log
        self.refresh_every = min(screen.refresh_every, log.refresh_every)
        self.clock = clock
        self._logged_status = clock()

    def event(self, job: LedgerJob | None, text: str) -> None:
        self.screen.event(job, text)
        self.log.event(job, text)

    def refresh(self, snapshot: Snapshot) -> None:
        self.screen.refresh(snapshot)
        # The ticker wakes every refresh_every: allow it to come a little early.
        if self.clock() - self._logged_status >= self.log.refresh_every - 1:
            self._logged_status = self.clock()
            self.log.refresh(snapshot)

    def close(self, snapshot: Snapshot) -> None:
        self.screen.close(snapshot)
        self.log.close(snapshot)


Display = PlainLog | LiveDisplay | Tee


def make_display(stream: TextIO = sys.stderr, log: LogFile | None = None) -> Display:
    screen = LiveDisplay() if stream.isatty() else PlainLog(stream)
    return screen if log is None else Tee(screen, log)
