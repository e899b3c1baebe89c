"""Shared fixtures: every async test runs on asyncio (aiohttp's loop) through anyio's plugin.

A session-wide guard also reads every log line the library writes during the whole suite and
fails the run if one of them carries a credential: a JWT, a bearer token, or a key the tests
use.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator

import pytest

# Shapes of credentials, and the literal test keys the suite hands to clients.
_SECRET_SHAPES = re.compile(
    r"eyJ[\w-]+\.eyJ[\w-]+"  # a JWT
    r"|Bearer\s+(?!<hidden>)\S+"  # a bearer token that was not scrubbed
    r"|test-api-key|sk-[\w-]{6,}|whsec_\w+"
)


class _Collector(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.leaks: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if _SECRET_SHAPES.search(message):
            self.leaks.append(f"{record.name}: {message}")


@pytest.fixture(scope="session", autouse=True)
def _no_secret_in_any_log_line() -> Iterator[None]:
    collector = _Collector()
    library = logging.getLogger("kling_async")
    previous = library.level
    library.setLevel(logging.DEBUG)
    library.addHandler(collector)
    yield
    library.removeHandler(collector)
    library.setLevel(previous)
    assert not collector.leaks, f"credentials in log lines: {collector.leaks[:3]}"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
