"""``python -m bot``: the command line.

    run                      the Discord bot (DISCORD_TOKEN from the environment)
    console                  the same pipeline and chat in this terminal, no token needed
    serve-ray [...]          deploy the model worker on a Ray cluster (scale-out, docs/scale-out-ray.md)
    healthcheck              exit 0 if a running bot's heartbeat file is fresh (container healthcheck)
    describe IMAGE...        one [Image Attached: ...] line per image (--json: full records)
    models check             which configured models are on this machine
    models download          fetch the missing ones (needs internet access)
    models tiny DIR          tiny random-weight stand-ins + a config using them (offline tests)
    compare [--guild ID]     caption-only vs image-informed sentiment and topic: agreement report
    topics --guild ID        discover topics by clustering the guild's captions (saved for /gallery)

Known failures (bad config, missing model, unreadable image) print one clear line to stderr and
exit non-zero; a traceback means a bug. ``run`` and ``console`` check label files, model weights,
the memory backend and Ollama first (bot/preflight.py), so a local problem stops them before any
Discord login; a rejected token or an unreachable Discord is one line too.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from bot.config import ConfigError, Settings, load_settings
from bot.errors import UserFacingError
from bot.labels import LabelSetError
from bot.models.errors import ModelUnavailable

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
log = logging.getLogger("bot")
# Loggers whose INFO lines are per-request ("HTTP Request: POST .../api/chat"), model-loading chatter
# or "logging in using static token" (discord.client): `run` keeps them at WARNING so the bot's own INFO
# lines and discord.py's connection state (discord.gateway, discord.shard) stay readable; -v shows all.
QUIET_LOGGERS = (
    "httpx", "httpcore", "urllib3", "chromadb", "transformers", "sentence_transformers", "open_clip",
    "huggingface_hub", "filelock", "PIL", "matplotlib", "discord.client",
)


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
    """Keep stdout for results: no download/loading progress bars from HF libraries."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        import transformers

        transformers.utils.logging.disable_progress_bar()
        transformers.utils.logging.set_verbosity_error()
    except ImportError:  # pragma: no cover - transformers is a hard dependency
        pass


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


@contextlib.contextmanager
def quiet_library_output() -> Iterator[None]:
    """Keep image libraries' chatter off stderr while decoding (it is logged at INFO instead, for -v).

    Two kinds: Python warnings, which print the library's source path (Pillow's TIFF metadata
    warnings: ``.../PIL/TiffImagePlugin.py:773: UserWarning: Metadata Warning, tag 274 had too many
    entries``), and C libraries writing straight to file descriptor 2 (libtiff's error handler:
    ``ZIPDecode: Decoding error at scanline 0, incorrect data check.``), which only redirecting the
    descriptor catches. Process-wide and not thread-safe: for the single-threaded command line.
    """
    sys.stderr.flush()
    with warnings.catch_warnings(record=True) as caught, tempfile.TemporaryFile() as sink:
        warnings.simplefilter("always")
        try:
            saved: int | None = os.dup(2)
        except OSError:  # no stderr at all: nothing to protect
            saved = None
        if saved is not None:
            os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            if saved is not None:
                sys.stderr.flush()
                os.dup2(saved, 2)
                os.close(saved)
            for message in dict.fromkeys(f"{w.category.__name__}: {w.message}" for w in caught):
                log.info("while decoding: %s", message)
            sink.seek(0)
            chatter = sink.read().decode("utf-8", "replace").split()
            if chatter:
                log.info("while decoding, a library printed: %s", " ".join(chatter))


def cmd_describe(args: argparse.Namespace) -> int:
    from bot.decode_sandbox import DecodeSandbox
    from bot.imaging import ImageRejected
    from bot.pipeline import Analyzer

    settings = _settings(args)
    decoded, results = [], []
    # The same killable decoder processes as the bot: a hostile file cannot hang this command either.
    with DecodeSandbox.from_settings(settings.images, workers=1) as sandbox:
        for raw_path in args.images:
            path = Path(raw_path)
            try:
                data = path.read_bytes()
            except OSError as exc:
                results.append({"path": str(path), "error": f"cannot read file: {exc.strerror}"})
                continue
            try:
                with quiet_library_output():
                    image = sandbox.decode(data)
            except ImageRejected as exc:
                results.append({"path": str(path), "error": exc.user_message})
                continue
            results.append({"path": str(path)})
            decoded.append((len(results) - 1, image))

    if decoded:
        analyzer = Analyzer.from_settings(settings)
        batch_size = settings.queue.max_batch_size
        for start in range(0, len(decoded), batch_size):
            chunk = decoded[start : start + batch_size]
            for (index, _), analysis in zip(chunk, analyzer.analyze([image for _, image in chunk]), strict=True):
                results[index]["analysis"] = analysis

    failed = 0
    if args.json:
        payload = []
        for item in results:
            if "analysis" in item:
                payload.append({"path": item["path"], "analysis": item["analysis"].to_dict(),
                                "context_line": item["analysis"].context_line()})
            else:
                payload.append(item)
                failed += 1
        print(json.dumps(payload, indent=2))
    else:
        for item in results:
            if "analysis" in item:
                print(f"{printable_path(item['path'])}: {item['analysis'].context_line()}")
            else:
                failed += 1
                print(f"{printable_path(item['path'])}: error: {item['error']}", file=sys.stderr)
    return EXIT_FAILED if failed else EXIT_OK


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


def cmd_models_download(args: argparse.Namespace) -> int:
    from bot.models.check import download_models

    for row in download_models(_settings(args)):
        print(f"{'ok' if row.present else 'MISSING'} {row.role} {row.model_id} {row.where}")
    return EXIT_OK


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
    if not _preflight(settings, memory=False, vibe=False):
        return EXIT_FAILED
    return asyncio.run(run_console(settings))


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
        from bot.inference import ray_serve
    except ImportError:
        print("error: Ray is not installed; pip install -e '.[ray]' (see docs/scale-out-ray.md)", file=sys.stderr)
        return EXIT_USAGE
    forwarded = (["--config", args.config] if args.config else []) + list(args.ray_args)
    return ray_serve.main(forwarded)


def cmd_compare(args: argparse.Namespace) -> int:
    from bot.memory.store import ImageStore
    from bot.overview.compare import compare_images, render_compare, report_dict

    store = ImageStore.open(_settings(args))
    guilds = [args.guild] if args.guild is not None else [g for g, _ in store.spaces() if g is not None]
    images = [image for guild in guilds
              for image in store.images(guild, visible_channel_ids=None, allow_nsfw=True, requester_id=0)]
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
        from bot.models.device import resolve_device
        from bot.models.embedder import TextEmbedder
        from bot.models.hub import resolve_hf

        models = settings.models
        model_id = settings.resolve_model(models.embedder.model)
        path = resolve_hf("embedder", model_id, cache_dir=models.cache_dir, offline=models.offline)
        embedder = TextEmbedder(path, model_id=models.embedder.model, device=resolve_device(models.device))
        names, label_vectors = labels.labels, embedder.embed(labels.prompts)
    model = cluster_captions(args.guild, images, vectors, label_names=names, label_vectors=label_vectors, k=args.k)
    path = topic_model_path(settings, args.guild)
    save_topic_model(model, path)
    print(render_topic_model(model), end="")
    print(f"saved to {path}")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bot", description="imagebot: a Discord bot that understands pictures"
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

    def add(group: argparse._SubParsersAction, name: str, **kwargs: Any) -> argparse.ArgumentParser:
        return group.add_parser(name, parents=[common], **kwargs)

    add(commands, "run", help="start the Discord bot (token from $DISCORD_TOKEN)").set_defaults(handler=cmd_run)
    add(commands, "console", help="chat with the bot in this terminal, no Discord needed").set_defaults(
        handler=cmd_console
    )

    serve_ray = commands.add_parser(
        "serve-ray", help="deploy the model worker as a Ray Serve app (docs/scale-out-ray.md)",
        description="Options after serve-ray go to the deployer: --address, --autoscale MIN:MAX, --num-cpus, "
                    "--http-host, --http-port, --no-http, --delete.",
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
    add(model_commands, "check", help="which configured models are present locally").set_defaults(
        handler=cmd_models_check
    )
    add(model_commands, "download", help="download missing models (needs internet)").set_defaults(
        handler=cmd_models_download
    )
    tiny = add(model_commands, "tiny", help="write tiny random-weight stand-in models + config")
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
