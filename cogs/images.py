"""Image listener: every image posted is analysed (and remembered); problems get a polite reply."""

from __future__ import annotations

import logging

import discord
from discord.ext import commands

from bot.client import ImageBot
from cogs.utils.messages import incoming_images

log = logging.getLogger(__name__)
SEEN_REACTION = "👀"
SLOW_DOWN_REACTION = "⏳"


class ImageListener(commands.Cog):
    def __init__(self, bot: ImageBot) -> None:
        self.bot = bot

    @commands.Cog.listener()
    async def on_message(self, message: discord.Message) -> None:
        if message.author.bot or message.webhook_id is not None:
            return
        images = incoming_images(message)
        if not images:
            return
        async with message.channel.typing():
            outcomes = await self.bot.services.ingestor.ingest(
                images, user_id=message.author.id, channel_id=message.channel.id
            )
        # The chat cog answers image messages only after this, so the LLM sees the analysis.
        self.bot.dispatch("images_ingested", message, outcomes)
        problems = [o for o in outcomes if not o.ok]
        try:
            if any(o.ok for o in outcomes):
                await message.add_reaction(SEEN_REACTION)
            if any(o.code == "rate_limited" for o in problems):
                await message.add_reaction(SLOW_DOWN_REACTION)
            refused = [o for o in problems if o.code != "rate_limited"]
            if refused:
                lines = [f"**{discord.utils.escape_markdown(o.image.filename)}**: {o.problem}" for o in refused]
                await message.reply("\n".join(lines), mention_author=False)
        except discord.HTTPException as exc:  # missing permissions, deleted message: nothing to do
            log.info("could not react/reply in channel %s: %s", message.channel.id, exc)


async def setup(bot: ImageBot) -> None:
    await bot.add_cog(ImageListener(bot))
