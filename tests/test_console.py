"""`python -m bot console` as a newcomer runs it: tiny models, the Ollama stand-in, image paths typed in.

The transcript test drives the real entry point (a `python -m bot console` process fed on stdin) with the
memory on (embedded Chroma in the test's folder): pictures shown in one session are recalled in the next.
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
from pathlib import Path

from bot.analysis import CONTEXT_PREFIX
from bot.console import CONSOLE_USER_ID, picture_id, read_picture, split_paths
from tests.harness.ollama_server import FakeOllamaServer

ROOT = Path(__file__).parent.parent


def test_split_paths_finds_image_paths_in_text(tmp_path):
    photo = tmp_path / "cat photo.jpg"
    photo.write_bytes(b"x")
    text, paths = split_paths(f"what is in '{photo}' and /nowhere/dog.png please")
    assert text == "what is in and please"
    assert paths == [photo, Path("/nowhere/dog.png")]
    assert split_paths("/image a.jpg notes.txt") == ("", [Path("a.jpg"), Path("notes.txt")])
    # A bare name that ends like a picture is a path, there or not: a typo is reported, not chatted about.
    assert split_paths("what about catt.JPG?") == ("what about catt.JPG?", [])  # "?" is part of the word
    assert split_paths("what about catt.JPG") == ("what about", [Path("catt.JPG")])
    assert split_paths("it's a 'broken quote") == ("it's a 'broken quote", [])
    assert split_paths("what's in \"my cat.png\"?") == ("what's in ?", [Path("my cat.png")])


def test_read_picture_says_what_is_wrong(tmp_path):
    assert read_picture(tmp_path / "nope.jpg", 100).problem == f"no such file: {tmp_path / 'nope.jpg'}"
    assert read_picture(tmp_path, 100).problem == f"not a file: {tmp_path}"
    big = tmp_path / "big.png"
    big.write_bytes(b"x" * 101)
    assert (read_picture(big, 100).data, read_picture(big, 100).size) == (b"", 101)  # refused later, unread
    small = tmp_path / "small.png"
    small.write_bytes(b"abc")
    picture = read_picture(small, 100)
    assert (picture.data, picture.problem, picture.url) == (b"abc", None, small.as_uri())
    assert picture_id(b"abc") == picture_id(b"abc") != picture_id(b"abd")
    assert 0 < picture_id(b"abc") < 2**62


def console_config(tmp_path: Path, tiny_models_dir: Path, ollama: FakeOllamaServer) -> Path:
    """The tiny-models config with absolute model paths, the memory in ``tmp_path``, the Ollama peer."""
    config = tmp_path / "config.toml"
    config.write_text(
        (tiny_models_dir / "config.toml").read_text()
        .replace('model = "./', f'model = "{tiny_models_dir}/')
        .replace('path = "./chroma"', f'path = "{tmp_path / "memory" / "chroma"}"')
        + f'\n[llm]\nbase_url = "{ollama.base_url}"\nmodel = "{ollama.model}"\n'
    )
    return config


async def console_session(config: Path, *lines: str, options: tuple[str, ...] = ()) -> tuple[str, str]:
    """One `python -m bot console` process fed ``lines`` on stdin; its (stdout, stderr)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot", "console", "--config", str(config), *options,
        cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"},
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate("".join(f"{line}\n" for line in lines).encode()),
                                            timeout=240)
    assert process.returncode == 0, stderr.decode()
    assert "Traceback" not in stderr.decode()
    return stdout.decode(), stderr.decode()


def caption_of(transcript: str, filename: str) -> str:
    match = re.search(rf"\(bot sees {re.escape(filename)}\) \[Image Attached: (.+?)\. Labels:", transcript)
    assert match, transcript
    return match.group(1)


async def test_console_transcript(tiny_models_dir, photos, tmp_path):
    cat, rocket = tmp_path / "cat.jpg", tmp_path / "rocket.jpg"
    cat.write_bytes(photos["chelsea"])
    rocket.write_bytes(photos["rocket"])
    async with FakeOllamaServer() as ollama:
        config = console_config(tmp_path, tiny_models_dir, ollama)

        # Session 1: show two pictures, ask about them, mistype a path.
        first, errors = await console_session(
            config,
            f"what is this? {cat}",
            str(rocket),
            "which of the two is nicer?",
            f"{tmp_path}/rocekt.jpg is the best one",
            "/quit",
        )
        asked = ollama.requests[:]

        # Session 2, a new process on the same memory: recall by words and with /find, /vibe, /help.
        words = caption_of(first, "rocket.jpg")
        second, _ = await console_session(
            config,
            f"show me the {words} picture from earlier",
            f"/find {words}",
            "any photos from yesterday?",
            f"/vibe {cat}",
            "/vibe catt.jpg",
            "/fnd rocket",
            "/help",
            "/forget",
            "/forget yes",
            "/find",
        )
        vibe_story = ollama.requests[len(asked):]

    assert errors == ""  # the Ollama peer is up: no pre-flight warning
    # Start-up: what is loaded, and how long it took; where the memory is.
    memory = tmp_path / "memory" / "chroma"
    assert f"memory: {memory} (the console's own space)" in first
    assert re.search(r"^loading models \(captioner, tagger, embedder, sentiment(, reader)?\)… done in \d+\.\d s$",
                     first, re.M), first
    assert re.search(rf"^opening memory at {re.escape(str(memory))}… done in \d+\.\d s$", first, re.M), first

    # Both pictures analysed, the conversation (both context lines) went to the LLM.
    assert f"(bot sees cat.jpg) {CONTEXT_PREFIX}" in first
    assert f"(bot sees rocket.jpg) {CONTEXT_PREFIX}" in first
    assert first.count("imagebot> I can see 1 image(s) in our chat.") == 1
    assert first.count("imagebot> I can see 2 image(s) in our chat.") == 2
    assert len(asked) == 3
    said = "\n".join(m["content"] for m in asked[-1].messages if m["role"] == "user")
    assert said.count(CONTEXT_PREFIX) == 2 and said.endswith("you: which of the two is nicer?")
    # The mistyped path: said once, and nothing of that line went anywhere.
    assert f"  no such file: {tmp_path}/rocekt.jpg\n" in first
    assert "That file is empty" not in first and "is the best one" not in "".join(r.prompt_text for r in asked)

    # Recall in plain words: answered from the memory (not by the LLM), the rocket listed with its path.
    found = second.split("imagebot> ")
    recall = next(part for part in found if part.startswith("Here's what I found for"))
    assert f"{rocket} — {words}" in recall
    assert re.search(r"^  1\. ", recall, re.M)
    find = next(part for part in found if part.startswith(f"Pictures matching “{words}”:"))
    assert f"{rocket} — {words}" in find and f"{cat} — " in find  # both pictures are in the console's space
    assert "imagebot> I couldn't find a picture like that here." in second  # nothing from yesterday
    # /vibe on a path: the rating, its story from the LLM; a mistyped path says so.
    assert re.search(r"^imagebot> Vibe check: \d+\.\d/10 — ", second, re.M), second
    assert "**" not in second
    assert len(vibe_story) == 1  # the story; searches never went to the LLM
    assert "  no such file: catt.jpg\n" in second
    assert "  unknown command /fnd: /help lists the commands\n" in second
    assert "/find WORDS" in second and "/vibe PATH [PATH2]" in second  # /help
    # /forget asks first, then empties the console's space.
    assert "Type /forget yes to go ahead." in second
    assert "imagebot> Done: I forgot 2 picture(s) you showed in the console." in second
    assert second.rstrip().endswith("imagebot> I don't remember any pictures from the console yet.")
    print(first, second, sep="\n")  # the transcript, for `pytest -s`


async def test_console_without_memory_still_chats(tiny_models_dir, photos, tmp_path):
    photo = tmp_path / "coffee.jpg"
    photo.write_bytes(photos["coffee"])
    async with FakeOllamaServer() as ollama:
        config = console_config(tmp_path, tiny_models_dir, ollama)
        out, _ = await console_session(config, f"{photo} nice?", "/find coffee", "show me the coffee picture",
                                       options=("--no-memory",))
    assert "memory: off (--no-memory)" in out
    assert "opening memory" not in out and not (tmp_path / "memory").exists()
    assert "imagebot> I can see 1 image(s) in our chat." in out
    assert out.count("imagebot> My memory is off in this session (started with --no-memory).") == 1
    assert len(ollama.requests) == 2  # the plain-words search is ordinary chat without a memory


def test_console_user_is_no_discord_account():
    assert CONSOLE_USER_ID < 2**22  # a snowflake's low 22 bits are worker/sequence: every real id is larger
