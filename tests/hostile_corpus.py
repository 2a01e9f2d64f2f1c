"""A seeded, deterministic corpus of hostile files for :func:`bot.imaging.decode_image` (issue 12).

Nothing is committed: every file is built here, in code, and :func:`hostile_cases` yields them one
at a time so that only the file being decoded is in memory (the corpus holds ~25 full-size 24 MB
floods).  The same seed gives the same bytes on every run and machine (for a given Pillow).

Categories (``Case.category``):

- ``truncated``: valid files of every accepted format and flavour, cut at many points;
- ``mutated``: the same files with bytes overwritten, bit-flipped, runs inserted or deleted;
- ``bomb``: headers declaring huge dimensions (JPEG/PNG/GIF/BMP/TIFF/WebP), a real 80 MP PNG;
- ``flood``: metadata floods just under and just over each structural limit of
  :mod:`bot.imaging`, plus one full-size (24 MB) flood of each kind;
- ``scan_bomb``: progressive JPEGs whose last scan is repeated (small counts, one of 20,000);
- ``disguised``: PDF/ZIP/HTML/SVG/ELF/... as they are, and behind image magic bytes;
- ``odd_mode``: 1, L, LA, P with and without transparency, I;16, I, F, CMYK, LAB, 16-bit PNG;
- ``animated``: GIF/APNG/WebP with many frames;
- ``extreme_size``: 1x1, 1x65000, 65000x1 (WebP: 16383, its maximum).

``Case.expect`` lists the acceptable outcomes (``"ok"`` and/or refusal codes) where the outcome is
known; ``None`` means "any clean outcome" (truncated and mutated files).

    python -m tests.hostile_corpus DIR     # write every file to DIR (for manual runs / other decoders)
"""

from __future__ import annotations

import io
import math
import random
import struct
import sys
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from bot import imaging

SEED = 12  # issue 12
FULL_SIZE = 24 * 1024 * 1024  # the floods: just under decode_image's 25 MB default

OK = "ok"
CORRUPT = frozenset({"corrupt"})
REFUSED = frozenset({"too_much_metadata"})
TOO_MANY_PIXELS = frozenset({"too_many_pixels"})
DECODES = frozenset({OK})

CATEGORIES = (
    "truncated",
    "mutated",
    "bomb",
    "flood",
    "scan_bomb",
    "disguised",
    "odd_mode",
    "animated",
    "extreme_size",
)


@dataclass(frozen=True)
class Case:
    name: str
    data: bytes
    category: str
    expect: frozenset[str] | None = None
    """Acceptable outcomes: ``"ok"`` and/or ImageRejected codes; ``None``: any clean outcome."""
    frames: int | None = None
    """Expected ``frame_count`` when it decodes."""
    size: tuple[int, int] | None = None
    """Expected ``original_size`` when it decodes."""
    filename: str | None = None
    """The attachment name it is posted under (only ever used in messages)."""


def hostile_cases(seed: int = SEED, *, full_size: bool = True) -> Iterator[Case]:
    """Every case, lazily.  ``full_size=False`` leaves out the 24 MB floods and the big scan bomb."""
    rng = random.Random(seed)
    yield from _truncated(rng)
    yield from _mutated(rng)
    yield from _bombs()
    yield from _floods(full_size)
    yield from _scan_bombs(full_size)
    yield from _disguised(rng)
    yield from _odd_modes()
    yield from _animated()
    yield from _extreme_sizes()


# --------------------------------------------------------------------------- building blocks


def encode(img: Image.Image, fmt: str, **params: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **params)
    return buf.getvalue()


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def png_raw(width: int, height: int, bit_depth: int, colour_type: int, rows: bytes) -> bytes:
    """A PNG from already filtered scanlines (filter byte included), any depth/colour type."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return (
        imaging._PNG_MAGIC
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", zlib.compress(rows, 9))
        + png_chunk(b"IEND", b"")
    )


def insert_before(data: bytes, marker: bytes, extra: bytes, back: int = 0) -> bytes:
    at = data.index(marker) - back
    return data[:at] + extra + data[at:]


@cache
def photo(width: int = 48, height: int = 32) -> Image.Image:
    """Gradients and shapes: compresses like a photo, deterministic."""
    x = np.linspace(0.0, 1.0, width)[None, :]
    y = np.linspace(0.0, 1.0, height)[:, None]
    rgb = np.dstack([255 * x * np.ones_like(y), 255 * y * np.ones_like(x), 127.5 + 127.5 * np.sin(8 * x + 5 * y)])
    img = Image.fromarray(rgb.round().astype(np.uint8))
    draw = ImageDraw.Draw(img)
    draw.ellipse((width // 4, height // 4, width // 2, height // 2), fill=(250, 250, 20))
    draw.rectangle((width * 2 // 3, height // 2, width - 3, height - 3), fill=(20, 20, 20))
    return img


def exif_blob(orientation: int = 6, extra_tags: int = 0) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    for i in range(extra_tags):
        exif[0xC000 + i] = i & 0xFFFF
    return exif.tobytes()


def animation(fmt: str, count: int, size: tuple[int, int] = (16, 12), **params: object) -> bytes:
    frames = [Image.new("RGB", size, ((i * 37) % 256, (i * 91) % 256, (i * 13) % 256)) for i in range(count)]
    return encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=40, loop=0, **params)


def rle8_bmp(width: int, height: int, body: bytes) -> bytes:
    palette = b"".join(bytes((i, i, i, 0)) for i in range(256))
    dib = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 8, 1, len(body), 2835, 2835, 256, 0)
    offset = 14 + len(dib) + len(palette)
    return b"BM" + struct.pack("<IHHI", offset + len(body), 0, 0, offset) + dib + palette + body


@cache
def seeds() -> tuple[tuple[str, bytes], ...]:
    """Valid files of every accepted format and the flavours that take different code paths."""
    base = photo()
    rgba = base.convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(base.size))
    grey16 = Image.fromarray(np.arange(48 * 32, dtype=np.uint16).reshape(32, 48) * 40)
    rle_rows = b"".join(bytes((48, (r * 5) % 256)) + b"\x00\x00" for r in range(32)) + b"\x00\x01"
    out = [
        ("jpeg-exif", encode(base, "JPEG", quality=90, exif=exif_blob(6))),
        ("jpeg-progressive", encode(base, "JPEG", quality=90, progressive=True)),
        ("jpeg-cmyk", encode(base.convert("CMYK"), "JPEG")),
        ("jpeg-grey", encode(base.convert("L"), "JPEG")),
        ("jpeg-mpo", encode(base, "MPO", save_all=True, append_images=[base.rotate(90)])),
        ("png-rgb", encode(base, "PNG")),
        ("png-rgba", encode(rgba, "PNG")),
        ("png-palette-trns", encode(base.convert("P"), "PNG", transparency=3)),
        ("png-i16", encode(grey16, "PNG")),
        ("png-text-exif", encode(base, "PNG", exif=exif_blob(3), pnginfo=_png_info())),
        ("apng", animation("PNG", 3)),
        ("gif", encode(base.convert("P"), "GIF", comment=b"hello")),
        ("gif-animated", animation("GIF", 3)),
        ("webp-lossy", encode(base, "WEBP", quality=80)),
        ("webp-lossless-alpha", encode(rgba, "WEBP", lossless=True)),
        ("webp-animated", animation("WEBP", 3, lossless=True)),
        ("bmp-24", encode(base, "BMP")),
        ("bmp-palette", encode(base.convert("P"), "BMP")),
        ("bmp-rle8", rle8_bmp(48, 32, rle_rows)),
        ("tiff-raw", encode(base, "TIFF")),
        ("tiff-lzw", encode(base, "TIFF", compression="tiff_lzw")),
        ("tiff-deflate", encode(rgba, "TIFF", compression="tiff_adobe_deflate")),
        ("tiff-packbits", encode(base.convert("L"), "TIFF", compression="packbits")),
        ("tiff-multipage", encode(base, "TIFF", save_all=True, append_images=[base.rotate(180)])),
    ]
    if "AVIF" in imaging.ACCEPTED_FORMATS:
        out.append(("avif", encode(base, "AVIF", quality=60)))
    return tuple(out)


def _png_info() -> object:
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", "plain text")
    info.add_text("Description", "compressed " * 20, zip=True)
    info.add_itxt("XML:com.adobe.xmp", "<x:xmpmeta/>", zip=True)
    return info


# --------------------------------------------------------------------------- truncated / mutated


def _truncated(rng: random.Random) -> Iterator[Case]:
    for name, data in seeds():
        n = len(data)
        cuts = {1, 2, 3, 4, 6, 8, 11, 12, 16, 24, 33, 64, 100, n - 1, n - 2, n - 16}
        cuts |= {int(n * f) for f in (0.1, 0.25, 0.5, 0.75, 0.9, 0.99)}
        cuts |= {rng.randrange(1, n) for _ in range(4)}
        for cut in sorted(c for c in cuts if 0 < c < n):
            yield Case(f"truncated/{name}@{cut}", data[:cut], "truncated")


def _mutated(rng: random.Random) -> Iterator[Case]:
    for name, data in seeds():
        n = len(data)
        for i in range(8):  # overwrite 1-8 bytes anywhere
            out = bytearray(data)
            for _ in range(rng.randint(1, 8)):
                out[rng.randrange(n)] = rng.randrange(256)
            yield Case(f"mutated/{name}/bytes{i}", bytes(out), "mutated")
        for i in range(6):  # flip one bit in the headers, where sizes and lengths live
            out = bytearray(data)
            out[rng.randrange(min(n, 96))] ^= 1 << rng.randrange(8)
            yield Case(f"mutated/{name}/headerbit{i}", bytes(out), "mutated")
        for i in range(3):  # insert a run of 0x00, 0xFF or random bytes
            at, length = rng.randrange(n), rng.randint(1, 64)
            run = rng.choice([b"\x00" * length, b"\xff" * length, rng.randbytes(length)])
            yield Case(f"mutated/{name}/insert{i}", data[:at] + run + data[at:], "mutated")
        for i in range(3):  # delete a run
            at = rng.randrange(n)
            yield Case(f"mutated/{name}/delete{i}", data[:at] + data[at + rng.randint(1, 64) :], "mutated")


# --------------------------------------------------------------------------- bombs


def jpeg_claiming(width: int, height: int) -> bytes:
    data = bytearray(encode(Image.new("RGB", (16, 16), (255, 0, 0)), "JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def png_claiming(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return imaging._PNG_MAGIC + png_chunk(b"IHDR", ihdr) + png_chunk(b"IEND", b"")


def png_zero_bomb(width: int, height: int) -> bytes:
    """A *valid* all-black 1-bit PNG: megapixels that compress to a few kB."""
    row = b"\x00" * (1 + (width + 7) // 8)
    compressor = zlib.compressobj(9)
    idat = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return imaging._PNG_MAGIC + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def gif_claiming(width: int, height: int) -> bytes:
    data = bytearray(encode(Image.new("P", (1, 1)), "GIF"))
    data[6:10] = struct.pack("<HH", width, height)
    return bytes(data)


def gif_first_descriptor(data: bytes) -> int:
    """Offset of the first image descriptor (after the colour table and any extensions)."""
    at = 13 + (3 << ((data[10] & 7) + 1) if data[10] & 0x80 else 0)
    while data[at] == 0x21:
        at += 2
        while data[at]:
            at += data[at] + 1
        at += 1
    assert data[at] == 0x2C
    return at


def gif_frame_beyond_screen(width: int, height: int) -> bytes:
    """A 1x1 logical screen whose frame descriptor claims ``width`` x ``height``."""
    data = bytearray(encode(Image.new("P", (1, 1)), "GIF"))
    at = gif_first_descriptor(data)
    data[at + 5 : at + 9] = struct.pack("<HH", width, height)
    return bytes(data)


def bmp_claiming(width: int, height: int) -> bytes:
    dib = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 0, 2835, 2835, 0, 0)
    return b"BM" + struct.pack("<IHHI", 14 + len(dib), 0, 0, 14 + len(dib)) + dib


def tiff_ifd(entries: list[tuple[int, int, int, int]], *, big_endian: bool = False) -> bytes:
    """A one-IFD TIFF; SHORT/LONG values inline.  The IFD starts at offset 8."""
    e = ">" if big_endian else "<"
    ifd = struct.pack(e + "H", len(entries))
    for tag, typ, count, value in sorted(entries):
        packed = struct.pack(e + "HH", value, 0) if typ == 3 else struct.pack(e + "I", value)
        ifd += struct.pack(e + "HHI", tag, typ, count) + packed
    head = b"MM\x00*" if big_endian else b"II*\x00"
    return head + struct.pack(e + "I", 8) + ifd + struct.pack(e + "I", 0)


def tiff_claiming(width: int, height: int) -> bytes:
    return tiff_ifd(
        [
            (256, 4, 1, width),
            (257, 4, 1, height),
            (258, 3, 1, 8),
            (259, 3, 1, 1),
            (262, 3, 1, 1),
            (273, 4, 1, 8),
            (278, 4, 1, height),
            (279, 4, 1, width * height & 0xFFFFFFFF),
        ]
    )


def webp_claiming(width: int, height: int) -> bytes:
    data = bytearray(animation("WEBP", 2, (4, 4), lossless=True))
    vp8x = data.index(b"VP8X") + 8
    data[vp8x + 4 : vp8x + 7] = (width - 1).to_bytes(3, "little")
    data[vp8x + 7 : vp8x + 10] = (height - 1).to_bytes(3, "little")
    return bytes(data)


def _bombs() -> Iterator[Case]:
    sizes = [(9_000, 9_000), (20_000, 20_000), (65_500, 65_500), (65_500, 800)]
    for w, h in sizes:
        yield Case(f"bomb/jpeg-{w}x{h}", jpeg_claiming(w, h), "bomb", TOO_MANY_PIXELS)
        yield Case(f"bomb/gif-{w}x{h}", gif_claiming(w, h), "bomb", TOO_MANY_PIXELS)
        yield Case(f"bomb/gif-frame-{w}x{h}", gif_frame_beyond_screen(w, h), "bomb", TOO_MANY_PIXELS)
        yield Case(f"bomb/bmp-{w}x{h}", bmp_claiming(w, h), "bomb", TOO_MANY_PIXELS)
        yield Case(f"bomb/bmp-topdown-{w}x{h}", bmp_claiming(w, -h), "bomb", TOO_MANY_PIXELS)
        yield Case(f"bomb/tiff-{w}x{h}", tiff_claiming(w, h), "bomb", TOO_MANY_PIXELS)
    for w, h in [*sizes, (100_000, 100_000), (2**31 - 1, 2**31 - 1), (2**31 - 1, 1)]:
        yield Case(f"bomb/png-{w}x{h}", png_claiming(w, h), "bomb", TOO_MANY_PIXELS)
    for w, h in [(9_000, 9_000), (16_384, 16_384), (16_384, 4_000)]:
        yield Case(f"bomb/webp-{w}x{h}", webp_claiming(w, h), "bomb", TOO_MANY_PIXELS)
    yield Case("bomb/png-real-80mp", png_zero_bomb(10_000, 8_000), "bomb", TOO_MANY_PIXELS)
    # Just under the 50 MP default: a legitimate (if silly) image that must still decode.
    yield Case("bomb/png-real-49mp", png_zero_bomb(7_000, 7_000), "bomb", DECODES, size=(7_000, 7_000))


# --------------------------------------------------------------------------- floods


@cache
def small_jpeg() -> bytes:
    return encode(Image.new("RGB", (64, 43), (200, 10, 10)), "JPEG")


def jpeg_with_segments(marker: int, payload: bytes, count: int) -> bytes:
    segment = struct.pack(">HH", 0xFF00 | marker, len(payload) + 2) + payload
    data = small_jpeg()
    return data[:2] + segment * count + data[2:]


def jpeg_with_bytes(run: bytes, count: int, at: int = 2) -> bytes:
    data = small_jpeg()
    if at != 2:  # after the JFIF APP0 segment
        at = 4 + int.from_bytes(data[4:6], "big")
    return data[:at] + run * count + data[at:]


def jpeg_exif_tags(tags: int) -> bytes:
    return encode(Image.new("RGB", (64, 43), (10, 10, 200)), "JPEG", exif=exif_blob(1, tags))


@cache
def small_png() -> bytes:
    return encode(Image.new("RGB", (64, 43), (10, 200, 10)), "PNG")


def png_with_chunks(chunk: bytes, count: int, *, after_idat: bool = False) -> bytes:
    return insert_before(small_png(), b"IEND" if after_idat else b"IDAT", chunk * count, back=4)


def png_inflating_to(megabytes: int, kind: bytes) -> bytes:
    compressed = zlib.compress(b"\x00" * (megabytes << 20), 9)
    payload = {
        b"zTXt": b"Comment\x00\x00" + compressed,
        b"iCCP": b"icc\x00\x00" + compressed,
        b"iTXt": b"Comment\x00\x01\x00\x00\x00" + compressed,
    }[kind]
    return insert_before(small_png(), b"IDAT", png_chunk(kind, payload), back=4)


def png_exif_tags(tags: int) -> bytes:
    return encode(Image.new("RGB", (64, 43), (10, 200, 10)), "PNG", exif=exif_blob(1, tags))


@cache
def small_gif() -> bytes:
    return encode(Image.new("P", (64, 43), 1), "GIF")


def gif_with(extra: bytes, *, after_frame: bool = False) -> bytes:
    data = small_gif()
    if after_frame:
        return data[:-1] + extra + data[-1:]
    at = min(i for i in (data.find(b"!"), data.find(b","), len(data)) if i >= 0)
    return data[:at] + extra + data[at:]


def gif_comment(sub_blocks: int, size: int = 1, comments: int = 1) -> bytes:
    one = b"!\xfe" + (bytes([size]) + b"x" * size) * sub_blocks + b"\x00"
    return one * comments


def gif_split_lzw(sub_blocks: int) -> bytes:
    """A valid GIF whose LZW data is re-chunked into 1-byte sub-blocks."""
    side = max(8, math.isqrt(sub_blocks * 4 // 3))
    rng = np.random.default_rng(SEED)
    img = Image.fromarray(rng.integers(0, 256, (side, side), dtype=np.uint8)).convert("P")
    data = encode(img, "GIF")
    at = gif_first_descriptor(data)
    assert not data[at + 9] & 0x80  # no local colour table
    at += 10
    lzw_min, pos, lzw = data[at], at + 1, bytearray()
    while data[pos]:
        lzw += data[pos + 1 : pos + 1 + data[pos]]
        pos += data[pos] + 1
    split = np.empty(2 * len(lzw), np.uint8)
    split[0::2], split[1::2] = 1, np.frombuffer(bytes(lzw), np.uint8)
    return data[:at] + bytes([lzw_min]) + split.tobytes() + b"\x00" + data[pos + 1 :]


def gif_image_sub_blocks_only(count: int) -> bytes:
    """A 1x1 frame followed by a frame whose (garbage) data is ``count`` 1-byte sub-blocks."""
    data = small_gif()
    frame = b"," + struct.pack("<HHHHB", 0, 0, 1, 1, 0) + b"\x02" + b"\x01\x00" * count + b"\x00"
    return data[:-1] + frame + data[-1:]


def webp_frames(count: int) -> bytes:
    data = animation("WEBP", 2, (4, 4), lossless=True)
    at = data.index(b"ANMF")
    size = int.from_bytes(data[at + 4 : at + 8], "little")
    anmf = data[at : at + 8 + size + (size & 1)]
    body = data[12:at] + anmf * count
    return b"RIFF" + struct.pack("<I", 4 + len(body)) + b"WEBP" + body


def webp_exif_tags(tags: int) -> bytes:
    return encode(Image.new("RGB", (16, 16), (1, 2, 3)), "WEBP", lossless=True, exif=exif_blob(1, tags))


def tiff_tags(count: int) -> bytes:
    """An 8x8 grey TIFF with ``count`` extra private SHORT tags in its first IFD."""
    image = [
        (256, 4, 1, 8),
        (257, 4, 1, 8),
        (258, 3, 1, 8),
        (259, 3, 1, 1),
        (262, 3, 1, 1),
        (278, 4, 1, 8),
        (279, 4, 1, 64),
    ]
    extra = [(40_000 + i, 3, 1, i & 0xFFFF) for i in range(min(count, 25_535))]
    entries = image + extra + [(273, 4, 1, 0)]
    ifd_size = 2 + 12 * len(entries) + 4
    entries[-1] = (273, 4, 1, 8 + ifd_size)  # pixel data right after the IFD
    return tiff_ifd(entries) + bytes(range(64))


def bigtiff_tags(count: int, declared: int | None = None) -> bytes:
    """A BigTIFF whose first IFD holds ``count`` 20-byte entries (and declares ``declared``)."""
    entry = struct.pack("<HHQQ", 40_000, 3, 1, 7)
    ifd = struct.pack("<Q", declared if declared is not None else count) + entry * count
    return b"II+\x00" + struct.pack("<HHQ", 8, 0, 16) + ifd + struct.pack("<Q", 0)


def bmp_rle_runs(size: int) -> bytes:
    """An RLE8 BMP of ``size`` bytes of RLE data made of one-pixel runs (the costliest code for
    Pillow's Python decoder): rows of 255 runs and an end-of-line code, padded to ``size``."""
    row = b"\x01\x05" * 255 + b"\x00\x00"
    rows = max(1, (size - 2) // len(row))
    body = row * rows + b"\x00\x01"
    return rle8_bmp(255, rows, body + b"\x00" * (size - len(body)))


@cache
def jpeg_base() -> tuple[int, int]:
    """(marker segments up to the first SOS, payload bytes of table segments) of small_jpeg()."""
    data, pos, segments, tables = small_jpeg(), 2, 0, 0
    while True:
        marker, length = data[pos + 1], int.from_bytes(data[pos + 2 : pos + 4], "big")
        segments += 1
        if marker == 0xDA:
            return segments, tables
        if not (0xE0 <= marker <= 0xEF or marker == 0xFE):
            tables += length - 2
        pos += 2 + length


@cache
def gif_base_sub_blocks() -> int:
    """Image data sub-blocks of small_gif() (one frame, no extensions)."""
    data = small_gif()
    pos, count = gif_first_descriptor(data) + 11, 0
    while data[pos]:
        pos += data[pos] + 1
        count += 1
    return count


# name -> (build(count) -> bytes, the largest count the pre-scan accepts, count for ~24 MB or
# the most the format allows).
# Limits are derived from bot.imaging's constants, so the corpus follows them if they move.
Flood = tuple[Callable[[int], bytes], int, int]


def flood_kinds() -> dict[str, Flood]:
    m = imaging
    jpeg_segments, jpeg_tables = jpeg_base()
    png_chunks = 3  # IHDR, IDAT, IEND
    exif_payload = b"Exif\x00\x00" + b"\x00" * 6
    photoshop = b"Photoshop 3.0\x00" + b"8BIM\x04\x04\x00\x00\x00\x00\x00\x00" * 5_458
    big_app = b"XMP\x00" + b"\x00" * 65_529
    dqt = (b"\x00" + bytes(range(1, 65))) * 10
    sof = b"\x08\x00\x10\x00\x10\x03" + b"\x01\x11\x00" * 21_000
    text = png_chunk(b"tEXt", b"a\x00b")
    private = png_chunk(b"prVt", b"abc")
    empty_idat = png_chunk(b"IDAT", b"")
    big_private = png_chunk(b"prVt", b"\x00" * (1 << 20))
    ztxt = png_chunk(b"zTXt", b"k\x00\x00" + zlib.compress(b"x"))
    return {
        # JPEG: per-segment Python work in JpegImagePlugin, quadratic Exif concatenation
        "jpeg-exif-segments": (
            lambda n: jpeg_with_segments(0xE1, exif_payload, n),
            m.MAX_JPEG_EXIF_SEGMENTS,
            FULL_SIZE // 16,
        ),
        "jpeg-com-segments": (
            lambda n: jpeg_with_segments(0xFE, b"x" * 8, n),
            m.MAX_JPEG_SEGMENTS - jpeg_segments,
            FULL_SIZE // 12,
        ),
        "jpeg-app5-segments": (
            lambda n: jpeg_with_segments(0xE5, b"x" * 8, n),
            m.MAX_JPEG_SEGMENTS - jpeg_segments,
            FULL_SIZE // 12,
        ),
        "jpeg-rst-markers": (
            lambda n: jpeg_with_bytes(b"\xff\xd0", n),
            m.MAX_JPEG_SEGMENTS - jpeg_segments,
            FULL_SIZE // 2,
        ),
        "jpeg-fill-bytes": (lambda n: jpeg_with_bytes(b"\xff", n), m.MAX_JPEG_PADDING_BYTES, FULL_SIZE),
        "jpeg-junk-bytes": (lambda n: jpeg_with_bytes(b"\x00", n, at=-1), m.MAX_JPEG_PADDING_BYTES, FULL_SIZE),
        "jpeg-dqt-segments": (
            lambda n: jpeg_with_segments(0xDB, dqt, n),
            (m.MAX_JPEG_TABLE_BYTES - jpeg_tables) // len(dqt),
            FULL_SIZE // 654,
        ),
        "jpeg-sof-segments": (
            lambda n: jpeg_with_segments(0xC0, sof, n),
            (m.MAX_JPEG_TABLE_BYTES - jpeg_tables) // len(sof),
            FULL_SIZE // 63_010,
        ),
        "jpeg-photoshop-segments": (
            lambda n: jpeg_with_segments(0xED, photoshop, n),
            m.MAX_JPEG_PHOTOSHOP_SEGMENTS,
            FULL_SIZE // 65_514,
        ),
        "jpeg-metadata-bytes": (
            lambda n: jpeg_with_segments(0xE2, big_app, n),
            (m.MAX_JPEG_METADATA_BYTES - 14) // len(big_app),
            FULL_SIZE // 65_537,
        ),
        "jpeg-exif-ifd0-tags": (jpeg_exif_tags, m.MAX_TIFF_TAGS - 1, 5_000),
        # PNG: per-chunk Python work in PngImagePlugin; text and private chunks are kept
        "png-text-chunks": (lambda n: png_with_chunks(text, n), m.MAX_PNG_METADATA_CHUNKS, FULL_SIZE // 15),
        "png-private-chunks": (lambda n: png_with_chunks(private, n), m.MAX_PNG_METADATA_CHUNKS, FULL_SIZE // 15),
        "png-text-after-idat": (
            lambda n: png_with_chunks(text, n, after_idat=True),
            m.MAX_PNG_METADATA_CHUNKS,
            FULL_SIZE // 15,
        ),
        "png-empty-idat-chunks": (
            lambda n: png_with_chunks(empty_idat, n),
            m.MAX_PNG_CHUNKS - png_chunks,
            FULL_SIZE // 12,
        ),
        "png-metadata-bytes": (
            lambda n: png_with_chunks(big_private, n),
            m.MAX_PNG_METADATA_BYTES >> 20,
            FULL_SIZE >> 20,
        ),
        "png-compressed-chunks": (
            lambda n: png_with_chunks(ztxt, n),
            m.MAX_PNG_COMPRESSED_CHUNKS,
            FULL_SIZE // len(ztxt),
        ),
        "png-exif-ifd0-tags": (png_exif_tags, m.MAX_TIFF_TAGS - 1, 5_000),
        # GIF: Pillow walks extension sub-blocks before frame 0 in Python; our walk covers all
        "gif-comment-sub-blocks": (lambda n: gif_with(gif_comment(n)), m.MAX_GIF_EXTENSION_SUB_BLOCKS, FULL_SIZE // 2),
        "gif-comments": (lambda n: gif_with(gif_comment(1, 1, n)), m.MAX_GIF_EXTENSION_SUB_BLOCKS, FULL_SIZE // 5),
        "gif-comment-bytes": (
            lambda n: gif_with(gif_comment(n, 255)),
            m.MAX_GIF_COMMENT_BYTES // 255,
            FULL_SIZE // 256,
        ),
        "gif-trailing-extension": (
            lambda n: gif_with(gif_comment(n), after_frame=True),
            m.MAX_GIF_EXTENSION_SUB_BLOCKS,
            FULL_SIZE // 2,
        ),
        "gif-junk-before-frame": (lambda n: gif_with(b"\x01" * n), m.MAX_GIF_JUNK_BYTES, FULL_SIZE),
        "gif-image-sub-blocks": (
            gif_image_sub_blocks_only,
            m.MAX_GIF_SUB_BLOCKS - gif_base_sub_blocks(),
            FULL_SIZE // 2,
        ),
        # WebP (VP8X and ANIM precede the frames), TIFF, BMP
        "webp-frames": (webp_frames, m.MAX_WEBP_CHUNKS - 2, FULL_SIZE // 46),
        "webp-exif-ifd0-tags": (webp_exif_tags, m.MAX_TIFF_TAGS - 1, 5_000),
        "tiff-tags": (tiff_tags, m.MAX_TIFF_TAGS - 8, 25_535),
        "bigtiff-tags": (bigtiff_tags, m.MAX_TIFF_TAGS, FULL_SIZE // 20),
        "bmp-rle-bytes": (bmp_rle_runs, m.MAX_BMP_RLE_BYTES, FULL_SIZE),
    }


def _floods(full_size: bool) -> Iterator[Case]:
    for name, (build, limit, full) in flood_kinds().items():
        yield Case(f"flood/{name}/at-limit-{limit}", build(limit), "flood", at_limit_outcomes(name))
        yield Case(f"flood/{name}/over-limit-{limit + 1}", build(limit + 1), "flood", REFUSED)
        if limit * 10 < full:
            yield Case(f"flood/{name}/10x-{limit * 10}", build(limit * 10), "flood", REFUSED)
        if full_size:  # ~24 MB, or as many as the format allows ("max")
            data = build(full)
            label = "full" if len(data) >= 20 << 20 else "max"
            yield Case(f"flood/{name}/{label}-{full}", data, "flood", REFUSED)
    # Pillow's own inflate limit (1 MB per chunk): a valid PNG whose metadata inflates to 200 MB.
    for kind in (b"zTXt", b"iCCP", b"iTXt"):
        label = kind.decode()
        yield Case(f"flood/png-{label}-inflates-200mb", png_inflating_to(200, kind), "flood", REFUSED)
    # A declared count far beyond the entries present: Pillow stops at the end of the data.
    yield Case("flood/bigtiff-declares-2**40-tags-holds-4", bigtiff_tags(4, 2**40), "flood", CORRUPT)
    # Valid LZW data re-chunked into 1-byte sub-blocks: odd but legal, and under the limit.
    yield Case("flood/gif-valid-1-byte-sub-blocks", gif_split_lzw(100_000), "flood", DECODES)


def at_limit_outcomes(name: str) -> frozenset[str]:
    # At the limit the pre-scan accepts the file; a few floods are made of content that
    # Pillow or libjpeg then reject (an IFD of only unknown tags, a second SOF).
    if name in ("bigtiff-tags", "jpeg-sof-segments", "jpeg-exif-segments"):
        return frozenset({OK, "corrupt"})
    return DECODES


# --------------------------------------------------------------------------- scan bombs


def progressive_with_repeated_last_scan(side: int, repeats: int, mode: str = "L") -> bytes:
    """The issue's scan bomb: a flat progressive JPEG whose (33-byte) last scan is repeated."""
    data = encode(
        Image.new(mode, (side, side), 128 if mode == "L" else (128, 64, 32)), "JPEG", quality=90, progressive=True
    )
    last = data.rindex(b"\xff\xda")
    return data[:-2] + data[last:-2] * repeats + data[-2:]


def _scan_bombs(full_size: bool) -> Iterator[Case]:
    m = imaging
    for side, mode, scans0, blocks in (
        (64, "L", 6, 64),
        (512, "L", 6, 4_096),
        (512, "RGB", 10, 0),
        (4_096, "L", 6, 262_144),
    ):
        for repeats in (0, 1, 10, 50, 90, 94, 95, 96, 200, 1_000, 5_000):
            if side == 4_096 and repeats not in (0, 1, 10, 1_000):
                continue  # each accepted scan at 16 MP costs ~7 ms; keep CI fast
            data = progressive_with_repeated_last_scan(side, repeats, mode)
            scans = scans0 + repeats
            refused = scans > m.MAX_JPEG_SCANS or blocks * scans > m.MAX_JPEG_SCAN_BLOCKS
            yield Case(f"scan_bomb/{mode}-{side}-repeat-{repeats}", data, "scan_bomb", REFUSED if refused else DECODES)
    # Enough scans to stay under the scan count limit but over the 8x8-block budget.
    yield Case("scan_bomb/L-4096-repeat-91", progressive_with_repeated_last_scan(4_096, 91), "scan_bomb", REFUSED)
    if full_size:  # the file: 4096x4096, last scan x 20,000 (759 KB)
        yield Case(
            "scan_bomb/L-4096-repeat-20000", progressive_with_repeated_last_scan(4_096, 20_000), "scan_bomb", REFUSED
        )


# --------------------------------------------------------------------------- disguised


def _others() -> dict[str, bytes]:
    elf = b"\x7fELF\x02\x01\x01" + b"\x00" * 9 + struct.pack("<HHI", 2, 62, 1) + b"\x00" * 200
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr(zipfile.ZipInfo("cat.jpg", date_time=(2024, 1, 1, 0, 0, 0)), b"not really a cat")

    def ftyp(major: bytes, *compatible: bytes) -> bytes:
        body = major + b"\x00\x00\x00\x00" + b"".join(compatible)
        return struct.pack(">I", 8 + len(body)) + b"ftyp" + body + b"\x00" * 64

    return {
        "pdf": b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog >>\nendobj\ntrailer\n%%EOF\n",
        "zip": buf.getvalue(),
        "html": b"<!DOCTYPE html><html><body><img src=cat.png onerror=alert(1)></body></html>",
        "svg": b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="99999" '
        b'height="99999"><rect width="10" height="10"/></svg>',
        "elf": elf,
        "pe": b"MZ\x90\x00" + b"\x00" * 60 + b"PE\x00\x00" + b"\x00" * 100,
        "gzip": b"\x1f\x8b\x08\x00" + b"\x00" * 40,
        "heic": ftyp(b"heic", b"mif1", b"heic"),
        "mp4": ftyp(b"isom", b"isom", b"mp41"),
        "psd": b"8BPS\x00\x01" + b"\x00" * 100,
        "text": b"definitely a picture of a cat\n" * 10,
        "empty": b"",
    }


_IMAGE_MAGICS: dict[str, bytes] = {
    "jpeg": b"\xff\xd8\xff",
    "jpeg-app1": b"\xff\xd8\xff\xe1\x00\x10Exif\x00\x00",
    "png": imaging._PNG_MAGIC,
    "gif": b"GIF89a",
    "webp": b"RIFF\x00\x01\x00\x00WEBP",
    "tiff-le": b"II*\x00",
    "tiff-be": b"MM\x00*",
    "bigtiff": b"II+\x00\x08\x00\x00\x00",
    "bmp": b"BM\x00\x00\x00\x00\x00\x00\x00\x00\x36\x00\x00\x00\x28\x00\x00\x00",
}


def _disguised(rng: random.Random) -> Iterator[Case]:
    others = _others()
    names = ["cat.jpg", "photo.PNG", "meme.gif", "sticker.webp", "scan.tiff", "@everyone <b>.jpg"]
    for i, (name, data) in enumerate(others.items()):
        expected = frozenset({"empty"}) if not data else frozenset({"unsupported_type"})
        yield Case(f"disguised/{name}", data, "disguised", expected, filename=names[i % len(names)])
    payloads = {**{k: v for k, v in others.items() if v}, "random": rng.randbytes(4096)}
    for magic_name, magic in _IMAGE_MAGICS.items():
        for i, (name, payload) in enumerate(payloads.items()):
            # Behind image magic the bytes are sniffed as that image format: refused as corrupt
            # (or, for BMP/TIFF headers that happen to describe a tiny bitmap, decoded as noise).
            yield Case(
                f"disguised/{magic_name}-magic+{name}", magic + payload, "disguised", filename=names[i % len(names)]
            )


# --------------------------------------------------------------------------- odd modes


def _odd_modes() -> Iterator[Case]:
    base = photo()
    grey = base.convert("L")
    ramp16 = np.linspace(0, 65535, 48 * 32).reshape(32, 48).astype(np.uint16)
    p_alpha = base.convert("P")
    p_alpha.info["transparency"] = bytes(range(0, 256))
    la = Image.merge("LA", (grey, Image.linear_gradient("L").resize(base.size)))
    rows16 = b"".join(b"\x00" + np.full((48, 3), r * 1000, ">u2").tobytes() for r in range(32))
    rows16a = b"".join(b"\x00" + np.full((48, 4), r * 1000, ">u2").tobytes() for r in range(32))
    rows2 = b"".join(b"\x00" + bytes([0b00011011] * 12) for _ in range(32))
    lab = Image.merge("LAB", (grey, Image.new("L", base.size, 150), Image.new("L", base.size, 100)))
    cases: list[tuple[str, bytes]] = [
        ("1-png", encode(base.convert("1"), "PNG")),
        ("1-bmp", encode(base.convert("1"), "BMP")),
        ("1-tiff", encode(base.convert("1"), "TIFF", compression="group4")),
        ("1-gif", encode(base.convert("1"), "GIF")),
        ("L-png", encode(grey, "PNG")),
        ("LA-png", encode(la, "PNG")),
        ("P-png", encode(base.convert("P"), "PNG")),
        ("P-png-trns-key", encode(base.convert("P"), "PNG", transparency=0)),
        ("P-png-trns-alpha", encode(p_alpha, "PNG")),
        ("P-gif-trns", encode(base.convert("P"), "GIF", transparency=0)),
        ("P-bmp", encode(base.convert("P"), "BMP")),
        ("P-tiff", encode(base.convert("P"), "TIFF")),
        (
            "P-2bit-png",
            png_raw(48, 32, 2, 3, rows2)[:33]
            + png_chunk(b"PLTE", bytes(range(12)))
            + png_raw(48, 32, 2, 3, rows2)[33:],
        ),
        ("RGB-png-trns-key", encode(base, "PNG", transparency=(0, 0, 0))),
        ("RGBA-png", encode(base.convert("RGBA"), "PNG")),
        ("RGBA-tiff", encode(base.convert("RGBA"), "TIFF")),
        ("RGBA-webp", encode(base.convert("RGBA"), "WEBP")),
        ("I;16-png", encode(Image.fromarray(ramp16), "PNG")),
        ("I;16-tiff", encode(Image.fromarray(ramp16), "TIFF")),
        ("I;16B-tiff", encode(Image.fromarray(ramp16).convert("I;16B"), "TIFF")),
        ("I-tiff", encode(Image.fromarray(ramp16.astype(np.int32) * 1000 - 10**7), "TIFF")),
        ("F-tiff", encode(Image.fromarray(ramp16.astype(np.float32) / 65535.0), "TIFF")),
        ("F-tiff-nan", encode(Image.fromarray(np.full((32, 48), np.nan, np.float32)), "TIFF")),
        ("CMYK-jpeg", encode(base.convert("CMYK"), "JPEG")),
        ("CMYK-tiff", encode(base.convert("CMYK"), "TIFF")),
        ("LAB-tiff", encode(lab, "TIFF")),
        ("YCbCr-jpeg-444", encode(base, "JPEG", subsampling=0)),
        ("RGB16-png", png_raw(48, 32, 16, 2, rows16)),
        ("RGBA16-png", png_raw(48, 32, 16, 6, rows16a)),
        ("L16-png", png_raw(48, 32, 16, 0, b"".join(b"\x00" + r.astype(">u2").tobytes() for r in ramp16))),
    ]
    for name, data in cases:
        yield Case(f"odd_mode/{name}", data, "odd_mode", DECODES, size=(48, 32))


# --------------------------------------------------------------------------- animated


def gif_many_frames(count: int) -> bytes:
    """``count`` 1x1 frames, built directly (Pillow's writer is slow for thousands)."""
    head = b"GIF89a" + struct.pack("<HHBBB", 1, 1, 0x80, 0, 0) + b"\x00\x00\x00\xff\xff\xff"
    frame = b"!\xf9\x04\x04\x02\x00\x00\x00" + b"," + struct.pack("<HHHHB", 0, 0, 1, 1, 0)
    frame += b"\x02\x02\x44\x01\x00"  # LZW min size 2, one sub-block: clear, 0, end
    return head + frame * count + b";"


def _animated() -> Iterator[Case]:
    for count in (2, 50, 500):
        for fmt, params in (("GIF", {}), ("PNG", {}), ("WEBP", {"lossless": True})):
            yield Case(
                f"animated/{fmt.lower()}-{count}-frames",
                animation(fmt, count, **params),
                "animated",
                DECODES,
                frames=count,
            )
    for count in (1, 2, 9_999, 10_000, 12_000):
        yield Case(
            f"animated/gif-1x1-{count}-frames",
            gif_many_frames(count),
            "animated",
            DECODES,
            frames=min(count, imaging.MAX_COUNTED_FRAMES),
        )


# --------------------------------------------------------------------------- extreme sizes


def _extreme_sizes() -> Iterator[Case]:
    shapes = {"JPEG": 65_000, "PNG": 65_000, "GIF": 65_000, "BMP": 65_000, "TIFF": 65_000, "WEBP": 16_383}
    for fmt, longest in shapes.items():
        for w, h in ((1, 1), (1, longest), (longest, 1), (2, 2)):
            img = Image.linear_gradient("L").resize((w, h)).convert("RGB")
            yield Case(f"extreme_size/{fmt.lower()}-{w}x{h}", encode(img, fmt), "extreme_size", DECODES, size=(w, h))


# --------------------------------------------------------------------------- CLI


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__)
        return 2
    out = Path(argv[0])
    count = 0
    for case in hostile_cases():
        path = out / (case.name.replace("/", "__") + ".bin")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(case.data)
        count += 1
    print(f"wrote {count} files to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
