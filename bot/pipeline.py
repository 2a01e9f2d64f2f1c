"""The model pipeline: decoded images in, :class:`ImageAnalysis` records out, one batch at a time.

Each role runs once per batch (BLIP captions the whole batch, CLIP encodes it once and tags every
label set from the same features, the caption texts are embedded and scored together). This class
is synchronous and knows nothing about asyncio or Discord; the inference queue calls it.

Work is split in two so the CPU and the accelerator overlap: :meth:`Analyzer.prepare` (one image,
CPU only, thread-safe: the models' resize/normalise) runs in the queue's decode threads while the
worker thread runs :meth:`Analyzer.analyze` on the previous batch, which then only stacks the
prepared tensors, copies them to the device and runs the models.

Analysis also comes in two tiers, for a small host where the captioner is most of the cost (BLIP is
~0.8 s of the ~0.9 s an image costs on a 2-core CPU): :meth:`Analyzer.analyze_fast` runs CLIP
and the text reader (labels, image topics and mood, the image vector, the words in the picture: a
picture is findable within a second, a screenshot by what it says; under a deep ingest backlog the
reader is skipped per picture and the words come with a full analysis later: ``text_pending``) and
:meth:`Analyzer.caption` runs BLIP and the caption's text roles later. Together they give exactly
what :meth:`Analyzer.analyze` gives (``fast.with_caption(part) == full``).

The model roles are not locked here; the inference queue lets one batch compute at a time (its
model turn). :meth:`Analyzer.set_yield_point` installs the queue's checkpoint between model layers,
so a long background batch can pause for interactive work and resume where it stopped.

The text reader (OCR: onnxruntime on the CPU, whatever the models' device) runs in one of two places
(``models.ocr.read_in``, :func:`read_placement`): in the model turn, one picture at a time with the
yield point between pictures (a CPU host: the cores go to one thing at a time, by priority), or in
:meth:`Analyzer.prepare`, i.e. in the decode threads while the previous batch computes (a GPU host:
~39 ms of CPU per photo and ~0.3 s per picture with text would otherwise keep a 512-picture GPU batch
waiting ~20 s in the turn with the accelerator idle).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeGuard

import numpy as np
import torch
from PIL import Image

from bot.analysis import CaptionPart, ImageAnalysis, Scored, Sentiment
from bot.config import OcrSettings, Settings
from bot.imaging import DecodedImage
from bot.labels import load_label_sets
from bot.models.captioner import BlipCaptioner, Captioner, SplitCaptioner
from bot.models.device import resolve_device, resolve_dtype
from bot.models.embedder import TextEmbedder
from bot.models.hub import resolve_clip, resolve_hf
from bot.models.reader import TextReader
from bot.models.sentiment import SentimentModel, TransformersSentiment, VaderSentiment
from bot.models.tagger import ClipTagger
from bot.models.topics import CaptionTopics

log = logging.getLogger(__name__)
# Label sets scored separately from the generic "labels" (they have their own fields).
_SPECIAL_SETS = ("topics", "sentiment")
#: The roles whose model ids a :class:`CaptionPart` carries (the fast tier's record has the tagger's).
CAPTION_ROLES = ("captioner", "embedder", "sentiment")
#: A fast-tier record's mood when the label sets have no ``sentiment`` set to read it from the image.
NEUTRAL = Sentiment.from_scores({"neutral": 1.0})
Tier = Literal["full", "fast", "caption"]
#: ``models.ocr.read_in``: where the text reader runs ("auto" is decided by the models' device).
ReadIn = Literal["auto", "model_turn", "prepare"]
#: Where the text reader runs, once "auto" is decided (:func:`read_placement`).
ReadPlacement = Literal["model_turn", "prepare"]
#: The tiers whose records carry the picture's words (the caption tier's part has none).
READING_TIERS: frozenset[Tier] = frozenset({"full", "fast"})


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
    read: float = 0.0  # the text reader (OCR), gate included, in the model turn
    # The same reader's seconds spent on this batch's pictures earlier, in :meth:`Analyzer.prepare`
    # (``models.ocr.read_in = "prepare"``): CPU time in the decode threads, not in the turn.
    read_ahead: float = 0.0


@dataclass(frozen=True)
class PreparedImage:
    """A decoded image plus its model-ready pixels, made on a CPU thread ahead of the batch.

    ``caption_pixels`` is None for a captioner without a separate ``preprocess`` step (it then gets
    the PIL image at batch time) or when only the fast tier was prepared; ``clip_pixels`` is None
    when only the caption tier was. ``text`` is the picture's words when the reader ran at prepare
    time (``models.ocr.read_in``; then ``decoded`` no longer carries the reader's gray copy, which is
    several MB a picture while a large batch waits), None when it has not read them yet; ``read_s``
    is how long that took. Whatever is missing is made at batch time.
    """

    decoded: DecodedImage
    caption_pixels: torch.Tensor | None
    clip_pixels: torch.Tensor | None
    text: str | None = None
    read_s: float = field(default=0.0, compare=False)


@dataclass(frozen=True)
class _ClipPart:
    labels: list[dict[str, list[Scored]]]
    topics: list[list[Scored]]
    image_sentiments: list[Sentiment | None]
    image_vectors: np.ndarray


@dataclass(frozen=True)
class _TextPart:
    vectors: np.ndarray
    topics: list[list[Scored]]
    sentiments: list[Sentiment]


def caption_part_of(record: ImageAnalysis) -> CaptionPart:
    """The caption tier's share of a complete record (for backends that only run full analyses)."""
    return CaptionPart(
        caption=record.caption, sentiment=record.sentiment, caption_topics=record.caption_topics,
        caption_embedding=record.caption_embedding,
        model_ids={role: record.model_ids[role] for role in CAPTION_ROLES if role in record.model_ids},
    )


def _no_yield() -> None:
    return None


def read_placement(setting: str, device: torch.device) -> ReadPlacement:
    """Where the text reader runs for ``models.ocr.read_in = setting`` with the models on ``device``.

    "auto" is "prepare" on CUDA: the reader is CPU work either way, and in the decode threads it
    overlaps the accelerator's batch instead of holding the model turn while the GPU idles. On a CPU
    it is "model_turn": there the reader competes with the models for the same cores, and in the turn
    it takes them in priority order with the queue's pause points between pictures (the behaviour
    before the setting existed). Only ``device.type`` is looked at, so no CUDA context is made.
    """
    if setting == "auto":
        return "prepare" if device.type == "cuda" else "model_turn"
    if setting == "model_turn" or setting == "prepare":
        return setting
    raise ValueError(f"models.ocr.read_in must be 'auto', 'model_turn' or 'prepare', not {setting!r}")


def reader_factory_for(settings: OcrSettings) -> Callable[[], TextReader]:
    """Builds more readers like the configured one (for :class:`ReaderPool`); the reader must be on."""

    def build() -> TextReader:
        reader = TextReader.from_settings(settings)
        if reader is None:
            raise ValueError("models.ocr.enabled is false: no reader to build")
        return reader

    return build


class ReaderPool:
    """Text readers for :meth:`Analyzer.prepare`, which several decode threads call at once.

    Thread safety, as found in rapidocr 3.x / onnxruntime: an onnxruntime ``InferenceSession.run`` is
    safe to call from several threads, but RapidOCR's Python wrapper keeps per-call state on its
    engine object (``__call__`` writes the call's ``use_det``/``use_cls``/``use_rec`` options onto the
    engine, and the detector swaps its ``preprocess_op`` on every call), so :class:`TextReader` holds
    one lock around every engine call. One shared reader is therefore safe but serial: one core of
    reading (~25 photos/s at ~39 ms each, ~3 pictures with text/s), which is less than a GPU batch
    consumes, so it would become the bottleneck again in the decode threads.

    So each concurrent read gets a reader of its own: the pool starts with the analyzer's reader and
    builds more on demand (``factory``) up to ``size``, which :meth:`Analyzer.from_settings` sets to
    ``queue.decode_workers`` (one per decode thread; a thread waits only if more threads than that
    read at once). The price is memory: measured ~150-170 MB RSS per extra reader (three engines'
    onnxruntime sessions and their buffers; the weights alone are ~50 MB), plus ~60 MB of malloc arena
    for any thread that reads, shared reader or not. Readers are built lazily, so a pool nobody reads
    from at prepare time (``read_in = "model_turn"``) costs nothing; a new one loads its models on its
    first read (a fraction of a second, once). Without a factory the pool is the analyzer's reader
    alone: correct, serial. The analyzer's reader may meanwhile also read in the model turn (items
    that were not read ahead); its lock serialises the two.
    """

    def __init__(self, first: TextReader, *, factory: Callable[[], TextReader] | None = None, size: int = 1) -> None:
        self._free = [first]
        self._made = 1
        self._size = max(1, size) if factory is not None else 1
        self._factory = factory
        self._cond = threading.Condition()

    @property
    def size(self) -> int:
        """The most readers this pool will hold."""
        return self._size

    @property
    def built(self) -> int:
        """Readers made so far, the analyzer's own included."""
        return self._made

    def read(self, image: Image.Image) -> str:
        """The words in one picture, on a reader no other thread is using meanwhile."""
        reader = self._take()
        try:
            return reader.read([image])[0]
        finally:
            with self._cond:
                self._free.append(reader)
                self._cond.notify()

    def _take(self) -> TextReader:
        with self._cond:
            while not self._free and self._made >= self._size:
                self._cond.wait()
            if self._free:
                return self._free.pop()  # the most recently used: warm caches
            self._made += 1
        assert self._factory is not None  # size > 1 only with a factory
        try:
            return self._factory()  # outside the lock: building one must not hold up the others
        except BaseException:
            with self._cond:
                self._made -= 1
                self._cond.notify()
            raise


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
        reader: TextReader | None = None,
        read_in: ReadIn = "model_turn",
        reader_factory: Callable[[], TextReader] | None = None,
        readers: int = 1,
    ) -> None:
        """``read_in``: where ``reader`` runs (:func:`read_placement`; "auto" is decided by the
        captioner's device). With "prepare", ``reader_factory`` and ``readers`` size the
        :class:`ReaderPool` the decode threads read with. The default keeps the reader in the model
        turn, as before the setting existed (benchmarks build analyzers this way)."""
        self.captioner = captioner
        self.tagger = tagger
        self.embedder = embedder
        self.sentiment = sentiment
        self.reader = reader  # None: text in pictures is not read (models.ocr.enabled = false)
        self.read_placement = read_placement(read_in, self.device)
        self._reader_pool = None if reader is None else ReaderPool(reader, factory=reader_factory, size=readers)
        self.caption_topics = CaptionTopics(embedder, tagger.label_sets["topics"])
        self._local = threading.local()  # last_timings, per thread (the queue has two workers)
        self._yield_point: Callable[[], None] = _no_yield
        self._layer_hooks: list[Any] = []

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
            decoder=models.captioner.decoder,
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
        reader = TextReader.from_settings(models.ocr)
        # DEBUG: Services.start reports the loading phase with its time to people (console, run's log).
        log.debug("models loaded on %s (%s) in %.1fs", device, str(dtype).removeprefix("torch."),
                 time.perf_counter() - started)
        analyzer = cls(
            captioner=captioner, tagger=tagger, embedder=embedder, sentiment=sentiment, reader=reader,
            read_in=models.ocr.read_in, reader_factory=reader_factory_for(models.ocr) if reader is not None else None,
            readers=settings.queue.decode_workers,
        )
        if reader is not None and analyzer.read_placement == "prepare":
            log.info("text reader: reading in the decode threads, up to %d readers (models.ocr.read_in)",
                     settings.queue.decode_workers)
        return analyzer

    @property
    def model_ids(self) -> dict[str, str]:
        ids = {
            "captioner": self.captioner.model_id,
            "tagger": self.tagger.model_id,
            "embedder": self.embedder.model_id,
            "sentiment": self.sentiment.model_id,
        }
        if self.reader is not None:
            ids["reader"] = self.reader.model_id
        return ids

    @property
    def text_size(self) -> int:
        """The longest side of the grayscale copy the text reader wants from the decoder (0: none).

        Whoever decodes for this analyzer passes it on (``decode(..., text_size=analyzer.text_size)``)."""
        return self.reader.max_side if self.reader is not None else 0

    @property
    def device(self) -> torch.device:
        """Where the vision models run (the captioner's device; CPU for captioners that don't say)."""
        return getattr(self.captioner, "device", None) or torch.device("cpu")

    @property
    def last_timings(self) -> StageTimings:
        """Per-role seconds of the last batch *this thread* ran (each queue worker reads its own)."""
        timings: StageTimings | None = getattr(self._local, "timings", None)
        return timings if timings is not None else StageTimings()

    @last_timings.setter
    def last_timings(self, timings: StageTimings) -> None:
        self._local.timings = timings

    # ---------------------------------------------------------------- yield points

    def set_yield_point(self, hook: Callable[[], None] | None) -> None:
        """Call ``hook`` before every transformer layer of every role, and before each role starts.

        The inference queue passes its :meth:`~bot.inference.batching.JobBoard.checkpoint`: a
        background batch takes the model turn at the first call and pauses at later ones while
        interactive work runs on the same models, then goes on where it stopped. The contract the
        queue relies on: no model and no tokenizer is touched before the first call of a method
        (:meth:`prepare` excepted: CPU image processing only, and with ``read_in = "prepare"`` the
        text reader, whose onnxruntime sessions share nothing with the torch models: safe beside a
        running model).

        A layer is the finest step that is still cheap to check (a few hundredths of a second of
        compute on a CPU; the check is two attribute reads). Layers are the members of the models'
        ``ModuleList`` containers (BLIP's vision encoder and text decoder, CLIP's two towers, the
        BERT/RoBERTa text encoders). None removes the hook's effect.
        """
        self._yield_point = hook or _no_yield
        if not self._layer_hooks:
            self._layer_hooks = [
                module.register_forward_pre_hook(self._before_layer) for module in self._layer_modules()
            ]

    def _before_layer(self, _module: torch.nn.Module, _args: Any) -> None:
        self._yield_point()

    def _layer_modules(self) -> Iterator[torch.nn.Module]:
        for role in (self.captioner, self.tagger, self.embedder, self.sentiment):
            model = getattr(role, "model", None)
            if not isinstance(model, torch.nn.Module):
                continue
            for module in model.modules():
                if isinstance(module, torch.nn.ModuleList):
                    yield from module

    # ---------------------------------------------------------------- preprocessing

    def prepare(self, decoded: DecodedImage, tier: Tier = "full") -> PreparedImage:
        """CPU preprocessing for one image: thread-safe, no torch model weights touched.

        The inference queue calls this in its decode threads, so resize/normalise for the next batch
        happens while the worker thread is busy with the current one. ``tier`` limits it to what the
        fast tier (CLIP pixels) or the caption tier (BLIP pixels) needs. With the reader placed here
        (:attr:`read_placement` "prepare") the full and fast tiers also read the picture's words, on
        a reader no other thread uses meanwhile (:class:`ReaderPool`), and drop the reader's gray copy.
        """
        return self._prepare(decoded, tier, read=self.read_placement == "prepare")

    def _prepare(self, decoded: DecodedImage, tier: Tier, *, read: bool) -> PreparedImage:
        caption_pixels = None
        if tier != "fast" and _splits_preprocessing(self.captioner):
            caption_pixels = self.captioner.preprocess([decoded.image])[0]
        clip_pixels = self.tagger.preprocess_batch([decoded.image])[0] if tier != "caption" else None
        text, read_s = None, 0.0
        if read and self._reader_pool is not None and tier in READING_TIERS:
            started = time.perf_counter()
            text = self._reader_pool.read(decoded.text_image or decoded.image)
            read_s = time.perf_counter() - started
            decoded = decoded.without_text_image()
        return PreparedImage(decoded=decoded, caption_pixels=caption_pixels, clip_pixels=clip_pixels,
                             text=text, read_s=read_s)

    def _prepared(self, images: Sequence[DecodedImage | PreparedImage], tier: Tier) -> list[PreparedImage]:
        """Batch time: items that arrived as plain decoded images are prepared here, in the model turn,
        without reading them (:meth:`_read` then reads them between yield points, as in the turn)."""
        return [item if isinstance(item, PreparedImage) else self._prepare(item, tier, read=False) for item in images]

    def _clip_pixels(self, item: PreparedImage) -> torch.Tensor:
        if item.clip_pixels is not None:
            return item.clip_pixels
        return self.tagger.preprocess_batch([item.decoded.image])[0]

    # ---------------------------------------------------------------- analysis

    def analyze(self, images: Sequence[DecodedImage | PreparedImage]) -> list[ImageAnalysis]:
        """One record per image, in order; each model role runs once for the whole batch.

        Items may be plain decoded images (prepared here) or :meth:`prepare` output (already
        preprocessed in a decode thread), mixed freely.
        """
        if not images:
            return []
        timings = StageTimings()
        started = time.perf_counter()
        prepared = self._prepared(images, "full")
        timings.prepare = time.perf_counter() - started
        # The CLIP batch is staged before BLIP runs: on CUDA its copy then overlaps BLIP's compute.
        clip_pixels = stage_batch([self._clip_pixels(item) for item in prepared], self.device)

        started = time.perf_counter()
        captions = self._captions(prepared)
        timings.caption = time.perf_counter() - started

        started = time.perf_counter()
        clip = self._clip(clip_pixels)
        timings.clip = time.perf_counter() - started

        started = time.perf_counter()
        words = self._read(prepared)
        timings.read = time.perf_counter() - started
        timings.read_ahead = sum(item.read_s for item in prepared)

        started = time.perf_counter()
        text = self._text(captions)
        timings.text = time.perf_counter() - started
        self.last_timings = timings

        model_ids = self.model_ids
        return [
            ImageAnalysis(
                caption=captions[i],
                labels=clip.labels[i],
                sentiment=text.sentiments[i],
                image_sentiment=clip.image_sentiments[i],
                topics=clip.topics[i],
                caption_topics=text.topics[i],
                caption_embedding=text.vectors[i].tolist(),
                image_embedding=clip.image_vectors[i].tolist(),
                model_ids=model_ids,
                width=decoded.original_size[0],
                height=decoded.original_size[1],
                format=decoded.format,
                animated=decoded.animated,
                text=words[i] or "",
            )
            for i, decoded in enumerate(item.decoded for item in prepared)
        ]

    def analyze_fast(self, images: Sequence[DecodedImage | PreparedImage], *,
                     read: Sequence[bool] | None = None) -> list[ImageAnalysis]:
        """The fast tier: CLIP and the text reader. Records with ``caption_pending=True``: no caption, caption
        embedding or caption topics yet, and the image's own mood (CLIP's ``sentiment`` set; neutral
        without one) as ``sentiment`` until :meth:`caption`'s part replaces it
        (:meth:`ImageAnalysis.with_caption`).

        ``read`` (one flag per image; None: all True) lets a deep ingest backlog skip the reader for
        some images: on a 2-core CPU it is ~39 ms per photo and 0.3-1 s per picture with text, one
        picture at a time in the model turn, which held a 150-picture burst's first looks back by
        seconds. An image not read gets ``text=""`` and ``text_pending=True`` (its words come with a
        full analysis later), unless its words were already read at prepare time (then they are
        used: free) or there is no reader at all (nothing is pending then)."""
        if not images:
            return []
        if read is not None and len(read) != len(images):
            raise ValueError(f"analyze_fast: {len(read)} read flags for {len(images)} images")
        timings = StageTimings()
        started = time.perf_counter()
        prepared = self._prepared(images, "fast")
        clip_pixels = stage_batch([self._clip_pixels(item) for item in prepared], self.device)
        timings.prepare = time.perf_counter() - started
        started = time.perf_counter()
        clip = self._clip(clip_pixels)
        timings.clip = time.perf_counter() - started
        started = time.perf_counter()
        words = self._read(prepared, read)
        timings.read = time.perf_counter() - started
        timings.read_ahead = sum(item.read_s for item in prepared)
        self.last_timings = timings
        model_ids = {role: ids for role, ids in self.model_ids.items() if role not in CAPTION_ROLES}
        return [
            ImageAnalysis(
                caption="",
                labels=clip.labels[i],
                sentiment=clip.image_sentiments[i] or NEUTRAL,
                image_sentiment=clip.image_sentiments[i],
                topics=clip.topics[i],
                caption_topics=[],
                caption_embedding=[],
                image_embedding=clip.image_vectors[i].tolist(),
                model_ids=dict(model_ids),
                width=decoded.original_size[0],
                height=decoded.original_size[1],
                format=decoded.format,
                animated=decoded.animated,
                caption_pending=True,
                text=words[i] or "",
                text_pending=words[i] is None,
            )
            for i, decoded in enumerate(item.decoded for item in prepared)
        ]

    def caption(self, images: Sequence[DecodedImage | PreparedImage]) -> list[CaptionPart]:
        """The caption tier: BLIP, then the caption's embedding, topics and sentiment (one per image)."""
        if not images:
            return []
        timings = StageTimings()
        started = time.perf_counter()
        prepared = self._prepared(images, "caption")
        timings.prepare = time.perf_counter() - started
        started = time.perf_counter()
        captions = self._captions(prepared)
        timings.caption = time.perf_counter() - started
        started = time.perf_counter()
        text = self._text(captions)
        timings.text = time.perf_counter() - started
        self.last_timings = timings
        model_ids = {role: self.model_ids[role] for role in CAPTION_ROLES}
        return [
            CaptionPart(
                caption=captions[i],
                sentiment=text.sentiments[i],
                caption_topics=text.topics[i],
                caption_embedding=text.vectors[i].tolist(),
                model_ids=dict(model_ids),
            )
            for i in range(len(prepared))
        ]

    def _captions(self, prepared: list[PreparedImage]) -> list[str]:
        """BLIP on the batch (its prepared pixels when every item has them, else the PIL images)."""
        self._yield_point()
        caption_tensors = [item.caption_pixels for item in prepared if item.caption_pixels is not None]
        if len(caption_tensors) == len(prepared) and _splits_preprocessing(self.captioner):
            return self.captioner.caption_pixels(stage_batch(caption_tensors, self.device))
        return self.captioner.caption([item.decoded.image for item in prepared])

    def _clip(self, clip_pixels: torch.Tensor) -> _ClipPart:
        """CLIP's image tower once, then every label set from the same features."""
        self._yield_point()
        image_features = self.tagger.encode_images(clip_pixels)
        generic_sets = [name for name in self.tagger.label_sets if name not in _SPECIAL_SETS]
        labels = self.tagger.tag(image_features, generic_sets)
        topics = [scored["topics"] for scored in self.tagger.tag(image_features, ["topics"])]
        image_sentiments: list[Sentiment | None] = [None] * len(clip_pixels)
        if "sentiment" in self.tagger.label_sets:
            image_sentiments = [
                Sentiment.from_scores(scores) for scores in self.tagger.full_scores(image_features, "sentiment")
            ]
        image_vectors = image_features.cpu().numpy().astype(np.float32)
        return _ClipPart(labels, topics, image_sentiments, image_vectors)

    def _read(self, prepared: list[PreparedImage], read: Sequence[bool] | None = None) -> list[str | None]:
        """The words of each picture: read at prepare time (``item.text``), else read here, in the turn;
        None for a picture whose ``read`` flag is False and that was not read ahead (not read yet).

        Here means the text reader on each picture's grayscale copy (its model image when the decoder
        made none), one picture at a time (RapidOCR reads one image per call; its recogniser batches
        the lines within it), with the queue's yield point between pictures: a long read of a
        screenshot-heavy background batch still gives way to interactive work. Items not read ahead
        (plain :class:`DecodedImage` prepared at batch time, ``read_in = "model_turn"``, an item
        prepared for the caption tier) are read here, whatever the placement: none is left unread,
        except those the caller asked not to read (``read``: :meth:`analyze_fast` under a backlog)."""
        if self.reader is None:
            return [""] * len(prepared)
        texts: list[str | None] = []
        for index, item in enumerate(prepared):
            if item.text is not None:
                texts.append(item.text)
                continue
            if read is not None and not read[index]:
                texts.append(None)
                continue
            self._yield_point()
            decoded = item.decoded
            texts.extend(self.reader.read([decoded.text_image or decoded.image]))
        return texts

    def _text(self, captions: list[str]) -> _TextPart:
        """The caption texts: embedded, assigned topics, and scored for sentiment, as one batch."""
        self._yield_point()
        vectors = self.embedder.embed(captions)
        topics = self.caption_topics.assign(vectors)
        self._yield_point()
        sentiments = self.sentiment.score(captions)
        return _TextPart(vectors, topics, sentiments)

    # ---------------------------------------------------------------- text

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Caption-space vectors for search queries."""
        self._yield_point()
        return self.embedder.embed(texts)

    def score_sentiment(self, texts: Sequence[str]) -> list[Sentiment]:
        """The sentiment role on free text (stories, /vibe), one result per text."""
        self._yield_point()
        return self.sentiment.score(texts)

    def clip_texts(self, texts: Sequence[str]) -> np.ndarray:
        """CLIP text vectors (text→image search)."""
        self._yield_point()
        return self.tagger.encode_texts(texts).cpu().numpy().astype(np.float32)
