"""Scale: many concurrent watchers on one event loop, against slow tasks.

Watchers are plain asyncio tasks in an `asyncio.TaskGroup` (anyio's ``start_soon`` would add
about 2.4 KiB of bookkeeping per task, which is the spawner's cost, not the watcher's).

For each size, the fake server (a child process) first makes N tasks that will not end
during the run; then a fresh client process starts one ``await client.watch(task_id)`` per
task, all on one event loop, and measures once every watcher has had its first answer:

* memory per watched task: (peak RSS - RSS before the watchers started) / N;
* CPU time per poll: the client process's CPU time over the polls made in the window;
* event-loop lag: a probe sleeps 10 ms again and again and records how late it wakes (p99).

The client polls at 1 s, then every 1.5x longer up to 5 s, and the account-wide limiter
holds it to `RATE` requests a second (polite to the server, and under what it can answer:
without a limit, requests of 100,000 watchers would queue in the connection pool until
they time out). Each size runs in its own client process so memory figures start clean.

    python benchmarks/scale.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from _common import (
    API_KEY,
    cpu_seconds,
    fake_server,
    memory_kib,
    parse_args,
    percentile,
    print_table,
    verdict,
    write_results,
)

from kling_async import KlingClient, PollPolicy, TaskWatcher

RATE = 2000.0  # requests per second, the client's `requests_per_second`
# The default deadline (30 minutes) stays: each read then runs under a timeout, as a user's
# would; no task reaches it during a run.
POLICY = PollPolicy(initial_delay=1.0, min_interval=1.0, max_interval=5.0)
PROBE_INTERVAL = 0.010
START_CHUNK = 1000  # watchers started per event-loop turn
TARGET_KIB_PER_TASK = 5.0
TARGET_P99_LAG_MS = 50.0
SLOW = 1e9  # service seconds: these tasks outlive any run


@dataclass(frozen=True)
class Plan:
    """One size's run: how many watchers, how long to settle and to measure."""

    watchers: int
    settle_s: float
    window_s: float


FULL = (Plan(10_000, settle_s=10.0, window_s=30.0), Plan(100_000, settle_s=10.0, window_s=60.0))
QUICK = (Plan(1_000, settle_s=0.5, window_s=2.0),)


class LagProbe:
    """Sleeps `PROBE_INTERVAL` again and again; records how late each wake-up is (ms)."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, float]] = []

    async def run(self) -> None:
        """Probe until cancelled."""
        while True:
            before = time.perf_counter()
            await asyncio.sleep(PROBE_INTERVAL)
            after = time.perf_counter()
            self.samples.append((after, (after - before - PROBE_INTERVAL) * 1000.0))

    def since(self, start: float) -> list[float]:
        """Lateness (ms) of the wake-ups after `start` (a `time.perf_counter` instant)."""
        return [lag for when, lag in self.samples if when >= start]


class Errors:
    """Counts transient poll failures the watchers reported (they keep watching)."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, _: Exception) -> None:
        self.count += 1


async def keep_watching(watcher: TaskWatcher) -> None:
    """Watch until cancelled (the tasks never end)."""
    await watcher


async def wait_for_first_answers(watchers: list[TaskWatcher]) -> None:
    """Return once every watcher has read its task at least once."""
    pending = watchers
    while pending:
        await asyncio.sleep(0.5)
        pending = [w for w in pending if w.last is None]


def polls(watchers: list[TaskWatcher]) -> int:
    """Polls started so far by all watchers."""
    return sum(w.polls for w in watchers)


async def measure(url: str, ids: list[str], plan: Plan) -> dict[str, Any]:
    """Start a watcher per id, let them settle, measure one window; the figures."""
    errors = Errors()
    probe = LagProbe()
    async with KlingClient(
        api_key=API_KEY, base_url=url, dialect="gateway", requests_per_second=RATE
    ) as client:
        await client.get_task(ids[0])  # the session, its connection and every import exist now
        gc.collect()
        baseline_kib = memory_kib()
        async with asyncio.TaskGroup() as group:
            probing = group.create_task(probe.run())
            started = time.perf_counter()
            watchers = []
            running = []
            for number, task_id in enumerate(ids, 1):
                watcher = client.watch(task_id, poll=POLICY, on_poll_error=errors)
                watchers.append(watcher)
                running.append(group.create_task(keep_watching(watcher)))
                if number % START_CHUNK == 0:
                    await asyncio.sleep(0)
            await wait_for_first_answers(watchers)
            ramp_s = time.perf_counter() - started
            await asyncio.sleep(plan.settle_s)
            window_start, cpu0, polls0 = time.perf_counter(), cpu_seconds(), polls(watchers)
            await asyncio.sleep(plan.window_s)
            window = time.perf_counter() - window_start
            cpu, done = cpu_seconds() - cpu0, polls(watchers) - polls0
            rss_kib, peak_kib = memory_kib(), memory_kib("VmHWM")
            lags = probe.since(window_start)
            for task in [probing, *running]:
                task.cancel()
    return {
        "watchers": len(ids),
        "ramp_s": ramp_s,
        "window_s": window,
        "baseline_rss_kib": baseline_kib,
        "rss_kib": rss_kib,
        "peak_rss_kib": peak_kib,
        "kib_per_task": (peak_kib - baseline_kib) / len(ids),
        "polls_in_window": done,
        "polls_per_s": done / window,
        "cpu_s_in_window": cpu,
        "cpu_us_per_poll": cpu / done * 1e6 if done else float("nan"),
        "lag_p50_ms": percentile(lags, 0.50),
        "lag_p99_ms": percentile(lags, 0.99),
        "lag_max_ms": max(lags),
        "lag_samples": len(lags),
        "poll_errors": errors.count,
    }


def run_client(url: str, ids_file: Path, plan: Plan) -> dict[str, Any]:
    """Run `measure` in a fresh process (this script with ``--client``); its figures."""
    command = [
        sys.executable,
        __file__,
        "--client",
        json.dumps({"url": url, "ids_file": str(ids_file), **asdict(plan)}),
    ]
    done = subprocess.run(  # noqa: S603 - this interpreter, this script
        command, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"the client process failed:\n{done.stderr}")
    figures: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return figures


def run_size(plan: Plan) -> dict[str, Any]:
    """One size: the server with N slow tasks, then the client process."""
    with tempfile.TemporaryDirectory() as scratch:
        ids_file = Path(scratch) / "ids.txt"
        with fake_server(
            speed=1.0,
            median=SLOW,
            sigma=0,
            create=plan.watchers,
            ids_file=ids_file,
            start_timeout=900.0,
        ) as server:
            figures = run_client(server.url, ids_file, plan)
    figures["server_requests"] = server.final.get("requests")
    figures["server_setup_s"] = server.announced.get("setup_seconds")
    return figures


def client_main(spec: str) -> None:
    """The client process: measure and print the figures as one JSON line."""
    settings = json.loads(spec)
    ids = Path(settings["ids_file"]).read_text().split()
    plan = Plan(settings["watchers"], settings["settle_s"], settings["window_s"])
    figures = asyncio.run(measure(settings["url"], ids, plan))
    print(json.dumps(figures))


def report(runs: list[dict[str, Any]]) -> None:
    """Print the table."""
    rows = [
        [
            r["watchers"],
            r["kib_per_task"],
            r["cpu_us_per_poll"],
            r["polls_per_s"],
            r["lag_p50_ms"],
            r["lag_p99_ms"],
            r["lag_max_ms"],
            r["ramp_s"],
            r["poll_errors"],
        ]
        for r in runs
    ]
    headers = [
        "watchers",
        "KiB/task (peak)",
        "CPU us/poll",
        "polls/s",
        "lag p50 ms",
        "lag p99 ms",
        "lag max ms",
        "ramp s",
        "poll errors",
    ]
    print_table(f"Scale: watchers on one loop, limiter {RATE:g} req/s", headers, rows)
    for r in runs:
        memory = verdict(r["kib_per_task"] <= TARGET_KIB_PER_TASK)
        lag = verdict(r["lag_p99_ms"] <= TARGET_P99_LAG_MS)
        print(
            f"{r['watchers']:>7,} watchers: <= {TARGET_KIB_PER_TASK:g} KiB/task: {memory}; "
            f"p99 lag <= {TARGET_P99_LAG_MS:g} ms: {lag}"
        )


def _extra(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--client", help=argparse.SUPPRESS)


def main() -> None:
    """Run every size and write ``results/scale.json``."""
    args = parse_args(__doc__.splitlines()[0], extra=_extra)
    if args.client:
        client_main(args.client)
        return
    plans = QUICK if args.quick else FULL
    runs = [run_size(plan) for plan in plans]
    report(runs)
    for run in runs:
        run["target_kib_met"] = run["kib_per_task"] <= TARGET_KIB_PER_TASK
        run["target_lag_met"] = run["lag_p99_ms"] <= TARGET_P99_LAG_MS
    parameters = {
        "plans": [asdict(plan) for plan in plans],
        "requests_per_second": RATE,
        "poll_policy": {
            "initial_delay": POLICY.initial_delay,
            "min_interval": POLICY.min_interval,
            "max_interval": POLICY.max_interval,
            "jitter": POLICY.jitter,
            "timeout": POLICY.timeout,
        },
        "probe_interval_s": PROBE_INTERVAL,
        "task_service_seconds": SLOW,
    }
    path = write_results("scale", args, parameters, {"runs": runs})
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
