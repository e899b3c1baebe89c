"""Checks of the server's arguments, and of create bodies and list parameters (official codes)."""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from ._tasks import MODELS

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


def create_problem(kind: str, body: object, *, gateway: bool) -> Problem | None:
    """What is wrong with a create body of ``kind``, if anything (uniqueness aside)."""
    if not isinstance(body, dict):
        return Problem(400, 1200, "request body must be a JSON object")
    if kind == "videos/text2video":
        return _prompt_problem(body) or _optional_problem(body) or _generation_problem(body)
    if kind == "videos/image2video":
        return _images_problem(body) or _optional_problem(body) or _generation_problem(body)
    return _required_problem(body, gateway) or _optional_problem(body)


def _prompt_problem(body: Mapping[str, Any]) -> Problem | None:
    if not _required(body.get("prompt")):
        return Problem(400, 1200, "prompt is required")
    return None


_CHOICES = {
    "mode": ("std", "pro"),
    "aspect_ratio": ("16:9", "9:16", "1:1"),
    "duration": ("5", "10"),
}


def _generation_problem(body: Mapping[str, Any]) -> Problem | None:
    model = body.get("model_name")
    if model is not None and model not in MODELS:
        return Problem(404, 1203, f"model {model} does not exist")
    for name, allowed in _CHOICES.items():
        value = body.get(name)
        if value is not None and str(value) not in allowed:
            return Problem(400, 1201, f"{name} must be one of {', '.join(allowed)}")
    return None


def _images_problem(body: Mapping[str, Any]) -> Problem | None:
    if body.get("image") is None and body.get("image_tail") is None:
        return Problem(400, 1200, "image or image_tail is required")
    for name in ("image", "image_tail"):
        value = body.get(name)
        if value is not None and not (_absolute_http_url(value) or _is_base64(value)):
            return Problem(400, 1201, f"{name} must be an image URL or base64 without a prefix")
    return None


def _is_base64(value: object) -> bool:
    if not isinstance(value, str) or not value:
        return False
    try:
        base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return False
    return True


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
