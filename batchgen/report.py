"""`batchgen report`: the cost audit, per group with totals, or per job with its attempts.

Money comes from the attempts table by the state rules in migrations.py: spent =
completed and failed attempts' cost, in flight = running attempts' cost, unknown = the
unit price of attempts of unknown outcome (or left `sending` by a crash), refunded = what
failed tasks were refunded. Sums are integers in SQL; text is made by `money.usd`.

Job columns: `jobs` counts every job of the group, `completed`, `failed` and `queued`
count jobs in exactly that status. Jobs `submitting`, `running` or `held` are in `jobs`
only (so jobs ≥ completed + failed + queued); `--by status` shows each of them.
"""

from __future__ import annotations

import csv
import functools
import io
import itertools
import json
from collections.abc import Iterator
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

from batchgen.ledger import Ledger
from batchgen.money import usd

COLUMNS = (
    "key",
    "jobs",
    "completed",
    "failed",
    "queued",
    "spent_usd",
    "in_flight_usd",
    "unknown_usd",
    "refunded_usd",
    "video_seconds",
    "images",
)
MONEY = {"spent": "spent_usd", "in_flight": "in_flight_usd", "unknown": "unknown_usd",
         "refunded": "refunded_usd"}  # fmt: skip
# `report --jobs --format json`: each job with its money, its attempts nested.
ATTEMPT_COLUMNS = (
    "number",
    "started_at",
    "http_status",
    "outcome",
    "state",
    "task_id",
    "key_label",  # NULL until keys are recorded per attempt (attempts.key_label)
    "unit_price_usd",
    "cost_usd",
    "spent_usd",
    "in_flight_usd",
    "unknown_usd",
    "refunded_usd",
    "error",
    "files",
)
JOB_COLUMNS = (
    "campaign",
    "id",
    "model",
    "status",
    "prompt",
    "tags",
    "duration",
    "variant",
    "price_usd",
    "task_id",
    "spent_usd",
    "in_flight_usd",
    "unknown_usd",
    "refunded_usd",
    "error",
    "files",
)
# `report --jobs --format csv`: one row per attempt (a job without one: one row of zeros),
# the job it belongs to, then the attempt with its own money only, never the job's, so
# each money column sums to the report's total (PRODUCT.md §7). `files` is on the attempt
# whose task made them. (The review's verdict, a job's, goes after `files`.)
CSV_JOB_COLUMNS = ("campaign", "job_id", "model", "status", "prompt", "tags", "duration",
                   "variant")  # fmt: skip
CSV_ATTEMPT_COLUMNS = ("attempt", "started_at", "http_status", "outcome", "state", "task_id",
                       "key_label", "unit_price_usd", "spent_usd", "in_flight_usd",
                       "unknown_usd", "refunded_usd", "error", "files")  # fmt: skip


def render(ledger: Ledger, campaigns: list[str], by: str, fmt: str, per_job: bool) -> str:
    """The report as text ending with a newline: `fmt` is table, csv or json."""
    ledger.select_campaigns(campaigns)
    scope = campaigns or None
    if per_job:
        jobs = _jobs(ledger, scope)
        if fmt == "json":
            return json.dumps({"jobs": list(jobs)}, ensure_ascii=False) + "\n"
        if fmt == "csv":
            return _jobs_csv(jobs)
        return _jobs_table(jobs)
    groups = [_row(r) for r in ledger.report_groups(scope, by)]
    totals = _row(ledger.report_groups(scope, None)[0])
    if fmt == "json":
        return json.dumps({"by": by, "groups": groups, "totals": totals}, ensure_ascii=False) + "\n"
    if fmt == "csv":
        out = _csv_buffer()
        writer = csv.DictWriter(out, COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows([*groups, totals])
        return out.getvalue()
    return _groups_table(ledger, scope, by, groups, totals)


def _row(sums: dict[str, Any]) -> dict[str, Any]:
    """A ROW of §7 from the ledger's integer sums, keys in the contract's order."""
    values = {MONEY.get(k, k): (usd(v) if k in MONEY else v) for k, v in sums.items()}
    return {column: values[column] for column in COLUMNS}


# Per-job reports format a few distinct amounts hundreds of thousands of times.
_usd = functools.lru_cache(maxsize=1 << 16)(usd)


def _jobs(ledger: Ledger, scope: list[str] | None) -> Iterator[dict[str, Any]]:
    """Each job with its attempts nested, streamed from one query."""
    rows = ledger.job_attempts(scope)
    for _, group in itertools.groupby(rows, key=lambda r: (r["campaign"], r["id"])):
        attempts = list(group)
        first = attempts[0]
        sums = {k: sum(a[k] for a in attempts) for k in MONEY}
        files = [json.loads(a["files"]) for a in attempts if a["files"] is not None]
        yield {
            "campaign": first["campaign"],
            "id": first["id"],
            "model": first["model"],
            "status": first["status"],
            "prompt": first["prompt"],
            "tags": json.loads(first["tags"] or "[]"),
            "duration": first["duration"],
            "variant": first["variant"],
            "price_usd": _usd(first["price_micro_usd"]),
            "task_id": first["job_task_id"],
            **{MONEY[k]: _usd(v) for k, v in sums.items()},
            "error": first["last_error"],
            "files": files[-1] if files else [],
            "attempts": [
                {
                    "number": number,
                    "started_at": a["started_at"],
                    "http_status": a["http_status"],
                    "outcome": a["outcome"],
                    "state": a["state"],
                    "task_id": a["task_id"],
                    "key_label": a["key_label"],
                    "unit_price_usd": _usd(a["unit_price_micro_usd"]),
                    "cost_usd": _usd(a["cost_micro_usd"]),
                    **{MONEY[k]: _usd(a[k]) for k in MONEY},
                    "error": a["error"],
                    "files": json.loads(a["files"]) if a["files"] is not None else [],
                }
                for number, a in enumerate(attempts, start=1)
                if a["attempt_id"] is not None
            ],
        }


def _jobs_csv(jobs: Iterator[dict[str, Any]]) -> str:
    """One row per attempt with its own money (see CSV_ATTEMPT_COLUMNS); a job without
    attempts: one row, its money zero. Lists are one cell: tags `;`-joined, files by lines."""
    out = _csv_buffer()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([*CSV_JOB_COLUMNS, *CSV_ATTEMPT_COLUMNS])
    none = {"number": None, **{c: _usd(0) for c in MONEY.values()}}
    for job in jobs:
        head = [job["id"] if c == "job_id" else job[c] for c in CSV_JOB_COLUMNS]
        head[CSV_JOB_COLUMNS.index("tags")] = ";".join(job["tags"])
        for attempt in job["attempts"] or [none]:
            cells = {**attempt, "attempt": attempt.get("number")}
            cells["files"] = "\n".join(attempt.get("files") or [])
            writer.writerow(head + [cells.get(c) for c in CSV_ATTEMPT_COLUMNS])
    return out.getvalue()


def _csv_buffer() -> io.StringIO:
    return io.StringIO(newline="")


def _console(out: io.StringIO) -> Console:
    return Console(file=out, width=200, color_system=None, highlight=False, soft_wrap=True)


def _groups_table(
    ledger: Ledger,
    scope: list[str] | None,
    by: str,
    groups: list[dict[str, Any]],
    totals: dict[str, Any],
) -> str:
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    headers = (by, "jobs", "completed", "failed", "queued", "spent", "in flight", "unknown",
               "refunded", "video s", "images")  # fmt: skip
    for i, header in enumerate(headers):
        table.add_column(header, justify="left" if i == 0 else "right")
    for row in [*groups, totals]:
        table.add_row(
            *(("$" + str(row[c]) if c.endswith("_usd") else str(row[c])) for c in COLUMNS),
            end_section=row is groups[-1] if groups else False,
        )
    out = io.StringIO()
    console = _console(out)
    console.print(table)
    if by == "tag":
        console.print("A job with several tags is in each of their groups, and once in TOTAL.")
    budgets = ledger.budgets(scope)
    money = ledger.money_by_campaign(scope)
    console.print("\nbudget use (spent + in flight + unknown):")
    for name, cap in budgets.items():
        m = money.get(name)
        used = m.spent + m.in_flight + m.unknown if m else 0
        share = f" of ${usd(cap)} ({100 * used / cap:.0f}%)" if cap else ", no budget set"
        console.print(f"  {name}: ${usd(used)}{share}")
    return _tidy(out.getvalue())


def _jobs_table(jobs: Iterator[dict[str, Any]]) -> str:
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    for header in ("campaign/job", "model", "status", "spent", "#", "attempt started",
                   "http", "state", "task", "unit price", "cost", "refunded", "error"):  # fmt: skip
        table.add_column(header)
    for job in jobs:
        name = f"{job['campaign']}/{job['id']}"
        head = [name, job["model"], job["status"], "$" + job["spent_usd"]]
        if not job["attempts"]:
            table.add_row(*head, *[""] * 9)
        for i, a in enumerate(job["attempts"]):
            table.add_row(
                *(head if i == 0 else [""] * 4),
                str(a["number"]),
                a["started_at"],
                str(a["http_status"] or ""),
                a["state"],
                a["task_id"] or "",
                "$" + a["unit_price_usd"],
                "$" + a["cost_usd"],
                "$" + a["refunded_usd"],
                a["error"] or "",
            )
    out = io.StringIO()
    _console(out).print(table)
    return _tidy(out.getvalue())


def _tidy(text: str) -> str:
    """rich pads every cell: drop trailing spaces so the text diffs and greps cleanly."""
    return "\n".join(line.rstrip() for line in text.splitlines()) + "\n"
