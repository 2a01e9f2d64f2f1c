"""Who may see what, computed from Discord permissions at query time (never at ingest).

This is the security boundary of /find, "Find similar" and chat search: the store returns only images
from the channels listed here, so a member never sees an image (or its caption or thumbnail) from a
channel they cannot open right now, and NSFW images never surface outside NSFW channels.
"""

from __future__ import annotations

import discord

from bot.memory.service import Audience
from cogs.utils.messages import is_nsfw


def _message_channels(guild: discord.Guild) -> list[discord.abc.GuildChannel | discord.Thread]:
    channels: list[discord.abc.GuildChannel | discord.Thread] = []
    channels.extend(guild.text_channels)
    channels.extend(guild.voice_channels)  # text chat in voice channels
    channels.extend(guild.stage_channels)
    channels.extend(guild.threads)
    return channels


def _can_read(channel: discord.abc.GuildChannel | discord.Thread, member: discord.Member | discord.Role) -> bool:
    perms = channel.permissions_for(member)
    return perms.view_channel and perms.read_message_history


def private_audience(user: discord.abc.User, where: discord.abc.Messageable | None,
                     guild: discord.Guild | None) -> Audience:
    """Results only ``user`` will see (an ephemeral reply): every channel they can read now."""
    if guild is None or not isinstance(user, discord.Member):
        return Audience(user.id, None, None, allow_nsfw=False)  # DMs: the user's own images only
    allow_nsfw = is_nsfw(where)
    # A channel age-restricted *now* is left out too, whatever its images were flagged at ingest.
    visible = frozenset(c.id for c in _message_channels(guild)
                        if _can_read(c, user) and (allow_nsfw or not is_nsfw(c)))
    return Audience(user.id, guild.id, visible, allow_nsfw=allow_nsfw)


def public_audience(user: discord.abc.User, channel: discord.abc.Messageable, guild: discord.Guild | None) -> Audience:
    """Results posted in ``channel`` for everyone there: channels the requester AND that channel's
    whole audience can read. A channel open to @everyone may show other @everyone channels; a
    private channel shows only its own images (its members may not share any other channel)."""
    if guild is None or not isinstance(user, discord.Member):
        return Audience(user.id, None, None, allow_nsfw=False)
    mine = private_audience(user, channel, guild).visible_channel_ids or frozenset()
    everyone = guild.default_role
    if isinstance(channel, (discord.abc.GuildChannel, discord.Thread)) and _can_read(channel, everyone):
        shared = frozenset(c.id for c in _message_channels(guild) if _can_read(c, everyone))
        visible = mine & shared
    else:
        visible = mine & {getattr(channel, "id", 0)}
    return Audience(user.id, guild.id, frozenset(visible), allow_nsfw=is_nsfw(channel))
