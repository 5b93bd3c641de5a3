"""API keys: read from the environment only, checked, named by their label, and kept out
of every text batchgen stores or shows (PRODUCT.md §6, §7).

- Keys come from the environment, never from the command line: `OKAYPIC_API_KEYS` holds
  one or more, comma-separated, each optionally named (`studio=okpk_…,night=okpk_…`);
  `OKAYPIC_API_KEY` holds one. When both are set, `OKAYPIC_API_KEYS` is used.
- A key is printable ASCII without spaces (what an HTTP `Authorization: Bearer` value can
  carry): anything else is refused with one line naming the variable, never the key.
- A key's **label** is what the ledger, logs, status and report may show: its name, or
  for an unnamed key `key-` + the first 8 hex digits of its SHA-256. A name is 1-40 of
  letters, digits, `_`, `.`, `-`, starting with a letter or digit; an entry whose text
  before its first `=` is not such a name is an unnamed key.
- A `Redactor` holds every key in force and replaces each, wherever it appears in a text
  (also JSON-escaped or percent-encoded, as a service may echo it), by `[label]`. The
  client redacts every answer it hands on, and the ledger every text it stores, so a
  service that echoes the bearer token in its messages puts it nowhere.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import quote

from batchgen.errors import AuthError

KEY_VARIABLE = "OKAYPIC_API_KEY"
# The sandbox's demo key (not a secret): what `run --sandbox` uses and `batchgen sandbox`
# accepts unless told other keys.
SANDBOX_KEY = "okpk_sandbox_demo"
KEYS_VARIABLE = "OKAYPIC_API_KEYS"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,39}")
_HASH_LABEL = re.compile(r"key-[0-9a-f]{8}")


@dataclass(frozen=True)
class ApiKey:
    """A key in force and the label it is shown by. Its text is never printed: the
    dataclass's repr leaves it out."""

    label: str
    secret: str

    def __repr__(self) -> str:
        return f"ApiKey({self.label!r})"


def label(key: str) -> str:
    """The name a key is shown by: `key-` + the first 8 hex digits of its SHA-256."""
    return "key-" + hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:8]


def is_hash_label(text: str) -> bool:
    """Whether `text` has the form of an unnamed key's label (`key-` + 8 hex digits)."""
    return _HASH_LABEL.fullmatch(text) is not None


def check(key: str, variable: str = KEY_VARIABLE) -> None:
    """Refuse (AuthError, exit 4) a key that cannot be sent as a bearer token, naming the
    variable and what is wrong, never showing the key."""
    for position, char in enumerate(key, start=1):
        if not "!" <= char <= "~":
            raise AuthError(
                f"{variable} is not a usable API key: character {position} is "
                f"{_kind(char)} (a key is printable ASCII without spaces); "
                "set it again from the key your okaypic account shows"
            )


def _kind(char: str) -> str:
    if char in "\r\n":
        return "a line break"
    if char.isspace():
        return "a space"
    if ord(char) < 128:
        return "a control character"
    return "a non-ASCII character"


def api_keys(environ: Mapping[str, str] | None = None) -> list[ApiKey]:
    """The keys in force, in the order given, checked: from OKAYPIC_API_KEYS when it holds
    any, else OKAYPIC_API_KEY. AuthError (exit 4) when there is none, when one is not
    usable, or when two share a label or a key (one key counted twice would take 6 of
    the service's 3 slots); the message names the variable and the entry, never a key."""
    env = os.environ if environ is None else environ
    entries = [e.strip() for e in env.get(KEYS_VARIABLE, "").split(",")]
    if source(env) == KEYS_VARIABLE:
        numbered = [(n, _entry(entry, n)) for n, entry in enumerate(entries, start=1) if entry]
    else:
        key = env.get(KEY_VARIABLE, "").strip()
        if not key:
            raise AuthError(
                f"{KEY_VARIABLE} is missing: set it to your okaypic API key, or "
                f"{KEYS_VARIABLE} to several (comma-separated, each optionally name=key); "
                "or try `batchgen run MANIFEST --sandbox`"
            )
        check(key)
        numbered = [(1, ApiKey(label(key), key))]
    _unique(numbered)
    return [key for _, key in numbered]


def source(environ: Mapping[str, str] | None = None) -> str:
    """The variable the keys in force come from (see `api_keys`)."""
    env = os.environ if environ is None else environ
    return KEYS_VARIABLE if env.get(KEYS_VARIABLE, "").replace(",", "").strip() else KEY_VARIABLE


def given(environ: Mapping[str, str] | None = None) -> bool:
    """Whether either variable holds any key text (usable or not)."""
    env = os.environ if environ is None else environ
    return bool(env.get(source(env), "").replace(",", "").strip())


def _entry(entry: str, position: int) -> ApiKey:
    name, _, key = entry.partition("=")
    where = f"{KEYS_VARIABLE} (entry {position})"
    if key and not key.startswith("=") and _NAME.fullmatch(name.strip()):
        key = key.strip()
        check(key, where)
        return ApiKey(name.strip(), key)
    check(entry, where)
    return ApiKey(label(entry), entry)


def _unique(numbered: list[tuple[int, ApiKey]]) -> None:
    """Refuse two entries (by their place in the variable) with one label or one key."""
    seen_labels: dict[str, int] = {}
    seen_keys: dict[str, int] = {}
    for position, key in numbered:
        if key.label in seen_labels:
            raise AuthError(
                f"{KEYS_VARIABLE}: entries {seen_labels[key.label]} and {position} are both "
                f"labelled {key.label!r}: give each key its own name"
            )
        if key.secret in seen_keys:
            raise AuthError(
                f"{KEYS_VARIABLE}: entries {seen_keys[key.secret]} and {position} hold the "
                "same key: each key gives 3 slots, so list it once"
            )
        seen_labels[key.label] = seen_keys[key.secret] = position


class Redactor:
    """Replaces every key it holds, in any text, by `[label]`.

    Holds several keys (one per key in force); each is also found JSON-escaped and
    percent-encoded, the forms a service echoing a request is most likely to use.
    """

    def __init__(self, keys: Iterable[str | ApiKey] = ()) -> None:
        self._forms: list[tuple[str, str]] = []
        for key in keys:
            if isinstance(key, ApiKey):
                self.add(key.secret, key.label)
            else:
                self.add(key)

    def add(self, key: str, name: str | None = None) -> None:
        """Hold `key`, replaced by `[name]` (default: its hash label)."""
        if not key:
            return
        mark = f"[{name or label(key)}]"
        # `quote` of the bytes: a key read from an environment with undecodable bytes
        # holds lone surrogates, which a plain `quote(key)` cannot encode.
        encoded = quote(key.encode("utf-8", "surrogatepass"), safe="")
        forms = {key, json.dumps(key)[1:-1], key.replace("/", "\\/"), encoded}
        known = {form for form, _ in self._forms}
        self._forms.extend((form, mark) for form in forms if form and form not in known)
        # Longest first: a key that contains another key is replaced whole.
        self._forms.sort(key=lambda pair: len(pair[0]), reverse=True)

    def __bool__(self) -> bool:
        return bool(self._forms)

    def __call__(self, text: str) -> str:
        for form, mark in self._forms:
            if form in text:
                text = text.replace(form, mark)
        return text

    def text(self, text: str | None) -> str | None:
        """`text` without any key (None stays None)."""
        return None if text is None else self(text)

    def bytes(self, data: bytes) -> bytes:
        """`data` without any key (an answer body, before anything reads it)."""
        for form, mark in self._forms:
            encoded = form.encode("utf-8", "surrogatepass")
            if encoded in data:
                data = data.replace(encoded, mark.encode())
        return data

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> Redactor:
        """A redactor for whatever the key variables hold, usable or not: what a command
        shows must never contain a key, even one that is refused or badly written."""
        env = os.environ if environ is None else environ
        single = env.get(KEY_VARIABLE, "")
        several = env.get(KEYS_VARIABLE, "")
        redactor = cls()
        for entry in several.split(","):
            name, _, key = entry.strip().partition("=")
            redactor.add(key.strip(), name.strip() if _NAME.fullmatch(name.strip()) else None)
            redactor.add(entry.strip())
        for text in (single, single.strip(), several.strip()):
            redactor.add(text if text.strip() else "")
        redactor.add_ledger(env.get("BATCHGEN_LEDGER", ""))
        return redactor

    def add_ledger(self, location: str | None) -> None:
        """Hold the password a PostgreSQL ledger's URL may carry (PRODUCT §5): it is never
        shown, as a key is not."""
        from batchgen.ledger.db import password

        self.add(password(location or "") or "", "password")
