"""/index: backfill a channel's older pictures into the memory, resumable and idempotent.

Discord-free: the cog hands over ``history(after_id, limit)``, an async iterator of
:class:`ScannedMessage` oldest first (discord.py pages through the channel and waits out 429s itself).
Why oldest first: the cursor is then a single message id ("everything up to here is handled"), a re-run
continues right after it, and messages posted since the last run are simply the next ones in line.

* **Resumable.** After every message the cursor moves to its id (:class:`BackfillCursors`, one sqlite
  commit). A crash loses at most the message in flight; images of it that were already stored are
  skipped next time, and images whose analysis was interrupted sit in the ingest ledger, which the bot
  resumes at start-up like any live post.
* **Idempotent.** Images already in the store (:meth:`ImageStore.has`) are skipped before any
  download, and the store's upsert is keyed by attachment id anyway: a re-run adds nothing twice.
* **Gentle.** One message at a time through the normal ingestion path and inference queue (live
  posts are never starved by a burst of history), no per-user rate limit (an admin asked for it), and a
  full queue ("busy") is waited out with a growing pause instead of counting as a failure.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from bot.ingest.cursors import BackfillCursors, ChannelCursor
from bot.ingest.ingestor import IncomingImage, IngestOutcome

log = logging.getLogger(__name__)
NOT_STORED = "analysed, but the memory did not store it (see the bot's log)"
PROGRESS_INTERVAL_S = 2.0  # Discord allows ~5 edits / 5 s per message; one every 2 s leaves room


@dataclass(frozen=True)
class ScannedMessage:
    """One message of the history as the backfill sees it."""

    message_id: int
    author_id: int
    # Its pictures, each with an ImageRef; empty for text-only, bot and webhook messages (never ingested,
    # the same rule as for live posts).
    images: Sequence[IncomingImage] = ()


History = Callable[[int | None, int | None], AsyncIterator[ScannedMessage]]
ProgressCallback = Callable[["BackfillProgress"], Awaitable[None]]


class IngestsImages(Protocol):
    """bot.ingest.ImageIngestor."""

    async def ingest(self, images: Sequence[IncomingImage], *, user_id: int = 0, channel_id: int = 0,
                     rate_limit: bool = True) -> list[IngestOutcome]: ...


class KnowsImages(Protocol):
    """bot.memory.store.AsyncImageStore."""

    async def has(self, guild_id: int | None, attachment_ids: Iterable[int], *, user_id: int | None = None
                  ) -> set[int]: ...


class BackfillBusy(RuntimeError):
    """This channel is already being indexed."""


@dataclass(frozen=True)
class BackfillProgress:
    channel_id: int
    scanned: int  # messages read this run
    limit: int | None  # messages this run may read (None: to the newest message)
    images: int  # pictures seen
    indexed: int
    skipped: int  # already stored
    failed: int
    elapsed_s: float

    @property
    def rate(self) -> float:
        """Messages per second so far."""
        return self.scanned / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def eta_s(self) -> float | None:
        """Seconds left until ``limit`` at the current rate (None without a limit or a rate yet)."""
        if self.limit is None or self.rate <= 0:
            return None
        return max(0.0, (self.limit - self.scanned) / self.rate)


@dataclass(frozen=True)
class BackfillReport:
    progress: BackfillProgress
    failures: dict[str, int] = field(default_factory=dict)  # reason -> images
    reached_end: bool = False  # the history ran out before the limit: indexed up to the newest message
    resumed_after: int | None = None  # the cursor this run started from (None: the channel's beginning)
    cursor: int | None = None  # where the next run starts
    stopped_by: str | None = None  # reading the history failed: what went wrong (the cursor still holds)
    totals: ChannelCursor | None = None  # over every run of this channel


class Backfill:
    def __init__(
        self,
        ingestor: IngestsImages,
        store: KnowsImages,
        cursors: BackfillCursors,
        *,
        progress_interval_s: float = PROGRESS_INTERVAL_S,
        busy_retries: int = 4,
        busy_pause_s: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    ) -> None:
        self.ingestor = ingestor
        self.store = store
        self.cursors = cursors
        self.progress_interval_s = progress_interval_s
        self.busy_retries = busy_retries
        self.busy_pause_s = busy_pause_s
        self.clock = clock
        self.sleep = sleep
        self._running: set[tuple[int, int]] = set()

    def running(self, guild_id: int, channel_id: int) -> bool:
        return (guild_id, channel_id) in self._running

    async def cursor(self, guild_id: int, channel_id: int) -> ChannelCursor | None:
        return await asyncio.to_thread(self.cursors.get, guild_id, channel_id)

    async def reset(self, guild_id: int, channel_id: int) -> None:
        await asyncio.to_thread(self.cursors.reset, guild_id, channel_id)

    async def run(self, guild_id: int, channel_id: int, history: History, *, limit: int | None = None,
                  progress: ProgressCallback | None = None) -> BackfillReport:
        """Index up to ``limit`` messages after the channel's cursor; raises :class:`BackfillBusy` if
        this channel is already running. Progress goes to ``progress`` at most every
        ``progress_interval_s`` (and once at the start)."""
        key = (guild_id, channel_id)
        if key in self._running:
            raise BackfillBusy(f"channel {channel_id} is already being indexed")
        self._running.add(key)
        try:
            return await self._run(guild_id, channel_id, history, limit, progress)
        finally:
            self._running.discard(key)

    async def _run(self, guild_id: int, channel_id: int, history: History, limit: int | None,
                   progress: ProgressCallback | None) -> BackfillReport:
        start = await self.cursor(guild_id, channel_id)
        after = start.after_id if start else None
        started = self.clock()
        counts = Counter[str]()
        failures = Counter[str]()

        def snapshot() -> BackfillProgress:
            return BackfillProgress(channel_id, counts["scanned"], limit, counts["images"], counts["indexed"],
                                    counts["skipped"], counts["failed"], self.clock() - started)

        last_report = started
        await self._report(progress, snapshot())
        stopped_by = None
        try:
            async for message in history(after, limit):
                done = await self._message(guild_id, channel_id, message, failures)
                counts.update(done)
                counts["scanned"] += 1
                after = message.message_id
                await asyncio.to_thread(self.cursors.advance, guild_id, channel_id, message.message_id,
                                        scanned=1, **{k: done[k] for k in ("indexed", "skipped", "failed")})
                if self.clock() - last_report >= self.progress_interval_s:
                    last_report = self.clock()
                    await self._report(progress, snapshot())
                if limit is not None and counts["scanned"] >= limit:
                    break
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # Discord refused or failed mid-way: report it, the cursor holds
            log.warning("backfill of channel %s stopped: %s", channel_id, exc)
            stopped_by = str(exc) or type(exc).__name__
        final = snapshot()
        return BackfillReport(
            progress=final,
            failures=dict(failures.most_common()),
            reached_end=stopped_by is None and (limit is None or final.scanned < limit),
            resumed_after=start.after_id if start else None,
            cursor=after,
            stopped_by=stopped_by,
            totals=await self.cursor(guild_id, channel_id),
        )

    async def _message(self, guild_id: int, channel_id: int, message: ScannedMessage,
                       failures: Counter[str]) -> Counter[str]:
        """Ingest one message's new pictures; returns what happened to them."""
        done = Counter[str]()
        images = [image for image in message.images if image.ref is not None]
        if not images:
            return done
        done["images"] = len(images)
        stored = await self.store.has(guild_id, [image.ref.attachment_id for image in images if image.ref])
        todo = [image for image in images if image.ref and image.ref.attachment_id not in stored]
        done["skipped"] = len(images) - len(todo)
        analysed: list[int] = []
        for attempt in range(self.busy_retries + 1):
            if not todo:
                break
            outcomes = await self.ingestor.ingest(todo, user_id=message.author_id, channel_id=channel_id,
                                                  rate_limit=False)
            busy = [o.image for o in outcomes if o.code == "busy"]
            for outcome in outcomes:
                if outcome.ok and outcome.image.ref is not None:
                    analysed.append(outcome.image.ref.attachment_id)
                elif outcome.code != "busy" or attempt == self.busy_retries:
                    done["failed"] += 1
                    failures[outcome.problem or outcome.code or "unknown problem"] += 1
            todo = busy
            if todo and attempt < self.busy_retries:
                await self.sleep(self.busy_pause_s * (attempt + 1))  # the queue is full: let live posts through
        # Count what really reached the store: ingestion still serves an analysis whose write failed
        # (or one it had cached), but the summary must not call that indexed.
        stored = await self.store.has(guild_id, analysed) if analysed else set()
        done["indexed"] = len(stored)
        if len(stored) < len(analysed):
            done["failed"] += len(analysed) - len(stored)
            failures[NOT_STORED] += len(analysed) - len(stored)
        return done

    @staticmethod
    async def _report(progress: ProgressCallback | None, snapshot: BackfillProgress) -> None:
        if progress is None:
            return
        try:
            await progress(snapshot)
        except asyncio.CancelledError:
            raise
        except Exception:  # a progress message that cannot be edited must not stop the work
            log.warning("backfill progress callback failed", exc_info=True)
