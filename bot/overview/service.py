"""The overview as the bot uses it: reads through an Audience, the topic model, the backfill.

Glue between the memory store (every read takes the requester's :class:`Audience`, the same privacy
boundary as /find), the saved topic model of each guild, and the backfill. Discord-free: the cog turns
permissions into an Audience and messages into :class:`~bot.ingest.backfill.ScannedMessage` values.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Protocol

import numpy as np

from bot.config import Settings
from bot.ingest.backfill import Backfill, IngestsImages
from bot.ingest.cursors import BackfillCursors
from bot.labels import LabelSet, LabelSetError, parse_label_file
from bot.memory.records import StoredImage
from bot.memory.service import Audience
from bot.memory.store import NO_FILTERS, AsyncImageStore, Filters
from bot.overview.gallery import DEFAULT_SORT, sort_images
from bot.overview.paths import cursor_db_path, topic_model_path
from bot.overview.stats import PERIODS, OverviewStats, compute_stats, period_start
from bot.overview.topics import (
    CLUSTER_PREFIX,
    TopicCluster,
    TopicModel,
    cluster_captions,
    load_topic_model,
    save_topic_model,
)

log = logging.getLogger(__name__)


class EmbedsTexts(Protocol):
    """The inference queue's text embedder (the one that embedded the captions)."""

    async def embed_texts(self, texts: list[str]) -> np.ndarray: ...


def topic_labels(settings: Settings) -> LabelSet | None:
    """The fixed topic set with its prompts (what caption topics were scored against), if readable."""
    try:
        return parse_label_file(settings.labels_dir / "topics.txt")
    except (OSError, LabelSetError):
        return None


class OverviewService:
    def __init__(self, store: AsyncImageStore, settings: Settings, *, backfill: Backfill | None = None,
                 encoder: EmbedsTexts | None = None) -> None:
        self.store = store
        self.settings = settings
        self.backfill = backfill
        self.encoder = encoder
        self._models: dict[int, tuple[float, TopicModel | None]] = {}
        self._refreshing: set[int] = set()

    @classmethod
    async def open(cls, settings: Settings, store: AsyncImageStore, *, ingestor: IngestsImages | None = None,
                   encoder: EmbedsTexts | None = None, progress_interval_s: float | None = None) -> OverviewService:
        backfill = None
        if ingestor is not None:
            cursors = await asyncio.to_thread(BackfillCursors, cursor_db_path(settings))
            backfill = Backfill(ingestor, store, cursors)
            if progress_interval_s is not None:
                backfill.progress_interval_s = progress_interval_s
        return cls(store, settings, backfill=backfill, encoder=encoder)

    async def close(self) -> None:
        if self.backfill is not None:
            await asyncio.to_thread(self.backfill.cursors.close)

    # ----- reads (always through an audience) -----

    async def images(self, audience: Audience, filters: Filters = NO_FILTERS, *,
                     since: datetime | None = None) -> list[StoredImage]:
        """What ``audience`` may see, matching ``filters``, oldest first.

        ``filters.topic`` may also name a discovered topic (``cluster:N``, from /topics refresh)."""
        cluster = None
        topic = filters.topic
        if topic and topic.startswith(CLUSTER_PREFIX):
            cluster = await self.cluster(audience, topic)
            if cluster is None:
                return []  # unknown, outdated, or not visible to this audience: nothing, not an error
            topic = None
        # ``until`` is not an overview filter; ``since`` comes from the period, the topic may be a cluster.
        wanted = replace(filters, topic=topic, since=since, until=None)
        images = await self.store.images(audience, wanted)
        if cluster is not None:
            members = set(cluster.members)
            images = [image for image in images if image.attachment_id in members]
        return images

    async def stats(self, audience: Audience, filters: Filters, *, period: str, now: datetime
                    ) -> OverviewStats:
        if period not in PERIODS:
            raise ValueError(f"unknown period {period!r}; one of {', '.join(PERIODS)}")
        since = period_start(period, now)
        images = await self.images(audience, filters, since=since)
        return await asyncio.to_thread(compute_stats, images, since=since, now=now, granularity=PERIODS[period][1])

    async def gallery(self, audience: Audience, filters: Filters, *, sort: str = DEFAULT_SORT
                      ) -> list[StoredImage]:
        return sort_images(await self.images(audience, filters), sort)

    # ----- discovered topics -----

    def _model_path(self, guild_id: int) -> Path:
        return topic_model_path(self.settings, guild_id)

    async def topic_model(self, guild_id: int | None) -> TopicModel | None:
        """The guild's saved topic model (re-read only when the file changed)."""
        if guild_id is None:
            return None
        path = self._model_path(guild_id)
        try:
            mtime = (await asyncio.to_thread(path.stat)).st_mtime
        except FileNotFoundError:
            return None
        cached = self._models.get(guild_id)
        if cached is None or cached[0] != mtime:
            cached = (mtime, await asyncio.to_thread(load_topic_model, path))
            self._models[guild_id] = cached
        return cached[1]

    async def clusters(self, audience: Audience) -> list[TopicCluster]:
        """Discovered topics this audience may see the names of."""
        model = await self.topic_model(audience.guild_id)
        return [] if model is None else model.visible(audience.visible_channel_ids, audience.allow_nsfw)

    async def cluster(self, audience: Audience, value: str) -> TopicCluster | None:
        model = await self.topic_model(audience.guild_id)
        cluster = None if model is None else model.cluster(value)
        if cluster is None or not cluster.visible_to(audience.visible_channel_ids, audience.allow_nsfw):
            return None
        return cluster

    def refreshing(self, guild_id: int) -> bool:
        return guild_id in self._refreshing

    async def refresh_topics(self, guild_id: int, *, k: int | None = None) -> TopicModel:
        """Re-cluster every caption of the guild and save the model (admins / the operator only: the
        output is gated per reader by :meth:`clusters`)."""
        if guild_id in self._refreshing:
            raise RuntimeError("a topic refresh is already running for this server")
        self._refreshing.add(guild_id)
        try:
            images, vectors = await self.store.caption_vectors(guild_id)
            names, label_vectors = await self._label_vectors()
            model = await asyncio.to_thread(cluster_captions, guild_id, images, vectors, label_names=names,
                                            label_vectors=label_vectors, k=k)
            await asyncio.to_thread(save_topic_model, model, self._model_path(guild_id))
            return model
        finally:
            self._refreshing.discard(guild_id)

    async def _label_vectors(self) -> tuple[Sequence[str], np.ndarray | None]:
        labels = topic_labels(self.settings)
        if labels is None or self.encoder is None:
            return (), None
        try:
            return labels.labels, np.asarray(await self.encoder.embed_texts(list(labels.prompts)))
        except Exception as exc:  # naming by caption words alone still works
            log.warning("cannot embed the topic labels for cluster names: %s", exc)
            return (), None
