"""Ingestion: everything between "a message has pictures" and "the bot knows them".

- :mod:`bot.ingest.ingestor` — limits, reading, analysing *now* (interactive: a mention, Find similar,
  /index backfill), caching and remembering; one :class:`IngestOutcome` per image.
- :mod:`bot.ingest.backlog` — passive posts: accepted into the durable ledger before anything else,
  then a fast first look and the caption later, as capacity allows, never refused for load.
"""

from bot.ingest.backlog import BacklogEvent, IngestBacklog
from bot.ingest.ingestor import ImageIngestor, IncomingImage, IngestOutcome

__all__ = ["BacklogEvent", "ImageIngestor", "IncomingImage", "IngestBacklog", "IngestOutcome"]
