"""Shared fixtures: every test gets its own ledger path and files folder, and no API key
from the user's shell."""

from __future__ import annotations

import os

import pytest
from hypothesis import settings

# CI runs the same examples every time (a landing must not hang on a lucky draw); a
# developer's run explores new ones and keeps failures in .hypothesis/.
settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")


@pytest.fixture(autouse=True)
def env_setup(monkeypatch, tmp_path):
    monkeypatch.setenv("BATCHGEN_LEDGER", str(tmp_path / "ledger.db"))
    monkeypatch.setenv("BATCHGEN_OUT", str(tmp_path / "out"))  # files saved by run/resume
    monkeypatch.delenv("OKAYPIC_API_KEY", raising=False)
    monkeypatch.delenv("OKAYPIC_API_KEYS", raising=False)
    monkeypatch.delenv("OKAYPIC_BASE_URL", raising=False)
    monkeypatch.delenv("BATCHGEN_NOTIFY", raising=False)  # no test sends a user's messages


# The sandbox fixtures (sandbox, make_sandbox, sandbox_env), for every test module.
from tests.sandbox_fixtures import make_sandbox, sandbox, sandbox_env  # noqa: E402, F401
