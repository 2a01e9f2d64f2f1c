"""One batched path for all model work: the async API the bot awaits, a model worker thread behind it.

Stages, in the order a job meets them (the vocabulary of Triton's dynamic batcher, Ray Serve's
``@serve.batch`` and LitServe):

1. **admit** — on the event loop, synchronously: a slot out of ``queue.max_queued`` or
   :class:`QueueBusy` at once.
2. **decode** — in a thread pool of ``queue.decode_workers``: :func:`bot.imaging.decode_image`
   (sniff, bomb checks, DCT-domain downscale) inside a killable worker process
   (:class:`bot.decode_sandbox.DecodeSandbox`, one per decode thread: a hostile file that makes the
   codec spin or balloon is killed at ``images.decode_timeout_s`` / ``decode_memory_mb``), then
   :meth:`Analyzer.prepare` (the models' own resize/normalise) in the thread. This CPU work overlaps
   the model compute of the batch before.
3. **batch** — the worker thread takes up to ``max_batch_size`` jobs of one kind, waiting at most
   ``max_wait_ms`` after the first one (:meth:`JobBoard.next_batch`).
4. **predict** — each model role runs once for the whole batch, on the worker thread only: model
   work never runs on the event loop, and a single thread owns the GPU (no contention, no locks).
   Out of memory → the batch is split in halves and retried, down to single jobs.
5. **respond** — each caller's future is resolved on its own loop via ``call_soon_threadsafe``.

Failure handling: a cancelled or timed-out caller releases its slot and its job never runs if it
had not started; an unexpected exception in the worker fails the jobs of the batch it was running
with :class:`WorkerCrashed` and a new worker thread takes over the remaining queue; a bad file fails
only its own caller with the decoder's :class:`~bot.imaging.ImageRejected`.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any, Protocol, runtime_checkable

import numpy as np

from bot.analysis import ImageAnalysis, Sentiment
from bot.config import ImageSettings, QueueSettings, Settings
from bot.decode_sandbox import DecodeSandbox
from bot.imaging import DecodedImage
from bot.inference.batching import Job, JobBoard, JobKind, is_out_of_memory, predict_splitting_on_oom
from bot.inference.errors import InferenceError, JobTimeout, QueueClosed, WorkerCrashed, outcome_of
from bot.inference.metrics import QueueMetrics

__all__ = ["AnalyzerLike", "InferenceQueue"]

log = logging.getLogger(__name__)

_ROLES = ("caption", "clip", "text", "prepare")
_MAX_RESTART_BACKOFF_S = 2.0


@runtime_checkable
class AnalyzerLike(Protocol):
    """What the queue needs from :class:`bot.pipeline.Analyzer` (tests pass small fakes).

    Optional extras, used when present: ``prepare(decoded)`` (CPU preprocessing, run in the decode
    pool; ``analyze`` then receives its output) and ``last_timings`` (per-role seconds of the last
    ``analyze`` call, for metrics).
    """

    def analyze(self, images: Sequence[Any]) -> list[ImageAnalysis]: ...

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray: ...

    def clip_texts(self, texts: Sequence[str]) -> np.ndarray: ...


class InferenceQueue:
    """Micro-batching, bounded, thread-backed front of the models.

    ``analyzer`` is a loaded :class:`~bot.pipeline.Analyzer` (or anything :class:`AnalyzerLike`), or
    a zero-argument factory returning one: the factory runs on the worker thread, so minutes of
    model loading never block the event loop, and jobs submitted meanwhile simply wait.

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
    ) -> None:
        self.settings = queue_settings or QueueSettings()
        self.image_settings = image_settings or ImageSettings()
        # The decoder processes: shared when given (Services shares them with /vibe), else our own.
        self._owns_decoder = decoder is None
        self.decoder = decoder or DecodeSandbox.from_settings(self.image_settings, workers=self.settings.decode_workers)
        if isinstance(analyzer, AnalyzerLike) and not isinstance(analyzer, type):  # a class is a factory
            self._analyzer: AnalyzerLike | None = analyzer
            self._factory: Callable[[], AnalyzerLike] | None = None
        else:
            self._analyzer, self._factory = None, analyzer
        self._is_oom = is_oom
        self._board = JobBoard(
            max_batch_size=self.settings.max_batch_size,
            max_wait_s=self.settings.max_wait_ms / 1000.0,
            max_queued=self.settings.max_queued,
        )
        self.metrics = metrics or QueueMetrics()
        self.metrics.set_gauges(self._gauges)
        self._decode_pool: ThreadPoolExecutor | None = None
        self._thread: threading.Thread | None = None
        self._thread_lock = threading.Lock()
        self._stopped = threading.Event()
        self._ready: asyncio.Future[None] | None = None
        self._consecutive_crashes = 0
        self._state = "new"  # new -> starting -> running -> closing -> closed

    @classmethod
    def from_settings(cls, settings: Settings, **kwargs: Any) -> InferenceQueue:
        """A queue that loads the configured models on its worker thread when started."""
        from bot.pipeline import Analyzer

        return cls(partial(Analyzer.from_settings, settings), settings.queue, settings.images, **kwargs)

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Start the decode pool and the worker; returns once the models are loaded.

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
        self._decode_pool = ThreadPoolExecutor(
            max_workers=self.settings.decode_workers, thread_name_prefix="imagebot-decode"
        )
        self._board.open()
        self._spawn_worker(loop)
        try:
            await asyncio.shield(self._ready)
        except Exception:  # the models failed to load: the worker has already closed the board
            self._state = "closed"
            self._decode_pool.shutdown(wait=False, cancel_futures=True)
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
            # Not cancel_futures: a cancelled decode would surface as a bare CancelledError in its
            # caller; a finished one finds its job already failed with QueueClosed, which is the answer.
            self._decode_pool.shutdown(wait=False)
        if self._owns_decoder:
            await asyncio.to_thread(self.decoder.close)
        self._state = "closed"

    async def __aenter__(self) -> InferenceQueue:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

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
    ) -> ImageAnalysis:
        """Decode untrusted image bytes and analyse them in the next batch.

        Raises :class:`~bot.imaging.ImageRejected` for a bad file (this caller only), or an
        :class:`InferenceError`: :class:`QueueBusy` (at once), :class:`JobTimeout`,
        :class:`OutOfMemory`, :class:`WorkerCrashed`, :class:`QueueClosed`.
        """
        result: ImageAnalysis = await self._run(
            JobKind.IMAGE, timeout, decode=partial(self._decode, bytes(data), filename)
        )
        return result

    async def embed_texts(self, texts: Sequence[str], *, timeout: float | None = None) -> np.ndarray:  # noqa: ASYNC109
        """Caption-space (MiniLM) vectors, one row per text, batched with other callers' texts."""
        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        result: np.ndarray = await self._run(JobKind.EMBED_TEXT, timeout, payload=list(texts))
        return result

    async def clip_texts(self, texts: Sequence[str], *, timeout: float | None = None) -> np.ndarray:  # noqa: ASYNC109
        """CLIP text vectors (text→image search), one row per text."""
        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        result: np.ndarray = await self._run(JobKind.CLIP_TEXT, timeout, payload=list(texts))
        return result

    async def score_sentiment(self, texts: Sequence[str], *, timeout: float | None = None) -> list[Sentiment]:  # noqa: ASYNC109
        """The sentiment model on free text (one :class:`Sentiment` per text), batched like the rest."""
        if not texts:
            return []
        result: list[Sentiment] = await self._run(JobKind.SENTIMENT, timeout, payload=list(texts))
        return result

    # ------------------------------------------------------------------ caller side

    async def _run(
        self,
        kind: JobKind,
        job_timeout: float | None,
        *,
        payload: Any = None,
        decode: Callable[[], Any] | None = None,
    ) -> Any:
        """admit → (decode) → enqueue → await; every call ends in exactly one counted outcome."""
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        try:
            job = self._board.admit(kind, loop)
        except InferenceError as exc:
            self.metrics.job_finished(kind, exc.code)
            raise
        limit = self.settings.job_timeout_s if job_timeout is None else job_timeout
        try:
            result = await self._await_job(job, limit, loop, payload, decode)
        except BaseException as exc:
            self._board.release(job)  # frees the slot; no-op if the job already runs or ran
            self.metrics.job_finished(kind, outcome_of(exc))
            raise
        self.metrics.job_finished(kind, "ok")
        self.metrics.observe_stage("latency", time.perf_counter() - started)
        return result

    async def _await_job(
        self,
        job: Job,
        limit: float,
        loop: asyncio.AbstractEventLoop,
        payload: Any,
        decode: Callable[[], Any] | None,
    ) -> Any:
        scope = asyncio.timeout(limit)
        try:
            async with scope:
                if decode is not None:
                    assert self._decode_pool is not None
                    payload = await loop.run_in_executor(self._decode_pool, decode)
                self._board.enqueue(job, payload)  # refused only after a non-draining close: future failed
                return await job.future
        except TimeoutError:
            if scope.expired():
                raise JobTimeout(f"no result within {limit:g}s") from None
            raise

    def _decode(self, data: bytes, filename: str | None) -> DecodedImage | Any:
        """Decode pool: bytes → upright RGB ≤ target_size → model-ready tensors (when possible)."""
        started = time.perf_counter()
        decoded = self.decoder.decode(data, filename=filename)
        prepare = getattr(self._analyzer, "prepare", None)  # None while the models are loading
        result: Any = decoded
        if callable(prepare):
            try:
                result = prepare(decoded)
            except Exception as exc:  # a model-side preprocessing bug must not look like a bad file
                raise InferenceError(f"preprocessing failed: {type(exc).__name__}: {exc}") from exc
        self.metrics.observe_stage("decode", time.perf_counter() - started)
        return result

    def _fail(self, jobs: Sequence[Job], error: InferenceError) -> None:
        for job in jobs:
            job.settle(error=error)

    # ------------------------------------------------------------------ worker side

    def _spawn_worker(self, loop: asyncio.AbstractEventLoop) -> None:
        with self._thread_lock:
            self._stopped.clear()
            self._thread = threading.Thread(
                target=self._worker_main, args=(loop,), name="imagebot-inference-worker", daemon=True
            )
            self._thread.start()

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

    def _worker_main(self, loop: asyncio.AbstractEventLoop) -> None:
        """The model thread: load (once), then batch → predict → respond until closed and drained."""
        if self._consecutive_crashes:
            time.sleep(min(0.05 * 2 ** (self._consecutive_crashes - 1), _MAX_RESTART_BACKOFF_S))
        try:
            if self._analyzer is None:
                assert self._factory is not None
                try:
                    self._analyzer = self._factory()
                except BaseException as exc:
                    log.exception("inference queue: loading the models failed")
                    # Close before start() learns of it, so no job can be admitted after the failure.
                    self._fail(self._board.close(drain=False), WorkerCrashed(f"model loading failed: {exc}"))
                    self._stopped.set()
                    self._signal_ready(loop, exc)
                    return
            self._signal_ready(loop, None)
            while (batch := self._board.next_batch()) is not None:
                self._run_batch(batch)
                self._consecutive_crashes = 0
        except BaseException as exc:
            self._on_crash(loop, exc)
            return
        self._stopped.set()

    def _on_crash(self, loop: asyncio.AbstractEventLoop, exc: BaseException) -> None:
        """Fail the batch that was running, count it, and hand the queue to a fresh worker thread."""
        jobs = self._board.take_running()
        log.error("inference worker crashed with %d job(s) in flight; restarting", len(jobs), exc_info=exc)
        self._fail(jobs, WorkerCrashed(f"the model worker crashed ({type(exc).__name__}: {exc}); it was restarted"))
        self._consecutive_crashes += 1
        self.metrics.worker_restarted()
        self._spawn_worker(loop)  # also when closing: it drains what is left, then stops

    def _run_batch(self, batch: list[Job]) -> None:
        kind = batch[0].kind
        for job in batch:
            self.metrics.observe_stage("queue_wait", job.started_at - job.queued_at)
        started = time.perf_counter()
        predict = self._predict_images if kind is JobKind.IMAGE else partial(self._predict_texts, kind)
        outcomes = predict_splitting_on_oom(
            predict, batch, is_oom=self._is_oom, on_split=lambda _size: self.metrics.oom_split()
        )
        self.metrics.observe_stage(f"predict_{kind}", time.perf_counter() - started)
        succeeded = sum(not isinstance(outcome, InferenceError) for outcome in outcomes)
        self.metrics.observe_batch(kind, len(batch), images=succeeded if kind is JobKind.IMAGE else 0)
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
        timings = getattr(analyzer, "last_timings", None)
        for role in _ROLES:
            seconds = getattr(timings, role, None)
            if isinstance(seconds, (int, float)):
                # "prepare" here is preprocessing the decode pool could not do ahead (models still loading).
                self.metrics.observe_stage("prepare_in_worker" if role == "prepare" else role, float(seconds))
        return results

    def _predict_texts(self, kind: JobKind, jobs: list[Job]) -> list[np.ndarray]:
        """All callers' texts in one model call, then each caller's rows back."""
        analyzer = self._analyzer
        assert analyzer is not None
        texts = [text for job in jobs for text in job.payload]
        outputs: Any
        if kind is JobKind.SENTIMENT:
            outputs = list(_score_sentiment(analyzer, texts))
        else:
            encode = analyzer.embed_texts if kind is JobKind.EMBED_TEXT else analyzer.clip_texts
            outputs = np.asarray(encode(texts))
        if len(outputs) != len(texts):
            raise RuntimeError(f"{kind} returned {len(outputs)} results for {len(texts)} texts")
        results, offset = [], 0
        for job in jobs:
            rows = outputs[offset : offset + len(job.payload)]
            results.append(rows.copy() if isinstance(rows, np.ndarray) else rows)
            offset += len(job.payload)
        return results


def _score_sentiment(analyzer: AnalyzerLike, texts: list[str]) -> Sequence[Sentiment]:
    """``analyzer.score_sentiment`` (the Analyzer's), else its sentiment role directly."""
    score = getattr(analyzer, "score_sentiment", None)
    if score is None:
        score = analyzer.sentiment.score  # type: ignore[attr-defined]
    result: Sequence[Sentiment] = score(texts)
    return result
