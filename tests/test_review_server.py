"""The review server (PRODUCT §12) over real HTTP on 127.0.0.1: its JSON, verdicts, the
protection of its one write against other web pages, and which files it serves (only the
ledger's, only inside the files folder, with byte ranges)."""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import httpx
import pytest

from batchgen.job import Campaign, Job
from batchgen.ledger import Ledger
from batchgen.review import open_review
from batchgen.review.files import byte_range, locate
from batchgen.review.server import ReviewServer
from tests.e2e import command_env
from tests.test_report import CDN, complete, grok, image, make_ledger, start

VIDEO = b"\x00\x00\x00\x18ftypisom" + bytes(range(256)) * 8  # 2,060 bytes


@pytest.fixture
def folder(tmp_path, monkeypatch) -> Path:
    """A ledger and its files folder, with the working directory where a run left them:
    a1 and a2 (two takes of one prompt, saved), img (saved), gone (recorded, file
    deleted), remote (never saved), later (running)."""
    monkeypatch.chdir(tmp_path)
    takes = [Job("c", take, "grok-video-3", "a cat", duration=5) for take in ("a1", "a2")]
    ledger = make_ledger(
        tmp_path / "l.db", [*takes, image("img"), grok("gone"), grok("remote"), grok("later")]
    )
    for job_id in ("a1", "a2", "img", "gone", "remote"):
        ext = "png" if job_id == "img" else "mp4"
        complete(ledger, job_id, urls=[f"{CDN}/{job_id}.{ext}"])
        if job_id == "remote":
            continue
        path = Path("out") / "c" / f"{job_id}.{ext}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(VIDEO)
        ledger.file_saved("c", job_id, 0, f"{CDN}/{job_id}.{ext}", str(path), len(VIDEO), "0")
    start(ledger, "later")
    ledger.close()
    (tmp_path / "out" / "c" / "gone.mp4").unlink()
    return tmp_path


@pytest.fixture
def server(folder) -> Iterator[ReviewServer]:
    review = open_review(folder / "l.db", [], "out")
    thread = threading.Thread(target=review.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    yield review
    review.shutdown()
    review.server_close()
    review.ledger.close()
    thread.join()


def page(server: ReviewServer) -> httpx.Client:
    """A client that behaves like the review page's own scripts."""
    return httpx.Client(base_url=server.url, headers={"Origin": server.url.rstrip("/")})


def results(server: ReviewServer) -> dict:
    answer = httpx.get(server.url + "api/results")
    assert answer.status_code == 200
    return answer.json()


def cards(server: ReviewServer) -> dict[str, dict]:
    return {r["id"]: r for g in results(server)["groups"] for r in g["results"]}


def verdict(server: ReviewServer, job_id: str, value: str | None, note: str | None = None):
    task_id = cards(server)[job_id]["task_id"]
    body = {"campaign": "c", "job_id": job_id, "task_id": task_id, "verdict": value, "note": note}
    with page(server) as client:
        return client.post("/api/verdict", json=body)


# -- the page and its JSON --------------------------------------------------------------------


def test_the_page_loads_nothing_from_outside_and_says_so_in_its_policy(server):
    answer = httpx.get(server.url)
    assert answer.status_code == 200 and "text/html" in answer.headers["content-type"]
    policy = answer.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "default-src 'none'" in policy
    for name in ("index.html", "review.css", "review.js"):
        text = resources.files("batchgen.review").joinpath("static", name).read_text()
        assert not re.search(r"(src|href)=\"?(https?:)?//", text), name
        assert "@import" not in text and "url(" not in text, name
    for asset in ("review.css", "review.js"):
        assert httpx.get(server.url + asset).status_code == 200


def test_results_are_grouped_by_prompt_with_local_files_and_remote_ones_marked(server):
    data = results(server)
    groups = {g["prompt"]: [r["id"] for r in g["results"]] for g in data["groups"]}
    assert groups["a cat"] == ["a1", "a2"]  # two takes of one prompt, side by side
    assert len(data["groups"]) == 5
    by_id = cards(server)
    assert by_id["a1"]["media"] == [
        {"n": 0, "type": "video", "src": "/files/c/a1/0", "local": True, "path": "out/c/a1.mp4"}
    ]
    assert by_id["img"]["media"][0]["type"] == "image"
    for job_id in ("gone", "remote"):  # not on disk: the service's URL, marked as such
        assert by_id[job_id]["media"] == [
            {"n": 0, "type": "video", "src": f"{CDN}/{job_id}.mp4", "local": False, "path": None}
        ]
    later = by_id["later"]
    assert (later["status"], later["media"], later["verdict"]) == ("running", [], None)
    assert (by_id["a1"]["cost_usd"], by_id["a1"]["attempts"], by_id["a1"]["tags"]) == (
        "0.10",
        1,
        [],
    )
    assert data["counts"] == {"approved": 0, "rejected": 0, "unreviewed": 5}


def test_results_answer_unchanged_until_the_ledger_changes_then_show_the_change(server, folder):
    version = results(server)["version"]
    same = httpx.get(server.url + "api/results", params={"since": version}).json()
    assert same == {"version": version, "unchanged": True}

    ledger = Ledger(folder / "l.db", create=False)  # a run, still filling the ledger
    job = next(j for j in ledger.unfinished_jobs(["c"]) if j.id == "later")
    ledger.task_completed(job, [f"{CDN}/later.mp4"])
    ledger.close()
    changed = httpx.get(server.url + "api/results", params={"since": version}).json()
    assert changed["version"] != version
    assert {r["id"]: r["status"] for g in changed["groups"] for r in g["results"]}["later"] == (
        "completed"
    )


def test_a_verdict_given_here_changes_the_version_so_the_page_shows_it(server):
    version = results(server)["version"]
    assert verdict(server, "a2", "approved").status_code == 200
    after = httpx.get(server.url + "api/results", params={"since": version}).json()
    assert after["version"] != version and after["counts"]["approved"] == 1


# -- a ledger too large for one answer: pages, newest campaign first, filters on the server --


@pytest.fixture
def many(tmp_path) -> Iterator[ReviewServer]:
    """Two campaigns: `a-old` (5 jobs, ingested first: 3 completed, one approved) and
    `z-new` (7 jobs, ingested later: 2 completed, tagged, one rejected)."""
    path = tmp_path / "l.db"
    ledger = make_ledger(path, [grok(f"old-{i}") for i in range(5)], campaign="a-old")
    for i in range(3):
        complete(ledger, f"old-{i}", campaign="a-old")
    ledger.ingest(
        Campaign("z-new", "z.yaml", "sha", None),
        [Job("z-new", f"new-{i}", "grok-video-3", f"A Lighthouse {i % 2}", duration=5,
             tags=["night"] if i < 2 else []) for i in range(7)],
    )  # fmt: skip
    for job_id, campaign in (("new-0", "z-new"), ("new-1", "z-new")):
        complete(ledger, job_id, campaign=campaign)
    judge = {"old-0": ("a-old", "approved"), "new-1": ("z-new", "rejected")}
    for job_id, (campaign, value) in judge.items():
        task = ledger.conn.execute(
            "SELECT task_id FROM jobs WHERE campaign = ? AND id = ?", (campaign, job_id)
        ).fetchone()[0]
        ledger.record_verdict(campaign, job_id, task, value, None)
    ledger.close()
    review = open_review(path, [], tmp_path / "out")
    thread = threading.Thread(target=review.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    yield review
    review.shutdown()
    review.server_close()
    review.ledger.close()
    thread.join()


def ask(server: ReviewServer, **params: Any) -> dict:
    answer = httpx.get(server.url + "api/results", params=params)
    assert answer.status_code == 200, answer.text
    return answer.json()


def ids(data: dict) -> set[str]:
    return {r["id"] for g in data["groups"] for r in g["results"]}


def test_results_come_a_page_at_a_time_the_newest_campaign_first(many):
    first = ask(many, limit=4)
    assert ids(first) == {"new-0", "new-1", "new-2", "new-3"}
    assert (first["shown"], first["more"], first["total_jobs"]) == (4, True, 12)
    assert first["campaigns"] == ["a-old", "z-new"]
    assert "grok-video-3" in first["models"]
    more = ask(many, limit=9)
    assert ids(more) == {*(f"new-{i}" for i in range(7)), "old-0", "old-1"}
    assert more["more"] is True
    order = [(g["campaign"], [r["id"] for r in g["results"]]) for g in more["groups"]]
    assert order == [
        ("z-new", ["new-0", "new-2", "new-4", "new-6"]),
        ("z-new", ["new-1", "new-3", "new-5"]),
        ("a-old", ["old-0"]),
        ("a-old", ["old-1"]),
    ]
    everything = ask(many, limit=12)
    assert len(ids(everything)) == 12 and everything["more"] is False
    assert everything["counts"] == {"approved": 1, "rejected": 1, "unreviewed": 3}
    # the same prompt's results side by side, within the page
    groups = {g["prompt"]: [r["id"] for r in g["results"]] for g in first["groups"]}
    assert groups == {"A Lighthouse 0": ["new-0", "new-2"], "A Lighthouse 1": ["new-1", "new-3"]}


def test_a_page_without_a_limit_has_the_first_two_hundred(many):
    data = ask(many)
    assert (data["limit"], data["shown"], data["more"]) == (200, 12, False)


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ({"campaign": "a-old"}, {"old-0", "old-1", "old-2", "old-3", "old-4"}),
        ({"status": "completed"}, {"new-0", "new-1", "old-0", "old-1", "old-2"}),
        ({"verdict": "unreviewed"}, {"new-0", "old-1", "old-2"}),
        ({"verdict": "approved"}, {"old-0"}),
        ({"verdict": "rejected", "campaign": "z-new"}, {"new-1"}),
        ({"tag": "night"}, {"new-0", "new-1"}),
        ({"q": "LIGHTHOUSE 1"}, {"new-1", "new-3", "new-5"}),
        ({"q": "old-4"}, {"old-4"}),
        ({"model": "jimeng-5.0"}, set()),
        ({"status": "queued", "limit": 3}, {"new-2", "new-3", "new-4"}),
    ],
)
def test_the_server_filters_before_it_pages(many, filters, expected):
    data = ask(many, **filters)
    assert ids(data) == expected
    assert data["more"] is (filters == {"status": "queued", "limit": 3})


@pytest.mark.parametrize("limit", ["0", "2001", "ten", "-1"])
def test_a_limit_out_of_range_is_refused(many, limit):
    answer = httpx.get(many.url + "api/results", params={"limit": limit})
    assert answer.status_code == 400 and "limit" in answer.json()["error"]


# -- verdicts -------------------------------------------------------------------------------


def test_a_verdict_from_the_page_is_stored_and_shown(server, folder):
    answer = verdict(server, "a1", "rejected", "wrong colour")
    assert answer.status_code == 200
    assert answer.json()["verdict"] == "rejected" and answer.json()["note"] == "wrong colour"
    assert verdict(server, "a2", "approved").status_code == 200
    by_id = cards(server)
    assert (by_id["a1"]["verdict"], by_id["a1"]["note"]) == ("rejected", "wrong colour")
    assert by_id["a2"]["verdict"] == "approved"
    assert results(server)["counts"] == {"approved": 1, "rejected": 1, "unreviewed": 3}


def test_the_server_writes_nothing_but_verdicts(server, folder):
    def everything_else() -> list[str]:
        db = sqlite3.connect(folder / "l.db")
        try:
            return [
                line
                for line in db.iterdump()
                if "verdicts" not in line and not line.startswith('INSERT INTO "_migrations"')
            ]
        finally:
            db.close()

    before = everything_else()
    results(server)
    verdict(server, "a1", "approved", "ok")
    verdict(server, "a1", None)
    httpx.get(server.url + "files/c/a1/0")
    assert everything_else() == before


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 403),  # no Origin: not the page
        ({"Origin": "https://evil.example"}, 403),
        ({"Origin": "null"}, 403),
        ({"Origin": "SELF", "Sec-Fetch-Site": "cross-site"}, 403),
        ({"Origin": "SELF", "Content-Type": "text/plain"}, 415),  # what a <form> can send
        ({"Origin": "SELF", "Content-Type": "application/x-www-form-urlencoded"}, 415),
        ({"Origin": "SELF", "Host": "evil.example:80"}, 421),  # DNS rebinding
    ],
)
def test_a_verdict_from_anywhere_but_the_page_is_refused(server, headers, status):
    origin = server.url.rstrip("/")
    sent = {k: (origin if v == "SELF" else v) for k, v in headers.items()}
    sent.setdefault("Content-Type", "application/json")
    task_id = cards(server)["a1"]["task_id"]
    body = f'{{"campaign": "c", "job_id": "a1", "task_id": "{task_id}", "verdict": "approved"}}'
    answer = httpx.post(server.url + "api/verdict", content=body, headers=sent)
    assert answer.status_code == status
    assert cards(server)["a1"]["verdict"] is None


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"campaign": "c", "job_id": "nope", "task_id": "t", "verdict": "approved"}, 404),
        ({"campaign": "c", "job_id": "a1", "task_id": "old-task", "verdict": "approved"}, 409),
        (
            {
                "campaign": "c",
                "job_id": "later",
                "task_id": "task-c-later-0",
                "verdict": "approved",
            },
            409,
        ),  # noqa: E501
        ({"campaign": "c", "job_id": "a1", "task_id": "task-c-a1-0", "verdict": "good"}, 400),
        ({"campaign": "c", "job_id": "a1", "task_id": "task-c-a1-0", "verdict": 1}, 400),
        ({"campaign": "c", "job_id": "a1", "verdict": "approved"}, 400),
        ({"campaign": "c", "job_id": "a1", "task_id": "task-c-a1-0", "note": ["x"]}, 400),
        (["not", "an", "object"], 400),
    ],
)
def test_a_verdict_on_a_result_that_is_not_there_or_a_bad_body_is_refused(server, body, status):
    with page(server) as client:
        answer = client.post("/api/verdict", json=body)
    assert answer.status_code == status
    assert "error" in answer.json()


def test_a_body_too_large_or_not_json_is_refused(server):
    with page(server) as client:
        big = client.post(
            "/api/verdict",
            content=b"{" + b" " * 70_000 + b"}",
            headers={"Content-Type": "application/json"},
        )
        garbage = client.post(
            "/api/verdict", content=b"{nope", headers={"Content-Type": "application/json"}
        )
    assert (big.status_code, garbage.status_code) == (413, 400)
    # The connection the server closes after a body it did not read is said to close, so
    # the client never sends the next request down it (it did, now and then: a
    # "Server disconnected" instead of the 400).
    assert big.headers.get("Connection") == "close"


def test_only_this_servers_own_name_gets_answers(server):
    assert httpx.get(server.url, headers={"Host": "attacker.example"}).status_code == 421
    port = server.port
    assert httpx.get(f"http://localhost:{port}/api/results").status_code == 200


def test_the_server_listens_on_the_loopback_address_only(server):
    assert server.server_address[0] == "127.0.0.1"


# -- files ----------------------------------------------------------------------------------


def test_a_saved_file_is_served_whole_or_by_byte_ranges(server):
    whole = httpx.get(server.url + "files/c/a1/0")
    assert whole.status_code == 200 and whole.content == VIDEO
    assert whole.headers["content-type"] == "video/mp4"
    assert whole.headers["accept-ranges"] == "bytes"
    assert whole.headers["x-content-type-options"] == "nosniff"
    part = httpx.get(server.url + "files/c/a1/0", headers={"Range": "bytes=100-199"})
    assert part.status_code == 206 and part.content == VIDEO[100:200]
    assert part.headers["content-range"] == f"bytes 100-199/{len(VIDEO)}"
    tail = httpx.get(server.url + "files/c/a1/0", headers={"Range": "bytes=-10"})
    assert tail.status_code == 206 and tail.content == VIDEO[-10:]
    beyond = httpx.get(server.url + "files/c/a1/0", headers={"Range": "bytes=99999-"})
    assert beyond.status_code == 416
    assert beyond.headers["content-range"] == f"bytes */{len(VIDEO)}"
    head = httpx.head(server.url + "files/c/img/0")
    assert head.status_code == 200 and head.headers["content-type"] == "image/png"
    assert head.headers["content-length"] == str(len(VIDEO)) and head.content == b""


@pytest.mark.parametrize(
    "path",
    [
        "files/c/gone/0",  # recorded, deleted since
        "files/c/remote/0",  # never saved
        "files/c/a1/1",  # no such file
        "files/c/a1/0/x",
        "files/c/a1/-1",
        "files/other/a1/0",
        "files/c/..%2F..%2Fl.db/0",
        "files/..%2F..%2F..%2Fetc/passwd/0",
        "files/%2Fetc/passwd/0",
        "files/c%00/a1/0",
        "files/../l.db",
        "files/c/a1.mp4",
    ],
)
def test_nothing_but_a_recorded_saved_file_is_served(server, path):
    answer = httpx.get(server.url + path)
    assert answer.status_code == 404
    assert answer.content != VIDEO


def test_a_recorded_path_outside_the_folder_or_of_another_size_is_not_served(server, folder):
    secret = folder / "secret.mp4"
    secret.write_bytes(VIDEO)
    (folder / "out" / "c" / "img.png").write_bytes(VIDEO[:10])  # changed since it was saved
    (folder / "out" / "c" / "a2.mp4").unlink()
    (folder / "out" / "c" / "a2.mp4").symlink_to(secret)  # a link out of the folder
    db = sqlite3.connect(folder / "l.db")
    db.execute("UPDATE files SET path = ? WHERE job_id = 'a1'", (str(secret),))
    db.commit()
    db.close()
    for job_id in ("a1", "a2", "img"):
        assert httpx.get(f"{server.url}files/c/{job_id}/0").status_code == 404, job_id
        assert cards(server)[job_id]["media"][0]["local"] is False


def test_a_path_recorded_from_another_working_directory_is_found_in_the_folder(folder):
    assert (
        locate(folder / "out", "elsewhere/out/c/a1.mp4", len(VIDEO))
        == (folder / "out" / "c" / "a1.mp4").resolve()
    )
    assert locate(folder / "out", "elsewhere/out/c/a1.mp4", 1) is None


@pytest.mark.parametrize(
    ("header", "wanted"),
    [
        (None, None),
        ("bytes=0-99", (0, 99)),
        ("bytes=10-", (10, 999)),
        ("bytes=-100", (900, 999)),
        ("bytes=-5000", (0, 999)),
        ("bytes=990-5000", (990, 999)),
        ("bytes=1000-", "unsatisfiable"),
        ("bytes=5-4", "unsatisfiable"),
        ("bytes=-0", "unsatisfiable"),
        ("bytes=0-1,5-6", None),  # several ranges: the whole file
        ("items=0-1", None),
        ("bytes=-", None),
    ],
)
def test_byte_ranges(header, wanted):
    assert byte_range(header, 1000) == wanted


# -- the command ------------------------------------------------------------------------------


def test_the_review_command_prints_its_address_serves_and_stops_on_sigterm(folder):
    env = command_env(folder / "l.db", None, None)
    process = subprocess.Popen(
        [sys.executable, "-m", "batchgen", "review", "--port", "0", "--out", "out"],
        cwd=folder,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        url = line.removeprefix("review page: ").strip()
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+/", url), line
        assert httpx.get(url + "files/c/a1/0").content == VIDEO
    finally:
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    assert "Traceback" not in err


def test_the_review_command_refuses_an_unknown_campaign_or_a_missing_ledger(folder):
    env = command_env(folder / "l.db", None, None)
    for args, expected in [
        (["review", "--campaign", "nope"], "no campaign named nope"),
        (["--ledger", str(folder / "none.db"), "review"], "no ledger here"),
    ]:
        result = subprocess.run(
            [sys.executable, "-m", "batchgen", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
        )
        assert result.returncode == 1 and expected in result.stderr, result.stderr
        assert "Traceback" not in result.stderr
    assert not (folder / "none.db").exists()


def test_a_port_in_use_is_one_clear_line(folder, server):
    env = command_env(folder / "l.db", None, None)
    result = subprocess.run(
        [sys.executable, "-m", "batchgen", "review", "--port", str(server.port)],
        env={**env, "PYTHONUNBUFFERED": "1"},
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        cwd=os.fspath(folder),
    )
    assert result.returncode == 1 and "cannot listen on 127.0.0.1" in result.stderr
    assert "Traceback" not in result.stderr
