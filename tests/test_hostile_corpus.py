"""The hostile corpus (tests/hostile_corpus.py) through the production decoder sandbox.

For every file: no traceback (each failure is an ImageRejected with a user message), no hang
(each file finishes within WATCHDOG_S), and every success honours decode_image's contract
(RGB, longest side <= the target size, positive original size, frame_count >= 1) plus what the
corpus says about that file (expected codes, size, frame count).

The decode runs where the bot runs it: ``bot.decode_sandbox.DecodeSandbox``'s worker processes, which
are killed past a time or memory limit, so a file that does hang (or allocates without end) cannot take
pytest down; its ``decode_timeout`` / ``decoder_crashed`` refusals count as a hang / a crash here.
"""

from __future__ import annotations

import dataclasses
import time
import traceback
import zlib
from collections import Counter, deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import pytest

from bot.config import OcrSettings
from bot.decode_sandbox import DecodeSandbox
from bot.imaging import DEFAULT_TARGET_SIZE, ImageRejected
from tests.harness.bot_process import proc_status_bytes
from tests.hostile_corpus import CATEGORIES, OK, Case, hostile_cases

WATCHDOG_S = 20.0  # per file; the slowest file takes well under a second (see the report)
WORKERS = 2  # CI has two cores
IN_FLIGHT = 2 * WORKERS  # submitted ahead: keeps workers busy, bounds the 24 MB files in memory
WORKER_MEMORY_LIMIT = 4 << 30  # address space per worker, so a memory bomb fails instead of the CI box
# The sandbox's own refusals for a decode it had to kill: hangs and crashes by another name.
KILLED_CODES = frozenset({"decode_timeout", "decoder_crashed"})


@dataclass(frozen=True)
class Outcome:
    """What one decode did, in a form that crosses the process boundary."""

    kind: str  # "ok", "rejected" or "crash"
    code: str = ""
    message: str = ""
    mode: str = ""
    size: tuple[int, int] = (0, 0)
    original_size: tuple[int, int] = (0, 0)
    frame_count: int = 0
    animated: bool = False
    seconds: float = 0.0
    text_mode: str = ""


def decode_case(sandbox: DecodeSandbox, data: bytes, filename: str | None = None) -> Outcome:
    """THE SEAM: decode one untrusted file the way production does, through the decoder sandbox."""
    start = time.perf_counter()
    try:
        # With the text reader's grayscale copy, as the queue asks for it (models.ocr.max_side).
        result = sandbox.decode(data, filename=filename, text_size=OcrSettings().max_side)
    except ImageRejected as exc:
        outcome = Outcome("rejected", code=exc.code, message=exc.user_message)
    except BaseException:  # a traceback is exactly what this test exists to find
        outcome = Outcome("crash", message=traceback.format_exc())
    else:
        outcome = Outcome(
            OK,
            mode=result.image.mode,
            size=result.image.size,
            original_size=result.original_size,
            frame_count=result.frame_count,
            animated=result.animated,
            text_mode="" if result.text_image is None else result.text_image.mode,
        )
    return dataclasses.replace(outcome, seconds=time.perf_counter() - start)


def _worker_peak_rss_mb(sandbox: DecodeSandbox) -> int:
    """The decoder processes' peak RSS (Linux /proc; 0 elsewhere)."""
    return max((proc_status_bytes(w.process.pid, "VmHWM") >> 20 for w in list(sandbox._idle)), default=0)


def run_watched(cases: Iterable[Case], report: Report) -> Iterator[tuple[Case, Outcome]]:
    """Decode every case in the production sandbox (two decoder processes, killed and replaced past
    WATCHDOG_S or WORKER_MEMORY_LIMIT), two at a time as the queue's decode threads do."""
    with DecodeSandbox(workers=WORKERS, timeout_s=WATCHDOG_S, memory_mb=WORKER_MEMORY_LIMIT >> 20) as sandbox, \
            ThreadPoolExecutor(WORKERS) as threads:
        pending: deque[tuple[Case, Future[Outcome]]] = deque()
        for case in cases:
            pending.append((case, threads.submit(decode_case, sandbox, case.data, case.filename)))
            while len(pending) >= IN_FLIGHT:
                done, future = pending.popleft()
                yield done, future.result()
        while pending:
            done, future = pending.popleft()
            yield done, future.result()
        report.peak_rss_mb = _worker_peak_rss_mb(sandbox)


@dataclass
class Report:
    problems: list[str] = field(default_factory=list)
    outcomes: Counter[tuple[str, str]] = field(default_factory=Counter)
    slowest: list[tuple[float, str]] = field(default_factory=list)
    peak_rss_mb: int = 0
    cases: int = 0

    def summary(self) -> str:
        lines = [f"{self.cases} files; peak worker RSS {self.peak_rss_mb} MB; slowest:"]
        lines += [f"  {seconds * 1000:7.1f} ms  {name}" for seconds, name in sorted(self.slowest)[-8:]]
        for category in CATEGORIES:
            codes = {code: n for (cat, code), n in sorted(self.outcomes.items()) if cat == category}
            lines.append(f"  {category:13s} {codes}")
        return "\n".join(lines)


def check(case: Case, outcome: Outcome) -> str | None:
    """The problem with this outcome, or None when it is fine."""
    if outcome.kind == "crash" or outcome.code in KILLED_CODES:
        return f"{case.name}: {outcome.code or 'traceback'}\n{outcome.message}"
    result = outcome.code if outcome.kind == "rejected" else OK
    if case.expect is not None and result not in case.expect:
        return f"{case.name}: got {result!r} ({outcome.message}), expected one of {sorted(case.expect)}"
    if outcome.kind == "rejected":
        message = outcome.message
        if not (isinstance(message, str) and message.strip() and "\n" not in message and len(message) < 300):
            return f"{case.name}: unusable user message {message!r}"
        if any(ch in message for ch in "@<>`*"):  # the file name must not ping, link or format
            return f"{case.name}: unsafe user message {message!r}"
        return None
    width, height = outcome.size
    problems = []
    if outcome.mode != "RGB":
        problems.append(f"mode {outcome.mode}")
    if outcome.text_mode != "L":
        problems.append(f"reader copy mode {outcome.text_mode or 'missing'}")
    if not (1 <= width <= DEFAULT_TARGET_SIZE and 1 <= height <= DEFAULT_TARGET_SIZE):
        problems.append(f"size {outcome.size}")
    if min(outcome.original_size) < 1:
        problems.append(f"original_size {outcome.original_size}")
    if outcome.frame_count < 1 or outcome.animated != (outcome.frame_count > 1):
        problems.append(f"frame_count {outcome.frame_count}, animated {outcome.animated}")
    if case.frames is not None and outcome.frame_count != case.frames:
        problems.append(f"frame_count {outcome.frame_count} != {case.frames}")
    if case.size is not None and outcome.original_size != case.size:
        problems.append(f"original_size {outcome.original_size} != {case.size}")
    return f"{case.name}: " + ", ".join(problems) if problems else None


def test_corpus_is_large_deterministic_and_covers_every_category() -> None:
    first = [(c.name, c.category, zlib.crc32(c.data)) for c in hostile_cases(full_size=False)]
    again = [(c.name, c.category, zlib.crc32(c.data)) for c in hostile_cases(full_size=False)]
    assert first == again
    assert len({name for name, _, _ in first}) == len(first)  # names are unique
    assert len(first) >= 1_000
    assert {category for _, category, _ in first} == set(CATEGORIES)


@pytest.mark.filterwarnings("ignore")
def test_every_hostile_file_is_decoded_or_refused_cleanly() -> None:
    report = Report()
    full_size_floods = 0
    for case, outcome in run_watched(hostile_cases(), report):
        report.cases += 1
        if "/full-" in case.name:
            full_size_floods += 1
            assert 20 << 20 <= len(case.data) <= 25 << 20, case.name
        problem = check(case, outcome)
        if problem:
            report.problems.append(problem)
        report.outcomes[(case.category, outcome.code or outcome.kind)] += 1
        report.slowest = sorted([*report.slowest, (outcome.seconds, case.name)])[-8:]
    print(report.summary())
    assert report.cases >= 1_000
    assert full_size_floods >= 25  # one 24 MB flood of each kind
    assert not report.problems, f"{len(report.problems)} problems:\n" + "\n".join(report.problems[:40])
