"""In-memory Discord world used by :mod:`tests.harness.discord_server`.

Everything here is plain data: users, guilds, roles, members, channels, messages,
attachments and interactions, plus the functions that turn them into the JSON
payloads Discord's API v10 sends.  The payloads carry every field discord.py 2.x
reads (a missing key in a gateway event kills ``Client.start()``), so keep them
complete when adding fields.

Permission numbers come from :class:`discord.Permissions` so they cannot drift
from what the client computes on its side.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import io
import mimetypes
import secrets
import struct
import threading
import time
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import discord

JSON = dict[str, Any]

DISCORD_EPOCH_MS = 1420070400000


# --------------------------------------------------------------------------- ids


class SnowflakeGenerator:
    """Time-based, strictly increasing snowflakes (so id order == creation order)."""

    def __init__(self) -> None:
        self._last = 0
        self._lock = threading.Lock()

    def next(self) -> int:
        with self._lock:
            candidate = (int(time.time() * 1000) - DISCORD_EPOCH_MS) << 22
            if candidate <= self._last:
                candidate = self._last + 1
            self._last = candidate
            return candidate

    @property
    def last(self) -> int:
        """The most recently issued id (0 before the first)."""
        return self._last


def iso(ts: dt.datetime | None) -> str | None:
    """Discord's timestamp format (ISO 8601 with offset)."""
    return ts.isoformat() if ts is not None else None


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def snowflake_time(snowflake: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(((snowflake >> 22) + DISCORD_EPOCH_MS) / 1000, dt.UTC)


# ------------------------------------------------------------------- constants


class Intent:
    """Gateway intent bits (https://discord.com/developers/docs/events/gateway#gateway-intents)."""

    GUILDS = 1 << 0
    GUILD_MEMBERS = 1 << 1
    GUILD_PRESENCES = 1 << 8
    GUILD_MESSAGES = 1 << 9
    GUILD_MESSAGE_REACTIONS = 1 << 10
    GUILD_MESSAGE_TYPING = 1 << 11
    DIRECT_MESSAGES = 1 << 12
    DIRECT_MESSAGE_REACTIONS = 1 << 13
    MESSAGE_CONTENT = 1 << 15
    PRIVILEGED = GUILD_MEMBERS | GUILD_PRESENCES | MESSAGE_CONTENT


class ChannelType:
    GUILD_TEXT = 0
    DM = 1
    GUILD_VOICE = 2
    GUILD_CATEGORY = 4
    GUILD_NEWS = 5
    PUBLIC_THREAD = 11


class MessageType:
    DEFAULT = 0
    REPLY = 19
    CHAT_INPUT_COMMAND = 20
    CONTEXT_MENU_COMMAND = 23


class MessageFlag:
    SUPPRESS_EMBEDS = 1 << 2
    EPHEMERAL = 1 << 6
    LOADING = 1 << 7
    SUPPRESS_NOTIFICATIONS = 1 << 12
    IS_COMPONENTS_V2 = 1 << 15


class InteractionType:
    PING = 1
    APPLICATION_COMMAND = 2
    MESSAGE_COMPONENT = 3
    AUTOCOMPLETE = 4
    MODAL_SUBMIT = 5


class CallbackType:
    """Interaction callback (response) types."""

    PONG = 1
    CHANNEL_MESSAGE = 4
    DEFERRED_CHANNEL_MESSAGE = 5
    DEFERRED_UPDATE_MESSAGE = 6
    UPDATE_MESSAGE = 7
    AUTOCOMPLETE_RESULT = 8
    MODAL = 9
    LAUNCH_ACTIVITY = 12


class CommandType:
    CHAT_INPUT = 1
    USER = 2
    MESSAGE = 3


class OptionType:
    SUB_COMMAND = 1
    SUB_COMMAND_GROUP = 2
    STRING = 3
    INTEGER = 4
    BOOLEAN = 5
    USER = 6
    CHANNEL = 7
    ROLE = 8
    MENTIONABLE = 9
    NUMBER = 10
    ATTACHMENT = 11


def _perm(**flags: bool) -> int:
    return discord.Permissions(**flags).value


class Perm:
    """Permission bits, taken from discord.py so both sides agree."""

    ALL = discord.Permissions.all().value
    ADMINISTRATOR = _perm(administrator=True)
    VIEW_CHANNEL = _perm(view_channel=True)
    SEND_MESSAGES = _perm(send_messages=True)
    SEND_TTS_MESSAGES = _perm(send_tts_messages=True)
    MANAGE_MESSAGES = _perm(manage_messages=True)
    EMBED_LINKS = _perm(embed_links=True)
    ATTACH_FILES = _perm(attach_files=True)
    READ_MESSAGE_HISTORY = _perm(read_message_history=True)
    MENTION_EVERYONE = _perm(mention_everyone=True)
    ADD_REACTIONS = _perm(add_reactions=True)
    USE_APPLICATION_COMMANDS = _perm(use_application_commands=True)

    #: What a fresh server's @everyone role gets.
    DEFAULT_EVERYONE = _perm(
        create_instant_invite=True,
        add_reactions=True,
        view_channel=True,
        send_messages=True,
        embed_links=True,
        attach_files=True,
        read_message_history=True,
        use_external_emojis=True,
        connect=True,
        speak=True,
        change_nickname=True,
        use_application_commands=True,
        send_messages_in_threads=True,
        create_public_threads=True,
    )
    #: What the bot's managed role gets by default (what an invite link would ask for).
    DEFAULT_BOT = _perm(
        view_channel=True,
        send_messages=True,
        send_messages_in_threads=True,
        embed_links=True,
        attach_files=True,
        read_message_history=True,
        add_reactions=True,
        use_external_emojis=True,
        use_application_commands=True,
    )
    #: Fixed permissions inside a DM channel.
    DM = _perm(
        view_channel=True,
        send_messages=True,
        embed_links=True,
        attach_files=True,
        read_message_history=True,
        add_reactions=True,
        use_external_emojis=True,
        use_application_commands=True,
    )
    _NEEDS_SEND = SEND_TTS_MESSAGES | MENTION_EVERYONE | EMBED_LINKS | ATTACH_FILES


# --------------------------------------------------------------------- helpers


def tiny_png(width: int = 1, height: int = 1, rgb: tuple[int, int, int] = (120, 80, 200)) -> bytes:
    """A valid solid-colour PNG built without Pillow."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    row = b"\x00" + bytes(rgb) * width
    raw = row * height
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def image_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) for PNG/GIF/JPEG/WebP bytes, else None (Discord reports both)."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24:
        width, height = struct.unpack(">II", data[16:24])
        return int(width), int(height)
    if data[:6] in (b"GIF87a", b"GIF89a") and len(data) >= 10:
        width, height = struct.unpack("<HH", data[6:10])
        return int(width), int(height)
    try:
        from PIL import Image

        with Image.open(io.BytesIO(data)) as img:
            return int(img.width), int(img.height)
    except Exception:
        return None


def guess_content_type(filename: str, data: bytes) -> str:
    """Discord derives content_type from the bytes/extension, not from the form part."""
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "image/png"
    if data[:3] == b"\xff\xd8\xff":
        return "image/jpeg"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    guessed, _ = mimetypes.guess_type(filename)
    if guessed:
        return guessed if not guessed.startswith("text/") else f"{guessed}; charset=utf-8"
    return "application/octet-stream"


# ---------------------------------------------------------------------- models


@dataclass(eq=False)
class FakeUser:
    """A Discord user (or the bot's own user when ``bot=True``)."""

    id: int
    username: str
    global_name: str | None = None
    bot: bool = False
    avatar: str | None = None
    #: When False, the bot's DMs to this user fail with 50007 like a closed DM inbox.
    accepts_dms: bool = True

    @property
    def mention(self) -> str:
        return f"<@{self.id}>"

    def to_payload(self) -> JSON:
        return {
            "id": str(self.id),
            "username": self.username,
            "discriminator": "0",
            "global_name": self.global_name,
            "avatar": self.avatar,
            "bot": self.bot,
            "system": False,
            "public_flags": 0,
            "banner": None,
            "accent_color": None,
            "avatar_decoration_data": None,
            "primary_guild": None,
            "collectibles": None,
        }


@dataclass(eq=False)
class FakeRole:
    id: int
    guild_id: int
    name: str
    permissions: int
    position: int = 0
    managed: bool = False
    bot_id: int | None = None

    @property
    def mention(self) -> str:
        return f"<@&{self.id}>"

    def to_payload(self) -> JSON:
        payload: JSON = {
            "id": str(self.id),
            "name": self.name,
            "color": 0,
            "colors": {"primary_color": 0, "secondary_color": None, "tertiary_color": None},
            "hoist": False,
            "icon": None,
            "unicode_emoji": None,
            "position": self.position,
            "permissions": str(self.permissions),
            "managed": self.managed,
            "mentionable": False,
            "flags": 0,
        }
        if self.bot_id is not None:
            payload["tags"] = {"bot_id": str(self.bot_id)}
        return payload


@dataclass(eq=False)
class FakeMember:
    user: FakeUser
    guild_id: int
    role_ids: list[int] = field(default_factory=list)
    nick: str | None = None
    joined_at: dt.datetime = field(default_factory=utcnow)

    def to_payload(self, *, with_user: bool = True, permissions: int | None = None) -> JSON:
        payload: JSON = {
            "nick": self.nick,
            "avatar": None,
            "banner": None,
            "roles": [str(r) for r in self.role_ids],
            "joined_at": iso(self.joined_at),
            "premium_since": None,
            "deaf": False,
            "mute": False,
            "flags": 0,
            "pending": False,
            "communication_disabled_until": None,
            "avatar_decoration_data": None,
        }
        if with_user:
            payload["user"] = self.user.to_payload()
        if permissions is not None:
            payload["permissions"] = str(permissions)
        return payload


@dataclass(eq=False)
class PermissionOverwrite:
    """A channel overwrite; ``type`` is 0 for a role (or @everyone), 1 for a member."""

    id: int
    type: int
    allow: int = 0
    deny: int = 0

    def to_payload(self) -> JSON:
        return {"id": str(self.id), "type": self.type, "allow": str(self.allow), "deny": str(self.deny)}


@dataclass(eq=False)
class FakeChannel:
    id: int
    type: int
    name: str | None = None
    guild: FakeGuild | None = None
    position: int = 0
    nsfw: bool = False
    topic: str | None = None
    parent_id: int | None = None
    overwrites: list[PermissionOverwrite] = field(default_factory=list)
    #: DM only: the other side of the conversation.
    recipient: FakeUser | None = None
    last_message_id: int | None = None

    @property
    def guild_id(self) -> int | None:
        return self.guild.id if self.guild is not None else None

    @property
    def is_dm(self) -> bool:
        return self.type == ChannelType.DM

    @property
    def mention(self) -> str:
        return f"<#{self.id}>"

    def to_payload(self, *, include_guild_id: bool = True) -> JSON:
        if self.type == ChannelType.DM:
            return {
                "id": str(self.id),
                "type": self.type,
                "last_message_id": _opt_id(self.last_message_id),
                "recipients": [self.recipient.to_payload()] if self.recipient else [],
                "flags": 0,
            }
        payload: JSON = {
            "id": str(self.id),
            "type": self.type,
            "name": self.name,
            "position": self.position,
            "permission_overwrites": [o.to_payload() for o in self.overwrites],
            "nsfw": self.nsfw,
            "topic": self.topic,
            "parent_id": _opt_id(self.parent_id),
            "last_message_id": _opt_id(self.last_message_id),
            "rate_limit_per_user": 0,
            "default_auto_archive_duration": 1440,
            "default_thread_rate_limit_per_user": 0,
            "flags": 0,
        }
        if include_guild_id and self.guild is not None:
            payload["guild_id"] = str(self.guild.id)
        return payload


@dataclass(eq=False)
class FakeGuild:
    id: int
    name: str
    owner_id: int
    roles: dict[int, FakeRole] = field(default_factory=dict)
    members: dict[int, FakeMember] = field(default_factory=dict)
    channels: dict[int, FakeChannel] = field(default_factory=dict)
    #: The bot's managed role (created when the bot "joins").
    bot_role_id: int | None = None

    @property
    def everyone_role(self) -> FakeRole:
        return self.roles[self.id]

    def text_channels(self) -> list[FakeChannel]:
        return [c for c in self.channels.values() if c.type == ChannelType.GUILD_TEXT]

    def to_payload(self, *, members: Iterable[FakeMember] | None = None) -> JSON:
        member_list = list(self.members.values() if members is None else members)
        return {
            "id": str(self.id),
            "name": self.name,
            "icon": None,
            "splash": None,
            "discovery_splash": None,
            "banner": None,
            "description": None,
            "owner_id": str(self.owner_id),
            "afk_channel_id": None,
            "afk_timeout": 300,
            "verification_level": 0,
            "default_message_notifications": 0,
            "explicit_content_filter": 0,
            "mfa_level": 0,
            "nsfw_level": 0,
            "premium_tier": 0,
            "premium_subscription_count": 0,
            "premium_progress_bar_enabled": False,
            "preferred_locale": "en-US",
            "features": [],
            "application_id": None,
            "system_channel_id": None,
            "system_channel_flags": 0,
            "rules_channel_id": None,
            "public_updates_channel_id": None,
            "safety_alerts_channel_id": None,
            "vanity_url_code": None,
            "max_members": 500000,
            "widget_enabled": False,
            "roles": [r.to_payload() for r in self.roles.values()],
            "emojis": [],
            "stickers": [],
            "joined_at": iso(utcnow()),
            "large": False,
            "unavailable": False,
            "member_count": len(self.members),
            "voice_states": [],
            "members": [m.to_payload() for m in member_list],
            "channels": [c.to_payload(include_guild_id=False) for c in self.channels.values()],
            "threads": [],
            "presences": [],
            "stage_instances": [],
            "guild_scheduled_events": [],
            "soundboard_sounds": [],
        }


@dataclass(eq=False)
class FakeAttachment:
    """An uploaded file: its bytes are served from the fake CDN at :attr:`url`."""

    id: int
    filename: str
    data: bytes
    content_type: str
    url: str
    description: str | None = None
    ephemeral: bool = False

    @property
    def size(self) -> int:
        return len(self.data)

    @functools.cached_property
    def dimensions(self) -> tuple[int, int] | None:
        """(width, height) for images, like Discord reports them."""
        return image_size(self.data) if self.content_type.startswith("image/") else None

    def to_payload(self) -> JSON:
        payload: JSON = {
            "id": str(self.id),
            "filename": self.filename,
            "size": self.size,
            "url": self.url,
            "proxy_url": self.url,
            "content_type": self.content_type,
            "ephemeral": self.ephemeral,
        }
        if self.description is not None:
            payload["description"] = self.description
        if self.dimensions is not None:
            payload["width"], payload["height"] = self.dimensions
        return payload


@dataclass(eq=False)
class FakeMessage:
    """A message in the fake world, authored by a test user or by the bot."""

    id: int
    channel: FakeChannel
    author: FakeUser
    content: str = ""
    embeds: list[JSON] = field(default_factory=list)
    components: list[JSON] = field(default_factory=list)
    attachments: list[FakeAttachment] = field(default_factory=list)
    mentions: list[FakeUser] = field(default_factory=list)
    mention_role_ids: list[int] = field(default_factory=list)
    mention_everyone: bool = False
    reference: FakeMessage | None = None
    type: int = MessageType.DEFAULT
    flags: int = 0
    tts: bool = False
    nonce: str | int | None = None
    edited_at: dt.datetime | None = None
    #: Set for interaction responses/followups (the application id).
    webhook_id: int | None = None
    interaction_metadata: JSON | None = None
    #: emoji key ("👍" or "name:id") -> ids of users who reacted.
    reactions: dict[str, list[int]] = field(default_factory=dict)
    deleted: bool = False
    #: Raw edit payloads applied to this message, in order.
    edit_history: list[JSON] = field(default_factory=list)
    #: The interaction that produced this message (responses and followups).
    interaction: FakeInteraction | None = None
    #: Extra raw keys sent by the bot that the harness does not model (e.g. "poll").
    extra: JSON = field(default_factory=dict)
    #: The bot's user id, so reaction payloads can say ``me`` (set by the server).
    bot_id: int | None = field(default=None, repr=False)

    # ---- convenience for assertions
    @property
    def channel_id(self) -> int:
        return self.channel.id

    @property
    def guild(self) -> FakeGuild | None:
        return self.channel.guild

    @property
    def guild_id(self) -> int | None:
        return self.channel.guild_id

    @property
    def ephemeral(self) -> bool:
        return bool(self.flags & MessageFlag.EPHEMERAL)

    @property
    def loading(self) -> bool:
        """True while this is a deferred "Bot is thinking..." placeholder."""
        return bool(self.flags & MessageFlag.LOADING)

    @property
    def created_at(self) -> dt.datetime:
        return snowflake_time(self.id)

    @property
    def files(self) -> dict[str, bytes]:
        """Attachment bytes by filename."""
        return {a.filename: a.data for a in self.attachments}

    def custom_ids(self) -> list[str]:
        """Every ``custom_id`` in this message's components (buttons, selects...)."""
        return [c["custom_id"] for c in iter_components(self.components) if "custom_id" in c]

    def find_component(self, custom_id: str) -> JSON | None:
        for comp in iter_components(self.components):
            if comp.get("custom_id") == custom_id:
                return comp
        return None

    def embed_text(self) -> str:
        """All human-readable embed text joined (title, description, fields, footer)."""
        parts: list[str] = []
        for embed in self.embeds:
            for key in ("title", "description"):
                if embed.get(key):
                    parts.append(str(embed[key]))
            for fld in embed.get("fields", []):
                parts.extend([str(fld.get("name", "")), str(fld.get("value", ""))])
            footer = embed.get("footer") or {}
            if footer.get("text"):
                parts.append(str(footer["text"]))
            author = embed.get("author") or {}
            if author.get("name"):
                parts.append(str(author["name"]))
        return "\n".join(parts)

    def all_text(self) -> str:
        """Content plus embed text: handy for "does the reply mention X" checks."""
        return "\n".join(p for p in (self.content, self.embed_text()) if p)

    def to_payload(self, *, include_referenced: bool = True) -> JSON:
        guild = self.channel.guild
        payload: JSON = {
            "id": str(self.id),
            "channel_id": str(self.channel.id),
            "author": self.author.to_payload(),
            "content": self.content,
            "timestamp": iso(self.created_at),
            "edited_timestamp": iso(self.edited_at),
            "tts": self.tts,
            "mention_everyone": self.mention_everyone,
            "mentions": [],
            "mention_roles": [str(r) for r in self.mention_role_ids],
            "mention_channels": [],
            "attachments": [a.to_payload() for a in self.attachments],
            "embeds": [dict(e) for e in self.embeds],
            "reactions": [
                {
                    "emoji": emoji_payload(key),
                    "count": len(users),
                    "count_details": {"burst": 0, "normal": len(users)},
                    "me": self.bot_id in users,
                    "me_burst": False,
                    "burst_colors": [],
                }
                for key, users in self.reactions.items()
                if users
            ],
            "pinned": False,
            "type": self.type,
            "flags": self.flags,
            "components": [dict(c) for c in self.components],
        }
        if self.nonce is not None:
            payload["nonce"] = self.nonce
        if guild is not None:
            payload["guild_id"] = str(guild.id)
            member = guild.members.get(self.author.id)
            if member is not None and self.webhook_id is None:
                payload["member"] = member.to_payload(with_user=False)
        for user in self.mentions:
            entry = user.to_payload()
            if guild is not None and user.id in guild.members:
                entry["member"] = guild.members[user.id].to_payload(with_user=False)
            payload["mentions"].append(entry)
        if self.webhook_id is not None:
            payload["webhook_id"] = str(self.webhook_id)
            payload["application_id"] = str(self.webhook_id)
        if self.interaction_metadata is not None:
            payload["interaction_metadata"] = self.interaction_metadata
        if self.reference is not None:
            ref = self.reference
            payload["message_reference"] = {
                "type": 0,
                "message_id": str(ref.id),
                "channel_id": str(ref.channel.id),
                "fail_if_not_exists": False,
            }
            if ref.guild_id is not None:
                payload["message_reference"]["guild_id"] = str(ref.guild_id)
            if include_referenced:
                payload["referenced_message"] = None if ref.deleted else ref.to_payload(include_referenced=False)
        payload.update(self.extra)
        return payload


@dataclass(eq=False)
class InteractionCallback:
    """What the bot answered to ``POST /interactions/{id}/{token}/callback``."""

    type: int
    data: JSON
    at: float


@dataclass(eq=False)
class FakeInteraction:
    """An interaction the test fired at the bot, and everything the bot did with it."""

    id: int
    token: str
    type: int
    payload: JSON
    user: FakeUser
    channel: FakeChannel
    created_at: float
    #: The initial callback (``None`` until the bot responds).
    callback: InteractionCallback | None = None
    #: The response message: created by callback 4/5, or the clicked message for 6/7.
    original: FakeMessage | None = None
    followups: list[FakeMessage] = field(default_factory=list)
    #: Raw payloads of ``PATCH .../messages/@original`` calls, in order.
    edits: list[JSON] = field(default_factory=list)
    #: For components: the message whose component was used.
    message: FakeMessage | None = None

    @property
    def guild(self) -> FakeGuild | None:
        return self.channel.guild

    @property
    def responded(self) -> bool:
        return self.callback is not None

    @property
    def response_type(self) -> int | None:
        return self.callback.type if self.callback else None

    @property
    def deferred(self) -> bool:
        return self.response_type in (
            CallbackType.DEFERRED_CHANNEL_MESSAGE,
            CallbackType.DEFERRED_UPDATE_MESSAGE,
        )

    @property
    def ephemeral(self) -> bool:
        return self.original is not None and self.original.ephemeral

    @property
    def modal(self) -> JSON | None:
        """The modal the bot opened (callback type 9), if any."""
        if self.callback and self.callback.type == CallbackType.MODAL:
            return self.callback.data
        return None

    @property
    def autocomplete_choices(self) -> list[JSON] | None:
        if self.callback and self.callback.type == CallbackType.AUTOCOMPLETE_RESULT:
            return list(self.callback.data.get("choices", []))
        return None

    @property
    def messages(self) -> list[FakeMessage]:
        """The original response (if it is a message) followed by followups."""
        out = [self.original] if self.original is not None else []
        return out + [m for m in self.followups if m is not self.original]


# ------------------------------------------------------------------- functions


def iter_components(components: Iterable[JSON]) -> Iterable[JSON]:
    """Depth-first walk over nested components (action rows, containers, sections...)."""
    for comp in components:
        yield comp
        for key in ("components", "items"):
            children = comp.get(key)
            if isinstance(children, list):
                yield from iter_components(children)
        for key in ("accessory", "component"):
            child = comp.get(key)
            if isinstance(child, dict):
                yield from iter_components([child])


def emoji_payload(key: str) -> JSON:
    """``"👍"`` -> ``{"id": None, "name": "👍"}``; ``"name:123"`` -> custom emoji."""
    name, sep, emoji_id = key.partition(":")
    if sep and emoji_id.isdigit():
        return {"id": emoji_id, "name": name, "animated": False}
    return {"id": None, "name": key}


def compute_permissions(guild: FakeGuild | None, channel: FakeChannel | None, user_id: int) -> int:
    """Discord's permission algorithm: base role permissions, then channel overwrites."""
    if guild is None:
        return Perm.DM
    if guild.owner_id == user_id:
        return Perm.ALL
    member = guild.members.get(user_id)
    if member is None:
        return 0
    perms = guild.everyone_role.permissions
    for role_id in member.role_ids:
        role = guild.roles.get(role_id)
        if role is not None:
            perms |= role.permissions
    if perms & Perm.ADMINISTRATOR:
        return Perm.ALL
    if channel is None:
        return perms
    by_id = {(o.type, o.id): o for o in channel.overwrites}
    everyone = by_id.get((0, guild.id))
    if everyone is not None:
        perms = (perms & ~everyone.deny) | everyone.allow
    allow = deny = 0
    for role_id in member.role_ids:
        ow = by_id.get((0, role_id))
        if ow is not None:
            allow |= ow.allow
            deny |= ow.deny
    perms = (perms & ~deny) | allow
    member_ow = by_id.get((1, user_id))
    if member_ow is not None:
        perms = (perms & ~member_ow.deny) | member_ow.allow
    if not perms & Perm.VIEW_CHANNEL:
        return 0
    if not perms & Perm.SEND_MESSAGES:
        perms &= ~Perm._NEEDS_SEND
    return perms


def avatar_hash(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def _opt_id(value: int | None) -> str | None:
    return str(value) if value is not None else None


def new_interaction_token() -> str:
    return f"aW50ZXJhY3Rpb24-{secrets.token_urlsafe(24)}"
