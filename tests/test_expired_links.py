"""Expired result links: a download answered 403 reads the task again and retries once."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest

from kling_async import DownloadError, KlingClient, PollPolicy
from kling_async.testing import FakeKlingServer

pytestmark = pytest.mark.anyio

KEY = "test-api-key"
QUICK = PollPolicy(initial_delay=0.01, min_interval=0.01, max_interval=0.05, timeout=20)
START = 1_800_000_000.0


def client_of(server: FakeKlingServer) -> KlingClient:
    return KlingClient(api_key=KEY, base_url=server.url, poll=QUICK, allow_private_downloads=True)


def file_gets(server: FakeKlingServer) -> list[int | None]:
    return [r.status for r in server.record.requests if r.path.startswith("/files/")]


async def test_an_expired_link_is_refreshed_once(tmp_path: Path) -> None:
    """The link expired (403): one more read of the task gives a fresh link; the file is
    byte for byte the video."""
    now = [START]
    server = FakeKlingServer(api_key=KEY, wall_clock=lambda: now[0], link_lifetime=60)
    async with server, client_of(server) as client:
        task = await client.extend_and_wait("vid-1", task_id="p-1")
        now[0] += 120  # the link handed out with the task has expired
        reads = server.record.polls(task.id)
        path = await client.download(task, tmp_path)
        assert server.record.polls(task.id) == reads + 1
        fresh = await client.get_task(task.id)
        async with aiohttp.ClientSession() as session, session.get(fresh.videos[0].url) as got:
            expected = await got.read()
    assert file_gets(server) == [403, 200, 200]
    assert path.read_bytes() == expected and len(expected) > 0


async def test_a_video_alone_has_no_task_to_refresh_from(tmp_path: Path) -> None:
    """Given a Video (not its task), an expired link is reported, with nothing re-read."""
    now = [START]
    server = FakeKlingServer(api_key=KEY, wall_clock=lambda: now[0], link_lifetime=60)
    async with server, client_of(server) as client:
        task = await client.extend_and_wait("vid-1", task_id="p-1")
        now[0] += 120
        reads = server.record.polls(task.id)
        with pytest.raises(DownloadError, match="expired") as caught:
            await client.download(task.videos[0], tmp_path)
        assert server.record.polls(task.id) == reads
    assert caught.value.http_status == 403
    assert list(tmp_path.iterdir()) == []


async def test_a_link_that_stays_dead_is_tried_only_once_more(tmp_path: Path) -> None:
    """If the fresh link fails too, the error is raised after that one retry."""
    now = [START]

    def clock() -> float:
        now[0] += 1000  # every link has expired by the time it is used
        return now[0]

    server = FakeKlingServer(api_key=KEY, wall_clock=clock, link_lifetime=60)
    async with server, client_of(server) as client:
        task = await client.extend_and_wait("vid-1", task_id="p-1")
        with pytest.raises(DownloadError):
            await client.download(task, tmp_path)
    assert file_gets(server) == [403, 403]
