"""Seeded fault decisions: which request gets a 500, a drop, garbage, a spurious 429...

Each (channel, knob) pair has its own `random.Random`, seeded from the config's seed and
its own name, and draws exactly once per request of its channel whatever the rate (even
0). So the n-th submit's faults depend only on the seed and n: two sandboxes with the
same seed answer the same sequence of requests the same way, and changing one knob's rate
never shifts another knob's decisions. Submits and polls are separate channels, so a
client that polls more or less often still meets the same submit faults.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from typing import Literal

from batchgen.sandbox.config import SandboxConfig


@dataclass(frozen=True)
class SubmitFaults:
    """What happens to one submit, decided before it is handled."""

    error_500: bool
    spurious_429: bool
    reject: bool  # a 400 to a valid request
    fail: bool  # the task, if created, ends `failed`
    drop: bool
    garbage: bool
    vanish: bool  # the task, if created, answers 404 to every poll
    latency_s: float
    jitter: float  # factor applied to the task's generation time, in [1-j, 1+j]
    progress_draw: float  # the task's own random number for its progress curve, in [0, 1)


@dataclass(frozen=True)
class PollFaults:
    """What happens to one poll, decided before it is handled."""

    error_500: bool
    drop: bool
    garbage: bool
    latency_s: float


class FaultDice:
    """The sandbox's dice: one seeded stream per (channel, knob); not thread-safe alone."""

    def __init__(self, config: SandboxConfig) -> None:
        self._config = config
        self._streams: dict[tuple[str, str], random.Random] = {}
        self.submits = 0  # submits drawn so far

    def skip_submits(self, n: int) -> None:
        """Draw for `n` submits and forget them: a sandbox that loads a saved state goes on
        with the decisions its n+1-th submit would have met."""
        for _ in range(n):
            self.submit()

    def _stream(self, channel: str, knob: str) -> random.Random:
        stream = self._streams.get((channel, knob))
        if stream is None:
            # str seeds hash with SHA-512: stable across runs and machines (not PYTHONHASHSEED)
            stream = random.Random(f"batchgen-sandbox/{self._config.seed}/{channel}/{knob}")
            self._streams[(channel, knob)] = stream
        return stream

    def _chance(self, channel: str, knob: str, rate: float) -> bool:
        return self._stream(channel, knob).random() < rate

    def _latency(self, channel: str) -> float:
        low, high = self._config.latency
        return self._stream(channel, "latency").uniform(low, high)

    def submit(self) -> SubmitFaults:
        c = self._config
        self.submits += 1
        return SubmitFaults(
            error_500=self._chance("submit", "500", c.submit_500_rate),
            spurious_429=self._chance("submit", "429", c.spurious_429_rate),
            reject=self._chance("submit", "reject", c.reject_rate),
            fail=self._chance("submit", "fail", c.fail_rate),
            drop=self._chance("submit", "drop", c.drop_rate),
            garbage=self._chance("submit", "garbage", c.garbage_rate),
            vanish=self._chance("submit", "vanish", c.vanish_rate),
            latency_s=self._latency("submit"),
            jitter=self._stream("submit", "jitter").uniform(1 - c.jitter, 1 + c.jitter),
            progress_draw=self._stream("submit", "progress").random(),
        )

    def refusal(self, prompt: object) -> Literal["submit", "output"] | None:
        """Whether a prompt is refused for content reasons, and when: from the seed and the
        prompt's text only (not the request's place in the sequence), so the same prompt
        is refused the same way every time it is sent. See SandboxConfig.refuse_rate."""
        rate = self._config.refuse_rate
        if not rate or not isinstance(prompt, str):
            return None
        seed = f"batchgen-sandbox/{self._config.seed}/refuse/{prompt}".encode()
        draw = int.from_bytes(hashlib.sha256(seed).digest()[:8], "big") / 2**64
        if draw < rate / 2:
            return "submit"
        return "output" if draw < rate else None

    def poll(self) -> PollFaults:
        c = self._config
        return PollFaults(
            error_500=self._chance("poll", "500", c.poll_500_rate),
            drop=self._chance("poll", "drop", c.drop_rate),
            garbage=self._chance("poll", "garbage", c.garbage_rate),
            latency_s=self._latency("poll"),
        )
