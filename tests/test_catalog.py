"""The model catalog (batchgen/catalog.py + catalog.json): every rule of okaypic-api.txt and
PRODUCT.md §2, case by case, with the exact words a person reads."""

from __future__ import annotations

import dataclasses

import pytest

from batchgen import catalog
from batchgen.catalog import REQUEST_FIELDS, check_request, price_micros, request_body

SEEDANCE = "jimeng-video-seedance-2.0"
FAST = "jimeng-video-seedance-2.0-fast"
GROK = "grok-video-3"
VEO = "veo3.1"
IMAGE = "jimeng-5.0"
KNOWN = f"{SEEDANCE}, {FAST}, {GROK}, {VEO}, {IMAGE}"


def image(url: str = "https://x/a.jpg") -> dict[str, str]:
    return {"type": "image", "url": url}


def video(url: str = "https://x/a.mp4") -> dict[str, str]:
    return {"type": "video", "url": url}


def audio(url: str = "https://x/a.mp3") -> dict[str, str]:
    return {"type": "audio", "url": url}


# --------------------------------------------------------------------- the service's facts


def test_the_service_facts():
    c = catalog.load()
    assert c.base_url == "https://okaypic.com"
    assert c.max_active_tasks == 3
    assert c.failed_tasks_refunded is True
    assert list(c.models) == [SEEDANCE, FAST, GROK, VEO, IMAGE]
    assert catalog.load() is c  # read once


def test_request_fields_are_the_references_parameters():
    assert REQUEST_FIELDS == (
        "prompt", "duration", "ratio", "variant", "ref_mode", "media", "resolution",
    )  # fmt: skip


@pytest.mark.parametrize(
    "name, kind, fields, submit, poll",
    [
        (SEEDANCE, "video", ["prompt", "duration", "ratio", "ref_mode", "media"],
         "/api/video/generate", "/api/video/tasks/T1"),
        (GROK, "video", ["prompt", "duration", "ratio"], "/api/video/generate",
         "/api/video/tasks/T1"),
        (VEO, "video", ["prompt", "ratio", "variant", "media"], "/api/video/generate",
         "/api/video/tasks/T1"),
        (IMAGE, "image", ["prompt", "ratio", "resolution"], "/api/image/generate",
         "/api/image/tasks/T1"),
    ],
)  # fmt: skip
def test_each_model_knows_its_kind_fields_and_endpoints(name, kind, fields, submit, poll):
    model = catalog.load().model(name)
    assert model is not None and model.name == name
    assert model.kind == kind
    assert model.fields == fields
    assert model.submit_path == submit
    assert model.poll_path("T1") == poll


def test_an_unknown_model_is_none():
    c = catalog.load()
    assert c.model("sora") is None
    assert c.model(5) is None  # type: ignore[arg-type]


def test_model_defaults_are_copies():
    model = catalog.load().model(IMAGE)
    assert model is not None
    assert model.defaults == {"ratio": "1:1", "resolution": "1k"}
    model.defaults["ratio"] = "9:16"
    assert model.defaults["ratio"] == "1:1"
    assert catalog.load().model(VEO).defaults == {}  # type: ignore[union-attr]


def test_a_model_cannot_be_changed():
    model = catalog.load().model(GROK)
    with pytest.raises(dataclasses.FrozenInstanceError):
        model.name = "x"  # type: ignore[misc, union-attr]


@pytest.mark.parametrize(
    "name, allowed, yes, no",
    [
        (SEEDANCE, "4-15", [4, 5, 15], [3, 16, 0]),
        (GROK, "5, 10, 15", [5, 10, 15], [4, 6, 11, 20]),
    ],
)
def test_durations(name, allowed, yes, no):
    model = catalog.load().model(name)
    assert model is not None
    assert model.allowed_durations() == allowed
    assert all(model.duration_allowed(d) is True for d in yes)
    assert all(model.duration_allowed(d) is False for d in no)


@pytest.mark.parametrize(
    "name, duration, seconds",
    [(SEEDANCE, 5, 80.0), (SEEDANCE, None, 40.0), (FAST, 10, 75.0), (GROK, 15, 80.0),
     (VEO, None, 60.0), (IMAGE, None, 15.0)],
)  # fmt: skip
def test_typical_generation_time_is_base_plus_per_second(name, duration, seconds):
    model = catalog.load().model(name)
    assert model is not None
    assert model.typical_seconds(duration) == seconds
    assert isinstance(model.typical_seconds(duration), float)


# --------------------------------------------------------------------------- check_request


@pytest.mark.parametrize(
    "request_",
    [
        {"model": SEEDANCE, "prompt": "p", "duration": 5, "ratio": "21:9"},
        {"model": FAST, "prompt": "p", "duration": 4},
        {"model": FAST, "prompt": "p", "duration": 15},
        {"model": GROK, "prompt": "p", "duration": 10, "ratio": "2:3"},
        {"model": VEO, "prompt": "p", "variant": "veo3.1-pro", "ratio": "9:16"},
        {"model": VEO, "prompt": "p", "variant": "veo3.1-components",
         "media": [image(), image(), image()]},
        {"model": IMAGE, "prompt": "p", "ratio": "3:4", "resolution": "4k"},
        {"model": SEEDANCE, "prompt": "p", "ref_mode": "omni",
         "media": [image()] * 7 + [video(), audio()]},
        {"model": SEEDANCE, "prompt": "p", "ref_mode": "first-last", "media": [image(), image()]},
        {"model": SEEDANCE, "prompt": "p", "ref_mode": "omni", "media": []},
        {"model": SEEDANCE, "prompt": "p", "ref_mode": "omni"},
        {"model": SEEDANCE, "prompt": "p", "media": []},
        {"model": GROK, "prompt": "p", "duration": None, "ratio": None},
    ],
)  # fmt: skip
def test_requests_the_service_accepts(request_):
    assert check_request(request_) == []


@pytest.mark.parametrize(
    "request_, problems",
    [
        ({"prompt": "p"}, [("model", "model is required")]),
        ({"model": "sora", "prompt": "p"},
         [("model", f"model 'sora' is not known (known: {KNOWN})")]),
        ({"model": GROK}, [("prompt", "prompt is required and must be non-empty text")]),
        ({"model": GROK, "prompt": "  "},
         [("prompt", "prompt is required and must be non-empty text")]),
        ({"model": GROK, "prompt": 5},
         [("prompt", "prompt is required and must be non-empty text")]),
        ({"model": GROK, "prompt": "p", "duration": 7},
         [("duration", f"duration 7 is not allowed for {GROK} (allowed: 5, 10, 15)")]),
        ({"model": SEEDANCE, "prompt": "p", "duration": 16},
         [("duration", f"duration 16 is not allowed for {SEEDANCE} (allowed: 4-15)")]),
        ({"model": SEEDANCE, "prompt": "p", "duration": 3},
         [("duration", f"duration 3 is not allowed for {SEEDANCE} (allowed: 4-15)")]),
        ({"model": SEEDANCE, "prompt": "p", "duration": 5.5},
         [("duration", "duration 5.5 must be a whole number of seconds")]),
        ({"model": SEEDANCE, "prompt": "p", "duration": True},
         [("duration", "duration True must be a whole number of seconds")]),
        ({"model": SEEDANCE, "prompt": "p", "duration": "5"},
         [("duration", "duration '5' must be a whole number of seconds")]),
        ({"model": VEO, "prompt": "p", "variant": "veo3.1-fast", "duration": 8},
         [("duration", f"duration is not accepted by {VEO}")]),
        ({"model": VEO, "prompt": "p"}, [("variant", f"variant is required for {VEO}")]),
        ({"model": VEO, "prompt": "p", "variant": "veo3.1-slow"},
         [("variant", f"variant 'veo3.1-slow' is not allowed for {VEO} "
                      "(allowed: veo3.1-fast, veo3.1-components, veo3.1-pro)")]),
        ({"model": GROK, "prompt": "p", "ratio": "16:9"},
         [("ratio", f"ratio '16:9' is not allowed for {GROK} (allowed: 2:3, 3:2, 1:1)")]),
        ({"model": IMAGE, "prompt": "p", "resolution": "8k"},
         [("resolution", f"resolution '8k' is not allowed for {IMAGE} (allowed: 1k, 2k, 4k)")]),
        ({"model": GROK, "prompt": "p", "resolution": "1k"},
         [("resolution", f"resolution is not accepted by {GROK}")]),
        ({"model": IMAGE, "prompt": "p", "variant": "veo3.1-fast"},
         [("variant", f"variant is not accepted by {IMAGE}")]),
        ({"model": GROK, "prompt": "p", "media": [image()]},
         [("media", f"media is not accepted by {GROK}")]),
        ({"model": GROK, "prompt": "p", "ref_mode": "omni"},
         [("ref_mode", f"ref_mode is not accepted by {GROK}")]),
    ],
)  # fmt: skip
def test_requests_the_service_refuses_and_why(request_, problems):
    assert check_request(request_) == problems


def test_every_problem_is_reported_at_once():
    assert check_request(
        {"model": GROK, "prompt": "", "duration": 7, "ratio": "9:16", "variant": "x"}
    ) == [
        ("prompt", "prompt is required and must be non-empty text"),
        ("variant", f"variant is not accepted by {GROK}"),
        ("duration", f"duration 7 is not allowed for {GROK} (allowed: 5, 10, 15)"),
        ("ratio", f"ratio '9:16' is not allowed for {GROK} (allowed: 2:3, 3:2, 1:1)"),
    ]


OMNI = "ref_mode omni"
FIRST_LAST = "ref_mode first-last"


@pytest.mark.parametrize(
    "request_, problems",
    [
        ({"ref_mode": "middle"},
         [("ref_mode", f"ref_mode 'middle' is not allowed for {SEEDANCE} "
                       "(allowed: omni, first-last)")]),
        ({"media": [image()]},
         [("ref_mode", f"ref_mode is required with media for {SEEDANCE} "
                       "(one of: omni, first-last)")]),
        ({"ref_mode": "omni", "media": "https://x/a.jpg"},
         [("media", "media must be a list of {type, url} items")]),
        ({"ref_mode": "omni", "media": ["https://x/a.jpg"]},
         [("media[0]", "each media item must be {type, url} with a non-empty url")]),
        ({"ref_mode": "omni", "media": [image(), {"type": "image", "url": " "}]},
         [("media[1]", "each media item must be {type, url} with a non-empty url")]),
        ({"ref_mode": "omni", "media": [{"type": "image"}]},
         [("media[0]", "each media item must be {type, url} with a non-empty url")]),
        ({"ref_mode": "omni", "media": [{"type": "image", "url": 5}]},
         [("media[0]", "each media item must be {type, url} with a non-empty url")]),
        ({"ref_mode": "omni", "media": [{**image(), "size": 1}]},
         [("media[0]", "each media item must be {type, url} with a non-empty url")]),
        ({"ref_mode": "omni", "media": [image()] * 10},
         [("media", f"10 media items is more than {OMNI} allows (9)")]),
        ({"ref_mode": "omni", "media": [video(), video()]},
         [("media", f"2 video items is more than {OMNI} allows (1)")]),
        ({"ref_mode": "omni", "media": [{"type": "gif", "url": "https://x/a.gif"}]},
         [("media[0]", f"media type 'gif' is not allowed with {OMNI} "
                       "(allowed: image, video, audio)")]),
        ({"ref_mode": "first-last", "media": [image(), image(), image()]},
         [("media", f"3 media items is more than {FIRST_LAST} allows (2)")]),
        ({"ref_mode": "first-last", "media": [image(), video()]},
         [("media[1]", f"media type 'video' is not allowed with {FIRST_LAST} (allowed: image)")]),
    ],
)  # fmt: skip
def test_seedance_media_follow_the_ref_mode(request_, problems):
    assert check_request({"model": SEEDANCE, "prompt": "p", **request_}) == problems


@pytest.mark.parametrize(
    "request_, problems",
    [
        ({"variant": "veo3.1-fast", "media": [image(), image(), image()]},
         [("media", "3 media items is more than variant veo3.1-fast allows (2)")]),
        ({"variant": "veo3.1-pro", "media": [image(), image(), image()]},
         [("media", "3 media items is more than variant veo3.1-pro allows (2)")]),
        ({"variant": "veo3.1-components", "media": [image()] * 4},
         [("media", "4 media items is more than variant veo3.1-components allows (3)")]),
        ({"variant": "veo3.1-fast", "media": [video()]},
         [("media[0]", "media type 'video' is not allowed with variant veo3.1-fast "
                       "(allowed: image)")]),
        ({"media": [video()]},
         [("variant", f"variant is required for {VEO}"),
          ("media[0]", f"media type 'video' is not allowed with {VEO} (allowed: image)")]),
        ({"variant": "veo3.1-fast", "media": [image()], "ref_mode": "omni"},
         [("ref_mode", f"ref_mode is not accepted by {VEO}")]),
    ],
)  # fmt: skip
def test_veo_media_are_images_up_to_the_variants_limit(request_, problems):
    assert check_request({"model": VEO, "prompt": "p", **request_}) == problems


def test_a_catalog_can_be_given_instead_of_the_packaged_one():
    data = {**catalog.load().data, "models": {GROK: catalog.load().data["models"][GROK]}}
    small = catalog.Catalog(data)
    assert check_request({"model": SEEDANCE, "prompt": "p"}, small) == [
        ("model", f"model '{SEEDANCE}' is not known (known: {GROK})")
    ]
    assert price_micros({"model": GROK, "duration": 5}, small) == 100_000
    assert request_body({"model": GROK, "prompt": "p"}, small)["duration"] == 5


# ---------------------------------------------------------------------------- price_micros


@pytest.mark.parametrize(
    "request_, micros",
    [
        ({"model": SEEDANCE, "duration": 5}, 600_000),
        ({"model": SEEDANCE, "duration": 15}, 1_800_000),
        ({"model": SEEDANCE, "duration": 5, "media": [image(), audio()]}, 600_000),
        ({"model": SEEDANCE, "duration": 5, "media": [image(), video()]}, 1_200_000),
        ({"model": FAST, "duration": 4}, 320_000),
        ({"model": FAST, "duration": 10, "media": [video()]}, 1_600_000),
        ({"model": FAST, "duration": 10, "media": None}, 800_000),
        ({"model": FAST, "duration": 10, "media": ["not a dict"]}, 800_000),
        ({"model": GROK, "duration": 15}, 300_000),
        ({"model": VEO, "variant": "veo3.1-fast"}, 100_000),
        ({"model": VEO, "variant": "veo3.1-components", "media": [image()]}, 150_000),
        ({"model": VEO, "variant": "veo3.1-pro"}, 300_000),
        ({"model": IMAGE, "resolution": "4k"}, 200_000),
    ],
)
def test_prices_are_the_references(request_, micros):
    assert price_micros(request_) == micros


# ---------------------------------------------------------------------------- request_body


@pytest.mark.parametrize(
    "job, body",
    [
        ({"model": GROK, "prompt": "p"}, {"model": GROK, "prompt": "p", "duration": 5}),
        ({"model": GROK, "prompt": "p", "duration": 10, "ratio": "1:1", "tags": ["x"]},
         {"model": GROK, "prompt": "p", "duration": 10, "ratio": "1:1"}),
        ({"model": VEO, "prompt": "p", "variant": "veo3.1-fast", "duration": 5},
         {"model": VEO, "prompt": "p", "variant": "veo3.1-fast"}),
        ({"model": IMAGE, "prompt": "p"},
         {"model": IMAGE, "prompt": "p", "ratio": "1:1", "resolution": "1k"}),
        ({"model": IMAGE, "prompt": "p", "ratio": "3:4", "resolution": "2k"},
         {"model": IMAGE, "prompt": "p", "ratio": "3:4", "resolution": "2k"}),
        ({"model": SEEDANCE, "prompt": "p", "media": [], "ref_mode": "omni"},
         {"model": SEEDANCE, "prompt": "p", "duration": 5, "ref_mode": "omni"}),
        ({"model": SEEDANCE, "prompt": "p", "media": [image()], "ref_mode": "omni"},
         {"model": SEEDANCE, "prompt": "p", "duration": 5, "ref_mode": "omni",
          "media": [image()]}),
    ],
)  # fmt: skip
def test_the_body_sent_is_the_model_then_each_field_it_takes(job, body):
    sent = request_body(job)
    assert sent == body
    assert list(sent) == list(body)  # in the reference's order


def test_the_catalog_cannot_be_changed():
    with pytest.raises(dataclasses.FrozenInstanceError):
        catalog.load().data = {}  # type: ignore[misc]


@pytest.mark.parametrize("use", [price_micros, request_body])
def test_pricing_or_sending_an_unknown_model_is_a_bug_that_names_it(use):
    with pytest.raises(AssertionError) as bug:
        use({"model": "sora", "prompt": "p"})
    assert bug.value.args == ("sora",)


@pytest.mark.parametrize(
    "task_id, segment",
    [
        ("abc-123_x.y~z", "abc-123_x.y~z"),
        ("a/b", "a%2Fb"),
        ("x?admin=1", "x%3Fadmin%3D1"),
        ("../../generate", "..%2F..%2Fgenerate"),
        (".", "%2E"),
        ("..", "%2E%2E"),
        ("...", "%2E%2E%2E"),
        ("a.", "a."),
        ("X.X", "X.X"),
        ("任务", "%E4%BB%BB%E5%8A%A1"),
    ],
)
def test_a_task_id_is_sent_as_one_path_segment(task_id, segment):
    assert catalog.path_segment(task_id) == segment
    model = catalog.load().model(GROK)
    assert model is not None and model.poll_path(task_id) == f"/api/video/tasks/{segment}"


def test_the_catalog_gives_the_words_a_content_refusal_holds():
    phrases = catalog.load().refusal_phrases
    assert "content policy" in phrases and all(isinstance(p, str) and p for p in phrases)
