"""Counters, gauges and histograms for the inference queue, for ``/status`` and for Prometheus.

Hand-written rather than ``prometheus_client`` (no new dependency for a dozen series). Everything is
updated from several threads (the event loop, the decode pool, the model worker), so one lock
guards it all; updates are a few additions, far cheaper than anything they measure.

Two views of the same numbers:

- :meth:`QueueMetrics.snapshot` — a plain dict (JSON-friendly) with means and p50/p95 over a window
  of recent samples, for a ``/status`` command;
- :meth:`QueueMetrics.prometheus_text` — the Prometheus text exposition format (version 0.0.4),
  with cumulative histogram buckets, for scraping.

Besides its own numbers it shows the queue's lanes (waiting jobs and the age of the oldest one per
priority and kind) and whatever other components register with :meth:`QueueMetrics.register_source`
(the ingest backlog: its depth per tier, the oldest waiting picture, drops), so ``/status`` and one
scrape cover the whole path from a posted picture to its analysis.
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

__all__ = [
    "BATCH_BUCKETS",
    "OUTCOMES",
    "SECONDS_BUCKETS",
    "Histogram",
    "QueueMetrics",
]

#: Job outcomes counted in ``jobs_total`` (every admitted or refused job ends in exactly one).
OUTCOMES = ("ok", "busy", "timeout", "cancelled", "rejected", "out_of_memory", "worker_crashed", "closed", "error")
SECONDS_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
_RATE_WINDOW_S = 60.0
_NAME_UNSAFE = re.compile(r"[^a-zA-Z0-9_]")

log = logging.getLogger(__name__)


class Histogram:
    """Prometheus-style cumulative buckets, plus the most recent samples for percentiles.

    Buckets are exact forever; the percentiles in :meth:`summary` describe the last ``window``
    observations (what "how is it doing now" wants). Not thread-safe by itself: :class:`QueueMetrics`
    holds the lock.
    """

    def __init__(self, buckets: Sequence[float], *, window: int = 1024) -> None:
        self.bounds = tuple(sorted(buckets))
        self.bucket_counts = [0] * len(self.bounds)  # non-cumulative; made cumulative on export
        self.count = 0
        self.sum = 0.0
        self.recent: deque[float] = deque(maxlen=window)

    def observe(self, value: float) -> None:
        self.count += 1
        self.sum += value
        self.recent.append(value)
        for index, bound in enumerate(self.bounds):
            if value <= bound:
                self.bucket_counts[index] += 1
                break

    def cumulative(self) -> list[tuple[float, int]]:
        """``(upper bound, observations <= bound)`` pairs, ending with ``(inf, count)``."""
        running, rows = 0, []
        for bound, count in zip(self.bounds, self.bucket_counts, strict=True):
            running += count
            rows.append((bound, running))
        rows.append((math.inf, self.count))
        return rows

    def quantile(self, q: float) -> float | None:
        """Nearest-rank percentile over the recent window (None before any sample)."""
        if not self.recent:
            return None
        ordered = sorted(self.recent)
        rank = max(1, math.ceil(q * len(ordered)))
        return ordered[rank - 1]

    def summary(self) -> dict[str, float | int | None]:
        return {
            "count": self.count,
            "mean": (self.sum / self.count) if self.count else None,
            "p50": self.quantile(0.5),
            "p95": self.quantile(0.95),
            "max": max(self.recent) if self.recent else None,
        }


class QueueMetrics:
    """Everything the queue measures.

    ``gauges`` is called at read time for the current depths (the queue's job board owns those
    numbers, so they are never stale or double-counted here).
    """

    def __init__(
        self,
        *,
        gauges: Callable[[], Mapping[str, float]] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._lock = threading.Lock()
        self._gauges = gauges or dict
        self._clock = clock
        self._started = clock()
        self.jobs: dict[tuple[str, str], int] = {}
        self.batch_sizes: dict[str, Histogram] = {}
        self.stage_seconds: dict[str, Histogram] = {}
        self.images_total = 0
        self.oom_splits_total = 0
        self.worker_restarts_total = 0
        self.preemptions_total = 0
        self._recent_images: deque[tuple[float, int]] = deque()
        self._lanes: Callable[[], Mapping[tuple[str, str], Mapping[str, float]]] = dict
        self._sources: dict[str, tuple[Callable[[], Mapping[str, float]], str]] = {}

    def set_gauges(self, gauges: Callable[[], Mapping[str, float]]) -> None:
        self._gauges = gauges

    def set_lanes(self, lanes: Callable[[], Mapping[tuple[str, str], Mapping[str, float]]]) -> None:
        """Per-lane gauges, read at read time: ``{(priority, kind): {"waiting": n, "oldest_wait_s": s}}``."""
        self._lanes = lanes

    def register_source(self, name: str, read: Callable[[], Mapping[str, float]], *, help_text: str = "") -> None:
        """Show another component's numbers beside the queue's (``/status`` and the Prometheus text).

        ``read()`` is called at read time and returns ``{key: number}``; each key becomes
        ``imagebot_<name>_<key>``, a counter when the key ends in ``_total`` (Prometheus' naming
        rule), else a gauge. Names are reduced to ``[a-zA-Z0-9_]``. Registering a name again
        replaces the source; a source that raises is logged and left out of that read.
        """
        safe = _NAME_UNSAFE.sub("_", name)
        if not safe:
            raise ValueError("a metrics source needs a name")
        with self._lock:
            self._sources[safe] = (read, help_text)

    def unregister_source(self, name: str) -> None:
        with self._lock:
            self._sources.pop(_NAME_UNSAFE.sub("_", name), None)

    # ---------------------------------------------------------------- recording

    def job_finished(self, kind: str, outcome: str) -> None:
        """Count one job's final outcome (see :data:`OUTCOMES`)."""
        with self._lock:
            key = (kind, outcome)
            self.jobs[key] = self.jobs.get(key, 0) + 1

    def observe_stage(self, stage: str, seconds: float) -> None:
        """Latency of one stage: ``decode``, ``queue_wait``, ``predict_<kind>``, ``<role>``, ``latency``."""
        with self._lock:
            histogram = self.stage_seconds.get(stage)
            if histogram is None:
                histogram = self.stage_seconds[stage] = Histogram(SECONDS_BUCKETS)
            histogram.observe(seconds)

    def observe_batch(self, kind: str, size: int, *, images: int = 0) -> None:
        """One batch went through the models; ``images`` counts towards images/s."""
        with self._lock:
            histogram = self.batch_sizes.get(kind)
            if histogram is None:
                histogram = self.batch_sizes[kind] = Histogram(BATCH_BUCKETS)
            histogram.observe(size)
            if images:
                self.images_total += images
                now = self._clock()
                self._recent_images.append((now, images))
                self._trim(now)

    def oom_split(self) -> None:
        with self._lock:
            self.oom_splits_total += 1

    def worker_restarted(self) -> None:
        with self._lock:
            self.worker_restarts_total += 1

    def preempted(self) -> None:
        """A background batch paused between model layers for interactive work."""
        with self._lock:
            self.preemptions_total += 1

    # ---------------------------------------------------------------- reading

    def _trim(self, now: float) -> None:
        while self._recent_images and self._recent_images[0][0] < now - _RATE_WINDOW_S:
            self._recent_images.popleft()

    def images_per_second(self) -> float:
        """Images analysed per second over the last minute (or since start, if younger)."""
        with self._lock:
            now = self._clock()
            self._trim(now)
            span = min(_RATE_WINDOW_S, max(now - self._started, 1e-9))
            return sum(count for _, count in self._recent_images) / span

    def lanes(self) -> dict[str, dict[str, dict[str, float]]]:
        """``{priority: {kind: {"waiting": n, "oldest_wait_s": s}}}``, every lane (zeros included)."""
        nested: dict[str, dict[str, dict[str, float]]] = {}
        for (priority, kind), values in sorted(dict(self._lanes()).items()):
            nested.setdefault(priority, {})[kind] = {key: float(value) for key, value in values.items()}
        return nested

    def sources(self) -> dict[str, dict[str, float]]:
        """The registered sources' current numbers, by source name (a failing source is left out)."""
        with self._lock:
            registered = list(self._sources.items())
        values: dict[str, dict[str, float]] = {}
        for name, (read, _) in registered:
            try:
                raw = dict(read())
            except Exception:
                log.exception("metrics source %r failed", name)
                continue
            values[name] = {
                _NAME_UNSAFE.sub("_", str(key)): float(value)
                for key, value in raw.items()
                if isinstance(value, (int, float)) and not isinstance(value, bool)
            }
        return values

    def count(self, outcome: str, kind: str | None = None) -> int:
        """Jobs that ended with ``outcome`` (of one kind, or all kinds)."""
        with self._lock:
            return sum(n for (k, o), n in self.jobs.items() if o == outcome and (kind is None or k == kind))

    def snapshot(self) -> dict[str, Any]:
        """A JSON-friendly dict for ``/status``: depths, rates, counts, batch sizes, stage latencies."""
        rate = self.images_per_second()
        gauges = dict(self._gauges())
        lanes = self.lanes()
        sources = self.sources()
        with self._lock:
            outcomes: dict[str, int] = dict.fromkeys(OUTCOMES, 0)
            by_kind: dict[str, dict[str, int]] = {}
            for (kind, outcome), n in sorted(self.jobs.items()):
                outcomes[outcome] = outcomes.get(outcome, 0) + n
                by_kind.setdefault(kind, {})[outcome] = n
            return {
                **gauges,
                "uptime_s": round(self._clock() - self._started, 3),
                "images_total": self.images_total,
                "images_per_s": round(rate, 4),
                "jobs": outcomes,
                "jobs_by_kind": by_kind,
                "busy": outcomes["busy"],
                "timeouts": outcomes["timeout"],
                "errors": sum(outcomes[o] for o in ("out_of_memory", "worker_crashed", "error")),
                "oom_splits": self.oom_splits_total,
                "worker_restarts": self.worker_restarts_total,
                "preemptions": self.preemptions_total,
                "lanes": lanes,
                "sources": sources,
                "batch_size": {
                    kind: {**h.summary(), "histogram": {_label(b): c for b, c in h.cumulative()}}
                    for kind, h in sorted(self.batch_sizes.items())
                },
                "stage_seconds": {stage: h.summary() for stage, h in sorted(self.stage_seconds.items())},
            }

    def prometheus_text(self, prefix: str = "imagebot_inference", source_prefix: str = "imagebot") -> str:
        """The Prometheus text exposition format (``text/plain; version=0.0.4``).

        The queue's series are named ``<prefix>_*``; registered sources ``<source_prefix>_<name>_*``.
        """
        gauges = dict(self._gauges())
        lanes = dict(self._lanes())
        sources = self.sources()
        rate = self.images_per_second()
        out: list[str] = []
        for name, value in sorted(gauges.items()):
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                _family(out, f"{prefix}_{name}", "gauge", f"Current {name.replace('_', ' ')} of the inference queue.")
                out.append(f"{prefix}_{name} {_number(value)}")
        for key, title in (("waiting", "Jobs waiting (decoding or queued)"),
                           ("oldest_wait_s", "Seconds the oldest waiting job has waited since admission")):
            name = f"{prefix}_lane_{'oldest_wait_seconds' if key == 'oldest_wait_s' else key}"
            _family(out, name, "gauge", f"{title}, per priority and kind.")
            for (priority, kind), values in sorted(lanes.items()):
                out.append(f"{name}{_labels(priority=priority, kind=kind)} {_number(float(values.get(key, 0.0)))}")
        with self._lock:
            helps = {name: help_text for name, (_, help_text) in self._sources.items()}
        for source, values in sorted(sources.items()):
            for key, value in sorted(values.items()):
                name = f"{source_prefix}_{source}_{key}"
                kind = "counter" if key.endswith("_total") else "gauge"
                about = helps.get(source) or source.replace("_", " ")
                _family(out, name, kind, f"{about}: {key.replace('_', ' ')}.")
                out.append(f"{name} {_number(value)}")
        with self._lock:
            _family(out, f"{prefix}_images_per_second", "gauge", "Images analysed per second over the last minute.")
            out.append(f"{prefix}_images_per_second {_number(rate)}")
            _family(out, f"{prefix}_images_total", "counter", "Images analysed by the models.")
            out.append(f"{prefix}_images_total {self.images_total}")
            _family(out, f"{prefix}_jobs_total", "counter", "Jobs by kind and final outcome.")
            for (kind, outcome), n in sorted(self.jobs.items()):
                out.append(f"{prefix}_jobs_total{_labels(kind=kind, outcome=outcome)} {n}")
            _family(out, f"{prefix}_oom_splits_total", "counter", "Batches split in half after running out of memory.")
            out.append(f"{prefix}_oom_splits_total {self.oom_splits_total}")
            _family(out, f"{prefix}_worker_restarts_total", "counter", "Model worker restarts after a crash.")
            out.append(f"{prefix}_worker_restarts_total {self.worker_restarts_total}")
            _family(out, f"{prefix}_preemptions_total", "counter",
                    "Background batches paused between model layers for interactive work.")
            out.append(f"{prefix}_preemptions_total {self.preemptions_total}")
            _histograms(out, f"{prefix}_batch_size", "Jobs per model batch.", "kind", self.batch_sizes.items())
            _histograms(
                out, f"{prefix}_stage_seconds",
                "Seconds per stage (decode, queue_wait, turn_wait, predict_*, model roles, latency[_<priority>]).",
                "stage", self.stage_seconds.items(),
            )
        return "\n".join(out) + "\n"


# ------------------------------------------------------------------------- exposition helpers


def _family(out: list[str], name: str, kind: str, help_text: str) -> None:
    out.append(f"# HELP {name} {help_text}")
    out.append(f"# TYPE {name} {kind}")


def _histograms(
    out: list[str], name: str, help_text: str, label: str, items: Iterable[tuple[str, Histogram]]
) -> None:
    _family(out, name, "histogram", help_text)
    for key, histogram in sorted(items):
        for bound, cumulative in histogram.cumulative():
            out.append(f"{name}_bucket{_labels(**{label: key, 'le': _label(bound)})} {cumulative}")
        out.append(f"{name}_sum{_labels(**{label: key})} {_number(histogram.sum)}")
        out.append(f"{name}_count{_labels(**{label: key})} {histogram.count}")


def _labels(**labels: str) -> str:
    def escape(value: str) -> str:
        return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")

    return "{" + ",".join(f'{key}="{escape(value)}"' for key, value in labels.items()) + "}"


def _label(bound: float) -> str:
    return "+Inf" if math.isinf(bound) else _number(bound)


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    return str(int(value)) if float(value).is_integer() else repr(float(value))
