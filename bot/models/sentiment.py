"""Sentiment role: negative / neutral / positive with scores, for caption and story text.

Two backends behind one interface: a 3-class transformers classifier (default,
``cardiffnlp/twitter-roberta-base-sentiment-latest``) and VADER, a lexicon that ships inside its
PyPI package and so works on a host with no downloaded weights at all.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import torch

from bot.analysis import SENTIMENT_LABELS, Sentiment

# Checkpoints that only name their classes LABEL_0..2 use the cardiffnlp order.
_GENERIC_ORDER = {"label_0": "negative", "label_1": "neutral", "label_2": "positive"}
_ALIASES = {"neg": "negative", "neu": "neutral", "pos": "positive"}


class SentimentModel(Protocol):
    model_id: str

    def score(self, texts: Sequence[str]) -> list[Sentiment]: ...


class TransformersSentiment:
    def __init__(self, path: Path, *, model_id: str, device: torch.device) -> None:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.model_id = model_id
        self.device = device
        self.tokenizer = AutoTokenizer.from_pretrained(str(path))
        self.model = AutoModelForSequenceClassification.from_pretrained(str(path)).to(device).eval()
        self.index_to_label = self._label_map(self.model.config.id2label)

    @staticmethod
    def _label_map(id2label: dict[int, str]) -> dict[int, str]:
        mapping: dict[int, str] = {}
        for index, raw in id2label.items():
            name = raw.lower()
            name = _GENERIC_ORDER.get(name, _ALIASES.get(name, name))
            if name not in SENTIMENT_LABELS:
                raise ValueError(
                    f"sentiment model labels must be negative/neutral/positive, got {sorted(id2label.values())}"
                )
            mapping[int(index)] = name
        if sorted(mapping.values()) != sorted(SENTIMENT_LABELS):
            raise ValueError(f"sentiment model must have exactly 3 classes, got {sorted(id2label.values())}")
        return mapping

    @torch.inference_mode()
    def score(self, texts: Sequence[str]) -> list[Sentiment]:
        if not texts:
            return []
        batch = self.tokenizer(list(texts), padding=True, truncation=True, max_length=128, return_tensors="pt")
        logits = self.model(**batch.to(self.device)).logits.float()
        probs = logits.softmax(dim=-1).cpu().tolist()
        return [
            Sentiment.from_scores({self.index_to_label[i]: round(p, 6) for i, p in enumerate(row)})
            for row in probs
        ]


class VaderSentiment:
    """VADER's compound score in [-1, 1] turned into three scores that sum to 1.

    VADER's own neg/neu/pos are word proportions (almost any sentence is mostly 'neutral'), so the
    label follows VADER's documented compound thresholds (±0.05) instead.
    """

    model_id = "vader"

    def __init__(self) -> None:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

        self.analyzer = SentimentIntensityAnalyzer()

    def score(self, texts: Sequence[str]) -> list[Sentiment]:
        results = []
        for text in texts:
            compound = float(self.analyzer.polarity_scores(text)["compound"])
            scores = {
                "negative": round(max(-compound, 0.0), 6),
                "neutral": round(1.0 - abs(compound), 6),
                "positive": round(max(compound, 0.0), 6),
            }
            label = "positive" if compound >= 0.05 else "negative" if compound <= -0.05 else "neutral"
            results.append(Sentiment(label, scores))
        return results
