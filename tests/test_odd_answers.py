"""Answers real gateways get wrong, end to end through the fake server: stale copies from a
lagging cache, and successes that hold no video."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from kling_async import (
    KlingClient,
    MalformedTaskError,
    PollPolicy,
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
