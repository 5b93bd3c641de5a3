"""API keys (PRODUCT.md §6, §7): read from the environment only, checked, shown by label,
and redacted from every text a service echoes back, before it is stored or shown."""

from __future__ import annotations

import asyncio
import hashlib
import json

import httpx
import pytest

from batchgen.client import Client
from batchgen.errors import AuthError
from batchgen.keys import Redactor, api_key, label
from batchgen.outcomes import Transport
from tests.e2e import batchgen, grok_batch, rows

KEY = "okpk_live_9f3kQ2"


def test_the_label_of_an_unnamed_key_is_key_and_8_hex_digits_of_its_sha256():
    assert label(KEY) == "key-" + hashlib.sha256(KEY.encode()).hexdigest()[:8]
    assert label(KEY) != label(KEY + "x")


def test_a_key_is_read_from_the_environment_with_its_surrounding_blanks_dropped():
    assert api_key({"OKAYPIC_API_KEY": f"  {KEY}\n"}) == KEY


@pytest.mark.parametrize(
    ("value", "what"),
    [
        ("okpk_ab\ncd", "a line break"),
        ("okpk_ab\rcd", "a line break"),
        ("okpk_ab cd", "a space"),
        ("okpk_ab\tcd", "a space"),
        ("okpk_ab\x00cd", "a control character"),
        ("okpk_abécd", "a non-ASCII character"),
        ("okpk_ab\u200bcd", "a non-ASCII character"),
    ],
)
def test_a_key_that_cannot_be_a_bearer_token_is_refused_naming_the_variable_not_the_key(
    value, what
):
    with pytest.raises(AuthError) as refused:
        api_key({"OKAYPIC_API_KEY": value})
    message = str(refused.value)
    assert refused.value.exit_code == 4
    assert "OKAYPIC_API_KEY" in message and what in message
    assert "okpk_ab" not in message


def test_a_missing_key_is_refused_naming_the_variable():
    with pytest.raises(AuthError, match="OKAYPIC_API_KEY is missing"):
        api_key({})


def test_the_redactor_replaces_each_key_it_holds_by_its_label_also_escaped_forms():
    other = 'okpk_"odd"/key\\x'
    redact = Redactor([KEY, other])
    text = (
        f"bad token {KEY}; Bearer {other}; json {json.dumps(other)}; "
        f'url ?key=okpk_%22odd%22%2Fkey%5Cx; php okpk_"odd"\\/key\\x'
    )
    shown = redact(text)
    assert KEY not in shown and "okpk_" not in shown
    assert f"[{label(KEY)}]" in shown and f"[{label(other)}]" in shown
    assert redact.bytes(text.encode()) == shown.encode()
    assert redact.text(None) is None
    assert Redactor()("nothing to hide") == "nothing to hide"


def test_a_key_holding_another_key_is_replaced_whole():
    assert Redactor(["okpk_a", "okpk_abc"])("x okpk_abc y") == f"x [{label('okpk_abc')}] y"


# ---------------------------------------------------------------------- at the client


def _client(handler) -> Client:
    return Client("http://service", KEY, transport=httpx.MockTransport(handler))


def _ask(client: Client, method: str):
    async def go():
        try:
            if method == "POST":
                return await client.submit("/api/video/generate", {"model": "m"})
            return await client.poll("/api/video/tasks/t")
        finally:
            await client.aclose()

    return asyncio.run(go())


@pytest.mark.parametrize("method", ["POST", "GET"])
def test_the_client_hands_on_no_answer_body_holding_the_key(method):
    def echo(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            401, json={"error": f"invalid token {request.headers['Authorization']}"}
        )

    answer = _ask(_client(echo), method)
    assert answer.status == 401
    assert KEY.encode() not in answer.body
    assert label(KEY).encode() in answer.body
    json.loads(answer.body)  # still the service's JSON


def test_the_client_hands_on_no_redirect_location_holding_the_key():
    def redirect(request: httpx.Request) -> httpx.Response:
        token = request.headers["Authorization"].split()[-1]
        return httpx.Response(302, headers={"Location": f"https://elsewhere/login?token={token}"})

    answer = _ask(_client(redirect), "POST")
    assert answer.status == 302 and answer.location is not None
    assert KEY not in answer.location and label(KEY) in answer.location


def test_the_client_hands_on_no_transport_error_holding_the_key():
    def fail(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadError(f"reset while sending {request.headers['Authorization']}")

    answer = _ask(_client(fail), "POST")
    assert answer.transport is Transport.LOST
    assert answer.error is not None and KEY not in answer.error


# ---------------------------------------------------------------------- the command


@pytest.mark.parametrize("key", ["okpk_first\nsecond_half", "okpk_clé_secrète"])
def test_a_key_with_a_line_break_or_non_ascii_exits_4_in_one_line_never_showing_it(
    make_sandbox, tmp_path, key
):
    sandbox = make_sandbox(time_scale=0.01)
    ledger = tmp_path / "l.db"
    manifest = grok_batch(tmp_path / "m.yaml", 2)
    for args in (("run", str(manifest)), ("resume",)):
        result = batchgen(*args, ledger=ledger, base_url=sandbox.base_url, key=key)
        assert result.returncode == 4, result.stderr
        assert "Traceback" not in result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "OKAYPIC_API_KEY" in lines[0], result.stderr
        for part in ("okpk_first", "second_half", "okpk_cl", "secr"):
            assert part not in result.stdout + result.stderr
    assert sandbox.sim.truth().submissions == []
    if ledger.exists():
        assert rows(ledger, "SELECT COUNT(*) AS n FROM attempts")[0]["n"] == 0
        for path in tmp_path.iterdir():
            assert b"second_half" not in path.read_bytes() and b"secr" not in path.read_bytes()
