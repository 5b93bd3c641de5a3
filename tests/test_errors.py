"""The exception tree drawn in batchgen/errors.py is the real one: every exception batchgen
defines (the sandbox, a service of its own, aside) is drawn under its real parent, or
listed there as one caught where it is raised."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re

import batchgen
from batchgen import errors

# A drawn line: the branch ("├── " or "└── ") under its parents' columns, then the name.
BRANCH = re.compile(r"^(?P<indent>(?:│   |    )*)(?:├── |└── )(?P<name>\w+)")


def drawn_tree() -> dict[str, str | None]:
    """Each class drawn in errors.py's docstring -> the class drawn above it (None: the root)."""
    lines = (errors.__doc__ or "").splitlines()
    start = next(n for n, line in enumerate(lines) if line.startswith("BatchgenError "))
    tree: dict[str, str | None] = {"BatchgenError": None}
    parents = ["BatchgenError"]  # parents[d]: the latest class drawn at depth d
    for line in lines[start + 1 :]:
        if not line.strip():
            break
        match = BRANCH.match(line)
        if match is None:
            continue  # a description's second line
        depth = len(match["indent"]) // 4 + 1
        tree[match["name"]] = parents[depth - 1]
        parents[depth:] = [match["name"]]
    return tree


def caught_inside() -> list[str]:
    """The exceptions errors.py lists as caught where they are raised ("- Name  ...")."""
    return re.findall(r"^- (\w+) ", errors.__doc__ or "", re.MULTILINE)


def defined_exceptions() -> dict[str, str]:
    """Each public exception class defined in batchgen (outside batchgen.sandbox) -> the name
    of its base class."""
    found: dict[str, str] = {}
    for module_info in pkgutil.walk_packages(batchgen.__path__, "batchgen."):
        name = module_info.name
        if name.endswith("__main__") or name.startswith("batchgen.sandbox"):
            continue
        module = importlib.import_module(name)
        for cls in vars(module).values():
            if (
                inspect.isclass(cls)
                and issubclass(cls, BaseException)
                and cls.__module__ == name
                and not cls.__name__.startswith("_")
            ):
                found[cls.__name__] = cls.__base__.__name__
    return found


def test_the_tree_drawn_in_errors_py_is_every_exception_under_its_real_parent():
    drawn = drawn_tree()
    real = defined_exceptions()
    assert drawn.pop("BatchgenError") is None and real.pop("BatchgenError") == "Exception"
    drawn.update(dict.fromkeys(caught_inside(), "Exception"))
    assert drawn == real


def test_the_drawing_is_read_as_a_tree():
    tree = drawn_tree()
    assert tree["LedgerError"] == "BatchgenError"
    assert tree["JobConflict"] == "LedgerError"
    assert tree["UsageProblem"] == "BatchgenError"  # after a deeper branch, back up a level
