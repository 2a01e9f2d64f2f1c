"""The inference queue on a GPU: the issue's H100 figures, measured through the bot's own code.

    python -m bench.bench_gpu                         # on a CUDA machine (~5 min); writes bench/results/queue_gpu.md
    python -m bench.bench_gpu --images 8192 --batch 512
    python -m bench.bench_gpu --device cpu --tiny --out /tmp/gpu-smoke.md   # the same code on tiny CPU models

Models are the real-size random-weight stand-ins of :mod:`bench.common` (BLIP-base with SDPA in the
vision tower and the text decoder, CLIP ViT-B/32, MiniLM, roberta-base sentiment; captions forced to
20 tokens), loaded through the bot's loaders in bf16 on CUDA. Scenarios, one run, same process:

1. **roles** — ``Analyzer.analyze`` on already-prepared images at growing batch sizes: images/s of
   the caption role, the CLIP role and the caption-text roles (where the GPU time goes);
2. **naive** — one image per call, decode included, the model kept loaded (the anchor's 3.36 img/s path);
3. **sustained** — ``--images`` messages submitted at once through ``InferenceQueue`` (decode pool of
   every CPU core, ``--batch`` max batch size; bench_queue's closed burst): images/s for the full
   analysis, per-stage times;
4. **light load** — one image per second (``--light-seconds``): p50 / p95 latency, arrival → result;
5. **memory** — peak GPU memory allocated / reserved by PyTorch across all of the above.

Every number is from the machine named in the report's header; nothing here is a target check.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.bench_queue import queued
from bench.common import (
    DEFAULT_MODELS_DIR,
    REPORT_DATE,
    RESULTS,
    bench_photos,
    ensure_real_size_models,
    fmt_s,
    load_real_size_analyzer,
    machine_info,
    percentile,
    write_report,
)
from bot.config import QueueSettings
from bot.imaging import decode_image
from bot.inference import InferenceQueue

ROLE_BATCHES = (1, 32, 128, 256, 512)


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def gpu_info() -> dict[str, Any]:
    import torch

    if not torch.cuda.is_available():
        return {}
    props = torch.cuda.get_device_properties(0)
    return {
        "name": props.name,
        "memory_gib": round(props.total_memory / 2**30, 1),
        "capability": f"{props.major}.{props.minor}",
        "cuda": torch.version.cuda,
        "bf16": torch.cuda.is_bf16_supported(),
    }


def gpu_memory() -> dict[str, float]:
    import torch

    if not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return {}
    return {
        "allocated_gib": torch.cuda.memory_allocated() / 2**30,
        "peak_allocated_gib": torch.cuda.max_memory_allocated() / 2**30,
        "peak_reserved_gib": torch.cuda.max_memory_reserved() / 2**30,
    }


def load_analyzer(args: argparse.Namespace, folder: Path) -> Any:
    import torch

    if args.tiny:
        from bot.config import load_settings
        from bot.models.tiny import write_tiny_models
        from bot.pipeline import Analyzer

        settings = load_settings(write_tiny_models(folder), environ={})
        models = settings.models.model_copy(update={"device": args.device})
        return Analyzer.from_settings(settings.model_copy(update={"models": models}))
    ensure_real_size_models(args.models_dir)
    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    return load_real_size_analyzer(args.models_dir, device=torch.device(args.device), dtype=dtype)


def roles(analyzer: Any, photos: list[bytes], device: str, batches: tuple[int, ...], reps: int) -> list[dict[str, Any]]:
    """Per-role images/s on prepared images (decode excluded), for each batch size."""
    prepared = [analyzer.prepare(decode_image(data)) for data in photos]
    rows = []
    for batch in batches:
        items = (prepared * (batch // len(prepared) + 1))[:batch]
        analyzer.analyze(items)  # warm-up at this shape (cuBLAS / SDPA kernel selection)
        per_role: dict[str, list[float]] = {"caption": [], "clip": [], "text": [], "total": []}
        for _ in range(reps):
            _sync(device)
            started = time.perf_counter()
            analyzer.analyze(items)
            _sync(device)
            per_role["total"].append(time.perf_counter() - started)
            timings = analyzer.last_timings
            for role in ("caption", "clip", "text"):
                per_role[role].append(float(getattr(timings, role)))
        row = {"batch": batch}
        for role, samples in per_role.items():
            best = min(samples)
            row[role] = {"s": best, "images_per_s": batch / best if best > 0 else float("nan")}
        rows.append(row)
        print("roles", json.dumps(row), flush=True)
    return rows


def naive(analyzer: Any, photos: list[bytes], count: int, device: str) -> dict[str, Any]:
    """Decode + analyze one image per call, in order; latency of each call."""
    analyzer.analyze([decode_image(photos[0])])
    latencies = []
    started = time.perf_counter()
    for index in range(count):
        call = time.perf_counter()
        analyzer.analyze([decode_image(photos[index % len(photos)])])
        _sync(device)
        latencies.append(time.perf_counter() - call)
    total = time.perf_counter() - started
    return {"images": count, "total_s": total, "images_per_s": count / total,
            "p50": percentile(latencies, 0.5), "p95": percentile(latencies, 0.95)}


async def light_load(analyzer: Any, photos: list[bytes], *, rate: float, seconds: float,
                     settings: QueueSettings) -> dict[str, Any]:
    """``rate`` images/s, each awaited on its own: the latency a user sees on a quiet server."""
    latencies: list[float] = []
    async with InferenceQueue(analyzer, settings) as queue:
        await queue.analyze(photos[0])
        begin = time.perf_counter()

        async def message(index: int) -> None:
            arrived = time.perf_counter()
            await queue.analyze(photos[index % len(photos)])
            latencies.append(time.perf_counter() - arrived)

        tasks = []
        for index in range(max(1, round(rate * seconds))):
            delay = begin + index / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(message(index)))
        await asyncio.gather(*tasks)
    return {"images": len(latencies), "rate": rate, "p50": percentile(latencies, 0.5),
            "p95": percentile(latencies, 0.95), "max": max(latencies)}


def report(info: dict[str, Any], gpu: dict[str, Any], args: argparse.Namespace, results: dict[str, Any],
           elapsed: float) -> list[str]:
    where = (f"{gpu['name']} ({gpu['memory_gib']} GiB, compute capability {gpu['capability']}, CUDA "
             f"{gpu['cuda']})" if gpu else "no GPU: CPU run")
    models = "tiny stand-ins (smoke run: the code path, not the figures)" if args.tiny else (
        "real-size random-weight stand-ins (BLIP-base, CLIP ViT-B/32, MiniLM, roberta-base sentiment), captions "
        "forced to 20 tokens")
    lines = [
        "# Inference queue on a GPU: throughput, latency, memory",
        "",
        f"- date: {REPORT_DATE} (run at {datetime.datetime.now().strftime('%H:%M')} local time)",
        f"- device: `{args.device}`; {where}",
        f"- host: {info['nproc']} CPU cores ({info['cpu']}), {info['ram_gib']} GiB RAM; torch {info['torch']}, "
        f"Python {info['python']}",
        f"- models: {models}; dtype {results['dtype']}",
        f"- produced by `python -m bench.bench_gpu {' '.join(results['argv'])}` in {elapsed / 60:.1f} min",
        "",
        "## Roles on prepared images (decode excluded)",
        "",
        "| batch | caption img/s | CLIP img/s | caption-text img/s | all roles img/s |",
        "| --- | --- | --- | --- | --- |",
    ]
    for row in results["roles"]:
        lines.append(f"| {row['batch']} | {row['caption']['images_per_s']:.1f} | {row['clip']['images_per_s']:.1f} "
                     f"| {row['text']['images_per_s']:.1f} | {row['total']['images_per_s']:.1f} |")
    n, s, light = results["naive"], results["sustained"], results["light"]
    batches = s["batches"]
    stages = ", ".join(f"{k} {fmt_s(v['mean'])}" for k, v in s["stages"].items() if v.get("mean") is not None)
    lines += [
        "",
        "## Through the queue (decode of untrusted JPEG bytes included)",
        "",
        "| scenario | images | images/s | p50 latency | p95 latency |",
        "| --- | --- | --- | --- | --- |",
        f"| naive: one image per call, model kept | {n['images']} | {n['images_per_s']:.2f} | {fmt_s(n['p50'])} "
        f"| {fmt_s(n['p95'])} |",
        f"| sustained: all at once, max_batch_size {args.batch}, {results['decode_workers']} decode workers "
        f"| {s['images']} | **{s['images_per_s']:.1f}** | {fmt_s(s['p50'])} | {fmt_s(s['p95'])} |",
        f"| light load: {light['rate']:g} image/s | {light['images']} | — | **{fmt_s(light['p50'])}** "
        f"| {fmt_s(light['p95'])} |",
        "",
        f"- queue vs naive throughput: **{s['images_per_s'] / n['images_per_s']:.1f}x**",
        f"- sustained run's batches: {batches['count']}, mean size {batches['mean']:.1f}, max {batches['max']:.0f} "
        f"(the untimed warm-up of {args.batch} images included)",
        f"- mean stage times in the sustained run, warm-up included (per job for decode/queue_wait/latency, per "
        f"batch for the rest): "
        f"{stages}",
    ]
    memory = results.get("gpu_memory") or {}
    if memory:
        lines += ["", f"- **peak GPU memory**: {memory['peak_allocated_gib']:.2f} GiB allocated, "
                  f"{memory['peak_reserved_gib']:.2f} GiB reserved by PyTorch's caching allocator (all scenarios); "
                  f"{memory['allocated_gib']:.2f} GiB held at the end (the weights)"]
    else:
        lines += ["", "- peak GPU memory: n/a (no GPU in this run)"]
    return lines


async def amain(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    photos = bench_photos()
    with tempfile.TemporaryDirectory() as folder:
        analyzer = load_analyzer(args, Path(folder))
        if args.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        batches = tuple(sorted({b for b in ROLE_BATCHES if b < args.batch} | {args.batch}))
        results: dict[str, Any] = {"dtype": str(getattr(analyzer.captioner, "dtype", "?")).removeprefix("torch.")}
        results["roles"] = roles(analyzer, photos, args.device, batches, reps=args.reps)
        results["naive"] = naive(analyzer, photos, args.naive_images, args.device)
        print("naive", json.dumps(results["naive"]), flush=True)
        workers = args.decode_workers or min(64, os.cpu_count() or 2)
        results["decode_workers"] = workers
        settings = QueueSettings(max_batch_size=args.batch, max_wait_ms=args.max_wait_ms,
                                 max_queued=max(args.images, args.batch) + 16, job_timeout_s=600,
                                 decode_workers=workers)
        # Warmed up with one full batch, so kernel selection for that shape is not timed.
        results["sustained"] = await queued(analyzer, photos, args.images, settings, warmup=args.batch)
        print("sustained", json.dumps(results["sustained"]), flush=True)
        light = QueueSettings(max_batch_size=args.batch, max_wait_ms=2.0, decode_workers=workers)
        results["light"] = await light_load(analyzer, photos, rate=args.light_rate, seconds=args.light_seconds,
                                            settings=light)
        print("light", json.dumps(results["light"]), flush=True)
        results["gpu_memory"] = gpu_memory()
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--tiny", action="store_true", help="tiny stand-in models (a smoke run of this code)")
    parser.add_argument("--images", type=int, default=4096, help="messages in the sustained run")
    parser.add_argument("--batch", type=int, default=256, help="the queue's max_batch_size")
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--decode-workers", type=int, default=0, help="0: one per CPU core (at most 64)")
    parser.add_argument("--naive-images", type=int, default=64)
    parser.add_argument("--light-rate", type=float, default=1.0, help="images/s in the light-load run")
    parser.add_argument("--light-seconds", type=float, default=20.0)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--models-dir", type=Path, default=DEFAULT_MODELS_DIR)
    parser.add_argument("--out", type=Path, default=RESULTS / "queue_gpu.md")
    args = parser.parse_args(argv)
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        parser.exit(2, "bench_gpu: no CUDA GPU here (torch.cuda.is_available() is False); "
                       "use --device cpu --tiny for a smoke run of the same code\n")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    started = time.perf_counter()
    info = machine_info()
    results = asyncio.run(amain(args))
    results["argv"] = sys.argv[1:] if argv is None else argv
    write_report(args.out, report(info, gpu_info(), args, results, time.perf_counter() - started))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
