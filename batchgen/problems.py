"""Validation problems: one, and how it is printed (`FILE:LINE:COL: JOBPATH: message`),
and the collection a validation fills, each problem once."""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

Position = tuple[str, int, int]  # file, line, col


@dataclass(frozen=True, order=True)
class Problem:
    file: str
    line: int
    col: int
    path: str  # JOBPATH such as "jobs[1] (hero-sneaker-1)", or a key path such as "campaign"
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}: {self.path}: {self.message}"


def shown(value: Any) -> str:
    """A value as quoted in a message: its repr, cut short."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


class Problems:
    """The problems found so far, each reported once.

    The same problem met again in other expanded jobs (same place, same message: say a
    matrix value or a default the model refuses) is counted, not repeated, so 100,000
    expanded jobs never bury the output under 100,000 identical lines.
    """

    def __init__(self) -> None:
        self._found: dict[Hashable, list[Any]] = {}

    def add(
        self, where: Position, path: str, message: str, repeats: Hashable | None = None
    ) -> None:
        """Record a problem once; with `repeats` (what makes two the same), count the others."""
        key = (where, path, message) if repeats is None else repeats
        found = self._found.get(key)
        if found is None:
            self._found[key] = [Problem(*where, path, message), 0]
        elif repeats is not None:
            found[1] += 1

    def __bool__(self) -> bool:
        return bool(self._found)

    def sorted(self) -> list[Problem]:
        result = []
        for problem, more in self._found.values():
            if more:
                jobs = "job" if more == 1 else "jobs"
                message = f"{problem.message} (and {more:,} more expanded {jobs} like it)"
                problem = Problem(problem.file, problem.line, problem.col, problem.path, message)
            result.append(problem)
        return sorted(result)
