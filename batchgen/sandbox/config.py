"""How a sandbox behaves: its keys and balances, its pace, and its fault knobs.

Every knob is plain data so a test, `batchgen sandbox` and `run --sandbox` build the same
simulated service from the same few values; nothing here knows about HTTP.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from decimal import InvalidOperation
from typing import Any

from batchgen import catalog
from batchgen.keys import SANDBOX_KEY
from batchgen.money import to_micros
from batchgen.ports import SANDBOX_PORT
from batchgen.progress_curves import DEFAULT_MODE, PROGRESS_MODES

DEFAULT_KEY = SANDBOX_KEY
DEFAULT_BALANCE_MICROS = 100_000_000  # $100: enough for a demo, small enough to run out
DEFAULT_PORT = SANDBOX_PORT

RATE_KNOBS = (
    "submit_500_rate",
    "poll_500_rate",
    "fail_rate",
    "spurious_429_rate",
    "drop_rate",
    "garbage_rate",
    "reject_rate",
    "vanish_rate",
    "refuse_rate",
)


def _default_keys() -> dict[str, int]:
    return {DEFAULT_KEY: DEFAULT_BALANCE_MICROS}


def _default_max_active() -> int:
    return catalog.load().max_active_tasks


@dataclass(frozen=True)
class SandboxConfig:
    """The simulated service's settings; rates are probabilities in [0, 1] per request.

    - keys: API key -> starting balance in micro-dollars; each key has its own balance
      and its own `max_active_tasks` slots, and sees only its own tasks.
    - seed: every fault and jitter decision derives from it (same seed + same requests
      = same decisions).
    - time_scale: multiplies the catalog's typical generation time of each task.
    - jitter: each task's generation time varies by up to ±jitter (a fraction).
    - submit_500_rate: submit answers 500, no task created, nothing charged.
    - poll_500_rate: poll answers 500 (the task goes on).
    - fail_rate: an accepted task ends `failed` (and is refunded, per the catalog).
    - spurious_429_rate: submit answers 429 even with free slots, no task created.
    - drop_rate: on submit the task is created and charged, then the connection is closed
      without an answer; on poll the connection is closed without an answer.
    - garbage_rate: 200 with an unparseable body; on submit the task is created and charged.
    - reject_rate: submit answers 400 to a valid request, no task created, nothing
      charged, decided per request; its message names the content policy, so batchgen
      reads it as a refusal (refuse_rate refuses the same prompts every time, as a real
      service would).
    - echo_key: a hostile service: every error message (400, 401, 402, 429, 500) and every
      failed task's errorMessage repeats the caller's Authorization header.
    - refuse_rate: the share of prompts refused for content reasons (PRODUCT §2), decided
      per prompt text from the seed, not per request, so a prompt refused once is refused
      every time: half of them (a prompt's draw below refuse_rate / 2) at submit, a 400
      naming the content policy, nothing charged; the other half after running, a task
      `failed` with a safety message (refunded, per the catalog, as every failed task).
    - vanish_rate: an accepted task (created, charged, answered normally) then vanishes:
      every poll of it answers 404 for ever, though the service runs it to its end.
    - latency: (min_s, max_s) real seconds added before each API answer.
    - retry_after: the Retry-After header sent with every 429, as given (seconds, or any
      text: "0", "-1", an HTTP date, garbage), or None for none.
    - max_active_tasks: pending/processing tasks allowed per key (from the catalog).
    - file_bytes: result files (real PNG/MP4 media) are padded to at least this many
      bytes; 0 serves them as made (tens of kilobytes).
    - progress: how a running task reports progress, one of progress_curves.PROGRESS_MODES
      (linear from submission by default; see batchgen/progress_curves.py and docs/sandbox.md).
    - provenance: result files carry a C2PA manifest signed as a provider would sign it
      (media.Provider: a throwaway CA made when the sandbox starts; needs
      `batchgen[provenance]`).
    """

    keys: dict[str, int] = field(default_factory=_default_keys)
    seed: int = 0
    time_scale: float = 1.0
    jitter: float = 0.10
    submit_500_rate: float = 0.0
    poll_500_rate: float = 0.0
    fail_rate: float = 0.0
    spurious_429_rate: float = 0.0
    drop_rate: float = 0.0
    garbage_rate: float = 0.0
    reject_rate: float = 0.0
    echo_key: bool = False
    vanish_rate: float = 0.0
    refuse_rate: float = 0.0
    latency: tuple[float, float] = (0.0, 0.0)
    retry_after: int | str | None = None
    max_active_tasks: int = field(default_factory=_default_max_active)
    file_bytes: int = 0
    progress: str = DEFAULT_MODE
    provenance: bool = False

    def __post_init__(self) -> None:
        for name in RATE_KNOBS:
            rate = getattr(self, name)
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, not {rate!r}")
        low, high = self.latency
        if not 0.0 <= low <= high:
            raise ValueError(f"latency must be (min_s, max_s) with 0 <= min <= max: {self.latency}")
        if self.time_scale < 0:
            raise ValueError(f"time_scale must be >= 0, not {self.time_scale!r}")
        if not 0.0 <= self.jitter < 1.0:
            raise ValueError(f"jitter must be in [0, 1), not {self.jitter!r}")
        if isinstance(self.retry_after, str) and any(c in self.retry_after for c in "\r\n"):
            raise ValueError("retry_after is one header value: no line breaks")
        if self.max_active_tasks < 1:
            raise ValueError("max_active_tasks must be at least 1")
        if self.file_bytes < 0:
            raise ValueError("file_bytes must be >= 0")
        if self.progress not in PROGRESS_MODES:
            raise ValueError(
                f"progress must be one of {', '.join(PROGRESS_MODES)}, not {self.progress!r}"
            )
        for key, balance in self.keys.items():
            if not key or balance < 0:
                raise ValueError(f"each key needs a name and a balance >= 0: {key!r}")

    @classmethod
    def from_knobs(cls, keys: str | Iterable[str], balance_usd: str, **knobs: Any) -> SandboxConfig:
        """Build a config from command-line style values: keys, a USD balance, knobs.

        `keys` is one key or several, each `KEY` or `KEY=USD` (see `parse_keys`;
        `balance_usd` is the balance of a key given without its own). Knobs that are None
        are left at their defaults; `latency` may be a (min, max) pair, one number, or
        text such as "0.1,0.5". An unknown knob is an error, not ignored.
        """
        names = {f.name for f in fields(cls)} - {"keys"}
        unknown = sorted(set(knobs) - names)
        if unknown:
            raise TypeError(f"unknown sandbox knob(s): {', '.join(unknown)}")
        values = {name: value for name, value in knobs.items() if value is not None}
        if "latency" in values:
            values["latency"] = parse_latency(values["latency"])
        specs = [keys] if isinstance(keys, str) else list(keys)
        return cls(keys=parse_keys(specs, balance_usd), **values)


def parse_balance(text: str) -> int:
    """A balance in USD ("12.50") as micro-dollars; ValueError for anything else (a
    negative amount, a fraction of a micro-dollar, text that is not a number)."""
    try:
        micros = to_micros(text.strip())
    except (InvalidOperation, ValueError):
        raise ValueError(f"{text!r} is not an amount in USD (e.g. 12.50)") from None
    if micros < 0:
        raise ValueError(f"{text!r} is negative: a balance is 0 or more")
    return micros


def parse_keys(specs: Iterable[str], balance_usd: str) -> dict[str, int]:
    """The keys a sandbox accepts, from `KEY` or `KEY=USD` texts, in the order given: key
    -> starting balance in micro-dollars (`balance_usd` for a key without its own).

    A key is printable ASCII without spaces (a bearer token) and holds no `,` or `=`, so
    that the keys can be handed to batchgen as one `OKAYPIC_API_KEYS=a,b` line. A key
    given twice is an error: two entries for one key would be one key's 3 slots.
    """
    default = parse_balance(balance_usd)
    keys: dict[str, int] = {}
    for spec in specs:
        key, sep, amount = spec.partition("=")
        if not key or any(not "!" <= c <= "~" or c == "," for c in key):
            raise ValueError(
                f"{spec!r} is not KEY or KEY=USD: a key is printable ASCII without spaces or commas"
            )
        try:
            balance = parse_balance(amount) if sep else default
        except ValueError as e:
            raise ValueError(f"{spec!r} is not KEY or KEY=USD: {e}") from None
        if key in keys:
            raise ValueError(f"the key {key!r} is given twice: each key once")
        keys[key] = balance
    if not keys:
        raise ValueError("a sandbox needs at least one key")
    return keys


def parse_latency(value: Any) -> tuple[float, float]:
    """(min_s, max_s) from a pair, a single number (fixed latency) or "min,max" text."""
    if isinstance(value, str):
        parts = [p for p in value.replace(" ", "").split(",") if p]
        value = [float(p) for p in parts]
    if isinstance(value, int | float):
        return (float(value), float(value))
    items = [float(v) for v in value]
    if len(items) == 1:
        return (items[0], items[0])
    if len(items) != 2:
        raise ValueError(f"latency must be MIN,MAX seconds, not {value!r}")
    return (items[0], items[1])
