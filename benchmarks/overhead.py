"""Client overhead: requests per second of `KlingClient.get_task` vs hand-written loops.

Three contenders GET the same task from the same fake server (a child process) and decode
its JSON: a raw aiohttp loop on one `ClientSession`, a raw httpx loop on one `AsyncClient`,
and `KlingClient.get_task` (no rate limit, a plain `RetryPolicy`). Each keeps its own
session's default connection limit (100 for all three). At each concurrency the three run
in interleaved rounds (aiohttp, httpx, ours, aiohttp, ...) after a warm-up; the median
round of each is reported, with the client process's CPU time per request, which shows
overhead even where the server is the bottleneck. The target is judged on the median of
the round-by-round ratios ("paired"): the rounds of one turn run back to back, so a drift
of the machine's load between turns cancels out of them, while it can move the ratio of
the two medians (printed beside it) by several percent.

The task stays in one state for the whole run: ``processing`` by default (what a watcher
reads on all but its last poll), or ``--state succeeded`` (a result video with its
duration modelled too; written to ``overhead-succeeded.json``).

    python benchmarks/overhead.py [--quick] [--state succeeded]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import statistics
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import httpx
from _common import (
    API_KEY,
    FakeServer,
    Stopwatch,
    fake_server,
    parse_args,
    percentile,
    print_table,
    verdict,
    write_results,
)

from kling_async import KlingClient, RetryPolicy, TaskStatus

TARGET_RATIO = 0.95
CONCURRENCIES = (1, 16, 256)
Fetch = Callable[[], Awaitable[Any]]


@dataclass(frozen=True)
class TaskState:
    """A state the one task fetched stays in for the whole run, and the server options that
    hold it there (``submitted_for``, ``median`` and ``sigma`` in service seconds)."""

    status: TaskStatus
    server: dict[str, float]


STATES = {
    # What a watcher reads on all but its last poll.
    "processing": TaskState(TaskStatus.PROCESSING, {"submitted_for": 0, "median": 1e9, "sigma": 0}),
    # A result video (with its decimal duration) modelled too; no external id or message.
    "succeeded": TaskState(TaskStatus.SUCCEED, {"submitted_for": 0, "median": 1e-3, "sigma": 0}),
}


@dataclass(frozen=True)
class Size:
    """How much work one run does."""

    round_seconds: float
    rounds: int
    warmup_seconds: float


FULL = Size(round_seconds=0.5, rounds=25, warmup_seconds=1.0)
QUICK = Size(round_seconds=0.1, rounds=1, warmup_seconds=0.02)


@dataclass
class Rounds:
    """The rounds one contender ran at one concurrency."""

    rps: list[float] = field(default_factory=list)
    cpu_us: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """Median requests per second and client CPU microseconds per request."""
        return {
            "rps_median": statistics.median(self.rps),
            "rps_rounds": [round(r, 1) for r in self.rps],
            "cpu_us_per_request": statistics.median(self.cpu_us),
        }


def _check(data: Any) -> None:
    if not isinstance(data, dict) or data.get("code") != 0:
        raise RuntimeError(f"unexpected answer: {data!r}")


async def run_round(fetch: Fetch, concurrency: int, seconds: float) -> tuple[float, float]:
    """`concurrency` workers fetch for `seconds`; requests per second and CPU us per request.

    Workers start no request after the deadline and finish the one they are in, so the
    round's span covers every counted request; each makes at least one, so a round on a
    loaded machine still measures something.
    """
    deadline = time.perf_counter() + seconds
    done = 0

    async def worker() -> None:
        nonlocal done
        while True:
            await fetch()
            done += 1
            if time.perf_counter() >= deadline:
                return

    watch = Stopwatch()
    watch.start()
    async with asyncio.TaskGroup() as group:
        for _ in range(concurrency):
            group.create_task(worker())
    watch.stop()
    return done / watch.wall, watch.cpu / done * 1e6


def rotated(names: list[str], turn: int) -> list[str]:
    """`names` starting at position `turn`: each contender takes each place in turn."""
    shift = turn % len(names)
    return names[shift:] + names[:shift]


async def measure(contenders: dict[str, Fetch], size: Size) -> dict[str, dict[str, Any]]:
    """Every concurrency, every contender, interleaved rounds; summaries by concurrency.

    The order within a round rotates, so no contender always follows the same one (the
    server's state after a round, e.g. its garbage, would otherwise favour somebody).
    """
    results: dict[str, dict[str, Any]] = {}
    for concurrency in CONCURRENCIES:
        rounds = await interleaved(contenders, concurrency, size)
        results[str(concurrency)] = {name: r.summary() for name, r in rounds.items()}
        results[str(concurrency)]["paired_ours_over_aiohttp"] = paired(
            rounds["kling_async"].rps, rounds["aiohttp"].rps
        )
    return results


async def interleaved(
    contenders: dict[str, Fetch], concurrency: int, size: Size
) -> dict[str, Rounds]:
    """A warm-up, then `size.rounds` turns of one round per contender in rotating order."""
    rounds = {name: Rounds() for name in contenders}
    for fetch in contenders.values():
        await run_round(fetch, concurrency, size.warmup_seconds)
    for turn in range(size.rounds):
        for name in rotated(list(contenders), turn):
            rps, cpu = await run_round(contenders[name], concurrency, size.round_seconds)
            rounds[name].rps.append(rps)
            rounds[name].cpu_us.append(cpu)
    return rounds


def paired(ours: list[float], base: list[float]) -> dict[str, float]:
    """Round-by-round ratios (rounds of one turn ran back to back): median and quartiles."""
    ratios = [a / b for a, b in zip(ours, base, strict=True)]
    return {
        "median": statistics.median(ratios),
        "q1": percentile(ratios, 0.25),
        "q3": percentile(ratios, 0.75),
    }


@contextlib.asynccontextmanager
async def contenders(url: str, task_id: str) -> AsyncIterator[dict[str, Fetch]]:
    """The three contenders, each on its own open client, fetching `task_id` from `url`."""
    path = f"/kling/v1/videos/video-extend/{task_id}"
    headers = {"Authorization": f"Bearer {API_KEY}", "Accept": "application/json"}
    async with (
        aiohttp.ClientSession() as session,
        httpx.AsyncClient() as hclient,
        KlingClient(
            api_key=API_KEY,
            base_url=url,
            dialect="gateway",
            requests_per_second=None,
            retry=RetryPolicy(),
        ) as ours,
    ):

        async def raw_aiohttp() -> None:
            async with session.get(url + path, headers=headers) as response:
                _check(json.loads(await response.read()))

        async def raw_httpx() -> None:
            response = await hclient.get(url + path, headers=headers)
            _check(json.loads(response.content))

        # Each contender is one call that returns the awaitable doing the request: ours is
        # `get_task` itself, not a coroutine wrapped around it (a layer the others lack).
        yield {
            "aiohttp": raw_aiohttp,
            "httpx": raw_httpx,
            "kling_async": functools.partial(ours.get_task, task_id),
        }


@contextlib.contextmanager
def task_server(state: str) -> Iterator[tuple[FakeServer, str]]:
    """A fake server (a child process) holding one task in `state`; it and the task's id."""
    with tempfile.TemporaryDirectory() as scratch:
        ids_file = Path(scratch) / "ids.txt"
        with fake_server(create=1, ids_file=ids_file, **STATES[state].server) as server:
            yield server, ids_file.read_text().split()[0]


async def check_state(fetchers: dict[str, Fetch], state: str) -> None:
    """Refuse to measure a task that is not in `state` (it failed, say)."""
    task = await fetchers["kling_async"]()
    if task.status is not STATES[state].status:
        raise RuntimeError(f"the benchmark's task is {task.status.value}, not {state}")


async def run_all(url: str, task_id: str, state: str, size: Size) -> dict[str, dict[str, Any]]:
    """Open the three clients, check the task's state, measure, close them."""
    async with contenders(url, task_id) as fetchers:
        await check_state(fetchers, state)
        return await measure(fetchers, size)


def add_state_option(parser: argparse.ArgumentParser) -> None:
    """``--state``: which state of the task to fetch."""
    parser.add_argument(
        "--state", choices=sorted(STATES), default="processing", help="the task's state"
    )


def report(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Print the table; return the ratios and whether the target holds at each concurrency."""
    rows = []
    verdicts: dict[str, Any] = {}
    for concurrency, measured in results.items():
        by_name = {k: v for k, v in measured.items() if k != "paired_ours_over_aiohttp"}
        pair = measured["paired_ours_over_aiohttp"]
        base = by_name["aiohttp"]
        ratio = by_name["kling_async"]["rps_median"] / base["rps_median"]
        httpx_ratio = by_name["httpx"]["rps_median"] / base["rps_median"]
        cpu_ratio = by_name["kling_async"]["cpu_us_per_request"] / base["cpu_us_per_request"]
        verdicts[concurrency] = {
            "ours_over_aiohttp": ratio,
            "httpx_over_aiohttp": httpx_ratio,
            "cpu_ours_over_aiohttp": cpu_ratio,
            "paired_median": pair["median"],
            "target_met": pair["median"] >= TARGET_RATIO,
        }
        for name, summary in by_name.items():
            rows.append(
                [
                    concurrency,
                    name,
                    summary["rps_median"],
                    summary["cpu_us_per_request"],
                    summary["rps_median"] / base["rps_median"],
                ]
            )
        spread = f"paired {pair['median']:.2f} [{pair['q1']:.2f}, {pair['q3']:.2f}]"
        met = verdict(pair["median"] >= TARGET_RATIO)
        rows.append(["", "ours/aiohttp", spread, "", f"paired >= {TARGET_RATIO}: {met}"])
    headers = ["concurrency", "contender", "req/s (median)", "client CPU us/req", "vs aiohttp"]
    print_table("Client overhead: GET one task + JSON decode", headers, rows)
    return verdicts


def main() -> None:
    """Run the benchmark and write ``results/overhead.json``."""
    args = parse_args(__doc__.splitlines()[0], extra=add_state_option)
    size = QUICK if args.quick else FULL
    with task_server(args.state) as (server, task_id):
        results = asyncio.run(run_all(server.url, task_id, args.state, size))
    verdicts = report(results)
    parameters = {
        "task_state": args.state,
        "concurrencies": list(CONCURRENCIES),
        "round_seconds": size.round_seconds,
        "rounds": size.rounds,
        "warmup_seconds": size.warmup_seconds,
        "target_ours_over_aiohttp": TARGET_RATIO,
        "server_requests": server.final.get("requests"),
    }
    name = "overhead" if args.state == "processing" else f"overhead-{args.state}"
    path = write_results(name, args, parameters, {"by_concurrency": results, "ratios": verdicts})
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
