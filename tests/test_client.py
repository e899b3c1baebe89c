"""KlingClient against the fake server: both dialects, retries, ambiguity, validation."""

from __future__ import annotations

import asyncio
import functools
import gc
import gzip
import itertools
import logging
import re
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import attrs
import pytest
from aiohttp import web
from helpers import CountingLimiter, serve

from kling_async import (
    AmbiguousSubmissionError,
    APIError,
    AuthenticationError,
    ConfigurationError,
    DownloadError,
    InsufficientBalanceError,
    InvalidArgumentError,
    InvalidRequestError,
    KlingClient,
    NotFoundError,
    OrphanedTask,
    PollPolicy,
    RateLimitError,
    RetryBudget,
    RetryPolicy,
    ServerError,
    Task,
    TaskKind,
    TaskStatus,
    TransportError,
)
from kling_async._clock import FakeClock, SystemClock
from kling_async._transport import MAX_ANSWER_BYTES
from kling_async.testing import Durations, FakeKlingServer, Fault

pytestmark = pytest.mark.anyio

KEY = "test-api-key"
ACCESS = "ak-test-access"
SECRET = "sk-test-secret-0123456789abcdefghijkl"
QUICK = PollPolicy(initial_delay=0.01, min_interval=0.01, max_interval=0.05, timeout=20)


@pytest.fixture
async def gateway() -> AsyncIterator[FakeKlingServer]:
    async with FakeKlingServer(dialect="gateway", api_key=KEY) as server:
        yield server


@pytest.fixture
async def official() -> AsyncIterator[FakeKlingServer]:
    async with FakeKlingServer(
        dialect="official", api_key=None, access_key=ACCESS, secret_key=SECRET
    ) as server:
        yield server


def gateway_client(server: FakeKlingServer, **kwargs: Any) -> KlingClient:
    return KlingClient(api_key=KEY, base_url=server.url, dialect="gateway", poll=QUICK, **kwargs)


def official_client(server: FakeKlingServer, **kwargs: Any) -> KlingClient:
    return KlingClient(
        access_key=ACCESS,
        secret_key=SECRET,
        base_url=server.url,
        dialect="official",
        poll=QUICK,
        **kwargs,
    )


async def test_gateway_end_to_end(gateway: FakeKlingServer) -> None:
    """On a gateway: bearer key, /kling paths, parent task id; the result has a video."""
    async with gateway_client(gateway) as client:
        task = await client.extend_and_wait("vid-1", task_id="parent-1", prompt="keep going")
    assert task.status is TaskStatus.SUCCEED
    assert task.videos
    assert task.videos[0].url.startswith(gateway.url)
    assert task.videos[0].duration is not None
    create = gateway.record.requests[0]
    assert create.path == "/kling/v1/videos/video-extend"
    assert create.headers["Authorization"] == f"Bearer {KEY}"
    assert create.body == {"video_id": "vid-1", "task_id": "parent-1", "prompt": "keep going"}


async def test_official_end_to_end_with_jwt(official: FakeKlingServer) -> None:
    """On the official API: /v1 paths, a signed token, and an external id for recovery."""
    async with official_client(official) as client:
        task = await client.extend_and_wait("vid-1", cfg_scale=0.3)
    assert task.status is TaskStatus.SUCCEED
    create = official.record.requests[0]
    assert create.path == "/v1/videos/video-extend"
    assert create.headers["Authorization"].startswith("Bearer ey")
    assert create.body is not None
    assert str(create.body["external_task_id"]).startswith("ka-")
    assert task.external_task_id == create.body["external_task_id"]


async def test_official_with_static_key() -> None:
    """The official API also takes a static API key."""
    async with (
        FakeKlingServer(dialect="official", api_key=KEY) as server,
        KlingClient(api_key=KEY, base_url=server.url, dialect="official") as client,
    ):
        task = await client.extend_video("vid-1")
    assert task.status is TaskStatus.SUBMITTED


async def test_expired_token_is_renewed_once(official: FakeKlingServer) -> None:
    """A 1004 answer makes the client sign a new token and try once more."""

    class Ticking(FakeClock):
        def time(self) -> float:
            self.advance(1.0)
            return super().time()

    official.faults.push(Fault.http_error(401, 1004, "token expired"), method="GET")
    async with official_client(official, clock=Ticking(datetime.now(UTC).timestamp())) as c:
        created = await c.extend_video("vid-1")
        task = await c.get_task(created.id)
    assert task.id == created.id
    gets = [r for r in official.record.requests if r.method == "GET"]
    assert [r.status for r in gets] == [401, 200]
    assert gets[0].headers["Authorization"] != gets[1].headers["Authorization"]


async def test_token_refused_twice_is_an_authentication_error(official: FakeKlingServer) -> None:
    """A second 1004 in a row is not retried again."""
    fault = Fault.http_error(401, 1004, "token expired")
    official.faults.push(fault, method="GET", times=2)
    async with official_client(official) as client:
        with pytest.raises(AuthenticationError, match="1004"):
            await client.get_task("123")
    assert len(official.record.requests) == 2


async def test_wrong_secret_is_refused_clearly(official: FakeKlingServer) -> None:
    """A bad signature is a 1002 AuthenticationError that names no secret."""
    client = KlingClient(
        access_key=ACCESS, secret_key="x" * 40, base_url=official.url, dialect="official"
    )
    async with client:
        with pytest.raises(AuthenticationError) as caught:
            await client.get_task("123")
    assert caught.value.code == 1002
    assert "x" * 40 not in str(caught.value)


async def test_gateway_bad_key_error_object(gateway: FakeKlingServer) -> None:
    """The gateway's own {"error": ...} answer becomes an AuthenticationError."""
    async with KlingClient(api_key="wrong", base_url=gateway.url, dialect="gateway") as client:
        with pytest.raises(AuthenticationError, match="Invalid API key"):
            await client.get_task("123")


SPEC_ROWS = [
    (401, 1000, AuthenticationError),
    (429, 1101, InsufficientBalanceError),
    (429, 1102, InsufficientBalanceError),
    (404, 1203, NotFoundError),
    (400, 1301, Exception),
]


@pytest.mark.parametrize(("http", "code", "cls"), SPEC_ROWS)
async def test_permanent_errors_are_raised_without_retry(
    gateway: FakeKlingServer, http: int, code: int, cls: type[Exception]
) -> None:
    """Permanent business codes end the call at once, whatever the HTTP status."""
    gateway.faults.push(Fault.http_error(http, code, "nope"), method="GET")
    async with gateway_client(gateway) as client:
        with pytest.raises(cls) as caught:
            await client.get_task("123")
    assert getattr(caught.value, "code", None) == code
    assert len(gateway.record.requests) == 1


async def test_429_retry_after_is_waited_out(gateway: FakeKlingServer) -> None:
    """A 429 with Retry-After: 2 is waited (on the fake clock) and then succeeds."""
    clock = FakeClock()
    gateway.faults.push(Fault.rate_limited(retry_after=2, code=1302), method="POST")
    async with gateway_client(gateway, clock=clock) as client:
        task = await client.extend_video("vid-1", task_id="p-1")
    assert clock.sleeps == [2.0]
    assert gateway.record.create_count == 1
    assert task.status is TaskStatus.SUBMITTED


async def test_retry_after_as_http_date(gateway: FakeKlingServer) -> None:
    """Retry-After may be an HTTP date; the wait is the time until then."""
    clock = FakeClock()
    when = datetime.fromtimestamp(clock.time() + 7, tz=UTC)
    gateway.faults.push(Fault.rate_limited(retry_after=format_datetime(when, usegmt=True)))
    async with gateway_client(gateway, clock=clock) as client:
        await client.extend_video("vid-1", task_id="p-1")
    assert clock.sleeps == [pytest.approx(7.0, abs=1.0)]


async def test_too_long_retry_after_is_raised(gateway: FakeKlingServer) -> None:
    """A Retry-After beyond the policy's patience raises RateLimitError carrying it."""
    gateway.faults.push(Fault.rate_limited(retry_after=3600), method="GET")
    async with gateway_client(gateway, clock=FakeClock()) as client:
        with pytest.raises(RateLimitError) as caught:
            await client.get_task("123")
    assert caught.value.retry_after == 3600


async def test_500_then_200_on_get_succeeds(gateway: FakeKlingServer) -> None:
    """A server error on a GET is retried."""
    clock = FakeClock()
    async with gateway_client(gateway, clock=clock) as client:
        created = await client.extend_video("vid-1", task_id="p-1")
        gateway.faults.push(Fault.http_error(500, 5000, "boom"), method="GET")
        task = await client.get_task(created.id)
    assert task.id == created.id
    assert [r.status for r in gateway.record.requests if r.method == "GET"] == [500, 200]
    assert len(clock.sleeps) == 1


@pytest.mark.parametrize("fault", [Fault.http_error(500, 5000, "boom"), Fault.malformed()])
async def test_a_retried_failure_is_freed_at_once(
    gateway: FakeKlingServer, fault: Fault, caplog: pytest.LogCaptureFixture
) -> None:
    """Once the retry succeeds, the failure it replaced is gone by reference counting alone:
    many watchers riding out a burst of errors must not leave them for the collector."""
    seen: list[weakref.ref[Exception]] = []
    async with gateway_client(gateway, clock=FakeClock()) as client:
        created = await client.extend_video("vid-1", task_id="p-1")
        gateway.faults.push(fault, method="GET")
        # A captured log record would hold the error (an argument of the retry line).
        with caplog.at_level(logging.WARNING, logger="kling_async"):
            gc.disable()
            try:
                await client._transport.request(
                    "GET",
                    f"/v1/videos/video-extend/{created.id}",
                    on_retry=lambda error: seen.append(weakref.ref(error)),
                )
                assert len(seen) == 1
                assert seen[0]() is None
            finally:
                gc.enable()


@pytest.mark.parametrize("fault", [Fault.malformed(), Fault.html(502), Fault.drop()])
async def test_get_survives_bad_answers(gateway: FakeKlingServer, fault: Fault) -> None:
    """A malformed body, a proxy page or a dropped connection on a GET is retried."""
    async with gateway_client(gateway, clock=FakeClock()) as client:
        created = await client.extend_video("vid-1", task_id="p-1")
        gateway.faults.push(fault, method="GET", times=2)
        assert (await client.get_task(created.id)).id == created.id


async def test_server_errors_exhaust_the_retry_policy(gateway: FakeKlingServer) -> None:
    """Persistent 5xx ends with ServerError after max_attempts tries."""
    gateway.faults.push(Fault.http_error(503, 5001, "down"), method="GET", times=10)
    retry = RetryPolicy(max_attempts=3)
    async with gateway_client(gateway, clock=FakeClock(), retry=retry) as client:
        with pytest.raises(ServerError, match="5001"):
            await client.get_task("123")
    assert len(gateway.record.requests) == 3


async def test_create_dropped_after_creation_is_ambiguous_on_gateway(
    gateway: FakeKlingServer,
) -> None:
    """A create whose answer was lost is not re-sent; the error holds the request."""
    gateway.faults.push(Fault.drop_after_create(), method="POST")
    async with gateway_client(gateway, clock=FakeClock()) as client:
        with pytest.raises(AmbiguousSubmissionError) as caught:
            await client.extend_video("vid-1", task_id="p-1", prompt="more")
    assert gateway.record.create_count == 1
    assert len([r for r in gateway.record.requests if r.method == "POST"]) == 1
    assert caught.value.request.video_id == "vid-1"
    assert caught.value.request.prompt == "more"


async def test_create_dropped_after_creation_is_recovered_on_official(
    official: FakeKlingServer,
) -> None:
    """On the official API the lost task is found by its external id, not paid twice."""
    official.faults.push(Fault.drop_after_create(), method="POST")
    async with official_client(official, clock=FakeClock(time.time())) as client:
        task = await client.extend_video("vid-1")
    assert official.record.create_count == 1
    assert task.id == official.record.created[0]


async def test_create_dropped_before_creation_is_sent_again_under_its_external_id(
    official: FakeKlingServer,
) -> None:
    """Official API: nothing found by the external id, twice, a grace apart: the request is
    sent once more under the same external id (unique per account, so it cannot pay twice)."""
    official.faults.push(Fault.drop(), method="POST")
    clock = FakeClock(time.time())
    async with official_client(official, clock=clock) as client:
        task = await client.extend_video("vid-1")
    posts = [r for r in official.record.requests if r.method == "POST"]
    lookups = [r for r in official.record.requests if r.method == "GET"]
    assert official.record.create_count == 1
    assert task.id == official.record.created[0]
    assert len(posts) == 2
    assert posts[0].body is not None and posts[1].body is not None
    assert posts[0].body["external_task_id"] == posts[1].body["external_task_id"]
    assert [r.path.rsplit("/", 1)[-1] for r in lookups] == [posts[0].body["external_task_id"]] * 2
    assert RetryPolicy().lookup_grace in clock.sleeps


async def test_a_resend_refused_for_its_taken_external_id_adopts_the_task(
    official: FakeKlingServer,
) -> None:
    """The first attempt landed although the look-ups missed it (a lagging index): the resend
    is refused as a duplicate, which proves it; the task is looked up and returned."""
    official.faults.push(Fault.drop_after_create(), method="POST")
    lagging = Fault.http_error(404, 1203, "task does not exist")
    official.faults.push(lagging, method="GET", times=2)
    async with official_client(official, clock=FakeClock(time.time())) as client:
        task = await client.extend_video("vid-1")
    posts = [r for r in official.record.requests if r.method == "POST"]
    assert [r.status for r in posts] == [None, 400]
    assert official.record.create_count == 1
    assert task.id == official.record.created[0]


async def test_a_refused_resend_with_no_task_behind_it_raises_the_refusal(
    official: FakeKlingServer,
) -> None:
    """A resend refused for something else (no task holds the external id) is not adopted."""
    official.faults.push(Fault.drop(), method="POST")
    official.faults.push(Fault.http_error(400, 1201, "prompt is not allowed"), method="POST")
    async with official_client(official, clock=FakeClock(time.time())) as client:
        with pytest.raises(InvalidRequestError, match="prompt is not allowed"):
            await client.extend_video("vid-1")
    assert official.record.create_count == 0


async def test_an_unanswered_resend_is_not_sent_a_third_time(official: FakeKlingServer) -> None:
    """The resend is lost too and still nothing is found: ambiguous, two POSTs in all."""
    official.faults.push(Fault.drop(), method="POST", times=2)
    async with official_client(official, clock=FakeClock(time.time())) as client:
        with pytest.raises(AmbiguousSubmissionError, match="external id"):
            await client.extend_video("vid-1")
    assert len([r for r in official.record.requests if r.method == "POST"]) == 2
    assert official.record.create_count == 0


async def test_create_dropped_before_creation_stays_ambiguous_on_a_gateway(
    gateway: FakeKlingServer,
) -> None:
    """A gateway has no external id to look up: the create is never sent twice."""
    gateway.faults.push(Fault.drop(), method="POST")
    async with gateway_client(gateway, clock=FakeClock()) as client:
        with pytest.raises(AmbiguousSubmissionError):
            await client.extend_video("vid-1", task_id="p-1")
    assert len([r for r in gateway.record.requests if r.method == "POST"]) == 1


CANCELS = ["anyio cancel scope", "asyncio Task.cancel"]


async def _cancel_in_flight(
    server: FakeKlingServer, how: str, create: Callable[[], Awaitable[object]]
) -> None:
    """Start `create`, cancel its caller once the server holds the request, check that the
    caller still waits for the answer, then let the answer go."""
    ended = anyio.Event()
    scope = anyio.CancelScope()

    async def caller() -> None:
        with scope:
            try:
                await create()
            finally:
                ended.set()

    if how == "anyio cancel scope":
        async with anyio.create_task_group() as group:
            group.start_soon(caller)
            await server.held()
            scope.cancel()
            await anyio.wait_all_tasks_blocked()
            assert not ended.is_set()
            server.release_held()
        return
    running = asyncio.get_running_loop().create_task(caller())
    await server.held()
    running.cancel()
    await anyio.wait_all_tasks_blocked()
    assert not ended.is_set()
    server.release_held()
    with pytest.raises(asyncio.CancelledError):
        await running


@pytest.mark.parametrize("dialect", ["gateway", "official"])
@pytest.mark.parametrize("how", CANCELS)
async def test_a_create_cancelled_in_flight_hands_its_task_over(
    dialect: str, how: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Cancelled after the create was sent, the call waits for the answer; the task made for
    nobody is logged with its id and video, kept on the client and given to the hook."""
    heard: list[OrphanedTask] = []
    arguments = {"task_id": "p-1"} if dialect == "gateway" else {}
    async with (
        FakeKlingServer(dialect=dialect, api_key=KEY) as server,
        KlingClient(
            api_key=KEY, base_url=server.url, dialect=dialect, on_orphaned_task=heard.append
        ) as client,
    ):
        server.faults.push(Fault.hold_answer(), method="POST")
        with caplog.at_level(logging.WARNING, logger="kling_async"):
            await _cancel_in_flight(
                server, how, functools.partial(client.extend_video, "vid-1", **arguments)
            )
    (created,) = server.record.created
    assert [orphan.task.id for orphan in heard] == [created]
    assert heard[0].request.video_id == "vid-1"
    assert list(client.orphaned_tasks) == heard
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(created in line and "vid-1" in line for line in warnings)


@pytest.mark.parametrize("how", CANCELS)
async def test_a_create_cancelled_while_its_lost_answer_is_looked_up_is_logged(
    how: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A create whose answer was lost made its task; the caller is cancelled while the task
    is looked up by its external id. The id it was sent under, the one way to find the paid
    task, is logged, as for a create whose answer was lost while its caller was cancelled."""
    async with (
        FakeKlingServer(dialect="official", api_key=KEY) as server,
        KlingClient(api_key=KEY, base_url=server.url, dialect="official") as client,
    ):
        server.faults.push(Fault.drop_after_create(), method="POST")
        server.faults.push(Fault.hold_answer(), method="GET")
        scope = anyio.CancelScope()

        async def create() -> None:
            with scope:
                await client.extend_video("vid-1")

        with caplog.at_level(logging.WARNING, logger="kling_async"):
            if how == "anyio cancel scope":
                async with anyio.create_task_group() as group:
                    group.start_soon(create)
                    await server.held()
                    scope.cancel()
            else:
                running = asyncio.get_running_loop().create_task(create())
                await server.held()
                running.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await running
            server.release_held()
    (post,) = [r for r in server.record.requests if r.method == "POST"]
    assert server.record.create_count == 1
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(
        post.body["external_task_id"] in line and "vid-1" in line and "cancelled" in line
        for line in warnings
    )


async def test_a_lookup_answered_with_another_requests_task_is_not_adopted() -> None:
    """A create's answer is lost; the look-up by its external id is answered with a task of
    another external id. Adopting it would hand over another video and leave this request's
    task, if any, for nobody: the create is ambiguous, and not sent again."""
    posts: list[Any] = []

    async def crossed(request: web.Request) -> web.StreamResponse:
        if request.method == "POST":
            posts.append(await request.json())
            assert request.transport is not None
            request.transport.close()  # the answer is lost
            return web.Response()
        info = {"external_task_id": "ka-another-request"}
        data = {"task_id": "t-another", "task_status": "processing", "task_info": info}
        return web.json_response({"code": 0, "data": data})

    async with (
        serve({"/{path:.*}": crossed}) as url,
        KlingClient(api_key=KEY, base_url=url, dialect="official", clock=FakeClock()) as client,
    ):
        with pytest.raises(AmbiguousSubmissionError, match="ka-another-request"):
            await client.extend_video("vid-1")
    assert len(posts) == 1


@pytest.mark.parametrize("dialect", ["gateway", "official"])
async def test_closing_the_client_waits_for_a_create_in_flight(dialect: str) -> None:
    """The client is closed (an app shutting down) while a create of another task of the
    app is in flight: its answer still comes, and the task it names is handed over, instead
    of the connection being closed under it (an ambiguous create, or on the official API a
    look-up refused because the client is closed)."""
    loop = asyncio.get_running_loop()
    arguments = {"task_id": "p-1"} if dialect == "gateway" else {}

    async def release_once_all_wait(server: FakeKlingServer) -> None:
        await anyio.wait_all_tasks_blocked()  # the client is closing by then
        server.release_held()

    async with FakeKlingServer(dialect=dialect, api_key=KEY) as server:
        server.faults.push(Fault.hold_answer(), method="POST")
        async with KlingClient(api_key=KEY, base_url=server.url, dialect=dialect) as client:
            creating = loop.create_task(client.extend_video("vid-1", **arguments))
            await server.held()
            releasing = loop.create_task(release_once_all_wait(server))
        task = await creating
        await releasing
        assert [task.id] == server.record.created


async def test_a_cancelled_new_video_create_is_handed_over_too(gateway: FakeKlingServer) -> None:
    """Every create takes the one path: a text-to-video task made for a cancelled caller is
    an orphan like an extension."""
    async with gateway_client(gateway) as client:
        gateway.faults.push(Fault.hold_answer(), method="POST")
        create = functools.partial(client.text_to_video, "a fox in the snow")
        await _cancel_in_flight(gateway, "asyncio Task.cancel", create)
    assert [orphan.task.id for orphan in client.orphaned_tasks] == gateway.record.created
    assert client.orphaned_tasks[0].task.kind is TaskKind.TEXT_TO_VIDEO


@pytest.mark.parametrize("how", CANCELS)
async def test_a_cancelled_create_that_made_nothing_leaves_no_orphan(how: str) -> None:
    """A create refused while its caller was being cancelled made no task: nothing is kept."""
    async with (
        FakeKlingServer(dialect="gateway", api_key=KEY, require_known_videos=True) as server,
        gateway_client(server) as client,
    ):
        server.faults.push(Fault.hold_answer(), method="POST")
        create = functools.partial(client.extend_video, "vid-1", task_id="no-such-parent")
        await _cancel_in_flight(server, how, create)
    assert server.record.create_count == 0
    assert len(server.record.requests) == 1
    assert not client.orphaned_tasks


async def test_create_timing_out_after_sending_is_not_resent(gateway: FakeKlingServer) -> None:
    """A create that times out may still make its task (here it does): it is not re-sent."""
    gateway.faults.push(Fault.delay(0.3), method="POST")
    async with gateway_client(gateway, clock=FakeClock(), timeout=0.1) as client:
        with pytest.raises(AmbiguousSubmissionError, match="TimeoutError"):
            await client.extend_video("vid-1", task_id="p-1")
    await anyio.sleep(0.4)  # let the slow server finish the create it was sent
    assert gateway.record.create_count == 1
    assert len([r for r in gateway.record.requests if r.method == "POST"]) == 1


@pytest.mark.parametrize(
    "fault",
    [
        Fault.rate_limited(retry_after=1, code=1303),
        Fault.rate_limited(retry_after=None, code=1302),
        Fault.gateway_error(429, "rate_limit_exceeded", "slow down"),
    ],
)
async def test_explicit_refusals_of_a_create_are_resent(
    gateway: FakeKlingServer, fault: Fault
) -> None:
    """A 4xx rate limit in the server's own words means nothing was made: re-send is safe."""
    gateway.faults.push(fault, method="POST")
    async with gateway_client(gateway, clock=FakeClock()) as client:
        await client.extend_video("vid-1", task_id="p-1")
    assert gateway.record.create_count == 1
    assert len([r for r in gateway.record.requests if r.method == "POST"]) == 2


@pytest.mark.parametrize(
    "fault",
    [
        Fault.http_error(500, 5000, "try again"),
        Fault.http_error(504, 5002, "internal timeout"),
        Fault.gateway_error(502, "upstream_error", "bad gateway"),
        Fault.openai_error(504, "upstream timed out", "server_error"),
        Fault.html(504),
        Fault.html(502),
        Fault.html(400),
        Fault.malformed(),
    ],
)
async def test_unclear_answers_to_a_create_are_never_resent(
    gateway: FakeKlingServer, fault: Fault
) -> None:
    """A 5xx of any body, or an unreadable 200, may hide a made task: one POST, ambiguity."""
    gateway.faults.push(fault, method="POST")
    async with gateway_client(gateway, clock=FakeClock()) as client:
        with pytest.raises(AmbiguousSubmissionError):
            await client.extend_video("vid-1", task_id="p-1")
    assert len([r for r in gateway.record.requests if r.method == "POST"]) == 1


async def test_an_empty_retry_budget_surfaces_failures_at_once(gateway: FakeKlingServer) -> None:
    """Retries drain the client-wide budget; once it cannot pay, a failure is raised after one
    attempt; successes earn retries back."""
    budget = RetryBudget(capacity=20, retry_cost=5)  # four retries
    async with gateway_client(gateway, clock=FakeClock(), retry_budget=budget) as client:
        created = await client.extend_video("vid-1", task_id="p-1")
        gateway.faults.rate(Fault.http_error(503, 5001, "down"), 1.0, method="GET")
        with pytest.raises(ServerError):
            await client.get_task(created.id)  # 1 + 4 retries: the budget is spent
        with pytest.raises(ServerError):
            await client.get_task(created.id)  # no retry left
        gateway.faults.clear()
        for _ in range(5):  # each success puts a token back: 5 pay for one retry
            await client.get_task(created.id)
        gateway.faults.push(Fault.http_error(503, 5001, "down"), method="GET", times=2)
        with pytest.raises(ServerError):
            await client.get_task(created.id)
    statuses = [r.status for r in gateway.record.requests if r.method == "GET"]
    assert statuses == [503] * 6 + [200] * 5 + [503] * 2


@pytest.mark.parametrize("dialect", ["gateway", "official"])
@pytest.mark.parametrize(
    "fault", [Fault.http_error(503, 5001, "down"), Fault.drop()], ids=["503", "drop"]
)
async def test_a_watcher_rides_out_an_outage_with_one_read_per_retry_cap(
    dialect: str, fault: Fault
) -> None:
    """A lone watcher (the retry budget full) spends no retries inside its failing reads:
    each is one request, the retry cap apart; when the API is back, the watch ends."""
    clock = FakeClock(time.time())
    retry = RetryPolicy(jitter=False)
    poll = PollPolicy(initial_delay=0.01, min_interval=0.01, max_interval=0.05, jitter=False)
    arguments = {"task_id": "p-1"} if dialect == "gateway" else {}
    async with (
        FakeKlingServer(dialect=dialect, api_key=KEY) as server,
        KlingClient(
            api_key=KEY, base_url=server.url, dialect=dialect, clock=clock, retry=retry
        ) as client,
    ):
        task = await client.extend_video("vid-1", **arguments)
        server.faults.push(fault, method="GET", times=4)
        finished = await client.watch(task, poll=poll)
    assert finished.status is TaskStatus.SUCCEED
    assert not [wait for wait in clock.sleeps if 0.05 < wait < 20.0]  # no in-request backoff
    failed_reads = len(list(itertools.takewhile(lambda wait: wait == 20.0, clock.sleeps[1:])))
    reads = [r for r in server.record.requests if r.method == "GET"]
    if fault.name == "drop":  # aiohttp resends a GET once on a dropped connection, by itself
        assert failed_reads <= 4 <= 2 * failed_reads
    else:
        assert failed_reads == 4
        assert [r.status for r in reads[:5]] == [503] * 4 + [200]


async def test_retry_after_on_a_503_is_honoured(gateway: FakeKlingServer) -> None:
    """A server error asking for a pause gets it (not just a short backoff)."""
    clock = FakeClock()
    gateway.faults.push(Fault.http_error(503, 5001, "busy", retry_after=9), method="GET")
    async with gateway_client(gateway, clock=clock) as client:
        created = await client.extend_video("vid-1", task_id="p-1")
        await client.get_task(created.id)
    assert clock.sleeps == [9.0]


BIG = 64 * 1024 * 1024


async def test_an_answer_announcing_a_huge_body_is_refused_unread() -> None:
    """A Content-Length past the cap fails at once: the body is never waited for."""
    release = anyio.Event()

    async def announces(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.content_length = BIG
        await response.prepare(request)
        await response.write(b'{"code": 0, "data": {')
        await release.wait()  # the rest never comes: a client that reads on would hang
        return response

    try:
        async with (
            serve({"/kling/v1/videos/video-extend/t-1": announces}) as url,
            gateway_client_at(url) as client,
        ):
            with pytest.raises(TransportError, match="larger than the 4 MiB") as caught:
                await client.get_task("t-1")
    finally:
        release.set()
    assert f"announced {BIG} bytes" in str(caught.value)


async def test_a_chunked_answer_past_the_cap_is_not_read_to_its_end() -> None:
    """A chunked answer is counted as it arrives; past the cap the client hangs up."""
    sent = 0
    ended = anyio.Event()

    async def floods(request: web.Request) -> web.StreamResponse:
        nonlocal sent
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        try:
            while sent < BIG:
                await response.write(b" " * 65536)
                sent += 65536
        except ConnectionError:
            pass  # the client hung up
        finally:
            ended.set()
        return response

    async with serve({"/kling/v1/videos/video-extend/t-1": floods}) as url:
        async with gateway_client_at(url) as client:
            with pytest.raises(TransportError, match="larger than the 4 MiB"):
                await client.get_task("t-1")
        with anyio.fail_after(30):  # a guard against a hang, not a measurement
            await ended.wait()
    assert sent < BIG / 2


async def test_a_compressed_answer_is_capped_after_decoding() -> None:
    """A small gzip body that inflates past the cap is refused as it inflates."""
    packed = gzip.compress(b" " * BIG)

    async def bomb(_: web.Request) -> web.StreamResponse:
        return web.Response(body=packed, headers={"Content-Encoding": "gzip"})

    async with (
        serve({"/kling/v1/videos/video-extend/t-1": bomb}) as url,
        gateway_client_at(url) as client,
    ):
        with pytest.raises(TransportError, match="larger than the 4 MiB"):
            await client.get_task("t-1")
    assert len(packed) < 1024 * 1024


CAP = MAX_ANSWER_BYTES
READ_PATH = "/kling/v1/videos/video-extend/t-1"
CREATE_PATH = "/kling/v1/videos/video-extend"


def envelope_of(size: int) -> bytes:
    """A success envelope of exactly `size` bytes, padded with whitespace between tokens, so
    that any byte lost, doubled or added on the way makes it unreadable or another task."""
    head, tail = b'{"code":0,"data":{"task_id":"t-1","task_status":"submitted"}', b"}"
    return head + b" " * (size - len(head) - len(tail)) + tail


def answering(body: bytes, how: str) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """A handler that sends `body` with a Content-Length, in chunks, or gzip-compressed."""

    async def handler(request: web.Request) -> web.StreamResponse:
        if how == "announced":
            return web.Response(body=body, content_type="application/json")
        if how == "compressed":
            packed = gzip.compress(body)
            return web.Response(body=packed, headers={"Content-Encoding": "gzip"})
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        for start in range(0, len(body), 100_003):  # pieces that end mid-token
            await response.write(body[start : start + 100_003])
        return response

    return handler


SENT_HOW = ["announced", "chunked", "compressed"]


@pytest.mark.parametrize("how", SENT_HOW)
async def test_an_answer_of_exactly_the_cap_is_read_whole(how: str) -> None:
    """The cap is inclusive: a 4 MiB answer, however it comes, is read byte for byte."""
    async with (
        serve({READ_PATH: answering(envelope_of(CAP), how)}) as url,
        gateway_client_at(url) as client,
    ):
        task = await client.get_task("t-1")
    assert (task.id, task.status) == ("t-1", TaskStatus.SUBMITTED)


@pytest.mark.parametrize("how", SENT_HOW)
async def test_an_answer_past_the_cap_is_refused_naming_the_request(how: str) -> None:
    """One byte past the cap is refused, with the method, the whole URL and what to check."""
    async with (
        serve({READ_PATH: answering(envelope_of(CAP + 1), how)}) as url,
        gateway_client_at(url) as client,
    ):
        with pytest.raises(TransportError) as caught:
            await client.get_task("t-1")
    detail = (
        f"it announced {CAP + 1} bytes" if how == "announced" else r"more than \d+ bytes arrived"
    )
    assert re.fullmatch(
        f"GET {re.escape(url + READ_PATH)} failed: the answer is larger than the 4 MiB any Kling "
        f"answer fits in \\({detail}\\), so it was not read. Check that the base URL points at "
        "the Kling API.",
        str(caught.value),
    ), str(caught.value)


@pytest.mark.parametrize("how", SENT_HOW)
async def test_a_create_answered_past_the_cap_is_never_resent(how: str) -> None:
    """An answer too large to read may hide a task made: the create is not sent again."""
    posts: list[str] = []

    async def counted(request: web.Request) -> web.StreamResponse:
        posts.append(request.method)
        return await answering(envelope_of(CAP + 1), how)(request)

    retry = RetryPolicy(max_attempts=3)
    async with (
        serve({CREATE_PATH: counted}) as url,
        KlingClient(
            api_key=KEY, base_url=url, dialect="gateway", retry=retry, clock=FakeClock()
        ) as client,
    ):
        with pytest.raises(AmbiguousSubmissionError) as caught:
            await client.extend_video("vid-1", task_id="p-1")
    assert posts == ["POST"]
    assert f"POST {url + CREATE_PATH} failed: the answer is larger than the 4 MiB" in str(
        caught.value
    )


def gateway_client_at(url: str) -> KlingClient:
    """A gateway client for a hand-made server: one attempt, no waiting."""
    retry = RetryPolicy(max_attempts=1)
    return KlingClient(api_key=KEY, base_url=url, dialect="gateway", retry=retry, clock=FakeClock())


async def test_refused_connection_is_retried_then_reported() -> None:
    """Nothing listening: retried (nothing was sent), then a TransportError saying so."""
    async with FakeKlingServer() as server:
        url = server.url
    clock = FakeClock()
    retry = RetryPolicy(max_attempts=3)
    async with KlingClient(api_key=KEY, base_url=url, clock=clock, retry=retry) as client:
        with pytest.raises(TransportError, match="before it was sent") as caught:
            await client.extend_video("vid-1", task_id="p-1")
    assert not caught.value.may_have_been_sent
    assert len(clock.sleeps) == 2
    assert re.fullmatch(
        f"POST {re.escape(url)}/\\S+ failed before it was sent: \\w+ \\(.+\\)\\. "
        "Is the server up\\? Check base_url= \\(KLING_BASE_URL\\)\\.",
        str(caught.value),
    ), str(caught.value)


BAD_ARGUMENTS: list[tuple[dict[str, Any], str]] = [
    ({"video_id": ""}, "video_id"),
    ({"video_id": "   "}, "video_id"),
    ({"video_id": "v", "prompt": "x" * 2501}, "prompt"),
    ({"video_id": "v", "negative_prompt": "x" * 2501}, "negative_prompt"),
    ({"video_id": "v", "cfg_scale": 1.5}, "cfg_scale"),
    ({"video_id": "v", "cfg_scale": -0.1}, "cfg_scale"),
    ({"video_id": "v", "cfg_scale": float("nan")}, "cfg_scale"),
    ({"video_id": "v", "callback_url": "/relative/path"}, "callback_url"),
    ({"video_id": "v", "callback_url": "ftp://example.com/x"}, "callback_url"),
    ({"video_id": "v", "task_id": None}, "task_id"),
    ({"video_id": "v", "callback_url": "https://user:pw-s3cret@hooks.example/k"}, "callback_url"),
    ({"video_id": "v", "callback_url": "https://hooks.example/" + "k" * 2030}, "callback_url"),
    ({"video_id": "v", "callback_url": "http://[::1/broken"}, "callback_url"),
]


@pytest.mark.parametrize(("arguments", "named"), BAD_ARGUMENTS)
async def test_bad_arguments_send_nothing(
    gateway: FakeKlingServer, arguments: dict[str, Any], named: str
) -> None:
    """Each invalid argument is named in a ValueError and no request is made."""
    arguments = {"task_id": "p-1", **arguments}
    async with gateway_client(gateway) as client:
        with pytest.raises(InvalidArgumentError, match=named) as caught:
            await client.extend_video(**arguments)
    assert isinstance(caught.value, ValueError)
    assert "Nothing was sent" in str(caught.value)
    assert gateway.record.requests == []


async def test_callback_url_refusals_do_not_quote_the_url(gateway: FakeKlingServer) -> None:
    """A callback URL with a password is refused without showing the password."""
    url = "https://hook-user:pw-s3cret@hooks.example/k"
    async with gateway_client(gateway) as client:
        with pytest.raises(InvalidArgumentError, match="user name or password") as caught:
            await client.extend_video("v", task_id="p", callback_url=url)
    assert "s3cret" not in str(caught.value) and "hook-user" not in str(caught.value)
    assert gateway.record.create_count == 0


async def test_a_callback_url_of_2048_characters_is_sent(gateway: FakeKlingServer) -> None:
    """The longest callback URL allowed goes out as it is."""
    base = "http://127.0.0.1:9/"  # nothing listens: the fake server's callbacks go nowhere
    url = base + "k" * (2048 - len(base))
    async with gateway_client(gateway) as client:
        await client.extend_video("v", task_id="p", callback_url=url)
    assert gateway.record.requests[0].body == {"video_id": "v", "task_id": "p", "callback_url": url}


@pytest.mark.parametrize("task_id", ["", "  ", ".", ".."])
async def test_empty_task_id_sends_nothing(gateway: FakeKlingServer, task_id: str) -> None:
    """get_task('') (or a path trick) is rejected before sending; so is watch('')."""
    async with gateway_client(gateway) as client:
        with pytest.raises(InvalidArgumentError):
            await client.get_task(task_id)
        with pytest.raises(InvalidArgumentError):
            client.watch(task_id)
        with pytest.raises(InvalidArgumentError):
            client.watch(Task(task_id, TaskKind.VIDEO_EXTEND, TaskStatus.SUBMITTED))
    assert gateway.record.requests == []


async def test_a_watched_task_id_is_stripped_like_get_task_does(gateway: FakeKlingServer) -> None:
    """A task whose id came with spaces around it is watched under the bare id."""
    async with gateway_client(gateway) as client:
        created = await client.extend_video("vid-1", task_id="p-1")
        padded = attrs.evolve(created, id=f"  {created.id} ")
        finished = await client.watch(padded)
    assert finished.id == created.id


@pytest.mark.parametrize("rate", [1000.0, None], ids=["limited", "limiter-added-later"])
async def test_every_request_takes_one_slot_of_the_rate_limit(
    gateway: FakeKlingServer, rate: float | None
) -> None:
    """Creates, watchers' polls and their retries each take exactly one slot: a watcher
    waits for its poll's slot while it sleeps, and the GET then takes no second one."""
    retry = RetryPolicy(max_delay=0.05)  # a watcher's failed read is read again a cap later
    async with gateway_client(gateway, requests_per_second=rate, retry=retry) as client:
        limiter = CountingLimiter(1000.0, clock=SystemClock())
        client._transport.limiter = limiter
        gateway.faults.push(Fault.http_error(500, 5000, "boom"), method="GET")
        gateway.faults.push(Fault.http_error(401, 1004, "token expired"), method="GET")
        tasks = [await client.extend_video(f"vid-{n}", task_id="p-1") for n in range(3)]
        async with anyio.create_task_group() as group:
            for task in tasks:
                group.start_soon(client.watch(task).result)
    assert limiter.asked == len(gateway.record.requests) > 3 + 3


async def test_watched_snapshots_share_their_keys() -> None:
    """What a watcher holds between polls equals the task as read, with keys shared
    between watchers (thousands of held snapshots need not each own their key strings)."""
    # Real-time tasks (processing at once, done in two minutes): none can finish between the
    # watchers' reads and the last one, however slowly a loaded machine runs the test.
    durations = Durations(submitted_for=0.0)
    async with (
        FakeKlingServer(dialect="gateway", api_key=KEY, speed=1.0, durations=durations) as gateway,
        gateway_client(gateway) as client,
    ):
        tasks = [await client.extend_video(f"vid-{n}", task_id="p-1") for n in range(2)]
        watchers = [client.watch(task) for task in tasks]
        for watcher in watchers:
            async for _ in watcher:
                break
        read = (await client.get_task(tasks[0].id)).raw
    first, second = (watcher.last.raw for watcher in watchers if watcher.last is not None)
    assert first.keys() == read.keys()
    assert {key: type(value) for key, value in first.items()} == {
        key: type(value) for key, value in read.items()
    }
    shared = dict.fromkeys(second)
    assert all(any(key is other for other in shared) for key in first)
    inner = first["task_info"]["parent_video"], second["task_info"]["parent_video"]
    assert all(any(key is other for other in inner[1]) for key in inner[0])


async def test_odd_task_ids_are_quoted(gateway: FakeKlingServer) -> None:
    """An id with characters that mean something in a URL is sent quoted."""
    async with gateway_client(gateway, clock=FakeClock()) as client:
        with pytest.raises(NotFoundError):
            await client.get_task("a/b?c#d")
    assert gateway.record.requests[0].path == "/kling/v1/videos/video-extend/a/b?c#d"


@pytest.mark.parametrize(
    ("task_id", "segment"),
    [
        ("874200190", "874200190"),
        ("a1B2-c3_d4.e5~", "a1B2-c3_d4.e5~"),
        ("vidéo", "vid%C3%A9o"),  # a letter, but not ASCII: quoted as before
        ("²", "%C2%B2"),  # a digit to str.isalnum, not to a URL
        ("a b", "a%20b"),
    ],
)
def test_task_paths_quote_all_but_plain_ids(task_id: str, segment: str) -> None:
    """Plain ids go into the path as they are, anything else percent-encoded."""
    from kling_async._dialects import task_path

    assert task_path(TaskKind.VIDEO_EXTEND, task_id) == f"/v1/videos/video-extend/{segment}"


async def test_list_tasks_walks_pages(official: FakeKlingServer) -> None:
    """list_tasks yields every task, newest first, across pages."""
    async with official_client(official) as client:
        made = [(await client.extend_video(f"vid-{n}")).id for n in range(5)]
        listed = [task.id async for task in client.list_tasks(page_size=2)]
    assert listed == list(reversed(made))
    pages = [r.query.get("pageNum") for r in official.record.requests if r.method == "GET"]
    assert pages == ["1", "2", "3"]


async def test_list_tasks_is_refused_on_a_gateway(gateway: FakeKlingServer) -> None:
    """Gateways have no list endpoint: a clear error, nothing sent."""
    async with gateway_client(gateway) as client:
        with pytest.raises(ConfigurationError, match="no list endpoint"):
            async for _ in client.list_tasks():
                pass
    assert gateway.record.requests == []


@pytest.mark.parametrize("page_size", [0, 501, 30.5, "30", True])
async def test_list_tasks_refuses_a_page_size_the_api_does_not_take(
    official: FakeKlingServer, page_size: object
) -> None:
    """pageSize is a whole number from 1 to 500: anything else is refused, nothing sent."""
    async with official_client(official) as client:
        with pytest.raises(InvalidArgumentError, match="page_size must be a whole number"):
            async for _ in client.list_tasks(page_size=page_size):  # type: ignore[arg-type]
                pass
    assert official.record.requests == []


async def test_get_task_by_external_id(official: FakeKlingServer) -> None:
    """On the official API a task can be read by the caller's own id."""
    async with official_client(official) as client:
        created = await client.extend_video("vid-1", external_task_id="order-42")
        found = await client.get_task("order-42")
    assert found.id == created.id


async def test_client_closes_its_own_session(gateway: FakeKlingServer) -> None:
    """A session the client made is closed when the client closes."""
    async with gateway_client(gateway) as client:
        await client.extend_video("vid-1", task_id="p-1")
        session = client._transport.session
    assert session.closed


async def test_client_leaves_a_given_session_open(gateway: FakeKlingServer) -> None:
    """A session passed in stays the caller's: not closed by the client."""
    async with aiohttp.ClientSession() as session:
        async with gateway_client(gateway, session=session) as client:
            await client.extend_video("vid-1", task_id="p-1")
        assert not session.closed


@pytest.mark.parametrize(
    ("environ", "dialect", "auth"),
    [
        ({"KLING_API_KEY": "k", "KLING_BASE_URL": "https://api.elkapi.com"}, "gateway", "Bearer"),
        ({"KLING_API_KEY": "k"}, "official", "Bearer"),
        (
            {"KLING_ACCESS_KEY": "a", "KLING_SECRET_KEY": "s" * 32},
            "official",
            "JWT",
        ),
        (
            {"KLING_API_KEY": "k", "KLING_BASE_URL": "https://x.test", "KLING_DIALECT": "official"},
            "official",
            "Bearer",
        ),
    ],
)
def test_from_env(environ: dict[str, str], dialect: str, auth: str) -> None:
    """from_env reads keys, base URL and dialect; the dialect follows the host."""
    client = KlingClient.from_env(environ)
    assert client.dialect == dialect
    assert auth in repr(client)


@pytest.mark.parametrize(
    ("kwargs", "says"),
    [
        ({}, "No credentials"),
        ({"access_key": "a"}, "secret_key"),
        ({"api_key": "k", "access_key": "a", "secret_key": "s"}, "not both"),
        ({"access_key": "a", "secret_key": "s", "base_url": "https://gw.test"}, "api_key"),
        ({"api_key": "k", "dialect": "martian"}, "dialect"),
        ({"api_key": "k", "base_url": "ftp://x"}, "base_url"),
        ({"api_key": "k", "base_url": ""}, r"base_url= \(KLING_BASE_URL\) .* '' is empty"),
        ({"api_key": "k", "base_url": "http://10.0.0.1.8080"}, "neither an IP address"),
        ({"api_key": "k", "requests_per_second": float("nan")}, "requests_per_second"),
        ({"api_key": "k", "requests_per_second": 0}, "requests_per_second"),
        ({"api_key": "k", "timeout": float("inf")}, "timeout"),
    ],
)
def test_bad_configuration_is_explained(kwargs: dict[str, str], says: str) -> None:
    """Inconsistent settings raise ConfigurationError saying what to fix."""
    with pytest.raises(ConfigurationError, match=says):
        KlingClient(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("environ", "says"),
    [
        ({"KLING_API_KEY": "k", "KLING_ACCESS_KEY": "a", "KLING_SECRET_KEY": "s"}, "not both"),
        ({"KLING_API_KEY": "k", "KLING_BASE_URL": ""}, "is empty"),
    ],
)
def test_from_env_reports_inconsistent_settings(environ: dict[str, str], says: str) -> None:
    """A key and a key pair both in the environment, or an empty base URL, are refused."""
    with pytest.raises(ConfigurationError, match=says):
        KlingClient.from_env(environ)


def test_a_credential_argument_replaces_the_environments() -> None:
    """from_env(api_key=...) wins over a key pair in the environment instead of clashing."""
    environ = {"KLING_ACCESS_KEY": "a", "KLING_SECRET_KEY": "s" * 32}
    assert "Bearer" in repr(KlingClient.from_env(environ, api_key="k"))


def test_gateway_base_url_with_prefix_is_not_doubled() -> None:
    """A gateway URL given with /kling already on it works the same."""
    client = KlingClient(api_key="k", base_url="https://gw.test/kling/")
    assert client._transport.base_url == "https://gw.test/kling"


async def test_errors_leave_the_client_block_unwrapped(gateway: FakeKlingServer) -> None:
    """An error raised inside `async with client` reaches the caller as itself."""
    with pytest.raises(NotFoundError):
        async with gateway_client(gateway) as client:
            await client.get_task("no-such-task")


async def test_download_a_task_result(gateway: FakeKlingServer, tmp_path: Path) -> None:
    """client.download writes the task's video under its id, byte for byte."""
    async with gateway_client(gateway, allow_private_downloads=True) as client:
        task = await client.extend_and_wait("vid-1", task_id="p-1")
        path = await client.download(task, tmp_path)
        async with client._transport.session.get(task.videos[0].url) as answer:
            expected = await answer.read()
    assert path == tmp_path / f"{task.videos[0].id}.mp4"
    assert path.read_bytes() == expected


async def test_download_makes_a_missing_folder(gateway: FakeKlingServer, tmp_path: Path) -> None:
    """download(task, "videos/") works before the folder exists, as the README shows."""
    async with gateway_client(gateway, allow_private_downloads=True) as client:
        task = await client.extend_and_wait("vid-1", task_id="p-1")
        path = await client.download(task, f"{tmp_path}/videos/")
    assert path == tmp_path / "videos" / f"{task.videos[0].id}.mp4"
    assert path.stat().st_size > 0


async def test_downloads_from_private_addresses_need_the_opt_in(
    gateway: FakeKlingServer, tmp_path: Path
) -> None:
    """By default a result on 127.0.0.1 is refused before connecting, naming the opt-in."""
    async with gateway_client(gateway) as client:
        task = await client.extend_and_wait("vid-1", task_id="p-1")
        with pytest.raises(DownloadError, match=r"refused to connect to 127\.0\.0\.1") as caught:
            await client.download(task, tmp_path)
    assert "allow_private_downloads=True" in str(caught.value)
    assert not [r for r in gateway.record.requests if r.path.startswith("/files/")]
    assert list(tmp_path.iterdir()) == []


async def test_download_of_an_unfinished_task_is_refused(gateway: FakeKlingServer) -> None:
    """A task that has not succeeded has nothing to download: a clear error."""
    async with gateway_client(gateway) as client:
        task = await client.extend_video("vid-1", task_id="p-1")
        with pytest.raises(InvalidArgumentError, match="no video to download"):
            await client.download(task, ".")


async def test_a_closed_client_refuses_to_send(gateway: FakeKlingServer) -> None:
    """After its block ends, a client says it is closed instead of opening a new session."""
    client = gateway_client(gateway)
    async with client:
        await client.extend_video("vid-1", task_id="p-1")
    with pytest.raises(ConfigurationError, match="closed"):
        await client.get_task("x")
    async with client:  # opening it again is fine
        await client.extend_video("vid-2", task_id="p-2")


async def test_short_keys_do_not_mangle_messages() -> None:
    """Scrubbing a (short) key from a quoted answer leaves other words alone."""
    async with FakeKlingServer(dialect="gateway", api_key="k") as server:
        server.faults.push(Fault.gateway_error(400, "bad", "keep k out of knock-knock jokes"))
        async with KlingClient(api_key="k", base_url=server.url, dialect="gateway") as client:
            with pytest.raises(APIError) as caught:
                await client.get_task("x")
    assert "keep <hidden> out of knock-knock jokes" in str(caught.value)


async def test_a_server_error_under_http_200_is_not_resent(gateway: FakeKlingServer) -> None:
    """A 5002 'internal timeout' envelope may hide a made task even under HTTP 200."""
    gateway.faults.push(Fault.http_error(200, 5002, "server internal timeout"), method="POST")
    async with gateway_client(gateway, clock=FakeClock()) as client:
        with pytest.raises(AmbiguousSubmissionError):
            await client.extend_video("vid-1", task_id="p-1")
    assert len([r for r in gateway.record.requests if r.method == "POST"]) == 1
