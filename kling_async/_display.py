"""What the command line shows: the live progress line, the summary table, JSON records.

Rendering only; the command itself (`cli`) parses arguments and calls the library.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, TextIO

import anyio

from ._wire import request_record
from .batch import BatchEvent, BatchEventKind, BatchOutcome
from .errors import NotSentError
from .models import Task, TaskStatus, subject_of

if TYPE_CHECKING:  # the fake server is loaded only by the commands that run it
    from .testing import RequestRecord, ServerRecord

BAR_WIDTH = 20  # a bar of fixed width: it neither vanishes nor jumps at 80 columns

__all__ = [
    "BAR_WIDTH",
    "Progress",
    "RichProgress",
    "human_duration",
    "log_request",
    "outcome_record",
    "print_summary",
    "progress_for",
    "server_summary",
    "show_task",
    "task_record",
    "write_record",
]


class Progress:
    """A live progress line: counts by state, rate and ETA (redrawn in place on a terminal).

    Redrawn on events (at most every `interval` seconds) and by `redraw` on a timer, so a
    burst of events is shown even when nothing follows it. Requests replayed from a journal
    count as done but not in the rate. The ETA is the batch's own (`BatchEvent.eta`, from how
    long tasks took), counted down between events; before the batch has one (nothing ended,
    or a gateway without timestamps) it is the work left at the live rate. Without a
    terminal (CI, a pipe) it prints a plain line only when something changed, at most every
    few seconds, so logs stay readable.
    """

    def __init__(
        self,
        total: int,
        stream: TextIO,
        *,
        interval: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.total = total
        self.stream = stream
        self.states: Counter[str] = Counter()
        # By identity (a batch may hold equal requests); each entry keeps its request alive,
        # so a freed request's id cannot be reused by a new one and inherit its state.
        self._latest: dict[int, tuple[object, str]] = {}
        self._clock = clock
        self._started = clock()
        self._last_drawn = float("-inf")
        self._live_done = 0
        self._eta: tuple[float, float] | None = None  # the batch's last ETA, and when it came
        self._changed = False  # a batch that fails before any event leaves no line in a log
        self._finished = False
        self.terminal = _is_terminal(stream)
        self.interval = 0.1 if self.terminal else interval

    def on_event(self, event: BatchEvent) -> None:
        """Take one batch event and redraw when it is time."""
        request = event.request
        if event.eta is not None:
            self._eta = (event.eta, self._clock())
        if event.kind is BatchEventKind.FINISHED and event.outcome is not None:
            self._move(request, "succeeded" if event.outcome.ok else "failed")
            self._live_done += not event.replayed
        elif event.kind is not BatchEventKind.RETRIED and event.task and not event.task.is_terminal:
            self._move(request, event.task.status_label)  # a terminal one counts at FINISHED
        self._changed = True
        if self._clock() - self._last_drawn >= self.interval:
            self.redraw()

    def redraw(self) -> None:
        """Draw the line now: on a terminal always (the rate moves), elsewhere if changed."""
        if self._finished or not (self.terminal or self._changed):
            return
        self._last_drawn, self._changed = self._clock(), False
        self._draw(self.line())

    async def redraw_every(self, sleep: Callable[[float], Awaitable[object]] = anyio.sleep) -> None:
        """Redraw every `interval` until cancelled (the owner's task group does that)."""
        while True:
            await sleep(self.interval)
            self.redraw()

    def _move(self, request: object, state: str) -> None:
        previous = self._latest.get(id(request))
        if previous is not None:
            self.states[previous[1]] -= 1
        self._latest[id(request)] = (request, state)
        self.states[state] += 1

    def line(self) -> str:
        """The progress line as it stands."""
        done = self.states["succeeded"] + self.states["failed"]
        elapsed = max(self._clock() - self._started, 1e-9)
        rate = self._live_done / elapsed
        eta = self._eta_text(self.total - done, rate)
        running = [
            f"{count} {state}"
            for state, count in sorted(self.states.items())
            if count and state not in ("succeeded", "failed")
        ]
        # What matters most comes first: a narrow terminal cuts the end of the line.
        done_text = f"{done}/{self.total} done ({self.states['failed']} failed)"
        return " · ".join([done_text, f"ETA {eta}", f"{rate:.1f}/s", *running])

    def _eta_text(self, left: int, rate: float) -> str:
        if left <= 0:
            return "-"
        if self._eta is not None:
            eta, at = self._eta
            return human_duration(max(0.0, eta - (self._clock() - at)))
        return human_duration(left / rate) if rate > 0 else "-"

    def finish(self) -> None:
        """Draw the final line once and end it (also when the batch was interrupted)."""
        if self._finished:
            return
        if self.terminal or self._changed:
            self._draw(self.line())
        self._finished = True
        if self.terminal:
            self.stream.write("\n")
            self.stream.flush()

    def _draw(self, line: str) -> None:
        if self.terminal:  # one screen line, or the next redraw clears only its last part
            self.stream.write("\r\x1b[2K" + _cut(line, _columns(self.stream) - 1))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()


class RichProgress(Progress):
    """The same line beside a bar of fixed width, drawn by rich on a terminal; the line is
    cut with an ellipsis where the terminal ends (the counts and the ETA come first)."""

    def __init__(self, total: int, stream: TextIO) -> None:
        super().__init__(total, stream)
        from rich.console import Console  # the `cli` extra; only needed on a terminal
        from rich.progress import BarColumn, TextColumn
        from rich.progress import Progress as Bar
        from rich.table import Column

        self._bar = Bar(
            BarColumn(bar_width=BAR_WIDTH, table_column=Column(width=BAR_WIDTH, no_wrap=True)),
            TextColumn(
                "{task.description}",
                table_column=Column(no_wrap=True, overflow="ellipsis", ratio=1),
            ),
            console=Console(file=stream),
            expand=True,
        )
        self._task = self._bar.add_task(self.line(), total=total)
        self._bar.start()

    def _draw(self, line: str) -> None:
        done = self.states["succeeded"] + self.states["failed"]
        self._bar.update(self._task, completed=done, description=line)

    def finish(self) -> None:
        """Draw the final state once and release the terminal."""
        if self._finished:
            return
        self._draw(self.line())
        self._finished = True
        self._bar.stop()


def progress_for(total: int, stream: TextIO) -> Progress:
    """rich's bar on a terminal when rich is installed; plain lines otherwise."""
    if _is_terminal(stream):
        try:
            return RichProgress(total, stream)
        except ImportError:
            pass
    return Progress(total, stream)


def _columns(stream: TextIO) -> int:
    try:
        return os.get_terminal_size(stream.fileno()).columns or 80
    except (OSError, ValueError):
        return 80


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: max(0, limit - 1)] + "…"


def _is_terminal(stream: TextIO) -> bool:
    return stream.isatty() and os.environ.get("TERM") != "dumb"


def print_summary(outcomes: Sequence[BatchOutcome], stream: TextIO) -> None:
    """The successes, then the failures together (in red on a terminal), then the totals.

    Each result (the saved files, else the URLs, or the error) has a line of its own under
    its row, so a long URL never wraps inside a table.
    """
    ok = [outcome for outcome in outcomes if outcome.ok and outcome.error is None]
    failed = [outcome for outcome in outcomes if not (outcome.ok and outcome.error is None)]
    width = min(max((len(subject_of(o.request)) for o in outcomes), default=0), 40)
    paint = _is_terminal(stream)
    for title, group, colour in (("Succeeded", ok, ""), ("Failed", failed, _RED)):
        if not group:
            continue
        stream.write(_painted(f"{title} ({len(group)}):", colour, paint) + "\n")
        for outcome in group:
            record = outcome_record(outcome)
            row = f"  {subject_of(outcome.request).ljust(width)}  {record['status']}"
            if record["new_task_id"]:
                row += f"  task {record['new_task_id']}"
            stream.write(_painted(row, colour, paint) + "\n")
            for detail in record.get("files") or record.get("video_urls") or [record["error"]]:
                stream.write(f"    {detail}\n")
    stream.write(f"\n{len(ok)} of {len(outcomes)} extensions succeeded.\n")
    stream.flush()


_RED = "\x1b[31m"


def _painted(text: str, colour: str, paint: bool) -> str:
    return f"{colour}{text}\x1b[0m" if colour and paint else text


def write_record(record: dict[str, Any], results: TextIO | None, *, as_json: bool) -> None:
    """One outcome's JSON line: into the results file, and on stdout for scripts."""
    line = json.dumps(record)
    if results is not None:
        results.write(line + "\n")
        results.flush()
    if as_json:
        print(line, flush=True)


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
    line = f"{task.id}  {task.status_label}"
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
        "status": task.status_label,
        "status_message": task.status_message,
        "videos": [
            {"id": v.id, "url": v.url, "duration": str(v.duration) if v.duration else None}
            for v in task.videos
        ],
    }


def human_duration(seconds: float) -> str:
    """A duration as a person reads it: ``42 s``, ``36 min``, ``1 h 12 min``, ``25 d``.

    >>> human_duration(4320)
    '1 h 12 min'
    """
    if seconds < 60:
        return f"{max(0, round(seconds))} s"
    minutes = round(seconds / 60)
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h" if days < 10 and hours else f"{days} d"


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
