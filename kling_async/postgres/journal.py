"""The shared journal of record: `Journal`'s rules on PostgreSQL, for many processes at once.

A key lives in a namespace (a batch's name, a web backend's own). A process claims a key
before it works on it: the row names it as owner until a lease runs out, and carries a
fencing token that grows with each claim. Every write names the token it was claimed with,
so a process paused past its lease, whose key another process adopted meanwhile, writes
nothing more: its write is refused with `ClaimedElsewhereError`. One statement per process renews
the leases of all its keys.

The entry also holds the account's parallel-task slot from the intent (taken in the same
transaction) until an outcome is recorded or the entry is forgotten; a lease running out
never frees it, since the task goes on running on Kling's side.
"""

from __future__ import annotations

import os
import socket
import uuid
from typing import Any, Self

import anyio

from ..journal import (
    ClaimedElsewhereError,
    JournalEntry,
    check_same_request,
    check_update,
    entry_from_row,
    error_fields,
    still_running,
    stored_request,
    task_snapshot,
)
from ..models import CreateRequest, Task

__all__ = ["PostgresJournal"]

_COLUMNS = "key, request, state, task_raw, task_kind, error_type, error_message, updated_at, fence"
_OWN = "namespace = $1 AND key = $2 AND fence = $3"
_SLOT_FREED = "kling_slots"


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
        self._waiting: dict[str, anyio.Event] = {}

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

    async def __aenter__(self) -> Self:
        return await self.open()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- reading ----------------------------------------------------------------------------

    async def entry(self, key: str) -> JournalEntry | None:
        row = await self._co.fetchrow(
            f"SELECT {_COLUMNS} FROM kling_entry WHERE namespace = $1 AND key = $2",
            self.namespace,
            key,
        )
        return None if row is None else self._entry(row)

    async def entries(self) -> list[JournalEntry]:
        rows = await self._co.fetch(
            f"SELECT {_COLUMNS} FROM kling_entry WHERE namespace = $1 ORDER BY seq",
            self.namespace,
        )
        return [self._entry(row) for row in rows]

    def _entry(self, row: Any) -> JournalEntry:
        return entry_from_row(self.where, tuple(row)[:8])

    # -- claims and leases ------------------------------------------------------------------

    async def claim(self, key: str, known: JournalEntry | None) -> JournalEntry | None:
        """Take `key` for this process when no live process holds it; the entry as it now
        stands. A key unknown before is claimed by `record_intent` (no statement here)."""
        if known is None:
            return None
        row = await self._co.fetchrow(
            f"UPDATE kling_entry SET owner = $3, fence = fence + 1, "
            f"lease_until = clock_timestamp() + make_interval(secs => $4) "
            f"WHERE namespace = $1 AND key = $2 "
            f"AND (owner IS NULL OR owner = $3 OR lease_until < clock_timestamp()) "
            f"RETURNING {_COLUMNS}",
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
        return self._entry(row)

    async def hold(self) -> None:
        """Renew this journal's leases (one statement) and look at the keys other processes
        hold that this one waits for (one more), until cancelled."""
        while True:
            await self._co.clock.sleep(self._co.tick)
            if self._fences:
                await self._co.execute(
                    "UPDATE kling_entry SET lease_until = clock_timestamp() "
                    "+ make_interval(secs => $2) WHERE owner = $1",
                    self.owner,
                    self._co.lease,
                )
            if self._waiting:
                rows = await self._co.fetch(
                    "SELECT key FROM kling_entry WHERE namespace = $1 AND key = ANY($2) "
                    "AND (state = 'finished' OR owner IS NULL "
                    "OR lease_until < clock_timestamp())",
                    self.namespace,
                    list(self._waiting),
                )
                for (key,) in rows:
                    self._waiting.pop(key).set()

    async def released(self, key: str) -> JournalEntry | None:
        """Wait until the process that holds `key` finished it, gave it up, or died."""
        event = self._waiting.setdefault(key, anyio.Event())
        await event.wait()
        return await self.entry(key)

    async def settled(self, key: str) -> JournalEntry | None:
        """Wait until `key`'s entry knows its task, is finished, or its holder's lease ran
        out (or it is gone: None)."""
        while True:
            row = await self._co.fetchrow(
                f"SELECT {_COLUMNS}, (owner IS NULL OR lease_until < clock_timestamp()) AS free "
                "FROM kling_entry WHERE namespace = $1 AND key = $2",
                self.namespace,
                key,
            )
            if row is None:
                return None
            if row["free"] or row["task_raw"] is not None or row["state"] == "finished":
                return self._entry(row)
            await self._co.clock.sleep(self._co.tick)

    def _elsewhere(self, key: str) -> ClaimedElsewhereError:
        self._fences.pop(key, None)
        return ClaimedElsewhereError(
            self.where,
            f"Key {key!r} of {self.where} is held by another process; it is left to that "
            "process, and taken over if that process stops renewing its lease.",
        )

    # -- recording --------------------------------------------------------------------------

    async def record_intent(self, key: str, request: CreateRequest, *, slot: bool = True) -> None:
        """Journal the intent and take an account slot for it, in one transaction; wait while
        the account runs all the tasks it may. With `slot` False, the intent takes none."""
        stored = stored_request(request)
        while True:
            woken = self._co.slot_freed()
            row = await self._co.fetchrow(
                "SELECT * FROM kling_intent($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                self.namespace,
                key,
                self._co.account,
                stored,
                self._co.clock.time(),
                self.owner,
                self._fences.get(key, 0),
                self._co.lease,
                slot,
            )
            outcome = row["outcome"]
            if outcome != "full":
                break
            await self._co.wait_for_slot(woken)
        if outcome == "inserted":
            self._fences[key] = row["fence"]
            return
        check_same_request(self.where, key, row["stored"], request)
        if outcome == "exists":
            raise self._elsewhere(key)

    async def record_task(self, key: str, task: Task) -> None:
        await self._record_snapshot(key, task)

    async def record_status(self, key: str, task: Task) -> None:
        await self._record_snapshot(key, task)

    async def _record_snapshot(self, key: str, task: Task) -> None:
        task_id, kind, status, raw = task_snapshot(task)
        updated = await self._co.fetchval(
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
        )
        if updated is None:
            await self._explain(key, task)

    async def record_outcome(
        self, key: str, task: Task | None, error: BaseException | None
    ) -> None:
        """Journal how `key` ended, give its slot back, and let waiting processes know."""
        task_id, kind, status, raw = (
            task_snapshot(task) if task is not None else (None, None, None, None)
        )
        error_type, message = error_fields(error)
        updated = await self._co.fetchval(
            "WITH done AS (UPDATE kling_entry SET state = 'finished', "
            "task_id = coalesce($4, task_id), task_kind = coalesce($5, task_kind), "
            "task_status = coalesce($6, task_status), task_raw = coalesce($7, task_raw), "
            "error_type = $8, error_message = $9, updated_at = $10, owner = NULL, "
            "lease_until = NULL, holds_slot = false "
            f"WHERE {_OWN} AND ($4::text IS NULL OR task_id IS NULL OR task_id = $4) "
            "RETURNING account) "
            f"SELECT count(pg_notify('{_SLOT_FREED}', account)) FROM done",
            *self._own(key),
            task_id,
            kind,
            status,
            raw,
            error_type,
            message,
            self._co.clock.time(),
        )
        if not updated:
            await self._explain(key, task)

    async def reopen(self, key: str) -> None:
        """A finished entry back to INTENT or SUBMITTED; a running task holds a slot again."""
        await self._co.execute(
            "UPDATE kling_entry SET state = CASE WHEN task_id IS NULL THEN 'intent' "
            "ELSE 'submitted' END, error_type = NULL, error_message = NULL, updated_at = $4, "
            "holds_slot = task_id IS NOT NULL AND task_status NOT IN ('succeed', 'failed'), "
            "owner = $5, lease_until = clock_timestamp() + make_interval(secs => $6) "
            f"WHERE {_OWN} AND state = 'finished'",
            *self._own(key),
            self._co.clock.time(),
            self.owner,
            self._co.lease,
        )

    async def forget(self, key: str) -> None:
        """Remove `key`'s entry (a create that surely made nothing), freeing its slot."""
        deleted = await self._co.fetchval(
            "WITH gone AS (DELETE FROM kling_entry "
            f"WHERE {_OWN} AND state <> 'submitted' RETURNING account) "
            f"SELECT count(pg_notify('{_SLOT_FREED}', account)) FROM gone",
            *self._own(key),
        )
        if deleted:
            self._fences.pop(key, None)
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
