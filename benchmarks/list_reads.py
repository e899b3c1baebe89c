"""One read for many tasks: status requests per task and detection delay, per-task polling
against list-based reads, with 1, 50 and 500 tasks in flight (official API).

The fake server runs in its own process (official dialect, log-normal durations of median
120 s, sigma 0.35, on a clock `SPEED` times faster). Before each measured run another
client of the account makes `OTHERS` tasks, which stay on the list pages among ours. Each
contender is a fresh `KlingClient` with the default `PollPolicy` scaled to the server's
speed; it first watches a warm-up batch to learn durations (not counted), then extends
and watches the measured tasks in waves of N in flight. Status requests (single GETs and
list pages) are counted on the client's session; detection delay is the time from a
task's end (the server's timestamp) to its watcher's return, in service seconds.

    python benchmarks/list_reads.py [--quick]
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import aiohttp
import anyio
from _common import (
    API_KEY,
    fake_server,
    parse_args,
    percentile,
    print_table,
    verdict,
    write_results,
)
from polling import scaled

from kling_async import KlingClient, PollPolicy, Task, TaskFailedError

MEDIAN = 120.0
SIGMA = 0.35
SUBMITTED_FOR = 5.0
SEED = 20240611
STATUS_PATH = "/v1/videos/video-extend"
TARGET_AT_MOST = 0.10  # list-based status requests / per-task ones, at the largest N


@dataclass(frozen=True)
class Size:
    """What is measured: tasks in flight, how many of them in all, the server's speed."""

    in_flight: tuple[int, ...]
    tasks_at_least: int
    warmup: int
    others: int
    speed: float


FULL = Size(in_flight=(1, 50, 500), tasks_at_least=6, warmup=10, others=200, speed=10.0)
QUICK = Size(in_flight=(1, 5, 20), tasks_at_least=2, warmup=6, others=10, speed=200.0)


class StatusCounter:
    """Counts the status requests a session sends (single GETs and list pages)."""

    def __init__(self) -> None:
        self.singles = 0
        self.pages = 0

    def trace(self) -> aiohttp.TraceConfig:
        """A trace config that feeds this counter."""
        config = aiohttp.TraceConfig()
        config.on_request_start.append(self._started)
        return config

    async def _started(
        self, _: aiohttp.ClientSession, __: SimpleNamespace, sent: aiohttp.TraceRequestStartParams
    ) -> None:
        if sent.method != "GET" or STATUS_PATH not in sent.url.path:
            return
        if sent.url.path.endswith(STATUS_PATH):
            self.pages += 1
        else:
            self.singles += 1


async def _wave(client: KlingClient, count: int, label: str, speed: float) -> list[float]:
    """Extend and watch `count` videos at once; each one's detection delay (service s)."""
    delays: list[float] = []

    async def one(number: int) -> None:
        task = await client.extend_video(f"{label}-{number}")
        watcher = client.watch(task)
        with contextlib.suppress(TaskFailedError):
            await watcher
        noticed = time.time()
        last: Task | None = watcher.last
        if last is None or last.updated_at is None:
            raise RuntimeError(f"task {task.id} ended without a timestamp")
        delays.append((noticed - last.updated_at.timestamp()) * speed)

    async with anyio.create_task_group() as group:
        for number in range(count):
            group.start_soon(one, number)
    return delays


async def contend(url: str, size: Size, in_flight: int, *, list_reads: bool) -> dict[str, Any]:
    """One contender at `in_flight` tasks: status requests per task and detection delays."""
    counter = StatusCounter()
    policy = scaled(PollPolicy(), size.speed)
    async with aiohttp.ClientSession(trace_configs=[counter.trace()]) as session:
        options = {"api_key": API_KEY, "base_url": url, "dialect": "official"}
        async with KlingClient(**options, list_reads=False, session=session) as other:
            for number in range(size.others):  # another client of the account
                await other.extend_video(f"other-{number}")
        async with KlingClient(
            **options, poll=policy, list_reads=list_reads, session=session
        ) as client:
            client._rng.seed(SEED)  # both contenders jitter alike
            await _wave(client, size.warmup, "warmup", size.speed)
            counter.singles = counter.pages = 0
            delays: list[float] = []
            waves = max(1, -(-size.tasks_at_least // in_flight))
            for wave in range(waves):
                delays += await _wave(client, in_flight, f"w{wave}", size.speed)
    requests = counter.singles + counter.pages
    return {
        "tasks": len(delays),
        "status_requests": requests,
        "single_reads": counter.singles,
        "list_pages": counter.pages,
        "requests_per_task": requests / len(delays),
        "delay_mean_s": statistics.fmean(delays),
        "delay_p95_s": percentile(delays, 0.95),
    }


def measure(size: Size) -> dict[str, dict[str, Any]]:
    """Both contenders at every number in flight, each on a fresh fake server."""
    runs: dict[str, dict[str, Any]] = {}
    for in_flight in size.in_flight:
        for list_reads in (False, True):
            with fake_server(
                dialect="official",
                speed=size.speed,
                median=MEDIAN,
                sigma=SIGMA,
                submitted_for=SUBMITTED_FOR,
                seed=SEED,
            ) as server:
                name = f"{in_flight} in flight, {'list-based' if list_reads else 'per-task'}"
                runs[name] = asyncio.run(
                    contend(server.url, size, in_flight, list_reads=list_reads)
                )
                runs[name]["in_flight"] = in_flight
                runs[name]["list_reads"] = list_reads
    return runs


def ratios(runs: dict[str, dict[str, Any]], size: Size) -> dict[str, dict[str, float]]:
    """List-based over per-task, at each number in flight: requests and mean delay."""
    found = {}
    for in_flight in size.in_flight:
        per_task = runs[f"{in_flight} in flight, per-task"]
        listed = runs[f"{in_flight} in flight, list-based"]
        found[str(in_flight)] = {
            "requests": listed["requests_per_task"] / per_task["requests_per_task"],
            "delay_mean": listed["delay_mean_s"] / per_task["delay_mean_s"],
        }
    return found


def targets(found: dict[str, dict[str, float]], size: Size) -> dict[str, bool]:
    """At the most in flight <= 0.1x the requests at no worse mean delay; at 1, no more."""
    most, one = found[str(max(size.in_flight))], found[str(min(size.in_flight))]
    return {
        f"{max(size.in_flight)} in flight: <= {TARGET_AT_MOST}x the status requests": most[
            "requests"
        ]
        <= TARGET_AT_MOST,
        f"{max(size.in_flight)} in flight: mean delay no worse": most["delay_mean"] <= 1.0,
        f"{min(size.in_flight)} in flight: no more requests than per-task": one["requests"] <= 1.0,
    }


def main() -> None:
    """Run both contenders and write ``results/list_reads.json``."""
    args = parse_args(__doc__.splitlines()[0])
    size = QUICK if args.quick else FULL
    runs = measure(size)
    found = ratios(runs, size)
    met = targets(found, size)
    headers = ["run", "tasks", "status req/task", "pages", "single GETs", "mean delay s", "p95 s"]
    table = [
        [
            name,
            r["tasks"],
            r["requests_per_task"],
            r["list_pages"],
            r["single_reads"],
            r["delay_mean_s"],
            r["delay_p95_s"],
        ]
        for name, r in runs.items()
    ]
    print_table(
        f"Status requests with many tasks in flight (official API, {size.speed:g}x clock, "
        f"{size.others} tasks of another client on the list)",
        headers,
        table,
    )
    print()
    for in_flight, ratio in found.items():
        print(
            f"{in_flight} in flight, list-based / per-task: requests {ratio['requests']:.3f}, "
            f"mean delay {ratio['delay_mean']:.3f}"
        )
    for name, ok in met.items():
        print(f"{name}: {verdict(ok)}")
    parameters = {
        "in_flight": list(size.in_flight),
        "tasks_at_least": size.tasks_at_least,
        "warmup_tasks": size.warmup,
        "other_client_tasks": size.others,
        "speed": size.speed,
        "median_s": MEDIAN,
        "sigma": SIGMA,
        "seed": SEED,
    }
    results = {"runs": runs, "ratios": found, "targets": met}
    path = write_results("list_reads", args, parameters, results)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
