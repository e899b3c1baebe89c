"""One read for many tasks: watchers of one kind refreshed from the list endpoint.

The official API lists recent tasks of a kind, newest first, up to 500 a page. When a
watcher's poll falls due and others of its kind are watching too, `ListedReads` reads list
pages instead of the one task: until every watched task has been seen, or a page holds
only tasks older than the oldest watched one, or the list ends. What the pages showed is
kept for the length of a `spacing`, so the polls of other watchers that fall due meanwhile
are answered without a request, and a watcher whose task changed status is woken at once
(`rest`). A task the pages did not show (deleted, lagging, older than the
pages read) is read alone, as is a task watched alone (one GET costs no more than a page).

All work happens inside the coroutines of the watchers that asked: the first whose poll
finds no fresh round runs one, the others wait for it, and a watcher cancelled while
running a round hands the next to whoever asks next. A list read that fails costs nobody
anything but a fall back to their own GET, inside their own deadline.

Under a rate limit, each request sent here (a page, a GET) takes its own slot, and a poll
answered from a page takes none: the watchers of a `ListedReads` wait for no slot of their
own.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Protocol

from ._clock import Clock
from .errors import APIError, KlingError
from .models import Task, TaskKind
from .policies import RetryPolicy
from .telemetry import log_fields

__all__ = ["ListedReads"]

log = logging.getLogger(__name__)  # a child of "kling_async"

#: Pages read in one round at most when some watched task's age is not known yet.
MAX_PAGES = 4

#: How long (in `spacing`s) a watcher waits for another's round before reading alone.
JOIN_SPACINGS = 5


class ReadOne(Protocol):
    """Reads one task (a GET); `retry` replaces the retry policy for that read."""

    def __call__(
        self, task_id: str, kind: TaskKind, *, retry: RetryPolicy | None = None
    ) -> Awaitable[Task]: ...


ReadPage = Callable[[TaskKind, int, int], Awaitable[Sequence[Task]]]


class ListedReads:
    """A task source for the watchers of one kind that reads list pages for many at once.

    `read_one` reads one task (a GET); `read_page(kind, number, size)` reads a page of the
    list, newest first. `spacing` (seconds) is the least time between two rounds of list
    reads, and how long what a round saw answers a poll.
    """

    def __init__(
        self,
        read_one: ReadOne,
        read_page: ReadPage,
        *,
        clock: Clock,
        spacing: float,
        page_size: int = 500,
    ) -> None:
        self._read_one = read_one
        self._read_page = read_page
        self._clock = clock
        self.spacing = spacing
        self.page_size = page_size
        self._resting: dict[str, list[asyncio.Future[None]]] = {}
        self._seen: dict[str, tuple[float, Task]] = {}  # what the last rounds saw, and when
        self._told: dict[str, str] = {}  # the status each watched task was last read in
        self._created: dict[str, datetime] = {}
        self._round: asyncio.Event | None = None  # set when the running round ends
        self._last_round = float("-inf")
        self._refused = False  # the list endpoint refused for good: no round is run again

    async def get_task(
        self,
        task_id: str,
        kind: TaskKind = TaskKind.VIDEO_EXTEND,
        *,
        retry: RetryPolicy | None = None,
    ) -> Task:
        """The task's current state: from a fresh round of list reads when one saw it, else
        read alone (with `retry` for its policy)."""
        task = self._fresh(task_id)
        if task is None and await self._join_round(kind, task_id):
            task = self._fresh(task_id)
        if task is None:
            task = await self._read_one(task_id, kind, retry=retry)
        self._note(task)
        return task

    async def rest(self, task_id: str, seconds: float) -> bool:
        """Sleep up to `seconds`, or until a round of list reads saw the task change status;
        True if woken."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._resting.setdefault(task_id, []).append(waiter)
        try:
            await self._until(waiter, seconds)
        finally:
            waiting = self._resting.get(task_id)
            if waiting is not None:
                waiting.remove(waiter)
                if not waiting:
                    del self._resting[task_id]
        return waiter.done() and not waiter.cancelled()

    @property
    def watched(self) -> frozenset[str]:
        """The tasks whose watchers rest here now."""
        return frozenset(self._resting)

    async def _until(self, awaited: Awaitable[object], seconds: float) -> None:
        """Wait for `awaited`, at most `seconds` on the clock (the sleep is ours, ended here)."""
        sleeper = asyncio.ensure_future(self._clock.sleep(seconds))
        waited = asyncio.ensure_future(awaited)
        try:
            await asyncio.wait((sleeper, waited), return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeper.cancel()
            if waited is not awaited:
                waited.cancel()

    def _fresh(self, task_id: str) -> Task | None:
        seen = self._seen.get(task_id)
        if seen is None or self._clock.monotonic() - seen[0] >= self.spacing:
            return None
        return seen[1]

    def _note(self, task: Task) -> None:
        """Remember what a watcher was told; forget a task once it ended."""
        if task.is_terminal:
            self._told.pop(task.id, None)
            self._created.pop(task.id, None)
            return
        self._told[task.id] = task.status_text
        if task.created_at is not None:
            self._created[task.id] = task.created_at

    async def _join_round(self, kind: TaskKind, task_id: str) -> bool:
        """Run a round of list reads, or wait (a while) for the running one; False
        when none ran: the last was too recent, or no other watcher would share it."""
        if self._round is not None:
            await self._until(self._round.wait(), JOIN_SPACINGS * self.spacing)
            return True
        if self._refused or not self._resting:
            return False
        if self._clock.monotonic() - self._last_round < self.spacing:
            return False
        self._round = asyncio.Event()
        self._last_round = self._clock.monotonic()
        self._seen.clear()  # all of it is older than `spacing` by now
        try:
            await self._read_pages(kind, {task_id, *self._resting})
        except KlingError as exc:
            fields = log_fields(request_id=getattr(exc, "request_id", None))
            # A refusal in the API's own words (no such endpoint here, no permission) will be
            # given again: asking each round would only add a request to every poll.
            self._refused = isinstance(exc, APIError) and exc.definitive and not exc.retryable
            later = "from now on" if self._refused else "this round"
            log.info(
                "a list read failed; watchers read their tasks alone %s: %s",
                later,
                exc,
                extra=fields,
            )
        finally:
            self._round.set()
            self._round = None
        return True

    async def _read_pages(self, kind: TaskKind, wanted: set[str]) -> None:
        """Read pages until every `wanted` task is seen or the pages are older than all."""
        # Forget tasks no watcher asks about any more (watches cancelled or timed out).
        self._told = {i: self._told[i] for i in wanted if i in self._told}
        self._created = {i: self._created[i] for i in wanted if i in self._created}
        known = [self._created[i] for i in wanted if i in self._created]
        oldest = min(known) if len(known) == len(wanted) and known else None
        for number in range(1, 1001):
            page = await self._read_page(kind, number, self.page_size)
            arrived = self._clock.monotonic()
            for task in page:  # all kept: a watcher not resting now may ask soon
                wanted.discard(task.id)
                self._saw(task, arrived)
            if not wanted or len(page) < self.page_size:
                return
            last = page[-1].created_at if page else None
            if oldest is None and number >= MAX_PAGES:
                return
            if oldest is not None and last is not None and last < oldest:
                return

    def _saw(self, task: Task, when: float) -> None:
        self._seen[task.id] = (when, task)
        if task.status_text != self._told.get(task.id):
            for waiter in self._resting.get(task.id, ()):
                if not waiter.done():
                    waiter.set_result(None)
        if task.is_terminal:
            self._told.pop(task.id, None)
