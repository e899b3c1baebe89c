"""Coordination on PostgreSQL: slot use, database round trips and the wait for a free slot.

W worker processes (1, 2, 4, 8) share one database, one account's quota of Q parallel tasks
(10 and 50) and one batch of 20 x Q requests, each worker running the whole batch under the
same name with a local concurrency of Q (as `kling-async batch` on W hosts would). The fake
server runs in this process, its parallel limit set to Q, every task taking the same time D;
the workers are child processes.

From the fake server's record:

- *slot utilisation*: mean tasks running on the server / Q, from the moment the quota is
  first full (the Q-th create) to the last create (while requests were still waiting for a
  slot); the ideal is 1. Time a slot loses between a task's end and the next create counts
  against it: the poll that notices the end (*detection*, mean ms), then the release in the
  database, the hand-over to a waiting process and its create (*hand-over*, the wait below).
  The batch's start, while the workers fill the quota for the first time, is a one-off cost
  a batch of 20 rounds would weigh twenty times more than one of 400: it is reported apart
  (*from first create*: the same mean from the first create, and *ramp-up*: seconds from
  the first create to the Q-th).
- *wait for a free slot*: the j-th create past the first Q needs j slots given back; its wait
  is its arrival minus the moment the j-th ended task was seen to end (the poll that saw
  it). The p50 and p99 of those waits.

From the workers: the statements each sent to the database (each one round trip), split
into those for the requests and the periodic ones (one statement a tick per process, to
renew its leases and look at the keys it waits for). Per request: all the workers'
statements over the number of requests; the target (<= 6) is on the statements for the
requests, the periodic ones being counted per process and second.

Needs a PostgreSQL server (``--database-url``, else ``KLING_DATABASE_URL``, else the local
one); each run uses a schema of its own, dropped afterwards.

    python benchmarks/coordination.py [--quick] [--database-url URL]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

from _common import (
    API_KEY,
    HERE,
    _child_env,
    parse_args,
    percentile,
    print_table,
    verdict,
    write_results,
)

from kling_async.testing import Durations, FakeKlingServer, RequestRecord

UTILISATION_TARGET = 0.95  # at 4 workers
ROUND_TRIPS_TARGET = 6.0  # per request, on the happy path
WORKER = HERE / "_coordination_worker.py"
DEFAULT_DATABASE = "postgresql://postgres@127.0.0.1/test"


@dataclass(frozen=True)
class Size:
    """How big each run is."""

    workers: tuple[int, ...]
    quotas: tuple[int, ...]
    rounds: int  # tasks per run = rounds x quota
    task_seconds: float  # wall seconds per task


FULL = Size(workers=(1, 2, 4, 8), quotas=(10, 50), rounds=20, task_seconds=2.0)
QUICK = Size(workers=(1, 2), quotas=(3,), rounds=4, task_seconds=0.3)
SERVICE_SECONDS = 60.0  # a task's duration on the server's clock; the speed scales it to D


def policy(task_seconds: float) -> list[str]:
    """The poll schedule, as the worker's arguments: first look at a sixth of the task,
    floor 1/30, ceiling 1/2 (the learned schedule then polls near the end)."""
    return [str(task_seconds / 6), str(task_seconds / 30), str(task_seconds / 2)]


@contextmanager
def fresh_schema(admin_url: str) -> Iterator[str]:
    """A database URL whose tables live in a new schema, dropped afterwards."""
    schema = f"kbench_{uuid.uuid4().hex[:12]}"
    asyncio.run(_admin(admin_url, f"CREATE SCHEMA {schema}"))
    separator = "&" if "?" in admin_url else "?"
    try:
        yield f"{admin_url}{separator}search_path={schema}"
    finally:
        asyncio.run(_admin(admin_url, f"DROP SCHEMA {schema} CASCADE"))


async def _admin(url: str, statement: str) -> None:
    import asyncpg

    connection = await asyncpg.connect(url, timeout=10)
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


async def run_case(database: str, workers: int, quota: int, size: Size) -> dict[str, Any]:
    """One run: the server here, `workers` worker processes; the figures of the run."""
    tasks = size.rounds * quota
    speed = SERVICE_SECONDS / size.task_seconds
    durations = Durations(submitted_for=SERVICE_SECONDS / 10, median=SERVICE_SECONDS, sigma=0)
    async with FakeKlingServer(
        api_key=API_KEY, speed=speed, durations=durations, max_concurrent=quota
    ) as server:
        command = [
            sys.executable, str(WORKER), server.url, database, str(quota), str(tasks),
            f"bench-{workers}-{quota}", *policy(size.task_seconds),
        ]  # fmt: skip
        processes = [
            await asyncio.create_subprocess_exec(
                *command,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                env=_child_env(),
            )
            for _ in range(workers)
        ]
        for process in processes:
            assert process.stdout is not None
            line = await process.stdout.readline()
            if line.strip() != b"ready":
                raise RuntimeError(f"a worker did not start: {line!r}")
        for process in processes:
            assert process.stdin is not None
            process.stdin.write(b"go\n")
            await process.stdin.drain()
        reports = []
        for process in processes:
            assert process.stdout is not None
            output = await process.stdout.read()
            if await process.wait() != 0:
                raise RuntimeError(f"a worker failed: {output[-2000:]!r}")
            reports.append(json.loads(output.decode().strip().splitlines()[-1]))
        record = list(server.record.requests)
        peak = server.record.peak_concurrent
        created = server.record.create_count
    return figures(record, reports, tasks, quota, size.task_seconds, peak, created)


def figures(
    record: list[RequestRecord],
    reports: list[dict[str, Any]],
    tasks: int,
    quota: int,
    task_seconds: float,
    peak: int,
    created: int,
) -> dict[str, Any]:
    """The run's figures from the server's record and the workers' reports."""
    creates = {r.task_id: r.at for r in record if r.method == "POST" and r.task_id}
    starts = sorted(creates.values())
    seen: dict[str, float] = {}
    for r in record:
        begun = creates.get(r.task_id or "")
        if r.method == "GET" and begun is not None and r.at >= begun + task_seconds:
            seen.setdefault(r.task_id or "", r.at)
    ends_seen = sorted(seen.values())
    first, full, last = starts[0], starts[min(quota, len(starts)) - 1], starts[-1]
    detections = [
        at - creates[task_id] - task_seconds
        for task_id, at in seen.items()
        if creates[task_id] + task_seconds < last
    ]
    handed = range(min(len(starts) - quota, len(ends_seen)))
    waits = [starts[quota + j] - ends_seen[j] for j in handed]
    statements = sum(r["round_trips"] for r in reports)
    periodic = sum(r["periodic_round_trips"] for r in reports)
    seconds = max(r["seconds"] for r in reports)
    rejected = sum(1 for r in record if r.method == "POST" and r.status == 429)
    return {
        "tasks": tasks,
        "created": created,
        "ok_per_worker": [r["outcomes_ok"] for r in reports],
        "peak_running": peak,
        "over_limit_answers": rejected,
        "ends_seen": len(ends_seen),
        "waits_below_zero": sum(wait < 0 for wait in waits),
        "utilisation": _utilisation(starts, task_seconds, quota, full, last),
        "utilisation_from_first_create": _utilisation(starts, task_seconds, quota, first, last),
        "ramp_up_seconds": full - first,
        "detection_mean_ms": _mean(detections) * 1000,
        "hand_over_mean_ms": _mean(waits) * 1000,
        "wait_p50_ms": percentile(waits, 0.5) * 1000,
        "wait_p99_ms": percentile(waits, 0.99) * 1000,
        "round_trips_per_request": statements / tasks,
        "request_round_trips_per_request": (statements - periodic) / tasks,
        "periodic_round_trips_per_process_second": periodic / len(reports) / seconds,
        "seconds": seconds,
    }


def _utilisation(
    starts: list[float], task_seconds: float, quota: int, since: float, until: float
) -> float:
    """Mean tasks running between `since` and `until`, over the quota."""
    if until <= since:
        return float("nan")
    busy = sum(
        max(0.0, min(start + task_seconds, until) - max(start, since))
        for start in starts
        if start < until
    )
    return busy / (quota * (until - since))


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def main() -> None:
    """Run every case and write ``results/coordination.json``."""

    def options(parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--database-url",
            default=os.environ.get("KLING_DATABASE_URL") or DEFAULT_DATABASE,
            help="a PostgreSQL server to use (a schema of its own per run)",
        )
        parser.add_argument("--workers", type=int, nargs="+", help="numbers of processes")
        parser.add_argument("--quotas", type=int, nargs="+", help="parallel-task quotas")
        parser.add_argument(
            "--repeat", type=int, default=3, help="runs of each case (the machine's noise)"
        )

    args = parse_args(__doc__.splitlines()[0], extra=options)
    size = QUICK if args.quick else FULL
    size = replace(
        size, workers=tuple(args.workers or size.workers), quotas=tuple(args.quotas or size.quotas)
    )
    runs: dict[str, dict[str, Any]] = {}
    rows = []
    repeat = 1 if args.quick else args.repeat
    for quota, workers, run in itertools.product(size.quotas, size.workers, range(repeat)):
        with fresh_schema(args.database_url) as database:
            result = asyncio.run(run_case(database, workers, quota, size))
        runs[f"{workers}x{quota}#{run + 1}"] = {"workers": workers, "quota": quota, **result}
        rows.append(
            [
                workers,
                quota,
                result["tasks"],
                result["utilisation"],
                result["utilisation_from_first_create"],
                result["ramp_up_seconds"],
                result["detection_mean_ms"],
                result["hand_over_mean_ms"],
                result["wait_p50_ms"],
                result["wait_p99_ms"],
                result["round_trips_per_request"],
                result["request_round_trips_per_request"],
                result["periodic_round_trips_per_process_second"],
                result["peak_running"],
            ]
        )
    headers = [
        "workers", "quota", "tasks", "utilisation", "from first create", "ramp-up s",
        "detection ms", "hand-over ms", "wait p50 ms", "wait p99 ms",
        "trips/req", "of which for requests", "periodic/proc/s", "peak",
    ]  # fmt: skip
    title = "Coordination on PostgreSQL: one account's quota shared by W processes"
    print_table(title, headers, rows)
    at_four = [r["utilisation"] for r in runs.values() if r["workers"] == 4]
    trips = [r["request_round_trips_per_request"] for r in runs.values()]
    results = {
        "runs": runs,
        "utilisation_target_met": bool(at_four) and min(at_four) >= UTILISATION_TARGET,
        "round_trips_target_met": max(trips) <= ROUND_TRIPS_TARGET,
    }
    if not args.quick:
        met = verdict(results["utilisation_target_met"])
        print(f"\nutilisation at 4 workers >= {UTILISATION_TARGET}: {met}")
        met = verdict(results["round_trips_target_met"])
        print(f"round trips for the requests, per request <= {ROUND_TRIPS_TARGET}: {met}")
    parameters = {
        "workers": list(size.workers),
        "quotas": list(size.quotas),
        "tasks_per_run": f"{size.rounds} x quota",
        "runs_per_case": repeat,
        "task_wall_seconds": size.task_seconds,
        "poll_policy": policy(size.task_seconds),
        "dialect": "gateway",
    }
    path = write_results("coordination", args, parameters, results)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
