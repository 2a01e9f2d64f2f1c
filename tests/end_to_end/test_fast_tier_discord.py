"""The fast tier end to end, through the Discord protocol peer: a picture stored with only its CLIP
reading (labels, topic, the image's own mood; the caption not written yet) is findable at once, its
cards say the caption is not written yet (never a blank caption) and still show labels and mood, /stats
counts it apart from the caption moods; once the complete record lands for the same attachment, /find
shows the caption.

The record is stored the way ingestion stores it, through ``MemoryService.remember``; the picture is
posted for real first (so its message, channel and thumbnail exist) and its live record taken out
again, so that the test decides which tier the store holds."""

from __future__ import annotations

from dataclasses import replace

from bot.analysis import PENDING_CAPTION, ImageAnalysis
from bot.imaging import decode_image
from tests.helpers import command, post_image, run_find, thumbnails

TIMEOUT = 30.0


def fast_tier(full: ImageAnalysis) -> ImageAnalysis:
    """What the fast tier stores for ``full``'s picture: no caption yet, the image's own mood."""
    return replace(full, caption="", caption_embedding=[], caption_topics=[], caption_pending=True,
                   sentiment=full.image_sentiment or full.sentiment)


def fields(embed: dict) -> dict[str, str]:
    return {field["name"]: field["value"] for field in embed.get("fields", [])}


async def test_find_shows_a_fast_tier_picture_then_its_caption(imagebot, discord_server, discord_world, photos,
                                                               analyzer):
    server, world = discord_server, discord_world
    guild = world.guild.id
    posted = await post_image(server, world.general, world.alice, "astronaut", photos["astronaut"])
    attachment = posted.attachments[0].id
    memory = imagebot.services.memory
    store = memory.store.store
    # Let live ingestion finish with this picture (its complete record stored), then take that record out.
    await server.wait_until(lambda: store.has(guild, [attachment], captioned=True) == {attachment},
                            timeout=TIMEOUT, what="the live record stored")
    ref = store.get(guild, [attachment])[attachment].ref
    assert store.delete_attachments(guild, [attachment]) == 1

    full = analyzer.analyze([decode_image(photos["astronaut"])])[0]
    assert full.caption and not full.caption_pending
    assert await memory.remember(ref, fast_tier(full)) is True
    assert store.get(guild, [attachment])[attachment].caption_pending

    found = await run_find(server, world.general, world.alice, "a picture")
    assert thumbnails(found) == {posted.attachments[0].url}
    card = found.embeds[0]
    assert card["title"] == PENDING_CAPTION and "caption not written yet" in card["title"]
    shown = fields(card)
    assert shown["Labels"] == ", ".join(full.top_labels)
    assert shown["Mood"] == f"{fast_tier(full).sentiment.label} (from the picture)"
    assert full.caption not in found.all_text()

    # The other readers: the gallery card says the same; /stats counts it apart from the caption moods.
    _, gallery = await command(server, world.general, world.alice, "gallery", sort="happiest")
    assert gallery.embeds[0]["title"] == PENDING_CAPTION
    assert "mood: waiting for the caption" in gallery.embeds[0]["footer"]["text"]
    _, stats = await command(server, world.general, world.alice, "stats")
    headline = stats.embeds[0]["description"]
    assert "**1 picture(s)**" in headline and "1 picture still waiting for its caption" in headline

    # The caption tier lands: the same attachment id, the complete record.
    assert await memory.remember(ref, full) is True
    found = await run_find(server, world.general, world.alice, "a picture")
    card = found.embeds[0]
    assert card["title"] == full.caption[:256]
    assert fields(card)["Mood"] == full.sentiment.label
    assert "caption not written yet" not in found.all_text()
    # A late or replayed fast tier does not take the caption away again.
    assert await memory.remember(ref, fast_tier(full)) is True
    assert store.get(guild, [attachment])[attachment].caption == full.caption
    _, stats = await command(server, world.general, world.alice, "stats")
    assert "waiting for" not in stats.embeds[0]["description"]
