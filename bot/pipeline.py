"""The model pipeline: decoded images in, :class:`ImageAnalysis` records out, one batch at a time.

Each role runs once per batch (BLIP captions the whole batch, CLIP encodes it once and tags every
label set from the same features, the caption texts are embedded and scored together). This class
is synchronous and knows nothing about asyncio or Discord; the inference queue calls it.

Work is split in two so the CPU and the accelerator overlap: :meth:`Analyzer.prepare` (one image,
CPU only, thread-safe: the models' resize/normalise) runs in the queue's decode threads while the
worker thread runs :meth:`Analyzer.analyze` on the previous batch, which then only stacks the
prepared tensors, copies them to the device and runs the models.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeGuard

import numpy as np
import torch

from bot.analysis import ImageAnalysis, Sentiment
from bot.config import Settings
from bot.imaging import DecodedImage
from bot.labels import load_label_sets
from bot.models.captioner import BlipCaptioner, Captioner, SplitCaptioner
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
    """Seconds spent per role in the last batch (for metrics and benchmarks).

    ``prepare`` is the CPU preprocessing done inside :meth:`Analyzer.analyze` for items that arrived
    as plain :class:`DecodedImage` (zero when the queue prepared them ahead in its decode threads).
    """

    caption: float = 0.0
    clip: float = 0.0
    text: float = 0.0
    prepare: float = 0.0


@dataclass(frozen=True)
class PreparedImage:
    """A decoded image plus its model-ready pixels, made on a CPU thread ahead of the batch.

    ``caption_pixels`` is None for a captioner without a separate ``preprocess`` step (it then gets
    the PIL image at batch time).
    """

    decoded: DecodedImage
    caption_pixels: torch.Tensor | None
    clip_pixels: torch.Tensor


def _splits_preprocessing(captioner: Captioner) -> TypeGuard[SplitCaptioner]:
    """Whether a captioner offers ``preprocess`` + ``caption_pixels`` (BLIP does; simple fakes may not)."""
    return callable(getattr(captioner, "preprocess", None)) and callable(getattr(captioner, "caption_pixels", None))


def stage_batch(tensors: Sequence[torch.Tensor], device: torch.device) -> torch.Tensor:
    """Stack per-image CPU tensors into one batch on ``device``.

    On CUDA the batch is stacked straight into page-locked (pinned) host memory, so the copy to the
    GPU can be issued ``non_blocking`` and overlaps whatever the GPU is still doing; PyTorch's
    pinned-memory allocator keeps the staging buffer alive until that copy has finished. On the CPU
    it is a plain stack (pinning would only add a copy).
    """
    if device.type != "cuda":
        return torch.stack(list(tensors))
    first = tensors[0]
    staging = torch.empty((len(tensors), *first.shape), dtype=first.dtype, pin_memory=True)
    torch.stack(list(tensors), out=staging)
    return staging.to(device, non_blocking=True)


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
            # Opt-in, CPU only; read defensively until the config grows the key.
            cpu_int8=models.captioner.cpu_int8,
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

    @property
    def device(self) -> torch.device:
        """Where the vision models run (the captioner's device; CPU for captioners that don't say)."""
        return getattr(self.captioner, "device", None) or torch.device("cpu")

    def prepare(self, decoded: DecodedImage) -> PreparedImage:
        """CPU preprocessing for one image: thread-safe, no model weights touched.

        The inference queue calls this in its decode threads, so resize/normalise for the next batch
        happens while the worker thread is busy with the current one.
        """
        caption_pixels = None
        if _splits_preprocessing(self.captioner):
            caption_pixels = self.captioner.preprocess([decoded.image])[0]
        clip_pixels = self.tagger.preprocess_batch([decoded.image])[0]
        return PreparedImage(decoded=decoded, caption_pixels=caption_pixels, clip_pixels=clip_pixels)

    def analyze(self, images: Sequence[DecodedImage | PreparedImage]) -> list[ImageAnalysis]:
        """One record per image, in order; each model role runs once for the whole batch.

        Items may be plain decoded images (prepared here) or :meth:`prepare` output (already
        preprocessed in a decode thread), mixed freely.
        """
        if not images:
            return []
        timings = StageTimings()
        started = time.perf_counter()
        prepared = [item if isinstance(item, PreparedImage) else self.prepare(item) for item in images]
        timings.prepare = time.perf_counter() - started
        device = self.device

        # The CLIP batch is staged before BLIP runs: on CUDA its copy then overlaps BLIP's compute.
        clip_pixels = stage_batch([item.clip_pixels for item in prepared], device)

        started = time.perf_counter()
        caption_tensors = [item.caption_pixels for item in prepared if item.caption_pixels is not None]
        if len(caption_tensors) == len(prepared) and _splits_preprocessing(self.captioner):
            captions = self.captioner.caption_pixels(stage_batch(caption_tensors, device))
        else:
            captions = self.captioner.caption([item.decoded.image for item in prepared])
        timings.caption = time.perf_counter() - started

        started = time.perf_counter()
        image_features = self.tagger.encode_images(clip_pixels)
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
            for i, decoded in enumerate(item.decoded for item in prepared)
        ]

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Caption-space vectors for search queries."""
        return self.embedder.embed(texts)

    def score_sentiment(self, texts: Sequence[str]) -> list[Sentiment]:
        """The sentiment role on free text (stories, /vibe), one result per text."""
        return self.sentiment.score(texts)

    def clip_texts(self, texts: Sequence[str]) -> np.ndarray:
        """CLIP text vectors (text→image search)."""
        return self.tagger.encode_texts(texts).cpu().numpy().astype(np.float32)
