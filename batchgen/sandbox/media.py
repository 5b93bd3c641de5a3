"""Real result files for the sandbox: a PNG for an image task, an MP4 for a video task.

Every file is a pure function of (kind, seed text, ratio, seconds): the sandbox passes the
task id as the seed text, so each task has its own colours, stripes and motion, and the
same task id always gives the same bytes. Nothing here does I/O.

The PNG is RGB, one zlib stream, written by hand (the format is three chunks).

The MP4 holds H.264 Constrained Baseline video that needs no encoder: the first frame codes
every macroblock as I_PCM (raw 8-bit samples, no transform, no entropy coding), and each
later frame codes the macroblocks that changed as I_PCM and skips the others (P_Skip: with
every motion vector zero, a skipped macroblock is a copy of the previous frame). So a
file is a few exp-Golomb header fields around raw pixels, in an ISO-BMFF box tree
(ftyp, moov with avcC, then mdat), playable by browsers and read by ffprobe. Frames are
small (the short side is 72 pixels, 10 frames a second) to keep files and tests fast;
`min_size` pads a file (a `free` box, or a private PNG chunk) for tests that need big ones.

With `--provenance` (`Provider`), files are signed with a C2PA manifest as a provider
would sign them (an "Okaypic Sandbox" certificate from a throwaway CA made in memory when
the sandbox starts), declaring `trainedAlgorithmicMedia`.
"""

from __future__ import annotations

import functools
import hashlib
import re
import struct
import threading
import zlib
from collections import OrderedDict
from collections.abc import Callable

VIDEO_SHORT_SIDE = 72
IMAGE_LONG_SIDE = 256
FPS = 10
TIMESCALE = 1000  # mvhd/mdhd units per second
MB = 16  # a macroblock is 16x16 luma samples, 8x8 per chroma plane (4:2:0)

Colour = tuple[int, int, int]


# -- shared: the look of a task ----------------------------------------------------------


class _Look:
    """The colours, stripes and motion a seed text picks, the same on every machine."""

    def __init__(self, seed: str) -> None:
        digest = hashlib.sha256(seed.encode("utf-8", "surrogatepass")).digest()
        hue = digest[0] / 255
        self.start = _hsv(hue, 0.55 + digest[1] / 255 * 0.4, 0.55 + digest[2] / 255 * 0.4)
        self.end = _hsv((hue + 0.25 + digest[3] / 255 * 0.5) % 1, 0.6, 0.35 + digest[4] / 255 / 3)
        self.mark = _hsv((hue + 0.5) % 1, 0.25, 1.0)
        self.period = 6 + digest[5] % 14  # stripe width in pixels
        self.slant = digest[6] % 3 - 1  # stripes: -1 one diagonal, 0 vertical, 1 the other
        self.phase = digest[7]  # where the moving mark starts on its path
        self.speed = 1 + digest[8] % 2  # the mark moves every frame (2) or every other (1)

    def row(self, y: int, width: int, height: int, count: int | None = None) -> list[Colour]:
        """The still background's row y of a `width` x `height` picture, left to right: a
        diagonal gradient, every other stripe darker; `count` colours (default `width`;
        more continue the gradient). A row at a time: the sandbox draws a picture for
        every task it completes."""
        (r0, g0, b0), (r1, g1, b1) = self.start, self.end
        dr, dg, db = r1 - r0, g1 - g0, b1 - b0
        across, down = max(width - 1, 1), max(height - 1, 1)
        offset, period = self.slant * y, self.period
        colours: list[Colour] = []
        for x in range(width if count is None else count):
            t = (x / across + y / down) / 2
            r, g, b = round(r0 + dr * t), round(g0 + dg * t), round(b0 + db * t)
            if ((x + offset) // period) % 2:
                r, g, b = r * 3 // 4, g * 3 // 4, b * 3 // 4
            colours.append((r, g, b))
        return colours


def _hsv(h: float, s: float, v: float) -> Colour:
    i = int(h * 6) % 6
    f = h * 6 - int(h * 6)
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    rgb = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]
    return tuple(round(255 * c) for c in rgb)  # type: ignore[return-value]


def dimensions(ratio: str | None, short_side: int, long_side: int | None = None) -> tuple[int, int]:
    """(width, height) for a ratio like "16:9": the short side given (or the long side
    when `long_side` is), both even. An unreadable ratio gives a square."""
    match = re.fullmatch(r"(\d{1,3}):(\d{1,3})", ratio or "")
    w, h = (int(match[1]), int(match[2])) if match and int(match[1]) and int(match[2]) else (1, 1)
    if long_side is not None:
        scale = long_side / max(w, h)
    else:
        scale = short_side / min(w, h)
    return max(2, round(w * scale / 2) * 2), max(2, round(h * scale / 2) * 2)


# -- PNG -----------------------------------------------------------------------------------


def png(seed: str, ratio: str | None = None, min_size: int = 0) -> bytes:
    """A PNG picture for `seed`, shaped like `ratio`, at least `min_size` bytes."""
    width, height = dimensions(ratio, 0, IMAGE_LONG_SIDE)
    look = _Look(seed)
    cx, cy, radius = width * 0.62, height * 0.38, min(width, height) * 0.22
    rows = bytearray()
    mark = bytes(look.mark)
    for y in range(height):
        rows.append(0)  # filter type: none
        for x, colour in enumerate(look.row(y, width, height)):
            if (x - cx) ** 2 + (y - cy) ** 2 <= radius * radius:
                rows += mark
            else:
                rows += bytes(colour)
    chunks = [
        _png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)),
        _png_chunk(b"IDAT", zlib.compress(bytes(rows), 6)),
    ]
    end = _png_chunk(b"IEND", b"")
    size = 8 + sum(map(len, chunks)) + len(end)
    if min_size > size:
        # "bgPd": ancillary, private, safe to copy; viewers skip it
        chunks.append(_png_chunk(b"bgPd", bytes(max(0, min_size - size - 12))))
    return b"\x89PNG\r\n\x1a\n" + b"".join(chunks) + end


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


# -- H.264 ---------------------------------------------------------------------------------


class _Bits:
    """An MSB-first bit writer with the exp-Golomb codes of H.264 (ue(v), se(v))."""

    def __init__(self) -> None:
        self.data = bytearray()
        self._byte = 0
        self._count = 0

    def u(self, bits: int, value: int) -> None:
        for i in range(bits - 1, -1, -1):
            self._byte = (self._byte << 1) | ((value >> i) & 1)
            self._count += 1
            if self._count == 8:
                self.data.append(self._byte)
                self._byte = self._count = 0

    def ue(self, value: int) -> None:
        code = value + 1
        self.u(code.bit_length() - 1, 0)
        self.u(code.bit_length(), code)

    def se(self, value: int) -> None:
        self.ue(2 * value - 1 if value > 0 else -2 * value)

    def align(self) -> None:
        while self._count:
            self.u(1, 0)

    def raw(self, data: bytes | bytearray) -> None:
        assert self._count == 0, "raw bytes must start on a byte boundary"
        self.data += data

    def trailing(self) -> bytes:
        """rbsp_trailing_bits: a one, then zeros to the byte boundary."""
        self.u(1, 1)
        self.align()
        return bytes(self.data)


_START_CODE_LIKE = re.compile(b"\x00\x00(?=[\x00-\x03])")


def _nal(ref_idc: int, unit_type: int, rbsp: bytes) -> bytes:
    """A NAL unit: its header byte, then the payload with emulation prevention bytes."""
    return bytes([(ref_idc << 5) | unit_type]) + _START_CODE_LIKE.sub(b"\x00\x00\x03", rbsp)


LOG2_MAX_FRAME_NUM = 8
PROFILE_BASELINE, CONSTRAINED, LEVEL_3 = 66, 0xC0, 30


def _sps(mbs_wide: int, mbs_high: int, crop_right: int, crop_bottom: int) -> bytes:
    b = _Bits()
    b.u(8, PROFILE_BASELINE)
    b.u(8, CONSTRAINED)  # constraint_set0 and set1: Constrained Baseline
    b.u(8, LEVEL_3)
    b.ue(0)  # seq_parameter_set_id
    b.ue(LOG2_MAX_FRAME_NUM - 4)
    b.ue(2)  # pic_order_cnt_type 2: output order is decoding order
    b.ue(1)  # max_num_ref_frames
    b.u(1, 0)  # gaps_in_frame_num_value_allowed_flag
    b.ue(mbs_wide - 1)
    b.ue(mbs_high - 1)
    b.u(1, 1)  # frame_mbs_only_flag
    b.u(1, 1)  # direct_8x8_inference_flag
    cropped = bool(crop_right or crop_bottom)
    b.u(1, int(cropped))
    if cropped:  # in units of 2 luma samples (4:2:0)
        for offset in (0, crop_right // 2, 0, crop_bottom // 2):
            b.ue(offset)
    b.u(1, 0)  # vui_parameters_present_flag
    return _nal(3, 7, b.trailing())


def _pps() -> bytes:
    b = _Bits()
    b.ue(0)  # pic_parameter_set_id
    b.ue(0)  # seq_parameter_set_id
    b.u(1, 0)  # entropy_coding_mode_flag: CAVLC
    b.u(1, 0)  # bottom_field_pic_order_in_frame_present_flag
    b.ue(0)  # num_slice_groups_minus1
    b.ue(0)  # num_ref_idx_l0_default_active_minus1
    b.ue(0)  # num_ref_idx_l1_default_active_minus1
    b.u(1, 0)  # weighted_pred_flag
    b.u(2, 0)  # weighted_bipred_idc
    b.se(0)  # pic_init_qp_minus26
    b.se(0)  # pic_init_qs_minus26
    b.se(0)  # chroma_qp_index_offset
    b.u(1, 1)  # deblocking_filter_control_present_flag (to switch it off per slice)
    b.u(1, 0)  # constrained_intra_pred_flag
    b.u(1, 0)  # redundant_pic_cnt_present_flag
    return _nal(3, 8, b.trailing())


I_PCM_IN_I_SLICE, I_PCM_IN_P_SLICE = 25, 30  # mb_type values (Tables 7-11 and 7-13)


def _slice(frame_num: int, coded: dict[int, bytes], mb_count: int) -> bytes:
    """One picture as one slice: an IDR of I_PCM macroblocks (frame 0), else a P slice whose
    macroblocks in `coded` (address -> 384 samples) are I_PCM and the others skipped."""
    idr = frame_num == 0
    b = _Bits()
    b.ue(0)  # first_mb_in_slice
    b.ue(7 if idr else 5)  # slice_type: I or P, the same for every slice of the picture
    b.ue(0)  # pic_parameter_set_id
    b.u(LOG2_MAX_FRAME_NUM, frame_num % (1 << LOG2_MAX_FRAME_NUM))
    if idr:
        b.ue(0)  # idr_pic_id
    else:
        b.u(1, 0)  # num_ref_idx_active_override_flag
        b.u(1, 0)  # ref_pic_list_modification_flag_l0
    if idr:
        b.u(1, 0)  # no_output_of_prior_pics_flag
        b.u(1, 0)  # long_term_reference_flag
    else:
        b.u(1, 0)  # adaptive_ref_pic_marking_mode_flag
    b.se(0)  # slice_qp_delta
    b.ue(1)  # disable_deblocking_filter_idc: off, so skipped blocks are exact copies
    skipped = 0
    for address in range(mb_count):
        samples = coded.get(address)
        if samples is None:
            skipped += 1
            continue
        if not idr:
            b.ue(skipped)  # mb_skip_run
            skipped = 0
        b.ue(I_PCM_IN_I_SLICE if idr else I_PCM_IN_P_SLICE)
        b.align()  # pcm_alignment_zero_bit
        b.raw(samples)
    if skipped:
        b.ue(skipped)
    return _nal(3 if idr else 2, 5 if idr else 1, b.trailing())


class _Picture:
    """The 4:2:0 planes of one frame, cut into macroblocks of raw samples."""

    def __init__(self, mbs_wide: int, mbs_high: int) -> None:
        self.mbs_wide, self.mbs_high = mbs_wide, mbs_high
        self.width, self.height = mbs_wide * MB, mbs_high * MB
        self.y = bytearray(self.width * self.height)
        self.cb = bytearray(self.width * self.height // 4)
        self.cr = bytearray(self.width * self.height // 4)

    def paint(self, row_at: Callable[[int], list[Colour]]) -> None:
        """Paint every row y with the colours `row_at(y)` (a colour per x)."""
        w = self.width
        samples: dict[Colour, tuple[int, int, int]] = {}  # colour -> (Y, Cb, Cr)
        for y in range(self.height):
            for x, colour in enumerate(row_at(y)):
                if colour not in samples:
                    samples[colour] = (_luma(*colour), *_chroma(*colour))
                luma, cb, cr = samples[colour]
                self.y[y * w + x] = luma
                if not (x | y) & 1:
                    i = (y // 2) * (w // 2) + x // 2
                    self.cb[i], self.cr[i] = cb, cr

    def fill_block(self, mx: int, my: int, colour: Colour, border: Colour) -> None:
        """Paint macroblock (mx, my) with `colour` inside a 2-pixel `border`."""
        w = self.width
        inside = (_luma(*colour), *_chroma(*colour))
        edge = (_luma(*border), *_chroma(*border))
        for y in range(MB):
            for x in range(MB):
                luma, cb, cr = edge if x < 2 or y < 2 or x >= MB - 2 or y >= MB - 2 else inside
                self.y[(my * MB + y) * w + mx * MB + x] = luma
                if not (x | y) & 1:
                    i = (my * 8 + y // 2) * (w // 2) + mx * 8 + x // 2
                    self.cb[i], self.cr[i] = cb, cr

    def macroblock(self, address: int) -> bytes:
        """The 384 samples of a macroblock in I_PCM order: luma rows, then Cb, then Cr."""
        mx, my = address % self.mbs_wide, address // self.mbs_wide
        w, cw = self.width, self.width // 2
        out = bytearray()
        for y in range(MB):
            start = (my * MB + y) * w + mx * MB
            out += self.y[start : start + MB]
        for plane in (self.cb, self.cr):
            for y in range(8):
                start = (my * 8 + y) * cw + mx * 8
                out += plane[start : start + 8]
        return bytes(out)

    def copy(self) -> _Picture:
        other = _Picture(self.mbs_wide, self.mbs_high)
        other.y[:], other.cb[:], other.cr[:] = self.y, self.cb, self.cr
        return other


def _luma(r: int, g: int, b: int) -> int:
    """BT.601 studio range (16..235): no sample is ever a zero byte."""
    return 16 + (65481 * r + 128553 * g + 24966 * b + 127500) // 255000


def _chroma(r: int, g: int, b: int) -> tuple[int, int]:
    """BT.601 Cb and Cr (16..240)."""
    cb = 128 + (-37797 * r - 74203 * g + 112000 * b + 127500) // 255000
    cr = 128 + (112000 * r - 93786 * g - 18214 * b + 127500) // 255000
    return cb, cr


def h264_frames(
    seed: str, width: int, height: int, frames: int
) -> tuple[bytes, bytes, list[bytes]]:
    """(SPS, PPS, one NAL unit per frame) of a `width` x `height` clip: the task's still
    background with a bordered square moving across it, one macroblock at a time."""
    look = _Look(seed)
    mbs_wide, mbs_high = -(-width // MB), -(-height // MB)
    sps = _sps(mbs_wide, mbs_high, mbs_wide * MB - width, mbs_high * MB - height)
    background = _Picture(mbs_wide, mbs_high)
    # Samples past the visible picture (up to whole macroblocks) continue its gradient.
    background.paint(lambda y: look.row(y, width, height, mbs_wide * MB))
    # the square stays on macroblocks wholly inside the visible picture
    cols, rows = max(1, width // MB), max(1, height // MB)
    path = [(c, r) for r in range(rows) for c in (range(cols) if r % 2 == 0 else range(cols)[::-1])]
    mark, border = look.mark, look.end
    units: list[bytes] = []
    previous: tuple[int, int] | None = None
    for n in range(frames):
        spot = path[(look.phase + n * look.speed // 2) % len(path)]
        picture = background.copy()
        picture.fill_block(*spot, mark, border)
        if previous is None:
            coded = {a: picture.macroblock(a) for a in range(mbs_wide * mbs_high)}
        else:
            changed = {previous, spot} if previous != spot else set()
            coded = {c + r * mbs_wide: picture.macroblock(c + r * mbs_wide) for c, r in changed}
        units.append(_slice(n, coded, mbs_wide * mbs_high))
        previous = spot
    return sps, _pps(), units


# -- ISO base media file format (MP4) --------------------------------------------------------


def _box(kind: bytes, *parts: bytes) -> bytes:
    body = b"".join(parts)
    return struct.pack(">I", 8 + len(body)) + kind + body


def _full_box(kind: bytes, version: int, flags: int, *parts: bytes) -> bytes:
    return _box(kind, struct.pack(">I", (version << 24) | flags), *parts)


_MATRIX = struct.pack(">9I", 0x10000, 0, 0, 0, 0x10000, 0, 0, 0, 0x40000000)


def mp4(seed: str, ratio: str | None = None, seconds: int = 5, min_size: int = 0) -> bytes:
    """An MP4 (H.264) clip for `seed`, shaped like `ratio`, `seconds` long, at least
    `min_size` bytes."""
    width, height = dimensions(ratio, VIDEO_SHORT_SIDE)
    frames = max(1, seconds * FPS)
    sps, pps, units = h264_frames(seed, width, height, frames)
    samples = [struct.pack(">I", len(unit)) + unit for unit in units]  # 4-byte NAL lengths
    delta = TIMESCALE // FPS
    duration = delta * frames

    avcc = _box(
        b"avcC",
        bytes([1, sps[1], sps[2], sps[3], 0xFF, 0xE1]),  # version, profile, compat, level
        struct.pack(">H", len(sps)) + sps,
        bytes([1]) + struct.pack(">H", len(pps)) + pps,
    )
    avc1 = _box(
        b"avc1",
        bytes(6) + struct.pack(">H", 1),  # reserved, data_reference_index
        bytes(16),  # pre_defined, reserved
        struct.pack(">HHII", width, height, 0x480000, 0x480000),  # 72 dpi
        bytes(4) + struct.pack(">H", 1),  # reserved, frame_count
        bytes(32),  # compressorname
        struct.pack(">Hh", 0x18, -1),  # depth, pre_defined
        avcc,
    )

    def stbl(chunk_offset: int) -> bytes:
        return _box(
            b"stbl",
            _full_box(b"stsd", 0, 0, struct.pack(">I", 1), avc1),
            _full_box(b"stts", 0, 0, struct.pack(">III", 1, frames, delta)),
            _full_box(b"stss", 0, 0, struct.pack(">II", 1, 1)),  # frame 1 is the only key frame
            _full_box(b"stsc", 0, 0, struct.pack(">IIII", 1, 1, frames, 1)),
            _full_box(b"stsz", 0, 0, struct.pack(f">II{frames}I", 0, frames, *map(len, samples))),
            _full_box(b"stco", 0, 0, struct.pack(">II", 1, chunk_offset)),
        )

    def moov(chunk_offset: int) -> bytes:
        return _box(
            b"moov",
            _full_box(
                b"mvhd",
                0,
                0,
                struct.pack(">IIII", 0, 0, TIMESCALE, duration),
                struct.pack(">IH", 0x10000, 0x100) + bytes(10),  # rate 1.0, volume 1.0
                _MATRIX,
                bytes(24) + struct.pack(">I", 2),  # pre_defined, next_track_ID
            ),
            _box(
                b"trak",
                _full_box(
                    b"tkhd",
                    0,
                    3,  # enabled, in movie
                    struct.pack(">IIIII", 0, 0, 1, 0, duration),
                    bytes(8) + struct.pack(">hhhH", 0, 0, 0, 0),
                    _MATRIX,
                    struct.pack(">II", width << 16, height << 16),
                ),
                _box(
                    b"mdia",
                    _full_box(
                        b"mdhd", 0, 0, struct.pack(">IIIIHH", 0, 0, TIMESCALE, duration, 0x55C4, 0)
                    ),
                    _full_box(b"hdlr", 0, 0, bytes(4), b"vide", bytes(12), b"batchgen sandbox\x00"),
                    _box(
                        b"minf",
                        _full_box(b"vmhd", 0, 1, bytes(8)),
                        _box(
                            b"dinf",
                            _full_box(
                                b"dref", 0, 0, struct.pack(">I", 1), _full_box(b"url ", 0, 1)
                            ),
                        ),
                        stbl(chunk_offset),
                    ),
                ),
            ),
        )

    ftyp = _box(b"ftyp", b"isom", struct.pack(">I", 0x200), b"isomiso2avc1mp41")
    # moov before mdat ("fast start"): a browser can play while the file arrives
    offset = len(ftyp) + len(moov(0)) + 8
    data = b"".join(samples)
    out = ftyp + moov(offset) + _box(b"mdat", data)
    if min_size > len(out):
        out += _box(b"free", bytes(max(0, min_size - len(out) - 8)))
    return out


@functools.lru_cache(maxsize=64)
def result_file(kind: str, seed: str, ratio: str | None, seconds: int, min_size: int) -> bytes:
    """The file of one result, cached: a poll-heavy test asks for the same few many times."""
    if kind == "image":
        return png(seed, ratio, min_size)
    return mp4(seed, ratio, seconds, min_size)


class Provider:
    """Signs result files as a provider would: a C2PA manifest by "Okaypic Sandbox", from
    a root CA made in memory for this sandbox (so its manifests read as valid, untrusted
    unless `root` is given as a trust anchor). A file is signed once and then served as
    signed (the last `keep` files), so a task's file has the same bytes at every fetch."""

    ISSUER = "Okaypic Sandbox"

    def __init__(self, keep: int = 256) -> None:
        try:
            import c2pa  # noqa: F401

            from batchgen.provenance import certs
        except ImportError:
            from batchgen.errors import BatchgenError

            raise BatchgenError(
                "the sandbox's --provenance needs c2pa-python and cryptography: "
                "pip install 'batchgen[provenance]'"
            ) from None
        self.credentials = certs.make(self.ISSUER)
        self.root = self.credentials.root
        self._signed: OrderedDict[tuple[object, ...], bytes] = OrderedDict()
        self._keep = keep
        self._lock = threading.Lock()

    def sign(self, recipe: tuple[str, str, str | None, int, int], data: bytes) -> bytes:
        """`data` (the file `recipe` makes: result_file's arguments) signed."""
        with self._lock:
            if recipe in self._signed:
                self._signed.move_to_end(recipe)
                return self._signed[recipe]
        from batchgen.provenance.sign import sign_bytes

        kind, task_id = recipe[0], recipe[1]
        manifest = {
            "claim_generator_info": [{"name": "okaypic-sandbox", "version": "1"}],
            "title": task_id,
        }
        mime = "image/png" if kind == "image" else "video/mp4"
        creds = self.credentials
        signed = sign_bytes(data, mime, creds.chain, creds.key, manifest)
        with self._lock:
            signed = self._signed.setdefault(recipe, signed)
            while len(self._signed) > self._keep:
                self._signed.popitem(last=False)
        return signed
