"""Crash-safety ledger for ingest: a crash loses at most the in-flight images, and they are resumed.

The protocol is two writes around the slow part::

    ledger.mark_pending(ref)        # before the image is downloaded and analysed
    ...analyse, store.upsert(ref, analysis)...
    ledger.mark_done(ref.attachment_id)

On start-up :meth:`IngestLedger.pending` lists every ref that was marked but never analysed; the bot
queues them again (the store's upsert is idempotent, so an image that was stored just before the crash
is simply overwritten). ``attempts`` counts how often an image was marked, so one that crashes the
process every time can be given up on instead of looping forever.

When the store is down after the analysis, :meth:`IngestLedger.save_analysis` keeps the analysis in the
image's row (the *backlog*): the memory service's writer stores it once Chroma answers again, and after
a restart the backlog is written without analysing anything again. Saving only updates an existing row,
so an image that was taken back (deleted, edited away, /forget: :meth:`mark_done`) meanwhile is never
put back. Deletes that could not reach the store wait in a second table (:meth:`queue_delete`) and are
replayed before the backlog.

A tiny stdlib ``sqlite3`` file in WAL mode, kept beside (not inside) the Chroma data so that it works
the same with the embedded and the HTTP backend. ``synchronous=NORMAL``: every commit survives a
process crash (the case this is for); a power cut may lose the last few marks, like Chroma's own log.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bot.analysis import ImageAnalysis
from bot.config import Settings
from bot.memory.records import ImageRef
from bot.sqlite_file import SqliteFile

log = logging.getLogger(__name__)
LEDGER_SUFFIX = "-ledger.sqlite3"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS pending (
    attachment_id INTEGER PRIMARY KEY,
    ref TEXT NOT NULL,
    first_marked REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 1
)
"""
# Additive migrations, each run once on a file that lacks it (older files keep their rows).
_PENDING_ANALYSIS = "ALTER TABLE pending ADD COLUMN analysis TEXT"  # NULL: not analysed yet
_DELETES = """
CREATE TABLE IF NOT EXISTS deletes (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    args TEXT NOT NULL,
    queued REAL NOT NULL
)
"""
_ORDER = " ORDER BY first_marked, attachment_id"


@dataclass(frozen=True)
class PendingImage:
    ref: ImageRef
    attempts: int  # how many times it was marked pending (1 = never retried)
    first_marked: float  # epoch seconds


@dataclass(frozen=True)
class QueuedDelete:
    """A delete the store could not take when it happened: ``kind`` names the store call, ``args`` its arguments."""

    id: int
    kind: str
    args: dict[str, Any]
    queued: float  # epoch seconds


class IngestLedger(SqliteFile):
    """Pending-image bookkeeping in one sqlite file; safe to call from several threads."""

    def __init__(self, path: str | Path) -> None:
        super().__init__(path, _SCHEMA)
        columns = {row[1] for row in self.execute("PRAGMA table_info(pending)")}
        if "analysis" not in columns:
            self.execute(_PENDING_ANALYSIS)
        self.execute(_DELETES)

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
        """What to analyse again, oldest first (not the backlog: that is analysed already);
        ``max_attempts`` leaves out images that keep failing."""
        query = "SELECT ref, attempts, first_marked FROM pending WHERE analysis IS NULL"
        params: tuple[int, ...] = ()
        if max_attempts is not None:
            query += " AND attempts <= ?"
            params = (max_attempts,)
        rows = self.execute(query + _ORDER, params)
        return [PendingImage(ImageRef.from_dict(json.loads(ref)), attempts, first) for ref, attempts, first in rows]

    # ----- the backlog: analysed, not yet stored -----

    def save_analysis(self, ref: ImageRef, analysis: ImageAnalysis) -> bool:
        """Keep an analysis until the store takes it. False (nothing saved) when the image is no longer
        pending: it was taken back (or never marked), and must not come back."""
        rows = self.execute(
            "UPDATE pending SET ref = ?, analysis = ? WHERE attachment_id = ? RETURNING attachment_id",
            (json.dumps(ref.to_dict()), json.dumps(analysis.to_dict()), ref.attachment_id),
        )
        return bool(rows)

    def backlog(self, attachment_ids: Iterable[int] | None = None) -> list[tuple[ImageRef, ImageAnalysis]]:
        """Analysed images waiting for the store (all, or these), oldest first. A row that cannot be
        read back (a hand-edited or truncated file) is logged and dropped rather than blocking the rest."""
        query = "SELECT attachment_id, ref, analysis FROM pending WHERE analysis IS NOT NULL"
        params: list[int] = []
        if attachment_ids is not None:
            params = [int(i) for i in attachment_ids]
            if not params:
                return []
            query += f" AND attachment_id IN ({', '.join('?' * len(params))})"
        items: list[tuple[ImageRef, ImageAnalysis]] = []
        for attachment_id, ref, analysis in self.execute(query + _ORDER, params):
            try:
                items.append((ImageRef.from_dict(json.loads(ref)), ImageAnalysis.from_dict(json.loads(analysis))))
            except (ValueError, KeyError, TypeError) as exc:
                log.error("dropping unreadable backlog entry %s: %r", attachment_id, exc)
                self.mark_done(attachment_id)
        return items

    def backlog_refs(self) -> list[ImageRef]:
        """The refs of the backlog, oldest first (cheap: no analyses)."""
        rows = self.execute("SELECT ref FROM pending WHERE analysis IS NOT NULL" + _ORDER)
        return [ImageRef.from_dict(json.loads(ref)) for (ref,) in rows]

    # ----- deletes the store could not take yet -----

    def queue_delete(self, kind: str, args: Mapping[str, Any]) -> int:
        [(row_id,)] = self.execute("INSERT INTO deletes (kind, args, queued) VALUES (?, ?, ?) RETURNING id",
                                   (kind, json.dumps(dict(args)), time.time()))
        return int(row_id)

    def queued_deletes(self) -> list[QueuedDelete]:
        """Oldest first."""
        rows = self.execute("SELECT id, kind, args, queued FROM deletes ORDER BY id")
        return [QueuedDelete(int(row_id), kind, json.loads(args), queued) for row_id, kind, args, queued in rows]

    def delete_done(self, *delete_ids: int) -> None:
        self.executemany("DELETE FROM deletes WHERE id = ?", [(int(i),) for i in delete_ids])


def ledger_path(settings: Settings) -> Path:
    chroma = settings.resolve_path(settings.memory.path)
    return chroma.parent / f"{chroma.name}{LEDGER_SUFFIX}"
