"""Pytest fixtures and helpers for running a discord.py bot against :class:`FakeDiscordServer`.

Registered for the whole suite by ``pytest_plugins = ["tests.harness.fixtures"]`` in
``tests/conftest.py``, so tests just ask for the fixtures::

    async def test_echo(discord_server, discord_world):
        bot = make_bot(discord_server)
        ...  # add cogs / commands / listeners
        async with running_bot(discord_server, bot):
            await discord_server.post_message(discord_world.general, discord_world.alice, "hi")
            reply = await discord_server.wait_for_message(discord_world.general)

``make_bot`` / ``make_fast`` remove discord.py's built-in delays (2 s ``guild_ready_timeout``
after the last GUILD_CREATE, 5 s ``before_identify_hook`` sleep before a re-IDENTIFY), so
a bot is ready in ~0.1 s.

``running_bot`` fails the test if discord.py logged an error while the bot ran (an
exception in an event handler, command, view or task), because those are otherwise
only visible as a confusing timeout.  Pass ``raise_bot_errors=False`` when a test
expects errors, and inspect :attr:`BotRunner.bot_errors`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, TypeVar

import discord
import pytest_asyncio
from discord.ext import commands

from .discord_server import FakeChannel, FakeDiscordServer, FakeGuild, FakeUser, HarnessTimeout

__all__ = [
    "FAST_GUILD_READY_TIMEOUT",
    "BotErrors",
    "BotRunner",
    "DiscordWorld",
    "bot_intents",
    "build_world",
    "discord_server",
    "discord_world",
    "make_bot",
    "make_fast",
    "running_bot",
]

log = logging.getLogger("tests.harness.fixtures")

ClientT = TypeVar("ClientT", bound=discord.Client)

#: Seconds discord.py waits after the last GUILD_CREATE before firing ``on_ready``.
FAST_GUILD_READY_TIMEOUT = 0.1


def bot_intents(**overrides: bool) -> discord.Intents:
    """``Intents.default()`` plus the privileged ``message_content`` and ``members``.

    ``bot_intents(message_content=False)`` etc. to test behaviour without one.
    """
    intents = discord.Intents.default()
    intents.message_content = True
    intents.members = True
    for name, value in overrides.items():
        setattr(intents, name, value)
    return intents


async def _no_identify_delay(shard_id: int | None, *, initial: bool = False) -> None:
    return None


def make_fast(client: discord.Client) -> None:
    """Strip discord.py's startup / re-identify sleeps from an already-built client.

    Use it on a bot built by production code (e.g. the app's bot factory) before
    starting it against the fake server.
    """
    client._connection.guild_ready_timeout = FAST_GUILD_READY_TIMEOUT
    client.before_identify_hook = _no_identify_delay  # type: ignore[method-assign]


def make_bot(
    server: FakeDiscordServer | None = None,
    *,
    cls: type[ClientT] = commands.Bot,  # type: ignore[assignment]
    command_prefix: Any = "!",
    intents: discord.Intents | None = None,
    **kwargs: Any,
) -> ClientT:
    """Build a fast-starting ``commands.Bot`` (or ``cls``: ``AutoShardedBot``, ``discord.Client``...).

    If ``server`` is given it is (idempotently) installed, so the bot talks to it.
    Extra ``kwargs`` go to the constructor.
    """
    if server is not None:
        server.install()
    kwargs.setdefault("guild_ready_timeout", FAST_GUILD_READY_TIMEOUT)
    if issubclass(cls, commands.bot.BotBase):
        kwargs["command_prefix"] = command_prefix
    bot = cls(intents=intents or bot_intents(), **kwargs)
    make_fast(bot)
    return bot


class BotErrors(logging.Handler):
    """Collects ERROR records logged under ``discord`` while a bot runs."""

    def __init__(self) -> None:
        super().__init__(level=logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def summary(self) -> str:
        lines = []
        for record in self.records:
            exc = record.exc_info[1] if record.exc_info else None
            lines.append(f"{record.name}: {record.getMessage()}" + (f" -> {exc!r}" if exc else ""))
        return "\n".join(lines)


class BotRunner:
    """Runs ``bot.start(token)`` in a background task; :meth:`start` waits for ``on_ready``.

    :meth:`stop` closes the bot, awaits the task and re-raises anything that killed it
    (e.g. discord.py choking on a malformed payload), then -- unless
    ``raise_bot_errors=False`` -- fails if discord.py logged errors meanwhile.
    """

    def __init__(
        self,
        server: FakeDiscordServer,
        bot: discord.Client,
        *,
        ready_timeout: float = 5.0,
        raise_bot_errors: bool = True,
    ) -> None:
        self.server = server
        self.bot = bot
        self.ready_timeout = ready_timeout
        self.raise_bot_errors = raise_bot_errors
        self.task: asyncio.Task[None] | None = None
        self._errors = BotErrors()

    @property
    def bot_errors(self) -> list[logging.LogRecord]:
        """ERROR log records (with ``exc_info``) discord.py emitted while running."""
        return self._errors.records

    async def start(self) -> None:
        logging.getLogger("discord").addHandler(self._errors)
        self.task = asyncio.create_task(self.bot.start(self.server.token), name="fake-discord-bot")
        ready = asyncio.create_task(self.bot.wait_until_ready(), name="fake-discord-bot-ready")
        done, _ = await asyncio.wait(
            {self.task, ready}, timeout=self.ready_timeout, return_when=asyncio.FIRST_COMPLETED
        )
        if ready in done:
            return
        ready.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await ready
        if self.task in done:
            exc = self.task.exception()
            self.task = None
            logging.getLogger("discord").removeHandler(self._errors)
            raise RuntimeError(f"bot stopped before becoming ready: {exc!r}") from exc
        await self.stop(raise_errors=False)
        raise HarnessTimeout(f"bot not ready after {self.ready_timeout}s\n{self.server.describe()}")

    async def stop(self, *, raise_errors: bool = True) -> None:
        try:
            if not self.bot.is_closed():
                await self.bot.close()
            task, self.task = self.task, None
            if task is not None:
                try:
                    await asyncio.wait_for(task, timeout=5.0)
                except asyncio.CancelledError:
                    pass
                except Exception:
                    if raise_errors:
                        raise
                    log.exception("bot task failed")
        finally:
            logging.getLogger("discord").removeHandler(self._errors)
        if raise_errors and self.raise_bot_errors and self._errors.records:
            raise AssertionError(
                "discord.py logged errors while the bot ran (use raise_bot_errors=False if expected):\n"
                + self._errors.summary()
            )

    async def __aenter__(self) -> BotRunner:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop(raise_errors=exc[0] is None)


@contextlib.asynccontextmanager
async def running_bot(
    server: FakeDiscordServer,
    bot: ClientT,
    *,
    ready_timeout: float = 5.0,
    raise_bot_errors: bool = True,
) -> AsyncIterator[ClientT]:
    """``async with running_bot(server, bot) as bot:`` -- connected and ready inside."""
    async with BotRunner(server, bot, ready_timeout=ready_timeout, raise_bot_errors=raise_bot_errors):
        yield bot


@dataclass
class DiscordWorld:
    """A small ready-made world (see :func:`build_world`)."""

    guild: FakeGuild
    #: Everyone can read and post.
    general: FakeChannel
    #: Private: visible to ``bob`` and the bot only (not to ``alice``).
    secret: FakeChannel
    #: Age-restricted channel.
    nsfw: FakeChannel
    alice: FakeUser
    bob: FakeUser


def build_world(server: FakeDiscordServer) -> DiscordWorld:
    """One guild with #general, #secret (bob + bot only) and #after-dark (nsfw); alice and bob."""
    guild = server.add_guild("Test Guild")
    alice = server.add_user("alice", global_name="Alice")
    bob = server.add_user("bob", global_name="Bob")
    server.add_member(guild, alice)
    server.add_member(guild, bob)
    general = server.add_text_channel(guild, "general")
    secret = server.add_text_channel(guild, "secret", private_to=[bob])
    nsfw = server.add_text_channel(guild, "after-dark", nsfw=True)
    return DiscordWorld(guild=guild, general=general, secret=secret, nsfw=nsfw, alice=alice, bob=bob)


@pytest_asyncio.fixture
async def discord_server() -> AsyncIterator[FakeDiscordServer]:
    """A started and installed :class:`FakeDiscordServer`; restored and stopped afterwards."""
    server = FakeDiscordServer()
    await server.start()
    server.install()
    try:
        yield server
    finally:
        server.restore()
        await server.stop()


@pytest_asyncio.fixture
async def discord_world(discord_server: FakeDiscordServer) -> DiscordWorld:
    """:func:`build_world` on the ``discord_server`` fixture."""
    return build_world(discord_server)
