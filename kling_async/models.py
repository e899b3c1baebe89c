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

__all__ = [
    "DEFAULT_VIDEO_MODEL",
    "EXTENDABLE_MODELS",
    "CreateRequest",
    "ImageToVideoRequest",
    "OrphanedTask",
    "Task",
    "TaskKind",
    "TaskStatus",
    "TextToVideoRequest",
    "Video",
    "VideoExtendRequest",
    "kind_of",
    "subject_of",
]

#: The models whose videos the API can extend today (v1.x; kling-v1-5 videos excepted).
EXTENDABLE_MODELS = ("kling-v1", "kling-v1-6")
#: What `text_to_video` and `image_to_video` use when no model is named: one whose videos
#: can be extended, so a source made by this client can always start a chain.
DEFAULT_VIDEO_MODEL = "kling-v1-6"


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

    # Members are singletons compared by identity: hashed by identity too, in C, rather than
    # by `Enum`'s hash of the name in Python (a call for every dictionary look-up).
    __hash__ = object.__hash__

    @property
    def is_terminal(self) -> bool:
        """True for `SUCCEED` and `FAILED`: the task will not change again."""
        return self in (TaskStatus.SUCCEED, TaskStatus.FAILED)

    @property
    def label(self) -> str:
        """The status as a person reads it: ``succeeded`` for the API's ``succeed``.

        >>> TaskStatus.SUCCEED.label
        'succeeded'
        """
        return "succeeded" if self is TaskStatus.SUCCEED else self.value


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

    __hash__ = object.__hash__  # as `TaskStatus`'s


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
    def status_label(self) -> str:
        """The status as a person reads it (`TaskStatus.label`); an unknown status as the
        server spelled it. The API's own word stays in `status_text` and `raw`."""
        return self.status_text if self.status is TaskStatus.UNKNOWN else self.status.label

    @property
    def status_text(self) -> str:
        """The status exactly as the server spelled it (useful when `status` is UNKNOWN)."""
        text = self.raw.get("task_status")
        return text if isinstance(text, str) else self.status.value


# Assembling the models the wire decodes on every poll of every watcher.
#
# A frozen class's `__init__` stores each field with a call of `object.__setattr__`, which
# for a `Task` came to about 10,000 instructions, a third of the client's own work per read.
# A draft is a subclass with the same slots that may be assigned to: its fields are stored by
# plain slot writes, then it becomes the frozen class itself (an assignment of `__class__`,
# allowed between classes of one layout). The result is an object like any other of its
# class (same type, fields, equality, hash and repr); a draft is never seen outside the
# functions below.


class _TaskDraft(Task):
    __slots__ = ()
    __setattr__ = object.__setattr__
    __delattr__ = object.__delattr__


class _VideoDraft(Video):
    __slots__ = ()
    __setattr__ = object.__setattr__
    __delattr__ = object.__delattr__


_new = object.__new__


def assembled_task(
    id: str,
    kind: TaskKind,
    status: TaskStatus,
    status_message: str | None,
    created_at: datetime | None,
    updated_at: datetime | None,
    videos: tuple[Video, ...],
    raw: Mapping[str, Any],
    external_task_id: str | None,
) -> Task:
    """``Task(...)`` with every field given (no check, no default), at a third of the cost."""
    task: Task = _new(_TaskDraft)
    task.id = id  # type: ignore[misc]  # assignable on the draft (mypy sees Task's fields)
    task.kind = kind  # type: ignore[misc]
    task.status = status  # type: ignore[misc]
    task.status_message = status_message  # type: ignore[misc]
    task.created_at = created_at  # type: ignore[misc]
    task.updated_at = updated_at  # type: ignore[misc]
    task.videos = videos  # type: ignore[misc]
    task.raw = raw  # type: ignore[misc]
    task.external_task_id = external_task_id  # type: ignore[misc]
    task.__class__ = Task
    return task


def assembled_video(id: str, url: str, duration: Decimal | None) -> Video:
    """``Video(id, url, duration)``, as `assembled_task` makes a `Task`."""
    video: Video = _new(_VideoDraft)
    video.id = id  # type: ignore[misc]
    video.url = url  # type: ignore[misc]
    video.duration = duration  # type: ignore[misc]
    video.__class__ = Video
    return video


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


@attrs.frozen
class TextToVideoRequest:
    """One text-to-video task to submit: the arguments of `KlingClient.text_to_video`.

    `model_name` None means `DEFAULT_VIDEO_MODEL` (sent explicitly, never left to the API's
    own default). `duration` is 5 or 10 seconds; `mode` ``"std"`` or ``"pro"``;
    `aspect_ratio` ``"16:9"``, ``"9:16"`` or ``"1:1"``. `key` is local, as in
    `VideoExtendRequest`.

    >>> TextToVideoRequest("a lighthouse at dusk", duration=5).prompt
    'a lighthouse at dusk'
    """

    prompt: str
    model_name: str | None = None
    negative_prompt: str | None = None
    cfg_scale: float | None = None
    mode: str | None = None
    aspect_ratio: str | None = None
    duration: int | None = None
    callback_url: str | None = None
    external_task_id: str | None = None
    key: str | None = None


@attrs.frozen
class ImageToVideoRequest:
    """One image-to-video task to submit: the arguments of `KlingClient.image_to_video`.

    `image` (the first frame) and `image_tail` (the last) are each an http(s) URL or the
    image's bytes in base64 without a ``data:`` prefix; `KlingClient.image_to_video` reads a
    local file into base64 for you. Other fields as in `TextToVideoRequest`.

    >>> ImageToVideoRequest("https://example.com/cat.png", prompt="the cat yawns").image
    'https://example.com/cat.png'
    """

    image: str | None
    prompt: str | None = None
    image_tail: str | None = None
    model_name: str | None = None
    negative_prompt: str | None = None
    cfg_scale: float | None = None
    mode: str | None = None
    duration: int | None = None
    callback_url: str | None = None
    external_task_id: str | None = None
    key: str | None = None


#: Any request that creates a paid task; each kind has its own path (`kind_of`).
CreateRequest = VideoExtendRequest | TextToVideoRequest | ImageToVideoRequest

_KIND_OF_REQUEST: Mapping[type[Any], TaskKind] = {
    VideoExtendRequest: TaskKind.VIDEO_EXTEND,
    TextToVideoRequest: TaskKind.TEXT_TO_VIDEO,
    ImageToVideoRequest: TaskKind.IMAGE_TO_VIDEO,
}


def kind_of(request: CreateRequest) -> TaskKind:
    """The kind of task `request` creates.

    >>> kind_of(TextToVideoRequest("a fox")).value
    'videos/text2video'
    """
    return _KIND_OF_REQUEST[type(request)]


def subject_of(request: CreateRequest) -> str:
    """A short name of what `request` works on, for a table: the video to extend, else the
    kind of new video (``"text2video"``, ``"image2video"``).

    >>> subject_of(VideoExtendRequest("vid_1"))
    'vid_1'
    """
    if isinstance(request, VideoExtendRequest):
        return request.video_id
    return kind_of(request).value.rpartition("/")[2]


@attrs.frozen
class OrphanedTask:
    """A task the server made for a caller who was cancelled while its create was in flight.

    The task runs (and is paid for) all the same; the client keeps it in
    `KlingClient.orphaned_tasks` and hands it to ``on_orphaned_task``, so the application
    can watch it, record it or cancel the work it was for. `request` is what was submitted.

    >>> orphan = OrphanedTask(Task("t1", TaskKind.VIDEO_EXTEND, TaskStatus.SUBMITTED),
    ...                       VideoExtendRequest("vid_1"))
    >>> orphan.task.id, orphan.request.video_id
    ('t1', 'vid_1')
    """

    task: Task
    request: CreateRequest
