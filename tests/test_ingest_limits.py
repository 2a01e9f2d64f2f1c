from bot.config import RateLimitSettings
from bot.ingest.limits import ImageRateLimiter, SlidingWindow


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_sliding_window_frees_slots_as_time_passes():
    clock = Clock()
    window = SlidingWindow(2, 10.0, clock)
    window.take("u")
    clock.now += 5
    window.take("u")
    assert window.available("u") == 0
    assert window.retry_after("u") == 5.0
    clock.now += 5
    assert window.available("u") == 1


def test_user_limit_grants_part_of_a_message_and_channel_limit_applies_to_everyone():
    clock = Clock()
    limiter = ImageRateLimiter(RateLimitSettings(per_user=3, per_channel=5, window_s=60), clock)
    assert limiter.acquire(user_id=1, channel_id=9, wanted=4) == 3  # alice gets 3 of her 4
    assert limiter.acquire(user_id=1, channel_id=9, wanted=1) == 0
    assert limiter.acquire(user_id=2, channel_id=9, wanted=5) == 2  # the channel has 2 left
    assert limiter.acquire(user_id=3, channel_id=8, wanted=1) == 1  # other channels are unaffected
    assert 0 < limiter.retry_after(1, 9) <= 60
    clock.now += 60
    assert limiter.acquire(user_id=1, channel_id=9, wanted=3) == 3
