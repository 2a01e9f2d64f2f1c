"""Vision chat models see the pictures themselves, end to end: the real bot on the local Discord peer,
langchain-ollama talking to the local Ollama peer, which says per model whether it has ``vision``
(``/api/show``) and records the ``images`` of every chat request. See bot/chat/vision.py."""

from __future__ import annotations

import base64
import io
import logging

import numpy as np
import pytest
from PIL import Image

from cogs.images import SEEN_REACTION
from tests.helpers import wait_reaction

VISION = ["completion", "vision"]
RED, BLUE = (220, 20, 20), (20, 20, 220)


def photo(width: int, height: int, color: tuple[int, int, int]) -> bytes:
    """A JPEG of one colour with a little texture (so it is a plausible photo for the models)."""
    rng = np.random.default_rng(width * height)
    pixels = np.clip(np.array(color) + rng.integers(-10, 10, (height, width, 3)), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def sent_pictures(request) -> list[Image.Image]:
    return [Image.open(io.BytesIO(base64.b64decode(image))) for image in request.images]


def mean_color(image: Image.Image) -> tuple[float, ...]:
    return tuple(np.asarray(image.convert("RGB"), dtype=float).mean(axis=(0, 1)))


def close_to(image: Image.Image, color: tuple[int, int, int]) -> bool:
    return all(abs(a - b) < 30 for a, b in zip(mean_color(image), color, strict=True))


async def ask(server, channel, user, text: str = "what's this?", **kwargs):
    """``user`` asks the bot in ``channel``; the bot's reply."""
    await server.post_message(channel, user, f"<@{server.bot_user.id}> {text}", **kwargs)
    return await server.wait_for_message(channel, timeout=30)


async def test_a_vision_model_sees_the_picture_downscaled_as_jpeg(imagebot, discord_server, discord_world, ollama):
    ollama.capabilities[ollama.model] = VISION
    world = discord_world
    original = photo(1600, 1200, RED)
    posted = await discord_server.post_message(world.general, world.alice,
                                               f"<@{discord_server.bot_user.id}> describe this",
                                               attachments=[("big.jpg", original, "image/jpeg")])
    reply = await discord_server.wait_for_message(world.general, timeout=30)
    assert reply.content == "I can see 1 image(s) in our chat."
    [request] = ollama.requests
    assert ollama.show_requests == [ollama.model]
    [picture] = sent_pictures(request)
    assert picture.format == "JPEG" and picture.size == (768, 576)  # llm.image_max_side = 768
    assert close_to(picture, RED)
    assert request.image_bytes[0] != original  # a fresh encoding, never the uploaded file
    # On the turn it was posted with, next to its context line.
    [question] = [m for m in request.messages if m.get("images")]
    assert question is request.messages[-1] and "describe this" in question["content"]
    assert imagebot.services.cache.get(posted.attachments[0].id).context_line() in question["content"]
    # Decoded in the bot's decode sandbox, like at ingestion: once to analyse it, once for the chat model.
    assert imagebot.services.decoder.isolate and imagebot.services.decoder.stats.decodes == 2


async def test_a_text_model_gets_the_lines_only(imagebot, discord_server, discord_world, photos, ollama):
    world = discord_world
    posted = await discord_server.post_message(world.general, world.alice, "my cat",
                                               attachments=[("cat.jpg", photos["chelsea"], "image/jpeg")])
    await wait_reaction(discord_server, posted, SEEN_REACTION)
    reply = await ask(discord_server, world.general, world.bob)
    assert reply.content == "I can see 1 image(s) in our chat."
    [request] = ollama.requests
    assert request.images == [] and not request.refused
    assert ollama.show_requests == [ollama.model]
    assert imagebot.services.cache.get(posted.attachments[0].id).context_line() in request.prompt_text


async def test_the_capability_is_asked_once_across_messages(imagebot, discord_server, discord_world, ollama):
    ollama.capabilities[ollama.model] = VISION
    world = discord_world
    for index in range(3):
        await ask(discord_server, world.general, world.alice, f"and this one? {index}",
                  attachments=[(f"p{index}.jpg", photo(300, 200, BLUE), "image/jpeg")])
    assert ollama.show_requests == [ollama.model]
    assert [len(r.images) for r in ollama.requests] == [1, 2, 3]  # the conversation's pictures so far


@pytest.mark.imagebot_settings(llm={"send_images": "never"})
async def test_never_sends_and_never_asks(imagebot, discord_server, discord_world, ollama):
    ollama.capabilities[ollama.model] = VISION
    world = discord_world
    reply = await ask(discord_server, world.general, world.alice,
                      attachments=[("p.jpg", photo(300, 200, RED), "image/jpeg")])
    assert reply.content == "I can see 1 image(s) in our chat."
    assert ollama.show_requests == [] and ollama.requests[0].images == []


@pytest.mark.imagebot_settings(llm={"send_images": "always", "image_max_side": 128})
async def test_always_sends_without_asking(imagebot, discord_server, discord_world, ollama):
    ollama.capabilities[ollama.model] = VISION
    world = discord_world
    await ask(discord_server, world.general, world.alice, attachments=[("p.jpg", photo(300, 200, RED), "image/jpeg")])
    assert ollama.show_requests == []
    assert [p.size for p in sent_pictures(ollama.requests[0])] == [(128, 85)]


@pytest.mark.imagebot_settings(llm={"send_images": "always"})
async def test_a_refused_vision_request_still_gets_its_answer(imagebot, discord_server, discord_world, ollama,
                                                              caplog):
    world = discord_world  # "always", but the model is text-only: Ollama refuses the images
    reply = await ask(discord_server, world.general, world.alice,
                      attachments=[("p.jpg", photo(300, 200, RED), "image/jpeg")])
    assert reply.content == "I can see 1 image(s) in our chat."
    assert [(r.refused, len(r.images)) for r in ollama.requests] == [(True, 1), (False, 0)]
    assert any(r.levelno == logging.WARNING and "refused a request with 1 image(s)" in r.getMessage()
               for r in caplog.records)


async def test_api_show_failing_means_no_images_and_the_answer_still_arrives(imagebot, discord_server,
                                                                             discord_world, ollama):
    ollama.capabilities[ollama.model] = VISION
    ollama.show_status = 500
    world = discord_world
    for _ in range(2):
        reply = await ask(discord_server, world.general, world.alice,
                          attachments=[("p.jpg", photo(300, 200, RED), "image/jpeg")])
        assert reply.content.startswith("I can see")
    assert [r.images for r in ollama.requests] == [[], []]
    assert ollama.show_requests == [ollama.model]  # not asked again on the next message


async def test_pictures_from_outside_the_conversation_are_never_sent(imagebot, discord_server, discord_world,
                                                                     ollama):
    ollama.capabilities[ollama.model] = VISION
    world = discord_world
    # Bob's picture in #secret (only Bob and the bot can read it) is analysed and cached...
    hidden = await discord_server.post_message(world.secret, world.bob, "",
                                               attachments=[("secret.jpg", photo(300, 200, RED), "image/jpeg")])
    await wait_reaction(discord_server, hidden, SEEN_REACTION)
    assert imagebot.services.cache.get(hidden.attachments[0].id) is not None
    # ... and Bob, asking in #general, must not get it shown to the model there.
    shared = await discord_server.post_message(world.general, world.alice, "",
                                               attachments=[("shared.jpg", photo(300, 200, BLUE), "image/jpeg")])
    await wait_reaction(discord_server, shared, SEEN_REACTION)
    reply = await ask(discord_server, world.general, world.bob)
    assert reply.content == "I can see 1 image(s) in our chat."
    [request] = ollama.requests
    [picture] = sent_pictures(request)
    assert close_to(picture, BLUE) and not close_to(picture, RED)
    assert imagebot.services.cache.get(hidden.attachments[0].id).context_line() not in request.prompt_text


@pytest.mark.imagebot_settings(chat={"history_messages": 2})
async def test_a_picture_older_than_the_history_window_is_not_sent(imagebot, discord_server, discord_world,
                                                                   ollama):
    ollama.capabilities[ollama.model] = VISION
    world = discord_world
    old = await discord_server.post_message(world.general, world.alice, "",
                                            attachments=[("old.jpg", photo(300, 200, RED), "image/jpeg")])
    await wait_reaction(discord_server, old, SEEN_REACTION)
    for text in ("one", "two"):
        await discord_server.post_message(world.general, world.alice, text)
    reply = await ask(discord_server, world.general, world.bob)
    assert reply.content == "I can see 0 image(s) in our chat."
    assert ollama.requests[0].images == []


@pytest.mark.imagebot_settings(llm={"max_images": 2})
async def test_the_newest_pictures_are_kept(imagebot, discord_server, discord_world, ollama):
    ollama.capabilities[ollama.model] = VISION
    world = discord_world
    posted = await discord_server.post_message(world.general, world.alice, "", attachments=[
        ("red.jpg", photo(300, 200, RED), "image/jpeg"), ("blue1.jpg", photo(300, 200, BLUE), "image/jpeg")])
    await wait_reaction(discord_server, posted, SEEN_REACTION)
    await ask(discord_server, world.general, world.bob,
              attachments=[("blue2.jpg", photo(200, 300, BLUE), "image/jpeg")])
    [request] = ollama.requests
    assert [len(images) for images in request.images_by_message] == [0, 1, 1]  # system, alice, bob
    assert [p.size for p in sent_pictures(request)] == [(300, 200), (200, 300)]
    assert all(close_to(p, BLUE) for p in sent_pictures(request))
    user_text = "\n".join(m["content"] for m in request.messages if m["role"] == "user")
    assert user_text.count("[Image Attached:") == 3  # every picture keeps its line


async def test_a_picture_that_cannot_be_read_again_keeps_its_line(imagebot, discord_server, discord_world, ollama):
    ollama.capabilities[ollama.model] = VISION
    world = discord_world
    posted = await discord_server.post_message(world.general, world.alice, "",
                                               attachments=[("gone.jpg", photo(300, 200, RED), "image/jpeg")])
    await wait_reaction(discord_server, posted, SEEN_REACTION)
    for key in [k for k in discord_server.cdn if f"/{posted.attachments[0].id}/" in k]:
        del discord_server.cdn[key]  # the file is gone from Discord's CDN since it was analysed
    reply = await ask(discord_server, world.general, world.bob)
    assert reply.content == "I can see 1 image(s) in our chat."
    assert ollama.requests[0].images == []
