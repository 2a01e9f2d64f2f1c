"""The ingest ledger: what was in flight when the process died is resumed, nothing else."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime

from bot.config import MemorySettings, Settings
from bot.memory.ledger import IngestLedger, ledger_path
from bot.memory.records import ImageRef


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
