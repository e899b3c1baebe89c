"""Run a `FakeKlingServer` in its own process for the benchmarks.

The benchmarks measure a client, so the server must not share the client's event loop (or
its CPU time). This script starts the fake on 127.0.0.1, prints one JSON line on stdout
(``{"url": ..., "pid": ..., "created": N}``) once it accepts requests, and serves until its
standard input closes or it gets SIGTERM; then it prints a last JSON line with what it saw.

``--create N --ids-file PATH`` makes N video-extend tasks through the server's own HTTP API
before announcing the URL and writes their ids to PATH, one a line: the client process of a
scale run starts clean instead of carrying the memory of 100,000 creates.

    python benchmarks/serve_fake.py --speed 100 --median 60 --sigma 0
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import aiohttp

from kling_async.testing import Durations, FakeKlingServer

API_KEY = "test-api-key"
_CREATE_CONCURRENCY = 64
# The record keeps every request; a long benchmark would hold gigabytes of them, so the
# script counts them and empties the list this often (seconds).
_FORGET_EVERY = 1.0


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line: the server's knobs and the optional pre-creation of tasks."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--dialect", choices=("gateway", "official"), default="gateway")
    parser.add_argument("--speed", type=float, default=1.0, help="service s per wall s")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--median", type=float, default=120.0, help="service seconds")
    parser.add_argument("--sigma", type=float, default=0.35)
    parser.add_argument("--submitted-for", type=float, default=5.0, help="service seconds")
    parser.add_argument("--max-concurrent", type=int, default=None)
    parser.add_argument("--create", type=int, default=0, help="tasks to make before serving")
    parser.add_argument("--ids-file", type=Path, default=None, help="where to write their ids")
    args = parser.parse_args(argv)
    if args.create and args.ids_file is None:
        parser.error("--create needs --ids-file")
    return args


def make_server(args: argparse.Namespace) -> FakeKlingServer:
    """The fake server the arguments describe (not started)."""
    durations = Durations(submitted_for=args.submitted_for, median=args.median, sigma=args.sigma)
    return FakeKlingServer(
        dialect=args.dialect,
        api_key=API_KEY,
        speed=args.speed,
        seed=args.seed,
        durations=durations,
        max_concurrent=args.max_concurrent,
        port=args.port,
    )


def extend_path(dialect: str) -> str:
    """The create path of the dialect (a gateway puts ``/kling`` before ``/v1``)."""
    return ("/kling" if dialect == "gateway" else "") + "/v1/videos/video-extend"


async def create_tasks(url: str, dialect: str, count: int) -> list[str]:
    """Make `count` tasks through the HTTP API, `_CREATE_CONCURRENCY` at a time."""
    headers = {"Authorization": f"Bearer {API_KEY}"}
    endpoint = url + extend_path(dialect)
    ids: list[str] = [""] * count
    numbers = iter(range(count))
    connector = aiohttp.TCPConnector(limit=_CREATE_CONCURRENCY)
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:

        async def worker() -> None:
            for number in numbers:
                body = {"video_id": f"bench-video-{number}", "task_id": f"bench-parent-{number}"}
                async with session.post(endpoint, json=body) as response:
                    answer = await response.json()
                if answer.get("code") != 0:
                    raise RuntimeError(f"create {number} was refused: {answer}")
                ids[number] = answer["data"]["task_id"]

        async with asyncio.TaskGroup() as group:
            for _ in range(_CREATE_CONCURRENCY):
                group.create_task(worker())
    return ids


async def wait_for_stop() -> None:
    """Return when stdin reaches its end (the parent closed it) or SIGTERM/SIGINT arrives."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    reader = asyncio.StreamReader()
    transport = None
    # A regular file or a closed stdin cannot be watched: then only a signal stops us.
    with contextlib.suppress(ValueError, OSError):
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), sys.stdin
        )

    async def drain() -> None:
        while await reader.read(65536):
            pass
        stop.set()

    watcher = asyncio.create_task(drain()) if transport is not None else None
    await stop.wait()
    if watcher is not None:
        watcher.cancel()
    if transport is not None:
        transport.close()


async def forget_requests(server: FakeKlingServer, seen: list[int]) -> None:
    """Count and drop the record's requests now and then, so memory stays flat."""
    while True:
        await asyncio.sleep(_FORGET_EVERY)
        seen[0] += len(server.record.requests)
        server.record.requests.clear()


def announce(payload: dict[str, object]) -> None:
    """One JSON line on stdout, flushed at once (the parent is waiting for it)."""
    sys.stdout.write(json.dumps(payload) + "\n")
    sys.stdout.flush()


async def serve(args: argparse.Namespace) -> None:
    """Start, optionally pre-create tasks, announce, serve until told to stop, report."""
    async with make_server(args) as server:
        started = time.monotonic()
        if args.create:
            ids = await create_tasks(server.url, args.dialect, args.create)
            args.ids_file.write_text("\n".join(ids) + "\n")
            server.record.requests.clear()  # what follows counts only the benchmark's requests
        setup_seconds = time.monotonic() - started
        seen = [0]
        forgetter = asyncio.create_task(forget_requests(server, seen))
        announce(
            {
                "url": server.url,
                "pid": os.getpid(),
                "created": args.create,
                "setup_seconds": round(setup_seconds, 3),
            }
        )
        await wait_for_stop()
        forgetter.cancel()
        requests = seen[0] + len(server.record.requests)
        announce({"requests": requests, "created": server.record.create_count})


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point: ``python benchmarks/serve_fake.py [options]``."""
    asyncio.run(serve(parse_args(argv)))


if __name__ == "__main__":
    main()
