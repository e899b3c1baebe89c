"""Downloads on the client's behalf: through the session the address rules allow, with a
result link that expired refreshed from its task once.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import attrs

from ._addresses import AddressRules
from ._clock import Clock
from ._transport import Transport
from .download import (
    EXPIRED_LINK_STATUSES,
    DownloadError,
    DownloadProgress,
    download_file,
    guarded_session,
)
from .errors import ConfigurationError, InvalidArgumentError
from .models import Task, TaskKind, TaskStatus, Video
from .policies import RetryPolicy
from .telemetry import _Off, log_fields

__all__ = ["Downloader", "download_folder", "video_of"]

# The client's logger: these records were always the client's, and filters name it.
log = logging.getLogger("kling_async.client")


@attrs.define
class Downloader:
    """The client's downloads. Public addresses only (`rules`) go through a session of their
    own whose resolver checks every address; allowed private ones (no `rules`) go through the
    API's session."""

    transport: Transport
    rules: AddressRules | None
    retry: RetryPolicy
    clock: Clock
    telemetry: _Off
    read: Callable[[str, TaskKind], Awaitable[Task]]
    own_session: aiohttp.ClientSession | None = None

    async def download(
        self,
        video: Video,
        path: Path,
        task: Task | None,
        on_progress: Callable[[DownloadProgress], object] | None = None,
    ) -> Path:
        """Download `video` of `task`; an expired link is refreshed from the task once."""

        async def fetch(url: str) -> Path:
            with self.telemetry.download(url, video.id):
                return await download_file(
                    self._session(),
                    url,
                    path,
                    retry=self.retry,
                    clock=self.clock,
                    on_progress=self.telemetry.progress(on_progress),
                    addresses=self.rules,
                )

        try:
            return await fetch(video.url)
        except DownloadError as exc:
            if task is None or exc.http_status not in EXPIRED_LINK_STATUSES:
                raise
            fresh = await self._fresh_link(task, video, exc)
        log.info(
            "the link of video %s had expired; retrying with a fresh one",
            video.id,
            extra=log_fields(task.id),
        )
        return await fetch(fresh.url)

    def _session(self) -> aiohttp.ClientSession:
        """The session downloads go through (its own, made on first use, when checked)."""
        shared = self.transport.session  # refuses when the client is closed
        if self.rules is None:
            return shared
        if self.own_session is None:
            self.own_session = guarded_session(self.rules)
        return self.own_session

    async def _fresh_link(self, task: Task, video: Video, error: DownloadError) -> Video:
        """`video` as `task` describes it now; the download's error when it is gone."""
        current = await self.read(task.id, task.kind)
        for candidate in current.videos:
            if candidate.id == video.id:
                return candidate
        raise error

    async def close(self) -> None:
        """Close the session of downloads, if one was made."""
        downloads, self.own_session = self.own_session, None
        if downloads is not None:
            await downloads.close()


def download_folder(path: str | os.PathLike[str] | None) -> Path | None:
    """The batch's download folder, made now: a typo must not cost a batch of results."""
    if path is None:
        return None
    folder = Path(path)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigurationError(
            f"Cannot use {folder} as the download folder ({exc.strerror or exc}); nothing was sent."
        ) from None
    return folder


def video_of(video_or_task: Video | Task) -> Video:
    if isinstance(video_or_task, Video):
        return video_or_task
    task = video_or_task
    if task.status is not TaskStatus.SUCCEED or not task.videos:
        raise InvalidArgumentError(
            f"Task {task.id} has no video to download (its status is {task.status_text}); "
            "wait for it to succeed first."
        )
    return task.videos[0]
