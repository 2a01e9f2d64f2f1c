"""A fake Discord (REST API v10 + Gateway + CDN) on 127.0.0.1 for end-to-end bot tests.

The unmodified discord.py 2.x client connects to it after :meth:`FakeDiscordServer.install`
points ``discord.http.Route.BASE``, ``DiscordWebSocket.DEFAULT_GATEWAY`` and
``discord.Asset.BASE`` at it.  The test then builds a small world (guilds, channels,
users), acts as those users (posts messages, runs slash commands, clicks buttons) and
asserts on what the bot did (messages, files, typing, reactions, interaction responses).

Typical use (see :mod:`tests.harness.fixtures` for ready-made fixtures)::

    server = FakeDiscordServer()
    await server.start()
    server.install()
    guild = server.add_guild("Test Guild")
    general = server.add_text_channel(guild, "general")
    alice = server.add_user("alice")
    server.add_member(guild, alice)
    async with running_bot(server, make_bot(server)) as bot:
        await server.post_message(general, alice, "hi", attachments=[("cat.png", png, "image/png")])
        reply = await server.wait_for_message(general)
    server.restore()
    await server.stop()

Fidelity notes (things real Discord does that the harness reproduces on purpose):

* Gateway intents are honoured: no GUILD_MESSAGES intent -> no guild MESSAGE_CREATE; no
  MESSAGE_CONTENT intent -> content/embeds/attachments/components blanked unless the bot
  is mentioned, the message is a DM or the bot wrote it.
* The bot only receives events for channels it can view, and REST calls are checked
  against its computed channel permissions (403 50001 / 50013 like Discord).
* Interactions must be answered within :attr:`FakeDiscordServer.interaction_deadline`
  seconds and only once (10062 / 40060); followups need an initial response (10015); the
  first followup after a deferred "thinking" response edits that placeholder.
* Message validation: empty messages (50006), content > 2000 chars and embed limits
  (50035), files over :attr:`FakeDiscordServer.upload_limit` (40005).

Anything the bot calls that is not implemented answers 404 and is logged at ERROR and
recorded in :attr:`FakeDiscordServer.unhandled_requests` so gaps are visible.
"""

# The wait_* helpers take ``timeout=`` on purpose: it is the natural test-facing API.
# ruff: noqa: ASYNC109

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
import urllib.parse
import warnings
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import discord
import discord.gateway
import discord.http
import yarl
from aiohttp import web

from .discord_gateway import GatewayConnection, GatewayHub, GatewayLogEntry, GatewaySession, Op
from .discord_models import (
    JSON,
    CallbackType,
    ChannelType,
    CommandType,
    FakeAttachment,
    FakeChannel,
    FakeGuild,
    FakeInteraction,
    FakeMember,
    FakeMessage,
    FakeRole,
    FakeUser,
    Intent,
    InteractionCallback,
    InteractionType,
    MessageFlag,
    MessageType,
    OptionType,
    Perm,
    PermissionOverwrite,
    SnowflakeGenerator,
    avatar_hash,
    compute_permissions,
    emoji_payload,
    guess_content_type,
    iter_components,
    new_interaction_token,
    tiny_png,
    utcnow,
)

__all__ = [
    "AttachmentInput",
    "CallbackType",
    "FakeAttachment",
    "FakeChannel",
    "FakeDiscordServer",
    "FakeGuild",
    "FakeInteraction",
    "FakeMember",
    "FakeMessage",
    "FakeRole",
    "FakeUser",
    "GatewayLogEntry",
    "HarnessTimeout",
    "HarnessWarning",
    "Intent",
    "InteractionCallback",
    "Perm",
    "PermissionOverwrite",
    "ReactionEvent",
    "RecordedRequest",
    "TypingEvent",
    "iter_components",
    "tiny_png",
]

log = logging.getLogger("tests.harness.discord_server")

T = TypeVar("T")

#: A file the test uploads as a user: ``(filename, bytes)``, ``(filename, bytes, content_type)``
#: or an existing :class:`FakeAttachment`.
AttachmentInput = tuple[str, bytes] | tuple[str, bytes, str] | FakeAttachment

_MAX_CONTENT = 2000
_MAX_EMBEDS = 10
_EMBED_LIMITS = {"title": 256, "description": 4096, "footer.text": 2048, "author.name": 256}
_API_PREFIX = re.compile(r"^/api/v\d+")
_USER_MENTION = re.compile(r"<@!?(\d+)>")
_ROLE_MENTION = re.compile(r"<@&(\d+)>")


class HarnessTimeout(AssertionError):
    """A ``wait_*`` helper gave up; the message describes what the server saw."""


class HarnessWarning(UserWarning):
    """Emitted at :meth:`FakeDiscordServer.stop` when the bot hit unimplemented routes."""


class _ApiError(Exception):
    def __init__(self, status: int, code: int, message: str, errors: JSON | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.errors = errors


@dataclass(frozen=True)
class TypingEvent:
    channel_id: int
    user_id: int
    at: float


@dataclass(frozen=True)
class ReactionEvent:
    """A reaction added/removed by the bot (via REST) or by a test user."""

    channel_id: int
    message_id: int
    emoji: str
    user_id: int
    added: bool
    at: float


@dataclass
class RecordedRequest:
    """One HTTP request the bot made (path is relative to ``/api/v10``)."""

    method: str
    path: str
    query: dict[str, str]
    body: Any
    files: list[tuple[str, bytes]] = field(default_factory=list)
    status: int = 0


@dataclass
class _InjectedFailure:
    method: str
    pattern: re.Pattern[str]
    status: int
    code: int
    message: str
    remaining: int


@dataclass
class _Upload:
    index: int
    filename: str
    data: bytes


class _Params(dict[str, str]):
    """URL parameters of a matched route, plus the request's record."""

    record: RecordedRequest


@dataclass
class _Route:
    method: str
    pattern: re.Pattern[str]
    handler: Callable[[web.Request, dict[str, str]], Awaitable[web.StreamResponse]]
    auth: bool


def _json_response(data: Any, status: int = 200) -> web.Response:
    # discord.py checks ``content-type == 'application/json'`` exactly, so no charset.
    return web.Response(status=status, body=json.dumps(data).encode(), headers={"Content-Type": "application/json"})


def _no_content() -> web.Response:
    return web.Response(status=204)


def _id_of(obj: Any) -> int:
    if isinstance(obj, int):
        return obj
    if isinstance(obj, FakeMember):
        return obj.user.id
    return int(obj.id)


class FakeDiscordServer:
    """Fake Discord API + gateway + CDN for one bot application.

    Construction is cheap and synchronous; call :meth:`start` (binds ``127.0.0.1:0``)
    before connecting a bot, and :meth:`install` to point discord.py at it.
    """

    def __init__(
        self,
        *,
        token: str = "test-token",
        bot_name: str = "ImageBot",
        host: str = "127.0.0.1",
        shard_count: int = 1,
    ) -> None:
        self.host = host
        self.port = 0
        self.token = token
        #: Shard count announced by ``GET /gateway/bot`` (AutoShardedBot).
        self.shard_count = shard_count
        #: Seconds the bot has to answer an interaction before it is "unknown" (10062).
        self.interaction_deadline = 3.0
        #: Per-file upload size limit in bytes (413 / 40005 above it).
        self.upload_limit = 10 * 1024 * 1024
        #: When True, slash-command helpers require the command to have been synced.
        self.require_synced_commands = True
        #: When True, gateway events respect the bot's intents like Discord does.
        self.enforce_intents = True
        #: Whether the bot's own (non-ephemeral) messages come back as MESSAGE_CREATE.
        self.echo_bot_messages = True

        self.ids = SnowflakeGenerator()
        self.users: dict[int, FakeUser] = {}
        self.guilds: dict[int, FakeGuild] = {}
        self.channels: dict[int, FakeChannel] = {}
        self.messages: dict[int, FakeMessage] = {}
        self.interactions: dict[int, FakeInteraction] = {}
        self._interactions_by_token: dict[str, FakeInteraction] = {}
        self._channel_log: dict[int, list[FakeMessage]] = {}
        self._dm_by_user: dict[int, FakeChannel] = {}

        #: Registered application commands: ``None`` -> global, else guild id.
        self.commands: dict[int | None, list[JSON]] = {}
        #: Every bulk command sync as ``(guild_id or None, payload)``.
        self.command_syncs: list[tuple[int | None, list[JSON]]] = []
        #: Every message the bot created (REST, interaction responses, followups), in order.
        self.sent_messages: list[FakeMessage] = []
        self.typing_events: list[TypingEvent] = []
        self.reactions: list[ReactionEvent] = []
        self.requests: list[RecordedRequest] = []
        self.unhandled_requests: list[RecordedRequest] = []
        self.errors: list[str] = []
        #: Served at ``/cdn/<key>``: key -> (bytes, content type).
        self.cdn: dict[str, tuple[bytes, str]] = {}
        #: When set, CDN downloads are answered only once this event is set (``cdn_waiting`` counts
        #: the downloads held): a test can act while the bot is between "download" and "stored".
        self.cdn_hold: asyncio.Event | None = None
        self.cdn_waiting = 0

        self.bot_user = self._new_user(bot_name, bot=True)
        self.application_id = self.bot_user.id
        #: The application's owner (``commands.is_owner``); also owns guilds by default.
        self.app_owner = self._new_user("owner")

        self.gateway = GatewayHub(self)
        self._failures: list[_InjectedFailure] = []
        self._mark = 0
        self._mark_time = 0.0
        self._changed = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._saved: tuple[str, yarl.URL, str] | None = None
        self._routes = self._build_routes()

    # ================================================================ lifecycle
    async def start(self, port: int = 0) -> FakeDiscordServer:
        """Bind and serve; returns self so ``server = await FakeDiscordServer().start()`` works."""
        app = web.Application(client_max_size=256 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, port)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        log.info("fake discord listening on %s", self.base_url)
        return self

    async def stop(self) -> None:
        """Close gateway sockets and the HTTP server; warns about unimplemented routes."""
        await self.gateway.close_all()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self.unhandled_requests:
            routes = sorted({f"{r.method} {r.path}" for r in self.unhandled_requests})
            warnings.warn(
                f"bot called routes the fake Discord does not implement: {routes}",
                HarnessWarning,
                stacklevel=2,
            )
        if self.errors:
            warnings.warn(f"fake Discord handler errors: {self.errors}", HarnessWarning, stacklevel=2)

    async def __aenter__(self) -> FakeDiscordServer:
        await self.start()
        self.install()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.restore()
        await self.stop()

    def install(self) -> None:
        """Point discord.py (REST, gateway, CDN assets) at this server. Undo with :meth:`restore`."""
        if self._saved is None:
            self._saved = (
                discord.http.Route.BASE,
                discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY,
                discord.Asset.BASE,
            )
        discord.http.Route.BASE = self.api_base
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(self.gateway_url)
        discord.Asset.BASE = self.cdn_base

    def restore(self) -> None:
        if self._saved is not None:
            (
                discord.http.Route.BASE,
                discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY,
                discord.Asset.BASE,
            ) = self._saved
            self._saved = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def api_base(self) -> str:
        return f"{self.base_url}/api/v10"

    @property
    def gateway_url(self) -> str:
        return f"ws://{self.host}:{self.port}/gateway/"

    @property
    def resume_gateway_url(self) -> str:
        return f"ws://{self.host}:{self.port}/gateway-resume/"

    @property
    def cdn_base(self) -> str:
        return f"{self.base_url}/cdn"

    # ============================================================ world building
    def _new_user(self, username: str, *, bot: bool = False, global_name: str | None = None) -> FakeUser:
        user = FakeUser(id=self.ids.next(), username=username, global_name=global_name, bot=bot)
        self.users[user.id] = user
        return user

    def add_user(
        self,
        username: str,
        *,
        global_name: str | None = None,
        bot: bool = False,
        avatar: bytes | None = None,
        accepts_dms: bool = True,
    ) -> FakeUser:
        """Create a user. ``avatar`` bytes are served at the user's avatar URL."""
        user = self._new_user(username, bot=bot, global_name=global_name)
        user.accepts_dms = accepts_dms
        if avatar is not None:
            user.avatar = avatar_hash(avatar)
            self.cdn[f"avatars/{user.id}/{user.avatar}.png"] = (avatar, guess_content_type("a.png", avatar))
        return user

    def add_guild(
        self,
        name: str = "Test Guild",
        *,
        owner: FakeUser | None = None,
        everyone_permissions: int = Perm.DEFAULT_EVERYONE,
        bot_permissions: int = Perm.DEFAULT_BOT,
        with_bot: bool = True,
    ) -> FakeGuild:
        """Create a guild with an @everyone role, its owner and (by default) the bot as members.

        The bot gets a managed role with ``bot_permissions``.  If a bot is already
        connected, it receives GUILD_CREATE as if it had just been invited.
        """
        gid = self.ids.next()
        owner = owner or self.app_owner
        guild = FakeGuild(id=gid, name=name, owner_id=owner.id)
        guild.roles[gid] = FakeRole(id=gid, guild_id=gid, name="@everyone", permissions=everyone_permissions)
        guild.members[owner.id] = FakeMember(user=owner, guild_id=gid)
        if with_bot:
            role = FakeRole(
                id=self.ids.next(),
                guild_id=gid,
                name=self.bot_user.username,
                permissions=bot_permissions,
                position=1,
                managed=True,
                bot_id=self.bot_user.id,
            )
            guild.roles[role.id] = role
            guild.bot_role_id = role.id
            guild.members[self.bot_user.id] = FakeMember(user=self.bot_user, guild_id=gid, role_ids=[role.id])
        self.guilds[gid] = guild
        if with_bot:
            self._dispatch_guild_create(guild)
        return guild

    def add_role(
        self,
        guild: FakeGuild,
        name: str,
        *,
        permissions: int = 0,
        members: Iterable[FakeUser | FakeMember] = (),
    ) -> FakeRole:
        role = FakeRole(
            id=self.ids.next(),
            guild_id=guild.id,
            name=name,
            permissions=permissions,
            position=len(guild.roles),
        )
        guild.roles[role.id] = role
        self._dispatch_guild_event(guild, "GUILD_ROLE_CREATE", {"guild_id": str(guild.id), "role": role.to_payload()})
        for member in members:
            self.set_member_roles(guild, member, [*self._member(guild, member).role_ids, role.id])
        return role

    def add_member(
        self,
        guild: FakeGuild,
        user: FakeUser,
        *,
        roles: Iterable[FakeRole] = (),
        nick: str | None = None,
    ) -> FakeMember:
        member = FakeMember(user=user, guild_id=guild.id, role_ids=[r.id for r in roles], nick=nick)
        guild.members[user.id] = member
        self._dispatch_guild_event(
            guild,
            "GUILD_MEMBER_ADD",
            {**member.to_payload(), "guild_id": str(guild.id)},
            intent=Intent.GUILD_MEMBERS,
        )
        return member

    def set_member_roles(
        self, guild: FakeGuild, member: FakeUser | FakeMember, roles: Iterable[FakeRole | int]
    ) -> FakeMember:
        target = self._member(guild, member)
        target.role_ids = [_id_of(r) for r in roles]
        self._dispatch_guild_event(
            guild,
            "GUILD_MEMBER_UPDATE",
            {**target.to_payload(), "guild_id": str(guild.id)},
            intent=Intent.GUILD_MEMBERS,
        )
        return target

    def add_text_channel(
        self,
        guild: FakeGuild,
        name: str,
        *,
        nsfw: bool = False,
        topic: str | None = None,
        private_to: Iterable[FakeUser | FakeMember | FakeRole] | None = None,
        include_bot: bool = True,
        overwrites: Iterable[PermissionOverwrite] = (),
    ) -> FakeChannel:
        """Create a text channel.

        ``private_to`` makes it private: @everyone is denied VIEW_CHANNEL and each listed
        user/role is allowed; the bot is allowed too unless ``include_bot=False``.
        ``overwrites`` adds raw overwrites on top.
        """
        channel = FakeChannel(
            id=self.ids.next(),
            type=ChannelType.GUILD_TEXT,
            name=name,
            guild=guild,
            position=len(guild.channels),
            nsfw=nsfw,
            topic=topic,
        )
        if private_to is not None:
            channel.overwrites.append(PermissionOverwrite(id=guild.id, type=0, deny=Perm.VIEW_CHANNEL))
            allowed = list(private_to)
            if include_bot:
                allowed.append(self.bot_user)
            for who in allowed:
                kind = 0 if isinstance(who, FakeRole) else 1
                channel.overwrites.append(PermissionOverwrite(id=_id_of(who), type=kind, allow=Perm.VIEW_CHANNEL))
        channel.overwrites.extend(overwrites)
        guild.channels[channel.id] = channel
        self.channels[channel.id] = channel
        self._dispatch_guild_event(guild, "CHANNEL_CREATE", channel.to_payload())
        return channel

    def update_channel(
        self,
        channel: FakeChannel,
        *,
        name: str | None = None,
        nsfw: bool | None = None,
        topic: str | None = None,
        overwrites: Iterable[PermissionOverwrite] | None = None,
    ) -> FakeChannel:
        """Change a guild channel and send CHANNEL_UPDATE."""
        if name is not None:
            channel.name = name
        if nsfw is not None:
            channel.nsfw = nsfw
        if topic is not None:
            channel.topic = topic
        if overwrites is not None:
            channel.overwrites = list(overwrites)
        if channel.guild is not None:
            self._dispatch_guild_event(channel.guild, "CHANNEL_UPDATE", channel.to_payload())
        return channel

    def dm_channel(self, user: FakeUser) -> FakeChannel:
        """The DM channel between the bot and ``user`` (created on first use)."""
        channel = self._dm_by_user.get(user.id)
        if channel is None:
            channel = FakeChannel(id=self.ids.next(), type=ChannelType.DM, recipient=user)
            self._dm_by_user[user.id] = channel
            self.channels[channel.id] = channel
        return channel

    def set_app_owner(self, user: FakeUser) -> None:
        """Make ``user`` the application owner (before the bot logs in)."""
        self.app_owner = user

    def permissions_for(self, channel: FakeChannel, user: FakeUser | FakeMember | int) -> int:
        """Computed permission bits of ``user`` in ``channel`` (see :class:`Perm`)."""
        return compute_permissions(channel.guild, channel, _id_of(user))

    def bot_member(self, guild: FakeGuild) -> FakeMember:
        return guild.members[self.bot_user.id]

    # ============================================================ user actions
    async def post_message(
        self,
        channel: FakeChannel,
        author: FakeUser,
        content: str = "",
        *,
        attachments: Sequence[AttachmentInput] = (),
        embeds: Sequence[JSON] = (),
        reference: FakeMessage | None = None,
        mentions: Iterable[FakeUser] = (),
        components: Sequence[JSON] = (),
        tts: bool = False,
    ) -> FakeMessage:
        """``author`` posts a message; the bot gets MESSAGE_CREATE (subject to intents).

        ``<@id>`` / ``<@&id>`` mentions in ``content`` are parsed like Discord does;
        ``mentions`` adds more users.  Raises :class:`PermissionError` if the author
        could not post there (so test setups stay honest).
        """
        self._check_user_can_post(channel, author, with_files=bool(attachments))
        msg = FakeMessage(
            id=self.ids.next(),
            channel=channel,
            author=author,
            content=content,
            embeds=[dict(e) for e in embeds],
            components=[dict(c) for c in components],
            tts=tts,
            reference=reference,
            type=MessageType.REPLY if reference is not None else MessageType.DEFAULT,
        )
        msg.attachments = [self._user_attachment(channel, a) for a in attachments]
        self._apply_mentions(msg, content, extra=mentions)
        if reference is not None and reference.author not in msg.mentions:
            msg.mentions.append(reference.author)
        self._store_message(msg)
        self._mark_action()
        self._dispatch_message("MESSAGE_CREATE", msg)
        return msg

    async def post_dm(
        self,
        author: FakeUser,
        content: str = "",
        *,
        attachments: Sequence[AttachmentInput] = (),
        embeds: Sequence[JSON] = (),
        reference: FakeMessage | None = None,
    ) -> FakeMessage:
        """``author`` sends the bot a direct message (MESSAGE_CREATE without guild_id)."""
        return await self.post_message(
            self.dm_channel(author),
            author,
            content,
            attachments=attachments,
            embeds=embeds,
            reference=reference,
        )

    async def edit_message(
        self,
        message: FakeMessage,
        *,
        content: str | None = None,
        embeds: Sequence[JSON] | None = None,
        attachments: Sequence[AttachmentInput] | None = None,
    ) -> FakeMessage:
        """Edit a message (as its author) and send MESSAGE_UPDATE."""
        if content is not None:
            message.content = content
            message.mentions = []
            self._apply_mentions(message, content)
        if embeds is not None:
            message.embeds = [dict(e) for e in embeds]
        if attachments is not None:
            message.attachments = [self._user_attachment(message.channel, a) for a in attachments]
        message.edited_at = utcnow()
        message.edit_history.append({"content": content, "embeds": embeds})
        self._mark_action()
        self._dispatch_message("MESSAGE_UPDATE", message)
        return message

    async def delete_message(self, message: FakeMessage) -> None:
        """Delete a message and send MESSAGE_DELETE."""
        self._delete(message)
        self._mark_action()

    async def bulk_delete_messages(self, messages: Sequence[FakeMessage]) -> None:
        """Delete several messages of one channel at once (MESSAGE_DELETE_BULK)."""
        if not messages:
            return
        channel = messages[0].channel
        for msg in messages:
            if msg.channel is not channel:
                raise ValueError("bulk delete needs messages from a single channel")
            msg.deleted = True
        data: JSON = {"ids": [str(m.id) for m in messages], "channel_id": str(channel.id)}
        if channel.guild is not None:
            data["guild_id"] = str(channel.guild.id)
        self._dispatch_channel_event(channel, "MESSAGE_DELETE_BULK", data)
        self._mark_action()
        self._bump()

    async def add_reaction(self, message: FakeMessage, user: FakeUser, emoji: str) -> None:
        """``user`` reacts to ``message`` (MESSAGE_REACTION_ADD). Custom emoji: ``"name:id"``."""
        users = message.reactions.setdefault(emoji, [])
        if user.id not in users:
            users.append(user.id)
        self.reactions.append(ReactionEvent(message.channel.id, message.id, emoji, user.id, True, time.monotonic()))
        self._dispatch_reaction("MESSAGE_REACTION_ADD", message, user, emoji)
        self._mark_action()

    async def remove_reaction(self, message: FakeMessage, user: FakeUser, emoji: str) -> None:
        users = message.reactions.get(emoji, [])
        if user.id in users:
            users.remove(user.id)
        self.reactions.append(ReactionEvent(message.channel.id, message.id, emoji, user.id, False, time.monotonic()))
        self._dispatch_reaction("MESSAGE_REACTION_REMOVE", message, user, emoji)
        self._mark_action()

    # ------------------------------------------------------------ interactions
    async def invoke_slash_command(
        self,
        channel: FakeChannel,
        user: FakeUser,
        name: str,
        options: Mapping[str, Any] | None = None,
        *,
        attachments: Mapping[str, AttachmentInput] | None = None,
        locale: str = "en-US",
    ) -> FakeInteraction:
        """``user`` runs ``/name`` in ``channel`` (INTERACTION_CREATE type 2).

        ``name`` may contain subcommands: ``"vibe compare"``.  Option values are typed
        from the synced command definition: users/members, channels, roles and
        attachments (``(filename, bytes[, content_type])``) are put in ``resolved``.
        ``attachments`` is a convenience alias merged into ``options``.
        Returns immediately; use :meth:`wait_for_response` & co. to observe the bot.
        """
        all_options = dict(options or {})
        all_options.update(attachments or {})
        path = name.split()
        scope, command = self._find_command_for(path[0], channel, CommandType.CHAT_INPUT, all_options)
        resolved: JSON = {}
        data: JSON = {
            "id": command["id"],
            "name": command["name"],
            "type": CommandType.CHAT_INPUT,
            "options": self._build_options(command, path[1:], all_options, channel, user, resolved),
        }
        if resolved:
            data["resolved"] = resolved
        if scope is not None:
            data["guild_id"] = str(scope)
        return self._fire_interaction(InteractionType.APPLICATION_COMMAND, channel, user, data, locale=locale)

    async def invoke_message_command(
        self, channel: FakeChannel, user: FakeUser, name: str, target: FakeMessage
    ) -> FakeInteraction:
        """``user`` runs the message context-menu command ``name`` on ``target``."""
        scope, command = self._find_command_for(name, channel, CommandType.MESSAGE, {})
        data: JSON = {
            "id": command["id"],
            "name": command["name"],
            "type": CommandType.MESSAGE,
            "target_id": str(target.id),
            "resolved": {"messages": {str(target.id): target.to_payload()}},
        }
        if scope is not None:
            data["guild_id"] = str(scope)
        return self._fire_interaction(InteractionType.APPLICATION_COMMAND, channel, user, data)

    async def invoke_user_command(
        self, channel: FakeChannel, user: FakeUser, name: str, target: FakeUser
    ) -> FakeInteraction:
        """``user`` runs the user context-menu command ``name`` on ``target``."""
        scope, command = self._find_command_for(name, channel, CommandType.USER, {})
        resolved: JSON = {}
        self._resolve_user(target, channel, resolved)
        data: JSON = {
            "id": command["id"],
            "name": command["name"],
            "type": CommandType.USER,
            "target_id": str(target.id),
            "resolved": resolved,
        }
        if scope is not None:
            data["guild_id"] = str(scope)
        return self._fire_interaction(InteractionType.APPLICATION_COMMAND, channel, user, data)

    async def invoke_autocomplete(
        self,
        channel: FakeChannel,
        user: FakeUser,
        name: str,
        options: Mapping[str, Any],
        focused: str,
    ) -> FakeInteraction:
        """Autocomplete request for option ``focused`` (INTERACTION_CREATE type 4)."""
        path = name.split()
        scope, command = self._find_command_for(path[0], channel, CommandType.CHAT_INPUT, options)
        resolved: JSON = {}
        built = self._build_options(command, path[1:], options, channel, user, resolved, check_required=False)
        leaf = built
        while leaf and leaf[0]["type"] in (OptionType.SUB_COMMAND, OptionType.SUB_COMMAND_GROUP):
            leaf = leaf[0]["options"]
        for opt in leaf:
            if opt["name"] == focused:
                opt["focused"] = True
                opt["value"] = str(opt["value"]) if opt["type"] == OptionType.STRING else opt["value"]
        data: JSON = {"id": command["id"], "name": command["name"], "type": 1, "options": built}
        if scope is not None:
            data["guild_id"] = str(scope)
        return self._fire_interaction(InteractionType.AUTOCOMPLETE, channel, user, data)

    async def click_button(self, message: FakeMessage, custom_id: str, user: FakeUser) -> FakeInteraction:
        """``user`` clicks the button ``custom_id`` on ``message`` (type 3 interaction)."""
        component = self._component(message, custom_id)
        if component.get("type") != 2:
            raise ValueError(f"component {custom_id!r} is not a button: {component}")
        if component.get("disabled"):
            raise ValueError(f"button {custom_id!r} is disabled; a user cannot click it")
        data = {"custom_id": custom_id, "component_type": 2}
        return self._fire_interaction(InteractionType.MESSAGE_COMPONENT, message.channel, user, data, message=message)

    async def choose_select(
        self,
        message: FakeMessage,
        custom_id: str,
        user: FakeUser,
        values: Sequence[str | FakeUser | FakeRole | FakeChannel],
    ) -> FakeInteraction:
        """``user`` picks ``values`` in the select menu ``custom_id`` on ``message``."""
        component = self._component(message, custom_id)
        ctype = int(component.get("type", 3))
        resolved: JSON = {}
        raw: list[str] = []
        for value in values:
            if isinstance(value, str):
                raw.append(value)
            else:
                raw.append(str(value.id))
                self._resolve_value(value, message.channel, resolved)
        if ctype == 3:
            allowed = {o.get("value") for o in component.get("options", [])}
            unknown = [v for v in raw if v not in allowed]
            if unknown:
                raise ValueError(f"values {unknown} are not options of select {custom_id!r}")
        data: JSON = {"custom_id": custom_id, "component_type": ctype, "values": raw}
        if resolved:
            data["resolved"] = resolved
        return self._fire_interaction(InteractionType.MESSAGE_COMPONENT, message.channel, user, data, message=message)

    async def submit_modal(
        self, interaction: FakeInteraction, values: Mapping[str, str | Sequence[str]]
    ) -> FakeInteraction:
        """Submit the modal the bot opened in answer to ``interaction`` (type 5)."""
        modal = interaction.modal
        if modal is None:
            raise ValueError("the bot did not answer this interaction with a modal")

        def fill(comp: JSON) -> JSON:
            if comp.get("type") == 1:
                return {"type": 1, "components": [fill(c) for c in comp.get("components", [])]}
            if comp.get("type") == 18:
                return {"type": 18, "id": comp.get("id"), "component": fill(comp["component"])}
            out: JSON = {"type": comp.get("type"), "id": comp.get("id")}
            cid = comp.get("custom_id")
            if cid is None:
                return out
            out["custom_id"] = cid
            value = values.get(cid, comp.get("value", ""))
            if comp.get("type") == 4:
                out["value"] = value if isinstance(value, str) else ",".join(value)
            else:
                out["values"] = [value] if isinstance(value, str) else list(value)
            return out

        data = {"custom_id": modal["custom_id"], "components": [fill(c) for c in modal.get("components", [])]}
        return self._fire_interaction(
            InteractionType.MODAL_SUBMIT,
            interaction.channel,
            interaction.user,
            data,
            message=interaction.message,
        )

    # ============================================================ gateway control
    async def drop_gateway(
        self,
        *,
        resume: bool = True,
        code: int = 4000,
        abrupt: bool = False,
        wait: bool = True,
        timeout: float = 10.0,
        shard_id: int | None = None,
    ) -> None:
        """Disconnect the bot's gateway socket(s) from the server side.

        ``resume=True`` keeps the session so discord.py RESUMEs and gets the missed
        events replayed; ``resume=False`` invalidates it first so the client is told
        INVALID_SESSION and re-IDENTIFYs.  ``abrupt=True`` kills the TCP connection
        without a close frame.  With ``wait`` it returns once every dropped shard is
        connected again (RESUMED or READY sent).
        """
        before = len(self.gateway.log)
        dropped = await self.gateway.drop(code=code, abrupt=abrupt, invalidate=not resume, shard_id=shard_id)
        if not dropped:
            raise RuntimeError("drop_gateway: no connected gateway session to drop")
        if not wait:
            return
        wanted = {s.shard_id for s in dropped}
        kind = "resume" if resume else "identify"

        def reconnected() -> bool:
            done = {e.shard_id for e in self.gateway.log[before:] if e.kind == kind}
            return wanted <= done

        await self.wait_until(reconnected, timeout=timeout, what=f"gateway {kind} after drop")

    def send_gateway_reconnect(self, shard_id: int | None = None) -> None:
        """Send op 7 RECONNECT: discord.py closes and RESUMEs."""
        self.gateway.send_op(Op.RECONNECT, None, shard_id=shard_id)

    async def wait_for_gateway(self, *, sessions: int = 1, timeout: float = 5.0) -> list[GatewaySession]:
        """Wait until ``sessions`` gateway sessions are connected."""
        return await self.wait_until(
            lambda: (s := self.gateway.connected_sessions()) and len(s) >= sessions and s,
            timeout=timeout,
            what=f"{sessions} connected gateway session(s)",
        )

    # ================================================================= waiting
    def _bump(self) -> None:
        ev, self._changed = self._changed, asyncio.Event()
        ev.set()

    def _mark_action(self) -> None:
        self._mark = self.ids.next()
        self._mark_time = time.monotonic()

    async def wait_until(
        self,
        predicate: Callable[[], T],
        *,
        timeout: float = 5.0,
        what: str = "condition",
        poll: float = 0.05,
    ) -> T:
        """Wait until ``predicate()`` is truthy and return its value.

        Re-evaluated on every server-side change and at least every ``poll`` seconds
        (so predicates on bot state work too).  Raises :class:`HarnessTimeout`.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            result = predicate()
            if result:
                return result
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise HarnessTimeout(f"timed out after {timeout}s waiting for {what}\n{self.describe()}")
            event = self._changed
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), min(remaining, poll))

    def _bot_messages_after(
        self,
        channel: FakeChannel | int | None,
        after: FakeMessage | int | None,
        predicate: Callable[[FakeMessage], bool] | None,
    ) -> list[FakeMessage]:
        floor = self._mark if after is None else _id_of(after)
        cid = None if channel is None else _id_of(channel)
        return [
            m
            for m in self.sent_messages
            if m.id > floor
            and not m.loading
            and not m.deleted
            and (cid is None or m.channel.id == cid)
            and (predicate is None or predicate(m))
        ]

    async def wait_for_message(
        self,
        channel: FakeChannel | int | None = None,
        *,
        predicate: Callable[[FakeMessage], bool] | None = None,
        after: FakeMessage | int | None = None,
        timeout: float = 5.0,
    ) -> FakeMessage:
        """The first message the bot created (REST or interaction) since the test's last
        action (or since ``after``, a message/snowflake), optionally in ``channel`` and
        matching ``predicate``.  Deferred "thinking" placeholders only count once edited.
        """
        found = await self.wait_until(
            lambda: self._bot_messages_after(channel, after, predicate),
            timeout=timeout,
            what=f"a bot message in channel {channel if channel is None else _id_of(channel)}",
        )
        return found[0]

    async def wait_for_messages(
        self,
        count: int,
        channel: FakeChannel | int | None = None,
        *,
        predicate: Callable[[FakeMessage], bool] | None = None,
        after: FakeMessage | int | None = None,
        timeout: float = 5.0,
    ) -> list[FakeMessage]:
        found = await self.wait_until(
            lambda: (m := self._bot_messages_after(channel, after, predicate)) and len(m) >= count and m,
            timeout=timeout,
            what=f"{count} bot messages",
        )
        return found[:count]

    async def ensure_no_message(
        self,
        channel: FakeChannel | int | None = None,
        *,
        within: float = 0.3,
        predicate: Callable[[FakeMessage], bool] | None = None,
    ) -> None:
        """Assert the bot posts nothing (matching) for ``within`` seconds after the last action."""
        floor = self._mark
        await asyncio.sleep(within)
        extra = self._bot_messages_after(channel, floor, predicate)
        if extra:
            raise AssertionError(f"bot unexpectedly sent: {[m.all_text() or m.files for m in extra]}")

    async def wait_for_response(self, interaction: FakeInteraction, *, timeout: float = 5.0) -> InteractionCallback:
        """Wait for the bot's initial interaction callback."""
        return await self.wait_until(
            lambda: interaction.callback, timeout=timeout, what=f"a response to interaction {interaction.id}"
        )

    async def wait_for_followup(
        self, interaction: FakeInteraction, count: int = 1, *, timeout: float = 5.0
    ) -> FakeMessage:
        """Wait until the bot sent ``count`` followups; returns the ``count``-th."""
        await self.wait_until(lambda: len(interaction.followups) >= count, timeout=timeout, what=f"{count} followup(s)")
        return interaction.followups[count - 1]

    async def wait_for_edit(self, interaction: FakeInteraction, count: int = 1, *, timeout: float = 5.0) -> FakeMessage:
        """Wait until the original response was edited ``count`` times; returns it."""
        await self.wait_until(
            lambda: len(interaction.edits) >= count and interaction.original is not None,
            timeout=timeout,
            what=f"{count} edit(s) of the original response",
        )
        assert interaction.original is not None
        return interaction.original

    async def wait_for_typing(self, channel: FakeChannel, *, timeout: float = 5.0) -> TypingEvent:
        """The first typing indicator the bot sent in ``channel`` since the test's last action."""
        floor = self._mark_time
        found = await self.wait_until(
            lambda: [t for t in self.typing_events if t.channel_id == channel.id and t.at >= floor],
            timeout=timeout,
            what=f"typing in {channel.name or channel.id}",
        )
        return found[0]

    def describe(self) -> str:
        """Human summary of recent activity (used in timeout messages)."""
        lines = ["fake Discord recent activity:"]
        for m in self.sent_messages[-8:]:
            lines.append(
                f"  bot msg {m.id} in #{m.channel.name or m.channel.id}: {m.all_text()[:120]!r}"
                f" files={list(m.files)} flags={m.flags}"
            )
        for r in self.requests[-8:]:
            lines.append(f"  {r.status} {r.method} {r.path}")
        for r in self.unhandled_requests:
            lines.append(f"  UNHANDLED {r.method} {r.path}")
        for e in self.errors:
            lines.append(f"  ERROR {e}")
        lines.append(f"  gateway: {[f'{e.kind}:{e.detail}' for e in self.gateway.log[-6:]]}")
        return "\n".join(lines)

    # ================================================================= queries
    def history(self, channel: FakeChannel) -> list[FakeMessage]:
        """Visible messages of a channel, oldest first (excludes deleted/ephemeral)."""
        return [m for m in self._channel_log.get(channel.id, []) if not m.deleted and not m.ephemeral]

    def bot_messages(self, channel: FakeChannel | None = None) -> list[FakeMessage]:
        return [m for m in self.sent_messages if channel is None or m.channel is channel]

    def registered_commands(self, guild: FakeGuild | None = None) -> list[JSON]:
        """Commands synced globally (``guild=None``) or for ``guild``."""
        return list(self.commands.get(guild.id if guild else None, []))

    def command_names(self, guild: FakeGuild | None = None) -> set[str]:
        return {c["name"] for c in self.registered_commands(guild)}

    def find_command(self, name: str, guild: FakeGuild | None = None, *, type: int = 1) -> JSON:
        """A registered command by name (guild commands first, then global)."""
        scopes: list[int | None] = [guild.id] if guild else []
        scopes.append(None)
        for scope in scopes:
            for cmd in self.commands.get(scope, []):
                if cmd["name"] == name and int(cmd.get("type", 1)) == type:
                    return cmd
        known = sorted(f"{c['name']}(type {c.get('type', 1)})" for s in scopes for c in self.commands.get(s, []))
        raise LookupError(f"command {name!r} (type {type}) is not registered; registered: {known}")

    def requests_to(self, method: str, path_regex: str) -> list[RecordedRequest]:
        pattern = re.compile(path_regex)
        return [r for r in self.requests if r.method == method and pattern.search(r.path)]

    def fail_next(
        self,
        method: str,
        path_regex: str,
        *,
        status: int = 500,
        code: int = 0,
        message: str = "injected failure",
        times: int = 1,
    ) -> None:
        """Make the next ``times`` matching REST calls fail (path relative to /api/v10).

        Note: discord.py retries 500/502/504 with sleeps of 1, 3, 5... seconds.
        """
        self._failures.append(_InjectedFailure(method.upper(), re.compile(path_regex), status, code, message, times))

    # ========================================================== payload builders
    def _ready_payload(self, session: GatewaySession, guilds: Sequence[FakeGuild]) -> JSON:
        me = self.bot_user.to_payload()
        me.update({"verified": True, "mfa_enabled": False, "locale": "en-US", "flags": 0, "email": None})
        return {
            "v": 10,
            "user": me,
            "guilds": [{"id": str(g.id), "unavailable": True} for g in guilds],
            "session_id": session.session_id,
            "session_type": "normal",
            "resume_gateway_url": self.resume_gateway_url,
            "shard": [session.shard_id, session.shard_count],
            "application": {"id": str(self.application_id), "flags": self._application_flags()},
            "private_channels": [],
            "relationships": [],
            "presences": [],
            "user_settings": {},
            "guild_join_requests": [],
            "geo_ordered_rtc_regions": [],
            "_trace": ["fake-discord"],
        }

    def _guild_create_payload(self, guild: FakeGuild, session: GatewaySession) -> JSON:
        members = None
        if not session.has_intent(Intent.GUILD_MEMBERS):
            members = [m for uid, m in guild.members.items() if uid == self.bot_user.id]
        return guild.to_payload(members=members)

    @staticmethod
    def _application_flags() -> int:
        # GATEWAY_PRESENCE | GATEWAY_GUILD_MEMBERS | GATEWAY_MESSAGE_CONTENT (verified-app variants)
        return (1 << 12) | (1 << 14) | (1 << 18)

    def _application_payload(self) -> JSON:
        return {
            "id": str(self.application_id),
            "name": self.bot_user.username,
            "icon": None,
            "description": "fake application",
            "summary": "",
            "type": None,
            "rpc_origins": [],
            "bot_public": True,
            "bot_require_code_grant": False,
            "bot": self.bot_user.to_payload(),
            "owner": self.app_owner.to_payload(),
            "team": None,
            "verify_key": "0" * 64,
            "flags": self._application_flags(),
            "tags": [],
            "redirect_uris": [],
            "interactions_endpoint_url": None,
            "approximate_guild_count": len(self.guilds),
            "integration_types_config": {"0": {}},
        }

    # ============================================================ dispatch helpers
    def _bot_can_view(self, channel: FakeChannel) -> bool:
        if channel.is_dm:
            return True
        return bool(self.permissions_for(channel, self.bot_user) & Perm.VIEW_CHANNEL)

    def _content_visible(self, session: GatewaySession, msg: FakeMessage) -> bool:
        return (
            not self.enforce_intents
            or session.has_intent(Intent.MESSAGE_CONTENT)
            or msg.author.id == self.bot_user.id
            or msg.channel.is_dm
            or any(u.id == self.bot_user.id for u in msg.mentions)
        )

    def _channel_intent(self, channel: FakeChannel, *, reactions: bool = False) -> int:
        if channel.is_dm:
            return Intent.DIRECT_MESSAGE_REACTIONS if reactions else Intent.DIRECT_MESSAGES
        return Intent.GUILD_MESSAGE_REACTIONS if reactions else Intent.GUILD_MESSAGES

    def _dispatch_message(self, event: str, msg: FakeMessage) -> None:
        if msg.ephemeral:
            return
        if msg.author.id == self.bot_user.id and not self.echo_bot_messages:
            return
        channel = msg.channel

        def factory(session: GatewaySession) -> JSON | None:
            if self.enforce_intents and not session.has_intent(self._channel_intent(channel)):
                return None
            if not self._bot_can_view(channel):
                return None
            payload = msg.to_payload()
            if not self._content_visible(session, msg):
                payload.update({"content": "", "embeds": [], "attachments": [], "components": []})
                payload.pop("poll", None)
            return payload

        self.gateway.dispatch(event, factory, guild_id=channel.guild_id)
        self._bump()

    def _dispatch_channel_event(self, channel: FakeChannel, event: str, data: JSON, *, reactions: bool = False) -> None:
        def factory(session: GatewaySession) -> JSON | None:
            if self.enforce_intents and not session.has_intent(self._channel_intent(channel, reactions=reactions)):
                return None
            return data if self._bot_can_view(channel) else None

        self.gateway.dispatch(event, factory, guild_id=channel.guild_id)

    def _dispatch_reaction(self, event: str, message: FakeMessage, user: FakeUser, emoji: str) -> None:
        channel = message.channel
        data: JSON = {
            "user_id": str(user.id),
            "channel_id": str(channel.id),
            "message_id": str(message.id),
            "emoji": emoji_payload(emoji),
            "type": 0,
            "burst": False,
            "burst_colors": [],
            "message_author_id": str(message.author.id),
        }
        if channel.guild is not None:
            data["guild_id"] = str(channel.guild.id)
            member = channel.guild.members.get(user.id)
            if member is not None and event == "MESSAGE_REACTION_ADD":
                data["member"] = member.to_payload()
        self._dispatch_channel_event(channel, event, data, reactions=True)
        self._bump()

    def _dispatch_guild_event(self, guild: FakeGuild, event: str, data: JSON, *, intent: int = Intent.GUILDS) -> None:
        if self.bot_user.id not in guild.members:
            return
        self.gateway.dispatch(
            event,
            lambda s: data if (not self.enforce_intents or s.has_intent(intent)) else None,
            guild_id=guild.id,
        )

    def _dispatch_guild_create(self, guild: FakeGuild) -> None:
        """GUILD_CREATE for a guild the bot just joined (no ``unavailable`` key -> on_guild_join)."""

        def factory(session: GatewaySession) -> JSON | None:
            if not session.has_intent(Intent.GUILDS):
                return None
            payload = self._guild_create_payload(guild, session)
            payload.pop("unavailable", None)
            return payload

        self.gateway.dispatch("GUILD_CREATE", factory, guild_id=guild.id)

    # ================================================================= helpers
    def _member(self, guild: FakeGuild, who: FakeUser | FakeMember) -> FakeMember:
        member = who if isinstance(who, FakeMember) else guild.members.get(who.id)
        if member is None:
            raise ValueError(f"{who} is not a member of guild {guild.name!r}")
        return member

    def _check_user_can_post(self, channel: FakeChannel, author: FakeUser, *, with_files: bool) -> None:
        if channel.is_dm:
            if channel.recipient is not None and author.id not in (channel.recipient.id, self.bot_user.id):
                raise PermissionError(f"{author.username} is not part of this DM")
            return
        perms = self.permissions_for(channel, author)
        needed = Perm.VIEW_CHANNEL | Perm.SEND_MESSAGES | (Perm.ATTACH_FILES if with_files else 0)
        if perms & needed != needed:
            raise PermissionError(
                f"{author.username} cannot post{' files' if with_files else ''} in #{channel.name}"
                f" (permissions {perms:#x}); fix the test setup"
            )

    def _new_attachment(
        self, channel: FakeChannel, filename: str, data: bytes, content_type: str | None, *, ephemeral: bool = False
    ) -> FakeAttachment:
        att_id = self.ids.next()
        safe = urllib.parse.quote(filename)
        key = f"attachments/{channel.id}/{att_id}/{safe}"
        ctype = content_type or guess_content_type(filename, data)
        self.cdn[key] = (data, ctype)
        return FakeAttachment(
            id=att_id,
            filename=filename,
            data=data,
            content_type=ctype,
            url=f"{self.cdn_base}/{key}?ex=0&is=0&hm=fake&",
            ephemeral=ephemeral,
        )

    def _user_attachment(
        self, channel: FakeChannel, spec: AttachmentInput, *, ephemeral: bool = False
    ) -> FakeAttachment:
        if isinstance(spec, FakeAttachment):
            return spec
        if len(spec) == 3:
            filename, data, ctype = spec  # type: ignore[misc]
        else:
            filename, data = spec  # type: ignore[misc]
            ctype = None
        return self._new_attachment(channel, filename, data, ctype, ephemeral=ephemeral)

    def _apply_mentions(
        self, msg: FakeMessage, content: str, *, extra: Iterable[FakeUser] = (), allowed: JSON | None = None
    ) -> None:
        users: list[FakeUser] = []
        parse = None if allowed is None else set(allowed.get("parse", []))
        allowed_users = None if allowed is None else {int(u) for u in allowed.get("users", [])}
        for raw in _USER_MENTION.findall(content):
            user = self.users.get(int(raw))
            if user is None or user in users:
                continue
            if parse is not None and "users" not in parse and int(raw) not in (allowed_users or set()):
                continue
            users.append(user)
        for user in extra:
            if user not in users:
                users.append(user)
        msg.mentions = users
        guild = msg.channel.guild
        msg.mention_role_ids = [
            int(r) for r in _ROLE_MENTION.findall(content) if guild is not None and int(r) in guild.roles
        ]
        msg.mention_everyone = "@everyone" in content and (parse is None or "everyone" in parse)

    def _store_message(self, msg: FakeMessage) -> None:
        self.messages[msg.id] = msg
        msg.bot_id = self.bot_user.id
        if not msg.ephemeral:
            self._channel_log.setdefault(msg.channel.id, []).append(msg)
            msg.channel.last_message_id = msg.id
        if msg.author.id == self.bot_user.id:
            self.sent_messages.append(msg)
        self._bump()

    def _delete(self, msg: FakeMessage) -> None:
        if msg.deleted:
            return
        msg.deleted = True
        if not msg.ephemeral:
            data: JSON = {"id": str(msg.id), "channel_id": str(msg.channel.id)}
            if msg.guild_id is not None:
                data["guild_id"] = str(msg.guild_id)
            self._dispatch_channel_event(msg.channel, "MESSAGE_DELETE", data)
        self._bump()

    def _component(self, message: FakeMessage, custom_id: str) -> JSON:
        component = message.find_component(custom_id)
        if component is None:
            raise ValueError(f"message {message.id} has no component {custom_id!r}; has {message.custom_ids()}")
        return component

    # ---------------------------------------------------------- interactions
    def _find_command_for(
        self, name: str, channel: FakeChannel, ctype: int, options: Mapping[str, Any]
    ) -> tuple[int | None, JSON]:
        guild = channel.guild
        try:
            cmd = self.find_command(name, guild, type=ctype)
        except LookupError:
            if self.require_synced_commands:
                raise
            return None, {"id": str(self.ids.next()), "name": name, "type": ctype, "options": _infer_schema(options)}
        scope = cmd.get("guild_id")
        return (int(scope) if scope else None), cmd

    def _build_options(
        self,
        command: JSON,
        sub_path: Sequence[str],
        values: Mapping[str, Any],
        channel: FakeChannel,
        user: FakeUser,
        resolved: JSON,
        *,
        check_required: bool = True,
    ) -> list[JSON]:
        schema: list[JSON] = list(command.get("options", []))
        if not sub_path:
            subs = [o["name"] for o in schema if o.get("type") in (1, 2)]
            if subs:
                raise ValueError(f"/{command['name']} needs a subcommand: one of {subs}")
            return self._leaf_options(command["name"], schema, values, channel, resolved, check_required)
        head, *rest = sub_path
        for opt in schema:
            if opt["name"] == head and opt.get("type") in (OptionType.SUB_COMMAND, OptionType.SUB_COMMAND_GROUP):
                inner = self._build_options(opt, rest, values, channel, user, resolved, check_required=check_required)
                return [{"name": head, "type": opt["type"], "options": inner}]
        raise ValueError(f"/{command['name']} has no subcommand {head!r}")

    def _leaf_options(
        self,
        cmd_name: str,
        schema: list[JSON],
        values: Mapping[str, Any],
        channel: FakeChannel,
        resolved: JSON,
        check_required: bool,
    ) -> list[JSON]:
        by_name = {o["name"]: o for o in schema}
        unknown = [k for k in values if k not in by_name]
        if unknown:
            raise ValueError(f"/{cmd_name} has no option(s) {unknown}; options are {list(by_name)}")
        if check_required:
            missing = [o["name"] for o in schema if o.get("required") and o["name"] not in values]
            if missing:
                raise ValueError(f"/{cmd_name} requires option(s) {missing}")
        out: list[JSON] = []
        for name, value in values.items():
            otype = int(by_name[name]["type"])
            out.append({"name": name, "type": otype, "value": self._option_value(otype, value, channel, resolved)})
        return out

    def _option_value(self, otype: int, value: Any, channel: FakeChannel, resolved: JSON) -> Any:
        if otype == OptionType.STRING:
            return str(value)
        if otype == OptionType.INTEGER:
            return int(value)
        if otype == OptionType.NUMBER:
            return float(value)
        if otype == OptionType.BOOLEAN:
            return bool(value)
        if otype == OptionType.ATTACHMENT:
            att = self._user_attachment(channel, value, ephemeral=True)
            resolved.setdefault("attachments", {})[str(att.id)] = att.to_payload()
            return str(att.id)
        if otype in (OptionType.USER, OptionType.CHANNEL, OptionType.ROLE, OptionType.MENTIONABLE):
            self._resolve_value(value, channel, resolved)
            return str(_id_of(value))
        return value

    def _resolve_value(self, value: Any, channel: FakeChannel, resolved: JSON) -> None:
        if isinstance(value, FakeMember):
            value = value.user
        if isinstance(value, FakeUser):
            self._resolve_user(value, channel, resolved)
        elif isinstance(value, FakeRole):
            resolved.setdefault("roles", {})[str(value.id)] = value.to_payload()
        elif isinstance(value, FakeChannel):
            resolved.setdefault("channels", {})[str(value.id)] = {
                **value.to_payload(),
                "permissions": str(self.permissions_for(value, self.bot_user)),
            }
        else:
            raise TypeError(f"cannot resolve {value!r}; pass a FakeUser/FakeRole/FakeChannel")

    def _resolve_user(self, user: FakeUser, channel: FakeChannel, resolved: JSON) -> None:
        resolved.setdefault("users", {})[str(user.id)] = user.to_payload()
        guild = channel.guild
        if guild is not None and user.id in guild.members:
            resolved.setdefault("members", {})[str(user.id)] = guild.members[user.id].to_payload(
                with_user=False, permissions=self.permissions_for(channel, user)
            )

    def _fire_interaction(
        self,
        itype: int,
        channel: FakeChannel,
        user: FakeUser,
        data: JSON,
        *,
        message: FakeMessage | None = None,
        locale: str = "en-US",
    ) -> FakeInteraction:
        guild = channel.guild
        if guild is not None and not self.permissions_for(channel, user) & Perm.VIEW_CHANNEL:
            raise PermissionError(f"{user.username} cannot see #{channel.name}; fix the test setup")
        iid = self.ids.next()
        token = new_interaction_token()
        user_perms = self.permissions_for(channel, user)
        payload: JSON = {
            "id": str(iid),
            "application_id": str(self.application_id),
            "type": itype,
            "data": data,
            "token": token,
            "version": 1,
            "channel_id": str(channel.id),
            "channel": {**channel.to_payload(), "permissions": str(user_perms)},
            "locale": locale,
            "app_permissions": str(self.permissions_for(channel, self.bot_user)),
            "entitlements": [],
            "entitlement_sku_ids": [],
            "attachment_size_limit": self.upload_limit,
            "context": 0 if guild is not None else 1,
        }
        if guild is not None:
            member = guild.members.get(user.id)
            if member is None:
                raise ValueError(f"{user.username} is not a member of {guild.name!r}")
            payload["guild_id"] = str(guild.id)
            payload["guild"] = {"id": str(guild.id), "locale": "en-US", "features": []}
            payload["guild_locale"] = "en-US"
            payload["member"] = member.to_payload(permissions=user_perms)
            payload["authorizing_integration_owners"] = {"0": str(guild.id)}
        else:
            payload["user"] = user.to_payload()
            payload["authorizing_integration_owners"] = {"0": "0"}
        if message is not None:
            payload["message"] = message.to_payload()
        ix = FakeInteraction(
            id=iid,
            token=token,
            type=itype,
            payload=payload,
            user=user,
            channel=channel,
            created_at=time.monotonic(),
            message=message,
        )
        self.interactions[iid] = ix
        self._interactions_by_token[token] = ix
        self._mark_action()
        self.gateway.dispatch("INTERACTION_CREATE", lambda _s: payload, guild_id=channel.guild_id)
        self._bump()
        return ix

    # ================================================================ HTTP entry
    async def _handle(self, request: web.Request) -> web.StreamResponse:
        path = request.rel_url.raw_path
        if path.startswith("/gateway"):
            return await self.gateway.handle(request)
        if path.startswith("/cdn/"):
            return await self._serve_cdn(path[len("/cdn/") :])
        match = _API_PREFIX.match(path)
        if match is None:
            log.error("fake discord: request outside /api: %s %s", request.method, path)
            return _json_response({"message": "404: Not Found", "code": 0}, 404)
        return await self._handle_api(request, path[match.end() :] or "/")

    async def _handle_api(self, request: web.Request, path: str) -> web.StreamResponse:
        record = RecordedRequest(
            method=request.method, path=urllib.parse.unquote(path), query=dict(request.query), body=None
        )
        self.requests.append(record)
        try:
            response = await self._route(request, path, record)
        except _ApiError as err:
            body: JSON = {"message": err.message, "code": err.code}
            if err.errors:
                body["errors"] = err.errors
            response = _json_response(body, err.status)
        except Exception as exc:  # a harness bug: make it loud but keep the bot fast
            log.exception("fake discord: handler crashed for %s %s", request.method, path)
            self.errors.append(f"{request.method} {path}: {exc!r}")
            response = _json_response({"message": f"harness error: {exc!r}", "code": 0}, 400)
        record.status = response.status
        self._bump()
        return response

    async def _route(self, request: web.Request, path: str, record: RecordedRequest) -> web.StreamResponse:
        for failure in self._failures:
            if failure.remaining > 0 and failure.method == request.method and failure.pattern.search(path):
                failure.remaining -= 1
                raise _ApiError(failure.status, failure.code, failure.message)
        for route in self._routes:
            if route.method != request.method:
                continue
            m = route.pattern.match(path)
            if m is None:
                continue
            if route.auth and request.headers.get("Authorization") != f"Bot {self.token}":
                raise _ApiError(401, 0, "401: Unauthorized")
            params = _Params({k: urllib.parse.unquote(v) for k, v in m.groupdict().items()})
            params.record = record
            return await route.handler(request, params)
        self.unhandled_requests.append(record)
        log.error("fake discord: UNHANDLED route %s %s (add it to tests/harness)", request.method, path)
        raise _ApiError(404, 0, f"404: Not Found (fake Discord does not implement {request.method} {path})")

    async def _serve_cdn(self, raw_key: str) -> web.Response:
        key = raw_key.split("?", 1)[0]
        entry = self.cdn.get(key) or self.cdn.get(urllib.parse.unquote(key))
        if entry is None and key.startswith("embed/avatars/"):
            entry = (tiny_png(64, 64), "image/png")
        if entry is None:
            log.warning("fake discord CDN: no file at %s", key)
            return web.Response(status=404, text="not found")
        data, ctype = entry  # looked up first: a download already under way completes, like Discord's CDN
        if self.cdn_hold is not None:
            self.cdn_waiting += 1
            try:
                await self.cdn_hold.wait()
            finally:
                self.cdn_waiting -= 1
        return web.Response(body=data, headers={"Content-Type": ctype})

    def _build_routes(self) -> list[_Route]:
        c = r"(?P<channel_id>\d+)"
        m = r"(?P<message_id>\d+)"
        g = r"(?P<guild_id>\d+)"
        app = r"(?P<app_id>\d+)"
        tok = r"(?P<token>[^/]+)"
        table: list[tuple[str, str, Callable[[web.Request, dict[str, str]], Awaitable[web.StreamResponse]], bool]] = [
            ("GET", r"/users/@me", self._r_get_me, True),
            ("GET", r"/users/(?P<user_id>\d+)", self._r_get_user, True),
            ("POST", r"/users/@me/channels", self._r_create_dm, True),
            ("GET", r"/oauth2/applications/@me", self._r_app_info, True),
            ("GET", r"/applications/@me", self._r_app_info, True),
            ("GET", r"/gateway", self._r_gateway, False),
            ("GET", r"/gateway/bot", self._r_gateway_bot, True),
            ("GET", rf"/applications/{app}/commands", self._r_get_commands, True),
            ("PUT", rf"/applications/{app}/commands", self._r_put_commands, True),
            ("POST", rf"/applications/{app}/commands", self._r_upsert_command, True),
            ("GET", rf"/applications/{app}/commands/(?P<command_id>\d+)", self._r_get_command, True),
            ("PATCH", rf"/applications/{app}/commands/(?P<command_id>\d+)", self._r_edit_command, True),
            ("DELETE", rf"/applications/{app}/commands/(?P<command_id>\d+)", self._r_delete_command, True),
            ("GET", rf"/applications/{app}/guilds/{g}/commands", self._r_get_commands, True),
            ("PUT", rf"/applications/{app}/guilds/{g}/commands", self._r_put_commands, True),
            ("POST", rf"/applications/{app}/guilds/{g}/commands", self._r_upsert_command, True),
            ("GET", rf"/applications/{app}/guilds/{g}/commands/(?P<command_id>\d+)", self._r_get_command, True),
            ("PATCH", rf"/applications/{app}/guilds/{g}/commands/(?P<command_id>\d+)", self._r_edit_command, True),
            ("DELETE", rf"/applications/{app}/guilds/{g}/commands/(?P<command_id>\d+)", self._r_delete_command, True),
            ("GET", rf"/channels/{c}", self._r_get_channel, True),
            ("GET", rf"/channels/{c}/messages", self._r_history, True),
            ("POST", rf"/channels/{c}/messages", self._r_send_message, True),
            ("POST", rf"/channels/{c}/messages/bulk-delete", self._r_bulk_delete, True),
            ("GET", rf"/channels/{c}/messages/{m}", self._r_get_message, True),
            ("PATCH", rf"/channels/{c}/messages/{m}", self._r_edit_message, True),
            ("DELETE", rf"/channels/{c}/messages/{m}", self._r_delete_message, True),
            ("POST", rf"/channels/{c}/typing", self._r_typing, True),
            ("PUT", rf"/channels/{c}/messages/{m}/reactions/(?P<emoji>[^/]+)/@me", self._r_add_reaction, True),
            (
                "DELETE",
                rf"/channels/{c}/messages/{m}/reactions/(?P<emoji>[^/]+)/(?P<user>@me|\d+)",
                self._r_remove_reaction,
                True,
            ),
            ("DELETE", rf"/channels/{c}/messages/{m}/reactions", self._r_clear_reactions, True),
            ("GET", rf"/guilds/{g}", self._r_get_guild, True),
            ("GET", rf"/guilds/{g}/channels", self._r_guild_channels, True),
            ("GET", rf"/guilds/{g}/roles", self._r_guild_roles, True),
            ("GET", rf"/guilds/{g}/members", self._r_guild_members, True),
            ("GET", rf"/guilds/{g}/members/(?P<user_id>\d+)", self._r_guild_member, True),
            ("POST", r"/interactions/(?P<interaction_id>\d+)/(?P<token>[^/]+)/callback", self._r_callback, False),
            ("POST", rf"/webhooks/{app}/{tok}", self._r_followup, False),
            ("GET", rf"/webhooks/{app}/{tok}/messages/(?P<message_id>@original|\d+)", self._r_webhook_get, False),
            ("PATCH", rf"/webhooks/{app}/{tok}/messages/(?P<message_id>@original|\d+)", self._r_webhook_edit, False),
            ("DELETE", rf"/webhooks/{app}/{tok}/messages/(?P<message_id>@original|\d+)", self._r_webhook_delete, False),
        ]
        return [_Route(meth, re.compile(f"^{pat}/?$"), handler, auth) for meth, pat, handler, auth in table]

    # ================================================================ body parse
    async def _read_body(self, request: web.Request, p: dict[str, str]) -> tuple[JSON, list[_Upload]]:
        record = p.record if isinstance(p, _Params) else RecordedRequest(request.method, request.path, {}, None)
        uploads: list[_Upload] = []
        payload: JSON = {}
        if request.content_type.startswith("multipart/"):
            reader = await request.multipart()
            while True:
                part = await reader.next()
                if part is None:
                    break
                name = getattr(part, "name", None) or ""
                data = await part.read()  # type: ignore[union-attr]
                if name == "payload_json":
                    payload = json.loads(bytes(data).decode())
                    continue
                idx_match = re.fullmatch(r"files?\[(\d+)\]|file(\d*)", name)
                if idx_match is None:
                    log.warning("fake discord: ignoring multipart field %r", name)
                    continue
                index = int(idx_match.group(1) or idx_match.group(2) or 0)
                filename = getattr(part, "filename", None) or f"file{index}"
                uploads.append(_Upload(index, filename, bytes(data)))
        elif request.can_read_body:
            raw = await request.read()
            payload = json.loads(raw) if raw else {}
        record.body = payload
        record.files = [(u.filename, u.data) for u in uploads]
        return payload, uploads

    # =============================================================== permissions
    def _channel_or_404(self, channel_id: str | int) -> FakeChannel:
        channel = self.channels.get(int(channel_id))
        if channel is None:
            raise _ApiError(404, 10003, "Unknown Channel")
        return channel

    def _require(self, channel: FakeChannel, needed: int) -> None:
        if channel.is_dm:
            return
        perms = self.permissions_for(channel, self.bot_user)
        if not perms & Perm.VIEW_CHANNEL:
            raise _ApiError(403, 50001, "Missing Access")
        if perms & needed != needed:
            raise _ApiError(403, 50013, "Missing Permissions")

    def _message_or_404(self, channel: FakeChannel, message_id: str | int) -> FakeMessage:
        msg = self.messages.get(int(message_id))
        if msg is None or msg.deleted or msg.channel is not channel or msg.ephemeral:
            raise _ApiError(404, 10008, "Unknown Message")
        return msg

    # ============================================================== message build
    def _validate(self, payload: JSON, *, has_files: bool, creating: bool) -> None:
        content = payload.get("content")
        errors: JSON = {}
        if content is not None and len(str(content)) > _MAX_CONTENT:
            errors["content"] = {
                "_errors": [{"code": "BASE_TYPE_MAX_LENGTH", "message": "Must be 2000 or fewer in length."}]
            }
        embeds = payload.get("embeds") or []
        if len(embeds) > _MAX_EMBEDS:
            errors["embeds"] = {
                "_errors": [{"code": "BASE_TYPE_MAX_LENGTH", "message": "Must be 10 or fewer in length."}]
            }
        total = 0
        for i, embed in enumerate(embeds):
            for dotted, limit in _EMBED_LIMITS.items():
                value: Any = embed
                for part in dotted.split("."):
                    value = value.get(part) if isinstance(value, dict) else None
                if isinstance(value, str):
                    total += len(value)
                    if len(value) > limit:
                        errors[f"embeds.{i}.{dotted}"] = {
                            "_errors": [
                                {"code": "BASE_TYPE_MAX_LENGTH", "message": f"Must be {limit} or fewer in length."}
                            ]
                        }
            fields = embed.get("fields") or []
            if len(fields) > 25:
                errors[f"embeds.{i}.fields"] = {
                    "_errors": [{"code": "BASE_TYPE_MAX_LENGTH", "message": "Must be 25 or fewer in length."}]
                }
            for j, fld in enumerate(fields):
                name, value_ = str(fld.get("name", "")), str(fld.get("value", ""))
                total += len(name) + len(value_)
                if not name or len(name) > 256 or not value_ or len(value_) > 1024:
                    errors[f"embeds.{i}.fields.{j}"] = {
                        "_errors": [{"code": "BASE_TYPE_BAD_LENGTH", "message": "field name 1-256, value 1-1024"}]
                    }
        if total > 6000:
            errors["embeds"] = {
                "_errors": [{"code": "MAX_EMBED_SIZE_EXCEEDED", "message": "Embed size exceeds maximum size of 6000"}]
            }
        if errors:
            raise _ApiError(400, 50035, "Invalid Form Body", errors)
        if creating and not (
            str(content or "").strip()
            or embeds
            or has_files
            or payload.get("components")
            or payload.get("sticker_ids")
            or payload.get("poll")
        ):
            raise _ApiError(400, 50006, "Cannot send an empty message")

    def _attachments_from(
        self,
        channel: FakeChannel,
        payload: JSON,
        uploads: list[_Upload],
        *,
        existing: Sequence[FakeAttachment] = (),
        ephemeral: bool = False,
    ) -> list[FakeAttachment] | None:
        """New attachment list per Discord's rules, or None if attachments are unchanged."""
        for up in uploads:
            if len(up.data) > self.upload_limit:
                raise _ApiError(413, 40005, "Request entity too large")
        if len(uploads) > 10:
            raise _ApiError(400, 50035, "Invalid Form Body", {"files": {"_errors": [{"message": "max 10 files"}]}})
        by_index = {u.index: u for u in uploads}
        meta = payload.get("attachments")
        if meta is None:
            if not uploads:
                return None
            return [
                *existing,
                *(self._new_attachment(channel, u.filename, u.data, None, ephemeral=ephemeral) for u in uploads),
            ]
        keep = {a.id: a for a in existing}
        out: list[FakeAttachment] = []
        for entry in meta:
            att_id = int(entry.get("id", -1))
            if att_id in keep:
                out.append(keep[att_id])
                continue
            upload = by_index.get(att_id)
            if upload is None:
                raise _ApiError(
                    400,
                    50035,
                    "Invalid Form Body",
                    {"attachments": {"_errors": [{"message": f"no file for attachment {att_id}"}]}},
                )
            att = self._new_attachment(
                channel, entry.get("filename") or upload.filename, upload.data, None, ephemeral=ephemeral
            )
            att.description = entry.get("description")
            out.append(att)
        return out

    def _bot_message(
        self,
        channel: FakeChannel,
        payload: JSON,
        uploads: list[_Upload],
        *,
        interaction: FakeInteraction | None = None,
        msg_type: int | None = None,
        extra_flags: int = 0,
    ) -> FakeMessage:
        self._validate(payload, has_files=bool(uploads), creating=not extra_flags & MessageFlag.LOADING)
        reference: FakeMessage | None = None
        ref_data = payload.get("message_reference")
        if ref_data and ref_data.get("message_id"):
            reference = self.messages.get(int(ref_data["message_id"]))
            if (reference is None or reference.deleted) and ref_data.get("fail_if_not_exists", True):
                raise _ApiError(
                    400,
                    50035,
                    "Invalid Form Body",
                    {
                        "message_reference": {
                            "_errors": [{"code": "MESSAGE_REFERENCE_UNKNOWN_MESSAGE", "message": "Unknown message"}]
                        }
                    },
                )
        flags = int(payload.get("flags") or 0) | extra_flags
        msg = FakeMessage(
            id=self.ids.next(),
            channel=channel,
            author=self.bot_user,
            content=str(payload.get("content") or ""),
            embeds=list(payload.get("embeds") or []),
            components=list(payload.get("components") or []),
            reference=reference if reference is not None and not reference.deleted else None,
            tts=bool(payload.get("tts", False)),
            nonce=payload.get("nonce"),
            flags=flags,
            interaction=interaction,
        )
        if msg_type is not None:
            msg.type = msg_type
        elif msg.reference is not None:
            msg.type = MessageType.REPLY
        if payload.get("poll"):
            msg.extra["poll"] = payload["poll"]
        msg.attachments = self._attachments_from(channel, payload, uploads, ephemeral=msg.ephemeral) or []
        allowed = payload.get("allowed_mentions")
        self._apply_mentions(msg, msg.content, allowed=allowed)
        if (
            msg.reference is not None
            and (allowed or {}).get("replied_user", True)
            and msg.reference.author not in msg.mentions
        ):
            msg.mentions.append(msg.reference.author)
        if interaction is not None:
            msg.webhook_id = self.application_id
            msg.interaction_metadata = {
                "id": str(interaction.id),
                "type": interaction.type,
                "user": interaction.user.to_payload(),
                "authorizing_integration_owners": interaction.payload.get("authorizing_integration_owners", {}),
            }
            if interaction.original is not None and interaction.original is not msg:
                msg.interaction_metadata["original_response_message_id"] = str(interaction.original.id)
            if interaction.message is not None:
                msg.interaction_metadata["interacted_message_id"] = str(interaction.message.id)
        return msg

    def _apply_edit(self, msg: FakeMessage, payload: JSON, uploads: list[_Upload]) -> None:
        """Apply an edit payload; validates the result before touching the message."""
        self._validate(payload, has_files=bool(uploads), creating=False)
        content = str(payload.get("content") or "") if "content" in payload else msg.content
        embeds = list(payload.get("embeds") or []) if "embeds" in payload else msg.embeds
        components = list(payload.get("components") or []) if "components" in payload else msg.components
        attachments = self._attachments_from(
            msg.channel, payload, uploads, existing=msg.attachments, ephemeral=msg.ephemeral
        )
        if attachments is None:
            attachments = msg.attachments
        if not (content.strip() or embeds or attachments or components or msg.extra):
            raise _ApiError(400, 50006, "Cannot send an empty message")
        if "content" in payload:
            msg.content = content
            self._apply_mentions(msg, content, allowed=payload.get("allowed_mentions"))
        msg.embeds, msg.components, msg.attachments = embeds, components, attachments
        if payload.get("flags") is not None:
            msg.flags = int(payload["flags"]) | (msg.flags & MessageFlag.EPHEMERAL)
        msg.flags &= ~MessageFlag.LOADING
        msg.edited_at = utcnow()
        msg.edit_history.append({**payload, "files": [u.filename for u in uploads]})

    # ================================================================ REST: misc
    async def _r_get_me(self, request: web.Request, p: dict[str, str]) -> web.Response:
        me = self.bot_user.to_payload()
        me.update({"verified": True, "mfa_enabled": False, "locale": "en-US", "flags": 0, "email": None})
        return _json_response(me)

    async def _r_get_user(self, request: web.Request, p: dict[str, str]) -> web.Response:
        user = self.users.get(int(p["user_id"]))
        if user is None:
            raise _ApiError(404, 10013, "Unknown User")
        return _json_response(user.to_payload())

    async def _r_create_dm(self, request: web.Request, p: dict[str, str]) -> web.Response:
        body, _ = await self._read_body(request, p)
        user = self.users.get(int(body.get("recipient_id", 0)))
        if user is None:
            raise _ApiError(404, 10013, "Unknown User")
        return _json_response(self.dm_channel(user).to_payload())

    async def _r_app_info(self, request: web.Request, p: dict[str, str]) -> web.Response:
        return _json_response(self._application_payload())

    async def _r_gateway(self, request: web.Request, p: dict[str, str]) -> web.Response:
        return _json_response({"url": self.gateway_url.rstrip("/")})

    async def _r_gateway_bot(self, request: web.Request, p: dict[str, str]) -> web.Response:
        return _json_response(
            {
                "url": self.gateway_url,
                "shards": self.shard_count,
                "session_start_limit": {"total": 1000, "remaining": 999, "reset_after": 0, "max_concurrency": 16},
            }
        )

    # ============================================================ REST: commands
    def _command_scope(self, p: dict[str, str]) -> int | None:
        if int(p["app_id"]) != self.application_id:
            raise _ApiError(403, 50001, "Missing Access")
        if p.get("guild_id"):
            gid = int(p["guild_id"])
            if gid not in self.guilds:
                raise _ApiError(404, 10004, "Unknown Guild")
            return gid
        return None

    def _normalise_command(self, scope: int | None, data: JSON, existing: Sequence[JSON]) -> JSON:
        ctype = int(data.get("type", 1))
        previous = next((c for c in existing if c["name"] == data["name"] and int(c.get("type", 1)) == ctype), None)
        cmd: JSON = {
            "id": previous["id"] if previous else str(self.ids.next()),
            "application_id": str(self.application_id),
            "version": str(self.ids.next()),
            "type": ctype,
            "name": data["name"],
            "description": data.get("description", ""),
            "options": data.get("options", []),
            "default_member_permissions": data.get("default_member_permissions"),
            "dm_permission": data.get("dm_permission", True),
            "nsfw": data.get("nsfw", False),
            "contexts": data.get("contexts"),
            "integration_types": data.get("integration_types", [0]),
            "name_localizations": data.get("name_localizations"),
            "description_localizations": data.get("description_localizations"),
        }
        if scope is not None:
            cmd["guild_id"] = str(scope)
        return cmd

    async def _r_get_commands(self, request: web.Request, p: dict[str, str]) -> web.Response:
        return _json_response(self.commands.get(self._command_scope(p), []))

    async def _r_put_commands(self, request: web.Request, p: dict[str, str]) -> web.Response:
        scope = self._command_scope(p)
        body, _ = await self._read_body(request, p)
        if not isinstance(body, list):
            raise _ApiError(400, 50035, "Invalid Form Body")
        existing = self.commands.get(scope, [])
        names = [(c["name"], int(c.get("type", 1))) for c in body]
        if len(names) != len(set(names)):
            raise _ApiError(
                400, 50035, "Invalid Form Body", {"_errors": [{"code": "APPLICATION_COMMANDS_DUPLICATE_NAME"}]}
            )
        self.commands[scope] = [self._normalise_command(scope, c, existing) for c in body]
        self.command_syncs.append((scope, body))
        return _json_response(self.commands[scope])

    async def _r_upsert_command(self, request: web.Request, p: dict[str, str]) -> web.Response:
        scope = self._command_scope(p)
        body, _ = await self._read_body(request, p)
        existing = self.commands.setdefault(scope, [])
        cmd = self._normalise_command(scope, body, existing)
        self.commands[scope] = [c for c in existing if c["id"] != cmd["id"]] + [cmd]
        return _json_response(cmd, 201)

    def _command_by_id(self, p: dict[str, str]) -> tuple[int | None, JSON]:
        scope = self._command_scope(p)
        for cmd in self.commands.get(scope, []):
            if cmd["id"] == p["command_id"]:
                return scope, cmd
        raise _ApiError(404, 10063, "Unknown application command")

    async def _r_get_command(self, request: web.Request, p: dict[str, str]) -> web.Response:
        return _json_response(self._command_by_id(p)[1])

    async def _r_edit_command(self, request: web.Request, p: dict[str, str]) -> web.Response:
        _scope, cmd = self._command_by_id(p)
        body, _ = await self._read_body(request, p)
        cmd.update({k: v for k, v in body.items() if k != "id"})
        return _json_response(cmd)

    async def _r_delete_command(self, request: web.Request, p: dict[str, str]) -> web.Response:
        scope, cmd = self._command_by_id(p)
        self.commands[scope] = [c for c in self.commands[scope] if c is not cmd]
        return _no_content()

    # ============================================================ REST: channels
    async def _r_get_channel(self, request: web.Request, p: dict[str, str]) -> web.Response:
        channel = self._channel_or_404(p["channel_id"])
        self._require(channel, Perm.VIEW_CHANNEL)
        return _json_response(channel.to_payload())

    async def _r_history(self, request: web.Request, p: dict[str, str]) -> web.Response:
        channel = self._channel_or_404(p["channel_id"])
        self._require(channel, Perm.VIEW_CHANNEL | Perm.READ_MESSAGE_HISTORY)
        q = request.query
        limit = max(1, min(100, int(q.get("limit", 50))))
        msgs = self.history(channel)  # oldest first
        if "around" in q:
            pivot = int(q["around"])
            older = [m for m in msgs if m.id < pivot][-(limit // 2) :] if limit // 2 else []
            newer = [m for m in msgs if m.id >= pivot][: limit - len(older)]
            chosen = older + newer
        elif "after" in q:
            chosen = [m for m in msgs if m.id > int(q["after"])][:limit]
        else:
            if "before" in q:
                msgs = [m for m in msgs if m.id < int(q["before"])]
            chosen = msgs[-limit:]
        return _json_response([m.to_payload() for m in reversed(chosen)])

    async def _r_get_message(self, request: web.Request, p: dict[str, str]) -> web.Response:
        channel = self._channel_or_404(p["channel_id"])
        self._require(channel, Perm.VIEW_CHANNEL | Perm.READ_MESSAGE_HISTORY)
        return _json_response(self._message_or_404(channel, p["message_id"]).to_payload())

    async def _r_send_message(self, request: web.Request, p: dict[str, str]) -> web.Response:
        channel = self._channel_or_404(p["channel_id"])
        payload, uploads = await self._read_body(request, p)
        needed = Perm.VIEW_CHANNEL | Perm.SEND_MESSAGES
        if uploads:
            needed |= Perm.ATTACH_FILES
        if payload.get("message_reference"):
            needed |= Perm.READ_MESSAGE_HISTORY
        self._require(channel, needed)
        if channel.is_dm and channel.recipient is not None and not channel.recipient.accepts_dms:
            raise _ApiError(403, 50007, "Cannot send messages to this user")
        msg = self._bot_message(channel, payload, uploads)
        if not channel.is_dm and msg.embeds and not self.permissions_for(channel, self.bot_user) & Perm.EMBED_LINKS:
            msg.embeds = []  # Discord silently drops embeds without EMBED_LINKS
        self._store_message(msg)
        self._dispatch_message("MESSAGE_CREATE", msg)
        return _json_response(msg.to_payload())

    async def _r_edit_message(self, request: web.Request, p: dict[str, str]) -> web.Response:
        channel = self._channel_or_404(p["channel_id"])
        self._require(channel, Perm.VIEW_CHANNEL)
        msg = self._message_or_404(channel, p["message_id"])
        payload, uploads = await self._read_body(request, p)
        if msg.author.id != self.bot_user.id:
            if set(payload) - {"flags"}:
                raise _ApiError(403, 50005, "Cannot edit a message authored by another user")
            self._require(channel, Perm.MANAGE_MESSAGES)
        self._apply_edit(msg, payload, uploads)
        self._dispatch_message("MESSAGE_UPDATE", msg)
        return _json_response(msg.to_payload())

    async def _r_delete_message(self, request: web.Request, p: dict[str, str]) -> web.Response:
        channel = self._channel_or_404(p["channel_id"])
        msg = self._message_or_404(channel, p["message_id"])
        if msg.author.id != self.bot_user.id:
            self._require(channel, Perm.MANAGE_MESSAGES)
        self._delete(msg)
        return _no_content()

    async def _r_bulk_delete(self, request: web.Request, p: dict[str, str]) -> web.Response:
        channel = self._channel_or_404(p["channel_id"])
        self._require(channel, Perm.MANAGE_MESSAGES)
        body, _ = await self._read_body(request, p)
        ids = [int(i) for i in body.get("messages", [])]
        if not 2 <= len(ids) <= 100:
            raise _ApiError(400, 50016, "You must provide between 2 and 100 messages")
        msgs = [self._message_or_404(channel, i) for i in ids]
        for msg in msgs:
            msg.deleted = True
        data: JSON = {"ids": [str(i) for i in ids], "channel_id": str(channel.id)}
        if channel.guild_id is not None:
            data["guild_id"] = str(channel.guild_id)
        self._dispatch_channel_event(channel, "MESSAGE_DELETE_BULK", data)
        return _no_content()

    async def _r_typing(self, request: web.Request, p: dict[str, str]) -> web.Response:
        channel = self._channel_or_404(p["channel_id"])
        self._require(channel, Perm.VIEW_CHANNEL | Perm.SEND_MESSAGES)
        self.typing_events.append(TypingEvent(channel.id, self.bot_user.id, time.monotonic()))
        return _no_content()

    async def _r_add_reaction(self, request: web.Request, p: dict[str, str]) -> web.Response:
        channel = self._channel_or_404(p["channel_id"])
        self._require(channel, Perm.VIEW_CHANNEL | Perm.READ_MESSAGE_HISTORY)
        msg = self._message_or_404(channel, p["message_id"])
        emoji = p["emoji"]
        users = msg.reactions.setdefault(emoji, [])
        if not users:
            self._require(channel, Perm.ADD_REACTIONS)
        if self.bot_user.id not in users:
            users.append(self.bot_user.id)
            self.reactions.append(ReactionEvent(channel.id, msg.id, emoji, self.bot_user.id, True, time.monotonic()))
            self._dispatch_reaction("MESSAGE_REACTION_ADD", msg, self.bot_user, emoji)
        return _no_content()

    async def _r_remove_reaction(self, request: web.Request, p: dict[str, str]) -> web.Response:
        channel = self._channel_or_404(p["channel_id"])
        msg = self._message_or_404(channel, p["message_id"])
        emoji = p["emoji"]
        user_id = self.bot_user.id if p["user"] == "@me" else int(p["user"])
        if user_id != self.bot_user.id:
            self._require(channel, Perm.MANAGE_MESSAGES)
        users = msg.reactions.get(emoji, [])
        if user_id in users:
            users.remove(user_id)
            self.reactions.append(ReactionEvent(channel.id, msg.id, emoji, user_id, False, time.monotonic()))
            self._dispatch_reaction("MESSAGE_REACTION_REMOVE", msg, self.users[user_id], emoji)
        return _no_content()

    async def _r_clear_reactions(self, request: web.Request, p: dict[str, str]) -> web.Response:
        channel = self._channel_or_404(p["channel_id"])
        self._require(channel, Perm.MANAGE_MESSAGES)
        msg = self._message_or_404(channel, p["message_id"])
        msg.reactions.clear()
        return _no_content()

    # ============================================================== REST: guilds
    def _guild_or_404(self, guild_id: str) -> FakeGuild:
        guild = self.guilds.get(int(guild_id))
        if guild is None or self.bot_user.id not in guild.members:
            raise _ApiError(404, 10004, "Unknown Guild")
        return guild

    async def _r_get_guild(self, request: web.Request, p: dict[str, str]) -> web.Response:
        payload = self._guild_or_404(p["guild_id"]).to_payload()
        for key in (
            "members",
            "channels",
            "threads",
            "presences",
            "voice_states",
            "joined_at",
            "large",
            "member_count",
        ):
            payload.pop(key, None)
        return _json_response(payload)

    async def _r_guild_channels(self, request: web.Request, p: dict[str, str]) -> web.Response:
        guild = self._guild_or_404(p["guild_id"])
        return _json_response([c.to_payload() for c in guild.channels.values()])

    async def _r_guild_roles(self, request: web.Request, p: dict[str, str]) -> web.Response:
        guild = self._guild_or_404(p["guild_id"])
        return _json_response([r.to_payload() for r in guild.roles.values()])

    async def _r_guild_members(self, request: web.Request, p: dict[str, str]) -> web.Response:
        guild = self._guild_or_404(p["guild_id"])
        limit = max(1, min(1000, int(request.query.get("limit", 1))))
        after = int(request.query.get("after", 0))
        members = sorted((m for m in guild.members.values() if m.user.id > after), key=lambda m: m.user.id)
        return _json_response([m.to_payload() for m in members[:limit]])

    async def _r_guild_member(self, request: web.Request, p: dict[str, str]) -> web.Response:
        guild = self._guild_or_404(p["guild_id"])
        member = guild.members.get(int(p["user_id"]))
        if member is None:
            raise _ApiError(404, 10007, "Unknown Member")
        return _json_response(member.to_payload())

    # ======================================================== REST: interactions
    def _interaction_by_token(self, p: dict[str, str]) -> FakeInteraction:
        if "app_id" in p and int(p["app_id"]) != self.application_id:
            raise _ApiError(404, 10015, "Unknown Webhook")
        ix = self._interactions_by_token.get(p["token"])
        if ix is None:
            raise _ApiError(404, 10015, "Unknown Webhook")
        return ix

    def _callback_response(self, ix: FakeInteraction, cb_type: int, msg: FakeMessage | None) -> JSON:
        inter: JSON = {"id": str(ix.id), "type": ix.type}
        resource: JSON = {"type": cb_type}
        if msg is not None:
            inter["response_message_id"] = str(msg.id)
            inter["response_message_loading"] = msg.loading
            inter["response_message_ephemeral"] = msg.ephemeral
            resource["message"] = msg.to_payload()
        return {"interaction": inter, "resource": resource}

    def _response_message_type(self, ix: FakeInteraction) -> int:
        if ix.type == InteractionType.APPLICATION_COMMAND:
            return (
                MessageType.CHAT_INPUT_COMMAND
                if ix.payload["data"].get("type", 1) == CommandType.CHAT_INPUT
                else MessageType.CONTEXT_MENU_COMMAND
            )
        return MessageType.DEFAULT

    async def _r_callback(self, request: web.Request, p: dict[str, str]) -> web.Response:
        ix = self.interactions.get(int(p["interaction_id"]))
        if ix is None or ix.token != p["token"]:
            raise _ApiError(404, 10062, "Unknown interaction")
        body, uploads = await self._read_body(request, p)
        if ix.callback is not None:
            raise _ApiError(400, 40060, "Interaction has already been acknowledged.")
        elapsed = time.monotonic() - ix.created_at
        if elapsed > self.interaction_deadline:
            log.error(
                "fake discord: interaction %s answered after %.2fs (> %.1fs deadline)",
                ix.id,
                elapsed,
                self.interaction_deadline,
            )
            raise _ApiError(404, 10062, "Unknown interaction")
        cb_type = int(body.get("type", 0))
        data: JSON = body.get("data") or {}
        # 6 (deferred update) is valid for components and modal submits, 7 needs a message to update
        can_update = ix.type in (InteractionType.MESSAGE_COMPONENT, InteractionType.MODAL_SUBMIT)
        msg: FakeMessage | None = None
        if cb_type == CallbackType.CHANNEL_MESSAGE:
            msg = self._bot_message(ix.channel, data, uploads, interaction=ix, msg_type=self._response_message_type(ix))
            ix.original = msg
        elif cb_type == CallbackType.DEFERRED_CHANNEL_MESSAGE:
            msg = self._bot_message(
                ix.channel,
                {"content": "", "flags": int(data.get("flags") or 0) & MessageFlag.EPHEMERAL},
                [],
                interaction=ix,
                msg_type=self._response_message_type(ix),
                extra_flags=MessageFlag.LOADING,
            )
            ix.original = msg
        elif cb_type in (CallbackType.DEFERRED_UPDATE_MESSAGE, CallbackType.UPDATE_MESSAGE):
            if not can_update or (cb_type == CallbackType.UPDATE_MESSAGE and ix.message is None):
                raise _ApiError(400, 40043, "Interaction callback type not valid for this interaction")
            if cb_type == CallbackType.UPDATE_MESSAGE and ix.message is not None:
                self._apply_edit(ix.message, data, uploads)
                msg = ix.message
            ix.original = ix.message
        elif cb_type in (
            CallbackType.AUTOCOMPLETE_RESULT,
            CallbackType.MODAL,
            CallbackType.PONG,
            CallbackType.LAUNCH_ACTIVITY,
        ):
            if cb_type == CallbackType.AUTOCOMPLETE_RESULT and ix.type != InteractionType.AUTOCOMPLETE:
                raise _ApiError(400, 40043, "Interaction callback type not valid for this interaction")
        else:
            raise _ApiError(400, 50035, f"Invalid interaction callback type {cb_type}")
        ix.callback = InteractionCallback(type=cb_type, data=data, at=time.monotonic())
        if cb_type == CallbackType.UPDATE_MESSAGE and msg is not None:
            self._dispatch_message("MESSAGE_UPDATE", msg)
        if (
            msg is not None
            and ix.original is msg
            and cb_type in (CallbackType.CHANNEL_MESSAGE, CallbackType.DEFERRED_CHANNEL_MESSAGE)
        ):
            self._store_message(msg)
            self._dispatch_message("MESSAGE_CREATE", msg)
        self._bump()
        if request.query.get("with_response", "").lower() in ("1", "true"):
            return _json_response(self._callback_response(ix, cb_type, msg or ix.original))
        return _no_content()

    async def _r_followup(self, request: web.Request, p: dict[str, str]) -> web.Response:
        ix = self._interaction_by_token(p)
        payload, uploads = await self._read_body(request, p)
        if ix.callback is None:
            raise _ApiError(404, 10015, "Unknown Webhook")
        original = ix.original
        first_after_defer = (
            ix.callback.type == CallbackType.DEFERRED_CHANNEL_MESSAGE
            and original is not None
            and original.loading
            and not ix.followups
        )
        if first_after_defer and original is not None:
            # Discord turns the first followup after a "thinking" defer into an edit of it.
            payload = {k: v for k, v in payload.items() if k != "flags"}
            self._apply_edit(original, payload, uploads)
            ix.followups.append(original)
            self._dispatch_message("MESSAGE_UPDATE", original)
            msg = original
        else:
            msg = self._bot_message(
                ix.channel, payload, uploads, interaction=ix, msg_type=self._response_message_type(ix)
            )
            ix.followups.append(msg)
            self._store_message(msg)
            self._dispatch_message("MESSAGE_CREATE", msg)
        self._bump()
        if request.query.get("wait", "").lower() in ("1", "true"):
            return _json_response(msg.to_payload())
        return _no_content()

    def _webhook_message(self, ix: FakeInteraction, message_id: str) -> FakeMessage:
        if ix.callback is None:
            raise _ApiError(404, 10015, "Unknown Webhook")
        if message_id == "@original":
            if ix.original is None:
                raise _ApiError(404, 10008, "Unknown Message")
            return ix.original
        for msg in ix.messages:
            if msg.id == int(message_id):
                return msg
        raise _ApiError(404, 10008, "Unknown Message")

    async def _r_webhook_get(self, request: web.Request, p: dict[str, str]) -> web.Response:
        ix = self._interaction_by_token(p)
        msg = self._webhook_message(ix, p["message_id"])
        if msg.deleted:
            raise _ApiError(404, 10008, "Unknown Message")
        return _json_response(msg.to_payload())

    async def _r_webhook_edit(self, request: web.Request, p: dict[str, str]) -> web.Response:
        ix = self._interaction_by_token(p)
        payload, uploads = await self._read_body(request, p)
        msg = self._webhook_message(ix, p["message_id"])
        if msg.deleted:
            raise _ApiError(404, 10008, "Unknown Message")
        self._apply_edit(msg, payload, uploads)
        if p["message_id"] == "@original":
            ix.edits.append(payload)
        self._dispatch_message("MESSAGE_UPDATE", msg)
        self._bump()
        return _json_response(msg.to_payload())

    async def _r_webhook_delete(self, request: web.Request, p: dict[str, str]) -> web.Response:
        ix = self._interaction_by_token(p)
        msg = self._webhook_message(ix, p["message_id"])
        self._delete(msg)
        return _no_content()

    # ------------------------------------------------------------------ misc
    def connection_log(self) -> list[GatewayLogEntry]:
        return list(self.gateway.log)

    def live_connections(self) -> list[GatewayConnection]:
        return list(self.gateway.connections)


def _infer_schema(options: Mapping[str, Any]) -> list[JSON]:
    """Option schema guessed from Python values (only with ``require_synced_commands=False``)."""
    schema: list[JSON] = []
    for name, value in options.items():
        if isinstance(value, bool):
            otype = OptionType.BOOLEAN
        elif isinstance(value, int):
            otype = OptionType.INTEGER
        elif isinstance(value, float):
            otype = OptionType.NUMBER
        elif isinstance(value, FakeUser | FakeMember):
            otype = OptionType.USER
        elif isinstance(value, FakeChannel):
            otype = OptionType.CHANNEL
        elif isinstance(value, FakeRole):
            otype = OptionType.ROLE
        elif isinstance(value, tuple | FakeAttachment):
            otype = OptionType.ATTACHMENT
        else:
            otype = OptionType.STRING
        schema.append({"name": name, "type": otype, "description": name})
    return schema
