"""Answer a conversation: the LLM when it is up, what the bot saw when it is not."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from bot.chat.conversation import Turn, build_messages
from bot.chat.llm import ChatLLM, LLMUnavailable
from bot.chat.splitting import split_message
from bot.config import Settings

log = logging.getLogger(__name__)
OFFLINE_NOTE = "(My language model is offline right now, so I can't chat properly.)"


def describe_without_llm(turns: Sequence[Turn]) -> str:
    """The fallback: the most recent pictures in plain words, and a note that the LLM is offline."""
    recent = [image for turn in turns for image in turn.images][-3:]
    if not recent:
        return f"{OFFLINE_NOTE} I don't see any pictures in this conversation yet."
    lines = [OFFLINE_NOTE, "Here is what I saw:" if len(recent) > 1 else "Here is what I saw in the picture:"]
    for image in recent:
        labels = ", ".join(image.top_labels)
        lines.append(f"- {image.caption} ({labels}; mood: {image.sentiment.label})" if labels
                     else f"- {image.caption} (mood: {image.sentiment.label})")
    return "\n".join(lines)


class ChatService:
    def __init__(self, settings: Settings, llm: ChatLLM | None = None) -> None:
        self.settings = settings
        self.llm = llm or ChatLLM(settings.llm)

    async def answer(self, turns: Sequence[Turn]) -> list[str]:
        """Reply chunks, each within Discord's message limit; never raises for LLM trouble."""
        messages = build_messages(self.settings.llm.system_prompt, turns)
        try:
            text = await self.llm.reply(messages)
        except LLMUnavailable as exc:
            log.warning("LLM unavailable, answering from image analysis: %s", exc)
            text = describe_without_llm(turns)
        return split_message(text, self.settings.chat.max_reply_chars)
