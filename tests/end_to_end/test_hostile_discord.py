"""Hostile posts through the Discord protocol peer: the production bot (tiny models) stays up.

The issue's files, at full size: two scan bombs (a progressive JPEG whose last scan repeats 20,000 and
1,000 times) followed by a normal photo, and the 24 MB metadata floods (2,000,000 Exif segments,
COM and APP5 segments, 12M GIF comment sub-blocks, a PNG whose text inflates to 200 MB). Each bad
file gets its polite reply, the photo gets its 👀, the bot still chats, and the bot process's memory
stays bounded over the whole run (sampled every 20 ms; the decoder processes are bounded by their own
limit; the bot runs as its own process for this, so what is measured is the bot alone). Durations are
printed, not asserted.
"""

from __future__ import annotations

import threading
import time

import pytest

from cogs.images import SEEN_REACTION
from tests.harness.bot_process import (
    child_pids,
    proc_status_bytes,
    start_bot_process,
    stop_bot_process,
    write_bot_config,
)
from tests.helpers import reacted
from tests.hostile_corpus import (
    gif_comment,
    gif_with,
    jpeg_with_segments,
    png_inflating_to,
    progressive_with_repeated_last_scan,
)

MAX_BOT_RSS = 1.5 * 2**30


class RssSampler:
    """Peak resident memory of the bot process and of its decoder processes, sampled in a thread."""

    def __init__(self, pid: int, every_s: float = 0.02) -> None:
        self.pid = pid
        self.peak = 0
        self.children_peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(every_s,), daemon=True)

    def _run(self, every_s: float) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, proc_status_bytes(self.pid))
            for child in child_pids(self.pid):
                self.children_peak = max(self.children_peak, proc_status_bytes(child))
            self._stop.wait(every_s)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def floods() -> list[tuple[str, bytes]]:
    exif = b"Exif\x00\x00"
    return [
        ("exif-flood.jpg", jpeg_with_segments(0xE1, exif, 2_000_000)),
        ("com-flood.jpg", jpeg_with_segments(0xFE, b"x" * 8, 2_000_000)),
        ("app5-flood.jpg", jpeg_with_segments(0xE5, b"x" * 8, 2_000_000)),
        ("comment-flood.gif", gif_with(gif_comment(12_000_000))),
        ("ztxt-200mb.png", png_inflating_to(200, b"zTXt")),
        ("iccp-200mb.png", png_inflating_to(200, b"iCCP")),
    ]


async def test_scan_bombs_and_floods_are_refused_and_the_bot_stays_up(discord_server, discord_world, photos,
                                                                      tiny_models_dir, tmp_path):
    server, world = discord_server, discord_world
    server.upload_limit = 30 * 2**20
    bot = start_bot_process(server, write_bot_config(tiny_models_dir, tmp_path), tmp_path / "bot.log")
    timings: dict[str, float] = {}
    try:
        await server.wait_for_gateway(timeout=180)
        with RssSampler(bot.pid) as rss:
            for name, data in [("bomb-20000.jpg", progressive_with_repeated_last_scan(4096, 20_000)),
                               ("bomb-1000.jpg", progressive_with_repeated_last_scan(4096, 1_000)), *floods()]:
                started = time.perf_counter()
                message = await server.post_message(world.general, world.alice, "",
                                                    attachments=[(name, data, "image/jpeg")])
                del data
                reply = await server.wait_for_message(world.general, timeout=60, predicate=lambda m, ref=message:
                                                      m.reference is not None and m.reference.id == ref.id)
                timings[name] = time.perf_counter() - started
                assert f"**{name}**" in reply.content and "Traceback" not in reply.content
                assert "too much hidden metadata" in reply.content or "too long" in reply.content, reply.content

            started = time.perf_counter()
            photo = await server.post_message(world.general, world.bob, "",
                                              attachments=[("cat.jpg", photos["chelsea"], "image/jpeg")])
            await server.wait_until(lambda: reacted(server, photo, SEEN_REACTION), timeout=20,
                                    what="👀 on the normal photo")
            timings["cat.jpg (👀)"] = time.perf_counter() - started
            await server.post_message(world.general, world.bob, f"<@{server.bot_user.id}> still there?")
            answer = await server.wait_for_message(world.general, timeout=30)
            assert answer.content  # the bot still chats (Ollama is down here: it describes what it saw)
    finally:
        stop_bot_process(bot)
    print("seconds from post to answer:", {name: round(s, 3) for name, s in timings.items()})
    print(f"peak RSS of the bot process {rss.peak / 2**20:.0f} MiB, of a decoder process "
          f"{rss.children_peak / 2**20:.0f} MiB")
    assert 0 < rss.peak <= MAX_BOT_RSS
    assert rss.children_peak <= 1024 * 2**20  # images.decode_memory_mb (its address-space limit)
    assert "Traceback" not in (tmp_path / "bot.log").read_text(errors="replace")


@pytest.mark.imagebot_settings(images={"decode_timeout_s": 0.05})
async def test_a_decode_that_runs_past_the_limit_is_killed_and_the_next_photo_is_seen(imagebot, discord_server,
                                                                                      discord_world, photos):
    """A valid but slow file under every cap (90 repeated scans of a 16 MP JPEG: ~0.5 s to decode here)
    meets a 50 ms limit: its decoder process is killed and replaced, and a normal photo is still seen."""
    server, world = discord_server, discord_world
    slow = progressive_with_repeated_last_scan(4096, 85)
    for index in range(2):
        message = await server.post_message(world.general, world.alice, "",
                                            attachments=[(f"slow{index}.jpg", slow, "image/jpeg")])
        reply = await server.wait_for_message(world.general, predicate=lambda m, ref=message: m.reference is not None
                                              and m.reference.id == ref.id, timeout=30)
        assert "took far too long" in reply.content
    assert imagebot.services.decoder.stats.timeouts == 2
    # The small photo decodes well within the limit, in a replacement process.
    photo = await server.post_message(world.general, world.bob, "",
                                      attachments=[("tiny.png", _small_png(), "image/png")])
    await server.wait_until(lambda: reacted(server, photo, SEEN_REACTION), timeout=20,
                            what="👀 after two killed decodes")


def _small_png() -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (32, 24), (200, 100, 50)).save(buffer, "PNG")
    return buffer.getvalue()
