"""Passive posts under load, through the Discord protocol peer: the durable two-tier backlog.

The production bot with tiny models; the captioner is wrapped so a test can hold the caption tier
(a threading.Event the model thread waits on) and so observe what happens *between* the tiers. Every
wait is for an event or a state; nothing asserts a duration. (That interactive work overtakes a
background batch *inside* the models, between layers, is tested event-ordered at the queue level in
tests/test_inference_queue.py; a caption held here waits before touching a model.)
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
import pytest_asyncio

from bot.memory.store import Audience
from cogs.images import SEEN_REACTION
from tests.helpers import reacted, user_prompt
from tests.imagebot_fixtures import marked_settings, running_imagebot


class HeldCaptions:
    """The real tiny Analyzer, except that its caption tier waits until the test releases it."""

    def __init__(self, analyzer: Any) -> None:
        self._analyzer = analyzer
        self.release = threading.Event()
        self.captioning = threading.Event()  # set while a caption batch is waiting in the model thread

    def caption(self, images: Any) -> Any:
        self.captioning.set()
        self.release.wait(60)
        return self._analyzer.caption(images)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._analyzer, name)


@pytest_asyncio.fixture
async def held(analyzer):
    held = HeldCaptions(analyzer)
    yield held
    held.release.set()


@pytest_asyncio.fixture
async def held_bot(request, discord_server, discord_world, tiny_settings, held, ollama, tmp_path):
    async with running_imagebot(discord_server, marked_settings(request, tiny_settings, ollama, tmp_path),
                                held) as bot:
        yield bot
    held.release.set()


def stored(bot, guild_id) -> dict[int, Any]:
    store = bot.services.memory.store.store
    return {image.ref.attachment_id: image for image in store.images(Audience.everything(guild_id))}


async def post(server, channel, user, name, data, text=""):
    return await server.post_message(channel, user, text, attachments=[(name, data, "image/jpeg")])


async def test_a_picture_is_findable_before_its_caption_exists(held_bot, held, discord_server, discord_world,
                                                               photos):
    world = discord_world
    message = await post(discord_server, world.general, world.alice, "cat.jpg", photos["chelsea"])
    await discord_server.wait_until(lambda: reacted(discord_server, message, SEEN_REACTION), timeout=20,
                                    what="👀 after first look")
    assert not held.release.is_set()  # the caption tier has not run: the 👀 came from the first look
    records = stored(held_bot, world.guild.id)
    [record] = records.values()
    assert record.caption_pending
    ix = await discord_server.invoke_slash_command(world.general, world.bob, "find", {"query": "a cat"})
    result = await discord_server.wait_for_message(predicate=lambda m: m.interaction is ix, timeout=20)
    assert "caption not written yet" in result.all_text()
    held.release.set()
    await discord_server.wait_until(lambda: not stored(held_bot, world.guild.id)[record.ref.attachment_id]
                                    .caption_pending, timeout=20, what="the caption tier")
    # The record is written before the backlog lets the picture go (the ledger is updated after the
    # store), so wait for that step too.
    await discord_server.wait_until(lambda: held_bot.services.backlog.gauges()["backlog_caption"] == 0,
                                    timeout=20, what="the backlog let the captioned picture go")


async def test_interactive_search_is_not_stuck_behind_background_captions(held_bot, held, discord_server,
                                                                          discord_world, photos):
    world = discord_world
    for name in ("astronaut", "rocket", "coffee"):
        await post(discord_server, world.general, world.alice, f"{name}.jpg", photos[name])
    await discord_server.wait_until(lambda: held.captioning.is_set(), timeout=20, what="a caption batch held")
    # The model thread is inside a background caption batch and will stay there: /find must answer anyway.
    ix = await discord_server.invoke_slash_command(world.general, world.bob, "find", {"query": "rocket"})
    result = await discord_server.wait_for_message(predicate=lambda m: m.interaction is ix, timeout=20)
    assert "rocket" in result.all_text().lower() or "caption not written yet" in result.all_text()
    assert not held.release.is_set()


async def test_a_mention_about_a_waiting_picture_gets_its_caption_first(held_bot, held, discord_server,
                                                                        discord_world, photos, ollama):
    world = discord_world
    posted = await post(discord_server, world.general, world.alice, "rocket.jpg", photos["rocket"])
    await discord_server.wait_until(lambda: reacted(discord_server, posted, SEEN_REACTION), timeout=20,
                                    what="first look")
    held.release.set()  # an interactive caption must not wait forever behind a held background one
    await discord_server.post_message(world.general, world.bob, f"<@{discord_server.bot_user.id}> what is it?")
    await discord_server.wait_for_message(world.general, timeout=20)
    prompt = user_prompt(ollama)
    assert "caption not written yet" not in prompt
    assert held_bot.services.cache.get(posted.attachments[0].id).caption in prompt


@pytest.mark.imagebot_settings(queue={"max_queued": 2, "max_batch_size": 2},
                               rate_limits={"per_user": 1000, "per_channel": 1000})
async def test_a_burst_is_never_answered_busy_and_drains_without_a_restart(held_bot, held, discord_server,
                                                                          discord_world, photos):
    world = discord_world
    held.release.set()
    names = sorted(photos)
    posted = []
    for index in range(24):
        user = world.alice if index % 2 else world.bob
        posted.append(await post(discord_server, world.general, user, f"p{index}.jpg",
                                 photos[names[index % len(names)]]))
    await discord_server.wait_until(lambda: all(reacted(discord_server, m, SEEN_REACTION) for m in posted),
                                    timeout=60, what="👀 on every picture")
    await discord_server.wait_until(
        lambda: len(records := stored(held_bot, world.guild.id)) == 24 and
        not any(r.caption_pending for r in records.values()), timeout=60, what="every record complete")
    assert discord_server.bot_messages(world.general) == []  # no "busy", no reply of any kind


async def test_a_delete_wins_over_a_caption_that_lands_later(held_bot, held, discord_server, discord_world,
                                                             photos):
    world = discord_world
    message = await post(discord_server, world.general, world.alice, "cat.jpg", photos["chelsea"])
    await discord_server.wait_until(lambda: held.captioning.is_set(), timeout=20, what="its caption batch held")
    assert len(stored(held_bot, world.guild.id)) == 1  # the first look is stored
    await discord_server.delete_message(message)
    await discord_server.wait_until(lambda: not stored(held_bot, world.guild.id), timeout=20, what="delete sync")
    held.release.set()
    backlog = held_bot.services.backlog
    await discord_server.wait_until(lambda: not backlog.waiting(message.attachments[0].id), timeout=20,
                                    what="the caption tier to land")
    assert stored(held_bot, world.guild.id) == {}
    assert backlog.gauges()["backlog_done_total"] == 0


@pytest.mark.imagebot_settings(ingest={"max_backlog": 2, "fast_in_flight": 1})
async def test_past_its_bound_the_backlog_drops_the_oldest_waiting_pictures_and_counts_them(
        held_bot, held, discord_server, discord_world, photos):
    world, server = discord_world, discord_server
    held.release.set()
    backlog = held_bot.services.backlog
    server.cdn_hold = asyncio.Event()  # every download waits: the pictures pile up in the backlog
    first = await post(server, world.general, world.alice, "p1.jpg", photos["astronaut"])
    await server.wait_until(lambda: server.cdn_waiting == 1, what="the first picture being downloaded")
    later = [await post(server, world.general, world.bob, f"p{i}.jpg", photos["rocket"]) for i in (2, 3, 4)]
    await server.wait_until(lambda: backlog.dropped == 2, what="two pictures dropped")
    server.cdn_hold.set()
    await server.wait_until(lambda: backlog.idle, timeout=20, what="the backlog drained")
    kept = {first.attachments[0].id, later[-1].attachments[0].id}  # the one in progress and the newest
    assert set(stored(held_bot, world.guild.id)) == kept
    assert backlog.gauges()["backlog_dropped_total"] == 2
    assert await held_bot.services.memory.pending() == []  # dropped ones are not resumed after a restart
    assert server.bot_messages(world.general) == []  # a drop is logged and counted, not replied to
