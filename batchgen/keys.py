"""API keys: read from the environment only, checked, named by their label, and kept out
of every text batchgen stores or shows (PRODUCT.md §6, §7).

- A key comes from `OKAYPIC_API_KEY`, never from the command line.
- A key is printable ASCII without spaces (what an HTTP `Authorization: Bearer` value can
  carry): anything else is refused with one line naming the variable, never the key.
- A key's **label** is what the ledger, logs, status and report may show: for an unnamed
  key, `key-` + the first 8 hex digits of its SHA-256.
- A `Redactor` holds every key in force and replaces each, wherever it appears in a text
  (also JSON-escaped or percent-encoded, as a service may echo it), by `[label]`. The
  client redacts every answer it hands on, and the ledger every text it stores, so a
  service that echoes the bearer token in its messages puts it nowhere.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from urllib.parse import quote

from batchgen.errors import AuthError

KEY_VARIABLE = "OKAYPIC_API_KEY"


def label(key: str) -> str:
    """The name a key is shown by: `key-` + the first 8 hex digits of its SHA-256."""
    return "key-" + hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:8]


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


def api_key(environ: Mapping[str, str] | None = None) -> str:
    """The key from OKAYPIC_API_KEY, checked; never from the command line, never printed."""
    key = (os.environ if environ is None else environ).get(KEY_VARIABLE, "").strip()
    if not key:
        raise AuthError(
            f"{KEY_VARIABLE} is missing: set it to your okaypic API key "
            "(or try `batchgen run MANIFEST --sandbox`)"
        )
    check(key)
    return key


class Redactor:
    """Replaces every key it holds, in any text, by `[label]`.

    Holds several keys (one per key in force); each is also found JSON-escaped and
    percent-encoded, the forms a service echoing a request is most likely to use.
    """

    def __init__(self, keys: Iterable[str] = ()) -> None:
        self._forms: list[tuple[str, str]] = []
        for key in keys:
            self.add(key)

    def add(self, key: str) -> None:
        if not key:
            return
        mark = f"[{label(key)}]"
        forms = {key, json.dumps(key)[1:-1], key.replace("/", "\\/"), quote(key, safe="")}
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
        """A redactor for whatever the key variable holds, usable or not: what a command
        shows must never contain it, even when it is refused."""
        value = (os.environ if environ is None else environ).get(KEY_VARIABLE, "")
        return cls([k for k in {value, value.strip()} if k.strip()])
