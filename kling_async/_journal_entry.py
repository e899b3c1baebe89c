"""What every journal store keeps of a request: the entry, its states, the stored form of its
request and task, and the refusals that keep a task from being lost or paid for twice.

The SQLite `Journal` and the shared journal on a database store the same columns the same
way, so an entry reads back alike from either.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import attrs
import cattrs

from ._journal_key import KIND_FIELD, canonical_json, differing_fields, stored_fields
from ._wire import converter, structure_task
from .errors import KlingError, TransportError
from .models import (
    CreateRequest,
    ImageToVideoRequest,
    Task,
    TaskKind,
    TextToVideoRequest,
    Video,
    VideoExtendRequest,
)

__all__ = [
    "MOVE_AWAY",
    "ClaimedElsewhereError",
    "EntryState",
    "JournalEntry",
    "JournalError",
    "Row",
    "check_same_request",
    "check_update",
    "entry_from_row",
    "error_fields",
    "not_a_journal",
    "still_running",
    "stored_request",
    "task_snapshot",
]

MOVE_AWAY = "move it away or pass another --journal"

Row = tuple[Any, ...]


class JournalError(KlingError):
    """The journal cannot be used, or was asked something that would lose track of a task.

    `path` is the journal file; the message names it and says what to do.

    >>> str(JournalError(Path("b.db"), "b.db is not a kling_async journal."))
    'b.db is not a kling_async journal.'
    """

    def __init__(self, path: Path | str, message: str) -> None:
        self.path = path
        super().__init__(message)


class ClaimedElsewhereError(JournalError):
    """Another live process holds this request's key (a shared journal): leave it to that
    process, and adopt it only once its lease has run out."""


class EntryState(enum.Enum):
    """How far a journaled request got: intent -> submitted -> finished.

    >>> EntryState("submitted") is EntryState.SUBMITTED
    True
    """

    INTENT = "intent"
    SUBMITTED = "submitted"
    FINISHED = "finished"


@attrs.frozen
class JournalEntry:
    """What the journal knows of one request.

    `request` is exactly as journaled (with the `external_task_id` the client assigned);
    `task` is the latest snapshot recorded, None while the task id is unknown; `error_type`
    and `error_message` describe a final outcome that was an error.

    >>> from kling_async import VideoExtendRequest
    >>> request = VideoExtendRequest("v1")
    >>> JournalEntry("a", request, EntryState.INTENT, None, None, None, 0.0).state.value
    'intent'
    """

    key: str
    request: CreateRequest
    state: EntryState
    task: Task | None
    error_type: str | None
    error_message: str | None
    updated_at: float


def entry_from_row(where: Path | str, row: Row) -> JournalEntry:
    """An entry from its stored columns: key, request, state, task object, task kind, error
    type, error message, updated_at."""
    key, request, state, raw, kind, error_type, error_message, updated_at = row
    try:
        task = None if raw is None else structure_task(json.loads(raw), TaskKind(kind), stored=True)
        return JournalEntry(
            key,
            _structure_request(where, request),
            EntryState(state),
            task,
            error_type,
            error_message,
            updated_at,
        )
    except (ValueError, TransportError) as exc:
        raise not_a_journal(where, f"its entry {key!r} cannot be read: {exc}") from exc


def stored_request(request: CreateRequest) -> str:
    """The request as a journal stores it."""
    return json.dumps(stored_fields(request))


def check_same_request(where: Path | str, key: str, stored: str, request: CreateRequest) -> None:
    """Refuse `request` under `key` when the request `stored` there has other API fields."""
    earlier = _structure_request(where, stored)
    if canonical_json(earlier) != canonical_json(request):
        raise JournalError(
            where,
            f"Key {key!r} was journaled for a different request in {where} "
            f"(different {', '.join(differing_fields(earlier, request))}); give each "
            "request its own key, or start a new journal.",
        )


def check_update(where: Path | str, key: str, found: Row | None, task: Task | None) -> None:
    """Explain an update that changed no row (`found` holds the entry's task id, or is empty
    when there is no entry; None when the update was stored)."""
    if found is None:
        return
    if not found:
        raise JournalError(
            where,
            f"Key {key!r} has no intent in the journal {where}; record_intent must come first.",
        )
    (task_id,) = found
    if task is not None and task_id is not None and task_id != task.id:
        raise JournalError(
            where,
            f"Key {key!r} is journaled with task {task_id} in {where}, not {task.id}: "
            "two tasks for one request. Check both tasks before running again.",
        )
    # What is left is a late snapshot of a FINISHED entry: its outcome already stands.


def still_running(where: Path | str, key: str, task_id: str) -> JournalError:
    """The refusal to forget a key whose task runs."""
    return JournalError(
        where,
        f"Key {key!r} has a running task {task_id} in the journal {where}; "
        "record its outcome before forgetting it.",
    )


def error_fields(error: BaseException | None) -> tuple[str | None, str | None]:
    """An outcome's error as stored: its class name and message."""
    return (type(error).__name__, str(error)) if error is not None else (None, None)


_REQUEST_CLASSES: Mapping[TaskKind, type[CreateRequest]] = {
    TaskKind.VIDEO_EXTEND: VideoExtendRequest,
    TaskKind.TEXT_TO_VIDEO: TextToVideoRequest,
    TaskKind.IMAGE_TO_VIDEO: ImageToVideoRequest,
}


def _structure_request(path: Path | str, stored: str) -> CreateRequest:
    try:
        fields = json.loads(stored)
        kind = TaskKind(fields.pop(KIND_FIELD, TaskKind.VIDEO_EXTEND.value))
        return converter.structure(fields, _REQUEST_CLASSES[kind])
    except (ValueError, KeyError, AttributeError, cattrs.BaseValidationError) as exc:
        raise not_a_journal(path, f"a request cannot be read: {exc}") from exc


def task_snapshot(task: Task) -> tuple[str, str, str, str]:
    """The task's id, kind, status and object, as stored."""
    raw = json.dumps(_task_object(task), default=str)
    return task.id, task.kind.value, task.status.value, raw


def _task_object(task: Task) -> dict[str, Any]:
    """`task.raw` as received, completed from the model where it lacks a field.

    A task made by hand (a test's, a fake's) has an empty `raw`; filling in what
    `structure_task` reads makes it come back equal all the same.
    """
    modelled = {
        "task_id": task.id,
        "task_status": task.status.value,
        "task_status_msg": task.status_message,
        "created_at": _millis(task.created_at),
        "updated_at": _millis(task.updated_at),
        "task_result": {"videos": [_video(v) for v in task.videos]} if task.videos else None,
        "task_info": {"external_task_id": task.external_task_id} if task.external_task_id else None,
    }
    missing = {k: v for k, v in modelled.items() if v is not None and k not in task.raw}
    return {**task.raw, **missing}


def _millis(moment: datetime | None) -> int | None:
    return None if moment is None else round(moment.timestamp() * 1000)


def _video(video: Video) -> dict[str, str]:
    fields = {"id": video.id, "url": video.url}
    return fields if video.duration is None else {**fields, "duration": str(video.duration)}


def not_a_journal(path: Path | str, reason: str) -> JournalError:
    """The refusal of a file that is not a journal this version can read, and why."""
    return JournalError(path, f"{path} is not a kling_async journal ({reason}); {MOVE_AWAY}.")
