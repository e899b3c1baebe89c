"""Checks of the server's arguments, and of create bodies and list parameters (official codes)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

MAX_PROMPT = 2500
DEFAULT_FAILURE_MESSAGES = (
    "Failure to pass the risk control system",
    "The content may violate the platform's content safety policy",
    "Video generation failed due to an internal error, please try again",
    "The source video has expired and can no longer be extended",
)


@dataclass(frozen=True, slots=True)
class Problem:
    """A refusal: the HTTP status, the Kling business code and a readable message."""

    http: int
    code: int
    message: str


def _required(value: object) -> bool:
    return isinstance(value, str) and bool(value.strip())


def _absolute_http_url(value: object) -> bool:
    if not isinstance(value, str):
        return False
    parts = urlsplit(value)
    return parts.scheme in ("http", "https") and bool(parts.netloc)


def _cfg_scale_ok(value: object) -> bool:
    # bool is an int subclass, but true/false is not a scale.
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return math.isfinite(value) and 0.0 <= value <= 1.0


def _text_problem(body: Mapping[str, Any], name: str) -> Problem | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        return Problem(400, 1201, f"{name} must be a string")
    if len(value) > MAX_PROMPT:
        return Problem(400, 1201, f"{name} must be at most {MAX_PROMPT} characters")
    return None


def _required_problem(body: Mapping[str, Any], gateway: bool) -> Problem | None:
    if not _required(body.get("video_id")):
        return Problem(400, 1200, "video_id is required")
    if gateway and not _required(body.get("task_id")):
        return Problem(400, 1200, "task_id is required")
    return None


def _optional_problem(body: Mapping[str, Any]) -> Problem | None:
    for name in ("prompt", "negative_prompt"):
        problem = _text_problem(body, name)
        if problem is not None:
            return problem
    # An explicit null reads as "not given", as the real decoders treat it.
    if body.get("cfg_scale") is not None and not _cfg_scale_ok(body["cfg_scale"]):
        return Problem(400, 1201, "cfg_scale must be a number between 0 and 1")
    if body.get("callback_url") is not None and not _absolute_http_url(body["callback_url"]):
        return Problem(400, 1201, "callback_url must be an absolute http(s) URL")
    external = body.get("external_task_id")
    if external is not None and not isinstance(external, str):
        return Problem(400, 1201, "external_task_id must be a string")
    return None


def create_problem(body: object, *, gateway: bool) -> Problem | None:
    """What is wrong with a video-extend create body, if anything (uniqueness aside)."""
    if not isinstance(body, dict):
        return Problem(400, 1200, "request body must be a JSON object")
    return _required_problem(body, gateway) or _optional_problem(body)


def page_param(query: Mapping[str, str], name: str, default: int, top: int) -> int | Problem:
    """A list parameter as an int within ``1..top``, or the problem it has."""
    raw = query.get(name)
    if raw is None:
        return default
    if raw.isascii() and raw.isdigit() and 1 <= int(raw) <= top:
        return int(raw)
    return Problem(400, 1201, f"{name} must be an integer between 1 and {top}")


def check_server_arguments(
    dialect: str, speed: float, fail_rate: float, messages: Sequence[str]
) -> None:
    """Raise ValueError for a `FakeKlingServer` argument out of range."""
    if dialect not in ("official", "gateway"):
        raise ValueError(f"dialect must be 'official' or 'gateway', not {dialect!r}")
    if speed <= 0:
        raise ValueError("speed must be positive")
    if not 0.0 <= fail_rate <= 1.0:
        raise ValueError("fail_rate must be within [0, 1]")
    if not messages:
        raise ValueError("failure_messages cannot be empty")
