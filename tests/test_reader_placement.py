"""Where the text reader runs (``models.ocr.read_in``): in the model turn, or at prepare time in the
queue's decode threads, with the same words either way and nothing left unread.

The analyzers are the tiny random-weight models plus the real reader (RapidOCR's weights ship in its
wheel). Which thread read a picture is seen through a wrapper around ``TextReader.read``; the queue
names its decode threads ``imagebot-decode-N`` and its model workers ``imagebot-inference-<worker>``.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Iterator, Sequence

import pytest
import torch
from PIL import Image

from bot.config import ConfigError, OcrSettings, load_settings
from bot.imaging import DecodedImage, decode_image
from bot.inference import InferenceQueue
from bot.models.reader import TextReader
from bot.pipeline import Analyzer, PreparedImage, ReaderPool, read_placement
from tests.helpers import queue_settings, screenshot

LINES = ["Error: connection refused (port 5432)", "meeting moved to 5pm"]
EXPECTED = "\n".join(LINES)
DECODE_THREAD = "imagebot-decode-"
INTERACTIVE_WORKER = "imagebot-inference-interactive"


class Reads:
    """Every ``TextReader.read`` call: the thread that made it."""

    def __init__(self) -> None:
        self.threads: list[str] = []
        self._lock = threading.Lock()

    def record(self) -> None:
        with self._lock:
            self.threads.append(threading.current_thread().name)

    def clear(self) -> None:
        with self._lock:
            self.threads.clear()


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> Reads:
    """Wraps the reader class, so the analyzer's own reader and the pool's extra ones are all seen."""
    seen = Reads()
    original = TextReader.read

    def read(self: TextReader, images: Sequence[Image.Image]) -> list[str]:
        seen.record()
        return original(self, images)

    monkeypatch.setattr(TextReader, "read", read)
    return seen


@pytest.fixture(scope="module")
def prepare_analyzer(tiny_settings) -> Iterator[Analyzer]:
    """The tiny models with ``read_in = "prepare"`` forced on the CPU, loaded as the bot loads them."""
    models = tiny_settings.models
    ocr = models.ocr.model_copy(update={"read_in": "prepare"})
    settings = tiny_settings.model_copy(update={"models": models.model_copy(update={"ocr": ocr})})
    analyzer = Analyzer.from_settings(settings)
    yield analyzer
    analyzer.set_yield_point(None)  # the hooks a queue installed call nothing once it is gone


@pytest.fixture(scope="module")
def shot() -> bytes:
    return screenshot(LINES)


def decoded(data: bytes) -> DecodedImage:
    return decode_image(data, text_size=OcrSettings().max_side)


# ----------------------------------------------------------------------------- where it runs


async def test_prepare_reads_in_the_decode_threads_with_the_same_words_as_the_turn(
    prepare_analyzer, analyzer, reads, shot
):
    assert prepare_analyzer.read_placement == "prepare" and analyzer.read_placement == "model_turn"
    async with InferenceQueue(prepare_analyzer, queue_settings()) as queue:
        ahead = await queue.analyze(shot, filename="shot.png")
        fast, kept = await queue.analyze_fast(shot, filename="shot.png")
    assert ahead.text == EXPECTED and fast.text == EXPECTED
    assert len(reads.threads) == 2 and all(name.startswith(DECODE_THREAD) for name in reads.threads), reads.threads
    assert kept.text_image is None  # what is kept for the caption tier, as before

    reads.clear()
    async with InferenceQueue(analyzer, queue_settings()) as queue:
        in_turn = await queue.analyze(shot, filename="shot.png")
    assert reads.threads == [INTERACTIVE_WORKER]
    assert in_turn == ahead  # the same record, words included: only where the reading happened differs


async def test_model_turn_reads_on_the_worker_threads_as_before(analyzer, reads, shot):
    assert analyzer.prepare(decoded(shot)).text is None  # prepare leaves the words to the turn
    reads.clear()
    async with InferenceQueue(analyzer, queue_settings()) as queue:
        record = await queue.analyze(shot, filename="shot.png")
        fast, _ = await queue.analyze_fast(shot, filename="shot.png")
    assert record.text == EXPECTED and fast.text == EXPECTED
    assert reads.threads == [INTERACTIVE_WORKER, "imagebot-inference-first-look"]


async def test_decode_threads_read_side_by_side_on_readers_of_their_own(prepare_analyzer, reads, monkeypatch):
    """Four screenshots at once through two decode threads: the first two reads are held until both are
    in flight, so two readers must be in use at once; each read right, exactly two readers built."""
    texts = [[f"invoice number {n}0{n}", "total due friday"] for n in range(1, 5)]
    both_reading = threading.Barrier(2, timeout=60.0)  # a safety net against hangs only
    calls = itertools.count()
    recorded = TextReader.read  # the ``reads`` fixture's wrapper

    def read(self: TextReader, images: Sequence[Image.Image]) -> list[str]:
        if next(calls) < 2:  # the first two reads meet here: each holds a reader of its own meanwhile
            both_reading.wait()
        return recorded(self, images)

    monkeypatch.setattr(TextReader, "read", read)
    async with InferenceQueue(prepare_analyzer, queue_settings(max_batch_size=4, max_wait_ms=200)) as queue:
        records = await asyncio.gather(*(queue.analyze(screenshot(lines), filename="x.png") for lines in texts))
    assert [record.text for record in records] == ["\n".join(lines) for lines in texts]
    assert all(name.startswith(DECODE_THREAD) for name in reads.threads)
    assert len(set(reads.threads)) == 2, reads.threads
    pool = prepare_analyzer._reader_pool
    assert pool is not None and pool.size == 2 and pool.built == 2


# ----------------------------------------------------------------------------- what is read where


def test_the_caption_tier_reads_nothing(prepare_analyzer, reads, shot):
    image = decoded(shot)
    prepared = prepare_analyzer.prepare(image, "caption")
    assert prepared.text is None and prepared.decoded.text_image is not None
    parts = prepare_analyzer.caption([prepared, image])
    assert len(parts) == 2 and reads.threads == []


async def test_the_caption_tier_through_the_queue_reads_nothing(prepare_analyzer, reads, shot):
    async with InferenceQueue(prepare_analyzer, queue_settings()) as queue:
        fast, kept = await queue.analyze_fast(shot, filename="shot.png")
        reads.clear()
        part = await queue.caption(kept)
    assert reads.threads == [] and fast.with_caption(part).text == EXPECTED


def test_a_plain_decoded_image_is_still_read_in_the_turn(prepare_analyzer, reads, shot):
    image = decoded(shot)
    ahead = prepare_analyzer.prepare(image, "fast")
    assert ahead.text == EXPECTED and ahead.read_s > 0 and ahead.decoded.text_image is None  # gray copy dropped
    reads.clear()

    records = prepare_analyzer.analyze([image, ahead])
    assert [record.text for record in records] == [EXPECTED, EXPECTED]
    assert reads.threads == [threading.current_thread().name]  # the plain one, once, here
    timings = prepare_analyzer.last_timings
    assert timings.read > 0 and timings.read_ahead == ahead.read_s
    reads.clear()
    fast = prepare_analyzer.analyze_fast([image])
    assert fast[0].text == EXPECTED and len(reads.threads) == 1


def test_an_item_prepared_for_the_caption_tier_is_read_when_analysed_fully(prepare_analyzer, reads, shot):
    prepared = prepare_analyzer.prepare(decoded(shot), "caption")
    assert prepare_analyzer.analyze([prepared])[0].text == EXPECTED and len(reads.threads) == 1


# ----------------------------------------------------------------------------- the setting


def test_auto_is_prepare_on_cuda_and_the_turn_elsewhere():
    assert read_placement("auto", torch.device("cuda")) == "prepare"
    assert read_placement("auto", torch.device("cuda:1")) == "prepare"
    assert read_placement("auto", torch.device("cpu")) == "model_turn"
    assert read_placement("auto", torch.device("mps")) == "model_turn"
    for device in ("cpu", "cuda"):
        assert read_placement("model_turn", torch.device(device)) == "model_turn"
        assert read_placement("prepare", torch.device(device)) == "prepare"
    with pytest.raises(ValueError, match="read_in"):
        read_placement("gpu", torch.device("cpu"))


def test_auto_follows_the_analyzer_device(analyzer):
    """A captioner that says it is on CUDA (a stand-in: no CUDA tensor is made) makes "auto" read ahead."""

    class OnCuda:
        device = torch.device("cuda")
        model_id = "stand-in"

    roles = {"tagger": analyzer.tagger, "embedder": analyzer.embedder, "sentiment": analyzer.sentiment}
    on_cuda = Analyzer(captioner=OnCuda(), reader=analyzer.reader, read_in="auto", **roles)  # type: ignore[arg-type]
    assert on_cuda.device.type == "cuda" and on_cuda.read_placement == "prepare"
    assert Analyzer(captioner=analyzer.captioner, reader=None, read_in="auto", **roles).read_placement == "model_turn"
    assert analyzer.read_placement == "model_turn"  # the tiny config: device "cpu", read_in default "auto"


def test_read_in_is_auto_by_default_and_strict(tmp_path):
    assert OcrSettings().read_in == "auto"
    path = tmp_path / "config.toml"
    path.write_text('[models.ocr]\nread_in = "prepare"\n', encoding="utf-8")
    assert load_settings(path, environ={}).models.ocr.read_in == "prepare"
    path.write_text('[models.ocr]\nread_in = "decode"\n', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"models\.ocr\.read_in:"):
        load_settings(path, environ={})


# ----------------------------------------------------------------------------- the pool


class SlowReader:
    """Stands in for a TextReader: fails the test if two threads ever use it at once."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.busy = threading.Lock()
        self.overlapped = False

    def read(self, images: Sequence[Image.Image]) -> list[str]:
        if not self.busy.acquire(blocking=False):
            self.overlapped = True
            return ["overlap"]
        try:
            time.sleep(0.02)
            return [f"{self.name}:{images[0].width}" for _ in images]
        finally:
            self.busy.release()


def test_the_pool_gives_each_concurrent_read_its_own_reader_up_to_its_size():
    built: list[SlowReader] = []

    def factory() -> SlowReader:
        built.append(SlowReader(f"extra{len(built)}"))
        return built[-1]

    first = SlowReader("first")
    pool = ReaderPool(first, factory=factory, size=3)  # type: ignore[arg-type]
    results: list[str] = []
    lock = threading.Lock()

    def work(width: int) -> None:
        for _ in range(5):
            text = pool.read(Image.new("L", (width, 4)))
            with lock:
                results.append(text)

    threads = [threading.Thread(target=work, args=(10 + n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert len(results) == 30 and "overlap" not in results
    assert pool.built == 1 + len(built) <= 3 and not any(reader.overlapped for reader in (first, *built))


def test_a_pool_without_a_factory_is_the_analyzers_reader_alone():
    first = SlowReader("first")
    pool = ReaderPool(first, size=8)  # type: ignore[arg-type]
    threads = [threading.Thread(target=pool.read, args=(Image.new("L", (5, 5)),)) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert pool.size == 1 and pool.built == 1 and not first.overlapped


def test_prepared_image_text_defaults_to_not_read(shot):
    item = PreparedImage(decoded=decoded(shot), caption_pixels=None, clip_pixels=None)
    assert item.text is None and item.read_s == 0.0
