"""The inference queue: one batched, bounded path from the bot's coroutines to the models.

``await queue.analyze(image_bytes)`` / ``embed_texts`` / ``clip_texts`` from any coroutine; a
dedicated worker thread forms micro-batches and runs every model role once per batch. See
:mod:`bot.inference.queue` for the stages and :mod:`bot.inference.errors` for what can go wrong.
"""

from bot.inference.batching import JobKind
from bot.inference.errors import InferenceError, JobTimeout, OutOfMemory, QueueBusy, QueueClosed, WorkerCrashed
from bot.inference.metrics import QueueMetrics
from bot.inference.queue import AnalyzerLike, InferenceQueue

__all__ = [
    "AnalyzerLike",
    "InferenceError",
    "InferenceQueue",
    "JobKind",
    "JobTimeout",
    "OutOfMemory",
    "QueueBusy",
    "QueueClosed",
    "QueueMetrics",
    "WorkerCrashed",
]
