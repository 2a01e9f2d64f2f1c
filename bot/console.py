"""``python -m bot console``: the bot's main job in a terminal, no Discord token needed.

Type a message and press Enter; mention image files by path anywhere in the line (or use
``/image PATH``) and they are analysed exactly as Discord attachments are, then the conversation
goes to the LLM with their ``[Image Attached: ...]`` lines. ``/quit`` (or Ctrl-D) ends it.
"""

from __future__ import annotations

import asyncio
import contextlib
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from bot.chat.conversation import Turn
from bot.config import Settings
from bot.ingest import IncomingImage
from bot.services import Services

BANNER = (
    "imagebot console. Type a message; add image paths to attach them (or /image PATH). /quit to leave.\n"
    "LLM: {model} at {url}"
)
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".gif", ".webp", ".bmp", ".tif", ".tiff", ".avif"}


def split_paths(line: str) -> tuple[str, list[Path]]:
    """Separate image paths from the text of a console line."""
    try:
        words = shlex.split(line)
    except ValueError:
        words = line.split()
    if words and words[0] == "/image":
        return "", [Path(word).expanduser() for word in words[1:]]
    paths, text = [], []
    for word in words:
        candidate = Path(word).expanduser()
        if candidate.suffix.lower() in IMAGE_SUFFIXES and (candidate.is_file() or "/" in word):
            paths.append(candidate)
        else:
            text.append(word)
    return " ".join(text), paths


def _reader(path: Path) -> Callable[[], object]:
    async def read() -> bytes:
        try:
            return await asyncio.to_thread(path.read_bytes)
        except OSError:
            return b""  # reported as an empty file, like a broken attachment

    return read


class Console:
    def __init__(self, services: Services, *, out: TextIO = sys.stdout, user: str = "you") -> None:
        self.services = services
        self.out = out
        self.user = user
        self.turns: list[Turn] = []

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    async def handle(self, line: str) -> None:
        text, paths = split_paths(line)
        images = [IncomingImage(key=str(p.resolve()), filename=p.name, size=None, read=_reader(p)) for p in paths]
        outcomes = await self.services.ingestor.ingest(images, rate_limit=False) if images else []
        for outcome in outcomes:
            if outcome.analysis is not None:
                self.say(f"  (bot sees {outcome.image.filename}) {outcome.analysis.context_line()}")
            else:
                self.say(f"  (bot could not read {outcome.image.filename}) {outcome.problem}")
        analyses = [o.analysis for o in outcomes if o.analysis is not None]
        self.turns.append(Turn(author=self.user, text=text, images=analyses,
                               unreadable_images=len(outcomes) - len(analyses)))
        history = self.turns[-(self.services.settings.chat.history_messages + 1):]
        for chunk in await self.services.chat.answer(history):
            self.say(f"imagebot> {chunk}")
            self.turns.append(Turn(author="imagebot", text=chunk, from_bot=True))


async def run_console(settings: Settings, *, stdin: TextIO = sys.stdin, out: TextIO = sys.stdout) -> int:
    services = Services(settings, with_memory=False)  # console images have no Discord home to file them under
    console = Console(services, out=out)
    console.say(BANNER.format(model=settings.llm.model, url=settings.llm.base_url))
    console.say("loading models...")
    try:
        await services.start()
    except Exception as exc:  # a model folder that fails to load, ...: one line, like `run` (bot/cli.py)
        with contextlib.suppress(Exception):
            await services.close()
        detail = " ".join(f"{type(exc).__name__}: {exc}".split())
        print(f"error: the console could not start: {detail}", file=sys.stderr)
        return 1
    try:
        while True:
            if stdin.isatty():
                out.write("you> ")
                out.flush()
            line = await asyncio.to_thread(stdin.readline)
            if not line:
                break
            line = line.strip()
            if line in ("/quit", "/exit"):
                break
            if line:
                await console.handle(line)
    finally:
        await services.close()
    return 0
