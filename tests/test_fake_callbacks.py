"""Callback deliveries of the fake Kling server, received by a tiny aiohttp.web app."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import socket
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import anyio
import pytest
from aiohttp import web

from kling_async.testing import CallbackFaults, Durations, FakeKlingServer, sign_webhook

pytestmark = pytest.mark.anyio

KEY = "test-api-key"
WHSEC = "whsec_" + base64.b64encode(b"a 24-byte webhook secret").decode()
# Three changes within 10 ms, so deliveries delayed by a wide range collide and reorder.
QUICK = Durations(submitted_for=5.0, median=10.0, sigma=0.0)


@dataclass
class Arrival:
    """One POST the receiver got."""

    headers: dict[str, str]
    raw: bytes

    @property
    def body(self) -> Any:
        return json.loads(self.raw)

    @property
    def task(self) -> dict[str, Any]:
        """The task object, whatever the dialect wraps it in."""
        body = self.body
        task: dict[str, Any] = body["data"] if "code" in body else body
        return task

    @property
    def status(self) -> str:
        return str(self.task["task_status"])


@dataclass
class Receiver:
    """Records every POST to /hook and answers ``answer``."""

    url: str = ""
    answer: int = 200
    arrivals: list[Arrival] = field(default_factory=list)
    _changed: anyio.Event = field(default_factory=anyio.Event)

    async def handle(self, request: web.Request) -> web.Response:
        self.arrivals.append(Arrival(dict(request.headers), await request.read()))
        self._changed.set()
        return web.Response(status=self.answer)

    async def until(self, done: Callable[[], bool], timeout: float = 1.0) -> None:
        """Wait (at most ``timeout``) until ``done()`` holds after some arrival."""
        with anyio.fail_after(timeout):
            while not done():
                self._changed = anyio.Event()
                await self._changed.wait()

    def statuses(self, task_id: str) -> list[str]:
        return [a.status for a in self.arrivals if a.task["task_id"] == task_id]


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    hooks = Receiver()
    app = web.Application()
    app.router.add_post("/hook", hooks.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    host, port = runner.addresses[0][:2]
    hooks.url = f"http://{host}:{port}/hook"
    yield hooks
    await runner.cleanup()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {KEY}"}) as session:
        yield session


def extend_url(server: FakeKlingServer) -> str:
    gateway = server.dialect == "gateway"
    return server.url + ("/kling" if gateway else "") + "/v1/videos/video-extend"


async def create(http: aiohttp.ClientSession, server: FakeKlingServer, callback_url: str) -> str:
    body = {"video_id": "v", "task_id": "p", "callback_url": callback_url}
    async with http.post(extend_url(server), json=body) as response:
        answer = await response.json()
    assert answer["code"] == 0, answer
    task_id: str = answer["data"]["task_id"]
    return task_id


async def get(http: aiohttp.ClientSession, server: FakeKlingServer, task_id: str) -> Any:
    async with http.get(f"{extend_url(server)}/{task_id}") as response:
        return await response.json()


def server_for(dialect: str, **kwargs: Any) -> FakeKlingServer:
    if dialect == "official":
        return FakeKlingServer(dialect="official", api_key=KEY, **kwargs)
    return FakeKlingServer(**kwargs)


def expected_signature(secret: str, headers: dict[str, str], raw: bytes) -> str:
    """The Standard Webhooks signature, computed here without the fake's helper."""
    key = (
        base64.b64decode(secret.removeprefix("whsec_"))
        if secret.startswith("whsec_")
        else secret.encode()
    )
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + raw
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


@pytest.mark.parametrize("dialect", ["official", "gateway"])
async def test_each_change_delivered_once_in_order(
    dialect: str, receiver: Receiver, http: aiohttp.ClientSession
) -> None:
    """Each status change arrives once, in order, bare (official) or enveloped (gateway)."""
    async with server_for(dialect) as server:
        task_id = await create(http, server, receiver.url)
        await receiver.until(lambda: len(receiver.arrivals) == 3)
        await anyio.sleep(0.05)
    assert receiver.statuses(task_id) == ["submitted", "processing", "succeed"]
    for arrival in receiver.arrivals:
        assert arrival.headers["Content-Type"] == "application/json"
        if dialect == "official":
            assert arrival.body["task_id"] == task_id
        else:
            assert arrival.body["code"] == 0
            assert arrival.body["message"] == "SUCCEED"
            assert arrival.body["request_id"]
            assert arrival.body["data"]["task_id"] == task_id
    assert "webhook-id" not in receiver.arrivals[0].headers


@pytest.mark.parametrize("dialect", ["official", "gateway"])
async def test_terminal_body_equals_get(
    dialect: str, receiver: Receiver, http: aiohttp.ClientSession
) -> None:
    """The terminal callback carries exactly the task object a GET answers."""
    async with server_for(dialect) as server:
        task_id = await create(http, server, receiver.url)
        await receiver.until(lambda: "succeed" in receiver.statuses(task_id))
        answer = await get(http, server, task_id)
    assert receiver.arrivals[-1].task == answer["data"]
    assert answer["data"]["task_result"]["videos"]


@pytest.mark.parametrize("secret", [WHSEC, "a plain secret"], ids=["whsec", "plain"])
async def test_signatures_verify(
    secret: str, receiver: Receiver, http: aiohttp.ClientSession
) -> None:
    """Each delivery is signed in the Standard Webhooks scheme, with an id of its own."""
    async with FakeKlingServer(webhook_secret=secret) as server:
        await create(http, server, receiver.url)
        await receiver.until(lambda: len(receiver.arrivals) == 3)
    for arrival in receiver.arrivals:
        headers = arrival.headers
        assert headers["webhook-signature"] == expected_signature(secret, headers, arrival.raw)
        stamp = int(headers["webhook-timestamp"])
        assert abs(stamp - time.time()) < 5
        assert headers["webhook-signature"] == sign_webhook(
            secret, headers["webhook-id"], stamp, arrival.raw
        )
    ids = [a.headers["webhook-id"] for a in receiver.arrivals]
    assert len(set(ids)) == 3
    assert all(i.startswith("msg_") for i in ids)


def test_bad_whsec_secret_is_refused_at_construction() -> None:
    """A whsec_ secret that is not base64 fails when the server is built."""
    with pytest.raises(ValueError, match="base64"):
        FakeKlingServer(webhook_secret="whsec_not*base64")


async def test_lost_deliveries_are_recorded_not_sent(
    receiver: Receiver, http: aiohttp.ClientSession
) -> None:
    """With lost_rate=1 nothing arrives, and the record marks each delivery lost."""
    faults = CallbackFaults(lost_rate=1.0)
    async with FakeKlingServer(durations=QUICK, callback_faults=faults) as server:
        task_id = await create(http, server, receiver.url)
        await anyio.sleep(0.2)  # the task ends after 10 ms
    assert receiver.arrivals == []
    records = server.record.callbacks
    assert [r.status for r in records] == ["submitted", "processing", "succeed"]
    assert all(r.lost and r.attempt == 0 and r.response_status is None for r in records)
    assert {r.task_id for r in records} == {task_id}


async def test_duplicates_share_their_webhook_id(
    receiver: Receiver, http: aiohttp.ClientSession
) -> None:
    """With duplicate_rate=1 each delivery arrives twice with the same webhook-id."""
    faults = CallbackFaults(duplicate_rate=1.0)
    async with FakeKlingServer(webhook_secret=WHSEC, callback_faults=faults) as server:
        await create(http, server, receiver.url)
        await receiver.until(lambda: len(receiver.arrivals) == 6)
        await anyio.sleep(0.05)
    by_id = Counter(a.headers["webhook-id"] for a in receiver.arrivals)
    assert sorted(by_id.values()) == [2, 2, 2]
    assert Counter(a.status for a in receiver.arrivals) == {
        "submitted": 2,
        "processing": 2,
        "succeed": 2,
    }
    assert [r.duplicate for r in server.record.callbacks].count(True) == 3


async def test_wide_delays_reorder_deliveries(
    receiver: Receiver, http: aiohttp.ClientSession
) -> None:
    """Random delays wider than the gaps between changes make some task's arrive out of order."""
    faults = CallbackFaults(delay=(0.0, 0.3))
    async with FakeKlingServer(durations=QUICK, seed=1, callback_faults=faults) as server:
        ids = [await create(http, server, receiver.url) for _ in range(8)]
        await receiver.until(lambda: len(receiver.arrivals) == 24)
    in_order = ["submitted", "processing", "succeed"]
    assert all(sorted(receiver.statuses(i), key=in_order.index) == in_order for i in ids)
    assert any(receiver.statuses(i) != in_order for i in ids)


async def test_reorder_rate_holds_back_non_terminal(
    receiver: Receiver, http: aiohttp.ClientSession
) -> None:
    """With reorder_rate=1 each non-terminal delivery comes just after the next one."""
    faults = CallbackFaults(reorder_rate=1.0)
    async with FakeKlingServer(callback_faults=faults) as server:
        task_id = await create(http, server, receiver.url)
        await receiver.until(lambda: len(receiver.arrivals) == 3)
    assert receiver.statuses(task_id) == ["succeed", "processing", "submitted"]


async def test_failing_receiver_gets_three_attempts(
    receiver: Receiver, http: aiohttp.ClientSession
) -> None:
    """A receiver answering 500 gets three attempts per delivery, then no more."""
    receiver.answer = 500
    async with FakeKlingServer(durations=QUICK, webhook_secret=WHSEC) as server:
        await create(http, server, receiver.url)
        await receiver.until(lambda: len(receiver.arrivals) == 9)
        await anyio.sleep(0.2)  # time for a fourth attempt, were there one
    assert len(receiver.arrivals) == 9
    by_id = Counter(a.headers["webhook-id"] for a in receiver.arrivals)
    assert sorted(by_id.values()) == [3, 3, 3]
    records = server.record.callbacks
    assert sorted(r.attempt for r in records) == [1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert {r.response_status for r in records} == {500}


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/hook"


async def test_unreachable_callback_url_harms_nothing(http: aiohttp.ClientSession) -> None:
    """Refused connections are recorded as failed attempts; the API keeps answering."""
    async with FakeKlingServer(durations=QUICK) as server:
        task_id = await create(http, server, closed_port_url())
        await anyio.sleep(0.4)  # the task ends after 10 ms, its retries 0.15 s later
        assert len(server.record.callbacks) == 9
        answer = await get(http, server, task_id)
        assert answer["data"]["task_status"] == "succeed"
        await create(http, server, closed_port_url())
    assert {r.response_status for r in server.record.callbacks} == {None}
    assert not any(r.lost for r in server.record.callbacks)


async def test_close_cancels_scheduled_deliveries(
    receiver: Receiver, http: aiohttp.ClientSession
) -> None:
    """close() with deliveries sleeping and scheduled leaves no task behind."""
    before = asyncio.all_tasks()
    faults = CallbackFaults(delay=(10.0, 10.0))
    server = FakeKlingServer(speed=1.0, callback_faults=faults)
    async with server:
        await create(http, server, receiver.url)
        await anyio.sleep(0.01)  # the submitted delivery is now sleeping in its delay
    assert asyncio.all_tasks() == before
    assert receiver.arrivals == []
    assert server.record.callbacks == []


async def test_failed_task_delivers_failed_with_message(
    receiver: Receiver, http: aiohttp.ClientSession
) -> None:
    """A failing task's terminal callback says failed, with the reason."""
    messages = ("blocked by policy",)
    async with FakeKlingServer(fail_rate=1.0, failure_messages=messages) as server:
        task_id = await create(http, server, receiver.url)
        await receiver.until(lambda: len(receiver.arrivals) == 3)
    assert receiver.statuses(task_id) == ["submitted", "processing", "failed"]
    last = receiver.arrivals[-1].task
    assert last["task_status_msg"] == "blocked by policy"
    assert "task_result" not in last
