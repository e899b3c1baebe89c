"""download_file against the fake server and tiny misbehaving apps: bytes, resumes, refusals."""

from __future__ import annotations

import gzip
import hashlib
import ipaddress
import tracemalloc
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest
from aiohttp import web
from helpers import FakeResolver, serve
from yarl import URL

from kling_async import InvalidArgumentError, RetryPolicy
from kling_async._addresses import AddressRules
from kling_async._clock import FakeClock
from kling_async.download import (
    PUBLIC_ONLY,
    DownloadError,
    DownloadProgress,
    download_file,
    guarded_session,
    target_path,
)
from kling_async.testing import FakeKlingServer, Fault

pytestmark = pytest.mark.anyio

SIZE = 1_000_000
AUTH = {"Authorization": "Bearer test-api-key"}


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def server() -> AsyncIterator[FakeKlingServer]:
    async with FakeKlingServer(video_size=SIZE) as server:
        server.add_video("v1", "p1")
        yield server


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def file_url(server: FakeKlingServer, video_id: str = "v1") -> str:
    return f"{server.url}/files/{video_id}.mp4"


async def fetch(
    session: aiohttp.ClientSession, url: str, dest: Path, clock: FakeClock, **kwargs: Any
) -> Path:
    """download_file with a fake clock and a short retry policy; private addresses (the fake
    server's 127.0.0.1) allowed unless `addresses` says otherwise."""
    kwargs.setdefault("retry", RetryPolicy(max_attempts=3))
    kwargs.setdefault("addresses", None)
    return await download_file(session, url, dest, clock=clock, **kwargs)


async def plain_get(session: aiohttp.ClientSession, url: str) -> bytes:
    async with session.get(url) as response:
        assert response.status == 200
        return await response.read()


def leftovers(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir())


def file_requests(server: FakeKlingServer) -> list[str | None]:
    """The Range header of each download request the server saw, in order."""
    return [r.headers.get("Range") for r in server.record.requests if r.path.startswith("/files")]


def range_starts(server: FakeKlingServer) -> list[int]:
    """Where each download request asked to start (0 without a Range header)."""
    return [int(h[len("bytes=") : -1]) if h else 0 for h in file_requests(server)]


async def cut_short(request: web.Request, declared: int, body: bytes, **headers: str) -> Any:
    """Promise `declared` bytes, send `body`, then close the connection."""
    response = web.StreamResponse(status=int(headers.pop("status", "200")), headers=headers)
    response.content_length = declared
    await response.prepare(request)
    await response.write(body)
    assert request.transport is not None
    request.transport.close()
    return response


async def succeeded_video_url(session: aiohttp.ClientSession, server: FakeKlingServer) -> str:
    """Extend a video on the fake server and return the result's URL once it succeeds."""
    base = f"{server.url}/kling/v1/videos/video-extend"
    body = {"video_id": "v1", "task_id": "p1"}
    async with session.post(base, json=body, headers=AUTH) as response:
        task_id = (await response.json())["data"]["task_id"]
    with anyio.fail_after(5):
        while True:
            async with session.get(f"{base}/{task_id}", headers=AUTH) as response:
                data = (await response.json())["data"]
            if data["task_status"] == "succeed":
                return str(data["task_result"]["videos"][0]["url"])
            await anyio.sleep(0.02)


async def test_plain_download_is_byte_identical(
    session: aiohttp.ClientSession, server: FakeKlingServer, clock: FakeClock, tmp_path: Path
) -> None:
    """A succeeded task's video downloads to exactly the bytes the server serves."""
    url = await succeeded_video_url(session, server)
    dest = tmp_path / "out.mp4"
    assert await fetch(session, url, dest, clock) == dest
    assert dest.read_bytes() == await plain_get(session, url)
    assert leftovers(tmp_path) == ["out.mp4"]


async def test_download_cut_twice_resumes_with_range(
    session: aiohttp.ClientSession, server: FakeKlingServer, clock: FakeClock, tmp_path: Path
) -> None:
    """Two cuts mid-stream are resumed with Range requests and the file is byte-identical."""
    server.faults.push(Fault.drop_mid_stream(250_000), path_contains="/files")
    server.faults.push(Fault.drop_mid_stream(400_000), path_contains="/files")
    dest = tmp_path / "v1.mp4"
    await fetch(session, file_url(server), dest, clock)
    # aiohttp may drop bytes it had buffered when the cut arrives, so each resume starts at
    # or a little before the cut.
    first, second, third = range_starts(server)
    assert first == 0 and 0 < second <= 250_000 and second < third <= second + 400_000
    assert dest.read_bytes() == await plain_get(session, file_url(server))


async def test_server_ignoring_range_restarts_from_zero(
    session: aiohttp.ClientSession, clock: FakeClock, tmp_path: Path
) -> None:
    """A 200 answer to a Range request starts the file again from its first byte."""
    data = bytes(range(256)) * 40
    seen: list[str | None] = []

    async def ignores_ranges(request: web.Request) -> web.StreamResponse:
        seen.append(request.headers.get("Range"))
        if len(seen) == 1:
            return await cut_short(request, len(data), data[:3000])
        return web.Response(body=data)

    async with serve({"/v.mp4": ignores_ranges}) as base:
        dest = await fetch(session, f"{base}/v.mp4", tmp_path / "v.mp4", clock)
    assert seen == [None, "bytes=3000-"]
    assert dest.read_bytes() == data


async def test_stalled_read_times_out_and_resumes(
    session: aiohttp.ClientSession, clock: FakeClock, tmp_path: Path
) -> None:
    """A body that stops arriving for longer than `timeout` is resumed with a Range request."""
    data = bytes(range(256)) * 40
    release = anyio.Event()
    seen: list[str | None] = []

    async def stalls_once(request: web.Request) -> web.StreamResponse:
        seen.append(request.headers.get("Range"))
        if len(seen) > 1:
            headers = {"Content-Range": f"bytes 3000-{len(data) - 1}/{len(data)}"}
            return web.Response(status=206, body=data[3000:], headers=headers)
        response = web.StreamResponse(headers={"Content-Length": str(len(data))})
        await response.prepare(request)
        await response.write(data[:3000])
        await release.wait()
        return response

    async with serve({"/v.mp4": stalls_once}) as base:
        try:
            url = f"{base}/v.mp4"
            dest = await fetch(session, url, tmp_path / "v.mp4", clock, timeout=0.1)
        finally:
            release.set()
    assert seen == [None, "bytes=3000-"]
    assert dest.read_bytes() == data


async def test_link_that_keeps_cutting_but_delivering_finishes(
    session: aiohttp.ClientSession, server: FakeKlingServer, clock: FakeClock, tmp_path: Path
) -> None:
    """Attempts that bring new bytes do not count against max_attempts."""
    server.faults.push(Fault.drop_mid_stream(150_000), path_contains="/files", times=5)
    dest = tmp_path / "v1.mp4"
    await fetch(session, file_url(server), dest, clock, retry=RetryPolicy(max_attempts=2))
    assert len(file_requests(server)) == 6
    assert dest.read_bytes() == await plain_get(session, file_url(server))


async def test_resume_sends_if_range_with_the_etag(
    session: aiohttp.ClientSession, clock: FakeClock, tmp_path: Path
) -> None:
    """A resumed request carries If-Range with the file's strong ETag, so a change restarts."""
    data = b"e" * 5000
    seen: list[tuple[str | None, str | None]] = []

    async def tagged(request: web.Request) -> web.StreamResponse:
        seen.append((request.headers.get("Range"), request.headers.get("If-Range")))
        if len(seen) == 1:
            return await cut_short(request, len(data), data[:2000], ETag='"v1"')
        headers = {"Content-Range": f"bytes 2000-4999/{len(data)}", "ETag": '"v1"'}
        return web.Response(status=206, body=data[2000:], headers=headers)

    async with serve({"/v.mp4": tagged}) as base:
        dest = await fetch(session, f"{base}/v.mp4", tmp_path / "v.mp4", clock)
    assert seen == [(None, None), ("bytes=2000-", '"v1"')]
    assert dest.read_bytes() == data


async def test_empty_file_is_written(
    session: aiohttp.ClientSession, clock: FakeClock, tmp_path: Path
) -> None:
    """A zero-length answer still produces the (empty) file under its final name."""

    async def empty(_: web.Request) -> web.StreamResponse:
        return web.Response(body=b"")

    async with serve({"/v.mp4": empty}) as base:
        dest = await fetch(session, f"{base}/v.mp4", tmp_path / "v.mp4", clock)
    assert dest.read_bytes() == b""
    assert leftovers(tmp_path) == ["v.mp4"]


async def test_no_partial_file_under_final_name_during_download(
    session: aiohttp.ClientSession, server: FakeKlingServer, clock: FakeClock, tmp_path: Path
) -> None:
    """While bytes arrive, only a hidden .part file exists; the final name appears at the end."""
    dest = tmp_path / "v1.mp4"
    during: list[tuple[bool, list[str]]] = []
    server.faults.push(Fault.drop_mid_stream(200_000), path_contains="/files")

    def look(_: DownloadProgress) -> None:
        during.append((dest.exists(), leftovers(tmp_path)))

    await fetch(session, file_url(server), dest, clock, on_progress=look, chunk_size=64 * 1024)
    assert len(during) > 5
    assert not any(exists for exists, _ in during)
    names = {name for _, listing in during for name in listing}
    assert len(names) == 1 and names.pop().startswith(".v1.mp4.")
    assert leftovers(tmp_path) == ["v1.mp4"]


async def test_final_failure_leaves_no_file(
    session: aiohttp.ClientSession, server: FakeKlingServer, clock: FakeClock, tmp_path: Path
) -> None:
    """A failure after bytes were written leaves neither the final file nor the part file."""
    server.faults.push(Fault.drop_mid_stream(200_000), path_contains="/files")
    server.faults.push(Fault.http_error(403, 1100, "forbidden"), path_contains="/files")
    with pytest.raises(DownloadError, match="HTTP 403"):
        await fetch(session, file_url(server), tmp_path / "v1.mp4", clock)
    assert range_starts(server)[0] == 0 and 0 < range_starts(server)[1] <= 200_000
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize(
    "url", ["file:///etc/passwd", "ftp://example.com/v.mp4", "data:video/mp4;base64,AAAA"]
)
async def test_non_http_urls_refused_without_a_request(
    url: str, clock: FakeClock, tmp_path: Path
) -> None:
    """Only http and https URLs are fetched: anything else fails before any request."""
    started: list[object] = []

    async def on_start(*args: object) -> None:
        started.append(args)

    trace = aiohttp.TraceConfig()
    trace.on_request_start.append(on_start)
    async with aiohttp.ClientSession(trace_configs=[trace]) as session:
        with pytest.raises(DownloadError, match="only http and https"):
            await fetch(session, url, tmp_path / "v.mp4", clock)
    assert started == []
    assert leftovers(tmp_path) == []


async def test_redirect_to_file_scheme_refused(
    session: aiohttp.ClientSession, clock: FakeClock, tmp_path: Path
) -> None:
    """A redirect to file:///etc/passwd is refused before any byte is written."""

    async def to_file(_: web.Request) -> web.StreamResponse:
        raise web.HTTPFound("file:///etc/passwd")

    async with serve({"/v.mp4": to_file}) as base:
        with pytest.raises(DownloadError, match=r"refused a redirect to file:///etc/passwd"):
            await fetch(session, f"{base}/v.mp4", tmp_path / "v.mp4", clock)
    assert leftovers(tmp_path) == []


async def test_redirects_to_http_are_followed(
    session: aiohttp.ClientSession, server: FakeKlingServer, clock: FakeClock, tmp_path: Path
) -> None:
    """A relative then an absolute http redirect lead to the file, downloaded intact."""

    async def relative(_: web.Request) -> web.StreamResponse:
        raise web.HTTPFound("/cdn")

    async def absolute(_: web.Request) -> web.StreamResponse:
        raise web.HTTPTemporaryRedirect(file_url(server))

    async with serve({"/v.mp4": relative, "/cdn": absolute}) as base:
        dest = await fetch(session, f"{base}/v.mp4", tmp_path / "v.mp4", clock)
    assert dest.read_bytes() == await plain_get(session, file_url(server))


async def test_too_many_redirects_refused(
    session: aiohttp.ClientSession, clock: FakeClock, tmp_path: Path
) -> None:
    """A redirect loop ends with a DownloadError after max_redirects hops."""
    hops: list[str] = []

    async def loop(request: web.Request) -> web.StreamResponse:
        hops.append(request.path)
        raise web.HTTPFound("/v.mp4")

    async with serve({"/v.mp4": loop}) as base:
        with pytest.raises(DownloadError, match="more than 3 redirects"):
            await fetch(session, f"{base}/v.mp4", tmp_path / "v.mp4", clock, max_redirects=3)
    assert len(hops) == 4
    assert leftovers(tmp_path) == []


async def test_body_shorter_than_content_length_detected(
    session: aiohttp.ClientSession, clock: FakeClock, tmp_path: Path
) -> None:
    """A server that always sends 500 of the 1000 bytes it promises ends in a DownloadError."""

    async def liar(request: web.Request) -> web.StreamResponse:
        response: web.StreamResponse = await cut_short(request, 1000, b"x" * 500)
        return response

    async with serve({"/v.mp4": liar}) as base:
        with pytest.raises(DownloadError, match="500 of 1000 bytes"):
            await fetch(session, f"{base}/v.mp4", tmp_path / "v.mp4", clock)
    assert len(clock.sleeps) == 3
    assert leftovers(tmp_path) == []


async def test_size_change_between_answers_detected(
    session: aiohttp.ClientSession, clock: FakeClock, tmp_path: Path
) -> None:
    """A resumed answer whose Content-Range total disagrees with Content-Length is refused."""

    async def shifty(request: web.Request) -> web.StreamResponse:
        if "Range" not in request.headers:
            response: web.StreamResponse = await cut_short(request, 1000, b"x" * 500)
            return response
        headers = {"Content-Range": "bytes 500-999/2000"}
        return web.Response(status=206, body=b"y" * 500, headers=headers)

    async with serve({"/v.mp4": shifty}) as base:
        with pytest.raises(DownloadError, match="changed from 1000 to 2000 bytes"):
            await fetch(session, f"{base}/v.mp4", tmp_path / "v.mp4", clock)
    assert leftovers(tmp_path) == []


async def test_404_says_the_url_may_have_expired(
    session: aiohttp.ClientSession, server: FakeKlingServer, clock: FakeClock, tmp_path: Path
) -> None:
    """A 404 is not retried and says the URL may have expired, without its signed query."""
    url = file_url(server, "gone") + "?token=s3cr3t-signature"
    with pytest.raises(DownloadError, match="HTTP 404") as caught:
        await fetch(session, url, tmp_path / "v.mp4", clock)
    message = str(caught.value)
    assert "may have expired" in message and "read the task again" in message
    assert "s3cr3t" not in message and f"{server.url}/files/gone.mp4" in message
    assert str(tmp_path / "v.mp4") in message
    assert caught.value.http_status == 404 and clock.sleeps == []


async def test_5xx_then_success_is_retried(
    session: aiohttp.ClientSession, server: FakeKlingServer, clock: FakeClock, tmp_path: Path
) -> None:
    """A 503 is retried after a backoff on the clock, then the download completes."""
    server.faults.push(Fault.http_error(503, 5000), path_contains="/files")
    dest = await fetch(session, file_url(server), tmp_path / "v1.mp4", clock)
    assert len(clock.sleeps) == 1
    assert dest.stat().st_size == SIZE


async def test_429_waits_as_retry_after_asks(
    session: aiohttp.ClientSession, server: FakeKlingServer, clock: FakeClock, tmp_path: Path
) -> None:
    """A 429 with Retry-After waits exactly that long before the next attempt."""
    server.faults.push(Fault.rate_limited(retry_after=7), path_contains="/files")
    await fetch(session, file_url(server), tmp_path / "v1.mp4", clock)
    assert clock.sleeps == [7.0]


async def test_cancellation_removes_the_part_file(
    session: aiohttp.ClientSession, clock: FakeClock, tmp_path: Path
) -> None:
    """Cancelling a download stuck mid-stream removes its part file and leaves nothing."""
    release = anyio.Event()
    first_chunk = anyio.Event()

    async def stalls(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Length": "200000"})
        await response.prepare(request)
        await response.write(b"z" * 50_000)
        await release.wait()
        return response

    async with serve({"/v.mp4": stalls}) as base:
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(
                    lambda: fetch(
                        session,
                        f"{base}/v.mp4",
                        tmp_path / "v.mp4",
                        clock,
                        on_progress=lambda _: first_chunk.set(),
                    )
                )
                with anyio.fail_after(5):
                    await first_chunk.wait()
                assert [name.endswith(".part") for name in leftovers(tmp_path)] == [True]
                tg.cancel_scope.cancel()
        finally:
            release.set()
    assert leftovers(tmp_path) == []


async def test_large_file_streams_with_flat_memory(
    session: aiohttp.ClientSession, server: FakeKlingServer, clock: FakeClock, tmp_path: Path
) -> None:
    """A 16 MiB video downloads with peak traced memory a small, fixed fraction of its size."""
    # Measured: ~1.5-1.8 MiB whatever the size (aiohttp's read buffers plus one chunk).
    size = 16 * 1024 * 1024
    await fetch(session, file_url(server), tmp_path / "warm-up.mp4", clock)  # first-use costs
    async with FakeKlingServer(video_size=size) as big:
        big.add_video("v1")
        url = file_url(big)
        async with session.head(url) as response:  # makes the server build its bytes now
            assert response.content_length == size
        tracemalloc.start()
        try:
            dest = await fetch(session, url, tmp_path / "big.mp4", clock)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        expected = hashlib.sha256()
        async with session.get(url) as response:
            async for chunk in response.content.iter_chunked(1 << 20):
                expected.update(chunk)
    assert peak < 3 * 1024 * 1024, f"peak {peak} bytes"
    assert hashlib.sha256(dest.read_bytes()).digest() == expected.digest()


async def test_progress_reaches_the_total(
    session: aiohttp.ClientSession, server: FakeKlingServer, clock: FakeClock, tmp_path: Path
) -> None:
    """Progress grows chunk by chunk, knows the total, and ends at it."""
    reports: list[DownloadProgress] = []
    dest = tmp_path / "v1.mp4"
    await fetch(session, file_url(server), dest, clock, on_progress=reports.append)
    assert [p.received for p in reports] == sorted(p.received for p in reports)
    assert {p.total for p in reports} == {SIZE}
    assert reports[-1] == DownloadProgress(file_url(server), dest, SIZE, SIZE)
    assert reports[-1].fraction == 1.0


def test_target_path_puts_a_video_in_a_folder(tmp_path: Path) -> None:
    """A folder (existing, or spelled with a trailing slash) gets {video_id}.mp4 inside."""
    assert target_path(tmp_path, "abc") == tmp_path / "abc.mp4"
    assert target_path(f"{tmp_path}/", "abc") == tmp_path / "abc.mp4"
    assert target_path(tmp_path / "mine.mp4", "abc") == tmp_path / "mine.mp4"


def test_target_path_makes_missing_folders(tmp_path: Path) -> None:
    """A folder that does not exist yet is made, whether spelled as a folder or a file's."""
    assert target_path(f"{tmp_path}/new/", "abc") == tmp_path / "new" / "abc.mp4"
    assert target_path(tmp_path / "a" / "b" / "v.mp4", "abc") == tmp_path / "a" / "b" / "v.mp4"
    assert (tmp_path / "new").is_dir() and (tmp_path / "a" / "b").is_dir()


def test_target_path_refuses_unusable_folders_and_unsafe_ids(tmp_path: Path) -> None:
    """A folder that cannot be made, or a video id that would leave the folder, is refused."""
    (tmp_path / "taken").write_bytes(b"a file, not a folder")
    with pytest.raises(DownloadError, match="could not make the folder"):
        target_path(tmp_path / "taken" / "v.mp4", "abc")
    with pytest.raises(DownloadError, match="not a usable file name"):
        target_path(tmp_path, "../escape")


# -- compressed answers -----------------------------------------------------------------------


async def test_gzip_answer_is_saved_decoded(
    session: aiohttp.ClientSession, server: FakeKlingServer, clock: FakeClock, tmp_path: Path
) -> None:
    """A file sent gzip-encoded although identity was asked is saved as the video's bytes."""
    server.faults.push(Fault.gzip_encoded(), path_contains="/files")
    dest = await fetch(session, file_url(server), tmp_path / "v1.mp4", clock)
    assert file_requests(server) == [None]
    assert server.record.requests[0].headers["Accept-Encoding"] == "identity"
    assert dest.read_bytes() == await plain_get(session, file_url(server))


async def test_gzip_answer_to_a_resume_starts_over(
    session: aiohttp.ClientSession, server: FakeKlingServer, clock: FakeClock, tmp_path: Path
) -> None:
    """A compressed partial answer (its range counts compressed bytes) is not appended: the
    download starts over without Range and decodes the whole file."""
    server.faults.push(Fault.drop_mid_stream(200_000), path_contains="/files")
    server.faults.push(Fault.gzip_encoded(), path_contains="/files", times=2)
    dest = await fetch(session, file_url(server), tmp_path / "v1.mp4", clock)
    first, resumed, again = file_requests(server)
    assert first is None and resumed is not None and again is None
    assert dest.read_bytes() == await plain_get(session, file_url(server))
    assert leftovers(tmp_path) == ["v1.mp4"]


async def test_cut_gzip_answer_restarts_from_zero(
    session: aiohttp.ClientSession, clock: FakeClock, tmp_path: Path
) -> None:
    """A gzip answer cut short is asked for again whole, never resumed with Range."""
    data = bytes(range(256)) * 400
    packed = gzip.compress(data)
    seen: list[str | None] = []

    async def compresses(request: web.Request) -> web.StreamResponse:
        seen.append(request.headers.get("Range"))
        headers = {"Content-Encoding": "gzip"}
        if len(seen) == 1:
            return await cut_short(request, len(packed), packed[: len(packed) // 2], **headers)
        return web.Response(body=packed, headers=headers)

    async with serve({"/v.mp4": compresses}) as base:
        dest = await fetch(session, f"{base}/v.mp4", tmp_path / "v.mp4", clock)
    assert seen == [None, None]
    assert dest.read_bytes() == data


async def test_unknown_encoding_is_refused(
    session: aiohttp.ClientSession, clock: FakeClock, tmp_path: Path
) -> None:
    """An encoding not decoded here (brotli) is a clear error; nothing is kept."""

    async def brotli(_: web.Request) -> web.StreamResponse:
        return web.Response(body=b"\x1b\x00\x00", headers={"Content-Encoding": "br"})

    async with serve({"/v.mp4": brotli}) as base:
        with pytest.raises(DownloadError, match="encoded as br, which is not decoded here"):
            await fetch(session, f"{base}/v.mp4", tmp_path / "v.mp4", clock)
    assert leftovers(tmp_path) == []


async def endless(request: web.Request) -> web.StreamResponse:
    """An answer that never ends: chunks of zeros for as long as the client reads."""
    response = web.StreamResponse()
    await response.prepare(request)
    while True:
        await response.write(bytes(64 * 1024))


async def gzip_bomb(request: web.Request) -> web.Response:
    """A small gzip answer that inflates to 64 MiB."""
    body = gzip.compress(bytes(64 * 1024 * 1024), compresslevel=9)
    return web.Response(body=body, headers={"Content-Encoding": "gzip"})


async def announced_too_large(request: web.Request) -> web.StreamResponse:
    """Content-Length says 64 GiB; a few bytes come, then the answer stalls."""
    response = web.StreamResponse()
    response.content_length = 64 * 1024**3
    await response.prepare(request)
    await response.write(b"x" * 10)
    await anyio.sleep(30)
    return response


@pytest.mark.parametrize("handler", [endless, gzip_bomb, announced_too_large])
async def test_a_file_past_max_bytes_is_refused_before_it_fills_the_disk(
    session: aiohttp.ClientSession, clock: FakeClock, tmp_path: Path, handler: Any
) -> None:
    """A server whose answer never ends, a compressed answer that inflates without end, or
    one that announces more than the bound: the download stops at `max_bytes` (or before
    reading, when announced) with a clear error, and leaves nothing behind."""
    async with serve({"/v.mp4": handler}) as base:
        with anyio.fail_after(20), pytest.raises(DownloadError, match="larger than the 1048576"):
            await fetch(session, f"{base}/v.mp4", tmp_path / "v.mp4", clock, max_bytes=2**20)
    assert leftovers(tmp_path) == []
    assert clock.sleeps == []  # refused for good: never tried again


async def test_a_negative_max_bytes_is_refused_before_any_request(
    session: aiohttp.ClientSession, clock: FakeClock, tmp_path: Path
) -> None:
    """A negative bound is a mistake in the call, told before anything is fetched."""
    with pytest.raises(InvalidArgumentError, match="max_bytes cannot be negative, not -1"):
        await fetch(session, "http://127.0.0.1:9/v.mp4", tmp_path / "v.mp4", clock, max_bytes=-1)


async def test_a_file_of_exactly_max_bytes_is_kept(
    server: FakeKlingServer, session: aiohttp.ClientSession, clock: FakeClock, tmp_path: Path
) -> None:
    """The bound is inclusive: a file of exactly `max_bytes` is the file."""
    dest = await fetch(session, file_url(server), tmp_path / "v.mp4", clock, max_bytes=SIZE)
    assert dest.stat().st_size == SIZE


# -- addresses ----------------------------------------------------------------------------

#: The rules of a public download, except that 127.0.0.1 counts as public: it stands for a CDN.
LOCAL_CDN = AddressRules(trusted=(ipaddress.ip_network("127.0.0.1/32"),))


def tracing_session(seen: list[str], **kwargs: Any) -> aiohttp.ClientSession:
    """A guarded session that notes each request it starts and each connection it makes."""

    async def on_start(_: object, __: object, params: aiohttp.TraceRequestStartParams) -> None:
        seen.append(f"GET {params.url}")

    async def on_connected(*_: object) -> None:
        seen.append("connected")

    trace = aiohttp.TraceConfig()
    trace.on_request_start.append(on_start)
    trace.on_connection_create_end.append(on_connected)
    session = guarded_session(**kwargs)
    session._trace_configs.append(trace)
    trace.freeze()
    return session


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://127.0.0.1/v.mp4", "127.0.0.1 is a loopback address"),
        ("http://2130706433/v.mp4", "127.0.0.1 is a loopback address"),
        ("http://0x7f.1/v.mp4", "127.0.0.1 is a loopback address"),
        ("http://0177.0.0.1/v.mp4", "127.0.0.1 is a loopback address"),
        ("http://127.1:8080/v.mp4", "127.0.0.1 is a loopback address"),
        ("http://127.0.0.1./v.mp4", "127.0.0.1 is a loopback address"),
        ("http://[::1]/v.mp4", "::1 is a loopback address"),
        ("http://[::ffff:127.0.0.1]/v.mp4", "carrying 127.0.0.1, a loopback address"),
        ("http://169.254.169.254/latest/meta-data/", "link-local \\(cloud metadata\\)"),
        ("https://10.0.0.8/v.mp4", "10.0.0.8 is a private address"),
        ("http://100.100.100.200/v.mp4", "a shared \\(CGNAT\\) address"),
        ("http://[fd00::1]/v.mp4", "a unique-local address"),
    ],
)
async def test_private_addresses_are_refused_before_connecting(
    url: str, shown: str, clock: FakeClock, tmp_path: Path
) -> None:
    """A URL whose host spells a non-public address fails before any request is made."""
    started: list[str] = []
    async with tracing_session(started) as session:
        with pytest.raises(DownloadError, match=shown) as caught:
            await fetch(session, url, tmp_path / "v.mp4", clock, addresses=PUBLIC_ONLY)
    assert "allow_private_downloads=True" in str(caught.value)
    assert started == [] and clock.sleeps == []
    assert leftovers(tmp_path) == []


async def test_a_name_resolving_to_a_private_address_is_refused(
    server: FakeKlingServer, clock: FakeClock, tmp_path: Path
) -> None:
    """A name is judged by every address it resolves to; the server never hears of it."""
    port = URL(server.url).port
    resolver = FakeResolver({"cdn.test": ["93.184.216.34", "127.0.0.1"]})
    async with guarded_session(resolver=resolver) as session:
        shown = r"cdn\.test: it resolves to 127\.0\.0\.1, a loopback"
        with pytest.raises(DownloadError, match=shown):
            await fetch(
                session,
                f"http://cdn.test:{port}/files/v1.mp4",
                tmp_path / "v.mp4",
                clock,
                addresses=PUBLIC_ONLY,
            )
    assert resolver.asked == ["cdn.test"]
    assert file_requests(server) == [] and clock.sleeps == []


async def test_a_name_is_connected_to_at_its_checked_address(
    server: FakeKlingServer, clock: FakeClock, tmp_path: Path
) -> None:
    """A name whose addresses pass is fetched from the address that was checked."""
    port = URL(server.url).port
    resolver = FakeResolver({"cdn.test": ["127.0.0.1"]})
    async with guarded_session(LOCAL_CDN, resolver) as session:
        url = f"http://cdn.test:{port}/files/v1.mp4"
        dest = await fetch(session, url, tmp_path / "v1.mp4", clock, addresses=LOCAL_CDN)
        assert dest.read_bytes() == await plain_get(session, file_url(server))
    assert resolver.asked == ["cdn.test"]


@pytest.mark.parametrize(
    ("target", "shown"),
    [
        ("http://169.254.169.254/latest/meta-data/", "169.254.169.254: 169.254.169.254 is a"),
        ("http://0xa9fea9fe/latest/meta-data/", "0xa9fea9fe: 169.254.169.254 is a link-local"),
        ("http://[::ffff:10.0.0.1]:80/v.mp4", "carrying 10.0.0.1, a private address"),
        ("http://metadata.test/computeMetadata/v1/", "metadata.test: it resolves to 169.254"),
    ],
)
async def test_redirects_to_private_addresses_are_refused(
    target: str, shown: str, clock: FakeClock, tmp_path: Path
) -> None:
    """Every redirect hop is checked as the first one is: spelt out or resolved."""
    resolver = FakeResolver({"metadata.test": ["169.254.169.254"]})

    async def to_metadata(_: web.Request) -> web.StreamResponse:
        raise web.HTTPFound(target)

    seen: list[str] = []
    async with (
        serve({"/v.mp4": to_metadata}) as base,
        tracing_session(seen, rules=LOCAL_CDN, resolver=resolver) as session,
    ):
        with pytest.raises(DownloadError, match=shown) as caught:
            await fetch(session, f"{base}/v.mp4", tmp_path / "v.mp4", clock, addresses=LOCAL_CDN)
    assert "allow_private_downloads=True" in str(caught.value)
    assert seen[:2] == [f"GET {base}/v.mp4", "connected"]
    assert seen[2:] in ([], [f"GET {target}"])  # a name is refused as it resolves
    assert leftovers(tmp_path) == []
