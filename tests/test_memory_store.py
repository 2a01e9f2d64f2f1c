"""The image memory over a real Chroma (embedded, and one HTTP server): isolation, sync, ranking."""

from __future__ import annotations

import asyncio
import io
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from bot.analysis import PENDING_CAPTION, ImageAnalysis, Sentiment
from bot.memory.records import ImageRef, from_metadata, to_metadata
from bot.memory.store import INDEX_KEYS, AsyncImageStore, Audience, Filters, ImageStore
from tests.helpers import (
    ADULT,
    ALICE,
    BOB,
    CAROL,
    CLIP_DIM,
    GUILD_A,
    GUILD_B,
    OTHER,
    PRIVATE,
    PUBLIC,
    T0,
    TEXT_DIM,
    analysis,
    near,
    random_vector,
    ref,
    reseed,
    settings_for,
)


@pytest.fixture(autouse=True)
def seeded():
    """Every test draws the same vectors, whatever ran before it."""
    reseed()


@pytest.fixture(autouse=True)
def no_default_embedder(monkeypatch):
    """Chroma's default embedding function must never run (it would download an ONNX model)."""
    from chromadb.utils.embedding_functions import onnx_mini_lm_l6_v2

    def refuse(*args, **kwargs):
        raise AssertionError("Chroma's default embedding function was used")

    monkeypatch.setattr(onnx_mini_lm_l6_v2.ONNXMiniLM_L6_V2, "__call__", refuse)
    monkeypatch.setattr(onnx_mini_lm_l6_v2.ONNXMiniLM_L6_V2, "_download_model_if_not_exists", refuse)


@pytest.fixture
def store(tmp_path) -> ImageStore:
    return ImageStore.open(settings_for(tmp_path, path="chroma", collection_prefix="test"))


def search(store: ImageStore, guild=GUILD_A, *, text=None, clip=None, visible=None, nsfw=False, requester=ALICE,
           **kwargs):
    """The store's search for an audience built from these few words, explicit filters by keyword."""
    filters = pop_filters(kwargs)
    audience = Audience(requester, guild, None if visible is None else frozenset(visible), nsfw)
    return store.search(audience, filters, text_vector=text, clip_vector=clip, **kwargs)


ALICE_PUBLIC = Audience(ALICE, GUILD_A, frozenset({PUBLIC}), False)  # alice, who can read #public only
FILTER_KEYS = {"author_id", "channel_id", "sentiment", "topic", "since", "until"}


def pop_filters(kwargs: dict) -> Filters:
    """The explicit filters among ``kwargs``, taken out of it (the rest goes on to the store)."""
    return Filters(**{key: kwargs.pop(key) for key in list(kwargs) if key in FILTER_KEYS})


def ids(hits) -> list[int]:
    return [hit.image.attachment_id for hit in hits]


# ----- records -----

def test_metadata_roundtrip_keeps_snowflakes_and_fields():
    big = 1_234_567_890_123_456_789
    original = ref(big, guild=None, author=big - 1, message=big - 2, when=datetime(2024, 1, 2, 3, 4, 5))  # naive = UTC
    meta = to_metadata(original, analysis())
    assert all(isinstance(value, (str, int, float, bool)) for value in meta.values())
    stored = from_metadata(meta)
    assert stored.ref == original
    assert stored.ref.guild_id is None and stored.ref.created_at.tzinfo == UTC
    assert stored.labels == ["dog", "park", "photograph"]
    assert stored.tags == ["dog", "cat", "park", "photograph"]
    assert stored.top_label_by_set == {"objects": "dog", "scenes": "park", "medium": "photograph"}
    assert stored.sentiment == "neutral" and stored.sentiment_scores["neutral"] == pytest.approx(0.8)
    assert stored.topic == "animals" and stored.caption_topic == "animals"
    assert stored.model_ids == {"captioner": "tiny-blip", "tagger": "tiny-clip"}
    assert ImageRef.from_dict(original.to_dict()) == original
    with pytest.raises(ValueError, match="message_id"):
        ref(1, message=2**63)  # beyond Chroma's 64-bit integers: refused, never silently rounded


# ----- writes -----

def test_upsert_is_idempotent_under_replay(store):
    first = analysis()
    store.upsert(ref(1), first)
    store.upsert(ref(1), first)
    store.upsert_many([(ref(1), first), (ref(2), analysis()), (ref(2), analysis())])
    assert store.count(Audience.everything(GUILD_A)) == 2
    assert store.has(GUILD_A, [1, 2, 3]) == {1, 2}
    assert store.has(GUILD_B, [1, 2]) == set()
    # A replay with new content overwrites rather than adding.
    store.upsert(ref(1), analysis(caption="a new caption"))
    assert store.count(Audience.everything(GUILD_A)) == 2
    assert store.get(GUILD_A, [1])[1].caption == "a new caption"


def test_delete_message_bulk_and_edit_sync(store):
    store.upsert_many([
        (ref(1, message=500), analysis()), (ref(2, message=500), analysis()), (ref(3, message=500), analysis()),
        (ref(4, message=501), analysis()), (ref(5, message=502), analysis()), (ref(6, message=503), analysis()),
    ])
    query = random_vector(TEXT_DIM)
    assert store.delete_message(GUILD_A, 501) == 1
    assert store.delete_message(GUILD_A, 501) == 0  # a replayed delete event is harmless
    assert store.delete_messages(GUILD_A, [502, 503, 999]) == 2
    # An edit removed attachment 2 from message 500; 1 and 3 remain.
    assert store.sync_message(GUILD_A, 500, [1, 3]) == 1
    assert store.delete_attachments(GUILD_A, [3, 77]) == 1
    assert store.has(GUILD_A, range(10)) == {1}
    assert ids(search(store, text=query, clip=random_vector(CLIP_DIM), limit=50)) == [1]
    assert store.count(Audience.everything(GUILD_A)) == 1


def test_forget_user_in_guild_dm_and_everywhere(store):
    store.upsert_many([
        (ref(1, author=ALICE), analysis()), (ref(2, author=ALICE), analysis()), (ref(3, author=BOB), analysis()),
        (ref(4, guild=GUILD_B, author=ALICE), analysis()), (ref(5, guild=GUILD_B, author=BOB), analysis()),
        (ref(6, guild=None, author=ALICE), analysis()), (ref(7, guild=None, author=BOB), analysis()),
    ])
    assert store.forget_user(GUILD_A, ALICE) == 2  # /forget in guild A: guild A only
    assert store.has(GUILD_A, [1, 2, 3]) == {3}
    assert store.has(GUILD_B, [4, 5]) == {4, 5}
    assert store.forget_user_everywhere(ALICE) == 2  # guild B and her DMs
    assert store.has(GUILD_B, [4, 5]) == {5}
    assert store.has(None, [6], user_id=ALICE) == set()
    assert store.has(None, [7], user_id=BOB) == {7}
    assert store.forget_user(None, BOB) == 1
    assert store.forget_user_everywhere(ALICE) == 0


# ----- isolation -----

def test_guilds_never_see_each_other_even_with_identical_vectors(store):
    text, clip = random_vector(TEXT_DIM), random_vector(CLIP_DIM)
    store.upsert(ref(1, guild=GUILD_A), analysis(text, clip))
    store.upsert_many([(ref(10 + i, guild=GUILD_B), analysis()) for i in range(5)])
    hits = search(store, GUILD_B, text=text, clip=clip, limit=50)
    assert ids(hits) and 1 not in ids(hits)
    assert all(hit.image.ref.guild_id == GUILD_B for hit in hits)
    assert ids(search(store, GUILD_A, text=text, clip=clip, limit=1)) == [1]
    assert search(store, 900_000_000_000_000_099, text=text, clip=clip) == []  # a guild with no images yet


def test_private_channels_are_never_returned(store):
    text, clip = random_vector(TEXT_DIM), random_vector(CLIP_DIM)
    # The private channel holds the best matches and most of the images; the public one a few weak ones.
    store.upsert_many([(ref(100 + i, channel=PRIVATE), analysis(near(text, 0.1), near(clip, 0.1)))
                       for i in range(120)])
    store.upsert_many([(ref(300 + i, channel=PUBLIC), analysis()) for i in range(4)])
    for visible in ({PUBLIC}, {PUBLIC, OTHER}):
        hits = search(store, text=text, clip=clip, visible=visible, limit=10)
        assert sorted(ids(hits)) == [300, 301, 302, 303]  # found despite 120 better hidden ones
        assert all(hit.image.ref.channel_id == PUBLIC for hit in hits)
        # Ranks count visible records only: no gap betrays the hidden ones.
        assert sorted(hit.text_rank for hit in hits) == sorted(hit.clip_rank for hit in hits) == [1, 2, 3, 4]
        similar = store.similar(Audience(ALICE, GUILD_A, visible, False), clip)
        assert sorted(ids(similar)) == [300, 301, 302, 303]
        pages = store.browse(Audience(ALICE, GUILD_A, visible, False), limit=100)
        assert sorted(image.attachment_id for image in pages) == [300, 301, 302, 303]
        assert store.count(Audience(ALICE, GUILD_A, visible, False)) == 4
    assert search(store, text=text, clip=clip, visible=set()) == []
    # Asking for the private channel by name from outside it yields nothing either.
    assert search(store, text=text, clip=clip, visible={PUBLIC}, channel_id=PRIVATE) == []
    assert len(search(store, text=text, clip=clip, visible=None, limit=200)) == 124


def test_nsfw_only_when_allowed(store):
    text, clip = random_vector(TEXT_DIM), random_vector(CLIP_DIM)
    store.upsert_many([(ref(1 + i, channel=ADULT, nsfw=True), analysis(near(text, 0.05), near(clip, 0.05)))
                       for i in range(30)])
    store.upsert_many([(ref(100 + i), analysis()) for i in range(3)])
    safe = search(store, text=text, clip=clip, nsfw=False, limit=50)
    assert sorted(ids(safe)) == [100, 101, 102]
    assert not any(hit.image.ref.nsfw for hit in safe)
    assert not any(hit.image.ref.nsfw for hit in store.similar(
        Audience(ALICE, GUILD_A, None, False), clip, limit=50))
    assert len(search(store, text=text, clip=clip, nsfw=True, limit=50)) == 33
    assert ids(search(store, text=text, clip=clip, nsfw=True, limit=1))[0] < 100


def test_dm_search_sees_only_the_requesters_own_images(store):
    text, clip = random_vector(TEXT_DIM), random_vector(CLIP_DIM)
    store.upsert(ref(1, guild=None, author=ALICE, channel=7001), analysis(text, clip))
    store.upsert(ref(2, guild=None, author=BOB, channel=7002), analysis(text, clip))
    store.upsert(ref(3, guild=GUILD_A, author=ALICE), analysis(text, clip))
    assert ids(search(store, None, text=text, clip=clip, requester=ALICE, limit=10)) == [1]
    assert ids(search(store, None, text=text, clip=clip, requester=BOB, limit=10)) == [2]
    assert search(store, None, text=text, clip=clip, requester=CAROL) == []
    assert ids(store.similar(Audience(BOB, None, None, False), clip)) == [2]
    # A DM delete event that doesn't say whose DM it was still finds the message.
    assert store.delete_message(None, 20) == 1
    assert store.has(None, [2], user_id=BOB) == set()
    assert store.count(Audience.everything(None, owner_id=ALICE)) == 1


# ----- ranking -----

def test_hybrid_search_puts_the_right_image_first(store):
    text, clip = random_vector(TEXT_DIM), random_vector(CLIP_DIM)
    items = [(ref(1), analysis(near(text, 0.6), near(clip, 0.6))),  # good in both spaces
             (ref(2), analysis(near(text, 0.3), None)),  # best caption, unrelated image
             (ref(3), analysis(None, near(clip, 0.3)))]  # best image, unrelated caption
    items += [(ref(100 + i), analysis()) for i in range(60)]  # distractors
    store.upsert_many(items)
    hits = search(store, text=text, clip=clip, limit=5)
    assert ids(hits)[0] == 1  # second in both spaces beats first in one (and random in the other)
    top = hits[0]
    assert (top.text_rank, top.clip_rank) == (2, 2)
    assert top.score == pytest.approx(2 / 62)
    assert top.text_similarity is not None and top.clip_similarity is not None
    assert hits[0].image.caption == "a photo" and hits[0].image.ref.jump_url.endswith("/10")
    # One space alone ranks by that space only.
    assert ids(search(store, text=text, limit=1)) == [2]
    assert ids(search(store, clip=clip, limit=1)) == [3]
    assert search(store, clip=clip, limit=1)[0].text_rank is None


def test_explicit_filters(store):
    text, clip = random_vector(TEXT_DIM), random_vector(CLIP_DIM)
    store.upsert_many([
        (ref(1, author=ALICE, when=T0), analysis(text, clip, sentiment="positive", topic="food")),
        (ref(2, author=BOB, channel=OTHER, when=T0 + timedelta(days=3)), analysis(text, clip, topic="animals")),
        (ref(3, author=BOB, when=T0 + timedelta(days=10)), analysis(text, clip, sentiment="negative")),
    ])
    assert sorted(ids(search(store, text=text, clip=clip, author_id=BOB))) == [2, 3]
    assert ids(search(store, text=text, clip=clip, channel_id=OTHER)) == [2]
    assert ids(search(store, text=text, clip=clip, sentiment="positive")) == [1]
    assert ids(search(store, text=text, clip=clip, topic="food")) == [1]
    assert ids(search(store, text=text, clip=clip, since=T0 + timedelta(days=1), until=T0 + timedelta(days=5))) == [2]
    assert ids(search(store, text=text, clip=clip, since=T0 + timedelta(days=10))) == [3]
    assert ids(search(store, text=text, clip=clip, until=T0 + timedelta(seconds=1))) == [1]
    newest = store.browse(Audience(ALICE, GUILD_A, None, False))
    assert [image.attachment_id for image in newest] == [3, 2, 1]
    oldest = store.browse(Audience(ALICE, GUILD_A, None, False), newest_first=False, limit=2,
                          offset=1)
    assert [image.attachment_id for image in oldest] == [2, 3]
    assert store.count(Audience.everything(GUILD_A), Filters(author_id=BOB)) == 2
    assert store.count(Audience.everything(GUILD_A), Filters(since=T0 + timedelta(days=2))) == 2


def test_where_clause_search_agrees_with_postfilter(tmp_path):
    """The benchmark's where-clause alternative (bench/bench_find.py) finds what the shipped post-filter
    finds, so the benchmark compares like with like."""
    from chromadb.config import Settings as ChromaSettings

    from bench.bench_find import WhereSearch

    client = __import__("chromadb").PersistentClient(path=str(tmp_path / "c"),
                                                     settings=ChromaSettings(anonymized_telemetry=False))
    post = ImageStore(client, prefix="x")
    post.upsert_many([(ref(i, channel=(PUBLIC, PRIVATE, OTHER)[i % 3], nsfw=i % 7 == 0), analysis())
                      for i in range(1, 90)])
    where = WhereSearch(post, GUILD_A)
    audience = Audience(ALICE, GUILD_A, frozenset({PUBLIC, OTHER}), False)
    rng = np.random.default_rng(3)
    for _ in range(5):
        text, clip = rng.standard_normal(TEXT_DIM), rng.standard_normal(CLIP_DIM)
        a = search(post, text=text, clip=clip, visible={PUBLIC, OTHER}, limit=10)
        b = where.search(audience, text_vector=text, clip_vector=clip, limit=10)
        assert len(a) == len(b) == 10
        # Post-filter may stop with fewer tail candidates than the where-clause returns, which can
        # reorder close fused scores; the per-space ranks among visible records must agree exactly.
        ranks_b = {hit.image.attachment_id: (hit.text_rank, hit.clip_rank) for hit in b}
        for hit in a:
            if hit.image.attachment_id in ranks_b:
                theirs = ranks_b[hit.image.attachment_id]
                assert hit.text_rank in (None, theirs[0]) and hit.clip_rank in (None, theirs[1])
        assert all(hit.image.ref.channel_id != PRIVATE and not hit.image.ref.nsfw for hit in a + b)


def test_query_text_never_embeds_with_chromas_default(store):
    store.upsert(ref(1), analysis())
    text = store.client.get_collection(store.collection_name(GUILD_A, None, "text"), embedding_function=None)
    with pytest.raises(ValueError, match="embedding function"):
        text.query(query_texts=["a dog"])
    for collection in store._collections.values():
        assert collection._embedding_function is None
    with pytest.raises(ValueError):
        ImageStore(store.client, prefix="bad prefix!")


async def test_async_wrapper(tmp_path):
    memory = await AsyncImageStore.open(settings_for(tmp_path, path=str(tmp_path / "chroma")))
    text, clip = random_vector(TEXT_DIM), random_vector(CLIP_DIM)
    await memory.upsert(ref(1), analysis(text, clip))
    await asyncio.gather(*(memory.upsert(ref(10 + i), analysis()) for i in range(5)))
    assert await memory.has(GUILD_A, [1, 10, 99]) == {1, 10}
    hits = await memory.search(ALICE_PUBLIC, text_vector=text, clip_vector=clip, limit=3)
    assert ids(hits)[0] == 1
    assert await memory.delete_message(GUILD_A, 10) == 1
    assert await memory.count(Audience.everything(GUILD_A)) == 5


# ImageStore's public names that AsyncImageStore deliberately leaves out, and why.
SYNC_ONLY = {
    "open": "AsyncImageStore.open is its own classmethod (it opens an ImageStore in a worker thread)",
    "connect": "connection management: every call connects on demand",
    "collection_name": "a pure function of its arguments, no Chroma call",
}


def test_async_store_offers_every_store_call_with_its_signature():
    """A new ImageStore method must be added to AsyncImageStore (or to SYNC_ONLY, with a reason):
    otherwise a cog would reach for ``memory.store.<name>`` and block the event loop."""
    import inspect

    def public(cls) -> set[str]:
        return {name for name, value in vars(cls).items() if not name.startswith("_") and callable(value)}

    mirrored = public(AsyncImageStore) - {"open"}
    assert mirrored == public(ImageStore) - set(SYNC_ONLY)
    assert set(SYNC_ONLY) <= public(ImageStore) | {"open"}
    for name in sorted(mirrored):
        wrapper, original = getattr(AsyncImageStore, name), getattr(ImageStore, name)
        assert inspect.iscoroutinefunction(wrapper), name
        assert inspect.signature(wrapper) == inspect.signature(original), name
        assert wrapper.__doc__ == original.__doc__, name


async def test_async_store_reads_iterables_on_the_loop_thread(store):
    """A generator (or a live set the loop goes on changing) is read before the hand-off to the worker."""
    import threading

    store.upsert_many([(ref(1), analysis()), (ref(2), analysis())])
    memory = AsyncImageStore(store)
    read_on: list[int] = []

    def attachments():
        read_on.append(threading.get_ident())
        yield from (1, 2, 3)

    assert await memory.has(GUILD_A, attachments()) == {1, 2}
    assert read_on == [threading.get_ident()]
    assert set(await memory.get(GUILD_A, (i for i in (2, 3)))) == {2}
    assert await memory.sync_message(GUILD_A, ref(1).message_id, iter([1])) == 0


# ----- two-tier analysis: fast-tier records (CLIP first, the caption later) -----

def fast(full: ImageAnalysis, mood: str = "positive") -> ImageAnalysis:
    """The fast tier of ``full``: labels, image topic and vector known; no caption, the image's own mood."""
    image_mood = Sentiment.from_scores({"negative": 0.1, "neutral": 0.1, "positive": 0.1, mood: 0.8})
    return replace(full, caption="", caption_embedding=[], caption_topics=[], caption_pending=True,
                   sentiment=image_mood, image_sentiment=image_mood)


def collections(store: ImageStore, guild=GUILD_A):
    return (store.client.get_collection(store.collection_name(guild, None, "text"), embedding_function=None),
            store.client.get_collection(store.collection_name(guild, None, "clip"), embedding_function=None))


def clip_entry(store: ImageStore, attachment_id: int) -> dict:
    _, clip = collections(store)
    return clip.get(ids=[str(attachment_id)], include=["metadatas"])["metadatas"][0]


def test_a_fast_tier_record_is_findable_then_completed_in_place(store):
    text_vec, clip_vec = random_vector(TEXT_DIM), random_vector(CLIP_DIM)
    full = analysis(text_vec, clip_vec, caption="a dog on a beach", sentiment="neutral", topic="animals")
    store.upsert(ref(1), fast(full))
    store.upsert(ref(1), fast(full))  # idempotent like any upsert
    text, clip = collections(store)
    assert (text.count(), clip.count()) == (0, 1)  # no caption vector: the caption space has no record
    assert clip_entry(store, 1)["caption_pending"] is True
    assert store.count(Audience.everything(GUILD_A)) == 1
    assert store.has(GUILD_A, [1]) == {1} and store.has(GUILD_A, [1], captioned=True) == set()

    pending = store.get(GUILD_A, [1])[1]
    assert pending.caption_pending and pending.caption == "" and pending.display_caption == PENDING_CAPTION
    assert pending.labels == ["dog", "park", "photograph"] and pending.topic == "animals"
    assert pending.sentiment == "positive" and pending.caption_sentiment is None  # the image's own mood
    assert pending.caption_topic is None
    every = ALICE_PUBLIC
    assert [i.attachment_id for i in store.browse(every)] == [1]
    assert [i.caption_pending for i in store.images(every)] == [True]
    assert [i.attachment_id for i in store.images(every, Filters(sentiment="positive"))] == [1]
    assert store.caption_vectors(GUILD_A)[0] == []  # nothing to cluster yet
    assert ids(store.similar(every, clip_vec)) == [1]

    store.upsert(ref(1), full)  # the caption tier lands: the same attachment id, replaced fully
    assert (text.count(), clip.count()) == (1, 1)
    done = store.get(GUILD_A, [1])[1]
    assert not done.caption_pending and done.caption == "a dog on a beach" and done.display_caption == done.caption
    assert done.sentiment == done.caption_sentiment == "neutral" and done.caption_topic == "animals"
    # The clip entry is back to the index keys: the fast-tier record's other keys are gone, not merged in.
    assert set(clip_entry(store, 1)) == set(INDEX_KEYS) and clip_entry(store, 1)["caption_pending"] is False
    assert store.has(GUILD_A, [1], captioned=True) == {1}
    assert [i.attachment_id for i in store.images(every)] == [1]
    images, vectors = store.caption_vectors(GUILD_A)
    assert [i.attachment_id for i in images] == [1] and np.allclose(vectors[0], full.caption_embedding, atol=1e-5)
    assert ids(search(store, text=text_vec, limit=1)) == [1]


def test_a_late_fast_tier_never_downgrades_a_complete_record(store):
    full = analysis(caption="a cat on a sofa")
    store.upsert(ref(1), full)
    store.upsert(ref(1), fast(full))  # late, or replayed after a crash: skipped
    assert store.upsert_many([(ref(1), fast(full))]) == 1  # counted: the image is stored (completely)
    kept = store.get(GUILD_A, [1])[1]
    assert not kept.caption_pending and kept.caption == "a cat on a sofa"
    assert set(clip_entry(store, 1)) == set(INDEX_KEYS)
    assert store.has(GUILD_A, [1], captioned=True) == {1}
    # In one batch too, whichever order the two tiers come in.
    store.upsert_many([(ref(2), analysis(caption="two")), (ref(2), fast(analysis()))])
    store.upsert_many([(ref(3), fast(analysis())), (ref(3), analysis(caption="three"))])
    assert {i: image.caption for i, image in store.get(GUILD_A, [1, 2, 3]).items()} == {
        1: "a cat on a sofa", 2: "two", 3: "three"}
    text, _ = collections(store)
    assert text.count() == 3


def test_deletes_and_forget_remove_fast_tier_records(store):
    store.upsert_many([(ref(1, message=500), fast(analysis())), (ref(2, message=500), analysis()),
                       (ref(3, author=BOB), fast(analysis())), (ref(4, guild=None, author=BOB), fast(analysis()))])
    assert store.sync_message(GUILD_A, 500, [2]) == 1
    assert store.forget_user(GUILD_A, BOB) == 1
    assert store.delete_message(None, 40) == 1  # a DM delete that doesn't say whose DM it was
    assert store.has(GUILD_A, [1, 2, 3]) == {2} and store.count(Audience.everything(GUILD_A)) == 1


def test_fast_tier_records_respect_channel_and_nsfw_visibility(store):
    clip = random_vector(CLIP_DIM)
    store.upsert_many([(ref(1, channel=PRIVATE), fast(analysis(None, near(clip, 0.05)))),
                       (ref(2, channel=ADULT, nsfw=True), fast(analysis(None, near(clip, 0.05)))),
                       (ref(3), fast(analysis()))])
    for call in (lambda: search(store, text=random_vector(TEXT_DIM), clip=clip, visible={PUBLIC}, limit=10),
                 lambda: store.similar(ALICE_PUBLIC, clip)):
        assert ids(call()) == [3]
    every = ALICE_PUBLIC
    assert [i.attachment_id for i in store.images(every)] == [3]
    assert [i.attachment_id for i in store.browse(every)] == [3]


def test_search_finds_a_fast_tier_record_by_clip_text(store):
    text, clip = random_vector(TEXT_DIM), random_vector(CLIP_DIM)
    store.upsert(ref(1), fast(analysis(near(text, 0.05), near(clip, 0.2))))  # its caption vector is never stored
    store.upsert_many([(ref(100 + i), analysis()) for i in range(40)])
    hits = search(store, text=text, clip=clip, limit=5)
    top = hits[0]
    assert top.image.attachment_id == 1 and top.image.caption_pending
    assert (top.text_rank, top.clip_rank) == (None, 1) and top.text_similarity is None
    assert top.score == pytest.approx(2 / 61)  # its CLIP rank stands in for the caption rank it lacks
    assert ids(search(store, clip=clip, limit=1)) == [1]
    assert search(store, clip=clip, limit=1)[0].score == pytest.approx(1 / 61)  # one space: nothing to stand in
    assert 1 not in ids(search(store, text=text, limit=50))  # the caption space has nothing of it


def test_hybrid_ranking_with_a_mix_of_complete_and_fast_tier_records(store):
    text, clip = random_vector(TEXT_DIM), random_vector(CLIP_DIM)
    store.upsert_many([
        (ref(1), analysis(near(text, 0.05), near(clip, 0.1))),  # the exact caption match, a good image too
        (ref(2), fast(analysis(None, near(clip, 0.4)))),  # pending, a fair image match
        (ref(3), analysis(near(text, 0.3), -clip)),  # a good caption, the opposite image
        (ref(4), fast(analysis(None, near(clip, 0.8)))),  # pending, a weaker image match
    ])
    store.upsert_many([(ref(100 + i), analysis()) for i in range(30)])
    store.upsert_many([(ref(200 + i), fast(analysis())) for i in range(10)])
    hits = search(store, text=text, clip=clip, limit=40)
    ranks = {hit.image.attachment_id: (hit.text_rank, hit.clip_rank) for hit in hits}
    # The exact caption match first as ever; pending pictures by their CLIP rank, above the caption-only hit.
    assert ids(hits)[:3] == [1, 2, 4]
    assert ranks[1] == (1, 1) and ranks[2] == (None, 2) and ranks[4] == (None, 3) and ranks[3] == (2, 44)
    assert ids(hits).index(3) > 2
    assert [hit.image.caption_pending for hit in hits[:3]] == [False, True, True]
    assert all(hit.text_rank is None for hit in hits if hit.image.caption_pending)
    assert all(hit.image.display_caption == PENDING_CAPTION for hit in hits if hit.image.caption_pending)
    # A space of fast-tier records only (no caption vector at all) ranks by CLIP.
    store.delete_attachments(GUILD_A, [1, 2, 3, 4, *range(100, 130)])
    store.upsert_many([(ref(1), fast(analysis(None, near(clip, 0.1)))),
                       (ref(2), fast(analysis(None, near(clip, 0.5))))])
    only = search(store, text=text, clip=clip, limit=3)
    assert ids(only)[:2] == [1, 2] and [hit.clip_rank for hit in only] == [1, 2, 3]
    assert [hit.score for hit in only] == pytest.approx([2 / 61, 2 / 62, 2 / 63])


def test_fast_tier_then_complete_over_http(tmp_path, chroma_server):
    """The same upgrade against a real server: None deletes a metadata key over HTTP too."""
    store = ImageStore.open(settings_for(tmp_path, backend="http", port=chroma_server, collection_prefix="tiers"))
    full = analysis(caption="a boat")
    store.upsert(ref(1), fast(full))
    assert store.get(GUILD_A, [1])[1].caption_pending and store.has(GUILD_A, [1], captioned=True) == set()
    store.upsert(ref(1), full)
    store.upsert(ref(1), fast(full))
    assert store.get(GUILD_A, [1])[1].caption == "a boat"
    assert set(clip_entry(store, 1)) == set(INDEX_KEYS)


# ----- real photos through the tiny models -----

def _reencode(data: bytes) -> bytes:
    from PIL import Image

    image = Image.open(io.BytesIO(data)).convert("RGB")
    image = image.resize((image.width * 7 // 10, image.height * 7 // 10))
    out = io.BytesIO()
    image.save(out, "JPEG", quality=35)
    return out.getvalue()


@pytest.fixture(scope="module")
def photo_analyses(analyzer, photos):
    from bot.imaging import decode_image

    names = sorted(photos)
    originals = analyzer.analyze([decode_image(photos[name]) for name in names])
    # Only the image vectors of the variants matter: the CLIP encoder alone, as analyze() runs it.
    variants = analyzer.tagger.encode_images([decode_image(_reencode(photos[name])).image for name in names])
    return names, originals, variants.cpu().numpy().astype(np.float32)


def test_similar_finds_the_same_photo_reencoded_first(store, photo_analyses):
    names, originals, variants = photo_analyses
    assert len(names) >= 4
    store.upsert_many([(ref(1000 + i), item) for i, item in enumerate(originals)])
    for i, variant in enumerate(variants):
        hits = store.similar(ALICE_PUBLIC, variant, limit=3)
        assert ids(hits)[0] == 1000 + i, names[i]
        assert hits[0].score > hits[1].score
        # Right-click "find similar" on the stored image itself leaves the image out.
        again = store.similar(ALICE_PUBLIC, originals[i].image_embedding,
                              exclude_attachment_id=1000 + i)
        assert 1000 + i not in ids(again) and len(again) == len(names) - 1


def test_real_photo_search_with_query_vectors(store, photo_analyses, analyzer):
    _, originals, _ = photo_analyses
    store.upsert_many([(ref(1000 + i), item) for i, item in enumerate(originals)])
    store.upsert_many([(ref(5000 + i), item) for i, item in enumerate(originals)])  # a second copy of each...
    store.delete_attachments(GUILD_A, [5000 + i for i in range(len(originals))])  # ...deleted again
    caption = originals[0].caption
    hits = search(store, text=analyzer.embed_texts([caption])[0], clip=analyzer.clip_texts([caption])[0],
                  visible={PUBLIC}, limit=20)
    assert sorted(ids(hits)) == [1000 + i for i in range(len(originals))]
    assert any(hit.text_rank == 1 and hit.image.caption == caption for hit in hits)
    assert all(hit.image.model_ids for hit in hits)


# ----- HTTP backend: a real `chroma run` server (the chroma_process / chroma_server fixtures) -----

def test_http_backend_against_a_real_server(tmp_path, chroma_server):
    store = ImageStore.open(settings_for(tmp_path, backend="http", port=chroma_server, collection_prefix="http"))
    big = 1_298_765_432_109_876_543
    text, clip = random_vector(TEXT_DIM), random_vector(CLIP_DIM)
    store.upsert(ref(big, channel=big - 7, author=big - 9, message=big - 5), analysis(text, clip))
    store.upsert(ref(big, channel=big - 7, author=big - 9, message=big - 5), analysis(text, clip))
    store.upsert_many([(ref(10 + i), analysis()) for i in range(10)])
    store.upsert(ref(99, channel=PRIVATE, author=BOB), analysis(text, clip))
    assert store.count(Audience.everything(GUILD_A)) == 12
    hits = search(store, text=text, clip=clip, visible={PUBLIC, big - 7}, limit=5)
    assert ids(hits)[0] == big and 99 not in ids(hits)
    assert hits[0].image.ref.channel_id == big - 7 and hits[0].image.ref.author_id == big - 9
    assert store.has(GUILD_A, [big, 12345]) == {big}
    assert store.delete_message(GUILD_A, big - 5) == 1
    assert store.forget_user(GUILD_A, ALICE) == 10
    assert store.count(Audience.everything(GUILD_A)) == 1
    for collection in store._collections.values():
        assert collection._embedding_function is None


def test_large_reads_are_paged(store):
    """Chroma's embedded get() fails past ~30k records in one call, so every scan pages; shown with tiny pages."""
    store._batch = 4
    store.upsert_many([(ref(1 + i, when=T0 + timedelta(minutes=i)), analysis()) for i in range(11)])
    newest = store.browse(ALICE_PUBLIC, limit=100)
    assert [image.attachment_id for image in newest] == list(range(11, 0, -1))
    assert store.count(ALICE_PUBLIC) == 11
    assert store.has(GUILD_A, range(20)) == set(range(1, 12))
    assert store.forget_user(GUILD_A, ALICE) == 11
    assert store.count(Audience.everything(GUILD_A)) == 0


def test_browse_reads_back_in_time_slices(store):
    now = datetime(2024, 6, 1, tzinfo=UTC)
    ages = {1: timedelta(hours=2), 2: timedelta(days=3), 3: timedelta(days=40), 4: timedelta(days=400),
            5: timedelta(days=1000), 6: timedelta(days=3, hours=1)}
    store.upsert_many([(ref(i, when=now - age, channel=PRIVATE if i == 6 else PUBLIC), analysis())
                       for i, age in ages.items()])
    store.upsert(ref(7, when=now + timedelta(minutes=5)), analysis())  # a clock a little ahead

    def page(**kwargs) -> list[int]:
        filters = pop_filters(kwargs)
        return [image.attachment_id for image in store.browse(ALICE_PUBLIC, filters, now=now, **kwargs)]

    assert page(limit=2) == [7, 1]
    assert page() == [7, 1, 2, 3, 4, 5]
    assert page(limit=2, offset=2) == [2, 3]
    assert page(since=now - timedelta(days=100)) == [7, 1, 2, 3]
    assert page(until=now - timedelta(days=1)) == [2, 3, 4, 5]
    assert page(since=now - timedelta(days=500), until=now - timedelta(days=10)) == [3, 4]
    assert page(newest_first=False, limit=3) == [5, 4, 3]
    assert store.count(ALICE_PUBLIC) == 6
    assert store.count(ALICE_PUBLIC, Filters(since=now - timedelta(days=5))) == 3
    assert store.count(Audience.everything(GUILD_A)) == 7


async def test_a_delete_racing_the_store_write_still_wins(tmp_path, store):
    """The narrow race the Discord-level test cannot time: the delete event arrives while remember()'s
    upsert runs in its thread, so the store's delete may run before the record exists."""
    from bot.ingest.ledger import IngestLedger
    from bot.memory.service import MemoryService
    from bot.memory.store import AsyncImageStore

    settings = settings_for(tmp_path, path="chroma", collection_prefix="test")
    memory = MemoryService(AsyncImageStore(store), IngestLedger.open(settings), encoder=None)  # type: ignore[arg-type]
    image = ref(1)
    await memory.begin([image])
    real_upsert, loop = store.upsert, asyncio.get_running_loop()

    def upsert_while_deleted(*args):
        # The MESSAGE_DELETE handler runs to the end while this thread is still about to write.
        assert asyncio.run_coroutine_threadsafe(memory.message_deleted(GUILD_A, image.message_id), loop).result() == 0
        real_upsert(*args)

    store.upsert = upsert_while_deleted  # type: ignore[method-assign]
    assert await memory.remember(image, analysis()) is False
    assert store.get(GUILD_A, [1]) == {}
    memory.settle([image])
    assert not memory.retracted

    store.upsert = real_upsert  # type: ignore[method-assign]
    other = ref(2)
    await memory.begin([other])
    assert await memory.remember(other, analysis()) is True
    memory.settle([other])
    assert set(store.get(GUILD_A, [2])) == {2}
    assert await memory.pending() == []
    await memory.close()


# ----- outages of the HTTP backend -----

def test_a_killed_server_means_memory_unavailable_at_once_and_the_same_store_recovers(tmp_path, chroma_process):
    """What chromadb 1.5.9 does when the server dies: every call raises httpx.ConnectError (connection
    refused) within milliseconds. The store turns that into MemoryUnavailable for reads and writes, and
    the same ImageStore works again once a server is back on the same port and path."""
    import httpx

    from bot.errors import MemoryUnavailable

    store = ImageStore.open(settings_for(tmp_path, backend="http", port=chroma_process.port, collection_prefix="out"))
    text, clip = random_vector(TEXT_DIM), random_vector(CLIP_DIM)
    store.upsert(ref(1), analysis(text, clip))
    chroma_process.kill()
    calls = {
        "search": lambda: search(store, text=text, clip=clip, visible={PUBLIC}),
        "similar": lambda: store.similar(ALICE_PUBLIC, clip),
        "browse": lambda: store.browse(ALICE_PUBLIC),
        "count": lambda: store.count(Audience.everything(GUILD_A)),
        "has": lambda: store.has(GUILD_A, [1]),
        "upsert": lambda: store.upsert(ref(2), analysis()),
        "delete": lambda: store.delete_message(GUILD_A, ref(1).message_id),
        "forget": lambda: store.forget_user(GUILD_A, ALICE),
        "spaces": lambda: store.spaces(),
    }
    for name, call in calls.items():
        started = time.monotonic()
        with pytest.raises(MemoryUnavailable) as raised:
            call()
        assert time.monotonic() - started < 2.0, name  # refused at once, not a timeout (measured: ~1 ms)
        assert isinstance(raised.value.__cause__, httpx.TransportError), name
        assert raised.value.code == "memory_unavailable"

    chroma_process.start()  # same port, same data folder
    assert ids(search(store, text=text, clip=clip, visible={PUBLIC})) == [1]
    store.upsert(ref(2), analysis())
    assert store.has(GUILD_A, [1, 2]) == {1, 2}

    # A server that comes back without its data: the cached collections are stale, the store notices.
    chroma_process.kill()
    with pytest.raises(MemoryUnavailable):
        store.count(Audience.everything(GUILD_A))
    chroma_process.data = tmp_path / "fresh-data"
    chroma_process.start()
    assert store.count(Audience.everything(GUILD_A)) == 0
    store.upsert(ref(3), analysis())
    assert store.has(GUILD_A, [1, 3]) == {3}
    # The same, with no call while it was down: the first call finds its cached collection gone.
    chroma_process.kill()
    chroma_process.data = tmp_path / "fresh-again"
    chroma_process.start()
    assert store.has(GUILD_A, [3]) == set()
    store.upsert(ref(4), analysis())
    assert store.count(Audience.everything(GUILD_A)) == 1


def test_a_store_opened_while_chroma_is_down_connects_when_it_comes_up(tmp_path, chroma_process):
    from bot.errors import MemoryUnavailable

    chroma_process.kill()
    store = ImageStore.open(settings_for(tmp_path, backend="http", port=chroma_process.port, collection_prefix="late"))
    with pytest.raises(MemoryUnavailable):
        store.upsert(ref(1), analysis())
    chroma_process.start()
    store.upsert(ref(1), analysis())
    assert store.count(Audience.everything(GUILD_A)) == 1


def test_a_hung_server_times_out_instead_of_blocking_forever(tmp_path, chroma_process, monkeypatch):
    """chromadb's own HTTP client has no timeout: a server that accepts but never answers (stopped,
    swapping, a dead network path) would keep /find "thinking" forever. The store's client times out."""
    import signal

    import httpx

    from bot.errors import MemoryUnavailable
    from bot.memory import store as store_module

    monkeypatch.setattr(store_module, "HTTP_TIMEOUT", httpx.Timeout(1.0, connect=1.0))
    store = ImageStore.open(settings_for(tmp_path, backend="http", port=chroma_process.port, collection_prefix="hung"))
    store.upsert(ref(1), analysis())
    assert chroma_process.process is not None
    chroma_process.process.send_signal(signal.SIGSTOP)
    try:
        with pytest.raises(MemoryUnavailable) as raised:
            store.count(Audience.everything(GUILD_A))
        assert isinstance(raised.value.__cause__, httpx.TimeoutException)
    finally:
        chroma_process.process.send_signal(signal.SIGCONT)
    assert store.count(Audience.everything(GUILD_A)) == 1


# ----- the words written in pictures -----

def with_text(full: ImageAnalysis, text: str) -> ImageAnalysis:
    return replace(full, text=text)


def test_words_in_a_picture_rank_it_first_and_respect_visibility_and_filters(store):
    query_text, query_clip = random_vector(TEXT_DIM), random_vector(CLIP_DIM)
    # Ten pictures that match the query's vectors far better than the screenshot does.
    store.upsert_many([(ref(100 + i), analysis(near(query_text, 0.1), near(query_clip, 0.1))) for i in range(10)])
    store.upsert(ref(200), with_text(analysis(), "psql: error: Connection REFUSED!"))
    store.upsert(ref(201), with_text(analysis(), "refused: no connection"))  # both words, not the phrase
    store.upsert(ref(202, channel=PRIVATE), with_text(analysis(), "connection refused"))  # hidden from alice
    store.upsert(ref(203, author=BOB), with_text(fast(analysis()), "connection refused again"))  # caption pending
    hits = search(store, text=query_text, clip=query_clip, visible={PUBLIC}, text_query="connection refused")
    assert set(ids(hits)[:2]) == {200, 203} and ids(hits)[2] == 201  # the phrase first, then both words
    screenshot = next(hit for hit in hits if hit.image.attachment_id == 200)
    assert screenshot.words_rank in (1, 2) and screenshot.image.text == "psql: error: Connection REFUSED!"
    assert 202 not in ids(hits)  # a hidden channel stays hidden, whatever its picture says
    assert ids(search(store, text=query_text, clip=query_clip, visible={PUBLIC}, author_id=ALICE,
                      text_query="connection refused"))[:2] == [200, 201]
    # Without the words the vectors decide.
    assert ids(search(store, text=query_text, clip=query_clip, visible={PUBLIC}))[0] < 200
    # The complete record replacing the fast-tier one keeps its words findable.
    store.upsert(ref(203, author=BOB), with_text(analysis(), "connection refused again"))
    again = search(store, text=query_text, clip=query_clip, visible={PUBLIC}, text_query="connection refused")
    assert 203 in ids(again)


def test_words_in_pictures_over_http(tmp_path, chroma_server):
    """The documents and ``$contains`` matching work the same against a real Chroma server."""
    store = ImageStore.open(settings_for(tmp_path, backend="http", port=chroma_server, collection_prefix="words"))
    store.upsert_many([(ref(1 + i), analysis()) for i in range(5)])
    store.upsert(ref(9), with_text(analysis(), "Meeting moved to 5pm"))
    hits = search(store, text=random_vector(TEXT_DIM), clip=random_vector(CLIP_DIM), visible={PUBLIC},
                  text_query="meeting moved to 5pm")
    assert ids(hits)[0] == 9 and hits[0].words_rank == 1
