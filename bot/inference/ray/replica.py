"""One Ray Serve replica: the configured models behind batched endpoints, and the HTTP door to them.

Each replica loads :meth:`bot.pipeline.Analyzer.from_settings` (the very code the in-process
:class:`~bot.inference.InferenceQueue` runs) and batches concurrent requests with ``@serve.batch``
(``queue.max_batch_size`` / ``queue.max_wait_ms``). Image bytes are decoded *inside* the replica,
in killable processes as in the local queue (:class:`bot.decode_sandbox.DecodeSandbox`), so the bot
ships raw attachment bytes and never needs the pixels itself. Every endpoint answers an
:class:`~bot.inference.ray.wire.Outcome` (see :mod:`bot.inference.ray.wire` for why), never raises.

The local queue's two analysis tiers and two priorities are a small-host mechanism (one CPU box where
BLIP is most of the cost and a person must not wait behind indexing). A Ray cluster is sized for the
load instead, so a replica only runs full analyses, in arrival order; the client maps the tiers onto
them (:class:`bot.inference.ray.client.RayInferenceClient`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import TYPE_CHECKING, Any

from ray import serve

from bot.analysis import ImageAnalysis
from bot.config import Settings
from bot.decode_sandbox import DecodeSandbox
from bot.imaging import ImageRejected
from bot.inference.batching import encode_together, predict_splitting_on_oom
from bot.inference.errors import InferenceError
from bot.inference.ray.wire import TEXT_ROUTES, Outcome, http_answer, texts_from_json

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.responses import Response

__all__ = ["InferenceDeployment"]

log = logging.getLogger(__name__)


def _consume_flag(path: str | None) -> bool:
    """True exactly once per flag file, across all replicas (unlink is atomic)."""
    if not path:
        return False
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    return True


def _replica_tag() -> str:
    try:
        return str(serve.get_replica_context().replica_tag)
    except Exception:  # outside Serve (unit tests constructing the class directly)
        return f"pid-{os.getpid()}"


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
            return Outcome.failed(exc)
        except Exception as exc:  # a preprocessing bug must not look like a bad file
            return Outcome.failed(InferenceError(f"preprocessing failed: {type(exc).__name__}: {exc}"))
        return await self._image_batch(prepared)

    async def embed_texts(self, texts: list[str]) -> Outcome:
        return await self._embed_batch(list(texts))

    async def clip_texts(self, texts: list[str]) -> Outcome:
        return await self._clip_batch(list(texts))

    async def score_sentiment(self, texts: list[str]) -> Outcome:
        return await self._sentiment_batch(list(texts))

    async def __call__(self, request: Request) -> Response:
        """The HTTP door (when deployed with a route prefix), for callers that are not Python/Ray.

        ``POST <prefix>/analyze[?filename=x]`` with the raw image as the body; ``POST
        <prefix>/embed_texts | clip_texts | score_sentiment`` with ``{"texts": [...]}``. Answers in
        the JSON of :func:`bot.inference.ray.wire.http_answer`.
        """
        from starlette.responses import JSONResponse

        route = request.url.path.rstrip("/").rsplit("/", 1)[-1]
        if request.method != "POST":
            return JSONResponse({"error": "method_not_allowed"}, status_code=405)
        if route == "analyze":
            outcome = await self.analyze(await request.body(), request.query_params.get("filename"))
        elif route in TEXT_ROUTES:
            try:
                texts = texts_from_json(await request.json())
            except Exception:
                texts = None
            if texts is None:
                return JSONResponse({"error": "bad_request", "detail": 'expected {"texts": [str, ...]}'}, 400)
            outcome = await getattr(self, route)(texts)
        else:
            return JSONResponse({"error": "not_found"}, status_code=404)
        body, status = http_answer(route, outcome)
        return JSONResponse(body, status_code=status)

    # ---------------------------------------------------------------- batches

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.01)
    async def _image_batch(self, items: list[Any]) -> list[Outcome]:
        return await self._on_model_thread(self._predict_images, items)

    # Text batches: all requests' texts in one model call, each request's rows back (the local queue's helper).
    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.01)
    async def _embed_batch(self, requests: list[list[str]]) -> list[Outcome]:
        return await self._on_model_thread(partial(encode_together, self.analyzer.embed_texts), requests)

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.01)
    async def _clip_batch(self, requests: list[list[str]]) -> list[Outcome]:
        return await self._on_model_thread(partial(encode_together, self.analyzer.clip_texts), requests)

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.01)
    async def _sentiment_batch(self, requests: list[list[str]]) -> list[Outcome]:
        return await self._on_model_thread(partial(encode_together, self.analyzer.score_sentiment), requests)

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
            return [Outcome.failed(exc)] * len(items)
        seconds = time.perf_counter() - started
        return [
            Outcome.failed(result) if isinstance(result, InferenceError)
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
