"""`.ci/system-packages` installs what the tests need from the system, only what is missing,
and waits for apt's locks when another apt process holds them. Run for real with bash,
against stand-ins for apt-get and the commands it looks for (a PATH of our own)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / ".ci" / "system-packages"
NEEDED = ("chromium", "chromedriver", "ffprobe", "file", "exiftool", "pg_ctl")


def _tool(bin_dir: Path, name: str, body: str) -> None:
    path = bin_dir / name
    path.write_text(f"#!/bin/bash\n{body}\n", encoding="utf-8")
    path.chmod(0o755)


def _run(
    tmp_path: Path,
    *,
    present: tuple[str, ...] = (),
    lock_held_for: int = 0,
    postgresql_lib: Path | None = None,
):
    """Run the script with apt-get answering "could not get lock" to its first
    `lock_held_for` updates, and PostgreSQL's server binaries looked for in
    `postgresql_lib` (by default an empty folder), besides the PATH; the apt-get calls, one
    line each."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "apt-calls"
    held = tmp_path / "held"
    held.write_text(str(lock_held_for), encoding="utf-8")
    _tool(
        bin_dir,
        "apt-get",
        f'echo "$*" >> {calls}\n'
        f"left=$(< {held})\n"
        'if [[ " $* " == *" update "* ]] && ((left > 0)); then\n'
        f"    echo $((left - 1)) > {held}\n"
        '    echo "E: Could not get lock /var/lib/apt/lists/lock. It is held by process 9" >&2\n'
        "    exit 100\n"
        "fi",
    )
    _tool(bin_dir, "id", "echo 0")  # root: no sudo
    _tool(bin_dir, "sleep", "true")  # the pauses between tries take no time here
    for name in present:
        _tool(bin_dir, name, "true")
    if postgresql_lib is None:
        postgresql_lib = tmp_path / "postgresql"
        postgresql_lib.mkdir()
    env = {**os.environ, "PATH": str(bin_dir), "POSTGRESQL_LIB": str(postgresql_lib)}
    result = subprocess.run(
        ["/bin/bash", str(SCRIPT)], capture_output=True, text=True, env=env, timeout=60
    )
    lines = calls.read_text(encoding="utf-8").splitlines() if calls.exists() else []
    return result, lines


def test_nothing_is_installed_when_every_tool_is_there(tmp_path):
    result, calls = _run(tmp_path, present=NEEDED)
    assert result.returncode == 0, result.stderr
    assert calls == []


def test_only_the_missing_packages_are_installed_and_apt_waits_for_dpkgs_lock(tmp_path):
    result, calls = _run(tmp_path, present=("chromium", "file"))
    assert result.returncode == 0, result.stderr
    assert len(calls) == 2
    assert all("-o DPkg::Lock::Timeout=600" in call for call in calls)
    assert calls[1].endswith(
        "install -y -qq --no-install-recommends chromium-driver ffmpeg libimage-exiftool-perl"
        " postgresql"
    )


def test_the_postgresql_server_where_debian_puts_it_off_the_path_counts_as_installed(tmp_path):
    debian = tmp_path / "usr-lib-postgresql"
    (debian / "15" / "bin").mkdir(parents=True)
    (debian / "15" / "bin" / "pg_ctl").write_text("", encoding="utf-8")
    others = tuple(name for name in NEEDED if name != "pg_ctl")
    result, calls = _run(tmp_path, present=others, postgresql_lib=debian)
    assert result.returncode == 0, result.stderr
    assert calls == []


def test_an_update_refused_because_another_apt_holds_the_lock_is_tried_again(tmp_path):
    result, calls = _run(tmp_path, lock_held_for=3)
    assert result.returncode == 0, result.stderr
    assert [call.split()[2] for call in calls] == ["update"] * 4 + ["install"]
    assert "trying again" in result.stderr


def test_a_lock_held_past_the_wait_fails_with_one_clear_line(tmp_path):
    result, calls = _run(tmp_path, lock_held_for=10_000)
    assert result.returncode == 1
    assert "still failing after 600s" in result.stderr
    assert not any("install" in call for call in calls)
