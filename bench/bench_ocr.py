"""OCR quality and cost of the text reader (``bot.models.reader.TextReader``) on a generated corpus.

    python -m bench.bench_ocr                          # writes bench/results/ocr_cpu.md (see its header)
    python -m bench.bench_ocr --gate-sides 320,480,640 --skip-variants   # the issue's sweep only: faster
    python -m bench.bench_ocr --quick                  # a few images per category, a smoke run (temp file)

The corpus (:mod:`bench.ocr_corpus`) is drawn at run time from a seed: rendered text in several fonts
and sizes, captions on real photos, slightly rotated text, screenshot layouts, memes, and real
photos without text. Each image is handed over as the bot hands it to the reader (grayscale, at most
1920 px long).

What is measured, per category:

- **CER**, character error rate: Levenshtein distance between the read text and the ground truth,
  both joined and whitespace-normalised, over the ground truth's length (summed over the category);
- **exact lines**: the fraction of ground-truth lines that come back, whitespace-normalised, as one
  read line exactly (order-free);
- on photos without text, **precision** (the fraction that read as ""), how many the gate passes, and
  how many still produce text after the confidence filter;
- **time** per image, wall and process CPU-seconds (onnxruntime's threads included), p50/p95, for the
  gate alone and for the read as the bot does it (gate, then the full OCR when the gate finds a box).

The tunables are swept without extra reads: every image is read once by the configured pipeline
*without* its gate and without a confidence floor, and gated once at each ``gate_side``; the bot's
answer for any (gate_side, min_confidence) is then "the full read's lines at or above min_confidence
if that gate found a box, else nothing". These measuring readers run onnxruntime on one thread (it
gives the same text, and on a shared 2-core machine twice the throughput: the whole run fits in
~10 minutes). The configured reader itself, exactly as the bot runs it, is timed
directly on every photo without text and on every 5th text image, and its answers check the
composition.

Unless ``--skip-variants``, changes to the reader that this benchmark suggests are measured too
(they need ``bot/models/reader.py`` edits, so they are built here by scoring the gate's boxes or
handing RapidOCR extra parameters): a gate that ignores blob-shaped boxes, and a full-read detector
that upscales small pictures less (or not at all); the one-thread timings above are the third.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

from bench.common import RESULTS, fmt_s, header_lines, load_average, machine_info, percentile, write_report
from bench.ocr_corpus import (
    CATEGORIES,
    DEFAULT_NOTEXT,
    DEFAULT_PER_CATEGORY,
    Sample,
    fonts_available,
    iter_corpus,
    normalise,
)
from bot.models.reader import GATE_MAX_SHORT, GATE_MIN_ASPECT, gray_pixels, looks_like_a_screen, text_shaped

#: The issue asks for 320/480/640; 960 shows what a whole-desktop screenshot needs (its 13-16 px text
#: is ~4-5 px on a 640 px gate copy of a 1920 px screen). 800 was tried while writing this: no better
#: than 640 on those (8 of 10 desktops found either way), so it is left out to keep the run short
#: (``--gate-sides`` adds it back).
GATE_SIDES = (320, 480, 640, 960)
#: The shipped two-stage gate (``gate_side``, then ``screen_gate_side`` for screen-like pictures that
#: found nothing) under a pseudo side in the per-side tables, composed from the two single-stage gates
#: (shape rule on) and ``looks_like_a_screen``; its yes/no is checked against the real reader.
POLICY = 0
CONFIDENCES = (0.5, 0.6, 0.7, 0.8)
#: Issue targets: CER on >= 20 px text on plain backgrounds, CER on photos, p50 extra cost of a photo.
TARGET_PLAIN_CER = 0.03
TARGET_PHOTO_CER = 0.10
TARGET_NOTEXT_P50_S = 0.050
#: Every n-th text image is also read through the configured reader itself (timing, consistency),
#: and with the other full-read detector resizes. 5 shares no factor with the corpus's cycles (14
#: plain sizes, 6 screenshot layouts, every 4th rotated image on a photo), so every kind is sampled.
DIRECT_EVERY = 5
VARIANT_EVERY = 5
#: RapidOCR parameters: the measuring readers' single thread, and the full-read detector resizes
#: compared with RapidOCR's own (shortest side up to 736 px). "never upscaled" gets
#: ``Det.limit_side_len = max_side`` when built.
ONE_THREAD: dict[str, Any] = {"EngineConfig.onnxruntime.intra_op_num_threads": 1}
DETECTOR_VARIANTS: dict[str, dict[str, Any]] = {
    "shortest side up to 480": {"Det.limit_side_len": 480},
    "never upscaled": {"Det.limit_type": "max"},
}


# ----------------------------------------------------------------------------- metrics


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance (insertions, deletions, substitutions all cost 1), two-row DP.

    The common prefix and suffix are dropped first: OCR output is mostly right, so what is left to
    compare is short, which keeps the pure-Python loop cheap on receipt-sized texts.
    """
    start = 0
    while start < len(a) and start < len(b) and a[start] == b[start]:
        start += 1
    end_a, end_b = len(a), len(b)
    while end_a > start and end_b > start and a[end_a - 1] == b[end_b - 1]:
        end_a -= 1
        end_b -= 1
    a, b = a[start:end_a], b[start:end_b]
    if len(a) < len(b):
        a, b = b, a
    if not b:
        return len(a)
    previous = list(range(len(b) + 1))
    for i, char_a in enumerate(a, 1):
        current = [i]
        for j, char_b in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (char_a != char_b)))
        previous = current
    return previous[-1]


def cer(hypothesis: str, reference: str) -> float:
    """Character error rate of one text: edits / reference characters, after whitespace normalisation.

    An empty reference gives 0 for an empty hypothesis and 1 for anything else (not a rate, but it
    keeps one image from dividing by zero; the report sums edits and characters per category instead).
    """
    hyp, ref = normalise(hypothesis), normalise(reference)
    if not ref:
        return 0.0 if not hyp else 1.0
    return edit_distance(hyp, ref) / len(ref)


def exact_lines(read: Sequence[str], truth: Sequence[str]) -> int:
    """How many ground-truth lines come back exactly (whitespace-normalised) as a read line; each read
    line can match one ground-truth line only."""
    available = Counter(normalise(line) for line in read)
    found = 0
    for line in truth:
        key = normalise(line)
        if available[key] > 0:
            available[key] -= 1
            found += 1
    return found


# ----------------------------------------------------------------------------- readers


@dataclass
class Timed:
    wall: float
    cpu: float


@contextlib.contextmanager
def _clock(into: list[Timed]) -> Iterator[None]:
    wall, cpu = time.perf_counter(), time.process_time()
    yield
    into.append(Timed(time.perf_counter() - wall, time.process_time() - cpu))


def _timed(fn: Callable[[], Any]) -> tuple[Any, Timed]:
    times: list[Timed] = []
    with _clock(times):
        value = fn()
    return value, times[0]


def _reader_classes() -> tuple[type, type, type]:
    """TextReader, the same without its gate, and the same with a gate that also reports its boxes."""
    from bot.models import reader as module

    class UngatedReader(module.TextReader):
        """The configured pipeline minus its gate: what the bot runs once the gate has found a box."""

        def has_text(self, image: Any) -> bool:
            return True

    class BoxGate(module.TextReader):
        """A single-stage gate at one side that keeps the boxes (width, height) and the gate picture's
        size, so the shape rule can be scored with and without it."""

        def boxes_of(self, image: Any) -> tuple[list[tuple[float, float]], tuple[int, int]]:
            pixels = module.gray_pixels(image, self.gate_side)
            return self.gate_boxes(pixels), (int(pixels.shape[1]), int(pixels.shape[0]))

    return module.TextReader, UngatedReader, BoxGate


def _with_params(build: Callable[[], Any], extra: dict[str, Any]) -> Any:
    """A reader whose RapidOCR engines get ``extra`` parameters on top of the ones TextReader passes
    (what the proposed one-line edits to ``bot/models/reader.py`` would do)."""
    import rapidocr

    original = rapidocr.RapidOCR

    def patched(params: dict[str, Any] | None = None, **kwargs: Any) -> Any:
        return original(params={**(params or {}), **extra}, **kwargs)

    with mock.patch.object(rapidocr, "RapidOCR", patched):
        return build()


@dataclass
class Readers:
    product: Any  # the reader exactly as configured (bot.config.OcrSettings defaults, its own thread setting)
    gates: dict[int, Any]  # one per swept gate_side, onnxruntime on one thread
    ungated: Any  # the configured pipeline minus its gate and confidence floor, one thread
    settings: Any
    sides: tuple[int, ...]
    detectors: dict[str, Any] = field(default_factory=dict)  # ``ungated`` with other detector resizes


def load_readers(*, variants: bool, gate_sides: Sequence[int] = GATE_SIDES) -> Readers:
    from bot.config import OcrSettings

    text_reader, ungated_reader, box_gate = _reader_classes()
    settings = OcrSettings()
    product = text_reader.from_settings(settings)
    sides = tuple(sorted({*gate_sides, settings.gate_side, *([settings.screen_gate_side] if settings.screen_gate_side
                                                             else [])}))
    gates = {side: _with_params(lambda side=side: box_gate(gate_side=side, max_side=settings.max_side,
                                                            min_confidence=0.0), ONE_THREAD) for side in sides}
    options = {"gate_side": settings.gate_side, "max_side": settings.max_side, "min_confidence": 0.0,
               "max_chars": settings.max_chars}
    ungated = _with_params(lambda: ungated_reader(**options), ONE_THREAD)
    readers = Readers(product, gates, ungated, settings, sides)
    if variants:
        for name, params in DETECTOR_VARIANTS.items():
            extra = {**ONE_THREAD, **params}
            if params.get("Det.limit_type") == "max":
                extra["Det.limit_side_len"] = settings.max_side
            readers.detectors[name] = _with_params(lambda extra=extra: ungated_reader(**options), extra)
    return readers


# ----------------------------------------------------------------------------- measuring


@dataclass
class Measured:
    """One corpus image's readings (the image itself is dropped once measured)."""

    name: str
    category: str
    variant: str
    font_px: int
    truth: tuple[str, ...]
    gate: dict[int, bool] = field(default_factory=dict)
    shaped: dict[int, bool] = field(default_factory=dict)  # the gate under the proposed shape rule
    gate_time: dict[int, Timed] = field(default_factory=dict)
    # The full pipeline without the gate and without a confidence floor; None when no gate found a
    # box on a photo without text (then no configuration ever runs it).
    full: list[tuple[str, float]] | None = None
    full_time: Timed | None = None
    # The configured reader itself (its own thread setting), where it was run: its answer, the time of
    # TextReader.read and of TextReader.has_text alone.
    direct: str | None = None
    direct_time: Timed | None = None
    direct_gate_time: Timed | None = None
    # Other full-read detector resizes (DETECTOR_VARIANTS), where run: the ungated read's lines and time.
    variant_lines: dict[str, list[tuple[str, float]]] = field(default_factory=dict)
    variant_time: dict[str, Timed] = field(default_factory=dict)

    def hit(self, gate_side: int, shaped: bool = False) -> bool:
        return (self.shaped if shaped else self.gate)[gate_side]

    def lines(self, gate_side: int, min_confidence: float, *, shaped: bool = False,
              full: list[tuple[str, float]] | None = None) -> list[str]:
        """The lines the bot would keep with these settings."""
        read = self.full if full is None else full
        if not self.hit(gate_side, shaped) or read is None:
            return []
        return [text for text, score in read if score >= min_confidence and text.strip()]

    def read_time(self, gate_side: int, shaped: bool = False) -> Timed:
        """The bot's cost for this image: its gate, plus the full read when the gate found a box."""
        gate = self.gate_time[gate_side]
        if self.hit(gate_side, shaped) and self.full_time is not None:
            return Timed(gate.wall + self.full_time.wall, gate.cpu + self.full_time.cpu)
        return gate


def measure(readers: Readers, sample: Sample, *, direct: bool, variant: bool) -> Measured:
    result = Measured(sample.name, sample.category, sample.variant, sample.font_px, sample.lines)
    for side, reader in readers.gates.items():
        (sizes, picture), result.gate_time[side] = _timed(lambda reader=reader: reader.boxes_of(sample.image))
        result.gate[side] = bool(sizes)
        result.shaped[side] = any(text_shaped(w, h, picture) for w, h in sizes)
    _compose_policy(readers, sample, result)
    if sample.category != "notext" or any(result.gate.values()):
        lines, result.full_time = _timed(lambda: readers.ungated.read_lines(sample.image))
        result.full = [(line.text, line.confidence) for line in lines]
    if direct:
        _, result.direct_gate_time = _timed(lambda: readers.product.has_text(sample.image))
        texts, result.direct_time = _timed(lambda: readers.product.read([sample.image]))
        result.direct = texts[0]
        expected = normalise(" ".join(result.lines(POLICY, readers.settings.min_confidence)))
        if expected != normalise(result.direct) and len(result.direct) < readers.settings.max_chars:
            print(f"  ! {sample.name}: configured reader {result.direct!r} != composed {expected!r}", flush=True)
    if variant and sample.category != "notext":
        for name, reader in readers.detectors.items():
            lines, result.variant_time[name] = _timed(lambda reader=reader: reader.read_lines(sample.image))
            result.variant_lines[name] = [(line.text, line.confidence) for line in lines]
    return result


def _compose_policy(readers: Readers, sample: Sample, result: Measured) -> None:
    """The shipped gate as :data:`POLICY`: first stage, then the screen stage where the bot runs it."""

    first, second = readers.settings.gate_side, readers.settings.screen_gate_side
    hit, took = result.shaped[first], result.gate_time[first]
    if not hit and second and looks_like_a_screen(gray_pixels(sample.image, first)):
        hit = result.shaped[second]
        took = Timed(took.wall + result.gate_time[second].wall, took.cpu + result.gate_time[second].cpu)
    result.gate[POLICY] = result.shaped[POLICY] = hit
    result.gate_time[POLICY] = took


def side_label(side: int, settings: Any = None) -> str:
    """How a gate side is named in the report (the shipped two-stage gate spelt out)."""
    if side != POLICY:
        return f"{side} px"
    from bot.config import OcrSettings

    settings = settings or OcrSettings()
    return f"{settings.gate_side} px, then {settings.screen_gate_side} px for screen-like pictures"


def warm_up(readers: Readers, sample: Sample) -> None:
    """First calls build onnxruntime's kernels and buffers: keep them out of the timings."""
    for reader in (readers.product, *readers.gates.values(), readers.ungated, *readers.detectors.values()):
        reader.read([sample.image])


def run(per_category: int, notext: int, seed: int, *, variants: bool,
        gate_sides: Sequence[int] = GATE_SIDES) -> tuple[list[Measured], Readers]:
    readers = load_readers(variants=variants, gate_sides=gate_sides)
    samples = iter_corpus(seed, per_category, notext)
    first = next(samples)
    warm_up(readers, first)
    measured = []
    text_index = 0
    started = time.perf_counter()
    for sample in (first, *samples):
        direct = sample.category == "notext" or text_index % DIRECT_EVERY == 0
        variant = sample.category != "notext" and text_index % VARIANT_EVERY == 0
        text_index += sample.category != "notext"
        measured.append(measure(readers, sample, direct=direct, variant=variant))
        if len(measured) % 25 == 0:
            print(f"  {len(measured)} images in {time.perf_counter() - started:.0f} s (load {load_average()})",
                  flush=True)
    return measured, readers


# ----------------------------------------------------------------------------- summaries


@dataclass
class Quality:
    images: int
    lines: int
    chars: int
    edits: int
    exact: int
    gate_recall: float
    per_image_cer: list[float]

    @property
    def cer(self) -> float:
        return self.edits / self.chars if self.chars else float("nan")

    @property
    def exact_rate(self) -> float:
        return self.exact / self.lines if self.lines else float("nan")


class Scorer:
    """Edit distances cached per (image, text): the sweep asks for the same texts many times."""

    def __init__(self) -> None:
        self._cache: dict[tuple[str, str], int] = {}

    def edits(self, item: Measured, hypothesis: str) -> int:
        key = (item.name, hypothesis)
        if key not in self._cache:
            self._cache[key] = edit_distance(hypothesis, normalise(" ".join(item.truth)))
        return self._cache[key]

    def quality(self, items: Sequence[Measured], gate_side: int, min_confidence: float, *, shaped: bool = False,
                variant: str | None = None) -> Quality:
        edits = chars = exact = lines = 0
        per_image = []
        for item in items:
            full = item.variant_lines.get(variant) if variant else None
            read = item.lines(gate_side, min_confidence, shaped=shaped, full=full)
            reference = normalise(" ".join(item.truth))
            distance = self.edits(item, normalise(" ".join(read)))
            edits += distance
            chars += len(reference)
            per_image.append(distance / max(1, len(reference)))
            lines += len(item.truth)
            exact += exact_lines(read, item.truth)
        recall = sum(item.hit(gate_side, shaped) for item in items) / len(items) if items else float("nan")
        return Quality(len(items), lines, chars, edits, exact, recall, per_image)


def _pct(value: float, digits: int = 1) -> str:
    return "n/a" if value != value else f"{value * 100:.{digits}f} %"


def _times(values: Sequence[Timed]) -> list[str]:
    """[wall p50, wall p95, CPU p50, CPU p95], formatted."""
    walls = [t.wall for t in values]
    cpus = [t.cpu for t in values]
    return [fmt_s(percentile(walls, 0.5)), fmt_s(percentile(walls, 0.95)), fmt_s(percentile(cpus, 0.5)),
            fmt_s(percentile(cpus, 0.95))]


def _p50(values: Sequence[float]) -> float:
    return percentile(list(values), 0.5)


def _mark(ok: bool) -> str:
    return "**met**" if ok else "**NOT met**"


def _groups(items: Sequence[Measured], key: Callable[[Measured], str]) -> dict[str, list[Measured]]:
    groups: dict[str, list[Measured]] = {}
    for item in items:
        groups.setdefault(key(item), []).append(item)
    return dict(sorted(groups.items()))


def _is_nan(value: float) -> bool:
    return value != value


# ----------------------------------------------------------------------------- report


@dataclass
class Context:
    measured: list[Measured]
    settings: Any
    sides: tuple[int, ...]
    scorer: Scorer = field(default_factory=Scorer)

    @property
    def text(self) -> list[Measured]:
        return [m for m in self.measured if m.category != "notext"]

    @property
    def notext(self) -> list[Measured]:
        return [m for m in self.measured if m.category == "notext"]

    def of(self, category: str) -> list[Measured]:
        return [m for m in self.measured if m.category == category]

    @property
    def plain_big(self) -> list[Measured]:
        return [m for m in self.of("plain") if m.font_px >= 20]

    @property
    def plain_small(self) -> list[Measured]:
        return [m for m in self.of("plain") if m.font_px < 20]


def report(measured: list[Measured], info: dict[str, Any], *, readers: Readers, command: str, elapsed: float,
           load_end: str, corpus_note: str) -> list[str]:
    import onnxruntime

    settings = readers.settings
    ctx = Context(measured, settings, readers.sides)
    gate, conf = POLICY, settings.min_confidence
    lines = header_lines(
        "Text reader (OCR): quality and cost on the CPU", info,
        [f"- produced by `{command}` in {elapsed / 60:.1f} min; load average at the end: {load_end}",
         f"- reader: `bot.models.reader.TextReader` (RapidOCR PP-OCRv6 small det + cls + rec, onnxruntime "
         f"{onnxruntime.__version__}, one onnxruntime thread per engine, as `bot/models/reader.py` sets it), "
         "configured by `OcrSettings()` defaults: "
         f"`gate_side = {settings.gate_side}`, `screen_gate_side = {settings.screen_gate_side}`, "
         f"`max_side = {settings.max_side}`, `min_confidence = {conf}`",
         f"- corpus: {corpus_note}",
         "- CER = Levenshtein edits / ground-truth characters, both texts whitespace-normalised (lines joined by "
         "one space), summed over the images of a row; exact lines = ground-truth lines read exactly as one line; "
         "gate found text = the share of images the gate passed on to the full read",
         "- times: wall clock and process CPU-seconds per image (onnxruntime's threads included), p50/p95; "
         "*read* = what the bot runs: the gate, then the full OCR when the gate finds a box. **As configured** = "
         "the bot's reader itself, one onnxruntime thread per engine (as shipped), timed on every "
         f"photo without text and every {DIRECT_EVERY}th text image; **1 thread** = the measuring readers behind "
         "every quality figure and the sweep (same models and settings, onnxruntime on one thread; the same text, "
         "see *Consistency*), timed on every image"],
        noise_note="p50/p95 over every image are reported; CPU-seconds suffer less from the sharing than wall time",
    )
    lines += _per_category(ctx, gate, conf)
    lines += ["", *_notext_section(ctx, gate, conf)]
    lines += ["", *_time_section(ctx, gate, conf)]
    lines += ["", *_targets(ctx, gate, conf)]
    lines += ["", *_breakdowns(ctx, gate, conf)]
    lines += ["", *_sweep(ctx)]
    if any(m.variant_time for m in measured):
        lines += ["", *_variants(ctx, gate, conf)]
    elif measured:
        lines += ["", *_variants(ctx, gate, conf, detector=False)]
    lines += ["", *_worst(ctx, gate, conf)]
    return lines


def _per_category(ctx: Context, gate: int, conf: float) -> list[str]:
    out = ["## Per category (the configured reader's settings)", "",
           "| category | images | lines | chars | CER | exact lines | gate found text | median image CER "
           "| right words, wrong order | read p50 (1 thread) | read p95 | read CPU p50 | read CPU p95 |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    rows: list[tuple[str, list[Measured]]] = [
        ("plain, ≥ 20 px", ctx.plain_big), ("plain, < 20 px", ctx.plain_small),
        *[(category, ctx.of(category)) for category in CATEGORIES[1:]], ("**all text images**", ctx.text)]
    for label, items in rows:
        if not items:
            continue
        q = ctx.scorer.quality(items, gate, conf)
        times = _times([m.read_time(gate) for m in items])
        out.append(f"| {label} | {q.images} | {q.lines} | {q.chars} | {_pct(q.cer, 2)} | {_pct(q.exact_rate)} | "
                   f"{_pct(q.gate_recall, 0)} | {_pct(statistics.median(q.per_image_cer), 2)} | "
                   f"{sum(out_of_order(m, gate, conf) for m in items)} | " + " | ".join(times) + " |")
    return out


def out_of_order(item: Measured, gate: int, conf: float, variant: str | None = None) -> bool:
    """Every word read right but the text still differs: the lines (or a line's pieces) came back in
    another order than they are on the picture."""
    full = item.variant_lines.get(variant) if variant else None
    read = normalise(" ".join(item.lines(gate, conf, full=full)))
    truth = normalise(" ".join(item.truth))
    return read != truth and sorted(read.split()) == sorted(truth.split())


def _notext_section(ctx: Context, gate: int, conf: float) -> list[str]:
    notext = ctx.notext
    if not notext:
        return []
    hits = sum(m.gate[gate] for m in notext)
    nonempty = sum(bool(m.lines(gate, conf)) for m in notext)
    out = ["## Photos without text (text-detection precision)", "",
           f"- {len(notext)} photos: precision (read as \"\") **{_pct(1 - nonempty / len(notext))}**; "
           f"the gate found a box on {hits} ({_pct(hits / len(notext), 0)}), of which {nonempty} still produced "
           f"text after the reader's filters (`min_confidence = {conf}`, short-line rule)"]
    direct = [m.direct_time for m in notext if m.direct_time is not None]
    if direct:
        wall50, wall95, cpu50, cpu95 = _times(direct)
        out.append(f"- cost of a photo without text through the configured reader (as configured, "
                   f"`TextReader.read`): p50 **{wall50}** wall / **{cpu50}** CPU, p95 {wall95} wall / {cpu95} CPU")
        wall50, wall95, cpu50, cpu95 = _times([m.direct_gate_time for m in notext if m.direct_gate_time])
        out.append(f"- its gate alone ({side_label(gate)}, `has_text`): p50 {wall50} / p95 {wall95} wall, "
                   f"{cpu50} / {cpu95} CPU")
    wall50, wall95, cpu50, cpu95 = _times([m.read_time(gate) for m in notext])
    out.append(f"- with onnxruntime on 1 thread (composed: gate, plus the full read where it hit): p50 {wall50} / "
               f"p95 {wall95} wall, {cpu50} / {cpu95} CPU")
    junk = [(m.variant, m.lines(gate, conf)) for m in notext if m.lines(gate, conf)]
    if junk:
        out.append("- text read from photos without text: " + "; ".join(
            f"{variant}: `{' / '.join(read)[:80]}`" for variant, read in junk))
    out += ["", "| photo | variants | gate found a box | … under the proposed shape rule | text after the filters |",
            "| --- | --- | --- | --- | --- |"]
    for base, items in _groups(notext, lambda m: m.variant.split("/")[0]).items():
        out.append(f"| {base} | {len(items)} | {sum(m.gate[gate] for m in items)} | "
                   f"{sum(m.shaped[gate] for m in items)} | {sum(bool(m.lines(gate, conf)) for m in items)} |")
    return out


def _time_section(ctx: Context, gate: int, conf: float) -> list[str]:
    out = ["## Time per image", "",
           "| onnxruntime | images | step | wall p50 | wall p95 | CPU p50 | CPU p95 |",
           "| --- | --- | --- | --- | --- | --- | --- |"]
    for label, items in ((f"with text (every {DIRECT_EVERY}th)", ctx.text), ("without text", ctx.notext)):
        timed = [m for m in items if m.direct_time is not None and m.direct_gate_time is not None]
        if timed:
            out.append(f"| as configured (1 thread) | {label}: {len(timed)} | gate alone ({side_label(gate)}) | "
                       + " | ".join(_times([m.direct_gate_time for m in timed if m.direct_gate_time])) + " |")
            out.append(f"| as configured (1 thread) | {label}: {len(timed)} | read (gate + OCR on a hit) | "
                       + " | ".join(_times([m.direct_time for m in timed if m.direct_time])) + " |")
    for label, items in (("with text", ctx.text), ("without text", ctx.notext)):
        if not items:
            continue
        out.append(f"| 1 thread | {label}: {len(items)} | gate alone ({side_label(gate)}) | "
                   + " | ".join(_times([m.gate_time[gate] for m in items])) + " |")
        out.append(f"| 1 thread | {label}: {len(items)} | read (gate + OCR on a hit) | "
                   + " | ".join(_times([m.read_time(gate) for m in items])) + " |")
        full = [m.full_time for m in items if m.full_time is not None]
        if full:
            out.append(f"| 1 thread | {label}: {len(full)} run | full OCR alone (no gate) | "
                       + " | ".join(_times(full)) + " |")
    for category in CATEGORIES:
        items = ctx.of(category)
        if items:
            out.append(f"| 1 thread | {category}: {len(items)} | read (gate + OCR on a hit) | "
                       + " | ".join(_times([m.read_time(gate) for m in items])) + " |")
    both = [m for m in ctx.measured if m.direct is not None]
    differ = [m.name for m in both if len(m.direct or "") < ctx.settings.max_chars
              and normalise(m.direct or "") != normalise(" ".join(m.lines(gate, conf)))]
    out += ["", "Consistency: the configured reader's own answer equals the composed one "
            f"(gate {side_label(gate)}, then the ungated 1-thread read filtered at {conf}) on "
            f"{len(both) - len(differ)} of {len(both)} images read both ways"
            + (f"; differs on {', '.join(differ)}" if differ else "") + "."]
    return out


def _targets(ctx: Context, gate: int, conf: float) -> list[str]:
    out = ["## Targets (issue)", ""]
    if ctx.plain_big:
        value = ctx.scorer.quality(ctx.plain_big, gate, conf).cer
        out.append(f"- CER ≤ {_pct(TARGET_PLAIN_CER, 0)} on text ≥ 20 px on plain backgrounds: {_pct(value, 2)} — "
                   f"{_mark(value <= TARGET_PLAIN_CER)}")
    if ctx.of("photo"):
        value = ctx.scorer.quality(ctx.of("photo"), gate, conf).cer
        out.append(f"- CER ≤ {_pct(TARGET_PHOTO_CER, 0)} on photos: {_pct(value, 2)} — "
                   f"{_mark(value <= TARGET_PHOTO_CER)}")
    direct = [m.direct_time for m in ctx.notext if m.direct_time is not None]
    if direct:
        wall, cpu = _p50([t.wall for t in direct]), _p50([t.cpu for t in direct])
        one = [m.read_time(gate) for m in ctx.notext]
        one_wall, one_cpu = fmt_s(_p50([t.wall for t in one])), fmt_s(_p50([t.cpu for t in one]))
        out.append(f"- photos without text cost ≤ {fmt_s(TARGET_NOTEXT_P50_S)} extra at p50, as configured: "
                   f"{fmt_s(wall)} wall, {fmt_s(cpu)} CPU — wall {_mark(wall <= TARGET_NOTEXT_P50_S)}, CPU "
                   f"{_mark(cpu <= TARGET_NOTEXT_P50_S)} (onnxruntime on 1 thread: {one_wall} wall, {one_cpu} CPU)")
    return out


def _breakdowns(ctx: Context, gate: int, conf: float) -> list[str]:
    out = ["## Breakdowns (the configured reader)", "",
           "| category | split | images | CER | exact lines | gate found text |",
           "| --- | --- | --- | --- | --- | --- |"]
    splits: list[tuple[str, Callable[[Measured], str]]] = [
        ("plain", lambda m: f"{m.font_px:02d} px"),
        ("plain", lambda m: m.variant.split("/")[0] + (" (≥ 20 px)" if m.font_px >= 20 else " (< 20 px)")),
        ("plain", lambda m: "background " + m.variant.split("/")[1]),
        ("photo", lambda m: m.variant.split("/")[0]),
        ("photo", lambda m: f"{'≥' if m.font_px >= 32 else '<'} 32 px"),
        ("rotated", lambda m: m.variant.split("/")[0] + f", {'≥' if abs(_angle(m)) >= 5 else '<'} 5°"),
        ("screenshot", lambda m: m.variant),
        ("meme", lambda m: f"{'≥' if m.font_px >= 40 else '<'} 40 px"),
    ]
    for category, key in splits:
        for label, group in _groups(ctx.of(category), key).items():
            q = ctx.scorer.quality(group, gate, conf)
            out.append(f"| {category} | {label} | {q.images} | {_pct(q.cer, 2)} | {_pct(q.exact_rate)} | "
                       f"{_pct(q.gate_recall, 0)} |")
    return out


def _angle(item: Measured) -> float:
    try:
        return float(item.variant.rsplit("/", 1)[1].rstrip("°"))
    except (IndexError, ValueError):
        return 0.0


@dataclass(frozen=True)
class SweepRow:
    side: int
    confidence: float
    shaped: bool
    precision: float
    gate_hits: int
    nonempty: int
    recall: float
    cer_plain: float
    cer_photo: float
    cer_screens: float
    cer_all: float
    exact_all: float
    gate_p50: float
    notext_p50: float
    notext_cpu_p50: float
    text_p50: float

    def meets_quality(self) -> bool:
        return ((_is_nan(self.cer_plain) or self.cer_plain <= TARGET_PLAIN_CER)
                and (_is_nan(self.cer_photo) or self.cer_photo <= TARGET_PHOTO_CER))

    def meets_cost(self) -> bool:
        return _is_nan(self.notext_cpu_p50) or self.notext_cpu_p50 <= TARGET_NOTEXT_P50_S

    def summary(self) -> str:
        return (f"**gate_side = {self.side}, min_confidence = {self.confidence}**: {_pct(self.cer_all, 2)} CER on all "
                f"text ({_pct(self.cer_screens, 2)} on screenshots), {_pct(self.precision)} no-text precision, a "
                f"photo without text {fmt_s(self.notext_cpu_p50)} CPU p50 (1 thread)")


def sweep_rows(ctx: Context, *, shaped: bool) -> list[SweepRow]:
    rows = []
    notext, text = ctx.notext, ctx.text
    for side in ctx.sides:
        for conf in CONFIDENCES:
            nonempty = sum(bool(m.lines(side, conf, shaped=shaped)) for m in notext)
            big, photo, screens, every = (ctx.scorer.quality(items, side, conf, shaped=shaped)
                                          for items in (ctx.plain_big, ctx.of("photo"), ctx.of("screenshot"), text))
            rows.append(SweepRow(
                side, conf, shaped, 1 - nonempty / len(notext) if notext else float("nan"),
                sum(m.hit(side, shaped) for m in notext), nonempty, every.gate_recall, big.cer, photo.cer,
                screens.cer, every.cer, every.exact_rate,
                _p50([m.gate_time[side].wall for m in notext]) if notext else float("nan"),
                _p50([m.read_time(side, shaped).wall for m in notext]) if notext else float("nan"),
                _p50([m.read_time(side, shaped).cpu for m in notext]) if notext else float("nan"),
                _p50([m.read_time(side, shaped).wall for m in text]) if text else float("nan")))
    return rows


#: CER differences smaller than this (over all text) are noise between two settings.
CER_TIE = 0.001


def _best(rows: Sequence[SweepRow]) -> SweepRow:
    """The lowest CER over all text (what the gate loses counts in full); among settings within
    CER_TIE of it, the best no-text precision, then the stricter confidence filter (it keeps more
    junk off photos unlike these), then the cheapest photo without text."""
    floor = min(row.cer_all for row in rows)
    close = [row for row in rows if row.cer_all <= floor + CER_TIE]
    return min(close, key=lambda row: (-round(row.precision, 4), -row.confidence, row.notext_cpu_p50))


def recommend(rows: Sequence[SweepRow]) -> list[str]:
    """Two picks, because the reader's cost and its quality pull apart: the best setting that meets
    the two CER targets, and the best one that meets the no-text cost target."""
    quality = [row for row in rows if row.meets_quality()]
    best = _best(quality or rows)
    out = [f"- quality first (both CER targets{' met' if quality else ': none meets them'}, then the lowest CER "
           f"over all text, ties within {CER_TIE:.1%} to the best precision, the stricter filter, the cheapest "
           f"photo): {best.summary()} — no-text cost target {'met' if best.meets_cost() else 'NOT met'}"]
    cheap = [row for row in rows if row.meets_cost()]
    if cheap:
        thrifty = _best(cheap)
        if thrifty != best:
            out.append(f"- within the no-text cost target (≤ {fmt_s(TARGET_NOTEXT_P50_S)} CPU p50): {thrifty.summary()}"
                       f" — the issue's two CER targets {'met' if thrifty.meets_quality() else 'NOT met'}")
    else:
        out.append(f"- no setting keeps a photo without text within {fmt_s(TARGET_NOTEXT_P50_S)} CPU p50")
    return out


def _sweep_table(ctx: Context, rows: Sequence[SweepRow]) -> list[str]:
    out = ["| gate_side | min_confidence | no-text precision | no-text gate hits | no-text with text | text gate "
           "recall | CER plain ≥ 20 px | CER photos | CER screenshots | CER all text | exact lines, all | gate p50 "
           "(no text) | read p50 (no text), wall / CPU | read p50 (text) |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in rows:
        current = False  # the shipped gate has two stages: its figures are the sections above
        mark = " (current)" if current else ""
        out.append(f"| {row.side}{mark} | {row.confidence}{mark} | {_pct(row.precision)} | "
                   f"{row.gate_hits}/{len(ctx.notext)} | {row.nonempty} | {_pct(row.recall)} | "
                   f"{_pct(row.cer_plain, 2)} | {_pct(row.cer_photo, 2)} | {_pct(row.cer_screens, 2)} | "
                   f"{_pct(row.cer_all, 2)} | {_pct(row.exact_all)} | {fmt_s(row.gate_p50)} | "
                   f"{fmt_s(row.notext_p50)} / {fmt_s(row.notext_cpu_p50)} | {fmt_s(row.text_p50)} |")
    return out


def _sweep(ctx: Context) -> list[str]:
    rows = sweep_rows(ctx, shaped=False)
    out = ["## Sweep: gate_side × min_confidence (the reader as it is)", "",
           "Every image was read once without the gate and without a confidence floor, and gated once at each "
           "side, so each row is exactly what the bot would answer with those settings (no extra reads). "
           "RapidOCR itself drops lines under 0.5 (`Global.text_score`), so 0.5 means no extra filter. "
           "Times are p50 per image with onnxruntime on 1 thread: the gate alone, and the bot's read (gate + full "
           "OCR when the gate hits); the no-text target is checked on CPU-seconds, which the machine's other work "
           "disturbs least.", "",
           *_sweep_table(ctx, rows), "", *recommend(rows), "", *_recall_by_side(ctx)]
    return out


def _recall_by_side(ctx: Context) -> list[str]:
    """Which pictures each gate size lets through: where the sweep's CER differences come from."""
    groups: list[tuple[str, list[Measured]]] = [
        ("plain < 20 px", ctx.plain_small), ("plain ≥ 20 px", ctx.plain_big), ("photo", ctx.of("photo")),
        ("rotated", ctx.of("rotated")),
        *[(f"screenshot: {layout}", items) for layout, items in _groups(ctx.of("screenshot"), lambda m: m.variant)
          .items()],
        ("meme", ctx.of("meme"))]
    out = ["Share of text images the gate passes, by gate_side (the reader's filters do not matter here):", "",
           "| images | " + " | ".join(str(side) for side in ctx.sides) + " |",
           "| --- | " + " | ".join("---" for _ in ctx.sides) + " |"]
    for label, items in [*groups, ("*photos without text*", ctx.notext)]:
        if items:
            shares = (_pct(sum(m.gate[side] for m in items) / len(items), 0) for side in ctx.sides)
            out.append(f"| {label} ({len(items)}) | " + " | ".join(shares) + " |")
    return out


def _variants(ctx: Context, gate: int, conf: float, *, detector: bool = True) -> list[str]:
    out = ["## Proposed reader changes, measured", "",
           "These need edits to `bot/models/reader.py`; here they are built by handing RapidOCR the extra "
           "parameters (or, for the gate rule, by scoring the gate's own boxes).", "",
           f"### 1. Gate: ignore blob-shaped boxes (short side > {GATE_MAX_SHORT:.0%} of the gate picture's short "
           f"side and long/short < {GATE_MIN_ASPECT:g})", "",
           "What the detector finds in photos without text is mostly one big, roughly square region (a cup rim, "
           "a clock face, an eye); text lines are long and thin. Same sweep with the rule:", "",
           *_sweep_table(ctx, [row for row in sweep_rows(ctx, shaped=True) if row.confidence == conf]), "",
           "With the rule, over the whole sweep:", "", *recommend(sweep_rows(ctx, shaped=True))]

    subset = [m for m in ctx.text if m.variant_lines]
    names = [name for name in DETECTOR_VARIANTS if all(name in m.variant_lines for m in subset)]
    if subset and detector and names:
        out += ["", "### 2. Full read: less upscaling before detection", "",
                "RapidOCR's detector scales every picture so that its *shortest* side is at least 736 px "
                "(`Det.limit_type = min`, `Det.limit_side_len = 736`): a 360 × 90 snippet of 40 px text is detected at "
                "~2900 × 736, its letters ~330 px tall, where the gaps between words look like gaps between lines: "
                "the line comes back in pieces, and RapidOCR's fixed 10 px row tolerance can put the pieces out of "
                "order. Compared: `Det.limit_side_len = 480`, and `Det.limit_type = \"max\"` with "
                f"`Det.limit_side_len = max_side` (never upscaled). The same {len(subset)} text images (one in "
                f"{VARIANT_EVERY}), behind the configured gate, filtered at {conf}, onnxruntime on 1 thread every "
                "way; times are the full read alone:", "",
                "| detector input | CER | exact lines | right words, wrong order | full read wall p50 | wall p95 | "
                "CPU p50 | CPU p95 |",
                "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        current = ctx.scorer.quality(subset, gate, conf)
        out.append(f"| shortest side up to 736 (current) | {_pct(current.cer, 2)} | {_pct(current.exact_rate)} | "
                   f"{sum(out_of_order(m, gate, conf) for m in subset)} | "
                   + " | ".join(_times([m.full_time for m in subset if m.full_time is not None])) + " |")
        for name in names:
            q = ctx.scorer.quality(subset, gate, conf, variant=name)
            out.append(f"| {name} | {_pct(q.cer, 2)} | {_pct(q.exact_rate)} | "
                       f"{sum(out_of_order(m, gate, conf, variant=name) for m in subset)} | "
                       + " | ".join(_times([m.variant_time[name] for m in subset])) + " |")
        out += ["", "| category | images | CER: current | " + " | ".join(f"CER: {name}" for name in names)
                + " | CPU p50: current | " + " | ".join(f"CPU p50: {name}" for name in names) + " |",
                "| --- | --- | --- | " + " | ".join("---" for _ in names) + " | --- | "
                + " | ".join("---" for _ in names) + " |"]
        for label, group in _groups(subset, lambda m: m.category if m.category != "screenshot"
                                    else f"screenshot: {m.variant}").items():
            cers = [ctx.scorer.quality(group, gate, conf).cer,
                    *(ctx.scorer.quality(group, gate, conf, variant=name).cer for name in names)]
            cpus = [_p50([m.full_time.cpu for m in group if m.full_time]),
                    *(_p50([m.variant_time[name].cpu for m in group]) for name in names)]
            out.append(f"| {label} | {len(group)} | " + " | ".join(_pct(value, 2) for value in cers) + " | "
                       + " | ".join(fmt_s(value) for value in cpus) + " |")

    threaded = [m for m in ctx.measured if m.direct_time is not None and m.direct_gate_time is not None]
    if threaded:
        out += ["", "### 3. onnxruntime on one thread", "",
                "onnxruntime's default is one intra-op thread per core, whose workers spin while they wait; on a "
                "2-core machine that also runs the bot's event loop, decoders and torch models, the spinning is "
                "paid for. `EngineConfig.onnxruntime.intra_op_num_threads = 1` for both engines. The same images, "
                "each read both ways in the same pass (the gate and the read as configured, then the gate and the "
                "full read on 1 thread):", "",
                "| images | onnxruntime threads | gate CPU p50 | read wall p50 | wall p95 | CPU p50 | CPU p95 |",
                "| --- | --- | --- | --- | --- | --- | --- |"]
        for label, group in (("with text", [m for m in threaded if m.category != "notext"]),
                             ("without text", [m for m in threaded if m.category == "notext"])):
            if group:
                gate_cpu = fmt_s(_p50([m.direct_gate_time.cpu for m in group if m.direct_gate_time]))
                out.append(f"| {label} ({len(group)}) | as configured (1) | {gate_cpu} | "
                           + " | ".join(_times([m.direct_time for m in group if m.direct_time])) + " |")
                gate_cpu = fmt_s(_p50([m.gate_time[gate].cpu for m in group]))
                out.append(f"| {label} ({len(group)}) | 1 | {gate_cpu} | "
                           + " | ".join(_times([m.read_time(gate) for m in group])) + " |")
        out.append("\nThe text is the same both ways (the *Consistency* line compares exactly these reads).")
    return out


def _worst(ctx: Context, gate: int, conf: float, per_category: int = 3) -> list[str]:
    out = ["## Worst images per category (the configured reader)", "",
           "Ground truth → what was read, whitespace-normalised, cut at 160 characters.", ""]
    for category in CATEGORIES:
        def image_cer(item: Measured) -> float:
            read = normalise(" ".join(item.lines(gate, conf)))
            return ctx.scorer.edits(item, read) / max(1, len(normalise(" ".join(item.truth))))

        for item in sorted(ctx.of(category), key=image_cer, reverse=True)[:per_category]:
            read = normalise(" ".join(item.lines(gate, conf)))
            truth = normalise(" ".join(item.truth))
            if truth != read:
                out.append(f"- {item.name} ({item.variant}, {item.font_px} px), CER {_pct(image_cer(item))}: "
                           f"`{truth[:160]}` → `{read[:160]}`")
    return out


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 images per category, 4 photos (a smoke run)")
    parser.add_argument("--per-category", type=int, help=f"text images per category (default {DEFAULT_PER_CATEGORY})")
    parser.add_argument("--notext", type=int, help=f"photos without text (default {DEFAULT_NOTEXT})")
    parser.add_argument("--skip-variants", action="store_true", help="do not measure the proposed reader changes")
    parser.add_argument("--gate-sides", default=",".join(map(str, GATE_SIDES)),
                        help="comma-separated gate_side values to sweep (the configured one is always added)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="default bench/results/ocr_cpu.md (--quick: a temp file)")
    args = parser.parse_args(argv)
    per_category = args.per_category if args.per_category is not None else (2 if args.quick else DEFAULT_PER_CATEGORY)
    notext = args.notext if args.notext is not None else (4 if args.quick else DEFAULT_NOTEXT)
    started = time.perf_counter()
    info = machine_info()
    sides = tuple(int(side) for side in args.gate_sides.split(",") if side.strip())
    measured, readers = run(per_category, notext, args.seed, variants=not args.skip_variants, gate_sides=sides)
    given = sys.argv[1:] if argv is None else argv
    command = " ".join(["python -m bench.bench_ocr", *given])
    note = (f"{len(measured) - notext} text images ({per_category} per category: {', '.join(CATEGORIES)}) and "
            f"{notext} photos without text, seed {args.seed}, generated at run time by `bench/ocr_corpus.py`"
            + ("" if fonts_available() else " (**DejaVu fonts missing: Pillow's built-in face was used**)"))
    lines = report(measured, info, readers=readers, command=command, elapsed=time.perf_counter() - started,
                   load_end=load_average(), corpus_note=note)
    out = args.out or (Path(tempfile.gettempdir()) / "ocr_cpu_quick.md" if args.quick else RESULTS / "ocr_cpu.md")
    write_report(out, lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
