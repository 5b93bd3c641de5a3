"""The gates run before every commit, as tests so `python -m pytest` is the one command."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *command], cwd=ROOT, capture_output=True, text=True, timeout=300
    )


def test_ruff_finds_nothing_to_lint():
    result = run("ruff", "check", "batchgen", "tests", "bench")
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_format_has_nothing_to_change():
    result = run("ruff", "format", "--check", "batchgen", "tests", "bench")
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_finds_no_type_errors_in_the_package():
    result = run("mypy", "batchgen")
    assert result.returncode == 0, result.stdout + result.stderr
