"""The long-lived parts the bot and console share: inference queue, ingestion, chat, memory.

Built once from settings; cogs reach them through ``bot.services``. Console mode builds the same
object, which is why it exercises the same pipeline, chat logic and memory as Discord.

Starting takes a while the first time (models load for seconds, a first download for minutes), so
:meth:`Services.start` reports each phase with how long it took ("loading models (captioner, tagger,
...)… done in 12.3 s", "opening memory at data/chroma… done in 0.4 s"): as an INFO log line by default
(the ``run`` log), or however the caller's :class:`StartupPhases` shows it (the console prints them).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Protocol

from bot.chat.service import ChatService
from bot.config import Settings
from bot.decode_sandbox import DecodeSandbox
from bot.inference import InferenceBackend, InferenceQueue
from bot.ingest import ImageIngestor, IngestBacklog
from bot.ingest.cache import AnalysisCache
from bot.ingest.limits import ImageRateLimiter
from bot.labels import LabelSetError, parse_label_file
from bot.memory.service import MemoryService
from bot.pipeline import Analyzer

log = logging.getLogger(__name__)


def _topic_names(settings: Settings) -> tuple[str, ...]:
    """Topic labels for autocompletion (the models check the label files properly at start-up)."""
    try:
        return parse_label_file(settings.labels_dir / "topics.txt").labels
    except (OSError, LabelSetError):
        return ()


class StartupPhases(Protocol):
    """How :meth:`Services.start` reports its phases: ``with phases.phase("loading models (...)"):``."""

    def phase(self, what: str) -> AbstractContextManager[None]: ...


class LoggedPhases:
    """One INFO line per finished phase, with its duration (what ``run`` shows; a failed phase logs
    nothing here: its error is reported by the caller, as one line)."""

    def __init__(self, logger: logging.Logger = log) -> None:
        self.logger = logger

    @contextlib.contextmanager
    def phase(self, what: str) -> Iterator[None]:
        started = time.perf_counter()
        yield
        self.logger.info("%s… done in %.1f s", what, time.perf_counter() - started)


def model_roles(settings: Settings) -> list[str]:
    """The model roles the configured analyzer loads, in loading order (for the start-up line)."""
    roles = ["captioner", "tagger", "embedder", "sentiment"]
    if settings.models.ocr.enabled:
        roles.append("reader")
    return roles


def shown_path(path: Path) -> str:
    """A path as the user would type it: relative to the current folder when inside it."""
    with contextlib.suppress(ValueError):
        return os.fspath(path.relative_to(Path.cwd()))
    return os.fspath(path)


def loading_phase(settings: Settings) -> str:
    """``loading models (captioner, tagger, embedder, sentiment, reader)``, or the Ray deployment."""
    if settings.inference.backend == "ray":
        return "connecting to the model deployment on Ray Serve"
    return f"loading models ({', '.join(model_roles(settings))})"


def memory_phase(settings: Settings) -> str:
    """``opening memory at data/chroma``, or the Chroma server it connects to."""
    memory = settings.memory
    if memory.backend == "http":
        return f"opening memory on the Chroma server at http://{memory.host}:{memory.port}"
    return f"opening memory at {shown_path(settings.resolve_path(memory.path))}"


class Services:
    def __init__(
        self,
        settings: Settings,
        *,
        analyzer_factory: Callable[[], Analyzer] | None = None,
        with_memory: bool = True,
        phases: StartupPhases | None = None,
    ) -> None:
        self.settings = settings
        self.with_memory = with_memory
        self.phases: StartupPhases = phases or LoggedPhases()
        self.memory: MemoryService | None = None
        self.backlog: IngestBacklog | None = None
        # The local queue or the Ray client: both implement the one backend protocol.
        self.queue: InferenceBackend
        # Untrusted image bytes are decoded in killable processes (bot/decode_sandbox.py), shared by
        # the local queue's decode stage and /vibe's pixel measurements.
        self.decoder = DecodeSandbox.from_settings(settings.images, workers=settings.queue.decode_workers)
        if settings.inference.backend == "ray":
            # Model work on a shared Ray Serve deployment (docs/scale-out-ray.md); ray is an optional
            # extra, so it is imported only when configured.
            from bot.inference.ray.client import RayInferenceClient

            self.queue = RayInferenceClient(settings)
        else:
            factory = analyzer_factory or (lambda: Analyzer.from_settings(settings))
            self.queue = InferenceQueue(factory, settings.queue, settings.images, decoder=self.decoder)
        self.cache = AnalysisCache()
        self.limiter = ImageRateLimiter(settings.rate_limits)
        self.ingestor = ImageIngestor(settings, self.queue, cache=self.cache, limiter=self.limiter)
        self.chat = ChatService(settings)
        self.topics: tuple[str, ...] = _topic_names(settings)

    async def start(self) -> None:
        with self.phases.phase(loading_phase(self.settings)):
            await asyncio.to_thread(self.decoder.start)  # the first pictures need not wait for process start-up
            await self.queue.start()
        if self.with_memory:
            with self.phases.phase(memory_phase(self.settings)):
                self.memory = await MemoryService.open(self.settings, self.queue)
            self.ingestor.memory = self.memory
        # Passive posts wait here (durably, when there is a memory) for their two tiers of analysis.
        self.backlog = IngestBacklog(self.settings.ingest, self.queue, self.memory, self.cache)
        self.ingestor.backlog = self.backlog
        self.queue.metrics.register_source("ingest", self.backlog.gauges)
        self.backlog.start()

    async def close(self, *, drain: bool = True, timeout: float | None = None) -> None:  # noqa: ASYNC109
        """Stop everything; ``drain``/``timeout`` are the inference backend's (``describe`` on Ctrl-C
        stops it without finishing its jobs)."""
        try:
            if self.backlog is not None:
                await self.backlog.close()  # what waits stays in the ledger for the next start
            await self.queue.close(drain=drain, timeout=timeout)
            await asyncio.to_thread(self.decoder.close)
        finally:
            if self.memory is not None:
                await self.memory.close()
