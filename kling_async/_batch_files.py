"""The ``batch`` command's files: its requests, read from a JSONL file and checked line by
line before anything is sent, and the file its results are written to."""

from __future__ import annotations

import codecs
import contextlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

from ._chain_cli import chain_from_json
from ._wire import request_from_json
from .chain import ChainRequest, chain_key
from .client import KlingClient
from .errors import ConfigurationError, KlingError
from .journal import request_key
from .models import VideoExtendRequest

__all__ = ["read_requests", "results_file"]

_MAX_PROBLEMS_SHOWN = 10


def read_requests(path: Path, client: KlingClient, *, skip_invalid: bool) -> list[Any]:
    """The requests of a JSONL file, each checked as the client would before sending.

    A bad line is named by its number, and so is a line whose request has the key of an
    earlier line (the journal files requests by key); unless `skip_invalid`, any bad line
    stops the run before anything is sent.
    """
    requests, problems = [], []
    lines_by_key: dict[str, int] = {}
    for number, line in _text_lines(path):
        if isinstance(line, UnicodeDecodeError):
            problems.append(f"{path}:{number}: {_not_utf8(line)}")
            continue
        if not line.strip():
            continue
        try:
            request = _line_request(client, line)
        except json.JSONDecodeError as exc:
            problems.append(f"{path}:{number}: not valid JSON ({exc.msg}, column {exc.colno})")
            continue
        except (ValueError, KlingError) as exc:
            problems.append(f"{path}:{number}: {_first_line(exc)}")
            continue
        key = chain_key(request) if isinstance(request, ChainRequest) else request_key(request)
        first = lines_by_key.setdefault(key, number)
        if first != number:
            problems.append(f"{path}:{number}: {_same_key(request, first)}")
            continue
        requests.append(request)
    _report_problems(path, problems, skip_invalid=skip_invalid)
    if not requests and not problems:
        print(f"kling-async: warning: {path} holds no requests; nothing to send", file=sys.stderr)
    return requests


def _report_problems(path: Path, problems: list[str], *, skip_invalid: bool) -> None:
    """The first invalid lines on stderr; unless `skip_invalid`, any of them stops the run."""
    for problem in problems[:_MAX_PROBLEMS_SHOWN]:
        print(f"kling-async: {'skipped ' if skip_invalid else ''}{problem}", file=sys.stderr)
    if len(problems) > _MAX_PROBLEMS_SHOWN:
        more = len(problems) - _MAX_PROBLEMS_SHOWN
        print(f"kling-async: ... and {more} more invalid line(s)", file=sys.stderr)
    if problems and not skip_invalid:
        raise ConfigurationError(
            f"{len(problems)} invalid line(s) in {path}; nothing was sent "
            "(fix them, or pass --skip-invalid)"
        )


def _text_lines(path: Path) -> Iterator[tuple[int, str | UnicodeDecodeError]]:
    """The file's lines by number, each decoded as UTF-8 (or the error saying why not)."""
    data = path.read_bytes()
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise ConfigurationError(
            f"{path} is UTF-16 text; save it as UTF-8 (one JSON object per line). Nothing was sent."
        )
    for number, raw in enumerate(data.removeprefix(codecs.BOM_UTF8).splitlines(), start=1):
        try:
            yield number, raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            yield number, exc


@contextlib.contextmanager
def results_file(path: Path) -> Iterator[TextIO]:
    """The results file, open for writing; one that cannot be made stops the run unsent."""
    try:
        stream = path.open("w", encoding="utf-8")
    except OSError as exc:
        raise ConfigurationError(
            f"cannot write results to {path}: {exc.strerror or exc}; nothing was sent"
        ) from None
    with stream:
        yield stream


def _not_utf8(error: UnicodeDecodeError) -> str:
    byte = error.object[error.start]
    return f"not UTF-8 text (byte 0x{byte:02x} at column {error.start + 1}); save the file as UTF-8"


def _line_request(client: KlingClient, line: str) -> VideoExtendRequest | ChainRequest:
    """The request of one line: a chain or an extension, checked as the client would."""
    value = json.loads(line)
    chain = chain_from_json(value)
    return client.prepare_chain(chain) if chain else _prepared(client, value)


def _prepared(client: KlingClient, value: Any) -> VideoExtendRequest:
    """An extension line's request, checked as the client would before sending it."""
    request = request_from_json(value)
    client.prepare(request)
    return request


def _same_key(request: VideoExtendRequest | ChainRequest, first: int) -> str:
    if request.key is not None:
        return f"key {request.key!r} is already used on line {first}"
    return f'the same request as line {first} (give each its own "key" to send both)'


def _first_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
