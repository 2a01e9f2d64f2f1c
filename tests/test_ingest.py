"""Ingestion logic directly (the cogs only translate Discord objects into these calls)."""

from __future__ import annotations

import pytest
import pytest_asyncio

from bot.config import ImageSettings, RateLimitSettings
from bot.inference import InferenceQueue
from bot.ingest import ImageIngestor, IncomingImage


def incoming(key, data: bytes, *, size: int | None = None, reads: list | None = None) -> IncomingImage:
    async def read() -> bytes:
        if reads is not None:
            reads.append(key)
        return data

    return IncomingImage(key=key, filename=f"{key}.jpg", size=size, read=read)


@pytest_asyncio.fixture
async def queue(analyzer, tiny_settings):
    async with InferenceQueue(analyzer, tiny_settings.queue, tiny_settings.images) as running:
        yield running


def make(tiny_settings, queue, **changes) -> ImageIngestor:
    settings = tiny_settings.model_copy(update=changes)
    return ImageIngestor(settings, queue)


async def test_all_images_of_a_message_are_analysed_in_order(tiny_settings, queue, photos):
    ingestor = make(tiny_settings, queue)
    names = ["astronaut", "chelsea", "coffee"]
    outcomes = await ingestor.ingest([incoming(n, photos[n]) for n in names], user_id=1, channel_id=2)
    assert [o.image.key for o in outcomes] == names
    assert all(o.ok for o in outcomes)
    assert [o.analysis.width for o in outcomes] == [512, 451, 600]  # each caller got its own image


async def test_replayed_images_are_not_analysed_twice(tiny_settings, queue, photos):
    ingestor = make(tiny_settings, queue)
    reads: list = []
    first = await ingestor.ingest([incoming(7, photos["rocket"], reads=reads)])
    again = await ingestor.ingest([incoming(7, photos["rocket"], reads=reads)])
    assert reads == [7]
    assert again[0].analysis is first[0].analysis


async def test_oversized_attachment_is_refused_before_download(tiny_settings, queue, photos):
    ingestor = make(tiny_settings, queue, images=ImageSettings(max_bytes=1000))
    reads: list = []
    [outcome] = await ingestor.ingest([incoming("big", photos["rocket"], size=50_000, reads=reads)])
    assert reads == [] and outcome.code == "rejected"
    assert "limit" in outcome.problem


@pytest.mark.parametrize(("data", "code"), [(b"", "rejected"), (b"GIF89a broken", "rejected")])
async def test_bad_files_get_a_readable_reason(tiny_settings, queue, data, code):
    [outcome] = await make(tiny_settings, queue).ingest([incoming("bad", data)])
    assert outcome.code == code and outcome.problem and "Traceback" not in outcome.problem


async def test_per_message_cap_and_rate_limits(tiny_settings, queue, photos):
    ingestor = make(tiny_settings, queue, images=ImageSettings(max_images_per_message=2),
                    rate_limits=RateLimitSettings(per_user=3, per_channel=100))
    batch = [incoming(i, photos["coffee"]) for i in range(3)]
    outcomes = await ingestor.ingest(batch, user_id=1, channel_id=1)
    assert [o.code for o in outcomes] == [None, None, "rejected"]
    more = await ingestor.ingest([incoming(i, photos["coffee"]) for i in range(10, 12)], user_id=1, channel_id=1)
    assert [o.code for o in more] == [None, "rate_limited"]
    assert "try again in" in more[1].problem
    # Another user in the same channel is not affected by alice's limit.
    [other] = await ingestor.ingest([incoming(20, photos["coffee"])], user_id=2, channel_id=1)
    assert other.ok
