"""The transport's rules, seen through the client: what is re-sent, and how long retries wait.

A create is re-sent only when the server surely made nothing; every other failure of a create
is left to the caller. Waits come from the fake clock, so they are asserted, never waited.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from kling_async import (
    AmbiguousSubmissionError,
    APIError,
    InsufficientBalanceError,
    KlingClient,
    RateLimitError,
    RetryPolicy,
    ServerError,
    TaskStatus,
    TransportError,
)
from kling_async._clock import FakeClock
from kling_async.testing import FakeKlingServer, Fault

pytestmark = pytest.mark.anyio

KEY = "test-api-key"


@pytest.fixture
async def gateway() -> AsyncIterator[FakeKlingServer]:
    async with FakeKlingServer(dialect="gateway", api_key=KEY) as server:
        yield server


def client_for(server: FakeKlingServer | str, **kwargs: Any) -> KlingClient:
    url = server if isinstance(server, str) else server.url
    kwargs.setdefault("clock", FakeClock())
    return KlingClient(api_key=KEY, base_url=url, dialect="gateway", **kwargs)


def posts(server: FakeKlingServer) -> int:
    return len([r for r in server.record.requests if r.method == "POST"])


def gets(server: FakeKlingServer) -> int:
    return len([r for r in server.record.requests if r.method == "GET"])


# --- What a create may be re-sent after ------------------------------------------------------


@pytest.mark.parametrize("status", [429, 403, 400])
async def test_a_proxy_page_refusing_a_create_is_not_resent(
    gateway: FakeKlingServer, status: int
) -> None:
    """A 4xx HTML page is a proxy's word, not the API's: the create may have gone through."""
    gateway.faults.push(Fault.html(status), method="POST")
    async with client_for(gateway) as client:
        with pytest.raises(AmbiguousSubmissionError):
            await client.extend_video("vid-1", task_id="p-1")
    assert posts(gateway) == 1


@pytest.mark.parametrize(("status", "code"), [(500, 1302), (500, 1303), (503, 1302)])
async def test_a_rate_limit_code_under_a_5xx_is_not_resent(
    gateway: FakeKlingServer, status: int, code: int
) -> None:
    """A create answered HTTP 500 with code 1302 is never re-sent: a 5xx may hide a made task."""
    gateway.faults.push(Fault.http_error(status, code, "too many requests"), method="POST")
    async with client_for(gateway) as client:
        with pytest.raises(AmbiguousSubmissionError):
            await client.extend_video("vid-1", task_id="p-1")
    assert posts(gateway) == 1


async def test_a_create_that_never_connected_is_resent_until_the_policy_ends() -> None:
    """A connect timeout means nothing was sent: the create is tried max_attempts times."""
    connector = NeverConnects()
    clock = FakeClock()
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        client_for(
            "http://127.0.0.1:9", session=session, clock=clock, retry=RetryPolicy(max_attempts=3)
        ) as client,
    ):
        with pytest.raises(TransportError, match="before it was sent") as caught:
            await client.extend_video("vid-1", task_id="p-1")
    assert not caught.value.may_have_been_sent
    assert connector.tries == 3
    assert len(clock.sleeps) == 2


class NeverConnects(aiohttp.BaseConnector):
    """A connector whose every connection attempt times out, before anything is sent."""

    def __init__(self) -> None:
        super().__init__()
        self.tries = 0

    async def _create_connection(self, *args: object, **kwargs: object) -> Any:
        self.tries += 1
        raise aiohttp.ConnectionTimeoutError("Connection timeout to host 127.0.0.1:9")


# --- How errors are told apart ---------------------------------------------------------------


@pytest.mark.parametrize("status", [409, 413])
async def test_an_unmapped_4xx_is_not_retried(gateway: FakeKlingServer, status: int) -> None:
    """A 409 or 413 will be refused again: raised at once, not as a server error."""
    gateway.faults.push(Fault.gateway_error(status, "conflict", "no"), method="GET")
    async with client_for(gateway) as client:
        with pytest.raises(APIError) as caught:
            await client.get_task("123")
    assert not isinstance(caught.value, ServerError)
    assert caught.value.http_status == status
    assert gets(gateway) == 1


@pytest.mark.parametrize("fault", [Fault.html(500), Fault.gateway_error(500, "oops", "oops")])
async def test_a_bare_500_is_retried(gateway: FakeKlingServer, fault: Fault) -> None:
    """HTTP 500 without a Kling code is a server error: a read is tried again."""
    async with client_for(gateway) as client:
        created = await client.extend_video("vid-1", task_id="p-1")
        gateway.faults.push(fault, method="GET")
        assert (await client.get_task(created.id)).id == created.id
    assert gets(gateway) == 2


async def test_an_exhausted_quota_in_an_error_object_is_a_balance_error(
    gateway: FakeKlingServer,
) -> None:
    """``{"error": {"code": "insufficient_quota"}}`` under a 429 is not a rate limit to retry."""
    fault = Fault.openai_error(429, "quota used up", "new_api_error", code="insufficient_quota")
    gateway.faults.push(fault, method="POST")
    async with client_for(gateway) as client:
        with pytest.raises(InsufficientBalanceError):
            await client.extend_video("vid-1", task_id="p-1")
    assert posts(gateway) == 1


async def test_a_gateway_string_zero_code_is_success() -> None:
    """Some gateways send the envelope's code as "0": that is a success, not an error."""
    task = {"task_id": "t-1", "task_status": "submitted", "created_at": 0, "updated_at": 0}

    async def answer(request: web.Request) -> web.Response:
        return web.json_response({"code": "0", "message": "SUCCEED", "data": task})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    async with (
        TestServer(app, host="127.0.0.1") as server,
        client_for(str(server.make_url(""))) as client,
    ):
        got = await client.get_task("t-1")
    assert (got.id, got.status) == ("t-1", TaskStatus.SUBMITTED)


# --- How long a retry waits ------------------------------------------------------------------


@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_a_429_without_retry_after_waits_at_least_a_second(
    gateway: FakeKlingServer, method: str
) -> None:
    """The API asks for at least 1 s after a rate limit, even when it names no wait."""
    clock = FakeClock()
    async with client_for(gateway, clock=clock) as client:
        created = await client.extend_video("vid-0", task_id="p-0")
        gateway.faults.push(Fault.rate_limited(retry_after=None, code=1302), method=method)
        if method == "GET":
            await client.get_task(created.id)
        else:
            await client.extend_video("vid-1", task_id="p-1")
    assert len(clock.sleeps) == 1
    assert clock.sleeps[0] >= 1.0


async def test_retries_are_spread_not_in_lockstep(gateway: FakeKlingServer) -> None:
    """Reads failing together retry at scattered moments within the first backoff step."""
    clock = FakeClock()
    async with client_for(gateway, clock=clock) as client:
        created = await client.extend_video("vid-1", task_id="p-1")
        for _ in range(40):
            gateway.faults.push(Fault.http_error(503, 5001, "busy"), method="GET")
            await client.get_task(created.id)
    ceiling = client.retry.base_delay
    assert len(clock.sleeps) == 40
    assert all(0.0 <= wait <= ceiling for wait in clock.sleeps)
    # 40 uniform draws: all distinct and spanning most of the range (failing odds ~ 1e-10).
    assert len(set(clock.sleeps)) == 40
    assert max(clock.sleeps) - min(clock.sleeps) > ceiling / 2


@pytest.mark.parametrize(("header", "waited"), [("0", 0.0), ("-3", 0.0), ("5", 5.0), ("2.5", 2.5)])
async def test_retry_after_is_waited_as_given(
    gateway: FakeKlingServer, header: str, waited: float
) -> None:
    """Retry-After of 0 (or nonsense below it) means at once; up to the cap it is waited."""
    clock = FakeClock()
    async with client_for(gateway, clock=clock, retry=RetryPolicy(max_retry_after=5)) as client:
        created = await client.extend_video("vid-1", task_id="p-1")
        gateway.faults.push(Fault.http_error(503, 5001, "busy", retry_after=header), method="GET")
        await client.get_task(created.id)
    assert clock.sleeps == [waited]


async def test_a_retry_after_past_the_cap_is_raised(gateway: FakeKlingServer) -> None:
    """A Retry-After longer than max_retry_after is not waited out: the caller decides."""
    clock = FakeClock()
    gateway.faults.push(Fault.rate_limited(retry_after=5.5), method="GET")
    async with client_for(gateway, clock=clock, retry=RetryPolicy(max_retry_after=5)) as client:
        with pytest.raises(RateLimitError) as caught:
            await client.get_task("123")
    assert caught.value.retry_after == 5.5
    assert clock.sleeps == []


async def test_each_retry_is_logged_with_its_count_and_wait(
    gateway: FakeKlingServer, caplog: pytest.LogCaptureFixture
) -> None:
    """The log says which retry of how many, and the wait, so an operator can follow it."""
    gateway.faults.push(Fault.http_error(503, 5001, "busy", retry_after=3), method="GET")
    async with client_for(gateway, retry=RetryPolicy(max_attempts=4)) as client:
        created = await client.extend_video("vid-1", task_id="p-1")
        with caplog.at_level(logging.INFO, logger="kling_async"):
            await client.get_task(created.id)
    assert any(
        message.startswith(f"GET /v1/videos/video-extend/{created.id} failed (")
        and message.endswith("; retry 1 of 3 in 3.00 s")
        for message in caplog.messages
    ), caplog.messages
