"""`extend_chain`'s engine: a video grown step after step, many chains under one cap.

Each step of a chain extends the video the step before made (on a gateway naming that
step's task as the parent), so a chain runs one step at a time. Many chains run as one
batch: the steps are fed to the batch engine as their turn comes, so they share its cap on
tasks in flight, its events, its retries and its journal. A step is journaled under the
chain's key and its number; a chain run again over the same journal replays the steps that
ended, watches again the one that was running, and goes on from there, never paying for a
step twice.

Here every chain is checked before anything is sent (`check_chain`) and then all run
(`run_chains`); a chain's vocabulary and plan are in `_chain_plan`, the engine that runs the
steps in `_chain_run`.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable, Iterable
from decimal import Decimal

from ._chain_plan import (
    ASSUMED_SOURCE_SECONDS,
    MAX_VIDEO_SECONDS,
    Chain,
    ChainError,
    ChainEvent,
    ChainOutcome,
    ChainRequest,
    StepLengths,
    planned_steps,
)
from ._chain_plan import NewVideo as NewVideo
from ._chain_plan import chain_key as chain_key
from ._chain_run import ChainBackend, ChainRun
from ._chain_run import JournalArgument as JournalArgument
from .errors import InvalidArgumentError
from .models import EXTENDABLE_MODELS, CreateRequest, VideoExtendRequest

__all__ = [
    "MAX_VIDEO_SECONDS",
    "Chain",
    "ChainError",
    "ChainEvent",
    "ChainOutcome",
    "ChainRequest",
    "StepLengths",
]
# NewVideo, chain_key and JournalArgument are imported from here too: by the client, its
# adapters and the command.

# Public here, defined with the chain's plan: named as this module's in tracebacks, reprs and
# the docs, so no one is sent to a private module.
for _public in (Chain, ChainError, ChainEvent, ChainOutcome, ChainRequest, StepLengths):
    _public.__module__ = __name__


def check_chain(request: ChainRequest, backend: ChainBackend, lengths: StepLengths) -> ChainRequest:
    """`request` checked before anything is sent; `InvalidArgumentError` (a ValueError)
    names every problem, including a chain that would pass 3 minutes."""
    problems = _shape_problems(request)
    if not problems:
        problems = _length_problems(request, lengths) + _step_problems(request, backend)
    if problems:
        raise InvalidArgumentError(
            f"Cannot run this chain: {'; '.join(problems)}. Nothing was sent."
        )
    return request


def _shape_problems(request: ChainRequest) -> list[str]:
    problems: list[str] = []
    if (request.video_id is None) == (request.source is None):
        problems.append("give either video_id (a video to extend) or source (a new video)")
    if request.source is not None and not isinstance(request.source, NewVideo):
        problems.append("source must be a TextToVideoRequest or an ImageToVideoRequest")
    if isinstance(request.prompts, str) or (
        request.prompts is not None and not all(isinstance(p, str) for p in request.prompts)
    ):
        problems.append("prompts must be a sequence of strings, one per step")
    ways = sum(x is not None for x in (request.steps, request.until, request.prompts))
    if ways == 0:
        problems.append("say how far: steps, until (seconds) or prompts (one per step)")
    elif request.steps is not None and request.until is not None:
        problems.append("give steps or until, not both")
    elif request.prompts is not None and request.until is not None:
        problems.append("prompts sets the number of steps; it cannot go with until")
    steps = request.steps
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
        problems.append(f"steps must be a whole number from 1, not {steps!r}")
    elif steps is not None and request.prompts is not None and len(request.prompts) != steps:
        problems.append(f"{len(request.prompts)} prompts were given for {steps} steps")
    if request.prompts is not None and not request.prompts:
        problems.append("prompts must hold one prompt per step (at least one)")
    if request.until is not None and not (request.until.is_finite() and request.until > 0):
        problems.append(f"until must be a positive number of seconds, not {request.until}")
    return problems


def _length_problems(request: ChainRequest, lengths: StepLengths) -> list[str]:
    """A chain that would pass the API's 3 minutes, from what is known or assumed."""
    if request.until is not None:
        if request.until > MAX_VIDEO_SECONDS:
            return [f"until {request.until} s is past the API's limit of 3 minutes (180 s)"]
        return []
    steps = planned_steps(request) or 0
    start = _source_seconds(request)
    step = lengths.estimate()
    expected = start + steps * step
    if expected <= MAX_VIDEO_SECONDS:
        return []
    most = int((MAX_VIDEO_SECONDS - start) / step)
    return [
        f"{steps} steps of about {step:.1f} s from a {start} s video make about "
        f"{expected:.0f} s, past the API's limit of 3 minutes (180 s); at most {most} fit"
    ]


def _step_problems(request: ChainRequest, backend: ChainBackend) -> list[str]:
    """The source and the steps' requests checked as the client checks any request."""
    problems: list[str] = []
    source = request.source
    if source is not None:
        model = source.model_name
        if model is not None and model not in EXTENDABLE_MODELS:
            problems.append(
                f"videos of {model} cannot be extended; make the source with one of "
                f"{', '.join(EXTENDABLE_MODELS)} (or leave model_name out)"
            )
        probes: list[CreateRequest] = [source]
    else:
        probes = []
    prompts = request.prompts or (request.prompt,)
    parent = request.task_id if source is None else "the source's task"
    video = request.video_id or "the source video"
    probes += [VideoExtendRequest(video, task_id=parent, prompt=p) for p in dict.fromkeys(prompts)]
    for probe in probes:
        try:
            backend.prepare(probe)
        except InvalidArgumentError as exc:
            problems.append(str(exc).removeprefix("Cannot ").removesuffix(". Nothing was sent."))
    return problems


def _source_seconds(request: ChainRequest) -> Decimal:
    source = request.source
    if source is not None and source.duration is not None:
        return Decimal(source.duration)
    return ASSUMED_SOURCE_SECONDS


def run_chains(
    backend: ChainBackend,
    requests: Iterable[ChainRequest],
    *,
    lengths: StepLengths,
    concurrency: int = 8,
    journal: JournalArgument = None,
    on_event: Callable[[ChainEvent], object] | None = None,
) -> AsyncGenerator[ChainOutcome, None]:
    """Every chain checked (nothing is sent if one is wrong), then all run as one batch."""
    checked = []
    for request in requests:
        try:
            checked.append(check_chain(request, backend, lengths))
        except InvalidArgumentError as exc:  # refused before anything was sent: traced too
            backend.telemetry.chain(request.video_id).ended(0, None, exc)
            raise
    run = ChainRun(
        backend,
        checked,
        lengths=lengths,
        concurrency=concurrency,
        journal=journal,
        on_event=on_event,
    )
    return run.outcomes()
