"""Shared fixtures: every test gets its own ledger path and no API key from the user's shell."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def env_setup(monkeypatch, tmp_path):
    monkeypatch.setenv("BATCHGEN_LEDGER", str(tmp_path / "ledger.db"))
    monkeypatch.delenv("OKAYPIC_API_KEY", raising=False)
    monkeypatch.delenv("OKAYPIC_BASE_URL", raising=False)


# The sandbox fixtures (sandbox, make_sandbox, sandbox_env), for every test module.
from tests.sandbox_fixtures import make_sandbox, sandbox, sandbox_env  # noqa: E402, F401
