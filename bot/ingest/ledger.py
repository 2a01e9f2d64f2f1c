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

Two tiers (the ingest backlog, bot/ingest/backlog.py): a posted picture is *accepted* into this file
before anything else happens (:meth:`IngestLedger.accept`, stage ``fast``), gets its fast first look
(stage ``caption`` once that record is stored) and its caption later; only then is the row deleted.
The same transaction that accepts a message's pictures also moves its channel's *mark* (the newest
message accepted there), so after a crash the bot can read each channel's history after its mark
and find a picture whose message arrived just before the kill, before any of this was written. The
backlog bounds the waiting pictures: past its bound the oldest are taken out (:meth:`mark_done`),
counted and logged, never silently.

A tiny stdlib ``sqlite3`` file in WAL mode, kept beside (not inside) the Chroma data so that it works
the same with the embedded and the HTTP backend. ``synchronous=NORMAL``: every commit survives a
process crash (the case this is for); a power cut may lose the last few marks, like Chroma's own log.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections.abc import Iterable, Mapping, Sequence
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
_STAGE = "ALTER TABLE pending ADD COLUMN stage TEXT NOT NULL DEFAULT 'fast'"  # see STAGES
_MARKS = """
CREATE TABLE IF NOT EXISTS channel_marks (
    channel_id INTEGER PRIMARY KEY,
    guild_id INTEGER,
    message_id INTEGER NOT NULL
)
"""
# Snowflake ids grow with time, so attachment id order is arrival order (first_marked breaks no ties
# that matter, but keeps rows from older files, marked in batches, in their marking order).
_ORDER = " ORDER BY first_marked, attachment_id"
#: ``fast``: waiting for its first look (or a full analysis); ``caption``: the fast-tier record exists
#: (stored, or in ``analysis`` waiting for the store), the caption tier is still to come.
STAGES = ("fast", "caption")


@dataclass(frozen=True)
class PendingImage:
    ref: ImageRef
    attempts: int  # how many times it was marked pending (1 = never retried)
    first_marked: float  # epoch seconds
    stage: str = "fast"  # one of STAGES


@dataclass(frozen=True)
class BacklogRow:
    """An analysis waiting for the store, with the exact text it was saved as (to finish it safely)."""

    ref: ImageRef
    analysis: ImageAnalysis
    saved_as: str


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
        if "stage" not in columns:
            self.execute(_STAGE)
        self.execute(_DELETES)
        self.execute(_MARKS)

    @classmethod
    def open(cls, settings: Settings) -> IngestLedger:
        """The ledger beside the configured Chroma folder: ``data/chroma`` → ``data/chroma-ledger.sqlite3``."""
        return cls(ledger_path(settings))

    def mark_pending(self, ref: ImageRef) -> None:
        self.mark_pending_many([ref])

    def mark_pending_many(self, refs: Iterable[ImageRef]) -> None:
        """Before an analysis right now (or a retry): marked, one more attempt counted, channel marks moved."""
        refs = list(refs)
        rows = [(ref.attachment_id, json.dumps(ref.to_dict()), time.time()) for ref in refs]

        def work(db: sqlite3.Connection) -> None:
            db.executemany(
                "INSERT INTO pending (attachment_id, ref, first_marked) VALUES (?, ?, ?) "
                "ON CONFLICT(attachment_id) DO UPDATE SET ref = excluded.ref, attempts = attempts + 1",
                rows,
            )
            _move_marks(db, refs)

        self.transaction(work)

    def accept(self, refs: Iterable[ImageRef]) -> list[int]:
        """Write posted pictures as waiting for their first look, and move their channels' marks, in
        one transaction. Returns the attachment ids that were new (a replayed message adds nothing)."""
        refs = list(refs)
        rows = [(ref.attachment_id, json.dumps(ref.to_dict()), time.time()) for ref in refs]

        def work(db: sqlite3.Connection) -> list[int]:
            new = [row[0] for row in rows if db.execute(
                "INSERT INTO pending (attachment_id, ref, first_marked) VALUES (?, ?, ?) "
                "ON CONFLICT(attachment_id) DO NOTHING RETURNING attachment_id", row).fetchall()]
            _move_marks(db, refs)
            return new

        return self.transaction(work)

    def channel_marks(self) -> dict[int, tuple[int | None, int]]:
        """channel id → (guild id, newest message id accepted there)."""
        return {channel: (guild, message) for channel, guild, message in
                self.execute("SELECT channel_id, guild_id, message_id FROM channel_marks")}

    def set_stage(self, attachment_id: int, stage: str) -> bool:
        """Move a waiting picture on (``caption``: its fast-tier record is stored). False if it is gone."""
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}")
        return bool(self.execute("UPDATE pending SET stage = ? WHERE attachment_id = ? RETURNING attachment_id",
                                 (stage, attachment_id)))

    def counts(self) -> dict[str, int]:
        """Waiting pictures per stage (``fast``, ``caption``) and analyses waiting for the store (``store``)."""
        out = dict.fromkeys((*STAGES, "store"), 0)
        for stage, count in self.execute("SELECT stage, count(*) FROM pending GROUP BY stage"):
            out[stage] = int(count)
        [(stored,)] = self.execute("SELECT count(*) FROM pending WHERE analysis IS NOT NULL")
        out["store"] = int(stored)
        return out

    def oldest_waiting(self) -> float | None:
        """Epoch seconds the oldest waiting picture was accepted (None: nothing waits)."""
        [(oldest,)] = self.execute("SELECT min(first_marked) FROM pending")
        return float(oldest) if oldest is not None else None

    def mark_done(self, *attachment_ids: int) -> None:
        """Finished (stored) or abandoned (message deleted, image refused): either way not to resume."""
        self.executemany("DELETE FROM pending WHERE attachment_id = ?", [(int(i),) for i in attachment_ids])

    def pending(self, *, max_attempts: int | None = None) -> list[PendingImage]:
        """What to analyse again, oldest first (not the backlog: that is analysed already);
        ``max_attempts`` leaves out images that keep failing."""
        query = "SELECT ref, attempts, first_marked, stage FROM pending WHERE (analysis IS NULL OR stage = 'caption')"
        params: tuple[int, ...] = ()
        if max_attempts is not None:
            query += " AND attempts <= ?"
            params = (max_attempts,)
        rows = self.execute(query + _ORDER, params)
        return [PendingImage(ImageRef.from_dict(json.loads(ref)), attempts, first, stage)
                for ref, attempts, first, stage in rows]

    # ----- the backlog: analysed, not yet stored -----

    def save_analysis(self, ref: ImageRef, analysis: ImageAnalysis) -> bool:
        """Keep an analysis until the store takes it. False (nothing saved) when the image is no longer
        pending: it was taken back (or never marked), and must not come back."""
        rows = self.execute(
            "UPDATE pending SET ref = ?, analysis = ? WHERE attachment_id = ? RETURNING attachment_id",
            (json.dumps(ref.to_dict()), json.dumps(analysis.to_dict()), ref.attachment_id),
        )
        return bool(rows)

    def backlog(self, attachment_ids: Iterable[int] | None = None) -> list[BacklogRow]:
        """Analysed images waiting for the store (all, or these), oldest first. A row that cannot be
        read back (a hand-edited or truncated file) is logged and dropped rather than blocking the rest."""
        query = "SELECT attachment_id, ref, analysis FROM pending WHERE analysis IS NOT NULL"
        params: list[int] = []
        if attachment_ids is not None:
            params = [int(i) for i in attachment_ids]
            if not params:
                return []
            query += f" AND attachment_id IN ({', '.join('?' * len(params))})"
        items: list[BacklogRow] = []
        for attachment_id, ref, analysis in self.execute(query + _ORDER, params):
            try:
                items.append(BacklogRow(ImageRef.from_dict(json.loads(ref)),
                                        ImageAnalysis.from_dict(json.loads(analysis)), analysis))
            except (ValueError, KeyError, TypeError) as exc:
                log.error("dropping unreadable backlog entry %s: %r", attachment_id, exc)
                self.mark_done(attachment_id)
        return items

    def written(self, row: BacklogRow) -> bool:
        """The store took ``row``: a complete record's row is done; a fast-tier record's row goes back to
        waiting for its caption. Only if the row still holds exactly what was written: False when a
        newer analysis (the caption tier) was saved meanwhile, which then still waits for the store."""
        if row.analysis.caption_pending:
            sql = ("UPDATE pending SET analysis = NULL, stage = 'caption' WHERE attachment_id = ? AND analysis = ? "
                   "RETURNING attachment_id")
        else:
            sql = "DELETE FROM pending WHERE attachment_id = ? AND analysis = ? RETURNING attachment_id"
        return bool(self.execute(sql, (row.ref.attachment_id, row.saved_as)))

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


def _move_marks(db: sqlite3.Connection, refs: Sequence[ImageRef]) -> None:
    """Each channel's mark: the newest message whose pictures were written down here."""
    marks: dict[int, tuple[int | None, int]] = {}
    for ref in refs:
        guild_id, newest = marks.get(ref.channel_id, (ref.guild_id, 0))
        marks[ref.channel_id] = (guild_id, max(newest, ref.message_id))
    db.executemany(
        "INSERT INTO channel_marks (channel_id, guild_id, message_id) VALUES (?, ?, ?) "
        "ON CONFLICT(channel_id) DO UPDATE SET message_id = max(message_id, excluded.message_id)",
        [(channel, guild, newest) for channel, (guild, newest) in marks.items()])


def ledger_path(settings: Settings) -> Path:
    chroma = settings.resolve_path(settings.memory.path)
    return chroma.parent / f"{chroma.name}{LEDGER_SUFFIX}"
