"""The inference queue on a GPU: issue 14's figures (target: ≥ 2,000 img/s on one H200), through the bot's code.

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
5. **memory** — peak GPU memory allocated / reserved by PyTorch across all of the above;
6. **caption decoder** (after the memory figures, so it does not change them) — the static-cache and
   CUDA-graph decoders of ``models.captioner.decoder`` (bot/models/static_decode.py) against
   transformers' ``generate`` on the same BLIP checkpoint: token equivalence on ``--decoder-images``
   distinct pictures (crops and mirrors of the bench photos) in float32 and bfloat16, and decode
   time per token at each batch size with captions forced to 20 tokens. Without CUDA the graph
   decoder is not measured (it falls back to the static loop).

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
    CAPTION_TOKENS,
    DEFAULT_MODELS_DIR,
    REAL_BLIP,
    REPORT_DATE,
    RESULTS,
    bench_photos,
    ensure_real_size_models,
    fmt_s,
    force_caption_length,
    load_real_size_analyzer,
    machine_info,
    percentile,
    timed,
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
    # One reader per decode thread (the reader runs there on CUDA: models.ocr.read_in = "auto").
    readers = args.decode_workers or min(64, os.cpu_count() or 2)
    return load_real_size_analyzer(args.models_dir, device=torch.device(args.device), dtype=dtype, readers=readers)


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


def decoder_pictures(photos: list[bytes], count: int) -> list[Any]:
    """``count`` distinct pictures: seeded crops (60-100 % of each side) of the bench photos, every other
    round mirrored, so equal captions are the model's doing, not repeated inputs."""
    import random

    from PIL import ImageOps

    rng = random.Random(0)
    decoded = [decode_image(data).image for data in photos]
    pictures = []
    for index in range(count):
        image = decoded[index % len(decoded)]
        width, height = image.size
        w, h = int(width * rng.uniform(0.6, 1.0)), int(height * rng.uniform(0.6, 1.0))
        left, top = rng.randint(0, width - w), rng.randint(0, height - h)
        picture = image.crop((left, top, left + w, top + h))
        pictures.append(ImageOps.mirror(picture) if (index // len(decoded)) % 2 else picture)
    return pictures


def _decoders(device: str) -> tuple[str, ...]:
    return ("static", "graphs") if device == "cuda" else ("static",)


def _rows(ids: Any, pad: int) -> list[tuple[int, ...]]:
    """Token rows without the trailing pad (a batch's length depends on its longest caption)."""
    rows = []
    for row in ids.tolist():
        while row and row[-1] == pad:
            row.pop()
        rows.append(tuple(row))
    return rows


def decoder_check(blip_path: Path, device: str, photos: list[bytes], *, images: int, batch: int,
                  timing_batches: tuple[int, ...], reps: int) -> dict[str, Any]:
    """Static / graph decoders vs ``generate``: equivalence (float32, bfloat16) and per-token time.

    Equivalence runs each checkpoint's own generation settings (captions end where the model says);
    timing forces ``max_new_tokens`` tokens (``min_new_tokens`` on the *text decoder's* generation
    config, the one BLIP's generate reads) so every decoder does the same work.
    """
    import torch

    from bot.models.captioner import BlipCaptioner

    pictures = decoder_pictures(photos, images)
    timing_dtype = torch.bfloat16 if device == "cuda" else torch.float32
    batch = min(batch, images)
    result: dict[str, Any] = {"images": images, "batch": batch, "equivalence": [], "timing": [],
                              "decoders": list(_decoders(device)), "tokens": CAPTION_TOKENS}
    for dtype in (torch.float32, torch.bfloat16):
        name = str(dtype).removeprefix("torch.")
        captioner = BlipCaptioner(blip_path, model_id="bench-blip", device=torch.device(device), dtype=dtype,
                                  max_new_tokens=CAPTION_TOKENS)
        pad = captioner.model.config.text_config.pad_token_id
        pixels = captioner.preprocess(pictures)
        chunks = [pixels[start:start + batch] for start in range(0, images, batch)]
        reference = [row for chunk in chunks for row in _rows(captioner.generate_ids(chunk, decoder="generate"), pad)]
        for decoder in _decoders(device):
            got = [row for chunk in chunks for row in _rows(captioner.generate_ids(chunk, decoder=decoder), pad)]
            differing = sum(a != b for a, b in zip(reference, got, strict=True))
            row = {"dtype": name, "decoder": decoder, "images": images, "identical": differing == 0,
                   "differing": differing, "distinct_captions": len(set(reference))}
            result["equivalence"].append(row)
            print("decoder-equivalence", json.dumps(row), flush=True)
        if dtype == timing_dtype:
            result["timing"] = decoder_timing(captioner, pixels, device, timing_batches, reps)
        del captioner, pixels, chunks
        if device == "cuda":
            torch.cuda.empty_cache()
    return result


def decoder_timing(captioner: Any, pixels: Any, device: str, batches: tuple[int, ...], reps: int
                   ) -> list[dict[str, Any]]:
    """Per-token decode time (vision tower subtracted) for each decoder at each batch size."""
    import torch

    tokens = captioner.max_new_tokens
    force_caption_length(captioner, tokens)  # every caption: `tokens` tokens
    rows = []
    for batch in batches:
        items = pixels[(torch.arange(batch) % pixels.shape[0])].to(captioner.device)

        def best(run: Any, items: Any = items) -> float:
            # One warm-up at this shape (kernel selection; graph capture for the graph decoder), then the
            # fastest of `reps`; each call ends synchronised so its time is the device's.
            _sync(device)
            return min(timed(lambda: (run(items), _sync(device)), reps=reps))

        with torch.inference_mode():
            vision = best(lambda px: captioner.model.vision_model(pixel_values=px.to(captioner.dtype)))
        row: dict[str, Any] = {"batch": batch, "vision_s": vision}
        for decoder in ("generate", *_decoders(device)):
            total = best(lambda px, decoder=decoder: captioner.generate_ids(px, decoder=decoder))
            row[decoder] = {"s": total, "ms_per_token": max(total - vision, 0.0) / tokens * 1000}
        rows.append(row)
        print("decoder-timing", json.dumps(row), flush=True)
    captioner.model.text_decoder.generation_config.min_new_tokens = None
    return rows


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
    if results.get("decoder"):
        lines += decoder_report(results["decoder"], args.device)
    return lines


def decoder_report(decoder: dict[str, Any], device: str) -> list[str]:
    """The caption-decoder section: equivalence table, then per-token times."""
    names = decoder["decoders"]
    lines = [
        "",
        "## Caption decoder: static KV cache / CUDA graphs vs transformers' generate",
        "",
        f"Same BLIP checkpoint, {decoder['images']} distinct pictures in batches of {decoder['batch']}, greedy. "
        "Tokens identical means every caption's token ids equal generate's.",
        "",
        "| dtype | decoder | captions | tokens identical | differing captions | distinct captions (generate) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for row in decoder["equivalence"]:
        lines.append(f"| {row['dtype']} | {row['decoder']} | {row['images']} | "
                     f"{'**yes**' if row['identical'] else '**no**'} | {row['differing']} | "
                     f"{row['distinct_captions']} |")
    if device != "cuda":
        lines += ["", "- graphs: not measured (no CUDA here; `decoder = \"graphs\"` runs the static loop on a CPU)"]
    lines += [
        "",
        f"Decode time per token ({decoder['tokens']} tokens forced, vision tower time subtracted; "
        f"{'bfloat16' if device == 'cuda' else 'float32'}):",
        "",
        "| dtype | batch | generate ms/token | " + " | ".join(f"{n} ms/token" for n in names)
        + " | " + " | ".join(f"{n} speed-up" for n in names) + " |",
        "| --- | --- | --- | " + " | ".join("---" for _ in names) + " | " + " | ".join("---" for _ in names) + " |",
    ]
    dtype = "bfloat16" if device == "cuda" else "float32"
    for row in decoder["timing"]:
        base = row["generate"]["ms_per_token"]
        times = " | ".join(f"{row[n]['ms_per_token']:.2f}" for n in names)
        ups = " | ".join(f"{base / row[n]['ms_per_token']:.1f}x" if row[n]["ms_per_token"] > 0 else "—"
                         for n in names)
        lines.append(f"| {dtype} | batch {row['batch']} | {base:.2f} | {times} | {ups} |")
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
        if args.decoder_images:
            from bot.models.tiny import BLIP_DIR

            blip_path = Path(folder) / BLIP_DIR if args.tiny else args.models_dir / REAL_BLIP
            results["decoder"] = decoder_check(
                blip_path, args.device, photos, images=args.decoder_images, batch=args.batch,
                timing_batches=batches, reps=args.reps)
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
    parser.add_argument("--decoder-images", type=int, default=None,
                        help="pictures in the caption-decoder equivalence check (default 512, 16 with --tiny; 0 skips)")
    parser.add_argument("--models-dir", type=Path, default=DEFAULT_MODELS_DIR)
    parser.add_argument("--out", type=Path, default=RESULTS / "queue_gpu.md")
    args = parser.parse_args(argv)
    if args.decoder_images is None:
        args.decoder_images = 16 if args.tiny else 512
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
