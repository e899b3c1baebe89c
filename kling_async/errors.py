"""The exception tree, and the one table from an API answer to an exception.

Every error the API can return is decided here, by business code first and HTTP status
second: HTTP 429 carries both permanent account errors (1100-1102) and retryable limits
(1302, 1303), so the status alone would retry an empty account forever.

Messages are sentences built from fields; no field ever holds a credential, and text taken
from a server answer is shortened (the transport also redacts any credential from it).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, ClassVar

__all__ = [
    "SETTING_NAMES",
    "APIError",
    "AmbiguousSubmissionError",
    "AuthenticationError",
    "ConfigurationError",
    "ContentPolicyError",
    "InsufficientBalanceError",
    "InvalidArgumentError",
    "InvalidRequestError",
    "KlingError",
    "MalformedTaskError",
    "NotFoundError",
    "NotSentError",
    "PermissionDeniedError",
    "RateLimitError",
    "ServerError",
    "SettingNames",
    "TaskFailedError",
    "TransportError",
    "WatchTimeoutError",
    "error_from_answer",
]

#: Answers to a stale or not-yet-valid JWT: retried once with a freshly made token.
TOKEN_REFRESH_CODES = frozenset({1003, 1004})


class KlingError(Exception):
    """Root of every error raised by kling_async."""


class ConfigurationError(KlingError, ValueError):
    """The client was set up inconsistently (missing credentials, wrong dialect, ...)."""


@dataclass(frozen=True, slots=True)
class SettingNames:
    """How messages about settings name them: by default the Python argument and its
    environment variable; a command line sets its own flags instead (`SETTING_NAMES`)."""

    api_key: str = "api_key= (KLING_API_KEY)"
    access_key: str = "access_key= (KLING_ACCESS_KEY)"
    secret_key: str = "secret_key= (KLING_SECRET_KEY)"  # noqa: S105 - a name, not a key
    base_url: str = "base_url= (KLING_BASE_URL)"
    dialect: str = "dialect= (KLING_DIALECT)"
    requests_per_second: str = "requests_per_second="


#: The names in use for the current context (a command line sets it for its run).
SETTING_NAMES: ContextVar[SettingNames] = ContextVar(
    "kling_async_setting_names",
    default=SettingNames(),  # noqa: B039 - frozen: shared safely
)


class InvalidArgumentError(KlingError, ValueError):
    """An argument was rejected before anything was sent: nothing was paid for it."""


class APIError(KlingError):
    """The API (or a gateway in front of it) answered with an error.

    `code` is Kling's business code (an int), a gateway's own string code, or None when the
    answer had none; `http_status` and `request_id` are as received; `retry_after` is the
    server's ``Retry-After`` in seconds, when it sent one. `retryable` tells whether the same
    request may succeed later; `definitive` is True when the server answered in its own error
    format (see `surely_not_created` for what that means for a create).
    """

    retryable: ClassVar[bool] = False
    hint: ClassVar[str] = ""

    def __init__(
        self,
        message: str,
        *,
        code: int | str | None = None,
        request_id: str | None = None,
        http_status: int | None = None,
        definitive: bool = True,
        retry_after: float | None = None,
    ) -> None:
        self.message = message
        self.code = code
        self.request_id = request_id
        self.http_status = http_status
        self.definitive = definitive
        self.retry_after = retry_after
        super().__init__(self._sentence())

    def _sentence(self) -> str:
        facts = [f"code {self.code}" if self.code is not None else None]
        facts.append(f"HTTP {self.http_status}" if self.http_status is not None else None)
        facts.append(f"request {self.request_id}" if self.request_id else None)
        detail = ", ".join(fact for fact in facts if fact)
        said = self.message.rstrip(".")
        text = f"{said} ({detail})." if detail else f"{said}."
        return f"{text} {self.hint}".strip()


class AuthenticationError(APIError):
    """The credentials were missing, wrong, expired, or from another region."""

    hint = "Check the API key (or access and secret keys) and that the base URL is their region."


class PermissionDeniedError(APIError):
    """The account may not use this resource (abnormal account, model access, IP allow-list)."""

    hint = "Check the account's status and permissions in the Kling console."


class InsufficientBalanceError(APIError):
    """The account is in arrears or its resource pack is used up or expired."""

    hint = "Top up the account or buy a resource pack, then submit again."


class InvalidRequestError(APIError):
    """The server rejected the request's parameters; the message says which."""

    hint = "Fix the parameter named in the message; re-sending it unchanged will fail again."


class NotFoundError(APIError):
    """The task, video or model does not exist (or not on this dialect or region)."""

    hint = "Check the id, and that the base URL and dialect are the ones that created it."


class ContentPolicyError(APIError):
    """The platform or content-safety policy refused the request."""

    hint = "Change the prompt or the source video; the same request will be refused again."


class RateLimitError(APIError):
    """Too many requests (1302) or too many parallel tasks (1303): wait, then try again."""

    retryable = True
    hint = "Slow down or lower the concurrency; the client retries these by itself."

    @property
    def is_concurrency_limit(self) -> bool:
        """True for 1303: the account runs as many tasks as its resource pack allows."""
        return self.code == 1303


class ServerError(APIError):
    """The server or a gateway failed; the same request may succeed later."""

    retryable = True
    hint = "This is usually temporary; the client retries it within its retry policy."


class TransportError(KlingError):
    """The exchange itself failed: no connection, a timeout, a dropped connection, a bad body.

    `may_have_been_sent` is False only when the request surely never reached the server
    (the connection could not be made), which is what makes re-sending a paid create safe;
    left out, it is True, the answer that never pays twice.
    """

    retryable: ClassVar[bool] = True

    def __init__(self, message: str, *, may_have_been_sent: bool = True) -> None:
        self.may_have_been_sent = may_have_been_sent
        super().__init__(message)


class TaskFailedError(KlingError):
    """The task ended in `failed`; `task.status_message` holds the server's reason."""

    def __init__(self, task: Any) -> None:
        self.task = task
        reason = task.status_message or "the server gave no reason"
        super().__init__(
            f"Task {task.id} ({task.kind.value}) failed: {reason}. "
            "Nothing more will happen to it; submit a new task if the cause is fixed."
        )


class NotSentError(KlingError):
    """A request of a batch was never sent: the batch had stopped taking requests (after an
    authentication or balance error, or a failure with ``fail_fast``). Nothing was paid for
    it. `request` is the request, `reason` the error that stopped the batch.
    """

    def __init__(self, request: Any, reason: BaseException | None) -> None:
        self.request = request
        self.reason = reason
        video_id = getattr(request, "video_id", None)
        what = f"the extension of video {video_id}" if video_id else "the request"
        key = f" (key {request.key!r})" if request.key is not None else ""
        why = "the batch stopped" if reason is None else f"the batch stopped after: {reason}"
        super().__init__(
            f"Not sent: {what}{key} was not sent because {why.rstrip('.')}. Nothing was "
            "paid for it; fix the cause and run the batch again to send it."
        )


class MalformedTaskError(KlingError):
    """The server described a task in a way that cannot be true: a succeeded video task
    without any video. `task` is the task as read; its `raw` holds the object as it came.
    """

    def __init__(self, task: Any, problem: str) -> None:
        self.task = task
        self.problem = problem
        super().__init__(
            f"Task {task.id} ({task.kind.value}) cannot be used: {problem}. Read it again "
            "later with get_task; if it stays so, report the task id to the API's provider."
        )


class WatchTimeoutError(KlingError, TimeoutError):
    """The watch deadline passed before the task ended; the task itself may still finish."""

    def __init__(self, task_id: str, last_status: Any, timeout: float | None = None) -> None:
        self.task_id = task_id
        self.last_status = last_status
        self.timeout = timeout
        after = f" after {timeout:g} s" if timeout is not None else ""
        seen = getattr(last_status, "value", last_status) or "no status yet"
        super().__init__(
            f"Stopped watching task {task_id}{after}; its last status was {seen}. "
            "The task may still finish: watch it again or read it with get_task."
        )


class AmbiguousSubmissionError(KlingError):
    """A create request may or may not have made a (paid) task, so it was not re-sent.

    `request` is the request (a `VideoExtendRequest`, or one of the other create kinds) that
    was being submitted.
    """

    def __init__(self, request: Any, reason: str | None = None) -> None:
        self.request = request
        self.reason = reason
        video_id = getattr(request, "video_id", None)
        what = f"The extension of video {video_id}" if video_id else "The new video's task"
        why = f" ({reason})" if reason else ""
        super().__init__(
            f"{what} may or may not have been created"
            f"{why}; it was not sent again, to avoid paying twice. Look for the task "
            "(list_tasks, or get_task with its external_task_id) before submitting it again."
        )


_BY_CODE: Mapping[int, type[APIError]] = {
    1000: AuthenticationError,
    1001: AuthenticationError,
    1002: AuthenticationError,
    1003: AuthenticationError,
    1004: AuthenticationError,
    1100: PermissionDeniedError,
    1101: InsufficientBalanceError,
    1102: InsufficientBalanceError,
    1103: PermissionDeniedError,
    1200: InvalidRequestError,
    1201: InvalidRequestError,
    1202: InvalidRequestError,
    1203: NotFoundError,
    1300: ContentPolicyError,
    1301: ContentPolicyError,
    1302: RateLimitError,
    1303: RateLimitError,
    1304: PermissionDeniedError,
    5000: ServerError,
    5001: ServerError,
    5002: ServerError,
}

#: Gateways' own string codes that name a kind of error.
_BY_GATEWAY_CODE: Mapping[str, type[APIError]] = {
    "task_not_exist": NotFoundError,
    "task_not_found": NotFoundError,
    "insufficient_quota": InsufficientBalanceError,
    "insufficient_balance": InsufficientBalanceError,
    "invalid_api_key": AuthenticationError,
    "rate_limit_exceeded": RateLimitError,
}

_BY_HTTP: Mapping[int, type[APIError]] = {
    400: InvalidRequestError,
    401: AuthenticationError,
    402: InsufficientBalanceError,
    403: PermissionDeniedError,
    404: NotFoundError,
    408: ServerError,
    422: InvalidRequestError,
    429: RateLimitError,
}


#: The error types of OpenAI-like gateways that refuse a request and map to no class above
#: (the class then comes from the HTTP status).
_REFUSAL_TYPES = frozenset({"invalid_request_error"})


def _names_a_refusal(code: object) -> bool:
    """Whether `code` is an error the API or a gateway is known to answer with: a refusal,
    or a server error (5000-5002), which its class keeps from being re-sent."""
    if isinstance(code, int):
        return code in _BY_CODE
    return code in _BY_GATEWAY_CODE or code in _REFUSAL_TYPES


def _class_for(http_status: int, code: object) -> type[APIError]:
    if isinstance(code, int) and code in _BY_CODE:
        return _BY_CODE[code]
    if isinstance(code, str) and code in _BY_GATEWAY_CODE:
        return _BY_GATEWAY_CODE[code]
    if http_status in _BY_HTTP:
        return _BY_HTTP[http_status]
    return ServerError if http_status >= 500 else APIError


def _excerpt(text: str, limit: int = 160) -> str:
    """A short, readable excerpt of a non-JSON answer (an HTML proxy page, say)."""
    plain = re.sub(r"(?is)<(script|style)\b.*?</\1>|<[^>]+>", " ", text)
    plain = " ".join(plain.split())
    return plain if len(plain) <= limit else plain[: limit - 1] + "…"


def _int_code(value: object) -> int | str | None:
    """Kling's code as an int (some gateways send it as digits); other text stays text."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        digits = value.isascii() and value.isdigit() and len(value) < 10
        return int(value) if digits else value[:64]
    return None


def error_from_answer(
    http_status: int, body: object, text: str, *, retry_after: float | None = None
) -> APIError:
    """Turn an error answer into the matching exception.

    `body` is the decoded JSON (or None when the answer was not JSON) and `text` the raw
    body, already free of credentials. Handles Kling's envelope (int code), a gateway's string
    code, an OpenAI-like ``{"error": {...}}`` object and anything else (an HTML proxy page).
    """
    fields: dict[str, Any] = {"http_status": http_status}
    if isinstance(body, Mapping) and "code" in body:
        fields["code"] = _int_code(body.get("code"))
        fields["request_id"] = _str_or_none(body.get("request_id"))
        message = _str_or_none(body.get("message")) or "the server gave no message"
    elif isinstance(body, Mapping) and isinstance(body.get("error"), Mapping):
        error = body["error"]
        fields["code"] = _str_or_none(error.get("code")) or _str_or_none(error.get("type"))
        message = _str_or_none(error.get("message")) or "the gateway gave no message"
    else:
        excerpt = _excerpt(text)
        message = f"Unexpected answer: {excerpt}" if excerpt else "Unexpected empty answer"
        # A 429 refuses the request whoever wrote it (a proxy's rate limit processes nothing);
        # any other answer out of the API's own words may hide a task made behind it.
        fields["definitive"] = http_status == 429
    if 200 <= http_status < 300 and not _names_a_refusal(fields.get("code")):
        # Under a success status, only a code known to refuse says that nothing was made: an
        # unknown one may be a gateway wrapping the failure of an upstream that made the task.
        fields["definitive"] = False
    return _class_for(http_status, fields.get("code"))(message, retry_after=retry_after, **fields)


def sole_error(error: BaseException) -> BaseException:
    """The one error a task group wrapped, so callers can catch it by its own class."""
    while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
        error = error.exceptions[0]
    return error


def _str_or_none(value: object) -> str | None:
    if value is None:
        return None
    return value if isinstance(value, str) else str(value)
