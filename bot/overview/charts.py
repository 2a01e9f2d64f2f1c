"""/stats charts as PNG bytes: sentiment over time, top topics, top labels, busiest posters.

matplotlib's object API with the Agg canvas, never pyplot (global figure state, GUI backends; the bot
renders from worker threads). Every chart has a fixed size and fixed margins, so where the plot area
lies in the PNG is known (:func:`plot_box`): tests count the bars by their exact colours inside it,
and :class:`Chart` carries the numbers drawn, for alt text and assertions. Colours are the
Okabe-Ito colour-blind-safe palette.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal

from bot.analysis import SENTIMENT_LABELS
from bot.overview.stats import OverviewStats, waiting_for_captions

WIDTH_IN, HEIGHT_IN, DPI = 7.0, 3.6, 100
SENTIMENT_COLOURS: Final = {"negative": "#d55e00", "neutral": "#999999", "positive": "#0072b2"}
TOPIC_COLOUR: Final = "#009e73"
LABEL_COLOUR: Final = "#e69f00"
POSTER_COLOUR: Final = "#cc79a7"
Orientation = Literal["vertical", "horizontal"]
# Axes position as figure fractions (left, bottom, right, top): fixed, never tight_layout, so the
# plot area is the same in every PNG of a kind.
MARGINS: Final[dict[Orientation, tuple[float, float, float, float]]] = {
    "vertical": (0.08, 0.24, 0.97, 0.80),
    "horizontal": (0.30, 0.10, 0.93, 0.84),
}
MAX_NAME = 28


@dataclass(frozen=True)
class Chart:
    """One rendered chart and what it shows."""

    filename: str
    title: str
    png: bytes
    orientation: Orientation
    categories: tuple[str, ...]
    series: dict[str, tuple[int, ...]]  # series name -> one value per category
    colours: dict[str, str]  # series name -> bar colour
    alt_text: str = field(default="")

    def bars(self, series: str) -> int:
        """Bars drawn for a series: one per non-zero value (a zero draws nothing)."""
        return sum(1 for value in self.series[series] if value > 0)

    @property
    def plot_box(self) -> tuple[int, int, int, int]:
        return plot_box(self.orientation)


def plot_box(orientation: Orientation) -> tuple[int, int, int, int]:
    """The plot area in PNG pixels (left, top, right, bottom), origin top-left."""
    left, bottom, right, top = MARGINS[orientation]
    width, height = WIDTH_IN * DPI, HEIGHT_IN * DPI
    return round(left * width), round((1 - top) * height), round(right * width), round((1 - bottom) * height)


def _text(value: str, limit: int = MAX_NAME) -> str:
    """User-made names drawn as plain text: ``$`` would start matplotlib's mathtext."""
    value = " ".join(value.split())
    if len(value) > limit:
        value = value[: limit - 1] + "…"
    return value.replace("$", r"\$")


def _figure(orientation: Orientation, title: str):  # -> tuple[Figure, Axes]
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(WIDTH_IN, HEIGHT_IN), dpi=DPI)
    FigureCanvasAgg(figure)
    left, bottom, right, top = MARGINS[orientation]
    axes = figure.add_axes((left, bottom, right - left, top - bottom))
    axes.spines[["top", "right"]].set_visible(False)
    figure.suptitle(_text(title, 80), fontsize=10, y=0.98)
    return figure, axes


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    # No "Software" text chunk: the same numbers give byte-identical PNGs.
    figure.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()


def timeline_chart(stats: OverviewStats) -> Chart:
    """Stacked bars per time bucket, one colour per sentiment; the legend sits above the plot area."""
    from matplotlib.ticker import MaxNLocator

    title = f"Mood of the pictures per {stats.granularity}"
    figure, axes = _figure("vertical", title)
    positions = list(range(len(stats.timeline)))
    bottoms = [0] * len(positions)
    series: dict[str, tuple[int, ...]] = {}
    for name in SENTIMENT_LABELS:
        values = [bucket.counts[name] for bucket in stats.timeline]
        series[name] = tuple(values)
        axes.bar(positions, values, width=0.75, bottom=bottoms, color=SENTIMENT_COLOURS[name], label=name)
        bottoms = [b + v for b, v in zip(bottoms, values, strict=True)]
    step = max(1, -(-len(positions) // 8))  # at most ~8 tick labels
    axes.set_xticks(positions[::step], [stats.timeline[i].label for i in positions[::step]], fontsize=7,
                    rotation=30, ha="right")
    axes.set_xlim(-0.6, len(positions) - 0.4)
    axes.set_ylim(0, max([*bottoms, 1]) * 1.1)
    axes.yaxis.set_major_locator(MaxNLocator(integer=True))
    axes.tick_params(axis="y", labelsize=7)
    axes.set_ylabel("pictures", fontsize=8)
    axes.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=3, frameon=False, fontsize=8)
    per_bucket = "; ".join(f"{b.label}: " + ", ".join(f"{b.counts[n]} {n}" for n in reversed(SENTIMENT_LABELS))
                           for b in stats.timeline if b.total)
    alt = f"{title}. " + (per_bucket or "No pictures.")
    if stats.pending:  # counted apart: their only mood so far is the image's own, a different reading
        alt += f" Not in this chart: {waiting_for_captions(stats.pending)}."
    return Chart("stats-mood.png", title, _png(figure), "vertical", tuple(b.label for b in stats.timeline),
                 series, dict(SENTIMENT_COLOURS), alt[:1000])


def ranking_chart(filename: str, title: str, rows: Sequence[tuple[str, int]], colour: str) -> Chart:
    """Horizontal bars, biggest on top, the count written at the end of each bar."""
    from matplotlib.ticker import MaxNLocator

    figure, axes = _figure("horizontal", title)
    names = [_text(name) for name, _ in rows]
    values = [count for _, count in rows]
    positions = list(range(len(rows)))
    bars = axes.barh(positions, values, height=0.7, color=colour)
    axes.bar_label(bars, labels=[str(v) for v in values], fontsize=7, padding=2, color="black")
    axes.set_yticks(positions, names, fontsize=8)
    axes.set_ylim(len(rows) - 0.5 if rows else 0.5, -0.5)  # first row on top
    axes.set_xlim(0, max([*values, 1]) * 1.12)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.tick_params(axis="x", labelsize=7)
    alt = f"{title}: " + (", ".join(f"{name} {count}" for name, count in rows) or "none")
    return Chart(filename, title, _png(figure), "horizontal", tuple(name for name, _ in rows),
                 {"pictures": tuple(values)}, {"pictures": colour}, alt[:1000])


def stats_charts(stats: OverviewStats, name_of: Callable[[int], str] | Mapping[int, str] = str) -> list[Chart]:
    """The four /stats charts, in the order the embeds show them. ``name_of`` turns author ids into
    display names (the chart cannot show a mention)."""
    lookup: Callable[[int], str] = name_of.get if isinstance(name_of, Mapping) else name_of  # type: ignore[assignment]
    posters = [(lookup(author) or str(author), count) for author, count in stats.posters]
    return [
        timeline_chart(stats),
        ranking_chart("stats-topics.png", "Top topics", stats.topics, TOPIC_COLOUR),
        ranking_chart("stats-labels.png", "Top labels", stats.labels, LABEL_COLOUR),
        ranking_chart("stats-posters.png", "Busiest posters", posters, POSTER_COLOUR),
    ]
