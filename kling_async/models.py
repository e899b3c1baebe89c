"""The vocabulary of the API: tasks, their status and kind, videos and extension requests.

The models are plain frozen attrs classes. They know nothing of JSON: `_wire` turns the
server's envelopes into them, so a change of wire format never reaches user code.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal
from typing import Any

import attrs

__all__ = ["Task", "TaskKind", "TaskStatus", "Video", "VideoExtendRequest"]


class TaskStatus(enum.Enum):
    """Where a task is in its life: ``submitted -> processing -> succeed | failed``.

    A status string the client does not know (a newer API, a gateway's own word) becomes
    `UNKNOWN`; the original text stays in `Task.raw`. An unknown status is treated as still
    running, so a watcher keeps going until a known terminal status arrives.

    >>> TaskStatus.SUCCEED.is_terminal
    True
    """

    SUBMITTED = "submitted"
    PROCESSING = "processing"
    SUCCEED = "succeed"
    FAILED = "failed"
    UNKNOWN = "unknown"

    @property
    def is_terminal(self) -> bool:
        """True for `SUCCEED` and `FAILED`: the task will not change again."""
        return self in (TaskStatus.SUCCEED, TaskStatus.FAILED)


class TaskKind(enum.Enum):
    """The kind of task, valued by its path under ``/v1/`` (the same on every dialect).

    >>> TaskKind.VIDEO_EXTEND.value
    'videos/video-extend'
    """

    VIDEO_EXTEND = "videos/video-extend"
    TEXT_TO_VIDEO = "videos/text2video"
    IMAGE_TO_VIDEO = "videos/image2video"
    LIP_SYNC = "videos/lip-sync"
    EFFECTS = "videos/effects"
    IMAGE_GENERATION = "images/generations"
    VIRTUAL_TRY_ON = "images/kolors-virtual-try-on"
    IMAGE_EXPAND = "images/editing/expand"


@attrs.frozen
class Video:
    """A video produced by a task.

    `duration` is in seconds, kept exact (the API sends it as a string such as ``"5.1"``).
    Result URLs expire (the service deletes videos after 30 days): download promptly.
    """

    id: str
    url: str
    duration: Decimal | None = None


@attrs.frozen
class Task:
    """A snapshot of one task as the server last described it.

    `raw` is the task object exactly as received (unknown fields included), for the fields
    this client does not model yet.

    >>> task = Task("t1", TaskKind.VIDEO_EXTEND, TaskStatus.SUCCEED)
    >>> task.is_terminal
    True
    """

    id: str
    kind: TaskKind
    status: TaskStatus
    status_message: str | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    videos: tuple[Video, ...] = ()
    raw: Mapping[str, Any] = attrs.field(factory=dict, eq=False, repr=False)
    external_task_id: str | None = None

    @property
    def is_terminal(self) -> bool:
        """True once the task has succeeded or failed."""
        return self.status.is_terminal

    @property
    def status_text(self) -> str:
        """The status exactly as the server spelled it (useful when `status` is UNKNOWN)."""
        text = self.raw.get("task_status")
        return text if isinstance(text, str) else self.status.value


@attrs.frozen
class VideoExtendRequest:
    """One video extension to submit: the arguments of `KlingClient.extend_video` as a value.

    `key` is the caller's stable name for the request (a batch journal uses it to recognise
    the request on a re-run); it is never sent to the API. Arguments are checked by the client
    before anything is sent, against the dialect in use (a gateway needs `task_id`).

    >>> request = VideoExtendRequest("vid_123", task_id="task_9", prompt="the camera pulls back")
    >>> request.video_id
    'vid_123'
    """

    video_id: str
    task_id: str | None = None
    prompt: str | None = None
    negative_prompt: str | None = None
    cfg_scale: float | None = None
    callback_url: str | None = None
    external_task_id: str | None = None
    key: str | None = None
