"""The account's request rate shared by every process of the database.

One timeline per account (`kling_account.rate_tat`, the generic cell-rate algorithm's
theoretical arrival time, in the database's clock): a process takes a few consecutive slots
of it in one statement and spends them locally, one per request, each no sooner than its
time. Slots are taken only when a request waits and none is left, so an idle process holds
none; one it could not use in time lapses, which only ever leaves the account below its
rate. The number taken at once is about a tenth of a second's worth (at least one), so a
busy process sends a statement per tenth of a second rather than one per request.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import anyio

from .._clock import Clock

__all__ = ["SharedRateLimiter"]

#: Seconds of the account's rate a process takes at once.
_LEASE = 0.1


class SharedRateLimiter:
    """At most `rate` requests a second for the whole account, in all processes together
    (with bursts of up to `burst`, by default a tenth of a second's worth, as `RateLimiter`).

    Made by `Coordination.request_rate`; every process of the account should give the same
    `rate` (each paces the shared timeline by its own).
    """

    def __init__(
        self, coordination: Any, rate: float, *, clock: Clock, burst: int | None = None
    ) -> None:
        if rate <= 0:
            raise ValueError(f"requests_per_second must be positive, not {rate!r}")
        self.rate = rate
        self._co = coordination
        self._clock = clock
        self._interval = 1.0 / rate
        allowed = burst if burst is not None else int(rate / 10)
        self._tolerance = (max(1, allowed) - 1) * self._interval
        self._batch = max(1, round(rate * _LEASE))
        self._slots: deque[float] = deque()  # local monotonic start of each slot held
        self._taking = anyio.Lock()

    async def acquire(self, within: float | None = None) -> bool:
        """Wait for this request's slot; True once it starts. With `within`, a slot that
        does not start within that many seconds is not taken: wait `within`, answer False."""
        start = await self._next_start()
        now = self._clock.monotonic()
        if within is not None and start - now >= within:
            await self._clock.sleep(within)
            return False
        self._slots.popleft()
        if start > now:
            try:
                await self._clock.sleep(start - now)
            except BaseException:
                self._slots.appendleft(start)  # cancelled: unused, another request takes it
                raise
        return True

    async def _next_start(self) -> float:
        """The start of the first slot held (taking more from the database if none is)."""
        while True:
            self._lapse()
            if self._slots:
                return self._slots[0]
            async with self._taking:
                if not self._slots:
                    await self._take()

    def _lapse(self) -> None:
        """Forget slots whose time (and the burst's allowance) went by unused: spent late,
        they would make a burst beyond the allowed one."""
        late = self._clock.monotonic() - self._interval - self._tolerance
        while self._slots and self._slots[0] < late:
            self._slots.popleft()

    async def _take(self) -> None:
        """Take the next slots of the account's timeline: one statement."""
        span = self._batch * self._interval
        row = await self._co.fetchrow(
            "WITH now AS (SELECT extract(epoch FROM clock_timestamp())::float8 AS t) "
            "UPDATE kling_account a SET rate_tat = greatest(a.rate_tat, now.t - $3) + $2 "
            "FROM now WHERE a.name = $1 RETURNING a.rate_tat - $2 AS first, now.t AS now",
            self._co.account,
            span,
            self._tolerance,
        )
        local = self._clock.monotonic()
        first = local + (row["first"] - row["now"])  # the database's clock, seen from here
        self._slots.extend(first + n * self._interval for n in range(self._batch))
