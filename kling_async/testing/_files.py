"""Result video bytes: deterministic content, single byte ranges, drops mid-stream, gzip."""

from __future__ import annotations

import gzip
import random
import re
import struct
from functools import lru_cache
from typing import Literal

from aiohttp import web

_RANGE = re.compile(r"bytes=(\d*)-(\d*)")
_CHUNK = 64 * 1024


@lru_cache(maxsize=64)
def video_bytes(video_id: str, size: int) -> bytes:
    """``size`` bytes that depend only on the video id, starting like an MP4 file."""
    head = struct.pack(">I4s4sI", 24, b"ftyp", b"mp42", 0) + b"mp42isom"
    body = random.Random(f"video:{video_id}").randbytes(max(0, size - len(head)))
    return (head + body)[:size]


def byte_range(header: str | None, size: int) -> tuple[int, int] | Literal["all", "none"]:
    """``(first, last)`` inclusive for a satisfiable range, ``"all"`` to send the whole file,
    ``"none"`` when the range cannot be satisfied (416).

    A header that is not a single well-formed byte range is ignored, as RFC 9110 asks.
    """
    match = _RANGE.fullmatch(header.strip()) if header else None
    if match is None or match.group(1) == match.group(2) == "":
        return "all"
    first_text, last_text = match.groups()
    if first_text == "":
        # A suffix range: the last N bytes.
        length = int(last_text)
        return (max(0, size - length), size - 1) if length > 0 and size > 0 else "none"
    first = int(first_text)
    if last_text != "" and int(last_text) < first:
        return "all"
    last = size - 1 if last_text == "" else min(int(last_text), size - 1)
    return (first, last) if first < size else "none"


def _headers(size: int, span: tuple[int, int] | None) -> tuple[int, dict[str, str]]:
    headers = {"Accept-Ranges": "bytes", "Content-Type": "video/mp4"}
    if span is None:
        headers["Content-Length"] = str(size)
        return 200, headers
    first, last = span
    headers["Content-Length"] = str(last - first + 1)
    headers["Content-Range"] = f"bytes {first}-{last}/{size}"
    return 206, headers


@lru_cache(maxsize=8)
def gzipped(data: bytes) -> bytes:
    """``data`` gzip-compressed, the same bytes every time (no timestamp)."""
    return gzip.compress(data, mtime=0)


async def serve_video(
    request: web.Request, data: bytes, drop_after: int | None, *, encode: bool = False
) -> tuple[web.StreamResponse, int]:
    """Send ``data`` honouring ``Range``; with ``drop_after``, cut the connection after that
    many body bytes; with ``encode``, send it gzip-compressed (ranges count compressed bytes).
    Returns the response and the status it carried."""
    if encode:
        data = gzipped(data)
    span = byte_range(request.headers.get("Range"), len(data))
    if span == "none":
        headers = {"Content-Range": f"bytes */{len(data)}", "Accept-Ranges": "bytes"}
        return web.Response(status=416, headers=headers), 416
    chosen = span if isinstance(span, tuple) else None
    status, headers = _headers(len(data), chosen)
    if encode:
        headers["Content-Encoding"] = "gzip"
    payload = data if chosen is None else data[chosen[0] : chosen[1] + 1]
    response = web.StreamResponse(status=status, headers=headers)
    await response.prepare(request)
    limit = len(payload) if drop_after is None else min(drop_after, len(payload))
    if request.method != "HEAD":
        for start in range(0, limit, _CHUNK):
            await response.write(payload[start : min(start + _CHUNK, limit)])
    if drop_after is not None and request.transport is not None:
        # Closing under a promised Content-Length is what the client sees as a cut download.
        request.transport.close()
    return response, status
