"""Recent analyses by attachment id, so chat history can show images without re-analysing them."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable

from bot.analysis import ImageAnalysis


class AnalysisCache:
    """A bounded LRU map: attachment id (or embed image URL) → ImageAnalysis."""

    def __init__(self, max_entries: int = 5000) -> None:
        self.max_entries = max_entries
        self._items: OrderedDict[Hashable, ImageAnalysis] = OrderedDict()

    def get(self, key: Hashable) -> ImageAnalysis | None:
        analysis = self._items.get(key)
        if analysis is not None:
            self._items.move_to_end(key)
        return analysis

    def put(self, key: Hashable, analysis: ImageAnalysis) -> None:
        self._items[key] = analysis
        self._items.move_to_end(key)
        while len(self._items) > self.max_entries:
            self._items.popitem(last=False)

    def discard(self, key: Hashable) -> None:
        self._items.pop(key, None)

    def __len__(self) -> int:
        return len(self._items)
