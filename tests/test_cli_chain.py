"""`kling-async chain`: one line from a prompt to a long video; killed, it resumes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_cli_resume import HALF_SECOND, ThreadedServer

KEY = "chain-test-key"


@pytest.fixture
def gateway() -> Iterator[ThreadedServer]:
    threaded = ThreadedServer(dialect="gateway", api_key=KEY, speed=240, durations=HALF_SECOND)
    yield threaded
    threaded.close()


def chain_command(server: ThreadedServer, *args: str) -> tuple[list[str], dict[str, str]]:
    command = [sys.executable, "-m", "kling_async", "chain", *args, "--poll-interval", "0.05"]
    env = {
        **os.environ,
        "KLING_API_KEY": KEY,
        "KLING_BASE_URL": server.server.url,
        "KLING_DIALECT": server.server.dialect,
    }
    return command, env


def run(command: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True, timeout=120)


def creates(server: ThreadedServer) -> list[dict[str, Any]]:
    requests = server.call(lambda: list(server.server.record.requests))
    return [r.body for r in requests if r.method == "POST" and r.status == 200]


def test_a_chain_killed_in_step_five_resumes(gateway: ThreadedServer, tmp_path: Path) -> None:
    """SIGKILL while step 5 runs; the same command ends the chain: the source and each of
    the eight steps created exactly once, each step extending the one before."""
    command, env = chain_command(
        gateway, "--from-prompt", "a paper boat", "--steps", "8", "--prompt", "on", "--json"
    )
    process = subprocess.Popen(
        command, env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    gateway.wait_for(lambda s: s.record.create_count >= 6)  # the source and steps 1 to 5
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=10)
    assert gateway.call(lambda: gateway.server.record.create_count) < 9
    finished = run(command, env, tmp_path)
    assert finished.returncode == 0, finished.stderr
    summary = json.loads(finished.stdout.splitlines()[-1])
    assert summary["steps"] == 8
    bodies = creates(gateway)
    assert len(bodies) == 9
    record = gateway.server.record
    parents = [body["video_id"] for body in bodies[1:]]
    assert gateway.call(lambda: [record.creates_for(video) for video in parents]) == [1] * 8
    assert [body["task_id"] for body in bodies[1:]][1:] == summary["task_ids"][:-1]
    assert summary["duration"] is not None and float(summary["duration"]) >= 5 + 8 * 4


def test_a_chain_past_three_minutes_sends_nothing(gateway: ThreadedServer, tmp_path: Path) -> None:
    """The command refuses a chain that would pass 3 minutes: one line, exit 2 (an input
    error, nothing sent), no request."""
    command, env = chain_command(gateway, "vid-1", "--task-id", "t-1", "--steps", "50")
    finished = run(command, env, tmp_path)
    assert finished.returncode == 2
    assert "3 minutes" in finished.stderr and "Traceback" not in finished.stderr
    assert gateway.call(lambda: len(gateway.server.record.requests)) == 0


def test_chain_downloads_the_final_video(gateway: ThreadedServer, tmp_path: Path) -> None:
    """--download saves the longest video; progress lines name the steps and the time left."""
    command, env = chain_command(
        gateway, "vid-1", "--task-id", "t-1", "--until", "12", "--download", str(tmp_path / "out")
    )
    finished = run(command, env, tmp_path)
    assert finished.returncode == 0, finished.stderr
    assert "step 1/~" in finished.stderr and "ETA" in finished.stderr  # an estimate, marked
    files = list((tmp_path / "out").iterdir())
    assert len(files) == 1 and files[0].stat().st_size > 0
    assert "saved" in finished.stdout


def test_a_fixed_number_of_steps_is_shown_as_such(gateway: ThreadedServer, tmp_path: Path) -> None:
    """With --steps the count is known: "step 1/2", not the "~" of an estimate."""
    command, env = chain_command(gateway, "vid-1", "--task-id", "t-1", "--steps", "2")
    finished = run(command, env, tmp_path)
    assert finished.returncode == 0, finished.stderr
    assert "step 1/2 " in finished.stderr and "step 2/2 " in finished.stderr
    assert "/~" not in finished.stderr


def test_the_demo_grows_chains_beside_the_extensions(tmp_path: Path) -> None:
    """The demo also grows a few videos from prompts to about 30 s."""
    command = [sys.executable, "-m", "kling_async", "demo", "--count", "2", "--chains", "2"]
    finished = subprocess.run(
        [*command, "--speed", "1000"], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert finished.returncode == 0, finished.stderr
    lines = [line for line in finished.stdout.splitlines() if line.startswith("demo-chain-")]
    assert len(lines) == 2
    assert "Growing 2 videos from prompts to 30 s" in finished.stderr


def write_lines(path: Path, lines: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))


def test_a_batch_line_may_ask_for_a_chain(gateway: ThreadedServer, tmp_path: Path) -> None:
    """Lines with steps or until run as chains beside the extensions; a rerun replays all."""
    write_lines(
        tmp_path / "in.jsonl",
        [
            {"video_id": "v1", "task_id": "t1", "key": "one"},
            {"video_id": "v2", "task_id": "t2", "steps": 3, "prompt": "on", "key": "grow"},
            {"video_id": "v3", "task_id": "t3", "until": 12, "key": "long"},
        ],
    )
    command = [
        sys.executable, "-m", "kling_async", "batch", str(tmp_path / "in.jsonl"),
        "--out", str(tmp_path / "out.jsonl"), "--poll-interval", "0.05",
    ]  # fmt: skip
    env = chain_command(gateway)[1]
    finished = run(command, env, tmp_path)
    assert finished.returncode == 0, finished.stderr
    results = (tmp_path / "out.jsonl").read_text().splitlines()
    lines = {line["key"]: line for line in map(json.loads, results)}
    assert {line["status"] for line in lines.values()} == {"succeeded"}
    assert lines["grow"]["steps"] == 3 and len(lines["grow"]["task_ids"]) == 3
    assert float(lines["long"]["duration"]) >= 12
    created = gateway.call(lambda: gateway.server.record.create_count)
    assert created == 1 + 3 + lines["long"]["steps"]
    again = run(command, env, tmp_path)
    assert again.returncode == 0, again.stderr
    assert gateway.call(lambda: gateway.server.record.create_count) == created


def test_a_chain_line_past_three_minutes_stops_the_batch_before_sending(
    gateway: ThreadedServer, tmp_path: Path
) -> None:
    """A chain line that would pass 3 minutes is named by its number; nothing is sent."""
    write_lines(
        tmp_path / "in.jsonl",
        [{"video_id": "v1", "task_id": "t1"}, {"video_id": "v2", "task_id": "t2", "steps": 60}],
    )
    command = [
        sys.executable, "-m", "kling_async", "batch", str(tmp_path / "in.jsonl"),
        "--out", str(tmp_path / "out.jsonl"),
    ]  # fmt: skip
    finished = run(command, chain_command(gateway)[1], tmp_path)
    assert finished.returncode == 2
    assert "in.jsonl:2:" in finished.stderr and "3 minutes" in finished.stderr
    assert gateway.call(lambda: len(gateway.server.record.requests)) == 0
