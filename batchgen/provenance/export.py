"""`batchgen export`: the hand-off of results to editors or a DAM (PRODUCT.md §13).

Copies the saved results (by default the approved ones) into a folder tree laid out by a
template, with one manifest in CSV and JSON (`export-manifest.csv`, `export-manifest.json`)
listing campaign, job, prompt, model, cost, verdict, reviewer, note, file, SHA-256,
provenance and a disclosure line per file.

Each copy, by what the original carries:

- a provider's C2PA manifest, no team certificate: copied byte-exact (XMP written into it
  would break the manifest's hard binding, and the manifest already declares its source);
- a provider's manifest, with `--sign-cert/--sign-key`: signed over its original bytes,
  the provider's manifest kept as parent ingredient (sign.py), no XMP (it would break the
  parent's hash);
- no manifest: XMP `DigitalSourceType = trainedAlgorithmicMedia`, the AI system used (and
  the prompt with `--with-prompt`) where the format allows; with the team's certificate,
  then signed with a new manifest declaring it (XMP written after signing would break it).

The saved originals are only read (each checked against its recorded SHA-256 first).
Every copy is written to a temporary file in its folder, fsync'd, then renamed. Resumable:
a journal in DIR (`.batchgen-export.jsonl`) records each copy made; a copy already there
with the content recorded for the same original and options is kept.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import shutil
import string
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from batchgen.download import _temp_path, clean_stale_parts, safe_name, sha256_of
from batchgen.durable import fsync_dir
from batchgen.errors import BatchgenError, UsageProblem
from batchgen.ledger import Ledger
from batchgen.money import usd
from batchgen.provenance import xmp
from batchgen.provenance.marks import read as read_marks
from batchgen.provenance.marks import summary
from batchgen.provenance.sign import TeamSigner

DEFAULT_LAYOUT = "{campaign}/{file}"
FIELDS = ("campaign", "job", "model", "verdict", "file", "stem", "ext", "n")
JOURNAL = ".batchgen-export.jsonl"
MANIFEST = "export-manifest"
COLUMNS = ("campaign", "job", "prompt", "model", "cost_usd", "verdict", "reviewer", "note",
           "file", "sha256", "original_sha256", "provenance", "marks_added", "disclosure",
           "error")  # fmt: skip


class ExportFailed(Exception):
    """One file could not be exported (said in its manifest row and on stderr)."""


@dataclass
class Export:
    """What to export and how (the command's options)."""

    to: Path
    campaigns: list[str] = field(default_factory=list)
    approved_only: bool = True
    layout: str = DEFAULT_LAYOUT
    signer: TeamSigner | None = None
    with_prompt: bool = False


@dataclass
class Tally:
    copied: int = 0
    kept: int = 0
    failed: int = 0
    rows: list[dict[str, Any]] = field(default_factory=list)


def check_layout(layout: str) -> None:
    """A template naming only known fields, giving a relative path: else UsageProblem."""
    try:
        names = [
            name for _, name, spec, conv in string.Formatter().parse(layout) if name is not None
        ]
    except ValueError as e:
        raise UsageProblem(f"--layout {layout!r}: {e}") from None
    unknown = [name for name in names if name not in FIELDS]
    if unknown:
        raise UsageProblem(
            f"--layout {layout!r}: unknown field {{{unknown[0]}}} (known: "
            + ", ".join(f"{{{f}}}" for f in FIELDS)
            + ")"
        )
    if layout.startswith("/") or ".." in layout.split("/"):
        raise UsageProblem(f"--layout {layout!r}: a path inside --to, without .. or a leading /")


def run(ledger: Ledger, options: Export, say: Callable[[str], None]) -> Tally:
    """Export every selected file (see the module docstring); `say` gets one line per
    file that fails. The manifest is written last, listing every selected file."""
    check_layout(options.layout)
    ledger.select_campaigns(options.campaigns)
    rows = ledger.exported_files(options.campaigns or None, options.approved_only)
    targets = _targets(rows, options)
    options.to.mkdir(parents=True, exist_ok=True)
    journal = _Journal(options.to / JOURNAL)
    tally = Tally()
    for row, relative in zip(rows, targets, strict=True):
        entry = _entry(row, relative)
        try:
            done = _export_one(row, relative, options, journal)
        except ExportFailed as e:
            entry["error"] = str(e)
            tally.failed += 1
            say(f"export failed: {row['campaign']}/{row['job_id']} ({row['path']}): {e}")
        else:
            if (done["provenance"].get("c2pa") or {}).get("state") == "invalid":
                say(f"export: {row['campaign']}/{row['job_id']}: its C2PA manifest is invalid "
                    f"({summary(done['provenance'])}); copied, and so recorded")  # fmt: skip
            kept = done.pop("_kept")
            entry.update(done)
            tally.kept += kept
            tally.copied += 1 - kept
        tally.rows.append(entry)
    _write_manifests(options.to, tally.rows)
    return tally


def _targets(rows: list[dict[str, Any]], options: Export) -> list[str]:
    """Each file's path in DIR, by the layout; two files given one path: UsageProblem."""
    targets: dict[str, str] = {}
    result = []
    for row in rows:
        name = Path(row["path"]).name
        stem, dot, ext = name.rpartition(".")
        values = {
            "campaign": safe_name(row["campaign"]),
            "job": safe_name(row["job_id"]),
            "model": safe_name(row["model"]),
            "verdict": row["verdict"] or "unreviewed",
            "file": name,
            "stem": stem if dot else name,
            "ext": ext if dot else "",
            "n": str(row["n"] + 1),
        }
        relative = options.layout.format(**values)
        parts = [p for p in relative.split("/") if p not in ("", ".")]
        if not parts or ".." in parts:
            raise UsageProblem(f"--layout {options.layout!r} gives {relative!r} for {name}")
        relative = "/".join(parts)
        key = relative.lower()  # one file, also on a case-insensitive file system
        if key in targets:
            raise UsageProblem(
                f"--layout {options.layout!r} gives two files one path, {relative}: "
                f"{targets[key]} and {row['path']} (add {{job}} or {{file}})"
            )
        targets[key] = row["path"]
        result.append(relative)
    return result


def _entry(row: dict[str, Any], relative: str) -> dict[str, Any]:
    kind = "video" if row["kind"] == "video" else "image"
    return {
        "campaign": row["campaign"],
        "job": row["job_id"],
        "prompt": row["prompt"],
        "model": row["model"],
        "cost_usd": usd(row["cost_micro_usd"] or 0),
        "verdict": row["verdict"],
        "reviewer": row["reviewer"],
        "note": row["note"],
        "file": relative,
        "sha256": None,
        "original_sha256": row["sha256"],
        "provenance": None,
        "marks_added": None,
        "disclosure": f"AI-generated {kind} ({row['model']}, okaypic)",
        "error": None,
    }


def _export_one(
    row: dict[str, Any], relative: str, options: Export, journal: _Journal
) -> dict[str, Any]:
    """Make (or keep) one copy at `relative` in DIR; what the manifest says of it."""
    source, dest = Path(row["path"]), options.to / relative
    try:
        if sha256_of(source) != row["sha256"]:
            raise ExportFailed("the saved file changed since it was downloaded")
    except OSError as e:
        raise ExportFailed(f"the saved file cannot be read: {e.strerror}") from None
    marks = json.loads(row["provenance"]) if row["provenance"] else read_marks(source)
    plan = _plan(source, marks, options)
    fingerprint = {
        "original_sha256": row["sha256"],
        "plan": plan,
        "with_prompt": options.with_prompt,
        "signer": options.signer.issuer if options.signer else None,
    }
    done = {"provenance": marks, "marks_added": plan, "_kept": 0}
    recorded = journal.get(relative, fingerprint)
    if recorded is not None and _sha_or_none(dest) == recorded:
        return {**done, "sha256": recorded, "_kept": 1}
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.parent not in journal.cleaned:  # what a killed export left
        journal.cleaned.add(dest.parent)
        clean_stale_parts(dest.parent)
    temp = _temp_path(dest)
    try:
        _make(source, temp, row, plan, options)
        with open(temp, "rb+") as f:
            os.fsync(f.fileno())
        digest = sha256_of(temp)
        os.replace(temp, dest)
        fsync_dir(dest.parent)
    except OSError as e:
        raise ExportFailed(f"cannot write {dest}: {e.strerror}") from None
    finally:
        temp.unlink(missing_ok=True)
    journal.add(relative, fingerprint, digest)
    return {**done, "sha256": digest}


def _plan(source: Path, marks: dict[str, Any], options: Export) -> str:
    """What the copy gets, in words (the manifest's marks_added)."""
    provider = marks.get("c2pa") is not None
    writable = source.suffix.lower() in xmp.IMAGES | xmp.VIDEOS
    if provider:
        if options.signer is None:
            return "none: byte-exact copy (its C2PA manifest is kept intact)"
        return "C2PA team manifest, its C2PA manifest kept as parent"
    if not writable:
        return f"none: no XMP in {source.suffix or 'files without an extension'}" + (
            "; C2PA team manifest" if options.signer else ""
        )
    return "XMP" + ("; C2PA team manifest" if options.signer else "")


def _make(source: Path, temp: Path, row: dict[str, Any], plan: str, options: Export) -> None:
    """Write the copy `plan` says into `temp`."""
    assertion = {
        "campaign": row["campaign"],
        "job": row["job_id"],
        "model": row["model"],
        "task_id": row["task_id"],
        "cost_usd": usd(row["cost_micro_usd"] or 0),
    }
    signed = options.signer is not None
    if plan.startswith("C2PA team manifest, its"):
        _sign(options.signer, source, temp, assertion, parent=True)
        return
    if not plan.startswith("XMP"):
        if signed:
            _sign(options.signer, source, temp, assertion, parent=False)
        else:
            shutil.copyfile(source, temp)
        return
    marked = _temp_path(temp.with_name(source.name))  # the XMP'd copy, before signing
    shutil.copyfile(source, marked)
    fields = {"digital_source_type": xmp.TRAINED, "creator_tool": f"okaypic {row['model']}"}
    if options.with_prompt:
        fields["description"] = row["prompt"]
    try:
        xmp.write(marked, fields, source.suffix)
    except xmp.XmpUnavailable as e:
        raise ExportFailed(str(e)) from None
    if signed:
        try:
            _sign(options.signer, marked, temp, assertion, parent=False, suffix=source.suffix)
        finally:
            marked.unlink(missing_ok=True)
    else:
        os.replace(marked, temp)


def _sign(
    signer: TeamSigner | None,
    source: Path,
    dest: Path,
    assertion: dict[str, Any],
    parent: bool,
    suffix: str | None = None,
) -> None:
    assert signer is not None
    try:
        signer.sign(source, dest, assertion, parent, suffix)
    except BatchgenError as e:
        raise ExportFailed(str(e)) from None


def _sha_or_none(path: Path) -> str | None:
    try:
        return sha256_of(path)
    except OSError:
        return None


class _Journal:
    """The copies made so far, one JSON line each, appended and fsync'd as they are made."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.cleaned: set[Path] = set()  # folders rid of stale temporary files
        self._made: dict[str, tuple[str, str]] = {}
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError):
            lines = []
        for line in lines:
            try:
                item = json.loads(line)
                self._made[item["file"]] = (item["fingerprint"], item["sha256"])
            except (ValueError, KeyError, TypeError):
                continue  # a line cut short by a crash

    def get(self, relative: str, fingerprint: dict[str, Any]) -> str | None:
        made = self._made.get(relative)
        return made[1] if made and made[0] == _key(fingerprint) else None

    def add(self, relative: str, fingerprint: dict[str, Any], sha256: str) -> None:
        item = {"file": relative, "fingerprint": _key(fingerprint), "sha256": sha256}
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(item, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self._made[relative] = (item["fingerprint"], sha256)


def _key(fingerprint: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()


def _write_manifests(folder: Path, rows: list[dict[str, Any]]) -> None:
    """export-manifest.json and .csv (provenance as JSON, and as one line in the CSV)."""
    clean = [{c: row.get(c) for c in COLUMNS} for row in rows]
    text = json.dumps({"files": clean}, ensure_ascii=False, indent=1) + "\n"
    _atomic(folder / f"{MANIFEST}.json", text)
    out = io.StringIO()
    writer = csv.DictWriter(out, COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in clean:
        writer.writerow({**row, "provenance": summary(row["provenance"])})
    _atomic(folder / f"{MANIFEST}.csv", out.getvalue())


def _atomic(path: Path, text: str) -> None:
    temp = _temp_path(path)
    try:
        with open(temp, "w", encoding="utf-8", newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)
    fsync_dir(path.parent)
