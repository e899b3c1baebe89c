"""Test doubles shared by more than one test module."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any

import attrs
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult

from kling_async import KlingClient, PollPolicy
from kling_async._clock import Clock
from kling_async._ratelimit import RateLimiter
from kling_async.testing import FakeKlingServer

#: The line that marks the Markdown snippet after it as partial on purpose (not checked).
PARTIAL = "<!-- snippet: partial -->"

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
    """A tiny aiohttp.web app of routes (any method) on a free port; yields its base URL."""
    app = web.Application()
    for path, handler in routes.items():
        app.router.add_route("*", path, handler)
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


@attrs.define
class ServerProcess:
    """`kling-async fake-server` running in its own process, as a user starts it."""

    url: str
    banner: list[str]
    log: list[str] = attrs.Factory(list)  # the request lines and the closing summary
    stderr: str = ""
    returncode: int | None = None


@contextlib.contextmanager
def fake_server_process(*args: str) -> Iterator[ServerProcess]:
    """Start the fake server with `args` (a free port), and stop it with Ctrl-C (SIGINT).

    Its output is read all along (a full pipe would stall its request log); after the block
    `log` holds every line after the banner and `stderr` what it printed there.
    """
    command = [sys.executable, "-m", "kling_async", "fake-server", "--port", "0", *args]
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as process:
        assert process.stdout is not None and process.stderr is not None
        banner = [process.stdout.readline()]
        match = re.search(r"on (http://127\.0\.0\.1:\d+)", banner[0])
        assert match, banner[0] + process.stderr.read()
        while not banner[-1].startswith("  kling-async "):
            banner.append(process.stdout.readline())
        server = ServerProcess(match.group(1), banner)
        reader = threading.Thread(target=lambda: server.log.extend(process.stdout or ()))
        reader.start()
        try:
            yield server
        finally:
            process.send_signal(signal.SIGINT)
            server.returncode = process.wait(timeout=30)
            reader.join(timeout=30)
            server.stderr = process.stderr.read()


def read_terminal(controller: int) -> str:
    """All a pseudo-terminal was sent, read until its terminal side is closed (one read may
    return only the first of several writes); closes `controller`."""
    chunks = []
    while True:
        try:
            chunk = os.read(controller, 65536)
        except OSError:  # EIO: the terminal side is closed and everything has been read
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(controller)
    return b"".join(chunks).decode()


def snippets(text: str) -> list[tuple[int, str]]:
    """A Markdown text's Python blocks not marked partial, each with its first line's number."""
    found = []
    for match in re.finditer(r"^```python\n(.*?)^```$", text, flags=re.M | re.S):
        before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        if before.strip() != PARTIAL:
            found.append((text.count("\n", 0, match.start()) + 2, match.group(1)))
    return found
