"""Client overhead in instructions: what `get_task` costs the CPU beyond a raw aiohttp loop.

Requests per second on a shared machine drift from minute to minute; the number of
instructions the client process executes per request hardly moves (well under 1 % between
runs), so this is the figure to compare two versions of the library by. Each contender of
`overhead.py` except httpx (far too slow under the simulator) runs in a child process
under valgrind's callgrind tool with counting off; the child warms up, switches counting on
(``callgrind_control -i on``), makes its requests, and switches it off. The fake server runs
natively in its own process. Both states of `overhead.py`'s task are counted. Needs
valgrind; without it the script says so and exits 2.

    python benchmarks/instructions.py [--quick]
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _common import parse_args, print_table, write_results
from overhead import STATES, Fetch, check_state, contenders, task_server

CONTENDERS = ("aiohttp", "kling_async")
_COLLECTED = re.compile(r"Collected\s*:\s*(\d+)")
_TIMEOUT = 1800.0  # seconds for one contender under the simulator (a full one takes ~40)


@dataclass(frozen=True)
class Size:
    """How much work one run does."""

    requests: int
    concurrency: int
    warmup: int


FULL = Size(requests=4000, concurrency=16, warmup=500)
QUICK = Size(requests=100, concurrency=4, warmup=20)


async def _requests(fetch: Fetch, count: int, concurrency: int) -> None:
    """`count` requests by `concurrency` workers."""
    left = count

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            await fetch()

    async with asyncio.TaskGroup() as group:
        for _ in range(concurrency):
            group.create_task(worker())


def _count_instructions(on: bool) -> None:
    """Switch callgrind's counting in this process on or off."""
    flag = "on" if on else "off"
    command = ["callgrind_control", "-i", flag, str(os.getpid())]
    subprocess.run(command, check=True, capture_output=True, timeout=60)  # noqa: S603


async def _child(name: str, url: str, task_id: str, state: str, size: Size) -> None:
    """The process under callgrind: warm up uncounted, then count `size.requests`."""
    async with contenders(url, task_id) as fetchers:
        await check_state(fetchers, state)
        fetch = fetchers[name]
        await _requests(fetch, size.warmup, size.concurrency)
        _count_instructions(True)
        await _requests(fetch, size.requests, size.concurrency)
        _count_instructions(False)


def count(name: str, url: str, task_id: str, state: str, size: Size, scratch: Path) -> int:
    """Instructions the child for contender `name` executed while counting."""
    arguments = [name, url, task_id, state, str(size.requests), str(size.concurrency)]
    return callgrind_child(__file__, [*arguments, str(size.warmup)], scratch / f"{name}.callgrind")


def require_callgrind() -> None:
    """Exit with a word of why when valgrind's callgrind tool is not installed."""
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        print("valgrind is not installed: this benchmark needs its callgrind tool.")
        raise SystemExit(2)


def callgrind_child(script: str, arguments: list[str], out: Path) -> int:
    """Instructions `script --child *arguments` executed while counting, under callgrind
    (the child turns counting on and off around what it measures)."""
    command = [
        "valgrind",
        "--tool=callgrind",
        "--instr-atstart=no",
        f"--callgrind-out-file={out}",
        sys.executable,
        script,
        "--child",
        *arguments,
    ]
    done = subprocess.run(  # noqa: S603 - valgrind running a benchmark script
        command, capture_output=True, text=True, check=False, timeout=_TIMEOUT
    )
    found = _COLLECTED.search(done.stderr)
    if done.returncode != 0 or found is None:
        raise RuntimeError(f"{arguments[0]} under callgrind failed:\n{done.stderr[-2000:]}")
    return int(found.group(1))


def report(per_state: dict[str, dict[str, float]]) -> dict[str, Any]:
    """Print the table; return the figures for the JSON."""
    rows = []
    figures: dict[str, Any] = {}
    for state, per_request in per_state.items():
        base, ours = per_request["aiohttp"], per_request["kling_async"]
        rows += [[state, name, round(n), n / base] for name, n in per_request.items()]
        rows.append(["", "aiohttp/ours", f"{base / ours:.3f}", ""])
        figures[state] = {
            "instructions_per_request": per_request,
            "aiohttp_over_ours": base / ours,
            "extra_per_request": ours - base,
        }
    print_table(
        "Client instructions per request: GET one task + JSON decode",
        ["task state", "contender", "instructions/request", "vs aiohttp"],
        rows,
    )
    return figures


def main() -> None:
    """Count each contender's instructions; write ``results/instructions.json``."""
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        name, url, task_id, state, *numbers = sys.argv[2:]
        requests, concurrency, warmup = map(int, numbers)
        asyncio.run(_child(name, url, task_id, state, Size(requests, concurrency, warmup)))
        return
    args = parse_args(__doc__.splitlines()[0])
    require_callgrind()
    size = QUICK if args.quick else FULL
    per_state: dict[str, dict[str, float]] = {}
    for state in STATES:
        with tempfile.TemporaryDirectory() as folder, task_server(state) as (server, task_id):
            per_state[state] = {
                name: count(name, server.url, task_id, state, size, Path(folder)) / size.requests
                for name in CONTENDERS
            }
    figures = report(per_state)
    parameters = {"requests": size.requests, "concurrency": size.concurrency}
    path = write_results("instructions", args, parameters, figures)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
