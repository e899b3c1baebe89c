"""One read for many tasks: list pages refresh the watchers of one kind (official API)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import anyio
import anyio.lowlevel
import pytest
from helpers import CountingLimiter

from kling_async import KlingClient, PollPolicy, RetryPolicy, Task, TaskKind, TaskStatus
from kling_async._clock import SystemClock
from kling_async._listed import ListedReads
from kling_async._ratelimit import RateLimiter
from kling_async.errors import APIError, InvalidRequestError, ServerError, WatchTimeoutError
from kling_async.testing import FakeKlingServer

pytestmark = pytest.mark.anyio

LONG = 3600.0  # a rest no test waits out: each ends by a wake-up or by cancellation


def _task(task_id: str, status: TaskStatus, created: float) -> Task:
    moment = datetime.fromtimestamp(created, tz=UTC)
    return Task(task_id, TaskKind.VIDEO_EXTEND, status, created_at=moment, updated_at=moment)


class Account:
    """Tasks of one account, newest first on the list; counts the reads of each kind."""

    def __init__(self, *tasks: Task, hidden: Sequence[str] = ()) -> None:
        self.tasks = {task.id: task for task in tasks}
        self.hidden = set(hidden)  # left off the list (lagging, deleted, ...)
        self.singles: list[str] = []
        self.pages: list[int] = []
        self.page_fault: Exception | None = None
        self.page_gate: anyio.Event | None = None

    async def read_one(
        self, task_id: str, kind: TaskKind, *, retry: RetryPolicy | None = None
    ) -> Task:
        self.singles.append(task_id)
        return self.tasks[task_id]

    async def read_page(self, kind: TaskKind, number: int, size: int) -> list[Task]:
        self.pages.append(number)
        if self.page_gate is not None:
            await self.page_gate.wait()
        if self.page_fault is not None:
            raise self.page_fault
        listed = [t for t in self.tasks.values() if t.id not in self.hidden]
        newest = sorted(listed, key=lambda t: t.created_at or 0, reverse=True)
        return newest[(number - 1) * size : number * size]


class RestsOnlyClock(SystemClock):
    """A clock on which only the long rests wait: every shorter sleep ends at once."""

    async def sleep(self, seconds: float) -> None:
        if seconds >= LONG:
            await anyio.sleep_forever()
        await anyio.lowlevel.checkpoint()


def _reads(account: Account, **kwargs: float) -> ListedReads:
    return ListedReads(
        account.read_one, account.read_page, clock=SystemClock(), spacing=600.0, **kwargs
    )


RUNNING = TaskStatus.PROCESSING


async def test_a_task_watched_alone_is_read_alone() -> None:
    """With no other watcher, a poll is one GET: never more than per-task polling."""
    account = Account(_task("a", RUNNING, 100))
    reads = _reads(account)
    assert (await reads.get_task("a")).id == "a"
    assert account.singles == ["a"]
    assert account.pages == []


async def test_one_page_answers_many_watchers_and_wakes_the_changed() -> None:
    """One list page answers the polls of every watcher it shows; a watcher whose task
    changed is woken, and its next poll costs nothing."""
    account = Account(*[_task(name, RUNNING, 100 + n) for n, name in enumerate("abc")])
    reads = _reads(account)
    for name in "abc":
        await reads.get_task(name)  # each watcher's first read, alone
    account.tasks["b"] = _task("b", TaskStatus.SUCCEED, 101)
    woken: list[str] = []

    async def rest(name: str) -> None:
        if await reads.rest(name, LONG):
            woken.append(name)

    async with anyio.create_task_group() as group:
        for name in "bc":
            group.start_soon(rest, name)
        await anyio.wait_all_tasks_blocked()
        assert (await reads.get_task("a")).status is RUNNING
        await anyio.wait_all_tasks_blocked()
        assert woken == ["b"]
        assert (await reads.get_task("b")).status is TaskStatus.SUCCEED
        assert (await reads.get_task("c")).status is RUNNING
        group.cancel_scope.cancel()
    assert account.pages == [1]
    assert account.singles == ["a", "b", "c"]  # the first reads only


async def test_tasks_the_list_omits_are_read_alone() -> None:
    """A watched task the pages do not show (lagging, deleted) falls back to one GET."""
    account = Account(_task("a", RUNNING, 100), _task("b", RUNNING, 101), hidden=["b"])
    reads = _reads(account)
    async with anyio.create_task_group() as group:
        group.start_soon(reads.rest, "b", LONG)
        await anyio.wait_all_tasks_blocked()
        await reads.get_task("a")
        assert (await reads.get_task("b")).id == "b"
        group.cancel_scope.cancel()
    assert account.pages == [1]
    assert account.singles == ["b"]


async def test_pages_stop_once_older_than_the_oldest_watched_task() -> None:
    """Pages are read until every watched task is seen or the page is older than all of
    them: a task missing from newer pages costs no endless paging."""
    others = [_task(f"other-{n}", RUNNING, 1000 + n) for n in range(5)]
    account = Account(*others, _task("a", RUNNING, 500), _task("b", RUNNING, 501), hidden=["b"])
    reads = _reads(account, page_size=2)
    for name in "ab":
        await reads.get_task(name)
    account.singles.clear()
    async with anyio.create_task_group() as group:
        group.start_soon(reads.rest, "b", LONG)
        await anyio.wait_all_tasks_blocked()
        await reads.get_task("a")
        await reads.get_task("b")
        group.cancel_scope.cancel()
    assert account.pages == [1, 2, 3, 4]  # pages 3 and 4 hold a (500) and the oldest
    assert account.singles == ["b"]


async def test_a_failing_list_page_falls_back_to_single_reads() -> None:
    """A list page that errors costs every watcher just its own GET, at once."""
    account = Account(_task("a", RUNNING, 100), _task("b", RUNNING, 101))
    account.page_fault = ServerError("the list is down", code=5000)
    reads = _reads(account)
    async with anyio.create_task_group() as group:
        group.start_soon(reads.rest, "b", LONG)
        await anyio.wait_all_tasks_blocked()
        assert (await reads.get_task("a")).id == "a"
        group.cancel_scope.cancel()
    assert account.pages == [1]
    assert account.singles == ["a"]


@pytest.mark.parametrize(
    ("fault", "pages"),
    [
        (InvalidRequestError("no list here", code=1202, http_status=404), [1]),
        (ServerError("the list is down", code=5000, http_status=500), [1, 1, 1]),
        (APIError("no idea", code="upstream_error", http_status=200, definitive=False), [1, 1, 1]),
    ],
)
async def test_a_list_endpoint_that_refuses_for_good_is_not_asked_again(
    fault: Exception, pages: list[int]
) -> None:
    """A list read the API refuses in its own words (no such endpoint, no permission) is
    not tried again: from then on watchers read alone, without a page request each round.
    A failure that may pass (a server error) is tried again at the next round."""
    account = Account(_task("a", RUNNING, 100), _task("b", RUNNING, 101))
    account.page_fault = fault
    reads = ListedReads(account.read_one, account.read_page, clock=SystemClock(), spacing=0.0)
    async with anyio.create_task_group() as group:
        group.start_soon(reads.rest, "b", LONG)
        await anyio.wait_all_tasks_blocked()
        for _ in range(3):
            assert (await reads.get_task("a")).id == "a"
        group.cancel_scope.cancel()
    assert account.pages == pages
    assert account.singles == ["a"] * 3


async def test_a_hanging_list_page_holds_no_other_watcher() -> None:
    """While one watcher's list read hangs, the others wait for it a few `spacing`s (on
    the clock), then read their tasks alone."""
    account = Account(_task("a", RUNNING, 100), _task("b", RUNNING, 101))
    account.page_gate = anyio.Event()
    reads = ListedReads(account.read_one, account.read_page, clock=RestsOnlyClock(), spacing=5.0)
    async with anyio.create_task_group() as group:
        group.start_soon(reads.rest, "b", LONG)
        await anyio.wait_all_tasks_blocked()
        group.start_soon(reads.get_task, "a")  # runs the round, which hangs
        await anyio.wait_all_tasks_blocked()
        assert (await reads.get_task("b")).id == "b"
        group.cancel_scope.cancel()
    assert account.singles == ["b"]


async def test_cancelling_a_watcher_mid_round_stops_everything() -> None:
    """A watcher cancelled while its round reads a page leaves no round behind: the next
    poll runs a new one, and once every watcher is gone nothing is read."""
    account = Account(_task("a", RUNNING, 100), _task("b", RUNNING, 101))
    account.page_gate = anyio.Event()
    reads = _reads(account)
    async with anyio.create_task_group() as group:
        group.start_soon(reads.rest, "b", LONG)
        group.start_soon(reads.get_task, "a")
        await anyio.wait_all_tasks_blocked()
        group.cancel_scope.cancel()
    assert account.pages == [1]
    assert not reads.watched
    account.page_gate.set()
    await anyio.wait_all_tasks_blocked()
    assert account.pages == [1]
    assert (await reads.get_task("a")).id == "a"  # alone now: one GET, no stale round
    assert account.singles == ["a"]


KEY = "test-api-key"
QUICK = PollPolicy(initial_delay=0.01, min_interval=0.01, max_interval=0.05, timeout=20)


async def _watch_all(client: KlingClient, count: int) -> list[Task]:
    tasks = [await client.extend_video(f"vid-{n}", task_id=f"parent-{n}") for n in range(count)]
    finished: list[Task] = []

    async def one(task: Task) -> None:
        finished.append(await client.watch(task))

    async with anyio.create_task_group() as group:
        for task in tasks:
            group.start_soon(one, task)
    return finished


async def test_official_watchers_refresh_from_list_pages_among_other_clients_tasks() -> None:
    """Watchers of an official client read list pages (500 a page), with tasks of another
    client of the account on them, and every watch still ends with its task."""
    async with FakeKlingServer(dialect="official", api_key=KEY) as server:
        options = {"api_key": KEY, "base_url": server.url, "dialect": "official"}
        async with KlingClient(**options, list_reads=False) as other:
            for n in range(30):
                await other.extend_video(f"other-{n}")
        async with KlingClient(**options, poll=QUICK) as client:
            finished = await _watch_all(client, 20)
    assert len(finished) == 20
    assert all(task.status is TaskStatus.SUCCEED for task in finished)
    pages = [r for r in server.record.requests if "pageNum" in r.query]
    assert pages
    assert all(r.query["pageSize"] == "500" for r in pages)


async def test_gateway_watchers_read_their_tasks_one_by_one() -> None:
    """A gateway has no list endpoint: its watchers never ask for one."""
    async with FakeKlingServer(dialect="gateway", api_key=KEY) as server:
        options = {"api_key": KEY, "base_url": server.url, "dialect": "gateway"}
        async with KlingClient(**options, poll=QUICK) as client:
            finished = await _watch_all(client, 5)
    assert len(finished) == 5
    assert not [r for r in server.record.requests if "pageNum" in r.query]


async def test_a_poll_answered_from_a_list_page_takes_no_slot_of_the_rate_limit() -> None:
    """With a rate limit, only requests take its slots: a page read for many watchers takes
    one, and the polls it answers take none (so the headroom list reads save is real)."""
    async with FakeKlingServer(dialect="official", api_key=KEY) as server:
        options = {"api_key": KEY, "base_url": server.url, "dialect": "official"}
        async with KlingClient(**options, poll=QUICK, requests_per_second=1000.0) as client:
            limiter = CountingLimiter(1000.0, clock=SystemClock())
            client._transport.limiter = limiter
            tasks = [await client.extend_video(f"vid-{n}", task_id=f"p-{n}") for n in range(50)]
            watchers = [client.watch(task) for task in tasks]
            async with anyio.create_task_group() as group:
                for watcher in watchers:
                    group.start_soon(watcher.result)
    pages = [r for r in server.record.requests if "pageNum" in r.query]
    assert pages
    assert sum(w.polls for w in watchers) > len(server.record.requests) - len(tasks)
    assert limiter.asked == len(server.record.requests)


async def test_a_list_watcher_whose_slot_comes_after_its_deadline_times_out() -> None:
    """Taking its slot request by request, a list watcher still keeps its deadline when the
    rate limit has no slot for it in time: it times out, and nothing is sent."""
    async with FakeKlingServer(dialect="official", api_key=KEY) as server:
        options = {"api_key": KEY, "base_url": server.url, "dialect": "official"}
        async with KlingClient(**options, poll=QUICK, requests_per_second=1000.0) as client:
            task = await client.extend_video("vid-1", task_id="p-1")
            limiter = RateLimiter(1 / 3600, clock=SystemClock(), burst=1)
            client._transport.limiter = limiter
            await limiter.acquire()  # the next slot is an hour away
            with pytest.raises(WatchTimeoutError):
                await client.watch(task, timeout=0.2)
    assert [r.method for r in server.record.requests] == ["POST"]
