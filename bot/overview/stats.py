"""The numbers behind /stats: sentiment over time, top topics, top labels, busiest posters.

Pure functions over :class:`~bot.memory.records.StoredImage` lists (already filtered to what the
requester may see), so the same numbers feed the charts and the embed text, and tests can check them
on hand-made records.

The mood is the caption's sentiment. A picture whose caption is not written yet (the fast tier:
labels and topic known, the caption seconds to minutes later) only has the image's own mood, a
different reading, so it is counted apart (:attr:`OverviewStats.pending`) instead of in the mood
counts; it is in the total, the topics, the labels and the posters like any other.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

from bot.analysis import SENTIMENT_LABELS
from bot.memory.records import StoredImage

Granularity = Literal["hour", "day", "week", "month", "year"]
#: /stats ``period`` choices: how far back, and how wide one bar of the timeline is (None: from the first image).
PERIODS: dict[str, tuple[timedelta | None, Granularity | None]] = {
    "day": (timedelta(days=1), "hour"),
    "week": (timedelta(days=7), "day"),
    "month": (timedelta(days=30), "day"),
    "quarter": (timedelta(days=91), "week"),
    "year": (timedelta(days=365), "month"),
    "all": (None, None),
}
#: More bars than this stop being readable on a phone: the timeline switches to wider buckets.
MAX_BUCKETS = 60
TOP_N = 10
NO_TOPIC = "(no topic)"
_COARSER: dict[Granularity, Granularity] = {"hour": "day", "day": "week", "week": "month", "month": "year",
                                            "year": "year"}


@dataclass(frozen=True)
class TimeBucket:
    start: datetime
    label: str
    counts: dict[str, int]  # sentiment label -> images

    @property
    def total(self) -> int:
        return sum(self.counts.values())


@dataclass(frozen=True)
class OverviewStats:
    total: int
    since: datetime | None
    until: datetime
    granularity: Granularity
    sentiment_totals: dict[str, int]
    timeline: tuple[TimeBucket, ...]
    topics: tuple[tuple[str, int], ...]  # top topics, most images first
    labels: tuple[tuple[str, int], ...]
    posters: tuple[tuple[int, int], ...]  # (author id, images)
    channels: int
    # How often the caption's sentiment matches the image's own (CLIP) one: (agree, compared).
    image_sentiment_agreement: tuple[int, int]
    # Pictures still waiting for their caption: in ``total`` (and topics, labels, posters), not in the moods.
    pending: int = 0

    @property
    def captioned(self) -> int:
        """Pictures in the mood counts (their caption is written)."""
        return self.total - self.pending


def period_start(period: str, now: datetime) -> datetime | None:
    """The start of a /stats period (None: all time); raises KeyError for an unknown period."""
    span, _ = PERIODS[period]
    return None if span is None else now - span


def bucket_start(moment: datetime, granularity: Granularity) -> datetime:
    moment = moment.astimezone(UTC)
    if granularity == "hour":
        return moment.replace(minute=0, second=0, microsecond=0)
    day = moment.replace(hour=0, minute=0, second=0, microsecond=0)
    if granularity == "day":
        return day
    if granularity == "week":
        return day - timedelta(days=day.weekday())  # ISO weeks start on Monday
    if granularity == "month":
        return day.replace(day=1)
    return day.replace(month=1, day=1)


def next_bucket(start: datetime, granularity: Granularity) -> datetime:
    if granularity == "hour":
        return start + timedelta(hours=1)
    if granularity == "day":
        return start + timedelta(days=1)
    if granularity == "week":
        return start + timedelta(days=7)
    if granularity == "month":
        return start.replace(year=start.year + start.month // 12, month=start.month % 12 + 1)
    return start.replace(year=start.year + 1)


def bucket_label(start: datetime, granularity: Granularity) -> str:
    if granularity == "hour":
        return start.strftime("%m-%d %H:00")
    if granularity == "day":
        return start.strftime("%Y-%m-%d")
    if granularity == "week":
        year, week, _ = start.isocalendar()
        return f"{year}-W{week:02d}"
    if granularity == "month":
        return start.strftime("%Y-%m")
    return start.strftime("%Y")


def auto_granularity(first: datetime, last: datetime) -> Granularity:
    span = last - first
    if span <= timedelta(days=2):
        return "hour"
    if span <= timedelta(days=45):
        return "day"
    if span <= timedelta(days=366):
        return "week"
    return "month"


def timeline(images: Sequence[StoredImage], start: datetime, end: datetime, granularity: Granularity
             ) -> tuple[Granularity, tuple[TimeBucket, ...]]:
    """Caption sentiment counts per bucket from ``start`` to ``end``, empty buckets included (a gap is
    information); pictures still waiting for their caption are not counted."""
    while True:
        starts = [bucket_start(start, granularity)]
        while next_bucket(starts[-1], granularity) <= end:
            starts.append(next_bucket(starts[-1], granularity))
        if len(starts) <= MAX_BUCKETS or granularity == "year":
            break
        granularity = _COARSER[granularity]
    counts: dict[datetime, Counter[str]] = {s: Counter() for s in starts}
    for image in images:
        key = bucket_start(image.ref.created_at, granularity)
        if key in counts and image.caption_sentiment is not None:
            counts[key][image.caption_sentiment] += 1
    buckets = tuple(
        TimeBucket(s, bucket_label(s, granularity), {name: counts[s][name] for name in SENTIMENT_LABELS})
        for s in starts
    )
    return granularity, buckets


def _top(counter: Counter, n: int) -> tuple:
    # Most first; ties broken by name so the same data always draws the same chart.
    return tuple(sorted(counter.items(), key=lambda item: (-item[1], str(item[0])))[:n])


def topic_of(image: StoredImage) -> str:
    """The topic an image is counted under: the image's (CLIP) topic, else its caption's."""
    return image.topic or image.caption_topic or NO_TOPIC


def waiting_for_captions(count: int) -> str:
    """``3 pictures still waiting for their caption`` (words for the text and the chart's alt text)."""
    return f"{count} picture{'' if count == 1 else 's'} still waiting for {'its' if count == 1 else 'their'} caption"


def compute_stats(images: Iterable[StoredImage], *, since: datetime | None, now: datetime,
                  granularity: Granularity | None = None, top: int = TOP_N) -> OverviewStats:
    """Everything /stats shows, from the images the requester may see (already filtered)."""
    kept = [image for image in images if (since is None or image.ref.created_at >= since)
            and image.ref.created_at <= now]
    first = since or (min(image.ref.created_at for image in kept) if kept else now)
    granularity = granularity or auto_granularity(first, now)
    granularity, buckets = timeline(kept, first, now, granularity)
    sentiments = Counter(image.caption_sentiment for image in kept if image.caption_sentiment is not None)
    labels: Counter[str] = Counter()
    for image in kept:
        labels.update(set(image.labels))  # a label counts once per image
    compared = [image for image in kept if image.image_sentiment and image.caption_sentiment is not None]
    return OverviewStats(
        total=len(kept),
        since=since,
        until=now,
        granularity=granularity,
        sentiment_totals={name: sentiments[name] for name in SENTIMENT_LABELS},
        timeline=buckets,
        topics=_top(Counter(topic_of(image) for image in kept), top),
        labels=_top(labels, top),
        posters=_top(Counter(image.ref.author_id for image in kept), top),
        channels=len({image.ref.channel_id for image in kept}),
        image_sentiment_agreement=(sum(image.image_sentiment == image.sentiment for image in compared),
                                   len(compared)),
        pending=sum(image.caption_pending for image in kept),
    )
