"""Text from outside (the service, a manifest, a rows file, a task id) made safe to show.

Such text is shown as plain characters, never read as rich markup (`[bold]`, `[/x]`) and
never passed to a terminal as control codes: every control character, and the Unicode
characters that reorder or break lines, is written as a visible escape (`\\x1b`, `\\n`,
`\\u202e`), so a message reads the same on a terminal, in a log file and in a pipe.
"""

from __future__ import annotations

import re

# C0 and C1 controls, DEL, line/paragraph separators, bidirectional overrides and isolates.
_IN_ONE_LINE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def shown(text: object) -> str:
    """One line of plain text: every control character escaped, newlines included."""
    return _IN_ONE_LINE.sub(_escape, str(text))
