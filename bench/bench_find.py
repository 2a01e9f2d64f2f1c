"""Benchmark /find: ImageStore.search latency and ingest rate at 10k and 100k images in one guild.

Synthetic but realistic records: clustered unit vectors (384-d caption space, 512-d CLIP space), the full
metadata the bot writes (built by the real ``to_metadata``), 20 channels of Zipf-like sizes, one of
them age-restricted, 200 authors, two years of timestamps, plus two smaller guilds. The requester sees
15 of the 20 channels, without NSFW. The timed call is the whole ``search`` (both vector queries,
visibility filtering, RRF fusion, reading back the winners), like the cog makes it.

Compared at 10k (same data, same queries):
  * ``per-guild + post-filter``: the store as shipped;
  * ``per-guild + $in where``: the same layout, the visible channels passed to Chroma as a where-clause
    (:class:`WhereSearch`, here in the benchmark: the product only post-filters);
  * ``single collection + where``: the naive layout, one collection pair for every guild, filtered by
    guild, channel ``$in`` and nsfw in the where-clause (:class:`NaiveStore`).

The benchmark uses the store's public API only: it times and scores ``ImageStore.search`` as the cog
calls it, and the two alternatives query Chroma themselves, the ``$in where`` one on the collections the
store created (opened by name from ``ImageStore.client`` and ``ImageStore.collection_name``).

Run: ``.venv/bin/python -m bench.bench_find`` (about 6 minutes on 2 cores); writes bench/results/find.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

import chromadb
import numpy as np
from chromadb.api.models.Collection import Collection
from chromadb.config import Settings as ChromaSettings

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bot.analysis import ImageAnalysis, Scored, Sentiment
from bot.memory.records import ImageRef, from_metadata, to_metadata
from bot.memory.store import (
    HNSW,
    NO_FILTERS,
    RRF_K,
    Audience,
    Filters,
    ImageStore,
    SearchHit,
    SpaceKind,
    Vector,
    Visibility,
)

GUILD = 700_000_000_000_000_000
OTHER_GUILDS = (GUILD + 1, GUILD + 2)
CHANNELS = [GUILD + 100 + i for i in range(20)]
NSFW_CHANNEL = CHANNELS[7]
AUTHORS = [GUILD + 10_000 + i for i in range(200)]
WORDS = ("dog cat pizza beach car tree sunset mountain city river snow cake phone screen meme chart "
         "friend party game code cup coffee book flower bird street night road train plane").split()
TOPICS = ("animals", "food", "travel", "nature", "people", "technology", "memes", "art", "sports", "games")
NOW = datetime(2024, 6, 1, tzinfo=UTC)
RESULTS = Path(__file__).resolve().parent / "results" / "find.md"


CLUSTERS = 400  # "subjects": records and queries about the same subject are near each other
SPREAD = 0.9  # noise norm around a subject's centre: cosine ~0.75 to the centre, ~0.55 within a subject


class Synth:
    """Deterministic record generator: clustered vectors (random ones defeat any ANN index) and metadata."""

    def __init__(self, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)
        self.query_rng = np.random.default_rng(seed + 1)
        self.centres = {384: _normalized(self.rng.standard_normal((CLUSTERS, 384))),
                        512: _normalized(self.rng.standard_normal((CLUSTERS, 512)))}
        weights = 1.0 / np.arange(1, len(CHANNELS) + 1) ** 0.8
        self.channel_p = self.rng.permutation(weights / weights.sum())
        author_w = 1.0 / np.arange(1, len(AUTHORS) + 1)
        self.author_p = author_w / author_w.sum()
        self.next_id = 1_100_000_000_000_000_000

    def around(self, subjects: np.ndarray, dim: int, rng: np.random.Generator) -> np.ndarray:
        noise = rng.standard_normal((len(subjects), dim)) * SPREAD / np.sqrt(dim)
        return _normalized(self.centres[dim][subjects] + noise)

    def queries(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Query vectors about random subjects, in both spaces (a /find for "dog" hits the dog cluster)."""
        subjects = self.query_rng.integers(0, CLUSTERS, n)
        return self.around(subjects, 384, self.query_rng), self.around(subjects, 512, self.query_rng)

    def records(self, n: int, guild: int) -> list[tuple[ImageRef, ImageAnalysis]]:
        subjects = self.rng.integers(0, CLUSTERS, n)
        text, clip = self.around(subjects, 384, self.rng), self.around(subjects, 512, self.rng)
        channels = self.rng.choice(len(CHANNELS), n, p=self.channel_p)
        authors = self.rng.choice(len(AUTHORS), n, p=self.author_p)
        ages = self.rng.integers(0, 730 * 86400, n)
        out = []
        for i in range(n):
            self.next_id += 1
            words = self.rng.choice(WORDS, 4)
            channel = CHANNELS[channels[i]] if guild == GUILD else guild + 100 + int(channels[i])
            sentiment = Sentiment.from_scores(dict(zip(("negative", "neutral", "positive"),
                                                       self.rng.dirichlet((1, 2, 2)).tolist(), strict=True)))
            analysis = ImageAnalysis(
                caption=f"a {words[0]} and a {words[1]} near the {words[2]}",
                labels={"objects": [Scored(str(words[0]), 0.6), Scored(str(words[1]), 0.2), Scored(str(words[3]), 0.1)],
                        "scenes": [Scored("street", 0.5), Scored("park", 0.3)], "medium": [Scored("photograph", 0.9)],
                        "mood": [Scored("cheerful", 0.4)]},
                sentiment=sentiment, image_sentiment=sentiment,
                topics=[Scored(TOPICS[int(channels[i]) % len(TOPICS)], 0.5)],
                caption_topics=[Scored(TOPICS[int(authors[i]) % len(TOPICS)], 0.4)],
                caption_embedding=text[i].tolist(), image_embedding=clip[i].tolist(),
                model_ids={"captioner": "Salesforce/blip-image-captioning-base", "tagger": "ViT-B-32/laion2b_s34b_b79k",
                           "embedder": "sentence-transformers/all-MiniLM-L6-v2",
                           "sentiment": "cardiffnlp/twitter-roberta-base-sentiment-latest"},
                width=1280, height=960, format="JPEG",
            )
            ref = ImageRef(
                attachment_id=self.next_id, message_id=self.next_id + 7, channel_id=channel, guild_id=guild,
                author_id=AUTHORS[authors[i]],
                jump_url=f"https://discord.com/channels/{guild}/{channel}/{self.next_id + 7}",
                attachment_url=f"https://cdn.discordapp.com/attachments/{channel}/{self.next_id}/IMG_{i}.jpg",
                filename=f"IMG_{i}.jpg", created_at=NOW - timedelta(seconds=int(ages[i])),
                nsfw=channel == NSFW_CHANNEL,
            )
            out.append((ref, analysis))
        return out


def _normalized(vectors: np.ndarray) -> np.ndarray:
    vectors = vectors.astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def client(path: Path) -> chromadb.api.ClientAPI:
    return chromadb.PersistentClient(path=str(path), settings=ChromaSettings(anonymized_telemetry=False))


class Truth:
    """The queried guild's vectors and visibility, kept for exact (brute-force) recall."""

    def __init__(self) -> None:
        self.ids: list[str] = []
        self.text: list[np.ndarray] = []
        self.clip: list[np.ndarray] = []
        self.visible: list[bool] = []

    def add(self, items: list[tuple[ImageRef, ImageAnalysis]], visibility: Visibility) -> None:
        self.ids += [str(ref.attachment_id) for ref, _ in items]
        self.text.append(np.asarray([a.caption_embedding for _, a in items], np.float32))
        self.clip.append(np.asarray([a.image_embedding for _, a in items], np.float32))
        self.visible += [visibility.allows({"channel": ref.channel_id, "nsfw": ref.nsfw}) for ref, _ in items]

    def top(self, space: str, query: np.ndarray, k: int) -> list[str]:
        matrix = np.concatenate(self.text if space == "text" else self.clip)
        scores = np.where(np.asarray(self.visible), matrix @ query, -np.inf)
        return [self.ids[i] for i in np.argsort(-scores)[:k]]


def ingest(store: ImageStore | NaiveStore, synth: Synth, n: int, guild: int, truth: Truth | None = None,
           visibility: Visibility | None = None, batch: int = 2000) -> float:
    """Records/s for n records, generated outside the timed part."""
    spent = 0.0
    for start in range(0, n, batch):
        items = synth.records(min(batch, n - start), guild)
        if truth is not None and visibility is not None:
            truth.add(items, visibility)
        began = time.perf_counter()
        store.upsert_many(items)
        spent += time.perf_counter() - began
        if (start // batch) % 10 == 9 or start + batch >= n:
            print(f"  ingest {start + batch:,}/{n:,}: {(start + batch) / spent:.0f}/s", file=sys.stderr, flush=True)
    return n / spent


class Searcher(Protocol):
    """What the timed and scored searches share: ``ImageStore.search``'s parameters (the shipped store,
    :class:`WhereSearch`)."""

    def search(self, audience: Audience, filters: Filters = NO_FILTERS, *, text_vector: Vector | None,
               clip_vector: Vector | None, limit: int = 10) -> list[SearchHit]: ...


def recall(target: Searcher, truth: Truth, audience: Audience, qtext: np.ndarray, qclip: np.ndarray,
           queries: int = 20, k: int = 10) -> dict[str, float]:
    """Per-space recall@k of a search against exact (numpy) search over the records the audience may see.

    Each space is scored on its own: a search given one query vector ranks by that space alone (one
    RRF term per record keeps the space's order), so its top k are the space's k best visible records
    as the search found them, through the same public call the cog makes."""
    visibility = audience.visibility
    queries = min(queries, len(qtext))  # a small --queries run has fewer query vectors
    out = {}
    for space, vectors in (("text", qtext), ("clip", qclip)):
        found = 0
        for i in range(queries):
            vector = vectors[i]
            hits = target.search(audience, text_vector=vector if space == "text" else None,
                                 clip_vector=vector if space == "clip" else None, limit=k)
            assert all(visibility.allows({"channel": hit.image.ref.channel_id, "nsfw": hit.image.ref.nsfw})
                       for hit in hits), "a search returned a record the audience may not see"
            found += len({str(hit.image.attachment_id) for hit in hits} & set(truth.top(space, vector, k)))
        out[space] = found / (queries * k)
    return out


class WhereSearch:
    """The alternative to the shipped post-filter: the store's own per-guild collections, with the
    audience's visibility (``$in`` the visible channels, no NSFW) passed to Chroma as a where-clause on
    every vector query, then the same RRF fusion and read-back of the winners.

    It lives in the benchmark because only the benchmark needs it: the product post-filters (faster, as
    measured here), and keeps a where-clause only as its last resort. The collections are opened by the
    names the store gives them, from the store's client, so both search the very same data.
    """

    def __init__(self, store: ImageStore, guild: int) -> None:
        def collection(space: SpaceKind) -> Collection:
            return store.client.get_collection(store.collection_name(guild, None, space), embedding_function=None)

        self.text, self.clip = collection("text"), collection("clip")

    def search(self, audience: Audience, filters: Filters = NO_FILTERS, *, text_vector: Vector | None,
               clip_vector: Vector | None, limit: int = 10) -> list[SearchHit]:
        """Like ``ImageStore.search`` (same depth, fusion and tie-break) for complete records; the
        where-clause does all the filtering, so every candidate is visible."""
        clauses = filters.clauses() + audience.visibility.where()
        where: Any = None if not clauses else clauses[0] if len(clauses) == 1 else {"$and": clauses}
        depth = max(2 * limit, 20)
        fused: dict[str, dict[str, Any]] = {}
        for space, collection, vector in (("text", self.text, text_vector), ("clip", self.clip, clip_vector)):
            if vector is None:
                continue
            result = collection.query(query_embeddings=[np.asarray(vector, np.float32).tolist()], n_results=depth,
                                      where=where, include=["distances"])
            distances = (result["distances"] or [[]])[0]
            for rank, (rid, distance) in enumerate(zip(result["ids"][0], distances, strict=True), start=1):
                entry = fused.setdefault(rid, {"score": 0.0, "ranks": {}, "sims": {}})
                entry["score"] += 1.0 / (RRF_K + rank)
                entry["ranks"][space] = rank
                entry["sims"][space] = 1.0 - float(distance)
        order = sorted(fused.items(), key=lambda item: (-item[1]["score"], min(item[1]["ranks"].values()),
                                                        -int(item[0])))[:limit]
        got = self.text.get(ids=[rid for rid, _ in order], include=["metadatas"]) if order else None
        records = {} if got is None else dict(zip(got["ids"], got["metadatas"] or [], strict=True))
        return [SearchHit(image=from_metadata(records[rid]), score=entry["score"],
                          text_rank=entry["ranks"].get("text"), clip_rank=entry["ranks"].get("clip"),
                          text_similarity=entry["sims"].get("text"), clip_similarity=entry["sims"].get("clip"))
                for rid, entry in order if records.get(rid) is not None]


class NaiveStore:
    """The naive layout: one collection pair for all guilds; guild + visibility in the where-clause."""

    def __init__(self, chroma: chromadb.api.ClientAPI) -> None:
        make = chroma.get_or_create_collection
        self.text = make("naive-text", configuration={"hnsw": HNSW}, embedding_function=None)  # type: ignore[arg-type]
        self.clip = make("naive-clip", configuration={"hnsw": HNSW}, embedding_function=None)  # type: ignore[arg-type]

    def upsert_many(self, items: list[tuple[ImageRef, ImageAnalysis]]) -> None:
        ids = [str(ref.attachment_id) for ref, _ in items]
        metas = [to_metadata(ref, analysis) for ref, analysis in items]
        self.text.upsert(ids=ids, embeddings=np.asarray([a.caption_embedding for _, a in items], np.float32),
                         metadatas=metas)
        self.clip.upsert(ids=ids, embeddings=np.asarray([a.image_embedding for _, a in items], np.float32),
                         metadatas=metas)

    def search(self, guild: int, text: np.ndarray, clip: np.ndarray, visibility: Visibility, limit: int = 10) -> list:
        where = {"$and": [{"guild": guild}, *visibility.where()]}
        depth = max(3 * limit, 20)
        fused: dict[str, list] = {}
        for collection, vector in ((self.text, text), (self.clip, clip)):
            result = collection.query(query_embeddings=[vector.tolist()], n_results=depth, where=where,
                                      include=["metadatas", "distances"])
            for rank, (rid, meta) in enumerate(zip(result["ids"][0], result["metadatas"][0], strict=True), start=1):
                entry = fused.setdefault(rid, [0.0, meta])
                entry[0] += 1.0 / (RRF_K + rank)
        best = sorted(fused.items(), key=lambda item: -item[1][0])[:limit]
        return [from_metadata(meta) for _, (_, meta) in best]


def timed(call: Callable[[int], object], queries: int, warmup: int = 3) -> dict[str, float]:
    print(f"  timing {queries} calls", file=sys.stderr, flush=True)
    for i in range(warmup):
        call(i)  # warm-up: caches, collection handles, the HNSW index loaded into memory
    samples = []
    for i in range(queries):
        began = time.perf_counter()
        call(i)
        samples.append((time.perf_counter() - began) * 1000)
    samples.sort()
    return {"p50": statistics.median(samples), "p95": samples[max(0, round(0.95 * len(samples)) - 1)],
            "mean": statistics.fmean(samples)}


def machine() -> str:
    cpu = "unknown"
    with open("/proc/cpuinfo", encoding="utf-8") as info:
        for line in info:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo", encoding="utf-8") as info:
        ram_kb = int(info.readline().split()[1])
    return (f"{os.cpu_count()} cores (nproc), {cpu}, {ram_kb / 1024 / 1024:.1f} GiB RAM; "
            f"Python {platform.python_version()}, chromadb {chromadb.__version__}, {platform.platform()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", type=int, default=10_000)
    parser.add_argument("--large", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    visible = set(CHANNELS[:15])  # 5 channels the requester can't see; one visible channel is NSFW
    visibility = Visibility(frozenset(visible), allow_nsfw=False)
    synth = Synth(0)
    qtext, qclip = synth.queries(max(args.queries, 20) + 3)  # fixed-count timings (20 calls) index these too
    rows: list[tuple[str, str, dict[str, float]]] = []
    notes: list[str] = []
    started = time.perf_counter()
    load_at_start = _load()

    with tempfile.TemporaryDirectory(prefix="bench-find-") as tmp:
        store = ImageStore(client(Path(tmp) / "layout"), prefix="bench")
        naive = NaiveStore(client(Path(tmp) / "naive"))

        requester = Audience(AUTHORS[0], GUILD, frozenset(visible), False)
        anyone = Audience(0, GUILD, frozenset(visible), False)

        def find(target: Searcher, **filters: Any) -> Callable[[int], object]:
            return lambda i: target.search(requester, Filters(**filters), text_vector=qtext[i], clip_vector=qclip[i],
                                           limit=10)

        # Other guilds first (they share the naive collections, and have their own in the real layout).
        for guild in OTHER_GUILDS:
            items = synth.records(args.small // 2, guild)
            store.upsert_many(items)
            naive.upsert_many(items)
        truth = Truth()
        rate_small = ingest(store, synth, args.small, GUILD, truth, visibility)
        # Same records into the naive layout: regenerate with the same seed so both hold identical data.
        copy = Synth(0)
        for guild in OTHER_GUILDS:
            copy.records(args.small // 2, guild)
        naive_rate = ingest(naive, copy, args.small, GUILD)
        rows.append(("ingest", f"per-guild layout, 0 → {args.small:,}", {"rate": rate_small}))
        rows.append(("ingest", f"single collection, 0 → {args.small:,}", {"rate": naive_rate}))

        where_store = WhereSearch(store, GUILD)  # the guild's collections exist now
        n = f"{args.small:,}"
        share = float(np.mean(truth.visible))
        notes.append(f"At {n}: the requester can see {share:.0%} of the guild's images.")
        rows.append(("search", f"{n} per-guild + post-filter (shipped)", timed(find(store), args.queries)))
        slow = max(5, args.queries // 4)
        rows.append(("search", f"{n} per-guild + $in where", timed(find(where_store), slow)))
        rows.append(("search", f"{n} single collection + where (naive)", timed(
            lambda i: naive.search(GUILD, qtext[i], qclip[i], visibility), slow)))
        rows.append(("search", f"{n} per-guild, unrestricted (visible=None, nsfw ok)", timed(
            lambda i: store.search(Audience.everything(GUILD), text_vector=qtext[i], clip_vector=qclip[i]),
            args.queries)))
        for label, target in (("post-filter", store), ("$in where", where_store)):
            got = recall(target, truth, requester, qtext, qclip)
            notes.append(f"At {n}, {label}: recall@10 vs exact search over visible records: "
                         f"caption space {got['text']:.2f}, CLIP space {got['clip']:.2f}.")

        if args.large > args.small:
            rate_large = ingest(store, synth, args.large - args.small, GUILD, truth, visibility)
            rows.append(("ingest", f"per-guild layout, {args.small:,} → {args.large:,}", {"rate": rate_large}))
            n = f"{args.large:,}"
            share = float(np.mean(truth.visible))
            notes.append(f"At {n}: the requester can see {share:.0%} of the guild's images.")
            rows.append(("search", f"{n} per-guild + post-filter (shipped)", timed(find(store), args.queries, 20)))
            rows.append(("search", f"{n} per-guild + $in where", timed(find(where_store), 5, 1)))
            since = NOW - timedelta(days=7)
            rows.append(("search", f"{n} + author filter (where)", timed(find(store, author_id=AUTHORS[3]),
                                                                        max(20, args.queries // 5))))
            rows.append(("search", f"{n} + since last week (where)", timed(find(store, since=since),
                                                                          max(20, args.queries // 5))))
            got = recall(store, truth, requester, qtext, qclip)
            notes.append(f"At {n}, post-filter: recall@10 vs exact search over visible records: "
                         f"caption space {got['text']:.2f}, CLIP space {got['clip']:.2f}.")
            rows.append(("similar", f"{n} image→image, post-filter", timed(
                lambda i: store.similar(anyone, qclip[i]), args.queries)))
            rows.append(("browse", f"{n} browse newest 25, no filter", timed(
                lambda i: store.browse(anyone, now=NOW), 5, 1)))
            rows.append(("browse", f"{n} browse newest 25 by a frequent poster (4% of images)", timed(
                lambda i: store.browse(anyone, Filters(author_id=AUTHORS[3]), now=NOW), 5, 1)))
            rows.append(("count", f"{n} count visible (for /stats)", timed(
                lambda i: store.count(anyone), 5, 1)))
            rows.append(("count", f"{n} count all", timed(lambda i: store.count(Audience.everything(GUILD)), 20, 1)))

    notes.append(f"Load average (1/5/15 min) at start {load_at_start}, at end {_load()}: other work shared "
                 "this machine during the run, so treat p95 values as upper bounds.")
    total = time.perf_counter() - started
    report = render(rows, notes, args, total)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report, encoding="utf-8")
    print(report)


def _load() -> str:
    return " / ".join(f"{value:.1f}" for value in os.getloadavg())


def render(rows: list[tuple[str, str, dict[str, float]]], notes: list[str], args: argparse.Namespace,
           total: float) -> str:
    lines = [
        "# /find benchmark",
        "",
        f"- date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        f"- machine: {machine()}",
        f"- command: `.venv/bin/python -m bench.bench_find --small {args.small} --large {args.large} "
        f"--queries {args.queries}` ({total:.0f} s in all)",
        f"- data: clustered unit vectors ({CLUSTERS} subjects; 384-d caption, 512-d CLIP), full bot metadata, "
        "20 channels (Zipf sizes, one NSFW), 200 authors, 2 years; 2 other guilds of "
        f"{args.small // 2:,} each. Requester sees 15 of 20 channels, no NSFW; limit 10; embedded PersistentClient.",
        *(f"- {note}" for note in notes),
        "",
        "## Latency",
        "",
        "Search rows time the whole `ImageStore.search` call (2 vector queries, visibility, RRF, read-back); "
        "the `$in where` rows time the benchmark's `WhereSearch.search` (the same collections queried with the "
        "visibility where-clause, RRF, read-back), the naive row its `NaiveStore.search`.",
        "",
        "| what | p50 ms | p95 ms | mean ms |",
        "| --- | ---: | ---: | ---: |",
    ]
    for kind, name, stats in rows:
        if kind != "ingest":
            lines.append(f"| {name}{f' ({kind})' if kind != 'search' else ''} | {stats['p50']:.1f} | "
                         f"{stats['p95']:.1f} | {stats['mean']:.1f} |")
    lines += ["", "## Ingest (upsert_many, batches of 2000, both collections)", "", "| what | records/s |",
              "| --- | ---: |"]
    lines += [f"| {name} | {stats['rate']:.0f} |" for kind, name, stats in rows if kind == "ingest"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
