"""The cost of tracing: `KlingClient.get_task` throughput with OpenTelemetry off and on.

Four clients GET the same task from the same fake server (a child process), in interleaved
rounds (the machinery of ``overhead.py``), paired round by round against the first:

- ``without``: ``telemetry=False``, the hooks a client has when opentelemetry-api is not
  installed (the same no-op object: nothing of OpenTelemetry is called);
- ``off``: opentelemetry-api installed, the application configured no SDK: the global
  providers' no-op tracer and meter (the default);
- ``on``: an SDK tracer provider exporting every span through a batch processor (to an
  exporter that drops them) and an SDK meter provider aggregating every metric;
- ``sampled``: the same with one trace in ten sampled (``ParentBased(TraceIdRatioBased(0.1))``,
  what a busy service runs): a span not sampled gets no attributes built.

Targets: ``off`` costs at most 1 % of the throughput (paired ratio >= 0.99), ``on`` at most
10 % (>= 0.90).

    python benchmarks/tracing.py [--quick]
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator, Sequence
from typing import Any

from _common import API_KEY, parse_args, print_table, verdict, write_results
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from overhead import FULL, QUICK, Fetch, Size, interleaved, paired, task_server

from kling_async import KlingClient, RetryPolicy

CONCURRENCIES = (1, 16)
TARGETS = {"off": 0.99, "on": 0.90, "sampled": 0.90}
BASELINE = "without"


class _Dropped(SpanExporter):
    """An exporter that takes every span and keeps none (the cost is the SDK's, not I/O)."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


@contextlib.asynccontextmanager
async def contenders(url: str, task_id: str) -> AsyncIterator[dict[str, Fetch]]:
    """The three clients, open, each fetching `task_id` from `url`."""
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(BatchSpanProcessor(_Dropped()))
    sampling_provider = TracerProvider(sampler=ParentBased(TraceIdRatioBased(0.1)))
    sampling_provider.add_span_processor(BatchSpanProcessor(_Dropped()))
    meter_provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
    common: dict[str, Any] = {
        "api_key": API_KEY,
        "base_url": url,
        "dialect": "gateway",
        "retry": RetryPolicy(),
    }
    try:
        async with (
            KlingClient(**common, telemetry=False) as without,
            KlingClient(**common) as off,
            KlingClient(
                **common, tracer_provider=tracer_provider, meter_provider=meter_provider
            ) as on,
            KlingClient(
                **common, tracer_provider=sampling_provider, meter_provider=meter_provider
            ) as sampled,
        ):
            clients = {"without": without, "off": off, "on": on, "sampled": sampled}
            yield {
                name: functools.partial(client.get_task, task_id)
                for name, client in clients.items()
            }
    finally:
        sampling_provider.shutdown()
        tracer_provider.shutdown()
        meter_provider.shutdown()


async def measure(fetchers: dict[str, Fetch], size: Size) -> dict[str, dict[str, Any]]:
    """Interleaved rounds at each concurrency; summaries and paired ratios to the baseline."""
    results: dict[str, dict[str, Any]] = {}
    for concurrency in CONCURRENCIES:
        rounds = await interleaved(fetchers, concurrency, size)
        measured: dict[str, Any] = {name: r.summary() for name, r in rounds.items()}
        for name in TARGETS:
            measured[f"paired_{name}_over_{BASELINE}"] = paired(
                rounds[name].rps, rounds[BASELINE].rps
            )
        results[str(concurrency)] = measured
    return results


async def run_all(url: str, task_id: str, size: Size) -> dict[str, dict[str, Any]]:
    async with contenders(url, task_id) as fetchers:
        for fetch in fetchers.values():
            await fetch()  # each client answers before anything is timed
        return await measure(fetchers, size)


def report(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Print the table; return the paired ratios and whether each target holds."""
    rows: list[list[Any]] = []
    verdicts: dict[str, Any] = {}
    for concurrency, measured in results.items():
        base = measured[BASELINE]
        verdicts[concurrency] = {}
        for name in (BASELINE, *TARGETS):
            summary = measured[name]
            rows.append(
                [
                    concurrency,
                    name,
                    summary["rps_median"],
                    summary["cpu_us_per_request"],
                    summary["cpu_us_per_request"] - base["cpu_us_per_request"],
                ]
            )
        for name, target in TARGETS.items():
            pair = measured[f"paired_{name}_over_{BASELINE}"]
            met = pair["median"] >= target
            verdicts[concurrency][name] = {"paired_median": pair["median"], "target_met": met}
            spread = f"paired {pair['median']:.3f} [{pair['q1']:.3f}, {pair['q3']:.3f}]"
            rows.append(["", f"{name}/{BASELINE}", spread, "", f">= {target}: {verdict(met)}"])
    headers = ["concurrency", "client", "req/s (median)", "client CPU us/req", "CPU us added"]
    print_table("The cost of tracing: get_task", headers, rows)
    return verdicts


def main() -> None:
    """Run the benchmark and write ``results/tracing.json``."""
    args = parse_args(__doc__.splitlines()[0])
    size = QUICK if args.quick else FULL
    with task_server("processing") as (server, task_id):
        results = asyncio.run(run_all(server.url, task_id, size))
    verdicts = report(results)
    parameters = {
        "concurrencies": list(CONCURRENCIES),
        "round_seconds": size.round_seconds,
        "rounds": size.rounds,
        "warmup_seconds": size.warmup_seconds,
        "targets": TARGETS,
        "server_requests": server.final.get("requests"),
    }
    path = write_results(
        "tracing", args, parameters, {"by_concurrency": results, "ratios": verdicts}
    )
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
