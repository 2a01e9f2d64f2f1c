"""``/status`` for the bot's owners: inference queue health, plus the Prometheus text as a file."""

from __future__ import annotations

import io

import discord
from discord import app_commands
from discord.ext import commands

from bot.client import ImageBot
from bot.status_report import status_lines


class Status(commands.Cog):
    def __init__(self, bot: ImageBot) -> None:
        self.bot = bot

    async def _is_owner(self, user: discord.abc.User) -> bool:
        return user.id in self.bot.settings.discord.owner_ids or await self.bot.is_owner(user)

    @app_commands.command(name="status", description="Model queue health (bot owners only)")
    async def status(self, interaction: discord.Interaction) -> None:
        if not await self._is_owner(interaction.user):
            await interaction.response.send_message("Only the bot's owners can see its status.", ephemeral=True)
            return
        metrics = self.bot.services.queue.metrics
        embed = discord.Embed(title="imagebot status", colour=discord.Colour.blurple())
        for name, value in status_lines(metrics.snapshot()):
            embed.add_field(name=name, value=value, inline=False)
        prometheus = discord.File(io.BytesIO(metrics.prometheus_text().encode()), filename="metrics.prom")
        await interaction.response.send_message(embed=embed, file=prometheus, ephemeral=True)


async def setup(bot: ImageBot) -> None:
    await bot.add_cog(Status(bot))
