"""The table from an API answer to an exception, and the words of each exception."""

from __future__ import annotations

import types

import attrs
import pytest

from kling_async import (
    AmbiguousSubmissionError,
    APIError,
    AuthenticationError,
    Chain,
    ChainError,
    ContentPolicyError,
    InsufficientBalanceError,
    InvalidRequestError,
    KlingError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    ServerError,
    Task,
    TaskFailedError,
    TaskKind,
    TaskStatus,
    TransportError,
    VideoExtendRequest,
    WatchTimeoutError,
)
from kling_async._transport import surely_not_created
from kling_async.errors import MalformedTaskError, NotSentError, error_from_answer, sole_error

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


def test_errors_are_made_with_the_documented_arguments_alone() -> None:
    """AmbiguousSubmissionError(request) and ChainError(step, chain) need no reason: the
    documented arguments make a readable error."""
    ambiguous = AmbiguousSubmissionError(VideoExtendRequest("vid-7"))
    assert ambiguous.request.video_id == "vid-7" and ambiguous.reason is None
    assert "vid-7 may or may not have been created; it was not sent again" in str(ambiguous)
    chained = ChainError(step=2, chain=Chain())
    assert chained.step == 2 and chained.chain == Chain() and isinstance(chained, KlingError)
    assert str(chained) == "Step 2 of the chain failed."


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
    said = "the gateway gave no message (code rate_limit_exceeded, HTTP 429)."
    assert str(error).startswith(said)


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


# --- The sentences each error says (what happened, and what to do) -------------------------


def test_an_api_error_reads_as_one_sentence_of_its_facts() -> None:
    """Message, then only the facts there are, in brackets, then the advice; one final stop."""
    full = InsufficientBalanceError("Pack used up X.", code=1102, http_status=429, request_id="r")
    assert str(full) == (
        "Pack used up X (code 1102, HTTP 429, request r). "
        "Top up the account or buy a resource pack, then submit again."
    )
    assert str(APIError("Refused", http_status=409)) == "Refused (HTTP 409)."
    assert str(APIError("Refused", code="nope")) == "Refused (code nope)."
    assert str(APIError("Refused")) == "Refused."


def test_a_proxy_page_is_quoted_as_plain_words_within_a_limit() -> None:
    """Tags become spaces; a page of up to 160 characters is quoted whole, a longer one cut."""
    error = error_from_answer(502, None, "<p>Bad</p><p>Gateway</p>")
    assert error.message == "Unexpected answer: Bad Gateway"
    assert error.definitive is False
    exact = "x" * 160
    assert error_from_answer(502, None, exact).message == f"Unexpected answer: {exact}"
    cut = error_from_answer(502, None, "y" * 161).message
    assert cut == "Unexpected answer: " + "y" * 159 + "…"
    assert str(error_from_answer(500, None, "")).startswith("Unexpected empty answer (HTTP 500).")


def test_a_long_gateway_code_is_kept_to_64_characters() -> None:
    """A gateway's text code is kept (shortened), never read as a number."""
    error = error_from_answer(400, {"code": "e" * 100, "message": "x"}, "")
    assert error.code == "e" * 64


def test_the_advice_of_every_error_is_said_in_full() -> None:
    """Each error ends on what to do next, word for word."""
    task = Task("t-9", TaskKind.VIDEO_EXTEND, TaskStatus.FAILED)
    assert str(TaskFailedError(task)) == (
        "Task t-9 (videos/video-extend) failed: the server gave no reason. "
        "Nothing more will happen to it; submit a new task if the cause is fixed."
    )
    ambiguous = AmbiguousSubmissionError(VideoExtendRequest("vid-7"), "connection dropped")
    assert ambiguous.reason == "connection dropped"
    assert str(ambiguous) == (
        "The extension of video vid-7 may or may not have been created (connection dropped); "
        "it was not sent again, to avoid paying twice. Look for the task "
        "(list_tasks, or get_task with its external_task_id) before submitting it again."
    )


def test_a_watch_timeout_says_how_long_and_what_was_last_seen() -> None:
    """The deadline and the last status are named when known; the advice is always given."""
    error = WatchTimeoutError("t-1", TaskStatus.PROCESSING, 90.0)
    assert (error.task_id, error.last_status, error.timeout) == ("t-1", TaskStatus.PROCESSING, 90)
    assert str(error) == (
        "Stopped watching task t-1 after 90 s; its last status was processing. "
        "The task may still finish: watch it again or read it with get_task."
    )
    blank = WatchTimeoutError("t-2", None)
    assert blank.timeout is None
    assert str(blank).startswith("Stopped watching task t-2; its last status was no status yet.")
    assert "last status was queued." in str(WatchTimeoutError("t-3", "queued"))


def test_a_transport_error_says_its_message_and_whether_it_was_sent() -> None:
    """may_have_been_sent is a plain bool; the message is the error's text."""
    error = TransportError("Connection refused.", may_have_been_sent=False)
    assert error.may_have_been_sent is False and error.retryable
    assert str(error) == "Connection refused."
    assert TransportError("Dropped.", may_have_been_sent=True).may_have_been_sent is True


def test_a_transport_error_made_with_a_message_alone_may_have_been_sent() -> None:
    """Made with a message alone, it errs on the side that never pays twice: the request
    may have reached the server, so a create is not sent again."""
    error = TransportError("Dropped.")
    assert error.may_have_been_sent is True
    assert not surely_not_created(error)


def test_a_request_never_sent_says_so_and_why() -> None:
    """NotSentError names the request, its key and the batch's reason: nothing was paid."""
    stop = InsufficientBalanceError("Pack used up", code=1102)
    request = VideoExtendRequest("vid-7", key="row-7")
    error = NotSentError(request, stop)
    assert (error.request, error.reason) == (request, stop)
    assert str(error) == (
        "Not sent: the extension of video vid-7 (key 'row-7') was not sent because the batch "
        f"stopped after: {str(stop).rstrip('.')}. Nothing was paid for it; fix the cause and "
        "run the batch again to send it."
    )
    bare = NotSentError(VideoExtendRequest("vid-8"), None)
    assert str(bare).startswith("Not sent: the extension of video vid-8 was not sent because ")
    assert "because the batch stopped. Nothing was paid" in str(bare)
    nameless = NotSentError(attrs.evolve(request, video_id=""), None)
    assert str(nameless).startswith("Not sent: the request (key 'row-7') was not sent")


def test_a_malformed_task_names_the_task_and_the_problem() -> None:
    """MalformedTaskError keeps the task and says what to do with its id."""
    task = Task("t-4", TaskKind.VIDEO_EXTEND, TaskStatus.SUCCEED)
    error = MalformedTaskError(task, "it succeeded without a video")
    assert (error.task, error.problem) == (task, "it succeeded without a video")
    assert str(error) == (
        "Task t-4 (videos/video-extend) cannot be used: it succeeded without a video. Read it "
        "again later with get_task; if it stays so, report the task id to the API's provider."
    )


def test_a_message_with_its_own_full_stop_gets_no_second_one() -> None:
    """A message that ends in a full stop is not given a second one."""
    assert str(APIError("Refused.")) == "Refused."
    assert str(APIError("Refused.", http_status=400)) == "Refused (HTTP 400)."


def test_errors_about_requests_without_a_video_still_read_well() -> None:
    """A request of another kind (no video id) is named as such; a reason is quoted whole."""
    ambiguous = AmbiguousSubmissionError(types.SimpleNamespace(prompt="a cat"), "timed out")
    assert str(ambiguous).startswith("The new video's task may or may not have been created")
    unsent = NotSentError(types.SimpleNamespace(key=None), KlingError("Stopped by X."))
    assert str(unsent).startswith(
        "Not sent: the request was not sent because the batch stopped after: Stopped by X. "
    )


@pytest.mark.parametrize(
    ("status", "definitive"), [(429, True), (403, False), (428, False), (502, False)]
)
def test_a_page_out_of_the_apis_words_is_a_refusal_only_under_429(
    status: int, definitive: bool
) -> None:
    """A 429 refuses the request whoever wrote it; any other page may hide a made task."""
    error = error_from_answer(status, None, "<h1>Too many</h1>")
    assert error.definitive is definitive
    assert surely_not_created(error) is definitive


@pytest.mark.parametrize(
    ("status", "body", "definitive"),
    [
        (200, {"code": 9999, "message": "upstream trouble"}, False),
        (299, {"code": 9999, "message": "upstream trouble"}, False),
        (300, {"code": 9999, "message": "upstream trouble"}, True),
        (400, {"code": 9999, "message": "refused"}, True),
        (200, {"code": 1303, "message": "over the limit"}, True),
        (200, {"code": "upstream_error", "message": "?"}, False),
        (200, {"error": {"type": "upstream_error", "message": "?"}}, False),
        (200, {"error": {"code": "insufficient_quota", "message": "spent"}}, True),
        (200, {"error": {"type": "invalid_request_error", "message": "bad"}}, True),
        (200, {"error": {"type": "task_not_exist", "message": "none"}}, True),
    ],
)
def test_under_a_success_status_only_a_known_error_is_a_refusal(
    status: int, body: dict[str, object], definitive: bool
) -> None:
    """An error the client does not know under a 2xx may be a gateway wrapping an upstream
    that made the task; a known code, or any code under an error status, is a refusal."""
    error = error_from_answer(status, body, "")
    assert error.definitive is definitive
