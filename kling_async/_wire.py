"""The wire format: one cattrs converter between JSON envelopes and the models.

Liberal in what it reads (millisecond timestamps, durations as decimal strings, both
spellings of success, unknown statuses and fields), strict in what it writes (only the
fields the API knows, never None, never the caller's private `key`).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any, TypeVar

import attrs
import cattrs

from .errors import InvalidArgumentError, MalformedTaskError, TransportError
from .models import (
    CreateRequest,
    Task,
    TaskKind,
    TaskStatus,
    Video,
    VideoExtendRequest,
    assembled_task,
    assembled_video,
)

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
_SUCCEED = TaskStatus.SUCCEED  # an enum's members are slow to look up on their class
_LOCAL_FIELDS = frozenset({"key"})
#: Kinds whose result is a video: a success of theirs without one is no success.
_VIDEO_KINDS = frozenset(kind for kind in TaskKind if kind.value.startswith("videos/"))

converter = cattrs.Converter(forbid_extra_keys=False)
#: The scanner of `json.loads`'s own decoder (written in C): the value at an index of a text,
#: and where it ends. (Set by the decoder's `__init__`, so unknown to the type stubs.)
_scan: Callable[[str, int], tuple[Any, int]]
_scan = json.JSONDecoder().scan_once  # type: ignore[attr-defined]


def _timestamp(value: Any, _: type) -> datetime:
    """Unix milliseconds (int, float or digit string) to an aware UTC datetime."""
    return datetime.fromtimestamp(float(value) / 1000.0, tz=UTC)


def _seconds(value: Any) -> Decimal | None:
    """Seconds as an exact decimal; an unreadable duration is unknown (None), not an error:
    one odd field must not hide a finished task. A text read before is not read again."""
    number = _DURATIONS.get(value) if type(value) is str else None
    if number is not None:
        return number
    try:
        number = Decimal(str(value).strip())
    except InvalidOperation:
        return None
    if not number.is_finite():
        return None
    return _remember(_DURATIONS, value, number) if type(value) is str else number


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


def _milliseconds(value: int) -> datetime:
    moment = _MOMENTS.get(value)
    if moment is None:
        moment = _remember(_MOMENTS, value, datetime.fromtimestamp(value / 1000.0, tz=UTC))
    return moment


# What was read before, read again by a look-up (which costs a third of a call): a watched
# task repeats the same few timestamps, and result videos the same few durations.
_MOMENTS: dict[int, datetime] = {}  # by Unix milliseconds
_DURATIONS: dict[str, Decimal] = {}  # by the text of a duration
_KEPT = 4096  # entries of each at most: past it, one starts again empty
_V = TypeVar("_V")


def _remember(memory: dict[Any, Any], key: Any, value: _V) -> _V:
    if len(memory) >= _KEPT:
        memory.clear()
    memory[key] = value
    return value


def _videos(result: Any) -> tuple[Video, ...]:
    videos = result.get("videos") if isinstance(result, dict) else None
    if not isinstance(videos, list):
        return ()
    made = []
    for item in videos:
        # The usual shape (an object of texts, a duration read before) without a call of the
        # general reader: this runs for the last poll of every watcher.
        if type(item) is dict:
            video_id, url, duration = item.get("id"), item.get("url"), item.get("duration")
            if type(video_id) is str and type(url) is str and video_id and url:
                seconds = _DURATIONS.get(duration) if type(duration) is str else None
                if seconds is None and duration is not None:
                    seconds = _seconds(duration)
                made.append(assembled_video(video_id, url, seconds))
                continue
        made.append(_video(item))
    return tuple(made)


def _video(item: Any) -> Video:
    if not isinstance(item, dict) or not item.get("id") or not item.get("url"):
        raise ValueError(f"a result video needs an id and a url, got {item!r:.80}")
    return assembled_video(str(item["id"]), str(item["url"]), _seconds(item.get("duration")))


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
    task_id = data.get("task_id") if isinstance(data, dict) else None
    if not task_id:
        raise _malformed(f"expected a task object with a task_id, got {type(data).__name__}")
    # This runs for every poll of every watcher: the usual shape of each field (a status
    # spelled exactly, timestamps seen before, no result yet) is read here without a call,
    # anything else by the general helpers.
    get = data.get
    spelled, message, created, updated, result, info = (
        get("task_status", ""),
        get("task_status_msg"),
        get("created_at"),
        get("updated_at"),
        get("task_result"),
        get("task_info"),
    )
    try:
        status = _EXACT_STATUS.get(spelled) if type(spelled) is str else None
        if status is None:
            status = _status(spelled, TaskStatus)
        external = info.get("external_task_id") if isinstance(info, dict) else None
        task = assembled_task(
            task_id if type(task_id) is str else str(task_id),
            kind,
            status,
            None if message is None or message == "" else str(message),
            _MOMENTS.get(created) or _optional_time(created),
            _MOMENTS.get(updated) or _optional_time(updated),
            () if result is None else _videos(result),
            _with_shared_keys(data) if share_keys else data,
            None if external is None else _optional_text(external),
        )
    except (
        cattrs.BaseValidationError,
        ValueError,
        TypeError,
        OverflowError,
        RecursionError,  # sharing the keys of an absurdly nested answer
    ) as exc:
        raise _malformed(f"task {task_id}: {_first_cause(exc)}") from exc
    if status is _SUCCEED and not task.videos and not stored:
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
    """`value` rebuilt with interned dictionary keys (equal, and smaller when kept).

    `value` is decoded JSON, so its keys are texts and its containers plain dicts and lists.
    Only containers are visited by a call (this runs for every poll of every watcher)."""
    if type(value) is dict:
        return {
            _intern(k): v if type(v) is not dict and type(v) is not list else _with_shared_keys(v)
            for k, v in value.items()
        }
    if type(value) is list:
        return [
            v if type(v) is not dict and type(v) is not list else _with_shared_keys(v)
            for v in value
        ]
    return value


_intern = sys.intern


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

    A body that is one JSON value and nothing else, as every answer of the API is, goes
    straight to the decoder's scanner: the same value `json.loads` returns, without its two
    calls in Python and two regular-expression matches around the scan (a quarter of the
    decoding of a task).
    """
    try:
        text = raw.decode()
        value, end = _scan(text, 0)
        if end == len(text):
            return value
    except (StopIteration, ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        pass
    # Whitespace around the value, a byte order mark, another encoding, or no JSON at all.
    try:
        return json.loads(raw.decode().removeprefix("\ufeff"))
    except (ValueError, RecursionError):
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
