"""`--replace` (PRODUCT.md §5): a job whose content changed under the same id is an error,
unless replaced; a replaced job runs again as its new self, and what its earlier version
cost stays in the audit trail."""

from __future__ import annotations

from pathlib import Path

from tests.e2e import FAST, batchgen, on_sandbox, out_dir, rows, status_json, write_manifest

MANIFEST = """
    version: 1
    campaign: swap
    defaults: {{model: grok-video-3, duration: 5, ratio: "1:1"}}
    jobs:
      - id: keep
        prompt: a lighthouse at dawn
      - id: change
        prompt: {prompt}
"""


def manifest(tmp_path: Path, prompt: str) -> Path:
    return write_manifest(tmp_path / "swap.yaml", MANIFEST.format(prompt=prompt))


def job(ledger: Path | str, job_id: str) -> dict:
    [found] = rows(ledger, "SELECT * FROM jobs WHERE campaign = 'swap' AND id = ?", job_id)
    return found


def test_ingest_replace_replaces_a_changed_job_that_never_ran(ledger_at, tmp_path):
    ledger = ledger_at
    assert batchgen("ingest", str(manifest(tmp_path, "a red cat")), ledger=ledger).returncode == 0
    before, kept = job(ledger, "change"), job(ledger, "keep")

    changed = manifest(tmp_path, "a blue cat")
    refused = batchgen("ingest", str(changed), ledger=ledger)
    assert refused.returncode == 1
    assert "job change changed under the same id" in refused.stderr
    assert "--replace" in refused.stderr
    assert job(ledger, "change")["prompt"] == "a red cat"

    replaced = batchgen("ingest", str(changed), "--replace", ledger=ledger)
    assert replaced.returncode == 0, replaced.stderr
    assert "1 replaced" in replaced.stdout
    after = job(ledger, "change")
    assert after["prompt"] == "a blue cat"
    assert '"prompt":"a blue cat"' in after["request"]
    assert after["fingerprint"] != before["fingerprint"]
    assert after["price_micro_usd"] == before["price_micro_usd"] == 100_000
    assert after["status"] == "queued" and after["position"] == before["position"]
    assert job(ledger, "keep") == kept
    events = rows(ledger, "SELECT kind FROM events WHERE job_id = 'change' AND kind = 'replaced'")
    assert len(events) == 1


def test_ingest_replace_takes_the_new_price(ledger_at, tmp_path):
    ledger = ledger_at
    assert batchgen("ingest", str(manifest(tmp_path, "a red cat")), ledger=ledger).returncode == 0
    longer = (
        (tmp_path / "swap.yaml")
        .read_text()
        .replace(
            "  - id: change\n    prompt: a red cat",
            "  - id: change\n    duration: 15\n    prompt: a red cat",
        )
    )
    (tmp_path / "swap.yaml").write_text(longer)
    replaced = batchgen("ingest", str(tmp_path / "swap.yaml"), "--replace", ledger=ledger)
    assert replaced.returncode == 0, replaced.stderr
    assert job(ledger, "change")["price_micro_usd"] == 300_000
    assert job(ledger, "change")["duration"] == 15


def test_run_replace_generates_the_new_version_and_keeps_the_old_ones_cost(
    sandbox, ledger_at, tmp_path
):
    ledger = ledger_at
    first = on_sandbox(sandbox, "run", str(manifest(tmp_path, "a red cat")), *FAST, ledger=ledger)
    assert first.returncode == 0, first.stderr
    old = job(ledger, "change")
    assert old["status"] == "completed"

    changed = manifest(tmp_path, "a blue cat")
    refused = on_sandbox(sandbox, "run", str(changed), *FAST, ledger=ledger)
    assert refused.returncode == 1 and "--replace" in refused.stderr

    second = on_sandbox(sandbox, "run", str(changed), "--replace", *FAST, ledger=ledger)
    assert second.returncode == 0, second.stderr
    new = job(ledger, "change")
    assert new["status"] == "completed" and new["task_id"] != old["task_id"]
    assert new["prompt"] == "a blue cat"

    # The audit trail: both tasks, each with the content it was sent with, both paid for.
    attempts = rows(
        ledger,
        "SELECT task_id, fingerprint, state, cost_micro_usd FROM attempts"
        " WHERE job_id = 'change' ORDER BY id",
    )
    assert [a["task_id"] for a in attempts] == [old["task_id"], new["task_id"]]
    assert [a["fingerprint"] for a in attempts] == [old["fingerprint"], new["fingerprint"]]
    assert [a["state"] for a in attempts] == ["completed", "completed"]
    truth = sandbox.truth()
    sent = {s.task_id: s.payload["prompt"] for s in truth.submissions if s.task_id}
    assert sent[old["task_id"]] == "a red cat" and sent[new["task_id"]] == "a blue cat"
    # 'keep' ran once; 'change' twice: three tasks charged, three in the ledger's spend.
    assert len(truth.submissions) == 3
    assert status_json(ledger)["spent_usd"] == "0.30"
    report = batchgen("report", "--format", "csv", ledger=ledger)
    assert report.stdout.splitlines()[-1].split(",")[5] == "0.30"


def test_a_replaced_jobs_new_result_is_saved_beside_the_old_one(sandbox, ledger_at, tmp_path):
    ledger = ledger_at
    out = out_dir(ledger) / "swap"
    first = on_sandbox(sandbox, "run", str(manifest(tmp_path, "a red cat")), *FAST, ledger=ledger)
    assert first.returncode == 0, first.stderr
    old_bytes = (out / "change.mp4").read_bytes()

    changed = manifest(tmp_path, "a blue cat")
    second = on_sandbox(sandbox, "run", str(changed), "--replace", *FAST, ledger=ledger)
    assert second.returncode == 0, second.stderr
    assert (out / "change.mp4").read_bytes() == old_bytes  # the paid-for old video stays
    new_bytes = (out / "change~2.mp4").read_bytes()
    assert new_bytes != old_bytes
    [saved] = rows(ledger, "SELECT path FROM files WHERE job_id = 'change'")
    assert saved["path"].endswith("change~2.mp4")
