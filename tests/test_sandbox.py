"""The sandbox is faithful to okaypic-api.txt and PRODUCT §2, and its faults are seeded.

Most tests talk real HTTP to a sandbox served on 127.0.0.1 with a ManualClock, so time
moves only when a test says so; fault sequences are checked on `Sandbox.handle` directly.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from batchgen import catalog
from batchgen.cli import cli
from batchgen.keys import api_keys
from batchgen.outcomes import Answer, Submit, Transport, classify_poll, classify_submit
from batchgen.sandbox import (
    DEFAULT_KEY,
    Drop,
    Response,
    Sandbox,
    SandboxConfig,
    Truth,
    serve,
)
from batchgen.sandbox.config import parse_keys, parse_latency
from batchgen.sandbox.standalone import environment_lines
from tests.sandbox_fixtures import (  # noqa: F401  (fixtures are used by name)
    ManualClock,
    RunningSandbox,
    make_sandbox,
    sandbox,
)

VIDEO = "/api/video/generate"
IMAGE = "/api/image/generate"
VIDEO_POLL = "GET /api/video/tasks/{task_id}"

# The three curl examples of okaypic-api.txt, verbatim.
CURL_TEXT_ONLY = {
    "model": "jimeng-video-seedance-2.0",
    "prompt": "A cat playing piano in a jazz club",
    "duration": 5,
    "ratio": "16:9",
}
CURL_OMNI = {
    "model": "jimeng-video-seedance-2.0",
    "prompt": "Make this cat dance",
    "duration": 5,
    "ratio": "16:9",
    "ref_mode": "omni",
    "media": [{"type": "image", "url": "https://example.com/cat.jpg"}],
}
CURL_FIRST_LAST = {
    "model": "jimeng-video-seedance-2.0",
    "prompt": "Smooth transition",
    "duration": 5,
    "ratio": "16:9",
    "ref_mode": "first-last",
    "media": [
        {"type": "image", "url": "https://example.com/frame1.jpg"},
        {"type": "image", "url": "https://example.com/frame2.jpg"},
    ],
}
GROK = {"model": "grok-video-3", "prompt": "A lighthouse", "duration": 5, "ratio": "1:1"}
POSTER = {"model": "jimeng-5.0", "prompt": "A red bicycle", "ratio": "3:4", "resolution": "2k"}


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def sb(make_sandbox, clock) -> RunningSandbox:  # noqa: F811
    """A served sandbox whose time moves only with `clock.advance`, at catalog pace."""
    return make_sandbox(clock=clock, time_scale=1.0, jitter=0.0)


def submit(sb: RunningSandbox, body: Any, path: str = VIDEO, **kwargs: Any) -> httpx.Response:
    kwargs.setdefault("headers", sb.headers())
    return httpx.post(sb.base_url + path, json=body, timeout=5, **kwargs)


def poll(sb: RunningSandbox, task_id: str, kind: str = "video", **kwargs: Any) -> httpx.Response:
    kwargs.setdefault("headers", sb.headers())
    return httpx.get(f"{sb.base_url}/api/{kind}/tasks/{task_id}", timeout=5, **kwargs)


def generation_seconds(body: dict[str, Any]) -> float:
    model = catalog.load().model(body["model"])
    assert model is not None
    return model.typical_seconds(body.get("duration"))


# -- the documented requests and answers -----------------------------------------------


@pytest.mark.parametrize(
    "body", [CURL_TEXT_ONLY, CURL_OMNI, CURL_FIRST_LAST], ids=["text", "omni", "first-last"]
)
def test_each_curl_example_of_the_reference_is_accepted_with_the_documented_shape(sb, body):
    response = submit(sb, body)

    assert response.status_code == 200
    answer = response.json()
    assert set(answer) == {"generationId", "taskId", "status"}
    assert answer["status"] == "pending"
    uuid.UUID(answer["generationId"])
    assert sb.truth().submissions[0].task_id == answer["taskId"]
    assert sb.truth().submissions[0].payload == body


def test_a_task_is_pending_then_processing_with_rising_progress_then_completed(sb, clock):
    task_id = submit(sb, CURL_TEXT_ONLY).json()["taskId"]
    total = generation_seconds(CURL_TEXT_ONLY)  # jitter 0: exactly the catalog's time

    assert poll(sb, task_id).json() == {"status": "pending", "progress": 0, "type": "video"}
    seen = []
    for _ in range(8):
        clock.advance(total / 10)
        answer = poll(sb, task_id).json()
        assert answer["status"] == "processing" and answer["type"] == "video"
        assert set(answer) == {"status", "progress", "type"}
        seen.append(answer["progress"])
    assert seen == sorted(seen) and 0 < seen[0] < seen[-1] <= 99
    clock.advance(total)
    done = poll(sb, task_id).json()

    assert done == {
        "status": "completed",
        "resultUrls": [f"{sb.base_url}/files/{task_id}/0.mp4"],
        "type": "video",
    }
    assert sb.truth().polls[task_id] == 10


def test_result_files_are_served_without_auth_once_the_task_completed(sb, clock):
    task_id = submit(sb, GROK).json()["taskId"]
    url = f"{sb.base_url}/files/{task_id}/0.mp4"
    assert httpx.get(url).status_code == 404  # not generated yet

    clock.advance(generation_seconds(GROK) + 1)
    [result_url] = poll(sb, task_id).json()["resultUrls"]
    file = httpx.get(result_url)

    assert result_url == url
    assert file.status_code == 200 and file.headers["content-type"] == "video/mp4"
    assert file.content == sb.sim.result_file(task_id, 0) == httpx.get(url).content
    assert file.content[4:12] == b"ftypisom"  # an MP4
    assert httpx.get(f"{sb.base_url}/files/{task_id}/0.png").status_code == 404
    assert httpx.get(f"{sb.base_url}/files/{task_id}/1.mp4").status_code == 404
    assert httpx.get(f"{sb.base_url}/files/nope/0.mp4").status_code == 404


def test_image_jobs_use_the_image_endpoints_and_give_a_png(sb, clock):
    response = submit(sb, POSTER, path=IMAGE)
    assert response.status_code == 200
    task_id = response.json()["taskId"]

    assert poll(sb, task_id, "image").json() == {
        "status": "pending",
        "progress": 0,
        "type": "image",
    }
    assert poll(sb, task_id, "video").status_code == 404  # an image task is not a video task
    clock.advance(generation_seconds(POSTER) + 0.1)
    done = poll(sb, task_id, "image").json()

    assert done == {
        "status": "completed",
        "resultUrls": [f"{sb.base_url}/files/{task_id}/0.png"],
        "type": "image",
    }
    file = httpx.get(done["resultUrls"][0])
    assert file.headers["content-type"] == "image/png"
    assert file.content.startswith(b"\x89PNG\r\n\x1a\n")
    assert sb.truth().charged_micros() == 200_000


# -- 400: the catalog decides what is valid ----------------------------------------------


@pytest.mark.parametrize(
    "path, body, words",
    [
        (VIDEO, {**CURL_TEXT_ONLY, "model": "sora-9"}, "not known"),
        (VIDEO, POSTER, "not a video model"),
        (IMAGE, CURL_TEXT_ONLY, "not a image model"),
        (VIDEO, {**CURL_TEXT_ONLY, "duration": 20}, "duration 20 is not allowed"),
        (VIDEO, {**GROK, "duration": 7}, "allowed: 5, 10, 15"),
        (VIDEO, {**CURL_TEXT_ONLY, "duration": "5"}, "whole number"),
        (VIDEO, {**CURL_TEXT_ONLY, "ratio": "5:4"}, "ratio '5:4' is not allowed"),
        (VIDEO, {k: v for k, v in CURL_TEXT_ONLY.items() if k != "prompt"}, "prompt"),
        (VIDEO, {"prompt": "no model"}, "model is required"),
        (VIDEO, {**CURL_OMNI, "ref_mode": None}, "ref_mode is required"),
        (
            VIDEO,
            {**CURL_FIRST_LAST, "media": [{"type": "video", "url": "https://e.com/v.mp4"}]},
            "media type 'video' is not allowed with ref_mode first-last",
        ),
        (
            VIDEO,
            {**CURL_OMNI, "media": [{"type": "video", "url": f"https://e.com/{i}"} for i in "ab"]},
            "2 video items",
        ),
        (VIDEO, {**GROK, "media": CURL_OMNI["media"]}, "media is not accepted by grok-video-3"),
        (VIDEO, {"model": "veo3.1", "prompt": "Drone", "ratio": "9:16"}, "variant is required"),
    ],
)
def test_an_invalid_request_gets_400_with_the_first_problem_and_creates_nothing(
    sb, path, body, words
):
    response = submit(sb, body, path=path)

    assert response.status_code == 400
    assert words in response.json()["error"]
    assert sb.truth().submissions == [] and sb.sim.balance(sb.key) == 100_000_000


@pytest.mark.parametrize("content", [b"{not json", b"[1, 2]", b"", b"\xff\xfe"])
def test_a_body_that_is_not_a_json_object_gets_400(sb, content):
    response = httpx.post(sb.base_url + VIDEO, content=content, headers=sb.headers())
    assert response.status_code == 400 and "JSON" in response.json()["error"]


# -- 401, 402, 404, 429 ------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer okpk_wrong"}, {"Authorization": f"Basic {DEFAULT_KEY}"}],
    ids=["missing", "wrong-key", "wrong-scheme"],
)
def test_a_missing_or_wrong_key_gets_401_on_submit_and_poll(sb, headers):
    task_id = submit(sb, GROK).json()["taskId"]

    refused = submit(sb, GROK, headers=headers)
    polled = poll(sb, task_id, headers=headers)

    assert refused.status_code == 401 and "error" in refused.json()
    assert polled.status_code == 401
    assert len(sb.truth().submissions) == 1


def test_a_short_balance_gets_402_and_charges_nothing(make_sandbox, clock):  # noqa: F811
    sb = make_sandbox(clock=clock, keys={"okpk_poor": 150_000})  # $0.15

    first = submit(sb, GROK)  # $0.10
    second = submit(sb, GROK)

    assert first.status_code == 200
    assert second.status_code == 402 and second.json() == {"error": "Insufficient balance"}
    assert sb.sim.balance("okpk_poor") == 50_000
    assert sb.truth().charged_micros("okpk_poor") == 100_000


def test_a_failed_task_is_refunded_so_its_money_can_be_spent_again(make_sandbox, clock):  # noqa: F811
    sb = make_sandbox(clock=clock, keys={"okpk_poor": 100_000}, fail_rate=1.0)
    task_id = submit(sb, GROK).json()["taskId"]
    assert sb.sim.balance("okpk_poor") == 0
    assert submit(sb, GROK).status_code == 402

    clock.advance(generation_seconds(GROK) * 1.2)
    answer = poll(sb, task_id).json()

    assert answer == {"status": "failed", "errorMessage": "Generation failed", "type": "video"}
    assert sb.sim.balance("okpk_poor") == 100_000
    truth = sb.truth()
    assert truth.net_charged_micros() == 0 and truth.refunded_micros("okpk_poor") == 100_000
    assert submit(sb, GROK).status_code == 200


def test_prices_come_from_the_catalog_with_a_video_reference_doubling_the_rate(sb):
    with_video = {**CURL_OMNI, "media": [{"type": "video", "url": "https://e.com/v.mp4"}]}
    for body in (CURL_TEXT_ONLY, with_video):
        assert submit(sb, body).status_code == 200

    prices = [s.price_micros for s in sb.truth().submissions]

    assert prices == [600_000, 1_200_000]  # 5 s x $0.12, 5 s x $0.24
    assert sb.sim.balance(sb.key) == 100_000_000 - 1_800_000


def test_an_omitted_duration_runs_and_is_charged_at_the_catalog_default(sb):
    body = {k: v for k, v in GROK.items() if k != "duration"}
    assert submit(sb, body).status_code == 200
    assert sb.truth().submissions[0].price_micros == 100_000  # default 5 s x $0.02


def test_a_fourth_active_task_gets_429_until_a_slot_frees(sb, clock):
    for _ in range(3):
        assert submit(sb, GROK).status_code == 200

    fourth = submit(sb, GROK)
    assert fourth.status_code == 429
    assert fourth.json() == {"error": "Too many concurrent tasks (max 3)"}
    assert "retry-after" not in fourth.headers
    other_key = "okpk_other"
    sb.sim.top_up(other_key, 1_000_000)
    assert submit(sb, GROK, headers=sb.headers(other_key)).status_code == 200  # per key

    clock.advance(generation_seconds(GROK) + 0.1)
    assert submit(sb, GROK).status_code == 200
    truth = sb.truth()
    assert truth.peak_active == {sb.key: 3, other_key: 1}
    assert truth.count("POST /api/video/generate", 429) == 1
    assert truth.count("POST /api/video/generate", 200) == 5
    assert len(truth.submissions) == 5


def test_retry_after_is_sent_with_429_when_configured(make_sandbox):  # noqa: F811
    sb = make_sandbox(clock=ManualClock(), retry_after=7)
    for _ in range(3):
        submit(sb, GROK)
    assert submit(sb, GROK).headers["retry-after"] == "7"


def test_unknown_tasks_and_other_keys_tasks_are_404(sb):
    task_id = submit(sb, GROK).json()["taskId"]
    sb.sim.top_up("okpk_other", 0)

    assert poll(sb, "nope").status_code == 404
    assert poll(sb, task_id, headers=sb.headers("okpk_other")).status_code == 404
    assert poll(sb, task_id).status_code == 200
    assert sb.truth().polls == {task_id: 1}
    assert httpx.get(sb.base_url + "/api/nothing").status_code == 404
    assert httpx.get(sb.base_url + VIDEO, headers=sb.headers()).status_code == 405


def test_only_three_of_many_simultaneous_submits_are_accepted(make_sandbox):  # noqa: F811
    # Tasks that last 40 s: none can end (and free a slot) while the threads submit.
    long_tasks = make_sandbox(time_scale=1.0)
    answers: list[int] = []

    def one() -> None:
        answers.append(submit(long_tasks, GROK).status_code)

    threads = [threading.Thread(target=one) for _ in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(answers) == [200] * 3 + [429] * 9
    assert long_tasks.truth().peak_active[long_tasks.key] == 3


# -- truth and admin endpoints -----------------------------------------------------------


def test_truth_records_submissions_money_responses_and_repeated_payloads(sb, clock):
    submit(sb, GROK)
    submit(sb, GROK)
    submit(sb, {**GROK, "prompt": "Another"})
    submit(sb, {**GROK, "duration": 3})
    clock.advance(100)

    truth = sb.truth()

    assert [s.status for s in truth.submissions] == ["completed"] * 3
    assert truth.statuses() == {"completed": 3}
    assert truth.completed_micros() == truth.net_charged_micros() == 300_000
    assert list(truth.duplicate_payloads().values()) == [2]
    assert truth.count("POST /api/video/generate", 400) == 1
    assert [m.kind for m in truth.money] == ["charge"] * 3
    assert truth.balances[sb.key] == 100_000_000 - 300_000


def test_truth_and_top_up_are_reachable_over_http_for_another_process(sb):
    submit(sb, GROK)

    topped = httpx.post(sb.base_url + "/_sandbox/topup", json={"key": "okpk_new", "usd": "2.50"})
    truth = Truth.from_dict(httpx.get(sb.base_url + "/_sandbox/truth").json())

    assert topped.json() == {"key": "okpk_new", "balance_usd": "2.50"}
    assert truth.submissions == sb.truth().submissions
    assert truth.balances["okpk_new"] == 2_500_000
    assert submit(sb, GROK, headers=sb.headers("okpk_new")).status_code == 200
    bad = httpx.post(sb.base_url + "/_sandbox/topup", json={"key": "k", "usd": "lots"})
    assert bad.status_code == 400


# -- several keys ------------------------------------------------------------------------

RICH, OTHER, POOR = "okpk_rich", "okpk_other", "okpk_poor"


@pytest.fixture
def keyed(make_sandbox, clock) -> RunningSandbox:  # noqa: F811
    """Three keys: two with $10, one with $0.15 (one grok task); catalog pace, no jitter."""
    return make_sandbox(
        clock=clock, keys={RICH: 10_000_000, OTHER: 10_000_000, POOR: 150_000}, jitter=0.0
    )


def test_each_key_has_its_own_slots_balance_and_charges(keyed, clock):
    answers = {
        key: [submit(keyed, GROK, headers=keyed.headers(key)).status_code for _ in range(4)]
        for key in (RICH, OTHER, POOR)
    }

    assert answers == {
        RICH: [200, 200, 200, 429],
        OTHER: [200, 200, 200, 429],
        POOR: [200, 402, 402, 402],
    }
    assert [keyed.sim.peak_active(k) for k in (RICH, OTHER, POOR)] == [3, 3, 1]
    assert [keyed.sim.active_tasks(k) for k in (RICH, OTHER, POOR)] == [3, 3, 1]
    truth = keyed.truth()
    assert truth.peak_active == {RICH: 3, OTHER: 3, POOR: 1}
    assert [truth.charged_micros(k) for k in (RICH, OTHER, POOR)] == [300_000, 300_000, 100_000]
    assert [m.key for m in truth.money] == [RICH] * 3 + [OTHER] * 3 + [POOR]
    assert truth.balances == {RICH: 9_700_000, OTHER: 9_700_000, POOR: 50_000}
    assert truth.submits_by_key == {
        RICH: {"200": 3, "429": 1},
        OTHER: {"200": 3, "429": 1},
        POOR: {"200": 1, "402": 3},
    }

    clock.advance(generation_seconds(GROK) + 0.1)  # every slot frees; the balances stay
    assert submit(keyed, GROK, headers=keyed.headers(RICH)).status_code == 200
    assert submit(keyed, GROK, headers=keyed.headers(POOR)).status_code == 402
    assert keyed.sim.active_tasks(RICH) == 1 and keyed.sim.peak_active(RICH) == 3


def test_a_task_polled_with_anything_but_its_key_is_counted_as_a_foreign_poll(keyed):
    mine = submit(keyed, GROK, headers=keyed.headers(RICH)).json()["taskId"]
    theirs = submit(keyed, GROK, headers=keyed.headers(OTHER)).json()["taskId"]

    answers = [
        poll(keyed, mine, headers=keyed.headers(OTHER)).status_code,  # another key
        poll(keyed, mine, headers={"Authorization": "Bearer okpk_unknown"}).status_code,
        poll(keyed, mine, headers={}).status_code,  # no key at all
        poll(keyed, mine, kind="image", headers=keyed.headers(POOR)).status_code,
        poll(keyed, mine, headers=keyed.headers(RICH)).status_code,  # its own key
        poll(keyed, theirs, headers=keyed.headers(OTHER)).status_code,  # its own key
        poll(keyed, "no-such-task", headers=keyed.headers(OTHER)).status_code,
    ]

    assert answers == [404, 401, 401, 404, 200, 200, 404]
    assert keyed.sim.foreign_polls(RICH) == 4
    assert keyed.sim.foreign_polls(OTHER) == 0 and keyed.sim.foreign_polls() == 4
    truth = keyed.truth()
    assert truth.foreign_polls == {RICH: 4}
    assert truth.foreign_poll_count(RICH) == 4 and truth.foreign_poll_count(OTHER) == 0
    assert truth.polls == {mine: 1, theirs: 1}  # polls by the owner only, as before
    over_http = Truth.from_dict(httpx.get(keyed.base_url + "/_sandbox/truth").json())
    assert over_http.foreign_polls == {RICH: 4}
    assert over_http.submits_by_key == truth.submits_by_key


def test_the_keys_endpoint_gives_each_keys_figures_in_the_order_given(keyed, clock):
    first = submit(keyed, GROK, headers=keyed.headers(OTHER)).json()["taskId"]
    for _ in range(4):
        submit(keyed, GROK, headers=keyed.headers(RICH))
    clock.advance(generation_seconds(GROK) + 0.1)
    poll(keyed, first, headers=keyed.headers(OTHER))
    poll(keyed, first, headers=keyed.headers(RICH))
    submit(keyed, GROK, headers=keyed.headers(RICH))  # a slot is free again

    rows = httpx.get(keyed.base_url + "/_sandbox/keys").json()["keys"]

    assert rows == keyed.truth().by_key()
    assert [row["key"] for row in rows] == [RICH, OTHER, POOR]
    rich, other, poor = rows
    assert rich == {
        "key": RICH,
        "balance_usd": "9.60",
        "charged_usd": "0.40",
        "refunded_usd": "0.00",
        "tasks": 4,
        "active": 1,
        "completed": 3,
        "peak_active": 3,
        "polls": 0,
        "foreign_polls": 0,
        "submits": {"200": 4, "429": 1},
        "refusals": 0,
    }
    assert (other["tasks"], other["completed"], other["polls"], other["foreign_polls"]) == (
        1,
        1,
        1,
        1,
    )
    assert poor["tasks"] == 0 and poor["balance_usd"] == "0.15" and poor["submits"] == {}


def test_the_test_fixture_hands_batchgen_every_key_or_the_ones_asked(keyed):
    every = keyed.env()
    named = keyed.env([f"night={OTHER}", RICH])

    assert keyed.key == RICH and keyed.keys == [RICH, OTHER, POOR]
    assert "OKAYPIC_API_KEY" not in every
    assert [k.secret for k in api_keys(every)] == [RICH, OTHER, POOR]
    assert [(k.label, k.secret) for k in api_keys(named)][0] == ("night", OTHER)
    assert keyed.env([POOR]) == {"OKAYPIC_BASE_URL": keyed.base_url, "OKAYPIC_API_KEY": POOR}


def test_a_failed_task_is_refunded_to_the_key_that_paid_for_it(make_sandbox, clock):  # noqa: F811
    sb = make_sandbox(clock=clock, keys={RICH: 1_000_000, POOR: 100_000}, fail_rate=1.0)
    submit(sb, GROK, headers=sb.headers(POOR))
    clock.advance(generation_seconds(GROK) * 1.2)

    truth = sb.truth()

    assert truth.refunded_micros(POOR) == 100_000 and truth.refunded_micros(RICH) == 0
    assert truth.balances == {RICH: 1_000_000, POOR: 100_000}
    assert [row["refunded_usd"] for row in truth.by_key()] == ["0.00", "0.10"]


# -- HTTP behaviour ----------------------------------------------------------------------


def test_one_connection_serves_many_requests_keep_alive(sb):
    connection = http.client.HTTPConnection(sb.served.host, sb.served.port, timeout=5)
    body = json.dumps(GROK)
    headers = {**sb.headers(), "Content-Type": "application/json"}
    for _ in range(3):
        connection.request("POST", VIDEO, body=body, headers=headers)
        response = connection.getresponse()
        assert response.status == 200 and json.loads(response.read())["status"] == "pending"
    connection.close()


def test_stop_closes_idle_keep_alive_connections(make_sandbox):  # noqa: F811
    sb = make_sandbox()
    with httpx.Client(base_url=sb.base_url, timeout=2) as client:
        assert client.get("/api/video/tasks/x").status_code == 401  # a connection is open

        sb.served.stop()

        with pytest.raises(httpx.TransportError):
            client.get("/api/video/tasks/x")


def test_a_bug_in_the_sandbox_is_answered_500_not_a_silent_drop(capsys):
    class Broken(Sandbox):
        def handle(self, *args: Any, **kwargs: Any) -> Response:
            raise RuntimeError("oops")

    with serve(Broken()) as served:
        response = httpx.get(served.base_url + "/api/video/tasks/x")

    assert response.status_code == 500 and "oops" in response.json()["error"]
    assert "RuntimeError: oops" in capsys.readouterr().err


# -- fault knobs: their effect over HTTP, and their determinism -------------------------


def test_submit_500_creates_no_task_and_charges_nothing(make_sandbox):  # noqa: F811
    sb = make_sandbox(clock=ManualClock(), submit_500_rate=1.0)
    response = submit(sb, GROK)
    assert response.status_code == 500 and "error" in response.json()
    assert sb.truth().submissions == [] and sb.truth().faults == {"submit.500": 1}


def test_poll_500_answers_500_but_the_task_goes_on(make_sandbox, clock):  # noqa: F811
    sb = make_sandbox(clock=clock, poll_500_rate=1.0)
    task_id = submit(sb, GROK).json()["taskId"]
    clock.advance(100)
    assert poll(sb, task_id).status_code == 500
    assert sb.truth().submissions[0].status == "completed"


def test_a_spurious_429_comes_with_free_slots_and_creates_no_task(make_sandbox):  # noqa: F811
    sb = make_sandbox(clock=ManualClock(), spurious_429_rate=1.0, retry_after=2)
    response = submit(sb, GROK)
    assert response.status_code == 429 and response.headers["retry-after"] == "2"
    assert sb.truth().submissions == [] and sb.sim.active_tasks(sb.key) == 0


def test_a_dropped_submit_creates_and_charges_a_task_but_answers_nothing(make_sandbox):  # noqa: F811
    sb = make_sandbox(clock=ManualClock(), drop_rate=1.0)
    client = sb.client()

    with pytest.raises(httpx.RemoteProtocolError):
        client.post(VIDEO, json=GROK)

    [task] = sb.truth().submissions
    assert task.answered == "drop" and sb.truth().charged_micros() == 100_000
    with pytest.raises(httpx.RemoteProtocolError):  # the client reconnects; polls drop too
        client.get(f"/api/video/tasks/{task.task_id}")
    assert sb.truth().count(VIDEO_POLL, "drop") == 1


def test_a_garbage_submit_is_an_unparseable_200_for_a_created_charged_task(make_sandbox):  # noqa: F811
    sb = make_sandbox(clock=ManualClock(), garbage_rate=1.0)
    response = submit(sb, GROK)

    assert response.status_code == 200
    with pytest.raises(ValueError):
        response.json()
    [task] = sb.truth().submissions
    assert task.answered == "garbage" and sb.truth().charged_micros() == 100_000
    polled = poll(sb, task.task_id)
    assert polled.status_code == 200
    with pytest.raises(ValueError):
        polled.json()


def test_latency_delays_each_api_answer_by_a_seeded_amount_in_the_range(make_sandbox):  # noqa: F811
    sb = make_sandbox(latency=(0.05, 0.08))
    started = time.monotonic()
    assert submit(sb, GROK).status_code == 200
    assert time.monotonic() - started >= 0.05

    sim = Sandbox(SandboxConfig(latency=(0.1, 0.3), seed=1), clock=ManualClock())
    delays = [handle_submit(sim).delay_s for _ in range(20)]
    assert all(0.1 <= d <= 0.3 for d in delays) and len(set(delays)) == 20


def handle_submit(sim: Sandbox, body: dict[str, Any] = GROK) -> Response:
    headers = {"Authorization": f"Bearer {DEFAULT_KEY}"}
    return sim.handle("POST", VIDEO, headers, json.dumps(body).encode())


def outcome(response: Response) -> str:
    """What a client would see: drop, garbage, or the status code."""
    if isinstance(response.body, Drop):
        return "drop"
    try:
        json.loads(response.body)
    except ValueError:
        return "garbage"
    return str(response.status)


def submit_outcomes(seed: int, **knobs: Any) -> list[str]:
    """40 submits with time moving on far enough between them that slots are always free."""
    clock = ManualClock()
    sim = Sandbox(SandboxConfig(seed=seed, **knobs), clock=clock)
    seen = []
    for _ in range(40):
        seen.append(outcome(handle_submit(sim)))
        clock.advance(1000)
    return seen + [s.status for s in sim.truth().submissions]


def poll_outcomes(seed: int, **knobs: Any) -> list[str]:
    """40 polls of one task that has long completed."""
    clock = ManualClock()
    sim = Sandbox(SandboxConfig(seed=seed, **knobs), clock=clock)
    task_id = json.loads(handle_submit(sim).body)["taskId"]  # type: ignore[arg-type]
    clock.advance(1000)
    headers = {"Authorization": f"Bearer {DEFAULT_KEY}"}
    return [outcome(sim.handle("GET", f"/api/video/tasks/{task_id}", headers)) for _ in range(40)]


@pytest.mark.parametrize(
    "knob, outcomes, effect",
    [
        ("submit_500_rate", submit_outcomes, "500"),
        ("spurious_429_rate", submit_outcomes, "429"),
        ("fail_rate", submit_outcomes, "failed"),
        ("drop_rate", submit_outcomes, "drop"),
        ("garbage_rate", submit_outcomes, "garbage"),
        ("poll_500_rate", poll_outcomes, "500"),
        ("drop_rate", poll_outcomes, "drop"),
        ("garbage_rate", poll_outcomes, "garbage"),
    ],
)
def test_each_fault_knob_is_seeded_same_seed_same_faults_other_seed_other_faults(
    knob, outcomes, effect
):
    same = outcomes(seed=11, **{knob: 0.4})

    assert same == outcomes(seed=11, **{knob: 0.4})
    assert same != outcomes(seed=12, **{knob: 0.4})
    assert 0 < same.count(effect) < 40  # a rate, neither never nor always
    assert effect not in outcomes(seed=11)  # off by default


def test_one_knob_does_not_shift_another_knobs_decisions():
    alone = submit_outcomes(seed=5, submit_500_rate=0.3)
    with_failures = submit_outcomes(seed=5, submit_500_rate=0.3, fail_rate=0.5)
    assert [o == "500" for o in alone[:40]] == [o == "500" for o in with_failures[:40]]


def test_generation_times_are_the_catalog_times_scaled_with_seeded_jitter():
    def ends(seed: int) -> list[float]:
        sim = Sandbox(SandboxConfig(seed=seed, time_scale=0.5), clock=ManualClock(0.0))
        for _ in range(3):
            handle_submit(sim)
        return [s.ends_at for s in sim.truth().submissions]

    typical = generation_seconds(GROK) * 0.5
    assert all(0.9 * typical <= t <= 1.1 * typical for t in ends(1))
    assert ends(1) == ends(1) != ends(2)


# -- refusals for content reasons (refuse_rate) -------------------------------------------


def refusals_seen(seed: int, rounds: int = 2) -> list[list[str]]:
    """40 distinct prompts sent `rounds` times, by turns with two keys, time moving on far
    enough between submits that slots are free: what each came to as batchgen reads it
    (classify_submit / classify_poll with the catalog's phrases), round by round."""
    clock = ManualClock()
    keys = {RICH: 100_000_000, OTHER: 100_000_000}
    sim = Sandbox(SandboxConfig(seed=seed, refuse_rate=0.5, keys=keys), clock=clock)
    phrases = catalog.load().refusal_phrases
    seen = []
    for turn in range(rounds):
        this_round = []
        for n in range(40):
            headers = {"Authorization": f"Bearer {(RICH, OTHER)[(n + turn) % 2]}"}
            body = json.dumps({**GROK, "prompt": f"scene {n}"}).encode()
            submitted = classify_submit(_answer(sim.handle("POST", VIDEO, headers, body)), phrases)
            if submitted.action is not Submit.CREATED:
                this_round.append(f"submit {submitted.action.name}")
                continue
            clock.advance(1000)
            polled = sim.handle("GET", f"/api/video/tasks/{submitted.task_id}", headers)
            this_round.append(f"task {classify_poll(_answer(polled), phrases).action.name}")
        seen.append(this_round)
    return seen


def _answer(response: Response) -> Answer:
    assert isinstance(response.body, bytes)
    return Answer(Transport.ANSWERED, response.status, response.body)


def test_refuse_rate_refuses_the_same_prompts_every_time_half_at_submit_half_for_their_output():
    first, again = refusals_seen(seed=3)
    assert first == again  # the prompt decides, not the request's place nor its key
    # batchgen reads both kinds as refusals; about half of the prompts are refused
    assert set(first) == {"submit REFUSED", "task REFUSED", "task COMPLETED"}
    assert 10 <= first.count("task COMPLETED") <= 30
    assert refusals_seen(seed=3, rounds=1)[0] == first
    assert refusals_seen(seed=4, rounds=1)[0] != first


def test_each_key_counts_the_refusals_it_was_told_and_refused_output_is_refunded():
    clock = ManualClock()
    keys = {RICH: 100_000_000, OTHER: 100_000_000}
    sim = Sandbox(SandboxConfig(seed=3, refuse_rate=0.6, keys=keys), clock=clock)
    told: dict[str, int] = {RICH: 0, OTHER: 0}
    failed_tasks = []
    for n in range(30):
        key = (RICH, OTHER)[n % 2]
        headers = {"Authorization": f"Bearer {key}"}
        body = json.dumps({**GROK, "prompt": f"scene {n}"}).encode()
        answer = sim.handle("POST", VIDEO, headers, body)
        if answer.status == 400:
            assert "content policy" in json.loads(answer.body)["error"]  # type: ignore[arg-type]
            told[key] += 1
            continue
        clock.advance(1000)
        task_id = json.loads(answer.body)["taskId"]  # type: ignore[arg-type]
        polled = json.loads(sim.handle("GET", f"/api/video/tasks/{task_id}", headers).body)  # type: ignore[arg-type]
        if polled["status"] == "failed":
            assert "safety" in polled["errorMessage"].lower()
            told[key] += 1
            failed_tasks.append(task_id)

    truth = sim.truth()
    assert all(told.values()) and failed_tasks  # both keys, both kinds
    assert {row["key"]: row["refusals"] for row in truth.by_key()} == told
    assert truth.refusals() == sum(told.values())
    refunded = {m.task_id for m in truth.money if m.kind == "refund"}
    assert refunded == set(failed_tasks)  # as every failed task (catalog)
    assert Truth.from_dict(truth.to_dict()).by_key() == truth.by_key()


def test_both_sandbox_command_lines_take_a_refuse_rate_between_0_and_1():
    result = CliRunner().invoke(cli, ["sandbox", "--port", "0", "--refuse-rate", "1.5"])
    assert result.exit_code == 2 and "--refuse-rate" in result.output
    assert "--refuse-rate" in CliRunner().invoke(cli, ["sandbox", "--help"]).output
    standalone = _standalone("batchgen.sandbox", "--help")
    assert "--refuse-rate" in standalone.communicate(timeout=30)[0]
    with pytest.raises(ValueError):
        SandboxConfig(refuse_rate=1.5)


# -- configuration and the standalone server ---------------------------------------------


def test_config_refuses_out_of_range_knobs_and_parses_command_line_values():
    with pytest.raises(ValueError):
        SandboxConfig(fail_rate=1.5)
    with pytest.raises(ValueError):
        SandboxConfig(latency=(0.5, 0.1))
    with pytest.raises(TypeError):
        SandboxConfig.from_knobs("k", "1", no_such_knob=1)
    config = SandboxConfig.from_knobs("k", "12.34", latency="0.1,0.2", seed=None, fail_rate=0.2)
    assert config.keys == {"k": 12_340_000} and config.latency == (0.1, 0.2)
    assert config.seed == 0 and config.fail_rate == 0.2
    assert parse_latency(0.3) == (0.3, 0.3) and parse_latency((0, 1)) == (0.0, 1.0)


def _standalone(module: str, *args: str) -> subprocess.Popen[str]:
    """`python -m module args` from the repository, its output read by the test."""
    root = Path(__file__).resolve().parent.parent
    return subprocess.Popen(
        [sys.executable, "-m", module, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(root)},
        cwd=root,
    )


def test_the_standalone_sandbox_prints_its_url_and_key_and_stops_on_sigterm():
    process = _standalone("batchgen.sandbox", "--port", "0", "--key", "okpk_t")
    try:
        assert process.stdout is not None
        base_url = process.stdout.readline().strip().removeprefix("OKAYPIC_BASE_URL=")
        key = process.stdout.readline().strip().removeprefix("OKAYPIC_API_KEY=")
        answer = httpx.post(base_url + VIDEO, json=GROK, headers={"Authorization": f"Bearer {key}"})
        assert key == "okpk_t" and answer.status_code == 200

        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=5) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_python_m_batchgen_sandbox_is_the_batchgen_sandbox_command_with_every_option():
    """One command line: the module runs `batchgen sandbox` itself (its options, e.g.
    --echo-key and a Retry-After that is not an integer, and its help)."""
    module = _standalone("batchgen.sandbox", "--help")
    command = _standalone("batchgen", "sandbox", "--help")
    module_help, _ = module.communicate(timeout=30)
    command_help, _ = command.communicate(timeout=30)
    assert module.returncode == command.returncode == 0
    assert "--echo-key" in module_help and "--verbose" in module_help
    assert module_help.replace("python -m batchgen.sandbox", "batchgen sandbox") == (
        command_help.replace("python -m batchgen sandbox", "batchgen sandbox")
    )
    bad = _standalone("batchgen.sandbox", "--retry-after", "0.5", "--echo-key", "--port", "-1")
    _, stderr = bad.communicate(timeout=30)
    assert bad.returncode == 2 and "--port" in stderr  # only the port was refused


def test_keys_are_given_as_key_or_key_equals_usd_each_with_a_balance():
    assert parse_keys(["okpk_a", "okpk_b=0.50", "okpk_c=0"], "12.34") == {
        "okpk_a": 12_340_000,
        "okpk_b": 500_000,
        "okpk_c": 0,
    }
    config = SandboxConfig.from_knobs(["k1", "k2=1"], "2", seed=3)
    assert config.keys == {"k1": 2_000_000, "k2": 1_000_000} and config.seed == 3
    assert list(config.keys) == ["k1", "k2"]  # the order given: the first is OKAYPIC_API_KEY


@pytest.mark.parametrize(
    "specs",
    [
        ["k=lots"],
        ["k=-1"],
        ["k=0.0000001"],  # a fraction of a micro-dollar
        ["=5"],
        [""],
        ["k k"],
        ["k,j"],  # could not be one entry of OKAYPIC_API_KEYS
        ["k=1=2"],
        ["k\u00e9"],
        ["k", "k=3"],  # one key twice
        [],
    ],
    ids=lambda specs: repr(specs),
)
def test_a_key_that_is_not_key_or_key_equals_usd_is_refused(specs):
    with pytest.raises(ValueError):
        parse_keys(specs, "1.00")


def test_a_balance_that_is_not_an_amount_is_refused():
    with pytest.raises(ValueError):
        parse_keys(["k"], "lots")
    with pytest.raises(ValueError):
        parse_keys(["k"], "-2")


@pytest.mark.parametrize(
    "arguments",
    [["--key", "k=lots"], ["--key", "k", "--key", "k"], ["--balance", "lots"], ["--key", "a b"]],
)
def test_the_sandbox_command_refuses_a_bad_key_or_balance_as_a_usage_error(arguments):
    result = CliRunner().invoke(cli, ["sandbox", "--port", "0", *arguments])

    assert result.exit_code == 2
    assert isinstance(result.exception, SystemExit)  # a message, not a traceback


@pytest.mark.parametrize(
    "keys",
    [["okpk_a"], ["okpk_a", "okpk_b"], ["okpk_$HOME", "okpk_'q'", "okpk_;true"]],
    ids=["one", "two", "odd"],
)
def test_the_printed_lines_give_a_shell_batchgens_keys_as_they_are(keys, tmp_path):
    lines = environment_lines("http://127.0.0.1:1", keys)
    script = tmp_path / "sandbox.env"
    script.write_text("\n".join(lines) + "\n")
    shown = subprocess.run(
        [
            "sh",
            "-c",
            '. "$1"; printf "%s\\n%s\\n%s" "$OKAYPIC_BASE_URL" "$OKAYPIC_API_KEY" '
            '"${OKAYPIC_API_KEYS-unset}"',
            "sh",
            str(script),
        ],
        capture_output=True,
        text=True,
        check=True,
        env={"PATH": os.environ.get("PATH", ""), "HOME": "/nonexistent"},
    ).stdout.split("\n")

    assert shown[:2] == ["http://127.0.0.1:1", keys[0]]
    if len(keys) == 1:
        assert shown[2] == "unset"
    else:
        environment = {"OKAYPIC_API_KEYS": shown[2], "OKAYPIC_API_KEY": shown[1]}
        assert [key.secret for key in api_keys(environment)] == keys


def test_batchgen_sandbox_with_several_keys_serves_each_with_its_balance():
    command = ["sandbox", "--port", "0", "--key", "okpk_a", "--key", "okpk_b=0.10"]
    process = _standalone("batchgen", *command, "--balance", "5")
    try:
        assert process.stdout is not None
        printed = dict(process.stdout.readline().strip().split("=", 1) for _ in range(3))
        base_url = printed["OKAYPIC_BASE_URL"]

        def submit_with(key: str) -> int:
            headers = {"Authorization": f"Bearer {key}"}
            return httpx.post(base_url + VIDEO, json=GROK, headers=headers).status_code

        assert printed["OKAYPIC_API_KEY"] == "okpk_a"
        assert printed["OKAYPIC_API_KEYS"] == "okpk_a,okpk_b"
        assert [submit_with("okpk_b") for _ in range(2)] == [200, 402]  # $0.10: one task
        assert [submit_with("okpk_a") for _ in range(4)] == [200, 200, 200, 429]
        rows = httpx.get(base_url + "/_sandbox/keys").json()["keys"]
        assert [(r["key"], r["balance_usd"]) for r in rows] == [
            ("okpk_a", "4.70"),
            ("okpk_b", "0.00"),
        ]

        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=5) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
