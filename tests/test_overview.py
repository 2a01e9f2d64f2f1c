"""The overview core (bot.overview) without Discord: the store reads it needs, /stats numbers and
charts, gallery order, the caption-vs-image agreement report, the backfill (progress, resume after a
crash, idempotency), and discovered topics (clustering, naming, privacy gating), plus the CLI."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bot.analysis import ImageAnalysis, Scored, Sentiment
from bot.cli import main as cli_main
from bot.config import MemorySettings, Settings
from bot.ingest import IncomingImage, IngestOutcome
from bot.ingest.backfill import NOT_STORED, Backfill, BackfillBusy, ScannedMessage
from bot.ingest.cursors import BackfillCursors
from bot.memory.records import ImageRef, StoredImage
from bot.memory.service import Audience
from bot.memory.store import AsyncImageStore, ImageStore
from bot.overview import topics as topics_module
from bot.overview.charts import stats_charts
from bot.overview.compare import compare_images, render_compare, report_dict
from bot.overview.gallery import SORTS, mood_note, sort_images
from bot.overview.paths import topic_model_path
from bot.overview.render import progress_text, report_text, stats_sections, topics_text
from bot.overview.service import Filters, OverviewService
from bot.overview.stats import MAX_BUCKETS, compute_stats, timeline, waiting_for_captions
from bot.overview.topics import (
    TopicModel,
    cluster_captions,
    distinctive_words,
    load_topic_model,
    save_topic_model,
)
from tests.helpers import ADULT, ALICE, BOB, CAROL, CLIP_DIM, GUILD_A, PRIVATE, PUBLIC, TEXT_DIM, count_bars

GUILD = GUILD_A
T0 = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)  # this module's own time zero, not tests.helpers.T0


# --------------------------------------------------------------------------- helpers


def ref(attachment_id: int, *, channel: int = PUBLIC, author: int = ALICE, when: datetime = T0, nsfw: bool = False,
        guild: int | None = GUILD) -> ImageRef:
    return ImageRef(
        attachment_id=attachment_id, message_id=attachment_id * 10, channel_id=channel, guild_id=guild,
        author_id=author, jump_url=f"https://discord.com/channels/{guild}/{channel}/{attachment_id * 10}",
        attachment_url=f"https://cdn.example/{attachment_id}.jpg", filename=f"{attachment_id}.jpg", created_at=when,
        nsfw=nsfw,
    )


def scores(label: str, strength: float = 0.8) -> dict[str, float]:
    rest = (1.0 - strength) / 2
    return {"negative": rest, "neutral": rest, "positive": rest, label: strength}


def analysis(*, caption: str = "a photo", sentiment: str = "neutral", image_sentiment: str | None = None,
             topic: str | None = "animals", caption_topic: str | None = None, labels: Sequence[str] = ("dog",),
             text_vector: np.ndarray | None = None, strength: float = 0.8, seed: int = 0) -> ImageAnalysis:
    rng = np.random.default_rng(seed)
    text = rng.standard_normal(TEXT_DIM) if text_vector is None else np.asarray(text_vector, dtype=float)
    clip = rng.standard_normal(CLIP_DIM)
    return ImageAnalysis(
        caption=caption,
        labels={"objects": [Scored(labels[0], 0.9)], **({"scenes": [Scored(labels[1], 0.7)]} if len(labels) > 1
                                                         else {})},
        sentiment=Sentiment.from_scores(scores(sentiment, strength)),
        image_sentiment=Sentiment.from_scores(scores(image_sentiment)) if image_sentiment else None,
        topics=[Scored(topic, 0.6)] if topic else [],
        caption_topics=[Scored(caption_topic or topic, 0.5)] if (caption_topic or topic) else [],
        caption_embedding=(text / np.linalg.norm(text)).tolist(),
        image_embedding=(clip / np.linalg.norm(clip)).tolist(),
        model_ids={"captioner": "test"},
        width=64, height=64, format="JPEG",
    )


def stored(attachment_id: int, *, when: datetime = T0, sentiment: str = "neutral", topic: str | None = "animals",
           caption_topic: str | None = None, image_sentiment: str | None = None, labels: Sequence[str] = ("dog",),
           author: int = ALICE, channel: int = PUBLIC, caption: str = "a photo", strength: float = 0.8
           ) -> StoredImage:
    return StoredImage(
        ref=ref(attachment_id, channel=channel, author=author, when=when), caption=caption, labels=list(labels),
        tags=list(labels), top_label_by_set={}, sentiment=sentiment, sentiment_scores=scores(sentiment, strength),
        image_sentiment=image_sentiment, topic=topic, caption_topic=caption_topic,
    )


def pending(attachment_id: int, *, mood: str = "positive", **kwargs) -> StoredImage:
    """A fast-tier record as the store reads it back: no caption yet, ``sentiment`` the image's own mood."""
    image = stored(attachment_id, sentiment=mood, image_sentiment=mood, **kwargs)
    return replace(image, caption="", caption_topic=None, caption_pending=True)


def fast(full: ImageAnalysis) -> ImageAnalysis:
    """The fast tier of ``full`` (what the pipeline stores first)."""
    return replace(full, caption="", caption_embedding=[], caption_topics=[], caption_pending=True,
                   sentiment=full.image_sentiment or full.sentiment)


def settings_for(tmp_path: Path) -> Settings:
    return Settings(memory=MemorySettings(path="chroma", collection_prefix="test"), base_dir=str(tmp_path))


@pytest.fixture
def store(tmp_path) -> ImageStore:
    return ImageStore.open(settings_for(tmp_path))


def everyone(guild: int | None = GUILD, channels=None, nsfw: bool = True, requester: int = ALICE) -> Audience:
    return Audience(requester, guild, None if channels is None else frozenset(channels), nsfw)


# --------------------------------------------------------------------------- store reads


def test_store_images_lists_only_what_the_audience_may_see(store):
    store._batch = 2  # several pages
    store.upsert(ref(1, when=T0), analysis())
    store.upsert(ref(2, channel=PRIVATE, author=BOB, when=T0 - timedelta(hours=1)), analysis())
    store.upsert(ref(3, channel=ADULT, nsfw=True, when=T0 + timedelta(hours=1)), analysis())
    store.upsert(ref(4, when=T0 - timedelta(days=1), author=BOB), analysis(sentiment="positive"))
    store.upsert(ref(5, guild=GUILD + 1), analysis())

    def ids(visible_channel_ids, allow_nsfw, **filters) -> list[int]:
        audience = Audience(ALICE, GUILD, visible_channel_ids, allow_nsfw)
        return [image.attachment_id for image in store.images(audience, Filters(**filters))]

    assert ids(visible_channel_ids=None, allow_nsfw=True) == [4, 2, 1, 3]  # oldest first, this guild only
    assert ids(visible_channel_ids={PUBLIC}, allow_nsfw=False) == [4, 1]
    assert ids(visible_channel_ids={PUBLIC, ADULT}, allow_nsfw=False) == [4, 1]  # NSFW needs an NSFW channel
    assert ids(visible_channel_ids=set(), allow_nsfw=True) == []
    assert ids(visible_channel_ids=None, allow_nsfw=True, author_id=BOB) == [4, 2]
    assert ids(visible_channel_ids=None, allow_nsfw=True, sentiment="positive") == [4]
    assert ids(visible_channel_ids={PUBLIC}, allow_nsfw=True, channel_id=PRIVATE) == []
    assert ids(visible_channel_ids=None, allow_nsfw=True, since=T0) == [1, 3]
    assert store.images(Audience(ALICE, GUILD + 7, None, True)) == []


def test_store_images_in_dms_are_the_requesters_own(store):
    store.upsert(ref(1, guild=None, author=ALICE), analysis())
    store.upsert(ref(2, guild=None, author=BOB), analysis())
    mine = store.images(Audience(ALICE, None, None, False))
    assert [image.attachment_id for image in mine] == [1]


def test_caption_vectors_come_back_with_their_records(store):
    store._batch = 2
    vectors = np.random.default_rng(3).standard_normal((5, TEXT_DIM))
    for index, vector in enumerate(vectors):
        store.upsert(ref(index + 1, when=T0 + timedelta(minutes=index)), analysis(text_vector=vector))
    images, found = store.caption_vectors(GUILD)
    assert [image.attachment_id for image in images] == [1, 2, 3, 4, 5]
    expected = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    assert found.shape == (5, TEXT_DIM) and np.allclose(found, expected, atol=1e-5)
    empty_images, empty = store.caption_vectors(GUILD + 1)
    assert empty_images == [] and empty.size == 0


def test_fast_tier_records_are_read_back_but_have_no_caption_vector(store):
    store.upsert(ref(1, when=T0), analysis(caption="a dog"))
    store.upsert(ref(2, when=T0 + timedelta(minutes=1)), fast(analysis(image_sentiment="negative", seed=2)))
    store.upsert(ref(3, when=T0 + timedelta(minutes=2), channel=PRIVATE), fast(analysis(seed=3)))
    images = store.images(Audience(ALICE, GUILD, frozenset({PUBLIC}), False))
    assert [(i.attachment_id, i.caption_pending) for i in images] == [(1, False), (2, True)]
    assert images[1].sentiment == "negative" and images[1].caption_sentiment is None
    negative = store.images(Audience(ALICE, GUILD, None, True), Filters(sentiment="negative"))
    assert [i.attachment_id for i in negative] == [2]  # a pending picture matches by its own mood
    with_vectors, vectors = store.caption_vectors(GUILD)
    assert [i.attachment_id for i in with_vectors] == [1] and vectors.shape == (1, TEXT_DIM)
    store.upsert(ref(2, when=T0 + timedelta(minutes=1)), analysis(caption="a cat", seed=2))  # the caption lands
    assert [i.attachment_id for i in store.caption_vectors(GUILD)[0]] == [1, 2]


def test_clustering_leaves_out_pictures_without_a_caption():
    vectors, _ = grouped_vectors(per_group=4)
    images = clustered_images(per_group=4)
    images[1] = replace(images[1], caption="", caption_pending=True)  # e.g. a caller that read all records
    model = cluster_captions(GUILD, images, vectors, k=3)
    assert model.images == 11 and images[1].attachment_id not in {m for c in model.clusters for m in c.members}


# --------------------------------------------------------------------------- stats


def sample_images() -> list[StoredImage]:
    return [
        stored(1, when=T0 - timedelta(days=2), sentiment="positive", topic="animals", labels=("dog", "park"),
               image_sentiment="positive"),
        stored(2, when=T0 - timedelta(days=2), sentiment="negative", topic="food and drink", labels=("cake",),
               author=BOB, image_sentiment="positive"),
        stored(3, when=T0 - timedelta(days=1), sentiment="positive", topic="animals", labels=("dog",), author=BOB),
        stored(4, when=T0, sentiment="neutral", topic=None, caption_topic="music", labels=("guitar", "park"),
               author=CAROL, channel=PRIVATE),
        stored(5, when=T0 - timedelta(days=40), sentiment="positive", topic="animals"),  # before the period
    ]


def test_compute_stats_counts_everything_the_charts_show():
    stats = compute_stats(sample_images(), since=T0 - timedelta(days=7), now=T0, granularity="day")
    assert stats.total == 4 and stats.channels == 2
    assert stats.sentiment_totals == {"negative": 1, "neutral": 1, "positive": 2}
    assert len(stats.timeline) == 8  # the 7 days back plus today, empty days included
    by_day = {bucket.label: bucket.counts for bucket in stats.timeline if bucket.total}
    assert by_day == {"2026-04-29": {"negative": 1, "neutral": 0, "positive": 1},
                      "2026-04-30": {"negative": 0, "neutral": 0, "positive": 1},
                      "2026-05-01": {"negative": 0, "neutral": 1, "positive": 0}}
    assert stats.topics == (("animals", 2), ("food and drink", 1), ("music", 1))  # caption topic as fallback
    assert stats.labels == (("dog", 2), ("park", 2), ("cake", 1), ("guitar", 1))  # ties by name
    assert stats.posters == ((BOB, 2), (ALICE, 1), (CAROL, 1))
    assert stats.image_sentiment_agreement == (1, 2)

    everything = compute_stats(sample_images(), since=None, now=T0)
    assert everything.total == 5 and everything.granularity == "day"  # 40 days of history: daily bars
    assert compute_stats([], since=None, now=T0).total == 0


def test_long_timelines_switch_to_wider_buckets():
    granularity, buckets = timeline([], T0 - timedelta(days=365), T0, "day")
    assert granularity == "week" and len(buckets) <= MAX_BUCKETS
    granularity, buckets = timeline([], T0 - timedelta(days=365 * 8), T0, "month")
    assert granularity == "year" and len(buckets) == 9


def test_stats_charts_draw_one_bar_per_value_in_known_colours():
    images = sample_images() + [stored(10 + i, when=T0 - timedelta(days=i % 5), sentiment=s, topic=f"$topic {i}$",
                                       labels=(f"label {i % 3}",), author=200 + i % 4)
                                for i, s in enumerate(["negative", "neutral", "positive"] * 4)]
    stats = compute_stats(images, since=T0 - timedelta(days=7), now=T0, granularity="day")
    charts = stats_charts(stats, {ALICE: "alice", BOB: "bob $rich$"})
    assert [chart.filename for chart in charts] == ["stats-mood.png", "stats-topics.png", "stats-labels.png",
                                                    "stats-posters.png"]
    for chart in charts:
        Image.open(io.BytesIO(chart.png)).verify()
        for series, colour in chart.colours.items():
            assert count_bars(chart.png, colour, chart) == chart.bars(series), (chart.filename, series)
    mood, topics, labels, posters = charts
    assert mood.bars("positive") == sum(1 for b in stats.timeline if b.counts["positive"])
    assert topics.bars("pictures") == len(stats.topics) == 10
    assert labels.categories == tuple(name for name, _ in stats.labels)
    assert posters.categories == ("200", "201", "202", "203", "bob $rich$", "alice", str(CAROL))
    assert "$topic 0$" in topics.alt_text
    assert stats_charts(stats, {ALICE: "alice"})[0].png == mood.png  # byte-identical: no timestamps


def test_stats_text_carries_the_chart_numbers():
    stats = compute_stats(sample_images(), since=None, now=T0)
    sections = stats_sections(stats, scope="all time")
    assert [s.title for s in sections] == ["Mood per day", "Top topics", "Top labels", "Busiest posters"]
    assert "**5 picture(s)** in 2 channel(s), all time." in sections[0].text
    assert "positive 3 (60%)" in sections[0].text
    assert "2026-04-29: 1 positive, 0 neutral, 1 negative" in sections[0].text
    assert "1. animals — 3 (60%)" in sections[1].text
    assert f"1. <@{ALICE}> — 2 (40%)" in sections[3].text and f"2. <@{BOB}> — 2 (40%)" in sections[3].text


def test_stats_count_pictures_waiting_for_their_caption_apart():
    """The mood chart is the captions' mood; a fast-tier picture's only mood is the image's own, so it is
    counted apart, while the topics, labels and posters (known from CLIP) include it."""
    images = [
        *sample_images(),
        pending(6, when=T0 - timedelta(days=1), mood="negative", topic="animals", labels=("dog",)),
        pending(7, when=T0, mood="positive", topic="travel", labels=("boat",), author=CAROL),
    ]
    stats = compute_stats(images, since=T0 - timedelta(days=7), now=T0, granularity="day")
    assert (stats.total, stats.pending, stats.captioned) == (6, 2, 4)
    assert stats.sentiment_totals == {"negative": 1, "neutral": 1, "positive": 2}  # as without them
    by_day = {bucket.label: bucket.counts for bucket in stats.timeline if bucket.total}
    assert by_day["2026-04-30"] == {"negative": 0, "neutral": 0, "positive": 1}  # not the pending negative one
    assert sum(bucket.total for bucket in stats.timeline) == 4
    assert stats.topics[:2] == (("animals", 3), ("food and drink", 1)) and ("travel", 1) in stats.topics
    assert ("dog", 3) in stats.labels and ("boat", 1) in stats.labels
    assert stats.posters == ((ALICE, 2), (BOB, 2), (CAROL, 2))  # pending pictures count for their posters
    assert stats.image_sentiment_agreement == (1, 2)  # their two moods are one reading, not an agreement

    text = stats_sections(stats, scope="in the last 7 days")[0].text
    assert "**6 picture(s)** in 2 channel(s)" in text
    assert "positive 2 (50%) · neutral 1 (25%) · negative 1 (25%)" in text  # shares of the captioned ones
    assert "2 pictures still waiting for their caption" in text
    mood = stats_charts(stats)[0]
    assert sum(map(sum, mood.series.values())) == 4
    assert "Not in this chart: 2 pictures still waiting for their caption." in mood.alt_text
    for series, colour in mood.colours.items():
        assert count_bars(mood.png, colour, mood) == mood.bars(series)

    only_pending = compute_stats([pending(1), pending(2)], since=None, now=T0)
    assert (only_pending.total, only_pending.pending, only_pending.sentiment_totals["positive"]) == (2, 2, 0)
    assert "positive 0 (0%)" in stats_sections(only_pending, scope="all time")[0].text
    assert waiting_for_captions(1) == "1 picture still waiting for its caption"
    assert "waiting" not in stats_sections(compute_stats(sample_images(), since=None, now=T0), scope="x")[0].text


# --------------------------------------------------------------------------- gallery order


def test_gallery_sorts():
    images = [
        stored(1, when=T0, sentiment="positive", strength=0.6, topic="travel"),
        stored(2, when=T0 + timedelta(hours=1), sentiment="negative", topic="animals"),
        stored(3, when=T0 - timedelta(hours=1), sentiment="positive", strength=0.9, topic=None),
        stored(4, when=T0 + timedelta(hours=2), sentiment="neutral", topic="animals"),
    ]

    def order(sort: str) -> list[int]:
        return [image.attachment_id for image in sort_images(images, sort)]

    assert order("newest") == [4, 2, 1, 3]
    assert order("oldest") == [3, 1, 2, 4]
    assert order("happiest") == [3, 1, 4, 2]
    assert order("saddest") == [2, 4, 1, 3]
    assert order("topic") == [4, 2, 1, 3]  # animals (newest first), travel, then no topic
    assert set(SORTS) == {"newest", "oldest", "happiest", "saddest", "topic"}


def test_gallery_mood_sorts_put_pictures_without_a_caption_last():
    """Their only mood is the image's own, on another scale: not ranked among caption moods, but after
    every captioned picture (newest first), in both mood orders; the other orders treat them like any."""
    images = [
        stored(1, when=T0, sentiment="positive", strength=0.6),
        stored(2, when=T0 + timedelta(hours=1), sentiment="negative"),
        pending(5, when=T0 - timedelta(hours=3), mood="positive", topic="travel"),
        pending(6, when=T0 + timedelta(hours=3), mood="negative", topic=None),
    ]

    def order(sort: str) -> list[int]:
        return [image.attachment_id for image in sort_images(images, sort)]

    assert order("happiest") == [1, 2, 6, 5]
    assert order("saddest") == [2, 1, 6, 5]
    assert order("newest") == [6, 2, 1, 5]
    assert order("topic") == [2, 1, 5, 6]  # animals, travel (by the image's topic), then no topic
    assert mood_note(images[2]) == "mood: waiting for the caption" and mood_note(images[0]) == "mood +0.40"


# --------------------------------------------------------------------------- compare


@pytest.fixture
def compare_store(store) -> ImageStore:
    """Chosen readings: sentiment agrees on 4 of 6 (one image has no image reading), topic on 3 of 6."""
    rows = [  # (caption sentiment, image sentiment, caption topic, image topic)
        ("positive", "positive", "animals", "animals"),
        ("positive", "positive", "animals", "pets"),
        ("negative", "negative", "food and drink", "food and drink"),
        ("neutral", "positive", "travel", "nature"),
        ("neutral", "neutral", "travel", "travel"),
        ("negative", "neutral", "music", "art"),
        ("positive", None, "animals", "animals"),
    ]
    for index, (cs, isent, ct, it) in enumerate(rows, start=1):
        store.upsert(ref(index, when=T0 + timedelta(minutes=index)),
                     analysis(caption=f"caption {index}", sentiment=cs, image_sentiment=isent, caption_topic=ct,
                              topic=it))
    return store


def test_compare_counts_agreement_per_class_with_kappa(compare_store):
    images = compare_store.images(Audience.everything(GUILD))
    report = compare_images(images, examples=5)
    sentiment = report.sentiment
    assert sentiment.classes == ("negative", "neutral", "positive")
    assert sentiment.matrix == ((1, 1, 0), (0, 1, 1), (0, 0, 2))  # rows: caption, columns: image
    assert (sentiment.compared, sentiment.agreed, sentiment.missing) == (6, 4, 1)
    # kappa by hand: po = 4/6; rows (2,2,2), cols (1,2,3): pe = (2+4+6)/36 = 1/3; (2/3-1/3)/(2/3) = 0.5
    assert sentiment.kappa == pytest.approx(0.5)
    positive = next(c for c in sentiment.per_class if c.label == "positive")
    assert (positive.caption, positive.image, positive.both) == (2, 3, 2)
    assert positive.caption_kept == 1.0 and positive.image_kept == pytest.approx(2 / 3)
    assert [image.attachment_id for image in sentiment.disagreements] == [6, 4]  # newest first

    topic = report.topic
    assert (topic.compared, topic.agreed, topic.missing) == (7, 4, 0)
    assert [image.attachment_id for image in topic.disagreements] == [6, 4, 2]
    text = render_compare(report)
    assert "agree on 4 of 6 images (67%), Cohen's kappa 0.50" in text
    assert "caption says neutral, image says positive: “caption 4”" in text
    assert report_dict(report)["sentiment"]["matrix"] == [[1, 1, 0], [0, 1, 1], [0, 0, 2]]


def test_compare_counts_pictures_without_a_caption_as_one_reading(compare_store):
    # Its "sentiment" is the image's own mood until the caption lands: the same reading twice, not agreement.
    compare_store.upsert(ref(8, when=T0 + timedelta(minutes=8)),
                         fast(analysis(sentiment="neutral", image_sentiment="positive", topic="animals")))
    images = compare_store.images(Audience.everything(GUILD))
    report = compare_images(images)
    assert report.images == 8 and report.pending == 1
    assert (report.sentiment.compared, report.sentiment.agreed, report.sentiment.missing) == (6, 4, 2)
    assert (report.topic.compared, report.topic.agreed, report.topic.missing) == (7, 4, 1)
    assert 8 not in {image.attachment_id for image in report.sentiment.disagreements + report.topic.disagreements}
    text = render_compare(report)
    assert text.startswith("8 stored image(s), 1 still waiting for their caption (only one reading each)")
    assert "2 image(s) with only one reading left out" in text
    assert report_dict(report)["pending"] == 1


def test_compare_folds_rare_classes_and_handles_nothing():
    images = [stored(i, topic=f"t{i}", caption_topic=f"t{i}") for i in range(1, 21)]
    text = render_compare(compare_images(images))
    assert "(other)" in text and "agree on 20 of 20" in text
    empty = compare_images([])
    assert empty.sentiment.kappa is None and "nothing to compare" in render_compare(empty)


def test_cli_compare_prints_the_report(compare_store, tmp_path, capsys):
    config = tmp_path / "config.toml"
    config.write_text('[memory]\npath = "chroma"\ncollection_prefix = "test"\n', encoding="utf-8")
    assert cli_main(["--config", str(config), "compare", "--guild", str(GUILD)]) == 0
    out = capsys.readouterr().out
    assert f"guild {GUILD}" in out and "== sentiment: caption text vs image (CLIP) ==" in out
    assert "== topic: caption text vs image (CLIP) ==" in out and "confusion matrix" in out
    assert cli_main(["--config", str(config), "compare", "--json"]) == 0
    assert '"agreed": 4' in capsys.readouterr().out


# --------------------------------------------------------------------------- backfill


class FakeIngestor:
    """Analyses instantly and "stores" into ``stored``; ``busy`` / ``broken`` ids misbehave."""

    def __init__(self, stored: set[int]) -> None:
        self.stored = stored
        self.calls: list[int] = []
        self.busy: dict[int, int] = {}  # attachment id -> how many more times it is "busy"
        self.broken: set[int] = set()
        self.unstored: set[int] = set()  # analysed but the store write fails

    async def ingest(self, images, *, user_id=0, channel_id=0, rate_limit=True) -> list[IngestOutcome]:
        assert rate_limit is False
        outcomes = []
        for image in images:
            aid = image.ref.attachment_id
            self.calls.append(aid)
            if self.busy.get(aid, 0) > 0:
                self.busy[aid] -= 1
                outcomes.append(IngestOutcome(image, problem="I'm busy.", code="busy"))
            elif aid in self.broken:
                outcomes.append(IngestOutcome(image, problem=f"{image.filename} is not an image.", code="rejected"))
            else:
                if aid not in self.unstored:
                    self.stored.add(aid)
                outcomes.append(IngestOutcome(image, analysis=analysis()))
        return outcomes


class FakeStore:
    def __init__(self, stored: set[int]) -> None:
        self.stored = stored

    async def has(self, guild_id, attachment_ids, *, user_id=None) -> set[int]:
        return set(attachment_ids) & self.stored


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def incoming(attachment_id: int) -> IncomingImage:
    async def read() -> bytes:
        return b"jpeg"

    return IncomingImage(key=attachment_id, filename=f"{attachment_id}.jpg", size=4, read=read,
                         ref=ref(attachment_id))


def channel_history(messages: list[ScannedMessage], *, clock: Clock | None = None, fail_after: int | None = None):
    """A channel's history, oldest first; ``after`` / ``limit`` like Discord's; each message takes 0.5 s."""
    seen: list[tuple[int | None, int | None]] = []

    async def history(after: int | None, limit: int | None) -> AsyncIterator[ScannedMessage]:
        seen.append((after, limit))
        chosen = [m for m in messages if after is None or m.message_id > after][:limit]
        for count, message in enumerate(chosen):
            if fail_after is not None and count == fail_after:
                raise ConnectionError("503 Service Unavailable")
            if clock is not None:
                clock.now += 0.5
            yield message

    history.seen = seen  # type: ignore[attr-defined]
    return history


def messages_with_images() -> list[ScannedMessage]:
    """10 messages: ids 1000..1009; even ones carry one image (id = message id + 1), 1003 carries two,
    1005 is text only, 1007 is a bot message."""
    out = []
    for i in range(10):
        mid = 1000 + i
        if i == 3:
            images = (incoming(mid * 10 + 1), incoming(mid * 10 + 2))
        elif i in (5, 7):
            images = ()
        else:
            images = (incoming(mid * 10 + 1),)
        out.append(ScannedMessage(mid, ALICE, images))
    return out


@pytest.fixture
def cursors(tmp_path) -> BackfillCursors:
    with BackfillCursors(tmp_path / "backfill.sqlite3") as db:
        yield db


async def test_backfill_indexes_reports_progress_and_a_rerun_adds_nothing(cursors):
    stored_ids: set[int] = set()
    ingestor, clock = FakeIngestor(stored_ids), Clock()
    backfill = Backfill(ingestor, FakeStore(stored_ids), cursors, progress_interval_s=2.0, clock=clock)
    reports = []

    async def progress(p):
        reports.append(p)

    history = channel_history(messages_with_images(), clock=clock)
    report = await backfill.run(GUILD, PUBLIC, history, limit=None, progress=progress)
    p = report.progress
    assert (p.scanned, p.images, p.indexed, p.skipped, p.failed) == (10, 9, 9, 0, 0)
    assert report.reached_end and report.cursor == 1009 and report.resumed_after is None
    # One at the start, then at most one per 2 s of (fake) time: 10 messages x 0.5 s -> 2 more.
    assert [r.scanned for r in reports] == [0, 4, 8]
    assert reports[1].rate == pytest.approx(2.0) and reports[1].limit is None and reports[1].eta_s is None
    assert sorted(ingestor.calls) == sorted(stored_ids) and len(stored_ids) == 9

    again = await backfill.run(GUILD, PUBLIC, history, limit=None)
    assert history.seen[-1] == (1009, None)  # continued after the cursor
    assert (again.progress.scanned, again.progress.indexed) == (0, 0) and again.reached_end
    assert len(ingestor.calls) == 9 and again.totals.indexed == 9 and again.totals.scanned == 10

    await backfill.reset(GUILD, PUBLIC)  # from the start: everything is known, nothing is analysed again
    rescan = await backfill.run(GUILD, PUBLIC, history, limit=None)
    assert (rescan.progress.scanned, rescan.progress.skipped, rescan.progress.indexed) == (10, 9, 0)
    assert len(ingestor.calls) == 9
    assert "9 already known" in progress_text(rescan.progress, channel="#general")
    assert "0 indexed**, 9 skipped" in report_text(rescan, channel="#general")


async def test_backfill_limit_eta_and_continue(cursors):
    stored_ids: set[int] = set()
    clock = Clock()
    backfill = Backfill(FakeIngestor(stored_ids), FakeStore(stored_ids), cursors, progress_interval_s=0, clock=clock)
    seen = []

    async def progress(p):
        seen.append(p)

    history = channel_history(messages_with_images(), clock=clock)
    first = await backfill.run(GUILD, PUBLIC, history, limit=4, progress=progress)
    assert (first.progress.scanned, first.cursor, first.reached_end) == (4, 1003, False)
    assert seen[2].eta_s == pytest.approx(1.0)  # 2 of 4 read in 1 s: 2 left at 2 messages/s
    assert "2 / 4 messages read" in progress_text(seen[2], channel="#general") and "ETA 1 s" in progress_text(
        seen[2], channel="#general")
    assert "Run `/index` again to continue" in report_text(first, channel="#general")
    second = await backfill.run(GUILD, PUBLIC, history, limit=100)
    assert history.seen[-1] == (1003, 100)
    assert (second.progress.scanned, second.reached_end, second.resumed_after) == (6, True, 1003)
    assert len(stored_ids) == 9


async def test_backfill_resumes_after_a_crash_without_redoing_work(cursors):
    stored_ids: set[int] = set()
    ingestor = FakeIngestor(stored_ids)
    backfill = Backfill(ingestor, FakeStore(stored_ids), cursors)
    messages = messages_with_images()

    broken = await backfill.run(GUILD, PUBLIC, channel_history(messages, fail_after=3), limit=None)
    assert broken.stopped_by == "503 Service Unavailable" and not broken.reached_end
    assert broken.cursor == 1002 and broken.progress.scanned == 3
    assert "stopped early" in report_text(broken, channel="#general")

    # The process dies in the middle of a message: the task is cancelled while its ingest runs.
    gate = asyncio.Event()

    class SlowIngestor(FakeIngestor):
        async def ingest(self, images, **kwargs):
            if images[0].ref.attachment_id == 10031:  # message 1003
                gate.set()
                await asyncio.sleep(3600)
            return await super().ingest(images, **kwargs)

    slow = SlowIngestor(stored_ids)
    crashing = Backfill(slow, FakeStore(stored_ids), cursors)
    task = asyncio.create_task(crashing.run(GUILD, PUBLIC, channel_history(messages), limit=None))
    await asyncio.wait_for(gate.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert cursors.get(GUILD, PUBLIC).after_id == 1002  # message 1003 was in flight

    resumed = await Backfill(ingestor, FakeStore(stored_ids), cursors).run(GUILD, PUBLIC, channel_history(messages))
    assert resumed.resumed_after == 1002 and resumed.progress.scanned == 7 and resumed.reached_end
    assert sorted(ingestor.calls) == sorted(stored_ids) and len(stored_ids) == 9  # every image analysed once
    assert resumed.totals.scanned == 10 and resumed.totals.indexed == 9


async def test_backfill_waits_out_a_busy_queue_and_reports_failures(cursors):
    stored_ids: set[int] = {10001}  # already stored before the run (posted live)
    ingestor = FakeIngestor(stored_ids)
    ingestor.busy = {10021: 2, 10041: 99}
    ingestor.broken = {10061}
    ingestor.unstored = {10081}
    pauses: list[float] = []

    async def sleep(seconds: float) -> None:
        pauses.append(seconds)

    backfill = Backfill(ingestor, FakeStore(stored_ids), cursors, busy_retries=3, busy_pause_s=1.0, sleep=sleep)
    report = await backfill.run(GUILD, PUBLIC, channel_history(messages_with_images()))
    p = report.progress
    assert (p.images, p.skipped, p.indexed, p.failed) == (9, 1, 5, 3)
    assert report.failures == {"I'm busy.": 1, "10061.jpg is not an image.": 1, NOT_STORED: 1}
    assert pauses == [1.0, 2.0, 1.0, 2.0, 3.0]  # 10021 got through on the 3rd try; 10041 never did
    assert 10001 not in ingestor.calls
    text = report_text(report, channel="#general")
    assert "• 1 × 10061.jpg is not an image." in text


async def test_backfill_refuses_a_second_run_on_the_same_channel(cursors):
    stored_ids: set[int] = set()
    gate = asyncio.Event()

    async def slow_history(after, limit):
        await gate.wait()
        yield ScannedMessage(1, ALICE)

    backfill = Backfill(FakeIngestor(stored_ids), FakeStore(stored_ids), cursors)
    first = asyncio.create_task(backfill.run(GUILD, PUBLIC, slow_history))
    await asyncio.sleep(0.05)
    assert backfill.running(GUILD, PUBLIC)
    with pytest.raises(BackfillBusy):
        await backfill.run(GUILD, PUBLIC, slow_history)
    other = await backfill.run(GUILD, PRIVATE, channel_history([]))  # another channel is fine
    assert other.progress.scanned == 0
    gate.set()
    assert (await first).progress.scanned == 1 and not backfill.running(GUILD, PUBLIC)


# --------------------------------------------------------------------------- topics


def grouped_vectors(groups: int = 3, per_group: int = 8, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((groups, TEXT_DIM))
    vectors = np.vstack([c + 0.15 * rng.standard_normal((per_group, TEXT_DIM)) for c in centres])
    return vectors, centres


CAPTIONS = ["a dog running on the beach", "a brown dog on a beach", "a dog playing with a ball on the beach",
            "a pizza with cheese on a plate", "a slice of pizza on a table", "a plate of pasta and pizza",
            "a red car parked on the street", "a blue car on a city street", "an old car on the street"]


def clustered_images(per_group: int = 8) -> list[StoredImage]:
    images = []
    for group in range(3):
        for index in range(per_group):
            aid = group * 100 + index + 1
            channel = PRIVATE if (group == 2 and index == 0) else PUBLIC
            images.append(stored(aid, caption=CAPTIONS[group * 3 + index % 3], channel=channel))
    return images


@pytest.mark.parametrize("backend", ["sklearn", "numpy"])
def test_clustering_finds_the_groups_and_names_them(backend, monkeypatch):
    if backend == "numpy":
        monkeypatch.setattr(topics_module, "_sklearn", lambda: None)
    vectors, centres = grouped_vectors()
    images = clustered_images()
    model = cluster_captions(GUILD, images, vectors, label_names=["animals", "food and drink", "cars and vehicles"],
                             label_vectors=centres, now=T0)
    assert model.k == 3 and model.images == 24
    assert model.method == ("kmeans (scikit-learn)" if backend == "sklearn" else "kmeans (numpy)")
    by_label = {cluster.label: cluster for cluster in model.clusters}
    assert set(by_label) == {"animals", "food and drink", "cars and vehicles"}
    assert {m // 100 for m in by_label["animals"].members} == {0} and by_label["animals"].size == 8
    assert "dog" in by_label["animals"].words and "beach" in by_label["animals"].words
    assert "pizza" in by_label["food and drink"].words and "car" in by_label["cars and vehicles"].words
    assert by_label["cars and vehicles"].channels == (PUBLIC, PRIVATE)  # sorted ids
    assert by_label["animals"].title.endswith("(≈ animals)")
    assert model.silhouette is not None and model.silhouette > 0.5


def test_clustering_small_and_fixed_k():
    vectors, _ = grouped_vectors(per_group=1)
    images = clustered_images(per_group=1)
    assert cluster_captions(GUILD, [], np.zeros((0, TEXT_DIM))).clusters == ()
    one = cluster_captions(GUILD, images[:1], vectors[:1])
    assert one.k == 1 and one.clusters[0].members == (1,) and one.clusters[0].label is None
    fixed = cluster_captions(GUILD, images, vectors, k=2)
    assert fixed.k == 2 and sum(c.size for c in fixed.clusters) == 3
    with pytest.raises(ValueError, match="vectors"):
        cluster_captions(GUILD, images, vectors[:2])


def test_distinctive_words_prefer_what_sets_a_cluster_apart():
    words = distinctive_words([["a dog on the grass", "a dog in the park"], ["a cat on the grass", "a cat sleeping"]])
    assert words[0][0] == "dog" and words[1][0] == "cat"
    assert "the" not in words[0] and "grass" not in words[0][:1]


def test_topic_model_round_trip_and_privacy_gate(tmp_path):
    vectors, _ = grouped_vectors()
    images = clustered_images()
    images[5] = replace(images[5], ref=ref(6, channel=ADULT, nsfw=True))
    model = cluster_captions(GUILD, images, vectors, now=T0)
    path = tmp_path / "topics.json"
    save_topic_model(model, path)
    assert load_topic_model(path) == model
    assert load_topic_model(tmp_path / "missing.json") is None
    (tmp_path / "bad.json").write_text("{", encoding="utf-8")
    assert load_topic_model(tmp_path / "bad.json") is None

    # Only someone who can read every channel a topic's captions come from sees its name.
    assert len(model.visible(None, True)) == 3
    public_only = model.visible({PUBLIC}, False)
    assert len(public_only) == 1 and public_only[0].channels == (PUBLIC,)
    assert len(model.visible({PUBLIC, PRIVATE}, False)) == 2  # the NSFW one needs allow_nsfw
    assert model.cluster(public_only[0].value) == public_only[0] and model.cluster("animals") is None
    text = topics_text(model, public_only)
    assert "more topic(s)" not in text and public_only[0].name in text
    assert "2 more topic(s)" in topics_text(model, public_only, refreshed=True)
    assert "No topics have been discovered" in topics_text(None, [])


async def test_service_reads_through_the_audience_and_discovered_topics(tmp_path):
    settings = settings_for(tmp_path)
    store = ImageStore.open(settings)
    vectors, centres = grouped_vectors()
    for image, vector in zip(clustered_images(), vectors, strict=True):
        when = T0 + timedelta(minutes=image.attachment_id)
        store.upsert(ref(image.attachment_id, channel=image.ref.channel_id, when=when),
                     analysis(caption=image.caption, text_vector=vector,
                              sentiment="positive" if image.attachment_id % 2 else "negative"))

    class Encoder:
        async def embed_texts(self, texts):
            assert texts[0] == "a picture about animals."
            return np.vstack([centres, np.zeros((len(texts) - 3, TEXT_DIM)) + 1e-3])

    service = OverviewService(AsyncImageStore(store), settings, encoder=Encoder())
    model = await service.refresh_topics(GUILD)
    assert topic_model_path(settings, GUILD).is_file() and model.k == 3
    assert {c.label for c in model.clusters} == {"animals", "pets", "food and drink"}  # the first 3 topic labels
    alice = everyone(channels={PUBLIC}, nsfw=False)
    visible = await service.clusters(alice)
    assert len(visible) == 2  # the third draws on #private too
    hidden = next(c for c in model.clusters if c not in visible)
    assert await service.images(alice, Filters(topic=hidden.value)) == []
    shown = await service.images(alice, Filters(topic=visible[0].value))
    assert {i.attachment_id for i in shown} == set(visible[0].members)
    assert len(await service.images(everyone(), Filters(topic=hidden.value))) == 8

    gallery = await service.gallery(alice, Filters(sentiment="positive"), sort="oldest")
    assert [i.attachment_id for i in gallery] == sorted(i.attachment_id for i in gallery) and len(gallery) == 11
    stats = await service.stats(alice, Filters(), period="all", now=T0 + timedelta(days=1))
    assert stats.total == 23 and stats.channels == 1
    with pytest.raises(ValueError, match="period"):
        await service.stats(alice, Filters(), period="decade", now=T0)
    assert isinstance(await service.topic_model(GUILD), TopicModel) and await service.topic_model(None) is None


async def test_service_stats_and_gallery_with_pictures_waiting_for_their_caption(tmp_path):
    settings = settings_for(tmp_path)
    store = ImageStore.open(settings)
    store.upsert(ref(1, when=T0), analysis(sentiment="positive", image_sentiment="positive"))
    store.upsert(ref(2, when=T0 + timedelta(minutes=1)), analysis(sentiment="negative"))
    store.upsert(ref(3, when=T0 + timedelta(minutes=2)), fast(analysis(image_sentiment="positive", seed=3)))
    store.upsert(ref(4, when=T0 + timedelta(minutes=3), channel=PRIVATE), fast(analysis(seed=4)))
    service = OverviewService(AsyncImageStore(store), settings)
    alice = everyone(channels={PUBLIC}, nsfw=False)
    stats = await service.stats(alice, Filters(), period="all", now=T0 + timedelta(hours=1))
    assert (stats.total, stats.pending) == (3, 1)
    assert stats.sentiment_totals == {"negative": 1, "neutral": 0, "positive": 1}
    assert stats.image_sentiment_agreement == (1, 1)
    happiest = await service.gallery(alice, Filters(), sort="happiest")
    assert [(image.attachment_id, image.caption_pending) for image in happiest] == [(1, False), (2, False), (3, True)]
    # The caption lands: the picture moves into the mood counts and among the moods.
    store.upsert(ref(3, when=T0 + timedelta(minutes=2)), analysis(sentiment="positive", strength=0.95, seed=3))
    stats = await service.stats(alice, Filters(), period="all", now=T0 + timedelta(hours=1))
    assert (stats.total, stats.pending, stats.sentiment_totals["positive"]) == (3, 0, 2)
    assert [image.attachment_id for image in await service.gallery(alice, Filters(), sort="happiest")] == [3, 1, 2]


def test_cli_topics_clusters_saves_and_prints(tmp_path, capsys, analyzer, monkeypatch):
    config = tmp_path / "config.toml"
    config.write_text('[models]\ndevice = "cpu"\noffline = true\n\n[memory]\npath = "chroma"\n'
                      'collection_prefix = "test"\n', encoding="utf-8")
    settings = settings_for(tmp_path)
    store = ImageStore.open(settings)
    vectors, _ = grouped_vectors()
    for image, vector in zip(clustered_images(), vectors, strict=True):
        store.upsert(ref(image.attachment_id, channel=image.ref.channel_id), analysis(caption=image.caption,
                                                                                      text_vector=vector))
    assert cli_main(["--config", str(config), "topics", "--guild", str(GUILD), "--no-labels"]) == 0
    out = capsys.readouterr().out
    assert f"guild {GUILD}: 3 topic(s) in 24 caption(s)" in out and "saved to" in out
    saved = load_topic_model(topic_model_path(settings, GUILD))
    assert saved is not None and saved.k == 3 and all(c.label is None for c in saved.clusters)
    # With labels: the captions' embedder (the real MiniLM, shipped as a package; the session's copy,
    # to skip a second load) embeds the fixed topic prompts.
    import bot.models.embedder

    monkeypatch.setattr(bot.models.embedder.TextEmbedder, "from_settings",
                        classmethod(lambda cls, settings: analyzer.embedder))
    assert cli_main(["--config", str(config), "topics", "--guild", str(GUILD), "--k", "2"]) == 0
    assert "nearest label:" in capsys.readouterr().out
    assert load_topic_model(topic_model_path(settings, GUILD)).k == 2
