"""The thread-safe heart of the queue: jobs, the bounded job board, micro-batch formation, OOM splits.

Nothing here knows about asyncio beyond handing a result to a job's future on its own loop, which
keeps the logic testable and lets the model worker be a plain thread.

A job's life, in the stages the queue names::

    admit ─▶ DECODING ─(decode pool)─▶ QUEUED ─(next_batch)─▶ RUNNING ─(predict)─▶ DONE ─▶ respond
       │          │                       │
       │          └──── release (cancelled / timed out / decode failed / closed) ───▶ DONE
       └─ QueueBusy when ``max_queued`` jobs are already waiting

A job holds one of the ``max_queued`` slots from admission until the worker takes it into a batch
(or it is released): that bounds memory (decoded images wait in RAM) and the wait a user can be
made to sit through, and refusing at admission is what lets a burst be answered with an honest
"busy" at once instead of a timeout minutes later.
"""

from __future__ import annotations

import asyncio
import enum
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

from bot.inference.errors import OutOfMemory, QueueBusy, QueueClosed

__all__ = ["Job", "JobBoard", "JobKind", "JobState", "is_out_of_memory", "predict_splitting_on_oom"]

T = TypeVar("T")
R = TypeVar("R")


class JobKind(enum.StrEnum):
    """What a job asks of the models; batches never mix kinds (each runs different model roles)."""

    IMAGE = "image"  # caption + CLIP tags + caption embedding + sentiment
    EMBED_TEXT = "embed_text"  # MiniLM vectors for search queries
    CLIP_TEXT = "clip_text"  # CLIP text vectors for text→image search
    SENTIMENT = "sentiment"  # the sentiment model on free text (stories, /vibe)


class JobState(enum.Enum):
    DECODING = "decoding"
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"


@dataclass(eq=False)
class Job:
    """One caller's request. ``payload`` is the decoded image or the list of texts."""

    kind: JobKind
    future: asyncio.Future[Any]
    loop: asyncio.AbstractEventLoop
    admitted_at: float
    payload: Any = None
    state: JobState = JobState.DECODING
    queued_at: float = 0.0
    started_at: float = 0.0

    def settle(self, result: Any = None, error: BaseException | None = None) -> None:
        """Hand the outcome to the caller's future, from any thread.

        Goes through ``call_soon_threadsafe`` because asyncio futures are not thread-safe. A caller
        that already gave up (cancelled, timed out) has a done future: the outcome is dropped. A
        closed loop (the bot is gone) is not an error either.
        """

        def _set() -> None:
            if self.future.done():
                return
            if error is not None:
                self.future.set_exception(error)
            else:
                self.future.set_result(result)

        try:
            self.loop.call_soon_threadsafe(_set)
        except RuntimeError:  # loop closed
            pass


class JobBoard:
    """Admission control plus per-kind FIFO lanes the worker takes micro-batches from.

    One condition variable guards everything; the event loop thread admits, enqueues and releases,
    the worker thread takes batches. ``clock`` is injectable for tests.
    """

    def __init__(
        self,
        *,
        max_batch_size: int,
        max_wait_s: float,
        max_queued: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self.max_queued = max_queued
        self._clock = clock
        self._cond = threading.Condition()
        self._lanes: dict[JobKind, deque[Job]] = {kind: deque() for kind in JobKind}
        self._decoding: set[Job] = set()
        self._running: list[Job] = []
        self._accepting = False
        self._closing = False

    # ---------------------------------------------------------------- loop side

    def open(self) -> None:
        with self._cond:
            self._accepting = True
            self._closing = False

    def admit(self, kind: JobKind, loop: asyncio.AbstractEventLoop) -> Job:
        """Take a slot or refuse at once: :class:`QueueBusy` when full, :class:`QueueClosed` when closed."""
        with self._cond:
            if not self._accepting:
                raise QueueClosed("the inference queue is not running")
            waiting = len(self._decoding) + self._queued_locked()
            if waiting >= self.max_queued:
                raise QueueBusy(f"{waiting} jobs already waiting (queue.max_queued = {self.max_queued})")
            job = Job(kind=kind, future=loop.create_future(), loop=loop, admitted_at=self._clock())
            self._decoding.add(job)
            return job

    def enqueue(self, job: Job, payload: Any) -> bool:
        """Decoding finished: put the job in its lane. False when it was released meanwhile (closed)."""
        with self._cond:
            if job.state is not JobState.DECODING:
                return False
            self._decoding.discard(job)
            job.payload = payload
            job.state = JobState.QUEUED
            job.queued_at = self._clock()
            self._lanes[job.kind].append(job)
            self._cond.notify_all()
            return True

    def release(self, job: Job) -> bool:
        """Give up a job that has not started (caller cancelled, timed out, decode failed).

        Frees its slot at once and makes sure it never runs. Returns False for a job already in a
        batch (its result is simply dropped when it arrives) or already finished.
        """
        with self._cond:
            if job.state is JobState.DECODING:
                self._decoding.discard(job)
            elif job.state is JobState.QUEUED:
                self._lanes[job.kind].remove(job)
            else:
                return False
            job.state = JobState.DONE
            job.payload = None
            self._cond.notify_all()
            return True

    def close(self, *, drain: bool) -> list[Job]:
        """Stop admitting. With ``drain`` the worker finishes what is waiting; without, the waiting
        jobs (queued and still decoding) are removed and returned for the caller to fail."""
        with self._cond:
            self._accepting = False
            self._closing = True
            dropped: list[Job] = []
            if not drain:
                dropped.extend(self._decoding)  # their enqueue() will now return False
                self._decoding.clear()
                for lane in self._lanes.values():
                    dropped.extend(lane)
                    lane.clear()
                for job in dropped:
                    job.state = JobState.DONE
                    job.payload = None
            self._cond.notify_all()
            return dropped

    def depths(self) -> dict[str, int]:
        """Gauges: ``waiting`` (holding a slot) = ``decoding`` + ``queued``; ``running`` is in the model."""
        with self._cond:
            queued = self._queued_locked()
            return {
                "waiting": len(self._decoding) + queued,
                "decoding": len(self._decoding),
                "queued": queued,
                "running": len(self._running),
                "max_queued": self.max_queued,
            }

    @property
    def closed(self) -> bool:
        with self._cond:
            return self._closing

    # ---------------------------------------------------------------- worker side

    def next_batch(self) -> list[Job] | None:
        """Block until a micro-batch is ready; None once closed and nothing is left to do.

        The lane whose head has waited longest goes first (no kind starves). A batch is taken as
        soon as it is full, or ``max_wait_s`` after its head job was queued, whichever is first —
        Triton's dynamic batching / Ray Serve's ``@serve.batch``: under load batches fill up
        instantly (the worker was busy, so jobs piled up), when idle a lone job waits at most
        ``max_wait_s``.
        """
        with self._cond:
            while True:
                lane = self._oldest_lane_locked()
                if lane is None:
                    if self._closing and not self._decoding:
                        return None
                    self._cond.wait()
                    continue
                deadline = lane[0].queued_at + self.max_wait_s
                while lane and len(lane) < self.max_batch_size and not self._closing:
                    remaining = deadline - self._clock()
                    if remaining <= 0:
                        break
                    self._cond.wait(remaining)
                if not lane:  # everything in it was released while we waited
                    continue
                batch = [lane.popleft() for _ in range(min(self.max_batch_size, len(lane)))]
                now = self._clock()
                for job in batch:
                    job.state = JobState.RUNNING
                    job.started_at = now
                self._running.extend(batch)
                return batch

    def finish(self, jobs: Sequence[Job]) -> None:
        """The worker settled these jobs."""
        with self._cond:
            for job in jobs:
                job.state = JobState.DONE
                job.payload = None
                if job in self._running:
                    self._running.remove(job)
            self._cond.notify_all()

    def take_running(self) -> list[Job]:
        """The jobs of a batch whose worker died, so they can be failed (never silently lost)."""
        with self._cond:
            jobs, self._running = self._running, []
            for job in jobs:
                job.state = JobState.DONE
                job.payload = None
            return jobs

    # ---------------------------------------------------------------- internals

    def _queued_locked(self) -> int:
        return sum(len(lane) for lane in self._lanes.values())

    def _oldest_lane_locked(self) -> deque[Job] | None:
        heads = [lane for lane in self._lanes.values() if lane]
        return min(heads, key=lambda lane: lane[0].queued_at) if heads else None


# ------------------------------------------------------------------------- OOM splitting


def is_out_of_memory(exc: BaseException) -> bool:
    """CUDA OOM (``torch.cuda.OutOfMemoryError``), or the RuntimeError other backends raise for it."""
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    if isinstance(exc, RuntimeError):
        text = str(exc).lower()
        return "out of memory" in text or "can't allocate memory" in text
    return False


def free_accelerator_memory() -> None:
    """Return cached CUDA blocks after an OOM, so the smaller retry has the best chance."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def predict_splitting_on_oom(
    predict: Callable[[list[T]], list[R]],
    items: list[T],
    *,
    is_oom: Callable[[BaseException], bool] = is_out_of_memory,
    on_split: Callable[[int], None] | None = None,
) -> list[R | OutOfMemory]:
    """``predict(items)``, halving the batch recursively when it runs out of memory.

    Returns one entry per item, in order: its result, or :class:`OutOfMemory` for an item that
    failed even alone. Nothing is dropped. Any other exception propagates (the worker treats it as
    a crash). The retry happens *outside* the ``except`` block on purpose: the traceback pins the
    failed attempt's tensors, and keeping it alive would make the retry run out of memory too.
    """
    detail = ""
    try:
        results = predict(items)
    except BaseException as exc:
        if not is_oom(exc):
            raise
        detail = f"{type(exc).__name__}: {str(exc)[:300]}"
    else:
        if len(results) != len(items):
            raise RuntimeError(f"model returned {len(results)} results for {len(items)} inputs")
        return list(results)
    free_accelerator_memory()
    if len(items) == 1:
        return [OutOfMemory(f"out of memory even for a single job ({detail})")]
    if on_split is not None:
        on_split(len(items))
    middle = len(items) // 2
    return [
        *predict_splitting_on_oom(predict, items[:middle], is_oom=is_oom, on_split=on_split),
        *predict_splitting_on_oom(predict, items[middle:], is_oom=is_oom, on_split=on_split),
    ]
