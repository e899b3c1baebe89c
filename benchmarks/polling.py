"""Polling efficiency: polls per task and detection delay of each poll schedule.

An exact simulation, no sockets: task durations are drawn from a seeded mix, and each task
answers a real `TaskWatcher` by a `FakeClock`, so a two-minute task is watched in
microseconds. Three mixes (`_optimum.DISTRIBUTIONS`): a log-normal (median 120 s, sigma
0.35, as the real service's extensions) with a small share of quick failures (a refusal a
few seconds in); a bimodal mix of many early failures and slow successes; and a wider
log-normal. On each, every schedule watches the same tasks, each from the moment it was
created:

* the default `PollPolicy()`, learning durations (`CompletionTimes`) from the run's earlier
  tasks, after a warm-up of tasks that are not counted;
* the default `PollPolicy()` cold, with nothing learned (its fixed fallback schedule);
* a fixed 5 s loop and a fixed 15 s loop;
* the oracle: one poll exactly at completion (computed, not simulated).

Detection delay is the time from the task's real end to the poll that saw it. Beside each
row stand the reads of the optimal schedule for the true distribution at that row's mean
delay (`_optimum.Optimum`, a dynamic program) and the row's reads as a ratio to them: the
reference that no schedule can beat at its delay.

Callbacks cannot be simulated on a fake clock (their latency is the point), so that row is
measured live: the fake server (a child process, same duration mix on a clock 100x faster)
calls back a `CallbackReceiver`, and the client watches each task with the default policy
scaled by the same factor (its safety-net polls every ``callback_interval / 100``). Its
polls per task compare with the simulated rows; its delay is real wall time.

    python benchmarks/polling.py [--quick]
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
import random
import statistics
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import anyio
import attrs
from _common import (
    API_KEY,
    fake_server,
    parse_args,
    percentile,
    print_table,
    verdict,
    write_results,
)
from _optimum import DISTRIBUTIONS, SERVICE, Mixture, Optimum

from kling_async import (
    CallbackReceiver,
    KlingClient,
    PollPolicy,
    Task,
    TaskFailedError,
    TaskKind,
    TaskStatus,
    TaskWatcher,
)
from kling_async._clock import FakeClock
from kling_async.policies import CompletionTimes

MEDIAN = 120.0  # the live callback run's log-normal (the fake server's)
SIGMA = 0.35
SUBMITTED_FOR = 5.0
SEED = 20240611
CALLBACK_SPEED = 100.0  # the live run's service seconds per wall second
CALLBACK_ROW = "with callbacks (live, default policy scaled)"
TARGET_CALLBACK_POLLS = 1.0
TARGET_CALLBACK_DELAY_S = 0.100


@dataclass(frozen=True)
class Size:
    """How many tasks are watched."""

    tasks: int
    warmup: int
    live_tasks: int
    coarse: float  # the optimum's grid steps, as a multiple of the finest


FULL = Size(tasks=5000, warmup=50, live_tasks=300, coarse=1.0)
QUICK = Size(tasks=100, warmup=20, live_tasks=10, coarse=8.0)


@dataclass(frozen=True)
class TaskSpec:
    """One simulated task: how long it runs and how it ends."""

    duration: float
    failed: bool


def draw_tasks(mixture: Mixture, rng: random.Random, count: int) -> list[TaskSpec]:
    """`count` tasks of `mixture`."""
    return [TaskSpec(*mixture.draw(rng)) for _ in range(count)]


def _moment(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, tz=UTC)


class VirtualTask:
    """A task that answers by the fake clock: submitted, processing, then its end."""

    def __init__(self, clock: FakeClock, spec: TaskSpec) -> None:
        self.clock = clock
        self.spec = spec
        self.created = clock.time()
        self.polls = 0

    @property
    def end(self) -> float:
        """The instant (clock time) the task turns terminal."""
        return self.created + self.spec.duration

    def snapshot(self) -> Task:
        """The task as the server would describe it now."""
        now = self.clock.time()
        if now >= self.end:
            status = TaskStatus.FAILED if self.spec.failed else TaskStatus.SUCCEED
            changed = self.end
        elif now >= self.created + SUBMITTED_FOR:
            status, changed = TaskStatus.PROCESSING, self.created + SUBMITTED_FOR
        else:
            status, changed = TaskStatus.SUBMITTED, self.created
        return Task(
            "sim",
            TaskKind.VIDEO_EXTEND,
            status,
            created_at=_moment(self.created),
            updated_at=_moment(changed),
        )

    async def get_task(self, task_id: str, kind: TaskKind = TaskKind.VIDEO_EXTEND) -> Task:
        """One poll."""
        self.polls += 1
        return self.snapshot()


async def watch_one(
    spec: TaskSpec, policy: PollPolicy, learned: CompletionTimes | None, rng: random.Random
) -> tuple[int, float]:
    """Watch one task from its creation; its polls and detection delay (seconds)."""
    clock = FakeClock()
    task = VirtualTask(clock, spec)
    watcher = TaskWatcher(
        task, task.snapshot(), policy=policy, clock=clock, learned=learned, rng=rng
    )
    with contextlib.suppress(TaskFailedError):
        await watcher
    return task.polls, clock.time() - task.end


@dataclass(frozen=True)
class Schedule:
    """A poll schedule to measure, and whether it learns from the run's finished tasks."""

    name: str
    policy: PollPolicy
    learns: bool


def schedules() -> list[Schedule]:
    """The schedules of the table, in order."""

    def fixed(seconds: float) -> PollPolicy:
        return PollPolicy(
            initial_delay=seconds,
            min_interval=seconds,
            max_interval=seconds,
            adaptive=False,
            jitter=False,
        )

    return [
        Schedule("default PollPolicy(), learned", PollPolicy(), learns=True),
        Schedule("default PollPolicy(), cold (nothing learned)", PollPolicy(), learns=False),
        Schedule("fixed 5 s loop", fixed(5.0), learns=False),
        Schedule("fixed 15 s loop", fixed(15.0), learns=False),
    ]


async def simulate(
    schedule: Schedule, warmup: list[TaskSpec], tasks: list[TaskSpec]
) -> dict[str, Any]:
    """Watch the warm-up tasks (learning only), then the measured ones; their figures."""
    rng = random.Random(SEED)
    learned = CompletionTimes() if schedule.learns else None
    for spec in warmup if schedule.learns else []:
        await watch_one(spec, schedule.policy, learned, rng)
    polls, delays = [], []
    for spec in tasks:
        count, delay = await watch_one(spec, schedule.policy, learned, rng)
        polls.append(count)
        delays.append(delay)
    return summary(polls, delays)


def summary(polls: list[int], delays: list[float]) -> dict[str, Any]:
    """Polls per task and detection delay figures of one schedule."""
    return {
        "polls_per_task": statistics.fmean(polls),
        "polls_p95": percentile([float(p) for p in polls], 0.95),
        "delay_mean_s": statistics.fmean(delays),
        "delay_p95_s": percentile(delays, 0.95),
        "delay_max_s": max(delays),
    }


def oracle(count: int) -> dict[str, Any]:
    """One poll exactly at completion: the floor no schedule can beat."""
    return summary([1] * count, [0.0] * count)


def scaled(policy: PollPolicy, factor: float) -> PollPolicy:
    """`policy` with every duration divided by `factor` (for a server `factor` times faster)."""
    return attrs.evolve(
        policy,
        initial_delay=policy.initial_delay / factor,
        min_interval=policy.min_interval / factor,
        max_interval=policy.max_interval / factor,
        callback_interval=policy.callback_interval / factor,
        timeout=None if policy.timeout is None else policy.timeout / factor,
    )


async def watch_with_callbacks(
    url: str, count: int, policy: PollPolicy | None = None
) -> tuple[list[int], list[float]]:
    """Extend `count` videos at once and watch each with callbacks; polls and delays.

    `policy` is in service time (default: the default `PollPolicy`); it is scaled to the
    server's speed here.
    """
    polls: list[int] = []
    delays: list[float] = []
    policy = scaled(policy or PollPolicy(), CALLBACK_SPEED)
    async with CallbackReceiver() as receiver:
        await receiver.start("127.0.0.1", 0)
        async with KlingClient(
            api_key=API_KEY, base_url=url, dialect="gateway", poll=policy, callbacks=receiver
        ) as client:

            async def one(number: int) -> None:
                task = await client.extend_video(f"cb-video-{number}", task_id=f"cb-{number}")
                watcher = client.watch(task)
                with contextlib.suppress(TaskFailedError):
                    await watcher
                ended = watcher.last.updated_at if watcher.last is not None else None
                if ended is None:
                    raise RuntimeError(f"task {task.id} ended without a timestamp")
                delays.append(time.time() - ended.timestamp())
                polls.append(watcher.polls)

            async with anyio.create_task_group() as group:
                for number in range(count):
                    group.start_soon(one, number)
    return polls, delays


def measure_callbacks(count: int) -> dict[str, Any]:
    """The live callback row: the fake server in its own process calls back our receiver."""
    with fake_server(
        speed=CALLBACK_SPEED, median=MEDIAN, sigma=SIGMA, submitted_for=SUBMITTED_FOR, seed=SEED
    ) as server:
        polls, delays = asyncio.run(watch_with_callbacks(server.url, count))
    return summary(polls, delays)


LEARNED = "default PollPolicy(), learned"
COLD = "default PollPolicy(), cold (nothing learned)"
ORACLE = "oracle (one poll at completion)"
TARGET_OVER_OPTIMAL = 1.10


async def run_mixture(mixture: Mixture, size: Size) -> dict[str, dict[str, Any]]:
    """Every schedule on the same tasks of `mixture`, each beside the optimum at its delay."""
    rng = random.Random(SEED)
    warmup = draw_tasks(mixture, rng, size.warmup)
    tasks = draw_tasks(mixture, rng, size.tasks)
    durations = [t.duration for t in tasks]
    optimum = Optimum(mixture, coarse=size.coarse)
    rows = {}
    for schedule in schedules():
        row = await simulate(schedule, warmup, tasks)
        best = optimum.at_delay(durations, row["delay_mean_s"])
        row["optimal_polls_per_task"] = best.reads_per_task
        row["over_optimal"] = row["polls_per_task"] / best.reads_per_task
        rows[schedule.name] = row
    rows[ORACLE] = oracle(len(tasks))
    rows["_tasks"] = {
        "distribution": mixture.name,
        "count": len(tasks),
        "failed": sum(t.failed for t in tasks),
        "duration_median_s": statistics.median(durations),
        "duration_p95_s": percentile(durations, 0.95),
    }
    return rows


def targets(runs: dict[str, dict[str, dict[str, Any]]]) -> dict[str, bool]:
    """Learned: <= 1.1x the optimal reads on every mix; on the service's, fewer polls than
    the 5 s loop at no worse mean delay; with callbacks <= 1 poll and < 100 ms."""
    met = {
        f"{name}: learned within 1.1x of optimal": rows[LEARNED]["over_optimal"]
        <= TARGET_OVER_OPTIMAL
        for name, rows in runs.items()
    }
    service = runs[SERVICE.name]
    ours, five = service[LEARNED], service["fixed 5 s loop"]
    met[f"{SERVICE.name}: fewer polls than the 5 s loop at no worse mean delay"] = (
        ours["polls_per_task"] < five["polls_per_task"]
        and ours["delay_mean_s"] <= five["delay_mean_s"]
    )
    hooks = service[CALLBACK_ROW]
    met["callbacks: at most one poll per task"] = hooks["polls_per_task"] <= TARGET_CALLBACK_POLLS
    met["callbacks: p95 delay under 100 ms"] = hooks["delay_p95_s"] < TARGET_CALLBACK_DELAY_S
    return met


def report(runs: dict[str, dict[str, dict[str, Any]]], met: dict[str, bool]) -> None:
    """Print one table per distribution and the verdicts."""
    headers = [
        "schedule",
        "polls/task",
        "mean delay s",
        "p95 delay s",
        "max delay s",
        "optimal polls",
        "ours/optimal",
    ]
    for rows in runs.values():
        table = [
            [
                name,
                r["polls_per_task"],
                r["delay_mean_s"],
                r["delay_p95_s"],
                r["delay_max_s"],
                r.get("optimal_polls_per_task", math.nan),
                r.get("over_optimal", math.nan),
            ]
            for name, r in rows.items()
            if not name.startswith("_")
        ]
        tasks = rows["_tasks"]
        title = f"{tasks['distribution']}: {tasks['count']:,} tasks, {tasks['failed']} failed"
        print_table(title, headers, table)
    print()
    for name, ok in met.items():
        print(f"{name}: {verdict(ok)}")


def main() -> None:
    """Run the simulation and write ``results/polling.json``."""
    args = parse_args(__doc__.splitlines()[0])
    size = QUICK if args.quick else FULL
    runs = {m.name: asyncio.run(run_mixture(m, size)) for m in DISTRIBUTIONS}
    runs[SERVICE.name][CALLBACK_ROW] = measure_callbacks(size.live_tasks)
    met = targets(runs)
    report(runs, met)
    parameters = {
        "tasks": size.tasks,
        "warmup_tasks": size.warmup,
        "distributions": [dataclasses.asdict(m) for m in DISTRIBUTIONS],
        "seed": SEED,
        "callback_tasks": size.live_tasks,
        "callback_speed": CALLBACK_SPEED,
        "callback_median_s": MEDIAN,
        "callback_sigma": SIGMA,
    }
    results = {"distributions": runs, "targets": met}
    path = write_results("polling", args, parameters, results)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
