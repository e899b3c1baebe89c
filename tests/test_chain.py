"""Chains: a video grown step after step, many chains under one cap, durable with a journal."""

from __future__ import annotations

import itertools
import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import attrs
import pytest
from aiohttp import web
from helpers import QUICK, client_of, serve

from kling_async import (
    BatchEvent,
    BatchEventKind,
    BatchOutcome,
    Chain,
    ChainError,
    ChainEvent,
    ChainOutcome,
    ChainRequest,
    ContentPolicyError,
    ImageToVideoRequest,
    InvalidArgumentError,
    InvalidRequestError,
    KlingClient,
    Task,
    TaskKind,
    TaskStatus,
    TextToVideoRequest,
    Video,
    VideoExtendRequest,
)
from kling_async._chain_run import ChainRun
from kling_async._clock import SystemClock
from kling_async.chain import StepLengths, chain_key, check_chain
from kling_async.journal import Journal
from kling_async.models import CreateRequest
from kling_async.telemetry import NO_TELEMETRY
from kling_async.testing import FakeKlingServer, Fault

pytestmark = pytest.mark.anyio

KEY = "test-api-key"


@pytest.fixture
async def gateway() -> AsyncIterator[FakeKlingServer]:
    async with FakeKlingServer(dialect="gateway", api_key=KEY) as server:
        yield server


def creates(server: FakeKlingServer) -> list[Any]:
    return [r for r in server.record.requests if r.method == "POST" and r.status == 200]


async def test_a_ten_step_chain_from_a_prompt(gateway: FakeKlingServer) -> None:
    """Eleven creates (the source, then ten steps); each step extends the video and names
    the task of the step before; the chain's length is the last video's, step by step."""
    async with client_of(gateway) as client:
        chain = await client.extend_chain(
            TextToVideoRequest("a paper boat", duration=5), steps=10, prompt="it sails on"
        )
    assert gateway.record.create_count == 11
    assert chain.source is not None and len(chain.tasks) == 10
    made = [chain.source, *chain.tasks]
    bodies = [r.body for r in creates(gateway)]
    assert bodies[0]["prompt"] == "a paper boat"
    for before, body in zip(made[:-1], bodies[1:], strict=True):
        assert body["video_id"] == before.videos[0].id
        assert body["task_id"] == before.id
        assert body["prompt"] == "it sails on"
    lengths = [task.videos[0].duration for task in made]
    assert lengths[0] == 5
    for shorter, longer in itertools.pairwise(lengths):
        assert shorter is not None and longer is not None
        assert Decimal(4) <= longer - shorter <= Decimal(5)
    assert chain.duration == lengths[-1] and chain.video == chain.tasks[-1].videos[0]
    assert 45 <= chain.duration <= 55


async def test_one_prompt_per_step(gateway: FakeKlingServer) -> None:
    """`prompts` sets the steps and gives each its own prompt; `until` stops at a length."""
    async with client_of(gateway) as client:
        chain = await client.extend_chain("v0", task_id="t0", prompts=["one", "two", "three"])
        long = await client.extend_chain("v1", task_id="t1", until=20)
    assert [r.body["prompt"] for r in creates(gateway)[:3]] == ["one", "two", "three"]
    assert len(chain.tasks) == 3
    assert long.duration is not None and long.duration >= 20
    assert long.duration - long.tasks[-1].videos[0].duration == 0
    before_last = long.tasks[-2].videos[0].duration
    assert before_last is not None and before_last < 20


@pytest.mark.parametrize(
    "arguments",
    [
        {"steps": 40},  # 5 s + 40 x 4.5 s = 185 s
        {"until": 181},
        {"prompts": ["go"] * 39, "prompt": None},
        {"steps": 0},
        {"steps": 3, "until": 20},
        {},
        {"steps": 2, "prompts": ["a"]},
    ],
)
async def test_a_chain_that_cannot_be_is_refused_before_sending(
    gateway: FakeKlingServer, arguments: dict[str, Any]
) -> None:
    """A chain past 3 minutes (or said wrong) is refused as a ValueError; nothing is sent."""
    async with client_of(gateway) as client:
        with pytest.raises(InvalidArgumentError, match="Nothing was sent") as caught:
            await client.extend_chain("v0", task_id="t0", **arguments)
    assert isinstance(caught.value, ValueError)
    assert gateway.record.requests == []


async def test_a_chain_past_three_minutes_says_how_many_steps_fit(
    gateway: FakeKlingServer,
) -> None:
    """The refusal names the limit and what would fit."""
    async with client_of(gateway) as client:
        with pytest.raises(InvalidArgumentError, match=r"3 minutes.*at most 38 fit"):
            await client.extend_chain("v0", task_id="t0", steps=40)


async def test_a_source_of_a_model_that_cannot_be_extended_is_refused(
    gateway: FakeKlingServer,
) -> None:
    """A chain whose source would be made by a v2 model is refused, naming the models."""
    source = TextToVideoRequest("a fox", model_name="kling-v2-master")
    async with client_of(gateway) as client:
        with pytest.raises(InvalidArgumentError, match="kling-v1, kling-v1-6"):
            await client.extend_chain(source, steps=2)
    assert gateway.record.requests == []


async def test_a_gateway_chain_needs_the_parent_task(gateway: FakeKlingServer) -> None:
    """On a gateway the first step needs task_id: refused before sending without it."""
    async with client_of(gateway) as client:
        with pytest.raises(InvalidArgumentError, match="task_id"):
            await client.extend_chain("v0", steps=2)
    assert gateway.record.requests == []


async def test_a_failed_step_keeps_the_earlier_steps(gateway: FakeKlingServer) -> None:
    """Step 3 refused by the API: ChainError names step 3, holds steps 1 and 2, and says why."""

    def refuse_step_three(event: ChainEvent) -> None:
        if event.step == 2 and event.kind is BatchEventKind.SUBMITTED:
            refusal = Fault.http_error(400, 1301, "content safety policy triggered")
            gateway.faults.push(refusal, method="POST")

    async with client_of(gateway) as client:
        with pytest.raises(ChainError) as caught:
            await client.extend_chain("v0", task_id="t0", steps=5, on_event=refuse_step_three)
    error = caught.value
    assert error.step == 3
    assert len(error.chain.tasks) == 2
    assert isinstance(error.__cause__, ContentPolicyError)
    assert error.chain.video == error.chain.tasks[1].videos[0]
    assert "Step 3" in str(error) and error.chain.video.id in str(error)
    assert gateway.record.create_count == 2


class LengthlessGateway:
    """A gateway whose result videos give no length (`length` None) or the length of the
    new segment only (`length` "5.0") instead of the whole video's; tasks succeed at once."""

    def __init__(self, length: str | None) -> None:
        self.length = length
        self.creates = 0

    async def handle(self, request: web.Request) -> web.Response:
        if request.method == "POST":
            self.creates += 1
            data: dict[str, Any] = {"task_id": f"t-{self.creates}", "task_status": "submitted"}
        else:
            task_id = request.path.rsplit("/", 1)[-1]
            video = {"id": f"video-of-{task_id}", "url": f"https://cdn.example/{task_id}.mp4"}
            if self.length is not None:
                video["duration"] = self.length
            result = {"videos": [video]}
            data = {"task_id": task_id, "task_status": "succeed", "task_result": result}
        return web.json_response({"code": 0, "message": "SUCCEED", "data": data})


@pytest.mark.parametrize(("length", "steps"), [(None, 1), ("5.0", 2)])
async def test_a_chain_until_a_length_the_server_does_not_tell_stops(
    length: str | None, steps: int
) -> None:
    """A chain grown until 30 s whose videos give no length, or one that does not grow: it
    cannot tell when it is done, so it stops with a ChainError instead of paying for step
    after step until the API refuses at 3 minutes."""
    gateway = LengthlessGateway(length)
    async with serve({"/{path:.*}": gateway.handle}) as url:
        client = KlingClient(api_key=KEY, base_url=url, dialect="gateway", poll=QUICK)
        async with client:
            with anyio.fail_after(10), pytest.raises(ChainError, match="cannot be told") as caught:
                await client.extend_chain("v-0", task_id="t-0", until=30)
    assert gateway.creates == steps
    assert len(caught.value.chain.tasks) == steps


async def test_fifty_chains_never_exceed_the_cap(gateway: FakeKlingServer) -> None:
    """Fifty chains of three steps run as one batch: never more than the cap in flight."""
    chains = [ChainRequest(f"v{n}", task_id=f"t{n}", steps=3, key=f"c{n}") for n in range(50)]
    async with client_of(gateway) as client:
        outcomes = [outcome async for outcome in client.chain_many(chains, concurrency=6)]
    assert len(outcomes) == 50 and all(outcome.ok for outcome in outcomes)
    assert {len(outcome.chain.tasks) for outcome in outcomes} == {3}
    assert gateway.record.create_count == 150
    assert gateway.record.peak_concurrent <= 6


async def test_a_chain_with_a_journal_resumes_at_the_interrupted_step(
    gateway: FakeKlingServer, tmp_path: Path
) -> None:
    """Stopped while step 3 runs, the chain goes on from step 3: its task is watched again,
    never created twice; run once more, the finished chain replays without a request."""
    journal = tmp_path / "chain.journal"
    stop = anyio.Event()

    def stop_in_step_three(event: ChainEvent) -> None:
        if event.step == 3 and event.kind is BatchEventKind.SUBMITTED:
            stop.set()

    async with client_of(gateway) as client:
        with anyio.move_on_after(30) as scope:  # a deadline, never reached when it works
            async with anyio.create_task_group() as group:

                async def run() -> None:
                    await client.extend_chain(
                        "v0", task_id="t0", steps=5, journal=journal, on_event=stop_in_step_three
                    )

                group.start_soon(run)
                await stop.wait()
                group.cancel_scope.cancel()
        assert not scope.cancelled_caught
    assert gateway.record.create_count == 3
    async with client_of(gateway) as client:
        chain = await client.extend_chain("v0", task_id="t0", steps=5, journal=journal)
    assert gateway.record.create_count == 5
    assert len({task.id for task in chain.tasks}) == 5
    assert [task.id for task in chain.tasks] == gateway.record.created
    requests = len(gateway.record.requests)
    async with client_of(gateway) as client:
        again = await client.extend_chain("v0", task_id="t0", steps=5, journal=journal)
    assert again == chain
    assert len(gateway.record.requests) == requests


async def test_a_step_whose_source_is_past_thirty_days_is_not_sent() -> None:
    """A step's source made more than 30 days ago stops the chain before that step."""
    then = time.time() - 31 * 86400
    async with FakeKlingServer(api_key=KEY, wall_clock=lambda: then) as server:
        async with client_of(server) as client:
            with pytest.raises(ChainError, match="30 days") as caught:
                await client.extend_chain("v0", task_id="t0", steps=3)
        assert caught.value.step == 2 and len(caught.value.chain.tasks) == 1
        assert server.record.create_count == 1


class DaysLater(SystemClock):
    """The real clocks, but a calendar some days ahead (monotonic time and sleeps are real)."""

    def __init__(self, days: float) -> None:
        self.ahead = days * 86400

    def time(self) -> float:
        return time.time() + self.ahead


async def made_long_ago(server: FakeKlingServer, client: KlingClient) -> Task:
    """A finished text-to-video task, dated by `server`'s calendar."""
    return await client.watch(await client.text_to_video("an old harbour", duration=5))


async def test_a_source_whose_task_is_past_thirty_days_stops_before_step_one() -> None:
    """On a gateway the parent task's creation time is read: a source past 30 days ends the
    chain at step 1, naming that task, with nothing sent for it."""
    then = time.time() - 31 * 86400
    async with FakeKlingServer(api_key=KEY, wall_clock=lambda: then) as server:
        async with client_of(server) as client:
            source = await made_long_ago(server, client)
            with pytest.raises(ChainError, match="30 days") as caught:
                await client.extend_chain(source.videos[0].id, task_id=source.id, steps=2)
        assert server.record.create_count == 1  # the source; the server, dated then, took it
    assert caught.value.step == 1 and caught.value.chain.tasks == ()
    assert f"of task {source.id}" in str(caught.value)


async def test_a_chain_begun_in_time_replays_once_its_source_is_old(tmp_path: Path) -> None:
    """Only a chain not begun has its source's age checked: a journaled one replays (and a
    new chain from the same source, now past 30 days, is stopped)."""
    then = time.time() - 29 * 86400
    journal = tmp_path / "chain.journal"
    async with FakeKlingServer(api_key=KEY, wall_clock=lambda: then) as server:
        async with client_of(server) as client:
            source = await made_long_ago(server, client)
            video, parent = source.videos[0].id, source.id
            chain = await client.extend_chain(video, task_id=parent, steps=2, journal=journal)
        seen = len(server.record.requests)
        async with client_of(server, clock=DaysLater(2)) as later:
            again = await later.extend_chain(video, task_id=parent, steps=2, journal=journal)
            assert again == chain and len(server.record.requests) == seen
            with pytest.raises(ChainError, match="30 days") as caught:
                await later.extend_chain(video, task_id=parent, steps=2)
        assert server.record.create_count == 3 and caught.value.step == 1


async def test_on_the_official_api_the_servers_refusal_of_an_old_source_names_step_one() -> None:
    """The official API reads no video's age: its refusal (code 1201) ends the chain at step
    1, as the error's cause, and nothing is created."""
    async with FakeKlingServer(dialect="official", api_key=KEY) as official:
        official.add_video("old", duration=5, made_at=time.time() - 31 * 86400)
        async with client_of(official) as client:
            with pytest.raises(ChainError, match="30 days") as caught:
                await client.extend_chain("old", steps=2)
        assert official.record.create_count == 0
    assert caught.value.step == 1 and caught.value.chain.tasks == ()
    assert isinstance(caught.value.__cause__, InvalidRequestError)
    assert caught.value.__cause__.code == 1201


async def test_progress_events_carry_the_chain_and_an_eta(gateway: FakeKlingServer) -> None:
    """Every step's batch events come with the chain's state; once tasks have ended, an ETA."""
    events: list[ChainEvent] = []
    async with client_of(gateway) as client:
        await client.extend_chain("v0", task_id="t0", steps=4, on_event=events.append)
    finished = [e for e in events if e.kind is BatchEventKind.FINISHED]
    assert [e.step for e in finished] == [1, 2, 3, 4]
    assert all(e.steps == 4 for e in events)
    submitted = [e for e in events if e.kind is BatchEventKind.SUBMITTED]
    assert submitted[0].eta is None  # nothing learned yet
    assert submitted[-1].eta is not None and submitted[-1].eta > 0


async def test_stopping_early_leaves_nothing_running(gateway: FakeKlingServer) -> None:
    """Leaving chain_many's loop early stops its batch at once."""
    chains = [ChainRequest(f"v{n}", task_id=f"t{n}", steps=3) for n in range(4)]
    async with client_of(gateway) as client:
        async with aclosing(client.chain_many(chains, concurrency=2)) as outcomes:
            async for _ in outcomes:
                break
        count = gateway.record.create_count
        await anyio.lowlevel.checkpoint()
    assert gateway.record.create_count == count


async def test_on_the_official_api_a_step_names_only_the_video(tmp_path: Path) -> None:
    """The official API takes no parent task: each step sends the previous video's id only;
    a chain may start from an image."""
    async with FakeKlingServer(dialect="official", api_key=KEY) as official:
        async with client_of(official) as client:
            source = ImageToVideoRequest("https://example.com/first.png", duration=10)
            chain = await client.extend_chain(source, steps=2)
        bodies = [r.body for r in creates(official)]
    assert [set(body) - {"external_task_id"} for body in bodies[1:]] == [{"video_id"}] * 2
    assert bodies[2]["video_id"] == chain.tasks[0].videos[0].id
    assert chain.source is not None and chain.source.videos[0].duration == 10


def finished_task(task_id: str, seconds: int | None, *, status: str = "succeed") -> Task:
    videos = () if seconds is None else (Video(f"vid-{task_id}", "u", Decimal(seconds)),)
    return Task(task_id, TaskKind.VIDEO_EXTEND, TaskStatus(status), videos=videos)


def test_a_chain_error_says_which_step_failed_why_and_where_to_go_on() -> None:
    """The message names the step (the source as such), the reason, and the longest video
    kept with its task, to start a new chain from; without a video, nothing about one."""
    kept = Chain((finished_task("t1", 10), finished_task("t2", 15)))
    assert str(ChainError(3, kept, "task 42 failed")) == (
        "Step 3 of the chain failed: task 42 failed. The longest video so far is vid-t2 "
        "(15 s, task t2): a new chain from it goes on from there."
    )
    assert str(ChainError(0, Chain())) == "Making the source video failed."
    assert str(ChainError(1, Chain(), "")) == "Step 1 of the chain failed."
    no_video = Chain((finished_task("t1", None),))
    assert str(ChainError(2, no_video, "gone")) == "Step 2 of the chain failed: gone."


def test_step_lengths_are_the_mean_of_what_steps_added() -> None:
    """Each step that made a video longer adds its gain; a step that did not, or of unknown
    length, teaches nothing; with nothing learned a step is taken to add 4.5 s."""
    lengths = StepLengths(window=3)
    assert lengths.estimate() == Decimal("4.5")
    lengths.observe(Decimal(5), Decimal(9))
    lengths.observe(Decimal(9), Decimal(9))
    lengths.observe(None, Decimal(20))
    lengths.observe(Decimal(9), None)
    assert lengths.estimate() == Decimal(4)
    for before, after in [(9, 14), (14, 20), (20, 27)]:
        lengths.observe(Decimal(before), Decimal(after))
    assert lengths.estimate() == Decimal(6)  # the last three: 5, 6 and 7
    default = StepLengths()
    default.observe(Decimal(0), Decimal(100))
    for start in range(64):
        default.observe(Decimal(start), Decimal(start + 1))
    assert default.estimate() == Decimal(1)  # the last 64 by default


class Backend:
    """What a chain run asks of the client, with a fixed expected task and a fixed time."""

    needs_parent_task = True
    telemetry = NO_TELEMETRY

    def __init__(self, expected: float | None = 60.0, now: float = 1000.0) -> None:
        self.expected, self.time = expected, now

    def expected_seconds(self) -> float | None:
        return self.expected

    def now(self) -> float:
        return self.time


def chain_run(request: ChainRequest, backend: Backend | None = None) -> ChainRun:
    events: list[ChainEvent] = []
    run = ChainRun(
        backend or Backend(),  # type: ignore[arg-type]
        [request],
        lengths=StepLengths(),
        concurrency=1,
        journal=None,
        on_event=events.append,
    )
    run.events = events  # type: ignore[attr-defined]
    for state in run.states.values():
        state.first_request()  # the chain's first request is sent
    return run


def step_event(run: ChainRun, step: int, task: Task | None) -> ChainEvent:
    """The chain event of a batch event (a step's task running or ended) of `run`'s chain."""
    (state,) = run.states.values()
    request = VideoExtendRequest("v", key=state.step_key(step))
    outcome = None if task is None or not task.is_terminal else BatchOutcome(request, task)
    kind = BatchEventKind.SUBMITTED if outcome is None else BatchEventKind.FINISHED
    run._on_batch_event(BatchEvent(kind, request, task=task, outcome=outcome))
    return run.events[-1]  # type: ignore[attr-defined,no-any-return]


def running(task_id: str, age: float, now: float = 1000.0) -> Task:
    made = datetime.fromtimestamp(now - age, UTC)
    return Task(task_id, TaskKind.VIDEO_EXTEND, TaskStatus.PROCESSING, created_at=made)


def test_the_eta_is_the_tasks_left_less_the_age_of_the_running_one() -> None:
    """Steps not ended times the expected task, less what the running task has done (at
    most one task's worth), never below zero; the source, while not made, counts as one."""
    run = chain_run(ChainRequest("v0", task_id="t0", steps=4, key="c"))
    (state,) = run.states.values()
    assert step_event(run, 1, running("t1", 10)).eta == 4 * 60 - 10
    assert step_event(run, 1, running("t1", 100)).eta == 3 * 60
    assert step_event(run, 1, None).eta == 4 * 60
    done = step_event(run, 1, finished_task("t1", 10))
    assert (done.eta, done.steps, len(done.chain.tasks)) == (3 * 60, 4, 1)
    state.chain, state.step = Chain(tuple(finished_task(f"t{n}", 10 + n) for n in range(4))), 5
    assert step_event(run, 5, running("t5", 10)).eta == 0.0
    made = chain_run(ChainRequest(source=TextToVideoRequest("a fox"), steps=2, key="s"))
    assert step_event(made, 0, running("s0", 0)).eta == 3 * 60
    unknown = chain_run(ChainRequest("v0", task_id="t0", steps=4, key="u"), Backend(None))
    assert step_event(unknown, 1, running("t1", 10)).eta is None


def test_a_chain_grown_until_a_length_plans_its_steps_from_what_steps_add() -> None:
    """Until its first step ends the count is unknown; then it is the steps done and as many
    as the length still missing needs, at what a step adds; none once the length is reached."""
    run = chain_run(ChainRequest("v0", task_id="t0", until=20, key="c"))
    assert step_event(run, 1, running("t1", 10)).steps is None
    assert step_event(run, 1, finished_task("t1", 10)).steps == 1 + 3  # 10 s to go at 4.5 s
    (state,) = run.states.values()
    state.chain, state.step = Chain((finished_task("t1", 10), finished_task("t2", 20))), 3
    assert step_event(run, 3, running("t3", 10)).steps == 2


def advance(
    run: ChainRun, task: Task | None, error: Exception | None = None
) -> tuple[ChainOutcome | None, CreateRequest | None]:
    """`run`'s chain takes its current step's outcome: its own outcome if it ended, and
    the request it sent next, if any."""
    (state,) = run.states.values()
    request = VideoExtendRequest("v", key=state.step_key(state.step))
    send, receive = anyio.create_memory_object_stream[CreateRequest](10)
    with send, receive:
        ended = run._advance(state, BatchOutcome(request, task, error), send)
        sent = receive.receive_nowait() if receive.statistics().current_buffer_used else None
    return ended, sent


def test_each_step_extends_the_last_video_and_teaches_what_a_step_adds() -> None:
    """After the source, each step extends the video just made, naming its task, under the
    chain's key and the step's number; what each step added (not the source) is learned."""
    run = chain_run(
        ChainRequest(source=TextToVideoRequest("a fox", duration=5), steps=3, key="a/b")
    )
    (state,) = run.states.values()
    assert state.first_request().key == "a/b/0"
    ended, sent = advance(run, finished_task("s0", 5))
    assert ended is None and run.lengths.estimate() == Decimal("4.5")
    assert sent == VideoExtendRequest("vid-s0", task_id="s0", key="a/b/1")
    ended, sent = advance(run, finished_task("s1", 9))
    assert ended is None and run.lengths.estimate() == Decimal(4)
    assert sent == VideoExtendRequest("vid-s1", task_id="s1", key="a/b/2")
    assert run._state_of(sent) is state


def test_a_chain_grown_until_a_length_ends_once_it_is_reached() -> None:
    """A video exactly as long as asked ends the chain; one a step short goes on."""
    run = chain_run(ChainRequest("v0", task_id="t0", until=14, key="c"))
    assert advance(run, finished_task("t1", 13))[0] is None
    ended, sent = advance(run, finished_task("t2", 14))
    assert ended is not None and ended.ok and sent is None
    assert ended.chain.duration == 14


def test_a_step_that_did_not_succeed_ends_its_chain_with_the_reason() -> None:
    """A failed step's error is the chain error's cause and its reason (one final full
    stop); a step with neither task nor error, or a task without a video, says so."""
    failure = RuntimeError("the task failed.")
    failed = finished_task("t1", None, status="failed")
    ended, sent = advance(
        chain_run(ChainRequest("v0", task_id="t0", steps=3, key="c")), failed, failure
    )
    assert ended is not None and ended.error is not None and sent is None
    assert (ended.error.step, ended.error.__cause__) == (1, failure)
    assert str(ended.error) == "Step 1 of the chain failed: the task failed."
    ended, _ = advance(chain_run(ChainRequest("v0", task_id="t0", steps=3, key="c")), None)
    assert ended is not None and str(ended.error) == (
        "Step 1 of the chain failed: the task did not succeed."
    )
    ended, _ = advance(
        chain_run(ChainRequest("v0", task_id="t0", steps=3, key="c")), finished_task("t1", None)
    )
    assert ended is not None and str(ended.error) == (
        "Step 1 of the chain failed: task t1 returned no video."
    )


def test_two_chains_of_one_key_are_refused_before_sending() -> None:
    """Each chain needs its own key in the journal: two of one key are refused up front."""
    twins = [ChainRequest("v0", task_id="t0", steps=1, key="k")] * 2
    with pytest.raises(InvalidArgumentError) as caught:
        ChainRun(
            Backend(), twins, lengths=StepLengths(), concurrency=1, journal=None, on_event=None
        )  # type: ignore[arg-type]
    assert str(caught.value) == (
        "Two chains share the key 'k'; give each its own key. Nothing was sent."
    )


def test_a_chain_event_tells_the_chain_its_step_and_the_batch_event() -> None:
    """A step's batch event comes back with the chain's request, the step's number (read
    from the key, whatever the chain's key holds) and the batch event itself."""
    request = ChainRequest("v0", task_id="t0", steps=2, key="team/one")
    run = chain_run(request)
    event = step_event(run, 2, running("t2", 1))
    assert (event.request, event.step, event.steps) == (request, 2, 2)
    assert event.event.task == running("t2", 1) and event.chain == Chain()


def test_a_source_is_too_old_after_thirty_days_to_the_second() -> None:
    """A source made exactly 30 days ago can still be extended; a second more, it cannot."""
    run = chain_run(ChainRequest("v0", task_id="t0", steps=2, key="c"))
    month = datetime.fromtimestamp(1000.0 - 30 * 86400, UTC)
    assert run._expired("c/2", "t1", month) is None
    assert run._expired("c/2", "t1", month - timedelta(seconds=1)) is not None
    assert run._expired("c/2", "t1", None) is None


class Dated(Backend):
    """A backend whose every source task was made at `made`."""

    def __init__(self, made: datetime, *, gateway: bool = True) -> None:
        super().__init__()
        self.made, self.needs_parent_task, self.reads = made, gateway, 0

    async def made_at(self, task_id: str) -> datetime | None:
        self.reads += 1
        return self.made


async def test_only_a_new_chain_on_a_gateway_has_its_source_dated() -> None:
    """The source's age is read (once) when the gateway names its task and the journal holds
    no step of the chain; a chain already begun goes on unread; the official API reads none."""
    old = datetime.fromtimestamp(1000.0 - 31 * 86400, UTC)
    request = ChainRequest("v0", task_id="t0", steps=2, key="c")
    stale = await chain_run(request, Dated(old))._stale_sources(None)
    assert stale["c"].error is not None and stale["c"].error.step == 1
    begun = chain_run(request, Dated(old))
    begun.begun = {"c/1"}  # stopped in step 1: its source was read then
    assert await begun._stale_sources(None) == {}
    assert begun.backend.reads == 0  # type: ignore[attr-defined]
    assert await chain_run(request, Dated(old, gateway=False))._stale_sources(None) == {}


async def test_chains_of_different_lengths_all_run_to_their_end(gateway: FakeKlingServer) -> None:
    """A short chain ending early does not cut the longer ones short."""
    chains = [
        ChainRequest("v0", task_id="t0", steps=1, key="short"),
        ChainRequest("v1", task_id="t1", steps=3, key="long"),
    ]
    async with client_of(gateway) as client:
        outcomes = {o.request.key: o async for o in client.chain_many(chains, concurrency=2)}
    assert [len(outcomes[key].chain.tasks) for key in ("short", "long")] == [1, 3]
    assert all(outcome.ok for outcome in outcomes.values())


async def test_a_chain_with_an_old_source_among_new_ones_ends_alone() -> None:
    """A chain stopped for its old source is one outcome; the others run to their end."""
    then = time.time() - 31 * 86400
    server = FakeKlingServer(api_key=KEY, wall_clock=lambda: then)
    async with server, client_of(server) as client:
        source = await made_long_ago(server, client)
        chains = [
            ChainRequest(source.videos[0].id, task_id=source.id, steps=2, key="old"),
            ChainRequest("v1", task_id="t1", steps=1, key="new"),
        ]
        outcomes = {o.request.key: o async for o in client.chain_many(chains)}
    assert outcomes["old"].error is not None and outcomes["old"].error.step == 1
    assert outcomes["new"].ok and len(outcomes["new"].chain.tasks) == 1


async def test_a_journal_the_caller_opened_is_left_open(
    gateway: FakeKlingServer, tmp_path: Path
) -> None:
    """A journal given open is the caller's to close: the chain leaves it open."""
    journal = Journal(tmp_path / "chain.journal")
    await journal.open()
    try:
        async with client_of(gateway) as client:
            await client.extend_chain("v0", task_id="t0", steps=1, journal=journal)
        assert [entry.key for entry in await journal.entries()] == [
            f"{chain_key(ChainRequest('v0', task_id='t0', steps=1))}/1"
        ]
    finally:
        await journal.close()


def test_a_chain_without_a_key_is_journaled_under_a_digest_that_never_changes() -> None:
    """The journal key of a chain without one is a digest of its fields, the same in every
    version (a chain journaled by one resumes under another); a given key is used as is."""
    request = ChainRequest("v0", task_id="t0", steps=3, prompt="on")
    assert chain_key(request) == "chain:1f1cde720f40902c9aee8f9009e0ef8a"
    assert chain_key(attrs.evolve(request, key="mine")) == "mine"


class Checks(Backend):
    """A backend that checks requests as the client does: it finds nothing wrong."""

    def prepare(self, request: CreateRequest) -> CreateRequest:
        return request


@pytest.mark.parametrize(
    ("request_", "fits"),
    [
        (ChainRequest("v0", task_id="t0", steps=35), True),  # 5 s + 35 x 5 s = 180 s
        (ChainRequest("v0", task_id="t0", steps=36), False),
        (ChainRequest(source=TextToVideoRequest("a fox", duration=10), steps=34), True),
        (ChainRequest(source=TextToVideoRequest("a fox", duration=10), steps=35), False),
        (ChainRequest("v0", task_id="t0", until=180), True),
        (ChainRequest("v0", task_id="t0", until=Decimal("180.5")), False),
    ],
)
def test_a_chain_may_reach_three_minutes_exactly(request_: ChainRequest, fits: bool) -> None:
    """From the source's length (5 s when unknown) and what a step adds, a chain that
    reaches 180 s exactly is taken; a step more is refused."""
    lengths = StepLengths()
    lengths.observe(Decimal(0), Decimal(5))
    if fits:
        assert check_chain(request_, Checks(), lengths) is request_  # type: ignore[arg-type]
    else:
        with pytest.raises(InvalidArgumentError, match="3 minutes"):
            check_chain(request_, Checks(), lengths)  # type: ignore[arg-type]


EITHER = "give either video_id (a video to extend) or source (a new video)"


@pytest.mark.parametrize(
    ("request_", "problems"),
    [
        (ChainRequest(steps=2), EITHER),
        (ChainRequest("v0", source=TextToVideoRequest("a"), steps=2), EITHER),
        (
            ChainRequest(source="a fox", steps=2),  # type: ignore[arg-type]
            "source must be a TextToVideoRequest or an ImageToVideoRequest",
        ),
        (ChainRequest("v0", prompts="one"), "prompts must be a sequence of strings, one per step"),
        (
            ChainRequest("v0", prompts=["a", 3]),  # type: ignore[list-item]
            "prompts must be a sequence of strings, one per step",
        ),
        (ChainRequest("v0"), "say how far: steps, until (seconds) or prompts (one per step)"),
        (ChainRequest("v0", steps=2, until=20), "give steps or until, not both"),
        (
            ChainRequest("v0", prompts=["a"], until=20),
            "prompts sets the number of steps; it cannot go with until",
        ),
        (ChainRequest("v0", steps=0), "steps must be a whole number from 1, not 0"),
        (ChainRequest("v0", steps=True), "steps must be a whole number from 1, not True"),
        (ChainRequest("v0", steps=2.0), "steps must be a whole number from 1, not 2.0"),  # type: ignore[arg-type]
        (ChainRequest("v0", steps=2, prompts=["a"]), "1 prompts were given for 2 steps"),
        (ChainRequest("v0", prompts=[]), "prompts must hold one prompt per step (at least one)"),
        (ChainRequest("v0", until=0), "until must be a positive number of seconds, not 0"),
        (ChainRequest("v0", until="NaN"), "until must be a positive number of seconds, not NaN"),
        (ChainRequest(steps=0), f"{EITHER}; steps must be a whole number from 1, not 0"),
    ],
)
def test_a_chain_said_wrong_is_refused_with_every_problem_named(
    request_: ChainRequest, problems: str
) -> None:
    """Each mistake in a chain's shape gets its own sentence, all of them in one refusal."""
    with pytest.raises(InvalidArgumentError) as caught:
        check_chain(request_, Checks(), StepLengths())  # type: ignore[arg-type]
    assert str(caught.value) == f"Cannot run this chain: {problems}. Nothing was sent."


@pytest.mark.parametrize("until", ["1", 0.5, 1, Decimal(180)])
def test_any_positive_length_up_to_three_minutes_is_a_goal(until: object) -> None:
    """`until` takes any positive number of seconds up to 180, however it is written."""
    request = ChainRequest("v0", task_id="t0", until=until)  # type: ignore[arg-type]
    assert check_chain(request, Checks(), StepLengths()) is request  # type: ignore[arg-type]
    assert request.until == Decimal(str(until))


@pytest.mark.parametrize("until", [True, [1]])
def test_until_must_be_a_number(until: object) -> None:
    """A length given as anything but a number is refused as such."""
    with pytest.raises(InvalidArgumentError) as caught:
        ChainRequest("v0", until=until)  # type: ignore[arg-type]
    assert str(caught.value) == f"until must be a number of seconds, not {until!r}"


class Refuses(Checks):
    """A backend that refuses a source of one model and a step of one prompt, as the client
    words a refusal."""

    def prepare(self, request: CreateRequest) -> CreateRequest:
        prompt = getattr(request, "prompt", None)
        if isinstance(request, TextToVideoRequest) and request.prompt == "bad source":
            raise InvalidArgumentError("Cannot send this source: it is bad. Nothing was sent.")
        if isinstance(request, VideoExtendRequest) and prompt == "bad step":
            raise InvalidArgumentError(
                f"Cannot extend video {request.video_id!r}: it is bad. Nothing was sent."
            )
        return request


def test_the_source_and_each_distinct_step_are_checked_as_the_client_checks_them() -> None:
    """The source and one extension per distinct prompt are checked before anything is
    sent; each refusal is named in the chain's, without its own frame or full stop."""
    request = ChainRequest(
        source=TextToVideoRequest("bad source"), prompts=["fine", "bad step", "bad step"]
    )
    with pytest.raises(InvalidArgumentError) as caught:
        check_chain(request, Refuses(), StepLengths())  # type: ignore[arg-type]
    assert str(caught.value) == (
        "Cannot run this chain: send this source: it is bad; extend video 'the source video': "
        "it is bad. Nothing was sent."
    )


def test_a_step_whose_source_is_too_old_names_the_task_that_made_it() -> None:
    """The chain stops before a step whose source, made by the step before, is past 30
    days; the refusal names that task and its date, and nothing is sent."""
    run = chain_run(ChainRequest("v0", task_id="t0", steps=3, key="c"))
    made = datetime.fromtimestamp(1000.0 - 31 * 86400, UTC)
    old = attrs.evolve(finished_task("t1", 10), created_at=made)
    ended, sent = advance(run, old)
    assert ended is not None and ended.error is not None and sent is None
    assert str(ended.error).startswith(
        f"Step 2 of the chain failed: its source video (of task t1) was made on {made:%Y-%m-%d}"
    )
