"""Text reader role: the words in a picture (screenshots, memes, error messages, receipts).

RapidOCR 3.x runs PP-OCR's detection, direction and recognition models on onnxruntime; the models
ship inside the ``rapidocr`` wheel, so this role never downloads anything and the tests run it with
its real weights.

Most pictures people post are photos with no text, so a read starts with a **gate**: text detection
alone on a small copy. No text-shaped box there means no text and the picture costs nothing more;
otherwise the full pipeline runs on the ``max_side`` copy. The gate has two stages, because photos
and screenshots want different sizes (measured, ``bench/results/ocr_cpu.md``): a single gate at 480 px
costs a photo ~34 ms but passes only 30 % of whole-desktop screenshots (13-16 px text at 1600-2560 px
wide); at 640 it passes 80 % for ~60 ms per photo; at 960 all of them for ~140 ms. So the first stage
runs at ``gate_side`` (480) on every picture, and only a picture that found nothing there *and looks
like a screen* (:func:`looks_like_a_screen`: large areas of one flat tone, as UI backgrounds have and
photos almost never do) gets the second stage at ``screen_gate_side`` (960). Boxes shaped like blobs
rather than lines do not count (:func:`text_shaped`). Lines read
with less than ``min_confidence`` are dropped, and so are lines with fewer than two letters or digits
unless read with :data:`SHORT_LINE_CONFIDENCE`: photo textures that pass the gate mostly read as a
lone, doubtful character.

The reader gets the grayscale copy :func:`bot.imaging.decode_image` makes when asked for one
(``text_size``): the models' 384 px image is far too small for screenshot text, and gray is a third
of the bytes of RGB through the decoder pipe. What it returns is the picture's words as they are:
they are attacker-controlled, and :meth:`bot.analysis.ImageAnalysis.context_line` defuses them.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from bot.config import OcrSettings

log = logging.getLogger(__name__)

#: What records say read the text (model_ids["reader"]).
MODEL_ID = "rapidocr/PP-OCRv6-small"
#: A line with fewer than two letters/digits is kept only when read at least this surely.
SHORT_LINE_CONFIDENCE = 0.9
#: The gate's shape rule: a box counts as text when it is thin (its short side at most this share of the
#: picture's short side) or long (its long side at least :data:`GATE_MIN_ASPECT` times its short side).
#: What the detector finds on photos without text is one big, roughly square blob (a cup rim, a clock
#: face): gate hits on 104 photos without text dropped from 29 to 1, with no text image lost
#: (bench/results/ocr_cpu.md).
GATE_MAX_SHORT = 0.25
GATE_MIN_ASPECT = 2.0
#: A picture "looks like a screen" when at least this share of the gate copy's pixels lie within ±2 of
#: its most common gray level. Measured on the benchmark corpus: screenshots (chat, desktop, phone,
#: terminal, settings, receipt) 0.48-0.89; photos p50 0.10, p90 ~0.3, only dark-sky photos above 0.45.
SCREEN_FLAT_SHARE = 0.45


@dataclass(frozen=True)
class TextLine:
    text: str
    confidence: float


def joined(lines: Sequence[TextLine], max_chars: int) -> str:
    """The lines as one text, one per line, cut at ``max_chars`` (on a word boundary when it can)."""
    text = "\n".join(line.text.strip() for line in lines if line.text.strip())
    if len(text) <= max_chars:
        return text
    cut = text[:max_chars]
    space = max(cut.rfind(" "), cut.rfind("\n"))
    return (cut[:space] if space > max_chars // 2 else cut).rstrip()


class TextReader:
    """Reads the text in images: :meth:`read` gives one string per image ("" for none)."""

    model_id = MODEL_ID

    def __init__(self, *, gate_side: int = 480, max_side: int = 1920, min_confidence: float = 0.6,
                 max_chars: int = 1000, screen_gate_side: int | None = 960) -> None:
        from rapidocr import RapidOCR

        # One onnxruntime thread per engine: the same text for about half the CPU time (measured: 754 → 389
        # ms CPU p50 per picture with text, 137 → 85 ms per photo without), and the model turn's other
        # roles keep the second core.
        quiet = {"Global.log_level": "error", "EngineConfig.onnxruntime.intra_op_num_threads": 1}
        # The full reader: the detector scales the shortest side up to 480 (RapidOCR's own 736 splits
        # small lines into pieces read out of order; measured CER 1.83 → 1.21 %, CPU p50 337 → 252 ms),
        # and the longest side is capped at max_side.
        self._engine = RapidOCR(params={**quiet, "Global.max_side_len": max_side, "Det.limit_side_len": 480})
        # The gate: detection only, on a copy whose longest side is at most gate_side (and, for pictures
        # that look like a screen, once more at screen_gate_side; None: no second stage).
        self._gate = RapidOCR(params={**quiet, "Det.limit_side_len": gate_side, "Det.limit_type": "max",
                                      "Global.min_side_len": 0})
        self._screen_gate = None if screen_gate_side is None else RapidOCR(params={
            **quiet, "Det.limit_side_len": screen_gate_side, "Det.limit_type": "max", "Global.min_side_len": 0})
        self.gate_side = gate_side
        self.screen_gate_side = screen_gate_side
        self.max_side = max_side
        self.min_confidence = min_confidence
        self.max_chars = max_chars
        # RapidOCR keeps per-call settings (use_det/use_rec) on the engine object: one call at a time.
        self._lock = threading.Lock()
        _silence_rapidocr()

    @classmethod
    def from_settings(cls, settings: OcrSettings) -> TextReader | None:
        """The configured reader, or None when ``models.ocr.enabled`` is false."""
        if not settings.enabled:
            return None
        return cls(gate_side=settings.gate_side, max_side=settings.max_side,
                   min_confidence=settings.min_confidence, max_chars=settings.max_chars,
                   screen_gate_side=settings.screen_gate_side or None)

    def read(self, images: Sequence[Image.Image]) -> list[str]:
        """The text of each image, its lines joined by newlines ("" when it has none)."""
        return [joined(self.read_lines(image), self.max_chars) for image in images]

    def has_text(self, image: Image.Image) -> bool:
        """The gate alone: whether the detector finds a text-shaped box on the small copy (or, for a
        picture that looks like a screen, on the larger one)."""
        pixels = gray_pixels(image, self.gate_side)
        if _any_text_shaped(self.gate_boxes(pixels), pixels):
            return True
        if self.screen_gate_side is None or not looks_like_a_screen(pixels):
            return False
        pixels = gray_pixels(image, self.screen_gate_side)
        return _any_text_shaped(self.gate_boxes(pixels, screen=True), pixels)

    def gate_boxes(self, pixels: np.ndarray, *, screen: bool = False) -> list[tuple[float, float]]:
        """(width, height) of every box text detection finds on a gate copy (:func:`gray_pixels` at
        ``gate_side``, or at ``screen_gate_side`` with ``screen``), shape rule not applied."""
        gate = self._screen_gate if screen else self._gate
        if gate is None:
            raise ValueError("this reader has no screen gate")
        with self._lock:
            found = gate(pixels, use_det=True, use_cls=False, use_rec=False)
        boxes = getattr(found, "boxes", None)
        return [] if boxes is None else [box_size(box) for box in boxes]

    def read_lines(self, image: Image.Image) -> list[TextLine]:
        """The confident lines of one image, top to bottom; [] when the gate finds no text."""
        if not self.has_text(image):
            return []
        pixels = gray_pixels(image, self.max_side)
        with self._lock:
            result = self._engine(pixels)
        texts = getattr(result, "txts", None) or ()
        scores = getattr(result, "scores", None) or ()
        lines = [TextLine(text.strip(), float(score)) for text, score in zip(texts, scores, strict=False)]
        return [line for line in lines if self._keeps(line)]

    def _keeps(self, line: TextLine) -> bool:
        if line.confidence < self.min_confidence or not line.text:
            return False
        return sum(char.isalnum() for char in line.text) >= 2 or line.confidence >= SHORT_LINE_CONFIDENCE


def looks_like_a_screen(pixels: np.ndarray) -> bool:
    """Whether a grayscale picture has the large flat areas of a screenshot (:data:`SCREEN_FLAT_SHARE`)."""
    counts = np.bincount(pixels.ravel(), minlength=256)
    top = int(counts.argmax())
    return float(counts[max(0, top - 2):top + 3].sum()) >= SCREEN_FLAT_SHARE * pixels.size


def box_size(box: Sequence[Sequence[float]]) -> tuple[float, float]:
    """(width, height) of a detected quadrilateral, corners clockwise from top-left."""
    (x0, y0), (x1, y1), _, (x3, y3) = ((float(x), float(y)) for x, y in box[:4])
    return ((x1 - x0) ** 2 + (y1 - y0) ** 2) ** 0.5, ((x3 - x0) ** 2 + (y3 - y0) ** 2) ** 0.5


def text_shaped(width: float, height: float, picture: tuple[int, int]) -> bool:
    """Whether a box of this size on a gate picture of this size looks like a line of text, not a blob."""
    short, long = min(width, height), max(width, height)
    return short <= GATE_MAX_SHORT * min(picture) or long >= GATE_MIN_ASPECT * max(short, 1.0)


def _any_text_shaped(boxes: list[tuple[float, float]], pixels: np.ndarray) -> bool:
    picture = (int(pixels.shape[1]), int(pixels.shape[0]))
    return any(text_shaped(width, height, picture) for width, height in boxes)


def gray_pixels(image: Image.Image, longest: int) -> np.ndarray:
    """A grayscale uint8 array with the longest side at most ``longest`` (never upscaled)."""
    gray = image if image.mode == "L" else image.convert("L")
    if max(gray.size) > longest:
        scale = longest / max(gray.size)
        gray = gray.resize((max(1, round(gray.width * scale)), max(1, round(gray.height * scale))),
                           Image.Resampling.BILINEAR, reducing_gap=2.0)
    return np.asarray(gray)


def _silence_rapidocr() -> None:
    """RapidOCR logs every engine it builds at INFO through its own handler; keep the console quiet."""
    for name in ("RapidOCR", "rapidocr"):
        logging.getLogger(name).setLevel(logging.ERROR)
