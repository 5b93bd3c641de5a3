"""`batchgen status`: where the batch stands and what to do next.

`write_json` writes the `--json` object of PRODUCT.md §7, its `jobs` list streamed as
SQLite reads it (a million jobs are never held at once); `status_data` is the same object
as a dict. `format_status` is for a person and never lists all jobs: every figure it
shows comes from an index or a total kept by the ledger, so it answers at once on a
million-job ledger.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from batchgen import demo
from batchgen.durations import elapsed as duration_text
from batchgen.ledger import Ledger
from batchgen.ledger.migrations import JOB_STATUSES
from batchgen.ledger.reads import UNLABELLED
from batchgen.money import usd
from batchgen.text import shown

SHOWN = 10  # running tasks, failures and held jobs listed by the human format
WRITE_EVERY = 1000  # jobs' entries written at a time by write_json


def status_data(ledger: Ledger, campaigns: list[str], jobs: bool = True) -> dict[str, Any]:
    """The `status --json` object as a dict: counts, money, budget, verdicts and one entry
    per job (with `jobs=False` the list is left empty, for the human format, which never
    shows it). The entries are read as `write_json` writes them."""
    if not jobs:
        ledger.select_campaigns(campaigns)
        with ledger.snapshot():
            return {**_head(ledger, campaigns or None), "jobs": []}
    parts: list[str] = []
    write_json(ledger, campaigns, parts.append)
    data: dict[str, Any] = json.loads("".join(parts))
    return data


def write_json(ledger: Ledger, campaigns: list[str], write: Callable[[str], object]) -> None:
    """Write the `status --json` object (PRODUCT.md §7) through `write`, as `json.dumps`
    would spell it: the counts, money and budget, then each job's entry as it is read.

    All of it is one moment of the ledger (one read transaction), even while a runner
    commits; the transaction stays open while the jobs are written, which never blocks a
    runner (WAL).
    """
    ledger.select_campaigns(campaigns)  # an unknown campaign is an error, not an empty answer
    scope = campaigns or None
    with ledger.snapshot():  # one moment of the ledger, even while a runner commits
        head = json.dumps({**_head(ledger, scope), "jobs": []}, ensure_ascii=False)
        assert head.endswith("[]}")
        batch = [head[:-2]]
        for n, entry in enumerate(ledger.status_entries(scope)):
            batch.append(entry if n == 0 else ", " + entry)
            if len(batch) >= WRITE_EVERY:
                write("".join(batch))
                batch.clear()
        batch.append("]}")
        write("".join(batch))


def _head(ledger: Ledger, scope: list[str] | None) -> dict[str, Any]:
    """Everything but the jobs: counts, money, the budget (the selected campaigns' budgets
    added up; null when none has one), each key's use and the review's verdicts."""
    money = ledger.money(scope)
    budgets = [b for b in ledger.budgets(scope).values() if b is not None]
    counts = ledger.counts(scope)
    return {
        "counts": counts,
        "spent_usd": usd(money.spent),
        "in_flight_usd": usd(money.in_flight),
        "unknown_usd": usd(money.unknown),
        "budget_usd": usd(sum(budgets)) if budgets else None,
        # Each key that sent an attempt: label (null: recorded before labels were kept),
        # tasks in flight now, what its completed tasks cost (§6), and how many of its
        # attempts were refused for content reasons (§2: services suspend such keys).
        "keys": [
            {
                "label": key.label,
                "in_flight": key.in_flight,
                "spent_usd": usd(key.money.spent),
                "refusals": key.refusals,
            }
            for key in ledger.key_use(scope)
        ],
        # The runners working on the ledger now (§6): host, pid, key labels, since, heartbeat.
        "runners": ledger.runners(),
        # completed jobs by review verdict (§12)
        "verdicts": ledger.verdict_counts(scope, counts["completed"]),
    }


def format_status(ledger: Ledger, data: dict[str, Any], campaigns: list[str]) -> str:
    """Counts, spend against budget, running tasks, recent failures, held jobs, next steps."""
    scope = campaigns or None
    counts: dict[str, int] = data["counts"]
    names = campaigns or ledger.campaign_names()
    lines = [f"ledger {ledger.name}: {len(names)} campaign(s): {_listed(names)}"]
    total = sum(counts.values())
    lines.append(
        f"jobs: {total} total, "
        + ", ".join(f"{counts[s]} {s}" for s in JOB_STATUSES if counts[s] or s == "completed")
    )
    money = ledger.money(scope)
    budget = data["budget_usd"]
    used = money.spent + money.in_flight + money.unknown
    lines.append(
        f"spent ${usd(money.spent)}"
        + (f" of ${budget} budget" if budget is not None else " (no budget set)")
        + (f", ${usd(money.in_flight)} in flight" if money.in_flight else "")
        + (f", ${usd(money.unknown)} of unknown outcome" if money.unknown else "")
        + (f", ${usd(money.refunded)} refunded" if money.refunded else "")
    )
    budgets = ledger.budgets(scope)
    if len(budgets) > 1:
        by_campaign = ledger.money_by_campaign(scope)
        for name, cap in list(budgets.items())[:20]:
            m = by_campaign.get(name)
            campaign_used = m.spent + m.in_flight + m.unknown if m else 0
            cap_text = f" of ${usd(cap)} ({_percent(campaign_used, cap)})" if cap else ""
            lines.append(f"  {name}: ${usd(campaign_used)} used{cap_text}")
    elif budget is not None:
        cap = next(b for b in budgets.values() if b is not None)
        lines.append(f"  budget used (spent + in flight + unknown): {_percent(used, cap)}")

    lines.extend(_keys(data["keys"]))
    lines.extend(_runners(data["runners"], now=datetime.now(UTC)))

    if counts["completed"]:
        verdicts = data["verdicts"]
        lines.append(
            f"review: {verdicts['approved']} approved, {verdicts['rejected']} rejected, "
            f"{verdicts['unreviewed']} not yet reviewed"
        )

    now = datetime.now(UTC)
    if counts["running"] or counts["submitting"]:
        lines.append("")
        lines.append(f"running ({counts['running']}, submitting {counts['submitting']}):")
        for status in ("running", "submitting"):
            for job in ledger.jobs_in_status(scope, status, SHOWN):
                progress = f"{job['progress']}%" if job["progress"] is not None else status
                since = job["submitted_at"] or job["updated_at"]
                lines.append(
                    f"  {job['campaign']}/{job['id']}  {job['model']}  "
                    f"task {job['task_id'] or '-'}  {progress}  for {_age(since, now)}"
                )
    if counts["failed"]:
        lines.append("")
        lines.append(
            f"recent failures (last {min(SHOWN, counts['failed'])} of {counts['failed']}):"
        )
        for job in ledger.jobs_in_status(scope, "failed", SHOWN, recent_first=True):
            lines.append(
                f"  {job['campaign']}/{job['id']}  {job['model']}  after {job['attempts']} "
                f"attempt(s): {job['last_error'] or 'no reason recorded'}"
            )
    if counts["held"]:
        lines.append("")
        lines.append(f"held, outcome unknown ({counts['held']}):")
        for job in ledger.jobs_in_status(scope, "held", SHOWN):
            lines.append(
                f"  {job['campaign']}/{job['id']}  {job['model']}  "
                f"{job['last_error'] or job['reason'] or 'unknown outcome'}"
            )
    lines.append("")
    refusals = sum(key["refusals"] for key in data["keys"])
    lines.extend(_next_steps(ledger, scope, counts, data["verdicts"], refusals))
    # Each entry is one line; ids, task ids and the service's messages are shown as written.
    return "\n".join(map(shown, lines))


def _keys(keys: list[dict[str, Any]]) -> list[str]:
    """Each key's tasks in flight, spend and refusals, once any attempt was sent with a
    labelled key or refused (a ledger of one unlabelled key without refusals says nothing
    the lines above do not)."""
    if not any(key["label"] is not None or key["refusals"] for key in keys):
        return []
    width = max(len(key["label"] or UNLABELLED) for key in keys)
    lines = [f"keys ({len(keys)}):"]
    for key in keys:
        refusals = key["refusals"]
        lines.append(
            f"  {key['label'] or UNLABELLED:<{width}}  {key['in_flight']} in flight, "
            f"${key['spent_usd']} spent"
            + (f", {refusals} refused for content reasons" if refusals else "")
        )
    return lines


def _runners(runners: list[dict[str, Any]], now: datetime) -> list[str]:
    """The runners at work on the ledger, each with its keys and last heartbeat."""
    if not runners:
        return []
    lines = [f"runners ({len(runners)}):"]
    for runner in runners:
        keys = ", ".join(label or UNLABELLED for label in runner["keys"])
        lines.append(
            f"  pid {runner['pid']} on {runner['host']}  keys {keys}  since "
            f"{runner['since']}, heartbeat {_age(runner['heartbeat'], now)} ago"
        )
    return lines


def _next_steps(
    ledger: Ledger,
    scope: list[str] | None,
    counts: dict[str, int],
    verdicts: dict[str, int],
    refusals: int = 0,
) -> list[str]:
    """What a person should do now, most useful first."""
    steps: list[str] = []
    runners = ledger.runners()
    if runners:
        steps.append(
            f"{len(runners)} runner(s) at work on this ledger; another `batchgen resume` "
            "may join them (the ledger shares the jobs, keys and budget between them)"
        )
    reasons = ledger.queued_reasons(scope)
    if reasons.get("balance"):
        steps.append(
            f"{reasons['balance']} job(s) wait for the okaypic balance: "
            "top up, then `batchgen resume`"
        )
    if reasons.get("budget"):
        steps.append(
            f"{reasons['budget']} job(s) wait for budget: raise budget_usd in the manifest and "
            "`batchgen ingest` it again, then `batchgen resume` (or leave them queued)"
        )
    waiting = sum(n for reason, n in reasons.items() if reason not in ("balance", "budget"))
    unfinished = waiting + counts["running"] + counts["submitting"]
    resume = (
        "`batchgen resume --sandbox`" if demo.in_sandbox(ledger, scope) else "`batchgen resume`"
    )
    if unfinished and not runners:
        steps.append(f"{unfinished} job(s) unfinished: {resume} goes on with them")
    lost = ledger.held_reasons(scope).get("lost", 0) if counts["held"] else 0
    if lost:
        steps.append(
            f"{lost} lost task(s): {resume} polls them once more and takes back "
            "those that answer; `batchgen retry --unknown` submits them anew"
        )
    if counts["held"] > lost:
        steps.append(
            f"{counts['held'] - lost} held job(s): check whether the service made them, "
            "then `batchgen retry --unknown` to run them again"
        )
    if counts["failed"]:
        steps.append(f"{counts['failed']} failed job(s): `batchgen retry` queues them again")
    if refusals:
        steps.append(
            f"{refusals} refusal(s) for content reasons (failed, reason refused): change "
            "those prompts before retrying them; services suspend keys that collect many"
        )
    if verdicts["rejected"]:
        steps.append(
            f"{verdicts['rejected']} rejected result(s): `batchgen retry --rejected` "
            "generates them again (the rejected ones stay in the audit)"
        )
    if verdicts["unreviewed"]:
        steps.append(f"{verdicts['unreviewed']} result(s) to look at: `batchgen review`")
    if not steps:
        steps.append(
            "nothing left to generate"
            + (
                "; `batchgen download --out DIR` saves any result file not yet saved"
                if counts["completed"]
                else ""
            )
        )
    return ["next:", *(f"  - {step}" for step in steps)]


def _listed(names: list[str], most: int = 5) -> str:
    more = f" and {len(names) - most} more" if len(names) > most else ""
    return (", ".join(names[:most]) or "none") + more


def _percent(part: int, whole: int) -> str:
    return f"{100 * part / whole:.0f}%" if whole else "-"


def _age(stamp: str | None, now: datetime) -> str:
    if not stamp:
        return "?"
    try:
        then = datetime.fromisoformat(stamp)
    except ValueError:
        return "?"
    return duration_text(max(0.0, (now - then).total_seconds()))
