"""The wire format: one cattrs converter between JSON envelopes and the models.

Liberal in what it reads (millisecond timestamps, durations as decimal strings, both
spellings of success, unknown statuses and fields), strict in what it writes (only the
fields the API knows, never None, never the caller's private `key`).
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

import attrs
import cattrs

from .errors import InvalidArgumentError, MalformedTaskError, TransportError
from .models import CreateRequest, Task, TaskKind, TaskStatus, Video, VideoExtendRequest

__all__ = [
    "converter",
    "decode_json",
    "request_body",
    "request_from_json",
    "request_record",
    "structure_task",
    "structure_tasks",
]

_STATUS_ALIASES = {"succeeded": TaskStatus.SUCCEED, "success": TaskStatus.SUCCEED}
_EXACT_STATUS = {
    **{s.value: s for s in TaskStatus if s is not TaskStatus.UNKNOWN},
    **_STATUS_ALIASES,
}
_LOCAL_FIELDS = frozenset({"key"})
#: Kinds whose result is a video: a success of theirs without one is no success.
_VIDEO_KINDS = frozenset(kind for kind in TaskKind if kind.value.startswith("videos/"))

converter = cattrs.Converter(forbid_extra_keys=False)


def _timestamp(value: Any, _: type) -> datetime:
    """Unix milliseconds (int, float or digit string) to an aware UTC datetime."""
    return datetime.fromtimestamp(float(value) / 1000.0, tz=UTC)


def _seconds(value: Any) -> Decimal | None:
    """Seconds as an exact decimal; an unreadable duration is unknown (None), not an error:
    one odd field must not hide a finished task."""
    try:
        number = Decimal(str(value).strip())
    except InvalidOperation:
        return None
    return number if number.is_finite() else None


def _status(value: Any, _: type) -> TaskStatus:
    known = _EXACT_STATUS.get(value) if isinstance(value, str) else None
    if known is not None:  # the common case, without normalising the text
        return known
    text = str(value).strip().lower()
    if text in _STATUS_ALIASES:
        return _STATUS_ALIASES[text]
    try:
        return TaskStatus(text)
    except ValueError:
        return TaskStatus.UNKNOWN


converter.register_structure_hook(datetime, _timestamp)
converter.register_structure_hook(TaskStatus, _status)


def _optional_text(value: Any) -> str | None:
    return str(value) if value not in (None, "") else None


def _optional_time(value: Any) -> datetime | None:
    if value in (None, "", 0):
        return None
    if isinstance(value, int):  # a watched task repeats the same few timestamps: reuse them
        return _milliseconds(value)
    return _timestamp(value, datetime)


@functools.lru_cache(maxsize=4096)
def _milliseconds(value: int) -> datetime:
    return datetime.fromtimestamp(value / 1000.0, tz=UTC)


def _videos(result: Any) -> tuple[Video, ...]:
    if not isinstance(result, dict) or not isinstance(result.get("videos"), list):
        return ()
    return tuple(map(_video, result["videos"]))


def _video(item: Any) -> Video:
    if not isinstance(item, dict) or not item.get("id") or not item.get("url"):
        raise ValueError(f"a result video needs an id and a url, got {item!r:.80}")
    return Video(str(item["id"]), str(item["url"]), _seconds(item.get("duration")))


def _external_id(data: Mapping[str, Any]) -> str | None:
    info = data.get("task_info")
    return _optional_text(info.get("external_task_id")) if isinstance(info, dict) else None


def structure_task(
    data: Any, kind: TaskKind, *, share_keys: bool = False, stored: bool = False
) -> Task:
    """The `Task` for one decoded task object (a dict: objects are checked with `dict`, not
    the slower `Mapping`, on this path of every read); the object is kept as `Task.raw`.

    `share_keys` keeps `raw` with the one interned copy of each key (about a third of its
    memory) instead of fresh strings from the decoder, for a task that is held a while by
    each of many watchers; it costs a couple of microseconds.

    Raises `TransportError` when the object lacks a task id or holds values of the wrong
    shape: a body the client cannot trust is a failed exchange, not a task. Raises
    `MalformedTaskError` for a video task reported succeeded without any video, unless the
    object is `stored` (a journal's own record, read back as it was kept).
    """
    if not isinstance(data, dict) or not data.get("task_id"):
        raise _malformed(f"expected a task object with a task_id, got {type(data).__name__}")
    get = data.get
    try:
        task = Task(  # positionally: this runs for every poll of every watcher
            str(data["task_id"]),
            kind,
            _status(get("task_status", ""), TaskStatus),
            _optional_text(get("task_status_msg")),
            _optional_time(get("created_at")),
            _optional_time(get("updated_at")),
            _videos(get("task_result")),
            _with_shared_keys(data) if share_keys else data,
            _external_id(data),
        )
    except (
        cattrs.BaseValidationError,
        ValueError,
        TypeError,
        OverflowError,
        RecursionError,  # sharing the keys of an absurdly nested answer
    ) as exc:
        raise _malformed(f"task {data['task_id']}: {_first_cause(exc)}") from exc
    if task.status is TaskStatus.SUCCEED and not task.videos and not stored:
        _check_result(task)
    return task


def _check_result(task: Task) -> None:
    """A video task that succeeded must hold its video: `videos[0]` must never fail."""
    if task.kind not in _VIDEO_KINDS:
        return
    result = task.raw.get("task_result")
    if isinstance(result, dict):
        where = f"task_result.videos is {json.dumps(result.get('videos'), default=str):.40}"
    else:
        where = "no task_result"
    raise MalformedTaskError(task, f"it is reported as succeeded but holds no video ({where})")


def _with_shared_keys(value: Any) -> Any:
    """`value` rebuilt with interned dictionary keys (equal, and smaller when kept)."""
    if isinstance(value, dict):
        return {
            sys.intern(k) if type(k) is str else k: _with_shared_keys(v) for k, v in value.items()
        }
    if isinstance(value, list):
        return [_with_shared_keys(item) for item in value]
    return value


def structure_tasks(data: Any, kind: TaskKind) -> list[Task]:
    """The tasks of a list answer (`data` is an array of task objects)."""
    if not isinstance(data, list):
        raise _malformed(f"expected a list of tasks, got {type(data).__name__}")
    return [structure_task(item, kind) for item in data]


def request_body(request: CreateRequest) -> dict[str, Any]:
    """The JSON body of a create request: the API's fields that are set, nothing else.

    A video's length goes as the API spells it, a string of seconds (``"5"``), and
    ``cfg_scale`` as the float it is (``1.0``, not ``1``, for a server that checks types).
    """
    body = {
        name: value for name, value in request_record(request).items() if name not in _LOCAL_FIELDS
    }
    if "duration" in body:
        body["duration"] = str(body["duration"])
    if "cfg_scale" in body:
        body["cfg_scale"] = float(body["cfg_scale"])
    return body


_REQUEST_FIELDS = {field.name: field.type for field in attrs.fields(VideoExtendRequest)}
_TEXT_FIELDS = frozenset(name for name in _REQUEST_FIELDS if name != "cfg_scale")


def request_from_json(value: Any) -> VideoExtendRequest:
    """A `VideoExtendRequest` from a JSON object with its field names (a batch input line).

    Strict: an unknown field (a typo) or a value of the wrong type raises
    `InvalidArgumentError` naming it, so a mistake never reaches the paid API.
    """
    if not isinstance(value, Mapping):
        raise InvalidArgumentError(f"expected a JSON object, got {type(value).__name__}")
    unknown = sorted(set(value) - set(_REQUEST_FIELDS))
    if unknown:
        raise InvalidArgumentError(
            f"unknown field{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} "
            f"(known: {', '.join(_REQUEST_FIELDS)})"
        )
    if "video_id" not in value:
        raise InvalidArgumentError("video_id is missing")
    for name, item in value.items():
        if item is None:
            continue
        if name in _TEXT_FIELDS and not isinstance(item, str):
            raise InvalidArgumentError(f"{name} must be a string, not {item!r}")
        if name == "cfg_scale" and (isinstance(item, bool) or not isinstance(item, int | float)):
            raise InvalidArgumentError(f"cfg_scale must be a number, not {item!r}")
    return VideoExtendRequest(**value)


def request_record(request: CreateRequest) -> dict[str, Any]:
    """The request's fields that are set, for a results line (the local `key` included)."""
    fields: dict[str, Any] = converter.unstructure(request)
    return {name: value for name, value in fields.items() if value is not None}


def decode_json(raw: bytes) -> Any:
    """The JSON value of a body, or None when it is not JSON.

    JSON between systems is UTF-8 (RFC 8259), so a body is first read as such (a leading
    byte order mark allowed), which spares every read `json.loads`'s encoding detection
    (about a tenth of the decoding of a task). A body that fails that way gets the
    detection: an answer in UTF-16 or UTF-32 must not turn a paid create into an
    ambiguous one.
    """
    try:
        return json.loads(raw.decode().removeprefix("\ufeff"))
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        pass
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        return None


def _first_cause(exc: BaseException) -> str:
    if isinstance(exc, cattrs.BaseValidationError) and exc.exceptions:
        return _first_cause(exc.exceptions[0])
    return str(exc) or type(exc).__name__


def _malformed(detail: str) -> TransportError:
    return TransportError(
        f"The server's answer could not be read: {detail}.", may_have_been_sent=True
    )
