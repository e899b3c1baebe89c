"""`extend_chain`'s engine: a video grown step after step, many chains under one cap.

Each step of a chain extends the video the step before made (on a gateway naming that
step's task as the parent), so a chain runs one step at a time. Many chains run as one
batch: the steps are fed to the batch engine as their turn comes, so they share its cap on
tasks in flight, its events, its retries and its journal. A step is journaled under the
chain's key and its number; a chain run again over the same journal replays the steps that
ended, watches again the one that was running, and goes on from there, never paying for a
step twice.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterable, Callable, Iterable
from contextlib import AbstractContextManager, aclosing
from datetime import datetime
from decimal import Decimal
from typing import Any, Protocol

import anyio
import attrs
from anyio.streams.memory import MemoryObjectSendStream

from ._wire import converter
from .batch import Batch, BatchEvent, BatchEventKind, BatchOutcome
from .errors import InvalidArgumentError, KlingError
from .journal import JournalStore
from .models import (
    EXTENDABLE_MODELS,
    CreateRequest,
    ImageToVideoRequest,
    Task,
    TextToVideoRequest,
    Video,
    VideoExtendRequest,
)
from .telemetry import NO_CHAIN, _ChainTrace, _Off

__all__ = [
    "MAX_VIDEO_SECONDS",
    "Chain",
    "ChainError",
    "ChainEvent",
    "ChainOutcome",
    "ChainRequest",
    "StepLengths",
]

#: The API's limit on an extended video's length.
MAX_VIDEO_SECONDS = Decimal(180)
#: Videos are deleted (and cannot be extended) this long after they were made.
SOURCE_LIFETIME = 30 * 24 * 3600.0
#: What an extension adds when nothing was learned yet (the API says 4 to 5 seconds).
ASSUMED_STEP_SECONDS = Decimal("4.5")
#: The length assumed for a source video given by id alone (the shortest a model makes).
ASSUMED_SOURCE_SECONDS = Decimal(5)

NewVideo = TextToVideoRequest | ImageToVideoRequest
JournalArgument = JournalStore | str | os.PathLike[str] | None


def _optional_decimal(value: object) -> Decimal | None:
    if value is None or isinstance(value, Decimal):
        return value
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise InvalidArgumentError(f"until must be a number of seconds, not {value!r}")
    return Decimal(str(value))


def _optional_prompts(value: Any) -> Any:
    if value is None or isinstance(value, str):  # a lone string is a mistake, caught later
        return value
    return tuple(value)


@attrs.frozen
class ChainRequest:
    """One chain to run: its source, how far to grow it, and the prompts of its steps.

    The source is a video to extend (`video_id`, with `task_id`, the task that made it, on a
    gateway) or a new video to make first (`source`, a `TextToVideoRequest` or
    `ImageToVideoRequest`). How far: `steps` extensions, or until the video is at least
    `until` seconds long, or one step per entry of `prompts`. `prompt` is used for every
    step without one of its own. `key` names the chain in a journal (else a digest of its
    fields does).

    >>> ChainRequest("vid_1", task_id="task_1", steps=3, prompt="keep walking").steps
    3
    """

    video_id: str | None = None
    task_id: str | None = None
    steps: int | None = None
    until: Decimal | None = attrs.field(default=None, converter=_optional_decimal)
    prompt: str | None = None
    prompts: tuple[str, ...] | None = attrs.field(default=None, converter=_optional_prompts)
    source: NewVideo | None = None
    key: str | None = None


@attrs.frozen
class Chain:
    """What a chain made: `source` (the task that made the source video, when the chain made
    it) and `tasks`, one succeeded extension task per step, in order.

    `video` is the longest video made so far (the last step's), `duration` its length in
    seconds.

    >>> Chain().tasks
    ()
    """

    tasks: tuple[Task, ...] = ()
    source: Task | None = None

    @property
    def video(self) -> Video | None:
        """The last step's video (the source's when no step succeeded yet)."""
        last = self.tasks[-1] if self.tasks else self.source
        return last.videos[0] if last is not None and last.videos else None

    @property
    def duration(self) -> Decimal | None:
        """The length of `video` in seconds, as the API reported it."""
        return None if self.video is None else self.video.duration


class ChainError(KlingError):
    """A step of a chain failed (or could not be sent); the earlier steps' results stand.

    `step` is the 1-based number of the step that failed (0: making the source video);
    `chain` holds every step that succeeded before it; `__cause__` says why.

    >>> error = ChainError(3, Chain(), "task 42 failed")
    >>> error.step
    3
    """

    def __init__(self, step: int, chain: Chain, reason: str | None = None) -> None:
        self.step = step
        self.chain = chain
        what = "Making the source video" if step == 0 else f"Step {step} of the chain"
        last = chain.tasks[-1] if chain.tasks else chain.source
        kept = (
            f" The longest video so far is {chain.video.id} ({chain.duration} s, task "
            f"{last.id}): a new chain from it goes on from there."
            if chain.video is not None and last is not None
            else ""
        )
        why = f": {reason}" if reason else ""
        super().__init__(f"{what} failed{why}.{kept}")


@attrs.frozen
class ChainOutcome:
    """How one chain of a run ended: its `Chain`, and the `ChainError` if it stopped early."""

    request: ChainRequest
    chain: Chain
    error: ChainError | None = None

    @property
    def ok(self) -> bool:
        """True when every step succeeded."""
        return self.error is None


@attrs.frozen
class ChainEvent:
    """Progress of a chain: a batch event of one of its steps, with where the chain stands.

    `step` is the step the event is about (0: the source); `steps` the number planned (None
    while a chain grown `until` a length cannot tell yet); `chain` the steps done so far;
    `eta` the expected seconds left, from how long tasks have taken (None before any ended).
    """

    kind: BatchEventKind
    request: ChainRequest
    step: int
    steps: int | None
    chain: Chain
    event: BatchEvent
    eta: float | None = None


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


class StepLengths:
    """What an extension adds to a video: the mean of the last few seen, else 4.5 s."""

    def __init__(self, window: int = 64) -> None:
        self._seen: deque[Decimal] = deque(maxlen=window)

    def observe(self, before: Decimal | None, after: Decimal | None) -> None:
        """Learn from one step that took a video from `before` to `after` seconds."""
        if before is not None and after is not None and after > before:
            self._seen.append(after - before)

    def estimate(self) -> Decimal:
        """The length one step is expected to add."""
        if not self._seen:
            return ASSUMED_STEP_SECONDS
        return sum(self._seen, Decimal(0)) / len(self._seen)


@attrs.define
class _ChainState:
    """One chain on its way: its request, its key, and what it has made."""

    request: ChainRequest
    key: str
    needs_parent_task: bool
    steps: int | None
    chain: Chain = attrs.field(factory=Chain)
    step: int = 0
    trace: _ChainTrace = NO_CHAIN

    def first_request(self) -> CreateRequest:
        source = self.request.source
        if source is not None:
            return attrs.evolve(source, key=self.step_key(0))
        self.step = 1
        return self.extension(self.request.video_id or "", self.request.task_id)

    def step_key(self, step: int) -> str:
        return f"{self.key}/{step}"

    def extension(self, video_id: str, task_id: str | None) -> VideoExtendRequest:
        prompts = self.request.prompts
        prompt = prompts[self.step - 1] if prompts else self.request.prompt
        return VideoExtendRequest(
            video_id,
            task_id=task_id if self.needs_parent_task else None,
            prompt=prompt,
            key=self.step_key(self.step),
        )

    def finished(self) -> bool:
        if self.steps is not None:
            return self.step >= self.steps
        until, duration = self.request.until, self.chain.duration
        return until is not None and duration is not None and duration >= until

    def record(self, task: Task) -> None:
        self.chain = self.with_task(task)

    def with_task(self, task: Task) -> Chain:
        """The chain once `task`, the current step's, is part of it."""
        if self.step == 0:
            return Chain(source=task)
        return Chain((*self.chain.tasks, task), self.chain.source)

    def planned(self, lengths: StepLengths, chain: Chain) -> int | None:
        """The number of steps, known or expected once `chain` is made."""
        if self.steps is not None:
            return self.steps
        until, duration = self.request.until, chain.duration
        if until is None or duration is None:
            return None
        done = len(chain.tasks)
        return done + max(0, math.ceil((until - duration) / lengths.estimate()))


class _ChainRun:
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
        self.states: dict[str, _ChainState] = {}
        for request in requests:
            state = _ChainState(
                request,
                chain_key(request),
                backend.needs_parent_task,
                _planned_steps(request),
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

        async def check(state: _ChainState, task_id: str) -> None:
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

    def _state_of(self, request: CreateRequest) -> _ChainState:
        chain_key, _, _ = (request.key or "").rpartition("/")
        return self.states[chain_key]

    def _advance(
        self, state: _ChainState, outcome: BatchOutcome, send: MemoryObjectSendStream[CreateRequest]
    ) -> ChainOutcome | None:
        """Take a step's outcome: the chain's outcome when it ended, else send its next step."""
        if not outcome.ok or outcome.task is None:
            reason = str(outcome.error or "the task did not succeed")
            return self._failed(state, reason, outcome.error)
        before = state.chain.duration
        state.record(outcome.task)
        if state.step > 0:
            self.lengths.observe(before, state.chain.duration)
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
    def _failed(state: _ChainState, reason: str, cause: Exception | None) -> ChainOutcome:
        error = ChainError(state.step, state.chain, reason.rstrip("."))
        error.__cause__ = cause
        return ChainOutcome(state.request, state.chain, error)

    def _on_batch_event(self, event: BatchEvent) -> None:
        if self.on_event is None:
            return
        state = self._state_of(event.request)
        step = int((event.request.key or "/0").rpartition("/")[2])
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
        self, state: _ChainState, chain: Chain, planned: int | None, task: Task | None
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


def chain_key(request: ChainRequest) -> str:
    """The name a chain's steps are journaled under: its `key`, else a digest of its fields."""
    if request.key is not None:
        return request.key
    fields = converter.unstructure(attrs.evolve(request, key=None))
    canonical = json.dumps(fields, sort_keys=True, default=str, separators=(",", ":"))
    return "chain:" + hashlib.sha256(canonical.encode()).hexdigest()[:32]


def check_chain(request: ChainRequest, backend: ChainBackend, lengths: StepLengths) -> ChainRequest:
    """`request` checked before anything is sent; `InvalidArgumentError` (a ValueError)
    names every problem, including a chain that would pass 3 minutes."""
    problems = _shape_problems(request)
    if not problems:
        problems = _length_problems(request, lengths) + _step_problems(request, backend)
    if problems:
        raise InvalidArgumentError(
            f"Cannot run this chain: {'; '.join(problems)}. Nothing was sent."
        )
    return request


def _shape_problems(request: ChainRequest) -> list[str]:
    problems: list[str] = []
    if (request.video_id is None) == (request.source is None):
        problems.append("give either video_id (a video to extend) or source (a new video)")
    if request.source is not None and not isinstance(request.source, NewVideo):
        problems.append("source must be a TextToVideoRequest or an ImageToVideoRequest")
    if isinstance(request.prompts, str) or (
        request.prompts is not None and not all(isinstance(p, str) for p in request.prompts)
    ):
        problems.append("prompts must be a sequence of strings, one per step")
    ways = sum(x is not None for x in (request.steps, request.until, request.prompts))
    if ways == 0:
        problems.append("say how far: steps, until (seconds) or prompts (one per step)")
    elif request.steps is not None and request.until is not None:
        problems.append("give steps or until, not both")
    elif request.prompts is not None and request.until is not None:
        problems.append("prompts sets the number of steps; it cannot go with until")
    steps = request.steps
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
        problems.append(f"steps must be a whole number from 1, not {steps!r}")
    elif steps is not None and request.prompts is not None and len(request.prompts) != steps:
        problems.append(f"{len(request.prompts)} prompts were given for {steps} steps")
    if request.prompts is not None and not request.prompts:
        problems.append("prompts must hold one prompt per step (at least one)")
    if request.until is not None and not (request.until.is_finite() and request.until > 0):
        problems.append(f"until must be a positive number of seconds, not {request.until}")
    return problems


def _length_problems(request: ChainRequest, lengths: StepLengths) -> list[str]:
    """A chain that would pass the API's 3 minutes, from what is known or assumed."""
    if request.until is not None:
        if request.until > MAX_VIDEO_SECONDS:
            return [f"until {request.until} s is past the API's limit of 3 minutes (180 s)"]
        return []
    steps = _planned_steps(request) or 0
    start = _source_seconds(request)
    step = lengths.estimate()
    expected = start + steps * step
    if expected <= MAX_VIDEO_SECONDS:
        return []
    most = int((MAX_VIDEO_SECONDS - start) / step)
    return [
        f"{steps} steps of about {step:.1f} s from a {start} s video make about "
        f"{expected:.0f} s, past the API's limit of 3 minutes (180 s); at most {most} fit"
    ]


def _step_problems(request: ChainRequest, backend: ChainBackend) -> list[str]:
    """The source and the steps' requests checked as the client checks any request."""
    problems: list[str] = []
    source = request.source
    if source is not None:
        model = source.model_name
        if model is not None and model not in EXTENDABLE_MODELS:
            problems.append(
                f"videos of {model} cannot be extended; make the source with one of "
                f"{', '.join(EXTENDABLE_MODELS)} (or leave model_name out)"
            )
        probes: list[CreateRequest] = [source]
    else:
        probes = []
    prompts = request.prompts or (request.prompt,)
    parent = request.task_id if source is None else "the source's task"
    video = request.video_id or "the source video"
    probes += [VideoExtendRequest(video, task_id=parent, prompt=p) for p in dict.fromkeys(prompts)]
    for probe in probes:
        try:
            backend.prepare(probe)
        except InvalidArgumentError as exc:
            problems.append(str(exc).removeprefix("Cannot ").removesuffix(". Nothing was sent."))
    return problems


def _planned_steps(request: ChainRequest) -> int | None:
    if request.steps is not None:
        return request.steps
    return len(request.prompts) if request.prompts is not None else None


def _source_seconds(request: ChainRequest) -> Decimal:
    source = request.source
    if source is not None and source.duration is not None:
        return Decimal(source.duration)
    return ASSUMED_SOURCE_SECONDS


def run_chains(
    backend: ChainBackend,
    requests: Iterable[ChainRequest],
    *,
    lengths: StepLengths,
    concurrency: int = 8,
    journal: JournalArgument = None,
    on_event: Callable[[ChainEvent], object] | None = None,
) -> AsyncGenerator[ChainOutcome, None]:
    """Every chain checked (nothing is sent if one is wrong), then all run as one batch."""
    checked = [check_chain(request, backend, lengths) for request in requests]
    run = _ChainRun(
        backend,
        checked,
        lengths=lengths,
        concurrency=concurrency,
        journal=journal,
        on_event=on_event,
    )
    return run.outcomes()


def _seconds(chain: Chain) -> float | None:
    duration = chain.duration
    return None if duration is None else float(duration)
