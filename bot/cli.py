"""``python -m bot``: the command line.

    run                      the Discord bot (DISCORD_TOKEN from the environment)
    console                  the same pipeline, chat and memory in this terminal, no token needed (docs/console.md)
    serve-ray [...]          deploy the model worker on a Ray cluster (scale-out, docs/scale-out-ray.md)
    healthcheck              exit 0 if a running bot's heartbeat file is fresh (container healthcheck)
    describe IMAGE...        one [Image Attached: ...] line per image (--json: full records)
    models check             which configured models are on this machine
    models download          fetch the missing ones, saying what and how big first (needs internet access)
    models tiny DIR          tiny random-weight stand-ins + a config using them (offline tests)
    compare [--guild ID]     caption-only vs image-informed sentiment and topic: agreement report
    topics --guild ID        discover topics by clustering the guild's captions (saved for /gallery)

Known failures (bad config, missing model, unreadable image) print one clear line to stderr and
exit non-zero; a traceback means a bug. ``run`` and ``console`` check label files, model weights,
the memory backend and Ollama first (bot/preflight.py), so a local problem stops them before any
Discord login; a rejected token or an unreachable Discord is one line too.

The global options (``--config``, ``-v``) go before or after the subcommand, and every subcommand's
``--help`` ends with what it reads (environment variables, files, servers), from :data:`READS`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import textwrap
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bot.config import ConfigError, Settings, load_settings
from bot.errors import UserFacingError
from bot.labels import LabelSetError
from bot.models.errors import ModelUnavailable

if TYPE_CHECKING:
    from bot.analysis import ImageAnalysis
    from bot.inference import InferenceBackend, QueueMetrics

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
log = logging.getLogger("bot")
# Loggers whose INFO lines are per-request ("HTTP Request: POST .../api/chat"), model-loading chatter
# or "logging in using static token" (discord.client): `run` keeps them at WARNING so the bot's own INFO
# lines and discord.py's connection state (discord.gateway, discord.shard) stay readable; -v shows all.
QUIET_LOGGERS = (
    "httpx", "httpcore", "urllib3", "chromadb", "transformers", "sentence_transformers", "open_clip",
    "huggingface_hub", "filelock", "PIL", "matplotlib", "discord.client",
)

# Loggers whose warnings the console's answer itself puts in words ("My language model is offline right
# now", "The story part was skipped"): in the console they would print the same news twice, mid-transcript.
CONSOLE_ANSWERED_LOGGERS = ("bot.chat", "bot.vibe")


def setup_logging(*, verbose: bool, service: bool) -> None:
    """stderr logging: WARNING and up, or INFO with ``-v``; ``service`` (``run``) logs the bot's own
    INFO lines (ready, synced commands, ...) but keeps the libraries above at WARNING unless ``-v``."""
    level = logging.INFO if verbose or service else logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger().setLevel(level)
    if service and not verbose:
        for name in QUIET_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)
        for handler in logging.getLogger().handlers:
            handler.addFilter(_below_warning_from_libraries_on_root)


# Libraries that log through the root logger itself (open_clip's model-loading chatter), so that no
# logger name can quiet them: their INFO lines are dropped by path unless -v.
_ROOT_LOGGING_LIBRARIES = (f"{os.sep}open_clip{os.sep}",)


def _below_warning_from_libraries_on_root(record: logging.LogRecord) -> bool:
    return not (record.name == "root" and record.levelno < logging.WARNING
                and any(part in record.pathname for part in _ROOT_LOGGING_LIBRARIES))


def _quiet_libraries() -> None:
    """No model-*loading* progress bars from transformers (stderr stays for problems), but the hub's
    *download* bars stay on: a first download is hundreds of MB, and a bar per file, named and sized, is
    how a user knows it is moving (``HF_HUB_DISABLE_PROGRESS_BARS=1`` still turns them off)."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        import transformers

        transformers.utils.logging.disable_progress_bar()  # also switches the hub's bars off...
        transformers.utils.logging.set_verbosity_error()
    except ImportError:  # pragma: no cover - transformers is a hard dependency
        pass
    from huggingface_hub import constants
    from huggingface_hub.utils import enable_progress_bars

    if constants.HF_HUB_DISABLE_PROGRESS_BARS is not True:
        enable_progress_bars()  # ...so the download bars come back on here


def _settings(args: argparse.Namespace) -> Settings:
    return load_settings(args.config)


def printable_path(path: str | os.PathLike[str]) -> str:
    """A file name as one terminal-safe line: newlines, carriage returns, escape sequences and other
    unprintable characters come out escaped (``\\n``, ``\\x1b``), undecodable bytes as ``\\xff``."""

    def escape(char: str) -> str:
        code = ord(char)
        if 0xDC80 <= code <= 0xDCFF:  # a byte that was not UTF-8, kept by surrogateescape
            return f"\\x{code - 0xDC00:02x}"
        return repr(char)[1:-1]

    return "".join(char if char.isprintable() else escape(char) for char in os.fspath(path))


# ----- describe -------------------------------------------------------------------------------------
# Every picture goes through the inference backend Services builds for the bot (the local queue, or the
# Ray client with `[inference] backend = "ray"`): one batching, timeout, out-of-memory and priority
# policy, the same decode sandbox and the reader's own gray copy, the same typed refusals.

# Above this many IMAGE arguments, a progress line goes to stderr every this many files and at the end
# (a short run keeps stderr for problems only).
_DESCRIBE_PROGRESS_EVERY = 25
# After Ctrl-C, how long the backend may take to stop: a batch already in the models runs on in its
# (daemon) thread and is abandoned at exit, rather than holding the terminal for a whole batch.
_DESCRIBE_STOP_GRACE_S = 1.0
# What main() reports as one clear line itself (a missing model, a bad label file, the Ray app not answering).
_ONE_LINE_FAILURES: tuple[type[Exception], ...] = (ConfigError, ModelUnavailable, LabelSetError, UserFacingError)


class _BackendStartFailed(Exception):
    """The backend did not start for another reason (a model folder that fails to load): one line, as
    ``run`` and ``console`` say it, not a traceback (which would read as a bug in the bot)."""


@dataclass(frozen=True)
class _Described:
    """One IMAGE argument's outcome: its analysis, or the one-line reason it has none."""

    path: str
    analysis: ImageAnalysis | None = None
    error: str | None = None


class _DescribeOutput:
    """Prints outcomes as they come, in input order: a line per image on stdout (errors on stderr),
    or with ``--json`` the one JSON array of ``json.dumps(records, indent=2)``, written an item at a
    time so that a long run neither waits to the end to show anything nor holds every record."""

    def __init__(self, *, as_json: bool, total: int) -> None:
        self.as_json = as_json
        self.total = total
        self.done = 0
        self.failed = 0

    def emit(self, item: _Described) -> None:
        if item.analysis is None:
            self.failed += 1
        if self.as_json:
            print("[" if not self.done else ",")
            print(textwrap.indent(json.dumps(self._record(item), indent=2), "  "), end="")
        elif item.analysis is not None:
            print(f"{printable_path(item.path)}: {item.analysis.context_line()}")
        else:
            print(f"{printable_path(item.path)}: error: {printable_path(item.error or 'failed')}", file=sys.stderr)
        self.done += 1
        if self.total > _DESCRIBE_PROGRESS_EVERY and (
            self.done % _DESCRIBE_PROGRESS_EVERY == 0 or self.done == self.total
        ):
            print(f"describe: {self.done}/{self.total} images done, {self.failed} failed", file=sys.stderr,
                  flush=True)

    def finish(self) -> None:
        """Close the JSON array (only after every item: an interrupted run leaves it visibly unfinished)."""
        if self.as_json:
            print("\n]" if self.done else "[]")

    @staticmethod
    def _record(item: _Described) -> dict[str, Any]:
        if item.analysis is None:
            return {"path": item.path, "error": item.error}
        return {"path": item.path, "analysis": item.analysis.to_dict(), "context_line": item.analysis.context_line()}


def cmd_describe(args: argparse.Namespace) -> int:
    """One ``[Image Attached: ...]`` line (or JSON record) per IMAGE, in input order; 1 if any failed.

    A file that cannot be read, or that the decoder refuses, or whose job the backend gives up on, is
    one ``PATH: error: ...`` line on stderr and does not stop the others."""
    import asyncio

    settings = _settings(args)
    output = _DescribeOutput(as_json=args.json, total=len(args.images))
    try:
        asyncio.run(_describe(settings, [Path(raw) for raw in args.images], output.emit))
    except _BackendStartFailed as exc:
        cause = exc.__cause__ or exc
        detail = " ".join(f"{type(cause).__name__}: {cause}".split())
        print(f"error: the inference backend could not start: {detail}", file=sys.stderr)
        return EXIT_FAILED
    output.finish()
    return EXIT_FAILED if output.failed else EXIT_OK


async def _describe(settings: Settings, paths: Sequence[Path], emit: Callable[[_Described], None]) -> None:
    """Start the backend as the bot does (``Services``, without Discord or memory), describe, stop it.

    A normal end drains (nothing is left by then); Ctrl-C or a failure stops without draining, so the
    process exits promptly instead of finishing the queue's work first."""
    from bot.services import Services

    try:
        services = Services(settings, with_memory=False)
    except ImportError as exc:  # `[inference] backend = "ray"` without the optional ray extra
        if settings.inference.backend != "ray":
            raise
        raise _BackendStartFailed() from exc
    try:
        with _warnings_to_log():
            with _without_logged_load_failure():
                try:
                    await services.start()
                except _ONE_LINE_FAILURES:
                    raise
                except Exception as exc:
                    raise _BackendStartFailed() from exc
            await _describe_files(services.queue, paths, emit, window=_describe_window(settings),
                                  max_bytes=settings.images.max_bytes)
        _log_backend_summary(services.queue.metrics)
    except BaseException:
        with contextlib.suppress(Exception):  # the original error (or Ctrl-C) is what gets reported
            await services.close(drain=False, timeout=_DESCRIBE_STOP_GRACE_S)
        raise
    await services.close()


def _describe_window(settings: Settings) -> int:
    """How many files are read and in the backend at once: two batches (one in the models while the
    next one decodes), never more than ``queue.max_queued`` (so no file is refused as "busy"), and
    so at most that many files' bytes in memory however many IMAGE arguments there are."""
    queue = settings.queue
    return max(1, min(queue.max_queued, 2 * queue.max_batch_size))


async def _describe_files(backend: InferenceBackend, paths: Sequence[Path], emit: Callable[[_Described], None], *,
                          window: int, max_bytes: int) -> None:
    """Submit each file as its own interactive job (the backend batches them), ``window`` at a time,
    and hand outcomes to ``emit`` in input order as soon as each one and all before it are done."""
    import asyncio

    running: dict[asyncio.Task[_Described], int] = {}
    finished: dict[int, _Described] = {}
    submitted = emitted = 0
    try:
        while emitted < len(paths):
            # Finished-but-unprinted outcomes are bounded too: a slow first file holds back the rest.
            while submitted < len(paths) and len(running) < window and submitted - emitted < 4 * window:
                running[asyncio.create_task(_describe_file(backend, paths[submitted], max_bytes))] = submitted
                submitted += 1
            done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                finished[running.pop(task)] = task.result()
            while emitted in finished:
                emit(finished.pop(emitted))
                emitted += 1
    finally:  # Ctrl-C or a bug: jobs not yet in the models are released and never run
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)


async def _describe_file(backend: InferenceBackend, path: Path, max_bytes: int) -> _Described:
    """One file's outcome; only a bug raises. The file is read up to one byte past ``images.max_bytes``,
    so an oversized (or endless: ``/dev/zero``) file is refused by the decoder's own size rule, and
    its bytes go in with its name as the bot's attachments do: the decoder's refusals can name it."""
    from bot.imaging import ImageRejected
    from bot.inference import InferenceError, Priority

    shown = str(path)
    try:
        data = await _read_at_most(path, max_bytes + 1)
    except OSError as exc:
        return _Described(shown, error=f"cannot read file: {exc.strerror or exc}")
    try:
        analysis = await backend.analyze(data, filename=path.name, priority=Priority.INTERACTIVE)
    except ImageRejected as exc:
        return _Described(shown, error=exc.user_message)
    except InferenceError as exc:  # timed out, out of memory, worker crashed, ...: said as the bot says it
        return _Described(shown, error=f"{exc.user_message} ({exc.detail})" if exc.detail else exc.user_message)
    return _Described(shown, analysis=analysis)


async def _read_at_most(path: Path, limit: int) -> bytes:
    """The file's first ``limit`` bytes, read in a daemon thread of its own rather than the loop's
    executor: a read that never returns (a FIFO nobody writes to) is abandoned at Ctrl-C, where
    ``asyncio.run`` would wait for an executor thread forever."""
    import asyncio
    import threading

    loop = asyncio.get_running_loop()
    future: asyncio.Future[bytes] = loop.create_future()

    def settle(data: bytes | None, error: BaseException | None) -> None:
        if future.done():  # cancelled meanwhile
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(data or b"")

    def read() -> None:
        data, error = None, None
        try:
            with path.open("rb") as file:
                data = file.read(limit)
        except Exception as exc:
            error = exc
        with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits for this any more
            loop.call_soon_threadsafe(settle, data, error)

    threading.Thread(target=read, name="imagebot-describe-read", daemon=True).start()
    return await future


@contextlib.contextmanager
def _without_logged_load_failure() -> Iterator[None]:
    """While the backend starts: drop the inference queue's logged traceback of a model-loading
    failure. ``start()`` raises that same exception, and describe reports it as one line; the
    traceback as well would read as a bug (later crash logs, during the jobs, are kept)."""
    from bot.inference import InferenceQueue

    def keep(record: logging.LogRecord) -> bool:
        return not record.exc_info

    logger = logging.getLogger(InferenceQueue.__module__)
    logger.addFilter(keep)
    try:
        yield
    finally:
        logger.removeFilter(keep)


@contextlib.contextmanager
def _warnings_to_log() -> Iterator[None]:
    """Python warnings raised while describing (Pillow's TIFF metadata warnings print its source path
    when ``images.isolate_decoding`` is off and files decode in this process) go to the log at INFO,
    shown with ``-v``: stderr stays one line per problem file."""

    def to_log(message: Warning | str, category: type[Warning], filename: str, lineno: int,
               file: Any = None, line: str | None = None) -> None:
        log.info("while describing: %s: %s", category.__name__, message)

    with warnings.catch_warnings():
        warnings.showwarning = to_log
        yield


def _log_backend_summary(metrics: QueueMetrics) -> None:
    """With ``-v``: how the backend ran the images (its jobs' outcomes and, where it forms them in this
    process, its batches), from the backend's own metrics."""
    snapshot = metrics.snapshot()
    outcomes = snapshot["jobs_by_kind"].get("image", {})
    line = (f"describe: {sum(outcomes.values())} image job(s) through the inference backend "
            f"({', '.join(f'{outcome} {count}' for outcome, count in sorted(outcomes.items())) or 'none'})")
    batches = snapshot["batch_size"].get("image")
    if batches:
        line += f"; {batches['count']} model batch(es), largest {batches['max']}"
    log.info("%s", line)


def cmd_models_check(args: argparse.Namespace) -> int:
    from bot.models.check import check_models

    rows = check_models(_settings(args))
    width = max(len(row.model_id) for row in rows)
    for row in rows:
        mark = "ok     " if row.present else "MISSING"
        print(f"{mark} {row.role:<10} {row.model_id:<{width}}  {row.where}")
    missing = [row for row in rows if not row.present]
    if missing:
        print(
            f"{len(missing)} model(s) need a download: run `python -m bot models download` on a machine "
            "with internet access (then copy ~/.cache/huggingface to an offline host).",
            file=sys.stderr,
        )
        return EXIT_FAILED
    return EXIT_OK


def _hub_cache(settings: Settings) -> str:
    from huggingface_hub import constants

    return printable_path(settings.models.cache_dir or constants.HF_HUB_CACHE)


def cmd_models_download(args: argparse.Namespace) -> int:
    """Say what will be fetched and how big, then fetch it a file at a time (a bar per file on a terminal)."""
    from bot.models.check import check_models, download_models, plan_downloads
    from bot.models.hub import _ensure_hub_reachable, human_size, offline_forced

    settings = _settings(args)
    rows = check_models(settings)
    missing = [row for row in rows if not row.present]
    if not missing:
        print(f"all {len(rows)} configured models are on this machine; nothing to download")
        return EXIT_OK
    if offline_forced(False):
        print("error: HF_HUB_OFFLINE is set, so nothing can be downloaded: unset it for this command",
              file=sys.stderr)
        return EXIT_FAILED
    _ensure_hub_reachable(missing[0].role, missing[0].model_id)
    plans = plan_downloads(settings, rows)
    total = sum(plan.total_bytes for plan in plans)
    print(f"{'would download' if args.dry_run else 'downloading'} {len(plans)} model(s), about "
          f"{human_size(total)} in all, into {_hub_cache(settings)}:")
    width = max(len(plan.model_id) for plan in plans)
    for plan in plans:
        print(f"  {plan.role:<10} {plan.model_id:<{width}}  {plan.summary()}")
    if args.dry_run:
        return EXIT_OK
    started = time.perf_counter()
    rows = download_models(settings, plans, progress=lambda line: print(f"  {line}", flush=True))
    print(f"downloaded {human_size(total)} in {time.perf_counter() - started:.0f} s")
    for row in rows:
        print(f"{'ok' if row.present else 'MISSING'} {row.role} {row.model_id} {row.where}")
    return EXIT_OK if all(row.present for row in rows) else EXIT_FAILED


def cmd_models_tiny(args: argparse.Namespace) -> int:
    from bot.models.tiny import STAND_IN_NOTE, write_tiny_models

    config_path = write_tiny_models(Path(args.directory))
    print(f"wrote tiny stand-in models and {config_path}")
    print(STAND_IN_NOTE)
    print(f"try: python -m bot --config {config_path} describe IMAGE")
    return EXIT_OK


class StartupFailed(Exception):
    """``Services.start()`` failed (inside discord.py's ``setup_hook``): kept apart from Discord errors."""


def _preflight(settings: Settings, *, memory: bool, vibe: bool) -> bool:
    """The local checks (bot/preflight.py), before connecting to anything; True when none is fatal."""
    from bot.preflight import report, run_checks

    return report(run_checks(settings, memory=memory, vibe=vibe), sys.stderr)


def _startup_error(exc: BaseException) -> str:
    if isinstance(exc, ConfigError | ModelUnavailable | LabelSetError):
        return str(exc)
    return f"the bot could not start: {type(exc).__name__}: {exc}"


def _discord_error(exc: BaseException) -> str | None:
    """One line for a known way connecting to Discord fails, or None (then it is a bug)."""
    import discord

    from bot.config import TOKEN_ENV

    portal = "Discord developer portal → your application → Bot"
    if isinstance(exc, discord.LoginFailure) or (isinstance(exc, discord.ConnectionClosed) and exc.code == 4004):
        return (f"Discord rejected the token ({TOKEN_ENV}) — copy it again from the {portal} "
                "(Reset Token) and set the new one")
    if isinstance(exc, discord.PrivilegedIntentsRequired):
        return (f"Discord refused the Message Content intent — enable it in the {portal} → "
                "Privileged Gateway Intents → Message Content Intent")
    if isinstance(exc, discord.HTTPException):
        return f"Discord answered HTTP {exc.status} while connecting ({exc.text or 'no details'}); try again later"
    if isinstance(exc, discord.ConnectionClosed):
        return f"Discord closed the connection (code {exc.code}{f': {exc.reason}' if exc.reason else ''})"
    if isinstance(exc, discord.GatewayNotFound | OSError | TimeoutError):
        reason = str(exc) or type(exc).__name__
        return f"cannot reach Discord: {reason} (check the network connection, proxy or firewall)"
    return None


def cmd_run(args: argparse.Namespace) -> int:
    import asyncio

    from bot.config import TOKEN_ENV
    from bot.preflight import one_line

    settings = _settings(args)
    if settings.discord.token is None:
        print(f"error: set the {TOKEN_ENV} environment variable to your bot's token "
              "(Discord developer portal → your application → Bot → Reset Token). "
              "To try the bot without Discord: python -m bot console", file=sys.stderr)
        return EXIT_USAGE
    if not _preflight(settings, memory=True, vibe=True):
        return EXIT_FAILED
    import discord

    from bot.client import ImageBot
    from bot.services import Services

    # The bot never joins voice: no "PyNaCl / davey is not installed" warnings at every start.
    discord.VoiceClient.warn_nacl = discord.VoiceClient.warn_dave = False

    token = settings.discord.token.get_secret_value()

    class RunServices(Services):
        async def start(self) -> None:
            try:
                await super().start()
            except Exception as exc:
                raise StartupFailed() from exc

    async def main() -> None:
        bot = ImageBot(settings, RunServices(settings))
        async with bot:
            await bot.start(token)

    def fail(message: str) -> int:
        print(f"error: {one_line(message).replace(token, '[token]')}", file=sys.stderr)
        return EXIT_FAILED

    try:
        asyncio.run(main())
    except StartupFailed as exc:
        return fail(_startup_error(exc.__cause__ or exc))
    except Exception as exc:  # the known Discord failures become one line; anything else is a bug
        message = _discord_error(exc)
        if message is None:
            raise
        return fail(message)
    return EXIT_OK


def cmd_console(args: argparse.Namespace) -> int:
    import asyncio

    from bot.console import run_console

    settings = _settings(args)
    memory = not args.no_memory
    if not _preflight(settings, memory=memory, vibe=True):
        return EXIT_FAILED
    if not args.verbose:  # the console's own answers already say it (the LLM is offline, a story was skipped)
        for name in CONSOLE_ANSWERED_LOGGERS:
            logging.getLogger(name).setLevel(logging.ERROR)
    return asyncio.run(run_console(settings, memory=memory))


def cmd_healthcheck(args: argparse.Namespace) -> int:
    from bot.health import check_heartbeat

    settings = _settings(args)
    healthy, reason = check_heartbeat(
        settings.resolve_path(settings.discord.heartbeat_file), max_age_s=3 * settings.discord.heartbeat_s + 10
    )
    print(reason, file=sys.stdout if healthy else sys.stderr)
    return EXIT_OK if healthy else EXIT_FAILED


def cmd_serve_ray(args: argparse.Namespace) -> int:
    try:
        from bot.inference.ray import deploy
    except ImportError:
        print("error: Ray is not installed; pip install -e '.[ray]' (see docs/scale-out-ray.md)", file=sys.stderr)
        return EXIT_USAGE
    forwarded = (["--config", args.config] if args.config else []) + list(args.ray_args)
    return deploy.main(forwarded)


def cmd_compare(args: argparse.Namespace) -> int:
    from bot.memory.store import Audience, ImageStore
    from bot.overview.compare import compare_images, render_compare, report_dict

    store = ImageStore.open(_settings(args))
    guilds = [args.guild] if args.guild is not None else [g for g, _ in store.spaces() if g is not None]
    images = [image for guild in guilds
              for image in store.images(Audience.everything(guild))]
    report = compare_images(images, examples=args.examples)
    if args.json:
        print(json.dumps(report_dict(report), indent=2))
    else:
        scope = f"guild {args.guild}" if args.guild is not None else f"{len(guilds)} guild(s) (DMs left out)"
        print(f"caption-only vs image-informed, {scope}")
        print(render_compare(report), end="")
    return EXIT_OK


def cmd_topics(args: argparse.Namespace) -> int:
    from bot.memory.store import ImageStore
    from bot.overview.paths import topic_model_path
    from bot.overview.service import topic_labels
    from bot.overview.topics import cluster_captions, render_topic_model, save_topic_model

    settings = _settings(args)
    images, vectors = ImageStore.open(settings).caption_vectors(args.guild)
    names: tuple[str, ...] = ()
    label_vectors = None
    labels = None if args.no_labels or not images else topic_labels(settings)
    if labels is not None:  # name clusters by the nearest fixed topic too: the captions' own embedder
        from bot.models.embedder import TextEmbedder

        embedder = TextEmbedder.from_settings(settings)
        names, label_vectors = labels.labels, embedder.embed(labels.prompts)
    model = cluster_captions(args.guild, images, vectors, label_names=names, label_vectors=label_vectors, k=args.k)
    path = topic_model_path(settings, args.guild)
    save_topic_model(model, path)
    print(render_topic_model(model), end="")
    print(f"saved to {path}")
    return EXIT_OK


# What each subcommand reads (and writes), for the end of its --help: a newcomer should not have to
# read the source to learn that `run` needs $DISCORD_TOKEN or where the memory lives.
Read = tuple[str, str]
_CONFIG: Read = ("config", "--config FILE, else $IMAGEBOT_CONFIG, else ./config.toml (else built-in defaults); "
                           "relative paths in it are relative to the file")
_MODELS: Read = ("models", "[models]: local folders or Hugging Face ids; downloads go to the Hugging Face cache: "
                           "[models] cache_dir, else $HF_HUB_CACHE, else $HF_HOME/hub (default "
                           "~/.cache/huggingface/hub); HF_HUB_OFFLINE=1 or [models] offline = true: never download")
_LABELS: Read = ("labels", "[models.tagger] labels_dir (default: labels/, shipped with the bot)")
_MEMORY: Read = ("memory", "[memory]: embedded Chroma in memory.path (default data/chroma), the ingest ledger "
                           "beside it (data/chroma-ledger.sqlite3); or the Chroma server at [memory] host:port "
                           '(backend = "http")')
_LLM: Read = ("chat", "the Ollama server at [llm] base_url (default http://127.0.0.1:11434), model [llm] model")
_DOWNLOAD: Read = ("network", "the Hugging Face hub ($HF_ENDPOINT, default https://huggingface.co; $HF_TOKEN for "
                              "gated models); HF_HUB_DISABLE_PROGRESS_BARS=1 hides the per-file progress bars")
READS: dict[str, tuple[Read, ...]] = {
    "run": (("DISCORD_TOKEN", "the bot's token (required; never in the config file)"), _CONFIG, _MODELS,
            _LABELS, _MEMORY, _LLM,
            ("writes", "[discord] heartbeat_file (default data/heartbeat.json), for `healthcheck`")),
    "console": (_CONFIG, _MODELS, _LABELS,
                (_MEMORY[0], _MEMORY[1] + "; the console's pictures have their own space there (docs/console.md)"),
                _LLM),
    "serve-ray": (_CONFIG, _MODELS, _LABELS, ("ray", "the cluster at --address, else [inference] ray_address")),
    "healthcheck": (_CONFIG, ("heartbeat", "[discord] heartbeat_file (default data/heartbeat.json), written by `run`")),
    "describe": (_CONFIG, _MODELS, _LABELS, ("images", "the IMAGE files")),
    "models": (_CONFIG, _MODELS),
    "models check": (_CONFIG, _MODELS),
    "models download": (_CONFIG, _MODELS, _DOWNLOAD),
    "models tiny": (("writes", "DIR: tiny random-weight models and DIR/config.toml (reads nothing)"),),
    "compare": (_CONFIG, _MEMORY),
    "topics": (_CONFIG, _MEMORY, (_LABELS[0], _LABELS[1] + " (topics.txt)"),
               (_MODELS[0], "the embedder only; " + _MODELS[1]),
               ("writes", "the topic model beside the memory: data/chroma-overview/topics-gID.json")),
}


def _epilog(command: str) -> str:
    """``reads:`` then one wrapped entry per thing read, the name in a column of its own."""
    import textwrap

    width = max(len(name) for name, _ in READS[command]) + 2
    lines = ["reads:"]
    for name, text in READS[command]:
        lines += textwrap.wrap(text, 100, initial_indent=f"  {name:<{width}}", subsequent_indent=" " * (width + 2))
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bot", description="imagebot: a Discord bot that understands pictures",
        epilog="`python -m bot COMMAND --help` ends with what that command reads: DISCORD_TOKEN (run), "
               "IMAGEBOT_CONFIG / config.toml, the model cache (HF_HOME, models.cache_dir), memory.path, Ollama.",
    )
    parser.add_argument("--config", help="config file (default: $IMAGEBOT_CONFIG, else ./config.toml)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    # The global options are accepted after the subcommand too (`python -m bot run --config x.toml`);
    # SUPPRESS: given only there, they do not reset what was given before the subcommand.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", default=argparse.SUPPRESS, help="config file (default: $IMAGEBOT_CONFIG, "
                        "else ./config.toml)")
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                        help="log progress to stderr")

    def add(group: argparse._SubParsersAction, name: str, *, reads: str | None = None,
            **kwargs: Any) -> argparse.ArgumentParser:
        kwargs.setdefault("description", kwargs.get("help"))
        return group.add_parser(name, parents=[common], epilog=_epilog(reads or name),
                                formatter_class=argparse.RawDescriptionHelpFormatter, **kwargs)

    add(commands, "run", help="start the Discord bot (token from $DISCORD_TOKEN)").set_defaults(handler=cmd_run)
    console = add(commands, "console", help="chat with the bot in this terminal, with its memory, no Discord "
                  "needed (docs/console.md)")
    console.add_argument("--no-memory", action="store_true",
                         help="remember nothing: no memory folder or server needed (/find and recall are off)")
    console.set_defaults(handler=cmd_console)

    serve_ray = commands.add_parser(
        "serve-ray", help="deploy the model worker as a Ray Serve app (docs/scale-out-ray.md)",
        description="Options after serve-ray go to the deployer: --address, --autoscale MIN:MAX, --num-cpus, "
                    "--http-host, --http-port, --no-http, --delete (and --config, -v).",
        epilog=_epilog("serve-ray"), formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve_ray.add_argument("ray_args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    serve_ray.set_defaults(handler=cmd_serve_ray)
    add(commands, "healthcheck", help="exit 0 if the running bot's heartbeat is fresh").set_defaults(
        handler=cmd_healthcheck
    )

    describe = add(commands, "describe", help="print what the bot sees in images")
    describe.add_argument("images", nargs="+", metavar="IMAGE")
    describe.add_argument("--json", action="store_true", help="full analysis records as JSON")
    describe.set_defaults(handler=cmd_describe)

    models = add(commands, "models", help="check, download or fake the models")
    model_commands = models.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    add(model_commands, "check", reads="models check", help="which configured models are present locally"
        ).set_defaults(handler=cmd_models_check)
    download = add(model_commands, "download", reads="models download",
                   help="download the missing models, saying what and how big first (needs internet)")
    download.add_argument("--dry-run", action="store_true", help="only say what would be downloaded, and its size")
    download.set_defaults(handler=cmd_models_download)
    tiny = add(model_commands, "tiny", reads="models tiny", help="write tiny random-weight stand-in models + config")
    tiny.add_argument("directory", metavar="DIR")
    tiny.set_defaults(handler=cmd_models_tiny)

    compare = add(commands, "compare", help="does looking at the image change the answer? (agreement report)")
    compare.add_argument("--guild", type=int, help="one guild id (default: every guild)")
    compare.add_argument("--examples", type=int, default=5, help="disagreements to show per question (default 5)")
    compare.add_argument("--json", action="store_true", help="the report as JSON")
    compare.set_defaults(handler=cmd_compare)

    topics = add(commands, "topics", help="discover topics by clustering a guild's captions")
    topics.add_argument("--guild", type=int, required=True, help="the guild id")
    topics.add_argument("--k", type=int, help="number of topics (default: chosen by silhouette score)")
    topics.add_argument("--no-labels", action="store_true",
                        help="name topics by caption words only (skips loading the text embedder)")
    topics.set_defaults(handler=cmd_topics)

    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "serve-ray":  # -v after serve-ray is ours, not the deployer's
        verbose = {"-v", "--verbose"} & set(args.ray_args)
        args.ray_args = [arg for arg in args.ray_args if arg not in verbose]
        args.verbose = args.verbose or bool(verbose)
    setup_logging(verbose=args.verbose, service=args.command == "run")
    _quiet_libraries()
    try:
        return args.handler(args)
    except (ConfigError, ModelUnavailable, LabelSetError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except UserFacingError as exc:  # e.g. compare/topics with the Chroma server down
        print(f"error: {exc.user_message} ({exc})", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130
