"""The Discord client: an AutoShardedBot that loads the cogs and owns the shared services."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import discord
from discord.ext import commands

from bot.config import Settings
from bot.health import write_heartbeat
from bot.services import Services

log = logging.getLogger(__name__)
# cogs.errors first: it installs the tree-level error handler every other cog relies on.
EXTENSIONS = ("cogs.errors", "cogs.images", "cogs.chat", "cogs.memory", "cogs.status", "cogs.vibe", "cogs.overview")


def default_intents() -> discord.Intents:
    intents = discord.Intents.default()
    intents.message_content = True  # privileged: enable "Message Content Intent" in the developer portal
    return intents


class ImageBot(commands.AutoShardedBot):
    def __init__(self, settings: Settings, services: Services, **options: object) -> None:
        options.setdefault("intents", default_intents())
        # Never let model output or user text ping @everyone, roles or users through the bot.
        options.setdefault("allowed_mentions", discord.AllowedMentions.none())
        if settings.discord.shard_count:
            options.setdefault("shard_count", settings.discord.shard_count)
        if settings.discord.shard_ids is not None:
            options.setdefault("shard_ids", settings.discord.shard_ids)
        super().__init__(command_prefix=commands.when_mentioned, help_command=None, **options)
        self.settings = settings
        self.services = services
        self._heartbeat_task: asyncio.Task[None] | None = None

    async def setup_hook(self) -> None:
        await self.services.start()
        self._heartbeat_task = asyncio.create_task(self._heartbeat(), name="imagebot-heartbeat")
        for extension in EXTENSIONS:
            await self.load_extension(extension)
        if self.settings.discord.sync_commands:
            synced = await self.tree.sync()
            log.info("synced %d application commands", len(synced))

    async def _heartbeat(self) -> None:
        path = self.settings.resolve_path(self.settings.discord.heartbeat_file)
        while True:
            latency = self.latency if self.is_ready() else None
            try:
                await asyncio.to_thread(write_heartbeat, path, ready=self.is_ready() and not self.is_closed(),
                                        latency_s=latency, guilds=len(self.guilds))
            except OSError as exc:
                log.warning("cannot write heartbeat file %s: %s", path, exc)
            await asyncio.sleep(self.settings.discord.heartbeat_s)

    async def close(self) -> None:
        if self._heartbeat_task is not None:
            self._heartbeat_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat_task
        try:
            await super().close()
        finally:
            await self.services.close()

    async def on_message(self, message: discord.Message, /) -> None:
        # No prefix commands: "@imagebot what's this?" is a chat message (cogs.chat), and the
        # features are slash commands. Cog listeners still receive every message.
        return

    async def on_ready(self) -> None:
        log.info("ready as %s in %d guild(s)", self.user, len(self.guilds))
