"""Tests of the fake Kling server, spoken to with a plain aiohttp client (not kling_async)."""

from __future__ import annotations

import base64
import gzip
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import anyio
import pytest

from kling_async.testing import Durations, FakeKlingServer, Fault

pytest_plugins = ["pytester"]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


KEY = "test-api-key"
ACCESS, SECRET = "ak-test", "sk-test"
EXTEND = "/v1/videos/video-extend"
STEPPED = Durations(submitted_for=5.0, median=100.0, sigma=0.0)


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def stepped(clock: Clock, **kwargs: Any) -> FakeKlingServer:
    """A server whose tasks take exactly 100 s, one service second per clock unit."""
    return FakeKlingServer(durations=STEPPED, speed=1.0, monotonic=clock, **kwargs)


def prefix(server: FakeKlingServer) -> str:
    return server.url + ("/kling" if server.dialect == "gateway" else "")


def extend_body(server: FakeKlingServer, video_id: str = "v-1", **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"video_id": video_id, **extra}
    if server.dialect == "gateway":
        body.setdefault("task_id", "parent-task")
    return body


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {KEY}"}) as session:
        yield session


@pytest.fixture
def clock() -> Clock:
    return Clock()


async def call(
    http: aiohttp.ClientSession, method: str, url: str, **kwargs: Any
) -> tuple[int, Any]:
    async with http.request(method, url, **kwargs) as response:
        text = await response.text()
        try:
            return response.status, json.loads(text)
        except ValueError:
            return response.status, text


async def create(http: aiohttp.ClientSession, server: FakeKlingServer, **extra: Any) -> str:
    status, body = await call(
        http, "POST", prefix(server) + EXTEND, json=extend_body(server, **extra)
    )
    assert (status, body["code"]) == (200, 0), body
    task_id: str = body["data"]["task_id"]
    return task_id


async def get(http: aiohttp.ClientSession, server: FakeKlingServer, ref: str) -> dict[str, Any]:
    status, body = await call(http, "GET", f"{prefix(server)}{EXTEND}/{ref}")
    assert (status, body["code"]) == (200, 0), body
    data: dict[str, Any] = body["data"]
    return data


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def make_jwt(claims: dict[str, Any], secret: str = SECRET) -> str:
    header = b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    payload = b64url(json.dumps(claims).encode())
    signature = hmac.new(secret.encode(), f"{header}.{payload}".encode(), hashlib.sha256).digest()
    return f"{header}.{payload}.{b64url(signature)}"


# --- task lifecycle ---------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("dialect", ["official", "gateway"])
async def test_task_walks_to_succeed(
    dialect: str, http: aiohttp.ClientSession, clock: Clock
) -> None:
    """Both dialects: create answers submitted, then GET walks processing -> succeed."""
    async with stepped(clock, dialect=dialect) as server:
        status, body = await call(
            http, "POST", prefix(server) + EXTEND, json=extend_body(server, prompt="more")
        )
        assert status == 200
        assert body["code"] == 0
        assert body["message"] == "SUCCEED"
        assert body["request_id"]
        task_id = body["data"]["task_id"]
        assert body["data"]["task_status"] == "submitted"
        assert isinstance(body["data"]["created_at"], int)
        seen = []
        for moment in (0.0, 4.9, 5.0, 99.9, 100.0):
            clock.now = 1000.0 + moment
            seen.append((await get(http, server, task_id))["task_status"])
        assert seen == ["submitted", "submitted", "processing", "processing", "succeed"]
        done = await get(http, server, task_id)
        video = done["task_result"]["videos"][0]
        assert video["url"] == f"{server.url}/files/{video['id']}.mp4"
        assert isinstance(video["duration"], str)
        assert float(video["duration"]) > 5.0
        assert done["task_status_msg"] == ""
        assert done["final_unit_deduction"]
        assert done["task_info"]["parent_video"]["id"] == "v-1"
        assert done["updated_at"] - done["created_at"] == 100_000


@pytest.mark.anyio
async def test_failed_task_has_message(http: aiohttp.ClientSession, clock: Clock) -> None:
    """With fail_rate=1 every task ends failed, with a message and no result."""
    messages = ("blocked by policy",)
    async with stepped(clock, fail_rate=1.0, failure_messages=messages) as server:
        task_id = await create(http, server)
        assert (await get(http, server, task_id))["task_status_msg"] == ""
        clock.now += 100.0
        data = await get(http, server, task_id)
        assert data["task_status"] == "failed"
        assert data["task_status_msg"] == "blocked by policy"
        assert "task_result" not in data
        assert server.task_status(task_id) == "failed"


@pytest.mark.anyio
async def test_real_clock_progresses_with_speed(http: aiohttp.ClientSession) -> None:
    """With the real clock, speed scales service seconds to wall seconds."""
    durations = Durations(submitted_for=1.0, median=20.0, sigma=0.0)
    async with FakeKlingServer(durations=durations, speed=1000.0) as server:
        task_id = await create(http, server)
        await anyio.sleep(0.03)
        assert (await get(http, server, task_id))["task_status"] == "succeed"


# --- auth -------------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("claims", "secret", "expected"),
    [
        ({"iss": ACCESS, "exp": 1_001_800, "nbf": 999_995}, SECRET, 0),
        ({"iss": ACCESS, "exp": 1_000_000, "nbf": 999_000}, SECRET, 1004),
        ({"iss": ACCESS, "exp": 1_002_000, "nbf": 1_000_010}, SECRET, 1003),
        ({"iss": ACCESS, "exp": 1_001_800, "nbf": 999_995}, "wrong-secret", 1002),
        ({"iss": "someone-else", "exp": 1_001_800, "nbf": 999_995}, SECRET, 1002),
        ({"iss": ACCESS, "exp": "1001800", "nbf": 999_995}, SECRET, 1002),
    ],
    ids=["good", "expired", "not-yet-valid", "bad-signature", "wrong-iss", "string-exp"],
)
async def test_official_jwt(claims: dict[str, Any], secret: str, expected: int) -> None:
    """Official JWTs are checked for signature, issuer, nbf and exp against the wall clock."""
    server = FakeKlingServer(
        dialect="official", api_key=None, access_key=ACCESS, secret_key=SECRET,
        wall_clock=lambda: 1_000_000.0,
    )  # fmt: skip
    headers = {"Authorization": f"Bearer {make_jwt(claims, secret)}"}
    async with server, aiohttp.ClientSession(headers=headers) as session:
        status, body = await call(session, "GET", f"{server.url}{EXTEND}")
    assert body["code"] == expected
    assert status == (200 if expected == 0 else 401)
    if expected:
        assert "request_id" not in body


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("header", "code"),
    [(None, 1001), ("Bearer nonsense", 1002), ("Basic abc", 1002), ("Bearer a.b.c", 1002)],
)
async def test_official_bad_header(header: str | None, code: int) -> None:
    """Official: no header is 1001, anything unverifiable is 1002."""
    server = FakeKlingServer(dialect="official", access_key=ACCESS, secret_key=SECRET)
    headers = {} if header is None else {"Authorization": header}
    async with server, aiohttp.ClientSession(headers=headers) as session:
        status, body = await call(session, "GET", f"{server.url}{EXTEND}")
    assert (status, body["code"]) == (401, code)


@pytest.mark.anyio
async def test_gateway_bad_key_gets_openai_error() -> None:
    """A gateway refuses a wrong key with its own OpenAI-like body."""
    headers = {"Authorization": "Bearer wrong"}
    async with FakeKlingServer() as server, aiohttp.ClientSession(headers=headers) as session:
        status, body = await call(session, "GET", f"{server.url}/kling{EXTEND}/123")
    assert status == 401
    assert body == {
        "error": {"message": "Invalid API key provided", "type": "invalid_request_error"}
    }


# --- create validation ------------------------------------------------------------------


LONG = "x" * 2501


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("dialect", "payload", "code", "needle"),
    [
        ("official", [1, 2], 1200, "JSON object"),
        ("official", {"prompt": "hi"}, 1200, "video_id is required"),
        ("official", {"video_id": ""}, 1200, "video_id is required"),
        ("official", {"video_id": 7}, 1200, "video_id is required"),
        ("official", {"video_id": "v", "prompt": LONG}, 1201, "prompt"),
        ("official", {"video_id": "v", "negative_prompt": LONG}, 1201, "negative_prompt"),
        ("official", {"video_id": "v", "cfg_scale": 1.5}, 1201, "cfg_scale"),
        ("official", {"video_id": "v", "cfg_scale": "0.5"}, 1201, "cfg_scale"),
        ("official", {"video_id": "v", "cfg_scale": True}, 1201, "cfg_scale"),
        ("official", {"video_id": "v", "callback_url": "/hook"}, 1201, "callback_url"),
        ("official", {"video_id": "v", "callback_url": "ftp://h/x"}, 1201, "callback_url"),
        ("gateway", {"video_id": "v"}, 1200, "task_id is required"),
    ],
)
async def test_create_validation(
    dialect: str, payload: Any, code: int, needle: str, http: aiohttp.ClientSession
) -> None:
    """Each invalid create body gets its official code and a message naming the field."""
    async with FakeKlingServer(dialect=dialect) as server:
        status, body = await call(http, "POST", prefix(server) + EXTEND, json=payload)
        assert (status, body["code"]) == (400, code)
        assert needle in body["message"]
        assert body["request_id"]
        assert server.record.create_count == 0


@pytest.mark.anyio
async def test_create_with_non_json_body(http: aiohttp.ClientSession) -> None:
    """A body that is not JSON at all is a 1200."""
    async with FakeKlingServer(dialect="official") as server:
        status, body = await call(http, "POST", server.url + EXTEND, data=b"{not json")
    assert (status, body["code"]) == (400, 1200)


@pytest.mark.anyio
async def test_duplicate_external_task_id(http: aiohttp.ClientSession) -> None:
    """Official: reusing an external_task_id is refused with 1201."""
    async with FakeKlingServer(dialect="official") as server:
        await create(http, server, external_task_id="mine-1")
        body = extend_body(server, external_task_id="mine-1")
        status, answer = await call(http, "POST", server.url + EXTEND, json=body)
        assert (status, answer["code"]) == (400, 1201)
        assert "already used" in answer["message"]
        assert server.record.create_count == 1


@pytest.mark.anyio
async def test_unknown_video_official(http: aiohttp.ClientSession) -> None:
    """Official with require_known_videos: an unknown video is 404 / 1203, a seeded one works."""
    async with FakeKlingServer(dialect="official", require_known_videos=True) as server:
        status, body = await call(http, "POST", server.url + EXTEND, json={"video_id": "nope"})
        assert (status, body["code"]) == (404, 1203)
        server.add_video("seeded")
        await create(http, server, video_id="seeded")


@pytest.mark.anyio
async def test_unknown_parent_gateway(http: aiohttp.ClientSession, clock: Clock) -> None:
    """Gateway: an unknown parent task is task_not_exist; a succeeded task's video is known."""
    async with stepped(clock, require_known_videos=True) as server:
        body = {"video_id": "v", "task_id": "ghost"}
        status, answer = await call(http, "POST", prefix(server) + EXTEND, json=body)
        assert status == 400
        assert answer == {"code": "task_not_exist", "message": answer["message"], "data": None}
        server.add_video("v", "parent")
        first = await create(http, server, video_id="v", task_id="parent")
        clock.now += 100.0
        video_id = (await get(http, server, first))["task_result"]["videos"][0]["id"]
        await create(http, server, video_id=video_id, task_id=first)
        assert server.record.creates_for(video_id) == 1


# --- concurrency ------------------------------------------------------------------------


@pytest.mark.anyio
async def test_max_concurrent_refuses_with_1303(http: aiohttp.ClientSession, clock: Clock) -> None:
    """Over max_concurrent a create gets 429 / 1303 and makes no task; a freed slot is reused."""
    async with stepped(clock, max_concurrent=2) as server:
        await create(http, server)
        await create(http, server)
        status, body = await call(http, "POST", prefix(server) + EXTEND, json=extend_body(server))
        assert (status, body["code"]) == (429, 1303)
        assert body["message"]
        assert server.record.create_count == 2
        clock.now += 100.0
        await create(http, server)
        assert server.record.peak_concurrent == 2


@pytest.mark.anyio
async def test_peak_concurrent_is_exact(http: aiohttp.ClientSession, clock: Clock) -> None:
    """peak_concurrent counts tasks whose [created, end) intervals overlap, no more."""
    async with stepped(clock) as server:
        # Tasks last 100: at 100 the first has just ended, at 200 only the new one runs.
        for start in (0.0, 50.0, 90.0, 100.0, 200.0):
            clock.now = 1000.0 + start
            await create(http, server)
        assert server.record.peak_concurrent == 3


# --- queries ----------------------------------------------------------------------------


@pytest.mark.anyio
async def test_list_pages_newest_first(http: aiohttp.ClientSession) -> None:
    """Official list: newest first, paged by pageNum/pageSize."""
    async with FakeKlingServer(dialect="official") as server:
        ids = [await create(http, server) for _ in range(5)]
        status, body = await call(
            http, "GET", server.url + EXTEND, params={"pageNum": "2", "pageSize": "2"}
        )
        assert status == 200
        assert [t["task_id"] for t in body["data"]] == [ids[2], ids[1]]


@pytest.mark.anyio
@pytest.mark.parametrize(
    "params", [{"pageSize": "0"}, {"pageSize": "501"}, {"pageSize": "x"}, {"pageNum": "1001"}]
)
async def test_list_bad_page(params: dict[str, str], http: aiohttp.ClientSession) -> None:
    """Out-of-range list parameters are 400 / 1201."""
    async with FakeKlingServer(dialect="official") as server:
        status, body = await call(http, "GET", server.url + EXTEND, params=params)
    assert (status, body["code"]) == (400, 1201)


@pytest.mark.anyio
async def test_gateway_has_no_list(http: aiohttp.ClientSession) -> None:
    """The gateway dialect has no list endpoint: a 404 in the API's envelope."""
    async with FakeKlingServer() as server:
        status, body = await call(http, "GET", f"{server.url}/kling{EXTEND}")
    assert (status, body["code"]) == (404, 1203)
    assert body["message"] == (f"no API at GET /kling{EXTEND}; check the base URL and the dialect")


@pytest.mark.anyio
@pytest.mark.parametrize(("dialect", "found"), [("official", True), ("gateway", False)])
async def test_lookup_by_external_id(
    dialect: str, found: bool, http: aiohttp.ClientSession
) -> None:
    """Only the official dialect finds a task by its external_task_id."""
    async with FakeKlingServer(dialect=dialect) as server:
        task_id = await create(http, server, external_task_id="ext-42")
        status, body = await call(http, "GET", f"{prefix(server)}{EXTEND}/ext-42")
    if found:
        assert body["data"]["task_id"] == task_id
        assert body["data"]["task_info"]["external_task_id"] == "ext-42"
    else:
        assert (status, body["code"]) == (404, 1203)


@pytest.mark.anyio
async def test_other_kind_path_is_not_found(http: aiohttp.ClientSession) -> None:
    """A task queried under another family/action is 1203; unknown ids too."""
    async with FakeKlingServer(dialect="official") as server:
        task_id = await create(http, server)
        status, body = await call(http, "GET", f"{server.url}/v1/videos/text2video/{task_id}")
        assert (status, body["code"]) == (404, 1203)
        status, body = await call(http, "GET", f"{server.url}{EXTEND}/does-not-exist")
        assert (status, body["code"]) == (404, 1203)


@pytest.mark.anyio
async def test_wrong_method_is_1202(http: aiohttp.ClientSession) -> None:
    """A method a path does not serve is 404 / 1202."""
    async with FakeKlingServer(dialect="official") as server:
        status, body = await call(http, "DELETE", f"{server.url}{EXTEND}/1")
    assert (status, body["code"]) == (404, 1202)


# --- faults -----------------------------------------------------------------------------


@pytest.mark.anyio
async def test_drop_creates_nothing(http: aiohttp.ClientSession) -> None:
    """Fault.drop: the client sees a disconnect and no task exists."""
    async with FakeKlingServer() as server:
        server.faults.push(Fault.drop(), method="POST")
        with pytest.raises(aiohttp.ServerDisconnectedError):
            await call(http, "POST", prefix(server) + EXTEND, json=extend_body(server))
        assert server.record.create_count == 0
        assert server.record.requests[-1].status is None
        assert server.record.requests[-1].fault == "drop"


@pytest.mark.anyio
async def test_drop_on_get_is_retried_once_by_aiohttp(http: aiohttp.ClientSession) -> None:
    """aiohttp re-sends an idempotent request once after a drop: it takes two to surface."""
    async with FakeKlingServer() as server:
        task_id = await create(http, server)
        server.faults.push(Fault.drop(), method="GET")
        await get(http, server, task_id)
        server.faults.push(Fault.drop(), method="GET", times=2)
        with pytest.raises(aiohttp.ServerDisconnectedError):
            await get(http, server, task_id)
        assert server.record.polls(task_id) == 1


@pytest.mark.anyio
async def test_hold_answer_creates_then_waits_for_release(http: aiohttp.ClientSession) -> None:
    """Fault.hold_answer: the task exists while its answer is held; release sends it."""
    async with FakeKlingServer() as server, anyio.create_task_group() as group:
        server.faults.push(Fault.hold_answer(), method="POST")
        answers: list[tuple[int, Any]] = []

        async def send() -> None:
            answers.append(
                await call(http, "POST", prefix(server) + EXTEND, json=extend_body(server))
            )

        group.start_soon(send)
        await server.held()
        assert server.record.create_count == 1
        assert answers == []
        server.release_held()
    ((status, body),) = answers
    assert (status, body["data"]["task_id"]) == (200, server.record.created[0])


@pytest.mark.anyio
async def test_drop_after_create_creates_one(http: aiohttp.ClientSession) -> None:
    """Fault.drop_after_create: a disconnect on the client, yet one task was created."""
    async with FakeKlingServer() as server:
        server.faults.push(Fault.drop_after_create(), method="POST")
        with pytest.raises(aiohttp.ServerDisconnectedError):
            await call(http, "POST", prefix(server) + EXTEND, json=extend_body(server))
        assert server.record.create_count == 1
        record = server.record.requests[-1]
        assert record.task_id == server.record.created[0]
        assert record.status is None


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("fault", "status", "code", "retry_after"),
    [
        (Fault.http_error(retry_after=0.5), 500, 5000, "0.5"),
        (Fault.http_error(503, 5001, "busy", retry_after=3), 503, 5001, "3"),
        (
            Fault.http_error(503, 5001, retry_after="Wed, 21 Oct 2015 07:28:00 GMT"),
            503,
            5001,
            "Wed, 21 Oct 2015 07:28:00 GMT",
        ),
        (Fault.rate_limited(), 429, 1302, "2"),
        (Fault.rate_limited(retry_after=None, code=1303), 429, 1303, None),
    ],
)
async def test_http_error_faults(
    fault: Fault, status: int, code: int, retry_after: str | None, http: aiohttp.ClientSession
) -> None:
    """Envelope error faults carry their status, code and Retry-After, and create nothing."""
    async with FakeKlingServer() as server:
        server.faults.push(fault)
        url = prefix(server) + EXTEND
        async with http.post(url, json=extend_body(server)) as response:
            body = await response.json()
            assert (response.status, body["code"]) == (status, code)
            assert response.headers.get("Retry-After") == retry_after
        assert server.record.create_count == 0


@pytest.mark.anyio
async def test_html_fault(http: aiohttp.ClientSession) -> None:
    """Fault.html: a proxy's text/html 502 page, nothing created."""
    async with FakeKlingServer() as server:
        server.faults.push(Fault.html())
        async with http.post(prefix(server) + EXTEND, json=extend_body(server)) as response:
            assert response.status == 502
            assert response.content_type == "text/html"
            assert "502 Bad Gateway" in await response.text()
        assert server.record.create_count == 0


@pytest.mark.anyio
async def test_gateway_shaped_faults(http: aiohttp.ClientSession) -> None:
    """gateway_error and openai_error faults produce the gateways' own bodies."""
    async with FakeKlingServer() as server:
        server.faults.push(Fault.gateway_error(message="gone"))
        server.faults.push(Fault.openai_error(429, "quota exceeded", "insufficient_quota"))
        url = prefix(server) + EXTEND
        first = await call(http, "POST", url, json=extend_body(server))
        second = await call(http, "POST", url, json=extend_body(server))
    assert first == (400, {"code": "task_not_exist", "message": "gone", "data": None})
    assert second == (429, {"error": {"message": "quota exceeded", "type": "insufficient_quota"}})


@pytest.mark.anyio
async def test_malformed_fault_still_creates(http: aiohttp.ClientSession) -> None:
    """Fault.malformed: HTTP 200 with unparsable JSON, after really creating the task."""
    async with FakeKlingServer() as server:
        server.faults.push(Fault.malformed(), method="POST")
        status, body = await call(http, "POST", prefix(server) + EXTEND, json=extend_body(server))
        assert status == 200
        assert isinstance(body, str)
        assert body.startswith('{"code": 0')
        assert server.record.create_count == 1


@pytest.mark.anyio
async def test_status_override(http: aiohttp.ClientSession) -> None:
    """Fault.status reports another task_status once; the task itself is unchanged."""
    async with FakeKlingServer(durations=STEPPED, speed=1.0) as server:
        task_id = await create(http, server)
        server.faults.push(Fault.status("queueing"), path_contains=task_id)
        assert (await get(http, server, task_id))["task_status"] == "queueing"
        assert (await get(http, server, task_id))["task_status"] == "submitted"


@pytest.mark.anyio
async def test_stale_fault_answers_an_older_copy(http: aiohttp.ClientSession, clock: Clock) -> None:
    """Fault.stale answers the task as it was some service seconds ago (default: created)."""
    async with stepped(clock) as server:
        task_id = await create(http, server)
        clock.now += 100
        server.faults.push(Fault.stale(50), path_contains=task_id)
        server.faults.push(Fault.stale(), path_contains=task_id)
        lagging = await get(http, server, task_id)
        oldest = await get(http, server, task_id)
        now = await get(http, server, task_id)
    assert [lagging["task_status"], oldest["task_status"]] == ["processing", "submitted"]
    assert oldest["updated_at"] < lagging["updated_at"] < now["updated_at"]
    assert "task_result" not in lagging
    assert now["task_status"] == "succeed"


@pytest.mark.anyio
@pytest.mark.parametrize(("empty_list", "videos"), [(False, None), (True, [])])
async def test_no_videos_fault(
    http: aiohttp.ClientSession, clock: Clock, empty_list: bool, videos: list[Any] | None
) -> None:
    """Fault.no_videos reports succeed with videos null or []; the task itself goes on."""
    async with stepped(clock) as server:
        task_id = await create(http, server)
        server.faults.push(Fault.no_videos(empty_list=empty_list), path_contains=task_id)
        broken = await get(http, server, task_id)
        real = await get(http, server, task_id)
    assert broken["task_status"] == "succeed"
    assert broken["task_result"] == {"videos": videos}
    assert real["task_status"] == "submitted"


@pytest.mark.anyio
async def test_delay_fault(http: aiohttp.ClientSession) -> None:
    """Fault.delay answers normally after the given wall time."""
    async with FakeKlingServer() as server:
        server.faults.push(Fault.delay(0.2))
        started = time.monotonic()
        await create(http, server)
        assert time.monotonic() - started >= 0.2


@pytest.mark.anyio
async def test_delay_past_client_timeout_still_creates(http: aiohttp.ClientSession) -> None:
    """A client that times out during a delay leaves an ambiguous create: the task exists."""
    async with FakeKlingServer() as server:
        server.faults.push(Fault.delay(0.15), method="POST")
        timeout = aiohttp.ClientTimeout(total=0.05)
        url = prefix(server) + EXTEND
        with pytest.raises(TimeoutError):
            await call(http, "POST", url, json=extend_body(server), timeout=timeout)
        await anyio.sleep(0.25)
        assert server.record.create_count == 1
        assert server.record.requests[-1].fault == "delay"


@pytest.mark.anyio
async def test_close_does_not_wait_for_a_long_delay(http: aiohttp.ClientSession) -> None:
    """Closing the server cancels a handler stuck in a long delay after a short grace."""
    server = FakeKlingServer()
    async with server:
        server.faults.push(Fault.delay(30))
        timeout = aiohttp.ClientTimeout(total=0.05)
        with pytest.raises(TimeoutError):
            await call(http, "GET", f"{prefix(server)}{EXTEND}/1", timeout=timeout)
        started = time.monotonic()
    assert time.monotonic() - started < 2.0
    assert server.record.requests[-1].status is None


@pytest.mark.anyio
async def test_queued_rules_come_before_rates(http: aiohttp.ClientSession) -> None:
    """A queued rule wins over a rate; path filters and a rate of 1 apply to each match."""
    async with FakeKlingServer() as server:
        server.faults.rate(Fault.http_error(503, 5001), 1.0, path_contains="video-extend/")
        server.faults.push(Fault.http_error(500, 5000), method="GET")
        task_id = await create(http, server)
        url = f"{prefix(server)}{EXTEND}/{task_id}"
        assert (await call(http, "GET", url))[0] == 500
        assert (await call(http, "GET", url))[0] == 503
        server.faults.clear()
        assert (await call(http, "GET", url))[0] == 200


@pytest.mark.anyio
async def test_fault_rates_are_seeded(http: aiohttp.ClientSession) -> None:
    """The same seed injects a rate fault into the same requests."""
    patterns = []
    for _ in range(2):
        async with FakeKlingServer(seed=7) as server:
            server.faults.rate(Fault.http_error(), 0.5)
            url = f"{prefix(server)}{EXTEND}/x"
            patterns.append([(await call(http, "GET", url))[0] for _ in range(12)])
    assert patterns[0] == patterns[1]
    assert set(patterns[0]) == {500, 404}


# --- files ------------------------------------------------------------------------------


@pytest.fixture
async def video_server(
    http: aiohttp.ClientSession, clock: Clock
) -> AsyncIterator[tuple[FakeKlingServer, str]]:
    async with FakeKlingServer(durations=STEPPED, monotonic=clock, video_size=1000) as server:
        task_id = await create(http, server)
        clock.now += 1.0
        url: str = (await get(http, server, task_id))["task_result"]["videos"][0]["url"]
        yield server, url


@pytest.mark.anyio
async def test_download_whole_file(video_server: tuple[FakeKlingServer, str]) -> None:
    """A result video downloads without auth, with length and range support advertised."""
    _, url = video_server
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        data = await response.read()
        assert response.status == 200
        assert len(data) == 1000
        assert response.headers["Content-Length"] == "1000"
        assert response.headers["Accept-Ranges"] == "bytes"
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        assert await response.read() == data


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("range_header", "status", "span", "content_range"),
    [
        ("bytes=900-", 206, (900, 1000), "bytes 900-999/1000"),
        ("bytes=10-19", 206, (10, 20), "bytes 10-19/1000"),
        ("bytes=990-5000", 206, (990, 1000), "bytes 990-999/1000"),
        ("bytes=-100", 206, (900, 1000), "bytes 900-999/1000"),
        ("bytes=1000-", 416, None, "bytes */1000"),
    ],
)
async def test_download_range(
    range_header: str,
    status: int,
    span: tuple[int, int] | None,
    content_range: str,
    video_server: tuple[FakeKlingServer, str],
) -> None:
    """A single byte range answers 206 with Content-Range, or 416 beyond the end."""
    _, url = video_server
    async with aiohttp.ClientSession() as session:
        async with session.get(url) as response:
            whole = await response.read()
        async with session.get(url, headers={"Range": range_header}) as response:
            assert response.status == status
            assert response.headers["Content-Range"] == content_range
            if span is not None:
                assert await response.read() == whole[span[0] : span[1]]


@pytest.mark.anyio
async def test_download_unknown_file(video_server: tuple[FakeKlingServer, str]) -> None:
    """An unknown file is 404."""
    server, _ = video_server
    async with aiohttp.ClientSession() as session:
        status, _ = await call(session, "GET", f"{server.url}/files/unknown.mp4")
    assert status == 404


@pytest.mark.anyio
async def test_drop_mid_stream(video_server: tuple[FakeKlingServer, str]) -> None:
    """Fault.drop_mid_stream cuts the body short: the client sees a payload error."""
    server, url = video_server
    server.faults.push(Fault.drop_mid_stream(300), path_contains="/files/")
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        assert response.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):
            await response.read()
    assert server.record.requests[-1].fault == "drop_mid_stream"


@pytest.mark.anyio
async def test_gzip_encoded_file(video_server: tuple[FakeKlingServer, str]) -> None:
    """Fault.gzip_encoded sends the file gzip-compressed; a range counts compressed bytes."""
    server, url = video_server
    async with aiohttp.ClientSession() as session:
        async with session.get(url) as response:
            whole = await response.read()
        server.faults.push(Fault.gzip_encoded(), path_contains="/files/", times=2)
        plain = {"Accept-Encoding": "identity"}
        async with session.get(url, headers=plain, auto_decompress=False) as response:
            assert response.headers["Content-Encoding"] == "gzip"
            packed = await response.read()
        assert gzip.decompress(packed) == whole
        ranged = {**plain, "Range": "bytes=10-"}
        async with session.get(url, headers=ranged, auto_decompress=False) as response:
            assert response.status == 206
            assert response.headers["Content-Range"] == f"bytes 10-{len(packed) - 1}/{len(packed)}"
            assert await response.read() == packed[10:]
    assert server.faults.pending == 0


@pytest.mark.anyio
async def test_gzip_fault_is_left_for_files() -> None:
    """A gzip fault pushed without a path is not consumed by API requests."""
    async with FakeKlingServer() as server, aiohttp.ClientSession() as session:
        server.faults.push(Fault.gzip_encoded())
        await call(session, "GET", f"{server.url}/kling/v1/videos/video-extend/nothing")
    assert server.faults.pending == 1


@pytest.mark.anyio
async def test_api_faults_skip_files(video_server: tuple[FakeKlingServer, str]) -> None:
    """A fault without path_contains is left for API requests, not downloads."""
    server, url = video_server
    server.faults.push(Fault.http_error())
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        assert response.status == 200
    assert server.faults.pending == 1


# --- determinism and record --------------------------------------------------------------


@pytest.mark.anyio
async def test_same_seed_same_tasks(http: aiohttp.ClientSession, clock: Clock) -> None:
    """Two servers with the same seed produce the same ids and durations."""
    durations = Durations(submitted_for=1.0, median=10.0, sigma=0.5)
    results = []
    for _ in range(2):
        clock.now = 1000.0
        async with FakeKlingServer(seed=3, durations=durations, monotonic=clock) as server:
            ids = [await create(http, server) for _ in range(4)]
            clock.now += 1.0
            done = [await get(http, server, i) for i in ids]
            ends = [d["updated_at"] - d["created_at"] for d in done]
            videos = [d["task_result"]["videos"][0] for d in done]
            results.append((ids, ends, [(v["id"], v["duration"]) for v in videos]))
    assert results[0] == results[1]
    ids, ends, videos = results[0]
    assert len(set(ids)) == 4
    assert len(set(ends)) == 4
    assert not set(ids) & {v[0] for v in videos}


@pytest.mark.anyio
async def test_without_a_seed_two_servers_issue_different_ids(
    http: aiohttp.ClientSession,
) -> None:
    """Each server draws its own seed, and `seed` tells it so that a run can be repeated."""
    runs = []
    for _ in range(2):
        async with FakeKlingServer() as server:
            runs.append((server.seed, await create(http, server)))
    (first_seed, first_id), (second_seed, second_id) = runs
    assert first_seed != second_seed and first_id != second_id
    async with FakeKlingServer(seed=first_seed) as again:
        assert again.seed == first_seed
        assert await create(http, again) == first_id


@pytest.mark.anyio
async def test_record_counts_polls_and_requests(http: aiohttp.ClientSession) -> None:
    """The record keeps each request and counts polls per task."""
    async with FakeKlingServer() as server:
        task_id = await create(http, server, video_id="src")
        for _ in range(3):
            await get(http, server, task_id)
        assert server.record.polls(task_id) == 3
        assert server.record.creates_for("src") == 1
        first = server.record.requests[0]
        assert (first.method, first.status, first.task_id) == ("POST", 200, task_id)
        assert first.body == {"video_id": "src", "task_id": "parent-task"}
        assert first.headers["Authorization"] == f"Bearer {KEY}"


# --- pytest plugin ----------------------------------------------------------------------


def test_pytest_plugin_fixtures(pytester: pytest.Pytester) -> None:
    """The plugin's kling_server and kling_server_factory fixtures start and close servers."""
    pytester.makepyfile(
        """
        import aiohttp
        import pytest

        @pytest.fixture
        def anyio_backend():
            return "asyncio"

        @pytest.mark.anyio
        async def test_default(kling_server):
            async with aiohttp.ClientSession() as session:
                async with session.get(kling_server.url + "/kling/v1/x") as response:
                    assert response.status == 401
            assert kling_server.dialect == "gateway"

        @pytest.mark.anyio
        async def test_factory(kling_server_factory):
            async with kling_server_factory(dialect="official") as server:
                assert server.dialect == "official"
            other = await kling_server_factory(seed=1)
            assert other.url.startswith("http://127.0.0.1:")
        """
    )
    from kling_async.testing import pytest_plugin

    result = pytester.runpytest("-p", "no:kling_async", plugins=[pytest_plugin])
    result.assert_outcomes(passed=2)


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("dialect", "path"),
    [
        ("gateway", "/nope"),
        ("gateway", f"/kling{EXTEND}/"),
        ("official", f"{EXTEND}/"),
        ("official", "/v2/videos/video-extend"),
        ("official", "/files/unknown.mp4"),
    ],
)
async def test_unknown_paths_answer_in_the_envelope(
    dialect: str, path: str, http: aiohttp.ClientSession
) -> None:
    """Unknown paths and a trailing slash get a JSON 404 envelope, as error parsers expect."""
    async with FakeKlingServer(dialect=dialect) as server:
        status, body = await call(http, "GET", server.url + path)
    assert status == 404
    assert body["code"] == 1203
    assert body["message"].startswith(f"no API at GET {path};")
    assert body["request_id"]


@pytest.mark.anyio
@pytest.mark.parametrize("dialect", ["official", "gateway"])
async def test_a_create_answers_with_its_task_id_as_request_id(
    dialect: str, http: aiohttp.ClientSession
) -> None:
    """As in every real capture, a create's request_id is the new task's id."""
    async with FakeKlingServer(dialect=dialect) as server:
        status, body = await call(http, "POST", prefix(server) + EXTEND, json=extend_body(server))
    assert status == 200
    assert body["request_id"] == body["data"]["task_id"]


@pytest.mark.anyio
@pytest.mark.parametrize("path", ["/account/costs", "/v1/account/costs"])
async def test_account_costs_of_the_official_dialect(
    path: str, http: aiohttp.ClientSession
) -> None:
    """GET /account/costs lists one resource pack, drawn down by each created task."""
    async with FakeKlingServer(dialect="official") as server:
        await create(http, server)
        window = {"start_time": "0", "end_time": str(int(time.time() * 1000))}
        status, body = await call(http, "GET", server.url + path, params=window)
    assert (status, body["code"]) == (200, 0)
    (pack,) = body["data"]["resource_pack_subscribe_infos"]
    assert body["data"]["code"] == 0
    assert pack["status"] == "online"
    assert pack["total_quantity"] - pack["remaining_quantity"] == 1
    assert set(pack) >= {"resource_pack_name", "resource_pack_type", "invalid_time"}


@pytest.mark.anyio
async def test_account_costs_needs_its_window_and_a_key() -> None:
    """Missing times are 1201; no key is 401; a gateway has no such path."""
    auth = {"Authorization": f"Bearer {KEY}"}
    async with (
        aiohttp.ClientSession() as bare,
        FakeKlingServer(dialect="official") as official,
        FakeKlingServer() as gateway,
    ):
        costs = official.url + "/account/costs"
        status, body = await call(bare, "GET", costs, params={"end_time": "1"}, headers=auth)
        assert (status, body["code"]) == (400, 1201)
        assert "start_time" in body["message"]
        status, body = await call(bare, "GET", costs)
        assert (status, body["code"]) == (401, 1001)
        status, body = await call(bare, "GET", gateway.url + "/account/costs", headers=auth)
        assert (status, body["code"]) == (404, 1203)


def test_the_credentials_are_exposed() -> None:
    """A test can read the keys a server accepts, and the variables that point at it."""
    server = FakeKlingServer(dialect="official", access_key=ACCESS, secret_key=SECRET)
    assert (server.api_key, server.access_key, server.secret_key) == (KEY, ACCESS, SECRET)
    assert FakeKlingServer(api_key=None).api_key is None


@pytest.mark.anyio
async def test_the_environment_points_a_client_at_the_server() -> None:
    """`environment` holds KLING_* variables: the key pair when there is one, else the key."""
    async with FakeKlingServer() as gateway:
        assert gateway.environment == {
            "KLING_BASE_URL": gateway.url,
            "KLING_DIALECT": "gateway",
            "KLING_API_KEY": KEY,
        }
    async with FakeKlingServer(
        dialect="official", access_key=ACCESS, secret_key=SECRET
    ) as official:
        assert official.environment == {
            "KLING_BASE_URL": official.url,
            "KLING_DIALECT": "official",
            "KLING_ACCESS_KEY": ACCESS,
            "KLING_SECRET_KEY": SECRET,
        }


@pytest.mark.anyio
async def test_on_request_hears_of_every_answer(http: aiohttp.ClientSession) -> None:
    """on_request is called once per request, with what the record keeps."""
    heard: list[tuple[str, int | None]] = []
    async with FakeKlingServer(on_request=lambda r: heard.append((r.method, r.status))) as server:
        task_id = await create(http, server)
        await get(http, server, task_id)
        await call(http, "GET", server.url + "/nope")
    assert heard == [("POST", 200), ("GET", 200), ("GET", 404)]


@pytest.mark.anyio
async def test_the_record_counts_reads_and_duplicates(http: aiohttp.ClientSession) -> None:
    """read_count sums the task reads; duplicate_count the creates past the first per video."""
    async with FakeKlingServer() as server:
        first = await create(http, server)
        await create(http, server)
        await create(http, server, video_id="v-2")
        for _ in range(3):
            await get(http, server, first)
    assert server.record.read_count == 3
    assert server.record.duplicate_count == 1
