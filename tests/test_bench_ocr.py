"""bench/bench_ocr.py: its metrics are right (the edit distance against a plain reference), its corpus
is deterministic and shaped like the reader's input, and the benchmark runs end to end on a few images
with the real RapidOCR models (they ship in the wheel)."""

from __future__ import annotations

import hashlib
import random
import re

import pytest

from bench.bench_ocr import CONFIDENCES, cer, edit_distance, exact_lines, main, text_shaped
from bench.ocr_corpus import CATEGORIES, MAX_SIDE, iter_corpus, normalise
from bot.config import OcrSettings


def reference_distance(a: str, b: str) -> int:
    """The textbook full-matrix Levenshtein, no shortcuts: what edit_distance must agree with."""
    table = [[i + j if i * j == 0 else 0 for j in range(len(b) + 1)] for i in range(len(a) + 1)]
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            table[i][j] = min(table[i - 1][j] + 1, table[i][j - 1] + 1,
                              table[i - 1][j - 1] + (a[i - 1] != b[j - 1]))
    return table[len(a)][len(b)]


@pytest.mark.parametrize(("a", "b", "distance"), [
    ("kitten", "sitting", 3), ("flaw", "lawn", 2), ("intention", "execution", 5), ("", "abc", 3), ("abc", "", 3),
    ("abc", "abc", 0), ("", "", 0), ("ab", "ba", 2), ("Error: connection refused", "Error: conection refused", 1),
    ("aaaa", "aa", 2), ("abcabc", "abc", 3), ("xabcx", "abc", 2),
])
def test_edit_distance_on_known_pairs(a, b, distance):
    assert edit_distance(a, b) == distance
    assert edit_distance(b, a) == distance


def test_edit_distance_matches_the_textbook_one_on_random_strings():
    """The prefix/suffix shortcut must never change the answer (repeated letters are where it could)."""
    rng = random.Random(7)
    for _ in range(300):
        a = "".join(rng.choice("ab c") for _ in range(rng.randint(0, 12)))
        b = "".join(rng.choice("ab c") for _ in range(rng.randint(0, 12)))
        assert edit_distance(a, b) == reference_distance(a, b), (a, b)


def test_cer_normalises_whitespace_and_divides_by_the_reference():
    assert cer("Hello   world\n", "Hello world") == 0.0
    assert cer("Hello\nworld", "Hello world") == 0.0
    assert cer("abce", "abcd") == 0.25
    assert cer("", "abcd") == 1.0
    assert cer("abcdabcd", "abcd") == 1.0  # insertions count too: CER can pass 100 %
    assert cer("", "") == 0.0 and cer("junk", "") == 1.0
    assert normalise("  a \t b\n\nc ") == "a b c"


def test_exact_lines_matches_each_read_line_once():
    assert exact_lines(["a  b", "c"], ["a b", "c", "c"]) == 2
    assert exact_lines(["a b c"], ["a b", "c"]) == 0  # two lines read as one are not exact
    assert exact_lines([], ["x"]) == 0


def test_gate_shape_rule_keeps_lines_and_drops_blobs():
    gate_picture = (480, 320)
    assert text_shaped(300, 30, gate_picture)  # a line of text
    assert text_shaped(40, 20, gate_picture)  # a short word
    assert text_shaped(300, 120, gate_picture)  # a big, long caption line
    assert not text_shaped(300, 280, gate_picture)  # a cup rim
    assert not text_shaped(470, 440, gate_picture)  # a retina


def test_corpus_is_deterministic_a_prefix_and_shaped_like_the_readers_input():
    def digest(samples):
        return [(s.name, s.lines, hashlib.sha256(s.image.tobytes()).hexdigest()) for s in samples]

    one = list(iter_corpus(seed=3, per_category=1, notext=2))
    again = list(iter_corpus(seed=3, per_category=1, notext=2))
    more = list(iter_corpus(seed=3, per_category=2, notext=2))
    other_seed = list(iter_corpus(seed=4, per_category=1, notext=2))
    assert digest(one) == digest(again)
    assert digest(one)[0] == digest(more)[0]  # each image has its own generator: a prefix of a bigger corpus
    assert digest(one)[0] != digest(other_seed)[0]
    assert [s.category for s in one] == [*CATEGORIES, "notext", "notext"]
    for sample in more:
        assert sample.image.mode == "L" and max(sample.image.size) <= MAX_SIDE
        assert bool(sample.lines) == (sample.category != "notext")
        assert all(line == line.strip() and line for line in sample.lines)


def test_bench_runs_end_to_end_on_a_few_images(tmp_path):
    out = tmp_path / "ocr.md"
    argv = ["--quick", "--per-category", "1", "--notext", "2", "--gate-sides", "320", "--out", str(out)]
    assert main(argv) == 0
    report = out.read_text(encoding="utf-8")
    for heading in ("## Per category", "## Photos without text", "## Time per image", "## Targets (issue)",
                    "## Sweep: gate_side × min_confidence", "### 1. Gate", "### 2. Full read", "### 3. onnxruntime"):
        assert heading in report, heading
    row = re.search(r"^\| \*\*all text images\*\* \| (\d+) \| (\d+) \| (\d+) \| ([\d.]+) % \|", report, re.M)
    assert row, "no all-text row"
    assert int(row[1]) == len(CATEGORIES)
    # The ground truth is what the reader should read: a mix-up (wrong image, wrong order) reads as ~100 %.
    assert float(row[4]) < 10.0, row[0]
    consistency = re.search(r"on (\d+) of (\d+) images read both ways", report)
    assert consistency and consistency[1] == consistency[2] and int(consistency[2]) == 3  # 1 text + 2 photos
    # The swept sides are the asked ones plus the configured two stages, each with every min_confidence.
    sides = {320, OcrSettings().gate_side, OcrSettings().screen_gate_side}
    sweep = report.split("## Sweep", 1)[1].split("- quality first", 1)[0]
    swept = re.findall(r"^\| (\d+)(?: \(current\))? \| (0\.\d)", sweep, re.M)
    assert sorted(swept) == sorted((str(side), str(conf)) for side in sides for conf in CONFIDENCES)
    assert "--quick --per-category 1 --notext 2 --gate-sides 320" in report
