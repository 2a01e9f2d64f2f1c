"""The thread-safe heart of the queue: jobs, the bounded job board, micro-batch formation, OOM splits,
and whose turn it is to run the models.

Nothing here knows about asyncio beyond handing a result to a job's future on its own loop, which
keeps the logic testable and lets the model workers be plain threads.

A job's life, in the stages the queue names::

    admit ─▶ DECODING ─(decode pool)─▶ QUEUED ─(next_batch)─▶ RUNNING ─(model turn, predict)─▶ DONE ─▶ respond
       │          │                       │
       │          └──── release (cancelled / timed out / decode failed / closed) ───▶ DONE
       └─ QueueBusy when ``max_queued`` interactive jobs are already waiting

Two priorities (:class:`Priority`). An **interactive** job (someone is waiting: a mention, ``/vibe``,
``/find``'s query vectors) holds one of the ``max_queued`` slots from admission until the worker
takes it into a batch (or it is released): that bounds memory and the wait a person can be made to
sit through, and refusing at admission is what lets a burst be answered with an honest "busy" at
once instead of a timeout minutes later. A **background** job (indexing) is never refused for load:
the ingest backlog upstream bounds how many it submits, and refusing would only make it retry.

Each priority has its own worker thread and lanes (one per :class:`JobKind`); both share the models
through a *model turn* (:meth:`JobBoard.model_turn`): one batch computes at a time (on a small CPU
host two at once would only fight over the same cores, and tokenizers must not be entered from two
threads), interactive batches get the turn first, and a background batch that holds it steps aside
at its next :meth:`JobBoard.checkpoint` (the analyzer calls it between model layers) while
interactive work is queued or running, then resumes where it stopped. So an interactive job waits
for one model layer of background work, not for a whole background batch (measured in
``bench/results/priority_cpu.md``).
"""

from __future__ import annotations

import asyncio
import enum
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

from bot.inference.errors import OutOfMemory, QueueBusy, QueueClosed

__all__ = [
    "Job",
    "JobBoard",
    "JobKind",
    "JobState",
    "Priority",
    "is_out_of_memory",
    "predict_splitting_on_oom",
]

T = TypeVar("T")
R = TypeVar("R")


class JobKind(enum.StrEnum):
    """What a job asks of the models; batches never mix kinds (each runs different model roles)."""

    IMAGE = "image"  # full analysis: caption + CLIP tags + caption embedding + sentiment
    FAST = "fast"  # the fast tier: CLIP only (labels, topics, image mood, image vector)
    CAPTION = "caption"  # the caption tier: BLIP + the caption's embedding, topics and sentiment
    EMBED_TEXT = "embed_text"  # MiniLM vectors for search queries
    CLIP_TEXT = "clip_text"  # CLIP text vectors for text→image search
    SENTIMENT = "sentiment"  # the sentiment model on free text (stories, /vibe)


class Priority(enum.StrEnum):
    """Who waits for a job: a person (``INTERACTIVE``, always served first) or nobody in particular
    (``BACKGROUND``: indexing, backfill; never refused for load)."""

    INTERACTIVE = "interactive"
    BACKGROUND = "background"


#: The order the background worker serves its lanes in (FIFO within a lane): cheap text work, then
#: the fast tier (a picture becomes findable), then full analyses, then the slow caption tier.
BACKGROUND_ORDER: dict[JobKind, int] = {
    JobKind.EMBED_TEXT: 0,
    JobKind.CLIP_TEXT: 0,
    JobKind.SENTIMENT: 0,
    JobKind.FAST: 1,
    JobKind.IMAGE: 2,
    JobKind.CAPTION: 3,
}
#: Kinds that run the captioner: background batches of these are capped at ``background_batch_size``.
CAPTIONING_KINDS = frozenset({JobKind.IMAGE, JobKind.CAPTION})


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
    priority: Priority = Priority.INTERACTIVE

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
    """Admission control, per-(priority, kind) FIFO lanes the workers take micro-batches from, and
    the model turn.

    One condition variable guards everything; the event loop thread admits, enqueues and releases,
    the worker threads take batches and turns. ``clock`` is injectable for tests.
    """

    def __init__(
        self,
        *,
        max_batch_size: int,
        max_wait_s: float,
        max_queued: int,
        background_batch_size: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_batch_size = max_batch_size
        self.background_batch_size = background_batch_size or max_batch_size
        self.max_wait_s = max_wait_s
        self.max_queued = max_queued
        self._clock = clock
        self._cond = threading.Condition()
        self._lanes: dict[tuple[Priority, JobKind], deque[Job]] = {
            (priority, kind): deque() for priority in Priority for kind in JobKind
        }
        self._decoding: set[Job] = set()
        self._running: dict[Priority, list[Job]] = {priority: [] for priority in Priority}
        self._accepting = False
        self._closing = False
        # The model turn: which thread holds it (and at what priority), and who waits for it.
        self._turn_holder: int | None = None
        self._turn_priority: Priority | None = None
        self._turn_waiting: dict[Priority, int] = dict.fromkeys(Priority, 0)
        # Interactive jobs queued or running; read without the lock by checkpoint()'s fast path.
        self._interactive_demand = 0
        #: Called (outside the lock) each time a background batch steps aside for interactive work.
        self.on_preempt: Callable[[], None] | None = None

    # ---------------------------------------------------------------- loop side

    def open(self) -> None:
        with self._cond:
            self._accepting = True
            self._closing = False

    def admit(self, kind: JobKind, loop: asyncio.AbstractEventLoop, priority: Priority = Priority.INTERACTIVE) -> Job:
        """Take a slot or refuse at once: :class:`QueueBusy` when ``max_queued`` interactive jobs are
        waiting (background jobs are never refused for load), :class:`QueueClosed` when closed."""
        with self._cond:
            if not self._accepting:
                raise QueueClosed("the inference queue is not running")
            if priority is Priority.INTERACTIVE:
                waiting = self._waiting_locked(Priority.INTERACTIVE)
                if waiting >= self.max_queued:
                    raise QueueBusy(f"{waiting} jobs already waiting (queue.max_queued = {self.max_queued})")
            job = Job(kind=kind, future=loop.create_future(), loop=loop, admitted_at=self._clock(), priority=priority)
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
            self._lanes[job.priority, job.kind].append(job)
            self._changed_locked()
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
                self._lanes[job.priority, job.kind].remove(job)
            else:
                return False
            job.state = JobState.DONE
            job.payload = None
            self._changed_locked()
            return True

    def close(self, *, drain: bool) -> list[Job]:
        """Stop admitting. With ``drain`` the workers finish what is waiting; without, the waiting
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
            self._changed_locked()
            return dropped

    def depths(self) -> dict[str, int]:
        """Gauges: ``waiting`` (admitted, not yet in a batch) = ``decoding`` + ``queued``, split into
        ``waiting_interactive`` (what ``max_queued`` bounds) and ``waiting_background``; ``running``
        is in the models."""
        with self._cond:
            queued = sum(len(lane) for lane in self._lanes.values())
            return {
                "waiting": len(self._decoding) + queued,
                "waiting_interactive": self._waiting_locked(Priority.INTERACTIVE),
                "waiting_background": self._waiting_locked(Priority.BACKGROUND),
                "decoding": len(self._decoding),
                "queued": queued,
                "running": sum(len(jobs) for jobs in self._running.values()),
                "max_queued": self.max_queued,
            }

    def lanes(self) -> dict[tuple[str, str], dict[str, float]]:
        """Per ``(priority, kind)``: ``waiting`` jobs (decoding or queued) and ``oldest_wait_s``, the
        age since admission of the oldest of them (0 when none)."""
        with self._cond:
            now = self._clock()
            oldest: dict[tuple[Priority, JobKind], float] = {}
            counts: dict[tuple[Priority, JobKind], int] = dict.fromkeys(self._lanes, 0)
            for key, lane in self._lanes.items():
                counts[key] += len(lane)
                for job in lane:
                    oldest[key] = min(oldest.get(key, job.admitted_at), job.admitted_at)
            for job in self._decoding:
                key = (job.priority, job.kind)
                counts[key] += 1
                oldest[key] = min(oldest.get(key, job.admitted_at), job.admitted_at)
            return {
                (priority.value, kind.value): {
                    "waiting": counts[priority, kind],
                    "oldest_wait_s": max(0.0, now - oldest[priority, kind]) if (priority, kind) in oldest else 0.0,
                }
                for priority, kind in self._lanes
            }

    @property
    def closed(self) -> bool:
        with self._cond:
            return self._closing

    # ---------------------------------------------------------------- worker side

    def next_batch(self, priority: Priority = Priority.INTERACTIVE) -> list[Job] | None:
        """Block until a micro-batch of ``priority`` is ready; None once closed and nothing of that
        priority is left to do.

        Interactive: the lane whose head has waited longest goes first (no kind starves). Background:
        only while no interactive job is queued or running, lanes in :data:`BACKGROUND_ORDER` (the
        fast tier before the caption tier), FIFO within each. A batch is taken as soon as it is full,
        or ``max_wait_s`` after its head job was queued, whichever is first — Triton's dynamic
        batching / Ray Serve's ``@serve.batch``: under load batches fill up instantly (the worker was
        busy, so jobs piled up), when idle a lone job waits at most ``max_wait_s``.
        """
        with self._cond:
            while True:
                lane = self._next_lane_locked(priority)
                if lane is None:
                    if self._closing and not any(job.priority is priority for job in self._decoding):
                        return None
                    self._cond.wait()
                    continue
                if priority is Priority.BACKGROUND and self._interactive_demand:
                    self._cond.wait()  # interactive work first; woken when it is done
                    continue
                size = self._batch_size(priority, lane[0].kind)
                deadline = lane[0].queued_at + self.max_wait_s
                while lane and len(lane) < size and not self._closing:
                    remaining = deadline - self._clock()
                    if remaining <= 0:
                        break
                    self._cond.wait(remaining)
                if not lane:  # everything in it was released while we waited
                    continue
                batch = [lane.popleft() for _ in range(min(size, len(lane)))]
                now = self._clock()
                for job in batch:
                    job.state = JobState.RUNNING
                    job.started_at = now
                self._running[priority].extend(batch)
                self._changed_locked()
                return batch

    def finish(self, jobs: Sequence[Job]) -> None:
        """The worker settled these jobs."""
        with self._cond:
            for job in jobs:
                job.state = JobState.DONE
                job.payload = None
                running = self._running[job.priority]
                if job in running:
                    running.remove(job)
            self._changed_locked()

    def take_running(self, priority: Priority = Priority.INTERACTIVE) -> list[Job]:
        """The jobs of a batch whose worker died, so they can be failed (never silently lost)."""
        with self._cond:
            jobs, self._running[priority] = self._running[priority], []
            for job in jobs:
                job.state = JobState.DONE
                job.payload = None
            self._changed_locked()
            return jobs

    # ---------------------------------------------------------------- the model turn

    @contextmanager
    def model_turn(self, priority: Priority) -> Iterator[None]:
        """Hold the models for one batch: one holder at a time, interactive first.

        A background batch only starts while no interactive job is waiting for the turn, queued or
        running; once it holds the turn it keeps it until it ends or steps aside in
        :meth:`checkpoint`.
        """
        me = threading.get_ident()
        with self._cond:
            self._take_turn_locked(me, priority)
        try:
            yield
        finally:
            with self._cond:
                if self._turn_holder == me:
                    self._turn_holder = self._turn_priority = None
                    self._cond.notify_all()

    def checkpoint(self) -> None:
        """A safe point between model layers: a background holder steps aside for interactive work.

        Called by the analyzer from whatever thread is running a model. It returns at once (one
        unlocked read) unless interactive jobs are queued or running and the caller is a background
        batch holding the turn; then it gives the turn up, waits until no interactive job is left,
        takes the turn back and returns, and the batch carries on where it stopped (nothing is
        recomputed). Any other caller (an interactive batch, a thread without the turn) passes.
        """
        if not self._interactive_demand:
            return
        me = threading.get_ident()
        with self._cond:
            if self._turn_holder != me or self._turn_priority is not Priority.BACKGROUND:
                return
            if not self._interactive_demand:
                return
            self._turn_holder = self._turn_priority = None
            self._cond.notify_all()
            self._take_turn_locked(me, Priority.BACKGROUND)
        if self.on_preempt is not None:
            self.on_preempt()

    def _take_turn_locked(self, me: int, priority: Priority) -> None:
        self._turn_waiting[priority] += 1
        try:
            while not self._may_take_turn_locked(priority):
                self._cond.wait()
        finally:
            self._turn_waiting[priority] -= 1
        self._turn_holder, self._turn_priority = me, priority

    def _may_take_turn_locked(self, priority: Priority) -> bool:
        if self._turn_holder is not None:
            return False
        if priority is Priority.INTERACTIVE:
            return True
        return not self._turn_waiting[Priority.INTERACTIVE] and not self._interactive_demand

    # ---------------------------------------------------------------- internals

    def _changed_locked(self) -> None:
        self._interactive_demand = len(self._running[Priority.INTERACTIVE]) + sum(
            len(self._lanes[Priority.INTERACTIVE, kind]) for kind in JobKind
        )
        self._cond.notify_all()

    def _waiting_locked(self, priority: Priority) -> int:
        decoding = sum(1 for job in self._decoding if job.priority is priority)
        return decoding + sum(len(self._lanes[priority, kind]) for kind in JobKind)

    def _batch_size(self, priority: Priority, kind: JobKind) -> int:
        if priority is Priority.BACKGROUND and kind in CAPTIONING_KINDS:
            return self.background_batch_size
        return self.max_batch_size

    def _next_lane_locked(self, priority: Priority) -> deque[Job] | None:
        lanes = [(kind, self._lanes[priority, kind]) for kind in JobKind if self._lanes[priority, kind]]
        if not lanes:
            return None
        if priority is Priority.INTERACTIVE:
            return min(lanes, key=lambda item: item[1][0].queued_at)[1]
        return min(lanes, key=lambda item: (BACKGROUND_ORDER[item[0]], item[1][0].queued_at))[1]


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
