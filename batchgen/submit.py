"""One submission, start to end: the ledger's claim (the job, a slot of its key, its
cost), the request, and what its answer means, recorded before anything else happens
(PRODUCT.md §6: the submit-outcome table). Returns how the job goes on."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

from batchgen.arbitration import Claim
from batchgen.driving import Ended, KeySlots, RunBase
from batchgen.durations import format_duration
from batchgen.ledger import LedgerJob, now
from batchgen.outcomes import Submit, classify_submit
from batchgen.pacing import slot_wait
from batchgen.writer import pause

SLOT_SUMMARY_AFTER = 10  # 429s before the first "refused with 429" line
SLOT_SUMMARY_EVERY = 60.0  # seconds between two such lines while the 429s go on

# How a submission that created no known task closes its attempt:
# (attempt state, the outcome in words, the job's next status, the reason it waits)
CLOSING: dict[Submit, tuple[str, str, str, str | None]] = {
    Submit.WAIT_FOR_SLOT: ("not_sent", "slot taken", "queued", None),
    Submit.NOT_SENT: ("not_sent", "not sent", "queued", None),
    Submit.SERVER_ERROR: ("error", "server error", "queued", None),
    Submit.REJECTED: ("rejected", "rejected", "failed", None),
    Submit.REFUSED: ("rejected", "refused", "failed", "refused"),  # never resubmitted (§2)
    Submit.AUTH: ("not_sent", "unauthorized", "queued", None),
    Submit.BALANCE: ("not_sent", "insufficient balance", "queued", "balance"),
    Submit.REDIRECTED: ("not_sent", "redirected", "queued", None),
}


class Submitting(RunBase):
    """A run's submissions."""

    async def _submit(self, job: LedgerJob, slots: KeySlots) -> Ended | None:
        """Submit with `slots`' key until a task is created (None: follow it), or the job
        must wait, has ended, went to another runner, or its key stopped submitting."""
        slot_waits = not_sent = 0
        while True:
            if self.halt_submits.is_set() or slots.out is not None:
                return Ended.REQUEUED
            model = self.catalog.model(job.model)
            assert model is not None
            if not await self.writer.writable():
                return Ended.REQUEUED
            async with self._key_check(slots):
                if self.halt_submits.is_set() or slots.out is not None:  # while we waited
                    return Ended.REQUEUED
                # The ledger decides: the job, a slot of this key, the job's cost reserved.
                claim, attempt = await self.writer.record(
                    partial(
                        self.ledger.claim,
                        job,
                        self.runner_id,
                        slots.label,
                        self.settings.concurrency,
                        self.settings.max_attempts,
                    )
                )
                if attempt is None:
                    return await self._not_claimed(job, claim)
                if self.halt_submits.is_set():  # halted while the claim waited for the ledger
                    await self._close_unsent(job, attempt)
                    return Ended.REQUEUED
                me = asyncio.current_task()
                assert me is not None
                self.on_wire.add(me)
                try:
                    self.checkpoint("intent_committed")
                    # A runner paused past its lease (a closed laptop lid) may find its claim
                    # taken over by another runner: it sends nothing for that job.
                    if not self.ledger.owns(self.runner_id, attempt):
                        self.report(
                            job,
                            "not sent: another runner took this one's claim over "
                            "(it was paused past its lease)",
                        )
                        return Ended.TAKEN
                    self.sent_at[job.key] = self.clock()
                    answer = await slots.client.submit(model.submit_path, job.request)
                    self.checkpoint("submit_answered")
                    if answer.status is not None and answer.status != 401:
                        slots.accepted = True
                    outcome = classify_submit(answer, self.catalog.refusal_phrases)
                    ended = await self._record_submit(job, attempt, outcome)
                    if ended is not None:
                        return ended
                finally:
                    self.on_wire.discard(me)
            action, message = outcome.action, outcome.message
            if action is Submit.CREATED:
                self.checkpoint("task_id_committed")
                job.key_label = slots.label
                by = f" (key {slots.label})" if len(self.keys) > 1 else ""
                self.report(job, f"submitted, task {outcome.task_id}{by}")
                return None
            if action is Submit.UNKNOWN:
                await pause(self._backoff(job.attempts), self.halt_submits)
                continue
            if action is Submit.WAIT_FOR_SLOT:
                slot_waits += 1
                self._note_refusal(answer.retry_after, outcome.retry_after)
                delay = slot_wait(
                    outcome.retry_after, slot_waits, self.settings.retry_delay, self.rng
                )
                await pause(delay, self.halt_submits)
            elif action is Submit.NOT_SENT:
                not_sent += 1
                if not_sent >= self.settings.max_attempts:
                    self.summary.message = f"cannot reach the service: {message}"
                    self._halt("unreachable")
                    return Ended.REQUEUED
                await pause(self._backoff(not_sent), self.halt_submits)
            elif action is Submit.SERVER_ERROR:
                self.report(job, f"server error on submit ({message}); will retry")
                await pause(self._backoff(job.attempts), self.halt_submits)
            elif action is Submit.REJECTED:
                self.report(job, f"failed: rejected by the service: {message}")
                return Ended.DONE
            elif action is Submit.REFUSED:
                self.report(job, f"failed: refused for content reasons: {message}")
                return Ended.DONE
            elif action is Submit.AUTH:
                self._key_out(slots, "refused", message)
                return Ended.REQUEUED
            elif action is Submit.BALANCE:
                self._key_out(slots, "balance", message)
                return Ended.REQUEUED
            elif action is Submit.REDIRECTED:
                self.summary.message = (
                    f"the service redirects submissions ({message}), so the base URL is wrong "
                    "for every job; nothing was created. Set --base-url or OKAYPIC_BASE_URL "
                    "to the service itself, then `batchgen resume`"
                )
                self.report(job, f"not submitted: {message}; stopping the run")
                self._halt("redirect")
                self.halt_all.set()
                return Ended.DONE

    async def _not_claimed(self, job: LedgerJob, claim: Claim) -> Ended:
        """The ledger refused the claim: what it means for this job."""
        if claim is Claim.EXHAUSTED:
            error = f"gave up after {job.attempts} attempt(s)"
            if await self.writer.record(partial(self.ledger.fail_job, job, error)):
                self.report(job, "failed: attempts exhausted")
            return Ended.DONE
        if claim is Claim.NO_SLOT:
            return Ended.NO_SLOT
        if claim is Claim.BUDGET:
            return Ended.BUDGET
        return Ended.TAKEN

    async def _record_submit(self, job: LedgerJob, attempt: int, outcome: Any) -> Ended | None:
        """Record what a submission's answer means: None to go on (follow the task, or act
        on the answer), else how the job's driving ends here."""
        action, message = outcome.action, outcome.message
        if action is Submit.CREATED:
            task_id, status = outcome.task_id, outcome.status or 200
            assert task_id is not None
            answered_at = now()
            held = {
                "kind": "created",
                "campaign": job.campaign,
                "job_id": job.id,
                "attempt": attempt,
                "task_id": task_id,
                "http_status": status,
                "answered_at": answered_at,
            }
            write = partial(
                self.ledger.attempt_created,
                job,
                attempt,
                status,
                task_id,
                answered_at,
                self.runner_id,
            )
            if not await self.writer.record(write, job, held):
                self.report(
                    job,
                    f"task {task_id} was created after another runner had settled this "
                    "submission as unknown: kept on its attempt for the audit, not followed",
                )
                return Ended.TAKEN
            return None
        if action is Submit.UNKNOWN:
            return await self._unknown(job, attempt, message or "no usable answer")
        state, words, job_status, reason = CLOSING[action]
        recorded = await self.writer.record(
            lambda: self.ledger.attempt_ended(
                job,
                attempt,
                state=state,
                outcome=words,
                counted=outcome.counts_as_attempt,
                job_status=job_status,
                http_status=outcome.status,
                error=message,
                reason=reason,
            )
        )
        return None if recorded else self._settled_elsewhere(job)

    def _settled_elsewhere(self, job: LedgerJob) -> Ended:
        self.report(job, "another runner settled this submission meanwhile: leaving it to it")
        return Ended.TAKEN

    async def _close_unsent(self, job: LedgerJob, attempt: int) -> None:
        """An intent committed for a request that will not be sent after all."""
        await self.writer.record(
            lambda: self.ledger.attempt_ended(
                job,
                attempt,
                state="not_sent",
                outcome="not sent",
                counted=False,
                job_status="queued",
            )
        )

    async def _unknown(self, job: LedgerJob, attempt: int, message: str) -> Ended | None:
        """Record an attempt of unknown outcome; None when the job may be submitted again."""
        status, reason = self._after_unknown(job)
        recorded = await self.writer.record(
            lambda: self.ledger.attempt_ended(
                job,
                attempt,
                state="unknown",
                outcome="unknown",
                counted=True,
                job_status=status,
                error=message,
                reason=reason,
            )
        )
        if not recorded:
            return self._settled_elsewhere(job)
        self.report(job, f"unknown outcome ({message}): {status}")
        return None if status == "queued" else Ended.DONE

    def _note_refusal(self, raw: str | None, honoured: float | None) -> None:
        """Count a 429; now and then (not once per 429) say how many there were."""
        at = self.clock()
        self._refused += 1
        if self._refused_since is None:
            self._refused_since = at
        due = (
            self._refused >= SLOT_SUMMARY_AFTER
            if self._refused_reported is None
            else at - self._refused_reported >= SLOT_SUMMARY_EVERY
        )
        if not due:
            return
        if honoured is not None:
            how = f"waiting {honoured:g} s as its Retry-After asks"
        elif raw is not None:
            how = f"waiting with backoff (its Retry-After {ascii(raw[:40])} is not 1-600 s)"
        else:
            how = "waiting with backoff"
        span = format_duration(max(at - self._refused_since, 1.0))
        self.report(
            None,
            f"the service refused {self._refused} submission(s) with 429 (slot taken) "
            f"in {span}; {how}",
        )
        refused, retry_after = self._refused, raw
        self.writer.try_once(
            lambda: self.ledger.log("slot_waits", refused=refused, retry_after=retry_after)
        )
        self._refused, self._refused_since, self._refused_reported = 0, at, at

    @asynccontextmanager
    async def _key_check(self, slots: KeySlots) -> AsyncIterator[None]:
        """Until the service has answered a key once without 401, submit one job at a time
        with it: a wrong key then costs one request, and no other job changes state."""
        if slots.accepted:
            yield
            return
        async with slots.lock:
            if not slots.accepted:
                yield
                return
        # Accepted while this one waited: go at once, not behind the others that waited.
        yield
