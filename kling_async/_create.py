"""The one path of every create request: checked before sending, sent once, never twice
blindly, and never a task lost.

A create is retried only when the server surely made nothing. An ambiguous outcome is
recovered by the request's external id where the dialect has them (official API), else
raised as `AmbiguousSubmissionError`. A create whose caller was cancelled while it was in
flight still runs to its answer, and a task it made becomes an `OrphanedTask`.
"""

from __future__ import annotations

import logging
import uuid
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import anyio
import attrs

from ._clock import Clock
from ._dialects import PATHS, Dialect, DialectRules
from ._transport import Abandoned, Transport, surely_not_created
from ._validate import create_problems
from ._wire import request_body, structure_task
from .batch import RetryHook
from .callbacks import CallbackReceiver
from .errors import (
    AmbiguousSubmissionError,
    APIError,
    ConfigurationError,
    InvalidArgumentError,
    InvalidRequestError,
    NotFoundError,
    TransportError,
)
from .models import (
    DEFAULT_VIDEO_MODEL,
    CreateRequest,
    OrphanedTask,
    Task,
    TaskKind,
    TextToVideoRequest,
    VideoExtendRequest,
    kind_of,
    subject_of,
)
from .policies import RetryPolicy
from .telemetry import log_fields

__all__ = ["Creator"]

# The client's logger: these records were always the client's, and filters name it.
log = logging.getLogger("kling_async.client")

_CALLED_BACK_KEPT = 100_000


@attrs.define
class Creator:
    """Submits create requests for one client: its transport, dialect, receiver and clock.

    `called_back` notes the tasks that will call the client's receiver (its watchers wait
    for their calls); `orphaned_tasks` keeps tasks made for callers who were cancelled.
    """

    transport: Transport
    rules: DialectRules
    dialect: Dialect
    clock: Clock
    retry: RetryPolicy
    callbacks: CallbackReceiver | None
    read: Callable[[str, TaskKind], Awaitable[Task]]
    on_orphaned_task: Callable[[OrphanedTask], object] | None
    orphaned_tasks: deque[OrphanedTask]
    called_back: OrderedDict[str, None]

    def prepare(self, request: CreateRequest) -> CreateRequest:
        """`request` checked against this dialect, with an external id added where useful.

        Raises `InvalidArgumentError` naming every problem; nothing is sent.
        """
        problems = create_problems(request, needs_parent_task=self.rules.needs_parent_task)
        if problems:
            raise InvalidArgumentError(
                f"Cannot {_doing(request)}: {'; '.join(problems)}. Nothing was sent."
            )
        if self.rules.finds_by_external_id and request.external_task_id is None:
            return attrs.evolve(request, external_task_id=f"ka-{uuid.uuid4().hex}")
        return request

    def _body(self, request: CreateRequest) -> dict[str, Any]:
        """The create body; the receiver's URL and the default model are added here, so
        neither is journaled (a resumed request stays equal to the one first given)."""
        body = request_body(request)
        if not isinstance(request, VideoExtendRequest) and request.model_name is None:
            body["model_name"] = DEFAULT_VIDEO_MODEL
        if self.callbacks is not None and self._uses_receiver(request):
            body["callback_url"] = self.callbacks.callback_url
        return body

    def _uses_receiver(self, request: CreateRequest) -> bool:
        """Whether the task will call back this client's receiver (not a URL of its own)."""
        receiving = self.callbacks is not None and self.callbacks.active
        return receiving and request.callback_url is None

    async def create(
        self,
        kind: TaskKind,
        request: CreateRequest,
        on_retry: RetryHook | None,
        retry: RetryPolicy | None,
        resent: bool,
    ) -> Task:
        """The one path of every create: send once, never twice blindly, never lose a task.

        Once sent, the create runs to its answer even if the caller is cancelled meanwhile; a
        task made for a caller who is gone becomes an `OrphanedTask`. An ambiguous outcome
        is recovered by external id where the dialect has them (see `_recover`).
        """
        try:
            data = await self.transport.request(
                "POST",
                PATHS[kind],
                body=self._body(request),
                resend_safe=False,
                on_retry=on_retry,
                retry=retry,
                on_abandoned=self._orphan_handler(kind, request),
            )
            task = structure_task(data, kind)
        except (APIError, TransportError) as exc:
            if not surely_not_created(exc):
                task = await self._recover(kind, request, exc, resent=resent)
            elif resent and self._adopts(exc):
                task = await self._adopt(request, exc)
            else:
                raise
        if self._uses_receiver(request):
            _remember(self.called_back, task.id)
        return task

    async def _recover(
        self, kind: TaskKind, request: CreateRequest, exc: Exception, *, resent: bool
    ) -> Task:
        """After an ambiguous create: the task it made, found by its external id; else, when
        it surely made none, the same request sent once more under the same external id (the
        API keeps external ids unique, so a late first attempt makes that resend fail, and the
        failure adopts its task). Raises `AmbiguousSubmissionError` when it cannot tell."""
        try:
            with self._told_if_cancelled(request, exc):
                task = await (self.find_created(request) if resent else self._settle(request))
        except AmbiguousSubmissionError:
            raise AmbiguousSubmissionError(request, str(exc)) from exc
        except (APIError, TransportError, ConfigurationError) as lookup_error:
            reason = f"{exc} Looking it up by external id failed too: {lookup_error}"
            raise AmbiguousSubmissionError(request, reason) from exc
        if task is not None:
            log.warning(
                "recovered task %s (%s) by its external id",
                task.id,
                subject_of(request),
                extra=log_fields(task.id, request.key),
            )
            return task
        if resent:
            reason = f"{exc} No task with external id {request.external_task_id} exists yet"
            raise AmbiguousSubmissionError(request, reason) from exc
        log.warning(
            "the create for %s made no task (%s); sending it again under external id %s",
            subject_of(request),
            exc,
            request.external_task_id,
            extra=log_fields(None, request.key, getattr(exc, "request_id", None)),
        )
        return await self.create(kind, request, None, None, resent=True)

    def _adopts(self, refusal: Exception) -> bool:
        """Whether a resend's refusal may be its external id being taken (official API)."""
        return isinstance(refusal, InvalidRequestError) and self.rules.finds_by_external_id

    async def _adopt(self, request: CreateRequest, refusal: APIError | TransportError) -> Task:
        """A resend refused because its external id is taken: the task of the first attempt.

        Raises the refusal itself when no task holds the external id (it was about something
        else), and `AmbiguousSubmissionError` when the look-up fails.
        """
        try:
            with self._told_if_cancelled(request, refusal):
                task = await self.find_created(request)
        except (APIError, TransportError, ConfigurationError) as lookup_error:
            reason = f"{refusal} Looking the task up by external id failed: {lookup_error}"
            raise AmbiguousSubmissionError(request, reason) from refusal
        if task is None:
            raise refusal
        log.warning(
            "task %s (%s) was made by an earlier attempt (external id %s): adopted",
            task.id,
            subject_of(request),
            request.external_task_id,
            extra=log_fields(task.id, request.key),
        )
        return task

    async def _settle(self, request: CreateRequest) -> Task | None:
        """The task an unanswered create of `request` made; None when surely none was.

        Looked up by external id, and once more `RetryPolicy.lookup_grace` seconds later: a
        server still busy with the create may not know its external id at once. Raises
        `AmbiguousSubmissionError` where tasks cannot be looked up so (gateways).
        """
        task = await self.find_created(request)
        if task is None:
            await self.clock.sleep(self.retry.lookup_grace)
            task = await self.find_created(request)
        return task

    @contextmanager
    def _told_if_cancelled(self, request: CreateRequest, why: Exception) -> Iterator[None]:
        """Log a cancellation that cuts short the look-up of a create's task: the task may
        exist and be paid for, and its external id (made up here) is the way to find it."""
        try:
            yield
        except anyio.get_cancelled_exc_class():
            log.warning(
                "the create for %s was cancelled while its task was being looked up by its "
                "external id %s; it may have made a task (its answer was lost: %s)",
                subject_of(request),
                request.external_task_id,
                str(why).rstrip("."),
                extra=log_fields(None, request.key, getattr(why, "request_id", None)),
            )
            raise

    def _orphan_handler(self, kind: TaskKind, request: CreateRequest) -> Abandoned:
        """What to do with the answer of a create whose caller was cancelled meanwhile."""

        def abandoned(data: Any, error: APIError | TransportError | None) -> None:
            if error is not None:
                if not surely_not_created(error):
                    log.warning(
                        "the create for %s was cancelled while in flight and its answer was "
                        "lost (%s); it may have made a task (external id %s)",
                        subject_of(request),
                        error,
                        request.external_task_id or "none",
                        extra=log_fields(None, request.key, getattr(error, "request_id", None)),
                    )
                return
            try:
                task = structure_task(data, kind)
            except (APIError, TransportError) as unreadable:
                log.warning(
                    "the create for %s was cancelled while in flight; its answer could not "
                    "be read (%s)",
                    subject_of(request),
                    unreadable,
                    extra=log_fields(None, request.key),
                )
                return
            self._adopt_orphan(OrphanedTask(task, request))

        return abandoned

    def _adopt_orphan(self, orphan: OrphanedTask) -> None:
        """Log, keep and hand over a task made for a caller who is gone."""
        log.warning(
            "task %s (%s) was created for a caller that was cancelled meanwhile; it runs "
            "and is paid for: find it in KlingClient.orphaned_tasks",
            orphan.task.id,
            subject_of(orphan.request),
            extra=log_fields(orphan.task.id, orphan.request.key),
        )
        if self._uses_receiver(orphan.request):
            _remember(self.called_back, orphan.task.id)
        self.orphaned_tasks.append(orphan)
        if self.on_orphaned_task is not None:
            try:
                self.on_orphaned_task(orphan)
            except Exception:
                log.exception(
                    "on_orphaned_task failed for task %s",
                    orphan.task.id,
                    extra=log_fields(orphan.task.id, orphan.request.key),
                )

    async def find_created(self, request: CreateRequest) -> Task | None:
        """The task a create of `request` made, found by its external id (official API).

        None when no such task exists. The API keeps external ids unique per account, so a
        create sent again with the same external id cannot make a second task. Raises
        `AmbiguousSubmissionError` where tasks cannot be looked up this way (gateways).
        """
        if not (self.rules.finds_by_external_id and request.external_task_id):
            raise AmbiguousSubmissionError(
                request,
                f"the {self.dialect} dialect cannot look a task up by an external id",
            )
        try:
            task = await self.read(request.external_task_id, kind_of(request))
        except NotFoundError:
            return None
        if task.external_task_id not in (None, request.external_task_id):
            # Another request's task (a gateway's cache gone wrong): adopting it would hand
            # over another video, and leave this request's task, if any, for nobody.
            raise TransportError(
                f"The look-up of external id {request.external_task_id} was answered with "
                f"task {task.id}, of external id {task.external_task_id[:80]}.",
                may_have_been_sent=True,
            )
        return task


def _remember(memory: OrderedDict[str, None], task_id: str) -> None:
    """Note a task that calls this client back (the oldest are forgotten past a bound)."""
    memory[task_id] = None
    if len(memory) > _CALLED_BACK_KEPT:
        memory.popitem(last=False)


def _doing(request: CreateRequest) -> str:
    """What submitting `request` would do, for an error message."""
    if isinstance(request, VideoExtendRequest):
        return f"extend video {request.video_id!r}"
    if isinstance(request, TextToVideoRequest):
        return "make a video from text"
    return "make a video from an image"
