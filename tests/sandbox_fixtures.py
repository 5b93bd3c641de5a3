"""pytest fixtures that serve the sandbox on 127.0.0.1 for a test, and stop it afterwards.

Use from conftest (`pytest_plugins = ["tests.sandbox_fixtures"]`) or import the fixtures:

    def test_something(sandbox):            # time_scale 0.01: a 5 s Seedance task ~0.8 s
        r = httpx.post(sandbox.base_url + "/api/video/generate", headers=sandbox.headers(), ...)
        assert sandbox.truth().charged_micros() == ...

    def test_faults(make_sandbox):
        sb = make_sandbox(fail_rate=0.5, seed=3, clock=ManualClock())
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from batchgen.sandbox import Sandbox, SandboxConfig, Served, Truth, serve


class ManualClock:
    """A clock that moves only when told: `clock()` reads it, `advance(s)` moves it."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class RunningSandbox:
    """A sandbox served for one test: `.base_url`, `.key` (its first key), `.keys` (all of
    them, in the order configured), `.sim` (the Sandbox itself)."""

    sim: Sandbox
    served: Served
    key: str
    _clients: list[httpx.Client] = field(default_factory=list)

    @property
    def base_url(self) -> str:
        return self.served.base_url

    def headers(self, key: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {key or self.key}"}

    @property
    def keys(self) -> list[str]:
        return list(self.sim.config.keys)

    def env(self, keys: Iterable[str] | None = None) -> dict[str, str]:
        """The environment that points batchgen at this sandbox: OKAYPIC_API_KEY for one
        key, OKAYPIC_API_KEYS (comma-separated) for several. `keys`: the entries to hand
        batchgen (each a key or `name=key`), by default every key of the sandbox."""
        entries = self.keys if keys is None else list(keys)
        if len(entries) == 1:
            return {"OKAYPIC_BASE_URL": self.base_url, "OKAYPIC_API_KEY": entries[0]}
        return {"OKAYPIC_BASE_URL": self.base_url, "OKAYPIC_API_KEYS": ",".join(entries)}

    def client(self, **kwargs: Any) -> httpx.Client:
        """An httpx client on this sandbox with its key (closed when the sandbox stops)."""
        kwargs.setdefault("timeout", 5.0)
        client = httpx.Client(base_url=self.base_url, headers=self.headers(), **kwargs)
        self._clients.append(client)
        return client

    def truth(self) -> Truth:
        return self.sim.truth()

    def stop(self) -> None:
        for client in self._clients:
            client.close()
        self.served.stop()


MakeSandbox = Callable[..., RunningSandbox]


@pytest.fixture
def make_sandbox() -> Iterator[MakeSandbox]:
    """A factory: `make_sandbox(clock=None, verbose=False, **SandboxConfig fields)`."""
    started: list[RunningSandbox] = []

    def make(
        *, clock: Callable[[], float] | None = None, verbose: bool = False, **config: Any
    ) -> RunningSandbox:
        settings = SandboxConfig(**config)
        sim = Sandbox(settings) if clock is None else Sandbox(settings, clock=clock)
        running = RunningSandbox(sim, serve(sim, verbose=verbose), next(iter(settings.keys)))
        started.append(running)
        return running

    yield make
    for running in started:
        running.stop()


@pytest.fixture
def sandbox(make_sandbox: MakeSandbox) -> RunningSandbox:
    """A fault-free sandbox at 1/100 of the catalog's typical generation times."""
    return make_sandbox(time_scale=0.01)


@pytest.fixture
def sandbox_env(sandbox: RunningSandbox, monkeypatch: pytest.MonkeyPatch) -> RunningSandbox:
    """`sandbox`, with OKAYPIC_BASE_URL and OKAYPIC_API_KEY pointing at it for the test."""
    for name, value in sandbox.env().items():
        monkeypatch.setenv(name, value)
    return sandbox
