"""Loading YAML: plain data with positions, and hostile input refused quickly and clearly."""

from __future__ import annotations

import hashlib
import tempfile
import time
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from batchgen import manifest
from batchgen.errors import ManifestInvalid
from batchgen.manifest import Document, format_path, load


def load_text(tmp_path: Path, text: str | bytes) -> Document:
    path = tmp_path / "m.yaml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return load(path)


def problems(tmp_path: Path, text: str | bytes) -> list[str]:
    with pytest.raises(ManifestInvalid) as raised:
        load_text(tmp_path, text)
    prefix = f"{tmp_path / 'm.yaml'}:"
    return [str(p).removeprefix(prefix) for p in raised.value.problems]


@pytest.fixture(params=["libyaml", "pure-python"])
def parser(request, monkeypatch):
    """Run a test with libyaml's parser (when installed) and with PyYAML's own."""
    if request.param == "pure-python":
        monkeypatch.setattr(manifest, "_PARSER", yaml.SafeLoader)
    elif not hasattr(yaml, "CSafeLoader"):
        pytest.skip("libyaml is not installed")
    return request.param


def test_values_come_back_as_plain_data_with_their_positions(tmp_path, parser):
    doc = load_text(
        tmp_path,
        "version: 1\ncampaign: c\njobs:\n  - id: a\n    media: [{type: image, url: u}]\n",
    )
    assert doc.data == {
        "version": 1,
        "campaign": "c",
        "jobs": [{"id": "a", "media": [{"type": "image", "url": "u"}]}],
    }
    assert doc.position(("campaign",)) == (2, 11)
    assert doc.position(("jobs", 0, "id")) == (4, 9)
    assert doc.position(("jobs", 0, "media", 0, "url")) == (5, 32)
    assert doc.key_position(("jobs", 0, "media")) == (5, 5)
    assert doc.position(("jobs", 0, "missing")) == (4, 5)  # the closest written ancestor


def test_yaml_1_1_surprises_are_kept_as_written(tmp_path, parser):
    doc = load_text(tmp_path, "ratio: 16:9\nwhen: 2024-05-01\non: yes\n1: one\nn: 0x10\n")
    assert doc.data == {"ratio": "16:9", "when": "2024-05-01", "on": True, "1": "one", "n": 16}


def test_merge_keys_copy_what_the_mapping_does_not_set(tmp_path, parser):
    doc = load_text(
        tmp_path,
        "base: &base {model: grok-video-3, duration: 5}\n"
        "job:\n  <<: *base\n  duration: 10\n  '<<': quoted is a plain key\n",
    )
    assert doc.data["job"] == {
        "duration": 10,
        "<<": "quoted is a plain key",
        "model": "grok-video-3",
    }
    assert doc.position(("job", "model")) == (1, 21)  # where the value is written


def test_a_python_tag_is_refused_and_never_executed(tmp_path, parser):
    marker = tmp_path / "pwned"
    found = problems(tmp_path, f'a: !!python/object/apply:os.system ["touch {marker}"]\n')
    assert found == [
        "1:4: a: YAML tag !!python/object/apply:os.system is not allowed: a manifest holds "
        "only text, numbers, true/false, null, lists and mappings"
    ]
    assert not marker.exists()


@pytest.mark.parametrize(
    "tag", ["!!binary aGk=", "!!set {a}", "!custom x", "!!timestamp 2024-01-01"]
)
def test_any_tag_beyond_plain_data_is_refused(tmp_path, tag, parser):
    [found] = problems(tmp_path, f"a: {tag}\n")
    assert "is not allowed" in found


def test_every_duplicate_key_is_reported(tmp_path, parser):
    assert problems(tmp_path, "a: 1\nb:\n  c: 1\n  c: 2\na: 3\n") == [
        "4:3: b.c: duplicate key 'c' (first at line 3)",
        "5:1: a: duplicate key 'a' (first at line 1)",
    ]


def test_an_alias_bomb_is_stopped_at_once(tmp_path, parser):
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, 12):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]")
    started = time.perf_counter()
    [found] = problems(tmp_path, "\n".join(lines) + "\n")
    assert time.perf_counter() - started < 1
    assert "expands the manifest beyond 1,000,000 values (an alias bomb?)" in found


def test_aliases_that_stay_small_are_fine(tmp_path, parser):
    doc = load_text(tmp_path, "a: &a [1, 2]\nb: [*a, *a]\n")
    assert doc.data == {"a": [1, 2], "b": [[1, 2], [1, 2]]}


def test_a_recursive_alias_is_refused(tmp_path, parser):
    [found] = problems(tmp_path, "a: &a [1, *a]\n")
    assert "unknown alias *a" in found


@pytest.mark.parametrize(
    "text",
    [
        "a: " + "[" * 100_000 + "]" * 100_000 + "\n",
        "a: " + "{b: " * 5_000 + "1" + "}" * 5_000 + "\n",
        "".join(" " * i + "k:\n" for i in range(500)),
        "a: &a " + "[" * 60 + "]" * 60 + "\nb: " + "[" * 10 + "*a" + "]" * 10 + "\n",
    ],
    ids=["flow-lists", "flow-maps", "block-maps", "through-an-alias"],
)
def test_deep_nesting_is_refused_without_recursion(tmp_path, text, parser):
    [found] = problems(tmp_path, text)
    assert found.endswith(f"the manifest nests deeper than {manifest.MAX_DEPTH} levels")


def nested(kind: str, levels: int) -> str:
    """A document whose deepest value sits inside `levels` collections (the root counts)."""
    if kind == "flow":
        return "a: " + "[" * (levels - 1) + "1" + "]" * (levels - 1) + "\n"
    return "".join(" " * i + "k:\n" for i in range(levels - 1)) + " " * (levels - 1) + "k: 1\n"


@pytest.mark.parametrize("kind", ["flow", "block"])
def test_nesting_up_to_the_limit_is_accepted_and_one_more_level_is_not(tmp_path, kind, parser):
    assert load_text(tmp_path, nested(kind, manifest.MAX_DEPTH)).data is not None
    [found] = problems(tmp_path, nested(kind, manifest.MAX_DEPTH + 1))
    assert found.endswith(f"the manifest nests deeper than {manifest.MAX_DEPTH} levels")


class RefusesEverything(yaml.SafeLoader):
    """A parser that reads the whole text, then gives up with words of its own, as libyaml
    does on deep flow nesting since PyYAML 6.0.2."""

    def check_token(self, *choices):
        end = yaml.Mark("<text>", len(self.buffer) - 1, 0, 0, None, None)
        raise yaml.scanner.ScannerError(None, None, "the parser's own words", end)


@pytest.mark.parametrize("kind", ["flow", "block"])
def test_a_parser_that_gives_up_first_still_gets_batchgens_nesting_message(
    tmp_path, kind, monkeypatch
):
    monkeypatch.setattr(manifest, "_PARSER", RefusesEverything)
    [found] = problems(tmp_path, nested(kind, manifest.MAX_DEPTH + 1))
    assert found.endswith(f"the manifest nests deeper than {manifest.MAX_DEPTH} levels")
    # within the limit, the parser's own error stands
    [found] = problems(tmp_path, nested(kind, manifest.MAX_DEPTH))
    assert found == "1:1: manifest: YAML syntax error: the parser's own words"


def test_a_syntax_error_gives_its_position(tmp_path, parser):
    [found] = problems(tmp_path, 'version: 1\njobs:\n  - prompt: "unterminated\n')
    assert found.startswith("4:1: manifest: YAML syntax error: found unexpected end of stream")


def test_a_manifest_is_one_document(tmp_path, parser):
    assert problems(tmp_path, "a: 1\n---\nb: 2\n") == [
        "2:1: manifest: a manifest is a single YAML document (found a second one)"
    ]


def test_a_collection_cannot_be_a_key(tmp_path, parser):
    assert problems(tmp_path, "? [a, b]\n: c\n") == [
        "1:3: manifest: a mapping key must be text, not a list or mapping"
    ]


def test_a_bad_explicit_scalar_is_reported(tmp_path, parser):
    assert problems(tmp_path, "a: !!int twelve\n") == ["1:4: a: 'twelve' is not a valid !!int"]


def test_the_sha256_is_of_the_file_bytes(tmp_path):
    assert load_text(tmp_path, "a: 1\n").sha256 == hashlib.sha256(b"a: 1\n").hexdigest()


def test_a_byte_order_mark_is_accepted(tmp_path):
    assert load_text(tmp_path, b"\xef\xbb\xbfa: 1\n").data == {"a": 1}


def test_key_paths_read_like_the_manifest():
    assert format_path(()) == "manifest"
    assert format_path(("jobs", 2, "matrix", "model")) == "jobs[2].matrix.model"
    assert format_path(("defaults", "media", 0, "url")) == "defaults.media[0].url"


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.binary(max_size=300), st.text(max_size=300)))
def test_no_input_makes_loading_raise_anything_but_manifest_invalid(content):
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "m.yaml"
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8", errors="surrogatepass")
        try:
            load(path)
        except ManifestInvalid as e:
            assert e.problems and all(p.line >= 1 and p.col >= 1 for p in e.problems)


yaml_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.text(max_size=20), st.floats(allow_nan=False)
)
yaml_values = st.recursive(
    yaml_scalars,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(min_size=1, max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None)
@given(yaml_values)
def test_what_safe_dump_writes_loads_back_equal(value):
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "m.yaml"
        path.write_text(yaml.safe_dump({"v": value}), encoding="utf-8")
        assert load(path).data == {"v": value}
