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
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

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
#: How long close() waits for ``ray.shutdown`` (normally well under a second) before leaving it behind.
_SHUTDOWN_GRACE_S = 10.0
#: What start-up failures tell the operator to check (the same for every way joining fails).
_CHECK_THE_CLUSTER = (
    "check inference.ray_address (\"auto\" for the Ray node started on this machine with `ray start`, "
    "or the head's HOST:6379), that the cluster is up (`ray status`) and its port reachable from here, "
    "and, for a cluster on 127.0.0.1, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 (docs/scale-out-ray.md)"
)

_T = TypeVar("_T")


def _in_daemon_thread(function: Callable[[], _T], name: str) -> asyncio.Future[_T]:
    """``function()`` in a daemon thread of its own, as a future of the running loop.

    Not ``asyncio.to_thread``: the loop's default executor is joined when ``asyncio.run`` ends, so a
    call that never returns (``ray.init`` retries an unreachable cluster for as long as the process
    lives) would keep the process from exiting after its caller gave up. A daemon thread is simply
    left behind at exit; cancelling the future abandons the call, and its result is then dropped.
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[_T] = loop.create_future()

    def settle(value: Any, error: BaseException | None) -> None:
        if future.done():  # the caller gave up (cancelled) meanwhile
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(value)

    def call() -> None:
        value: Any = None
        error: BaseException | None = None
        try:
            value = function()
        except Exception as exc:
            error = exc
        except BaseException as exc:  # SystemExit and the like: meaningless to the awaiting task, so plainly a failure
            error = RuntimeError(f"{name}: {type(exc).__name__}: {exc}")
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits for this any more
            loop.call_soon_threadsafe(settle, value, error)

    threading.Thread(target=call, name=name, daemon=True).start()
    return future


class _NoSigtermWarning(logging.Filter):
    """Drops Ray's "SIGTERM handler is not set" warning: ``ray.init`` runs off the main thread on
    purpose (see :meth:`RayInferenceClient.start`) and the bot handles its own signals, so the
    line would only make a failed start-up look like two problems."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "SIGTERM handler is not set" not in record.getMessage()


logging.getLogger("ray._private.worker").addFilter(_NoSigtermWarning())


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
        # Set when start() gives up: a ray.init still running in its thread then undoes itself.
        self._abandoned = False
        self._ray_lock = threading.Lock()  # _owns_ray / _abandoned, between that thread and the loop
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
        """Join the Ray cluster, find the app, and wait for a replica to answer (models loaded).

        All of it within ``queue.job_timeout_s``, else :class:`InferenceError` naming the address or
        the app and what to check. ``ray.init`` retries an unreachable cluster on its own (a GCS
        address: for as long as the process lives), so it runs in a daemon thread that is abandoned
        on failure: the process can still exit at once, and a later successful join is undone.
        """
        if self._state != "new":
            return
        inference = self.settings.inference
        limit = self.settings.queue.job_timeout_s
        phase = "connect"
        try:
            async with asyncio.timeout(limit):
                if self._handle is None:
                    if not ray.is_initialized():  # else this process has joined already (tests, a caller)
                        await _in_daemon_thread(self._join, "imagebot-ray-join")
                    phase = "app"
                    self._handle = await _in_daemon_thread(
                        lambda: serve.get_app_handle(inference.ray_app), "imagebot-ray-app")
                phase = "app"
                self.replicas = [await self._handle.options(method_name="ready").remote()]
        except Exception as exc:
            self._state = "closed"
            with self._ray_lock:
                self._abandoned = True
            await self._disconnect()
            # One line: Ray's own messages often span several.
            reason = (f"no answer within {limit:g}s" if isinstance(exc, TimeoutError)
                      else " ".join(f"{type(exc).__name__}: {exc}".split()))
            if phase == "connect":
                detail = (f"cannot join the Ray cluster at {inference.ray_address!r} ({reason}); "
                          f"{_CHECK_THE_CLUSTER}")
            else:
                detail = (f"Ray Serve app {inference.ray_app!r} at {inference.ray_address!r} is not answering "
                          f"({reason}); deploy it with `{DEPLOY_COMMAND} --config PATH`")
            # Never shown on Discord (start-up ends before the login); the CLI prints it before the detail.
            raise InferenceError(detail, user_message="the inference backend could not start") from exc
        self._state = "running"
        log.info("inference on Ray Serve app %r: %s", inference.ray_app, self.replicas[0].get("model_ids"))

    def _join(self) -> None:
        """``ray.init`` at ``inference.ray_address``; blocking, in a daemon thread (see :meth:`start`).

        If start() gave up (or close() ran) while ``ray.init`` was still trying, a join that succeeds
        late is shut down again here rather than left open with nobody to close it.
        """
        ray.init(address=self.settings.inference.ray_address, log_to_driver=False, logging_level=logging.WARNING)
        with self._ray_lock:
            abandoned = self._abandoned
            self._owns_ray = not abandoned
        if abandoned:
            ray.shutdown()

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
        with self._ray_lock:  # closed while start() was still joining (Ctrl-C): a late join undoes itself
            self._abandoned = True
        await self._disconnect()

    async def _disconnect(self) -> None:
        """Leave Ray if this client joined it; bounded, in a daemon thread, so leaving cannot hang exit."""
        with self._ray_lock:
            owns, self._owns_ray = self._owns_ray, False
        if not owns:
            return
        try:
            await asyncio.wait_for(_in_daemon_thread(ray.shutdown, "imagebot-ray-shutdown"), _SHUTDOWN_GRACE_S)
        except TimeoutError:
            log.warning("ray.shutdown did not finish within %.0fs; leaving it behind", _SHUTDOWN_GRACE_S)

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
        read_text: bool = True,
    ) -> tuple[ImageAnalysis, DecodedImage | None]:
        """The full analysis (no tiers on a cluster): ``(complete record, None)``.

        The record has ``caption_pending`` False, so a caller never needs :meth:`caption` for it; the
        decoded image stays in the replica, hence None. ``read_text`` is accepted for the protocol
        and ignored: a complete record always has its words read (never ``text_pending``).
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
