"""Fake tasks: seeded ids and durations, lazily computed status, and their wire form."""

from __future__ import annotations

import math
import random
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

EXTEND_KIND = "videos/video-extend"
KINDS = frozenset(
    {
        EXTEND_KIND,
        "videos/text2video",
        "videos/image2video",
        "videos/lip-sync",
        "videos/effects",
        "images/generations",
        "images/kolors-virtual-try-on",
        "images/editing/expand",
    }
)
#: The kinds the fake can create tasks of.
CREATABLE = frozenset({EXTEND_KIND, "videos/text2video", "videos/image2video"})
DEFAULT_PARENT_DURATION = 5.0
#: The model the API uses when a create names none.
DEFAULT_MODEL = "kling-v1"
#: Models whose videos can be extended (v1.x, except kling-v1-5).
EXTENDABLE_MODELS = ("kling-v1", "kling-v1-6")
#: Every model a text2video or image2video create may name.
MODELS = (
    "kling-v1",
    "kling-v1-5",
    "kling-v1-6",
    "kling-v2-master",
    "kling-v2-1",
    "kling-v2-1-master",
    "kling-v2-5-turbo",
    "kling-v2-6",
)
#: Most an extension adds; a video longer than the limit minus this cannot be extended.
MAX_ADDED = 5.0
MAX_VIDEO_SECONDS = 180.0
#: Videos are deleted this long after they were made (and cannot be extended after).
VIDEO_LIFETIME = 30 * 24 * 3600.0


@dataclass(frozen=True, slots=True)
class Durations:
    """How long a task takes, in service seconds (before the server's ``speed`` scaling).

    Total durations are log-normal around ``median``; ``sigma=0`` makes them all exactly
    ``median``. A task stays ``submitted`` for ``submitted_for``, then ``processing``.
    """

    submitted_for: float = 5.0
    median: float = 120.0
    sigma: float = 0.35

    def __post_init__(self) -> None:
        if self.submitted_for < 0 or self.median <= 0 or self.sigma < 0:
            raise ValueError("durations need submitted_for >= 0, median > 0 and sigma >= 0")


@dataclass(frozen=True, slots=True)
class KnownVideo:
    """A source video the server knows: seeded by a test or produced by a succeeded task."""

    id: str
    duration: float
    task_id: str | None
    model: str | None = None
    made_at: float | None = None  # wall-clock seconds; None: unknown (treated as fresh)


@dataclass(frozen=True, slots=True)
class Outcome:
    """Everything about a task's future, drawn from the seeded generator at creation."""

    task_id: str
    total: float
    failed: bool
    failure_message: str
    video_id: str
    video_duration: float


@dataclass(frozen=True, slots=True)
class FakeTask:
    """A created task; its status is a function of time, never stored."""

    kind: str
    outcome: Outcome
    durations: Durations
    external_task_id: str | None
    parent: KnownVideo | None  # the extended video (None for text2video and image2video)
    model: str | None
    created_mono: float
    created_ms: int
    speed: float

    @property
    def id(self) -> str:
        """The task id."""
        return self.outcome.task_id

    @property
    def end_mono(self) -> float:
        """Monotonic instant at which the task turns terminal (and frees its slot)."""
        return self.created_mono + self.outcome.total / self.speed

    def service_elapsed(self, now: float) -> float:
        """Service seconds since creation at monotonic instant ``now``."""
        return max(0.0, now - self.created_mono) * self.speed

    def status(self, now: float) -> str:
        """``submitted``, ``processing``, ``succeed`` or ``failed`` at monotonic ``now``."""
        elapsed = self.service_elapsed(now)
        if elapsed >= self.outcome.total:
            return "failed" if self.outcome.failed else "succeed"
        if elapsed >= self.durations.submitted_for:
            return "processing"
        return "submitted"

    def updated_ms(self, status: str) -> int:
        """Wall-clock ms of the last status change, consistent with the speed scaling."""
        offsets = {"submitted": 0.0, "processing": self.durations.submitted_for}
        service = offsets.get(status, self.outcome.total)
        return self.created_ms + round(service / self.speed * 1000)


class TaskFactory:
    """Draws ids and outcomes from one seeded stream, so equal seeds give equal tasks."""

    def __init__(
        self,
        seed: int,
        durations: Durations | Mapping[str, Durations] | None,
        fail_rate: float,
        failure_messages: Sequence[str],
    ) -> None:
        """Remember the knobs; draws happen in `outcome`, in creation order."""
        self._rng = random.Random(f"{seed}:tasks")
        self._durations = durations
        self._fail_rate = fail_rate
        self._messages = tuple(failure_messages)
        self._used_ids: set[str] = set()

    def durations_for(self, kind: str) -> Durations:
        """The durations configured for ``kind`` (defaults when not configured)."""
        if isinstance(self._durations, Durations):
            return self._durations
        if self._durations is None:
            return Durations()
        return self._durations.get(kind, Durations())

    def outcome(self, durations: Durations, parent_duration: float, *, new: bool) -> Outcome:
        """Draw the next task's id, duration, fate and result video, always in one order.

        An extension's video is the parent's plus 4-5 s; a `new` video (text or image to
        video) is as long as asked, `parent_duration`."""
        rng = self._rng
        task_id = self._fresh(lambda: str(rng.randrange(10**17, 10**18)))
        total = max(
            durations.submitted_for, durations.median * math.exp(durations.sigma * rng.gauss())
        )
        failed = rng.random() < self._fail_rate
        message = self._messages[rng.randrange(len(self._messages))]
        video_id = self._fresh(lambda: str(uuid.UUID(int=rng.getrandbits(128), version=4)))
        added = round(rng.uniform(4.0, 5.0), 1)
        length = parent_duration if new else parent_duration + added
        return Outcome(task_id, total, failed, message, video_id, length)

    def _fresh(self, draw: Callable[[], str]) -> str:
        value = draw()
        while value in self._used_ids:
            value = draw()
        self._used_ids.add(value)
        return value


def seconds_text(seconds: float) -> str:
    """A duration as the API writes it: a string with one decimal, e.g. ``"9.8"``."""
    return f"{seconds:.1f}"


def file_url(base_url: str, video_id: str) -> str:
    """Where the server serves the bytes of ``video_id``."""
    return f"{base_url}/files/{video_id}.mp4"


def task_wire(
    task: FakeTask,
    now: float,
    base_url: str,
    status: str | None = None,
    *,
    expires: int | None = None,
) -> dict[str, Any]:
    """The task object a GET answers; ``status`` overrides the reported status only.

    ``expires`` (Unix seconds) signs the result video's URL with the moment it stops working,
    as real result links are signed.
    """
    real = task.status(now)
    info: dict[str, Any] = {}
    if task.external_task_id is not None:
        info["external_task_id"] = task.external_task_id
    if task.parent is not None:
        info["parent_video"] = {
            "id": task.parent.id,
            "url": file_url(base_url, task.parent.id),
            "duration": seconds_text(task.parent.duration),
        }
    data: dict[str, Any] = {
        "task_id": task.id,
        "task_status": real if status is None else status,
        "task_status_msg": task.outcome.failure_message if real == "failed" else "",
        "task_info": info,
        "created_at": task.created_ms,
        "updated_at": task.updated_ms(real),
    }
    if real == "succeed":
        data["task_result"] = {"videos": [_result_video(task, base_url, expires)]}
        data["final_unit_deduction"] = "1"
    return data


def _result_video(task: FakeTask, base_url: str, expires: int | None) -> dict[str, str]:
    video_id = task.outcome.video_id
    signature = "" if expires is None else f"?expires={expires}"
    return {
        "id": video_id,
        "url": file_url(base_url, video_id) + signature,
        "duration": seconds_text(task.outcome.video_duration),
    }


def created_wire(task: FakeTask) -> dict[str, Any]:
    """The ``data`` of a create answer."""
    info = {} if task.external_task_id is None else {"external_task_id": task.external_task_id}
    return {
        "task_id": task.id,
        "task_status": "submitted",
        "task_info": info,
        "created_at": task.created_ms,
        "updated_at": task.created_ms,
    }
