"""A burst of posted pictures on a small CPU host, end to end through the Discord protocol peer.

``python -m bench.bench_burst`` writes ``bench/results/burst_cpu.md``.

The production bot (``ImageBot`` + ``Services``: the ingest backlog, the inference queue, the decoder
sandbox, embedded Chroma) on the real-size random-weight stand-ins of bench/common.py, talking to the
local Discord peer of tests/harness (the same one the tests use) and the local Ollama peer. 50 image
messages per second for 3 seconds from 10 posters in 3 channels; meanwhile, every few seconds, a
``/find`` and a mention with a fresh picture (interactive work) measure what people who ask something
wait while the backlog drains. Reported: pictures findable (first look stored, 👀) and complete
(caption stored), time-to-findable and time-to-caption from the post, load replies to posters (must
be 0), and interactive latencies.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import (
    RESULTS,
    bench_photos,
    ensure_real_size_models,
    fmt_s,
    header_lines,
    load_real_size_analyzer,
    machine_info,
    median,
    percentile,
    rss_gib,
    write_report,
)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    from bot.client import ImageBot
    from bot.config import Settings
    from bot.ingest import BacklogEvent
    from bot.memory.store import Audience
    from bot.services import Services
    from tests.harness.discord_server import FakeDiscordServer
    from tests.harness.fixtures import build_world, make_fast, running_bot
    from tests.harness.ollama_server import FakeOllamaServer

    models = ensure_real_size_models()
    analyzer = load_real_size_analyzer(models)
    photos = bench_photos()
    data_dir = Path(tempfile.mkdtemp(prefix="imagebot-burst-"))
    server = FakeDiscordServer()
    await server.start()
    server.install()
    world = build_world(server)
    channels = [world.general, *(server.add_text_channel(world.guild, name) for name in ("pets", "memes"))]
    posters: list[Any] = []
    for index in range(10):
        user = server.add_user(f"poster{index}")
        server.add_member(world.guild, user)
        posters.append(user)
    results: dict[str, Any] = {}
    async with FakeOllamaServer() as ollama:
        base = Settings()
        settings = base.model_copy(update={
            "llm": base.llm.model_copy(update={"base_url": ollama.base_url, "model": ollama.model}),
            "memory": base.memory.model_copy(update={"path": str(data_dir / "chroma")}),
            "discord": base.discord.model_copy(update={"heartbeat_file": str(data_dir / "heartbeat.json")}),
            "rate_limits": base.rate_limits.model_copy(update={"per_user": 1000, "per_channel": 1000}),
            "queue": base.queue.model_copy(update={"max_wait_ms": args.max_wait_ms}),
            **({"ingest": base.ingest.model_copy(update={"read_in_first_look_below": args.read_below})}
               if args.read_below is not None else {}),
        })
        bot = ImageBot(settings, Services(settings, analyzer_factory=lambda: analyzer))
        make_fast(bot)
        async with running_bot(server, bot, ready_timeout=300):
            backlog = bot.services.backlog
            seen_at: dict[int, float] = {}
            captioned_at: dict[int, float] = {}
            forward = backlog.on_event

            async def record(event: BacklogEvent) -> None:
                now = time.perf_counter()
                if event.kind == "seen":
                    seen_at.setdefault(event.ref.attachment_id, now)
                elif event.kind == "captioned":
                    captioned_at.setdefault(event.ref.attachment_id, now)
                if forward is not None:
                    await forward(event)

            backlog.on_event = record
            # Warm-up: every model role once, outside the measurement.
            warm = await server.post_message(world.general, posters[0], "", attachments=[
                ("warm.jpg", photos[0], "image/jpeg")])
            print("warming up (every model role once)", flush=True)
            await server.wait_until(lambda: warm.attachments[0].id in captioned_at, timeout=300, what="warm-up")
            ix = await server.invoke_slash_command(world.general, posters[0], "find", {"query": "warm"})
            await server.wait_for_message(predicate=lambda m: m.interaction is ix, timeout=120)

            posted_at: dict[int, float] = {}
            burst_ids: list[int] = []
            started = time.perf_counter()

            async def burst() -> None:
                for index in range(args.rate * args.seconds):
                    due = started + index / args.rate
                    await asyncio.sleep(max(0.0, due - time.perf_counter()))
                    message = await server.post_message(
                        channels[index % len(channels)], posters[index % len(posters)], "",
                        attachments=[(f"b{index}.jpg", photos[index % len(photos)], "image/jpeg")])
                    attachment_id = message.attachments[0].id
                    posted_at[attachment_id] = time.perf_counter()
                    burst_ids.append(attachment_id)

            find_s: list[float] = []
            mention_s: list[float] = []

            async def probes() -> None:
                if args.probe_every_s <= 0:  # the burst alone: no interactive work competing with it
                    return
                await asyncio.sleep(args.probe_every_s / 2)
                index = 0
                while len(captioned_at) < len(burst_ids) + 1 or len(burst_ids) < args.rate * args.seconds:
                    asker = world.alice if index % 2 else world.bob
                    t0 = time.perf_counter()
                    ix = await server.invoke_slash_command(world.general, asker, "find", {"query": "a photo of a cat"})
                    await server.wait_for_message(predicate=lambda m, ix=ix: m.interaction is ix, timeout=120, after=0)
                    find_s.append(time.perf_counter() - t0)
                    t0 = time.perf_counter()
                    ask = await server.post_message(world.general, asker, f"<@{server.bot_user.id}> what is this?",
                                                    attachments=[("ask.jpg", photos[index % len(photos)],
                                                                  "image/jpeg")])
                    await server.wait_for_message(world.general, timeout=120, after=0, predicate=lambda m, ask=ask:
                                                  m.reference is not None and m.reference.id == ask.id)
                    mention_s.append(time.perf_counter() - t0)
                    index += 1
                    await asyncio.sleep(args.probe_every_s)

            async def progress() -> None:
                while True:
                    await asyncio.sleep(10)
                    gauges = backlog.gauges()
                    findable = sum(i in seen_at for i in burst_ids)
                    captioned = sum(i in captioned_at for i in burst_ids)
                    print(f"[{time.perf_counter() - started:6.1f} s] posted {len(burst_ids)}, findable {findable}, "
                          f"captioned {captioned}; waiting: first look {gauges['backlog_fast']:.0f}, caption "
                          f"{gauges['backlog_caption']:.0f}; probes: /find {len(find_s)}, mention {len(mention_s)}",
                          flush=True)

            progress_task = asyncio.create_task(progress())
            probe_task = asyncio.create_task(probes())
            await burst()
            await server.wait_until(lambda: all(i in seen_at for i in burst_ids), timeout=args.timeout,
                                    what="every burst picture findable", poll=0.2)
            findable_done = time.perf_counter()
            await server.wait_until(lambda: all(i in captioned_at for i in burst_ids), timeout=args.timeout,
                                    what="every burst picture captioned", poll=0.5)
            captioned_done = time.perf_counter()
            await probe_task
            progress_task.cancel()
            store = bot.services.memory.store.store
            records = store.images(Audience.everything(world.guild.id))
            burst_set = set(burst_ids)
            stored = [r for r in records if r.ref.attachment_id in burst_set]
            load_replies = [m for m in server.bot_messages() if m.reference is not None and m.reference.id in {
                m2.id for channel in channels for m2 in server.history(channel) if m2.attachments and
                m2.attachments[0].id in burst_set}]
            results = {
                "messages": len(burst_ids),
                "findable": sum(i in seen_at for i in burst_ids),
                "complete": sum(not r.caption_pending for r in stored),
                "stored": len(stored),
                "load_replies": len(load_replies),
                "to_findable": [seen_at[i] - posted_at[i] for i in burst_ids],
                "to_caption": [captioned_at[i] - posted_at[i] for i in burst_ids],
                "all_findable_s": findable_done - started,
                "all_captioned_s": captioned_done - started,
                "find_s": find_s,
                "mention_s": mention_s,
                "gauges": backlog.gauges(),
                "rss": rss_gib(),
                "queue": settings.queue,
                "ingest": settings.ingest,
            }
    server.restore()
    await server.stop()
    return results


def report(results: dict[str, Any], args: argparse.Namespace, info: dict[str, Any], minutes: float) -> list[str]:
    queue, ingest = results["queue"], results["ingest"]
    tf, tc, fs, ms = results["to_findable"], results["to_caption"], results["find_s"], results["mention_s"]
    lines = header_lines(
        "A burst of posted pictures on a small CPU host (Discord peer, real-size stand-ins)", info,
        [f"- produced by `python -m bench.bench_burst` in {minutes:.1f} min",
         f"- burst: {args.rate} image messages/s for {args.seconds} s from 10 posters in 3 channels (bench photos, "
         "~512 px JPEG); " + (f"interactive probes every {args.probe_every_s:g} s while the backlog drains: a "
                              "`/find` (deferred → results) and a mention with a fresh picture (post → the bot's "
                              "reply; the LLM peer answers at once, so this is the analysis part)"
                              if args.probe_every_s > 0 else "no interactive probes (the burst alone)"),
         f"- settings: queue max_batch_size {queue.max_batch_size}, background_batch_size "
         f"{queue.background_batch_size}, max_wait_ms {queue.max_wait_ms:g}, preempt_background "
         f"{queue.preempt_background}; ingest fast_in_flight {ingest.fast_in_flight}, caption_in_flight "
         f"{ingest.caption_in_flight}, read_in_first_look_below {ingest.read_in_first_look_below}"],
        noise_note="one run",
    )
    lines += [
        "| what | result | target |",
        "| --- | --- | --- |",
        f"| pictures findable (first look stored, 👀) | {results['findable']} of {results['messages']} | all |",
        f"| pictures complete (caption stored), no restart | {results['complete']} of {results['messages']} | all |",
        f"| load replies to posters | {results['load_replies']} | 0 |",
        f"| time to findable p50 / p95 / max | {fmt_s(median(tf))} / {fmt_s(percentile(tf, 0.95))} / "
        f"{fmt_s(max(tf))} | p95 ≤ 10 s |",
        f"| time to caption p50 / p95 / max | {fmt_s(median(tc))} / {fmt_s(percentile(tc, 0.95))} / "
        f"{fmt_s(max(tc))} | — |",
        f"| all findable / all captioned after the burst began | {fmt_s(results['all_findable_s'])} / "
        f"{fmt_s(results['all_captioned_s'])} | — |",
        *([f"| `/find` during the backlog, p50 / p95 ({len(fs)} probes) | {fmt_s(median(fs))} / "
           f"{fmt_s(percentile(fs, 0.95))} | p95 ≤ 1 s |",
           f"| mention with a fresh picture during the backlog, p50 / p95 ({len(ms)} probes) | {fmt_s(median(ms))} / "
           f"{fmt_s(percentile(ms, 0.95))} | p95 ≤ 3 s |"] if fs else []),
        f"| RSS of the process (bot + Discord peer + bench) now / peak | {results['rss'][0]:.2f} / "
        f"{results['rss'][1]:.2f} GiB | — |",
        "",
    ]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=int, default=50, help="image messages per second")
    parser.add_argument("--seconds", type=int, default=3)
    parser.add_argument("--probe-every-s", type=float, default=3.0, help="0: no interactive probes")
    parser.add_argument("--max-wait-ms", type=float, default=10.0)
    parser.add_argument("--read-below", type=int, default=None,
                        help="ingest.read_in_first_look_below (default: the config's)")
    parser.add_argument("--timeout", type=float, default=1800.0)
    parser.add_argument("--out", default=str(RESULTS / "burst_cpu.md"))
    args = parser.parse_args(argv)
    info = machine_info()
    started = time.perf_counter()
    results = asyncio.run(run(args))
    lines = report(results, args, info, (time.perf_counter() - started) / 60)
    print("\n".join(lines))
    write_report(Path(args.out), lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
