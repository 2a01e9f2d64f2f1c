"""Image memory: what was posted where, searchable by meaning and by the words in it (Chroma).

No Discord code here: the cog turns messages into :class:`ImageRef` values and permissions into the
set of visible channel ids that every read takes.
"""

from bot.memory.intent import SearchIntent, detect_search_intent
from bot.memory.records import ImageRef, StoredImage
from bot.memory.store import AsyncImageStore, ImageStore, SearchHit

__all__ = [
    "AsyncImageStore",
    "ImageRef",
    "ImageStore",
    "SearchHit",
    "SearchIntent",
    "StoredImage",
    "detect_search_intent",
]
