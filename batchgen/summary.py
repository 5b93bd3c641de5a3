"""The end-of-run summary (PRODUCT.md §6, §7): one text, shown on the screen, written to
the `--log` file and sent as the `--notify` message, and the exit code that goes with it.

Pure: values read from the ledger (`LedgerFacts`), how the scheduler says the run ended
(its `Summary`) and the options that shape the advice (`Closing`) in; an `EndOfRun` out.
Every line is plain text made safe to show (`shown`): ids and the service's words come
from outside.

    3 completed, 2 failed, 0 held, 0 queued, 0 running; spent $0.30 of $1.00 budget
    failed: e2e/clip-4: after 4 attempt(s): task failed (Generation failed)
    failed: e2e/clip-5: after 1 attempt(s): rejected by the service: content policy
    files in out/
    look at the results, approve or reject them: `batchgen review`
    some jobs failed: see `batchgen status --campaign e2e`; `batchgen retry --campaign e2e`
    requeues them
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from batchgen.durations import format_duration
from batchgen.keys import is_hash_label
from batchgen.ledger.db import redacted
from batchgen.money import usd
from batchgen.text import shown

if TYPE_CHECKING:
    from batchgen.scheduler import Summary

EXIT_OK, EXIT_FAILED, EXIT_RESUMABLE, EXIT_AUTH, EXIT_INTERRUPTED = 0, 1, 3, 4, 130
LISTED = 5  # failed and held jobs named one by one; the rest are counted
CAMPAIGNS_NAMED = 3  # campaigns named in the title; the rest are counted


@dataclass(frozen=True)
class JobNote:
    """A failed or held job and why, as the ledger has it (already free of keys)."""

    campaign: str
    id: str
    why: str


def held_why(reason: str | None, error: str | None) -> str:
    """Why a job is held, its reason said once: a lost task's error already begins
    `lost: `, an unknown outcome's does not."""
    if reason and error and not error.startswith(f"{reason}:"):
        return f"{reason}: {error}"
    return error or reason or "unknown outcome"


@dataclass(frozen=True)
class LedgerFacts:
    """What the ledger says about the run's campaigns once the run is over."""

    campaigns: list[str]
    counts: dict[str, int]  # queued, submitting, running, completed, failed, held
    spent: int = 0  # micro-dollars
    in_flight: int = 0
    unknown: int = 0
    budget: int | None = None  # the campaigns' budgets added up; None when any has none
    lost: int = 0  # held jobs whose task was lost
    failed: list[JobNote] = field(default_factory=list)  # the first LISTED, latest first
    held: list[JobNote] = field(default_factory=list)  # the first LISTED
    recovery_file: str | None = None  # answers the ledger could not record yet
    manifests: dict[str, str] = field(default_factory=dict)  # campaign -> manifest path
    other_runners: int = 0  # runners still at work on the ledger when this one ended


@dataclass(frozen=True)
class Closing:
    """The options the advice depends on: what to type next, where the files are."""

    command: str = "run"  # run | resume
    ledger: str | None = None  # repeated as --ledger (None: the default ledger)
    selection: Sequence[str] = ()  # --campaign values that the next command repeats
    sandbox: bool = False
    download_dir: str | None = "out"  # None: --no-download
    default_out: bool = True  # download_dir is `review`'s default folder
    lost_after: float = 3600.0

    def command_line(self, *words: str, campaigns: bool = True) -> str:
        """An exact command, quoted for a shell: `batchgen [--ledger L] WORDS [--campaign C]`."""
        parts = ["batchgen"]
        if self.ledger is not None:
            parts += ["--ledger", redacted(self.ledger)]  # a URL's password never shown
        parts += words
        if campaigns:
            for name in self.selection:
                parts += ["--campaign", name]
        return "`" + shlex.join(parts) + "`"

    def resume(self) -> str:
        """The command that goes on with the run: in the sandbox again after a sandbox run
        (its tasks are kept beside the ledger)."""
        return self.command_line("resume", *(["--sandbox"] if self.sandbox else []))


@dataclass(frozen=True)
class EndOfRun:
    """How a run ended: its exit code, a one-line title and the summary's lines."""

    exit_code: int
    title: str
    lines: list[str]

    @property
    def body(self) -> str:
        return "\n".join(self.lines)

    @property
    def kind(self) -> str:
        """success, warning (stopped, resumable) or failure: Apprise's message types."""
        if self.exit_code == EXIT_OK:
            return "success"
        if self.exit_code in (EXIT_RESUMABLE, EXIT_INTERRUPTED):
            return "warning"
        return "failure"


def end_of_run(
    facts: LedgerFacts, summary: Summary, closing: Closing, unsaved: int = 0
) -> EndOfRun:
    """The closing lines (what happened, what to do next) and the exit code. `unsaved`:
    result files whose download failed (the run then exits 3: `download` finishes it)."""
    counts = facts.counts
    lines = [_counts_line(facts), *_key_lines(summary)]
    status = closing.command_line("status")
    lines += _listed("failed", counts["failed"], facts.failed, status)
    lines += _listed("held", counts["held"], facts.held, status)
    if not unsaved:
        lines += _results_lines(counts["completed"], closing)
    if facts.recovery_file:
        lines.append(
            f"answers the ledger could not record yet are kept in {facts.recovery_file}: "
            "the next batchgen command on this ledger records them first"
        )
    resume = closing.resume()
    code, why, advice = EXIT_OK, "all jobs completed", []
    if summary.stopped_for == "interrupted":
        code, why = EXIT_INTERRUPTED, "interrupted"
        advice = [f"interrupted: run {resume} to go on (tasks in flight are kept)"]
    elif summary.stopped_for == "redirect":
        code, why = EXIT_FAILED, "stopped: the service redirects (wrong base URL)"
        advice = [f"stopped: {summary.message}"]
    elif summary.stopped_for == "balance":
        code, why = EXIT_RESUMABLE, "stopped: okaypic balance exhausted"
        advice = [f"the okaypic balance is exhausted: top it up, then {resume}"]
    elif summary.stopped_for == "unreachable":
        code, why = EXIT_RESUMABLE, "stopped: the service cannot be reached"
        advice = [f"{summary.message}; run {resume} when it is back"]
    elif summary.unpolled:
        code = EXIT_RESUMABLE
        why = f"stopped: {sum(summary.unpolled.values())} task(s) wait for their key"
        advice = [_unpolled_advice(summary, closing)]
    elif summary.budget_blocked:
        code, why = EXIT_RESUMABLE, "stopped: budget reached"
        advice = [_budget_advice(len(summary.budget_blocked), facts, summary, closing)]
    elif counts["held"]:
        code = EXIT_RESUMABLE
        why = f"stopped: {counts['held']} job(s) held" + (" (lost)" if facts.lost else "")
        advice = _held_advice(facts, closing)
    elif (counts["queued"] or counts["submitting"] or counts["running"]) and facts.other_runners:
        # Several runners (§6): what is left is in other live runners' hands.
        left = counts["queued"] + counts["submitting"] + counts["running"]
        others = facts.other_runners
        why = f"nothing left for this runner ({left} job(s) with {others} other runner(s))"
        advice = [f"the other runners go on with the rest: {status} shows them"]
    elif counts["queued"] or counts["submitting"] or counts["running"]:
        code, why = EXIT_RESUMABLE, "stopped with work remaining"
        advice = [f"work remains: run {resume}"]
    elif counts["failed"]:
        code, why = EXIT_FAILED, f"ended with {counts['failed']} failed job(s)"
        advice = [f"some jobs failed: see {status}; {closing.command_line('retry')} requeues them"]
    elif unsaved:
        code, why = EXIT_RESUMABLE, f"{unsaved} result file(s) not saved"
    lines += advice
    if unsaved:
        again = (
            "the sandbox's result URLs ended with the run"
            if closing.sandbox
            else f"{closing.command_line('download', '--out', closing.download_dir or '.')}"
            " tries them again"
        )
        lines.append(f"{unsaved} result file(s) could not be saved (see above): {again}")
    title = f"{_title_start(closing.command, facts.campaigns)}: {why} (exit {code})"
    return EndOfRun(code, shown(title), [shown(line) for line in lines])


def stopped_by_error(
    command: str, campaigns: Sequence[str], error: str, exit_code: int, next_step: str | None
) -> EndOfRun:
    """A run that an error ended (no key, a key refused, a manifest or a ledger that cannot
    be used, another runner, an interrupt before the run began): what the error said."""
    lines = [f"error: {error}"]
    if next_step:
        lines.append(next_step)
    why = "stopped by an error" if exit_code != EXIT_INTERRUPTED else "interrupted"
    title = f"{_title_start(command, campaigns)}: {why} (exit {exit_code})"
    return EndOfRun(exit_code, shown(title), [shown(line) for line in lines])


def _title_start(command: str, campaigns: Sequence[str]) -> str:
    named = ", ".join(campaigns[:CAMPAIGNS_NAMED])
    if len(campaigns) > CAMPAIGNS_NAMED:
        named += f" and {len(campaigns) - CAMPAIGNS_NAMED} more"
    return f"batchgen {command}" + (f" {named}" if named else "")


def _counts_line(facts: LedgerFacts) -> str:
    counts = facts.counts
    spend = f"spent ${usd(facts.spent)}" + (
        f" of ${usd(facts.budget)} budget" if facts.budget else ""
    )
    if facts.in_flight:
        spend += f", ${usd(facts.in_flight)} in flight"
    if facts.unknown:
        spend += f", ${usd(facts.unknown)} of unknown outcome"
    return (
        f"{counts['completed']} completed, {counts['failed']} failed, {counts['held']} held, "
        f"{counts['queued'] + counts['submitting']} queued, {counts['running']} running; {spend}"
    )


def _listed(status: str, total: int, notes: list[JobNote], more: str) -> list[str]:
    """`failed: campaign/id: why` for the first few, then how many more (and where)."""
    lines = [f"{status}: {note.campaign}/{note.id}: {note.why}" for note in notes[:LISTED]]
    shown_here = min(len(notes), LISTED)
    if total > shown_here:
        lines.append(f"and {total - shown_here} more {status} job(s): {more}")
    return lines


def _results_lines(completed: int, closing: Closing) -> list[str]:
    """Where the files are and how to look at them (never a command that cannot work: the
    in-process sandbox's result URLs end with the run, so no `download` is advised then)."""
    if not completed:
        return []
    review = ["review"]
    if closing.download_dir is None:
        if closing.sandbox:
            return ["files not saved (--no-download); the sandbox's result URLs ended with the run"]
        download = closing.command_line("download")
        return [
            f"files not saved (--no-download): {download} saves them; "
            f"then {closing.command_line(*review, campaigns=False)}"
        ]
    if not closing.default_out:
        review += ["--out", closing.download_dir]
    return [
        f"files in {closing.download_dir}/",
        "look at the results, approve or reject them: "
        f"{closing.command_line(*review, campaigns=False)}",
    ]


def _key_lines(summary: Summary) -> list[str]:
    """Keys taken out of the run, and tasks left for a key that is absent or refused."""
    lines = []
    for label, why in summary.keys_out.items():
        what = "refused by the service (401)" if why == "refused" else "balance exhausted (402)"
        lines.append(f"key {label}: {what}")
    for label, tasks in summary.unpolled.items():
        state = "not given" if label in summary.missing_keys else "refused"
        lines.append(f"key {label}: {tasks} task(s) not polled (the key is {state})")
    return lines


def _unpolled_advice(summary: Summary, closing: Closing) -> str:
    labels = sorted(summary.unpolled)
    ways = "; ".join(f"{label}: {_given_as(label)}" for label in labels)
    return (
        f"tasks created with key(s) {', '.join(labels)} are polled only with that key under "
        f"the same label: give it again in OKAYPIC_API_KEYS ({ways}), then "
        f"{closing.resume()}"
    )


def _given_as(label: str) -> str:
    """How a key must be given for its label to be `label` (a label holds no key, so a
    named key given unnamed, or the other way round, is another label)."""
    if label == "(unlabelled)":  # recorded before labels existed: polled with the first key
        return "the key first in the list"
    if is_hash_label(label):
        return "the key alone, unnamed"
    return f"`{label}=<the key>`"


def _budget_advice(waiting: int, facts: LedgerFacts, summary: Summary, closing: Closing) -> str:
    blocked = sorted({campaign for campaign, _ in summary.budget_blocked})
    manifests = [facts.manifests[c] for c in blocked if c in facts.manifests]
    if len(manifests) == 1:
        where = f"raise budget_usd in {manifests[0]}, then {_run_again(manifests[0], closing)}"
    else:
        where = "raise it in the manifest and re-run"
    return f"{waiting} job(s) wait: the campaign budget_usd would be exceeded; {where}"


def _run_again(manifest: str, closing: Closing) -> str:
    """`batchgen run MANIFEST`: re-reading the manifest is how a new budget reaches the
    ledger (its jobs already done are not run again)."""
    sandbox = ["--sandbox"] if closing.sandbox else []
    return closing.command_line("run", manifest, *sandbox, campaigns=False)


def _held_advice(facts: LedgerFacts, closing: Closing) -> list[str]:
    held, lost = facts.counts["held"], facts.lost
    lines = []
    if lost:
        lines.append(
            f"{lost} job(s) lost: their task gave no usable answer for over "
            f"{format_duration(closing.lost_after)}; {closing.resume()} polls "
            f"them once more, {closing.command_line('retry', '--unknown')} submits them anew"
        )
    if held > lost:
        lines.append(
            f"{held - lost} job(s) held after an unknown outcome: check them "
            f"({closing.command_line('report', '--jobs')}), "
            f"then {closing.command_line('retry', '--unknown')}"
        )
    return lines
