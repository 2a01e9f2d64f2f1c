"""The production bot as a separate process, connected to this test's local Discord peer.

For what needs a real process boundary: ``kill -9`` and restarts, and the bot's own memory use (in
tests the bot otherwise shares its process with the protocol peer and the test's data). The child runs
``python -m bot run``'s code (``bot.cli.main``) with discord.py pointed at the peer, exactly as
:meth:`FakeDiscordServer.install` does in-process.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from tests.harness.discord_server import FakeDiscordServer

ROOT = Path(__file__).resolve().parents[2]


def write_bot_config(tiny_models_dir: Path, data_dir: Path, extra_toml: str = "") -> Path:
    """The tiny-model config with absolute model paths, memory and heartbeat under ``data_dir``, no
    Ollama (the chat falls back to describing pictures), generous rate limits; plus ``extra_toml``."""
    text = (tiny_models_dir / "config.toml").read_text()
    text = text.replace('model = "./tiny-random-', f'model = "{tiny_models_dir}/tiny-random-')
    text = text.replace('path = "./chroma"', f'path = "{data_dir / "chroma"}"')
    text += textwrap.dedent(f"""
        [llm]
        base_url = "http://127.0.0.1:9"

        [discord]
        heartbeat_file = "{data_dir / "heartbeat.json"}"
        sync_commands = false

        [rate_limits]
        per_user = 1000
        per_channel = 1000
    """) + textwrap.dedent(extra_toml)
    path = data_dir / "config.toml"
    path.write_text(text)
    return path


def start_bot_process(server: FakeDiscordServer, config: Path, log: Path) -> subprocess.Popen[bytes]:
    """``python -m bot --config CONFIG run`` against ``server``; stdout and stderr appended to ``log``."""
    script = textwrap.dedent(f"""
        import sys, discord, yarl
        discord.http.Route.BASE = {server.api_base!r}
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL({server.gateway_url!r})
        discord.Asset.BASE = {server.cdn_base!r}
        from bot.cli import main
        sys.exit(main(["--config", {str(config)!r}, "run"]))
    """)
    env = {**os.environ, "DISCORD_TOKEN": server.token, "HF_HUB_OFFLINE": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    with log.open("ab") as out:
        return subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, env=env, stdout=out,
                                stderr=subprocess.STDOUT)


def stop_bot_process(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)


def proc_status_bytes(pid: int | str, field: str = "VmRSS") -> int:
    """A memory figure of a process from /proc (Linux), in bytes; 0 when unavailable."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        return int(status.split(f"{field}:")[1].split()[0]) * 1024
    except (OSError, IndexError, ValueError):
        return 0


def child_pids(pid: int) -> list[int]:
    """Direct children of ``pid``, whichever of its threads started them (Linux /proc)."""
    children: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children += [int(p) for p in (task / "children").read_text().split()]
        except OSError:
            continue
    return children
