"""What the container images run, checked without a Docker engine (none runs on CI machines)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import yaml

from bot.config import load_settings
from bot.health import write_heartbeat

ROOT = Path(__file__).parent.parent


def dockerfile_json_array(instruction: str) -> list[str]:
    text = (ROOT / "Dockerfile").read_text()
    match = re.search(rf"^{instruction}.*?(\[.*?\])\s*$", text, re.MULTILINE | re.DOTALL)
    assert match, instruction
    return yaml.safe_load(match.group(1))


def test_compose_file_is_valid_and_wires_the_three_services():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert set(compose["services"]) == {"bot", "ollama", "chroma"}
    bot = compose["services"]["bot"]
    assert bot["environment"]["DISCORD_TOKEN"].startswith("${DISCORD_TOKEN")  # from the host, never a literal
    assert set(bot["depends_on"]) == {"ollama", "chroma"}
    for volume in bot["volumes"]:
        source = volume.split(":")[0]
        assert source in compose["volumes"] or (ROOT / source).exists(), volume
    mounted = next(v for v in bot["volumes"] if v.endswith(":ro")).split(":")[0]
    settings = load_settings(ROOT / mounted, environ={})
    assert settings.memory.backend == "http" and settings.memory.host == "chroma"
    assert settings.llm.base_url == "http://ollama:11434"


def test_dockerfile_runs_as_non_root_with_a_healthcheck():
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^USER imagebot$", text, re.MULTILINE)
    assert dockerfile_json_array("CMD") == ["python", "-m", "bot", "run"]
    assert "HEALTHCHECK" in text and '"python", "-m", "bot", "healthcheck"' in text
    assert "VOLUME" in text


def run_bot(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bot", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)


def test_container_entry_points(tmp_path):
    config = tmp_path / "config.toml"
    config.write_text('[discord]\nheartbeat_file = "hb.json"\nheartbeat_s = 30\n')
    # The healthcheck fails before the bot has connected, then passes once a fresh heartbeat exists.
    result = run_bot("--config", str(config), "healthcheck", cwd=tmp_path)
    assert result.returncode == 1 and "no heartbeat file" in result.stderr
    write_heartbeat(tmp_path / "hb.json", ready=True, latency_s=0.05, guilds=3)
    result = run_bot("--config", str(config), "healthcheck", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    write_heartbeat(tmp_path / "hb.json", ready=False, latency_s=None, guilds=0)
    assert run_bot("--config", str(config), "healthcheck", cwd=tmp_path).returncode == 1
    # `run` without a token: one clear line, no traceback, and the token is never echoed.
    result = run_bot("--config", str(config), "run", cwd=tmp_path)
    assert result.returncode == 2 and "DISCORD_TOKEN" in result.stderr and "Traceback" not in result.stderr
