"""One run: the keys, the service (or an in-process sandbox), signals,
the display, the scheduler, downloads, and how it ended (PRODUCT.md §6, §7): the
end-of-run summary and exit code come from `summary.end_of_run`."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from batchgen import catalog, demo
from batchgen.client import Client
from batchgen.errors import AuthError
from batchgen.keys import ApiKey, source
from batchgen.ledger import DEFAULT_OUT, Ledger, LedgerJob
from batchgen.progress import Display, LogFile, Snapshot, make_display
from batchgen.scheduler import AuthFailed, Scheduler, Settings, Summary
from batchgen.summary import (
    LISTED,
    Closing,
    EndOfRun,
    JobNote,
    LedgerFacts,
    end_of_run,
    held_why,
)

if TYPE_CHECKING:
    from batchgen.download import Downloader

SANDBOX_POLL_INTERVAL = 0.2


@dataclass
class RunOptions:
    concurrency: int = 3
    poll_interval: float | None = None  # None: 5 s, or 0.2 s against the in-process sandbox
    retry_delay: float = 2.0
    max_attempts: int = 4
    base_url: str | None = None
    on_unknown: str = "resubmit"
    lost_after: float = 3600.0  # seconds without a usable answer before a task is lost
    download_dir: str | None = None
    sandbox: bool = False
    lease: float = 120.0  # --lease: a runner silent this long is dead (PRODUCT §6)
    log: LogFile | None = None  # --log: every event and a status line each minute, appended
    # The --ledger that the advised commands repeat: the path when it was given on the
    # command line (a ledger from BATCHGEN_LEDGER is found again in the same environment).
    ledger_option: str | None = None


@contextmanager
def service(options: RunOptions, ledger_path: str) -> Iterator[tuple[str, list[ApiKey]]]:
    """(base URL, keys): the ledger's in-process sandbox with its demo key (its tasks
    outlive this process: demo.py), or the real service with the keys from the
    environment."""
    if not options.sandbox:
        yield (options.base_url or catalog.load().base_url), demo.keys_for(ledger_path)
        return
    with demo.sandbox_beside(ledger_path) as base_url:
        yield base_url, [demo.KEY]


def run_ledger(
    ledger_path: str, campaigns: list[str], options: RunOptions, command: str
) -> EndOfRun:
    with service(options, ledger_path) as (base_url, keys):
        ledger = Ledger(ledger_path, create=False)
        for key in keys:
            ledger.redact.add(key.secret, key.label)  # nothing the service echoes is stored
        try:
            return asyncio.run(_run(ledger, campaigns, options, base_url, keys, command))
        finally:
            ledger.close()


async def _run(
    ledger: Ledger,
    campaigns: list[str],
    options: RunOptions,
    base_url: str,
    keys: list[ApiKey],
    command: str = "run",
) -> EndOfRun:
    poll_interval = options.poll_interval or (SANDBOX_POLL_INTERVAL if options.sandbox else 5.0)
    settings = Settings(
        options.concurrency,
        poll_interval,
        options.retry_delay,
        options.max_attempts,
        options.on_unknown,
        options.lost_after,
        options.lease,
    )
    display = make_display(log=options.log)
    clients: dict[str | None, Client] = {
        k.label: Client(base_url, k.secret, redactor=ledger.redact) for k in keys
    }
    downloads: list[asyncio.Task[bool]] = []

    def report(job: LedgerJob | None, text: str) -> None:
        display.event(job, ledger.redact(text))

    downloader = _downloader(ledger, options.download_dir, lambda line: report(None, line))
    ledger_notice, ledger.notify = ledger.notify, lambda line: report(None, line)

    def completed(job: LedgerJob) -> None:
        if downloader is not None:
            downloads.append(
                asyncio.get_running_loop().create_task(downloader.fetch_job(job.campaign, job.id))
            )

    scheduler = Scheduler(
        ledger, clients, settings, report, on_completed=completed, command=command
    )
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, scheduler.interrupt)
    selection = campaigns or None
    eta = _Eta(ledger, selection, scheduler)
    ticker = loop.create_task(_tick(ledger, selection, display, eta))
    try:
        # The scheduler stops by itself on an interrupt (after recording the answers of
        # submissions already on the wire, unless interrupted twice).
        try:
            summary = await scheduler.run(selection)
        except AuthFailed:
            raise AuthError(_refused(keys, options.sandbox)) from None
        if downloads and summary.stopped_for != "interrupted":
            await _until_done_or_halted(downloads, scheduler.halt_all)
    finally:
        # Interrupted: downloads stop at once (`download` saves what is missing later).
        for download in downloads:
            download.cancel()
        await asyncio.gather(*downloads, return_exceptions=True)
        ticker.cancel()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
        display.close(_snapshot(ledger, selection, eta))
        ledger.notify = ledger_notice
        for client in clients.values():
            await client.aclose()
        if downloader is not None:
            await downloader.aclose()
    unsaved = downloader.tally.failed if downloader is not None else 0
    closing = Closing(
        command,
        options.ledger_option,
        campaigns,
        options.sandbox,
        os.path.abspath(options.download_dir) if options.download_dir else None,  # in a message
        options.download_dir == DEFAULT_OUT,
        options.lost_after,
    )
    return _finish(ledger, selection, summary, closing, unsaved)


def _refused(keys: list[ApiKey], sandbox: bool) -> str:
    """Every key refused: which (by label, and the variable they came from)."""
    variable = "the sandbox's demo key" if sandbox else source()
    labels = ", ".join(k.label for k in keys)
    if len(keys) == 1:
        return f"the service refused {variable} ({labels}, 401): it is invalid or revoked"
    return f"the service refused every key of {variable} (401): {labels}; invalid or revoked"


async def _until_done_or_halted(tasks: list[asyncio.Task[bool]], halt: asyncio.Event) -> None:
    """Wait for the downloads to end, or for an interrupt."""
    stopper = asyncio.get_running_loop().create_task(halt.wait())
    either: list[asyncio.Future[Any]] = [asyncio.gather(*tasks, return_exceptions=True), stopper]
    try:
        await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()


def _downloader(
    ledger: Ledger, out_dir: str | None, on_failure: Callable[[str], None]
) -> Downloader | None:
    if out_dir is None:
        return None
    from batchgen.download import Downloader

    return Downloader(ledger, out_dir, on_failure=on_failure)


class _Eta:
    """The run's ETA from the scheduler's learned generation times (the ones pacing uses)
    and the jobs left per (model, duration), re-read from the ledger every REFRESH seconds,
    or less often on a queue so large that reading it takes long (50 ms per 100,000 jobs):
    the read holds the event loop, and so every task's next poll."""

    REFRESH = 5.0
    SHARE = 0.02  # of the run's time spent reading the queue, at most

    def __init__(self, ledger: Ledger, campaigns: list[str] | None, scheduler: Scheduler):
        self.ledger, self.campaigns, self.scheduler = ledger, campaigns, scheduler
        self.queued: dict[tuple[str, int | None], int] = {}
        self.read_at: float | None = None
        self.every = self.REFRESH

    def __call__(self) -> float | None:
        now = time.monotonic()
        if self.read_at is None or now - self.read_at >= self.every:
            self.queued = self.ledger.queued_shapes(self.campaigns)
            self.read_at = time.monotonic()
            self.every = max(self.REFRESH, (self.read_at - now) / self.SHARE)
        return self.scheduler.eta(self.queued)


def _snapshot(
    ledger: Ledger,
    campaigns: list[str] | None,
    eta: _Eta | None = None,
) -> Snapshot:
    counts = ledger.counts(campaigns)
    total, done = sum(counts.values()), counts["completed"] + counts["failed"]
    budget = _budget(ledger, campaigns)
    left = eta() if eta is not None and total > done else None
    return Snapshot(total, done, counts["running"], ledger.money(campaigns).spent, budget, left)


def _budget(ledger: Ledger, campaigns: list[str] | None) -> int | None:
    """The selected campaigns' budgets added up; None when any has no cap."""
    budgets = [ledger.budget_micros(c) for c in (campaigns or ledger.campaign_names())]
    return None if not budgets or None in budgets else sum(b or 0 for b in budgets)


async def _tick(
    ledger: Ledger,
    campaigns: list[str] | None,
    display: Display,
    eta: _Eta,
) -> None:
    # The snapshot reads the ledger: take one only when the display will show it.
    while True:
        await asyncio.sleep(display.refresh_every)
        display.refresh(_snapshot(ledger, campaigns, eta))


def _finish(
    ledger: Ledger,
    campaigns: list[str] | None,
    summary: Summary,
    closing: Closing,
    unsaved: int = 0,
) -> EndOfRun:
    """The end-of-run summary on stderr, and how the run ended. `unsaved`: result files
    whose download failed (the run then exits 3: `download` finishes it)."""
    end = end_of_run(_facts(ledger, campaigns), summary, closing, unsaved)
    for line in [end.title, *end.lines]:
        print(line, file=sys.stderr)
    return end


def _facts(ledger: Ledger, campaigns: list[str] | None) -> LedgerFacts:
    """What the summary says about the ledger, read once the run is over."""
    counts = ledger.counts(campaigns)
    money = ledger.money(campaigns)
    failed = ledger.jobs_in_status(campaigns, "failed", LISTED, recent_first=True)
    held = ledger.jobs_in_status(campaigns, "held", LISTED) if counts["held"] else []
    return LedgerFacts(
        campaigns=ledger.select_campaigns(campaigns),
        counts=counts,
        spent=money.spent,
        in_flight=money.in_flight,
        unknown=money.unknown,
        budget=_budget(ledger, campaigns),
        lost=ledger.held_reasons(campaigns).get("lost", 0) if counts["held"] else 0,
        failed=[
            JobNote(
                j["campaign"],
                j["id"],
                f"after {j['attempts']} attempt(s): {j['last_error'] or 'no reason recorded'}",
            )
            for j in failed
        ],
        held=[
            JobNote(j["campaign"], j["id"], held_why(j["reason"], j["last_error"])) for j in held
        ],
        recovery_file=str(ledger.recovery_path) if ledger.held_count() else None,
        manifests=ledger.manifest_paths(campaigns),
        other_runners=len(ledger.runners()),
    )
