"""A small PNG bar chart of two photos' parts side by side (the /vibe compare attachment).

matplotlib's object API with the Agg canvas, never pyplot: pyplot keeps global figure state and
picks a GUI backend, neither of which belongs in a bot that renders from worker threads.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Final

from bot.vibe.score import PART_NAMES, VibeComparison

#: Series colours (colour-blind safe blue / orange); tests find the bars by these exact colours.
SERIES_COLOURS: Final = ("#1f77b4", "#ff7f0e")
TOTAL_LABEL: Final = "total"


def bar_chart_png(groups: Sequence[str], series: Sequence[tuple[str, Sequence[float]]], *, title: str = "") -> bytes:
    """Grouped bars on a 0-10 axis: one group per entry of ``groups``, one bar per series in each."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not 1 <= len(series) <= len(SERIES_COLOURS):
        raise ValueError(f"between 1 and {len(SERIES_COLOURS)} series, got {len(series)}")
    figure = Figure(figsize=(7.0, 3.4), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    width = 0.8 / len(series)
    for index, (name, values) in enumerate(series):
        if len(values) != len(groups):
            raise ValueError(f"series {name!r} has {len(values)} values for {len(groups)} groups")
        offsets = [g + (index - (len(series) - 1) / 2) * width for g in range(len(groups))]
        bars = axes.bar(offsets, values, width=width * 0.92, label=name, color=SERIES_COLOURS[index])
        axes.bar_label(bars, labels=[f"{v:.1f}" for v in values], fontsize=7, padding=1, color="black")
    axes.set_xticks(range(len(groups)), list(groups), fontsize=8)
    axes.set_ylim(0, 11)
    axes.set_yticks(range(0, 11, 2))
    axes.set_ylabel("0-10", fontsize=8)
    axes.spines[["top", "right"]].set_visible(False)
    # Legend above the plot, never over a bar.
    axes.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=len(series), frameon=False, fontsize=8)
    if title:
        figure.suptitle(title, fontsize=9, y=0.99)
    figure.tight_layout()
    buffer = io.BytesIO()
    # No "Software" text chunk: the same comparison gives byte-identical PNGs across matplotlib versions.
    figure.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()


def comparison_chart(comparison: VibeComparison, names: tuple[str, str] = ("Photo 1", "Photo 2")) -> bytes:
    """The parts both photos were judged on, plus the total, side by side."""
    groups = [PART_NAMES[key] for key in comparison.keys] + [TOTAL_LABEL]
    series = []
    for side, name in enumerate(names):
        result = comparison.results[side]
        values = [result.part(key).score10 or 0.0 for key in comparison.keys] + [comparison.scores[side]]
        series.append((name, values))
    return bar_chart_png(groups, series)
