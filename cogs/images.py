"""Image listener: every picture posted is remembered; problems get a polite reply.

A passive post goes into the durable backlog before anything else (bot/ingest/backlog.py) and the
listener returns: nobody asked for anything, so nobody is told "busy". The 👀 comes when the picture's
first look is stored (it is findable from then on); a bad file gets its polite reply when the backlog
reaches it. A message addressed to the bot (a mention, a reply, a DM) is a question: its pictures are
analysed right away at interactive priority, with the typing indicator, and the chat cog answers once
that is done.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass, field

import discord
from discord.ext import commands

from bot.client import ImageBot
from bot.ingest import BacklogEvent, IncomingImage, IngestOutcome
from bot.memory.records import ImageRef
from cogs.utils.messages import addressed_to_bot, incoming_images

log = logging.getLogger(__name__)
SEEN_REACTION = "👀"
SLOW_DOWN_REACTION = "⏳"
_REACTED_MEMORY = 4096  # messages already given their 👀 (a message with several pictures gets one)


@dataclass
class _WaitingMessage:
    left: int  # pictures of the message the backlog has not finished with
    problems: list[str] = field(default_factory=list)
    counted: set[int] = field(default_factory=set)


def _problem_line(filename: str, problem: str | None) -> str:
    return f"**{discord.utils.escape_markdown(filename)}**: {problem}"


class ImageListener(commands.Cog):
    def __init__(self, bot: ImageBot) -> None:
        self.bot = bot
        self._reacted: OrderedDict[int, None] = OrderedDict()
        self._resumed = False
        self._waiting: dict[int, _WaitingMessage] = {}  # message id → its pictures still in the backlog
        if bot.services.backlog is not None:
            bot.services.backlog.on_event = self.on_backlog_event

    @commands.Cog.listener()
    async def on_message(self, message: discord.Message) -> None:
        if message.author.bot or message.webhook_id is not None:
            return
        images = incoming_images(message)
        if not images:
            return
        ingestor = self.bot.services.ingestor
        me = self.bot.user
        if me is not None and addressed_to_bot(message, me):
            async with message.channel.typing():
                outcomes = await ingestor.ingest(images, user_id=message.author.id, channel_id=message.channel.id)
            # The chat cog answers image messages only after this, so the LLM sees the analysis.
            self.bot.dispatch("images_ingested", message, outcomes)
        else:
            outcomes = await ingestor.accept(images, user_id=message.author.id, channel_id=message.channel.id)
            queued = sum(o.code == "queued" for o in outcomes)
            if queued:  # their refusals, if any, are gathered into one reply (on_backlog_event)
                self._waiting[message.id] = _WaitingMessage(queued)
        await self._react(message, outcomes)

    @commands.Cog.listener()
    async def on_ready(self) -> None:
        """Once per process (reconnects fire on_ready again): resume what an earlier run accepted but
        did not finish, then catch up on pictures posted while the bot was down or just before a crash."""
        backlog = self.bot.services.backlog
        if self._resumed or backlog is None:
            return
        self._resumed = True
        backlog.resolver = self.resolve
        await backlog.resume()
        await self.catch_up()

    async def resolve(self, ref: ImageRef) -> IncomingImage | None:
        """The picture behind a ledger row, with a fresh download link (None: deleted meanwhile)."""
        channel = self.bot.get_channel(ref.channel_id) or self.bot.get_partial_messageable(
            ref.channel_id, guild_id=ref.guild_id)
        try:
            message = await channel.fetch_message(ref.message_id)  # type: ignore[union-attr]
        except discord.NotFound:
            return None
        return next((image for image in incoming_images(message)
                     if image.ref is not None and image.ref.attachment_id == ref.attachment_id), None)

    async def catch_up(self) -> int:
        """Read each channel's history after the newest message whose pictures were accepted there
        (``ingest.catch_up_messages`` at most) and accept the pictures found. This finds a message that
        arrived just before a kill, before it was written down, and what was posted while the bot was
        down. (A channel where no picture was ever accepted has no mark: /index covers it.)"""
        services = self.bot.services
        limit = self.bot.settings.ingest.catch_up_messages
        if services.memory is None or limit == 0:
            return 0
        found = 0
        for channel_id, (guild_id, newest) in (await services.memory.channel_marks()).items():
            channel = self.bot.get_channel(channel_id) or self.bot.get_partial_messageable(channel_id,
                                                                                            guild_id=guild_id)
            try:
                async for message in channel.history(  # type: ignore[union-attr]
                        limit=limit, after=discord.Object(newest), oldest_first=True):
                    if message.author.bot or message.webhook_id is not None:
                        continue
                    images = incoming_images(message)
                    if images:
                        outcomes = await services.ingestor.accept(images, user_id=message.author.id,
                                                                  channel_id=channel_id, rate_limit=False)
                        found += sum(o.code == "queued" for o in outcomes)
            except discord.HTTPException as exc:  # no longer readable, deleted
                log.info("cannot catch up on channel %s: %s", channel_id, exc)
        if found:
            log.info("caught up on %d picture(s) posted while the bot was down", found)
        return found

    async def _react(self, message: discord.Message, outcomes: list[IngestOutcome]) -> None:
        problems = [o for o in outcomes if not o.ok and o.code != "queued"]
        try:
            if any(o.ok for o in outcomes):
                await self._seen(message)
            if any(o.code == "rate_limited" for o in problems):
                await message.add_reaction(SLOW_DOWN_REACTION)
            refused = [o for o in problems if o.code != "rate_limited"]
            if refused:
                lines = [_problem_line(o.image.filename, o.problem) for o in refused]
                await message.reply("\n".join(lines), mention_author=False)
        except discord.HTTPException as exc:  # missing permissions, deleted message: nothing to do
            log.info("could not react/reply in channel %s: %s", message.channel.id, exc)

    async def on_backlog_event(self, event: BacklogEvent) -> None:
        """A waiting picture got its first look (👀), or turned out to be a bad file: the bad files of one
        message get one polite reply together, once each of its pictures has been looked at."""
        if event.kind == "captioned":
            return
        ref = event.ref
        channel = self.bot.get_partial_messageable(ref.channel_id, guild_id=ref.guild_id)
        message = channel.get_partial_message(ref.message_id)
        waiting = self._waiting.get(ref.message_id)
        if waiting is not None and ref.attachment_id not in waiting.counted:  # its first outcome only
            waiting.counted.add(ref.attachment_id)
            waiting.left -= 1
            if event.kind == "refused":
                waiting.problems.append(_problem_line(event.filename, event.message))
        problems = [_problem_line(event.filename, event.message)] if waiting is None and event.kind == "refused" \
            else []
        if waiting is not None and waiting.left <= 0:
            del self._waiting[ref.message_id]
            problems = waiting.problems
        try:
            if event.kind == "seen":
                await self._seen(message)
            if problems:
                await message.reply("\n".join(problems), mention_author=False)
        except discord.HTTPException as exc:
            log.info("could not react/reply to message %s: %s", ref.message_id, exc)

    async def _seen(self, message: discord.Message | discord.PartialMessage) -> None:
        if message.id in self._reacted:
            return
        await message.add_reaction(SEEN_REACTION)
        self._reacted[message.id] = None
        while len(self._reacted) > _REACTED_MEMORY:
            self._reacted.popitem(last=False)


async def setup(bot: ImageBot) -> None:
    await bot.add_cog(ImageListener(bot))
