"""Following one task to its end with the key that created it: polls paced by what the
run has learned (pacing.py), and each answer recorded (completed, failed, refused, lost).
A recorded task that cannot be polled, and a lost task polled once more, start here too."""

from __future__ import annotations

import time
from datetime import datetime
from functools import partial

from batchgen.driving import KeySlots, RunBase
from batchgen.durations import format_duration
from batchgen.ledger import LedgerJob, now
from batchgen.outcomes import Poll, classify_poll, task_id_problem
from batchgen.pacing import Follow, Key, Started
from batchgen.writer import pause

# A task's progress is shown by `status`: written at most this often per task, since each
# write is an fsync'd commit that holds the event loop (and every other task's poll).
PROGRESS_WRITE_EVERY = 1.0


class Following(RunBase):
    """A run's polls."""

    async def _usable_recorded_task(self, job: LedgerJob) -> bool:
        """Whether the task id the ledger holds can be polled. One that cannot (written by
        an older batchgen: a control character, too long) is an unknown outcome, as the
        same answer would be today; it never wedges the run."""
        problem = task_id_problem(job.task_id)
        if problem is None:
            return True
        status, reason = self._after_unknown(job, counted=False)
        await self.writer.record(lambda: self.ledger.task_id_unusable(job, problem, status, reason))
        self.report(job, f"unknown outcome (the recorded task id is unusable: {problem}): {status}")
        return False

    async def _poll_lost_task(self, job: LedgerJob, slots: KeySlots) -> bool:
        """A task given up as lost is polled once more: True (taken back, to follow) when it
        answers usably, else it stays held."""
        model = self.catalog.model(job.model)
        if model is None or job.task_id is None or task_id_problem(job.task_id) is not None:
            return False
        if self.halt_all.is_set() or slots.out == "refused":
            return False
        outcome = classify_poll(await slots.client.poll(model.poll_path(job.task_id)))
        if outcome.action is Poll.AUTH:
            self._key_out(slots, "refused", outcome.message)
            self._unpolled(job, missing=False)
            return False
        if outcome.action is Poll.ERROR:
            self.report(job, f"still lost ({outcome.message}): held")
            return False
        if not await self.writer.record(partial(self.ledger.task_taken_back, job, self.runner_id)):
            return False  # another runner took it back first, and follows it
        self.report(job, f"lost task {job.task_id} answers again: following it")
        return True

    async def _follow(self, job: LedgerJob, slots: KeySlots) -> bool:
        """Poll a task to its end with the key that created it; True when the job is to
        be submitted again."""
        model = self.catalog.model(job.model)
        assert model is not None and job.task_id is not None
        path = model.poll_path(job.task_id)
        key: Key = (job.model, job.duration)
        follow = self._following(job)
        self.following[job.key] = (key, follow)
        try:
            return await self._poll_until_done(job, slots, path, key, follow)
        finally:
            self.following.pop(job.key, None)

    def _following(self, job: LedgerJob) -> Follow:
        """Start following a task: one this process submitted started between its request
        leaving and now (its answer was just recorded); one taken over from an earlier
        process has only the ledger's stamp of its answer, and teaches nothing."""
        now = self.clock()
        sent = self.sent_at.pop(job.key, None)
        if sent is not None and sent <= now:
            return Follow(Started(sent, now), watching=now, own=True)
        stamp = _timestamp(job.submitted_at)
        # The ledger's stamps are wall-clock times: their age is read on the wall clock,
        # then placed on the run's own (monotonic) clock.
        age = max(0.0, time.time() - stamp) if stamp is not None else 0.0
        return Follow(Started(now - age, now - age), watching=now, own=False)

    async def _poll_until_done(
        self, job: LedgerJob, slots: KeySlots, path: str, key: Key, follow: Follow
    ) -> bool:
        progress: int | None = None
        written = -PROGRESS_WRITE_EVERY  # when progress was last written to the ledger
        errors = 0
        usable_at = self.clock()  # the last usable answer (or the start of following)
        while True:
            delay = self.learned.delay(key, follow, self.clock(), self.settings.poll_interval)
            if errors:
                delay = max(delay, self._backoff(errors))
            if await pause(delay, self.halt_all):
                return False
            if slots.out == "refused":  # another of its tasks was refused meanwhile
                self._unpolled(job, missing=False)
                return False
            asked = self.clock()
            answer = await slots.client.poll(path)
            self.checkpoint("poll_answered")
            outcome = classify_poll(answer, self.catalog.refusal_phrases)
            if outcome.action is not Poll.ERROR:
                usable_at = self.clock()
            if outcome.action is Poll.RUNNING:
                errors = 0
                follow.running(asked, self.clock(), outcome.progress)
                if (
                    outcome.progress is not None
                    and outcome.progress != progress
                    and asked - written >= PROGRESS_WRITE_EVERY
                ):
                    progress, written = outcome.progress, asked
                    self.writer.try_once(partial(self.ledger.task_progress, job, progress))
            elif outcome.action is Poll.COMPLETED:
                observed = self._learn(key, follow, self.clock())
                urls, at = list(outcome.result_urls), now()
                held = {
                    "kind": "completed",
                    "campaign": job.campaign,
                    "job_id": job.id,
                    "task_id": job.task_id,
                    "result_urls": urls,
                    "at": at,
                }
                write = partial(
                    self.ledger.task_completed, job, urls, at=at, observed_seconds=observed
                )
                if not await self.writer.record(write, job, held):
                    self.report(job, "completed (recorded already by another runner)")
                    return False
                self.report(job, "completed")
                self.completions.append(job)
                return False
            elif outcome.action in (Poll.FAILED, Poll.REFUSED):
                # Attempts left: submitted again, by this key if it still submits, else by
                # another, or by a later `resume` if submitting has stopped. A task refused
                # for content reasons would be refused again: never (PRODUCT §2).
                refused = outcome.action is Poll.REFUSED
                left = job.attempts < self.settings.max_attempts and not refused
                again = left and slots.out is None and not self.halt_submits.is_set()
                message = outcome.message or "Generation failed"
                status = "queued" if left else "failed"
                write = partial(self.ledger.task_failed, job, message, status, refused=refused)
                if not await self.writer.record(write):
                    self.report(job, "task failed (recorded already by another runner)")
                    return False
                self.report(
                    job,
                    f"task {'refused for content reasons' if refused else 'failed'} ({message})"
                    + ("; submitting again" if again else ""),
                )
                return again
            elif outcome.action is Poll.AUTH:
                self._key_out(slots, "refused", outcome.message)
                self._unpolled(job, missing=False)
                return False
            else:
                follow.unanswered(asked)
                errors += 1
                if errors in (1, 5) or errors % 20 == 0:
                    self.writer.try_once(
                        partial(
                            self.ledger.log,
                            "poll_error",
                            job.campaign,
                            job.id,
                            task_id=job.task_id,
                            error=outcome.message,
                            count=errors,
                        )
                    )
                silent = self.clock() - usable_at
                if silent > self.settings.lost_after:
                    await self._lose(
                        job,
                        f"no usable answer for {format_duration(silent)} (last: {outcome.message})",
                    )
                    return False

    async def _lose(self, job: LedgerJob, message: str) -> None:
        """Give a task up (PRODUCT.md §2): held, reason lost; its slot is freed."""
        if not await self.writer.record(lambda: self.ledger.task_lost(job, message)):
            return
        self.report(
            job,
            f"lost: {message}; held (`batchgen resume` polls it once more, "
            "`batchgen retry --unknown` submits it anew)",
        )

    def _learn(self, key: Key, follow: Follow, answered: float) -> float | None:
        """Learn from a completion seen in a poll answered at `answered`: the generation
        time observed (None for a task this process did not follow from its submission)."""
        return self.learned.completed(key, follow, answered)


def _timestamp(iso: str | None) -> float | None:
    if not iso:
        return None
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()
