"""Caption-only topic assignment: the caption's text embedding against topic prompts.

The image-informed counterpart is the tagger's ``topics`` label set (CLIP); keeping both lets the
bot (and ``python -m bot compare``) ask whether looking at the image changes the answer.
"""

from __future__ import annotations

import numpy as np

from bot.analysis import Scored
from bot.labels import LabelSet
from bot.models.embedder import TextEmbedder

# Cosine similarities of MiniLM live in a narrow band; this temperature spreads them into
# probabilities comparable to CLIP's softmax (which uses a learned scale of ~100).
_SCALE = 20.0


class CaptionTopics:
    def __init__(self, embedder: TextEmbedder, topics: LabelSet) -> None:
        self.topics = topics
        self.topic_vectors = embedder.embed(topics.prompts)

    def assign(self, caption_vectors: np.ndarray) -> list[list[Scored]]:
        if len(caption_vectors) == 0:
            return []
        logits = _SCALE * caption_vectors @ self.topic_vectors.T
        logits -= logits.max(axis=1, keepdims=True)
        probs = np.exp(logits)
        probs /= probs.sum(axis=1, keepdims=True)
        k = self.topics.top_k
        results = []
        for row in probs:
            best = np.argsort(-row, kind="stable")[:k]
            results.append([Scored(self.topics.labels[i], round(float(row[i]), 6)) for i in best])
        return results
