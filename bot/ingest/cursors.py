"""Per-channel backfill cursors: how far /index got, so a re-run continues instead of starting over.

One row per (guild, channel): the id of the newest message whose images were all handed to ingestion
(``after_id``), and running totals for the summary. Written after every message, in one sqlite
transaction (WAL, ``synchronous=NORMAL``: each commit survives a process crash, which is what a
resumable backfill needs). A tiny stdlib file beside the Chroma data, like the ingest ledger.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from bot.sqlite_file import SqliteFile

_SCHEMA = """
CREATE TABLE IF NOT EXISTS cursors (
    guild_id INTEGER NOT NULL,
    channel_id INTEGER NOT NULL,
    after_id INTEGER NOT NULL,
    scanned INTEGER NOT NULL DEFAULT 0,
    indexed INTEGER NOT NULL DEFAULT 0,
    skipped INTEGER NOT NULL DEFAULT 0,
    failed INTEGER NOT NULL DEFAULT 0,
    updated REAL NOT NULL,
    PRIMARY KEY (guild_id, channel_id)
)
"""


@dataclass(frozen=True)
class ChannelCursor:
    guild_id: int
    channel_id: int
    after_id: int  # every message up to and including this id has been handled
    scanned: int  # totals over every run so far
    indexed: int
    skipped: int
    failed: int
    updated: float  # epoch seconds


class BackfillCursors(SqliteFile):
    """The cursor file; safe to call from several threads (the cog runs it in worker threads)."""

    def __init__(self, path: str | Path) -> None:
        super().__init__(path, _SCHEMA)

    def get(self, guild_id: int, channel_id: int) -> ChannelCursor | None:
        rows = self.execute(
            "SELECT guild_id, channel_id, after_id, scanned, indexed, skipped, failed, updated FROM cursors "
            "WHERE guild_id = ? AND channel_id = ?", (int(guild_id), int(channel_id)),
        )
        return ChannelCursor(*rows[0]) if rows else None

    def advance(self, guild_id: int, channel_id: int, after_id: int, *, scanned: int = 0, indexed: int = 0,
                skipped: int = 0, failed: int = 0) -> None:
        """Move the cursor to ``after_id`` (never backwards) and add to the totals."""
        self.execute(
            "INSERT INTO cursors (guild_id, channel_id, after_id, scanned, indexed, skipped, failed, updated) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (guild_id, channel_id) DO UPDATE SET "
            "after_id = MAX(after_id, excluded.after_id), scanned = scanned + excluded.scanned, "
            "indexed = indexed + excluded.indexed, skipped = skipped + excluded.skipped, "
            "failed = failed + excluded.failed, updated = excluded.updated",
            (int(guild_id), int(channel_id), int(after_id), scanned, indexed, skipped, failed, time.time()),
        )

    def reset(self, guild_id: int, channel_id: int) -> None:
        """Forget a channel's cursor: the next run starts at the channel's first message again."""
        self.execute("DELETE FROM cursors WHERE guild_id = ? AND channel_id = ?", (int(guild_id), int(channel_id)))
