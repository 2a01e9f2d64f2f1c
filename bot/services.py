"""The long-lived parts the bot and console share: inference queue, ingestion, chat, memory.

Built once from settings; cogs reach them through ``bot.services``. Console mode builds the same
object, which is why it exercises the same pipeline and chat logic as Discord.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from bot.chat.service import ChatService
from bot.config import Settings
from bot.context_cache import AnalysisCache
from bot.decode_sandbox import DecodeSandbox
from bot.inference import InferenceQueue
from bot.ingest import ImageIngestor, IngestBacklog
from bot.labels import LabelSetError, parse_label_file
from bot.memory.service import MemoryService
from bot.pipeline import Analyzer
from bot.ratelimit import ImageRateLimiter

if TYPE_CHECKING:
    from bot.inference.ray_serve import RayInferenceClient

log = logging.getLogger(__name__)


def _topic_names(settings: Settings) -> tuple[str, ...]:
    """Topic labels for autocompletion (the models check the label files properly at start-up)."""
    try:
        return parse_label_file(settings.labels_dir / "topics.txt").labels
    except (OSError, LabelSetError):
        return ()


class Services:
    def __init__(
        self,
        settings: Settings,
        *,
        analyzer_factory: Callable[[], Analyzer] | None = None,
        with_memory: bool = True,
    ) -> None:
        self.settings = settings
        self.with_memory = with_memory
        self.memory: MemoryService | None = None
        self.backlog: IngestBacklog | None = None
        self.queue: InferenceQueue | RayInferenceClient
        # Untrusted image bytes are decoded in killable processes (bot/decode_sandbox.py), shared by
        # the local queue's decode stage and /vibe's pixel measurements.
        self.decoder = DecodeSandbox.from_settings(settings.images, workers=settings.queue.decode_workers)
        if settings.inference.backend == "ray":
            # Model work on a shared Ray Serve deployment (docs/scale-out-ray.md); ray is an optional
            # extra, so it is imported only when configured.
            from bot.inference.ray_serve import RayInferenceClient

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
        await asyncio.to_thread(self.decoder.start)  # the first pictures need not wait for process start-up
        await self.queue.start()
        if self.with_memory:
            self.memory = await MemoryService.open(self.settings, self.queue)
            self.ingestor.memory = self.memory
        # Passive posts wait here (durably, when there is a memory) for their two tiers of analysis.
        self.backlog = IngestBacklog(self.settings.ingest, self.queue, self.memory, self.cache)
        self.ingestor.backlog = self.backlog
        self.queue.metrics.register_source("ingest", self.backlog.gauges)
        self.backlog.start()

    async def close(self) -> None:
        try:
            if self.backlog is not None:
                await self.backlog.close()  # what waits stays in the ledger for the next start
            await self.queue.close()
            await asyncio.to_thread(self.decoder.close)
        finally:
            if self.memory is not None:
                await self.memory.close()
