"""`--notify URL` end to end (PRODUCT.md §6, §7): the real `batchgen run` against the
sandbox, each way a run can end, with a real JSON webhook on 127.0.0.1 (Apprise's
`json://` URL) that records every message. Exactly one message per run, whatever ended
it, holding the same summary the screen shows; a target that refuses, hangs or cannot be
reached changes neither the exit code nor the ledger and holds the exit a few seconds at
most; a URL Apprise cannot read is a usage error before anything is sent."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from batchgen.sandbox import serve
from batchgen.sandbox.config import DEFAULT_KEY
from tests.e2e import (
    FAST,
    StderrWatch,
    batchgen,
    command_env,
    grok_batch,
    ledger_written,
    on_sandbox,
    rows,
    spawn,
    status_json,
    wait_for,
)
from tests.hostile import HostileSandbox, redirect
from tests.webhook import (
    refusing_url,
    silent_target,
    trickling_target,
    unreachable_target,
    webhook,
)

SCALE = 0.01  # grok 5 s: about 0.05 s of generation
FEW_SECONDS = 8.0  # the product promises "a few seconds"; notify.WAIT is 5


def notified(sandbox: Any, manifest: Path, ledger: Path | str, *urls: str, args: tuple = ()) -> Any:
    notify = [arg for url in urls for arg in ("--notify", url)]
    return on_sandbox(sandbox, "run", str(manifest), *FAST, *notify, *args, ledger=ledger)


def the_message(hook: Any) -> dict[str, Any]:
    """The one message the run sent (two would fail here)."""
    assert len(hook.messages) == 1, hook.messages
    return hook.messages[0]


def summary_on_screen(stderr: str) -> list[str]:
    """The summary as the screen shows it: from the title line to the end (no plain-log
    timestamps)."""
    lines = stderr.splitlines()
    start = max(i for i, line in enumerate(lines) if line.startswith("batchgen run "))
    return [line for line in lines[start:] if not line.startswith("notification #")]


def test_all_done_one_message_with_counts_spend_and_where_the_files_are(
    make_sandbox, ledger_at, tmp_path
):
    sandbox = make_sandbox(time_scale=SCALE)
    ledger = ledger_at
    manifest = grok_batch(tmp_path / "m.yaml", 3, budget="1.00")
    with webhook() as hook:
        result = notified(sandbox, manifest, ledger, hook.url())
        assert result.returncode == 0, result.stderr
        message = the_message(hook)
    assert message["path"] == "/hook"
    assert message["title"] == "batchgen run e2e: all jobs completed (exit 0)"
    assert message["type"] == "success"
    body = message["message"].splitlines()
    assert (
        body[0] == "3 completed, 0 failed, 0 held, 0 queued, 0 running; spent $0.30 of $1.00 budget"
    )
    assert any("`batchgen review --out " in line for line in body)
    # the same text on the screen, but for the last line: how long, on which host
    assert summary_on_screen(result.stderr) == [message["title"], *body[:-1]]
    assert "notification #1 (json://127.0.0.1:" in result.stderr and ") sent" in result.stderr


def test_the_message_gives_the_files_absolute_folder_the_host_and_how_long_the_run_took(
    make_sandbox, ledger_at, tmp_path
):
    sandbox = make_sandbox(time_scale=SCALE)
    manifest = grok_batch(tmp_path / "m.yaml", 2)
    env = command_env(ledger_at, sandbox.base_url, sandbox.key)
    with webhook() as hook:
        result = subprocess.run(
            [sys.executable, "-m", "batchgen", "run", str(manifest), *FAST,
             "--download", "out", "--notify", hook.url()],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        body = the_message(hook)["message"].splitlines()
    assert f"files in {tmp_path / 'out'}/" in body
    assert re.fullmatch(rf"run took [0-9]+s on {re.escape(socket.gethostname())}", body[-1])
    assert summary_on_screen(result.stderr) == [the_message(hook)["title"], *body[:-1]]


@pytest.mark.parametrize("how", ["rejected (400)", "task failed"])
def test_failed_jobs_are_named_with_their_reasons_and_the_key_the_service_echoes_never_is(
    make_sandbox, ledger_at, tmp_path, how
):
    knobs = {"reject_rate": 1.0} if how == "rejected (400)" else {"fail_rate": 1.0}
    sandbox = make_sandbox(time_scale=SCALE, echo_key=True, **knobs)
    ledger = ledger_at
    manifest = grok_batch(tmp_path / "m.yaml", 7)
    with webhook() as hook:
        result = notified(sandbox, manifest, ledger, hook.url(), args=("--max-attempts", "1"))
        assert result.returncode == 1, result.stderr
        message = the_message(hook)
    assert message["title"] == "batchgen run e2e: ended with 7 failed job(s) (exit 1)"
    assert message["type"] == "failure"
    body = message["message"]
    assert body.startswith("0 completed, 7 failed, 0 held, 0 queued, 0 running; spent $0.00")
    failed = [line for line in body.splitlines() if line.startswith("failed: e2e/clip-")]
    assert len(failed) == 5 and all("after 1 attempt(s): " in line for line in failed)
    assert "and 2 more failed job(s)" in body
    assert "`batchgen retry --campaign e2e` requeues them" in body
    # the service repeated the bearer token in each message: only its label is left
    assert sandbox.key not in str(hook.messages) and "[key-" in body
    assert sandbox.key not in result.stderr


def test_an_empty_balance_is_a_message_saying_top_up_then_resume(make_sandbox, ledger_at, tmp_path):
    sandbox = make_sandbox(time_scale=SCALE, keys={"okpk_small": 250_000})  # 2 x $0.10
    ledger = ledger_at
    manifest = grok_batch(tmp_path / "m.yaml", 4)
    with webhook() as hook:
        result = batchgen(
            "run", str(manifest), *FAST, "--notify", hook.url(),
            ledger=ledger, base_url=sandbox.base_url, key="okpk_small",
        )  # fmt: skip
        assert result.returncode == 3, result.stderr
        message = the_message(hook)
    assert message["title"] == "batchgen run e2e: stopped: okaypic balance exhausted (exit 3)"
    assert message["type"] == "warning"
    assert message["message"].startswith("2 completed, 0 failed, 0 held, 2 queued")
    assert "top it up, then `batchgen resume --campaign e2e`" in message["message"]


def test_the_budget_is_a_message_with_spend_against_it_and_the_manifest_to_edit(
    make_sandbox, ledger_at, tmp_path
):
    sandbox = make_sandbox(time_scale=SCALE)
    ledger = ledger_at
    manifest = grok_batch(tmp_path / "m.yaml", 4, budget="0.25")
    with webhook() as hook:
        result = notified(sandbox, manifest, ledger, hook.url())
        assert result.returncode == 3, result.stderr
        message = the_message(hook)
    assert message["title"] == "batchgen run e2e: stopped: budget reached (exit 3)"
    body = message["message"]
    assert body.startswith(
        "2 completed, 0 failed, 0 held, 2 queued, 0 running; spent $0.20 of $0.25"
    )
    assert f"raise budget_usd in {manifest}, then `batchgen run {manifest}`" in body


@pytest.mark.parametrize("key", ["okpk_refused_key", None], ids=["refused", "missing"])
def test_a_refused_or_missing_key_exits_4_and_still_sends_the_message(
    make_sandbox, ledger_at, tmp_path, key
):
    sandbox = make_sandbox(time_scale=SCALE)
    ledger = ledger_at
    manifest = grok_batch(tmp_path / "m.yaml", 3)
    with webhook() as hook:
        result = batchgen(
            "run", str(manifest), *FAST, "--notify", hook.url(),
            ledger=ledger, base_url=sandbox.base_url, key=key,
        )  # fmt: skip
        assert result.returncode == 4, result.stderr
        message = the_message(hook)
    assert message["title"] == "batchgen run e2e: stopped by an error (exit 4)"
    assert "OKAYPIC_API_KEY" in message["message"]
    assert "refused" in message["message"] if key else "missing" in message["message"]
    assert "set a valid OKAYPIC_API_KEY" in message["message"]
    if key:
        assert key not in str(hook.messages) and key not in result.stderr
    assert "Traceback" not in result.stderr
    assert sandbox.sim.truth().submissions == []


def test_lost_tasks_are_a_message_naming_them_and_both_ways_on(make_sandbox, ledger_at, tmp_path):
    sandbox = make_sandbox(time_scale=SCALE, vanish_rate=1.0)
    ledger = ledger_at
    manifest = grok_batch(tmp_path / "m.yaml", 2)
    with webhook() as hook:
        result = notified(sandbox, manifest, ledger, hook.url(), args=("--lost-after", "1s"))
        assert result.returncode == 3, result.stderr
        message = the_message(hook)
    assert message["title"] == "batchgen run e2e: stopped: 2 job(s) held (lost) (exit 3)"
    body = message["message"]
    assert "$0.20 of unknown outcome" in body.splitlines()[0]
    assert [
        line[: len("held: e2e/clip-1: lost")] for line in body.splitlines() if "held: " in line
    ] == [
        "held: e2e/clip-1: lost",
        "held: e2e/clip-2: lost",
    ]
    assert "`batchgen retry --unknown --campaign e2e` submits them anew" in body


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_ctrl_c_is_a_message_saying_interrupted_and_how_to_go_on(
    make_sandbox, ledger_at, tmp_path, signum
):
    sandbox = make_sandbox(time_scale=SCALE * 5)
    ledger = ledger_at
    manifest = grok_batch(tmp_path / "m.yaml", 9)
    with webhook() as hook:
        process = spawn(
            "run", str(manifest), *FAST, "--notify", hook.url(),
            ledger=ledger, base_url=sandbox.base_url, key=sandbox.key,
        )  # fmt: skip
        watch = StderrWatch(process)
        wait_for(lambda: len(sandbox.sim.truth().submissions) >= 3, what="three submissions")
        process.send_signal(signum)
        process.wait(timeout=30)
        assert process.returncode == 130, watch.text()
        message = the_message(hook)
    assert message["title"] == "batchgen run e2e: interrupted (exit 130)"
    assert message["type"] == "warning"
    assert "run `batchgen resume --campaign e2e` to go on" in message["message"]
    assert "Traceback" not in watch.text()


def test_a_redirect_is_a_message_naming_where_it_points(ledger_at, tmp_path):
    where = "https://www.okaypic.test/api/video/generate"
    sim = HostileSandbox(refusals=[redirect(302, where)] * 20)
    ledger = ledger_at
    manifest = grok_batch(tmp_path / "m.yaml", 3)
    with serve(sim) as served, webhook() as hook:
        result = batchgen(
            "run", str(manifest), *FAST, "--notify", hook.url(),
            ledger=ledger, base_url=served.base_url, key=DEFAULT_KEY,
        )  # fmt: skip
        assert result.returncode == 1, result.stderr
        message = the_message(hook)
    assert message["title"] == (
        "batchgen run e2e: stopped: the service redirects (wrong base URL) (exit 1)"
    )
    assert message["message"].startswith("0 completed, 0 failed, 0 held, 3 queued")
    assert where in message["message"].splitlines()[-2]  # the last: how long, where


def test_unsaved_files_are_a_message_saying_how_many_and_how_to_save_them(
    make_sandbox, ledger_at, tmp_path
):
    sandbox = make_sandbox(time_scale=SCALE)
    sandbox.sim.base_url = "http://127.0.0.1:1"  # result URLs nobody answers
    ledger, out = ledger_at, tmp_path / "out"
    manifest = grok_batch(tmp_path / "m.yaml", 2)
    with webhook() as hook:
        result = notified(sandbox, manifest, ledger, hook.url(), args=("--download", str(out)))
        assert result.returncode == 3, result.stderr
        message = the_message(hook)
    assert message["title"] == "batchgen run e2e: 2 result file(s) not saved (exit 3)"
    assert message["message"].splitlines()[-2] == (  # the last: how long, where
        f"2 result file(s) could not be saved (see above): "
        f"`batchgen download --out {out} --campaign e2e` tries them again"
    )


def test_batchgen_notify_holds_several_urls_and_each_gets_one_message(
    make_sandbox, ledger_at, tmp_path
):
    sandbox = make_sandbox(time_scale=SCALE)
    ledger = ledger_at
    manifest = grok_batch(tmp_path / "m.yaml", 2)
    with webhook() as first, webhook() as second:
        env = command_env(ledger, sandbox.base_url, sandbox.key)
        env["BATCHGEN_NOTIFY"] = f"{first.url('/a')}  {second.url('/b')}"
        result = subprocess.run(
            [sys.executable, "-m", "batchgen", "run", str(manifest), *FAST],
            capture_output=True, text=True, timeout=120, env=env, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert the_message(first)["path"] == "/a" and the_message(second)["path"] == "/b"
    assert the_message(first)["message"] == the_message(second)["message"]


# ------------------------------------------------------------- targets that fail


def run_timed(
    sandbox: Any, manifest: Path, ledger: Path | str, *args: str
) -> tuple[Any, str, float]:
    """Run to its end; (process, stderr, seconds from the summary's title to the exit)."""
    process = spawn(
        "run", str(manifest), *FAST, *args,
        ledger=ledger, base_url=sandbox.base_url, key=sandbox.key,
    )  # fmt: skip
    watch = StderrWatch(process)
    watch.wait_for_line("batchgen run e2e: ", timeout=120)
    summary_seen = time.monotonic()
    process.wait(timeout=60)
    return process, watch.text(), time.monotonic() - summary_seen


def ledger_outcome(ledger: Path | str) -> dict[str, Any]:
    status = status_json(ledger)
    jobs = rows(ledger, "SELECT id, status, attempts, cost_micro_usd FROM jobs ORDER BY id")
    return {"counts": status["counts"], "spent": status["spent_usd"], "jobs": jobs}


FAILING_TARGETS = {
    "refused": lambda: _nothing(refusing_url()),
    "silent": silent_target,
    "trickling": trickling_target,
    "unreachable": unreachable_target,
}


class _nothing:  # noqa: N801 (a context manager that only hands a URL over)
    def __init__(self, url: str) -> None:
        self.url = url

    def __enter__(self) -> str:
        return self.url

    def __exit__(self, *exc: Any) -> None:
        pass


@pytest.mark.parametrize("target", sorted(FAILING_TARGETS))
def test_a_failing_target_changes_neither_exit_code_nor_ledger_and_holds_the_exit_briefly(
    make_sandbox, ledger_at, tmp_path, target
):
    manifest = grok_batch(tmp_path / "m.yaml", 5, budget="0.30")  # ends with exit 3
    plain = tmp_path / "plain.db"
    result = on_sandbox(make_sandbox(time_scale=SCALE), "run", str(manifest), *FAST, ledger=plain)
    assert result.returncode == 3, result.stderr

    ledger, log = ledger_at, tmp_path / "run.log"
    with FAILING_TARGETS[target]() as url:
        process, stderr, seconds = run_timed(
            make_sandbox(time_scale=SCALE), manifest, ledger, "--notify", url, "--log", str(log)
        )
    assert process.returncode == 3, stderr
    assert seconds < FEW_SECONDS, f"the exit waited {seconds:.1f} s for the notification"
    assert ledger_outcome(ledger) == ledger_outcome(plain)
    port = re.search(r"127\.0\.0\.1:(\d+)", url)[1]  # type: ignore[index]
    said = f"notification #1 (json://127.0.0.1:{port}) not sent: "
    assert said in stderr and "Traceback" not in stderr
    assert said in log.read_text(encoding="utf-8")


# ------------------------------------------------------------- usage errors


@pytest.mark.parametrize(
    "url, shown",
    [
        ("slack://T000/secrettoken", "slack://…"),
        ("mailto://user:hunter22@", "mailto://…"),
        ("hooks.slack.com/services/T000/B000/SECRETSECRET", "a URL without a scheme"),
        ("nosuchservice://user:hunter22@example.com/x", "nosuchservice://example.com"),
    ],
)
def test_a_url_apprise_cannot_read_is_a_usage_error_before_anything_is_sent(
    sandbox, ledger_at, tmp_path, url, shown
):
    ledger = ledger_at
    manifest = grok_batch(tmp_path / "m.yaml", 2)
    with webhook() as hook:
        result = on_sandbox(
            sandbox, "run", str(manifest), "--notify", hook.url(), "--notify", url, ledger=ledger
        )
    assert result.returncode == 2
    [line] = result.stderr.splitlines()
    assert line.startswith(f"error: --notify URL #2 ({shown}): ")
    for secret in ("secret", "SECRET", "hunter22", "T000"):
        assert secret not in result.stderr
    assert not ledger_written(ledger) and sandbox.sim.truth().submissions == []
    assert hook.messages == []


def test_a_log_file_that_cannot_be_opened_is_a_usage_error_before_anything_is_sent(
    sandbox, ledger_at, tmp_path
):
    ledger = ledger_at
    manifest = grok_batch(tmp_path / "m.yaml", 2)
    for log in (tmp_path, tmp_path / "no such folder" / "run.log"):
        result = on_sandbox(sandbox, "run", str(manifest), "--log", str(log), ledger=ledger)
        assert result.returncode == 2, result.stderr
        [line] = result.stderr.splitlines()
        assert line.startswith(f"error: --log {log}: cannot open it to append to")
    resumed = on_sandbox(sandbox, "resume", "--log", str(tmp_path), ledger=ledger)
    assert resumed.returncode == 2
    assert not ledger_written(ledger) and sandbox.sim.truth().submissions == []
