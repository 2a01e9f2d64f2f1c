"""Overview of a server's pictures on Discord: /stats, /gallery, /index, /topics.

Discord I/O only; the numbers, charts, sorting, backfill and clustering are ``bot.overview``.

Privacy (the same boundary as /find, cogs/utils/visibility.py):

* /stats and /gallery answer **ephemerally** with :func:`private_audience` (every channel the
  requester can read now; NSFW only inside an NSFW channel). ``/stats public:True`` posts the charts
  in the channel instead, computed with :func:`public_audience`: only pictures everyone in this
  channel may see, so a moderator's public chart never counts a private channel's pictures.
* /index and /topics refresh are for members with Manage Server or Manage Messages (checked here at
  run time; ``default_permissions`` only hides them in the client and admins can change that).
* Discovered topic names are caption words: a topic is listed only to people who can read every
  channel its pictures come from (:meth:`bot.overview.topics.TopicCluster.visible_to`).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import discord
from discord import app_commands
from discord.ext import commands

from bot.analysis import SENTIMENT_LABELS
from bot.client import ImageBot
from bot.ingest.backfill import BackfillBusy, BackfillProgress, History, ScannedMessage
from bot.memory.records import StoredImage
from bot.overview.charts import stats_charts
from bot.overview.gallery import DEFAULT_SORT, SORTS, mood_note
from bot.overview.render import progress_text, report_text, stats_sections, topics_text
from bot.overview.service import Filters, OverviewService
from bot.overview.stats import PERIODS
from cogs.utils.messages import incoming_images
from cogs.utils.results import PAGE_SIZE, ResultPages, image_embed
from cogs.utils.visibility import private_audience, public_audience

log = logging.getLogger(__name__)
DEFAULT_PERIOD = "all"
DEFAULT_INDEX_LIMIT = 1000
# Interaction tokens live 15 minutes: stop editing the progress message a little before that, and
# deliver the summary by DM if the run outlived the token.
TOKEN_LIFETIME_S = 14 * 60
NOT_ADMIN = "Only members who can manage this server or its messages can do that."
POSTED = "Done — posted in the channel."
PERIOD_NAMES = {"day": "in the last 24 hours", "week": "in the last 7 days", "month": "in the last 30 days",
                "quarter": "in the last 3 months", "year": "in the last year", "all": "all time"}


def can_administer(member: discord.abc.User, channel: discord.abc.GuildChannel | discord.Thread) -> bool:
    """Manage Server or Manage Messages in ``channel`` (overwrites included), and able to read it."""
    if not isinstance(member, discord.Member):
        return False
    perms = channel.permissions_for(member)
    return (perms.manage_guild or perms.manage_messages) and perms.view_channel and perms.read_message_history


def history_of(channel: discord.abc.Messageable) -> History:
    """The backfill's view of a channel: messages oldest first after a cursor; bot and webhook
    messages carry no images (live ingestion ignores them too)."""

    async def history(after: int | None, limit: int | None) -> AsyncIterator[ScannedMessage]:
        start = discord.Object(id=after) if after else None
        async for message in channel.history(limit=limit, after=start, oldest_first=True):
            skip = message.author.bot or message.webhook_id is not None
            yield ScannedMessage(message.id, message.author.id, () if skip else incoming_images(message))

    return history


class GalleryPages(ResultPages):
    """ResultPages over records, rendering only the page shown (a gallery can be long)."""

    def __init__(self, images: list[StoredImage], owner_id: int, *, notes: bool) -> None:
        self.images = images
        self.notes = notes
        super().__init__([], owner_id)

    @property
    def pages(self) -> int:
        return max(1, -(-len(self.images) // PAGE_SIZE))

    def current(self) -> list[discord.Embed]:
        start = self.page * PAGE_SIZE
        return [image_embed(image, index=start + offset + 1, total=len(self.images),
                            score=mood_note(image) if self.notes else None)
                for offset, image in enumerate(self.images[start:start + PAGE_SIZE])]


class Overview(commands.Cog):
    topics = app_commands.Group(name="topics", description="Topics discovered in this server's pictures",
                                guild_only=True)

    def __init__(self, bot: ImageBot) -> None:
        self.bot = bot
        self._service: OverviewService | None = None

    async def cog_load(self) -> None:
        services = self.bot.services
        if services.memory is not None:
            self._service = await OverviewService.open(self.bot.settings, services.memory.store,
                                                       ingestor=services.ingestor, encoder=services.queue)

    async def cog_unload(self) -> None:
        if self._service is not None:
            await self._service.close()

    @property
    def service(self) -> OverviewService:
        if self._service is None:
            raise RuntimeError("the image memory is not enabled")
        return self._service

    async def _names(self, guild: discord.Guild | None, user_ids: list[int]) -> dict[int, str]:
        """Display names for the posters chart (a PNG cannot show a mention). Without the members
        intent the cache rarely has them: fetch the few missing ones (at most ten per /stats)."""

        async def one(user_id: int) -> tuple[int, str]:
            user: discord.abc.User | None = (guild.get_member(user_id) if guild else None) or self.bot.get_user(user_id)
            if user is None and guild is not None:
                with contextlib.suppress(discord.HTTPException):
                    user = await guild.fetch_member(user_id)
            return user_id, user.display_name if user else f"user {user_id}"

        return dict(await asyncio.gather(*(one(user_id) for user_id in user_ids)))

    # ----- /stats -----

    @app_commands.command(name="stats", description="Charts of the pictures posted here: mood, topics, labels")
    @app_commands.describe(channel="only pictures from this channel", author="only pictures by this member",
                           period="how far back (default: all time)",
                           public="post the charts in the channel (only what everyone here may see)")
    @app_commands.choices(period=[app_commands.Choice(name=PERIOD_NAMES[p], value=p) for p in PERIODS])
    async def stats(self, interaction: discord.Interaction, channel: discord.TextChannel | None = None,
                    author: discord.User | None = None, period: str = DEFAULT_PERIOD, public: bool = False) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        where = interaction.channel
        audience = (public_audience(interaction.user, where, interaction.guild) if public and where is not None
                    else private_audience(interaction.user, where, interaction.guild))
        filters = Filters(author_id=author.id if author else None, channel_id=channel.id if channel else None)
        stats = await self.service.stats(audience, filters, period=period, now=datetime.now(UTC))
        if not stats.total:
            await interaction.followup.send("No pictures match that (among those you can see here).", ephemeral=True)
            return
        scope = " ".join(part for part in (f"in {channel.mention}" if channel else "",
                                           f"by {author.mention}" if author else "", PERIOD_NAMES[period]) if part)
        names = await self._names(interaction.guild, [author_id for author_id, _ in stats.posters])
        charts = await asyncio.to_thread(stats_charts, stats, names)
        embeds, files = [], []
        for section, chart in zip(stats_sections(stats, scope=scope), charts, strict=True):
            embed = discord.Embed(title=section.title, description=section.text, colour=discord.Colour.blurple())
            embed.set_image(url=f"attachment://{chart.filename}")
            embeds.append(embed)
            files.append(discord.File(io.BytesIO(chart.png), filename=chart.filename, description=chart.alt_text))
        if public:
            # The first followup after an ephemeral defer would stay ephemeral: settle it, then post.
            await interaction.edit_original_response(content=POSTED)
        await interaction.followup.send(embeds=embeds, files=files, ephemeral=not public)

    # ----- /gallery -----

    @app_commands.command(name="gallery", description="Browse the pictures posted here by topic, mood or poster")
    @app_commands.describe(topic="a topic (fixed or discovered)", sentiment="only this mood",
                           author="only pictures by this member", sort="order (default: newest first)")
    @app_commands.choices(sentiment=[app_commands.Choice(name=s, value=s) for s in SENTIMENT_LABELS],
                          sort=[app_commands.Choice(name=text, value=key) for key, (text, _) in SORTS.items()])
    async def gallery(self, interaction: discord.Interaction, topic: str | None = None, sentiment: str | None = None,
                      author: discord.User | None = None, sort: str = DEFAULT_SORT) -> None:
        # Ephemeral: the gallery depends on what *this* member may see.
        await interaction.response.defer(ephemeral=True, thinking=True)
        audience = private_audience(interaction.user, interaction.channel, interaction.guild)
        filters = Filters(author_id=author.id if author else None, sentiment=sentiment, topic=topic or None)
        images = await self.service.gallery(audience, filters, sort=sort)
        if not images:
            await interaction.followup.send("No pictures match that (among those you can see here).", ephemeral=True)
            return
        topic_name = topic
        if topic and (cluster := await self.service.cluster(audience, topic)) is not None:
            topic_name = cluster.title
        details = [f"**{len(images)} picture(s)**", SORTS[sort][0]]
        details += [f"topic: {topic_name}"] if topic_name else []
        details += [f"mood: {sentiment}"] if sentiment else []
        details += [f"by {author.mention}"] if author else []
        view = GalleryPages(images, interaction.user.id, notes=sort in ("happiest", "saddest"))
        text = " · ".join(details)
        if view.pages == 1:
            await interaction.followup.send(text, embeds=view.current(), ephemeral=True)
        else:
            await interaction.followup.send(text, embeds=view.current(), view=view, ephemeral=True)

    @gallery.autocomplete("topic")
    async def _topic_choices(self, interaction: discord.Interaction, current: str
                             ) -> list[app_commands.Choice[str]]:
        audience = private_audience(interaction.user, interaction.channel, interaction.guild)
        wanted = current.lower()
        choices = [app_commands.Choice(name=f"discovered: {c.title}"[:100], value=c.value)
                   for c in await self.service.clusters(audience) if wanted in c.title.lower()]
        choices += [app_commands.Choice(name=t, value=t) for t in self.bot.services.topics if wanted in t.lower()]
        return choices[:25]

    # ----- /index -----

    @app_commands.command(name="index", description="Admins: add a channel's older pictures to the memory")
    @app_commands.guild_only()
    @app_commands.default_permissions(manage_messages=True)
    @app_commands.describe(channel="the channel to read (default: this one)",
                           limit=f"how many messages to read in this run (default {DEFAULT_INDEX_LIMIT})",
                           from_start="read from the channel's first message again (known pictures are skipped)")
    async def index(self, interaction: discord.Interaction, channel: discord.TextChannel | None = None,
                    limit: app_commands.Range[int, 1, 1_000_000] = DEFAULT_INDEX_LIMIT,
                    from_start: bool = False) -> None:
        target = channel or interaction.channel
        guild = interaction.guild
        if guild is None or not isinstance(target, (discord.TextChannel, discord.Thread, discord.VoiceChannel)):
            await interaction.response.send_message("Run this in a server text channel.", ephemeral=True)
            return
        if not can_administer(interaction.user, target):
            await interaction.response.send_message(NOT_ADMIN, ephemeral=True)
            return
        mine = target.permissions_for(guild.me)
        if not (mine.view_channel and mine.read_message_history):
            await interaction.response.send_message(f"I can't read the history of {target.mention}.", ephemeral=True)
            return
        backfill = self.service.backfill
        if backfill is None:
            raise RuntimeError("the image memory is not enabled")
        if backfill.running(guild.id, target.id):
            await interaction.response.send_message(f"{target.mention} is already being indexed.", ephemeral=True)
            return
        await interaction.response.send_message(f"Indexing {target.mention}…", ephemeral=True)
        started = time.monotonic()

        async def progress(p: BackfillProgress) -> None:
            if time.monotonic() - started < TOKEN_LIFETIME_S:
                await interaction.edit_original_response(content=progress_text(p, channel=target.mention))

        if from_start:
            await backfill.reset(guild.id, target.id)
        try:
            report = await backfill.run(guild.id, target.id, history_of(target), limit=limit, progress=progress)
        except BackfillBusy:
            await interaction.edit_original_response(content=f"{target.mention} is already being indexed.")
            return
        summary = report_text(report, channel=target.mention)
        try:
            if time.monotonic() - started >= TOKEN_LIFETIME_S:
                raise TimeoutError("interaction token expired")
            await interaction.edit_original_response(content=summary[:2000])
        except (discord.HTTPException, TimeoutError):
            try:
                await interaction.user.send(summary[:2000])
            except discord.HTTPException as exc:
                log.info("could not deliver the /index summary for channel %s: %s", target.id, exc)

    # ----- /topics -----

    @topics.command(name="refresh", description="Admins: discover topics in every caption of this server")
    async def topics_refresh(self, interaction: discord.Interaction) -> None:
        if interaction.guild is None or not isinstance(interaction.channel, (discord.abc.GuildChannel,
                                                                             discord.Thread)):
            await interaction.response.send_message("Run this in a server channel.", ephemeral=True)
            return
        perms = interaction.permissions
        if not (perms.manage_guild or perms.manage_messages):
            await interaction.response.send_message(NOT_ADMIN, ephemeral=True)
            return
        if self.service.refreshing(interaction.guild.id):
            await interaction.response.send_message("A refresh is already running.", ephemeral=True)
            return
        await interaction.response.defer(ephemeral=True, thinking=True)
        model = await self.service.refresh_topics(interaction.guild.id)
        audience = private_audience(interaction.user, interaction.channel, interaction.guild)
        visible = model.visible(audience.visible_channel_ids, audience.allow_nsfw)
        await interaction.followup.send(topics_text(model, visible, refreshed=True)[:2000], ephemeral=True)

    @topics.command(name="list", description="Topics discovered in the pictures you can see here")
    async def topics_list(self, interaction: discord.Interaction) -> None:
        audience = private_audience(interaction.user, interaction.channel, interaction.guild)
        model = await self.service.topic_model(interaction.guild_id)
        visible = await self.service.clusters(audience)
        await interaction.response.send_message(topics_text(model, visible)[:2000], ephemeral=True)


async def setup(bot: ImageBot) -> None:
    await bot.add_cog(Overview(bot))
