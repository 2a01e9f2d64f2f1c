"""Ingestion: everything between "a message has pictures" and "the bot knows them". Change how
pictures are accepted, limited, analysed or resumed here.

- :mod:`bot.ingest.ingestor` — limits, reading, analysing *now* (interactive: a mention, Find similar,
  /index backfill), caching and remembering; one :class:`IngestOutcome` per image.
- :mod:`bot.ingest.backlog` — passive posts: accepted into the durable ledger before anything else,
  then a fast first look and the caption later, as capacity allows, never refused for load; the
  crash resume and the catch-up after a restart start here.
- :mod:`bot.ingest.ledger` — the write-ahead ledger (SQLite) that makes all of the above crash-safe.
- :mod:`bot.ingest.limits` — per-user and per-channel rate limits, and the size check every entry
  point (posts, /vibe) shares.
- :mod:`bot.ingest.cache` — the analyses of recent attachments, for the chat's context lines.
- :mod:`bot.ingest.backfill` and :mod:`bot.ingest.cursors` — /index: older history, resumable.

The names below are loaded on first use (PEP 562): :mod:`bot.memory.service` imports the ledger from
this package, and the backlog imports memory records, so eager imports here would make a cycle.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what type checkers and editors see; at run time __getattr__ below loads them
    from bot.ingest.backlog import BacklogEvent, IngestBacklog
    from bot.ingest.ingestor import ImageIngestor, IncomingImage, IngestOutcome

_EXPORTS = {
    "BacklogEvent": "bot.ingest.backlog",
    "IngestBacklog": "bot.ingest.backlog",
    "ImageIngestor": "bot.ingest.ingestor",
    "IncomingImage": "bot.ingest.ingestor",
    "IngestOutcome": "bot.ingest.ingestor",
}
__all__ = ["BacklogEvent", "ImageIngestor", "IncomingImage", "IngestBacklog", "IngestOutcome"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'bot.ingest' has no attribute {name!r}")
