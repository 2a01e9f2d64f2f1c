"""The /vibe core (bot.vibe), without Discord: parts, weights, determinism, quality, compare, chart.

The scorer gets its model calls injected. Here they are thin adapters over the tiny ``analyzer``
(the same calls the inference queue makes), so these tests pin the core's behaviour independently
of the queue; tests/end_to_end/test_vibe_discord.py runs the real wiring through services.queue.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import socket
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import numpy as np
import pytest
import pytest_asyncio
from PIL import Image, ImageEnhance, ImageFilter

from bot.analysis import Sentiment
from bot.chat.llm import ChatLLM
from bot.imaging import ImageRejected, UnsupportedImageType, decode_image
from bot.labels import load_label_sets
from bot.vibe import (
    PART_KEYS,
    STORY_SEED,
    Part,
    VibeProfileError,
    VibeResult,
    VibeScorer,
    bar_chart_png,
    combine,
    compare_results,
    comparison_chart,
    load_profile,
    measure_quality,
    parse_profile_text,
    profile_path,
    render_comparison,
    render_result,
)
from bot.vibe.chart import SERIES_COLOURS
from bot.vibe.profile import DEFAULT_PART_WEIGHTS
from bot.vibe.quality import QUALITY_SIZE, face_detection_available
from bot.vibe.score import LLM_OFFLINE, effective_weights
from bot.vibe.signals import STORY_SYSTEM_PROMPT, story_value
from tests.harness.ollama_server import FakeOllamaServer

LABELS = Path(__file__).parent.parent / "labels"
STORY = "Someone in a photo looks straight at the camera. It is an ordinary picture."


# --------------------------------------------------------------------------- helpers and fixtures


def jpeg(image: Image.Image, **kwargs: object) -> bytes:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, "JPEG", quality=92, **kwargs)
    return buffer.getvalue()


def open_photo(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data)).convert("RGB")


def blurred(data: bytes, radius: float = 3.0) -> bytes:
    return jpeg(open_photo(data).filter(ImageFilter.GaussianBlur(radius)))


def darkened(data: bytes, factor: float = 0.2) -> bytes:
    return jpeg(ImageEnhance.Brightness(open_photo(data)).enhance(factor))


def quality_of(data: bytes):
    decoded = decode_image(data, target_size=QUALITY_SIZE)
    return measure_quality(decoded.image, decoded.original_size)


class Calls:
    """Records what the scorer asked of its injected dependencies."""

    def __init__(self) -> None:
        self.analyze: list[str | None] = []
        self.clip_texts: list[list[str]] = []
        self.sentiment: list[list[str]] = []


def make_scorer(analyzer, tiny_settings, calls: Calls | None = None, llm: ChatLLM | None = None, profile=None):
    """A scorer wired to the tiny models the way the queue would be (decode, then one batch)."""
    calls = calls or Calls()
    images = tiny_settings.images

    async def analyze(data: bytes, *, filename: str | None = None):
        calls.analyze.append(filename)
        decoded = await asyncio.to_thread(
            decode_image, data, max_bytes=images.max_bytes, max_pixels=images.max_pixels,
            target_size=images.target_size, filename=filename,
        )
        return (await asyncio.to_thread(analyzer.analyze, [decoded]))[0]

    async def clip_texts(texts: list[str]) -> np.ndarray:
        calls.clip_texts.append(list(texts))
        return await asyncio.to_thread(analyzer.clip_texts, texts)

    # Adapter standing in for InferenceQueue.score_sentiment (same model, same call).
    async def score_sentiment(texts: list[str]) -> list[Sentiment]:
        calls.sentiment.append(list(texts))
        return await asyncio.to_thread(analyzer.sentiment.score, texts)

    return VibeScorer(
        analyze=analyze, clip_texts=clip_texts, score_sentiment=score_sentiment, llm=llm,
        profile=profile or load_profile(profile_path(LABELS)),
    )


def story_llm(tiny_settings, server: FakeOllamaServer | None) -> ChatLLM:
    if server is None:  # a port nobody listens on: Ollama is down
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        settings = tiny_settings.llm.model_copy(update={"base_url": url, "timeout_s": 3.0})
    else:
        settings = tiny_settings.llm.model_copy(update={"base_url": server.base_url, "model": server.model})
    return ChatLLM(settings, temperature=0.0, seed=STORY_SEED)


@pytest_asyncio.fixture
async def story_server() -> AsyncIterator[FakeOllamaServer]:
    async with FakeOllamaServer(reply=lambda messages: STORY) as server:
        yield server


@pytest.fixture(scope="session")
def degraded(photos: dict[str, bytes]) -> bytes:
    """The astronaut portrait, blurred and darkened: the same person, a worse profile photo."""
    return darkened(blurred(photos["astronaut"]), 0.3)


def part(key: str, value: float | None, weight: float) -> Part:
    return Part(key, value, weight, f"{key} reason")


# --------------------------------------------------------------------------- profile (label file)


def test_shipped_profile_loads_and_is_not_a_tagging_set() -> None:
    profile = load_profile(profile_path(LABELS))
    assert dict(profile.part_weights) == dict(DEFAULT_PART_WEIGHTS)
    weights = {p.label: p.weight for p in profile.prompts}
    assert weights["professional headshot"] == 3 and weights["food, not a person"] == -3
    assert weights["casual snapshot"] == 0
    # The tagger globs labels/*.txt only: vibe prompts must never become tags on every image.
    sets = load_label_sets(LABELS)
    assert not any("headshot" in label for s in sets.values() for label in s.labels)
    assert "profile" not in sets and "vibe" not in sets


def test_profile_format_weights_template_and_part_shares() -> None:
    profile = parse_profile_text(
        "# template: a picture of {}.\n"
        "# weights: look=2, story=0\n"
        "smile | a person smiling | +2.5\n"
        "frown | | -1\n"
        "plain\n"
    )
    assert [(p.label, p.prompt, p.weight) for p in profile.prompts] == [
        ("smile", "a person smiling", 2.5),
        ("frown", "a picture of frown.", -1.0),
        ("plain", "a picture of plain.", 0.0),
    ]
    assert profile.part_weights["look"] == 2 and profile.part_weights["story"] == 0
    assert profile.part_weights["sharpness"] == DEFAULT_PART_WEIGHTS["sharpness"]  # unnamed parts keep theirs


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a | p | +1\n", "at least two prompts"),
        ("a | p | 0\nb | q\n", "weight 0"),
        ("a | p | lots\nb | q | 1\n", "weight must be a number"),
        ("a | p | 7\nb | q | 1\n", "between -3 and \\+3"),
        ("a | p | 1 | extra\nb | q | 1\n", "columns"),
        ("a | p | 1\na | q | 1\n", "duplicate label"),
        ("# weights: looks=1\na | p | 1\nb | q | 1\n", "part one of"),
        ("# weights: look=-1\na | p | 1\nb | q | 1\n", "zero or more"),
        ("# template: no slot\na | | 1\nb | q | 1\n", "template must contain"),
    ],
)
def test_malformed_profiles_name_the_line(text: str, message: str) -> None:
    with pytest.raises(VibeProfileError, match=message):
        parse_profile_text(text, "vibe.txt")


def test_custom_labels_dir_without_profile_falls_back_to_shipped(tmp_path: Path) -> None:
    assert profile_path(tmp_path) == profile_path(LABELS)


# --------------------------------------------------------------------------- weights


def test_combine_is_the_weighted_mean_and_renormalises_missing_parts() -> None:
    parts = [part("look", 0.8, 0.5), part("sharpness", 0.4, 0.25), part("story", 1.0, 0.25)]
    assert combine(parts) == round(10 * (0.8 * 0.5 + 0.4 * 0.25 + 1.0 * 0.25), 1)
    skipped = [parts[0], parts[1], part("story", None, 0.25)]
    assert combine(skipped) == round(10 * (0.8 * 0.5 + 0.4 * 0.25) / 0.75, 1)
    assert combine(parts, keys=("sharpness",)) == 4.0
    assert combine([part("look", 0.3, 0.0), part("story", 0.9, 0.0)]) == 6.0  # all-zero weights: plain mean


def test_story_value_treats_mildly_positive_stories_as_neutral() -> None:
    assert story_value(-1.0) == 0.0 and story_value(1.0) == 1.0
    assert story_value(0.25) == 0.5  # LLM stories lean positive: +0.25 is "nothing special"
    assert story_value(0.0) < 0.5 < story_value(0.6)


async def test_part_weights_from_the_profile_drive_the_total(analyzer, tiny_settings, photos) -> None:
    text = profile_path(LABELS).read_text(encoding="utf-8")
    only_sharpness = parse_profile_text(
        text + "\n# weights: look=0, sharpness=1, exposure=0, resolution=0, framing=0, story=0\n"
    )
    result = await make_scorer(analyzer, tiny_settings, profile=only_sharpness).score(photos["coffee"])
    assert result.score == result.part("sharpness").score10
    assert result.shares == {key: (1.0 if key == "sharpness" else 0.0) for key in PART_KEYS if key != "story"}


# --------------------------------------------------------------------------- the scorer


async def test_score_has_every_part_and_is_deterministic(analyzer, tiny_settings, photos, story_server) -> None:
    calls = Calls()
    scorer = make_scorer(analyzer, tiny_settings, calls, llm=story_llm(tiny_settings, story_server))
    first = await scorer.score(photos["astronaut"], filename="me.jpg")
    second = await scorer.score(photos["astronaut"], filename="me.jpg")
    fresh = await make_scorer(analyzer, tiny_settings, llm=story_llm(tiny_settings, story_server)).score(
        photos["astronaut"], filename="me.jpg"
    )
    assert first == second == fresh  # every part, reason, caption, story and the total
    assert render_result(first) == render_result(second)
    assert 0.0 <= first.score <= 10.0 and first.score == round(first.score, 1)
    assert [p.key for p in first.parts] == list(PART_KEYS)
    assert all(p.available for p in first.parts if p.key != "framing" or face_detection_available())
    assert first.story == STORY
    # The prompts go through CLIP once per scorer, not once per photo.
    assert len(calls.clip_texts) == 1 and calls.analyze == ["me.jpg", "me.jpg"]
    # The story's sentiment goes through the injected scorer (the inference queue in the bot).
    assert calls.sentiment == [[STORY], [STORY]]
    # No sampling: temperature 0 and a fixed seed on every story request; the prompt forbids inventing.
    assert [r.options.get("temperature") for r in story_server.requests] == [0.0] * 3
    assert {r.options.get("seed") for r in story_server.requests} == {STORY_SEED}
    request = story_server.requests[0]
    assert request.messages[0]["content"] == STORY_SYSTEM_PROMPT
    assert "Do not add clothing" in STORY_SYSTEM_PROMPT
    assert request.messages[1]["content"] == f"Photo description: {first.caption}"


async def test_a_chat_model_that_is_not_pulled_is_named_in_the_story_note(analyzer, tiny_settings, photos) -> None:
    async with FakeOllamaServer(reply=lambda messages: STORY, pulled=False) as server:
        result = await make_scorer(analyzer, tiny_settings, llm=story_llm(tiny_settings, server)).score(
            photos["astronaut"])
    story = result.part("story")
    assert story.value is None and result.story is None
    text = render_result(result)
    assert f"`ollama pull {server.model}`" in text and "offline" not in text and "re-weighted" in text


async def test_llm_down_skips_the_story_and_says_so(analyzer, tiny_settings, photos) -> None:
    calls = Calls()
    result = await make_scorer(analyzer, tiny_settings, calls, llm=story_llm(tiny_settings, None)).score(
        photos["astronaut"]
    )
    story = result.part("story")
    assert story.value is None and story.reason == LLM_OFFLINE and result.story is None
    assert calls.sentiment == []
    assert result.score == combine([p for p in result.parts if p.key != "story"])
    assert "story" not in result.shares and sum(result.shares.values()) == pytest.approx(1.0)
    text = render_result(result)
    assert "language model is offline" in text and "re-weighted" in text and "story skipped" in text
    # Same again: the fallback is as deterministic as the full score.
    again = await make_scorer(analyzer, tiny_settings, llm=story_llm(tiny_settings, None)).score(photos["astronaut"])
    assert again == result


async def test_no_llm_configured_is_a_skip_too(analyzer, tiny_settings, photos) -> None:
    result = await make_scorer(analyzer, tiny_settings).score(photos["coffee"])
    assert not result.part("story").available and "no language model" in render_result(result)


async def test_reply_shows_the_caption_reasons_and_parts(analyzer, tiny_settings, photos) -> None:
    result = await make_scorer(analyzer, tiny_settings).score(photos["astronaut"])
    text = render_result(result)
    assert f'"{result.caption}"' in text  # the caption it judged is visible (the "tie" problem)
    assert f"{result.score:.1f}/10" in text
    for reason in result.reasons():
        assert reason.text in text
    assert len(result.reasons()) == 3
    assert all(p.name in text for p in result.parts)
    # Model output cannot format the message or mention anyone.
    tricky = dataclasses.replace(result, caption="**a tie** <@123> [link](http://x) `code`")
    shown = render_result(tricky)
    assert "**a tie**" not in shown and "<@123>" not in shown and "[link]" not in shown
    assert r"\*\*a tie\*\*" in shown
    long = dataclasses.replace(result, caption="word " * 1000, story="story " * 1000)
    assert len(render_result(long)) <= 2000


async def test_reasons_rank_by_impact_and_lead_with_the_verdict(analyzer, tiny_settings, photos) -> None:
    result = await make_scorer(analyzer, tiny_settings).score(photos["astronaut"])
    parts = (
        part("look", 0.2, 0.4), part("sharpness", 0.1, 0.2), part("exposure", 0.5, 0.2),
        part("resolution", 1.0, 0.1), part("framing", None, 0.1), part("story", 0.3, 0.0),
    )
    weak = dataclasses.replace(result, parts=parts, score=combine(parts))
    assert weak.score < 5
    # Impact = share × distance from 5/10: look 0.133, sharpness 0.089, resolution 0.056, then nothing.
    assert [(r.key, r.sign) for r in weak.reasons()] == [("look", -1), ("sharpness", -1), ("resolution", 1)]
    strong_parts = (part("look", 0.9, 0.4), part("resolution", 0.2, 0.4), part("sharpness", 0.95, 0.2))
    strong = dataclasses.replace(result, parts=strong_parts, score=combine(strong_parts))
    assert strong.score >= 5 and [r.sign for r in strong.reasons()] == [1, 1, -1]


async def test_not_an_image_is_refused_before_any_model_runs(analyzer, tiny_settings) -> None:
    calls = Calls()
    with pytest.raises(UnsupportedImageType) as error:
        await make_scorer(analyzer, tiny_settings, calls).score(b"%PDF-1.7 not a photo", filename="cv.pdf")
    assert "cv.pdf" in error.value.user_message and "PDF" in error.value.user_message
    assert calls.analyze == []


# --------------------------------------------------------------------------- quality signals (real photos)


@pytest.mark.parametrize("name", ["astronaut", "coffee", "chelsea", "rocket"])
def test_blurred_photo_is_less_sharp(photos, name: str) -> None:
    original, blurry = quality_of(photos[name]), quality_of(blurred(photos[name]))
    assert blurry.sharpness < original.sharpness / 5
    assert blurry.sharpness_judgement().value < original.sharpness_judgement().value
    assert "blurry" in blurry.sharpness_judgement().reason


def test_dark_photo_is_flagged_under_exposed(photos) -> None:
    original, dark = quality_of(photos["astronaut"]), quality_of(darkened(photos["astronaut"]))
    assert not original.under_exposed and dark.under_exposed
    assert dark.exposure_judgement().value < original.exposure_judgement().value
    assert "under-exposed" in dark.exposure_judgement().reason


def test_bright_photo_is_flagged_over_exposed(photos) -> None:
    bright = quality_of(jpeg(ImageEnhance.Brightness(open_photo(photos["coffee"])).enhance(2.6)))
    assert bright.over_exposed and "over-exposed" in bright.exposure_judgement().reason


def test_resolution_comes_from_the_original_size(photos) -> None:
    big = quality_of(photos["astronaut"])
    small = quality_of(jpeg(open_photo(photos["astronaut"]).resize((96, 96))))
    assert (big.width, big.height) == (512, 512) and (small.width, small.height) == (96, 96)
    assert small.resolution_judgement().value == 0.0 < big.resolution_judgement().value
    assert "pixelated" in small.resolution_judgement().reason


@pytest.mark.skipif(not face_detection_available(), reason="opencv-python-headless not installed")
def test_face_framing(photos) -> None:
    astronaut = quality_of(photos["astronaut"])
    assert astronaut.faces is not None and len(astronaut.faces) == 1
    assert astronaut.framing_judgement().value > 0.8  # type: ignore[union-attr]
    coffee = quality_of(photos["coffee"]).framing_judgement()
    assert coffee is not None and coffee.value < 0.5 and "no clear face" in coffee.reason
    portrait = open_photo(photos["astronaut"])
    pair = Image.new("RGB", (1024, 512))
    pair.paste(portrait, (0, 0))
    pair.paste(portrait, (512, 0))
    two = quality_of(jpeg(pair)).framing_judgement()
    assert two is not None and "2 faces" in two.reason and two.value < 0.5


# --------------------------------------------------------------------------- compare


async def test_compare_picks_the_better_photo_consistently(analyzer, tiny_settings, photos, degraded) -> None:
    scorer = make_scorer(analyzer, tiny_settings)
    good, bad = photos["astronaut"], degraded
    first = await scorer.compare(good, bad, filenames=("good.jpg", "bad.jpg"))
    again = await scorer.compare(good, bad, filenames=("good.jpg", "bad.jpg"))
    swapped = await scorer.compare(bad, good, filenames=("bad.jpg", "good.jpg"))
    assert first == again
    assert first.winner == 0 and swapped.winner == 1
    assert first.scores == tuple(reversed(swapped.scores))
    reasons = [key for key, _, _ in first.advantages(0)]
    assert "sharpness" in reasons and "exposure" in reasons
    text = render_comparison(first)
    assert text.startswith("**Photo 1 (good.jpg) wins:") and "sharper" in text and "better exposed" in text
    assert first.results[0].caption in text and first.results[1].caption in text
    assert render_comparison(first) == render_comparison(again)


async def test_compare_judges_both_photos_on_the_same_parts(analyzer, tiny_settings, photos, story_server) -> None:
    with_story = await make_scorer(analyzer, tiny_settings, llm=story_llm(tiny_settings, story_server)).score(
        photos["astronaut"]
    )
    without = await make_scorer(analyzer, tiny_settings).score(photos["astronaut"])
    comparison = compare_results(with_story, without)
    assert "story" not in comparison.keys
    assert comparison.scores[0] == comparison.scores[1] and comparison.winner is None  # same photo: a tie
    text = render_comparison(comparison)
    assert "It's a tie" in text and "Not compared" in text
    # Both photos' parts lines show the shares actually used: renormalised without the story.
    look_share = effective_weights(with_story.parts, comparison.keys)["look"]
    assert text.count(f"look (CLIP) {with_story.part('look').score10:.1f} ×{look_share:.0%}") == 2
    assert f"×{with_story.shares['look']:.0%}" in render_result(with_story)


async def test_compare_with_a_bad_second_file_raises_its_refusal(analyzer, tiny_settings, photos) -> None:
    with pytest.raises(ImageRejected) as error:
        await make_scorer(analyzer, tiny_settings).compare(
            photos["astronaut"], b"PK\x03\x04zip", filenames=("me.jpg", "photos.zip")
        )
    assert "photos.zip" in error.value.user_message


# --------------------------------------------------------------------------- chart


def count_bars(png: bytes, colour: str) -> int:
    """Bars of one series: the most separate runs of exactly that colour on any pixel row."""
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG"
    pixels = np.asarray(image.convert("RGB")).astype(int)
    target = np.array([int(colour[i : i + 2], 16) for i in (1, 3, 5)])
    match = (np.abs(pixels - target).sum(axis=2) <= 6).astype(np.int8)
    runs = (np.diff(match, axis=1) == 1).sum(axis=1) + match[:, 0]
    return int(runs.max())


def expected_bars(values: Sequence[float]) -> int:
    return sum(1 for v in values if v >= 0.2)  # a bar under 0.2/10 is not a visible rectangle


def test_bar_chart_has_one_bar_per_part_and_photo() -> None:
    groups = ["look", "sharpness", "exposure", "total"]
    png = bar_chart_png(groups, [("Photo 1", [8.0, 6.5, 3.0, 6.2]), ("Photo 2", [5.0, 9.5, 7.0, 7.1])])
    image = Image.open(io.BytesIO(png))
    image.verify()
    assert image.size == (700, 340)
    assert [count_bars(png, colour) for colour in SERIES_COLOURS] == [4, 4]
    single = bar_chart_png(groups[:2], [("only", [3.0, 4.0])])
    assert [count_bars(single, colour) for colour in SERIES_COLOURS] == [2, 0]
    with pytest.raises(ValueError, match="values"):
        bar_chart_png(groups, [("short", [1.0])])


async def test_comparison_chart_matches_the_comparison(analyzer, tiny_settings, photos, degraded) -> None:
    comparison = await make_scorer(analyzer, tiny_settings).compare(photos["astronaut"], degraded)
    png = comparison_chart(comparison)
    assert png == comparison_chart(comparison)  # byte-identical: no timestamps
    for side, colour in enumerate(SERIES_COLOURS):
        result: VibeResult = comparison.results[side]
        values = [result.part(k).score10 or 0.0 for k in comparison.keys] + [comparison.scores[side]]
        assert count_bars(png, colour) == expected_bars(values)
    assert len(comparison.keys) + 1 == len(values)
