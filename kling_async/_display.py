"""What the command line shows: the live progress line, the summary table, JSON records.

Rendering only; the command itself (`cli`) parses arguments and calls the library.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, TextIO

from ._wire import request_record
from .batch import BatchEvent, BatchEventKind, BatchOutcome
from .errors import NotSentError
from .models import Task, TaskStatus, subject_of

if TYPE_CHECKING:  # the fake server is loaded only by the commands that run it
    from .testing import RequestRecord, ServerRecord

__all__ = [
    "Progress",
    "RichProgress",
    "log_request",
    "outcome_record",
    "print_summary",
    "progress_for",
    "server_summary",
    "show_task",
    "task_record",
]


class Progress:
    """A live progress line: counts by state, rate and ETA (redrawn in place on a terminal).

    Without a terminal (CI, a pipe) it prints a plain line at most every few seconds, so logs
    stay readable.
    """

    def __init__(self, total: int, stream: TextIO, *, interval: float = 2.0) -> None:
        self.total = total
        self.stream = stream
        self.states: Counter[str] = Counter()
        self._latest: dict[int, str] = {}
        self._started = time.monotonic()
        self._last_drawn = 0.0
        self._interval = 0.1 if _is_terminal(stream) else interval

    def on_event(self, event: BatchEvent) -> None:
        """Take one batch event and redraw when it is time."""
        request = id(event.request)
        if event.kind is BatchEventKind.FINISHED and event.outcome is not None:
            self._move(request, "succeeded" if event.outcome.ok else "failed")
        elif event.kind is not BatchEventKind.RETRIED and event.task and not event.task.is_terminal:
            self._move(request, event.task.status_text)  # a terminal one counts at FINISHED
        now = time.monotonic()
        if now - self._last_drawn >= self._interval:
            self._last_drawn = now
            self._draw(self.line())

    def _move(self, request: int, state: str) -> None:
        previous = self._latest.get(request)
        if previous is not None:
            self.states[previous] -= 1
        self._latest[request] = state
        self.states[state] += 1

    def line(self) -> str:
        """The progress line as it stands."""
        done = self.states["succeeded"] + self.states["failed"]
        elapsed = max(time.monotonic() - self._started, 1e-9)
        rate = done / elapsed
        eta = f"{(self.total - done) / rate:.0f} s" if rate > 0 and done < self.total else "-"
        running = {
            state: count
            for state, count in sorted(self.states.items())
            if count and state not in ("succeeded", "failed")
        }
        states = ", ".join(f"{count} {state}" for state, count in running.items())
        return (
            f"{done}/{self.total} done ({self.states['succeeded']} succeeded, "
            f"{self.states['failed']} failed){'; ' + states if states else ''}; "
            f"{rate:.1f}/s; ETA {eta}"
        )

    def finish(self) -> None:
        """Draw the final line and end it."""
        self._draw(self.line())
        if _is_terminal(self.stream):
            self.stream.write("\n")
            self.stream.flush()

    def _draw(self, line: str) -> None:
        if _is_terminal(self.stream):
            self.stream.write("\r\x1b[2K" + line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()


class RichProgress(Progress):
    """The same counts, rate and ETA under a progress bar, drawn by rich on a terminal."""

    def __init__(self, total: int, stream: TextIO) -> None:
        super().__init__(total, stream)
        from rich.console import Console  # the `cli` extra; only needed on a terminal
        from rich.progress import BarColumn, TextColumn
        from rich.progress import Progress as Bar

        self._bar = Bar(
            BarColumn(),
            TextColumn("{task.description}"),
            console=Console(file=stream),
        )
        self._task = self._bar.add_task(self.line(), total=total)
        self._bar.start()

    def _draw(self, line: str) -> None:
        done = self.states["succeeded"] + self.states["failed"]
        self._bar.update(self._task, completed=done, description=line)

    def finish(self) -> None:
        """Draw the final state and release the terminal."""
        self._draw(self.line())
        self._bar.stop()


def progress_for(total: int, stream: TextIO) -> Progress:
    """rich's bar on a terminal when rich is installed; plain lines otherwise."""
    if _is_terminal(stream):
        try:
            return RichProgress(total, stream)
        except ImportError:
            pass
    return Progress(total, stream)


def _is_terminal(stream: TextIO) -> bool:
    return stream.isatty() and os.environ.get("TERM") != "dumb"


def print_summary(outcomes: Sequence[BatchOutcome], stream: TextIO) -> None:
    """A table of every outcome, then the totals."""
    rows = [("VIDEO", "STATUS", "TASK", "RESULT")]
    for outcome in outcomes:
        record = outcome_record(outcome)
        result = record.get("error") or (record.get("video_urls") or [""])[0]
        task = record["new_task_id"] or "-"
        rows.append((subject_of(outcome.request), record["status"], task, result))
    widths = [min(max(len(row[i]) for row in rows), 40) for i in range(3)]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row[:3], widths, strict=True)]
        stream.write("  ".join([*cells, _shorten(row[3], 90)]).rstrip() + "\n")
    succeeded = sum(outcome.ok and outcome.error is None for outcome in outcomes)
    stream.write(f"\n{succeeded} of {len(outcomes)} extensions succeeded.\n")
    stream.flush()


def outcome_record(outcome: BatchOutcome) -> dict[str, Any]:
    """One outcome as a flat JSON-ready record: the request's fields plus the result."""
    task = outcome.task
    record: dict[str, Any] = request_record(outcome.request)
    record["status"] = "succeeded" if outcome.ok and not outcome.error else _failure_status(outcome)
    record["new_task_id"] = task.id if task else None  # `task_id` is the request's parent
    if task is not None and task.videos:
        record["video_ids"] = [video.id for video in task.videos]
        record["video_urls"] = [video.url for video in task.videos]
    if outcome.files:
        record["files"] = [str(path) for path in outcome.files]
    if task is not None and task.status is TaskStatus.FAILED:
        record["error"] = task.status_message or "the task failed without a reason"
    elif outcome.error is not None:
        record["error"] = str(outcome.error)
    return record


def _failure_status(outcome: BatchOutcome) -> str:
    if isinstance(outcome.error, NotSentError):
        return "not sent"
    if outcome.task is not None and outcome.task.status is TaskStatus.FAILED:
        return "failed"
    if outcome.task is not None and outcome.task.status is TaskStatus.SUCCEED:
        return "download failed"
    return "error"


def show_task(task: Task, as_json: bool) -> None:
    """Print a task: a line (and its videos), or a JSON record."""
    if as_json:
        print(json.dumps(task_record(task)), flush=True)
        return
    line = f"{task.id}  {task.status_text}"
    if task.status_message:
        line += f"  ({task.status_message})"
    for video in task.videos:
        line += f"\n  video {video.id}: {video.url}"
    print(line, flush=True)


def task_record(task: Task) -> dict[str, Any]:
    """A task as a JSON-ready record."""
    return {
        "task_id": task.id,
        "kind": task.kind.value,
        "status": task.status_text,
        "status_message": task.status_message,
        "videos": [
            {"id": v.id, "url": v.url, "duration": str(v.duration) if v.duration else None}
            for v in task.videos
        ],
    }


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def log_request(record: RequestRecord) -> None:
    """One short line per request the fake server answered (no headers: they hold keys)."""
    answer = "dropped" if record.status is None else str(record.status)
    task = f" task {record.task_id}" if record.task_id else ""
    fault = f" [{record.fault}]" if record.fault else ""
    print(f"{record.method} {record.path} -> {answer}{task}{fault}", flush=True)


def server_summary(record: ServerRecord) -> str:
    """What the fake server saw, in one line."""
    refused = sum(r.status is not None and r.status >= 400 for r in record.requests)
    return (
        f"Saw {len(record.requests)} requests: {record.create_count} creates "
        f"({record.duplicate_count} for a video already extended), {record.read_count} task "
        f"reads, {refused} refused; at most {record.peak_concurrent} tasks at once."
    )
