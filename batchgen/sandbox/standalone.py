"""`batchgen sandbox`: serve one simulated service until Ctrl-C or SIGTERM."""

from __future__ import annotations

import signal
import sys
import threading
from types import FrameType
from typing import Any

from batchgen.money import usd
from batchgen.sandbox.config import DEFAULT_KEY, DEFAULT_PORT, RATE_KNOBS, SandboxConfig
from batchgen.sandbox.http import serve
from batchgen.sandbox.service import Sandbox


def main(
    port: int = DEFAULT_PORT,
    key: str = DEFAULT_KEY,
    balance_usd: str = "100.00",
    **knobs: Any,
) -> None:
    """Serve a sandbox on 127.0.0.1:`port` (0 = any free port) until interrupted.

    Prints `OKAYPIC_BASE_URL=...` and `OKAYPIC_API_KEY=...` on stdout (flushed, so a
    parent process can read the port), a summary on stderr, and returns after Ctrl-C or
    SIGTERM with the server stopped. `knobs` are SandboxConfig fields (None = default),
    plus `verbose` to log one line per request on stderr.
    """
    verbose = bool(knobs.pop("verbose", False))
    config = SandboxConfig.from_knobs(key, balance_usd, **knobs)
    stop = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM):
            previous[signum] = signal.signal(signum, request_stop)
    served = serve(Sandbox(config), port=port, verbose=verbose)
    try:
        print(f"OKAYPIC_BASE_URL={served.base_url}", flush=True)
        print(f"OKAYPIC_API_KEY={key}", flush=True)
        print(_summary(config, key), file=sys.stderr, flush=True)
        while not stop.wait(0.2):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        served.stop()
        for restored, handler in previous.items():
            signal.signal(restored, handler)
        print("okaypic sandbox stopped", file=sys.stderr, flush=True)


def _summary(config: SandboxConfig, key: str) -> str:
    faults = [f"{name}={getattr(config, name)}" for name in RATE_KNOBS if getattr(config, name)]
    if config.echo_key:
        faults.append("echo_key (error messages repeat the caller's Authorization header)")
    if config.latency != (0.0, 0.0):
        faults.append(f"latency={config.latency[0]}-{config.latency[1]}s")
    return (
        f"okaypic sandbox: balance ${usd(config.keys[key])}, time scale {config.time_scale}, "
        f"progress {config.progress}, seed {config.seed}, "
        f"faults: {', '.join(faults) or 'none'}. Ctrl-C to stop."
    )
