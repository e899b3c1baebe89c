"""`kling-async batch` killed and run again: every request created once, every outcome kept.

The fake server runs in this process (on its own thread and loop) so the tests can read its
record and inject faults; the command runs in a subprocess that the tests kill.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

import pytest

from kling_async.testing import Durations, FakeKlingServer, Fault

KEY = "resume-test-key"
# Half a second of wall time per task: long enough to kill a run in the middle.
HALF_SECOND = Durations(submitted_for=5.0, median=120.0, sigma=0.3)
T = TypeVar("T")


class ThreadedServer:
    """A FakeKlingServer on a background event loop, driven from synchronous tests."""

    def __init__(self, **kwargs: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self.server = FakeKlingServer(**kwargs)
        self.call(self.server.start)

    def call(self, function: Callable[[], Any]) -> Any:
        """Run `function` (sync, or returning an awaitable) on the server's loop; its result."""

        async def run() -> Any:
            result = function()
            return await result if asyncio.iscoroutine(result) else result

        future: Future[Any] = asyncio.run_coroutine_threadsafe(run(), self._loop)
        return future.result(timeout=30)

    def wait_for(self, condition: Callable[[FakeKlingServer], bool], timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not self.call(lambda: condition(self.server)):
            assert time.monotonic() < deadline, "the batch made no progress"
            time.sleep(0.02)

    def close(self) -> None:
        self.call(self.server.close)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()


@pytest.fixture
def official() -> Iterator[ThreadedServer]:
    threaded = ThreadedServer(dialect="official", api_key=KEY, speed=240, durations=HALF_SECOND)
    yield threaded
    threaded.close()


@pytest.fixture
def gateway() -> Iterator[ThreadedServer]:
    threaded = ThreadedServer(dialect="gateway", api_key=KEY, speed=240, durations=HALF_SECOND)
    yield threaded
    threaded.close()


def write_input(path: Path, count: int) -> list[str]:
    keys = [f"row-{n}" for n in range(count)]
    lines = [
        json.dumps({"video_id": f"vid-{n}", "task_id": f"parent-{n}", "key": key})
        for n, key in enumerate(keys)
    ]
    path.write_text("\n".join(lines) + "\n")
    return keys


def batch_command(tmp_path: Path, server: ThreadedServer) -> tuple[list[str], dict[str, str]]:
    command = [
        sys.executable, "-m", "kling_async", "batch", str(tmp_path / "in.jsonl"),
        "--out", str(tmp_path / "out.jsonl"), "--concurrency", "20", "--poll-interval", "0.05",
    ]  # fmt: skip
    env = {
        **os.environ,
        "KLING_API_KEY": KEY,
        "KLING_BASE_URL": server.server.url,
        "KLING_DIALECT": server.server.dialect,
    }
    return command, env


def run_to_end(command: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)


def results(tmp_path: Path) -> list[dict[str, Any]]:
    lines = (tmp_path / "out.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def assert_created_once_each(server: ThreadedServer, count: int) -> None:
    record = server.server.record
    assert server.call(lambda: record.create_count) == count
    per_video = server.call(lambda: [record.creates_for(f"vid-{n}") for n in range(count)])
    assert per_video == [1] * count


def test_sigkill_mid_run_then_resume(official: ThreadedServer, tmp_path: Path) -> None:
    """Killed with SIGKILL mid-run, the same command finishes: 200 creates, 200 outcomes."""
    keys = write_input(tmp_path / "in.jsonl", 200)
    command, env = batch_command(tmp_path, official)
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    official.wait_for(lambda s: s.record.create_count >= 60)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=10)
    assert official.call(lambda: official.server.record.create_count) < 200
    finished = run_to_end(command, env)
    assert finished.returncode == 0, finished.stderr
    assert_created_once_each(official, 200)
    lines = results(tmp_path)
    assert sorted(line["key"] for line in lines) == sorted(keys)
    assert {line["status"] for line in lines} == {"succeeded"}


def _kill_with_creates_in_flight(server: ThreadedServer, tmp_path: Path) -> int:
    """Kill the run while creates are held by the server: sent, journaled as intents only."""
    command, env = batch_command(tmp_path, server)
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    server.wait_for(lambda s: s.record.create_count >= 50)
    server.call(lambda: server.server.faults.rate(Fault.delay(1.5), 1.0, method="POST"))
    posts = server.call(lambda: len(server.server.record.requests))
    time.sleep(0.6)  # creates now wait 1.5 s in the server: the client sends several meanwhile
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=10)
    server.call(server.server.faults.clear)
    time.sleep(1.6)  # the held creates complete on the server, as if the answers were lost
    assert server.call(lambda: len(server.server.record.requests)) > posts
    return int(server.call(lambda: server.server.record.create_count))


def test_kill_between_create_and_journal_is_reconciled(
    official: ThreadedServer, tmp_path: Path
) -> None:
    """Creates sent but never journaled are found by external id on resume, not re-sent."""
    write_input(tmp_path / "in.jsonl", 200)
    created_before = _kill_with_creates_in_flight(official, tmp_path)
    command, env = batch_command(tmp_path, official)
    finished = run_to_end(command, env)
    assert finished.returncode == 0, finished.stderr
    assert_created_once_each(official, 200)
    lookups = official.call(
        lambda: [r for r in official.server.record.requests if "/ka-" in r.path]
    )
    assert lookups, "the resumed run should have looked tasks up by external id"
    assert created_before > 50
    assert len(results(tmp_path)) == 200


def test_kill_between_create_and_journal_on_a_gateway(
    gateway: ThreadedServer, tmp_path: Path
) -> None:
    """A gateway cannot look tasks up: those requests are reported ambiguous, never re-sent."""
    write_input(tmp_path / "in.jsonl", 200)
    _kill_with_creates_in_flight(gateway, tmp_path)
    command, env = batch_command(tmp_path, gateway)
    finished = run_to_end(command, env)
    assert finished.returncode == 1
    record = gateway.server.record
    per_video = gateway.call(lambda: [record.creates_for(f"vid-{n}") for n in range(200)])
    assert max(per_video) == 1
    lines = results(tmp_path)
    assert len(lines) == 200
    ambiguous = [
        line for line in lines if "may or may not have been created" in line.get("error", "")
    ]
    assert ambiguous
    assert all(line["status"] == "error" for line in ambiguous)


def test_ctrl_c_stops_cleanly_and_resumes(official: ThreadedServer, tmp_path: Path) -> None:
    """SIGINT: exit code 130, a word on resuming, no traceback; the rerun completes."""
    write_input(tmp_path / "in.jsonl", 60)
    command, env = batch_command(tmp_path, official)
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    official.wait_for(lambda s: s.record.create_count >= 25)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=30)
    assert process.returncode == 130
    assert "run the same command again to resume" in err
    assert "Traceback" not in err
    finished = run_to_end(command, env)
    assert finished.returncode == 0, finished.stderr
    assert_created_once_each(official, 60)


def test_a_balance_stop_reports_every_request_and_the_next_run_sends_the_rest(
    gateway: ThreadedServer, tmp_path: Path
) -> None:
    """1102 on the first create: one result line per request (the unsent ones say so), exit
    code 1; the same command again sends each unsent request once and exits 0."""
    keys = write_input(tmp_path / "in.jsonl", 10)
    gateway.call(
        lambda: gateway.server.faults.push(
            Fault.http_error(429, 1102, "resource pack used up"), method="POST"
        )
    )
    command, env = batch_command(tmp_path, gateway)
    command[command.index("--concurrency") + 1] = "1"
    first = run_to_end(command, env)
    assert first.returncode == 1, first.stderr
    assert "9 request(s) were not sent because the batch stopped" in first.stderr
    lines = results(tmp_path)
    assert sorted(line["key"] for line in lines) == sorted(keys)
    assert sorted(line["status"] for line in lines) == ["error"] + ["not sent"] * 9
    assert gateway.call(lambda: gateway.server.record.create_count) == 0
    again = run_to_end(command, env)
    assert again.returncode == 0, again.stderr
    assert [line["status"] for line in results(tmp_path)] == ["succeeded"] * 10
    assert_created_once_each(gateway, 10)
