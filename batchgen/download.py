"""Result files (PRODUCT.md §9): `DIR/<campaign>/<job-id>[~r][+n].<ext>`, saved atomically,
resumably, and recorded in the ledger's `files` table.

"Generated" and "downloaded" are separate states: a download that fails is recorded with
its error and tried again by the next `download`, never by generating again.

- Names: a job's first result is `<job-id>.<ext>`, its second and later ones
  `<job-id>+2.<ext>`, `<job-id>+3.<ext>`, … (in result_urls order; `files.n` is the 0-based
  index). `<ext>` comes from the URL path, lower-cased, letters and digits only, else `bin`.
  A job generated again (after `retry --rejected`, or a `--replace`) saves its new result
  as `<job-id>~2.<ext>` (then `~3`, …; `<job-id>~2+2.<ext>` for its second file), beside
  the earlier one, which is never overwritten.
- Unique, also on a case-insensitive file system: a job id is used as written, case kept
  (`TEA-02.mp4`), when it is "safe" (letters, digits, `. _ -`, not starting with a dot,
  not a Windows device name in any case, at most 120 characters) and no other id of its
  campaign differs from it by case alone. Any other id keeps its safe characters and
  gets `+` and 8 hex digits of the SHA-256 of the id as written: `a b` -> `a_b+…`, and
  `tea-02` and `TEA-02` in one campaign -> `tea-02+…` and `TEA-02+…`. So a suffix
  depends only on the id itself and on whether an id differing by case alone exists,
  never on the order of jobs. A safe name never holds `+`, so a number or a hash can
  never make another job's name (`shot+2` is never job `shot-2`'s, nor `Shot`'s).
- A file the ledger recorded keeps its recorded name (files saved under an earlier
  scheme, or before an id differing by case alone joined the campaign, stay where they
  are); a new name that a recorded file of the campaign already holds is never reused:
  that result gets the hashed form of its name instead.
- Safety: the resolved path must lie inside DIR. Result URLs are fetched with a client
  that has no Authorization header: the API key never goes to a CDN.
- Atomic: streamed to a temporary `.<name>.<host>-<pid>.<random>.part` in the same
  folder, fsync'd, then `os.replace`d. A temporary file whose writer no longer runs on
  this host (or, from another host, untouched for an hour) is removed the next time
  that folder is downloaded into.
- Resumable: a file already at its path with the recorded size and SHA-256 is kept
  without any request.
- Provenance (PRODUCT.md §13): the marks of each file saved (its C2PA manifests, XMP and
  other AI labels) are read from it once it is in place, and recorded with it; the file
  itself is never altered.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import re
import secrets
import signal
import socket
import sys
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import httpx

from batchgen.durable import fsync_dir
from batchgen.errors import BatchgenError
from batchgen.ledger import Ledger
from batchgen.ledger.db import database_errors
from batchgen.pacing import backoff
from batchgen.processes import pid_running
from batchgen.provenance.marks import read as read_marks
from batchgen.text import shown

CHUNK = 1 << 16
TRIES = 3  # per file and per `download`: transient errors (connection, 5xx) are retried
# Seconds for one whole download: a body trickling in (each read within its timeout) must
# not hold a run, or its end, for ever. Past it the file fails; `download` tries again.
DOWNLOAD_DEADLINE = 600.0
UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
SAFE = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")
EXTENSION = re.compile(r"[a-z0-9]{1,10}")
MAX_NAME = 120
MARK = "+"  # never in a safe name: what follows it is a hash or a file number
GENERATION = "~"  # never in a safe name: what follows it is the job's result number
# Names Windows keeps for devices, whatever their extension.
DEVICES = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(1, 10)),
           *(f"lpt{i}" for i in range(1, 10))}  # fmt: skip
PART = re.compile(r"^\..+\.(?P<host>[0-9a-f]{6})-(?P<pid>\d+)\.[0-9a-f]{8}\.part$")
OLD_PART = re.compile(r"^\..+\.[0-9a-f]{12}\.part$")  # before the writer was in the name
STALE_AFTER = 3600.0  # seconds without a write, for a temporary file whose writer is unknown


class DownloadError(BatchgenError):
    """One result file could not be saved (the message goes to the ledger)."""


def safe_name(text: str) -> str:
    """A file name made from `text` that cannot leave its folder, and that no other text
    gives (compared case-insensitively, it is only another text's when the two differ by
    case alone): `text` itself when safe, else its safe characters + `+` + 8 hex digits
    of its SHA-256."""
    device = text.split(".")[0].lower() in DEVICES
    if SAFE.fullmatch(text) and len(text) <= MAX_NAME and not device:
        return text
    return _hashed(text)


def _hashed(text: str) -> str:
    name = UNSAFE.sub("_", text).lstrip(".")[:MAX_NAME] or "_"
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    return f"{name}{MARK}{digest}"


def extension(url: str) -> str:
    """The file extension of a URL's path ('mp4'), or 'bin' when it has no safe one."""
    last = unquote(urlsplit(url).path).rsplit("/", 1)[-1]
    ext = last.rsplit(".", 1)[-1].lower() if "." in last else ""
    return ext if EXTENSION.fullmatch(ext) else "bin"


def file_name(job_id: str, n: int, url: str, hashed: bool = False, result: int = 1) -> str:
    """The name of file `n` (0-based) of a job's `result`-th result: the first has no
    number. `hashed`: the hashed form of the id even when it is safe (another id of the
    campaign differs from it by case alone, or its name is held by another file). No safe
    name holds `~` or `+`, so neither suffix makes another job's name."""
    generation = f"{GENERATION}{result}" if result > 1 else ""
    number = f"{MARK}{n + 1}" if n else ""
    stem = _hashed(job_id) if hashed else safe_name(job_id)
    return f"{stem}{generation}{number}.{extension(url)}"


def file_path(out_dir: str | Path, campaign: str, name: str) -> Path:
    """Where a campaign's file `name` is saved; raises DownloadError if that would be
    outside `out_dir` (it cannot, by construction; this is the last line of defence)."""
    path = Path(out_dir) / safe_name(campaign) / name
    root = Path(out_dir).resolve()
    if Path(name).name != name or not path.resolve().is_relative_to(root) or path.resolve() == root:
        raise DownloadError(f"refusing to write outside {out_dir}: {path}")
    return path


class _Names:
    """Which name each result file of a campaign gets: its recorded name when the ledger
    has one (for the same URL), else the scheme's; never a name that another file of the
    campaign holds, compared case-insensitively. Read from the ledger once per campaign."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self.owners: dict[str, dict[str, tuple[str, int]]] = {}  # campaign -> name -> file
        self.by_case: dict[str, set[str]] = {}  # campaign -> ids shared by case, lower-cased

    def _owners(self, campaign: str) -> dict[str, tuple[str, int]]:
        owners = self.owners.get(campaign)
        if owners is None:
            owners = {}
            for job_id, n, path in self.ledger.recorded_file_paths(campaign):
                owners.setdefault(Path(path).name.casefold(), (job_id, n))  # first keeps it
            self.owners[campaign] = owners
        return owners

    def name(self, row: dict[str, Any]) -> str:
        owners = self._owners(row["campaign"])
        me = (row["job_id"], row["n"])
        if row["path"] and row["saved_url"] == row["url"]:
            recorded = Path(row["path"]).name
            if owners.get(recorded.casefold()) == me:
                return recorded
        by_case = self.by_case.get(row["campaign"])
        if by_case is None:
            by_case = self.by_case[row["campaign"]] = self.ledger.ids_shared_by_case(
                row["campaign"]
            )
        for hashed in dict.fromkeys((row["job_id"].lower() in by_case, True)):
            name = file_name(row["job_id"], row["n"], row["url"], hashed, row.get("result", 1))
            if owners.setdefault(name.casefold(), me) == me:
                return name
        raise DownloadError(f"{name}: another result of campaign {row['campaign']} holds it")


def _temp_path(path: Path) -> Path:
    # Not mkstemp: its 0600 would stick to the saved file; this one follows the umask.
    return path.with_name(f".{path.name}.{_HOST}-{os.getpid()}.{secrets.token_hex(4)}.part")


_HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:6]


def clean_stale_parts(folder: Path) -> int:
    """Remove batchgen's temporary files in `folder` that nobody is writing any more: the
    writer (named in the file name) no longer runs on this host, or the file is from
    another host or an earlier batchgen and untouched for STALE_AFTER. How many went."""
    removed = 0
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return 0
    for entry in entries:
        match = PART.match(entry.name)
        if match is None and not OLD_PART.match(entry.name):
            continue
        try:
            if not entry.is_file(follow_symlinks=False):
                continue
            idle = time.time() - entry.stat(follow_symlinks=False).st_mtime
        except OSError:
            continue
        writer_gone = (
            match is not None
            and match["host"] == _HOST
            and int(match["pid"]) != os.getpid()
            and not pid_running(int(match["pid"]))
        )
        if writer_gone or idle > STALE_AFTER:
            try:
                os.unlink(entry.path)
                removed += 1
            except OSError:
                pass
    return removed


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass
class Tally:
    saved: int = 0
    kept: int = 0  # already there, intact
    failed: int = 0
    bytes: int = 0
    interrupted: bool = False


class Downloader:
    """Fetches the result files of completed jobs, a few at a time, for `download` and for
    `run --download` (the runner calls `fetch_job` as each task completes)."""

    def __init__(
        self,
        ledger: Ledger,
        out_dir: str | Path,
        client: httpx.AsyncClient | None = None,
        concurrency: int = 4,
        retry_delay: float = 0.5,
        on_failure: Callable[[str], None] | None = None,
        on_file: Callable[[], None] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.ledger = ledger
        self.out_dir = Path(out_dir)
        self._own_client = client is None
        # Never the API client: result URLs are CDN URLs (and _stream drops any
        # Authorization header a caller's client would add).
        self.client = client or httpx.AsyncClient(
            follow_redirects=True, timeout=httpx.Timeout(30.0, connect=10.0)
        )
        self.slots = asyncio.Semaphore(concurrency)
        self.retry_delay = retry_delay  # the first retry's ceiling: pacing.backoff, full jitter
        self.rng = rng or random.Random()
        self.on_failure = on_failure or (
            lambda line: print(shown(line), file=sys.stderr, flush=True)
        )
        self.on_file = on_file
        self.tally = Tally()
        self.names = _Names(ledger)
        self._cleaned: set[Path] = set()  # campaign folders rid of stale temporary files

    async def fetch_job(self, campaign: str, job_id: str) -> bool:
        """Save every result file of one completed job; True when all of them are saved.
        A ledger that cannot be read (its server gone) fails the job's files, said and
        counted (`run --download` runs this as a task nobody awaits on its own)."""
        try:
            rows = self.ledger.result_files(job=(campaign, job_id))
        except database_errors() as e:
            self.tally.failed += 1
            line = f"download failed: {campaign}/{job_id}: cannot read its files in the ledger: {e}"
            self.on_failure(self.ledger.redact(line))
            return False
        results = await asyncio.gather(*(self.fetch_file(row) for row in rows))
        return all(results)

    async def fetch_file(self, row: dict[str, Any]) -> bool:
        """Save one result file (a `Ledger.result_files` row), or record why it failed."""
        campaign, job_id, n, url = row["campaign"], row["job_id"], row["n"], row["url"]
        try:
            async with self.slots:
                path = file_path(self.out_dir, campaign, self.names.name(row))
                if path.parent not in self._cleaned:
                    self._cleaned.add(path.parent)
                    await asyncio.to_thread(clean_stale_parts, path.parent)
                if await self._intact(path, row):
                    self.tally.kept += 1
                    if row["path"] != str(path) or row.get("provenance") is None:
                        marks = None
                        if row.get("provenance") is None:  # saved before batchgen read marks
                            marks = await asyncio.to_thread(read_marks, path)
                        self.ledger.file_saved(
                            campaign, job_id, n, url, str(path), row["size"], row["sha256"],
                            marks,
                        )  # fmt: skip
                else:
                    size, digest = await self._fetch(url, path)
                    marks = await asyncio.to_thread(read_marks, path)
                    self.ledger.file_saved(campaign, job_id, n, url, str(path), size, digest, marks)
                    self.tally.saved += 1
                    self.tally.bytes += size
            return True
        except Exception as e:  # one bad file must not stop the others; it is recorded
            error = str(e) or type(e).__name__
            with suppress(*database_errors()):  # said below even if it cannot be recorded
                self.ledger.file_failed(campaign, job_id, n, url, error)
            self.tally.failed += 1
            line = f"download failed: {campaign}/{job_id} file {n + 1}: {url}: {error}"
            self.on_failure(self.ledger.redact(line))
            return False
        finally:
            if self.on_file is not None:
                self.on_file()

    async def _intact(self, path: Path, row: dict[str, Any]) -> bool:
        """Is the file already saved, for this URL, with the recorded size and SHA-256?"""
        if row["sha256"] is None or row["saved_url"] != row["url"]:
            return False
        try:
            if path.stat().st_size != row["size"]:
                return False
        except OSError:
            return False
        return await asyncio.to_thread(sha256_of, path) == row["sha256"]

    async def _fetch(self, url: str, path: Path) -> tuple[int, str]:
        """Download `url` to `path` atomically, retrying transient failures."""
        if urlsplit(url).scheme not in ("http", "https"):
            raise DownloadError(f"not an http(s) URL: {url}")
        for attempt in range(1, TRIES + 1):
            try:
                async with asyncio.timeout(DOWNLOAD_DEADLINE):
                    return await self._stream(url, path)
            except TimeoutError as e:
                raise DownloadError(f"not downloaded within {DOWNLOAD_DEADLINE:g} s") from e
            except (httpx.TransportError, _Transient) as e:
                if attempt == TRIES:
                    raise DownloadError(f"{e or type(e).__name__} (after {TRIES} tries)") from e
                await asyncio.sleep(backoff(self.retry_delay, attempt, self.rng))
        raise AssertionError("unreachable")

    async def _stream(self, url: str, path: Path) -> tuple[int, str]:
        path.parent.mkdir(parents=True, exist_ok=True)
        temp = _temp_path(path)
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        digest, size = hashlib.sha256(), 0
        try:
            with os.fdopen(fd, "wb") as f:
                request = self.client.build_request("GET", url)
                request.headers.pop("Authorization", None)  # never send a key to a CDN
                answer = await self.client.send(request, stream=True, follow_redirects=True)
                try:
                    if answer.status_code >= 500 or answer.status_code == 429:
                        raise _Transient(f"HTTP {answer.status_code}")
                    if answer.status_code != 200:
                        raise DownloadError(f"HTTP {answer.status_code}")
                    expected = answer.headers.get("content-length")
                    async for chunk in answer.aiter_bytes(CHUNK):
                        f.write(chunk)
                        digest.update(chunk)
                        size += len(chunk)
                finally:
                    await answer.aclose()
                if expected is not None and expected.isdigit() and int(expected) != size:
                    raise _Transient(f"got {size} of {expected} bytes")
                f.flush()
                await asyncio.to_thread(os.fsync, f.fileno())
            os.replace(temp, path)
            fsync_dir(path.parent)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        return size, digest.hexdigest()

    async def aclose(self) -> None:
        if self._own_client:
            await self.client.aclose()


class _Transient(Exception):
    """Worth another try: a 5xx or 429 answer, or a body cut short."""


def download_all(ledger: Ledger, out_dir: str, campaigns: list[str]) -> int:
    """Save every completed job's files; 0 when all are saved, 1 when some failed (one
    line each on stderr, then a summary)."""
    ledger.select_campaigns(campaigns)
    rows = ledger.result_files(campaigns or None)
    if not rows:
        print("nothing to download: no completed job has result files yet", file=sys.stderr)
        return 0
    tally = asyncio.run(_download_rows(ledger, out_dir, rows))
    print(
        f"{tally.saved} file(s) saved ({_megabytes(tally.bytes)}), {tally.kept} already there, "
        f"{tally.failed} failed, in {out_dir}/",
        file=sys.stderr,
    )
    if tally.interrupted:
        print("interrupted: run `batchgen download` again to save the rest", file=sys.stderr)
        return 130
    if tally.failed:
        print("run `batchgen download` again to retry the failed files", file=sys.stderr)
        return 1
    return 0


async def _download_rows(
    ledger: Ledger, out_dir: str, rows: list[dict[str, Any]], concurrency: int = 4
) -> Tally:
    progress = _Progress(len(rows))
    downloader = Downloader(ledger, out_dir, concurrency=concurrency, on_file=progress.advance)
    queue = iter(rows)

    async def worker() -> None:
        # A few workers share one iterator: memory stays flat on 100,000 files.
        for row in queue:
            await downloader.fetch_file(row)

    loop = asyncio.get_running_loop()
    work = asyncio.gather(*(worker() for _ in range(concurrency)))

    def interrupt() -> None:  # Ctrl-C or SIGTERM: stop; temporary files are removed
        downloader.tally.interrupted = True
        work.cancel()

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, interrupt)
    try:
        await work
    except asyncio.CancelledError:
        if not downloader.tally.interrupted:
            raise
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
        await downloader.aclose()
        progress.close()
    return downloader.tally


class _Progress:
    """Files done / total on stderr as a live bar on a terminal; elsewhere (a log, a pipe)
    only the line that starts, the summary says the rest."""

    def __init__(self, total: int) -> None:
        self.bar: Any = None
        if sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import Progress

            self.bar = Progress(console=Console(stderr=True), transient=True)
            self.bar.start()
            self.task = self.bar.add_task("downloading", total=total)
        else:
            print(f"downloading {total} file(s)", file=sys.stderr, flush=True)

    def advance(self) -> None:
        if self.bar is not None:
            self.bar.advance(self.task)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def _megabytes(size: int) -> str:
    return f"{size / 1e6:.1f} MB"
