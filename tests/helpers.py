"""Test doubles shared by more than one test module."""

from __future__ import annotations

from kling_async._clock import Clock
from kling_async._ratelimit import RateLimiter


class CountingLimiter(RateLimiter):
    """A rate limiter that counts the slots asked of it."""

    def __init__(self, rate: float, *, clock: Clock, burst: int | None = None) -> None:
        super().__init__(rate, clock=clock, burst=burst)
        self.asked = 0

    async def acquire(self, within: float | None = None) -> bool:
        self.asked += 1
        return await super().acquire(within)
