"""The project's checks, one name each: `nox -s lint`, `nox -s types`, `nox -s test`, or
`nox` for all three (what `.ci/run` runs). They run in the environment nox is started
from (`pip install -e '.[test]'` brings nox and every tool), not in new virtualenvs.

nox rather than a Makefile: make is not on a fresh Debian (its priority is optional), and
nox comes with the test extra like every other tool here.
"""

from __future__ import annotations

import nox

SOURCES = ["batchgen", "tests", "bench", "noxfile.py"]
# The README's test command: the whole suite, in parallel (pytest-xdist, 4 workers on any
# machine: most of the suite waits on real processes and servers, 2 cores keep 4 busy;
# loadgroup: the tests of one `xdist_group` share a worker).
TESTS = ["python", "-m", "pytest", "-n", "4", "--dist", "loadgroup"]

nox.options.sessions = ["lint", "types", "test"]


@nox.session(python=False)
def lint(session: nox.Session) -> None:
    """ruff: the lint rules, and the formatting (`ruff format` fixes it)."""
    session.run("ruff", "check", *SOURCES)
    session.run("ruff", "format", "--check", *SOURCES)


@nox.session(python=False)
def types(session: nox.Session) -> None:
    """mypy on the package."""
    session.run("mypy", "batchgen")


@nox.session(python=False)
def test(session: nox.Session) -> None:
    """The test suite; arguments after `--` go to pytest (`nox -s test -- -m unit`)."""
    session.run(*TESTS, *session.posargs)
