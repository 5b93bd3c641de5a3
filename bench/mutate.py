"""Mutation testing of batchgen's pure decision modules: do their unit tests catch wrong code?

Each mutant changes one thing in one module (a comparison, an arithmetic or boolean
operator, a constant, a `not`), then the module's unit tests run against it in a scratch
copy of the repository. A mutant the tests fail on is killed; one they pass on survived,
and is listed with its line, so a person can add the missing test (or see that the mutant
is equivalent: it cannot change any behaviour).

    python bench/mutate.py                     # every module, 2 workers
    python bench/mutate.py pacing outcomes     # some modules
    python bench/mutate.py money --list        # the mutants, without running anything

A module's tests are the files in TESTS; each mutant runs them with `pytest -x`, in a
worker process that keeps pytest loaded, so a run of every module takes a few minutes.
A mutant whose tests run longer than --timeout (one that loops for ever) counts as killed.
"""

from __future__ import annotations

import argparse
import ast
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# module -> the unit tests that must catch a wrong version of it
TESTS = {
    "outcomes": ["tests/test_outcomes.py"],
    "pacing": ["tests/test_pacing.py"],
    "money": ["tests/test_money.py"],
    "catalog": ["tests/test_catalog.py"],
    "templates": ["tests/test_templates.py"],
    "keys": ["tests/test_keys.py"],
    "summary": ["tests/test_summary.py"],
    "durations": ["tests/test_durations.py"],
    # Several runners (PRODUCT §6): the rules the claim and takeover transactions apply.
    "arbitration": ["tests/test_claims.py"],
    "ledger/claims": ["tests/test_claims.py"],
    # Where a ledger lives, and PgConnection and the dialect on a real PostgreSQL server
    # (tests/test_pg_connection.py starts one: a few seconds a mutant).
    "ledger/db": ["tests/test_ledger_db.py", "tests/test_pg_connection.py"],
}

SWAPS: dict[type, list[type]] = {
    ast.Lt: [ast.LtE, ast.Gt],
    ast.LtE: [ast.Lt, ast.GtE],
    ast.Gt: [ast.GtE, ast.Lt],
    ast.GtE: [ast.Gt, ast.LtE],
    ast.Eq: [ast.NotEq],
    ast.NotEq: [ast.Eq],
    ast.In: [ast.NotIn],
    ast.NotIn: [ast.In],
    ast.Is: [ast.IsNot],
    ast.IsNot: [ast.Is],
    ast.Add: [ast.Sub],
    ast.Sub: [ast.Add],
    ast.Mult: [ast.Div],
    ast.Div: [ast.Mult],
    ast.FloorDiv: [ast.Mult],
    ast.Mod: [ast.FloorDiv],
    ast.Pow: [ast.Mult],
    ast.And: [ast.Or],
    ast.Or: [ast.And],
}


@dataclass(frozen=True)
class Mutant:
    module: str
    number: int  # the n-th mutation point visited, so a mutant can be made again
    line: int
    description: str


class _Mutator(ast.NodeTransformer):
    """Visits the module's mutation points in order; changes the `target`-th one only
    (target -1: changes nothing and records every point)."""

    def __init__(self, target: int = -1):
        self.target = target
        self.count = 0
        self.points: list[tuple[int, str]] = []

    def _point(self, node: ast.AST, description: str) -> bool:
        """Record a mutation point; True when it is the one to apply."""
        self.points.append((getattr(node, "lineno", 0), description))
        self.count += 1
        return self.count - 1 == self.target

    def visit_Expr(self, node: ast.Expr) -> ast.AST:
        # Docstrings and bare expressions: no behaviour to mutate.
        return node

    def visit_Compare(self, node: ast.Compare) -> ast.AST:
        self.generic_visit(node)
        for i, op in enumerate(node.ops):
            for other in SWAPS.get(type(op), []):
                if self._point(node, f"{type(op).__name__} -> {other.__name__}"):
                    node.ops[i] = other()
        return node

    def visit_BinOp(self, node: ast.BinOp) -> ast.AST:
        self.generic_visit(node)
        if isinstance(node.left, ast.Constant) and isinstance(node.left.value, str):
            return node  # "text %s" % x: formatting, not arithmetic
        for other in SWAPS.get(type(node.op), []):
            if self._point(node, f"{type(node.op).__name__} -> {other.__name__}"):
                node.op = other()
        return node

    def visit_AugAssign(self, node: ast.AugAssign) -> ast.AST:
        self.generic_visit(node)
        for other in SWAPS.get(type(node.op), []):
            if self._point(node, f"{type(node.op).__name__}= -> {other.__name__}="):
                node.op = other()
        return node

    def visit_BoolOp(self, node: ast.BoolOp) -> ast.AST:
        self.generic_visit(node)
        for other in SWAPS.get(type(node.op), []):
            if self._point(node, f"{type(node.op).__name__} -> {other.__name__}"):
                node.op = other()
        return node

    def visit_UnaryOp(self, node: ast.UnaryOp) -> ast.AST:
        self.generic_visit(node)
        if isinstance(node.op, ast.Not) and self._point(node, "not x -> x"):
            return node.operand
        if isinstance(node.op, ast.USub) and self._point(node, "-x -> x"):
            return node.operand
        return node

    def visit_If(self, node: ast.If) -> ast.AST:
        self.generic_visit(node)
        if self._point(node, "if c -> if not c"):
            node.test = ast.UnaryOp(op=ast.Not(), operand=node.test)
        return node

    def visit_Constant(self, node: ast.Constant) -> ast.AST:
        value = node.value
        if isinstance(value, bool):
            if self._point(node, f"{value} -> {not value}"):
                return ast.Constant(not value)
        elif isinstance(value, int | float):
            if self._point(node, f"{value!r} -> {value + 1!r}"):
                return ast.Constant(value + 1)
            if value != 0 and self._point(node, f"{value!r} -> 0"):
                return ast.Constant(type(value)(0))
        elif isinstance(value, str) and value and self._point(node, f"{value[:30]!r} -> 'XX'"):
            return ast.Constant("XX" + value)
        return node

    def visit_JoinedStr(self, node: ast.JoinedStr) -> ast.AST:
        # An f-string's text is a message: change its first literal part.
        for i, part in enumerate(node.values):
            if isinstance(part, ast.Constant) and isinstance(part.value, str) and part.value:
                if self._point(node, f"f-string {part.value[:30]!r} -> 'XX…'"):
                    node.values[i] = ast.Constant("XX" + part.value)
                break
        for part in node.values:
            if isinstance(part, ast.FormattedValue):
                self.visit(part.value)
        return node

    def visit_FunctionDef(self, node: ast.FunctionDef) -> ast.AST:
        # Default argument values and annotations are left alone; the body is mutated.
        node.body = [self.visit(statement) for statement in node.body]
        return node

    def visit_AnnAssign(self, node: ast.AnnAssign) -> ast.AST:
        if node.value is not None:
            node.value = self.visit(node.value)
        return node

    def visit_ImportFrom(self, node: ast.ImportFrom) -> ast.AST:
        return node


def module_path(module: str) -> Path:
    return ROOT / "batchgen" / f"{module}.py"


def mutants(module: str) -> list[Mutant]:
    tree = ast.parse(module_path(module).read_text(encoding="utf-8"))
    mutator = _Mutator()
    mutator.visit(tree)
    return [Mutant(module, i, line, text) for i, (line, text) in enumerate(mutator.points)]


def mutated_source(mutant: Mutant) -> str:
    tree = ast.parse(module_path(mutant.module).read_text(encoding="utf-8"))
    mutator = _Mutator(mutant.number)
    tree = mutator.visit(tree)
    ast.fix_missing_locations(tree)
    return ast.unparse(tree)


def _scratch_copies(workers: int) -> Iterator[Path]:
    for _ in range(workers):
        scratch = Path(tempfile.mkdtemp(prefix="batchgen-mutate-"))
        for part in ("batchgen", "tests", "manifests", "schemas", "pyproject.toml"):
            source = ROOT / part
            if source.is_dir():
                shutil.copytree(
                    source, scratch / part, ignore=shutil.ignore_patterns("__pycache__")
                )
            elif source.exists():
                shutil.copy2(source, scratch / part)
        yield scratch


# A worker process runs pytest in-process for mutant after mutant (pytest's start-up is
# most of a small test file's time): it forgets batchgen and the tests between runs, so
# each run imports the module as it is on disk now.
_WORKER = """
import contextlib, io, sys
import pytest
sys.path.insert(0, ".")
for request in sys.stdin:
    tests = request.split()
    for name in [m for m in sys.modules if m.split(".")[0] in ("batchgen", "tests")]:
        del sys.modules[name]
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        code = pytest.main(["-x", "-q", "-p", "no:cacheprovider", *tests])
    print(int(code), flush=True)
"""


class Worker:
    """A scratch copy of the repository and a pytest process working in it."""

    def __init__(self, scratch: Path):
        self.scratch = scratch
        env = {**os.environ, "PYTHONPATH": str(scratch), "PYTHONDONTWRITEBYTECODE": "1"}
        self.process = subprocess.Popen(
            [sys.executable, "-c", _WORKER],
            cwd=scratch,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def passes(self, tests: list[str], timeout: float) -> bool:
        """Whether the tests pass against the code in the scratch copy now; a run longer
        than `timeout` (a mutant that loops) fails, and the worker starts again."""
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(" ".join(tests) + "\n")
        self.process.stdin.flush()
        ready, _, _ = select.select([self.process.stdout], [], [], timeout)
        if not ready:
            self.process.kill()
            self.process.wait()
            self.__init__(self.scratch)  # type: ignore[misc]
            return False
        return self.process.stdout.readline().strip() == "0"

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        self.process.wait(timeout=30)
        shutil.rmtree(self.scratch, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # Checked below, not with `choices`: argparse (3.11) checks the whole list an empty
    # nargs="*" gives against `choices`, so `python bench/mutate.py` alone would fail.
    parser.add_argument("modules", nargs="*", help=f"default: every one of {', '.join(TESTS)}")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=60.0, help="per mutant, seconds")
    parser.add_argument("--list", action="store_true", help="list the mutants and stop")
    args = parser.parse_args()
    unknown = [m for m in args.modules if m not in TESTS]
    if unknown:
        parser.error(f"unknown module(s) {', '.join(unknown)}: choose from {', '.join(TESTS)}")
    args.modules = args.modules or list(TESTS)

    every = [m for module in args.modules for m in mutants(module)]
    if args.list:
        for m in every:
            print(f"{m.module}.py:{m.line}: #{m.number} {m.description}")
        print(f"{len(every)} mutant(s)")
        return 0

    workers = [Worker(scratch) for scratch in _scratch_copies(args.workers)]
    for worker in workers:  # the unmutated code must pass its own tests
        for module in args.modules:
            if not worker.passes(TESTS[module], args.timeout):
                print(f"the tests of {module} fail without any mutant: fix them first")
                return 2
    free = list(workers)
    started = time.monotonic()

    def judge(mutant: Mutant) -> tuple[Mutant, bool]:
        worker = free.pop()
        target = worker.scratch / "batchgen" / f"{mutant.module}.py"
        original = target.read_text(encoding="utf-8")
        try:
            target.write_text(mutated_source(mutant), encoding="utf-8")
            passed = worker.passes(TESTS[mutant.module], args.timeout)
        finally:
            target.write_text(original, encoding="utf-8")
            free.append(worker)
        return mutant, passed

    survivors: dict[str, list[Mutant]] = {module: [] for module in args.modules}
    totals: dict[str, int] = dict.fromkeys(args.modules, 0)
    with ThreadPoolExecutor(max_workers=args.workers) as pool:
        for mutant, passed in pool.map(judge, every):
            totals[mutant.module] += 1
            if passed:
                survivors[mutant.module].append(mutant)
    for worker in workers:
        worker.close()

    print(f"{len(every)} mutants in {time.monotonic() - started:.0f} s ({args.workers} workers)")
    killed_all = 0
    for module in args.modules:
        lost = survivors[module]
        killed = totals[module] - len(lost)
        killed_all += killed
        share = 100 * killed / totals[module] if totals[module] else 100
        print(f"{module:10s} {killed:4d}/{totals[module]:<4d} killed ({share:.0f}%)")
        for m in lost:
            print(f"    survived: batchgen/{module}.py:{m.line}: #{m.number} {m.description}")
    share = 100 * killed_all / max(len(every), 1)
    print(f"all        {killed_all:4d}/{len(every):<4d} killed ({share:.0f}%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
