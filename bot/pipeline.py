"""The model pipeline: decoded images in, :class:`ImageAnalysis` records out, one batch at a time.

Each role runs once per batch (BLIP captions the whole batch, CLIP encodes it once and tags every
label set from the same features, the caption texts are embedded and scored together). This class
is synchronous and knows nothing about asyncio or Discord; the inference queue calls it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from bot.analysis import ImageAnalysis, Sentiment
from bot.config import Settings
from bot.imaging import DecodedImage
from bot.labels import load_label_sets
from bot.models.captioner import BlipCaptioner, Captioner
from bot.models.device import resolve_device, resolve_dtype
from bot.models.embedder import TextEmbedder
from bot.models.hub import resolve_clip, resolve_hf
from bot.models.sentiment import SentimentModel, TransformersSentiment, VaderSentiment
from bot.models.tagger import ClipTagger
from bot.models.topics import CaptionTopics

log = logging.getLogger(__name__)
# Label sets scored separately from the generic "labels" (they have their own fields).
_SPECIAL_SETS = ("topics", "sentiment")


@dataclass
class StageTimings:
    """Seconds spent per role in the last batch (for metrics and benchmarks)."""

    caption: float = 0.0
    clip: float = 0.0
    text: float = 0.0


class Analyzer:
    def __init__(
        self,
        *,
        captioner: Captioner,
        tagger: ClipTagger,
        embedder: TextEmbedder,
        sentiment: SentimentModel,
    ) -> None:
        self.captioner = captioner
        self.tagger = tagger
        self.embedder = embedder
        self.sentiment = sentiment
        self.caption_topics = CaptionTopics(embedder, tagger.label_sets["topics"])
        self.last_timings = StageTimings()

    @classmethod
    def from_settings(cls, settings: Settings) -> Analyzer:
        """Load every role from config; raises ModelUnavailable naming a missing model."""
        models = settings.models
        device = resolve_device(models.device)
        dtype = resolve_dtype(models.dtype, device)
        cache, offline = models.cache_dir, models.offline
        label_sets = load_label_sets(settings.labels_dir, models.tagger.top_k)

        captioner_id = settings.resolve_model(models.captioner.model)
        clip_model = settings.resolve_model(models.tagger.model)
        embedder_id = settings.resolve_model(models.embedder.model)
        # Resolve every path first so a missing model is reported before minutes of loading.
        blip_path = resolve_hf("captioner", captioner_id, cache_dir=cache, offline=offline)
        clip_path = resolve_clip(clip_model, models.tagger.pretrained, cache_dir=cache, offline=offline)
        embedder_path = resolve_hf("embedder", embedder_id, cache_dir=cache, offline=offline)
        sentiment_path = None
        if models.sentiment.backend == "transformers":
            sentiment_id = settings.resolve_model(models.sentiment.model)
            sentiment_path = resolve_hf("sentiment", sentiment_id, cache_dir=cache, offline=offline)

        started = time.perf_counter()
        captioner = BlipCaptioner(
            blip_path, model_id=models.captioner.model, device=device, dtype=dtype,
            max_new_tokens=models.captioner.max_new_tokens, num_beams=models.captioner.num_beams,
            prompt=models.captioner.prompt,
        )
        tagger = ClipTagger(
            model=clip_model, weights=clip_path, label_sets=label_sets, device=device, dtype=dtype,
            model_id=f"{models.tagger.model}/{models.tagger.pretrained}",
        )
        embedder = TextEmbedder(embedder_path, model_id=models.embedder.model, device=device)
        sentiment: SentimentModel
        if sentiment_path is not None:
            sentiment = TransformersSentiment(sentiment_path, model_id=models.sentiment.model, device=device)
        else:
            sentiment = VaderSentiment()
        log.info("models loaded on %s (%s) in %.1fs", device, str(dtype).removeprefix("torch."),
                 time.perf_counter() - started)
        return cls(captioner=captioner, tagger=tagger, embedder=embedder, sentiment=sentiment)

    @property
    def model_ids(self) -> dict[str, str]:
        return {
            "captioner": self.captioner.model_id,
            "tagger": self.tagger.model_id,
            "embedder": self.embedder.model_id,
            "sentiment": self.sentiment.model_id,
        }

    def analyze(self, images: Sequence[DecodedImage]) -> list[ImageAnalysis]:
        if not images:
            return []
        pil_images = [decoded.image for decoded in images]
        timings = StageTimings()

        started = time.perf_counter()
        captions = self.captioner.caption(pil_images)
        timings.caption = time.perf_counter() - started

        started = time.perf_counter()
        image_features = self.tagger.encode_images(pil_images)
        generic_sets = [name for name in self.tagger.label_sets if name not in _SPECIAL_SETS]
        labels = self.tagger.tag(image_features, generic_sets)
        topics = self.tagger.tag(image_features, ["topics"])
        image_sentiments: list[Sentiment | None] = [None] * len(images)
        if "sentiment" in self.tagger.label_sets:
            image_sentiments = [
                Sentiment.from_scores(scores) for scores in self.tagger.full_scores(image_features, "sentiment")
            ]
        image_vectors = image_features.cpu().numpy().astype(np.float32)
        timings.clip = time.perf_counter() - started

        started = time.perf_counter()
        caption_vectors = self.embedder.embed(captions)
        caption_topics = self.caption_topics.assign(caption_vectors)
        sentiments = self.sentiment.score(captions)
        timings.text = time.perf_counter() - started
        self.last_timings = timings

        model_ids = self.model_ids
        return [
            ImageAnalysis(
                caption=captions[i],
                labels=labels[i],
                sentiment=sentiments[i],
                image_sentiment=image_sentiments[i],
                topics=topics[i]["topics"],
                caption_topics=caption_topics[i],
                caption_embedding=caption_vectors[i].tolist(),
                image_embedding=image_vectors[i].tolist(),
                model_ids=model_ids,
                width=decoded.original_size[0],
                height=decoded.original_size[1],
                format=decoded.format,
                animated=decoded.animated,
            )
            for i, decoded in enumerate(images)
        ]

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Caption-space vectors for search queries."""
        return self.embedder.embed(texts)

    def clip_texts(self, texts: Sequence[str]) -> np.ndarray:
        """CLIP text vectors (text→image search)."""
        return self.tagger.encode_texts(texts).cpu().numpy().astype(np.float32)
