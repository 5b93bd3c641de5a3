"""What a job costs, held to the price table of okaypic-api.txt (hypothesis).

The table is restated here by hand from the service's reference, independently of
batchgen's catalog, so a wrong catalog entry or a wrong pricing rule fails a test. Every
generated request is one the service accepts (checked), and its price is checked where
batchgen computes it (catalog.price_micros, Job.cost_micros, the ledger's ingest) and
where the simulated service charges it (the sandbox's truth).
"""

from __future__ import annotations

import json
import tempfile
from decimal import Decimal
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from batchgen import catalog
from batchgen.job import Job
from batchgen.money import to_micros, usd
from batchgen.sandbox import Sandbox, SandboxConfig
from tests.builders import make_ledger

# okaypic-api.txt, by hand: model -> ($/s, $/s with a video reference or None)
PER_SECOND = {
    "jimeng-video-seedance-2.0": (Decimal("0.12"), Decimal("0.24")),
    "jimeng-video-seedance-2.0-fast": (Decimal("0.08"), Decimal("0.16")),
    "grok-video-3": (Decimal("0.02"), None),
}
DURATIONS = {
    "jimeng-video-seedance-2.0": list(range(4, 16)),
    "jimeng-video-seedance-2.0-fast": list(range(4, 16)),
    "grok-video-3": [5, 10, 15],
}
RATIOS = {
    "jimeng-video-seedance-2.0": ["16:9", "9:16", "1:1", "4:3", "3:4", "3:2", "2:3", "21:9"],
    "jimeng-video-seedance-2.0-fast": ["16:9", "9:16", "1:1", "4:3", "3:4", "3:2", "2:3", "21:9"],
    "grok-video-3": ["2:3", "3:2", "1:1"],
    "veo3.1": ["16:9", "9:16"],
    "jimeng-5.0": ["1:1", "16:9", "9:16", "4:3", "3:4", "3:2", "2:3", "21:9"],
}
VEO_VARIANTS = {  # variant -> (flat $, max images)
    "veo3.1-fast": (Decimal("0.10"), 2),
    "veo3.1-components": (Decimal("0.15"), 3),
    "veo3.1-pro": (Decimal("0.30"), 2),
}
IMAGE_PRICE = Decimal("0.20")  # jimeng-5.0, per image
RESOLUTIONS = ["1k", "2k", "4k"]
DEFAULT_SECONDS = 5  # PRODUCT.md §2: an omitted duration is sent as the catalog default, 5 s

SEEDANCE = ["jimeng-video-seedance-2.0", "jimeng-video-seedance-2.0-fast"]
prompts = st.text(min_size=1, max_size=40).filter(str.strip)


def url(kind: str, i: int) -> str:
    return f"https://example.com/ref-{i}.{ {'image': 'jpg', 'video': 'mp4', 'audio': 'mp3'}[kind] }"


def media(kinds: list[str]) -> list[dict[str, str]]:
    return [{"type": kind, "url": url(kind, i)} for i, kind in enumerate(kinds)]


@st.composite
def seedance(draw: Any) -> tuple[dict[str, Any], Decimal]:
    model = draw(st.sampled_from(SEEDANCE))
    seconds = draw(st.sampled_from(DURATIONS[model]))
    request: dict[str, Any] = {
        "model": model,
        "prompt": draw(prompts),
        "duration": seconds,
        "ratio": draw(st.sampled_from(RATIOS[model])),
    }
    mode = draw(st.sampled_from([None, "omni", "first-last"]))
    kinds: list[str] = []
    if mode == "omni":  # 0-9 items, images/video/audio, at most one video
        kinds = draw(st.lists(st.sampled_from(["image", "audio"]), max_size=8))
        if draw(st.booleans()):
            kinds.insert(draw(st.integers(0, len(kinds))), "video")
    elif mode == "first-last":  # 0-2 images
        kinds = ["image"] * draw(st.integers(0, 2))
    if mode is not None:
        request["ref_mode"] = mode
        if kinds:
            request["media"] = media(kinds)
    rate, video_rate = PER_SECOND[model]
    return request, ((video_rate if "video" in kinds else rate) * seconds)


@st.composite
def grok(draw: Any) -> tuple[dict[str, Any], Decimal]:
    seconds = draw(st.sampled_from(DURATIONS["grok-video-3"]))
    request = {
        "model": "grok-video-3",
        "prompt": draw(prompts),
        "duration": seconds,
        "ratio": draw(st.sampled_from(RATIOS["grok-video-3"])),
    }
    return request, PER_SECOND["grok-video-3"][0] * seconds


@st.composite
def veo(draw: Any) -> tuple[dict[str, Any], Decimal]:
    variant = draw(st.sampled_from(sorted(VEO_VARIANTS)))
    price, max_images = VEO_VARIANTS[variant]
    request: dict[str, Any] = {
        "model": "veo3.1",
        "prompt": draw(prompts),
        "variant": variant,
        "ratio": draw(st.sampled_from(RATIOS["veo3.1"])),
    }
    images = draw(st.integers(0, max_images))
    if images:
        request["media"] = media(["image"] * images)
    return request, price


@st.composite
def image(draw: Any) -> tuple[dict[str, Any], Decimal]:
    request = {
        "model": "jimeng-5.0",
        "prompt": draw(prompts),
        "ratio": draw(st.sampled_from(RATIOS["jimeng-5.0"])),
        "resolution": draw(st.sampled_from(RESOLUTIONS)),
    }
    return request, IMAGE_PRICE


priced_requests = st.one_of(seedance(), grok(), veo(), image())


def as_job(request: dict[str, Any], job_id: str = "j") -> Job:
    fields = {k: v for k, v in request.items() if k != "model"}
    return Job("c", job_id, request["model"], **fields)


@given(priced_requests)
def test_the_price_of_every_accepted_request_is_the_reference_table_price(priced):
    request, expected = priced
    assert catalog.check_request(request) == [], "the strategy made a request the service refuses"
    assert catalog.price_micros(request) == to_micros(expected)
    assert as_job(request).cost_micros() == to_micros(expected)


@given(st.sampled_from(SEEDANCE), st.sampled_from(DURATIONS[SEEDANCE[0]]), st.data())
def test_a_video_reference_doubles_the_per_second_rate_and_nothing_else_does(model, seconds, data):
    others = data.draw(st.lists(st.sampled_from(["image", "audio"]), max_size=8))
    base = {"model": model, "prompt": "p", "duration": seconds, "ratio": "16:9"}
    plain = catalog.price_micros(base)
    with_others = {**base, "ref_mode": "omni", "media": media(others)} if others else base
    with_video = {**base, "ref_mode": "omni", "media": media([*others, "video"])}
    assert catalog.check_request(with_video) == []
    assert catalog.price_micros(with_others) == plain, "images or audio change the price"
    assert catalog.price_micros(with_video) == 2 * plain
    assert plain == to_micros(PER_SECOND[model][0] * seconds)


@given(st.sampled_from(sorted(PER_SECOND)), prompts)
def test_a_per_second_job_without_a_duration_is_sent_and_priced_at_5_seconds(model, prompt):
    job = Job("c", "j", model, prompt)
    assert job.request()["duration"] == DEFAULT_SECONDS
    assert job.cost_micros() == to_micros(PER_SECOND[model][0] * DEFAULT_SECONDS)


@given(priced_requests, st.data())
def test_prompt_ratio_resolution_and_reference_images_never_change_the_price(priced, data):
    request, price = priced
    model = request["model"]
    varied = {**request, "prompt": data.draw(prompts)}
    varied["ratio"] = data.draw(st.sampled_from(RATIOS[model]))
    if "resolution" in request:
        varied["resolution"] = data.draw(st.sampled_from(RESOLUTIONS))
    if model == "veo3.1":
        images = data.draw(st.integers(0, VEO_VARIANTS[request["variant"]][1]))
        varied.pop("media", None)
        if images:
            varied["media"] = media(["image"] * images)
    assert catalog.check_request(varied) == []
    assert catalog.price_micros(varied) == to_micros(price)


@settings(max_examples=25, deadline=None)
@given(st.lists(priced_requests, min_size=1, max_size=12))
def test_the_ledger_prices_each_job_and_the_service_charges_the_same(priced):
    """What the ledger records as each job's price is what the (simulated) service charges
    when it accepts the job: batchgen's budget and spend rest on this."""
    jobs = [as_job(request, f"j{i}") for i, (request, _) in enumerate(priced)]
    with tempfile.TemporaryDirectory() as folder:
        ledger = make_ledger(Path(folder) / "l.db", jobs)
        try:
            prices = {
                r["id"]: r["price_micro_usd"]
                for r in ledger.query("SELECT id, price_micro_usd FROM jobs")
            }
        finally:
            ledger.close()
    expected = {f"j{i}": to_micros(price) for i, (_, price) in enumerate(priced)}
    assert prices == expected

    service = Sandbox(SandboxConfig(keys={"k": 10**12}, max_active_tasks=100), clock=lambda: 0.0)
    for job in jobs:
        model = catalog.load().model(job.model)
        assert model is not None
        body = json.dumps(job.request()).encode()
        answer = service.handle("POST", model.submit_path, {"Authorization": "Bearer k"}, body)
        assert answer.status == 200, answer
        charged = service.truth().money[-1]
        assert (charged.kind, charged.micros) == ("charge", expected[job.id])


@given(st.integers(min_value=-(10**15), max_value=10**15))
def test_money_text_is_exact_with_two_or_more_decimals(micros):
    text = usd(micros)
    whole, _, decimals = text.partition(".")
    assert len(decimals) >= 2
    assert to_micros(text) == micros
    assert Decimal(text) * 1_000_000 == micros


@given(st.lists(priced_requests, max_size=30))
def test_sums_of_prices_are_exact(priced):
    total = sum(catalog.price_micros(request) for request, _ in priced)
    assert Decimal(usd(total)) == sum((price for _, price in priced), Decimal(0))
