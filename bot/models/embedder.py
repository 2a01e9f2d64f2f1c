"""Embedder role: sentence-transformers text embeddings (caption text and search queries)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from bot.config import Settings


class TextEmbedder:
    @classmethod
    def from_settings(cls, settings: Settings) -> TextEmbedder:
        """The configured embedder, resolved like every role (a missing model raises ModelUnavailable),
        for callers that need it alone (the CLI's ``topics``). ``Analyzer.from_settings`` resolves every
        role's path before loading any, so it names a missing model before minutes of loading, and
        builds the embedder from that path itself."""
        from bot.models.device import resolve_device
        from bot.models.hub import resolve_hf

        models = settings.models
        model_id = settings.resolve_model(models.embedder.model)
        path = resolve_hf("embedder", model_id, cache_dir=models.cache_dir, offline=models.offline)
        return cls(path, model_id=models.embedder.model, device=resolve_device(models.device))

    def __init__(self, path: Path, *, model_id: str, device: torch.device) -> None:
        from sentence_transformers import SentenceTransformer

        self.model_id = model_id
        self.model = SentenceTransformer(str(path), device=str(device), local_files_only=True)
        self.dimension = int(self.model.get_embedding_dimension()) if hasattr(
            self.model, "get_embedding_dimension"
        ) else int(self.model.get_sentence_embedding_dimension())

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """L2-normalised float32 embeddings, one row per text."""
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        vectors = self.model.encode(
            list(texts), batch_size=64, convert_to_numpy=True, normalize_embeddings=True,
            show_progress_bar=False,
        )
        return vectors.astype(np.float32, copy=False)
