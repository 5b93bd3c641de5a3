"""`batchgen review`: the morning review (PRODUCT §12), a local web page of the results.

The server (server.py) is the standard library's http.server on 127.0.0.1 and the page is
plain HTML, CSS and JavaScript shipped in static/: nothing is fetched from the internet,
so it works offline and in a locked-down office, and there is no build step. It reads the
ledger (results.py shapes what the page shows), serves saved files (files.py decides
which and what part), and writes only verdicts and notes (the ledger's `verdicts`).
"""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Any

from batchgen.errors import BatchgenError
from batchgen.ledger import Ledger
from batchgen.review.server import ReviewServer

DEFAULT_PORT = 8766  # beside the sandbox's 8765

__all__ = ["DEFAULT_PORT", "ReviewServer", "main", "open_review"]


def open_review(
    ledger_path: str | Path, campaigns: list[str], out_dir: str | Path, port: int = 0
) -> ReviewServer:
    """A review server over the ledger (not yet serving: call `serve_forever`)."""
    ledger = Ledger(ledger_path, create=False)
    try:
        selected = ledger.select_campaigns(campaigns) if campaigns else []
        return ReviewServer(ledger, selected, out_dir, port)
    except OSError as e:
        ledger.close()
        raise BatchgenError(
            f"cannot listen on 127.0.0.1:{port}: {e.strerror or e} (try another --port, "
            "or --port 0 for any free one)"
        ) from None
    except BaseException:
        ledger.close()
        raise


def main(ledger_path: str | Path, campaigns: list[str], out_dir: str | Path, port: int) -> None:
    """Serve the review page until Ctrl-C or SIGTERM; its address goes to stdout."""
    server = open_review(ledger_path, campaigns, out_dir, port)
    stop = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous: dict[int, Any] = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        previous[signum] = signal.signal(signum, request_stop)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1})
    thread.daemon = True
    thread.start()
    try:
        print(f"review page: {server.url}", flush=True)
        print(
            f"ledger {server.ledger.path}, files from {out_dir}/; only verdicts and notes are "
            "written. Ctrl-C to stop.",
            file=sys.stderr,
            flush=True,
        )
        while not stop.wait(0.2):
            pass
    finally:
        server.shutdown()
        server.server_close()
        server.ledger.close()
        for restored, handler in previous.items():
            signal.signal(restored, handler)
        print("review stopped", file=sys.stderr, flush=True)
