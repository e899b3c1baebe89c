"""What every benchmark shares: the fake server's process, tables, statistics and results.

The server always runs in a child process (`serve_fake.py`), so the client under test has
its event loop and its CPU to itself. Results go to ``benchmarks/results/<name>.json`` with
the machine they were measured on; ``--quick`` (the smoke size) writes
``<name>.quick.json`` instead, so a smoke run never overwrites the published figures.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import os
import platform
import resource
import select
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import IO, Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
SERVE_FAKE = HERE / "serve_fake.py"
API_KEY = "test-api-key"


def parse_args(
    description: str,
    argv: Sequence[str] | None = None,
    extra: Callable[[argparse.ArgumentParser], None] | None = None,
) -> argparse.Namespace:
    """The options every benchmark takes, ``--quick`` and ``--out``, and any `extra` ones."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for the smoke test")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for the JSON result")
    if extra is not None:
        extra(parser)
    return parser.parse_args(argv)


@dataclass
class FakeServer:
    """A `serve_fake.py` child process and what it announced."""

    process: subprocess.Popen[str]
    url: str
    announced: dict[str, Any]
    final: dict[str, Any] = field(default_factory=dict)


def _read_line(stream: IO[str], timeout: float) -> str:
    """One line from a child's stdout, or TimeoutError when none comes in time."""
    ready, _, _ = select.select([stream], [], [], timeout)
    if not ready:
        raise TimeoutError(f"the fake server said nothing within {timeout:g} s")
    return stream.readline()


def _server_command(options: Mapping[str, object]) -> list[str]:
    command = [sys.executable, str(SERVE_FAKE)]
    for name, value in options.items():
        if value is not None:
            command += [f"--{name.replace('_', '-')}", str(value)]
    return command


def _child_env() -> dict[str, str]:
    """The environment of the server: it must import this tree's kling_async, as we do."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


@contextlib.contextmanager
def fake_server(*, start_timeout: float = 60.0, **options: object) -> Iterator[FakeServer]:
    """Run the fake server in a child process for the length of the ``with`` block.

    Keyword options are `serve_fake.py`'s (``speed=100`` becomes ``--speed 100``). On exit
    the child's stdin is closed, which stops it; its last line (requests served) lands in
    `FakeServer.final`.
    """
    with child_server(_server_command(options), start_timeout=start_timeout) as server:
        yield server


@contextlib.contextmanager
def child_server(command: Sequence[str], *, start_timeout: float = 60.0) -> Iterator[FakeServer]:
    """Run a server `command` in a child process that announces itself on stdout.

    The child prints one JSON line with its ``url`` once it accepts requests, serves until
    its stdin closes, then may print a last JSON line (kept in `FakeServer.final`).
    """
    process = subprocess.Popen(  # noqa: S603 - this interpreter, our own script
        list(command),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=_child_env(),
    )
    assert process.stdin is not None
    assert process.stdout is not None
    try:
        line = _read_line(process.stdout, start_timeout)
        if not line:
            raise RuntimeError(f"the server exited early with code {process.wait()}")
        announced = json.loads(line)
        server = FakeServer(process, announced["url"], announced)
        yield server
        process.stdin.close()
        with contextlib.suppress(TimeoutError, ValueError):
            server.final = json.loads(_read_line(process.stdout, 10.0) or "{}")
    finally:
        _stop(process)


def _stop(process: subprocess.Popen[str]) -> None:
    """End the child: politely (stdin closed), then by SIGTERM, then by SIGKILL."""
    if process.stdin is not None and not process.stdin.closed:
        process.stdin.close()
    for ending in (None, process.terminate, process.kill):
        if ending is not None:
            ending()
        try:
            process.wait(timeout=10.0)
        except subprocess.TimeoutExpired:
            continue
        break
    if process.stdout is not None:
        process.stdout.close()


def percentile(values: Sequence[float], share: float) -> float:
    """The `share` quantile (0..1) of `values`, interpolated linearly; NaN when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    position = share * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def cpu_seconds() -> float:
    """User plus system CPU time of this process so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def memory_kib(field_name: str = "VmRSS") -> int:
    """A memory figure of this process from /proc (``VmRSS`` now, ``VmHWM`` its peak), KiB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    raise LookupError(f"{field_name} is not in /proc/self/status")


def _package_version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def _git_commit() -> str | None:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        done = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],  # noqa: S607 - git from PATH, read-only
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        return done.stdout.strip() or None
    return None


def machine_info() -> dict[str, Any]:
    """Where and when the figures were measured."""
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "aiohttp": _package_version("aiohttp"),
        "httpx": _package_version("httpx"),
        "git_commit": _git_commit(),
    }


def write_results(
    name: str, args: argparse.Namespace, parameters: Mapping[str, Any], results: Any
) -> Path:
    """Write ``<out>/<name>.json`` (``.quick.json`` for a quick run); return its path."""
    folder: Path = args.out
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / (f"{name}.quick.json" if args.quick else f"{name}.json")
    payload = {
        "benchmark": name,
        "quick": bool(args.quick),
        "machine": machine_info(),
        "parameters": dict(parameters),
        "results": _finite(results),
    }
    path.write_text(json.dumps(payload, indent=2, allow_nan=False) + "\n")
    return path


def _finite(value: Any) -> Any:
    """`value` with NaN and infinities replaced by None: JSON has no spelling for them."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value


def print_table(title: str, headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """A plain aligned table on stdout: first column left-aligned, the others right."""
    cells = [[str(h) for h in headers], *[[_cell(value) for value in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        first, *rest = (
            row[i].ljust(w) if i == 0 else row[i].rjust(w) for i, w in enumerate(widths)
        )
        return "  ".join([first, *rest]).rstrip()

    print(f"\n{title}")
    print(line(cells[0]))
    print("  ".join("-" * w for w in widths))
    for row in cells[1:]:
        print(line(row))


def _cell(value: object) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        return f"{value:,.3f}" if abs(value) < 100 else f"{value:,.0f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def verdict(met: bool | None) -> str:
    """How a target reads in a table."""
    if met is None:
        return "not measured"
    return "met" if met else "MISSED"


class Stopwatch:
    """Wall and CPU seconds between `start` and `stop` (both taken together)."""

    def __init__(self) -> None:
        self.wall = 0.0
        self.cpu = 0.0
        self._wall0 = 0.0
        self._cpu0 = 0.0

    def start(self) -> None:
        """Begin measuring."""
        self._wall0, self._cpu0 = time.perf_counter(), cpu_seconds()

    def stop(self) -> None:
        """End measuring; `wall` and `cpu` hold the spans."""
        self.wall = time.perf_counter() - self._wall0
        self.cpu = cpu_seconds() - self._cpu0
