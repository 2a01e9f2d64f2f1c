"""Passive posts are never refused for load: a durable, bounded, two-tier backlog.

On a small CPU host the full analysis of a picture costs ~0.9 s, and a busy server posts faster than
that. Refusing work ("busy, try again") answered people who had asked for nothing and left pictures
unsearchable until a restart. Instead, every posted picture is:

1. **accepted** — written to the ingest ledger (bot/ingest/ledger.py) before anything else happens,
   with its channel's mark moved in the same transaction (so a kill -9 at any point loses nothing:
   what was accepted is resumed, what arrived just before the write is found again by reading the
   channel's history after its mark);
2. given its **fast first look** when capacity allows, in arrival order: decode + CLIP (labels, image
   topics and mood, the image vector, ~60 ms on CPU) at background priority. The fast-tier record is
   stored at once, so the picture is findable (CLIP text→image search, Find similar, /gallery,
   /stats by label) seconds after it was posted, and its poster gets the 👀;
3. **captioned** later (BLIP + the caption's sentiment, embedding and topics, ~0.9 s on CPU), which
   completes the record (the same attachment id, an idempotent upsert).

Interactive work (a chat about a picture, /vibe, /find's query vectors) has priority over all of this
in the inference queue; a picture someone asks about while it waits is analysed at once with
interactive priority (:meth:`IngestBacklog.hurry`). Deletes, edits and /forget win over a tier that
lands late (the memory service's retraction, checked after every await here). The backlog is bounded:
past ``ingest.max_backlog`` waiting pictures, the oldest are dropped with a warning and a metric.

Decoded images are kept between the tiers in a small bounded cache; a picture that fell out of it (or
was accepted before a restart) is read again and gets its full analysis in one job instead.

The first look also reads the words in the picture (OCR), except under a backlog: while at least
``ingest.read_in_first_look_below`` pictures wait for their first look, it skips the reader (on a
2-core CPU the reader, one picture at a time in the model turn, took a 150-picture burst's findable p95
from 6.2 s to 16.3 s). Such a first look says ``text_pending``; its picture is completed by the full
analysis route (read again, analysed whole, words included) rather than by a caption alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

from bot.analysis import CaptionPart, ImageAnalysis
from bot.errors import UserFacingError
from bot.imaging import DecodedImage, EmptyImage, ImageRejected
from bot.inference import Priority
from bot.ingest.cache import AnalysisCache
from bot.memory.records import ImageRef

if TYPE_CHECKING:
    from bot.config import IngestSettings
    from bot.ingest.ingestor import IncomingImage
    from bot.memory.service import MemoryService

log = logging.getLogger(__name__)

#: How often one picture is tried (a download or model failure) before it is given up, with a log line.
MAX_TRIES = 3


class TieredAnalyzer(Protocol):
    """What the backlog needs from the inference queue (bot.inference.InferenceQueue, or Ray's client)."""

    async def analyze(self, data: bytes, *, filename: str | None = None, priority: Priority = ...
                      ) -> ImageAnalysis: ...

    async def analyze_fast(self, data: bytes, *, filename: str | None = None, priority: Priority = ...,
                           read_text: bool = ...) -> tuple[ImageAnalysis, DecodedImage | None]: ...

    async def caption(self, decoded: DecodedImage, *, priority: Priority = ...) -> CaptionPart: ...


EventKind = Literal["seen", "captioned", "refused", "dropped", "failed"]


@dataclass(frozen=True)
class BacklogEvent:
    """What happened to a waiting picture, for the Discord layer (👀, a polite reply) and the logs.

    ``seen``: its fast-tier record is stored (findable); ``captioned``: its record is complete;
    ``refused``: a bad file (``message`` is the polite sentence for its poster); ``dropped``: the
    backlog was full; ``failed``: given up after :data:`MAX_TRIES` (a log line says why)."""

    kind: EventKind
    ref: ImageRef
    filename: str
    message: str | None = None


Resolver = Callable[[ImageRef], Awaitable["IncomingImage | None"]]


@dataclass
class _Item:
    ref: ImageRef
    image: IncomingImage | None  # None: accepted in an earlier run; resolved when its turn comes
    accepted_at: float
    tries: int = 0
    stage: Literal["fast", "caption"] = "fast"  # which tier it waits for (and so which lane it is in)


class IngestBacklog:
    def __init__(
        self,
        settings: IngestSettings,
        queue: TieredAnalyzer,
        memory: MemoryService | None,
        cache: AnalysisCache,
    ) -> None:
        self.settings = settings
        self.queue = queue
        self.memory = memory
        self.cache = cache
        self.on_event: Callable[[BacklogEvent], Awaitable[None]] | None = None
        self.resolver: Resolver | None = None
        self._items: dict[int, _Item] = {}  # attachment id → item, for every picture waiting in either tier
        # The ids in _items still at the "fast" stage, kept beside it so the per-picture "how many wait for a
        # first look" (ingest.read_in_first_look_below) is O(1) even with thousands waiting for captions.
        self._fast_ids: set[int] = set()
        # Attachment ids in arrival order per tier. Finished pictures are not searched out of these:
        # a worker skips an id that is no longer in _items (or no longer at that stage).
        self._fast: deque[int] = deque()
        self._caption: deque[int] = deque()
        self._fast_records: dict[int, ImageAnalysis] = {}
        self._decoded: OrderedDict[int, DecodedImage] = OrderedDict()
        self._fast_ready = asyncio.Event()
        self._caption_ready = asyncio.Event()
        self._workers: list[asyncio.Task[None]] = []
        self._busy: set[int] = set()  # being worked on right now
        self.dropped = 0
        self.failed = 0
        self.done = 0
        self.text_deferred = 0  # first looks submitted without reading (their words come later)
        self._deferring = False  # whether the last first look skipped reading (for one log line per switch)

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Start the workers: ``fast_in_flight`` for first looks, ``caption_in_flight`` for captions (the
        inference queue batches what they submit; these bound how much background work it holds)."""
        if self._workers:
            return
        for index in range(self.settings.fast_in_flight):
            self._workers.append(asyncio.create_task(self._work("fast", self._first_look),
                                                     name=f"backlog-fast-{index}"))
        for index in range(self.settings.caption_in_flight):
            self._workers.append(asyncio.create_task(self._work("caption", self._complete),
                                                     name=f"backlog-caption-{index}"))

    async def close(self) -> None:
        """Stop the workers; whatever waits stays in the ledger for the next start."""
        workers, self._workers = self._workers, []
        for task in workers:
            task.cancel()
        for task in workers:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # ------------------------------------------------------------------ intake

    async def accept(self, images: Sequence[IncomingImage]) -> None:
        """Make posted pictures durable, then queue them for their first look (returns at once)."""
        refs = [image.ref for image in images if image.ref is not None]
        new: set[int] = set()
        if self.memory is not None:
            new = set(await self.memory.accept(refs))
        now = time.time()
        for image in images:
            ref = image.ref
            if ref is None or (self.memory is not None and ref.attachment_id not in new):
                continue  # not a Discord picture, or a replayed message already accepted
            if ref.attachment_id in self._items:
                continue
            self._enqueue(_Item(ref, image, now))
        await self._enforce_bound()

    async def resume(self) -> int:
        """Queue what an earlier run accepted but did not finish (oldest first); returns how many."""
        if self.memory is None:
            return 0
        pending = await self.memory.pending(max_attempts=MAX_TRIES)
        refs = [item.ref for item in pending if item.ref.attachment_id not in self._items]
        await self.memory.begin(refs)  # in flight again, and one more attempt counted
        for item in pending:
            ref = item.ref
            if ref.attachment_id in self._items:
                continue
            # Either tier: read again and analysed fully (a stored fast-tier record is simply completed).
            self._enqueue(_Item(ref, None, item.first_marked))
        if pending:
            log.info("resuming %d picture(s) an earlier run accepted but did not finish", len(pending))
        return len(pending)

    def waiting(self, attachment_id: int) -> bool:
        return attachment_id in self._items

    @property
    def idle(self) -> bool:
        """Nothing waits for either tier (and no worker is in the middle of one)."""
        return not self._items and not self._busy

    async def hurry(self, images: Sequence[IncomingImage], *, analyze: Callable[[IncomingImage],
                    Awaitable[ImageAnalysis | None]]) -> None:
        """Someone asks about these: those still waiting (for either tier) are analysed now by
        ``analyze`` (the ingestor's interactive path, which caches the result) and leave the backlog.

        One a worker is busy with right now is analysed now as well, rather than waited for: its
        background job may sit behind others in the queue, and the second, idempotent result costs one
        interactive analysis at most (the worker finishes it as usual)."""
        todo = [image for image in images if image.ref is not None and image.ref.attachment_id in self._items]
        results = await asyncio.gather(*(analyze(image) for image in todo), return_exceptions=True)
        for image, result in zip(todo, results, strict=True):
            assert image.ref is not None
            attachment_id = image.ref.attachment_id
            if not isinstance(result, ImageAnalysis) or result.caption_pending:
                continue  # not analysed now (a bad file, busy): it keeps its place in the backlog
            if attachment_id in self._items and attachment_id not in self._busy:
                await self._finish(attachment_id, done=True)
                await self._emit("seen", image.ref, image.filename)
                await self._emit("captioned", image.ref, image.filename)

    # ------------------------------------------------------------------ metrics

    def gauges(self) -> dict[str, float]:
        """Backlog depth per tier, the age of the oldest waiting picture, and the drop/failure counts."""
        items = list(self._items.values())
        oldest = min((item.accepted_at for item in items), default=None)
        return {
            "backlog_fast": float(len(self._fast_ids)),
            "backlog_caption": float(len(items) - len(self._fast_ids)),
            "backlog_oldest_age_seconds": time.time() - oldest if oldest is not None else 0.0,
            "backlog_dropped_total": float(self.dropped),
            "backlog_failed_total": float(self.failed),
            "backlog_done_total": float(self.done),
            "backlog_text_deferred_total": float(self.text_deferred),
        }

    def _read_in_first_look(self) -> bool:
        """Whether the next first look reads the picture's words (``ingest.read_in_first_look_below``).

        Reading is skipped under a backlog: it is the slow part of a first look for a picture with
        text (0.3-1 s on a small CPU, one picture at a time in the model turn), and a first look is
        what makes a picture findable; the words then come with the complete analysis. One log line
        when this switches, not one per picture."""
        threshold = self.settings.read_in_first_look_below
        defer = len(self._fast_ids) >= threshold
        if defer != self._deferring:
            self._deferring = defer
            if defer and threshold:
                log.info("backlog: at least %d pictures wait for a first look (ingest.read_in_first_look_below): "
                         "first looks skip the text reader; the words come with the complete analysis", threshold)
            elif threshold:
                log.info("backlog: fewer than %d pictures wait for a first look: first looks read the words again",
                         threshold)
        return not defer

    # ------------------------------------------------------------------ workers

    def _enqueue(self, item: _Item) -> None:
        """Into the lane of the tier it waits for, behind what arrived before it."""
        self._items[item.ref.attachment_id] = item
        if item.stage == "fast":
            self._fast_ids.add(item.ref.attachment_id)
        else:
            self._fast_ids.discard(item.ref.attachment_id)
        lane, ready = self._lane(item.stage)
        lane.append(item.ref.attachment_id)
        ready.set()

    def _lane(self, stage: str) -> tuple[deque[int], asyncio.Event]:
        return (self._fast, self._fast_ready) if stage == "fast" else (self._caption, self._caption_ready)

    async def _work(self, stage: str, step: Callable[[_Item], Awaitable[None]]) -> None:
        lane, ready = self._lane(stage)
        while True:
            while not lane:
                ready.clear()
                await ready.wait()
            attachment_id = lane.popleft()
            item = self._items.get(attachment_id)
            if item is None or item.stage != stage or attachment_id in self._busy:
                continue  # finished meanwhile (e.g. by hurry()), moved on, or in another worker's hands
            if self._taken_back(attachment_id):
                await self._finish(attachment_id)
                continue
            self._busy.add(attachment_id)
            try:
                await step(item)
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug must not stop the backlog: log it, give the picture up after MAX_TRIES
                log.exception("backlog: picture %s failed", attachment_id)
                await self._retry_or_give_up(item, "an unexpected error")
            finally:
                self._busy.discard(attachment_id)

    async def _first_look(self, item: _Item) -> None:
        ref = item.ref
        image, data = await self._read(item)
        if data is None or image is None:
            return
        if item.image is None:  # from an earlier run: one full analysis, no second read later
            await self._full(item, image, data)
            return
        read_text = self._read_in_first_look()
        try:
            fast, decoded = await self.queue.analyze_fast(data, filename=image.filename, priority=Priority.BACKGROUND,
                                                          read_text=read_text)
        except ImageRejected as exc:
            await self._refuse(item, image, exc)
            return
        except UserFacingError as exc:  # timeout, worker crash: try again later
            await self._retry_or_give_up(item, f"{exc.code}: {exc}")
            return
        if self._taken_back(ref.attachment_id):
            await self._finish(ref.attachment_id)
            return
        known = self.cache.get(image.key)
        if known is None or known.caption_pending:  # never replace a complete record by a first look
            self.cache.put(image.key, fast)
        if not await self._remember(ref, fast):
            await self._finish(ref.attachment_id)
            return
        await self._emit("seen", ref, image.filename)
        if not fast.caption_pending:  # the backend did both tiers at once (e.g. Ray)
            await self._finish(ref.attachment_id, done=True)
            await self._emit("captioned", ref, image.filename)
            return
        self._fast_records[ref.attachment_id] = fast
        if fast.text_pending:  # completed from the bytes (see _complete): its decoded image is not kept
            self.text_deferred += 1
        elif decoded is not None:
            self._decoded[ref.attachment_id] = decoded
            while len(self._decoded) > self.settings.decoded_cache:
                self._decoded.popitem(last=False)
        item.stage = "caption"
        self._enqueue(item)

    async def _complete(self, item: _Item) -> None:
        ref = item.ref
        decoded = self._decoded.pop(ref.attachment_id, None)
        fast = self._fast_records.get(ref.attachment_id)
        # Fell out of the cache, or its first look skipped the reader (``text_pending``: a caption
        # would leave it without its words): read again, one full analysis, words included (the decode
        # makes the reader's larger copy again, which the kept image would not have).
        if decoded is None or fast is None or fast.text_pending:
            image, data = await self._read(item)
            if data is not None and image is not None:
                await self._full(item, image, data)
            return
        try:
            part = await self.queue.caption(decoded, priority=Priority.BACKGROUND)
        except UserFacingError as exc:
            self._decoded[ref.attachment_id] = decoded
            await self._retry_or_give_up(item, f"{exc.code}: {exc}")
            return
        await self._store_complete(item, item.image, fast.with_caption(part))

    async def _full(self, item: _Item, image: IncomingImage, data: bytes) -> None:
        try:
            analysis = await self.queue.analyze(data, filename=image.filename, priority=Priority.BACKGROUND)
        except ImageRejected as exc:
            await self._refuse(item, image, exc)
            return
        except UserFacingError as exc:
            await self._retry_or_give_up(item, f"{exc.code}: {exc}")
            return
        # A picture from an earlier run had no first look in this one: its 👀 comes with this analysis.
        await self._store_complete(item, image, analysis, first_look=item.image is None)

    async def _store_complete(self, item: _Item, image: IncomingImage | None, analysis: ImageAnalysis, *,
                              first_look: bool = False) -> None:
        ref = item.ref
        if self._taken_back(ref.attachment_id):
            await self._finish(ref.attachment_id)
            return
        self.cache.put(image.key if image is not None else ref.attachment_id, analysis)
        stored = await self._remember(ref, analysis)
        await self._finish(ref.attachment_id, done=stored)
        if stored:
            filename = image.filename if image is not None else ref.filename
            if first_look:
                await self._emit("seen", ref, filename)
            await self._emit("captioned", ref, filename)

    # ------------------------------------------------------------------ helpers

    async def _read(self, item: _Item) -> tuple[IncomingImage | None, bytes | None]:
        image = item.image
        if image is None:
            if self.resolver is None:
                # No way to read it in this process (e.g. console mode): it stays in the ledger.
                self._forget_locally(item.ref.attachment_id)
                return None, None
            try:
                image = await self.resolver(item.ref)
            except Exception as exc:
                await self._retry_or_give_up(item, f"cannot fetch its message: {exc!r}")
                return None, None
            if image is None:  # the message or the attachment is gone: nothing to remember
                if self.memory is not None:
                    await self.memory.abandon([item.ref])
                await self._finish(item.ref.attachment_id)
                return None, None
        try:
            data = await image.read()
        except Exception as exc:  # CDN hiccup, deleted meanwhile
            await self._retry_or_give_up(item, f"download failed: {exc!r}")
            return image, None
        if not data:
            await self._refuse(item, image, EmptyImage())
            return image, None
        return image, data

    async def _remember(self, ref: ImageRef, analysis: ImageAnalysis) -> bool:
        if self.memory is None:
            return True
        try:
            return await self.memory.remember(ref, analysis)
        except Exception:
            # Not an outage (remember() keeps those in its own backlog): the row stays in the ledger
            # and is tried again at the next start.
            log.exception("storing picture %s failed", ref.attachment_id)
            return False

    async def _refuse(self, item: _Item, image: IncomingImage, exc: ImageRejected) -> None:
        log.info("backlog: %s refused (%s): %s", item.ref.attachment_id, exc.code, exc)
        if self.memory is not None:
            await self.memory.abandon([item.ref])  # a bad file stays bad: never resumed
        await self._finish(item.ref.attachment_id)
        await self._emit("refused", item.ref, image.filename, exc.user_message)

    async def _retry_or_give_up(self, item: _Item, why: str) -> None:
        item.tries += 1
        if item.tries < MAX_TRIES:
            log.warning("backlog: picture %s will be tried again (%s)", item.ref.attachment_id, why)
            self._enqueue(item)  # at the end of its tier's lane
            return
        log.error("backlog: giving up picture %s after %d tries (%s); it stays in the ledger for the next start",
                  item.ref.attachment_id, item.tries, why)
        self.failed += 1
        self._forget_locally(item.ref.attachment_id)
        await self._emit("failed", item.ref, item.ref.filename, why)

    async def _enforce_bound(self) -> None:
        """Past ``ingest.max_backlog`` waiting pictures, drop the oldest that no worker holds yet (every
        waiting picture of this run is in ``_items``): they are taken out of the ledger, never resumed."""
        excess = len(self._items) - self.settings.max_backlog
        if excess <= 0:
            return
        oldest = sorted(self._items.values(), key=lambda item: item.accepted_at)
        victims = [item.ref for item in oldest if item.ref.attachment_id not in self._busy][:excess]
        for ref in victims:  # before any await: a concurrent accept must not pick the same victims
            self._forget_locally(ref.attachment_id)
        self.dropped += len(victims)
        if self.memory is not None:
            await self.memory.abandon(victims)
            self.memory.settle(victims)
        for ref in victims:
            await self._emit("dropped", ref, ref.filename)
        log.warning("backlog full (ingest.max_backlog = %d): dropped the %d oldest waiting picture(s); "
                    "%d dropped since start", self.settings.max_backlog, len(victims), self.dropped)

    async def _finish(self, attachment_id: int, *, done: bool = False) -> None:
        item = self._items.get(attachment_id)
        self._forget_locally(attachment_id)
        if done:
            self.done += 1
        if item is not None and self.memory is not None:
            self.memory.settle([item.ref])

    def _forget_locally(self, attachment_id: int) -> None:
        self._items.pop(attachment_id, None)
        self._fast_ids.discard(attachment_id)
        self._fast_records.pop(attachment_id, None)
        self._decoded.pop(attachment_id, None)

    def _taken_back(self, attachment_id: int) -> bool:
        return self.memory is not None and self.memory.is_retracted(attachment_id)

    async def _emit(self, kind: EventKind, ref: ImageRef, filename: str, message: str | None = None) -> None:
        if self.on_event is None:
            return
        try:
            await self.on_event(BacklogEvent(kind, ref, filename, message))
        except Exception:  # a failed reaction or reply must not stop the backlog
            log.exception("backlog: the %s event handler failed for %s", kind, ref.attachment_id)

