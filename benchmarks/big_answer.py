"""Memory when a read is answered with a huge body: the client against ``await resp.read()``.

A server in a child process answers a task read with a 64 MiB body in three shapes: with a
``Content-Length`` that says so ("announced"), chunked without a length ("chunked"), and a
small gzip body that inflates to 64 MiB ("gzip"). For each shape, in alternating rounds on
this process's event loop, two contenders read it:

- ``aiohttp``: a plain ``async with session.get(url) as resp: await resp.read()``, the
  baseline, which holds the whole body (and, for a moment, its pieces as well);
- ``kling_async``: ``KlingClient.get_task`` with one attempt (a read; the client refuses an
  answer past its 4 MiB cap without reading the rest).

The figure is each contender's peak memory during one read: the peak of Python's traced
allocations (tracemalloc, reset before each read; aiohttp's buffers are Python objects),
and the growth of the peak resident set over the resident set before the read (``VmHWM``
reset through ``/proc/self/clear_refs``; n/a where it cannot be), each such read in a fresh
process: in one process the allocator would hand a later read the pages an earlier one
freed. Both contenders warm up on a small answer first, so first-use costs are not counted.

    python benchmarks/big_answer.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gzip
import json
import statistics
import subprocess
import sys
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
from _common import API_KEY, child_server, memory_kib, parse_args, print_table, write_results
from aiohttp import web
from serve_fake import announce, wait_for_stop

from kling_async import KlingClient, KlingError, RetryPolicy

MiB = 1024 * 1024
SHAPES = ("announced", "chunked", "gzip")
CONTENDERS = ("aiohttp", "kling_async")
PIECE = 64 * 1024  # what the server writes at a time
PATH = "/kling/v1/videos/video-extend/"
SMALL = (
    b'{"code": 0, "message": "SUCCEED", "request_id": "r",'
    b' "data": {"task_id": "small", "task_status": "processing"}}'
)


def envelope(size: int) -> bytes:
    """A task answer of exactly `size` bytes: an envelope padded with spaces."""
    head = b'{"code": 0, "message": "SUCCEED", "request_id": "r", "data": {"task_id": "big"}'
    return head + b" " * (size - len(head) - 1) + b"}"


def make_app(size: int) -> web.Application:
    """The server: ``<PATH>small`` answers a task, ``<PATH><shape>`` `size` bytes in that shape."""
    packed = gzip.compress(envelope(size), compresslevel=9)

    async def small(_: web.Request) -> web.StreamResponse:
        return web.Response(body=SMALL, content_type="application/json")

    async def announced(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.content_length = size
        return await stream(request, response, size)

    async def chunked(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        return await stream(request, response, size)

    async def gzipped(_: web.Request) -> web.StreamResponse:
        headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
        return web.Response(body=packed, headers=headers)

    app = web.Application()
    app.router.add_get(PATH + "small", small)
    app.router.add_get(PATH + "announced", announced)
    app.router.add_get(PATH + "chunked", chunked)
    app.router.add_get(PATH + "gzip", gzipped)
    return app


async def stream(
    request: web.Request, response: web.StreamResponse, size: int
) -> web.StreamResponse:
    """Write `size` bytes of an envelope piece by piece, until done or the client hangs up."""
    body = memoryview(envelope(size))
    await response.prepare(request)
    with contextlib.suppress(ConnectionError):
        for start in range(0, size, PIECE):
            await response.write(body[start : start + PIECE])
        await response.write_eof()
    return response


async def serve(size: int) -> None:
    """Run the server on a free port, announce its URL, serve until stdin closes."""
    runner = web.AppRunner(make_app(size))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    announce({"url": f"http://127.0.0.1:{port}"})
    try:
        await wait_for_stop()
    finally:
        await runner.cleanup()


Read = Callable[[str], Awaitable[str]]


def baseline(session: aiohttp.ClientSession, url: str) -> Read:
    """A read with plain aiohttp: the whole body in memory."""

    async def read(name: str) -> str:
        async with session.get(url + PATH + name) as response:
            body = await response.read()
        return f"{len(body)} bytes read"

    return read


def ours(client: KlingClient) -> Read:
    """A read with the client: `get_task`, one attempt; what it raised, if anything."""

    async def read(name: str) -> str:
        try:
            task = await client.get_task(name)
        except KlingError as exc:
            return f"{type(exc).__name__}: {exc}"
        return f"task {task.id}"

    return read


def reset_peak_rss() -> bool:
    """Set the process's peak resident set to its current one; False where Linux cannot."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


@contextlib.asynccontextmanager
async def contenders(url: str) -> AsyncIterator[dict[str, Read]]:
    """Both contenders, open and warmed up on a small answer (connections, imports, caches)."""
    one_attempt = RetryPolicy(max_attempts=1)
    client = KlingClient(api_key=API_KEY, base_url=url, dialect="gateway", retry=one_attempt)
    async with aiohttp.ClientSession() as session, client:
        reads = {"aiohttp": baseline(session, url), "kling_async": ours(client)}
        for read in reads.values():
            await read("small")
        yield reads


async def traced(url: str, rounds: int) -> dict[str, dict[str, list[float]]]:
    """Traced peaks (MiB) of `rounds` alternating reads of every shape by each contender."""
    peaks: dict[str, dict[str, list[float]]] = {s: {c: [] for c in CONTENDERS} for s in SHAPES}
    async with contenders(url) as reads:
        tracemalloc.start()
        try:
            for _ in range(rounds):
                for shape in SHAPES:
                    for name, read in reads.items():
                        tracemalloc.reset_peak()
                        before = tracemalloc.get_traced_memory()[0]
                        await read(shape)
                        peaks[shape][name].append(
                            (tracemalloc.get_traced_memory()[1] - before) / MiB
                        )
        finally:
            tracemalloc.stop()
    return peaks


async def resident(url: str, contender: str, shape: str) -> dict[str, Any]:
    """One read by `contender` in this (fresh) process: its outcome and peak RSS growth."""
    async with contenders(url) as reads:
        if not reset_peak_rss():
            return {"outcome": await reads[contender](shape), "rss_growth_mib": None}
        before = memory_kib("VmRSS")
        outcome = await reads[contender](shape)
        return {"outcome": outcome, "rss_growth_mib": (memory_kib("VmHWM") - before) / 1024}


def resident_in_child(url: str, contender: str, shape: str) -> dict[str, Any]:
    """`resident` in a process of its own: memory an earlier read freed is not reused."""
    done = subprocess.run(  # noqa: S603 - this interpreter, this script
        [sys.executable, __file__, "--resident", url, contender, shape],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    figures: dict[str, Any] = json.loads(done.stdout)
    return figures


def summary(peaks: dict[str, list[float]], rss: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Per contender its traced peaks and RSS growths (median, highest), the ratios."""
    figures: dict[str, Any] = {}
    for name in CONTENDERS:
        growths = [r["rss_growth_mib"] for r in rss[name] if r["rss_growth_mib"] is not None]
        figures[name] = {
            "outcome": rss[name][-1]["outcome"][:160],
            "traced_peak_mib_median": statistics.median(peaks[name]),
            "traced_peak_mib_max": max(peaks[name]),
            "rss_growth_mib_median": statistics.median(growths) if growths else None,
            "rss_growth_mib_max": max(growths) if growths else None,
        }
    ours_, base = figures["kling_async"], figures["aiohttp"]
    figures["traced_ours_over_aiohttp"] = (
        ours_["traced_peak_mib_median"] / base["traced_peak_mib_median"]
    )
    figures["rss_ours_over_aiohttp"] = (
        ours_["rss_growth_mib_median"] / base["rss_growth_mib_median"]
        if ours_["rss_growth_mib_median"] is not None and base["rss_growth_mib_median"]
        else None
    )
    return figures


def extra_options(parser: argparse.ArgumentParser) -> None:
    """The modes of the child processes: the server, and one read measured alone."""
    parser.add_argument("--serve", type=int, default=None, metavar="BYTES", help=argparse.SUPPRESS)
    parser.add_argument("--resident", nargs=3, default=None, help=argparse.SUPPRESS)


def main() -> None:
    """Run the benchmark (or one of its child processes)."""
    args = parse_args(__doc__.splitlines()[0], extra=extra_options)
    if args.serve is not None:
        asyncio.run(serve(args.serve))
        return
    if args.resident is not None:
        print(json.dumps(asyncio.run(resident(*args.resident))))
        return
    size = (8 if args.quick else 64) * MiB
    rounds = 1 if args.quick else 5
    with child_server([sys.executable, __file__, "--serve", str(size)]) as server:
        peaks = asyncio.run(traced(server.url, rounds))
        rss = {
            shape: {
                name: [resident_in_child(server.url, name, shape) for _ in range(rounds)]
                for name in CONTENDERS
            }
            for shape in SHAPES
        }
    results = {shape: summary(peaks[shape], rss[shape]) for shape in SHAPES}
    rows = []
    for shape, figures in results.items():
        base, ours_ = figures["aiohttp"], figures["kling_async"]
        rows.append(
            [
                shape,
                base["traced_peak_mib_median"],
                ours_["traced_peak_mib_median"],
                figures["traced_ours_over_aiohttp"],
                base["rss_growth_mib_median"],
                ours_["rss_growth_mib_median"],
                figures["rss_ours_over_aiohttp"],
            ]
        )
    headers = ["shape", "aiohttp traced MiB", "ours traced MiB", "ours/aiohttp"]
    headers += ["aiohttp RSS+ MiB", "ours RSS+ MiB", "ours/aiohttp (RSS)"]
    title = f"Peak memory of one read answered with {size // MiB} MiB (median of {rounds})"
    print_table(title, headers, [["n/a" if v is None else v for v in row] for row in rows])
    for shape, figures in results.items():
        print(f"{shape}: ours -> {figures['kling_async']['outcome'][:100]}")
    parameters = {"body_bytes": size, "rounds": rounds, "shapes": list(SHAPES)}
    path = write_results("big_answer", args, parameters, results)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
