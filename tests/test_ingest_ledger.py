"""The ingest ledger and the memory backlog: what was in flight when the process died is resumed, nothing
else; what the store could not take is kept, written in order when it is back, and never after a delete."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from datetime import UTC, datetime

import pytest

from bot.config import MemorySettings, Settings
from bot.errors import MemoryUnavailable
from bot.ingest.ledger import IngestLedger, ledger_path
from bot.memory import service as service_module
from bot.memory.records import ImageRef
from bot.memory.service import Audience, MemoryService
from bot.memory.store import AsyncImageStore, ImageStore
from tests.helpers import ALICE, BOB, GUILD_A, analysis, settings_for
from tests.helpers import ref as store_ref


def ref(attachment_id: int, guild_id: int | None = 5) -> ImageRef:
    return ImageRef(
        attachment_id=attachment_id, message_id=attachment_id + 1, channel_id=7, guild_id=guild_id, author_id=9,
        jump_url="https://discord.com/channels/5/7/1", attachment_url=f"https://cdn.example/{attachment_id}.png",
        filename="cat.png", created_at=datetime(2024, 5, 1, tzinfo=UTC), nsfw=attachment_id % 2 == 0,
    )


def test_crash_mid_ingest_resumes_only_the_in_flight_images(tmp_path):
    settings = Settings(memory=MemorySettings(path="data/chroma"), base_dir=str(tmp_path))
    assert ledger_path(settings) == tmp_path / "data" / "chroma-ledger.sqlite3"
    ledger = IngestLedger.open(settings)
    ledger.mark_pending_many([ref(1), ref(2), ref(3, guild_id=None)])
    ledger.mark_done(1)
    # "Crash": the first connection is never closed; a new process opens the same file.
    resumed = IngestLedger.open(settings)
    pending = resumed.pending()
    assert [item.ref for item in pending] == [ref(2), ref(3, guild_id=None)]
    assert all(item.attempts == 1 for item in pending)
    with sqlite3.connect(ledger_path(settings)) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_retries_are_counted_and_repeat_offenders_can_be_skipped(tmp_path):
    with IngestLedger(tmp_path / "ledger.sqlite3") as ledger:
        ledger.mark_pending(ref(1))
        ledger.mark_pending(ref(1))  # resumed once, crashed again
        ledger.mark_pending(ref(1))
        ledger.mark_pending(ref(2))
        assert [(item.ref.attachment_id, item.attempts) for item in ledger.pending()] == [(1, 3), (2, 1)]
        assert [item.ref.attachment_id for item in ledger.pending(max_attempts=2)] == [2]
        ledger.mark_done(1, 2, 99)  # unknown ids are fine (a message deleted before it was marked)
        assert ledger.pending() == []


# ----- the backlog: analysed images the store could not take yet -----

def pairs(rows) -> list:
    return [(row.ref, row.analysis) for row in rows]


def test_old_ledger_files_are_migrated_and_keep_their_rows(tmp_path):
    path = tmp_path / "ledger.sqlite3"
    with sqlite3.connect(path) as db:  # the schema before the backlog existed
        db.execute("CREATE TABLE pending (attachment_id INTEGER PRIMARY KEY, ref TEXT NOT NULL, "
                   "first_marked REAL NOT NULL, attempts INTEGER NOT NULL DEFAULT 1)")
        db.execute("INSERT INTO pending VALUES (1, ?, 1.0, 2)", (json.dumps(ref(1).to_dict()),))
    db.close()
    with IngestLedger(path) as ledger:
        assert [(item.ref, item.attempts) for item in ledger.pending()] == [(ref(1), 2)]
        assert ledger.backlog() == [] and ledger.queued_deletes() == []
    with IngestLedger(path) as again:  # opening a migrated file again changes nothing
        assert [item.ref for item in again.pending()] == [ref(1)]


def test_analysis_round_trips_and_only_pending_images_can_join_the_backlog(tmp_path):
    first, second = analysis(caption="a dog on a beach"), analysis(caption="a cat")
    with IngestLedger(tmp_path / "ledger.sqlite3") as ledger:
        ledger.mark_pending_many([ref(1), ref(2), ref(3)])
        assert ledger.save_analysis(ref(2), second) and ledger.save_analysis(ref(1), first)
        ledger.mark_done(3)
        assert not ledger.save_analysis(ref(3), analysis())  # taken back: never comes back
        assert not ledger.save_analysis(ref(4), analysis())  # never marked
        assert pairs(ledger.backlog()) == [(ref(1), first), (ref(2), second)]  # oldest first, exactly as analysed
        assert pairs(ledger.backlog([2, 99])) == [(ref(2), second)]
        assert ledger.backlog_refs() == [ref(1), ref(2)]
        assert ledger.pending() == []  # analysed: written by the writer, not analysed again
        ledger.mark_done(1)
        assert ledger.backlog_refs() == [ref(2)]
        first_id = ledger.queue_delete("messages", {"guild_id": 5, "message_ids": [2, 3]})
        ledger.queue_delete("forget", {"guild_id": None, "user_id": 9})
        assert [(d.kind, d.args) for d in ledger.queued_deletes()] == [
            ("messages", {"guild_id": 5, "message_ids": [2, 3]}), ("forget", {"guild_id": None, "user_id": 9})]
        ledger.delete_done(first_id)
        assert [d.kind for d in ledger.queued_deletes()] == ["forget"]


def test_an_unreadable_backlog_row_is_dropped_not_blocking(tmp_path):
    with IngestLedger(tmp_path / "ledger.sqlite3") as ledger:
        ledger.mark_pending_many([ref(1), ref(2)])
        ledger.save_analysis(ref(1), analysis())
        ledger.save_analysis(ref(2), analysis())
        ledger.execute("UPDATE pending SET analysis = '{\"caption\": 1}' WHERE attachment_id = 1")
        assert [row.ref.attachment_id for row in ledger.backlog()] == [2]
        assert ledger.backlog_refs() == [ref(2)]


class SwitchableStore(AsyncImageStore):
    """An embedded store that can be "down": every call then raises MemoryUnavailable, as the HTTP
    backend's does when Chroma is unreachable (tests/test_memory_store.py shows that with a real server)."""

    down = False

    def __getattribute__(self, name: str):
        value = super().__getattribute__(name)
        if not name.startswith("_") and name != "store" and callable(value) and object.__getattribute__(self, "down"):
            async def refuse(*args, **kwargs):
                raise MemoryUnavailable(detail=f"test: the store is down ({name})")
            return refuse
        return value


@pytest.fixture
def fast_retries(monkeypatch):
    """Retry every few ms (tests wait for the outcome, never for a delay)."""
    monkeypatch.setattr(service_module, "RETRY_FIRST_S", 0.01)
    monkeypatch.setattr(service_module, "RETRY_MAX_S", 0.05)


def open_memory(tmp_path, store: SwitchableStore) -> MemoryService:
    return MemoryService(store, IngestLedger(tmp_path / "ledger.sqlite3"), encoder=None)  # type: ignore[arg-type]


def image(attachment_id: int, *, author: int = ALICE, message: int | None = None) -> ImageRef:
    return store_ref(attachment_id, author=author, message=message)


async def ingest(memory: MemoryService, *refs: ImageRef) -> list[bool]:
    """What bot.ingest does around the analysis."""
    await memory.begin(refs)
    try:
        return [await memory.remember(item, analysis(caption=f"picture {item.attachment_id}")) for item in refs]
    finally:
        memory.settle(refs)


async def until(condition, what: str) -> None:
    """Wait (up to 10 s) for a condition on the service's state; polled, as the writer runs in the background."""
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


async def test_pictures_keep_flowing_while_the_store_is_down_and_are_written_in_order(tmp_path, fast_retries):
    store = SwitchableStore(ImageStore.open(settings_for(tmp_path, path="chroma")))
    memory = open_memory(tmp_path, store)
    assert await ingest(memory, image(1)) == [True]  # stored at once
    store.down = True
    assert await ingest(memory, image(2), image(3)) == [True, True]  # will be remembered
    assert await ingest(memory, image(4)) == [True]
    assert memory.waiting == (3, 0)
    assert [row.ref.attachment_id for row in memory.ledger.backlog()] == [2, 3, 4]
    assert await memory.pending() == []  # nothing to analyse again
    await until(lambda: memory.unavailable_since is not None, "the writer found the store down")

    written: list[int] = []
    real = store.store.upsert_many
    store.store.upsert_many = lambda items: written.extend(r.attachment_id for r, _ in items) or real(items)
    store.down = False
    await until(lambda: memory.waiting == (0, 0), "the backlog written")
    assert written == [2, 3, 4]
    assert set(store.store.get(GUILD_A, [1, 2, 3, 4])) == {1, 2, 3, 4}
    assert store.store.get(GUILD_A, [3])[3].caption == "picture 3"
    assert memory.ledger.backlog() == [] and await memory.pending() == []
    assert memory.unavailable_since is None
    await memory.close()


async def test_deletes_edits_and_forget_while_down_win_over_the_backlog(tmp_path, fast_retries):
    store = SwitchableStore(ImageStore.open(settings_for(tmp_path, path="chroma")))
    memory = open_memory(tmp_path, store)
    stored_alice, stored_bob = image(1, author=ALICE), image(2, author=BOB)
    await ingest(memory, stored_alice, stored_bob)
    store.down = True
    deleted, edited_away = image(3, author=BOB), image(4, author=BOB, message=77)
    kept = image(5, author=BOB, message=77)
    waiting_alice = image(6, author=ALICE)
    await ingest(memory, deleted, edited_away, kept, waiting_alice)
    assert memory.waiting == (4, 0)

    assert await memory.message_deleted(GUILD_A, deleted.message_id) == 0  # queued for the store
    assert await memory.message_edited(GUILD_A, 77, [kept.attachment_id]) == 0
    with pytest.raises(MemoryUnavailable) as refused:
        await memory.forget(GUILD_A, ALICE)
    assert refused.value.user_message == service_module.FORGET_QUEUED
    assert memory.waiting == (1, 3)  # only `kept` still waits to be written
    later_alice = image(8, author=ALICE)  # posted after her /forget: must survive its replay
    await ingest(memory, later_alice)
    assert [row.ref.attachment_id for row in memory.ledger.backlog()] == [kept.attachment_id, later_alice.attachment_id]

    store.down = False
    await until(lambda: memory.waiting == (0, 0), "deletes replayed and the backlog written")
    assert set(store.store.get(GUILD_A, range(1, 9))) == {stored_bob.attachment_id, kept.attachment_id,
                                                          later_alice.attachment_id}
    await memory.close()


async def test_a_delete_while_the_writer_writes_its_batch_still_wins(tmp_path, fast_retries):
    store = SwitchableStore(ImageStore.open(settings_for(tmp_path, path="chroma")))
    memory = open_memory(tmp_path, store)
    store.down = True
    taken_back, other = image(1), image(2)
    await ingest(memory, taken_back, other)
    loop, real = asyncio.get_running_loop(), store.store.upsert_many

    deletes: list[int] = []

    def upsert_while_deleted(items):
        # The MESSAGE_DELETE handler runs to its end while the writer's upsert is about to land (once).
        if not deletes and taken_back.attachment_id in {r.attachment_id for r, _ in items}:
            deletes.append(asyncio.run_coroutine_threadsafe(
                memory.message_deleted(GUILD_A, taken_back.message_id), loop).result())
        return real(items)

    store.store.upsert_many = upsert_while_deleted
    store.down = False
    await until(lambda: memory.waiting == (0, 0), "the backlog written")
    assert deletes == [0]  # the delete itself found nothing to remove...
    assert set(store.store.get(GUILD_A, [1, 2])) == {2}  # ...and the writer removed what it had just written
    await memory.close()


async def test_a_crash_with_a_backlog_loses_nothing_and_analyses_nothing_again(tmp_path, fast_retries):
    store = SwitchableStore(ImageStore.open(settings_for(tmp_path, path="chroma")))
    memory = open_memory(tmp_path, store)
    store.down = True
    await ingest(memory, image(1), image(2))
    await memory.begin([image(3)])  # and one still being analysed when the process died
    await memory.message_deleted(GUILD_A, image(9).message_id)  # a delete the store did not take
    # kill -9: nothing is closed; the next process opens the same ledger, and the store is back.
    store.down = False
    again = open_memory(tmp_path, store)
    assert [item.ref for item in await again.pending()] == [image(3)]  # resumed (analysed) as before
    await again.load_backlog()
    assert again.waiting[0] == 2
    await until(lambda: again.waiting == (0, 0), "the old backlog written")
    assert set(store.store.get(GUILD_A, [1, 2, 3])) == {1, 2}
    await again.close()


async def test_close_stops_a_writer_that_is_waiting_for_the_store(tmp_path, fast_retries):
    store = SwitchableStore(ImageStore.open(settings_for(tmp_path, path="chroma")))
    memory = open_memory(tmp_path, store)
    store.down = True
    await ingest(memory, image(1))
    await until(lambda: memory.unavailable_since is not None, "the writer found the store down")
    writer = memory._writer
    await memory.close()
    assert writer is not None and writer.done()
    with IngestLedger(tmp_path / "ledger.sqlite3") as ledger:  # still there for the next start
        assert ledger.backlog_refs() == [image(1)]


async def test_a_picture_posted_after_a_queued_forget_survives_its_replay(tmp_path, monkeypatch):
    """The store is back but the writer is still waiting out its backoff: a new picture must queue
    behind the /forget, and a read that works (someone's /find) ends the wait."""
    monkeypatch.setattr(service_module, "RETRY_FIRST_S", 3600.0)  # the writer never retries by itself here
    store = SwitchableStore(ImageStore.open(settings_for(tmp_path, path="chroma")))
    memory = open_memory(tmp_path, store)
    await ingest(memory, image(1))
    store.down = True
    with pytest.raises(MemoryUnavailable):
        await memory.forget(GUILD_A, ALICE)
    await until(lambda: memory.unavailable_since is not None, "the writer found the store down")
    store.down = False
    assert await ingest(memory, image(2)) == [True]
    assert memory.waiting == (1, 1)  # behind the forget, not written before it
    audience = Audience(requester_id=ALICE, guild_id=GUILD_A, visible_channel_ids=None, allow_nsfw=True)
    assert [found.attachment_id for found in await memory.find("", audience)] == [1]  # not forgotten yet
    await until(lambda: memory.waiting == (0, 0), "the forget replayed, then the picture written")
    assert set(store.store.get(GUILD_A, [1, 2])) == {2}
    await memory.close()
