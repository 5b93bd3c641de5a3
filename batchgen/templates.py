"""`{name}` templates, as written in a manifest's id, prompt and media urls: parse and render.

Syntax: `{name}` is a variable (a letter or `_`, then letters, digits, `_` or `-`); `{{` and
`}}` are literal braces; any other brace is an error that quotes the text. Kept apart from
expand.py, which decides which variables exist and where templates are rendered; this module
only knows the syntax. Parsing is cached: 100,000 jobs usually share a handful of templates.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from typing import Any

from batchgen.job import canonical_json

VARIABLE_NAME = r"[A-Za-z_][A-Za-z0-9_-]*"
# A well-formed template, as one regular expression (for the JSON Schema, so an editor
# flags a stray brace): literal text, `{{`, `}}` and `{name}` only.
TEMPLATE_PATTERN = r"^(?:[^{}]|\{\{|\}\}|\{" + VARIABLE_NAME + r"\})*$"

_TEMPLATE_TOKEN = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")
_VARIABLE = re.compile(VARIABLE_NAME)


def uses_variable_pattern(names: list[str]) -> str:
    """A regular expression that finds `{name}` for one of `names` used as a variable
    (not inside `{{...}}`): an even run of `{` before it is literal braces."""
    assert all(_VARIABLE.fullmatch(name) and "-" not in name for name in names), names
    return r"(?:^|[^{])(?:\{\{)*\{(?:" + "|".join(names) + r")\}"


@dataclass(frozen=True, slots=True)
class Template:
    """A parsed `{name}` template: a str.format_map pattern and the names it uses."""

    pattern: str
    names: tuple[str, ...]
    error: str | None = None

    def render(self, variables: dict[str, str]) -> str:
        """The text, or KeyError(name) for a variable `variables` lacks."""
        if not self.names:
            return self.pattern
        return self.pattern.format_map(variables)


@cache
def parse_template(text: str) -> Template:
    """Parse `text`; a malformed template is a Template with `error` set."""
    names: list[str] = []
    pattern = []
    end = 0
    for match in _TEMPLATE_TOKEN.finditer(text):
        literal = text[end : match.start()]
        pattern.append(literal)
        end = match.end()
        token, name = match.group(0), match.group(1)
        if token in ("{{", "}}"):
            pattern.append(token)
        elif name is None:
            return Template(
                "", (), f"unmatched {token!r} in {text!r} (write {token * 2} for a {token})"
            )
        elif not _VARIABLE.fullmatch(name):
            return Template("", (), f"{{{name}}} in {text!r} is not a variable name")
        else:
            names.append(name)
            pattern.append(token)
    pattern.append(text[end:])
    joined = "".join(pattern)
    if not names:  # no variables: store the final text, braces unescaped
        joined = joined.replace("{{", "{").replace("}}", "}")
    return Template(joined, tuple(dict.fromkeys(names)))


def as_text(value: Any) -> str:
    """A variable's value as it appears in rendered text."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, int | float):
        return str(value)
    return canonical_json(value)
