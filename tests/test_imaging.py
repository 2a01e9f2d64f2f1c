"""Tests for bot.imaging: decoding untrusted image bytes safely.

The corpus of odd and hostile files is built here, in code, so no binaries are committed.
No timing assertions: "fast" is checked structurally (the JPEG draft is used, bombs are
refused without ``load()`` ever being called).
"""

from __future__ import annotations

import io
import pickle
import re
import struct
import zipfile
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import cache

import numpy as np
import pytest
from PIL import Image, ImageCms, ImageDraw, ImageFile, ImageOps, ImageStat, JpegImagePlugin

from bot import imaging
from bot.imaging import (
    ACCEPTED_FORMATS,
    CorruptImage,
    DecodedImage,
    EmptyImage,
    ImageRejected,
    ImageTooLarge,
    ImageTooManyPixels,
    TooMuchMetadata,
    UnsupportedImageType,
    decode_image,
    sniff_format,
)
from tests import hostile_corpus as hostile

RED = (255, 0, 0)
GREEN = (0, 255, 0)
BLUE = (0, 0, 255)
WHITE = (255, 255, 255)
BLACK = (0, 0, 0)

# Under Pillow's own global warning threshold (~89.5 MP) but over our 50 MP default, so the
# refusal must come from decode_image's header check, not from Pillow.
BOMB_SIDE = 9000


# --------------------------------------------------------------------------- helpers


def encode(img: Image.Image, fmt: str, **params: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **params)
    return buf.getvalue()


def mean_rgb(img: Image.Image, box: tuple[int, int, int, int] | None = None) -> tuple[float, ...]:
    region = img.crop(box) if box else img
    return tuple(ImageStat.Stat(region).mean)


def assert_colour(actual: tuple[float, ...], expected: tuple[int, ...], tol: float = 12) -> None:
    assert len(actual) == len(expected)
    assert all(abs(a - e) <= tol for a, e in zip(actual, expected, strict=True)), (
        f"{tuple(round(a) for a in actual)} != {expected} (±{tol})"
    )


def assert_model_ready(result: DecodedImage, target: int = 384) -> None:
    assert isinstance(result, DecodedImage)
    assert result.image.mode == "RGB"
    assert max(result.image.size) <= target
    assert min(result.image.size) >= 1
    assert result.image.info == {}  # no stale EXIF orientation to apply twice
    result.image.tobytes()  # detached from the (closed) source, fully usable


@cache
def synthetic_photo(width: int = 320, height: int = 240) -> Image.Image:
    """Smooth gradients plus a few shapes: compresses like a photo, deterministic."""
    x = np.linspace(0.0, 1.0, width)[None, :]
    y = np.linspace(0.0, 1.0, height)[:, None]
    r = 255 * x * np.ones_like(y)
    g = 255 * y * np.ones_like(x)
    b = 127.5 + 127.5 * np.sin(8 * x + 5 * y)
    img = Image.fromarray(np.dstack([r, g, b]).round().astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(img)
    draw.ellipse((width // 4, height // 4, width // 2, height // 2), fill=(250, 250, 20))
    draw.rectangle((width * 2 // 3, height // 2, width - 10, height - 10), fill=(20, 20, 20))
    return img


def marker_image(width: int, height: int, marker: int = 20) -> Image.Image:
    """Grey canvas with a red square in the top-left corner (as stored)."""
    img = Image.new("RGB", (width, height), (128, 128, 128))
    img.paste(RED, (0, 0, marker, marker))
    return img


def exif_with_orientation(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


def red_corner(img: Image.Image) -> str:
    """Which corner of ``img`` holds the red marker."""
    w, h = img.size
    m = max(2, min(w, h) // 10)
    corners = {
        "top-left": (0, 0, m, m),
        "top-right": (w - m, 0, w, m),
        "bottom-left": (0, h - m, m, h),
        "bottom-right": (w - m, h - m, w, h),
    }
    reddish = [
        name
        for name, box in corners.items()
        if (c := mean_rgb(img, box))[0] > 200 and c[1] < 60 and c[2] < 60
    ]
    assert len(reddish) == 1, f"marker corners: {reddish}"
    return reddish[0]


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return (
        struct.pack(">I", len(payload))
        + kind
        + payload
        + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)
    )


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims ``width`` x ``height`` (8-bit RGB) and has no pixel data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IEND", b"")


@cache
def png_real_bomb(width: int = 10_000, height: int = 8_000) -> bytes:
    """A *valid* 1-bit all-black PNG of 80 MP that compresses to a few kB."""
    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte + packed bits
    compressor = zlib.compressobj(9)
    idat = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", idat)
        + png_chunk(b"IEND", b"")
    )


def jpeg_claiming(width: int, height: int) -> bytes:
    """A real small JPEG whose SOF0 header is patched to claim another size."""
    data = bytearray(encode(Image.new("RGB", (16, 16), RED), "JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def gif_claiming(width: int, height: int) -> bytes:
    """A 1x1 GIF whose logical screen claims ``width`` x ``height``."""
    data = bytearray(encode(Image.new("P", (1, 1)), "GIF"))
    data[6:10] = struct.pack("<HH", width, height)
    return bytes(data)


def bmp_claiming(width: int, height: int) -> bytes:
    """BMP headers (24-bit, uncompressed) for ``width`` x ``height`` with no pixel data."""
    dib = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 0, 2835, 2835, 0, 0)
    return b"BM" + struct.pack("<IHHI", 14 + len(dib), 0, 0, 14 + len(dib)) + dib


def tiff_claiming(width: int, height: int) -> bytes:
    """A little-endian baseline TIFF IFD for an 8-bit greyscale ``width`` x ``height``."""
    entries = [
        (256, 4, 1, width),  # ImageWidth, LONG
        (257, 4, 1, height),  # ImageLength
        (258, 3, 1, 8),  # BitsPerSample
        (259, 3, 1, 1),  # Compression: none
        (262, 3, 1, 1),  # Photometric: black is zero
        (273, 4, 1, 8),  # StripOffsets (nonsense, never read)
        (278, 4, 1, height),  # RowsPerStrip
        (279, 4, 1, width * height),  # StripByteCounts
    ]
    ifd = struct.pack("<H", len(entries))
    for tag, typ, count, value in entries:
        packed = struct.pack("<H", value) + b"\x00\x00" if typ == 3 else struct.pack("<I", value)
        ifd += struct.pack("<HHI", tag, typ, count) + packed
    ifd += struct.pack("<I", 0)
    return b"II*\x00" + struct.pack("<I", 8) + ifd


def webp_claiming(width: int, height: int) -> bytes:
    """A valid 2-frame 4x4 animated WebP whose VP8X canvas claims ``width`` x ``height``.

    (libwebp validates the bitstream at open time, so a header with junk data would be
    refused as corrupt instead; small frames on a huge canvas are perfectly legal.)
    """
    small = [Image.new("RGB", (4, 4), c) for c in (RED, GREEN)]
    data = bytearray(
        encode(small[0], "WEBP", save_all=True, append_images=small[1:], lossless=True)
    )
    vp8x = data.index(b"VP8X") + 8  # payload: flags(1) reserved(3) w-1(3) h-1(3), LE
    data[vp8x + 4 : vp8x + 7] = (width - 1).to_bytes(3, "little")
    data[vp8x + 7 : vp8x + 10] = (height - 1).to_bytes(3, "little")
    return bytes(data)


def ftyp(major: bytes, *compatible: bytes) -> bytes:
    body = major + b"\x00\x00\x00\x00" + b"".join(compatible)
    return struct.pack(">I", 8 + len(body)) + b"ftyp" + body + b"\x00" * 64


@cache
def zip_bytes() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("cat.jpg", b"not really")
    return buf.getvalue()


@cache
def small_jpeg() -> bytes:
    return encode(synthetic_photo(), "JPEG", quality=90)


@cache
def small_png() -> bytes:
    return encode(synthetic_photo(), "PNG")


def garbled_png() -> bytes:
    """A PNG with a byte flipped inside IDAT (the CRC no longer matches)."""
    data = bytearray(small_png())
    idat = data.index(b"IDAT")
    data[idat + 200] ^= 0xFF
    return bytes(data)


def random_garbage() -> bytes:
    return np.random.default_rng(1234).integers(0, 256, 4096, dtype=np.uint8).tobytes()


def truncated(factory: Callable[[], bytes], fraction: float = 0.5) -> Callable[[], bytes]:
    def make() -> bytes:
        data = factory()
        return data[: int(len(data) * fraction)]

    return make


# --------------------------------------------------------------------------- refusals

# (id, bytes factory, expected exception, expected code, expected sniff result or ...)
REFUSALS: list[tuple[str, Callable[[], bytes], type[ImageRejected], str]] = [
    ("empty", lambda: b"", EmptyImage, "empty"),
    ("garbage", random_garbage, UnsupportedImageType, "unsupported_type"),
    ("text", lambda: b"hello, this is definitely a cat\n" * 5, UnsupportedImageType,
     "unsupported_type"),
    ("pdf", lambda: b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n", UnsupportedImageType,
     "unsupported_type"),
    ("zip", zip_bytes, UnsupportedImageType, "unsupported_type"),
    ("svg", lambda: b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg"'
     b' width="10" height="10"><rect width="10" height="10"/></svg>', UnsupportedImageType,
     "unsupported_type"),
    ("html", lambda: b"<!DOCTYPE html><html><body><img src=cat.png></body></html>",
     UnsupportedImageType, "unsupported_type"),
    ("heic", lambda: ftyp(b"heic", b"mif1", b"heic"), UnsupportedImageType, "unsupported_type"),
    ("mp4", lambda: ftyp(b"isom", b"isom", b"mp41"), UnsupportedImageType, "unsupported_type"),
    ("jpeg-truncated", truncated(small_jpeg), CorruptImage, "corrupt"),
    ("png-truncated", truncated(small_png), CorruptImage, "corrupt"),
    ("png-signature-only", lambda: small_png()[:20], CorruptImage, "corrupt"),
    ("png-garbled", garbled_png, CorruptImage, "corrupt"),
    ("jpeg-magic-then-garbage", lambda: b"\xff\xd8\xff" + random_garbage(), CorruptImage,
     "corrupt"),
    ("webp-truncated", truncated(lambda: encode(synthetic_photo(), "WEBP")), CorruptImage,
     "corrupt"),
    ("tiff-truncated", truncated(lambda: encode(synthetic_photo(), "TIFF")), CorruptImage,
     "corrupt"),
    ("bmp-truncated", truncated(lambda: encode(synthetic_photo(), "BMP")), CorruptImage,
     "corrupt"),
    ("gif-truncated", truncated(lambda: encode(synthetic_photo(), "GIF")), CorruptImage,
     "corrupt"),
    ("png-bomb-ihdr-100000x100000", lambda: png_header_only(100_000, 100_000),
     ImageTooManyPixels, "too_many_pixels"),
    ("png-bomb-real-80mp", png_real_bomb, ImageTooManyPixels, "too_many_pixels"),
    ("jpeg-bomb-60000x60000", lambda: jpeg_claiming(60_000, 60_000), ImageTooManyPixels,
     "too_many_pixels"),
    ("jpeg-bomb", lambda: jpeg_claiming(BOMB_SIDE, BOMB_SIDE), ImageTooManyPixels,
     "too_many_pixels"),
    ("gif-bomb", lambda: gif_claiming(BOMB_SIDE, BOMB_SIDE), ImageTooManyPixels,
     "too_many_pixels"),
    ("bmp-bomb", lambda: bmp_claiming(BOMB_SIDE, BOMB_SIDE), ImageTooManyPixels,
     "too_many_pixels"),
    ("tiff-bomb", lambda: tiff_claiming(BOMB_SIDE, BOMB_SIDE), ImageTooManyPixels,
     "too_many_pixels"),
    ("webp-bomb", lambda: webp_claiming(BOMB_SIDE, BOMB_SIDE), ImageTooManyPixels,
     "too_many_pixels"),
]  # fmt: skip

if "AVIF" in ACCEPTED_FORMATS:
    REFUSALS.append(
        ("avif-truncated", truncated(lambda: encode(synthetic_photo(), "AVIF"), 0.9),
         CorruptImage, "corrupt")
    )  # fmt: skip

# Words that must never reach a Discord user.
JARGON = re.compile(
    r"traceback|\bPIL\b|pillow|exception|error|errno|struct|zlib|decompression|"
    r"\bNone\b|[{}]|0x[0-9a-f]+|\.py\b",
    re.IGNORECASE,
)


def check_user_message(exc: ImageRejected) -> None:
    message = exc.user_message
    assert isinstance(message, str) and message.strip()
    assert not JARGON.search(message), message
    assert "\n" not in message
    assert len(message) < 300
    assert message[0].isupper() and message.rstrip()[-1] in ".?!"
    assert exc.code and re.fullmatch(r"[a-z_]+", exc.code)


@pytest.mark.filterwarnings("ignore")  # Pillow may warn about the garbage it is shown
@pytest.mark.parametrize(
    ("factory", "expected", "code"),
    [pytest.param(f, e, c, id=i) for i, f, e, c in REFUSALS],
)
def test_refusals(factory: Callable[[], bytes], expected: type[ImageRejected], code: str) -> None:
    with pytest.raises(expected) as info:
        decode_image(factory())
    exc = info.value
    assert type(exc) is expected
    assert isinstance(exc, ImageRejected)
    assert exc.code == code
    check_user_message(exc)
    assert str(exc)  # technical detail for the logs


@pytest.mark.parametrize(
    ("factory", "detected", "phrase"),
    [
        pytest.param(lambda: b"%PDF-1.4\n", "PDF", "PDF document", id="pdf"),
        pytest.param(zip_bytes, "ZIP", "ZIP archive", id="zip"),
        pytest.param(
            lambda: b'<svg xmlns="http://www.w3.org/2000/svg"></svg>', "SVG", "SVG", id="svg"
        ),
        pytest.param(lambda: ftyp(b"heic", b"mif1"), "HEIC", "HEIC", id="heic"),
        pytest.param(lambda: ftyp(b"mif1", b"heic"), "HEIC", "HEIC", id="heic-mif1"),
        pytest.param(lambda: b"just some words\n", "TEXT", "text file", id="text"),
    ],
)
def test_unsupported_type_names_what_was_detected(
    factory: Callable[[], bytes], detected: str, phrase: str
) -> None:
    with pytest.raises(UnsupportedImageType) as info:
        decode_image(factory())
    assert info.value.detected == detected
    assert phrase in info.value.user_message
    for accepted in ("JPEG", "PNG", "GIF", "WebP"):  # lists what we *can* read
        assert accepted in info.value.user_message


def test_unknown_bytes_message_lists_accepted_types() -> None:
    with pytest.raises(UnsupportedImageType) as info:
        decode_image(random_garbage())
    assert info.value.detected is None
    assert "JPEG" in info.value.user_message and "PNG" in info.value.user_message


def test_max_bytes_refused_before_parsing_and_message_gives_limit_in_mb() -> None:
    data = b"\xff\xd8\xff" + b"\x00" * (2 * 1024 * 1024)  # not even a valid JPEG
    with pytest.raises(ImageTooLarge) as info:
        decode_image(data, max_bytes=1024 * 1024)
    exc = info.value
    assert exc.code == "too_large"
    assert "1 MB" in exc.user_message
    assert "2.1 MB" in exc.user_message  # the actual size, rounded up
    check_user_message(exc)


def test_default_max_bytes_is_25_mb() -> None:
    data = b"\x89PNG\r\n\x1a\n" + b"\x00" * (25 * 1024 * 1024)
    with pytest.raises(ImageTooLarge) as info:
        decode_image(data)
    assert "25 MB" in info.value.user_message


def test_exactly_max_bytes_is_allowed() -> None:
    data = small_png()
    assert decode_image(data, max_bytes=len(data)).format == "PNG"


def test_max_pixels_is_per_call_and_inclusive() -> None:
    data = encode(Image.new("RGB", (100, 50), BLUE), "PNG")
    assert decode_image(data, max_pixels=5000).image.size == (100, 50)
    with pytest.raises(ImageTooManyPixels) as info:
        decode_image(data, max_pixels=4999)
    assert (info.value.width, info.value.height) == (100, 50)
    check_user_message(info.value)


def test_pillow_global_limit_is_not_touched() -> None:
    before = Image.MAX_IMAGE_PIXELS
    with pytest.raises(ImageTooManyPixels):
        decode_image(small_jpeg(), max_pixels=10)
    decode_image(small_jpeg(), max_pixels=10**12)
    assert before == Image.MAX_IMAGE_PIXELS


@pytest.mark.parametrize(
    "factory",
    [
        pytest.param(png_real_bomb, id="png-real"),
        pytest.param(lambda: png_header_only(100_000, 100_000), id="png-ihdr"),
        pytest.param(lambda: jpeg_claiming(BOMB_SIDE, BOMB_SIDE), id="jpeg"),
        pytest.param(lambda: gif_claiming(BOMB_SIDE, BOMB_SIDE), id="gif"),
        pytest.param(lambda: bmp_claiming(BOMB_SIDE, BOMB_SIDE), id="bmp"),
        pytest.param(lambda: tiff_claiming(BOMB_SIDE, BOMB_SIDE), id="tiff"),
        pytest.param(lambda: webp_claiming(BOMB_SIDE, BOMB_SIDE), id="webp"),
    ],
)
def test_bombs_are_refused_from_the_header_without_decoding(
    factory: Callable[[], bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    data = factory()
    loads: list[object] = []
    real_load = ImageFile.ImageFile.load

    def spy_load(self: ImageFile.ImageFile) -> object:
        loads.append(self)
        return real_load(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", spy_load)
    with pytest.raises(ImageTooManyPixels):
        decode_image(data)
    assert loads == []
    assert len(data) < 64 * 1024  # the point of a bomb: tiny file, huge canvas


def test_bomb_reports_dimensions() -> None:
    with pytest.raises(ImageTooManyPixels) as info:
        decode_image(png_real_bomb())
    assert (info.value.width, info.value.height) == (10_000, 8_000)
    assert "10,000×8,000" in info.value.user_message


def test_filename_is_only_used_for_messages_and_is_sanitised() -> None:
    nasty = "C:\\fakepath\\@everyone <@123456> `**cat**` [x](evil).pdf"
    with pytest.raises(UnsupportedImageType) as info:
        decode_image(b"%PDF-1.5\n", filename=nasty)
    message = info.value.user_message
    assert "everyone" in message  # still recognisable...
    for forbidden in ("@", "<", ">", "`", "*", "[", "](", "/"):
        assert forbidden not in message  # ...but cannot ping, link or format
    check_user_message(info.value)


# --------------------------------------------------------------------------- sniffing


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"\xff\xd8\xff\xe0\x00\x10JFIF", "JPEG"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "PNG"),
        (b"GIF89a\x01\x00", "GIF"),
        (b"GIF87a\x01\x00", "GIF"),
        (b"RIFF\x00\x00\x00\x00WEBPVP8 ", "WEBP"),
        (b"RIFF\x00\x00\x00\x00WAVEfmt ", "AUDIO"),
        (b"II*\x00\x08\x00\x00\x00", "TIFF"),
        (b"MM\x00*\x00\x00\x00\x08", "TIFF"),
        (b"BM" + b"\x00" * 12 + struct.pack("<I", 40) + b"\x00" * 16, "BMP"),
        (b"BMW is not a bitmap, it is a car", "TEXT"),
        (ftyp(b"avif", b"mif1", b"miaf"), "AVIF"),
        (ftyp(b"mif1", b"avif"), "AVIF"),
        (ftyp(b"heic", b"mif1"), "HEIC"),
        (ftyp(b"qt  "), "VIDEO"),
        (b"%PDF-1.7", "PDF"),
        (b"PK\x03\x04", "ZIP"),
        (b"\x1f\x8b\x08\x00", "GZIP"),
        (b"8BPS\x00\x01", "PSD"),
        (b"\x00\x00\x01\x00\x01\x00", "ICO"),
        (b"\xef\xbb\xbf<svg></svg>", "SVG"),
        (b"   <?xml version='1.0'?><svg/>", "SVG"),
        (b"<!doctype html>", "HTML"),
        (b"plain text", "TEXT"),
        (b"\x00\x01\x02\x03\x04\x05", None),
        (b"", None),
    ],
)
def test_sniff_format(data: bytes, expected: str | None) -> None:
    assert sniff_format(data) == expected


def test_sniffing_ignores_the_file_name() -> None:
    """A PNG called .jpg is a PNG; a JPEG called .png is a JPEG."""
    assert decode_image(small_png(), filename="holiday.jpg").format == "PNG"
    assert decode_image(small_jpeg(), filename="holiday.png").format == "JPEG"


def test_accepted_formats() -> None:
    assert {"JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF"} <= ACCEPTED_FORMATS
    assert "HEIC" not in ACCEPTED_FORMATS
    assert "PDF" not in ACCEPTED_FORMATS


# --------------------------------------------------------------------------- real photos


@pytest.fixture(scope="module")
def photos() -> dict[str, Image.Image]:
    skdata = pytest.importorskip("skimage.data")
    out = {}
    for name in ("astronaut", "chelsea", "coffee", "rocket"):
        array = getattr(skdata, name)()
        out[name] = Image.fromarray(array).convert("RGB")
    return out


PHOTO_ENCODINGS = [
    ("JPEG", {"quality": 90}),
    ("PNG", {}),
    ("WEBP", {"quality": 90}),
    ("GIF", {}),
    ("BMP", {}),
    ("TIFF", {"compression": "tiff_lzw"}),
]


@pytest.mark.parametrize("name", ["astronaut", "chelsea", "coffee", "rocket"])
@pytest.mark.parametrize(("fmt", "params"), PHOTO_ENCODINGS, ids=[f for f, _ in PHOTO_ENCODINGS])
def test_real_photos(
    photos: dict[str, Image.Image], name: str, fmt: str, params: dict[str, object]
) -> None:
    original = photos[name]
    result = decode_image(encode(original, fmt, **params))
    assert_model_ready(result)
    assert result.format == fmt
    assert result.original_size == original.size
    assert (result.animated, result.frame_count) == (False, 1)
    w, h = original.size
    assert max(result.image.size) == min(384, max(w, h))
    assert abs(result.image.width / result.image.height - w / h) < 0.02
    # Same picture: compare with a plain high-quality resize of the source.
    reference = original.resize(result.image.size, Image.Resampling.LANCZOS)
    diff = np.abs(np.asarray(result.image, dtype=np.int16) - np.asarray(reference, dtype=np.int16))
    tolerance = 25 if fmt == "GIF" else 8  # GIF is quantised to 256 colours
    assert diff.mean() < tolerance, f"mean abs diff {diff.mean():.1f}"


@pytest.mark.skipif("AVIF" not in ACCEPTED_FORMATS, reason="Pillow built without AVIF")
def test_avif_photo() -> None:
    original = synthetic_photo()
    result = decode_image(encode(original, "AVIF", quality=90))
    assert_model_ready(result)
    assert result.format == "AVIF"
    assert result.original_size == original.size
    assert not result.animated
    assert_colour(mean_rgb(result.image), mean_rgb(original), tol=6)


# --------------------------------------------------------------------------- sizes


def test_huge_jpeg_is_downscaled_via_draft(monkeypatch: pytest.MonkeyPatch) -> None:
    img = Image.new("RGB", (6000, 4000), (128, 128, 128))
    img.paste(RED, (0, 0, 1500, 1000))
    img.paste(BLUE, (4500, 3000, 6000, 4000))
    data = encode(img, "JPEG", quality=85)

    drafts: list[tuple[object, object]] = []
    real_draft = JpegImagePlugin.JpegImageFile.draft

    def spy_draft(self, mode, size):  # type: ignore[no-untyped-def]
        result = real_draft(self, mode, size)
        drafts.append((size, self.size))
        return result

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy_draft)
    result = decode_image(data)
    assert_model_ready(result)
    assert result.image.size == (384, 256)
    assert result.original_size == (6000, 4000)
    assert len(drafts) == 1
    ((_, drafted_size),) = drafts
    assert drafted_size[0] < 6000  # libjpeg really decoded at reduced scale...
    assert drafted_size[0] >= 384 and drafted_size[1] >= 256  # ...but never below target
    assert_colour(mean_rgb(result.image, (5, 5, 80, 50)), RED, tol=20)
    assert_colour(mean_rgb(result.image, (300, 200, 380, 250)), BLUE, tol=20)


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        ((50, 30), (50, 30)),  # never upscaled
        ((384, 100), (384, 100)),  # exactly at target
        ((385, 100), (384, 100)),
        ((100, 1000), (38, 384)),  # portrait
        ((5000, 10), (384, 1)),  # extreme panorama keeps at least 1 px
    ],
)
@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_resize_bounds(size: tuple[int, int], expected: tuple[int, int], fmt: str) -> None:
    result = decode_image(encode(Image.new("RGB", size, GREEN), fmt))
    assert result.image.size == expected
    assert result.original_size == size
    assert_colour(mean_rgb(result.image), GREEN, tol=10)


def test_custom_target_size() -> None:
    result = decode_image(small_jpeg(), target_size=224)
    assert result.image.size == (224, 168)


# --------------------------------------------------------------------------- animation


def frames(*colours: tuple[int, int, int], size: tuple[int, int] = (64, 48)) -> list[Image.Image]:
    return [Image.new("RGB", size, c) for c in colours]


def save_animation(fmt: str, images: list[Image.Image], **params: object) -> bytes:
    return encode(images[0], fmt, save_all=True, append_images=images[1:], duration=100,
                  loop=0, **params)  # fmt: skip


@pytest.mark.parametrize(
    ("fmt", "params"),
    [("GIF", {}), ("WEBP", {"lossless": True}), ("PNG", {})],
    ids=["gif", "webp", "apng"],
)
def test_animation_first_frame(fmt: str, params: dict[str, object]) -> None:
    data = save_animation(fmt, frames(RED, GREEN, BLUE), **params)
    result = decode_image(data)
    assert_model_ready(result)
    assert result.format == fmt
    assert result.animated is True
    assert result.frame_count == 3
    assert result.image.size == (64, 48)
    assert_colour(mean_rgb(result.image), RED, tol=3)


@pytest.mark.skipif("AVIF" not in ACCEPTED_FORMATS, reason="Pillow built without AVIF")
def test_animated_avif_first_frame() -> None:
    data = save_animation("AVIF", frames(RED, GREEN, BLUE), quality=90)
    result = decode_image(data)
    assert (result.animated, result.frame_count) == (True, 3)
    assert_colour(mean_rgb(result.image), RED, tol=20)


@pytest.mark.parametrize("fmt", ["GIF", "WEBP", "PNG"])
def test_single_frame_is_not_animated(fmt: str) -> None:
    result = decode_image(encode(Image.new("RGB", (8, 8), BLUE), fmt))
    assert (result.animated, result.frame_count) == (False, 1)


def test_gif_frame_count_matches_pillow_with_extensions() -> None:
    # Different palettes per frame (local colour tables), comments, loop extension.
    images = [Image.new("RGB", (20, 20), (i * 40, 255 - i * 40, i * 10)) for i in range(6)]
    data = save_animation("GIF", images, comment=b"hello " * 100)
    with Image.open(io.BytesIO(data)) as im:
        expected = im.n_frames
    assert expected == 6
    assert decode_image(data).frame_count == expected


def test_gif_frame_counting_is_capped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(imaging, "MAX_COUNTED_FRAMES", 5)
    data = save_animation("GIF", [Image.new("L", (4, 4), v) for v in range(0, 250, 25)])
    result = decode_image(data)
    assert (result.animated, result.frame_count) == (True, 5)


def test_gif_transparent_first_frame_is_white() -> None:
    frame = Image.new("P", (32, 32), 0)
    frame.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    frame.paste(1, (16, 0, 32, 32))  # right half red, left half transparent index 0
    data = encode(frame, "GIF", transparency=0)
    result = decode_image(data)
    assert_colour(mean_rgb(result.image, (0, 0, 14, 32)), WHITE, tol=1)
    assert_colour(mean_rgb(result.image, (18, 0, 32, 32)), RED, tol=1)


def test_mpo_from_phones_is_a_plain_jpeg() -> None:
    """Phones append depth maps/previews (MPO); that is not an animation."""
    data = encode(Image.new("RGB", (64, 64), RED), "MPO", save_all=True,
                  append_images=[Image.new("RGB", (64, 64), BLUE)])  # fmt: skip
    assert sniff_format(data) == "JPEG"
    result = decode_image(data)
    assert result.format == "JPEG"
    assert (result.animated, result.frame_count) == (False, 1)
    assert_colour(mean_rgb(result.image), RED, tol=10)


# --------------------------------------------------------------------------- colour modes


def test_cmyk_jpeg_adobe_inverted() -> None:
    # Pure red in CMYK is C=0 M=100% Y=100% K=0.  libjpeg writes an Adobe APP14 marker and
    # Adobe-style (inverted) CMYK, which is what Photoshop produces.
    img = Image.new("CMYK", (64, 64), (0, 255, 255, 0))
    img.paste((255, 0, 255, 0), (32, 0, 64, 64))  # right half: cyan + yellow = green
    data = encode(img, "JPEG", quality=95)
    with Image.open(io.BytesIO(data)) as raw:
        assert raw.mode == "CMYK" and "adobe" in raw.info
    result = decode_image(data)
    assert_model_ready(result)
    assert_colour(mean_rgb(result.image, (0, 0, 28, 64)), RED, tol=15)
    assert_colour(mean_rgb(result.image, (36, 0, 64, 64)), GREEN, tol=15)


def test_cmyk_tiff() -> None:
    img = Image.new("CMYK", (40, 40), (255, 255, 0, 0))  # C+M = blue
    result = decode_image(encode(img, "TIFF"))
    assert_colour(mean_rgb(result.image), BLUE, tol=5)


def test_cielab_tiff_is_colour_managed() -> None:
    to_lab = ImageCms.buildTransform(
        ImageCms.createProfile("sRGB"), ImageCms.createProfile("LAB"), "RGB", "LAB"
    )
    rgb = Image.new("RGB", (40, 40), RED)
    rgb.paste((128, 128, 128), (20, 0, 40, 40))
    lab = ImageCms.applyTransform(rgb, to_lab)
    assert lab is not None and lab.mode == "LAB"
    result = decode_image(encode(lab, "TIFF"))
    assert_colour(mean_rgb(result.image, (0, 0, 18, 40)), RED, tol=6)
    assert_colour(mean_rgb(result.image, (22, 0, 40, 40)), (128, 128, 128), tol=6)


def test_palette_png_with_transparency_becomes_white() -> None:
    img = Image.new("P", (40, 40), 0)
    img.putpalette([0, 0, 0, 0, 0, 255] + [0] * 762)  # index 0 black, index 1 blue
    img.paste(1, (20, 0, 40, 40))
    data = encode(img, "PNG", transparency=0)  # index 0 fully transparent
    with Image.open(io.BytesIO(data)) as raw:
        assert raw.mode == "P"
    result = decode_image(data)
    assert_colour(mean_rgb(result.image, (0, 0, 18, 40)), WHITE, tol=1)  # not black!
    assert_colour(mean_rgb(result.image, (22, 0, 40, 40)), BLUE, tol=1)


def test_palette_png_with_partial_alpha() -> None:
    img = Image.new("P", (40, 40), 0)
    img.putpalette([0, 0, 0] * 256)
    data = encode(img, "PNG", transparency=bytes([128]))  # tRNS: index 0 half transparent
    result = decode_image(data)
    assert_colour(mean_rgb(result.image), (127, 127, 127), tol=2)


def test_rgba_png_composited_over_white() -> None:
    img = Image.new("RGBA", (60, 20), (0, 0, 0, 0))
    img.paste((0, 0, 255, 255), (20, 0, 40, 20))
    img.paste((0, 0, 0, 128), (40, 0, 60, 20))
    result = decode_image(encode(img, "PNG"))
    assert_colour(mean_rgb(result.image, (0, 0, 18, 20)), WHITE, tol=1)
    assert_colour(mean_rgb(result.image, (22, 0, 38, 20)), BLUE, tol=1)
    assert_colour(mean_rgb(result.image, (42, 0, 60, 20)), (127, 127, 127), tol=2)


def test_rgba_downscale_has_no_dark_fringes() -> None:
    """Resizing happens premultiplied: transparent black pixels must not bleed grey."""
    img = Image.new("RGBA", (1000, 1000), (0, 0, 0, 0))
    draw = ImageDraw.Draw(img)
    for x in range(0, 1000, 4):  # thin opaque white lines on transparent black
        draw.line((x, 0, x, 999), fill=(255, 255, 255, 255))
    result = decode_image(encode(img, "PNG"))
    assert min(mean_rgb(result.image)) > 250


def test_rgba_webp_composited_over_white() -> None:
    img = Image.new("RGBA", (40, 40), (255, 0, 0, 0))
    img.paste((0, 255, 0, 255), (20, 0, 40, 40))
    result = decode_image(encode(img, "WEBP", lossless=True))
    assert_colour(mean_rgb(result.image, (0, 0, 18, 40)), WHITE, tol=1)
    assert_colour(mean_rgb(result.image, (22, 0, 40, 40)), GREEN, tol=1)


def test_la_png_composited_over_white() -> None:
    img = Image.new("LA", (40, 40), (0, 0))
    img.paste((0, 255), (20, 0, 40, 40))
    result = decode_image(encode(img, "PNG"))
    assert_colour(mean_rgb(result.image, (0, 0, 18, 40)), WHITE, tol=1)
    assert_colour(mean_rgb(result.image, (22, 0, 40, 40)), BLACK, tol=1)


@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_png_transparent_key_colour_becomes_white(mode: str) -> None:
    img = Image.new(mode, (40, 40), 0)
    img.paste(200 if mode == "L" else (200, 0, 0), (20, 0, 40, 40))
    key = 0 if mode == "L" else (0, 0, 0)
    result = decode_image(encode(img, "PNG", transparency=key))
    assert_colour(mean_rgb(result.image, (0, 0, 18, 40)), WHITE, tol=1)


@pytest.mark.parametrize(("value", "expected"), [(0, 0), (32768, 128), (65535, 255), (4096, 16)])
def test_16_bit_greyscale_png_is_scaled_not_clipped(value: int, expected: int) -> None:
    img = Image.fromarray(np.full((16, 16), value, dtype=np.uint16))
    assert img.mode.startswith("I;16")
    result = decode_image(encode(img, "PNG"))
    assert_colour(mean_rgb(result.image), (expected,) * 3, tol=1)


def test_16_bit_gradient_keeps_its_shape() -> None:
    ramp = np.tile(np.linspace(0, 65535, 256).astype(np.uint16), (8, 1))
    result = decode_image(encode(Image.fromarray(ramp), "PNG"))
    row = np.asarray(result.image)[4, :, 0].astype(int)
    assert row[0] <= 1 and row[-1] >= 254
    assert np.all(np.diff(row) >= 0)
    assert abs(row[128] - 128) <= 2


def test_16_bit_greyscale_tiff() -> None:
    img = Image.fromarray(np.full((16, 16), 32768, dtype=np.uint16))
    result = decode_image(encode(img, "TIFF"))
    assert_colour(mean_rgb(result.image), (128,) * 3, tol=1)


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (np.full((8, 8), 0.5, dtype=np.float32), 128),  # [0, 1] floats
        (np.full((8, 8), 200.0, dtype=np.float32), 200),  # already 8-bit scale
        (np.full((8, 8), 32768.0, dtype=np.float32), 128),  # 16-bit scale
    ],
)
def test_float_tiff(values: np.ndarray, expected: int) -> None:
    result = decode_image(encode(Image.fromarray(values), "TIFF"))
    assert_colour(mean_rgb(result.image), (expected,) * 3, tol=1)


def test_32_bit_int_tiff_with_wide_range_is_stretched() -> None:
    ramp = np.tile(np.linspace(-1_000_000, 1_000_000, 64).astype(np.int32), (8, 1))
    result = decode_image(encode(Image.fromarray(ramp), "TIFF"))
    row = np.asarray(result.image)[4, :, 0].astype(int)
    assert row[0] <= 1 and row[-1] >= 254 and abs(row[32] - 128) <= 3


@pytest.mark.parametrize("fmt", ["PNG", "BMP", "TIFF", "GIF"])
def test_one_bit_image(fmt: str) -> None:
    img = Image.new("1", (40, 40), 0)
    img.paste(1, (20, 0, 40, 40))
    result = decode_image(encode(img, fmt))
    assert_colour(mean_rgb(result.image, (0, 0, 18, 40)), BLACK, tol=1)
    assert_colour(mean_rgb(result.image, (22, 0, 40, 40)), WHITE, tol=1)


def test_one_bit_downscale_is_filtered_not_nearest() -> None:
    """A 1-px checkerboard must average to grey, not alias into stripes or solid colour."""
    board = np.indices((800, 800)).sum(axis=0) % 2 == 0
    result = decode_image(encode(Image.fromarray(board), "PNG"))
    pixels = np.asarray(result.image, dtype=float)
    assert abs(pixels.mean() - 127.5) < 3
    assert pixels.std() < 10


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_greyscale(fmt: str) -> None:
    result = decode_image(encode(Image.new("L", (30, 30), 77), fmt))
    assert result.image.mode == "RGB"
    assert_colour(mean_rgb(result.image), (77, 77, 77), tol=2)


# --------------------------------------------------------------------------- EXIF


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "TIFF"])
def test_exif_orientation_matches_exif_transpose(orientation: int, fmt: str) -> None:
    stored = marker_image(120, 80)
    if fmt == "TIFF":
        data = encode(stored, fmt, tiffinfo={0x0112: orientation})
    else:
        params: dict[str, object] = {"lossless": True} if fmt == "WEBP" else {}
        data = encode(stored, fmt, exif=exif_with_orientation(orientation), **params)
    with Image.open(io.BytesIO(data)) as raw:
        expected = ImageOps.exif_transpose(raw)
    result = decode_image(data)
    assert result.image.size == expected.size
    assert result.original_size == expected.size
    assert red_corner(result.image) == red_corner(expected)


def test_exif_orientation_6_and_8_explicitly() -> None:
    stored = marker_image(120, 80)  # landscape, red marker top-left as stored
    six = decode_image(encode(stored, "JPEG", exif=exif_with_orientation(6)))
    eight = decode_image(encode(stored, "JPEG", exif=exif_with_orientation(8)))
    # 6 = "rotate 90° clockwise to display": the stored top-left ends up top-right.
    assert six.image.size == (80, 120) and six.original_size == (80, 120)
    assert red_corner(six.image) == "top-right"
    # 8 = "rotate 90° counter-clockwise": the stored top-left ends up bottom-left.
    assert eight.image.size == (80, 120) and eight.original_size == (80, 120)
    assert red_corner(eight.image) == "bottom-left"


@pytest.mark.parametrize(("orientation", "corner"), [(6, "top-right"), (8, "bottom-left")])
def test_exif_orientation_with_jpeg_draft(orientation: int, corner: str) -> None:
    """Draft shrinks the stored (landscape) image; rotation must still use full-res dims."""
    stored = marker_image(3200, 2400, marker=400)
    data = encode(stored, "JPEG", exif=exif_with_orientation(orientation), quality=85)
    result = decode_image(data)
    assert_model_ready(result)
    assert result.original_size == (2400, 3200)
    assert result.image.size == (288, 384)
    assert red_corner(result.image) == corner
    # The orientation is consumed: nobody downstream can rotate it twice.
    assert ImageOps.exif_transpose(result.image).size == (288, 384)


@pytest.mark.filterwarnings("ignore")
def test_garbled_exif_is_ignored_not_fatal() -> None:
    data = encode(marker_image(60, 40), "JPEG", exif=b"Exif\x00\x00II*\x00\xff\xff\xff\x7f junk")
    result = decode_image(data)
    assert result.image.size == (60, 40)
    assert red_corner(result.image) == "top-left"


@pytest.mark.parametrize("orientation", [0, 9, 65535])
def test_out_of_range_orientation_is_ignored(orientation: int) -> None:
    data = encode(marker_image(60, 40), "JPEG", exif=exif_with_orientation(orientation))
    result = decode_image(data)
    assert result.image.size == (60, 40)
    assert red_corner(result.image) == "top-left"


# --------------------------------------------------------------------------- robustness


def test_bytes_like_inputs() -> None:
    data = small_png()
    for variant in (bytearray(data), memoryview(data)):
        assert decode_image(variant).image.size == decode_image(data).image.size


def test_bad_arguments_are_programming_errors() -> None:
    with pytest.raises(TypeError):
        decode_image("not bytes")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        decode_image(small_png(), target_size=0)
    with pytest.raises(ValueError):
        decode_image(small_png(), max_pixels=-1)


def fuzz_seeds() -> list[bytes]:
    base = synthetic_photo(48, 32)
    rgba = base.convert("RGBA")
    return [
        encode(base, "JPEG", exif=exif_with_orientation(6)),
        encode(base, "JPEG", progressive=True),
        encode(base.convert("CMYK"), "JPEG"),
        encode(rgba, "PNG"),
        encode(base.convert("P"), "PNG", transparency=3),
        save_animation("GIF", frames(RED, GREEN, size=(16, 16))),
        save_animation("PNG", frames(RED, GREEN, size=(16, 16))),
        save_animation("WEBP", frames(RED, GREEN, size=(16, 16)), lossless=True),
        encode(rgba, "WEBP"),
        encode(base, "BMP"),
        encode(base.convert("P"), "BMP"),
        encode(base, "TIFF", compression="tiff_deflate"),
        encode(base, "TIFF", compression="packbits"),
    ]


@pytest.mark.filterwarnings("ignore")
def test_fuzzed_files_only_ever_raise_image_rejected() -> None:
    """Truncations and byte flips of valid files: decode or refuse cleanly, nothing else."""
    rng = np.random.default_rng(20240501)
    outcomes: dict[str, int] = {}
    for seed in fuzz_seeds():
        cases = [seed[:cut] for cut in rng.integers(1, len(seed), 8)]
        for _ in range(24):
            mutated = bytearray(seed)
            for pos in rng.integers(0, len(seed), int(rng.integers(1, 6))):
                mutated[pos] = int(rng.integers(0, 256))
            cases.append(bytes(mutated))
        for data in cases:
            try:
                result = decode_image(data)
            except ImageRejected as exc:
                check_user_message(exc)
                outcomes[exc.code] = outcomes.get(exc.code, 0) + 1
            else:
                assert_model_ready(result)
                outcomes["ok"] = outcomes.get("ok", 0) + 1
    assert outcomes.get("ok") and outcomes.get("corrupt")  # the fuzzer hit both paths


def test_concurrent_decoding_matches_serial() -> None:
    inputs = [small_jpeg(), small_png(), save_animation("GIF", frames(RED, BLUE)),
              encode(synthetic_photo(), "WEBP"), encode(marker_image(500, 300), "JPEG",
              exif=exif_with_orientation(6))] * 4  # fmt: skip
    serial = [decode_image(d).image.tobytes() for d in inputs]
    with ThreadPoolExecutor(max_workers=4) as pool:
        parallel = list(pool.map(lambda d: decode_image(d).image.tobytes(), inputs))
    assert parallel == serial


# --------------------------------------------------------------------------- structural limits (issue 12)
#
# Timings are measured separately (see bot/imaging.py's "Structural limits"); here, "refused before
# Pillow walks it" is checked structurally: Image.open is never called.


@pytest.fixture
def pillow_opens(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Every Image.open call; a refusal by the structural pre-scan leaves it empty."""
    opened: list[object] = []
    real_open = Image.open

    def spy_open(*args: object, **kwargs: object) -> Image.Image:
        opened.append(args)
        return real_open(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Image, "open", spy_open)
    return opened


def refused_for_metadata(data: bytes) -> TooMuchMetadata:
    with pytest.raises(TooMuchMetadata) as info:
        decode_image(data)
    check_user_message(info.value)
    assert info.value.code == "too_much_metadata"
    return info.value


# The files from the issue, at full size.
ISSUE_FLOODS: list[tuple[str, Callable[[], bytes]]] = [
    ("jpeg-2m-exif-segments", lambda: hostile.jpeg_with_segments(0xE1, b"Exif\x00\x00\x00\x00", 2_000_000)),
    ("jpeg-2m-com-segments", lambda: hostile.jpeg_with_segments(0xFE, b"x" * 8, 2_000_000)),
    ("jpeg-2m-app5-segments", lambda: hostile.jpeg_with_segments(0xE5, b"x" * 8, 2_000_000)),
    ("gif-12m-comment-sub-blocks", lambda: hostile.gif_with(hostile.gif_comment(12_000_000))),
]


@pytest.mark.parametrize("factory", [f for _, f in ISSUE_FLOODS], ids=[n for n, _ in ISSUE_FLOODS])
def test_issue_floods_are_refused_before_pillow_walks_them(
    factory: Callable[[], bytes], pillow_opens: list[object]
) -> None:
    data = factory()
    assert 24_000_000 <= len(data) <= imaging.DEFAULT_MAX_BYTES  # 24 MB, as reported
    refused_for_metadata(data)
    assert pillow_opens == []


@pytest.mark.parametrize("kind", [b"zTXt", b"iCCP", b"iTXt"], ids=bytes.decode)
def test_png_metadata_inflating_to_200_mb_is_too_much_metadata_not_corrupt(kind: bytes) -> None:
    # A valid PNG; Pillow's own (process-wide, untouched) MAX_TEXT_CHUNK stops the inflate.
    from PIL import PngImagePlugin

    before = (PngImagePlugin.MAX_TEXT_CHUNK, PngImagePlugin.MAX_TEXT_MEMORY)
    error = refused_for_metadata(hostile.png_inflating_to(200, kind))
    assert "Pillow" in str(error) and "too large" in str(error)
    assert (PngImagePlugin.MAX_TEXT_CHUNK, PngImagePlugin.MAX_TEXT_MEMORY) == before


@cache
def issue_scan_bomb() -> bytes:
    """4096x4096 progressive grey JPEG (quality 90), last scan (33 bytes) repeated 20,000 times."""
    return hostile.progressive_with_repeated_last_scan(4096, 20_000)


def test_scan_bomb_from_the_issue_is_refused_before_pillow(pillow_opens: list[object]) -> None:
    plain = hostile.progressive_with_repeated_last_scan(4096, 0)
    assert len(plain) - plain.rindex(b"\xff\xda") - 2 == 33  # the last scan, as in the issue
    data = issue_scan_bomb()
    assert 33 * 20_000 < len(data) < 800_000  # ~0.7 MB
    error = refused_for_metadata(data)
    assert "8x8 blocks" in str(error)  # 16 MP: the block budget trips long before 100 scans
    assert pillow_opens == []


@pytest.mark.parametrize(
    ("side", "repeats", "refused"),
    [
        (512, 94, False),  # 6 + 94 = 100 scans: the limit
        (512, 95, True),  # 101 scans
        (512, 1_000, True),  # the issue's 1,000 repeats, on a smaller image
        (4096, 1_000, True),  # ... and at full size
        (4096, 10, False),  # 16 scans of 262,144 blocks: fine
        (4096, 91, True),  # 97 scans, under the count but over the 24M-block budget
    ],
)
def test_scan_limits(side: int, repeats: int, refused: bool) -> None:
    data = hostile.progressive_with_repeated_last_scan(side, repeats)
    if refused:
        refused_for_metadata(data)
    else:
        assert_model_ready(decode_image(data))


@pytest.mark.parametrize("kind", list(hostile.flood_kinds()))
def test_each_structural_limit_is_exact(kind: str) -> None:
    """At a limit the file is accepted (by the pre-scan); one element more and it is refused."""
    build, limit, _ = hostile.flood_kinds()[kind]
    try:
        result = decode_image(build(limit))
    except ImageRejected as exc:
        assert exc.code in hostile.at_limit_outcomes(kind), exc
    else:
        assert_model_ready(result)
    refused_for_metadata(build(limit + 1))


def test_data_after_the_primary_jpeg_is_not_counted() -> None:
    """MPO second images, gain maps and phone makers' trailers follow the first EOI: a
    progressive second image full of scans, or megabytes of binary in which 0xFFDA occurs
    by chance, must not trip the scan limits."""
    second = hostile.progressive_with_repeated_last_scan(512, 1_000)
    trailer = np.random.default_rng(12).integers(0, 256, 8 << 20, dtype=np.uint8).tobytes()
    assert trailer.count(b"\xff\xda") > imaging.MAX_JPEG_SCANS
    for data in (small_jpeg() + second, encode(synthetic_photo(), "JPEG", progressive=True) + trailer):
        assert_model_ready(decode_image(data))


def test_phone_sized_metadata_is_accepted() -> None:
    """Exif, a 1.5 MB ICC profile (24 APP2 segments), XMP and 6 MB of Extended XMP (Google's
    depth/"Lens Blur" photos carry the original image there), in a progressive JPEG."""
    rng = np.random.default_rng(3)
    icc = rng.integers(0, 256, 1_500_000, dtype=np.uint8).tobytes()
    data = encode(marker_image(640, 480), "JPEG", progressive=True, exif=exif_with_orientation(6),
                  icc_profile=icc, xmp=b"<x:xmpmeta>" + b" " * 20_000 + b"</x:xmpmeta>")  # fmt: skip
    extension = b"http://ns.adobe.com/xmp/extension/\x00" + b"0" * 32 + struct.pack(">II", 6 << 20, 0)
    chunk = extension + rng.integers(65, 91, 65_400 - len(extension), dtype=np.uint8).tobytes()
    data = data[:2] + (b"\xff\xe1" + struct.pack(">H", len(chunk) + 2) + chunk) * 96 + data[2:]
    assert len(data) > 7 << 20
    result = decode_image(data)
    assert_model_ready(result)
    assert result.original_size == (480, 640)  # the Exif orientation was still read


def test_scans_cannot_hide_behind_a_marker_libjpeg_treats_as_standalone() -> None:
    """TEM (0xFF01) has no length field: skipping "its" length would jump over real scans."""
    plain = hostile.progressive_with_repeated_last_scan(512, 0)
    last_scan = plain[plain.rindex(b"\xff\xda") : -2]
    refused_for_metadata(plain[:-2] + b"\xff\x01" + last_scan * 200 + plain[-2:])


@pytest.mark.filterwarnings("ignore")  # Pillow warns about the truncated IFD
def test_tiff_with_a_huge_declared_ifd_but_little_data_is_corrupt_not_metadata() -> None:
    data = b"II*\x00" + struct.pack("<IH", 8, 0xFFFF) + bytes(500)  # ~40 entries' worth of bytes
    with pytest.raises(CorruptImage):
        decode_image(data)


def test_rle_bmp_over_the_limit_says_what_to_do() -> None:
    error = refused_for_metadata(hostile.bmp_rle_runs(imaging.MAX_BMP_RLE_BYTES + 1))
    assert "BMP" in error.user_message and "PNG or JPEG" in error.user_message
    assert_model_ready(decode_image(dict(hostile.seeds())["bmp-rle8"]))  # small RLE BMPs still decode


def test_too_much_metadata_survives_pickling() -> None:
    """Refusals cross the isolated decoder's process boundary."""
    with pytest.raises(TooMuchMetadata) as info:
        decode_image(hostile.jpeg_with_segments(0xFE, b"x", 2_000))
    copy = pickle.loads(pickle.dumps(info.value))
    assert type(copy) is TooMuchMetadata
    assert (copy.code, copy.user_message, str(copy)) == (info.value.code, info.value.user_message, str(info.value))

