"""Vision chat models see the conversation's pictures themselves, next to the bot's lines about them.

Many people run a vision model in Ollama (gemma3, llava, qwen2.5-vl, llama3.2-vision). For those, the
most recent pictures of the conversation travel with the prompt as images, *in addition to* their
``[Image Attached: ...]`` lines (:mod:`bot.chat.conversation`). Settings (``[llm]``):

- ``send_images = "auto"`` (default): Ollama is asked once per model name whether the model has the
  ``vision`` capability (``POST /api/show``); the answer is kept for the life of the process. A failed
  ask (Ollama down, model missing, a bad answer) means "no images" and is asked again only after
  :data:`RETRY_AFTER_S`, so an Ollama that is down costs one short request per few minutes, not one
  per message. Nothing is asked for a conversation without pictures.
- ``"never"``: never send, never ask. ``"always"``: send without asking.
- ``max_images`` (newest kept) and ``image_max_side`` (longest side after downscaling).

Which pictures (the visibility rule): only those of :attr:`Turn.pictures` of the turns given, which
the chat cog fills with the attachments of the messages that are in the conversation, that is the
channel history it read to build the prompt and the message itself. Nothing comes from the analysis
cache, the memory, or another channel: a picture the conversation could not see is never sent, and
the answer is posted where every picture it was shown was already visible.

How a picture is made safe to send: its bytes are untrusted and are read again from Discord (bounded
by ``images.max_bytes``, before reading when the size is known, and after), then decoded by the same
decoder as ingestion (the bot passes its :class:`bot.decode_sandbox.DecodeSandbox`, killable
processes; without one, :func:`bot.imaging.decode_image` with the configured limits in a thread) and
shrunk to ``image_max_side`` while decoding, then re-encoded here as a plain JPEG from the decoded
RGB pixels, so no byte of the original file (metadata included) reaches Ollama. All the pictures of
one request together stay under :data:`MAX_TOTAL_CHARS` of base64 (newest first). A picture that
cannot be read or decoded in time is just not attached; its line still goes.
"""

from __future__ import annotations

import asyncio
import base64
import io
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import httpx
from PIL import Image

from bot.chat.conversation import PictureSource, Turn
from bot.config import Settings
from bot.imaging import DecodedImage, decode_image

log = logging.getLogger(__name__)

DATA_URL_PREFIX = "data:image/jpeg;base64,"
JPEG_QUALITY = 85
#: Base64 characters of all the pictures of one request together (~6 MB of JPEG): at the default 4
#: pictures of 768 px (~60-150 KB each) it never binds; it bounds ``max_images = 16`` at 2048 px.
MAX_TOTAL_CHARS = 8 * 1024 * 1024
#: Reading, decoding and encoding one picture; past it the picture is left out (the sandbox still
#: kills a decoder that runs past ``images.decode_timeout_s``).
PICTURE_TIMEOUT_S = 20.0
#: How long ``/api/show`` may take (capped at ``llm.timeout_s``); it reads a model's metadata only.
SHOW_TIMEOUT_S = 5.0
#: After a failed capability ask, how long "no images" stands before Ollama is asked again.
RETRY_AFTER_S = 120.0

Decode = Callable[..., DecodedImage]
"""Blocking, like :func:`bot.imaging.decode_image` (``data, *, filename, max_bytes, max_pixels,
target_size``); the bot passes ``services.decoder.decode``."""


def vision_from_show(answer: object) -> bool:
    """Whether an ``/api/show`` answer describes a model that takes images.

    ``capabilities`` (newer Ollama servers) is the answer. Servers from before it have no such key;
    for them a non-empty ``projector_info`` is the signal: Ollama fills it exactly when the model has
    a projector file (llava-style vision models), and its own capability code later counted any model
    with a projector as ``vision``. ``model_info`` alone says nothing (every model has it).
    """
    if not isinstance(answer, dict):
        raise ValueError(f"/api/show answered {type(answer).__name__}, not a JSON object")
    capabilities = answer.get("capabilities")
    if isinstance(capabilities, list):
        return "vision" in capabilities
    return bool(answer.get("projector_info"))


class VisionCheck:
    """Whether to send pictures to the configured chat model: the setting, or Ollama's word (cached)."""

    def __init__(self, settings: Settings, *, retry_after_s: float = RETRY_AFTER_S) -> None:
        self.settings = settings
        self.retry_after_s = retry_after_s
        self.asked = 0  # /api/show requests made (tests, logs)
        self._known: dict[str, bool] = {}
        self._failed_at: dict[str, float] = {}
        self._lock = asyncio.Lock()  # one ask at a time: a burst of messages waits for the first answer

    async def wanted(self) -> bool:
        llm = self.settings.llm
        if llm.send_images == "never" or llm.max_images == 0:
            return False
        if llm.send_images == "always":
            return True
        return await self.has_vision(llm.model)

    async def has_vision(self, model: str) -> bool:
        """Ollama's ``vision`` capability for ``model``; False (not an error) when it cannot be asked."""
        cached = self._cached(model)
        if cached is not None:
            return cached
        async with self._lock:
            cached = self._cached(model)  # asked while this call waited for the lock
            if cached is not None:
                return cached
            self.asked += 1
            try:
                vision = vision_from_show(await self._show(model))
            except Exception as exc:  # down, 404 (not pulled), a proxy's error page, bad JSON
                self._failed_at[model] = time.monotonic()
                log.info("could not ask Ollama whether %s takes images (%s: %s): text only, asking again "
                         "in %gs", model, type(exc).__name__, exc, self.retry_after_s)
                return False
            self._known[model] = vision
            self._failed_at.pop(model, None)
            log.info("chat model %s %s images", model, "takes" if vision else "does not take")
            return vision

    def refused(self, model: str) -> None:
        """Ollama refused a request with images: in ``auto``, text only until the next ask is due."""
        if self.settings.llm.send_images == "auto":
            self._known.pop(model, None)
            self._failed_at[model] = time.monotonic()

    def _cached(self, model: str) -> bool | None:
        if model in self._known:
            return self._known[model]
        failed = self._failed_at.get(model)
        if failed is not None and time.monotonic() - failed < self.retry_after_s:
            return False
        return None

    async def _show(self, model: str) -> Any:
        llm = self.settings.llm
        async with httpx.AsyncClient(timeout=min(SHOW_TIMEOUT_S, llm.timeout_s)) as client:
            response = await client.post(f"{llm.base_url}/api/show", json={"model": model})
            response.raise_for_status()
            return response.json()


def newest_pictures(turns: Sequence[Turn], limit: int) -> list[tuple[int, PictureSource]]:
    """Up to ``limit`` pictures, newest first, with the index of the turn each was posted with.

    Only people's turns count (the bot's own messages are answers, not pictures to look at).
    """
    chosen: list[tuple[int, PictureSource]] = []
    for index in range(len(turns) - 1, -1, -1):
        turn = turns[index]
        if turn.from_bot:
            continue
        for picture in reversed(turn.pictures):
            if len(chosen) >= limit:
                return chosen
            chosen.append((index, picture))
    return chosen


def encode_jpeg(image: Image.Image) -> bytes:
    """A fresh baseline JPEG of decoded RGB pixels (nothing of the original file survives)."""
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, "JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


class VisionImages:
    """The pictures to attach to one request: which (newest, visible), and their safe JPEG copies."""

    def __init__(self, settings: Settings, check: VisionCheck | None = None) -> None:
        self.settings = settings
        self.check = check or VisionCheck(settings)

    async def attach(self, turns: Sequence[Turn], decode: Decode | None = None) -> dict[int, list[str]]:
        """Turn index → JPEG data URLs, in posting order; empty when nothing is to be sent.

        Reads bytes only when sending is on, and only for the pictures that will be sent.
        """
        if not any(turn.pictures for turn in turns if not turn.from_bot):
            return {}  # nothing to show: no capability ask either
        if not await self.check.wanted():
            return {}
        chosen = newest_pictures(turns, self.settings.llm.max_images)
        urls = await asyncio.gather(*(self._prepare(picture, decode) for _, picture in chosen))
        attached: dict[int, list[str]] = {}
        budget = MAX_TOTAL_CHARS
        for (index, picture), url in zip(chosen, urls, strict=True):  # newest first: the budget keeps them
            if url is None:
                continue
            if len(url) > budget:
                log.info("picture %r not shown to the chat model: over the %d-character budget of one request",
                         picture.filename, MAX_TOTAL_CHARS)
                continue
            budget -= len(url)
            attached.setdefault(index, []).insert(0, url)
        return attached

    async def _prepare(self, picture: PictureSource, decode: Decode | None) -> str | None:
        images = self.settings.images
        if picture.size is None or picture.size > images.max_bytes:
            return None  # unknown or too large: not read at all
        try:
            async with asyncio.timeout(PICTURE_TIMEOUT_S):
                data = await picture.read()
                if not data or len(data) > images.max_bytes:
                    return None
                decoded = await asyncio.to_thread(
                    decode or decode_image, data, filename=picture.filename, max_bytes=images.max_bytes,
                    max_pixels=images.max_pixels, target_size=self.settings.llm.image_max_side)
                jpeg = await asyncio.to_thread(encode_jpeg, decoded.image)
        except Exception as exc:  # unreadable now (deleted, refused, timed out, sandbox closed): no image
            log.info("picture %r not shown to the chat model (%s: %s)", picture.filename, type(exc).__name__, exc)
            return None
        return DATA_URL_PREFIX + base64.b64encode(jpeg).decode("ascii")
