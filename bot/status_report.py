"""Turn the inference queue's metrics snapshot into short lines for the owners' ``/status``."""

from __future__ import annotations

from typing import Any


def _ms(seconds: float | None) -> str:
    return "—" if seconds is None else f"{seconds * 1000:.0f} ms"


def _age(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _number(value: float) -> str:
    return f"{value:g}" if float(value).is_integer() else f"{value:.2f}"


def _lanes_line(lanes: dict[str, dict[str, dict[str, float]]]) -> str:
    """Only the lanes with work waiting: ``background caption 12 (oldest 41.0 s)``."""
    busy = [
        f"{priority} {kind} {values.get('waiting', 0):g} (oldest {_age(values.get('oldest_wait_s', 0.0))})"
        for priority, kinds in lanes.items()
        for kind, values in kinds.items()
        if values.get("waiting")
    ]
    return " · ".join(busy) if busy else "nothing waiting"


def status_lines(snapshot: dict[str, Any]) -> list[tuple[str, str]]:
    """(title, value) pairs, plain text so screen readers and logs read them too."""
    stages = snapshot.get("stage_seconds", {})
    latency = stages.get("latency") or {}
    interactive = stages.get("latency_interactive") or {}
    batch = snapshot.get("batch_size", {}).get("image", {})
    jobs = snapshot.get("jobs", {})
    waiting_interactive = snapshot.get("waiting_interactive", snapshot.get("waiting", 0))
    lines = [
        ("Queue", f"{waiting_interactive:g} interactive waiting of {snapshot.get('max_queued', 0):g} · "
                  f"{snapshot.get('waiting_background', 0):g} background waiting · "
                  f"{snapshot.get('running', 0):g} running"),
        ("Lanes", _lanes_line(snapshot.get("lanes") or {})),
        ("Throughput", f"{snapshot.get('images_per_s', 0):.2f} images/s · {snapshot.get('images_total', 0)} total"),
        ("Latency", f"p50 {_ms(latency.get('p50'))} · p95 {_ms(latency.get('p95'))} · "
                    f"interactive p95 {_ms(interactive.get('p95'))}"),
        ("Batch size", f"mean {batch.get('mean', 0) or 0:.1f} · max {batch.get('max', 0) or 0:g}"),
        ("Refused / failed", f"{snapshot.get('busy', 0)} busy · {snapshot.get('timeouts', 0)} timed out · "
                             f"{snapshot.get('errors', 0)} errors"),
        ("Jobs ok", str(jobs.get("ok", 0))),
        ("Worker", f"{snapshot.get('worker_restarts', 0)} restarts · {snapshot.get('oom_splits', 0)} OOM splits · "
                   f"{snapshot.get('preemptions', 0)} preemptions"),
    ]
    for name, values in sorted((snapshot.get("sources") or {}).items()):
        text = " · ".join(f"{key.replace('_', ' ')} {_number(value)}" for key, value in sorted(values.items()))
        lines.append((name.replace("_", " ").capitalize(), text or "—"))
    return lines
