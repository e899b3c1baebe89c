"""The cost of tracing: `KlingClient.get_task` throughput with OpenTelemetry off and on.

Four clients GET the same task from the same fake server (a child process), in interleaved
rounds (the machinery of ``overhead.py``), paired round by round against the first:

- ``without``: ``telemetry=False``, the hooks a client has when opentelemetry-api is not
  installed (the same no-op object: nothing of OpenTelemetry is called);
- ``off``: opentelemetry-api installed, the application configured no SDK: the global
  providers' no-op tracer and meter (the default);
- ``on``: what a service runs in production: an SDK tracer provider sampling every trace and
  exporting every span through a batch processor (the export runs in the SDK's own thread;
  the exporter here drops the spans: the cost is the SDK's, not I/O), and an SDK meter
  provider aggregating every metric, collected by a periodic reader at the SDK's default
  interval (60 s) for an exporter that drops them;
- ``sampled``: the same with one trace in ten sampled (``ParentBased(TraceIdRatioBased(0.1))``,
  what a busy service runs).

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
from opentelemetry.sdk.metrics.export import (
    MetricExporter,
    MetricExportResult,
    MetricsData,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ParentBased, Sampler, TraceIdRatioBased
from overhead import FULL, QUICK, Fetch, Size, interleaved, paired, task_server

from kling_async import KlingClient, RetryPolicy

CONCURRENCIES = (1, 16)
TARGETS = {"off": 0.99, "on": 0.90, "sampled": 0.90}
BASELINE = "without"


class _Dropped(SpanExporter):
    """An exporter that takes every span and keeps none (the cost is the SDK's, not I/O)."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


class _DroppedMetrics(MetricExporter):
    """An exporter that takes every collection of metrics and keeps none."""

    def export(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
    ) -> MetricExportResult:
        return MetricExportResult.SUCCESS

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return True

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        return None


def tracer_provider(sampler: Sampler | None = None) -> TracerProvider:
    """A production tracer provider: spans exported by a batch processor (its own thread)."""
    provider = TracerProvider() if sampler is None else TracerProvider(sampler=sampler)
    provider.add_span_processor(BatchSpanProcessor(_Dropped()))
    return provider


def meter_provider() -> MeterProvider:
    """A production meter provider: collected by a periodic reader at the SDK's default
    interval."""
    return MeterProvider(metric_readers=[PeriodicExportingMetricReader(_DroppedMetrics())])


@contextlib.asynccontextmanager
async def contenders(url: str, task_id: str) -> AsyncIterator[dict[str, Fetch]]:
    """The four clients, open, each fetching `task_id` from `url`."""
    traced = tracer_provider()
    sampling = tracer_provider(ParentBased(TraceIdRatioBased(0.1)))
    metered = meter_provider()
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
            KlingClient(**common, tracer_provider=traced, meter_provider=metered) as on,
            KlingClient(**common, tracer_provider=sampling, meter_provider=metered) as sampled,
        ):
            clients = {"without": without, "off": off, "on": on, "sampled": sampled}
            yield {
                name: functools.partial(client.get_task, task_id)
                for name, client in clients.items()
            }
    finally:
        sampling.shutdown()
        traced.shutdown()
        metered.shutdown()


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
