"""The shapes of answers the fake gives: Kling envelopes, gateway bodies, proxy pages."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from http import HTTPStatus
from typing import Any

from aiohttp import web

from ._faults import Fault

_JSON = "application/json"


@dataclass(frozen=True, slots=True)
class Answer:
    """An answer not yet sent, so faults can still replace or garble it."""

    status: int
    body: bytes
    content_type: str = _JSON
    headers: Mapping[str, str] = field(default_factory=dict)
    task_id: str | None = None

    def with_task(self, task_id: str | None) -> Answer:
        """The same answer, recorded as concerning ``task_id``."""
        return replace(self, task_id=task_id)

    def truncated(self) -> Answer:
        """HTTP 200 with the first half of the body: a JSON object cut short never parses."""
        return replace(self, status=200, body=self.body[: len(self.body) // 2])

    def to_response(self) -> web.Response:
        """The aiohttp response to send."""
        charset = "utf-8" if self.content_type.startswith("text/") else None
        return web.Response(
            status=self.status,
            body=self.body,
            content_type=self.content_type,
            charset=charset,
            headers=dict(self.headers),
        )


def _json_answer(status: int, payload: object, headers: Mapping[str, str] | None = None) -> Answer:
    body = json.dumps(payload, ensure_ascii=False).encode()
    return Answer(status, body, headers=dict(headers or {}))


def kling_ok(data: Any, request_id: str) -> Answer:
    """A success envelope."""
    payload = {"code": 0, "message": "SUCCEED", "request_id": request_id, "data": data}
    return _json_answer(200, payload)


def kling_error(
    status: int,
    code: int,
    message: str,
    request_id: str | None,
    retry_after: float | str | None = None,
) -> Answer:
    """An error envelope; ``request_id=None`` leaves it out, as real 401 bodies do."""
    payload: dict[str, Any] = {"code": code, "message": message}
    if request_id is not None:
        payload["request_id"] = request_id
    headers = {} if retry_after is None else {"Retry-After": retry_after_text(retry_after)}
    return _json_answer(status, payload, headers)


def retry_after_text(value: float | str) -> str:
    """A ``Retry-After`` value: strings as given, whole seconds without a fraction.

    Fractional seconds (e.g. ``"0.05"``) are sent as such so tests stay fast, although the
    HTTP grammar only allows whole seconds or a date.
    """
    if isinstance(value, str):
        return value
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def gateway_error(status: int, code: str, message: str) -> Answer:
    """A gateway's own error body with a string code."""
    return _json_answer(status, {"code": code, "message": message, "data": None})


def openai_error(status: int, message: str, error_type: str, code: str | None = None) -> Answer:
    """A gateway's OpenAI-like error body (with a ``code`` when one is given)."""
    error = {"message": message, "type": error_type}
    return _json_answer(status, {"error": error if code is None else {**error, "code": code}})


def html_page(status: int, retry_after: float | str | None = None) -> Answer:
    """The error page a reverse proxy (nginx) puts in front of a failing upstream."""
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = "Error"
    title = f"{status} {reason}"
    page = (
        f"<html>\r\n<head><title>{title}</title></head>\r\n<body>\r\n"
        f"<center><h1>{title}</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
    )
    headers = {} if retry_after is None else {"Retry-After": retry_after_text(retry_after)}
    return Answer(status, page.encode(), content_type="text/html", headers=headers)


def no_such_path(method: str, path: str, request_id: str) -> Answer:
    """HTTP 404 for a path the API does not have, in the envelope a client's parser reads."""
    message = f"no API at {method} {path}; check the base URL and the dialect"
    return kling_error(404, 1203, message, request_id)


def fault_answer(fault: Fault, request_id: str) -> Answer:
    """The answer an answer-replacing fault gives instead of the real one."""
    if fault.name == "html":
        return html_page(fault.http_status or 502, fault.retry_after)
    if fault.name == "gateway_error":
        return gateway_error(fault.http_status or 400, str(fault.code), fault.message or "")
    if fault.name == "openai_error":
        error_code = fault.code if isinstance(fault.code, str) else None
        return openai_error(
            fault.http_status or 401, fault.message or "", fault.error_type or "", error_code
        )
    code = fault.code if isinstance(fault.code, int) else 5000
    return kling_error(
        fault.http_status or 500, code, fault.message or "", request_id, fault.retry_after
    )


async def read_json(request: web.Request) -> Any:
    """The request body parsed as JSON, or None when empty or not JSON."""
    raw = await request.read()
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return None


def drop_connection(request: web.Request) -> web.StreamResponse:
    """Close the connection so the client gets no answer at all."""
    if request.transport is not None:
        request.transport.close()
    # Never delivered: aiohttp fails to write it to the closed transport and moves on quietly.
    return web.Response(status=500)


def expired_link() -> Answer:
    """What a file server answers for a signed link past its expiry: 403, an XML error."""
    body = b"<Error><Code>AccessDenied</Code><Message>Request has expired</Message></Error>"
    return Answer(403, body, content_type="application/xml")
