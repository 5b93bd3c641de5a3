"""The money and follow-up promises of PRODUCT.md §10, checked from the sandbox's own
record of what it was sent and charged, on a ledger of either kind."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from batchgen.sandbox.truth import payload_key
from tests.e2e import recorded_task_ids, rows


def unknown_attempts_per_payload(ledger: Path | str) -> Counter[str]:
    """Attempts of unknown outcome per request (as the sandbox keys its submissions)."""
    found: Counter[str] = Counter()
    for row in rows(
        ledger,
        "SELECT j.request FROM attempts a JOIN jobs j ON j.campaign = a.campaign"
        " AND j.id = a.job_id WHERE a.state = 'unknown' OR a.outcome LIKE 'created (recorded%'",
    ):
        found[payload_key(json.loads(row["request"]))] += 1
    return found


def check_the_promises(
    truth: Any, ledger: Path | str, keys: Iterable[str], budget: int | None = None
) -> None:
    """The §10 promises for one or several runners, from the sandbox's own record: at most
    3 tasks in flight per key, no poll with another key's task, no job paid twice except
    through an unknown outcome the ledger recorded, the budget, every task the ledger
    knows of followed to its end, and the ledger's spend equal to the service's charges."""
    for key in keys:
        assert truth.peak_active.get(key, 0) <= 3, truth.peak_active
    assert truth.foreign_poll_count() == 0
    unknown = unknown_attempts_per_payload(ledger)
    # Paid: every task not refunded (a failed task is refunded, and its job submitted again).
    paid = Counter(payload_key(s.payload) for s in truth.submissions if s.status != "failed")
    for payload, tasks in paid.items():
        assert tasks <= 1 + unknown[payload], (payload, tasks, unknown[payload])
    if budget is not None:  # what the service kept: failed tasks are refunded
        assert truth.net_charged_micros() <= budget
    known = set(recorded_task_ids(ledger))
    # Every task the ledger knows of was followed to its end (none left running).
    assert not [s.task_id for s in truth.submissions if s.task_id in known and s.status in (
        "pending", "processing")]  # fmt: skip
    spent = rows(
        ledger,
        "SELECT COALESCE(SUM(cost_micro_usd), 0) AS s FROM attempts WHERE state = 'completed'",
    )[0]["s"]
    completed = sum(
        s.price_micros for s in truth.submissions if s.status == "completed" and s.task_id in known
    )
    assert spent == completed
