"""The memory as the bot uses it: remember analysed images, search them, forget them.

Glue between ingestion (bot.ingest), the inference queue (query vectors) and the store + ledger.
Discord-free: callers pass ImageRefs and the set of channels the requester can see right now.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from bot.analysis import ImageAnalysis
from bot.config import Settings
from bot.memory.ledger import IngestLedger, PendingImage
from bot.memory.records import ImageRef, StoredImage
from bot.memory.store import NO_FILTERS, AsyncImageStore, Filters, ImageStore, SearchHit

log = logging.getLogger(__name__)


class QueryEncoder(Protocol):
    async def embed_texts(self, texts: list[str]) -> np.ndarray: ...

    async def clip_texts(self, texts: list[str]) -> np.ndarray: ...


@dataclass(frozen=True)
class Audience:
    """Who will see a result: the store only returns what this audience may see.

    ``guild_id`` None is a DM: only the requester's own images. ``visible_channel_ids`` are computed
    from Discord permissions at query time (never at ingest), by the cog.
    """

    requester_id: int
    guild_id: int | None
    visible_channel_ids: frozenset[int] | None
    allow_nsfw: bool

    def as_kwargs(self) -> dict[str, object]:
        return {"visible_channel_ids": self.visible_channel_ids, "allow_nsfw": self.allow_nsfw,
                "requester_id": self.requester_id}


class MemoryService:
    def __init__(self, store: AsyncImageStore, ledger: IngestLedger, encoder: QueryEncoder) -> None:
        self.store = store
        self.ledger = ledger
        self.encoder = encoder
        # Images between begin() and settle(): downloading or in the models, not yet stored. A delete,
        # an edit or /forget that arrives meanwhile finds nothing in the store, so it is noted here
        # and remember() drops the image instead of storing what its owner just took back.
        self._in_flight: dict[int, ImageRef] = {}
        self.retracted: set[int] = set()  # attachment ids, while in flight

    @classmethod
    async def open(cls, settings: Settings, encoder: QueryEncoder) -> MemoryService:
        store = await asyncio.to_thread(ImageStore.open, settings)
        ledger = await asyncio.to_thread(IngestLedger.open, settings)
        return cls(AsyncImageStore(store), ledger, encoder)

    async def close(self) -> None:
        await asyncio.to_thread(self.ledger.close)

    # ----- ingest side (called by bot.ingest.ImageIngestor) -----

    async def begin(self, refs: Sequence[ImageRef]) -> None:
        """Before download + analysis: a crash from here on leaves them in the ledger to resume."""
        for ref in refs:
            self._in_flight[ref.attachment_id] = ref
        if refs:
            await asyncio.to_thread(self.ledger.mark_pending_many, refs)

    async def remember(self, ref: ImageRef, analysis: ImageAnalysis) -> bool:
        """Store an analysed image; False when it was deleted (or forgotten) while being analysed."""
        if ref.attachment_id in self.retracted:
            return False
        await self.store.upsert(ref, analysis)
        if ref.attachment_id in self.retracted:
            # Retracted while the upsert ran: the delete may have run before the record existed.
            await self.store.delete_attachments(ref.guild_id, [ref.attachment_id], user_id=ref.author_id)
            return False
        await asyncio.to_thread(self.ledger.mark_done, ref.attachment_id)
        return True

    async def abandon(self, refs: Iterable[ImageRef]) -> None:
        """Refused images (bad file, too large) are not retried after a restart."""
        ids = [ref.attachment_id for ref in refs]
        if ids:
            await asyncio.to_thread(self.ledger.mark_done, *ids)

    def settle(self, refs: Iterable[ImageRef]) -> None:
        """Ingest is done with these (stored, refused or failed): no longer in flight."""
        for ref in refs:
            self._in_flight.pop(ref.attachment_id, None)
            self.retracted.discard(ref.attachment_id)

    async def _retract(self, matches: Callable[[ImageRef], bool]) -> None:
        """Mark in-flight images the owner took back; they are never stored, nor resumed after a crash."""
        ids = [attachment_id for attachment_id, ref in self._in_flight.items() if matches(ref)]
        if ids:
            self.retracted.update(ids)
            await asyncio.to_thread(self.ledger.mark_done, *ids)

    async def pending(self, max_attempts: int = 3) -> list[PendingImage]:
        return await asyncio.to_thread(self.ledger.pending, max_attempts=max_attempts)

    # ----- deletes -----

    async def message_deleted(self, guild_id: int | None, message_id: int) -> int:
        return await self.messages_deleted(guild_id, [message_id])

    async def messages_deleted(self, guild_id: int | None, message_ids: Iterable[int]) -> int:
        ids = set(message_ids)
        await self._retract(lambda ref: ref.guild_id == guild_id and ref.message_id in ids)
        return await self.store.delete_messages(guild_id, list(ids))

    async def message_edited(self, guild_id: int | None, message_id: int, remaining_attachment_ids: Iterable[int]
                             ) -> int:
        remaining = set(remaining_attachment_ids)
        await self._retract(lambda ref: ref.guild_id == guild_id and ref.message_id == message_id
                            and ref.attachment_id not in remaining)
        return await self.store.sync_message(guild_id, message_id, list(remaining))

    async def forget(self, guild_id: int | None, user_id: int) -> int:
        await self._retract(lambda ref: ref.guild_id == guild_id and ref.author_id == user_id)
        return await self.store.forget_user(guild_id, user_id)

    # ----- reads -----

    async def find(self, query: str, audience: Audience, filters: Filters = NO_FILTERS, *,
                   limit: int = 10) -> list[SearchHit] | list[StoredImage]:
        """Hybrid search for ``query``; an empty query lists the newest matching images instead."""
        query = query.strip()
        if not query:
            return await self.store.browse(audience.guild_id, **audience.as_kwargs(), **filters.as_kwargs(),
                                           limit=limit)
        text_vectors, clip_vectors = await asyncio.gather(
            self.encoder.embed_texts([query]), self.encoder.clip_texts([query])
        )
        return await self.store.search(
            audience.guild_id, text_vector=text_vectors[0], clip_vector=clip_vectors[0],
            **audience.as_kwargs(), **filters.as_kwargs(), limit=limit,
        )

    async def similar(self, image_vector: Sequence[float], audience: Audience, *,
                      exclude_attachment_id: int | None = None, limit: int = 10) -> list[SearchHit]:
        return await self.store.similar(audience.guild_id, image_vector, **audience.as_kwargs(),
                                        exclude_attachment_id=exclude_attachment_id, limit=limit)
