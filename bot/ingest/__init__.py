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
"""

from bot.ingest.backlog import BacklogEvent, IngestBacklog
from bot.ingest.ingestor import ImageIngestor, IncomingImage, IngestOutcome

__all__ = ["BacklogEvent", "ImageIngestor", "IncomingImage", "IngestBacklog", "IngestOutcome"]
