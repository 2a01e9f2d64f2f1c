"""Throughput and latency through the InferenceQueue vs the naive one-image-per-call path, plus a burst.

    python -m bench.bench_queue            # ~4-6 min on 2 cores; writes bench/results/queue_cpu.md
    python -m bench.bench_queue --quick    # tiny stand-ins only (seconds)

Scenarios, in one run on the same machine:

1. **closed burst** — N image messages arrive at once. *Naive*: the model kept loaded, each image
   decoded and analysed alone, one after another (what a bot without a queue does). *Queue*: N
   concurrent ``await queue.analyze(bytes)``. Throughput = N / time to the last result; latency =
   each message's arrival → result.
2. **open burst** — 50 image messages per second for a few seconds, each one a coroutine calling
   ``queue.analyze``; every message must end as a result or a typed refusal (QueueBusy, JobTimeout):
   the counts must add up to what was sent (none lost).

Real-size models are the random-weight stand-ins of :mod:`bench.common` (captions forced to 20 tokens).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from collections import Counter
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
from bot.imaging import ImageRejected, decode_image
from bot.inference import InferenceError, InferenceQueue


def _cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


def latency_stats(latencies: list[float], total: float, count: int, cpu: float) -> dict[str, float]:
    return {
        "cpu_s_per_image": cpu / count if count else float("nan"),
        "images": count,
        "total_s": total,
        "images_per_s": count / total if total > 0 else float("nan"),
        "s_per_image": total / count if count else float("nan"),
        "p50": percentile(latencies, 0.5),
        "p95": percentile(latencies, 0.95),
        "max": max(latencies) if latencies else float("nan"),
    }


def naive(analyzer: Any, photos: list[bytes], count: int) -> dict[str, float]:
    """One image per analyze() call, in arrival order, the model kept loaded."""
    analyzer.analyze([decode_image(photos[0])])  # warm-up, like the queue's
    started, cpu = time.perf_counter(), _cpu_seconds()
    latencies = []
    for index in range(count):
        analyzer.analyze([decode_image(photos[index % len(photos)])])
        latencies.append(time.perf_counter() - started)  # every message arrived at `started`
    return latency_stats(latencies, time.perf_counter() - started, count, _cpu_seconds() - cpu)


async def queued(
    analyzer: Any, photos: list[bytes], count: int, settings: QueueSettings, *, warmup: int = 1
) -> dict[str, Any]:
    """``count`` messages at once through the queue, after ``warmup`` untimed ones (sent together)."""
    async with InferenceQueue(analyzer, settings) as queue:
        # At least one warm-up job per decoder process: each starts on first use (~1 s to import here).
        warmup = max(warmup, settings.decode_workers)
        await asyncio.gather(*(queue.analyze(photos[i % len(photos)]) for i in range(warmup)))
        warm = queue.metrics.snapshot()["batch_size"]["image"]["count"]
        started, cpu = time.perf_counter(), _cpu_seconds()

        async def one(index: int) -> float:
            await queue.analyze(photos[index % len(photos)], filename=f"{index}.jpg")
            return time.perf_counter() - started

        latencies = await asyncio.gather(*(one(i) for i in range(count)))
        total, cpu = time.perf_counter() - started, _cpu_seconds() - cpu
        snapshot = queue.metrics.snapshot()
    result: dict[str, Any] = latency_stats(list(latencies), total, count, cpu)
    result["warmup_batches"] = warm
    result["batches"] = snapshot["batch_size"]["image"]
    result["stages"] = {k: v for k, v in snapshot["stage_seconds"].items() if v["count"]}
    return result


async def burst(
    analyzer: Any, photos: list[bytes], *, rate: float, seconds: float, settings: QueueSettings
) -> dict[str, Any]:
    """``rate`` messages/s for ``seconds``; count how each one ended."""
    sent = round(rate * seconds)
    outcomes: Counter[str] = Counter()
    latencies: list[float] = []
    async with InferenceQueue(analyzer, settings) as queue:
        # warm-up: the models, and every decoder process (each starts on first use)
        await asyncio.gather(*(queue.analyze(photos[0]) for _ in range(settings.decode_workers)))
        started = time.perf_counter()

        async def message(index: int) -> None:
            arrived = time.perf_counter()
            try:
                await queue.analyze(photos[index % len(photos)], filename=f"{index}.jpg")
            except InferenceError as exc:
                outcomes[type(exc).__name__] += 1
            except ImageRejected:
                outcomes["ImageRejected"] += 1
            except Exception as exc:  # counted, never swallowed silently: "lost" would show here
                outcomes[f"unexpected {type(exc).__name__}"] += 1
            else:
                outcomes["ok"] += 1
                latencies.append(time.perf_counter() - arrived)

        tasks = []
        for index in range(sent):
            delay = started + index / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(message(index)))
        arrivals_done = time.perf_counter() - started
        peak_waiting = queue.metrics.snapshot()["waiting"]
        await asyncio.gather(*tasks)
        total = time.perf_counter() - started
        snapshot = queue.metrics.snapshot()
    settled = sum(outcomes.values())
    return {
        "sent": sent,
        "rate": rate,
        "arrival_s": arrivals_done,
        "settled": settled,
        "lost": sent - settled,
        "outcomes": dict(outcomes),
        "total_s": total,
        "waiting_when_arrivals_ended": peak_waiting,
        "ok_latency_p50": percentile(latencies, 0.5),
        "ok_latency_p95": percentile(latencies, 0.95),
        "batches": snapshot["batch_size"].get("image", {}),
        "busy_counted": snapshot["busy"],
    }


# ----------------------------------------------------------------------------- report


def _row(label: str, r: dict[str, Any]) -> str:
    return (
        f"| {label} | {r['images']} | {r['total_s']:.1f} s | {r['images_per_s']:.2f} | {fmt_s(r['s_per_image'])} "
        f"| {r['cpu_s_per_image']:.2f} | {fmt_s(r['p50'])} | {fmt_s(r['p95'])} | {fmt_s(r['max'])} |"
    )


def _batches(r: dict[str, Any]) -> str:
    b = r.get("batches") or {}
    if not b:
        return "n/a"
    sizes = ", ".join(f"≤{le}: {n}" for le, n in b.get("histogram", {}).items() if le != "+Inf")
    return f"{b['count']} batches (one is the warm-up job), mean size {b['mean']:.1f}, max {b['max']:.0f}; " \
        f"cumulative counts {sizes}"


def report(info: dict[str, Any], results: dict[str, Any], elapsed: float) -> list[str]:
    lines = header_lines(
        "Inference queue vs one image per call, on the CPU",
        info,
        [f"- produced by `python -m bench.bench_queue` in {elapsed / 60:.1f} min"],
        noise_note="each scenario ran once; CPU-seconds per image are less sensitive to other load than wall times",
    )
    for data in results.values():
        settings = data["settings"]
        lines += [
            f"## {data['title']}",
            "",
            f"Queue settings: max_batch_size {settings['max_batch_size']}, max_wait_ms {settings['max_wait_ms']:g}, "
            f"max_queued {settings['max_queued']}, job_timeout_s {settings['job_timeout_s']:g}, decode_workers "
            f"{settings['decode_workers']}. {data.get('note', '')}",
            "",
            "### Closed burst: every message arrives at once",
            "",
            "| path | images | total | images/s | s per image | CPU-s per image | p50 latency | p95 latency "
            "| max latency |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        if "naive" in data:
            lines.append(_row("naive: analyze() one image per call, model kept", data["naive"]))
        lines.append(_row("InferenceQueue", data["queue"]))
        lines.append("")
        if "naive" in data:
            speedup = data["naive"]["total_s"] / data["queue"]["total_s"]
            lines.append(f"Queue throughput vs naive: **{speedup:.2f}x**. Queue batches: {_batches(data['queue'])}.")
        stages = data["queue"].get("stages", {})
        if stages:
            parts = [f"{stage} {fmt_s(v['mean'])}" for stage, v in stages.items() if v.get("mean") is not None]
            lines.append(f"Mean stage times in the queue run (per job for decode/queue_wait/latency, per batch "
                         f"for predict and roles): {', '.join(parts)}.")
        b = data.get("burst")
        if b:
            lines += [
                "",
                f"### Open burst: {b['rate']:g} image messages/s for {b['arrival_s']:.1f} s",
                "",
                f"- sent {b['sent']}, settled {b['settled']}, **lost {b['lost']}**",
                "- outcomes: " + ", ".join(f"{k} {v}" for k, v in sorted(b["outcomes"].items())),
                f"- jobs holding a slot when the arrivals ended: {b['waiting_when_arrivals_ended']}; "
                f"everything settled after {b['total_s']:.1f} s",
                f"- latency of the analysed ones: p50 {fmt_s(b['ok_latency_p50'])}, p95 {fmt_s(b['ok_latency_p95'])}",
                f"- batches: {_batches(b)}",
            ]
        lines.append("")
    return lines


# ----------------------------------------------------------------------------- main


def _settings_dict(settings: QueueSettings) -> dict[str, Any]:
    return settings.model_dump()


async def scenario(analyzer: Any, photos: list[bytes], *, count: int, settings: QueueSettings,
                   burst_settings: QueueSettings, burst_seconds: float, with_naive: bool = True) -> dict[str, Any]:
    result: dict[str, Any] = {"settings": _settings_dict(settings)}
    if with_naive:
        result["naive"] = await asyncio.to_thread(naive, analyzer, photos, count)
        print("naive", json.dumps(result["naive"]), load_average(), flush=True)
    result["queue"] = await queued(analyzer, photos, count, settings)
    print("queue", json.dumps(result["queue"]), load_average(), flush=True)
    if burst_seconds > 0:
        result["burst"] = await burst(analyzer, photos, rate=50.0, seconds=burst_seconds, settings=burst_settings)
        result["burst"]["settings"] = _settings_dict(burst_settings)
        print("burst", json.dumps(result["burst"]), load_average(), flush=True)
    return result


async def amain(args: argparse.Namespace) -> dict[str, Any]:
    from bot.config import load_settings
    from bot.models.tiny import write_tiny_models
    from bot.pipeline import Analyzer

    photos = bench_photos()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as folder:
        tiny = Analyzer.from_settings(load_settings(write_tiny_models(Path(folder)), environ={}))
        default = QueueSettings()
        results["tiny"] = await scenario(
            tiny, photos, count=64, settings=QueueSettings(max_batch_size=16, max_wait_ms=10),
            burst_settings=default, burst_seconds=3.0,
        )
        results["tiny"]["title"] = "Tiny stand-in models with the text reader (the default set-up's pipeline)"
        results["tiny"]["note"] = (
            "The open burst uses the default queue settings (max_queued 256). The reader is real-size (RapidOCR's "
            "own weights) and reads one picture at a time, so beside tiny models it is most of the cost."
        )
        tiny.reader = None  # the same models without it: the queue's own overhead, comparable with older runs
        results["tiny_no_reader"] = await scenario(
            tiny, photos, count=64, settings=QueueSettings(max_batch_size=16, max_wait_ms=10),
            burst_settings=default, burst_seconds=3.0,
        )
        results["tiny_no_reader"]["title"] = (
            "Tiny stand-in models, text reader off (pipeline overhead: decoding, batching, handoff)"
        )
        results["tiny_no_reader"]["note"] = "`models.ocr.enabled = false`; otherwise as above."
        del tiny
    if args.quick:
        return results

    ensure_real_size_models(args.models_dir)
    real = load_real_size_analyzer(args.models_dir)
    real.analyze([decode_image(photos[0])])
    rss = rss_gib()[0]
    # On a CPU a batch takes seconds, so waiting 100 ms for company costs little and keeps the first
    # message of a burst from running alone; max_queued is sized to what finishes within the timeout.
    settings = QueueSettings(max_batch_size=8, max_wait_ms=100)
    burst_settings = QueueSettings(max_batch_size=8, max_wait_ms=100, max_queued=16, job_timeout_s=120)
    results["real"] = await scenario(
        real, photos, count=args.images, settings=settings, burst_settings=burst_settings, burst_seconds=3.0
    )
    results["real"]["title"] = "Real-size models, fp32, SDPA (the default set-up)"
    rate = results["real"]["queue"]["images_per_s"]
    results["real"]["note"] = (
        f"RSS with the models loaded and run once: {rss:.2f} GiB. The open burst uses max_queued 16: at "
        f"{rate:.2f} images/s the default 256-deep queue would hold {256 / rate / 60:.0f} min of work, far past "
        "job_timeout_s, so on a CPU host max_queued should be about what finishes within the timeout."
    )
    from bot.models.captioner import BlipCaptioner

    assert isinstance(real.captioner, BlipCaptioner)
    real.captioner._quantize_int8()  # the opt-in cpu_int8 path, on the same loaded model
    results["real_int8"] = await scenario(
        real, photos, count=args.images, settings=settings, burst_settings=burst_settings, burst_seconds=0.0
    )
    results["real_int8"]["title"] = "Real-size models, captioner with dynamic int8 Linear layers (opt-in cpu_int8)"
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="tiny stand-ins only")
    parser.add_argument("--images", type=int, default=16, help="images in the real-size closed burst")
    parser.add_argument("--models-dir", type=Path, default=DEFAULT_MODELS_DIR)
    parser.add_argument("--out", type=Path, default=RESULTS / "queue_cpu.md")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    started = time.perf_counter()
    info = machine_info()
    results = asyncio.run(amain(args))
    write_report(args.out, report(info, results, time.perf_counter() - started))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
