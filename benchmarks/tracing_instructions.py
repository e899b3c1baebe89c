"""Where tracing's cost goes: instructions per `get_task`, the client's own hooks vs the SDK.

Throughput on a shared machine drifts; instruction counts do not (see ``instructions.py``,
whose machinery this uses: each contender runs in a child process under valgrind's
callgrind, warms up uncounted, then counts its requests; the fake server runs natively).
Each contender adds one layer to the one before it:

- ``without``: ``telemetry=False``, no hook does anything;
- ``hooks``: the client's own telemetry code, on OpenTelemetry's no-op tracer and meter
  (given as providers, so every hook runs: the route, the attributes, the counter; the
  tracer builds nothing);
- ``span``: the SDK's tracer provider without a span processor: the SDK makes each span
  (sampling, ids, attribute checks) and drops it at its end;
- ``on``: ``tracing.py``'s production setup: the batch span processor (its export thread
  counted too) and the periodic metric reader;
- ``sampled``: the same with one trace in ten sampled.

Then a metric point of each kind of instrument the client records (with the attributes of
a watch's end, a dict made once), SDK vs the API's no-op. A `get_task` records none: the
requests are counted in the client and read by the SDK when it collects.

    python benchmarks/tracing_instructions.py [--quick]
"""

from __future__ import annotations

import asyncio
import functools
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _common import API_KEY, parse_args, print_table, write_results
from instructions import (
    FULL,
    QUICK,
    Size,
    _count_instructions,
    _requests,
    callgrind_child,
    require_callgrind,
)
from opentelemetry.metrics import Meter, NoOpMeterProvider
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import NoOpTracerProvider
from overhead import task_server
from tracing import meter_provider, tracer_provider

from kling_async import KlingClient, RetryPolicy

CONTENDERS = ("without", "hooks", "span", "on", "sampled")
BELOW = {"hooks": "without", "span": "hooks", "on": "span", "sampled": "hooks"}  # one layer
INSTRUMENTS = ("counter add", "up-down counter add", "histogram record")
POINTS = 20_000  # metric points counted per instrument (QUICK: 200)


def client_options(name: str) -> dict[str, Any]:
    """The telemetry options of contender `name`."""
    if name == "without":
        return {"telemetry": False}
    if name == "hooks":
        return {"tracer_provider": NoOpTracerProvider(), "meter_provider": NoOpMeterProvider()}
    if name == "span":
        return {"tracer_provider": TracerProvider(), "meter_provider": meter_provider()}
    sampler = ParentBased(TraceIdRatioBased(0.1)) if name == "sampled" else None
    return {"tracer_provider": tracer_provider(sampler), "meter_provider": meter_provider()}


async def _child(name: str, url: str, task_id: str, size: Size) -> None:
    """The process under callgrind: warm up uncounted, then count `size.requests`."""
    common: dict[str, Any] = {"api_key": API_KEY, "base_url": url, "dialect": "gateway"}
    async with KlingClient(**common, retry=RetryPolicy(), **client_options(name)) as client:
        fetch = functools.partial(client.get_task, task_id)
        await _requests(fetch, size.warmup, size.concurrency)
        _count_instructions(True)
        await _requests(fetch, size.requests, size.concurrency)
        _count_instructions(False)


def _points(meter: Meter, instrument: str) -> Callable[[], None]:
    """One metric point of `instrument`, with a watch's end's attributes."""
    attributes = {"kling.task.kind": "videos/video-extend", "kling.task.status": "succeed"}
    if instrument == "counter add":
        counter = meter.create_counter("bench.counter")
        return lambda: counter.add(1, attributes)
    if instrument == "up-down counter add":
        up_down = meter.create_up_down_counter("bench.up_down")
        return lambda: up_down.add(1, attributes)
    histogram = meter.create_histogram("bench.histogram")
    return lambda: histogram.record(1.5, attributes)


def _metrics_child(provider: str, instrument: str, points: int) -> None:
    """The process under callgrind: `points` points of `instrument`, SDK or no-op."""
    meters = meter_provider() if provider == "sdk" else NoOpMeterProvider()
    record = _points(meters.get_meter("bench"), instrument)
    for _ in range(100):
        record()
    _count_instructions(True)
    for _ in range(points):
        record()
    _count_instructions(False)


def count(arguments: list[str], scratch: Path) -> int:
    """Instructions the child run with `arguments` executed while counting."""
    return callgrind_child(__file__, arguments, scratch / "callgrind.out")


def report(per_request: dict[str, float], per_point: dict[str, dict[str, float]]) -> Any:
    """Print both tables; return the figures for the JSON."""
    base = per_request["without"]
    layers = {name: per_request[name] - per_request[below] for name, below in BELOW.items()}
    rows = [
        [name, round(n), round(n - base), round(layers.get(name, 0)), f"{base / n:.3f}"]
        for name, n in per_request.items()
    ]
    print_table(
        "Tracing: client instructions per get_task",
        [
            "contender",
            "instructions",
            "added over without",
            "added over the row it builds on",
            "without/this",
        ],
        rows,
    )
    point_rows = [
        [name, round(p["sdk"]), round(p["noop"]), round(p["sdk"] - p["noop"])]
        for name, p in per_point.items()
    ]
    print_table(
        "One metric point (a dict of two attributes made once)",
        ["instrument", "SDK", "no-op API", "SDK's part"],
        point_rows,
    )
    return {
        "instructions_per_request": per_request,
        "added_per_request": {name: n - base for name, n in per_request.items()},
        "added_over_the_row_below": layers,
        "without_over_this": {name: base / n for name, n in per_request.items()},
        "instructions_per_metric_point": per_point,
    }


def main() -> None:
    """Count every contender and instrument; write ``results/tracing_instructions.json``."""
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        if sys.argv[2] == "metrics":
            _metrics_child(sys.argv[3], sys.argv[4], int(sys.argv[5]))
            return
        name, url, task_id, *numbers = sys.argv[2:]
        requests, concurrency, warmup = map(int, numbers)
        asyncio.run(_child(name, url, task_id, Size(requests, concurrency, warmup)))
        return
    args = parse_args(__doc__.splitlines()[0])
    require_callgrind()
    size = QUICK if args.quick else FULL
    points = POINTS // 100 if args.quick else POINTS
    numbers = [str(size.requests), str(size.concurrency), str(size.warmup)]
    with tempfile.TemporaryDirectory() as folder, task_server("processing") as (server, task):
        per_request = {
            name: count([name, server.url, task, *numbers], Path(folder)) / size.requests
            for name in CONTENDERS
        }
        per_point = {
            instrument: {
                provider: count(["metrics", provider, instrument, str(points)], Path(folder))
                / points
                for provider in ("sdk", "noop")
            }
            for instrument in INSTRUMENTS
        }
    figures = report(per_request, per_point)
    parameters = {
        "requests": size.requests,
        "concurrency": size.concurrency,
        "task_state": "processing",
        "metric_points": points,
    }
    path = write_results("tracing_instructions", args, parameters, figures)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
