"""The limits every way in shares (posted pictures, /index, /vibe): per-user and per-channel
sliding windows, so one user cannot hog the model worker, and the size limit checked before a byte
is downloaded. Each refusal is one :class:`~bot.errors.UserFacingError` with one wording."""

from __future__ import annotations

import time
from collections import defaultdict, deque
from collections.abc import Callable, Hashable

from bot.config import RateLimitSettings
from bot.errors import UserFacingError
from bot.imaging import ImageTooLarge


class TooManyPictures(UserFacingError):
    """The per-user or per-channel window is full."""

    code = "rate_limited"
    default_message = "That's a lot of pictures at once; try again in a moment."

    def __init__(self, retry_after_s: float) -> None:
        self.retry_after_s = retry_after_s
        super().__init__(f"That's a lot of pictures at once; try again in {max(1, round(retry_after_s))} seconds.",
                         detail=f"retry after {retry_after_s:.1f}s")


def too_large(size: int | None, max_bytes: int, filename: str | None = None) -> ImageTooLarge | None:
    """The refusal for an attachment Discord says is over ``images.max_bytes`` (None: fine or unknown)."""
    return ImageTooLarge(size, max_bytes, filename=filename) if size is not None and size > max_bytes else None


class SlidingWindow:
    """At most ``limit`` events per key within ``window_s`` seconds."""

    def __init__(self, limit: int, window_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self.window_s = window_s
        self.clock = clock
        self._events: dict[Hashable, deque[float]] = defaultdict(deque)

    def _trim(self, key: Hashable, now: float) -> deque[float]:
        events = self._events[key]
        while events and now - events[0] >= self.window_s:
            events.popleft()
        return events

    def available(self, key: Hashable) -> int:
        return max(0, self.limit - len(self._trim(key, self.clock())))

    def retry_after(self, key: Hashable) -> float:
        now = self.clock()
        events = self._trim(key, now)
        return 0.0 if len(events) < self.limit else self.window_s - (now - events[0])

    def take(self, key: Hashable, count: int = 1) -> None:
        now = self.clock()
        self._trim(key, now).extend([now] * count)
        if not self._events[key]:
            del self._events[key]


class ImageRateLimiter:
    """Grants as many of a message's images as both the user's and the channel's windows allow."""

    def __init__(self, settings: RateLimitSettings, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_user = SlidingWindow(settings.per_user, settings.window_s, clock)
        self.per_channel = SlidingWindow(settings.per_channel, settings.window_s, clock)

    def acquire(self, user_id: int, channel_id: int, wanted: int) -> int:
        granted = min(wanted, self.per_user.available(user_id), self.per_channel.available(channel_id))
        if granted:
            self.per_user.take(user_id, granted)
            self.per_channel.take(channel_id, granted)
        return granted

    def retry_after(self, user_id: int, channel_id: int) -> float:
        return max(self.per_user.retry_after(user_id), self.per_channel.retry_after(channel_id))

    def refusal(self, user_id: int, channel_id: int) -> TooManyPictures:
        """What to tell someone whose pictures were not granted."""
        return TooManyPictures(self.retry_after(user_id, channel_id))
