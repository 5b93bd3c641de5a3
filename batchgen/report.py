"""`batchgen report`: the cost audit, per group with totals, or per job with its attempts.

Money comes from the attempts table by the state rules in ledger/migrations.py: spent =
completed and failed attempts' cost, in flight = running attempts' cost, unknown = the
unit price of attempts of unknown outcome (or left `sending` by a crash), refunded = what
failed tasks were refunded. Sums are integers in SQL; text is made by `money.usd`.

Job columns: `jobs` counts every job of the group, `completed`, `failed` and `queued`
count jobs in exactly that status. Jobs `submitting`, `running` or `held` are in `jobs`
only (so jobs ≥ completed + failed + queued); `--by status` shows each of them.

`--by key`: money goes to the key each attempt was sent with, a job (and its video seconds
or image) to the key of its latest attempt; attempts recorded before key labels were kept
are in `(unlabelled)`, jobs never sent in `(none)`. Every attempt and job is in one group,
so the groups add up to the totals.
"""

from __future__ import annotations

import csv
import functools
import io
import itertools
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from batchgen.ledger import Ledger
from batchgen.money import to_micros, usd
from batchgen.provenance.marks import summary
from batchgen.text import shown

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
    "key_label",  # the label of the key it was sent with (null: recorded before labels)
    "unit_price_usd",
    "cost_usd",
    "spent_usd",
    "in_flight_usd",
    "unknown_usd",
    "refunded_usd",
    "error",
    "files",
    "provenance",  # each file's marks, read on save (PRODUCT §13)
    "verdict",  # the review's verdict on the result this attempt made, and its note
    "note",
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
    "provenance",
    "verdict",  # of its current result (PRODUCT §12)
    "note",
    "reviewer",  # who gave that verdict (null: nobody named)
)
# `report --jobs --format csv`: one row per attempt (a job without one: one row of zeros),
# the job it belongs to, then the attempt with its own money only, never the job's, so
# each money column sums to the report's total (PRODUCT.md §7). `files` is on the attempt
# whose task made them; `verdict` and `note` are the review's on the result this attempt made.
CSV_JOB_COLUMNS = ("campaign", "job_id", "model", "status", "prompt", "tags", "duration",
                   "variant")  # fmt: skip
CSV_ATTEMPT_COLUMNS = ("attempt", "started_at", "http_status", "outcome", "state", "task_id",
                       "key_label", "unit_price_usd", "spent_usd", "in_flight_usd",
                       "unknown_usd", "refunded_usd", "error", "files", "provenance",
                       "verdict", "note")  # fmt: skip


def render(
    ledger: Ledger, campaigns: list[str], by: str, fmt: str, per_job: bool, width: int = 200
) -> str:
    """The report as text ending with a newline: `fmt` is table, csv or json; a table fits
    in `width` columns (see `_fit`)."""
    return "".join(chunks(ledger, campaigns, by, fmt, per_job, width))


def chunks(
    ledger: Ledger, campaigns: list[str], by: str, fmt: str, per_job: bool, width: int = 200
) -> Iterator[str]:
    """The report (see `render`) in pieces, to write as they come: `--jobs` as CSV or JSON
    is written as it is read, so a million jobs are never held at once (a table must see
    every row to size its columns)."""
    ledger.select_campaigns(campaigns)
    scope = campaigns or None
    if per_job:
        jobs = _jobs(ledger, scope)
        if fmt == "json":
            yield from _batched(_jobs_json(jobs))
        elif fmt == "csv":
            yield from _jobs_csv(jobs)
        else:
            yield _jobs_table(jobs, width)
        return
    rows = ledger.report_groups(scope, by)
    groups = [_row(r) for r in rows]
    # Refusals per key (PRODUCT §2) are beside the ROWs of §7, whose columns are fixed.
    refusals = {r["key"]: r["refusals"] for r in rows} if by == "key" else None
    if by == "tag":  # a job with several tags is in several groups: add them up apart
        totals = _row(ledger.report_groups(scope, None)[0])
    else:  # every job is in one group: the totals are the groups added up
        totals = _sum(groups)
    if fmt == "json":
        report = {"by": by, "groups": groups, "totals": totals}
        if refusals is not None:
            report["refusals"] = refusals
        yield json.dumps(report, ensure_ascii=False)
        yield "\n"
        return
    if fmt == "csv":
        out = _csv_buffer()
        writer = csv.DictWriter(out, COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows([*groups, totals])
        yield out.getvalue()
        return
    yield _groups_table(ledger, scope, by, groups, totals, width, refusals)


def _sum(groups: list[dict[str, Any]]) -> dict[str, Any]:
    """The TOTAL row of groups that share no job."""
    totals: dict[str, Any] = {"key": "TOTAL"}
    for column in COLUMNS[1:]:
        if column.endswith("_usd"):
            totals[column] = usd(sum(to_micros(g[column]) for g in groups))
        else:
            totals[column] = sum(g[column] for g in groups)
    return totals


def _batched(pieces: Iterator[str], size: int = 1 << 16) -> Iterator[str]:
    """The same text in pieces of about `size` characters: fewer, larger writes."""
    batch: list[str] = []
    length = 0
    for piece in pieces:
        batch.append(piece)
        length += len(piece)
        if length >= size:
            yield "".join(batch)
            batch, length = [], 0
    if batch:
        yield "".join(batch)


def _jobs_json(jobs: Iterator[dict[str, Any]]) -> Iterator[str]:
    """`{"jobs": [...]}` as json.dumps spells it, one job at a time."""
    yield '{"jobs": ['
    for n, job in enumerate(jobs):
        yield (", " if n else "") + json.dumps(job, ensure_ascii=False)
    yield "]}\n"


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
        marks = [json.loads(a["provenance"]) for a in attempts if a["provenance"] is not None]
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
            "provenance": marks[-1] if marks else [],
            "verdict": first["job_verdict"],
            "note": first["job_note"],
            "reviewer": first["job_reviewer"],
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
                    "provenance": (
                        json.loads(a["provenance"]) if a["provenance"] is not None else []
                    ),
                    "verdict": a["attempt_verdict"],
                    "note": a["attempt_note"],
                }
                for number, a in enumerate(attempts, start=1)
                if a["attempt_id"] is not None
            ],
        }


def _jobs_csv(jobs: Iterator[dict[str, Any]], size: int = 1 << 16) -> Iterator[str]:
    """One row per attempt with its own money (see CSV_ATTEMPT_COLUMNS); a job without
    attempts: one row, its money zero. Lists are one cell: tags `;`-joined, files by lines.
    Written `size` characters or so at a time."""
    out = _csv_buffer()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([*CSV_JOB_COLUMNS, *CSV_ATTEMPT_COLUMNS])
    none = {"number": None, "verdict": None, "note": None, **{c: _usd(0) for c in MONEY.values()}}
    for job in jobs:
        head = [job["id"] if c == "job_id" else job[c] for c in CSV_JOB_COLUMNS]
        head[CSV_JOB_COLUMNS.index("tags")] = ";".join(job["tags"])
        for attempt in job["attempts"] or [none]:
            cells = {**attempt, "attempt": attempt.get("number")}
            cells["files"] = "\n".join(attempt.get("files") or [])
            cells["provenance"] = "\n".join(summary(m) for m in attempt.get("provenance") or [])
            writer.writerow(head + [cells.get(c) for c in CSV_ATTEMPT_COLUMNS])
        if out.tell() >= size:
            yield out.getvalue()
            out.seek(0)
            out.truncate()
    yield out.getvalue()


def _csv_buffer() -> io.StringIO:
    return io.StringIO(newline="")


def _console(out: io.StringIO, width: int = 200) -> Console:
    # Text lines wrap at the width too (soft_wrap off), like the tables.
    # Names, prompts and errors are plain text: never read as markup or emoji codes.
    return Console(
        file=out,
        width=width,
        color_system=None,
        highlight=False,
        soft_wrap=False,
        markup=False,
        emoji=False,
    )


# --- tables that fit the terminal ---------------------------------------------------------


@dataclass
class _Column:
    header: str
    cells: list[str]
    right: bool = False  # numbers and money: right-aligned
    fold: bool = False  # long text that may wrap within its column

    def __post_init__(self) -> None:
        # Ids, prompts and the service's messages: plain text, control characters shown.
        self.cells = [shown(cell) for cell in self.cells]

    def natural(self) -> int:
        return max([len(self.header), *(len(cell) for cell in self.cells)])


def _fit(
    columns: list[_Column], width: int, when_zero: list[str], when_narrow: list[str]
) -> tuple[list[_Column], dict[str, int], list[str]]:
    """The columns to show in `width` and how wide the folding ones may be: first leave out
    the `when_zero` columns that say nothing (every cell $0.00 or 0), then fold long text,
    then leave out `when_narrow` columns in order. Returns the columns, their widths, and
    the headers left out (said under the table)."""

    def needed(shown: list[_Column], folded: dict[str, int]) -> int:
        return sum(folded.get(c.header, c.natural()) for c in shown) + 3 * (len(shown) - 1)

    shown = list(columns)
    dropped: list[str] = []
    folded: dict[str, int] = {}
    zero = {"0", "$0.00", ""}
    for header in when_zero:
        if needed(shown, folded) <= width:
            break
        column = next((c for c in shown if c.header == header), None)
        if column is not None and all(cell in zero for cell in column.cells):
            shown.remove(column)
            dropped.append(header)
    narrowing: list[str | None] = [None, *when_narrow]
    for leave_out in narrowing:
        if leave_out is not None:
            column = next((c for c in shown if c.header == leave_out), None)
            if column is None:
                continue
            shown.remove(column)
            dropped.append(leave_out)
        folding = [c for c in shown if c.fold]
        excess = needed(shown, {}) - width
        folded = {}
        for c in folding:  # share the excess among folding columns, none below 12
            cut = min(excess, max(c.natural() - 12, 0))
            if cut > 0:
                folded[c.header] = c.natural() - cut
                excess -= cut
        if needed(shown, folded) <= width:
            break
    return shown, folded, dropped


def _fitted_table(
    columns: list[_Column],
    width: int,
    when_zero: list[str],
    when_narrow: list[str],
    sections: frozenset[int] = frozenset(),
) -> tuple[Table, list[str]]:
    """A rich table of `columns` no wider than `width` (see `_fit`); `sections`: the row
    indices after which a rule is drawn."""
    shown, folded, dropped = _fit(columns, width, when_zero, when_narrow)
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    for c in shown:
        fold = c.header in folded
        table.add_column(
            c.header,
            justify="right" if c.right else "left",
            overflow="fold" if fold else "ellipsis",
            no_wrap=not fold,
            width=folded.get(c.header),
        )
    for i in range(len(columns[0].cells)):
        table.add_row(*(Text(c.cells[i]) for c in shown), end_section=i in sections)
    return table, dropped


def _left_out(dropped: list[str]) -> str | None:
    if not dropped:
        return None
    return f"(left out to fit the width: {', '.join(dropped)}; --format csv has them all)"


def _groups_table(
    ledger: Ledger,
    scope: list[str] | None,
    by: str,
    groups: list[dict[str, Any]],
    totals: dict[str, Any],
    width: int,
    refusals: dict[str, int] | None = None,
) -> str:
    """`refusals` (by key): each key's attempts refused for content reasons, a column of
    the table after `failed`."""
    headers = (by, "jobs", "completed", "failed", "queued", "spent", "in flight", "unknown",
               "refunded", "video s", "images")  # fmt: skip
    rows = [*groups, totals]
    columns = [
        _Column(
            header,
            [("$" + str(row[c]) if c.endswith("_usd") else str(row[c])) for row in rows],
            right=i > 0,
            fold=i == 0,
        )
        for i, (header, c) in enumerate(zip(headers, COLUMNS, strict=True))
    ]
    if refusals is not None:
        counts = [refusals.get(g["key"], 0) for g in groups]
        cells = [str(n) for n in [*counts, sum(counts)]]
        columns.insert(headers.index("failed") + 1, _Column("refused", cells, right=True))
    table, dropped = _fitted_table(
        columns,
        width,
        when_zero=["images", "video s", "refunded", "in flight", "unknown", "refused", "queued"],
        when_narrow=["images", "video s", "queued", "failed"],
        sections=frozenset({len(groups) - 1} if groups else ()),
    )
    out = io.StringIO()
    console = _console(out, width)
    console.print(table)
    if note := _left_out(dropped):
        console.print(note)
    if by == "tag":
        console.print("A job with several tags is in each of their groups, and once in TOTAL.")
    if by == "key":
        console.print(
            "Money is in the group of the key each attempt was sent with; a job counts in "
            "its latest attempt's key's group."
        )
    budgets = ledger.budgets(scope)
    money = ledger.money_by_campaign(scope)
    console.print("\nbudget use (spent + in flight + unknown):")
    for name, cap in budgets.items():
        m = money.get(name)
        used = m.spent + m.in_flight + m.unknown if m else 0
        share = f" of ${usd(cap)} ({100 * used / cap:.0f}%)" if cap else ", no budget set"
        console.print(f"  {name}: ${usd(used)}{share}")
    return _tidy(out.getvalue())


def _jobs_table(jobs: Iterator[dict[str, Any]], width: int) -> str:
    """One row per attempt with its own money, like the CSV (a job without one: one row)."""
    headers = ("campaign/job", "model", "status", "#", "started", "state", "task", "spent",
               "in flight", "unknown", "refunded", "error", "provenance",
               "verdict", "reviewer")  # fmt: skip
    cells: list[list[str]] = [[] for _ in headers]
    for job in jobs:
        name = f"{job['campaign']}/{job['id']}"
        for i, a in enumerate(job["attempts"] or [None]):
            first = i == 0
            values = [
                name if first else "",
                job["model"] if first else "",
                job["status"] if first else "",
                str(a["number"]) if a else "",
                a["started_at"] if a else "",
                a["state"] if a else "",
                (a["task_id"] or "") if a else "",
                *(("$" + a[m]) if a else "$0.00" for m in MONEY.values()),
                (a["error"] or "") if a else "",
                "; ".join(summary(m) for m in a["provenance"]) if a else "",
                (a["verdict"] or "") if a else "",
                # who judged the job's current result, on the attempt that made it
                (job["reviewer"] or "") if a and a["task_id"] == job["task_id"] else "",
            ]
            for column, value in zip(cells, values, strict=True):
                column.append(value)
    columns = [
        _Column(
            header,
            column,
            right=header in ("#", "spent", "in flight", "unknown", "refunded"),
            fold=header in ("campaign/job", "error"),
        )  # fmt: skip
        for header, column in zip(headers, cells, strict=True)
    ]
    table, dropped = _fitted_table(
        columns,
        width,
        when_zero=[
            "refunded",
            "in flight",
            "unknown",
            "error",
            "provenance",
            "verdict",
            "reviewer",
        ],  # fmt: skip
        when_narrow=["started", "task", "model", "provenance", "error"],
    )
    out = io.StringIO()
    console = _console(out, width)
    console.print(table)
    if note := _left_out(dropped):
        console.print(note)
    return _tidy(out.getvalue())


def _tidy(text: str) -> str:
    """rich pads every cell: drop trailing spaces so the text diffs and greps cleanly."""
    return "\n".join(line.rstrip() for line in text.splitlines()) + "\n"
