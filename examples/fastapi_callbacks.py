"""Callbacks in a FastAPI (or Starlette) app: forward the POST to `CallbackReceiver.handle`.

    pip install fastapi uvicorn ./kling_async   # a clone: the package is not on PyPI yet
    KLING_API_KEY=... PUBLIC_URL=https://your.host uvicorn fastapi_callbacks:app

`PUBLIC_URL` is how the Kling API reaches this app. `POST /extend/VIDEO_ID` (with
`?task_id=PARENT` on a gateway) answers when the extension is done: its watcher wakes as soon
as the task's callback arrives (and confirms with one read); polling becomes a slow safety
net. The callback path carries the receiver's secret token, so the access log hides it.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request, Response

from kling_async import CallbackReceiver, KlingClient

TOKEN = re.compile(r"(/kling-callbacks/)[^/?\s]+")


class HideCallbackTokens(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(
                TOKEN.sub(r"\1<token>", a) if isinstance(a, str) else a for a in record.args
            )
        return True


logging.getLogger("uvicorn.access").addFilter(HideCallbackTokens())

receiver = CallbackReceiver(
    public_url=os.environ["PUBLIC_URL"], secret=os.environ.get("KLING_WEBHOOK_SECRET")
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
async def extend(video_id: str, request: Request, task_id: str | None = None) -> dict[str, str]:
    client: KlingClient = request.app.state.kling
    task = await client.extend_and_wait(video_id, task_id=task_id)
    return {"task_id": task.id, "url": task.videos[0].url}
