"""OpenTelemetry spans and metrics; a no-op without ``opentelemetry-api``.

The transport, the watchers and the batches call one hook per event (a request starts, is
answered, is retried; a watch steps and ends; a batch runs). Without OpenTelemetry, or with
``telemetry=False``, every hook is a method of `NO_TELEMETRY` that does nothing, and the
``opentelemetry`` package is never imported. With it, `Telemetry` records:

- a span per API request (``POST``/``GET`` of a create, read or list, and each download) with
  the HTTP semantic-convention attributes (``http.request.method``, ``url.full`` without its
  query, ``server.address``, ``server.port``, ``http.response.status_code``, ``error.type``),
  ``kling.request_id``, ``kling.task_id`` and ``kling.code``; each retry is an event;
- a span per watch (``kling.watch``), per batch (``kling.batch``) and per chain
  (``kling.chain``); the spans of the requests made for them are their children, and a
  chain's span, the child of its batch's, holds its steps' creates and watches;
- metrics: ``kling.client.requests`` (by endpoint and outcome), ``kling.client.retries`` (by
  reason), ``kling.tasks.in_flight`` and ``kling.task.reads`` / ``kling.task.duration`` (by
  kind and final status), ``kling.callbacks`` (by outcome and reason),
  ``kling.download.bytes``, ``kling.slots.held`` (slots of batches' caps, and of the
  account's quota shared over a database, held by this process's tasks in flight) and
  ``kling.slot.wait`` (how long a create waited for a slot of a batch's cap, or of the
  account's quota), by ``kling.slot.scope``.

Until a provider is given or the application sets a global one, nothing is built: a client
on OpenTelemetry's placeholder providers costs what a client without it costs. The module
also holds the structured fields of the package's log records (`log_fields`).

Span attributes may name a task; metric attributes never do (only bounded values: the
endpoint, an error's class, a kind, a status). No secret, prompt or signed query is
recorded anywhere.
"""

from __future__ import annotations

import importlib.util
import math
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from .errors import APIError, ConfigurationError
from .models import Task, TaskKind, TaskStatus

if TYPE_CHECKING:
    from opentelemetry.metrics import CallbackOptions, MeterProvider, Observation
    from opentelemetry.trace import Span, TracerProvider

__all__ = [
    "NO_CHAIN",
    "NO_SLOTS",
    "NO_TELEMETRY",
    "Telemetry",
    "available",
    "log_fields",
    "task_in_path",
    "telemetry_for",
]

Progress = Callable[[Any], object]  # a DownloadProgress hook (download.py is below this one)
_SCOPE = "kling_async"
#: The global providers' classes before an application sets its own (no SDK configured).
_PLACEHOLDERS = frozenset(
    {"ProxyTracerProvider", "NoOpTracerProvider", "_ProxyMeterProvider", "NoOpMeterProvider"}
)
_KINDS = {f"/v1/{kind.value}": kind.value for kind in TaskKind}  # the path under the base URL


def log_fields(
    task_id: str | None = None,
    request_key: str | None = None,
    request_id: object = None,
) -> dict[str, str | None]:
    """The structured fields of every log record of the package (``extra=``): the task id,
    the batch request's key and the Kling request id, None where not known. Prefixed, so
    they never clash with a web application's own ``request_id`` field."""
    return {
        "kling_task_id": task_id,
        "kling_request_key": request_key,
        "kling_request_id": request_id if isinstance(request_id, str) else None,
    }


def task_in_path(path: str) -> str | None:
    """The task id in the path of a request for one task (under the base URL), if any."""
    return _endpoint("GET", path)[2]


def available() -> bool:
    """Whether ``opentelemetry-api`` is installed (found without importing it)."""
    return importlib.util.find_spec("opentelemetry") is not None


class _RequestTrace:
    """What one request's hooks do when nothing is recorded: nothing."""

    __slots__ = ()

    def answered(self, status: int, body: Mapping[str, Any]) -> None:
        """A successful envelope came back (ends the request)."""

    def retried(self, error: Exception, attempt: int, wait: float) -> None:
        """Attempt `attempt` failed with `error`; the next starts after `wait` seconds."""

    def failed(self, error: BaseException) -> None:
        """The request ended with `error` (ends the request)."""


class _WatchTrace:
    """What one watch's hooks do when nothing is recorded: nothing."""

    __slots__ = ()

    def step(self) -> AbstractContextManager[object]:
        """The context one step of the watch (its wait and read) runs in."""
        return _NULL

    def ended(self, task: Task | None, polls: int, error: BaseException | None = None) -> None:
        """The watch ended: with its last snapshot, or with `error`."""


class _ChainTrace:
    """What one chain's hooks do when nothing is recorded: nothing."""

    __slots__ = ()

    def within(self) -> AbstractContextManager[object]:
        """The context the work of one of the chain's steps is started in."""
        return _NULL

    def ended(self, steps: int, duration: float | None, error: BaseException | None) -> None:
        """The chain ended (or was left): after `steps` steps, with a video of `duration`
        seconds, or with `error` (why its last step failed, or why it was refused before
        its first)."""


class _SlotTrace:
    """What the hooks of one kind of slot (a batch's cap, the account's quota) do when
    nothing is recorded: nothing."""

    __slots__ = ()

    def taken(self, waited: float | None) -> None:
        """A slot was taken, `waited` seconds after it was asked for (None: found held, as
        by a task taken over from another process, and not waited for)."""

    def given_back(self) -> None:
        """A slot taken before was given back."""

    def waited(self, seconds: float) -> None:
        """A slot already counted held was waited for `seconds` (its intent asked again)."""


_NULL = nullcontext()
_NO_REQUEST = _RequestTrace()
_NO_WATCH = _WatchTrace()
NO_CHAIN = _ChainTrace()
NO_SLOTS = _SlotTrace()


class _Off:
    """The hooks of a client without telemetry: each returns at once."""

    enabled = False
    #: Until this moment of `time.monotonic` no request is recorded, so the transport need
    #: not even ask for a request's trace: never for a client without telemetry, at once
    #: for one that records, and until its next look for one on the placeholder providers.
    quiet_until = math.inf

    def request(self, method: str, base_url: str, path: str) -> _RequestTrace:
        """A trace for one API request (sent to `base_url` + `path`)."""
        return _NO_REQUEST

    def watch(self, task_id: str, kind: TaskKind) -> _WatchTrace:
        """A trace for one watch of `task_id`."""
        return _NO_WATCH

    def batch(self, concurrency: int) -> AbstractContextManager[object]:
        """The context a batch runs in."""
        return _NULL

    def chain(self, video_id: str | None) -> _ChainTrace:
        """A trace for one chain (from `video_id`, or from a new video when None)."""
        return NO_CHAIN

    def slots(self, scope: str) -> _SlotTrace:
        """A trace for the slots of `scope`: ``"batch"`` (a batch's cap) or ``"account"``
        (the account's parallel-task quota)."""
        return NO_SLOTS

    def download(self, url: str, video_id: str) -> AbstractContextManager[object]:
        """The context one download runs in."""
        return _NULL

    def count_callbacks(self, stats: Mapping[str, int]) -> None:
        """Report a callback receiver's counts (``"accepted"`` or a refusal's reason)."""

    def progress(self, on_progress: Progress | None) -> Progress | None:
        """The progress hook a download reports to (`on_progress`, or one that also counts
        the bytes received before calling it)."""
        return on_progress


NO_TELEMETRY = _Off()


class Telemetry(_Off):
    """Spans and metrics through OpenTelemetry, on the providers given or the global ones.

    >>> client = KlingClient(api_key="...", telemetry=Telemetry(tracer_provider=provider))
    ... # doctest: +SKIP
    """

    enabled = True

    def __init__(
        self,
        *,
        tracer_provider: TracerProvider | None = None,
        meter_provider: MeterProvider | None = None,
    ) -> None:
        if not available():
            raise ConfigurationError(
                "Telemetry needs opentelemetry-api: pip install 'kling-async[otel]'."
            )
        from opentelemetry import metrics, trace

        from . import __version__

        self._bases: dict[str, _Base] = {}
        # The attributes of the metrics of watches, one dict per bounded set, made once.
        self.kinds = {kind: {"kling.task.kind": kind.value} for kind in TaskKind}
        self.finished = {
            (kind, status): {**attributes, "kling.task.status": status.value}
            for kind, attributes in self.kinds.items()
            for status in TaskStatus
        }
        # Given providers are live; the global ones are placeholders until the application
        # sets its own (once per process), and until then nothing is worth recording.
        self._live = tracer_provider is not None or meter_provider is not None
        self._providers = (trace.get_tracer_provider, metrics.get_meter_provider)
        self.quiet_until = -math.inf if self._live else 0.0
        self.use_span = trace.use_span
        self._observation = metrics.Observation
        self.client_kind = trace.SpanKind.CLIENT
        self.error_status = trace.StatusCode.ERROR
        self.tracer = trace.get_tracer(_SCOPE, __version__, tracer_provider)
        meter = metrics.get_meter(_SCOPE, __version__, meter_provider=meter_provider)
        # Counted here and read by the SDK when it collects: a counter's `add` per request
        # would cost more than the rest of the request's telemetry.
        self.requests: Counter[tuple[str, str]] = Counter()
        self.received = 0
        meter.create_observable_counter(
            "kling.client.requests",
            [self._observe_requests],
            "{request}",
            "API requests by endpoint and outcome",
        )
        self.retries = meter.create_counter(
            "kling.client.retries", "{retry}", "Retries of API requests by reason"
        )
        self.in_flight = meter.create_up_down_counter(
            "kling.tasks.in_flight", "{task}", "Tasks being watched to their end"
        )
        self.reads = meter.create_histogram(
            "kling.task.reads", "{read}", "Reads of a task until it ended"
        )
        self.durations = meter.create_histogram(
            "kling.task.duration", "s", "Time from a task's creation to its end"
        )
        self._callback_stats: list[Mapping[str, int]] = []
        meter.create_observable_counter(
            "kling.callbacks",
            [self._observe_callbacks],
            "{callback}",
            "Callbacks received, by outcome (accepted, refused) and reason",
        )
        self.held = meter.create_up_down_counter(
            "kling.slots.held",
            "{slot}",
            "Slots held by tasks in flight, by scope (a batch's cap, the account's quota)",
        )
        self.slot_waits = meter.create_histogram(
            "kling.slot.wait", "s", "Time a request waited for a free slot, by scope"
        )
        meter.create_observable_counter(
            "kling.download.bytes",
            [self._observe_bytes],
            "By",
            "Bytes of result videos downloaded",
        )

    @property
    def live(self) -> bool:
        """Whether anything records: a provider was given, or the application has set a
        global one (looked for at most once a second until it has: a look costs more than
        the request it would trace)."""
        if self._live or time.monotonic() < self.quiet_until:
            return self._live
        names = {type(get()).__name__ for get in self._providers}
        self._live = not names <= _PLACEHOLDERS
        self.quiet_until = -math.inf if self._live else time.monotonic() + 1.0
        return self._live

    def _observe_requests(self, options: CallbackOptions) -> Iterable[Observation]:
        for (endpoint, outcome), count in list(self.requests.items()):  # a copy: another thread
            yield self._observation(count, {"kling.endpoint": endpoint, "kling.outcome": outcome})

    def _observe_bytes(self, options: CallbackOptions) -> Iterable[Observation]:
        yield self._observation(self.received)

    def count_callbacks(self, stats: Mapping[str, int]) -> None:
        self._callback_stats.append(stats)

    def _observe_callbacks(self, options: CallbackOptions) -> Iterable[Observation]:
        totals: Counter[str] = Counter()
        for stats in self._callback_stats:
            totals.update(dict(stats))  # a copy: the SDK may collect from another thread
        for reason, count in totals.items():
            outcome = "accepted" if reason == "accepted" else "refused"
            yield self._observation(count, {"kling.outcome": outcome, "kling.reason": reason})

    def request(self, method: str, base_url: str, path: str) -> _RequestTrace:
        if not self.live:
            return _NO_REQUEST
        base = self._bases.get(base_url)
        if base is None:
            base = self._bases[base_url] = _Base(base_url)
        return _Request(self, base, method, path)

    def watch(self, task_id: str, kind: TaskKind) -> _WatchTrace:
        return _Watch(self, task_id, kind) if self.live else _NO_WATCH

    def batch(self, concurrency: int) -> AbstractContextManager[object]:
        if not self.live:
            return _NULL
        attributes = {"kling.batch.concurrency": concurrency}
        return self.tracer.start_as_current_span("kling.batch", attributes=attributes)

    def chain(self, video_id: str | None) -> _ChainTrace:
        return _Chain(self, video_id) if self.live else NO_CHAIN

    def slots(self, scope: str) -> _SlotTrace:
        return _Slots(self, scope) if self.live else NO_SLOTS

    def download(self, url: str, video_id: str) -> AbstractContextManager[object]:
        return self._download(url, video_id) if self.live else _NULL

    @contextmanager
    def _download(self, url: str, video_id: str) -> Iterator[object]:
        address = _Address(url)
        attributes: dict[str, str | int] = {
            "http.request.method": "GET",
            "url.full": address.url,
            "server.address": address.host,
            "kling.video_id": video_id,
        }
        with self.tracer.start_as_current_span("kling.download", attributes=attributes) as span:
            yield span

    def progress(self, on_progress: Progress | None) -> Progress | None:
        if not self.live:
            return on_progress
        counted = 0

        def count(progress: Any) -> None:
            nonlocal counted
            if progress.received < counted:  # the server sent the whole file again
                counted = 0
            self.received += progress.received - counted
            counted = progress.received
            if on_progress is not None:
                on_progress(progress)

        return count


def telemetry_for(
    telemetry: Telemetry | bool | None,
    tracer_provider: TracerProvider | None = None,
    meter_provider: MeterProvider | None = None,
) -> _Off:
    """The hooks a client uses: `telemetry` itself; none for False; else (True or None)
    OpenTelemetry on the providers given (the global ones by default) when it is
    installed, none when it is not (None) or an error (True, or a provider given)."""
    if isinstance(telemetry, Telemetry):
        return telemetry
    if telemetry is False:
        return NO_TELEMETRY
    asked = telemetry is True or tracer_provider is not None or meter_provider is not None
    if not asked and not available():
        return NO_TELEMETRY
    return Telemetry(tracer_provider=tracer_provider, meter_provider=meter_provider)


class _Address:
    """Where a request goes: its URL without query or fragment (a signed link's query is a
    credential), host and port."""

    __slots__ = ("host", "path", "port", "url")

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.url = parts._replace(query="", fragment="").geturl()
        self.host = parts.hostname or ""
        self.path = parts.path
        self.port = parts.port or (443 if parts.scheme == "https" else 80)


class _Route:
    """What every request to one endpoint under one base URL shares, made once: the span's
    name, the attributes known before the answer (but the URL), and the bounded endpoint
    name with the requests counter's key for a success."""

    __slots__ = ("endpoint", "host", "method", "name", "ok", "port")

    def __init__(self, method: str, base: _Address, endpoint: str, route: str) -> None:
        self.method = method
        self.name = f"{method} {base.path}{route}"
        self.host = base.host
        self.port = base.port
        self.endpoint = endpoint
        self.ok = (endpoint, "ok")


class _Base(_Address):
    """A client's base URL, with the routes of the API's endpoints under it, made once: the
    reads by their folder (the path before the task id), the creates and lists by method
    and path."""

    __slots__ = ("reads", "routes")

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.reads = {
            path: _Route("GET", self, *_endpoint("GET", f"{path}/-")[:2]) for path in _KINDS
        }
        self.routes = {
            (method, path): _Route(method, self, *_endpoint(method, path)[:2])
            for method in ("POST", "GET")
            for path in _KINDS
        }

    def route(self, method: str, path: str) -> tuple[_Route, str | None]:
        """The route of a request to `path` (without a query) and the task id in it. Reads
        first: they are most requests (no kind's path is the folder of another's)."""
        if method == "GET":
            folder, _, task_id = path.rpartition("/")
            route = self.reads.get(folder)
            if route is not None and task_id:
                return route, task_id
        route = self.routes.get((method, path))
        if route is not None:
            return route, None
        endpoint, name, task_id_in_path = _endpoint(method, path)
        return _Route(method, self, endpoint, name), task_id_in_path


def _endpoint(method: str, path: str) -> tuple[str, str, str | None]:
    """The bounded name of the endpoint of `path` (under the base URL), its route and the
    task id in it, if any: dictionary look-ups only, as this runs for every request."""
    kind = _KINDS.get(path)
    if kind is not None:
        return f"{kind} {'create' if method == 'POST' else 'list'}", path, None
    head, _, task_id = path.rpartition("/")
    kind = _KINDS.get(head)
    if kind is not None and task_id:
        return f"{kind} read", head + "/{task_id}", task_id
    return "other", path, None


class _Request(_RequestTrace):
    """One API request's span and its metrics.

    The span is made when first needed: at a retry (its event needs it), else at the end,
    with every attribute at once and the start time kept from the beginning. One pass of
    the SDK's attribute checks instead of two, and nothing built for a request whose span
    is never recorded beyond what its start needs. What every request to the same endpoint
    shares (the span's name, the server's attributes, the counter's key) is made once."""

    __slots__ = ("_owner", "_route", "_span", "_started", "_task_id", "_url")

    def __init__(self, owner: Telemetry, base: _Base, method: str, path: str) -> None:
        self._owner = owner
        if "?" in path:  # a query may hold a credential: never recorded
            path = path.partition("?")[0]
        self._route, self._task_id = base.route(method, path)
        self._url = base.url + path
        self._started = time.time_ns()
        self._span: Span | None = None

    def _attributes(self) -> dict[str, str | int]:
        """The attributes known before the answer."""
        route = self._route
        attributes: dict[str, str | int] = {
            "http.request.method": route.method,
            "url.full": self._url,
            "server.address": route.host,
            "server.port": route.port,
        }
        if self._task_id is not None:
            attributes["kling.task_id"] = self._task_id
        return attributes

    def _start(self, attributes: dict[str, str | int]) -> Span:
        """The request's span, made now with `attributes`, started when the request was."""
        owner = self._owner
        return owner.tracer.start_span(
            self._route.name,
            kind=owner.client_kind,
            attributes=attributes,
            start_time=self._started,
        )

    def _begun(self) -> Span:
        """The span, started when the request was (made now if it was not yet)."""
        span = self._span
        if span is None:
            span = self._span = self._start(self._attributes())
        return span

    def _ended(self, attributes: dict[str, str | int], error: BaseException | None) -> None:
        """End the span with all its `attributes` (made now with them if it was not yet),
        in error if `error` is not None."""
        span = self._span
        if span is None:
            span = self._start(attributes)
        elif span.is_recording():
            span.set_attributes(attributes)
        if error is not None:
            span.set_status(self._owner.error_status, type(error).__name__)
        span.end()

    def answered(self, status: int, body: Mapping[str, Any]) -> None:
        # One dict, built here in one go: this runs for every successful request.
        route = self._route
        attributes: dict[str, str | int] = {
            "http.request.method": route.method,
            "url.full": self._url,
            "server.address": route.host,
            "server.port": route.port,
            "http.response.status_code": status,
            "kling.code": 0,
        }
        request_id = body.get("request_id")
        if isinstance(request_id, str):
            attributes["kling.request_id"] = request_id
        data = body.get("data")
        task_id = data.get("task_id") if isinstance(data, dict) else None
        if not isinstance(task_id, str):  # a create's answer names its new task
            task_id = self._task_id
        if task_id is not None:
            attributes["kling.task_id"] = task_id
        self._ended(attributes, None)
        self._owner.requests[route.ok] += 1

    def retried(self, error: Exception, attempt: int, wait: float) -> None:
        reason = _reason(error)
        self._begun().add_event(
            "retry",
            {"kling.attempt": attempt, "kling.retry.wait": wait, **_error_attributes(error)},
        )
        attributes = {"kling.endpoint": self._route.endpoint, "kling.reason": reason}
        self._owner.retries.add(1, attributes)

    def failed(self, error: BaseException) -> None:
        self._ended({**self._attributes(), **_error_attributes(error)}, error)
        self._owner.requests[self._route.endpoint, type(error).__name__] += 1


def _reason(error: BaseException) -> str:
    """A retry's bounded reason: the error's class, and its business code when it has one."""
    if isinstance(error, APIError) and isinstance(error.code, int):
        return f"{type(error).__name__} {error.code}"
    return type(error).__name__


def _error_attributes(error: BaseException) -> dict[str, str | int]:
    attributes: dict[str, str | int] = {"error.type": type(error).__name__}
    if isinstance(error, APIError):
        if error.http_status is not None:
            attributes["http.response.status_code"] = error.http_status
        if error.code is not None:
            attributes["kling.code"] = error.code
        if error.request_id:
            attributes["kling.request_id"] = error.request_id
    return attributes


class _Watch(_WatchTrace):
    """One watch's span (current during each step, so its reads are its children)."""

    __slots__ = ("_kind", "_owner", "_span", "_started")

    def __init__(self, owner: Telemetry, task_id: str, kind: TaskKind) -> None:
        self._owner = owner
        self._kind = kind
        self._started = time.monotonic()
        attributes = {"kling.task_id": task_id, "kling.task.kind": kind.value}
        self._span = owner.tracer.start_span("kling.watch", attributes=attributes)
        owner.in_flight.add(1, owner.kinds[kind])

    def step(self) -> AbstractContextManager[object]:
        return self._owner.use_span(self._span, end_on_exit=False)

    def ended(self, task: Task | None, polls: int, error: BaseException | None = None) -> None:
        owner, span = self._owner, self._span
        owner.in_flight.add(-1, owner.kinds[self._kind])
        attributes: dict[str, str | int] = {"kling.reads": polls}
        if task is not None:
            attributes["kling.task.status"] = task.status_text
        if isinstance(error, Exception):  # not a cancellation, nor a loop left early
            attributes.update(_error_attributes(error))
            span.set_status(owner.error_status, type(error).__name__)
        elif task is not None and task.is_terminal:
            finished = owner.finished[self._kind, task.status]
            owner.reads.record(polls, finished)
            owner.durations.record(_duration(task, self._started), finished)
        span.set_attributes(attributes)
        span.end()


def _duration(task: Task, started: float) -> float:
    """Seconds from the task's creation to its end: by the server's stamps when it gave them,
    else since the watch began."""
    if task.created_at is not None and task.updated_at is not None:
        return max(0.0, (task.updated_at - task.created_at).total_seconds())
    return time.monotonic() - started


class _Chain(_ChainTrace):
    """One chain's span: begun when its first step starts, in the batch's span, and current
    while each step's work is started, so its creates and watches are its children."""

    __slots__ = ("_attributes", "_owner", "_span")

    def __init__(self, owner: Telemetry, video_id: str | None) -> None:
        self._owner = owner
        self._attributes = {} if video_id is None else {"kling.video_id": video_id}
        self._span: Span | None = None

    def within(self) -> AbstractContextManager[object]:
        if self._span is None:
            self._span = self._owner.tracer.start_span("kling.chain", attributes=self._attributes)
        # A cancellation passing through while a step is started is not the chain's error.
        return self._owner.use_span(
            self._span, end_on_exit=False, record_exception=False, set_status_on_exception=False
        )

    def ended(self, steps: int, duration: float | None, error: BaseException | None) -> None:
        span, self._span = self._span, None
        if span is None:
            if error is None:  # no step of it ran in this batch, or it ended already
                return
            # Refused before its first step (a source too old, a request refused before
            # anything was sent): a span of its own all the same, ended at once.
            span = self._owner.tracer.start_span("kling.chain", attributes=self._attributes)
        span.set_attribute("kling.chain.steps", steps)
        if duration is not None:
            span.set_attribute("kling.chain.duration", duration)
        if error is not None:
            span.set_attributes(_error_attributes(error))
            span.record_exception(error)
            span.set_status(self._owner.error_status, type(error).__name__)
        span.end()


class _Slots(_SlotTrace):
    """The slots of one scope: how many are held, and how long each was waited for."""

    __slots__ = ("_attributes", "_owner")

    def __init__(self, owner: Telemetry, scope: str) -> None:
        self._owner = owner
        self._attributes = {"kling.slot.scope": scope}

    def taken(self, waited: float | None) -> None:
        self._owner.held.add(1, self._attributes)
        if waited is not None:
            self._owner.slot_waits.record(waited, self._attributes)

    def given_back(self) -> None:
        self._owner.held.add(-1, self._attributes)

    def waited(self, seconds: float) -> None:
        self._owner.slot_waits.record(seconds, self._attributes)
