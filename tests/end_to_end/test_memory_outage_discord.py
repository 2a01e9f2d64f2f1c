"""A Chroma outage through the Discord protocol peer: the bot runs on the HTTP backend against a real
``chroma run`` that is killed (-9) mid-use and started again on the same port and data folder.

While it is down: /find and the chat search answer "temporarily unavailable" (nobody is left on
"thinking…"), pictures are still analysed (👀), deletes and /forget are kept. Once it is back, without a
restart: the pictures are stored and findable, and what was taken back meanwhile is gone."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest_asyncio

from bot.memory import service as memory_service
from cogs.images import SEEN_REACTION
from tests.helpers import post_image, run_find, store_count, thumbnails, url_of, wait_reaction
from tests.imagebot_fixtures import bot_settings, running_imagebot

UNAVAILABLE = "temporarily unavailable"


@pytest_asyncio.fixture
async def http_bot(chroma_process, discord_server, discord_world, tiny_settings, analyzer, ollama, tmp_path, monkeypatch
                   ) -> AsyncIterator:
    """The production bot (tiny models) with its memory on the ``chroma_process`` server (tests/conftest.py)."""
    # The writer's backoff capped low: the test waits for the outcome, and should not wait a minute for it.
    monkeypatch.setattr(memory_service, "RETRY_MAX_S", 0.5)
    settings = bot_settings(tiny_settings, ollama, tmp_path, memory={
        "backend": "http", "host": "127.0.0.1", "port": chroma_process.port, "collection_prefix": "outage"})
    async with running_imagebot(discord_server, settings, analyzer) as bot:
        yield bot


async def test_chroma_killed_and_back_without_a_restart(http_bot, chroma_process, discord_server, discord_world, photos,
                                                        ollama):
    server, world, bot, chroma = discord_server, discord_world, http_bot, chroma_process
    guild, memory = world.guild.id, http_bot.services.memory
    kept = await post_image(server, world.general, world.alice, "astronaut", photos["astronaut"])
    deleted = await post_image(server, world.general, world.alice, "rocket", photos["rocket"])
    forgotten = await post_image(server, world.general, world.bob, "coffee", photos["coffee"])
    assert store_count(bot, guild) == 3
    await server.wait_until(lambda: bot.services.backlog.idle, timeout=20, what="their captions stored too")

    chroma.kill()

    # /find: answered privately with the memory's message, not left "thinking…".
    found = await run_find(server, world.general, world.alice, "a picture")
    assert UNAVAILABLE in found.content and found.ephemeral and not found.embeds
    # The chat search ("show me the dog picture") replies with the same message instead of nothing.
    await server.post_message(world.general, world.alice, f"<@{server.bot_user.id}> show me the dog picture")
    reply = await server.wait_for_message(world.general, predicate=lambda m: UNAVAILABLE in m.content, timeout=20)
    assert not reply.embeds and ollama.requests == []

    # A picture posted now is still looked at (👀), and waits for the store.
    posted = await server.post_message(world.general, world.alice, "",
                                       attachments=[("cat.jpg", photos["chelsea"], "image/jpeg")])
    await wait_reaction(server, posted, SEEN_REACTION)
    await server.wait_until(lambda: memory.waiting[0] == 1, what="the picture in the backlog")
    # A delete and a /forget that the store cannot take are kept, and /forget says so.
    await server.delete_message(deleted)
    await server.wait_until(lambda: memory.waiting == (1, 1), what="the delete queued")
    ix = await server.invoke_slash_command(world.general, world.bob, "forget")
    prompt = await server.wait_for_message(predicate=lambda m: m.interaction is ix, timeout=10)
    await server.click_button(prompt, "forget:yes", world.bob)
    await server.wait_until(lambda: prompt.content == memory_service.FORGET_QUEUED, what="/forget answered")
    assert memory.waiting == (1, 2)

    await asyncio.to_thread(chroma.start)  # the same port and data folder; the bot is not restarted

    await server.wait_until(lambda: memory.waiting == (0, 0), timeout=30, what="the backlog written")
    assert store_count(bot, guild) == 2
    found = await run_find(server, world.general, world.alice, "a picture")
    assert thumbnails(found) == {url_of(kept), url_of(posted)}
    assert url_of(deleted) not in thumbnails(found) and url_of(forgotten) not in thumbnails(found)


async def test_a_busy_queue_answers_find_and_chat_search(imagebot, discord_server, discord_world, photos, ollama):
    """The query vectors come from the inference queue: when it refuses (busy), both searches say so."""
    from bot.inference.errors import QueueBusy

    server, world = discord_server, discord_world
    await post_image(server, world.general, world.alice, "astronaut", photos["astronaut"])

    class Busy:
        async def embed_texts(self, texts):
            raise QueueBusy("test: the queue is full")

        clip_texts = embed_texts

    imagebot.services.memory.encoder = Busy()
    found = await run_find(server, world.general, world.alice, "a picture")
    assert found.content == QueueBusy.default_message and found.ephemeral
    await server.post_message(world.general, world.alice, f"<@{server.bot_user.id}> show me the dog picture")
    reply = await server.wait_for_message(world.general, timeout=20)
    assert reply.content == QueueBusy.default_message and ollama.requests == []
