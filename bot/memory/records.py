"""What the memory stores per image, and its flat Chroma form.

Chroma metadata holds scalars only, so an :class:`ImageRef` (where the image was posted) plus its
:class:`~bot.analysis.ImageAnalysis` (what the models said) is flattened into one dict of str / int /
float / bool values by :func:`to_metadata`; :func:`from_metadata` turns a stored dict back into a
:class:`StoredImage`. The vectors are not part of it: the store writes them next to this metadata.

Discord ids are snowflakes below 2**63, so they fit Chroma's 64-bit integers exactly (checked in the
tests, over HTTP too). A DM has no guild; it is stored as guild ``0`` (no snowflake is 0).
Label lists are joined with ``|``, which a label can never contain (it separates label and prompt in
the label files), so they split back losslessly.

A fast-tier record (:attr:`~bot.analysis.ImageAnalysis.caption_pending`: CLIP's labels, topic and mood
known, the caption not written yet) is flattened the same way with ``caption_pending`` True, an empty
caption and caption topic, and ``sentiment`` holding the image's own mood. Records written before the
flag existed have no such key and read back as complete, which they are (so the layout kept its
:data:`SCHEMA_VERSION`). The same goes for ``text`` (the words read in the picture): records from
before the text reader read back with none.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from bot.analysis import PENDING_CAPTION, SENTIMENT_LABELS, ImageAnalysis

# Bumped when the metadata layout changes, so old records can be recognised and re-analysed.
SCHEMA_VERSION = 1
LIST_SEPARATOR = "|"
DM_GUILD = 0

MetadataValue = str | int | float | bool
Metadata = dict[str, MetadataValue]


@dataclass(frozen=True)
class ImageRef:
    """Where an image lives on Discord, with no discord.py types (the cog fills it in)."""

    attachment_id: int
    message_id: int
    channel_id: int
    guild_id: int | None  # None: a DM with the bot
    author_id: int
    jump_url: str
    attachment_url: str
    filename: str
    created_at: datetime  # UTC; a naive value is taken to be UTC
    nsfw: bool = False  # posted in an age-restricted channel (or flagged otherwise)

    def __post_init__(self) -> None:
        for name in ("attachment_id", "message_id", "channel_id", "guild_id", "author_id"):
            value = getattr(self, name)
            if value is not None and not 0 < int(value) < 2**63:
                raise ValueError(f"{name} {value!r} is not a Discord snowflake (1 .. 2**63-1)")
        if self.created_at.tzinfo is None:
            object.__setattr__(self, "created_at", self.created_at.replace(tzinfo=UTC))
        else:
            object.__setattr__(self, "created_at", self.created_at.astimezone(UTC))

    @property
    def created_ts(self) -> int:
        return int(self.created_at.timestamp())

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (the ingest ledger keeps pending refs this way)."""
        return {
            "attachment_id": self.attachment_id,
            "message_id": self.message_id,
            "channel_id": self.channel_id,
            "guild_id": self.guild_id,
            "author_id": self.author_id,
            "jump_url": self.jump_url,
            "attachment_url": self.attachment_url,
            "filename": self.filename,
            "created_at": self.created_at.isoformat(),
            "nsfw": self.nsfw,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ImageRef:
        guild = data.get("guild_id")
        return cls(
            attachment_id=int(data["attachment_id"]),
            message_id=int(data["message_id"]),
            channel_id=int(data["channel_id"]),
            guild_id=None if guild is None else int(guild),
            author_id=int(data["author_id"]),
            jump_url=str(data["jump_url"]),
            attachment_url=str(data["attachment_url"]),
            filename=str(data["filename"]),
            created_at=datetime.fromisoformat(data["created_at"]),
            nsfw=bool(data.get("nsfw", False)),
        )


@dataclass(frozen=True)
class StoredImage:
    """One remembered image as read back from the store (no vectors)."""

    ref: ImageRef
    caption: str
    labels: list[str]  # best label of each context set (objects, scenes, medium), as in the context line
    tags: list[str]  # every stored label of every set, best first per set
    top_label_by_set: dict[str, str]
    sentiment: str
    sentiment_scores: dict[str, float]
    image_sentiment: str | None
    topic: str | None  # from the image (CLIP)
    caption_topic: str | None  # from the caption text
    model_ids: dict[str, str] = field(default_factory=dict)
    width: int = 0
    height: int = 0
    format: str = ""
    # Fast tier only: no caption yet (``caption`` is "", ``caption_topic`` None, and ``sentiment`` is the
    # image's own mood until the caption tier's record replaces this one).
    caption_pending: bool = False
    # The words read in the picture (OCR), lines joined by newlines; "" for none. Attacker-controlled:
    # shown only through :func:`bot.analysis.quote_image_text`.
    text: str = ""

    @property
    def attachment_id(self) -> int:
        return self.ref.attachment_id

    @property
    def display_caption(self) -> str:
        """What a result card shows as the caption: never blank, and never a missing caption passed off
        as a real one."""
        if self.caption_pending:
            return PENDING_CAPTION
        return self.caption or "an image"

    @property
    def caption_sentiment(self) -> str | None:
        """The caption's sentiment; None while the caption is not written (``sentiment`` is then the
        image's own mood, a different reading that aggregates must not mix in)."""
        return None if self.caption_pending else self.sentiment


def record_id(attachment_id: int) -> str:
    """The Chroma id of an image: its attachment id, so a replayed upsert overwrites, never duplicates."""
    return str(int(attachment_id))


def to_metadata(ref: ImageRef, analysis: ImageAnalysis) -> Metadata:
    """Flatten a ref and its analysis into Chroma metadata (scalars only, no None values)."""
    tags = [scored.label for items in analysis.labels.values() for scored in items]
    meta: Metadata = {
        "schema": SCHEMA_VERSION,
        "attachment": ref.attachment_id,
        "guild": DM_GUILD if ref.guild_id is None else ref.guild_id,
        "channel": ref.channel_id,
        "message": ref.message_id,
        "author": ref.author_id,
        "jump_url": ref.jump_url,
        "url": ref.attachment_url,
        "filename": ref.filename,
        "created_ts": ref.created_ts,
        "nsfw": bool(ref.nsfw),
        "caption": analysis.caption,
        "labels": LIST_SEPARATOR.join(analysis.top_labels),
        "tags": LIST_SEPARATOR.join(tags),
        "sentiment": analysis.sentiment.label,
        "topic": analysis.topic or "",
        "caption_topic": analysis.caption_topics[0].label if analysis.caption_topics else "",
        "image_sentiment": analysis.image_sentiment.label if analysis.image_sentiment else "",
        "width": int(analysis.width),
        "height": int(analysis.height),
        "format": analysis.format,
        "caption_pending": bool(analysis.caption_pending),
        "text": analysis.text,
    }
    for name in SENTIMENT_LABELS:
        meta[f"sentiment_{name}"] = float(analysis.sentiment.scores.get(name, 0.0))
    for name, items in analysis.labels.items():
        if items:
            meta[f"label_{name}"] = items[0].label
    for role, model_id in analysis.model_ids.items():
        meta[f"model_{role}"] = model_id
    return meta


def _split(value: Any) -> list[str]:
    return [part for part in str(value or "").split(LIST_SEPARATOR) if part]


def ref_from_metadata(meta: Mapping[str, Any]) -> ImageRef:
    guild = int(meta["guild"])
    return ImageRef(
        attachment_id=int(meta["attachment"]),
        message_id=int(meta["message"]),
        channel_id=int(meta["channel"]),
        guild_id=None if guild == DM_GUILD else guild,
        author_id=int(meta["author"]),
        jump_url=str(meta.get("jump_url", "")),
        attachment_url=str(meta.get("url", "")),
        filename=str(meta.get("filename", "")),
        created_at=datetime.fromtimestamp(int(meta["created_ts"]), UTC),
        nsfw=bool(meta.get("nsfw", False)),
    )


def from_metadata(meta: Mapping[str, Any]) -> StoredImage:
    """The inverse of :func:`to_metadata` (minus the vectors)."""
    return StoredImage(
        ref=ref_from_metadata(meta),
        caption=str(meta.get("caption", "")),
        labels=_split(meta.get("labels")),
        tags=_split(meta.get("tags")),
        top_label_by_set={key.removeprefix("label_"): str(value) for key, value in meta.items()
                          if key.startswith("label_")},
        sentiment=str(meta.get("sentiment", "neutral")),
        sentiment_scores={name: float(meta.get(f"sentiment_{name}", 0.0)) for name in SENTIMENT_LABELS},
        image_sentiment=str(meta["image_sentiment"]) if meta.get("image_sentiment") else None,
        topic=str(meta["topic"]) if meta.get("topic") else None,
        caption_topic=str(meta["caption_topic"]) if meta.get("caption_topic") else None,
        model_ids={key.removeprefix("model_"): str(value) for key, value in meta.items() if key.startswith("model_")},
        width=int(meta.get("width", 0)),
        height=int(meta.get("height", 0)),
        format=str(meta.get("format", "")),
        caption_pending=bool(meta.get("caption_pending", False)),
        text=str(meta.get("text", "")),
    )
