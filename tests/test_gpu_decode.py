"""The GPU JPEG path (bot/inference/gpu_decode.py), driven on ``torch.device("cpu")``.

No GPU is needed: the decoder takes a ``device``, and on the CPU the very same batched path runs on
torchvision's libjpeg-turbo decoder. What these tests pin down: the hostile-input checks run before
any bytes reach ``decode_jpeg`` and refuse with the CPU path's own errors; everything the device must
not take (other formats, CMYK, truncated files) goes to the CPU path, one image at a time; a file that
fails on the device never fails its batch-mates; the pictures come out like the CPU path's (sizes,
orientation exactly; pixels within a few levels); and the queue only builds the decoder on CUDA.
"""

from __future__ import annotations

import asyncio
import functools
import io
import threading
from collections.abc import Callable

import numpy as np
import pytest
import torch
from PIL import Image

from bot.config import QueueSettings
from bot.decode_sandbox import DecodeSandbox
from bot.imaging import (
    CorruptImage,
    DecodedImage,
    EmptyImage,
    ImageRejected,
    ImageTooLarge,
    ImageTooManyPixels,
    TooMuchMetadata,
    decode_image,
    sniff_format,
)
from bot.inference import InferenceQueue, gpu_decode
from bot.inference.gpu_decode import GpuJpegDecoder, gpu_decode_wanted, orient, read_jpeg_header
from bot.pipeline import Analyzer
from tests import helpers
from tests import hostile_corpus as corpus

CPU = torch.device("cpu")
TEXT_SIZE = 640
WAIT_S = 10.0  # a safety net against hangs only


class CountingDecode:
    """Stands in for torchvision's batched decoder: counts what reaches it, can fail or hold a batch."""

    def __init__(self, fail: Callable[[bytes], bool] = lambda _data: False) -> None:
        self.calls: list[int] = []  # batch sizes
        self.images = 0
        self.fail = fail
        self.gate: threading.Event | None = None
        self.entered = threading.Event()

    def __call__(self, tensors: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
        self.calls.append(len(tensors))
        self.images += len(tensors)
        self.entered.set()
        if self.gate is not None:
            assert self.gate.wait(WAIT_S)
        if any(self.fail(tensor.numpy().tobytes()) for tensor in tensors):
            raise RuntimeError("nvjpeg says no")
        return gpu_decode._torchvision_decode(tensors, device)


def jpeg(image: Image.Image, **params: object) -> bytes:
    return corpus.encode(image, "JPEG", quality=90, **params)


def mean_abs_diff(a: Image.Image, b: Image.Image) -> float:
    assert a.size == b.size and a.mode == b.mode
    return float(np.abs(np.asarray(a, dtype=np.float32) - np.asarray(b, dtype=np.float32)).mean())


def assert_like_cpu(got: DecodedImage, want: DecodedImage, *, tolerance: float = 1.0) -> None:
    """Same picture as the CPU path: metadata and sizes exactly, pixels within ``tolerance`` levels on
    average (full-size decode + one resize here, DCT-domain draft + resize there)."""
    assert (got.format, got.original_size, got.animated, got.frame_count) == (
        want.format, want.original_size, want.animated, want.frame_count)
    assert got.image.mode == "RGB" and got.image.size == want.image.size
    assert mean_abs_diff(got.image, want.image) <= tolerance
    assert (got.text_image is None) == (want.text_image is None)
    if got.text_image is not None and want.text_image is not None:
        assert got.text_image.mode == "L"
        assert mean_abs_diff(got.text_image, want.text_image) <= tolerance


def refusal(fn: Callable[[bytes], object], data: bytes) -> ImageRejected | None:
    try:
        fn(data)
    except ImageRejected as exc:
        return exc
    return None


@pytest.fixture
def counting() -> CountingDecode:
    return CountingDecode()


@pytest.fixture
def decoder(counting: CountingDecode) -> GpuJpegDecoder:
    """The device path on the CPU, with the in-process CPU decoder as its fallback (the queue passes
    its DecodeSandbox, whose answers are decode_image's)."""
    return GpuJpegDecoder(CPU, fallback=decode_image, decode_batch=counting)


# --------------------------------------------------------------------------- pictures


@pytest.mark.parametrize("orientation", range(1, 9))
def test_orient_matches_pils_transposes(orientation):
    from bot.imaging import _TRANSPOSE_FOR_ORIENTATION

    pixels = np.random.default_rng(orientation).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    transpose = _TRANSPOSE_FOR_ORIENTATION.get(orientation)
    want = np.asarray(Image.fromarray(pixels).transpose(transpose)) if transpose is not None else pixels
    got = orient(torch.from_numpy(pixels).permute(2, 0, 1), orientation).permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(got, want)


def test_real_photos_decode_in_one_batch_like_the_cpu_path(decoder, counting, photos):
    names = sorted(photos)
    progressive = jpeg(Image.open(io.BytesIO(photos["astronaut"])), progressive=True)
    gray = jpeg(Image.open(io.BytesIO(photos["coffee"])).convert("L"))
    files = [photos[name] for name in names] + [progressive, gray]
    got = decoder.decode_many(files, text_size=TEXT_SIZE)
    for data, image in zip(files, got, strict=True):
        assert isinstance(image, DecodedImage)
        assert_like_cpu(image, decode_image(data, text_size=TEXT_SIZE))
    assert counting.calls == [len(files)]  # one device call for the lot
    assert decoder.stats.device == len(files) and not decoder.stats.fallbacks


def test_a_large_photo_is_shrunk_like_the_cpu_path(decoder, photos):
    """Big enough that the CPU path decodes it at 1/2 scale in the DCT domain first."""
    big = jpeg(Image.open(io.BytesIO(photos["rocket"])).resize((1600, 1068), Image.Resampling.BICUBIC))
    want = decode_image(big, text_size=TEXT_SIZE)
    got = decoder.decode(big, text_size=TEXT_SIZE)
    assert_like_cpu(got, want, tolerance=1.5)
    assert decoder.stats.device == 1


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied_as_on_the_cpu_path(photos, orientation):
    photo = Image.open(io.BytesIO(photos["chelsea"])).resize((240, 160))
    data = jpeg(photo, exif=corpus.exif_blob(orientation))
    assert read_jpeg_header(data).orientation == orientation  # type: ignore[union-attr]
    want = decode_image(data, target_size=96, text_size=200)
    got = GpuJpegDecoder(CPU, fallback=decode_image, target_size=96).decode(data, text_size=200)
    assert_like_cpu(got, want)
    if orientation in (5, 6, 7, 8):
        assert got.original_size == (160, 240) and got.image.size == (64, 96)


def test_orientation_from_xmp_and_garbled_exif_read_as_pillow_does(decoder, photos):
    photo = Image.open(io.BytesIO(photos["chelsea"])).resize((120, 80))
    xmp = jpeg(photo, xmp=b'<x:xmpmeta><rdf:Description tiff:Orientation="8"/></x:xmpmeta>')
    garbled = corpus.insert_before(jpeg(photo), b"\xff\xdb", b"\xff\xe1\x00\x0eExif\x00\x00II*\x00\xff\xff")
    for data, orientation in ((xmp, 8), (garbled, 1)):
        assert read_jpeg_header(data).orientation == orientation  # type: ignore[union-attr]
        assert_like_cpu(decoder.decode(data, text_size=TEXT_SIZE), decode_image(data, text_size=TEXT_SIZE))


# --------------------------------------------------------------------------- what the device never sees


def test_other_formats_and_jpegs_the_device_must_not_take_go_to_the_cpu_path(decoder, counting, photos):
    photo = Image.open(io.BytesIO(photos["coffee"])).resize((90, 60))
    files = {
        "not_jpeg": [corpus.encode(photo, "PNG"), corpus.encode(photo, "GIF"), corpus.encode(photo, "WEBP")],
        "colour": [jpeg(photo.convert("CMYK"))],  # 4 components (Adobe CMYK)
        "incomplete": [jpeg(photo)[:-300]],  # truncated: Pillow refuses, libjpeg would pad with grey
    }
    for reason, items in files.items():
        for data in items:
            want = refusal(decode_image, data)
            got = refusal(decoder.decode, data)
            if want is None:
                assert_like_cpu(decoder.decode(data), decode_image(data), tolerance=0.0)  # it *is* the CPU path
            else:
                assert type(got) is type(want) and got.user_message == want.user_message  # type: ignore[union-attr]
        assert decoder.stats.fallbacks.get(reason, 0) >= len(items)
    assert counting.images == 0


def test_hostile_jpegs_are_refused_with_the_cpu_paths_errors_before_any_decoder(counting):
    fallbacks: list[bytes] = []

    def fallback(data: bytes, **kwargs: object) -> DecodedImage:
        fallbacks.append(data)
        return decode_image(data, **kwargs)  # type: ignore[arg-type]

    decoder = GpuJpegDecoder(CPU, fallback=fallback, decode_batch=counting, max_bytes=1_000_000)
    cases = {
        "bomb": (corpus.jpeg_claiming(8_000, 8_000), ImageTooManyPixels),  # refused by max_pixels
        "huge bomb": (corpus.jpeg_claiming(60_000, 60_000), ImageTooManyPixels),  # by Pillow's own limit
        "segment flood": (corpus.jpeg_with_segments(0xE5, b"x", 2_000), TooMuchMetadata),
        "exif tags": (corpus.jpeg_exif_tags(2_000), TooMuchMetadata),
        "scan bomb": (corpus.progressive_with_repeated_last_scan(64, 200), TooMuchMetadata),
        "too large": (corpus.small_jpeg() + b"\x00" * 1_000_000, ImageTooLarge),
        "empty": (b"", EmptyImage),
    }
    for name, (data, error) in cases.items():
        want = refusal(lambda d: decode_image(d, max_bytes=1_000_000), data)
        got = refusal(decoder.decode, data)
        assert type(want) is error, name
        assert type(got) is error and got.user_message == want.user_message, name  # type: ignore[union-attr]
    assert counting.images == 0 and not fallbacks  # neither decoder saw any of them
    assert decoder.stats.refused == len(cases)


def test_the_hostile_corpus_gets_the_cpu_paths_verdict_on_every_jpeg(decoder):
    """Every JPEG of issue 12's corpus (bombs, floods, scan bombs, truncations, mutations): the same
    outcome, decoded or refused with the same code, through the device path as through decode_image."""
    differing = []
    for case in corpus.hostile_cases(full_size=False):
        if sniff_format(case.data) != "JPEG":
            continue
        got, want = refusal(decoder.decode, case.data), refusal(decode_image, case.data)
        if (got and got.code) != (want and want.code):
            differing.append((case.name, got and got.code, want and want.code))
    assert not differing
    assert decoder.stats.device > 50 and decoder.stats.refused > 20 and decoder.stats.fallbacks


# --------------------------------------------------------------------------- failures stay per image


def broken_scan(photo_bytes: bytes) -> bytes:
    """A JPEG whose header is fine (it passes every check) but whose scan names a component the frame
    does not have: libjpeg (and Pillow) fail on it."""
    data = bytearray(photo_bytes)
    data[data.index(b"\xff\xda") + 5] = 9
    return bytes(data)


def test_a_jpeg_that_fails_to_decode_never_fails_its_batch_mates(decoder, counting, photos):
    bad = broken_scan(photos["chelsea"])
    assert read_jpeg_header(bad) is not None  # it does get to the device
    files = [photos["astronaut"], bad, photos["coffee"]]
    got = decoder.decode_many(files, text_size=TEXT_SIZE)
    assert isinstance(got[1], CorruptImage)
    assert got[1].user_message == refusal(decode_image, bad).user_message  # type: ignore[union-attr]
    for index in (0, 2):
        assert_like_cpu(got[index], decode_image(files[index], text_size=TEXT_SIZE))  # type: ignore[arg-type]
    assert counting.calls == [3, 1, 1, 1]  # the batch, then each image alone
    assert decoder.stats.device == 2 and decoder.stats.fallbacks == {"decode_error": 1}


def test_an_image_the_device_refuses_is_decoded_by_the_cpu_path(photos):
    """nvJPEG failing on a file libjpeg takes: that one image comes from the CPU path, decoded."""
    odd = photos["rocket"]
    counting = CountingDecode(fail=lambda data: data == odd)
    decoder = GpuJpegDecoder(CPU, fallback=decode_image, decode_batch=counting)
    got = decoder.decode_many([photos["china"], odd, photos["flower"]])
    assert all(isinstance(image, DecodedImage) for image in got)
    assert_like_cpu(got[1], decode_image(odd), tolerance=0.0)  # came from decode_image itself
    assert decoder.stats.device == 2 and decoder.stats.fallbacks == {"decode_error": 1}


def test_concurrent_callers_are_decoded_together(photos):
    """Callers that arrive while a device batch runs go into the next batch, all together."""
    counting = CountingDecode()
    counting.gate = threading.Event()
    decoder = GpuJpegDecoder(CPU, fallback=decode_image, decode_batch=counting)
    names = ["astronaut", "chelsea", "coffee", "rocket"]
    results: dict[str, DecodedImage] = {}

    def run(name: str) -> None:
        results[name] = decoder.decode(photos[name])

    threads = [threading.Thread(target=run, args=(name,)) for name in names]
    threads[0].start()
    assert counting.entered.wait(WAIT_S)  # the first caller's batch of one is on the device, held
    for thread in threads[1:]:
        thread.start()
    for _ in range(1000):
        with decoder._cond:
            if len(decoder._waiting) == 3:
                break
        threading.Event().wait(0.01)
    counting.gate.set()
    for thread in threads:
        thread.join(WAIT_S)
    assert counting.calls == [1, 3]
    assert decoder.stats.largest_batch == 3 and decoder.stats.device == 4
    for name in names:
        assert_like_cpu(results[name], decode_image(photos[name]))


# --------------------------------------------------------------------------- the queue


# The shared settings with a 5 ms batching wait and QueueSettings' own queue bound.
queue_settings = functools.partial(helpers.queue_settings, max_wait_ms=5.0, max_queued=256)


def cosine(a: list[float], b: list[float]) -> float:
    va, vb = np.asarray(a), np.asarray(b)
    return float(va @ vb / (np.linalg.norm(va) * np.linalg.norm(vb)))


async def test_the_queue_analyses_through_the_device_path_like_the_cpu_path(analyzer, photos):
    """End to end with the tiny models: JPEGs through the device path (on the CPU), a PNG through the
    decoder process, both tiers; the records match the CPU path's closely."""
    png = corpus.encode(Image.open(io.BytesIO(photos["coffee"])), "PNG")
    files = [photos["astronaut"], photos["rocket"], broken_scan(photos["chelsea"]), png]
    with DecodeSandbox(workers=1, timeout_s=60) as sandbox:
        counting = CountingDecode()
        gpu = GpuJpegDecoder(CPU, fallback=sandbox.decode, decode_batch=counting)
        async with InferenceQueue(analyzer, queue_settings(), decoder=sandbox, gpu_decoder=gpu) as queue:
            assert queue.gpu_decoder is gpu
            got = await asyncio.gather(*(queue.analyze(data) for data in files), return_exceptions=True)
            fast, kept = await queue.analyze_fast(photos["flower"])
            part = await queue.caption(kept)
        async with InferenceQueue(analyzer, queue_settings(), decoder=sandbox) as cpu_queue:
            assert cpu_queue.gpu_decoder is None
            want = await asyncio.gather(*(cpu_queue.analyze(data) for data in files), return_exceptions=True)
            want_fast, _ = await cpu_queue.analyze_fast(photos["flower"])
    assert isinstance(got[2], CorruptImage) and isinstance(want[2], CorruptImage)  # refused, alone
    for record, reference in [*zip(got[:2] + got[3:], want[:2] + want[3:], strict=True), (fast, want_fast)]:
        assert not isinstance(record, BaseException) and not isinstance(reference, BaseException)
        assert (record.width, record.height, record.format) == (reference.width, reference.height, reference.format)
        assert cosine(record.image_embedding, reference.image_embedding) > 0.99
    assert isinstance(got[0].caption, str) and isinstance(part.caption, str)  # type: ignore[union-attr]
    assert kept.format == "JPEG" and kept.text_image is None
    assert gpu.stats.device == 3  # astronaut, rocket, flower; the broken one and the PNG fell back
    assert gpu.stats.fallbacks == {"decode_error": 1, "not_jpeg": 1}


async def test_default_settings_on_the_cpu_never_build_the_gpu_decoder(analyzer, photos, monkeypatch):
    built: list[object] = []
    monkeypatch.setattr(GpuJpegDecoder, "__init__", lambda self, *a, **k: built.append(a))
    assert QueueSettings().gpu_decode == "auto" and analyzer.device.type == "cpu"
    async with InferenceQueue(analyzer, queue_settings(), decoder=DecodeSandbox(isolate=False)) as queue:
        record = await queue.analyze(photos["coffee"])
        assert queue.gpu_decoder is None
    assert record.format == "JPEG" and not built


def test_the_setting_turns_the_device_path_on_for_cuda_models_only(analyzer):
    class OnCuda(Analyzer):
        @property
        def device(self) -> torch.device:
            return torch.device("cuda", 0)

    on_cuda = OnCuda(captioner=analyzer.captioner, tagger=analyzer.tagger, embedder=analyzer.embedder,
                     sentiment=analyzer.sentiment, reader=analyzer.reader)
    sandbox = DecodeSandbox(isolate=False)
    queue = InferenceQueue(on_cuda, queue_settings(max_batch_size=12), decoder=sandbox)
    gpu = queue.gpu_decoder  # built without touching CUDA: nothing is decoded here
    assert gpu is not None and gpu.device == torch.device("cuda", 0) and gpu.max_batch == 12
    assert gpu.fallback == sandbox.decode and queue.gpu_decoder is gpu
    assert InferenceQueue(on_cuda, queue_settings(gpu_decode="off"), decoder=sandbox).gpu_decoder is None
    assert InferenceQueue(analyzer, queue_settings(), decoder=sandbox).gpu_decoder is None
    assert gpu_decode_wanted("auto", torch.device("cuda")) and not gpu_decode_wanted("auto", CPU)
    assert not gpu_decode_wanted("off", torch.device("cuda")) and not gpu_decode_wanted("auto", None)
    with pytest.raises(ValueError, match="gpu_decode"):
        QueueSettings(gpu_decode="on")  # type: ignore[arg-type]
