"""API keys (PRODUCT.md §6, §7): read from the environment only, checked, shown by label,
and redacted from every text a service echoes back, before it is stored or shown."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json

import httpx
import pytest

from batchgen.client import Client
from batchgen.errors import AuthError
from batchgen.keys import (
    SANDBOX_KEY,
    ApiKey,
    Redactor,
    api_keys,
    check,
    given,
    is_hash_label,
    label,
)
from batchgen.outcomes import Transport

KEY = "okpk_live_9f3kQ2"


def test_the_label_of_an_unnamed_key_is_key_and_8_hex_digits_of_its_sha256():
    assert label(KEY) == "key-" + hashlib.sha256(KEY.encode()).hexdigest()[:8]
    assert label(KEY) != label(KEY + "x")


def test_a_key_is_read_from_the_environment_with_its_surrounding_blanks_dropped():
    assert api_keys({"OKAYPIC_API_KEY": f"  {KEY}\n"})[0].secret == KEY


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
        api_keys({"OKAYPIC_API_KEY": value})
    message = str(refused.value)
    assert refused.value.exit_code == 4
    assert "OKAYPIC_API_KEY" in message and what in message
    assert "okpk_ab" not in message


@pytest.mark.parametrize(
    ("value", "place", "what"),
    [
        ("okpk\nab", 5, "a line break"),
        (" okpk", 1, "a space"),
        ("okpk\x7f", 5, "a control character"),
        ("okpk\x80", 5, "a non-ASCII character"),  # the first past ASCII
    ],
)
def test_a_refused_key_is_told_by_the_place_and_kind_of_its_first_bad_character(value, place, what):
    with pytest.raises(AuthError) as refused:
        check(value, "OKAYPIC_API_KEYS (entry 2)")
    assert str(refused.value) == (
        f"OKAYPIC_API_KEYS (entry 2) is not a usable API key: character {place} is {what} "
        "(a key is printable ASCII without spaces); set it again from the key your okaypic "
        "account shows"
    )


def test_a_key_may_hold_any_printable_ascii_from_exclamation_mark_to_tilde():
    check("!okpk_~")  # no error


def test_a_key_from_an_environment_with_undecodable_bytes_still_has_a_label_and_is_redacted():
    """Python reads such bytes as lone surrogates: the key is refused, but can be named
    and kept out of an answer's bytes."""
    odd = "okpk_\udcff"
    assert label(odd) == "key-" + hashlib.sha256(b"okpk_\xed\xb3\xbf").hexdigest()[:8]
    assert Redactor([odd]).bytes(b"said okpk_\xed\xb3\xbf") == f"said [{label(odd)}]".encode()


def test_an_unnamed_keys_label_is_told_from_a_name_by_its_form():
    assert is_hash_label(label(KEY))
    assert not is_hash_label("studio")
    assert not is_hash_label("key-1a2b3c4")  # 7 digits
    assert not is_hash_label("key-1A2B3C4D")  # the digest is lower case


def test_the_sandbox_demo_key_is_the_one_the_docs_give():
    assert SANDBOX_KEY == "okpk_sandbox_demo"


def test_a_key_is_given_when_either_variable_holds_key_text_usable_or_not():
    assert given({"OKAYPIC_API_KEY": "okpk a"})
    assert given({"OKAYPIC_API_KEYS": " , okpk_a"})
    assert not given({"OKAYPIC_API_KEYS": " , ", "OKAYPIC_API_KEY": " "})


def test_a_missing_key_is_refused_naming_the_variable():
    with pytest.raises(AuthError, match="OKAYPIC_API_KEY is missing"):
        api_keys({})


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


# ---------------------------------------------------------------- several keys (§6)


def _keys(value: str, single: str | None = None) -> list[tuple[str, str]]:
    env = {"OKAYPIC_API_KEYS": value}
    if single is not None:
        env["OKAYPIC_API_KEY"] = single
    return [(k.label, k.secret) for k in api_keys(env)]


def test_several_keys_are_read_in_order_named_or_labelled_by_their_hash():
    assert _keys("studio=okpk_a, okpk_b ,night=okpk_c") == [
        ("studio", "okpk_a"),
        (label("okpk_b"), "okpk_b"),
        ("night", "okpk_c"),
    ]


def test_blank_entries_are_skipped_and_the_single_key_variable_is_the_fallback():
    assert _keys(",okpk_a,, ,") == [(label("okpk_a"), "okpk_a")]
    assert _keys(" , ", single="okpk_z") == [(label("okpk_z"), "okpk_z")]
    # Both set: OKAYPIC_API_KEYS wins.
    assert _keys("okpk_a", single="okpk_z") == [(label("okpk_a"), "okpk_a")]


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ("a=okpk_1", ("a", "okpk_1")),  # the shortest name
        ("A.b_c-9=okpk_1", ("A.b_c-9", "okpk_1")),
        ("x" * 40 + "=okpk_1", ("x" * 40, "okpk_1")),  # the longest name
        # Not a name before the `=`: the whole entry is an unnamed key.
        ("x" * 41 + "=okpk_1", (label("x" * 41 + "=okpk_1"), "x" * 41 + "=okpk_1")),
        ("-a=okpk_1", (label("-a=okpk_1"), "-a=okpk_1")),
        ("okpkAbc==", (label("okpkAbc=="), "okpkAbc==")),  # a base64 key's padding
        ("okpk=", (label("okpk="), "okpk=")),
    ],
)
def test_a_name_is_what_precedes_the_first_equals_sign_when_it_is_a_valid_name(entry, expected):
    assert _keys(entry) == [expected]


def test_a_named_key_that_cannot_be_a_bearer_token_is_refused_naming_the_entry_not_the_key():
    with pytest.raises(AuthError) as caught:
        api_keys({"OKAYPIC_API_KEYS": "okpk_a,night=okpk b"})
    message = str(caught.value)
    assert message.startswith("OKAYPIC_API_KEYS (entry 2) is not a usable API key: ")
    assert "okpk b" not in message and "okpk_a" not in message


@pytest.mark.parametrize(
    "value",
    ["studio=okpk_a,studio=okpk_b", "okpk_a,okpk_a", "one=okpk_a,two=okpk_a"],
)
def test_two_entries_with_one_label_or_one_key_are_refused_naming_the_entries(value):
    with pytest.raises(AuthError) as caught:
        api_keys({"OKAYPIC_API_KEYS": value})
    assert str(caught.value).startswith("OKAYPIC_API_KEYS: entries 1 and 2 ")
    assert "okpk_a" not in str(caught.value)


def test_a_repeated_entry_is_named_by_its_place_in_the_variable_blanks_counted():
    with pytest.raises(AuthError) as caught:
        api_keys({"OKAYPIC_API_KEYS": "okpk_a,,okpk_b, ,okpk_a"})
    assert "entries 1 and 5" in str(caught.value)


def test_no_key_in_either_variable_names_both():
    with pytest.raises(AuthError) as caught:
        api_keys({"OKAYPIC_API_KEYS": " ,", "OKAYPIC_API_KEY": " "})
    assert "OKAYPIC_API_KEY " in str(caught.value) and "OKAYPIC_API_KEYS" in str(caught.value)


def test_a_key_object_never_shows_its_secret():
    key = ApiKey("studio", "okpk_secret")
    assert "okpk_secret" not in repr(key) and "okpk_secret" not in str(key)
    assert repr(key) == "ApiKey('studio')"


def test_a_key_object_cannot_be_changed():
    with pytest.raises(dataclasses.FrozenInstanceError):
        ApiKey("studio", "okpk_a").secret = "okpk_b"  # type: ignore[misc]


def test_a_key_echoed_json_escaped_is_replaced_whole():
    key = 'okpk_a"b'
    assert Redactor([key])('{"error": "bad token okpk_a\\"b"}') == (
        f'{{"error": "bad token [{label(key)}]"}}'
    )


def test_the_environment_redactor_holds_every_key_of_both_variables_by_its_label():
    redact = Redactor.from_environment(
        {"OKAYPIC_API_KEYS": "studio=okpk_aaa, okpk_bbb", "OKAYPIC_API_KEY": "okpk_ccc"}
    )
    text = redact("echo okpk_aaa then okpk_bbb and okpk_ccc")
    assert text == f"echo [studio] then [{label('okpk_bbb')}] and [{label('okpk_ccc')}]"
    # Even a value that is not a usable list of keys is kept out of what is shown.
    broken = Redactor.from_environment({"OKAYPIC_API_KEYS": "studio=okpk a b"})
    assert "okpk a b" not in broken("it said: okpk a b")
