"""Source videos: text-to-video and image-to-video through the one create path."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from helpers import client_of

from kling_async import (
    DEFAULT_VIDEO_MODEL,
    EXTENDABLE_MODELS,
    InvalidArgumentError,
    InvalidRequestError,
    TaskKind,
    TaskStatus,
    TextToVideoRequest,
)
from kling_async.journal import Journal
from kling_async.testing import FakeKlingServer, Fault

pytestmark = pytest.mark.anyio

KEY = "test-api-key"
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(200))


@pytest.fixture
async def gateway() -> AsyncIterator[FakeKlingServer]:
    async with FakeKlingServer(dialect="gateway", api_key=KEY) as server:
        yield server


def posts(server: FakeKlingServer) -> list[Any]:
    return [r for r in server.record.requests if r.method == "POST"]


async def test_text_to_video_defaults_to_an_extendable_model(gateway: FakeKlingServer) -> None:
    """A text-to-video create names an extendable model when none is given; the length goes
    as the API's string; the finished task holds a video of that length."""
    async with client_of(gateway) as client:
        task = await client.text_to_video("a lighthouse at dusk", duration=10)
        done = await client.watch(task)
    (request,) = posts(gateway)
    assert request.path == "/kling/v1/videos/text2video"
    assert request.body == {
        "prompt": "a lighthouse at dusk",
        "duration": "10",
        "model_name": DEFAULT_VIDEO_MODEL,
    }
    assert DEFAULT_VIDEO_MODEL in EXTENDABLE_MODELS
    assert done.kind is TaskKind.TEXT_TO_VIDEO and done.status is TaskStatus.SUCCEED
    assert done.videos[0].duration == 10


@pytest.mark.parametrize(
    "arguments",
    [
        {"prompt": " "},
        {"prompt": "x" * 2501},
        {"prompt": "a fox", "mode": "ultra"},
        {"prompt": "a fox", "duration": 7},
        {"prompt": "a fox", "aspect_ratio": "4:3"},
        {"prompt": "a fox", "cfg_scale": 1.5},
    ],
)
async def test_a_wrong_text_to_video_argument_sends_nothing(
    gateway: FakeKlingServer, arguments: dict[str, Any]
) -> None:
    """Every argument is checked before sending: a typo is never paid for."""
    async with client_of(gateway) as client:
        with pytest.raises(InvalidArgumentError, match="Nothing was sent"):
            await client.text_to_video(**arguments)
    assert gateway.record.requests == []


async def test_image_to_video_reads_a_local_file_as_base64(
    gateway: FakeKlingServer, tmp_path: Path
) -> None:
    """A local image is sent as plain base64 (no data: prefix); a URL goes as it is."""
    image = tmp_path / "first.png"
    image.write_bytes(PNG)
    async with client_of(gateway) as client:
        task = await client.image_to_video(image, prompt="it moves")
        await client.image_to_video("https://example.com/a.png", image_tail=str(image))
        done = await client.watch(task)
    first, second = posts(gateway)
    assert first.path == "/kling/v1/videos/image2video"
    assert base64.b64decode(first.body["image"]) == PNG
    assert second.body["image"] == "https://example.com/a.png"
    assert base64.b64decode(second.body["image_tail"]) == PNG
    assert done.kind is TaskKind.IMAGE_TO_VIDEO and done.status is TaskStatus.SUCCEED


@pytest.mark.parametrize(
    "image", ["data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAUA", "no/such/file.png"]
)
async def test_an_unusable_image_sends_nothing(gateway: FakeKlingServer, image: str) -> None:
    """A data: URL or a file that does not exist is refused with a reason, before sending."""
    async with client_of(gateway) as client:
        with pytest.raises(InvalidArgumentError, match="Nothing was sent"):
            await client.image_to_video(image)
    assert gateway.record.requests == []


async def test_a_video_of_another_model_cannot_be_extended(gateway: FakeKlingServer) -> None:
    """Extending a kling-v2 video is refused by the API; the error names the models whose
    videos can be extended."""
    async with client_of(gateway) as client:
        source = await client.watch(
            await client.text_to_video("a fox", model_name="kling-v2-master")
        )
        with pytest.raises(InvalidRequestError) as caught:
            await client.extend_video(source.videos[0].id, task_id=source.id)
    assert caught.value.code == 1201
    assert all(model in str(caught.value) for model in EXTENDABLE_MODELS)


async def test_a_text_to_video_video_can_be_extended(gateway: FakeKlingServer) -> None:
    """The made video is a source like any other: its extension is 4-5 s longer."""
    async with client_of(gateway) as client:
        source = await client.watch(await client.text_to_video("a fox"))
        (video,) = source.videos
        extended = await client.extend_and_wait(video.id, task_id=source.id)
    assert video.duration is not None and extended.videos[0].duration is not None
    assert 4 <= extended.videos[0].duration - video.duration <= 5


async def test_a_lost_text_to_video_answer_is_found_not_paid_twice() -> None:
    """On the official API a create whose answer was lost is found by its external id."""
    async with FakeKlingServer(dialect="official", api_key=KEY) as official:
        official.faults.push(Fault.drop_after_create(), method="POST")
        async with client_of(official) as client:
            task = await client.text_to_video("a fox")
        assert official.record.create_count == 1
        assert task.id == official.record.created[0]
        assert task.kind is TaskKind.TEXT_TO_VIDEO


async def test_a_batch_of_new_videos_resumes_from_its_journal(
    gateway: FakeKlingServer, tmp_path: Path
) -> None:
    """The batch engine takes text-to-video requests too; a second run replays them."""
    requests = [TextToVideoRequest(f"scene {n}", key=f"scene-{n}") for n in range(3)]
    for _ in range(2):
        async with (
            client_of(gateway) as client,
            client.extend_many(requests, journal=tmp_path / "j") as batch,
        ):
            outcomes = [outcome async for outcome in batch]
        assert all(outcome.ok for outcome in outcomes)
    assert gateway.record.create_count == 3
    async with Journal(tmp_path / "j") as journal:
        entries = await journal.entries()
    assert {entry.request for entry in entries} == set(requests)


async def test_the_fake_refuses_an_extension_past_3_minutes_or_30_days() -> None:
    """A video that would pass 3 minutes, or is older than 30 days, is refused (1201)."""
    now = [1_800_000_000.0]
    async with FakeKlingServer(api_key=KEY, wall_clock=lambda: now[0]) as server:
        server.add_video("long", "t-long", duration=177.0)
        server.add_video("old", "t-old", made_at=now[0] - 31 * 86400)
        server.add_video("fine", "t-fine", made_at=now[0] - 29 * 86400)
        async with client_of(server) as client:
            for video in ("long", "old"):
                with pytest.raises(InvalidRequestError, match=r"3 minutes|30 days"):
                    await client.extend_video(video, task_id=f"t-{video}")
            await client.extend_video("fine", task_id="t-fine")
        assert server.record.create_count == 1
