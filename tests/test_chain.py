"""Chains: a video grown step after step, many chains under one cap, durable with a journal."""

from __future__ import annotations

import itertools
import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from decimal import Decimal
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from helpers import client_of

from kling_async import (
    BatchEventKind,
    ChainError,
    ChainEvent,
    ChainRequest,
    ContentPolicyError,
    ImageToVideoRequest,
    InvalidArgumentError,
    InvalidRequestError,
    KlingClient,
    Task,
    TextToVideoRequest,
)
from kling_async._clock import SystemClock
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
