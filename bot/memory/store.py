"""The image memory: Chroma collections per guild, searched with precomputed vectors only.

Layout (why: measured on a 2-core box, see ``bench/results/find.md`` and ``bench/bench_find.py``)

* **A space per guild, a space per DM user.** Any Chroma ``where`` costs a scan of the collection's
  metadata (tens to hundreds of ms at 100k records) against a few ms for a plain vector query. So the
  guild boundary is structural (its own collections, never a filter), and a DM search can only ever
  open the requester's own space.
* **Two collections per space**, one per vector space (Chroma keeps one dense vector per record):
  ``{prefix}-g{guild}-text`` holds the caption vector (MiniLM, 384-d) with the *full* flat record
  (:func:`~bot.memory.records.to_metadata`); ``{prefix}-g{guild}-clip`` holds the CLIP image vector
  with only the few keys a search filters on (:data:`INDEX_KEYS`).
* **Vector queries fetch ids and distances only.** Chroma hands metadata back row by row per key, and
  that, not the vector search, dominated: 45 full records cost ~15 ms, the ids ~2 ms. The visibility
  keys of all candidates are then read in one call from the small clip-collection records, and the
  full record only for the ``limit`` winners.
* **Channel visibility and NSFW are applied after the vector query** ("post-filter"): over-fetch,
  drop what the requester may not see, widen the fetch x4 if too little is left, and only as a last
  resort ask Chroma with a ``$in`` where-clause. Measured against putting the visible channels in the
  where-clause every time, this is several times faster. The filter is strict either way: a record from
  an invisible channel is never returned, and ranks are counted among visible records only, so not even
  a gap in the ranks gives one away.
* Explicit filters the user asks for (author, channel, sentiment, topic, time range) do go into the
  where-clause: they are selective, and post-filtering them would need huge fetches.
* **A fast-tier record has no text record.** Analysis comes in two tiers (CLIP first, the caption
  seconds to minutes later); a record whose caption is not written yet
  (:attr:`~bot.analysis.ImageAnalysis.caption_pending`) has no caption vector, so it lives in the clip
  collection only, and its clip entry carries the *full* record (flagged ``caption_pending``) instead of
  the index keys. Every read takes a record from the text collection, else from a clip entry flagged
  pending. The complete record for the same attachment then adds the text record and shrinks the clip
  entry back to the index keys (Chroma *merges* metadata on upsert, so the other keys are deleted
  explicitly). A fast-tier record never replaces a complete one: upserting it for an attachment that
  already has its text record is skipped, so a late or replayed fast tier cannot erase a caption.
  In /find's fusion a pending record has no caption rank and ranks by its CLIP rank alone (counted for
  both spaces, see :meth:`ImageStore.search`); complete records score as before. With the sentiment
  filter, a pending record matches by the image's own mood: the mood its card shows.

Write order makes crashes harmless: upsert writes the text record, then the clip entry; delete removes
the text record first. :meth:`ImageStore.has` looks at the clip collection, so an image whose upsert
was interrupted counts as missing and is analysed again, and every result is read back from its text
record (or, for a fast-tier record, from its clip entry flagged pending), so a clip entry orphaned by an
interrupted delete is never shown (a replayed delete removes it). A complete record whose upsert was
interrupted between its text record and its clip entry reads back complete, and
``has(..., captioned=True)`` still counts it as waiting for its caption, so it is written again.

Chroma's default embedding function (an ONNX model it would download) is never attached:
collections are always opened with ``embedding_function=None`` and every call passes vectors, so a
text query by mistake raises instead of downloading.

The core is synchronous (Chroma's clients block); :class:`AsyncImageStore` runs each call in a
worker thread for the bot's event loop.

Outages (HTTP backend; measured against a real ``chroma run`` with chromadb 1.5.9, see
``tests/test_memory_store.py``): a killed server makes every call raise ``httpx.ConnectError``
within a millisecond (connection refused), a hung one blocks forever (chromadb builds its
``httpx.Client`` with ``timeout=None``) and creating a client while it is down raises ``ValueError``
("Could not connect to a Chroma server"). Every public method turns these into
:class:`bot.errors.MemoryUnavailable`, the client gets :data:`HTTP_TIMEOUT`, and the client is made
lazily, so the bot starts while Chroma is down and connects on the first call that finds it back.
The same client and collections work again after the server restarts on the same port and path;
a server that comes back with other data (new collection ids) is handled by dropping the cached
collections after an outage and once more on ``NotFoundError``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import re
import threading
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Concatenate, Literal, ParamSpec, TypeVar

import chromadb
import httpx
import numpy as np
from chromadb.api import ClientAPI
from chromadb.api.base_http_client import BaseHTTPClient
from chromadb.api.models.Collection import Collection
from chromadb.config import Settings as ChromaSettings
from chromadb.errors import NotFoundError

from bot.analysis import ImageAnalysis
from bot.config import Settings
from bot.errors import MemoryUnavailable
from bot.memory.records import ImageRef, Metadata, StoredImage, from_metadata, record_id, to_metadata
from bot.memory.words import WordQuery, searchable_text

log = logging.getLogger(__name__)

SpaceKind = Literal["text", "clip", "words"]
# Keys the clip index carries: everything a search may filter on, nothing it only displays.
# ("message" too, so that a replayed delete also finds an index entry whose text record is already gone.)
# ("caption_pending" too: False in a complete record's entry, True in a fast-tier record's full one.)
INDEX_KEYS = ("channel", "message", "author", "created_ts", "nsfw", "sentiment", "topic", "caption_topic",
              "caption_pending")
RRF_K = 60
HNSW = {"space": "cosine", "ef_construction": 100, "ef_search": 100, "max_neighbors": 16}
_PREFIX = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,199}$")
_NAME = re.compile(r"^(?P<prefix>.+)-(?P<kind>[gu])(?P<id>\d+)-(?P<space>text|clip)$")
# Over-fetch: first ask for 1.5x the candidates wanted, widen x4 while too few survive, up to this many.
MAX_FETCH = 1000
# browse(): newest-first pages read back in these time slices, then the rest.
BROWSE_SLICES = (timedelta(days=1), timedelta(days=7), timedelta(days=30), timedelta(days=120), timedelta(days=480))
Vector = Sequence[float] | np.ndarray
# The HTTP client's limits. Connect: a live server on the LAN accepts in well under a second, so 2 s
# means "down" (a refused connection fails at once anyway). Read/write: the slowest single request
# measured is a where-clause vector query at 100k records (~2.3 s, bench/results/find.md) and a
# 5000-record upsert chunk (~10 s at 510 records/s); 20 s leaves room for both on a busy box while a
# hung server costs a /find 20 s instead of forever.
HTTP_TIMEOUT = httpx.Timeout(20.0, connect=2.0)
# A batch size to use until the first connection tells the server's own (HTTP backend only).
DEFAULT_BATCH = 1000
_P = ParamSpec("_P")
_R = TypeVar("_R")


@dataclass(frozen=True)
class SearchHit:
    image: StoredImage
    score: float  # fused RRF score for search(); cosine similarity for similar()
    text_rank: int | None  # 1-based rank among visible records in the caption space; None: not in its top
    clip_rank: int | None  # same in the CLIP image space
    text_similarity: float | None = None
    clip_similarity: float | None = None
    words_rank: int | None = None  # same among records whose picture text holds the query's words


@dataclass(frozen=True)
class Visibility:
    """What a requester may see; applied to every read path after the vector query.

    ``visible_channel_ids`` None means no channel restriction (a DM space, or a trusted caller);
    an empty set means nothing is visible.
    """

    visible_channel_ids: frozenset[int] | None
    allow_nsfw: bool
    owner_id: int | None = None  # DM spaces: only this author's records, whatever else is there

    def allows(self, meta: Mapping[str, Any]) -> bool:
        if not self.allow_nsfw and meta.get("nsfw", True):
            return False
        if self.visible_channel_ids is not None and int(meta.get("channel", 0)) not in self.visible_channel_ids:
            return False
        return self.owner_id is None or int(meta.get("author", 0)) == self.owner_id

    @property
    def nothing(self) -> bool:
        return self.visible_channel_ids is not None and not self.visible_channel_ids

    def where(self) -> list[dict[str, Any]]:
        """The same rule as a Chroma where-clause (used only as a fallback, and by the benchmark)."""
        clauses: list[dict[str, Any]] = []
        if not self.allow_nsfw:
            clauses.append({"nsfw": False})
        if self.visible_channel_ids is not None:
            clauses.append({"channel": {"$in": sorted(self.visible_channel_ids)}})
        if self.owner_id is not None:
            clauses.append({"author": self.owner_id})
        return clauses


@dataclass(frozen=True)
class Filters:
    """Explicit search filters (what the user asked for), applied by Chroma's where-clause."""

    author_id: int | None = None
    channel_id: int | None = None
    sentiment: str | None = None
    topic: str | None = None  # matches the image topic or the caption topic
    since: datetime | None = None  # inclusive
    until: datetime | None = None  # exclusive

    def clauses(self) -> list[dict[str, Any]]:
        clauses: list[dict[str, Any]] = []
        if self.author_id is not None:
            clauses.append({"author": int(self.author_id)})
        if self.channel_id is not None:
            clauses.append({"channel": int(self.channel_id)})
        if self.sentiment is not None:
            clauses.append({"sentiment": self.sentiment})
        if self.topic is not None:
            clauses.append({"$or": [{"topic": self.topic}, {"caption_topic": self.topic}]})
        if self.since is not None:
            clauses.append({"created_ts": {"$gte": _epoch(self.since)}})
        if self.until is not None:
            clauses.append({"created_ts": {"$lt": _epoch(self.until)}})
        return clauses



NO_FILTERS = Filters()


@dataclass(frozen=True)
class Audience:
    """Who will see a result: every read of the store takes one and returns only what it may see.

    ``guild_id`` None is a DM space: only the requester's own images. ``visible_channel_ids`` are
    computed from Discord permissions at query time (never at ingest), by the cog; None means no
    channel restriction (a trusted caller, see :meth:`everything`).
    """

    requester_id: int
    guild_id: int | None
    visible_channel_ids: frozenset[int] | None
    allow_nsfw: bool

    def __post_init__(self) -> None:
        if self.visible_channel_ids is not None and not isinstance(self.visible_channel_ids, frozenset):
            object.__setattr__(self, "visible_channel_ids", frozenset(int(i) for i in self.visible_channel_ids))

    @classmethod
    def everything(cls, guild_id: int | None, *, owner_id: int = 0) -> Audience:
        """A trusted caller (counts, the CLI, tests): every channel, NSFW included; a DM space needs its
        owner."""
        if guild_id is None and not owner_id:
            raise ValueError("a DM space needs its owner's id")
        return cls(owner_id, guild_id, None, True)

    @property
    def owner_id(self) -> int | None:
        """The DM space's owner (None for a guild)."""
        return int(self.requester_id) if self.guild_id is None else None

    @property
    def visibility(self) -> Visibility:
        return Visibility(self.visible_channel_ids, bool(self.allow_nsfw), self.owner_id)


@dataclass(frozen=True)
class _Candidate:
    rid: str
    similarity: float
    meta: Mapping[str, Any]  # the index metadata (channel, nsfw, author, ...)


def _epoch(moment: datetime) -> int:
    """Whole seconds, like ``created_ts``; a naive datetime is taken to be UTC (as in ImageRef)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return math.floor(moment.timestamp())


def _where(clauses: list[dict[str, Any]]) -> dict[str, Any] | None:
    if not clauses:
        return None
    return clauses[0] if len(clauses) == 1 else {"$and": clauses}


def _vector(value: Vector) -> list[float]:
    array = np.asarray(value, dtype=np.float32).reshape(-1)
    if array.size == 0 or not np.isfinite(array).all():
        raise ValueError("a query vector must be non-empty and finite")
    return array.tolist()


def _chunks(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _reachable(method: Callable[Concatenate[ImageStore, _P], _R]) -> Callable[Concatenate[ImageStore, _P], _R]:
    """A public store method whose "Chroma unreachable" errors become :class:`MemoryUnavailable`.

    Every error below ``httpx.TransportError`` means the request did not complete (refused, reset,
    timed out); chromadb lets them through unwrapped. A ``NotFoundError`` from a cached collection
    means the server lost it (restarted with other data, or it was dropped): the cache is cleared and
    the call runs once more, which then sees the collection as missing (or creates it, for writes).
    Every store call is idempotent, so running one again is safe.
    """

    @functools.wraps(method)
    def call(self: ImageStore, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            try:
                return method(self, *args, **kwargs)
            except NotFoundError:
                if not self._forget_collections():
                    raise
                log.info("a cached Chroma collection is gone; reopening the collections")
                return method(self, *args, **kwargs)
        except httpx.TransportError as exc:
            self._forget_collections()
            raise MemoryUnavailable(detail=f"Chroma unreachable in {method.__name__}: {exc!r}") from exc

    return call


def _http_client(host: str, port: int, chroma_settings: ChromaSettings) -> ClientAPI:
    """An HttpClient with :data:`HTTP_TIMEOUT`, or :class:`MemoryUnavailable` (fast) when the server is down.

    A heartbeat with the short timeout goes first: chromadb's own constructor talks to the server
    with no timeout at all, and reports a refused connection only as a ``ValueError``."""
    base = BaseHTTPClient.resolve_url(chroma_server_host=host, chroma_server_http_port=port,
                                      default_api_path=chroma_settings.chroma_server_api_default_path)
    try:
        httpx.get(f"{base}/heartbeat", timeout=HTTP_TIMEOUT).raise_for_status()
        client = chromadb.HttpClient(host=host, port=port, settings=chroma_settings)
    except (httpx.HTTPError, ValueError) as exc:
        raise MemoryUnavailable(detail=f"cannot connect to Chroma at {base}: {exc!r}") from exc
    session = getattr(getattr(client, "_server", None), "_session", None)
    if isinstance(session, httpx.Client):
        session.timeout = HTTP_TIMEOUT  # collections share their client's session
    else:  # a chromadb upgrade moved it: calls still work, but a hung server would block them
        log.warning("cannot set a timeout on the Chroma HTTP client (%s)", type(session).__name__)
    return client


class ImageStore:
    """Synchronous image memory over any Chroma client (embedded or HTTP: same code after opening).

    Give either a ``client`` or a ``connect`` function that makes one: the store then connects on
    first use, and again on each call until a connection succeeds (the HTTP backend, so that the bot
    can start while Chroma is down).
    """

    def __init__(
        self,
        client: ClientAPI | None = None,
        *,
        connect: Callable[[], ClientAPI] | None = None,
        prefix: str = "imagebot",
    ) -> None:
        if not _PREFIX.match(prefix):
            raise ValueError(
                f"memory.collection_prefix {prefix!r}: use 1-200 letters, digits, '_' or '-', starting with a letter "
                "or digit"
            )
        if (client is None) == (connect is None):
            raise ValueError("give ImageStore a client or a connect function")
        self._client: ClientAPI | None = None
        self._connect = connect
        self.prefix = prefix
        self._collections: dict[str, Collection] = {}
        self._lock = threading.RLock()
        self._batch = DEFAULT_BATCH
        if client is not None:
            self._use(client)

    @classmethod
    def open(cls, settings: Settings) -> ImageStore:
        """Embedded PersistentClient at ``memory.path``, or HttpClient to ``memory.host:port``.

        The HTTP backend connects here if it can; if Chroma is down the store is still returned, every
        call raises :class:`MemoryUnavailable` until the server answers, and then it just works."""
        memory = settings.memory
        chroma_settings = ChromaSettings(anonymized_telemetry=False)
        if memory.backend == "http":
            store = cls(connect=lambda: _http_client(memory.host, memory.port, chroma_settings),
                        prefix=memory.collection_prefix)
            try:
                store.connect()  # now, so that a healthy start-up pays no first-call delay
            except MemoryUnavailable as exc:
                log.warning("the Chroma server is unreachable; starting without it and retrying: %s", exc)
            return store
        path = settings.resolve_path(memory.path)
        path.mkdir(parents=True, exist_ok=True)
        return cls(chromadb.PersistentClient(path=str(path), settings=chroma_settings), prefix=memory.collection_prefix)

    # ----- the connection -----

    @property
    def client(self) -> ClientAPI:
        """The Chroma client, connecting first if needed (:class:`MemoryUnavailable` if that fails)."""
        return self._client if self._client is not None else self.connect()

    def connect(self) -> ClientAPI:
        """Connect unless connected; :class:`MemoryUnavailable` while the server cannot be reached."""
        with self._lock:
            if self._client is None:
                assert self._connect is not None
                try:
                    self._use(self._connect())
                except httpx.TransportError as exc:  # the server went away between the heartbeat and here
                    raise MemoryUnavailable(detail=f"cannot connect to Chroma: {exc!r}") from exc
                log.info("connected to the Chroma server")
            assert self._client is not None
            return self._client

    def _use(self, client: ClientAPI) -> None:
        self._batch = max(1, min(5000, client.get_max_batch_size()))
        self._client = client

    def _forget_collections(self) -> bool:
        """Drop the cached collection handles (they are looked up again); False if there were none."""
        with self._lock:
            had = bool(self._collections)
            self._collections.clear()
            return had

    # ----- spaces and collections -----

    def collection_name(self, guild_id: int | None, user_id: int | None, space: SpaceKind) -> str:
        """``{prefix}-g{guild}-{space}``, or ``{prefix}-u{user}-{space}`` for a user's DMs."""
        if guild_id is not None:
            return f"{self.prefix}-g{int(guild_id)}-{space}"
        if user_id is None:
            raise ValueError("a DM space needs the user id")
        return f"{self.prefix}-u{int(user_id)}-{space}"

    def _collection(self, name: str, *, create: bool) -> Collection | None:
        with self._lock:
            cached = self._collections.get(name)
            if cached is not None:
                return cached
            if create:
                collection = self.client.get_or_create_collection(
                    name, configuration={"hnsw": HNSW}, embedding_function=None  # type: ignore[typeddict-item]
                )
            else:
                try:
                    collection = self.client.get_collection(name, embedding_function=None)
                except (NotFoundError, ValueError):
                    return None
            self._collections[name] = collection
            return collection

    def _pair(self, guild_id: int | None, user_id: int | None, *, create: bool = False) -> tuple[Any, Any]:
        return (
            self._collection(self.collection_name(guild_id, user_id, "text"), create=create),
            self._collection(self.collection_name(guild_id, user_id, "clip"), create=create),
        )

    @_reachable
    def spaces(self) -> list[tuple[int | None, int | None]]:
        """Every (guild_id, dm_user_id) space this prefix has in the database."""
        found: set[tuple[int | None, int | None]] = set()
        for collection in self.client.list_collections():
            match = _NAME.match(collection.name)
            if match and match["prefix"] == self.prefix:
                ident = int(match["id"])
                found.add((ident, None) if match["kind"] == "g" else (None, ident))
        return sorted(found, key=lambda space: (space[0] is None, space[0] or 0, space[1] or 0))

    def _spaces_for(self, guild_id: int | None, user_id: int | None) -> list[tuple[int | None, int | None]]:
        """A guild; a user's DM space; or every DM space when a DM event doesn't say whose it is."""
        if guild_id is not None or user_id is not None:
            return [(guild_id, user_id)]
        return [space for space in self.spaces() if space[0] is None]

    # ----- writes -----

    @_reachable
    def upsert(self, ref: ImageRef, analysis: ImageAnalysis) -> None:
        self.upsert_many([(ref, analysis)])

    @_reachable
    def upsert_many(self, items: Iterable[tuple[ImageRef, ImageAnalysis]]) -> int:
        """Store (or overwrite) images keyed by attachment id; replaying never duplicates. Returns the count.

        A fast-tier record (``caption_pending``) is stored in the clip collection only; the complete
        record for the same attachment replaces it. A fast-tier record for an image whose complete record
        is stored (or comes later in the same call) is skipped: never a downgrade. Skipped ones count too
        (the image is stored)."""
        by_space: dict[tuple[int | None, int | None], dict[str, tuple[ImageRef, ImageAnalysis]]] = {}
        for ref, analysis in items:
            space = (ref.guild_id, None if ref.guild_id is not None else ref.author_id)
            records = by_space.setdefault(space, {})
            rid = record_id(ref.attachment_id)
            held = records.get(rid)
            if held is not None and analysis.caption_pending and not held[1].caption_pending:
                continue  # this batch holds the complete record already: keep it
            records[rid] = (ref, analysis)  # otherwise the last one wins
        total = 0
        with self._lock:
            for (guild_id, user_id), records in by_space.items():
                text, clip = self._pair(guild_id, user_id, create=True)
                rows = list(records.items())
                for chunk in _chunks(rows, self._batch):
                    self._write_chunk(text, clip, chunk)
                total += len(rows)
        return total

    def _write_chunk(self, text: Collection, clip: Collection,
                     chunk: Sequence[tuple[str, tuple[ImageRef, ImageAnalysis]]]) -> None:
        """One chunk of :meth:`upsert_many`: text records of the complete ones first, then every clip entry."""
        complete = [(rid, ref, a) for rid, (ref, a) in chunk if not a.caption_pending]
        fast = [(rid, ref, a) for rid, (ref, a) in chunk if a.caption_pending]
        if fast:  # a late or replayed fast tier must not erase a caption: skip what is complete already
            captioned = set(text.get(ids=[rid for rid, _, _ in fast], include=[])["ids"])
            fast = [row for row in fast if row[0] not in captioned]
        rows = complete + fast
        if not rows:
            return
        metas = {rid: to_metadata(ref, a) for rid, ref, a in rows}
        if complete:
            text.upsert(
                ids=[rid for rid, _, _ in complete],
                embeddings=np.asarray([a.caption_embedding for _, _, a in complete], dtype=np.float32),
                metadatas=[metas[rid] for rid, _, _ in complete],
            )
        entries: dict[str, dict[str, Any]] = {
            rid: dict(metas[rid]) if a.caption_pending else dict(_index_meta(metas[rid])) for rid, _, a in rows
        }
        # Chroma merges metadata on upsert: the keys a fast-tier entry holds beyond what replaces it are
        # deleted explicitly (a None value deletes a key), so a completed entry is the index keys again.
        held = clip.get(ids=list(entries), where={"caption_pending": True}, include=["metadatas"])
        for rid, old in zip(held["ids"], held["metadatas"] or [], strict=True):
            if old is not None and rid in entries:
                entries[rid].update({key: None for key in old if key not in entries[rid]})
        clip.upsert(
            ids=list(entries),
            embeddings=np.asarray([a.image_embedding for _, _, a in rows], dtype=np.float32),
            metadatas=list(entries.values()),  # type: ignore[arg-type]
            # The picture's text (OCR) in its searchable form: /find's word matching reads it.
            documents=[searchable_text(a.text) for _, _, a in rows],
        )

    @_reachable
    def has(self, guild_id: int | None, attachment_ids: Iterable[int], *, user_id: int | None = None,
            captioned: bool = False) -> set[int]:
        """Which of these attachments are stored (so re-processing can skip them). A fast-tier record
        counts (the image is findable); with ``captioned`` only those whose caption is written too."""
        wanted = [record_id(i) for i in dict.fromkeys(attachment_ids)]
        found: set[int] = set()
        for space in self._spaces_for(guild_id, user_id):
            _, clip = self._pair(*space)
            if clip is None:
                continue
            for chunk in _chunks(wanted, self._batch):
                if not captioned:
                    found.update(int(rid) for rid in clip.get(ids=list(chunk), include=[])["ids"])
                    continue
                got = clip.get(ids=list(chunk), include=["metadatas"])
                found.update(int(rid) for rid, meta in zip(got["ids"], got["metadatas"] or [], strict=True)
                             if not (meta or {}).get("caption_pending"))
        return found

    def _delete_ids(self, guild_id: int | None, user_id: int | None, ids: Iterable[str]) -> int:
        """Delete by id from both collections (text record first: see the module doc); the count removed."""
        wanted = list(dict.fromkeys(ids))
        if not wanted:
            return 0
        with self._lock:
            text, clip = self._pair(guild_id, user_id)
            existing: set[str] = set()
            for collection in (text, clip):
                if collection is None:
                    continue
                for chunk in _chunks(wanted, self._batch):
                    existing.update(collection.get(ids=list(chunk), include=[])["ids"])
                    collection.delete(ids=list(chunk))
            return len(existing)

    def _ids_where(self, guild_id: int | None, user_id: int | None, where: dict[str, Any]) -> list[str]:
        ids: set[str] = set()
        for collection in self._pair(guild_id, user_id):
            if collection is not None:
                ids.update(rid for rid, _, _ in self._scan(collection, where, with_vectors=False))
        return sorted(ids)

    @_reachable
    def delete_attachments(
        self, guild_id: int | None, attachment_ids: Iterable[int], *, user_id: int | None = None
    ) -> int:
        """Forget single attachments (e.g. removed from a message by an edit)."""
        ids = [record_id(i) for i in attachment_ids]
        return sum(self._delete_ids(*space, ids) for space in self._spaces_for(guild_id, user_id))

    @_reachable
    def delete_messages(self, guild_id: int | None, message_ids: Iterable[int], *, user_id: int | None = None) -> int:
        """Forget every image of these messages (a bulk delete); returns how many images went."""
        messages = sorted({int(i) for i in message_ids})
        removed = 0
        for space in self._spaces_for(guild_id, user_id):
            for chunk in _chunks(messages, 500):
                where = {"message": chunk[0]} if len(chunk) == 1 else {"message": {"$in": list(chunk)}}
                with self._lock:
                    removed += self._delete_ids(*space, self._ids_where(*space, where))
        return removed

    @_reachable
    def delete_message(self, guild_id: int | None, message_id: int, *, user_id: int | None = None) -> int:
        return self.delete_messages(guild_id, [message_id], user_id=user_id)

    @_reachable
    def sync_message(
        self,
        guild_id: int | None,
        message_id: int,
        remaining_attachment_ids: Iterable[int],
        *,
        user_id: int | None = None,
    ) -> int:
        """After an edit: forget this message's images that are no longer attached. Returns the count removed."""
        keep = {record_id(i) for i in remaining_attachment_ids}
        removed = 0
        for space in self._spaces_for(guild_id, user_id):
            with self._lock:
                gone = [rid for rid in self._ids_where(*space, {"message": int(message_id)}) if rid not in keep]
                removed += self._delete_ids(*space, gone)
        return removed

    @_reachable
    def forget_user(self, guild_id: int | None, user_id: int) -> int:
        """Forget everything ``user_id`` posted in one guild, or (guild_id None) in their DMs with the bot.

        This is what ``/forget`` in a guild does: that guild only. :meth:`forget_user_everywhere` covers all.
        """
        with self._lock:
            space = (guild_id, None if guild_id is not None else user_id)
            return self._delete_ids(*space, self._ids_where(*space, {"author": int(user_id)}))

    @_reachable
    def forget_user_everywhere(self, user_id: int) -> int:
        """Forget the user's images in every guild space and their DM space (a data-deletion request)."""
        total = 0
        for guild_id, dm_user in self.spaces():
            if guild_id is not None:
                total += self.forget_user(guild_id, user_id)
            elif dm_user == int(user_id):
                total += self.forget_user(None, user_id)
        return total

    # ----- reads -----

    @_reachable
    def search(
        self,
        audience: Audience,
        filters: Filters = NO_FILTERS,
        *,
        text_vector: Vector | None,
        clip_vector: Vector | None,
        limit: int = 10,
        rrf_k: int = RRF_K,
        text_query: str | None = None,
    ) -> list[SearchHit]:
        """/find: caption-text similarity, CLIP text→image similarity and the words written in the
        pictures, fused by reciprocal rank.

        ``text_vector`` is ``Analyzer.embed_texts([query])[0]``, ``clip_vector`` is
        ``Analyzer.clip_texts([query])[0]``; either may be None to search one space only.
        A DM audience (``guild_id`` None) searches the requester's own DM space and nothing else.
        Each space contributes up to its ``max(2 * limit, 20)`` best visible records (at least ``limit``
        when it has them); a record's fused score is the sum over spaces of ``1 / (rrf_k + rank)``.

        A fast-tier record (caption not written yet) has no caption rank: it ranks by its CLIP rank only,
        counted for the caption space too (as if its caption ranked where its image does), so that a
        picture posted a moment ago is not buried under every complete record just for lacking its
        second reading. So a complete record at least as good in both spaces always ranks at least as
        high, a space of only fast-tier records ranks by CLIP, and complete records score as before.
        Its hit says ``text_rank`` None (no rank is made up).

        ``text_query`` (the query as typed) is also matched against the text read in the pictures
        (:mod:`bot.memory.words`): the pictures whose text holds its words form a third ranked list,
        fused like the other two. A picture whose text holds a query of two or more words as a phrase
        comes first, then one holding all of them, then the fused order: someone who types a
        sentence they saw in a screenshot means that screenshot.
        """
        if text_vector is None and clip_vector is None:
            raise ValueError("search needs a text vector, a CLIP vector or both")
        visibility = audience.visibility
        if limit <= 0 or visibility.nothing or not _channel_visible(filters.channel_id, visibility):
            return []
        text, clip = self._pair(audience.guild_id, audience.owner_id)
        if text is None or clip is None:
            return []
        queries: dict[SpaceKind, tuple[Collection, list[float]]] = {}
        if text_vector is not None:
            queries["text"] = (text, _vector(text_vector))
        if clip_vector is not None:
            queries["clip"] = (clip, _vector(clip_vector))
        ranked = self._ranked(clip, queries, filters, visibility, depth=max(2 * limit, 20), enough=limit)
        words = WordQuery.parse(text_query) if text_query else None
        tiers: dict[str, int] = {}
        if words is not None:
            matches = self._word_matches(clip, words, filters, visibility, depth=max(2 * limit, 20))
            ranked["words"] = [candidate for candidate, _ in matches]
            tiers = {candidate.rid: tier for candidate, tier in matches}

        fused: dict[str, dict[str, Any]] = {}
        for space, candidates in ranked.items():
            for rank, candidate in enumerate(candidates, start=1):
                entry = fused.setdefault(candidate.rid, {"score": 0.0, "ranks": {}, "sims": {}})
                entry["score"] += 1.0 / (rrf_k + rank)
                entry["ranks"][space] = rank
                entry["sims"][space] = candidate.similarity
                entry["pending"] = bool(candidate.meta.get("caption_pending"))
        if "text" in ranked:  # a fast-tier record's CLIP rank stands in for the caption rank it cannot have
            for entry in fused.values():
                if entry["pending"] and "text" not in entry["ranks"] and "clip" in entry["ranks"]:
                    entry["score"] += 1.0 / (rrf_k + entry["ranks"]["clip"])
        order = sorted(
            fused.items(),
            key=lambda item: (-tiers.get(item[0], 0), -item[1]["score"], min(item[1]["ranks"].values()),
                              -int(item[0])),
        )[:limit]
        records = self._full_records(text, clip, [rid for rid, _ in order])
        return [
            SearchHit(
                image=from_metadata(records[rid]),
                score=entry["score"],
                text_rank=entry["ranks"].get("text"),
                clip_rank=entry["ranks"].get("clip"),
                text_similarity=entry["sims"].get("text"),
                clip_similarity=entry["sims"].get("clip"),
                words_rank=entry["ranks"].get("words"),
            )
            for rid, entry in order
            if rid in records and visibility.allows(records[rid])  # no text record: an orphaned index entry
        ]

    @_reachable
    def similar(
        self,
        audience: Audience,
        image_vector: Vector,
        *,
        exclude_attachment_id: int | None = None,
        limit: int = 10,
    ) -> list[SearchHit]:
        """"Find similar": CLIP image→image, nearest first; ``score`` is the cosine similarity."""
        visibility = audience.visibility
        if limit <= 0 or visibility.nothing:
            return []
        text, clip = self._pair(audience.guild_id, audience.owner_id)
        if text is None or clip is None:
            return []
        excluded = None if exclude_attachment_id is None else record_id(exclude_attachment_id)
        want = limit + (excluded is not None)
        ranked = self._ranked(clip, {"clip": (clip, _vector(image_vector))}, Filters(), visibility,
                              depth=max(2 * want, 20), enough=want)
        candidates = [c for c in ranked["clip"] if c.rid != excluded][:limit]
        records = self._full_records(text, clip, [c.rid for c in candidates])
        return [
            SearchHit(image=from_metadata(records[c.rid]), score=c.similarity, text_rank=None, clip_rank=rank,
                      clip_similarity=c.similarity)
            for rank, c in enumerate(candidates, start=1)
            if c.rid in records and visibility.allows(records[c.rid])
        ]

    @_reachable
    def get(self, guild_id: int | None, attachment_ids: Iterable[int], *, user_id: int | None = None
            ) -> dict[int, StoredImage]:
        """Stored records by attachment id, fast-tier ones too (no visibility check: for the bot's own
        bookkeeping)."""
        text, clip = self._pair(guild_id, user_id)
        records = self._full_records(text, clip, [record_id(i) for i in attachment_ids])
        return {int(rid): from_metadata(meta) for rid, meta in records.items()}

    @_reachable
    def browse(
        self,
        audience: Audience,
        filters: Filters = NO_FILTERS,
        *,
        newest_first: bool = True,
        limit: int = 25,
        offset: int = 0,
        now: datetime | None = None,
    ) -> list[StoredImage]:
        """A page of records in posting order (for /gallery), filtered like :meth:`search`.

        Chroma cannot sort, and reading every index entry costs seconds at 100k records, so newest
        first reads back in time slices from ``until`` (else ``now``): a day, a week, a month, four
        months, sixteen months, then the rest, stopping once the page is full. A recent page thus
        costs one or two small where-scans (~35 ms at 100k records). Oldest first, or with an explicit
        author/channel/sentiment/topic filter, it is one where-scan of the matching entries."""
        visibility = audience.visibility
        if limit <= 0 or visibility.nothing or not _channel_visible(filters.channel_id, visibility):
            return []
        text, clip = self._pair(audience.guild_id, audience.owner_id)
        if text is None or clip is None:
            return []
        base = replace(filters, since=None, until=None).clauses()
        since, until = filters.since, filters.until
        floor = None if since is None else _epoch(since)
        upper = None if until is None else _epoch(until)
        anchor = until or now or datetime.now(UTC)
        # With an author/channel/... filter the where-scan is selective already: one scan beats several.
        slices = [*BROWSE_SLICES, None] if newest_first and not base else [None]
        rows: list[tuple[str, Mapping[str, Any]]] = []
        for span in slices:
            lower = None if span is None else _epoch(anchor - span)
            if floor is not None and (lower is None or lower <= floor):
                lower, span = floor, None  # the last slice
            clauses = base + ([{"created_ts": {"$gte": lower}}] if lower is not None else [])
            clauses += [{"created_ts": {"$lt": upper}}] if upper is not None else []
            found = [(rid, meta) for rid, meta, _ in self._scan(clip, _where(clauses), with_vectors=False)
                     if visibility.allows(meta)]
            found.sort(key=lambda row: (int(row[1]["created_ts"]), int(row[0])), reverse=newest_first)
            rows += found
            if span is None or len(rows) >= offset + limit:
                break
            upper = lower
        page = [rid for rid, _ in rows[offset:offset + limit]]
        records = self._full_records(text, clip, page)
        return [from_metadata(records[rid]) for rid in page if rid in records and visibility.allows(records[rid])]

    @_reachable
    def count(self, audience: Audience, filters: Filters = NO_FILTERS) -> int:
        """How many images of a space the audience can see that match the filters
        (:meth:`Audience.everything`: all of them).

        Unrestricted it is Chroma's count (ms); otherwise one ids-only where-query (about a second at
        100k: fine for /stats, not for per-message paths)."""
        _, clip = self._pair(audience.guild_id, audience.owner_id)
        if clip is None:
            return 0
        visibility = audience.visibility
        if visibility.nothing:
            return 0
        where = _where(filters.clauses() + visibility.where())
        if where is None:
            return clip.count()
        return len(clip.get(where=where, include=[])["ids"])  # ids only: no per-record SQL variables

    @_reachable
    def images(self, audience: Audience, filters: Filters = NO_FILTERS) -> list[StoredImage]:
        """Every record the requester may see that matches the filters, oldest first (/stats, /gallery);
        fast-tier records (``caption_pending``) included.

        Reads full records page by page from the text collection, and the fast-tier ones from the clip
        collection (one where-scan for the pending flag): O(matching records), meant for on-demand
        overviews, never for the per-message paths."""
        visibility = audience.visibility
        if visibility.nothing or not _channel_visible(filters.channel_id, visibility):
            return []
        text, clip = self._pair(audience.guild_id, audience.owner_id)
        clauses = filters.clauses()
        complete = {rid: meta for rid, meta, _ in self._scan(text, _where(clauses), with_vectors=False)}
        pending = {rid: meta for rid, meta, _ in self._scan(clip, _where([*clauses, {"caption_pending": True}]),
                                                             with_vectors=False) if rid not in complete}
        rows = {rid: meta for rid, meta in (complete | pending).items() if visibility.allows(meta)}
        ordered = sorted(rows.items(), key=lambda row: (int(row[1]["created_ts"]), int(row[0])))
        return [from_metadata(meta) for _, meta in ordered]

    @_reachable
    def caption_vectors(self, guild_id: int | None, *, user_id: int | None = None
                        ) -> tuple[list[StoredImage], np.ndarray]:
        """Every record of one space with its caption vector, oldest first (no visibility check: for
        trusted server-wide jobs such as topic clustering, whose output is gated by its callers).
        Fast-tier records have no caption vector (no text record), so they are not among them."""
        text, _ = self._pair(guild_id, user_id)
        rows = sorted(self._scan(text, None, with_vectors=True),
                      key=lambda row: (int(row[1]["created_ts"]), int(row[0])))
        if not rows:
            return [], np.zeros((0, 0), dtype=np.float32)
        return ([from_metadata(meta) for _, meta, _ in rows],
                np.asarray([vector for _, _, vector in rows], dtype=np.float32))

    def _scan(self, text: Collection | None, where: dict[str, Any] | None, *, with_vectors: bool
              ) -> Iterable[tuple[str, Mapping[str, Any], Any]]:
        """(id, metadata, vector or None) of every record matching ``where``, a page at a time.

        Paged because Chroma's embedded ``get`` binds one SQL variable per record returned and fails
        ("too many SQL variables") somewhere past 30k records in one call."""
        if text is None:
            return
        include: list[Any] = ["metadatas", "embeddings"] if with_vectors else ["metadatas"]
        seen: set[str] = set()
        offset = 0
        while True:
            page = text.get(where=where, include=include, limit=self._batch, offset=offset)
            metas = page["metadatas"] or []
            vectors = page["embeddings"] if with_vectors else None
            for index, (rid, meta) in enumerate(zip(page["ids"], metas, strict=True)):
                if meta is not None and rid not in seen:  # a write between pages may shift a record
                    seen.add(rid)
                    yield rid, meta, None if vectors is None else vectors[index]
            if len(page["ids"]) < self._batch:
                return
            offset += self._batch

    # ----- internals -----

    def _ranked(
        self,
        index: Collection,
        queries: Mapping[SpaceKind, tuple[Collection, list[float]]],
        filters: Filters,
        visibility: Visibility,
        depth: int,
        enough: int,
    ) -> dict[SpaceKind, list[_Candidate]]:
        """Per space, up to ``depth`` visible records nearest to its vector, best first.

        The vector queries return ids and distances only (Chroma returns metadata row by row, which is
        what makes wide fetches slow); the few keys that decide visibility are then read for the union
        of candidates from the small index collection in one call. Over-fetch 1.5x; while a space keeps
        fewer than ``enough``, widen it x4; past ``MAX_FETCH`` let Chroma apply the visibility
        where-clause (slow but complete).
        """
        base = filters.clauses()
        fetch = dict.fromkeys(queries, max(depth + depth // 2, 10))
        found = {space: self._nearest(collection, vector, fetch[space], _where(base))
                 for space, (collection, vector) in queries.items()}
        metas = self._index_metas(index, {rid for hits in found.values() for rid, _ in hits})
        ranked: dict[SpaceKind, list[_Candidate]] = {}
        for space, (collection, vector) in queries.items():
            while True:
                kept = [_Candidate(rid, sim, metas[rid]) for rid, sim in found[space]
                        if rid in metas and visibility.allows(metas[rid])]
                if len(found[space]) < fetch[space] or len(kept) >= enough:  # all seen, or the top is safe
                    break
                if fetch[space] >= MAX_FETCH:
                    log.debug("post-filter kept %d of %d; using a where-clause", len(kept), fetch[space])
                    fetch[space] = depth
                    found[space] = self._nearest(collection, vector, depth, _where(base + visibility.where()))
                    metas.update(self._index_metas(index, {rid for rid, _ in found[space]} - metas.keys()))
                    kept = [_Candidate(rid, sim, metas[rid]) for rid, sim in found[space]
                            if rid in metas and visibility.allows(metas[rid])]
                    break
                fetch[space] = min(fetch[space] * 4, MAX_FETCH)
                found[space] = self._nearest(collection, vector, fetch[space], _where(base))
                metas.update(self._index_metas(index, {rid for rid, _ in found[space]} - metas.keys()))
            ranked[space] = kept[:depth]
        return ranked

    def _word_matches(self, index: Collection, words: WordQuery, filters: Filters, visibility: Visibility,
                      depth: int) -> list[tuple[_Candidate, int]]:
        """Up to ``depth`` visible records whose picture text holds any of the query's terms, best first,
        each with its tier (:meth:`WordQuery.match`); the candidate's similarity is the share of terms.

        Chroma finds them by substring (``$contains`` on the stored documents, with the explicit filters
        in the where-clause, at most :data:`MAX_FETCH`); visibility is then applied to their index keys
        like every other read. Newer pictures win ties."""
        needles = [{"$contains": needle} for needle in words.needles]
        document = needles[0] if len(needles) == 1 else {"$or": needles}
        found = index.get(where=_where(filters.clauses()), where_document=document,  # type: ignore[arg-type]
                          include=["documents", "metadatas"], limit=MAX_FETCH)
        scored: list[tuple[int, float, int, _Candidate]] = []
        for rid, doc, meta in zip(found["ids"], found["documents"] or [], found["metadatas"] or [], strict=True):
            if meta is None or not visibility.allows(meta):
                continue
            tier, share = words.match(doc or "")
            if share > 0:
                scored.append((tier, share, int(meta.get("created_ts", 0)), _Candidate(rid, share, meta)))
        scored.sort(key=lambda row: (-row[0], -row[1], -row[2], -int(row[3].rid)))
        return [(candidate, tier) for tier, _, _, candidate in scored[:depth]]

    @staticmethod
    def _nearest(collection: Collection, vector: list[float], n: int, where: dict[str, Any] | None
                 ) -> list[tuple[str, float]]:
        """(id, cosine similarity) of the ``n`` nearest records, without their metadata."""
        result = collection.query(query_embeddings=[vector], n_results=n, where=where, include=["distances"])
        distances = (result["distances"] or [[]])[0]
        return [(rid, 1.0 - float(dist)) for rid, dist in zip(result["ids"][0], distances, strict=True)]

    def _index_metas(self, index: Collection, ids: Iterable[str]) -> dict[str, Mapping[str, Any]]:
        """The small filter metadata (:data:`INDEX_KEYS`) of these records, from the clip collection."""
        return self._records(index, sorted(ids))

    def _full_records(self, text: Collection | None, clip: Collection | None, ids: Sequence[str]
                      ) -> dict[str, Mapping[str, Any]]:
        """The full records of these ids: the text record, else (a fast-tier record, no caption yet) the
        clip entry flagged ``caption_pending``, which carries the full record. A clip entry without the
        flag is only index keys, an orphan of an interrupted delete: never returned."""
        found = self._records(text, ids)
        missing = [rid for rid in ids if rid not in found]
        for rid, meta in self._records(clip, missing).items():
            if meta.get("caption_pending"):
                found[rid] = meta
        return found

    def _records(self, text: Collection | None, ids: Sequence[str]) -> dict[str, Mapping[str, Any]]:
        if text is None or not ids:
            return {}
        found: dict[str, Mapping[str, Any]] = {}
        for chunk in _chunks(list(dict.fromkeys(ids)), self._batch):
            result = text.get(ids=list(chunk), include=["metadatas"])
            for rid, meta in zip(result["ids"], result["metadatas"] or [], strict=True):
                if meta is not None:
                    found[rid] = meta
        return found


def _index_meta(meta: Metadata) -> Metadata:
    return {key: meta[key] for key in INDEX_KEYS if key in meta}


def _channel_visible(channel_id: int | None, visibility: Visibility) -> bool:
    return channel_id is None or visibility.visible_channel_ids is None or channel_id in visibility.visible_channel_ids


def _held(value: object) -> object:
    """An argument as the worker thread will get it: any iterable but a string, bytes, an array or a
    mapping is read into a new list first, on the event loop's thread.

    Why: the caller may hand over a generator or a live view of state that the loop goes on changing
    (a set of attachment ids, a dict's keys); iterated in the worker while the loop mutates it, it
    would raise "changed size during iteration" or see half an update. A snapshot taken before the
    hand-off is what the caller saw when it made the call. Vectors pass through as they are (an
    array) or as a copy (a list), which the store reads the same way."""
    if isinstance(value, str | bytes | np.ndarray | Mapping) or not isinstance(value, Iterable):
        return value
    return list(value)


def _off_loop(
    method: Callable[Concatenate[ImageStore, _P], _R],
) -> Callable[Concatenate[AsyncImageStore, _P], Coroutine[Any, Any, _R]]:
    """:class:`AsyncImageStore`'s version of an :class:`ImageStore` method: the same parameters (taken
    from the method, so the two cannot drift apart), awaited, run in a worker thread because Chroma
    blocks.

    Iterable arguments are snapshotted on the loop's thread first (:func:`_held`). The method is looked
    up on the wrapped store at each call rather than bound here, so a store subclass or a test's
    stand-in for one method is what runs, as when the mirrors called ``self.store.<name>`` by hand."""
    name = method.__name__

    async def call(self: AsyncImageStore, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        bound: Callable[..., _R] = getattr(self.store, name)
        held_args = [_held(value) for value in args]
        held_kwargs = {key: _held(value) for key, value in kwargs.items()}
        return await asyncio.to_thread(bound, *held_args, **held_kwargs)

    functools.update_wrapper(call, method)  # name, docs and (via __wrapped__) the signature of the original
    call.__qualname__ = f"AsyncImageStore.{name}"
    return call


class AsyncImageStore:
    """The same API for the event loop: each call runs in a worker thread, since Chroma blocks.

    Every Chroma-touching :class:`ImageStore` method is here, made by :func:`_off_loop` from the method
    itself (its signature and docs); ``tests/test_memory_store.py`` checks that none is missing."""

    def __init__(self, store: ImageStore) -> None:
        self.store = store

    @classmethod
    async def open(cls, settings: Settings) -> AsyncImageStore:
        return cls(await asyncio.to_thread(ImageStore.open, settings))

    # writes
    upsert = _off_loop(ImageStore.upsert)
    upsert_many = _off_loop(ImageStore.upsert_many)
    delete_message = _off_loop(ImageStore.delete_message)
    delete_messages = _off_loop(ImageStore.delete_messages)
    delete_attachments = _off_loop(ImageStore.delete_attachments)
    sync_message = _off_loop(ImageStore.sync_message)
    forget_user = _off_loop(ImageStore.forget_user)
    forget_user_everywhere = _off_loop(ImageStore.forget_user_everywhere)
    # reads
    spaces = _off_loop(ImageStore.spaces)
    has = _off_loop(ImageStore.has)
    get = _off_loop(ImageStore.get)
    search = _off_loop(ImageStore.search)
    similar = _off_loop(ImageStore.similar)
    browse = _off_loop(ImageStore.browse)
    count = _off_loop(ImageStore.count)
    images = _off_loop(ImageStore.images)
    caption_vectors = _off_loop(ImageStore.caption_vectors)
