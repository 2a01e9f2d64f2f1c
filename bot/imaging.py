"""Safe decoding of untrusted image bytes (Discord attachments) for the vision models.

Everything that reaches :func:`decode_image` is hostile until proven otherwise: the file
name and the content type Discord reports are chosen by the uploader, so the format is
sniffed from the bytes themselves, and only a handful of well-trodden Pillow plugins are
ever allowed to parse them (Pillow's fallback of "try every plugin" would expose EPS →
Ghostscript, FITS, obscure game formats, ...).

The pipeline, in order, and why:

1. Cheap byte checks (empty, ``max_bytes``) before anything touches Pillow.
2. Magic-byte sniffing; refuse anything not in :data:`ACCEPTED_FORMATS` with a message
   that says what the file actually looked like ("a PDF document", "an HEIC photo").
3. ``Image.open`` restricted to the sniffed plugin.  This parses headers only, so the
   pixel count is checked *before* a single pixel is decoded (decompression bombs).
4. For JPEG, ``draft()`` asks libjpeg to decode at 1/2, 1/4 or 1/8 scale directly in the
   DCT domain; a 6000x4000 photo is then decoded as 1500x1000 which is both the main
   speed win and a large memory saving.
5. Normalise the colour mode (palette, 1-bit, 16-bit, float, CMYK, alpha, ...), resize
   with a proper filter, flatten transparency over *white* (what Discord shows), then
   apply the EXIF orientation last, on the small image, where a transpose is nearly free.

Every failure surfaces as an :class:`ImageRejected` subclass with a ``code`` for logs and
metrics and a ``user_message`` that can be shown in Discord as-is.  No raw Pillow, zlib
or struct exception escapes :func:`decode_image` (programming errors in the *arguments*
still raise ``TypeError``/``ValueError``).

The module is a pure function of its inputs: no globals are read-modified-written
(in particular ``Image.MAX_IMAGE_PIXELS`` and ``ImageFile.LOAD_TRUNCATED_IMAGES`` are left
alone, and no ``warnings`` filters are installed, since both are process-wide and the
decoder runs concurrently in a thread pool).
"""

from __future__ import annotations

import io
import logging
import math
import re
from dataclasses import dataclass
from typing import ClassVar, Final

from bot.errors import UserFacingError

from PIL import (
    BmpImagePlugin,  # noqa: F401  (imported for its side effect: registers the plugin)
    GifImagePlugin,  # noqa: F401
    Image,
    JpegImagePlugin,  # noqa: F401
    PngImagePlugin,  # noqa: F401
    TiffImagePlugin,  # noqa: F401
    WebPImagePlugin,  # noqa: F401
    features,
)

log = logging.getLogger(__name__)

# Registering plugins at import time (above, and AVIF below) matters for thread safety:
# Image.open() lazily calls Image.init() -- which mutates Pillow's global registries --
# when a requested format is not registered yet.
try:  # Pillow >= 11.3 ships AVIF support; only use it if the codec is compiled in.
    from PIL import AvifImagePlugin  # noqa: F401

    _AVIF_OK = bool(features.check_module("avif"))
except ImportError:  # pragma: no cover - depends on the Pillow build
    _AVIF_OK = False

__all__ = [
    "ACCEPTED_FORMATS",
    "CorruptImage",
    "DecodedImage",
    "EmptyImage",
    "ImageRejected",
    "ImageTooLarge",
    "ImageTooManyPixels",
    "UnsupportedImageType",
    "decode_image",
    "describe_format",
    "sniff_format",
]

DEFAULT_MAX_BYTES: Final = 25 * 1024 * 1024
DEFAULT_MAX_PIXELS: Final = 50_000_000
DEFAULT_TARGET_SIZE: Final = 384

#: Formats :func:`decode_image` will decode (Pillow format names, as returned by
#: :func:`sniff_format`).  HEIC is deliberately absent: Pillow cannot read it without the
#: third-party ``pillow-heif`` plugin, which is not a dependency of this project.
ACCEPTED_FORMATS: Final[frozenset[str]] = frozenset(
    {"JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF"} | ({"AVIF"} if _AVIF_OK else set())
)

#: Frame counting stops here.  A 25 MB GIF can hold ~1.5 million 1x1 frames, and walking
#: them all costs seconds; nobody needs an exact count beyond this.
MAX_COUNTED_FRAMES: Final = 10_000

#: The JPEG DCT-domain downscale keeps at least this factor above the final size, so the
#: final bicubic pass still has real pixels to antialias from (libjpeg's 1/8 scaling is
#: essentially a box filter).  Same meaning as Pillow's ``reducing_gap``.
_REDUCING_GAP: Final = 2.0

_RESAMPLE: Final = Image.Resampling.BICUBIC  # what the BLIP/CLIP processors use
_WHITE: Final = 255

# EXIF Orientation tag -> the transpose that makes the image upright.  Identical to the
# table in PIL.ImageOps.exif_transpose; kept local so it can be applied *after* the resize.
_ORIENTATION_TAG: Final = 0x0112
_TRANSPOSE_FOR_ORIENTATION: Final[dict[int, Image.Transpose]] = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_SWAPS_AXES: Final = frozenset({5, 6, 7, 8})

# Formats whose "frames" are an animation.  (Multi-page TIFF and MPO -- a JPEG with a
# depth map or preview appended, common from phones -- are not; we use their first image.)
_ANIMATED_FORMATS: Final = frozenset({"GIF", "PNG", "WEBP", "AVIF"})


# --------------------------------------------------------------------------- errors


class ImageRejected(UserFacingError):
    """Base class of every refusal of a file.

    ``code`` is a short machine-readable string for logs/metrics; ``user_message`` is one
    polite sentence, free of jargon, meant to be shown to the Discord user verbatim.
    ``str(exc)`` carries the technical detail for logs.
    """

    code: ClassVar[str] = "rejected"
    default_message: ClassVar[str] = "Sorry, I couldn't open that image."


class EmptyImage(ImageRejected):
    """The attachment had zero bytes."""

    code = "empty"
    default_message = "That file is empty, so there's nothing for me to look at."


class ImageTooLarge(ImageRejected):
    """More bytes than ``max_bytes``; refused before any parsing."""

    code = "too_large"
    default_message = "That file is too big for me — could you send a smaller version?"

    def __init__(self, size: int, limit: int, *, filename: str | None = None) -> None:
        self.size = size
        self.limit = limit
        super().__init__(
            f"{_subject(filename)} is {_megabytes(size)}, which is over my "
            f"{_megabytes(limit)} limit — could you send a smaller version?",
            detail=f"{size} bytes > max_bytes={limit}",
        )


class UnsupportedImageType(ImageRejected):
    """Not an image, or an image format we don't accept (decided from the bytes)."""

    code = "unsupported_type"
    default_message = "I can't read that kind of file."

    def __init__(
        self,
        detected: str | None,
        *,
        filename: str | None = None,
        user_message: str | None = None,
        detail: str | None = None,
        code: str | None = None,
    ) -> None:
        self.detected = detected
        if user_message is None:
            accepted = _accepted_list()
            if detected is None:
                user_message = (
                    f"I couldn't recognise {_subject(filename, lower=True)} as a picture — "
                    f"I can read {accepted} images."
                )
            else:
                user_message = (
                    f"{_subject(filename)} looks like {describe_format(detected)}, which I "
                    f"can't open — I can read {accepted} images."
                )
        super().__init__(user_message, detail=detail or f"detected={detected}", code=code)


class ImageTooManyPixels(ImageRejected):
    """Width x height over ``max_pixels`` (decompression bomb), checked from the header."""

    code = "too_many_pixels"
    default_message = (
        "That image has too many pixels for me to open safely — could you send a smaller version?"
    )

    def __init__(
        self,
        width: int | None = None,
        height: int | None = None,
        limit: int | None = None,
        *,
        filename: str | None = None,
        detail: str | None = None,
    ) -> None:
        self.width = width
        self.height = height
        self.limit = limit
        message = None
        if width is not None and height is not None and limit is not None:
            message = (
                f"{_subject(filename)} is {width:,}×{height:,} pixels, which is more than I "
                f"can safely open (about {limit / 1e6:.0f} megapixels at most) — could you "
                "send a smaller version?"
            )
        super().__init__(message, detail=detail or f"{width}x{height} > max_pixels={limit}")


class CorruptImage(ImageRejected):
    """The bytes look like a supported format but are truncated or garbled."""

    code = "corrupt"
    default_message = (
        "That image seems to be damaged or incomplete, so I couldn't open it — "
        "could you try uploading it again?"
    )


# --------------------------------------------------------------------------- result


@dataclass(frozen=True)
class DecodedImage:
    """A decoded, model-ready image plus what we learned about the original file."""

    image: Image.Image
    """Mode ``"RGB"``, upright, longest side <= ``target_size`` (never upscaled)."""
    format: str
    """The sniffed format, e.g. ``"JPEG"`` (phone MPO files are reported as JPEG)."""
    original_size: tuple[int, int]
    """Full-resolution ``(width, height)`` as displayed, i.e. after EXIF orientation."""
    animated: bool
    """True for GIF/WebP/APNG/AVIF with more than one frame (only the first is used)."""
    frame_count: int
    """Frames in the animation, capped at :data:`MAX_COUNTED_FRAMES`; 1 for stills."""


# --------------------------------------------------------------------------- sniffing

_PNG_MAGIC: Final = b"\x89PNG\r\n\x1a\n"
_TIFF_MAGICS: Final = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # +: BigTIFF
_BMP_DIB_HEADER_SIZES: Final = frozenset({12, 40, 52, 56, 64, 108, 124})  # what Pillow reads

_AVIF_BRANDS: Final = frozenset({b"avif", b"avis"})
_HEIF_BRANDS: Final = frozenset(
    {b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm", b"hevs", b"mif1", b"msf1"}
)
_VIDEO_BRANDS: Final = frozenset(
    {
        b"isom", b"iso2", b"iso4", b"iso5", b"iso6", b"mp41", b"mp42", b"avc1", b"M4V ",
        b"M4VP", b"dash", b"3gp4", b"3gp5", b"3gp6", b"3g2a", b"MSNV", b"f4v ",
    }
)  # fmt: skip

# (magic prefix, detected name) for common non-image uploads, checked in order.
_OTHER_MAGICS: Final[tuple[tuple[bytes, str], ...]] = (
    (b"%PDF-", "PDF"),
    (b"PK\x03\x04", "ZIP"),
    (b"PK\x05\x06", "ZIP"),
    (b"PK\x07\x08", "ZIP"),
    (b"\x1f\x8b", "GZIP"),
    (b"7z\xbc\xaf\x27\x1c", "7Z"),
    (b"Rar!\x1a\x07", "RAR"),
    (b"%!PS", "EPS"),
    (b"\xc5\xd0\xd3\xc6", "EPS"),
    (b"8BPS", "PSD"),
    (b"\x00\x00\x01\x00", "ICO"),
    (b"\x00\x00\x02\x00", "ICO"),
    (b"\x00\x00\x00\x0cJXL \r\n\x87\n", "JXL"),
    (b"\xff\x0a", "JXL"),
    (b"\x00\x00\x00\x0cjP  \r\n\x87\n", "JPEG2000"),
    (b"\xff\x4f\xff\x51", "JPEG2000"),
    (b"\x1a\x45\xdf\xa3", "VIDEO"),  # Matroska / WebM
    (b"OggS", "AUDIO"),
    (b"ID3", "AUDIO"),
    (b"fLaC", "AUDIO"),
    (b"\x7fELF", "EXECUTABLE"),
    (b"MZ", "EXECUTABLE"),
)

_DESCRIPTIONS: Final[dict[str, str]] = {
    "JPEG": "a JPEG image",
    "PNG": "a PNG image",
    "GIF": "a GIF image",
    "WEBP": "a WebP image",
    "BMP": "a BMP image",
    "TIFF": "a TIFF image",
    "AVIF": "an AVIF image",
    "HEIC": "an HEIC photo (the iPhone's default format)",
    "JXL": "a JPEG XL image",
    "JPEG2000": "a JPEG 2000 image",
    "PSD": "a Photoshop document",
    "ICO": "an icon file",
    "EPS": "a PostScript file",
    "SVG": "an SVG drawing",
    "HTML": "a web page",
    "PDF": "a PDF document",
    "ZIP": "a ZIP archive",
    "GZIP": "a compressed archive",
    "7Z": "a compressed archive",
    "RAR": "a compressed archive",
    "VIDEO": "a video",
    "AUDIO": "an audio file",
    "EXECUTABLE": "a program",
    "TEXT": "a text file",
}

# Display order for the "I can read ..." part of messages.
_DISPLAY_NAMES: Final[dict[str, str]] = {
    "JPEG": "JPEG",
    "PNG": "PNG",
    "GIF": "GIF",
    "WEBP": "WebP",
    "AVIF": "AVIF",
    "BMP": "BMP",
    "TIFF": "TIFF",
}


def sniff_format(data: bytes | bytearray | memoryview) -> str | None:
    """Identify a file from its leading bytes; the name and content type are ignored.

    Returns a Pillow format name for images (``"JPEG"``, ``"PNG"``, ``"GIF"``, ``"WEBP"``,
    ``"BMP"``, ``"TIFF"``, ``"AVIF"``), a short label for other things we can name
    (``"HEIC"``, ``"PDF"``, ``"ZIP"``, ``"SVG"``, ``"TEXT"``, ... see
    :func:`describe_format`), or ``None`` when the bytes mean nothing to us.  Only the
    result being in :data:`ACCEPTED_FORMATS` means "we will try to decode it".
    """
    head = bytes(data[:512])
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head.startswith(_PNG_MAGIC):
        return "PNG"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    if head[:4] in _TIFF_MAGICS:
        return "TIFF"
    if (
        head[:2] == b"BM"
        and len(head) >= 18
        and int.from_bytes(head[14:18], "little") in _BMP_DIB_HEADER_SIZES
    ):
        return "BMP"
    if head[4:8] == b"ftyp":
        return _sniff_isobmff(head)
    if head[:4] == b"RIFF":
        return "VIDEO" if head[8:12] == b"AVI " else "AUDIO" if head[8:12] == b"WAVE" else None
    for magic, name in _OTHER_MAGICS:
        if head.startswith(magic):
            return name
    return _sniff_text(head)


def _sniff_isobmff(head: bytes) -> str | None:
    """Tell AVIF from HEIC from MP4/MOV using the ``ftyp`` box's brands."""
    box_size = int.from_bytes(head[:4], "big")
    end = min(max(box_size, 16), len(head))
    brands = {head[8:12]} | {head[i : i + 4] for i in range(16, end - 3, 4)}
    if brands & _AVIF_BRANDS:
        return "AVIF"
    if brands & _HEIF_BRANDS:
        return "HEIC"
    if b"qt  " in brands or brands & _VIDEO_BRANDS:
        return "VIDEO"
    return None


def _sniff_text(head: bytes) -> str | None:
    """Recognise SVG / HTML / plain text (people do paste .txt and .svg files)."""
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        # The 512-byte window may cut a multi-byte character in half; retry without it.
        try:
            text = head[:-3].decode("utf-8")
        except UnicodeDecodeError:
            return None
    if not text:
        return None
    stripped = text.lstrip("\ufeff \t\r\n").lower()
    if "<svg" in stripped and (stripped.startswith(("<?xml", "<svg", "<!doctype svg", "<!--"))):
        return "SVG"
    if stripped.startswith(("<!doctype html", "<html")):
        return "HTML"
    printable = sum(ch.isprintable() or ch in "\t\r\n" for ch in text)
    return "TEXT" if printable >= 0.95 * len(text) else None


def describe_format(detected: str | None) -> str:
    """A human phrase for a :func:`sniff_format` result, e.g. ``"a PDF document"``."""
    if detected is None:
        return "an unknown kind of file"
    return _DESCRIPTIONS.get(detected, f"a {detected} file")


# --------------------------------------------------------------------------- decoding


def decode_image(
    data: bytes | bytearray | memoryview,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    target_size: int = DEFAULT_TARGET_SIZE,
    filename: str | None = None,
) -> DecodedImage:
    """Decode untrusted image bytes into an upright RGB image of at most ``target_size``.

    ``filename`` is used only to make refusal messages friendlier; it never influences how
    the bytes are interpreted.

    Raises an :class:`ImageRejected` subclass for every problem with the *data*;
    ``TypeError``/``ValueError`` only for bad arguments.  Safe to call from many threads.

    Note that Pillow applies its own, global bomb check in ``Image.open``
    (``Image.MAX_IMAGE_PIXELS``, error at twice that, ~179 MP by default); a
    ``max_pixels`` above that can't take effect, and between 1x and 2x of it Pillow emits
    a ``DecompressionBombWarning`` before our own check refuses the image.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"data must be bytes-like, not {type(data).__name__}")
    if max_bytes <= 0 or max_pixels <= 0 or target_size <= 0:
        raise ValueError("max_bytes, max_pixels and target_size must be positive")

    size = len(data) if not isinstance(data, memoryview) else data.nbytes
    if size == 0:
        raise EmptyImage(detail="0 bytes")
    if size > max_bytes:
        raise ImageTooLarge(size, max_bytes, filename=filename)

    detected = sniff_format(data)
    if detected not in ACCEPTED_FORMATS:
        raise UnsupportedImageType(detected, filename=filename)
    assert detected is not None  # for type checkers: None is never accepted

    try:
        return _decode(data, detected, max_pixels, target_size, filename)
    except ImageRejected:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # Pillow's own global check fired inside Image.open (or its warning was turned
        # into an error by a warnings filter); we have no dimensions at that point.
        raise ImageTooManyPixels(
            limit=max_pixels, filename=filename, detail=f"Pillow: {exc}"
        ) from exc
    except MemoryError as exc:
        raise ImageTooManyPixels(
            limit=max_pixels, filename=filename, detail="MemoryError while decoding"
        ) from exc
    except Exception as exc:
        # Pillow signals bad data with OSError (incl. UnidentifiedImageError), SyntaxError,
        # ValueError, EOFError, struct.error, IndexError, KeyError, TypeError, zlib.error,
        # ZeroDivisionError ... depending on the plugin and where the damage is.  At this
        # trust boundary any of them just means "these bytes are not a usable image".
        log.debug("could not decode %s image: %r", detected, exc)
        raise CorruptImage(detail=f"{detected}: {type(exc).__name__}: {exc}") from exc


def _decode(
    data: bytes | bytearray | memoryview,
    fmt: str,
    max_pixels: int,
    target_size: int,
    filename: str | None,
) -> DecodedImage:
    with Image.open(io.BytesIO(data), formats=[fmt]) as im:
        width, height = im.size
        if width <= 0 or height <= 0:
            raise CorruptImage(detail=f"{fmt}: non-positive size {width}x{height}")
        if width * height > max_pixels:
            # Header-only so far: Image.open parses headers, pixels are decoded in load().
            raise ImageTooManyPixels(width, height, max_pixels, filename=filename)

        frame_count = _count_frames(im, fmt, data)
        final_size = _fit_within(width, height, target_size)

        box: tuple[float, float, float, float] | None = None
        if fmt == "JPEG" and final_size != (width, height):
            # DCT-domain downscale by 1/2, 1/4 or 1/8 while staying >= _REDUCING_GAP x the
            # final size.  Must happen before load(); draft() also keeps the mode as is
            # for CMYK/L (it only ever changes RGB -> L/YCbCr, which we don't ask for).
            wanted = (
                max(1, math.ceil(final_size[0] * _REDUCING_GAP)),
                max(1, math.ceil(final_size[1] * _REDUCING_GAP)),
            )
            drafted = im.draft("RGB", wanted)
            if drafted is not None:
                box = drafted[1]  # the drafted image's valid area (edges may be partial)

        im.load()
        # Orientation is read after load(): for PNG the eXIf chunk may follow the pixel
        # data, and PngImageFile.getexif() would load() anyway.  The draft above does not
        # touch EXIF, and original_size is computed from the pre-draft header size.
        orientation = _read_orientation(im)
        original_size = (height, width) if orientation in _SWAPS_AXES else (width, height)

        out = _to_resizable_mode(im, fmt)
        if out.size != final_size:
            out = out.resize(final_size, _RESAMPLE, box=box, reducing_gap=_REDUCING_GAP)
        out = _flatten_to_rgb(out)

        transpose = _TRANSPOSE_FOR_ORIENTATION.get(orientation)
        if transpose is not None:
            out = out.transpose(transpose)
        if out is im:
            # Still the parser object (a small upright RGB image needs no work): hand out a
            # plain Image detached from the file object and plugin state instead.
            out = im.copy()

    # Drop exif/icc/etc.: the orientation has been applied, and a stale Orientation tag
    # would make any later exif_transpose() rotate the image a second time.
    out.info = {}
    return DecodedImage(
        image=out,
        format=fmt,
        original_size=original_size,
        animated=fmt in _ANIMATED_FORMATS and frame_count > 1,
        frame_count=frame_count,
    )


def _fit_within(width: int, height: int, target: int) -> tuple[int, int]:
    """Size with the longest side == ``target`` and the same aspect; never upscales."""
    longest = max(width, height)
    if longest <= target:
        return width, height
    scale = target / longest
    return max(1, round(width * scale)), max(1, round(height * scale))


def _read_orientation(im: Image.Image) -> int:
    """EXIF Orientation (1-8), or 1 when absent/garbled.

    Broken EXIF is common (editing apps, messengers) and is no reason to refuse a picture.
    """
    try:
        value = im.getexif().get(_ORIENTATION_TAG, 1)
        orientation = int(value)
    except Exception:
        return 1
    return orientation if 1 <= orientation <= 8 else 1


def _count_frames(im: Image.Image, fmt: str, data: bytes | bytearray | memoryview) -> int:
    """Number of animation frames, capped at :data:`MAX_COUNTED_FRAMES`.

    Pillow's ``n_frames`` is cheap for WebP/AVIF (the C demuxer) and APNG (a declared
    count), but for GIF it walks every frame in Python -- seconds for a hostile file --
    so GIFs are counted by our own bounded block walker.
    """
    if fmt not in _ANIMATED_FORMATS:
        return 1  # TIFF pages, MPO sub-images: we use the first and don't count the rest
    if fmt == "GIF":
        return _count_gif_frames(bytes(data), MAX_COUNTED_FRAMES)
    try:
        n = int(getattr(im, "n_frames", 1))
    except Exception:
        n = 1
    return max(1, min(n, MAX_COUNTED_FRAMES))


def _count_gif_frames(data: bytes, limit: int) -> int:
    """Count image descriptors in a GIF without decoding any LZW data.

    Stops at the trailer, at garbage, at truncation, or at ``limit``.  Always >= 1 for a
    GIF that Pillow could open (frame 0 is already validated by then).
    """
    n = len(data)
    if n < 13:
        return 1
    pos = 13
    flags = data[10]
    if flags & 0x80:  # global colour table
        pos += 3 << ((flags & 0x07) + 1)
    frames = 0

    def skip_sub_blocks(p: int) -> int:
        while p < n:
            length = data[p]
            p += 1
            if length == 0:
                return p
            p += length
        return n + 1  # truncated

    while pos < n and frames < limit:
        marker = data[pos]
        if marker == 0x21:  # extension: introducer, label, sub-blocks
            pos = skip_sub_blocks(pos + 2)
        elif marker == 0x2C:  # image descriptor (10 bytes), optional LCT, LZW size byte
            if pos + 10 > n:
                break
            frames += 1
            local_flags = data[pos + 9]
            pos += 10
            if local_flags & 0x80:
                pos += 3 << ((local_flags & 0x07) + 1)
            pos = skip_sub_blocks(pos + 1)
        else:  # 0x3B trailer, or garbage after the last frame
            break
    return max(1, frames)


def _to_resizable_mode(im: Image.Image, fmt: str) -> Image.Image:
    """Convert to L, LA, RGB or RGBA -- modes that resize with real filtering.

    (``resize`` silently uses NEAREST for "1" and "P", and 16-bit/float data would be
    clipped, not scaled, by a plain ``convert``.)  Returns ``im`` itself when no
    conversion is needed.
    """
    mode = im.mode
    has_key_colour = im.info.get("transparency") is not None
    if mode in ("RGB", "L"):
        # PNG tRNS / GIF-style single transparent colour -> a real alpha channel.
        return im.convert(mode + "A" if mode == "L" else "RGBA") if has_key_colour else im
    if mode in ("RGBA", "LA"):
        return im
    if mode == "P":
        palette_alpha = im.palette is not None and im.palette.mode == "RGBA"
        return im.convert("RGBA" if has_key_colour or palette_alpha else "RGB")
    if mode in ("PA", "RGBa"):
        return im.convert("RGBA")
    if mode == "La":
        return im.convert("LA")
    if mode == "1":
        return im.convert("L")
    if mode.startswith("I;16") or mode in ("I", "F"):
        return _high_depth_to_l(im, fmt)
    if mode == "LAB":  # CIELab TIFF: a plain convert() would treat L*a*b* as if it were RGB
        return _lab_to_rgb(im)
    # CMYK (JPEG/TIFF; Pillow already undoes Adobe's inverted CMYK), YCbCr, RGBX, HSV:
    # Pillow's plain conversions.  No ICC colour management, so print-oriented CMYK comes
    # out a little flat but recognisably right.
    try:
        return im.convert("RGB")
    except ValueError as exc:
        raise UnsupportedImageType(
            fmt,
            user_message=(
                "That image uses an unusual colour format I can't handle — "
                "could you save it as a regular JPEG or PNG and try again?"
            ),
            detail=f"{fmt}: cannot convert mode {mode} to RGB: {exc}",
            code="unsupported_color_mode",
        ) from exc


def _lab_to_rgb(im: Image.Image) -> Image.Image:
    """Colour-manage CIELab to sRGB with LittleCMS.

    The transform is built per call on purpose: a LittleCMS transform caches its last pixel
    and is not safe to share between threads, and Lab uploads are far too rare to matter.
    """
    from PIL import ImageCms  # lazy: only Lab TIFFs need LittleCMS

    transform = ImageCms.buildTransform(
        ImageCms.createProfile("LAB"), ImageCms.createProfile("sRGB"), "LAB", "RGB"
    )
    result = ImageCms.applyTransform(im, transform)
    assert result is not None  # only None when inPlace=True
    return result


def _high_depth_to_l(im: Image.Image, fmt: str) -> Image.Image:
    """Map 16-bit, 32-bit int and float greyscale onto 0-255 by *scaling*, not clipping.

    ``I;16`` (and "I" from a PNG, which is 16-bit) use the nominal 0-65535 range, so a
    mid-grey 32768 becomes 128.  For other "I"/"F" data the nominal range is unknown, so
    we guess from the extrema: floats in [0, 1], values already in [0, 255] or [0, 65535],
    or else a linear stretch of min..max.
    """
    if im.mode.startswith("I;16"):
        im = im.convert("I")  # exact; "I" supports point() with a linear lambda
        lo, hi = 0.0, 65535.0
    elif im.mode == "I" and fmt == "PNG":
        lo, hi = 0.0, 65535.0
    else:
        extrema = im.getextrema()
        assert isinstance(extrema[0], (int, float)) and isinstance(extrema[1], (int, float))
        vmin, vmax = float(extrema[0]), float(extrema[1])
        if im.mode == "F" and vmin >= 0.0 and vmax <= 1.0:
            lo, hi = 0.0, 1.0
        elif vmin >= 0.0 and vmax <= 255.0:
            lo, hi = 0.0, 255.0
        elif vmin >= 0.0 and vmax <= 65535.0:
            lo, hi = 0.0, 65535.0
        else:
            lo, hi = vmin, vmax
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return Image.new("L", im.size, 0)
    scale = 255.0 / (hi - lo)
    offset = 0.5 - lo * scale  # +0.5: the I/F -> L conversion truncates
    return im.point(lambda v: v * scale + offset).convert("L")


def _flatten_to_rgb(im: Image.Image) -> Image.Image:
    """Composite any alpha over white (how Discord's light and most viewers show it)."""
    if im.mode == "RGB":
        return im
    if im.mode == "L":
        return im.convert("RGB")
    if im.mode == "LA":
        background = Image.new("L", im.size, _WHITE)
        background.paste(im.getchannel("L"), mask=im.getchannel("A"))
        return background.convert("RGB")
    if im.mode == "RGBA":
        background = Image.new("RGB", im.size, (_WHITE, _WHITE, _WHITE))
        background.paste(im.convert("RGB"), mask=im.getchannel("A"))
        return background
    return im.convert("RGB")  # pragma: no cover - _to_resizable_mode prevents this


# --------------------------------------------------------------------------- messages

_UNSAFE_FILENAME_CHARS: Final = re.compile(r"[^A-Za-z0-9._ ()+-]")


def _subject(filename: str | None, *, lower: bool = False) -> str:
    """``"That file"`` or the attachment's name, made safe to echo into Discord.

    File names are chosen by the uploader, so anything that could become markdown, a
    mention (``@everyone``) or a link is stripped before it goes into a message.
    """
    if filename:
        name = filename.replace("\\", "/").rsplit("/", 1)[-1]
        name = _UNSAFE_FILENAME_CHARS.sub("", name).strip(" .")[:60]
        if name:
            return f'{"the" if lower else "The"} file "{name}"'
    return "that file" if lower else "That file"


def _megabytes(n: int) -> str:
    """``25 MB``, ``25.1 MB``: rounded *up*, so a file just over the limit never reads as
    being exactly the limit."""
    tenths = math.ceil(n * 10 / (1024 * 1024))
    return f"{tenths // 10} MB" if tenths % 10 == 0 else f"{tenths / 10:.1f} MB"


def _accepted_list() -> str:
    names = [label for fmt, label in _DISPLAY_NAMES.items() if fmt in ACCEPTED_FORMATS]
    return ", ".join(names[:-1]) + " and " + names[-1]
