"""/gallery ordering: the same visible images, sorted the ways people asked to browse them.

Sorting happens after the store's visibility filter, over plain records, so every order shows the same
set; ties fall back to newest-first and then the attachment id, so a page never reshuffles between clicks.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from bot.memory.records import StoredImage
from bot.overview.stats import NO_TOPIC, topic_of


def _polarity(image: StoredImage) -> float:
    """positive minus negative probability of the caption sentiment, in [-1, 1]."""
    return image.sentiment_scores.get("positive", 0.0) - image.sentiment_scores.get("negative", 0.0)


def _newest(image: StoredImage) -> tuple[int, int]:
    return (-image.ref.created_ts, -image.attachment_id)


#: /gallery ``sort`` choices: name -> (description, key). Keys sort ascending.
SORTS: dict[str, tuple[str, Callable[[StoredImage], tuple]]] = {
    "newest": ("newest first", _newest),
    "oldest": ("oldest first", lambda image: (image.ref.created_ts, image.attachment_id)),
    "happiest": ("most positive mood first", lambda image: (-_polarity(image), *_newest(image))),
    "saddest": ("most negative mood first", lambda image: (_polarity(image), *_newest(image))),
    "topic": ("grouped by topic (A-Z), newest first in each",
              lambda image: (topic_of(image) == NO_TOPIC, topic_of(image).lower(), *_newest(image))),
}
DEFAULT_SORT = "newest"


def sort_images(images: Sequence[StoredImage], sort: str = DEFAULT_SORT) -> list[StoredImage]:
    """``images`` in the order of ``sort`` (a key of :data:`SORTS`); raises KeyError otherwise."""
    _, key = SORTS[sort]
    return sorted(images, key=key)


def mood_note(image: StoredImage) -> str:
    """Footer note of a gallery card: the number the mood sorts order by."""
    return f"mood {_polarity(image):+.2f}"
