"""Text from outside is shown as written (PRODUCT.md §6): never read as rich markup, never
passed to a terminal as control codes, on a terminal (a pseudo-terminal here) or off it."""

from __future__ import annotations

import json
import threading
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest

from batchgen.progress import LiveDisplay, PlainLog
from batchgen.sandbox import Response, Sandbox, SandboxConfig, serve
from batchgen.sandbox.config import DEFAULT_KEY
from batchgen.text import shown
from tests.e2e import FAST, batchgen, command_env, grok_batch, rows, run_on_a_terminal

# What a hostile or careless service may say: rich markup, a closing tag that matches no
# opening one (rich raises MarkupError on it), a colour code and a window-title change.
FAILURE = "media url rejected [/cdn/cat.jpg] (see docs) \x1b[31mRED\x1b[0m [bold]loud"
SERVER_ERROR = "upstream [/x] busy \x1b]0;owned\x07 title"
TASK_IDS = ["[red]x", "x[bold]", "[/x]y", "[link=http://x]z"]


class OddWordsSandbox(Sandbox):
    """The sandbox, except that task ids hold markup, the first submit answers a 500 whose
    message holds an escape sequence, and the first poll of the first two tasks says they
    failed, with markup and colour codes in the message (so those jobs go again)."""

    def __init__(self) -> None:
        super().__init__(SandboxConfig(time_scale=0.01))
        self.aliases: dict[str, str] = {}  # task id we gave -> the sandbox's own
        self.failed_once: set[str] = set()
        self.submits = 0
        self.odd_lock = threading.Lock()

    def handle(self, method: str, target: str, headers: Any, body: bytes = b"") -> Response:  # type: ignore[override]
        path = urlsplit(target).path
        if method == "POST" and path.endswith("/generate"):
            with self.odd_lock:
                self.submits += 1
                first = self.submits == 1
            if first:
                return _json(500, {"error": SERVER_ERROR})
            real = super().handle(method, target, headers, body)
            if real.status != 200 or not isinstance(real.body, bytes):
                return real
            answer = json.loads(real.body)
            with self.odd_lock:
                odd = TASK_IDS[len(self.aliases) % len(TASK_IDS)] + str(len(self.aliases))
                self.aliases[odd] = answer["taskId"]
            return _json(200, {**answer, "taskId": odd})
        if method == "GET" and "/tasks/" in path:
            prefix, _, odd = path.partition("/tasks/")
            odd = unquote(odd)
            with self.odd_lock:
                real_id = self.aliases.get(odd)
                first_poll = real_id is not None and odd not in self.failed_once
                if first_poll and len(self.failed_once) < 2:
                    self.failed_once.add(odd)
                else:
                    first_poll = False
            if real_id is None:
                return _json(404, {"error": "Task not found"})
            if first_poll:
                return _json(200, {"status": "failed", "errorMessage": FAILURE, "type": "video"})
            target = f"{prefix}/tasks/{real_id}"
        return super().handle(method, target, headers, body)


def _json(status: int, value: Any) -> Response:
    return Response(status, {"Content-Type": "application/json"}, json.dumps(value).encode())


def test_markup_and_escape_codes_from_the_service_are_shown_literally_on_a_terminal(
    ledger_at, tmp_path
):
    sandbox = OddWordsSandbox()
    ledger = ledger_at
    manifest = grok_batch(tmp_path / "m.yaml", 4)
    with serve(sandbox) as served:
        env = command_env(ledger, served.base_url, DEFAULT_KEY)
        code, output = run_on_a_terminal(["run", str(manifest), *FAST], env)

    assert "Traceback" not in output and "MarkupError" not in output, output
    assert code == 0, output
    jobs = rows(ledger, "SELECT status FROM jobs")
    assert [j["status"] for j in jobs] == ["completed"] * 4
    # The service's words, as written: brackets kept, escape characters made visible ...
    assert shown(FAILURE) in output
    assert shown(SERVER_ERROR) in output
    for odd in TASK_IDS:
        assert odd in output
    # ... and never sent to the terminal as they came.
    assert "\x1b[31mRED" not in output
    assert "\x1b]0;owned" not in output


def test_markup_and_escape_codes_are_shown_literally_in_a_log(ledger_at, tmp_path):
    sandbox = OddWordsSandbox()
    ledger = ledger_at
    manifest = grok_batch(tmp_path / "m.yaml", 4)
    with serve(sandbox) as served:
        result = batchgen(
            "run", str(manifest), *FAST,
            ledger=ledger, base_url=served.base_url, key=DEFAULT_KEY,
        )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert shown(FAILURE) in result.stderr
    assert "\x1b" not in result.stderr
    for odd in TASK_IDS:
        assert odd in result.stderr
    # status and report show the stored message the same way
    status = batchgen("status", ledger=ledger)
    report = batchgen("report", "--jobs", ledger=ledger)
    for shown_by in (status, report):
        assert shown_by.returncode == 0, shown_by.stderr
        assert "\x1b" not in shown_by.stdout
    assert "[/cdn/cat.jpg]" in report.stdout and "[bold]loud" in report.stdout


@pytest.mark.parametrize(
    "raw, one_line",
    [
        ("plain [bold] text", "plain [bold] text"),
        ("a\x1b[31mb", "a\\x1b[31mb"),
        ("two\nlines\tand a tab", "two\\nlines\\tand a tab"),
        ("cr\rnul\x00bs\x08vt\x0bdel\x7f", "cr\\rnul\\x00bs\\x08vt\\x0bdel\\x7f"),
        ("c1\x85\x9b31m", "c1\\x85\\x9b31m"),
        ("\u202eevil\u2066\u2069\u2028", "\\u202eevil\\u2066\\u2069\\u2028"),
        ("é ü 日本 \u00a0", "é ü 日本 \u00a0"),
    ],
)
def test_control_characters_are_escaped_and_everything_else_kept(raw, one_line):
    assert shown(raw) == one_line


def test_the_plain_log_writes_one_line_per_event_whatever_the_text(tmp_path):
    out = (tmp_path / "log").open("w+")
    PlainLog(out).event(None, "one\nfake line \x1b[2J [bold]x")
    out.seek(0)
    [line] = out.read().splitlines()
    assert line.endswith("one\\nfake line \\x1b[2J [bold]x")


def test_the_live_display_prints_events_without_reading_markup():
    from io import StringIO

    from rich.console import Console

    buffer = StringIO()
    console = Console(file=buffer, force_terminal=True, width=200, color_system=None)
    display = LiveDisplay(console)
    display.event(None, "media url rejected [/cdn/cat.jpg] [red]x")
    display.progress.stop()
    assert "media url rejected [/cdn/cat.jpg] [red]x" in buffer.getvalue()


def test_the_live_status_is_a_bar_filled_by_the_jobs_done_and_the_counts_as_written():
    from io import StringIO

    from rich.console import Console

    from batchgen.progress import Snapshot

    console = Console(file=StringIO(), force_terminal=True, width=200, color_system=None)
    display = LiveDisplay(console)
    shown = Console(file=StringIO(), width=200, color_system=None, record=True)
    try:
        display.refresh(Snapshot(4, 1, 2, 250_000, None, None))
        shown.print(display.progress.get_renderable())
        display.refresh(Snapshot(4, 4, 0, 500_000, None, None))
        shown.print(display.progress.get_renderable())
    finally:
        display.progress.stop()
    quarter, full = shown.export_text().splitlines()
    assert quarter.endswith("1/4 done, 2 running, spent $0.25")
    assert full.endswith("4/4 done, 0 running, spent $0.50")
    filled = full[0]
    assert full[:24] == filled * 24  # 24 wide: all filled at 4 of 4
    assert quarter[:24].count(filled) == 6  # a quarter at 1 of 4
