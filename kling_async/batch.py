"""`extend_many`'s engine: many extensions under a cap on tasks in flight.

A slot of the cap is held from the create request until the task is terminal, because the
API limits parallel tasks, not requests. A 1303 answer (over the account's parallel-task
limit) halves the window and the request waits and tries again; each success widens the
window again by about one slot per window's worth of tasks (additive increase,
multiplicative decrease). Outcomes come out in completion order through a memory stream,
so the iterator the user holds never has a task group open across a ``yield``.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import random
import time
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Callable,
    Collection,
    Coroutine,
    Iterable,
)
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, Self

import anyio
import attrs
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ._clock import Clock
from ._transport import surely_not_created
from .errors import (
    APIError,
    AuthenticationError,
    InsufficientBalanceError,
    InvalidArgumentError,
    KlingError,
    NotSentError,
    PermissionDeniedError,
    RateLimitError,
    TaskFailedError,
    TransportError,
    sole_error,
)
from .journal import (
    ClaimedElsewhereError,
    EntryState,
    JournalEntry,
    JournalError,
    JournalStore,
    request_key,
)
from .models import CreateRequest, Task, TaskKind, TaskStatus, kind_of
from .policies import RetryPolicy
from .telemetry import NO_SLOTS, NO_TELEMETRY, _Off, _SlotTrace, log_fields
from .watcher import TaskWatcher

__all__ = [
    "Backlog",
    "Batch",
    "BatchEvent",
    "BatchEventKind",
    "BatchOutcome",
    "ConcurrencyWindow",
]

log = logging.getLogger(__name__)  # a child of "kling_async"

RetryHook = Callable[[Exception], object]


#: The batch retries refused creates itself, between shielded attempts (see `_Run._submit`).
_ONE_ATTEMPT = RetryPolicy(max_attempts=1)

#: Errors about the account, not the request: the batch stops taking requests after one.
_ACCOUNT_ERRORS = (AuthenticationError, InsufficientBalanceError)
#: Refusals of the whole account among the permission errors: 1100 (the account is
#: abnormal) and 1304 (this machine is outside the account's IP allow-list).
_ACCOUNT_CODES = frozenset({1100, 1304})


@attrs.frozen
class BatchOutcome:
    """What became of one request: the succeeded task, or the request with its error.

    For a task that ran and failed, `task` is the failed task and `error` its
    `TaskFailedError`; when the request never became a task, `task` is None. `files` are
    the downloaded videos when the batch downloads; a failed download leaves the task
    succeeded (`ok`) with the `DownloadError` as `error`.
    """

    request: CreateRequest
    task: Task | None
    error: Exception | None = None
    files: tuple[Path, ...] = ()

    @property
    def ok(self) -> bool:
        """True when the extension succeeded."""
        return self.task is not None and self.task.status is TaskStatus.SUCCEED

    @property
    def succeeded_task(self) -> Task | None:
        """The task when the extension succeeded (`ok`), else None: a typed way to the video.

        >>> if task := outcome.succeeded_task:  # doctest: +SKIP
        ...     print(task.videos[0].url)
        """
        return self.task if self.ok else None


class BatchEventKind(enum.Enum):
    """What happened to a request of a batch."""

    SUBMITTED = "submitted"
    STATUS = "status"
    RETRIED = "retried"
    FINISHED = "finished"


@attrs.frozen
class BatchEvent:
    """A progress event of a batch, for a CLI, a chat bot or a dashboard.

    `eta` is the time the batch is expected to need still, in seconds, from how long the
    client has seen tasks of the request's kind take; None until one has ended.
    """

    kind: BatchEventKind
    request: CreateRequest
    task: Task | None = None
    error: Exception | None = None
    outcome: BatchOutcome | None = None
    replayed: bool = False  # a FINISHED event replayed from the journal, not live work
    eta: float | None = None  # seconds the batch is expected to need still (see `Backlog`)


class Extender(Protocol):
    """What a batch needs from the client."""

    async def submit(
        self, request: CreateRequest, *, retry: RetryPolicy, resent: bool = False
    ) -> Task:
        """Create the task; `resent`: it may have been sent before under its external id."""
        ...

    def watch(self, task: Task, *, on_poll_error: RetryHook) -> TaskWatcher: ...

    def prepare(self, request: CreateRequest) -> CreateRequest:
        """The request checked and completed as it will be sent (and journaled)."""
        ...

    async def find(self, request: CreateRequest) -> Task | None:
        """The task an unrecorded create made, None if surely none; raises if it cannot tell."""
        ...

    async def fetch(self, request: CreateRequest, task: Task) -> tuple[Path, ...]:
        """Download the task's videos when the batch downloads (else nothing)."""
        ...

    def expected_seconds(self, kind: TaskKind) -> float | None:
        """How long a task of `kind` is expected to take, from those seen (None: unknown)."""
        ...


@attrs.define
class _Slot:
    epoch: int
    held: bool = True


_UNSCOPED = nullcontext()


class ConcurrencyWindow:
    """A cap on tasks in flight that halves on 1303 and creeps back up on success (AIMD)."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"concurrency must be at least 1, not {limit}")
        self.limit = limit
        self.size = float(limit)
        self.in_use = 0
        self.peak = 0
        self.trace: _SlotTrace = NO_SLOTS
        self._epoch = 0
        self._changed = anyio.Event()

    async def acquire(self, slot: _Slot | None = None) -> _Slot:
        """Wait for a free slot and take it (into `slot`, when re-taking a released one)."""
        waited = 0.0
        if self.in_use >= max(1, int(self.size)):
            asked = time.monotonic()
            while self.in_use >= max(1, int(self.size)):
                await self._changed.wait()
            waited = time.monotonic() - asked
        self.in_use += 1
        self.peak = max(self.peak, self.in_use)
        self.trace.taken(waited)
        if slot is None:
            return _Slot(self._epoch)
        slot.epoch, slot.held = self._epoch, True
        return slot

    def release(self, slot: _Slot) -> None:
        """Give the slot back (idempotent)."""
        if slot.held:
            slot.held = False
            self.in_use -= 1
            self.trace.given_back()
            self._notify()

    def shrink(self, slot: _Slot) -> None:
        """Halve the window, once per window: 1303s of requests sent before are the same news."""
        if slot.epoch == self._epoch:
            self.size = max(1.0, self.size / 2)
            self._epoch += 1
            log.info(
                "over the parallel-task limit: concurrency lowered to %d",
                int(self.size),
                extra=log_fields(),
            )

    def grow(self) -> None:
        """Widen the window by about one slot per window of successes."""
        if self.size < self.limit:
            self.size = min(float(self.limit), self.size + 1.0 / self.size)
            self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()


class Backlog:
    """What a batch has still to do, for its ETA: the tasks in flight, with the time each
    was created, and the requests not taken yet (when their number is known).

    The estimate is the larger of two bounds: the youngest task's time left, and the work
    left (each task in flight its expected duration less its age, each request not taken a
    whole duration) shared by the slots of the window. Kept in O(1) per event, so a display
    costs nothing per task in flight: the ages are summed, not listed.

    >>> backlog = Backlog(total=4)
    >>> backlog.take(); backlog.start("a", at=0.0)
    >>> backlog.eta(now=10.0, expected=60.0, slots=2)  # (50 + 3 x 60) / 2
    115.0
    """

    def __init__(self, total: int | None) -> None:
        self.total = total
        self.taken = 0
        self._origin: float | None = None  # sums of Unix times would lose their fractions
        self._flying: dict[str, float] = {}
        self._started_sum = 0.0

    def take(self) -> None:
        """A request was taken: sent, replayed or refused."""
        self.taken += 1

    def start(self, key: str, at: float) -> None:
        """The request under `key` has a task, created at Unix time `at`."""
        if self._origin is None:
            self._origin = at
        self.end(key)
        self._flying[key] = at - self._origin
        self._started_sum += self._flying[key]

    def end(self, key: str) -> None:
        """The request under `key` ended (or never had a task)."""
        started = self._flying.pop(key, None)
        if started is not None:
            self._started_sum -= started

    def eta(self, now: float, expected: float, slots: int) -> float:
        """Seconds until the batch is expected to end, at Unix time `now`."""
        flying = len(self._flying)
        waiting = max(0, self.total - self.taken) if self.total is not None else 0
        if not flying:
            return waiting * expected / max(1, slots)
        elapsed = now - (now if self._origin is None else self._origin)
        ages = flying * elapsed - self._started_sum
        youngest = next(reversed(self._flying.values()))
        work = max(0.0, flying * expected - ages) + waiting * expected
        return max(0.0, expected - (elapsed - youngest), work / max(1, slots))


class _Step(enum.Enum):
    """What a request needs, given what the journal knows of it."""

    SEND = "send"
    RECONCILE = "reconcile"
    WATCH = "watch"
    REPLAY = "replay"


def next_step(entry: JournalEntry | None) -> _Step:
    """A journaled request resumes where it stopped; nothing paid for is sent twice.

    An entry without a task is a create that may have been sent with its answer lost (a
    create that surely made nothing leaves no entry): it is looked up, never sent blindly.
    """
    if entry is None:
        return _Step.SEND
    if entry.task is None:
        return _Step.RECONCILE
    if entry.task.is_terminal and entry.state is EntryState.FINISHED:
        return _Step.REPLAY
    # A task seen to end by a process that died before it recorded the outcome is watched
    # (one read) so that the outcome is recorded and the task's slot given back.
    return _Step.WATCH


class _NoJournal:
    """Stands in for a journal when the batch keeps none."""

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def entry(self, key: str) -> JournalEntry | None:
        return None

    async def entries(self) -> list[JournalEntry]:
        return []

    async def claim(self, key: str, known: JournalEntry | None) -> JournalEntry | None:
        return known

    async def hold(self) -> None:
        return None

    async def released(self, key: str) -> JournalEntry | None:
        return None

    async def narrow(self, key: str) -> bool:
        return False

    async def record_intent(self, key: str, request: CreateRequest) -> None:
        return None

    async def record_task(self, key: str, task: Task) -> None:
        return None

    async def record_status(self, key: str, task: Task) -> None:
        return None

    async def record_outcome(
        self, key: str, task: Task | None, error: BaseException | None
    ) -> None:
        return None

    async def forget(self, key: str) -> None:
        return None

    async def reopen(self, key: str) -> None:
        return None


@attrs.define
class _Run:
    """One batch's work: take requests, run each to its end, send outcomes."""

    extender: Extender
    window: ConcurrencyWindow
    send: MemoryObjectSendStream[BatchOutcome]
    clock: Clock
    retry: RetryPolicy
    fail_fast: bool = False
    on_event: Callable[[BatchEvent], object] | None = None
    journal: JournalStore = attrs.field(factory=_NoJournal)
    owns_journal: bool = False
    rng: random.Random = attrs.field(factory=random.Random)
    telemetry: _Off = NO_TELEMETRY
    stopping: bool = False  # nothing more is sent
    stopped_by: Exception | None = None  # the error that stopped the batch
    intents: set[str] = attrs.field(factory=set)  # keys with an entry whose outcome is ours
    replays: anyio.CapacityLimiter = attrs.field(
        default=attrs.Factory(lambda run: anyio.CapacityLimiter(run.window.limit), takes_self=True)
    )
    backlog: Backlog = attrs.field(factory=lambda: Backlog(None))
    # The context each request's work is started in (a chain's span for its steps).
    scope: Callable[[CreateRequest], AbstractContextManager[object]] = lambda _: _UNSCOPED

    async def run(self, requests: Iterable[CreateRequest] | AsyncIterable[CreateRequest]) -> None:
        self.backlog.total = len(requests) if isinstance(requests, Collection) else None
        async with self.send:  # closed whatever happens, so the reader always hears the end
            await self.journal.open()
            self.window.trace = self.telemetry.slots("batch")
            try:
                async with anyio.create_task_group() as group:
                    group.start_soon(self.journal.hold)  # a shared journal's leases
                    with self.telemetry.batch(self.window.limit):
                        await self._run(requests)
                    group.cancel_scope.cancel()
            finally:
                if self.owns_journal:
                    await self.journal.close()

    async def _run(self, requests: Iterable[CreateRequest] | AsyncIterable[CreateRequest]) -> None:
        known = {entry.key: entry for entry in await self.journal.entries()}
        keys = _Keys(self.journaled)
        async with anyio.create_task_group() as group:
            async for request in _as_async(requests):
                if self.stopping and self.fail_fast:
                    break  # take no more requests
                key = request_key(request)
                entry = known.get(key)
                refusal = keys.refusal(request, key) or _edited_refusal(request, entry, key)
                if refusal is not None:
                    group.start_soon(self._report, request, None, refusal)
                elif entry is not None and next_step(entry) is _Step.REPLAY:
                    with self.scope(request):
                        group.start_soon(self._replay, entry)
                elif self.stopping and entry is None:  # every request still gets its outcome
                    await self._report(request, None, NotSentError(request, self.stopped_by))
                else:
                    slot = await self.window.acquire()
                    if self.stopping and self.fail_fast:  # a failure came while it waited
                        self.window.release(slot)
                        break
                    with self.scope(request):
                        group.start_soon(self._one, request, key, entry, slot)
                self.backlog.take()
            self.backlog.total = self.backlog.taken  # nothing more is taken

    @property
    def journaled(self) -> bool:
        """Whether the batch keeps a journal (which tells requests apart by key)."""
        return not isinstance(self.journal, _NoJournal)

    async def _one(
        self, request: CreateRequest, key: str, entry: JournalEntry | None, slot: _Slot
    ) -> None:
        """Run one request to its end. Its slot is held until its outcome is taken, so a
        reader who stops reading stops new creates too. A request that another live process
        holds (a shared journal) is left to it, and adopted if that process dies."""
        try:
            await self._run_one(request, key, entry, slot)
        except ClaimedElsewhereError:
            self.window.release(slot)
            await self._elsewhere(request, key)
        finally:
            self.window.release(slot)

    async def _run_one(
        self, request: CreateRequest, key: str, entry: JournalEntry | None, slot: _Slot
    ) -> None:
        task: Task | None = None
        watcher: TaskWatcher | None = None
        error: Exception | None = None
        try:
            entry = await self.journal.claim(key, entry)
            request, task = await self._task_for(request, key, entry, slot)
            made = task.created_at.timestamp() if task.created_at else self.clock.time()
            self.backlog.start(key, made)
            self._emit(BatchEventKind.SUBMITTED, request, task=task)
            watcher = self.extender.watch(task, on_poll_error=self._retry_hook(request))
            async for snapshot in watcher:
                if not snapshot.is_terminal:  # the outcome, recorded next, holds the last one
                    await self.journal.record_status(key, snapshot)
                self._emit(BatchEventKind.STATUS, request, task=snapshot)
        except JournalError:
            raise  # without a journal to rely on, going on could pay twice: stop
        except Exception as exc:  # every other failure becomes this request's outcome
            error = exc
        if watcher is not None and watcher.last is not None:
            task = watcher.last
        if key in self.intents:
            self.intents.discard(key)
            await self.journal.record_outcome(key, task, error)
        self.backlog.end(key)
        await self._report(request, task, error)

    async def _task_for(
        self, request: CreateRequest, key: str, entry: JournalEntry | None, slot: _Slot
    ) -> tuple[CreateRequest, Task]:
        """The request's task: found again from the journal, or created (and journaled)."""
        if entry is None:
            return await self._create(self.extender.prepare(request), key, slot, fresh=True)
        self.intents.add(key)
        await self.journal.reopen(key)  # a finished entry records what happens from now on
        found = entry.task or await self.extender.find(entry.request)
        if found is not None:
            await self._journal_task(key, found)
            return entry.request, found
        # Surely never made: send it again under the same external id. The API keeps those
        # unique, so a first attempt that lands late makes this one fail, and the client then
        # adopts the task it made (as after an ambiguous live create).
        return await self._create(entry.request, key, slot, fresh=False)

    async def _create(
        self, request: CreateRequest, key: str, slot: _Slot, *, fresh: bool
    ) -> tuple[CreateRequest, Task]:
        """Journal the intent, then create. A fresh create that surely made nothing leaves
        no entry, so the next run sends it anew: so does one cancelled while it waited to
        try again (each attempt runs shielded to its end, so every one so far was refused
        in words that say nothing was made)."""
        await self.journal.record_intent(key, request)
        self.intents.add(key)
        try:
            return request, await self._submit(request, key, slot, resent=not fresh)
        except anyio.get_cancelled_exc_class():
            if fresh:
                # Best effort: an entry that cannot be removed stays, to be reconciled.
                with anyio.CancelScope(shield=True), contextlib.suppress(JournalError):
                    await self.journal.forget(key)
                    self.intents.discard(key)
            raise
        except Exception as exc:
            if fresh and (isinstance(exc, NotSentError) or surely_not_created(exc)):
                await self.journal.forget(key)
                self.intents.discard(key)
            raise

    async def _elsewhere(self, request: CreateRequest, key: str) -> None:
        """A request another live process works on (a shared journal): its outcome once that
        process records it, or the request itself, adopted, once that process's lease ran out.
        """
        entry = await self.journal.released(key)
        if entry is not None and entry.state is EntryState.FINISHED:
            async with self.replays:  # that process's outcome, as it recorded it
                await self._report(entry.request, entry.task, _recorded_error(entry), replayed=True)
            return
        # Adopted work takes no room of this process's window: every process could have
        # filled its window with requests waiting for the account's slots, which the dead
        # process's tasks hold until someone watches them to their end.
        await self._one(request, key, entry, _Slot(epoch=-1, held=False))

    async def _replay(self, entry: JournalEntry) -> None:
        """A finished request's outcome from the journal (an old failure stops nothing).

        Replays take no API slot, but as many at once as the batch's concurrency: each may
        download its video again."""
        async with self.replays:
            await self._report(entry.request, entry.task, None, replayed=True)

    async def _report(
        self,
        request: CreateRequest,
        task: Task | None,
        error: Exception | None,
        *,
        replayed: bool = False,
    ) -> None:
        """Download the result if asked, then send the outcome and the FINISHED event."""
        files: tuple[Path, ...] = ()
        if task is not None and task.status is TaskStatus.FAILED:
            error = TaskFailedError(task)
        elif task is not None and task.status is TaskStatus.SUCCEED and error is None:
            try:
                files = await self.extender.fetch(request, task)
            except Exception as exc:  # the task succeeded; only its file is missing
                error = exc
        outcome = BatchOutcome(request, task, error, files)
        self._emit(
            BatchEventKind.FINISHED,
            request,
            task=task,
            error=error,
            outcome=outcome,
            replayed=replayed,
        )
        if not replayed:
            self._stop_after(outcome)
        await self.send.send(outcome)

    def _stop_after(self, outcome: BatchOutcome) -> None:
        """Send nothing more after an account error (each next request would fail alike),
        or after any failure with fail_fast."""
        account = _is_account_error(outcome.error)
        if self.stopping or not (account or (self.fail_fast and not outcome.ok)):
            return
        if account:
            task_id = outcome.task.id if outcome.task is not None else None
            request_id = getattr(outcome.error, "request_id", None)
            fields = log_fields(task_id, outcome.request.key, request_id)
            log.warning("stopping the batch: %s", outcome.error, extra=fields)
        self.stopping, self.stopped_by = True, outcome.error

    async def _submit(self, request: CreateRequest, key: str, slot: _Slot, *, resent: bool) -> Task:
        """Create the task, retrying refusals that surely made nothing; on 1303 also lower
        the window and give the slot back while waiting.

        Each attempt is shielded from cancellation: cut short, it could make a task whose id
        nobody records, so it finishes and is journaled first. The waits between attempts are
        not shielded, so stopping a batch never waits out a Retry-After. (A second Ctrl-C
        still ends the process at once.) After a refusal the request counts as resent: an
        earlier attempt of the client's own may have landed late.
        """
        refusals = 0
        while True:
            if self.stopping:  # the batch stopped before this attempt: send nothing more
                raise NotSentError(request, self.stopped_by)
            try:
                with anyio.CancelScope(shield=True):
                    task = await self.extender.submit(
                        request, retry=_ONE_ATTEMPT, resent=resent or refusals > 0
                    )
                    fields = log_fields(task.id, key)
                    log.debug("task %s created for request %s", task.id, key, extra=fields)
                    await self._journal_task(key, task)
            except (APIError, TransportError) as exc:
                if not (exc.retryable and surely_not_created(exc)):
                    raise
                refusals += 1
                self._emit(BatchEventKind.RETRIED, request, error=exc)
                over_limit = isinstance(exc, RateLimitError) and exc.is_concurrency_limit
                # A shared window halves for every process and stands for the batch's own.
                shared = over_limit and await self.journal.narrow(key)
                await self._wait_after_refusal(exc, refusals, slot, shared=shared)
                continue
            self.window.grow()
            return task

    async def _wait_after_refusal(
        self, exc: Exception, refusals: int, slot: _Slot, *, shared: bool = False
    ) -> None:
        """Back off before sending a refused create again; raise when it must not be.

        On 1303 the batch's window halves and the slot is given back while waiting, unless
        the journal's account window (`shared`) was halved instead: the request then keeps
        its place, since queued requests of the batch hold the window's other slots while
        they wait for this one's account slot."""
        over_limit = isinstance(exc, RateLimitError) and exc.is_concurrency_limit
        if not over_limit and refusals >= self.retry.max_attempts:
            raise exc
        local = over_limit and not shared
        if local:  # the account runs all it may: free the slot while waiting
            self.window.shrink(slot)
            self.window.release(slot)
        await self.clock.sleep(self._backoff(refusals, exc))
        if local:
            await self.window.acquire(slot)

    async def _journal_task(self, key: str, task: Task) -> None:
        """Record a new task; if that fails, the error names it so it is not lost."""
        try:
            await self.journal.record_task(key, task)
        except JournalError as exc:
            raise JournalError(
                exc.path,
                f"{exc} Task {task.id} was created for request {key!r} but is not journaled: "
                "note its id before running the batch again.",
            ) from exc

    def _backoff(self, refusals: int, exc: Exception) -> float:
        retry_after = exc.retry_after if isinstance(exc, APIError) else None
        if retry_after is not None:  # the server's word, within the policy's patience
            retry_after = min(retry_after, self.retry.max_retry_after)
        limited = isinstance(exc, RateLimitError)
        delay = self.retry.delay(
            refusals, self.rng.random(), retry_after=retry_after, rate_limited=limited
        )
        return delay if delay is not None else self.retry.max_delay

    def _retry_hook(self, request: CreateRequest) -> RetryHook:
        def retried(exc: Exception) -> None:
            self._emit(BatchEventKind.RETRIED, request, error=exc)

        return retried

    def _eta(self, request: CreateRequest) -> float | None:
        """The batch's time left, from how long tasks of the request's kind have taken."""
        expected = self.extender.expected_seconds(kind_of(request))
        if expected is None:
            return None
        return self.backlog.eta(self.clock.time(), expected, max(1, int(self.window.size)))

    def _emit(self, kind: BatchEventKind, request: CreateRequest, **fields: object) -> None:
        if self.on_event is None:
            return
        try:
            eta = self._eta(request)
            self.on_event(BatchEvent(kind, request, **fields, eta=eta))  # type: ignore[arg-type]
        except Exception:
            log.exception(
                "the batch's on_event callback failed; the batch goes on",
                extra=log_fields(request_key=request.key),
            )


class Batch:
    """The outcomes of `KlingClient.extend_many`, in completion order.

    Iterate it with ``async for``; use it as ``async with`` to be sure that leaving early
    stops everything at once (otherwise that happens when the iterator is closed or the
    client is). Work starts at the first ``__anext__`` or ``__aenter__``.

    >>> async with client.extend_many(requests, concurrency=20) as outcomes:  # doctest: +SKIP
    ...     async for outcome in outcomes:
    ...         print(outcome.request.key, outcome.ok)
    """

    def __init__(
        self,
        run: _Run,
        requests: Iterable[CreateRequest] | AsyncIterable[CreateRequest],
        receive: MemoryObjectReceiveStream[BatchOutcome],
        spawn: Callable[[Callable[[], Coroutine[Any, Any, None]]], object],
    ) -> None:
        self._run = run
        self._requests = requests
        self._receive = receive
        self._spawn = spawn
        self._scope = anyio.CancelScope()
        self._done = anyio.Event()
        self._failure: BaseException | None = None
        self._started = False
        self._ended = False

    def _within(self, scope: Callable[[CreateRequest], AbstractContextManager[object]]) -> Self:
        """Start the work of each request in the context `scope(request)` gives (a chain's
        span, so that the spans of its steps are its children). Before the batch starts."""
        self._run.scope = scope
        return self

    @property
    def window(self) -> ConcurrencyWindow:
        """The live concurrency window (its `size`, `in_use` and `peak`)."""
        return self._run.window

    def _start(self) -> None:
        if not self._started:
            self._started = True
            self._spawn(self._guarded_run)

    async def _guarded_run(self) -> None:
        try:
            with self._scope:
                await self._run.run(self._requests)
        except anyio.get_cancelled_exc_class():
            self._receive.close()  # the client is closing: nobody will read the rest
            raise
        except Exception as exc:  # handed to the iterating task, raised there
            self._failure = sole_error(exc)
        finally:
            self._done.set()

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> BatchOutcome:
        self._start()
        if self._ended:
            raise StopAsyncIteration
        try:
            return await self._receive.receive()
        except anyio.ClosedResourceError:
            raise KlingError(
                "This batch was stopped before all its outcomes were read: it was closed, "
                "or its client was. Tasks it had created may still be running."
            ) from None
        except anyio.EndOfStream:
            self._receive.close()
            self._ended = True
            await self._done.wait()
            if self._failure is not None:
                raise self._failure from None
            raise StopAsyncIteration from None

    async def __aenter__(self) -> Self:
        self._start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop the batch: cancel what runs and wait until it has stopped."""
        self._scope.cancel()
        with anyio.CancelScope(shield=True):
            if self._started:
                await self._done.wait()
            await self._receive.aclose()


def _recorded_error(entry: JournalEntry) -> KlingError | None:
    """The error another process recorded as a request's outcome (its class by name)."""
    if entry.error_type is None or entry.error_type == TaskFailedError.__name__:
        return None  # none, or the failed task's own (made again from the task)
    return KlingError(f"{entry.error_message} ({entry.error_type}, recorded by another process)")


def _edited(request: CreateRequest, journaled: CreateRequest) -> bool:
    """Whether the request's API fields differ from those journaled under its key."""

    def digest(one: CreateRequest) -> str:  # the content digest; ids left out
        return request_key(attrs.evolve(one, key=None, external_task_id=None))

    return digest(request) != digest(journaled)


def _edited_refusal(
    request: CreateRequest, entry: JournalEntry | None, key: str
) -> InvalidArgumentError | None:
    if entry is None or not _edited(request, entry.request):
        return None
    return InvalidArgumentError(
        f"Key {key!r} was journaled for a different request (its fields were edited since); "
        "nothing was sent for it. Give the edited request a new key, or use a new journal."
    )


def refuse_shared_keys(
    requests: Iterable[CreateRequest] | AsyncIterable[CreateRequest], *, journaled: bool
) -> None:
    """Raise `InvalidArgumentError`, before anything is sent, when two requests of a
    collection share a key (see `_Keys`); a stream is checked as it is read."""
    if not isinstance(requests, Collection):
        return
    keys = _Keys(journaled)
    for request in requests:
        refusal = keys.refusal(request, before_start=True)
        if refusal is not None:
            raise refusal


@attrs.define
class _Keys:
    """The requests of one batch must be told apart: by their `key` when they have one
    (outcomes and results are matched by it), and with a journal, which files each request
    under its key, by their content when they have none. Two identical requests without keys
    are fine without a journal: two takes of one extension."""

    journaled: bool
    firsts: dict[str, int] = attrs.field(factory=dict)
    read: int = 0

    def refusal(
        self, request: CreateRequest, key: str | None = None, *, before_start: bool = False
    ) -> InvalidArgumentError | None:
        """The error for `request` (journaled under `key`, computed when not given) when an
        earlier request had its key; None when it is the first."""
        index, self.read = self.read, self.read + 1
        if request.key is None and not self.journaled:
            return None
        first = self.firsts.setdefault(key or request_key(request), index)
        if first == index:
            return None
        if request.key is not None:
            what = f"share the key {request.key!r}: each request of a batch needs its own key"
        else:
            what = (
                "are the same request without a key: a journal files requests by key, so "
                "give each its own key to send it twice"
            )
        sent = "Nothing was sent." if before_start else f"Nothing was sent for requests[{index}]."
        return InvalidArgumentError(f"requests[{first}] and requests[{index}] {what}. {sent}")


async def _as_async(
    requests: Iterable[CreateRequest] | AsyncIterable[CreateRequest],
) -> AsyncIterator[CreateRequest]:
    if isinstance(requests, AsyncIterable):
        async for request in requests:
            yield request
    else:
        for request in requests:
            yield request


def _is_account_error(error: BaseException | None) -> bool:
    """Whether `error` refuses the account itself, so that every next create would fail
    alike (credentials, balance, an abnormal account, an IP allow-list)."""
    if isinstance(error, _ACCOUNT_ERRORS):
        return True
    return isinstance(error, PermissionDeniedError) and error.code in _ACCOUNT_CODES
