"""Several API keys end to end (PRODUCT.md §6, issue 13): the real `batchgen` command
against the sandbox over HTTP on 127.0.0.1, with keys given in OKAYPIC_API_KEYS.

Each key has its own 3 slots; every task is polled with the key that created it (the
sandbox answers 404 to another key's task, so a poll 404 here means a wrong key); money
per key in the ledger matches the sandbox's charges per key; a key out of balance or
refused leaves the batch to the others; a resumed task whose key is not given is left
alone, and the run exits 3 naming its label.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from batchgen.keys import label
from batchgen.money import to_micros
from batchgen.progress_curves import PROGRESS_MODES
from tests.e2e import (
    FAST,
    batchgen,
    grok_batch,
    ledger_written,
    recorded_task_ids,
    rows,
    spawn,
    stored_bytes,
    wait_for,
)

ALPHA, BRAVO, CHARLIE = "okpk_alpha_1111", "okpk_bravo_2222", "okpk_charlie_3333"
KEYS = f"studio={ALPHA},night={BRAVO},{CHARLIE}"
LABELS = {ALPHA: "studio", BRAVO: "night", CHARLIE: label(CHARLIE)}
PLENTY = 100_000_000  # $100 per key
POLL = "GET /api/video/tasks/{task_id}"
SUBMIT = "POST /api/video/generate"


def _three_keys(make_sandbox, *, time_scale=0.01, balances=None):
    balances = balances or {}
    return make_sandbox(
        time_scale=time_scale, keys={k: balances.get(k, PLENTY) for k in (ALPHA, BRAVO, CHARLIE)}
    )


def _run(sandbox, *args, ledger, keys=KEYS):
    return batchgen(*args, *FAST, ledger=ledger, base_url=sandbox.base_url, keys=keys)


def _spent_per_label(ledger: Path | str) -> dict[str, int]:
    return {
        r["key_label"]: r["spent"]
        for r in rows(
            ledger,
            "SELECT key_label, SUM(cost_micro_usd) AS spent FROM attempts"
            " WHERE state = 'completed' GROUP BY key_label",
        )
    }


def _completed_per_label(truth, ledger: Path | str) -> dict[str, int]:
    """What the sandbox says each key's completed tasks cost, for the tasks the ledger
    knows of (a submission killed on the wire may have created one it never learnt of:
    that is an unknown attempt, its possible cost in `unknown_usd`)."""
    known = set(recorded_task_ids(ledger))
    spent: dict[str, int] = {}
    for s in truth.submissions:
        if s.status == "completed" and s.task_id in known:
            spent[LABELS[s.key]] = spent.get(LABELS[s.key], 0) + s.price_micros
    return spent


def _no_key_anywhere(ledger: Path | str, *texts: str) -> None:
    stored = stored_bytes(ledger)
    for key in (ALPHA, BRAVO, CHARLIE):
        assert key.encode() not in stored
        for text in texts:
            assert key not in text


def test_three_keys_fill_three_slots_each_poll_with_their_own_key_and_match_the_charges(
    make_sandbox, ledger_at, tmp_path
):
    sandbox = _three_keys(make_sandbox)
    ledger, log = ledger_at, tmp_path / "run.log"
    manifest = grok_batch(tmp_path / "m.yaml", 27)
    result = _run(sandbox, "run", str(manifest), "--log", str(log), ledger=ledger)
    assert result.returncode == 0, result.stderr
    truth = sandbox.sim.truth()
    assert len(truth.submissions) == 27  # each job once
    for key in (ALPHA, BRAVO, CHARLIE):
        assert truth.peak_active.get(key) == 3  # every key used, never past its 3 slots
    assert truth.responses[POLL].get("404", 0) == 0  # no poll with another key
    assert truth.foreign_poll_count() == 0
    assert truth.responses[SUBMIT].get("429", 0) == 0
    assert _spent_per_label(ledger) == _completed_per_label(truth, ledger)
    labels = {r["key_label"] for r in rows(ledger, "SELECT DISTINCT key_label FROM attempts")}
    assert labels == set(LABELS.values())
    status = batchgen("status", "--json", ledger=ledger)
    keys = {k["label"]: k for k in json.loads(status.stdout)["keys"]}
    assert {label: k["in_flight"] for label, k in keys.items()} == dict.fromkeys(keys, 0)
    assert {label: to_micros(k["spent_usd"]) for label, k in keys.items()} == _spent_per_label(
        ledger
    )
    by_key = json.loads(batchgen("report", "--by", "key", "--format", "json", ledger=ledger).stdout)
    assert {g["key"] for g in by_key["groups"]} == set(LABELS.values())
    report = batchgen("report", "--jobs", "--format", "csv", ledger=ledger)
    _no_key_anywhere(
        ledger, result.stdout, result.stderr, log.read_text(), status.stdout, report.stdout
    )


FAULTS = {
    "submit_500_rate": 0.15,
    "poll_500_rate": 0.1,
    "fail_rate": 0.15,
    "spurious_429_rate": 0.1,
    "drop_rate": 0.05,
    "garbage_rate": 0.05,
    "echo_key": True,
}


@pytest.mark.parametrize(
    "behaviour",
    [{"progress": mode} for mode in PROGRESS_MODES] + [FAULTS],
    ids=[*PROGRESS_MODES, "faults"],
)
def test_every_progress_behaviour_and_fault_keeps_each_task_on_its_key(
    make_sandbox, ledger_at, tmp_path, behaviour
):
    """Whatever the service says about progress, and whatever faults it throws (a key it
    echoes back included), tasks stay on their key's slots and polls, and the money per
    key matches the service's."""
    sandbox = make_sandbox(
        time_scale=0.01, seed=5, keys=dict.fromkeys((ALPHA, BRAVO, CHARLIE), PLENTY), **behaviour
    )
    ledger = ledger_at
    manifest = grok_batch(tmp_path / "m.yaml", 18)
    result = _run(sandbox, "run", str(manifest), "--max-attempts", "8", ledger=ledger)
    assert result.returncode in (0, 1), result.stderr  # 1: a job out of attempts
    truth = sandbox.sim.truth()
    assert truth.foreign_poll_count() == 0
    assert all(truth.peak_active.get(key, 0) <= 3 for key in (ALPHA, BRAVO, CHARLIE))
    assert sum(1 for key in (ALPHA, BRAVO, CHARLIE) if truth.peak_active.get(key)) == 3
    assert _spent_per_label(ledger) == _completed_per_label(truth, ledger)
    labels = {
        r["key_label"]
        for r in rows(ledger, "SELECT key_label FROM attempts WHERE task_id IS NOT NULL")
    }
    assert labels <= set(LABELS.values())
    _no_key_anywhere(ledger, result.stdout, result.stderr)


def test_a_key_out_of_balance_leaves_the_batch_to_the_others(make_sandbox, ledger_at, tmp_path):
    sandbox = _three_keys(make_sandbox, balances={BRAVO: 300_000})  # three $0.10 clips
    ledger = ledger_at
    manifest = grok_batch(tmp_path / "m.yaml", 15)
    result = _run(sandbox, "run", str(manifest), ledger=ledger)
    assert result.returncode == 0, result.stderr
    assert "balance exhausted on key night" in result.stderr
    truth = sandbox.sim.truth()
    assert truth.statuses() == {"completed": 15}
    assert sum(1 for s in truth.submissions if s.key == BRAVO) == 3
    assert truth.responses[SUBMIT].get("402", 0) >= 1
    assert _spent_per_label(ledger) == _completed_per_label(truth, ledger)
    assert rows(ledger, "SELECT COUNT(*) AS n FROM jobs WHERE status = 'completed'")[0]["n"] == 15


def test_a_refused_key_is_taken_out_and_the_others_finish_the_batch(
    make_sandbox, ledger_at, tmp_path
):
    sandbox = _three_keys(make_sandbox)
    ledger = ledger_at
    manifest = grok_batch(tmp_path / "m.yaml", 12)
    keys = f"studio={ALPHA},revoked=okpk_not_known_here,{CHARLIE}"
    result = _run(sandbox, "run", str(manifest), ledger=ledger, keys=keys)
    assert result.returncode == 0, result.stderr
    assert "refused key revoked" in result.stderr
    assert "okpk_not_known_here" not in result.stderr + result.stdout
    truth = sandbox.sim.truth()
    assert truth.statuses() == {"completed": 12}
    assert truth.responses[SUBMIT].get("401", 0) == 1  # tried once, then left out
    assert b"okpk_not_known_here" not in stored_bytes(ledger)


def test_every_key_refused_exits_4_naming_the_labels_and_changes_no_job(
    make_sandbox, ledger_at, tmp_path
):
    sandbox = _three_keys(make_sandbox)
    ledger = ledger_at
    manifest = grok_batch(tmp_path / "m.yaml", 6)
    keys = "one=okpk_wrong_1,two=okpk_wrong_2"
    result = _run(sandbox, "run", str(manifest), ledger=ledger, keys=keys)
    assert result.returncode == 4, result.stderr
    assert "one, two" in result.stderr
    assert "okpk_wrong" not in result.stderr + result.stdout
    assert sandbox.sim.truth().submissions == []
    statuses = {r["status"] for r in rows(ledger, "SELECT status FROM jobs")}
    assert statuses == {"queued"}


def _killed_mid_run(make_sandbox, ledger, tmp_path, jobs: int = 18):
    """A run on three keys killed (kill -9) while tasks of every key are in flight."""
    sandbox = _three_keys(make_sandbox, time_scale=0.2)  # grok 5 s: a few seconds each
    manifest = grok_batch(tmp_path / "m.yaml", jobs)
    process = spawn(
        "run", str(manifest), *FAST, ledger=ledger, base_url=sandbox.base_url, keys=KEYS
    )

    def every_key_has_a_task_running() -> bool:
        if not ledger_written(ledger):
            return False
        try:
            found = rows(ledger, "SELECT DISTINCT key_label FROM attempts WHERE state = 'running'")
        except Exception:  # the ledger is being created
            return False
        return len(found) == 3

    wait_for(every_key_has_a_task_running, timeout=60, what="a task running on every key")
    process.send_signal(signal.SIGKILL)
    process.wait()
    running = {
        (r["id"]): (r["task_id"], r["key_label"])
        for r in rows(
            ledger,
            "SELECT j.id, j.task_id, a.key_label FROM jobs j JOIN attempts a"
            " ON a.campaign = j.campaign AND a.job_id = j.id AND a.task_id = j.task_id"
            " WHERE j.status = 'running'",
        )
    }
    assert running
    return sandbox, ledger, running


def _final_tasks(ledger: Path | str) -> dict[str, str | None]:
    return {r["id"]: r["task_id"] for r in rows(ledger, "SELECT id, task_id FROM jobs")}


def test_kill_9_then_resume_with_the_keys_in_another_order_polls_each_task_with_its_key(
    make_sandbox, ledger_at, tmp_path
):
    sandbox, ledger, running = _killed_mid_run(make_sandbox, ledger_at, tmp_path)
    reordered = f"{CHARLIE},night={BRAVO},studio={ALPHA}"
    result = _run(sandbox, "resume", ledger=ledger, keys=reordered)
    assert result.returncode == 0, result.stderr
    truth = sandbox.sim.truth()
    assert truth.responses[POLL].get("404", 0) == 0
    assert truth.foreign_poll_count() == 0
    final = _final_tasks(ledger)
    for job_id, (task_id, _) in running.items():
        assert final[job_id] == task_id  # followed to its end, not submitted again
    assert len({s.task_id for s in truth.submissions}) == len(truth.submissions)
    assert _spent_per_label(ledger) == _completed_per_label(truth, ledger)


def test_resume_without_one_key_leaves_its_tasks_alone_and_exits_3_naming_it(
    make_sandbox, ledger_at, tmp_path
):
    sandbox, ledger, running = _killed_mid_run(make_sandbox, ledger_at, tmp_path)
    night = {job for job, (_, key_label) in running.items() if key_label == "night"}
    assert night
    night_tasks = {running[job][0] for job in night}
    polls_before = {t: sandbox.sim.truth().polls.get(t, 0) for t in night_tasks}
    submitted_before = len(sandbox.sim.truth().submissions)
    without_night = f"studio={ALPHA},{CHARLIE}"
    result = _run(sandbox, "resume", ledger=ledger, keys=without_night)
    assert result.returncode == 3, result.stderr
    assert "night" in result.stderr.splitlines()[-1] or "key night" in result.stderr
    assert "(night: `night=<the key>`)" in result.stderr  # exactly what works: named again
    truth = sandbox.sim.truth()
    assert {t: truth.polls.get(t, 0) for t in night_tasks} == polls_before  # not polled
    new = truth.submissions[submitted_before:]
    assert not {s.payload["prompt"] for s in new} & {f"clip number {j[5:]}" for j in night}
    final = _final_tasks(ledger)
    assert all(final[job] == running[job][0] for job in night)
    statuses = {r["id"]: r["status"] for r in rows(ledger, "SELECT id, status FROM jobs")}
    assert {statuses[job] for job in night} == {"running"}
    # With the key given again, they are taken to their end.
    again = _run(sandbox, "resume", ledger=ledger)
    assert again.returncode == 0, again.stderr
    assert sandbox.sim.truth().responses[POLL].get("404", 0) == 0
    assert sandbox.sim.truth().foreign_poll_count() == 0
    assert all(_final_tasks(ledger)[job] == running[job][0] for job in night)
