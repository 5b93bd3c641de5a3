"""An API key the service could never accept, through the real commands (PRODUCT.md §6, §7):
exit 4 in one line naming the variable, never the key, and nothing sent or stored."""

from __future__ import annotations

import pytest

from tests.e2e import batchgen, grok_batch, ledger_written, rows, stored_bytes


@pytest.mark.parametrize(
    "key",
    [
        "okpk_first\nsecond_half",
        "okpk_clé_secrète",
        "okpk_secr\udcffbad",  # how Python reads a byte of the environment that is not UTF-8
    ],
)
def test_a_key_with_a_line_break_or_non_ascii_exits_4_in_one_line_never_showing_it(
    make_sandbox, ledger_at, tmp_path, key
):
    sandbox = make_sandbox(time_scale=0.01)
    ledger = ledger_at
    manifest = grok_batch(tmp_path / "m.yaml", 2)
    for args in (("run", str(manifest)), ("resume",)):
        result = batchgen(*args, ledger=ledger, base_url=sandbox.base_url, key=key)
        assert result.returncode == 4, result.stderr
        assert "Traceback" not in result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "OKAYPIC_API_KEY" in lines[0], result.stderr
        for part in ("okpk_first", "second_half", "okpk_cl", "secr"):
            assert part not in result.stdout + result.stderr
    assert sandbox.sim.truth().submissions == []
    if ledger_written(ledger):
        assert rows(ledger, "SELECT COUNT(*) AS n FROM attempts")[0]["n"] == 0
        files = [path.read_bytes() for path in tmp_path.rglob("*") if path.is_file()]
        for content in (stored_bytes(ledger), *files):
            assert b"second_half" not in content and b"secr" not in content
