"""The inference queue: one batched, bounded path from the bot's coroutines to the models.

``await queue.analyze(image_bytes)`` / ``analyze_fast`` + ``caption`` (the two tiers) /
``embed_texts`` / ``clip_texts`` / ``score_sentiment`` from any coroutine, each with a
:class:`Priority` (interactive work always goes first); worker threads form micro-batches and run
every model role once per batch. See :mod:`bot.inference.queue` for the stages and
:mod:`bot.inference.errors` for what can go wrong.
"""

from bot.inference.batching import JobKind, Priority
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
    "Priority",
    "QueueBusy",
    "QueueClosed",
    "QueueMetrics",
    "WorkerCrashed",
]
