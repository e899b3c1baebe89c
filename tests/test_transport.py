"""The transport's rules, seen through the client: what is re-sent, and how long retries wait.

A create is re-sent only when the server surely made nothing; every other failure of a create
is left to the caller. Waits come from the fake clock, so they are asserted, never waited.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any

import aiohttp
import anyio
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from helpers import serve

from kling_async import (
    AmbiguousSubmissionError,
    APIError,
    InsufficientBalanceError,
    KlingClient,
    RateLimitError,
    RetryBudget,
    RetryPolicy,
    ServerError,
    TaskStatus,
    TransportError,
)
from kling_async._clock import FakeClock
from kling_async._transport import Transport
from kling_async.auth import BearerAuth
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


@pytest.mark.parametrize("status", [403, 400, 409])
async def test_a_proxy_page_refusing_a_create_is_not_resent(
    gateway: FakeKlingServer, status: int
) -> None:
    """A 4xx HTML page is a proxy's word, not the API's: the create may have gone through."""
    gateway.faults.push(Fault.html(status), method="POST")
    async with client_for(gateway) as client:
        with pytest.raises(AmbiguousSubmissionError):
            await client.extend_video("vid-1", task_id="p-1")
    assert posts(gateway) == 1


async def test_a_429_in_a_proxys_words_refuses_a_create_that_is_then_resent(
    gateway: FakeKlingServer,
) -> None:
    """A 429 is a refusal whoever answers it (a proxy's rate limit sends nothing on): the
    create is sent again once Retry-After has passed, and one task is made."""
    clock = FakeClock()
    gateway.faults.push(Fault.html(429, retry_after=3), method="POST")
    async with client_for(gateway, clock=clock) as client:
        task = await client.extend_video("vid-1", task_id="p-1")
    assert task.id and posts(gateway) == 2
    assert 3.0 in clock.sleeps  # Retry-After, waited on the fake clock


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
    assert "/v1/videos/video-extend failed before it was sent: ConnectionTimeoutError (" in str(
        caught.value
    )
    assert connector.tries == 3
    assert len(clock.sleeps) == 2
    # The connect phase has a deadline of its own: a slow connect is a connect timeout.
    assert [timeout.sock_connect for timeout in connector.timeouts] == [30.0] * 3


async def test_a_failure_without_words_still_says_what_failed() -> None:
    """An exception with no message of its own is named, with "no detail"."""
    connector = NeverConnects(aiohttp.ClientConnectionError())
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        client_for("http://127.0.0.1:9", session=session, retry=RetryPolicy(max_attempts=1)) as c,
    ):
        with pytest.raises(TransportError) as caught:
            await c.get_task("t-1")
    assert str(caught.value) == (
        "GET http://127.0.0.1:9/kling/v1/videos/video-extend/t-1 failed after it may have "
        "reached the server: "
        "ClientConnectionError (no detail)."
    )


class NeverConnects(aiohttp.BaseConnector):
    """A connector whose every connection attempt fails (by default a connect timeout)."""

    def __init__(self, error: Exception | None = None) -> None:
        super().__init__()
        timed_out = aiohttp.ConnectionTimeoutError("Connection timeout to host 127.0.0.1:9")
        self.error = error or timed_out
        self.tries = 0
        self.timeouts: list[aiohttp.ClientTimeout] = []

    async def _create_connection(
        self, req: object, traces: object, timeout: aiohttp.ClientTimeout
    ) -> Any:
        self.tries += 1
        self.timeouts.append(timeout)
        raise self.error


@contextlib.asynccontextmanager
async def moved_to_another_host(status: int) -> AsyncIterator[tuple[str, list[str]]]:
    """A server that answers every request with a redirect `status` to a second server, which
    answers any request as a created task; yields the first's URL and what the second saw."""
    reached: list[str] = []

    async def elsewhere(request: web.Request) -> web.Response:
        reached.append(f"{request.method} {request.path} {request.headers.get('Authorization')}")
        return web.json_response({"code": 0, "data": {"task_id": "t-elsewhere"}})

    async with serve({"/{path:.*}": elsewhere}) as other:

        async def moved(request: web.Request) -> web.Response:
            location = f"{other}{request.path}?signature=s3cr3t"
            return web.Response(status=status, headers={"Location": location})

        async with serve({"/{path:.*}": moved}) as url:
            yield url, reached


@pytest.mark.parametrize("status", [301, 302, 307, 308])
async def test_a_redirected_create_is_not_followed_and_made_nothing(status: int) -> None:
    """A redirect is not followed: a 301/302 would turn the create into a GET whose answer
    passes for a created task, a 307/308 would carry its body (the callback URL's token with
    it) to another host. The server refused it in its own way, so it is not ambiguous."""
    async with moved_to_another_host(status) as (url, reached), client_for(url) as client:
        with pytest.raises(APIError, match=f"HTTP {status}, a redirect to http") as caught:
            await client.extend_video("vid-1", task_id="p-1")
        assert caught.value.http_status == status
        assert "not followed" in str(caught.value) and "s3cr3t" not in str(caught.value)
        assert not isinstance(caught.value, AmbiguousSubmissionError)
        with pytest.raises(APIError, match=f"HTTP {status}"):
            await client.get_task("t-1")
    assert reached == []


async def test_a_create_answered_see_other_may_have_made_a_task() -> None:
    """A 303 may answer a request that was acted on: the create is ambiguous, not re-sent."""
    async with moved_to_another_host(303) as (url, reached), client_for(url) as client:
        with pytest.raises(AmbiguousSubmissionError, match="HTTP 303"):
            await client.extend_video("vid-1", task_id="p-1")
    assert reached == []


@pytest.mark.parametrize("status", [429, 400, 503])
async def test_a_create_answered_success_under_an_error_status_is_not_resent(status: int) -> None:
    """Code 0 and a task under HTTP 429 (a gateway that sets its own status on the API's
    answer): the business code and the status disagree, so the create may have made its
    task, and sending it again could pay twice."""
    creates: list[str] = []

    async def created(request: web.Request) -> web.Response:
        creates.append(request.method)
        answer = {"code": 0, "message": "SUCCEED", "data": {"task_id": f"t-{len(creates)}"}}
        return web.json_response(answer, status=status)

    async with serve({"/{path:.*}": created}) as url, client_for(url) as client:
        with pytest.raises(AmbiguousSubmissionError, match=f"HTTP {status}") as caught:
            await client.extend_video("vid-1", task_id="p-1")
    assert creates == ["POST"]
    assert "t-1" in str(caught.value)  # the answer is quoted: the task can be found


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


@contextlib.asynccontextmanager
async def answering(status: int, body: bytes, **headers: str) -> AsyncIterator[str]:
    """A server giving every request the same answer, as no fake server would; its URL."""

    async def answer(request: web.Request) -> web.Response:
        return web.Response(status=status, body=body, headers=headers)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    async with TestServer(app, host="127.0.0.1") as server:
        yield str(server.make_url(""))


async def test_a_gateway_string_zero_code_is_success() -> None:
    """Some gateways send the envelope's code as "0": that is a success, not an error."""
    task = {"task_id": "t-1", "task_status": "submitted", "created_at": 0, "updated_at": 0}
    body = json.dumps({"code": "0", "message": "SUCCEED", "data": task}).encode()
    async with answering(200, body) as url, client_for(url) as client:
        got = await client.get_task("t-1")
    assert (got.id, got.status) == ("t-1", TaskStatus.SUBMITTED)


@pytest.mark.parametrize("body", [b'{"code": 0, "data": {}}', b"<html>Moved</html>"])
async def test_a_3xx_answer_is_never_taken_for_success(body: bytes) -> None:
    """Only a 2xx envelope with code 0 is a success; a 300 is an error of the API's kind."""
    async with answering(300, body) as url, client_for(url) as client:
        with pytest.raises(APIError) as caught:
            await client.get_task("t-1")
    assert caught.value.http_status == 300


async def test_an_unreadable_200_is_quoted_in_part() -> None:
    """A 200 that is no envelope is a TransportError quoting its first 120 characters."""
    async with (
        answering(200, b"x" * 200) as url,
        client_for(url, retry=RetryPolicy(max_attempts=1)) as client,
    ):
        with pytest.raises(TransportError) as caught:
            await client.get_task("t-1")
    assert str(caught.value) == (
        f"The server answered HTTP 200 with a body that is not a Kling envelope: {'x' * 120!r}."
    )
    assert caught.value.may_have_been_sent


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        ({"message": "quota used up", "type": "insufficient_quota"}, InsufficientBalanceError),
        ({"message": "no such key", "type": "invalid_request_error"}, APIError),
    ],
)
async def test_a_gateway_error_object_under_a_200_is_its_error(
    error: dict[str, str], kind: type[APIError]
) -> None:
    """A gateway's ``{"error": {...}}`` is its own refusal even under HTTP 200: the create
    raises it in the gateway's words, once, rather than as a possibly made task."""
    body = json.dumps({"error": error}).encode()
    async with answering(200, body) as url, client_for(url) as client:
        with pytest.raises(kind) as caught:
            await client.extend_video("vid-1", task_id="p-1")
    assert type(caught.value) is kind
    assert (caught.value.code, caught.value.message) == (error["type"], error["message"])
    assert caught.value.http_status == 200


@pytest.mark.parametrize(
    "fault",
    [
        Fault.openai_error(200, "upstream timed out", "upstream_error"),
        Fault.http_error(200, 9999, "something went wrong upstream"),
    ],
)
async def test_an_unknown_error_under_a_200_answering_a_create_is_not_resent(
    gateway: FakeKlingServer, fault: Fault
) -> None:
    """An error the client does not know, under HTTP 200, may be a gateway wrapping an
    upstream that made the task: the create is ambiguous, never sent again."""
    gateway.faults.push(fault, method="POST")
    async with client_for(gateway, retry=RetryPolicy(max_attempts=3)) as client:
        with pytest.raises(AmbiguousSubmissionError):
            await client.extend_video("vid-1", task_id="p-1")
    assert posts(gateway) == 1


async def test_an_error_page_in_another_encoding_is_still_read() -> None:
    """Bytes that are not UTF-8 in an error page become replacement marks, not a crash."""
    async with (
        answering(502, b"<h1>Bad \xff\xfe Gateway</h1>") as url,
        client_for(url, retry=RetryPolicy(max_attempts=1)) as client,
    ):
        with pytest.raises(ServerError) as caught:
            await client.get_task("t-1")
    assert caught.value.message == "Unexpected answer: Bad \ufffd\ufffd Gateway"


async def test_a_retry_after_date_already_past_means_at_once() -> None:
    """A Retry-After HTTP date in the past is a wait of zero, not of a floor."""
    clock = FakeClock()
    past = format_datetime(datetime.fromtimestamp(clock.time() - 30, tz=UTC), usegmt=True)
    body = json.dumps({"code": 5001, "message": "busy"}).encode()
    async with (
        answering(503, body, **{"Retry-After": past}) as url,
        client_for(url, clock=clock, retry=RetryPolicy(max_attempts=2)) as client,
    ):
        with pytest.raises(ServerError):
            await client.get_task("t-1")
    assert clock.sleeps == [0.0]


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


async def test_a_token_refresh_is_not_counted_as_an_attempt(
    gateway: FakeKlingServer, caplog: pytest.LogCaptureFixture
) -> None:
    """After a 1004 and a fresh token, the request still has all of its retries."""
    clock = FakeClock()
    async with client_for(gateway, clock=clock, retry=RetryPolicy(max_attempts=2)) as client:
        created = await client.extend_video("vid-1", task_id="p-1")
        gateway.faults.push(Fault.http_error(401, 1004, "token expired"), method="GET")
        gateway.faults.push(Fault.http_error(503, 5001, "busy", retry_after=1), method="GET")
        with caplog.at_level(logging.INFO, logger="kling_async"):
            assert (await client.get_task(created.id)).id == created.id
    assert gets(gateway) == 3
    assert clock.sleeps == [1.0]
    assert any(message.endswith("; retry 1 of 1 in 1.00 s") for message in caplog.messages)


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
        message.startswith(f"GET /v1/videos/video-extend/{created.id} failed (busy (code 5001")
        and message.endswith("; retry 1 of 3 in 3.00 s")
        for message in caplog.messages
    ), caplog.messages


@pytest.mark.parametrize("key", ["k" * 12, "sk-" + "q" * 29])
async def test_a_key_of_twelve_characters_or_more_is_hidden_even_inside_a_word(key: str) -> None:
    """A long enough key is scrubbed wherever it appears, a bearer token too: <hidden>."""
    said = f"upstream said x{key}x; Authorization: Bearer tok-123"
    async with (
        answering(400, json.dumps({"code": "bad_auth", "message": said}).encode()) as url,
        KlingClient(api_key=key, base_url=url, dialect="gateway", clock=FakeClock()) as client,
    ):
        with pytest.raises(APIError) as caught:
            await client.get_task("t-1")
    assert caught.value.message == "upstream said x<hidden>x; Authorization: Bearer <hidden>"


# --- The retry budget: what a retry costs, and what is said when it cannot be paid ----------


async def test_a_retry_after_a_dropped_connection_costs_the_timeout_price(
    gateway: FakeKlingServer,
) -> None:
    """A connection lost or timed out holds the server longest: its retry takes
    `timeout_cost`, so a budget of one such retry stops at the second failure."""
    budget = RetryBudget(capacity=10, retry_cost=1, timeout_cost=10)
    async with client_for(gateway, retry_budget=budget) as client:
        created = await client.extend_video("vid-1", task_id="p-1")
        # aiohttp itself sends a GET once more on a dropped connection: two drops a failure.
        gateway.faults.push(Fault.drop(), method="GET", times=4)
        with pytest.raises(TransportError):
            await client.get_task(created.id)
    assert gets(gateway) == 4 and gateway.faults.pending == 0


async def test_a_retry_that_succeeds_pays_its_own_cost_back(gateway: FakeKlingServer) -> None:
    """A success after a retry refunds that retry's cost: a budget of one timeout retry
    rides out any number of single dropped connections."""
    budget = RetryBudget(capacity=10, retry_cost=1, timeout_cost=10, success_refill=0)
    async with client_for(gateway, retry_budget=budget) as client:
        created = await client.extend_video("vid-1", task_id="p-1")
        for _ in range(3):
            # aiohttp itself sends a GET once more on a dropped connection: two drops a failure.
            gateway.faults.push(Fault.drop(), method="GET", times=2)
            await client.get_task(created.id)
    assert gets(gateway) == 9


async def test_a_failure_the_budget_cannot_retry_is_logged_with_its_request_id(
    gateway: FakeKlingServer, caplog: pytest.LogCaptureFixture
) -> None:
    """When the budget is spent, the failure is raised at once and the log says why, with
    the error and its Kling request id."""
    async with client_for(gateway, retry_budget=RetryBudget(capacity=0)) as client:
        created = await client.extend_video("vid-1", task_id="p-1")
        gateway.faults.push(Fault.http_error(503, 5001, "down"), method="GET")
        with (
            caplog.at_level(logging.INFO, logger="kling_async"),
            pytest.raises(ServerError) as caught,
        ):
            await client.get_task(created.id)
    (record,) = [r for r in caplog.records if "budget" in r.getMessage()]
    assert record.getMessage() == (
        f"not retried, the retry budget is spent until requests succeed: {caught.value}"
    )
    assert caught.value.request_id
    assert record.kling_request_id == caught.value.request_id  # type: ignore[attr-defined]
    assert gets(gateway) == 1


# --- The transport's own promises: what it sends, and a create that is never cut short -------


@contextlib.asynccontextmanager
async def transport_at(url: str) -> AsyncIterator[Transport]:
    transport = Transport(url, BearerAuth(KEY), FakeClock(), retry=RetryPolicy(max_attempts=1))
    try:
        yield transport
    finally:
        await transport.close()


async def test_every_request_sends_its_body_and_query_and_asks_for_json() -> None:
    """Whether it may be re-sent or not, a request carries its body, its query and an Accept
    header asking for JSON."""
    seen: list[tuple[str, dict[str, str], Any, str]] = []

    async def echo(request: web.Request) -> web.Response:
        body = await request.json()
        seen.append((request.method, dict(request.query), body, request.headers["Accept"]))
        return web.json_response({"code": 0, "data": {"echo": body}})

    async with serve({"/thing": echo}) as url, transport_at(url) as transport:
        for resend_safe in (True, False):
            data = await transport.request(
                "POST", "/thing", body={"a": 1}, params={"page": 2}, resend_safe=resend_safe
            )
            assert data == {"echo": {"a": 1}}
    assert seen == [("POST", {"page": "2"}, {"a": 1}, "application/json")] * 2


class Held:
    """A route that holds each request until released, then gives `answer`."""

    def __init__(self, answer: dict[str, Any], status: int = 200) -> None:
        self.answer, self.status = answer, status
        self.arrived, self.release = anyio.Event(), anyio.Event()

    async def handle(self, request: web.Request) -> web.Response:
        self.arrived.set()
        await self.release.wait()
        return web.json_response(self.answer, status=self.status)


async def cancel_create_in_flight(
    answer: dict[str, Any], *, status: int = 200, cancels: int = 1, on_abandoned: Any = None
) -> None:
    """Send a create, cancel its caller `cancels` times while the server holds it, check each
    time that the caller still waits, then let the answer come and the cancellation end it."""
    held = Held(answer, status)
    async with serve({"/create": held.handle}) as url, transport_at(url) as transport:
        create = transport.request(
            "POST", "/create", body={}, resend_safe=False, on_abandoned=on_abandoned
        )
        running = asyncio.get_running_loop().create_task(create)
        with anyio.fail_after(10):  # a guard against a hang, not a measurement
            await held.arrived.wait()
        for _ in range(cancels):
            running.cancel()
            await anyio.wait_all_tasks_blocked()
            assert not running.done(), "the caller stopped waiting for the create's answer"
        held.release.set()
        with pytest.raises(asyncio.CancelledError):
            await running


async def test_a_create_cancelled_again_and_again_still_waits_for_its_answer() -> None:
    """However often its caller is cancelled, a sent create is waited for and its task handed
    to whoever listens."""
    heard: list[tuple[Any, Any]] = []
    created = {"code": 0, "data": {"task_id": "t-1"}}
    await cancel_create_in_flight(
        created, cancels=3, on_abandoned=lambda data, error: heard.append((data, error))
    )
    assert heard == [({"task_id": "t-1"}, None)]


async def test_a_create_cancelled_with_nobody_listening_just_ends_cancelled() -> None:
    """Without a listener, the answer of a cancelled create is awaited, then dropped."""
    await cancel_create_in_flight({"code": 0, "data": {"task_id": "t-1"}})


async def test_a_create_failing_after_its_caller_was_cancelled_hands_over_the_failure() -> None:
    """The listener hears a failure too, so it can tell a task that may exist from none."""
    heard: list[tuple[Any, Any]] = []
    await cancel_create_in_flight(
        {"code": 5000, "message": "boom", "request_id": "r-1"},
        status=500,
        on_abandoned=lambda data, error: heard.append((data, error)),
    )
    ((data, error),) = heard
    assert data is None and isinstance(error, ServerError) and error.code == 5000


# --- Answers the API never gives: redirects, disagreeing codes, secrets quoted back ----------


async def test_a_redirect_names_its_target_cut_and_without_its_query() -> None:
    """The target is named (resolved against the base URL) to 160 characters, its query (a
    signature, say) left out, with the setting to check."""
    long_path = "/" + "p" * 300
    async with (
        answering(302, b"", Location=f"{long_path}?signature=s3cr3t") as url,
        transport_at(url) as transport,
    ):
        with pytest.raises(APIError) as caught:
            await transport.request("GET", "/thing")
    target = (url.rstrip("/") + long_path)[:160]
    assert f"a redirect to {target}, which is not followed" in str(caught.value)
    assert "s3cr3t" not in str(caught.value)
    assert "the base URL is likely not its address (any more); check " in str(caught.value)


@pytest.mark.parametrize("status", [300, 399])
async def test_a_redirect_without_a_location_says_none(status: int) -> None:
    """Any 3xx is a redirect, refused as one; without a Location it names no target."""
    async with answering(status, b'{"code": 0, "data": {}}') as url, transport_at(url) as t:
        with pytest.raises(APIError) as caught:
            await t.request("GET", "/thing")
    assert str(caught.value).startswith(
        f"The server answered HTTP {status}, a redirect, which is not followed: the API does "
        "not redirect"
    )
    assert caught.value.http_status == status


@pytest.mark.parametrize(
    ("data", "named"),
    [
        ({"task_id": "t" * 100}, f", naming task {'t' * 80},"),
        ({"task_status": "submitted"}, ""),
        ("t-1", ""),
    ],
)
async def test_success_under_an_error_status_names_its_task_and_is_ambiguous(
    data: object, named: str
) -> None:
    """Code 0 (or "0") under a 429 is no refusal: not definitive, the task named (cut to 80
    characters) when the body gives one, the Retry-After kept."""
    for code in (0, "0"):
        body = json.dumps({"code": code, "data": data}).encode()
        async with (
            answering(429, body, **{"Retry-After": "7"}) as url,
            transport_at(url) as transport,
        ):
            with pytest.raises(APIError) as caught:
                await transport.request("POST", "/thing", resend_safe=False)
        assert str(caught.value).startswith(
            f"the body says success (code 0){named} but the status HTTP 429 says failure"
        )
        assert caught.value.definitive is False
        assert caught.value.retry_after == 7.0


async def test_a_secret_quoted_back_in_a_success_is_scrubbed_and_only_then() -> None:
    """A successful answer quoting the key is read with the key hidden; one that does not is
    read as it came."""
    quoted = {"code": 0, "data": {"task_status_msg": f"bad key {KEY} é"}}
    answer = json.dumps(quoted, ensure_ascii=False).encode()
    async with answering(200, answer) as url, transport_at(url) as transport:
        data = await transport.request("GET", "/thing")
    assert data == {"task_status_msg": "bad key <hidden> é"}
    plain = {"code": 0, "data": {"task_status_msg": "sent as Bearer abc-1 é"}}
    answer = json.dumps(plain, ensure_ascii=False).encode()
    async with answering(200, answer) as url, transport_at(url) as transport:
        data = await transport.request("GET", "/thing")
    assert data == plain["data"]


async def test_a_success_that_scrubbing_leaves_no_json_has_no_data() -> None:
    """A short hidden value is scrubbed as a word; should that break the answer's JSON, the
    answer is a success with no data rather than a crash or the secret."""
    async with answering(200, b'{"code": 0, "data": {"n": 70}}') as url:
        transport = Transport(
            url, BearerAuth(KEY), FakeClock(), retry=RetryPolicy(max_attempts=1), hidden=("70}",)
        )
        try:
            assert await transport.request("GET", "/thing") is None
        finally:
            await transport.close()


async def test_closing_under_cancellation_still_waits_for_a_create_and_closes() -> None:
    """Closing in a cancelled scope still lets a create in flight finish, then closes."""
    held = Held({"code": 0, "data": {"task_id": "t-1"}})
    answers: list[Any] = []
    async with serve({"/thing": held.handle}) as url:
        transport = Transport(url, BearerAuth(KEY), FakeClock(), retry=RetryPolicy(max_attempts=1))
        session = transport.session

        async def create() -> None:
            answers.append(await transport.request("POST", "/thing", resend_safe=False))

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(create)
            await held.arrived.wait()
            held.release.set()
            with anyio.CancelScope() as scope:
                scope.cancel()
                await transport.close()
            assert session.closed
    assert answers == [{"task_id": "t-1"}]
