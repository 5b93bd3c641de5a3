"""A validation problem and how it is printed: `FILE:LINE:COL: JOBPATH: message`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


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
