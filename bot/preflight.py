"""Pre-flight checks: what ``run`` and ``console`` need, checked before connecting to anything.

Why: the label files, the model weights and the memory backend used to be checked only inside
``ImageBot.setup_hook``, i.e. after a successful Discord login, and a problem there ended in a
traceback. These checks are cheap (a few file reads, a cache look-up, two local HTTP requests with a
short timeout), so ``python -m bot run`` and ``console`` run them first and a known problem becomes
one line naming what is wrong and how to fix it, before any login attempt.

Fatal problems (``error``): label files, model weights, the memory backend. Non-fatal (``warning``):
the Ollama server or its chat model — the bot still works without them (chatting falls back to
describing the pictures). The checks stop at the first error: the user fixes one thing at a time and
sees one line. Discord-free, like the rest of the core.
"""

from __future__ import annotations

import json
import logging
import tempfile
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, TextIO

from bot.config import Settings
from bot.labels import REQUIRED_SETS, LabelSetError, load_label_sets

if TYPE_CHECKING:
    from bot.models.check import ModelStatus

log = logging.getLogger(__name__)

Severity = Literal["ok", "warning", "error"]
DEFAULT_TIMEOUT_S = 2.0
LLM_FALLBACK = "chatting falls back to describing pictures"


@dataclass(frozen=True)
class Finding:
    """One check's outcome; ``message`` is a single line that says what, and how to fix it."""

    check: Literal["labels", "models", "memory", "llm"]
    severity: Severity
    message: str

    @property
    def line(self) -> str:
        return f"{self.severity}: {self.message}"


def one_line(text: str) -> str:
    """Collapse a (possibly multi-line) library message into one line."""
    return " ".join(str(text).split())


def _reason(exc: BaseException) -> str:
    """``Connection refused`` rather than ``<urlopen error [Errno 111] Connection refused>``."""
    inner = getattr(exc, "reason", None) or exc
    if isinstance(inner, OSError) and inner.strerror:
        return inner.strerror
    return one_line(str(inner)) or type(inner).__name__


def _get_json(url: str, timeout_s: float) -> object:
    """GET ``url``; raises ``urllib.error.HTTPError`` for an HTTP error, ``OSError``/``ValueError`` otherwise."""
    with urllib.request.urlopen(url, timeout=timeout_s) as response:
        return json.loads(response.read() or b"null")


# ----- labels ---------------------------------------------------------------------------------


def check_labels(settings: Settings, *, vibe: bool = False) -> Finding:
    """The tagging label sets (and, for the Discord bot, the /vibe profile) parse."""
    directory = settings.labels_dir
    try:
        sets = load_label_sets(directory, settings.models.tagger.top_k)
        if vibe:
            from bot.vibe.profile import load_profile, profile_path

            load_profile(profile_path(directory))
    except LabelSetError as exc:
        return Finding("labels", "error", (
            f"label files: {one_line(str(exc))} (fix that file, or point [models.tagger] labels_dir at a folder "
            f"with {', '.join(f'{name}.txt' for name in REQUIRED_SETS)})"))
    except (OSError, UnicodeDecodeError) as exc:
        where = getattr(exc, "filename", None) or directory
        return Finding("labels", "error", f"cannot read the label file {where}: {_reason(exc)}")
    return Finding("labels", "ok", f"{len(sets)} label sets in {directory}")


# ----- models ---------------------------------------------------------------------------------


def check_model_files(settings: Settings, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> Finding:
    """Every configured model's weights are here, or may and can be downloaded (then: how much)."""
    if settings.inference.backend == "ray":
        return Finding("models", "ok", "models run on the Ray Serve deployment (not checked here)")
    from bot.models.check import check_models
    from bot.models.errors import ModelUnavailable
    from bot.models.hub import _ensure_hub_reachable, offline_forced

    rows = check_models(settings)
    missing = [row for row in rows if not row.present]
    if not missing:
        return Finding("models", "ok", f"{len(rows)} models on this machine")
    for row in missing:  # a model no download can fix (e.g. an unknown open_clip pair)
        if row.where != "needs download":
            return Finding("models", "error", one_line(row.where))
    names = ", ".join(f"{row.role} model {row.model_id!r}" for row in missing)
    if offline_forced(settings.models.offline):
        if len(missing) == 1:
            return Finding("models", "error", one_line(str(ModelUnavailable(missing[0].role, missing[0].model_id))))
        return Finding("models", "error", (
            f"{names} are not available locally and downloads are off (models.offline or HF_HUB_OFFLINE): "
            "run `python -m bot models download` on a machine with internet access (or copy its "
            "Hugging Face cache, ~/.cache/huggingface, to this one), or point the config at local folders"))
    try:
        _ensure_hub_reachable(missing[0].role, missing[0].model_id)
    except ModelUnavailable as exc:
        return Finding("models", "error", one_line(str(exc)))
    return Finding("models", "warning", (
        f"{names} {'is' if len(missing) == 1 else 'are'} not on this machine yet and will be downloaded now"
        f"{_download_size(settings, missing, timeout_s)} (first start only; `python -m bot models download` "
        "does it ahead of time)"))


def _download_size(settings: Settings, missing: list[ModelStatus], timeout_s: float) -> str:
    """``: about 1.2 GB`` from the hub's file listing, so nobody starts a multi-GB download unawares;
    empty when the hub does not answer in time (the download itself will then say what is wrong)."""
    from bot.models.check import plan_downloads
    from bot.models.errors import ModelUnavailable
    from bot.models.hub import human_size

    try:
        plans = plan_downloads(settings, missing, timeout=timeout_s)
    except ModelUnavailable as exc:
        log.debug("pre-flight: no download size: %s", exc)
        return ""
    return f": about {human_size(sum(plan.total_bytes for plan in plans))}"


# ----- memory ---------------------------------------------------------------------------------


def _not_writable(folder: Path) -> str | None:
    """Why ``folder`` cannot be created or written to, or None when it can (creates it, like the store)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        return _reason(exc)
    return None


def check_memory(settings: Settings, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> Finding:
    """Embedded: the Chroma folder is writable. HTTP: the Chroma server answers its heartbeat.

    Both need the folder of ``memory.path`` to be writable: the ingest ledger lives beside it.
    """
    memory = settings.memory
    chroma = settings.resolve_path(memory.path)
    if memory.backend == "http":
        server = f"http://{memory.host}:{memory.port}"
        try:
            _get_json(f"{server}/api/v2/heartbeat", timeout_s)
        except urllib.error.HTTPError as exc:
            return Finding("memory", "error", (
                f"{server} answered HTTP {exc.code} to /api/v2/heartbeat: it is not a Chroma 1.x server; "
                "fix [memory] host and port"))
        except (OSError, ValueError) as exc:
            return Finding("memory", "error", (
                f"the Chroma server at {server} does not answer ({_reason(exc)}): start it "
                f"(`chroma run --path data/chroma --port {memory.port}`), fix [memory] host and port, "
                'or use backend = "embedded"'))
        folder, what = chroma.parent, "the folder for the ingest ledger"
    else:
        folder, what = chroma, "the memory folder"
    problem = _not_writable(folder)
    if problem is not None:
        return Finding("memory", "error", (
            f"{what} {folder} is not writable ({problem}): fix its permissions or set [memory] path to a "
            "writable folder"))
    where = f"Chroma server at http://{memory.host}:{memory.port}" if memory.backend == "http" else str(folder)
    return Finding("memory", "ok", f"memory: {where}")


# ----- LLM ------------------------------------------------------------------------------------


def _model_listed(model: str, names: set[str]) -> bool:
    """``llama3.2`` is Ollama's ``llama3.2:latest``."""
    return model in names or (":" not in model and f"{model}:latest" in names)


def check_llm(settings: Settings, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> Finding:
    """The Ollama server answers ``/api/tags`` and lists the configured chat model (never fatal)."""
    llm = settings.llm
    try:
        data = _get_json(f"{llm.base_url}/api/tags", timeout_s)
    except urllib.error.HTTPError as exc:
        return Finding("llm", "warning", (
            f"{llm.base_url} answered HTTP {exc.code} to /api/tags: is [llm] base_url an Ollama server? "
            f"{LLM_FALLBACK}"))
    except (OSError, ValueError) as exc:
        return Finding("llm", "warning", (
            f"no Ollama server answers at {llm.base_url} ({_reason(exc)}): start it (`ollama serve`) or fix "
            f"[llm] base_url; {LLM_FALLBACK}"))
    models = data.get("models") if isinstance(data, dict) else None
    names = {str(entry.get(key)) for entry in models or [] if isinstance(entry, dict) for key in ("name", "model")}
    if not _model_listed(llm.model, names):
        return Finding("llm", "warning", (
            f"the chat model `{llm.model}` is not installed on the Ollama server at {llm.base_url}: run "
            f"`ollama pull {llm.model}`; {LLM_FALLBACK}"))
    return Finding("llm", "ok", f"chat model {llm.model} on {llm.base_url}")


# ----- all of them ----------------------------------------------------------------------------


def run_checks(
    settings: Settings,
    *,
    memory: bool = True,
    vibe: bool = False,
    llm: bool = True,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> list[Finding]:
    """The checks in order (labels, models, memory, LLM), stopping after the first error.

    ``memory=False`` for ``console --no-memory``; ``vibe=True`` for the Discord bot and the console
    (/vibe reads its own label file, the profile).
    """
    findings: list[Finding] = []
    checks = [
        lambda: check_labels(settings, vibe=vibe),
        lambda: check_model_files(settings, timeout_s=timeout_s),
        *([lambda: check_memory(settings, timeout_s=timeout_s)] if memory else []),
        *([lambda: check_llm(settings, timeout_s=timeout_s)] if llm else []),
    ]
    for check in checks:
        finding = check()
        findings.append(finding)
        if finding.severity == "error":
            break
    return findings


def report(findings: Sequence[Finding], stream: TextIO) -> bool:
    """Print warnings and errors to ``stream`` (one line each), log the rest; True when none is fatal."""
    for finding in findings:
        if finding.severity == "ok":
            log.debug("pre-flight: %s", finding.message)
        else:
            print(finding.line, file=stream, flush=True)
    return not any(finding.severity == "error" for finding in findings)
