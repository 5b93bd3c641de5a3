"""Refusals for content reasons end to end (PRODUCT.md §2, issue 21): the real `batchgen`
command against a sandbox that refuses a share of its prompts (`refuse_rate`), some with a
400 at submit and some as tasks failed for their output, on two keys.

A refused job is failed with reason `refused` at once and never sent again, neither by the
run nor by `resume`; every other job still completes (a plain failed task is submitted
again); each key's refusals in `status --json` and `report --by key` are the sandbox's.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import httpx

from tests.e2e import FAST, batchgen, grok_batch, rows

STUDIO, NIGHT = "okpk_studio_1111", "okpk_night_2222"
KEYS = f"studio={STUDIO},night={NIGHT}"
LABELS = {STUDIO: "studio", NIGHT: "night"}
JOBS = 24


def _sent_per_prompt(sandbox) -> Counter[str]:
    """How many times the service was sent each prompt and answered it (a task created, or
    a 400 refusing it), from its own record."""
    truth = sandbox.sim.truth()
    sent: Counter[str] = Counter()
    for submission in truth.submissions:
        sent[submission.payload["prompt"]] += 1
    for payload, times in truth.refused_payloads.items():
        sent[json.loads(payload)["prompt"]] += times
    return sent


def _service_refusals(sandbox) -> dict[str, int]:
    """Each key's refusals as the service counts them (`GET /_sandbox/keys`), by label."""
    answer = httpx.get(sandbox.base_url + "/_sandbox/keys", timeout=5).json()
    return {LABELS[row["key"]]: row["refusals"] for row in answer["keys"]}


def _run(sandbox, *args: str, ledger: Path | str):
    return batchgen(*args, *FAST, ledger=ledger, base_url=sandbox.base_url, keys=KEYS)


def test_a_refused_job_fails_at_once_is_never_sent_again_and_is_counted_on_its_key(
    make_sandbox, ledger_at, tmp_path
):
    sandbox = make_sandbox(
        time_scale=0.01,
        seed=7,
        refuse_rate=0.4,
        fail_rate=0.15,  # plain failures, which are submitted again
        keys={STUDIO: 100_000_000, NIGHT: 100_000_000},
    )
    ledger = ledger_at
    manifest = grok_batch(tmp_path / "m.yaml", JOBS)

    result = _run(sandbox, "run", str(manifest), "--max-attempts", "8", ledger=ledger)

    assert result.returncode == 1, result.stderr  # the refused jobs failed
    truth = sandbox.sim.truth()
    assert truth.faults.get("submit.refused") and truth.faults.get("task.refused")  # both kinds
    jobs = {r["prompt"]: r for r in rows(ledger, "SELECT prompt, status, reason FROM jobs")}
    refused = {prompt for prompt, job in jobs.items() if job["reason"] == "refused"}
    told = {json.loads(p)["prompt"] for p in truth.refused_payloads} | {
        s.payload["prompt"] for s in truth.submissions if s.refused
    }
    assert refused == told and refused  # every refusal the service made, and only those
    assert {jobs[prompt]["status"] for prompt in refused} == {"failed"}
    assert {job["status"] for p, job in jobs.items() if p not in refused} == {"completed"}
    sent = _sent_per_prompt(sandbox)
    assert {prompt: sent[prompt] for prompt in refused} == dict.fromkeys(refused, 1)
    assert "refused for content reasons" in result.stderr

    status = json.loads(batchgen("status", "--json", ledger=ledger).stdout)
    per_key = {key["label"]: key["refusals"] for key in status["keys"]}
    assert per_key == _service_refusals(sandbox)
    assert sum(per_key.values()) == len(refused)
    by_key = json.loads(batchgen("report", "--by", "key", "--format", "json", ledger=ledger).stdout)
    assert {k: n for k, n in by_key["refusals"].items() if k in per_key} == per_key

    again = _run(sandbox, "resume", ledger=ledger)

    assert again.returncode == 1, again.stderr  # still failed: nothing left to run
    assert _sent_per_prompt(sandbox) == sent  # nothing sent again, refused or not
    after = {r["prompt"]: r for r in rows(ledger, "SELECT prompt, status, reason FROM jobs")}
    assert after == jobs
