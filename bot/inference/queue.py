"""One batched path for all model work: the async API the bot awaits, model worker threads behind it.

Stages, in the order a job meets them (the vocabulary of Triton's dynamic batcher, Ray Serve's
``@serve.batch`` and LitServe):

1. **admit** — on the event loop, synchronously. An interactive job takes a slot out of
   ``queue.max_queued`` or gets :class:`QueueBusy` at once; a background job is never refused for
   load (the ingest backlog upstream bounds how many it submits).
2. **decode** — in ``queue.decode_workers`` threads, interactive jobs first:
   :func:`bot.imaging.decode_image` (sniff, bomb checks, DCT-domain downscale) inside a killable
   worker process (:class:`bot.decode_sandbox.DecodeSandbox`, one per decode thread: a hostile file
   that makes the codec spin or balloon is killed at ``images.decode_timeout_s`` /
   ``decode_memory_mb``), then :meth:`Analyzer.prepare` (the models' own resize/normalise) in the
   thread. This CPU work overlaps the model compute of the batch before. When the models run on CUDA
   (``queue.gpu_decode = "auto"``), plain JPEGs are decoded on the GPU instead, batched across the
   decode threads, after the same hostile-input checks (:mod:`bot.inference.gpu_decode`); everything
   else still goes to the worker processes.
3. **batch** — three worker threads (:class:`~bot.inference.batching.Worker`): interactive work;
   background work that does not caption (the fast tier); background work that runs the captioner
   (the caption tier, full analyses). Each takes up to ``max_batch_size`` jobs of one kind (the
   captioning worker: ``background_batch_size``), waiting at most ``max_wait_ms`` after the first
   one (:meth:`JobBoard.next_batch`). A background worker only starts a batch while no
   lower-ranked worker has work queued or running.
4. **predict** — each model role runs once for the whole batch, on a worker thread holding the
   *model turn* (:meth:`JobBoard.model_turn`): model work never runs on the event loop, and one
   batch computes at a time. A batch pauses between model layers while a lower-ranked worker has
   work waiting or running (``queue.preempt_background``) and resumes where it stopped: a person
   waits for one layer of background work, not a whole batch, and a new picture's first look for
   one layer of captioning. Out of memory → the batch is split in halves and retried, down to
   single jobs.
5. **respond** — each caller's future is resolved on its own loop via ``call_soon_threadsafe``.

Analysis comes whole (:meth:`InferenceQueue.analyze`) or in two tiers for a host where the
captioner is most of the cost: :meth:`InferenceQueue.analyze_fast` (CLIP only: labels, topics,
image mood, image vector) and later :meth:`InferenceQueue.caption` (BLIP and the caption's text
roles) on the :class:`~bot.imaging.DecodedImage` the fast tier handed back.

Why a preemptible model turn, measured on a 2-core CPU with real-size models while captions kept
the background busy (``bench/results/priority_cpu.md``): when interactive work only overtook
background work at batch boundaries, a ``/find`` query waited for the rest of a background caption
batch (p95 11.4 s with batches of 8, 3.7 s with 2) and so did a mention's analysis (p95 9.8 s /
6.8 s); with batches pausing between layers, ``/find`` p95 was 0.4 s and the analysis p95 2.6 s
(idle: 0.13 s / 2.3 s), and a new picture's first look p50 0.8 s (3.2 s when it waited for caption
batches to end). Two workers computing side by side with a lock per model role would serve the text
jobs as well (``/find`` p95 0.16 s next to a running BLIP: the two share the cores), but an
interactive caption would still wait for BLIP's lock, i.e. for a background batch. One batch at a
time also means no tokenizer is entered from two threads at once (fast tokenizers fail with
"Already borrowed").

Failure handling: a cancelled or timed-out caller releases its slot and its job never runs if it
had not started; an unexpected exception in a worker fails the jobs of the batch it was running
with :class:`WorkerCrashed` and a new thread for the same worker takes over its lanes; a bad
file fails only its own caller with the decoder's :class:`~bot.imaging.ImageRejected`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np

from bot.analysis import CaptionPart, ImageAnalysis
from bot.config import ImageSettings, QueueSettings, Settings
from bot.decode_sandbox import DecodeSandbox
from bot.imaging import DecodedImage
from bot.inference.backend import AnalyzerLike, BackendBase, InferenceBackend
from bot.inference.batching import (
    Job,
    JobBoard,
    JobKind,
    Priority,
    Worker,
    encode_together,
    is_out_of_memory,
    predict_splitting_on_oom,
)
from bot.inference.errors import InferenceError, JobTimeout, QueueClosed, WorkerCrashed, outcome_of
from bot.inference.gpu_decode import GpuJpegDecoder, gpu_decode_wanted
from bot.inference.metrics import QueueMetrics

if TYPE_CHECKING:
    from bot.pipeline import Tier

__all__ = ["InferenceQueue", "Priority"]

log = logging.getLogger(__name__)

_ROLES = ("caption", "clip", "read", "read_ahead", "text", "prepare")
_MAX_RESTART_BACKOFF_S = 2.0


class _DecodePool:
    """The decode stage's threads: interactive work first, FIFO within a priority.

    A plain ``ThreadPoolExecutor`` is one FIFO: a picture someone just asked about would wait behind
    every background image already handed to it. ``shutdown`` lets what was submitted finish (a
    decode that lands after a non-draining close finds its job failed with QueueClosed, which is
    the answer; cancelling it would surface as a bare CancelledError in its caller).
    """

    def __init__(self, workers: int, *, name: str = "imagebot-decode") -> None:
        self._cond = threading.Condition()
        self._pending: dict[Priority, deque[tuple[concurrent.futures.Future[Any], Callable[[], Any]]]] = {
            priority: deque() for priority in Priority
        }
        self._closed = False
        for index in range(workers):
            threading.Thread(target=self._serve, name=f"{name}-{index}", daemon=True).start()

    def submit(self, priority: Priority, fn: Callable[[], Any]) -> concurrent.futures.Future[Any]:
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        with self._cond:
            if self._closed:
                raise RuntimeError("cannot schedule new decodes after shutdown")
            self._pending[priority].append((future, fn))
            self._cond.notify()
        return future

    def shutdown(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def _serve(self) -> None:
        while True:
            with self._cond:
                while not any(self._pending.values()):
                    if self._closed:
                        return
                    self._cond.wait()
                lane = self._pending[Priority.INTERACTIVE] or self._pending[Priority.BACKGROUND]
                future, fn = lane.popleft()
            if not future.set_running_or_notify_cancel():  # its caller went away meanwhile
                continue
            try:
                result = fn()
            except BaseException as exc:
                future.set_exception(exc)
            else:
                future.set_result(result)
            del future, fn


class InferenceQueue(BackendBase):
    """Micro-batching, bounded, thread-backed front of the models, with two priorities.

    ``analyzer`` is a loaded :class:`~bot.pipeline.Analyzer` (or anything
    :class:`~bot.inference.backend.AnalyzerLike`), or a zero-argument factory returning one: the
    factory runs on the interactive worker thread, so minutes of model loading never block the event
    loop, and jobs submitted meanwhile simply wait. It implements all of
    :class:`~bot.inference.backend.InferenceBackend`, as the Ray client does.

    Every method takes a ``priority``: :attr:`Priority.INTERACTIVE` (someone is waiting; the
    default, except for the two analysis tiers) or :attr:`Priority.BACKGROUND` (indexing).

    Use ``async with InferenceQueue(...) as queue:`` or :meth:`start` / :meth:`close`.
    """

    def __init__(
        self,
        analyzer: AnalyzerLike | Callable[[], AnalyzerLike],
        queue_settings: QueueSettings | None = None,
        image_settings: ImageSettings | None = None,
        *,
        metrics: QueueMetrics | None = None,
        is_oom: Callable[[BaseException], bool] = is_out_of_memory,
        decoder: DecodeSandbox | None = None,
        gpu_decoder: GpuJpegDecoder | None = None,
    ) -> None:
        self.settings = queue_settings or QueueSettings()
        self.image_settings = image_settings or ImageSettings()
        # The decoder processes: shared when given (Services shares them with /vibe), else our own.
        self._owns_decoder = decoder is None
        self.decoder = decoder or DecodeSandbox.from_settings(self.image_settings, workers=self.settings.decode_workers)
        # The GPU JPEG path: given (used as is, whatever the device: tests drive it on the CPU), or made
        # once the models' device is known (queue.gpu_decode; here for a loaded analyzer, else in _load),
        # or never (None). Decodes read it only after _text_size() waited for the models.
        self.gpu_decoder: GpuJpegDecoder | None = gpu_decoder
        if isinstance(analyzer, AnalyzerLike) and not isinstance(analyzer, type):  # a class is a factory
            self._analyzer: AnalyzerLike | None = analyzer
            self._factory: Callable[[], AnalyzerLike] | None = None
            self._choose_gpu_decoder(analyzer)
        else:
            self._analyzer, self._factory = None, analyzer
        self._is_oom = is_oom
        self._board = JobBoard(
            max_batch_size=self.settings.max_batch_size,
            max_wait_s=self.settings.max_wait_ms / 1000.0,
            max_queued=self.settings.max_queued,
            background_batch_size=self.settings.background_batch_size,
        )
        self.metrics = metrics or QueueMetrics()
        self.metrics.set_gauges(self._gauges)
        self.metrics.set_lanes(self._board.lanes)
        self._board.on_preempt = self.metrics.preempted
        self._decode_pool: _DecodePool | None = None
        self._threads: dict[Worker, threading.Thread] = {}
        self._thread_lock = threading.Lock()
        self._live_workers = 0
        self._stopped = threading.Event()
        self._stopped.set()
        self._loaded = threading.Event()  # the analyzer is there (or failed to load: then it is None)
        self._ready: asyncio.Future[None] | None = None
        self._consecutive_crashes: dict[Worker, int] = dict.fromkeys(Worker, 0)
        self._yields = False  # the analyzer calls our checkpoint before and between model layers
        self._state = "new"  # new -> starting -> running -> closing -> closed

    @classmethod
    def from_settings(cls, settings: Settings, **kwargs: Any) -> InferenceQueue:
        """A queue that loads the configured models on its worker thread when started."""
        from bot.pipeline import Analyzer

        return cls(partial(Analyzer.from_settings, settings), settings.queue, settings.images, **kwargs)

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Start the decode pool and the workers; returns once the models are loaded.

        Jobs are accepted from the moment this is called (they wait while the models load). If
        loading fails, the error is raised here and the waiting jobs fail with :class:`WorkerCrashed`.
        """
        if self._state != "new":
            if self._ready is not None:
                await asyncio.shield(self._ready)
            return
        loop = asyncio.get_running_loop()
        self._state = "starting"
        self._ready = loop.create_future()
        self._decode_pool = _DecodePool(self.settings.decode_workers)
        self._board.open()
        for worker in Worker:
            self._spawn_worker(loop, worker)
        try:
            await asyncio.shield(self._ready)
        except Exception:  # the models failed to load: the worker has already closed the board
            self._state = "closed"
            self._decode_pool.shutdown()
            raise
        if self._state == "starting":
            self._state = "running"

    async def close(self, *, drain: bool = True, timeout: float | None = None) -> None:  # noqa: ASYNC109
        """Stop taking jobs, then finish (``drain``) or fail (:class:`QueueClosed`) those waiting.

        With ``drain``, waiting jobs still run, for up to ``timeout`` seconds (default
        ``queue.job_timeout_s``); whatever is left after that fails with :class:`QueueClosed`. A
        batch already in the model always finishes and its callers get their results.
        """
        if self._state == "closed":
            return
        if self._state == "closing":  # a second close() waits for the first one's drain
            await asyncio.to_thread(self._stopped.wait, self.settings.job_timeout_s if timeout is None else timeout)
            return
        started = self._state != "new"
        self._state = "closing"
        self._fail(self._board.close(drain=drain), QueueClosed("the inference queue was closed before this job ran"))
        if started:
            limit = self.settings.job_timeout_s if timeout is None else timeout
            finished = await asyncio.to_thread(self._stopped.wait, limit)
            if not finished:
                log.warning("inference queue: jobs still waiting after %.1fs of draining; failing them", limit)
                self._fail(self._board.close(drain=False), QueueClosed("the inference queue was closed"))
                await asyncio.to_thread(self._stopped.wait, 1.0)
        if self._decode_pool is not None:
            self._decode_pool.shutdown()
        if self._owns_decoder:
            await asyncio.to_thread(self.decoder.close)
        self._state = "closed"

    @property
    def analyzer(self) -> AnalyzerLike | None:
        """The loaded analyzer (None while a factory is still loading it)."""
        return self._analyzer

    @property
    def running(self) -> bool:
        return self._state in ("starting", "running")

    def _gauges(self) -> dict[str, float]:
        return dict(self._board.depths())

    # ------------------------------------------------------------------ public API

    # `timeout` is part of the job (defaults to queue.job_timeout_s, frees the slot, raises the typed
    # JobTimeout), which a caller-side asyncio.timeout() could not do: hence the ASYNC109 exemptions.
    async def analyze(
        self,
        data: bytes | bytearray | memoryview,
        *,
        filename: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109
        priority: Priority = Priority.INTERACTIVE,
    ) -> ImageAnalysis:
        """Decode untrusted image bytes and analyse them fully (both tiers) in the next batch.

        Raises :class:`~bot.imaging.ImageRejected` for a bad file (this caller only), or an
        :class:`InferenceError`: :class:`QueueBusy` (at once; interactive only), :class:`JobTimeout`,
        :class:`OutOfMemory`, :class:`WorkerCrashed`, :class:`QueueClosed`.
        """
        result: ImageAnalysis = await self._run(
            JobKind.IMAGE, timeout, priority, decode=partial(self._decode, bytes(data), filename, "full", None)
        )
        return result

    async def analyze_fast(
        self,
        data: bytes | bytearray | memoryview,
        *,
        filename: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109
        priority: Priority = Priority.BACKGROUND,
        read_text: bool = True,
    ) -> tuple[ImageAnalysis, DecodedImage]:
        """The fast tier: decode, then CLIP and the text reader — a record with ``caption_pending=True``
        (labels, topics, image mood and vector, the words; no caption yet) and the decoded image, to
        hand to :meth:`caption` later without decoding again. Errors as :meth:`analyze`.

        ``read_text=False`` skips the reader in the model turn (the ingest backlog asks so when it is
        deep: reading is 0.3-1 s per picture with text on a small CPU): the record then has
        ``text=""`` and ``text_pending=True`` and is to be completed by :meth:`analyze`, not
        :meth:`caption`. The flag travels on the job, so one batch mixes pictures read and not.

        An analyzer without tiers answers with its full analysis (a complete record).
        """
        kept: list[DecodedImage] = []
        record: ImageAnalysis = await self._run(
            JobKind.FAST, timeout, priority, decode=partial(self._decode, bytes(data), filename, "fast", kept),
            read_text=read_text,
        )
        return record, kept[0]

    async def caption(
        self,
        decoded: DecodedImage,
        *,
        timeout: float | None = None,  # noqa: ASYNC109
        priority: Priority = Priority.BACKGROUND,
    ) -> CaptionPart:
        """The caption tier for an image :meth:`analyze_fast` decoded: BLIP's caption and its
        embedding, topics and sentiment (``record.with_caption(part)`` completes the record)."""
        part: CaptionPart = await self._run(JobKind.CAPTION, timeout, priority, decode=partial(self._prepare, decoded))
        return part

    async def _text_job(self, kind: JobKind, texts: list[str], job_timeout: float | None, priority: Priority) -> Any:
        """A text job (``embed_texts`` / ``clip_texts`` / ``score_sentiment``, from :class:`BackendBase`):
        no decode stage, straight to its lane."""
        return await self._run(kind, job_timeout, priority, payload=texts)

    # ------------------------------------------------------------------ caller side

    async def _run(
        self,
        kind: JobKind,
        job_timeout: float | None,
        priority: Priority = Priority.INTERACTIVE,
        *,
        payload: Any = None,
        decode: Callable[[], Any] | None = None,
        read_text: bool = True,
    ) -> Any:
        """admit → (decode) → enqueue → await; every call ends in exactly one counted outcome."""
        priority = Priority(priority)
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        try:
            job = self._board.admit(kind, loop, priority, read_text=read_text)
        except InferenceError as exc:
            self.metrics.job_finished(kind, exc.code)
            raise
        limit = self.settings.job_timeout_s if job_timeout is None else job_timeout
        try:
            result = await self._await_job(job, limit, payload, decode)
        except BaseException as exc:
            self._board.release(job)  # frees the slot; no-op if the job already runs or ran
            self.metrics.job_finished(kind, outcome_of(exc))
            raise
        self.metrics.job_finished(kind, "ok")
        seconds = time.perf_counter() - started
        self.metrics.observe_stage("latency", seconds)
        self.metrics.observe_stage(f"latency_{priority}", seconds)
        return result

    async def _await_job(self, job: Job, limit: float, payload: Any, decode: Callable[[], Any] | None) -> Any:
        scope = asyncio.timeout(limit)
        try:
            async with scope:
                if decode is not None:
                    assert self._decode_pool is not None
                    payload = await asyncio.wrap_future(self._decode_pool.submit(job.priority, decode))
                self._board.enqueue(job, payload)  # refused only after a non-draining close: future failed
                return await job.future
        except TimeoutError:
            if scope.expired():
                raise JobTimeout(f"no result within {limit:g}s") from None
            raise

    def _decode(self, data: bytes, filename: str | None, tier: Tier, keep: list[DecodedImage] | None) -> Any:
        """Decode pool: bytes → upright RGB ≤ target_size → model-ready tensors for ``tier`` (when possible)."""
        started = time.perf_counter()
        decoded = self._decode_bytes(data, filename, self._text_size())
        if keep is not None:  # kept between the tiers: the reader's larger copy is only needed now
            keep.append(decoded.without_text_image())
        result = self._prepare_for(decoded, tier)
        self.metrics.observe_stage("decode", time.perf_counter() - started)
        return result

    # -- the GPU JPEG path (issue 14): which decoder gets the bytes; everything after it is the same.

    def _decode_bytes(self, data: bytes, filename: str | None, text_size: int) -> DecodedImage:
        """Decode pool: the GPU JPEG decoder when it is on (it hands what it must not decode to
        ``self.decoder`` itself, per image), else the decoder processes."""
        gpu = self.gpu_decoder
        if gpu is not None:
            return gpu.decode(data, filename=filename, text_size=text_size)
        return self.decoder.decode(data, filename=filename, text_size=text_size)

    def _choose_gpu_decoder(self, analyzer: AnalyzerLike) -> None:
        """Build the GPU JPEG decoder if ``queue.gpu_decode`` wants one for the models' device (a CPU
        host never builds one); a decoder given to the constructor stays."""
        device = getattr(analyzer, "device", None)  # test stand-ins may have none: the CPU path
        if self.gpu_decoder is not None or device is None or not gpu_decode_wanted(self.settings.gpu_decode, device):
            return
        images = self.image_settings
        self.gpu_decoder = GpuJpegDecoder(
            device, fallback=self.decoder.decode, max_bytes=images.max_bytes, max_pixels=images.max_pixels,
            target_size=images.target_size, max_batch=self.settings.max_batch_size,
        )
        log.info("inference queue: decoding JPEGs on %s (queue.gpu_decode)", device)

    def _text_size(self) -> int:
        """The reader copy the analyzer wants from the decoder (``Analyzer.text_size``; 0: none).

        Known once the models are loaded: a decode that starts earlier waits for them (the job
        could not run before anyway), so no picture is read from its small model image instead."""
        if self._analyzer is None and self._factory is not None:
            self._loaded.wait(self.settings.job_timeout_s)
        return self._analyzer.text_size if self._analyzer is not None else 0

    def _prepare(self, decoded: DecodedImage) -> Any:
        """Decode pool, caption tier: the captioner's pixels for an image decoded earlier."""
        started = time.perf_counter()
        result = self._prepare_for(decoded, "caption")
        self.metrics.observe_stage("prepare", time.perf_counter() - started)
        return result

    def _prepare_for(self, decoded: DecodedImage, tier: Tier) -> Any:
        analyzer = self._analyzer
        if analyzer is None:  # still loading (the analyzer prepares it in the batch then), or failed to
            return decoded
        try:
            return analyzer.prepare(decoded, tier)
        except Exception as exc:  # a model-side preprocessing bug must not look like a bad file
            raise InferenceError(f"preprocessing failed: {type(exc).__name__}: {exc}") from exc

    def _fail(self, jobs: Sequence[Job], error: InferenceError) -> None:
        for job in jobs:
            job.settle(error=error)

    # ------------------------------------------------------------------ worker side

    def _spawn_worker(self, loop: asyncio.AbstractEventLoop, worker: Worker) -> None:
        with self._thread_lock:
            self._live_workers += 1
            self._stopped.clear()
            thread = threading.Thread(
                target=self._worker_main, args=(loop, worker), name=f"imagebot-inference-{worker.label}", daemon=True
            )
            self._threads[worker] = thread
            thread.start()

    def _worker_exited(self) -> None:
        with self._thread_lock:
            self._live_workers -= 1
            if not self._live_workers:
                self._stopped.set()

    def _signal_ready(self, loop: asyncio.AbstractEventLoop, error: BaseException | None) -> None:
        ready = self._ready

        def _set() -> None:
            if ready is None or ready.done():
                return
            if error is None:
                ready.set_result(None)
            else:
                ready.set_exception(error)

        try:
            loop.call_soon_threadsafe(_set)
        except RuntimeError:  # loop closed
            pass

    def _load(self, loop: asyncio.AbstractEventLoop) -> bool:
        """Interactive worker: load the models (once), install the yield point, let the other worker go."""
        if self._analyzer is None:
            assert self._factory is not None
            try:
                self._analyzer = self._factory()
            except BaseException as exc:
                log.exception("inference queue: loading the models failed")
                # Close before start() learns of it, so no job can be admitted after the failure.
                self._fail(self._board.close(drain=False), WorkerCrashed(f"model loading failed: {exc}"))
                self._loaded.set()
                self._signal_ready(loop, exc)
                return False
            self._choose_gpu_decoder(self._analyzer)
        if not self._loaded.is_set():
            if self.settings.preempt_background:
                self._analyzer.set_yield_point(self._board.checkpoint)
                self._yields = True
            self._loaded.set()
        self._signal_ready(loop, None)
        return True

    def _worker_main(self, loop: asyncio.AbstractEventLoop, worker: Worker) -> None:
        """A model thread: (load,) then batch → predict → respond for its lanes until closed and drained."""
        crashes = self._consecutive_crashes[worker]
        if crashes:
            time.sleep(min(0.05 * 2 ** (crashes - 1), _MAX_RESTART_BACKOFF_S))
        try:
            if worker is Worker.INTERACTIVE:
                if not self._load(loop):
                    return
            else:
                self._loaded.wait()
                if self._analyzer is None:  # loading failed; the interactive worker reported it
                    return
            while (batch := self._board.next_batch(worker)) is not None:
                self._run_batch(batch, worker)
                self._consecutive_crashes[worker] = 0
        except BaseException as exc:
            self._on_crash(loop, worker, exc)
        finally:
            self._worker_exited()

    def _on_crash(self, loop: asyncio.AbstractEventLoop, worker: Worker, exc: BaseException) -> None:
        """Fail the batch that was running, count it, and hand the lanes to a fresh worker thread."""
        jobs = self._board.take_running(worker)
        log.error("inference worker %s crashed with %d job(s) in flight; restarting", worker.label, len(jobs),
                  exc_info=exc)
        self._fail(jobs, WorkerCrashed(f"the model worker crashed ({type(exc).__name__}: {exc}); it was restarted"))
        self._consecutive_crashes[worker] += 1
        self.metrics.worker_restarted()
        self._spawn_worker(loop, worker)  # also when closing: it drains what is left, then stops

    def _run_batch(self, batch: list[Job], worker: Worker) -> None:
        kind = batch[0].kind
        for job in batch:
            self.metrics.observe_stage("queue_wait", job.started_at - job.queued_at)
        predict: Callable[[list[Job]], list[Any]]
        if kind is JobKind.IMAGE:
            predict = self._predict_images
        elif kind is JobKind.FAST:
            predict = self._predict_fast
        elif kind is JobKind.CAPTION:
            predict = self._predict_captions
        else:
            predict = partial(self._predict_texts, kind)
        waited = time.perf_counter()
        # Background batches on an analyzer with yield points take the turn at the first one (just
        # before a model runs), so one held up outside the models blocks nobody.
        with self._board.model_turn(worker, lazy=self._yields and worker is not Worker.INTERACTIVE):
            started = time.perf_counter()
            self.metrics.observe_stage("turn_wait", started - waited)
            outcomes = predict_splitting_on_oom(
                predict, batch, is_oom=self._is_oom, on_split=lambda _size: self.metrics.oom_split()
            )
        self.metrics.observe_stage(f"predict_{kind}", time.perf_counter() - started)
        succeeded = sum(not isinstance(outcome, InferenceError) for outcome in outcomes)
        completes_images = kind in (JobKind.IMAGE, JobKind.CAPTION)  # an image is analysed once captioned
        self.metrics.observe_batch(kind, len(batch), images=succeeded if completes_images else 0)
        for job, outcome in zip(batch, outcomes, strict=True):
            if isinstance(outcome, InferenceError):
                job.settle(error=outcome)
            else:
                job.settle(result=outcome)
        self._board.finish(batch)

    def _predict_images(self, jobs: list[Job]) -> list[ImageAnalysis]:
        analyzer = self._analyzer
        assert analyzer is not None
        results = analyzer.analyze([job.payload for job in jobs])
        self._observe_roles(analyzer)
        return results

    def _predict_fast(self, jobs: list[Job]) -> list[ImageAnalysis]:
        analyzer = self._analyzer
        assert analyzer is not None
        results = analyzer.analyze_fast([job.payload for job in jobs], read=[job.read_text for job in jobs])
        self._observe_roles(analyzer)
        return results

    def _predict_captions(self, jobs: list[Job]) -> list[CaptionPart]:
        analyzer = self._analyzer
        assert analyzer is not None
        results = analyzer.caption([job.payload for job in jobs])
        self._observe_roles(analyzer)
        return results

    def _observe_roles(self, analyzer: AnalyzerLike) -> None:
        """Per-role seconds of the batch this thread just ran (read while it still holds the turn)."""
        timings = analyzer.last_timings
        for role in _ROLES:
            seconds = getattr(timings, role)
            if isinstance(seconds, (int, float)) and seconds:
                # "prepare" here is preprocessing the decode pool could not do ahead (models still loading).
                self.metrics.observe_stage("prepare_in_worker" if role == "prepare" else role, float(seconds))

    def _predict_texts(self, kind: JobKind, jobs: list[Job]) -> list[Any]:
        """All callers' texts in one model call, then each caller's rows back."""
        analyzer = self._analyzer
        assert analyzer is not None
        encode: Callable[[list[str]], Sequence[Any] | np.ndarray]
        if kind is JobKind.SENTIMENT:
            encode = analyzer.score_sentiment
        elif kind is JobKind.EMBED_TEXT:
            encode = analyzer.embed_texts
        else:
            encode = analyzer.clip_texts
        return encode_together(encode, [job.payload for job in jobs], what=str(kind))


if TYPE_CHECKING:  # a type checker proves the queue is a complete backend (the tests check it at run time)

    def _is_a_backend(queue: InferenceQueue) -> InferenceBackend:
        return queue
