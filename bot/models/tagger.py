"""Tagger role: open_clip CLIP, zero-shot top-k labels per label set.

Label prompts are encoded once when the tagger is built (and again only if a set's fingerprint
changes), never per image: tagging a batch is one image-encoder pass plus a matrix product per set.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from PIL import Image

from bot.analysis import Scored
from bot.labels import LabelSet


class ClipTagger:
    def __init__(
        self,
        *,
        model: str,
        weights: Path,
        model_id: str,
        label_sets: Mapping[str, LabelSet],
        device: torch.device,
        dtype: torch.dtype,
    ) -> None:
        import open_clip

        self.model_id = model_id
        self.device = device
        self.dtype = dtype
        if (weights / "open_clip_config.json").is_file() if weights.is_dir() else False:
            name = f"local-dir:{weights}"
            clip, _, preprocess = open_clip.create_model_and_transforms(name, device=device)
            self.tokenizer = open_clip.get_tokenizer(name)
        else:
            clip, _, preprocess = open_clip.create_model_and_transforms(
                model, pretrained=str(weights), device=device
            )
            self.tokenizer = open_clip.get_tokenizer(model)
        self.model = clip.to(dtype=dtype).eval()
        self.preprocess = preprocess
        self.logit_scale = float(clip.logit_scale.exp().item()) if hasattr(clip, "logit_scale") else 100.0
        self._label_sets: dict[str, LabelSet] = {}
        self._label_features: dict[str, torch.Tensor] = {}
        self._fingerprints: dict[str, str] = {}
        self.set_label_sets(label_sets)

    @property
    def label_sets(self) -> Mapping[str, LabelSet]:
        return self._label_sets

    def set_label_sets(self, label_sets: Mapping[str, LabelSet]) -> None:
        """Install label sets, encoding only those whose prompts changed."""
        for name, label_set in label_sets.items():
            if self._fingerprints.get(name) != label_set.fingerprint:
                self._label_features[name] = self.encode_texts(label_set.prompts)
                self._fingerprints[name] = label_set.fingerprint
        for name in set(self._label_features) - set(label_sets):
            del self._label_features[name], self._fingerprints[name]
        self._label_sets = dict(label_sets)

    @torch.inference_mode()
    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """L2-normalised CLIP text embeddings, float32 on the model's device."""
        tokens = self.tokenizer(list(texts)).to(self.device)
        features = self.model.encode_text(tokens).float()
        return torch.nn.functional.normalize(features, dim=-1)

    def preprocess_batch(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """CPU-side resize/crop/normalise; kept separate so it can run off the GPU's critical path."""
        return torch.stack([self.preprocess(image) for image in images])

    @torch.inference_mode()
    def encode_images(self, images: Sequence[Image.Image] | torch.Tensor) -> torch.Tensor:
        pixels = images if isinstance(images, torch.Tensor) else self.preprocess_batch(images)
        # Copy first, convert on the device: keeps a pinned-memory source asynchronous on CUDA.
        pixels = pixels.to(self.device, non_blocking=True).to(self.dtype)
        features = self.model.encode_image(pixels).float()
        return torch.nn.functional.normalize(features, dim=-1)

    def probabilities(self, image_features: torch.Tensor, set_name: str) -> torch.Tensor:
        """Softmax over one set's labels for each image: shape (images, labels)."""
        logits = self.logit_scale * image_features @ self._label_features[set_name].T
        return logits.softmax(dim=-1)

    def tag(
        self, image_features: torch.Tensor, set_names: Sequence[str] | None = None
    ) -> list[dict[str, list[Scored]]]:
        """Top-k labels per set for each image, best first."""
        names = list(set_names) if set_names is not None else list(self._label_sets)
        results: list[dict[str, list[Scored]]] = [{} for _ in range(image_features.shape[0])]
        for name in names:
            label_set = self._label_sets[name]
            probs = self.probabilities(image_features, name).cpu()
            top = probs.topk(label_set.top_k, dim=-1)
            for row, (scores, indices) in enumerate(zip(top.values.tolist(), top.indices.tolist(), strict=True)):
                results[row][name] = [
                    Scored(label_set.labels[i], round(s, 6)) for s, i in zip(scores, indices, strict=True)
                ]
        return results

    def full_scores(self, image_features: torch.Tensor, set_name: str) -> list[dict[str, float]]:
        """Every label's probability in one set (used for image sentiment)."""
        labels = self._label_sets[set_name].labels
        rows = self.probabilities(image_features, set_name).cpu().tolist()
        return [dict(zip(labels, row, strict=True)) for row in rows]
