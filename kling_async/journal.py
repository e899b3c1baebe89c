"""The batch journal: a durable record of each submission, so a crash never costs a task.

A paid create request is journaled before it is sent (the *intent*), its task id as soon as
it is known, each status change, and the final outcome. A re-run over the same journal
replays finished requests, watches submitted ones again, and reconciles intents without a
task id instead of paying for them twice.

The journal is one SQLite file in WAL mode, used through one connection per `Journal` on a
worker thread (`anyio.to_thread`), so the event loop never waits on the disk. Every
``record_*`` is one small statement committed before it returns.

It stores the request's fields, the task object as the server sent it and the outcome's
error class and message: never a credential (none of these hold one).
"""

from __future__ import annotations

import enum
import hashlib
import json
import os
import sqlite3
import tempfile
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, Self, TypeVar

import anyio
import anyio.to_thread
import attrs
import cattrs

from ._clock import Clock, SystemClock
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
    kind_of,
)

__all__ = [
    "ClaimedElsewhereError",
    "EntryState",
    "Journal",
    "JournalEntry",
    "JournalError",
    "JournalStore",
    "request_key",
]

#: "KLNG", written into the SQLite header: tells a journal from any other SQLite file.
APPLICATION_ID = 0x4B4C4E47
#: Raised on any change of `_SCHEMA`; a journal from a newer version is refused, not guessed at.
SCHEMA_VERSION = 1

_SQLITE_MAGIC = b"SQLite format 3\x00"
# Only another process can hold the lock (see `_prepare`), and it holds it for a whole run:
# waiting longer than a moment would not help.
_BUSY_TIMEOUT = 1.0
# The client assigns `external_task_id` itself, so it must not change the request's identity;
# `key` is the identity when given.
_NOT_IDENTITY = frozenset({"key", "external_task_id"})

_SCHEMA = f"""
PRAGMA application_id = {APPLICATION_ID};
PRAGMA user_version = {SCHEMA_VERSION};
CREATE TABLE entry (
    seq INTEGER PRIMARY KEY,
    key TEXT NOT NULL UNIQUE,
    request TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('intent', 'submitted', 'finished')),
    task_id TEXT,
    task_kind TEXT,
    task_status TEXT,
    task_raw TEXT,
    error_type TEXT,
    error_message TEXT,
    updated_at REAL NOT NULL
) STRICT;
"""
_SELECT = (
    "SELECT key, request, state, task_raw, task_kind, error_type, error_message, updated_at "
    "FROM entry"
)
_MOVE_AWAY = "move it away or pass another --journal"

T = TypeVar("T")
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


class JournalStore(Protocol):
    """What a batch needs of a journal: the SQLite `Journal`, or a shared one on a database.

    The `record_*`, `reopen` and `forget` methods keep `Journal`'s rules. A shared journal
    adds `claim` (take a key for this process, `ClaimedElsewhereError` when another live process
    holds it), `hold` (renew this process's leases until cancelled) and `released` (wait
    until another process's work on a key has ended or its lease expired).
    """

    async def open(self) -> Any: ...

    async def close(self) -> None: ...

    async def entry(self, key: str) -> JournalEntry | None: ...

    async def entries(self) -> list[JournalEntry]: ...

    async def claim(self, key: str, known: JournalEntry | None) -> JournalEntry | None:
        """Take `key` for this process; the entry as it now stands (`known` when unshared)."""
        ...

    async def hold(self) -> None:
        """Keep this process's claims alive until cancelled (returns at once when unshared)."""
        ...

    async def released(self, key: str) -> JournalEntry | None:
        """Wait until no live process holds `key`; its entry then."""
        ...

    async def record_intent(self, key: str, request: CreateRequest) -> None: ...

    async def narrow(self, key: str) -> bool:
        """`key`'s create was refused over the account's parallel limit (1303): a shared
        journal halves the account's window and answers True (False when unshared)."""
        ...

    async def record_task(self, key: str, task: Task) -> None: ...

    async def record_status(self, key: str, task: Task) -> None: ...

    async def record_outcome(
        self, key: str, task: Task | None, error: BaseException | None
    ) -> None: ...

    async def reopen(self, key: str) -> None: ...

    async def forget(self, key: str) -> None: ...


def request_key(request: CreateRequest) -> str:
    """The name a request is journaled under: `request.key`, else a digest of its API fields.

    The digest is ``sha256:`` + the hex SHA-256 of the canonical JSON of the fields that are
    set (sorted keys, numbers as floats), leaving out `key` and `external_task_id`. It is part
    of the journal's format: changing it would orphan every existing journal.

    >>> request_key(VideoExtendRequest("v1", key="clip-7"))
    'clip-7'
    >>> request_key(VideoExtendRequest("v1", prompt="hi"))[:7]
    'sha256:'
    """
    if request.key is not None:
        return request.key
    digest = hashlib.sha256(_canonical_json(request).encode()).hexdigest()
    return f"sha256:{digest}"


class Journal:
    """Durable record of a batch (SQLite in WAL mode by default).

    Nothing is opened until `open` (or ``async with``). One run holds a journal at a time:
    a second process opening it gets a `JournalError` instead of submitting the same
    requests again.

    >>> async with Journal("batch.journal") as journal:  # doctest: +SKIP
    ...     await journal.record_intent(request_key(request), request)
    ...     finished = [e for e in await journal.entries() if e.state is EntryState.FINISHED]
    """

    def __init__(self, path: str | os.PathLike[str], *, clock: Clock | None = None) -> None:
        self.path = Path(path)
        self._clock = clock or SystemClock()
        self._db: sqlite3.Connection | None = None
        # One connection serves every coroutine: a statement (and its commit) must not
        # interleave with another's.
        self._lock = anyio.Lock()

    async def open(self) -> Self:
        """Create the journal, or open and check an existing one; idempotent."""
        async with self._lock:
            if self._db is None:
                try:
                    self._db = await anyio.to_thread.run_sync(_connect, self.path)
                except sqlite3.Error as exc:
                    raise _explain(self.path, exc, "opened") from exc
                except OSError as exc:
                    raise JournalError(
                        self.path,
                        f"The journal {self.path} could not be opened "
                        f"({exc.strerror or exc}); {_MOVE_AWAY}.",
                    ) from exc
        return self

    async def close(self) -> None:
        """Close the journal (everything recorded is already on disk); idempotent."""
        with anyio.CancelScope(shield=True):
            async with self._lock:
                db, self._db = self._db, None
                if db is not None:
                    await anyio.to_thread.run_sync(db.close)

    async def __aenter__(self) -> Self:
        return await self.open()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def entry(self, key: str) -> JournalEntry | None:
        """The entry journaled under `key`, or None."""
        row = await self._run(_select_one, key)
        return None if row is None else self._entry(row)

    async def entries(self) -> list[JournalEntry]:
        """Every entry, in the order first recorded."""
        return [self._entry(row) for row in await self._run(_select_all)]

    async def claim(self, key: str, known: JournalEntry | None) -> JournalEntry | None:
        """`known`: the file's lock makes every key this process's own."""
        return known

    async def hold(self) -> None:
        """Nothing to renew: the file's lock lasts as long as the journal is open."""

    async def released(self, key: str) -> JournalEntry | None:
        """No other process holds a key of an open journal."""
        return await self.entry(key)

    async def narrow(self, key: str) -> bool:
        """Nothing to share: the batch's own window halves (see `ConcurrencyWindow`)."""
        return False

    async def record_intent(self, key: str, request: CreateRequest) -> None:
        """Journal `request` under `key` before it is sent; committed when this returns.

        Recording the same key again for the same API fields changes nothing (the entry keeps
        its state and its first `external_task_id`); for different fields it is refused.
        """
        existing = await self._run(_insert_intent, key, stored_request(request), self._clock.time())
        if existing is not None:
            check_same_request(self.path, key, existing, request)

    async def record_task(self, key: str, task: Task) -> None:
        """Journal the task created for `key`: its state becomes SUBMITTED."""
        await self._record_snapshot(key, task)

    async def record_status(self, key: str, task: Task) -> None:
        """Journal a new snapshot of `key`'s task (as `record_task` does).

        A FINISHED entry is left as it is: a snapshot arriving after the outcome is stale.
        """
        await self._record_snapshot(key, task)

    async def record_outcome(
        self, key: str, task: Task | None, error: BaseException | None
    ) -> None:
        """Journal how `key` ended: its state becomes FINISHED.

        `error` is kept as its class name and message. When `task` is None the task recorded
        earlier, if any, is kept: a known task id is never forgotten.
        """
        snapshot = task_snapshot(task) if task is not None else (None, None, None, None)
        error_type, message = error_fields(error)
        found = await self._run(
            _update_outcome, key, snapshot, error_type, message, self._clock.time()
        )
        check_update(self.path, key, found, task)

    async def reopen(self, key: str) -> None:
        """Take a FINISHED entry back to INTENT (no task yet) or SUBMITTED (a task known), in
        one step, so a resumed request's new snapshots are recorded. Absent keys are fine."""
        await self._run(_reopen, key, self._clock.time())

    async def forget(self, key: str) -> None:
        """Remove `key`'s entry, for a create that surely made nothing; absent keys are fine.

        An entry whose task is still running (SUBMITTED) is refused: forgetting it would lose
        a paid task.
        """
        running = await self._run(_delete, key)
        if running is not None:
            raise still_running(self.path, key, running)

    async def _record_snapshot(self, key: str, task: Task) -> None:
        found = await self._run(_update_snapshot, key, task_snapshot(task), self._clock.time())
        check_update(self.path, key, found, task)

    async def _run(self, operation: Callable[..., T], *args: Any) -> T:
        async with self._lock:
            if self._db is None:
                raise JournalError(
                    self.path,
                    f"The journal {self.path} is not open; use `async with Journal(...)` "
                    "or await open() first.",
                )
            try:
                return await anyio.to_thread.run_sync(operation, self._db, *args)
            except sqlite3.Error as exc:
                raise _explain(self.path, exc, "read or written") from exc

    def _entry(self, row: Row) -> JournalEntry:
        return entry_from_row(self.path, row)


# --- What is stored (shared by every journal store) ------------------------------------------


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
        raise _not_a_journal(where, f"its entry {key!r} cannot be read: {exc}") from exc


def stored_request(request: CreateRequest) -> str:
    """The request as a journal stores it."""
    return json.dumps(_stored_fields(request))


def check_same_request(where: Path | str, key: str, stored: str, request: CreateRequest) -> None:
    """Refuse `request` under `key` when the request `stored` there has other API fields."""
    earlier = _structure_request(where, stored)
    if _canonical_json(earlier) != _canonical_json(request):
        raise JournalError(
            where,
            f"Key {key!r} was journaled for a different request in {where} "
            f"(different {', '.join(_differing_fields(earlier, request))}); give each "
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


# A request of another kind than video-extend carries its kind under this name, so an
# extension's stored form (and digest) stays what it was before other kinds existed.
_KIND_FIELD = "task_kind"
_REQUEST_CLASSES: Mapping[TaskKind, type[CreateRequest]] = {
    TaskKind.VIDEO_EXTEND: VideoExtendRequest,
    TaskKind.TEXT_TO_VIDEO: TextToVideoRequest,
    TaskKind.IMAGE_TO_VIDEO: ImageToVideoRequest,
}


def _stored_fields(request: CreateRequest) -> dict[str, Any]:
    fields: dict[str, Any] = converter.unstructure(request)
    kind = kind_of(request)
    return fields if kind is TaskKind.VIDEO_EXTEND else {**fields, _KIND_FIELD: kind.value}


def _api_fields(request: CreateRequest) -> dict[str, Any]:
    fields = _stored_fields(request)
    return {
        name: _canonical_value(value)
        for name, value in fields.items()
        if value is not None and name not in _NOT_IDENTITY
    }


def _canonical_value(value: Any) -> Any:
    # cfg_scale=1 and cfg_scale=1.0 are the same request to the API.
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return value


def _canonical_json(request: CreateRequest) -> str:
    # ASCII escapes (json's default) make any text encodable, even a lone surrogate that a
    # JSONL file's "\ud800" decodes to.
    return json.dumps(_api_fields(request), sort_keys=True, separators=(",", ":"))


def _differing_fields(one: CreateRequest, other: CreateRequest) -> list[str]:
    a, b = _api_fields(one), _api_fields(other)
    return sorted(name for name in a.keys() | b.keys() if a.get(name) != b.get(name))


def _structure_request(path: Path | str, stored: str) -> CreateRequest:
    try:
        fields = json.loads(stored)
        kind = TaskKind(fields.pop(_KIND_FIELD, TaskKind.VIDEO_EXTEND.value))
        return converter.structure(fields, _REQUEST_CLASSES[kind])
    except (ValueError, KeyError, AttributeError, cattrs.BaseValidationError) as exc:
        raise _not_a_journal(path, f"a request cannot be read: {exc}") from exc


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


# --- Statements (run on a worker thread, one at a time) -------------------------------------


def _select_one(db: sqlite3.Connection, key: str) -> Row | None:
    row: Row | None = db.execute(f"{_SELECT} WHERE key = ?", (key,)).fetchone()
    return row


def _select_all(db: sqlite3.Connection) -> list[Row]:
    return db.execute(f"{_SELECT} ORDER BY seq").fetchall()


def _insert_intent(db: sqlite3.Connection, key: str, request: str, now: float) -> str | None:
    """Insert the intent; the request journaled earlier under `key` when there was one."""
    inserted = db.execute(
        "INSERT INTO entry (key, request, state, updated_at) VALUES (?, ?, 'intent', ?) "
        "ON CONFLICT (key) DO NOTHING",
        (key, request, now),
    )
    if inserted.rowcount:
        return None
    row = db.execute("SELECT request FROM entry WHERE key = ?", (key,)).fetchone()
    return str(row[0])


def _update_snapshot(
    db: sqlite3.Connection, key: str, snapshot: tuple[str, str, str, str], now: float
) -> Row | None:
    """Store the snapshot; None when it was stored, else what stopped it (see `_found`)."""
    task_id, kind, status, raw = snapshot
    updated = db.execute(
        "UPDATE entry SET state = 'submitted', task_id = ?, task_kind = ?, task_status = ?, "
        "task_raw = ?, updated_at = ? "
        "WHERE key = ? AND state != 'finished' AND (task_id IS NULL OR task_id = ?)",
        (task_id, kind, status, raw, now, key, task_id),
    )
    return None if updated.rowcount else _found(db, key)


def _update_outcome(
    db: sqlite3.Connection,
    key: str,
    snapshot: tuple[str | None, str | None, str | None, str | None],
    error_type: str | None,
    error_message: str | None,
    now: float,
) -> Row | None:
    """Store the outcome; None when it was stored, else what stopped it (see `_found`)."""
    task_id, kind, status, raw = snapshot
    updated = db.execute(
        "UPDATE entry SET state = 'finished', task_id = coalesce(?, task_id), "
        "task_kind = coalesce(?, task_kind), task_status = coalesce(?, task_status), "
        "task_raw = coalesce(?, task_raw), error_type = ?, error_message = ?, updated_at = ? "
        "WHERE key = ? AND (? IS NULL OR task_id IS NULL OR task_id = ?)",
        (task_id, kind, status, raw, error_type, error_message, now, key, task_id, task_id),
    )
    return None if updated.rowcount else _found(db, key)


def _found(db: sqlite3.Connection, key: str) -> Row:
    """The entry's task id (a 1-tuple), or () when there is no entry."""
    row = db.execute("SELECT task_id FROM entry WHERE key = ?", (key,)).fetchone()
    return tuple(row) if row else ()


def _reopen(db: sqlite3.Connection, key: str, now: float) -> None:
    db.execute(
        "UPDATE entry SET state = CASE WHEN task_id IS NULL THEN 'intent' ELSE 'submitted' END, "
        "error_type = NULL, error_message = NULL, updated_at = ? "
        "WHERE key = ? AND state = 'finished'",
        (now, key),
    )


def _delete(db: sqlite3.Connection, key: str) -> str | None:
    """Delete `key` unless its task is running; that task's id when it is."""
    deleted = db.execute("DELETE FROM entry WHERE key = ? AND state != 'submitted'", (key,))
    if deleted.rowcount:
        return None
    row = db.execute("SELECT task_id FROM entry WHERE key = ?", (key,)).fetchone()
    return None if row is None else str(row[0])


# --- Opening ---------------------------------------------------------------------------------


def _connect(path: Path) -> sqlite3.Connection:
    if not path.parent.is_dir():
        raise JournalError(
            path,
            f"The journal {path} cannot be created: its directory {path.parent} does not "
            "exist; create it or pass another --journal.",
        )
    if not path.exists():
        _create(path)
    _check_header(path)
    db = sqlite3.connect(path, timeout=_BUSY_TIMEOUT, isolation_level=None, check_same_thread=False)
    try:
        _prepare(db, path)
    except BaseException:
        db.close()
        raise
    return db


def _create(path: Path) -> None:
    """Build a new journal beside `path`, then link it into place.

    A journal file is then complete or absent, never half made, so an empty or schema-less
    file at `path` is always damage (a truncated journal, another program's file) and is
    refused rather than silently started afresh, which would submit everything again.
    """
    wal = path.with_name(path.name + "-wal")
    if wal.exists():
        # SQLite would replay it into the new file: it belongs to a journal that was removed.
        raise JournalError(
            path,
            f"{wal} is left from a journal that is gone and may hold recorded tasks; "
            f"restore {path.name} beside it, or move it away.",
        )
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".new", dir=path.parent)
    os.close(fd)
    try:
        db = sqlite3.connect(temporary, isolation_level=None)
        try:
            db.executescript(_SCHEMA)
            db.execute("PRAGMA journal_mode = WAL")  # persistent: kept in the file's header
        finally:
            db.close()
        try:
            os.link(temporary, path)  # unlike a rename, never replaces a journal made meanwhile
        except FileExistsError:
            pass  # another run created it first: open that one
        except OSError:
            os.replace(temporary, path)  # a filesystem without hard links
    finally:
        Path(temporary).unlink(missing_ok=True)


def _check_header(path: Path) -> None:
    # SQLite would take an empty file for a new database; and its own word for a foreign
    # file ("file is not a database") says less than this.
    with path.open("rb") as file:
        head = file.read(len(_SQLITE_MAGIC))
    if not head:
        raise _not_a_journal(path, "the file is empty")
    if head != _SQLITE_MAGIC:
        raise _not_a_journal(path, "not an SQLite database")


def _prepare(db: sqlite3.Connection, path: Path) -> None:
    """Check that `db` is a journal this version can read, then set it up and lock it."""
    # Exclusive locking keeps the file locked for as long as this connection lives: a second
    # run over the same journal is refused instead of submitting the same requests again.
    db.execute("PRAGMA locking_mode = EXCLUSIVE")
    application_id = db.execute("PRAGMA application_id").fetchone()[0]
    if application_id != APPLICATION_ID:
        raise _not_a_journal(path, "an SQLite database of another application")
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise JournalError(
            path,
            f"The journal {path} was written by a newer kling_async (journal schema "
            f"{version}; this version reads up to {SCHEMA_VERSION}); upgrade kling_async to "
            "resume it, or pass another --journal.",
        )
    if version < 1:
        raise _not_a_journal(path, "it has no schema version")
    # Reads every page (cheap for a batch's journal): a truncated or damaged file is refused
    # now, not found out halfway through a run.
    verdict = db.execute("PRAGMA quick_check").fetchone()[0]
    if verdict != "ok":
        raise _not_a_journal(path, f"it is damaged: {verdict}")
    db.execute("PRAGMA journal_mode = WAL")
    # In WAL mode a commit is an append to the -wal file; NORMAL skips the fsync at each
    # commit. A committed transaction then survives the process being killed (the data is in
    # the operating system's hands) but may be lost if the machine itself loses power before
    # the next checkpoint. That is the failure a batch re-run guards against, at a fraction
    # of FULL's cost for ~8000 commits per 2000 requests.
    db.execute("PRAGMA synchronous = NORMAL")
    # The first write takes the exclusive lock, so a second run fails here, at open.
    db.execute("BEGIN IMMEDIATE")
    db.execute("COMMIT")


def _not_a_journal(path: Path | str, reason: str) -> JournalError:
    return JournalError(path, f"{path} is not a kling_async journal ({reason}); {_MOVE_AWAY}.")


def _in_use(path: Path, reason: str) -> JournalError:
    return JournalError(
        path,
        f"The journal {path} is in use by another process ({reason}); let that run finish, "
        "or pass another --journal.",
    )


# SQLite's primary result codes that mean something the user can act on.
_BY_SQLITE_CODE: Mapping[int, Callable[[Path, str], JournalError]] = {
    sqlite3.SQLITE_CORRUPT: _not_a_journal,
    sqlite3.SQLITE_NOTADB: _not_a_journal,
    sqlite3.SQLITE_BUSY: _in_use,
    sqlite3.SQLITE_LOCKED: _in_use,
}


def _explain(path: Path, exc: sqlite3.Error, doing: str) -> JournalError:
    code = exc.sqlite_errorcode & 0xFF  # extended codes carry it in the low byte
    if code in _BY_SQLITE_CODE:
        return _BY_SQLITE_CODE[code](path, str(exc))
    return JournalError(
        path,
        f"The journal {path} could not be {doing} ({exc}); check free disk space and that "
        "the file is readable and writable, then run again.",
    )
