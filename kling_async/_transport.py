"""The one place that sends a request: timeouts, retries, Retry-After and error mapping.

A request is retried only when its failure is retryable (see `errors`) and, for a paid
create, only when the server surely made nothing: the connection was never opened, or the
server refused it with a 4xx in its own error format (a rate limit). Anything else (a
timeout or a disconnect after sending, any 5xx, an unreadable 200) is raised for the caller
to resolve, because sending the create again could pay for the same extension twice.

A create is also never abandoned half-way: once sent, its answer is awaited even when the
caller is cancelled meanwhile (the request timeout bounds the wait), and handed to whoever
asked for it, since it may name a task that is already paid for.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import time
from collections.abc import Callable, Coroutine, Mapping
from contextlib import AbstractAsyncContextManager
from email.utils import parsedate_to_datetime
from typing import Any

import aiohttp
import anyio
import attrs
from aiohttp import hdrs
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from ._clock import Clock
from ._ratelimit import RequestRate
from ._wire import decode_json
from .auth import Auth
from .errors import (
    SETTING_NAMES,
    TOKEN_REFRESH_CODES,
    APIError,
    ConfigurationError,
    RateLimitError,
    ServerError,
    TransportError,
    error_from_answer,
)
from .policies import RetryBudget, RetryPolicy
from .telemetry import (
    _NO_REQUEST,
    NO_TELEMETRY,
    _Off,
    _RequestTrace,
    log_fields,
    task_in_path,
)

__all__ = ["Abandoned", "Transport", "surely_not_created"]

log = logging.getLogger(__name__)  # a child of "kling_async"

#: aiohttp failures by whether the request may have reached the server. The first match wins,
#: so the specific "never connected" cases come before their broader parents.
_MAY_HAVE_BEEN_SENT: tuple[tuple[type[BaseException], bool], ...] = (
    (aiohttp.InvalidURL, False),
    (aiohttp.ConnectionTimeoutError, False),
    (aiohttp.ClientConnectorError, False),
    (aiohttp.ClientError, True),
    (TimeoutError, True),
    (OSError, True),
)
_BEARER = re.compile(r"(?i)(bearer\s+)[^\s\"',;]+")

#: The largest API answer read. A task is a few KiB and a page of the list endpoint (500
#: tasks at most) about half a MiB, so 4 MiB is generous; past it the answer is not one this
#: client can use, and reading it whole would let a broken proxy fill the process's memory.
MAX_ANSWER_BYTES = 4 * 1024 * 1024

#: Hears the answer of a create whose caller was cancelled while it was in flight: the
#: envelope's data on success (then the error is None), else the error.
Abandoned = Callable[[Any, "APIError | TransportError | None"], object]


def surely_not_created(exc: BaseException) -> bool:
    """True when a failed create request certainly made no task, so re-sending is safe.

    That is: the connection was never made, or the server refused the request in its own
    words with a 4xx (a rate limit, a bad parameter, an empty account). A server error never
    counts, whatever its body or status line (a 5002 "internal timeout" may come under HTTP
    200): a gateway may answer 502/504 while the API behind it made the task.
    """
    if isinstance(exc, TransportError):
        return not exc.may_have_been_sent
    if not isinstance(exc, APIError) or not exc.definitive or isinstance(exc, ServerError):
        return False
    return exc.http_status is None or exc.http_status < 500


def _no_headers() -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict())


@attrs.define
class Transport:
    """Sends requests on one aiohttp session and returns the `data` of successful envelopes.

    The session is the caller's when given (and then never closed here), else made on first
    use and closed by `close`.
    """

    base_url: str
    auth: Auth
    clock: Clock
    retry: RetryPolicy = attrs.field(factory=RetryPolicy)
    budget: RetryBudget = attrs.field(factory=RetryBudget)
    timeout: float = 30.0
    limiter: RequestRate | None = None
    rng: random.Random = attrs.field(factory=random.Random, repr=False)
    # More values to scrub from quoted answers (the callback token); secret, so not in the repr.
    hidden: tuple[str, ...] = attrs.field(default=(), repr=False)
    telemetry: _Off = NO_TELEMETRY
    _session: aiohttp.ClientSession | None = attrs.field(default=None, alias="session")
    _owns_session: bool = attrs.field(default=False, init=False)
    closed: bool = attrs.field(default=False, init=False)
    tokens: float = attrs.field(init=False)  # what is left of the retry budget
    _client_timeout: aiohttp.ClientTimeout = attrs.field(init=False, repr=False)
    # The headers of every request and the credential's value they were made for (secret).
    _headers: CIMultiDictProxy[str] = attrs.field(init=False, repr=False, factory=_no_headers)
    _authorization: str = attrs.field(default="", init=False, repr=False)
    # The secrets as bytes, to find one quoted back in a successful answer (made with the
    # headers, when the credential's value changes).
    _quotable: tuple[bytes, ...] = attrs.field(default=(), init=False, repr=False)
    # Creates sent and not yet answered: closing waits for them (see `close`).
    _in_flight: set[asyncio.Future[Any]] = attrs.field(factory=set, init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        # sock_connect makes a connect-phase timeout distinguishable: nothing was sent then.
        self._client_timeout = aiohttp.ClientTimeout(total=self.timeout, sock_connect=self.timeout)
        self.tokens = self.budget.capacity

    @property
    def session(self) -> aiohttp.ClientSession:
        """The session requests go through (made on first use when not given)."""
        if self.closed:
            raise ConfigurationError(
                "This KlingClient is closed; open it again with `async with`, or make a new one."
            )
        if self._session is None:
            self._session = aiohttp.ClientSession(raise_for_status=False)
            self._owns_session = True
        return self._session

    async def close(self) -> None:
        """Close the session if this transport made it; later requests are refused.

        Creates already sent run to their answers first (each within the request timeout):
        closing the session under them would lose the answer of a task that may be paid for.
        """
        self.closed = True
        if self._in_flight:
            with anyio.CancelScope(shield=True):
                await asyncio.wait(set(self._in_flight))
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None
            self._owns_session = False

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: Mapping[str, Any] | None = None,
        params: Mapping[str, str | int] | None = None,
        resend_safe: bool = True,
        retry: RetryPolicy | None = None,
        on_retry: Callable[[Exception], object] | None = None,
        paced: bool = False,
        on_abandoned: Abandoned | None = None,
    ) -> Any:
        """Send until success or a final failure; return the envelope's `data`.

        `resend_safe=False` marks a request that must not be repeated once it may have reached
        the server (a create): then only failures for which `surely_not_created` holds are
        retried, and any other failure is raised as it is. Each attempt of such a request runs
        to its answer even if the caller is cancelled meanwhile; the answer then goes to
        `on_abandoned` and the cancellation goes on. `on_retry(error)` hears of each
        retry before its wait. `paced=True` says the caller already waited for the first
        attempt's slot of the rate limiter; any further attempt waits for its own. Every
        retry is paid for from the client-wide `budget`; when it cannot pay, the failure is
        raised at once.
        """
        policy = retry or self.retry
        refreshed = False
        attempt = 0
        slot_taken = paced
        refund: float | None = None  # the last retry's cost, which a success pays back
        telemetry = self.telemetry
        trace = (
            telemetry.request(method, self.base_url, path)
            if time.monotonic() >= telemetry.quiet_until
            else _NO_REQUEST  # nothing records: no call at all
        )
        try:
            while True:
                attempt += 1
                if self.limiter is not None and not slot_taken:
                    await self.limiter.acquire()
                slot_taken = False
                try:
                    if not resend_safe:
                        exchange = self._attempt(method, path, body, params, trace)
                        data = await _to_the_answer(exchange, on_abandoned, self._in_flight)
                    else:
                        # The exchange is written out here rather than in a helper coroutine: this
                        # is the path of every poll, and each coroutine layer costs every
                        # resumption a frame.
                        async with self._open(method, path, body, params) as response:
                            data = self._interpret(
                                response.status,
                                response.headers,
                                # Not kept in a local: the body may quote a credential back.
                                await response.read()
                                if _known_to_fit(response)
                                else await _read_capped(response),
                                trace,
                            )
                except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                    error: APIError | TransportError = self._transport_error(method, path, exc)
                except (APIError, TransportError) as exc:
                    error = exc
                else:
                    if self.tokens < self.budget.capacity:
                        self.tokens = self.budget.deposit(self.tokens, refund)
                    return data
                if _needs_new_token(error) and not refreshed:
                    self.auth.invalidate()
                    refreshed = True
                    attempt -= 1
                    continue
                wait = self._wait_before_retry(error, attempt, policy, resend_safe)
                refund = self._pay_for_retry(error)
                log.info(
                    "%s %s failed (%s); retry %d of %d in %.2f s",
                    method,
                    path,
                    error,
                    attempt,
                    policy.max_attempts - 1,
                    wait,
                    extra=log_fields(task_in_path(path), None, getattr(error, "request_id", None)),
                )
                trace.retried(error, attempt, wait)
                if on_retry is not None:
                    on_retry(error)
                del error  # its traceback holds this frame: a cycle, were the retry to succeed
                await self.clock.sleep(wait)
        except BaseException as exc:
            trace.failed(exc)
            raise

    def _open(
        self,
        method: str,
        path: str,
        body: Mapping[str, Any] | None,
        params: Mapping[str, str | int] | None,
    ) -> AbstractAsyncContextManager[aiohttp.ClientResponse]:
        """The request, to be entered with ``async with`` (a call, not a coroutine layer)."""
        return self.session.request(
            method,
            self.base_url + path,
            json=body,
            params=params,
            # Never held in a local: tracebacks that record locals (pytest --showlocals, error
            # reporters) would show the credential.
            headers=self._headers
            if self.auth.authorization() == self._authorization
            else self._new_headers(),
            timeout=self._client_timeout,
            # The API does not redirect. Followed, a redirect would turn a create into a GET
            # whose answer passes for the create's, or carry the body (and the callback URL's
            # token) to another host: it is an answer of its own (see `_interpret`).
            allow_redirects=False,
        )

    def _new_headers(self) -> CIMultiDictProxy[str]:
        """The headers of every request, made again when the credential's value changes (a
        new token). Kept, not made per request, and immutable: aiohttp then copies them
        without first converting a dictionary (about 5,000 instructions a request)."""
        self._authorization = self.auth.authorization()
        self._quotable = tuple(secret.encode() for secret in (*self.auth.secrets(), *self.hidden))
        headers = {"Authorization": self._authorization, "Accept": "application/json"}
        self._headers = CIMultiDictProxy(CIMultiDict(headers))
        return self._headers

    async def _attempt(
        self,
        method: str,
        path: str,
        body: Mapping[str, Any] | None,
        params: Mapping[str, str | int] | None,
        trace: _RequestTrace,
    ) -> Any:
        """One exchange of a request that must not be cut short, its failure mapped."""
        try:
            async with self._open(method, path, body, params) as response:
                return self._interpret(
                    response.status,
                    response.headers,
                    await response.read()
                    if _known_to_fit(response)
                    else await _read_capped(response),
                    trace,
                )
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise self._transport_error(method, path, exc) from None

    def _wait_before_retry(
        self, exc: APIError | TransportError, attempt: int, policy: RetryPolicy, resend_safe: bool
    ) -> float:
        """The wait before the next attempt; re-raises `exc` when there must be none."""
        if attempt >= policy.max_attempts or not exc.retryable:
            raise exc
        if not resend_safe and not surely_not_created(exc):
            raise exc
        retry_after = exc.retry_after if isinstance(exc, APIError) else None
        wait = policy.delay(
            attempt,
            self.rng.random(),
            retry_after=retry_after,
            rate_limited=isinstance(exc, RateLimitError),
        )
        if wait is None:
            raise exc
        return wait

    def _pay_for_retry(self, exc: APIError | TransportError) -> float:
        """Take one retry's tokens from the budget (its cost); re-raise `exc` if it cannot pay."""
        timeout = isinstance(exc, TransportError)
        left = self.budget.withdraw(self.tokens, timeout=timeout)
        if left is None:
            log.info(
                "not retried, the retry budget is spent until requests succeed: %s",
                exc,
                extra=log_fields(request_id=getattr(exc, "request_id", None)),
            )
            raise exc
        self.tokens = left
        return self.budget.cost(timeout=timeout)

    def _interpret(
        self, status: int, headers: Mapping[str, str], raw: bytes, trace: _RequestTrace
    ) -> Any:
        body = decode_json(raw)
        code = body.get("code") if isinstance(body, dict) else None
        if 200 <= status < 300 and code in (0, "0"):
            if any(secret in raw for secret in self._quotable):
                # A task quoting a credential back (a failure's message naming the key) would
                # carry it into exceptions, journals and results files: read it scrubbed.
                scrubbed = decode_json(self._redact(raw.decode("utf-8", "replace")).encode())
                body = scrubbed if isinstance(scrubbed, dict) else {"code": 0}
            if trace is not _NO_REQUEST:
                trace.answered(status, body)
            return body.get("data")
        # Past here the answer is quoted to a person: scrub credentials before reading it,
        # and drop the raw copies, which a traceback's record of locals would show.
        text = self._redact(raw.decode("utf-8", "replace"))
        del raw, body
        said = decode_json(text.encode())
        if 300 <= status < 400:
            raise _redirected(status, self._redact(headers.get(hdrs.LOCATION, "")), self.base_url)
        if 200 <= status < 300 and code is None and not _is_error_object(said):
            raise TransportError(
                f"The server answered HTTP {status} with a body that is not a Kling envelope: "
                f"{text[:120]!r}.",
                may_have_been_sent=True,
            )
        retry_after = parse_retry_after(headers.get("Retry-After"), self.clock.time())
        if code in (0, "0") and isinstance(said, dict):
            raise _disagreeing(status, said, text, retry_after)
        raise error_from_answer(status, said, text, retry_after=retry_after)

    def _transport_error(self, method: str, path: str, exc: BaseException) -> TransportError:
        sent = next(maybe for kind, maybe in _MAY_HAVE_BEEN_SENT if isinstance(exc, kind))
        what = type(exc).__name__
        detail = self._redact(str(exc)) or "no detail"
        when = "after it may have reached the server" if sent else "before it was sent"
        # The whole URL, prefix included: a wrong base URL is the usual cause of no connection.
        hint = "" if sent else f" Is the server up? Check {SETTING_NAMES.get().base_url}."
        return TransportError(
            f"{method} {self.base_url}{path} failed {when}: {what} ({detail}).{hint}",
            may_have_been_sent=sent,
        )

    def _redact(self, text: str) -> str:
        for secret in (*self.auth.secrets(), *self.hidden):
            text = _scrub(text, secret)
        return _BEARER.sub(r"\1<hidden>", text)


async def _to_the_answer(
    attempt: Coroutine[Any, Any, Any],
    on_abandoned: Abandoned | None,
    in_flight: set[asyncio.Future[Any]],
) -> Any:
    """Await `attempt` to its end, even when the caller is cancelled meanwhile.

    Cut short, a create may still make its (paid) task with nobody to hear of it, so the
    attempt runs in a task of its own that the caller's cancellation does not reach, whether
    it comes from an anyio cancel scope or from ``asyncio.Task.cancel()``. The caller waits
    for it in every case (the request timeout bounds that wait); when it was cancelled
    meanwhile, the answer goes to `on_abandoned` and the cancellation is raised. The attempt
    is in `in_flight` until it ends.
    """
    running = asyncio.ensure_future(attempt)
    in_flight.add(running)
    running.add_done_callback(in_flight.discard)
    try:
        return await asyncio.shield(running)
    except asyncio.CancelledError:
        with anyio.CancelScope(shield=True):
            while not running.done():
                try:
                    await asyncio.wait((running,))
                except asyncio.CancelledError:  # cancelled again: the answer still comes first
                    continue
        if on_abandoned is not None and not running.cancelled():
            error = running.exception()
            if error is None:
                on_abandoned(running.result(), None)
            elif isinstance(error, APIError | TransportError):
                on_abandoned(None, error)
        raise


def _scrub(text: str, secret: str) -> str:
    """`text` without `secret`. A short secret is replaced only as a whole word, so a
    one-letter test key does not turn every such letter of a message into <hidden>."""
    if len(secret) >= 12:
        return text.replace(secret, "<hidden>")
    return re.sub(rf"(?<![\w-]){re.escape(secret)}(?![\w-])", "<hidden>", text)


def _known_to_fit(response: aiohttp.ClientResponse) -> bool:
    """True when the body is plainly within `MAX_ANSWER_BYTES` (a Content-Length that says so,
    no compression); raises when Content-Length alone says it is too large."""
    headers = response.headers  # read once, here rather than through `content_length`
    announced = headers.get(hdrs.CONTENT_LENGTH)
    if announced is None:
        return False
    if int(announced) > MAX_ANSWER_BYTES:
        raise _too_large(response, f"it announced {int(announced)} bytes")
    return hdrs.CONTENT_ENCODING not in headers


async def _read_capped(response: aiohttp.ClientResponse) -> bytes:
    """The body, read while counting: a chunked or compressed answer stops at the cap."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_any():
        size += len(chunk)
        if size > MAX_ANSWER_BYTES:
            raise _too_large(response, f"more than {size} bytes arrived")
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(response: aiohttp.ClientResponse, detail: str) -> TransportError:
    # The whole URL, prefix included (the query left out): a wrong base URL is the usual cause.
    url = response.url.with_query(None)
    return TransportError(
        f"{response.method} {url} failed: the answer is larger than the "
        f"{MAX_ANSWER_BYTES // 2**20} MiB any Kling answer fits in ({detail}), so it was not "
        "read. Check that the base URL points at the Kling API.",
        may_have_been_sent=True,
    )


def _disagreeing(
    status: int, body: dict[str, Any], text: str, retry_after: float | None
) -> APIError:
    """An answer whose body says success (code 0) under an error status. That is no refusal
    in the server's own words, so a create so answered may have made its task: the error is
    not `definitive`, and names the task the body names."""
    data = body.get("data")
    task_id = data.get("task_id") if isinstance(data, dict) else None
    named = f", naming task {str(task_id)[:80]}," if task_id else ""
    said = f"the body says success (code 0){named} but the status HTTP {status} says failure"
    error = error_from_answer(status, {**body, "message": said}, text, retry_after=retry_after)
    error.definitive = False
    return error


#: Redirects that say the request was not acted on here (a 303 may follow a request done).
_MOVED = frozenset({301, 302, 307, 308})


def _redirected(status: int, location: str | None, base_url: str) -> APIError:
    """A redirect answered to an API request, which is not followed: the base URL is likely
    out of date. For a create it is the server's refusal (it made nothing), but a 303."""
    try:
        target = URL(base_url).join(URL(location)) if location else None
        where = str(target.with_user(None).with_query(None)) if target is not None else None
    except ValueError:
        where = None
    to = f" to {where[:160]}" if where else ""
    return APIError(
        f"The server answered HTTP {status}, a redirect{to}, which is not followed: the API "
        "does not redirect, so the base URL is likely not its address (any more); check "
        f"{SETTING_NAMES.get().base_url}",
        http_status=status,
        definitive=status in _MOVED,
    )


def _is_error_object(body: object) -> bool:
    """Whether `body` is a gateway's OpenAI-like ``{"error": {...}}``: its own words, whatever
    the HTTP status it came under."""
    return isinstance(body, dict) and isinstance(body.get("error"), dict)


def _needs_new_token(exc: APIError | TransportError) -> bool:
    return isinstance(exc, APIError) and exc.code in TOKEN_REFRESH_CODES


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delta-seconds or an HTTP-date."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - now)
