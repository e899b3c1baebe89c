"""The kling-async command: every command, its exit codes, its output, and no tracebacks."""

from __future__ import annotations

import io
import json
import os
import pty
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TextIO

import pytest
from helpers import fake_server_process, read_terminal

from kling_async import BatchEvent, BatchEventKind, BatchOutcome, Task, TaskKind, TaskStatus
from kling_async import VideoExtendRequest as Request
from kling_async._display import Progress, RichProgress, progress_for
from kling_async.cli import main

KEY = "cli-test-key"


def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run the command in a subprocess, as a user would."""
    return subprocess.run(
        [sys.executable, "-m", "kling_async", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=timeout,
        check=False,
    )


@pytest.fixture(scope="module")
def fake_server() -> Iterator[str]:
    """`kling-async fake-server` in its own process; yields its URL."""
    with fake_server_process("--speed", "1000", "--api-key", KEY) as server:
        yield server.url
    assert server.returncode == 130
    assert "Traceback" not in server.stderr
    assert server.log[-1].startswith("Saw ")


def env_for(url: str) -> dict[str, str]:
    return {"KLING_API_KEY": KEY, "KLING_BASE_URL": url, "KLING_DIALECT": "gateway"}


QUICK = ("--poll-interval", "0.02")


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    """--version prints the package version."""
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert re.match(r"kling-async \d", capsys.readouterr().out)


@pytest.mark.parametrize("command", ["extend", "status", "watch", "batch", "fake-server", "demo"])
def test_help_everywhere(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Every command explains itself."""
    with pytest.raises(SystemExit) as exited:
        main([command, "--help"])
    assert exited.value.code == 0
    assert "usage: kling-async" in capsys.readouterr().out


def test_no_command_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    """Without a command: the help, exit code 2."""
    assert main([]) == 2
    assert "commands" in capsys.readouterr().err


def test_extend_wait_then_status(fake_server: str) -> None:
    """extend --wait follows the task to success; status reads it again, as JSON."""
    done = run_cli(
        "extend",
        "vid-1",
        "--task-id",
        "p-1",
        "--prompt",
        "on",
        "--wait",
        "--json",
        *QUICK,
        env=env_for(fake_server),
    )
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert lines[0]["status"] == "submitted"
    assert lines[-1]["status"] == "succeeded"  # the API's "succeed", as a person reads it
    assert lines[-1]["videos"][0]["url"].startswith(fake_server)
    status = run_cli("status", lines[0]["task_id"], env=env_for(fake_server))
    assert status.returncode == 0
    assert status.stdout.split()[1] == "succeeded"


def test_extend_and_download(fake_server: str, tmp_path: Path) -> None:
    """extend --download waits for the task and saves its video."""
    done = run_cli(
        "extend",
        "vid-2",
        "--task-id",
        "p",
        "--download",
        str(tmp_path),
        *QUICK,
        env=env_for(fake_server),
    )
    assert done.returncode == 0, done.stderr
    saved = list(tmp_path.iterdir())
    assert len(saved) == 1
    assert f"saved {saved[0]}" in done.stdout


def test_watch_many(fake_server: str) -> None:
    """watch follows several tasks to their ends."""
    ids = []
    for n in range(2):
        made = run_cli("extend", f"v-{n}", "--task-id", "p", "--json", env=env_for(fake_server))
        ids.append(json.loads(made.stdout)["task_id"])
    watched = run_cli("watch", *ids, *QUICK, env=env_for(fake_server))
    assert watched.returncode == 0, watched.stderr
    assert watched.stdout.count(" succeeded") == 2


@pytest.mark.parametrize(
    ("args", "env", "code", "says"),
    [
        (["status", "123"], {"KLING_API_KEY": "wrong"}, 1, "Invalid API key"),
        (["status", "999"], {}, 1, "not exist"),
        (["extend", ""], {}, 2, "video_id"),
        (["extend", "v"], {}, 2, "task_id"),
        (["status", "1"], {"KLING_API_KEY": ""}, 2, "No credentials"),
    ],
)
def test_errors_are_one_clear_line(
    fake_server: str, args: list[str], env: dict[str, str], code: int, says: str
) -> None:
    """Failures print one line naming the problem, no traceback, and a non-zero code."""
    result = run_cli(*args, env={**env_for(fake_server), **env})
    assert result.returncode == code
    assert says in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_secrets_stay_out_of_cli_output(fake_server: str) -> None:
    """A refused key is not echoed by the CLI."""
    secret = "sk-cli-secret-never-printed"
    result = run_cli("status", "1", env={**env_for(fake_server), "KLING_API_KEY": secret})
    assert result.returncode == 1
    assert secret not in result.stdout + result.stderr


def test_demo_runs_and_summarises() -> None:
    """The demo runs a batch on the embedded server and prints a summary."""
    result = run_cli("demo", "--count", "6", "--concurrency", "3", "--speed", "1000")
    assert result.returncode == 0, result.stderr
    assert "6 of 6" in result.stdout or re.search(r"\d of 6 extensions succeeded", result.stdout)
    assert "done" in result.stderr
    assert "The server saw 6 creates" in result.stderr


def _events() -> list[BatchEvent]:
    request = Request("v")
    running = Task("t", TaskKind.VIDEO_EXTEND, TaskStatus.PROCESSING)
    done = Task("t", TaskKind.VIDEO_EXTEND, TaskStatus.SUCCEED)
    return [
        BatchEvent(BatchEventKind.SUBMITTED, request, task=running),
        BatchEvent(
            BatchEventKind.FINISHED, request, task=done, outcome=BatchOutcome(request, done)
        ),
    ]


def test_progress_without_a_terminal() -> None:
    """Piped output gets plain lines, no control characters."""
    stream = io.StringIO()
    progress = Progress(total=1, stream=stream, interval=0.0)
    for event in _events():
        progress.on_event(event)
    progress.finish()
    text = stream.getvalue()
    assert text.splitlines()[-1].startswith("1/1 done (0 failed) · ETA - · ")
    assert "\r" not in text
    assert "\x1b" not in text


def _drawn_on_a_terminal(make: Callable[[TextIO], Progress]) -> tuple[Progress, str]:
    """The display `make` builds on a pseudo-terminal, after one batch's events, and all it
    wrote there (read until the terminal side is closed: one read may return only the
    first of several writes)."""
    controller, terminal = pty.openpty()
    with open(terminal, "w", closefd=True) as stream:
        progress = make(stream)
        for event in _events():
            progress.on_event(event)
        progress.finish()
    return progress, read_terminal(controller)


def test_progress_on_a_terminal() -> None:
    """On a (pseudo-)terminal the line is redrawn in place."""
    _, shown = _drawn_on_a_terminal(lambda stream: Progress(total=1, stream=stream))
    assert "\r\x1b[2K" in shown
    assert "1/1 done" in shown


def test_rich_bar_on_a_terminal() -> None:
    """With rich installed, a terminal gets a bar with the counts; the final state is drawn."""
    progress, shown = _drawn_on_a_terminal(lambda stream: progress_for(1, stream))
    assert isinstance(progress, RichProgress)
    assert "1/1 done" in shown
    assert "(0 failed)" in shown
    assert "━" in shown


def test_no_rich_bar_without_a_terminal() -> None:
    """A pipe or a file gets the plain lines, even with rich installed."""
    progress = progress_for(1, io.StringIO())
    assert type(progress) is Progress


def test_module_entry_point_exists() -> None:
    """`python -m kling_async` is the same command."""
    assert (Path(main.__code__.co_filename).parent / "__main__.py").exists()


def _batch_input(tmp_path: Path, lines: list[str]) -> Path:
    path = tmp_path / "in.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_batch_writes_results_and_exits_0(fake_server: str, tmp_path: Path) -> None:
    """A batch writes one result line per request, with the request's fields and outcome."""
    source = _batch_input(
        tmp_path,
        [json.dumps({"video_id": f"v{n}", "task_id": f"p{n}", "prompt": "on"}) for n in range(4)],
    )
    out = tmp_path / "out.jsonl"
    done = run_cli("batch", str(source), "--out", str(out), *QUICK, env=env_for(fake_server))
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(line["video_id"] for line in lines) == ["v0", "v1", "v2", "v3"]
    for line in lines:
        assert line["status"] == "succeeded"
        assert line["task_id"].startswith("p")  # the request's parent task, kept
        assert line["new_task_id"]
        assert line["video_urls"][0].startswith(fake_server)
    assert "4 of 4 extensions succeeded" in done.stdout
    assert (tmp_path / "out.jsonl.journal").exists()


def test_batch_stops_before_sending_on_a_bad_line(fake_server: str, tmp_path: Path) -> None:
    """A malformed line is named by number; nothing is sent; exit code 2."""
    source = _batch_input(
        tmp_path,
        [json.dumps({"video_id": "v1", "task_id": "p"}), "{oops", json.dumps({"video": "x"})],
    )
    out = tmp_path / "out.jsonl"
    done = run_cli("batch", str(source), "--out", str(out), env=env_for(fake_server))
    assert done.returncode == 2
    assert "in.jsonl:2: not valid JSON" in done.stderr
    assert "in.jsonl:3: unknown field 'video'" in done.stderr
    assert "nothing was sent" in done.stderr
    assert not out.exists()


def test_batch_can_skip_bad_lines(fake_server: str, tmp_path: Path) -> None:
    """With --skip-invalid the good lines run and the bad ones are reported."""
    source = _batch_input(tmp_path, [json.dumps({"video_id": "v1", "task_id": "p"}), "[1, 2]"])
    out = tmp_path / "out.jsonl"
    done = run_cli(
        "batch", str(source), "--out", str(out), "--skip-invalid", *QUICK, env=env_for(fake_server)
    )
    assert done.returncode == 0, done.stderr
    assert "skipped" in done.stderr
    assert len(out.read_text().splitlines()) == 1


@pytest.mark.parametrize(
    ("setup", "says"),
    [
        ("missing input", "No such file"),
        ("unwritable output", "cannot write results"),
        ("foreign journal", "not a kling_async journal"),
    ],
)
def test_batch_bad_files_are_one_clear_line(
    fake_server: str, tmp_path: Path, setup: str, says: str
) -> None:
    """A missing input, an unwritable output or a foreign journal: one line, no traceback."""
    source = _batch_input(tmp_path, [json.dumps({"video_id": "v1", "task_id": "p"})])
    out = tmp_path / "out.jsonl"
    args = ["batch", str(source), "--out", str(out)]
    if setup == "missing input":
        args[1] = str(tmp_path / "nope.jsonl")
    elif setup == "unwritable output":
        args[3] = str(tmp_path / "no-such-dir" / "out.jsonl")
    else:
        (tmp_path / "foreign.db").write_bytes(b"SQLite format 3\x00" + b"\x07" * 4000)
        args += ["--journal", str(tmp_path / "foreign.db")]
    done = run_cli(*args, env=env_for(fake_server))
    assert done.returncode in (1, 2)
    assert says in done.stderr
    assert "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("example", ["extend_one.py", "batch_with_progress.py"])
def test_examples_run(example: str, tmp_path: Path) -> None:
    """The runnable examples work as written."""
    script = Path(__file__).parent.parent / "examples" / example
    result = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "TMPDIR": str(tmp_path)},
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr


def test_watch_of_an_unknown_task_is_one_line(fake_server: str) -> None:
    """watch follows tasks in a group; its errors still come out as one line."""
    result = run_cli("watch", "no-such-task", env=env_for(fake_server))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_wrong_key_stops_a_batch_early(fake_server: str, tmp_path: Path) -> None:
    """An authentication error is about the account: the batch stops taking requests."""
    lines = [json.dumps({"video_id": f"v{n}", "task_id": "p"}) for n in range(30)]
    source = _batch_input(tmp_path, lines)
    out = tmp_path / "out.jsonl"
    env = {**env_for(fake_server), "KLING_API_KEY": "wrong-key"}
    done = run_cli("batch", str(source), "--out", str(out), "--concurrency", "2", env=env)
    assert done.returncode == 1
    assert "stopping the batch" in done.stderr
    assert "request(s) were not sent because the batch stopped" in done.stderr
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(line["video_id"] for line in lines) == sorted(f"v{n}" for n in range(30))
    unsent = [line for line in lines if line["status"] == "not sent"]
    assert len(unsent) >= 27
    assert all(line["error"].startswith("Not sent: ") for line in unsent)


@pytest.mark.parametrize(
    ("third", "says"),
    [
        ({"video_id": "v3", "task_id": "p", "key": "a"}, "key 'a' is already used on line 1"),
        (
            {"video_id": "v2", "task_id": "p"},
            'the same request as line 2 (give each its own "key" to send both)',
        ),
    ],
)
def test_batch_refuses_shared_keys_before_sending(
    fake_server: str, tmp_path: Path, third: dict[str, str], says: str
) -> None:
    """A line with the key (or the very request) of an earlier line is a bad line: both line
    numbers named, nothing sent, exit code 2."""
    lines = [{"video_id": "v1", "task_id": "p", "key": "a"}, {"video_id": "v2", "task_id": "p"}]
    source = _batch_input(tmp_path, [json.dumps(line) for line in [*lines, third]])
    out = tmp_path / "out.jsonl"
    done = run_cli("batch", str(source), "--out", str(out), env=env_for(fake_server))
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        f"kling-async: {source}:3: {says}",
        f"kling-async: error: 1 invalid line(s) in {source}; nothing was sent "
        "(fix them, or pass --skip-invalid)",
    ]
    assert not out.exists()


def test_batch_skips_a_line_sharing_a_key(fake_server: str, tmp_path: Path) -> None:
    """With --skip-invalid the later line is skipped and named; the first one runs."""
    lines = [{"video_id": "v1", "task_id": "p", "key": "a"}, {"video_id": "v2", "task_id": "p"}]
    lines.append({"video_id": "v3", "task_id": "p", "key": "a"})
    source = _batch_input(tmp_path, [json.dumps(line) for line in lines])
    out = tmp_path / "out.jsonl"
    done = run_cli(
        "batch", str(source), "--out", str(out), "--skip-invalid", *QUICK, env=env_for(fake_server)
    )
    assert done.returncode == 0, done.stderr
    assert f"kling-async: skipped {source}:3: key 'a' is already used on line 1" in done.stderr
    results = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(line["video_id"] for line in results) == ["v1", "v2"]


def test_download_folders_are_made_before_sending(fake_server: str, tmp_path: Path) -> None:
    """A download folder that does not exist yet is created, for extend and for batch."""
    one = tmp_path / "new" / "one"
    done = run_cli(
        "extend", "v", "--task-id", "p", "--download", str(one), *QUICK, env=env_for(fake_server)
    )
    assert done.returncode == 0, done.stderr
    assert len(list(one.glob("*.mp4"))) == 1
    many = tmp_path / "new" / "many"
    source = _batch_input(
        tmp_path, [json.dumps({"video_id": f"v{n}", "task_id": "p"}) for n in range(2)]
    )
    done = run_cli(
        "batch",
        str(source),
        "--out",
        str(tmp_path / "o.jsonl"),
        "--download",
        str(many),
        *QUICK,
        env=env_for(fake_server),
    )
    assert done.returncode == 0, done.stderr
    assert len(list(many.glob("*.mp4"))) == 2


def test_bad_json_is_located_by_column(fake_server: str, tmp_path: Path) -> None:
    """A broken line names the column where it breaks, not the newline."""
    source = _batch_input(tmp_path, ['{"video_id": "v1", "task_id": "p"'])
    done = run_cli(
        "batch", str(source), "--out", str(tmp_path / "o.jsonl"), env=env_for(fake_server)
    )
    assert "in.jsonl:1: not valid JSON" in done.stderr
    assert "column 34" in done.stderr


def test_watch_of_several_unknown_tasks_is_a_line_each(fake_server: str) -> None:
    """Each task that cannot be followed gets one line; no traceback."""
    result = run_cli("watch", "nope-1", "nope-2", "nope-3", env=env_for(fake_server))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 3


def test_downloads_are_named_after_their_input_row(fake_server: str, tmp_path: Path) -> None:
    """--download names each file after its row's key (else its video) and the new video's
    id, and the summary shows where each was saved."""
    rows = [
        {"video_id": "v1", "task_id": "p", "key": "row-1"},
        {"video_id": "v2", "task_id": "p", "key": "shots/2 b"},
        {"video_id": "v3", "task_id": "p"},
    ]
    source = _batch_input(tmp_path, [json.dumps(row) for row in rows])
    folder = tmp_path / "videos"
    out = tmp_path / "o.jsonl"
    done = run_cli(
        "batch", str(source), "--out", str(out), "--download", str(folder), *QUICK,
        env=env_for(fake_server),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    results = {line["video_id"]: line for line in map(json.loads, out.read_text().splitlines())}
    for row, prefix in zip(rows, ["row-1_", "shots_2_b_", "v3_"], strict=True):
        (saved,) = results[row["video_id"]]["files"]
        new_video = results[row["video_id"]]["video_ids"][0]
        assert Path(saved) == folder / f"{prefix}{new_video}.mp4"
        assert Path(saved).exists()
        assert f"    {saved}\n" in done.stdout
