"""What the simulated service really did: the yardstick tests hold batchgen's ledger to.

A `Truth` is a snapshot (plain data, JSON-able both ways) so a test can compare it with
the ledger after a run, whether the sandbox ran in the test's process or in another one
(`GET /_sandbox/truth`, then `Truth.from_dict`).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

from batchgen.money import usd


def payload_key(payload: Any) -> str:
    """One spelling per request body (sorted keys), to count repeated submissions."""
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


@dataclass(frozen=True)
class Submission:
    """One accepted submission: a task was created and charged (even if never answered)."""

    task_id: str
    generation_id: str
    key: str
    kind: str  # "video" | "image"
    payload: dict[str, Any]
    price_micros: int
    submitted_at: float  # sandbox clock
    ends_at: float  # when it completes or fails, on the sandbox clock
    fails: bool
    status: str  # at snapshot time: pending | processing | completed | failed
    answered: str  # how the submit was answered: "200", "drop" or "garbage"
    vanished: bool = False  # every poll of it answers 404 (vanish_rate)
    refused: bool = False  # it fails for its output's content (refuse_rate)


@dataclass(frozen=True)
class MoneyEvent:
    """A change to a key's balance; `micros` is always positive, `kind` says which way."""

    at: float
    key: str
    kind: str  # "charge" | "refund" | "top_up"
    micros: int
    task_id: str | None = None


@dataclass(frozen=True)
class Truth:
    """The service's own record, as of one moment."""

    submissions: list[Submission] = field(default_factory=list)
    money: list[MoneyEvent] = field(default_factory=list)
    balances: dict[str, int] = field(default_factory=dict)
    # route ("POST /api/video/generate", "GET /api/video/tasks/{taskId}", ...) ->
    # status ("200", "429", ..., or "drop") -> count
    responses: dict[str, dict[str, int]] = field(default_factory=dict)
    # injected faults by name: submit.500, submit.429, submit.drop, submit.garbage,
    # submit.refused, task.fail, task.refused, task.vanish, poll.500, poll.drop,
    # poll.garbage, poll.vanished
    faults: dict[str, int] = field(default_factory=dict)
    peak_active: dict[str, int] = field(default_factory=dict)  # per key, ever
    polls: dict[str, int] = field(default_factory=dict)  # per task id, by its owner
    submissions_per_payload: dict[str, int] = field(default_factory=dict)  # payload_key ->
    # per key that created tasks: polls of its tasks made with other credentials
    foreign_polls: dict[str, int] = field(default_factory=dict)
    # per accepted key: status ("200", "429", "402", ..., "drop") -> submits it answered
    submits_by_key: dict[str, dict[str, int]] = field(default_factory=dict)
    # refuse_rate: per key, submits answered 400 for the prompt's content; and per request
    # body (payload_key), how many times it was so refused
    refused_submits: dict[str, int] = field(default_factory=dict)
    refused_payloads: dict[str, int] = field(default_factory=dict)

    def _sum(self, kind: str, key: str | None) -> int:
        return sum(e.micros for e in self.money if e.kind == kind and (key is None or e.key == key))

    def charged_micros(self, key: str | None = None) -> int:
        """Everything charged on acceptance (before refunds), for one key or all."""
        return self._sum("charge", key)

    def refunded_micros(self, key: str | None = None) -> int:
        return self._sum("refund", key)

    def net_charged_micros(self, key: str | None = None) -> int:
        """What the service kept: charges minus refunds."""
        return self.charged_micros(key) - self.refunded_micros(key)

    def completed_micros(self, key: str | None = None) -> int:
        """The price of tasks completed so far (what a faithful ledger calls spent)."""
        return sum(
            s.price_micros
            for s in self.submissions
            if s.status == "completed" and (key is None or s.key == key)
        )

    def statuses(self) -> dict[str, int]:
        """How many accepted tasks are in each state now."""
        return dict(Counter(s.status for s in self.submissions))

    def count(self, route: str, status: int | str) -> int:
        """How many answers `route` gave with `status` (an HTTP code or "drop")."""
        return self.responses.get(route, {}).get(str(status), 0)

    def foreign_poll_count(self, key: str | None = None) -> int:
        """Polls of `key`'s tasks (or any key's) made with credentials not their creator's."""
        if key is None:
            return sum(self.foreign_polls.values())
        return self.foreign_polls.get(key, 0)

    def refusals(self, key: str | None = None) -> int:
        """Refusals for content reasons told so far, for one key or all: submits answered
        400, and tasks that ended `failed` for their output."""
        told = sum(n for k, n in self.refused_submits.items() if key is None or k == key)
        return told + sum(
            1
            for s in self.submissions
            if s.refused and s.status == "failed" and (key is None or s.key == key)
        )

    def by_key(self) -> list[dict[str, Any]]:
        """One row per key, in the order the keys were given (then keys topped up later):
        its balance, what it was charged and refunded (money as USD text), its tasks (all,
        still active, completed), peak of active tasks, polls of its tasks by it and by
        other credentials, its submits per answer, and its refusals for content reasons
        (`refusals`). What `GET /_sandbox/keys` shows."""
        rows = []
        for key, balance in self.balances.items():
            mine = [s for s in self.submissions if s.key == key]
            rows.append(
                {
                    "key": key,
                    "balance_usd": usd(balance),
                    "charged_usd": usd(self.charged_micros(key)),
                    "refunded_usd": usd(self.refunded_micros(key)),
                    "tasks": len(mine),
                    "active": sum(1 for s in mine if s.status in ("pending", "processing")),
                    "completed": sum(1 for s in mine if s.status == "completed"),
                    "peak_active": self.peak_active.get(key, 0),
                    "polls": sum(self.polls.get(s.task_id, 0) for s in mine),
                    "foreign_polls": self.foreign_poll_count(key),
                    "submits": dict(sorted(self.submits_by_key.get(key, {}).items())),
                    "refusals": self.refusals(key),
                }
            )
        return rows

    def duplicate_payloads(self) -> dict[str, int]:
        """Request bodies accepted more than once, with how many times."""
        return {k: n for k, n in self.submissions_per_payload.items() if n > 1}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Truth:
        return cls(
            submissions=[Submission(**s) for s in data.get("submissions", [])],
            money=[MoneyEvent(**m) for m in data.get("money", [])],
            balances=dict(data.get("balances", {})),
            responses={r: dict(c) for r, c in data.get("responses", {}).items()},
            faults=dict(data.get("faults", {})),
            peak_active=dict(data.get("peak_active", {})),
            polls=dict(data.get("polls", {})),
            submissions_per_payload=dict(data.get("submissions_per_payload", {})),
            foreign_polls=dict(data.get("foreign_polls", {})),
            submits_by_key={k: dict(c) for k, c in data.get("submits_by_key", {}).items()},
            refused_submits=dict(data.get("refused_submits", {})),
            refused_payloads=dict(data.get("refused_payloads", {})),
        )
