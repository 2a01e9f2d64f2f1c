"""The CLI end to end, as a user runs it: `python -m bot ...` in a subprocess."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests import hostile_corpus as corpus
from tests.helpers import FakeHub, served

ROOT = Path(__file__).parent.parent
LINE = re.compile(
    r"^\[Image Attached: [^\[\]\n]+\. Labels: [^\[\]\n]+\. "
    r"Mood: (negative|neutral|positive)\. Topic: [^\[\]\n]+\]$"
)


def run_cli(*args: str, cwd: Path = ROOT, env: dict[str, str] | None = None,
            input: str | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "bot", *args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=300,
        input=input,
    )


@pytest.fixture(scope="module")
def photo_files(tmp_path_factory, photos) -> list[Path]:
    folder = tmp_path_factory.mktemp("photos")
    paths = []
    for name in ("astronaut", "coffee"):
        path = folder / f"{name}.jpg"
        path.write_bytes(photos[name])
        paths.append(path)
    return paths


def test_describe_prints_one_context_line_per_image(tiny_config_path, photo_files, tmp_path):
    bad = tmp_path / "notes.png"
    bad.write_text("this is not a picture")
    result = run_cli("--config", str(tiny_config_path), "describe", *map(str, photo_files), str(bad))
    assert result.returncode == 1  # one of three failed
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 2
    for path, line in zip(photo_files, lines, strict=True):
        prefix = f"{path}: "
        assert line.startswith(prefix)
        assert LINE.match(line[len(prefix):]), line
    assert f"{bad}: error:" in result.stderr
    assert "Traceback" not in result.stderr


def test_describe_reads_the_text_in_a_screenshot(tiny_config_path, tmp_path):
    """describe decodes with the reader's own copy, like the bot: small screenshot text is read."""
    from tests.helpers import screenshot

    shot = tmp_path / "error.png"
    shot.write_bytes(screenshot(["psql: error: connection refused"] * 2, size=(1800, 300), font_px=18))
    result = run_cli("--config", str(tiny_config_path), "describe", str(shot))
    assert result.returncode == 0, result.stderr
    assert 'Text: "psql: error: connection refused / psql: error: connection refused"' in result.stdout


def test_describe_json_has_the_full_record(tiny_config_path, photo_files):
    result = run_cli("--config", str(tiny_config_path), "describe", "--json", str(photo_files[0]))
    assert result.returncode == 0, result.stderr
    [item] = json.loads(result.stdout)
    record = item["analysis"]
    assert {"caption", "labels", "sentiment", "topics", "caption_topics", "caption_embedding",
            "image_embedding", "model_ids"} <= set(record)
    assert LINE.match(item["context_line"])


def test_describe_config_from_environment_variable(tiny_config_path, photo_files, tmp_path):
    result = run_cli("describe", str(photo_files[1]), cwd=tmp_path, env={"IMAGEBOT_CONFIG": str(tiny_config_path)})
    assert result.returncode == 0, result.stderr


def test_models_check_with_tiny_models(tiny_config_path):
    result = run_cli("--config", str(tiny_config_path), "models", "check")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("ok ") == 4


def test_models_check_reports_missing_default_models(tmp_path):
    result = run_cli("models", "check", cwd=tmp_path)
    assert result.returncode == 1
    assert re.search(r"MISSING captioner\s+Salesforce/blip-image-captioning-base", result.stdout)
    assert re.search(r"ok\s+embedder", result.stdout)  # all-MiniLM-L6-v2 ships in a package
    assert "models download" in result.stderr


def test_describe_with_missing_default_models_fails_fast_and_clearly(tmp_path, photo_files):
    result = run_cli("describe", str(photo_files[0]), cwd=tmp_path)
    assert result.returncode == 2
    assert "captioner model 'Salesforce/blip-image-captioning-base' is not available locally" in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_config_is_one_clear_line(tmp_path, photo_files):
    config = tmp_path / "config.toml"
    config.write_text("[models]\ndevise = 'cpu'\n")
    result = run_cli("--config", str(config), "describe", str(photo_files[0]))
    assert result.returncode == 2
    assert "models.devise: unknown key" in result.stderr
    assert "Traceback" not in result.stderr


def test_models_tiny_writes_stand_ins_and_a_config(tmp_path):
    result = run_cli("models", "tiny", str(tmp_path / "tiny"))
    assert result.returncode == 0, result.stderr
    assert "STAND-IN" in result.stdout
    config = (tmp_path / "tiny" / "config.toml").read_text()
    assert "STAND-IN" in config
    for folder in ("tiny-random-blip", "tiny-random-clip", "tiny-random-sentiment"):
        assert (tmp_path / "tiny" / folder / "STAND_IN.txt").is_file()


# ----- start-up failures of `run` and `console` ---------------------------------------------------
# Each known failure is one line on stderr, exit 1, no traceback; a local one (labels, models, memory)
# is found before any request reaches Discord (the protocol peer in tests/harness records every one).
# `run` goes through `bot.cli.main` in-process (in a thread: it runs its own event loop) so discord.py
# can be pointed at the peer; the real-process tests check that no log line reaches stderr either.


def write_config(folder: Path, tiny_models_dir: Path, **sections: dict) -> Path:
    """The tiny-models config with absolute model paths, data in ``folder``, ``sections`` merged in."""
    import tomllib

    from bot.models.tiny import tiny_config_text

    data = tomllib.loads(tiny_config_text())
    for role in ("captioner", "tagger", "sentiment"):
        model = data["models"][role]["model"]
        if model.startswith("./"):
            data["models"][role]["model"] = str(tiny_models_dir / model[2:])
    data["memory"]["path"] = str(folder / "chroma")
    data["discord"] = {"heartbeat_file": str(folder / "heartbeat.json")}

    def merge(into: dict, extra: dict) -> None:
        for key, value in extra.items():
            if isinstance(value, dict):
                merge(into.setdefault(key, {}), value)
            else:
                into[key] = value

    def toml(table: dict, prefix: tuple[str, ...] = ()) -> list[str]:
        scalars = [f"{key} = {json.dumps(value)}" for key, value in table.items() if not isinstance(value, dict)]
        lines = ([f"[{'.'.join(prefix)}]"] if prefix and scalars else []) + scalars
        for key, value in table.items():
            if isinstance(value, dict):
                lines += toml(value, (*prefix, key))
        return lines

    merge(data, sections)
    path = folder / "config.toml"
    path.write_text("\n".join(toml(data)) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def closed_port():
    """A 127.0.0.1 port that refuses connections (bound, never listening), reserved for the test."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


@pytest.fixture
def cli_main(monkeypatch):
    """``await cli_main(*argv)``: ``bot.cli.main`` in a thread; logging levels it sets are put back."""
    import asyncio
    import logging

    from bot import cli

    loggers = [logging.getLogger(name) for name in ("", *cli.QUIET_LOGGERS)]
    levels = [logger.level for logger in loggers]

    async def call(*argv: str) -> int:
        return await asyncio.to_thread(cli.main, list(argv))

    yield call
    for logger, level in zip(loggers, levels, strict=True):
        logger.setLevel(level)


def one_error_line(stderr: str) -> str:
    assert "Traceback" not in stderr
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: ")
    return lines[0]


def broken_labels_dir(folder: Path) -> Path:
    labels = folder / "labels"
    labels.mkdir()
    (labels / "objects.txt").write_text("dog\ncat\n")
    return labels


@pytest.mark.parametrize("problem", ["labels", "models", "memory"])
async def test_run_local_problem_is_one_line_before_any_login(
    problem, discord_server, ollama, cli_main, capsys, monkeypatch, tmp_path, tiny_models_dir, closed_port
):
    sections: dict[str, dict] = {"llm": {"base_url": ollama.base_url, "model": ollama.model}}
    if problem == "labels":
        sections["models"] = {"tagger": {"labels_dir": str(broken_labels_dir(tmp_path))}}
        expected = "error: label files: " + f"{tmp_path / 'labels'}: missing label sets: scenes, medium, mood, topics"
    elif problem == "models":
        sections["models"] = {"captioner": {"model": "nobody/no-such-captioner"}}
        expected = "error: captioner model 'nobody/no-such-captioner' is not available locally: run `python -m bot"
    else:
        sections["memory"] = {"backend": "http", "port": closed_port}
        expected = f"error: the Chroma server at http://127.0.0.1:{closed_port} does not answer (Connection refused)"
    config = write_config(tmp_path, tiny_models_dir, **sections)
    monkeypatch.setenv("DISCORD_TOKEN", discord_server.token)

    assert await cli_main("--config", str(config), "run") == 1
    captured = capsys.readouterr()
    assert one_error_line(captured.err).startswith(expected)
    assert captured.out == ""
    assert discord_server.requests == []  # no login, no REST call at all


async def test_run_with_a_rejected_token(discord_server, ollama, cli_main, capsys, monkeypatch, tmp_path,
                                         tiny_models_dir):
    config = write_config(tmp_path, tiny_models_dir, llm={"base_url": ollama.base_url, "model": ollama.model})
    monkeypatch.setenv("DISCORD_TOKEN", "not-the-token-discord-knows")

    assert await cli_main("--config", str(config), "run") == 1
    captured = capsys.readouterr()
    line = one_error_line(captured.err)
    assert line.startswith("error: Discord rejected the token (DISCORD_TOKEN) — ")
    assert "not-the-token-discord-knows" not in captured.err + captured.out
    assert [(r.method, r.path, r.status) for r in discord_server.requests] == [("GET", "/users/@me", 401)]


async def test_run_with_discord_unreachable(ollama, cli_main, capsys, monkeypatch, tmp_path, tiny_models_dir,
                                            closed_port):
    import discord

    monkeypatch.setattr(discord.http.Route, "BASE", f"http://127.0.0.1:{closed_port}/api/v10")
    config = write_config(tmp_path, tiny_models_dir, llm={"base_url": ollama.base_url, "model": ollama.model})
    monkeypatch.setenv("DISCORD_TOKEN", "secret-token-value")

    assert await cli_main("--config", str(config), "run") == 1
    captured = capsys.readouterr()
    line = one_error_line(captured.err)
    assert line.startswith(f"error: cannot reach Discord: Cannot connect to host 127.0.0.1:{closed_port}")
    assert "secret-token-value" not in captured.err


@pytest.mark.parametrize("ollama_problem", ["down", "model not pulled"])
async def test_run_ollama_problems_warn_and_go_on(
    ollama_problem, discord_server, ollama, cli_main, capsys, monkeypatch, tmp_path, tiny_models_dir, closed_port
):
    if ollama_problem == "down":
        llm = {"base_url": f"http://127.0.0.1:{closed_port}"}
        warning = f"warning: no Ollama server answers at http://127.0.0.1:{closed_port} (Connection refused): "
    else:
        llm = {"base_url": ollama.base_url, "model": "mistral"}
        warning = (f"warning: the chat model `mistral` is not installed on the Ollama server at {ollama.base_url}: "
                   "run `ollama pull mistral`; chatting falls back to describing pictures")
    config = write_config(tmp_path, tiny_models_dir, llm=llm)
    monkeypatch.setenv("DISCORD_TOKEN", "wrong-token")  # stops the run right after the login attempt

    assert await cli_main("--config", str(config), "run") == 1
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2 and lines[0].startswith(warning), lines
    assert lines[1].startswith("error: Discord rejected the token")
    assert [r.path for r in discord_server.requests] == ["/users/@me"]  # it went on to log in


async def test_run_services_that_fail_to_start_are_one_line(discord_server, ollama, cli_main, capsys, monkeypatch,
                                                            tmp_path, tiny_models_dir):
    broken = tmp_path / "broken-captioner"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")  # present on disk, so only loading finds out
    config = write_config(tmp_path, tiny_models_dir, llm={"base_url": ollama.base_url, "model": ollama.model},
                          models={"captioner": {"model": str(broken)}})
    monkeypatch.setenv("DISCORD_TOKEN", discord_server.token)

    assert await cli_main("--config", str(config), "run") == 1
    line = one_error_line(capsys.readouterr().err)
    assert line.startswith("error: the bot could not start: ")
    assert any(r.path == "/users/@me" for r in discord_server.requests)  # models load after the login


async def test_run_without_the_message_content_intent(discord_server, ollama, cli_main, capsys, monkeypatch,
                                                      tmp_path, tiny_models_dir):
    discord_server.gateway.privileged_intents_allowed = False  # the portal switch is off: IDENTIFY closed 4014
    config = write_config(tmp_path, tiny_models_dir, llm={"base_url": ollama.base_url, "model": ollama.model})
    monkeypatch.setenv("DISCORD_TOKEN", discord_server.token)

    assert await cli_main("--config", str(config), "run") == 1
    line = one_error_line(capsys.readouterr().err)
    assert line.startswith("error: Discord refused the Message Content intent — enable it in the Discord developer")


def test_run_in_a_real_process_prints_nothing_but_the_error(tmp_path, tiny_models_dir, closed_port):
    """No log lines (discord.py's login/voice notices, library chatter) around the one error line."""
    config = write_config(tmp_path, tiny_models_dir, llm={"base_url": f"http://127.0.0.1:{closed_port}"})
    script = (
        "import sys, discord\n"
        f"discord.http.Route.BASE = 'http://127.0.0.1:{closed_port}/api/v10'\n"
        "from bot.cli import main\n"
        f"sys.exit(main(['--config', {str(config)!r}, 'run']))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "HF_HUB_OFFLINE": "1", "DISCORD_TOKEN": "secret-token-value"})
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert [line.split(":")[0] for line in lines] == ["warning", "error"], result.stderr
    assert lines[1].startswith("error: cannot reach Discord: ")
    assert "secret-token-value" not in result.stderr + result.stdout


def test_run_with_chroma_down_in_a_real_process(tmp_path, tiny_models_dir, closed_port):
    config = write_config(tmp_path, tiny_models_dir, memory={"backend": "http", "port": closed_port})
    result = run_cli("--config", str(config), "run", env={"DISCORD_TOKEN": "secret-token-value"})
    assert result.returncode == 1
    assert one_error_line(result.stderr).startswith(f"error: the Chroma server at http://127.0.0.1:{closed_port}")


def test_console_with_broken_labels_is_one_line(tmp_path, tiny_models_dir):
    labels = broken_labels_dir(tmp_path)
    config = write_config(tmp_path, tiny_models_dir, models={"tagger": {"labels_dir": str(labels)}})
    result = run_cli("--config", str(config), "console", input="/quit\n")
    assert result.returncode == 1
    assert one_error_line(result.stderr).startswith("error: label files: ")
    assert "loading models" not in result.stdout


def test_console_without_ollama_warns_and_goes_on(tmp_path, tiny_models_dir, closed_port):
    config = write_config(tmp_path, tiny_models_dir, llm={"base_url": f"http://127.0.0.1:{closed_port}"})
    result = run_cli("--config", str(config), "console", input="/quit\n")
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == [
        f"warning: no Ollama server answers at http://127.0.0.1:{closed_port} (Connection refused): start it "
        "(`ollama serve`) or fix [llm] base_url; chatting falls back to describing pictures"]
    assert "loading models" in result.stdout


# ----- describe: output hygiene -------------------------------------------------------------------


def _tiff_files(folder: Path) -> tuple[Path, Path]:
    """A TIFF whose metadata makes Pillow warn (it still decodes), and one whose compressed data makes
    libtiff's C error handler write to stderr (it is refused)."""
    import struct

    import numpy as np
    from PIL import Image

    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    buffer = io.BytesIO()
    image.save(buffer, "TIFF", tiffinfo={274: 1})
    data = bytearray(buffer.getvalue())  # little-endian: "II", then the first IFD's offset
    (ifd,) = struct.unpack_from("<I", data, 4)
    (entries,) = struct.unpack_from("<H", data, ifd)
    for at in range(ifd + 2, ifd + 2 + 12 * entries, 12):
        if struct.unpack_from("<H", data, at)[0] == 274:
            struct.pack_into("<I", data, at + 4, 2)  # "Metadata Warning, tag 274 had too many entries: 2"
    warns = folder / "metadata.tif"
    warns.write_bytes(bytes(data))

    buffer = io.BytesIO()
    image.save(buffer, "TIFF", compression="tiff_adobe_deflate")
    data = bytearray(buffer.getvalue())
    for i in range(20, 2000, 7):
        data[i] ^= 0xFF  # "ZIPDecode: Decoding error at scanline 0, incorrect data check."
    corrupt = folder / "corrupt.tif"
    corrupt.write_bytes(bytes(data))
    return warns, corrupt


def test_describe_keeps_each_image_on_one_line_and_library_chatter_off_stderr(tiny_config_path, photos, tmp_path):
    odd = tmp_path / "odd\nname\r\x1b[31mred\x1b[0m.jpg"
    odd.write_bytes(photos["coffee"])
    undecodable = os.fsdecode(bytes(tmp_path) + b"/caf\xe9.jpg")  # not UTF-8
    Path(undecodable).write_bytes(photos["rocket"])
    warns, corrupt = _tiff_files(tmp_path)

    result = run_cli("--config", str(tiny_config_path), "describe", str(odd), undecodable, str(warns), str(corrupt))
    assert result.returncode == 1  # the corrupt TIFF
    out = result.stdout.splitlines()
    assert [line.split(": [Image Attached:")[0] for line in out] == [
        f"{tmp_path}/odd\\nname\\r\\x1b[31mred\\x1b[0m.jpg", f"{tmp_path}/caf\\xe9.jpg", str(warns)]
    for line in out:
        assert LINE.match(line[line.index("[Image Attached:"):]), line
    assert "\x1b" not in result.stdout + result.stderr
    [error] = result.stderr.splitlines()  # no Pillow warning with its source path, no libtiff line
    assert error.startswith(f"{corrupt}: error: ")


def test_printable_path_escapes_what_a_terminal_would_act_on():
    from bot.cli import printable_path

    assert printable_path("photos/cat photo.jpg") == "photos/cat photo.jpg"
    assert printable_path("a\nb\rc\td\x1b[2Je\x7f.png") == "a\\nb\\rc\\td\\x1b[2Je\\x7f.png"
    assert printable_path("right-to-left\u202egnp.exe") == "right-to-left\\u202egnp.exe"
    assert printable_path(os.fsdecode(b"caf\xe9.png")) == "caf\\xe9.png"
    assert printable_path("café 🐧.png") == "café 🐧.png"


def test_global_options_are_accepted_after_the_subcommand(tmp_path, capsys):
    from bot.cli import main

    missing = tmp_path / "nowhere.toml"
    for argv in (["--config", str(missing), "models", "check"], ["models", "check", "--config", str(missing)],
                 ["models", "check", "-v", "--config", str(missing)]):
        assert main(argv) == 2
        assert f"config file not found: {missing}" in capsys.readouterr().err


def test_global_options_before_or_after_any_subcommand(tmp_path, capsys):
    from bot.cli import main

    missing = tmp_path / "nowhere.toml"
    for argv in (["console", "--no-memory", "--config", str(missing)], ["-v", "describe", "x.jpg", "--config",
                 str(missing)], ["models", "download", "--dry-run", "-v", "--config", str(missing)],
                 ["compare", "--config", str(missing), "--json"], ["healthcheck", "--config", str(missing)]):
        assert main(argv) == 2, argv
        assert f"config file not found: {missing}" in capsys.readouterr().err


# ----- describe: through the inference queue, like every other model user -------------------------------


def pixel_bomb() -> bytes:
    """A PNG whose header claims 60,000 x 60,000 pixels: the decoder refuses it before any pixel is read."""
    return corpus.png_claiming(60_000, 60_000)


async def test_describe_submits_each_file_to_the_inference_queue(cli_main, capsys, monkeypatch, tiny_config_path,
                                                                 photos, tmp_path):
    """Each readable file is one interactive job of the bot's InferenceQueue, with its name; the queue's
    decode stage gives the typed refusal; output keeps input order whatever order the jobs finish in."""
    import asyncio

    from bot.imaging import ImageTooManyPixels, decode_image
    from bot.inference import InferenceQueue, Priority

    (tmp_path / "first.jpg").write_bytes(photos["astronaut"])
    (tmp_path / "bomb.png").write_bytes(pixel_bomb())
    (tmp_path / "folder").mkdir()
    (tmp_path / "last.jpg").write_bytes(photos["coffee"])
    names = ["first.jpg", "missing.jpg", "bomb.png", "folder", "last.jpg"]
    calls: list[tuple[str | None, Priority]] = []
    queues: set[InferenceQueue] = set()
    analyze = InferenceQueue.analyze

    async def spy(self, data, *, filename=None, timeout=None, priority=Priority.INTERACTIVE):  # noqa: ASYNC109
        calls.append((filename, priority))
        queues.add(self)
        if filename == "first.jpg":  # submitted late, so it finishes last
            await asyncio.sleep(1.0)
        return await analyze(self, data, filename=filename, timeout=timeout, priority=priority)

    monkeypatch.setattr(InferenceQueue, "analyze", spy)
    assert await cli_main("--config", str(tiny_config_path), "describe", *(str(tmp_path / n) for n in names)) == 1

    out, err = capsys.readouterr()
    assert sorted(calls) == [("bomb.png", Priority.INTERACTIVE), ("first.jpg", Priority.INTERACTIVE),
                             ("last.jpg", Priority.INTERACTIVE)]  # unreadable files never reach it
    [queue] = queues
    assert (queue.metrics.count("ok", "image"), queue.metrics.count("rejected", "image")) == (2, 1)
    assert not queue.running  # stopped at the end
    assert [line.split(": [Image Attached: ")[0] for line in out.splitlines()] == [
        str(tmp_path / "first.jpg"), str(tmp_path / "last.jpg")]
    with pytest.raises(ImageTooManyPixels) as refusal:  # what the decoder says of it, as the bot would
        decode_image(pixel_bomb(), filename="bomb.png")
    assert err.splitlines() == [
        f"{tmp_path / 'missing.jpg'}: error: cannot read file: No such file or directory",
        f"{tmp_path / 'bomb.png'}: error: {refusal.value.user_message}",
        f"{tmp_path / 'folder'}: error: cannot read file: Is a directory",
    ]


def test_describe_json_with_v_says_how_the_queue_batched(tmp_path, tiny_models_dir, photos):
    """``-v``: the bot's own start-up phase, then the queue's numbers; ``--json`` is the one array it always was."""
    config = write_config(tmp_path, tiny_models_dir, queue={"max_batch_size": 2})
    paths = []
    for index, name in enumerate(["astronaut", "coffee", "bomb", "rocket", "chelsea"]):
        path = tmp_path / f"{index}-{name}.{'png' if name == 'bomb' else 'jpg'}"
        path.write_bytes(pixel_bomb() if name == "bomb" else photos[name])
        paths.append(path)
    result = run_cli("--config", str(config), "-v", "describe", "--json", *map(str, paths))
    assert result.returncode == 1, result.stderr
    assert result.stdout == json.dumps(json.loads(result.stdout), indent=2) + "\n"
    items = json.loads(result.stdout)
    assert [item["path"] for item in items] == list(map(str, paths))
    assert items[2] == {"path": str(paths[2]), "error": items[2]["error"]}
    assert "too many pixels" in items[2]["error"]
    assert all(LINE.match(item["context_line"]) for i, item in enumerate(items) if i != 2)
    assert re.search(r"INFO bot\.services: loading models \(captioner, tagger, embedder, sentiment(, reader)?\)… "
                     r"done in", result.stderr)
    summary = re.search(r"INFO bot: describe: 5 image job\(s\) through the inference backend \(ok 4, rejected 1\); "
                        r"(\d+) model batch\(es\), largest (\d+)$", result.stderr, re.M)
    assert summary, result.stderr
    assert int(summary[1]) >= 2 and int(summary[2]) <= 2  # queue.max_batch_size, honoured by the queue
    assert "Traceback" not in result.stderr


def test_describe_many_files_reports_progress_on_stderr(tiny_config_path, photo_files, tmp_path):
    missing = tmp_path / "missing.jpg"
    result = run_cli("--config", str(tiny_config_path), "describe", str(missing), *[str(photo_files[1])] * 30)
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert len(lines) == 30 and len(set(lines)) == 1
    assert result.stderr.splitlines() == [
        f"{missing}: error: cannot read file: No such file or directory",
        "describe: 25/31 images done, 1 failed",
        "describe: 31/31 images done, 1 failed",
    ]


def test_describe_stops_promptly_on_ctrl_c(tiny_config_path, photo_files):
    import signal
    import threading
    import time

    process = subprocess.Popen(
        [sys.executable, "-m", "bot", "--config", str(tiny_config_path), "-v", "describe",
         *[str(photo_files[0])] * 400], cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    err: list[str] = []
    loaded = threading.Event()

    def read_stderr() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            err.append(line)
            if "loading models" in line:
                loaded.set()

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    try:
        assert loaded.wait(240), "".join(err)
        time.sleep(0.5)  # images are in the queue now
        process.send_signal(signal.SIGINT)
        started = time.monotonic()
        out, _ = process.communicate(timeout=60)
        stopped_in = time.monotonic() - started
    finally:
        process.kill()
    reader.join(5)
    assert process.returncode == 130, "".join(err)
    assert stopped_in < 15, stopped_in
    assert len(out.splitlines()) < 400  # it stopped, rather than finishing first
    assert "Traceback" not in "".join(err)


# ----- --help: what each subcommand reads ------------------------------------------------------------


def subcommands(parser) -> dict[str, object]:
    """Every (nested) subcommand's parser by its full name: ``models download``."""
    import argparse

    found: dict[str, object] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found[name] = sub
                found.update({f"{name} {inner}": p for inner, p in subcommands(sub).items()})
    return found


def test_every_subcommand_help_says_what_it_reads(capsys):
    from bot.cli import READS, build_parser, main

    assert set(subcommands(build_parser())) == set(READS)  # a new subcommand needs its "reads:" too
    expected = {
        "run": ["DISCORD_TOKEN", "IMAGEBOT_CONFIG", "./config.toml", "HF_HOME", "cache_dir", "HF_HUB_OFFLINE",
                "labels_dir", "memory.path", "data/chroma", "[llm] base_url", "heartbeat_file"],
        "console": ["IMAGEBOT_CONFIG", "./config.toml", "HF_HOME", "memory.path", "[llm] base_url", "--no-memory",
                    "docs/console.md"],
        "models download": ["IMAGEBOT_CONFIG", "HF_HOME", "HF_HUB_CACHE", "cache_dir", "HF_ENDPOINT", "HF_TOKEN",
                            "HF_HUB_DISABLE_PROGRESS_BARS", "--dry-run"],
        "models check": ["IMAGEBOT_CONFIG", "HF_HOME"],
        "describe": ["IMAGEBOT_CONFIG", "HF_HOME", "labels_dir"],
        "healthcheck": ["IMAGEBOT_CONFIG", "heartbeat_file"],
        "compare": ["IMAGEBOT_CONFIG", "memory.path"],
        "topics": ["IMAGEBOT_CONFIG", "memory.path", "topics.txt"],
        "serve-ray": ["IMAGEBOT_CONFIG", "ray_address"],
        "models tiny": ["DIR"],
    }
    for command, words in expected.items():
        with pytest.raises(SystemExit) as exit_:
            main([*command.split(), "--help"])
        assert exit_.value.code == 0
        out = " ".join(capsys.readouterr().out.split())  # wrapped lines joined
        assert "reads:" in out, command
        for word in words:
            assert word in out, (command, word)
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "DISCORD_TOKEN" in capsys.readouterr().out


# ----- models download: a plan with sizes first, then a file at a time ----------------------------------
# Against a local stand-in for the Hugging Face hub (the few endpoints huggingface_hub uses to list a repo
# and download a file), serving the tiny models' folders as repos.


async def run_cli_async(*args: str, env: dict[str, str]) -> tuple[int, str, str]:
    import asyncio

    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot", *args, cwd=ROOT, env={**os.environ, **env},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(process.communicate(), timeout=240)
    return process.returncode, out.decode(), err.decode()


async def test_models_download_says_what_and_how_big_then_fetches_each_file(tmp_path, tiny_models_dir):
    from bot.models.hub import human_size

    repos = {"test/tiny-blip": served(tiny_models_dir / "tiny-random-blip"),
             "test/tiny-sentiment": served(tiny_models_dir / "tiny-random-sentiment")}
    cache = tmp_path / "hf-cache"
    config = write_config(tmp_path, tiny_models_dir, models={
        "offline": False, "cache_dir": str(cache),
        "captioner": {"model": "test/tiny-blip"}, "sentiment": {"model": "test/tiny-sentiment"}})
    wanted = {repo: {name: data for name, data in files.items() if not name.endswith((".h5", ".msgpack"))}
              for repo, files in repos.items()}
    sizes = {repo: sum(map(len, files.values())) for repo, files in wanted.items()}

    async with FakeHub(repos) as hub:
        env = {"HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "0", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
        code, out, err = await run_cli_async("models", "download", "--dry-run", "--config", str(config), env=env)
        assert (code, err) == (0, ""), err
        assert not cache.exists()  # a dry run fetches nothing
        code, out, err = await run_cli_async("models", "download", "--config", str(config), env=env)
        fetched = [path for method, path in hub.requests if method == "GET" and "/resolve/" in path]
        code_after, checked, _ = await run_cli_async("models", "check", "--config", str(config),
                                                     env={"HF_HUB_OFFLINE": "1"})
    assert (code, err) == (0, ""), err
    lines = out.splitlines()
    assert lines[0] == (f"downloading 2 model(s), about {human_size(sum(sizes.values()))} in all, "
                        f"into {cache}:")
    blip, senti = len(wanted["test/tiny-blip"]), len(wanted["test/tiny-sentiment"])
    blip_size = re.escape(human_size(sizes["test/tiny-blip"]))
    assert re.fullmatch(rf"  captioner\s+test/tiny-blip\s+{blip} files, {blip_size}", lines[1]), lines[1]
    assert re.fullmatch(rf"  sentiment\s+test/tiny-sentiment\s+{senti} files, .* kB", lines[2]), lines[2]
    # Then a line per model and per file, with its size (a progress bar each, on a terminal).
    assert f"  captioner test/tiny-blip: {blip} files, {human_size(sizes['test/tiny-blip'])}" in lines
    weights = human_size(len(wanted["test/tiny-blip"]["model.safetensors"]))
    assert any(re.fullmatch(rf"  \[\d/{blip}\] model\.safetensors \({re.escape(weights)}\)", line) for line in lines)
    assert len(fetched) == blip + senti and not any(path.endswith((".h5", ".msgpack")) for path in fetched)
    assert re.search(r"^ok captioner test/tiny-blip ", out, re.M) and re.search(r"^ok sentiment ", out, re.M)
    # What came down is where the bot looks, offline.
    assert code_after == 0, checked
    assert checked.count("ok ") == 4


def test_human_sizes_read_like_the_progress_bars():
    from bot.models.hub import human_size

    assert [human_size(n) for n in (0, 999, 4_600, 990_300_000, 1_234_000_000, None)] == [
        "0 B", "999 B", "4.6 kB", "990.3 MB", "1.2 GB", "size unknown"]


def test_models_download_with_everything_here_downloads_nothing(tiny_config_path):
    result = run_cli("models", "download", "--config", str(tiny_config_path))
    assert result.returncode == 0, result.stderr
    assert result.stdout == "all 4 configured models are on this machine; nothing to download\n"


def test_models_download_with_downloads_switched_off(tmp_path, tiny_models_dir):
    config = write_config(tmp_path, tiny_models_dir, models={"captioner": {"model": "test/tiny-blip"}})
    result = run_cli("models", "download", "--config", str(config))  # run_cli sets HF_HUB_OFFLINE=1
    assert result.returncode == 1
    assert one_error_line(result.stderr).startswith("error: HF_HUB_OFFLINE is set")


async def test_run_says_what_it_loads_and_how_long_it_took(discord_server, ollama, cli_main, caplog, monkeypatch,
                                                            tmp_path, tiny_models_dir):
    import logging

    discord_server.gateway.privileged_intents_allowed = False  # stops the run once the services have started
    config = write_config(tmp_path, tiny_models_dir, llm={"base_url": ollama.base_url, "model": ollama.model})
    monkeypatch.setenv("DISCORD_TOKEN", discord_server.token)
    with caplog.at_level(logging.INFO, logger="bot.services"):
        assert await cli_main("--config", str(config), "run") == 1
    phases = [r.getMessage() for r in caplog.records if r.name == "bot.services"]
    assert len(phases) == 2, phases
    assert re.fullmatch(r"loading models \(captioner, tagger, embedder, sentiment(, reader)?\)… done in \d+\.\d s",
                        phases[0])
    assert re.fullmatch(rf"opening memory at {re.escape(str(tmp_path / 'chroma'))}… done in \d+\.\d s", phases[1])
