"""Pacing simulator: batchgen's real pacing (batchgen/pacing.py `Learned`, `Follow`) and
"poll every interval" side by side, on a virtual clock, against tasks that report progress
by the sandbox's own function (batchgen/progress_curves.py `task_state`), for every
progress behaviour, at real scale and at test scale (PRODUCT.md §11).

The model:
- 3 slots, never more than 3 tasks in flight; a slot submits its next task as soon as it
  has seen its task complete (plus `overhead`: the ledger commits between the two).
- Each request has a round trip drawn uniformly from the scale's latency range; the
  service acts at the midpoint (a submit creates the task, a poll reads its state).
- A task of (model, duration) takes the catalog's typical time x the scale's time scale
  x a jitter uniform in 1 ± `jitter`; its progress curve gets its own random draw.
- batchgen: a fresh `Learned` per behaviour (an empty ledger), so the first tasks of each
  model pay for learning, as in a real first run.
- "every interval": poll, wait `--poll-interval` after each answer, poll again (the
  3-thread script of bench/schedule.py).
- span: first submission sent -> last completion seen; ideal: the same tasks' generation
  times, in the same order, on 3 slots never idle; lag: completion seen - true end.

Run: python bench/simulate.py [--tasks 1200] [--seeds 1] [--scales real test] [--modes ...]
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import common  # noqa: I001  (puts the repository on sys.path first)

from batchgen import catalog
from batchgen.pacing import Follow, Key, Learned, Started
from batchgen.progress_curves import PROGRESS_MODES, task_state

SLOTS = 3
# The shapes of bench/schedule.py: typical 40-80 s in the catalog.
SHAPES: list[Key] = [
    ("grok-video-3", 5),
    ("jimeng-video-seedance-2.0-fast", 5),
    ("grok-video-3", 10),
    ("jimeng-video-seedance-2.0-fast", 10),
    ("grok-video-3", 15),
    ("jimeng-video-seedance-2.0", 5),
]


@dataclass(frozen=True)
class Scale:
    name: str
    time_scale: float
    poll_interval: float
    submit_rtt: tuple[float, float]  # seconds, uniform
    poll_rtt: tuple[float, float]
    overhead: float  # seen completed -> next submit sent (ledger commits)


SCALES = {
    # tasks of 90-220 s, polled over the internet
    "real": Scale("real", 2.5, 5.0, (0.3, 0.8), (0.05, 0.25), 0.01),
    # the sandbox on 127.0.0.1: tasks of 1.1-2.6 s, a few ms per request
    "test": Scale("test", 0.03, 0.1, (0.002, 0.008), (0.001, 0.005), 0.002),
}


@dataclass(frozen=True)
class Task:
    key: Key
    seconds: float  # generation time
    draw: float  # its progress curve's random number


@dataclass
class Result:
    span: float
    ideal: float
    polls: list[int]
    lags: list[float]
    peak_active: int
    too_many: int  # submits that found 3 tasks active at the service (a 429)

    @property
    def over(self) -> float:
        return self.span / self.ideal - 1


def make_tasks(n: int, scale: Scale, jitter: float, seed: int) -> list[Task]:
    models = catalog.load()
    rng = random.Random(seed)
    tasks = []
    for key in itertools.islice(itertools.cycle(SHAPES), n):
        model = models.model(key[0])
        assert model is not None
        typical = model.typical_seconds(key[1]) * scale.time_scale
        tasks.append(Task(key, typical * rng.uniform(1 - jitter, 1 + jitter), rng.random()))
    return tasks


def ideal_span(seconds: list[float], slots: int = SLOTS) -> float:
    free = [0.0] * slots
    for s in seconds:
        heapq.heappush(free, heapq.heappop(free) + s)
    return max(free)


def simulate(
    tasks: list[Task], mode: str, scale: Scale, batchgen: bool, seed: int, typical: Callable
) -> Result:
    rng = random.Random(seed * 7919 + 1)
    interval = scale.poll_interval
    learned = Learned(typical)
    queue = iter(enumerate(tasks))
    events: list[tuple[float, int, int]] = []  # (time, seq, slot index): a slot wakes
    seq = itertools.count()
    active: list[float] = []  # end times of the tasks the service runs
    state: dict[int, dict] = {}
    first_sent: float | None = None
    last_seen = 0.0
    polls, lags = [0] * len(tasks), [0.0] * len(tasks)
    peak = too_many = 0

    def submit(slot: int, now: float) -> None:
        nonlocal first_sent, peak, too_many
        item = next(queue, None)
        if item is None:
            return
        index, task = item
        rtt = rng.uniform(*scale.submit_rtt)
        created = now + rtt / 2
        live = [e for e in active if e > created]
        if len(live) >= SLOTS:
            too_many += 1
        active[:] = [*live, created + task.seconds]
        peak = max(peak, len(active))
        first_sent = now if first_sent is None else first_sent
        answered = now + rtt
        follow = Follow(Started(now, answered), watching=answered, own=True)
        state[slot] = {"index": index, "task": task, "created": created, "follow": follow}
        heapq.heappush(events, (answered + schedule(slot, answered), next(seq), slot))

    def schedule(slot: int, now: float) -> float:
        s = state[slot]
        if batchgen:
            return learned.delay(s["task"].key, s["follow"], now, interval)
        return interval  # every interval: sleep, then poll again

    for slot in range(SLOTS):
        submit(slot, 0.0)
    while events:
        asked, _, slot = heapq.heappop(events)
        s = state[slot]
        task, follow = s["task"], s["follow"]
        rtt = rng.uniform(*scale.poll_rtt)
        moment, answered = asked + rtt / 2, asked + rtt
        elapsed = moment - s["created"]
        polls[s["index"]] += 1
        if elapsed < task.seconds:
            _, progress = task_state(mode, elapsed, task.seconds, task.draw)
            follow.running(asked, answered, progress)
            heapq.heappush(events, (answered + schedule(slot, answered), next(seq), slot))
            continue
        lags[s["index"]] = answered - (s["created"] + task.seconds)
        last_seen = max(last_seen, answered)
        if batchgen:
            learned.completed(task.key, follow, answered)
        submit(slot, answered + scale.overhead)
    assert first_sent is not None
    return Result(
        span=last_seen - first_sent,
        ideal=ideal_span([t.seconds for t in tasks]),
        polls=polls,
        lags=lags,
        peak_active=peak,
        too_many=too_many,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=1200)
    parser.add_argument("--scales", nargs="+", choices=list(SCALES), default=list(SCALES))
    parser.add_argument("--modes", nargs="+", choices=PROGRESS_MODES, default=PROGRESS_MODES)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--seeds", type=int, default=1, help="batches per cell: seed..seed+n-1")
    parser.add_argument("--jitter", type=float, default=0.10, help="generation time ± share")
    args = parser.parse_args()
    common.header("simulate: batchgen's pacing vs polling every interval, virtual clock")
    models = catalog.load()

    def typical(key: Key) -> float | None:
        model = models.model(key[0])
        return model.typical_seconds(key[1]) if model is not None else None

    started = time.perf_counter()
    verdicts: list[bool] = []
    seeds = range(args.seed, args.seed + args.seeds)
    for scale in (SCALES[name] for name in args.scales):
        batches = {seed: make_tasks(args.tasks, scale, args.jitter, seed) for seed in seeds}
        low = min(t.seconds for tasks in batches.values() for t in tasks)
        high = max(t.seconds for tasks in batches.values() for t in tasks)
        print(
            f"## {scale.name} scale: {args.tasks} tasks of {low:.1f}-{high:.1f} s on {SLOTS}"
            f" slots, --poll-interval {scale.poll_interval}, jitter ±{args.jitter:.0%}, "
            f"round trip submit {scale.submit_rtt[0] * 1000:g}-{scale.submit_rtt[1] * 1000:g}"
            f" ms, poll {scale.poll_rtt[0] * 1000:g}-{scale.poll_rtt[1] * 1000:g} ms; "
            f"{len(seeds)} batch(es) per row (medians; worst span/ideal in brackets)\n"
        )
        print(
            "| progress | batchgen span/ideal | every interval span/ideal | batchgen polls/task"
            " | every interval polls/task | batchgen mean lag | every interval mean lag"
            " | 429s | batchgen span ≤ every interval | target |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|")
        for mode in args.modes:
            ours = [simulate(batches[s], mode, scale, True, s, typical) for s in seeds]
            theirs = [simulate(batches[s], mode, scale, False, s, typical) for s in seeds]
            wins = sum(a.span <= b.span for a, b in zip(ours, theirs, strict=True))
            met = (
                max(o.over for o in ours) <= 0.03
                and all(o.too_many == 0 for o in ours)
                and _median(ours, _polls) < _median(theirs, _polls)
                and wins == len(ours)
            )
            verdicts.append(met)
            print(
                f"| {mode} | {_ratio(ours)} | {_ratio(theirs)} "
                f"| {_median(ours, _polls):.2f} | {_median(theirs, _polls):.2f} "
                f"| {_seconds(_median(ours, _lag))} | {_seconds(_median(theirs, _lag))} "
                f"| {sum(o.too_many for o in ours)} | {wins}/{len(ours)} "
                f"| {common.verdict(met)} |"
            )
        print()
    print(
        f"target (span within 3 % of ideal, no 429, fewer polls than every-interval and a "
        f"span no longer, in every batch): met in {sum(verdicts)} of {len(verdicts)} rows; "
        f"simulated in {time.perf_counter() - started:.1f} s"
    )


def _polls(result: Result) -> float:
    return statistics.fmean(result.polls)


def _lag(result: Result) -> float:
    return statistics.fmean(result.lags)


def _median(results: list[Result], measure: Callable[[Result], float]) -> float:
    return statistics.median(measure(r) for r in results)


def _ratio(results: list[Result]) -> str:
    median = statistics.median(1 + r.over for r in results)
    if len(results) == 1:
        return f"{median:.4f}"
    return f"{median:.4f} ({1 + max(r.over for r in results):.4f})"


def _seconds(value: float) -> str:
    return f"{value * 1000:.1f} ms" if value < 1 else f"{value:.2f} s"


if __name__ == "__main__":
    main()
