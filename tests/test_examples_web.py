"""The web examples run as written: a request extends a video and Kling's callback wakes it.

Each example is served on a real port (the fake server must reach its callback route), its
client configured from the fake server's ``KLING_*`` variables, as a deployment would be.
"""

from __future__ import annotations

import importlib.util
import logging
import socket
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import aiohttp
import anyio
import pytest
import uvicorn
from aiohttp import web

from kling_async import CallbackReceiver
from kling_async.testing import FakeKlingServer

pytestmark = pytest.mark.anyio

EXAMPLES = Path(__file__).parent.parent / "examples"
SECRET = "whsec_c2l4dGVlbiBieXRlIGtleQ=="


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def listening() -> Iterator[socket.socket]:
    """A socket bound to a free local port, so the app's public URL is known before it starts."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()
    return f"http://{host}:{port}"


@pytest.fixture
def load_example(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Imports an example afresh with the given environment; its log filters go at teardown."""
    loggers = [logging.getLogger(name) for name in ("uvicorn.access", "aiohttp.access")]
    filters = [list(logger.filters) for logger in loggers]

    def load(name: str, environ: dict[str, str]) -> ModuleType:
        for variable, value in environ.items():
            monkeypatch.setenv(variable, value)
        spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    yield load
    for logger, kept in zip(loggers, filters, strict=True):
        logger.filters[:] = kept


@pytest.fixture
async def kling() -> AsyncIterator[FakeKlingServer]:
    async with FakeKlingServer(dialect="gateway", webhook_secret=SECRET) as server:
        yield server


async def extend(app_url: str, video_id: str) -> dict[str, str]:
    """What the app answers to ``POST /extend/VIDEO_ID?task_id=...`` (a gateway's parent)."""
    async with aiohttp.ClientSession() as http:
        url = f"{app_url}/extend/{video_id}"
        async with http.post(url, params={"task_id": f"parent-of-{video_id}"}) as response:
            assert response.status == 200, await response.text()
            answer: dict[str, str] = await response.json()
            return answer


def assert_woken_by_callback(
    kling: FakeKlingServer, receiver: CallbackReceiver, answer: dict[str, str]
) -> None:
    """The task succeeded, its callbacks were taken, and one read confirmed it."""
    task_id = answer["task_id"]
    assert kling.task_status(task_id) == "succeed"
    assert answer["url"].startswith(f"{kling.url}/files/")
    assert receiver.stats["accepted"] >= 1
    assert sum(receiver.stats.values()) == receiver.stats["accepted"]
    assert kling.record.polls(task_id) == 1


def callback_lines(caplog: pytest.LogCaptureFixture, logger: str) -> list[str]:
    """The access-log lines of the callback route."""
    lines = [record.getMessage() for record in caplog.records if record.name == logger]
    return [line for line in lines if "/kling-callbacks/" in line]


@asynccontextmanager
async def served_by_uvicorn(app: Any, sock: socket.socket) -> AsyncIterator[None]:
    """Run an ASGI app with uvicorn on `sock`, its lifespan included, until the block ends.

    The socket already listens, so a request made at once waits in its backlog until the
    app's startup is done.
    """
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, lifespan="on"))
    async with anyio.create_task_group() as group:
        group.start_soon(server.serve, [sock])
        try:
            yield
        finally:
            server.should_exit = True


async def test_the_fastapi_example_extends_a_video_woken_by_its_callback(
    kling: FakeKlingServer,
    listening: socket.socket,
    load_example: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """POST /extend answers with the new video; the callback route took the task's callbacks."""
    caplog.set_level(logging.INFO, logger="uvicorn.access")
    public_url = url_of(listening)
    environ = {**kling.environment, "PUBLIC_URL": public_url, "KLING_WEBHOOK_SECRET": SECRET}
    example = load_example("fastapi_callbacks", environ)
    with anyio.fail_after(30):
        async with served_by_uvicorn(example.app, listening):
            answer = await extend(public_url, "video-1")
    assert_woken_by_callback(kling, example.receiver, answer)
    logged = callback_lines(caplog, "uvicorn.access")
    token = example.receiver.path.rsplit("/", 1)[-1]
    assert logged and all("/kling-callbacks/<token>" in line for line in logged)
    assert not any(token in record.getMessage() for record in caplog.records)


async def test_the_aiohttp_example_extends_a_video_woken_by_its_callback(
    kling: FakeKlingServer,
    listening: socket.socket,
    load_example: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The app's client lives in a cleanup context; its receiver's route wakes the watcher."""
    caplog.set_level(logging.INFO, logger="aiohttp.access")
    public_url = url_of(listening)
    example = load_example("aiohttp_app", kling.environment)
    app = example.make_app(public_url, SECRET)
    runner = web.AppRunner(app, access_log_class=example.AccessLog)
    await runner.setup()
    try:
        await web.SockSite(runner, listening).start()
        with anyio.fail_after(30):
            answer = await extend(public_url, "video-1")
        assert_woken_by_callback(kling, app[example.RECEIVER], answer)
    finally:
        await runner.cleanup()
    receiver = app[example.RECEIVER]
    logged = callback_lines(caplog, "aiohttp.access")
    token = receiver.path.rsplit("/", 1)[-1]
    assert logged and all("/kling-callbacks/<token>" in line for line in logged)
    assert not any(token in record.getMessage() for record in caplog.records)
