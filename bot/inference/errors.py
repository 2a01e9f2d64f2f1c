"""Typed failures of the inference queue, each with a sentence that can be shown to a Discord user.

Every error the queue raises derives from :class:`InferenceError`, so a cog needs one ``except``
clause (plus :class:`bot.imaging.ImageRejected`, which decoding raises for bad *files* and which is
passed through unchanged, to the caller whose file it was). ``code`` is short and stable for logs
and metrics; ``str(exc)`` carries the technical detail; ``user_message`` never does.
"""

from __future__ import annotations

import asyncio
from typing import ClassVar

from bot.errors import UserFacingError
from bot.imaging import ImageRejected

__all__ = [
    "InferenceError",
    "JobTimeout",
    "OutOfMemory",
    "QueueBusy",
    "QueueClosed",
    "WorkerCrashed",
]


class InferenceError(UserFacingError):
    """Base of every queue failure (the detail comes first: it is what the queue's code knows)."""

    code: ClassVar[str] = "inference_error"
    default_message: ClassVar[str] = "Something went wrong while I was looking at that — please try again."

    def __init__(self, detail: str | None = None, *, user_message: str | None = None) -> None:
        super().__init__(user_message, detail=detail)


class QueueBusy(InferenceError):
    """More jobs are waiting than ``queue.max_queued``: refused at once instead of queueing forever."""

    code = "busy"
    default_message = "I'm busy right now, try again in a moment."


class JobTimeout(InferenceError):
    """The job did not finish within its timeout (``queue.job_timeout_s`` unless the caller gave one)."""

    code = "timeout"
    default_message = "That took me too long, so I gave up — please try again in a little while."


class WorkerCrashed(InferenceError):
    """The model worker died while this job was in its batch; the worker restarts for later jobs."""

    code = "worker_crashed"
    default_message = "Something broke on my side while I was looking at that — please try again."


class OutOfMemory(InferenceError):
    """The accelerator ran out of memory even for this job alone (batches are split before this)."""

    code = "out_of_memory"
    default_message = "I'm short on memory right now and couldn't look at that — please try again later."


class QueueClosed(InferenceError):
    """The queue is shutting down (or never started): no new work is taken."""

    code = "closed"
    default_message = "I'm restarting right now — please try again in a minute."


def outcome_of(exc: BaseException) -> str:
    """The metrics outcome of a failed job (``busy``, ``timeout``, ``rejected``, ...), for either backend."""
    if isinstance(exc, asyncio.CancelledError):
        return "cancelled"
    if isinstance(exc, ImageRejected):
        return "rejected"
    if isinstance(exc, InferenceError):
        return exc.code if exc.code != InferenceError.code else "error"
    return "error"
