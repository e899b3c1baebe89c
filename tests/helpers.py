"""Test doubles shared by more than one test module."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult

from kling_async import KlingClient, PollPolicy
from kling_async._clock import Clock
from kling_async._ratelimit import RateLimiter
from kling_async.testing import FakeKlingServer

#: Polls for the fake server's default speed (tasks end in about a tenth of a second).
QUICK = PollPolicy(initial_delay=0.01, min_interval=0.01, max_interval=0.05, timeout=20)


def client_of(server: FakeKlingServer, key: str = "test-api-key", **kwargs: Any) -> KlingClient:
    """A client of `server` in its dialect, polling at `QUICK`."""
    return KlingClient(
        api_key=key, base_url=server.url, dialect=server.dialect, poll=QUICK, **kwargs
    )


class CountingLimiter(RateLimiter):
    """A rate limiter that counts the slots asked of it."""

    def __init__(self, rate: float, *, clock: Clock, burst: int | None = None) -> None:
        super().__init__(rate, clock=clock, burst=burst)
        self.asked = 0

    async def acquire(self, within: float | None = None) -> bool:
        self.asked += 1
        return await super().acquire(within)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@asynccontextmanager
async def serve(routes: dict[str, Handler]) -> AsyncIterator[str]:
    """A tiny aiohttp.web app of GET routes on a free port; yields its base URL."""
    app = web.Application()
    for path, handler in routes.items():
        app.router.add_get(path, handler)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        host, port = runner.addresses[0][:2]
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


class FakeResolver(AbstractResolver):
    """Resolves names from a table (no DNS); records the names asked for."""

    def __init__(self, table: dict[str, list[str]]) -> None:
        self.table = table
        self.asked: list[str] = []

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        self.asked.append(host)
        return [
            {
                "hostname": host,
                "host": address,
                "port": port,
                "family": socket.AF_INET6 if ":" in address else socket.AF_INET,
                "proto": 0,
                "flags": socket.AI_NUMERICHOST,
            }
            for address in self.table[host]
        ]

    async def close(self) -> None:
        """Nothing to release."""
