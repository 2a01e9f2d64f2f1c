"""Turn a conversation (Discord history or console lines) into LLM messages.

Pictures enter the prompt as ``[Image Attached: ...]`` lines the bot writes itself, on their own
line after the author's text. Everything a user typed goes through ``neutralize_user_text`` first, so
a user cannot forge such a line (or anything that looks like one) inside their message.

For a vision chat model the most recent pictures also travel as images (see :mod:`bot.chat.vision`):
each on the message it was posted with, *in addition to* its line, because the line carries what the
pixels alone do not (labels, mood, the picture's own text read by OCR) and every picture keeps its
line even when it is not attached (older ones, ones that could not be read again).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage

from bot.analysis import ImageAnalysis, neutralize_user_text

MAX_TURN_CHARS = 1500
# Appended to the system prompt only when pictures are attached: the default prompt says the model
# cannot see pixels, which is true for every text-only request and wrong for this one.
VISION_NOTE = (
    "This time the most recent pictures are also attached as images to the messages they were posted "
    "with, so you can look at those yourself; the [Image Attached: ...] lines are still the bot's notes "
    "about every picture, attached or not."
)


class PictureSource(Protocol):
    """Where a picture's bytes can be read again, to show it to a vision model.

    ``bot.ingest.IncomingImage`` fits (the chat cog passes the message's own attachments). ``size`` is
    known before reading for Discord attachments; a picture of unknown size is never read for chat.
    """

    @property
    def filename(self) -> str: ...

    @property
    def size(self) -> int | None: ...

    @property
    def read(self) -> Callable[[], Awaitable[bytes]]: ...


@dataclass
class Turn:
    """One message of the conversation, oldest first."""

    author: str
    text: str
    from_bot: bool = False
    images: list[ImageAnalysis] = field(default_factory=list)
    # Attachments the bot could not read (refused or failed), to tell the LLM they exist.
    unreadable_images: int = 0
    # The bytes behind this message's analysed pictures, for vision models (bot/chat/vision.py). Only the
    # caller decides what goes here, and the chat cog puts only this message's own attachments: that is
    # what keeps pictures from outside the conversation away from the model.
    pictures: list[PictureSource] = field(default_factory=list)


def _user_content(turn: Turn) -> str:
    author = neutralize_user_text(turn.author).replace(":", "")[:64] or "someone"
    text = neutralize_user_text(turn.text.strip())[:MAX_TURN_CHARS]
    lines = [f"{author}: {text}" if text else f"{author}:"]
    lines.extend(image.context_line() for image in turn.images)
    if turn.unreadable_images:
        lines.append(f"(plus {turn.unreadable_images} attachment(s) the bot could not read)")
    return "\n".join(lines)


def build_messages(
    system_prompt: str, turns: Sequence[Turn], attached: Mapping[int, Sequence[str]] | None = None
) -> list[BaseMessage]:
    """The LLM's messages; ``attached`` maps a turn's index to the data URLs of its pictures to show.

    An attached picture becomes an ``image_url`` part of that turn's human message, which
    langchain-ollama sends as the message's ``images`` (base64, the data-URL prefix stripped).
    """
    attached = {index: urls for index, urls in (attached or {}).items() if urls}
    prompt = f"{system_prompt}\n\n{VISION_NOTE}" if attached else system_prompt
    messages: list[BaseMessage] = [SystemMessage(content=prompt)]
    for index, turn in enumerate(turns):
        if turn.from_bot:
            messages.append(AIMessage(content=turn.text[:MAX_TURN_CHARS]))
            continue
        text = _user_content(turn)
        urls = attached.get(index)
        if urls:
            parts: list[str | dict] = [{"type": "text", "text": text}]
            parts.extend({"type": "image_url", "image_url": url} for url in urls)
            messages.append(HumanMessage(content=parts))
        else:
            messages.append(HumanMessage(content=text))
    return messages
