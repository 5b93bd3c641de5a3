"""The end-of-run message (PRODUCT.md §6): `--notify URL`, sent through Apprise, so one
dependency reaches Slack, Discord, e-mail, ntfy, a JSON webhook and many more.

- Every URL is read by Apprise before the run sends anything (`targets`): one it cannot
  read is a usage error naming it by its position and scheme, and its host only when
  that is a plain host name: a URL may carry a token, which is never shown.
- `send` hands the message to every target at once, each in a daemon thread calling the
  Apprise service directly, and waits at most `WAIT` seconds in all (a second Ctrl-C stops
  the wait). A target that refuses, hangs or cannot be reached is reported, never
  raised, and a thread still waiting for an answer never holds the process's exit.
- Apprise's own log lines never reach the terminal as they are (they may quote a URL);
  the warnings it logs while sending to a target are that target's reason, with the
  URL's parts and every API key taken out.
"""

from __future__ import annotations

import logging
import re
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from batchgen.errors import UsageProblem
from batchgen.text import shown

WAIT = 5.0  # seconds the exit waits for every message together, at most
APPRISE_LOGGER = "apprise"
# A host name with a dot, an IPv4 or a bracketed IPv6 address, and maybe a port: nothing
# that could be a token (Slack's, Discord's and Telegram's sit where a host would).
_HOST = re.compile(r"(?:(?:[A-Za-z0-9-]+\.)+[A-Za-z0-9-]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?")


@dataclass(frozen=True)
class Target:
    """One `--notify` URL, read by Apprise: `name` is what may be shown of it."""

    number: int  # its position among the URLs given, from 1
    name: str
    service: Any  # the Apprise service (a NotifyBase) that sends to it
    secrets: tuple[str, ...]  # the URL's parts, taken out of any reason shown


@dataclass
class Delivery:
    target: Target
    done: threading.Event = field(default_factory=threading.Event)
    sent: bool = False
    reasons: list[str] = field(default_factory=list)


def shown_url(url: str) -> str:
    """What may be shown of a URL: its scheme, and its host when that is a plain host name
    or address (`json://127.0.0.1:8080`, `slack://…`, `mailto://gmail.com`)."""
    scheme, sep, rest = url.strip().partition("://")
    if not sep or not re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]{0,31}", scheme):
        return "a URL without a scheme"
    netloc = re.split(r"[/?#]", rest, maxsplit=1)[0].rpartition("@")[2]
    if _HOST.fullmatch(netloc):
        return f"{scheme.lower()}://{netloc}"
    return f"{scheme.lower()}://…"


def targets(urls: Sequence[str]) -> list[Target]:
    """Each URL read by Apprise; UsageProblem (exit 2) for the first it cannot read."""
    if not urls:
        return []
    import apprise

    _quiet_apprise()
    found = []
    for number, url in enumerate(urls, start=1):
        name = shown_url(url)
        service = apprise.Apprise.instantiate(url.strip()) if url.strip() else None
        if service is None:
            raise UsageProblem(
                f"--notify URL #{number} ({name}): Apprise cannot use it; write it as "
                "Apprise documents, e.g. json://host:port/path, ntfy://topic, slack://…"
            )
        found.append(Target(number, name, service, _secrets(url, name)))
    return found


def send(
    to: Sequence[Target],
    title: str,
    body: str,
    kind: str = "info",
    *,
    redact: Callable[[str], str] = lambda text: text,
    report: Callable[[str], None] = lambda line: None,
    wait: float = WAIT,
) -> bool:
    """Send title + body to every target; True when all of them took it in time. Each
    outcome is one line given to `report` (sent, or not sent and why)."""
    if not to:
        return True
    title, body = redact(title), redact(body)
    deliveries = {f"batchgen-notify-{t.number}": Delivery(t) for t in to}
    with _reasons_of(deliveries):
        for name, delivery in deliveries.items():
            threading.Thread(
                target=_deliver,
                args=(delivery, title, body, kind),
                name=name,
                daemon=True,  # an answer that never comes must not hold the exit
            ).start()
        interrupted = _wait_for(list(deliveries.values()), wait)
    for delivery in deliveries.values():
        report(_outcome(delivery, wait, interrupted, redact))
    return all(d.done.is_set() and d.sent for d in deliveries.values())


def _deliver(delivery: Delivery, title: str, body: str, kind: str) -> None:
    try:
        delivery.sent = bool(
            delivery.target.service.notify(
                body=body, title=title, notify_type=kind, body_format="text"
            )
        )
    except Exception as e:  # a plugin's bug is this message's failure, not the run's
        delivery.reasons.append(f"{type(e).__name__}: {e}")
    finally:
        delivery.done.set()


def _wait_for(deliveries: list[Delivery], wait: float) -> bool:
    """Wait until every delivery is done or `wait` seconds have passed; True when a
    Ctrl-C or SIGTERM cut the wait short."""
    deadline = time.monotonic() + wait
    with _signals_stop() as stop:
        for delivery in deliveries:
            while not delivery.done.is_set() and not stop.is_set():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                delivery.done.wait(min(left, 0.05))
        return stop.is_set()


def _outcome(
    delivery: Delivery, wait: float, interrupted: bool, redact: Callable[[str], str]
) -> str:
    target = delivery.target
    which = f"notification #{target.number} ({target.name})"
    if delivery.done.is_set() and delivery.sent:
        return f"{which} sent"
    if not delivery.done.is_set():
        why = (
            "interrupted before it was sent"
            if interrupted
            else f"no answer within {wait:g} s; not waiting longer"
        )
    else:
        why = "; ".join(dict.fromkeys(delivery.reasons)) or "Apprise reported a failure"
        for secret in target.secrets:
            why = why.replace(secret, "…")
    return shown(redact(f"{which} not sent: {why}"))


@contextmanager
def _signals_stop() -> Iterator[threading.Event]:
    """An event set by Ctrl-C or SIGTERM while the block runs (main thread only)."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    previous = {
        signum: signal.signal(signum, lambda *_: stop.set())
        for signum in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        yield stop
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


class _Reasons(logging.Handler):
    """Apprise's warnings, each kept as a reason of the delivery whose thread logged it."""

    def __init__(self, deliveries: dict[str, Delivery]):
        super().__init__(logging.WARNING)
        self.deliveries = deliveries

    def emit(self, record: logging.LogRecord) -> None:
        delivery = self.deliveries.get(record.threadName or "")
        if delivery is not None:
            delivery.reasons.append(record.getMessage().strip())


@contextmanager
def _reasons_of(deliveries: dict[str, Delivery]) -> Iterator[None]:
    handler = _Reasons(deliveries)
    logger = logging.getLogger(APPRISE_LOGGER)
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)


def _quiet_apprise() -> None:
    """Apprise logs to the `apprise` logger; with no handler Python would print its
    warnings (which may quote a URL) on stderr. They go nowhere unless `send` keeps them."""
    logger = logging.getLogger(APPRISE_LOGGER)
    logger.propagate = False
    if not any(isinstance(h, logging.NullHandler) for h in logger.handlers):
        logger.addHandler(logging.NullHandler())


def _secrets(url: str, name: str) -> tuple[str, ...]:
    """The parts of a URL that are not shown in its name, longest first (as written and
    percent-decoded): any may be a token."""
    rest = url.strip().partition("://")[2]
    shown_parts = set(re.split(r"[/:@?&=#\[\]]+", name.partition("://")[2]))
    parts = {p for p in re.split(r"[/:@?&=#,]+", rest) if len(p) >= 4 and p not in shown_parts}
    parts |= {unquote(p) for p in parts}
    return tuple(sorted(parts, key=len, reverse=True))
