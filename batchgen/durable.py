"""Making a file's new name survive a power cut: the folder's entry is synced too."""

from __future__ import annotations

import os
from pathlib import Path


def fsync_dir(folder: Path) -> None:
    """Make a new or renamed file's name in `folder` durable (where the platform allows
    it: some file systems and Windows cannot sync a folder, which is then left as it is)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
