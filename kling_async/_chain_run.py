"""The chain engine: many chains as one batch, each chain's next step fed in as its last ends.

A step whose source video is past its lifetime is not sent; the journal's steps were sent in
time and go on. Each chain's span ends with it; its events tell where it stands.
"""

from __future__ import annotations

import math
import os
from collections.abc import AsyncGenerator, AsyncIterable, Callable
from contextlib import AbstractContextManager, aclosing
from datetime import datetime
from decimal import Decimal
from typing import Protocol

import anyio
from anyio.streams.memory import MemoryObjectSendStream

from ._chain_plan import (
    SOURCE_LIFETIME,
    Chain,
    ChainError,
    ChainEvent,
    ChainOutcome,
    ChainRequest,
    ChainState,
    StepLengths,
    chain_key,
    planned_steps,
)
from .batch import Batch, BatchEvent, BatchOutcome
from .errors import InvalidArgumentError
from .journal import JournalStore
from .models import CreateRequest, Task
from .telemetry import _Off

__all__ = ["ChainBackend", "ChainRun", "JournalArgument"]

JournalArgument = JournalStore | str | os.PathLike[str] | None


class ChainBackend(Protocol):
    """What the chain engine needs from the client."""

    @property
    def needs_parent_task(self) -> bool:
        """Whether an extension names the task that made its video (gateways)."""
        ...

    def prepare(self, request: CreateRequest) -> CreateRequest:
        """Check a request as the client would before sending it."""
        ...

    def run_batch(
        self,
        requests: AsyncIterable[CreateRequest],
        *,
        concurrency: int,
        journal: JournalArgument,
        on_event: Callable[[BatchEvent], object],
        scope: Callable[[CreateRequest], AbstractContextManager[object]],
    ) -> Batch:
        """The batch engine over a stream of requests (`extend_many`), starting the work of
        each request in the context `scope` gives for it."""
        ...

    @property
    def telemetry(self) -> _Off:
        """The client's spans and metrics (or none)."""
        ...

    def expected_seconds(self) -> float | None:
        """How long an extension task is expected to take, from those seen (None: unknown)."""
        ...

    def now(self) -> float:
        """Unix time in seconds."""
        ...

    def journal_store(self, journal: JournalArgument) -> tuple[JournalStore | None, bool]:
        """The journal the run keeps (None: none), and whether the run must close it."""
        ...

    async def made_at(self, task_id: str) -> datetime | None:
        """When the task that made a source video was created (None: cannot tell)."""
        ...


class ChainRun:
    """Many chains as one batch: each chain's next step is fed in when its last one ends."""

    def __init__(
        self,
        backend: ChainBackend,
        requests: list[ChainRequest],
        *,
        lengths: StepLengths,
        concurrency: int,
        journal: JournalArgument,
        on_event: Callable[[ChainEvent], object] | None,
    ) -> None:
        self.backend = backend
        self.lengths = lengths
        self.concurrency = concurrency
        self.journal = journal
        self.on_event = on_event
        self.begun: set[str] = set()  # the steps the journal holds: their sources were fresh
        self.states: dict[str, ChainState] = {}
        for request in requests:
            state = ChainState(
                request,
                chain_key(request),
                backend.needs_parent_task,
                planned_steps(request),
                trace=backend.telemetry.chain(request.video_id),
            )
            if state.key in self.states:
                raise InvalidArgumentError(
                    f"Two chains share the key {state.key!r}; give each its own key. "
                    "Nothing was sent."
                )
            self.states[state.key] = state

    async def outcomes(self) -> AsyncGenerator[ChainOutcome, None]:
        """The outcome of each chain as it ends. The run holds the journal from the start, so
        it knows which chains are new before the first step is sent."""
        store, owned = self.backend.journal_store(self.journal)
        try:
            if store is not None:
                await store.open()
            async with aclosing(self._outcomes(store)) as outcomes:
                async for outcome in outcomes:
                    self._traced(outcome)
                    yield outcome
        finally:
            for state in self.states.values():  # chains left unfinished end their spans too
                state.trace.ended(len(state.chain.tasks), _seconds(state.chain), None)
            if owned and store is not None:
                await store.close()

    async def _outcomes(self, store: JournalStore | None) -> AsyncGenerator[ChainOutcome, None]:
        stale = await self._stale_sources(store)
        for ended in stale.values():
            yield ended
        send, receive = anyio.create_memory_object_stream[CreateRequest](math.inf)
        with send, receive:
            for state in self.states.values():
                if state.key not in stale:
                    send.send_nowait(state.first_request())
            running = len(self.states) - len(stale)
            if not running:
                send.close()
            batch = self.backend.run_batch(
                receive,
                concurrency=self.concurrency,
                journal=store,
                on_event=self._on_batch_event,
                scope=self._scope,
            )
            async with batch:
                async for outcome in batch:
                    state = self._state_of(outcome.request)
                    finished = self._advance(state, outcome, send)
                    if finished is not None:
                        running -= 1
                        if not running:
                            send.close()
                        yield finished

    async def _stale_sources(self, store: JournalStore | None) -> dict[str, ChainOutcome]:
        """The outcomes of new chains whose source video, by the creation time of the task
        that made it (a gateway names that task), is past 30 days: step 1 is not sent.

        Only chains not begun are checked (one read each), so a chain begun in time
        goes on, and a finished one replays, whatever the source's age now."""
        if store is not None:
            self.begun = {entry.key for entry in await store.entries()}
        stale: dict[str, ChainOutcome] = {}

        reads = anyio.CapacityLimiter(self.concurrency)

        async def check(state: ChainState, task_id: str) -> None:
            async with reads:
                made = await self.backend.made_at(task_id)
            reason = self._expired(state.step_key(1), task_id, made)
            if reason is not None:
                state.step = 1
                stale[state.key] = self._failed(state, reason, None)

        async with anyio.create_task_group() as group:
            for state in self.states.values():
                task_id = state.request.task_id if state.needs_parent_task else None
                new = state.step_key(1) not in self.begun
                if task_id and state.request.source is None and new:
                    group.start_soon(check, state, task_id)
        return stale

    def _scope(self, request: CreateRequest) -> AbstractContextManager[object]:
        """The context a step's work starts in: its chain's span."""
        return self._state_of(request).trace.within()

    def _traced(self, outcome: ChainOutcome) -> None:
        """End the span of the chain `outcome` ends: its steps, length, and why it failed."""
        error: BaseException | None = outcome.error
        if error is not None and error.__cause__ is not None:
            error = error.__cause__  # the step's own failure says more than "a step failed"
        state = self.states[chain_key(outcome.request)]
        state.trace.ended(len(outcome.chain.tasks), _seconds(outcome.chain), error)

    def _state_of(self, request: CreateRequest) -> ChainState:
        key, _ = ChainState.of_step(request.key)
        return self.states[key]

    def _advance(
        self, state: ChainState, outcome: BatchOutcome, send: MemoryObjectSendStream[CreateRequest]
    ) -> ChainOutcome | None:
        """Take a step's outcome: the chain's outcome when it ended, else send its next step."""
        if not outcome.ok or outcome.task is None:
            reason = str(outcome.error or "the task did not succeed")
            return self._failed(state, reason, outcome.error)
        before = state.chain.duration
        state.record(outcome.task)
        if state.step > 0:
            self.lengths.observe(before, state.chain.duration)
            unmeasured = _unmeasured(state.request.until, before, state.chain)
            if unmeasured is not None:
                return self._failed(state, unmeasured, None)
        if state.finished():
            return ChainOutcome(state.request, state.chain)
        video = state.chain.video
        if video is None:
            return self._failed(state, f"task {outcome.task.id} returned no video", None)
        state.step += 1
        expired = self._expired(
            state.step_key(state.step), outcome.task.id, outcome.task.created_at
        )
        if expired is not None:
            return self._failed(state, expired, None)
        send.send_nowait(state.extension(video.id, outcome.task.id))
        return None

    def _expired(self, step_key: str, task_id: str, made: datetime | None) -> str | None:
        """Why the step journaled under `step_key` cannot extend the video of the task made at
        `made`, if it cannot. A step the journal holds was sent in time: it goes on."""
        if step_key in self.begun or made is None:
            return None
        if self.backend.now() - made.timestamp() <= SOURCE_LIFETIME:
            return None
        return (
            f"its source video (of task {task_id}) was made on {made:%Y-%m-%d}, more than 30 "
            "days ago, and can no longer be extended; nothing was sent for it"
        )

    @staticmethod
    def _failed(state: ChainState, reason: str, cause: Exception | None) -> ChainOutcome:
        error = ChainError(state.step, state.chain, reason.rstrip("."))
        error.__cause__ = cause
        return ChainOutcome(state.request, state.chain, error)

    def _on_batch_event(self, event: BatchEvent) -> None:
        if self.on_event is None:
            return
        state = self._state_of(event.request)
        _, step = ChainState.of_step(event.request.key)
        chain = state.chain
        if event.outcome is not None and event.outcome.ok and event.outcome.task is not None:
            chain = state.with_task(event.outcome.task)  # the step that just ended counts
        planned = state.planned(self.lengths, chain)
        self.on_event(
            ChainEvent(
                event.kind,
                state.request,
                step,
                planned,
                chain,
                event,
                self._eta(state, chain, planned, event.task),
            )
        )

    def _eta(
        self, state: ChainState, chain: Chain, planned: int | None, task: Task | None
    ) -> float | None:
        """Seconds left: the tasks not ended times the expected task, less the current's age."""
        expected = self.backend.expected_seconds()
        if expected is None or planned is None:
            return None
        source_left = state.request.source is not None and chain.source is None
        left = max(0, planned - len(chain.tasks) + source_left) * expected
        if task is not None and task.created_at is not None and not task.is_terminal:
            left -= min(expected, max(0.0, self.backend.now() - task.created_at.timestamp()))
        return max(0.0, left)


def _unmeasured(until: Decimal | None, before: Decimal | None, chain: Chain) -> str | None:
    """Why a chain grown `until` a length cannot tell whether its last step reached it: the
    video's length is missing, or did not grow (the server reports something else than the
    whole video's). Going on would pay for step after step until the API refuses at 3
    minutes; None when the length can be told."""
    after = chain.duration
    if until is None or (after is not None and (before is None or after > before)):
        return None
    task = chain.tasks[-1]
    said = "gives no length" if after is None else f"is {after} s long, not longer than {before} s"
    return (
        f"the video of task {task.id} {said}, so whether the chain reached {until} s cannot "
        "be told; it was stopped rather than pay for steps it may not need"
    )


def _seconds(chain: Chain) -> float | None:
    duration = chain.duration
    return None if duration is None else float(duration)
