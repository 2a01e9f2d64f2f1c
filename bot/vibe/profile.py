"""The /vibe configuration: weighted CLIP prompts and the share of each part, read from a label file.

It lives in ``labels/vibe/profile.txt``, a subfolder on purpose: :func:`bot.labels.load_label_sets`
globs ``labels/*.txt`` only, so these prompts never become a generic tagging set (they would add
"group photo" or "food, not a person" tags to every picture posted). The format extends the label
file format of :mod:`bot.labels` with a third column, a weight, and one more header::

    # template: a photo of {}.
    # weights: look=0.35, sharpness=0.15, exposure=0.15, resolution=0.10, framing=0.10, story=0.15
    professional headshot | a professional headshot photo of a person | +3
    blurry photo | a blurry, out of focus photo | -2

Operators tune the score by editing this file, not code; the parser is kept here rather than in
bot/labels.py so the tagger's format stays exactly what it was.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Final

from bot.config import REPO_ROOT
from bot.labels import DEFAULT_TEMPLATE, LabelSetError, label_file_lines

#: The parts of a vibe score, in the order they are shown. ``look`` is CLIP against the prompts of
#: this file, ``story`` is caption → LLM story → sentiment; the rest come from the pixels.
PART_KEYS: Final = ("look", "sharpness", "exposure", "resolution", "framing", "story")
#: Used when the file has no ``# weights:`` header. The look of the photo leads; the story (the
#: published recipe's only signal, and its noisiest) is deliberately a minor part.
DEFAULT_PART_WEIGHTS: Final = MappingProxyType(
    {"look": 0.35, "sharpness": 0.15, "exposure": 0.15, "resolution": 0.10, "framing": 0.10, "story": 0.15}
)
MAX_PROMPT_WEIGHT: Final = 3.0
PROFILE_SUBDIR: Final = "vibe"
PROFILE_FILE: Final = "profile.txt"
SHIPPED_PROFILE: Final = REPO_ROOT / "labels" / PROFILE_SUBDIR / PROFILE_FILE


class VibeProfileError(LabelSetError):
    """The vibe label file is malformed; the message names the file and line."""


@dataclass(frozen=True)
class VibePrompt:
    label: str
    prompt: str
    weight: float


@dataclass(frozen=True)
class VibeProfile:
    prompts: tuple[VibePrompt, ...]
    part_weights: Mapping[str, float] = field(default_factory=lambda: MappingProxyType(dict(DEFAULT_PART_WEIGHTS)))

    @property
    def texts(self) -> list[str]:
        return [p.prompt for p in self.prompts]

    @property
    def max_abs_weight(self) -> float:
        return max((abs(p.weight) for p in self.prompts), default=0.0) or 1.0

    @property
    def fingerprint(self) -> str:
        """Changes when any prompt changes, so cached CLIP text vectors are recomputed."""
        text = "\n".join(p.prompt for p in self.prompts)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def profile_path(labels_dir: Path) -> Path:
    """``labels_dir/vibe/profile.txt``, or the shipped one when a custom labels folder has none
    (a deployment with its own tagging sets should not lose /vibe, or fail to start, over it)."""
    path = labels_dir / PROFILE_SUBDIR / PROFILE_FILE
    return path if path.is_file() else SHIPPED_PROFILE


def parse_weight(text: str, where: str) -> float:
    try:
        value = float(text.strip())
    except ValueError:
        raise VibeProfileError(f"{where}: weight must be a number like +2 or -1.5, got {text.strip()!r}") from None
    if not math.isfinite(value) or abs(value) > MAX_PROMPT_WEIGHT:
        raise VibeProfileError(f"{where}: weight must be between -{MAX_PROMPT_WEIGHT:g} and +{MAX_PROMPT_WEIGHT:g}")
    return value


def parse_part_weights(text: str, where: str) -> MappingProxyType[str, float]:
    """``look=0.35, sharpness=0.15, ...``; parts not named keep their default share."""
    weights = dict(DEFAULT_PART_WEIGHTS)
    for item in filter(None, (piece.strip() for piece in text.split(","))):
        key, sep, value = item.partition("=")
        key = key.strip().lower()
        if not sep or key not in PART_KEYS:
            raise VibeProfileError(f"{where}: expected part=weight with part one of {', '.join(PART_KEYS)}")
        try:
            weight = float(value)
        except ValueError:
            raise VibeProfileError(f"{where}: weight of {key} must be a number") from None
        if not math.isfinite(weight) or weight < 0:
            raise VibeProfileError(f"{where}: weight of {key} must be zero or more")
        weights[key] = weight
    if sum(weights.values()) <= 0:
        raise VibeProfileError(f"{where}: at least one part needs a weight above zero")
    return MappingProxyType(weights)


def parse_profile_text(text: str, source: str = "<vibe profile>") -> VibeProfile:
    template = DEFAULT_TEMPLATE
    part_weights = DEFAULT_PART_WEIGHTS
    prompts: list[VibePrompt] = []
    for entry in label_file_lines(text):
        where, line = f"{source}:{entry.number}", entry.text
        if entry.key is not None:
            if entry.key == "template" and entry.value:
                template = entry.value
                if "{}" not in template:
                    raise VibeProfileError(f"{where}: template must contain '{{}}'")
            elif entry.key == "weights" and entry.value:
                part_weights = parse_part_weights(entry.value, where)
            continue
        columns = [column.strip() for column in line.split("|")]
        if len(columns) > 3:
            raise VibeProfileError(f"{where}: expected 'label | prompt | weight', found {len(columns)} columns")
        label = columns[0]
        if not label:
            raise VibeProfileError(f"{where}: empty label")
        if any(p.label == label for p in prompts):
            raise VibeProfileError(f"{where}: duplicate label {label!r}")
        prompt = (columns[1] if len(columns) > 1 else "") or template.replace("{}", label)
        # No weight: a neutral prompt, which still takes its share of CLIP's probability.
        weight = parse_weight(columns[2], where) if len(columns) > 2 and columns[2] else 0.0
        prompts.append(VibePrompt(label, prompt, weight))
    if len(prompts) < 2:
        raise VibeProfileError(f"{source}: needs at least two prompts (CLIP picks between them)")
    if all(p.weight == 0 for p in prompts):
        raise VibeProfileError(f"{source}: every prompt has weight 0, so the look part would say nothing")
    return VibeProfile(tuple(prompts), part_weights)


def load_profile(path: Path) -> VibeProfile:
    if not path.is_file():
        raise VibeProfileError(f"vibe label file not found: {path}")
    return parse_profile_text(path.read_text(encoding="utf-8"), str(path))
