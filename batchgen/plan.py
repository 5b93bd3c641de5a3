"""`batchgen plan`: what a manifest would do and cost, computed offline.

No API call and no write: the ledger, when there is one, is opened read-only (and is
never created), so a plan can be made while a run is going on.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Protocol

from batchgen import catalog
from batchgen.job import Campaign, Job, fingerprint
from batchgen.ledger import Ledger
from batchgen.money import usd
from batchgen.progress import _duration as duration_text

SLOTS = 3  # the service's limit per API key (catalog: max_active_tasks_per_key)


class ManifestLike(Protocol):
    """What `plan` needs of a checked manifest (validate.Manifest)."""

    campaign: Campaign
    jobs: list[Job]


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
    wall_seconds: float = 0.0  # estimated makespan of the jobs to run on SLOTS slots
    refined_models: list[str] = field(default_factory=list)

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


def make_plan(manifest: ManifestLike, ledger_path: str) -> Plan:
    """Count, price and time the manifest's jobs, and compare them with the ledger."""
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
        ledger_path,
        Path(ledger_path).is_file(),
    )
    existing: dict[str, tuple[str, str]] = {}
    seen: dict[tuple[str, int | None], float] = {}
    if plan.ledger_found:
        ledger = Ledger.read_only(ledger_path)
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
    plan.wall_seconds, plan.refined_models = _makespan(to_run, seen)
    return plan


class _Priced(NamedTuple):
    job: Job
    request: dict[str, Any]  # the body POSTed, catalog defaults filled in
    price: int


def _makespan(
    jobs: Iterable[_Priced], seen: dict[tuple[str, int | None], float]
) -> tuple[float, list[str]]:
    """Greedy list scheduling in ingestion order on SLOTS slots, as the scheduler does:
    each job starts on the first slot to come free. Generation time per job is the mean
    the ledger has seen for its model and duration, else the catalog's typical time."""
    known = catalog.load().models
    slots = [0.0] * SLOTS
    refined: set[str] = set()
    for p in jobs:
        model, duration = p.job.model, p.request.get("duration")
        seconds = seen.get((model, duration))
        if seconds is None:
            seconds = known[model].typical_seconds(duration)
        else:
            refined.add(model)
        heapq.heapreplace(slots, slots[0] + seconds)
    return max(slots), sorted(refined)


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
        f"estimated wall time at {SLOTS} slots: {duration_text(plan.wall_seconds)} ({basis})"
    )
    return "\n".join(lines)


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
        "wall_seconds": round(plan.wall_seconds, 1),
        "slots": SLOTS,
        "refined_models": plan.refined_models,
    }
