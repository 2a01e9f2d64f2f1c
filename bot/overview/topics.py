"""Discovered topics: cluster a server's caption embeddings, so topics are not only the fixed list.

A simple, offline recipe (BERTopic is not available offline; this is its core idea without the extra
models): k-means over the stored caption vectors (MiniLM, unit length, so Euclidean k-means ranks like
cosine), ``k`` chosen by the silhouette score, each cluster named by its most distinctive caption words
(class-based TF-IDF: frequent in this cluster, rare in the others) and by the fixed topic label nearest
to its centroid. scikit-learn is used when installed (a test dependency, not a runtime one); otherwise a
small seeded numpy k-means gives the same kind of result.

Privacy: a cluster's name is made of caption words, so it says something about every channel its
images come from. The model runs over the whole server (refreshed by an admin or the operator) but
records each cluster's channels and whether any image is NSFW, and :meth:`TopicCluster.visible_to`
shows a cluster only to someone who can read all of those channels.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from bot.memory.records import StoredImage

CLUSTER_PREFIX = "cluster:"  # /gallery topic values that name a discovered topic
MAX_K = 12
SILHOUETTE_SAMPLE = 2000
NAME_WORDS = 3
# Words that say nothing about a topic (and BLIP's habitual "arafed"/"araffe" artefacts).
STOPWORDS = frozenset("""
a an the of on in with at and or to for from by is are was were be been it its this that these those there
their his her he she they them some two three four five one many several other another up down over under
into onto near next front back top bottom side out off as while has have having very small large big little
picture pictures photo photos image images view close closeup shot arafed araffe arafe
""".split())
_WORD = re.compile(r"[a-z][a-z'-]+")


@dataclass(frozen=True)
class TopicCluster:
    id: int
    name: str  # "dog, beach, running"
    words: tuple[str, ...]
    label: str | None  # the nearest fixed topic label (None when no label vectors were given)
    label_similarity: float | None
    size: int
    members: tuple[int, ...]  # attachment ids
    channels: tuple[int, ...]  # where its images were posted
    nsfw: bool  # any of them from an age-restricted channel

    @property
    def value(self) -> str:
        """The /gallery ``topic`` value that selects this cluster."""
        return f"{CLUSTER_PREFIX}{self.id}"

    @property
    def title(self) -> str:
        return f"{self.name} (≈ {self.label})" if self.label else self.name

    def visible_to(self, visible_channel_ids: Iterable[int] | None, allow_nsfw: bool) -> bool:
        """Whether someone who can read ``visible_channel_ids`` (None: everything) may see this cluster's
        name: only if they can read every channel its caption words come from."""
        if self.nsfw and not allow_nsfw:
            return False
        return visible_channel_ids is None or set(self.channels) <= set(visible_channel_ids)


@dataclass(frozen=True)
class TopicModel:
    guild_id: int
    created_at: datetime
    images: int
    k: int
    method: str  # "kmeans (scikit-learn)" / "kmeans (numpy)"
    silhouette: float | None
    clusters: tuple[TopicCluster, ...]

    def cluster(self, value: str) -> TopicCluster | None:
        """The cluster a /gallery topic value (``cluster:3``) names."""
        if not value.startswith(CLUSTER_PREFIX):
            return None
        for cluster in self.clusters:
            if cluster.value == value:
                return cluster
        return None

    def visible(self, visible_channel_ids: Iterable[int] | None, allow_nsfw: bool) -> list[TopicCluster]:
        channels = None if visible_channel_ids is None else set(visible_channel_ids)
        return [cluster for cluster in self.clusters if cluster.visible_to(channels, allow_nsfw)]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["created_at"] = self.created_at.isoformat()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TopicModel:
        return cls(
            guild_id=int(data["guild_id"]),
            created_at=datetime.fromisoformat(data["created_at"]),
            images=int(data["images"]),
            k=int(data["k"]),
            method=str(data["method"]),
            silhouette=None if data.get("silhouette") is None else float(data["silhouette"]),
            clusters=tuple(
                TopicCluster(
                    id=int(c["id"]), name=str(c["name"]), words=tuple(c["words"]), label=c.get("label"),
                    label_similarity=None if c.get("label_similarity") is None else float(c["label_similarity"]),
                    size=int(c["size"]), members=tuple(int(m) for m in c["members"]),
                    channels=tuple(int(ch) for ch in c["channels"]), nsfw=bool(c["nsfw"]),
                )
                for c in data["clusters"]
            ),
        )


# ----- clustering -----

def _normalise(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.where(norms > 0, norms, 1.0)).astype(np.float64)


def _squared_distances(x: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Pairwise squared Euclidean distances without an (n, k, d) temporary."""
    d2 = (x * x).sum(1)[:, None] - 2.0 * x @ centres.T + (centres * centres).sum(1)[None, :]
    return np.maximum(d2, 0.0)


def _numpy_kmeans(x: np.ndarray, k: int, seed: int, iterations: int = 100) -> np.ndarray:
    """k-means++ seeding and Lloyd iterations; deterministic for a seed."""
    rng = np.random.default_rng(seed)
    centre = x[[int(rng.integers(len(x)))]]
    for _ in range(1, k):
        d2 = _squared_distances(x, centre).min(axis=1)
        total = d2.sum()
        pick = int(rng.choice(len(x), p=d2 / total)) if total > 0 else int(rng.integers(len(x)))
        centre = np.vstack([centre, x[pick]])
    labels = np.full(len(x), -1)
    for _ in range(iterations):
        distances = _squared_distances(x, centre)
        new = distances.argmin(axis=1)
        if np.array_equal(new, labels):
            break
        labels = new
        for j in range(k):
            members = x[labels == j]
            centre[j] = members.mean(axis=0) if len(members) else x[distances[:, j].argmax()]
    return labels


def _numpy_silhouette(x: np.ndarray, labels: np.ndarray) -> float:
    distances = np.sqrt(_squared_distances(x, x))
    clusters = sorted(set(labels.tolist()))
    # Mean distance of every point to every cluster, in one matrix product.
    onehot = (labels[:, None] == np.asarray(clusters)[None, :]).astype(np.float64)
    sizes = onehot.sum(axis=0)
    sums = distances @ onehot
    own = np.searchsorted(clusters, labels)
    rows = np.arange(len(x))
    own_size = sizes[own]
    a = np.where(own_size > 1, sums[rows, own] / np.maximum(own_size - 1, 1), 0.0)
    means = sums / sizes[None, :]
    means[rows, own] = np.inf
    b = means.min(axis=1)
    scale = np.maximum(a, b)
    scores = np.where((own_size > 1) & (scale > 0), (b - a) / np.where(scale > 0, scale, 1.0), 0.0)
    return float(scores.mean())


def _sklearn() -> Any | None:
    try:
        from sklearn.cluster import KMeans
        from sklearn.metrics import silhouette_score
    except ImportError:
        return None
    return KMeans, silhouette_score


def kmeans(x: np.ndarray, k: int, *, seed: int = 0) -> tuple[np.ndarray, str]:
    """Cluster labels for the rows of ``x`` and the method used."""
    if k <= 1:
        return np.zeros(len(x), dtype=int), "single cluster"
    found = _sklearn()
    if found is not None:
        km_cls, _ = found
        return km_cls(n_clusters=k, n_init=4, random_state=seed).fit_predict(x), "kmeans (scikit-learn)"
    return _numpy_kmeans(x, k, seed), "kmeans (numpy)"


def silhouette(x: np.ndarray, labels: np.ndarray, *, seed: int = 0) -> float:
    if len(set(labels.tolist())) < 2:
        return -1.0
    if len(x) > SILHOUETTE_SAMPLE:  # O(n²): a fixed random sample says enough
        pick = np.random.default_rng(seed).choice(len(x), SILHOUETTE_SAMPLE, replace=False)
        x, labels = x[pick], labels[pick]
        if len(set(labels.tolist())) < 2:
            return -1.0
    found = _sklearn()
    if found is not None:
        return float(found[1](x, labels))
    return _numpy_silhouette(x, labels)


def choose_k(x: np.ndarray, *, max_k: int = MAX_K, seed: int = 0) -> tuple[int, np.ndarray, str, float | None]:
    """Try k = 2 .. max_k (bounded by the data) and keep the best silhouette. Fewer than four images
    make one cluster: there is nothing to separate."""
    distinct = len(np.unique(np.round(x, 6), axis=0))
    upper = min(max_k, len(x) - 1, distinct)
    if upper < 2:
        labels, method = kmeans(x, 1, seed=seed)
        return 1, labels, method, None
    best: tuple[int, np.ndarray, str, float | None] | None = None
    for k in range(2, upper + 1):
        labels, method = kmeans(x, k, seed=seed)
        score = silhouette(x, labels, seed=seed)
        if best is None or score > (best[3] if best[3] is not None else -1.0) + 1e-9:
            best = (k, labels, method, score)
    assert best is not None
    return best


# ----- naming -----

def caption_words(caption: str) -> list[str]:
    return [word.strip("'-") for word in _WORD.findall(caption.lower()) if word.strip("'-") not in STOPWORDS]


def distinctive_words(captions_by_cluster: Sequence[Sequence[str]], n: int = NAME_WORDS) -> list[tuple[str, ...]]:
    """Class-based TF-IDF (BERTopic's c-TF-IDF): a word's share in its cluster times
    ``log(1 + average words per cluster / its count over all clusters)``."""
    counts = [Counter(word for caption in captions for word in caption_words(caption))
              for captions in captions_by_cluster]
    overall: Counter[str] = Counter()
    for counter in counts:
        overall.update(counter)
    average = sum(overall.values()) / max(1, len(counts))
    names = []
    for counter in counts:
        size = sum(counter.values()) or 1
        scored = sorted(counter, key=lambda w: (-(counter[w] / size) * math.log(1 + average / overall[w]), w))
        names.append(tuple(scored[:n]))
    return names


def cluster_captions(
    guild_id: int,
    images: Sequence[StoredImage],
    vectors: np.ndarray,
    *,
    label_names: Sequence[str] = (),
    label_vectors: np.ndarray | None = None,
    k: int | None = None,
    max_k: int = MAX_K,
    seed: int = 0,
    now: datetime | None = None,
) -> TopicModel:
    """Cluster ``images`` by their caption ``vectors`` (one row each) and name the clusters.

    ``label_vectors`` (one row per ``label_names`` entry, same embedder as the captions: the fixed
    topic prompts) adds the nearest fixed topic to each name. ``k`` None chooses it by silhouette.
    Pictures whose caption is not written yet (fast tier) are left out: they have no caption vector
    (the store's ``caption_vectors`` never returns them) and no caption words to name a cluster by.
    """
    if len(images) != len(vectors):
        raise ValueError(f"{len(images)} images but {len(vectors)} vectors")
    captioned = [row for row, image in enumerate(images) if not image.caption_pending]
    if len(captioned) < len(images):
        images, vectors = [images[row] for row in captioned], np.asarray(vectors)[captioned]
    now = now or datetime.now(UTC)
    if not images:
        return TopicModel(guild_id, now, 0, 0, "none", None, ())
    x = _normalise(np.asarray(vectors))
    if k is None:
        k, labels, method, score = choose_k(x, max_k=max_k, seed=seed)
    else:
        k = max(1, min(k, len(images)))
        labels, method = kmeans(x, k, seed=seed)
        score = silhouette(x, labels, seed=seed) if k > 1 else None
    groups = [np.flatnonzero(labels == j) for j in sorted(set(labels.tolist()))]
    groups.sort(key=lambda rows: (-len(rows), int(rows[0])))  # biggest first, stable ids
    words = distinctive_words([[images[i].caption for i in rows] for rows in groups])
    label_matrix = None if label_vectors is None or not len(label_names) else _normalise(np.asarray(label_vectors))
    clusters = []
    used_names: set[str] = set()
    for cluster_id, (rows, top) in enumerate(zip(groups, words, strict=True)):
        label = similarity = None
        if label_matrix is not None:
            centroid = x[rows].mean(axis=0)
            centroid /= np.linalg.norm(centroid) or 1.0
            sims = label_matrix @ centroid
            best = int(sims.argmax())
            label, similarity = str(label_names[best]), round(float(sims[best]), 4)
        members = [images[i] for i in rows]
        name = ", ".join(top) or label or f"topic {cluster_id + 1}"
        if name in used_names:  # two groups with the same distinctive words: keep names telling them apart
            name = f"{name} ({cluster_id + 1})"
        used_names.add(name)
        clusters.append(TopicCluster(
            id=cluster_id, name=name, words=top, label=label, label_similarity=similarity, size=len(rows),
            members=tuple(image.attachment_id for image in members),
            channels=tuple(sorted({image.ref.channel_id for image in members})),
            nsfw=any(image.ref.nsfw for image in members),
        ))
    return TopicModel(guild_id, now, len(images), len(groups), method,
                      None if score is None else round(score, 4), tuple(clusters))


# ----- persistence -----

def save_topic_model(model: TopicModel, path: Path) -> None:
    """Write atomically (temp file + rename): a crash never leaves half a model behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(path.suffix + ".tmp")
    temporary.write_text(json.dumps(model.to_dict(), indent=1), encoding="utf-8")
    os.replace(temporary, path)


def load_topic_model(path: Path) -> TopicModel | None:
    """The saved model, or None if there is none (or it cannot be read: refresh it)."""
    try:
        return TopicModel.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def render_topic_model(model: TopicModel) -> str:
    """Plain text for the operator (``python -m bot topics``): every cluster, with where it comes from."""
    score = "" if model.silhouette is None else f", silhouette {model.silhouette:.2f}"
    lines = [f"guild {model.guild_id}: {model.k} topic(s) in {model.images} caption(s) ({model.method}{score})"]
    for cluster in model.clusters:
        where = f"{len(cluster.channels)} channel(s)" + (", includes NSFW" if cluster.nsfw else "")
        label = f"  nearest label: {cluster.label} ({cluster.label_similarity:.2f})" if cluster.label else ""
        lines.append(f"{cluster.id:3d}. {cluster.name} — {cluster.size} picture(s), {where}{label}")
    return "\n".join(lines) + "\n"
