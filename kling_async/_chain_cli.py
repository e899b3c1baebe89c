"""The ``kling-async chain`` command: a video grown to a length in one line, resumably.

Kept apart from the other commands: it parses its own options, builds the library's
`ChainRequest`, runs it through `KlingClient.extend_chain` and renders its progress.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Mapping
from contextlib import aclosing
from pathlib import Path
from typing import Any, TextIO

from ._chain_plan import planned_steps
from ._display import human_duration, write_record
from ._downloader import download_folder
from ._flags import COUNT, POSITIVE
from ._images import image_argument
from .batch import BatchEventKind
from .chain import Chain, ChainEvent, ChainOutcome, ChainRequest, chain_key
from .client import KlingClient
from .errors import ConfigurationError, InvalidArgumentError
from .models import ImageToVideoRequest, TextToVideoRequest
from .policies import PollPolicy

__all__ = [
    "add_chain_command",
    "chain_from_json",
    "demo_chains",
    "run_chain_command",
    "run_chain_lines",
]

ClientFactory = Callable[..., KlingClient]


def add_chain_command(
    commands: Any, parents: list[argparse.ArgumentParser]
) -> argparse.ArgumentParser:
    """Register ``chain`` with its options; the caller sets its handler."""
    command: argparse.ArgumentParser = commands.add_parser(
        "chain",
        parents=parents,
        help="grow a video step by step (from a video, a prompt or an image), resumably",
        description="Extend a video again and again, each step extending the last one's "
        "result, up to the API's 3 minutes. Start from VIDEO_ID (with --task-id on a "
        "gateway), or make the source first with --from-prompt or --from-image. The run is "
        "journaled, so after Ctrl-C or a crash the same command goes on from the step it "
        "was in, paying for nothing twice.",
    )
    command.add_argument("video_id", metavar="VIDEO_ID", nargs="?")
    command.add_argument("--task-id", help="the task that produced the video (gateways need it)")
    source = command.add_argument_group("or a new source video")
    source.add_argument("--from-prompt", metavar="TEXT", help="make the source from this text")
    source.add_argument("--from-image", metavar="FILE|URL", help="make the source from an image")
    source.add_argument("--model", help="the source's model (default kling-v1-6, extendable)")
    source.add_argument("--duration", type=int, choices=(5, 10), help="the source's seconds")
    how_far = command.add_mutually_exclusive_group(required=True)
    how_far.add_argument("--steps", type=COUNT, help="how many extensions")
    how_far.add_argument("--until", type=POSITIVE, metavar="SECONDS", help="grow to at least this")
    how_far.add_argument(
        "--prompts-file", metavar="FILE", help="one prompt per line, one step per prompt"
    )
    command.add_argument("--prompt", help="the prompt of every step without its own")
    command.add_argument(
        "--journal", metavar="FILE", help="default: .kling-chain-<digest>.journal here"
    )
    command.add_argument("--download", metavar="DIR", help="download the final video into DIR")
    return command


async def run_chain_command(args: argparse.Namespace, make_client: ClientFactory) -> int:
    """Run the chain the arguments describe; 0 when every step succeeded."""
    if args.download:
        download_folder(args.download)  # made before anything is sent, not after paying
    client = make_client(args)
    request = await _request(args)
    journal = Path(args.journal or f".kling-chain-{chain_key(request)[-16:]}.journal")
    progress = _Progress(sys.stderr, as_json=args.json)
    print(
        f"kling-async: journal {journal}; after a stop, run the same command to resume",
        file=sys.stderr,
    )
    async with client:
        chain = await client.run_chain(request, journal=journal, on_event=progress.on_event)
        path = None
        if args.download:
            last = chain.tasks[-1] if chain.tasks else chain.source
            path = await client.download(last, args.download) if last is not None else None
    _show(chain, path, sys.stdout, as_json=args.json)
    return 0


async def _request(args: argparse.Namespace) -> ChainRequest:
    sources = [x for x in (args.video_id, args.from_prompt, args.from_image) if x is not None]
    if len(sources) != 1:
        raise ConfigurationError("give one source: VIDEO_ID, --from-prompt or --from-image")
    source: TextToVideoRequest | ImageToVideoRequest | None = None
    if args.from_prompt is not None:
        source = TextToVideoRequest(args.from_prompt, model_name=args.model, duration=args.duration)
    elif args.from_image is not None:
        image = await image_argument(args.from_image, "--from-image")
        source = ImageToVideoRequest(image, model_name=args.model, duration=args.duration)
    prompts = _read_prompts(Path(args.prompts_file)) if args.prompts_file else None
    return ChainRequest(
        video_id=args.video_id,
        task_id=args.task_id,
        steps=args.steps,
        until=args.until,
        prompt=args.prompt,
        prompts=prompts,
        source=source,
    )


def _read_prompts(path: Path) -> tuple[str, ...]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ConfigurationError(f"cannot read {path}: {exc.strerror or exc}") from None
    prompts = tuple(line.strip() for line in lines if line.strip())
    if not prompts:
        raise ConfigurationError(f"{path} holds no prompt (one per line, one step per prompt)")
    return prompts


class _Progress:
    """One line per step started or ended: steps done, the length so far, the time left."""

    def __init__(self, stream: TextIO, *, as_json: bool, only_ends: bool = False) -> None:
        self.stream = stream
        self.as_json = as_json
        self.kinds = {BatchEventKind.FINISHED}
        if not only_ends:
            self.kinds.add(BatchEventKind.SUBMITTED)

    def on_event(self, event: ChainEvent) -> None:
        if event.kind not in self.kinds:
            return
        if self.as_json:
            record = {
                "event": event.kind.value,
                "step": event.step,
                "steps": event.steps,
                "duration": str(event.chain.duration) if event.chain.duration else None,
                "eta": None if event.eta is None else round(event.eta, 1),
                "task_id": event.event.task.id if event.event.task else None,
            }
            print(json.dumps(record), file=self.stream, flush=True)
            return
        name = f"{event.request.key}: " if event.request.key else ""
        what = "source" if event.step == 0 else f"step {event.step}/{_steps(event)}"
        verb = "started" if event.kind is BatchEventKind.SUBMITTED else "ended"
        length = f"{event.chain.duration} s so far" if event.chain.duration else "no video yet"
        eta = f"ETA {human_duration(event.eta)}" if event.eta is not None else "ETA unknown"
        print(f"  {name}{what} {verb} · {length} · {eta}", file=self.stream, flush=True)


def _steps(event: ChainEvent) -> str:
    """The steps planned, marked `~` while they are estimated from the lengths seen (a chain
    grown `until` a length), since the estimate can change as steps end."""
    if event.steps is None:
        return "?"
    fixed = planned_steps(event.request) is not None
    return str(event.steps) if fixed else f"~{event.steps}"


def _record(chain: Chain, path: Path | None) -> dict[str, Any]:
    """A chain as a flat JSON-ready record."""
    video = chain.video
    record: dict[str, Any] = {
        "steps": len(chain.tasks),
        "duration": str(chain.duration) if chain.duration is not None else None,
        "video_id": video.id if video else None,
        "video_url": video.url if video else None,
        "task_ids": [task.id for task in chain.tasks],
        "source_task_id": chain.source.id if chain.source else None,
    }
    if path is not None:
        record["file"] = str(path)
    return record


def _show(chain: Chain, path: Path | None, stream: TextIO, *, as_json: bool) -> None:
    record = _record(chain, path)
    if as_json:
        print(json.dumps(record), file=stream, flush=True)
        return
    print(
        f"{len(chain.tasks)} steps; the video is {chain.duration} s long: {record['video_id']}",
        file=stream,
    )
    print(f"  {record['video_url']}", file=stream)
    if path is not None:
        print(f"  saved {path}", file=stream)
    stream.flush()


_DEMO_SCENES = ("a paper boat on a stream", "a kite over the dunes", "a lantern in the snow")


async def demo_chains(
    url: str, key: str, poll: PollPolicy, *, count: int, as_json: bool
) -> list[ChainOutcome]:
    """Grow `count` videos made from prompts to about 30 s each, side by side (the demo)."""
    requests = [
        ChainRequest(
            source=TextToVideoRequest(_DEMO_SCENES[n % len(_DEMO_SCENES)], duration=5),
            until=30,
            prompt="the scene goes on",
            key=f"demo-chain-{n + 1}",
        )
        for n in range(count)
    ]
    print(
        f"Growing {count} videos from prompts to 30 s each, one step at a time per video...",
        file=sys.stderr,
    )
    outcomes = []
    progress = _Progress(sys.stderr, as_json=as_json, only_ends=True)
    async with KlingClient(api_key=key, base_url=url, dialect="gateway", poll=poll) as client:
        async for outcome in client.chain_many(
            requests, concurrency=count, on_event=progress.on_event
        ):
            outcomes.append(outcome)
            _show_outcome(outcome, sys.stdout, as_json=as_json)
    return outcomes


def _show_outcome(outcome: ChainOutcome, stream: TextIO, *, as_json: bool) -> None:
    chain = outcome.chain
    if as_json:
        print(json.dumps(_outcome_line(outcome)), file=stream, flush=True)
        return
    video = f"{chain.duration} s, {chain.video.id}" if chain.video else "no video"
    line = f"{outcome.request.key}: {len(chain.tasks)} steps, {video}"
    if outcome.error is not None:
        where = "the source" if outcome.error.step == 0 else f"step {outcome.error.step}"
        cause = outcome.error.__cause__ or outcome.error
        line += f"; stopped at {where}: {str(cause).splitlines()[0]}"
    print(line, file=stream, flush=True)


#: A batch line with any of these fields asks for a chain; these are all it may hold.
_CHAIN_MARKS = frozenset({"steps", "until", "prompts"})
_CHAIN_FIELDS: dict[str, type | tuple[type, ...]] = {
    "video_id": str,
    "task_id": str,
    "prompt": str,
    "key": str,
    "steps": int,
    "until": (int, float),
    "prompts": list,
}


def chain_from_json(value: Any) -> ChainRequest | None:
    """The chain a batch line asks for (it has `steps`, `until` or `prompts`); None when the
    line is an ordinary extension. Strict, as extension lines are: an unknown field or a
    value of the wrong type raises `InvalidArgumentError` naming it."""
    if not isinstance(value, Mapping) or not _CHAIN_MARKS & value.keys():
        return None
    unknown = sorted(set(value) - set(_CHAIN_FIELDS))
    if unknown:
        raise InvalidArgumentError(
            f"unknown field(s) {', '.join(map(repr, unknown))} in a chain line "
            f"(known: {', '.join(_CHAIN_FIELDS)})"
        )
    for name, item in value.items():
        wanted = _CHAIN_FIELDS[name]
        if item is not None and (isinstance(item, bool) or not isinstance(item, wanted)):
            raise InvalidArgumentError(f"{name} has the wrong type: {item!r}")
    return ChainRequest(**value)


async def run_chain_lines(
    client: KlingClient,
    chains: list[ChainRequest],
    *,
    results: TextIO,
    as_json: bool,
    **options: Any,
) -> list[ChainOutcome]:
    """Run a batch's chain lines as one run; a results line per chain as it ends."""
    progress = _Progress(sys.stderr, as_json=False, only_ends=True)
    outcomes = []
    async with client:
        stream = client.chain_many(chains, on_event=progress.on_event, **options)
        async with aclosing(stream):
            async for outcome in stream:
                outcomes.append(outcome)
                write_record(_outcome_line(outcome), results, as_json=as_json)
                if not as_json:
                    _show_outcome(outcome, sys.stdout, as_json=False)
    return outcomes


def _outcome_line(outcome: ChainOutcome) -> dict[str, Any]:
    request = outcome.request
    fields = {
        "video_id": request.video_id,
        "task_id": request.task_id,
        "prompt": request.prompt,
        "steps": request.steps,
        "until": None if request.until is None else float(request.until),
        "prompts": None if request.prompts is None else list(request.prompts),
        "key": request.key,
    }
    line = {name: value for name, value in fields.items() if value is not None}
    line["status"] = "succeeded" if outcome.ok else "failed"
    line.update(_record(outcome.chain, None))
    if outcome.error is not None:
        line["error"] = str(outcome.error)
    return line
