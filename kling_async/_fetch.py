"""One download's exchange with a file server: the requests, until the bytes are all in.

Redirects are followed here, each hop's host checked before connecting; a cut connection
resumes with a ``Range`` request (``If-Range`` guarding against a changed file), and a
server that ignores ranges makes the file start again from zero; a compressed answer is
decoded as it arrives. What fails in a way another attempt may get past is retried under
the policy; what cannot succeed is a `Failed`, which `download_file` tells as a
`DownloadError` naming the URL and the destination. Where the bytes go is the caller's
(a `Sink`); the names of files, the public errors and progress are `download`'s.
"""

from __future__ import annotations

import contextlib
import logging
import random
import re
import zlib
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from typing import Protocol

import aiohttp
import attrs
from yarl import URL

from ._addresses import AddressRefusedError, AddressRules
from ._clock import Clock
from ._transport import parse_retry_after
from .policies import RetryPolicy
from .telemetry import log_fields

__all__ = ["SCHEMES", "SHOWN_LENGTH", "Failed", "Fetch", "Sink", "scrub", "shown"]

log = logging.getLogger("kling_async.download")  # the logger of the public module

SCHEMES = frozenset({"http", "https"})
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")
_UNSATISFIED_RANGE = re.compile(r"bytes\s+\*/(\d+)")
_URL_QUERY = re.compile(r"(\w+://[^\s?#'\"]*)\?[^\s'\")]*")
SHOWN_LENGTH = 120

#: Failures of the exchange that the same request may get past later: a refused or cut
#: connection, a timeout, a body that ended early. Disk errors never reach this tuple: the part
#: file (the `Sink`) turns them into a `DownloadError` first.
_TRANSIENT_ERRORS = (
    aiohttp.ClientConnectionError,
    aiohttp.ClientPayloadError,
    TimeoutError,
    OSError,
)

_EXPIRED = (
    "The URL may have expired: result URLs expire, so download promptly, or read the task "
    "again for a fresh URL."
)
#: What a permanent 4xx answer means for a result URL.
_HINTS: Mapping[int, str] = {401: _EXPIRED, 403: _EXPIRED, 404: _EXPIRED, 410: _EXPIRED}
_OTHER_4XX = "The same request will fail again; check the URL."
_PRIVATE = (
    "Downloads go only to public addresses, so that a result URL cannot reach this machine or "
    "its network. For a fake server on this machine or a private network, make the client with "
    "KlingClient(allow_private_downloads=True)."
)
#: Content encodings decoded here (zlib reads both gzip and zlib-wrapped deflate).
_INFLATED = frozenset({"gzip", "x-gzip", "deflate"})
_LATER = "The file server may be down or the URL expired; try again later, or read the task again."


class Failed(Exception):  # noqa: N818 - a signal to download_file, not an error for users
    """The download cannot succeed; `download_file` tells it as a `DownloadError`."""

    def __init__(self, reason: str, http_status: int | None, hint: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.http_status = http_status
        self.hint = hint


class Sink(Protocol):
    """Where a download's bytes go, in order (the part file beside the destination)."""

    async def write(self, chunk: bytes) -> None:
        """Keep `chunk` after what was written before."""

    async def restart(self) -> None:
        """Forget what was written: the server sends the file again from its start."""


class _Retry(Exception):  # noqa: N818 - a signal inside this module, not an error for users
    """This attempt failed in a way that another attempt may get past."""

    def __init__(
        self,
        reason: str,
        *,
        http_status: int | None = None,
        retry_after: float | None = None,
        rate_limited: bool = False,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.http_status = http_status
        self.retry_after = retry_after
        self.rate_limited = rate_limited


@attrs.define
class Fetch:
    """One download's state across attempts: how much is on disk, and what is known.

    `on_progress` hears the bytes received and the total, once known, after every chunk.
    """

    session: aiohttp.ClientSession
    url: URL
    shown: str
    part: Sink
    retry: RetryPolicy
    clock: Clock
    timeout: aiohttp.ClientTimeout
    on_progress: Callable[[int, int | None], object] | None
    chunk_size: int
    max_redirects: int
    addresses: AddressRules | None
    #: The most bytes the file may have (decoded); past it the download is refused.
    max_bytes: int | None = None
    received: int = 0
    total: int | None = None
    #: An ETag or Last-Modified, sent back as ``If-Range`` so a changed file restarts.
    validator: str | None = None
    use_ranges: bool = True

    async def run(self) -> None:
        """Attempt until the file is complete, or raise `Failed`."""
        best = 0
        streak = 0
        while True:
            problem: _Retry | None = None
            try:
                if await self._attempt():
                    return
            except _Retry as exc:
                problem = exc
            progressed = self.received > best
            best = max(best, self.received)
            if problem is None and progressed:
                continue  # the server sent a shorter range than asked: ask for the rest
            streak = 0 if progressed else streak + 1
            await self._pause(problem or _Retry("the server sent no bytes"), streak)

    async def _pause(self, problem: _Retry, streak: int) -> None:
        """Wait before the next attempt, or raise when the policy says to stop."""
        if streak >= self.retry.max_attempts:
            have = f"{self.received} of {self.total}" if self.total else str(self.received)
            raise self._error(
                f"{problem.reason}; gave up after {streak} attempts in a row without "
                f"progress, with {have} bytes received",
                problem.http_status,
                _LATER,
            )
        wait = self.retry.delay(
            max(streak, 1),
            random.random(),
            retry_after=problem.retry_after,
            rate_limited=problem.rate_limited,
        )
        if wait is None:
            raise self._error(
                f"{problem.reason}, and the server asked to wait {problem.retry_after:g} s",
                problem.http_status,
                "Try again later.",
            )
        log.info(
            "download of %s: %s; retrying in %.2f s",
            self.shown,
            problem.reason,
            wait,
            extra=log_fields(),
        )
        await self.clock.sleep(wait)

    async def _attempt(self) -> bool:
        """One request; True when the file is complete."""
        try:
            async with self._open() as response:
                if await self._accept(response):
                    await self._store(response)
        except AddressRefusedError as exc:
            reason = f"refused to connect to {exc.host}: {exc.reason}"
            raise self._error(reason, None, _PRIVATE) from None
        except zlib.error as exc:
            # The next attempt asks for the whole file again (ranges are off for it).
            raise _Retry(f"the compressed answer could not be decoded ({exc})") from None
        except _TRANSIENT_ERRORS as exc:
            raise _Retry(f"{type(exc).__name__} ({scrub(str(exc)) or 'no detail'})") from None
        except aiohttp.ClientError as exc:
            detail = scrub(str(exc)) or "no detail"
            raise self._error(f"{type(exc).__name__} ({detail})", None, "") from None
        return self._finished()

    async def _store(self, response: aiohttp.ClientResponse) -> None:
        """Write the body to the part file, decoded when the server compressed it."""
        inflater = self._inflater(response)
        async for chunk in response.content.iter_chunked(self.chunk_size):
            for piece in inflater.pieces(chunk) if inflater else (chunk,):
                await self._keep(piece)
        if inflater is not None:
            await self._keep(inflater.rest())
            if not inflater.complete:
                raise _Retry("the compressed answer ended before its end")

    async def _keep(self, piece: bytes) -> None:
        if piece:
            self._check_size(self.received + len(piece), "more bytes than that arrived")
            await self.part.write(piece)
            self.received += len(piece)
            self._report()

    def _inflater(self, response: aiohttp.ClientResponse) -> _Inflater | None:
        """A decoder for a gzip or deflate body, None for a plain one; refuses the rest."""
        encodings = _encodings(response)
        if not encodings:
            return None
        if len(encodings) > 1 or encodings[0] not in _INFLATED:
            raise self._error(
                f"the server sent the file encoded as {', '.join(encodings)}, which is not "
                "decoded here, although it was asked for the file unencoded",
                response.status,
                "Ask the file server's operator to serve it as it is, or download it with "
                "another tool.",
            )
        return _Inflater(self.chunk_size)

    @contextlib.asynccontextmanager
    async def _open(self) -> AsyncIterator[aiohttp.ClientResponse]:
        """The answer to a GET, after following redirects that stay on http(s)."""
        headers = self._headers()
        url = self.url
        for _ in range(self.max_redirects + 1):
            if self.addresses is not None and url.raw_host:
                self.addresses.check_host(url.raw_host)
            async with self.session.get(
                url,
                headers=headers,
                allow_redirects=False,
                timeout=self.timeout,
                # Ranges count stored bytes: keep them as the server sent them.
                auto_decompress=False,
            ) as response:
                target = self._redirect_target(response, url)
                if target is None:
                    yield response
                    return
            url = target
        raise self._error(
            f"more than {self.max_redirects} redirects",
            None,
            "The URL leads in circles or through too many hops; read the task again for a "
            "fresh URL.",
        )

    def _headers(self) -> dict[str, str]:
        headers = {"Accept-Encoding": "identity"}
        if self.received and self.use_ranges:
            headers["Range"] = f"bytes={self.received}-"
            if self.validator:
                headers["If-Range"] = self.validator
        return headers

    def _redirect_target(self, response: aiohttp.ClientResponse, current: URL) -> URL | None:
        if response.status not in _REDIRECTS:
            return None
        location = response.headers.get("Location")
        try:
            target = current.join(URL(location)) if location else None
        except (ValueError, TypeError):
            target = None
        if target is None:
            raise self._error(
                f"HTTP {response.status} redirect without a usable Location",
                response.status,
                _OTHER_4XX,
            )
        if target.scheme not in SCHEMES or not target.host:
            raise self._error(
                f"refused a redirect to {shown(target)}: only http and https are followed",
                response.status,
                "A redirect to another scheme could read local files or other services; "
                "check where the URL came from.",
            )
        return target

    async def _accept(self, response: aiohttp.ClientResponse) -> bool:
        """Check the answer's status and headers; True when its body is to be stored."""
        status = response.status
        if status == 200:
            await self._from_start(response)
            return True
        if status == 206:
            if _encodings(response):
                # Its offsets count compressed bytes: they cannot extend a decoded file.
                self.use_ranges = False
                raise _Retry("the server sent a compressed part of the file; starting over")
            self._resume(response)
            return True
        if status == 416 and self.received:
            return self._unsatisfiable(response)
        if status in (408, 429) or status >= 500:
            retry_after = parse_retry_after(response.headers.get("Retry-After"), self.clock.time())
            raise _Retry(
                f"the server answered HTTP {status}",
                http_status=status,
                retry_after=retry_after,
                rate_limited=status == 429,
            )
        hint = _HINTS.get(status, _OTHER_4XX) if 400 <= status < 500 else _OTHER_4XX
        raise self._error(f"the server answered HTTP {status}", status, hint)

    async def _from_start(self, response: aiohttp.ClientResponse) -> None:
        encoded = bool(_encodings(response))
        # A compressed answer's length is not the file's, and its ranges count compressed
        # bytes: a cut is resumed from zero.
        self.total = None if encoded else response.content_length
        self._check_size(self.total, f"the server announced {self.total}")
        self.use_ranges = self.use_ranges and not encoded
        self.validator = _validator(response.headers)
        if self.received:
            log.info("%s sent the whole file again; starting over", self.shown, extra=log_fields())
            await self.part.restart()
            self.received = 0
            self._report()

    def _resume(self, response: aiohttp.ClientResponse) -> None:
        header = response.headers.get("Content-Range", "")
        match = _CONTENT_RANGE.fullmatch(header.strip())
        first, last = (int(match[1]), int(match[2])) if match else (0, -1)
        size = int(match[3]) if match and match[3] != "*" else None
        span = last - first + 1
        length = response.content_length
        if span <= 0 or (size is not None and last >= size) or length not in (None, span):
            raise self._error(
                f"the server sent an inconsistent partial answer (Content-Range {header!r}, "
                f"Content-Length {length})",
                206,
                _LATER,
            )
        if first != self.received:
            # Ranges from this server cannot be trusted: the next attempt asks for everything.
            self.use_ranges = False
            raise _Retry(f"the server sent bytes from {first} when asked from {self.received}")
        if size is not None and self.total is not None and size != self.total:
            raise self._error(
                f"the file's size changed from {self.total} to {size} bytes during the download",
                206,
                "Download it again.",
            )
        self._check_size(size, f"the server announced {size}")
        self.total = size if size is not None else self.total

    def _unsatisfiable(self, response: aiohttp.ClientResponse) -> bool:
        """A 416 to our Range: complete if the file is exactly what we hold, else an error."""
        match = _UNSATISFIED_RANGE.fullmatch(response.headers.get("Content-Range", "").strip())
        size = int(match[1]) if match else None
        if size == self.received and self.total in (None, size):
            self.total = size
            return False
        raise self._error(
            f"the server refused bytes from {self.received} (HTTP 416, file size {size})",
            416,
            "The file changed on the server; download it again.",
        )

    def _finished(self) -> bool:
        if self.total is None or self.received == self.total:
            return True
        if self.received < self.total:
            return False
        raise self._error(
            f"received {self.received} bytes where the server announced {self.total}",
            None,
            _LATER,
        )

    def _check_size(self, size: int | None, how: str) -> None:
        """Refuse a file past `max_bytes`: a server that never ends its answer (or a small
        compressed one that inflates without end) must not fill the disk."""
        if self.max_bytes is not None and size is not None and size > self.max_bytes:
            raise self._error(
                f"the file is larger than the {self.max_bytes} bytes a result video may have "
                f"({how})",
                None,
                "Check where the URL came from; pass a larger max_bytes if the file is right.",
            )

    def _report(self) -> None:
        if self.on_progress is not None:
            self.on_progress(self.received, self.total)

    def _error(self, reason: str, status: int | None, hint: str) -> Failed:
        return Failed(reason, status, hint)


def shown(url: URL) -> str:
    """`url` fit for a message: no user info, query or fragment, and not too long."""
    if url.user is not None or url.password is not None:
        url = url.with_user(None)
    text = str(url.with_query(None).with_fragment(None))
    return text if len(text) <= SHOWN_LENGTH else text[: SHOWN_LENGTH - 1] + "…"


def scrub(text: str) -> str:
    """`text` with the query string of any URL in it removed (it may hold a signed token)."""
    return _URL_QUERY.sub(r"\1", text)


def _validator(headers: Mapping[str, str]) -> str | None:
    etag = headers.get("ETag")
    if etag and not etag.startswith("W/"):
        return etag
    return headers.get("Last-Modified")


def _encodings(response: aiohttp.ClientResponse) -> list[str]:
    """The content codings of an answer, outermost last, without ``identity``."""
    header = response.headers.get("Content-Encoding", "")
    names = (name.strip().lower() for name in header.split(","))
    return [name for name in names if name and name != "identity"]


class _Inflater:
    """Decodes a gzip or zlib stream as it arrives, `limit` bytes at most at a time, so a
    small compressed chunk cannot become a large piece of memory."""

    def __init__(self, limit: int) -> None:
        self._stream = zlib.decompressobj(wbits=32 + zlib.MAX_WBITS)  # gzip or zlib header
        self._limit = limit

    def pieces(self, chunk: bytes) -> Iterator[bytes]:
        data = chunk
        while data and not self._stream.eof:
            piece = self._stream.decompress(data, self._limit)
            if piece:
                yield piece
            data = self._stream.unconsumed_tail

    def rest(self) -> bytes:
        """What the stream still holds once all its input arrived."""
        return self._stream.flush()

    @property
    def complete(self) -> bool:
        """Whether the stream's end (and checksum) arrived."""
        return self._stream.eof
