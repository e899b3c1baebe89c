"""What each command of ``kling-async`` does: make a client from the flags and the
``KLING_*`` variables, call the library, render what comes back.

Each command is a coroutine taking the parsed arguments and returning the exit code.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TextIO

import anyio

from ._addresses import is_loopback_url
from ._batch_files import read_requests, results_file
from ._chain_cli import demo_chains, run_chain_command, run_chain_lines
from ._display import (
    log_request,
    outcome_record,
    print_summary,
    progress_for,
    server_summary,
    show_task,
    write_record,
)
from ._downloader import download_folder
from .batch import BatchOutcome
from .chain import ChainRequest
from .client import KlingClient
from .errors import ConfigurationError, KlingError, NotSentError
from .models import Task, TaskStatus, VideoExtendRequest
from .policies import PollPolicy

__all__ = [
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "Handler",
    "batch_command",
    "chain_command",
    "demo_command",
    "extend_command",
    "fail",
    "fake_server_command",
    "status_command",
    "watch_command",
]

Handler = Callable[[argparse.Namespace], Awaitable[int]]

#: 0: everything succeeded. 1: a task failed, or the API or the network did. 2: a usage or
#: input error (a flag, a setting, an argument, an input line): nothing was sent. 130: Ctrl-C.
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


def fail(error: object, code: int) -> int:
    """Say `error` in the command's one-line form on stderr; returns the exit `code`."""
    print(f"kling-async: error: {error}", file=sys.stderr)
    return code


def client_from_args(args: argparse.Namespace, **settings: Any) -> KlingClient:
    """The client the flags describe; what they leave out comes from ``KLING_*`` variables."""
    overrides = {
        name: value
        for name in ("base_url", "dialect", "api_key", "access_key", "secret_key")
        if (value := getattr(args, name, None)) is not None
    }
    base_url = overrides.get("base_url") or os.environ.get("KLING_BASE_URL") or ""
    if is_loopback_url(base_url):
        # A fake server on this machine serves its videos from this machine too.
        settings.setdefault("allow_private_downloads", True)
    interval = getattr(args, "poll_interval", None)
    if interval is not None:
        settings["poll"] = PollPolicy(
            initial_delay=interval, min_interval=interval, max_interval=max(interval, 30.0)
        )
    return KlingClient.from_env(**overrides, **settings)


async def extend_command(args: argparse.Namespace) -> int:
    """``extend``: one extension, watched and downloaded when asked."""
    if args.download:
        download_folder(args.download)  # made before anything is sent, not after paying
    async with client_from_args(args) as client:
        task = await client.extend_video(
            args.video_id,
            task_id=args.task_id,
            prompt=args.prompt,
            negative_prompt=args.negative_prompt,
            cfg_scale=args.cfg_scale,
            callback_url=args.callback_url,
            external_task_id=args.external_task_id,
        )
        show_task(task, args.json)
        if not (args.wait or args.download):
            return EXIT_OK
        final = await _follow(client, task, args.json)
        if final.status is not TaskStatus.SUCCEED:
            return EXIT_FAILED
        if args.download:
            path = await client.download(final, args.download)
            print(json.dumps({"file": str(path)}) if args.json else f"saved {path}", flush=True)
        return EXIT_OK


async def status_command(args: argparse.Namespace) -> int:
    """``status``: one read of a task."""
    async with client_from_args(args) as client:
        task = await client.get_task(args.task_id)
    show_task(task, args.json)
    return EXIT_OK if task.status is not TaskStatus.FAILED else EXIT_FAILED


async def watch_command(args: argparse.Namespace) -> int:
    """``watch``: every task followed at once, each until it ends."""
    codes: list[int] = []
    async with client_from_args(args) as client, anyio.create_task_group() as group:

        async def follow(task_id: str) -> None:
            try:
                final = await _follow(client, task_id, args.json)
            except KlingError as exc:  # one line per task that cannot be followed
                codes.append(fail(f"task {task_id}: {exc}", EXIT_FAILED))
                return
            codes.append(EXIT_OK if final.status is TaskStatus.SUCCEED else EXIT_FAILED)

        for task_id in args.task_ids:
            group.start_soon(follow, task_id)
    return max(codes, default=EXIT_OK)


async def _follow(client: KlingClient, task: Task | str, as_json: bool) -> Task:
    """Print each status change of one task until it ends; the final snapshot."""
    final = task if isinstance(task, Task) else None
    async for snapshot in client.watch(task):
        show_task(snapshot, as_json)
        final = snapshot
    if final is None:  # pragma: no cover - a watch ends on a terminal snapshot only
        raise KlingError(f"the watch of task {task} ended without a status")
    return final


async def chain_command(args: argparse.Namespace) -> int:
    """``chain``: one video grown step by step (see `_chain_cli`)."""
    return await run_chain_command(args, client_from_args)


async def batch_command(args: argparse.Namespace) -> int:
    """``batch``: every line of a file, extensions first, then chains, resumably."""
    client = _batch_client(args)
    requests = read_requests(Path(args.input), client, skip_invalid=args.skip_invalid)
    journal = _batch_journal(args, client)
    chains = [request for request in requests if isinstance(request, ChainRequest)]
    requests = [request for request in requests if not isinstance(request, ChainRequest)]
    with results_file(Path(args.out)) as results:
        if not requests and not chains:
            return EXIT_OK  # warned while reading; an empty results file says the same
        outcomes = (
            await _run_batch(
                client,
                requests,
                args.concurrency,
                args.json,
                results=results,
                journal=journal,
                download_to=args.download,
            )
            if requests
            else []
        )
        chained = []
        if chains:  # after the extensions, in a run of their own, over the same journal
            chained = await run_chain_lines(
                _batch_client(args) if requests else client,
                chains,
                results=results,
                as_json=args.json,
                concurrency=args.concurrency,
                journal=journal,
            )
    _warn_of_unsent(outcomes)
    every = len(outcomes) == len(requests) and all(chain.ok for chain in chained)
    return EXIT_OK if every and all(o.ok and o.error is None for o in outcomes) else EXIT_FAILED


def _batch_client(args: argparse.Namespace) -> KlingClient:
    """A client with the batch's rate and, where given, the settings hosts share."""
    shared = {
        name: value
        for name in ("database_url", "parallel_tasks", "lease")
        if (value := getattr(args, name)) is not None
    }
    return client_from_args(args, requests_per_second=args.rate, **shared)


def _batch_journal(args: argparse.Namespace, client: KlingClient) -> str | Path:
    """The journal's file; with a database, the batch's name, the same on every host."""
    if client.coordination is not None:
        return args.journal or Path(args.input).name
    return Path(args.journal or f"{args.out}.journal")


def _warn_of_unsent(outcomes: list[BatchOutcome]) -> None:
    unsent = sum(isinstance(o.error, NotSentError) for o in outcomes)
    if unsent:
        print(
            f"kling-async: {unsent} request(s) were not sent because the batch stopped; "
            "fix the cause and run the same command again",
            file=sys.stderr,
        )


async def fake_server_command(args: argparse.Namespace) -> int:
    """``fake-server``: the fake API served until Ctrl-C, then a summary of what it saw."""
    from .testing import FakeKlingServer  # the fake is only loaded by the commands that use it

    if (args.access_key is None) != (args.secret_key is None):
        raise ConfigurationError("--access-key and --secret-key go together")
    if args.access_key is not None and args.dialect != "official":
        raise ConfigurationError(
            "--access-key and --secret-key need --dialect official: gateways take a bearer key"
        )
    server = FakeKlingServer(
        dialect=args.dialect,
        api_key=args.api_key,
        access_key=args.access_key,
        secret_key=args.secret_key,
        speed=args.speed,
        seed=args.seed,
        fail_rate=args.fail_rate,
        max_concurrent=args.max_concurrent,
        require_known_videos=args.require_known_videos,
        webhook_secret=args.webhook_secret,
        host=args.host,
        port=args.port,
        on_request=None if args.quiet else log_request,
    )
    async with server:
        print(
            f"Fake Kling API ({args.dialect}) on {server.url}, seed {server.seed} "
            f"(--seed {server.seed} repeats it); Ctrl-C stops it. Try:"
        )
        for name, value in server.environment.items():
            print(f"  export {name}={value}")
        if "KLING_ACCESS_KEY" in server.environment:
            print("  unset KLING_API_KEY  # a key and a key pair together are refused")
        parent = " --task-id PARENT_TASK" if args.dialect == "gateway" else ""
        print(f"  kling-async extend VIDEO_ID{parent} --wait", flush=True)
        try:
            await anyio.sleep_forever()
        finally:
            print(server_summary(server.record), flush=True)
    return EXIT_OK  # pragma: no cover - only Ctrl-C ends the server


async def demo_command(args: argparse.Namespace) -> int:
    """``demo``: a batch and a few chains on the embedded fake server."""
    from .testing import Durations, FakeKlingServer

    # Two service minutes per extension, played 60 times faster by default: about 2 s each.
    durations = Durations(submitted_for=5.0, median=120.0, sigma=0.3)
    server = FakeKlingServer(
        speed=args.speed, durations=durations, fail_rate=0.1, max_concurrent=args.concurrency
    )
    scale = 60.0 / args.speed
    poll = PollPolicy(
        initial_delay=0.2 * scale, min_interval=0.05 * scale, max_interval=0.5 * scale, timeout=60
    )
    requests = [
        VideoExtendRequest(
            f"demo-video-{n:03d}", task_id=f"demo-parent-{n:03d}", prompt="the scene goes on"
        )
        for n in range(1, args.count + 1)
    ]
    key = "test-api-key"
    async with server:
        client = KlingClient(
            api_key=key,
            base_url=server.url,
            dialect="gateway",
            poll=poll,
            allow_private_downloads=True,  # its videos are served on 127.0.0.1
        )
        print(
            f"Extending {len(requests)} videos on a fake Kling server at {server.url} "
            f"(at most {args.concurrency} at a time)...",
            file=sys.stderr,
        )
        outcomes = await _run_batch(client, requests, args.concurrency, args.json)
        print(
            f"The server saw {server.record.create_count} creates, at most "
            f"{server.record.peak_concurrent} tasks at once, "
            f"{len(server.record.requests) - server.record.create_count} status reads.",
            file=sys.stderr,
        )
    if args.chains:  # many tasks each: on a server that fails rarely, so most reach 30 s
        chain_server = FakeKlingServer(speed=args.speed, durations=durations, fail_rate=0.02)
        async with chain_server:
            await demo_chains(chain_server.url, key, poll, count=args.chains, as_json=args.json)
    return EXIT_OK if outcomes else EXIT_FAILED


async def _run_batch(
    client: KlingClient,
    requests: list[VideoExtendRequest],
    concurrency: int,
    as_json: bool,
    *,
    results: TextIO | None = None,
    **options: Any,
) -> list[BatchOutcome]:
    """Run `requests` as one batch behind a progress display, writing each outcome as it ends."""
    progress = progress_for(len(requests), sys.stderr)
    outcomes: list[BatchOutcome] = []
    try:
        async with anyio.create_task_group() as timer:
            timer.start_soon(progress.redraw_every)  # a burst of events then a quiet spell
            async with (
                client,
                client.extend_many(
                    requests, concurrency=concurrency, on_event=progress.on_event, **options
                ) as batch,
            ):
                async for outcome in batch:
                    outcomes.append(outcome)
                    write_record(outcome_record(outcome), results, as_json=as_json)
            timer.cancel_scope.cancel()
    finally:
        progress.finish()  # once, and before an "interrupted" line
    if not as_json:
        print_summary(outcomes, sys.stdout)
    return outcomes
