"""Scale-out of the model work on Ray Serve: the same analysis code, run as replicas on a Ray cluster.

Two halves, selected by ``[inference] backend = "ray"``:

- :class:`InferenceDeployment` — a Ray Serve deployment whose replicas each load
  :meth:`bot.pipeline.Analyzer.from_settings` (the very code the in-process
  :class:`~bot.inference.InferenceQueue` runs) and batch concurrent requests with ``@serve.batch``
  (``queue.max_batch_size`` / ``queue.max_wait_ms``). Image bytes are decoded *inside* the replica
  with :func:`bot.imaging.decode_image`, so the bot ships raw attachment bytes and never needs the
  pixels itself. Replicas ask for ``inference.ray_gpus_per_replica`` GPUs (0.5 puts two on a GPU),
  ``inference.ray_replicas`` of them, or an autoscaling range.
- :class:`RayInferenceClient` — the bot side: the same async API as ``InferenceQueue``
  (``start``/``close``/``analyze``/``analyze_fast``/``caption``/``embed_texts``/``clip_texts``/
  ``score_sentiment``/``metrics``), submitting over a Serve :class:`~ray.serve.handle.DeploymentHandle`.
  Several bot shard processes can share one deployment.

The local queue's two analysis tiers and two priorities are a small-host mechanism (one CPU box where
BLIP is most of the cost and a person must not wait behind indexing). A Ray cluster is sized for the
load instead, so here ``analyze_fast`` runs the full analysis (a complete record, ``caption_pending``
False, and no decoded image: the bytes are decoded in the replica), ``caption`` — never needed after
that — still works (it re-encodes the image losslessly and analyses it), and ``priority`` is
accepted and ignored: every request is served in arrival order.

Why results travel as an :class:`Outcome` envelope rather than as raised exceptions: an exception
raised in a replica reaches the caller wrapped in a ``RayTaskError`` (a new class whose name is not
the original's), and exceptions with custom ``__init__`` signatures (``ImageTooLarge(size, limit)``)
do not survive pickling. The envelope carries a bad file's refusal as plain data, and the client
rebuilds the *same* :class:`~bot.imaging.ImageRejected` subclass with the same ``user_message``.

Why the client retries: Serve does not resend a request whose replica died after accepting it (it
cannot know whether the work was idempotent). All of ours are pure functions of their inputs, so
resending is always safe, and a job is only given up (:class:`WorkerCrashed`) after
``inference.ray_retries`` resends or when its timeout runs out.

Deploy with ``python -m bot.inference.ray_serve --config PATH`` (see ``docs/scale-out-ray.md``).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import ray
from ray import serve
from ray.exceptions import ObjectLostError, RayActorError, RayTaskError, WorkerCrashedError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError, ReplicaUnavailableError

from bot import imaging
from bot.analysis import CaptionPart, ImageAnalysis, Sentiment
from bot.config import ConfigError, Settings, load_settings
from bot.decode_sandbox import DecodeSandbox
from bot.imaging import DecodedImage, ImageRejected
from bot.inference.batching import JobKind, Priority, predict_splitting_on_oom
from bot.inference.errors import (
    InferenceError,
    JobTimeout,
    OutOfMemory,
    QueueBusy,
    QueueClosed,
    WorkerCrashed,
    outcome_of,
)
from bot.inference.metrics import QueueMetrics

if TYPE_CHECKING:
    from ray.serve.handle import DeploymentHandle
    from starlette.requests import Request
    from starlette.responses import Response

__all__ = [
    "InferenceDeployment",
    "Outcome",
    "RayInferenceClient",
    "build_app",
    "deploy",
    "main",
]

log = logging.getLogger(__name__)

HTTP_ROUTE_PREFIX = "/imagebot"
_BACKOFF_FIRST_S = 0.2
_BACKOFF_MAX_S = 2.0

# ---------------------------------------------------------------------------------------- wire format


@dataclass(frozen=True)
class Outcome:
    """What a replica answers for one request: a result, a refused file, or a failure, as plain data.

    ``batch_size`` and ``predict_s`` describe the model batch the request rode in (for the client's
    metrics; they are 0 for a refusal that never reached the models).
    """

    status: Literal["ok", "rejected", "error"]
    value: Any = None
    error: dict[str, Any] = field(default_factory=dict)
    batch_size: int = 0
    predict_s: float = 0.0
    replica: str = ""


def _rejected(exc: ImageRejected) -> Outcome:
    """A decoder refusal as data: its class name, message, and simple attributes (size, limit, ...)."""
    attributes = {
        key: value
        for key, value in vars(exc).items()
        if isinstance(value, (str, int, float, bool, type(None)))
    }
    return Outcome(
        "rejected",
        error={
            "type": type(exc).__name__,
            "code": exc.code,
            "user_message": exc.user_message,
            "message": str(exc),
            "attributes": attributes,
        },
    )


def rebuild_rejection(info: dict[str, Any]) -> ImageRejected:
    """The :class:`ImageRejected` subclass a replica raised, rebuilt on the client side.

    Only classes defined in :mod:`bot.imaging` that derive from :class:`ImageRejected` are rebuilt
    (a name from the wire never picks an arbitrary class); anything else becomes the base class
    with the same ``code`` and ``user_message``.
    """
    cls = getattr(imaging, str(info.get("type", "")), None)
    if not (isinstance(cls, type) and issubclass(cls, ImageRejected)):
        cls = ImageRejected
    exc = cls.__new__(cls)
    Exception.__init__(exc, info.get("message") or info.get("user_message") or cls.default_message)
    exc.__dict__.update(info.get("attributes") or {})
    exc.user_message = info.get("user_message") or cls.default_message
    if info.get("code") and info["code"] != cls.code:
        exc.code = info["code"]  # type: ignore[misc]  # instance attribute, as ImageRejected(code=...) does
    return exc


_ERROR_TYPES: dict[str, type[InferenceError]] = {
    cls.code: cls for cls in (QueueBusy, JobTimeout, WorkerCrashed, OutOfMemory, QueueClosed)
}


def _failed(exc: BaseException, code: str | None = None) -> Outcome:
    if isinstance(exc, InferenceError):
        return Outcome("error", error={"code": code or exc.code, "detail": str(exc)})
    return Outcome("error", error={"code": code or WorkerCrashed.code, "detail": f"{type(exc).__name__}: {exc}"})


def rebuild_error(info: dict[str, Any]) -> InferenceError:
    """The client-side :class:`InferenceError` for a replica's ``error`` outcome."""
    cls = _ERROR_TYPES.get(str(info.get("code")), InferenceError)
    return cls(str(info.get("detail") or "") or None)


# ---------------------------------------------------------------------------------------- replica side


def _consume_flag(path: str | None) -> bool:
    """True exactly once per flag file, across all replicas (unlink is atomic)."""
    if not path:
        return False
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    return True


@serve.deployment(name="InferenceDeployment", max_ongoing_requests=64)
class InferenceDeployment:
    """One replica: the configured models behind batched endpoints, one thread owning the accelerator.

    ``crash_once_file`` is a fault-injection hook for tests and drills: if that file exists when an
    image batch starts, it is removed and the replica process exits at once (``os._exit``), exactly
    like a segfault or an OOM kill mid-batch. Leave it None in production.
    """

    def __init__(self, settings: Settings, crash_once_file: str | None = None) -> None:
        from bot.pipeline import Analyzer  # heavy (torch); the client side never imports it

        self.settings = settings
        self.crash_once_file = crash_once_file
        self.replica = _replica_tag()
        # Model work on one thread (as in the local queue: no two batches fight over the GPU);
        # decoding of untrusted bytes on a small pool so it overlaps the models.
        self._model_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="imagebot-model")
        self._decode_pool = ThreadPoolExecutor(
            max_workers=settings.queue.decode_workers, thread_name_prefix="imagebot-decode"
        )
        # Untrusted bytes are decoded in killable processes, as in the local queue (bot/decode_sandbox.py).
        self.decoder = DecodeSandbox.from_settings(settings.images, workers=settings.queue.decode_workers)
        self.analyzer = Analyzer.from_settings(settings)
        # @serve.batch parameters are fixed at class definition; these setters apply the config's.
        wait_s = settings.queue.max_wait_ms / 1000.0
        for batched in (self._image_batch, self._embed_batch, self._clip_batch, self._sentiment_batch):
            batched.set_max_batch_size(settings.queue.max_batch_size)
            batched.set_batch_wait_timeout_s(wait_s)
        log.info("replica %s ready: %s", self.replica, self.analyzer.model_ids)

    # ---------------------------------------------------------------- endpoints (handle methods)

    async def ready(self) -> dict[str, Any]:
        """Which models this replica serves, and where (the client's start-up check)."""
        return {"replica": self.replica, "pid": os.getpid(), "model_ids": self.analyzer.model_ids,
                "device": str(self.analyzer.device)}

    async def analyze(self, data: bytes, filename: str | None = None) -> Outcome:
        """Decode untrusted bytes here (a bad file fails only its own request), then batch."""
        loop = asyncio.get_running_loop()
        try:
            prepared = await loop.run_in_executor(self._decode_pool, self._decode, data, filename)
        except ImageRejected as exc:
            return _rejected(exc)
        except Exception as exc:  # a preprocessing bug must not look like a bad file
            return _failed(exc, InferenceError.code)
        return await self._image_batch(prepared)

    async def embed_texts(self, texts: list[str]) -> Outcome:
        return await self._embed_batch(list(texts))

    async def clip_texts(self, texts: list[str]) -> Outcome:
        return await self._clip_batch(list(texts))

    async def score_sentiment(self, texts: list[str]) -> Outcome:
        return await self._sentiment_batch(list(texts))

    async def __call__(self, request: Request) -> Response:
        """HTTP ingress (when deployed with a route prefix), for callers that are not Python/Ray.

        ``POST <prefix>/analyze[?filename=x]`` with the raw image as the body; ``POST
        <prefix>/embed_texts | clip_texts | score_sentiment`` with ``{"texts": [...]}``. Answers JSON:
        ``{"analysis": {...}}`` / ``{"vectors": [[...]]}`` / ``{"sentiments": [...]}``, or
        ``{"error": code, "user_message": ...}`` with 422 (bad file) or 500.
        """
        from starlette.responses import JSONResponse

        route = request.url.path.rstrip("/").rsplit("/", 1)[-1]
        if request.method != "POST":
            return JSONResponse({"error": "method_not_allowed"}, status_code=405)
        if route == "analyze":
            outcome = await self.analyze(await request.body(), request.query_params.get("filename"))
        elif route in ("embed_texts", "clip_texts", "score_sentiment"):
            try:
                texts = (await request.json()).get("texts")
            except Exception:
                texts = None
            if not (isinstance(texts, list) and all(isinstance(text, str) for text in texts)):
                return JSONResponse({"error": "bad_request", "detail": 'expected {"texts": [str, ...]}'}, 400)
            outcome = await getattr(self, route)(texts)
        else:
            return JSONResponse({"error": "not_found"}, status_code=404)
        if outcome.status == "rejected":
            return JSONResponse({"error": outcome.error["code"], "user_message": outcome.error["user_message"]}, 422)
        if outcome.status == "error":
            error = rebuild_error(outcome.error)
            return JSONResponse({"error": error.code, "user_message": error.user_message}, 500)
        if route == "analyze":
            return JSONResponse({"analysis": outcome.value.to_dict()})
        if route == "score_sentiment":
            return JSONResponse({"sentiments": [asdict(item) for item in outcome.value]})
        return JSONResponse({"vectors": np.asarray(outcome.value).tolist()})

    # ---------------------------------------------------------------- batches

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.01)
    async def _image_batch(self, items: list[Any]) -> list[Outcome]:
        return await self._on_model_thread(self._predict_images, items)

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.01)
    async def _embed_batch(self, requests: list[list[str]]) -> list[Outcome]:
        return await self._on_model_thread(self._texts(self.analyzer.embed_texts), requests)

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.01)
    async def _clip_batch(self, requests: list[list[str]]) -> list[Outcome]:
        return await self._on_model_thread(self._texts(self.analyzer.clip_texts), requests)

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.01)
    async def _sentiment_batch(self, requests: list[list[str]]) -> list[Outcome]:
        return await self._on_model_thread(self._texts(self.analyzer.score_sentiment), requests)

    async def _on_model_thread(self, predict: Callable[[list[Any]], list[Any]], items: list[Any]) -> list[Outcome]:
        """Run one batch on the model thread; every request gets its own :class:`Outcome`.

        Out of memory splits the batch in halves (the local queue's rule, same helper); any other
        exception fails this batch's requests with ``worker_crashed`` instead of killing the replica.
        """
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        try:
            results = await loop.run_in_executor(self._model_thread, predict_splitting_on_oom, predict, items)
        except Exception as exc:
            log.exception("replica %s: a batch of %d failed", self.replica, len(items))
            return [_failed(exc)] * len(items)
        seconds = time.perf_counter() - started
        return [
            _failed(result) if isinstance(result, InferenceError)
            else Outcome("ok", result, batch_size=len(items), predict_s=seconds, replica=self.replica)
            for result in results
        ]

    def _decode(self, data: bytes, filename: str | None) -> Any:
        return self.analyzer.prepare(self.decoder.decode(data, filename=filename, text_size=self.analyzer.text_size))

    def _predict_images(self, items: list[Any]) -> list[ImageAnalysis]:
        if _consume_flag(self.crash_once_file):
            log.error("replica %s: crash_once_file found, exiting mid-batch of %d", self.replica, len(items))
            os._exit(70)
        return self.analyzer.analyze(items)

    @staticmethod
    def _texts(encode: Callable[[list[str]], Any]) -> Callable[[list[list[str]]], list[Any]]:
        """All requests' texts in one model call, then each request's rows back (as the local queue)."""

        def predict(requests: list[list[str]]) -> list[Any]:
            texts = [text for request in requests for text in request]
            rows = encode(texts) if texts else []
            if len(rows) != len(texts):
                raise RuntimeError(f"{len(rows)} results for {len(texts)} texts")
            results, offset = [], 0
            for request in requests:
                chunk = rows[offset : offset + len(request)]
                results.append(chunk.copy() if isinstance(chunk, np.ndarray) else list(chunk))
                offset += len(request)
            return results

        return predict


def _replica_tag() -> str:
    try:
        return str(serve.get_replica_context().replica_tag)
    except Exception:  # outside Serve (unit tests constructing the class directly)
        return f"pid-{os.getpid()}"


# ---------------------------------------------------------------------------------------- deploying


def _without_secrets(settings: Settings) -> Settings:
    """Settings safe to ship to the cluster: Serve stores deployment arguments in Ray's GCS."""
    return settings.model_copy(update={"discord": settings.discord.model_copy(update={"token": None})})


def build_app(
    settings: Settings,
    *,
    autoscaling: tuple[int, int] | None = None,
    num_cpus: float = 1.0,
    crash_once_file: str | None = None,
) -> serve.Application:
    """The Serve application for ``settings``: replicas, GPUs per replica and batching from config.

    ``autoscaling=(min, max)`` replaces the fixed ``inference.ray_replicas`` with Serve's request-
    based autoscaler, aiming at one full batch (``queue.max_batch_size``) in flight per replica.
    ``max_ongoing_requests`` is two batches, so the next batch forms while one runs; beyond that,
    requests wait in the caller's handle, at most ``queue.max_queued`` of them (then QueueBusy).
    """
    batch = settings.queue.max_batch_size
    options: dict[str, Any] = {
        "ray_actor_options": {"num_gpus": settings.inference.ray_gpus_per_replica, "num_cpus": num_cpus},
        "max_ongoing_requests": 2 * batch,
        "max_queued_requests": settings.queue.max_queued,
    }
    if autoscaling is None:
        options["num_replicas"] = settings.inference.ray_replicas
    else:
        low, high = autoscaling
        options["autoscaling_config"] = {
            "min_replicas": low,
            "initial_replicas": max(low, min(settings.inference.ray_replicas, high)),
            "max_replicas": high,
            "target_ongoing_requests": batch,
        }
    return InferenceDeployment.options(**options).bind(_without_secrets(settings), crash_once_file)


def deploy(
    settings: Settings,
    *,
    route_prefix: str | None = None,
    autoscaling: tuple[int, int] | None = None,
    num_cpus: float = 1.0,
    crash_once_file: str | None = None,
) -> DeploymentHandle:
    """Deploy (or update in place) the app named ``inference.ray_app`` on the connected Ray cluster.

    Returns once every replica has loaded its models. ``route_prefix`` None: reachable through
    handles only (no HTTP route).
    """
    app = build_app(settings, autoscaling=autoscaling, num_cpus=num_cpus, crash_once_file=crash_once_file)
    return serve.run(app, name=settings.inference.ray_app, route_prefix=route_prefix)


# ---------------------------------------------------------------------------------------- client side


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


class RayInferenceClient:
    """The bot's side of the Ray Serve backend: a drop-in for :class:`~bot.inference.InferenceQueue`.

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
                f"({type(exc).__name__}: {exc}); deploy it with `python -m bot.inference.ray_serve --config PATH`"
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

    async def __aenter__(self) -> RayInferenceClient:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

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

        data = await asyncio.to_thread(_png_bytes, decoded)
        record: ImageAnalysis = await self._run(JobKind.CAPTION, "analyze", timeout, data, "decoded.png")
        return caption_part_of(record)

    async def embed_texts(
        self,
        texts: Sequence[str],
        *,
        timeout: float | None = None,  # noqa: ASYNC109
        priority: Priority = Priority.INTERACTIVE,
    ) -> np.ndarray:
        """Caption-space (MiniLM) vectors, one row per text."""
        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        result: np.ndarray = await self._run(JobKind.EMBED_TEXT, "embed_texts", timeout, list(texts))
        return result

    async def clip_texts(
        self,
        texts: Sequence[str],
        *,
        timeout: float | None = None,  # noqa: ASYNC109
        priority: Priority = Priority.INTERACTIVE,
    ) -> np.ndarray:
        """CLIP text vectors (text→image search), one row per text."""
        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        result: np.ndarray = await self._run(JobKind.CLIP_TEXT, "clip_texts", timeout, list(texts))
        return result

    async def score_sentiment(
        self,
        texts: Sequence[str],
        *,
        timeout: float | None = None,  # noqa: ASYNC109
        priority: Priority = Priority.INTERACTIVE,
    ) -> list[Sentiment]:
        """Text sentiment (the configured sentiment model), one per text."""
        if not texts:
            return []
        result: list[Sentiment] = await self._run(JobKind.SENTIMENT, "score_sentiment", timeout, list(texts))
        return result

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
            if outcome.status == "rejected":
                raise rebuild_rejection(outcome.error)
            if outcome.status == "error":
                raise rebuild_error(outcome.error)
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
        return outcome.value

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


def _png_bytes(decoded: DecodedImage) -> bytes:
    import io

    buffer = io.BytesIO()
    decoded.image.save(buffer, "PNG")
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------- command line


def _parse_range(text: str) -> tuple[int, int]:
    low, _, high = text.partition(":")
    try:
        bounds = int(low), int(high or low)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected MIN:MAX, got {text!r}") from None
    if not 0 <= bounds[0] <= bounds[1] or bounds[1] < 1:
        raise argparse.ArgumentTypeError(f"expected 0 <= MIN <= MAX, MAX >= 1, got {text!r}")
    return bounds


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m bot.inference.ray_serve --config PATH``: deploy the inference app on a Ray cluster."""
    parser = argparse.ArgumentParser(prog="python -m bot.inference.ray_serve", description=main.__doc__)
    parser.add_argument("--config", help="config file (default: $IMAGEBOT_CONFIG or ./config.toml)")
    parser.add_argument("--address", help="Ray cluster to join (default: inference.ray_address)")
    parser.add_argument("--autoscale", type=_parse_range, metavar="MIN:MAX",
                        help="autoscale between MIN and MAX replicas instead of inference.ray_replicas")
    parser.add_argument("--num-cpus", type=float, default=1.0, help="CPUs reserved per replica (default 1)")
    parser.add_argument("--http-host", default="127.0.0.1", help="HTTP proxy address (default 127.0.0.1)")
    parser.add_argument("--http-port", type=int, default=8100,
                        help="HTTP proxy port (default 8100: Chroma's server already defaults to 8000)")
    parser.add_argument("--no-http", action="store_true", help="handles only: no HTTP proxy, no route")
    parser.add_argument("--delete", action="store_true", help="remove the app instead of deploying it")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    address = args.address or settings.inference.ray_address
    try:
        ray.init(address=address, logging_level=logging.WARNING)
    except ConnectionError as exc:
        print(f"cannot join the Ray cluster at {address!r}: {exc}\n"
              "start one first: ray start --head --node-ip-address 127.0.0.1", file=sys.stderr)
        return 1
    app = settings.inference.ray_app
    if args.delete:
        serve.delete(app)
        print(f"deleted Serve app {app!r}")
        return 0
    if args.no_http:
        serve.start(proxy_location="Disabled")
    else:
        serve.start(proxy_location="HeadOnly", http_options={"host": args.http_host, "port": args.http_port})
    handle = deploy(settings, route_prefix=None if args.no_http else HTTP_ROUTE_PREFIX,
                    autoscaling=args.autoscale, num_cpus=args.num_cpus)
    info = handle.options(method_name="ready").remote().result(timeout_s=settings.queue.job_timeout_s)
    where = "handles only" if args.no_http else f"http://{args.http_host}:{args.http_port}{HTTP_ROUTE_PREFIX}"
    print(f"Serve app {app!r} running ({where}); a replica reports {info['model_ids']} on {info['device']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
