"""Chat: answer mentions, replies and DMs through the LLM, with the images of the conversation.

The conversation is the channel history the bot reads here (``chat.history_messages`` before the
message) plus the message itself. Its pictures reach the LLM as ``[Image Attached: ...]`` lines and,
for a vision model, as the pictures themselves (bot/chat/vision.py). Visibility rule: only pictures of
those messages are ever shown to the model, read from their own attachments (``to_turn``); never one
from the analysis cache, the memory or another channel, so the answer, posted in this channel, can
only draw on pictures everyone here could already see. Their bytes are decoded again in the bot's
decode sandbox, like at ingestion.
"""

from __future__ import annotations

import logging

import discord
from discord.ext import commands

from bot.client import ImageBot
from bot.ingest import IngestOutcome
from bot.memory.intent import detect_search_intent
from cogs.utils.chat_search import answer_search
from cogs.utils.live_reply import LiveReply
from cogs.utils.messages import addressed_to_bot, incoming_images, readable_text, to_turn

log = logging.getLogger(__name__)
# How far back a chat looks for pictures still waiting for their analysis (bounded: a mention must not
# turn into analysing a whole channel's backlog at interactive priority).
HURRY_MESSAGES, HURRY_IMAGES = 5, 4


class Chat(commands.Cog):
    def __init__(self, bot: ImageBot) -> None:
        self.bot = bot

    @commands.Cog.listener()
    async def on_message(self, message: discord.Message) -> None:
        # Messages with images are answered from on_images_ingested, once their analysis exists.
        if not incoming_images(message):
            await self._maybe_answer(message)

    @commands.Cog.listener()
    async def on_images_ingested(self, message: discord.Message, _: list[IngestOutcome]) -> None:
        await self._maybe_answer(message)

    async def _maybe_answer(self, message: discord.Message) -> None:
        me = self.bot.user
        if me is None or message.author.bot or not addressed_to_bot(message, me):
            return
        services = self.bot.services
        if services.memory is not None:
            intent = detect_search_intent(readable_text(message), now=message.created_at)
            if intent is not None:  # "show me the dog picture from last week": a search, not a chat
                async with message.channel.typing():
                    await answer_search(services.memory, message, intent)
                return
        live = LiveReply(message, self.bot.settings.chat.max_reply_chars)
        try:
            async with message.channel.typing():
                history = [m async for m in message.channel.history(
                    limit=self.bot.settings.chat.history_messages, before=message)]
                # Pictures of this conversation still waiting in the backlog (no first look, or no caption
                # yet) are analysed now, at interactive priority: the LLM needs their captions.
                recent = [image for m in history[:HURRY_MESSAGES] if not m.author.bot for image in incoming_images(m)]
                await services.ingestor.hurry(recent[:HURRY_IMAGES])
                turns = [to_turn(m, me, services.ingestor) for m in reversed(history)]
                turns.append(to_turn(message, me, services.ingestor))
                chunks = await services.chat.answer(turns, on_progress=live.update, decode=services.decoder.decode)
        finally:
            live.stop()  # also when answering failed: no progress task left behind
        try:
            await live.finish(chunks)
        except discord.HTTPException as exc:
            log.info("could not answer in channel %s: %s", message.channel.id, exc)


async def setup(bot: ImageBot) -> None:
    await bot.add_cog(Chat(bot))
