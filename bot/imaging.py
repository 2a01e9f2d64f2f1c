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
3. A structural pre-scan of the container (JPEG segments and scans, PNG chunks, GIF
   blocks, WebP chunks, the first TIFF/Exif IFD, BMP RLE size) that refuses files whose
   *structure* would make Pillow's pure-Python parsers or libjpeg's scan loop run for
   seconds or allocate hundreds of MB (:class:`TooMuchMetadata`).  It follows length
   fields and uses ``re`` searches (over the scans of a progressive JPEG, to find the
   markers between them), decodes nothing, and costs microseconds (about 0.3 ms per MB of
   progressive JPEG); see "Structural limits" below for every limit and why it is where
   it is.
4. ``Image.open`` restricted to the sniffed plugin.  This parses headers only, so the
   pixel count is checked *before* a single pixel is decoded (decompression bombs).
5. For JPEG, ``draft()`` asks libjpeg to decode at 1/2, 1/4 or 1/8 scale directly in the
   DCT domain; a 6000x4000 photo is then decoded as 1500x1000 which is both the main
   speed win and a large memory saving.
6. Normalise the colour mode (palette, 1-bit, 16-bit, float, CMYK, alpha, ...), resize
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
from dataclasses import dataclass, replace
from typing import ClassVar, Final, Literal

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

from bot.errors import UserFacingError

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
    "TooMuchMetadata",
    "UnsupportedImageType",
    "check_structure",
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
# The reader's copy: bilinear keeps glyph edges without bicubic's ringing, and is cheaper.
_TEXT_RESAMPLE: Final = Image.Resampling.BILINEAR
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


class TooMuchMetadata(ImageRejected):
    """The file's structure is far beyond what any real image needs: floods of metadata
    segments/chunks/blocks, a scan repeated thousands of times, metadata that inflates to
    hundreds of MB.  Refused by the structural pre-scan before Pillow walks it (or, for
    compressed PNG metadata, when Pillow's own inflate limit trips)."""

    code = "too_much_metadata"
    default_message = (
        "That image carries too much hidden metadata for me to open safely — "
        "could you re-save or screenshot it and send that?"
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
    text_image: Image.Image | None = None
    """Mode ``"L"``, upright, longest side <= ``text_size``: the copy the text reader gets (the
    384 px model image is far too small for screenshot text). None unless asked for."""

    def without_text_image(self) -> DecodedImage:
        """This image without its reader copy (what is kept between analysis tiers: ~0.4 MB, not ~3)."""
        return self if self.text_image is None else replace(self, text_image=None)


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


# --------------------------------------------------------------------------- structural limits
#
# Pillow parses container structure (JPEG marker segments, PNG chunks, GIF extension
# blocks, TIFF/Exif IFD entries, BMP RLE codes) in pure Python, one small step per
# element, and keeps much of it in memory; libjpeg decodes every scan of a JPEG over the
# whole image.  A 25 MB file can hold millions of such elements, so these limits bound the
# *count* of elements first and their bytes second.  Each is set well above anything a
# real camera, phone, editor or encoder writes, and low enough that what is left stays
# in the low milliseconds inside Pillow.  "Measured" figures: Pillow 13.0 / libjpeg-turbo
# 3.2 on one core of the development machine, through decode_image() before these limits.

#: JPEG marker segments walked (APPn, COM, tables, SOF, scans, stand-alone markers such as
#: RSTn; before the first scan *and* between the scans of the primary image).  Real files:
#: 10-40 (a 10-scan progressive file included); ICC profiles and Extended XMP (Google's
#: depth/"Lens Blur" data) are split into 64 KB segments, a few hundred at the very most.
#: Measured: 200k tiny Exif segments 0.7 s, 2M COM/APP5 segments 1.5-1.9 s and 300-400 MB,
#: 12M stand-alone RST0 markers 4.3 s -- all Python steps in JpegImagePlugin._open.
MAX_JPEG_SEGMENTS: Final = 1_000

#: Junk and 0xFF fill bytes between header segments, which Pillow skips one byte per loop
#: turn (measured 0.3 us/byte: 24 MB of fill 7.6 s).  Real files: none, or a few bytes
#: of padding left by an editor.  64 KB costs Pillow ~20 ms.
MAX_JPEG_PADDING_BYTES: Final = 64 * 1024

#: Payload bytes of APPn/COM segments before the first scan, all of which Pillow keeps in
#: memory (``applist``, ``app``, ``info``).  Real files: Exif <= 64 KB, XMP <= 64 KB, ICC
#: usually < 1 MB, Extended XMP up to ~5-8 MB (Google "Lens Blur" embeds the original
#: photo, base64).  MPO/Ultra-HDR gain maps and Samsung trailers sit *after* the primary
#: image and do not count.  16 MB is twice the largest of those.
MAX_JPEG_METADATA_BYTES: Final = 16 * 1024 * 1024

#: Payload bytes of the table/frame segments before the first scan (DQT, DHT, SOFn, DRI,
#: DAC, ...).  Pillow parses DQT and SOF byte by byte in Python and appends every SOF
#: component to a list that is never reset.  Real files: 0.5-2 KB (4 quantisation and
#: 4 Huffman tables).  Measured: 370 x 64 KB DQT 0.9 s; 400 x 64 KB SOF 1.7 s and 760 MB.
MAX_JPEG_TABLE_BYTES: Final = 64 * 1024

#: APP1 "Exif" segments.  Pillow concatenates them with ``bytes +=`` (quadratic: 200k
#: 12-byte segments took 0.7 s, 2M over a minute at 700+ MB).  The Exif standard allows
#: exactly one; 4 tolerates editors that leave a stale copy.
MAX_JPEG_EXIF_SEGMENTS: Final = 4

#: APP13 "Photoshop 3.0" segments, whose 8BIM resources Pillow parses in a Python loop (up
#: to 5,400 per 64 KB segment; measured 300 segments 1.0 s).  Photoshop writes one, and
#: splits a large resource block over a few.
MAX_JPEG_PHOTOSHOP_SEGMENTS: Final = 8

#: Scans (SOS markers) in the primary image.  Baseline: 1; sequential multi-scan: one per
#: component; libjpeg's progressive script: 6 (grey) or 10 (colour); mozjpeg: ~10-15.
#: Measured: a 4096x4096 progressive grey JPEG whose last 33-byte scan is repeated 1,000
#: times decodes for 7.2 s (libjpeg walks every 8x8 block once per scan, ~27 ns each).
MAX_JPEG_SCANS: Final = 100

#: Sum over all scans of the 8x8 blocks each scan covers -- the scan loop's real work, so
#: that big images get fewer scans than small ones.  libjpeg's progressive script costs
#: 14 "luma-block passes" at 4:4:4 (8 at 4:2:0): 10.9M block-scans for a 50 MP photo (the
#: default ``max_pixels``).  24M is 2.2x that; measured at the limit (91 scans of a 16 MP
#: grey image, 23.9M block-scans) the whole decode takes 0.5 s.
MAX_JPEG_SCAN_BLOCKS: Final = 24_000_000

#: PNG chunks up to IEND.  Pillow spends ~1 us of Python per chunk (IDAT included: a
#: 25 MB PNG of 1-byte IDAT chunks took 2.0 s and 320 MB).  Real files: libpng writes
#: 8 KB IDAT chunks (3,200 for 25 MB), row-flushing encoders one per row (~7,000 at
#: 50 MP), APNG 2 per frame.  50,000 costs Pillow ~50 ms.
MAX_PNG_CHUNKS: Final = 50_000

#: PNG chunks that are not image data or animation control (tEXt, zTXt, iTXt, iCCP, eXIf,
#: gAMA, pHYs, private chunks...).  Pillow keeps every text and private chunk in
#: dicts/lists (1M tEXt: 1.6 s; 1M private chunks: 2.0 s and 200 MB).  Real files: < 20.
MAX_PNG_METADATA_CHUNKS: Final = 1_000

#: Payload bytes of those chunks (compressed, as stored).  Pillow holds them in memory;
#: Adobe Fireworks' private chunks and large ICC profiles are the biggest real ones.
MAX_PNG_METADATA_BYTES: Final = 16 * 1024 * 1024

#: zTXt, iTXt and iCCP chunks.  Pillow inflates each to at most ``MAX_TEXT_CHUNK``
#: (1 MB; more raises "Decompressed data too large", reported as TooMuchMetadata) and
#: all to ``MAX_TEXT_MEMORY`` (64 MB) -- process-wide settings we leave alone; capping
#: the count bounds what a file can make Pillow inflate at 32 MB.  Real files: 1-5
#: (XMP, ImageMagick's "Raw profile" chunks, an ICC profile).
MAX_PNG_COMPRESSED_CHUNKS: Final = 32

#: GIF data sub-blocks walked (image data and extensions, up to MAX_COUNTED_FRAMES
#: frames).  Encoders write 255-byte sub-blocks: ~100k for a 25 MB GIF.  Our own walk costs
#: ~50 ns per sub-block (12M 1-byte sub-blocks: 0.6 s); 400k bounds it at ~20 ms.
MAX_GIF_SUB_BLOCKS: Final = 400_000

#: Extension sub-blocks (comments, application data, graphic control).  Those before
#: the first frame are read by Pillow in Python and comments are kept in a list (12M
#: comment sub-blocks: 3.7 s and 1.1 GB).  Real files: one GCE per frame (10k frames:
#: 10k) plus a few hundred for an XMP packet.
MAX_GIF_EXTENSION_SUB_BLOCKS: Final = 50_000

#: Comment bytes in all comment extensions.  Real GIFs carry a line ("Created with
#: GIMP"), if anything.
MAX_GIF_COMMENT_BYTES: Final = 1024 * 1024

#: Junk bytes before the first frame, which Pillow skips one per loop turn (24 MB: 1.4 s).
MAX_GIF_JUNK_BYTES: Final = 64 * 1024

#: Top-level RIFF chunks of a WebP (one ANMF per animation frame).  libwebp's demuxer is C
#: and fast, but allocates a record per frame (500k frames: +110 MB); our walk costs
#: ~0.3 us per chunk.  Real files: 1-5 chunks, or one per frame.
MAX_WEBP_CHUNKS: Final = 50_000

#: Entries in the first IFD of a TIFF file or of an Exif block (JPEG APP1, PNG eXIf, WebP
#: EXIF), which Pillow reads one by one in Python, twice (at open and in getexif(): 49k
#: entries took 0.3 s; BigTIFF allows 2**64 declared).  Real files: 10-60, DNG ~200.
MAX_TIFF_TAGS: Final = 1_000

#: Compressed bytes of an RLE4/RLE8 BMP.  Pillow decodes BMP RLE in Python, one 2-byte
#: code per loop turn (24 MB of 1-pixel runs: 6.0 s, ~0.25 s per MB).  RLE BMPs are
#: icons and legacy art, far below 1 MB.
MAX_BMP_RLE_BYTES: Final = 1024 * 1024

_BMP_RLE_MESSAGE: Final = (
    "That BMP image is compressed in an old way that's too slow for me to open safely — "
    "could you save it as a PNG or JPEG and send that?"
)

# Pillow's own limits on inflating PNG text/ICC chunks, as they read in its ValueErrors.
_PILLOW_METADATA_LIMIT: Final = re.compile(
    r"decompressed data too large|too much memory used in text chunks", re.IGNORECASE
)


def _too_much(fmt: str, what: str, limit: int) -> TooMuchMetadata:
    return TooMuchMetadata(detail=f"{fmt}: more than {limit:,} {what}")


def check_structure(data: bytes, fmt: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
    """The structural pre-scan of :func:`decode_image` (step 3) on its own, for a decoder that does not
    go through :func:`decode_image` (the GPU JPEG path, :mod:`bot.inference.gpu_decode`): the same
    limits then hold before that decoder sees the bytes.

    Raises :class:`TooMuchMetadata` exactly where :func:`decode_image` would; decodes nothing, and,
    like the scan inside :func:`decode_image`, leaves truncated or garbled files for the decoder to
    judge, and a pixel count over ``max_pixels`` for the header check that follows it.
    """
    _check_structure(data, fmt, max_pixels)


def _check_structure(data: bytes, fmt: str, max_pixels: int) -> int | None:
    """Refuse (:class:`TooMuchMetadata`) files whose structure exceeds the limits above.

    Only walks headers: a truncated or garbled file simply ends the walk, and Pillow then
    judges it.  Returns the GIF frame count (capped at :data:`MAX_COUNTED_FRAMES`) since
    the GIF walk counts them anyway; ``None`` for other formats.
    """
    if fmt == "JPEG":
        _scan_jpeg(data, max_pixels)
    elif fmt == "PNG":
        _scan_png(data)
    elif fmt == "GIF":
        return _scan_gif(data)
    elif fmt == "WEBP":
        _scan_webp(data)
    elif fmt == "TIFF":
        if _tiff_ifd0_entries(data, 0) > MAX_TIFF_TAGS:
            raise _too_much(fmt, "tags in the first IFD", MAX_TIFF_TAGS)
    elif fmt == "BMP":
        _scan_bmp(data)
    return None


# Header part (Pillow's walk): the next 0xFF followed by a marker byte.  0xFF fill bytes,
# 0xFF00 pairs and other junk in between are skipped, exactly as JpegImagePlugin does.
_JPEG_MARKER: Final = re.compile(rb"\xff[^\x00\xff]")
# After a scan header (libjpeg's walk): entropy-coded data never contains 0xFF followed
# by anything but 0x00 (stuffing) or RST0-7, so this finds the marker that ends the scan.
_JPEG_MARKER_AFTER_SCAN: Final = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
_JPEG_SOS: Final = 0xDA
_JPEG_TEM: Final = 0x01  # stand-alone to libjpeg, an error to Pillow
_JPEG_EOI: Final = 0xD9
# Markers without a length field, per Pillow's table (JPG, RST0-7, SOI, EOI, JPG0-13);
# anything below 0xC0 makes Pillow stop with "no marker found".
_JPEG_STANDALONE: Final = frozenset({0xC8, *range(0xD0, 0xDA), *range(0xF0, 0xFE)})
_JPEG_SOF: Final = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_JPEG_PROGRESSIVE_SOF: Final = frozenset({0xC2, 0xC6, 0xCA, 0xCE})


def _scan_jpeg(data: bytes, max_pixels: int) -> None:
    """Count segments, metadata and scans of the primary image (up to its EOI).

    Segments are skipped by their length field, which is what both Pillow and libjpeg do
    (libjpeg errors out where a table's content disagrees with its length), so the count
    of scans is the count libjpeg would decode.  Anything after the primary image's EOI --
    an MPO's second image, a gain map, a phone maker's trailer -- is not looked at.
    """
    n = len(data)
    pos = 2  # after SOI; Pillow reads the next marker from the 0xFF at offset 2
    segments = padding = metadata = tables = 0
    exif_parts: list[bytes] = []
    photoshop = 0
    sof = -1
    while True:  # header segments, as JpegImagePlugin._open walks them
        # Look no further than the padding still allowed, so 24 MB of fill bytes costs
        # the same few microseconds as 64 KB.
        window = pos + MAX_JPEG_PADDING_BYTES - padding + 2
        match = _JPEG_MARKER.search(data, pos, window)
        if match is None:
            if window < n:
                raise _too_much("JPEG", "padding bytes between segments", MAX_JPEG_PADDING_BYTES)
            return  # truncated: Pillow says so
        start = match.start()
        padding += start - pos
        segments += 1
        if segments > MAX_JPEG_SEGMENTS:
            raise _too_much("JPEG", "marker segments", MAX_JPEG_SEGMENTS)
        marker = data[start + 1]
        if marker < 0xC0:
            return  # Pillow: "no marker found"
        if marker in _JPEG_STANDALONE:
            pos = start + 2
            continue
        length = int.from_bytes(data[start + 2 : start + 4], "big")
        if length < 2 or start + 4 > n:
            return  # Pillow reads the rest of the file as this segment, then stops
        if marker == _JPEG_SOS:
            break
        payload = start + 4
        if 0xE0 <= marker <= 0xEF or marker == 0xFE:  # APPn, COM
            metadata += length - 2
            if metadata > MAX_JPEG_METADATA_BYTES:
                raise _too_much("JPEG", "bytes of metadata segments", MAX_JPEG_METADATA_BYTES)
            if marker == 0xE1 and data.startswith(b"Exif\x00\x00", payload):
                exif_parts.append(data[payload + (6 if exif_parts else 0) : start + 2 + length])
                if len(exif_parts) > MAX_JPEG_EXIF_SEGMENTS:
                    raise _too_much("JPEG", "Exif segments", MAX_JPEG_EXIF_SEGMENTS)
            elif marker == 0xED and data.startswith(b"Photoshop 3.0\x00", payload):
                photoshop += 1
                if photoshop > MAX_JPEG_PHOTOSHOP_SEGMENTS:
                    raise _too_much("JPEG", "Photoshop segments", MAX_JPEG_PHOTOSHOP_SEGMENTS)
        else:
            tables += length - 2
            if tables > MAX_JPEG_TABLE_BYTES:
                raise _too_much("JPEG", "bytes of table segments", MAX_JPEG_TABLE_BYTES)
            if marker in _JPEG_SOF:
                sof = start
        pos = start + 2 + length

    # Pillow concatenates the Exif segments (minus the repeated header) and walks IFD0.
    if exif_parts and _tiff_ifd0_entries(b"".join(exif_parts), 6) > MAX_TIFF_TAGS:
        raise _too_much("JPEG", "Exif tags in IFD0", MAX_TIFF_TAGS)

    # Scans and what sits between them, as libjpeg reads them, up to the first EOI.
    width, height, components, blocks = _jpeg_frame(data, sof)
    if width * height > max_pixels:
        return  # the header check refuses it next, with a better message
    progressive = sof >= 0 and data[sof + 1] in _JPEG_PROGRESSIVE_SOF
    if not progressive and start + 4 < n and data[start + 4] >= components:
        # A sequential first scan that covers every component: libjpeg decodes the image
        # in one pass and stops with an error at any second SOS (jdinput.c), so there is
        # nothing to count -- and baseline photos skip the walk over their data.
        return
    every_component = sum(blocks.values())
    scans = scan_blocks = 0
    while True:
        marker = data[start + 1]
        if marker == _JPEG_EOI:
            return
        if marker == _JPEG_SOS:
            scans += 1
            if scans > MAX_JPEG_SCANS:
                raise _too_much("JPEG", "scans", MAX_JPEG_SCANS)
            count = data[start + 4] if start + 4 < n else 0
            ids = data[start + 5 : start + 5 + 2 * count : 2]
            scan_blocks += sum(blocks.get(c, every_component) for c in ids)
            if scan_blocks > MAX_JPEG_SCAN_BLOCKS:
                raise _too_much("JPEG", "8x8 blocks decoded over all scans", MAX_JPEG_SCAN_BLOCKS)
        if marker in _JPEG_STANDALONE or marker == _JPEG_TEM:
            pos = start + 2  # (libjpeg skips TEM; it stops at the others, so this over-counts)
        elif marker < 0xC0:
            return  # libjpeg: unknown marker, decoding stops
        else:
            length = int.from_bytes(data[start + 2 : start + 4], "big")
            if length < 2:
                return  # libjpeg: bad length, decoding stops
            pos = start + 2 + length
        match = _JPEG_MARKER_AFTER_SCAN.search(data, pos)
        if match is None:
            return
        start = match.start()
        segments += 1
        if segments > MAX_JPEG_SEGMENTS:
            raise _too_much("JPEG", "marker segments", MAX_JPEG_SEGMENTS)


def _jpeg_frame(data: bytes, sof: int) -> tuple[int, int, int, dict[int, int]]:
    """Width, height, number of components and {component id: 8x8 blocks} from the SOF
    segment at ``sof``."""
    header = data[sof + 4 : sof + 10] if sof >= 0 else b""
    if len(header) < 6:
        return 0, 0, 0, {}
    height = int.from_bytes(header[1:3], "big")
    width = int.from_bytes(header[3:5], "big")
    specs = data[sof + 10 : sof + 10 + 3 * header[5]]
    sampling = {specs[i]: (specs[i + 1] >> 4 or 1, specs[i + 1] & 15 or 1)
                for i in range(0, len(specs) - 2, 3)}  # fmt: skip
    if not sampling:
        return width, height, header[5], {}
    h_max = max(h for h, _ in sampling.values())
    v_max = max(v for _, v in sampling.values())

    def blocks(size: int, factor: int, most: int) -> int:
        return math.ceil(math.ceil(size * factor / most) / 8)

    return width, height, header[5], {
        cid: blocks(width, h, h_max) * blocks(height, v, v_max) for cid, (h, v) in sampling.items()
    }


_PNG_IMAGE_CHUNKS: Final = frozenset(
    {b"IHDR", b"PLTE", b"IDAT", b"IEND", b"tRNS", b"acTL", b"fcTL", b"fdAT"}
)
_PNG_COMPRESSED_CHUNKS: Final = frozenset({b"zTXt", b"iTXt", b"iCCP"})


def _scan_png(data: bytes) -> None:
    """Count chunks up to IEND (where Pillow stops too), and metadata chunks and bytes."""
    n = len(data)
    pos = len(_PNG_MAGIC)
    chunks = metadata_chunks = metadata_bytes = compressed = 0
    while pos + 8 <= n:
        length = int.from_bytes(data[pos : pos + 4], "big")
        kind = data[pos + 4 : pos + 8]
        chunks += 1
        if chunks > MAX_PNG_CHUNKS:
            raise _too_much("PNG", "chunks", MAX_PNG_CHUNKS)
        if kind == b"IEND":
            return
        if kind not in _PNG_IMAGE_CHUNKS:
            metadata_chunks += 1
            metadata_bytes += min(length, n - pos - 8)  # a length past the end is just truncation
            if metadata_chunks > MAX_PNG_METADATA_CHUNKS:
                raise _too_much("PNG", "metadata chunks", MAX_PNG_METADATA_CHUNKS)
            if metadata_bytes > MAX_PNG_METADATA_BYTES:
                raise _too_much("PNG", "bytes of metadata chunks", MAX_PNG_METADATA_BYTES)
            if kind in _PNG_COMPRESSED_CHUNKS:
                compressed += 1
                if compressed > MAX_PNG_COMPRESSED_CHUNKS:
                    raise _too_much("PNG", "compressed text/ICC chunks", MAX_PNG_COMPRESSED_CHUNKS)
            elif (
                kind == b"eXIf"
                and _tiff_ifd0_entries(data[pos + 8 : pos + 8 + length], 0) > MAX_TIFF_TAGS
            ):
                raise _too_much("PNG", "Exif tags in IFD0", MAX_TIFF_TAGS)
        pos += 12 + length


_GIF_BLOCK_START: Final = re.compile(rb"[!,;]")  # extension, image descriptor, trailer


def _gif_sub_blocks(data: bytes, pos: int, counted: int, limit: int, what: str) -> tuple[int, int, int]:
    """Skip one chain of GIF sub-blocks starting at ``pos``, through its zero terminator.

    ``counted`` is how many sub-blocks of this kind came before; past ``limit`` the file is refused.
    Returns (the position after the chain, the new count, the chain's payload bytes).
    """
    n = len(data)
    payload = 0
    while pos < n:
        length = data[pos]
        pos += length + 1
        if length == 0:
            break
        counted += 1
        if counted > limit:
            raise _too_much("GIF", what, limit)
        payload += length
    return pos, counted, payload


def _scan_gif(data: bytes) -> int:
    """Walk a GIF's blocks without decoding LZW data; return the number of frames.

    Counting stops at the trailer, at garbage after the first frame, at truncation, or at
    :data:`MAX_COUNTED_FRAMES`.  Junk *before* the first frame is skipped the way Pillow
    skips it (byte by byte).  Always >= 1 for a GIF that Pillow could open.
    """
    n = len(data)
    if n < 13:
        return 1
    pos = 13
    flags = data[10]
    if flags & 0x80:  # global colour table
        pos += 3 << ((flags & 0x07) + 1)
    limit = MAX_COUNTED_FRAMES
    frames = sub_blocks = extension_sub_blocks = comment_bytes = junk = 0
    while pos < n and frames < limit:
        marker = data[pos]
        if marker == 0x21:  # extension: introducer, label, sub-blocks
            comment = pos + 1 < n and data[pos + 1] == 0xFE
            pos, extension_sub_blocks, payload = _gif_sub_blocks(
                data, pos + 2, extension_sub_blocks, MAX_GIF_EXTENSION_SUB_BLOCKS, "extension sub-blocks")
            if comment:
                comment_bytes += payload
                if comment_bytes > MAX_GIF_COMMENT_BYTES:
                    raise _too_much("GIF", "comment bytes", MAX_GIF_COMMENT_BYTES)
        elif marker == 0x2C:  # image descriptor (10 bytes), optional LCT, LZW size byte
            if pos + 10 > n:
                break
            frames += 1
            local_flags = data[pos + 9]
            pos += 10
            if local_flags & 0x80:
                pos += 3 << ((local_flags & 0x07) + 1)
            pos, sub_blocks, _ = _gif_sub_blocks(data, pos + 1, sub_blocks, MAX_GIF_SUB_BLOCKS, "image data sub-blocks")
        elif frames == 0 and marker != 0x3B:
            # Pillow skips junk before the first frame one byte per loop turn.
            window = pos + MAX_GIF_JUNK_BYTES - junk + 1
            match = _GIF_BLOCK_START.search(data, pos, window)
            if match is None:
                if window < n:
                    raise _too_much("GIF", "junk bytes before the first frame", MAX_GIF_JUNK_BYTES)
                break  # junk up to the end: Pillow finds no image
            junk += match.start() - pos
            pos = match.start()
        else:  # 0x3B trailer, or garbage after a frame
            break
    return max(1, frames)


def _scan_webp(data: bytes) -> None:
    """Count top-level RIFF chunks (within the RIFF size, as libwebp reads them)."""
    end = min(len(data), 8 + int.from_bytes(data[4:8], "little"))
    pos = 12
    chunks = 0
    while pos + 8 <= end:
        size = int.from_bytes(data[pos + 4 : pos + 8], "little")
        chunks += 1
        if chunks > MAX_WEBP_CHUNKS:
            raise _too_much("WEBP", "chunks", MAX_WEBP_CHUNKS)
        if data[pos : pos + 4] == b"EXIF":
            exif = data[pos + 8 : pos + 8 + size]
            skip = 6 if exif.startswith(b"Exif\x00\x00") else 0
            if _tiff_ifd0_entries(exif, skip) > MAX_TIFF_TAGS:
                raise _too_much("WEBP", "Exif tags in IFD0", MAX_TIFF_TAGS)
        pos += 8 + size + (size & 1)


def _tiff_ifd0_entries(data: bytes, base: int) -> int:
    """Entries Pillow would read from the first IFD of the TIFF structure at ``data[base:]``
    (a TIFF file, or an Exif block after its ``Exif\\0\\0`` header): the declared count, but
    no more than the bytes that follow hold (Pillow stops there with an error).  0 if
    unreadable."""
    head = data[base : base + 16]
    if head[:2] == b"II":
        order: Literal["little", "big"] = "little"
    elif head[:2] == b"MM":
        order = "big"
    else:
        return 0
    magic = int.from_bytes(head[2:4], order)
    if magic == 42:
        ifd, count_size, entry_size = base + int.from_bytes(head[4:8], order), 2, 12
    elif magic == 43 and len(head) == 16:  # BigTIFF: 8-byte offsets and counts
        ifd, count_size, entry_size = base + int.from_bytes(head[8:16], order), 8, 20
    else:
        return 0
    declared = int.from_bytes(data[ifd : ifd + count_size], order)
    return min(declared, max(0, len(data) - ifd - count_size) // entry_size)


def _scan_bmp(data: bytes) -> None:
    """Bound the size of RLE-compressed pixel data, which Pillow decodes in Python."""
    if len(data) < 34 or int.from_bytes(data[14:18], "little") < 40:
        return  # OS/2 1.x header: no compression field
    if int.from_bytes(data[30:34], "little") in (1, 2):  # BI_RLE8, BI_RLE4
        if len(data) - int.from_bytes(data[10:14], "little") > MAX_BMP_RLE_BYTES:
            error = _too_much("BMP", "bytes of RLE data", MAX_BMP_RLE_BYTES)
            error.user_message = _BMP_RLE_MESSAGE
            raise error


# --------------------------------------------------------------------------- decoding


def decode_image(
    data: bytes | bytearray | memoryview,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    target_size: int = DEFAULT_TARGET_SIZE,
    text_size: int = 0,
    filename: str | None = None,
) -> DecodedImage:
    """Decode untrusted image bytes into an upright RGB image of at most ``target_size``.

    ``text_size`` > 0 also makes :attr:`DecodedImage.text_image`, a grayscale copy at most that long
    for the text reader (JPEGs are then drafted for the larger of the two sizes).

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
    if max_bytes <= 0 or max_pixels <= 0 or target_size <= 0 or text_size < 0:
        raise ValueError("max_bytes, max_pixels and target_size must be positive, text_size >= 0")

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
        frames = _check_structure(
            data if isinstance(data, bytes) else bytes(data), detected, max_pixels
        )
        return _decode(data, detected, max_pixels, target_size, filename, frames, text_size)
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
        if isinstance(exc, ValueError) and _PILLOW_METADATA_LIMIT.search(str(exc)):
            # A *valid* PNG whose zTXt/iTXt/iCCP inflates past Pillow's own limits.
            raise TooMuchMetadata(detail=f"{detected}: Pillow: {exc}") from exc
        log.debug("could not decode %s image: %r", detected, exc)
        raise CorruptImage(detail=f"{detected}: {type(exc).__name__}: {exc}") from exc


def _decode(
    data: bytes | bytearray | memoryview,
    fmt: str,
    max_pixels: int,
    target_size: int,
    filename: str | None,
    counted_frames: int | None,
    text_size: int = 0,
) -> DecodedImage:
    with Image.open(io.BytesIO(data), formats=[fmt]) as im:
        width, height = im.size
        if width <= 0 or height <= 0:
            raise CorruptImage(detail=f"{fmt}: non-positive size {width}x{height}")
        if width * height > max_pixels:
            # Header-only so far: Image.open parses headers, pixels are decoded in load().
            raise ImageTooManyPixels(width, height, max_pixels, filename=filename)

        frame_count = counted_frames if counted_frames is not None else _count_frames(im, fmt)
        final_size = _fit_within(width, height, target_size)
        text_final = _fit_within(width, height, text_size) if text_size > 0 else None

        box: tuple[float, float, float, float] | None = None
        # The draft must keep enough pixels for both copies: the model image with the usual reducing gap,
        # the reader's copy without one (glyph edges survive a 1/2 DCT scale, and a 12 MP photo then
        # decodes at 3 MP instead of 12: with the gray conversion before the resize, measured 92 → 33 ms,
        # bench/results/decode_isolation.md).
        if fmt == "JPEG" and final_size != (width, height):
            # DCT-domain downscale by 1/2, 1/4 or 1/8 while staying >= _REDUCING_GAP x the
            # final size.  Must happen before load(); draft() also keeps the mode as is
            # for CMYK/L (it only ever changes RGB -> L/YCbCr, which we don't ask for).
            wanted = (math.ceil(final_size[0] * _REDUCING_GAP), math.ceil(final_size[1] * _REDUCING_GAP))
            if text_final is not None:
                wanted = (max(wanted[0], text_final[0]), max(wanted[1], text_final[1]))
            drafted = im.draft("RGB", wanted)
            if drafted is not None:
                box = drafted[1]  # the drafted image's valid area (edges may be partial)

        im.load()
        # Orientation is read after load(): for PNG the eXIf chunk may follow the pixel
        # data, and PngImageFile.getexif() would load() anyway.  The draft above does not
        # touch EXIF, and original_size is computed from the pre-draft header size.
        orientation = _read_orientation(im)
        original_size = (height, width) if orientation in _SWAPS_AXES else (width, height)

        source = _to_resizable_mode(im, fmt)
        text_image = None
        if text_final is not None:
            # Gray first, then resize: one channel to filter instead of three.
            gray = _flatten_to_rgb(source).convert("L")
            text_image = gray if gray.size == text_final else gray.resize(
                text_final, _TEXT_RESAMPLE, box=box, reducing_gap=_REDUCING_GAP)
        out = source
        if out.size != final_size:
            out = out.resize(final_size, _RESAMPLE, box=box, reducing_gap=_REDUCING_GAP)
        out = _flatten_to_rgb(out)

        transpose = _TRANSPOSE_FOR_ORIENTATION.get(orientation)
        if transpose is not None:
            out = out.transpose(transpose)
            if text_image is not None:
                text_image = text_image.transpose(transpose)
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
        text_image=text_image,
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


def _count_frames(im: Image.Image, fmt: str) -> int:
    """Number of animation frames, capped at :data:`MAX_COUNTED_FRAMES`.

    Pillow's ``n_frames`` is cheap for WebP/AVIF (the C demuxer) and APNG (a declared
    count), but for GIF it walks every frame in Python -- seconds for a hostile file --
    so GIFs are counted by the structural pre-scan (:func:`_scan_gif`) instead.
    """
    if fmt not in _ANIMATED_FORMATS:
        return 1  # TIFF pages, MPO sub-images: we use the first and don't count the rest
    try:
        n = int(getattr(im, "n_frames", 1))
    except Exception:
        n = 1
    return max(1, min(n, MAX_COUNTED_FRAMES))


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
