"""The two model-based signals: CLIP against the weighted profile prompts, and the caption's story.

Both are pure functions of their inputs; the model calls happen in :mod:`bot.vibe.score`, through
the shared inference queue, so /vibe never loads or runs a model of its own.

The story signal is the published recipe (caption → short story → sentiment), repaired:

- noise: the story is written at temperature 0 with a fixed seed, so the same caption always gets
  the same story (the recipe used 0.7 and flipped between runs);
- happy bias: the prompt asks for a plain first impression and forbids cheering the story up, and
  :func:`story_value` treats a mildly positive story as neutral, because LLM stories lean positive
  even about dull photos;
- invention (the tie that was not in the photo): the prompt forbids details the caption does not
  mention, and the reply shows the caption, so a wrong caption is visible instead of hidden.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np
from langchain_core.messages import BaseMessage, HumanMessage, SystemMessage

from bot.analysis import Scored
from bot.vibe.profile import VibeProfile

# CLIP's trained temperature (exp(logit_scale) saturates at 100 for OpenAI and LAION ViT-B models).
# Fixed here rather than read from the model so /vibe needs nothing but text and image vectors.
CLIP_LOGIT_SCALE: Final = 100.0
STORY_SEED: Final = 20240917
STORY_TEMPERATURE: Final = 0.0
MAX_STORY_CAPTION_CHARS: Final = 300
# Story polarity (positive minus negative, -1..1) that counts as neutral: see story_value.
STORY_NEUTRAL_POLARITY: Final = 0.25

STORY_SYSTEM_PROMPT: Final = (
    "You write a very short story (at most three sentences, under 70 words) about a photo that "
    "someone is considering as their profile picture. You only know the photo from its one-line "
    "description. Write the first impression a stranger would get from that photo.\n"
    "Rules: use only what the description says. Do not add clothing, accessories, objects, places, "
    "expressions or feelings that it does not mention. Do not make the story happier or sadder than "
    "the description supports: an ordinary description gets an ordinary story. No title, no preamble."
)


@dataclass(frozen=True)
class LookReading:
    """CLIP's reading of a photo against the weighted profile prompts."""

    probabilities: tuple[Scored, ...]  # every prompt's label and probability, best first
    signal: float  # probability-weighted prompt weight, scaled to -1..1

    @property
    def value(self) -> float:
        return (self.signal + 1.0) / 2.0


def read_look(image_embedding: Sequence[float], prompt_vectors: np.ndarray, profile: VibeProfile) -> LookReading:
    """Softmax over every profile prompt (zero-shot CLIP), then the expected prompt weight.

    Using the whole set at once, rather than one prompt at a time, is what makes CLIP's numbers
    meaningful: "professional headshot" is only high relative to "food" or "group photo".
    """
    image = np.asarray(image_embedding, dtype=np.float64)
    image = image / (np.linalg.norm(image) or 1.0)
    texts = np.asarray(prompt_vectors, dtype=np.float64)
    logits = CLIP_LOGIT_SCALE * (texts @ image)
    logits -= logits.max()
    probs = np.exp(logits)
    probs /= probs.sum()
    weights = np.array([p.weight for p in profile.prompts], dtype=np.float64)
    signal = float(probs @ weights) / profile.max_abs_weight
    ranked = sorted(
        (Scored(p.label, round(float(prob), 4)) for p, prob in zip(profile.prompts, probs, strict=True)),
        key=lambda scored: -scored.score,
    )
    return LookReading(tuple(ranked), max(-1.0, min(1.0, signal)))


def look_reason(reading: LookReading, profile: VibeProfile) -> str:
    """Plain words for the look part: the best matching prompt on the side the score leans to."""
    weight = {p.label: p.weight for p in profile.prompts}
    top = reading.probabilities[0]
    if reading.value >= 0.6:
        best = next((s for s in reading.probabilities if weight[s.label] > 0), top)
        return f"looks like a profile photo to CLIP: {best.label} ({best.score:.0%})"
    if reading.value <= 0.4:
        worst = next((s for s in reading.probabilities if weight[s.label] < 0), top)
        return f"doesn't look like a profile photo to CLIP: {worst.label} ({worst.score:.0%})"
    return f"CLIP's closest match is {top.label} ({top.score:.0%}), neither strong nor weak"


def clean_caption(caption: str, limit: int = MAX_STORY_CAPTION_CHARS) -> str:
    """One line, no brackets: model output placed inside a prompt and a Discord message."""
    text = " ".join(caption.replace("[", "(").replace("]", ")").split())
    return text[:limit].rstrip() or "an image"


def story_messages(caption: str) -> list[BaseMessage]:
    return [
        SystemMessage(content=STORY_SYSTEM_PROMPT),
        HumanMessage(content=f"Photo description: {clean_caption(caption)}"),
    ]


def story_value(polarity: float) -> float:
    """Map story polarity (-1..1) to 0..1 with STORY_NEUTRAL_POLARITY landing on 0.5.

    Piecewise linear, so -1 → 0 and +1 → 1 still hold: it only moves the middle, correcting the
    LLM's habit of writing pleasant stories about anything.
    """
    polarity = max(-1.0, min(1.0, polarity))
    neutral = STORY_NEUTRAL_POLARITY
    if polarity >= neutral:
        return 0.5 + 0.5 * (polarity - neutral) / (1.0 - neutral)
    return 0.5 * (polarity + 1.0) / (neutral + 1.0)


def story_reason(label: str, polarity: float) -> str:
    tone = {"positive": "upbeat", "negative": "gloomy", "neutral": "neutral"}.get(label, label)
    return f"the story its caption inspires reads {tone} (sentiment {polarity:+.2f})"
