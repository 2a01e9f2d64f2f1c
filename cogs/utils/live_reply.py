"""A reply that grows while the LLM streams it (the chat cog's answers)."""

from __future__ import annotations

import asyncio
import logging

import discord

from bot.chat.splitting import DISCORD_LIMIT, split_message

log = logging.getLogger(__name__)
EDIT_INTERVAL_S = 1.5
STILL_WRITING = " …"


class LiveReply:
    """The reply, shown while the LLM streams it: posted after a pause, edited at most every 1.5 s.

    Why edit as tokens arrive rather than keep "typing…" until the end: a CPU-only Ollama can take
    tens of seconds for a paragraph, and text that grows is the only sign that the bot is still
    working on it (the first-token limit in :mod:`bot.chat.llm` handles the server that never
    starts). Why the pause and the limit: an answer that is done within :data:`EDIT_INTERVAL_S`
    arrives as one finished message (no half-sentence notification, no edits, which is every answer
    from the local test peer), and Discord rate-limits message edits per channel, which one edit per
    1.5 s stays well under. Edits run in their own task fed by a non-blocking callback, so a slow
    or rate-limited edit never holds up reading the stream. Typing stays on until the answer is done.

    Splitting stays exact: a partial answer is split with :func:`split_message` like the final one,
    and every chunk but the last of a prefix is already final (the split only looks ahead within one
    chunk), so a message that filled up is finished and the rest continues in a new message. The
    message still being written ends with :data:`STILL_WRITING`; :meth:`finish` writes the final
    chunks (the fallback too), editing what was shown and sending what is missing.
    """

    def __init__(self, message: discord.Message, max_chars: int, interval_s: float = EDIT_INTERVAL_S) -> None:
        self.message = message
        self.max_chars = max_chars
        self.interval_s = interval_s
        self.sent: list[discord.Message] = []
        self.shown: list[str] = []
        self._latest = ""
        self._dirty = asyncio.Event()
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def update(self, text: str) -> None:
        """The answer so far (ChatService's ``on_progress``); returns at once."""
        self._latest = text
        self._dirty.set()
        if self._task is None:
            self._task = asyncio.create_task(self._pump(), name="chat-live-reply")

    def stop(self) -> None:
        """No more progress edits (the pump ends after an edit in flight); idempotent."""
        self._stop.set()
        self._dirty.set()

    async def finish(self, chunks: list[str]) -> None:
        """Show the final answer; raises discord.HTTPException if Discord refuses it."""
        self.stop()
        if self._task is not None:
            await self._task  # lets an edit in flight land, so no message is sent twice
        await self._show(chunks, final=True)

    async def _pump(self) -> None:
        try:
            if await self._stopped_within(self.interval_s):
                return
            while True:
                await self._dirty.wait()
                if self._stop.is_set():
                    return
                self._dirty.clear()
                await self._show(split_message(self._latest, self.max_chars), final=False)
                if await self._stopped_within(self.interval_s):
                    return
        except discord.HTTPException as exc:  # progress is best effort; finish() still answers
            log.info("could not show the answer in progress in channel %s: %s", self.message.channel.id, exc)
        except Exception:  # a dropped connection mid-edit must not cost the final answer either
            log.warning("showing the answer in progress failed in channel %s", self.message.channel.id, exc_info=True)

    async def _stopped_within(self, seconds: float) -> bool:
        try:
            await asyncio.wait_for(self._stop.wait(), timeout=seconds)
        except TimeoutError:
            return False
        return True

    async def _show(self, chunks: list[str], *, final: bool) -> None:
        for index, chunk in enumerate(chunks):
            writing = not final and index == len(chunks) - 1 and len(chunk) + len(STILL_WRITING) <= DISCORD_LIMIT
            text = chunk + STILL_WRITING if writing else chunk
            if index < len(self.sent):
                if self.shown[index] != text:
                    await self.sent[index].edit(content=text)
                    self.shown[index] = text
                continue
            if index == 0:
                sent = await self.message.reply(text, mention_author=False)
            else:
                sent = await self.message.channel.send(text)
            self.sent.append(sent)
            self.shown.append(text)
        if final:
            for extra in self.sent[len(chunks):]:  # not expected (answers only grow), but never leave stale text
                await extra.delete()
            del self.sent[len(chunks):], self.shown[len(chunks):]
