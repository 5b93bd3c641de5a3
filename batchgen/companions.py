"""What goes along with a `run` or `resume` (PRODUCT.md §6, §7): the `--log` file and the
`--notify` targets. Both are checked before anything is sent; at the end, whatever ended
the run (its own end, an error, a Ctrl-C before it began), the log gets the end-of-run
summary and every target gets it as one message. A message that fails is said on stderr
and in the log; it changes neither the exit code nor the ledger.

The log and the message end with how long the run took and on which host (`run took
3m07s on render-02`): read on a phone in the morning, a message must say which machine
and which run it speaks of.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from collections.abc import Callable, Sequence

import click

from batchgen import notify
from batchgen.durations import elapsed
from batchgen.errors import AuthError, BatchgenError, ManifestInvalid, UsageProblem
from batchgen.keys import Redactor
from batchgen.ledger.db import database_errors
from batchgen.progress import LogFile
from batchgen.summary import EXIT_INTERRUPTED, EndOfRun, stopped_by_error
from batchgen.text import shown

AGAIN = "then run the same command again"


class Companions:
    """The log file and the notification targets of one `run` or `resume`."""

    def __init__(
        self,
        command: str,
        log: LogFile | None,
        targets: list[notify.Target],
        clock: Callable[[], float] = time.monotonic,
    ):
        self.command = command
        self.log = log
        self.targets = targets
        self.clock = clock
        self.started = clock()  # before anything is sent: the run's whole length
        self.host = socket.gethostname()
        self.campaigns: list[str] = []  # named in a title, once known
        self.redact = Redactor.from_environment()  # no key in any line kept or sent
        context = click.get_current_context(silent=True)  # None outside a command
        if context is not None:  # nor the password of the ledger's URL
            self.redact.add_ledger((context.find_root().obj or {}).get("ledger"))

    @classmethod
    def open(cls, command: str, log_path: str | None, urls: Sequence[str]) -> Companions:
        """Check the URLs, then open the log file: UsageProblem (exit 2) when either cannot
        be used, before anything is written or sent."""
        targets = notify.targets(urls)
        log = None
        if log_path:
            try:
                log = LogFile.open(log_path)
            except OSError as e:
                raise UsageProblem(
                    f"--log {log_path}: cannot open it to append to ({e.strerror or e})"
                ) from None
        companions = cls(command, log, targets)
        if log is not None:
            log.lines([f"batchgen {command} started (pid {os.getpid()})"])
        return companions

    def watch(self, body: Callable[[], EndOfRun]) -> EndOfRun:
        """Run `body`; at its end, or at the error that ends it, write the summary to the
        log and send it. Errors go on to the CLI, which shows them as it always does."""
        try:
            end = body()
        except (Exception, KeyboardInterrupt) as error:
            self.ended(self._error_end(error))  # the CLI shows the error itself
            raise
        self.ended(end)  # the runner has shown it
        return end

    def took(self) -> str:
        """Where the run ran and how long it took: `run took 3m07s on render-02`."""
        return f"{self.command} took {elapsed(self.clock() - self.started)} on {self.host}"

    def ended(self, end: EndOfRun) -> None:
        """The summary, then where and how long the run ran, to the log and to every
        target (the screen has its own summary: its last line stays the run's)."""
        lines = [*end.lines, self.took()]
        if self.log is not None:
            self.log.lines([self.redact(line) for line in [end.title, *lines]])
        notify.send(
            self.targets,
            end.title,
            "\n".join(lines),
            end.kind,
            redact=self.redact,
            report=self._say,
        )
        if self.log is not None:
            self.log.end()

    def _say(self, line: str) -> None:
        print(shown(line), file=sys.stderr, flush=True)
        if self.log is not None:
            self.log.lines([line])

    def _error_end(self, error: BaseException) -> EndOfRun:
        if isinstance(error, KeyboardInterrupt):
            return stopped_by_error(
                self.command, self.campaigns, "interrupted", EXIT_INTERRUPTED, AGAIN
            )
        if isinstance(error, ManifestInvalid):
            first = [str(p) for p in error.problems[:3]]
            text = f"{len(error.problems)} problem(s) in the manifest: " + "; ".join(first)
            return stopped_by_error(self.command, self.campaigns, self.redact(text), 1, None)
        if isinstance(error, BatchgenError):
            step = (
                f"set a valid OKAYPIC_API_KEY (or OKAYPIC_API_KEYS), {AGAIN}"
                if isinstance(error, AuthError)
                else None
            )
            return stopped_by_error(
                self.command, self.campaigns, self.redact(str(error)), error.exit_code, step
            )
        if isinstance(error, database_errors()):
            text = f"the ledger failed: {error}"
            return stopped_by_error(self.command, self.campaigns, self.redact(text), 1, None)
        text = f"batchgen failed unexpectedly: {type(error).__name__}: {error}"
        return stopped_by_error(self.command, self.campaigns, self.redact(text), 1, None)
