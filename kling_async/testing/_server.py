"""`FakeKlingServer`: an in-process aiohttp.web server speaking both Kling dialects."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

from aiohttp import web

from ._answers import (
    Answer,
    drop_connection,
    expired_link,
    fault_answer,
    kling_error,
    no_such_path,
    read_json,
)
from ._api import BackendConfig, KlingBackend
from ._auth import OfficialCredentials, auth_refusal
from ._callbacks import CallbackSender
from ._faults import ANSWER_FAULTS, Fault, FaultPlan
from ._files import serve_video, video_bytes
from ._record import RequestRecord, ServerRecord
from ._tasks import CREATABLE, KINDS, Durations, TaskFactory
from ._validate import DEFAULT_FAILURE_MESSAGES, check_server_arguments
from ._webhooks import CallbackFaults

# In-flight handlers (e.g. sleeping in a delay fault) get this long before close cancels them.
_SHUTDOWN_GRACE = 0.25
_FILES = "/files/"
_COSTS = ("/account/costs", "/v1/account/costs")  # clients spell the official path both ways


@dataclass(slots=True)
class _Note:
    """What the record will say about the request being handled."""

    status: int | None = None
    task_id: str | None = None
    fault: str | None = None


class FakeKlingServer:
    """A seeded fake of the Kling API (official or gateway dialect) on a local port.

    Tasks progress on a clock scaled by ``speed`` (service seconds per wall second), computed
    lazily at each request. ``faults`` injects misbehaviour; ``record`` holds what was seen.
    A create with ``callback_url`` gets a POST there at each status change (signed with
    ``webhook_secret`` if set; misbehaving per the mutable ``callback_faults``).

    Auth: a gateway with ``api_key=None`` accepts any key; an official server with neither
    ``api_key`` nor ``access_key`` accepts anything. An official server with both accepts the
    static key and JWTs. Result videos are served unauthenticated under ``{url}/files/``, on
    127.0.0.1: a client downloads them only when made with ``allow_private_downloads=True``.

    >>> async with FakeKlingServer() as server:  # doctest: +SKIP
    ...     client = KlingClient(api_key="test-api-key", base_url=server.url,
    ...                          allow_private_downloads=True)
    """

    def __init__(
        self,
        *,
        dialect: str = "gateway",
        api_key: str | None = "test-api-key",
        access_key: str | None = None,
        secret_key: str | None = None,
        speed: float = 1000.0,
        seed: int | None = None,
        durations: Durations | Mapping[str, Durations] | None = None,
        fail_rate: float = 0.0,
        failure_messages: Sequence[str] = DEFAULT_FAILURE_MESSAGES,
        max_concurrent: int | None = None,
        require_known_videos: bool = False,
        wall_clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        host: str = "127.0.0.1",
        port: int = 0,
        video_size: int = 262144,
        webhook_secret: str | None = None,
        callback_faults: CallbackFaults | None = None,
        link_lifetime: float | None = None,
        on_request: Callable[[RequestRecord], object] | None = None,
    ) -> None:
        """Configure the server; nothing listens until `start` (or ``async with``).

        ``wall_clock`` (Unix seconds) dates tasks and checks JWT times; ``monotonic`` drives
        task progress and `RequestRecord.at` (a test may pass a hand-moved clock, but it must
        never move backwards). Callbacks are timed on the event loop, from the delay known at
        creation, so a hand-moved ``monotonic`` does not hurry them. With ``link_lifetime``
        (wall seconds) a result URL is signed when a task is read and answers 403 once
        expired, as real signed links do: read the task again for a fresh one. ``on_request``
        hears of each request once it is answered (a log line, a live counter).

        ``seed`` draws the ids, durations, failures and random faults: two servers with the
        same seed given the same requests answer alike. Without it a seed is drawn at
        random, so two servers never issue the same ids; `seed` tells which, to repeat a run.
        """
        check_server_arguments(dialect, speed, fail_rate, failure_messages)
        if seed is None:
            seed = random.SystemRandom().randrange(2**32)
        self.seed = seed
        if (access_key is None) != (secret_key is None):
            raise ValueError("access_key and secret_key go together")
        self.dialect = dialect
        self.faults = FaultPlan(seed)
        self.record = ServerRecord()
        self._credentials = OfficialCredentials(api_key, access_key, secret_key)
        self._on_request = on_request
        self._wall_clock = wall_clock
        self._monotonic = monotonic
        self._bind = (host, port)
        self._video_size = video_size
        config = BackendConfig(
            dialect == "gateway",
            speed,
            max_concurrent,
            require_known_videos,
            wall_clock,
            link_lifetime,
        )
        factory = TaskFactory(seed, durations, fail_rate, failure_messages)
        self._backend = KlingBackend(config, factory, self.record, seed)
        self._runner: web.AppRunner | None = None
        self._url: str | None = None
        self._handlers: set[asyncio.Task[Any]] = set()
        self._holding = 0
        self._hold_changed = asyncio.Event()
        self._released = asyncio.Event()
        self.callback_faults = callback_faults or CallbackFaults()
        self._callbacks = CallbackSender(
            self.record,
            seed=seed,
            secret=webhook_secret,
            envelope=dialect == "gateway",
            faults=lambda: self.callback_faults,
            wall_clock=wall_clock,
            monotonic=monotonic,
        )

    @property
    def api_key(self) -> str | None:
        """The static key the server accepts (None: a gateway then accepts any key)."""
        return self._credentials.api_key

    @property
    def access_key(self) -> str | None:
        """The access key whose JWTs the official dialect accepts, if any."""
        return self._credentials.access_key

    @property
    def secret_key(self) -> str | None:
        """The secret key those JWTs must be signed with, if any."""
        return self._credentials.secret_key

    @property
    def environment(self) -> dict[str, str]:
        """The ``KLING_*`` variables that point a client (or the command line) at this server.

        With an access key pair the pair is given, else the static key (if any).

        >>> os.environ.update(server.environment)  # doctest: +SKIP
        """
        env = {"KLING_BASE_URL": self.url, "KLING_DIALECT": self.dialect}
        if self.access_key is not None and self.secret_key is not None:
            env |= {"KLING_ACCESS_KEY": self.access_key, "KLING_SECRET_KEY": self.secret_key}
        elif self.api_key is not None:
            env["KLING_API_KEY"] = self.api_key
        return env

    @property
    def url(self) -> str:
        """The base URL to give a client, e.g. ``http://127.0.0.1:PORT`` (no ``/kling``)."""
        if self._url is None:
            raise RuntimeError("the server is not started")
        return self._url

    async def __aenter__(self) -> Self:
        """Start the server."""
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop the server."""
        await self.close()

    async def start(self) -> None:
        """Listen on the configured host and port (port 0 picks a free one)."""
        if self._runner is not None:
            raise RuntimeError("the server is already started")
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=_SHUTDOWN_GRACE)
        await runner.setup()
        try:
            await web.TCPSite(runner, *self._bind).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        host, port = runner.addresses[0][:2]
        self._url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
        self._backend.base_url = self._url
        self._callbacks.open()

    async def close(self) -> None:
        """Stop listening, close connections and end in-flight handlers; safe to call twice."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
        await self._end_orphans()
        # Last: a handler ended above may still have scheduled callbacks.
        await self._callbacks.close()

    async def _end_orphans(self) -> None:
        # aiohttp forgets a handler whose client hung up (e.g. timed out during a delay fault)
        # and lets it run on; it must not outlive the server.
        pending = [task for task in self._handlers if not task.done()]
        if pending:
            await asyncio.wait(pending, timeout=_SHUTDOWN_GRACE)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)

    def add_video(
        self,
        video_id: str,
        task_id: str | None = None,
        *,
        duration: float = 5.0,
        model: str | None = None,
        made_at: float | None = None,
    ) -> None:
        """Seed a known source video (``task_id``: the task that made it, for gateways).

        ``model`` (the model that made it) and ``made_at`` (wall-clock seconds) let a test
        see an extension refused as the real API refuses it: a model whose videos cannot
        be extended, or a video past 30 days.
        """
        self._backend.add_video(video_id, task_id, duration, model, made_at)

    async def held(self, count: int = 1) -> None:
        """Wait until `count` requests are held by `Fault.hold_answer` (their work is done)."""
        while self._holding < count:
            await self._hold_changed.wait()

    def release_held(self) -> None:
        """Send the answers of every request held so far (later ones are held anew)."""
        self._released.set()
        self._released = asyncio.Event()

    async def _hold(self) -> None:
        released = self._released
        self._holding += 1
        self._hold_changed.set()
        self._hold_changed = asyncio.Event()
        try:
            await released.wait()
        finally:
            self._holding -= 1

    def task_status(self, task_id: str) -> str:
        """The real current status of ``task_id`` (KeyError if no such task)."""
        return self._backend.task(task_id).status(self._monotonic())

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        arrived = self._monotonic()
        handler = asyncio.current_task()
        if handler is not None:
            self._handlers.add(handler)
        body: Any = None
        note = _Note()
        try:
            body = await read_json(request)
            return await self._handle(request, body, note)
        finally:
            self._handlers.discard(handler)
            record = RequestRecord(
                method=request.method,
                path=request.path,
                query=dict(request.query),
                headers=dict(request.headers),
                body=body,
                status=note.status,
                at=arrived,
                task_id=note.task_id,
                fault=note.fault,
            )
            self.record._note_request(record)
            if self._on_request is not None:
                self._on_request(record)

    async def _handle(self, request: web.Request, body: Any, note: _Note) -> web.StreamResponse:
        is_file = request.path.startswith(_FILES)
        fault = self.faults.take(request.method, request.path, is_file=is_file)
        note.fault = None if fault is None else fault.name
        if fault is not None and fault.name == "drop":
            return drop_connection(request)
        if fault is not None and fault.name == "delay":
            await asyncio.sleep(fault.seconds)
        if fault is not None and fault.name in ANSWER_FAULTS:
            return self._send(fault_answer(fault, self._backend.request_id()), note)
        if is_file:
            return await self._file(request, fault, note)
        answer = self._api(request, body, fault)
        if fault is not None and fault.name == "hold_answer":
            await self._hold()
        return self._finish(request, answer, fault, note)

    def _finish(
        self, request: web.Request, answer: Answer, fault: Fault | None, note: _Note
    ) -> web.StreamResponse:
        note.task_id = answer.task_id
        if fault is not None and fault.name == "drop_after_create":
            return drop_connection(request)
        if fault is not None and fault.name == "malformed":
            answer = answer.truncated()
        return self._send(answer, note)

    @staticmethod
    def _send(answer: Answer, note: _Note) -> web.StreamResponse:
        note.status = answer.status
        note.task_id = answer.task_id or note.task_id
        return answer.to_response()

    def _api(self, request: web.Request, body: Any, fault: Fault | None) -> Answer:
        gateway = self._backend.config.gateway
        prefix = "/kling/v1/" if gateway else "/v1/"
        costs = not gateway and request.path in _COSTS
        if not (costs or request.path.startswith(prefix)):
            return self._no_such_path(request)
        header = request.headers.get("Authorization")
        refusal = auth_refusal(
            header, self._credentials, self._backend.config.gateway, self._wall_clock()
        )
        if refusal is not None:
            return refusal
        if costs:
            if request.method != "GET":
                return self._wrong_method(request.method)
            return self._backend.costs(request.query)
        rest = request.path[len(prefix) :]
        if rest in KINDS:
            return self._collection(request, rest, body)
        kind, _, ref = rest.rpartition("/")
        if kind not in KINDS or not ref:
            return self._no_such_path(request)
        if request.method != "GET":
            return self._wrong_method(request.method)
        return self._backend.get(kind, ref, self._monotonic(), fault)

    def _collection(self, request: web.Request, kind: str, body: Any) -> Answer:
        backend = self._backend
        if request.method == "GET":
            if backend.config.gateway:
                return self._no_such_path(request)
            return backend.list(kind, request.query, self._monotonic())
        if request.method != "POST":
            return self._wrong_method(request.method)
        if kind not in CREATABLE:
            return kling_error(
                404, 1203, f"{kind} tasks cannot be created here", backend.request_id()
            )
        answer = backend.create(kind, body, self._monotonic())
        if answer.task_id is not None and body.get("callback_url") is not None:
            self._callbacks.watch(backend.task(answer.task_id), body["callback_url"], self.url)
        return answer

    def _no_such_path(self, request: web.Request) -> Answer:
        return no_such_path(request.method, request.path, self._backend.request_id())

    def _wrong_method(self, method: str) -> Answer:
        message = f"method {method} is not supported on this path"
        return kling_error(404, 1202, message, self._backend.request_id())

    async def _file(
        self, request: web.Request, fault: Fault | None, note: _Note
    ) -> web.StreamResponse:
        name = request.path[len(_FILES) :]
        video_id = name.removesuffix(".mp4")
        known = name.endswith(".mp4") and self._backend.video(video_id, self._monotonic())
        if not known or request.method not in ("GET", "HEAD"):
            return self._send(self._no_such_path(request), note)
        if self._backend.link_expired(request.query):
            return self._send(expired_link(), note)
        drop_after = (
            fault.after_bytes if fault is not None and fault.name == "drop_mid_stream" else None
        )
        data = video_bytes(video_id, self._video_size)
        encode = fault is not None and fault.name == "gzip_encoded"
        response, status = await serve_video(request, data, drop_after, encode=encode)
        note.status = None if drop_after is not None else status
        return response
