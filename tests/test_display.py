"""What the command shows: the progress line and bar at 80 columns, durations, the summary,
status words. Rendered to strings and pseudo-terminals; time comes from a hand-moved clock."""

from __future__ import annotations

import fcntl
import io
import os
import pty
import re
import select
import signal
import struct
import subprocess
import sys
import termios
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

import attrs
import pytest
from helpers import fake_server_process, read_terminal

from kling_async import BatchEvent, BatchEventKind, BatchOutcome, Task, TaskKind, TaskStatus, Video
from kling_async import VideoExtendRequest as Request
from kling_async._display import (
    BAR_WIDTH,
    Progress,
    RichProgress,
    human_duration,
    print_summary,
    progress_for,
    show_task,
    task_record,
)
from kling_async.errors import TaskFailedError

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


class Clock:
    """A monotonic clock moved by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def task(status: TaskStatus, task_id: str = "t") -> Task:
    return Task(task_id, TaskKind.VIDEO_EXTEND, status)


def submitted(request: Request) -> BatchEvent:
    return BatchEvent(BatchEventKind.SUBMITTED, request, task=task(TaskStatus.SUBMITTED))


def finished(request: Request, *, replayed: bool = False) -> BatchEvent:
    done = task(TaskStatus.SUCCEED)
    return BatchEvent(
        BatchEventKind.FINISHED,
        request,
        task=done,
        outcome=BatchOutcome(request, done),
        replayed=replayed,
    )


def test_a_burst_is_drawn_by_the_timer() -> None:
    """Events close together draw once; the timer's redraw then shows the whole burst."""
    clock, stream = Clock(), io.StringIO()
    progress = Progress(40, stream, clock=clock)
    requests = [Request(f"v{n}") for n in range(40)]  # a batch holds its requests
    for request in requests:
        progress.on_event(submitted(request))
    assert stream.getvalue().splitlines() == ["0/40 done (0 failed) · ETA - · 0.0/s · 1 submitted"]
    clock.now += 2.0
    progress.redraw()
    assert stream.getvalue().splitlines()[-1] == (
        "0/40 done (0 failed) · ETA - · 0.0/s · 40 submitted"
    )
    progress.redraw()  # nothing changed: a log gets no repeated line
    assert len(stream.getvalue().splitlines()) == 2


@pytest.mark.anyio
async def test_the_timer_redraws_until_cancelled() -> None:
    """redraw_every sleeps its interval and redraws, again and again."""
    stream = io.StringIO()
    progress = Progress(2, stream, interval=5.0, clock=Clock())
    sleeps: list[float] = []
    requests = [Request(f"v{n}") for n in range(3)]  # held, as a batch holds them: ids stay apart

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        progress.on_event(submitted(requests[len(sleeps) - 1]))  # a change to draw
        if len(sleeps) == 3:
            raise LookupError  # stands in for the cancellation that ends it

    with pytest.raises(LookupError):
        await progress.redraw_every(sleep)
    assert sleeps == [5.0, 5.0, 5.0]
    assert stream.getvalue().splitlines()[-1].endswith("· 2 submitted")  # the timer drew it


def test_requests_the_caller_let_go_are_counted_apart() -> None:
    """A request freed after its event cannot lend its id, and so its state, to a new one."""
    stream = io.StringIO()
    progress = Progress(3, stream, interval=0.0, clock=Clock())
    for n in range(3):
        progress.on_event(submitted(Request(f"v{n}")))  # nothing else holds the request
    assert stream.getvalue().splitlines()[-1].endswith("· 3 submitted")


def test_replayed_requests_are_not_counted_in_rate_or_eta() -> None:
    """After a resume, 30 replayed results do not make 3 live ones look fast."""
    clock, stream = Clock(), io.StringIO()
    progress = Progress(40, stream, interval=0.0, clock=clock)
    old, new = [Request(f"old{n}") for n in range(30)], [Request(f"new{n}") for n in range(3)]
    for request in old:
        progress.on_event(finished(request, replayed=True))
    clock.now += 30.0
    for request in new:
        progress.on_event(finished(request))
    assert progress.line() == "33/40 done (0 failed) · ETA 1 min · 0.1/s"


def test_the_batchs_eta_is_shown_and_counted_down() -> None:
    """The ETA the batch learned from its tasks' durations is shown, and counts down between
    events; before it has one, the live rate stands in."""
    clock, stream = Clock(), io.StringIO()
    progress = Progress(40, stream, interval=0.0, clock=clock)
    progress.on_event(submitted(Request("v0")))
    assert " · ETA - · " in progress.line()
    learned = BatchEvent(BatchEventKind.STATUS, Request("v1"), task=task(TaskStatus.PROCESSING))
    progress.on_event(attrs.evolve(learned, eta=190.0))
    assert " · ETA 3 min · " in progress.line()
    clock.now += 130.0
    assert " · ETA 1 min · " in progress.line()
    clock.now += 600.0  # overdue: never a negative time
    assert " · ETA 0 s · " in progress.line()


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.4, "0 s"),
        (42, "42 s"),
        (2160, "36 min"),
        (4320, "1 h 12 min"),
        (7200, "2 h"),
        (2166387, "25 d"),
        (3 * 86400 + 4 * 3600, "3 d 4 h"),
    ],
)
def test_durations_read_as_a_person_says_them(seconds: float, text: str) -> None:
    """No raw seconds: `ETA 2166387 s` reads `ETA 25 d`."""
    assert human_duration(seconds) == text


def _terminal_output(columns: int, make: Callable[[TextIO], Progress]) -> str:
    """Everything `make`'s display wrote to a pseudo-terminal `columns` wide, after 40 events
    of a batch (read until the terminal side closes)."""
    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    with open(terminal, "w", closefd=True) as stream:
        progress = make(stream)
        requests = [Request(f"v{n}") for n in range(40)]
        for request in requests[:12]:
            progress.on_event(submitted(request))
            progress.on_event(finished(request))
        for request in requests[12:]:
            progress.on_event(submitted(request))
        progress.redraw()
        progress.finish()
    return read_terminal(controller)


def _frames(shown: str) -> list[str]:
    return [ANSI.sub("", frame) for frame in re.split(r"[\r\n]+", shown) if ANSI.sub("", frame)]


def test_the_rich_bar_keeps_its_width_at_80_columns() -> None:
    """At 80 columns the bar is always BAR_WIDTH wide and no frame is wider than the screen;
    the line is cut at the end, where the least useful part is."""
    shown = _terminal_output(80, lambda stream: progress_for(40, stream))
    frames = _frames(shown)
    assert all(len(frame) <= 80 for frame in frames)
    last = frames[-1]
    assert re.match(f"[━╸╺]{{{BAR_WIDTH}}} 12/40 done \\(0 failed\\) · ETA ", last), last
    assert last.endswith("…") or "28 submitted" in last


def test_the_plain_line_fits_a_narrow_terminal() -> None:
    """Without rich, a line longer than the terminal is cut, so redrawing in place works."""
    shown = _terminal_output(40, lambda stream: Progress(40, stream))
    assert all(len(frame) <= 39 for frame in _frames(shown))
    assert "\r\x1b[2K12/40 done (0 failed) · ETA" in shown


def test_finish_draws_once() -> None:
    """finish twice (the end of a batch, then an interruption's cleanup) draws one line."""
    progress = progress_for(1, io.StringIO())
    progress.on_event(finished(Request("v")))
    stream = progress.stream
    progress.finish()
    progress.finish()
    assert isinstance(stream, io.StringIO)
    assert stream.getvalue().count("1/1 done") == 1
    assert not isinstance(progress, RichProgress)


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_summary_lists_failures_together_in_red(monkeypatch: pytest.MonkeyPatch) -> None:
    """Successes, then failures under their own heading (red on a terminal); each result on a
    line of its own, saved files rather than URLs."""
    monkeypatch.setenv("TERM", "xterm")
    good = Task(
        "t1",
        TaskKind.VIDEO_EXTEND,
        TaskStatus.SUCCEED,
        videos=(Video("n1", "https://cdn.example.com/" + "x" * 90 + ".mp4"),),
    )
    bad = Task("t2", TaskKind.VIDEO_EXTEND, TaskStatus.FAILED, status_message="risk control")
    outcomes = [
        BatchOutcome(Request("v-ok", key="row-1"), good, files=(Path("out/row-1_n1.mp4"),)),
        BatchOutcome(Request("v-bad"), bad, TaskFailedError(bad)),
        BatchOutcome(Request("v-url"), good),
    ]
    stream = Terminal()
    print_summary(outcomes, stream)
    assert stream.getvalue().splitlines() == [
        "Succeeded (2):",
        "  v-ok   succeeded  task t1",
        "    out/row-1_n1.mp4",
        "  v-url  succeeded  task t1",
        "    " + good.videos[0].url,
        "\x1b[31mFailed (1):\x1b[0m",
        "\x1b[31m  v-bad  failed  task t2\x1b[0m",
        "    risk control",
        "",
        "2 of 3 extensions succeeded.",
    ]


def test_one_word_per_status(capsys: pytest.CaptureFixture[str]) -> None:
    """`succeed` reads `succeeded` in lines and JSON alike; an unknown word is kept as sent."""
    show_task(task(TaskStatus.SUCCEED, "t1"), as_json=False)
    assert capsys.readouterr().out == "t1  succeeded\n"
    assert task_record(task(TaskStatus.SUCCEED))["status"] == "succeeded"
    odd = Task("t", TaskKind.VIDEO_EXTEND, TaskStatus.UNKNOWN, raw={"task_status": "queued"})
    assert odd.status_label == "queued"
    assert [s.label for s in TaskStatus] == [
        "submitted",
        "processing",
        "succeeded",
        "failed",
        "unknown",
    ]


def _read_until(controller: int, seen: bytearray, marker: bytes | None) -> None:
    """Read the terminal's output into `seen` until `marker` appears (None: until it closes)."""
    while marker is None or marker not in seen:
        ready, _, _ = select.select([controller], [], [], 120)  # a guard against a hang only
        assert ready, f"the command went quiet: {bytes(seen)!r}"
        try:
            chunk = os.read(controller, 65536)
        except OSError:  # EIO: every process holding the terminal side has exited
            return
        if not chunk:
            return
        seen += chunk


def test_ctrl_c_leaves_one_progress_line_then_the_message(tmp_path: Path) -> None:
    """Interrupted on a terminal: the progress line is ended once, the message follows on a
    line of its own, and nothing redraws the line afterwards."""
    source = tmp_path / "in.jsonl"
    source.write_text("".join(f'{{"video_id": "v{n}", "task_id": "p"}}\n' for n in range(4)))
    with fake_server_process("--speed", "0.01", "--quiet") as server:
        controller, terminal = pty.openpty()
        fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
        env = {**os.environ, "KLING_API_KEY": "test-api-key", "KLING_BASE_URL": server.url}
        command = [sys.executable, "-m", "kling_async", "batch", str(source)]
        with subprocess.Popen(
            [*command, "--out", str(tmp_path / "out.jsonl")],
            stdin=terminal,
            stdout=terminal,
            stderr=terminal,
            env={**env, "TERM": "xterm"},
        ) as batch:
            os.close(terminal)
            seen = bytearray()
            _read_until(controller, seen, b"4 submitted")
            batch.send_signal(signal.SIGINT)
            _read_until(controller, seen, None)
        os.close(controller)
    shown = seen.decode()
    assert batch.returncode == 130
    before, message, after = shown.partition(
        "kling-async: interrupted; run the same command again to resume"
    )
    assert message
    assert ANSI.sub("", before).endswith("\n")  # the bar's line was ended before the message
    assert "done" not in after
    assert "Traceback" not in shown
