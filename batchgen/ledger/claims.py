"""Several runners, one ledger (PRODUCT.md §6): the ledger arbitrates, never a process's
memory. Each runner has a row with a heartbeat; a job is claimed, a key's slot taken and
the job's cost reserved in one write transaction before its request leaves; the tasks and
unanswered requests of a dead runner are taken over by a live one.

The rules themselves are pure (batchgen/arbitration.py); this module reads their facts
and writes their outcome, each in one transaction.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from batchgen.arbitration import (
    Claim,
    ClaimFacts,
    RunnerState,
    beat_every,
    claim_verdict,
    runner_state,
)
from batchgen.ledger.base import LedgerJob, _campaign_filter, now
from batchgen.ledger.scheduling import SchedulingMixin, _ledger_job
from batchgen.processes import Holder, liveness, this_process


@dataclass(frozen=True)
class Orphan:
    """An attempt in flight whose runner is gone, now this runner's to settle or follow."""

    attempt_id: int
    campaign: str
    job_id: str
    state: str  # sending (its answer never came: unknown outcome) | running (follow it)


@dataclass(frozen=True)
class Takeover:
    """What one look at the other runners found: the orphans this runner took, and how
    many tasks of its keys wait on a runner that is late but not yet dead."""

    orphans: list[Orphan]
    waiting_on_late: int
    # Orphaned running tasks whose key no live runner holds, per label: nobody polls them.
    unheld: dict[str, int]


class ClaimsMixin(SchedulingMixin):
    """Runner rows, heartbeats, claims and takeovers."""

    # ---------------------------------------------------------------- runners

    def register_runner(self, command: str, key_labels: list[str | None], lease: float) -> str:
        """Add this process as a runner; its id, which its attempts carry."""
        runner_id = secrets.token_hex(8)
        self._runner_labels = [label or "" for label in key_labels]
        self._lease = lease
        with self.transaction(patient=True):
            self._insert_runner(runner_id, command, self._clock())
        return runner_id

    def _clock(self) -> str:
        """Now, as the ledger's heartbeats are stamped and aged: the database server's clock
        on PostgreSQL, which every runner on every machine reads alike (their own clocks
        may differ); this machine's for a SQLite file, which one machine shares."""
        if not self.on_postgres:
            return now()
        (stamp,) = self.conn.execute(
            "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC',"
            ' \'YYYY-MM-DD"T"HH24:MI:SS.US"Z"\')'
        ).fetchone()
        return str(stamp)

    def _insert_runner(self, runner_id: str, command: str, started_at: str) -> None:
        me = this_process()
        self.conn.execute(
            "INSERT INTO runners (id, host, pid, machine, process_start, command, key_labels,"
            " lease_seconds, started_at, heartbeat_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                runner_id,
                me.host,
                me.pid,
                me.machine,
                me.process_start,
                command,
                json.dumps(self._runner_labels),
                self._lease,
                started_at,
                self._clock(),
            ),
        )

    def heartbeat(self, runner_id: str, command: str) -> bool:
        """Say this runner lives. False when another runner had taken it for dead (its row
        was gone): it is added again, and its caller finds which of its tasks were taken."""
        with self.transaction():
            cursor = self.conn.execute(
                "UPDATE runners SET heartbeat_at = ? WHERE id = ?", (self._clock(), runner_id)
            )
            if cursor.rowcount:
                return True
            self._insert_runner(runner_id, command, self._clock())
            self._event("runner_revived", runner=runner_id)
        return False

    def unregister_runner(self, runner_id: str) -> None:
        """This runner stops: its tasks still in flight are left for any runner to adopt
        at once (a request still unanswered becomes an unknown outcome for it)."""
        with self.transaction():
            self.conn.execute(
                "UPDATE attempts SET runner_id = NULL WHERE runner_id = ?"
                " AND (state = 'sending' OR state = 'running')",
                (runner_id,),
            )
            self.conn.execute("DELETE FROM runners WHERE id = ?", (runner_id,))

    def runners(self) -> list[dict[str, Any]]:
        """The runners not known to be dead: host, pid, key labels, since, heartbeat."""
        if "runners" not in self.dialect.tables(self.conn):
            return []  # a ledger from before m010, read without migrating it
        me = this_process()
        stamp = _seconds(self._clock())
        live = []
        for row in self.query("SELECT * FROM runners ORDER BY started_at, id"):
            if _state(row, stamp, me) is RunnerState.DEAD:
                continue
            live.append(
                {
                    "host": row["host"],
                    "pid": row["pid"],
                    "keys": [label or None for label in json.loads(row["key_labels"])],
                    "since": row["started_at"],
                    "heartbeat": row["heartbeat_at"],
                }
            )
        return live

    def take_over(self, runner_id: str, campaigns: list[str] | None = None) -> Takeover:
        """In one transaction: forget the runners that are dead, and make this runner the
        owner of the attempts in flight that no live runner owns (a dead runner's, or left
        by one that stopped) in the selected campaigns: every unanswered request (any key:
        its outcome is unknown, whoever settles it) and every running task of a key this
        runner holds (it polls them with that key). Counts the tasks of its keys whose
        runner is late: not known dead yet, so waited for."""
        me = this_process()
        stamp = _seconds(self._clock())
        where, params = _campaign_filter(campaigns, "a.campaign")
        # An attempt recorded before key labels (NULL) is polled with any runner's first key.
        labels = [*self._runner_labels, ""]
        with self.transaction():
            states = {
                row["id"]: _state(row, stamp, me)
                for row in self.query("SELECT * FROM runners WHERE id != ?", [runner_id])
            }
            dead = [rid for rid, state in states.items() if state is RunnerState.DEAD]
            for rid in dead:
                self.conn.execute("DELETE FROM runners WHERE id = ?", (rid,))
                self._event("runner_dead", runner=rid)
            late = [rid for rid, state in states.items() if state is RunnerState.LATE]
            # No live runner owns it: NULL, or a runner whose row is gone.
            orphaned = (
                "(a.runner_id IS NULL OR NOT EXISTS"
                " (SELECT 1 FROM runners r WHERE r.id = a.runner_id))"
            )
            mine = f"COALESCE(a.key_label, '') IN ({', '.join('?' * len(labels))})"
            rows = self.conn.execute(
                "SELECT a.id, a.campaign, a.job_id, a.state FROM attempts a"
                f" WHERE (a.state = 'sending' OR (a.state = 'running' AND {mine}))"
                f" AND {orphaned} {where} ORDER BY a.id",
                [*labels, *params],
            ).fetchall()
            orphans = [Orphan(*row) for row in rows]
            for orphan in orphans:
                self.conn.execute(
                    "UPDATE attempts SET runner_id = ? WHERE id = ?", (runner_id, orphan.attempt_id)
                )
                self._event(
                    "adopted",
                    orphan.campaign,
                    orphan.job_id,
                    attempt=orphan.attempt_id,
                    runner=runner_id,
                )
            waiting = 0
            if late:
                (waiting,) = self.conn.execute(
                    "SELECT COUNT(*) FROM attempts a WHERE a.state = 'running'"
                    f" AND {mine} AND a.runner_id IN ({', '.join('?' * len(late))}) {where}",
                    [*labels, *late, *params],
                ).fetchone()
            held_by_others = {
                label
                for row in self.query("SELECT key_labels FROM runners WHERE id != ?", [runner_id])
                for label in json.loads(row["key_labels"])
            }
            unheld = {
                label: n
                for label, n in self.conn.execute(
                    "SELECT a.key_label, COUNT(*) FROM attempts a WHERE a.state = 'running'"
                    f" AND NOT {mine} AND {orphaned} {where} GROUP BY a.key_label",
                    [*labels, *params],
                )
                if label not in held_by_others
            }
        return Takeover(orphans, waiting, unheld)

    def owned_jobs(self, runner_id: str) -> list[LedgerJob]:
        """The jobs whose running task this runner follows, in ingestion order."""
        rows = self.conn.execute(
            f"{self._LEDGER_JOB_WITH_KEY} WHERE status = 'running' AND EXISTS"
            " (SELECT 1 FROM attempts a WHERE a.campaign = jobs.campaign"
            " AND a.job_id = jobs.id AND a.task_id = jobs.task_id AND a.state = 'running'"
            " AND a.runner_id = ?) ORDER BY campaign, position",
            (runner_id,),
        )
        return [_ledger_job(row) for row in rows]

    def owns(self, runner_id: str, attempt_id: int) -> bool:
        """Is this attempt still this runner's (it may have been taken over meanwhile)?"""
        row = self.conn.execute(
            "SELECT runner_id FROM attempts WHERE id = ?", (attempt_id,)
        ).fetchone()
        return row is not None and row[0] == runner_id

    # ---------------------------------------------------------------- claims

    def claim(
        self,
        job: LedgerJob,
        runner_id: str,
        key_label: str | None,
        concurrency: int,
        max_attempts: int,
    ) -> tuple[Claim, int | None]:
        """Claim a queued job for one submission, in one write transaction: the job must be
        queued, the key must have a slot free (its attempts in flight, every runner's,
        fewer than `concurrency`), and the job's cost must fit its campaign's budget with
        everything committed (spent, in flight, unknown and unanswered). Then the attempt
        is recorded, `sending`, with the key's label and this runner's id: the commit that
        must precede the request (a crash after sending leaves a trace), and the
        reservation of the job's cost and of the key's slot. (verdict, attempt id)."""
        with self.transaction() as db:
            row = db.execute(
                "SELECT status, attempts FROM jobs WHERE campaign = ? AND id = ?",
                (job.campaign, job.id),
            ).fetchone()
            in_flight = self.key_in_flight(key_label)
            budget = self.budget_micros(job.campaign)
            money = self.money([job.campaign]) if budget is not None else None
            facts = ClaimFacts(
                job_status=None if row is None else row[0],
                job_attempts=0 if row is None else row[1],
                key_in_flight=in_flight,
                budget=budget,
                committed=0 if money is None else money.spent + money.in_flight + money.unknown,
                price=job.price_micros,
            )
            verdict = claim_verdict(facts, concurrency, max_attempts)
            if row is not None:
                job.attempts = row[1]
            if verdict is not Claim.CLAIMED:
                return verdict, None
            stamp = now()
            (attempt_id,) = db.execute(
                "INSERT INTO attempts (campaign, job_id, started_at, fingerprint,"
                " unit_price_micro_usd, state, key_label, runner_id)"
                " VALUES (?, ?, ?, ?, ?, 'sending', ?, ?) RETURNING id",
                (
                    job.campaign,
                    job.id,
                    stamp,
                    job.fingerprint,
                    job.price_micros,
                    key_label,
                    runner_id,
                ),
            ).fetchone()
            db.execute(
                "UPDATE jobs SET status = 'submitting', reason = NULL, updated_at = ?"
                " WHERE campaign = ? AND id = ? AND status = 'queued'",
                (stamp, job.campaign, job.id),
            )
        job.status = "submitting"
        return Claim.CLAIMED, int(attempt_id)

    def key_in_flight(self, key_label: str | None) -> int:
        """The key's attempts sending or running, every runner's (from key_totals)."""
        (n,) = self.conn.execute(
            "SELECT COALESCE(SUM(attempts), 0) FROM key_totals"
            " WHERE key_label = ? AND (state = 'sending' OR state = 'running')",
            (key_label or "",),
        ).fetchone()
        return int(n)

    def in_flight_anywhere(self, campaign: str) -> int:
        """Attempts of this campaign in flight, any runner's: money that may come back."""
        (n,) = self.conn.execute(
            "SELECT COALESCE(SUM(attempts), 0) FROM attempt_totals"
            " WHERE campaign = ? AND (state = 'sending' OR state = 'running')",
            (campaign,),
        ).fetchone()
        return int(n)


def _seconds(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def _state(row: dict[str, Any], stamp: float, me: Holder) -> RunnerState:
    age = stamp - _seconds(row["heartbeat_at"])
    lease = float(row["lease_seconds"])
    process = liveness(Holder(row["pid"], row["host"], row["machine"], row["process_start"]), me)
    return runner_state(age, lease, beat_every(lease), process)
