"""What the fake server saw: requests, created tasks, callbacks, polls and peak concurrency."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """One request as the server received it and how it was answered.

    ``status`` is ``None`` when the connection was dropped instead of answered; ``fault`` names
    the injected fault that shaped the answer (``"drop"``, ``"malformed"``, ...), if any.
    """

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any
    status: int | None
    at: float
    task_id: str | None
    fault: str | None


@dataclass(frozen=True, slots=True)
class CallbackRecord:
    """One callback attempt the server made, or a delivery it lost on purpose.

    ``attempt`` counts from 1 (retries of one delivery share ``msg_id``; so does a duplicate,
    marked ``duplicate``). ``response_status`` is ``None`` when no answer came (connection
    failed, timed out). A delivery dropped by ``CallbackFaults.lost_rate`` is recorded once
    with ``lost=True`` and ``attempt=0``: it was never sent. ``at`` is the server's monotonic
    clock when the attempt started.
    """

    task_id: str
    status: str
    url: str
    msg_id: str
    at: float
    attempt: int
    response_status: int | None
    lost: bool = False
    duplicate: bool = False


@dataclass(eq=False)
class ServerRecord:
    """Counters a test or benchmark can assert on after talking to a `FakeKlingServer`."""

    requests: list[RequestRecord] = field(default_factory=list)
    created: list[str] = field(default_factory=list)
    callbacks: list[CallbackRecord] = field(default_factory=list)
    _polls: Counter[str] = field(default_factory=Counter, repr=False)
    _creates_by_video: Counter[str] = field(default_factory=Counter, repr=False)
    _peak: int = field(default=0, repr=False)

    @property
    def create_count(self) -> int:
        """Number of tasks really created (a dropped-after-create request counts)."""
        return len(self.created)

    def polls(self, task_id: str) -> int:
        """Single-task GETs of ``task_id`` that got past faults and auth to the handler."""
        return self._polls[task_id]

    @property
    def peak_concurrent(self) -> int:
        """Largest number of tasks that were running (created, not yet terminal) at once."""
        return self._peak

    @property
    def read_count(self) -> int:
        """Single-task GETs that reached the handler (every task's `polls` together)."""
        return sum(self._polls.values())

    @property
    def duplicate_count(self) -> int:
        """Creates beyond the first for the same video: tasks a client may have paid twice."""
        return sum(count - 1 for count in self._creates_by_video.values())

    def creates_for(self, video_id: str) -> int:
        """Number of tasks created to extend ``video_id`` (more than one means a duplicate)."""
        return self._creates_by_video[video_id]

    def _note_request(self, record: RequestRecord) -> None:
        self.requests.append(record)

    def _note_created(self, task_id: str, video_id: str | None, running: int) -> None:
        self.created.append(task_id)
        if video_id is not None:  # an extension (a new video extends nothing)
            self._creates_by_video[video_id] += 1
        self._peak = max(self._peak, running)

    def _note_callback(self, record: CallbackRecord) -> None:
        self.callbacks.append(record)

    def _note_poll(self, task_id: str) -> None:
        self._polls[task_id] += 1
