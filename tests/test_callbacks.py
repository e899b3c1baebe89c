"""CallbackReceiver: what it accepts, what it refuses, and how it wakes watchers."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import anyio
import pytest

from kling_async import CallbackReceiver, PollPolicy, Task, TaskKind, TaskStatus, TaskWatcher
from kling_async._clock import SystemClock

pytestmark = pytest.mark.anyio

SECRET = "whsec_" + base64.b64encode(b"sixteen byte key").decode()


def sign(
    body: bytes, msg_id: str = "msg_1", stamp: float | None = None, key: bytes = b"sixteen byte key"
) -> dict[str, str]:
    """Standard Webhooks headers, computed independently of the receiver."""
    when = str(int(time.time() if stamp is None else stamp))
    mac = hmac.new(key, f"{msg_id}.{when}.".encode() + body, hashlib.sha256)
    signature = base64.b64encode(mac.digest()).decode()
    return {"webhook-id": msg_id, "webhook-timestamp": when, "webhook-signature": f"v1,{signature}"}


def task_body(task_id: str = "t-1", status: str = "succeed", *, envelope: bool = False) -> bytes:
    task: dict[str, Any] = {"task_id": task_id, "task_status": status}
    return json.dumps({"code": 0, "data": task} if envelope else task).encode()


async def test_bare_task_and_envelope_are_both_accepted() -> None:
    """The official bare object and a gateway's envelope both give a hint."""
    receiver = CallbackReceiver()
    assert await receiver.handle(task_body("a")) == 200
    assert await receiver.handle(task_body("b", envelope=True)) == 200
    assert receiver.take_hint("a")
    assert receiver.take_hint("b")
    assert not receiver.take_hint("a")  # a hint is taken once


async def test_only_terminal_statuses_wake() -> None:
    """A processing callback is accepted but wakes nobody."""
    receiver = CallbackReceiver()
    assert await receiver.handle(task_body(status="processing")) == 200
    assert not receiver.take_hint("t-1")


@pytest.mark.parametrize("spelled", ["succeeded", "success", " Succeed ", "FAILED"])
async def test_every_spelling_of_an_end_wakes_as_a_task_read_does(spelled: str) -> None:
    """A callback's status is read as a task's is: each spelling of an end is a hint."""
    receiver = CallbackReceiver()
    assert await receiver.handle(task_body(status=spelled)) == 200
    assert receiver.take_hint("t-1")


@pytest.mark.parametrize(
    ("body", "status", "reason"),
    [
        (b"not json", 400, "not a task object"),
        (b'{"no": "task id"}', 400, "not a task object"),
        (b"x" * 70_000, 413, "body too large"),
    ],
)
async def test_bad_bodies_are_refused_without_effect(body: bytes, status: int, reason: str) -> None:
    """Non-JSON, task-less and oversized bodies are refused and change nothing."""
    receiver = CallbackReceiver()
    assert await receiver.handle(body) == status
    assert receiver.stats[reason] == 1
    assert receiver.stats["accepted"] == 0


async def test_wrong_path_is_refused() -> None:
    """A path without the receiver's token is refused."""
    receiver = CallbackReceiver()
    assert await receiver.handle(task_body(), path="/kling-callbacks/guess") == 404
    assert await receiver.handle(task_body(), path=receiver.path) == 200
    assert not receiver.take_hint("nobody") and receiver.take_hint("t-1")


async def test_signed_callback_is_verified() -> None:
    """A correctly signed callback is accepted."""
    receiver = CallbackReceiver(secret=SECRET)
    body = task_body()
    assert await receiver.handle(body, sign(body)) == 200
    assert receiver.take_hint("t-1")


async def test_a_whsec_secret_signing_with_its_own_text_is_verified() -> None:
    """A sender that keys the HMAC with the ``whsec_`` secret's text as it is (the API notes
    read "HMAC-SHA256(secret, ...)") is verified too; a third key is not."""
    receiver = CallbackReceiver(secret=SECRET)
    body = task_body()
    assert await receiver.handle(body, sign(body, key=SECRET.encode())) == 200
    assert receiver.take_hint("t-1")
    assert await receiver.handle(body, sign(body, msg_id="m2", key=b"another key")) == 401
    assert receiver.stats["bad signature"] == 1


@pytest.mark.parametrize(
    ("headers_for", "reason"),
    [
        (lambda body: {}, "unsigned"),
        (lambda body: sign(body + b" "), "bad signature"),
        (lambda body: sign(body, stamp=time.time() - 301), "timestamp outside the allowed window"),
        (lambda body: sign(body, stamp=time.time() + 301), "timestamp outside the allowed window"),
        (lambda body: {**sign(body), "webhook-timestamp": "soon"}, "bad timestamp"),
    ],
)
async def test_bad_signatures_are_refused(headers_for: Any, reason: str) -> None:
    """Unsigned, wrongly signed and stale callbacks are refused with no effect."""
    receiver = CallbackReceiver(secret=SECRET)
    body = task_body()
    assert await receiver.handle(body, headers_for(body)) == 401
    assert receiver.stats[reason] == 1
    assert not receiver.take_hint("t-1")


async def test_replayed_id_is_ignored() -> None:
    """A second delivery with a seen webhook-id changes nothing."""
    receiver = CallbackReceiver(secret=SECRET)
    body = task_body()
    headers = sign(body, msg_id="msg_7")
    assert await receiver.handle(body, headers) == 200
    assert receiver.take_hint("t-1")
    assert await receiver.handle(body, headers) == 200
    assert receiver.stats["replayed id"] == 1
    assert not receiver.take_hint("t-1")


async def test_several_signatures_any_may_match() -> None:
    """A space-separated list of signatures is accepted when one matches (key rotation)."""
    receiver = CallbackReceiver(secret=SECRET)
    body = task_body()
    headers = sign(body)
    headers["webhook-signature"] = "v1,AAAA " + headers["webhook-signature"]
    assert await receiver.handle(body, headers) == 200


async def test_standalone_server_refuses_wrong_token_and_big_bodies() -> None:
    """Served on its own: wrong token 404, oversized 413, a good callback 200."""
    async with CallbackReceiver(max_body=1000) as receiver:
        url = await receiver.start()
        async with aiohttp.ClientSession() as session:
            wrong = url.rsplit("/", 1)[0] + "/not-the-token"
            async with session.post(wrong, data=task_body()) as answer:
                assert answer.status == 404
            async with session.post(url, data=b"{" + b" " * 5000 + b"}") as answer:
                assert answer.status == 413
            async with session.post(url, data=task_body()) as answer:
                assert answer.status == 200
    assert receiver.take_hint("t-1")


async def test_deeply_nested_body_is_refused_with_400_and_one_log_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A body nested past the JSON parser's recursion limit is a 400, not a 500."""
    nested = b"[" * 30_000 + b"]" * 30_000
    async with CallbackReceiver() as receiver:
        url = await receiver.start()
        async with aiohttp.ClientSession() as session:
            with caplog.at_level(logging.INFO, logger="kling_async"):
                async with session.post(url, data=nested) as answer:
                    assert answer.status == 400
    assert [r.getMessage() for r in caplog.records] == ["callback refused: body nested too deeply"]
    assert receiver.stats["body nested too deeply"] == 1 and receiver.stats["accepted"] == 0


class CountingSource:
    """A task that reports `processing` until `done` is set."""

    def __init__(self) -> None:
        self.done = False
        self.polls = 0

    async def get_task(self, task_id: str, kind: TaskKind = TaskKind.VIDEO_EXTEND) -> Task:
        self.polls += 1
        status = TaskStatus.SUCCEED if self.done else TaskStatus.PROCESSING
        return Task(task_id, kind, status)


POLICY = PollPolicy(min_interval=0.01, max_interval=0.02, callback_interval=30, timeout=5)


async def test_callback_wakes_the_watcher_which_confirms_with_one_get() -> None:
    """A terminal callback makes the watcher read the task at once; one poll in all."""
    receiver = CallbackReceiver(base_url="http://hooks.test")
    source = CountingSource()
    start = Task("t-1", TaskKind.VIDEO_EXTEND, TaskStatus.SUBMITTED)
    watcher = TaskWatcher(source, start, policy=POLICY, clock=SystemClock(), wakeups=receiver)
    async with anyio.create_task_group() as group:
        group.start_soon(watcher.result)
        await anyio.sleep(0.05)
        assert source.polls == 0  # nothing to do until the callback, or the 30 s safety net
        source.done = True
        await receiver.handle(task_body("t-1"))
    assert watcher.last is not None and watcher.last.status is TaskStatus.SUCCEED
    assert source.polls == 1


async def test_forged_callback_cannot_finish_a_task() -> None:
    """A forged 'succeed' costs one read; the watcher goes on since the server disagrees."""
    receiver = CallbackReceiver(base_url="http://hooks.test")
    source = CountingSource()
    start = Task("t-1", TaskKind.VIDEO_EXTEND, TaskStatus.SUBMITTED)
    watcher = TaskWatcher(source, start, policy=POLICY, clock=SystemClock(), wakeups=receiver)
    with anyio.move_on_after(0.2):
        async with anyio.create_task_group() as group:
            group.start_soon(watcher.result)
            await anyio.sleep(0.02)
            for _ in range(3):  # duplicates of the forgery change nothing more
                await receiver.handle(task_body("t-1"))
            await anyio.sleep(0.1)
            group.cancel_scope.cancel()
    assert watcher.last is not None and watcher.last.status is TaskStatus.PROCESSING
    assert 1 <= source.polls <= 2


async def test_callback_before_the_watch_is_not_missed() -> None:
    """A callback that arrives before the watcher waits is still seen."""
    receiver = CallbackReceiver(base_url="http://hooks.test")
    await receiver.handle(task_body("t-1"))
    source = CountingSource()
    source.done = True
    start = Task("t-1", TaskKind.VIDEO_EXTEND, TaskStatus.SUBMITTED)
    watcher = TaskWatcher(source, start, policy=POLICY, clock=SystemClock(), wakeups=receiver)
    with anyio.fail_after(1):
        assert (await watcher).status is TaskStatus.SUCCEED
    assert source.polls == 1


def test_receiver_without_url_says_how_to_get_one() -> None:
    """Asking for the callback URL before it is known explains what to do."""
    with pytest.raises(RuntimeError, match="start"):
        _ = CallbackReceiver().callback_url


def test_repr_hides_the_token() -> None:
    """The receiver's token is a capability: its repr does not show it."""
    receiver = CallbackReceiver(base_url="http://hooks.test", secret=SECRET)
    assert receiver.path.rsplit("/", 1)[1] not in repr(receiver)
    assert "sixteen" not in repr(receiver)


async def test_a_callback_in_several_chunks_is_read_whole() -> None:
    """A body that arrives in pieces is still one callback."""

    async def chunks() -> AsyncIterator[bytes]:
        body = task_body("chunked")
        yield body[:10]
        await anyio.sleep(0.05)
        yield body[10:]

    async with CallbackReceiver() as receiver:
        url = await receiver.start()
        async with aiohttp.ClientSession() as session, session.post(url, data=chunks()) as answer:
            assert answer.status == 200
    assert receiver.take_hint("chunked")


async def test_the_receiver_token_is_scrubbed_from_errors() -> None:
    """A server quoting callback_url back in an error does not reveal the receiver's token."""
    from kling_async import APIError, KlingClient
    from kling_async.testing import FakeKlingServer, Fault

    receiver = CallbackReceiver(base_url="http://hooks.test")
    token = receiver.path.rsplit("/", 1)[1]
    async with FakeKlingServer(api_key="test-api-key") as server:
        message = f"callback_url {receiver.callback_url} is not reachable"
        server.faults.push(Fault.gateway_error(400, "bad_callback", message), method="POST")
        client = KlingClient(api_key="test-api-key", base_url=server.url, callbacks=receiver)
        async with client:
            with pytest.raises(APIError) as caught:
                await client.extend_video("v", task_id="p")
    assert token not in str(caught.value)
    assert "not reachable" in str(caught.value)


def test_public_url_is_the_one_name() -> None:
    """The constructor takes public_url=, as start() does; base_url= stays accepted."""
    receiver = CallbackReceiver(public_url="http://hooks.test/")
    assert receiver.callback_url == "http://hooks.test" + receiver.path
    assert CallbackReceiver(base_url="http://hooks.test").callback_url.startswith(
        "http://hooks.test/kling-callbacks/"
    )
    with pytest.raises(ValueError, match="not both"):
        CallbackReceiver(public_url="http://a.test", base_url="http://b.test")
    with pytest.raises(RuntimeError, match="pass public_url="):
        _ = CallbackReceiver().callback_url
