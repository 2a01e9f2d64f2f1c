"""Turn a conversation (Discord history or console lines) into LLM messages.

Pictures enter the prompt only as ``[Image Attached: ...]`` lines the bot writes itself, on their own
line after the author's text. Everything a user typed goes through ``neutralize_user_text`` first, so
a user cannot forge such a line (or anything that looks like one) inside their message.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage

from bot.analysis import ImageAnalysis, neutralize_user_text

MAX_TURN_CHARS = 1500


@dataclass
class Turn:
    """One message of the conversation, oldest first."""

    author: str
    text: str
    from_bot: bool = False
    images: list[ImageAnalysis] = field(default_factory=list)
    # Attachments the bot could not read (refused or failed), to tell the LLM they exist.
    unreadable_images: int = 0


def _user_content(turn: Turn) -> str:
    author = neutralize_user_text(turn.author).replace(":", "")[:64] or "someone"
    text = neutralize_user_text(turn.text.strip())[:MAX_TURN_CHARS]
    lines = [f"{author}: {text}" if text else f"{author}:"]
    lines.extend(image.context_line() for image in turn.images)
    if turn.unreadable_images:
        lines.append(f"(plus {turn.unreadable_images} attachment(s) the bot could not read)")
    return "\n".join(lines)


def build_messages(system_prompt: str, turns: Sequence[Turn]) -> list[BaseMessage]:
    messages: list[BaseMessage] = [SystemMessage(content=system_prompt)]
    for turn in turns:
        if turn.from_bot:
            messages.append(AIMessage(content=turn.text[:MAX_TURN_CHARS]))
        else:
            messages.append(HumanMessage(content=_user_content(turn)))
    return messages
