"""Argument checks made before anything is sent: a typo is never paid for.

Each check says what is wrong in words; the client joins them into one error.
"""

from __future__ import annotations

import math
from typing import TypeGuard
from urllib.parse import urlsplit

from .models import (
    CreateRequest,
    ImageToVideoRequest,
    TextToVideoRequest,
    VideoExtendRequest,
)

__all__ = [
    "ASPECT_RATIOS",
    "DURATIONS",
    "MAX_CALLBACK_URL_LENGTH",
    "MAX_IMAGE_BYTES",
    "MAX_PROMPT_LENGTH",
    "MODES",
    "create_problems",
    "extend_problems",
    "is_http_url",
]

MAX_PROMPT_LENGTH = 2500
#: Longer URLs are cut or refused by servers and proxies along the way; 2048 is the length
#: that every part of the web has long been known to carry.
MAX_CALLBACK_URL_LENGTH = 2048
MODES = ("std", "pro")
ASPECT_RATIOS = ("16:9", "9:16", "1:1")
DURATIONS = (5, 10)
#: The API's limit on an image's file size (so about 13.4 MB once in base64).
MAX_IMAGE_BYTES = 10 * 1024 * 1024
_MAX_IMAGE_TEXT = (MAX_IMAGE_BYTES + 2) // 3 * 4


def create_problems(request: CreateRequest, *, needs_parent_task: bool) -> list[str]:
    """Everything wrong with a create request of any kind, in words."""
    if isinstance(request, VideoExtendRequest):
        return extend_problems(request, needs_parent_task=needs_parent_task)
    if isinstance(request, TextToVideoRequest):
        problems = [] if _is_text(request.prompt) else ["prompt must be a non-empty string"]
        return problems + _generation_problems(request)
    return _image_problems(request) + _generation_problems(request)


def extend_problems(request: VideoExtendRequest, *, needs_parent_task: bool) -> list[str]:
    """Everything wrong with `request`, in words; empty when it may be sent."""
    problems: list[str] = []
    if not _is_text(request.video_id):
        problems.append("video_id must be a non-empty string")
    if needs_parent_task and not _is_text(request.task_id):
        problems.append("a gateway needs task_id, the task that produced the video")
    elif request.task_id is not None and not _is_text(request.task_id):
        problems.append("task_id must be a non-empty string when given")
    return problems + _common_problems(request)


def _common_problems(request: CreateRequest) -> list[str]:
    """The checks of the fields every kind shares."""
    problems: list[str] = []
    for name in ("prompt", "negative_prompt"):
        text = getattr(request, name)
        if text is not None and (not isinstance(text, str) or len(text) > MAX_PROMPT_LENGTH):
            problems.append(f"{name} must be a string of at most {MAX_PROMPT_LENGTH} characters")
    if request.cfg_scale is not None and not _is_unit_number(request.cfg_scale):
        problems.append(f"cfg_scale must be a number from 0 to 1, not {request.cfg_scale!r}")
    if request.callback_url is not None:
        problems.extend(_callback_url_problems(request.callback_url))
    if request.external_task_id is not None and not _is_text(request.external_task_id):
        problems.append("external_task_id must be a non-empty string when given")
    return problems


def _generation_problems(request: TextToVideoRequest | ImageToVideoRequest) -> list[str]:
    """The checks of a new video's settings (text or image to video)."""
    problems = _common_problems(request)
    if request.model_name is not None and not _is_text(request.model_name):
        problems.append("model_name must be a non-empty string when given")
    if request.mode is not None and request.mode not in MODES:
        problems.append(f"mode must be one of {', '.join(MODES)}, not {request.mode!r}")
    ratio = getattr(request, "aspect_ratio", None)
    if ratio is not None and ratio not in ASPECT_RATIOS:
        problems.append(f"aspect_ratio must be one of {', '.join(ASPECT_RATIOS)}, not {ratio!r}")
    duration = request.duration
    if duration is not None and (isinstance(duration, bool) or duration not in DURATIONS):
        problems.append(f"duration must be 5 or 10 (seconds), not {duration!r}")
    return problems


def _image_problems(request: ImageToVideoRequest) -> list[str]:
    if request.image is None and request.image_tail is None:
        return ["image (or image_tail) is required: an http(s) URL, a file, or base64 bytes"]
    problems = []
    for name in ("image", "image_tail"):
        value = getattr(request, name)
        if value is None or is_http_url(value):
            continue
        if not _is_text(value):
            problems.append(f"{name} must be an http(s) URL or base64 text")
        elif value.startswith("data:"):
            problems.append(f"{name} must be base64 without a 'data:' prefix")
        elif len(value) > _MAX_IMAGE_TEXT:
            problems.append(f"{name} is larger than the API's {MAX_IMAGE_BYTES >> 20} MB limit")
    return problems


def _callback_url_problems(url: object) -> list[str]:
    """What is wrong with a callback URL. The URL itself is never quoted: it may hold a
    password or a token."""
    if not is_http_url(url):
        return ["callback_url must be an absolute http:// or https:// URL"]
    problems = []
    if "@" in urlsplit(url).netloc:
        problems.append(
            "callback_url must not carry a user name or password (user:password@host): the "
            "API would hand them to whoever serves that host; put a token in the path instead"
        )
    if len(url) > MAX_CALLBACK_URL_LENGTH:
        problems.append(
            f"callback_url must be at most {MAX_CALLBACK_URL_LENGTH} characters, not {len(url)}"
        )
    return problems


def _is_text(value: object) -> bool:
    return isinstance(value, str) and bool(value.strip())


def _is_unit_number(value: object) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return math.isfinite(value) and 0.0 <= value <= 1.0


def is_http_url(value: object) -> TypeGuard[str]:
    """Whether `value` is an absolute http(s) URL with a host."""
    if not isinstance(value, str):
        return False
    try:
        parts = urlsplit(value)
        return parts.scheme in ("http", "https") and bool(parts.hostname)
    except ValueError:  # e.g. an unclosed "[" of an IPv6 address
        return False
