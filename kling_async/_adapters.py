"""The client as the engines below it see it: a batch's extender, a chain's backend and a
watcher's task source. Each satisfies the small protocol its engine declares, so `batch`,
`chain` and `watcher` never import the client.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterable, Callable
from contextlib import AbstractContextManager
from datetime import datetime
from pathlib import Path
from typing import Protocol

import anyio
import attrs

from ._clock import Clock
from ._dialects import DialectRules, task_path
from ._downloader import Downloader
from ._transport import Transport
from ._wire import structure_task
from .batch import Batch, BatchEvent, RetryHook
from .chain import JournalArgument
from .download import target_path
from .errors import KlingError, NotFoundError, TransportError
from .journal import JournalStore
from .models import CreateRequest, Task, TaskKind
from .policies import PollPolicy, RetryPolicy
from .telemetry import _Off, log_fields
from .watcher import TaskWatcher

__all__ = ["BatchExtender", "ChainBackend", "Facade", "WatcherReads"]

# The client's logger: these records were always the client's, and filters name it.
log = logging.getLogger("kling_async.client")


class Facade(Protocol):
    """What the adapters reach of `KlingClient` (its private parts included)."""

    @property
    def _dialect(self) -> DialectRules: ...
    @property
    def _clock(self) -> Clock: ...
    @property
    def _transport(self) -> Transport: ...
    @property
    def telemetry(self) -> _Off: ...

    async def submit(
        self, request: CreateRequest, *, retry: RetryPolicy | None = ..., resent: bool = ...
    ) -> Task: ...
    def watch(
        self,
        task_or_id: Task | str,
        *,
        poll: PollPolicy | None = ...,
        on_poll_error: Callable[[Exception], object] | None = ...,
    ) -> TaskWatcher: ...
    def prepare(self, request: CreateRequest) -> CreateRequest: ...
    async def find_created(self, request: CreateRequest) -> Task | None: ...
    async def get_task(self, task_id: str, kind: TaskKind = ...) -> Task: ...
    def extend_many(
        self,
        requests: AsyncIterable[CreateRequest],
        *,
        concurrency: int = ...,
        on_event: Callable[[BatchEvent], object] | None = ...,
        journal: JournalArgument = ...,
    ) -> Batch: ...
    def _expected_seconds(self, kind: TaskKind) -> float | None: ...
    @property
    def _downloader(self) -> Downloader: ...
    def _journal_store(self, journal: JournalArgument) -> tuple[JournalStore | None, bool]: ...


@attrs.frozen
class BatchExtender:
    """The client as a batch sees it: submit, and watch with the batch's poll policy."""

    client: Facade
    poll: PollPolicy | None
    download_to: Path | None = None

    async def submit(
        self, request: CreateRequest, *, retry: RetryPolicy, resent: bool = False
    ) -> Task:
        return await self.client.submit(request, retry=retry, resent=resent)

    def watch(self, task: Task, *, on_poll_error: RetryHook) -> TaskWatcher:
        return self.client.watch(task, poll=self.poll, on_poll_error=on_poll_error)

    def prepare(self, request: CreateRequest) -> CreateRequest:
        return self.client.prepare(request)

    async def find(self, request: CreateRequest) -> Task | None:
        return await self.client.find_created(request)

    def expected_seconds(self, kind: TaskKind) -> float | None:
        return self.client._expected_seconds(kind)

    async def fetch(self, request: CreateRequest, task: Task) -> tuple[Path, ...]:
        """Download each video not already on disk (a resumed batch replays its successes).

        A file is named after its input row (the request's key, else the video it extends)
        and the new video's id, so the user finds the row of each file."""
        if self.download_to is None:
            return ()
        files = []
        for video in task.videos:
            name = f"{_row_name(request)}_{video.id}"
            path = await anyio.to_thread.run_sync(target_path, self.download_to, name)
            exists = await anyio.to_thread.run_sync(path.exists)
            files.append(
                path if exists else await self.client._downloader.download(video, path, task)
            )
        return tuple(files)


#: The kinds of task whose videos a chain may start from.
_SOURCE_KINDS = (TaskKind.VIDEO_EXTEND, TaskKind.TEXT_TO_VIDEO, TaskKind.IMAGE_TO_VIDEO)


@attrs.frozen
class ChainBackend:
    """The client as the chain engine sees it."""

    client: Facade

    @property
    def needs_parent_task(self) -> bool:
        return self.client._dialect.needs_parent_task

    def prepare(self, request: CreateRequest) -> CreateRequest:
        return self.client.prepare(request)

    def run_batch(
        self,
        requests: AsyncIterable[CreateRequest],
        *,
        concurrency: int,
        journal: JournalArgument,
        on_event: Callable[[BatchEvent], object],
        scope: Callable[[CreateRequest], AbstractContextManager[object]],
    ) -> Batch:
        batch = self.client.extend_many(
            requests, concurrency=concurrency, journal=journal, on_event=on_event
        )
        return batch._within(scope)

    @property
    def telemetry(self) -> _Off:
        return self.client.telemetry

    def expected_seconds(self) -> float | None:
        return self.client._expected_seconds(TaskKind.VIDEO_EXTEND)

    def journal_store(self, journal: JournalArgument) -> tuple[JournalStore | None, bool]:
        return self.client._journal_store(journal)

    async def made_at(self, task_id: str) -> datetime | None:
        """When the task that made a source video was created, read under each kind that
        makes an extendable video (the id does not say which); None when it cannot be read."""
        for kind in _SOURCE_KINDS:
            try:
                return (await self.client.get_task(task_id, kind)).created_at
            except NotFoundError:
                continue
            except KlingError as exc:  # the server still refuses a source past 30 days
                fields = log_fields(task_id)
                log.info("the age of task %s's video is unknown: %s", task_id, exc, extra=fields)
                return None
        return None

    def now(self) -> float:
        return self.client._clock.time()


@attrs.frozen
class WatcherReads:
    """The client as its watchers read it. Tens of thousands of watchers may be waiting at
    once, so: a watcher waits for its slot of the rate limiter (if any) while it sleeps,
    where its stack is shallow, and the GET then takes none (`paced`); and the snapshot it
    keeps until the next poll shares its keys with every other one."""

    client: Facade
    paced: bool

    async def get_task(
        self,
        task_id: str,
        kind: TaskKind = TaskKind.VIDEO_EXTEND,
        *,
        retry: RetryPolicy | None = None,
    ) -> Task:
        path = task_path(kind, task_id)
        data = await self.client._transport.request("GET", path, paced=self.paced, retry=retry)
        task = structure_task(data, kind, share_keys=True)
        if task.id != task_id and task.external_task_id != task_id:
            # Another task's state (a gateway's cache gone wrong) is no news of this one: taken,
            # it would hand over another task's video, or stop a journaled batch as if one
            # request had made two tasks. A failed read: the watcher reads again later.
            raise TransportError(
                f"The server answered a read of task {task_id} with task {task.id[:80]}; "
                "the answer was ignored.",
                may_have_been_sent=True,
            )
        return task


_UNSAFE_IN_NAME = re.compile(r"[^A-Za-z0-9._-]+")


def _row_name(request: CreateRequest) -> str:
    """A file-name-safe name of a batch's input row: its key, else the video it extends."""
    row = request.key or getattr(request, "video_id", None) or "task"
    return _UNSAFE_IN_NAME.sub("_", row).strip("._")[:80] or "task"
