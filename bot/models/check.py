"""``models check`` / ``models download``: which configured models are here, fetch the rest."""

from __future__ import annotations

from dataclasses import dataclass

from bot.config import Settings
from bot.models.errors import ModelUnavailable
from bot.models.hub import fetch_hf, locate_clip, locate_hf, resolve_clip


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


def download_models(settings: Settings) -> list[ModelStatus]:
    """Fetch every configured model that is not already here (needs internet access)."""
    models = settings.models
    for row in check_models(settings):
        if row.present:
            continue
        if row.role == "tagger":
            resolve_clip(settings.resolve_model(models.tagger.model), models.tagger.pretrained,
                         cache_dir=models.cache_dir, offline=False)
        else:
            fetch_hf(row.role, settings.resolve_model(row.model_id), models.cache_dir)
    return check_models(settings)
