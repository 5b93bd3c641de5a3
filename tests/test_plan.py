"""`batchgen plan`: counts, exact costs from the price table, the budget check, wall time
on 3 slots per API key given (and how many keys would fit it in `--within`), and what is
new, changed or done against a ledger, with no write at all."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from batchgen.job import Campaign, Job
from batchgen.ledger import Ledger
from batchgen.plan import KeysGiven, format_plan, keys_given, keys_needed, make_plan, makespan
from tests.builders import complete, grok, image, invoke, make_ledger, seedance, start, veo
from tests.e2e import ledger_content, ledger_written

ROOT = Path(__file__).resolve().parent.parent
VIDEO_REF = [{"type": "video", "url": "https://example.com/ref.mp4"}]


@dataclass
class Manifest:
    campaign: Campaign
    jobs: list[Job]


def manifest(jobs: list[Job], budget: int | None = None) -> Manifest:
    return Manifest(Campaign("c", "m.yaml", "sha", budget), jobs)


def price_table_jobs() -> list[Job]:
    return [
        seedance("sd-5"),  # 5 s x $0.12 = $0.60
        seedance("sd-ref", ref_mode="omni", media=VIDEO_REF),  # 5 s x $0.24 = $1.20
        seedance("fast-10", 10, fast=True),  # 10 s x $0.08 = $0.80
        grok("grok-15", 15),  # 15 s x $0.02 = $0.30
        veo("pro"),  # veo3.1-pro: $0.30
        image("poster"),  # jimeng-5.0: $0.20
    ]


def test_costs_come_exactly_from_the_price_table(tmp_path):
    plan = make_plan(manifest(price_table_jobs()), str(tmp_path / "none.db"))
    lines = {m.model: (m.jobs, m.video_seconds, m.images, m.cost_micros) for m in plan.models}
    assert lines == {
        "jimeng-video-seedance-2.0": (2, 10, 0, 1_800_000),
        "jimeng-video-seedance-2.0-fast": (1, 10, 0, 800_000),
        "grok-video-3": (1, 15, 0, 300_000),
        "veo3.1": (1, 0, 0, 300_000),
        "jimeng-5.0": (1, 0, 1, 200_000),
    }
    assert (plan.jobs, plan.video_seconds, plan.images) == (6, 35, 1)
    assert plan.cost_micros == plan.to_run_micros == 3_400_000


def test_the_plan_text_shows_models_totals_and_cost(tmp_path):
    text = format_plan(make_plan(manifest(price_table_jobs()), str(tmp_path / "none.db")))
    assert "plan for campaign c: 6 job(s)" in text
    assert "jimeng-video-seedance-2.0-fast" in text and "$0.80" in text
    assert "total" in text and "$3.40" in text
    assert "every job is new" in text


def test_a_budget_below_the_cost_is_reported_over_by_the_difference(tmp_path):
    plan = make_plan(manifest(price_table_jobs(), budget=3_000_000), str(tmp_path / "x.db"))
    assert plan.over_budget_micros == 400_000
    assert "OVER by $0.40" in format_plan(plan)


def test_a_budget_equal_to_the_cost_fits(tmp_path):
    plan = make_plan(manifest(price_table_jobs(), budget=3_400_000), str(tmp_path / "x.db"))
    assert plan.over_budget_micros == 0
    assert "fits, $0.00 to spare" in format_plan(plan)


def test_no_budget_is_said_plainly(tmp_path):
    assert "budget: none set" in format_plan(make_plan(manifest([grok("a")]), str(tmp_path / "x")))


def test_plan_without_a_ledger_creates_no_file(ledger_at, tmp_path):
    make_plan(manifest(price_table_jobs()), str(ledger_at))
    assert list(tmp_path.iterdir()) == []
    assert not ledger_written(ledger_at)  # nor tables in an empty PostgreSQL database


def ledger_with_history(location: Path | str) -> Path | str:
    """done (completed, $0.10), edit (queued), wait (queued), run (running, $0.10 in flight)."""
    ledger = make_ledger(location, [grok("done"), grok("edit"), grok("wait"), grok("run")])
    complete(ledger, "done")
    start(ledger, "run")
    ledger.close()
    return location


def test_against_a_ledger_jobs_are_new_changed_done_or_unfinished(ledger_at):
    path = ledger_with_history(ledger_at)
    jobs = [grok("done"), Job("c", "edit", "grok-video-3", "a new prompt", duration=5)]
    jobs += [grok("wait"), grok("run"), grok("fresh", 10)]
    plan = make_plan(manifest(jobs), str(path))
    assert (plan.new, plan.changed, plan.done, plan.unfinished) == (1, 1, 1, 2)
    # To run: fresh ($0.20), edit ($0.10) and wait ($0.10); run is already in flight.
    assert (plan.to_run, plan.to_run_micros) == (3, 400_000)
    text = format_plan(plan)
    assert "1 new, 1 changed, 1 already done, 2 queued or unfinished" in text
    assert "--replace" in text


def test_the_budget_check_counts_what_the_ledger_already_spent_or_committed(ledger_at):
    path = ledger_with_history(ledger_at)
    jobs = [grok("done"), grok("wait"), grok("run")]
    plan = make_plan(manifest(jobs, budget=250_000), str(path))
    # spent 0.10 (done) + in flight 0.10 (run) + to run 0.10 (wait) = 0.30 > 0.25
    assert plan.committed_micros == 200_000 and plan.to_run_micros == 100_000
    assert plan.over_budget_micros == 50_000


def test_plan_writes_nothing_to_an_existing_ledger(ledger_at):
    path = ledger_with_history(ledger_at)
    before = ledger_content(path)
    make_plan(manifest([grok("done"), grok("brand-new")]), str(path))
    assert ledger_content(path) == before


def test_wall_time_is_greedy_on_three_slots_from_typical_times(tmp_path):
    # grok 5 s: typical 20 + 4 x 5 = 40 s; seven jobs on 3 slots take 3 rounds.
    plan = make_plan(manifest([grok(f"g{i}") for i in range(7)]), str(tmp_path / "x.db"))
    assert plan.wall_seconds == 120
    assert "estimated wall time with 1 key (3 slots): 2m00s" in format_plan(plan)


def test_wall_time_is_refined_by_the_generation_times_the_ledger_has_seen(ledger_at):
    path = ledger_with_history(ledger_at)
    ledger = Ledger(path)  # the seen task was followed from creation to completion: 10 s
    with ledger.transaction() as db:
        db.execute("UPDATE attempts SET observed_seconds = 10 WHERE state = 'completed'")
    ledger.close()
    plan = make_plan(manifest([grok(f"g{i}") for i in range(6)]), str(path))
    assert plan.wall_seconds == pytest.approx(20, abs=0.01) and plan.refined_models == [
        "grok-video-3"
    ]
    # Another duration of the same model is not refined by it.
    plan = make_plan(manifest([grok("g15", 15)]), str(path))
    assert plan.wall_seconds == 80.0 and plan.refined_models == []


def test_wall_time_is_not_refined_by_a_task_no_process_followed_from_start_to_end(ledger_at):
    # Its time from creation to completion (here 599 s) includes a process that was down.
    path = ledger_with_history(ledger_at)
    ledger = Ledger(path)
    with ledger.transaction() as db:
        for attempt, answered in db.execute(
            "SELECT id, answered_at FROM attempts WHERE state = 'completed'"
        ).fetchall():
            later = datetime.fromisoformat(answered) + timedelta(seconds=599)
            db.execute(
                "UPDATE attempts SET finished_at = ?, observed_seconds = NULL WHERE id = ?",
                (later.strftime("%Y-%m-%dT%H:%M:%S.%fZ"), attempt),
            )
    ledger.close()
    plan = make_plan(manifest([grok(f"g{i}") for i in range(6)]), str(path))
    assert plan.wall_seconds == 80.0 and plan.refined_models == []


def test_plan_command_prints_the_quickstart_cost_and_writes_nothing(ledger_at, tmp_path):
    result = invoke(ledger_at, "plan", str(ROOT / "manifests" / "quickstart.yaml"))
    assert result.exit_code == 0, result.output
    assert "$0.92" in result.output and "budget $2.00" in result.output
    assert list(tmp_path.iterdir()) == []
    assert not ledger_written(ledger_at)


def test_plan_never_shows_the_password_of_a_postgresql_ledgers_url(postgres_url):
    """PRODUCT §5: a password in the ledger's URL is redacted where the plan names it."""
    ledger = postgres_url.replace("batchgen@", "batchgen:s3cret@", 1)
    quickstart = str(ROOT / "manifests" / "quickstart.yaml")
    for as_json in ([], ["--json"]):
        result = invoke(ledger, "plan", quickstart, *as_json)
        assert result.exit_code == 0, result.output
        assert "s3cret" not in result.output and "batchgen:***@" in result.output


# ---------------------------------------------------------------- API keys: 3 slots each


def test_each_key_given_adds_three_slots_to_the_wall_time_estimate(tmp_path):
    # seven grok 5 s jobs of 40 s: 3 rounds on 3 slots, 2 on 6, 1 on 9
    jobs = manifest([grok(f"g{i}") for i in range(7)])
    walls = {
        n: make_plan(jobs, str(tmp_path / "x.db"), KeysGiven(tuple(f"k{i}" for i in range(n))))
        for n in (1, 2, 3)
    }
    assert {n: (p.slots, p.wall_seconds) for n, p in walls.items()} == {
        1: (3, 120),
        2: (6, 80),
        3: (9, 40),
    }
    text = format_plan(walls[2])
    assert "estimated wall time with 2 keys (k0, k1: 6 slots): 1m20s" in text
    assert "no API key is set" not in text


def test_with_no_key_set_the_estimate_is_for_one_key_and_says_so(tmp_path):
    plan = make_plan(manifest([grok("a")]), str(tmp_path / "x.db"))
    assert plan.slots == 3
    text = format_plan(plan)
    assert "with 1 key (3 slots)" in text
    assert "no API key is set" in text and "OKAYPIC_API_KEYS" in text


def test_keys_are_counted_from_the_environment_by_label_as_a_run_reads_them():
    assert keys_given({}) == KeysGiven()
    assert keys_given({"OKAYPIC_API_KEYS": " , "}) == KeysGiven()
    one = keys_given({"OKAYPIC_API_KEY": "okpk_one"})
    assert len(one.labels) == 1 and one.labels[0].startswith("key-") and one.problem is None
    several = keys_given({"OKAYPIC_API_KEYS": "studio=okpk_a,night=okpk_b,okpk_c"})
    assert several.labels[:2] == ("studio", "night") and several.count == 3
    assert several.labels[2].startswith("key-")
    assert "okpk" not in repr(several)


def test_keys_set_but_unusable_are_estimated_as_one_and_the_reason_is_given():
    refused = keys_given({"OKAYPIC_API_KEYS": "studio=okpk_secret_a,studio=okpk_secret_b"})
    assert refused.labels == () and refused.count == 1
    assert refused.problem and "OKAYPIC_API_KEYS" in refused.problem
    assert "okpk_secret" not in refused.problem


def test_fewest_keys_is_the_smallest_number_whose_slots_finish_within_the_time():
    forty = [40.0] * 7
    assert keys_needed(forty, 120) == 1
    assert keys_needed(forty, 119) == 2  # 6 slots: 80 s
    assert keys_needed(forty, 80) == 2
    assert keys_needed(forty, 79) == 3  # one job per slot: 40 s
    assert keys_needed(forty, 39) is None  # no number of keys makes a 40 s job shorter
    assert keys_needed([], 1) == 1


@given(
    st.lists(st.integers(min_value=1, max_value=300), min_size=1, max_size=40),
    st.integers(min_value=1, max_value=3000),
)
def test_fewest_keys_equals_trying_one_key_more_at_a_time(times, within):
    seconds = [float(t) for t in times]
    tried = next(
        (k for k in range(1, len(seconds) + 1) if makespan(seconds, 3 * k) <= within), None
    )
    assert keys_needed(seconds, within) == tried


def test_within_says_whether_the_jobs_fit_and_how_many_keys_would_make_them(tmp_path):
    jobs = manifest([grok(f"g{i}") for i in range(7)])  # 120 s on 1 key, 80 on 2, 40 on 3
    path = str(tmp_path / "x.db")
    short = make_plan(jobs, path, KeysGiven(("studio",)), within=60)
    assert (short.fits_within, short.keys_needed, short.needed_wall_seconds) == (False, 3, 40)
    assert "within 1m: does not fit (2m00s with 1 key); 3 keys would (9 slots: 40s)" in (
        format_plan(short)
    )
    roomy = make_plan(jobs, path, KeysGiven(("studio", "night")), within=100)
    assert (roomy.fits_within, roomy.keys_needed) == (True, 2)
    assert "within 100s: fits (1m20s with 2 keys)" in format_plan(roomy)
    spare = make_plan(jobs, path, KeysGiven(("a", "b", "c")), within=3600)
    assert "within 1h: fits (40s with 3 keys); 1 key would do" in format_plan(spare)
    never = make_plan(jobs, path, KeysGiven(("studio",)), within=30)
    assert (never.fits_within, never.keys_needed) == (False, None)
    assert "does not fit with any number of keys" in format_plan(never)
    assert "\nwithin " not in format_plan(make_plan(jobs, path))


def test_plan_command_with_keys_and_within_shows_labels_never_keys(tmp_path, monkeypatch):
    monkeypatch.setenv("OKAYPIC_API_KEYS", "studio=okpk_secret_one,okpk_secret_two")
    quickstart = str(ROOT / "manifests" / "quickstart.yaml")
    result = invoke(tmp_path / "l.db", "plan", quickstart, "--within", "8h")
    assert result.exit_code == 0, result.output
    assert "with 2 keys (studio, key-" in result.output and "6 slots" in result.output
    assert "within 8h: fits" in result.output
    assert "okpk_secret" not in result.output

    result = invoke(tmp_path / "l.db", "plan", quickstart, "--within", "30m", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert (data["keys"], data["slots"], data["key_labels"][0]) == (2, 6, "studio")
    assert (data["within_seconds"], data["fits_within"], data["keys_needed"]) == (1800, True, 1)
    assert data["keys_problem"] is None and "okpk_secret" not in result.output
    assert list(tmp_path.iterdir()) == []


def test_plan_json_without_a_key_or_within(tmp_path):
    quickstart = str(ROOT / "manifests" / "quickstart.yaml")
    data = json.loads(invoke(tmp_path / "l.db", "plan", quickstart, "--json").output)
    assert (data["keys"], data["key_labels"], data["slots"]) == (1, [], 3)
    assert data["within_seconds"] is data["fits_within"] is data["keys_needed"] is None
    assert data["wall_seconds"] > 0


def test_plan_command_refuses_a_within_that_is_not_a_duration(tmp_path):
    quickstart = str(ROOT / "manifests" / "quickstart.yaml")
    for bad in ("0", "soon", "-5m"):
        result = invoke(tmp_path / "l.db", "plan", quickstart, "--within", bad)
        assert result.exit_code == 2, (bad, result.output)


# ---------------------------------------------------------------- exit code: a script can gate


def small_campaign(tmp_path: Path, budget: str) -> str:
    path = tmp_path / "small.yaml"
    path.write_text(
        f"version: 1\ncampaign: small\nbudget_usd: {budget}\n"
        "defaults: {model: grok-video-3, duration: 5}\n"  # $0.10 each
        "jobs:\n  - {id: a, prompt: one}\n  - {id: b, prompt: two}\n",
        encoding="utf-8",
    )
    return str(path)


@pytest.mark.parametrize("as_json", [[], ["--json"]])
def test_plan_exits_3_when_the_jobs_to_run_are_over_budget(tmp_path, as_json):
    result = invoke(tmp_path / "l.db", "plan", small_campaign(tmp_path, "0.15"), *as_json)
    assert result.exit_code == 3, result.output
    if as_json:
        assert json.loads(result.output)["over_budget_usd"] == "0.05"
    else:
        assert "OVER by $0.05" in result.output


@pytest.mark.parametrize("as_json", [[], ["--json"]])
def test_plan_exits_3_when_the_jobs_to_run_do_not_fit_within_the_time(tmp_path, as_json):
    result = invoke(
        tmp_path / "l.db", "plan", small_campaign(tmp_path, "1.00"), "--within", "5s", *as_json
    )
    assert result.exit_code == 3, result.output
    if as_json:
        assert json.loads(result.output)["fits_within"] is False
    else:
        assert "does not fit" in result.output


def test_plan_exits_0_when_the_jobs_fit_budget_and_time(tmp_path):
    fits = invoke(tmp_path / "l.db", "plan", small_campaign(tmp_path, "0.20"), "--within", "8h")
    assert fits.exit_code == 0, fits.output
    assert "fits, $0.00 to spare" in fits.output
