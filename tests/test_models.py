"""Each model role through its real loading code, on tiny stand-ins saved and reloaded from disk."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bot.analysis import SENTIMENT_LABELS
from bot.imaging import decode_image
from bot.labels import load_label_sets
from bot.models.captioner import BlipCaptioner
from bot.models.embedder import TextEmbedder
from bot.models.errors import ModelUnavailable
from bot.models.hub import resolve_clip, resolve_hf
from bot.models.sentiment import TransformersSentiment, VaderSentiment
from bot.models.tagger import ClipTagger
from bot.models.tiny import BLIP_DIR, CLIP_DIR, SENTIMENT_DIR

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def images(photos):
    return [decode_image(photos[name]).image for name in ("astronaut", "chelsea", "coffee")]


def test_captioner_batch_in_batch_out(tiny_models_dir, images):
    captioner = BlipCaptioner(tiny_models_dir / BLIP_DIR, model_id="tiny", device=CPU, dtype=torch.float32,
                              max_new_tokens=6)
    captions = captioner.caption(images)
    assert len(captions) == 3
    assert all(isinstance(c, str) and c.strip() for c in captions), captions
    assert captioner.caption([]) == []
    # Greedy decoding: the same image gives the same caption, alone or in a batch.
    assert captioner.caption(images[:1]) == captions[:1]


def _peaky_attention(model: torch.nn.Module) -> torch.nn.Module:
    """Scale up query/key/value weights: random std-0.02 weights give near-uniform attention, which would
    hide a wrong scale or mask; sharp attention makes any such error change the outputs."""
    from transformers.models.blip.modeling_blip import BlipAttention
    from transformers.models.blip.modeling_blip_text import BlipTextSelfAttention

    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, BlipTextSelfAttention):
                module.query.weight.mul_(30)
                module.key.weight.mul_(30)
                module.value.weight.mul_(10)
            elif isinstance(module, BlipAttention):
                module.qkv.weight[: 2 * module.embed_dim].mul_(30)
                module.qkv.weight[2 * module.embed_dim :].mul_(10)
    return model


def test_blip_sdpa_matches_eager_attention(tiny_models_dir, images):
    from transformers import BlipForConditionalGeneration, BlipProcessor

    from bot.models.sdpa import enable_blip_sdpa

    path = str(tiny_models_dir / BLIP_DIR)
    pixels = BlipProcessor.from_pretrained(path)(images=images, return_tensors="pt")["pixel_values"]
    eager, fast = (_peaky_attention(BlipForConditionalGeneration.from_pretrained(path).eval()) for _ in range(2))
    assert enable_blip_sdpa(fast, text=False) == 2  # one per vision layer
    with torch.no_grad():
        expected = eager.vision_model(pixel_values=pixels)[0]
        got = fast.vision_model(pixel_values=pixels)[0]
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("prompt", ["", "a picture of"])
def test_blip_text_decoder_sdpa_generates_what_eager_does(tiny_models_dir, images, prompt):
    """Every decoding step's logits and every token match eager attention, with the caches in use."""
    from transformers import BlipForConditionalGeneration, BlipProcessor

    from bot.models.sdpa import enable_blip_sdpa

    path = str(tiny_models_dir / BLIP_DIR)
    processor = BlipProcessor.from_pretrained(path)
    inputs = dict(processor(images=images, return_tensors="pt"))
    if prompt:
        inputs.update(processor.tokenizer([prompt] * len(images), return_tensors="pt", return_token_type_ids=False))
    eager, fast = (_peaky_attention(BlipForConditionalGeneration.from_pretrained(path).eval()) for _ in range(2))
    # 2 vision layers + 2 text layers x (self-attention + cross-attention)
    assert enable_blip_sdpa(fast) == 6
    kwargs = {"max_new_tokens": 8, "min_new_tokens": 8, "do_sample": False, "output_scores": True,
              "return_dict_in_generate": True}
    with torch.no_grad():
        expected = eager.generate(**inputs, **kwargs)
        got = fast.generate(**inputs, **kwargs)
    assert got.sequences.tolist() == expected.sequences.tolist()
    assert len(got.scores) == len(expected.scores) == 8
    for step_got, step_expected in zip(got.scores, expected.scores, strict=True):
        finite = torch.isfinite(step_expected)
        torch.testing.assert_close(step_got[finite], step_expected[finite], rtol=1e-4, atol=1e-4)
    # The eager model really did something different per step (a constant output would pass trivially).
    assert not torch.equal(expected.scores[0], expected.scores[-1])


@pytest.fixture(scope="module")
def tagger(tiny_models_dir, tiny_settings):
    sets = load_label_sets(tiny_settings.labels_dir)
    return ClipTagger(model="tiny", weights=tiny_models_dir / CLIP_DIR, model_id="tiny", label_sets=sets,
                      device=CPU, dtype=torch.float32)


def test_tagger_top_k_per_set_with_probabilities(tagger, images):
    features = tagger.encode_images(images)
    assert features.shape[0] == 3
    torch.testing.assert_close(features.norm(dim=-1), torch.ones(3))
    tags = tagger.tag(features)
    for per_image in tags:
        for name, label_set in tagger.label_sets.items():
            scored = per_image[name]
            assert len(scored) == label_set.top_k
            assert all(s.label in label_set.labels for s in scored)
            assert [s.score for s in scored] == sorted((s.score for s in scored), reverse=True)
            assert all(0.0 <= s.score <= 1.0 for s in scored)


def test_label_embeddings_are_computed_once_not_per_image(tagger, images, monkeypatch):
    calls = []
    original = tagger.encode_texts
    monkeypatch.setattr(tagger, "encode_texts", lambda texts: calls.append(len(texts)) or original(texts))
    for _ in range(3):
        tagger.tag(tagger.encode_images(images))
    assert calls == []
    # Changing one set re-encodes only that set.
    sets = dict(tagger.label_sets)
    from bot.labels import LabelSet

    sets["mood"] = LabelSet("mood", ("happy", "sad"), ("a happy picture", "a sad picture"), 1)
    tagger.set_label_sets(sets)
    assert calls == [2]


def test_embedder_is_the_real_minilm(tiny_settings):
    path = resolve_hf("embedder", tiny_settings.models.embedder.model, offline=True)
    embedder = TextEmbedder(path, model_id="minilm", device=CPU)
    vectors = embedder.embed(["a dog running on the beach", "a puppy playing by the sea", "a spreadsheet of taxes"])
    assert vectors.shape == (3, 384) and vectors.dtype == np.float32
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2] + 0.2
    assert embedder.embed([]).shape == (0, 384)


def test_transformers_sentiment_three_classes(tiny_models_dir):
    model = TransformersSentiment(tiny_models_dir / SENTIMENT_DIR, model_id="tiny", device=CPU)
    results = model.score(["I love it", "I hate it"])
    for result in results:
        assert set(result.scores) == set(SENTIMENT_LABELS)
        assert result.label in SENTIMENT_LABELS
        assert abs(sum(result.scores.values()) - 1.0) < 1e-4


def test_vader_backend_is_real_and_offline():
    model = VaderSentiment()
    positive, negative, neutral = model.score(["What a wonderful, happy day!", "This is awful and sad.", "A chair."])
    assert positive.label == "positive" and positive.polarity > 0.5
    assert negative.label == "negative" and negative.polarity < -0.3
    assert neutral.label == "neutral"


def test_missing_model_fails_fast_naming_it():
    with pytest.raises(ModelUnavailable, match="Salesforce/blip-image-captioning-base"):
        resolve_hf("captioner", "Salesforce/blip-image-captioning-base", offline=True)
    with pytest.raises(ModelUnavailable, match="ViT-B-32/laion2b_s34b_b79k"):
        resolve_clip("ViT-B-32", "laion2b_s34b_b79k", offline=True)


def test_caption_only_topics_use_the_text_embedder(analyzer):
    vectors = analyzer.embed_texts(["a cute dog and a kitten sleeping", "a plate of pasta and a glass of wine"])
    first, second = analyzer.caption_topics.assign(vectors)
    assert first[0].label in {"animals", "pets"}
    assert second[0].label == "food and drink"


def test_pipeline_full_record(analyzer, photos):
    decoded = [decode_image(photos[name]) for name in ("astronaut", "rocket")]
    records = analyzer.analyze(decoded)
    assert len(records) == 2
    record = records[0]
    assert record.caption
    assert set(record.labels) >= {"objects", "scenes", "medium", "mood"}
    assert "topics" not in record.labels and "sentiment" not in record.labels
    assert record.image_sentiment is not None
    assert record.topics and record.caption_topics
    assert len(record.caption_embedding) == 384
    assert len(record.image_embedding) == 32  # the tiny CLIP's embedding size
    assert set(record.model_ids) == {"captioner", "tagger", "embedder", "sentiment", "reader"}
    assert (record.width, record.height) == (512, 512)
    assert analyzer.clip_texts(["a dog"]).shape == (1, 32)
    assert analyzer.analyze([]) == []


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_pipeline_gives_finite_records(tiny_settings, photos, dtype):
    """The dtypes the bot picks on CUDA (bf16, or fp16 on older GPUs), run here on the CPU: the same
    casts, pixel batches and tensor → numpy conversions the GPU path takes, minus the device."""
    from bot.pipeline import Analyzer

    models = tiny_settings.models.model_copy(update={"device": "cpu", "dtype": dtype})
    half = Analyzer.from_settings(tiny_settings.model_copy(update={"models": models}))
    assert half.captioner.model.dtype == getattr(torch, dtype)
    decoded = [decode_image(photos[name]) for name in ("astronaut", "rocket")]
    records = half.analyze([half.prepare(item) for item in decoded])
    assert len(records) == 2 and all(record.caption for record in records)
    for record in records:
        for vector, size in ((record.image_embedding, 32), (record.caption_embedding, 384)):
            array = np.asarray(vector)
            assert array.shape == (size,) and np.isfinite(array).all()
            assert abs(float(np.linalg.norm(array)) - 1.0) < 1e-2  # normalised, despite half-precision math
        assert all(0.0 <= scored.score <= 1.0 for tags in record.labels.values() for scored in tags)
    texts = half.clip_texts(["a dog", "a rocket"])
    assert texts.dtype == np.float32 and texts.shape == (2, 32) and np.isfinite(texts).all()


def test_fast_tier_plus_caption_tier_equals_the_full_analysis(analyzer, photos):
    """``analyze_fast(x)[i].with_caption(caption(x)[i]) == analyze(x)[i]``, field for field, on plain
    decoded images and on each tier's own prepared pixels alike."""
    from bot.analysis import ImageAnalysis

    decoded = [decode_image(photos[name]) for name in ("astronaut", "chelsea", "coffee")]
    full = analyzer.analyze(decoded)
    fast = analyzer.analyze_fast(decoded)
    parts = analyzer.caption(decoded)
    assert len(fast) == len(parts) == 3
    for record, part, whole in zip(fast, parts, full, strict=True):
        assert record.caption_pending and record.caption == ""
        assert record.caption_embedding == [] and record.caption_topics == []
        assert record.image_sentiment is not None and record.sentiment == record.image_sentiment
        assert set(record.model_ids) == {"tagger", "reader"}
        assert set(part.model_ids) == {"captioner", "embedder", "sentiment"}
        completed = record.with_caption(part)
        assert not completed.caption_pending
        for name in ImageAnalysis.__dataclass_fields__:
            assert getattr(completed, name) == getattr(whole, name), name
        assert completed == whole
    # Prepared in the decode threads, one tier's pixels each: the same records.
    assert analyzer.analyze_fast([analyzer.prepare(item, "fast") for item in decoded]) == fast
    assert analyzer.caption([analyzer.prepare(item, "caption") for item in decoded]) == parts
    # A fast-tier item handed to the full analysis still gets its caption (from the PIL image).
    assert analyzer.analyze([analyzer.prepare(item, "fast") for item in decoded]) == full
    assert analyzer.analyze_fast([]) == [] and analyzer.caption([]) == []


def test_fast_tier_mood_is_neutral_without_an_image_sentiment_label_set(analyzer, photos):
    from bot.pipeline import NEUTRAL

    label_sets = dict(analyzer.tagger.label_sets)
    analyzer.tagger.set_label_sets({name: s for name, s in label_sets.items() if name != "sentiment"})
    try:
        (record,) = analyzer.analyze_fast([decode_image(photos["rocket"])])
    finally:
        analyzer.tagger.set_label_sets(label_sets)
    assert record.image_sentiment is None and record.sentiment == NEUTRAL and record.sentiment.label == "neutral"
    assert "Mood: neutral" in record.context_line() and "caption not written yet" in record.context_line()


def test_yield_points_run_between_layers_of_every_role(analyzer, photos):
    """The hook the queue installs is called inside each model (BLIP, CLIP, MiniLM, RoBERTa), from
    the thread running it, and changes nothing in the results."""
    calls: list[int] = []
    before = analyzer.analyze([decode_image(photos["coffee"])])
    analyzer.set_yield_point(lambda: calls.append(1))
    try:
        after = analyzer.analyze([decode_image(photos["coffee"])])
        during_analysis = len(calls)
        analyzer.embed_texts(["a dog"])
        analyzer.clip_texts(["a dog"])
        analyzer.score_sentiment(["a dog"])
    finally:
        analyzer.set_yield_point(None)
    assert after == before
    # More than one call per role: every layer of BLIP's towers (per generated token), CLIP, text.
    assert during_analysis > 20 and len(calls) > during_analysis + 3
    calls.clear()
    analyzer.analyze([decode_image(photos["coffee"])])
    assert calls == []
