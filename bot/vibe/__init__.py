"""/vibe: rate a photo as a profile picture (0-10) with visible parts and reasons, or compare two.

Discord-free core; ``cogs/vibe.py`` is the thin Discord surface. See :mod:`bot.vibe.score` for how
the parts are combined and why the result is deterministic.
"""

from bot.vibe.chart import bar_chart_png, comparison_chart
from bot.vibe.profile import PART_KEYS, VibeProfile, VibeProfileError, load_profile, parse_profile_text, profile_path
from bot.vibe.quality import QualityReport, measure_quality
from bot.vibe.render import render_comparison, render_result
from bot.vibe.score import Part, VibeComparison, VibeResult, VibeScorer, combine, compare_results
from bot.vibe.signals import STORY_SEED, STORY_TEMPERATURE

__all__ = [
    "PART_KEYS",
    "STORY_SEED",
    "STORY_TEMPERATURE",
    "Part",
    "QualityReport",
    "VibeComparison",
    "VibeProfile",
    "VibeProfileError",
    "VibeResult",
    "VibeScorer",
    "bar_chart_png",
    "combine",
    "compare_results",
    "comparison_chart",
    "load_profile",
    "measure_quality",
    "parse_profile_text",
    "profile_path",
    "render_comparison",
    "render_result",
]
