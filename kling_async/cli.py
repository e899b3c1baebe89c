"""The ``kling-async`` command: a thin shell over the library.

It parses arguments, builds a client from flags and ``KLING_*`` variables, calls the
library and renders what comes back. Errors are one clear line on stderr and a non-zero exit
code, never a traceback; secrets are never printed.
"""

from __future__ import annotations

import argparse
import codecs
import contextlib
import json
import logging
import os
import sys
import warnings
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn, TextIO

import anyio

from . import __version__
from ._addresses import is_loopback_url
from ._chain_cli import (
    add_chain_command,
    chain_from_json,
    demo_chains,
    run_chain_command,
    run_chain_lines,
)
from ._display import (
    log_request,
    outcome_record,
    print_summary,
    progress_for,
    server_summary,
    show_task,
)
from ._downloader import download_folder
from ._flags import COUNT, FRACTION, NATURAL, PORT, POSITIVE
from ._wire import request_from_json
from .batch import BatchOutcome
from .chain import ChainRequest, chain_key
from .client import KlingClient
from .errors import (
    SETTING_NAMES,
    ConfigurationError,
    InvalidArgumentError,
    KlingError,
    NotSentError,
    SettingNames,
    sole_error,
)
from .journal import request_key
from .models import Task, TaskStatus, VideoExtendRequest
from .policies import PollPolicy

__all__ = ["main"]

Handler = Callable[[argparse.Namespace], Awaitable[int]]

#: 0: everything succeeded. 1: a task failed, or the API or the network did. 2: a usage or
#: input error (a flag, a setting, an argument, an input line): nothing was sent. 130: Ctrl-C.
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

#: Settings named as a user of the command sets them.
CLI_SETTING_NAMES = SettingNames(
    api_key="KLING_API_KEY (or --api-key)",
    access_key="KLING_ACCESS_KEY (or --access-key)",
    secret_key="KLING_SECRET_KEY (or --secret-key)",  # noqa: S106 - a name, not a key
    base_url="KLING_BASE_URL (or --base-url)",
    dialect="KLING_DIALECT (or --dialect)",
    requests_per_second="--rate",
)
_MAX_PROBLEMS_SHOWN = 10


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (0 only when everything succeeded)."""
    parser = _parser()
    args = parser.parse_args(argv)
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    _show_warnings()
    names = SETTING_NAMES.set(CLI_SETTING_NAMES)
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _warning_in_one_line
            return anyio.run(handler, args, backend="asyncio")
    except KeyboardInterrupt:
        resumable = handler in (_batch, _chain)
        resume = "; run the same command again to resume" if resumable else ""
        print(f"kling-async: interrupted{resume}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:
        return _report_failure(sole_error(exc))  # `watch` follows tasks in a group
    finally:
        SETTING_NAMES.reset(names)


def _warning_in_one_line(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: TextIO | None = None,
    line: str | None = None,
) -> None:
    """A warning (a dependency's too) as one line, never the source line Python adds."""
    text = " ".join(str(message).split())
    print(f"kling-async: warning: {text}", file=sys.stderr)


def _show_warnings() -> None:
    """The library's warnings (a batch stopping, a task unreadable for a while) on stderr."""
    library = logging.getLogger("kling_async")
    if any(getattr(h, "kling_cli", False) for h in library.handlers):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.kling_cli = True  # type: ignore[attr-defined]
    handler.setFormatter(logging.Formatter("kling-async: %(message)s"))
    library.addHandler(handler)
    library.setLevel(logging.WARNING)


def _report_failure(error: BaseException) -> int:
    """One clear line for a failure the user can act on; anything else is a bug: re-raised."""
    if isinstance(error, ConfigurationError | InvalidArgumentError):
        return _fail(error, EXIT_USAGE)
    if isinstance(error, KlingError):
        return _fail(error, EXIT_FAILED)
    if isinstance(error, OSError):
        where = f": {error.filename}" if error.filename else ""
        return _fail(f"{error.strerror or error}{where}", EXIT_FAILED)
    raise error


def _fail(error: object, code: int) -> int:
    print(f"kling-async: error: {error}", file=sys.stderr)
    return code


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors in the command's one-line form."""

    def error(self, message: str) -> NoReturn:
        print(f"kling-async: error: {message} (see: {self.prog} --help)", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="kling-async",
        description="Extend videos with the Kling API, watch tasks, and try it on a fake server.",
        epilog="Credentials come from KLING_API_KEY (or KLING_ACCESS_KEY and KLING_SECRET_KEY); "
        "KLING_BASE_URL and KLING_DIALECT pick the endpoint. Exit codes: 0 all succeeded, "
        "1 a task or the API failed, 2 a usage or input error (nothing sent), 130 Ctrl-C.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")
    _add_extend(commands)
    _add_status(commands)
    _add_watch(commands)
    _add_batch(commands)
    chain = add_chain_command(commands, [_connection_options(), _polling_options()])
    chain.set_defaults(handler=_chain)
    _add_fake_server(commands)
    _add_demo(commands)
    return parser


def _connection_options() -> argparse.ArgumentParser:
    """Options every command that talks to the API shares."""
    shared = _Parser(add_help=False)
    group = shared.add_argument_group("connection (defaults from the environment)")
    group.add_argument("--base-url", help="API base URL (KLING_BASE_URL)")
    group.add_argument(
        "--dialect",
        choices=["official", "gateway"],
        help="official API or a reselling gateway (KLING_DIALECT; default: official for a "
        "klingai.com host, else gateway)",
    )
    group.add_argument(
        "--api-key", help="API key (prefer KLING_API_KEY: flags show up in process lists)"
    )
    group.add_argument("--access-key", help="official access key (KLING_ACCESS_KEY)")
    group.add_argument("--secret-key", help="official secret key (prefer KLING_SECRET_KEY)")
    group.add_argument("--json", action="store_true", help="print JSON lines for scripts")
    return shared


def _polling_options() -> argparse.ArgumentParser:
    """The option of commands that follow tasks until they end."""
    shared = _Parser(add_help=False)
    shared.add_argument(
        "--poll-interval",
        type=POSITIVE,
        metavar="SECONDS",
        help="first look and shortest gap between status reads "
        "(default: adaptive, first look after 10 s, then 2-30 s apart)",
    )
    return shared


def _add_extend(commands: Any) -> None:
    command = commands.add_parser(
        "extend", parents=[_connection_options(), _polling_options()], help="extend one video"
    )
    command.add_argument("video_id", metavar="VIDEO_ID")
    command.add_argument("--task-id", help="the task that produced the video (gateways need it)")
    command.add_argument("--prompt")
    command.add_argument("--negative-prompt")
    command.add_argument("--cfg-scale", type=FRACTION, help="0 to 1")
    command.add_argument("--callback-url")
    command.add_argument("--external-task-id")
    command.add_argument("--wait", action="store_true", help="watch the task until it ends")
    command.add_argument(
        "--download", metavar="DIR", help="download the result into DIR (implies --wait)"
    )
    command.set_defaults(handler=_extend)


def _add_status(commands: Any) -> None:
    command = commands.add_parser(
        "status", parents=[_connection_options()], help="show a task's status"
    )
    command.add_argument("task_id", metavar="TASK_ID")
    command.set_defaults(handler=_status)


def _add_watch(commands: Any) -> None:
    command = commands.add_parser(
        "watch",
        parents=[_connection_options(), _polling_options()],
        help="follow tasks until they end",
    )
    command.add_argument("task_ids", metavar="TASK_ID", nargs="+")
    command.set_defaults(handler=_watch)


def _add_batch(commands: Any) -> None:
    command = commands.add_parser(
        "batch",
        parents=[_connection_options(), _polling_options()],
        help="extend every video of a JSONL file, resumably",
        description="Each input line is a JSON object with VideoExtendRequest's fields "
        "(video_id, task_id, prompt, negative_prompt, cfg_scale, callback_url, "
        "external_task_id, and an optional key); a line with steps, until (seconds) or "
        "prompts (one per step) asks for a chain of extensions of its video_id instead. "
        "Results go to --out as JSON lines. The run "
        "is journaled (by default next to the results), so the same command resumes an "
        "interrupted run without paying twice.",
    )
    command.add_argument("input", metavar="INPUT.jsonl")
    command.add_argument("--out", required=True, metavar="RESULTS.jsonl")
    command.add_argument(
        "--journal",
        metavar="FILE|NAME",
        help="default: RESULTS.jsonl.journal; with a database, the batch's name "
        "(default: the input file's name)",
    )
    command.add_argument("--concurrency", type=COUNT, default=8, help="tasks in flight (8)")
    command.add_argument(
        "--rate", type=POSITIVE, help="at most this many requests a second (default: no limit)"
    )
    command.add_argument("--download", metavar="DIR", help="download each result into DIR")
    command.add_argument(
        "--skip-invalid",
        action="store_true",
        help="skip invalid input lines instead of stopping before anything is sent",
    )
    shared = command.add_argument_group(
        "several hosts, one account",
        "Run the same command on every host with the same database: each request is sent "
        "once in all, a host that dies has its work taken over, and every host reports and "
        "exports the whole batch.",
    )
    shared.add_argument(
        "--database-url", metavar="URL", help="postgresql://... (KLING_DATABASE_URL)"
    )
    shared.add_argument(
        "--parallel-tasks", type=COUNT, metavar="N", help="the account's quota of tasks in flight"
    )
    shared.add_argument(
        "--lease",
        type=POSITIVE,
        metavar="SECONDS",
        help="how long a silent host keeps its requests before another takes them (30)",
    )
    command.set_defaults(handler=_batch)


def _add_fake_server(commands: Any) -> None:
    command = commands.add_parser(
        "fake-server",
        help="serve the fake Kling API locally",
        description="A fake of the Kling API for trying clients: real paths, auth checks, "
        "error codes and task life cycles, on a faster clock. It logs each request and, on "
        "Ctrl-C, sums up what it saw.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    command.add_argument("--host", default="127.0.0.1", help="address to listen on")
    command.add_argument("--port", type=PORT, default=8765, help="port (0 picks a free one)")
    command.add_argument(
        "--dialect",
        choices=["official", "gateway"],
        default="gateway",
        help="the API to imitate: 'official' (paths /v1/..., an API key or access/secret-key "
        "JWTs, lists, external ids) or 'gateway' (a reseller: paths /kling/v1/..., a bearer "
        "key, extensions name their parent task)",
    )
    command.add_argument(
        "--speed", type=POSITIVE, default=20.0, help="service seconds per real second"
    )
    command.add_argument("--api-key", default="test-api-key", help="the static key it accepts")
    command.add_argument(
        "--access-key", help="with --secret-key: also accept JWTs signed with this pair (official)"
    )
    command.add_argument("--secret-key", help="the secret key those JWTs are signed with")
    command.add_argument(
        "--seed",
        type=int,
        help="makes ids, durations and failures repeatable (default: a random seed, printed)",
    )
    command.add_argument(
        "--fail-rate", type=FRACTION, default=0.0, help="share of tasks that end failed"
    )
    command.add_argument(
        "--max-concurrent",
        type=COUNT,
        help="tasks allowed to run at once; more are refused with code 1303 (default: no limit)",
    )
    command.add_argument(
        "--webhook-secret",
        help="sign callbacks with this Standard Webhooks secret (whsec_...) (default: unsigned)",
    )
    command.add_argument(
        "--require-known-videos",
        action="store_true",
        help="refuse to extend videos (and parent tasks) the server has not made",
    )
    command.add_argument("--quiet", action="store_true", help="no line per request")
    command.set_defaults(handler=_fake_server)


def _add_demo(commands: Any) -> None:
    command = commands.add_parser(
        "demo", help="extend a batch of videos on the embedded fake server, with progress"
    )
    command.add_argument("--count", type=COUNT, default=24, help="extensions to run (default 24)")
    command.add_argument(
        "--chains",
        type=NATURAL,
        default=3,
        help="videos grown to 30 s by chains (default 3)",
    )
    command.add_argument("--concurrency", type=COUNT, default=6, help="tasks in flight (6)")
    command.add_argument(
        "--speed", type=POSITIVE, default=60.0, help="how much faster than real tasks run (60)"
    )
    command.add_argument("--json", action="store_true", help="print JSON lines for scripts")
    command.set_defaults(handler=_demo)


def _client(args: argparse.Namespace, **settings: Any) -> KlingClient:
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


async def _extend(args: argparse.Namespace) -> int:
    if args.download:
        download_folder(args.download)  # made before anything is sent, not after paying
    async with _client(args) as client:
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


async def _status(args: argparse.Namespace) -> int:
    async with _client(args) as client:
        task = await client.get_task(args.task_id)
    show_task(task, args.json)
    return EXIT_OK if task.status is not TaskStatus.FAILED else EXIT_FAILED


async def _watch(args: argparse.Namespace) -> int:
    codes: list[int] = []
    async with _client(args) as client, anyio.create_task_group() as group:

        async def follow(task_id: str) -> None:
            try:
                final = await _follow(client, task_id, args.json)
            except KlingError as exc:  # one line per task that cannot be followed
                codes.append(_fail(f"task {task_id}: {exc}", EXIT_FAILED))
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


async def _chain(args: argparse.Namespace) -> int:
    return await run_chain_command(args, _client)


async def _batch(args: argparse.Namespace) -> int:
    shared = {
        name: value
        for name in ("database_url", "parallel_tasks", "lease")
        if (value := getattr(args, name)) is not None
    }
    client = _client(args, requests_per_second=args.rate, **shared)
    requests = read_requests(Path(args.input), client, skip_invalid=args.skip_invalid)
    journal: str | Path = Path(args.journal or f"{args.out}.journal")
    if client.coordination is not None:  # the batch's name, the same on every host
        journal = args.journal or Path(args.input).name
    chains = [request for request in requests if isinstance(request, ChainRequest)]
    requests = [request for request in requests if not isinstance(request, ChainRequest)]
    with _results_file(Path(args.out)) as results:
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
                _client(args, requests_per_second=args.rate, **shared) if requests else client,
                chains,
                results=results,
                as_json=args.json,
                concurrency=args.concurrency,
                journal=journal,
            )
    unsent = sum(isinstance(o.error, NotSentError) for o in outcomes)
    if unsent:
        print(
            f"kling-async: {unsent} request(s) were not sent because the batch stopped; "
            "fix the cause and run the same command again",
            file=sys.stderr,
        )
    every = len(outcomes) == len(requests) and all(chain.ok for chain in chained)
    return EXIT_OK if every and all(o.ok and o.error is None for o in outcomes) else EXIT_FAILED


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
            byte = line.object[line.start]
            problems.append(
                f"{path}:{number}: not UTF-8 text (byte 0x{byte:02x} at column "
                f"{line.start + 1}); save the file as UTF-8"
            )
            continue
        if not line.strip():
            continue
        try:
            value = json.loads(line)
            chain = chain_from_json(value)
            request = client.prepare_chain(chain) if chain else _prepared(client, value)
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
    if not requests and not problems:
        print(f"kling-async: warning: {path} holds no requests; nothing to send", file=sys.stderr)
    return requests


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
def _results_file(path: Path) -> Iterator[TextIO]:
    try:
        stream = path.open("w", encoding="utf-8")
    except OSError as exc:
        raise ConfigurationError(
            f"cannot write results to {path}: {exc.strerror or exc}; nothing was sent"
        ) from None
    with stream:
        yield stream


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


async def _fake_server(args: argparse.Namespace) -> int:
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


async def _demo(args: argparse.Namespace) -> int:
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
                    line = json.dumps(outcome_record(outcome))
                    if results is not None:
                        results.write(line + "\n")
                        results.flush()
                    if as_json:
                        print(line, flush=True)
            timer.cancel_scope.cancel()
    finally:
        progress.finish()  # once, and before an "interrupted" line
    if not as_json:
        print_summary(outcomes, sys.stdout)
    return outcomes
