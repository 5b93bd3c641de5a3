"""One runner per ledger (PRODUCT.md §6): a live holder is refused; a dead one is taken
over, also when its pid now belongs to another process or its host was renamed; a holder
on another host cannot be checked, and `--force` takes over from it with a warning.

Holders are real processes: a child python that takes the lock through the ledger's own
code, then lives on (reading stdin) or exits without releasing it (as a kill would).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from batchgen import processes
from tests.crashing import build_ledger
from tests.e2e import FAST, batchgen, on_sandbox, rows

HOLD = (
    "import sys\n"
    "from batchgen.ledger import Ledger\n"
    "ledger = Ledger(sys.argv[1])\n"
    "ledger.acquire_runner('resume')\n"
    "print('held', flush=True)\n"
    "sys.stdin.read()\n"
)


def holder(ledger: Path) -> subprocess.Popen[str]:
    """A real process holding the ledger's runner lock until its stdin is closed; it then
    exits without releasing the lock, like a process that was killed."""
    child = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(ledger)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None and child.stdout.readline().strip() == "held"
    return child


def end(child: subprocess.Popen[str]) -> None:
    assert child.stdin is not None
    child.stdin.close()
    child.wait(timeout=30)


def dead_holder(ledger: Path) -> int:
    """The pid of a process that took the lock and is gone."""
    child = holder(ledger)
    end(child)
    return child.pid


def bystander() -> subprocess.Popen[str]:
    """An unrelated live process."""
    return subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE, text=True
    )


def set_lock(ledger: Path, **columns: object) -> None:
    import sqlite3

    db = sqlite3.connect(ledger)
    try:
        sets = ", ".join(f"{name} = ?" for name in columns)
        db.execute(f"UPDATE runner SET {sets}", list(columns.values()))
        db.commit()
    finally:
        db.close()


@pytest.fixture
def ledger(tmp_path) -> Path:
    path = tmp_path / "l.db"
    build_ledger(path, 3)
    return path


def finished(result) -> None:
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr


def test_a_live_holder_is_refused_even_with_force_then_taken_over_once_it_is_gone(
    make_sandbox, ledger
):
    sandbox = make_sandbox(time_scale=0.01)
    child = holder(ledger)
    try:
        for force in ((), ("--force",)):
            refused = on_sandbox(sandbox, "resume", *FAST, *force, ledger=ledger)
            assert refused.returncode == 1, refused.stderr
            assert f"pid {child.pid}" in refused.stderr and "Traceback" not in refused.stderr
        assert sandbox.sim.truth().submissions == []
    finally:
        end(child)
    finished(on_sandbox(sandbox, "resume", *FAST, ledger=ledger))


def test_a_lock_whose_pid_now_belongs_to_another_process_is_taken_over(make_sandbox, ledger):
    sandbox = make_sandbox(time_scale=0.01)
    dead_holder(ledger)
    other = bystander()  # the holder's pid, reused: a live process that is not batchgen
    try:
        set_lock(ledger, pid=other.pid)
        result = on_sandbox(sandbox, "resume", *FAST, ledger=ledger)
        finished(result)
        assert other.poll() is None, "the bystander must not be touched"
    finally:
        other.kill()
        other.wait()
    taken = rows(ledger, "SELECT detail FROM events WHERE kind = 'runner_taken_over'")
    assert len(taken) == 1 and f'"pid":{other.pid}' in taken[0]["detail"]
    assert rows(ledger, "SELECT COUNT(*) AS n FROM runner")[0]["n"] == 0  # released at the end


def test_a_lock_from_a_renamed_host_of_this_machine_is_checked_here(make_sandbox, ledger):
    if processes.machine_id() is None:
        pytest.skip("this platform gives no machine id")
    sandbox = make_sandbox(time_scale=0.01)
    dead_holder(ledger)
    set_lock(ledger, host="old-name-of-this-machine")
    finished(on_sandbox(sandbox, "resume", *FAST, ledger=ledger))


def test_a_lock_from_another_host_cannot_be_checked_and_force_takes_it_over_with_a_warning(
    make_sandbox, ledger
):
    sandbox = make_sandbox(time_scale=0.01)
    pid = dead_holder(ledger)
    set_lock(ledger, host="render-farm-7", machine="0123456789abcdef")

    refused = on_sandbox(sandbox, "resume", *FAST, ledger=ledger)
    assert refused.returncode == 1, refused.stderr
    assert "render-farm-7" in refused.stderr and f"pid {pid}" in refused.stderr
    assert "cannot be checked" in refused.stderr and "--force" in refused.stderr
    assert sandbox.sim.truth().submissions == []
    status = batchgen("status", ledger=ledger)
    assert "render-farm-7" in status.stdout and "cannot be checked" in status.stdout

    forced = on_sandbox(sandbox, "resume", *FAST, "--force", ledger=ledger)
    finished(forced)
    assert "warning: --force: taking over" in forced.stderr and "render-farm-7" in forced.stderr
    assert len(sandbox.sim.truth().submissions) == 3
    taken = rows(ledger, "SELECT detail FROM events WHERE kind = 'runner_taken_over'")
    assert len(taken) == 1 and '"why":"forced"' in taken[0]["detail"]


def test_the_lock_records_the_holders_machine_and_process_start(ledger):
    child = holder(ledger)
    try:
        (lock,) = rows(ledger, "SELECT * FROM runner")
        assert lock["pid"] == child.pid
        assert lock["process_start"] == processes.process_start(child.pid) is not None
        assert lock["machine"] == processes.machine_id()
    finally:
        end(child)
