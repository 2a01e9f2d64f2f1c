"""Answer a conversation: the LLM when it is up, what the bot saw when it is not."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from langchain_core.messages import BaseMessage

from bot.analysis import PENDING_CAPTION
from bot.chat.conversation import Turn, build_messages
from bot.chat.llm import ChatLLM, LLMUnavailable
from bot.chat.splitting import split_message
from bot.chat.vision import Decode, VisionImages
from bot.config import Settings

log = logging.getLogger(__name__)
OFFLINE_NOTE = f"({LLMUnavailable.default_message})"
CUT_SHORT_NOTE = "(My language model stopped before finishing this answer.)"

Progress = Callable[[str], None]
"""Called with the whole answer so far each time more of it streams in; must not block."""


def describe_without_llm(turns: Sequence[Turn], note: str = OFFLINE_NOTE) -> str:
    """The fallback: the most recent pictures in plain words, after ``note`` (why the LLM is not answering)."""
    recent = [image for turn in turns for image in turn.images][-3:]
    if not recent:
        return f"{note} I don't see any pictures in this conversation yet."
    lines = [note, "Here is what I saw:" if len(recent) > 1 else "Here is what I saw in the picture:"]
    for image in recent:
        labels = ", ".join(image.top_labels)
        caption = PENDING_CAPTION if image.caption_pending else image.caption
        lines.append(f"- {caption} ({labels}; mood: {image.sentiment.label})" if labels
                     else f"- {caption} (mood: {image.sentiment.label})")
    return "\n".join(lines)


def note_for(exc: LLMUnavailable) -> str:
    """The fallback's first line: the error's own sentence (offline, not responding, model not installed)."""
    return f"({exc.user_message})"


class ChatService:
    def __init__(self, settings: Settings, llm: ChatLLM | None = None) -> None:
        self.settings = settings
        self.llm = llm or ChatLLM(settings.llm)
        # Whether and which pictures a vision model is shown (bot/chat/vision.py); the capability
        # answer it caches lives as long as this service.
        self.vision = VisionImages(settings)

    async def answer(
        self, turns: Sequence[Turn], on_progress: Progress | None = None, *, decode: Decode | None = None
    ) -> list[str]:
        """Reply chunks, each within Discord's message limit; never raises for LLM trouble.

        ``on_progress`` sees the answer grow (the whole text so far, stripped) while it streams; it
        is a plain callback, not awaited, so a slow consumer (a rate-limited Discord edit) never
        holds up reading the stream or eats into the LLM's time limits. The returned chunks are the
        final word: if the LLM fails before saying anything, they are the image-analysis fallback;
        if it fails part-way, they are what it said plus :data:`CUT_SHORT_NOTE` (so text someone
        already saw is kept, and only grows).

        Pictures: for a vision model the newest of ``turns``' pictures are attached too (only those:
        see :mod:`bot.chat.vision`), decoded with ``decode`` (the bot's decode sandbox; the plain
        decoder in a thread without one). If Ollama refuses that request before saying anything, the
        same conversation is asked once more without the images (the lines still describe them), with
        a warning in the log: a picture must never cost the answer.
        """
        attached = await self.vision.attach(turns, decode)
        system_prompt = self.settings.llm.system_prompt
        text, error = await self._stream(build_messages(system_prompt, turns, attached), on_progress)
        if error is not None and not text and error.rejected and attached:
            log.warning("the chat model %s refused a request with %d image(s) (%s): asking again without them",
                        self.settings.llm.model, sum(map(len, attached.values())), error)
            self.vision.check.refused(self.settings.llm.model)
            text, error = await self._stream(build_messages(system_prompt, turns), on_progress)
        if error is not None and text:
            log.warning("LLM stopped mid-answer (%s), keeping the %d characters it sent: %s",
                        error.code, len(text), error)
            text = f"{text}\n\n{CUT_SHORT_NOTE}"
        elif error is not None:
            log.warning("LLM unavailable (%s), answering from image analysis: %s", error.code, error)
            text = describe_without_llm(turns, note_for(error))
        return split_message(text, self.settings.chat.max_reply_chars)

    async def _stream(self, messages: list[BaseMessage], on_progress: Progress | None
                      ) -> tuple[str, LLMUnavailable | None]:
        """The answer's text (stripped) and, if the LLM failed, why; what it said before failing is kept."""
        text = ""
        try:
            async for part in self.llm.stream(messages):
                text += part
                if on_progress is not None and text.strip():
                    on_progress(text.strip())
        except LLMUnavailable as exc:
            return text.strip(), exc
        if not text.strip():
            return "", LLMUnavailable(detail=f"empty answer from {self.settings.llm.base_url}")
        return text.strip(), None
