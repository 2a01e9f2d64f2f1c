"""Crash-safety ledger for ingest: a crash loses at most the in-flight images, and they are resumed.

The protocol is two writes around the slow part::

    ledger.mark_pending(ref)        # before the image is downloaded and analysed
    ...analyse, store.upsert(ref, analysis)...
    ledger.mark_done(ref.attachment_id)

On start-up :meth:`IngestLedger.pending` lists every ref that was marked but never finished; the bot
queues them again (the store's upsert is idempotent, so an image that was stored just before the crash
is simply overwritten). ``attempts`` counts how often an image was marked, so one that crashes the
process every time can be given up on instead of looping forever.

A tiny stdlib ``sqlite3`` file in WAL mode, kept beside (not inside) the Chroma data so that it works
the same with the embedded and the HTTP backend. ``synchronous=NORMAL``: every commit survives a
process crash (the case this is for); a power cut may lose the last few marks, like Chroma's own log.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from bot.config import Settings
from bot.memory.records import ImageRef
from bot.sqlite_file import SqliteFile

LEDGER_SUFFIX = "-ledger.sqlite3"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS pending (
    attachment_id INTEGER PRIMARY KEY,
    ref TEXT NOT NULL,
    first_marked REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 1
)
"""


@dataclass(frozen=True)
class PendingImage:
    ref: ImageRef
    attempts: int  # how many times it was marked pending (1 = never retried)
    first_marked: float  # epoch seconds


class IngestLedger(SqliteFile):
    """Pending-image bookkeeping in one sqlite file; safe to call from several threads."""

    def __init__(self, path: str | Path) -> None:
        super().__init__(path, _SCHEMA)

    @classmethod
    def open(cls, settings: Settings) -> IngestLedger:
        """The ledger beside the configured Chroma folder: ``data/chroma`` → ``data/chroma-ledger.sqlite3``."""
        return cls(ledger_path(settings))

    def mark_pending(self, ref: ImageRef) -> None:
        self.mark_pending_many([ref])

    def mark_pending_many(self, refs: Iterable[ImageRef]) -> None:
        rows = [(ref.attachment_id, json.dumps(ref.to_dict()), time.time()) for ref in refs]
        self.executemany(
            "INSERT INTO pending (attachment_id, ref, first_marked) VALUES (?, ?, ?) "
            "ON CONFLICT(attachment_id) DO UPDATE SET ref = excluded.ref, attempts = attempts + 1",
            rows,
        )

    def mark_done(self, *attachment_ids: int) -> None:
        """Finished (stored) or abandoned (message deleted, image refused): either way not to resume."""
        self.executemany("DELETE FROM pending WHERE attachment_id = ?", [(int(i),) for i in attachment_ids])

    def pending(self, *, max_attempts: int | None = None) -> list[PendingImage]:
        """What to resume, oldest first; ``max_attempts`` leaves out images that keep failing."""
        query = "SELECT ref, attempts, first_marked FROM pending"
        params: tuple[int, ...] = ()
        if max_attempts is not None:
            query += " WHERE attempts <= ?"
            params = (max_attempts,)
        rows = self.execute(query + " ORDER BY first_marked, attachment_id", params)
        return [PendingImage(ImageRef.from_dict(json.loads(ref)), attempts, first) for ref, attempts, first in rows]


def ledger_path(settings: Settings) -> Path:
    chroma = settings.resolve_path(settings.memory.path)
    return chroma.parent / f"{chroma.name}{LEDGER_SUFFIX}"
