"""Extend one video and download the result, on the fake server so it runs anywhere.

Run: python examples/extend_one.py
For the real API, drop the fake server and use ``KlingClient.from_env()``.
"""

from __future__ import annotations

import tempfile

import anyio

from kling_async import KlingClient, PollPolicy
from kling_async.testing import FakeKlingServer


async def main() -> None:
    async with FakeKlingServer(api_key="demo-key", speed=100) as server:  # ~1 s tasks
        client = KlingClient(
            api_key="demo-key",
            base_url=server.url,
            poll=PollPolicy(initial_delay=0.05, min_interval=0.05, max_interval=0.2),
            allow_private_downloads=True,  # the fake server serves its videos on 127.0.0.1
        )
        async with client:
            task = await client.extend_video("video-123", task_id="task-456", prompt="go on")
            print(f"submitted task {task.id}")
            async for snapshot in client.watch(task):
                print(f"  {snapshot.status.value}")
            finished = await client.watch(task)  # the watcher answers at once now
            folder = tempfile.mkdtemp()
            path = await client.download(finished, folder)
            print(f"saved {path} ({path.stat().st_size} bytes)")


if __name__ == "__main__":
    anyio.run(main)
