"""The model catalog (catalog.json): every fact about models, prices and limits, as data.

The manifest validator and the sandbox both check requests with `check_request`, so the
two can never disagree about what the service accepts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any
from urllib.parse import quote

from batchgen.money import to_micros

REQUEST_FIELDS = ("prompt", "duration", "ratio", "variant", "ref_mode", "media", "resolution")


def path_segment(text: str) -> str:
    """`text` as one URL path segment: every reserved character escaped, and a segment of
    dots only ("." or "..", which URL normalization would resolve) escaped as well."""
    segment = quote(text, safe="")
    return segment.replace(".", "%2E") if segment.strip(".") == "" else segment


@dataclass(frozen=True)
class Model:
    name: str
    spec: dict[str, Any]
    endpoints: dict[str, str]

    @property
    def kind(self) -> str:
        return str(self.spec["kind"])

    @property
    def fields(self) -> list[str]:
        return list(self.spec["fields"])

    @property
    def defaults(self) -> dict[str, Any]:
        return dict(self.spec.get("defaults", {}))

    @property
    def submit_path(self) -> str:
        return self.endpoints["submit"]

    def poll_path(self, task_id: str) -> str:
        """The poll endpoint of a task: its id as ONE percent-escaped path segment, so an
        id like `../../generate` or `x?admin=1` can reach no other endpoint."""
        return self.endpoints["poll"].format(task_id=path_segment(task_id))

    def allowed_durations(self) -> str:
        rule = self.spec.get("durations", {})
        if "values" in rule:
            return ", ".join(str(v) for v in rule["values"])
        return f"{rule['min']}-{rule['max']}"

    def duration_allowed(self, duration: int) -> bool:
        rule = self.spec.get("durations", {})
        if "values" in rule:
            return duration in rule["values"]
        return bool(rule["min"] <= duration <= rule["max"])

    def typical_seconds(self, duration: int | None) -> float:
        t = self.spec["typical_generation_seconds"]
        return float(t["base"] + t["per_second"] * (duration or 0))


@dataclass(frozen=True)
class Catalog:
    data: dict[str, Any]

    @property
    def models(self) -> dict[str, Model]:
        return {name: self.model(name) for name in self.data["models"]}  # type: ignore[misc]

    def model(self, name: str) -> Model | None:
        spec = self.data["models"].get(name) if isinstance(name, str) else None
        if spec is None:
            return None
        return Model(name, spec, self.data["endpoints"][spec["kind"]])

    @property
    def base_url(self) -> str:
        return str(self.data["service"]["base_url"])

    @property
    def max_active_tasks(self) -> int:
        return int(self.data["service"]["max_active_tasks_per_key"])

    @property
    def failed_tasks_refunded(self) -> bool:
        return bool(self.data["service"]["failed_tasks_refunded"])

    @property
    def refusal_phrases(self) -> tuple[str, ...]:
        """Words of a message refusing a prompt or its output for content reasons (PRODUCT
        §2), matched anywhere in it, in any case (see outcomes.is_refusal)."""
        return tuple(self.data["service"].get("refusal_phrases", ()))


@cache
def load() -> Catalog:
    text = resources.files("batchgen").joinpath("catalog.json").read_text(encoding="utf-8")
    return Catalog(json.loads(text))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_request(request: dict[str, Any], catalog: Catalog | None = None) -> list[tuple[str, str]]:
    """Every way `request` (model + request fields) breaks the catalog, as (field, message).

    An empty list means the service should accept it. Fields that are absent or None are
    not sent and so are not checked, except where the catalog requires them.
    """
    catalog = catalog or load()
    name = request.get("model")
    if name is None:
        return [("model", "model is required")]
    model = catalog.model(name)
    if model is None:
        known = ", ".join(catalog.data["models"])
        return [("model", f"model {name!r} is not known (known: {known})")]
    problems: list[tuple[str, str]] = []
    spec = model.spec

    prompt = request.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        problems.append(("prompt", "prompt is required and must be non-empty text"))

    for field in REQUEST_FIELDS:
        if request.get(field) is not None and field not in model.fields:
            problems.append((field, f"{field} is not accepted by {name}"))
    for field in spec.get("required", []):
        if request.get(field) is None:
            problems.append((field, f"{field} is required for {name}"))

    duration = request.get("duration")
    if duration is not None and "duration" in model.fields:
        if not _is_int(duration):
            problems.append(
                ("duration", f"duration {duration!r} must be a whole number of seconds")
            )
        elif not model.duration_allowed(duration):
            problems.append(
                (
                    "duration",
                    f"duration {duration} is not allowed for {name} "
                    f"(allowed: {model.allowed_durations()})",
                )
            )

    for field, allowed in (
        ("ratio", spec.get("ratios")),
        ("resolution", spec.get("resolutions")),
        ("variant", list(spec.get("variants", {})) or None),
    ):
        value = request.get(field)
        if value is not None and allowed is not None and value not in allowed:
            problems.append(
                (
                    field,
                    f"{field} {value!r} is not allowed for {name} (allowed: {', '.join(allowed)})",
                )
            )

    problems.extend(_check_media(request, model))
    return problems


def _check_media(request: dict[str, Any], model: Model) -> list[tuple[str, str]]:
    name, spec = model.name, model.spec
    media = request.get("media")
    ref_mode = request.get("ref_mode")
    ref_modes: dict[str, Any] = spec.get("ref_modes", {})
    problems: list[tuple[str, str]] = []
    if ref_mode is not None and "ref_mode" in model.fields and ref_mode not in ref_modes:
        allowed = ", ".join(ref_modes)
        problems.append(
            ("ref_mode", f"ref_mode {ref_mode!r} is not allowed for {name} (allowed: {allowed})")
        )
    if media is None or "media" not in model.fields:
        return problems
    if not isinstance(media, list):
        return problems + [("media", "media must be a list of {type, url} items")]
    types: list[str] = []
    for i, item in enumerate(media):
        if (
            not isinstance(item, dict)
            or not isinstance(item.get("url"), str)
            or not item["url"].strip()
            or set(item) - {"type", "url"}
        ):
            problems.append(
                (f"media[{i}]", "each media item must be {type, url} with a non-empty url")
            )
            continue
        types.append(str(item.get("type")))

    if ref_modes:  # Seedance: the ref_mode decides what media may be sent
        if media and ref_mode is None:
            problems.append(
                (
                    "ref_mode",
                    f"ref_mode is required with media for {name} (one of: {', '.join(ref_modes)})",
                )
            )
            return problems
        rule = ref_modes.get(ref_mode) if isinstance(ref_mode, str) else None
        if rule is None:
            return problems
        where = f"ref_mode {ref_mode}"
        allowed_types, max_items, max_per_type = (
            rule["types"],
            rule["max_items"],
            rule["max_per_type"],
        )
    else:  # e.g. Veo: images only, as many as the variant allows
        where = name
        allowed_types = spec.get("media_types", [])
        variant = spec.get("variants", {}).get(request.get("variant"))
        max_items = variant["max_images"] if variant else None
        max_per_type = {}
        if variant:
            where = f"variant {request.get('variant')}"
    for i, kind in enumerate(types):
        if kind not in allowed_types:
            problems.append(
                (
                    f"media[{i}]",
                    f"media type {kind!r} is not allowed with {where} "
                    f"(allowed: {', '.join(allowed_types)})",
                )
            )
    if max_items is not None and len(media) > max_items:
        problems.append(
            ("media", f"{len(media)} media items is more than {where} allows ({max_items})")
        )
    for kind, limit in max_per_type.items():
        count = types.count(kind)
        if count > limit:
            problems.append(
                ("media", f"{count} {kind} items is more than {where} allows ({limit})")
            )
    return problems


def price_micros(request: dict[str, Any], catalog: Catalog | None = None) -> int:
    """What one accepted task of `request` costs, in micro-dollars (request must be valid)."""
    catalog = catalog or load()
    model = catalog.model(request["model"])
    assert model is not None, request["model"]
    pricing = model.spec.get("pricing", {})
    if "per_second_usd" in pricing:
        rate = pricing["per_second_usd"]
        has_video = any(
            isinstance(m, dict) and m.get("type") == "video" for m in request.get("media") or []
        )
        if has_video and "per_second_with_video_ref_usd" in pricing:
            rate = pricing["per_second_with_video_ref_usd"]
        return to_micros(rate) * int(request["duration"])
    if "variants" in model.spec:
        return to_micros(model.spec["variants"][request["variant"]]["price_usd"])
    return to_micros(pricing["price_usd"])


def request_body(job: dict[str, Any], catalog: Catalog | None = None) -> dict[str, Any]:
    """The JSON body to POST for a job: the model, then each request field the model takes."""
    catalog = catalog or load()
    model = catalog.model(job["model"])
    assert model is not None, job["model"]
    body: dict[str, Any] = {"model": model.name}
    for field in REQUEST_FIELDS:
        value = job.get(field)
        if value is None:
            value = model.defaults.get(field)
        if value is not None and field in model.fields:
            if field == "media" and not value:
                continue
            body[field] = value
    return body
