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

import os
import sqlite3
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, Self, TypeVar

import anyio
import anyio.to_thread

from ._clock import Clock, SystemClock
from ._journal_entry import (
    MOVE_AWAY,
    ClaimedElsewhereError,
    EntryState,
    JournalEntry,
    JournalError,
    Row,
)

# The shared journal on a database stores entries as this one does: it reads these from here.
from ._journal_entry import check_same_request as check_same_request
from ._journal_entry import check_update as check_update
from ._journal_entry import entry_from_row as entry_from_row
from ._journal_entry import error_fields as error_fields
from ._journal_entry import still_running as still_running
from ._journal_entry import stored_request as stored_request
from ._journal_entry import task_snapshot as task_snapshot

# The marks of the journal's file format, which its checks read from here.
from ._journal_file import APPLICATION_ID as APPLICATION_ID
from ._journal_file import SCHEMA_VERSION as SCHEMA_VERSION
from ._journal_file import connect, explain
from ._journal_key import request_key
from .models import CreateRequest, Task

__all__ = [
    "ClaimedElsewhereError",
    "EntryState",
    "Journal",
    "JournalEntry",
    "JournalError",
    "JournalStore",
    "request_key",
]

# Public here, defined beside the entry's stored form: named as this module's in tracebacks,
# reprs and the docs, so no one is sent to a private module.
for _public in (ClaimedElsewhereError, EntryState, JournalEntry, JournalError):
    _public.__module__ = __name__


_SELECT = (
    "SELECT key, request, state, task_raw, task_kind, error_type, error_message, updated_at "
    "FROM entry"
)

T = TypeVar("T")


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
                    self._db = await anyio.to_thread.run_sync(connect, self.path)
                except sqlite3.Error as exc:
                    raise explain(self.path, exc, "opened") from exc
                except OSError as exc:
                    raise JournalError(
                        self.path,
                        f"The journal {self.path} could not be opened "
                        f"({exc.strerror or exc}); {MOVE_AWAY}.",
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
                raise explain(self.path, exc, "read or written") from exc

    def _entry(self, row: Row) -> JournalEntry:
        return entry_from_row(self.path, row)


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
    found = _found(db, key)
    return str(found[0]) if found else None
