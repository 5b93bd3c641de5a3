"""`python -m batchgen.sandbox`: the `batchgen sandbox` command itself, its options and
help (cli.py), e.g. for tests that need it in another process (`--port 0` picks a free
port; read it from the first stdout line)."""

from __future__ import annotations

from batchgen.cli import CONTEXT_SETTINGS, sandbox

if __name__ == "__main__":
    sandbox.main(prog_name="python -m batchgen.sandbox", **CONTEXT_SETTINGS)
