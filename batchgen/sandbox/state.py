"""The sandbox's state in a file, so that its tasks outlive the process that ran them
(PRODUCT.md §8): `run --sandbox` keeps it beside the ledger, and the next `run --sandbox`
or `resume --sandbox` on that ledger goes on with the same tasks.

One JSON object, rewritten whole each time a task is created or a balance is topped up,
before the request is answered: written to a temporary file, then renamed over the old
one, so a process killed at any instant leaves the old state or the new one, never a mix.

    {"format": "batchgen-sandbox-state", "version": 1,
     "seed": 0, "submits": 7,               # the seed, and the submits its dice served
     "balances": {"KEY": 99400000},         # micro-dollars
     "peak_active": {"KEY": 3},
     "tasks": [{"task_id": …, "key": …, "payload": {…}, "submitted_at": …, "ends_at": …,
                "fails": false, "progress_mode": "linear", "progress_draw": 0.41, …}],
     "money": [{"at": …, "key": …, "kind": "charge", "micros": 100000, "task_id": …}]}

What a task answers follows from its times (`submitted_at`, `ends_at`, read on the
sandbox's clock, a wall clock for a sandbox with a state file): a task ends on its own
schedule whether or not a process was serving it, as on a real service. Task ids come
from the seed and the number of tasks so far, so they never repeat. The counts of
answers given (responses, polls, injected faults) belong to the process that gave them
and are not kept.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FORMAT = "batchgen-sandbox-state"
VERSION = 1


class StateUnusable(ValueError):
    """A state file that cannot be read, or is not a sandbox's state."""


@dataclass
class SavedState:
    seed: int
    submits: int
    balances: dict[str, int] = field(default_factory=dict)
    peak_active: dict[str, int] = field(default_factory=dict)
    tasks: list[dict[str, Any]] = field(default_factory=list)
    money: list[dict[str, Any]] = field(default_factory=list)


def read(path: Path) -> SavedState | None:
    """The state saved at `path`, None when there is no such file; StateUnusable, naming
    the file, when it cannot be read or is not a sandbox state."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as e:
        raise StateUnusable(f"{path}: cannot read the sandbox state: {e}") from None
    try:
        data = json.loads(text)
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError("not a batchgen sandbox state")
        if data.get("version") != VERSION:
            raise ValueError(f"version {data.get('version')!r}, this batchgen reads {VERSION}")
        return SavedState(
            seed=int(data["seed"]),
            submits=int(data["submits"]),
            balances={str(k): int(v) for k, v in data["balances"].items()},
            peak_active={str(k): int(v) for k, v in data["peak_active"].items()},
            tasks=[dict(t) for t in data["tasks"]],
            money=[dict(m) for m in data["money"]],
        )
    except (ValueError, TypeError, KeyError, AttributeError) as e:
        raise StateUnusable(f"{path}: not a usable sandbox state ({e})") from None


def encode(record: dict[str, Any]) -> str:
    """One task or money event as the file spells it."""
    return json.dumps(record, separators=(",", ":"))


def write(path: Path, state: SavedState, tasks: Sequence[str], money: Sequence[str]) -> None:
    """Replace the file at `path` atomically (OSError when it cannot be written) by `state`
    with these tasks and money events, each already `encode`d: a sandbox encodes a task
    once, not at every save (`state.tasks` and `state.money` are not read). Not synced to
    the disk: it is a process dying that the file must survive."""
    head = {
        "format": FORMAT,
        "version": VERSION,
        "seed": state.seed,
        "submits": state.submits,
        "balances": state.balances,
        "peak_active": state.peak_active,
    }
    text = f'{encode(head)[:-1]},"tasks":[{",".join(tasks)}],"money":[{",".join(money)}]}}'
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)
