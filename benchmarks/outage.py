"""Outages: attempts per watcher while the API is down, against 1 + outage / retry cap.

N watchers follow tasks of the fake server when, a minute in, it starts answering every read
with 503 for T service seconds; the tasks end two minutes after the outage, so every watch
must recover and see its task succeed. The server runs in this process (the outage is
switched on and off from here) on a clock faster than the service's, and the client's
policies are the defaults scaled by the same factor, so every figure is in service seconds.
The factor is chosen per run so that the reads per wall second stay about the same whatever
the number of watchers: an event loop that lagged would stretch the client's waits and
flatter its figures.

Attempts per watcher are the reads the server saw during the outage, retries included; the
target is ``1 + T / RetryPolicy.max_delay``: one read as the outage starts, then one per
retry cap. Two poll schedules: the default `PollPolicy()` (nothing learned yet, so its
intervals have grown to 20-30 s by the outage) and a dense one (`max_interval=5`, as a
watcher polls near a task's expected end). The dense schedule also runs with the client as
it was before outages were handled ("before"): a watcher without a backoff of its own, whose
every failed poll spends a full burst of retries on its unchanged schedule, and no retry
budget (``capacity=inf``): the same-run baseline that shows what the handling saves.

    python benchmarks/outage.py [--quick]
"""

from __future__ import annotations

import asyncio
import logging
import math
import statistics
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import anyio
import attrs
from _common import API_KEY, parse_args, print_table, verdict, write_results
from polling import scaled

from kling_async import KlingClient, PollPolicy, RetryBudget, RetryPolicy, TaskStatus, TaskWatcher
from kling_async._clock import SystemClock
from kling_async.testing import Durations, FakeKlingServer, Fault, RequestRecord

LOAD = 1000.0  # watchers x speed: about 300 reads per wall second on the dense schedule
START = 60.0  # service seconds from the watches' start to the outage
AFTER = 120.0  # service seconds from the outage's end to every task's end
RETRY = RetryPolicy()
SCHEDULES = {"default": PollPolicy(), "dense": PollPolicy(max_interval=5.0)}
BUDGETS = {"ours": RetryBudget(), "before": RetryBudget(capacity=math.inf)}
OUTAGE = Fault.http_error(503, 5001, "service unavailable")


@dataclass(frozen=True)
class Case:
    """One run: how many watchers, how long an outage, which schedule, which client."""

    watchers: int
    outage: float
    schedule: str
    client: str

    @property
    def speed(self) -> float:
        """Service seconds per wall second for this run."""
        return min(100.0, LOAD / self.watchers)

    @property
    def target(self) -> float:
        """Attempts per watcher the outage warrants."""
        return 1.0 + self.outage / RETRY.max_delay


FULL = [
    Case(n, t, schedule, client)
    for n in (1, 10, 100)
    for t in (60.0, 300.0)
    for schedule, client in (("dense", "ours"), ("dense", "before"), ("default", "ours"))
]
QUICK = [Case(5, 60.0, "dense", client) for client in BUDGETS]


def scaled_retry(policy: RetryPolicy, factor: float) -> RetryPolicy:
    """`policy` with every duration divided by `factor` (for a server that much faster)."""
    return attrs.evolve(
        policy,
        base_delay=policy.base_delay / factor,
        max_delay=policy.max_delay / factor,
        rate_limit_floor=policy.rate_limit_floor / factor,
        max_retry_after=policy.max_retry_after / factor,
        lookup_grace=policy.lookup_grace / factor,
    )


async def run_case(case: Case) -> dict[str, Any]:
    """Watch `case.watchers` tasks through one outage; the figures of the run."""
    speed = case.speed
    lasting = START + case.outage + AFTER
    durations = Durations(submitted_for=5.0, median=lasting, sigma=0.0)
    window: list[float] = []
    finished: list[TaskStatus] = []
    async with FakeKlingServer(api_key=API_KEY, speed=speed, durations=durations) as server:
        client = KlingClient(
            api_key=API_KEY,
            base_url=server.url,
            dialect="gateway",
            retry=scaled_retry(RETRY, speed),
            poll=scaled(SCHEDULES[case.schedule], speed),
            retry_budget=BUDGETS[case.client],
        )
        async with client:
            tasks = [
                await client.extend_video(f"video-{n}", task_id=f"parent-{n}")
                for n in range(case.watchers)
            ]

            async def watch(task_id: str) -> None:
                if case.client == "ours":
                    watcher = client.watch(task_id)
                else:  # no backoff of its own: every read spends the client's retries
                    watcher = TaskWatcher(client, task_id, policy=client.poll, clock=SystemClock())
                finished.append((await watcher).status)

            async def outage() -> None:
                await anyio.sleep(START / speed)
                server.faults.rate(OUTAGE, 1.0, method="GET")
                window.append(time.monotonic())
                await anyio.sleep(case.outage / speed)
                server.faults.clear()
                window.append(time.monotonic())

            async with anyio.create_task_group() as group:
                group.start_soon(outage)
                for task in tasks:
                    group.start_soon(watch, task.id)
        reads = [r for r in server.record.requests if r.method == "GET"]
    return figures(case, reads, [task.id for task in tasks], window, finished)


def figures(
    case: Case,
    reads: list[RequestRecord],
    ids: list[str],
    window: list[float],
    finished: list[TaskStatus],
) -> dict[str, Any]:
    """Attempts per watcher during the outage, and how soon each watcher saw its end."""
    began, ended = window
    during = Counter(r.path.rsplit("/", 1)[-1] for r in reads if began <= r.at < ended)
    attempts = [during[task_id] for task_id in ids]
    recovered: dict[str, float] = {}
    for record in reads:
        task_id = record.path.rsplit("/", 1)[-1]
        if record.at >= ended and record.status == 200 and task_id not in recovered:
            recovered[task_id] = (record.at - ended) * case.speed
    mean = statistics.fmean(attempts)
    return {
        "watchers": case.watchers,
        "outage_s": case.outage,
        "schedule": case.schedule,
        "client": case.client,
        "speed": case.speed,
        "target": case.target,
        "attempts_mean": mean,
        "attempts_max": max(attempts),
        "mean_over_target": mean / case.target,
        "recovered": sum(status is TaskStatus.SUCCEED for status in finished),
        "recovery_mean_s": statistics.fmean(recovered.values()) if recovered else math.nan,
        "recovery_max_s": max(recovered.values(), default=math.nan),
    }


async def run_all(cases: list[Case]) -> list[dict[str, Any]]:
    """Every case in turn, each on a fresh server and client."""
    return [await run_case(case) for case in cases]


def with_baseline(runs: list[dict[str, Any]]) -> None:
    """Add each run's ratio to the "before" run of its size, and its verdict."""
    before = {
        (r["watchers"], r["outage_s"]): r["attempts_mean"] for r in runs if r["client"] == "before"
    }
    for run in runs:
        baseline = before.get((run["watchers"], run["outage_s"]))
        run["over_before"] = run["attempts_mean"] / baseline if baseline else math.nan
        run["target_met"] = (
            run["attempts_mean"] <= run["target"] and run["recovered"] == run["watchers"]
        )


def main() -> None:
    """Run the benchmark and write ``results/outage.json``."""
    args = parse_args(__doc__.splitlines()[0])
    logging.getLogger("kling_async").setLevel(logging.ERROR)  # thousands of failed reads
    runs = asyncio.run(run_all(QUICK if args.quick else FULL))
    with_baseline(runs)
    rows = [
        [
            r["watchers"],
            r["outage_s"],
            r["schedule"],
            r["client"],
            r["attempts_mean"],
            r["attempts_max"],
            r["target"],
            r["mean_over_target"],
            r["over_before"],
            f"{r['recovered']}/{r['watchers']}",
            r["recovery_max_s"],
            verdict(r["target_met"]),
        ]
        for r in runs
    ]
    headers = ["N", "outage s", "schedule", "client", "attempts/watcher", "max", "target"]
    headers += ["mean/target", "/before", "recovered", "recovery max s", "<= target"]
    print_table("Reads per watcher during an outage (service seconds)", headers, rows)
    parameters = {
        "load_watchers_x_speed": LOAD,
        "outage_starts_s": START,
        "tasks_end_after_outage_s": AFTER,
        "retry_policy": attrs.asdict(RETRY),
        "retry_budget": attrs.asdict(BUDGETS["ours"]),
        "schedules": {name: attrs.asdict(policy) for name, policy in SCHEDULES.items()},
        "fault": "HTTP 503, code 5001, on every read",
    }
    path = write_results("outage", args, parameters, {"runs": runs})
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
