"""An aiohttp app that extends videos for its callers and receives Kling's callbacks.

    pip install ./kling_async   # a clone: the package is not on PyPI yet
    KLING_API_KEY=... PUBLIC_URL=https://your.host python aiohttp_app.py

`PUBLIC_URL` is how the Kling API reaches this app (port 8080, or `PORT`). One client lives
as long as the app (a cleanup context opens and closes it). `POST /extend/VIDEO_ID` (with
`?task_id=PARENT` on a gateway) answers when the extension is done: the receiver's route
wakes its watcher as soon as the task's callback arrives. The callback path carries the
receiver's secret token, so the access log writes ``<token>`` in its place.
"""

from __future__ import annotations

import os
import re
from collections.abc import AsyncIterator

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from kling_async import CallbackReceiver, KlingClient

RECEIVER = web.AppKey("receiver", CallbackReceiver)
KLING = web.AppKey("kling", KlingClient)


def make_app(public_url: str, webhook_secret: str | None = None) -> web.Application:
    receiver = CallbackReceiver(public_url=public_url, secret=webhook_secret)
    app = web.Application()
    app[RECEIVER] = receiver
    receiver.add_routes(app)  # POST /kling-callbacks/<token>
    app.router.add_post("/extend/{video_id}", extend)
    app.cleanup_ctx.append(kling_client)
    return app


async def kling_client(app: web.Application) -> AsyncIterator[None]:
    async with KlingClient.from_env(callbacks=app[RECEIVER]) as client:
        app[KLING] = client
        yield


async def extend(request: web.Request) -> web.Response:
    client = request.app[KLING]
    video_id, parent = request.match_info["video_id"], request.query.get("task_id")
    task = await client.extend_and_wait(video_id, task_id=parent)
    return web.json_response({"task_id": task.id, "url": task.videos[0].url})


TOKEN = re.compile(r"(/kling-callbacks/)[^/?\s]+")


class AccessLog(AbstractAccessLogger):
    """aiohttp's access log, one line per request, with ``<token>`` for the callback token."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        path = TOKEN.sub(r"\1<token>", request.path)
        self.logger.info("%s %s %s %d", request.remote, request.method, path, response.status)


if __name__ == "__main__":
    app = make_app(os.environ["PUBLIC_URL"], os.environ.get("KLING_WEBHOOK_SECRET"))
    web.run_app(app, port=int(os.environ.get("PORT", "8080")), access_log_class=AccessLog)
