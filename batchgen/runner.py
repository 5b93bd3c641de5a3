"""One run: the key, the service (or an in-process sandbox), the runner lock, signals,
the display, the scheduler, downloads, and the exit code (PRODUCT.md §6, §7)."""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from batchgen import catalog
from batchgen.client import Client
from batchgen.durations import format_duration
from batchgen.errors import AuthError, LedgerWriteFailed
from batchgen.keys import api_key
from batchgen.ledger import DEFAULT_OUT, DEFAULT_PATH, Ledger, LedgerJob
from batchgen.money import usd
from batchgen.progress import LiveDisplay, PlainLog, Snapshot, make_display
from batchgen.scheduler import WRITE_WAIT, AuthFailed, Scheduler, Settings, Summary
from batchgen.text import shown

if TYPE_CHECKING:
    from batchgen.download import Downloader

SANDBOX_KEY = "okpk_sandbox_demo"
SANDBOX_TIME_SCALE = 0.05  # a demo batch finishes in seconds, not minutes
SANDBOX_POLL_INTERVAL = 0.2

EXIT_OK, EXIT_FAILED, EXIT_RESUMABLE, EXIT_AUTH, EXIT_INTERRUPTED = 0, 1, 3, 4, 130


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
    force: bool = False  # take over a runner lock held from another host


@contextmanager
def service(options: RunOptions, ledger_path: str) -> Iterator[tuple[str, str]]:
    """(base URL, key): the in-process sandbox with its demo key, or the real service."""
    if not options.sandbox:
        yield (options.base_url or catalog.load().base_url), api_key()
        return
    from batchgen.sandbox import Sandbox, SandboxConfig, serve

    # Seeded by the attempts the ledger already holds: the same files for the same history,
    # and a later run on the ledger (say after `retry --rejected`) never repeats a task id.
    reader = Ledger.read_only(ledger_path)
    try:
        seed = reader.attempt_count()
    finally:
        reader.close()
    served = serve(Sandbox(SandboxConfig(time_scale=SANDBOX_TIME_SCALE, seed=seed)))
    print(f"sandbox: simulated okaypic service at {served.base_url} (demo key)", file=sys.stderr)
    try:
        yield served.base_url, SANDBOX_KEY
    finally:
        served.stop()


def run_ledger(ledger_path: str, campaigns: list[str], options: RunOptions, command: str) -> int:
    with service(options, ledger_path) as (base_url, key):
        ledger = Ledger(ledger_path, create=False)
        ledger.redact.add(key)  # nothing the service echoes of it is stored
        try:
            warning = ledger.acquire_runner(command, force=options.force)
            if warning:
                print(f"warning: {warning}", file=sys.stderr, flush=True)
            try:
                return asyncio.run(_run(ledger, campaigns, options, base_url, key))
            finally:
                _release(ledger)
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
        options.lost_after,
    )
    display = make_display()
    client = Client(base_url, key, redactor=ledger.redact)
    downloads: list[asyncio.Task[bool]] = []
    downloader = _downloader(ledger, options.download_dir)

    def completed(job: LedgerJob) -> None:
        if downloader is not None:
            downloads.append(
                asyncio.get_running_loop().create_task(downloader.fetch_job(job.campaign, job.id))
            )

    def report(job: LedgerJob | None, text: str) -> None:
        display.event(job, ledger.redact(text))

    scheduler = Scheduler(ledger, client, settings, report, on_completed=completed)
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
            raise AuthError(
                "the service refused OKAYPIC_API_KEY (401): it is invalid "
                "or revoked; no job changed state"
            ) from None
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
        await client.aclose()
        if downloader is not None:
            await downloader.aclose()
    unsaved = downloader.tally.failed if downloader is not None else 0
    return _finish(ledger, selection, summary, options, unsaved)


def _results_lines(ledger: Ledger, completed: int, options: RunOptions) -> list[str]:
    """Where the files are and how to look at them (never a command that cannot work: the
    in-process sandbox's result URLs end with the run, so no `download` is advised then)."""
    if not completed:
        return []
    review = "batchgen" + ("" if str(ledger.path) == DEFAULT_PATH else f" --ledger {ledger.path}")
    review += " review"
    if options.download_dir is None:
        if options.sandbox:
            return ["files not saved (--no-download); the sandbox's result URLs ended with the run"]
        return [f"files not saved (--no-download): `batchgen download` saves them; then `{review}`"]
    if options.download_dir != DEFAULT_OUT:
        review += f" --out {options.download_dir}"
    return [
        f"files in {options.download_dir}/",
        f"look at the results, approve or reject them: `{review}`",
    ]


async def _until_done_or_halted(tasks: list[asyncio.Task[bool]], halt: asyncio.Event) -> None:
    """Wait for the downloads to end, or for an interrupt."""
    stopper = asyncio.get_running_loop().create_task(halt.wait())
    either: list[asyncio.Future[Any]] = [asyncio.gather(*tasks, return_exceptions=True), stopper]
    try:
        await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()


def _release(ledger: Ledger) -> None:
    """Give the runner lock back; a ledger that cannot be written now (locked, full) keeps
    it, and the next runner takes it over since this process will be gone."""
    try:
        ledger.try_write(ledger.release_runner, WRITE_WAIT)
    except LedgerWriteFailed as e:
        print(
            f"warning: could not release the runner lock ({e}); the next run takes it over",
            file=sys.stderr,
        )


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
    ledger: Ledger,
    campaigns: list[str] | None,
    summary: Summary,
    options: RunOptions,
    unsaved: int = 0,
) -> int:
    """The closing lines (what happened, what to do next) and the exit code. `unsaved`:
    result files whose download failed (the run then exits 3: `download` finishes it)."""
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
    if not unsaved:
        lines.extend(_results_lines(ledger, counts["completed"], options))
    code = EXIT_OK
    if ledger.recovery_path.exists():
        lines.append(
            f"answers the ledger could not record yet are kept in {ledger.recovery_path}: "
            "the next batchgen command on this ledger records them first"
        )
    if summary.stopped_for == "interrupted":
        lines.append("interrupted: run `batchgen resume` to go on (tasks in flight are kept)")
        code = EXIT_INTERRUPTED
    elif summary.stopped_for == "redirect":
        lines.append(f"stopped: {summary.message}")
        code = EXIT_FAILED
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
        lost = ledger.held_reasons(campaigns).get("lost", 0)
        if lost:
            lines.append(
                f"{lost} job(s) lost: their task gave no usable answer for over "
                f"{format_duration(options.lost_after)}; `batchgen resume` polls them once "
                "more, `batchgen retry --unknown` submits them anew"
            )
        if counts["held"] > lost:
            lines.append(
                f"{counts['held'] - lost} job(s) held after an unknown outcome: check them "
                "(`batchgen report --jobs`), then `batchgen retry --unknown`"
            )
        code = EXIT_RESUMABLE
    elif counts["queued"] or counts["submitting"] or counts["running"]:
        lines.append("work remains: run `batchgen resume`")
        code = EXIT_RESUMABLE
    elif counts["failed"]:
        lines.append("some jobs failed: see `batchgen status`; `batchgen retry` requeues them")
        code = EXIT_FAILED
    elif unsaved:
        code = EXIT_RESUMABLE  # generated, not yet saved: work remains for `download`
    if unsaved:
        again = (
            "the sandbox's result URLs ended with the run"
            if options.sandbox
            else f"`batchgen download --out {options.download_dir}` tries them again"
        )
        lines.append(f"{unsaved} result file(s) could not be saved (see above): {again}")
    for line in lines:
        print(shown(line), file=sys.stderr)
    return code
