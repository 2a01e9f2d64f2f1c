"""``models check`` / ``models download``: which configured models are here, fetch the rest.

A download is planned first (:func:`plan_downloads`: the files and their sizes, from the hub's listing)
so that the command, and the first start's pre-flight check, can say what will come down and roughly
how big it is before a multi-GB transfer starts.
"""

from __future__ import annotations

from dataclasses import dataclass

from bot.config import Settings
from bot.models.errors import ModelUnavailable
from bot.models.hub import (
    DownloadPlan,
    Progress,
    download,
    locate_clip,
    locate_hf,
    plan_clip,
    plan_hf,
)


@dataclass(frozen=True)
class ModelStatus:
    role: str
    model_id: str
    present: bool
    where: str


def check_models(settings: Settings) -> list[ModelStatus]:
    models = settings.models
    cache = models.cache_dir
    rows: list[ModelStatus] = []

    def add_hf(role: str, configured: str) -> None:
        location = locate_hf(role, settings.resolve_model(configured), cache)
        rows.append(ModelStatus(role, configured, location.path is not None, str(location.path or "needs download")))

    add_hf("captioner", models.captioner.model)
    try:
        clip = locate_clip(settings.resolve_model(models.tagger.model), models.tagger.pretrained, cache)
        rows.append(ModelStatus("tagger", clip.model_id, clip.path is not None, str(clip.path or "needs download")))
    except ModelUnavailable as exc:
        rows.append(ModelStatus("tagger", f"{models.tagger.model}/{models.tagger.pretrained}", False, str(exc)))
    add_hf("embedder", models.embedder.model)
    if models.sentiment.backend == "transformers":
        add_hf("sentiment", models.sentiment.model)
    else:
        rows.append(ModelStatus("sentiment", "vader", True, "lexicon inside the vaderSentiment package"))
    return rows


def plan_downloads(settings: Settings, rows: list[ModelStatus] | None = None, *,
                   timeout: float | None = None) -> list[DownloadPlan]:
    """What ``models download`` would fetch for the missing models (asks the hub; needs internet).

    Raises :class:`ModelUnavailable` for a model the hub does not know (or cannot be listed)."""
    models = settings.models
    plans = []
    for row in check_models(settings) if rows is None else rows:
        if row.present:
            continue
        if row.role == "tagger":
            plans.append(plan_clip(settings.resolve_model(models.tagger.model), models.tagger.pretrained,
                                   timeout=timeout))
        else:
            plans.append(plan_hf(row.role, settings.resolve_model(row.model_id), timeout=timeout))
    return plans


def download_models(settings: Settings, plans: list[DownloadPlan] | None = None,
                    progress: Progress | None = None) -> list[ModelStatus]:
    """Fetch every planned model (default: every configured one not already here); the check afterwards.

    ``progress`` is told a line per model and per file; huggingface_hub draws each file's progress bar
    on stderr when it is a terminal."""
    cache = settings.models.cache_dir
    for plan in plan_downloads(settings) if plans is None else plans:
        if progress is not None:
            progress(f"{plan.role} {plan.model_id}: {plan.summary()}")
        try:
            download(plan, cache, progress)
        except Exception as exc:
            raise ModelUnavailable(plan.role, plan.model_id,
                                   f"download failed ({type(exc).__name__}: {' '.join(str(exc).split())})") from None
    return check_models(settings)
