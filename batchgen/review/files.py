"""Which saved file the review page may serve (its byte ranges are Starlette's FileResponse).

The page never names a path: it asks for result file `n` of a job, the ledger says where
that file was saved, and the file is served only if it lies inside the files folder
(after following symlinks) and has the size the ledger recorded. A path recorded relative
to another working directory is looked for at `<folder>/<campaign folder>/<name>`.
"""

from __future__ import annotations

from pathlib import Path

CONTENT_TYPES = {
    "mp4": "video/mp4",
    "m4v": "video/mp4",
    "mov": "video/quicktime",
    "webm": "video/webm",
    "png": "image/png",
    "jpg": "image/jpeg",
    "jpeg": "image/jpeg",
    "webp": "image/webp",
    "gif": "image/gif",
}
VIDEO_EXTENSIONS = {"mp4", "m4v", "mov", "webm"}


def locate(out_dir: str | Path, recorded: str, size: int | None) -> Path | None:
    """The saved file the ledger recorded at `recorded`, if it is inside `out_dir` and has
    the recorded `size`; else None."""
    root = Path(out_dir).resolve()
    recorded_path = Path(recorded)
    candidates = [recorded_path, root / recorded_path.parent.name / recorded_path.name]
    for candidate in candidates:
        try:
            real = candidate.resolve(strict=True)
            if not real.is_relative_to(root) or not real.is_file():
                continue
            if size is not None and real.stat().st_size != size:
                continue
        except (OSError, RuntimeError, ValueError):  # unreadable, a symlink loop, a NUL
            continue
        return real
    return None


def content_type(name: str) -> str:
    """The media type of a result file by its extension (never sniffed)."""
    return CONTENT_TYPES.get(extension(name), "application/octet-stream")


def extension(name: str) -> str:
    base = name.rsplit("/", 1)[-1].split("?", 1)[0]
    return base.rsplit(".", 1)[-1].lower() if "." in base else ""
