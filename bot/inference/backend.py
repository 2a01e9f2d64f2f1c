"""The two seams of the inference package: what the bot calls, and what the models must offer.

- :class:`InferenceBackend` is everything the rest of the bot calls on ``services.queue``: the
  in-process :class:`~bot.inference.queue.InferenceQueue` and the Ray Serve client
  (:class:`bot.inference.ray.client.RayInferenceClient`) both implement all of it, with the same
  keyword arguments and defaults, so ``[inference] backend`` can switch between them without a
  caller noticing (``tests/test_ray_serve.py`` checks both against this protocol).
- :class:`AnalyzerLike` is everything the queue calls on :class:`bot.pipeline.Analyzer`, complete,
  so the queue calls it directly instead of probing for optional methods; test fakes implement the
  whole of it too (``tests/test_inference_queue.py`` has a small base class for them).

Both are ``runtime_checkable``, which checks that the members exist, not their signatures: the
signatures are checked by the tests and by a type checker (each backend's module ends with a
``TYPE_CHECKING`` function returning it as an :class:`InferenceBackend`; the
:class:`~bot.pipeline.Analyzer` is checked where ``InferenceQueue.from_settings`` hands its loader
to the queue as a factory of :class:`AnalyzerLike`).

:class:`BackendBase` holds the members that are the same on every backend (the context manager and
the three text calls, down to what an empty list answers), so the two backends differ only in how
a job is run, not in what a caller sees.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol, Self, runtime_checkable

import numpy as np

from bot.inference.batching import JobKind, Priority

if TYPE_CHECKING:
    from bot.analysis import CaptionPart, ImageAnalysis, Sentiment
    from bot.imaging import DecodedImage
    from bot.inference.metrics import QueueMetrics
    from bot.pipeline import StageTimings, Tier

__all__ = ["AnalyzerLike", "BackendBase", "InferenceBackend"]


@runtime_checkable
class InferenceBackend(Protocol):
    """The bot's one way to the models: analyse images (whole or in two tiers) and encode texts.

    Every call is one job with a ``timeout`` (default ``queue.job_timeout_s``) and a
    :class:`Priority` (interactive work goes first where the backend can order work; the Ray client
    accepts it and serves in arrival order). A job ends with its result, the decoder's
    :class:`~bot.imaging.ImageRejected` for a bad file, or an :class:`~bot.inference.errors.InferenceError`
    (busy, timeout, worker crashed, out of memory, closed); ``metrics`` counts every outcome for
    ``/status``. ``analyze_fast`` gives a record and the decoded image to hand to ``caption`` later,
    or a complete record and None where the backend has no tiers (Ray).
    """

    metrics: QueueMetrics

    @property
    def running(self) -> bool:
        """Whether jobs are taken now (started, not closing)."""
        ...

    async def start(self) -> None:
        """Ready the models (load them, or find the deployment); returns when jobs can run."""
        ...

    async def close(self, *, drain: bool = True, timeout: float | None = None) -> None:  # noqa: ASYNC109
        """Stop taking jobs; with ``drain``, let the accepted ones finish for up to ``timeout`` seconds."""
        ...

    async def __aenter__(self) -> InferenceBackend: ...

    async def __aexit__(self, *exc_info: object) -> None: ...

    async def analyze(
        self,
        data: bytes | bytearray | memoryview,
        *,
        filename: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109
        priority: Priority = Priority.INTERACTIVE,
    ) -> ImageAnalysis:
        """The full analysis of untrusted image bytes."""
        ...

    async def analyze_fast(
        self,
        data: bytes | bytearray | memoryview,
        *,
        filename: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109
        priority: Priority = Priority.BACKGROUND,
        read_text: bool = True,
    ) -> tuple[ImageAnalysis, DecodedImage | None]:
        """A first look (``caption_pending`` True) and the decoded image, or a complete record and None.

        ``read_text=False``: the first look may skip the text reader (a deep ingest backlog; its record
        then says ``text_pending`` and needs :meth:`analyze` to be completed, not :meth:`caption`);
        a backend that answers with complete records may ignore it."""
        ...

    async def caption(
        self,
        decoded: DecodedImage,
        *,
        timeout: float | None = None,  # noqa: ASYNC109
        priority: Priority = Priority.BACKGROUND,
    ) -> CaptionPart:
        """The caption tier for an image :meth:`analyze_fast` decoded."""
        ...

    async def embed_texts(
        self,
        texts: Sequence[str],
        *,
        timeout: float | None = None,  # noqa: ASYNC109
        priority: Priority = Priority.INTERACTIVE,
    ) -> np.ndarray:
        """Caption-space (MiniLM) vectors, one row per text."""
        ...

    async def clip_texts(
        self,
        texts: Sequence[str],
        *,
        timeout: float | None = None,  # noqa: ASYNC109
        priority: Priority = Priority.INTERACTIVE,
    ) -> np.ndarray:
        """CLIP text vectors (text→image search), one row per text."""
        ...

    async def score_sentiment(
        self,
        texts: Sequence[str],
        *,
        timeout: float | None = None,  # noqa: ASYNC109
        priority: Priority = Priority.INTERACTIVE,
    ) -> list[Sentiment]:
        """The sentiment model on free text, one :class:`~bot.analysis.Sentiment` per text."""
        ...


class BackendBase(ABC):
    """What every :class:`InferenceBackend` does the same way; a subclass says how a text job runs.

    ``embed_texts`` / ``clip_texts`` / ``score_sentiment`` answer an empty list at once, without a
    job (an empty ``(0, 0)`` array, or ``[]``), and otherwise submit one job of their kind through
    :meth:`_text_job`. ``async with backend:`` starts it and closes it (draining).
    """

    @abstractmethod
    async def start(self) -> None: ...

    @abstractmethod
    async def close(self, *, drain: bool = True, timeout: float | None = None) -> None: ...  # noqa: ASYNC109

    @abstractmethod
    async def _text_job(self, kind: JobKind, texts: list[str], job_timeout: float | None, priority: Priority) -> Any:
        """Run one text job (``EMBED_TEXT``, ``CLIP_TEXT`` or ``SENTIMENT``) on at least one text."""

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def embed_texts(
        self,
        texts: Sequence[str],
        *,
        timeout: float | None = None,  # noqa: ASYNC109
        priority: Priority = Priority.INTERACTIVE,
    ) -> np.ndarray:
        """Caption-space (MiniLM) vectors, one row per text, batched with other callers' texts."""
        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        result: np.ndarray = await self._text_job(JobKind.EMBED_TEXT, list(texts), timeout, priority)
        return result

    async def clip_texts(
        self,
        texts: Sequence[str],
        *,
        timeout: float | None = None,  # noqa: ASYNC109
        priority: Priority = Priority.INTERACTIVE,
    ) -> np.ndarray:
        """CLIP text vectors (text→image search), one row per text."""
        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        result: np.ndarray = await self._text_job(JobKind.CLIP_TEXT, list(texts), timeout, priority)
        return result

    async def score_sentiment(
        self,
        texts: Sequence[str],
        *,
        timeout: float | None = None,  # noqa: ASYNC109
        priority: Priority = Priority.INTERACTIVE,
    ) -> list[Sentiment]:
        """The sentiment model on free text (one :class:`~bot.analysis.Sentiment` per text), batched like the rest."""
        if not texts:
            return []
        result: list[Sentiment] = await self._text_job(JobKind.SENTIMENT, list(texts), timeout, priority)
        return result


@runtime_checkable
class AnalyzerLike(Protocol):
    """What the queue needs from :class:`bot.pipeline.Analyzer`, all of it (tests pass small fakes).

    - ``text_size``: the longest side of the grayscale copy the text reader wants from the decoder
      (0: none), passed to every decode;
    - ``prepare(decoded, tier)``: CPU preprocessing, run in the decode pool ahead of the batch
      (``analyze`` / ``analyze_fast`` / ``caption`` then receive its output); ``tier`` is ``"full"``,
      ``"fast"`` or ``"caption"``; a fake may return ``decoded`` unchanged;
    - ``analyze`` (both tiers), ``analyze_fast`` (CLIP and the reader, ``caption_pending`` records;
      ``read`` gives one flag per image, False: skip the reader, the record says ``text_pending``) and
      ``caption`` (BLIP and the caption's text roles): ``fast.with_caption(part) == full``;
    - ``embed_texts`` / ``clip_texts`` / ``score_sentiment``: one row or sentiment per text;
    - ``last_timings``: per-role seconds of the last call on the calling thread, for metrics;
    - ``set_yield_point(hook)``: the analyzer calls ``hook()`` before it touches any model or
      tokenizer and between model layers; that is where a background batch takes the model turn and
      where it pauses for more urgent work. The queue installs it unless ``queue.preempt_background``
      is off (then background batches hold the turn from start to end and are only overtaken at
      their end).

    The methods are called from three worker threads, never at the same time (the model turn), but a
    call may be paused inside ``hook()`` while a more urgent one runs; ``prepare`` runs in the decode
    threads, beside a running model.
    """

    @property
    def text_size(self) -> int: ...

    @property
    def last_timings(self) -> StageTimings: ...

    def set_yield_point(self, hook: Callable[[], None] | None) -> None: ...

    def prepare(self, decoded: DecodedImage, tier: Tier = "full") -> Any: ...

    def analyze(self, images: Sequence[Any]) -> list[ImageAnalysis]: ...

    def analyze_fast(self, images: Sequence[Any], *, read: Sequence[bool] | None = None) -> list[ImageAnalysis]: ...

    def caption(self, images: Sequence[Any]) -> list[CaptionPart]: ...

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray: ...

    def clip_texts(self, texts: Sequence[str]) -> np.ndarray: ...

    def score_sentiment(self, texts: Sequence[str]) -> list[Sentiment]: ...
