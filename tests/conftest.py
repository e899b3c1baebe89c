"""Shared fixtures: every async test runs on asyncio (aiohttp's loop) through anyio's plugin."""

from __future__ import annotations

import pytest


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
