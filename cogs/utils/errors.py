"""The one error path at the Discord edge: every interaction gets an answer, even when things break.

discord.py routes an exception escaping any app command, context menu or autocomplete callback to
``CommandTree.on_error``; the ``cogs.errors`` extension installs :func:`answer_error` there, so a
cog never needs its own ``try``/``except`` just to avoid leaving someone on "thinking…" forever:

- a :class:`bot.errors.UserFacingError` (a bad file, busy, timeout, memory down, ...) is answered
  with its ``user_message``;
- anything else is logged with its traceback and answered with a plain "something went wrong".

The answer is private (ephemeral) and goes where the interaction is: the first response if none was
sent, else a followup (which also replaces a deferred "thinking…" placeholder). Views (buttons) use
:func:`answer_error` from their own ``on_error``.
"""

from __future__ import annotations

import logging

import discord
from discord import app_commands

from bot.errors import UserFacingError

__all__ = ["AnsweringView", "answer_error", "user_message_for"]

log = logging.getLogger(__name__)
GENERIC_FAILURE = "Sorry, something went wrong on my side. Please try again in a moment."


def user_message_for(error: BaseException) -> str:
    """What to tell the person: the error's own sentence, or the generic one (after logging it)."""
    if isinstance(error, app_commands.CommandInvokeError):  # discord.py wraps callback exceptions
        error = error.original
    if isinstance(error, UserFacingError):
        log.info("answered with %s: %s", error.code, error)
        return error.user_message
    if isinstance(error, app_commands.CheckFailure) and str(error):
        return str(error)
    log.error("unhandled error in an interaction", exc_info=error)
    return GENERIC_FAILURE


async def answer_error(interaction: discord.Interaction, error: BaseException) -> None:
    """Tell the user what went wrong, privately, through whichever channel the interaction still has."""
    message = user_message_for(error)
    if interaction.type is discord.InteractionType.autocomplete:
        return  # autocomplete cannot show a message; an empty list is the answer
    try:
        if interaction.response.is_done():
            await interaction.followup.send(message, ephemeral=True)
        else:
            await interaction.response.send_message(message, ephemeral=True)
    except discord.HTTPException as exc:  # the token expired (15 min) or the channel is gone
        log.warning("could not tell the user about an error: %s", exc)


class AnsweringView(discord.ui.View):
    """A view whose button callbacks get the same error answer as commands."""

    async def on_error(self, interaction: discord.Interaction, error: Exception, item: discord.ui.Item, /) -> None:
        await answer_error(interaction, error)
