"""Load a manifest's YAML safely into plain data, remembering where every value was written.

Why not `yaml.safe_load`: it forgets positions, silently keeps the last of duplicate keys,
expands alias bombs until memory runs out and recurses on deep nesting. Here the parser's
flat event stream (libyaml when present, else PyYAML's own parser) is assembled by an
explicit stack, so that:

- only plain data is built: text, numbers, true/false, null, lists and mappings; any other
  tag (`!!python/object/apply:...`, `!!binary`, `!custom`) is a problem, never constructed;
- duplicate keys, aliases that expand beyond `MAX_VALUES` values (billion laughs), nesting
  deeper than `MAX_DEPTH` and files over `MAX_BYTES` are problems, found in time linear in
  the file size;
- every value keeps its (line, col), so later layers can point at it (`Document.position`).

Two YAML 1.1 surprises are softened: mapping keys are kept as written (`on:` stays "on"),
and a plain scalar that YAML 1.1 would read as a base-60 number or a timestamp stays text,
so `ratio: 16:9` means "16:9", not 969. Merge keys (`<<: *base`) are supported.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from yaml.constructor import ConstructorError, SafeConstructor
from yaml.nodes import ScalarNode
from yaml.resolver import Resolver

from batchgen.errors import ManifestInvalid
from batchgen.problems import Problem

MAX_BYTES = 10 * 1024 * 1024  # a manifest is a hand-written list of jobs, not a data dump
MAX_DEPTH = 64  # manifests nest 5 levels deep; 64 leaves room and stays far from recursion limits
MAX_VALUES = 1_000_000  # values in the document once aliases are expanded

MAX_SHOWN_DEPTH = 6  # a problem about deep nesting names only the first levels of its path

KeyPath = tuple[str | int, ...]

_YAML_TAG = "tag:yaml.org,2002:"
_SCALAR_TAGS = {_YAML_TAG + t for t in ("str", "int", "float", "bool", "null")}
_SEQ_TAG, _MAP_TAG = _YAML_TAG + "seq", _YAML_TAG + "map"
_PARSER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml is ~20x faster
_resolver = Resolver()
_constructor = SafeConstructor()


@dataclass(eq=False, slots=True)
class Node:
    """One value as written: scalar `value`, or `items` (a list), or `entries` (a mapping)."""

    line: int
    col: int
    value: Any = None
    items: list[Node] | None = None
    entries: dict[str, tuple[int, int, Node]] | None = None  # key -> (key line, key col, value)
    size: int = 1  # values in this subtree, aliases expanded
    height: int = 1  # nesting levels in this subtree, aliases expanded


@dataclass
class Document:
    """A loaded manifest: its plain data, and the node tree that says where each value is."""

    file: str  # the path as the user gave it, for messages
    sha256: str  # of the file's bytes
    data: Any
    root: Node | None

    def node(self, path: KeyPath) -> Node | None:
        """The node at `path`, or the deepest node on the way there when the path leaves it."""
        node = self.root
        for step in path:
            if node is None:
                return None
            if node.entries is not None and isinstance(step, str) and step in node.entries:
                node = node.entries[step][2]
            elif node.items is not None and isinstance(step, int) and 0 <= step < len(node.items):
                node = node.items[step]
            else:
                break
        return node

    def position(self, path: KeyPath) -> tuple[int, int]:
        """(line, col), 1-based, of the value at `path` (or of its closest written ancestor)."""
        node = self.node(path)
        return (node.line, node.col) if node else (1, 1)

    def key_position(self, path: KeyPath) -> tuple[int, int]:
        """(line, col) of the key that names the last step of `path` (else of the value)."""
        if path and isinstance(path[-1], str):
            parent = self.node(path[:-1])
            if parent is not None and parent.entries is not None and path[-1] in parent.entries:
                line, col, _ = parent.entries[path[-1]]
                return (line, col)
        return self.position(path)


def format_path(path: KeyPath) -> str:
    """("jobs", 2, "matrix", "model") -> "jobs[2].matrix.model"; the root is "manifest"."""
    text = ""
    for step in path:
        text += f"[{step}]" if isinstance(step, int) else (f".{step}" if text else step)
    return text or "manifest"


def load(path: str | Path) -> Document:
    """Read and parse the manifest at `path`; raise ManifestInvalid when that fails."""
    file = str(path)
    raw = _read(file)
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line, col = _offset_position(raw, e.start)
        problem = f"the manifest is not UTF-8 text (byte 0x{raw[e.start]:02x})"
        raise ManifestInvalid([Problem(file, line, col, "manifest", problem)]) from None
    builder = _Builder(file)
    root = builder.build(text)
    if builder.problems:
        raise ManifestInvalid(sorted(builder.problems))
    data = _materialize(root, {}) if root is not None else None
    return Document(file, hashlib.sha256(raw).hexdigest(), data, root)


def _read(file: str) -> bytes:
    """The file's bytes, refusing anything that is not a regular file of at most MAX_BYTES."""

    def fail(message: str) -> ManifestInvalid:
        return ManifestInvalid([Problem(file, 1, 1, "manifest", message)])

    try:
        info = os.stat(file)
        if stat.S_ISDIR(info.st_mode):
            raise fail("cannot read the manifest: it is a directory")
        if not stat.S_ISREG(info.st_mode):  # a FIFO or a device could block or never end
            raise fail("cannot read the manifest: it is not a regular file")
        if info.st_size > MAX_BYTES:
            raise fail(_too_big(info.st_size))
        with open(file, "rb") as f:
            raw = f.read(MAX_BYTES + 1)
    except OSError as e:
        raise fail(f"cannot read the manifest: {e.strerror or e}") from None
    if len(raw) > MAX_BYTES:  # the file grew since stat
        raise fail(_too_big(len(raw)))
    return raw


def _too_big(size: int) -> str:
    mib = MAX_BYTES // (1024 * 1024)
    return f"the manifest is {size / 1024 / 1024:.1f} MiB, more than the {mib} MiB limit"


def _offset_position(raw: bytes | str, offset: int) -> tuple[int, int]:
    """1-based (line, col) of an offset into text or bytes."""
    newline: Any = b"\n" if isinstance(raw, bytes) else "\n"
    line = raw.count(newline, 0, offset) + 1
    return line, offset - (raw.rfind(newline, 0, offset) + 1) + 1


class _Fatal(Exception):
    """The document cannot be assembled any further."""


class _TooDeep(Exception):
    def __init__(self, mark: yaml.Mark):
        self.mark = mark


class _DepthCheckingScanner(yaml.SafeLoader):
    """PyYAML's own scanner, stopping as soon as collections nest deeper than MAX_DEPTH.

    Flow levels plus block indentation levels never exceed the real nesting (a sequence
    written at its parent key's indentation adds no level), so nothing within the limit
    is refused."""

    def fetch_flow_collection_start(self, TokenClass: Any) -> None:
        self._deeper()
        super().fetch_flow_collection_start(TokenClass)  # type: ignore[misc]

    def add_indent(self, column: int) -> bool:
        added: bool = super().add_indent(column)  # type: ignore[misc]
        if added:
            self._deeper(-1)
        return added

    def _deeper(self, already: int = 0) -> None:
        if self.flow_level + len(self.indents) + already >= MAX_DEPTH:  # type: ignore[attr-defined]
            raise _TooDeep(self.get_mark())  # type: ignore[attr-defined]


@dataclass(eq=False, slots=True)
class _Frame:
    """A collection being assembled."""

    node: Node
    path: KeyPath
    anchor: str | None
    key: tuple[str, int, int] | None = None  # a mapping's key waiting for its value
    key_merges: bool = False  # that key is a merge key (<<)
    merges: list[tuple[Node, int, int]] = field(default_factory=list)


class _Builder:
    """Assembles parser events into a Node tree with an explicit stack (no recursion)."""

    def __init__(self, file: str):
        self.file = file
        self.problems: list[Problem] = []
        self.anchors: dict[str, Node] = {}
        self.stack: list[_Frame] = []
        self.root: Node | None = None
        self.values = 0

    def problem(self, line: int, col: int, path: KeyPath, message: str) -> None:
        self.problems.append(Problem(self.file, line, col, format_path(path), message))

    def fatal(self, line: int, col: int, path: KeyPath, message: str) -> _Fatal:
        self.problems = [Problem(self.file, line, col, format_path(path), message)]
        return _Fatal()

    def build(self, text: str) -> Node | None:
        try:
            for event in self._events(text):
                self._event(event)
        except _Fatal:
            pass
        return self.root

    def _events(self, text: str) -> Iterator[yaml.Event]:
        try:
            yield from yaml.parse(text, Loader=_PARSER)
        except yaml.YAMLError as e:
            # A parser may refuse deep nesting of its own accord, before any event reaches
            # the depth check in `_event`: libyaml (PyYAML >= 6.0.2) stops at 1,000 flow
            # levels while it looks ahead. batchgen's own limit is checked first, so the
            # message is the same whatever the parser and its version.
            self._check_depth(text, e)
            raise self._syntax_error(text, e) from None

    def _check_depth(self, text: str, error: yaml.YAMLError) -> None:
        """Raise batchgen's nesting problem if the text nests deeper than MAX_DEPTH before
        the point where the parser gave up."""
        mark = getattr(error, "problem_mark", None)
        end = mark.index + 1 if mark is not None else len(text)
        try:
            for _ in yaml.scan(text[:end], Loader=_DepthCheckingScanner):
                pass
        except _TooDeep as deep:
            line, col = deep.mark.line + 1, deep.mark.column + 1
            raise self.fatal(line, col, self._path()[:MAX_SHOWN_DEPTH], _too_deep()) from None
        except yaml.YAMLError:
            pass  # the text up to the parser's error is broken in some other way

    def _syntax_error(self, text: str, e: yaml.YAMLError) -> _Fatal:
        if isinstance(e, yaml.MarkedYAMLError):
            mark = e.problem_mark or e.context_mark
            line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
            message = f"YAML syntax error: {e.problem or e.context}"
            if e.context and e.context_mark and e.problem:
                cm = e.context_mark
                message += f" ({e.context} at line {cm.line + 1}, column {cm.column + 1})"
            return self.fatal(line, col, (), message)
        if isinstance(e, yaml.reader.ReaderError):
            line, col = _offset_position(text, e.position)
            char = e.character if isinstance(e.character, int) else ord(e.character[:1] or "\0")
            return self.fatal(line, col, (), f"character #x{char:04x} is not allowed in YAML")
        # anything else the parser may raise, without a position
        return self.fatal(1, 1, (), f"YAML error: {e}")

    def _path(self) -> KeyPath:
        """Where the next value goes."""
        if not self.stack:
            return ()
        top = self.stack[-1]
        if top.node.items is not None:
            return (*top.path, len(top.node.items))
        return (*top.path, top.key[0]) if top.key else top.path

    def _event(self, event: yaml.Event) -> None:
        mark = event.start_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        if isinstance(event, yaml.ScalarEvent):
            if self._wants_key():
                self._key(event, line, col)
                return
            self._count(1, line, col)
            node = Node(line, col, value=self._scalar(event, line, col))
            if event.anchor:
                self.anchors[event.anchor] = node
            self._add(node)
        elif isinstance(event, yaml.AliasEvent):
            target = self.anchors.get(event.anchor or "")
            if target is None:
                message = f"unknown alias *{event.anchor} (an alias must follow its anchor's value)"
                raise self.fatal(line, col, self._path(), message)
            if self._wants_key():
                self._alias_key(target, line, col)
                return
            self._count(target.size, line, col, alias=event.anchor)
            if len(self.stack) + target.height > MAX_DEPTH:
                raise self.fatal(line, col, self._path()[:MAX_SHOWN_DEPTH], _too_deep())
            self._add(target)
        elif isinstance(event, yaml.SequenceStartEvent | yaml.MappingStartEvent):
            path = self._path()
            if self._wants_key():
                raise self.fatal(line, col, path, _KEY_NOT_TEXT)
            if len(self.stack) >= MAX_DEPTH:
                raise self.fatal(line, col, path[:MAX_SHOWN_DEPTH], _too_deep())
            is_map = isinstance(event, yaml.MappingStartEvent)
            self._check_collection_tag(event.tag, _MAP_TAG if is_map else _SEQ_TAG, line, col)
            self._count(1, line, col)
            node = Node(line, col, entries={}) if is_map else Node(line, col, items=[])
            self.stack.append(_Frame(node, path, event.anchor))
        elif isinstance(event, yaml.SequenceEndEvent | yaml.MappingEndEvent):
            frame = self.stack.pop()
            self._finish(frame)
            if frame.anchor:
                self.anchors[frame.anchor] = frame.node
            self._add(frame.node)
        elif isinstance(event, yaml.DocumentStartEvent) and self.root is not None:
            message = "a manifest is a single YAML document (found a second one)"
            raise self.fatal(line, col, (), message)

    def _wants_key(self) -> bool:
        """Is the next value a key of the mapping being assembled?"""
        return (
            bool(self.stack) and self.stack[-1].node.entries is not None and not self.stack[-1].key
        )

    def _count(self, values: int, line: int, col: int, alias: str | None = None) -> None:
        self.values += values
        if self.values > MAX_VALUES:
            limit = f"{MAX_VALUES:,}"
            message = (
                f"alias *{alias} expands the manifest beyond {limit} values (an alias bomb?)"
                if alias
                else f"the manifest has more than {limit} values"
            )
            raise self.fatal(line, col, self._path(), message)

    def _add(self, node: Node) -> None:
        """Put a finished value into the collection being assembled (or make it the root)."""
        if not self.stack:
            self.root = node
            return
        top = self.stack[-1]
        if top.node.items is not None:
            top.node.items.append(node)
            return
        assert top.node.entries is not None and top.key is not None
        key, kline, kcol = top.key
        top.key = None
        if top.key_merges:  # resolved when the mapping ends
            top.key_merges = False
            top.merges.append((node, kline, kcol))
        elif key in top.node.entries:
            first = top.node.entries[key][0]
            message = f"duplicate key {key!r} (first at line {first})"
            self.problem(kline, kcol, (*top.path, key), message)
        else:
            top.node.entries[key] = (kline, kcol, node)

    def _key(self, event: yaml.ScalarEvent, line: int, col: int) -> None:
        """A mapping key: kept as the text written (no YAML 1.1 reading of `on`, `1`, `~`)."""
        frame = self.stack[-1]
        if event.tag not in (None, "!", _YAML_TAG + "str"):
            self._check_scalar_tag(event.tag, line, col)
        frame.key = (event.value, line, col)
        # Only a plain, untagged << is a merge key; a quoted "<<" is an ordinary key.
        frame.key_merges = event.value == "<<" and event.tag is None and event.implicit[0]

    def _alias_key(self, target: Node, line: int, col: int) -> None:
        frame = self.stack[-1]
        if target.items is not None or target.entries is not None:
            raise self.fatal(line, col, frame.path, _KEY_NOT_TEXT)
        frame.key = ("" if target.value is None else str(target.value), line, col)
        frame.key_merges = False

    def _scalar(self, event: yaml.ScalarEvent, line: int, col: int) -> Any:
        tag, value = event.tag, event.value
        if tag in (None, "!"):
            if not event.implicit[0]:  # quoted, or the non-specific "!" tag: text
                return value
            tag = _resolver.resolve(ScalarNode, value, (True, False))
            if tag not in _SCALAR_TAGS or ":" in value:  # timestamps, base-60 numbers: text
                return value
        elif tag not in _SCALAR_TAGS:
            self._check_scalar_tag(tag, line, col)
            return value
        kind = tag[len(_YAML_TAG) :]
        if kind == "str":
            return value
        try:
            return getattr(_constructor, f"construct_yaml_{kind}")(ScalarNode(tag, value))
        except (ValueError, ConstructorError):
            self.problem(line, col, self._path(), f"{value!r} is not a valid !!{kind}")
            return value

    def _check_scalar_tag(self, tag: str | None, line: int, col: int) -> None:
        if tag not in _SCALAR_TAGS:
            self.problem(line, col, self._path(), _tag_message(tag))

    def _check_collection_tag(self, tag: str | None, allowed: str, line: int, col: int) -> None:
        if tag not in (None, "!", allowed):
            self.problem(line, col, self._path(), _tag_message(tag))

    def _finish(self, frame: _Frame) -> None:
        """Resolve merge keys, then total the collection's size and height."""
        node = frame.node
        if node.entries is not None:
            for source, line, col in frame.merges:
                self._merge(node.entries, source, line, col, frame.path)
            children = [child for _, _, child in node.entries.values()]
        else:
            children = node.items or []
        node.size = 1 + sum(child.size for child in children)
        node.height = 1 + max((child.height for child in children), default=0)

    def _merge(
        self,
        entries: dict[str, tuple[int, int, Node]],
        source: Node,
        line: int,
        col: int,
        path: KeyPath,
    ) -> None:
        """`<<: *base` (or a list of them): copy the keys the mapping does not set itself."""
        sources = source.items if source.items is not None else [source]
        for item in sources:
            if item.entries is None:
                message = "a merge key (<<) takes a mapping or a list of mappings"
                self.problem(line, col, (*path, "<<"), message)
                continue
            for key, entry in item.entries.items():
                entries.setdefault(key, entry)


_KEY_NOT_TEXT = "a mapping key must be text, not a list or mapping"


def _too_deep() -> str:
    return f"the manifest nests deeper than {MAX_DEPTH} levels"


def _tag_message(tag: str | None) -> str:
    shown = "!!" + tag[len(_YAML_TAG) :] if tag and tag.startswith(_YAML_TAG) else tag
    return (
        f"YAML tag {shown} is not allowed: a manifest holds only text, numbers, "
        "true/false, null, lists and mappings"
    )


def _materialize(node: Node, memo: dict[int, Any]) -> Any:
    """Plain data from nodes; an aliased node becomes one shared object (depth is capped)."""
    if node.items is None and node.entries is None:
        return node.value
    done = memo.get(id(node))
    if done is not None:
        return done
    value: Any
    if node.items is not None:
        value = [_materialize(child, memo) for child in node.items]
    else:
        assert node.entries is not None
        value = {key: _materialize(child, memo) for key, (_, _, child) in node.entries.items()}
    memo[id(node)] = value
    return value
