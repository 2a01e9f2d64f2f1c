"""OCR quality and cost of the text reader (``bot.models.reader.TextReader``) on a generated corpus.

    python -m bench.bench_ocr            # ~6-9 min on 2 cores; writes bench/results/ocr_cpu.md
    python -m bench.bench_ocr --quick    # a few images per category, a smoke run (temp file)

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

The tunables are swept without extra reads: every image is read once by the full pipeline *without*
the gate and without a confidence floor, and gated once at each ``gate_side``; the bot's answer for
any (gate_side, min_confidence) is then exactly "the full read's lines at or above min_confidence if
that gate found a box, else nothing" (checked against the real configured reader, which is also
timed directly on every photo without text and on a share of the text images).
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

from bench.common import RESULTS, fmt_s, header_lines, load_average, machine_info, percentile, write_report
from bench.ocr_corpus import CATEGORIES, DEFAULT_NOTEXT, DEFAULT_PER_CATEGORY, Sample, fonts_available, \
    iter_corpus, normalise

GATE_SIDES = (320, 480, 640)
CONFIDENCES = (0.5, 0.6, 0.7, 0.8)
#: Issue targets: CER on >= 20 px text on plain backgrounds, CER on photos, p50 extra cost of a photo.
TARGET_PLAIN_CER = 0.03
TARGET_PHOTO_CER = 0.10
TARGET_NOTEXT_P50_S = 0.050
#: Every n-th text image is also read through the configured reader itself (timing and consistency).
DIRECT_EVERY = 4


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


# ----------------------------------------------------------------------------- measuring


@dataclass
class Timed:
    wall: float
    cpu: float


@contextlib.contextmanager
def _clock(into: list[Timed]) -> Iterator[None]:
    wall, cpu = time.perf_counter(), time.process_time()
    yield
    into.append(Timed(time.perf_counter() - wall, time.process_time() - cpu))


@dataclass
class Measured:
    """One corpus image's readings (the image itself is dropped once measured)."""

    name: str
    category: str
    variant: str
    font_px: int
    truth: tuple[str, ...]
    gate: dict[int, bool] = field(default_factory=dict)
    gate_time: dict[int, Timed] = field(default_factory=dict)
    # The full pipeline without the gate and without a confidence floor; None when no gate found a
    # box on a photo without text (then no configuration ever runs it).
    full: list[tuple[str, float]] | None = None
    full_time: Timed | None = None
    direct: str | None = None  # what the configured reader itself returned, where it was run
    direct_time: Timed | None = None

    def lines(self, gate_side: int, min_confidence: float) -> list[str]:
        """The lines the bot would keep with these settings."""
        if not self.gate[gate_side] or self.full is None:
            return []
        return [text for text, score in self.full if score >= min_confidence and text.strip()]

    def read_time(self, gate_side: int) -> Timed:
        """The bot's cost for this image: its gate, plus the full read when the gate found a box."""
        gate = self.gate_time[gate_side]
        if self.gate[gate_side] and self.full_time is not None:
            return Timed(gate.wall + self.full_time.wall, gate.cpu + self.full_time.cpu)
        return gate


def _reader_classes() -> tuple[type, type]:
    from bot.models.reader import TextReader

    class UngatedReader(TextReader):
        """The configured pipeline minus its gate: what the bot runs once the gate has found a box."""

        def has_text(self, image: Any) -> bool:
            return True

    return TextReader, UngatedReader


@dataclass
class Readers:
    product: Any  # the reader exactly as configured (bot.config.OcrSettings defaults)
    gates: dict[int, Any]
    ungated: Any
    settings: Any


def load_readers() -> Readers:
    from bot.config import OcrSettings

    text_reader, ungated_reader = _reader_classes()
    settings = OcrSettings()
    product = text_reader.from_settings(settings)
    gates = {side: text_reader(gate_side=side, max_side=settings.max_side, min_confidence=0.0)
             for side in GATE_SIDES}
    ungated = ungated_reader(gate_side=settings.gate_side, max_side=settings.max_side, min_confidence=0.0,
                             max_chars=settings.max_chars)
    return Readers(product, gates, ungated, settings)


def measure(readers: Readers, sample: Sample, *, direct: bool) -> Measured:
    from bot.models.reader import joined

    result = Measured(sample.name, sample.category, sample.variant, sample.font_px, sample.lines)
    for side, reader in readers.gates.items():
        times: list[Timed] = []
        with _clock(times):
            result.gate[side] = reader.has_text(sample.image)
        result.gate_time[side] = times[0]
    if sample.category != "notext" or any(result.gate.values()):
        times = []
        with _clock(times):
            lines = readers.ungated.read_lines(sample.image)
        result.full = [(line.text, line.confidence) for line in lines]
        result.full_time = times[0]
    if direct:
        times = []
        with _clock(times):
            result.direct = readers.product.read([sample.image])[0]
        result.direct_time = times[0]
        expected = joined(_as_lines(result.lines(readers.settings.gate_side, readers.settings.min_confidence)),
                          readers.settings.max_chars)
        if normalise(expected) != normalise(result.direct):
            print(f"  ! {sample.name}: configured reader {result.direct!r} != composed {expected!r}", flush=True)
    return result


def _as_lines(texts: list[str]) -> list[Any]:
    from bot.models.reader import TextLine

    return [TextLine(text, 1.0) for text in texts]


def warm_up(readers: Readers, samples: Sequence[Sample]) -> None:
    """First calls build onnxruntime's kernels and buffers: keep them out of the timings."""
    for sample in samples:
        for reader in (readers.product, *readers.gates.values()):
            reader.read([sample.image])
        readers.ungated.read([sample.image])


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


class _Scorer:
    """Edit distances cached per (image, text): the sweep asks for the same texts many times."""

    def __init__(self) -> None:
        self._cache: dict[tuple[str, str], int] = {}

    def edits(self, item: Measured, hypothesis: str) -> int:
        key = (item.name, hypothesis)
        if key not in self._cache:
            self._cache[key] = edit_distance(hypothesis, normalise(" ".join(item.truth)))
        return self._cache[key]

    def quality(self, items: Sequence[Measured], gate_side: int, min_confidence: float) -> Quality:
        edits = chars = exact = lines = 0
        per_image = []
        for item in items:
            read = item.lines(gate_side, min_confidence)
            reference = normalise(" ".join(item.truth))
            distance = self.edits(item, normalise(" ".join(read)))
            edits += distance
            chars += len(reference)
            per_image.append(distance / max(1, len(reference)))
            lines += len(item.truth)
            exact += exact_lines(read, item.truth)
        recall = sum(item.gate[gate_side] for item in items) / len(items) if items else float("nan")
        return Quality(len(items), lines, chars, edits, exact, recall, per_image)


def _pct(value: float, digits: int = 1) -> str:
    return "n/a" if value != value else f"{value * 100:.{digits}f} %"


def _times(values: Sequence[Timed]) -> tuple[str, str, str, str]:
    """(wall p50, wall p95, CPU p50, CPU p95) formatted."""
    walls = [t.wall for t in values]
    cpus = [t.cpu for t in values]
    return (fmt_s(percentile(walls, 0.5)), fmt_s(percentile(walls, 0.95)), fmt_s(percentile(cpus, 0.5)),
            fmt_s(percentile(cpus, 0.95)))


def _mark(ok: bool) -> str:
    return "**met**" if ok else "**NOT met**"


def _groups(items: Sequence[Measured], key: Callable[[Measured], str]) -> dict[str, list[Measured]]:
    groups: dict[str, list[Measured]] = {}
    for item in items:
        groups.setdefault(key(item), []).append(item)
    return dict(sorted(groups.items()))


# ----------------------------------------------------------------------------- report


def report(measured: list[Measured], info: dict[str, Any], *, settings: Any, command: str, elapsed: float,
           load_end: str, corpus_note: str) -> list[str]:
    import onnxruntime

    gate, conf = settings.gate_side, settings.min_confidence
    text_items = [m for m in measured if m.category != "notext"]
    notext = [m for m in measured if m.category == "notext"]
    scorer = _Scorer()
    plain_big = [m for m in text_items if m.category == "plain" and m.font_px >= 20]
    plain_small = [m for m in text_items if m.category == "plain" and m.font_px < 20]
    photo = [m for m in text_items if m.category == "photo"]

    lines = header_lines(
        "Text reader (OCR): quality and cost on the CPU", info,
        [f"- produced by `{command}` in {elapsed / 60:.1f} min; load average at the end: {load_end}",
         f"- reader: `bot.models.reader.TextReader` (RapidOCR PP-OCRv6 small det + cls + rec, onnxruntime "
         f"{onnxruntime.__version__}, its default threads: one per core), configured by `OcrSettings()` defaults: "
         f"`gate_side = {gate}`, `max_side = {settings.max_side}`, `min_confidence = {conf}`",
         f"- corpus: {corpus_note}",
         "- CER = Levenshtein edits / ground-truth characters, both texts whitespace-normalised (lines joined by "
         "one space), summed over the images of a row; exact lines = ground-truth lines read exactly as one line",
         "- times: wall clock and process CPU-seconds per image (both cores together), p50/p95; *read* = what the "
         "bot runs: the gate, then the full OCR when the gate finds a box"],
        noise_note="p50/p95 over every image are reported",
    )

    # Headline per category.
    lines += ["## Per category (the configured reader)", "",
              "| category | images | lines | chars | CER | exact lines | gate found text | median image CER "
              "| read p50 | read p95 | read CPU p50 |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    rows: list[tuple[str, list[Measured]]] = [
        ("plain, ≥ 20 px", plain_big), ("plain, < 20 px", plain_small),
        *[(category, [m for m in text_items if m.category == category]) for category in CATEGORIES[1:]],
        ("**all text images**", text_items)]
    for label, items in rows:
        if not items:
            continue
        q = scorer.quality(items, gate, conf)
        wall50, wall95, cpu50, _ = _times([m.read_time(gate) for m in items])
        lines.append(f"| {label} | {q.images} | {q.lines} | {q.chars} | {_pct(q.cer, 2)} | {_pct(q.exact_rate)} | "
                     f"{_pct(q.gate_recall, 0)} | {_pct(statistics.median(q.per_image_cer), 2)} | {wall50} | {wall95} "
                     f"| {cpu50} |")

    # Photos without text.
    direct = [m for m in notext if m.direct_time is not None]
    if notext:
        hits = sum(m.gate[gate] for m in notext)
        nonempty = sum(bool(m.lines(gate, conf)) for m in notext)
        lines += ["", "## Photos without text (text-detection precision)", "",
                  f"- {len(notext)} photos: precision (read as \"\") **{_pct(1 - nonempty / len(notext))}**; "
                  f"the gate found a box on {hits} ({_pct(hits / len(notext), 0)}), of which {nonempty} still "
                  f"produced text after `min_confidence = {conf}`"]
        if direct:
            wall50, wall95, cpu50, cpu95 = _times([m.direct_time for m in direct if m.direct_time])
            lines.append(f"- cost of a photo without text through the configured reader (measured directly, "
                         f"`TextReader.read`): p50 **{wall50}** wall / {cpu50} CPU, p95 {wall95} wall / {cpu95} CPU")
        wall50, wall95, cpu50, cpu95 = _times([m.gate_time[gate] for m in notext])
        lines.append(f"- gate alone ({gate} px) on them: p50 {wall50} / p95 {wall95} wall, {cpu50} / {cpu95} CPU")
        junk = [(m.name, m.variant, m.lines(gate, conf)) for m in notext if m.lines(gate, conf)]
        if junk:
            lines.append("- text read from photos without text: " + "; ".join(
                f"{variant}: `{' / '.join(read)[:80]}`" for _, variant, read in junk))
        lines += ["", "| photo | variants | gate found a box | text after the filter |", "| --- | --- | --- | --- |"]
        for base, items in _groups(notext, lambda m: m.variant.split("/")[0]).items():
            lines.append(f"| {base} | {len(items)} | {sum(m.gate[gate] for m in items)} | "
                         f"{sum(bool(m.lines(gate, conf)) for m in items)} |")

    # Time.
    lines += ["", "## Time per image (the configured reader)", "",
              "| images | step | wall p50 | wall p95 | CPU p50 | CPU p95 |", "| --- | --- | --- | --- | --- | --- |"]
    for label, items in (("with text", text_items), ("without text", notext)):
        if not items:
            continue
        lines.append(f"| {label} ({len(items)}) | gate alone ({gate} px) | "
                     + " | ".join(_times([m.gate_time[gate] for m in items])) + " |")
        lines.append(f"| {label} ({len(items)}) | read (gate + OCR on a hit) | "
                     + " | ".join(_times([m.read_time(gate) for m in items])) + " |")
        full = [m.full_time for m in items if m.full_time is not None]
        if full:
            lines.append(f"| {label} ({len(full)} run) | full OCR alone (no gate) | " + " | ".join(_times(full)) + " |")
    text_direct = [m for m in text_items if m.direct_time is not None]
    if text_direct:
        lines.append(f"| with text ({len(text_direct)}, every {DIRECT_EVERY}th) | read, measured directly "
                     "(`TextReader.read`) | " + " | ".join(_times([m.direct_time for m in text_direct
                                                                  if m.direct_time])) + " |")
    mismatches = [m.name for m in measured if m.direct is not None
                  and normalise(m.direct) != normalise(" ".join(m.lines(gate, conf)))]
    lines += ["", f"Consistency: the configured reader's own answer equals the composed one (gate {gate} px, then the "
              f"ungated read filtered at {conf}) on {len(direct) + len(text_direct) - len(mismatches)} of "
              f"{len(direct) + len(text_direct)} images read both ways"
              + (f"; differs on {', '.join(mismatches)}" if mismatches else "") + "."]

    # Targets.
    if plain_big or photo or direct:
        lines += ["", "## Targets (issue)", ""]
    if plain_big:
        value = scorer.quality(plain_big, gate, conf).cer
        lines.append(f"- CER ≤ {_pct(TARGET_PLAIN_CER, 0)} on text ≥ 20 px on plain backgrounds: {_pct(value, 2)} — "
                     f"{_mark(value <= TARGET_PLAIN_CER)}")
    if photo:
        value = scorer.quality(photo, gate, conf).cer
        lines.append(f"- CER ≤ {_pct(TARGET_PHOTO_CER, 0)} on photos: {_pct(value, 2)} — "
                     f"{_mark(value <= TARGET_PHOTO_CER)}")
    if direct:
        value = percentile([m.direct_time.wall for m in direct if m.direct_time], 0.5)
        lines.append(f"- photos without text cost ≤ {fmt_s(TARGET_NOTEXT_P50_S)} extra at p50: {fmt_s(value)} wall — "
                     f"{_mark(value <= TARGET_NOTEXT_P50_S)}")

    lines += ["", *_breakdowns(scorer, text_items, gate, conf)]
    lines += ["", *_sweep(scorer, text_items, notext, settings)]
    lines += ["", *_worst(scorer, text_items, gate, conf)]
    return lines


def _breakdowns(scorer: _Scorer, text_items: list[Measured], gate: int, conf: float) -> list[str]:
    out = ["## Breakdowns", "",
           "| category | split | images | CER | exact lines | gate found text |", "| --- | --- | --- | --- | --- | --- |"]
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
        items = [m for m in text_items if m.category == category]
        for label, group in _groups(items, key).items():
            q = scorer.quality(group, gate, conf)
            out.append(f"| {category} | {label} | {q.images} | {_pct(q.cer, 2)} | {_pct(q.exact_rate)} | "
                       f"{_pct(q.gate_recall, 0)} |")
    return out


def _angle(item: Measured) -> float:
    try:
        return float(item.variant.rsplit("/", 1)[1].rstrip("°"))
    except (IndexError, ValueError):
        return 0.0


def _sweep(scorer: _Scorer, text_items: list[Measured], notext: list[Measured], settings: Any) -> list[str]:
    plain_big = [m for m in text_items if m.category == "plain" and m.font_px >= 20]
    photo = [m for m in text_items if m.category == "photo"]
    out = ["## Sweep: gate_side × min_confidence", "",
           "Every image was read once without the gate and without a confidence floor, and gated once at each "
           "side, so each row is exactly what the bot would answer with those settings (no extra reads). "
           "RapidOCR itself drops lines under 0.5 (`Global.text_score`), so 0.5 means no extra filter. "
           "Times are per image, p50: gate alone, and the bot's read (gate + full OCR when the gate hits).", "",
           "| gate_side | min_confidence | no-text precision | no-text gate hits | no-text with text | "
           "text gate recall | CER plain ≥ 20 px | CER photos | CER all text | exact lines, all | gate p50 "
           "(no text) | read p50 (no text) | read p50 (text) |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    scored = []
    for side in GATE_SIDES:
        for conf in CONFIDENCES:
            nonempty = sum(bool(m.lines(side, conf)) for m in notext)
            hits = sum(m.gate[side] for m in notext)
            precision = 1 - nonempty / len(notext) if notext else float("nan")
            big, ph, every = (scorer.quality(items, side, conf) for items in (plain_big, photo, text_items))
            gate50 = percentile([m.gate_time[side].wall for m in notext], 0.5) if notext else float("nan")
            read50 = percentile([m.read_time(side).wall for m in notext], 0.5) if notext else float("nan")
            text50 = percentile([m.read_time(side).wall for m in text_items], 0.5) if text_items else float("nan")
            current = side == settings.gate_side and conf == settings.min_confidence
            scored.append((side, conf, precision, every.cer, big.cer, ph.cer, read50))
            out.append(f"| {side}{' (current)' if current else ''} | {conf}{' (current)' if current else ''} | "
                       f"{_pct(precision)} | {hits}/{len(notext)} | {nonempty} | {_pct(every.gate_recall)} | "
                       f"{_pct(big.cer, 2)} | {_pct(ph.cer, 2)} | {_pct(every.cer, 2)} | {_pct(every.exact_rate)} | "
                       f"{fmt_s(gate50)} | {fmt_s(read50)} | {fmt_s(text50)} |")
    meeting = [row for row in scored if (row[4] != row[4] or row[4] <= TARGET_PLAIN_CER)
               and (row[5] != row[5] or row[5] <= TARGET_PHOTO_CER) and (row[6] != row[6] or row[6] <= TARGET_NOTEXT_P50_S)]
    pool = meeting or scored
    # Best precision first, then the lowest overall CER, then the cheapest photo.
    best = min(pool, key=lambda row: (-round(row[2], 3), round(row[3], 4), row[6]))
    out += ["", f"By that rule (all three targets met where possible, then the best no-text precision, then the "
            f"lowest CER over all text, then the cheapest photo): **gate_side = {best[0]}, min_confidence = "
            f"{best[1]}** ({_pct(best[2])} precision, {_pct(best[3], 2)} CER on all text, photos "
            f"{fmt_s(best[6])} p50)" + ("" if meeting else "; no setting met all three targets") + "."]
    return out


def _worst(scorer: _Scorer, text_items: list[Measured], gate: int, conf: float, per_category: int = 3) -> list[str]:
    out = ["## Worst images per category (configured reader)", "",
           "Ground truth → what was read, whitespace-normalised, cut at 160 characters.", ""]
    for category in CATEGORIES:
        items = [m for m in text_items if m.category == category]
        ranked = sorted(items, key=lambda m: -scorer.edits(m, normalise(" ".join(m.lines(gate, conf))))
                        / max(1, len(normalise(" ".join(m.truth)))))
        for item in ranked[:per_category]:
            read = normalise(" ".join(item.lines(gate, conf)))
            truth = normalise(" ".join(item.truth))
            if truth == read:
                continue
            out.append(f"- {item.name} ({item.variant}, {item.font_px} px), CER {_pct(cer(read, truth), 1)}: "
                       f"`{truth[:160]}` → `{read[:160]}`")
    return out


# ----------------------------------------------------------------------------- main


def run(per_category: int, notext: int, seed: int) -> tuple[list[Measured], Any]:
    readers = load_readers()
    samples = iter_corpus(seed, per_category, notext)
    first = next(samples)
    warm_up(readers, [first])
    measured = []
    text_index = 0
    started = time.perf_counter()
    for sample in (first, *samples):
        direct = sample.category == "notext" or text_index % DIRECT_EVERY == 0
        text_index += sample.category != "notext"
        item = measure(readers, sample, direct=direct)
        measured.append(item)
        if len(measured) % 25 == 0:
            print(f"  {len(measured)} images in {time.perf_counter() - started:.0f} s (load {load_average()})",
                  flush=True)
    return measured, readers.settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 images per category, 4 photos (a smoke run)")
    parser.add_argument("--per-category", type=int, help=f"text images per category (default {DEFAULT_PER_CATEGORY})")
    parser.add_argument("--notext", type=int, help=f"photos without text (default {DEFAULT_NOTEXT})")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="default bench/results/ocr_cpu.md (--quick: a temp file)")
    args = parser.parse_args(argv)
    per_category = args.per_category if args.per_category is not None else (2 if args.quick else DEFAULT_PER_CATEGORY)
    notext = args.notext if args.notext is not None else (4 if args.quick else DEFAULT_NOTEXT)
    started = time.perf_counter()
    info = machine_info()
    measured, settings = run(per_category, notext, args.seed)
    given = sys.argv[1:] if argv is None else argv
    command = " ".join(["python -m bench.bench_ocr", *given])
    note = (f"{len(measured) - notext} text images ({per_category} per category: {', '.join(CATEGORIES)}) and "
            f"{notext} photos without text, seed {args.seed}, generated at run time by `bench/ocr_corpus.py`"
            + ("" if fonts_available() else " (**DejaVu fonts missing: Pillow's built-in face was used**)"))
    lines = report(measured, info, settings=settings, command=command, elapsed=time.perf_counter() - started,
                   load_end=load_average(), corpus_note=note)
    out = args.out or (Path(tempfile.gettempdir()) / "ocr_cpu_quick.md" if args.quick else RESULTS / "ocr_cpu.md")
    write_report(out, lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
