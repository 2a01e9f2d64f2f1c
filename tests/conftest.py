"""Shared fixtures: tiny stand-in models (built once per run), settings using them, real photos, and a
real ``chroma run`` server per test (chroma_process, chroma_server).

The fake Discord server fixtures (discord_server, discord_world) live in tests/harness/fixtures.py; the
helpers that several test modules use (no fixtures) in tests/helpers.py.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

# tests/helpers.py is a plain module: its asserts get pytest's messages only if registered before import.
pytest.register_assert_rewrite("tests.helpers")

if TYPE_CHECKING:
    from tests.helpers import ChromaServer

pytest_plugins = ["tests.harness.fixtures", "tests.imagebot_fixtures"]

# Tests never touch the network: a missing model must fail, not download.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.pop("DISCORD_TOKEN", None)
os.environ.pop("IMAGEBOT_CONFIG", None)


@pytest.fixture(scope="session")
def tiny_models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from bot.models.tiny import write_tiny_models

    directory = tmp_path_factory.mktemp("tiny-models")
    write_tiny_models(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_config_path(tiny_models_dir: Path) -> Path:
    return tiny_models_dir / "config.toml"


@pytest.fixture(scope="session")
def tiny_settings(tiny_config_path: Path):
    from bot.config import load_settings

    return load_settings(tiny_config_path, environ={})


@pytest.fixture(scope="session")
def analyzer(tiny_settings):
    from bot.pipeline import Analyzer

    return Analyzer.from_settings(tiny_settings)


def _encode(array, fmt: str = "JPEG", **kwargs) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).convert("RGB").save(buffer, fmt, **kwargs)
    return buffer.getvalue()


@pytest.fixture(scope="session")
def photos() -> dict[str, bytes]:
    """Real photos that ship inside scikit-image / scikit-learn, as JPEG bytes."""
    from skimage import data

    result = {name: _encode(getattr(data, name)()) for name in ("astronaut", "chelsea", "coffee", "rocket")}
    try:
        from sklearn.datasets import load_sample_images

        for name, array in zip(("china", "flower"), load_sample_images().images, strict=True):
            result[name] = _encode(array)
    except Exception:  # pragma: no cover - scikit-learn is a test dependency
        pass
    return result


@pytest.fixture
def chroma_process(tmp_path) -> Iterator[ChromaServer]:
    """A real ``chroma run`` (data and log in tmp_path) that the test may kill and start again."""
    from tests.helpers import running_chroma

    with running_chroma(tmp_path) as server:
        yield server


@pytest.fixture
def chroma_server(chroma_process) -> int:
    """The port of a running ``chroma run``."""
    return chroma_process.port
