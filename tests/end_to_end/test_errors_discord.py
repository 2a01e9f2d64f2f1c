"""The one error path at the Discord edge (cogs/utils/errors.py), through the Discord protocol peer.

Commands are added to the production bot's tree here, so what is tested is the real tree-level
handler that the ``cogs.errors`` extension installs, answering through the real discord.py client.
"""

from __future__ import annotations

import logging

import discord
from discord import app_commands

from bot.errors import MemoryUnavailable
from bot.inference.errors import QueueBusy
from cogs.utils.errors import GENERIC_FAILURE


async def add_commands(bot) -> None:
    @app_commands.command(name="deferred-outage", description="defers, then memory is down")
    async def deferred_outage(interaction: discord.Interaction) -> None:
        await interaction.response.defer(thinking=True, ephemeral=True)
        raise MemoryUnavailable(detail="connection refused")

    @app_commands.command(name="busy-at-once", description="refused before any response")
    async def busy_at_once(interaction: discord.Interaction) -> None:
        raise QueueBusy("test: queue full")

    @app_commands.command(name="bug", description="a programming error")
    async def bug(interaction: discord.Interaction) -> None:
        raise KeyError("not for users")

    for command in (deferred_outage, busy_at_once, bug):
        bot.tree.add_command(command)
    await bot.tree.sync()


async def test_a_deferred_command_that_fails_replaces_thinking_with_the_reason(imagebot, discord_server,
                                                                               discord_world):
    await add_commands(imagebot)
    ix = await discord_server.invoke_slash_command(discord_world.general, discord_world.alice, "deferred-outage")
    followup = await discord_server.wait_for_followup(ix, timeout=10)
    assert followup.content == MemoryUnavailable.default_message
    assert "connection refused" not in followup.content  # the detail is for logs only


async def test_a_refusal_before_any_response_is_the_response(imagebot, discord_server, discord_world):
    await add_commands(imagebot)
    ix = await discord_server.invoke_slash_command(discord_world.general, discord_world.alice, "busy-at-once")
    response = await discord_server.wait_for_response(ix, timeout=10)
    assert response.data["content"] == QueueBusy.default_message
    assert response.data["flags"] & 64  # ephemeral: only the person who asked sees it


async def test_a_bug_gets_a_plain_sorry_and_a_logged_traceback(imagebot, discord_server, discord_world, caplog):
    await add_commands(imagebot)
    with caplog.at_level(logging.ERROR, logger="cogs.utils.errors"):
        ix = await discord_server.invoke_slash_command(discord_world.general, discord_world.alice, "bug")
        response = await discord_server.wait_for_response(ix, timeout=10)
    assert response.data["content"] == GENERIC_FAILURE
    assert "not for users" not in response.data["content"]
    logged = [record.exc_info[1] for record in caplog.records if record.exc_info]
    assert any(isinstance(exc, KeyError) for exc in logged)
