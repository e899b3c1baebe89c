"""Log records a pipeline can use: one hierarchy, structured fields, quiet when all is well."""

from __future__ import annotations

import logging

import pytest

from kling_async import KlingClient, PollPolicy, RetryPolicy, VideoExtendRequest
from kling_async.testing import Durations, FakeKlingServer, Fault

pytestmark = pytest.mark.anyio

KEY = "test-api-key"
FAST_TASKS = Durations(submitted_for=5.0, median=60.0, sigma=0.3)
QUICK = PollPolicy(initial_delay=0.01, min_interval=0.01, max_interval=0.04, timeout=30)
PATIENT = RetryPolicy(max_attempts=6, base_delay=0.01, max_delay=0.05, rate_limit_floor=0.01)
FIELDS = ("kling_task_id", "kling_request_key", "kling_request_id")


def ours(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name.split(".")[0] == "kling_async"]


async def run_batch(server: FakeKlingServer, n: int) -> set[str]:
    """A batch of `n`; the ids of the tasks it made."""
    items = [VideoExtendRequest(f"vid-{i}", task_id=f"p-{i}", key=f"k{i}") for i in range(n)]
    client = KlingClient(api_key=KEY, base_url=server.url, poll=QUICK, retry=PATIENT)
    async with client:
        outcomes = [o async for o in client.extend_many(items, concurrency=n)]
    assert all(o.ok for o in outcomes)
    return {o.task.id for o in outcomes if o.task is not None}


async def test_a_happy_batch_logs_nothing_above_debug(caplog: pytest.LogCaptureFixture) -> None:
    """All goes well: every record is DEBUG, from a child of the `kling_async` logger, with
    the structured fields; each created task is recorded with its id and request key."""
    caplog.set_level(logging.DEBUG, logger="kling_async")
    async with FakeKlingServer(api_key=KEY, durations=FAST_TASKS) as server:
        made = await run_batch(server, 3)
    records = ours(caplog)
    assert records
    assert [r.getMessage() for r in records if r.levelno > logging.DEBUG] == []
    assert all(r.name.startswith("kling_async.") for r in records)
    assert all(all(hasattr(r, field) for field in FIELDS) for r in records)
    created = {
        (r.kling_task_id, r.kling_request_key)  # type: ignore[attr-defined]
        for r in records
        if "created" in r.getMessage()
    }
    assert {task_id for task_id, _ in created} == made
    assert {key for _, key in created} == {"k0", "k1", "k2"}


async def test_a_retried_read_names_its_task_and_request(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A 500 on a read is logged (INFO) with the task id and the Kling request id."""
    caplog.set_level(logging.DEBUG, logger="kling_async")
    async with FakeKlingServer(api_key=KEY, durations=FAST_TASKS) as server:
        client = KlingClient(api_key=KEY, base_url=server.url, poll=QUICK, retry=PATIENT)
        async with client:
            task = await client.extend_video("vid-1", task_id="p-1")
            server.faults.push(Fault.http_error(500, 5000, "flaky"), method="GET")
            await client.get_task(task.id)
            server.faults.push(Fault.http_error(500, 5000, "flaky"), method="GET")
            await client.watch(task)  # a watcher's read is retried by its schedule, not inside
    (retry,) = [r for r in ours(caplog) if "; retry 1 of" in r.getMessage()]
    (failed,) = [r for r in ours(caplog) if "still watching" in r.getMessage()]
    assert retry.name == "kling_async._transport" and failed.name == "kling_async.watcher"
    for record in (retry, failed):
        assert record.levelno == logging.INFO
        assert record.kling_task_id == task.id  # type: ignore[attr-defined]
        assert record.kling_request_id  # type: ignore[attr-defined]
        assert record.kling_request_id in record.getMessage()  # type: ignore[attr-defined]
