"""`batchgen status` (the §7 JSON shape, the human summary and its next steps) and
`batchgen retry` (requeueing failed or held jobs with fresh attempts)."""

from __future__ import annotations

import json

from batchgen.job import Campaign
from batchgen.ledger import Ledger
from batchgen.status import format_status, status_data
from tests.builders import (
    complete,
    fail,
    grok,
    invoke,
    make_ledger,
    rejected,
    seedance,
    sent_with,
    start,
    unfinished,
    unknown,
)

JOB_KEYS = [
    "campaign",
    "id",
    "status",
    "model",
    "attempts",
    "task_id",
    "key",
    "cost_usd",
    "result_urls",
    "files",
    "provenance",  # each file's marks, read on save (PRODUCT §13)
    "verdict",
    "error",
]


def small(tmp_path, budget: int | None = 40_000_000) -> Ledger:
    """done (fast 5 s, completed $0.40), bad (failed), run (running), wait (queued)."""
    ledger = make_ledger(
        tmp_path / "l.db",
        [seedance("done", fast=True), grok("bad"), seedance("run"), grok("wait")],
        budget=budget,
    )
    complete(ledger, "done")
    fail(ledger, "bad", why="Generation failed")
    start(ledger, "run")
    return ledger


def test_status_json_has_exactly_the_contract_shape(tmp_path):
    data = status_data(small(tmp_path), [])
    assert list(data) == [
        "counts",
        "spent_usd",
        "in_flight_usd",
        "unknown_usd",
        "budget_usd",
        "keys",
        "runners",
        "verdicts",
        "jobs",
    ]
    assert data["counts"] == {
        "queued": 1,
        "submitting": 0,
        "running": 1,
        "completed": 1,
        "failed": 1,
        "held": 0,
    }
    assert (data["spent_usd"], data["in_flight_usd"], data["unknown_usd"]) == (
        "0.40",
        "0.60",
        "0.00",
    )
    assert data["budget_usd"] == "40.00"
    assert data["keys"] == [{"label": None, "in_flight": 1, "spent_usd": "0.40", "refusals": 0}]
    assert [list(job) for job in data["jobs"]] == [JOB_KEYS] * 4
    done = data["jobs"][0]
    assert done == {
        "campaign": "c",
        "id": "done",
        "status": "completed",
        "model": "jimeng-video-seedance-2.0-fast",
        "attempts": 1,
        "task_id": "task-c-done-0",
        "key": None,  # sent before keys were labelled
        "cost_usd": "0.40",
        "result_urls": ["https://cdn.example.com/done.mp4"],
        "files": [],
        "provenance": [],
        "verdict": None,
        "error": None,
    }


def test_jobs_are_listed_in_ingestion_order_with_errors_and_costs(tmp_path):
    jobs = {j["id"]: j for j in status_data(small(tmp_path), [])["jobs"]}
    assert list(jobs) == ["done", "bad", "run", "wait"]
    assert jobs["bad"]["error"] == "task failed: Generation failed"
    assert jobs["bad"]["cost_usd"] == "0.00"  # refunded
    assert jobs["run"]["cost_usd"] == "0.00"  # in flight, not yet spent
    assert jobs["wait"] == {**jobs["wait"], "attempts": 0, "task_id": None, "result_urls": []}


def test_the_jobs_costs_add_up_to_spent(tmp_path):
    ledger = small(tmp_path)
    complete(ledger, "wait")
    data = status_data(ledger, [])
    assert data["spent_usd"] == "0.50"
    assert sum(int(j["cost_usd"].replace(".", "")) for j in data["jobs"]) == 50


def test_files_lists_only_paths_saved_by_download(tmp_path):
    ledger = make_ledger(tmp_path / "l.db", [grok("two")])
    complete(ledger, "two", urls=["https://cdn/a.mp4", "https://cdn/b.mp4"])
    ledger.file_saved("c", "two", 1, "https://cdn/b.mp4", "out/c/two-2.mp4", 3, "ab")
    ledger.file_failed("c", "two", 0, "https://cdn/a.mp4", "HTTP 404")
    [job] = status_data(ledger, [])["jobs"]
    assert job["files"] == ["out/c/two-2.mp4"]
    ledger.file_saved("c", "two", 0, "https://cdn/a.mp4", "out/c/two-1.mp4", 3, "cd")
    [job] = status_data(ledger, [])["jobs"]
    assert job["files"] == ["out/c/two-1.mp4", "out/c/two-2.mp4"]


def test_each_saved_file_has_its_marks_in_the_order_of_files(tmp_path):
    ledger = make_ledger(tmp_path / "l.db", [grok("two")])
    complete(ledger, "two", urls=["https://cdn/a.mp4", "https://cdn/b.mp4"])
    marked = {"c2pa": None, "xmp": {"digital_source_type": "trainedAlgorithmicMedia"},
              "labels": [], "marked": True, "error": None}  # fmt: skip
    ledger.file_saved("c", "two", 1, "https://cdn/b.mp4", "out/c/two-2.mp4", 3, "ab", marked)
    ledger.file_saved("c", "two", 0, "https://cdn/a.mp4", "out/c/two-1.mp4", 3, "cd")
    [job] = status_data(ledger, [])["jobs"]
    assert job["provenance"] == [None, marked]  # the first not read (saved before m012)


def test_the_human_view_can_leave_the_jobs_list_out(tmp_path):
    data = status_data(small(tmp_path), [], jobs=False)
    assert data["jobs"] == [] and data["counts"]["completed"] == 1


def test_jobs_of_several_campaigns_come_campaign_by_campaign_in_ingestion_order(tmp_path):
    ledger = make_ledger(tmp_path / "l.db", [grok("z"), grok("a")], campaign="b")
    ledger.ingest(Campaign("a", "a.yaml", "sha", None), [grok("y"), grok("b")])
    ids = [(j["campaign"], j["id"]) for j in status_data(ledger, [])["jobs"]]
    assert ids == [("a", "y"), ("a", "b"), ("b", "z"), ("b", "a")]


def test_budget_is_the_sum_of_the_selected_campaigns_budgets_or_null(tmp_path):
    ledger = small(tmp_path, budget=None)
    assert status_data(ledger, [])["budget_usd"] is None
    ledger.ingest(Campaign("b1", "b.yaml", "sha", 2_500_000), [])
    ledger.ingest(Campaign("b2", "b.yaml", "sha", 1_250_000), [])
    assert status_data(ledger, [])["budget_usd"] == "3.75"
    assert status_data(ledger, ["b2", "c"])["budget_usd"] == "1.25"
    assert status_data(ledger, ["c"])["budget_usd"] is None


def test_a_campaign_filter_keeps_other_campaigns_out(tmp_path):
    ledger = small(tmp_path)
    ledger.ingest(Campaign("other", "o.yaml", "sha", None), [grok("o1")])
    complete(ledger, "o1", campaign="other")
    data = status_data(ledger, ["other"])
    assert [j["id"] for j in data["jobs"]] == ["o1"] and data["spent_usd"] == "0.10"
    assert status_data(ledger, [])["spent_usd"] == "0.50"


def test_unknown_outcomes_count_their_possible_cost(tmp_path):
    ledger = make_ledger(tmp_path / "l.db", [seedance("lost")])
    unknown(ledger, "lost")
    data = status_data(ledger, [])
    assert data["counts"]["held"] == 1 and data["unknown_usd"] == "0.60"


def test_human_status_gives_counts_spend_running_and_failures(tmp_path):
    ledger = small(tmp_path)
    text = format_status(ledger, status_data(ledger, []), [])
    assert "4 total" in text and "1 completed" in text and "1 failed" in text
    assert "spent $0.40 of $40.00 budget" in text and "$0.60 in flight" in text
    assert "c/run" in text and "task task-c-run-0" in text and "0%" in text
    assert "c/bad" in text and "task failed: Generation failed" in text
    assert "`batchgen retry` queues them again" in text
    assert "`batchgen resume`" in text


def test_status_json_gives_each_key_and_each_jobs_key(tmp_path):
    ledger = small(tmp_path)
    sent_with(ledger, "done", "studio")
    sent_with(ledger, "run", "night")
    sent_with(ledger, "bad", "night")
    data = status_data(ledger, [])
    assert data["keys"] == [
        {"label": "night", "in_flight": 1, "spent_usd": "0.00", "refusals": 0},
        {"label": "studio", "in_flight": 0, "spent_usd": "0.40", "refusals": 0},
    ]
    keys = {job["id"]: job["key"] for job in data["jobs"]}
    assert keys == {"done": "studio", "bad": "night", "run": "night", "wait": None}


def test_human_status_shows_each_keys_tasks_in_flight_and_spend(tmp_path):
    ledger = small(tmp_path)
    sent_with(ledger, "done", "studio")
    sent_with(ledger, "run", "night")
    text = format_status(ledger, status_data(ledger, [], jobs=False), [])
    lines = text.splitlines()
    at = lines.index("keys (3):")
    assert lines[at + 1].split() == ["night", "1", "in", "flight,", "$0.00", "spent"]
    assert lines[at + 2].split() == ["studio", "0", "in", "flight,", "$0.40", "spent"]
    assert lines[at + 3].split() == ["(unlabelled)", "0", "in", "flight,", "$0.00", "spent"]


def test_human_status_says_nothing_of_keys_when_none_was_labelled(tmp_path):
    ledger = small(tmp_path)
    text = format_status(ledger, status_data(ledger, [], jobs=False), [])
    assert not [line for line in text.splitlines() if line.startswith("keys")]
    assert "(unlabelled)" not in text


def test_status_command_shows_labels_never_keys(tmp_path, monkeypatch):
    secret = "okpk_live_secret_value_1234"
    ledger = small(tmp_path)
    sent_with(ledger, "done", "studio")
    ledger.close()
    monkeypatch.setenv("OKAYPIC_API_KEYS", f"studio={secret}")
    for args in (["status"], ["status", "--json"]):
        result = invoke(tmp_path / "l.db", *args)
        assert result.exit_code == 0, result.output
        assert "studio" in result.output and secret not in result.output


def test_human_status_says_to_top_up_when_jobs_wait_for_the_balance(tmp_path):
    ledger = make_ledger(tmp_path / "l.db", [grok("a"), grok("b")])
    job = unfinished(ledger, "a")
    attempt = ledger.begin_attempt(job)
    ledger.attempt_ended(
        job,
        attempt,
        state="not_sent",
        outcome="balance exhausted",
        counted=False,
        job_status="queued",
        http_status=402,
        reason="balance",
    )
    text = format_status(ledger, status_data(ledger, []), [])
    assert "1 job(s) wait for the okaypic balance: top up, then `batchgen resume`" in text


def test_human_status_says_how_to_raise_the_budget(tmp_path):
    ledger = make_ledger(tmp_path / "l.db", [grok("a"), grok("b")], budget=100_000)
    ledger.set_reason([("c", "a"), ("c", "b")], "budget")
    text = format_status(ledger, status_data(ledger, []), [])
    assert "2 job(s) wait for budget: raise budget_usd in the manifest" in text


def test_human_status_points_held_jobs_to_retry_unknown(tmp_path):
    ledger = make_ledger(tmp_path / "l.db", [grok("a")])
    unknown(ledger, "a")
    text = format_status(ledger, status_data(ledger, []), [])
    assert "held, outcome unknown (1)" in text and "c/a" in text
    assert "`batchgen retry --unknown`" in text


def test_human_status_lists_at_most_ten_failures_most_recent_first(tmp_path):
    ledger = make_ledger(tmp_path / "l.db", [grok(f"j{i:02d}") for i in range(25)])
    for i in range(25):
        rejected(ledger, f"j{i:02d}")
    text = format_status(ledger, status_data(ledger, []), [])
    assert "recent failures (last 10 of 25)" in text
    listed = [line for line in text.splitlines() if line.startswith("  c/j")]
    assert len(listed) == 10 and listed[0].startswith("  c/j24")


def test_status_command_prints_json_on_stdout(tmp_path):
    small(tmp_path).close()
    result = invoke(tmp_path / "l.db", "status", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["counts"]["completed"] == 1


def test_status_command_names_an_unknown_campaign(tmp_path):
    small(tmp_path).close()
    result = invoke(tmp_path / "l.db", "status", "--campaign", "nope")
    assert result.exit_code == 1 and "no campaign named nope (known: c)" in result.output


# ---------------------------------------------------------------- retry


def test_retry_requeues_failed_jobs_with_fresh_attempts_and_keeps_the_old_ones(tmp_path):
    ledger = small(tmp_path)
    rejected(ledger, "wait")
    before = ledger.query("SELECT * FROM attempts ORDER BY id")
    assert ledger.requeue([], "failed") == 2
    rows = {r["id"]: r for r in ledger.query("SELECT * FROM jobs")}
    for job_id in ("bad", "wait"):
        row = rows[job_id]
        assert (row["status"], row["attempts"], row["reason"], row["task_id"]) == (
            "queued",
            0,
            None,
            None,
        )
    assert rows["done"]["status"] == "completed" and rows["run"]["status"] == "running"
    assert ledger.query("SELECT * FROM attempts ORDER BY id") == before
    events = ledger.query("SELECT job_id, detail FROM events WHERE kind = 'requeued'")
    assert {e["job_id"] for e in events} == {"bad", "wait"}
    assert json.loads(events[0]["detail"])["from"] == "failed"


def test_retry_unknown_requeues_held_jobs_only(tmp_path):
    ledger = small(tmp_path)
    unknown(ledger, "wait")
    assert ledger.requeue([], "held") == 1
    assert ledger.counts() == {
        "queued": 1,
        "submitting": 0,
        "running": 1,
        "completed": 1,
        "failed": 1,
        "held": 0,
    }
    # The unknown attempt and its possible cost stay in the audit.
    assert ledger.money().unknown == 100_000


def test_retry_command_only_touches_the_named_campaign(tmp_path):
    ledger = small(tmp_path)
    ledger.ingest(Campaign("other", "o.yaml", "sha", None), [grok("o1")])
    rejected(ledger, "o1", campaign="other")
    ledger.close()
    result = invoke(tmp_path / "l.db", "retry", "--campaign", "other")
    assert result.exit_code == 0 and "1 job(s) queued again" in result.output
    ledger = Ledger(tmp_path / "l.db")
    assert ledger.counts(["c"])["failed"] == 1 and ledger.counts(["other"])["queued"] == 1
