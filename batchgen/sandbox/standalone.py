"""`batchgen sandbox`: serve one simulated service until Ctrl-C or SIGTERM."""

from __future__ import annotations

import shlex
import signal
import sys
import threading
from collections.abc import Iterable
from types import FrameType
from typing import Any

from batchgen.money import usd
from batchgen.sandbox.config import DEFAULT_KEY, DEFAULT_PORT, RATE_KNOBS, SandboxConfig
from batchgen.sandbox.http import serve
from batchgen.sandbox.service import Sandbox


def main(
    port: int = DEFAULT_PORT,
    keys: str | Iterable[str] = DEFAULT_KEY,
    balance_usd: str = "100.00",
    state: str | None = None,
    **knobs: Any,
) -> None:
    """Serve a sandbox on 127.0.0.1:`port` (0 = any free port) until interrupted.

    `keys`: one or more `KEY` or `KEY=USD` (config.parse_keys; `balance_usd` for a key
    without its own). Prints the environment that points batchgen at it on stdout, one
    `NAME=value` line each, shell-quoted, flushed (so a parent process can read the port
    from the first line): `OKAYPIC_BASE_URL`, `OKAYPIC_API_KEY` (the first key) and, with
    several keys, `OKAYPIC_API_KEYS` (all of them, comma-separated). Then a summary on
    stderr; returns after Ctrl-C or SIGTERM with the server stopped. `state`: a file the
    sandbox starts from if it exists and saves itself in (sandbox/state.py; StateUnusable
    when it is not a sandbox's state). `knobs` are
    SandboxConfig fields (None = default), plus `verbose` to log one line per request.
    """
    verbose = bool(knobs.pop("verbose", False))
    config = SandboxConfig.from_knobs(keys, balance_usd, **knobs)
    sandbox = Sandbox(config, state=state)
    stop = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM):
            previous[signum] = signal.signal(signum, request_stop)
    served = serve(sandbox, port=port, verbose=verbose)
    try:
        for line in environment_lines(served.base_url, list(config.keys)):
            print(line, flush=True)
        print(_summary(config), file=sys.stderr, flush=True)
        while not stop.wait(0.2):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        served.stop()
        for restored, handler in previous.items():
            signal.signal(restored, handler)
        print("okaypic sandbox stopped", file=sys.stderr, flush=True)


def environment_lines(base_url: str, keys: list[str]) -> list[str]:
    """`NAME=value` lines a shell can source (values quoted when they need it): the base
    URL, the first key as OKAYPIC_API_KEY, and every key as OKAYPIC_API_KEYS when there
    are several (batchgen uses OKAYPIC_API_KEYS when both are set)."""
    lines = [f"OKAYPIC_BASE_URL={shlex.quote(base_url)}", f"OKAYPIC_API_KEY={shlex.quote(keys[0])}"]
    if len(keys) > 1:
        lines.append(f"OKAYPIC_API_KEYS={shlex.quote(','.join(keys))}")
    return lines


def _balances(config: SandboxConfig) -> str:
    """The balances in words: one key's, the same for every key, or each key's own."""
    balances = {usd(micros) for micros in config.keys.values()}
    if len(config.keys) == 1:
        return f"balance ${balances.pop()}"
    if len(balances) == 1:
        return f"{len(config.keys)} keys, balance ${balances.pop()} each"
    each = ", ".join(f"{key} ${usd(micros)}" for key, micros in config.keys.items())
    return f"{len(config.keys)} keys, balances {each}"


def _summary(config: SandboxConfig) -> str:
    faults = [f"{name}={getattr(config, name)}" for name in RATE_KNOBS if getattr(config, name)]
    if config.echo_key:
        faults.append("echo_key (error messages repeat the caller's Authorization header)")
    if config.latency != (0.0, 0.0):
        faults.append(f"latency={config.latency[0]}-{config.latency[1]}s")
    return (
        f"okaypic sandbox: {_balances(config)}, {config.max_active_tasks} tasks at once per "
        f"key, time scale {config.time_scale}, "
        f"progress {config.progress}, seed {config.seed}, "
        f"faults: {', '.join(faults) or 'none'}. Ctrl-C to stop."
    )
