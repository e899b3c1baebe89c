"""A chain and its plan: what is asked, what was made, how it ended, its progress; how many
steps it takes and what each step adds.

A chain's steps are journaled under its key (`chain_key`) and their number; `ChainState`
holds one chain on its way and makes the request of each of its steps.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import deque
from decimal import Decimal
from typing import Any

import attrs

from ._wire import converter
from .batch import BatchEvent, BatchEventKind
from .errors import InvalidArgumentError, KlingError
from .models import (
    CreateRequest,
    ImageToVideoRequest,
    Task,
    TextToVideoRequest,
    Video,
    VideoExtendRequest,
)
from .telemetry import NO_CHAIN, _ChainTrace

__all__ = [
    "ASSUMED_SOURCE_SECONDS",
    "ASSUMED_STEP_SECONDS",
    "MAX_VIDEO_SECONDS",
    "SOURCE_LIFETIME",
    "Chain",
    "ChainError",
    "ChainEvent",
    "ChainOutcome",
    "ChainRequest",
    "ChainState",
    "NewVideo",
    "StepLengths",
    "chain_key",
    "planned_steps",
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
class ChainState:
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

    @staticmethod
    def of_step(step_key: str | None) -> tuple[str, int]:
        """The chain's key and the step's number a step's key (`step_key`) holds."""
        chain, _, step = (step_key or "/0").rpartition("/")
        return chain, int(step)

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


def chain_key(request: ChainRequest) -> str:
    """The name a chain's steps are journaled under: its `key`, else a digest of its fields."""
    if request.key is not None:
        return request.key
    fields = converter.unstructure(attrs.evolve(request, key=None))
    canonical = json.dumps(fields, sort_keys=True, default=str, separators=(",", ":"))
    return "chain:" + hashlib.sha256(canonical.encode()).hexdigest()[:32]


def planned_steps(request: ChainRequest) -> int | None:
    """The number of steps a chain asks for (None: grown until a length)."""
    if request.steps is not None:
        return request.steps
    return len(request.prompts) if request.prompts is not None else None
