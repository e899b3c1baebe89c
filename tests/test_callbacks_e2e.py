"""Callbacks end to end: the fake server calls back, the receiver wakes watchers."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import anyio
import pytest

from kling_async import CallbackReceiver, KlingClient, PollPolicy, VideoExtendRequest
from kling_async.testing import CallbackFaults, Durations, FakeKlingServer

pytestmark = pytest.mark.anyio

KEY = "test-api-key"
SECRET = "whsec_c2l4dGVlbiBieXRlIGtleQ=="
TASKS = Durations(submitted_for=5.0, median=100.0, sigma=0.3)  # ~0.1 s each at speed 1000
RELAXED = PollPolicy(
    initial_delay=0.01, min_interval=0.01, max_interval=0.05, callback_interval=30, timeout=30
)


@pytest.fixture
async def receiver() -> AsyncIterator[CallbackReceiver]:
    async with CallbackReceiver(secret=SECRET) as hooks:
        await hooks.start()
        yield hooks


def requests(n: int) -> list[VideoExtendRequest]:
    return [VideoExtendRequest(f"vid-{i}", task_id=f"p-{i}") for i in range(n)]


async def run(
    server: FakeKlingServer, receiver: CallbackReceiver, n: int, poll: PollPolicy = RELAXED
) -> list[float]:
    """Run n extensions; the detection delay of each (seconds after the task ended)."""
    delays = []
    client = KlingClient(
        api_key=KEY, base_url=server.url, dialect=server.dialect, poll=poll, callbacks=receiver
    )
    async with client:
        async for outcome in client.extend_many(requests(n), concurrency=50):
            assert outcome.ok, outcome.error
            assert outcome.task is not None
            assert outcome.task.updated_at is not None
            delays.append(time.time() - outcome.task.updated_at.timestamp())
    return delays


@pytest.mark.parametrize("dialect", ["official", "gateway"])
async def test_batch_with_callbacks_polls_once_and_notices_fast(
    receiver: CallbackReceiver, dialect: str
) -> None:
    """200 extensions: one confirming poll per task, each woken by its callback, not the net."""
    async with FakeKlingServer(
        dialect=dialect, api_key=KEY, durations=TASKS, webhook_secret=SECRET
    ) as server:
        delays = await run(server, receiver, 200)
        polls = [server.record.polls(task_id) for task_id in server.record.created]
        creates = [r for r in server.record.requests if r.method == "POST"]
    assert max(polls) <= 1
    # The safety-net read comes after 30 s; ending far sooner proves the callback woke it.
    assert max(delays) < RELAXED.callback_interval / 3
    assert all(r.body and r.body["callback_url"] == receiver.callback_url for r in creates)
    assert receiver.stats["accepted"] >= 200


async def test_all_callbacks_lost_still_finishes_by_polling(receiver: CallbackReceiver) -> None:
    """With every callback lost, the safety-net polls finish the batch."""
    lost = CallbackFaults(lost_rate=1.0)
    poll = PollPolicy(min_interval=0.01, max_interval=0.05, callback_interval=0.05, timeout=30)
    async with FakeKlingServer(
        api_key=KEY, durations=TASKS, webhook_secret=SECRET, callback_faults=lost
    ) as server:
        delays = await run(server, receiver, 20, poll)
    assert len(delays) == 20
    assert receiver.stats["accepted"] == 0


async def test_duplicated_delayed_reordered_callbacks_are_harmless(
    receiver: CallbackReceiver,
) -> None:
    """Duplicates, delays and reordering change nothing but a replay count."""
    chaos = CallbackFaults(duplicate_rate=1.0, delay=(0.0, 0.05), reorder_rate=0.5)
    poll = PollPolicy(min_interval=0.01, max_interval=0.05, callback_interval=0.5, timeout=30)
    async with FakeKlingServer(
        api_key=KEY, durations=TASKS, webhook_secret=SECRET, callback_faults=chaos
    ) as server:
        delays = await run(server, receiver, 30, poll)
        polls = [server.record.polls(task_id) for task_id in server.record.created]
    assert len(delays) == 30
    assert receiver.stats["replayed id"] > 0
    assert max(polls) <= 3


async def test_callbacks_signed_with_another_secret_are_refused(
    receiver: CallbackReceiver,
) -> None:
    """A server signing with the wrong secret wakes nobody; polling still finishes."""
    poll = PollPolicy(min_interval=0.01, max_interval=0.05, callback_interval=0.05, timeout=30)
    async with FakeKlingServer(
        api_key=KEY, durations=TASKS, webhook_secret="whsec_d3JvbmcgZnJvbSB0aGUgc3RhcnQ="
    ) as server:
        delays = await run(server, receiver, 5, poll)
    assert len(delays) == 5
    assert receiver.stats["accepted"] == 0
    assert receiver.stats["bad signature"] > 0


async def test_tasks_that_will_not_call_back_are_polled_normally(
    receiver: CallbackReceiver,
) -> None:
    """A task with its own callback URL, or made elsewhere, is not left to the safety net."""
    async with FakeKlingServer(api_key=KEY, durations=TASKS, webhook_secret=SECRET) as server:
        client = KlingClient(api_key=KEY, base_url=server.url, poll=RELAXED, callbacks=receiver)
        async with client:
            own = await client.extend_video("v1", task_id="p", callback_url="http://127.0.0.1:9/h")
            async with KlingClient(api_key=KEY, base_url=server.url) as other:
                elsewhere = await other.extend_video("v2", task_id="p")
            with anyio.fail_after(5):  # far below callback_interval (30 s)
                await client.watch(own)
                await client.watch(elsewhere.id)
            ours = await client.extend_video("v3", task_id="p")
            with anyio.fail_after(5):
                await client.watch(ours)
        assert server.record.polls(ours.id) == 1
