"""Where the overview keeps its own small files: next to the Chroma data, never inside it.

Beside (like the ingest ledger) so it works the same with the embedded and the HTTP Chroma backend,
and so deleting the Chroma folder does not silently keep a cursor that claims work was done.
"""

from __future__ import annotations

from pathlib import Path

from bot.config import Settings

OVERVIEW_SUFFIX = "-overview"


def overview_dir(settings: Settings) -> Path:
    """``data/chroma-overview/`` for ``memory.path = "data/chroma"``."""
    chroma = settings.resolve_path(settings.memory.path)
    return chroma.parent / f"{chroma.name}{OVERVIEW_SUFFIX}"


def cursor_db_path(settings: Settings) -> Path:
    return overview_dir(settings) / "backfill.sqlite3"


def topic_model_path(settings: Settings, guild_id: int) -> Path:
    return overview_dir(settings) / f"topics-g{int(guild_id)}.json"
