"""JPEG decoding on the GPU, batched, for the inference queue's decode stage (issue 14, "GPU path").

On a GPU host the CPU is what runs out first: the models take milliseconds per image on the device,
while decoding a 12 MP phone photo costs ~15 ms of a CPU core even with libjpeg's DCT-domain
downscale (``bench/results/decode_isolation.md``). :class:`GpuJpegDecoder` decodes JPEGs (nearly every
photo people post) with torchvision's batched ``decode_jpeg`` on the device (nvJPEG), resizes them
there, and hands the queue the same :class:`~bot.imaging.DecodedImage` the CPU decoder processes make,
so everything after the decode stage (``Analyzer.prepare``, the batches, the reader) is unchanged.

The hostile-input rules still hold, in front of the device decoder, in this process:

1. The byte limit, the format sniff and the structural pre-scan of :func:`bot.imaging.decode_image`
   (:func:`bot.imaging.check_structure`: segment, metadata and scan floods), then the pixel limit
   from the frame header. These decode nothing and raise the very refusals the CPU path raises
   (:class:`~bot.imaging.ImageTooLarge`, :class:`~bot.imaging.TooMuchMetadata`,
   :class:`~bot.imaging.ImageTooManyPixels`), so a refused file never reaches the device.
2. A walk over the header segments (:func:`read_jpeg_header`, bounded by the limits step 1 enforced)
   that takes only what nvJPEG is known to decode the way Pillow does: baseline, extended-sequential
   or progressive Huffman coding, 8-bit samples, grayscale or YCbCr with ordinary chroma subsampling,
   and a complete file (the primary image's EOI is there: Pillow refuses truncated files, libjpeg
   would pad them with grey). It also reads the EXIF orientation the way Pillow's ``getexif()`` does.
3. Everything else — other formats, CMYK/YCCK, RGB-coded, 12-bit, arithmetic-coded, lossless or
   hierarchical JPEGs, truncated or unreadable headers — and any image whose device decode or resize
   fails goes to ``fallback`` (the queue's :class:`~bot.decode_sandbox.DecodeSandbox`), one image at a
   time: its verdict, decoded or refused, is the CPU path's own. A failed image in a device batch is
   retried alone, so it never fails its batch-mates.

What the device path does *not* have is the sandbox's kill switch: nvJPEG runs in this process, so
there is no time or memory limit around it beyond what step 1 bounds (scans, 8x8 blocks, pixels).
That is why the path only takes the plain JPEGs above and sends everything unusual to the processes.

Batching: the queue decodes one job per decode thread. Callers that arrive while a device batch is
running queue up, and the next of them decodes all of them in one ``decode_jpeg`` call (at most
``max_batch``; no waiting for a batch to fill, so an idle queue adds no latency); the batch size is
therefore bounded by ``queue.decode_workers``.

Numerics: decoded at full size, then resized with antialiased bicubic (the model image) and bilinear
(the reader's gray copy), the filters the CPU path uses through Pillow; the CPU path first shrinks in
the DCT domain (``draft``), so pixels differ by a few levels, not more (tests/test_gpu_decode.py).

``device`` may be the CPU: the same batched path then runs on torchvision's libjpeg-turbo decoder,
which is how the tests drive it on a machine without a GPU. The queue only builds this decoder when
its models run on CUDA (``queue.gpu_decode = "auto"``).
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal

import torch
import torch.nn.functional as F
from PIL import Image

from bot.imaging import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_PIXELS,
    DEFAULT_TARGET_SIZE,
    MAX_JPEG_SEGMENTS,
    DecodedImage,
    EmptyImage,
    ImageRejected,
    ImageTooLarge,
    ImageTooManyPixels,
    check_structure,
    sniff_format,
)

__all__ = [
    "GpuDecodeStats",
    "GpuJpegDecoder",
    "JpegHeader",
    "fit_within",
    "gpu_decode_wanted",
    "orient",
    "read_jpeg_header",
]

log = logging.getLogger(__name__)

#: ``fallback(data, filename=..., text_size=...)``: the CPU decoder (``DecodeSandbox.decode``).
Fallback = Callable[..., DecodedImage]
#: ``decode_batch(byte_tensors, device)``: one RGB uint8 ``(3, H, W)`` tensor per input, on ``device``.
BatchDecode = Callable[[list[torch.Tensor], torch.device], list[torch.Tensor]]

# Frame types nvJPEG decodes like libjpeg: SOF0 baseline, SOF1 extended sequential, SOF2 progressive
# (all Huffman). SOF3 lossless, SOF5-7 hierarchical, SOF9-15 arithmetic go to the CPU path.
_GPU_FRAMES: Final = frozenset({0xC0, 0xC1, 0xC2})
_SOF: Final = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # DHT, JPG, DAC are not frames
_SOS: Final = 0xDA
_EOI: Final = 0xD9
_RST: Final = frozenset(range(0xD0, 0xD8))
_TEM: Final = 0x01
# As in bot.imaging: the next 0xFF + marker byte in the header, and after a scan's entropy-coded data
# (where 0xFF00 is a stuffed byte and RSTn sits inside the scan).
_MARKER: Final = re.compile(rb"\xff[^\x00\xff]")
_MARKER_AFTER_SCAN: Final = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
_EXIF_HEADER: Final = b"Exif\x00\x00"
_XMP_HEADER: Final = b"http://ns.adobe.com/xap/1.0/\x00"
_XMP_ORIENTATION: Final = re.compile(rb'tiff:Orientation(="|>)([0-9])')  # what Pillow's getexif() reads
_ORIENTATION_TAG: Final = 0x0112
_MAX_IFD_ENTRIES: Final = 1_000  # bot.imaging.MAX_TIFF_TAGS: the structural check refused more
# TIFF field types whose single value fits the entry: BYTE, SHORT, LONG, SBYTE, SSHORT, SLONG -> bytes.
_INLINE_TYPES: Final = {1: 1, 3: 2, 4: 4, 6: 1, 8: 2, 9: 4}
_SWAPS_AXES: Final = frozenset({5, 6, 7, 8})
# ITU-R 601-2 luma, Pillow's RGB -> "L" conversion.
_LUMA: Final = (0.299, 0.587, 0.114)


def gpu_decode_wanted(setting: Literal["auto", "off"], device: torch.device | None) -> bool:
    """Whether the queue decodes JPEGs with :class:`GpuJpegDecoder` (``queue.gpu_decode``): "auto" when
    the models run on CUDA, never with "off" — so on a CPU host the decoder is never even built and
    decoding is exactly what it was."""
    return setting == "auto" and isinstance(device, torch.device) and device.type == "cuda"


# --------------------------------------------------------------------------- the header


@dataclass(frozen=True)
class JpegHeader:
    """What the device path needs from a JPEG's header segments (up to its first scan)."""

    frame: int
    """The SOFn marker byte (0xC0 baseline, 0xC2 progressive, ...)."""
    precision: int
    width: int
    height: int
    components: tuple[tuple[int, int, int], ...]
    """(component id, horizontal sampling, vertical sampling) per component, in frame order."""
    adobe_transform: int | None
    """The Adobe APP14 colour transform (0: RGB/CMYK as stored, 1: YCbCr, 2: YCCK); None without one."""
    orientation: int
    """EXIF orientation 1-8, as Pillow's ``getexif()`` reads it (1 when absent or garbled)."""

    def cpu_only_reason(self) -> str | None:
        """Why this JPEG must go to the CPU decoder (a short label for the stats), or None."""
        if self.frame not in _GPU_FRAMES:
            return "coding"  # lossless, hierarchical or arithmetic
        if self.precision != 8:
            return "precision"
        if self.width <= 0 or self.height <= 0:
            return "size"  # e.g. the height left to a DNL marker
        if len(self.components) == 1:
            return None
        if len(self.components) != 3:
            return "colour"  # CMYK / YCCK (4 components), or something odder
        if self.adobe_transform == 0 or bytes(c[0] for c in self.components) == b"RGB":
            return "colour"  # stored as RGB, not YCbCr: libjpeg converts nothing, nvJPEG might
        (_, luma_h, luma_v), *chroma = self.components
        if luma_h not in (1, 2) or luma_v not in (1, 2) or any((h, v) != (1, 1) for _, h, v in chroma):
            return "sampling"  # 4:4:4, 4:2:2, 4:4:0 and 4:2:0 only
        return None


def read_jpeg_header(data: bytes) -> JpegHeader | None:
    """The frame header, Adobe transform and orientation of a JPEG, and whether it is complete.

    None when the walk finds anything it does not expect (no frame header before the first scan, a
    segment running past the end, stray markers, no EOI after the scans): such files go to the CPU
    path, whose verdict on them stands. Call only after :func:`bot.imaging.check_structure` has
    passed the bytes: that bounds the segments, padding and scans walked here.
    """
    n = len(data)
    pos = 2  # after SOI
    exif = b""
    xmp: bytes | None = None
    adobe: int | None = None
    frame: tuple[int, bytes] | None = None
    for _ in range(MAX_JPEG_SEGMENTS):
        match = _MARKER.search(data, pos)
        if match is None:
            return None
        start = match.start()
        marker = data[start + 1]
        if marker in _RST or marker == _TEM:
            pos = start + 2
            continue
        if marker < 0xC0 or marker in (0xC8, 0xD8, _EOI) or 0xF0 <= marker <= 0xFD:
            return None  # junk, JPG extensions, or an image that ends before its first scan
        end = start + 2 + int.from_bytes(data[start + 2 : start + 4], "big")
        if end < start + 4 or end > n:
            return None
        payload = data[start + 4 : end]
        if marker == _SOS:
            if frame is None or not _complete(data, start):
                return None
            return _header(*frame, adobe, _orientation(exif, xmp))
        if marker in _SOF:
            frame = (marker, payload)
        elif marker == 0xE1 and payload.startswith(_EXIF_HEADER):
            exif = exif + payload[6:] if exif else payload  # as Pillow joins them
        elif marker == 0xE1 and payload.startswith(_XMP_HEADER):
            xmp = payload[len(_XMP_HEADER) :]
        elif marker == 0xEE and payload.startswith(b"Adobe") and len(payload) > 11:
            adobe = payload[11]
        pos = end
    return None


def _header(marker: int, payload: bytes, adobe: int | None, orientation: int) -> JpegHeader | None:
    if len(payload) < 6 or len(payload) < 6 + 3 * payload[5]:
        return None
    count = payload[5]
    components = tuple(
        (payload[i], payload[i + 1] >> 4, payload[i + 1] & 15) for i in range(6, 6 + 3 * count, 3)
    )
    return JpegHeader(
        frame=marker, precision=payload[0], width=int.from_bytes(payload[3:5], "big"),
        height=int.from_bytes(payload[1:3], "big"), components=components, adobe_transform=adobe,
        orientation=orientation,
    )


def _complete(data: bytes, start: int) -> bool:
    """Whether the scans from the SOS at ``start`` end in an EOI (the file is not truncated)."""
    n = len(data)
    for _ in range(MAX_JPEG_SEGMENTS):
        marker = data[start + 1]
        if marker == _EOI:
            return True
        if marker == _TEM:
            pos = start + 2
        elif marker < 0xC0 or start + 4 > n:
            return False
        else:
            length = int.from_bytes(data[start + 2 : start + 4], "big")
            if length < 2:
                return False
            pos = start + 2 + length
        match = _MARKER_AFTER_SCAN.search(data, pos)
        if match is None:
            return False
        start = match.start()
    return False


def _orientation(exif: bytes, xmp: bytes | None) -> int:
    """Pillow's reading (``getexif()`` then ``bot.imaging._read_orientation``): the Exif IFD0 tag,
    else XMP's ``tiff:Orientation``; 1 when absent, garbled or out of range."""
    try:
        value = _ifd0_orientation(exif[6:]) if exif else None
    except ValueError:
        return 1
    if value is None and xmp:
        match = _XMP_ORIENTATION.search(xmp)
        value = int(match[2]) if match else None
    return value if value is not None and 1 <= value <= 8 else 1


def _ifd0_orientation(tiff: bytes) -> int | None:
    """The Orientation entry of a TIFF structure's first IFD: its value, None without one, ValueError
    where Pillow's parser would fail (not a TIFF header, an IFD outside the data)."""
    order: Literal["little", "big"]
    if tiff[:4] == b"II*\x00":
        order = "little"
    elif tiff[:4] == b"MM\x00*":
        order = "big"
    else:
        raise ValueError("not a TIFF header")
    ifd = int.from_bytes(tiff[4:8], order)
    if ifd + 2 > len(tiff):
        raise ValueError("IFD0 outside the data")
    entries = min(int.from_bytes(tiff[ifd : ifd + 2], order), _MAX_IFD_ENTRIES)
    for index in range(entries):
        entry = tiff[ifd + 2 + 12 * index : ifd + 14 + 12 * index]
        if len(entry) < 12:
            return None  # truncated: Pillow keeps the entries before it
        if int.from_bytes(entry[:2], order) != _ORIENTATION_TAG:
            continue
        size = _INLINE_TYPES.get(int.from_bytes(entry[2:4], order))
        if size is None or int.from_bytes(entry[4:8], order) != 1:
            return 0  # present but not one integer: Pillow's value does not read as 1-8 either
        return int.from_bytes(entry[8 : 8 + size], order)
    return None


def fit_within(width: int, height: int, target: int) -> tuple[int, int]:
    """Longest side == ``target``, same aspect, never upscaled: ``bot.imaging``'s rule, so both paths
    produce images of the same size (tests/test_gpu_decode.py compares them)."""
    longest = max(width, height)
    if longest <= target:
        return width, height
    scale = target / longest
    return max(1, round(width * scale)), max(1, round(height * scale))


# --------------------------------------------------------------------------- tensor work


def _torchvision_decode(tensors: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """torchvision's batched decoder: nvJPEG for a CUDA device, libjpeg-turbo for the CPU."""
    from torchvision.io import ImageReadMode, decode_jpeg  # torchvision is a dependency (open_clip)

    return list(decode_jpeg(tensors, mode=ImageReadMode.RGB, device=device))


def _resized(image: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """``image`` (float, C x H x W) antialiased to ``size`` (width, height), rounded to uint8.

    ``antialias=True`` gives Pillow's filters (bicubic with a = -0.5, bilinear over the whole
    footprint when shrinking), which the CPU path uses."""
    if (image.shape[-1], image.shape[-2]) != size:
        image = F.interpolate(image[None], size=(size[1], size[0]), mode=mode, antialias=True, align_corners=False)[0]
    return image.round().clamp_(0, 255).to(torch.uint8)


def orient(image: torch.Tensor, orientation: int) -> torch.Tensor:
    """Make a ``(..., H, W)`` tensor upright for an EXIF orientation (PIL's transposes, same table as
    ``bot.imaging``): applied after the resize, as the CPU path does, where it is nearly free."""
    if orientation == 2:
        return image.flip(-1)  # FLIP_LEFT_RIGHT
    if orientation == 3:
        return image.flip(-2, -1)  # ROTATE_180
    if orientation == 4:
        return image.flip(-2)  # FLIP_TOP_BOTTOM
    if orientation == 5:
        return image.transpose(-2, -1)  # TRANSPOSE
    if orientation == 6:
        return torch.rot90(image, -1, dims=(-2, -1))  # ROTATE_270 (clockwise)
    if orientation == 7:
        return image.transpose(-2, -1).flip(-2, -1)  # TRANSVERSE
    if orientation == 8:
        return torch.rot90(image, 1, dims=(-2, -1))  # ROTATE_90 (counter-clockwise)
    return image


def _to_pil(image: torch.Tensor) -> Image.Image:
    """A uint8 ``(3, H, W)`` or ``(1, H, W)`` tensor, anywhere, as an RGB or L PIL image on the host."""
    array = image.permute(1, 2, 0).contiguous().cpu().numpy()
    return Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array)


# --------------------------------------------------------------------------- the decoder


@dataclass
class GpuDecodeStats:
    """Counters for logs and tests (read without a lock: a torn read only skews a count)."""

    device: int = 0
    """Images decoded on the device."""
    batches: int = 0
    largest_batch: int = 0
    refused: int = 0
    """Refusals raised here, before any decoder saw the bytes."""
    fallbacks: dict[str, int] = field(default_factory=dict)
    """Images handed to the CPU decoder, by reason (``not_jpeg``, ``incomplete``, ``colour``, ...)."""


@dataclass(eq=False)
class _Request:
    data: bytes
    header: JpegHeader
    text_size: int
    result: DecodedImage | None = None
    fallback_reason: str | None = None
    done: bool = False


class GpuJpegDecoder:
    """``decode(data, filename=..., text_size=...)`` like :meth:`DecodeSandbox.decode`, with JPEGs
    decoded on ``device`` in batches and everything else handed to ``fallback``.

    Thread-safe and blocking; the device work of concurrent callers is combined into one batch (see
    the module docstring). ``decode_batch`` replaces torchvision's decoder (tests count its calls and
    make it fail).
    """

    def __init__(
        self,
        device: torch.device,
        *,
        fallback: Fallback,
        max_bytes: int = DEFAULT_MAX_BYTES,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        target_size: int = DEFAULT_TARGET_SIZE,
        max_batch: int = 16,
        decode_batch: BatchDecode | None = None,
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        self.device = device
        self.fallback = fallback
        self.max_bytes = max_bytes
        self.max_pixels = max_pixels
        self.target_size = target_size
        self.max_batch = max_batch
        self._decode_batch = decode_batch or _torchvision_decode
        self.stats = GpuDecodeStats()
        self._cond = threading.Condition()
        self._waiting: list[_Request] = []
        self._running = False

    # ------------------------------------------------------------------ the per-image API

    def decode(
        self, data: bytes | bytearray | memoryview, *, filename: str | None = None, text_size: int = 0
    ) -> DecodedImage:
        """Decode untrusted bytes: on the device when they are a plain JPEG, else (or when the device
        fails on them) with ``fallback``. Raises the :class:`~bot.imaging.ImageRejected` the CPU path
        raises for the same file."""
        request, reason = self._screen(data, filename, text_size)
        if request is not None:
            self._submit(request)
            if request.result is not None:
                return request.result
            reason = request.fallback_reason or "error"
        return self._fall_back(data, filename, text_size, reason)

    def decode_many(
        self, items: Sequence[bytes], *, filenames: Sequence[str | None] | None = None, text_size: int = 0
    ) -> list[DecodedImage | ImageRejected]:
        """Decode several files on the calling thread, the plain JPEGs in device batches of at most
        ``max_batch``: each file's image or its refusal, in order (one bad file never fails another)."""
        names = list(filenames) if filenames is not None else [None] * len(items)
        outcomes: dict[int, DecodedImage | ImageRejected] = {}
        reasons: dict[int, str] = {}
        queued: list[tuple[int, _Request]] = []
        for index, data in enumerate(items):
            try:
                request, reason = self._screen(data, names[index], text_size)
            except ImageRejected as exc:
                outcomes[index] = exc
                continue
            if request is None:
                reasons[index] = reason
            else:
                queued.append((index, request))
        for first in range(0, len(queued), self.max_batch):
            chunk = queued[first : first + self.max_batch]
            self._run_batch([request for _, request in chunk])
            for index, request in chunk:
                if request.result is not None:
                    outcomes[index] = request.result
                else:
                    reasons[index] = request.fallback_reason or "error"
        for index, reason in sorted(reasons.items()):
            try:
                outcomes[index] = self._fall_back(items[index], names[index], text_size, reason)
            except ImageRejected as exc:
                outcomes[index] = exc
        return [outcomes[index] for index in range(len(items))]

    # ------------------------------------------------------------------ screening (no decoding)

    def _screen(
        self, data: bytes | bytearray | memoryview, filename: str | None, text_size: int
    ) -> tuple[_Request | None, str]:
        """The CPU path's checks, in its order, up to the pixel limit; then whether the device takes it.

        Raises the CPU path's refusals; returns (a device request, "") or (None, why not)."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"data must be bytes-like, not {type(data).__name__}")
        raw = bytes(data)
        try:
            if not raw:
                raise EmptyImage(detail="0 bytes")
            if len(raw) > self.max_bytes:
                raise ImageTooLarge(len(raw), self.max_bytes, filename=filename)
            if sniff_format(raw) != "JPEG":
                return None, "not_jpeg"  # the CPU path accepts or refuses it, with its own message
            check_structure(raw, "JPEG", self.max_pixels)
            header = read_jpeg_header(raw)
            if header is None:
                return None, "incomplete"
            self._check_pixels(header, filename)
        except ImageRejected:
            self.stats.refused += 1
            raise
        reason = header.cpu_only_reason()
        if reason is not None:
            return None, reason
        return _Request(raw, header, text_size), ""

    def _check_pixels(self, header: JpegHeader, filename: str | None) -> None:
        """The CPU path's pixel limits, worded as it words them: Pillow's own bomb check (twice
        ``Image.MAX_IMAGE_PIXELS``) fires inside ``Image.open`` before ``max_pixels`` is looked at, and
        its refusal carries no size."""
        width, height = header.width, header.height
        pillow_limit = Image.MAX_IMAGE_PIXELS
        if pillow_limit and width * height > 2 * pillow_limit:
            raise ImageTooManyPixels(limit=self.max_pixels, filename=filename,
                                     detail=f"{width}x{height}: over Pillow's limit of {2 * pillow_limit}")
        if width * height > self.max_pixels:
            raise ImageTooManyPixels(width, height, self.max_pixels, filename=filename)

    def _fall_back(
        self, data: bytes | bytearray | memoryview, filename: str | None, text_size: int, reason: str
    ) -> DecodedImage:
        self.stats.fallbacks[reason] = self.stats.fallbacks.get(reason, 0) + 1
        return self.fallback(data, filename=filename, text_size=text_size)

    # ------------------------------------------------------------------ batching

    def _submit(self, request: _Request) -> None:
        """Wait until ``request`` is done, running the device batches while nobody else is.

        Requests that arrive while a batch runs wait; when it ends, the first waiter to wake decodes
        all of them (up to ``max_batch``) in the next one. Nobody waits for a batch to fill."""
        with self._cond:
            self._waiting.append(request)
        while True:
            with self._cond:
                while self._running and not request.done:
                    self._cond.wait()
                if request.done:
                    return
                self._running = True
                batch = self._waiting[: self.max_batch]
                del self._waiting[: self.max_batch]
            try:
                self._run_batch(batch)
            finally:
                with self._cond:
                    for item in batch:
                        item.done = True
                    self._running = False
                    self._cond.notify_all()

    def _run_batch(self, batch: list[_Request]) -> None:
        """One device decode for the batch; a failure there is retried image by image, and whatever
        still fails is marked for the CPU path. Never raises for an image's sake."""
        self.stats.batches += 1
        self.stats.largest_batch = max(self.stats.largest_batch, len(batch))
        try:
            with torch.inference_mode():
                tensors = [torch.frombuffer(bytearray(request.data), dtype=torch.uint8) for request in batch]
                images = self._decode_all(tensors)
                del tensors
                images.reverse()  # popped in batch order: each full-size image is freed once finished
                for request in batch:
                    image = images.pop()
                    if isinstance(image, BaseException):
                        request.fallback_reason = "decode_error"
                        log.debug("device JPEG decode failed (%s): falling back to the CPU path", image)
                        continue
                    try:
                        request.result = self._finish(image, request.header, request.text_size)
                    except Exception as exc:
                        request.fallback_reason = "resize_error"
                        log.warning("resizing a device-decoded JPEG failed (%r): falling back to the CPU path", exc)
                    else:
                        self.stats.device += 1
                    del image
        except Exception:  # a bug here must cost a CPU decode, not the images
            log.exception("device JPEG batch failed: falling back to the CPU path")
            for request in batch:
                if request.result is None:
                    request.fallback_reason = "error"

    def _decode_all(self, tensors: list[torch.Tensor]) -> list[torch.Tensor | BaseException]:
        """The batch in one call; if that fails (torchvision reports one bad file by failing the
        call, and a device out-of-memory is a RuntimeError too), each image alone."""
        try:
            decoded = self._decode_batch(tensors, self.device)
            if len(decoded) != len(tensors):
                raise RuntimeError(f"{len(decoded)} images back for {len(tensors)}")
            return list(decoded)
        except Exception as exc:
            if len(tensors) == 1:
                return [exc]
        results: list[torch.Tensor | BaseException] = []
        for tensor in tensors:
            try:
                results.append(self._decode_batch([tensor], self.device)[0])
            except Exception as exc:
                results.append(exc)
        return results

    def _finish(self, pixels: torch.Tensor, header: JpegHeader, text_size: int) -> DecodedImage:
        """Full-size RGB on the device → the model image (and the reader's gray copy), upright, on the
        host: what ``bot.imaging._decode`` makes for the same JPEG."""
        width, height = header.width, header.height
        if tuple(pixels.shape) != (3, height, width):
            raise ValueError(f"decoded {tuple(pixels.shape)}, the header says (3, {height}, {width})")
        full = pixels.to(torch.float32)
        model = orient(_resized(full, fit_within(width, height, self.target_size), "bicubic"), header.orientation)
        text_image = None
        if text_size > 0:
            luma = torch.tensor(_LUMA, dtype=full.dtype, device=full.device).view(3, 1, 1)
            gray = (full * luma).sum(0, keepdim=True).round_()  # Pillow: gray first, then resize
            del full
            text = _resized(gray, fit_within(width, height, text_size), "bilinear")
            text_image = _to_pil(orient(text, header.orientation))
        original = (height, width) if header.orientation in _SWAPS_AXES else (width, height)
        return DecodedImage(
            image=_to_pil(model), format="JPEG", original_size=original, animated=False, frame_count=1,
            text_image=text_image,
        )
