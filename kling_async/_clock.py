"""Monotonic time, wall time and sleeping behind one seam that tests can replace.

The client reads time only through a `Clock`. Tests pass a `FakeClock`, whose `sleep`
returns at once and moves time forward, so a ``Retry-After: 2`` is waited out without
waiting and a token's expiry arrives without a half-hour pause.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol

import anyio
import anyio.lowlevel

__all__ = ["Clock", "FakeClock", "SystemClock"]


class Clock(Protocol):
    """What the client needs to know of time."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back (for intervals and deadlines)."""
        ...

    def time(self) -> float:
        """Unix time in seconds (for token claims)."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait `seconds`; cancellable."""
        ...


class SystemClock:
    """The real clocks, and the event loop's sleep."""

    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()

    # asyncio's own sleep, itself rather than wrapped in a coroutine of ours: the client runs
    # on asyncio (aiohttp), and every frame of a sleeping watcher's stack is memory times the
    # many thousands of them (anyio.sleep would add two frames and a backend lookup).
    sleep = staticmethod(asyncio.sleep)


class FakeClock:
    """A clock for tests: `sleep` yields once, then jumps time forward by the amount asked.

    Every sleep is recorded in `sleeps`, so a test asserts what the client *would* have
    waited. `advance` moves time without sleeping.
    """

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self._now = start
        self._origin = start
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self._now - self._origin

    def time(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        self._now += seconds

    async def sleep(self, seconds: float) -> None:
        await anyio.lowlevel.checkpoint()  # a cancelled sleep neither happens nor counts
        self.sleeps.append(seconds)
        self._now += max(seconds, 0.0)
