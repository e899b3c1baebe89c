"""The account-wide request-rate limiter: every request of a client passes through it.

A generic cell-rate algorithm: each request reserves the next free slot on a virtual
timeline, then sleeps until that slot. No background task, no queue, O(1) per request, and
time comes from the client's clock so tests move time instead of waiting. Ten thousand
watchers polling at once simply take consecutive slots.
"""

from __future__ import annotations

from typing import Protocol

from ._clock import Clock

__all__ = ["RateLimiter", "RequestRate"]


class RequestRate(Protocol):
    """What paces a client's requests: `RateLimiter` in one process, or the account's rate
    shared by every process on a database (`kling_async.postgres`)."""

    async def acquire(self, within: float | None = None) -> bool:
        """Wait for this request's slot, True once it starts; with `within`, take none that
        does not start within that many seconds: wait them and answer False."""
        ...


class RateLimiter:
    """At most `rate` requests a second on average, with bursts of up to `burst`
    (by default a tenth of a second's worth).

    >>> limiter = RateLimiter(10.0, clock=SystemClock())  # doctest: +SKIP
    >>> await limiter.acquire()                             # doctest: +SKIP
    """

    def __init__(self, rate: float, *, clock: Clock, burst: int | None = None) -> None:
        if rate <= 0:
            raise ValueError(f"requests_per_second must be positive, not {rate!r}")
        self.rate = rate
        self._interval = 1.0 / rate
        # Default burst: a tenth of a second's worth, so thousands of due watchers go out as a
        # steady stream rather than in waves that stall the event loop.
        allowed = burst if burst is not None else int(rate / 10)
        self._tolerance = (max(1, allowed) - 1) * self._interval
        self._clock = clock
        self._theoretical_arrival = float("-inf")

    def reserve(self) -> float:
        """Take the next slot; return how many seconds from now it starts."""
        now = self._clock.monotonic()
        start = self._next_start(now)
        self._theoretical_arrival = max(self._theoretical_arrival, now) + self._interval
        return start - now

    def _next_start(self, now: float) -> float:
        return max(now, self._theoretical_arrival - self._tolerance)

    async def acquire(self, within: float | None = None) -> bool:
        """Wait for this request's slot; True once it starts.

        With `within`, a slot that does not start before that many seconds from now is not
        taken: the wait is `within` seconds and the answer False (a watcher whose deadline
        comes first, which would have no time left to use the slot). A cancelled waiter
        gives its slot back if no later request took one meanwhile (else the slot stays
        unused: a short, bounded loss).
        """
        now = self._clock.monotonic()
        if within is not None and self._next_start(now) - now >= within:
            await self._clock.sleep(within)
            return False
        wait = self.reserve()
        if wait <= 0:
            return True
        reserved = self._theoretical_arrival
        try:
            await self._clock.sleep(wait)
        except BaseException:
            if self._theoretical_arrival == reserved:
                self._theoretical_arrival -= self._interval
            raise
        return True
