"""The in-process sandbox of `run --sandbox` and `resume --sandbox` (PRODUCT.md §8): a
simulated service with the demo key, served on 127.0.0.1 for as long as the run lasts.

Its state is kept beside the ledger (`LEDGER.sandbox.json`, sandbox/state.py), so its
tasks outlive the process that ran them: stopped by Ctrl-C or a crash, the run goes on
with `resume --sandbox` (or `run --sandbox` again), which polls the same tasks; they went
on meanwhile, as a real service's would. Several runners may share a ledger, but its
sandbox is one process's at a time: another one, started from the same state, would not
know the tasks this one creates.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from batchgen.errors import AuthError, LedgerError
from batchgen.keys import KEY_VARIABLE, SANDBOX_KEY, ApiKey, api_keys, given, label
from batchgen.ledger import Ledger
from batchgen.ledger.db import companion, redacted

TIME_SCALE = 0.05  # a demo batch finishes in seconds, not minutes
STATE_SUFFIX = ".sandbox.json"
LOCK_SUFFIX = ".sandbox.lock"
KEY = ApiKey(label(SANDBOX_KEY), SANDBOX_KEY)


def state_path(ledger_path: str) -> Path:
    """Where the sandbox of this ledger keeps its state: beside it (for a PostgreSQL
    ledger, in this machine's state directory: batchgen.ledger.db.companion)."""
    return companion(ledger_path, STATE_SUFFIX)


@contextmanager
def _held(ledger_path: str) -> Iterator[None]:
    """Hold the ledger's sandbox for this process while the block runs (a lock file beside
    the ledger, let go of when the process ends, however it ends). LedgerError when
    another process holds it."""
    try:
        import fcntl
    except ImportError:  # no advisory locks (Windows): one sandbox run at a time is then
        yield  # the user's to keep
        return
    lock_path = companion(ledger_path, LOCK_SUFFIX)
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+", encoding="utf-8") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            lock.seek(0)
            holder = lock.read().strip() or "unknown"
            raise LedgerError(
                f"the sandbox of {redacted(ledger_path)} is served by another batchgen process"
                f" (pid {holder}): a ledger has one sandbox; go on once that run has ended"
            ) from None
        lock.seek(0)
        lock.truncate()
        lock.write(f"{os.getpid()}\n")
        lock.flush()
        yield


@contextmanager
def sandbox_beside(ledger_path: str) -> Iterator[str]:
    """Serve the ledger's sandbox, from its saved state if any, while the block runs; its
    base URL. LedgerError when the state beside the ledger cannot be used, or another
    process serves this ledger's sandbox."""
    from batchgen.sandbox import Sandbox, SandboxConfig, serve
    from batchgen.sandbox.state import StateUnusable

    # A sandbox without a saved state is seeded by the attempts the ledger already holds:
    # the same files for the same history, and on an older ledger (or one whose state was
    # removed) no task id of its attempts is handed out again. A saved state keeps its seed.
    reader = Ledger.read_only(ledger_path)
    try:
        seed = reader.attempt_count()
    finally:
        reader.close()
    with _held(ledger_path):
        try:
            config = SandboxConfig(time_scale=TIME_SCALE, seed=seed)
            sandbox = Sandbox(config, state=state_path(ledger_path))
        except StateUnusable as e:
            raise LedgerError(
                f"{e}: move it away to start the sandbox afresh (the tasks it held are then lost)"
            ) from None
        served = serve(sandbox)
        print(
            f"sandbox: simulated okaypic service at {served.base_url} (demo key)", file=sys.stderr
        )
        try:
            yield served.base_url
        finally:
            served.stop()


def keys_for(ledger_path: str) -> list[ApiKey]:
    """The keys from the environment (`keys.api_keys`). With none given, on a ledger whose
    attempts the demo key made, the error says how to go on: in the sandbox."""
    try:
        return api_keys()
    except AuthError:
        if given() or not _in_sandbox(ledger_path):
            raise
    raise AuthError(
        f"{KEY_VARIABLE} is missing, and this ledger's jobs were run in the sandbox (with "
        "its demo key): add --sandbox to go on with them there"
    )


def in_sandbox(ledger: Ledger, campaigns: list[str] | None = None) -> bool:
    """Whether the ledger's work goes on in the sandbox: the demo key has tasks in flight,
    or made every attempt (a ledger that went on with a real key after a demo does not)."""
    uses = ledger.key_use(campaigns)
    return any(u.label == KEY.label and (u.in_flight or len(uses) == 1) for u in uses)


def _in_sandbox(ledger_path: str) -> bool:
    try:
        reader = Ledger.read_only(ledger_path)
    except LedgerError:
        return False  # the missing key is said first
    try:
        return in_sandbox(reader)
    finally:
        reader.close()
