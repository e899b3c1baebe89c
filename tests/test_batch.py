"""extend_many against the fake server: the cap, 1303 storms, faults, failures, cancellation."""

from __future__ import annotations

import asyncio
import logging
import math
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import attrs
import pytest

from kling_async import (
    AmbiguousSubmissionError,
    AuthenticationError,
    BatchEvent,
    BatchEventKind,
    BatchOutcome,
    ConfigurationError,
    DownloadError,
    InsufficientBalanceError,
    InvalidArgumentError,
    KlingClient,
    KlingError,
    NotSentError,
    PermissionDeniedError,
    PollPolicy,
    RateLimitError,
    RetryPolicy,
    ServerError,
    Task,
    TaskFailedError,
    TaskKind,
    TaskStatus,
    TransportError,
    VideoExtendRequest,
    WatchTimeoutError,
)
from kling_async._clock import FakeClock
from kling_async.batch import Backlog, ConcurrencyWindow, _Run
from kling_async.testing import Durations, FakeKlingServer, Fault

pytestmark = pytest.mark.anyio

KEY = "test-api-key"
FAST_TASKS = Durations(submitted_for=5.0, median=60.0, sigma=0.3)  # ~60 ms at speed 1000
QUICK = PollPolicy(initial_delay=0.01, min_interval=0.01, max_interval=0.04, timeout=30)
PATIENT = RetryPolicy(max_attempts=6, base_delay=0.01, max_delay=0.05, rate_limit_floor=0.01)


def requests(n: int) -> list[VideoExtendRequest]:
    return [VideoExtendRequest(f"vid-{i}", task_id=f"parent-{i}", key=str(i)) for i in range(n)]


def client_for(server: FakeKlingServer, **kwargs: Any) -> KlingClient:
    kwargs.setdefault("poll", QUICK)
    kwargs.setdefault("retry", PATIENT)
    return KlingClient(api_key=KEY, base_url=server.url, dialect="gateway", **kwargs)


async def run_batch(
    server: FakeKlingServer, items: list[VideoExtendRequest], **kwargs: Any
) -> list[BatchOutcome]:
    async with client_for(server) as client:
        return [outcome async for outcome in client.extend_many(items, **kwargs)]


@pytest.fixture
async def server() -> AsyncIterator[FakeKlingServer]:
    async with FakeKlingServer(api_key=KEY, durations=FAST_TASKS, seed=7) as fake:
        yield fake


def client_tasks() -> set[asyncio.Task[Any]]:
    """Running asyncio tasks, less the fake server's connection handlers (same loop)."""
    return {t for t in asyncio.all_tasks() if "RequestHandler" not in repr(t.get_coro())}


def assert_one_outcome_each(items: list[VideoExtendRequest], outcomes: list[BatchOutcome]) -> None:
    assert Counter(o.request.key for o in outcomes) == Counter(r.key for r in items)


async def test_500_extensions_at_concurrency_20(server: FakeKlingServer) -> None:
    """All 500 finish, with exactly 500 creates and never more than 20 tasks running."""
    items = requests(500)
    outcomes = await run_batch(server, items, concurrency=20)
    assert_one_outcome_each(items, outcomes)
    assert all(o.ok for o in outcomes)
    assert server.record.create_count == 500
    assert 1 < server.record.peak_concurrent <= 20


async def test_1303_storm_is_survived() -> None:
    """Over the account's parallel limit: the window shrinks, every task still finishes once."""
    async with FakeKlingServer(api_key=KEY, durations=FAST_TASKS, max_concurrent=4) as server:
        events: list[BatchEvent] = []
        items = requests(60)
        outcomes = await run_batch(server, items, concurrency=20, on_event=events.append)
        rejected = [r for r in server.record.requests if r.status == 429]
    assert_one_outcome_each(items, outcomes)
    assert all(o.ok for o in outcomes)
    assert rejected
    assert server.record.create_count == 60
    assert server.record.peak_concurrent <= 4
    assert any(e.kind is BatchEventKind.RETRIED for e in events)


async def test_faults_lose_nothing(server: FakeKlingServer) -> None:
    """20 % of polls 5xx, some 429 with Retry-After, dropped connections: all finish."""
    server.faults.rate(Fault.http_error(500, 5000, "flaky"), 0.2, method="GET")
    server.faults.rate(Fault.rate_limited(retry_after=0.02), 0.05)
    server.faults.rate(Fault.drop(), 0.05, method="GET")
    server.faults.rate(Fault.html(503), 0.05, method="GET")
    items = requests(120)
    outcomes = await run_batch(server, items, concurrency=15)
    assert_one_outcome_each(items, outcomes)
    assert [o.error for o in outcomes if not o.ok] == []
    assert server.record.create_count == 120
    faults = Counter(r.fault for r in server.record.requests)
    assert faults["http_error"] > 10
    assert faults["rate_limited"] > 0
    assert faults["drop"] > 0


async def test_dropped_create_is_reported_not_resent(server: FakeKlingServer) -> None:
    """A create whose answer is lost becomes that request's AmbiguousSubmissionError."""
    server.faults.push(Fault.drop_after_create(), method="POST")
    items = requests(10)
    outcomes = await run_batch(server, items, concurrency=3)
    assert_one_outcome_each(items, outcomes)
    ambiguous = [o for o in outcomes if isinstance(o.error, AmbiguousSubmissionError)]
    assert len(ambiguous) == 1
    assert ambiguous[0].task is None
    assert server.record.create_count == 10


async def test_failed_tasks_are_reported_with_their_message() -> None:
    """A failed task is an outcome with the task and a TaskFailedError naming the reason."""
    async with FakeKlingServer(api_key=KEY, durations=FAST_TASKS, fail_rate=0.3) as server:
        items = requests(40)
        outcomes = await run_batch(server, items, concurrency=10)
    failed = [o for o in outcomes if not o.ok]
    assert failed
    for outcome in failed:
        assert outcome.task is not None
        assert outcome.task.status is TaskStatus.FAILED
        assert isinstance(outcome.error, TaskFailedError)
        assert outcome.task.status_message
        assert outcome.task.status_message in str(outcome.error)
    assert len(outcomes) == 40


async def test_one_failure_does_not_stop_the_rest() -> None:
    """Without fail_fast, successes and failures are all reported."""
    async with FakeKlingServer(api_key=KEY, durations=FAST_TASKS, fail_rate=0.5) as server:
        outcomes = await run_batch(server, requests(30), concurrency=5)
    assert len(outcomes) == 30
    assert {o.ok for o in outcomes} == {True, False}


async def test_fail_fast_stops_taking_requests() -> None:
    """With fail_fast, the first failure stops new submissions; started tasks are reported."""
    async with FakeKlingServer(api_key=KEY, durations=FAST_TASKS, fail_rate=1.0) as server:
        outcomes = await run_batch(server, requests(50), concurrency=3, fail_fast=True)
        created = server.record.create_count
    assert created < 50
    sent = [o for o in outcomes if not isinstance(o.error, NotSentError)]
    assert len(sent) == created  # and a request started as the failure came was not sent
    assert not any(o.ok for o in outcomes)


async def test_deadline_ends_each_watch() -> None:
    """Tasks outliving the watch deadline are reported with WatchTimeoutError."""
    slow = Durations(submitted_for=5.0, median=3000.0, sigma=0.0)  # 3 s of wall time
    async with FakeKlingServer(api_key=KEY, durations=slow) as server:
        poll = PollPolicy(initial_delay=0.01, min_interval=0.01, max_interval=0.02, timeout=0.2)
        outcomes = await run_batch(server, requests(4), concurrency=4, poll=poll)
    assert len(outcomes) == 4
    for outcome in outcomes:
        assert isinstance(outcome.error, WatchTimeoutError)
        assert outcome.task is not None
        assert outcome.error.task_id == outcome.task.id


async def test_unknown_status_is_tolerated(server: FakeKlingServer) -> None:
    """An unknown status from the server is reported, then the watch goes on to the end."""
    server.faults.rate(Fault.status("queueing"), 0.3, method="GET")
    events: list[BatchEvent] = []
    outcomes = await run_batch(server, requests(20), concurrency=5, on_event=events.append)
    assert all(o.ok for o in outcomes)
    statuses = {e.task.status for e in events if e.kind is BatchEventKind.STATUS and e.task}
    assert TaskStatus.UNKNOWN in statuses


async def test_progress_events(server: FakeKlingServer) -> None:
    """Each request is submitted once and finished once; statuses change in between."""
    events: list[BatchEvent] = []
    await run_batch(server, requests(12), concurrency=4, on_event=events.append)
    kinds = Counter(e.kind for e in events)
    assert kinds[BatchEventKind.SUBMITTED] == 12
    assert kinds[BatchEventKind.FINISHED] == 12
    assert kinds[BatchEventKind.STATUS] >= 12
    finished = [e for e in events if e.kind is BatchEventKind.FINISHED]
    assert all(e.outcome is not None and e.outcome.ok for e in finished)


async def test_progress_events_carry_an_eta_once_tasks_have_ended(server: FakeKlingServer) -> None:
    """No ETA before a task has ended; then one that is finite, positive while work is left,
    and nothing once the last request has finished."""
    events: list[BatchEvent] = []
    await run_batch(server, requests(12), concurrency=4, on_event=events.append)
    first_end = next(i for i, e in enumerate(events) if e.task and e.task.is_terminal)
    assert all(e.eta is None for e in events[:first_end])
    later = events[first_end:]
    assert all(e.eta is not None and math.isfinite(e.eta) and e.eta >= 0 for e in later)
    submitted_late = [e for e in later if e.kind is BatchEventKind.SUBMITTED]
    assert submitted_late and all(e.eta is not None and e.eta > 0 for e in submitted_late)
    assert events[-1].eta == 0.0


async def test_each_event_carries_its_request_task_and_error(server: FakeKlingServer) -> None:
    """Submitted and status events carry the task, a failed poll is a retried event with its
    error, and the finished event carries the outcome: all under the request as sent."""
    # One poll fails (a watcher's read is a single attempt; the watcher reads again later).
    server.faults.push(Fault.http_error(500, 5000, "flaky"), method="GET")
    events: list[BatchEvent] = []
    (outcome,) = await run_batch(server, requests(1), on_event=events.append)
    assert outcome.ok and outcome.task is not None
    assert all(e.request == outcome.request and not e.replayed for e in events)
    kinds = [e.kind for e in events]
    assert kinds[0] is BatchEventKind.SUBMITTED and kinds[-1] is BatchEventKind.FINISHED
    assert events[0].task is not None and events[0].task.id == outcome.task.id
    (retried,) = [e for e in events if e.kind is BatchEventKind.RETRIED]
    assert isinstance(retried.error, ServerError) and retried.error.code == 5000
    statuses = [e for e in events if e.kind is BatchEventKind.STATUS]
    assert statuses and all(e.task is not None and e.task.id == outcome.task.id for e in statuses)
    assert (events[-1].task, events[-1].error, events[-1].outcome) == (outcome.task, None, outcome)


async def test_a_failed_task_is_finished_with_its_error_and_no_files() -> None:
    """The finished event and the outcome of a failed task both carry its TaskFailedError."""
    events: list[BatchEvent] = []
    async with FakeKlingServer(api_key=KEY, durations=FAST_TASKS, fail_rate=1.0) as server:
        (outcome,) = await run_batch(server, requests(1), on_event=events.append)
    assert isinstance(outcome.error, TaskFailedError) and outcome.files == ()
    (finished,) = [e for e in events if e.kind is BatchEventKind.FINISHED]
    assert (finished.task, finished.error, finished.outcome) == (
        outcome.task,
        outcome.error,
        outcome,
    )


NOW = 1_700_000_000.0  # a Unix time: the backlog keeps offsets from its first task


def test_with_nothing_in_flight_the_eta_is_the_requests_left_shared_by_the_slots() -> None:
    """Each request not taken yet is a whole expected duration; an unknown total adds none,
    and more taken than announced is none left, never less."""
    backlog = Backlog(total=5)
    assert backlog.eta(now=NOW, expected=60.0, slots=2) == 150.0
    backlog.take()
    backlog.take()
    assert backlog.eta(now=NOW, expected=60.0, slots=1) == 180.0
    assert Backlog(total=None).eta(now=NOW, expected=60.0, slots=2) == 0.0
    over = Backlog(total=1)
    over.take()
    over.take()
    assert over.eta(now=NOW, expected=60.0, slots=1) == 0.0


def test_the_eta_is_the_larger_of_the_youngest_tasks_time_left_and_the_work_per_slot() -> None:
    """Tasks made at 0 and 20 s, seen at 30 s with one request waiting: 140 s of work left;
    the youngest has 50 s to go."""
    backlog = Backlog(total=3)
    for key, made in (("a", NOW), ("b", NOW + 20)):
        backlog.take()
        backlog.start(key, at=made)
    assert backlog.eta(now=NOW + 30, expected=60.0, slots=1) == 140.0
    assert backlog.eta(now=NOW + 30, expected=60.0, slots=2) == 70.0
    assert backlog.eta(now=NOW + 30, expected=60.0, slots=4) == 50.0  # the youngest's
    # Both overdue: only the waiting request is work left.
    assert backlog.eta(now=NOW + 200, expected=60.0, slots=2) == 30.0
    backlog.take()
    assert backlog.eta(now=NOW + 200, expected=60.0, slots=2) == 0.0


def test_a_task_that_ends_leaves_the_eta_and_one_made_again_counts_once() -> None:
    """Tasks made at 0, 5 and 20 s, two requests waiting, seen at 30 s on one slot."""
    backlog = Backlog(total=5)
    for key, made in (("first", NOW), ("a", NOW + 5), ("b", NOW + 20)):
        backlog.take()
        backlog.start(key, at=made)
    assert backlog.eta(now=NOW + 30, expected=60.0, slots=1) == 30 + 35 + 50 + 120
    backlog.end("a")
    assert backlog.eta(now=NOW + 30, expected=60.0, slots=1) == 30 + 50 + 120
    backlog.start("b", at=NOW + 25)  # its task found again, made later than thought
    assert backlog.eta(now=NOW + 30, expected=60.0, slots=1) == 30 + 55 + 120
    backlog.end("b")
    backlog.end("b")
    backlog.end("never-started")
    assert backlog.eta(now=NOW + 30, expected=60.0, slots=1) == 30 + 120


class ScriptedTasks:
    """An extender whose tasks were made when the script says (None: no creation time) and
    end when `finish` is set; a task of its kind takes 60 s."""

    def __init__(self, made: dict[str, float | None]) -> None:
        self.made = made
        self.finish = anyio.Event()

    async def submit(
        self, request: VideoExtendRequest, *, retry: RetryPolicy, resent: bool = False
    ) -> Task:
        made = self.made[str(request.key)]
        created = None if made is None else datetime.fromtimestamp(made, UTC)
        return Task(f"t-{request.key}", TaskKind.VIDEO_EXTEND, TaskStatus.SUBMITTED, None, created)

    def watch(self, task: Task, *, on_poll_error: Any) -> Any:
        return Ends(attrs.evolve(task, status=TaskStatus.SUCCEED), self.finish)

    def prepare(self, request: VideoExtendRequest) -> VideoExtendRequest:
        return request

    async def find(self, request: VideoExtendRequest) -> Task | None:
        return None

    async def fetch(self, request: VideoExtendRequest, task: Task) -> tuple[Path, ...]:
        return ()

    def expected_seconds(self, kind: TaskKind) -> float | None:
        return 60.0


class Ends:
    """A watcher that yields its task's end once told to."""

    def __init__(self, end: Task, finish: anyio.Event) -> None:
        self.end, self.finish, self.last = end, finish, None

    async def __aiter__(self) -> AsyncIterator[Task]:
        await self.finish.wait()
        self.last = self.end
        yield self.end


async def etas_at_submission(made: dict[str, float | None], concurrency: int) -> list[float]:
    """The ETA of each submitted event of a batch of the scripted tasks, seen at `NOW`."""
    extender = ScriptedTasks(made)
    send, receive = anyio.create_memory_object_stream[BatchOutcome](100)
    events: list[BatchEvent] = []

    def heard(event: BatchEvent) -> None:
        events.append(event)
        if sum(e.kind is BatchEventKind.SUBMITTED for e in events) == min(len(made), concurrency):
            extender.finish.set()  # the window is full: every task may end now

    run = _Run(
        extender,
        ConcurrencyWindow(concurrency),
        send,
        FakeClock(NOW),
        RetryPolicy(),
        on_event=heard,
    )
    items = [VideoExtendRequest(f"vid-{key}", task_id="p", key=key) for key in made]
    with anyio.fail_after(10):  # a guard against a hang, not a measurement
        await run.run(items)
    async with receive:
        assert len([o async for o in receive]) == len(made)
    return [e.eta for e in events if e.kind is BatchEventKind.SUBMITTED and e.eta is not None]


async def test_the_eta_counts_each_task_from_when_the_server_made_it() -> None:
    """Two tasks made 30 s and 10 s ago, none waiting, two slots: (30 + 50) / 2 = 40 s, not
    less than the youngest's 50 s; a task without a creation time counts from now."""
    assert await etas_at_submission({"a": NOW - 30, "b": NOW - 10}, concurrency=2) == [
        30.0,
        50.0,
    ]
    assert await etas_at_submission({"a": None}, concurrency=1) == [60.0]


async def test_the_eta_shares_the_work_among_the_windows_slots() -> None:
    """Three requests, tasks made 30 s before they are seen: on two slots the first ETA is
    (30 + 60) / 2 = 45 s and the second (30 + 30 + 60) / 2 = 60 s; the last, alone, 30 s.
    On one slot the first is 30 + 60 = 90 s."""
    made: dict[str, float | None] = {"a": NOW - 30, "b": NOW - 30, "c": NOW - 30}
    assert await etas_at_submission(made, concurrency=2) == [45.0, 60.0, 30.0]
    two: dict[str, float | None] = {"a": NOW - 30, "b": NOW - 30}
    assert await etas_at_submission(two, concurrency=1) == [90.0, 30.0]


async def test_a_failing_progress_callback_does_not_stop_the_batch(
    server: FakeKlingServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A bug in on_event is logged; the batch goes on."""

    def broken(event: BatchEvent) -> None:
        raise RuntimeError("display crashed")

    with caplog.at_level(logging.ERROR, logger="kling_async"):
        outcomes = await run_batch(server, requests(5), concurrency=5, on_event=broken)
    assert all(o.ok for o in outcomes)
    logged = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert logged and all(
        r.getMessage() == "the batch's on_event callback failed; the batch goes on"
        and r.exc_info is not None
        and r.kling_request_key in {o.request.key for o in outcomes}  # type: ignore[attr-defined]
        for r in logged
    )


async def test_invalid_request_is_an_outcome_and_sends_nothing(server: FakeKlingServer) -> None:
    """A bad request among good ones is reported with its error; nothing is sent for it."""
    items = [*requests(3), VideoExtendRequest("", task_id="p", key="bad")]
    outcomes = await run_batch(server, items, concurrency=2)
    bad = next(o for o in outcomes if o.request.key == "bad")
    assert isinstance(bad.error, InvalidArgumentError)
    assert server.record.create_count == 3


async def test_async_iterable_of_requests(server: FakeKlingServer) -> None:
    """Requests may come from an async generator (a queue, a database cursor)."""

    async def produce() -> AsyncIterator[VideoExtendRequest]:
        for request in requests(6):
            yield request

    async with client_for(server) as client:
        outcomes = [o async for o in client.extend_many(produce(), concurrency=2)]
    assert len(outcomes) == 6


async def test_leaving_early_cancels_everything_cleanly() -> None:
    """Leaving the batch early leaves no running task and no open connection."""
    slow = Durations(submitted_for=5.0, median=500.0, sigma=0.5)
    async with FakeKlingServer(api_key=KEY, durations=slow) as server:
        connector = aiohttp.TCPConnector()
        async with aiohttp.ClientSession(connector=connector) as session:
            before = client_tasks()
            async with client_for(server, session=session) as client:
                async with client.extend_many(requests(100), concurrency=10) as batch:
                    first = await batch.__anext__()
                assert first.request.key is not None
                assert batch.window.in_use == 0
                await anyio.wait_all_tasks_blocked()
                assert client_tasks() == before
                assert len(connector._acquired) == 0
            assert server.record.create_count < 100


async def test_client_exit_stops_an_abandoned_batch() -> None:
    """A batch left unfinished without closing it stops when the client closes."""
    slow = Durations(submitted_for=5.0, median=500.0, sigma=0.5)
    async with FakeKlingServer(api_key=KEY, durations=slow) as server:
        before = client_tasks()
        async with client_for(server) as client:
            batch = client.extend_many(requests(50), concurrency=5)
            await batch.__anext__()
        assert client_tasks() == before


STOPPED = (
    "This batch was stopped before all its outcomes were read: it was closed, or its client "
    "was. Tasks it had created may still be running."
)


async def test_reading_a_batch_its_client_stopped_says_so() -> None:
    """The rest of a batch stopped by its client's exit cannot be read: the reader is told
    why, and that tasks may still run."""
    slow = Durations(submitted_for=5.0, median=500.0, sigma=0.5)
    async with FakeKlingServer(api_key=KEY, durations=slow) as server:
        async with client_for(server) as client:
            batch = client.extend_many(requests(4), concurrency=2)
            await batch.__aenter__()
            await anyio.wait_all_tasks_blocked()
        with pytest.raises(KlingError) as caught:
            await batch.__anext__()
    assert str(caught.value) == STOPPED


async def test_a_batch_closed_by_a_cancelled_caller_has_stopped_when_aclose_returns() -> None:
    """Closing a batch from code being cancelled (a timeout, Ctrl-C) still waits until its
    work has stopped: every slot is given back before aclose returns."""
    slow = Durations(submitted_for=5.0, median=500.0, sigma=0.5)
    submitted: list[BatchEvent] = []
    all_in_flight = anyio.Event()

    def heard(event: BatchEvent) -> None:
        if event.kind is BatchEventKind.SUBMITTED:
            submitted.append(event)
            if len(submitted) == 3:
                all_in_flight.set()

    async with (
        FakeKlingServer(api_key=KEY, durations=slow) as server,
        client_for(server) as client,
    ):
        batch = client.extend_many(requests(6), concurrency=3, on_event=heard)
        await batch.__aenter__()
        with anyio.fail_after(10):  # a guard against a hang, not a measurement
            await all_in_flight.wait()
        with anyio.CancelScope() as scope:
            scope.cancel()
            await batch.aclose()
        assert batch.window.in_use == 0
        with pytest.raises(KlingError, match="This batch was stopped"):
            await batch.__anext__()


async def test_extend_many_needs_the_client_context(server: FakeKlingServer) -> None:
    """Without `async with`, extend_many explains what to do."""
    client = client_for(server)
    with pytest.raises(ConfigurationError, match="async with"):
        client.extend_many(requests(1))
    await client.aclose()


async def test_batch_downloads_results_as_tasks_finish(
    server: FakeKlingServer, tmp_path: Path
) -> None:
    """With download_to, each succeeded task's video is on disk when its outcome arrives."""
    async with client_for(server, allow_private_downloads=True) as client:
        async for outcome in client.extend_many(requests(5), concurrency=3, download_to=tmp_path):
            assert outcome.ok
            assert outcome.error is None
            assert len(outcome.files) == 1
            assert outcome.files[0].stat().st_size > 0
            assert outcome.task is not None
            row = outcome.request.key  # named after its input row, then the new video
            assert outcome.files[0].name == f"{row}_{outcome.task.videos[0].id}.mp4"
    assert len(list(tmp_path.iterdir())) == 5


async def test_a_failed_download_is_the_outcomes_error_and_the_task_stays_succeeded(
    server: FakeKlingServer, tmp_path: Path
) -> None:
    """The task succeeded; only its file is missing: the outcome says both."""
    server.faults.rate(Fault.http_error(403, 1100, "forbidden"), 1.0, path_contains="/files")
    async with client_for(server, allow_private_downloads=True) as client:
        (outcome,) = [o async for o in client.extend_many(requests(1), download_to=tmp_path)]
    assert outcome.ok and outcome.files == ()
    assert isinstance(outcome.error, DownloadError) and "HTTP 403" in str(outcome.error)


async def test_a_reader_who_stops_reading_stops_new_creates(server: FakeKlingServer) -> None:
    """Breaking out of the loop (without closing) holds every slot: no more tasks are made."""
    async with client_for(server) as client:
        batch = client.extend_many(requests(30), concurrency=2)
        async for _ in batch:
            break
        await anyio.sleep(0.5)
        # The outcome taken freed one slot: at most one more task than the concurrency.
        assert server.record.create_count <= 3


async def test_fail_fast_sends_nothing_after_the_failure() -> None:
    """With fail_fast and one slot, the first failure is the last create."""
    async with FakeKlingServer(api_key=KEY, durations=FAST_TASKS, fail_rate=1.0) as server:
        outcomes = await run_batch(server, requests(10), concurrency=1, fail_fast=True)
        assert server.record.create_count == 1
    assert len(outcomes) == 1


async def test_every_created_task_is_logged(
    server: FakeKlingServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Each task id is logged (at DEBUG: all is well) as it is created, so even a stopped
    batch leaves a trace."""
    caplog.set_level("DEBUG", logger="kling_async")
    outcomes = await run_batch(server, requests(3), concurrency=3)
    created = {
        (r.getMessage(), r.kling_task_id, r.kling_request_key)  # type: ignore[attr-defined]
        for r in caplog.records
        if " created for request " in r.getMessage()
    }
    assert created == {
        (f"task {o.task.id} created for request {o.request.key}", o.task.id, o.request.key)
        for o in outcomes
        if o.task is not None
    }
    assert len(created) == 3


async def test_a_finished_batch_iterates_as_empty(server: FakeKlingServer) -> None:
    """Iterating a finished batch again ends at once, without a false alarm."""
    async with client_for(server) as client:
        batch = client.extend_many(requests(2), concurrency=2)
        assert len([o async for o in batch]) == 2
        assert [o async for o in batch] == []


async def test_an_account_error_stops_the_batch(server: FakeKlingServer) -> None:
    """A refused key fails every request alike: the batch sends no more, and each request
    not sent still gets its outcome, saying so."""
    server.faults.rate(Fault.openai_error(401, "Invalid API key provided"), 1.0, method="POST")
    items = requests(40)
    outcomes = await run_batch(server, items, concurrency=2)
    assert_one_outcome_each(items, outcomes)
    refused = [o for o in outcomes if isinstance(o.error, AuthenticationError)]
    unsent = [o for o in outcomes if isinstance(o.error, NotSentError)]
    assert 1 <= len(refused) <= 3
    assert len(refused) + len(unsent) == 40
    assert len([r for r in server.record.requests if r.method == "POST"]) == len(refused)


@pytest.mark.parametrize(("status", "code"), [(429, 1100), (403, 1304)])
async def test_a_refusal_of_the_whole_account_stops_the_batch(
    server: FakeKlingServer, status: int, code: int
) -> None:
    """An abnormal account (1100) or an address outside its IP allow-list (1304) refuses
    every create alike: the batch sends no more, as after a refused key."""
    server.faults.rate(Fault.http_error(status, code, "refused"), 1.0, method="POST")
    items = requests(5)
    outcomes = await run_batch(server, items, concurrency=1)
    assert_one_outcome_each(items, outcomes)
    refused = [o for o in outcomes if isinstance(o.error, PermissionDeniedError)]
    assert len(refused) == 1 and refused[0].error.code == code  # type: ignore[union-attr]
    assert all(isinstance(o.error, NotSentError) for o in outcomes if o not in refused)
    assert len([r for r in server.record.requests if r.method == "POST"]) == 1


async def test_a_refused_model_does_not_stop_the_batch(server: FakeKlingServer) -> None:
    """No permission for a model (1103) is about the request, not the account: the other
    requests are still sent."""
    server.faults.push(Fault.http_error(403, 1103, "no access to this model"), method="POST")
    items = requests(3)
    outcomes = await run_batch(server, items, concurrency=1)
    assert sorted(type(o.error).__name__ for o in outcomes) == [
        "NoneType",
        "NoneType",
        "PermissionDeniedError",
    ]


async def test_an_account_stop_is_logged_once_with_its_request(
    server: FakeKlingServer, caplog: pytest.LogCaptureFixture
) -> None:
    """The stop is a WARNING naming the error, with the request's key and Kling request id."""
    server.faults.push(Fault.http_error(429, 1102, "resource pack used up"), method="POST")
    with caplog.at_level(logging.WARNING, logger="kling_async"):
        outcomes = await run_batch(server, requests(3), concurrency=1)
    (stopper,) = [o for o in outcomes if isinstance(o.error, InsufficientBalanceError)]
    assert isinstance(stopper.error, InsufficientBalanceError) and stopper.error.request_id
    (record,) = [r for r in caplog.records if "stopping" in r.getMessage()]
    assert record.levelno == logging.WARNING
    assert record.getMessage() == f"stopping the batch: {stopper.error}"
    assert record.kling_request_key == stopper.request.key  # type: ignore[attr-defined]
    assert record.kling_request_id == stopper.error.request_id  # type: ignore[attr-defined]


async def test_a_key_revoked_while_a_task_runs_stops_the_batch_naming_the_task(
    server: FakeKlingServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Refused while watching, a request keeps its task in its outcome, and the stop's log
    line names that task."""
    events: list[BatchEvent] = []

    def revoke_once_submitted(event: BatchEvent) -> None:
        events.append(event)
        if event.kind is BatchEventKind.SUBMITTED:
            server.faults.rate(Fault.openai_error(401, "Invalid API key provided"), 1.0)

    with caplog.at_level(logging.WARNING, logger="kling_async"):
        outcomes = await run_batch(
            server, requests(3), concurrency=1, on_event=revoke_once_submitted
        )
    stopper = outcomes[0]
    assert isinstance(stopper.error, AuthenticationError) and stopper.task is not None
    assert all(isinstance(o.error, NotSentError) for o in outcomes[1:])
    (record,) = [r for r in caplog.records if "stopping" in r.getMessage()]
    assert record.kling_task_id == stopper.task.id  # type: ignore[attr-defined]
    assert record.kling_request_key == stopper.request.key  # type: ignore[attr-defined]


async def consume(items: list[VideoExtendRequest]) -> AsyncIterator[VideoExtendRequest]:
    for item in items:
        yield item


@pytest.mark.parametrize("streamed", [False, True])
async def test_a_balance_stop_gives_every_request_one_outcome(
    server: FakeKlingServer, streamed: bool
) -> None:
    """1102 on the first create: 10 requests, 10 outcomes; the 9 unsent say they were not
    sent and why, and nothing more reaches the API."""
    server.faults.push(Fault.http_error(429, 1102, "resource pack used up"), method="POST")
    items = requests(10)
    async with client_for(server) as client:
        given = consume(items) if streamed else items
        outcomes = [o async for o in client.extend_many(given, concurrency=1)]
    assert_one_outcome_each(items, outcomes)
    assert isinstance(outcomes[0].error, InsufficientBalanceError)
    for outcome in outcomes[1:]:
        assert outcome.task is None
        assert isinstance(outcome.error, NotSentError)
        assert outcome.error.request is outcome.request
        assert outcome.error.reason is outcomes[0].error
        assert str(outcome.error).startswith(
            f"Not sent: the extension of video {outcome.request.video_id} (key "
        )
        assert "resource pack used up" in str(outcome.error)
    assert [r.method for r in server.record.requests] == ["POST"]


async def test_requests_sharing_a_key_are_refused_before_sending(server: FakeKlingServer) -> None:
    """A list in which two requests share a key is refused at once, naming both."""
    items = [*requests(3), VideoExtendRequest("vid-9", task_id="parent-9", key="1")]
    async with client_for(server) as client:
        with pytest.raises(InvalidArgumentError) as caught:
            client.extend_many(items)
    assert str(caught.value) == (
        "requests[1] and requests[3] share the key '1': each request of a batch needs its own "
        "key. Nothing was sent."
    )
    assert server.record.requests == []


async def test_a_streamed_request_sharing_a_key_is_refused_alone(server: FakeKlingServer) -> None:
    """Requests from a stream are checked as they come: the later one is refused, unsent."""
    items = [*requests(2), VideoExtendRequest("vid-9", task_id="parent-9", key="0")]
    async with client_for(server) as client:
        outcomes = [o async for o in client.extend_many(consume(items))]
    refused = [o for o in outcomes if o.error is not None]
    assert [o.request.video_id for o in refused] == ["vid-9"]
    assert isinstance(refused[0].error, InvalidArgumentError)
    assert "requests[0] and requests[2] share the key '0'" in str(refused[0].error)
    assert "Nothing was sent for requests[2]." in str(refused[0].error)
    assert server.record.create_count == 2


async def test_identical_requests_without_keys_are_two_takes(server: FakeKlingServer) -> None:
    """Without a journal, the same extension twice (no keys) is sent twice."""
    items = [VideoExtendRequest("vid-1", task_id="p", prompt="on")] * 2
    outcomes = await run_batch(server, items)
    assert [o.ok for o in outcomes] == [True, True]
    assert server.record.create_count == 2


async def test_closing_a_batch_does_not_wait_out_retry_after(server: FakeKlingServer) -> None:
    """A create refused with a long Retry-After is not waited for once the batch is closed."""
    server.faults.push(Fault.rate_limited(retry_after=30, code=1302), method="POST", times=5)
    async with client_for(server) as client:
        batch = client.extend_many(requests(1), concurrency=1)
        async with batch:
            await anyio.sleep(0.2)  # the create was refused; the batch now waits 30 s
            started = anyio.current_time()
        assert anyio.current_time() - started < 1
    assert server.record.create_count == 0


async def test_nothing_is_sent_after_a_stop_by_a_request_that_waited() -> None:
    """A request waiting out a 1303 sends nothing once an account error stopped the batch."""
    async with FakeKlingServer(api_key=KEY, durations=FAST_TASKS) as server:
        server.faults.push(Fault.rate_limited(retry_after=0.3, code=1303), method="POST")
        server.faults.push(Fault.http_error(429, 1102, "resource pack used up"), method="POST")
        outcomes = await run_batch(server, requests(2), concurrency=2)
        assert server.record.create_count == 0
    assert len(outcomes) == 2
    assert all(o.error is not None for o in outcomes)
    assert any(isinstance(o.error, NotSentError) for o in outcomes)


async def test_a_batch_create_that_cannot_connect_is_tried_then_reported() -> None:
    """Nothing listening: each attempt surely made nothing, so the batch tries the create
    as often as its retry policy allows, then reports that it was never sent."""
    async with FakeKlingServer(api_key=KEY) as server:
        url = server.url  # closed when the block ends: nothing listens there any more
    clock = FakeClock()
    async with KlingClient(
        api_key=KEY, base_url=url, dialect="gateway", retry=PATIENT, poll=QUICK, clock=clock
    ) as client:
        (outcome,) = [o async for o in client.extend_many(requests(1))]
    assert isinstance(outcome.error, TransportError) and outcome.task is None
    assert not outcome.error.may_have_been_sent
    assert len(clock.sleeps) == PATIENT.max_attempts - 1


async def test_a_batch_gives_up_after_max_attempts_refusals(server: FakeKlingServer) -> None:
    """A create refused by 1302 again and again is given up after max_attempts, not retried
    forever; each wait before a new try is at least the rate-limit floor."""
    server.faults.push(Fault.rate_limited(retry_after=None, code=1302), method="POST", times=9)
    clock = FakeClock()
    retry = RetryPolicy(max_attempts=3, rate_limit_floor=1.0)
    async with client_for(server, clock=clock, retry=retry) as client:
        outcomes = [o async for o in client.extend_many(requests(1))]
    assert [type(o.error) for o in outcomes] == [RateLimitError]
    assert len([r for r in server.record.requests if r.method == "POST"]) == 3
    assert server.record.create_count == 0
    assert clock.sleeps == [1.0, 1.0]  # backoff under 1 s, lifted to the floor


async def test_over_the_parallel_limit_a_batch_waits_as_long_as_it_takes(
    server: FakeKlingServer,
) -> None:
    """1303 refusals do not use up max_attempts: the account is busy, the request is fine."""
    server.faults.push(Fault.rate_limited(retry_after=0.01, code=1303), method="POST", times=5)
    retry = RetryPolicy(max_attempts=2, base_delay=0.01, rate_limit_floor=0.01)
    async with client_for(server, retry=retry) as client:
        outcomes = [o async for o in client.extend_many(requests(1))]
    assert [o.ok for o in outcomes] == [True]
    assert len([r for r in server.record.requests if r.method == "POST"]) == 6


@pytest.mark.parametrize("retry_after", [0, -5, "Thu, 01 Jan 1970 00:00:00 GMT"])
async def test_a_1303_storm_with_retry_after_zero_is_waited_out_at_the_floor(
    server: FakeKlingServer, retry_after: float | str
) -> None:
    """1303 refusals are retried for as long as it takes; a Retry-After of 0, negative or in
    the past must not make that a loop sending creates as fast as the server answers."""
    server.faults.push(
        Fault.rate_limited(retry_after=retry_after, code=1303), method="POST", times=6
    )
    clock = FakeClock()
    retry = RetryPolicy(rate_limit_floor=1.0)
    async with client_for(server, clock=clock, retry=retry) as client:
        outcomes = [o async for o in client.extend_many(requests(1))]
    assert [o.ok for o in outcomes] == [True]
    assert len([r for r in server.record.requests if r.method == "POST"]) == 7
    assert clock.sleeps[:6] == [1.0] * 6


@pytest.mark.parametrize(("retry_after", "waited"), [(4, 4.0), (600, 60.0)])
async def test_a_refused_create_waits_the_servers_retry_after_up_to_the_cap(
    server: FakeKlingServer, retry_after: float, waited: float
) -> None:
    """A Retry-After is waited as given; one past max_retry_after is cut to it, not raised."""
    server.faults.push(Fault.rate_limited(retry_after=retry_after, code=1302), method="POST")
    clock = FakeClock()
    events: list[BatchEvent] = []
    async with client_for(server, clock=clock, retry=RetryPolicy(max_retry_after=60)) as client:
        outcomes = [o async for o in client.extend_many(requests(1), on_event=events.append)]
    assert [o.ok for o in outcomes] == [True]
    assert clock.sleeps[0] == waited
    (retried,) = [e for e in events if e.kind is BatchEventKind.RETRIED]  # the refusal, told
    assert retried.request == outcomes[0].request and isinstance(retried.error, RateLimitError)


async def test_the_window_halves_once_per_window_on_1303() -> None:
    """1303s of requests sent in one window are one piece of news: one halving, never below 1."""
    window = ConcurrencyWindow(8)
    sent_before = [await window.acquire() for _ in range(3)]
    for slot in sent_before:
        window.shrink(slot)
        window.release(slot)
    assert window.size == 4.0
    later = await window.acquire()
    window.shrink(later)
    assert window.size == 2.0
    window.release(later)
    for _ in range(5):
        slot = await window.acquire()
        window.shrink(slot)
        window.release(slot)
    assert window.size == 1.0


async def test_the_window_grows_back_by_about_one_slot_per_window() -> None:
    """Each success adds 1/size (2 -> 2.5 -> 2.9): about one slot per window, up to the limit."""
    window = ConcurrencyWindow(4)
    for _ in range(2):
        slot = await window.acquire()
        window.shrink(slot)
        window.release(slot)
    assert window.size == 1.0
    window.grow()
    assert window.size == 2.0
    window.grow()
    window.grow()
    assert window.size == pytest.approx(2.9)
    for _ in range(10):
        window.grow()
    assert window.size == 4.0


async def test_the_window_holds_requests_beyond_its_size() -> None:
    """acquire waits while the window is full and goes on as soon as a slot is released."""
    window = ConcurrencyWindow(2)
    first, _ = await window.acquire(), await window.acquire()
    taken: list[object] = []

    async def third() -> None:
        taken.append(await window.acquire())

    async with anyio.create_task_group() as group:
        group.start_soon(third)
        await anyio.wait_all_tasks_blocked()
        assert window.in_use == 2 and not taken
        window.release(first)
        window.release(first)  # twice is once
    assert (window.in_use, window.peak, len(taken)) == (2, 2, 1)
    with pytest.raises(ValueError, match="concurrency must be at least 1, not 0"):
        ConcurrencyWindow(0)


async def test_each_halving_starts_a_new_window(caplog: pytest.LogCaptureFixture) -> None:
    """Slots taken after one halving bring one more halving between them, not two; it is
    logged with the new size."""
    window = ConcurrencyWindow(16)
    first = await window.acquire()
    caplog.set_level("INFO", logger="kling_async")
    window.shrink(first)
    one, other = await window.acquire(), await window.acquire()
    window.shrink(one)
    window.shrink(other)
    assert window.size == 4.0
    assert "over the parallel-task limit: concurrency lowered to 8" in caplog.messages
    assert "over the parallel-task limit: concurrency lowered to 4" in caplog.messages
    assert all(
        hasattr(r, "kling_task_id") and hasattr(r, "kling_request_key") for r in caplog.records
    )


async def test_the_window_reports_the_most_tasks_it_held_at_once(server: FakeKlingServer) -> None:
    """peak starts at 0 (an empty batch held nothing) and is the most slots held at once."""
    async with client_for(server) as client:
        empty = client.extend_many([], concurrency=4)
        assert [o async for o in empty] == []
        batch = client.extend_many(requests(3), concurrency=2)
        assert len([o async for o in batch]) == 3
    assert (empty.window.peak, empty.window.in_use) == (0, 0)
    assert (batch.window.peak, batch.window.in_use) == (2, 0)


async def test_a_slot_taken_again_brings_news_of_the_new_window() -> None:
    """A slot given back during a 1303 and taken again halves the window on its next 1303."""
    window = ConcurrencyWindow(8)
    resent, old = await window.acquire(), await window.acquire()
    window.shrink(resent)
    window.release(resent)
    assert await window.acquire(resent) is resent and resent.held
    window.shrink(old)  # sent before the first halving: the same news
    assert window.size == 4.0
    window.shrink(resent)  # refused again after it was sent anew: a new piece of news
    assert window.size == 2.0


async def test_a_1303_without_a_journal_narrows_the_batchs_own_window(
    server: FakeKlingServer,
) -> None:
    """With no shared journal to narrow, a 1303 halves the batch's own window."""
    server.faults.push(Fault.rate_limited(retry_after=0.01, code=1303), method="POST")
    async with client_for(server) as client:
        batch = client.extend_many(requests(1), concurrency=8)
        assert [o.ok async for o in batch] == [True]
    assert batch.window.size < 8
