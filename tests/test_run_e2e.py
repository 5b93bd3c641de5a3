"""The scheduler end to end: the real `batchgen` command against the sandbox on 127.0.0.1,
on a real ledger, a SQLite file and a PostgreSQL database (PRODUCT.md §5, §6, §7, §10)."""

from __future__ import annotations

import json
import re
import shlex
import signal
import time
from pathlib import Path

import httpx
import pytest

from batchgen.ledger.db import companion, is_url
from batchgen.money import to_micros, usd
from batchgen.validate import check_manifest
from tests.e2e import (
    FAST,
    batchgen,
    grok_batch,
    known_completed_micros,
    ledger_spent_micros,
    ledger_written,
    on_sandbox,
    recorded_task_ids,
    rows,
    spawn,
    status_json,
    stored_bytes,
)

SCALE = 0.01  # grok 5 s: about 0.4 s of generation


def each_task_submitted_once(ledger, truth) -> None:
    """No task with a recorded task id was submitted again: every sandbox submission is
    one ledger attempt that created (or may have created) a task, never two."""
    attempts = rows(
        ledger,
        "SELECT campaign, job_id, state FROM attempts"
        " WHERE state IN ('running', 'completed', 'failed', 'unknown')",
    )
    known = [a for a in attempts if a["state"] != "unknown"]
    assert len(truth.submissions) >= len(known)
    assert len(truth.submissions) <= len(attempts)
    assert len(set(recorded_task_ids(ledger))) == len(recorded_task_ids(ledger))


def test_a_batch_completes_with_exact_costs_and_no_429(make_sandbox, ledger_at, tmp_path):
    sandbox = make_sandbox(time_scale=SCALE)
    ledger = ledger_at
    manifest = grok_batch(tmp_path / "m.yaml", 9)
    result = on_sandbox(sandbox, "run", str(manifest), *FAST, ledger=ledger)
    assert result.returncode == 0, result.stderr
    truth = sandbox.sim.truth()
    assert status_json(ledger)["counts"]["completed"] == 9
    assert status_json(ledger)["spent_usd"] == "0.90"
    assert ledger_spent_micros(ledger) == truth.net_charged_micros() == 900_000
    assert truth.count("POST /api/video/generate", 429) == 0
    assert truth.peak_active[sandbox.key] <= 3
    each_task_submitted_once(ledger, truth)


def test_a_second_run_of_the_same_manifest_submits_nothing(make_sandbox, ledger_at, tmp_path):
    sandbox = make_sandbox(time_scale=SCALE)
    ledger = ledger_at
    manifest = grok_batch(tmp_path / "m.yaml", 3)
    for _ in range(2):
        result = on_sandbox(sandbox, "run", str(manifest), *FAST, ledger=ledger)
        assert result.returncode == 0, result.stderr
    assert len(sandbox.sim.truth().submissions) == 3


@pytest.mark.parametrize("key", [None, "okpk_wrong"])
def test_a_missing_or_wrong_key_exits_4_naming_the_variable_and_fails_no_job(
    make_sandbox, ledger_at, tmp_path, key
):
    sandbox = make_sandbox(time_scale=SCALE)
    ledger = ledger_at
    manifest = grok_batch(tmp_path / "m.yaml", 4)
    started = time.monotonic()
    result = batchgen(
        "run", str(manifest), *FAST, ledger=ledger, base_url=sandbox.base_url, key=key
    )
    assert result.returncode == 4
    assert time.monotonic() - started < 10
    assert "OKAYPIC_API_KEY" in result.stderr
    assert "Traceback" not in result.stderr
    assert sandbox.sim.truth().submissions == []
    if ledger_written(ledger):
        assert rows(ledger, "SELECT COUNT(*) AS n FROM jobs WHERE status != 'queued'")[0]["n"] == 0


def test_402_mid_run_exits_3_keeps_the_rest_queued_and_resume_finishes_after_a_top_up(
    make_sandbox, ledger_at, tmp_path
):
    sandbox = make_sandbox(time_scale=SCALE, keys={"okpk_small": 450_000})  # 4 x $0.10 + 0.05
    ledger = ledger_at
    manifest = grok_batch(tmp_path / "m.yaml", 8)
    result = batchgen(
        "run", str(manifest), *FAST, ledger=ledger, base_url=sandbox.base_url, key="okpk_small"
    )
    assert result.returncode == 3, result.stderr
    assert "balance" in result.stderr and "batchgen resume" in result.stderr
    counts = status_json(ledger)["counts"]
    assert counts["completed"] == 4
    assert counts["queued"] == 4 and counts["failed"] == 0
    sandbox.sim.top_up("okpk_small", 1_000_000)
    result = batchgen("resume", *FAST, ledger=ledger, base_url=sandbox.base_url, key="okpk_small")
    assert result.returncode == 0, result.stderr
    assert status_json(ledger)["counts"]["completed"] == 8
    truth = sandbox.sim.truth()
    assert ledger_spent_micros(ledger) == truth.net_charged_micros() == 800_000
    each_task_submitted_once(ledger, truth)


def test_the_budget_is_never_exceeded_and_the_run_exits_3(make_sandbox, ledger_at, tmp_path):
    sandbox = make_sandbox(time_scale=SCALE)
    ledger = ledger_at
    manifest = grok_batch(tmp_path / "m.yaml", 6, budget="0.35")
    result = on_sandbox(sandbox, "run", str(manifest), *FAST, ledger=ledger)
    assert result.returncode == 3, result.stderr
    assert "budget" in result.stderr
    truth = sandbox.sim.truth()
    assert truth.charged_micros() == 300_000
    status = status_json(ledger)
    assert status["counts"] == {
        "queued": 3,
        "submitting": 0,
        "running": 0,
        "completed": 3,
        "failed": 0,
        "held": 0,
    }
    reasons = {r["reason"] for r in rows(ledger, "SELECT reason FROM jobs WHERE status='queued'")}
    assert reasons == {"budget"}


def test_with_every_fault_on_each_job_ends_and_spend_equals_net_charges(
    make_sandbox, ledger_at, tmp_path
):
    sandbox = make_sandbox(
        time_scale=SCALE,
        seed=7,
        submit_500_rate=0.15,
        poll_500_rate=0.15,
        fail_rate=0.15,
        spurious_429_rate=0.15,
        drop_rate=0.1,
        garbage_rate=0.1,
        latency=(0.0, 0.01),
    )
    ledger = ledger_at
    manifest = grok_batch(tmp_path / "m.yaml", 20)
    result = on_sandbox(sandbox, "run", str(manifest), *FAST, "--max-attempts", "6", ledger=ledger)
    assert result.returncode in (0, 1), result.stderr
    assert "Traceback" not in result.stderr
    status = status_json(ledger)
    assert status["counts"]["completed"] + status["counts"]["failed"] == 20
    for job in status["jobs"]:
        assert job["status"] == "completed" or job["error"]
    truth = sandbox.sim.truth()
    money = rows(
        ledger,
        "SELECT"
        " SUM(CASE WHEN state IN ('completed','failed') THEN cost_micro_usd END) s,"
        " SUM(CASE WHEN state = 'unknown' THEN unit_price_micro_usd END) u"
        " FROM attempts",
    )[0]
    # Spent is exactly what completed tasks cost; unknown attempts cover whatever the
    # service charged for tasks batchgen never heard of.
    assert money["s"] == known_completed_micros(ledger, truth)
    assert money["s"] <= truth.net_charged_micros() <= money["s"] + (money["u"] or 0)
    each_task_submitted_once(ledger, truth)


def test_accept_then_drop_shows_as_unknown_cost_covering_what_was_charged(
    make_sandbox, ledger_at, tmp_path
):
    sandbox = make_sandbox(time_scale=SCALE, seed=3, drop_rate=0.4)
    ledger = ledger_at
    manifest = grok_batch(tmp_path / "m.yaml", 8)
    result = on_sandbox(sandbox, "run", str(manifest), *FAST, "--max-attempts", "8", ledger=ledger)
    assert result.returncode == 0, result.stderr
    status = status_json(ledger)
    truth = sandbox.sim.truth()
    dropped = truth.faults.get("submit.drop", 0)
    assert dropped > 0
    assert status["unknown_usd"] == usd(dropped * 100_000)
    spent = ledger_spent_micros(ledger)
    assert spent + dropped * 100_000 == truth.net_charged_micros()


def test_hold_keeps_a_job_of_unknown_outcome_for_a_person(make_sandbox, ledger_at, tmp_path):
    sandbox = make_sandbox(time_scale=SCALE, seed=3, drop_rate=0.5)
    ledger = ledger_at
    manifest = grok_batch(tmp_path / "m.yaml", 6)
    result = on_sandbox(sandbox, "run", str(manifest), *FAST, "--on-unknown", "hold", ledger=ledger)
    held = status_json(ledger)["counts"]["held"]
    assert held > 0
    assert result.returncode == 3
    assert "retry --unknown" in result.stderr
    before = len(sandbox.sim.truth().submissions)
    assert batchgen("retry", "--unknown", ledger=ledger).returncode == 0
    result = on_sandbox(sandbox, "resume", *FAST, "--on-unknown", "hold", ledger=ledger)
    assert len(sandbox.sim.truth().submissions) > before


def wait_for(predicate, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_kill_9_mid_run_then_resume_completes_without_resubmitting_a_recorded_task(
    make_sandbox, ledger_at, tmp_path
):
    sandbox = make_sandbox(time_scale=SCALE * 3)
    ledger = ledger_at
    manifest = grok_batch(tmp_path / "m.yaml", 12)
    process = spawn(
        "run", str(manifest), *FAST, ledger=ledger, base_url=sandbox.base_url, key=sandbox.key
    )
    wait_for(lambda: len(sandbox.sim.truth().submissions) >= 5)
    process.send_signal(signal.SIGKILL)
    process.wait()
    before = set(recorded_task_ids(ledger))
    assert before
    result = on_sandbox(sandbox, "resume", *FAST, ledger=ledger)
    assert result.returncode == 0, result.stderr
    truth = sandbox.sim.truth()
    assert status_json(ledger)["counts"]["completed"] == 12
    if not is_url(ledger):  # a SQLite file killed mid-write is still whole
        assert rows(ledger, "PRAGMA integrity_check")[0]["integrity_check"] == "ok"
    each_task_submitted_once(ledger, truth)
    spent = ledger_spent_micros(ledger)
    assert spent == known_completed_micros(ledger, truth)
    unknown = rows(
        ledger,
        "SELECT COALESCE(SUM(unit_price_micro_usd), 0) u FROM attempts WHERE state = 'unknown'",
    )[0]["u"]
    assert spent <= truth.net_charged_micros() <= spent + unknown


def test_ctrl_c_exits_130_within_2_s_and_resume_finishes_without_duplicates(
    make_sandbox, ledger_at, tmp_path
):
    sandbox = make_sandbox(time_scale=SCALE * 5)
    ledger = ledger_at
    manifest = grok_batch(tmp_path / "m.yaml", 9)
    process = spawn(
        "run", str(manifest), *FAST, ledger=ledger, base_url=sandbox.base_url, key=sandbox.key
    )
    wait_for(lambda: len(sandbox.sim.truth().submissions) >= 3)
    process.send_signal(signal.SIGINT)
    started = time.monotonic()
    process.wait(timeout=10)
    assert time.monotonic() - started < 2.0
    assert process.returncode == 130
    result = on_sandbox(sandbox, "resume", *FAST, ledger=ledger)
    assert result.returncode == 0, result.stderr
    truth = sandbox.sim.truth()
    assert status_json(ledger)["counts"]["completed"] == 9
    each_task_submitted_once(ledger, truth)
    assert truth.duplicate_payloads() == {}


def test_the_api_key_appears_in_no_output_log_or_ledger_file(make_sandbox, ledger_at, tmp_path):
    """Also when the service echoes the bearer token in its 400, 401, 500 and failed-task
    messages (the sandbox's echo_key): such text is redacted before it is stored or shown."""
    secret, refused = "okpk_secret_4f9a1c", "okpk_refused_77e2b0"
    sandbox = make_sandbox(
        time_scale=SCALE,
        keys={secret: 10_000_000},
        drop_rate=0.2,
        submit_500_rate=0.2,
        poll_500_rate=0.3,
        reject_rate=0.2,
        fail_rate=0.3,
        echo_key=True,
        seed=5,
    )
    ledger = ledger_at
    manifest = grok_batch(tmp_path / "m.yaml", 8)
    outputs = []
    for key, args in (
        (refused, ("run", str(manifest), *FAST)),  # 401, echoing the refused key
        (secret, ("run", str(manifest), *FAST, "--download", str(tmp_path / "out"))),
        (secret, ("status",)),
        (secret, ("status", "--json")),
        (secret, ("report", "--format", "csv")),
        (secret, ("report", "--jobs", "--format", "json")),
        (secret, ("report", "--jobs")),
    ):
        result = batchgen(*args, ledger=ledger, base_url=sandbox.base_url, key=key)
        outputs += [result.stdout, result.stderr]
    for text in outputs:
        assert secret not in text and refused not in text
    for path in tmp_path.rglob("*"):
        if path.is_file():
            content = path.read_bytes()
            assert secret.encode() not in content and refused.encode() not in content, path
    stored = stored_bytes(ledger)  # a PostgreSQL ledger is not in tmp_path
    assert secret.encode() not in stored and refused.encode() not in stored
    # The hostile messages were really sent, and batchgen kept their words, not the key.
    truth = sandbox.sim.truth()
    assert truth.count("POST /api/video/generate", 400) >= 1
    assert truth.count("POST /api/video/generate", 401) >= 1
    assert truth.count("POST /api/video/generate", 500) >= 1
    assert any(s.fails for s in truth.submissions)
    errors = [r["error"] for r in rows(ledger, "SELECT error FROM attempts") if r["error"]]
    assert any("content policy" in e for e in errors)
    assert any("Authorization: Bearer [key-" in e for e in errors)


def test_a_password_in_a_postgresql_url_is_never_shown_or_stored(
    make_sandbox, postgres_url, tmp_path
):
    """PRODUCT §5: the password a PostgreSQL URL carries is redacted as a key is. No output
    of run (on the service, in the sandbox), ingest, plan, status, report or an error shows
    it, whether the URL is typed after --ledger (the advised commands repeat it) or set in
    BATCHGEN_LEDGER; the ledger stores it nowhere (its events included); the files kept with
    the ledger (the sandbox's state) neither hold it nor are named after it. The test
    server trusts any password: this one is accepted."""
    secret = "s3cret"
    ledger = postgres_url.replace("batchgen@", f"batchgen:{secret}@", 1)
    assert secret in ledger
    no_database = ledger.rsplit("/", 1)[0] + "/no_such_database"
    sandbox = make_sandbox(time_scale=SCALE)
    manifest = grok_batch(tmp_path / "m.yaml", 4, budget="0.30")  # stops on the budget: 3
    demo = grok_batch(tmp_path / "demo.yaml", 2, campaign="demo")
    typed = ("--ledger", ledger)
    results = {}
    for args in (
        ("ingest", str(manifest), "--json", *typed),
        ("ingest", str(manifest)),
        ("plan", str(manifest), *typed),
        ("plan", str(manifest), "--json"),
        (*typed, "run", str(manifest), *FAST),  # its advice repeats --ledger
        ("run", str(demo), "--sandbox", *typed),
        ("resume", "--sandbox", *typed),
        ("status", *typed),
        ("status", "--json"),
        ("report", *typed),
        ("report", "--format", "csv"),
        ("report", "--jobs", "--format", "json"),
        ("download", "--out", str(tmp_path / "files"), *typed),
        ("status", "--ledger", no_database),  # an error naming the ledger
        ("run", str(manifest), "--ledger", no_database),
    ):
        result = batchgen(*args, ledger=ledger, base_url=sandbox.base_url, key=sandbox.key)
        results[args] = result
        assert secret not in result.stdout + result.stderr, (args, result.stdout, result.stderr)
        assert "Traceback" not in result.stderr, (args, result.stderr)
    stopped = results[(*typed, "run", str(manifest), *FAST)]
    assert stopped.returncode == 3 and "--ledger 'postgresql://batchgen:***@" in stopped.stderr
    assert results[("run", str(demo), "--sandbox", *typed)].returncode == 0
    assert results[("status", "--json")].returncode == 0
    assert json.loads(results[("status", "--json")].stdout)["counts"]["completed"] == 5
    assert results[("status", "--ledger", no_database)].returncode == 1
    assert "no_such_database" in results[("status", "--ledger", no_database)].stderr

    assert secret.encode() not in stored_bytes(ledger)  # every row of every table
    assert rows(ledger, "SELECT COUNT(*) AS n FROM events")[0]["n"] > 0
    state = companion(ledger, ".sandbox.json")
    assert state.is_file() and state.is_relative_to(tmp_path)  # XDG_STATE_HOME: conftest
    for path in tmp_path.rglob("*"):
        assert secret not in path.name, path
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path


def test_a_run_whose_downloads_failed_says_so_in_its_exit_line_and_exits_3(
    make_sandbox, ledger_at, tmp_path
):
    sandbox = make_sandbox(time_scale=SCALE)
    sandbox.sim.base_url = "http://127.0.0.1:1"  # result URLs nobody answers
    ledger, out = ledger_at, tmp_path / "out"
    manifest = grok_batch(tmp_path / "m.yaml", 3)
    result = on_sandbox(sandbox, "run", str(manifest), *FAST, "--download", str(out), ledger=ledger)
    assert result.returncode == 3, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert "3 result file(s) could not be saved" in last and "batchgen download" in last
    assert "files in" not in result.stderr
    assert status_json(ledger)["counts"]["completed"] == 3  # generated once, not again
    assert len(sandbox.sim.truth().submissions) == 3


def test_a_completed_job_keeps_no_error_from_its_way_there(make_sandbox, ledger_at, tmp_path):
    sandbox = make_sandbox(time_scale=SCALE, spurious_429_rate=0.5, fail_rate=0.3, seed=2)
    ledger = ledger_at
    manifest = grok_batch(tmp_path / "m.yaml", 6)
    result = on_sandbox(sandbox, "run", str(manifest), *FAST, "--max-attempts", "9", ledger=ledger)
    assert result.returncode == 0, result.stderr
    refused = rows(ledger, "SELECT error FROM attempts WHERE http_status = 429")
    assert refused and all(r["error"] for r in refused)  # the history stays in the attempts
    assert rows(ledger, "SELECT COUNT(*) AS n FROM attempts WHERE state = 'failed'")[0]["n"] > 0
    assert [job["error"] for job in status_json(ledger)["jobs"]] == [None] * 6


EXAMPLES = sorted((Path(__file__).resolve().parent.parent / "manifests").glob("*.yaml"))


@pytest.mark.parametrize("manifest", EXAMPLES, ids=lambda p: p.name)
def test_every_example_manifest_completes_at_exactly_its_price_without_400_or_429(
    make_sandbox, ledger_at, manifest
):
    sandbox = make_sandbox(time_scale=0.002)
    ledger = ledger_at
    expected = sum(job.cost_micros() for job in check_manifest(manifest).jobs)
    result = on_sandbox(sandbox, "run", str(manifest), *FAST, ledger=ledger)
    assert result.returncode == 0, result.stderr
    truth = sandbox.sim.truth()
    status = status_json(ledger)
    assert status["counts"]["completed"] == len(status["jobs"]) == len(truth.submissions)
    assert to_micros(status["spent_usd"]) == expected == truth.net_charged_micros()
    for route in ("POST /api/video/generate", "POST /api/image/generate"):
        assert truth.count(route, 400) == 0
        assert truth.count(route, 429) == 0


@pytest.mark.parametrize("where", ["before", "after"])
def test_the_commands_a_run_advises_repeat_the_ledger_typed_before_or_after_it(
    make_sandbox, ledger_at, tmp_path, where
):
    """PRODUCT §7: `--ledger` is also accepted after the command; typed either way, the
    commands the run advises repeat it (BATCHGEN_LEDGER names another ledger here: the
    advice followed without it would open that one)."""
    sandbox = make_sandbox(time_scale=SCALE)
    manifest = grok_batch(tmp_path / "m.yaml", 2, budget="0.10")  # one runs, one waits
    run = ["run", str(manifest), *FAST]
    typed = ["--ledger", str(ledger_at)]
    args = [*typed, *run] if where == "before" else [*run, *typed]
    result = batchgen(
        *args, ledger=tmp_path / "elsewhere.db", base_url=sandbox.base_url, key=sandbox.key
    )
    assert result.returncode == 3, result.stderr  # the budget
    advised = re.findall(r"`(batchgen [^`]*)`", result.stderr)
    assert advised, result.stderr
    for command in advised:
        assert shlex.split(command)[1:3] == typed, command
    assert not (tmp_path / "elsewhere.db").exists()


def test_the_sandbox_demo_only_advises_commands_that_work(ledger_at, tmp_path):
    """`batchgen run manifests/quickstart.yaml --sandbox`, as the README suggests: every
    command its closing lines name works on the ledger it leaves (the in-process sandbox,
    and its result URLs, are gone by then)."""
    ledger = ledger_at
    quickstart = Path(__file__).parent.parent / "manifests" / "quickstart.yaml"
    demo = batchgen("run", str(quickstart), "--sandbox", ledger=ledger)
    assert demo.returncode == 0, demo.stderr
    closing = demo.stderr.splitlines()[-3:]
    advised = [c for line in closing for c in re.findall(r"`(batchgen [^`]*)`", line)]
    assert advised, demo.stderr
    for command in advised:
        args = shlex.split(command.replace("DIR", str(tmp_path / "out")))[1:]
        if "review" in args:  # a server: it must start and serve its page
            assert_serves_the_review_page([*args, "--port", "0"], ledger)
            continue
        followed = batchgen(*args, ledger=ledger, timeout=60)
        assert followed.returncode == 0, f"{command}: {followed.stderr}"


def assert_serves_the_review_page(args: list[str], ledger: Path | str) -> None:
    server = spawn(*args, ledger=ledger)
    try:
        assert server.stdout is not None
        line = server.stdout.readline()
        assert line.startswith("review page: http://127.0.0.1:"), line + server.stderr.read()
        page = httpx.get(line.split(": ", 1)[1].strip(), timeout=10)
        assert page.status_code == 200 and "<html" in page.text.lower()
    finally:
        server.terminate()
        server.wait(timeout=10)
