"""Every benchmark runs at its tiny ``--quick`` size, so none can rot unnoticed.

These check that each script finishes and writes sane figures, never the timing targets:
the targets are for full-size runs on a quiet machine (see benchmarks/README.md).
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def run_quick(name: str, out: Path, *options: str, written: str | None = None) -> dict[str, Any]:
    """Run ``benchmarks/<name>.py --quick`` into `out`; the JSON it wrote (`written`.quick.json
    when the options name it differently)."""
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / f"{name}.py"), "--quick", "--out", str(out), *options],
        capture_output=True,
        text=True,
        timeout=600,  # a guard against a hang, not a timing: shared machines run slow
        check=False,
    )
    assert done.returncode == 0, done.stderr
    written = written or name
    payload: dict[str, Any] = json.loads((out / f"{written}.quick.json").read_text())
    assert payload["benchmark"] == written
    assert payload["quick"] is True
    assert {"date", "python", "cpu_count", "platform"} <= payload["machine"].keys()
    return payload


def positive(value: object) -> bool:
    """A finite number above zero."""
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


def test_overhead_measures_all_three_contenders(tmp_path: Path) -> None:
    """The overhead run reports req/s of aiohttp, httpx and ours at 1, 16 and 256."""
    results = run_quick("overhead", tmp_path)["results"]
    assert set(results["by_concurrency"]) == {"1", "16", "256"}
    for measured in results["by_concurrency"].values():
        for name in ("aiohttp", "httpx", "kling_async"):
            assert positive(measured[name]["rps_median"])
            assert positive(measured[name]["cpu_us_per_request"])
    assert all(positive(r["ours_over_aiohttp"]) for r in results["ratios"].values())


def test_overhead_fetches_a_succeeded_task_on_request(tmp_path: Path) -> None:
    """``--state succeeded`` measures a finished task and says so in its own file."""
    payload = run_quick("overhead", tmp_path, "--state", "succeeded", written="overhead-succeeded")
    assert payload["parameters"]["task_state"] == "succeeded"
    assert set(payload["results"]["by_concurrency"]) == {"1", "16", "256"}


@pytest.mark.skipif(shutil.which("valgrind") is None, reason="needs valgrind (callgrind)")
def test_instructions_counts_both_contenders_in_both_states(tmp_path: Path) -> None:
    """The instruction count covers raw aiohttp and ours, for a running and a finished task."""
    results = run_quick("instructions", tmp_path)["results"]
    assert set(results) == {"processing", "succeeded"}
    for figures in results.values():
        counts = figures["instructions_per_request"]
        assert set(counts) == {"aiohttp", "kling_async"}
        assert all(count > 10_000 for count in counts.values())  # a request, not a no-op
        assert positive(figures["aiohttp_over_ours"])


def test_polling_compares_the_schedules(tmp_path: Path) -> None:
    """The polling run reports every schedule on three mixes, each beside the optimal reads
    at its delay; the oracle polls once with no delay."""
    results = run_quick("polling", tmp_path)["results"]
    runs = results["distributions"]
    assert len(runs) == 3
    for rows in runs.values():
        learned = rows["default PollPolicy(), learned"]
        assert learned["optimal_polls_per_task"] >= 1
        assert learned["over_optimal"] == pytest.approx(
            learned["polls_per_task"] / learned["optimal_polls_per_task"]
        )
    schedules = next(iter(runs.values()))
    assert schedules["oracle (one poll at completion)"]["polls_per_task"] == 1
    assert schedules["oracle (one poll at completion)"]["delay_mean_s"] == 0
    for name in ("default PollPolicy(), learned", "fixed 5 s loop", "fixed 15 s loop"):
        assert schedules[name]["polls_per_task"] >= 1
        assert 0 <= schedules[name]["delay_mean_s"] <= schedules[name]["delay_max_s"]
    assert schedules["fixed 5 s loop"]["delay_max_s"] <= 5.0
    live = schedules["with callbacks (live, default policy scaled)"]
    assert live["polls_per_task"] >= 1
    assert live["delay_mean_s"] >= -0.01  # the server's timestamps are whole milliseconds


def test_batch_finishes_every_task(tmp_path: Path) -> None:
    """The batch run extends every video and cannot beat the ideal schedule."""
    results = run_quick("batch", tmp_path)["results"]
    assert results["succeeded"] == 40
    assert results["failed"] == 0
    assert results["wall_over_ideal"] >= 1.0


def test_scale_measures_memory_cpu_and_lag(tmp_path: Path) -> None:
    """The scale run measures its watchers' memory, CPU per poll and loop lag."""
    (run,) = run_quick("scale", tmp_path)["results"]["runs"]
    assert run["watchers"] == 1000
    assert run["polls_in_window"] > 0
    for key in ("kib_per_task", "cpu_us_per_poll", "lag_p99_ms"):
        assert positive(run[key]), key


def test_list_reads_compares_per_task_and_list_based_reads(tmp_path: Path) -> None:
    """The list-reads run measures both contenders at each number in flight; alone, a
    task costs list-based reads no more than per-task polling."""
    results = run_quick("list_reads", tmp_path)["results"]
    runs = results["runs"]
    assert len(runs) == 6
    for run in runs.values():
        assert run["requests_per_task"] >= 1 or run["list_reads"]
        assert run["delay_mean_s"] >= -0.1  # the server's timestamps are whole milliseconds
    alone = [r for r in runs.values() if r["in_flight"] == 1]
    assert all(r["list_pages"] == 0 for r in alone)


def test_outage_counts_reads_per_watcher_and_every_recovery(tmp_path: Path) -> None:
    """The outage run counts each watcher's reads against the target, for the client as it
    is and as it was before, and every watch ends with its task's success."""
    runs = run_quick("outage", tmp_path)["results"]["runs"]
    assert {run["client"] for run in runs} == {"ours", "before"}
    for run in runs:
        assert run["recovered"] == run["watchers"]
        assert run["attempts_mean"] >= 1
        assert positive(run["target"])
        assert positive(run["over_before"])


def test_big_answer_measures_both_readers_on_every_shape(tmp_path: Path) -> None:
    """The big-answer run measures plain aiohttp and ours on each shape of a body past the
    cap; ours refuses it and holds less of it than the read that keeps it whole."""
    results = run_quick("big_answer", tmp_path)["results"]
    assert set(results) == {"announced", "chunked", "gzip"}
    for figures in results.values():
        assert "larger than the 4 MiB" in figures["kling_async"]["outcome"]
        assert figures["aiohttp"]["outcome"] == f"{8 * 1024 * 1024} bytes read"
        assert positive(figures["traced_ours_over_aiohttp"])
        assert figures["traced_ours_over_aiohttp"] < 1


def test_tracing_pairs_off_and_on_against_no_telemetry(tmp_path: Path) -> None:
    """The tracing run reports the three clients and both paired ratios at 1 and 16."""
    results = run_quick("tracing", tmp_path)["results"]
    assert set(results["by_concurrency"]) == {"1", "16"}
    for measured in results["by_concurrency"].values():
        clients = ("without", "off", "on", "sampled")
        assert all(positive(measured[name]["rps_median"]) for name in clients)
    for ratios in results["ratios"].values():
        assert all(positive(ratios[name]["paired_median"]) for name in clients[1:])


@pytest.mark.skipif(shutil.which("valgrind") is None, reason="needs valgrind (callgrind)")
def test_tracing_instructions_splits_the_cost_into_its_layers(tmp_path: Path) -> None:
    """The tracing count covers each layer (the client's hooks, the SDK's span, its export,
    sampling) and a metric point of each instrument, SDK and no-op."""
    results = run_quick("tracing_instructions", tmp_path)["results"]
    counts = results["instructions_per_request"]
    assert set(counts) == {"without", "hooks", "span", "on", "sampled"}
    assert all(count > 10_000 for count in counts.values())  # a request, not a no-op
    assert counts["without"] < counts["hooks"] < counts["span"]  # each layer costs something
    points = results["instructions_per_metric_point"]
    assert set(points) == {"counter add", "up-down counter add", "histogram record"}
    assert all(p["noop"] < p["sdk"] for p in points.values())


def test_coordination_measures_slots_round_trips_and_waits(
    tmp_path: Path, postgres_admin_url: str
) -> None:
    """The coordination run shares one batch between 1 and 2 worker processes on the real
    database: every worker hears every outcome, the fake never ran more than the quota, and
    each run reports its slot use, statements per request and waits for a slot."""
    results = run_quick("coordination", tmp_path, "--database-url", postgres_admin_url)
    runs = results["results"]["runs"]
    assert set(runs) == {"1x3#1", "2x3#1"}
    for run in runs.values():
        assert run["created"] == run["tasks"] == 12
        assert run["ok_per_worker"] == [12] * run["workers"]
        assert run["peak_running"] <= run["quota"] and run["over_limit_answers"] == 0
        assert 0 < run["utilisation"] <= 1.001
        assert 0 < run["utilisation_from_first_create"] <= 1.001
        assert run["detection_mean_ms"] >= 0 and run["hand_over_mean_ms"] >= 0
        assert run["request_round_trips_per_request"] >= 3  # intent, task, outcome at least
        assert run["wait_p99_ms"] >= run["wait_p50_ms"] >= 0
