"""One worker process of `coordination.py`: a client that joins a shared batch.

It opens its client (so it is connected to the database), says ``ready`` on stdout, waits for
a line on stdin (all workers start at once), runs the whole batch under the shared name, and
prints one JSON line: its outcomes and the statements it sent to the database.

    python benchmarks/_coordination_worker.py URL DATABASE_URL QUOTA TASKS NAME \
        FIRST_LOOK FLOOR CEILING
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

from kling_async import KlingClient, PollPolicy, VideoExtendRequest

API_KEY = "test-api-key"


def requests(count: int) -> list[VideoExtendRequest]:
    """The batch: `count` gateway extensions, each under its own key."""
    return [
        VideoExtendRequest(f"bench-video-{n}", task_id=f"bench-parent-{n}", key=f"row-{n}")
        for n in range(count)
    ]


async def work(
    url: str, database: str, quota: int, tasks: int, name: str, poll: PollPolicy
) -> None:
    """Join the batch `name` when told to; report what it cost."""
    client = KlingClient(
        api_key=API_KEY,
        base_url=url,
        dialect="gateway",
        database_url=database,
        parallel_tasks=quota,
        poll=poll,
    )
    async with client:
        coordination = client.coordination
        assert coordination is not None
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        before, periodic_before = coordination.round_trips, coordination.periodic_round_trips
        started = time.monotonic()
        ok = 0
        async for outcome in client.extend_many(requests(tasks), concurrency=quota, journal=name):
            ok += outcome.ok
        seconds = time.monotonic() - started
        report = {
            "outcomes_ok": ok,
            "round_trips": coordination.round_trips - before,
            "periodic_round_trips": coordination.periodic_round_trips - periodic_before,
            "seconds": seconds,
        }
    print(json.dumps(report), flush=True)


def main() -> None:
    """Entry point: ``python benchmarks/_coordination_worker.py URL DATABASE_URL ...``."""
    url, database, quota, tasks, name, initial, floor, ceiling = sys.argv[1:9]
    poll = PollPolicy(
        initial_delay=float(initial),
        min_interval=float(floor),
        max_interval=float(ceiling),
        timeout=600.0,
    )
    asyncio.run(work(url, database, int(quota), int(tasks), name, poll))


if __name__ == "__main__":
    main()
