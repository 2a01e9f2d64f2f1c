"""/vibe and the "Vibe check" menu, end to end: the real ImageBot (tiny models, services.queue)
against the fake Discord server and the fake Ollama server (fixtures in tests/imagebot_fixtures.py).

What a user sees is checked on the protocol side: which messages exist, whether they are ephemeral,
what they say and which files they carry. ``running_bot`` fails a test if discord.py logged an
error, so "never a traceback" is checked by every test here.
"""

from __future__ import annotations

import io
import re
import socket

import pytest
from PIL import Image, ImageEnhance, ImageFilter

from bot.vibe.signals import STORY_SEED
from cogs.vibe import CHART_NAME, DOWNLOAD_FAILED, NO_IMAGE, POSTED
from tests.harness.discord_models import CallbackType
from tests.harness.discord_server import FakeDiscordServer, FakeInteraction, FakeMessage
from tests.harness.fixtures import DiscordWorld
from tests.harness.ollama_server import FakeOllamaServer

STORY = "A person in a photo looks at the camera. It is a plain, ordinary picture."
SCORE = re.compile(r"\*\*Vibe check: (\d+\.\d)/10\*\*")
TIMEOUT = 60.0  # CPU models on a busy CI machine; a passing run takes well under a second each


def _closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


def _degraded(photo: bytes) -> bytes:
    image = Image.open(io.BytesIO(photo)).convert("RGB").filter(ImageFilter.GaussianBlur(3))
    buffer = io.BytesIO()
    ImageEnhance.Brightness(image).enhance(0.3).save(buffer, "JPEG")
    return buffer.getvalue()


def _small(photo: bytes) -> bytes:
    buffer = io.BytesIO()
    Image.open(io.BytesIO(photo)).convert("RGB").resize((128, 128)).save(buffer, "JPEG")
    return buffer.getvalue()


async def _answer(server: FakeDiscordServer, ix: FakeInteraction, count: int = 1) -> FakeMessage:
    return await server.wait_for_followup(ix, count, timeout=TIMEOUT)


@pytest.fixture
def vibe_bot(imagebot):
    """The running ImageBot; the vibe cog reaches the models through ``services.queue``."""
    return imagebot


@pytest.fixture
def storyteller(ollama: FakeOllamaServer) -> FakeOllamaServer:
    ollama.reply = lambda messages: STORY
    return ollama


async def test_vibe_one_photo_is_private_and_explains_itself(
    vibe_bot, discord_server: FakeDiscordServer, discord_world: DiscordWorld, storyteller: FakeOllamaServer, photos
) -> None:
    w = discord_world
    assert "vibe" in discord_server.command_names()
    assert discord_server.find_command("Vibe check", type=3)["type"] == 3
    options = [(o["name"], o["type"], o.get("required", False)) for o in discord_server.find_command("vibe")["options"]]
    assert options == [("image", 11, True), ("compare", 11, False), ("public", 5, False)]

    ix = await discord_server.invoke_slash_command(
        w.general, w.alice, "vibe", attachments={"image": ("me.jpg", photos["astronaut"], "image/jpeg")}
    )
    reply = await _answer(discord_server, ix)
    assert ix.deferred and ix.ephemeral  # thinking… then the answer, only for alice
    assert reply is ix.original and reply.ephemeral and reply not in discord_server.history(w.general)
    assert SCORE.search(reply.content), reply.content
    assert "Judged from this caption:" in reply.content and "**Why:**" in reply.content
    assert "Parts (0-10 × share): look (CLIP)" in reply.content
    assert STORY in reply.content and not reply.files
    (request,) = storyteller.requests
    assert request.options["temperature"] == 0.0 and request.options["seed"] == STORY_SEED


async def test_vibe_is_deterministic(
    vibe_bot, discord_server: FakeDiscordServer, discord_world: DiscordWorld, storyteller: FakeOllamaServer, photos
) -> None:
    w = discord_world
    replies = []
    for _ in range(2):
        ix = await discord_server.invoke_slash_command(
            w.general, w.bob, "vibe", attachments={"image": ("me.jpg", photos["chelsea"], "image/jpeg")}
        )
        replies.append((await _answer(discord_server, ix)).content)
    assert replies[0] == replies[1]
    assert SCORE.search(replies[0])


async def test_vibe_compare_names_a_winner_with_a_chart(
    vibe_bot, discord_server: FakeDiscordServer, discord_world: DiscordWorld, storyteller: FakeOllamaServer, photos
) -> None:
    w = discord_world
    good, bad = photos["astronaut"], _degraded(photos["astronaut"])
    ix = await discord_server.invoke_slash_command(
        w.general, w.alice, "vibe",
        attachments={"image": ("bad.jpg", bad, "image/jpeg"), "compare": ("good.jpg", good, "image/jpeg")},
    )
    reply = await _answer(discord_server, ix)
    assert reply.ephemeral
    assert reply.content.startswith("**Photo 2 (good.jpg) wins:"), reply.content
    assert "Why it won:" in reply.content and "sharper" in reply.content
    assert reply.content.count("caption:") == 2
    chart = Image.open(io.BytesIO(reply.files[CHART_NAME]))
    assert chart.format == "PNG" and chart.size == (700, 340)
    assert len(storyteller.requests) == 2  # both photos judged in the same run, each with a story


async def test_vibe_public_posts_in_the_channel(
    vibe_bot, discord_server: FakeDiscordServer, discord_world: DiscordWorld, storyteller: FakeOllamaServer, photos
) -> None:
    w = discord_world
    ix = await discord_server.invoke_slash_command(
        w.general, w.alice, "vibe", {"public": True}, attachments={"image": ("me.jpg", photos["coffee"], "image/jpeg")}
    )
    public = await _answer(discord_server, ix)
    assert SCORE.search(public.content) and not public.ephemeral
    assert public in discord_server.history(w.general)
    assert ix.original is not None and ix.original.ephemeral and ix.original.content == POSTED


async def test_vibe_check_context_menu_scores_the_first_image(
    vibe_bot, discord_server: FakeDiscordServer, discord_world: DiscordWorld, storyteller: FakeOllamaServer, photos
) -> None:
    w = discord_world
    target = await discord_server.post_message(
        w.general, w.bob, "which one?",
        attachments=[("first.jpg", photos["astronaut"], "image/jpeg"), ("second.jpg", photos["coffee"], "image/jpeg")],
    )
    ix = await discord_server.invoke_message_command(w.general, w.alice, "Vibe check", target)
    reply = await _answer(discord_server, ix)
    assert reply.ephemeral and SCORE.search(reply.content)

    direct = await discord_server.invoke_slash_command(
        w.general, w.alice, "vibe", attachments={"image": ("first.jpg", photos["astronaut"], "image/jpeg")}
    )
    assert (await _answer(discord_server, direct)).content == reply.content  # the first image, same verdict

    text_only = await discord_server.post_message(w.general, w.bob, "no pictures here")
    ix = await discord_server.invoke_message_command(w.general, w.alice, "Vibe check", text_only)
    await discord_server.wait_for_response(ix)
    assert ix.callback is not None and ix.callback.type == CallbackType.CHANNEL_MESSAGE
    assert ix.original is not None and ix.original.ephemeral and ix.original.content == NO_IMAGE


def _images_analysed(bot) -> int:
    """Pictures fully analysed so far (one full job, or the caption tier after a first look)."""
    jobs = bot.services.queue.metrics.snapshot()["jobs_by_kind"]
    return sum(jobs.get(kind, {}).get("ok", 0) for kind in ("image", "caption"))


async def test_vibe_check_reuses_the_listeners_analysis(
    vibe_bot, discord_server: FakeDiscordServer, discord_world: DiscordWorld, storyteller: FakeOllamaServer, photos
) -> None:
    """Right-clicking an image the bot already looked at costs no second trip through the models."""
    w = discord_world
    target = await discord_server.post_message(
        w.general, w.bob, "", attachments=[("me.jpg", photos["astronaut"], "image/jpeg")]
    )
    await discord_server.wait_until(lambda: discord_server.reactions, what="the image listener's 👀")
    await discord_server.wait_until(lambda: vibe_bot.services.backlog.idle, timeout=20, what="its caption")
    analysed = _images_analysed(vibe_bot)
    assert analysed >= 1

    ix = await discord_server.invoke_message_command(w.general, w.alice, "Vibe check", target)
    reply = await _answer(discord_server, ix)
    assert SCORE.search(reply.content)
    assert _images_analysed(vibe_bot) == analysed  # the cached analysis was used

    # The same photo through /vibe is a new upload: analysed afresh, and judged the same.
    direct = await discord_server.invoke_slash_command(
        w.general, w.alice, "vibe", attachments={"image": ("me.jpg", photos["astronaut"], "image/jpeg")}
    )
    assert (await _answer(discord_server, direct)).content == reply.content
    assert _images_analysed(vibe_bot) == analysed + 1


@pytest.mark.imagebot_settings(llm={"base_url": _closed_port_url(), "timeout_s": 3.0})
async def test_vibe_with_the_llm_down_skips_the_story(
    vibe_bot, discord_server: FakeDiscordServer, discord_world: DiscordWorld, photos
) -> None:
    w = discord_world
    ix = await discord_server.invoke_slash_command(
        w.general, w.alice, "vibe", attachments={"image": ("me.jpg", photos["astronaut"], "image/jpeg")}
    )
    reply = await _answer(discord_server, ix)
    assert SCORE.search(reply.content)
    assert "story skipped" in reply.content and "language model is offline" in reply.content


@pytest.mark.imagebot_settings(images={"max_bytes": 20_000})
async def test_bad_attachments_get_a_polite_private_answer(
    vibe_bot, discord_server: FakeDiscordServer, discord_world: DiscordWorld, storyteller: FakeOllamaServer, photos
) -> None:
    w = discord_world
    small = _small(photos["astronaut"])
    assert len(small) < 20_000 < len(photos["astronaut"])
    cases = {
        "not an image type": ({"image": ("cv.pdf", b"%PDF-1.7 hello", "application/pdf")}, "couldn't recognise"),
        "too large": ({"image": ("huge.jpg", photos["astronaut"], "image/jpeg")}, "over my"),
        "lies about its type": ({"image": ("cat.png", b"just some text", "image/png")}, "looks like a text file"),
        "damaged": ({"image": ("me.jpg", small[: len(small) // 3], "image/jpeg")}, "damaged"),
        "second one bad": (
            {"image": ("me.jpg", small, "image/jpeg"), "compare": ("other.png", b"%PDF-1.7", "image/png")},
            'The file "other.png" looks like a PDF document',
        ),
    }
    for name, (attachments, expected) in cases.items():
        ix = await discord_server.invoke_slash_command(w.general, w.alice, "vibe", {"public": True},
                                                       attachments=attachments)
        await discord_server.wait_for_response(ix)
        if ix.deferred:  # refused only after reading the bytes
            await _answer(discord_server, ix)
        message = ix.original
        assert message is not None and message.ephemeral, name
        assert expected in message.content, (name, message.content)
        assert "Traceback" not in message.content and not message.files
    assert not [m for m in discord_server.history(w.general) if m.interaction is not None]
    assert storyteller.requests == []


async def test_vibe_check_on_an_image_that_vanished(
    vibe_bot, discord_server: FakeDiscordServer, discord_world: DiscordWorld, photos
) -> None:
    w = discord_world
    target = await discord_server.post_message(
        w.general, w.bob, "", attachments=[("me.jpg", photos["astronaut"], "image/jpeg")]
    )
    await discord_server.wait_until(lambda: discord_server.reactions, what="the image listener's 👀")
    key = target.attachments[0].url.split("/cdn/", 1)[1].split("?", 1)[0]
    del discord_server.cdn[key]  # deleted on Discord's side between posting and the right-click
    ix = await discord_server.invoke_message_command(w.general, w.alice, "Vibe check", target)
    reply = await _answer(discord_server, ix)
    assert reply.ephemeral and reply.content == DOWNLOAD_FAILED
