"""A local simulator of the okaypic service, faithful to okaypic-api.txt and PRODUCT §2.

Used by every end-to-end test, by `batchgen sandbox` and in-process by `run --sandbox`.

    sim = Sandbox(SandboxConfig(time_scale=0.01, fail_rate=0.1, seed=7))
    with serve(sim) as served:          # 127.0.0.1, a free port, a daemon thread
        ...  # talk to served.base_url with "Authorization: Bearer okpk_sandbox_demo"
    sim.truth()                          # what the service really did and charged

Modules: config (knobs), faults (seeded decisions), service (the simulated state),
media (the PNG and MP4 result files),
truth (its record), http (the server), standalone (main).
"""

from batchgen.sandbox.config import DEFAULT_KEY, DEFAULT_PORT, SandboxConfig
from batchgen.sandbox.http import Served, serve
from batchgen.sandbox.service import DROP, Drop, Response, Sandbox, Stream
from batchgen.sandbox.standalone import main
from batchgen.sandbox.truth import MoneyEvent, Submission, Truth

__all__ = [
    "DEFAULT_KEY",
    "DEFAULT_PORT",
    "DROP",
    "Drop",
    "MoneyEvent",
    "Response",
    "Sandbox",
    "SandboxConfig",
    "Served",
    "Stream",
    "Submission",
    "Truth",
    "main",
    "serve",
]
