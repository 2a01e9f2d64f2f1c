"""The inference queue: batching, backpressure, timeouts, cancellation, OOM splits, crashes, metrics.

Most tests drive a small fake analyzer (all of AnalyzerLike, as bot.pipeline.Analyzer) whose batches
can be held on a gate, so every scenario is set up by events rather than by timing; the batching test
and the text tests use the tiny random-weight models through the real Analyzer. No assertion
depends on how long anything took.
"""

from __future__ import annotations

import asyncio
import functools
import io
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from PIL import Image

from bot.analysis import Sentiment
from bot.config import ImageSettings
from bot.imaging import DecodedImage, ImageRejected, decode_image
from bot.inference import (
    AnalyzerLike,
    InferenceBackend,
    InferenceError,
    InferenceQueue,
    JobTimeout,
    OutOfMemory,
    Priority,
    QueueBusy,
    QueueClosed,
    WorkerCrashed,
)
from bot.inference.batching import predict_splitting_on_oom
from bot.pipeline import PreparedImage, StageTimings
from tests.helpers import queue_settings

GATE_TIMEOUT_S = 10.0  # a safety net against hangs only; never reached when the tests pass


def png(width: int, height: int = 7) -> bytes:
    """A tiny PNG whose width identifies it: the fake analyzer answers with the width it saw."""
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (width % 256, 90, 160)).save(buffer, "PNG")
    return buffer.getvalue()


def noisy_jpeg(width: int, height: int, seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


# The shared settings with a 5 ms batching wait and a 30 s job timeout.
settings = functools.partial(queue_settings, max_wait_ms=5.0, job_timeout_s=30.0)


@dataclass(frozen=True)
class Marker:
    width: int
    height: int


def _no_yield() -> None:
    return None


class AnalyzerFake:
    """All of AnalyzerLike without models, the base of the fakes below (each overrides what it watches).

    Like the Analyzer, every model method passes the queue's yield point before it "touches a model"
    (that is where a background batch takes the model turn); ``prepare`` hands the decoded image on;
    the two tiers are answered with the full ``analyze``; sentiment is neutral.
    """

    text_size = 0

    def __init__(self) -> None:
        self.yield_point: Callable[[], None] = _no_yield

    @property
    def last_timings(self) -> StageTimings:
        return StageTimings()

    def set_yield_point(self, hook: Callable[[], None] | None) -> None:
        self.yield_point = hook or _no_yield

    def prepare(self, decoded: DecodedImage, tier: str = "full") -> DecodedImage:
        return decoded

    def analyze(self, images: Sequence[DecodedImage]) -> list[Marker]:
        self.yield_point()
        return [Marker(*image.original_size) for image in images]

    def analyze_fast(self, images: Sequence[DecodedImage], *, read: Sequence[bool] | None = None) -> Sequence[object]:
        return self.analyze(images)

    def caption(self, images: Sequence[DecodedImage]) -> Sequence[object]:
        return self.analyze(images)

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        self.yield_point()
        return np.array([[len(text), 1.0] for text in texts], dtype=np.float32)

    def clip_texts(self, texts: Sequence[str]) -> np.ndarray:
        self.yield_point()
        return np.array([[len(text), 2.0] for text in texts], dtype=np.float32)

    def score_sentiment(self, texts: Sequence[str]) -> list[Sentiment]:
        self.yield_point()
        return [Sentiment.from_scores({"neutral": 1.0}) for _ in texts]


class FakeAnalyzer(AnalyzerFake):
    """Records each batch (the widths it saw) and the thread it ran on; can hold batches on a gate
    and fail chosen batches."""

    def __init__(
        self,
        *,
        gate: threading.Event | None = None,
        fail: Callable[[list[int]], BaseException | None] | None = None,
    ) -> None:
        super().__init__()
        self.gate = gate
        self.fail = fail
        self.batches: list[list[int]] = []
        self.text_batches: list[list[str]] = []
        self.threads: set[int] = set()
        self.entered = threading.Event()

    def analyze(self, images: Sequence[DecodedImage]) -> list[Marker]:
        self.yield_point()
        widths = [image.original_size[0] for image in images]
        self.batches.append(widths)
        self.threads.add(threading.get_ident())
        self.entered.set()
        if self.gate is not None:
            assert self.gate.wait(GATE_TIMEOUT_S)
        if self.fail is not None and (error := self.fail(widths)) is not None:
            raise error
        return [Marker(*image.original_size) for image in images]

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        self.text_batches.append(list(texts))
        return super().embed_texts(texts)

    def clip_texts(self, texts: Sequence[str]) -> np.ndarray:
        self.text_batches.append(list(texts))
        return super().clip_texts(texts)

    @property
    def ran(self) -> list[int]:
        return [width for batch in self.batches for width in batch]


async def wait_until(condition: Callable[[], bool], what: str) -> None:
    """Yield to the loop until ``condition`` holds (event-driven set-up, bounded as a hang guard)."""
    for _ in range(2000):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"timed out waiting for {what}")


async def hold_worker(queue: InferenceQueue, fake: FakeAnalyzer, width: int = 1) -> asyncio.Task:
    """Start a job and wait until the worker is inside the model with it (blocked on the gate)."""
    task = asyncio.create_task(queue.analyze(png(width)))
    assert await asyncio.to_thread(fake.entered.wait, GATE_TIMEOUT_S)
    return task


def oom(message: str = "CUDA out of memory. Tried to allocate 2.00 GiB") -> BaseException:
    return torch.cuda.OutOfMemoryError(message)


# ----------------------------------------------------------------------------- batching


async def test_concurrent_callers_form_batches_and_each_gets_its_own_result(analyzer):
    """20 concurrent analyze calls, max_batch_size 8: batches of 2..8, every caller its own image."""

    class Spy:
        """The real analyzer, counting the size of each full-analysis batch."""

        def __init__(self, inner):
            self.inner = inner
            self.batch_sizes: list[int] = []

        @property
        def text_size(self):
            return self.inner.text_size

        @property
        def last_timings(self):
            return self.inner.last_timings

        def set_yield_point(self, hook):
            self.inner.set_yield_point(hook)

        def prepare(self, decoded, tier="full"):
            return self.inner.prepare(decoded, tier)

        def analyze(self, images):
            self.batch_sizes.append(len(images))
            return self.inner.analyze(images)

        def analyze_fast(self, images, *, read=None):
            return self.inner.analyze_fast(images, read=read)

        def caption(self, images):
            return self.inner.caption(images)

        def embed_texts(self, texts):
            return self.inner.embed_texts(texts)

        def clip_texts(self, texts):
            return self.inner.clip_texts(texts)

        def score_sentiment(self, texts):
            return self.inner.score_sentiment(texts)

    spy = Spy(analyzer)
    images = [noisy_jpeg(40 + i, 30 + (i % 3), seed=i) for i in range(20)]
    # A batch closes as soon as it is full; only the last, partial one waits out max_wait.
    async with InferenceQueue(spy, settings(max_batch_size=8, max_wait_ms=300)) as queue:
        results = await asyncio.gather(*(queue.analyze(data, filename=f"{i}.jpg") for i, data in enumerate(images)))

    assert sum(spy.batch_sizes) == 20
    assert all(1 <= size <= 8 for size in spy.batch_sizes), spy.batch_sizes
    assert max(spy.batch_sizes) > 1, spy.batch_sizes
    # Each caller got its own image's record: its size, and what the models say about that image.
    direct = analyzer.analyze([decode_image(data) for data in images])
    for i, (result, expected) in enumerate(zip(results, direct, strict=True)):
        assert (result.width, result.height) == (40 + i, 30 + (i % 3))
        assert result.caption == expected.caption
        assert {name: [s.label for s in scored] for name, scored in result.labels.items()} == {
            name: [s.label for s in scored] for name, scored in expected.labels.items()
        }
    snapshot = queue.metrics.snapshot()
    assert snapshot["jobs"]["ok"] == 20
    assert snapshot["batch_size"]["image"]["count"] == len(spy.batch_sizes)
    assert snapshot["images_total"] == 20
    assert {"decode", "queue_wait", "predict_image", "caption", "clip", "text", "latency"} <= set(
        snapshot["stage_seconds"]
    )


async def test_model_work_runs_on_the_worker_thread_never_the_loop():
    fake = FakeAnalyzer()
    async with InferenceQueue(fake, settings()) as queue:
        await asyncio.gather(*(queue.analyze(png(10 + i)) for i in range(3)))
    assert fake.threads and threading.get_ident() not in fake.threads


async def test_prepared_and_plain_decoded_images_give_the_same_analysis(analyzer, photos):
    decoded = [decode_image(photos[name]) for name in ("astronaut", "coffee")]
    prepared = [analyzer.prepare(item) for item in decoded]
    assert all(isinstance(item, PreparedImage) and item.caption_pixels is not None for item in prepared)
    plain = analyzer.analyze(decoded)
    mixed = analyzer.analyze([prepared[0], decoded[1]])
    assert [a.caption for a in plain] == [a.caption for a in mixed]
    assert [a.labels for a in plain] == [a.labels for a in mixed]
    assert analyzer.last_timings.prepare >= 0


async def test_text_jobs_are_batched_and_split_back_per_caller(analyzer):
    queries = [["a dog on a beach"], ["red car", "a cup of coffee", "penguins"], ["rocket launch"]]
    async with InferenceQueue(analyzer, settings(max_wait_ms=2000, max_batch_size=3)) as queue:
        embedded = await asyncio.gather(*(queue.embed_texts(q) for q in queries))
        clipped = await asyncio.gather(*(queue.clip_texts(q) for q in queries))
        assert (await queue.embed_texts([])).shape[0] == 0
        sentiments = await asyncio.gather(*(queue.score_sentiment(q) for q in queries))
        assert await queue.score_sentiment([]) == []
    for texts, vectors, clip_vectors in zip(queries, embedded, clipped, strict=True):
        np.testing.assert_allclose(vectors, analyzer.embed_texts(texts), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(clip_vectors, analyzer.clip_texts(texts), rtol=1e-4, atol=1e-5)
    for texts, scored in zip(queries, sentiments, strict=True):
        assert [s.label for s in scored] == [s.label for s in analyzer.score_sentiment(texts)]
    assert queue.metrics.snapshot()["batch_size"]["embed_text"]["max"] == 3


def test_cpu_int8_captioner_still_captions(tiny_models_dir, photos):
    """The opt-in CPU speed-up (dynamic int8 Linear layers) keeps the captioner working."""
    from bot.models.captioner import BlipCaptioner
    from bot.models.tiny import BLIP_DIR

    captioner = BlipCaptioner(tiny_models_dir / BLIP_DIR, model_id="tiny", device=torch.device("cpu"),
                              dtype=torch.float32, max_new_tokens=6, cpu_int8=True)
    assert captioner.int8
    assert "quantized" in type(captioner.model.text_decoder.cls.predictions.decoder).__module__
    captions = captioner.caption([decode_image(photos[name]).image for name in ("chelsea", "rocket")])
    assert len(captions) == 2 and all(isinstance(c, str) and c.strip() for c in captions)


# ----------------------------------------------------------------------------- backpressure


async def test_queue_busy_is_raised_at_once_when_full():
    gate = threading.Event()
    fake = FakeAnalyzer(gate=gate)
    async with InferenceQueue(fake, settings(max_batch_size=1, max_wait_ms=0, max_queued=3)) as queue:
        running = await hold_worker(queue, fake)
        waiting = [asyncio.create_task(queue.analyze(png(10 + i))) for i in range(3)]
        await wait_until(lambda: queue.metrics.snapshot()["waiting"] == 3, "3 waiting jobs")

        with pytest.raises(QueueBusy) as busy:
            await queue.analyze(png(99))
        assert busy.value.user_message == "I'm busy right now, try again in a moment."
        assert isinstance(busy.value, InferenceError)

        gate.set()
        results = await asyncio.gather(running, *waiting)
    assert [r.width for r in results] == [1, 10, 11, 12]
    assert 99 not in fake.ran
    snapshot = queue.metrics.snapshot()
    assert snapshot["busy"] == 1 and snapshot["jobs"]["ok"] == 4 and snapshot["waiting"] == 0


# ----------------------------------------------------------------------------- timeout / cancel


async def test_timeout_frees_the_slot_and_the_job_never_runs():
    gate = threading.Event()
    fake = FakeAnalyzer(gate=gate)
    async with InferenceQueue(fake, settings(max_batch_size=1, max_wait_ms=0)) as queue:
        running = await hold_worker(queue, fake)
        with pytest.raises(JobTimeout) as timed_out:
            await queue.analyze(png(50), timeout=0.05)
        assert timed_out.value.user_message
        assert queue.metrics.snapshot()["waiting"] == 0
        gate.set()
        await running
        assert (await queue.analyze(png(51))).width == 51
    assert fake.ran == [1, 51]
    assert queue.metrics.snapshot()["timeouts"] == 1


async def test_cancelled_caller_frees_its_slot_and_the_job_is_dropped():
    gate = threading.Event()
    fake = FakeAnalyzer(gate=gate)
    async with InferenceQueue(fake, settings(max_batch_size=1, max_wait_ms=0, max_queued=1)) as queue:
        running = await hold_worker(queue, fake)
        doomed = asyncio.create_task(queue.analyze(png(60)))
        await wait_until(lambda: queue.metrics.snapshot()["queued"] == 1, "the job to be queued")
        with pytest.raises(QueueBusy):  # the one slot is taken...
            await queue.analyze(png(61))

        doomed.cancel()  # ...until the interaction goes away
        with pytest.raises(asyncio.CancelledError):
            await doomed
        assert queue.metrics.snapshot()["waiting"] == 0
        follow_up = asyncio.create_task(queue.analyze(png(62)))  # the freed slot is usable at once
        await wait_until(lambda: queue.metrics.snapshot()["queued"] == 1, "the follow-up to be queued")

        gate.set()
        assert (await running).width == 1
        assert (await follow_up).width == 62
    assert fake.ran == [1, 62]
    jobs = queue.metrics.snapshot()["jobs"]
    assert jobs["cancelled"] == 1 and jobs["busy"] == 1 and jobs["ok"] == 2


# ----------------------------------------------------------------------------- OOM / crash


async def test_out_of_memory_splits_the_batch_and_loses_no_job():
    fake = FakeAnalyzer(fail=lambda widths: oom() if len(widths) > 2 else None)
    widths = list(range(20, 28))
    async with InferenceQueue(fake, settings(max_batch_size=8, max_wait_ms=5000)) as queue:
        results = await asyncio.gather(*(queue.analyze(png(w)) for w in widths))
    assert [r.width for r in results] == widths
    assert sorted(len(batch) for batch in fake.batches) == [2, 2, 2, 2, 4, 4, 8]
    assert sorted(w for batch in fake.batches if len(batch) == 2 for w in batch) == widths
    snapshot = queue.metrics.snapshot()
    assert snapshot["oom_splits"] == 3 and snapshot["jobs"]["ok"] == 8 and snapshot["errors"] == 0


async def test_a_single_image_that_still_runs_out_of_memory_fails_clearly():
    poison = 33
    fake = FakeAnalyzer(fail=lambda widths: oom() if poison in widths else None)
    async with InferenceQueue(fake, settings(max_batch_size=4, max_wait_ms=5000)) as queue:
        outcomes = await asyncio.gather(*(queue.analyze(png(w)) for w in (31, 32, 33, 34)), return_exceptions=True)
    assert [o.width for o in outcomes if isinstance(o, Marker)] == [31, 32, 34]
    error = outcomes[2]
    assert isinstance(error, OutOfMemory)
    assert "memory" in error.user_message and "single job" in str(error)
    assert queue.metrics.snapshot()["jobs"]["out_of_memory"] == 1


def test_oom_split_helper_keeps_order_and_reraises_other_errors():
    calls: list[list[int]] = []

    def predict(items: list[int]) -> list[int]:
        calls.append(items)
        if len(items) > 1:
            raise RuntimeError("CUDA error: out of memory")
        return [item * 10 for item in items]

    assert predict_splitting_on_oom(predict, [1, 2, 3]) == [10, 20, 30]
    assert calls[0] == [1, 2, 3]

    def broken(items: list[int]) -> list[int]:
        raise ValueError("a bug, not memory")

    with pytest.raises(ValueError):
        predict_splitting_on_oom(broken, [1, 2])


async def test_worker_crash_fails_its_batch_and_a_new_worker_serves_the_rest():
    gate = threading.Event()
    crashed = threading.Event()

    def crash_once(widths: list[int]) -> BaseException | None:
        if crashed.is_set():
            return None
        crashed.set()
        return RuntimeError("segfault-ish kernel failure")

    fake = FakeAnalyzer(gate=gate, fail=crash_once)
    async with InferenceQueue(fake, settings(max_batch_size=2, max_wait_ms=5000)) as queue:
        in_batch = [asyncio.create_task(queue.analyze(png(w))) for w in (41, 42)]
        assert await asyncio.to_thread(fake.entered.wait, GATE_TIMEOUT_S)
        behind = [asyncio.create_task(queue.analyze(png(w))) for w in (43, 44)]
        await wait_until(lambda: queue.metrics.snapshot()["queued"] == 2, "jobs queued behind the batch")
        gate.set()

        for task in in_batch:
            with pytest.raises(WorkerCrashed) as crash:
                await task
            assert "crashed" in str(crash.value) and "segfault-ish" in str(crash.value)
            assert crash.value.user_message
        assert [(await task).width for task in behind] == [43, 44]  # served by the restarted worker
    snapshot = queue.metrics.snapshot()
    assert snapshot["worker_restarts"] == 1
    assert snapshot["jobs"]["worker_crashed"] == 2 and snapshot["jobs"]["ok"] == 2


async def test_decode_error_fails_only_its_own_caller():
    fake = FakeAnalyzer()
    payloads = [png(71), b"%PDF-1.7\n%binary", png(73), b""]
    async with InferenceQueue(fake, settings(max_wait_ms=200)) as queue:
        outcomes = await asyncio.gather(*(queue.analyze(p, filename="x.pdf") for p in payloads), return_exceptions=True)
    assert isinstance(outcomes[0], Marker) and outcomes[0].width == 71
    assert isinstance(outcomes[2], Marker) and outcomes[2].width == 73
    assert isinstance(outcomes[1], ImageRejected) and "PDF" in outcomes[1].user_message
    assert isinstance(outcomes[3], ImageRejected)
    assert sorted(fake.ran) == [71, 73]
    assert queue.metrics.snapshot()["jobs"]["rejected"] == 2


async def test_images_are_decoded_with_the_image_settings():
    fake = FakeAnalyzer()
    tiny_limit = ImageSettings(max_bytes=100)
    async with InferenceQueue(fake, settings(), tiny_limit) as queue:
        with pytest.raises(ImageRejected) as too_big:
            await queue.analyze(noisy_jpeg(64, 64, seed=1))
    assert too_big.value.code == "too_large"


# ----------------------------------------------------------------------------- lifecycle


async def test_close_without_drain_fails_waiting_jobs_but_finishes_the_running_batch():
    gate = threading.Event()
    fake = FakeAnalyzer(gate=gate)
    queue = InferenceQueue(fake, settings(max_batch_size=1, max_wait_ms=0))
    await queue.start()
    running = await hold_worker(queue, fake)
    waiting = asyncio.create_task(queue.analyze(png(80)))
    await wait_until(lambda: queue.metrics.snapshot()["queued"] == 1, "a queued job")

    closing = asyncio.create_task(queue.close(drain=False))
    with pytest.raises(QueueClosed) as closed:
        await waiting
    assert closed.value.user_message
    gate.set()
    assert (await running).width == 1
    await closing
    with pytest.raises(QueueClosed):
        await queue.analyze(png(81))
    assert fake.ran == [1]


async def test_close_drains_waiting_jobs_by_default():
    gate = threading.Event()
    fake = FakeAnalyzer(gate=gate)
    queue = InferenceQueue(fake, settings(max_batch_size=1, max_wait_ms=0))
    await queue.start()
    running = await hold_worker(queue, fake)
    waiting = [asyncio.create_task(queue.analyze(png(w))) for w in (90, 91)]
    await wait_until(lambda: queue.metrics.snapshot()["queued"] == 2, "queued jobs")
    closing = asyncio.create_task(queue.close())
    gate.set()
    await closing
    assert [(await task).width for task in (running, *waiting)] == [1, 90, 91]
    assert not queue.running


async def test_close_without_drain_fails_a_job_still_decoding():
    """A job caught in the decode stage by a non-draining close gets QueueClosed, never a model run."""
    decoding = threading.Event()
    release = threading.Event()

    class SlowPrepare(FakeAnalyzer):
        def prepare(self, decoded: DecodedImage, tier: str = "full") -> DecodedImage:
            decoding.set()
            assert release.wait(GATE_TIMEOUT_S)
            return decoded

    fake = SlowPrepare()
    queue = InferenceQueue(fake, settings())
    await queue.start()
    job = asyncio.create_task(queue.analyze(png(7)))
    assert await asyncio.to_thread(decoding.wait, GATE_TIMEOUT_S)
    closing = asyncio.create_task(queue.close(drain=False))
    await wait_until(lambda: not queue.running, "the queue to stop accepting")
    release.set()
    with pytest.raises(QueueClosed):
        await job
    await closing
    assert fake.batches == []


async def test_not_started_queue_refuses_work():
    queue = InferenceQueue(FakeAnalyzer(), settings())
    with pytest.raises(QueueClosed):
        await queue.analyze(png(5))
    await queue.close()
    await queue.close()  # idempotent


async def test_a_factory_loads_the_models_on_the_worker_thread():
    loaded_on: list[int] = []

    def factory() -> FakeAnalyzer:
        loaded_on.append(threading.get_ident())
        return FakeAnalyzer()

    async with InferenceQueue(factory, settings()) as queue:
        assert (await queue.analyze(png(12))).width == 12
        assert isinstance(queue.analyzer, FakeAnalyzer)
    assert loaded_on and loaded_on[0] != threading.get_ident()


async def test_a_failing_factory_fails_start_with_its_error():
    def factory() -> FakeAnalyzer:
        raise FileNotFoundError("no weights here")

    queue = InferenceQueue(factory, settings())
    with pytest.raises(FileNotFoundError):
        await queue.start()
    with pytest.raises(QueueClosed):
        await queue.analyze(png(5))
    await queue.close()


# ----------------------------------------------------------------------------- the two seams


def test_the_analyzer_and_every_fake_implement_all_of_analyzer_like(analyzer):
    """The queue calls every AnalyzerLike member without probing for it, so each analyzer has them all."""
    for candidate in (analyzer, AnalyzerFake(), FakeAnalyzer(), TieredFake(preemptible=True)):
        assert isinstance(candidate, AnalyzerLike), type(candidate).__name__
    partial_fake = type("Partial", (), {"analyze": AnalyzerFake.analyze})()
    assert not isinstance(partial_fake, AnalyzerLike)


async def test_the_queue_is_a_complete_inference_backend():
    queue = InferenceQueue(FakeAnalyzer(), settings())
    assert isinstance(queue, InferenceBackend)
    await queue.close()


# ----------------------------------------------------------------------------- metrics

_SAMPLE = re.compile(
    r'^[a-zA-Z_:][a-zA-Z0-9_:]*(\{([a-zA-Z_][a-zA-Z0-9_]*="[^"\n]*",?)*\})? (-?[0-9.e+-]+|[+-]Inf|NaN)$'
)


async def test_metrics_snapshot_and_prometheus_text_are_well_formed():
    fake = FakeAnalyzer()
    async with InferenceQueue(fake, settings(max_wait_ms=50)) as queue:
        await asyncio.gather(*(queue.analyze(png(100 + i)) for i in range(5)))
        await queue.embed_texts(["hello", "world"])
        with pytest.raises(ImageRejected):
            await queue.analyze(b"GIF89a not really")
        text = queue.metrics.prometheus_text()
        snapshot = queue.metrics.snapshot()

    assert snapshot["images_total"] == 5 and snapshot["images_per_s"] > 0
    assert snapshot["jobs"]["ok"] == 6 and snapshot["jobs"]["rejected"] == 1
    assert {"waiting", "queued", "decoding", "running", "max_queued"} <= set(snapshot)
    assert text.endswith("\n")
    families = assert_prometheus_well_formed(text)
    assert families["imagebot_inference_jobs_total"] == "counter"
    assert families["imagebot_inference_batch_size"] == "histogram"
    assert families["imagebot_inference_waiting"] == "gauge"
    assert 'imagebot_inference_jobs_total{kind="image",outcome="ok"} 5' in text
    buckets = [
        int(line.rsplit(" ", 1)[1]) for line in text.splitlines()
        if line.startswith('imagebot_inference_batch_size_bucket{kind="image"')
    ]
    assert buckets == sorted(buckets) and buckets[-1] == snapshot["batch_size"]["image"]["count"]
    assert 'le="+Inf"' in text


# ----------------------------------------------------------------------------- priorities and tiers


@dataclass(frozen=True)
class Tiered:
    tier: str
    width: int


class TieredFake(FakeAnalyzer):
    """A FakeAnalyzer with the two tiers, a tier-aware ``prepare`` and (optionally) yield points.

    Batches whose widths include one in ``hold`` block on ``gate``. Every batch passes the queue's
    yield point first (as the Analyzer does before its first model); with ``preemptible`` a held
    batch also waits the way a real model does, passing it between "layers" (every few ms), so more
    urgent work can run in the middle of it. ``log`` records (tier, widths) per batch, in the
    order the batches *finished*.
    """

    def __init__(self, *, gate: threading.Event | None = None, hold: set[int] | None = None,
                 preemptible: bool = False, **kwargs) -> None:
        super().__init__(**kwargs)
        self.hold_gate = gate
        self.hold = hold or set()
        self.preemptible = preemptible
        self.log: list[tuple[str, list[int]]] = []
        self.prepared: list[tuple[str, int]] = []
        self.threads_by_tier: dict[str, set[str]] = {}

    def _run(self, tier: str, widths: list[int]) -> None:
        self.threads_by_tier.setdefault(tier, set()).add(threading.current_thread().name)
        self.yield_point()  # like the Analyzer: before touching a model (where a lazy batch takes its turn)
        if self.hold_gate is not None and self.hold & set(widths):
            self.entered.set()
            while not self.hold_gate.wait(0.002):
                if self.preemptible:
                    self.yield_point()
        self.log.append((tier, widths))

    def prepare(self, decoded: DecodedImage, tier: str = "full") -> DecodedImage:
        self.prepared.append((tier, decoded.original_size[0]))
        return decoded

    def analyze(self, images: Sequence[DecodedImage]) -> list[Marker]:
        widths = [image.original_size[0] for image in images]
        self._run("full", widths)
        return [Marker(*image.original_size) for image in images]

    def analyze_fast(self, images: Sequence[DecodedImage], *, read: Sequence[bool] | None = None) -> list[Tiered]:
        widths = [image.original_size[0] for image in images]
        self._run("fast", widths)
        return [Tiered("fast", width) for width in widths]

    def caption(self, images: Sequence[DecodedImage]) -> list[Tiered]:
        widths = [image.original_size[0] for image in images]
        self._run("caption", widths)
        return [Tiered("caption", width) for width in widths]

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        self._run("embed", [len(text) for text in texts])
        return super().embed_texts(texts)

    def clip_texts(self, texts: Sequence[str]) -> np.ndarray:
        self._run("clip", [len(text) for text in texts])
        return super().clip_texts(texts)


def decoded_png(width: int) -> DecodedImage:
    return decode_image(png(width))


async def bounded(awaitable, what: str):
    """Await with a hang guard (never reached when the test passes): a failure, not a stuck run."""
    try:
        return await asyncio.wait_for(awaitable, GATE_TIMEOUT_S)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


async def test_interactive_jobs_go_ahead_of_waiting_background_jobs():
    """No yield points between layers: interactive work waits for the running background batch, then
    overtakes every background job that was queued before it."""
    gate = threading.Event()
    fake = TieredFake(gate=gate, hold={1})
    async with InferenceQueue(fake, settings(max_batch_size=4, max_wait_ms=0)) as queue:
        running = asyncio.create_task(queue.analyze(png(1), priority=Priority.BACKGROUND))
        assert await asyncio.to_thread(fake.entered.wait, GATE_TIMEOUT_S)
        background = [asyncio.create_task(queue.analyze(png(w), priority=Priority.BACKGROUND)) for w in (10, 11)]
        await wait_until(lambda: queue.metrics.snapshot()["queued"] == 2, "background jobs queued")
        interactive = asyncio.create_task(queue.analyze(png(50)))
        await wait_until(lambda: queue.metrics.snapshot()["decoding"] == 0
                         and queue.metrics.snapshot()["waiting_interactive"] + queue.metrics.snapshot()["running"] >= 2,
                         "the interactive job behind the background batch")
        assert fake.log == []  # the background batch still holds the models
        gate.set()
        results = await asyncio.gather(running, interactive, *background)
    assert [r.width for r in results] == [1, 50, 10, 11]
    assert fake.log == [("full", [1]), ("full", [50]), ("full", [10, 11])]
    assert fake.threads_by_tier["full"] == {"imagebot-inference-captions", "imagebot-inference-interactive"}


async def test_interactive_work_runs_while_a_background_batch_pauses_at_a_yield_point():
    """With yield points, a background batch that holds the models steps aside: interactive jobs
    (an analysis and /find's two text jobs) complete while it is still unfinished."""
    gate = threading.Event()
    fake = TieredFake(gate=gate, hold={1}, preemptible=True)
    async with InferenceQueue(fake, settings(max_wait_ms=0)) as queue:
        held = asyncio.create_task(queue.caption(decoded_png(1)))
        assert await asyncio.to_thread(fake.entered.wait, GATE_TIMEOUT_S)
        record = await bounded(queue.analyze(png(50)), "the interactive analysis")
        vectors, clip_vectors = await bounded(
            asyncio.gather(queue.embed_texts(["a dog"]), queue.clip_texts(["a dog"])), "the /find query vectors"
        )
        assert not held.done() and not gate.is_set()  # the background batch is still in the middle
        assert record.width == 50 and vectors.shape == (1, 2) and clip_vectors.shape == (1, 2)
        gate.set()
        part = await held
    assert part == Tiered("caption", 1)
    assert fake.log[-1] == ("caption", [1])  # it finished last, after everything interactive
    assert {tier for tier, _ in fake.log[:-1]} == {"full", "embed", "clip"}
    assert queue.metrics.snapshot()["preemptions"] >= 1


async def test_a_first_look_runs_while_a_caption_batch_pauses_and_interactive_work_before_both():
    """Three ranks: a new picture's fast tier does not wait for a batch of captions either, and
    interactive work pauses the fast tier in turn."""
    gate = threading.Event()
    fake = TieredFake(gate=gate, hold={20}, preemptible=True)
    async with InferenceQueue(fake, settings(max_wait_ms=0)) as queue:
        captions = asyncio.create_task(queue.caption(decoded_png(20)))
        assert await asyncio.to_thread(fake.entered.wait, GATE_TIMEOUT_S)
        record, _ = await bounded(queue.analyze_fast(png(30)), "the first look")
        assert record == Tiered("fast", 30) and not captions.done()

        fake.entered.clear()
        fake.hold = {20, 31}
        first_look = asyncio.create_task(queue.analyze_fast(png(31)))  # now held too, inside the fast tier
        assert await asyncio.to_thread(fake.entered.wait, GATE_TIMEOUT_S)
        assert (await bounded(queue.analyze(png(50)), "the interactive analysis")).width == 50
        assert not first_look.done() and not captions.done()
        gate.set()
        await asyncio.gather(first_look, captions)
    assert fake.log == [("fast", [30]), ("full", [50]), ("fast", [31]), ("caption", [20])]
    assert queue.metrics.snapshot()["preemptions"] >= 2
    assert fake.threads_by_tier == {
        "caption": {"imagebot-inference-captions"},
        "fast": {"imagebot-inference-first-look"},
        "full": {"imagebot-inference-interactive"},
    }


async def test_a_background_batch_held_up_before_it_touches_a_model_blocks_nobody():
    """A batch takes the model turn at its analyzer's first yield point: one stuck before that (on
    I/O, on a test's gate) leaves the models to everyone else."""
    gate = threading.Event()

    class HeldOutside(TieredFake):
        def caption(self, images: Sequence[DecodedImage]) -> list[Tiered]:
            self.entered.set()
            assert gate.wait(GATE_TIMEOUT_S)  # a plain wait, no yield point
            return super().caption(images)

    fake = HeldOutside(preemptible=True)
    async with InferenceQueue(fake, settings(max_wait_ms=0)) as queue:
        held = asyncio.create_task(queue.caption(decoded_png(20)))
        assert await asyncio.to_thread(fake.entered.wait, GATE_TIMEOUT_S)
        await bounded(asyncio.gather(queue.embed_texts(["a dog"]), queue.clip_texts(["a dog"])), "/find")
        assert (await bounded(queue.analyze(png(50)), "a mention")).width == 50
        assert (await bounded(queue.analyze_fast(png(30)), "a first look"))[0] == Tiered("fast", 30)
        assert not held.done()
        gate.set()
        assert await held == Tiered("caption", 20)
    assert fake.log[-1] == ("caption", [20])


async def test_without_preemption_the_background_batch_finishes_first():
    """``preempt_background = false``: the yield point is not installed; interactive waits the batch out."""
    gate = threading.Event()
    fake = TieredFake(gate=gate, hold={1}, preemptible=True)
    async with InferenceQueue(fake, settings(max_wait_ms=0, preempt_background=False)) as queue:
        held = asyncio.create_task(queue.caption(decoded_png(1)))
        assert await asyncio.to_thread(fake.entered.wait, GATE_TIMEOUT_S)
        interactive = asyncio.create_task(queue.embed_texts(["a dog"]))
        await wait_until(lambda: queue.metrics.snapshot()["running"] == 2, "the interactive job waiting for its turn")
        assert fake.log == []
        gate.set()
        await asyncio.gather(held, interactive)
    assert fake.log == [("caption", [1]), ("embed", [5])]
    assert queue.metrics.snapshot()["preemptions"] == 0


async def test_background_jobs_are_never_refused_interactive_ones_are_past_max_queued():
    gate = threading.Event()
    fake = TieredFake(gate=gate, hold={1})
    async with InferenceQueue(fake, settings(max_batch_size=8, max_wait_ms=0, max_queued=2)) as queue:
        running = asyncio.create_task(queue.analyze_fast(png(1)))
        assert await asyncio.to_thread(fake.entered.wait, GATE_TIMEOUT_S)
        background = [asyncio.create_task(queue.analyze_fast(png(10 + i))) for i in range(6)]
        background += [asyncio.create_task(queue.caption(decoded_png(20 + i))) for i in range(3)]
        await wait_until(lambda: queue.metrics.snapshot()["queued"] == 9, "9 background jobs queued")
        assert queue.metrics.snapshot()["waiting_background"] == 9  # past max_queued, none refused

        first = asyncio.create_task(queue.analyze(png(50)))
        await wait_until(lambda: queue.metrics.snapshot()["running"] == 2, "the interactive worker to take it")
        waiting = [asyncio.create_task(queue.analyze(png(w))) for w in (51, 52)]
        await wait_until(lambda: queue.metrics.snapshot()["waiting_interactive"] == 2, "2 interactive waiting")
        with pytest.raises(QueueBusy):
            await queue.analyze(png(53))
        with pytest.raises(QueueBusy):
            await queue.embed_texts(["also interactive"])
        more = asyncio.create_task(queue.analyze_fast(png(19)))  # background: still accepted
        await wait_until(lambda: queue.metrics.snapshot()["waiting_background"] == 10, "one more background job")

        gate.set()
        await asyncio.gather(running, first, *waiting, *background, more)
    order = [(tier, sorted(widths)) for tier, widths in fake.log]  # two decode threads: any order within a batch
    assert order[:3] == [("fast", [1]), ("full", [50]), ("full", [51, 52])]
    assert all(tier in ("fast", "caption") for tier, _ in order[3:])
    snapshot = queue.metrics.snapshot()
    assert snapshot["busy"] == 2 and snapshot["jobs"]["ok"] == 14


async def test_fast_tier_goes_before_caption_tier_within_background_fifo_within_each():
    gate = threading.Event()
    fake = TieredFake(gate=gate, hold={1})
    async with InferenceQueue(fake, settings(max_batch_size=2, background_batch_size=2, max_wait_ms=0)) as queue:
        running = asyncio.create_task(queue.analyze_fast(png(1)))
        assert await asyncio.to_thread(fake.entered.wait, GATE_TIMEOUT_S)
        jobs = []
        for width in (20, 21, 22):  # captions first...
            jobs.append(asyncio.create_task(queue.caption(decoded_png(width))))
            await wait_until(lambda: queue.metrics.snapshot()["queued"] == len(jobs), "caption queued")
        for width in (30, 31, 32):  # ...then first looks, which still go first
            jobs.append(asyncio.create_task(queue.analyze_fast(png(width))))
            await wait_until(lambda: queue.metrics.snapshot()["queued"] == len(jobs), "fast job queued")
        lanes = queue.metrics.snapshot()["lanes"]["background"]
        assert lanes["caption"]["waiting"] == 3 and lanes["fast"]["waiting"] == 3
        assert lanes["caption"]["oldest_wait_s"] >= lanes["fast"]["oldest_wait_s"] >= 0
        gate.set()
        results = await asyncio.gather(running, *jobs)
    assert fake.log == [("fast", [1]), ("fast", [30, 31]), ("fast", [32]), ("caption", [20, 21]), ("caption", [22])]
    record, decoded = results[0]
    assert record == Tiered("fast", 1) and isinstance(decoded, DecodedImage) and decoded.original_size[0] == 1
    assert results[1:4] == [Tiered("caption", w) for w in (20, 21, 22)]
    assert [r[0] for r in results[4:]] == [Tiered("fast", w) for w in (30, 31, 32)]
    # The decode stage prepared each tier's pixels only: the caption tier never decodes again.
    expected = [("fast", w) for w in (1, 30, 31, 32)] + [("caption", w) for w in (20, 21, 22)]
    assert sorted(fake.prepared) == sorted(expected)


async def test_background_caption_batches_are_capped_at_background_batch_size():
    gate = threading.Event()
    fake = TieredFake(gate=gate, hold={1})
    async with InferenceQueue(fake, settings(max_batch_size=8, max_wait_ms=0, background_batch_size=2)) as queue:
        running = asyncio.create_task(queue.analyze_fast(png(1)))
        assert await asyncio.to_thread(fake.entered.wait, GATE_TIMEOUT_S)
        captions = [asyncio.create_task(queue.caption(decoded_png(w))) for w in (20, 21, 22, 23, 24)]
        fast = [asyncio.create_task(queue.analyze_fast(png(w))) for w in (30, 31, 32)]
        await wait_until(lambda: queue.metrics.snapshot()["queued"] == 8, "jobs queued")
        gate.set()
        await asyncio.gather(running, *captions, *fast)
    assert [len(widths) for tier, widths in fake.log if tier == "caption"] == [2, 2, 1]
    assert [len(widths) for tier, widths in fake.log if tier == "fast"] == [1, 3]


async def test_interactive_decodes_go_ahead_of_waiting_background_decodes():
    decoding = threading.Event()
    release = threading.Event()

    class SlowDecode(TieredFake):
        def prepare(self, decoded: DecodedImage, tier: str = "full") -> DecodedImage:
            if decoded.original_size[0] == 1:
                decoding.set()
                assert release.wait(GATE_TIMEOUT_S)
            return super().prepare(decoded, tier)

    fake = SlowDecode()
    async with InferenceQueue(fake, settings(decode_workers=1, max_wait_ms=0)) as queue:
        first = asyncio.create_task(queue.analyze_fast(png(1)))
        assert await asyncio.to_thread(decoding.wait, GATE_TIMEOUT_S)  # the one decode thread is busy
        background = [asyncio.create_task(queue.analyze_fast(png(w))) for w in (10, 11, 12)]
        await wait_until(lambda: queue.metrics.snapshot()["decoding"] == 4, "background decodes waiting")
        interactive = asyncio.create_task(queue.analyze(png(50)))
        await wait_until(lambda: queue.metrics.snapshot()["decoding"] == 5, "the interactive decode waiting")
        release.set()
        await asyncio.gather(first, interactive, *background)
    assert [width for _, width in fake.prepared] == [1, 50, 10, 11, 12]


async def test_a_crashed_background_worker_fails_its_batch_and_is_replaced():
    crashed = threading.Event()

    def crash_once(widths: list[int]) -> BaseException | None:
        if 66 in widths and not crashed.is_set():
            crashed.set()
            return RuntimeError("kernel failure in a background batch")
        return None

    class Crashy(TieredFake):
        def analyze_fast(self, images: Sequence[DecodedImage], *, read: Sequence[bool] | None = None
                         ) -> list[Tiered]:
            if (error := crash_once([image.original_size[0] for image in images])) is not None:
                raise error
            return super().analyze_fast(images, read=read)

    fake = Crashy()
    async with InferenceQueue(fake, settings(max_wait_ms=0)) as queue:
        with pytest.raises(WorkerCrashed):
            await queue.analyze_fast(png(66))
        record, _ = await queue.analyze_fast(png(67))  # served by the new background worker
        assert record == Tiered("fast", 67)
        assert (await queue.analyze(png(68))).width == 68  # the interactive worker never noticed
    snapshot = queue.metrics.snapshot()
    assert snapshot["worker_restarts"] == 1 and snapshot["jobs_by_kind"]["fast"] == {"ok": 1, "worker_crashed": 1}


async def test_close_drains_both_priorities():
    gate = threading.Event()
    fake = TieredFake(gate=gate, hold={1})
    queue = InferenceQueue(fake, settings(max_wait_ms=0))
    await queue.start()
    held = asyncio.create_task(queue.analyze_fast(png(1)))
    assert await asyncio.to_thread(fake.entered.wait, GATE_TIMEOUT_S)
    waiting = [asyncio.create_task(queue.caption(decoded_png(20))), asyncio.create_task(queue.analyze(png(50)))]
    await wait_until(lambda: queue.metrics.snapshot()["queued"] + queue.metrics.snapshot()["running"] == 3, "queued")
    closing = asyncio.create_task(queue.close())
    gate.set()
    await closing
    results = [await task for task in (held, *waiting)]
    assert results[0][0] == Tiered("fast", 1) and results[1] == Tiered("caption", 20) and results[2].width == 50
    assert not queue.running


async def test_the_two_tiers_through_the_queue_make_the_full_analysis(analyzer, photos):
    async with InferenceQueue(analyzer, settings(max_wait_ms=0)) as queue:
        for name in ("astronaut", "coffee"):
            fast, decoded = await queue.analyze_fast(photos[name], filename=f"{name}.jpg")
            assert fast.caption_pending and fast.caption == "" and fast.caption_embedding == []
            assert isinstance(decoded, DecodedImage)
            part = await queue.caption(decoded)
            full = await queue.analyze(photos[name], filename=f"{name}.jpg")
            assert fast.with_caption(part) == full
    kinds = queue.metrics.snapshot()["jobs_by_kind"]
    assert kinds["fast"] == {"ok": 2} and kinds["caption"] == {"ok": 2} and kinds["image"] == {"ok": 2}
    assert queue.metrics.snapshot()["images_total"] == 4  # full analyses and completed captions


async def test_a_real_background_batch_paused_inside_blip_gives_the_same_results(analyzer, photos):
    """Preemption in the middle of BLIP's generate() (between decoder layers) with the tiny models:
    the interactive analysis runs to the end on the same weights meanwhile, and both results equal
    the analyzer's own, undisturbed answers."""
    inside = threading.Event()
    go = threading.Event()

    def pause_once(_module, _args) -> None:
        if threading.current_thread().name == "imagebot-inference-captions" and not inside.is_set():
            inside.set()
            assert go.wait(GATE_TIMEOUT_S)

    expected_caption = analyzer.caption([decode_image(photos["rocket"])])[0]
    expected_full = analyzer.analyze([decode_image(photos["chelsea"])])[0]
    handle = analyzer.captioner.model.text_decoder.register_forward_pre_hook(pause_once)
    try:
        async with InferenceQueue(analyzer, settings(max_wait_ms=0)) as queue:
            held = asyncio.create_task(queue.caption(decode_image(photos["rocket"])))
            assert await asyncio.to_thread(inside.wait, GATE_TIMEOUT_S)
            interactive = asyncio.create_task(queue.analyze(photos["chelsea"]))
            await wait_until(lambda: queue.metrics.snapshot()["decoding"] == 0
                             and queue.metrics.snapshot()["queued"] + queue.metrics.snapshot()["running"] == 2,
                             "the interactive job queued behind the paused caption batch")
            go.set()  # the caption batch goes on to its next decoder layer, and steps aside there
            full = await bounded(interactive, "the interactive analysis")
            assert not held.done()
            part = await bounded(held, "the caption batch")
            preemptions = queue.metrics.snapshot()["preemptions"]
    finally:
        handle.remove()
    assert preemptions >= 1
    assert part == expected_caption
    assert full == expected_full


# ----------------------------------------------------------------------------- lane and source metrics


def assert_prometheus_well_formed(text: str) -> dict[str, str]:
    families: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            families[name] = kind
            continue
        if line.startswith("# HELP "):
            continue
        assert _SAMPLE.match(line), line
        name = re.split(r"[{ ]", line, maxsplit=1)[0]
        base = re.sub(r"_(bucket|sum|count)$", "", name) if name not in families else name
        assert base in families, f"sample {name} before its # TYPE line"
    return families


async def test_lane_depths_ages_and_registered_sources_reach_prometheus_and_status():
    from bot.status_report import status_lines

    gate = threading.Event()
    fake = TieredFake(gate=gate, hold={1})

    def broken() -> dict[str, float]:
        raise RuntimeError("a source that fails must not break /status")

    async with InferenceQueue(fake, settings(max_wait_ms=0)) as queue:
        queue.metrics.register_source("ingest", lambda: {"backlog_fast": 3, "backlog_caption": 12,
                                                         "oldest_wait_s": 41.5, "drops_total": 2})
        queue.metrics.register_source("broken", broken)
        held = asyncio.create_task(queue.analyze_fast(png(1)))
        assert await asyncio.to_thread(fake.entered.wait, GATE_TIMEOUT_S)
        captions = [asyncio.create_task(queue.caption(decoded_png(w))) for w in (20, 21)]
        await wait_until(lambda: queue.metrics.snapshot()["queued"] == 2, "captions queued")
        text = queue.metrics.prometheus_text()
        snapshot = queue.metrics.snapshot()
        gate.set()
        await asyncio.gather(held, *captions)

    families = assert_prometheus_well_formed(text)
    assert families["imagebot_inference_lane_waiting"] == "gauge"
    assert families["imagebot_inference_lane_oldest_wait_seconds"] == "gauge"
    assert 'imagebot_inference_lane_waiting{priority="background",kind="caption"} 2' in text
    assert 'imagebot_inference_lane_waiting{priority="interactive",kind="image"} 0' in text
    assert families["imagebot_ingest_backlog_caption"] == "gauge"
    assert families["imagebot_ingest_drops_total"] == "counter"
    assert "imagebot_ingest_backlog_caption 12" in text and "imagebot_ingest_oldest_wait_s 41.5" in text
    assert "imagebot_broken" not in text
    assert families["imagebot_inference_preemptions_total"] == "counter"
    assert snapshot["lanes"]["background"]["caption"]["waiting"] == 2
    assert snapshot["sources"] == {"ingest": {"backlog_fast": 3.0, "backlog_caption": 12.0,
                                              "oldest_wait_s": 41.5, "drops_total": 2.0}}
    lines = dict(status_lines(snapshot))
    assert lines["Lanes"].startswith("background caption 2 (oldest ")
    assert lines["Queue"] == "0 interactive waiting of 64 · 2 background waiting · 1 running"
    assert lines["Ingest"] == "backlog caption 12 · backlog fast 3 · drops total 2 · oldest wait s 41.50"
