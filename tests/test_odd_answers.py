"""Answers real gateways get wrong, end to end through the fake server: stale copies from a
lagging cache, successes that hold no video, and reads answered with another task."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from helpers import serve

from kling_async import (
    KlingClient,
    MalformedTaskError,
    PollPolicy,
    RetryPolicy,
    TaskStatus,
    VideoExtendRequest,
)
from kling_async.testing import Durations, FakeKlingServer, Fault

pytestmark = pytest.mark.anyio

KEY = "test-api-key"
QUICK = PollPolicy(initial_delay=0.01, min_interval=0.01, max_interval=0.02, timeout=20)
STEPPED = Durations(submitted_for=5.0, median=100.0, sigma=0.0)


class Clock:
    """The server's monotonic clock, moved by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def server(clock: Clock) -> AsyncIterator[FakeKlingServer]:
    """A gateway whose tasks take exactly 100 s of its hand-moved clock."""
    async with FakeKlingServer(api_key=KEY, durations=STEPPED, speed=1.0, monotonic=clock) as fake:
        yield fake


def client_for(server: FakeKlingServer, **kwargs: Any) -> KlingClient:
    return KlingClient(api_key=KEY, base_url=server.url, dialect="gateway", poll=QUICK, **kwargs)


async def test_stale_copies_never_move_a_watch_backwards(
    server: FakeKlingServer, clock: Clock
) -> None:
    """processing, then a cached submitted, then processing again: the stream shows each
    status once, in order, and ends at succeed."""
    async with client_for(server) as client:
        task = await client.extend_video("vid-1", task_id="parent-1")
        clock.now += 100  # the task has succeeded; what the watcher reads first lags
        for lag in (50, 200, 50, 200):  # processing, submitted, processing, submitted
            server.faults.push(Fault.stale(lag), path_contains=task.id)
        seen = [snapshot.status async for snapshot in client.watch(task)]
    assert seen == [TaskStatus.PROCESSING, TaskStatus.SUCCEED]
    assert server.faults.pending == 0
    assert server.record.polls(task.id) == 5


@pytest.mark.parametrize("empty_list", [False, True])
async def test_a_success_without_a_video_is_an_error(
    server: FakeKlingServer, empty_list: bool
) -> None:
    """`succeed` with videos null or [] ends extend_and_wait with an error naming the task."""
    server.faults.push(Fault.no_videos(empty_list=empty_list), method="GET")
    async with client_for(server) as client:
        with pytest.raises(MalformedTaskError, match="holds no video") as caught:
            await client.extend_and_wait("vid-1", task_id="parent-1")
    task_id = server.record.created[0]
    assert caught.value.task.id == task_id
    assert task_id in str(caught.value)
    assert caught.value.task.raw["task_result"] == {"videos": [] if empty_list else None}
    assert server.record.polls(task_id) == 1


async def test_a_success_without_a_video_is_a_failed_outcome(server: FakeKlingServer) -> None:
    """In a batch it is that request's error; the outcome is not ok."""
    server.faults.push(Fault.no_videos(), method="GET")
    request = VideoExtendRequest("vid-1", task_id="parent-1")
    async with client_for(server) as client:
        outcomes = [o async for o in client.extend_many([request])]
    assert len(outcomes) == 1
    assert not outcomes[0].ok
    assert isinstance(outcomes[0].error, MalformedTaskError)
    assert outcomes[0].task is not None and outcomes[0].task.status is TaskStatus.SUBMITTED


class CrossedCache:
    """A gateway whose first read of each task answers another task, succeeded with its own
    video (a cache keyed wrongly); later reads answer the task asked for."""

    def __init__(self) -> None:
        self.created = 0
        self.read: set[str] = set()

    async def handle(self, request: web.Request) -> web.Response:
        if request.method == "POST":
            self.created += 1
            return self.answer(f"t-{self.created}", "submitted")
        task_id = request.path.rsplit("/", 1)[-1]
        if task_id not in self.read:
            self.read.add(task_id)
            return self.answer("t-someone-else", "succeed")
        return self.answer(task_id, "succeed")

    @staticmethod
    def answer(task_id: str, status: str) -> web.Response:
        video = {"id": f"video-of-{task_id}", "url": f"https://cdn.example/{task_id}.mp4"}
        result = {"videos": [video]} if status == "succeed" else None
        data = {"task_id": task_id, "task_status": status, "task_result": result}
        return web.json_response({"code": 0, "message": "SUCCEED", "data": data})


async def test_a_read_answered_with_another_task_is_not_taken_for_it(tmp_path: Path) -> None:
    """Another task's state is no news of the watched one: a watch never ends with another
    task's video, and a journaled batch is not stopped as if one request had made two tasks."""
    cache = CrossedCache()
    retry = RetryPolicy(max_delay=0.01)
    async with (
        serve({"/{path:.*}": cache.handle}) as url,
        KlingClient(api_key=KEY, base_url=url, dialect="gateway", poll=QUICK, retry=retry) as c,
    ):
        task = await c.extend_and_wait("vid-1", task_id="parent-1")
        requests = [VideoExtendRequest(f"vid-{n}", task_id="p", key=f"k{n}") for n in range(3)]
        outcomes = [o async for o in c.extend_many(requests, journal=tmp_path / "j")]
    assert (task.id, task.videos[0].id) == ("t-1", "video-of-t-1")
    assert sorted((o.ok, o.task.videos[0].id) for o in outcomes if o.task) == [
        (True, f"video-of-t-{n}") for n in (2, 3, 4)
    ]
