"""The thread-safe heart of the queue: jobs, the bounded job board, micro-batch formation, OOM splits,
whose turn it is to run the models, and the flatten/split-back of text batches (shared with the
Ray replicas, which batch the same way).

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

Three worker threads share the models (:class:`Worker`): one for interactive work, one for
background work that does not caption (the fast tier: a new picture's first look, cheap CLIP work)
and one for background work that runs the captioner (the caption tier, full analyses). They take
turns (:meth:`JobBoard.model_turn`): one batch computes at a time (on a small CPU host two at once
only split the same cores, and tokenizers must not be entered from two threads), the
lower-ranked worker goes first, and a batch that holds the turn steps aside at its next
:meth:`JobBoard.checkpoint` (the analyzer calls it between model layers) while a lower-ranked
worker has work queued or running, then resumes where it stopped. So a person waits for one model
layer of background work, not for a whole background batch, and a new picture's first look does
not wait for a batch of captions either (measured in ``bench/results/priority_cpu.md``).
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

import numpy as np
import torch

from bot.inference.errors import OutOfMemory, QueueBusy, QueueClosed

__all__ = [
    "Job",
    "JobBoard",
    "JobKind",
    "JobState",
    "Priority",
    "Worker",
    "encode_together",
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


class Worker(enum.IntEnum):
    """The model worker threads, by rank: a lower rank gets the models first and makes a higher-ranked
    batch step aside at its next checkpoint."""

    INTERACTIVE = 0  # every interactive job
    FIRST_LOOK = 1  # background work that does not caption: the fast tier, background text jobs
    CAPTIONS = 2  # background work that runs the captioner: the caption tier, full analyses

    @property
    def label(self) -> str:
        return self.name.lower().replace("_", "-")


#: Kinds that run the captioner: in the background they go to :attr:`Worker.CAPTIONS`, in batches of
#: at most ``background_batch_size``.
CAPTIONING_KINDS = frozenset({JobKind.IMAGE, JobKind.CAPTION})
#: The order a background worker serves its lanes in (FIFO within a lane): cheap text work before
#: the fast tier; full analyses before the caption tier.
BACKGROUND_ORDER: dict[JobKind, int] = {
    JobKind.EMBED_TEXT: 0,
    JobKind.CLIP_TEXT: 0,
    JobKind.SENTIMENT: 0,
    JobKind.FAST: 1,
    JobKind.IMAGE: 2,
    JobKind.CAPTION: 3,
}


def worker_for(priority: Priority, kind: JobKind) -> Worker:
    """Which worker thread serves a job."""
    if priority is Priority.INTERACTIVE:
        return Worker.INTERACTIVE
    return Worker.CAPTIONS if kind in CAPTIONING_KINDS else Worker.FIRST_LOOK


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
    worker: Worker = Worker.INTERACTIVE
    # A first look (``JobKind.FAST``) that reads the picture's words; False under a deep ingest
    # backlog (``ingest.read_in_first_look_below``). Per job, not per lane: one batch may mix both.
    read_text: bool = True

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
        self._running: dict[Worker, list[Job]] = {worker: [] for worker in Worker}
        self._accepting = False
        self._closing = False
        # The model turn: which thread holds it (for which worker), and who waits for it.
        self._turn_holder: int | None = None
        self._turn_worker: Worker | None = None
        self._turn_waiting: dict[Worker, int] = dict.fromkeys(Worker, 0)
        # Jobs queued or running per worker, and the sum over the workers ranked before each one.
        self._demand: dict[Worker, int] = dict.fromkeys(Worker, 0)
        self._ahead: dict[Worker, int] = dict.fromkeys(Worker, 0)
        # Whether the turn's holder should step aside: read without the lock by checkpoint().
        self._yield_wanted = False
        # Worker threads inside a batch (thread id -> worker), holding the turn or about to take it.
        self._in_batch: dict[int, Worker] = {}
        #: Called (outside the lock) each time a batch steps aside for a lower-ranked worker's work.
        self.on_preempt: Callable[[], None] | None = None

    # ---------------------------------------------------------------- loop side

    def open(self) -> None:
        with self._cond:
            self._accepting = True
            self._closing = False

    def admit(self, kind: JobKind, loop: asyncio.AbstractEventLoop, priority: Priority = Priority.INTERACTIVE, *,
              read_text: bool = True) -> Job:
        """Take a slot or refuse at once: :class:`QueueBusy` when ``max_queued`` interactive jobs are
        waiting (background jobs are never refused for load), :class:`QueueClosed` when closed.
        ``read_text`` is carried on the job (:attr:`Job.read_text`)."""
        with self._cond:
            if not self._accepting:
                raise QueueClosed("the inference queue is not running")
            if priority is Priority.INTERACTIVE:
                waiting = self._waiting_locked(Priority.INTERACTIVE)
                if waiting >= self.max_queued:
                    raise QueueBusy(f"{waiting} jobs already waiting (queue.max_queued = {self.max_queued})")
            job = Job(kind=kind, future=loop.create_future(), loop=loop, admitted_at=self._clock(), priority=priority,
                      worker=worker_for(priority, kind), read_text=read_text)
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

    def next_batch(self, worker: Worker = Worker.INTERACTIVE) -> list[Job] | None:
        """Block until a micro-batch for ``worker`` is ready; None once closed and nothing of its is
        left to do.

        Interactive: the lane whose head has waited longest goes first (no kind starves). Background
        workers: only while no lower-ranked worker has work queued or running, lanes in
        :data:`BACKGROUND_ORDER`, FIFO within each. A batch is taken as soon as it is full, or
        ``max_wait_s`` after its head job was queued, whichever is first — Triton's dynamic batching /
        Ray Serve's ``@serve.batch``: under load batches fill up instantly (the worker was busy, so
        jobs piled up), when idle a lone job waits at most ``max_wait_s``.
        """
        with self._cond:
            while True:
                lane = self._next_lane_locked(worker)
                if lane is None:
                    if self._closing and not any(job.worker is worker for job in self._decoding):
                        return None
                    self._cond.wait()
                    continue
                if self._ahead[worker]:
                    self._cond.wait()  # lower-ranked work first; woken when it is done
                    continue
                size = self._batch_size(worker)
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
                self._running[worker].extend(batch)
                self._changed_locked()
                return batch

    def finish(self, jobs: Sequence[Job]) -> None:
        """The worker settled these jobs."""
        with self._cond:
            for job in jobs:
                job.state = JobState.DONE
                job.payload = None
                running = self._running[job.worker]
                if job in running:
                    running.remove(job)
            self._changed_locked()

    def take_running(self, worker: Worker = Worker.INTERACTIVE) -> list[Job]:
        """The jobs of a batch whose worker died, so they can be failed (never silently lost)."""
        with self._cond:
            jobs, self._running[worker] = self._running[worker], []
            for job in jobs:
                job.state = JobState.DONE
                job.payload = None
            self._changed_locked()
            return jobs

    # ---------------------------------------------------------------- the model turn

    @contextmanager
    def model_turn(self, worker: Worker, *, lazy: bool = False) -> Iterator[None]:
        """Hold the models for one batch: one holder at a time, the lowest rank first.

        A worker only takes the turn while no lower-ranked worker waits for it or has work queued or
        running; once it holds the turn it keeps it until its batch ends or it steps aside in
        :meth:`checkpoint`. ``lazy``: the turn is taken at the batch's first :meth:`checkpoint`
        instead of now — for an analyzer that calls its yield point before it touches any model or
        tokenizer, so a batch held up outside the models (waiting on I/O, or on a test's gate) blocks
        nobody.
        """
        me = threading.get_ident()
        with self._cond:
            self._in_batch[me] = worker
            if not lazy:
                self._take_turn_locked(me, worker)
        try:
            yield
        finally:
            with self._cond:
                self._in_batch.pop(me, None)
                if self._turn_holder == me:
                    self._turn_holder = self._turn_worker = None
                    self._changed_locked()

    def checkpoint(self) -> None:
        """A safe point before and between model layers: the batch running there may use the models now.

        Called by the analyzer from whatever thread is about to run a model. For the thread that
        holds the turn it returns at once (two unlocked reads) unless a lower-ranked worker has work
        queued or running; then it gives the turn up, waits until that work is done, takes the turn
        back and returns, and the batch carries on where it stopped (nothing is recomputed). A worker
        thread in a lazy batch takes the turn here, waiting for it as :meth:`model_turn` would. Any
        other thread passes.
        """
        me = threading.get_ident()
        if self._turn_holder == me and not self._yield_wanted:
            return
        stepped_aside = False
        with self._cond:
            worker = self._in_batch.get(me)
            if worker is None:  # not a worker thread inside a batch
                return
            if self._turn_holder == me:
                if not self._ahead[worker]:
                    return
                self._turn_holder = self._turn_worker = None
                self._changed_locked()
                stepped_aside = True
            self._take_turn_locked(me, worker)
        if stepped_aside and self.on_preempt is not None:
            self.on_preempt()

    def _take_turn_locked(self, me: int, worker: Worker) -> None:
        self._turn_waiting[worker] += 1
        try:
            while not self._may_take_turn_locked(worker):
                self._cond.wait()
        finally:
            self._turn_waiting[worker] -= 1
        self._turn_holder, self._turn_worker = me, worker
        self._changed_locked()

    def _may_take_turn_locked(self, worker: Worker) -> bool:
        if self._turn_holder is not None:
            return False
        return not self._ahead[worker] and not any(self._turn_waiting[w] for w in Worker if w < worker)

    # ---------------------------------------------------------------- internals

    def _changed_locked(self) -> None:
        for worker in Worker:
            self._demand[worker] = len(self._running[worker])
        for job_lane_key, lane in self._lanes.items():
            if lane:
                self._demand[worker_for(*job_lane_key)] += len(lane)
        ahead = 0
        for worker in Worker:
            self._ahead[worker] = ahead
            ahead += self._demand[worker]
        self._yield_wanted = self._turn_worker is not None and bool(self._ahead[self._turn_worker])
        self._cond.notify_all()

    def _waiting_locked(self, priority: Priority) -> int:
        decoding = sum(1 for job in self._decoding if job.priority is priority)
        return decoding + sum(len(self._lanes[priority, kind]) for kind in JobKind)

    def _batch_size(self, worker: Worker) -> int:
        return self.background_batch_size if worker is Worker.CAPTIONS else self.max_batch_size

    def _next_lane_locked(self, worker: Worker) -> deque[Job] | None:
        lanes = [
            (kind, lane)
            for (priority, kind), lane in self._lanes.items()
            if lane and worker_for(priority, kind) is worker
        ]
        if not lanes:
            return None
        if worker is Worker.INTERACTIVE:
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


# ------------------------------------------------------------------------- text batches


def encode_together(
    encode: Callable[[list[str]], Sequence[R] | np.ndarray], requests: Sequence[Sequence[str]], *, what: str = "model"
) -> list[list[R] | np.ndarray]:
    """All requests' texts in one model call, then each request's rows back, in order.

    A text batch is many callers' lists of texts (``/find`` sends one query, ``/vibe`` a few
    sentences): flattening them into one call is what makes batching pay, and splitting the rows back
    by each request's length is what gives every caller exactly its own. Used by the in-process
    queue's workers and by the Ray replicas alike. Rows of an array come back as copies (a caller
    must not keep the whole batch's buffer alive through a view); a model that answers with a
    different number of rows than texts is a bug, raised as such (the worker counts it a crash).
    """
    texts = [text for request in requests for text in request]
    outputs = encode(texts) if texts else []
    if len(outputs) != len(texts):
        raise RuntimeError(f"{what} returned {len(outputs)} results for {len(texts)} texts")
    results: list[list[R] | np.ndarray] = []
    offset = 0
    for request in requests:
        rows = outputs[offset : offset + len(request)]
        results.append(rows.copy() if isinstance(rows, np.ndarray) else list(rows))
        offset += len(request)
    return results
