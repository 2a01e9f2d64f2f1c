"""Image memory: what was posted where, searchable by meaning (Chroma), with a crash-safe ingest ledger.

No Discord code here: the cog turns messages into :class:`ImageRef` values and permissions into the
set of visible channel ids that every read takes.
"""

from bot.memory.intent import SearchIntent, detect_search_intent
from bot.memory.ledger import IngestLedger, PendingImage
from bot.memory.records import ImageRef, StoredImage
from bot.memory.store import AsyncImageStore, ImageStore, SearchHit

__all__ = [
    "AsyncImageStore",
    "ImageRef",
    "ImageStore",
    "IngestLedger",
    "PendingImage",
    "SearchHit",
    "SearchIntent",
    "StoredImage",
    "detect_search_intent",
]
