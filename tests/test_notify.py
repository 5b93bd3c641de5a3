"""batchgen/notify.py on its own: which URLs are accepted and how each is named, what is
sent to a real webhook on 127.0.0.1, and how a failure is told (without a key, without
the URL's secrets, within the wait)."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from typing import Any

import pytest

from batchgen import notify
from batchgen.errors import UsageProblem
from batchgen.keys import Redactor, label
from tests.webhook import refusing_url, silent_target, webhook


@pytest.mark.parametrize(
    "url, name",
    [
        ("json://127.0.0.1:8080/hook", "json://127.0.0.1:8080"),
        ("jsons://user:password@hooks.example.com/x?token=abc", "jsons://hooks.example.com"),
        ("JSON://[::1]:80/p", "json://[::1]:80"),
        ("slack://T1JJ3T3L2/A1BRTD4JD/TIiajkdnlazkcOXrIdevi7FQ", "slack://…"),
        ("discord://4174216298/JHMHI8qBe7bk2ZwO5U711o3dV_js", "discord://…"),
        ("tgram://123456789:ABCdefGHI/12345", "tgram://…"),
        ("ntfy://my-renders", "ntfy://…"),
        ("mailto://me:pw@gmail.com", "mailto://gmail.com"),
        ("hooks.slack.com/services/T/B/X", "a URL without a scheme"),
        ("", "a URL without a scheme"),
    ],
)
def test_a_url_is_named_by_its_scheme_and_a_plain_host_only(url, name):
    assert notify.shown_url(url) == name


def test_urls_apprise_reads_become_targets_numbered_in_order():
    targets = notify.targets(["json://127.0.0.1:9/a", "ntfy://topic", "mailto://u:p@example.com"])
    assert [(t.number, t.name) for t in targets] == [
        (1, "json://127.0.0.1:9"),
        (2, "ntfy://…"),
        (3, "mailto://example.com"),
    ]


@pytest.mark.parametrize("bad", ["slack://T000/secrettoken", "json://", "nope://x", "  "])
def test_the_first_url_apprise_cannot_read_is_a_usage_error_that_shows_no_secret(bad, capsys):
    with pytest.raises(UsageProblem) as caught:
        notify.targets(["json://127.0.0.1:9/a", bad])
    assert caught.value.exit_code == 2
    assert str(caught.value).startswith(f"--notify URL #2 ({notify.shown_url(bad)}): ")
    assert "secrettoken" not in str(caught.value)
    # Apprise's own complaint (which quotes the URL) never reaches the terminal
    assert capsys.readouterr().err == ""


def test_the_message_reaches_a_json_webhook_with_its_title_body_and_kind_and_no_key():
    key = "okpk_live_0123456789"
    lines: list[str] = []
    with webhook() as hook:
        sent = notify.send(
            notify.targets([hook.url("/night")]),
            f"batchgen run spring: done (key {key})",
            f"3 completed\nfailed: x: rejected: Bearer {key}",
            "success",
            redact=Redactor([key]),
            report=lines.append,
        )
    assert sent
    [message] = hook.messages
    mark = f"[{label(key)}]"
    assert message["path"] == "/night" and message["type"] == "success"
    assert message["title"] == f"batchgen run spring: done (key {mark})"
    assert message["message"] == f"3 completed\nfailed: x: rejected: Bearer {mark}"
    assert lines == [f"notification #1 ({notify.shown_url(hook.url())}) sent"]


def test_a_refused_target_is_reported_with_apprises_reason_and_the_others_still_get_it():
    lines: list[str] = []
    with webhook() as hook, webhook(status=500) as broken:
        targets = notify.targets([refusing_url(), hook.url(), broken.url()])
        sent = notify.send(targets, "t", "b", report=lines.append)
        assert len(hook.messages) == 1 and len(broken.messages) == 1
    assert not sent
    assert lines[0].startswith("notification #1 (json://127.0.0.1:") and " not sent: " in lines[0]
    assert lines[1].endswith(") sent")
    assert " not sent: " in lines[2]


def test_a_target_that_never_answers_is_given_up_after_the_wait():
    lines: list[str] = []
    with silent_target() as url:
        started = time.monotonic()
        sent = notify.send(notify.targets([url]), "t", "b", report=lines.append, wait=0.5)
        waited = time.monotonic() - started
    assert not sent and waited < 4.0  # Apprise itself would wait 4 s for an answer
    why = "no answer within 0.5 s; not waiting longer"
    assert lines == [f"notification #1 ({notify.shown_url(url)}) not sent: {why}"]


def test_a_ctrl_c_while_waiting_stops_the_wait_at_once():
    lines: list[str] = []
    with silent_target() as url:
        threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT)).start()
        started = time.monotonic()
        sent = notify.send(notify.targets([url]), "t", "b", report=lines.append, wait=30)
        waited = time.monotonic() - started
    assert not sent and waited < 10
    assert lines[0].endswith(" not sent: interrupted before it was sent")
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # given back


class Leaky:
    """A service whose failure message quotes its URL's token (as a careless plugin's
    warning might), or that crashes."""

    def __init__(self, words: str, crash: bool = False) -> None:
        self.words, self.crash = words, crash

    def notify(self, **kwargs: Any) -> bool:
        if self.crash:
            raise RuntimeError(self.words)
        logging.getLogger(notify.APPRISE_LOGGER).warning(self.words)
        return False


@pytest.mark.parametrize("crash", [False, True], ids=["warning", "exception"])
def test_a_reason_never_shows_the_urls_secrets_or_a_key(crash):
    url = "slack://T1JJ3T3L2/A1BRTD4JD/TIiajkdnlazkcOXrIdevi7FQ"
    [target] = notify.targets([url])
    words = "Failed to post to T1JJ3T3L2/TIiajkdnlazkcOXrIdevi7FQ with okpk_secret_key"
    leaky = notify.Target(1, target.name, Leaky(words, crash), target.secrets)
    lines: list[str] = []
    assert not notify.send(
        [leaky], "t", "b", redact=Redactor(["okpk_secret_key"]), report=lines.append
    )
    [line] = lines
    assert line.startswith("notification #1 (slack://…) not sent: ")
    for secret in ("T1JJ3T3L2", "TIiajkdnlazkcOXrIdevi7FQ", "okpk_secret_key"):
        assert secret not in line
    assert "Failed to post to" in line


def test_the_message_ends_with_how_long_the_run_took_and_on_which_host():
    import socket

    from batchgen.companions import Companions

    now = [1000.0]
    companions = Companions("resume", None, [], clock=lambda: now[0])
    now[0] += 187.4
    assert companions.took() == f"resume took 3m07s on {socket.gethostname()}"
