"""Argument checks made before anything is sent: a typo is never paid for.

Each check says what is wrong in words; the client joins them into one error.
"""

from __future__ import annotations

import math
from urllib.parse import urlsplit

from .models import VideoExtendRequest

__all__ = ["MAX_PROMPT_LENGTH", "extend_problems", "is_http_url"]

MAX_PROMPT_LENGTH = 2500


def extend_problems(request: VideoExtendRequest, *, needs_parent_task: bool) -> list[str]:
    """Everything wrong with `request`, in words; empty when it may be sent."""
    problems: list[str] = []
    if not _is_text(request.video_id):
        problems.append("video_id must be a non-empty string")
    if needs_parent_task and not _is_text(request.task_id):
        problems.append("a gateway needs task_id, the task that produced the video")
    elif request.task_id is not None and not _is_text(request.task_id):
        problems.append("task_id must be a non-empty string when given")
    for name in ("prompt", "negative_prompt"):
        text = getattr(request, name)
        if text is not None and (not isinstance(text, str) or len(text) > MAX_PROMPT_LENGTH):
            problems.append(f"{name} must be a string of at most {MAX_PROMPT_LENGTH} characters")
    if request.cfg_scale is not None and not _is_unit_number(request.cfg_scale):
        problems.append(f"cfg_scale must be a number from 0 to 1, not {request.cfg_scale!r}")
    if request.callback_url is not None and not is_http_url(request.callback_url):
        problems.append("callback_url must be an absolute http:// or https:// URL")
    if request.external_task_id is not None and not _is_text(request.external_task_id):
        problems.append("external_task_id must be a non-empty string when given")
    return problems


def _is_text(value: object) -> bool:
    return isinstance(value, str) and bool(value.strip())


def _is_unit_number(value: object) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return math.isfinite(value) and 0.0 <= value <= 1.0


def is_http_url(value: object) -> bool:
    if not isinstance(value, str):
        return False
    parts = urlsplit(value)
    return parts.scheme in ("http", "https") and bool(parts.hostname)
