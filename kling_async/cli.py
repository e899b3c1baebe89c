"""The ``kling-async`` command: a thin shell over the library.

It parses arguments, builds a client from flags and ``KLING_*`` variables, calls the
library and renders what comes back. Errors are one clear line on stderr and a non-zero exit
code, never a traceback; secrets are never printed.

This module runs a command and turns its failures into that line; the arguments are in
`_arguments`, what each command does in `_commands`, how results look in `_display`.
"""

from __future__ import annotations

import logging
import sys
import warnings
from collections.abc import Sequence
from typing import TextIO

import anyio

from ._arguments import command_parser
from ._commands import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    Handler,
    batch_command,
    chain_command,
    fail,
)
from .errors import (
    SETTING_NAMES,
    ConfigurationError,
    InvalidArgumentError,
    KlingError,
    SettingNames,
    sole_error,
)

__all__ = ["main"]

#: Settings named as a user of the command sets them.
CLI_SETTING_NAMES = SettingNames(
    api_key="KLING_API_KEY (or --api-key)",
    access_key="KLING_ACCESS_KEY (or --access-key)",
    secret_key="KLING_SECRET_KEY (or --secret-key)",  # noqa: S106 - a name, not a key
    base_url="KLING_BASE_URL (or --base-url)",
    dialect="KLING_DIALECT (or --dialect)",
    requests_per_second="--rate",
)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (0 only when everything succeeded)."""
    parser = command_parser()
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
        resumable = handler in (batch_command, chain_command)
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
        return fail(error, EXIT_USAGE)
    if isinstance(error, KlingError):
        return fail(error, EXIT_FAILED)
    if isinstance(error, OSError):
        where = f": {error.filename}" if error.filename else ""
        return fail(f"{error.strerror or error}{where}", EXIT_FAILED)
    raise error
