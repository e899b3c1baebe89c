"""Secrets never appear in logs, reprs or exception texts, even when a server echoes them."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from kling_async import (
    KlingClient,
    KlingError,
    PollPolicy,
    RetryPolicy,
    TaskFailedError,
    VideoExtendRequest,
)
from kling_async._clock import FakeClock
from kling_async.testing import FakeKlingServer, Fault

pytestmark = pytest.mark.anyio

API_KEY = "sk-live-API-KEY-never-shown-0001"
ACCESS = "ak-access-key-0002"
SECRET = "sk-SECRET-never-shown-0123456789abcdef"


def _echoing_faults(secret: str) -> list[Fault]:
    """Answers of careless gateways that quote the credential back."""
    return [
        Fault.openai_error(401, f"Invalid API key provided: {secret}"),
        Fault.gateway_error(400, "bad_auth", f"Authorization: Bearer {secret} refused"),
        Fault.http_error(500, 5000, f"upstream said Bearer {secret}"),
        Fault.html(502),
    ]


def _official_client(server: FakeKlingServer, retry: RetryPolicy) -> KlingClient:
    """A JWT client of an official fake server, its clock at the real time (tokens are dated)."""
    return KlingClient(
        access_key=ACCESS,
        secret_key=SECRET,
        base_url=server.url,
        clock=FakeClock(time.time()),
        retry=retry,
        dialect="official",
    )


async def _collect(
    caplog: pytest.LogCaptureFixture, action: Callable[[], Awaitable[object]], texts: list[str]
) -> None:
    try:
        await action()
    except KlingError as exc:
        texts.extend([str(exc), repr(exc), str(exc.__cause__), repr(exc.__cause__)])


async def test_no_secret_in_any_text(caplog: pytest.LogCaptureFixture) -> None:
    """Across failures of both dialects, no key, secret or token is ever shown."""
    caplog.set_level(logging.DEBUG)
    texts: list[str] = []
    tokens: list[str] = []
    retry = RetryPolicy(max_attempts=2, base_delay=0.01)
    poll = PollPolicy(initial_delay=0.01, min_interval=0.01, max_interval=0.02, timeout=5)
    async with FakeKlingServer(dialect="gateway", api_key=API_KEY) as gateway:
        client = KlingClient(api_key=API_KEY, base_url=gateway.url, retry=retry, poll=poll)
        async with client:
            texts.append(repr(client))
            for fault in _echoing_faults(API_KEY):
                gateway.faults.push(fault, times=2)
                await _collect(caplog, lambda: client.get_task("t-1"), texts)
                gateway.faults.clear()
            gateway.faults.push(Fault.drop_after_create(), method="POST")
            await _collect(caplog, lambda: client.extend_video("v", task_id="p"), texts)
            texts.append(repr(await client.extend_and_wait("v", task_id="p")))
    async with FakeKlingServer(
        dialect="official", api_key=None, access_key=ACCESS, secret_key=SECRET
    ) as official:
        client = _official_client(official, retry)
        async with client:
            texts.append(repr(client))
            await client.extend_video("v")
            tokens = [r.headers["Authorization"].split()[1] for r in official.record.requests]
            for fault in _echoing_faults(SECRET):
                official.faults.push(fault, times=2)
                await _collect(caplog, lambda: client.get_task("t-1"), texts)
                official.faults.clear()
            official.faults.push(Fault.openai_error(401, f"bad token {tokens[0]}"), times=2)
            await _collect(caplog, lambda: client.get_task("t-1"), texts)
    texts.extend(record.getMessage() for record in caplog.records)
    texts.extend(str(vars(record)) for record in caplog.records)  # every field of every record
    shown = "\n".join(texts)
    assert "refused" in shown  # the echoing answers were really seen
    for secret in (API_KEY, SECRET, *tokens):
        assert secret not in shown


def _locals_shown(exc: BaseException) -> str:
    """The reprs of every local of every library frame in `exc`'s traceback and in those of
    the exceptions chained to it, walking into containers, as ``--showlocals`` or an error
    reporter that records locals would show them."""
    shown: list[str] = []

    def walk(value: object, depth: int) -> None:
        shown.append(repr(value))
        if depth == 0:
            return
        if isinstance(value, dict):
            for key, item in value.items():
                walk(key, depth - 1)
                walk(item, depth - 1)
        elif isinstance(value, list | tuple | set | frozenset):
            for item in value:
                walk(item, depth - 1)

    pending: list[BaseException | None] = [exc]
    seen: set[int] = set()
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        tb = current.__traceback__
        while tb is not None:
            if tb.tb_frame.f_code.co_filename != __file__:  # the test's own frames hold keys
                for value in tb.tb_frame.f_locals.values():
                    walk(value, 3)
            tb = tb.tb_next
        pending += [current.__cause__, current.__context__]
    return "\n".join(shown)


async def test_no_secret_in_traceback_locals() -> None:
    """No frame of a failed request's traceback holds a credential in its locals."""
    failures: list[BaseException] = []
    retry = RetryPolicy(max_attempts=2, base_delay=0.01)
    async with FakeKlingServer(dialect="gateway", api_key=API_KEY) as gateway:
        client = KlingClient(api_key=API_KEY, base_url=gateway.url, retry=retry, clock=FakeClock())
        async with client:
            for fault in [*_echoing_faults(API_KEY), Fault.drop(), Fault.malformed()]:
                gateway.faults.push(fault, times=2)
                with pytest.raises(KlingError) as caught:
                    await client.get_task("t-1")
                failures.append(caught.value)
                gateway.faults.clear()
        url = gateway.url
    client = KlingClient(api_key=API_KEY, base_url=url, retry=retry, clock=FakeClock())
    async with client:
        with pytest.raises(KlingError) as caught:  # the server is gone: connection refused
            await client.get_task("t-1")
        failures.append(caught.value)
    async with FakeKlingServer(
        dialect="official", api_key=None, access_key=ACCESS, secret_key=SECRET
    ) as official:
        client = _official_client(official, retry)
        async with client:
            official.faults.push(Fault.http_error(500, 5000, "down"), times=2)
            with pytest.raises(KlingError) as caught:
                await client.get_task("t-1")
            failures.append(caught.value)
            tokens = [r.headers["Authorization"].split()[1] for r in official.record.requests]
    assert len(failures) == 8 and tokens
    for failure in failures:
        shown = _locals_shown(failure)
        assert "Transport" in shown  # the transport's frame was walked
        for secret in (API_KEY, SECRET, *tokens):
            assert secret not in shown, f"{secret[:6]}... in the locals of {failure!r}"


async def test_a_task_quoting_the_key_back_never_shows_it(tmp_path: Path) -> None:
    """A failed task whose message names the key (a careless gateway's "quota of key sk-...
    used up"): the key is in no exception, task, journal or results file."""
    poll = PollPolicy(initial_delay=0.01, min_interval=0.01, max_interval=0.02, timeout=5)
    message = f"quota of key {API_KEY} used up (Authorization: Bearer {API_KEY})"
    journal = tmp_path / "batch.journal"
    async with FakeKlingServer(
        dialect="gateway", api_key=API_KEY, fail_rate=1.0, failure_messages=[message]
    ) as gateway:
        client = KlingClient(api_key=API_KEY, base_url=gateway.url, poll=poll)
        async with client:
            with pytest.raises(TaskFailedError) as caught:
                await client.extend_and_wait("v", task_id="p")
            requests = [VideoExtendRequest("v2", task_id="p")]
            outcomes = [o async for o in client.extend_many(requests, journal=journal)]
    texts = [str(caught.value), repr(caught.value.task), str(outcomes[0].error)]
    assert all("quota of key <hidden> used up" in text for text in texts)
    kept = b"".join(path.read_bytes() for path in tmp_path.iterdir())
    assert not any(API_KEY in text for text in texts) and API_KEY.encode() not in kept
