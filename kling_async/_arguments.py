"""The ``kling-async`` command's arguments: each command, its options and its help.

The help is the command's reference (the documentation prints it as it is), so its words
are part of the interface.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, NoReturn

from . import __version__
from ._chain_cli import add_chain_command
from ._commands import (
    EXIT_USAGE,
    batch_command,
    chain_command,
    demo_command,
    extend_command,
    fake_server_command,
    status_command,
    watch_command,
)
from ._flags import COUNT, FRACTION, NATURAL, PORT, POSITIVE

__all__ = ["command_parser"]


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors in the command's one-line form."""

    def error(self, message: str) -> NoReturn:
        print(f"kling-async: error: {message} (see: {self.prog} --help)", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def command_parser() -> argparse.ArgumentParser:
    """The parser of ``kling-async`` and all its commands, each with its handler."""
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
    chain.set_defaults(handler=chain_command)
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
    command.set_defaults(handler=extend_command)


def _add_status(commands: Any) -> None:
    command = commands.add_parser(
        "status", parents=[_connection_options()], help="show a task's status"
    )
    command.add_argument("task_id", metavar="TASK_ID")
    command.set_defaults(handler=status_command)


def _add_watch(commands: Any) -> None:
    command = commands.add_parser(
        "watch",
        parents=[_connection_options(), _polling_options()],
        help="follow tasks until they end",
    )
    command.add_argument("task_ids", metavar="TASK_ID", nargs="+")
    command.set_defaults(handler=watch_command)


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
    command.set_defaults(handler=batch_command)


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
    command.set_defaults(handler=fake_server_command)


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
    command.set_defaults(handler=demo_command)
