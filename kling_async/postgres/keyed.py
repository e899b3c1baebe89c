"""Idempotent submission across processes: one task per key, whichever process asks.

A web request retried onto another replica carries the same key; the replica that finds the
key journaled returns the task recorded there instead of paying again. The key is claimed by
its intent (one process at a time); the others wait until the task is recorded (woken by a
NOTIFY from the holder, with a slow read as a fallback), and adopt
the key if its holder died before it could record one: the create is then looked up by its
external id (official API), and sent again only when it surely made nothing.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable

import anyio

from .._transport import surely_not_created
from ..errors import AmbiguousSubmissionError, KlingError
from ..journal import ClaimedElsewhereError, EntryState, JournalEntry
from ..models import CreateRequest, OrphanedTask, Task
from .journal import PostgresJournal

__all__ = ["submit_once"]

Submit = Callable[[CreateRequest], Awaitable[Task]]
Find = Callable[[CreateRequest], Awaitable[Task | None]]

#: Seconds a cancelled submission may take to journal what its create made before the
#: cancellation goes on.
_SETTLING = 10.0


async def submit_once(
    journal: PostgresJournal,
    key: str,
    request: CreateRequest,
    *,
    submit: Submit,
    find: Find,
    orphans: Iterable[OrphanedTask] = (),
) -> Task:
    """The task submitted under `key` in `journal`: the one already recorded, or a new one.

    `request` is checked and completed already (its external id set where the dialect has
    one). A different request under a key already used is refused (`JournalError`).
    `orphans` are the tasks the client made for cancelled callers: cancelled mid-create, the
    task its create made is found there and journaled under the key before the cancellation
    goes on, so the processes waiting for the key get it.
    """
    try:
        return await _submit_once(journal, key, request, submit, find, orphans)
    finally:  # recorded or given up: the key's lease is renewed no more
        with anyio.CancelScope(shield=True), anyio.move_on_after(_SETTLING):
            await journal.let_go(key)


async def _submit_once(
    journal: PostgresJournal,
    key: str,
    request: CreateRequest,
    submit: Submit,
    find: Find,
    orphans: Iterable[OrphanedTask],
) -> Task:
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
        try:
            return await _send(journal, key, request, submit)
        except anyio.get_cancelled_exc_class():
            with anyio.CancelScope(shield=True), anyio.move_on_after(_SETTLING):
                await _settle_cancelled(journal, key, request, find, orphans)
            raise


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
        await journal.announce(key)
    return found, claimed.request


async def _settle_cancelled(
    journal: PostgresJournal,
    key: str,
    request: CreateRequest,
    find: Find,
    orphans: Iterable[OrphanedTask],
) -> None:
    """The submission of `key` was cancelled: journal the task its create made (handed over
    as an orphan, or found by external id), give the key up when it surely made nothing, or
    end the key as undecided (its next asker looks it up); then tell those waiting for it."""
    made = next((o.task for o in reversed(list(orphans)) if o.request == request), None)
    if made is None:
        try:
            made = await find(request)
        except KlingError as exc:
            reason = f"the submission of key {key!r} was cancelled while its create ran ({exc})"
            await journal.record_outcome(key, None, AmbiguousSubmissionError(request, reason))
            await journal.announce(key)
            return
    if made is None:
        await journal.forget(key)
    else:
        await journal.record_task(key, made)
    await journal.announce(key)


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
    with anyio.CancelScope(shield=True):  # made: journaled even if the caller goes
        try:
            await journal.record_task(key, task)
        except KlingError as exc:
            raise KlingError(
                f"Task {task.id} was created for key {key!r} but could not be journaled "
                f"({exc}); note its id."
            ) from exc
        await journal.announce(key)
    return task
