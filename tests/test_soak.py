"""A bounded random-kill soak: 30 kill -9s over a 200-job batch, then one last `resume`,
and the same promises as at each single crash point (PRODUCT.md §10, tests/crashing.py).

Most kills come from outside at a random moment (after the runner has done something, or
at any time, even while it starts up); some are armed at a random named checkpoint. The
seed is fixed so a failure can be replayed: BATCHGEN_SOAK_SEED=N picks another one.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

from tests.builders import build_ledger
from tests.crashing import CHECKPOINTS, ROOT, audit, crashing_command
from tests.e2e import FAST, batchgen, command_env

JOBS = 200
KILLS = 30
SCALE = 0.003  # a 5 s grok task takes about 0.12 s
BUDGET_S = 100.0  # the soak must end well within the two-minute bound


def requests_answered(sandbox) -> int:
    return sum(sum(c.values()) for c in sandbox.sim.truth().responses.values())


def test_thirty_random_kills_over_200_jobs_lose_nothing_and_charge_nothing_twice(
    make_sandbox, tmp_path
):
    seed = int(os.environ.get("BATCHGEN_SOAK_SEED", "20240611"))
    rng = random.Random(seed)
    sandbox = make_sandbox(time_scale=SCALE, seed=seed)
    ledger = tmp_path / "l.db"
    job_ids = build_ledger(ledger, JOBS)
    env = command_env(ledger, sandbox.base_url, sandbox.key)
    args = ["resume", *FAST, "--max-attempts", "10"]
    started = time.monotonic()
    how: list[str] = []

    while len(how) < KILLS:
        assert time.monotonic() - started < BUDGET_S, f"soak too slow (seed {seed}): {how}"
        if rng.random() < 0.3:
            point, nth = rng.choice(CHECKPOINTS), rng.randint(1, 6)
            result = subprocess.run(
                crashing_command(point, nth, *args),
                cwd=ROOT,
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert result.returncode == -signal.SIGKILL, (seed, point, nth, result.stderr)
            how.append(f"{point}#{nth}")
            continue
        process = subprocess.Popen(
            [sys.executable, "-m", "batchgen", *args],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        if rng.random() < 0.7:
            # Let it get going: wait until the service has answered it something.
            before = requests_answered(sandbox)
            deadline = time.monotonic() + 20
            while requests_answered(sandbox) == before and process.poll() is None:
                assert time.monotonic() < deadline, f"no request from the runner (seed {seed})"
                time.sleep(0.005)
        # The kill moment itself is what is random here, not a wait for something.
        time.sleep(rng.uniform(0.0, 0.25))
        assert process.poll() is None, (
            f"the batch ended before {KILLS} kills (seed {seed}): {process.stderr.read()}"
        )
        process.send_signal(signal.SIGKILL)
        process.communicate()
        how.append("random")

    final = batchgen("resume", *args[1:], ledger=ledger, base_url=sandbox.base_url, key=sandbox.key)
    assert final.returncode == 0, final.stderr
    assert "Traceback" not in final.stderr
    truth = sandbox.sim.truth()
    result = audit(ledger, truth, job_ids)
    # Each attempt of unknown outcome comes from a kill between intent and task id: at most
    # three per kill (one per slot), never from anything else in a fault-free service.
    assert sum(result.unknown_attempts.values()) <= 3 * KILLS, (seed, how)
    assert time.monotonic() - started < 120, f"soak took too long (seed {seed})"
