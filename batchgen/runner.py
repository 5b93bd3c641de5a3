"""One run: the key, the service (or an in-process sandbox), the runner lock, signals,
the display, the scheduler, downloads, and the exit code (PRODUCT.md §6, §7)."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from batchgen import catalog
from batchgen.client import Client
from batchgen.errors import AuthError
from batchgen.ledger import Ledger, LedgerJob
from batchgen.money import usd
from batchgen.progress import LiveDisplay, PlainLog, Snapshot, make_display
from batchgen.scheduler import AuthFailed, Scheduler, Settings, Summary

if TYPE_CHECKING:
    from batchgen.download import Downloader

SANDBOX_KEY = "okpk_sandbox_demo"
SANDBOX_TIME_SCALE = 0.05  # a demo batch finishes in seconds, not minutes
SANDBOX_POLL_INTERVAL = 0.2
INTERRUPT_GRACE = 1.5  # seconds for answers already on the wire, within the 2 s promise

EXIT_OK, EXIT_FAILED, EXIT_RESUMABLE, EXIT_AUTH, EXIT_INTERRUPTED = 0, 1, 3, 4, 130


@dataclass
class RunOptions:
    concurrency: int = 3
    poll_interval: float | None = None  # None: 5 s, or 0.2 s against the in-process sandbox
    retry_delay: float = 2.0
    max_attempts: int = 4
    base_url: str | None = None
    on_unknown: str = "resubmit"
    download_dir: str | None = None
    sandbox: bool = False


def api_key() -> str:
    """The key from OKAYPIC_API_KEY; never from the command line, never printed."""
    key = os.environ.get("OKAYPIC_API_KEY", "").strip()
    if not key:
        raise AuthError(
            "OKAYPIC_API_KEY is missing: set it to your okaypic API key "
            "(or try `batchgen run MANIFEST --sandbox`)"
        )
    return key


@contextmanager
def service(options: RunOptions) -> Iterator[tuple[str, str]]:
    """(base URL, key): the in-process sandbox with its demo key, or the real service."""
    if not options.sandbox:
        yield (options.base_url or catalog.load().base_url), api_key()
        return
    from batchgen.sandbox import Sandbox, SandboxConfig, serve

    served = serve(Sandbox(SandboxConfig(time_scale=SANDBOX_TIME_SCALE)))
    print(f"sandbox: simulated okaypic service at {served.base_url} (demo key)", file=sys.stderr)
    try:
        yield served.base_url, SANDBOX_KEY
    finally:
        served.stop()


def run_ledger(ledger_path: str, campaigns: list[str], options: RunOptions, command: str) -> int:
    with service(options) as (base_url, key):
        ledger = Ledger(ledger_path, create=False)
        try:
            ledger.acquire_runner(command)
            try:
                return asyncio.run(_run(ledger, campaigns, options, base_url, key))
            finally:
                ledger.release_runner()
        finally:
            ledger.close()


async def _run(
    ledger: Ledger, campaigns: list[str], options: RunOptions, base_url: str, key: str
) -> int:
    poll_interval = options.poll_interval or (SANDBOX_POLL_INTERVAL if options.sandbox else 5.0)
    settings = Settings(
        options.concurrency,
        poll_interval,
        options.retry_delay,
        options.max_attempts,
        options.on_unknown,
    )
    display = make_display()
    client = Client(base_url, key)
    downloads: list[asyncio.Task[bool]] = []
    downloader = _downloader(ledger, options.download_dir)

    def completed(job: LedgerJob) -> None:
        if downloader is not None:
            downloads.append(
                asyncio.get_running_loop().create_task(downloader.fetch_job(job.campaign, job.id))
            )

    scheduler = Scheduler(ledger, client, settings, display.event, on_completed=completed)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, scheduler.interrupt)
    selection = campaigns or None
    eta = _Eta(ledger, selection, scheduler)
    ticker = loop.create_task(_tick(ledger, selection, display, eta))
    work = loop.create_task(scheduler.run(selection))
    try:
        await asyncio.wait(
            [work, loop.create_task(scheduler.halt_all.wait())], return_when=asyncio.FIRST_COMPLETED
        )
        if scheduler.halt_all.is_set() and not work.done():
            await scheduler.finish_interrupted(INTERRUPT_GRACE)
            work.cancel()
        try:
            summary = await work
        except asyncio.CancelledError:
            summary = scheduler.summary
        except AuthFailed:
            raise AuthError(
                "the service refused OKAYPIC_API_KEY (401): it is invalid "
                "or revoked; no job changed state"
            ) from None
        if downloads and summary.stopped_for != "interrupted":
            await asyncio.gather(*downloads, return_exceptions=True)
    finally:
        ticker.cancel()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
        display.close(_snapshot(ledger, selection, eta))
        await client.aclose()
        if downloader is not None:
            await downloader.aclose()
    return _finish(ledger, selection, summary, options)


def _downloader(ledger: Ledger, out_dir: str | None) -> Downloader | None:
    if out_dir is None:
        return None
    from batchgen.download import Downloader

    return Downloader(ledger, out_dir)


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
    display: PlainLog | LiveDisplay,
    eta: _Eta,
) -> None:
    # The snapshot reads the ledger: take one only when the display will show it.
    while True:
        await asyncio.sleep(display.refresh_every)
        display.refresh(_snapshot(ledger, campaigns, eta))


def _finish(
    ledger: Ledger, campaigns: list[str] | None, summary: Summary, options: RunOptions
) -> int:
    """The closing lines (what happened, what to do next) and the exit code."""
    counts = ledger.counts(campaigns)
    money = ledger.money(campaigns)
    budget = _budget(ledger, campaigns)
    spend = f"spent ${usd(money.spent)}" + (f" of ${usd(budget)} budget" if budget else "")
    if money.unknown:
        spend += f", ${usd(money.unknown)} of unknown outcome"
    lines = [
        f"{counts['completed']} completed, {counts['failed']} failed, {counts['held']} held, "
        f"{counts['queued'] + counts['submitting']} queued, {counts['running']} running; {spend}"
    ]
    if options.download_dir:
        lines.append(f"files in {options.download_dir}/")
    elif counts["completed"]:
        lines.append("save the files with `batchgen download --out DIR`")
    code = EXIT_OK
    if summary.stopped_for == "interrupted":
        lines.append("interrupted: run `batchgen resume` to go on (tasks in flight are kept)")
        code = EXIT_INTERRUPTED
    elif summary.stopped_for == "balance":
        lines.append("the okaypic balance is exhausted: top it up, then `batchgen resume`")
        code = EXIT_RESUMABLE
    elif summary.stopped_for == "unreachable":
        lines.append(f"{summary.message}; run `batchgen resume` when it is back")
        code = EXIT_RESUMABLE
    elif summary.budget_blocked:
        lines.append(
            f"{len(summary.budget_blocked)} job(s) wait: the campaign budget_usd "
            "would be exceeded; raise it in the manifest and re-run"
        )
        code = EXIT_RESUMABLE
    elif counts["held"]:
        lines.append(
            f"{counts['held']} job(s) held after an unknown outcome: check them "
            "(`batchgen report --jobs`), then `batchgen retry --unknown`"
        )
        code = EXIT_RESUMABLE
    elif counts["queued"] or counts["submitting"] or counts["running"]:
        lines.append("work remains: run `batchgen resume`")
        code = EXIT_RESUMABLE
    elif counts["failed"]:
        lines.append("some jobs failed: see `batchgen status`; `batchgen retry` requeues them")
        code = EXIT_FAILED
    for line in lines:
        print(line, file=sys.stderr)
    return code
