"""The vibe scorer: one photo → a 0-10 score built from visible parts; two photos → a winner.

Discord-free. The scorer is handed its dependencies (an analyze-image coroutine, a CLIP text
encoder, a sentiment scorer, an LLM or None) instead of building them, so the bot wires them to the
shared inference queue, tests wire them to tiny models, and nothing here loads a model.

Score = 10 × weighted mean of the parts that could be measured (weights from the vibe label file).
A part that cannot be measured (LLM down, no face detector) is left out and the remaining weights
are renormalised, and the result says so. Every part value is rounded to 0.01 before the weighted
mean and the total to 0.1, so the score does not wobble with float noise from batching on a GPU.
There is no sampling anywhere: CLIP, the captioner (greedy) and the sentiment model are
deterministic, and the story is written at temperature 0 with a fixed seed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Final, Protocol

import numpy as np
from langchain_core.messages import BaseMessage

from bot.analysis import ImageAnalysis, Sentiment
from bot.chat.llm import LLMModelMissing, LLMUnavailable
from bot.imaging import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS, DecodedImage, decode_image
from bot.vibe.profile import PART_KEYS, VibeProfile
from bot.vibe.quality import QUALITY_SIZE, QualityReport, measure_quality
from bot.vibe.signals import (
    LookReading,
    look_reason,
    read_look,
    story_messages,
    story_reason,
    story_value,
)

log = logging.getLogger(__name__)

#: Short names for the parts, as the reply and the chart show them.
PART_NAMES: Final = {
    "look": "look (CLIP)",
    "sharpness": "sharpness",
    "exposure": "exposure",
    "resolution": "resolution",
    "framing": "framing",
    "story": "story",
}
#: How a comparison says that the winner was better at a part.
BETTER_AT: Final = {
    "look": "looks more like a profile photo",
    "sharpness": "sharper",
    "exposure": "better exposed",
    "resolution": "higher resolution",
    "framing": "better framed face",
    "story": "its caption inspires a more upbeat story",
}
LLM_OFFLINE: Final = "skipped: my language model is offline"
LLM_NOT_CONFIGURED: Final = "skipped: no language model is configured"
NO_FACE_DETECTOR: Final = "skipped: face detection is not installed"


class AnalyzeImage(Protocol):
    def __call__(self, data: bytes, *, filename: str | None = None) -> Awaitable[ImageAnalysis]: ...


class StoryTeller(Protocol):
    """What the story part needs from :class:`bot.chat.llm.ChatLLM`; raises LLMUnavailable."""

    async def reply(self, messages: Sequence[BaseMessage]) -> str: ...


ClipTexts = Callable[[list[str]], Awaitable[np.ndarray]]
ScoreSentiment = Callable[[list[str]], Awaitable[list[Sentiment]]]


@dataclass(frozen=True)
class Part:
    """One visible ingredient of the score."""

    key: str
    value: float | None  # 0..1, rounded to 0.01; None when it could not be measured
    weight: float  # the configured share (before renormalisation)
    reason: str  # plain words; for a skipped part, why it was skipped

    @property
    def available(self) -> bool:
        return self.value is not None

    @property
    def score10(self) -> float | None:
        return None if self.value is None else round(self.value * 10, 1)

    @property
    def name(self) -> str:
        return PART_NAMES.get(self.key, self.key)


@dataclass(frozen=True)
class Reason:
    key: str
    sign: int  # +1 helped, -1 hurt, 0 neither
    text: str


def _part(key: str, value: float | None, weight: float, reason: str) -> Part:
    return Part(key, None if value is None else round(min(1.0, max(0.0, value)), 2), weight, reason)


def effective_weights(parts: Sequence[Part], keys: Sequence[str] | None = None) -> dict[str, float]:
    """Each measured part's share of the total after renormalisation (sums to 1)."""
    used = [p for p in parts if p.available and (keys is None or p.key in keys)]
    total = sum(p.weight for p in used)
    if total <= 0:  # only zero-weight parts could be measured: count them equally
        return {p.key: 1 / len(used) for p in used} if used else {}
    return {p.key: p.weight / total for p in used}


def combine(parts: Sequence[Part], keys: Sequence[str] | None = None) -> float:
    """10 × the renormalised weighted mean of the measured parts (restricted to ``keys``), to 0.1."""
    shares = effective_weights(parts, keys)
    values = {p.key: p.value for p in parts if p.value is not None}
    return round(10 * sum(share * values[key] for key, share in shares.items()), 1)


def band(score: float) -> str:
    if score >= 8:
        return "a great profile photo"
    if score >= 6.5:
        return "a good profile photo"
    if score >= 5:
        return "an okay profile photo"
    if score >= 3.5:
        return "a weak profile photo"
    return "not much of a profile photo"


@dataclass(frozen=True)
class VibeResult:
    score: float  # 0..10, one decimal
    parts: tuple[Part, ...]
    caption: str  # what the captioner saw: shown in the reply so a wrong caption is visible
    story: str | None
    look: LookReading
    quality: QualityReport
    filename: str | None = None

    def part(self, key: str) -> Part:
        return next(p for p in self.parts if p.key == key)

    @property
    def band(self) -> str:
        return band(self.score)

    @property
    def skipped(self) -> list[Part]:
        return [p for p in self.parts if not p.available]

    @property
    def shares(self) -> dict[str, float]:
        return effective_weights(self.parts)

    def reasons(self, limit: int = 3) -> list[Reason]:
        """The parts that moved the score most away from the middle (5/10), biggest first.

        Impact is share × distance from 0.5, so a heavily weighted part that is merely good can
        outrank a light one that is excellent: the reasons explain the number, not the photo.
        """
        shares = self.shares
        ranked = sorted(
            (p for p in self.parts if p.value is not None),
            key=lambda p: (-shares[p.key] * abs(p.value - 0.5), PART_KEYS.index(p.key)),  # type: ignore[operator]
        )
        reasons = []
        for p in ranked[:limit]:
            assert p.value is not None
            sign = 1 if p.value >= 0.55 else -1 if p.value <= 0.45 else 0
            reasons.append(Reason(p.key, sign, p.reason))
        # Lead with the reasons that agree with the verdict ("why is it weak?" starts with a minus).
        verdict = 1 if self.score >= 5 else -1
        return sorted(reasons, key=lambda reason: reason.sign != verdict)


@dataclass(frozen=True)
class VibeComparison:
    """Two photos judged on the same parts; ``winner`` is 0, 1 or None for a tie."""

    results: tuple[VibeResult, VibeResult]
    keys: tuple[str, ...]  # parts measured for both photos: the only fair basis
    scores: tuple[float, float]
    winner: int | None

    def advantages(self, side: int, limit: int = 3) -> list[tuple[str, float, float]]:
        """Parts where ``side`` beat the other photo: (key, its 0-10, other's 0-10), biggest weighted gap first."""
        mine, other = self.results[side], self.results[1 - side]
        shares = effective_weights(mine.parts, self.keys)
        gaps = []
        for key in self.keys:
            a, b = mine.part(key).value, other.part(key).value
            assert a is not None and b is not None
            if a > b:
                gaps.append((-(a - b) * shares[key], PART_KEYS.index(key), key, a, b))
        gaps.sort()
        return [(key, round(a * 10, 1), round(b * 10, 1)) for _, _, key, a, b in gaps[:limit]]


def compare_results(first: VibeResult, second: VibeResult) -> VibeComparison:
    """Re-total both photos over the parts both have, so a story that failed for one photo only
    cannot decide the comparison."""
    keys = tuple(k for k in PART_KEYS if first.part(k).available and second.part(k).available)
    scores = (combine(first.parts, keys), combine(second.parts, keys))
    winner = None if scores[0] == scores[1] else (0 if scores[0] > scores[1] else 1)
    return VibeComparison((first, second), keys, scores, winner)


@dataclass
class VibeScorer:
    """Scores photos for /vibe. Stateless apart from the cached CLIP vectors of the prompts."""

    analyze: AnalyzeImage
    clip_texts: ClipTexts
    score_sentiment: ScoreSentiment
    llm: StoryTeller | None
    profile: VibeProfile
    max_bytes: int = DEFAULT_MAX_BYTES
    max_pixels: int = DEFAULT_MAX_PIXELS
    # How untrusted bytes are decoded (blocking; run in a thread): the bot passes its
    # DecodeSandbox's ``decode`` (killable processes); the plain decoder is the default.
    decode: Callable[..., DecodedImage] = decode_image
    _vectors: np.ndarray | None = field(default=None, init=False, repr=False)
    _vectors_for: str = field(default="", init=False, repr=False)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock, init=False, repr=False)

    async def prompt_vectors(self) -> np.ndarray:
        """The profile prompts through CLIP, once (not per photo), re-encoded only if they change."""
        async with self._lock:
            if self._vectors is None or self._vectors_for != self.profile.fingerprint:
                self._vectors = np.asarray(await self.clip_texts(self.profile.texts), dtype=np.float32)
                self._vectors_for = self.profile.fingerprint
            return self._vectors

    async def score(
        self, data: bytes, *, filename: str | None = None, analysis: ImageAnalysis | None = None
    ) -> VibeResult:
        """Raises :class:`bot.imaging.ImageRejected` for a bad file (before any model runs), and
        whatever the analyze/sentiment callables raise (the queue's typed errors).

        ``analysis``: this very image's analysis when the bot already has it (the image listener
        analysed the message being right-clicked); the models then do not run on it a second time.
        The bytes are still needed for the pixel measurements (sharpness, exposure, faces).
        """
        decoded = await asyncio.to_thread(
            self.decode, data, max_bytes=self.max_bytes, max_pixels=self.max_pixels,
            target_size=QUALITY_SIZE, filename=filename,
        )
        analysis, vectors, quality = await asyncio.gather(
            self._analysis(data, filename, analysis),
            self.prompt_vectors(),
            asyncio.to_thread(measure_quality, decoded.image, decoded.original_size),
        )
        weights = self.profile.part_weights
        look = read_look(analysis.image_embedding, vectors, self.profile)
        story, story_part = await self._story(analysis.caption, weights["story"])
        sharp, exposure, resolution = (
            quality.sharpness_judgement(), quality.exposure_judgement(), quality.resolution_judgement()
        )
        framing = quality.framing_judgement()
        parts = (
            _part("look", look.value, weights["look"], look_reason(look, self.profile)),
            _part("sharpness", sharp.value, weights["sharpness"], sharp.reason),
            _part("exposure", exposure.value, weights["exposure"], exposure.reason),
            _part("resolution", resolution.value, weights["resolution"], resolution.reason),
            _part("framing", framing.value, weights["framing"], framing.reason) if framing
            else _part("framing", None, weights["framing"], NO_FACE_DETECTOR),
            story_part,
        )
        return VibeResult(
            score=combine(parts), parts=parts, caption=analysis.caption, story=story, look=look,
            quality=quality, filename=filename,
        )

    async def _analysis(self, data: bytes, filename: str | None, known: ImageAnalysis | None) -> ImageAnalysis:
        return known if known is not None else await self.analyze(data, filename=filename)

    async def compare(
        self, first: bytes, second: bytes, *, filenames: tuple[str | None, str | None] = (None, None)
    ) -> VibeComparison:
        """Both photos in the same run (concurrently, so the queue can batch them)."""
        tasks = [
            asyncio.ensure_future(self.score(first, filename=filenames[0])),
            asyncio.ensure_future(self.score(second, filename=filenames[1])),
        ]
        try:
            a, b = await asyncio.gather(*tasks)
        except BaseException:
            for task in tasks:  # one photo failed: don't leave the other running unobserved
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        return compare_results(a, b)

    async def _story(self, caption: str, weight: float) -> tuple[str | None, Part]:
        if self.llm is None:
            return None, _part("story", None, weight, LLM_NOT_CONFIGURED)
        try:
            story = await self.llm.reply(story_messages(caption))
        except LLMModelMissing as exc:  # say which model to pull, not "offline"
            log.warning("vibe story skipped: %s", exc.user_message)
            return None, _part("story", None, weight, f"skipped: the chat model `{exc.model}` is not installed on "
                                                      f"the Ollama server (`ollama pull {exc.model}`)")
        except LLMUnavailable as exc:
            log.warning("vibe story skipped, LLM unavailable: %s", exc)
            return None, _part("story", None, weight, LLM_OFFLINE)
        (sentiment,) = await self.score_sentiment([story])
        polarity = round(sentiment.polarity, 4)
        return story, _part("story", story_value(polarity), weight, story_reason(sentiment.label, polarity))
