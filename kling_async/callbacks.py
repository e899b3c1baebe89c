"""`CallbackReceiver`: receives the API's POSTs to ``callback_url`` and wakes watchers.

A callback is a hint, never a truth: it only makes the watcher of that task read the task
at once (one GET) instead of at its next scheduled poll. A forged, replayed, duplicated, late
or unknown-task callback therefore costs at most one extra read and can neither finish a task
nor inject a URL.

The receiver's URL carries an unguessable token; with a webhook secret, signatures in the
Standard Webhooks format are checked too (constant time, ±5 minutes, replayed ids ignored).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import secrets
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from types import TracebackType
from typing import Any, Self

import anyio
from aiohttp import web

from ._clock import Clock, SystemClock
from ._wire import converter
from .models import TaskStatus
from .telemetry import log_fields

__all__ = ["CallbackReceiver"]

log = logging.getLogger(__name__)  # a child of "kling_async"

DEFAULT_MAX_BODY = 64 * 1024
SIGNATURE_TOLERANCE = 300.0
_REMEMBERED = 10_000  # hints and webhook ids kept, oldest dropped first
# Terminal statuses as callbacks spell them (a newer API spells success "succeeded").
_TERMINAL = frozenset({*(s.value for s in TaskStatus if s.is_terminal), "succeeded"})


class CallbackReceiver:
    """An aiohttp.web endpoint for callbacks, standalone or mounted in your own app.

    Standalone: ``await receiver.start(host, port, public_url=...)`` (``public_url`` is how
    the API reaches this machine; it defaults to ``http://host:port``). Mounted:
    ``receiver.add_routes(app)`` in your aiohttp app, made with ``public_url=`` your app's
    public URL. From another framework (FastAPI, Starlette): route POSTs for `path` to
    ``await receiver.handle(body, headers)`` and answer with the status it returns.

    Give the receiver to the client (``KlingClient(callbacks=receiver)``): creates then carry
    its `callback_url`, watchers wake on terminal callbacks, and polling relaxes to a safety
    net (`PollPolicy.callback_interval`).

    >>> async with CallbackReceiver(secret="whsec_...") as receiver:  # doctest: +SKIP
    ...     await receiver.start("0.0.0.0", 8080, public_url="https://hooks.example.com")
    ...     async with KlingClient.from_env(callbacks=receiver) as client:
    ...         task = await client.extend_and_wait("vid_1")
    """

    def __init__(
        self,
        *,
        public_url: str | None = None,
        secret: str | None = None,
        max_body: int = DEFAULT_MAX_BODY,
        tolerance: float = SIGNATURE_TOLERANCE,
        clock: Clock | None = None,
        token: str | None = None,
        base_url: str | None = None,
    ) -> None:
        """`public_url` is how the API reaches the receiver (`start` can set it instead);
        `base_url` is its older name, still accepted."""
        if public_url and base_url and public_url != base_url:
            raise ValueError("give public_url or its older name base_url, not both")
        url = public_url or base_url
        self.base_url = url.rstrip("/") if url else None
        if token is not None and (len(token) < 16 or not token.isascii() or "/" in token):
            raise ValueError("a callback token must be 16 or more ASCII characters, no '/'")
        # Replicas behind one public URL share one token (from their configuration).
        self.path = f"/kling-callbacks/{token or secrets.token_urlsafe(24)}"
        #: Hears each terminal hint taken here, to pass it on (to other processes).
        self.relay: Callable[[str, str], Awaitable[object]] | None = None
        self._accepted: tuple[str, str] | None = None
        self.max_body = max_body
        self.tolerance = tolerance
        self.stats: Counter[str] = Counter()
        self._keys = _webhook_keys(secret) if secret else ()
        self._clock = clock or SystemClock()
        self._hints: OrderedDict[str, str] = OrderedDict()
        self._seen: OrderedDict[str, float] = OrderedDict()
        self._waiters: dict[str, set[anyio.Event]] = {}
        self._runner: web.AppRunner | None = None

    def __repr__(self) -> str:
        signed = "signed" if self._keys else "unsigned"
        return f"<CallbackReceiver {self.base_url or 'not started'} ({signed})>"

    @property
    def callback_url(self) -> str:
        """The URL to give the API (it contains the receiver's secret token)."""
        if self.base_url is None:
            raise RuntimeError(
                "The callback receiver has no public URL yet: start() it, or pass public_url="
            )
        return self.base_url + self.path

    # -- receiving ---------------------------------------------------------------------

    async def handle(
        self,
        body: bytes | str,
        headers: Mapping[str, str] | None = None,
        *,
        path: str | None = None,
    ) -> int:
        """Take one callback; return the HTTP status to answer with.

        `path`, when given, is checked against the receiver's secret path (a framework that
        routes a wider prefix here passes it). Refusals have no effect on any watcher.
        """
        raw = body.encode() if isinstance(body, str) else body
        refusal = self._refusal(raw, _lower_keys(headers or {}), path)
        if refusal is not None:
            reason, status = refusal
            self.stats[reason] += 1
            log.info("callback refused: %s", reason, extra=log_fields())
            return status
        self.stats["accepted"] += 1
        accepted, self._accepted = self._accepted, None
        if accepted is not None and self.relay is not None:
            await self.relay(*accepted)
        return 200

    def _refusal(
        self, raw: bytes, headers: Mapping[str, str], path: str | None
    ) -> tuple[str, int] | None:
        """Why this callback is refused (reason, HTTP status), or None once it is taken."""
        if path is not None and not hmac.compare_digest(path, self.path):
            return "wrong token", 404
        if len(raw) > self.max_body:
            return "body too large", 413
        if self._keys:
            problem = self._signature_problem(self._keys, raw, headers)
            if problem is not None:
                return problem, 200 if problem == "replayed id" else 401
        try:
            task = _task_object(raw)
        except RecursionError:
            return "body nested too deeply", 400
        if task is None:
            return "not a task object", 400
        self._take(str(task["task_id"]), _status_word(task.get("task_status", "")))
        return None

    def _signature_problem(
        self, keys: tuple[bytes, ...], raw: bytes, headers: Mapping[str, str]
    ) -> str | None:
        msg_id = headers.get("webhook-id", "")
        stamp = headers.get("webhook-timestamp", "")
        signatures = headers.get("webhook-signature", "")
        if not (msg_id and stamp and signatures):
            return "unsigned"
        try:
            sent_at = float(stamp)
        except ValueError:
            return "bad timestamp"
        now = self._clock.time()
        if abs(now - sent_at) > self.tolerance:
            return "timestamp outside the allowed window"
        signed = f"{msg_id}.{stamp}.".encode() + raw
        offered = [part.partition(",")[2].encode() for part in signatures.split()]
        expected = [hmac.new(key, signed, hashlib.sha256).digest() for key in keys]
        encoded = [base64.b64encode(digest) for digest in expected]
        if not any(hmac.compare_digest(e, o) for e in encoded for o in offered):
            return "bad signature"
        if msg_id in self._seen:
            return "replayed id"  # answered 200 below: a sender's redelivery is not an error
        _remember(self._seen, msg_id, now)
        return None

    def _take(self, task_id: str, status: str) -> None:
        """Note a terminal hint and wake the task's watchers; other statuses change nothing."""
        if status not in _TERMINAL:
            return
        self._accepted = (task_id, status)
        self.hint(task_id, status)

    def hint(self, task_id: str, status: str) -> None:
        """Take a terminal hint that another process received: wake the task's watchers here.

        Like a callback, a hint is only ever a reason to read the task once."""
        if status not in _TERMINAL:
            return
        _remember(self._hints, task_id, status)
        for event in self._waiters.get(task_id, ()):
            event.set()

    # -- what watchers use -------------------------------------------------------------

    def take_hint(self, task_id: str) -> bool:
        """True (once) when a callback said the task ended since the last look."""
        return self._hints.pop(task_id, None) is not None

    async def wait(self, task_id: str, timeout: float) -> bool:
        """Sleep up to `timeout` or until a terminal callback for the task; True if woken."""
        if self.take_hint(task_id):
            return True
        event = anyio.Event()
        self._waiters.setdefault(task_id, set()).add(event)
        try:
            with anyio.move_on_after(timeout):
                await event.wait()
        finally:
            waiting = self._waiters.get(task_id)
            if waiting is not None:
                waiting.discard(event)
                if not waiting:
                    del self._waiters[task_id]
        return self.take_hint(task_id)

    @property
    def active(self) -> bool:
        """Whether the API can reach this receiver (it has a public URL)."""
        return self.base_url is not None

    # -- serving ---------------------------------------------------------------------

    def add_routes(self, app: web.Application) -> None:
        """Mount the receiver in your own aiohttp application."""
        app.router.add_post(self.path, self._serve)

    async def start(
        self, host: str = "127.0.0.1", port: int = 0, *, public_url: str | None = None
    ) -> str:
        """Serve the receiver on its own; return its callback URL."""
        if self._runner is not None:
            raise RuntimeError("the callback receiver is already started")
        app = web.Application(client_max_size=self.max_body + 1)
        self.add_routes(app)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        bound_host, bound_port = runner.addresses[0][:2]
        self.base_url = (public_url or f"http://{bound_host}:{bound_port}").rstrip("/")
        return self.callback_url

    async def close(self) -> None:
        """Stop serving (when started standalone)."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def _serve(self, request: web.Request) -> web.Response:
        try:
            body = await request.read()  # the whole body, bounded by client_max_size
        except web.HTTPRequestEntityTooLarge:
            self.stats["body too large"] += 1
            return web.Response(status=413)
        status = await self.handle(body, request.headers)
        return web.Response(status=status)


def _webhook_keys(secret: str) -> tuple[bytes, ...]:
    """The HMAC keys a signature may be made with.

    Standard Webhooks secrets are ``whsec_`` + base64, the key being the decoded bytes; a
    sender that signs with the secret's text as it is (as the API's notes literally read) is
    accepted too, since both keys come from the one secret. Any other text is used as it is.
    """
    if secret.startswith("whsec_"):
        try:
            decoded = base64.b64decode(secret.removeprefix("whsec_"), validate=True)
        except binascii.Error:
            raise ValueError("webhook secret starts with whsec_ but is not base64") from None
        return (decoded, secret.encode())
    return (secret.encode(),)


def _task_object(raw: bytes) -> Mapping[str, Any] | None:
    """The task object of a body: the bare object (official) or an envelope's data.

    Raises `RecursionError` for a body nested deeper than the parser's recursion limit.
    """
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
    if isinstance(body, Mapping) and isinstance(body.get("data"), Mapping):
        body = body["data"]
    if isinstance(body, Mapping) and body.get("task_id"):
        return body
    return None


def _status_word(spelled: object) -> str:
    """The status as the client names it, read as a task's is (any spelling of success)."""
    status: TaskStatus = converter.structure(spelled, TaskStatus)
    return status.value


def _lower_keys(headers: Mapping[str, str]) -> dict[str, str]:
    return {name.lower(): value for name, value in headers.items()}


def _remember(memory: OrderedDict[str, Any], key: str, value: Any) -> None:
    memory[key] = value
    memory.move_to_end(key)
    while len(memory) > _REMEMBERED:
        memory.popitem(last=False)
