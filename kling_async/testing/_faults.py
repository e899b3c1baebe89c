"""Faults the fake server injects on demand: error answers, drops, delays, garbage bodies."""

from __future__ import annotations

import math
import random
from collections import deque
from dataclasses import dataclass

# Faults that replace the whole answer before the server does any work.
ANSWER_FAULTS = frozenset(
    {"http_error", "rate_limited", "html", "gateway_error", "openai_error"},
)
# Faults that only mean something for a download.
_FILE_ONLY = frozenset({"drop_mid_stream", "gzip_encoded"})
# Faults that mean something for a download; the rest would need an API answer to act on.
_FILE_FAULTS = ANSWER_FAULTS | _FILE_ONLY | {"drop", "delay"}
# Faults that change how a single-task GET describes the task.
TASK_FAULTS = frozenset({"status", "stale", "no_videos"})


@dataclass(frozen=True, slots=True)
class Fault:
    """One injected misbehaviour; build it with the class methods, not the constructor."""

    name: str
    http_status: int | None = None
    code: int | str | None = None
    message: str | None = None
    retry_after: float | str | None = None
    seconds: float = 0.0
    text: str | None = None
    after_bytes: int = 0
    error_type: str | None = None

    @classmethod
    def http_error(
        cls,
        status: int = 500,
        code: int = 5000,
        message: str = "server error",
        retry_after: float | str | None = None,
    ) -> Fault:
        """A Kling envelope error; ``retry_after`` becomes a ``Retry-After`` header as given."""
        return cls(
            "http_error", http_status=status, code=code, message=message, retry_after=retry_after
        )

    @classmethod
    def rate_limited(cls, retry_after: float | str | None = 2, code: int = 1302) -> Fault:
        """HTTP 429 with a Kling rate-limit code (1302 too fast, 1303 over concurrency)."""
        message = "parallel task over resource pack limit" if code == 1303 else "too many requests"
        return cls(
            "rate_limited", http_status=429, code=code, message=message, retry_after=retry_after
        )

    @classmethod
    def drop(cls) -> Fault:
        """Close the connection without answering, before doing anything."""
        return cls("drop")

    @classmethod
    def drop_after_create(cls) -> Fault:
        """Do the work (a create really creates), then close the connection unanswered."""
        return cls("drop_after_create")

    @classmethod
    def hold_answer(cls) -> Fault:
        """Do the work (a create really creates), then keep the answer until the test calls
        `FakeKlingServer.release_held` (`FakeKlingServer.held` waits for the request to arrive).
        """
        return cls("hold_answer")

    @classmethod
    def delay(cls, seconds: float) -> Fault:
        """Wait ``seconds`` of wall time, then handle the request normally."""
        if seconds < 0:
            raise ValueError("a delay cannot be negative")
        return cls("delay", seconds=seconds)

    @classmethod
    def malformed(cls) -> Fault:
        """Do the work, then answer HTTP 200 with a truncated, unparsable JSON body."""
        return cls("malformed")

    @classmethod
    def html(cls, status: int = 502, retry_after: float | str | None = None) -> Fault:
        """A reverse proxy's HTML error page (a ``Retry-After`` header when given); nothing
        is done."""
        return cls("html", http_status=status, retry_after=retry_after)

    @classmethod
    def gateway_error(
        cls, status: int = 400, code: str = "task_not_exist", message: str = "task not exist"
    ) -> Fault:
        """A gateway's own error body: ``{"code": "<str>", "message": ..., "data": null}``."""
        return cls("gateway_error", http_status=status, code=code, message=message)

    @classmethod
    def openai_error(
        cls,
        status: int = 401,
        message: str = "Invalid API key provided",
        type: str = "invalid_request_error",
        code: str | None = None,
    ) -> Fault:
        """A gateway's OpenAI-like error: ``{"error": {"message": ..., "type": ...}}``, with
        ``"code"`` too when given (as new-api style gateways send ``insufficient_quota``)."""
        return cls("openai_error", http_status=status, code=code, message=message, error_type=type)

    @classmethod
    def status(cls, text: str) -> Fault:
        """On a single-task GET, report ``task_status=text``; the task keeps progressing."""
        return cls("status", text=text)

    @classmethod
    def stale(cls, seconds: float = math.inf) -> Fault:
        """On a single-task GET, answer as a lagging cache does: the task as it was
        ``seconds`` service seconds earlier (by default, as it was created)."""
        if seconds < 0:
            raise ValueError("a cache cannot lag by a negative time")
        return cls("stale", seconds=seconds)

    @classmethod
    def no_videos(cls, *, empty_list: bool = False) -> Fault:
        """On a single-task GET, report the task ``succeed`` with ``task_result.videos``
        null (or ``[]`` with ``empty_list``)."""
        return cls("no_videos", text="[]" if empty_list else "null")

    @classmethod
    def drop_mid_stream(cls, after_bytes: int) -> Fault:
        """On a file download, send the headers and ``after_bytes`` of body, then close."""
        if after_bytes < 0:
            raise ValueError("after_bytes cannot be negative")
        return cls("drop_mid_stream", after_bytes=after_bytes)

    @classmethod
    def gzip_encoded(cls) -> Fault:
        """On a file download, send the file gzip-compressed (``Content-Encoding: gzip``)
        although the client asked for it unencoded; a ``Range`` then counts compressed bytes,
        as HTTP says it must."""
        return cls("gzip_encoded")

    def applies_to(self, method: str, *, is_file: bool) -> bool:
        """Whether this fault means anything for such a request (others never consume it)."""
        if is_file:
            return self.name in _FILE_FAULTS
        if self.name in TASK_FAULTS:
            return method == "GET"
        return self.name not in _FILE_ONLY


@dataclass(slots=True)
class _Rule:
    fault: Fault
    method: str | None
    path_contains: str | None
    remaining: int = 1
    probability: float = 0.0

    def matches(self, method: str, path: str, is_file: bool) -> bool:
        if self.method is not None and self.method.upper() != method:
            return False
        if self.path_contains is None:
            # Downloads are outside the API: only rules that name them explicitly apply.
            return not is_file and self.fault.applies_to(method, is_file=False)
        return self.path_contains in path and self.fault.applies_to(method, is_file=is_file)


class FaultPlan:
    """Which faults the server injects: queued one-shot rules first, then random rates."""

    def __init__(self, seed: int = 0) -> None:
        """Create an empty plan; ``seed`` makes the random rates reproducible."""
        self._queue: deque[_Rule] = deque()
        self._rates: list[_Rule] = []
        self._rng = random.Random(f"{seed}:faults")

    def push(
        self,
        fault: Fault,
        *,
        method: str | None = None,
        path_contains: str | None = None,
        times: int = 1,
    ) -> None:
        """Queue ``fault`` for the next ``times`` matching requests (FIFO across rules)."""
        if times < 1:
            raise ValueError("times must be at least 1")
        self._queue.append(_Rule(fault, method, path_contains, remaining=times))

    def rate(
        self,
        fault: Fault,
        probability: float,
        *,
        method: str | None = None,
        path_contains: str | None = None,
    ) -> None:
        """Inject ``fault`` into each matching request with ``probability`` (seeded)."""
        if not 0.0 <= probability <= 1.0:
            raise ValueError("probability must be within [0, 1]")
        self._rates.append(_Rule(fault, method, path_contains, probability=probability))

    def clear(self) -> None:
        """Forget every queued rule and rate."""
        self._queue.clear()
        self._rates.clear()

    @property
    def pending(self) -> int:
        """How many queued injections are left (sum of the remaining ``times``)."""
        return sum(rule.remaining for rule in self._queue)

    def take(self, method: str, path: str, *, is_file: bool = False) -> Fault | None:
        """The fault to apply to this request, consuming a queued rule if one matches."""
        for rule in self._queue:
            if rule.matches(method, path, is_file):
                rule.remaining -= 1
                if rule.remaining == 0:
                    self._queue.remove(rule)
                return rule.fault
        for rule in self._rates:
            if rule.matches(method, path, is_file) and self._rng.random() < rule.probability:
                return rule.fault
        return None
