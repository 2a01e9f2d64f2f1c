"""`python -m bot console` as a newcomer runs it: tiny models, the Ollama stand-in, image paths typed in."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from bot.analysis import CONTEXT_PREFIX
from bot.console import split_paths
from tests.harness.ollama_server import FakeOllamaServer

ROOT = Path(__file__).parent.parent


def test_split_paths_finds_image_paths_in_text(tmp_path):
    photo = tmp_path / "cat photo.jpg"
    photo.write_bytes(b"x")
    text, paths = split_paths(f"what is in '{photo}' and /nowhere/dog.png please")
    assert text == "what is in and please"
    assert paths == [photo, Path("/nowhere/dog.png")]
    assert split_paths("/image a.jpg b.webp") == ("", [Path("a.jpg"), Path("b.webp")])
    assert split_paths("I like jpg.jpg files") == ("I like jpg.jpg files", [])  # not a file, no slash


async def test_console_session(tiny_models_dir, photos, tmp_path):
    photo = tmp_path / "astronaut.jpg"
    photo.write_bytes(photos["astronaut"])
    config = tmp_path / "config.toml"
    async with FakeOllamaServer() as ollama:
        config.write_text(
            (tiny_models_dir / "config.toml").read_text()
            .replace('model = "./', f'model = "{tiny_models_dir}/')
            + f'\n[llm]\nbase_url = "{ollama.base_url}"\nmodel = "{ollama.model}"\n'
        )
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bot", "--config", str(config), "console",
            cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"},
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        script = f"what is this? {photo}\n/nowhere/missing.png\nthanks\n/quit\n".encode()
        stdout, stderr = await asyncio.wait_for(process.communicate(script), timeout=240)
    out = stdout.decode()
    assert process.returncode == 0, stderr.decode()
    assert f"(bot sees astronaut.jpg) {CONTEXT_PREFIX}" in out
    assert "(bot could not read missing.png)" in out
    assert out.count("imagebot> ") == 3
    assert "imagebot> I can see 1 image(s) in our chat." in out
    assert CONTEXT_PREFIX in "\n".join(m["content"] for m in ollama.requests[0].messages)
    assert "Traceback" not in stderr.decode()
