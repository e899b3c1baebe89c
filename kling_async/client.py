"""`KlingClient`: the facade users hold. Endpoints, dialects, validation, and ownership.

The client checks every argument before anything is sent, speaks either dialect from one
table, and owns the pieces it wires together (transport, rate limiter, session), so one
``async with`` closes everything it opened.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import random
import uuid
from collections import OrderedDict, deque
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Callable,
    Iterable,
    Mapping,
    Sequence,
)
from contextlib import aclosing
from decimal import Decimal
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

import aiohttp
import anyio
import attrs
from anyio.abc import TaskGroup

from ._adapters import BatchExtender, ChainBackend, WatcherReads
from ._clock import Clock, SystemClock
from ._create import Creator
from ._dialects import (
    DEFAULT_BASE_URL,
    DIALECTS,
    PATHS,
    Dialect,
    checked_task_id,
    checked_task_path,
    choose_dialect,
    normalise_base_url,
)
from ._downloader import Downloader, download_folder, video_of
from ._images import image_argument
from ._listed import ListedReads
from ._ratelimit import RateLimiter
from ._transport import Transport
from ._wire import structure_task, structure_tasks
from .auth import Auth, BearerAuth, JWTAuth
from .batch import (
    Batch,
    BatchEvent,
    BatchOutcome,
    ConcurrencyWindow,
    RetryHook,
    _Run,
    refuse_shared_keys,
)
from .callbacks import CallbackReceiver
from .chain import (
    Chain,
    ChainEvent,
    ChainOutcome,
    ChainRequest,
    NewVideo,
    StepLengths,
    check_chain,
    run_chains,
)
from .download import (
    PUBLIC_ONLY,
    DownloadProgress,
    target_path,
)
from .errors import (
    SETTING_NAMES,
    ConfigurationError,
    InvalidArgumentError,
    KlingError,
)
from .journal import Journal, JournalStore
from .models import (
    CreateRequest,
    ImageToVideoRequest,
    OrphanedTask,
    Task,
    TaskKind,
    TextToVideoRequest,
    Video,
    VideoExtendRequest,
    kind_of,
)
from .policies import CompletionTimes, PollPolicy, RetryBudget, RetryPolicy
from .telemetry import Telemetry, telemetry_for
from .watcher import TaskSource, TaskWatcher

if TYPE_CHECKING:
    from opentelemetry.metrics import MeterProvider
    from opentelemetry.trace import TracerProvider

    from .postgres import Coordination, PostgresJournal

__all__ = ["DEFAULT_BASE_URL", "Dialect", "KlingClient"]

log = logging.getLogger(__name__)  # a child of "kling_async"

_ONCE = RetryPolicy(max_attempts=1)  # a list page is not worth a retry: single reads are
_CREDENTIALS = ("api_key", "access_key", "secret_key")

#: How many orphaned tasks `KlingClient.orphaned_tasks` keeps (the oldest go first).
ORPHANS_KEPT = 1000


class KlingClient:
    """An asyncio client for the Kling video API, official endpoint or gateway.

    One client per process is the norm: it holds one HTTP session and one account-wide rate
    limiter shared by every call. Use it as an async context manager (or call `aclose`).
    On the official API, watchers of one kind read the list endpoint's pages together, one
    page for up to 500 tasks, when more than one is watching (`list_reads=False` turns that
    off: one GET per poll, as on gateways).

    Every retry of every request is paid for from one `RetryBudget` (``retry_budget``): in
    an outage failures surface at once instead of multiplying the load, and watchers space
    their polls out towards `RetryPolicy.max_delay` until reads succeed again.

    A create request, once sent, is never cut short: if its caller is cancelled meanwhile,
    the client still awaits the answer (at most `timeout` seconds), and a task it names is
    logged (WARNING), kept in `orphaned_tasks` and passed to `on_orphaned_task`.

    >>> async with KlingClient(api_key="...", base_url="https://api.example-gateway.com") as c:
    ...     task = await c.extend_video("vid_1", task_id="task_1", prompt="keep walking")
    ... # doctest: +SKIP
    """

    def __init__(
        self,
        *,
        api_key: str | None = None,
        access_key: str | None = None,
        secret_key: str | None = None,
        base_url: str | None = None,
        dialect: Dialect | None = None,
        retry: RetryPolicy | None = None,
        retry_budget: RetryBudget | None = None,
        poll: PollPolicy | None = None,
        requests_per_second: float | None = None,
        timeout: float = 30.0,
        on_orphaned_task: Callable[[OrphanedTask], object] | None = None,
        session: aiohttp.ClientSession | None = None,
        clock: Clock | None = None,
        callbacks: CallbackReceiver | None = None,
        database_url: str | None = None,
        parallel_tasks: int | None = None,
        lease: float | None = None,
        namespace: str = "default",
        list_reads: bool = True,
        allow_private_downloads: bool = False,
        telemetry: Telemetry | bool | None = None,
        tracer_provider: TracerProvider | None = None,
        meter_provider: MeterProvider | None = None,
    ) -> None:
        self._clock: Clock = clock or SystemClock()
        self.callbacks = callbacks
        #: Tasks created for callers who were cancelled while their create was in flight
        #: (the last `ORPHANS_KEPT`); ``on_orphaned_task`` hears of each as it comes.
        self.orphaned_tasks: deque[OrphanedTask] = deque(maxlen=ORPHANS_KEPT)
        self.base_url = normalise_base_url(DEFAULT_BASE_URL if base_url is None else base_url)
        self.dialect: Dialect = choose_dialect(dialect, self.base_url)
        self._dialect = DIALECTS[self.dialect]
        self.poll = poll or PollPolicy()
        self.retry = retry or RetryPolicy()
        self._completion: dict[TaskKind, CompletionTimes] = {}
        self._step_lengths = StepLengths()
        self._rng = random.Random()
        self._tasks: TaskGroup | None = None
        self._called_back: OrderedDict[str, None] = OrderedDict()
        # Spans and metrics on the application's providers (the global ones unless given),
        # when opentelemetry-api is installed and `telemetry` is not False.
        self.telemetry = telemetry_for(telemetry, tracer_provider, meter_provider)
        if callbacks is not None:
            self.telemetry.count_callbacks(callbacks.stats)
        # Indexed by "the client has a rate limiter": the watchers then take their own slots.
        self._watcher_reads = (WatcherReads(self, paced=False), WatcherReads(self, paced=True))
        self._list_reads = list_reads
        self._listed: dict[TaskKind, ListedReads] = {}
        if not _is_positive(timeout):
            raise ConfigurationError(f"timeout must be a positive number, not {timeout!r}")
        limiter = None
        if requests_per_second is not None:
            if not _is_positive(requests_per_second):
                name = SETTING_NAMES.get().requests_per_second
                raise ConfigurationError(
                    f"{name} must be a positive number, not {requests_per_second!r}."
                )
            limiter = RateLimiter(requests_per_second, clock=self._clock)
        self._transport = Transport(
            base_url=self.base_url + self._dialect.prefix,
            auth=self._make_auth(api_key, access_key, secret_key),
            clock=self._clock,
            retry=self.retry,
            budget=retry_budget or RetryBudget(),
            timeout=timeout,
            limiter=limiter,
            session=session,
            hidden=(callbacks.path.rsplit("/", 1)[-1],) if callbacks is not None else (),
            telemetry=self.telemetry,
        )
        self._creator = Creator(
            self._transport,
            self._dialect,
            self.dialect,
            self._clock,
            self.retry,
            callbacks,
            read=self.get_task,
            on_orphaned_task=on_orphaned_task,
            orphaned_tasks=self.orphaned_tasks,
            called_back=self._called_back,
        )
        self._downloader = Downloader(
            self._transport,
            None if allow_private_downloads else PUBLIC_ONLY,
            self.retry,
            self._clock,
            self.telemetry,
            read=self.get_task,
        )
        self.namespace = namespace
        self._keyed: PostgresJournal | None = None
        self.coordination = (
            _coordination(database_url, self._account(), parallel_tasks, lease, self._clock)
            if database_url
            else None
        )
        if self.coordination is not None and requests_per_second is not None:
            # The rate is the account's: every process of the database keeps to it together.
            self._transport.limiter = self.coordination.request_rate(requests_per_second)
        if self.coordination is not None:
            self.coordination.telemetry = self.telemetry  # the account's slot waits
            # Task durations learned by any process of the account serve them all.
            self.coordination.completion = self._completion

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Self:
        """A client configured from ``KLING_*`` variables; keyword arguments win over them.

        Reads ``KLING_API_KEY`` (or ``KLING_ACCESS_KEY`` and ``KLING_SECRET_KEY``),
        ``KLING_BASE_URL``, ``KLING_DIALECT`` and ``KLING_DATABASE_URL``. A credential given
        as an argument replaces the environment's credentials; a key and a key pair both set in
        the environment, or a ``KLING_BASE_URL`` set but empty, raise `ConfigurationError`.

        >>> client = KlingClient.from_env()  # doctest: +SKIP
        """
        env = os.environ if environ is None else environ
        settings: dict[str, Any] = {
            "base_url": env.get("KLING_BASE_URL"),
            "dialect": env.get("KLING_DIALECT") or None,
            "database_url": env.get("KLING_DATABASE_URL") or None,
        }
        if not any(overrides.get(name) for name in _CREDENTIALS):
            settings |= {name: env.get(f"KLING_{name.upper()}") or None for name in _CREDENTIALS}
        settings.update(overrides)
        return cls(**settings)

    def _make_auth(self, api_key: str | None, access_key: str | None, secret: str | None) -> Auth:
        names = SETTING_NAMES.get()
        pair = f"{names.access_key} and {names.secret_key}"
        if api_key and (access_key or secret):
            raise ConfigurationError(f"Give either {names.api_key} or {pair}, not both.")
        if api_key:
            return BearerAuth(api_key)
        if access_key and secret:
            if not self._dialect.allows_jwt:
                raise ConfigurationError(
                    f"The {self.dialect} dialect takes {names.api_key}; access and secret keys "
                    f"are for the official API: set {names.dialect} to official."
                )
            return JWTAuth(access_key, secret, clock=self._clock)
        if access_key or secret:
            missing = names.secret_key if access_key else names.access_key
            raise ConfigurationError(f"An access key pair needs both keys; {missing} is missing.")
        raise ConfigurationError(
            f"No credentials: give {names.api_key}, or {pair} for the official API."
        )

    def _account(self) -> str:
        """The name the account's shared limits go by: a digest of the endpoint and the
        credential (never the credential itself)."""
        identity = f"{self.base_url}\n{self._transport.auth.secrets()[0]}"
        return "account:" + hashlib.sha256(identity.encode()).hexdigest()[:24]

    def __repr__(self) -> str:
        return (
            f"KlingClient(dialect={self.dialect!r}, base_url={self.base_url!r}, "
            f"auth={self._transport.auth!r})"
        )

    async def __aenter__(self) -> Self:
        if self._tasks is not None:
            raise RuntimeError("this KlingClient is already open; use one `async with` per client")
        self._transport.closed = False
        if self.coordination is not None:
            await self.coordination.open()
            if self.callbacks is not None:
                self.coordination.share_hints(self.callbacks)
        self._tasks = anyio.create_task_group()
        await self._tasks.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        tasks, self._tasks = self._tasks, None
        try:
            if tasks is not None:
                tasks.cancel_scope.cancel()
                # The body's own exception is not the task group's business: handing it over
                # would wrap it in an ExceptionGroup, and `except NotFoundError` would miss it.
                await tasks.__aexit__(None, None, None)
        finally:
            self._keyed = None  # its lease keeper stopped with the task group
            with anyio.CancelScope(shield=True):
                await self.aclose()

    def _task_group(self, doing: str) -> TaskGroup:
        """The client's task group; `ConfigurationError` outside its ``async with``."""
        if self._tasks is None:
            raise ConfigurationError(
                f"{doing} runs inside the client's context: "
                "`async with KlingClient(...) as client:`."
            )
        return self._tasks

    async def aclose(self) -> None:
        """Close the HTTP session if the client made it (a session you passed stays open).

        Background work (batches) stops when the ``async with`` block of the client ends.
        """
        try:
            await self._transport.close()
            await self._downloader.close()
        finally:
            if self.coordination is not None:
                await self.coordination.close()

    async def extend_video(
        self,
        video_id: str,
        *,
        task_id: str | None = None,
        prompt: str | None = None,
        negative_prompt: str | None = None,
        cfg_scale: float | None = None,
        callback_url: str | None = None,
        external_task_id: str | None = None,
        key: str | None = None,
    ) -> Task:
        """Submit the extension of `video_id`; return the new task (status `submitted`).

        On a gateway, `task_id` (the task that produced the video) is required. On the
        official API an `external_task_id` is made up when none is given, so a create whose
        answer was lost can be found again instead of being paid twice.

        Raises `InvalidArgumentError` before sending anything when an argument is wrong, and
        `AmbiguousSubmissionError` when the server may have made the task but the client
        cannot tell (it is never re-sent blindly). On the official API an unanswered create is
        looked up by its external id (twice, `RetryPolicy.lookup_grace` apart) and, if it made
        nothing, sent once more under the same external id.

        Cancelled while the create is in flight, the call still waits for its answer (at most
        the client's `timeout`) before the cancellation goes on; a task made all the same is
        reported as an `OrphanedTask` (see `KlingClient.orphaned_tasks`).

        With a database (``database_url``), a `key` makes the submission idempotent across
        processes: the task already submitted under that key (by any process of the
        database, in the client's `namespace`) is returned instead of paying again.

        >>> task = await client.extend_video("vid_1", prompt="the sun sets")  # doctest: +SKIP
        """
        request = VideoExtendRequest(
            video_id,
            task_id=task_id,
            prompt=prompt,
            negative_prompt=negative_prompt,
            cfg_scale=cfg_scale,
            callback_url=callback_url,
            external_task_id=external_task_id,
            key=key,
        )
        if key is not None and self.coordination is not None:
            return await self._submit_once(key, request)
        return await self.submit(request)

    async def _submit_once(self, key: str, request: CreateRequest) -> Task:
        """Submit under `key` through the database: one task per key in all processes."""
        from .postgres.keyed import submit_once

        if self._keyed is None:
            tasks = self._task_group("A keyed submission")
            self._keyed = self.coordination.journal(self.namespace)  # type: ignore[union-attr]
            tasks.start_soon(self._keyed.hold)  # its claims live as long as the client
        return await submit_once(
            self._keyed,
            key,
            self.prepare(request),
            submit=self.submit,
            find=self.find_created,
            orphans=self.orphaned_tasks,
        )

    async def text_to_video(
        self,
        prompt: str,
        *,
        model_name: str | None = None,
        negative_prompt: str | None = None,
        cfg_scale: float | None = None,
        mode: str | None = None,
        aspect_ratio: str | None = None,
        duration: int | None = None,
        callback_url: str | None = None,
        external_task_id: str | None = None,
    ) -> Task:
        """Submit a text-to-video task; return it (status `submitted`).

        Without `model_name` the video is made by `DEFAULT_VIDEO_MODEL`, a model whose videos
        can be extended. `duration` is 5 or 10 seconds (the API's default is 5), `mode`
        ``"std"`` or ``"pro"``, `aspect_ratio` ``"16:9"``, ``"9:16"`` or ``"1:1"``. Checked
        and sent as `extend_video` is: nothing is sent for a wrong argument, and a create
        whose answer was lost is never paid twice.

        >>> task = await client.text_to_video("a paper boat on a stream")  # doctest: +SKIP
        >>> task = await client.watch(task)  # doctest: +SKIP
        """
        request = TextToVideoRequest(
            prompt,
            model_name=model_name,
            negative_prompt=negative_prompt,
            cfg_scale=cfg_scale,
            mode=mode,
            aspect_ratio=aspect_ratio,
            duration=duration,
            callback_url=callback_url,
            external_task_id=external_task_id,
        )
        return await self.submit(request)

    async def image_to_video(
        self,
        image: str | os.PathLike[str],
        *,
        prompt: str | None = None,
        image_tail: str | os.PathLike[str] | None = None,
        model_name: str | None = None,
        negative_prompt: str | None = None,
        cfg_scale: float | None = None,
        mode: str | None = None,
        duration: int | None = None,
        callback_url: str | None = None,
        external_task_id: str | None = None,
    ) -> Task:
        """Submit an image-to-video task from `image` (the first frame); return the task.

        `image` and `image_tail` (the last frame) are each an http(s) URL, a local file
        (read and sent as base64; at most 10 MB) or base64 text. The other arguments are
        those of `text_to_video`.

        >>> task = await client.image_to_video("cat.png", prompt="the cat yawns")  # doctest: +SKIP
        """
        request = ImageToVideoRequest(
            await image_argument(image, "image"),
            prompt=prompt,
            image_tail=None
            if image_tail is None
            else await image_argument(image_tail, "image_tail"),
            model_name=model_name,
            negative_prompt=negative_prompt,
            cfg_scale=cfg_scale,
            mode=mode,
            duration=duration,
            callback_url=callback_url,
            external_task_id=external_task_id,
        )
        return await self.submit(request)

    async def submit(
        self,
        request: CreateRequest,
        *,
        on_retry: RetryHook | None = None,
        retry: RetryPolicy | None = None,
        resent: bool = False,
    ) -> Task:
        """Submit one create request: a `VideoExtendRequest` (what `extend_video` does with
        its arguments), a `TextToVideoRequest` or an `ImageToVideoRequest`.

        `on_retry(error)` hears of each retry of the create request; `retry` replaces the
        client's policy for it. `resent=True` says the request (under the same external id)
        may have been sent before: an answer that its external id is taken then adopts the
        task that holds it.
        """
        prepared = self.prepare(request)
        return await self._creator.create(kind_of(prepared), prepared, on_retry, retry, resent)

    def prepare(self, request: CreateRequest) -> CreateRequest:
        """`request` checked against this dialect, with an external id added where useful.

        Raises `InvalidArgumentError` naming every problem; nothing is sent.
        """
        return self._creator.prepare(request)

    async def find_created(self, request: CreateRequest) -> Task | None:
        """The task a create of `request` made, found by its external id (official API).

        None when no such task exists. The API keeps external ids unique per account, so a
        create sent again with the same external id cannot make a second task. Raises
        `AmbiguousSubmissionError` where tasks cannot be looked up this way (gateways).
        """
        return await self._creator.find_created(request)

    async def get_task(
        self,
        task_id: str,
        kind: TaskKind = TaskKind.VIDEO_EXTEND,
        *,
        retry: RetryPolicy | None = None,
    ) -> Task:
        """The task's current state. On the official API `task_id` may be its external id.

        `retry` replaces the client's retry policy for this read.

        >>> task = await client.get_task("8742...")  # doctest: +SKIP
        """
        path = checked_task_path(kind, task_id)
        data = await self._transport.request("GET", path, retry=retry)
        return structure_task(data, kind)

    async def list_tasks(
        self, kind: TaskKind = TaskKind.VIDEO_EXTEND, *, page_size: int = 30
    ) -> AsyncIterator[Task]:
        """Recent tasks of `kind`, newest first, page by page (official API only).

        >>> async for task in client.list_tasks():  # doctest: +SKIP
        ...     print(task.id, task.status)
        """
        if not self._dialect.can_list:
            raise ConfigurationError(
                f"The {self.dialect} dialect has no list endpoint; read tasks one by one "
                "with get_task."
            )
        if (
            isinstance(page_size, bool)
            or not isinstance(page_size, int)
            or not 1 <= page_size <= 500
        ):
            raise InvalidArgumentError(
                f"page_size must be a whole number from 1 to 500, not {page_size!r}."
            )
        for page in range(1, 1001):
            tasks = await self._read_page(kind, page, page_size, retry=None)
            for task in tasks:
                yield task
            if len(tasks) < page_size:
                return

    def watch(
        self,
        task_or_id: Task | str,
        *,
        poll: PollPolicy | None = None,
        timeout: float | None = None,
        kind: TaskKind = TaskKind.VIDEO_EXTEND,
        on_poll_error: Callable[[Exception], object] | None = None,
    ) -> TaskWatcher:
        """A `TaskWatcher` for a task (or a task id): await it, or iterate its changes.

        `poll` replaces the client's `PollPolicy`, `timeout` just its deadline. Watchers of a
        client share what it learned of how long tasks take, and its rate limiter.

        >>> task = await client.watch(task)  # doctest: +SKIP
        """
        policy = poll or self.poll
        if timeout is not None:
            policy = attrs.evolve(policy, timeout=timeout)
        if isinstance(task_or_id, Task):
            kind = task_or_id.kind
            task_id = checked_task_id(task_or_id.id)
            if task_id != task_or_id.id:
                task_or_id = attrs.evolve(task_or_id, id=task_id)
        else:
            task_or_id = task_id = checked_task_id(task_or_id)
        limiter = self._transport.limiter
        source = self._reads_for(kind, paced=limiter is not None)
        return TaskWatcher(
            source,
            task_or_id,
            kind=kind,
            policy=policy,
            clock=self._clock,
            learned=self._completion.setdefault(kind, CompletionTimes()),
            telemetry=self.telemetry,
            rng=self._rng,
            on_poll_error=on_poll_error,
            # Only tasks created here with the receiver's URL will call it back; any other
            # task (its own URL, another process's, an earlier run's) is polled normally.
            wakeups=self.callbacks if task_id in self._called_back else None,
            # List reads take their slots request by request: a poll a page answered takes none.
            pacer=None if isinstance(source, ListedReads) else limiter,
            backoff=self.retry,
        )

    def _reads_for(self, kind: TaskKind, *, paced: bool) -> TaskSource:
        """Where watchers of `kind` read: the list endpoint's pages for many at once where
        the dialect has one (and `list_reads` is on), else one GET per poll (taking no slot
        of the rate limiter when `paced`: the watcher took it).

        List reads are never paced by the watcher: each request they send (a page, or a GET
        for a task the pages did not show) takes its own slot, and a poll answered from a
        page takes none."""
        if not (self._list_reads and self._dialect.can_list):
            return self._watcher_reads[paced]
        listed = self._listed.get(kind)
        if listed is None:
            listed = ListedReads(
                self._watcher_reads[False].get_task,
                self._read_page,
                clock=self._clock,
                spacing=self.poll.min_interval,
            )
            self._listed[kind] = listed
        return listed

    async def _read_page(
        self, kind: TaskKind, number: int, size: int, *, retry: RetryPolicy | None = _ONCE
    ) -> list[Task]:
        """One page of the list of `kind`; for watchers tried once, as a failure falls back to
        single reads (`retry=None`: the client's policy)."""
        params = {"pageNum": number, "pageSize": size}
        data = await self._transport.request("GET", PATHS[kind], params=params, retry=retry)
        return structure_tasks(data, kind)

    async def extend_and_wait(
        self,
        video_id: str,
        *,
        poll: PollPolicy | None = None,
        timeout: float | None = None,
        **arguments: Any,
    ) -> Task:
        """Extend `video_id` and wait for the result: the succeeded task.

        Takes `extend_video`'s arguments; raises `TaskFailedError` if the task fails and
        `WatchTimeoutError` if it outlives the deadline (the task id is in the error).

        >>> task = await client.extend_and_wait("vid_1", prompt="dolly in")  # doctest: +SKIP
        >>> task.videos[0].url  # doctest: +SKIP
        """
        task = await self.extend_video(video_id, **arguments)
        return await self.watch(task, poll=poll, timeout=timeout)

    async def download(
        self,
        video_or_task: Video | Task,
        dest: str | os.PathLike[str],
        *,
        on_progress: Callable[[DownloadProgress], object] | None = None,
    ) -> Path:
        """Download a result video to `dest` (a folder, or the file's path); return the path.

        Given a task, its first video is downloaded (the task must have succeeded); a missing
        folder is made. The file appears under its final name only when complete; a cut
        connection resumes where it stopped. Result URLs expire: given a task, a link answered
        403, 404 or 410 is refreshed by reading the task again, and the download tried once
        more (a `Video` alone has no task to read). Unless the client was made with
        ``allow_private_downloads=True``, a URL (or a redirect) that leads to a loopback,
        private, link-local or otherwise non-public address is refused before connecting,
        with a `DownloadError`.

        >>> path = await client.download(task, "videos/")  # doctest: +SKIP
        """
        video = video_of(video_or_task)
        path = await anyio.to_thread.run_sync(target_path, dest, video.id)
        task = video_or_task if isinstance(video_or_task, Task) else None
        return await self._downloader.download(video, path, task, on_progress)

    def _expected_seconds(self, kind: TaskKind) -> float | None:
        """The median time tasks of `kind` took here (None before one ended): for ETAs."""
        times = self._completion.get(kind)
        return times.quantile(0.5) if times else None

    def extend_many(
        self,
        requests: Iterable[CreateRequest] | AsyncIterable[CreateRequest],
        *,
        concurrency: int = 8,
        fail_fast: bool = False,
        on_event: Callable[[BatchEvent], object] | None = None,
        poll: PollPolicy | None = None,
        download_to: str | os.PathLike[str] | None = None,
        journal: JournalStore | str | os.PathLike[str] | None = None,
    ) -> Batch:
        """Extend many videos, at most `concurrency` tasks in flight; outcomes as they end.

        Returns a `Batch`: ``async for outcome in client.extend_many(requests)`` yields one
        `BatchOutcome` per request in completion order. A failure does not stop the others
        unless `fail_fast` (then no further request is taken; tasks already created are
        still watched to their end and reported). An authentication, balance or account
        error (1100, 1304) stops the sending, since every next create would fail alike:
        each request not sent yet still gets its outcome, with `NotSentError`. `on_event`
        receives `BatchEvent`s (submitted, status, retried, finished) for progress displays.
        With `download_to` (a folder), each result video is downloaded as its task succeeds
        (`BatchOutcome.files`; a failed download is the outcome's `error`).

        Requests are told apart by `key`: two requests with one key (or, with a journal, two
        identical requests without keys) raise `InvalidArgumentError` here, before anything
        is sent; from a stream (an iterator, an async iterable) the later one is refused as
        its outcome.

        With `journal` (a `Journal` or a file path), every request is journaled before it is
        sent, and a run over the same journal resumes: finished requests are replayed, not
        sent; created tasks are watched again; a create whose answer was never recorded is
        found by its external id (official API) or reported as `AmbiguousSubmissionError`,
        never sent blindly again. Needs the client's ``async with``.

        With a database (``database_url``), `journal` names the batch's namespace in the
        shared journal (a fresh one when None): every process that runs the same requests
        under the same name shares the work, and the account's `parallel_tasks` quota.

        >>> async with client.extend_many(requests, concurrency=20) as batch:  # doctest: +SKIP
        ...     async for outcome in batch:
        ...         print(outcome.ok)
        """
        tasks = self._task_group("extend_many")
        journaled = journal is not None or self.coordination is not None  # as chosen below
        refuse_shared_keys(requests, journaled=journaled)
        # No buffer: a reader who stops reading holds every slot, so no new task is created.
        send, receive = anyio.create_memory_object_stream[BatchOutcome](0)
        run = _Run(
            extender=BatchExtender(self, poll, download_folder(download_to)),
            window=ConcurrencyWindow(concurrency),
            send=send,
            clock=self._clock,
            retry=self.retry,
            fail_fast=fail_fast,
            on_event=on_event,
            telemetry=self.telemetry,
        )
        store, run.owns_journal = self._journal_store(journal)
        if store is not None:
            run.journal = store
        return Batch(run, requests, receive, tasks.start_soon)

    def _journal_store(
        self, journal: JournalStore | str | os.PathLike[str] | None
    ) -> tuple[JournalStore | None, bool]:
        """The journal a batch keeps (None: none), and whether the batch opened it and so
        closes it: a file path's, or a namespace of the database's (a fresh one for None)."""
        if self.coordination is not None and isinstance(journal, str | None):
            return self.coordination.journal(journal or f"batch-{uuid.uuid4().hex}"), True
        if isinstance(journal, str | os.PathLike):
            return Journal(journal), True
        return journal, False

    async def extend_chain(
        self,
        video_id: str | TextToVideoRequest | ImageToVideoRequest,
        *,
        task_id: str | None = None,
        steps: int | None = None,
        until: float | Decimal | None = None,
        prompt: str | None = None,
        prompts: Sequence[str] | None = None,
        journal: Journal | str | os.PathLike[str] | None = None,
        on_event: Callable[[ChainEvent], object] | None = None,
    ) -> Chain:
        """Grow a video step by step: each step extends the video the step before made.

        `video_id` is the video to start from (on a gateway with `task_id`, the task that
        made it), or a `TextToVideoRequest` / `ImageToVideoRequest` for a new video made
        first. Say how far with `steps`, with `until` (seconds the video must at least
        reach) or with `prompts` (one per step); `prompt` serves every step without its own.

        A chain that would pass the API's 3 minutes (from the source's known length and what
        a step adds, learned or assumed at 4.5 s) is refused before anything is sent, with
        `InvalidArgumentError` (a ValueError). A step whose source is past 30 days is not
        sent (step 1's source is dated by reading `task_id` on a gateway; the official API
        cannot tell, and its refusal ends the chain at step 1). A failed step raises
        `ChainError` naming it; its `chain` holds every earlier step, so the longest video
        made is still yours. With `journal` (a file or a
        `Journal`) a chain stopped by a crash or Ctrl-C goes on where it stopped when run
        again: the step that was running is watched again, never paid twice, and a finished
        chain is replayed. `on_event` receives a `ChainEvent` (with an `eta`) per step event.

        >>> chain = await client.extend_chain("vid_1", task_id="t_1", steps=6)  # doctest: +SKIP
        >>> chain.duration, chain.video.url  # doctest: +SKIP
        """
        source = video_id if isinstance(video_id, NewVideo) else None
        request = ChainRequest(
            video_id=video_id if isinstance(video_id, str) else None,
            task_id=task_id,
            steps=steps,
            until=until,
            prompt=prompt,
            prompts=tuple(prompts) if prompts is not None else None,
            source=source,
        )
        return await self.run_chain(request, journal=journal, on_event=on_event)

    async def run_chain(
        self,
        request: ChainRequest,
        *,
        journal: Journal | str | os.PathLike[str] | None = None,
        on_event: Callable[[ChainEvent], object] | None = None,
    ) -> Chain:
        """Run one `ChainRequest` (what `extend_chain` does with its arguments): the `Chain`,
        or `ChainError` for a failed step.

        >>> chain = await client.run_chain(ChainRequest("vid_1", steps=3))  # doctest: +SKIP
        """
        outcomes = self.chain_many([request], concurrency=1, journal=journal, on_event=on_event)
        async with aclosing(outcomes):
            async for outcome in outcomes:
                if outcome.error is not None:
                    raise outcome.error
                return outcome.chain
        raise KlingError("The chain ended without an outcome.")  # pragma: no cover

    def prepare_chain(self, request: ChainRequest) -> ChainRequest:
        """`request` checked as `chain_many` checks it before sending anything.

        Raises `InvalidArgumentError` naming every problem (a chain past 3 minutes too).
        """
        return check_chain(request, ChainBackend(self), self._step_lengths)

    def chain_many(
        self,
        requests: Iterable[ChainRequest],
        *,
        concurrency: int = 8,
        journal: Journal | str | os.PathLike[str] | None = None,
        on_event: Callable[[ChainEvent], object] | None = None,
    ) -> AsyncGenerator[ChainOutcome, None]:
        """Run many chains at once, at most `concurrency` tasks in flight in all (each chain
        has one at a time); a `ChainOutcome` per chain as each ends.

        Every chain is checked before anything is sent (`InvalidArgumentError` names the
        problems). Journaled as `extend_chain` is; give each chain a `key` to resume it by
        name. Use ``contextlib.aclosing`` to stop early cleanly. Needs the client's
        ``async with``.

        >>> chains = [ChainRequest(v, task_id=t, until=30, key=v) for v, t in ab]  # doctest: +SKIP
        >>> async for outcome in client.chain_many(chains, concurrency=20):  # doctest: +SKIP
        ...     print(outcome.request.key, outcome.chain.duration, outcome.error)
        """
        return run_chains(
            ChainBackend(self),
            requests,
            lengths=self._step_lengths,
            concurrency=concurrency,
            journal=journal,
            on_event=on_event,
        )


def _coordination(
    url: str, account: str, parallel_tasks: int | None, lease: float | None, clock: Clock
) -> Coordination:
    """The database's coordination; its package (and asyncpg) is loaded only here."""
    from .postgres import DEFAULT_LEASE, Coordination

    return Coordination(
        url,
        account=account,
        parallel_tasks=parallel_tasks,
        lease=DEFAULT_LEASE if lease is None else lease,
        clock=clock,
    )


def _is_positive(value: float) -> bool:
    """A positive, finite number (not a bool): a timeout, a rate."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return math.isfinite(value) and value > 0
