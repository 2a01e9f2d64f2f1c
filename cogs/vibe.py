"""/vibe and the "Vibe check" message menu: Discord I/O only; the judging is bot.vibe.

Private by default — it is someone's face — so every answer is ephemeral unless the user asks for
``public:True``. The command always defers ephemerally (the models take a few seconds, Discord
allows three), which also keeps any error private; a public result is then posted as a separate
followup. Nothing /vibe sees is stored or remembered.
"""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import discord
from discord import app_commands
from discord.ext import commands

from bot.analysis import ImageAnalysis
from bot.chat.llm import ChatLLM
from bot.client import ImageBot
from bot.errors import UserFacingError
from bot.imaging import UnsupportedImageType
from bot.ingest.limits import too_large
from bot.vibe import (
    STORY_SEED,
    STORY_TEMPERATURE,
    VibeScorer,
    comparison_chart,
    load_profile,
    profile_path,
    render_comparison,
    render_result,
)
from cogs.utils.messages import incoming_images

log = logging.getLogger(__name__)
CHART_NAME = "vibe-compare.png"
NO_IMAGE = "That message has no image I can look at."
DOWNLOAD_FAILED = "I couldn't download that image from Discord. Please try again."
POSTED = "Done — posted in the channel."


class VibeProblem(UserFacingError):
    """A refusal to show the user as-is (bad attachment, rate limit)."""

    code = "vibe_refused"


@dataclass(frozen=True)
class Photo:
    filename: str
    size: int | None
    content_type: str | None
    read: Callable[[], Awaitable[bytes]]
    known: ImageAnalysis | None = None  # the listener's analysis of this very attachment, if cached


class Vibe(commands.Cog):
    def __init__(self, bot: ImageBot) -> None:
        self.bot = bot
        settings = bot.settings
        queue = bot.services.queue
        self.scorer = VibeScorer(
            analyze=queue.analyze,
            clip_texts=queue.clip_texts,
            # Looked up per call, not now: a queue without it must not stop the whole bot from starting.
            score_sentiment=lambda texts: queue.score_sentiment(texts),
            llm=ChatLLM(settings.llm, temperature=STORY_TEMPERATURE, seed=STORY_SEED),
            profile=load_profile(profile_path(settings.labels_dir)),
            max_bytes=settings.images.max_bytes,
            max_pixels=settings.images.max_pixels,
            decode=bot.services.decoder.decode,
        )
        # Context menus cannot be declared inside a Cog class; register and unregister by hand.
        self.menu = app_commands.ContextMenu(name="Vibe check", callback=self.vibe_check)
        bot.tree.add_command(self.menu)

    async def cog_unload(self) -> None:
        self.bot.tree.remove_command(self.menu.name, type=self.menu.type)

    @app_commands.command(name="vibe", description="Rate a photo as a profile picture (0-10), or compare two")
    @app_commands.describe(
        image="The photo to rate",
        compare="A second photo: I'll say which one works better",
        public="Post the result in the channel (default: only you see it)",
    )
    async def vibe(
        self,
        interaction: discord.Interaction,
        image: discord.Attachment,
        compare: discord.Attachment | None = None,
        public: bool = False,
    ) -> None:
        photos = [_from_attachment(a) for a in (image, compare) if a is not None]
        await self._judge(interaction, photos, public=public)

    async def vibe_check(self, interaction: discord.Interaction, message: discord.Message) -> None:
        """Right-click a message → Apps → Vibe check: the first image, answered only to the caller."""
        images = incoming_images(message)
        if not images:
            await interaction.response.send_message(NO_IMAGE, ephemeral=True)
            return
        first = images[0]
        # The image listener has usually analysed this message already: reuse it, not the GPU.
        known = self.bot.services.ingestor.known(first)
        if known is not None and known.caption_pending:  # only a first look so far: /vibe judges the caption
            known = None
        await self._judge(interaction, [Photo(first.filename, first.size, None, first.read, known)], public=False)

    async def _judge(self, interaction: discord.Interaction, photos: list[Photo], *, public: bool) -> None:
        # Refusals (VibeProblem, a bad file, busy, timeout) and bugs are answered privately by the
        # tree's error handler (cogs/utils/errors.py): before the defer as the response, after it
        # as the followup that replaces "thinking…".
        self._check(interaction, photos)
        await interaction.response.defer(ephemeral=True, thinking=True)
        content, files = await self._run(photos)
        if public:
            # The first followup after an ephemeral defer would replace (and stay) ephemeral; settle
            # the private placeholder first, then post the result as a new, visible message.
            await interaction.edit_original_response(content=POSTED)
        if files:
            await interaction.followup.send(content, files=files, ephemeral=not public)
        else:
            await interaction.followup.send(content, ephemeral=not public)

    def _check(self, interaction: discord.Interaction, photos: list[Photo]) -> None:
        """Refuse before deferring what can be refused from metadata alone (no download)."""
        # The same limits and wording as posted pictures (bot/ingest/limits.py).
        for photo in photos:
            oversized = too_large(photo.size, self.bot.settings.images.max_bytes, photo.filename)
            if oversized is not None:
                raise VibeProblem(oversized.user_message)
            if not _looks_like_image(photo):
                raise VibeProblem(UnsupportedImageType(None, filename=photo.filename).user_message)
        channel_id = interaction.channel_id or 0
        limiter = self.bot.services.limiter
        if limiter.acquire(interaction.user.id, channel_id, len(photos)) < len(photos):
            raise VibeProblem(limiter.refusal(interaction.user.id, channel_id).user_message)

    async def _run(self, photos: list[Photo]) -> tuple[str, list[discord.File]]:
        try:
            data = await asyncio.gather(*(photo.read() for photo in photos))
        except discord.HTTPException as exc:  # deleted meanwhile, CDN hiccup
            log.info("/vibe could not download an attachment: %s", exc)
            raise VibeProblem(DOWNLOAD_FAILED) from exc
        if len(photos) == 1:
            result = await self.scorer.score(data[0], filename=photos[0].filename, analysis=photos[0].known)
            return render_result(result), []
        comparison = await self.scorer.compare(data[0], data[1], filenames=(photos[0].filename, photos[1].filename))
        chart = await asyncio.to_thread(comparison_chart, comparison)
        return render_comparison(comparison), [discord.File(io.BytesIO(chart), filename=CHART_NAME)]


def _from_attachment(attachment: discord.Attachment) -> Photo:
    return Photo(attachment.filename, attachment.size, attachment.content_type, attachment.read)


def _looks_like_image(photo: Photo) -> bool:
    """Discord's content type says "not an image": refuse without downloading. Unknown types are
    let through; decoding sniffs the bytes and refuses politely."""
    return photo.content_type is None or photo.content_type.startswith("image/")


async def setup(bot: ImageBot) -> None:
    await bot.add_cog(Vibe(bot))
