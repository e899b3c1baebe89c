"""The shared journal of record: `Journal`'s rules on PostgreSQL, for many processes at once.

A key lives in a namespace (a batch's name, a web backend's own). A process claims a key
before it works on it: the row names it as owner until a lease runs out, and carries a
fencing token that grows with each claim. Every write names the token it was claimed with,
so a process paused past its lease, whose key another process adopted meanwhile, writes
nothing more: its write is refused with `ClaimedElsewhereError`. One statement a tick per
process renews the leases of all its keys and looks at the keys it waits for.

The entry also holds the account's parallel-task slot from the intent (taken in the same
transaction) until an outcome is recorded or the entry is forgotten; a lease running out
never frees it, since the task goes on running on Kling's side. An intent recorded while the
account runs all it may is *queued*: nothing is sent for it until the statement that gives a
slot back hands that slot to it, and says so by NOTIFY. A queued entry is no entry yet to
anyone who reads the journal (nothing was sent), and a queued entry of a process that is gone
is taken over by the next process that asks for its key.

Each process hears (by NOTIFY) which keys the others take, so processes that run the same
batch skip each other's keys without a statement each.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import socket
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any, Self

import anyio
import attrs

from ..journal import (
    ClaimedElsewhereError,
    JournalEntry,
    JournalError,
    check_same_request,
    check_update,
    entry_from_row,
    error_fields,
    still_running,
    stored_request,
    task_snapshot,
)
from ..models import CreateRequest, Task
from ..telemetry import _SlotTrace, log_fields

__all__ = ["PostgresJournal"]

_COLUMNS = "key, request, state, task_raw, task_kind, error_type, error_message, updated_at, fence"
_OWN = "namespace = $1 AND key = $2 AND fence = $3"


_NOTHING = contextlib.nullcontext()
log = logging.getLogger(__name__)  # a child of "kling_async"


@attrs.define
class _Awaited:
    """A key another process holds, and its entry once that process let go of it."""

    event: anyio.Event = attrs.field(factory=anyio.Event)
    entry: JournalEntry | None = None


class _Turns:
    """One at a time, the next taken at random among those waiting.

    The intents of a batch's requests go one at a time; in turn order, processes that start
    one batch together would ask for its first keys in step, and each key would be asked
    for by all of them (each answer but one `exists`, a round trip lost before the quota
    is first full). In random order each process tries a different one of the requests it
    has started."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self._busy = False
        self._waiting: list[anyio.Event] = []
        self._rng = rng or random.Random()

    @contextlib.asynccontextmanager
    async def turn(self) -> AsyncIterator[None]:
        if self._busy:
            mine = anyio.Event()
            self._waiting.append(mine)
            try:
                await mine.wait()
            except BaseException:
                if mine.is_set():
                    self._next()  # handed the turn as it was cancelled: hand it on
                else:
                    self._waiting.remove(mine)
                raise
        self._busy = True
        try:
            yield
        finally:
            self._next()

    def _next(self) -> None:
        if self._waiting:
            self._waiting.pop(self._rng.randrange(len(self._waiting))).set()  # still busy
        else:
            self._busy = False


class PostgresJournal:
    """The journal of one namespace, shared by every process that names it.

    Made by the coordination (`Coordination.journal`); it uses the coordination's
    connections and clock, and its `hold` renews this journal's leases while a batch runs.
    """

    def __init__(self, coordination: Any, namespace: str) -> None:
        self.namespace = namespace
        self._co = coordination
        # Names the process (host and pid) for whoever looks at the table, and this journal.
        self.owner = f"{socket.gethostname()}/{os.getpid()}/{uuid.uuid4().hex[:12]}"
        self.where = f"{coordination.where} (namespace {namespace!r})"
        self._fences: dict[str, int] = {}
        self._waiting: dict[str, _Awaited] = {}
        self._settling: dict[str, set[anyio.Event]] = {}  # the waits of `settled`, by key
        # Keys other processes took, heard as they took them; and this journal's queued keys.
        self._taken: set[str] = set()
        self._queued: dict[str, anyio.Event] = {}
        self._asking = _Turns()
        self._epochs: dict[str, int] = {}  # the account window's epoch as each slot was asked
        # The keys whose account slot this process took, with where each is counted held.
        self._holding: dict[str, _SlotTrace] = {}

    def __repr__(self) -> str:
        return f"<PostgresJournal {self.where}>"

    async def open(self) -> Self:
        """The coordination's connections serve the journal: nothing more to open."""
        await self._co.open()
        return self

    async def close(self) -> None:
        """Give up this journal's leases at once, so another process adopts its work now."""
        with anyio.CancelScope(shield=True):
            if self._fences and self._co.is_open:
                await self._co.execute(
                    "UPDATE kling_entry SET owner = NULL, lease_until = NULL WHERE owner = $1",
                    self.owner,
                )
            self._fences.clear()
            for key in list(self._holding):  # the process that adopts a key holds its slot
                self._given_back(key)

    async def __aenter__(self) -> Self:
        return await self.open()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- reading ----------------------------------------------------------------------------

    async def entry(self, key: str) -> JournalEntry | None:
        row = await self._co.fetchrow(
            f"SELECT {_COLUMNS} FROM kling_entry WHERE namespace = $1 AND key = $2 AND NOT queued",
            self.namespace,
            key,
        )
        return None if row is None else self._entry(row)

    async def entries(self) -> list[JournalEntry]:
        rows = await self._co.fetch(
            f"SELECT {_COLUMNS} FROM kling_entry WHERE namespace = $1 AND NOT queued ORDER BY seq",
            self.namespace,
        )
        return [self._entry(row) for row in rows]

    def _entry(self, row: Any) -> JournalEntry:
        return entry_from_row(self.where, tuple(row)[:8])

    # -- claims and leases ------------------------------------------------------------------

    async def claim(self, key: str, known: JournalEntry | None) -> JournalEntry | None:
        """Take `key` for this process when no live process holds it; the entry as it now
        stands. A key unknown before is claimed by `record_intent` (no statement here), and
        one that another process was heard to take is refused at once."""
        if known is None:
            if key in self._taken:
                raise self._elsewhere(key)
            return None
        row = await self._co.fetchrow(
            f"UPDATE kling_entry SET owner = $3, fence = fence + 1, "
            f"lease_until = clock_timestamp() + make_interval(secs => $4) "
            f"WHERE namespace = $1 AND key = $2 "
            f"AND (owner IS NULL OR owner = $3 OR lease_until < clock_timestamp()) "
            f"RETURNING {_COLUMNS}, holds_slot",
            self.namespace,
            key,
            self.owner,
            self._co.lease,
        )
        if row is None:
            if await self._co.fetchval(
                "SELECT 1 FROM kling_entry WHERE namespace = $1 AND key = $2",
                self.namespace,
                key,
            ):
                raise self._elsewhere(key)
            return None
        self._fences[key] = row["fence"]
        if row["holds_slot"]:  # a task still running, taken over with its slot
            self._taken_slot(key, None)
        return self._entry(row)

    async def let_go(self, key: str) -> None:
        """Give up this process's claim of `key` (its task recorded, or its submission given
        up): its lease is renewed no more, and another process may take the key over at
        once. A release that cannot be sent is let go: the lease runs out by itself."""
        fence = self._fences.pop(key, None)
        if fence is None:
            return
        try:
            await self._co.execute(
                "UPDATE kling_entry SET owner = NULL, lease_until = NULL "
                f"WHERE {_OWN} AND owner = $4",
                self.namespace,
                key,
                fence,
                self.owner,
            )
        except JournalError as exc:
            log.info(
                "could not give up key %r (%s); its lease runs out by itself",
                key,
                exc,
                extra=log_fields(request_key=key),
            )

    async def hold(self) -> None:
        """Until cancelled, one statement a tick: renew this journal's leases, learn which of
        its queued keys got a slot (a NOTIFY it may have missed), and find the keys it waits
        for that their holders finished, gave up, or left behind by dying."""
        while True:
            await self._co.clock.sleep(self._co.tick)
            if self._fences or self._waiting:
                await self._tick()

    async def _tick(self) -> None:
        self._co.periodic_round_trips += 1
        rows = await self._co.fetch(
            "SELECT * FROM kling_tick($1, $2, $3, $4, $5, $6)",
            self.owner,
            self._co.lease,
            bool(self._fences),
            list(self._queued),
            self.namespace,
            list(self._waiting),
        )
        for row in rows:
            what, key = row[0], row[1]
            if what == "granted":
                self.granted(key)
            elif (awaited := self._waiting.pop(key, None)) is not None:
                gone = row["o_request"] is None or row["o_queued"]  # nothing was sent for it
                awaited.entry = None if gone else self._entry(tuple(row)[1:])
                awaited.event.set()

    async def released(self, key: str) -> JournalEntry | None:
        """Wait until the process that holds `key` finished it, gave it up, or died; its entry
        then (None when nothing was sent for it: the key is free to take)."""
        awaited = self._waiting.setdefault(key, _Awaited())
        await awaited.event.wait()
        self._taken.discard(key)
        return awaited.entry

    def taken_elsewhere(self, key: str) -> None:
        """Another process took `key` (heard by NOTIFY)."""
        if key not in self._fences:
            self._taken.add(key)

    def granted(self, key: str) -> None:
        """The queued intent of `key` got its slot (heard by NOTIFY, or seen at a tick)."""
        if (event := self._queued.get(key)) is not None:
            event.set()

    async def settled(self, key: str) -> JournalEntry | None:
        """Wait until `key`'s entry knows its task, is finished, or its holder's lease ran
        out (or it is gone: None).

        Woken by the holder's `announce`; the entry is read again anyway every
        `Coordination.recheck` seconds (a notification can be lost: a connection dropped, a
        holder that died between its write and its NOTIFY) and when the holder's lease
        runs out."""
        while True:
            heard = anyio.Event()
            self._settling.setdefault(key, set()).add(heard)
            try:
                row = await self._co.fetchrow(
                    f"SELECT {_COLUMNS}, (owner IS NULL OR lease_until < clock_timestamp()) "
                    "AS free, extract(epoch FROM lease_until - clock_timestamp())::float8 "
                    "AS lease_left FROM kling_entry WHERE namespace = $1 AND key = $2",
                    self.namespace,
                    key,
                )
                if row is None:
                    return None
                if row["free"] or row["task_raw"] is not None or row["state"] == "finished":
                    return self._entry(row)
                lease_left = max(0.0, row["lease_left"] or 0.0)
                with anyio.move_on_after(min(self._co.recheck, lease_left + 0.05)):
                    await heard.wait()
                if not heard.is_set():
                    self._co.periodic_round_trips += 1  # the next read is the fallback's
            finally:
                self._settling[key].discard(heard)
                if not self._settling[key]:
                    del self._settling[key]

    def heard_settled(self, key: str) -> None:
        """`key`'s holder recorded its task or outcome, or forgot it (heard by NOTIFY)."""
        for heard in self._settling.get(key, ()):
            heard.set()

    async def announce(self, key: str) -> None:
        """Tell the processes waiting in `settled` for `key` to read it now. A notice that
        cannot be sent is let go: they read it at their next look anyway."""
        try:
            await self._co.execute(
                "SELECT kling_notify('kling_settled', $1, $2, $3)", self.owner, self.namespace, key
            )
        except JournalError as exc:
            log.info(
                "could not tell other processes that key %r is settled (%s); they will look",
                key,
                exc,
                extra=log_fields(request_key=key),
            )

    def _elsewhere(self, key: str) -> ClaimedElsewhereError:
        self._fences.pop(key, None)
        self._given_back(key)
        return ClaimedElsewhereError(
            self.where,
            f"Key {key!r} of {self.where} is held by another process; it is left to that "
            "process, and taken over if that process stops renewing its lease.",
        )

    # -- recording --------------------------------------------------------------------------

    async def record_intent(self, key: str, request: CreateRequest, *, slot: bool = True) -> None:
        """Journal the intent and take an account slot for it, in one transaction; when the
        account runs all it may, the intent waits, queued, until a slot is handed to it.
        With `slot` False, the intent takes none. Cancelled while queued, the queued entry
        is removed (nothing was sent)."""
        granted = self._queued.setdefault(key, anyio.Event()) if slot else None
        recorded = False
        try:
            queued = await self._intent(key, request, slot)
            recorded = True
            asked = time.monotonic() if queued else None  # when the account was found full
            while queued and granted is not None:
                # A grant comes by NOTIFY, or is seen by the next tick; asking again after a
                # lease catches one handed out while this process was taken for dead.
                with anyio.move_on_after(self._co.lease):
                    await granted.wait()
                queued = not granted.is_set() and await self._intent(key, request, slot)
            if slot:
                self._taken_slot(key, 0.0 if asked is None else time.monotonic() - asked)
        except BaseException:
            if recorded:
                with anyio.CancelScope(shield=True):
                    await self._co.fetchval("SELECT kling_forget($1, $2, $3)", *self._own(key))
                self._fences.pop(key, None)
                self._given_back(key)
            raise
        finally:
            self._queued.pop(key, None)

    def _taken_slot(self, key: str, waited: float | None) -> None:
        """`key` holds an account slot, got `waited` seconds after it was asked for (None:
        found held); counted held once, however often its intent is recorded."""
        trace = self._holding.get(key)
        if trace is not None:
            if waited is not None:
                trace.waited(waited)
        else:
            trace = self._holding[key] = self._co.telemetry.slots("account")
            trace.taken(waited)

    def _given_back(self, key: str) -> None:
        """`key`'s account slot is no longer this process's: freed, or its key left."""
        trace = self._holding.pop(key, None)
        if trace is not None:
            trace.given_back()

    async def _intent(self, key: str, request: CreateRequest, slot: bool) -> bool:
        """One try of `kling_intent`; whether the intent is queued.

        A batch's intents go one at a time: processes running the same batch otherwise all
        ask for its next keys at once, and each answer ('exists', with the keys others took
        after it) comes too late for the requests already asked about.
        """
        known = key in self._taken
        async with self._asking.turn() if slot else _NOTHING:
            if key in self._taken and not known:  # heard of while this one waited its turn
                raise self._elsewhere(key)
            row = await self._ask_intent(key, request, slot)
        if row["stored"] is not None:
            check_same_request(self.where, key, row["stored"], request)
        if row["outcome"] == "exists":
            for later in row["ahead"]:
                self.taken_elsewhere(later)
            raise self._elsewhere(key)
        self._fences[key], self._epochs[key] = row["fence"], row["seen_epoch"]
        return bool(row["outcome"] == "queued")

    async def _ask_intent(self, key: str, request: CreateRequest, slot: bool) -> Any:
        return await self._co.fetchrow(
            "SELECT * FROM kling_intent($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            self.namespace,
            key,
            self._co.account,
            stored_request(request),
            self._co.clock.time(),
            self.owner,
            self._fences.get(key, 0),
            self._co.lease,
            slot,
        )

    async def record_task(self, key: str, task: Task) -> None:
        """Journal the task; a narrowed window of the account widens by 1/window (AIMD)."""
        await self._record_snapshot(key, task, created=True)

    async def record_status(self, key: str, task: Task) -> None:
        await self._record_snapshot(key, task)

    async def narrow(self, key: str) -> bool:
        """The create of `key` was refused with 1303: halve the account's shared window,
        unless it was halved since `key`'s slot was asked for. True: the window is shared."""
        size = await self._co.fetchval(
            "SELECT kling_narrow($1, $2)", self._co.account, self._epochs.get(key, -1)
        )
        if size is not None:
            log.info(
                "over the account's parallel-task limit: its shared window lowered to %d",
                int(size),
                extra=log_fields(request_key=key),
            )
        return True

    async def _record_snapshot(self, key: str, task: Task, *, created: bool = False) -> None:
        task_id, kind, status, raw = task_snapshot(task)
        updated = await self._co.fetchval(
            "WITH grown AS (UPDATE kling_account a SET window_size = CASE "
            "WHEN a.window_size + 1 / a.window_size >= coalesce(a.quota::float8, 'Infinity') "
            "THEN NULL ELSE a.window_size + 1 / a.window_size END "
            "WHERE $9 AND a.name = $10 AND a.window_size IS NOT NULL) "
            "UPDATE kling_entry SET state = 'submitted', task_id = $4, task_kind = $5, "
            "task_status = $6, task_raw = $7, updated_at = $8 "
            f"WHERE {_OWN} AND state <> 'finished' AND (task_id IS NULL OR task_id = $4) "
            "RETURNING 1",
            *self._own(key),
            task_id,
            kind,
            status,
            raw,
            self._co.clock.time(),
            created,
            self._co.account,
        )
        if updated is None:
            await self._explain(key, task)

    async def record_outcome(
        self, key: str, task: Task | None, error: BaseException | None
    ) -> None:
        """Journal how `key` ended and hand its slot to the next queued intent."""
        task_id, kind, status, raw = (
            task_snapshot(task) if task is not None else (None, None, None, None)
        )
        error_type, message = error_fields(error)
        # The task's duration goes to the other processes in the same statement (see
        # `Coordination._on_ended`), only when the entry was finished by it (a write fenced
        # out tells nothing); delivered with the transaction's commit.
        note = self._duration_note(task)
        told = (
            ", CASE WHEN f.done THEN pg_notify(kling_channel('kling_ended'), $11) END"
            if note is not None
            else ""
        )
        updated = await self._co.fetchval(
            "SELECT f.done"
            f"{told} FROM (SELECT kling_finish($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) "
            "AS done OFFSET 0) f",
            *self._own(key),
            task_id,
            kind,
            status,
            raw,
            error_type,
            message,
            self._co.clock.time(),
            *(() if note is None else (note,)),
        )
        if not updated:
            await self._explain(key, task)
        self._given_back(key)

    def _duration_note(self, task: Task | None) -> str | None:
        """What the other processes of the account learn from `task`'s end: its kind and
        duration (the account last: its name may hold spaces)."""
        if task is None or not task.is_terminal or task.created_at is None:
            return None
        if task.updated_at is None:
            return None
        seconds = (task.updated_at - task.created_at).total_seconds()
        return f"{self._co.origin} {task.kind.value} {seconds!r} {self._co.account}"

    async def reopen(self, key: str) -> None:
        """A finished entry back to INTENT or SUBMITTED; a running task holds a slot again."""
        holds = await self._co.fetchval(
            "UPDATE kling_entry SET state = CASE WHEN task_id IS NULL THEN 'intent' "
            "ELSE 'submitted' END, error_type = NULL, error_message = NULL, updated_at = $4, "
            "holds_slot = task_id IS NOT NULL AND task_status NOT IN ('succeed', 'failed'), "
            "owner = $5, lease_until = clock_timestamp() + make_interval(secs => $6) "
            f"WHERE {_OWN} AND state = 'finished' RETURNING holds_slot",
            *self._own(key),
            self._co.clock.time(),
            self.owner,
            self._co.lease,
        )
        if holds:
            self._taken_slot(key, None)

    async def forget(self, key: str) -> None:
        """Remove `key`'s entry (a create that surely made nothing), freeing its slot."""
        deleted = await self._co.fetchval("SELECT kling_forget($1, $2, $3)", *self._own(key))
        if deleted:
            self._fences.pop(key, None)
            self._given_back(key)
            return
        row = await self._co.fetchrow(
            "SELECT task_id, fence, state FROM kling_entry WHERE namespace = $1 AND key = $2",
            self.namespace,
            key,
        )
        if row is None:
            return
        if row["fence"] != self._fences.get(key):
            raise self._elsewhere(key)
        raise still_running(self.where, key, row["task_id"])

    def _own(self, key: str) -> tuple[str, str, int]:
        return self.namespace, key, self._fences.get(key, 0)

    async def _explain(self, key: str, task: Task | None) -> None:
        """Why a write changed nothing: not this process's key any more, or `Journal`'s
        reasons (no intent, another task, a late snapshot)."""
        row = await self._co.fetchrow(
            "SELECT task_id, fence FROM kling_entry WHERE namespace = $1 AND key = $2",
            self.namespace,
            key,
        )
        if row is not None and row["fence"] != self._fences.get(key):
            raise self._elsewhere(key)
        check_update(self.where, key, () if row is None else (row["task_id"],), task)
