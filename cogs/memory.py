"""Image memory on Discord: /find, "Find similar", /forget, chat search, and keeping Chroma in sync
with deletes and edits. Permissions are read here, at query time; the search itself is bot.memory.

When the memory is down (:class:`bot.errors.MemoryUnavailable`) or the query cannot be embedded
(:class:`bot.inference.errors.InferenceError`), commands are answered by the tree-level handler
(cogs/utils/errors.py); the chat search, a plain message, replies with the error's message itself.
Deletes and edits never fail here: the memory service queues what the store cannot take yet."""

from __future__ import annotations

import logging
import re
from datetime import UTC, datetime, timedelta

import discord
from discord import app_commands
from discord.ext import commands

from bot.analysis import SENTIMENT_LABELS
from bot.client import ImageBot
from bot.errors import UserFacingError
from bot.memory.service import Audience, Filters, MemoryService
from cogs.utils.errors import AnsweringView
from cogs.utils.messages import incoming_images
from cogs.utils.results import RESULT_LIMIT, paged
from cogs.utils.visibility import private_audience

log = logging.getLogger(__name__)


def parse_day(value: str | None, *, field: str) -> datetime | None:
    """``YYYY-MM-DD`` (UTC) or a relative ``N days`` / ``N weeks``; a clear error otherwise."""
    if not value:
        return None
    text = value.strip().lower()
    relative = re.fullmatch(r"(\d{1,4})\s*(day|days|d|week|weeks|w)(\s+ago)?", text)
    if relative:
        amount = int(relative.group(1)) * (7 if relative.group(2).startswith("w") else 1)
        return datetime.now(UTC) - timedelta(days=amount)
    try:
        return datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=UTC)
    except ValueError:
        raise ValueError(f"`{field}` should look like 2026-11-01 or '7 days', not {value!r}.") from None


class ForgetConfirm(AnsweringView):
    def __init__(self, owner_id: int) -> None:
        super().__init__(timeout=120)
        self.owner_id = owner_id
        self.confirmed: bool | None = None

    async def interaction_check(self, interaction: discord.Interaction) -> bool:
        return interaction.user.id == self.owner_id

    @discord.ui.button(label="Forget my images", style=discord.ButtonStyle.danger, custom_id="forget:yes")
    async def yes(self, interaction: discord.Interaction, _: discord.ui.Button) -> None:
        self.confirmed = True
        await interaction.response.edit_message(content="Forgetting…", view=None)
        self.stop()

    @discord.ui.button(label="Cancel", style=discord.ButtonStyle.secondary, custom_id="forget:no")
    async def no(self, interaction: discord.Interaction, _: discord.ui.Button) -> None:
        self.confirmed = False
        await interaction.response.edit_message(content="Nothing was forgotten.", view=None)
        self.stop()


class Memory(commands.Cog):
    def __init__(self, bot: ImageBot) -> None:
        self.bot = bot
        self.find_similar_menu = app_commands.ContextMenu(name="Find similar", callback=self.find_similar)
        bot.tree.add_command(self.find_similar_menu)

    async def cog_unload(self) -> None:
        self.bot.tree.remove_command(self.find_similar_menu.name, type=self.find_similar_menu.type)

    @property
    def memory(self) -> MemoryService:
        memory = self.bot.services.memory
        if memory is None:
            raise RuntimeError("the image memory is not enabled")
        return memory

    # ----- keeping the store in sync -----

    @commands.Cog.listener()
    async def on_raw_message_delete(self, payload: discord.RawMessageDeleteEvent) -> None:
        await self.memory.message_deleted(payload.guild_id, payload.message_id)

    @commands.Cog.listener()
    async def on_raw_bulk_message_delete(self, payload: discord.RawBulkMessageDeleteEvent) -> None:
        await self.memory.messages_deleted(payload.guild_id, payload.message_ids)

    @commands.Cog.listener()
    async def on_raw_message_edit(self, payload: discord.RawMessageUpdateEvent) -> None:
        if "attachments" not in payload.data:  # only attachment changes matter here
            return
        remaining = [int(a["id"]) for a in payload.data.get("attachments", [])]
        await self.memory.message_edited(payload.guild_id, payload.message_id, remaining)

    # ----- /find -----

    @app_commands.command(name="find", description="Find pictures posted in this server")
    @app_commands.describe(query="what to look for, e.g. 'dog on a beach'", author="only pictures by this member",
                           channel="only pictures from this channel", sentiment="only this mood",
                           topic="only this topic", since="from this day (2026-11-01 or '7 days')",
                           until="before this day (2026-11-20)")
    @app_commands.choices(sentiment=[app_commands.Choice(name=s, value=s) for s in SENTIMENT_LABELS])
    async def find(self, interaction: discord.Interaction, query: str, author: discord.User | None = None,
                   channel: discord.TextChannel | None = None, sentiment: str | None = None,
                   topic: str | None = None, since: str | None = None, until: str | None = None) -> None:
        try:
            filters = Filters(
                author_id=author.id if author else None, channel_id=channel.id if channel else None,
                sentiment=sentiment, topic=topic, since=parse_day(since, field="since"),
                until=parse_day(until, field="until"),
            )
        except ValueError as exc:
            await interaction.response.send_message(str(exc), ephemeral=True)
            return
        # Ephemeral: results depend on what *this* member may see.
        await interaction.response.defer(ephemeral=True, thinking=True)
        audience = private_audience(interaction.user, interaction.channel, interaction.guild)
        await self._send_results(interaction, query, audience, filters)

    @find.autocomplete("topic")
    async def _topic_choices(self, _: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
        topics = self.bot.services.topics
        return [app_commands.Choice(name=t, value=t) for t in topics if current.lower() in t.lower()][:25]

    async def _send_results(self, interaction: discord.Interaction, query: str, audience: Audience,
                            filters: Filters) -> None:
        results = await self.memory.find(query, audience, filters, limit=RESULT_LIMIT)
        if not results:
            await interaction.followup.send(f"I couldn't find any pictures matching “{query}”.", ephemeral=True)
            return
        text = f"Pictures matching “{query}”:" if query else "The newest matching pictures:"
        await interaction.followup.send(text, **paged(results, interaction.user.id), ephemeral=True)

    # ----- Find similar -----

    async def find_similar(self, interaction: discord.Interaction, message: discord.Message) -> None:
        images = incoming_images(message)
        if not images:
            await interaction.response.send_message("That message has no picture to compare with.", ephemeral=True)
            return
        await interaction.response.defer(ephemeral=True, thinking=True)
        [outcome] = await self.bot.services.ingestor.ingest(
            images[:1], user_id=interaction.user.id, channel_id=interaction.channel_id or 0
        )
        if outcome.analysis is None:
            await interaction.followup.send(outcome.problem or "I couldn't read that picture.", ephemeral=True)
            return
        audience = private_audience(interaction.user, interaction.channel, interaction.guild)
        hits = await self.memory.similar(outcome.analysis.image_embedding, audience,
                                         exclude_attachment_id=images[0].ref.attachment_id if images[0].ref else None,
                                         limit=RESULT_LIMIT)
        if not hits:
            await interaction.followup.send("I don't remember any similar pictures you can see.", ephemeral=True)
            return
        await interaction.followup.send("Pictures like this one:", **paged(hits, interaction.user.id), ephemeral=True)

    # ----- /forget -----

    @app_commands.command(name="forget", description="Make the bot forget every picture you posted here")
    async def forget(self, interaction: discord.Interaction) -> None:
        where = "this server" if interaction.guild else "our DMs"
        view = ForgetConfirm(interaction.user.id)
        await interaction.response.send_message(
            f"This removes everything I remember about the pictures you posted in {where}. Continue?",
            view=view, ephemeral=True,
        )
        if await view.wait() or not view.confirmed:  # timed out or cancelled
            return
        try:
            removed = await self.memory.forget(interaction.guild_id, interaction.user.id)
        except UserFacingError as exc:  # memory down: the request is queued, and the prompt must not say "Forgetting…"
            log.info("/forget answered with %s: %s", exc.code, exc)
            await interaction.edit_original_response(content=exc.user_message)
            return
        await interaction.edit_original_response(content=f"Done: I forgot {removed} picture(s) you posted in {where}.")


async def setup(bot: ImageBot) -> None:
    await bot.add_cog(Memory(bot))
