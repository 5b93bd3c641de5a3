"""Result files (§9): saved atomically under DIR/<campaign>/<job-id>[+n].<ext>, checked by
SHA-256, resumable, recorded in the ledger, sanitized, and fetched from a real HTTP server
on 127.0.0.1 (a tiny one in a thread, so each test chooses what every URL answers)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from batchgen.download import (
    Downloader,
    clean_stale_parts,
    download_all,
    extension,
    file_name,
    file_path,
    safe_name,
)
from batchgen.job import Campaign
from batchgen.ledger import Ledger
from tests.builders import complete, grok, invoke, make_ledger
from tests.e2e import batchgen, spawn


class FileServer:
    """Serves `files` (path -> bytes) after `delay` seconds; records every request's path
    and headers, and the most requests it served at once.

    `/redirect/<path>` answers 302 to `<path>`; `/short/<path>` promises more bytes than it
    sends; a path in `fail_first` answers 500 that many times first.
    """

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.fail_first: dict[str, int] = {}
        self.delay = 0.0
        self.active = self.most_active = 0
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.requests.append((self.path, dict(self.headers)))
                path = self.path
                if path.startswith("/redirect/"):
                    self.send_response(302)
                    self.send_header("Location", path.removeprefix("/redirect"))
                    self.end_headers()
                    return
                if server.fail_first.get(path, 0) > 0:
                    server.fail_first[path] -= 1
                    self.send_error(500)
                    return
                short = path.startswith("/short/")
                body = server.files.get(path.removeprefix("/short") if short else path)
                if body is None:
                    self.send_error(404)
                    return
                with server.lock:
                    server.active += 1
                    server.most_active = max(server.most_active, server.active)
                time.sleep(server.delay)
                with server.lock:
                    server.active -= 1
                self.send_response(200)
                self.send_header("Content-Length", str(len(body) + (10 if short else 0)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
        )
        self.thread.start()

    def add(self, path: str, body: bytes) -> str:
        self.files[path] = body
        return self.url + path

    def paths(self) -> list[str]:
        return [path for path, _ in self.requests]

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server() -> Iterator[FileServer]:
    s = FileServer()
    yield s
    s.stop()


VIDEO = b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 40
VIDEO2 = b"second take" * 1000
PICTURE = b"\x89PNG\r\n" + b"pixels" * 500


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def ledger(ledger_at, server) -> Iterator[Ledger]:
    """one (1 video), two (2 takes), poster (an image); `pending` is not completed."""
    ledger = make_ledger(ledger_at, [grok("one"), grok("two"), grok("poster"), grok("pending")])
    complete(ledger, "one", urls=[server.add("/r/one.mp4", VIDEO)])
    complete(ledger, "two", urls=[server.add("/r/a.mp4", VIDEO), server.add("/r/b.MP4", VIDEO2)])
    complete(ledger, "poster", urls=[server.add("/r/poster.png?sig=abc", PICTURE)])
    yield ledger
    ledger.close()


def files(ledger: Ledger) -> dict[tuple[str, int], dict]:
    return {(r["job_id"], r["n"]): r for r in ledger.query("SELECT * FROM files")}


def test_download_saves_every_result_with_its_sha256_and_records_it(ledger, tmp_path, capsys):
    out = tmp_path / "out"
    assert download_all(ledger, str(out), []) == 0
    assert (out / "c" / "one.mp4").read_bytes() == VIDEO
    assert (out / "c" / "one.mp4").stat().st_mode & 0o444 == 0o444  # readable as usual
    assert (out / "c" / "two.mp4").read_bytes() == VIDEO
    assert (out / "c" / "two+2.mp4").read_bytes() == VIDEO2
    assert (out / "c" / "poster.png").read_bytes() == PICTURE
    rows = files(ledger)
    assert len(rows) == 4
    row = rows[("two", 1)]
    assert (row["path"], row["size"], row["sha256"]) == (
        str(out / "c" / "two+2.mp4"),
        len(VIDEO2),
        sha(VIDEO2),
    )
    assert row["downloaded_at"] and row["error"] is None
    assert sorted(p.name for p in (out / "c").iterdir()) == [
        "one.mp4",
        "poster.png",
        "two+2.mp4",
        "two.mp4",
    ]  # no temporary file left behind
    assert "4 file(s) saved" in capsys.readouterr().err


def test_a_second_download_makes_no_request(ledger, tmp_path, server):
    out = str(tmp_path / "out")
    download_all(ledger, out, [])
    before = len(server.requests)
    assert download_all(ledger, out, []) == 0
    assert len(server.requests) == before


def test_a_deleted_or_truncated_file_is_downloaded_again_without_generating_again(
    ledger, tmp_path, server
):
    out = tmp_path / "out"
    download_all(ledger, str(out), [])
    attempts = ledger.query("SELECT * FROM attempts")
    (out / "c" / "one.mp4").unlink()
    (out / "c" / "two+2.mp4").write_bytes(VIDEO2[:100])
    (out / "c" / "poster.png").write_bytes(b"x" * len(PICTURE))  # same size, other bytes
    server.requests.clear()
    assert download_all(ledger, str(out), []) == 0
    assert sorted(server.paths()) == ["/r/b.MP4", "/r/one.mp4", "/r/poster.png?sig=abc"]
    assert (out / "c" / "one.mp4").read_bytes() == VIDEO
    assert (out / "c" / "two+2.mp4").read_bytes() == VIDEO2
    assert (out / "c" / "poster.png").read_bytes() == PICTURE
    assert ledger.query("SELECT * FROM attempts") == attempts
    assert ledger.counts()["completed"] == 3


def test_a_failed_download_is_recorded_and_retried_by_the_next_download(
    ledger, tmp_path, server, capsys
):
    del server.files["/r/b.MP4"]
    out = tmp_path / "out"
    assert download_all(ledger, str(out), []) == 1
    err = capsys.readouterr().err
    assert "download failed: c/two file 2:" in err and "HTTP 404" in err
    assert "3 file(s) saved" in err and "1 failed" in err
    assert files(ledger)[("two", 1)]["error"] == "HTTP 404"
    assert ledger.counts()["completed"] == 3  # generated stays generated
    server.add("/r/b.MP4", VIDEO2)
    server.requests.clear()
    assert download_all(ledger, str(out), []) == 0
    assert server.paths() == ["/r/b.MP4"]
    assert files(ledger)[("two", 1)]["error"] is None
    assert list((out / "c").glob(".*")) == []


def test_a_hostile_job_id_cannot_write_outside_the_folder(ledger_at, tmp_path, server):
    ledger = make_ledger(ledger_at, [grok("../../etc/x"), grok("..")])
    complete(ledger, "../../etc/x", urls=[server.add("/x.mp4", VIDEO)])
    complete(ledger, "..", urls=[server.add("/dots.mp4", VIDEO2)])
    out = tmp_path / "deep" / "out"
    assert download_all(ledger, str(out), []) == 0
    saved = sorted(p for p in tmp_path.rglob("*") if p.is_file() and p.suffix == ".mp4")
    assert len(saved) == 2
    assert all(p.parent == out / "c" for p in saved)
    assert not (tmp_path / "etc").exists() and not (tmp_path / "deep" / "etc").exists()


def test_a_hostile_url_extension_cannot_write_outside_the_folder(ledger_at, tmp_path, server):
    ledger = make_ledger(ledger_at, [grok("a"), grok("b")])
    complete(ledger, "a", urls=[server.add("/v.%2e%2e%2f%2e%2e%2fevil", VIDEO)])
    complete(ledger, "b", urls=[server.add("/v.mp4%2F..%2F..%2Fsh", VIDEO2)])
    out = tmp_path / "out"
    assert download_all(ledger, str(out), []) == 0
    assert sorted(p.name for p in (out / "c").iterdir()) == ["a.bin", "b.bin"]
    assert {p.name for p in tmp_path.iterdir() if not p.name.startswith("ledger.db")} == {"out"}


def test_redirects_are_followed_and_no_authorization_header_is_sent(ledger_at, tmp_path, server):
    ledger = make_ledger(ledger_at, [grok("moved")])
    server.add("/cdn/moved.mp4", VIDEO)
    complete(ledger, "moved", urls=[server.url + "/redirect/cdn/moved.mp4"])

    async def fetch() -> bool:
        # Even a client carrying the API key must not send it to a result URL.
        client = httpx.AsyncClient(headers={"Authorization": "Bearer okpk_secret"})
        downloader = Downloader(ledger, tmp_path / "out", client=client)
        try:
            return await downloader.fetch_job("c", "moved")
        finally:
            await downloader.aclose()
            await client.aclose()

    assert asyncio.run(fetch())
    assert (tmp_path / "out" / "c" / "moved.mp4").read_bytes() == VIDEO
    assert server.paths() == ["/redirect/cdn/moved.mp4", "/cdn/moved.mp4"]
    assert all("Authorization" not in headers for _, headers in server.requests)


def test_a_500_or_a_short_body_is_tried_again(ledger_at, tmp_path, server):
    ledger = make_ledger(ledger_at, [grok("flaky"), grok("short")])
    complete(ledger, "flaky", urls=[server.add("/flaky.mp4", VIDEO)])
    complete(ledger, "short", urls=[server.url + "/short/short.mp4"])
    server.add("/short.mp4", VIDEO2)
    server.fail_first["/flaky.mp4"] = 2

    async def fetch() -> list[bool]:
        downloader = Downloader(ledger, tmp_path / "out", retry_delay=0.001)
        try:
            return [
                await downloader.fetch_job("c", "flaky"),
                await downloader.fetch_job("c", "short"),
            ]
        finally:
            await downloader.aclose()

    assert asyncio.run(fetch()) == [True, False]
    assert server.paths().count("/flaky.mp4") == 3
    assert server.paths().count("/short/short.mp4") == 3
    assert "after 3 tries" in files(ledger)[("short", 0)]["error"]
    assert sorted(p.name for p in (tmp_path / "out" / "c").iterdir()) == ["flaky.mp4"]


def test_a_download_tried_again_waits_the_runs_backoff_with_jitter(
    ledger_at, tmp_path, server, monkeypatch
):
    """The pause before each new try is pacing.backoff's (full jitter, doubling from the
    retry delay), the one the scheduler uses, not a fixed doubling of our own."""
    waits: list[tuple[float, int]] = []

    def recorded(base: float, failures: int, rng: random.Random) -> float:
        waits.append((base, failures))
        return 0.0

    monkeypatch.setattr("batchgen.download.backoff", recorded)
    ledger = make_ledger(ledger_at, [grok("flaky")])
    complete(ledger, "flaky", urls=[server.add("/flaky.mp4", VIDEO)])
    server.fail_first["/flaky.mp4"] = 2

    async def fetch() -> bool:
        downloader = Downloader(ledger, tmp_path / "out", retry_delay=0.25)
        try:
            return await downloader.fetch_job("c", "flaky")
        finally:
            await downloader.aclose()

    assert asyncio.run(fetch())
    assert waits == [(0.25, 1), (0.25, 2)]


def test_downloads_run_a_few_at_a_time(ledger_at, tmp_path, server):
    ledger = make_ledger(ledger_at, [grok(f"j{i}") for i in range(12)])
    for i in range(12):
        complete(ledger, f"j{i}", urls=[server.add(f"/j{i}.mp4", VIDEO)])
    server.delay = 0.05
    assert download_all(ledger, str(tmp_path / "out"), []) == 0
    assert 2 <= server.most_active <= 4
    assert len(list((tmp_path / "out" / "c").iterdir())) == 12


def test_fetch_job_of_a_job_not_yet_completed_has_nothing_to_do(ledger, tmp_path, server):
    async def fetch() -> bool:
        downloader = Downloader(ledger, tmp_path / "out")
        try:
            return await downloader.fetch_job("c", "pending")
        finally:
            await downloader.aclose()

    assert asyncio.run(fetch()) and server.requests == []


def test_download_command_saves_files_and_status_lists_them(ledger, tmp_path):
    out = tmp_path / "out"
    result = invoke(ledger.location, "download", "--out", str(out))
    assert result.exit_code == 0, result.output
    status = json.loads(invoke(ledger.location, "status", "--json").output)
    saved = {job["id"]: job["files"] for job in status["jobs"]}
    assert saved["two"] == [str(out / "c" / "two.mp4"), str(out / "c" / "two+2.mp4")]
    assert saved["pending"] == []


def test_download_without_a_terminal_says_what_it_does_and_what_it_did_and_nothing_else(
    ledger_at, tmp_path, server
):
    """No progress-bar remnant (`10/13 file(s)`) in a log: a line to start, a summary."""
    ledger = make_ledger(ledger_at, [grok(f"clip-{n}") for n in range(13)])
    for n in range(13):
        complete(ledger, f"clip-{n}", urls=[server.add(f"/r/{n}.mp4", VIDEO)])
    ledger.close()
    out = tmp_path / "out"
    result = batchgen("download", "--out", str(out), ledger=ledger.location)
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == [
        "downloading 13 file(s)",
        f"13 file(s) saved ({13 * len(VIDEO) / 1e6:.1f} MB), 0 already there, 0 failed, in {out}/",
    ]


def test_download_command_with_nothing_completed_says_so(ledger_at, tmp_path):
    make_ledger(ledger_at, [grok("a")]).close()
    result = invoke(ledger_at, "download", "--out", str(tmp_path / "out"))
    assert result.exit_code == 0 and "nothing to download" in result.output


# ---------------------------------------------------------------- names


def test_safe_names_keep_plain_ids_and_mark_changed_ones_with_a_hash():
    assert safe_name("cat-piano_2.v1") == "cat-piano_2.v1"
    for hostile in ("../../etc/x", "..", ".hidden", "a/b", "a\x00b", "tab\there", "", "é"):
        name = safe_name(hostile)
        assert "/" not in name and "\x00" not in name and not name.startswith(".")
        assert name not in ("", ".", "..") and name.isprintable()
    assert safe_name("a/b") != safe_name("a_b")  # two ids never share a file
    assert len(safe_name("x" * 1000)) < 140


def test_names_differ_case_insensitively_and_a_hash_or_number_never_makes_another_id():
    ids = ["shot", "Shot", "SHOT", "shot-1", "shot-2", "shot+2", "shot_2", "a b", "a_b",
           "con", "CON", "con.v2", "x" * 130, "x" * 131, "é", "e"]  # fmt: skip
    by_case = {i.lower() for i in ids if sum(j.lower() == i.lower() for j in ids) > 1}
    names = [
        file_name(i, n, "https://x/a.mp4", hashed=i.lower() in by_case)
        for i in ids
        for n in range(3)
    ]
    assert len({name.casefold() for name in names}) == len(names)
    assert file_name("shot", 0, "https://x/a.mp4") == "shot.mp4"
    assert file_name("shot", 1, "https://x/a.mp4") == "shot+2.mp4"
    assert file_name("Shot", 0, "https://x/a.mp4", hashed=True).startswith("Shot+")
    assert safe_name("con").startswith("con+") and safe_name("nul.v2").startswith("nul.v2+")
    assert safe_name("CON").startswith("CON+") and safe_name("Aux.v2").startswith("Aux.v2+")


def test_an_id_keeps_its_case_in_its_file_names(ledger_at, tmp_path, server):
    ledger = make_ledger(ledger_at, [grok("TEA-02"), grok("Shot.v2")])
    complete(
        ledger, "TEA-02", urls=[server.add("/r/a.mp4", VIDEO), server.add("/r/b.png", PICTURE)]
    )
    complete(ledger, "Shot.v2", urls=[server.add("/r/c.mp4", VIDEO2)])
    out = tmp_path / "out"
    assert download_all(ledger, str(out), []) == 0
    assert sorted(p.name for p in (out / "c").iterdir()) == [
        "Shot.v2.mp4",
        "TEA-02+2.png",
        "TEA-02.mp4",
    ]
    assert (out / "c" / "TEA-02.mp4").read_bytes() == VIDEO


def id_hash(job_id: str) -> str:
    return hashlib.sha256(job_id.encode()).hexdigest()[:8]


@pytest.mark.parametrize(
    "order",
    [
        ["tea-02", "TEA-02", "Tea-02", "other", "Ab", "AB", "Solo"],
        ["Solo", "AB", "other", "Tea-02", "Ab", "TEA-02", "tea-02"],
    ],
)
def test_only_ids_differing_by_case_alone_get_a_suffix_the_hash_of_the_id_as_written(
    ledger_at, tmp_path, server, order
):
    ledger = make_ledger(ledger_at, [grok(i) for i in order])
    for k, job_id in enumerate(order):
        complete(ledger, job_id, urls=[server.add(f"/r/{k}.mp4", job_id.encode() * 50)])
    out = tmp_path / "out"
    assert download_all(ledger, str(out), []) == 0
    names = {job_id: Path(r["path"]).name for (job_id, _), r in files(ledger).items()}
    assert names == {
        "tea-02": f"tea-02+{id_hash('tea-02')}.mp4",
        "TEA-02": f"TEA-02+{id_hash('TEA-02')}.mp4",
        "Tea-02": f"Tea-02+{id_hash('Tea-02')}.mp4",
        "other": "other.mp4",
        "Ab": f"Ab+{id_hash('Ab')}.mp4",
        "AB": f"AB+{id_hash('AB')}.mp4",
        "Solo": "Solo.mp4",
    }  # whatever the order of the jobs


def test_a_file_saved_keeps_its_name_when_an_id_differing_only_by_case_comes_later(
    ledger_at, tmp_path, server
):
    ledger = make_ledger(ledger_at, [grok("tea-02")])
    complete(ledger, "tea-02", urls=[server.add("/r/a.mp4", VIDEO)])
    out = tmp_path / "out"
    assert download_all(ledger, str(out), []) == 0
    ledger.ingest(Campaign("c", "c.yaml", "sha", None), [grok("tea-02"), grok("TEA-02")])
    complete(ledger, "TEA-02", urls=[server.add("/r/b.mp4", VIDEO2)])
    server.requests.clear()
    assert download_all(ledger, str(out), []) == 0
    assert server.paths() == ["/r/b.mp4"]  # tea-02's file is kept where it is
    assert sorted(p.name for p in (out / "c").iterdir()) == [
        f"TEA-02+{id_hash('TEA-02')}.mp4",
        "tea-02.mp4",
    ]


def test_an_upper_case_ids_file_saved_under_the_earlier_hashed_name_keeps_it(
    ledger_at, tmp_path, server
):
    # An earlier batchgen hashed every id that was not lower-case: TEA-02+<hash>.mp4.
    ledger = make_ledger(ledger_at, [grok("TEA-02"), grok("Poster")])
    complete(ledger, "TEA-02", urls=[url := server.add("/r/a.mp4", VIDEO)])
    complete(ledger, "Poster", urls=[server.add("/r/b.mp4", VIDEO2)])
    out = tmp_path / "out"
    record_legacy(ledger, out, "TEA-02", 0, url, f"TEA-02+{id_hash('TEA-02')}.mp4", VIDEO)
    assert download_all(ledger, str(out), []) == 0
    assert server.paths() == ["/r/b.mp4"]  # the recorded file is not saved again
    assert Path(files(ledger)[("TEA-02", 0)]["path"]).name == f"TEA-02+{id_hash('TEA-02')}.mp4"
    assert Path(files(ledger)[("Poster", 0)]["path"]).name == "Poster.mp4"
    server.requests.clear()
    assert download_all(ledger, str(out), []) == 0 and server.requests == []


def test_extensions_come_from_the_url_path_or_default_to_bin():
    assert extension("https://cdn.example.com/v/clip.MP4?sig=1#t") == "mp4"
    assert extension("https://cdn.example.com/image.png") == "png"
    assert extension("https://cdn.example.com/noext") == "bin"
    assert extension("https://cdn.example.com/dir.v2/noext") == "bin"
    assert extension("https://cdn.example.com/x.mp4;rm -rf") == "bin"
    assert extension("https://cdn.example.com/x.%2e%2e%2fetc") == "bin"


def test_the_second_and_later_results_of_a_job_are_numbered_from_2(tmp_path):
    assert (
        file_path(tmp_path, "c", file_name("j", 0, "https://x/a.mp4")) == tmp_path / "c" / "j.mp4"
    )
    assert (
        file_path(tmp_path, "c", file_name("j", 1, "https://x/b.png")) == tmp_path / "c" / "j+2.png"
    )
    assert file_path(tmp_path, "c", file_name("j", 2, "https://x/c")) == tmp_path / "c" / "j+3.bin"


def test_a_campaign_folder_that_is_a_symlink_out_of_the_folder_is_refused(
    ledger_at, tmp_path, server
):
    ledger = make_ledger(ledger_at, [grok("a")])
    complete(ledger, "a", urls=[server.add("/a.mp4", VIDEO)])
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    out.mkdir()
    elsewhere.mkdir()
    (out / "c").symlink_to(elsewhere)
    assert download_all(ledger, str(out), []) == 1
    assert list(elsewhere.iterdir()) == [] and server.requests == []
    assert "refusing to write outside" in files(ledger)[("a", 0)]["error"]


def test_path_of_a_saved_file_is_inside_the_folder(tmp_path):
    root = Path(tmp_path).resolve()
    assert (
        file_path(tmp_path, "../c", file_name("../../j", 0, "https://x/y.z"))
        .resolve()
        .is_relative_to(root)
    )


# ---------------------------------------------------------------- no two results on one path


def test_no_two_results_share_a_path_even_on_a_case_insensitive_file_system(
    ledger_at, tmp_path, server
):
    # `shot` with two results and `shot-1` once both wrote shot-1.mp4; `Shot` and `shot`
    # are one file on macOS and Windows; `a b` and `a_b` sanitize alike.
    ids = ["shot", "shot-1", "Shot", "SHOT", "shot-2", "a b", "a_b", "con", "CON"]
    ledger = make_ledger(ledger_at, [grok(i) for i in ids])
    content: dict[tuple[str, int], bytes] = {}
    for k, job_id in enumerate(ids):
        count = 2 if job_id == "shot" else 1
        urls = []
        for n in range(count):
            content[(job_id, n)] = f"{job_id} result {n}".encode() * 50
            urls.append(server.add(f"/r/{k}-{n}.mp4", content[(job_id, n)]))
        complete(ledger, job_id, urls=urls)
    out = tmp_path / "out"
    assert download_all(ledger, str(out), []) == 0
    records = files(ledger)
    paths = [Path(records[key]["path"]) for key in content]
    assert len({str(p).casefold() for p in paths}) == len(content) == 10
    for key, body in content.items():
        assert Path(records[key]["path"]).read_bytes() == body, key
    assert len(list((out / "c").iterdir())) == 10


def record_legacy(ledger: Ledger, out: Path, job_id: str, n: int, url: str, name: str, body: bytes):
    """A file saved and recorded by an earlier batchgen under its own naming scheme."""
    path = out / "c" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(body)
    ledger.file_saved("c", job_id, n, url, str(path), len(body), sha(body))


def test_files_saved_under_an_earlier_scheme_keep_their_path_and_are_never_overwritten(
    ledger_at, tmp_path, server
):
    # The earlier scheme named job `two`'s results two-1.mp4 and two-2.mp4; job `two-1`,
    # completed since, must not take two-1.mp4 from it.
    ledger = make_ledger(ledger_at, [grok("two"), grok("two-1")])
    urls = [server.add("/r/a.mp4", VIDEO), server.add("/r/b.mp4", VIDEO2)]
    complete(ledger, "two", urls=urls)
    complete(ledger, "two-1", urls=[server.add("/r/c.mp4", PICTURE)])
    out = tmp_path / "out"
    record_legacy(ledger, out, "two", 0, urls[0], "two-1.mp4", VIDEO)
    record_legacy(ledger, out, "two", 1, urls[1], "two-2.mp4", VIDEO2)
    assert download_all(ledger, str(out), []) == 0
    assert server.paths() == ["/r/c.mp4"]  # the recorded files are kept as they are
    assert (out / "c" / "two-1.mp4").read_bytes() == VIDEO
    assert (out / "c" / "two-2.mp4").read_bytes() == VIDEO2
    moved = Path(files(ledger)[("two-1", 0)]["path"])
    assert moved.name.startswith("two-1+") and moved.read_bytes() == PICTURE
    server.requests.clear()
    assert download_all(ledger, str(out), []) == 0 and server.requests == []


def test_two_files_an_earlier_scheme_recorded_on_one_path_are_separated(
    ledger_at, tmp_path, server
):
    # What the earlier scheme left: `two`'s first result and `two-1`'s both recorded as
    # two-1.mp4, the later download having overwritten the first.
    ledger = make_ledger(ledger_at, [grok("two"), grok("two-1")])
    urls = [server.add("/r/a.mp4", VIDEO), server.add("/r/b.mp4", VIDEO2)]
    complete(ledger, "two", urls=urls)
    complete(ledger, "two-1", urls=[url := server.add("/r/c.mp4", PICTURE)])
    out = tmp_path / "out"
    record_legacy(ledger, out, "two", 0, urls[0], "two-1.mp4", VIDEO)
    record_legacy(ledger, out, "two", 1, urls[1], "two-2.mp4", VIDEO2)
    record_legacy(ledger, out, "two-1", 0, url, "two-1.mp4", PICTURE)
    for _ in range(2):  # settles once, then stays
        assert download_all(ledger, str(out), []) == 0
    records = files(ledger)
    assert {Path(r["path"]).read_bytes() for r in records.values()} == {VIDEO, VIDEO2, PICTURE}
    assert Path(records[("two", 0)]["path"]).read_bytes() == VIDEO
    assert Path(records[("two-1", 0)]["path"]).read_bytes() == PICTURE
    server.requests.clear()
    assert download_all(ledger, str(out), []) == 0 and server.requests == []


# ---------------------------------------------------------------- stale temporary files


def gone_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_temporary_files_of_writers_that_are_gone_are_removed_and_live_ones_kept(tmp_path):
    from batchgen.download import _HOST

    folder = tmp_path / "c"
    folder.mkdir()
    live = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                            stdin=subprocess.PIPE)  # fmt: skip
    try:
        names = {
            "dead": f".a.mp4.{_HOST}-{gone_pid()}.0123abcd.part",
            "live": f".b.mp4.{_HOST}-{live.pid}.0123abcd.part",
            "mine": f".c.mp4.{_HOST}-{os.getpid()}.0123abcd.part",
            "other host": f".d.mp4.abcdef-{gone_pid()}.0123abcd.part",
            "other host, idle": f".e.mp4.abcdef-{live.pid}.0123abcd.part",
            "earlier batchgen": ".f.mp4.0123456789ab.part",
            "earlier batchgen, idle": ".g.mp4.0123456789ab.part",
            "not ours": ".notes.part",
            "a result": "h.part",
        }
        for name in names.values():
            (folder / name).write_bytes(b"partial")
        hours_ago = time.time() - 2 * 3600
        for idle in ("other host, idle", "earlier batchgen, idle"):
            os.utime(folder / names[idle], (hours_ago, hours_ago))
        assert clean_stale_parts(folder) == 3
        left = {p.name for p in folder.iterdir()}
        removed = {what for what, name in names.items() if name not in left}
        assert removed == {"dead", "other host, idle", "earlier batchgen, idle"}
    finally:
        live.kill()
        live.wait()


# ---------------------------------------------------------------- interrupted


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_an_interrupted_download_exits_130_leaving_no_partial_file(
    ledger, tmp_path, server, signum
):
    server.delay = 30  # every answer is on its way when the signal comes
    out = tmp_path / "out"
    process = spawn("download", "--out", str(out), ledger=ledger.location)
    try:
        deadline = time.monotonic() + 30
        while server.active == 0:
            assert time.monotonic() < deadline, "no download started"
            time.sleep(0.02)
        process.send_signal(signum)
        _, err = process.communicate(timeout=20)
    finally:
        process.kill()
    assert process.returncode == 130, err
    assert "interrupted" in err and "batchgen download" in err
    assert "Traceback" not in err and "Aborted" not in err
    assert not out.exists() or [p for p in out.rglob("*") if p.is_file()] == []


def test_a_ledger_that_cannot_be_read_fails_the_jobs_files_saying_so(ledger, tmp_path, server):
    """`run --download` fetches each completed job's files in a task nobody awaits alone:
    a ledger that cannot give the job's files (here its table renamed by hand; a
    PostgreSQL server gone) is a failure said and counted, never swallowed (run ends 3)."""
    said: list[str] = []
    ledger.conn.execute("ALTER TABLE files RENAME TO files_elsewhere")

    async def fetch() -> bool:
        downloader = Downloader(ledger, tmp_path / "out", on_failure=said.append)
        try:
            return await downloader.fetch_job("c", "one")
        finally:
            await downloader.aclose()
            assert downloader.tally.failed == 1

    assert asyncio.run(fetch()) is False
    assert len(said) == 1 and "c/one" in said[0] and "ledger" in said[0], said
    assert server.requests == []
