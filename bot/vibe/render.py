"""The /vibe reply text: the score, the top reasons in plain words, and the caption it judged.

Showing the caption is the fix for the recipe's invented tie: everything but the pixel measurements
flows from CLIP and the caption, so when the caption is wrong the user can see it and discount the
score. Markdown is Discord's, but nothing here imports discord.
"""

from __future__ import annotations

import re
from typing import Final

from bot.vibe.score import (
    BETTER_AT,
    LLM_NOT_CONFIGURED,
    LLM_OFFLINE,
    PART_NAMES,
    VibeComparison,
    VibeResult,
    effective_weights,
)

MAX_REPLY_CHARS: Final = 2000
MAX_SHOWN_CAPTION: Final = 200
MAX_SHOWN_STORY: Final = 240
_MARKDOWN = re.compile(r"([\\*_~`|>#\[\]<])")
_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9._ ()+-]")
_SIGN = {1: "+", -1: "−", 0: "·"}


def quote(text: str, limit: int) -> str:
    """Model output made inert for Discord: one line, markdown and mentions escaped, length capped."""
    text = " ".join(text.split())
    if len(text) > limit:
        text = text[: limit - 1].rstrip() + "…"
    return _MARKDOWN.sub(r"\\\1", text)


def safe_name(filename: str | None) -> str:
    if not filename:
        return ""
    name = _UNSAFE_NAME.sub("", filename.replace("\\", "/").rsplit("/", 1)[-1]).strip(" .")[:60]
    return name


def parts_line(result: VibeResult, keys: tuple[str, ...] | None = None) -> str:
    """``look (CLIP) 8.2 ×35% · sharpness 9.0 ×15% · ... · story skipped``: the whole sum, visible."""
    shares = effective_weights(result.parts, keys)
    pieces = []
    for part in result.parts:
        if keys is not None and part.key not in keys:
            continue
        if part.score10 is None:
            pieces.append(f"{part.name} skipped")
        else:
            pieces.append(f"{part.name} {part.score10:.1f} ×{shares[part.key]:.0%}")
    return " · ".join(pieces)


def skip_notes(result: VibeResult) -> list[str]:
    notes = []
    for part in result.skipped:
        if part.reason == LLM_OFFLINE:
            notes.append("The story part was skipped because my language model is offline; "
                         "the other parts were re-weighted.")
        elif part.reason == LLM_NOT_CONFIGURED:
            notes.append("The story part was skipped (no language model configured); the other parts were re-weighted.")
        else:
            notes.append(f"The {part.name} part was {part.reason}; the other parts were re-weighted.")
    return notes


def render_result(result: VibeResult) -> str:
    lines = [
        f"**Vibe check: {result.score:.1f}/10** — {result.band}.",
        f'Judged from this caption: "{quote(result.caption, MAX_SHOWN_CAPTION)}" '
        "(if that's wrong, the look and story parts are off too).",
        "**Why:**",
    ]
    lines += [f"{_SIGN[reason.sign]} {reason.text}" for reason in result.reasons()]
    lines.append(f"Parts (0-10 × share): {parts_line(result)}")
    if result.story:
        lines.append(f'Story (temperature 0): "{quote(result.story, MAX_SHOWN_STORY)}"')
    lines += skip_notes(result)
    return _fit("\n".join(lines))


def render_comparison(comparison: VibeComparison) -> str:
    first, second = comparison.results
    names = [_photo_name(1, first), _photo_name(2, second)]
    a, b = comparison.scores
    if comparison.winner is None:
        lines = [f"**It's a tie: {a:.1f} vs {b:.1f}.**"]
    else:
        win, lose = comparison.winner, 1 - comparison.winner
        lines = [f"**{names[win]} wins: {comparison.scores[win]:.1f} vs {comparison.scores[lose]:.1f}**"]
        advantages = comparison.advantages(win)
        if advantages:
            lines.append("**Why it won:**")
            lines += [f"+ {BETTER_AT[key]} ({mine:.1f} vs {theirs:.1f})" for key, mine, theirs in advantages]
        counter = comparison.advantages(lose, limit=1)
        if counter:
            key, mine, theirs = counter[0]
            lines.append(f"{names[lose]} was better at {PART_NAMES[key]} ({mine:.1f} vs {theirs:.1f}).")
    for index, result in enumerate(comparison.results):
        lines.append(f'{names[index]} caption: "{quote(result.caption, MAX_SHOWN_CAPTION)}"')
        lines.append(f"  {parts_line(result, comparison.keys)}")
    dropped = [PART_NAMES[p.key] for p in first.parts if p.key not in comparison.keys]
    if dropped:
        lines.append(f"Not compared (could not be measured for both): {', '.join(dropped)}; "
                     "the other parts were re-weighted.")
    if any(p.reason == LLM_OFFLINE for r in comparison.results for p in r.skipped):
        lines.append("The story part was skipped because my language model is offline.")
    lines.append("The chart shows every part side by side.")
    return _fit("\n".join(lines))


def _photo_name(number: int, result: VibeResult) -> str:
    name = safe_name(result.filename)
    return f"Photo {number} ({name})" if name else f"Photo {number}"


def _fit(text: str) -> str:
    return text if len(text) <= MAX_REPLY_CHARS else text[: MAX_REPLY_CHARS - 1].rstrip() + "…"
