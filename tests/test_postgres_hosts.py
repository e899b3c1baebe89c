"""The command line on several hosts: four `kling-async batch` processes share one database,
one account's quota of 10 and a batch of 600, while one of them is killed again and again.

Hosts are processes here; the fake server (parallel limit 10, 5 % of reads failing with a
5xx) runs in the test. Kills are paced by the fake's record, not by a clock: each time
another hundred tasks were created, a host that holds running work is SIGKILLed and started
again.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import anyio
import asyncpg
import pytest
from anyio.abc import Process

from kling_async.testing import Durations, FakeKlingServer, Fault

pytestmark = pytest.mark.anyio

KEY = "test-api-key"
REQUESTS = 600
QUOTA = 10
HOSTS = 4
KILLS = 5
# About a fifth of a second per task: 600 tasks at 10 at a time take some 15 seconds.
DURATIONS = Durations(submitted_for=5.0, median=20.0, sigma=0.3)
SPEED = 100.0


async def fetch(url: str, query: str) -> list[Any]:
    connection = await asyncpg.connect(url)
    try:
        return list(await connection.fetch(query))
    finally:
        await connection.close()


async def test_hosts_share_a_batch_while_one_is_killed_again_and_again(
    database_url: str, tmp_path: Path
) -> None:
    requests = tmp_path / "videos.jsonl"
    requests.write_text(
        "".join(
            json.dumps({"video_id": f"vid-{i}", "key": f"row-{i}"}) + "\n" for i in range(REQUESTS)
        )
    )
    async with FakeKlingServer(
        dialect="official",
        api_key=KEY,
        speed=SPEED,
        durations=DURATIONS,
        max_concurrent=QUOTA,
    ) as server:
        server.faults.rate(Fault.http_error(500), 0.05, method="GET")
        env = {
            **os.environ,
            "KLING_API_KEY": KEY,
            "KLING_BASE_URL": server.url,
            "KLING_DIALECT": "official",
            "KLING_DATABASE_URL": database_url,
        }

        async def start(host: int) -> Process:
            command = [
                sys.executable, "-m", "kling_async", "batch", str(requests),
                "--out", str(tmp_path / f"results-{host}.jsonl"),
                "--concurrency", str(QUOTA), "--parallel-tasks", str(QUOTA),
                "--lease", "1", "--poll-interval", "0.05",
            ]  # fmt: skip
            with (tmp_path / f"host-{host}.log").open("ab") as log:  # the child keeps its own
                return await anyio.open_process(command, env=env, stdout=log, stderr=log)

        hosts = [await start(host) for host in range(HOSTS)]
        kills: list[dict[str, int]] = []  # per kill: the victim's running keys, their fences
        with anyio.fail_after(300):  # a guard against a hang, not a measure
            while any(host.returncode is None for host in hosts):
                if len(kills) < KILLS and server.record.create_count >= 100 * (len(kills) + 1):
                    victim = await holder_of_running_work(database_url, hosts)
                    if victim is not None:
                        hosts[victim].send_signal(signal.SIGSTOP)  # frozen: its claims stand
                        held = await running_work(database_url, hosts[victim].pid)
                        hosts[victim].send_signal(signal.SIGKILL)
                        await hosts[victim].wait()
                        hosts[victim] = await start(victim)
                        if held:
                            kills.append(held)
                await anyio.sleep(0.05)
        for host in hosts:
            await host.wait()
        logs = "\n".join((tmp_path / f"host-{h}.log").read_text() for h in range(HOSTS))
        assert [host.returncode for host in hosts] == [0] * HOSTS, logs[-3000:]

        # Each request created exactly once, in all; never more than 10 tasks at once, and
        # never a 1303 (over the parallel limit) for the hosts to back off from.
        assert server.record.create_count == REQUESTS
        assert all(server.record.creates_for(f"vid-{i}") == 1 for i in range(REQUESTS))
        assert server.record.peak_concurrent <= QUOTA
        assert not [r for r in server.record.requests if r.method == "POST" and r.status == 429]
        assert any(r.fault for r in server.record.requests if r.method == "GET")

    # Every host exported the whole batch: one line per request, each succeeded.
    for host in range(HOSTS):
        lines = (tmp_path / f"results-{host}.jsonl").read_text().splitlines()
        records = [json.loads(line) for line in lines]
        assert Counter(r["key"] for r in records) == Counter(f"row-{i}" for i in range(REQUESTS))
        assert {r["status"] for r in records} == {"succeeded"}

    # The killed hosts' running tasks were taken over (claimed again) and finished.
    assert len(kills) == KILLS
    rows = await fetch(
        database_url, "SELECT key, state, task_status, fence, holds_slot FROM kling_entry"
    )
    assert len(rows) == REQUESTS
    assert all(r["state"] == "finished" and r["task_status"] == "succeed" for r in rows)
    assert not any(r["holds_slot"] for r in rows)
    fences = {r["key"]: r["fence"] for r in rows}
    for held in kills:
        assert all(fences[key] > fence for key, fence in held.items())


async def running_work(url: str, pid: int) -> dict[str, int]:
    """The keys (and fences) of the running tasks the process `pid` holds."""
    rows = await fetch(
        url,
        "SELECT owner, key, fence FROM kling_entry WHERE owner IS NOT NULL AND state = 'submitted'",
    )
    return {r["key"]: r["fence"] for r in rows if int(r["owner"].split("/")[1]) == pid}


async def holder_of_running_work(url: str, hosts: list[Process]) -> int | None:
    """A host (by index) that holds running tasks now."""
    for index, host in enumerate(hosts):
        if await running_work(url, host.pid):
            return index
    return None
