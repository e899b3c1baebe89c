"""Streaming, atomic, resumable download of result videos.

A result URL points at a file server, not at the API: no credentials travel with it, but its
query string often carries a signed token, so messages name the URL without it. The bytes go
to a hidden file beside the destination and are moved into place only once complete and
flushed to disk, so nothing ever sees half a video under the final name. A cut connection
resumes where it stopped with a ``Range`` request; a server that ignores ranges makes the file
start again from zero. Writes run in a worker thread, a chunk at a time, so neither the event
loop nor memory notices the size of the video.

A result URL comes from a server, so it may not lead this process to its own machine or
network: every hop's host is checked before connecting (see `_addresses`). A file server that
compresses the file although it was asked not to has its gzip or deflate decoded (and a cut is
then resumed from zero, since its ranges count compressed bytes); any other encoding is
refused. Either way the bytes on disk are the video's.

The exchange with the file server (redirects, ranges, retries, decoding) is `_fetch`'s; this
module owns what users see: the destination's name, the part file, the errors and progress.
"""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import Callable
from pathlib import Path

import aiohttp
import anyio
import anyio.to_thread
import attrs
from aiohttp.abc import AbstractResolver
from yarl import URL

from ._addresses import AddressRules, CheckingResolver
from ._clock import Clock
from ._fetch import SCHEMES, SHOWN_LENGTH, Failed, Fetch, scrub, shown
from .errors import InvalidArgumentError, KlingError
from .policies import RetryPolicy
from .telemetry import log_fields

__all__ = [
    "EXPIRED_LINK_STATUSES",
    "MAX_VIDEO_BYTES",
    "PUBLIC_ONLY",
    "DownloadError",
    "DownloadProgress",
    "download_file",
    "guarded_session",
    "target_path",
]

log = logging.getLogger(__name__)  # a child of "kling_async"

#: The answers of a file server to a signed result URL past its expiry: a fresh URL, read
#: from the task again, may still work.
EXPIRED_LINK_STATUSES = frozenset({403, 404, 410})

#: The rules for public downloads: no loopback, private, link-local, ... address.
PUBLIC_ONLY = AddressRules()

#: The most bytes a download takes by default: far above any result video (the API makes
#: videos of 3 minutes at most), so it only stops a server whose answer never ends, or a
#: compressed one that inflates without end, before it fills the disk.
MAX_VIDEO_BYTES = 8 * 1024**3


class DownloadError(KlingError):
    """A result video could not be downloaded; nothing was left under the destination name.

    `url` is the URL without its query string (which may hold a signed token), `path` the
    destination, `http_status` the last HTTP status that decided the outcome, if any.
    """

    def __init__(
        self,
        reason: str,
        *,
        path: Path,
        url: str | None = None,
        http_status: int | None = None,
        hint: str = "",
    ) -> None:
        self.reason = reason
        self.path = path
        self.url = url
        self.http_status = http_status
        what = f"Download of {url} to {path}" if url else f"Download to {path}"
        super().__init__(f"{what} failed: {reason.rstrip('.')}. {hint}".strip())


@attrs.frozen
class DownloadProgress:
    """How far a download has got; `total` is None while the server has not said.

    `url` is the URL without its query string, safe to log; `path` is the destination.

    >>> DownloadProgress("https://cdn.example/v.mp4", Path("v.mp4"), 50, 200).fraction
    0.25
    """

    url: str
    path: Path
    received: int
    total: int | None

    @property
    def fraction(self) -> float | None:
        """`received` as a share of `total`, or None when the size is unknown."""
        return self.received / self.total if self.total else None


def target_path(dest: str | os.PathLike[str], video_id: str) -> Path:
    """The file to write video `video_id` to, given a file or a folder.

    A folder (an existing directory, or a path ending with a separator) gets
    ``{folder}/{video_id}.mp4``; anything else is the file itself. A missing folder is made.

    >>> target_path("/tmp/", "abc")
    PosixPath('/tmp/abc.mp4')
    """
    text = os.fspath(dest)
    path = Path(text)
    if text.endswith((os.sep, "/")) or path.is_dir():
        if not video_id or video_id in (".", "..") or any(c in video_id for c in "/\\\0"):
            # The id comes from a server; it must not steer the file out of the folder.
            raise DownloadError(
                f"the video id {video_id!r} is not a usable file name",
                path=path,
                hint="Pass a file path instead of a folder.",
            )
        path = path / f"{video_id}.mp4"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DownloadError(
            f"could not make the folder {path.parent} ({exc.strerror or exc})",
            path=path,
            hint="Check the path and the permissions of its folders.",
        ) from None
    return path


async def download_file(
    session: aiohttp.ClientSession,
    url: str,
    dest: Path,
    *,
    retry: RetryPolicy,
    clock: Clock,
    timeout: float = 60.0,
    on_progress: Callable[[DownloadProgress], object] | None = None,
    chunk_size: int = 256 * 1024,
    max_redirects: int = 5,
    addresses: AddressRules | None = PUBLIC_ONLY,
    max_bytes: int | None = MAX_VIDEO_BYTES,
) -> Path:
    """Download `url` to the file `dest` and return `dest`.

    Only ``http`` and ``https`` URLs are fetched, and redirects are followed here (at most
    `max_redirects`), never to another scheme. Unless `addresses` is None, each hop's host is
    checked against it before connecting, and `session` must come from `guarded_session` so
    that names are checked as they resolve; a refused host is a `DownloadError`.

    A dropped connection, a timeout, a 5xx, a 408 or a 429 is retried under `retry`, waiting
    on `clock`; the download resumes from the last byte received. `max_attempts` counts
    attempts in a row that brought no new byte, so a flaky link that keeps delivering
    finishes. `timeout` bounds connecting and each wait for more bytes, not the whole download
    (wrap the call in ``anyio.fail_after`` for that); `max_bytes` bounds the file's size (None:
    no bound), so a server whose answer never ends cannot fill the disk. `on_progress` hears
    of every chunk; keep it quick.

    Raises `DownloadError` for any failure; then, as on cancellation, no file is left behind.

    Example::

        async with guarded_session() as session:
            path = await download_file(
                session, video.url, Path(f"{video.id}.mp4"), retry=RetryPolicy(),
                clock=SystemClock(),
            )
    """
    dest = Path(dest)
    _check_numbers(timeout, chunk_size, max_redirects, max_bytes)
    start = _checked_url(url, dest)
    safe_url = shown(start)
    await _check_destination(dest, safe_url)
    part = _PartFile(dest, safe_url)
    job = Fetch(
        session=session,
        url=start,
        shown=safe_url,
        part=part,
        retry=retry,
        clock=clock,
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=timeout, sock_read=timeout),
        on_progress=_reporter(on_progress, safe_url, dest),
        chunk_size=chunk_size,
        max_redirects=max_redirects,
        addresses=addresses,
        max_bytes=max_bytes,
    )
    try:
        await _fetched(job, dest)
        await part.commit()
    except BaseException:
        await part.discard()
        raise
    log.debug("downloaded %s to %s (%d bytes)", safe_url, dest, job.received, extra=log_fields())
    return dest


async def _fetched(job: Fetch, dest: Path) -> None:
    """Run `job`; what makes it fail is told as a `DownloadError` naming the URL and `dest`."""
    try:
        await job.run()
    except Failed as failure:
        raise DownloadError(
            failure.reason,
            url=job.shown,
            path=dest,
            http_status=failure.http_status,
            hint=failure.hint,
        ) from None


def _reporter(
    on_progress: Callable[[DownloadProgress], object] | None, url: str, dest: Path
) -> Callable[[int, int | None], object] | None:
    """`on_progress` fed from a download's count of bytes received and total."""
    if on_progress is None:
        return None
    return lambda received, total: on_progress(DownloadProgress(url, dest, received, total))


def guarded_session(
    rules: AddressRules = PUBLIC_ONLY, resolver: AbstractResolver | None = None
) -> aiohttp.ClientSession:
    """A session for downloads whose resolver refuses names with an address `rules` refuse.

    It ignores proxy settings of the environment: a proxy would resolve names unchecked.
    `resolver` (the system's by default) answers the lookups that are then checked.
    """
    checking = CheckingResolver(rules, resolver)
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(resolver=checking))


class _PartFile:
    """The hidden file beside the destination that holds the bytes until they are complete."""

    def __init__(self, dest: Path, shown_url: str) -> None:
        self.dest = dest
        self.path = dest.with_name(f".{dest.name}.{secrets.token_hex(4)}.part")
        self._url = shown_url
        self._file: anyio.AsyncFile[bytes] | None = None

    async def write(self, chunk: bytes) -> None:
        try:
            file = self._file or await self._open()
            await file.write(chunk)
        except OSError as exc:
            raise self._disk_error(exc) from None

    async def restart(self) -> None:
        if self._file is None:
            return
        try:
            await self._file.seek(0)
            await self._file.truncate()
        except OSError as exc:
            raise self._disk_error(exc) from None

    async def commit(self) -> None:
        """Flush the bytes to disk and give the file its final name."""
        try:
            file = self._file or await self._open()
            await file.flush()
            await anyio.to_thread.run_sync(os.fsync, file.wrapped.fileno())
            await file.aclose()
            await anyio.to_thread.run_sync(os.replace, self.path, self.dest)
        except OSError as exc:
            raise self._disk_error(exc) from None

    async def discard(self) -> None:
        """Close and remove the part file; runs to its end even when cancelled."""
        with anyio.CancelScope(shield=True):
            try:
                if self._file is not None:
                    await self._file.aclose()
                await anyio.Path(self.path).unlink(missing_ok=True)
            except OSError as exc:
                log.warning("could not remove %s: %s", self.path, exc, extra=log_fields())

    async def _open(self) -> anyio.AsyncFile[bytes]:
        self._file = await anyio.open_file(self.path, "xb")
        return self._file

    def _disk_error(self, exc: OSError) -> DownloadError:
        return DownloadError(
            f"could not write {self.path}: {exc.strerror or exc}",
            url=self._url,
            path=self.dest,
            hint="Check the free space and permissions of the folder.",
        )


def _check_numbers(
    timeout: float, chunk_size: int, max_redirects: int, max_bytes: int | None
) -> None:
    if max_bytes is not None and max_bytes < 0:
        raise InvalidArgumentError(f"max_bytes cannot be negative, not {max_bytes!r}")
    if not timeout > 0:
        raise InvalidArgumentError(f"timeout must be positive, not {timeout!r}")
    if chunk_size < 1:
        raise InvalidArgumentError(f"chunk_size must be at least 1, not {chunk_size!r}")
    if max_redirects < 0:
        raise InvalidArgumentError(f"max_redirects cannot be negative, not {max_redirects!r}")


def _checked_url(url: str, dest: Path) -> URL:
    try:
        parsed = URL(url)
    except (ValueError, TypeError):
        parsed = None
    if parsed is None or parsed.scheme not in SCHEMES or not parsed.host:
        text = shown(parsed) if parsed is not None else scrub(str(url))[:SHOWN_LENGTH]
        raise DownloadError(
            f"only http and https URLs are downloaded, not {text}",
            path=dest,
            hint="Pass the url of a video from a succeeded task.",
        )
    return parsed


async def _check_destination(dest: Path, shown_url: str) -> None:
    if await anyio.Path(dest).is_dir():
        raise DownloadError(
            "the destination is a directory",
            url=shown_url,
            path=dest,
            hint="Pass a file path; target_path(folder, video_id) makes one.",
        )
    if not await anyio.Path(dest.parent).is_dir():
        raise DownloadError(
            f"the folder {dest.parent} does not exist", url=shown_url, path=dest, hint="Create it."
        )
