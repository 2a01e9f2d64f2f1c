"""/gallery ordering: the same visible images, sorted the ways people asked to browse them.

Sorting happens after the store's visibility filter, over plain records, so every order shows the same
set; ties fall back to newest-first and then the attachment id, so a page never reshuffles between clicks.

The mood sorts order by the caption's sentiment. A picture whose caption is not written yet (fast tier)
has only the image's own mood, from another model on another scale, so it is not ranked among them:
it comes after every captioned picture, newest first, and its card says the caption is not written yet.
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


def _by_mood(sign: int) -> Callable[[StoredImage], tuple]:
    """Caption mood (``sign`` 1: most negative first, -1: most positive first); pictures still waiting
    for their caption after all of them, newest first."""
    return lambda image: ((True, 0.0) if image.caption_pending else (False, sign * _polarity(image))) + _newest(image)


#: /gallery ``sort`` choices: name -> (description, key). Keys sort ascending.
SORTS: dict[str, tuple[str, Callable[[StoredImage], tuple]]] = {
    "newest": ("newest first", _newest),
    "oldest": ("oldest first", lambda image: (image.ref.created_ts, image.attachment_id)),
    "happiest": ("most positive mood first", _by_mood(-1)),
    "saddest": ("most negative mood first", _by_mood(1)),
    "topic": ("grouped by topic (A-Z), newest first in each",
              lambda image: (topic_of(image) == NO_TOPIC, topic_of(image).lower(), *_newest(image))),
}
DEFAULT_SORT = "newest"


def sort_images(images: Sequence[StoredImage], sort: str = DEFAULT_SORT) -> list[StoredImage]:
    """``images`` in the order of ``sort`` (a key of :data:`SORTS`); raises KeyError otherwise."""
    _, key = SORTS[sort]
    return sorted(images, key=key)


def mood_note(image: StoredImage) -> str:
    """Footer note of a gallery card: the number the mood sorts order by (none yet without a caption)."""
    if image.caption_pending:
        return "mood: waiting for the caption"
    return f"mood {_polarity(image):+.2f}"
