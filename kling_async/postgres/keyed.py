"""Idempotent submission across processes: one task per key, whichever process asks.

A web request retried onto another replica carries the same key; the replica that finds the
key journaled returns the task recorded there instead of paying again. The key is claimed by
its intent (one process at a time); the others wait until the task is recorded (woken by a
NOTIFY from the holder, with a slow read as a fallback), and adopt
the key if its holder died before it could record one: the create is then looked up by its
external id (official API), and sent again only when it surely made nothing.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from .._transport import surely_not_created
from ..errors import KlingError
from ..journal import ClaimedElsewhereError, EntryState, JournalEntry
from ..models import CreateRequest, Task
from .journal import PostgresJournal

__all__ = ["submit_once"]

Submit = Callable[[CreateRequest], Awaitable[Task]]
Find = Callable[[CreateRequest], Awaitable[Task | None]]


async def submit_once(
    journal: PostgresJournal, key: str, request: CreateRequest, *, submit: Submit, find: Find
) -> Task:
    """The task submitted under `key` in `journal`: the one already recorded, or a new one.

    `request` is checked and completed already (its external id set where the dialect has
    one). A different request under a key already used is refused (`JournalError`).
    """
    while True:
        try:
            await journal.record_intent(key, request, slot=False)
        except ClaimedElsewhereError:
            entry = await journal.settled(key)
            if entry is None:
                continue  # forgotten meanwhile (its create made nothing): ours to send
            if entry.task is not None:
                return entry.task
            adopted = await _adopt(journal, key, entry, find)
            if adopted is None:
                continue  # someone else adopted it first: wait for them
            found, request = adopted
            if found is not None:
                return found
        return await _send(journal, key, request, submit)


async def _adopt(
    journal: PostgresJournal, key: str, entry: JournalEntry, find: Find
) -> tuple[Task | None, CreateRequest] | None:
    """Take over a key whose holder left no task: the task its create made, if any, and the
    request to send again otherwise. None when another process took it first."""
    try:
        claimed = await journal.claim(key, entry)
    except ClaimedElsewhereError:
        return None
    if claimed is None:
        return None
    if claimed.state is EntryState.FINISHED:
        await journal.reopen(key)
    if claimed.task is not None:
        return claimed.task, claimed.request
    found = await find(claimed.request)  # raises where a lost create cannot be looked up
    if found is not None:
        await journal.record_task(key, found)
    return found, claimed.request


async def _send(journal: PostgresJournal, key: str, request: CreateRequest, submit: Submit) -> Task:
    """Create the task, journal it, and tell the processes waiting for the key."""
    try:
        task = await submit(request)
    except Exception as exc:
        if surely_not_created(exc):
            await journal.forget(key)  # nothing was made: the next try sends it anew
        else:
            await journal.record_outcome(key, None, exc)
        await journal.announce(key)
        raise
    try:
        await journal.record_task(key, task)
    except KlingError as exc:
        raise KlingError(
            f"Task {task.id} was created for key {key!r} but could not be journaled ({exc}); "
            "note its id."
        ) from exc
    await journal.announce(key)
    return task
