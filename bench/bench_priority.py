"""Interactive latency while background indexing saturates the models, through the queue's public API.

    python -m bench.bench_priority            # ~12 min on 2 cores; writes bench/results/priority_cpu.md
    python -m bench.bench_priority --quick    # tiny stand-ins, a few seconds per configuration

The question (issue 13): on a small CPU host where a picture costs ~0.9 s of model time, does a
person still get an answer quickly while the bot indexes a backlog? Two interactive probes, as the
bot issues them:

- **/find query**: ``embed_texts([q])`` and ``clip_texts([q])`` gathered (``MemoryService.search``);
- **mention of a fresh picture**: one full interactive ``analyze(bytes)`` (decode included).

Each configuration runs the same schedule: background feeders keep the models saturated for
``--seconds``, and one probe coroutine sends a /find query, then every other round a fresh
picture, with random gaps (0.3–1.5 s, fixed seed) so the probes land at every phase of the
background batches. Latency is end to end: call to result.

Background work, like the ingest backlog upstream: the caption tier kept saturated (``2 ×
background_batch_size`` ``caption()`` calls always in flight, on decoded pictures) plus the fast tier
arriving at 0.5 pictures/s (``analyze_fast``, whose latency is reported too: how long a new picture
takes to become findable while captions are being written). The *before* row is the old single FIFO: the same
probes against indexing submitted as it was before the tiers existed (full ``analyze`` calls, 16 in
flight) with one priority for everything.

A side measurement (``Analyzer`` called directly, no queue) shows what two threads computing at
once cost on two cores: /find's two text calls timed in one thread while another thread runs BLIP
caption batches, i.e. what "a second worker plus a lock per model role" would give the text jobs.

Real-size models are the random-weight stand-ins of :mod:`bench.common` (captions forced to 20 tokens).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.common import (
    DEFAULT_MODELS_DIR,
    RESULTS,
    bench_photos,
    ensure_real_size_models,
    fmt_s,
    header_lines,
    load_average,
    load_real_size_analyzer,
    machine_info,
    percentile,
    rss_gib,
    write_report,
)
from bot.config import QueueSettings
from bot.imaging import decode_image

# bot.inference (torch) is imported inside the functions: the decode sandbox starts its processes
# with "spawn", which re-imports this module in each child before it lowers its address-space limit
# (images.decode_memory_mb); torch's mappings alone would then leave the decoder no room.

FIND_QUERIES = ("a dog on a beach", "birthday cake", "red car at night", "sunset over mountains", "a cat asleep")
FAST_RATE_PER_S = 0.5


@dataclass(frozen=True)
class Config:
    key: str
    title: str
    background_batch_size: int
    preempt: bool
    prioritised: bool = True


# In the order they run: the defaults first (a clean RSS figure), the old behaviour last.
CONFIGS = (
    Config("preempt-b4", "**priorities + preemption between layers, background batch 4 (the defaults)**", 4, True),
    Config("preempt-b2", "priorities + preemption between layers, background batch 2", 2, True),
    Config("preempt-b8", "priorities + preemption between layers, background batch 8", 8, True),
    Config("boundary-b2", "priorities, batch-boundary only (`preempt_background = false`), background batch 2",
           2, False),
    Config("boundary-b8", "priorities, batch-boundary only (`preempt_background = false`), background batch 8",
           8, False),
    Config("before", "before: one FIFO, indexing as full analyses (no tiers, no priorities)", 8, False, False),
)


@dataclass
class Run:
    config: Config
    find: list[float] = field(default_factory=list)
    analyze: list[float] = field(default_factory=list)
    captions: int = 0
    fast: int = 0
    full_background: int = 0
    seconds: float = 0.0
    preemptions: int = 0
    load_start: str = ""
    load_end: str = ""
    errors: dict[str, int] = field(default_factory=dict)
    caption_batch_mean: float = 0.0
    fast_latency: list[float] = field(default_factory=list)
    rss: tuple[float, float] = (0.0, 0.0)


async def run_config(analyzer: Any, photos: list[bytes], config: Config, *, seconds: float, seed: int) -> Run:
    from bot.inference import InferenceQueue, Priority

    settings = QueueSettings(
        max_batch_size=16, max_wait_ms=10, max_queued=256, job_timeout_s=600,
        background_batch_size=config.background_batch_size, preempt_background=config.preempt,
    )
    decoded = [decode_image(data) for data in photos]
    result = Run(config, load_start=load_average())
    rng = random.Random(seed)
    async with InferenceQueue(analyzer, settings) as queue:
        # Warm-up: every job kind once, so no first-call costs land in the measured window.
        await queue.analyze(photos[0])
        _, first = await queue.analyze_fast(photos[1])
        await queue.caption(first)
        await asyncio.gather(queue.embed_texts(["warm"]), queue.clip_texts(["warm"]))
        stop = asyncio.Event()
        measuring = False
        background = Priority.BACKGROUND if config.prioritised else Priority.INTERACTIVE

        async def caption_feeder(index: int) -> None:
            while not stop.is_set():
                await queue.caption(decoded[index % len(decoded)], priority=background)
                result.captions += 1
                index += 1

        async def full_feeder(index: int) -> None:  # the "before" indexing: whole analyses
            while not stop.is_set():
                await queue.analyze(photos[index % len(photos)], priority=background)
                result.full_background += 1
                index += 1

        async def first_look(data: bytes) -> None:
            t0 = time.perf_counter()
            await queue.analyze_fast(data, priority=background)
            result.fast += 1
            if measuring:
                result.fast_latency.append(time.perf_counter() - t0)

        async def fast_arrivals() -> None:
            pending: set[asyncio.Task] = set()
            index = 0
            while not stop.is_set():
                task = asyncio.create_task(first_look(photos[index % len(photos)]))
                pending.add(task)
                task.add_done_callback(pending.discard)
                index += 1
                await asyncio.sleep(rng.expovariate(FAST_RATE_PER_S))
            await asyncio.gather(*pending, return_exceptions=True)

        if config.prioritised:
            feeders = [asyncio.create_task(caption_feeder(i)) for i in range(2 * config.background_batch_size)]
            feeders.append(asyncio.create_task(fast_arrivals()))
        else:
            feeders = [asyncio.create_task(full_feeder(i)) for i in range(16)]
        await asyncio.sleep(min(10.0, seconds / 5))  # let the background lane fill up first
        before = queue.metrics.snapshot()
        captions_before, fast_before = result.captions, result.fast
        measuring = True
        started = time.perf_counter()
        round_ = 0
        while time.perf_counter() - started < seconds:
            await asyncio.sleep(rng.uniform(0.3, 1.5))
            query = FIND_QUERIES[round_ % len(FIND_QUERIES)]
            t0 = time.perf_counter()
            await asyncio.gather(queue.embed_texts([query]), queue.clip_texts([query]))
            result.find.append(time.perf_counter() - t0)
            if round_ % 2:
                await asyncio.sleep(rng.uniform(0.3, 1.5))
                t0 = time.perf_counter()
                await queue.analyze(photos[(round_ // 2) % len(photos)], filename="fresh.jpg")
                result.analyze.append(time.perf_counter() - t0)
            round_ += 1
        result.seconds = time.perf_counter() - started
        measuring = False
        after = queue.metrics.snapshot()
        result.captions -= captions_before
        result.fast -= fast_before
        stop.set()
        outcomes = await asyncio.gather(*feeders, return_exceptions=True)
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                result.errors[type(outcome).__name__] = result.errors.get(type(outcome).__name__, 0) + 1
    result.preemptions = after["preemptions"] - before["preemptions"]
    caption_batches = after["batch_size"].get("caption", {})
    result.caption_batch_mean = caption_batches.get("mean") or 0.0
    result.load_end = load_average()
    result.rss = rss_gib()
    return result


def side_by_side(analyzer: Any, photos: list[bytes], *, batch: int, samples: int, seed: int) -> dict[str, Any]:
    """/find's two text calls in this thread while another thread runs BLIP caption batches, no turn."""
    rng = random.Random(seed)
    prepared = [analyzer.prepare(decode_image(photos[i % len(photos)]), "caption") for i in range(batch)]

    def find() -> float:
        t0 = time.perf_counter()
        analyzer.embed_texts(["a dog on a beach"])
        analyzer.clip_texts(["a dog on a beach"])
        return time.perf_counter() - t0

    idle = [find() for _ in range(samples)]
    stop = threading.Event()
    batches = 0
    # "A lock per model role": the caption thread embeds its captions with the same MiniLM, whose fast
    # tokenizer must not be entered from two threads at once; BLIP itself needs no lock here.
    embedder_lock = threading.Lock()
    unlocked_embed = analyzer.embedder.embed

    def locked_embed(texts: Any) -> Any:
        with embedder_lock:
            return unlocked_embed(texts)

    analyzer.embedder.embed = locked_embed

    def captions() -> None:
        nonlocal batches
        while not stop.is_set():
            analyzer.caption(prepared)
            batches += 1

    thread = threading.Thread(target=captions, daemon=True)
    thread.start()
    time.sleep(2.0)
    busy = []
    started = time.perf_counter()
    for _ in range(samples):
        time.sleep(rng.uniform(0.1, 0.6))
        busy.append(find())
    stop.set()
    thread.join()
    del analyzer.embedder.embed  # back to the class's method
    elapsed = time.perf_counter() - started
    return {"idle": idle, "busy": busy, "batch": batch, "caption_batches_during": batches, "seconds": elapsed}


# ----------------------------------------------------------------------------- report


def _stats(values: list[float]) -> str:
    if not values:
        return "— | — | — | 0"
    p50, p95 = percentile(values, 0.5), percentile(values, 0.95)
    return f"{fmt_s(p50)} | {fmt_s(p95)} | {fmt_s(max(values))} | {len(values)}"


def report(info: dict[str, Any], idle: Run, runs: list[Run], side: dict[str, Any] | None, *, models: str,
           elapsed: float, rss: float) -> list[str]:
    lines = header_lines(
        "Interactive latency under a saturated background lane, on the CPU",
        info,
        [
            f"- produced by `python -m bench.bench_priority` in {elapsed / 60:.1f} min; models: {models}",
            f"- RSS after all runs: {rss:.2f} GiB",
            "- queue settings in every row: max_batch_size 16, max_wait_ms 10 (the defaults), decode_workers 2, "
            "max_queued 256; the row says background_batch_size and preempt_background",
        ],
        noise_note="each configuration ran once; p95 over a few dozen probes, so read differences under ~20 % "
                   "as noise; the load average at each row's start and end is given",
    )
    targets = "targets: /find p95 ≤ 1 s, interactive analyze p95 ≤ 3 s, while the background lane is saturated"
    lines += [
        "## Probes while the background lane is saturated",
        "",
        f"End to end, call to result; {targets}. *Fast tier*: a new picture's first look (``analyze_fast``) "
        "arriving at 0.5/s while the caption tier is saturated. *Background done* counts what the background "
        "feeders completed in the measured window (captions, fast-tier records; *before*: full analyses). "
        "*RSS / peak so far*: this process after the row (the peak is cumulative over the rows run before it). "
        "The probe loop is sequential, so after a probe that waited for a background batch to end, the next "
        "one lands early in the next batch: the batch-boundary rows' p50s are close to their p95s.",
        "",
        "| configuration | /find p50 | /find p95 | /find max | n | analyze p50 | analyze p95 | analyze max | n "
        "| fast tier p50 / p95 (n) | background done | mean caption batch | preemptions | RSS / peak so far "
        "| load avg start → end |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for run in [idle, *runs]:
        if run.config.key == "idle":
            done = "— (idle)"
        elif run.config.prioritised:
            done = (f"{run.captions} captions ({run.captions / run.seconds:.2f}/s) + {run.fast} fast "
                    f"in {run.seconds:.0f} s")
        else:
            done = f"{run.full_background} full ({run.full_background / run.seconds:.2f}/s) in {run.seconds:.0f} s"
        errors = f" (errors: {run.errors})" if run.errors else ""
        fast = (f"{fmt_s(percentile(run.fast_latency, 0.5))} / {fmt_s(percentile(run.fast_latency, 0.95))} "
                f"({len(run.fast_latency)})" if run.fast_latency else "—")
        rss = f"{run.rss[0]:.2f} / {run.rss[1]:.2f} GiB" if run.rss[0] else "—"
        lines.append(
            f"| {run.config.title}{errors} | {_stats(run.find)} | {_stats(run.analyze)} | {fast} | {done} | "
            f"{f'{run.caption_batch_mean:.1f}' if run.captions else '—'} | {run.preemptions} | {rss} | "
            f"{run.load_start} → {run.load_end} |"
        )
    if side is not None:
        lines += [
            "",
            "## Two threads computing at once (no model turn), Analyzer called directly",
            "",
            f"/find's `embed_texts` + `clip_texts` in one thread while another thread runs BLIP caption batches of "
            f"{side['batch']} back to back ({side['caption_batches_during']} batches in {side['seconds']:.0f} s): "
            "what a second worker with a lock per model role would give a /find query on these two cores. An "
            "interactive *analysis* under that design waits for BLIP's lock, i.e. for the background caption "
            "batch to end, as in the batch-boundary rows above.",
            "",
            "| /find vectors | p50 | p95 | max | n |",
            "| --- | --- | --- | --- | --- |",
            f"| models idle | {_stats(side['idle'])} |",
            f"| BLIP running in another thread | {_stats(side['busy'])} |",
        ]
    return lines


# ----------------------------------------------------------------------------- main


async def idle_run(analyzer: Any, photos: list[bytes], *, rounds: int, seed: int) -> Run:
    from bot.inference import InferenceQueue

    result = Run(Config("idle", "idle models (reference)", 8, True), load_start=load_average())
    rng = random.Random(seed)
    async with InferenceQueue(analyzer, QueueSettings(max_batch_size=16, max_wait_ms=10)) as queue:
        await queue.analyze(photos[0])
        await asyncio.gather(queue.embed_texts(["warm"]), queue.clip_texts(["warm"]))
        for round_ in range(rounds):
            await asyncio.sleep(rng.uniform(0.05, 0.2))
            t0 = time.perf_counter()
            query = FIND_QUERIES[round_ % len(FIND_QUERIES)]
            await asyncio.gather(queue.embed_texts([query]), queue.clip_texts([query]))
            result.find.append(time.perf_counter() - t0)
            if round_ % 2:
                t0 = time.perf_counter()
                await queue.analyze(photos[round_ % len(photos)])
                result.analyze.append(time.perf_counter() - t0)
    result.load_end = load_average()
    result.rss = rss_gib()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="tiny stand-ins, short runs (a smoke test)")
    parser.add_argument("--seconds", type=float, default=90.0, help="measured window per configuration")
    parser.add_argument("--configs", default=",".join(c.key for c in CONFIGS), help="comma-separated keys")
    parser.add_argument("--models-dir", type=Path, default=DEFAULT_MODELS_DIR)
    parser.add_argument("--out", type=Path, help="default bench/results/priority_cpu.md (--quick: a temp file)")
    parser.add_argument("--seed", type=int, default=13)
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    started = time.perf_counter()
    info = machine_info()
    photos = bench_photos()
    wanted = [c for c in CONFIGS if c.key in args.configs.split(",")]
    with tempfile.TemporaryDirectory() as folder:
        if args.quick:
            from bot.config import load_settings
            from bot.models.tiny import write_tiny_models
            from bot.pipeline import Analyzer

            analyzer = Analyzer.from_settings(load_settings(write_tiny_models(Path(folder)), environ={}))
            models, seconds = "tiny stand-ins (smoke run: the numbers mean nothing)", min(args.seconds, 3.0)
        else:
            ensure_real_size_models(args.models_dir)
            analyzer = load_real_size_analyzer(args.models_dir)
            models, seconds = "real-size random-weight stand-ins, fp32, SDPA (the default set-up)", args.seconds
        idle = asyncio.run(idle_run(analyzer, photos, rounds=6 if args.quick else 20, seed=args.seed))
        print("idle", _stats(idle.find), _stats(idle.analyze), flush=True)
        runs = []
        for config in wanted:
            run = asyncio.run(run_config(analyzer, photos, config, seconds=seconds, seed=args.seed))
            print(config.key, "find", _stats(run.find), "analyze", _stats(run.analyze), "captions", run.captions,
                  "fast", run.fast, "full", run.full_background, "preemptions", run.preemptions,
                  run.load_start, "->", run.load_end, flush=True)
            runs.append(run)
        side = side_by_side(analyzer, photos, batch=4, samples=6 if args.quick else 20, seed=args.seed)
        print("side", _stats(side["idle"]), _stats(side["busy"]), flush=True)
    out = args.out or (Path(tempfile.gettempdir()) / "priority_cpu_quick.md" if args.quick
                       else RESULTS / "priority_cpu.md")
    write_report(out, report(info, idle, runs, side, models=models, elapsed=time.perf_counter() - started,
                             rss=rss_gib()[0]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
