"""Pytest fixtures for the fake Kling server (registered as the ``kling_async`` plugin).

Both fixtures are async: use them from tests run by the anyio plugin (``@pytest.mark.anyio``).
The servers listen on 127.0.0.1, so a client that downloads their videos is made with
``KlingClient(..., base_url=server.url, allow_private_downloads=True)``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Generator
from contextlib import AsyncExitStack
from types import TracebackType
from typing import Any

import pytest

from ._server import FakeKlingServer


class StartedServer:
    """What ``kling_server_factory(**kwargs)`` returns: ``async with`` it, or ``await`` it.

    ``async with`` closes the server on exit; an awaited server is closed at teardown.
    """

    def __init__(self, stack: AsyncExitStack, kwargs: dict[str, Any]) -> None:
        """Hold the fixture's exit stack and the server's keyword arguments."""
        self._stack = stack
        self._server = FakeKlingServer(**kwargs)

    async def _start(self) -> FakeKlingServer:
        await self._server.start()
        # Closing twice is harmless, so teardown closes it even if ``async with`` already did.
        self._stack.push_async_callback(self._server.close)
        return self._server

    def __await__(self) -> Generator[Any, None, FakeKlingServer]:
        """Start the server and return it."""
        return self._start().__await__()

    async def __aenter__(self) -> FakeKlingServer:
        """Start the server and return it."""
        return await self._start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close the server."""
        await self._server.close()


class ServerFactory:
    """Makes fake servers for one test: ``factory(dialect="official", ...)``."""

    def __init__(self, stack: AsyncExitStack) -> None:
        """Close every server this factory started when ``stack`` closes."""
        self._stack = stack

    def __call__(self, **kwargs: Any) -> StartedServer:
        """A server built with ``kwargs`` (those of `FakeKlingServer`), not yet started."""
        return StartedServer(self._stack, kwargs)


@pytest.fixture
async def kling_server() -> AsyncIterator[FakeKlingServer]:
    """A started `FakeKlingServer` with default arguments (gateway dialect, fast clock)."""
    async with FakeKlingServer() as server:
        yield server


@pytest.fixture
async def kling_server_factory() -> AsyncIterator[ServerFactory]:
    """A factory of started fake servers, all closed at teardown."""
    async with AsyncExitStack() as stack:
        yield ServerFactory(stack)
