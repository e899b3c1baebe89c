"""The wire format: envelopes and task objects in, request bodies out."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import attrs
import pytest

from kling_async import (
    MalformedTaskError,
    Task,
    TaskKind,
    TaskStatus,
    TransportError,
    Video,
    VideoExtendRequest,
)
from kling_async._wire import request_body, structure_task, structure_tasks

SUCCEEDED: dict[str, Any] = {
    "task_id": "860500716839079996",
    "task_status": "succeed",
    "task_status_msg": "",
    "task_info": {"external_task_id": "mine-1", "parent_video": {"id": "p", "url": "u"}},
    "task_result": {
        "videos": [{"id": "v-1", "url": "https://cdn.example/v-1.mp4", "duration": "9.8"}]
    },
    "final_unit_deduction": "1",
    "created_at": 1722769557708,
    "updated_at": 1722769616324,
    "brand_new_field": {"nested": True},
}


def test_task_object_becomes_a_task() -> None:
    """Every modelled field is read, with exact decimals and aware UTC datetimes."""
    task = structure_task(SUCCEEDED, TaskKind.VIDEO_EXTEND)
    assert task.id == "860500716839079996"
    assert task.status is TaskStatus.SUCCEED and task.is_terminal
    assert task.status_message is None
    assert task.videos == (Video("v-1", "https://cdn.example/v-1.mp4", Decimal("9.8")),)
    assert task.created_at == datetime(2024, 8, 4, 11, 5, 57, 708000, tzinfo=UTC)
    assert task.updated_at is not None and task.updated_at.tzinfo is UTC
    assert task.external_task_id == "mine-1"


def test_unknown_fields_are_kept_on_raw() -> None:
    """Fields the client does not model are ignored but kept in Task.raw."""
    task = structure_task(SUCCEEDED, TaskKind.VIDEO_EXTEND)
    assert task.raw["brand_new_field"] == {"nested": True}
    assert task.raw["final_unit_deduction"] == "1"


@pytest.mark.parametrize(
    ("text", "status"),
    [
        ("submitted", TaskStatus.SUBMITTED),
        ("processing", TaskStatus.PROCESSING),
        ("succeed", TaskStatus.SUCCEED),
        ("succeeded", TaskStatus.SUCCEED),
        ("SUCCEED", TaskStatus.SUCCEED),
        ("failed", TaskStatus.FAILED),
    ],
)
def test_known_statuses(text: str, status: TaskStatus) -> None:
    """Both spellings of success, any case, read as SUCCEED."""
    data = {"task_id": "t", "task_status": text, "task_result": SUCCEEDED["task_result"]}
    assert structure_task(data, TaskKind.VIDEO_EXTEND).status is status


@pytest.mark.parametrize(
    ("result", "says"),
    [
        ({"videos": None}, "task_result.videos is null"),
        ({"videos": []}, "task_result.videos is []"),
        ({}, "task_result.videos is null"),
        (None, "no task_result"),
    ],
)
def test_a_success_without_a_video_is_malformed(result: object, says: str) -> None:
    """A succeeded video task holding no video is an error naming the task, never a task whose
    videos[0] fails in the caller's code; what came stays on the error's task.raw."""
    data = {"task_id": "t-9", "task_status": "succeed", "task_result": result}
    with pytest.raises(MalformedTaskError, match=r"Task t-9 \(videos/video-extend\)") as caught:
        structure_task(data, TaskKind.VIDEO_EXTEND, share_keys=True)
    assert says in str(caught.value)
    assert caught.value.task.raw == data


def test_only_video_successes_need_a_video() -> None:
    """Images have no videos; a journal's own record is read back as it was kept."""
    bare = {"task_id": "t", "task_status": "succeed"}
    assert structure_task(bare, TaskKind.IMAGE_GENERATION).status is TaskStatus.SUCCEED
    assert structure_task(bare, TaskKind.VIDEO_EXTEND, stored=True).videos == ()


def test_unknown_status_is_kept_not_fatal() -> None:
    """A status the client does not know is UNKNOWN, not terminal, with its text kept."""
    task = structure_task({"task_id": "t", "task_status": "queueing"}, TaskKind.VIDEO_EXTEND)
    assert task.status is TaskStatus.UNKNOWN
    assert not task.is_terminal
    assert task.status_text == "queueing"


def test_failed_task_keeps_its_message() -> None:
    """task_status_msg becomes status_message."""
    data = {"task_id": "t", "task_status": "failed", "task_status_msg": "content policy"}
    assert structure_task(data, TaskKind.VIDEO_EXTEND).status_message == "content policy"


@pytest.mark.parametrize(
    "data",
    [
        None,
        [],
        {"task_status": "succeed"},
        {"task_id": "t", "created_at": "yesterday"},
        {"task_id": "t", "task_result": {"videos": [{"url": "u"}]}},
    ],
)
def test_malformed_task_object_is_a_transport_error(data: Any) -> None:
    """A task object the client cannot trust raises TransportError naming the problem."""
    with pytest.raises(TransportError, match="could not be read"):
        structure_task(data, TaskKind.VIDEO_EXTEND)


@pytest.mark.parametrize(
    ("video", "expected"),
    [
        ({"id": "v", "url": "u", "duration": "5.1"}, Video("v", "u", Decimal("5.1"))),
        ({"id": 42, "url": "u", "duration": 5}, Video("42", "u", Decimal(5))),
        ({"id": "v", "url": "u"}, Video("v", "u", None)),
        ({"id": "v", "url": "u", "duration": 10.5}, Video("v", "u", Decimal("10.5"))),
    ],
)
def test_a_result_video_of_any_readable_shape(video: dict[str, Any], expected: Video) -> None:
    """Texts as sent; a number id read as its text, a number duration as an exact decimal."""
    data = {"task_id": "t", "task_status": "succeed", "task_result": {"videos": [video]}}
    assert structure_task(data, TaskKind.VIDEO_EXTEND).videos == (expected,)


@pytest.mark.parametrize("duration", ["5.1s", "", None, "NaN", [1], "Infinity"])
def test_an_odd_duration_is_unknown_not_fatal(duration: object) -> None:
    """One unreadable duration must not hide a finished task: it reads as None."""
    video = {"id": "v", "url": "https://cdn.example/v.mp4", "duration": duration}
    data = {"task_id": "t", "task_status": "succeed", "task_result": {"videos": [video]}}
    task = structure_task(data, TaskKind.VIDEO_EXTEND)
    assert task.status is TaskStatus.SUCCEED
    assert task.videos[0].duration is None


def test_list_answer() -> None:
    """A list answer is an array of task objects."""
    tasks = structure_tasks([SUCCEEDED, {"task_id": "2"}], TaskKind.VIDEO_EXTEND)
    assert [t.id for t in tasks] == ["860500716839079996", "2"]
    with pytest.raises(TransportError):
        structure_tasks({"not": "a list"}, TaskKind.VIDEO_EXTEND)


def test_request_body_sends_only_what_is_set() -> None:
    """None fields and the local key are never sent."""
    request = VideoExtendRequest("v1", prompt="go on", cfg_scale=0.0, key="row-7")
    assert request_body(request) == {"video_id": "v1", "prompt": "go on", "cfg_scale": 0.0}


@pytest.mark.parametrize("scale", [0, 1])
def test_an_integer_cfg_scale_is_sent_as_the_float_the_api_takes(scale: int) -> None:
    """cfg_scale is a float in the API: ``1`` goes as ``1.0``, so a server that checks
    types does not refuse it."""
    body = request_body(VideoExtendRequest("v1", cfg_scale=scale))
    assert type(body["cfg_scale"]) is float
    assert json.dumps(body) == f'{{"video_id": "v1", "cfg_scale": {scale}.0}}'


def test_deeply_nested_garbage_is_not_json() -> None:
    """A body nested beyond reason reads as 'not JSON', never a RecursionError."""
    from kling_async._wire import decode_json

    assert decode_json(b"[" * 100_000) is None


@pytest.mark.parametrize(
    "raw",
    [
        '{"msg": "vidéo"}'.encode(),
        '\ufeff{"msg": "vidéo"}'.encode(),  # a byte order mark
        '{"msg": "vidéo"}'.encode("utf-16-le"),
        '{"msg": "vidéo"}'.encode("utf-16"),  # with its byte order mark
        '{"msg": "vidéo"}'.encode("utf-32"),
    ],
)
def test_bodies_are_read_in_every_encoding_json_allows(raw: bytes) -> None:
    """UTF-8 first (the fast path), else whatever `json.loads` detects."""
    from kling_async._wire import decode_json

    assert decode_json(raw) == {"msg": "vidéo"}


def test_undecodable_bodies_are_not_json() -> None:
    """Bytes no encoding makes JSON of read as 'not JSON' (None), never an exception; an
    encoded surrogate pair (CESU-8) is still read, as `json.loads` reads it."""
    from kling_async._wire import decode_json

    assert decode_json(b'{"msg": "\xff"}') is None
    assert decode_json(b"\xff\xfe\x00") is None
    assert decode_json(b'{"m": "\xed\xa0\xbd\xed\xb8\x80"}') == {"m": "\ud83d\ude00"}


def test_shared_keys_keep_the_object_exactly() -> None:
    """With share_keys, `raw` equals the object read (nested dicts and lists included) and
    its keys are the interned ones; without, it is the object itself."""
    shared = structure_task(SUCCEEDED, TaskKind.VIDEO_EXTEND, share_keys=True)
    assert shared.raw == SUCCEEDED
    assert isinstance(shared.raw["task_result"]["videos"], list)
    rebuilt = json.loads(json.dumps(SUCCEEDED))  # fresh key strings, as from a decoder
    again = structure_task(rebuilt, TaskKind.VIDEO_EXTEND, share_keys=True)
    assert all(
        key is other
        for key, other in zip(shared.raw["task_info"], again.raw["task_info"], strict=True)
    )
    assert structure_task(SUCCEEDED, TaskKind.VIDEO_EXTEND).raw is SUCCEEDED


def test_an_absurdly_nested_answer_is_a_malformed_task() -> None:
    """A task object nested deeper than the interpreter can walk is a clear transport
    error, not a RecursionError escaping from the watcher."""
    deep: dict[str, Any] = {}
    for _ in range(5000):
        deep = {"d": deep}
    data = {"task_id": "t", "task_status": "processing", "extra": deep}
    with pytest.raises(TransportError, match="task t"):
        structure_task(data, TaskKind.VIDEO_EXTEND, share_keys=True)


def test_a_decoded_task_is_a_task_like_any_other() -> None:
    """The decoder's cheaper construction makes exactly what ``Task(...)`` makes: the same
    class, equal and hashed alike, the same repr, and frozen (its videos too)."""
    task = structure_task(SUCCEEDED, TaskKind.VIDEO_EXTEND)
    built = Task(
        "860500716839079996",
        TaskKind.VIDEO_EXTEND,
        TaskStatus.SUCCEED,
        None,
        datetime(2024, 8, 4, 11, 5, 57, 708000, tzinfo=UTC),
        datetime(2024, 8, 4, 11, 6, 56, 324000, tzinfo=UTC),
        (Video("v-1", "https://cdn.example/v-1.mp4", Decimal("9.8")),),
        SUCCEEDED,
        "mine-1",
    )
    assert type(task) is Task and type(task.videos[0]) is Video
    assert task == built and hash(task) == hash(built) and repr(task) == repr(built)
    assert attrs.astuple(task, recurse=False) == attrs.astuple(built, recurse=False)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        task.status = TaskStatus.FAILED  # type: ignore[misc]
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        task.videos[0].url = "elsewhere"  # type: ignore[misc]
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        del task.id
    assert attrs.evolve(task, id="other").id == "other"


def test_remembered_readings_give_the_same_values_and_stay_bounded() -> None:
    """Timestamps and durations read before are looked up, not read again: equal values,
    and the memory of them never grows past its bound."""
    from kling_async import _wire

    first = structure_task(SUCCEEDED, TaskKind.VIDEO_EXTEND)
    again = structure_task(dict(SUCCEEDED), TaskKind.VIDEO_EXTEND)
    assert again == first and again.created_at is first.created_at
    for n in range(_wire._KEPT + 10):
        moment = {**SUCCEEDED, "created_at": 1722769557708 + n, "updated_at": 1722769557708 + n}
        moment["task_result"] = {"videos": [{"id": "v", "url": "u", "duration": f"{n}.5"}]}
        task = structure_task(moment, TaskKind.VIDEO_EXTEND)
        assert task.created_at == datetime.fromtimestamp((1722769557708 + n) / 1000, tz=UTC)
        assert task.videos[0].duration == Decimal(f"{n}.5")
    assert len(_wire._MOMENTS) <= _wire._KEPT and len(_wire._DURATIONS) <= _wire._KEPT


@pytest.mark.parametrize("raw", [b' {"code": 0} ', b'{"code": 0}\n', b'{"code": 0} x', b"", b"{"])
def test_a_body_with_more_than_one_value_is_read_as_json_loads_reads_it(raw: bytes) -> None:
    """Whitespace around the value is allowed, anything else after it is not JSON."""
    from kling_async._wire import decode_json

    try:
        expected = json.loads(raw)
    except ValueError:
        expected = None
    assert decode_json(raw) == expected
