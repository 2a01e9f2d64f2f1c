"""Helpers that several test modules use, in one place (the python-discord/bot convention: one plain
module that builds things for every test). Not a test module: nothing here is collected, and no test
module imports another. A helper that one module alone uses stays in that module.

- Store records: the guild, channel and people ids, vectors drawn from one seeded stream (``reseed``),
  and ``analysis`` / ``ref`` / ``settings_for``.
- Inference queue settings for tests (``queue_settings``).
- A real ``chroma run`` server (``ChromaServer``, ``running_chroma``); the ``chroma_process`` and
  ``chroma_server`` fixtures in tests/conftest.py start one per test.
- The Discord protocol peer: the bot's reactions, posting a picture and waiting for its first look,
  /find and other slash commands, what a bot message shows, what the LLM was told.
- Charts: counting the bars of a chart PNG.
"""

from __future__ import annotations

import contextlib
import io
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from bot.analysis import ImageAnalysis, Scored, Sentiment
from bot.config import MemorySettings, QueueSettings, Settings
from bot.memory.records import ImageRef
from bot.memory.store import Audience

if TYPE_CHECKING:
    from bot.overview.charts import Chart

# --------------------------------------------------------------------------- store records

GUILD_A, GUILD_B = 900_000_000_000_000_001, 900_000_000_000_000_002
PUBLIC, OTHER, PRIVATE, ADULT = 11, 12, 13, 14
ALICE, BOB, CAROL = 101, 102, 103
T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
TEXT_DIM, CLIP_DIM = 384, 512
SEED = 7
_rng = np.random.default_rng(SEED)


def reseed() -> None:
    """Start the vector stream again, so that a test draws the same vectors whatever ran before it."""
    global _rng
    _rng = np.random.default_rng(SEED)


def unit(vector: np.ndarray) -> list[float]:
    return (vector / np.linalg.norm(vector)).astype(np.float32).tolist()


def random_vector(dim: int) -> np.ndarray:
    return _rng.standard_normal(dim)


def near(vector: np.ndarray, noise: float) -> np.ndarray:
    return vector / np.linalg.norm(vector) + noise * _rng.standard_normal(vector.shape[0]) / np.sqrt(vector.shape[0])


def analysis(text_vec=None, clip_vec=None, *, caption="a photo", sentiment="neutral", topic="animals") -> ImageAnalysis:
    text_vec = random_vector(TEXT_DIM) if text_vec is None else np.asarray(text_vec)
    clip_vec = random_vector(CLIP_DIM) if clip_vec is None else np.asarray(clip_vec)
    scores = {"negative": 0.1, "neutral": 0.1, "positive": 0.1, sentiment: 0.8}
    return ImageAnalysis(
        caption=caption,
        labels={"objects": [Scored("dog", 0.9), Scored("cat", 0.05)], "scenes": [Scored("park", 0.7)],
                "medium": [Scored("photograph", 0.8)]},
        sentiment=Sentiment.from_scores(scores),
        image_sentiment=None,
        topics=[Scored(topic, 0.6)],
        caption_topics=[Scored(topic, 0.5)],
        caption_embedding=unit(text_vec),
        image_embedding=unit(clip_vec),
        model_ids={"captioner": "tiny-blip", "tagger": "tiny-clip"},
        width=640,
        height=480,
        format="JPEG",
    )


def ref(attachment_id: int, *, guild=GUILD_A, channel=PUBLIC, author=ALICE, message=None, when=T0,
        nsfw=False) -> ImageRef:
    message = attachment_id * 10 if message is None else message
    return ImageRef(
        attachment_id=attachment_id, message_id=message, channel_id=channel, guild_id=guild, author_id=author,
        jump_url=f"https://discord.com/channels/{guild or '@me'}/{channel}/{message}",
        attachment_url=f"https://cdn.example/{attachment_id}.jpg", filename=f"{attachment_id}.jpg",
        created_at=when, nsfw=nsfw,
    )


def settings_for(tmp_path: Path, **memory) -> Settings:
    return Settings(memory=MemorySettings(**memory), base_dir=str(tmp_path))


def queue_settings(**overrides: object) -> QueueSettings:
    """Small, quick queue settings for tests: no batching wait, a short queue; ``overrides`` win."""
    values: dict[str, object] = {"max_batch_size": 8, "max_wait_ms": 0.0, "max_queued": 64, "job_timeout_s": 60.0,
                                 "decode_workers": 2}
    return QueueSettings(**{**values, **overrides})  # type: ignore[arg-type]


# --------------------------------------------------------------------------- a real Chroma server


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ChromaServer:
    """A real ``chroma run`` on 127.0.0.1 that a test can kill (-9) and start again on the same port
    and data folder (or another folder: a server that lost its data)."""

    def __init__(self, cli: Path, data: Path, log: Path) -> None:
        self.cli, self.data, self.log = cli, data, log
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @staticmethod
    def find_cli() -> Path | None:
        chroma = Path(sys.executable).with_name("chroma")
        if chroma.exists():
            return chroma
        found = shutil.which("chroma")
        return Path(found) if found else None

    def start(self, *, timeout: float = 30.0) -> None:
        """Start and wait until it answers its heartbeat (RuntimeError with the log tail if it never does)."""
        assert self.process is None, "already running"
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [str(self.cli), "run", "--path", str(self.data), "--host", "127.0.0.1", "--port", str(self.port)],
                stdout=log, stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/api/v2/heartbeat", timeout=1):
                    return
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"chroma server did not start: {self.log.read_text()[-500:]}") from None
                time.sleep(0.1)  # polling for start-up, not an assertion

    def kill(self) -> None:
        """kill -9: no goodbye to open connections, like a crash or an OOM kill."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None


@contextlib.contextmanager
def running_chroma(folder: Path) -> Iterator[ChromaServer]:
    """A started :class:`ChromaServer` with its data and log in ``folder``, stopped afterwards (skips
    the test where the chroma CLI is missing or cannot start)."""
    cli = ChromaServer.find_cli()
    if cli is None:
        pytest.skip("the chroma CLI is not installed next to this Python")
    server = ChromaServer(cli, folder / "server-data", folder / "chroma-server.log")
    try:
        server.start()
    except RuntimeError as exc:
        pytest.skip(str(exc))
    try:
        yield server
    finally:
        server.stop()


# --------------------------------------------------------------------------- the Discord protocol peer


def reacted(server, message, emoji: str) -> bool:
    """Whether the bot has put ``emoji`` on ``message``, and not taken it back."""
    return any(r.message_id == message.id and r.emoji == emoji and r.added for r in server.reactions)


# ``timeout`` is handed to the harness's own wait (tests/harness/discord_server.py), like its other waits.
async def wait_reaction(server, message, emoji: str, *, timeout: float = 20.0) -> None:  # noqa: ASYNC109
    await server.wait_until(lambda: reacted(server, message, emoji), timeout=timeout, what=f"reaction {emoji}")


async def post_image(server, channel, user, name, data, text=""):
    """``user`` posts one JPEG ``name``.jpg; the message, once the bot has had its first look (👀)."""
    from cogs.images import SEEN_REACTION  # imported here: the cog pulls in the whole bot (torch)

    message = await server.post_message(channel, user, text, attachments=[(f"{name}.jpg", data, "image/jpeg")])
    await wait_reaction(server, message, SEEN_REACTION)
    return message


async def run_find(server, channel, user, query, **options):
    """``user`` runs /find; the bot's answer."""
    ix = await server.invoke_slash_command(channel, user, "find", {"query": query, **options})
    return await server.wait_for_message(predicate=lambda m: m.interaction is ix, timeout=20)


async def command(server, where, user, name, **options):
    """Run a slash command; the interaction and the bot's (first) visible answer to it."""
    ix = await server.invoke_slash_command(where, user, name, options)
    return ix, await server.wait_for_message(predicate=lambda m: m.interaction is ix, timeout=30.0)


def thumbnails(message) -> set[str]:
    """Attachment URLs shown as thumbnails in a bot message's embeds."""
    return {e["thumbnail"]["url"] for e in message.embeds if e.get("thumbnail")}


def url_of(message) -> str:
    """The URL of a message's first attachment."""
    return message.attachments[0].url


def store_count(bot, guild_id) -> int:
    """How many pictures of the guild the running bot's memory holds."""
    return bot.services.memory.store.store.count(Audience.everything(guild_id))


def user_prompt(ollama, index: int = -1) -> str:
    """What the LLM was told by users (system prompt excluded) in the index-th chat request."""
    return "\n".join(m["content"] for m in ollama.requests[index].messages if m["role"] == "user")


# --------------------------------------------------------------------------- charts


def count_bars(png: bytes, colour: str, chart: Chart) -> int:
    """Separate runs of exactly ``colour`` inside the plot area, across the bars' axis: vertical bars
    are counted left to right over columns, horizontal bars top to bottom over rows."""
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG"
    left, top, right, bottom = chart.plot_box
    pixels = np.asarray(image.convert("RGB")).astype(int)[top:bottom, left:right]
    target = np.array([int(colour[i:i + 2], 16) for i in (1, 3, 5)])
    match = (np.abs(pixels - target).sum(axis=2) <= 6)
    hits = match.any(axis=0 if chart.orientation == "vertical" else 1).astype(np.int8)
    return int((np.diff(hits) == 1).sum() + hits[0])


# ----- a local stand-in for the Hugging Face hub (models download, pre-flight sizes) -----


class FakeHub:
    """``GET /api/models/REPO`` (the file listing, with sizes) and ``HEAD``/``GET /REPO/resolve/REV/FILE``."""

    COMMIT = "0123456789abcdef0123456789abcdef01234567"

    def __init__(self, repos: dict[str, dict[str, bytes]]) -> None:
        self.repos = repos
        self.requests: list[tuple[str, str]] = []
        self.port = 0
        self._runner = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def __aenter__(self) -> FakeHub:
        from aiohttp import web

        app = web.Application()
        app.router.add_get("/api/models/{org}/{name}", self._info)
        app.router.add_get("/api/models/{org}/{name}/revision/{rev}", self._info)
        app.router.add_route("*", "/{org}/{name}/resolve/{rev}/{path:.+}", self._file)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._runner.cleanup()

    def _repo(self, request):
        from aiohttp import web

        repo = f"{request.match_info['org']}/{request.match_info['name']}"
        self.requests.append((request.method, request.path))
        if repo not in self.repos:
            raise web.HTTPNotFound(headers={"X-Error-Code": "RepoNotFound"})
        return repo, self.repos[repo]

    async def _info(self, request):
        from aiohttp import web

        repo, files = self._repo(request)
        return web.json_response({"id": repo, "sha": self.COMMIT, "siblings": [
            {"rfilename": name, "size": len(data)} for name, data in files.items()]})

    async def _file(self, request):
        import hashlib

        from aiohttp import web

        _, files = self._repo(request)
        data = files[request.match_info["path"]]
        headers = {"X-Repo-Commit": self.COMMIT, "ETag": f'"{hashlib.sha256(data).hexdigest()}"',
                   "X-Linked-Size": str(len(data))}
        if request.method == "HEAD":
            return web.Response(headers=headers)
        return web.Response(body=data, headers=headers)


def served(folder: Path) -> dict[str, bytes]:
    """A tiny model folder as a hub repo, plus copies the download must skip (TF/Flax weights)."""
    files = {path.relative_to(folder).as_posix(): path.read_bytes() for path in folder.rglob("*") if path.is_file()}
    return {**files, "tf_model.h5": b"x" * 5000, "flax_model.msgpack": b"x" * 5000}


# ----- pictures with text in them, rendered at test time (Pillow's built-in scalable font, so they
# look the same on every machine, fonts installed or not) -----


def screenshot(lines: list[str], *, size: tuple[int, int] = (900, 320), font_px: int = 30,
               background: str = "white", ink: str = "black", fmt: str = "PNG") -> bytes:
    """A plain screenshot-like picture: ``lines`` of dark text on a light background."""
    image = Image.new("RGB", size, background)
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=font_px)
    y = 30
    for line in lines:
        draw.text((30, y), line, fill=ink, font=font)
        y += int(font_px * 1.8)
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()
