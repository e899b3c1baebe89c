"""Callbacks in a FastAPI (or Starlette) app: forward the POST to `CallbackReceiver.handle`.

    pip install fastapi uvicorn kling-async
    KLING_API_KEY=... PUBLIC_URL=https://your.host uvicorn fastapi_callbacks:app

`PUBLIC_URL` is how the Kling API reaches this app. Watchers wake as soon as a task's
callback arrives (and confirm with one read); polling becomes a slow safety net.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request, Response

from kling_async import CallbackReceiver, KlingClient

receiver = CallbackReceiver(
    base_url=os.environ["PUBLIC_URL"], secret=os.environ.get("KLING_WEBHOOK_SECRET")
)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    async with KlingClient.from_env(callbacks=receiver) as client:
        app.state.kling = client
        yield


app = FastAPI(lifespan=lifespan)


@app.post("/kling-callbacks/{token}")
async def kling_callback(request: Request) -> Response:
    status = await receiver.handle(await request.body(), request.headers, path=request.url.path)
    return Response(status_code=status)


@app.post("/extend/{video_id}")
async def extend(video_id: str, request: Request) -> dict[str, str]:
    client: KlingClient = request.app.state.kling
    task = await client.extend_and_wait(video_id)
    return {"task_id": task.id, "url": task.videos[0].url}
