"""`TaskWatcher`: follow one task until it succeeds or fails.

The watcher reads its task through a `TaskSource` (the client satisfies it), sleeps on the
client's clock between polls as its `PollPolicy` says, and reports each change of status.
Given a `Pacer` (the client's rate limiter), it also waits there for each poll's slot, so
the source it reads from must take none. It owns no background task: all its work happens
inside the coroutine that awaits or iterates it, so cancelling that coroutine stops the
polling at once and leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Generator
from typing import Any, Protocol

from ._clock import Clock
from .errors import APIError, NotFoundError, TaskFailedError, TransportError, WatchTimeoutError
from .models import Task, TaskKind, TaskStatus
from .policies import CompletionTimes, PollPolicy, RetryPolicy
from .telemetry import NO_TELEMETRY, _Off, log_fields

__all__ = ["Pacer", "TaskSource", "TaskWatcher", "Wakeups"]

log = logging.getLogger(__name__)  # a child of "kling_async"

#: Seconds after the watch starts during which "not found" for a task known to exist is read
#: as a lagging gateway cache (retried) rather than as the end of the watch.
NOT_FOUND_GRACE = 120.0

# Jitter needs no generator of its own per watcher (each holds 2.5 KiB of state).
_JITTER = random.Random()
#: The reads of a watcher given a backoff: the watcher itself retries them, a cap apart.
_ONE_ATTEMPT = RetryPolicy(max_attempts=1)

#: How far along its life each known status is; a copy one step back is a stale one.
_STAGE = {
    TaskStatus.SUBMITTED: 0,
    TaskStatus.PROCESSING: 1,
    TaskStatus.SUCCEED: 2,
    TaskStatus.FAILED: 2,
}


class TaskSource(Protocol):
    """Where a watcher reads its task from (`KlingClient.get_task` fits)."""

    async def get_task(
        self, task_id: str, kind: TaskKind = ..., *, retry: RetryPolicy | None = ...
    ) -> Task:
        """The task's current state; `retry` replaces the source's retry policy for the read
        (asked for only by a watcher given a `backoff`)."""
        ...


class Wakeups(Protocol):
    """Early wake-ups for watchers (a `CallbackReceiver` fits)."""

    def take_hint(self, task_id: str) -> bool:
        """True (once) when the task was announced finished since the last look."""
        ...

    async def wait(self, task_id: str, timeout: float) -> bool:
        """Sleep up to `timeout` or until the task is announced finished; True if woken."""
        ...


class Pacer(Protocol):
    """The rate limit a watcher's polls keep to (a `RateLimiter` fits)."""

    async def acquire(self, within: float | None = None) -> bool:
        """Wait for the next request's slot; or, when it does not start within `within`
        seconds, take none, wait `within` seconds and answer False."""
        ...


class TaskWatcher:
    """Awaitable and async-iterable view of one task's progress.

    ``await watcher`` returns the succeeded `Task`, or raises `TaskFailedError` (the task
    failed), `WatchTimeoutError` (the deadline passed) or the `APIError` that made further
    watching pointless (the task does not exist, the credentials were refused). Transient
    failures of a poll (timeouts, 5xx, 429, dropped connections) never end the watch. Given
    a `backoff` (the client passes its `RetryPolicy`), the watcher is the retry loop of its
    own reads: each read is a single attempt, and after a failed one the next comes
    ``backoff.max_delay`` later (or later still, as its schedule or a ``Retry-After`` says),
    until a read succeeds and the schedule resumes. An outage of T seconds thus costs it at
    most ``1 + T / backoff.max_delay`` reads, however densely it was polling.

    ``async for task in watcher`` yields a snapshot each time the status changes and ends after
    the terminal one (a failed task is yielded, not raised). Each use continues from the latest
    snapshot, so a finished watcher answers at once without another request.

    The stream never goes backwards: a copy from a lagging cache (a status earlier in the
    task's life than one already seen, or the same status updated earlier) is ignored.

    >>> watcher = client.watch(task)                     # doctest: +SKIP
    >>> async for snapshot in watcher:                   # doctest: +SKIP
    ...     print(snapshot.status)
    >>> finished = await client.watch(task.id)           # doctest: +SKIP
    """

    # Tens of thousands may be watching at once: no per-instance __dict__.
    __slots__ = (
        "_backoff",
        "_clock",
        "_failures_in_a_row",
        "_last_poll",
        "_learned",
        "_on_poll_error",
        "_pacer",
        "_previous_delay",
        "_retry_after",
        "_rng",
        "_shared_rest",
        "_source",
        "_started",
        "_telemetry",
        "_wakeups",
        "kind",
        "last",
        "policy",
        "polls",
        "task_id",
    )

    def __init__(
        self,
        source: TaskSource,
        task: Task | str,
        *,
        kind: TaskKind = TaskKind.VIDEO_EXTEND,
        policy: PollPolicy,
        clock: Clock,
        learned: CompletionTimes | None = None,
        rng: random.Random | None = None,
        on_poll_error: Callable[[Exception], object] | None = None,
        wakeups: Wakeups | None = None,
        pacer: Pacer | None = None,
        backoff: RetryPolicy | None = None,
        telemetry: _Off = NO_TELEMETRY,
    ) -> None:
        self.task_id = task.id if isinstance(task, Task) else task
        self.kind = task.kind if isinstance(task, Task) else kind
        self.policy = policy
        self.last: Task | None = task if isinstance(task, Task) else None
        self.polls = 0
        self._source = source
        # A source that reads many tasks at once (`ListedReads`) wakes a watcher whose task
        # it saw change; its reads cost no request, so no floor holds such a wake-up back.
        self._shared_rest: Callable[[str, float], Awaitable[bool]] | None = getattr(
            source, "rest", None
        )
        self._clock = clock
        self._learned = learned
        self._rng = rng or _JITTER
        self._on_poll_error = on_poll_error
        self._wakeups = wakeups
        self._pacer = pacer
        self._telemetry = telemetry
        self._started = clock.monotonic()
        self._last_poll = float("-inf")
        self._failures_in_a_row = 0
        self._previous_delay: float | None = None
        self._backoff = backoff
        self._retry_after: float | None = None

    def __repr__(self) -> str:
        status = self.last.status.value if self.last else "not read yet"
        return f"<TaskWatcher {self.task_id} {status}, {self.polls} polls>"

    def __await__(self) -> Generator[None, None, Task]:
        return self.result().__await__()

    async def result(self) -> Task:
        """Watch to the end; the succeeded task (what ``await watcher`` does)."""
        deadline = self._deadline()
        trace = self._telemetry.watch(self.task_id, self.kind)
        try:
            while self.last is None or not self.last.is_terminal:
                with trace.step():
                    await self._step(deadline)
        except BaseException as exc:
            trace.ended(self.last, self.polls, exc)
            raise
        trace.ended(self.last, self.polls)
        if self.last.status is TaskStatus.FAILED:
            raise TaskFailedError(self.last)
        return self.last

    def __aiter__(self) -> AsyncIterator[Task]:
        return self._changes()

    async def _changes(self) -> AsyncIterator[Task]:
        deadline = self._deadline()
        trace = self._telemetry.watch(self.task_id, self.kind)
        try:
            while self.last is None or not self.last.is_terminal:
                with trace.step():  # never across a yield: the caller's context is not ours
                    changed = await self._step(deadline)
                if changed is not None:
                    yield changed
        except BaseException as exc:
            trace.ended(self.last, self.polls, exc)
            raise
        trace.ended(self.last, self.polls)

    async def _step(self, deadline: float | None) -> Task | None:
        """Wait, then read the task once; the new snapshot if its status changed."""
        await self._sleep_before_poll(deadline)
        if self._pacer is not None and not await self._pacer.acquire(self._left(deadline)):
            raise self._timeout()  # the poll's slot of the rate limit came after the deadline
        task = await self._poll(deadline)
        if task is None or self._is_stale(task):
            return None
        changed = self.last is None or task.status_text != self.last.status_text
        self.last = task
        if task.is_terminal:
            self._learn(task)
        return task if changed else None

    def _is_stale(self, task: Task) -> bool:
        """Whether `task` is an older copy than the snapshot held (a gateway's lagging cache).

        A later status is progress whatever its timestamp says (clocks of a gateway and of
        the API behind it may differ), and so is an end, which no copy can be older than
        while the watch goes on; timestamps decide only between copies of one status, or
        where a status is unknown.
        """
        last = self.last
        if last is None or task.is_terminal:
            return False
        before, after = _STAGE.get(last.status), _STAGE.get(task.status)
        if before is not None and after is not None and before != after:
            stale = after < before
        else:
            stale = (
                task.updated_at is not None
                and last.updated_at is not None
                and task.updated_at < last.updated_at
            )
        if stale:
            log.debug(
                "ignored a stale copy of task %s (%s after %s)",
                self.task_id,
                task.status_text,
                last.status_text,
                extra=log_fields(self.task_id),
            )
        return stale

    def _left(self, deadline: float | None) -> float | None:
        """Seconds until the deadline (never negative); None when there is none."""
        return None if deadline is None else max(0.0, deadline - self._clock.monotonic())

    def _deadline(self) -> float | None:
        timeout = self.policy.timeout
        return None if timeout is None else self._started + timeout

    async def _sleep_before_poll(self, deadline: float | None) -> None:
        """Wait for the next poll, or raise `WatchTimeoutError` if the deadline comes first."""
        delay = self._next_delay()
        now = self._clock.monotonic()
        if deadline is not None and now + delay >= deadline:
            if not await self._rest(max(0.0, deadline - now)):
                raise self._timeout()
        elif self._wakeups is None and self._shared_rest is None:
            await self._clock.sleep(delay)  # the common case, one frame shallower
        else:
            await self._rest(delay)

    async def _rest(self, seconds: float) -> bool:
        """Sleep `seconds`, or less when a callback says the task ended; True if woken."""
        if self._wakeups is None:
            if self._shared_rest is not None:
                return await self._shared_rest(self.task_id, seconds)
            await self._clock.sleep(seconds)
            return False
        woken = await self._wakeups.wait(self.task_id, seconds)
        if woken:  # even a flood of (forged) callbacks never beats the policy's floor
            too_soon = self._last_poll + self.policy.min_interval - self._clock.monotonic()
            if too_soon > 0:
                await self._clock.sleep(too_soon)
        return woken

    def _next_delay(self) -> float:
        if self.last is None and self.polls == 0:
            return 0.0  # nothing is known of the task yet: look first
        backoff = self._backoff if self._failures_in_a_row else None
        if self._wakeups is not None:  # callbacks announce the end: polls are a safety net
            if backoff is not None:  # but a failed read (woken by a callback, maybe) is redone
                return self._after_failure(backoff, 0.0)
            return self.policy.spread(self.policy.callback_interval, self._rng.random())
        delay = self.policy.next_delay(
            age=self._age(),
            polls_done=self.polls,
            learned=self._learned,
            previous=self._previous_delay,
        )
        self._previous_delay = delay
        delay = self.policy.spread(delay, self._rng.random())
        return delay if backoff is None else self._after_failure(backoff, delay)

    def _after_failure(self, backoff: RetryPolicy, scheduled: float) -> float:
        """The wait after a failed read: the whole retry cap, or longer when the schedule or
        a ``Retry-After`` says so.

        From the first failure on, and never shortened by the spread: any shorter first wait
        (a burst of retries, a doubling from a dense schedule) would cost more than one read
        per cap in an outage that began just before the failed read.
        """
        return max(scheduled, backoff.max_delay, self._retry_after or 0.0)

    def _age(self) -> float:
        """Seconds since the task was created: by its own timestamp when known."""
        created = self.last.created_at if self.last is not None else None
        if created is None:
            return self._clock.monotonic() - self._started
        return max(0.0, self._clock.time() - created.timestamp())

    async def _poll(self, deadline: float | None) -> Task | None:
        """One read of the task; None when it failed transiently (try again later)."""
        self.polls += 1
        self._last_poll = self._clock.monotonic()
        try:
            task = await self._read(deadline)
        except (APIError, TransportError) as exc:
            if not (exc.retryable or self._lagging(exc)):
                raise
            self._failures_in_a_row += 1
            self._retry_after = exc.retry_after if isinstance(exc, APIError) else None
            level = logging.WARNING if self._failures_in_a_row % 5 == 0 else logging.INFO
            log.log(
                level,
                "reading task %s failed (%d in a row), still watching: %s",
                self.task_id,
                self._failures_in_a_row,
                exc,
                extra=log_fields(self.task_id, None, getattr(exc, "request_id", None)),
            )
            if self._on_poll_error is not None:
                self._on_poll_error(exc)
            return None
        self._failures_in_a_row = 0
        return task

    async def _read(self, deadline: float | None) -> Task:
        """One GET, cut short by the deadline (no timer when there is none).

        asyncio's own timeout rather than an anyio cancel scope: a first cancel scope in a
        task makes anyio keep state for that task as long as it lives, which, for each of
        100,000 watchers, is a tenth of its memory.
        """
        if deadline is None:
            return await self._get()
        try:
            async with asyncio.timeout(self._left(deadline)):
                return await self._get()
        except TimeoutError:
            # A cancellation from outside (an anyio scope) in the same turn reaches the task
            # one turn later: let it win over the timeout, as it would have with fail_after.
            await asyncio.sleep(0)
            raise self._timeout() from None

    def _get(self) -> Coroutine[Any, Any, Task]:
        """The read (a coroutine, not awaited here: no frame more per poll); a single attempt
        when the watcher backs off by itself (a read that fails is retried by the schedule)."""
        if self._backoff is not None:
            return self._source.get_task(self.task_id, self.kind, retry=_ONE_ATTEMPT)
        return self._source.get_task(self.task_id, self.kind)

    def _lagging(self, exc: Exception) -> bool:
        """A task known to exist but 'not found' soon after: a gateway's cache lags behind."""
        young = self._clock.monotonic() - self._started < NOT_FOUND_GRACE
        return isinstance(exc, NotFoundError) and self.last is not None and young

    def _timeout(self) -> WatchTimeoutError:
        status = self.last.status if self.last else None
        return WatchTimeoutError(self.task_id, status, self.policy.timeout)

    def _learn(self, task: Task) -> None:
        """Feed the task's duration to the shared record (server timestamps when present)."""
        if self._learned is None:
            return
        if task.created_at is not None and task.updated_at is not None:
            self._learned.observe((task.updated_at - task.created_at).total_seconds())
