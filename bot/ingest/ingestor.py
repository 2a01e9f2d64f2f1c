"""Image ingestion's front door: limits, then either the backlog or an analysis right now.

Discord-agnostic: the listener cog (and console mode, and backfill) hand over :class:`IncomingImage`
items with a ``read`` coroutine. :meth:`ImageIngestor.accept` is for passive posts: after the per-message
cap and the per-user/channel rate limits, the pictures go into the durable backlog
(bot/ingest/backlog.py) and the call returns at once. :meth:`ImageIngestor.ingest` analyses now, at the
priority the caller asks for (interactive: a mention, Find similar; background: /index), caches and
remembers the results. Both report one :class:`IngestOutcome` per image, with a user-readable reason
for anything refused.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from bot.analysis import ImageAnalysis
from bot.config import Settings
from bot.imaging import EmptyImage, ImageRejected
from bot.inference import Priority
from bot.inference.errors import InferenceError, QueueBusy
from bot.ingest.cache import AnalysisCache
from bot.ingest.limits import ImageRateLimiter, too_large
from bot.memory.records import ImageRef

if TYPE_CHECKING:
    from bot.ingest.backlog import IngestBacklog

log = logging.getLogger(__name__)


class AnalyzesImages(Protocol):
    async def analyze(self, data: bytes, *, filename: str | None = None, priority: Priority = ...
                      ) -> ImageAnalysis: ...


class RemembersImages(Protocol):
    """The memory's side of ingestion (bot.memory.service.MemoryService); optional."""

    async def begin(self, refs: Sequence[ImageRef]) -> None: ...

    async def remember(self, ref: ImageRef, analysis: ImageAnalysis) -> bool: ...

    async def abandon(self, refs: Sequence[ImageRef]) -> None: ...

    def settle(self, refs: Sequence[ImageRef]) -> None: ...


@dataclass(frozen=True)
class IncomingImage:
    key: Hashable  # attachment id, or the URL of an embedded image
    filename: str
    size: int | None  # bytes, when known before reading (attachments)
    read: Callable[[], Awaitable[bytes]]
    # Where it came from on Discord (what the memory stores it under); None in console mode.
    ref: ImageRef | None = None


@dataclass(frozen=True)
class IngestOutcome:
    image: IncomingImage
    analysis: ImageAnalysis | None = None
    # One sentence for the user when the image was not analysed.
    problem: str | None = None
    # "queued" (accepted into the backlog), "rejected" (bad file), "rate_limited", "busy", "failed"
    code: str | None = None

    @property
    def ok(self) -> bool:
        return self.analysis is not None


class ImageIngestor:
    def __init__(
        self,
        settings: Settings,
        analyzer: AnalyzesImages,
        *,
        cache: AnalysisCache | None = None,
        limiter: ImageRateLimiter | None = None,
        memory: RemembersImages | None = None,
        backlog: IngestBacklog | None = None,
    ) -> None:
        self.settings = settings
        self.analyzer = analyzer
        self.cache = cache if cache is not None else AnalysisCache()
        self.limiter = limiter if limiter is not None else ImageRateLimiter(settings.rate_limits)
        self.memory = memory
        self.backlog = backlog

    async def accept(
        self, images: Sequence[IncomingImage], *, user_id: int = 0, channel_id: int = 0, rate_limit: bool = True
    ) -> list[IngestOutcome]:
        """A passive post: into the durable backlog (returns at once; never refused for load).

        Outcomes: ``queued``, or the cap / rate-limit / too-large refusals decided without reading a
        byte, or the cached analysis of a picture seen before (a replayed message)."""
        if self.backlog is None:
            return await self.ingest(images, user_id=user_id, channel_id=channel_id, rate_limit=rate_limit,
                                     priority=Priority.BACKGROUND)
        outcomes, todo = self._admit(images, user_id=user_id, channel_id=channel_id, rate_limit=rate_limit)
        queued = []
        max_bytes = self.settings.images.max_bytes
        for index in todo:
            image = images[index]
            oversized = too_large(image.size, max_bytes, image.filename)
            if oversized is not None:  # refuse before queueing a download
                outcomes[index] = IngestOutcome(image, problem=oversized.user_message, code="rejected")
            else:
                outcomes[index] = IngestOutcome(image, code="queued")
                queued.append(image)
        await self.backlog.accept(queued)
        return [outcome for outcome in outcomes if outcome is not None]

    async def hurry(self, images: Sequence[IncomingImage]) -> None:
        """Someone asks about these pictures: any still waiting in the backlog (for its first look or its
        caption) is analysed now, at interactive priority, so the answer can use it."""
        if self.backlog is not None:
            await self.backlog.hurry(images, analyze=self._analyze_now)

    async def _analyze_now(self, image: IncomingImage) -> ImageAnalysis | None:
        [outcome] = await self.ingest([image], rate_limit=False, priority=Priority.INTERACTIVE, fresh=True)
        return outcome.analysis

    async def ingest(
        self, images: Sequence[IncomingImage], *, user_id: int = 0, channel_id: int = 0, rate_limit: bool = True,
        priority: Priority = Priority.INTERACTIVE, fresh: bool = False,
    ) -> list[IngestOutcome]:
        """Analyse a message's images now (all of them, concurrently); one outcome per image, in order.

        ``fresh``: ignore a cached first-look record (a picture whose caption is still pending)."""
        outcomes, todo = self._admit(images, user_id=user_id, channel_id=channel_id, rate_limit=rate_limit,
                                     fresh=fresh)
        refs = [images[index].ref for index in todo if images[index].ref is not None]
        if self.memory is not None and refs:
            await self.memory.begin(refs)  # from here a crash leaves them in the ledger, resumed on start
        try:
            results = await asyncio.gather(*(self._one(images[index], priority) for index in todo))
        finally:
            if self.memory is not None and refs:
                self.memory.settle(refs)
        for index, outcome in zip(todo, results, strict=True):
            outcomes[index] = outcome
        return [outcome for outcome in outcomes if outcome is not None]

    def _admit(
        self, images: Sequence[IncomingImage], *, user_id: int, channel_id: int, rate_limit: bool, fresh: bool = False
    ) -> tuple[list[IngestOutcome | None], list[int]]:
        """The cache, the per-message cap and the rate limits: outcomes decided so far, and what is left."""
        cap = self.settings.images.max_images_per_message
        outcomes: list[IngestOutcome | None] = [None] * len(images)
        todo: list[int] = []
        for index, image in enumerate(images):
            cached = self.cache.get(image.key)
            if cached is not None and not (fresh and cached.caption_pending):  # replayed: no second analysis
                outcomes[index] = IngestOutcome(image, cached)
            elif len(todo) >= cap:
                outcomes[index] = IngestOutcome(image, problem=f"I only look at {cap} images per message.",
                                                code="rejected")
            else:
                todo.append(index)

        granted = self.limiter.acquire(user_id, channel_id, len(todo)) if rate_limit else len(todo)
        if granted < len(todo):
            refusal = self.limiter.refusal(user_id, channel_id)
            for index in todo[granted:]:
                outcomes[index] = IngestOutcome(images[index], code=refusal.code, problem=refusal.user_message)
            todo = todo[:granted]
        return outcomes, todo

    def known(self, image: IncomingImage) -> ImageAnalysis | None:
        """The analysis of an image seen before (never starts a new one: chat must not bypass limits)."""
        return self.cache.get(image.key)

    async def _one(self, image: IncomingImage, priority: Priority) -> IngestOutcome:
        max_bytes = self.settings.images.max_bytes
        try:
            oversized = too_large(image.size, max_bytes, image.filename)
            if oversized is not None:  # refuse before downloading a file we would refuse anyway
                raise oversized
            data = await image.read()
            if not data:
                raise EmptyImage()
            analysis = await self.analyzer.analyze(data, filename=image.filename, priority=priority)
        except ImageRejected as exc:
            if self.memory is not None and image.ref is not None:
                await self.memory.abandon([image.ref])  # a bad file stays bad: never resumed
            return IngestOutcome(image, problem=exc.user_message, code="rejected")
        except InferenceError as exc:  # the queue's typed errors (busy, timeout, ...), from either backend
            code = "busy" if isinstance(exc, QueueBusy) else "failed"
            return IngestOutcome(image, problem=exc.user_message, code=code)
        except Exception:
            log.exception("analysing %s failed", image.filename)
            return IngestOutcome(image, problem="Something went wrong while looking at this image.", code="failed")
        self.cache.put(image.key, analysis)
        if self.memory is not None and image.ref is not None:
            try:
                # While the store is down remember() keeps the analysis in its backlog (in the ledger)
                # and writes it once the store is back: it does not raise for an outage.
                await self.memory.remember(image.ref, analysis)
            except Exception:
                # Anything else: the analysis still serves the conversation; the ledger keeps the image
                # pending, to be analysed and stored again at the next start.
                log.exception("storing %s failed", image.filename)
        return IngestOutcome(image, analysis)
