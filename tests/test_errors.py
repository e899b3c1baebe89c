"""The table from an API answer to an exception, and the words of each exception."""

from __future__ import annotations

import pytest

from kling_async import (
    AmbiguousSubmissionError,
    APIError,
    AuthenticationError,
    ContentPolicyError,
    InsufficientBalanceError,
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    ServerError,
    Task,
    TaskFailedError,
    TaskKind,
    TaskStatus,
    VideoExtendRequest,
    WatchTimeoutError,
)
from kling_async.errors import error_from_answer, sole_error

# Every business code of the spec: (HTTP status, code, class, retryable).
SPEC_TABLE = [
    (401, 1000, AuthenticationError, False),
    (401, 1001, AuthenticationError, False),
    (401, 1002, AuthenticationError, False),
    (401, 1003, AuthenticationError, False),
    (401, 1004, AuthenticationError, False),
    (429, 1100, PermissionDeniedError, False),
    (429, 1101, InsufficientBalanceError, False),
    (429, 1102, InsufficientBalanceError, False),
    (403, 1103, PermissionDeniedError, False),
    (400, 1200, InvalidRequestError, False),
    (400, 1201, InvalidRequestError, False),
    (404, 1202, InvalidRequestError, False),
    (404, 1203, NotFoundError, False),
    (400, 1300, ContentPolicyError, False),
    (400, 1301, ContentPolicyError, False),
    (429, 1302, RateLimitError, True),
    (429, 1303, RateLimitError, True),
    (403, 1304, PermissionDeniedError, False),
    (500, 5000, ServerError, True),
    (503, 5001, ServerError, True),
    (504, 5002, ServerError, True),
]


@pytest.mark.parametrize(("http", "code", "cls", "retryable"), SPEC_TABLE)
def test_every_business_code_maps_to_its_class(
    http: int, code: int, cls: type[APIError], retryable: bool
) -> None:
    """Each code of the spec gives its class, its retryability and its fields."""
    body = {"code": code, "message": "words from the server", "request_id": "req-1"}
    error = error_from_answer(http, body, "")
    assert type(error) is cls
    assert error.retryable is retryable
    assert (error.code, error.http_status, error.request_id) == (code, http, "req-1")
    assert error.definitive
    assert "words from the server" in str(error)
    assert f"code {code}" in str(error) and f"HTTP {http}" in str(error)


def test_business_code_wins_over_http_status() -> None:
    """A 429 with 1102 (pack used up) is permanent, though 429 alone would be retryable."""
    error = error_from_answer(429, {"code": 1102, "message": "pack used up"}, "")
    assert isinstance(error, InsufficientBalanceError)
    assert not error.retryable


def test_concurrency_limit_is_recognisable() -> None:
    """1303 is a RateLimitError that says it is about parallel tasks, with Retry-After."""
    error = error_from_answer(429, {"code": 1303, "message": "over"}, "", retry_after=3.0)
    assert isinstance(error, RateLimitError)
    assert error.is_concurrency_limit and error.retry_after == 3.0


def test_gateway_string_code_is_understood() -> None:
    """A gateway's ``{"code": "task_not_exist"}`` is a NotFoundError naming that code."""
    body = {"code": "task_not_exist", "message": "parent task not found", "data": None}
    error = error_from_answer(400, body, "")
    assert isinstance(error, NotFoundError)
    assert error.code == "task_not_exist"
    assert "parent task not found" in str(error)


def test_openai_like_error_object_is_understood() -> None:
    """A gateway's own ``{"error": {...}}`` auth failure reads as an AuthenticationError."""
    body = {"error": {"message": "Invalid API key provided", "type": "invalid_request_error"}}
    error = error_from_answer(401, body, "")
    assert isinstance(error, AuthenticationError)
    assert "Invalid API key provided" in str(error)
    assert error.definitive


def test_html_proxy_page_gives_a_short_clear_error() -> None:
    """A 502 HTML page is a retryable, non-definitive ServerError quoting a short excerpt."""
    page = "<html><head><style>b{}</style></head><body><h1>502 Bad Gateway</h1>" + "x" * 900
    error = error_from_answer(502, None, page + "</body></html>")
    assert isinstance(error, ServerError)
    assert error.retryable and not error.definitive
    assert "502 Bad Gateway" in str(error) and "HTTP 502" in str(error)
    assert "<h1>" not in str(error) and len(str(error)) < 400


def test_unknown_code_falls_back_to_http_status() -> None:
    """An unknown business code is classified by the HTTP status."""
    assert isinstance(error_from_answer(503, {"code": 7777, "message": "?"}, ""), ServerError)
    assert isinstance(
        error_from_answer(403, {"code": 7777, "message": "?"}, ""), PermissionDeniedError
    )


def test_numeric_string_code_is_read_as_number() -> None:
    """Some gateways send Kling's code as a string of digits."""
    assert isinstance(
        error_from_answer(400, {"code": "1301", "message": "x"}, ""), ContentPolicyError
    )


def test_empty_answer_says_so() -> None:
    """An empty 500 body still gives a sentence."""
    error = error_from_answer(500, None, "")
    assert "empty" in str(error).lower() and "HTTP 500" in str(error)


def test_task_failed_error_names_task_and_reason() -> None:
    """TaskFailedError carries the task and says why it failed."""
    task = Task("t-9", TaskKind.VIDEO_EXTEND, TaskStatus.FAILED, status_message="content policy")
    error = TaskFailedError(task)
    assert error.task is task
    assert "t-9" in str(error) and "content policy" in str(error)


def test_watch_timeout_is_a_timeout_error() -> None:
    """WatchTimeoutError is also TimeoutError and names the task and last status."""
    error = WatchTimeoutError("t-1", TaskStatus.PROCESSING, 60.0)
    assert isinstance(error, TimeoutError)
    assert "t-1" in str(error) and "processing" in str(error) and "60 s" in str(error)


def test_ambiguous_submission_keeps_the_request() -> None:
    """AmbiguousSubmissionError holds the request and tells what to do."""
    request = VideoExtendRequest("vid-7")
    error = AmbiguousSubmissionError(request, "connection dropped")
    assert error.request is request
    assert "vid-7" in str(error) and "not sent again" in str(error)


@pytest.mark.parametrize("http", [500, 501, 599])
def test_a_5xx_without_a_known_code_is_a_retryable_server_error(http: int) -> None:
    """HTTP 500 itself (not only the codes above it) is a server error worth retrying."""
    for body in (None, {"code": 7777, "message": "?"}, {"error": {"message": "?"}}):
        error = error_from_answer(http, body, "<h1>down</h1>")
        assert type(error) is ServerError and error.retryable


@pytest.mark.parametrize("http", [405, 409, 410, 413, 418, 451, 499])
def test_an_unmapped_4xx_is_neither_retryable_nor_a_server_error(http: int) -> None:
    """A 409 or 413 will be refused again: a plain APIError, never retried."""
    for body in (None, {"code": "conflict", "message": "no"}, {"code": 7777, "message": "?"}):
        error = error_from_answer(http, body, "refused")
        assert type(error) is APIError and not error.retryable


def test_the_code_of_an_error_object_wins_over_its_type() -> None:
    """``{"error": {"code": "insufficient_quota"}}`` under a 429 is an empty account."""
    body = {"error": {"code": "insufficient_quota", "type": "new_api_error", "message": "spent"}}
    error = error_from_answer(429, body, "")
    assert type(error) is InsufficientBalanceError and not error.retryable
    assert error.code == "insufficient_quota" and error.definitive
    assert str(error).startswith("spent (code insufficient_quota, HTTP 429).")


def test_an_error_object_without_a_code_is_named_by_its_type() -> None:
    """Without a code, the object's type names the error; without a message, that is said."""
    error = error_from_answer(429, {"error": {"type": "rate_limit_exceeded"}}, "")
    assert type(error) is RateLimitError and error.code == "rate_limit_exceeded"
    assert "the gateway gave no message" in str(error)


@pytest.mark.parametrize(
    ("code", "read"),
    [("0123", 123), ("123456789", 123456789), ("1234567890", "1234567890"), (True, None)],
)
def test_odd_codes_are_read_carefully(code: object, read: object) -> None:
    """Digits become a number (up to nine of them); a boolean is no code at all."""
    assert error_from_answer(400, {"code": code, "message": "x"}, "").code == read


def test_an_envelope_without_a_message_says_so() -> None:
    """A Kling envelope may lack its message: the error still reads as a sentence."""
    error = error_from_answer(400, {"code": 1201, "request_id": 42}, "")
    assert str(error).startswith("the server gave no message (code 1201, HTTP 400, request 42).")
    assert error.request_id == "42"


def test_sole_error_unwraps_a_task_groups_single_error() -> None:
    """One error wrapped (even twice) by task groups comes out as itself; several stay grouped."""
    inner = RateLimitError("slow down", code=1302)
    assert sole_error(ExceptionGroup("g", [ExceptionGroup("h", [inner])])) is inner
    assert sole_error(inner) is inner
    several = ExceptionGroup("g", [inner, ServerError("down")])
    assert sole_error(several) is several


def test_a_message_with_its_own_full_stop_gets_no_second_one() -> None:
    """A message that ends in a full stop is not given a second one."""
    assert str(APIError("Refused.")) == "Refused."
    assert str(APIError("Refused.", http_status=400)) == "Refused (HTTP 400)."
