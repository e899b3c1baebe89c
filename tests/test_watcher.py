"""TaskWatcher on an in-memory task source and a fake clock: no sockets, no waiting."""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from datetime import UTC, datetime

import anyio
import attrs
import pytest
from helpers import CountingLimiter

from kling_async import (
    NotFoundError,
    PollPolicy,
    RateLimitError,
    RetryPolicy,
    ServerError,
    Task,
    TaskFailedError,
    TaskKind,
    TaskStatus,
    TaskWatcher,
    TransportError,
    WatchTimeoutError,
)
from kling_async._clock import FakeClock
from kling_async.policies import CompletionTimes

pytestmark = pytest.mark.anyio

Step = str | Exception | Task


class ScriptedSource:
    """Answers get_task from a script: a status string, a task, or an exception to raise."""

    def __init__(self, clock: FakeClock, script: Iterable[Step], created: float = 0.0) -> None:
        self.clock = clock
        self.script = list(script)
        self.created = created
        self.calls: list[float] = []
        self.policies: list[RetryPolicy | None] = []

    async def get_task(
        self,
        task_id: str,
        kind: TaskKind = TaskKind.VIDEO_EXTEND,
        *,
        retry: RetryPolicy | None = None,
    ) -> Task:
        self.calls.append(self.clock.monotonic())
        self.policies.append(retry)
        step = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        if isinstance(step, Exception):
            raise step
        return step if isinstance(step, Task) else _task(task_id, step, self.created)


def _task(task_id: str, status: str, created: float = 0.0) -> Task:
    known = {s.value for s in TaskStatus}
    return Task(
        task_id,
        TaskKind.VIDEO_EXTEND,
        TaskStatus(status) if status in known else TaskStatus.UNKNOWN,
        status_message="policy" if status == "failed" else None,
        created_at=datetime.fromtimestamp(created, tz=UTC) if created else None,
        raw={"task_status": status},
    )


FAST = PollPolicy(initial_delay=1.0, min_interval=1.0, max_interval=4.0, jitter=False, timeout=600)


def _watcher(source: ScriptedSource, clock: FakeClock, policy: PollPolicy = FAST) -> TaskWatcher:
    return TaskWatcher(source, "t-1", policy=policy, clock=clock)


async def test_await_returns_the_succeeded_task() -> None:
    """Awaiting polls until succeed and returns that snapshot."""
    clock = FakeClock()
    source = ScriptedSource(clock, ["submitted", "processing", "processing", "succeed"])
    task = await _watcher(source, clock)
    assert task.status is TaskStatus.SUCCEED
    assert len(source.calls) == 4


async def test_failed_task_raises_with_its_message() -> None:
    """A failed task raises TaskFailedError carrying the task and its reason."""
    clock = FakeClock()
    source = ScriptedSource(clock, ["processing", "failed"])
    with pytest.raises(TaskFailedError, match="policy") as caught:
        await _watcher(source, clock)
    assert caught.value.task.status is TaskStatus.FAILED


async def test_iteration_yields_on_status_change_only() -> None:
    """Repeated statuses are not yielded again; the terminal one ends the stream."""
    clock = FakeClock()
    script = ["submitted", "submitted", "processing", "processing", "processing", "failed"]
    source = ScriptedSource(clock, script)
    seen = [task.status_text async for task in _watcher(source, clock)]
    assert seen == ["submitted", "processing", "failed"]


async def test_unknown_status_is_tolerated_until_terminal() -> None:
    """An unknown status is reported as a change and watching goes on."""
    clock = FakeClock()
    source = ScriptedSource(clock, ["submitted", "queueing", "queueing", "succeed"])
    seen = [task.status async for task in _watcher(source, clock)]
    assert seen == [TaskStatus.SUBMITTED, TaskStatus.UNKNOWN, TaskStatus.SUCCEED]


async def test_a_stale_lower_status_is_ignored() -> None:
    """processing, then a lagging copy saying submitted: not a change; the watch goes on."""
    clock = FakeClock()
    script = ["submitted", "processing", "submitted", "processing", "submitted", "succeed"]
    source = ScriptedSource(clock, script)
    watcher = _watcher(source, clock)
    seen = [task.status_text async for task in watcher]
    assert seen == ["submitted", "processing", "succeed"]
    assert len(source.calls) == 6


def _updated(status: str, second: int) -> Task:
    return attrs.evolve(_task("t-1", status), updated_at=datetime.fromtimestamp(second, tz=UTC))


async def test_an_older_copy_of_an_unknown_status_is_ignored() -> None:
    """Where statuses cannot be compared, a copy updated earlier than the one held is stale."""
    clock = FakeClock()
    script = [_updated("queueing", 10), _updated("processing", 20), _updated("queueing", 15)]
    source = ScriptedSource(clock, [*script, "succeed"])
    seen = [task.status_text async for task in _watcher(source, clock)]
    assert seen == ["queueing", "processing", "succeed"]


async def test_an_end_counts_after_an_unknown_status_dated_later() -> None:
    """A gateway dating its own 'queueing' later than the API dates the end cannot hold a
    watch back: an end is never a stale copy."""
    clock = FakeClock()
    source = ScriptedSource(clock, [_updated("queueing", 50), _updated("succeed", 10)])
    seen = [task.status_text async for task in _watcher(source, clock)]
    assert seen == ["queueing", "succeed"]


async def test_an_older_copy_does_not_replace_the_snapshot_held() -> None:
    """The snapshot a watch ends with is the newest one read, not the last one to arrive."""
    clock = FakeClock()
    source = ScriptedSource(clock, [_updated("processing", 20), _updated("processing", 10)])
    watcher = _watcher(source, clock, attrs.evolve(FAST, timeout=10))
    with pytest.raises(WatchTimeoutError):
        await watcher
    assert len(source.calls) > 2
    assert watcher.last is not None and watcher.last.updated_at == _updated("x", 20).updated_at


async def test_a_later_status_counts_whatever_its_timestamp() -> None:
    """Progress is believed even when the gateway's clock dated it earlier."""
    clock = FakeClock()
    source = ScriptedSource(
        clock, [_updated("submitted", 50), _updated("processing", 5), "succeed"]
    )
    seen = [task.status async for task in _watcher(source, clock)]
    assert seen == [TaskStatus.SUBMITTED, TaskStatus.PROCESSING, TaskStatus.SUCCEED]


async def test_deadline_raises_watch_timeout_with_last_status() -> None:
    """Past the deadline the watch ends with WatchTimeoutError, without real waiting."""
    clock = FakeClock()
    source = ScriptedSource(clock, ["processing"])
    policy = PollPolicy(initial_delay=1, min_interval=1, max_interval=4, jitter=False, timeout=30)
    started = clock.monotonic()
    with pytest.raises(WatchTimeoutError) as caught:
        await _watcher(source, clock, policy)
    assert caught.value.task_id == "t-1"
    assert caught.value.last_status is TaskStatus.PROCESSING
    assert clock.monotonic() - started == pytest.approx(30.0)


@pytest.mark.parametrize(
    "fault",
    [
        ServerError("boom", code=5000, http_status=500),
        RateLimitError("slow down", code=1302, http_status=429, retry_after=1.0),
        TransportError("dropped", may_have_been_sent=True),
    ],
)
async def test_transient_poll_errors_never_end_the_watch(fault: Exception) -> None:
    """5xx, 429 and dropped connections are reported to the hook and polling goes on."""
    clock = FakeClock()
    source = ScriptedSource(clock, ["processing", fault, fault, fault, "succeed"])
    heard: list[Exception] = []
    watcher = TaskWatcher(source, "t-1", policy=FAST, clock=clock, on_poll_error=heard.append)
    task = await watcher
    assert task.status is TaskStatus.SUCCEED
    assert heard == [fault, fault, fault]


async def test_permanent_error_ends_the_watch() -> None:
    """A task id that was never found ends the watch with NotFoundError."""
    clock = FakeClock()
    missing = NotFoundError("no such task", code=1203, http_status=404)
    source = ScriptedSource(clock, [missing])
    with pytest.raises(NotFoundError):
        await _watcher(source, clock)
    assert len(source.calls) == 1


async def test_a_lagging_not_found_for_a_known_task_is_retried() -> None:
    """Right after creation a gateway's cache may not know the task yet: keep watching."""
    clock = FakeClock()
    missing = NotFoundError("task_not_exist", code="task_not_exist", http_status=400)
    source = ScriptedSource(clock, [missing, missing, "processing", "succeed"])
    created = _task("t-1", "submitted")
    task = await TaskWatcher(source, created, policy=FAST, clock=clock)
    assert task.status is TaskStatus.SUCCEED


async def test_not_found_long_after_the_start_ends_the_watch() -> None:
    """Past the grace period, 'not found' for a known task is believed."""
    clock = FakeClock()
    missing = NotFoundError("gone", code=1203, http_status=404)
    source = ScriptedSource(clock, [missing])
    watcher = TaskWatcher(source, _task("t-1", "processing"), policy=FAST, clock=clock)
    clock.advance(121)
    with pytest.raises(NotFoundError):
        await watcher


async def test_terminal_task_is_answered_without_a_request() -> None:
    """Watching a task already known to be finished sends nothing."""
    clock = FakeClock()
    source = ScriptedSource(clock, ["succeed"])
    done = _task("t-1", "succeed")
    assert await TaskWatcher(source, done, policy=FAST, clock=clock) is done
    assert source.calls == []


async def test_polls_never_come_faster_than_the_floor() -> None:
    """After the first look, polls are at least min_interval apart."""
    clock = FakeClock()
    source = ScriptedSource(clock, ["processing"] * 30 + ["succeed"])
    policy = PollPolicy(initial_delay=0, min_interval=2, max_interval=9, jitter=True, timeout=None)
    await _watcher(source, clock, policy)
    gaps = [b - a for a, b in zip(source.calls, source.calls[1:], strict=False)]
    assert min(gaps) >= 2 * 0.9


async def test_cancelling_the_awaiting_coroutine_stops_polling_at_once() -> None:
    """A cancelled watch returns promptly and polls no more."""

    class Hanging:
        polls = 0

        async def get_task(self, task_id: str, kind: TaskKind = TaskKind.VIDEO_EXTEND) -> Task:
            self.polls += 1
            await anyio.sleep_forever()
            raise AssertionError("unreachable")

    source = Hanging()
    watcher = TaskWatcher(source, "t-1", policy=FAST, clock=FakeClock())
    with anyio.move_on_after(0.05) as scope:
        await watcher
    assert scope.cancelled_caught
    assert source.polls == 1


async def test_a_read_still_hanging_at_the_deadline_ends_the_watch() -> None:
    """A GET that outlives the deadline is cut short: WatchTimeoutError, not a hang."""

    class Hanging:
        async def get_task(self, task_id: str, kind: TaskKind = TaskKind.VIDEO_EXTEND) -> Task:
            await anyio.sleep_forever()
            raise AssertionError("unreachable")

    policy = attrs.evolve(FAST, timeout=0.05)
    with anyio.fail_after(5):  # the test's own guard: a hang fails here instead
        with pytest.raises(WatchTimeoutError) as caught:
            await TaskWatcher(Hanging(), "t-1", policy=policy, clock=FakeClock())
    assert caught.value.task_id == "t-1"


class TimedSource:
    """A task that succeeds `duration` seconds after its creation, on the fake clock."""

    def __init__(self, clock: FakeClock, duration: float) -> None:
        self.clock = clock
        self.created = clock.time()
        self.duration = duration
        self.polls = 0

    async def get_task(self, task_id: str, kind: TaskKind = TaskKind.VIDEO_EXTEND) -> Task:
        self.polls += 1
        done = self.clock.time() - self.created >= self.duration
        return _task(task_id, "succeed" if done else "processing", self.created)

    def delay(self) -> float:
        """How late the watcher noticed the end (it returns right after its last poll)."""
        return self.clock.time() - self.created - self.duration


async def test_adaptive_schedule_learns_and_polls_less() -> None:
    """Knowing tasks take about two minutes, it beats a fixed 5 s loop: fewer polls, no later."""
    learned = CompletionTimes()
    for seconds in (100, 105, 110, 115, 118, 120, 121, 122, 125, 130, 135, 140):
        learned.observe(seconds)
    every_5s = PollPolicy(initial_delay=5, min_interval=5, max_interval=5, adaptive=False)
    adaptive = PollPolicy(min_interval=2, max_interval=30)
    results = {}
    for name, policy, knowledge in (("fixed", every_5s, None), ("adaptive", adaptive, learned)):
        clock = FakeClock()
        source = TimedSource(clock, duration=121.0)
        task = _task("t", "submitted", clock.time())
        await TaskWatcher(
            source, task, policy=attrs.evolve(policy, jitter=False), clock=clock, learned=knowledge
        )
        results[name] = (source.polls, source.delay())
    assert results["adaptive"][0] < results["fixed"][0]
    assert results["adaptive"][1] <= results["fixed"][1]


async def test_each_poll_waits_for_one_slot_of_the_pacer() -> None:
    """Given a pacer, a watcher waits there once before each poll, on the client's clock."""
    clock = FakeClock()
    source = ScriptedSource(clock, ["submitted", "processing", "processing", "succeed"])
    pacer = CountingLimiter(0.1, clock=clock, burst=1)  # a slot every 10 s: slower than the policy
    await TaskWatcher(source, "t-1", policy=FAST, clock=clock, pacer=pacer)
    assert pacer.asked == len(source.calls) == 4
    gaps = [later - earlier for earlier, later in itertools.pairwise(source.calls)]
    assert gaps == [pytest.approx(10.0)] * 3


async def test_a_pacer_slot_after_the_deadline_times_out_without_a_poll() -> None:
    """When the rate limit's next slot comes after the deadline, the watch times out at the
    deadline and sends nothing."""
    clock = FakeClock()
    source = ScriptedSource(clock, ["processing"])
    pacer = CountingLimiter(1 / 100, clock=clock, burst=1)
    await pacer.acquire()  # someone else's request: the next slot is 100 s away
    policy = attrs.evolve(FAST, timeout=30)
    with pytest.raises(WatchTimeoutError):
        await TaskWatcher(source, "t-1", policy=policy, clock=clock, pacer=pacer)
    assert source.calls == []
    assert clock.monotonic() == pytest.approx(30.0)


def _gaps(calls: list[float]) -> list[float]:
    return [later - earlier for earlier, later in itertools.pairwise(calls)]


async def test_after_a_failed_read_a_watcher_waits_the_whole_retry_cap() -> None:
    """From the first failed read on, the next comes RetryPolicy.max_delay later, never
    sooner; every read is a single attempt; the first success brings the schedule back."""
    clock = FakeClock()
    down = ServerError("down", code=5001, http_status=503)
    script = ["processing", down, down, down, down, down, "processing", "processing", "succeed"]
    source = ScriptedSource(clock, script)
    await TaskWatcher(source, "t-1", policy=FAST, clock=clock, backoff=RetryPolicy())
    gaps = _gaps(source.calls)
    assert gaps[:6] == [1.0, 20.0, 20.0, 20.0, 20.0, 20.0]
    assert all(gap <= FAST.max_interval for gap in gaps[6:])
    assert [policy and policy.max_attempts for policy in source.policies] == [1] * 9


class OneCallback:
    """Wake-ups where a callback arrives at once in the first wait of any length."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.sent = False

    def take_hint(self, task_id: str) -> bool:
        return False

    async def wait(self, task_id: str, timeout: float) -> bool:
        if timeout > 0 and not self.sent:
            self.sent = True
            return True
        await self.clock.sleep(timeout)
        return False


async def test_with_callbacks_a_failed_read_is_read_again_a_cap_later() -> None:
    """A read woken by a callback that fails is not left to the five-minute safety net:
    the next read comes RetryPolicy.max_delay later."""
    clock = FakeClock()
    down = ServerError("down", code=5001, http_status=503)
    source = ScriptedSource(clock, ["processing", down, "succeed"])
    wakeups = OneCallback(clock)
    watcher = TaskWatcher(
        source, "t-1", policy=FAST, clock=clock, wakeups=wakeups, backoff=RetryPolicy()
    )
    assert (await watcher).status is TaskStatus.SUCCEED
    assert _gaps(source.calls) == [FAST.min_interval, 20.0]


class OutageSource:
    """Every read fails from `begins` until `ends` (on the clock); the task succeeds then."""

    def __init__(self, clock: FakeClock, begins: float, ends: float, error: Exception) -> None:
        self.clock = clock
        self.begins = begins
        self.ends = ends
        self.error = error
        self.calls: list[float] = []

    async def get_task(
        self,
        task_id: str,
        kind: TaskKind = TaskKind.VIDEO_EXTEND,
        *,
        retry: RetryPolicy | None = None,
    ) -> Task:
        now = self.clock.monotonic()
        self.calls.append(now)
        if self.begins <= now < self.ends:
            raise self.error
        return _task(task_id, "succeed" if now >= self.ends else "processing")


@pytest.mark.parametrize("interval", [0.5, 2.0, 5.0, 30.0])
@pytest.mark.parametrize("outage", [10.0, 30.0, 61.0, 300.0])
@pytest.mark.parametrize(
    "error",
    [
        ServerError("down", code=5001, http_status=503),
        TransportError("dropped", may_have_been_sent=True),
    ],
    ids=["503", "dropped"],
)
async def test_an_outage_costs_a_watcher_one_read_per_retry_cap(
    interval: float, outage: float, error: Exception
) -> None:
    """However dense its schedule, a watcher reads at most 1 + T / max_delay times during an
    outage of T seconds (whenever in its schedule it begins), and its watch then ends."""
    retry = RetryPolicy()
    policy = PollPolicy(initial_delay=0.0, min_interval=interval, max_interval=interval)
    for phase in (0.0, 0.3, 0.7):
        clock = FakeClock()
        begins = 100.0 + phase * interval
        source = OutageSource(clock, begins, begins + outage, error)
        finished = await TaskWatcher(source, "t-1", policy=policy, clock=clock, backoff=retry)
        assert finished.status is TaskStatus.SUCCEED
        during = [at for at in source.calls if begins <= at < begins + outage]
        assert len(during) <= 1 + outage / retry.max_delay, (phase, during)
        assert source.calls[-1] < begins + outage + max(interval, retry.max_delay)


async def test_a_failing_watcher_waits_out_a_retry_after() -> None:
    """A read refused with Retry-After is not tried again sooner than asked."""
    clock = FakeClock()
    limited = RateLimitError("slow down", code=1302, http_status=429, retry_after=45.0)
    source = ScriptedSource(clock, ["processing", limited, "succeed"])
    await TaskWatcher(source, "t-1", policy=FAST, clock=clock, backoff=RetryPolicy())
    assert _gaps(source.calls)[1] == 45.0


async def test_without_a_backoff_a_failing_watcher_keeps_its_schedule() -> None:
    """A watcher not given a RetryPolicy (an in-memory source) polls as its policy says."""
    clock = FakeClock()
    down = ServerError("down", code=5001, http_status=503)
    source = ScriptedSource(clock, ["processing", down, down, "succeed"])
    await TaskWatcher(source, "t-1", policy=FAST, clock=clock)
    assert max(_gaps(source.calls)) <= FAST.max_interval
    assert source.policies == [None] * 4
