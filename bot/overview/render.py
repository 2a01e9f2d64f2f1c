"""Words for the overview replies: the numbers behind every chart, progress lines, summaries.

Plain text with Discord markdown (mentions render as names inside embeds and never ping), kept apart
from the cog so tests can read it without Discord. The chart numbers are always in the text too: a
screen reader cannot read a PNG.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from bot.analysis import SENTIMENT_LABELS
from bot.ingest.backfill import BackfillProgress, BackfillReport
from bot.overview.stats import OverviewStats, waiting_for_captions
from bot.overview.topics import TopicCluster, TopicModel

MAX_TIMELINE_LINES = 20
MAX_NAME = 40


@dataclass(frozen=True)
class Section:
    title: str
    text: str


def _name(value: str) -> str:
    value = " ".join(value.split()).replace("`", "'")
    return value if len(value) <= MAX_NAME else value[: MAX_NAME - 1] + "…"


def _share(part: int, whole: int) -> str:
    return f"{round(100 * part / whole)}%" if whole else "0%"


def ranking(rows: Sequence[tuple[str, int]], total: int) -> str:
    return "\n".join(f"{place}. {name} — {count} ({_share(count, total)})"
                     for place, (name, count) in enumerate(rows, start=1)) or "none"


def stats_sections(stats: OverviewStats, *, scope: str) -> list[Section]:
    """One section per chart, in chart order; the first also carries the headline numbers."""
    total = stats.total
    moods = " · ".join(
        f"{name} {stats.sentiment_totals[name]} ({_share(stats.sentiment_totals[name], stats.captioned)})"
        for name in reversed(SENTIMENT_LABELS))
    agree, compared = stats.image_sentiment_agreement
    headline = [f"**{total} picture(s)** in {stats.channels} channel(s), {scope}.",
                f"Mood (from the captions): {moods}."]
    if stats.pending:
        headline.append(f"{waiting_for_captions(stats.pending)}: counted in the topics, labels and posters, "
                        "not in the mood until it is written.")
    if compared:
        headline.append(f"The pictures' own mood (CLIP) agrees with the caption's on {agree} of {compared} "
                        f"({_share(agree, compared)}).")
    busy = [bucket for bucket in stats.timeline if bucket.total]
    shown = busy[-MAX_TIMELINE_LINES:]
    per_bucket = [f"{bucket.label}: " + ", ".join(f"{bucket.counts[name]} {name}"
                                                  for name in reversed(SENTIMENT_LABELS))
                  for bucket in shown]
    if len(busy) > len(shown):
        per_bucket.insert(0, f"(the {len(shown)} most recent of {len(busy)} {stats.granularity}s with pictures)")
    return [
        Section(f"Mood per {stats.granularity}", "\n".join([*headline, "", *per_bucket])),
        Section("Top topics", ranking([(_name(t), n) for t, n in stats.topics], total)),
        Section("Top labels", ranking([(_name(t), n) for t, n in stats.labels], total)),
        Section("Busiest posters", ranking([(f"<@{author}>", n) for author, n in stats.posters], total)),
    ]


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def progress_text(progress: BackfillProgress, *, channel: str) -> str:
    """``done / total / rate / ETA``: total is this run's message limit (the history's length is unknown)."""
    total = f" / {progress.limit}" if progress.limit is not None else ""
    return (
        f"Indexing {channel}… {progress.scanned}{total} messages read · {progress.images} picture(s) found: "
        f"{progress.indexed} indexed, {progress.skipped} already known, {progress.failed} failed · "
        f"{progress.rate:.1f} messages/s · ETA {_duration(progress.eta_s)}"
    )


def report_text(report: BackfillReport, *, channel: str, max_reasons: int = 8) -> str:
    p = report.progress
    if report.stopped_by:
        head = f"Indexing {channel} stopped early: {report.stopped_by[:200]}"
        tail = "Run `/index` again to continue where it stopped."
    elif report.reached_end:
        head = f"Indexed {channel} up to its newest message."
        tail = "Running `/index` again later picks up only what was posted since."
    else:
        head = f"Indexed the next {p.scanned} messages of {channel}."
        tail = "Run `/index` again to continue with the next ones."
    lines = [
        head,
        f"**{p.indexed} indexed**, {p.skipped} skipped (already known), {p.failed} failed — "
        f"{p.images} picture(s) in {p.scanned} message(s), {_duration(p.elapsed_s)}.",
    ]
    if report.failures:
        lines.append("Failed:")
        for reason, count in list(report.failures.items())[:max_reasons]:
            lines.append(f"• {count} × {reason[:160]}")
        if len(report.failures) > max_reasons:
            lines.append(f"• … and {len(report.failures) - max_reasons} other reason(s)")
    if report.totals is not None:
        t = report.totals
        lines.append(f"All runs in this channel: {t.scanned} messages read, {t.indexed} indexed, {t.skipped} skipped, "
                     f"{t.failed} failed.")
    lines.append(tail)
    return "\n".join(lines)


def cluster_line(cluster: TopicCluster) -> str:
    return f"**{_name(cluster.name)}**" + (f" (≈ {cluster.label})" if cluster.label else "") + \
        f" — {cluster.size} picture(s)"


def topics_text(model: TopicModel | None, visible: Sequence[TopicCluster], *, refreshed: bool = False) -> str:
    if model is None:
        return "No topics have been discovered here yet: an admin can run `/topics refresh`."
    head = (f"Discovered {model.k} topic(s) in {model.images} picture(s)" if refreshed
            else f"Topics discovered in {model.images} picture(s) on {model.created_at:%Y-%m-%d %H:%M} UTC")
    lines = [head + f" ({model.method}" + (f", silhouette {model.silhouette:.2f}" if model.silhouette is not None
                                           else "") + "):"]
    lines += [f"{place}. {cluster_line(c)}" for place, c in enumerate(visible, start=1)]
    hidden = len(model.clusters) - len(visible)
    if hidden and refreshed:  # only the admin who refreshed learns that such topics exist
        lines.append(f"({hidden} more topic(s) draw on channels you cannot read, so they are not shown.)")
    if not model.clusters:
        lines.append("no pictures to cluster yet.")
    lines.append("Browse one with `/gallery topic:`.")
    return "\n".join(lines)
