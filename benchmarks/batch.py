"""Batch utilisation: wall time of `extend_many` over the ideal schedule.

N extensions at concurrency C against the fake server (a child process) whose tasks all
take the same time D (sigma 0, a scaled clock). A perfect batch keeps every slot busy, so
its wall time is ``ceil(N / C) * D``; the ratio wall / ideal is what a slot loses to
creating, polling and noticing the end late. The client polls with the adaptive schedule
and a small floor, so it learns D from the first tasks.

    python benchmarks/batch.py [--quick]
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

from _common import API_KEY, fake_server, parse_args, print_table, verdict, write_results

from kling_async import BatchEvent, BatchEventKind, KlingClient, PollPolicy, VideoExtendRequest

TARGET = 1.05
SPEED = 100.0  # service seconds per wall second
SERVICE_SECONDS = 60.0  # every task: one minute of service time, 0.6 s of wall time
SUBMITTED_FOR = 1.0
# The real service's default schedule (first look 10 s, floor 2 s, ceiling 30 s for
# two-minute tasks), scaled to these 0.6 s tasks.
POLICY = PollPolicy(initial_delay=0.1, min_interval=0.02, max_interval=0.3, timeout=60.0)


@dataclass(frozen=True)
class Size:
    """How big the batch is."""

    tasks: int
    concurrency: int


FULL = Size(tasks=2000, concurrency=50)
QUICK = Size(tasks=40, concurrency=10)


def requests(count: int) -> list[VideoExtendRequest]:
    """`count` gateway extension requests of distinct videos."""
    return [
        VideoExtendRequest(f"bench-video-{n}", task_id=f"bench-parent-{n}", prompt="keep going")
        for n in range(count)
    ]


async def run_batch(url: str, size: Size) -> dict[str, Any]:
    """Run the batch; its wall time and what happened on the way."""
    events: Counter[str] = Counter()

    def count(event: BatchEvent) -> None:
        events[event.kind.value] += 1

    async with KlingClient(api_key=API_KEY, base_url=url, dialect="gateway") as client:
        started = time.perf_counter()
        outcomes = [
            outcome
            async for outcome in client.extend_many(
                requests(size.tasks), concurrency=size.concurrency, poll=POLICY, on_event=count
            )
        ]
        wall = time.perf_counter() - started
    return {
        "wall_s": wall,
        "succeeded": sum(o.ok for o in outcomes),
        "failed": sum(not o.ok for o in outcomes),
        "retries": events[BatchEventKind.RETRIED.value],
    }


def main() -> None:
    """Run the benchmark and write ``results/batch.json``."""
    args = parse_args(__doc__.splitlines()[0])
    size = QUICK if args.quick else FULL
    duration = SERVICE_SECONDS / SPEED
    with fake_server(
        speed=SPEED,
        median=SERVICE_SECONDS,
        sigma=0,
        submitted_for=SUBMITTED_FOR,
        max_concurrent=size.concurrency,
    ) as server:
        measured = asyncio.run(run_batch(server.url, size))
    ideal = math.ceil(size.tasks / size.concurrency) * duration
    ratio = measured["wall_s"] / ideal
    served = server.final.get("requests", 0)
    polls = served - size.tasks - measured["retries"]
    results = {
        **measured,
        "ideal_s": ideal,
        "wall_over_ideal": ratio,
        "server_requests": served,
        "polls_per_task": polls / size.tasks,
        "target_met": ratio <= TARGET,
    }
    rows = [
        [
            size.tasks,
            size.concurrency,
            duration,
            ideal,
            measured["wall_s"],
            ratio,
            results["polls_per_task"],
            measured["retries"],
            verdict(ratio <= TARGET),
        ]
    ]
    headers = ["N", "C", "task s", "ideal s", "wall s", "wall/ideal", "polls/task", "retries"]
    print_table("Batch utilisation: extend_many", [*headers, f"<= {TARGET}"], rows)
    parameters = {
        "tasks": size.tasks,
        "concurrency": size.concurrency,
        "task_wall_seconds": duration,
        "speed": SPEED,
        "service_seconds": SERVICE_SECONDS,
        "submitted_for_service_seconds": SUBMITTED_FOR,
        "poll_policy": {
            "initial_delay": POLICY.initial_delay,
            "min_interval": POLICY.min_interval,
            "max_interval": POLICY.max_interval,
            "jitter": POLICY.jitter,
            "adaptive": POLICY.adaptive,
        },
        "server_max_concurrent": size.concurrency,
    }
    path = write_results("batch", args, parameters, results)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
