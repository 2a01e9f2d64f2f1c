"""Fixtures that run the real ImageBot (tiny models) against the fake Discord and Ollama servers.

    async def test_something(imagebot, discord_server, discord_world, ollama): ...

``imagebot`` is the production ``bot.client.ImageBot`` with the production cogs; only the
network endpoints (the two local protocol peers) and the model weights (tiny stand-ins) differ.
Tweak settings per test with ``@pytest.mark.imagebot_settings(section={"key": value})``.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from bot.config import Settings
from tests.harness.fixtures import make_fast, running_bot
from tests.harness.ollama_server import FakeOllamaServer


def bot_settings(base: Settings, ollama: FakeOllamaServer, data_dir: Path, **sections: dict) -> Settings:
    """``base`` pointed at the local Ollama peer and a per-test data folder, with overrides."""
    update: dict[str, object] = {
        "llm": base.llm.model_copy(update={"base_url": ollama.base_url, "model": ollama.model, "timeout_s": 5.0}),
        "memory": base.memory.model_copy(update={"path": str(data_dir / "chroma")}),
        "discord": base.discord.model_copy(update={"heartbeat_file": str(data_dir / "heartbeat.json")}),
    }
    for name, values in sections.items():
        current = update.get(name, getattr(base, name))
        update[name] = current.model_copy(update=values)  # type: ignore[union-attr]
    return base.model_copy(update=update)


@pytest_asyncio.fixture
async def ollama() -> AsyncIterator[FakeOllamaServer]:
    async with FakeOllamaServer() as server:
        yield server


def marked_settings(request, tiny_settings: Settings, ollama: FakeOllamaServer, data_dir: Path, **sections: dict
                    ) -> Settings:
    """:func:`bot_settings` with the test's ``@pytest.mark.imagebot_settings(...)`` overrides (and ``sections``)."""
    marker = request.node.get_closest_marker("imagebot_settings")
    return bot_settings(tiny_settings, ollama, data_dir, **{**sections, **(marker.kwargs if marker else {})})


@contextlib.asynccontextmanager
async def running_imagebot(discord_server, settings: Settings, analyzer) -> AsyncIterator:
    """The production ImageBot on ``settings`` with ``analyzer`` as its models, connected to the peer."""
    from bot.client import ImageBot
    from bot.services import Services

    bot = ImageBot(settings, Services(settings, analyzer_factory=lambda: analyzer))
    make_fast(bot)
    async with running_bot(discord_server, bot):
        yield bot


@pytest_asyncio.fixture
async def imagebot(request, discord_server, discord_world, tiny_settings, analyzer, ollama, tmp_path):
    async with running_imagebot(discord_server, marked_settings(request, tiny_settings, ollama, tmp_path),
                                analyzer) as bot:
        yield bot


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "imagebot_settings(**sections): per-test settings overrides")
