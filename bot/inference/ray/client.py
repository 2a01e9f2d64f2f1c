"""The bot's side of the Ray Serve backend: a complete :class:`~bot.inference.backend.InferenceBackend`.

:class:`RayInferenceClient` has the async API of the in-process
:class:`~bot.inference.queue.InferenceQueue` (``start``/``close``/``analyze``/``analyze_fast``/
``caption``/``embed_texts``/``clip_texts``/``score_sentiment``/``metrics``) and submits over a Serve
:class:`~ray.serve.handle.DeploymentHandle`; several bot shard processes can share one deployment.

A cluster has no tiers and no priorities (see :mod:`bot.inference.ray.replica`), so here
``analyze_fast`` runs the full analysis (a complete record, ``caption_pending`` False, and no decoded
image: the bytes are decoded in the replica), ``caption`` — never needed after that — still works
(it sends the image as a lossless PNG and analyses it), and ``priority`` is accepted and ignored:
every request is served in arrival order.

Why the client retries: Serve does not resend a request whose replica died after accepting it (it
cannot know whether the work was idempotent). All of ours are pure functions of their inputs, so
resending is always safe, and a job is only given up (:class:`WorkerCrashed`) after
``inference.ray_retries`` resends or when its timeout runs out.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

import ray
from ray import serve
from ray.exceptions import ObjectLostError, RayActorError, RayTaskError, WorkerCrashedError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError, ReplicaUnavailableError

from bot.analysis import CaptionPart, ImageAnalysis
from bot.config import Settings
from bot.imaging import DecodedImage
from bot.inference.backend import BackendBase, InferenceBackend
from bot.inference.batching import JobKind, Priority
from bot.inference.errors import InferenceError, JobTimeout, QueueBusy, QueueClosed, WorkerCrashed, outcome_of
from bot.inference.metrics import QueueMetrics
from bot.inference.ray import DEPLOY_COMMAND
from bot.inference.ray.wire import Outcome, decoded_as_png

if TYPE_CHECKING:
    from ray.serve.handle import DeploymentHandle

__all__ = ["RayInferenceClient"]

log = logging.getLogger(__name__)

#: The replica method each text job calls.
_TEXT_METHODS = {
    JobKind.EMBED_TEXT: "embed_texts",
    JobKind.CLIP_TEXT: "clip_texts",
    JobKind.SENTIMENT: "score_sentiment",
}
_BACKOFF_FIRST_S = 0.2
_BACKOFF_MAX_S = 2.0


def _replica_failure(exc: BaseException) -> RayActorError | Exception | None:
    """The replica-death error inside ``exc`` (then resending is safe and right), else None."""
    retryable = (RayActorError, WorkerCrashedError, ObjectLostError, ReplicaUnavailableError,
                 DeploymentUnavailableError)
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, retryable):
            return current  # type: ignore[return-value]
        cause = getattr(current, "cause", None) if isinstance(current, RayTaskError) else None
        current = cause if isinstance(cause, BaseException) else current.__cause__
    return None


class RayInferenceClient(BackendBase):
    """The bot's side of the Ray Serve backend: all of :class:`~bot.inference.backend.InferenceBackend`,
    as :class:`~bot.inference.InferenceQueue` is, so either serves as ``services.queue``.

    Every call is one job: admitted (at most ``queue.max_queued`` in flight from this process, else
    :class:`QueueBusy` at once), sent over the deployment handle, resent if its replica died, and
    given up after ``queue.job_timeout_s`` (:class:`JobTimeout`) or ``inference.ray_retries``
    resends (:class:`WorkerCrashed`). ``metrics`` is a :class:`QueueMetrics` fed from this side:
    outcomes, end-to-end latency, the size of the batch each job rode in, model time per batch.

    ``handle`` lets tests (or a caller that already holds one) skip the lookup by app name.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        handle: DeploymentHandle | None = None,
        metrics: QueueMetrics | None = None,
    ) -> None:
        self.settings = settings
        self._handle = handle
        self._owns_ray = False
        self._state = "new"  # new -> running -> closing -> closed
        self._in_flight = 0
        self._idle: asyncio.Event | None = None  # made by close(), set when the last job ends
        self.retries_total = 0
        self._dead_replicas: set[str] = set()
        self.metrics = metrics or QueueMetrics()
        self.metrics.set_gauges(self._gauges)
        self.replicas: list[dict[str, Any]] = []

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Join the Ray cluster, find the app, and wait for a replica to answer (models loaded)."""
        if self._state != "new":
            return
        inference = self.settings.inference
        try:
            # Bounded: ray.init keeps retrying an unreachable cluster for minutes on its own.
            async with asyncio.timeout(self.settings.queue.job_timeout_s):
                if self._handle is None:
                    self._handle = await asyncio.to_thread(self._connect)
                self.replicas = [await self._handle.options(method_name="ready").remote()]
        except Exception as exc:
            self._state = "closed"
            await self._disconnect()
            raise InferenceError(
                f"Ray Serve app {inference.ray_app!r} at {inference.ray_address!r} is not answering "
                f"({type(exc).__name__}: {exc}); deploy it with `{DEPLOY_COMMAND} --config PATH`"
            ) from exc
        self._state = "running"
        log.info("inference on Ray Serve app %r: %s", inference.ray_app, self.replicas[0].get("model_ids"))

    def _connect(self) -> DeploymentHandle:
        """Join the cluster (unless this process already has) and look the app up; blocking.

        Runs in a worker thread so the event loop stays responsive; Ray then warns that it set no
        SIGTERM handler, which is right here: the bot handles its own signals.
        """
        inference = self.settings.inference
        if not ray.is_initialized():
            ray.init(address=inference.ray_address, log_to_driver=False, logging_level=logging.WARNING)
            self._owns_ray = True
        return serve.get_app_handle(inference.ray_app)

    async def close(self, *, drain: bool = True, timeout: float | None = None) -> None:  # noqa: ASYNC109
        """Stop taking jobs; with ``drain``, wait (up to ``timeout``) for this process's jobs in flight.

        The deployment keeps running: it is shared by every bot process, and outlives them.
        """
        if self._state in ("closing", "closed"):
            return
        self._state = "closing"
        if drain and self._in_flight:
            limit = self.settings.queue.job_timeout_s if timeout is None else timeout
            self._idle = asyncio.Event()
            try:
                await asyncio.wait_for(self._idle.wait(), limit)
            except TimeoutError:
                log.warning("Ray inference client: %d job(s) still in flight after %.1fs", self._in_flight, limit)
        self._state = "closed"
        await self._disconnect()

    async def _disconnect(self) -> None:
        if self._owns_ray:
            self._owns_ray = False
            await asyncio.to_thread(ray.shutdown)

    @property
    def running(self) -> bool:
        return self._state == "running"

    @property
    def analyzer(self) -> None:
        """No analyzer in this process: the models live in the replicas."""
        return None

    def _gauges(self) -> dict[str, float]:
        return {
            "waiting": 0,
            "running": self._in_flight,
            "max_queued": self.settings.queue.max_queued,
            "ray_retries": self.retries_total,
        }

    # ------------------------------------------------------------------ public API (as InferenceQueue)

    # `priority` is accepted for the InferenceQueue signature and ignored (see the module docstring).
    async def analyze(
        self,
        data: bytes | bytearray | memoryview,
        *,
        filename: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109
        priority: Priority = Priority.INTERACTIVE,
    ) -> ImageAnalysis:
        """Analyse untrusted image bytes on a replica (decoded there).

        Raises the same :class:`~bot.imaging.ImageRejected` subclass the decoder raised for a bad
        file, or an :class:`InferenceError` (:class:`QueueBusy`, :class:`JobTimeout`,
        :class:`WorkerCrashed`, :class:`OutOfMemory`, :class:`QueueClosed`).
        """
        result: ImageAnalysis = await self._run(JobKind.IMAGE, "analyze", timeout, bytes(data), filename)
        return result

    async def analyze_fast(
        self,
        data: bytes | bytearray | memoryview,
        *,
        filename: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109
        priority: Priority = Priority.BACKGROUND,
    ) -> tuple[ImageAnalysis, DecodedImage | None]:
        """The full analysis (no tiers on a cluster): ``(complete record, None)``.

        The record has ``caption_pending`` False, so a caller never needs :meth:`caption` for it; the
        decoded image stays in the replica, hence None.
        """
        record: ImageAnalysis = await self._run(JobKind.IMAGE, "analyze", timeout, bytes(data), filename)
        return record, None

    async def caption(
        self,
        decoded: DecodedImage,
        *,
        timeout: float | None = None,  # noqa: ASYNC109
        priority: Priority = Priority.BACKGROUND,
    ) -> CaptionPart:
        """The caption part of an already decoded image, for callers written against the local queue.

        Never needed after :meth:`analyze_fast` here (its records are complete). The image is sent as
        a lossless PNG (already upright and at most ``images.target_size``, so decoding it again in
        the replica changes no pixel) and fully analysed; its caption part is returned.
        """
        from bot.pipeline import caption_part_of

        data = await asyncio.to_thread(decoded_as_png, decoded)
        record: ImageAnalysis = await self._run(JobKind.CAPTION, "analyze", timeout, data, "decoded.png")
        return caption_part_of(record)

    async def _text_job(self, kind: JobKind, texts: list[str], job_timeout: float | None, priority: Priority) -> Any:
        """A text job (``embed_texts`` / ``clip_texts`` / ``score_sentiment``, from :class:`BackendBase`),
        sent to the replica method of the same name."""
        return await self._run(kind, _TEXT_METHODS[kind], job_timeout, texts)

    # ------------------------------------------------------------------ one job

    async def _run(self, kind: JobKind, method: str, job_timeout: float | None, *args: Any) -> Any:
        """admit → send (and resend) → unwrap; every call ends in exactly one counted outcome."""
        if self._state != "running":
            error: InferenceError = QueueClosed(f"the Ray inference client is {self._state}")
            self.metrics.job_finished(kind, error.code)
            raise error
        if self._in_flight >= self.settings.queue.max_queued:
            error = QueueBusy(f"{self._in_flight} jobs in flight (queue.max_queued)")
            self.metrics.job_finished(kind, error.code)
            raise error
        limit = self.settings.queue.job_timeout_s if job_timeout is None else job_timeout
        started = time.perf_counter()
        self._in_flight += 1
        try:
            scope = asyncio.timeout(limit)
            try:
                async with scope:
                    outcome = await self._send(method, args)
            except TimeoutError:
                if scope.expired():
                    raise JobTimeout(f"no result within {limit:g}s") from None
                raise
            value = outcome.unwrap()  # or the replica's refusal / failure, raised as the same type
        except BaseException as exc:
            self.metrics.job_finished(kind, outcome_of(exc))
            raise
        finally:
            self._in_flight -= 1
            if not self._in_flight and self._idle is not None:
                self._idle.set()
        self.metrics.job_finished(kind, "ok")
        self.metrics.observe_stage("latency", time.perf_counter() - started)
        self.metrics.observe_stage(f"predict_{kind}", outcome.predict_s)
        self.metrics.observe_batch(kind, outcome.batch_size, images=1 if kind is JobKind.IMAGE else 0)
        return value

    async def _send(self, method: str, args: tuple[Any, ...]) -> Outcome:
        """Send one request; resend it while its replica died, up to ``inference.ray_retries`` times.

        Only replica deaths are retried (the work never finished, so nothing is done twice that
        matters: analyses are pure). Application failures come back as :class:`Outcome` data and are
        not retried; back-pressure from the handle is :class:`QueueBusy`.
        """
        assert self._handle is not None
        retries = self.settings.inference.ray_retries
        attempt = 0
        while True:
            response = self._handle.options(method_name=method).remote(*args)
            try:
                outcome: Outcome = await response
                return outcome
            except asyncio.CancelledError:
                response.cancel()  # timed out or the caller went away: don't leave work on the replica
                raise
            except BackPressureError as exc:
                raise QueueBusy(f"the deployment's queue is full: {exc}") from exc
            except Exception as exc:
                failure = _replica_failure(exc)
                if failure is None:
                    raise WorkerCrashed(f"Ray Serve request failed: {type(exc).__name__}: {exc}") from exc
                self._note_replica_death(failure)
                if attempt >= retries:
                    raise WorkerCrashed(
                        f"replica died {attempt + 1} times under this job ({type(failure).__name__}); gave up"
                    ) from exc
            attempt += 1
            self.retries_total += 1
            delay = min(_BACKOFF_FIRST_S * 2 ** (attempt - 1), _BACKOFF_MAX_S)
            log.warning("%s: replica died mid-request; resending (retry %d of %d) in %.1fs",
                        method, attempt, retries, delay)
            await asyncio.sleep(delay)

    def _note_replica_death(self, failure: BaseException) -> None:
        """Count each dead replica once (many jobs see the same death) as a worker restart."""
        actor = getattr(failure, "actor_id", None) or getattr(failure, "replica_id", None)
        key = str(actor) if actor else f"unknown-{len(self._dead_replicas)}"
        if key not in self._dead_replicas:
            self._dead_replicas.add(key)
            self.metrics.worker_restarted()


if TYPE_CHECKING:  # a type checker proves the client is a complete backend (the tests check it at run time)

    def _is_a_backend(client: RayInferenceClient) -> InferenceBackend:
        return client
