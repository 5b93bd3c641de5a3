"""Shared fixtures: every test gets its own ledger path and no API key from the user's shell."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def env_setup(monkeypatch, tmp_path):
    monkeypatch.setenv("BATCHGEN_LEDGER", str(tmp_path / "ledger.db"))
    monkeypatch.delenv("OKAYPIC_API_KEY", raising=False)
    monkeypatch.delenv("OKAYPIC_BASE_URL", raising=False)
