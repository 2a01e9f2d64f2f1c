"""Installs the tree-level error handler (cogs/utils/errors.py): no interaction is left unanswered."""

from __future__ import annotations

from bot.client import ImageBot
from cogs.utils.errors import answer_error


async def setup(bot: ImageBot) -> None:
    bot.tree.error(answer_error)  # CommandTree.error registers the tree's on_error handler
