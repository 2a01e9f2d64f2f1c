"""Caption-only vs image-informed: does looking at the image change the answer?

Every stored image carries two readings of the same question: sentiment from the caption text
(``sentiment``) and from the image itself via CLIP (``image_sentiment``); topic from the image
(``topic``, CLIP) and from the caption alone (``caption_topic``, text embedder). This module counts how
often they agree, per class and overall, with a confusion matrix and Cohen's kappa (agreement beyond
what the two label distributions would give by chance: 1 = always agree, 0 = chance level, < 0 = worse
than chance), and keeps examples of disagreement to read. Images where one side is missing (e.g. no
``labels/sentiment.txt`` when they were analysed) are counted as missing, not as disagreement; so are
pictures whose caption is not written yet (fast tier): their ``sentiment`` is the image's own mood
until then, the same reading twice, which would count as agreement.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from bot.analysis import SENTIMENT_LABELS
from bot.memory.records import StoredImage

MAX_MATRIX_CLASSES = 12  # wider than this, the rarest classes are folded into "(other)"
OTHER = "(other)"


@dataclass(frozen=True)
class ClassAgreement:
    label: str
    caption: int  # images the caption puts in this class
    image: int  # images the image puts in this class
    both: int  # images both put in this class

    @property
    def caption_kept(self) -> float | None:
        """Of the images the caption puts here, the share the image agrees on."""
        return self.both / self.caption if self.caption else None

    @property
    def image_kept(self) -> float | None:
        return self.both / self.image if self.image else None

    @property
    def jaccard(self) -> float | None:
        """both / either: one symmetric agreement number per class."""
        either = self.caption + self.image - self.both
        return self.both / either if either else None


@dataclass(frozen=True)
class Agreement:
    """One question (sentiment or topic) asked of the caption and of the image."""

    name: str
    classes: tuple[str, ...]  # matrix order
    matrix: tuple[tuple[int, ...], ...]  # rows: caption says, columns: image says
    missing: int  # images with only one reading
    per_class: tuple[ClassAgreement, ...]
    disagreements: tuple[StoredImage, ...] = field(default=())  # examples, newest first

    @property
    def compared(self) -> int:
        return sum(sum(row) for row in self.matrix)

    @property
    def agreed(self) -> int:
        return sum(self.matrix[i][i] for i in range(len(self.classes)))

    @property
    def rate(self) -> float | None:
        return self.agreed / self.compared if self.compared else None

    @property
    def kappa(self) -> float | None:
        """Cohen's kappa; None when undefined (nothing compared, or both sides always say one class)."""
        n = self.compared
        if not n:
            return None
        rows = [sum(row) for row in self.matrix]
        cols = [sum(row[j] for row in self.matrix) for j in range(len(self.classes))]
        expected = sum(r * c for r, c in zip(rows, cols, strict=True)) / (n * n)
        if expected >= 1.0:
            return None
        return (self.agreed / n - expected) / (1.0 - expected)


@dataclass(frozen=True)
class CompareReport:
    images: int
    sentiment: Agreement
    topic: Agreement
    pending: int = 0  # pictures still waiting for their caption (in ``missing``: only one reading)


Reading = Callable[[StoredImage], str | None]


def agreement(name: str, images: Sequence[StoredImage], caption_says: Reading, image_says: Reading, *,
              classes: Sequence[str] = (), examples: int = 5) -> Agreement:
    """Cross-tabulate two readings of the same images (``classes`` fixes the order; others follow
    by frequency)."""
    pairs = [(image, caption_says(image), image_says(image)) for image in images]
    complete = [(image, c, i) for image, c, i in pairs if c and i]
    caption_counts = Counter(c for _, c, _ in complete)
    image_counts = Counter(i for _, _, i in complete)
    seen = caption_counts + image_counts
    extra = sorted((label for label in seen if label not in classes), key=lambda label: (-seen[label], label))
    order = [*classes, *extra]
    per_class = tuple(
        ClassAgreement(label, caption_counts[label], image_counts[label],
                       sum(1 for _, c, i in complete if c == i == label))
        for label in order
    )
    index = {label: position for position, label in enumerate(order)}
    matrix = [[0] * len(order) for _ in order]
    for _, c, i in complete:
        matrix[index[c]][index[i]] += 1  # type: ignore[index]
    disagreeing = sorted((image for image, c, i in complete if c != i),
                         key=lambda image: (-image.ref.created_ts, -image.attachment_id))
    return Agreement(name, tuple(order), tuple(tuple(row) for row in matrix), len(pairs) - len(complete),
                     per_class, tuple(disagreeing[:examples]))


def compare_images(images: Iterable[StoredImage], *, examples: int = 5) -> CompareReport:
    kept = list(images)
    return CompareReport(
        images=len(kept),
        sentiment=agreement("sentiment", kept, lambda image: image.caption_sentiment,
                            lambda image: image.image_sentiment, classes=SENTIMENT_LABELS, examples=examples),
        topic=agreement("topic", kept, lambda image: None if image.caption_pending else image.caption_topic,
                        lambda image: image.topic, examples=examples),
        pending=sum(image.caption_pending for image in kept),
    )


# ----- text -----

def _pct(value: float | None) -> str:
    return "  n/a" if value is None else f"{100 * value:4.0f}%"


def _folded(result: Agreement) -> tuple[list[str], list[list[int]]]:
    """The matrix with the rarest classes folded into one "(other)" row/column when it is too wide."""
    classes, matrix = list(result.classes), [list(row) for row in result.matrix]
    if len(classes) <= MAX_MATRIX_CLASSES:
        return classes, matrix
    keep = MAX_MATRIX_CLASSES - 1
    folded = [[0] * (keep + 1) for _ in range(keep + 1)]
    for i, row in enumerate(matrix):
        for j, value in enumerate(row):
            folded[min(i, keep)][min(j, keep)] += value
    return [*classes[:keep], OTHER], folded


def render_agreement(result: Agreement, *, caption_name: str, image_name: str) -> list[str]:
    lines = [f"== {result.name}: {caption_name} vs {image_name} =="]
    if not result.compared:
        lines.append(f"nothing to compare ({result.missing} image(s) have only one reading)")
        return lines
    kappa = "n/a" if result.kappa is None else f"{result.kappa:.2f}"
    lines.append(f"agree on {result.agreed} of {result.compared} images ({_pct(result.rate).strip()}), "
                 f"Cohen's kappa {kappa}; {result.missing} image(s) with only one reading left out")
    lines.append("")
    width = max(len("class"), *(len(c.label) for c in result.per_class))
    lines.append(f"{'class':<{width}}  caption  image  both  caption→image  image→caption  jaccard")
    for c in result.per_class:
        lines.append(f"{c.label:<{width}}  {c.caption:7d}  {c.image:5d}  {c.both:4d}  {_pct(c.caption_kept):>13}  "
                     f"{_pct(c.image_kept):>13}  {_pct(c.jaccard):>7}")
    classes, matrix = _folded(result)
    lines += ["", f"confusion matrix (rows: {caption_name}, columns: {image_name})"]
    cell = max(5, *(len(label[:12]) for label in classes))
    head = max(len(label) for label in classes)
    lines.append(" " * head + "  " + " ".join(f"{label[:12]:>{cell}}" for label in classes))
    for label, row in zip(classes, matrix, strict=True):
        lines.append(f"{label:<{head}}  " + " ".join(f"{value:>{cell}d}" for value in row))
    return lines


def render_compare(report: CompareReport) -> str:
    """The plain-text report ``python -m bot compare`` prints."""
    lines = [f"{report.images} stored image(s)"
             + (f", {report.pending} still waiting for their caption (only one reading each)" if report.pending
                else ""), ""]
    sections = (
        (report.sentiment, "caption text", "image (CLIP)", lambda image: (image.sentiment, image.image_sentiment)),
        (report.topic, "caption text", "image (CLIP)", lambda image: (image.caption_topic, image.topic)),
    )
    for result, caption_name, image_name, readings in sections:
        lines += render_agreement(result, caption_name=caption_name, image_name=image_name)
        if result.disagreements:
            lines += ["", "where they disagree (newest first):"]
            for image in result.disagreements:
                said_caption, said_image = readings(image)
                lines.append(f"  {image.attachment_id}  caption says {said_caption}, image says {said_image}: "
                             f"“{image.caption[:80]}”  {image.ref.jump_url}")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def report_dict(report: CompareReport) -> dict[str, Any]:
    """JSON-ready form of the report (``python -m bot compare --json``)."""

    def one(result: Agreement) -> dict[str, Any]:
        return {
            "compared": result.compared, "agreed": result.agreed, "rate": result.rate, "kappa": result.kappa,
            "missing": result.missing, "classes": list(result.classes), "matrix": [list(row) for row in result.matrix],
            "per_class": [{"label": c.label, "caption": c.caption, "image": c.image, "both": c.both,
                           "jaccard": c.jaccard} for c in result.per_class],
            "disagreements": [{"attachment_id": image.attachment_id, "caption": image.caption,
                               "jump_url": image.ref.jump_url} for image in result.disagreements],
        }

    return {"images": report.images, "pending": report.pending, "sentiment": one(report.sentiment),
            "topic": one(report.topic)}
