"""Shared fixtures: every test gets its own ledger path and files folder, and no API key
from the user's shell; a test that asks for one gets a database of its own on a throwaway
PostgreSQL server (postgres_url). And each test module's tier (TIERS), as a marker:
`pytest -m unit`."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import settings

from tests import postgres

# The test pyramid, by what a module's tests start (the heaviest of them decides):
# unit: nothing, logic in the test's process (files in tmp_path allowed), quick;
# integration: servers on 127.0.0.1 in the test's process (the sandbox, webhooks), or
# batchgen's parts at work together at length (the scheduler's state machine: a real
# Scheduler and ledger for 100 runs of 40 steps, 15-20 s), with the helper processes
# batchgen itself starts (the C2PA reader, exiftool);
# e2e: another process (the real `batchgen` command, the standalone sandbox, a browser, pip,
# bash). tests/test_tiers.py checks that every test module is here, once.
TIERS = {
    "unit": [
        "test_catalog",
        "test_claims",
        "test_demo",
        "test_durations",
        "test_docs",
        "test_errors",
        "test_expand",
        "test_key_totals",
        "test_keys",
        "test_learning",
        "test_ledger_db",
        "test_manifest_loading",
        "test_money",
        "test_outcomes",
        "test_pacing",
        "test_plan",
        "test_properties",
        "test_recovery",
        "test_report",
        "test_sandbox_state",
        "test_scheduler",
        "test_status",
        "test_summary",
        "test_templates",
        "test_tiers",
        "test_validate",
    ],
    "integration": [
        "test_notify",
        "test_progress_curves",
        "test_provenance_export",
        "test_provenance_marks",
        "test_state_machine",
    ],
    "e2e": [
        "test_audit_e2e",
        "test_bad_input_cli",
        "test_ci_system_packages",
        "test_cli_conventions",
        "test_contention",
        "test_crash_points",
        "test_display",
        "test_download",
        "test_hostile_service",
        "test_init",
        "test_interrupts",
        "test_keys_e2e",
        "test_ledger_copy",
        "test_ledger_faults",
        "test_ledger_file",
        "test_ledger_views",
        "test_log_e2e",
        "test_notify_e2e",
        "test_pacing_e2e",
        "test_pg_connection",
        "test_postgres_cluster",
        "test_postgres_outage",
        "test_postgres_reads",
        "test_postgres_review",
        "test_provenance_e2e",
        "test_refusals_e2e",
        "test_replace",
        "test_review_browser",
        "test_review_server",
        "test_rows",
        "test_run_e2e",
        "test_sandbox",
        "test_sandbox_media",
        "test_sandbox_resume_e2e",
        "test_scale",
        "test_schema",
        "test_several_keys_e2e",
        "test_several_runners",
        "test_soak",
        "test_verdicts",
    ],
}
TIER_OF = {module: tier for tier, modules in TIERS.items() for module in modules}


@pytest.hookimpl(tryfirst=True)  # before `-m` selects by the markers
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        tier = TIER_OF.get(item.path.stem)  # a module not in TIERS: test_tiers fails
        if tier is not None:
            item.add_marker(getattr(pytest.mark, tier))


# CI runs the same examples every time (a landing must not hang on a lucky draw); a
# developer's run explores new ones and keeps failures in .hypothesis/.
settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")


@pytest.fixture(autouse=True)
def env_setup(monkeypatch, tmp_path):
    monkeypatch.setenv("BATCHGEN_LEDGER", str(tmp_path / "ledger.db"))
    monkeypatch.setenv("BATCHGEN_OUT", str(tmp_path / "out"))  # files saved by run/resume
    # A PostgreSQL ledger's recovery file and sandbox state (ledger.db.companion): the
    # test's, never the user's ~/.local/state, nor another test's database of the same name.
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.delenv("OKAYPIC_API_KEY", raising=False)
    monkeypatch.delenv("OKAYPIC_API_KEYS", raising=False)
    monkeypatch.delenv("OKAYPIC_BASE_URL", raising=False)
    monkeypatch.delenv("BATCHGEN_NOTIFY", raising=False)  # no test sends a user's messages


@pytest.fixture(scope="session")
def postgres_cluster():
    """A throwaway PostgreSQL server (tests/postgres.py), started the first time a test asks
    for it: one per pytest-xdist worker, stopped at the end of the session."""
    cluster = postgres.cluster_for_tests()
    yield cluster
    cluster.stop()


@pytest.fixture
def postgres_url(postgres_cluster):
    """A new, empty database of the test's own (postgresql://batchgen@127.0.0.1:PORT/NAME,
    no password), dropped afterwards."""
    url = postgres.new_database(postgres_cluster)
    yield url
    postgres.drop_database(postgres_cluster, url)


LEDGER_KINDS = ("sqlite", "postgresql")


@pytest.fixture(params=LEDGER_KINDS)
def ledger_at(request, tmp_path, monkeypatch):
    """Where the test's ledger is, once on each kind (PRODUCT §5: the suite runs on both): a
    SQLite file (a Path in tmp_path) or a new PostgreSQL database (its URL, a str). It is
    also BATCHGEN_LEDGER for the test. A test that does not take it is SQLite's alone, and
    says why where that is the point (the file's bytes, its WAL, sqlite3 itself)."""
    if request.param == "sqlite":
        location: Path | str = tmp_path / "ledger.db"
    else:
        location = request.getfixturevalue("postgres_url")
    monkeypatch.setenv("BATCHGEN_LEDGER", str(location))
    return location


# The sandbox fixtures (sandbox, make_sandbox, sandbox_env), and the ledger with every money
# state (audit; audit_at on each kind of ledger), for every test module.
from tests.builders import audit, audit_at  # noqa: E402, F401
from tests.sandbox_fixtures import make_sandbox, sandbox, sandbox_env  # noqa: E402, F401
