"""Callback delivery of the fake: a POST to ``callback_url`` at each status change of a task.

A task's transition instants are known when it is created, so each change is one timer on
the event loop, set at creation: no polling. Deliveries are signed when the server has a
webhook secret, retried when they fail, and misbehave on demand (`CallbackFaults`).
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp

from ._answers import kling_ok
from ._record import CallbackRecord, ServerRecord
from ._tasks import FakeTask, task_wire
from ._webhooks import CallbackFaults, signature_with_key, webhook_key

ATTEMPTS = 3
BACKOFF = (0.05, 0.1)  # the waits before the second and the third attempt
# A receiver that hangs must not hold a delivery (and the task's next ones) for long.
_POST_TIMEOUT = aiohttp.ClientTimeout(total=5.0)
_RANK = {"submitted": 0, "processing": 1, "succeed": 2, "failed": 2}
_NUDGES = 64


def timeline(task: FakeTask) -> list[tuple[float, str]]:
    """The statuses ``task`` takes, each with the monotonic instant it starts, in order.

    A phase of zero length (e.g. ``submitted_for=0``) has no change and is left out.
    """
    terminal = "failed" if task.outcome.failed else "succeed"
    starts = (
        (task.created_mono, "submitted"),
        (task.created_mono + task.durations.submitted_for / task.speed, "processing"),
        (task.end_mono, terminal),
    )
    found: list[tuple[float, str]] = []
    for instant, status in starts:
        moment = _first_moment(task, instant, status)
        if moment is not None:
            found.append((moment, status))
    return found


def _first_moment(task: FakeTask, instant: float, status: str) -> float | None:
    # Rounding in the speed scaling can put the computed instant a few ulps before the
    # change; step until the task itself agrees, so a callback never shows the old status.
    moment = instant
    for _ in range(_NUDGES):
        current = task.status(moment)
        if current == status:
            return moment
        if _RANK[current] > _RANK[status]:
            return None
        moment = math.nextafter(moment, math.inf)
    return None


@dataclass(frozen=True, slots=True)
class _Delivery:
    task_id: str
    status: str
    url: str
    msg_id: str
    body: bytes
    duplicate: bool


@dataclass(slots=True)
class _Watch:
    """One task's callbacks: where they go and the deliveries held back for reordering."""

    task: FakeTask
    url: str
    base_url: str
    held: list[_Delivery] = field(default_factory=list)
    # First attempts of one task go out one at a time, in the order they fall due: without
    # faults a receiver then sees the statuses in order even when a connect is slow.
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class CallbackSender:
    """Schedules, signs, sends and retries the callbacks of one server; owns the session.

    ``faults`` is read at each status change, so a test may change the server's
    ``callback_faults`` while tasks run.
    """

    def __init__(
        self,
        record: ServerRecord,
        *,
        seed: int,
        secret: str | None,
        envelope: bool,
        faults: Callable[[], CallbackFaults],
        wall_clock: Callable[[], float],
        monotonic: Callable[[], float],
    ) -> None:
        """Validate the secret now, so a bad one fails at construction, not at a delivery."""
        self._record = record
        self._key = None if secret is None else webhook_key(secret)
        self._envelope = envelope
        self._faults = faults
        self._wall_clock = wall_clock
        self._monotonic = monotonic
        # Its own stream: callback faults never shift the task or request ids.
        self._rng = random.Random(f"{seed}:callbacks")
        self._session: aiohttp.ClientSession | None = None
        self._timers: dict[int, asyncio.TimerHandle] = {}
        self._jobs: set[asyncio.Task[None]] = set()
        self._timer_count = 0

    def open(self) -> None:
        """Make the HTTP session; called by the server's ``start`` on the running loop."""
        self._session = aiohttp.ClientSession(timeout=_POST_TIMEOUT)

    async def close(self) -> None:
        """Cancel every scheduled and running delivery, wait for them, close the session."""
        session, self._session = self._session, None
        for handle in self._timers.values():
            handle.cancel()
        self._timers.clear()
        jobs = list(self._jobs)
        for job in jobs:
            job.cancel()
        # Waiting, not just cancelling, is what guarantees that no delivery outlives us.
        await asyncio.gather(*jobs, return_exceptions=True)
        if session is not None:
            await session.close()

    def watch(self, task: FakeTask, url: str, base_url: str) -> None:
        """Schedule the callbacks of the just-created ``task`` to ``url``."""
        if self._session is None:
            return
        watch = _Watch(task, url, base_url)
        loop = asyncio.get_running_loop()
        now = self._monotonic()
        for instant, status in timeline(task):
            key = self._timer_count
            self._timer_count += 1
            delay = max(0.0, instant - now)
            self._timers[key] = loop.call_later(delay, self._due, key, watch, instant, status)

    def _due(self, key: int, watch: _Watch, instant: float, status: str) -> None:
        self._timers.pop(key, None)
        faults, rng = self._faults(), self._rng
        # Every draw is made whatever the rates, so one knob never shifts another's draws.
        lost = rng.random() < faults.lost_rate
        duplicate = rng.random() < faults.duplicate_rate
        delay = rng.uniform(*faults.delay)
        hold = rng.random() < faults.reorder_rate and _RANK[status] < _RANK["succeed"]
        msg_id = f"msg_{uuid.uuid4().hex}"
        delivery = _Delivery(
            watch.task.id, status, watch.url, msg_id, self._body(watch, instant), duplicate
        )
        if lost:
            at = self._monotonic()
            self._note(delivery, at, attempt=0, response_status=None, lost=True)
        elif hold:
            watch.held.append(delivery)
            return
        # The latest held delivery goes right after this one, the one held before it next...
        chain = ([] if lost else [delivery]) + watch.held[::-1]
        watch.held.clear()
        if chain:
            job = asyncio.get_running_loop().create_task(self._send(watch, chain, delay))
            self._jobs.add(job)
            job.add_done_callback(self._jobs.discard)

    def _body(self, watch: _Watch, instant: float) -> bytes:
        data = task_wire(watch.task, instant, watch.base_url)
        if self._envelope:
            return kling_ok(data, str(uuid.uuid4())).body
        return json.dumps(data, ensure_ascii=False).encode()

    async def _send(self, watch: _Watch, chain: list[_Delivery], delay: float) -> None:
        if delay > 0:
            await asyncio.sleep(delay)
        for delivery in chain:
            await self._deliver(watch, delivery, duplicate=False)
            if delivery.duplicate:
                await self._deliver(watch, delivery, duplicate=True)

    async def _deliver(self, watch: _Watch, delivery: _Delivery, *, duplicate: bool) -> None:
        async with watch.lock:
            status = await self._attempt(delivery, 1, duplicate)
        for attempt, pause in enumerate(BACKOFF, start=2):
            if status is not None and 200 <= status < 300:
                return
            await asyncio.sleep(pause)
            status = await self._attempt(delivery, attempt, duplicate)

    async def _attempt(self, delivery: _Delivery, attempt: int, duplicate: bool) -> int | None:
        at = self._monotonic()
        status: int | None = None
        if self._session is not None:
            headers = self._headers(delivery)
            try:
                async with self._session.post(
                    delivery.url, data=delivery.body, headers=headers
                ) as response:
                    await response.read()  # read to the end so the connection can be reused
                    status = response.status
            # Whatever the receiver does (refuse, hang, reset), it is a failed attempt.
            except (aiohttp.ClientError, OSError, TimeoutError, ValueError):
                status = None
        self._note(delivery, at, attempt=attempt, response_status=status, duplicate=duplicate)
        return status

    def _headers(self, delivery: _Delivery) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self._key is None:
            return headers
        # Each attempt is signed afresh with its own timestamp; the id stays the delivery's.
        stamp = int(self._wall_clock())
        headers["webhook-id"] = delivery.msg_id
        headers["webhook-timestamp"] = str(stamp)
        headers["webhook-signature"] = signature_with_key(
            self._key, delivery.msg_id, stamp, delivery.body
        )
        return headers

    def _note(
        self,
        delivery: _Delivery,
        at: float,
        *,
        attempt: int,
        response_status: int | None,
        lost: bool = False,
        duplicate: bool = False,
    ) -> None:
        record = CallbackRecord(
            delivery.task_id,
            delivery.status,
            delivery.url,
            delivery.msg_id,
            at,
            attempt,
            response_status,
            lost=lost,
            duplicate=duplicate,
        )
        self._record._note_callback(record)
