"""The morning review and `retry` on a PostgreSQL ledger (PRODUCT §5, §12): the review
server answers the same JSON as on SQLite (results, filters, verdicts, notes, history,
counts), reviewers on several machines give verdicts at once, each page notices what
the others and the runners committed, and `retry` (failed, `--unknown`, `--rejected`,
`--job`) puts the same jobs back in the queue with the same words.

Each page is the real review server over real HTTP (`batchgen.review.open_review`, as
`batchgen review` serves it, or the command itself); each ledger a real PostgreSQL
database, filled by the ledger's own write methods (tests/builders.py) or by a real
`batchgen run --sandbox`, and beside it, for comparison, the same on SQLite."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest

from batchgen.job import Job
from batchgen.ledger import Ledger
from batchgen.review import ReviewServer, open_review
from tests.builders import CDN, ODD, complete, fail, grok, image, make_ledger, start, unknown
from tests.e2e import FAST, command_env, write_manifest

VIDEO = b"\x00\x00\x00\x18ftypisom" + bytes(range(256)) * 8
A, B = "Ada", "Bob"  # two reviewers, each on a machine of their own


@pytest.fixture(autouse=True)
def state_home(tmp_path, monkeypatch) -> None:
    """A PostgreSQL ledger's companion files (the sandbox's state, a recovery file) in
    tmp_path/state, not the user's state directory, for this process and the commands."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))


# -- the same morning on both ledgers ----------------------------------------------------------

# The marks read on save (batchgen.provenance.marks), one of each state the page shows.
SIGNED = {
    "c2pa": {"state": "valid", "manifests": [{"issuer": "Okaypic", "active": True}]},
    "xmp": {"digital_source_type": "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"},
    "labels": [],
    "marked": True,
    "error": None,
}  # fmt: skip
BROKEN = {"c2pa": {"state": "invalid", "manifests": []}, "labels": [], "marked": True,
          "error": None}  # fmt: skip
PLAIN = {"c2pa": None, "xmp": {}, "labels": [], "marked": False, "error": None}


def a_night(location: str | Path, out: Path) -> None:
    """What a night leaves in the ledger at `location`, its files in `out`: campaign c (two
    takes of one odd prompt, saved, one signed, one with broken marks; an image saved
    before marks were read; a video with no marks; one never saved; one running, one
    failed, one held), then campaign d (a completed job, not saved)."""
    takes = [
        Job("c", take, "grok-video-3", f"A Cat {ODD}", duration=5, tags=["cats", "night"])
        for take in ("a1", "a2")
    ]
    ledger = make_ledger(
        location,  # type: ignore[arg-type]
        [*takes, image("img", tags=["stills"]), grok("plain"), grok("remote"), grok("later"),
         grok("bad"), grok("lost")],
    )  # fmt: skip
    try:
        saved = {"a1": SIGNED, "a2": BROKEN, "img": None, "plain": PLAIN}
        for job_id in ("a1", "a2", "img", "plain", "remote"):
            ext = "png" if job_id == "img" else "mp4"
            url = f"{CDN}/{job_id}.{ext}"
            complete(ledger, job_id, urls=[url])
            if job_id in saved:
                path = out / "c" / f"{job_id}.{ext}"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(VIDEO)
                ledger.file_saved("c", job_id, 0, url, str(path), len(VIDEO), "0", saved[job_id])
        start(ledger, "later")
        fail(ledger, "bad")
        unknown(ledger, "lost")  # held: no usable answer came back
    finally:
        ledger.close()
    ledger = make_ledger(location, [grok("d1")], campaign="d")  # type: ignore[arg-type]
    try:
        complete(ledger, "d1", campaign="d")
    finally:
        ledger.close()


@contextmanager
def review_page(location: str | Path, out: Path) -> Iterator[ReviewServer]:
    """The review server over the ledger at `location`, serving on 127.0.0.1 (a port of
    its own), as `batchgen review` serves it."""
    server = open_review(location, [], out)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def results(server: ReviewServer, **params: Any) -> dict[str, Any]:
    answer = httpx.get(server.url + "api/results", params=params, timeout=30)
    assert answer.status_code == 200, answer.text
    return answer.json()


def cards(server: ReviewServer, **params: Any) -> dict[str, dict[str, Any]]:
    data = results(server, **params)
    return {f"{r['campaign']}/{r['id']}": r for g in data["groups"] for r in g["results"]}


def give(
    server: ReviewServer,
    key: str,
    verdict: str | None,
    reviewer: str,
    note: str | None = None,
    task_id: str | None = None,
) -> httpx.Response:
    """A reviewer's verdict (None: withdrawn) on the result `key` (campaign/id) shows."""
    campaign, job_id = key.split("/")
    if task_id is None:
        task_id = cards(server)[key]["task_id"]
    body = {"campaign": campaign, "job_id": job_id, "task_id": task_id, "verdict": verdict,
            "note": note, "reviewer": reviewer}  # fmt: skip
    return httpx.post(
        server.url + "api/verdict",
        json=body,
        headers={"Origin": server.url.rstrip("/")},
        timeout=30,
    )


# What differs between two ledgers filled the same way at other moments: the version, the
# ledger's name, and the times.
MOMENTS = ("version", "ledger", "finished_at", "verdict_at", "at")


def as_of_any_moment(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: "…" if k in MOMENTS else as_of_any_moment(v) for k, v in value.items()}
    if isinstance(value, list):
        return [as_of_any_moment(v) for v in value]
    return value


# The page's filters, each as the page asks for them (`q`: the search box).
FILTERS: list[dict[str, Any]] = [
    {},
    {"campaign": "c"},
    {"campaign": "d"},
    {"tag": "night"},
    {"tag": "stills"},
    {"reviewer": A},
    {"reviewer": B},
    {"verdict": "approved"},
    {"verdict": "rejected"},
    {"verdict": "unreviewed"},
    {"status": "failed"},
    {"model": "jimeng-5.0"},
    {"q": "a cat"},
    {"q": "IMG"},
    {"q": "é"},
    {"q": "É"},  # ASCII letters only are folded, on both: not é
    {"q": "😀 \u2028"},
    {"marks": "valid"},
    {"marks": "invalid"},
    {"marks": "none"},
    {"marks": "unread"},
    {"limit": 2},
    {"tag": "night", "verdict": "approved", "reviewer": A},
]


def review_a_night(server: ReviewServer) -> list[tuple[int, str]]:
    """The morning's verdicts through the page, from two reviewers: the answers' status
    and text (a refusal's words included)."""
    given = [
        give(server, "c/a1", "approved", A, note=ODD),
        give(server, "c/a2", "rejected", B, note="too dark"),
        give(server, "c/a2", "approved", A),  # Ada overrules Bob: both are in the history
        give(server, "c/img", "rejected", A),
        give(server, "c/img", None, A, note="on second thoughts"),  # withdrawn, noted
        give(server, "d/d1", "rejected", B),
        give(server, "c/plain", "approved", "   "),  # no name: refused
        give(server, "c/later", "approved", A, task_id="task-c-later-0"),  # not completed
        give(server, "c/nope", "approved", A, task_id="t"),  # no such job
        give(server, "c/a1", "approved", A, task_id="an-earlier-result"),  # stale
    ]
    return [(answer.status_code, json.dumps(as_of_any_moment(answer.json()))) for answer in given]


def test_the_review_page_answers_the_same_json_on_postgresql_as_on_sqlite(postgres_url, tmp_path):
    out = tmp_path / "out"
    a_night(tmp_path / "l.db", out)
    a_night(postgres_url, out)
    answers = {}
    for location in (tmp_path / "l.db", postgres_url):
        with review_page(location, out) as server:
            verdicts = review_a_night(server)
            answers[str(location)] = {
                "verdicts": verdicts,
                **{json.dumps(f): as_of_any_moment(results(server, **f)) for f in FILTERS},
            }
    on_sqlite, on_postgres = answers.values()
    assert on_postgres == on_sqlite
    everything = on_postgres[json.dumps({})]
    assert everything["counts"] == {"approved": 2, "rejected": 1, "unreviewed": 3}
    assert everything["reviewers"] == [A, B]
    # what the filters found (two answers may be equal and both empty)
    found = {
        key: [r["id"] for g in data["groups"] for r in g["results"]]
        for key, data in on_postgres.items()
        if key != "verdicts"
    }
    assert found[json.dumps({"reviewer": A})] == ["a1", "a2"]
    assert found[json.dumps({"reviewer": B})] == ["d1"]
    assert found[json.dumps({"tag": "night"})] == ["a1", "a2"]
    assert found[json.dumps({"q": "a cat"})] == ["a1", "a2"]
    assert found[json.dumps({"q": "é"})] == ["a1", "a2"]
    assert found[json.dumps({"q": "É"})] == []
    assert found[json.dumps({"marks": "valid"})] == ["a1"]
    assert found[json.dumps({"marks": "invalid"})] == ["a2"]
    assert found[json.dumps({"marks": "none"})] == ["plain"]
    assert found[json.dumps({"marks": "unread"})] == ["img"]
    assert found[json.dumps({"verdict": "unreviewed"})] == ["img", "plain", "remote"]
    assert [status for status, _ in on_postgres["verdicts"]] == [200] * 6 + [400, 409, 404, 409]


def test_a_ledger_copied_to_postgresql_shows_the_same_page_to_the_microsecond(
    postgres_url, tmp_path
):
    """`batchgen ledger copy` keeps every time: the page of the copy is the original's,
    times and all (its version and the ledger's name aside), under every filter."""
    out = tmp_path / "out"
    a_night(tmp_path / "l.db", out)
    with review_page(tmp_path / "l.db", out) as page:
        review_a_night(page)
    done = command(
        tmp_path / "l.db", tmp_path, "ledger", "copy", str(tmp_path / "l.db"), postgres_url
    )
    assert done.returncode == 0, done.stderr
    answers = []
    for location in (tmp_path / "l.db", postgres_url):
        with review_page(location, out) as page:
            answers.append(
                {
                    json.dumps(f): {
                        k: v
                        for k, v in results(page, **f).items()
                        if k not in ("version", "ledger")
                    }
                    for f in FILTERS
                }
            )
    assert answers[1] == answers[0]


# -- several machines at once -----------------------------------------------------------------


def test_reviewers_on_two_machines_give_verdicts_at_once_and_each_page_shows_all(
    postgres_url, tmp_path
):
    out = tmp_path / "out"
    a_night(postgres_url, out)
    keys = ["c/a1", "c/a2", "c/img", "c/plain", "c/remote", "d/d1"]
    with review_page(postgres_url, out) as ada_page, review_page(postgres_url, out) as bob_page:
        shown = cards(ada_page)
        ready = threading.Barrier(2)
        answers: dict[str, list[int]] = {A: [], B: []}

        def review(page: ReviewServer, reviewer: str, verdict: str) -> None:
            ready.wait()
            for key in keys:  # the same results, in the same order: every verdict collides
                answer = give(page, key, verdict, reviewer, f"{reviewer} says {verdict}",
                              shown[key]["task_id"])  # fmt: skip
                answers[reviewer].append(answer.status_code)

        threads = [
            threading.Thread(target=review, args=(ada_page, A, "approved")),
            threading.Thread(target=review, args=(bob_page, B, "rejected")),
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert answers == {A: [200] * len(keys), B: [200] * len(keys)}
        # one withdrawal, from Bob's machine, seen on Ada's
        assert give(bob_page, "c/a1", None, B, "not mine to judge").status_code == 200
        seen = [cards(page) for page in (ada_page, bob_page)]
        assert seen[0] == seen[1]
        for key in keys:
            history = seen[0][key]["history"]
            said = [(h["reviewer"], h["verdict"], h["note"]) for h in history]
            expected = {
                (A, "approved", f"{A} says approved"),
                (B, "rejected", f"{B} says rejected"),
            }
            # the current verdict is the latest of the history, whoever gave it
            assert (seen[0][key]["reviewer"], seen[0][key]["verdict"]) == said[0][:2], key
            if key == "c/a1":
                assert said[0] == (B, None, "not mine to judge")
                said = said[1:]
            assert set(said) == expected and len(said) == 2, key
        data = results(ada_page)
        assert data["reviewers"] == [A, B]
        judged = data["counts"]["approved"] + data["counts"]["rejected"]
        assert judged == len(keys) - 1 and data["counts"]["unreviewed"] == 1
        for reviewer in (A, B):
            judged_by = {k for k, card in seen[0].items() if card["reviewer"] == reviewer}
            assert set(cards(ada_page, reviewer=reviewer)) == judged_by - {"c/a1"}


def test_a_page_notices_a_verdict_given_on_another_machine_and_a_runners_commit(
    postgres_url, tmp_path
):
    out = tmp_path / "out"
    a_night(postgres_url, out)
    with review_page(postgres_url, out) as ada_page, review_page(postgres_url, out) as bob_page:
        version = results(ada_page)["version"]
        assert results(ada_page, since=version) == {"version": version, "unchanged": True}
        assert give(bob_page, "c/a1", "rejected", B, "too dark").status_code == 200
        now = results(ada_page, since=version)
        assert now["version"] != version and "unchanged" not in now
        assert cards(ada_page)["c/a1"]["verdict"] == "rejected"
        assert results(ada_page, since=now["version"])["unchanged"] is True
        # a runner on a third machine: a progress reading (one job's row updated, no row
        # added anywhere), then the task completes
        runner = Ledger(postgres_url)
        try:
            job = next(j for j in runner.unfinished_jobs(["c"]) if j.id == "later")
            runner.task_progress(job, 40)
            progressed = results(ada_page, since=now["version"])
            assert "unchanged" not in progressed
            assert cards(ada_page)["c/later"]["progress"] == 40
            runner.task_completed(job, [f"{CDN}/later.mp4"])
        finally:
            runner.close()
        assert "unchanged" not in results(ada_page, since=progressed["version"])
        assert cards(ada_page)["c/later"]["status"] == "completed"


def test_the_review_command_serves_a_postgresql_ledger_and_never_shows_its_password(
    postgres_url, tmp_path
):
    a_night(postgres_url, tmp_path / "out")
    parts = urlsplit(postgres_url)
    with_password = urlunsplit(
        parts._replace(netloc=f"{parts.username}:s3cret-pw@{parts.netloc.rsplit('@', 1)[-1]}")
    )
    env = command_env(with_password, None, None)
    process = subprocess.Popen(
        [sys.executable, "-m", "batchgen", "review", "--port", "0", "--out", "out"],
        cwd=tmp_path,
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
        answer = httpx.get(url + "api/results", timeout=30)
        assert answer.status_code == 200
        data = answer.json()
        assert data["ledger"] == with_password.replace("s3cret-pw", "***")
        assert httpx.get(url + "files/c/a1/0", timeout=30).content == VIDEO
    finally:
        process.send_signal(signal.SIGTERM)
        rest, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    assert "Traceback" not in err
    assert "s3cret" not in line + rest + err + answer.text
    assert "ledger postgresql://" in err and ":***@" in err


# -- retry ---------------------------------------------------------------------------------------


def command(location: str | Path, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The real `batchgen ARGS` on the ledger at `location`, to its end."""
    return subprocess.run(
        [sys.executable, "-m", "batchgen", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=command_env(location, None, None),
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
    )


def statuses(location: str | Path) -> dict[str, str]:
    ledger = Ledger(location, create=False)
    try:
        return {r["id"]: r["status"] for r in ledger.query("SELECT id, status FROM jobs")}
    finally:
        ledger.close()


def requeued_events(location: str | Path) -> list[dict[str, Any]]:
    """The `requeued` events: job and detail (parsed), in order, without the times."""
    ledger = Ledger(location, create=False)
    try:
        rows = ledger.query("SELECT job_id, detail FROM events WHERE kind = 'requeued' ORDER BY id")
    finally:
        ledger.close()
    return [{"job": r["job_id"], **json.loads(r["detail"])} for r in rows]


def test_retry_in_each_of_its_forms_puts_back_the_same_jobs_with_the_same_words(
    postgres_url, tmp_path
):
    steps = [
        ("retry",),
        ("retry", "--unknown"),
        ("retry", "--rejected", "--campaign", "d"),
        ("retry", "--rejected"),
        ("retry", "--job", "a1", "--job", "img"),
        ("retry", "--job", "later"),  # running: refused, nothing changes
        ("retry", "--job", "nope"),
        ("retry", "--rejected", "--job", "a1"),  # a usage error
    ]
    after: dict[str, dict[str, Any]] = {}
    for location in (tmp_path / "l.db", postgres_url):
        out = tmp_path / "out"
        a_night(location, out)
        with review_page(location, out) as page:
            assert give(page, "c/a2", "rejected", A, "too dark").status_code == 200
            assert give(page, "d/d1", "rejected", B).status_code == 200
            assert give(page, "d/d1", None, B).status_code == 200  # withdrawn: stays
        said = [command(location, tmp_path, *args) for args in steps]
        after[str(location)] = {
            "said": [(done.returncode, done.stdout, done.stderr) for done in said],
            "jobs": statuses(location),
            "events": requeued_events(location),
        }
    on_sqlite, on_postgres = after.values()
    assert on_postgres == on_sqlite
    said, jobs = on_postgres["said"], on_postgres["jobs"]
    assert [code for code, _, _ in said] == [0, 0, 0, 0, 0, 1, 1, 2]
    assert not any("Traceback" in err for _, _, err in said)
    assert [out.split(";")[0] for _, out, _ in said[:4]] == ["1 job(s) queued again"] * 2 + [
        "0 job(s) queued again",
        "1 job(s) queued again",
    ]
    assert jobs["a2"] == jobs["a1"] == jobs["img"] == jobs["bad"] == jobs["lost"] == "queued"
    assert jobs["d1"] == jobs["plain"] == "completed" and jobs["later"] == "running"
    events = {e["job"]: e for e in on_postgres["events"]}
    assert events["a2"]["verdict"] == "rejected" and events["a2"]["note"] == "too dark"
    assert events["a2"]["task_id"] == "task-c-a2-0"
    assert events["a2"]["result_urls"] == [f"{CDN}/a2.mp4"]
    assert [f["n"] for f in events["a2"]["files"]] == [0]
    assert events["bad"]["from"] == "failed"


# -- a night on the sandbox, the morning's review, and the jobs rejected generated again ---------


def test_a_night_run_on_postgresql_is_reviewed_and_its_rejected_jobs_generated_again(
    postgres_url, tmp_path
):
    manifest = write_manifest(
        tmp_path / "night.yaml",
        """
        version: 1
        campaign: night
        defaults: {model: grok-video-3, duration: 5, ratio: "1:1"}
        jobs:
          - id: "clip-{n}"
            prompt: "clip number {n}"
            tags: [night]
            matrix: {n: [1, 2, 3, 4]}
        """,
    )
    done = command(postgres_url, tmp_path, "run", str(manifest), "--sandbox", *FAST)
    assert done.returncode == 0, done.stderr
    with (
        review_page(postgres_url, tmp_path / "out") as ada_page,
        review_page(postgres_url, tmp_path / "out") as bob_page,
    ):
        shown = cards(ada_page)
        assert sorted(shown) == [f"night/clip-{n}" for n in range(1, 5)]
        assert {c["status"] for c in shown.values()} == {"completed"}
        assert give(ada_page, "night/clip-1", "rejected", A, "the cat has five legs").is_success
        assert give(bob_page, "night/clip-2", "rejected", B).is_success
        assert give(bob_page, "night/clip-3", "approved", B).is_success
        assert give(ada_page, "night/clip-2", None, A, "fine after all").is_success  # withdrawn
        assert sorted(cards(bob_page, verdict="rejected")) == ["night/clip-1"]
        assert sorted(cards(bob_page, tag="night", reviewer=B)) == ["night/clip-3"]
        rejected_task = shown["night/clip-1"]["task_id"]

        done = command(postgres_url, tmp_path, "retry", "--rejected")
        assert (done.returncode, done.stdout) == (
            0,
            "1 job(s) queued again; run `batchgen resume` to go on.\n",
        ), done.stderr
        assert statuses(postgres_url)["clip-1"] == "queued"
        assert cards(ada_page)["night/clip-1"]["status"] == "queued"

        done = command(postgres_url, tmp_path, "resume", "--sandbox", *FAST)
        assert done.returncode == 0, done.stderr
        again = cards(ada_page)["night/clip-1"]
        assert again["status"] == "completed" and again["task_id"] != rejected_task
        assert again["verdict"] is None and again["history"] == []  # a new result, unjudged
        assert results(bob_page)["counts"] == {"approved": 1, "rejected": 0, "unreviewed": 3}
    [event] = requeued_events(postgres_url)
    assert event["task_id"] == rejected_task and event["verdict"] == "rejected"
    assert event["note"] == "the cat has five legs"
    # the rejected result's verdict stays in the audit
    ledger = Ledger(postgres_url, create=False)
    try:
        kept = ledger.query(
            "SELECT task_id, verdict, reviewer FROM verdicts WHERE job_id = 'clip-1'"
        )
    finally:
        ledger.close()
    assert kept == [{"task_id": rejected_task, "verdict": "rejected", "reviewer": A}]


def test_report_by_reviewer_counts_the_same_verdicts_on_postgresql_as_on_sqlite(
    postgres_url, tmp_path
):
    reports = []
    for location in (tmp_path / "l.db", postgres_url):
        a_night(location, tmp_path / "out")
        with review_page(location, tmp_path / "out") as page:
            review_a_night(page)
        done = command(location, tmp_path, "report", "--by", "reviewer", "--format", "json")
        assert done.returncode == 0, done.stderr
        reports.append(json.loads(done.stdout))
    assert reports[1] == reports[0]
    jobs = {row["key"]: row["jobs"] for row in reports[1]["groups"]}
    assert jobs == {A: 2, B: 1, "(unreviewed)": 3, "(no result)": 3}


def test_a_page_whose_connection_the_server_cut_says_so_in_one_line_and_carries_on(
    postgres_url, tmp_path
):
    """A restart or a network cut ends the review server's connection: the page's next
    read gets a 503 and one line (the page shows it and asks again), never a traceback,
    and the one after it is answered on a new connection; a verdict (a write, which does
    nothing before it holds the write lock) and a file asked for are served at once on a
    new connection."""
    import psycopg

    out = tmp_path / "out"
    a_night(postgres_url, out)
    with review_page(postgres_url, out) as page:

        def cut() -> None:
            with psycopg.connect(postgres_url, autocommit=True) as admin:
                admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )

        cut()
        answer = httpx.get(page.url + "api/results", timeout=30)
        assert answer.status_code == 503, answer.text
        [line] = answer.json()["error"].splitlines()
        assert "cannot reach the ledger" in line
        assert httpx.get(page.url + "api/results", timeout=30).status_code == 200
        cut()
        given = give(page, "c/a1", "approved", A, task_id="task-c-a1-0")
        assert given.status_code == 200, given.text
        assert cards(page)["c/a1"]["verdict"] == "approved"
        cut()
        assert httpx.get(page.url + "files/c/a1/0", timeout=30).content == VIDEO
