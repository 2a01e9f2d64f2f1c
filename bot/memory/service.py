"""The memory as the bot uses it: remember analysed images, search them, forget them.

Glue between ingestion (bot.ingest), the inference queue (query vectors) and the store + ledger.
Discord-free: callers pass ImageRefs and the set of channels the requester can see right now.

When the store (Chroma) is unreachable, reads raise :class:`bot.errors.MemoryUnavailable` for the
Discord edge to explain, and writes do not stop pictures from flowing: an analysed image the store
cannot take joins the *backlog* (its analysis kept in the ledger, so a crash loses nothing and a
restart analyses nothing again), a delete that cannot reach the store is queued in the ledger, and a
background writer retries with backoff, replaying the queued deletes and then the backlog in order as
soon as the store answers. A delete, edit or /forget always wins over the backlog: whatever it takes
back is dropped from it (and from the ledger) at once, and is never written later.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

import numpy as np

from bot.analysis import ImageAnalysis
from bot.config import Settings
from bot.errors import MemoryUnavailable
from bot.ingest.ledger import IngestLedger, PendingImage
from bot.memory.records import ImageRef, StoredImage
from bot.memory.store import NO_FILTERS, AsyncImageStore, Audience, Filters, ImageStore, SearchHit

__all__ = ["Audience", "Filters", "MemoryService"]  # Audience and Filters: re-exported for the cogs

log = logging.getLogger(__name__)

# The backlog writer's retry delays while the store is down: about 1 s first, doubling up to 60 s.
# Why: a restarted `chroma run` answers its heartbeat ~0.6 s after start (measured on the test box),
# so a short blip is caught within a second or two, while a long outage costs one refused connection
# a minute. Each wait is drawn from [delay/2, delay] so that several shard processes that lost the
# same server do not retry in lockstep. A successful read (someone's /find) cuts the wait short.
RETRY_FIRST_S = 1.0
RETRY_MAX_S = 60.0
# Backlog records per upsert: one request stays far below the client timeout (store.HTTP_TIMEOUT),
# and an image taken back meanwhile waits for at most one small batch.
FLUSH_BATCH = 64
FORGET_QUEUED = (
    "My picture memory is temporarily unavailable, so I couldn't forget your pictures yet. Your request "
    "is saved: I'll forget them as soon as the memory is back (run /forget again later to see the count)."
)


class QueryEncoder(Protocol):
    async def embed_texts(self, texts: list[str]) -> np.ndarray: ...

    async def clip_texts(self, texts: list[str]) -> np.ndarray: ...


class MemoryService:
    def __init__(self, store: AsyncImageStore, ledger: IngestLedger, encoder: QueryEncoder) -> None:
        self.store = store
        self.ledger = ledger
        self.encoder = encoder
        # Images between begin() and settle(): downloading or in the models, not yet stored. A delete,
        # an edit or /forget that arrives meanwhile finds nothing in the store, so it is noted here
        # and remember() drops the image instead of storing what its owner just took back.
        # Several holders may have one image in flight at once (the backlog waiting for its caption and
        # a chat that asked for it right now): it stays in flight until the last one settles.
        self._in_flight: dict[int, ImageRef] = {}
        self._holds: dict[int, int] = {}
        self.retracted: set[int] = set()  # attachment ids, while in flight
        # Analysed images the store could not take yet, oldest first; their analyses wait in the ledger.
        self._backlog: dict[int, ImageRef] = {}
        self._queued_deletes = 0  # deletes waiting in the ledger
        # The backlog batch being written right now, and which of it was taken back meanwhile.
        self._writing: dict[int, ImageRef] = {}
        self._taken_back_while_writing: set[int] = set()
        self._work = asyncio.Event()  # set: the writer has something to do
        self._retry_now = asyncio.Event()  # set: end the writer's backoff wait early
        self._writer: asyncio.Task[None] | None = None
        self._closed = False
        self.unavailable_since: float | None = None  # epoch seconds the writer first found the store down

    @classmethod
    async def open(cls, settings: Settings, encoder: QueryEncoder) -> MemoryService:
        store = await asyncio.to_thread(ImageStore.open, settings)
        ledger = await asyncio.to_thread(IngestLedger.open, settings)
        service = cls(AsyncImageStore(store), ledger, encoder)
        await service.load_backlog()
        return service

    async def load_backlog(self) -> None:
        """Pick up what a previous run left (a crash, or a stop while the store was down) and write it."""
        refs = await asyncio.to_thread(self.ledger.backlog_refs)
        deletes = await asyncio.to_thread(self.ledger.queued_deletes)
        for ref in refs:
            self._backlog[ref.attachment_id] = ref
        self._queued_deletes = len(deletes)
        if refs or deletes:
            log.info("writing %d image(s) and %d delete(s) left from the last run", len(refs), len(deletes))
            self._kick()

    async def close(self) -> None:
        """Stop the writer (what it had not written stays in the ledger for the next start), close the ledger."""
        self._closed = True
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer
        await asyncio.to_thread(self.ledger.close)

    @property
    def waiting(self) -> tuple[int, int]:
        """(images, deletes) waiting for the store."""
        return len(self._backlog), self._queued_deletes

    # ----- ingest side (called by bot.ingest.ImageIngestor) -----

    async def begin(self, refs: Sequence[ImageRef]) -> None:
        """Before download + analysis: a crash from here on leaves them in the ledger to resume."""
        self._hold(refs)
        if refs:
            await asyncio.to_thread(self.ledger.mark_pending_many, refs)

    async def accept(self, refs: Sequence[ImageRef]) -> list[int]:
        """Passive posts, before anything else: durable in the ledger (stage ``fast``) and in flight
        until :meth:`settle`. Returns the attachment ids that were new (replays add nothing)."""
        self._hold(refs)  # before the write: a delete arriving meanwhile must find them
        if not refs:
            return []
        new = await asyncio.to_thread(self.ledger.accept, refs)
        self.settle([ref for ref in refs if ref.attachment_id not in set(new)])  # replays: nobody holds those
        return new

    def _hold(self, refs: Iterable[ImageRef]) -> None:
        for ref in refs:
            self._in_flight[ref.attachment_id] = ref
            self._holds[ref.attachment_id] = self._holds.get(ref.attachment_id, 0) + 1

    async def channel_marks(self) -> dict[int, tuple[int | None, int]]:
        return await asyncio.to_thread(self.ledger.channel_marks)

    def is_retracted(self, attachment_id: int) -> bool:
        """Taken back (deleted, edited away, /forget) while waiting or being analysed."""
        return attachment_id in self.retracted

    async def remember(self, ref: ImageRef, analysis: ImageAnalysis) -> bool:
        """Store an analysed image; False when it was deleted (or forgotten) while being analysed.

        While the store is down, or older images or deletes still wait for it, the image joins the
        backlog instead and the writer stores it in order later: True then too (it will be remembered).
        Call it between :meth:`begin` and :meth:`settle`."""
        if ref.attachment_id in self.retracted:
            return False
        if self._backlog or self._queued_deletes:  # keep the order: after what is already waiting
            return await self._enqueue(ref, analysis)
        try:
            await self.store.upsert(ref, analysis)
        except MemoryUnavailable as exc:
            log.warning("memory store unavailable; image %s waits in the backlog: %s", ref.attachment_id, exc)
            return await self._enqueue(ref, analysis)
        if ref.attachment_id in self.retracted:
            # Retracted while the upsert ran: the delete may have run before the record existed.
            await self._delete_or_queue("attachments", {"guild_id": ref.guild_id, "attachment_ids": [ref.attachment_id],
                                                        "user_id": ref.author_id})
            return False
        if analysis.caption_pending:  # the fast tier: the row now waits for the caption tier
            await asyncio.to_thread(self.ledger.set_stage, ref.attachment_id, "caption")
        else:
            await asyncio.to_thread(self.ledger.mark_done, ref.attachment_id)
        return True

    async def _enqueue(self, ref: ImageRef, analysis: ImageAnalysis) -> bool:
        saved = await asyncio.to_thread(self.ledger.save_analysis, ref, analysis)
        if not saved or ref.attachment_id in self.retracted:  # taken back meanwhile: its ledger row is gone
            return False
        self._backlog[ref.attachment_id] = ref
        self._kick()
        return True

    async def abandon(self, refs: Iterable[ImageRef]) -> None:
        """Refused images (bad file, too large) are not retried after a restart."""
        ids = [ref.attachment_id for ref in refs]
        if ids:
            await asyncio.to_thread(self.ledger.mark_done, *ids)

    def settle(self, refs: Iterable[ImageRef]) -> None:
        """One holder is done with these (stored, refused or failed): no longer in flight once the last
        holder (each :meth:`begin` / :meth:`accept`) has settled."""
        for ref in refs:
            left = self._holds.get(ref.attachment_id, 1) - 1
            if left > 0:
                self._holds[ref.attachment_id] = left
                continue
            self._holds.pop(ref.attachment_id, None)
            self._in_flight.pop(ref.attachment_id, None)
            self.retracted.discard(ref.attachment_id)

    async def _retract(self, matches: Callable[[ImageRef], bool]) -> None:
        """The owner took these back: in-flight images are never stored, backlog images never written,
        neither is resumed after a crash. (A backlog batch being written right now is deleted again by
        the writer as soon as its upsert returns.)"""
        in_flight = {i for i, ref in self._in_flight.items() if matches(ref)}
        waiting = {i for i, ref in self._backlog.items() if matches(ref)}
        writing = {i for i, ref in self._writing.items() if matches(ref)}
        self.retracted.update(in_flight)
        for attachment_id in waiting:
            del self._backlog[attachment_id]
        self._taken_back_while_writing.update(writing)
        ids = in_flight | waiting | writing
        if ids:
            await asyncio.to_thread(self.ledger.mark_done, *ids)

    async def pending(self, max_attempts: int = 3) -> list[PendingImage]:
        """Images to analyse again (interrupted before their analysis); the backlog is the writer's."""
        return await asyncio.to_thread(self.ledger.pending, max_attempts=max_attempts)

    # ----- deletes -----

    async def message_deleted(self, guild_id: int | None, message_id: int) -> int:
        return await self.messages_deleted(guild_id, [message_id])

    async def messages_deleted(self, guild_id: int | None, message_ids: Iterable[int]) -> int:
        """How many stored images went (0 while the store is down: the delete is queued and replayed)."""
        ids = {int(i) for i in message_ids}
        await self._retract(lambda ref: ref.guild_id == guild_id and ref.message_id in ids)
        removed = await self._delete_or_queue("messages", {"guild_id": guild_id, "message_ids": sorted(ids)})
        return removed or 0

    async def message_edited(self, guild_id: int | None, message_id: int, remaining_attachment_ids: Iterable[int]
                             ) -> int:
        remaining = {int(i) for i in remaining_attachment_ids}
        await self._retract(lambda ref: ref.guild_id == guild_id and ref.message_id == message_id
                            and ref.attachment_id not in remaining)
        removed = await self._delete_or_queue("sync", {"guild_id": guild_id, "message_id": int(message_id),
                                                       "remaining": sorted(remaining)})
        return removed or 0

    async def forget(self, guild_id: int | None, user_id: int) -> int:
        """How many images were forgotten; :class:`MemoryUnavailable` (with a message saying the request
        is kept and will be carried out) when the store is down."""
        await self._retract(lambda ref: ref.guild_id == guild_id and ref.author_id == user_id)
        removed = await self._delete_or_queue("forget", {"guild_id": guild_id, "user_id": int(user_id)})
        if removed is None:
            raise MemoryUnavailable(FORGET_QUEUED, detail=f"/forget of user {user_id} queued: the store is down")
        return removed

    async def _delete_or_queue(self, kind: str, args: Mapping[str, Any]) -> int | None:
        """Run a store delete now; if the store is down, queue it in the ledger for the writer (None)."""
        try:
            return await self._apply_delete(kind, args)
        except MemoryUnavailable as exc:
            await asyncio.to_thread(self.ledger.queue_delete, kind, args)
            self._queued_deletes += 1
            log.warning("memory store unavailable; %s delete %s queued: %s", kind, dict(args), exc)
            self._kick()
            return None

    async def _apply_delete(self, kind: str, args: Mapping[str, Any]) -> int:
        guild_id = args["guild_id"]
        if kind == "messages":
            return await self.store.delete_messages(guild_id, args["message_ids"])
        if kind == "sync":
            return await self.store.sync_message(guild_id, args["message_id"], args["remaining"])
        if kind == "forget":
            return await self.store.forget_user(guild_id, args["user_id"])
        if kind == "attachments":
            return await self.store.delete_attachments(guild_id, args["attachment_ids"], user_id=args["user_id"])
        raise ValueError(f"unknown delete kind {kind!r}")

    # ----- the backlog writer -----

    def _kick(self) -> None:
        """There is work for the writer: start it if needed."""
        if self._closed:
            return
        self._work.set()
        if self._writer is None or self._writer.done():
            self._writer = asyncio.get_running_loop().create_task(self._write_backlog(), name="memory-writer")

    def _store_answered(self) -> None:
        """A store call just worked: if the writer is waiting out a backoff, retry now."""
        if self.unavailable_since is not None:
            self._retry_now.set()

    async def _write_backlog(self) -> None:
        delay = RETRY_FIRST_S
        while True:
            await self._work.wait()
            self._work.clear()
            try:
                await self._flush()
            except Exception as exc:  # any failure: keep the backlog, retry later
                self._work.set()
                wait = delay * random.uniform(0.5, 1.0)
                images, deletes = self.waiting
                if isinstance(exc, MemoryUnavailable):
                    if self.unavailable_since is None:
                        self.unavailable_since = time.time()
                    log.warning("memory store unavailable; %d image(s) and %d delete(s) wait, retrying in %.1f s",
                                images, deletes, wait)
                else:
                    log.exception("writing the memory backlog failed; retrying in %.1f s", wait)
                self._retry_now.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._retry_now.wait(), wait)
                delay = min(delay * 2, RETRY_MAX_S)
                continue
            if self.unavailable_since is not None:
                log.warning("memory store is back after %.0f s; the backlog is written",
                            time.time() - self.unavailable_since)
                self.unavailable_since = None
            delay = RETRY_FIRST_S

    async def _flush(self) -> None:
        """Queued deletes first, then the backlog oldest first, a batch at a time, until both are empty.

        Deletes go first so that a queued /forget never removes a picture its owner posted after it."""
        while True:
            await self._replay_deletes()
            if not self._backlog:
                return
            batch = dict(list(self._backlog.items())[:FLUSH_BATCH])
            self._writing, self._taken_back_while_writing = batch, set()
            try:
                rows = await asyncio.to_thread(self.ledger.backlog, batch)
                rows = [row for row in rows if row.ref.attachment_id not in self._taken_back_while_writing]
                await self._write([(row.ref, row.analysis) for row in rows])
                taken_back = [row.ref for row in rows if row.ref.attachment_id in self._taken_back_while_writing]
            finally:
                self._writing = {}
            for ref in taken_back:  # its delete may have run before this upsert landed
                await self._delete_or_queue("attachments", {"guild_id": ref.guild_id,
                                                            "attachment_ids": [ref.attachment_id],
                                                            "user_id": ref.author_id})
            # A row whose analysis changed while it was written (the caption tier landed) stays for the
            # next round; every other one is finished (done, or back to waiting for its caption).
            newer = set()
            for row in rows:
                if row.ref.attachment_id in self._backlog and not await asyncio.to_thread(self.ledger.written, row):
                    newer.add(row.ref.attachment_id)
            for attachment_id in batch:  # written, taken back, or its ledger row is gone
                if attachment_id not in newer:
                    self._backlog.pop(attachment_id, None)
            log.info("wrote %d image(s) from the memory backlog; %d left", len(rows), len(self._backlog))

    async def _write(self, rows: list[tuple[ImageRef, ImageAnalysis]]) -> None:
        """Upsert; a batch the store refuses for another reason than being down is split, and an image
        it still refuses alone is logged and dropped rather than blocking everything behind it."""
        if not rows:
            return
        try:
            await self.store.upsert_many(rows)
        except MemoryUnavailable:
            raise
        except Exception:
            if len(rows) == 1:
                log.exception("the memory store refuses image %s; dropping it from the backlog",
                              rows[0][0].attachment_id)
                return
            for row in rows:
                await self._write([row])

    async def _replay_deletes(self) -> None:
        if not self._queued_deletes:
            return
        for queued in await asyncio.to_thread(self.ledger.queued_deletes):
            try:
                removed = await self._apply_delete(queued.kind, queued.args)
            except MemoryUnavailable:
                raise
            except Exception:
                log.exception("dropping queued %s delete %s: the store refuses it", queued.kind, queued.args)
                removed = 0
            await asyncio.to_thread(self.ledger.delete_done, queued.id)
            self._queued_deletes = max(0, self._queued_deletes - 1)
            log.info("replayed a queued %s delete (%d image(s) removed)", queued.kind, removed)

    # ----- reads -----

    async def find(self, query: str, audience: Audience, filters: Filters = NO_FILTERS, *,
                   limit: int = 10) -> list[SearchHit] | list[StoredImage]:
        """Hybrid search for ``query``; an empty query lists the newest matching images instead."""
        query = query.strip()
        if not query:
            images = await self.store.browse(audience, filters, limit=limit)
            self._store_answered()
            return images
        # The query vectors come from the inference queue: its errors (busy, timeout) are
        # UserFacingErrors too, for the caller to show like MemoryUnavailable.
        text_vectors, clip_vectors = await asyncio.gather(
            self.encoder.embed_texts([query]), self.encoder.clip_texts([query])
        )
        hits = await self.store.search(audience, filters, text_vector=text_vectors[0], clip_vector=clip_vectors[0],
                                       limit=limit, text_query=query)
        self._store_answered()
        return hits

    async def similar(self, image_vector: Sequence[float], audience: Audience, *,
                      exclude_attachment_id: int | None = None, limit: int = 10) -> list[SearchHit]:
        hits = await self.store.similar(audience, image_vector, exclude_attachment_id=exclude_attachment_id,
                                        limit=limit)
        self._store_answered()
        return hits
