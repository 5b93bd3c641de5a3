"""The sandbox's result files are real media (PRODUCT §8): a PNG or an MP4 that `file` and
`ffprobe` identify, different per task, the same for the same seed.

The browser side (Chromium shows every image and loads every video) is checked by the
review page's browser test, tests/test_review_browser.py.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import httpx
import pytest

from batchgen.sandbox import Sandbox, SandboxConfig
from batchgen.sandbox.media import dimensions, mp4, png
from tests.e2e import rows
from tests.sandbox_fixtures import ManualClock

ROOT = Path(__file__).resolve().parent.parent
needs_ffprobe = pytest.mark.skipif(
    shutil.which("ffprobe") is None, reason="ffprobe (Debian package ffmpeg) is not installed"
)
needs_file = pytest.mark.skipif(shutil.which("file") is None, reason="`file` is not installed")


def ffprobe(path: Path) -> dict:
    result = subprocess.run(
        [
            "ffprobe",
            "-v",
            "error",
            "-print_format",
            "json",
            "-show_streams",
            "-show_format",
            "-count_frames",
            str(path),
        ],  # fmt: skip
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def decode_errors(path: Path) -> str:
    """What ffmpeg says when it decodes every frame (nothing, for a sound file)."""
    result = subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(path), "-f", "null", "-"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result.stderr


def png_pixels(data: bytes) -> tuple[int, int, bytes]:
    """(width, height, raw RGB rows with their filter bytes) of our own PNGs."""
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    position, idat, width, height = 8, b"", 0, 0
    while position < len(data):
        (length,) = struct.unpack(">I", data[position : position + 4])
        kind = data[position + 4 : position + 8]
        body = data[position + 8 : position + 8 + length]
        (crc,) = struct.unpack(">I", data[position + 8 + length : position + 12 + length])
        assert crc == zlib.crc32(kind + body) & 0xFFFFFFFF, kind
        if kind == b"IHDR":
            width, height = struct.unpack(">II", body[:8])
        elif kind == b"IDAT":
            idat += body
        position += 12 + length
    return width, height, zlib.decompress(idat)


# -- the files themselves ----------------------------------------------------------------


@needs_ffprobe
@pytest.mark.parametrize(
    ("ratio", "seconds", "size"),
    [("16:9", 5, (128, 72)), ("9:16", 8, (72, 128)), ("1:1", 15, (72, 72)), ("21:9", 4, (168, 72))],
)
def test_a_video_is_an_h264_mp4_that_ffmpeg_decodes_whole(tmp_path, ratio, seconds, size):
    path = tmp_path / "clip.mp4"
    path.write_bytes(mp4("some-task", ratio, seconds))

    probe = ffprobe(path)
    [stream] = probe["streams"]
    assert stream["codec_name"] == "h264" and stream["profile"] == "Constrained Baseline"
    assert (stream["width"], stream["height"]) == size
    assert int(stream["nb_read_frames"]) == 10 * seconds
    assert float(probe["format"]["duration"]) == pytest.approx(seconds)
    assert decode_errors(path) == ""


@needs_ffprobe
def test_an_image_is_a_png_that_ffprobe_reads_in_the_ratio_asked(tmp_path):
    for ratio, size in [("1:1", (256, 256)), ("3:4", (192, 256)), ("16:9", (256, 144))]:
        path = tmp_path / f"{size[0]}.png"
        path.write_bytes(png("some-task", ratio))
        [stream] = ffprobe(path)["streams"]
        assert stream["codec_name"] == "png"
        assert (stream["width"], stream["height"]) == size
        width, height, pixels = png_pixels(path.read_bytes())
        assert (width, height) == size and len(pixels) == height * (1 + 3 * width)


def test_each_task_looks_different_and_the_same_task_looks_the_same():
    assert png("task-a", "1:1") == png("task-a", "1:1")
    assert png_pixels(png("task-a", "1:1"))[2] != png_pixels(png("task-b", "1:1"))[2]
    assert mp4("task-a", "16:9", 5) == mp4("task-a", "16:9", 5)
    assert mp4("task-a", "16:9", 5) != mp4("task-b", "16:9", 5)


@needs_ffprobe
def test_the_size_knob_pads_files_that_stay_readable(tmp_path):
    for name, data in [("a.mp4", mp4("t", "1:1", 5, 300_000)), ("a.png", png("t", "1:1", 300_000))]:
        assert len(data) == 300_000
        path = tmp_path / name
        path.write_bytes(data)
        assert ffprobe(path)["streams"][0]["width"] > 0
    assert decode_errors(tmp_path / "a.mp4") == ""


def test_an_odd_ratio_still_gives_even_sides():
    assert dimensions("not a ratio", 72) == (72, 72)
    assert dimensions("3:2", 72) == (108, 72)
    assert dimensions("0:5", 72) == (72, 72)


# -- served by the sandbox, deterministic under the seed ---------------------------------


def completed_files(seed: int) -> list[tuple[str, bytes]]:
    clock = ManualClock()
    sim = Sandbox(SandboxConfig(seed=seed, time_scale=1.0), clock=clock)
    headers = {"Authorization": "Bearer okpk_sandbox_demo"}
    bodies = [
        ("/api/video/generate", {"model": "grok-video-3", "prompt": "a", "duration": 5}),
        ("/api/video/generate", {"model": "grok-video-3", "prompt": "a", "duration": 5}),
        ("/api/image/generate", {"model": "jimeng-5.0", "prompt": "b", "ratio": "3:4"}),
    ]
    ids = []
    for path, body in bodies:
        answer = sim.handle("POST", path, headers, json.dumps(body).encode())
        assert answer.status == 200
        ids.append(json.loads(answer.body)["taskId"])  # type: ignore[arg-type]
    clock.advance(10_000)
    files = []
    for task_id in ids:
        content = sim.result_file(task_id)
        assert content is not None
        files.append((task_id, content))
    return files


def test_the_same_seed_gives_the_same_task_ids_and_files_another_seed_others():
    first, again, other = completed_files(1), completed_files(1), completed_files(2)
    assert first == again
    assert {t for t, _ in first}.isdisjoint(t for t, _ in other)
    assert len({content for _, content in first}) == 3, "two takes of one prompt look alike"
    assert first[2][1].startswith(b"\x89PNG") and first[0][1][4:8] == b"ftyp"


def test_a_file_is_served_only_once_its_task_completed(make_sandbox):
    clock = ManualClock()
    sb = make_sandbox(clock=clock, time_scale=1.0)
    body = {"model": "grok-video-3", "prompt": "a", "duration": 5}
    task_id = httpx.post(
        f"{sb.base_url}/api/video/generate", json=body, headers=sb.headers()
    ).json()["taskId"]
    assert sb.sim.result_file(task_id) is None
    assert httpx.get(f"{sb.base_url}/files/{task_id}/0.mp4").status_code == 404
    clock.advance(10_000)
    served = httpx.get(f"{sb.base_url}/files/{task_id}/0.mp4")
    assert served.status_code == 200 and served.content == sb.sim.result_file(task_id)


# -- the newcomer's first command ---------------------------------------------------------


@needs_ffprobe
@needs_file
def test_the_quickstart_in_the_sandbox_leaves_pngs_and_mp4s_that_file_and_ffprobe_know(
    tmp_path,
):
    ledger = tmp_path / "batchgen.db"
    manifest = ROOT / "manifests" / "quickstart.yaml"
    result = subprocess.run(
        [sys.executable, "-m", "batchgen", "run", str(manifest), "--sandbox"],
        cwd=tmp_path,  # the default folder, out/, is made here
        capture_output=True,
        text=True,
        timeout=180,
        env=newcomer_env(),
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines()[-1].endswith("`batchgen review`")
    saved = rows(ledger, "SELECT job_id, path FROM files WHERE downloaded_at IS NOT NULL")
    assert len(saved) == 6
    for record in saved:
        path = tmp_path / record["path"]
        assert path.parent == tmp_path / "out" / "quickstart"
        kind = subprocess.run(["file", "-b", str(path)], capture_output=True, text=True).stdout
        [stream] = ffprobe(path)["streams"]
        if record["job_id"] == "poster":
            assert path.suffix == ".png" and kind.startswith("PNG image data")
            assert stream["codec_name"] == "png"
        else:
            assert path.suffix == ".mp4" and "MP4" in kind
            assert stream["codec_name"] == "h264" and int(stream["nb_read_frames"]) > 1


def newcomer_env() -> dict[str, str]:
    """A newcomer's shell: no key, no BATCHGEN_* settings (the ledger and out/ in the cwd)."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("OKAYPIC_", "BATCHGEN_"))}
