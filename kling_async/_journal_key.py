"""The name a request is journaled under, and the API fields that make it that request.

The digest of a request's API fields is part of every journal's format: changing how it is
made would orphan every existing journal.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from ._wire import converter
from .models import CreateRequest, TaskKind, kind_of

__all__ = ["KIND_FIELD", "canonical_json", "differing_fields", "request_key", "stored_fields"]

# The client assigns `external_task_id` itself, so it must not change the request's identity;
# `key` is the identity when given.
_NOT_IDENTITY = frozenset({"key", "external_task_id"})


def request_key(request: CreateRequest) -> str:
    """The name a request is journaled under: `request.key`, else a digest of its API fields.

    The digest is ``sha256:`` + the hex SHA-256 of the canonical JSON of the fields that are
    set (sorted keys, numbers as floats), leaving out `key` and `external_task_id`. It is part
    of the journal's format: changing it would orphan every existing journal.

    >>> from kling_async.models import VideoExtendRequest
    >>> request_key(VideoExtendRequest("v1", key="clip-7"))
    'clip-7'
    >>> request_key(VideoExtendRequest("v1", prompt="hi"))[:7]
    'sha256:'
    """
    if request.key is not None:
        return request.key
    digest = hashlib.sha256(canonical_json(request).encode()).hexdigest()
    return f"sha256:{digest}"


# A request of another kind than video-extend carries its kind under this name, so an
# extension's stored form (and digest) stays what it was before other kinds existed.
KIND_FIELD = "task_kind"


def stored_fields(request: CreateRequest) -> dict[str, Any]:
    """The request's fields as a journal stores them: its kind added unless an extension."""
    fields: dict[str, Any] = converter.unstructure(request)
    kind = kind_of(request)
    return fields if kind is TaskKind.VIDEO_EXTEND else {**fields, KIND_FIELD: kind.value}


def _api_fields(request: CreateRequest) -> dict[str, Any]:
    fields = stored_fields(request)
    return {
        name: _canonical_value(value)
        for name, value in fields.items()
        if value is not None and name not in _NOT_IDENTITY
    }


def _canonical_value(value: Any) -> Any:
    # cfg_scale=1 and cfg_scale=1.0 are the same request to the API.
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return value


def canonical_json(request: CreateRequest) -> str:
    """The API fields that are set, as the one text every equal request gives."""
    # ASCII escapes (json's default) make any text encodable, even a lone surrogate that a
    # JSONL file's "\ud800" decodes to.
    return json.dumps(_api_fields(request), sort_keys=True, separators=(",", ":"))


def differing_fields(one: CreateRequest, other: CreateRequest) -> list[str]:
    """The names of the API fields two requests disagree on."""
    a, b = _api_fields(one), _api_fields(other)
    return sorted(name for name in a.keys() | b.keys() if a.get(name) != b.get(name))
