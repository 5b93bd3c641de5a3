"""The review server (PRODUCT §12): its JSON, verdicts and who gave them, the protection
of its one write against other web pages, which files it serves (only the ledger's, only
inside the files folder, with byte ranges), the shared address behind its access token,
and malformed requests answered with a 4xx while it goes on serving.

Most tests talk to the application in process, through Starlette's test client, as if
over 127.0.0.1:LOCAL (or the shared address); the command's own tests run the real
`batchgen review` process over real HTTP."""

from __future__ import annotations

import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.testclient import TestClient

from batchgen.job import Campaign, Job
from batchgen.ledger import Ledger
from batchgen.ledger.review import ReviewFilters
from batchgen.provenance.xmp import TRAINED
from batchgen.review import open_review, parse_bind
from batchgen.review.files import locate
from batchgen.review.server import Guard, Review, build_app
from tests.builders import CDN, complete, grok, image, make_ledger, start
from tests.e2e import command_env, generated

VIDEO = b"\x00\x00\x00\x18ftypisom" + bytes(range(256)) * 8  # 2,060 bytes
LOCAL = 8766  # the port the in-process client pretends to reach
SHARED = 8767
TOKEN = "the-access-token"
ME = "Ada"


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


@contextmanager
def in_process(path: Path, out: str | Path, address: str = f"127.0.0.1:{LOCAL}"):
    """The review application over the ledger at `path`, reached through the test client
    at `address` (LOCAL: the loopback listener; SHARED: the shared one, token TOKEN)."""
    ledger = Ledger(path, create=False)
    guard = Guard(local_port=LOCAL, shared_port=SHARED, token=TOKEN, names={"studio-pc"})
    app = build_app(Review(ledger, [], out), guard)
    try:
        with TestClient(app, base_url=f"http://{address}") as client:
            yield client
    finally:
        ledger.close()


@pytest.fixture
def server(folder) -> Iterator[TestClient]:
    with in_process(folder / "l.db", "out") as client:
        yield client


def origin(client: TestClient) -> str:
    return str(client.base_url).rstrip("/")


def results(server: TestClient) -> dict:
    answer = server.get("/api/results")
    assert answer.status_code == 200
    return answer.json()


def cards(server: TestClient) -> dict[str, dict]:
    return {r["id"]: r for g in results(server)["groups"] for r in g["results"]}


def where(item: dict) -> dict:
    """Where a result's file is shown from (its media entry without its marks)."""
    return {k: item[k] for k in ("n", "type", "src", "local", "path")}


def verdict(
    server: TestClient,
    job_id: str,
    value: str | None,
    note: str | None = None,
    reviewer: str | None = ME,
):
    task_id = cards(server)[job_id]["task_id"]
    body = {"campaign": "c", "job_id": job_id, "task_id": task_id, "verdict": value, "note": note,
            "reviewer": reviewer}  # fmt: skip
    return server.post("/api/verdict", json=body, headers={"Origin": origin(server)})


# -- the page and its JSON --------------------------------------------------------------------


def test_the_page_loads_nothing_from_outside_and_says_so_in_its_policy(server):
    answer = server.get("/")
    assert answer.status_code == 200 and "text/html" in answer.headers["content-type"]
    policy = answer.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "default-src 'none'" in policy
    for name in ("index.html", "review.css", "review.js"):
        text = resources.files("batchgen.review").joinpath("static", name).read_text()
        assert not re.search(r"(src|href)=\"?(https?:)?//", text), name
        assert "@import" not in text and "url(" not in text, name
    for asset in ("review.css", "review.js"):
        answer = server.get("/static/" + asset)
        assert answer.status_code == 200 and answer.headers["cache-control"] == "no-cache"


def test_results_are_grouped_by_prompt_with_local_files_and_remote_ones_marked(server):
    data = results(server)
    groups = {g["prompt"]: [r["id"] for r in g["results"]] for g in data["groups"]}
    assert groups["a cat"] == ["a1", "a2"]  # two takes of one prompt, side by side
    assert len(data["groups"]) == 5
    by_id = cards(server)
    assert [where(m) for m in by_id["a1"]["media"]] == [
        {"n": 0, "type": "video", "src": "/files/c/a1/0", "local": True, "path": "out/c/a1.mp4"}
    ]
    assert by_id["img"]["media"][0]["type"] == "image"
    for job_id in ("gone", "remote"):  # not on disk: the service's URL, marked as such
        assert [where(m) for m in by_id[job_id]["media"]] == [
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
    same = server.get("/api/results", params={"since": version}).json()
    assert same == {"version": version, "unchanged": True}

    ledger = Ledger(folder / "l.db", create=False)  # a run, still filling the ledger
    job = next(j for j in ledger.unfinished_jobs(["c"]) if j.id == "later")
    ledger.task_completed(job, [f"{CDN}/later.mp4"])
    ledger.close()
    changed = server.get("/api/results", params={"since": version}).json()
    assert changed["version"] != version
    assert {r["id"]: r["status"] for g in changed["groups"] for r in g["results"]}["later"] == (
        "completed"
    )


def test_a_verdict_given_here_changes_the_version_so_the_page_shows_it(server):
    version = results(server)["version"]
    assert verdict(server, "a2", "approved").status_code == 200
    after = server.get("/api/results", params={"since": version}).json()
    assert after["version"] != version and after["counts"]["approved"] == 1


# -- provenance: the marks each file carried when it was saved (PRODUCT §13) ------------------


def test_a_provider_signed_result_carries_its_c2pa_manifest_to_the_page(make_sandbox, tmp_path):
    ledger, _ = generated(make_sandbox, tmp_path, provenance=True)
    with in_process(ledger, tmp_path / "out") as client:
        by_id = cards(client)
    for job_id in ("poster", "clip"):  # a PNG and an MP4
        [item] = by_id[job_id]["media"]
        assert item["local"] is True
        manifest = item["provenance"]["c2pa"]["manifests"][0]
        assert (item["provenance"]["c2pa"]["state"], manifest["issuer"]) == (
            "valid",
            "Okaypic Sandbox",
        )  # the sandbox's own CA is no trust anchor here
        marks = item["marks"]
        assert (marks["state"], marks["badge"]) == ("valid", "C2PA ✓ Okaypic Sandbox")
        details = "\n".join(marks["details"])
        assert "the issuer is not among the trust anchors" in details
        for fact in (
            "issuer Okaypic Sandbox",
            f"claim generator {manifest['claim_generator']}",
            "digital source type trainedAlgorithmicMedia",
            "validation valid",
        ):
            assert fact in details, details


def test_a_result_whose_file_has_no_marks_says_so(make_sandbox, tmp_path):
    ledger, _ = generated(make_sandbox, tmp_path, provenance=False)
    with in_process(ledger, tmp_path / "out") as client:
        by_id = cards(client)
    for job_id in ("poster", "clip"):
        [item] = by_id[job_id]["media"]
        assert (item["provenance"]["c2pa"], item["provenance"]["marked"]) == (None, False)
        assert (item["marks"]["state"], item["marks"]["badge"]) == ("none", "no marks")


MARKS = {
    "forged": {
        "c2pa": {"state": "invalid", "manifests": [], "failures": [], "untrusted": False,
                 "error": "the manifest could not be read: Signature"},
        "xmp": None, "labels": [], "marked": True, "error": None,
    },
    "xmp": {
        "c2pa": None, "xmp": {"digital_source_type": TRAINED, "creator_tool": "<b>Tool</b>",
                              "description": None},
        "labels": [], "marked": True, "error": None,
    },
    "label": {"c2pa": None, "xmp": None, "labels": [{"label": "TC260 AIGC"}], "marked": True,
              "error": None},
}  # fmt: skip


@pytest.mark.parametrize(
    "kind, state, badge, detail",
    [
        ("forged", "invalid", "C2PA invalid", "C2PA: invalid: the manifest could not be read"),
        ("xmp", "valid", "XMP: trainedAlgorithmicMedia", "XMP CreatorTool: <b>Tool</b>"),
        ("label", "valid", "TC260 AIGC", "AI label: TC260 AIGC"),
    ],
)
def test_the_badge_says_what_the_recorded_marks_say(folder, kind, state, badge, detail):
    ledger = Ledger(folder / "l.db")
    ledger.file_saved(
        "c", "img", 0, f"{CDN}/img.png", "out/c/img.png", len(VIDEO), "0", MARKS[kind]
    )
    ledger.close()
    with in_process(folder / "l.db", "out") as client:
        [item] = cards(client)["img"]["media"]
    assert item["provenance"] == MARKS[kind]
    assert (item["marks"]["state"], item["marks"]["badge"]) == (state, badge)
    assert any(line.startswith(detail) for line in item["marks"]["details"]), item["marks"]


@pytest.mark.parametrize(
    "marks, expected",
    [("invalid", {"img"}), ("valid", {"a1"}), ("none", {"a2"}), ("unread", {"gone"})],
)
def test_the_server_filters_by_the_marks_of_a_results_files(folder, marks, expected):
    ledger = Ledger(folder / "l.db")
    unmarked = {"c2pa": None, "xmp": None, "labels": [], "marked": False, "error": None}
    for job_id, record in (("img", MARKS["forged"]), ("a1", MARKS["xmp"]), ("a2", unmarked)):
        ext = "png" if job_id == "img" else "mp4"
        url, path = f"{CDN}/{job_id}.{ext}", f"out/c/{job_id}.{ext}"
        ledger.file_saved("c", job_id, 0, url, path, len(VIDEO), "0", record)
    ledger.close()
    with in_process(folder / "l.db", "out") as client:
        assert ids(ask(client, marks=marks)) == expected


def test_a_file_saved_before_marks_were_read_or_never_saved_is_said_so(server):
    by_id = cards(server)
    assert by_id["a1"]["media"][0]["marks"]["badge"] == "marks not read"
    assert by_id["remote"]["media"][0]["marks"] is None  # never saved: nothing was read


def test_the_marks_come_in_the_pages_own_query_not_one_query_a_result(folder):
    ledger = Ledger(folder / "l.db", create=False)
    review = Review(ledger, [], "out")
    statements: list[str] = []
    ledger.conn.set_trace_callback(statements.append)
    try:
        review.results(None, ReviewFilters(), 1)  # what is read once (the columns kept)
        asked = {}
        for limit in (1, 6):
            statements.clear()
            data = review.results(None, ReviewFilters(), limit)
            asked[limit] = len(statements)
    finally:
        ledger.close()
    saved = [m for g in data["groups"] for r in g["results"] for m in r["media"] if m["local"]]
    assert len(saved) == 3 and all(m["marks"] for m in saved)
    assert 0 < asked[1] == asked[6]


# -- a ledger too large for one answer: pages, newest campaign first, filters on the server --


@pytest.fixture
def many(tmp_path) -> Iterator[TestClient]:
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
        ledger.record_verdict(campaign, job_id, task, value, None, reviewer=f"{value} person")
    ledger.close()
    with in_process(path, tmp_path / "out") as client:
        yield client


def ask(server: TestClient, **params: Any) -> dict:
    answer = server.get("/api/results", params=params)
    assert answer.status_code == 200, answer.text
    return answer.json()


def ids(data: dict) -> set[str]:
    return {r["id"] for g in data["groups"] for r in g["results"]}


def test_results_come_a_page_at_a_time_the_newest_campaign_first(many):
    first = ask(many, limit=4)
    assert ids(first) == {"new-0", "new-1", "new-2", "new-3"}
    assert (first["shown"], first["more"], first["total_jobs"]) == (4, True, 12)
    assert first["campaigns"] == ["a-old", "z-new"]
    assert first["reviewers"] == ["approved person", "rejected person"]
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
        ({"reviewer": "approved person"}, {"old-0"}),
        ({"reviewer": "nobody"}, set()),
        ({"status": "queued", "limit": 3}, {"new-2", "new-3", "new-4"}),
    ],
)
def test_the_server_filters_before_it_pages(many, filters, expected):
    data = ask(many, **filters)
    assert ids(data) == expected
    assert data["more"] is (filters == {"status": "queued", "limit": 3})


@pytest.mark.parametrize("limit", ["0", "2001", "ten", "-1"])
def test_a_limit_out_of_range_is_refused(many, limit):
    answer = many.get("/api/results", params={"limit": limit})
    assert answer.status_code == 400 and "limit" in answer.json()["error"]


# -- verdicts -------------------------------------------------------------------------------


def test_a_verdict_from_the_page_is_stored_with_who_gave_it_and_shown(server, folder):
    answer = verdict(server, "a1", "rejected", "wrong colour")
    assert answer.status_code == 200
    assert answer.json()["verdict"] == "rejected" and answer.json()["note"] == "wrong colour"
    assert answer.json()["reviewer"] == ME
    assert verdict(server, "a2", "approved", reviewer="  Grace ").status_code == 200
    by_id = cards(server)
    assert (by_id["a1"]["verdict"], by_id["a1"]["note"]) == ("rejected", "wrong colour")
    assert (by_id["a1"]["reviewer"], by_id["a2"]["reviewer"]) == (ME, "Grace")
    assert by_id["a2"]["verdict"] == "approved"
    assert results(server)["counts"] == {"approved": 1, "rejected": 1, "unreviewed": 3}
    assert results(server)["reviewers"] == [ME, "Grace"]


def test_a_results_history_of_verdicts_and_reviewers_is_shown_newest_first(server):
    verdict(server, "a1", "approved", reviewer="Grace")
    verdict(server, "a1", "rejected", "too dark", reviewer=ME)
    history = cards(server)["a1"]["history"]
    assert [(h["verdict"], h["note"], h["reviewer"]) for h in history] == [
        ("rejected", "too dark", ME),
        ("approved", None, "Grace"),
    ]
    assert all(h["at"] for h in history) and cards(server)["a2"]["history"] == []


@pytest.mark.parametrize("reviewer", [None, "", "   ", "(unreviewed)", "x" * 61, "a\tb", 7])
def test_a_verdict_without_a_proper_reviewer_name_is_refused(server, reviewer):
    task_id = cards(server)["a1"]["task_id"]
    body = {"campaign": "c", "job_id": "a1", "task_id": task_id, "verdict": "approved",
            "reviewer": reviewer}  # fmt: skip
    answer = server.post("/api/verdict", json=body, headers={"Origin": origin(server)})
    assert answer.status_code == 400 and "reviewer" in answer.json()["error"]
    assert cards(server)["a1"]["verdict"] is None


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
    server.get("/files/c/a1/0")
    assert everything_else() == before


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 403),  # no Origin: not the page
        ({"Origin": "https://evil.example"}, 403),
        ({"Origin": "null"}, 403),
        ({"Origin": f"http://localhost:{LOCAL}"}, 403),  # another origin than the Host's
        ({"Origin": "SELF", "Sec-Fetch-Site": "cross-site"}, 403),
        ({"Origin": "SELF", "Content-Type": "text/plain"}, 415),  # what a <form> can send
        ({"Origin": "SELF", "Content-Type": "application/x-www-form-urlencoded"}, 415),
        ({"Origin": "SELF", "Host": "evil.example:80"}, 421),  # DNS rebinding
        ({"Origin": "http://evil.example", "Host": f"evil.example:{LOCAL}"}, 421),
    ],
)
def test_a_verdict_from_anywhere_but_the_page_is_refused(server, headers, status):
    sent = {k: (origin(server) if v == "SELF" else v) for k, v in headers.items()}
    sent.setdefault("Content-Type", "application/json")
    task_id = cards(server)["a1"]["task_id"]
    body = (
        f'{{"campaign": "c", "job_id": "a1", "task_id": "{task_id}", "verdict": "approved",'
        f' "reviewer": "{ME}"}}'
    )
    answer = server.post("/api/verdict", content=body, headers=sent)
    assert answer.status_code == status
    assert cards(server)["a1"]["verdict"] is None


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"campaign": "c", "job_id": "nope", "task_id": "t", "verdict": "approved"}, 404),
        ({"campaign": "c", "job_id": "a1", "task_id": "old-task", "verdict": "approved"}, 409),
        ({"campaign": "c", "job_id": "later", "task_id": "task-c-later-0",
          "verdict": "approved"}, 409),
        ({"campaign": "c", "job_id": "a1", "task_id": "task-c-a1-0", "verdict": "good"}, 400),
        ({"campaign": "c", "job_id": "a1", "task_id": "task-c-a1-0", "verdict": 1}, 400),
        ({"campaign": "c", "job_id": "a1", "verdict": "approved"}, 400),
        ({"campaign": "c", "job_id": "a1", "task_id": "task-c-a1-0", "note": ["x"]}, 400),
        (["not", "an", "object"], 400),
    ],
)  # fmt: skip
def test_a_verdict_on_a_result_that_is_not_there_or_a_bad_body_is_refused(server, body, status):
    if isinstance(body, dict):
        body["reviewer"] = ME
    answer = server.post("/api/verdict", json=body, headers={"Origin": origin(server)})
    assert answer.status_code == status
    assert "error" in answer.json()


def test_a_body_too_large_or_not_json_is_refused(server):
    headers = {"Content-Type": "application/json", "Origin": origin(server)}
    big = server.post("/api/verdict", content=b"{" + b" " * 70_000 + b"}", headers=headers)
    garbage = server.post("/api/verdict", content=b"{nope", headers=headers)
    assert (big.status_code, garbage.status_code) == (413, 400)


def test_only_this_servers_own_name_gets_answers(server):
    assert server.get("/", headers={"Host": "attacker.example"}).status_code == 421
    assert server.get("/", headers={"Host": f"attacker.example:{LOCAL}"}).status_code == 421
    assert server.get("/", headers={"Host": "127.0.0.1:1"}).status_code == 421
    assert server.get("/api/results", headers={"Host": f"localhost:{LOCAL}"}).status_code == 200


# -- malformed requests: a 4xx, and the server goes on --------------------------------------

SURROGATE = "\\ud800"  # a lone surrogate, as JSON spells it


def malformed(task_id: str) -> list[tuple[str, str, bytes | None]]:
    """(method, path, JSON body) of requests that crashed the hand-built server."""

    def body(campaign: str = "c", note: str = "fine") -> bytes:
        return (
            f'{{"campaign": "{campaign}", "job_id": "a1", "task_id": "{task_id}",'
            f' "verdict": "approved", "note": "{note}", "reviewer": "{ME}"}}'
        ).encode()

    return [
        ("GET", "/files/c/a1/%C2%B2", None),  # ² is a digit to str.isdigit, not to int()
        ("GET", "/api/results?limit=%C2%B2", None),
        ("GET", "/files/c/a1/99999999999999999999", None),  # beyond SQLite's integers
        ("GET", "/files/c/a1/" + "9" * 5000, None),  # beyond int()'s digits
        ("GET", "/api/results?limit=" + "9" * 5000, None),
        ("POST", "/api/verdict", body(campaign=SURROGATE)),  # not storable as UTF-8
        ("POST", "/api/verdict", body(note=SURROGATE)),
        ("POST", "/api/verdict", body(note="x\\udfff" + SURROGATE)),  # a pair the wrong way round
        ("POST", "/api/verdict", b'{"campaign": "c", "job_id": "a1", "reviewer": "\\ud83d"}'),
        ("POST", "/api/verdict", b"\xff\xfe"),  # not UTF-8 at all
    ]


def test_each_malformed_request_gets_a_4xx_and_the_server_goes_on_serving(server):
    task_id = cards(server)["a1"]["task_id"]
    headers = {"Origin": origin(server), "Content-Type": "application/json"}
    for method, path, body in malformed(task_id):
        answer = server.request(method, path, content=body, headers=headers)
        assert 400 <= answer.status_code < 500, (path, body, answer.status_code)
        assert "error" in answer.json()
        assert server.get("/api/results").status_code == 200
    assert cards(server)["a1"]["verdict"] is None


# -- the shared address: the token or nothing -------------------------------------------------


@pytest.fixture
def shared(folder) -> Iterator[TestClient]:
    """The application as a teammate reaches it on the shared listener (192.168.1.20)."""
    with in_process(folder / "l.db", "out", f"192.168.1.20:{SHARED}") as client:
        yield client


def nothing_but_a_refusal(answer: httpx.Response) -> None:
    assert answer.status_code == 401, answer.status_code
    assert set(answer.json()) == {"error"} and "token" in answer.json()["error"]
    assert VIDEO not in answer.content and b"a cat" not in answer.content


REQUESTS = ["/", "/api/results", "/files/c/a1/0", "/static/review.js", "/nope"]


@pytest.mark.parametrize("token", [None, "", "wrong", TOKEN[:-1], TOKEN + "x"])
def test_on_the_shared_address_a_request_without_the_token_gets_only_a_refusal(shared, token):
    params = {"token": token} if token is not None else {}
    for path in REQUESTS:
        nothing_but_a_refusal(shared.get(path, params=params))
    task_id = "task-c-a1-0"
    body = {"campaign": "c", "job_id": "a1", "task_id": task_id, "verdict": "approved",
            "reviewer": ME}  # fmt: skip
    nothing_but_a_refusal(shared.post("/api/verdict", json=body, params=params,
                                      headers={"Origin": origin(shared)}))  # fmt: skip
    shared.cookies.set("batchgen_review_token", token or "nope")
    nothing_but_a_refusal(shared.get("/api/results"))


def test_a_loopback_connection_to_the_shared_address_is_no_exception(folder):
    with in_process(folder / "l.db", "out", f"127.0.0.1:{SHARED}") as client:
        for path in REQUESTS:
            nothing_but_a_refusal(client.get(path))


def test_the_shared_link_sets_a_cookie_then_the_teammate_reviews(shared):
    first = shared.get("/", params={"token": TOKEN})
    assert first.status_code == 200 and "text/html" in first.headers["content-type"]
    cookie = first.headers["set-cookie"]
    assert f"batchgen_review_token={TOKEN}" in cookie
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert shared.get("/api/results").status_code == 200  # the cookie, no token
    assert shared.get("/files/c/a1/0").content == VIDEO
    answer = verdict(shared, "a1", "approved", reviewer="Grace")
    assert answer.status_code == 200 and answer.json()["reviewer"] == "Grace"


def test_the_shared_address_answers_to_an_address_or_this_machines_name_only(shared):
    shared.get("/", params={"token": TOKEN})
    for host, status in [
        (f"192.168.1.20:{SHARED}", 200),
        (f"10.0.0.7:{SHARED}", 200),  # an address: nothing to rebind
        (f"[fe80::1]:{SHARED}", 200),
        (f"studio-pc:{SHARED}", 200),  # this machine's name
        (f"attacker.example:{SHARED}", 421),  # a name that resolves here: DNS rebinding
        (f"192.168.1.20:{LOCAL}", 421),
    ]:
        assert shared.get("/api/results", headers={"Host": host}).status_code == status, host


def test_the_local_page_needs_no_token(server):
    assert server.get("/api/results").status_code == 200
    assert "set-cookie" not in server.get("/", params={"token": "anything"}).headers


@pytest.mark.parametrize(
    ("text", "port", "expected"),
    [
        ("0.0.0.0", 8766, ("0.0.0.0", 8767)),
        ("192.168.1.20", 0, ("192.168.1.20", 0)),
        ("192.168.1.20:9000", 8766, ("192.168.1.20", 9000)),
        ("::", 8766, ("::", 8767)),
        ("[::1]:9000", 8766, ("::1", 9000)),
        ("studio-pc:0", 8766, ("studio-pc", 0)),
    ],
)
def test_bind_takes_an_address_and_an_optional_port(text, port, expected):
    assert parse_bind(text, port) == expected


# -- files ----------------------------------------------------------------------------------


def test_a_saved_file_is_served_whole_or_by_byte_ranges(server):
    whole = server.get("/files/c/a1/0")
    assert whole.status_code == 200 and whole.content == VIDEO
    assert whole.headers["content-type"] == "video/mp4"
    assert whole.headers["accept-ranges"] == "bytes"
    assert whole.headers["x-content-type-options"] == "nosniff"
    for header, (first, last) in [
        ("bytes=100-199", (100, 199)),
        ("bytes=10-", (10, len(VIDEO) - 1)),
        ("bytes=-10", (len(VIDEO) - 10, len(VIDEO) - 1)),
        ("bytes=-5000", (0, len(VIDEO) - 1)),
        ("bytes=2050-5000", (2050, len(VIDEO) - 1)),
    ]:
        part = server.get("/files/c/a1/0", headers={"Range": header})
        assert part.status_code == 206 and part.content == VIDEO[first : last + 1], header
        assert part.headers["content-range"] == f"bytes {first}-{last}/{len(VIDEO)}"
    beyond = server.get("/files/c/a1/0", headers={"Range": "bytes=99999-"})
    assert beyond.status_code == 416
    assert beyond.headers["content-range"] == f"bytes */{len(VIDEO)}"
    head = server.head("/files/c/img/0")
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
        "static/../../ledger/review.py",
        "static/%2e%2e/__init__.py",
    ],
)
def test_nothing_but_a_recorded_saved_file_is_served(server, path):
    answer = server.get("/" + path)
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
        assert server.get(f"/files/c/{job_id}/0").status_code == 404, job_id
        assert cards(server)[job_id]["media"][0]["local"] is False


def test_a_path_recorded_from_another_working_directory_is_found_in_the_folder(folder):
    assert (
        locate(folder / "out", "elsewhere/out/c/a1.mp4", len(VIDEO))
        == (folder / "out" / "c" / "a1.mp4").resolve()
    )
    assert locate(folder / "out", "elsewhere/out/c/a1.mp4", 1) is None


# -- the command, over real HTTP ----------------------------------------------------------------


@contextmanager
def review_command(folder: Path, *args: str) -> Iterator[list[str]]:
    """`batchgen review --port 0 ARGS` in `folder`: the lines it printed on stdout (its
    address, and with --share the shared link), while it serves; stopped with SIGTERM."""
    env = command_env(folder / "l.db", None, None)
    process = subprocess.Popen(
        [sys.executable, "-m", "batchgen", "review", "--port", "0", "--out", "out", *args],
        cwd=folder,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        lines = [process.stdout.readline()]
        if "--share" in args:
            lines.append(process.stdout.readline())
        yield lines
    finally:
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    assert "Traceback" not in err


def test_the_review_command_prints_its_address_serves_and_stops_on_sigterm(folder):
    with review_command(folder) as [line]:
        url = line.removeprefix("review page: ").strip()
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+/", url), line
        assert httpx.get(url + "files/c/a1/0").content == VIDEO


def raw(url: str, request: bytes) -> bytes:
    """Send `request` as it is on a fresh connection; what came back (maybe nothing)."""
    split = httpx.URL(url)
    with socket.create_connection((split.host, split.port), timeout=30) as conn:
        conn.sendall(request)
        chunks = []
        while chunk := conn.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_the_real_server_answers_malformed_requests_with_a_4xx_and_goes_on(folder):
    with review_command(folder, "--share", "--bind", "127.0.0.1:0") as [line, link]:
        url = line.removeprefix("review page: ").strip()
        host = httpx.URL(url).netloc.decode()
        with httpx.Client(base_url=url, headers={"Origin": url.rstrip("/")}) as client:
            task_id = client.get("/api/results").json()["groups"][0]["results"][0]["task_id"]
            for method, path, body in malformed(task_id):
                answer = client.request(
                    method, path, content=body, headers={"Content-Type": "application/json"}
                )
                assert 400 <= answer.status_code < 500, (path, body, answer.status_code)
                assert client.get("/api/results").status_code == 200
        for request in [
            b"GET /\xff\xfe HTTP/1.1\r\nHost: " + host.encode() + b"\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: \xff\r\n\r\n",
            b"NONSENSE\r\n\r\n",
            b"POST /api/verdict HTTP/1.1\r\nHost: " + host.encode()
            + b"\r\nContent-Length: -5\r\n\r\n",
        ]:  # fmt: skip
            answer = raw(url, request)
            assert answer == b"" or re.match(rb"HTTP/1\.1 4\d\d ", answer), answer[:80]
            assert httpx.get(url + "api/results").status_code == 200

        # The shared address: only a refusal without the token, even from this machine.
        shared = re.fullmatch(r"shared review page: (http://127\.0\.0\.1:\d+/)\?token=(\S+)\n",
                              link)  # fmt: skip
        assert shared, link
        base, token = shared.groups()
        for path in ("", "api/results", "files/c/a1/0"):
            nothing_but_a_refusal(httpx.get(base + path))
        with httpx.Client(base_url=base) as teammate:
            assert teammate.get("/", params={"token": token}).status_code == 200
            assert teammate.get("/files/c/a1/0").content == VIDEO  # by the cookie


def test_the_review_command_refuses_an_unknown_campaign_or_a_missing_ledger(folder):
    env = command_env(folder / "l.db", None, None)
    for args, expected in [
        (["review", "--campaign", "nope"], "no campaign named nope"),
        (["--ledger", str(folder / "none.db"), "review"], "no ledger here"),
        (["review", "--share", "--bind", "127.0.0.1:99999"], "--bind 127.0.0.1:99999"),
        (["review", "--share", "--bind", "203.0.113.9:0"], "cannot listen on 203.0.113.9:0"),
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


def test_bind_without_share_is_a_usage_error(folder):
    result = subprocess.run(
        [sys.executable, "-m", "batchgen", "review", "--bind", "0.0.0.0"],
        env=command_env(folder / "l.db", None, None),
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 2 and "--bind goes with --share" in result.stderr


def test_the_server_listens_on_the_loopback_address_and_the_shared_one_only(folder):
    server = open_review(folder / "l.db", [], "out", 0, share=("127.0.0.2", 0))
    try:
        assert [s.getsockname()[0] for s in server.sockets] == ["127.0.0.1", "127.0.0.2"]
        # TCP said outright: asyncio turns Nagle's algorithm off only then (else ~40 ms
        # on every answer, waiting for the browser's delayed ACK; bench/review.py)
        assert {s.proto for s in server.sockets} == {socket.IPPROTO_TCP}
        assert server.share_url and server.share_url.startswith("http://127.0.0.2:")
    finally:
        server.stop()


def test_a_port_in_use_is_one_clear_line(folder):
    server = open_review(folder / "l.db", [], "out", 0)
    try:
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
    finally:
        server.stop()
    assert result.returncode == 1 and "cannot listen on 127.0.0.1" in result.stderr
    assert "Traceback" not in result.stderr
