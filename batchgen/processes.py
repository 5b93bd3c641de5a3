"""Who holds a runner lock, and whether that process still runs (PRODUCT.md §6).

A pid alone says little: pids are reused, and a host may be renamed. So a lock records,
besides pid and host name:
- `machine`: a hash of the machine's id (`/etc/machine-id`) and of the pid namespace, so
  a renamed host is still recognised as this machine, and two containers sharing an
  image's machine id are not taken for one;
- `process_start`: when that process started, as the OS tells it (on Linux the boot id
  and the start time in clock ticks from `/proc/<pid>/stat`; elsewhere what `ps -o lstart`
  prints), so a pid now used by another process is told apart from the holder.

Either may be unknown (None) on a platform that does not tell; the check then falls back
to what it can see (host name, pid).
"""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

_MACHINE_ID_FILES = ("/etc/machine-id", "/var/lib/dbus/machine-id")


@dataclass(frozen=True)
class Holder:
    """A process as a runner lock records it."""

    pid: int
    host: str
    machine: str | None = None
    process_start: str | None = None


class Liveness(Enum):
    ALIVE = "alive"  # it runs on this machine
    DEAD = "dead"  # no such process here any more (or its pid belongs to another one)
    ELSEWHERE = "elsewhere"  # another machine's process: cannot be checked from here


def this_process() -> Holder:
    pid = os.getpid()
    return Holder(pid, socket.gethostname(), machine_id(), process_start(pid))


def liveness(holder: Holder, me: Holder | None = None) -> Liveness:
    """Whether `holder` still runs, as far as this machine can tell."""
    me = me or this_process()
    same_machine = holder.host == me.host or (
        holder.machine is not None and holder.machine == me.machine
    )
    if not same_machine:
        return Liveness.ELSEWHERE
    if not pid_running(holder.pid):
        return Liveness.DEAD
    if holder.process_start is not None:
        now = process_start(holder.pid)
        if now is not None and now != holder.process_start:
            return Liveness.DEAD  # the pid was reused by another process
    return Liveness.ALIVE


def pid_running(pid: int) -> bool:
    """Is there a process with this pid on this machine (of any user)?"""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # it exists under another user, or we cannot tell: assume it runs
    return True


def process_start(pid: int) -> str | None:
    """When process `pid` started, as an opaque text that differs between two processes
    that had the same pid; None when the OS does not tell."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
        boot = Path("/proc/sys/kernel/random/boot_id").read_text(encoding="ascii").strip()
    except OSError:
        return _ps_start(pid)
    # The command name (field 2) may hold spaces and parentheses: count after the last ")".
    fields = stat.rpartition(")")[2].split()
    if len(fields) < 20:
        return None
    return f"linux:{boot}:{fields[19]}"  # field 22, starttime, in clock ticks since boot


def _ps_start(pid: int) -> str | None:
    """The portable fallback (macOS, BSD): `ps -o lstart= -p PID`."""
    try:
        done = subprocess.run(
            ["ps", "-o", "lstart=", "-p", str(pid)],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    started = done.stdout.strip()
    return f"ps:{started}" if done.returncode == 0 and started else None


def machine_id() -> str | None:
    """A short hash of this machine's id and pid namespace; None without a machine id
    (a namespace alone is the same on every machine)."""
    for name in _MACHINE_ID_FILES:
        try:
            machine = Path(name).read_text(encoding="ascii").strip()
        except (OSError, UnicodeDecodeError):
            continue
        if machine:
            break
    else:
        return None
    try:
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        namespace = ""
    return hashlib.sha256(f"{machine}\n{namespace}".encode()).hexdigest()[:16]
