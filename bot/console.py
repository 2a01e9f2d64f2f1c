"""``python -m bot console``: the bot in a terminal, with its memory, no Discord token needed.

Why: to try the bot, or work on it, without a Discord server. The console builds the same
:class:`~bot.services.Services` as ``run`` (inference queue, ingestion, chat, memory) and calls the same
core functions the cogs call, so what it shows is what Discord would get:

* a line with image paths in it (or ``/image PATH...``): the pictures are analysed exactly as Discord
  attachments are, *remembered*, and the conversation goes to the LLM with their
  ``[Image Attached: ...]`` lines (as a mention with attachments does, cogs/chat.py);
* a search in plain words ("show me the cat picture from earlier"): recognised by
  :func:`bot.memory.intent.detect_search_intent` and answered from the memory, as the chat cog's
  ``answer_search`` does (cogs/utils/chat_search.py), never sent to the LLM;
* ``/find WORDS``, ``/vibe PATH [PATH]``, ``/forget``, ``/help``, ``/quit`` (or Ctrl-D).

The memory: the console is one user (:data:`CONSOLE_USER_ID`) talking to the bot in DMs, so its pictures
live in that user's DM space of the configured memory (``[memory]``: embedded Chroma at ``memory.path``
by default), which no guild and no Discord user can reach, and stay there between sessions. The same
picture shown twice is one record: its id is a hash of its bytes (a later session's showing updates its
path and time; within a session it is not analysed or stored again).
Do not run the console and the bot on the same *embedded* memory folder at once: Chroma's embedded
client is single-process (the HTTP backend has no such limit).

A path that is not there says ``no such file: PATH`` and nothing of the line is sent on: the user retypes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from bot.chat.conversation import Turn
from bot.chat.llm import ChatLLM
from bot.config import Settings
from bot.errors import UserFacingError
from bot.ingest import IncomingImage
from bot.memory.intent import SearchIntent, detect_search_intent
from bot.memory.records import ImageRef, StoredImage
from bot.memory.service import Audience, Filters
from bot.memory.store import SearchHit
from bot.services import Services, memory_phase, shown_path

if TYPE_CHECKING:
    from bot.vibe import VibeScorer

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".gif", ".webp", ".bmp", ".tif", ".tiff", ".avif"}
# The console's identity in the memory: a DM user and channel no Discord account can have (Discord ids
# are snowflakes around 2**60), so console pictures never mix with anyone's.
CONSOLE_USER_ID = 1
CONSOLE_CHANNEL_ID = 1
RESULT_LIMIT = 8
VIBE_CHART = "imagebot-vibe-compare.png"

BANNER = ("imagebot console: type a message, put image paths in it to show pictures. "
          "/help lists the commands, /quit leaves.")
HELP = """\
commands:
  PATH [more text]        show pictures (any image path in a line attaches it) and chat about them
  /image PATH...          show files whatever their names end with
  show me the cat picture from earlier
                          plain words find pictures you showed before (also "any photos from today?")
  /find WORDS             search the pictures you showed (no words: the newest)
  /vibe PATH [PATH2]      rate a photo as a profile picture (0-10), or compare two
  /forget                 forget every picture you showed here (asks first)
  /help                   this list
  /quit                   leave (Ctrl-D too)"""
COMMANDS = ("/help", "/image", "/find", "/vibe", "/forget", "/quit", "/exit")
MEMORY_OFF = "My memory is off in this session (started with --no-memory)."


# A word: a quoted string (a path with spaces) or a run of non-spaces. Not shlex: chat is full of
# apostrophes ("what's this?"), and an unmatched quote must not eat or reshape the text.
_WORD = re.compile(r"""'([^']*)'|"([^"]*)"|(\S+)""")


def split_words(line: str) -> list[str]:
    """The line's words, quotes taken off (``'my cat.jpg'`` is one word)."""
    return [next(group for group in match.groups() if group is not None) for match in _WORD.finditer(line)]


def paths_of(words: Sequence[str]) -> list[Path]:
    """Typed words as paths (``~`` expanded)."""
    return [Path(word).expanduser() for word in words]


def split_paths(line: str) -> tuple[str, list[Path]]:
    """Separate image paths from the text of a console line (the text keeps its words as typed).

    A word is a path when it ends like an image file (``cat.jpg``) whether or not it exists, so that a
    mistyped path is reported rather than chatted about; ``/image`` makes every word after it a path."""
    words = split_words(line)
    if words and words[0] == "/image":
        return "", paths_of(words[1:])
    paths, text = [], []
    for match in _WORD.finditer(line):
        word = next(group for group in match.groups() if group is not None)
        if Path(word).suffix.lower() in IMAGE_SUFFIXES:
            paths.append(Path(word).expanduser())
        else:
            text.append(match.group(0))
    return " ".join(text), paths


def _printable(path: Path | str) -> str:
    from bot.cli import printable_path

    return printable_path(path)


@dataclass(frozen=True)
class Picture:
    """A file the user named, read (or not: ``problem`` says why, as one line)."""

    path: Path
    data: bytes = b""
    size: int | None = None
    problem: str | None = None
    url: str = ""  # file:// URL of the absolute path: what the memory keeps as the picture's address


def read_picture(path: Path, max_bytes: int) -> Picture:
    """The file's bytes; a file over ``max_bytes`` is not read (the ingestor refuses it by its size)."""
    shown = _printable(path)
    try:
        size = path.stat().st_size
        if path.is_dir():
            return Picture(path, problem=f"not a file: {shown}")
        if size > max_bytes:
            return Picture(path, size=size)
        data = path.read_bytes()
        url = path.resolve().as_uri()
    except FileNotFoundError:
        return Picture(path, problem=f"no such file: {shown}")
    except OSError as exc:
        return Picture(path, problem=f"cannot read {shown}: {exc.strerror or exc}")
    return Picture(path, data, len(data), url=url)


def picture_id(data: bytes) -> int:
    """A stable attachment id for these bytes: 62 bits of their SHA-256, never 0 (a snowflake's range)."""
    return (int.from_bytes(hashlib.sha256(data).digest()[:8], "big") >> 2) or 1


def file_of(image: StoredImage) -> str:
    """Where a remembered console picture was (its ``file://`` URL back to a path)."""
    url = image.ref.attachment_url
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme == "file":
        return _printable(shown_path(Path(urllib.request.url2pathname(parsed.path))))
    return url


def result_line(number: int, result: SearchHit | StoredImage) -> str:
    """One search result: where the file was, what the bot saw, and when it was shown."""
    image = result.image if isinstance(result, SearchHit) else result
    when = image.ref.created_at.astimezone().strftime("%Y-%m-%d %H:%M")
    details = [", ".join(image.labels)] if image.labels else []
    details += [f"mood {image.sentiment}", when]
    return f"  {number}. {file_of(image)} — {image.display_caption} ({'; '.join(details)})"


def terminal_text(text: str) -> str:
    """Discord markdown the terminal would print literally (``**bold**``) taken out."""
    return text.replace("**", "")


class PrintedPhases:
    """Start-up phases on the console's output: ``loading models (...)… done in 3.1 s``."""

    def __init__(self, out: TextIO) -> None:
        self.out = out

    @contextlib.contextmanager
    def phase(self, what: str) -> Iterator[None]:
        self.out.write(f"{what}… ")
        self.out.flush()
        started = time.perf_counter()
        try:
            yield
        except BaseException:
            print("failed", file=self.out, flush=True)
            raise
        print(f"done in {time.perf_counter() - started:.1f} s", file=self.out, flush=True)


class Console:
    """One console conversation: what the user typed, the bot's answers, and the commands."""

    def __init__(self, services: Services, *, out: TextIO = sys.stdout, user: str = "you") -> None:
        self.services = services
        self.settings = services.settings
        self.out = out
        self.user = user
        self.turns: list[Turn] = []
        self._last_message_id = 0
        self._scorer: VibeScorer | None = None
        self._forget_asked = False
        self.audience = Audience(CONSOLE_USER_ID, None, None, allow_nsfw=False)  # the console's DM space

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def reply(self, text: str, *, remembered: str | None = None) -> None:
        """The bot's answer, remembered as its turn of the conversation (as ``remembered`` when given:
        what the LLM should know it said, e.g. which files a search listed)."""
        self.say(f"imagebot> {text}")
        self.turns.append(Turn(author="imagebot", text=text if remembered is None else remembered, from_bot=True))

    # ----- one line -----

    async def handle(self, line: str) -> None:
        words = split_words(line)
        command = words[0].lower() if words else ""
        forget_asked, self._forget_asked = self._forget_asked, False
        if command == "/help":
            self.say(HELP)
        elif command == "/find":
            await self.find(" ".join(words[1:]))
        elif command == "/vibe":
            await self.vibe(paths_of(words[1:]))
        elif command == "/forget":
            await self.forget(confirmed=forget_asked and words[1:] == ["yes"])
        elif command == "/image" and len(words) == 1:
            self.say("  usage: /image PATH...")
        elif command.startswith("/") and command.count("/") == 1 and command not in COMMANDS \
                and not split_paths(command)[1]:  # "/fnd cat" is a typo, "/cat.jpg" a picture
            self.say(f"  unknown command {_printable(words[0])}: /help lists the commands")
        else:
            await self.post(line)

    async def post(self, line: str) -> None:
        """Text and pictures, like a message that mentions the bot: analyse and remember the pictures,
        then answer a search from the memory, or chat."""
        text, paths = split_paths(line)
        pictures = await self._read(paths)
        if pictures is None:
            return
        images = [self._incoming(picture) for picture in pictures]
        outcomes = await self.services.ingestor.ingest(images, rate_limit=False) if images else []
        for outcome in outcomes:
            name = _printable(outcome.image.filename)
            if outcome.analysis is not None:
                self.say(f"  (bot sees {name}) {outcome.analysis.context_line()}")
            else:
                self.say(f"  (bot could not read {name}) {outcome.problem}")
        analysed = [outcome for outcome in outcomes if outcome.analysis is not None]
        self.turns.append(Turn(author=self.user, text=text,
                               images=[outcome.analysis for outcome in analysed if outcome.analysis is not None],
                               unreadable_images=len(outcomes) - len(analysed),
                               pictures=[outcome.image for outcome in analysed]))
        intent = self._search_intent(text)
        if intent is not None:
            await self.answer_search(intent)
            return
        history = self.turns[-(self.settings.chat.history_messages + 1):]
        chunks = await self.services.chat.answer(history, decode=self.services.decoder.decode)
        for chunk in chunks:
            self.reply(chunk)

    async def _read(self, paths: Sequence[Path]) -> list[Picture] | None:
        """The named files, or None (after saying which) when one of them cannot be read at all."""
        limit = self.settings.images.max_bytes
        pictures = await asyncio.to_thread(lambda: [read_picture(path, limit) for path in paths])
        problems = [picture.problem for picture in pictures if picture.problem]
        for problem in problems:
            self.say(f"  {problem}")
        return None if problems else pictures

    def _incoming(self, picture: Picture) -> IncomingImage:
        """An image the ingestor handles like an attachment, filed under the console's DM space."""
        data = picture.data

        async def read() -> bytes:
            return data

        if picture.size is not None and picture.size > len(data):  # too large: refused by its size, unread
            return IncomingImage(key=str(picture.path), filename=picture.path.name, size=picture.size, read=read)
        attachment_id = picture_id(data)
        ref = ImageRef(attachment_id=attachment_id, message_id=self._message_id(), channel_id=CONSOLE_CHANNEL_ID,
                       guild_id=None, author_id=CONSOLE_USER_ID, jump_url=picture.url, attachment_url=picture.url,
                       filename=picture.path.name, created_at=datetime.now(UTC))
        # Keyed by content, not path: an edited file is a new picture, a copy elsewhere is the same one.
        return IncomingImage(key=f"console:{attachment_id}", filename=picture.path.name, size=len(data),
                             read=read, ref=ref if self.services.memory is not None else None)

    def _message_id(self) -> int:
        """Increasing ids for the console's "messages" (microseconds since 1970, like a time-ordered id)."""
        self._last_message_id = max(self._last_message_id + 1, time.time_ns() // 1000)
        return self._last_message_id

    # ----- memory -----

    def _search_intent(self, text: str) -> SearchIntent | None:
        if self.services.memory is None:
            return None
        return detect_search_intent(text, now=datetime.now().astimezone())

    async def answer_search(self, intent: SearchIntent) -> None:
        """A search asked in plain words, answered like cogs/utils/chat_search.py ``answer_search`` answers it."""
        author_id = CONSOLE_USER_ID if intent.author_hint == "me" else None
        if author_id is None and intent.author_hint:
            intent = intent.without_author()  # "photos from paris": a place, not a person
        filters = Filters(author_id=author_id, since=intent.since, until=intent.until)
        found = await self._find(intent.query, filters)
        if found is None:
            return
        if not found:
            self.reply("I couldn't find a picture like that here.")
            return
        heading = f"Here's what I found for “{intent.query}”:" if intent.query else "Here's what I found:"
        self._show(heading, found)

    async def find(self, query: str) -> None:
        """``/find WORDS``: the pictures shown here that best match, or the newest without words."""
        found = await self._find(query.strip(), Filters())
        if found is None:
            return
        if not found:
            self.reply(f"I couldn't find any pictures matching “{query.strip()}”." if query.strip()
                       else "I don't remember any pictures from the console yet.")
            return
        self._show(f"Pictures matching “{query.strip()}”:" if query.strip() else "The newest pictures:", found)

    async def _find(self, query: str, filters: Filters) -> list[SearchHit] | list[StoredImage] | None:
        memory = self.services.memory
        if memory is None:
            self.reply(MEMORY_OFF)
            return None
        try:
            return await memory.find(query, self.audience, filters, limit=RESULT_LIMIT)
        except UserFacingError as exc:  # the memory is down, or the query could not be embedded
            self.reply(exc.user_message)
            return None

    def _show(self, heading: str, results: Sequence[SearchHit | StoredImage]) -> None:
        names = ", ".join(r.ref.filename for r in (r.image if isinstance(r, SearchHit) else r for r in results))
        self.reply(heading, remembered=f"{heading} {names}")
        for number, result in enumerate(results, start=1):
            self.say(result_line(number, result))

    async def forget(self, *, confirmed: bool) -> None:
        """``/forget``, then ``/forget yes``: the console's pictures leave the memory."""
        memory = self.services.memory
        if memory is None:
            self.reply(MEMORY_OFF)
            return
        if not confirmed:
            self._forget_asked = True
            self.reply("This removes everything I remember about the pictures you showed in the console. "
                       "Type /forget yes to go ahead.")
            return
        try:
            removed = await memory.forget(None, CONSOLE_USER_ID)
        except UserFacingError as exc:  # the store is down: the request is queued
            self.reply(exc.user_message)
            return
        self.reply(f"Done: I forgot {removed} picture(s) you showed in the console.")

    # ----- /vibe -----

    def _vibe_scorer(self) -> VibeScorer:
        """Built on first use, like the /vibe cog builds it (the profile file, the story's own LLM)."""
        from bot.vibe import STORY_SEED, STORY_TEMPERATURE, VibeScorer, load_profile, profile_path

        if self._scorer is None:
            queue = self.services.queue
            self._scorer = VibeScorer(
                analyze=queue.analyze,
                clip_texts=queue.clip_texts,
                score_sentiment=lambda texts: queue.score_sentiment(texts),
                llm=ChatLLM(self.settings.llm, temperature=STORY_TEMPERATURE, seed=STORY_SEED),
                profile=load_profile(profile_path(self.settings.labels_dir)),
                max_bytes=self.settings.images.max_bytes,
                max_pixels=self.settings.images.max_pixels,
                decode=self.services.decoder.decode,
            )
        return self._scorer

    async def vibe(self, paths: Sequence[Path]) -> None:
        """``/vibe PATH``: the profile-picture rating; ``/vibe A B``: which of two works better.
        Nothing /vibe sees is remembered (as on Discord)."""
        from bot.vibe import comparison_chart, render_comparison, render_result

        if not 1 <= len(paths) <= 2:
            self.say("  usage: /vibe PATH, or /vibe PATH1 PATH2 to compare two photos")
            return
        pictures = await self._read(paths)
        if pictures is None:
            return
        scorer = self._vibe_scorer()
        try:
            if len(pictures) == 1:
                text = render_result(await scorer.score(pictures[0].data, filename=pictures[0].path.name))
            else:
                first, second = pictures
                comparison = await scorer.compare(first.data, second.data,
                                                  filenames=(first.path.name, second.path.name))
                chart = Path(tempfile.gettempdir()) / VIBE_CHART
                await asyncio.to_thread(lambda: chart.write_bytes(comparison_chart(comparison)))
                text = render_comparison(comparison).replace(
                    "The chart shows every part side by side.", f"Chart, every part side by side: {chart}")
        except UserFacingError as exc:  # a bad file, a busy or timed-out queue
            self.reply(exc.user_message)
            return
        self.reply(terminal_text(text))


# ----- the loop ------------------------------------------------------------------------------


def _line_reader(stdin: TextIO, out: TextIO) -> Callable[[], Awaitable[str | None]]:
    """The next line (None at the end): ``input()`` with line editing and a prompt on a terminal, else
    plain reads (a pipe, a test) with no prompt in the transcript."""
    interactive = stdin is sys.stdin and out is sys.stdout and stdin.isatty()
    if interactive:
        with contextlib.suppress(ImportError):
            import readline  # noqa: F401  (arrow keys and history for input())

    async def next_line() -> str | None:
        if interactive:
            try:
                return await asyncio.to_thread(input, "you> ")
            except EOFError:
                return None
        line = await asyncio.to_thread(stdin.readline)
        return line or None

    return next_line


def memory_where(settings: Settings, *, memory: bool) -> str:
    """What the banner says about the memory."""
    if not memory:
        return "off (--no-memory)"
    return memory_phase(settings).removeprefix("opening memory ").removeprefix("at ") + " (the console's own space)"


async def run_console(settings: Settings, *, memory: bool = True, stdin: TextIO = sys.stdin,
                      out: TextIO = sys.stdout, err: TextIO | None = None) -> int:
    """The console session; 0 when the user leaves, 1 when the services cannot start."""
    services = Services(settings, with_memory=memory, phases=PrintedPhases(out))
    console = Console(services, out=out)
    console.say(BANNER)
    where = memory_where(settings, memory=memory)
    console.say(f"LLM: {settings.llm.model} at {settings.llm.base_url} · memory: {where}")
    try:
        await services.start()
    except Exception as exc:  # a model folder that fails to load, ...: one line, like `run` (bot/cli.py)
        with contextlib.suppress(Exception):
            await services.close()
        detail = " ".join(f"{type(exc).__name__}: {exc}".split())
        print(f"error: the console could not start: {detail}", file=err or sys.stderr)
        return 1
    next_line = _line_reader(stdin, out)
    try:
        while True:
            line = await next_line()
            if line is None:
                break
            line = line.strip()
            if line.lower() in ("/quit", "/exit"):
                break
            if line:
                await console.handle(line)
    finally:
        await services.close()
    return 0

