"""`--log FILE` end to end (PRODUCT.md §6, §7): the real `batchgen run` against the
sandbox appends timestamped lines to the file, one per event, a status line each minute
and the end-of-run summary, also when the screen is a terminal; on a terminal each event
line shows the time."""

from __future__ import annotations

import re
import signal
from collections import Counter

from batchgen.sandbox.config import DEFAULT_KEY
from tests.e2e import (
    FAST,
    StderrWatch,
    command_env,
    grok_batch,
    on_sandbox,
    run_on_a_terminal,
    spawn,
    wait_for,
)

SCALE = 0.01
STAMP = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ) (.*)$")


def stamped(text: str) -> list[tuple[str, str]]:
    """(time, text) of every line; each line must carry a time."""
    lines = []
    for line in text.splitlines():
        match = STAMP.match(line)
        assert match, f"a line without its time: {line!r}"
        lines.append((match[1], match[2]))
    return lines


def events_on_stderr(stderr: str) -> Counter[str]:
    """The plain log's event lines on stderr (not a terminal): timestamped lines other
    than status lines."""
    found = (STAMP.match(line) for line in stderr.splitlines())
    return Counter(m[2] for m in found if m and not re.match(r"\d+/\d+ done, ", m[2]))


def summary_of(stderr: str, command: str = "run") -> list[str]:
    lines = stderr.splitlines()
    start = max(i for i, line in enumerate(lines) if line.startswith(f"batchgen {command} "))
    return lines[start:]


def test_a_run_with_failures_logs_each_event_once_in_time_order_and_the_summary_last(
    make_sandbox, ledger_at, tmp_path
):
    sandbox = make_sandbox(time_scale=SCALE, reject_rate=0.5, seed=4)
    ledger, log = ledger_at, tmp_path / "night.log"
    manifest = grok_batch(tmp_path / "m.yaml", 8)
    result = on_sandbox(sandbox, "run", str(manifest), *FAST, "--log", str(log), ledger=ledger)
    assert result.returncode == 1, result.stderr
    logged = stamped(log.read_text(encoding="utf-8"))
    times = [stamp for stamp, _ in logged]
    assert times == sorted(times)
    texts = [text for _, text in logged]
    assert texts[0].startswith("batchgen run started (pid ")
    # every event the run showed, once each, and no other
    summary = summary_of(result.stderr)
    assert texts[-len(summary) - 1 : -1] == summary  # then how long, on which host
    events = Counter(texts[1 : -len(summary) - 1])
    final_status = [t for t in events if re.match(r"\d+/\d+ done, ", t)]
    assert final_status == ["8/8 done, 0 running, spent " + summary[1].rpartition("spent ")[2]]
    del events[final_status[0]]
    assert events == events_on_stderr(result.stderr)
    # the sandbox's reject_rate 400 names the content policy: batchgen reads a refusal
    failed = [t for t in texts if "failed: refused for content reasons" in t]
    completed = [t for t in texts if t.endswith(": completed")]
    assert failed and completed and len(failed) + len(completed) == 8
    assert summary[0] == f"batchgen run e2e: ended with {len(failed)} failed job(s) (exit 1)"


def test_a_second_run_appends_and_a_ctrl_c_ends_the_log_with_its_summary(
    make_sandbox, ledger_at, tmp_path
):
    ledger, log = ledger_at, tmp_path / "night.log"
    first = on_sandbox(
        make_sandbox(time_scale=SCALE),
        "run", str(grok_batch(tmp_path / "a.yaml", 2, campaign="first")), *FAST,
        "--log", str(log), ledger=ledger,
    )  # fmt: skip
    assert first.returncode == 0, first.stderr
    before = log.read_text(encoding="utf-8")

    sandbox = make_sandbox(time_scale=SCALE * 5)
    process = spawn(
        "run", str(grok_batch(tmp_path / "b.yaml", 9, campaign="second")), *FAST,
        "--log", str(log), ledger=ledger, base_url=sandbox.base_url, key=sandbox.key,
    )  # fmt: skip
    watch = StderrWatch(process)
    wait_for(lambda: len(sandbox.sim.truth().submissions) >= 3, what="three submissions")
    process.send_signal(signal.SIGINT)
    process.wait(timeout=30)
    assert process.returncode == 130, watch.text()

    text = log.read_text(encoding="utf-8")
    assert text.startswith(before), "the first run's lines were not kept"
    texts = [line for _, line in stamped(text)]
    kept = len(before.splitlines())
    starts = [i for i, t in enumerate(texts) if t.startswith("batchgen run started")]
    assert starts == [0, kept]
    first_summary = summary_of(first.stderr)
    assert texts[kept - len(first_summary) - 1 : kept - 1] == first_summary
    summary = summary_of(watch.text())
    assert summary[0] == "batchgen run second: interrupted (exit 130)"
    assert texts[-len(summary) - 1 : -1] == summary
    assert texts[-1].startswith("run took ")  # and on which host: the log's last line
    assert "`batchgen resume --campaign second`" in summary[-1]


def test_the_log_gets_every_event_but_a_status_line_only_each_minute():
    from io import StringIO

    from batchgen.progress import LogFile, PlainLog, Snapshot, Tee

    now = [0.0]
    screen_out, log_out = StringIO(), StringIO()
    tee = Tee(PlainLog(screen_out), LogFile("night.log", log_out), clock=lambda: now[0])
    snapshot = Snapshot(9, 3, 3, 300_000, None, None)
    for now[0] in (0.5, 30.0, 58.5, 61.0, 90.0, 121.0, 125.0):
        tee.refresh(snapshot)
        tee.event(None, f"at {now[0]}")
    screen = [text for _, text in stamped(screen_out.getvalue())]
    log = [text for _, text in stamped(log_out.getvalue())]
    assert screen.count("3/9 done, 3 running, spent $0.30") == 7
    assert log.count("3/9 done, 3 running, spent $0.30") == 2  # at 61 s and 121 s
    assert [t for t in log if t.startswith("at ")] == [t for t in screen if t.startswith("at ")]
    assert log.index("3/9 done, 3 running, spent $0.30") == log.index("at 58.5") + 1


def test_on_a_terminal_event_lines_show_the_time_and_the_log_file_is_written_too(
    ledger_at, tmp_path
):
    from batchgen.sandbox import Sandbox, SandboxConfig, serve

    ledger, log = ledger_at, tmp_path / "night.log"
    manifest = grok_batch(tmp_path / "m.yaml", 3)
    with serve(Sandbox(SandboxConfig(time_scale=SCALE))) as served:
        env = command_env(ledger, served.base_url, DEFAULT_KEY)
        code, output = run_on_a_terminal(["run", str(manifest), *FAST, "--log", str(log)], env)
    assert code == 0, output
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", output)  # bold ids, the live line's redraws
    for n in (1, 2, 3):
        assert re.search(rf"\b\d\d:\d\d:\d\d e2e/clip-{n}: completed\r?\n", plain), output
    texts = [line for _, line in stamped(log.read_text(encoding="utf-8"))]
    assert {f"e2e/clip-{n}: completed" for n in (1, 2, 3)} <= set(texts)
    assert "batchgen run e2e: all jobs completed (exit 0)" in texts
    assert texts[-2].startswith("look at the results, approve or reject them: `batchgen review")
    assert texts[-1].startswith("run took ")  # and where


def test_a_log_file_that_can_no_longer_be_written_is_said_once_and_the_run_goes_on(capsys):
    from io import StringIO

    from batchgen.progress import LogFile

    stream = StringIO()
    log = LogFile("/mnt/full/night.log", stream)
    log.lines(["before"])
    stream.close()  # as a disk that fails under the run
    log.lines(["after"])
    log.event(None, "an event")
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "cannot write the log file /mnt/full/night.log" in err[0]
