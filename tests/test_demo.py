"""Which ledgers go on in the sandbox: `status` and a keyless `resume` point to
`resume --sandbox` when the demo key's tasks are the unfinished work, never after a ledger
went on with a real key."""

from __future__ import annotations

import pytest

from batchgen import demo
from batchgen.errors import AuthError
from batchgen.keys import label
from batchgen.ledger import Ledger
from batchgen.status import format_status, status_data
from tests.builders import grok, make_ledger, start, unfinished

REAL = label("okpk_a_real_key")


def next_steps(ledger: Ledger) -> str:
    return format_status(ledger, status_data(ledger, [], jobs=False), []).split("\n\n")[-1]


def test_the_demo_keys_tasks_in_flight_go_on_with_resume_sandbox(ledger_at, monkeypatch):
    ledger = make_ledger(ledger_at, [grok("a"), grok("b")])
    start(ledger, "a", key=demo.KEY.label)

    assert demo.in_sandbox(ledger)
    assert "2 job(s) unfinished: `batchgen resume --sandbox` goes on" in next_steps(ledger)
    with pytest.raises(AuthError, match="add --sandbox"):
        demo.keys_for(ledger.location)
    monkeypatch.setenv("OKAYPIC_API_KEY", "okpk_a_real_key")
    assert [k.label for k in demo.keys_for(ledger.location)] == [REAL]


def test_a_ledger_that_went_on_with_a_real_key_after_a_demo_resumes_plainly(ledger_at):
    ledger = make_ledger(ledger_at, [grok("a"), grok("b")])
    start(ledger, "a", key=demo.KEY.label)
    ledger.task_completed(unfinished(ledger, "a"), ["https://cdn.example/a.mp4"])
    start(ledger, "b", key=REAL)

    assert not demo.in_sandbox(ledger)
    assert "1 job(s) unfinished: `batchgen resume` goes on" in next_steps(ledger)
    with pytest.raises(AuthError) as refused:
        demo.keys_for(ledger.location)
    assert "--sandbox" not in str(refused.value).replace("run MANIFEST --sandbox", "")
