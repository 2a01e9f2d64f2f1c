"""The CLI end to end, as a user runs it: `python -m bot ...` in a subprocess."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
LINE = re.compile(
    r"^\[Image Attached: [^\[\]\n]+\. Labels: [^\[\]\n]+\. "
    r"Mood: (negative|neutral|positive)\. Topic: [^\[\]\n]+\]$"
)


def run_cli(*args: str, cwd: Path = ROOT, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "bot", *args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=300
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
