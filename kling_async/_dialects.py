"""The two dialects of the API and where they live: the base URL, the table of what differs
between the official endpoint and a gateway, and the paths of tasks.

A mistyped base URL or dialect is refused when the client is made, with a sentence naming
the setting, so it never looks like an outage later.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from typing import Literal, cast
from urllib.parse import quote, urlsplit

import attrs

from ._validate import is_http_url
from .errors import SETTING_NAMES, ConfigurationError, InvalidArgumentError
from .models import TaskKind

__all__ = [
    "DEFAULT_BASE_URL",
    "DIALECTS",
    "PATHS",
    "Dialect",
    "DialectRules",
    "checked_task_id",
    "checked_task_path",
    "choose_dialect",
    "normalise_base_url",
    "task_path",
]

#: The two dialects of the API: the official endpoint, or a gateway that resells it.
Dialect = Literal["official", "gateway"]

DEFAULT_BASE_URL = "https://api-singapore.klingai.com"
_OFFICIAL_HOST_SUFFIX = "klingai.com"
PATHS = {kind: f"/v1/{kind.value}" for kind in TaskKind}  # under the dialect's prefix
_FOLDERS = {kind: f"{path}/" for kind, path in PATHS.items()}  # where each task of a kind is
_PLAIN_ID = re.compile(r"[A-Za-z0-9_~-][A-Za-z0-9_.~-]*")  # needs no quoting in a URL path


@attrs.frozen
class DialectRules:
    """What differs between the official API and a reselling gateway."""

    prefix: str
    needs_parent_task: bool
    can_list: bool
    finds_by_external_id: bool
    allows_jwt: bool


DIALECTS: Mapping[Dialect, DialectRules] = {
    "official": DialectRules(
        prefix="",
        needs_parent_task=False,
        can_list=True,
        finds_by_external_id=True,
        allows_jwt=True,
    ),
    "gateway": DialectRules(
        prefix="/kling",
        needs_parent_task=True,
        can_list=False,
        finds_by_external_id=False,
        allows_jwt=False,
    ),
}


def normalise_base_url(base_url: str) -> str:
    """The base URL without a trailing slash or ``/kling``; `ConfigurationError` at once when
    it is empty or cannot name a server (a mistyped address must not look like an outage)."""
    problem = _base_url_problem(base_url)
    if problem is not None:
        name = SETTING_NAMES.get().base_url
        raise ConfigurationError(
            f"{name} must be the API's http(s) URL, such as {DEFAULT_BASE_URL}; "
            f"{base_url!r} {problem}."
        )
    url = base_url.strip().rstrip("/")
    return url.removesuffix("/kling")


def _base_url_problem(base_url: str) -> str | None:
    if not base_url.strip():
        return "is empty"
    if not is_http_url(base_url.strip()):
        return "is not an absolute http:// or https:// URL"
    parts = urlsplit(base_url.strip())
    try:
        parts.port  # noqa: B018 - reading it checks it
    except ValueError:
        return "has a port that is not a number from 0 to 65535"
    host = parts.hostname or ""
    if host.rsplit(".", 1)[-1].isdigit() and not _is_ip_address(host):
        return f"has host {host!r}, which is neither an IP address nor a domain name"
    if any(c.isspace() for c in host):
        return f"has a space in its host {host!r}"
    return None


def _is_ip_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def choose_dialect(dialect: str | None, base_url: str) -> Dialect:
    """The dialect asked for, else the one of `base_url` (a klingai.com host is official)."""
    if dialect is None:
        host = urlsplit(base_url).hostname or ""
        official = host == _OFFICIAL_HOST_SUFFIX or host.endswith("." + _OFFICIAL_HOST_SUFFIX)
        return "official" if official else "gateway"
    name = dialect.strip().lower()
    if name not in DIALECTS:
        raise ConfigurationError(
            f"{SETTING_NAMES.get().dialect} must be one of {', '.join(sorted(DIALECTS))}, "
            f"not {dialect!r}."
        )
    return cast(Dialect, name)


def task_path(kind: TaskKind, task_id: str) -> str:
    """The path of one task (under the dialect's prefix); a plain id needs no quoting.

    An id of ASCII letters and digits (the official API's are digits) is plain without the
    regex.
    """
    plain = (task_id.isascii() and task_id.isalnum()) or _PLAIN_ID.fullmatch(task_id)
    segment = task_id if plain else quote(task_id, safe="")
    return f"{PATHS[kind]}/{segment}"


def checked_task_path(kind: TaskKind, task_id: object) -> str:
    """`task_path` of the `checked_task_id`; an id of ASCII letters and digits (the official
    API's are digits), which needs neither, in one step."""
    # `isalnum` of the bytes: a table look-up per character, where the text's own method
    # consults the Unicode database for each (half the cost of this function).
    if type(task_id) is str and task_id.isascii() and task_id.encode().isalnum():
        return _FOLDERS[kind] + task_id
    return task_path(kind, checked_task_id(task_id))


def checked_task_id(task_id: object) -> str:
    """`task_id` stripped; `InvalidArgumentError` (nothing sent) when it names no task."""
    stripped = task_id.strip() if isinstance(task_id, str) else ""
    if stripped in ("", ".", ".."):
        raise InvalidArgumentError(f"task_id must be a non-empty string, not {task_id!r}.")
    return stripped
