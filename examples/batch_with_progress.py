"""Extend many videos under a cap, journaled, with a progress line, on the fake server.

Run: python examples/batch_with_progress.py
Run it twice: the second run replays the journal and sends nothing.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import anyio

from kling_async import BatchEvent, BatchEventKind, KlingClient, PollPolicy, VideoExtendRequest
from kling_async.testing import FakeKlingServer

JOURNAL = Path(tempfile.gettempdir()) / "kling-example.journal"


def show(event: BatchEvent) -> None:
    if event.kind is BatchEventKind.FINISHED and event.outcome is not None:
        verdict = "ok" if event.outcome.ok else f"failed: {event.outcome.error}"
        print(f"{event.request.video_id}: {verdict}")


async def main() -> None:
    requests = [
        VideoExtendRequest(f"video-{n}", task_id=f"task-{n}", key=f"row-{n}") for n in range(12)
    ]
    async with FakeKlingServer(api_key="demo-key", fail_rate=0.1, seed=3) as server:
        client = KlingClient(
            api_key="demo-key",
            base_url=server.url,
            poll=PollPolicy(initial_delay=0.05, min_interval=0.02, max_interval=0.2),
        )
        async with (
            client,
            client.extend_many(requests, concurrency=4, journal=JOURNAL, on_event=show) as batch,
        ):
            outcomes = [outcome async for outcome in batch]
        print(
            f"{sum(o.ok for o in outcomes)} of {len(outcomes)} succeeded; "
            f"the server saw {server.record.create_count} creates"
        )


if __name__ == "__main__":
    anyio.run(main)
