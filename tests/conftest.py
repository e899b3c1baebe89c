"""Shared fixtures: every async test runs on asyncio (aiohttp's loop) through anyio's plugin.

A session-wide guard also reads every log line the library writes during the whole suite and
fails the run if one of them carries a credential: a JWT, a bearer token, or a key the tests
use.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
import uuid
from collections.abc import Iterator

import pytest
from hypothesis import settings

# Hypothesis' deadline per example is a timed assertion: on a loaded machine (or under a
# mutation run's instrumentation) it fails tests whose code is right. Correctness only here.
settings.register_profile("kling_async", deadline=None)
settings.load_profile("kling_async")

# Shapes of credentials, and the literal test keys the suite hands to clients.
_SECRET_SHAPES = re.compile(
    r"eyJ[\w-]+\.eyJ[\w-]+"  # a JWT
    r"|Bearer\s+(?!<hidden>)\S+"  # a bearer token that was not scrubbed
    r"|test-api-key|sk-[\w-]{6,}|whsec_\w+"
)

# A suite started in the background of a non-interactive shell inherits SIGINT ignored, and so
# would every command it starts: the tests that press Ctrl-C on the CLI need it delivered.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


#: The structured fields of the package's records (``extra=``), scanned with the message.
_FIELDS = ("task_id", "request_key", "request_id")


class _Collector(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.leaks: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        fields = (getattr(record, f"kling_{name}", None) for name in _FIELDS)
        message = " ".join([record.getMessage(), *(str(f) for f in fields if f is not None)])
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


# --- PostgreSQL ---------------------------------------------------------------------------
# Coordination tests run against a real server on 127.0.0.1:5432 (trust auth). Each test gets
# a schema of its own in the `test` database, dropped afterwards. Without a server they skip,
# saying why; under CI (CI=true) they fail instead, so a missing server cannot pass unseen.

_PG_HOST = os.environ.get("KLING_TEST_PGHOST", "127.0.0.1:5432")
_PG_CANDIDATES = [f"postgresql://{user}@{_PG_HOST}/test" for user in ("postgres", "root")]


def _reachable_server() -> tuple[str | None, str]:
    """The first admin URL that connects, or None and why none did."""
    try:
        import asyncpg
    except ImportError:
        return None, "asyncpg is not installed (pip install -e '.[dev]')"
    reasons = []
    for url in _PG_CANDIDATES:

        async def probe(url: str = url) -> None:
            connection = await asyncpg.connect(url, timeout=5)
            await connection.close()

        try:
            asyncio.run(probe())
        except Exception as exc:
            reasons.append(f"{url}: {exc or type(exc).__name__}")
            continue
        return url, ""
    return None, "; ".join(reasons)


@pytest.fixture(scope="session")
def postgres_admin_url() -> str:
    """The URL of a reachable PostgreSQL server, or a skip (a failure under CI)."""
    url, reason = _reachable_server()
    if url is None:
        message = f"no PostgreSQL server reachable on {_PG_HOST}: {reason}"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return url


def _admin(url: str, statement: str) -> None:
    import asyncpg

    async def run() -> None:
        connection = await asyncpg.connect(url, timeout=10)
        try:
            await connection.execute(statement)
        finally:
            await connection.close()

    asyncio.run(run())


def _schema_url(admin_url: str) -> Iterator[str]:
    """A database URL whose tables live in a schema of its own, dropped afterwards."""
    schema = f"kt_{uuid.uuid4().hex[:16]}"
    _admin(admin_url, f"CREATE SCHEMA {schema}")
    try:
        yield f"{admin_url}?search_path={schema}"
    finally:
        _admin(admin_url, f"DROP SCHEMA {schema} CASCADE")


@pytest.fixture
def database_url(postgres_admin_url: str) -> Iterator[str]:
    """A database URL whose tables live in a schema of this test's own."""
    yield from _schema_url(postgres_admin_url)


@pytest.fixture
def other_database_url(postgres_admin_url: str) -> Iterator[str]:
    """Another schema of the same database: an independent installation beside the first."""
    yield from _schema_url(postgres_admin_url)
