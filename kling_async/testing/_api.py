"""The Kling task API of the fake: create, query one, list; all state lives here."""

from __future__ import annotations

import heapq
import json
import random
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ._answers import Answer, gateway_error, kling_error, kling_ok
from ._faults import TASK_FAULTS, Fault
from ._record import ServerRecord
from ._tasks import (
    DEFAULT_MODEL,
    DEFAULT_PARENT_DURATION,
    EXTEND_KIND,
    EXTENDABLE_MODELS,
    MAX_ADDED,
    MAX_VIDEO_SECONDS,
    VIDEO_LIFETIME,
    FakeTask,
    KnownVideo,
    TaskFactory,
    created_wire,
    task_wire,
)
from ._validate import Problem, create_problem, page_param

COST_PACK_UNITS = 1000  # the fake account's one resource pack; each created task uses a unit


@dataclass(frozen=True, slots=True)
class BackendConfig:
    """The server's knobs that shape API behaviour."""

    gateway: bool
    speed: float
    max_concurrent: int | None
    require_known_videos: bool
    wall_clock: Callable[[], float]
    link_lifetime: float | None = None  # wall seconds a result link works; None: forever


class KlingBackend:
    """Tasks, known videos and the concurrency ledger, driven by the request handlers."""

    def __init__(
        self, config: BackendConfig, factory: TaskFactory, record: ServerRecord, seed: int
    ) -> None:
        """Start with no tasks; ``seed`` also drives the request ids."""
        self.config = config
        self.base_url = ""
        self._factory = factory
        self._record = record
        self._request_rng = random.Random(f"{seed}:requests")
        self._tasks: dict[str, FakeTask] = {}
        self._by_external: dict[str, str] = {}
        self._videos: dict[str, KnownVideo] = {}
        self._produced: dict[str, FakeTask] = {}
        self._seeded_task_ids: set[str] = set()
        # End instants of tasks that may still run; creation instants only grow, so popping
        # ends <= now leaves exactly the running tasks.
        self._ends: list[float] = []

    def request_id(self) -> str:
        """A fresh, seeded, uuid-shaped request id."""
        return str(uuid.UUID(int=self._request_rng.getrandbits(128), version=4))

    def error(self, problem: Problem) -> Answer:
        """The envelope answering ``problem``."""
        return kling_error(problem.http, problem.code, problem.message, self.request_id())

    def add_video(
        self,
        video_id: str,
        task_id: str | None,
        duration: float,
        model: str | None = None,
        made_at: float | None = None,
    ) -> None:
        """Make ``video_id`` a known source video (and ``task_id`` a known parent task)."""
        self._videos[video_id] = KnownVideo(video_id, duration, task_id, model, made_at)
        if task_id is not None:
            self._seeded_task_ids.add(task_id)

    def video(self, video_id: str, now: float) -> KnownVideo | None:
        """The known video ``video_id`` at ``now`` (produced ones once their task succeeded)."""
        task = self._produced.get(video_id)
        if task is not None and task.status(now) == "succeed":
            made_at = task.created_ms / 1000
            return KnownVideo(video_id, task.outcome.video_duration, task.id, task.model, made_at)
        return self._videos.get(video_id)

    def task(self, task_id: str) -> FakeTask:
        """The task ``task_id``; KeyError when there is none."""
        return self._tasks[task_id]

    def running(self, now: float) -> int:
        """Tasks created and not yet terminal at monotonic ``now``."""
        while self._ends and self._ends[0] <= now:
            heapq.heappop(self._ends)
        return len(self._ends)

    def create(self, kind: str, body: Any, now: float) -> Answer:
        """Handle a create of a ``kind`` task at monotonic ``now``."""
        refusal = self._refusal(kind, body, now)
        if refusal is not None:
            return refusal
        task = self._new_task(kind, body, now)
        # Real create answers carry the new task's id as their request id.
        return kling_ok(created_wire(task), task.id).with_task(task.id)

    def get(self, kind: str, ref: str, now: float, fault: Fault | None = None) -> Answer:
        """Handle a single-task query; a task fault changes what it reports."""
        task = self._tasks.get(ref)
        if task is None and not self.config.gateway and ref in self._by_external:
            task = self._tasks[self._by_external[ref]]
        if task is None or task.kind != kind:
            return self.error(Problem(404, 1203, f"task {ref} does not exist")).with_task(ref)
        self._record._note_poll(task.id)
        data = self._reported(task, now, fault)
        return kling_ok(data, self.request_id()).with_task(task.id)

    def _reported(self, task: FakeTask, now: float, fault: Fault | None) -> dict[str, Any]:
        """The task object a query answers, as the fault (if any) misreports it."""
        expires = self.link_expiry()
        if fault is None or fault.name not in TASK_FAULTS:
            return task_wire(task, now, self.base_url, expires=expires)
        if fault.name == "stale":  # the copy a cache kept from `seconds` ago
            then = max(task.created_mono, now - fault.seconds / self.config.speed)
            return task_wire(task, then, self.base_url, expires=expires)
        if fault.name == "no_videos":
            data = task_wire(task, now, self.base_url, "succeed")
            data["task_result"] = {"videos": json.loads(fault.text or "null")}
            return data
        return task_wire(task, now, self.base_url, fault.text, expires=expires)

    def link_expiry(self) -> int | None:
        """When a result link handed out now stops working (Unix seconds), if ever."""
        lifetime = self.config.link_lifetime
        return None if lifetime is None else int(self.config.wall_clock() + lifetime)

    def link_expired(self, query: Mapping[str, str]) -> bool:
        """Whether a result link with this query string no longer works."""
        if self.config.link_lifetime is None:
            return False
        expires = query.get("expires", "")
        return not expires.isdigit() or self.config.wall_clock() > int(expires)

    def list(self, kind: str, query: Mapping[str, str], now: float) -> Answer:
        """Handle a list query (official dialect): newest first, paged."""
        page = page_param(query, "pageNum", 1, 1000)
        if isinstance(page, Problem):
            return self.error(page)
        size = page_param(query, "pageSize", 30, 500)
        if isinstance(size, Problem):
            return self.error(size)
        newest = [t for t in reversed(self._tasks.values()) if t.kind == kind]
        chosen = newest[(page - 1) * size : page * size]
        expires = self.link_expiry()
        data = [task_wire(t, now, self.base_url, expires=expires) for t in chosen]
        return kling_ok(data, self.request_id())

    def costs(self, query: Mapping[str, str]) -> Answer:
        """The official ``GET /account/costs``: one video resource pack, drawn down by creates.

        ``start_time`` and ``end_time`` (Unix ms) are required, as on the real API.
        """
        for name in ("start_time", "end_time"):
            value = query.get(name, "")
            if not (value.isascii() and value.isdigit()):
                return self.error(Problem(400, 1201, f"{name} must be a Unix time in ms"))
        started = int(self.config.wall_clock() * 1000)
        pack = {
            "resource_pack_name": "Fake video pack",
            "resource_pack_id": "fake-pack-1",
            "resource_pack_type": "decreasing_total",
            "total_quantity": float(COST_PACK_UNITS),
            "remaining_quantity": float(max(0, COST_PACK_UNITS - len(self._tasks))),
            "purchase_time": started,
            "effective_time": started,
            "invalid_time": started + 365 * 86_400_000,
            "status": "online",
        }
        data = {"code": 0, "msg": "success", "resource_pack_subscribe_infos": [pack]}
        return kling_ok(data, self.request_id())

    def _refusal(self, kind: str, body: Any, now: float) -> Answer | None:
        problem = create_problem(kind, body, gateway=self.config.gateway)
        if problem is None and not self.config.gateway:
            problem = self._duplicate_problem(body.get("external_task_id"))
        if problem is None and kind == EXTEND_KIND:
            problem = self._source_problem(body["video_id"], now)
        if problem is not None:
            return self.error(problem)
        unknown = self._unknown_source(body, now) if kind == EXTEND_KIND else None
        if unknown is not None:
            return unknown
        limit = self.config.max_concurrent
        if limit is not None and self.running(now) >= limit:
            message = f"parallel task over resource pack limit ({limit} running)"
            return self.error(Problem(429, 1303, message))
        return None

    def _duplicate_problem(self, external: str | None) -> Problem | None:
        if external is None or external not in self._by_external:
            return None
        owner = self._by_external[external]
        return Problem(400, 1201, f"external_task_id {external} is already used by task {owner}")

    def _source_problem(self, video_id: str, now: float) -> Problem | None:
        """Why a known video cannot be extended: its model, its length, or its age."""
        video = self.video(video_id, now)
        if video is None:
            return None
        if video.model is not None and video.model not in EXTENDABLE_MODELS:
            return Problem(
                400,
                1201,
                f"video {video_id} was made by {video.model}, whose videos cannot be "
                f"extended; only videos of {', '.join(EXTENDABLE_MODELS)} can be",
            )
        if video.duration + MAX_ADDED > MAX_VIDEO_SECONDS:
            return Problem(
                400,
                1201,
                f"video {video_id} is {video.duration:.1f} s long; an extended video cannot "
                "be longer than 3 minutes",
            )
        age = self.config.wall_clock() - video.made_at if video.made_at is not None else 0.0
        if age > VIDEO_LIFETIME:
            return Problem(
                400,
                1201,
                f"video {video_id} was made {age / 86400:.0f} days ago; videos older than "
                "30 days have expired and cannot be extended",
            )
        return None

    def _unknown_source(self, body: dict[str, Any], now: float) -> Answer | None:
        if not self.config.require_known_videos:
            return None
        video_id: str = body["video_id"]
        if self.config.gateway:
            return self._unknown_gateway_source(body["task_id"], video_id, now)
        if self.video(video_id, now) is None:
            return self.error(Problem(404, 1203, f"video {video_id} does not exist"))
        return None

    def _unknown_gateway_source(self, task_id: str, video_id: str, now: float) -> Answer | None:
        parent = self._tasks.get(task_id)
        known_task = task_id in self._seeded_task_ids or (
            parent is not None and parent.status(now) == "succeed"
        )
        if not known_task:
            return gateway_error(400, "task_not_exist", f"task {task_id} not exist")
        if self.video(video_id, now) is None:
            return gateway_error(400, "video_not_exist", f"video {video_id} not exist")
        return None

    def _new_task(self, kind: str, body: dict[str, Any], now: float) -> FakeTask:
        parent = self._parent(body, now) if kind == EXTEND_KIND else None
        durations = self._factory.durations_for(kind)
        length = parent.duration if parent is not None else float(body.get("duration") or 5)
        task = FakeTask(
            kind=kind,
            outcome=self._factory.outcome(durations, length, new=parent is None),
            durations=durations,
            external_task_id=body.get("external_task_id"),
            parent=parent,
            model=parent.model if parent is not None else body.get("model_name") or DEFAULT_MODEL,
            created_mono=now,
            created_ms=int(self.config.wall_clock() * 1000),
            speed=self.config.speed,
        )
        self._store(task, now)
        return task

    def _parent(self, body: dict[str, Any], now: float) -> KnownVideo:
        video_id: str = body["video_id"]
        parent = self.video(video_id, now) or KnownVideo(
            video_id, DEFAULT_PARENT_DURATION, body.get("task_id")
        )
        # A parent the server accepted is one it can serve, so its URL in task_info works.
        self._videos.setdefault(video_id, parent)
        return parent

    def _store(self, task: FakeTask, now: float) -> None:
        self._tasks[task.id] = task
        self._produced[task.outcome.video_id] = task
        if task.external_task_id is not None and not self.config.gateway:
            self._by_external[task.external_task_id] = task.id
        heapq.heappush(self._ends, task.end_mono)
        parent = None if task.parent is None else task.parent.id
        self._record._note_created(task.id, parent, self.running(now))
