"""A search asked in plain words ("show me the dog picture from last week"), answered in the channel.

Used by the chat cog when :func:`bot.memory.intent.detect_search_intent` recognises a search in a message
addressed to the bot; the answer is public, so it only shows pictures everyone in that channel may see.
"""

from __future__ import annotations

import logging
import re

import discord

from bot.errors import UserFacingError
from bot.memory.intent import SearchIntent
from bot.memory.service import Filters, MemoryService
from cogs.utils.results import RESULT_LIMIT, paged
from cogs.utils.visibility import public_audience

log = logging.getLogger(__name__)


async def answer_search(memory: MemoryService, message: discord.Message, intent: SearchIntent) -> None:
    """Public reply in the channel: only images everyone there may see (cogs.utils.visibility)."""
    author_id = resolve_author(message, intent)
    if author_id is None and intent.author_hint:
        intent = intent.without_author()
    audience = public_audience(message.author, message.channel, message.guild)
    filters = Filters(author_id=author_id, since=intent.since, until=intent.until)
    try:
        results = await memory.find(intent.query, audience, filters, limit=RESULT_LIMIT)
    except UserFacingError as exc:  # memory down, or the query could not be embedded (busy, timeout)
        log.info("chat search answered with %s: %s", exc.code, exc)
        await message.reply(exc.user_message, mention_author=False)
        return
    if not results:
        await message.reply("I couldn't find a picture like that here.", mention_author=False)
        return
    text = f"Here's what I found for “{intent.query}”:" if intent.query else "Here's what I found:"
    await message.reply(text, **paged(results, message.author.id), mention_author=False)

def resolve_author(message: discord.Message, intent: SearchIntent) -> int | None:
    hint = intent.author_hint
    if not hint:
        return None
    if hint == "me":
        return message.author.id
    mention = re.fullmatch(r"<@!?(\d+)>", hint)
    if mention:
        return int(mention.group(1))
    name = hint.lstrip("@").lower()
    if message.guild is not None:
        for member in message.guild.members:
            if name in (member.name.lower(), member.display_name.lower()):
                return member.id
    return None
