"""Fixtures that run the real ImageBot (tiny models) against the fake Discord and Ollama servers.

    async def test_something(imagebot, discord_server, discord_world, ollama): ...

``imagebot`` is the production ``bot.client.ImageBot`` with the production cogs; only the
network endpoints (the two local protocol peers) and the model weights (tiny stand-ins) differ.
Tweak settings per test with ``@pytest.mark.imagebot_settings(section={"key": value})``.
"""

from __future__ import annotations

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


@pytest_asyncio.fixture
async def imagebot(request, discord_server, discord_world, tiny_settings, analyzer, ollama, tmp_path):
    from bot.client import ImageBot
    from bot.services import Services

    marker = request.node.get_closest_marker("imagebot_settings")
    settings = bot_settings(tiny_settings, ollama, tmp_path, **(marker.kwargs if marker else {}))
    bot = ImageBot(settings, Services(settings, analyzer_factory=lambda: analyzer))
    make_fast(bot)
    async with running_bot(discord_server, bot):
        yield bot


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "imagebot_settings(**sections): per-test settings overrides")
