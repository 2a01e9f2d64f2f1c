"""Turn the inference queue's metrics snapshot into short lines for the owners' ``/status``."""

from __future__ import annotations

from typing import Any


def _ms(seconds: float | None) -> str:
    return "—" if seconds is None else f"{seconds * 1000:.0f} ms"


def status_lines(snapshot: dict[str, Any]) -> list[tuple[str, str]]:
    """(title, value) pairs, plain text so screen readers and logs read them too."""
    stages = snapshot.get("stage_seconds", {})
    latency = stages.get("latency") or {}
    batch = snapshot.get("batch_size", {}).get("image", {})
    jobs = snapshot.get("jobs", {})
    return [
        ("Queue", f"{snapshot.get('waiting', 0):g} waiting of {snapshot.get('max_queued', 0):g} · "
                  f"{snapshot.get('running', 0):g} running"),
        ("Throughput", f"{snapshot.get('images_per_s', 0):.2f} images/s · {snapshot.get('images_total', 0)} total"),
        ("Latency", f"p50 {_ms(latency.get('p50'))} · p95 {_ms(latency.get('p95'))}"),
        ("Batch size", f"mean {batch.get('mean', 0) or 0:.1f} · max {batch.get('max', 0) or 0:g}"),
        ("Refused / failed", f"{snapshot.get('busy', 0)} busy · {snapshot.get('timeouts', 0)} timed out · "
                             f"{snapshot.get('errors', 0)} errors"),
        ("Jobs ok", str(jobs.get("ok", 0))),
        ("Worker", f"{snapshot.get('worker_restarts', 0)} restarts · {snapshot.get('oom_splits', 0)} OOM splits"),
    ]
