"""The long-lived parts the bot and console share: inference queue, ingestion, chat, memory.

Built once from settings; cogs reach them through ``bot.services``. Console mode builds the same
object, which is why it exercises the same pipeline and chat logic as Discord.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from bot.chat.service import ChatService
from bot.config import Settings
from bot.context_cache import AnalysisCache
from bot.inference import InferenceQueue
from bot.ingest import ImageIngestor
from bot.pipeline import Analyzer
from bot.ratelimit import ImageRateLimiter

log = logging.getLogger(__name__)


class Services:
    def __init__(self, settings: Settings, *, analyzer_factory: Callable[[], Analyzer] | None = None) -> None:
        self.settings = settings
        factory = analyzer_factory or (lambda: Analyzer.from_settings(settings))
        self.queue = InferenceQueue(factory, settings.queue, settings.images)
        self.cache = AnalysisCache()
        self.limiter = ImageRateLimiter(settings.rate_limits)
        self.ingestor = ImageIngestor(settings, self.queue, cache=self.cache, limiter=self.limiter)
        self.chat = ChatService(settings)

    async def start(self) -> None:
        await self.queue.start()

    async def close(self) -> None:
        await self.queue.close()
