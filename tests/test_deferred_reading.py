"""Deferred reading: under a backlog a first look skips the text reader (OCR) and the picture's words
come with its complete analysis instead (``ingest.read_in_first_look_below``).

Why: on a 2-core CPU the reader (~39 ms a photo, 0.3-1 s a picture with text, one picture at a time in
the model turn) took a 150-picture burst's findable p95 from 6.2 s to 16.3 s. What must hold:

- the queue carries the choice per job (``analyze_fast(read_text=False)``): the record says
  ``text_pending`` with no words, one batch mixes jobs that read and jobs that don't;
- through the Discord peer, with the threshold low, a screenshot posted among other pictures has its
  first look stored without its words, and once the backlog is idle ``/find`` finds it by its words
  first, its card showing them: the deferred words arrived with the complete analysis;
- with the default threshold a single screenshot's words are in its first look.

The analyzer is the tiny random-weight models plus the real reader (RapidOCR's weights ship in its wheel).
"""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import pytest
from PIL import Image

from bot.analysis import ImageAnalysis
from bot.config import IngestSettings
from bot.imaging import decode_image
from bot.inference import InferenceQueue, Priority
from bot.memory.records import ImageRef
from bot.memory.store import ImageStore
from bot.memory.words import searchable_text
from cogs.images import SEEN_REACTION
from tests import hostile_corpus as corpus
from tests.helpers import (
    GUILD_A,
    analysis,
    queue_settings,
    ref,
    run_find,
    screenshot,
    settings_for,
    wait_reaction,
)

LINES = ["Error: disk quota exceeded", "ask the admin for more space"]
PHRASE = "disk quota exceeded"
OTHER = ["meeting moved to 5pm", "bring the slides"]
# Several pictures in one message must not trip the per-user/per-channel limits.
MANY = {"rate_limits": {"per_user": 1000, "per_channel": 1000}}


def jpeg(data: bytes) -> bytes:
    return corpus.encode(Image.open(io.BytesIO(data)).convert("RGB"), "JPEG", quality=90)


# ----------------------------------------------------------------------------- the record


def test_text_pending_round_trips_and_survives_the_caption(analyzer) -> None:
    """The flag is part of the record wherever it travels as a dict (the ledger, Ray's wire), and
    adding the caption does not pretend the words were read."""
    (record,) = analyzer.analyze_fast([decode_image(screenshot(LINES))], read=[False])
    assert record.text == "" and record.text_pending and record.caption_pending
    assert ImageAnalysis.from_dict(record.to_dict()) == record
    (part,) = analyzer.caption([decode_image(screenshot(LINES))])
    assert record.with_caption(part).text_pending
    # Older dicts without the key are records whose words were read.
    old = record.to_dict()
    del old["text_pending"]
    assert not ImageAnalysis.from_dict(old).text_pending


def test_ingest_setting_defaults_and_bounds() -> None:
    assert IngestSettings().read_in_first_look_below == 4
    assert IngestSettings(read_in_first_look_below=0).read_in_first_look_below == 0
    with pytest.raises(ValueError):
        IngestSettings(read_in_first_look_below=-1)


def test_the_complete_record_writes_the_words_a_first_look_left_out(tmp_path) -> None:
    """The store keeps a picture's searchable words as its clip entry's document, written on upsert: the
    complete record (not a caption-only merge) replaces the unread first look's empty document."""
    store = ImageStore.open(settings_for(tmp_path, path="chroma", collection_prefix="test"))
    full = replace(analysis(caption="a terminal window"), text="\n".join(LINES))
    unread = replace(full, caption="", caption_embedding=[], caption_topics=[], caption_pending=True,
                     text="", text_pending=True)
    store.upsert(ref(7), unread)  # the clip collection is made here
    clip = store.client.get_collection(store.collection_name(GUILD_A, None, "clip"), embedding_function=None)
    assert clip.get(ids=["7"], include=["documents"])["documents"] == [""]
    store.upsert(ref(7), full)
    assert clip.get(ids=["7"], include=["documents"])["documents"] == [searchable_text(full.text)]
    assert store.get(GUILD_A, [7])[7].text == full.text


# ----------------------------------------------------------------------------- the queue


async def test_a_first_look_without_reading_has_no_words_and_says_so(analyzer) -> None:
    shot = screenshot(LINES)
    async with InferenceQueue(analyzer, queue_settings()) as queue:
        unread, _ = await queue.analyze_fast(shot, filename="shot.png", read_text=False)
        read, _ = await queue.analyze_fast(shot, filename="shot.png")
        full = await queue.analyze(shot, filename="shot.png", priority=Priority.BACKGROUND)
    assert unread.text == "" and unread.text_pending and unread.caption_pending
    assert read.text == "\n".join(LINES) and not read.text_pending
    assert full.text == read.text and not full.text_pending  # what completes the unread one
    # Everything else of the first look is the same either way.
    assert unread.labels == read.labels and unread.image_embedding == read.image_embedding


async def test_one_batch_mixes_first_looks_that_read_and_that_do_not(analyzer, monkeypatch) -> None:
    flags: list[list[bool] | None] = []
    original = analyzer.analyze_fast

    def spy(images: Sequence[Any], *, read: Sequence[bool] | None = None) -> list[ImageAnalysis]:
        flags.append(None if read is None else list(read))
        return original(images, read=read)

    monkeypatch.setattr(analyzer, "analyze_fast", spy)
    shots = [screenshot(LINES), screenshot(OTHER), screenshot(LINES), screenshot(OTHER)]
    wanted = [True, False, False, True]
    async with InferenceQueue(analyzer, queue_settings(max_batch_size=4, max_wait_ms=500)) as queue:
        results = await asyncio.gather(*(queue.analyze_fast(data, filename="x.png", read_text=flag)
                                         for data, flag in zip(shots, wanted, strict=True)))
    records = [record for record, _ in results]
    assert [record.text_pending for record in records] == [not flag for flag in wanted]
    assert [record.text for record in records] == ["\n".join(LINES), "", "", "\n".join(OTHER)]
    # At least one batch held both kinds (the flags travel per job, not per batch).
    assert any(batch and True in batch and False in batch for batch in flags), flags


# ----------------------------------------------------------------------------- through Discord


class Remembered:
    """Every record the bot stores, in order (wraps ``MemoryService.remember`` on the running bot)."""

    def __init__(self, memory: Any) -> None:
        self.records: list[tuple[int, ImageAnalysis]] = []
        self._remember = memory.remember

    async def __call__(self, ref: ImageRef, analysis: ImageAnalysis) -> bool:
        self.records.append((ref.attachment_id, analysis))
        return bool(await self._remember(ref, analysis))

    def of(self, attachment_id: int) -> list[ImageAnalysis]:
        return [analysis for rid, analysis in self.records if rid == attachment_id]


@pytest.mark.imagebot_settings(ingest={"read_in_first_look_below": 2}, **MANY)
async def test_under_a_backlog_the_words_come_with_the_complete_analysis(imagebot, discord_server, discord_world,
                                                                        photos, caplog) -> None:
    server, world = discord_server, discord_world
    memory = imagebot.services.memory
    remembered = Remembered(memory)
    memory.remember = remembered  # the backlog calls it on this object
    caplog.set_level(logging.INFO, logger="bot.ingest.backlog")
    # The screenshot first: all five wait for their first look when it is taken (2 or more: no reading).
    attachments = [
        ("quota.png", screenshot(LINES), "image/png"),
        ("rocket.jpg", photos["rocket"], "image/jpeg"),
        ("other.png", screenshot(OTHER), "image/png"),
        ("astronaut.jpg", photos["astronaut"], "image/jpeg"),
        ("lunch.jpg", jpeg(screenshot(["lunch is at noon"])), "image/jpeg"),
    ]
    posted = await server.post_message(world.general, world.alice, "a burst", attachments=attachments)
    await wait_reaction(server, posted, SEEN_REACTION, timeout=30.0)
    await server.wait_until(lambda: imagebot.services.backlog.idle, timeout=120, what="every picture analysed")

    target = posted.attachments[0]
    # Not vacuous: the screenshot's first look really was stored without its words...
    first, *_, last = remembered.of(target.id)
    assert first.caption_pending and first.text_pending and first.text == ""
    # ...and its complete record, which replaced it, has them.
    assert not last.caption_pending and not last.text_pending and PHRASE in last.text.lower()
    assert imagebot.services.backlog.gauges()["backlog_text_deferred_total"] >= 1
    assert any("skip the text reader" in record.getMessage() for record in caplog.records)

    found = await run_find(server, world.general, world.bob, PHRASE)
    card = found.embeds[0]
    assert card["thumbnail"]["url"] == target.url
    snippet = next(field["value"] for field in card["fields"] if field["name"] == "Text in the picture")
    assert PHRASE in snippet.lower()


@pytest.mark.imagebot_settings(**MANY)
async def test_by_default_a_single_screenshots_first_look_reads_its_words(imagebot, discord_server, discord_world
                                                                         ) -> None:
    server, world = discord_server, discord_world
    memory = imagebot.services.memory
    remembered = Remembered(memory)
    memory.remember = remembered
    posted = await server.post_message(world.general, world.alice, "", attachments=[
        ("quota.png", screenshot(LINES), "image/png")])
    await wait_reaction(server, posted, SEEN_REACTION, timeout=30.0)
    await server.wait_until(lambda: imagebot.services.backlog.idle, timeout=120, what="the picture analysed")
    first = remembered.of(posted.attachments[0].id)[0]
    assert first.caption_pending and not first.text_pending and PHRASE in first.text.lower()
    assert imagebot.services.backlog.gauges()["backlog_text_deferred_total"] == 0
