"""`batchgen plan`: what a manifest would do and cost, computed offline.

No API call and no write: the ledger, when there is one, is opened read-only (and is
never created), so a plan can be made while a run is going on.

The wall time is estimated for the keys given (each key has SLOTS slots, PRODUCT §6):
`keys_given` counts them from the environment as a run would, by label only.
"""

from __future__ import annotations

import heapq
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Protocol

from batchgen import catalog
from batchgen.durations import elapsed as duration_text
from batchgen.errors import AuthError, NoLedger
from batchgen.job import Campaign, Job, fingerprint
from batchgen.keys import KEY_VARIABLE, KEYS_VARIABLE, api_keys, given
from batchgen.ledger import Ledger
from batchgen.ledger.db import is_url, redacted
from batchgen.money import usd

SLOTS = 3  # the service's limit per API key (catalog: max_active_tasks_per_key)


class ManifestLike(Protocol):
    """What `plan` needs of a checked manifest (validate.Manifest)."""

    campaign: Campaign
    jobs: list[Job]


@dataclass(frozen=True)
class KeysGiven:
    """The API keys a run would use, by label (never a key)."""

    labels: tuple[str, ...] = ()
    problem: str | None = None  # why the keys set cannot be used (a run would exit 4)

    @property
    def count(self) -> int:
        """The keys the estimate is made for: those given, or 1 when none is usable."""
        return max(1, len(self.labels))


def keys_given(environ: Mapping[str, str] | None = None) -> KeysGiven:
    """The keys OKAYPIC_API_KEYS (or OKAYPIC_API_KEY) holds, read and checked as `run`
    reads them. None set: no labels. Set but not usable: no labels and the reason, which
    names the variable and the entry, never a key."""
    env = os.environ if environ is None else environ
    try:
        return KeysGiven(tuple(key.label for key in api_keys(env)))
    except AuthError as e:
        return KeysGiven((), str(e) if given(env) else None)


@dataclass
class ModelLine:
    """The manifest's jobs of one model."""

    model: str
    jobs: int = 0
    video_seconds: int = 0
    images: int = 0
    cost_micros: int = 0


@dataclass
class Plan:
    campaign: str
    budget_micros: int | None
    models: list[ModelLine]
    ledger_path: str
    ledger_found: bool
    new: int = 0
    changed: int = 0
    done: int = 0  # completed, same content
    unfinished: int = 0  # queued, submitting or running, same content
    failed: int = 0  # failed, same content: runs again only after `batchgen retry`
    held: int = 0  # held, same content: runs again only after `batchgen retry --unknown`
    to_run: int = 0  # jobs a `run` would submit: new + changed + queued
    to_run_micros: int = 0  # what they cost if each succeeds at its first attempt
    committed_micros: int = 0  # the campaign's spent + in flight + unknown in the ledger
    keys: KeysGiven = KeysGiven()
    wall_seconds: float = 0.0  # estimated makespan of the jobs to run on `slots` slots
    refined_models: list[str] = field(default_factory=list)
    longest_seconds: float = 0.0  # the longest job to run: no number of keys is faster
    within_seconds: float | None = None  # `--within`
    keys_needed: int | None = None  # the fewest keys that finish within it (None: none can)
    needed_wall_seconds: float | None = None  # the estimate with keys_needed

    @property
    def slots(self) -> int:
        return SLOTS * self.keys.count

    @property
    def fits_within(self) -> bool | None:
        """Whether the jobs to run end within `--within` with the keys given (None: no
        --within)."""
        if self.within_seconds is None:
            return None
        return _within(self.wall_seconds, self.within_seconds)

    @property
    def fits(self) -> bool:
        """Whether the jobs to run fit their budget and `--within` (`plan` exits 3 if not)."""
        over = self.over_budget_micros
        return (over is None or over <= 0) and self.fits_within is not False

    @property
    def jobs(self) -> int:
        return sum(line.jobs for line in self.models)

    @property
    def cost_micros(self) -> int:
        return sum(line.cost_micros for line in self.models)

    @property
    def video_seconds(self) -> int:
        return sum(line.video_seconds for line in self.models)

    @property
    def images(self) -> int:
        return sum(line.images for line in self.models)

    @property
    def over_budget_micros(self) -> int | None:
        """How much the jobs to run exceed the budget left (≤ 0: they fit; None: no budget)."""
        if self.budget_micros is None:
            return None
        return self.committed_micros + self.to_run_micros - self.budget_micros


def make_plan(
    manifest: ManifestLike,
    ledger_path: str,
    keys: KeysGiven | None = None,
    within: float | None = None,
) -> Plan:
    """Count, price and time the manifest's jobs (on the slots of `keys`: one key's when
    none is given), and compare them with the ledger; `within` (seconds): how many keys
    would finish the jobs to run in that time."""
    known = catalog.load().models
    priced = [
        _Priced(job, request := job.request(), catalog.price_micros(request))
        for job in manifest.jobs
    ]
    models: dict[str, ModelLine] = {}
    for p in priced:
        line = models.setdefault(p.job.model, ModelLine(p.job.model))
        line.jobs += 1
        line.cost_micros += p.price
        if known[p.job.model].kind == "image":
            line.images += 1
        else:
            line.video_seconds += int(p.request.get("duration") or 0)

    campaign = manifest.campaign
    plan = Plan(
        campaign.name,
        campaign.budget_micros,
        sorted(models.values(), key=lambda m: m.model),
        redacted(ledger_path),  # as shown: a URL's password never is
        # A PostgreSQL ledger's database is there to be read (an error says if it is not).
        is_url(ledger_path) or Path(ledger_path).is_file(),
        keys=keys or KeysGiven(),
        within_seconds=within,
    )
    existing: dict[str, tuple[str, str]] = {}
    seen: dict[tuple[str, int | None], float] = {}
    try:
        ledger = Ledger.read_only(ledger_path) if plan.ledger_found else None
    except NoLedger:  # an empty database (or file): as with no file, every job is new
        plan.ledger_found, ledger = False, None
    if ledger is not None:
        try:
            existing = ledger.existing_fingerprints(campaign.name)
            seen = ledger.generation_seconds()
            money = ledger.money([campaign.name])
            plan.committed_micros = money.spent + money.in_flight + money.unknown
        finally:
            ledger.close()

    to_run: list[_Priced] = []
    for p in priced:
        old = existing.get(p.job.id)
        if old is None:
            plan.new += 1
        elif old[0] != fingerprint(p.request, p.job.tags):
            plan.changed += 1
        elif old[1] == "completed":
            plan.done += 1
            continue
        elif old[1] in ("failed", "held"):
            setattr(plan, old[1], getattr(plan, old[1]) + 1)
            continue
        else:
            plan.unfinished += 1
            if old[1] != "queued":
                continue  # submitting or running: its cost is already committed
        to_run.append(p)
        plan.to_run_micros += p.price
    plan.to_run = len(to_run)
    times, plan.refined_models = _generation_times(to_run, seen)
    plan.wall_seconds = makespan(times, plan.slots)
    plan.longest_seconds = max(times, default=0.0)
    if within is not None:
        plan.keys_needed = keys_needed(times, within)
        if plan.keys_needed is not None:
            plan.needed_wall_seconds = makespan(times, SLOTS * plan.keys_needed)
    return plan


class _Priced(NamedTuple):
    job: Job
    request: dict[str, Any]  # the body POSTed, catalog defaults filled in
    price: int


def _generation_times(
    jobs: Iterable[_Priced], seen: dict[tuple[str, int | None], float]
) -> tuple[list[float], list[str]]:
    """Each job's generation time, in ingestion order: the median the ledger has seen for
    its model and duration, else the catalog's typical time; and the models refined."""
    known = catalog.load().models
    times: list[float] = []
    refined: set[str] = set()
    for p in jobs:
        model, duration = p.job.model, p.request.get("duration")
        seconds = seen.get((model, duration))
        if seconds is None:
            seconds = known[model].typical_seconds(duration)
        else:
            refined.add(model)
        times.append(seconds)
    return times, sorted(refined)


def makespan(times: Sequence[float], slots: int) -> float:
    """Greedy list scheduling in ingestion order on `slots` slots, as the scheduler does:
    each job starts on the first slot to come free."""
    free = [0.0] * max(1, min(slots, len(times)))
    for seconds in times:
        heapq.heapreplace(free, free[0] + seconds)
    return max(free)


def keys_needed(times: Sequence[float], within: float) -> int | None:
    """The fewest keys (SLOTS slots each) whose makespan of `times` is at most `within`
    seconds; None when one job alone takes longer (no number of keys can).

    More slots never make this greedy schedule longer (each job starts no later), so
    the answer is searched by halves between the work spread over all slots (fewer keys
    cannot) and a slot per job (enough, as no job is longer than `within`)."""
    if not times:
        return 1
    if not _within(max(times), within):
        return None
    low = max(1, math.ceil(sum(times) / (SLOTS * within) - 1e-9))
    high = max(low, math.ceil(len(times) / SLOTS))
    while low < high:
        middle = (low + high) // 2
        if _within(makespan(times, SLOTS * middle), within):
            high = middle
        else:
            low = middle + 1
    return low


def _within(seconds: float, limit: float) -> bool:
    return seconds <= limit + 1e-6  # sums of float times: not a hair over


def format_plan(plan: Plan) -> str:
    """The plan for a person, ending without a newline (click adds it)."""
    width = max([len("model"), len("total"), *(len(m.model) for m in plan.models)])
    header = f"  {'model':<{width}}  {'jobs':>7}  {'video s':>9}  {'images':>7}  {'cost':>12}"
    lines = [f"plan for campaign {plan.campaign}: {plan.jobs} job(s)", "", header]
    for m in [*plan.models, None]:
        name, jobs, secs, imgs, cost = (
            (m.model, m.jobs, m.video_seconds, m.images, m.cost_micros)
            if m is not None
            else ("total", plan.jobs, plan.video_seconds, plan.images, plan.cost_micros)
        )
        lines.append(f"  {name:<{width}}  {jobs:>7}  {secs:>9}  {imgs:>7}  {'$' + usd(cost):>12}")
    lines.append("")
    if plan.ledger_found:
        lines.append(
            f"against {plan.ledger_path}: {plan.new} new, {plan.changed} changed, "
            f"{plan.done} already done, {plan.unfinished} queued or unfinished"
            + (f", {plan.failed} failed" if plan.failed else "")
            + (f", {plan.held} held" if plan.held else "")
        )
        if plan.changed:
            lines.append(
                "  changed jobs: give them new ids, or ingest/run with --replace "
                "(their attempts so far stay in the audit)"
            )
        if plan.failed or plan.held:
            lines.append(
                "  failed/held jobs run again only after `batchgen retry` "
                "(`--unknown` for held ones)"
            )
    else:
        lines.append(f"no ledger at {plan.ledger_path}: every job is new")
    lines.append(f"to run: {plan.to_run} job(s), estimated ${usd(plan.to_run_micros)}")
    over = plan.over_budget_micros
    if plan.budget_micros is None or over is None:
        lines.append("budget: none set (budget_usd in the manifest caps a campaign's spend)")
    else:
        committed = (
            f" + ${usd(plan.committed_micros)} already spent or committed"
            if plan.committed_micros
            else ""
        )
        verdict = (
            f"fits, ${usd(-over)} to spare"
            if over <= 0
            else f"OVER by ${usd(over)}: the run stops when the budget is reached "
            "(remaining jobs stay queued, exit 3)"
        )
        lines.append(
            f"budget ${usd(plan.budget_micros)}: ${usd(plan.to_run_micros)} to run"
            f"{committed} -> {verdict}"
        )
    basis = (
        f"typical times, refined by the ledger for {', '.join(plan.refined_models)}"
        if plan.refined_models
        else "typical generation times from the catalog"
    )
    lines.append(
        f"estimated wall time with {_keys_text(plan.keys)}: "
        f"{duration_text(plan.wall_seconds)} ({basis})"
    )
    if plan.keys.problem:
        lines.append(f"  the keys set cannot be used ({plan.keys.problem}): estimated for 1 key")
    elif not plan.keys.labels:
        lines.append(
            f"  no API key is set ({KEYS_VARIABLE} or {KEY_VARIABLE}): estimated for 1 key; "
            f"each key adds {SLOTS} slots"
        )
    if plan.within_seconds is not None:
        lines.append(_within_text(plan, plan.within_seconds))
    return "\n".join(lines)


def _keys_text(keys: KeysGiven, most: int = 5) -> str:
    """`2 keys (studio, night: 6 slots)`: the keys by label, never a key."""
    count = _count(keys.count)
    if not keys.labels:
        return f"{count} ({SLOTS * keys.count} slots)"
    more = f" and {len(keys.labels) - most} more" if len(keys.labels) > most else ""
    return f"{count} ({', '.join(keys.labels[:most])}{more}: {SLOTS * keys.count} slots)"


def _within_text(plan: Plan, within: float) -> str:
    """Whether the jobs to run fit in `--within`, and with how many keys they would."""
    head = f"within {_limit(within)}:"
    estimate = f"{duration_text(plan.wall_seconds)} with {_count(plan.keys.count)}"
    needed = plan.keys_needed
    if plan.fits_within:
        if needed is not None and needed < plan.keys.count:
            return f"{head} fits ({estimate}); {_count(needed)} would do"
        return f"{head} fits ({estimate})"
    if needed is None:
        return (
            f"{head} does not fit with any number of keys: one job alone takes about "
            f"{duration_text(plan.longest_seconds)}"
        )
    return (
        f"{head} does not fit ({estimate}); {_count(needed)} would "
        f"({SLOTS * needed} slots: {duration_text(plan.needed_wall_seconds or 0.0)})"
    )


def _limit(seconds: float) -> str:
    """A DURATION as given, never rounded (8h, 90m, 100s; else as wall times are shown)."""
    for unit, size in (("h", 3600), ("m", 60), ("s", 1)):
        if seconds % size == 0:
            return f"{seconds / size:.0f}{unit}"
    return duration_text(seconds)


def _count(keys: int) -> str:
    return f"{keys} key{'s' if keys != 1 else ''}"


def plan_json(plan: Plan) -> dict[str, Any]:
    """The plan as one JSON object (`plan --json`): money as exact decimal strings."""

    def money(micros: int | None) -> str | None:
        return None if micros is None else usd(micros)

    over = plan.over_budget_micros
    return {
        "campaign": plan.campaign,
        "jobs": plan.jobs,
        "models": [
            {
                "model": m.model,
                "jobs": m.jobs,
                "video_seconds": m.video_seconds,
                "images": m.images,
                "cost_usd": usd(m.cost_micros),
            }
            for m in plan.models
        ],
        "video_seconds": plan.video_seconds,
        "images": plan.images,
        "cost_usd": usd(plan.cost_micros),
        "ledger": {
            "path": plan.ledger_path,
            "found": plan.ledger_found,
            "new": plan.new,
            "changed": plan.changed,
            "done": plan.done,
            "unfinished": plan.unfinished,
            "failed": plan.failed,
            "held": plan.held,
        },
        "to_run": plan.to_run,
        "to_run_usd": usd(plan.to_run_micros),
        "committed_usd": usd(plan.committed_micros),
        "budget_usd": money(plan.budget_micros),
        "fits_budget": None if over is None else over <= 0,
        "over_budget_usd": None if over is None else usd(max(over, 0)),
        "keys": plan.keys.count,  # the keys the wall time is estimated for (1 when none is set)
        "key_labels": list(plan.keys.labels),  # the keys given, by label ([]: none usable)
        "keys_problem": plan.keys.problem,  # why the keys set cannot be used, or null
        "slots": plan.slots,
        "wall_seconds": round(plan.wall_seconds, 1),
        "refined_models": plan.refined_models,
        "longest_seconds": round(plan.longest_seconds, 1),
        # --within: null without it; keys_needed null when no number of keys fits
        "within_seconds": plan.within_seconds,
        "fits_within": plan.fits_within,
        "keys_needed": plan.keys_needed,
        "keys_needed_wall_seconds": None
        if plan.needed_wall_seconds is None
        else round(plan.needed_wall_seconds, 1),
    }
