"""The batch journal: what is recorded comes back, survives a crash, and nothing else is kept."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib
import json
import os
import signal
import sqlite3
import sys
import threading
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from kling_async import (
    AmbiguousSubmissionError,
    ImageToVideoRequest,
    Task,
    TaskFailedError,
    TaskKind,
    TaskStatus,
    TextToVideoRequest,
    Video,
    VideoExtendRequest,
)
from kling_async import _journal_file as journal_file
from kling_async._clock import FakeClock
from kling_async._wire import converter, structure_task
from kling_async.journal import (
    APPLICATION_ID,
    SCHEMA_VERSION,
    EntryState,
    Journal,
    JournalError,
    JournalStore,
    request_key,
)

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[1]
REQUEST = VideoExtendRequest(
    "vid_1", task_id="task_0", prompt="the camera pulls back", external_task_id="ext-1"
)
RAW: dict[str, Any] = {
    "task_id": "t-1",
    "task_status": "succeed",
    "task_status_msg": "",
    "task_info": {"external_task_id": "ext-1"},
    "task_result": {
        "videos": [{"id": "v-9", "url": "https://cdn.example/v-9.mp4", "duration": "9.8"}]
    },
    "created_at": 1722769557708,
    "updated_at": 1722769616324,
    "brand_new_field": {"nested": True},
}


@attrs.define
class Stores:
    """Opens the journal under test: a file, or one namespace of a database. Each `open`
    in a test reaches the same file or namespace."""

    path: Path
    url: str | None = None

    @property
    def where(self) -> str:
        return str(self.path) if self.url is None else "namespace 'ns'"

    @contextlib.asynccontextmanager
    async def open(self, clock: FakeClock | None = None) -> AsyncIterator[JournalStore]:
        if self.url is None:
            async with Journal(self.path, clock=clock) as journal:
                yield journal
            return
        from kling_async.postgres import Coordination

        async with (
            Coordination(self.url, account="acct", clock=clock) as coordination,
            coordination.journal("ns") as shared,
        ):
            yield shared


@pytest.fixture(params=["sqlite", "postgres"])
def stores(request: pytest.FixtureRequest, tmp_path: Path) -> Stores:
    """Each journal test that states a rule of every journal runs on both stores."""
    if request.param == "sqlite":
        return Stores(tmp_path / "j.db")
    return Stores(tmp_path / "j.db", request.getfixturevalue("database_url"))


def task(status: TaskStatus, task_id: str = "t-1", message: str | None = None) -> Task:
    """A hand-made task, as an in-memory task source would make it (empty `raw`)."""
    return Task(task_id, TaskKind.VIDEO_EXTEND, status, status_message=message)


def read_rows(path: Path) -> list[dict[str, Any]]:
    """Every stored row, column by column, read past the Journal class."""
    with sqlite3.connect(path) as db:
        db.row_factory = sqlite3.Row
        rows = [dict(row) for row in db.execute("SELECT * FROM entry ORDER BY seq")]
    db.close()
    return rows


def stored_bytes(path: Path) -> bytes:
    """The journal's bytes on disk, its WAL included."""
    wal = path.with_name(path.name + "-wal")
    return path.read_bytes() + (wal.read_bytes() if wal.exists() else b"")


def make_foreign_db(path: Path) -> None:
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE notes (body TEXT)")
        db.execute("INSERT INTO notes VALUES ('mine')")
    db.close()


def set_user_version(path: Path, version: int) -> None:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute(f"PRAGMA user_version = {version}")
    db.close()


@pytest.mark.parametrize("module", ["kling_async.journal", "kling_async.chain"])
def test_public_names_are_shown_as_their_public_modules(module: str) -> None:
    """Tracebacks, reprs and the docs name the public module, never a private one."""
    public = importlib.import_module(module)
    for name in public.__all__:
        value = getattr(public, name)
        if isinstance(value, type):
            assert value.__module__ == module, name


async def test_new_journal_is_created_empty(tmp_path: Path) -> None:
    """Opening a path that does not exist creates an empty journal there."""
    async with Journal(tmp_path / "j.db") as journal:
        assert await journal.entries() == []
        assert await journal.entry("nope") is None
    assert (tmp_path / "j.db").exists()


async def test_every_state_round_trips(stores: Stores) -> None:
    """Intent, submitted and finished entries come back with request, task and error."""
    clock = FakeClock(start=1_700_000_000.0)
    async with stores.open(clock) as journal:
        await journal.record_intent("k", REQUEST)
        entry = await journal.entry("k")
        assert entry is not None
        assert (entry.state, entry.request, entry.task) == (EntryState.INTENT, REQUEST, None)
        assert entry.updated_at == 1_700_000_000.0

        clock.advance(5)
        await journal.record_task("k", task(TaskStatus.SUBMITTED))
        entry = await journal.entry("k")
        assert entry is not None and entry.state is EntryState.SUBMITTED
        assert entry.task == task(TaskStatus.SUBMITTED) and entry.updated_at == 1_700_000_005.0

        await journal.record_status("k", task(TaskStatus.PROCESSING))
        entry = await journal.entry("k")
        assert entry is not None and entry.state is EntryState.SUBMITTED
        assert entry.task == task(TaskStatus.PROCESSING)

        failed = task(TaskStatus.FAILED, message="content refused")
        await journal.record_outcome("k", failed, TaskFailedError(failed))
        entry = await journal.entry("k")
        assert entry is not None and entry.state is EntryState.FINISHED
        assert entry.task == failed
        assert entry.error_type == "TaskFailedError"
        assert entry.error_message == str(TaskFailedError(failed))


async def test_server_task_keeps_its_raw_object(stores: Stores) -> None:
    """A task read from the server comes back equal, unknown fields and decimals included."""
    received = structure_task(RAW, TaskKind.VIDEO_EXTEND)
    async with stores.open() as journal:
        await journal.record_intent("k", REQUEST)
        await journal.record_outcome("k", received, None)
        entry = await journal.entry("k")
    assert entry is not None and entry.task == received
    assert entry.task.raw == RAW
    assert entry.task.videos[0].duration == Decimal("9.8")
    assert (entry.error_type, entry.error_message) == (None, None)


async def test_hand_made_task_round_trips(stores: Stores) -> None:
    """A task with an empty raw (a fake's) comes back with every modelled field."""
    made = Task(
        "t-2",
        TaskKind.IMAGE_TO_VIDEO,
        TaskStatus.SUCCEED,
        status_message="done",
        created_at=datetime(2024, 8, 4, 11, 5, 57, 708000, tzinfo=UTC),
        updated_at=datetime(2024, 8, 4, 11, 6, 57, tzinfo=UTC),
        videos=(Video("v", "https://cdn.example/v.mp4", Decimal("5.1")), Video("w", "u")),
        external_task_id="ext-2",
    )
    async with stores.open() as journal:
        await journal.record_intent("k", REQUEST)
        await journal.record_task("k", made)
        entry = await journal.entry("k")
    assert entry is not None and entry.task == made


async def test_entries_come_in_first_recorded_order(stores: Stores) -> None:
    """entries() lists keys in the order their intents were recorded, whatever came after."""
    async with stores.open() as journal:
        for key in ("c", "a", "b"):
            await journal.record_intent(key, VideoExtendRequest(f"vid_{key}"))
        await journal.record_task("a", task(TaskStatus.SUBMITTED))
        assert [entry.key for entry in await journal.entries()] == ["c", "a", "b"]


async def test_a_new_journal_object_sees_everything(stores: Stores) -> None:
    """What one Journal recorded, another opened on the same file reads back whole."""
    async with stores.open() as journal:
        await journal.record_intent("i", VideoExtendRequest("vid_i"))
        await journal.record_intent("s", VideoExtendRequest("vid_s"))
        await journal.record_task("s", task(TaskStatus.PROCESSING, "t-s"))
        await journal.record_intent("f", REQUEST)
        await journal.record_outcome("f", None, AmbiguousSubmissionError(REQUEST, "timed out"))
        before = await journal.entries()
    async with stores.open() as reopened:
        after = await reopened.entries()
    assert after == before
    assert [(e.key, e.state) for e in after] == [
        ("i", EntryState.INTENT),
        ("s", EntryState.SUBMITTED),
        ("f", EntryState.FINISHED),
    ]
    assert after[2].error_type == "AmbiguousSubmissionError" and after[2].task is None


async def test_same_key_and_request_again_changes_nothing(stores: Stores) -> None:
    """Re-recording an intent keeps the entry's state and its first external_task_id."""
    async with stores.open() as journal:
        await journal.record_intent("k", REQUEST)
        await journal.record_task("k", task(TaskStatus.SUBMITTED))
        await journal.record_intent("k", attrs.evolve(REQUEST, external_task_id="ext-new"))
        entry = await journal.entry("k")
    assert entry is not None and entry.state is EntryState.SUBMITTED
    assert entry.request.external_task_id == "ext-1"


async def test_same_key_for_another_request_is_refused(stores: Stores) -> None:
    """A key journaled for one request cannot be reused for different API fields."""
    async with stores.open() as journal:
        await journal.record_intent("k", REQUEST)
        with pytest.raises(JournalError, match="Key 'k' was journaled for a different") as info:
            await journal.record_intent("k", attrs.evolve(REQUEST, prompt="zoom in"))
        assert "(different prompt)" in str(info.value) and stores.where in str(info.value)
        entry = await journal.entry("k")
    assert entry is not None and entry.request == REQUEST


async def test_records_for_an_unknown_key_are_refused(stores: Stores) -> None:
    """A task or outcome without an intent first is an engine bug, not silently dropped."""
    async with stores.open() as journal:
        with pytest.raises(JournalError, match="no intent"):
            await journal.record_task("ghost", task(TaskStatus.SUBMITTED))
        with pytest.raises(JournalError, match="no intent"):
            await journal.record_outcome("ghost", None, RuntimeError("x"))


async def test_a_second_task_for_one_key_is_refused(stores: Stores) -> None:
    """A key holds one task: another task id means two paid tasks, which must be seen."""
    async with stores.open() as journal:
        await journal.record_intent("k", REQUEST)
        await journal.record_task("k", task(TaskStatus.SUBMITTED, "t-1"))
        with pytest.raises(JournalError, match="two tasks for one request"):
            await journal.record_task("k", task(TaskStatus.SUBMITTED, "t-2"))
        with pytest.raises(JournalError, match="two tasks for one request"):
            await journal.record_outcome("k", task(TaskStatus.SUCCEED, "t-2"), None)


async def test_a_late_status_does_not_reopen_a_finished_entry(stores: Stores) -> None:
    """A snapshot arriving after the outcome leaves the outcome as it was."""
    async with stores.open() as journal:
        await journal.record_intent("k", REQUEST)
        await journal.record_outcome("k", task(TaskStatus.SUCCEED), None)
        await journal.record_status("k", task(TaskStatus.PROCESSING))
        entry = await journal.entry("k")
    assert entry is not None and entry.state is EntryState.FINISHED
    assert entry.task == task(TaskStatus.SUCCEED)


async def test_an_outcome_without_a_task_keeps_the_known_task(stores: Stores) -> None:
    """An error outcome after the task was known never forgets the task id."""
    async with stores.open() as journal:
        await journal.record_intent("k", REQUEST)
        await journal.record_task("k", task(TaskStatus.PROCESSING))
        await journal.record_outcome("k", None, TimeoutError("gave up watching"))
        entry = await journal.entry("k")
    assert entry is not None and entry.task == task(TaskStatus.PROCESSING)
    assert (entry.error_type, entry.error_message) == ("TimeoutError", "gave up watching")


async def test_forget_removes_an_intent_but_not_a_running_task(stores: Stores) -> None:
    """forget drops an intent (and is a no-op for absent keys); a running task stays."""
    async with stores.open() as journal:
        await journal.record_intent("i", VideoExtendRequest("vid_i"))
        await journal.record_intent("s", VideoExtendRequest("vid_s"))
        await journal.record_task("s", task(TaskStatus.PROCESSING, "t-s"))
        await journal.forget("i")
        await journal.forget("absent")
        with pytest.raises(JournalError, match="running task t-s"):
            await journal.forget("s")
        assert [entry.key for entry in await journal.entries()] == ["s"]


async def test_use_before_open_is_an_error(tmp_path: Path) -> None:
    """A journal that was never opened says so instead of failing obscurely."""
    journal = Journal(tmp_path / "j.db")
    with pytest.raises(JournalError, match="is not open"):
        await journal.record_intent("k", REQUEST)
    assert not (tmp_path / "j.db").exists()


async def test_open_and_close_are_idempotent(tmp_path: Path) -> None:
    """Opening twice keeps one connection; closing twice is harmless."""
    journal = Journal(tmp_path / "j.db")
    assert await journal.open() is journal
    await journal.record_intent("k", REQUEST)
    assert await journal.open() is journal
    assert await journal.entry("k") is not None
    await journal.close()
    await journal.close()


async def test_a_second_run_on_the_same_journal_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While one Journal holds the file, another cannot open it and resubmit its requests."""
    monkeypatch.setattr(journal_file, "_BUSY_TIMEOUT", 0.0)  # refuse at once, not after 1 s
    path = tmp_path / "j.db"
    async with Journal(path):
        with pytest.raises(JournalError, match="in use by another process"):
            await Journal(path).open()
    async with Journal(path) as later:
        assert await later.entries() == []


async def test_foreign_sqlite_database_is_refused_untouched(tmp_path: Path) -> None:
    """Another application's SQLite file is refused, and left exactly as it was."""
    path = tmp_path / "app.db"
    make_foreign_db(path)
    before = path.read_bytes()
    with pytest.raises(JournalError, match="another application") as info:
        await Journal(path).open()
    message = str(info.value)
    assert f"{path} is not a kling_async journal" in message
    assert "move it away or pass another --journal" in message
    assert path.read_bytes() == before


async def test_random_bytes_are_refused(tmp_path: Path) -> None:
    """A file of random bytes is refused with a sentence, not a traceback from sqlite."""
    path = tmp_path / "j.db"
    path.write_bytes(os.urandom(8192))
    with pytest.raises(JournalError, match="not an SQLite database") as info:
        await Journal(path).open()
    assert "move it away or pass another --journal" in str(info.value)


async def test_an_empty_file_is_refused(tmp_path: Path) -> None:
    """An empty file may be a journal truncated to nothing: never started afresh."""
    path = tmp_path / "j.db"
    path.touch()
    with pytest.raises(JournalError, match="the file is empty"):
        await Journal(path).open()


@pytest.mark.parametrize("keep", [0.5, 0.1, 40 / 8192])
async def test_a_truncated_journal_is_refused(tmp_path: Path, keep: float) -> None:
    """A journal cut short is refused at open, not discovered halfway through a run."""
    path = tmp_path / "j.db"
    async with Journal(path) as journal:
        for n in range(60):
            request = VideoExtendRequest(f"vid_{n}", prompt="a long prompt " * 20)
            await journal.record_intent(f"k{n}", request)
            await journal.record_outcome(f"k{n}", structure_task(RAW, TaskKind.VIDEO_EXTEND), None)
    size = path.stat().st_size
    assert size > 8192
    os.truncate(path, int(size * keep))
    with pytest.raises(JournalError, match="is not a kling_async journal") as info:
        await Journal(path).open()
    assert str(path) in str(info.value)


async def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    """A journal written by a newer kling_async is not guessed at."""
    path = tmp_path / "j.db"
    async with Journal(path):
        pass
    set_user_version(path, SCHEMA_VERSION + 1)
    with pytest.raises(JournalError, match="newer kling_async") as info:
        await Journal(path).open()
    assert str(path) in str(info.value) and "upgrade kling_async" in str(info.value)


async def test_a_missing_directory_is_an_error(tmp_path: Path) -> None:
    """A journal path in a directory that does not exist names that directory."""
    path = tmp_path / "nowhere" / "j.db"
    with pytest.raises(JournalError, match="does not exist") as info:
        await Journal(path).open()
    assert str(path.parent) in str(info.value)
    assert not path.parent.exists()


async def test_a_leftover_wal_without_its_journal_is_refused(tmp_path: Path) -> None:
    """A -wal file whose journal was removed is not replayed into a fresh journal."""
    path = tmp_path / "j.db"
    path.with_name("j.db-wal").write_bytes(b"old frames")
    with pytest.raises(JournalError) as caught:
        await Journal(path).open()
    assert caught.value.path == path
    assert str(caught.value) == (
        f"{path}-wal is left from a journal that is gone and may hold recorded tasks; "
        "restore j.db beside it, or move it away."
    )


async def test_journal_is_in_wal_mode_with_its_identity(tmp_path: Path) -> None:
    """The file is in WAL mode and carries the application id and schema version."""
    path = tmp_path / "j.db"
    async with Journal(path) as journal:
        await journal.record_intent("k", REQUEST)
        assert path.with_name("j.db-wal").exists()
    db = sqlite3.connect(path)
    names = ("journal_mode", "application_id", "user_version")
    facts = [db.execute(f"PRAGMA {name}").fetchone()[0] for name in names]
    db.close()
    assert facts == ["wal", APPLICATION_ID, SCHEMA_VERSION]


KILLED_WRITER = """
import os, signal, sys
import anyio
from kling_async import Task, TaskKind, TaskStatus, VideoExtendRequest
from kling_async.journal import Journal

async def main() -> None:
    journal = await Journal(sys.argv[1]).open()
    await journal.record_intent("a", VideoExtendRequest("vid_a"))
    await journal.record_task("a", Task("t-a", TaskKind.VIDEO_EXTEND, TaskStatus.SUBMITTED))
    await journal.record_intent("b", VideoExtendRequest("vid_b"))
    os.kill(os.getpid(), signal.SIGKILL)

anyio.run(main)
"""


async def test_writes_survive_a_killed_process(tmp_path: Path) -> None:
    """Every record committed before a SIGKILL is there when the journal is opened again."""
    path = tmp_path / "j.db"
    result = await anyio.run_process(
        [sys.executable, "-c", KILLED_WRITER, str(path)], check=False, cwd=ROOT
    )
    assert result.returncode == -signal.SIGKILL, result.stderr.decode()
    async with Journal(path) as journal:
        entries = await journal.entries()
    assert [(e.key, e.state) for e in entries] == [
        ("a", EntryState.SUBMITTED),
        ("b", EntryState.INTENT),
    ]
    assert entries[0].task == Task("t-a", TaskKind.VIDEO_EXTEND, TaskStatus.SUBMITTED)


async def test_concurrent_writes_all_land(stores: Stores) -> None:
    """200 requests each recorded four times from their own coroutines: nothing is lost."""

    async def one(journal: JournalStore, n: int) -> None:
        key = f"k{n}"
        await journal.record_intent(key, VideoExtendRequest(f"vid_{n}"))
        await journal.record_task(key, task(TaskStatus.SUBMITTED, f"t{n}"))
        await journal.record_status(key, task(TaskStatus.PROCESSING, f"t{n}"))
        await journal.record_outcome(key, task(TaskStatus.SUCCEED, f"t{n}"), None)

    async with stores.open() as journal, anyio.create_task_group() as group:
        for n in range(200):
            group.start_soon(one, journal, n)
    async with stores.open() as journal:
        entries = {entry.key: entry for entry in await journal.entries()}
    assert len(entries) == 200
    for n in range(200):
        entry = entries[f"k{n}"]
        assert entry.state is EntryState.FINISHED
        assert entry.task == task(TaskStatus.SUCCEED, f"t{n}")
        assert entry.request == VideoExtendRequest(f"vid_{n}")


SECRET = "sk-live-NEVER-STORE-ME"


class LeakyError(Exception):
    """An error that holds a credential beside its message, in its repr and its cause."""

    def __init__(self) -> None:
        self.api_key = SECRET
        super().__init__("the gateway timed out")

    def __repr__(self) -> str:
        return f"LeakyError(api_key={self.api_key!r})"


async def test_only_the_given_fields_are_stored(tmp_path: Path) -> None:
    """Stored are the request, the raw task and the error's class and message, nothing else."""
    path = tmp_path / "j.db"
    received = structure_task(RAW, TaskKind.VIDEO_EXTEND)
    error = LeakyError()
    error.__cause__ = KeyError(SECRET)
    async with Journal(path, clock=FakeClock(start=1_700_000_000.0)) as journal:
        await journal.record_intent("k", REQUEST)
        await journal.record_outcome("k", received, error)
        assert SECRET.encode() not in stored_bytes(path)
    assert SECRET.encode() not in stored_bytes(path)
    assert read_rows(path) == [
        {
            "seq": 1,
            "key": "k",
            "request": json.dumps(converter.unstructure(REQUEST)),
            "state": "finished",
            "task_id": "t-1",
            "task_kind": "videos/video-extend",
            "task_status": "succeed",
            "task_raw": json.dumps(RAW),
            "error_type": "LeakyError",
            "error_message": "the gateway timed out",
            "updated_at": 1_700_000_000.0,
        }
    ]


# --- request_key -----------------------------------------------------------------------------


def test_explicit_key_wins() -> None:
    """A request's own key is its journal key, whatever its fields."""
    assert request_key(attrs.evolve(REQUEST, key="clip-7")) == "clip-7"


def test_digest_is_pinned() -> None:
    """The digest is sha256 of the canonical JSON: changing it would orphan old journals."""
    request = VideoExtendRequest("v1", prompt="hi", cfg_scale=1, external_task_id="e")
    canonical = b'{"cfg_scale":1.0,"prompt":"hi","video_id":"v1"}'
    assert request_key(request) == "sha256:" + hashlib.sha256(canonical).hexdigest()


def test_digest_ignores_external_id_and_key_but_not_content() -> None:
    """The client-assigned external id never changes the key; any API field does."""
    base = request_key(VideoExtendRequest("v1", prompt="hi"))
    assert request_key(VideoExtendRequest("v1", prompt="hi", external_task_id="x")) == base
    assert request_key(VideoExtendRequest("v1", prompt="hi", cfg_scale=0.5)) != base
    assert request_key(VideoExtendRequest("v1", prompt="ho")) != base
    assert request_key(VideoExtendRequest("v2", prompt="hi")) != base


OPTIONAL_TEXT = st.none() | st.text(max_size=30)
REQUESTS = st.builds(
    VideoExtendRequest,
    video_id=st.text(min_size=1, max_size=30),
    task_id=OPTIONAL_TEXT,
    prompt=OPTIONAL_TEXT,
    negative_prompt=OPTIONAL_TEXT,
    cfg_scale=st.none() | st.floats(min_value=0, max_value=1),
    callback_url=OPTIONAL_TEXT,
    external_task_id=OPTIONAL_TEXT,
)


@given(request=REQUESTS, other_external_id=OPTIONAL_TEXT, order=st.randoms())
def test_digest_is_stable(
    request: VideoExtendRequest, other_external_id: str | None, order: Any
) -> None:
    """Field order, the external id and a trip through the journal's JSON keep the key."""
    key = request_key(request)
    assert key.startswith("sha256:") and len(key) == len("sha256:") + 64
    fields = list(attrs.asdict(request).items())
    order.shuffle(fields)
    assert request_key(VideoExtendRequest(**dict(fields))) == key
    assert request_key(attrs.evolve(request, external_task_id=other_external_id)) == key
    stored = json.loads(json.dumps(converter.unstructure(request)))
    assert request_key(converter.structure(stored, VideoExtendRequest)) == key


async def test_reopen_lets_a_finished_entry_record_again(stores: Stores) -> None:
    """A finished entry without a task, reopened, records the task found on resume."""
    async with stores.open() as journal:
        request = VideoExtendRequest("v1", external_task_id="ext-1")
        await journal.record_intent("k", request)
        await journal.record_outcome("k", None, RuntimeError("answer lost"))
        await journal.reopen("k")
        entry = await journal.entry("k")
        assert entry is not None
        assert entry.state is EntryState.INTENT
        assert entry.error_type is None
        task = Task("t-1", TaskKind.VIDEO_EXTEND, TaskStatus.PROCESSING)
        await journal.record_task("k", task)
        entry = await journal.entry("k")
    assert entry is not None
    assert entry.state is EntryState.SUBMITTED
    assert entry.task is not None
    assert entry.task.id == "t-1"


async def test_a_reopened_entry_with_a_task_cannot_be_forgotten(tmp_path: Path) -> None:
    """Reopening a finished entry whose task is known makes it SUBMITTED: forget refuses it."""
    async with Journal(tmp_path / "j") as journal:
        await journal.record_intent("k", REQUEST)
        await journal.record_task("k", task(TaskStatus.PROCESSING))
        await journal.record_outcome("k", None, TimeoutError("gave up watching"))
        await journal.reopen("k")
        entry = await journal.entry("k")
        assert entry is not None and entry.state is EntryState.SUBMITTED
        assert (entry.error_type, entry.error_message) == (None, None)
        with pytest.raises(JournalError, match="running task t-1"):
            await journal.forget("k")
        assert await journal.entry("k") is not None


async def test_an_outcome_without_a_task_keeps_the_task_id_for_every_check(
    tmp_path: Path,
) -> None:
    """After an error outcome with no task, the known id still guards against a second task."""
    async with Journal(tmp_path / "j") as journal:
        await journal.record_intent("k", REQUEST)
        await journal.record_task("k", task(TaskStatus.PROCESSING))
        await journal.record_outcome("k", None, TimeoutError("gave up watching"))
        await journal.reopen("k")
        with pytest.raises(JournalError, match=r"journaled with task t-1 .* not t-2"):
            await journal.record_task("k", task(TaskStatus.SUBMITTED, "t-2"))
        await journal.record_outcome("k", task(TaskStatus.SUCCEED), None)
    rows = read_rows(tmp_path / "j")
    assert [(row["state"], row["task_id"], row["task_status"]) for row in rows] == [
        ("finished", "t-1", "succeed")
    ]


async def test_an_outcome_for_another_task_is_refused(tmp_path: Path) -> None:
    """A final snapshot of a different task than the one journaled is two tasks: refused."""
    async with Journal(tmp_path / "j") as journal:
        await journal.record_intent("k", REQUEST)
        await journal.record_task("k", task(TaskStatus.PROCESSING))
        with pytest.raises(JournalError) as caught:
            await journal.record_outcome("k", task(TaskStatus.SUCCEED, "t-9"), None)
        assert caught.value.path == tmp_path / "j"
        assert str(caught.value) == (
            f"Key 'k' is journaled with task t-1 in {tmp_path / 'j'}, not t-9: two tasks for "
            "one request. Check both tasks before running again."
        )
        with pytest.raises(JournalError, match="Key 'absent' has no intent"):
            await journal.record_outcome("absent", None, RuntimeError("x"))
        entry = await journal.entry("k")
    assert entry is not None and entry.state is EntryState.SUBMITTED


async def test_reopening_an_unfinished_or_absent_entry_changes_nothing(tmp_path: Path) -> None:
    """reopen only acts on FINISHED entries: a running one keeps its state and error fields."""
    clock = FakeClock()
    async with Journal(tmp_path / "j", clock=clock) as journal:
        await journal.record_intent("k", REQUEST)
        before = await journal.entry("k")
        clock.advance(60)
        await journal.reopen("k")
        await journal.reopen("absent")
        assert await journal.entry("k") == before
        assert await journal.entry("absent") is None


async def test_a_journal_without_a_schema_version_is_refused(tmp_path: Path) -> None:
    """A file with the journal's identity but no schema (a half-made one) is not started afresh."""
    path = tmp_path / "j.db"
    db = sqlite3.connect(path, isolation_level=None)
    db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
    db.execute("CREATE TABLE entry (key TEXT)")
    db.close()
    with pytest.raises(JournalError, match="no schema version"):
        await Journal(path).open()


async def test_a_damaged_journal_is_refused_at_open(tmp_path: Path) -> None:
    """A page scribbled over is found when the journal opens, not halfway through a run."""
    path = tmp_path / "j.db"
    async with Journal(path, clock=FakeClock()) as journal:  # the same bytes every run
        for n in range(200):
            await journal.record_intent(f"k{n}", VideoExtendRequest(f"v{n}", prompt="x" * 100))
    with sqlite3.connect(path) as db:
        page = db.execute("PRAGMA page_size").fetchone()[0]
    db.close()
    data = bytearray(path.read_bytes())
    data[page * 3 + 8 : page * 3 + 72] = b"\xff" * 64  # the cell pointers of a table page
    path.write_bytes(bytes(data))
    with pytest.raises(
        JournalError, match=r"is not a kling_async journal \(it is damaged: "
    ) as caught:
        await Journal(path).open()
    assert caught.value.path == path


# --- Every refusal names the journal, says what is wrong and what to do ----------------------

MOVE_AWAY = "move it away or pass another --journal."


def _no_schema(path: Path) -> None:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
    db.close()


def _newer(path: Path) -> None:
    journal_file.connect(path).close()
    set_user_version(path, SCHEMA_VERSION + 1)


REFUSALS: list[tuple[str, Any, str]] = [
    ("empty", Path.touch, "{path} is not a kling_async journal (the file is empty); " + MOVE_AWAY),
    (
        "bytes",
        lambda path: path.write_bytes(b"x" * 100),
        "{path} is not a kling_async journal (not an SQLite database); " + MOVE_AWAY,
    ),
    (
        "foreign",
        make_foreign_db,
        "{path} is not a kling_async journal (an SQLite database of another application); "
        + MOVE_AWAY,
    ),
    (
        "schema-less",
        _no_schema,
        "{path} is not a kling_async journal (it has no schema version); " + MOVE_AWAY,
    ),
    (
        "newer",
        _newer,
        "The journal {path} was written by a newer kling_async (journal schema 2; this version "
        "reads up to 1); upgrade kling_async to resume it, or pass another --journal.",
    ),
    (
        "a folder",
        Path.mkdir,
        "The journal {path} could not be opened (Is a directory); " + MOVE_AWAY,
    ),
]


@pytest.mark.parametrize(("kind", "make", "says"), REFUSALS, ids=[r[0] for r in REFUSALS])
async def test_a_refused_file_is_named_with_what_to_do(
    tmp_path: Path, kind: str, make: Any, says: str
) -> None:
    """Each refusal at open carries the path and says, in full, what is wrong and what to do."""
    path = tmp_path / "j.db"
    make(path)
    with pytest.raises(JournalError) as caught:
        await Journal(path).open()
    assert caught.value.path == path
    assert str(caught.value) == says.format(path=path)


async def test_misuse_is_refused_with_the_path_and_the_remedy(tmp_path: Path) -> None:
    """Records out of order, or for a journal not open, say what must come first."""
    path = tmp_path / "j.db"
    with pytest.raises(JournalError) as caught:
        await Journal(path).entries()
    assert caught.value.path == path
    assert str(caught.value) == (
        f"The journal {path} is not open; use `async with Journal(...)` or await open() first."
    )
    missing = tmp_path / "nowhere" / "j.db"
    with pytest.raises(JournalError) as caught:
        await Journal(missing).open()
    assert caught.value.path == missing
    assert str(caught.value) == (
        f"The journal {missing} cannot be created: its directory {missing.parent} does not "
        "exist; create it or pass another --journal."
    )
    async with Journal(path) as journal:
        with pytest.raises(JournalError) as caught:
            await journal.record_task("k", task(TaskStatus.SUBMITTED))
        assert caught.value.path == path
        assert str(caught.value) == (
            f"Key 'k' has no intent in the journal {path}; record_intent must come first."
        )
        await journal.record_intent("k", REQUEST)
        await journal.record_task("k", task(TaskStatus.SUBMITTED))
        with pytest.raises(JournalError) as caught:
            await journal.record_task("k", task(TaskStatus.SUBMITTED, "t-2"))
        assert caught.value.path == path
        assert str(caught.value) == (
            f"Key 'k' is journaled with task t-1 in {path}, not t-2: two tasks for one request. "
            "Check both tasks before running again."
        )
        with pytest.raises(JournalError) as caught:
            await journal.forget("k")
        assert caught.value.path == path
        assert str(caught.value) == (
            f"Key 'k' has a running task t-1 in the journal {path}; "
            "record its outcome before forgetting it."
        )
        with pytest.raises(JournalError) as caught:
            await journal.record_intent("k", attrs.evolve(REQUEST, prompt=None, cfg_scale=0.5))
        assert caught.value.path == path
        assert str(caught.value) == (
            f"Key 'k' was journaled for a different request in {path} (different cfg_scale, "
            "prompt); give each request its own key, or start a new journal."
        )


async def test_a_second_run_is_told_the_journal_is_in_use(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The refusal of a second run quotes SQLite's reason and says to let the first finish."""
    monkeypatch.setattr(journal_file, "_BUSY_TIMEOUT", 0.0)
    path = tmp_path / "j.db"
    async with Journal(path):
        with pytest.raises(JournalError) as caught:
            await Journal(path).open()
    assert caught.value.path == path
    assert str(caught.value) == (
        f"The journal {path} is in use by another process (database is locked); "
        "let that run finish, or pass another --journal."
    )


async def test_an_unreadable_entry_is_named(tmp_path: Path) -> None:
    """An entry whose stored request or task cannot be read names its key and the journal."""
    path = tmp_path / "j.db"
    async with Journal(path) as journal:
        await journal.record_intent("bad-request", REQUEST)
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("UPDATE entry SET request = 'not json' WHERE key = 'bad-request'")
    db.close()
    async with Journal(path) as journal:
        with pytest.raises(JournalError) as caught:
            await journal.entries()
        assert caught.value.path == path
        assert str(caught.value).startswith(
            f"{path} is not a kling_async journal (a request cannot be read: "
        )
        with pytest.raises(JournalError) as caught:  # compared with the request sent again
            await journal.record_intent("bad-request", REQUEST)
        assert caught.value.path == path
        assert str(caught.value).startswith(
            f"{path} is not a kling_async journal (a request cannot be read: "
        )
        await journal.forget("bad-request")
        await journal.record_intent("bad-task", REQUEST)
        await journal.record_task("bad-task", task(TaskStatus.SUBMITTED))
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("UPDATE entry SET task_kind = 'videos/no-such-kind' WHERE key = 'bad-task'")
    db.close()
    async with Journal(path) as journal:
        with pytest.raises(JournalError) as caught:
            await journal.entry("bad-task")
    assert caught.value.path == path
    assert str(caught.value).startswith(
        f"{path} is not a kling_async journal (its entry 'bad-task' cannot be read: "
    )
    assert str(caught.value).endswith("; move it away or pass another --journal.")


async def test_closing_is_finished_even_when_cancelled(tmp_path: Path) -> None:
    """A close cut short by cancellation still lets the file go for the next run."""
    path = tmp_path / "j.db"
    journal = await Journal(path).open()
    with anyio.CancelScope() as scope:
        scope.cancel()
        await journal.close()
    with pytest.raises(JournalError, match="is not open"):
        await journal.entries()
    async with Journal(path) as later:
        assert await later.entries() == []


async def test_a_journal_is_made_where_hard_links_are_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a filesystem without hard links the new journal is moved into place instead."""

    def no_links(source: object, target: object) -> None:
        raise OSError("hard links are not supported here")

    monkeypatch.setattr(journal_file.os, "link", no_links)
    path = tmp_path / "j.db"
    async with Journal(path) as journal:
        await journal.record_intent("k", REQUEST)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["j.db"]
    async with Journal(path) as journal:
        assert [entry.key for entry in await journal.entries()] == ["k"]


async def test_a_hand_made_task_is_stored_with_only_what_it_has(tmp_path: Path) -> None:
    """No empty result or info objects, no nulls; a video without a duration comes back so;
    values JSON cannot hold are stored as text."""
    path = tmp_path / "j.db"
    bare = Task("t-1", TaskKind.VIDEO_EXTEND, TaskStatus.SUBMITTED, raw={"cost": Decimal("1.5")})
    video = Video("v-1", "https://cdn.example/v-1.mp4", None)
    done = Task("t-1", TaskKind.VIDEO_EXTEND, TaskStatus.SUCCEED, videos=(video,))
    async with Journal(path, clock=FakeClock()) as journal:
        await journal.record_intent("k", REQUEST)
        await journal.record_task("k", bare)
        stored = json.loads(read_rows_open(journal)["task_raw"])
        await journal.record_outcome("k", done, None)
        entry = await journal.entry("k")
    assert stored == {"cost": "1.5", "task_id": "t-1", "task_status": "submitted"}
    assert entry is not None and entry.task is not None
    assert entry.task.videos == (video,)


def read_rows_open(journal: Journal) -> dict[str, Any]:
    """The one row of an open journal, read through its own connection."""
    assert journal._db is not None
    cursor = journal._db.execute("SELECT * FROM entry")
    names = [column[0] for column in cursor.description]
    return dict(zip(names, cursor.fetchone(), strict=True))


SUBMITTABLE = [
    VideoExtendRequest("vid-1", task_id="t-0", prompt="on", key="extend"),
    TextToVideoRequest("a fox in the snow", duration=5, key="text"),
    ImageToVideoRequest("https://cdn.example/fox.png", prompt="runs", key="image"),
]


@pytest.mark.parametrize("request_", SUBMITTABLE, ids=[r.key for r in SUBMITTABLE])
async def test_every_kind_of_request_comes_back_as_journaled(tmp_path: Path, request_: Any) -> None:
    """A new-video request is read back as the kind it was, not taken for an extension."""
    path = tmp_path / "j.db"
    async with Journal(path) as journal:
        await journal.record_intent(request_.key, request_)
    async with Journal(path) as journal:
        entry = await journal.entry(request_.key)
        await journal.record_intent(request_.key, request_)  # the same request: accepted
    assert entry is not None
    assert type(entry.request) is type(request_) and entry.request == request_


async def test_a_full_disk_is_told_to_check_free_space(tmp_path: Path) -> None:
    """A write the disk has no room for names the journal and says what to check."""
    path = tmp_path / "j.db"
    async with Journal(path) as journal:
        await journal.record_intent("k", REQUEST)
        assert journal._db is not None
        journal._db.execute("PRAGMA max_page_count = 2")  # as full as a disk can be
        with pytest.raises(JournalError) as caught:
            await journal.record_intent("big", attrs.evolve(REQUEST, prompt="x" * 10_000))
    assert caught.value.path == path
    assert str(caught.value) == (
        f"The journal {path} could not be read or written (database or disk is full); check "
        "free disk space and that the file is readable and writable, then run again."
    )


async def test_a_journal_whose_files_cannot_be_opened_says_what_to_check(tmp_path: Path) -> None:
    """When SQLite cannot open the journal's files, the refusal names it and the remedy."""
    path = tmp_path / "j.db"
    async with Journal(path) as journal:
        await journal.record_intent("k", REQUEST)
    path.with_name("j.db-wal").mkdir()  # where SQLite keeps its write-ahead log
    with pytest.raises(JournalError) as caught:
        await Journal(path).open()
    assert caught.value.path == path
    assert str(caught.value) == (
        f"The journal {path} could not be opened (unable to open database file); check free "
        "disk space and that the file is readable and writable, then run again."
    )


async def test_a_file_journal_holds_every_key_itself(tmp_path: Path) -> None:
    """One process holds a file journal: a claim keeps what is known, and a key is released
    at once, as its entry stands."""
    async with Journal(tmp_path / "j.db") as journal:
        await journal.record_intent("k", REQUEST)
        known = await journal.entry("k")
        assert await journal.claim("k", known) is known
        assert await journal.released("k") == known
        assert await journal.released("absent") is None
        await journal.hold()  # nothing to renew: returns at once


async def test_a_new_journal_is_built_beside_its_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The new file is made in the journal's own folder, so putting it in place never crosses
    filesystems (where neither a link nor a rename works), wherever the system keeps its
    temporary files."""
    real_link, real_replace = os.link, os.replace

    def same_folder_only(move: Any) -> Any:
        def moved(source: Any, target: Any) -> None:
            if Path(source).parent != Path(target).parent:
                raise OSError(18, "Invalid cross-device link")  # as from another filesystem
            move(source, target)

        return moved

    elsewhere = tmp_path / "system-temporary"
    elsewhere.mkdir()
    monkeypatch.setattr(journal_file.tempfile, "tempdir", str(elsewhere))
    monkeypatch.setattr(journal_file.os, "link", same_folder_only(real_link))
    monkeypatch.setattr(journal_file.os, "replace", same_folder_only(real_replace))
    folder = tmp_path / "runs"
    folder.mkdir()
    async with Journal(folder / "j.db") as journal:
        await journal.record_intent("k", REQUEST)
    assert sorted(p.name for p in folder.iterdir()) == ["j.db"]
    assert list(elsewhere.iterdir()) == []


async def test_the_journal_serves_whichever_worker_thread_is_free(tmp_path: Path) -> None:
    """Other work holding a worker thread (a download writing its file) does not stop the
    journal: its connection is used from any thread, one statement at a time."""
    release = threading.Event()
    async with Journal(tmp_path / "j.db") as journal, anyio.create_task_group() as group:
        # Takes the idle thread that opened the journal: the next statement gets another.
        group.start_soon(functools.partial(anyio.to_thread.run_sync, release.wait))
        await anyio.wait_all_tasks_blocked()
        try:
            await journal.record_intent("k", REQUEST)
            assert [entry.key for entry in await journal.entries()] == ["k"]
        finally:
            release.set()


async def test_a_file_journal_shares_no_window(tmp_path: Path) -> None:
    """A 1303 under a file journal narrows only its batch's own window: nothing is shared."""
    async with Journal(tmp_path / "j.db") as journal:
        assert await journal.narrow("k") is False
