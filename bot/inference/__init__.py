"""The inference package: one batched, bounded path from the bot's coroutines to the models.

``await services.queue.analyze(image_bytes)`` / ``analyze_fast`` + ``caption`` (the two tiers) /
``embed_texts`` / ``clip_texts`` / ``score_sentiment`` from any coroutine, each with a
:class:`Priority` (interactive work always goes first). What is where:

- :mod:`bot.inference.backend` — the two seams: :class:`InferenceBackend` (what the bot calls) and
  :class:`AnalyzerLike` (what the models must offer);
- :mod:`bot.inference.queue` — :class:`InferenceQueue`, the in-process backend: decode pool, worker
  threads that form micro-batches and run every model role once per batch;
- :mod:`bot.inference.batching` — the job board, priorities, the model turn, OOM splits, text
  batch flatten/split-back (shared with the Ray replicas);
- :mod:`bot.inference.errors` — what can go wrong, each with a sentence for the user;
- :mod:`bot.inference.metrics` — counters and histograms for ``/status`` and Prometheus;
- :mod:`bot.inference.ray` — the Ray Serve backend (optional ``ray`` extra; imported only when
  configured): wire format, replica, client, deployment.
"""

from bot.inference.backend import AnalyzerLike, InferenceBackend
from bot.inference.batching import JobKind, Priority
from bot.inference.errors import InferenceError, JobTimeout, OutOfMemory, QueueBusy, QueueClosed, WorkerCrashed
from bot.inference.metrics import QueueMetrics
from bot.inference.queue import InferenceQueue

__all__ = [
    "AnalyzerLike",
    "InferenceBackend",
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
