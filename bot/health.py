"""Liveness for containers: the bot writes a heartbeat file, ``python -m bot healthcheck`` reads it.

A file rather than an HTTP endpoint: no port to expose or secure, and it works the same for one
process or many shard processes (one file each).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path


def write_heartbeat(path: Path, *, ready: bool, latency_s: float | None, guilds: int) -> None:
    """Atomically replace the heartbeat file (a reader never sees half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"ts": time.time(), "ready": ready, "latency_s": latency_s, "guilds": guilds, "pid": os.getpid()}
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as handle:
        json.dump(payload, handle)
    os.replace(handle.name, path)


def check_heartbeat(path: Path, *, max_age_s: float) -> tuple[bool, str]:
    """(healthy, reason): the file exists, is fresh, and says the bot is connected and ready."""
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return False, f"no heartbeat file at {path} (bot not started yet?)"
    except (OSError, ValueError) as exc:
        return False, f"unreadable heartbeat file {path}: {exc}"
    age = time.time() - float(payload.get("ts", 0))
    if age > max_age_s:
        return False, f"heartbeat is {age:.0f}s old (limit {max_age_s:.0f}s)"
    if not payload.get("ready"):
        return False, "bot is running but not connected to Discord"
    return True, f"ok: ready, {payload.get('guilds', 0)} guild(s), heartbeat {age:.0f}s old"
