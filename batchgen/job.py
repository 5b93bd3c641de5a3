"""An expanded job: what the manifest asks for, ready for the ledger and the service."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from batchgen import catalog


def canonical_json(value: Any) -> str:
    """One spelling per value: sorted keys, no spaces, UTF-8 kept."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def fingerprint(request: dict[str, Any], tags: list[str]) -> str:
    """SHA-256 of a request body and tags: equal fingerprints mean the same job content."""
    content = {"request": request, "tags": sorted(tags)}
    return hashlib.sha256(canonical_json(content).encode()).hexdigest()


@dataclass(slots=True)
class Job:
    campaign: str
    id: str
    model: str
    prompt: str
    duration: int | None = None
    ratio: str | None = None
    variant: str | None = None
    ref_mode: str | None = None
    resolution: str | None = None
    media: list[dict[str, str]] | None = None
    tags: list[str] = field(default_factory=list)

    def request(self) -> dict[str, Any]:
        """The JSON body POSTed for this job (catalog defaults filled in)."""
        return catalog.request_body(
            {
                "model": self.model,
                "prompt": self.prompt,
                "duration": self.duration,
                "ratio": self.ratio,
                "variant": self.variant,
                "ref_mode": self.ref_mode,
                "resolution": self.resolution,
                "media": self.media,
            }
        )

    def fingerprint(self) -> str:
        return fingerprint(self.request(), self.tags)

    def cost_micros(self) -> int:
        """The price of one accepted attempt."""
        return catalog.price_micros(self.request())


@dataclass
class Campaign:
    name: str
    manifest_path: str
    manifest_sha256: str
    budget_micros: int | None
