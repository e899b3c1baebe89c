"""OpenTelemetry: the span tree, attributes, retry events and metrics of a faulty batch; and
a package that imports and runs without opentelemetry at all."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from kling_async import (
    BatchEvent,
    BatchEventKind,
    CallbackReceiver,
    ChainError,
    ChainRequest,
    InvalidArgumentError,
    KlingClient,
    PollPolicy,
    RetryPolicy,
    Task,
    TaskKind,
    TaskStatus,
    Telemetry,
    VideoExtendRequest,
)
from kling_async.postgres import Coordination
from kling_async.telemetry import NO_TELEMETRY
from kling_async.testing import Durations, FakeKlingServer, Fault

pytestmark = pytest.mark.anyio

KEY = "canary-api-key-0123456789"
FAST_TASKS = Durations(submitted_for=5.0, median=60.0, sigma=0.3)
QUICK = PollPolicy(initial_delay=0.01, min_interval=0.01, max_interval=0.04, timeout=30)
PATIENT = RetryPolicy(max_attempts=6, base_delay=0.01, max_delay=0.05, rate_limit_floor=0.01)
SECRET_PROMPT = "a secret prompt nobody may read"
EXTEND = "videos/video-extend"


class Recorded:
    """An SDK tracer and meter provider that keep everything in memory."""

    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.reader = InMemoryMetricReader()
        self.meter_provider = MeterProvider(metric_readers=[self.reader])

    def client(self, server: FakeKlingServer, **kwargs: Any) -> KlingClient:
        return KlingClient(
            api_key=KEY,
            base_url=server.url,
            dialect="gateway",
            poll=QUICK,
            retry=PATIENT,
            tracer_provider=self.tracer_provider,
            meter_provider=self.meter_provider,
            **kwargs,
        )

    def spans(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())

    def points(self, name: str) -> list[Any]:
        """The data points of metric `name`."""
        data = self.reader.get_metrics_data()
        assert data is not None
        return [
            point
            for resource in data.resource_metrics
            for scope in resource.scope_metrics
            for metric in scope.metrics
            if metric.name == name
            for point in metric.data.data_points
        ]

    def sums(self, name: str, *keys: str) -> dict[tuple[Any, ...], int]:
        """A counter's values by the given attributes."""
        return {
            tuple(point.attributes.get(key) for key in keys): point.value
            for point in self.points(name)
        }

    def attribute_values(self) -> Iterator[str]:
        """Every attribute value of every span, event and metric point, as text."""
        for span in self.spans():
            yield span.name
            yield from map(str, (span.attributes or {}).values())
            for event in span.events:
                yield from map(str, (event.attributes or {}).values())
        data = self.reader.get_metrics_data()
        assert data is not None
        for resource in data.resource_metrics:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    for point in metric.data.data_points:
                        yield from map(str, point.attributes.values())


@pytest.fixture
def recorded() -> Recorded:
    return Recorded()


def children(spans: list[ReadableSpan], parent: ReadableSpan) -> list[ReadableSpan]:
    assert parent.context is not None
    return [s for s in spans if s.parent is not None and s.parent.span_id == parent.context.span_id]


async def test_a_faulty_batch_traced_and_counted(recorded: Recorded) -> None:
    """A batch of 3 with a refused create (429 with Retry-After) and a 500 on a read, then a
    lone read retried after a 500: one batch span holding the creates and one watch per
    task, each watch holding its reads (the failed one with its error: a watcher retries by
    reading again later); the lone read's retry is an event of its span; the metrics count
    it all; no secret anywhere."""
    items = [
        VideoExtendRequest(f"vid-{i}", task_id=f"parent-{i}", prompt=SECRET_PROMPT, key=str(i))
        for i in range(3)
    ]
    server = FakeKlingServer(api_key=KEY, durations=FAST_TASKS, seed=7)
    server.faults.push(Fault.rate_limited(retry_after=0.02, code=1302), method="POST")
    server.faults.push(Fault.http_error(500, 5000, "flaky"), method="GET")
    async with server, recorded.client(server) as client:
        outcomes = [o async for o in client.extend_many(items, concurrency=3)]
        task_ids = {o.task.id for o in outcomes if o.task is not None}
        server.faults.push(Fault.http_error(500, 5000, "flaky"), method="GET")
        await client.get_task(min(task_ids))
    assert all(o.ok for o in outcomes)

    spans = recorded.spans()
    (batch,) = [s for s in spans if s.name == "kling.batch"]
    assert batch.parent is None and batch.attributes == {"kling.batch.concurrency": 3}
    under_batch = children(spans, batch)
    creates = [s for s in under_batch if s.name == "POST /kling/v1/videos/video-extend"]
    watches = [s for s in under_batch if s.name == "kling.watch"]
    assert len(creates) == 4 and len(watches) == 3 and len(under_batch) == 7

    refused = [c for c in creates if c.attributes and "error.type" in c.attributes]
    (refusal,) = refused
    assert refusal.attributes is not None
    assert refusal.attributes["error.type"] == "RateLimitError"
    assert refusal.attributes["http.response.status_code"] == 429
    assert refusal.attributes["kling.code"] == 1302
    assert refusal.attributes["kling.request_id"]
    for create in set(creates) - {refusal}:
        attributes = dict(create.attributes or {})
        assert attributes["http.request.method"] == "POST"
        assert attributes["url.full"] == server.url + "/kling/v1/videos/video-extend"
        assert attributes["server.address"] == "127.0.0.1"
        assert attributes["http.response.status_code"] == 200
        assert attributes["kling.code"] == 0 and attributes["kling.request_id"]
        assert attributes["kling.task_id"] in task_ids

    all_reads = []
    for watch in watches:
        attributes = dict(watch.attributes or {})
        assert attributes["kling.task_id"] in task_ids
        assert attributes["kling.task.status"] == "succeed"
        reads = children(spans, watch)
        assert reads and all(r.name == "GET /kling/v1/videos/video-extend/{task_id}" for r in reads)
        assert {dict(r.attributes or {})["kling.task_id"] for r in reads} == {
            attributes["kling.task_id"]
        }
        assert attributes["kling.reads"] == len(reads)
        all_reads += reads
    (failed,) = [r for r in all_reads if "error.type" in (r.attributes or {})]
    assert dict(failed.attributes or {})["error.type"] == "ServerError"
    assert dict(failed.attributes or {})["kling.code"] == 5000
    assert not [r for r in all_reads if r.events]
    (read,) = [s for s in spans if s.parent is None and s.name.startswith("GET ")]
    (event,) = read.events
    assert event.name == "retry"
    retry = dict(event.attributes or {})
    assert 0.0 <= retry.pop("kling.retry.wait") <= PATIENT.max_delay  # type: ignore[operator]
    assert retry == {
        "kling.attempt": 1,
        "error.type": "ServerError",
        "http.response.status_code": 500,
        "kling.code": 5000,
        "kling.request_id": dict(event.attributes or {})["kling.request_id"],
    }
    assert dict(read.attributes or {})["http.response.status_code"] == 200

    requests = recorded.sums("kling.client.requests", "kling.endpoint", "kling.outcome")
    assert requests == {
        ("videos/video-extend create", "ok"): 3,
        ("videos/video-extend create", "RateLimitError"): 1,
        ("videos/video-extend read", "ok"): len(all_reads),  # the lone read's among them
        ("videos/video-extend read", "ServerError"): 1,
    }
    retries = recorded.sums("kling.client.retries", "kling.endpoint", "kling.reason")
    assert retries == {("videos/video-extend read", "ServerError 5000"): 1}
    assert recorded.sums("kling.tasks.in_flight", "kling.task.kind") == {
        ("videos/video-extend",): 0
    }
    (reads_per_task,) = recorded.points("kling.task.reads")
    assert reads_per_task.count == 3 and reads_per_task.sum == len(all_reads)
    assert dict(reads_per_task.attributes) == {
        "kling.task.kind": "videos/video-extend",
        "kling.task.status": "succeed",
    }
    (durations,) = recorded.points("kling.task.duration")
    assert durations.count == 3 and durations.sum > 0

    for value in recorded.attribute_values():
        assert KEY not in value and SECRET_PROMPT not in value and "?" not in value
    for point in recorded.points("kling.client.requests") + recorded.points("kling.task.reads"):
        assert not set(map(str, point.attributes.values())) & task_ids


async def test_a_download_is_a_span_without_its_signed_query(
    recorded: Recorded, tmp_path: Path
) -> None:
    """The download's span names its URL without the signature; its bytes are counted."""
    server = FakeKlingServer(api_key=KEY, durations=FAST_TASKS, link_lifetime=600)
    async with server, recorded.client(server, allow_private_downloads=True) as client:
        task = await client.extend_and_wait("vid-1", task_id="p-1")
        assert "?" in task.videos[0].url  # signed, with an expiry
        path = await client.download(task, tmp_path)
    (span,) = [s for s in recorded.spans() if s.name == "kling.download"]
    attributes = dict(span.attributes or {})
    assert attributes["url.full"] == task.videos[0].url.split("?")[0]
    assert attributes["kling.video_id"] == task.videos[0].id
    assert recorded.sums("kling.download.bytes") == {(): path.stat().st_size}


async def test_a_cancelled_watch_ends_its_span_without_an_error(recorded: Recorded) -> None:
    """Leaving a watch's iteration early ends its span (nothing held open), not as a failure,
    and the task is no longer counted in flight."""
    server = FakeKlingServer(api_key=KEY, durations=Durations(median=1e6, sigma=0.1))
    async with server, recorded.client(server) as client:
        task = await client.extend_video("vid-1", task_id="p-1")
        async for _ in client.watch(task):
            break
    (watch,) = [s for s in recorded.spans() if s.name == "kling.watch"]
    assert watch.status.is_ok and "error.type" not in (watch.attributes or {})
    assert recorded.sums("kling.tasks.in_flight", "kling.task.kind") == {
        ("videos/video-extend",): 0
    }


async def test_telemetry_false_records_nothing() -> None:
    """telemetry=False: the client's hooks are the no-ops, whatever is installed."""
    client = KlingClient(api_key=KEY, base_url="https://gw.example", telemetry=False)
    assert client.telemetry is NO_TELEMETRY
    given = Telemetry()
    assert KlingClient(api_key=KEY, base_url="https://gw.example", telemetry=given).telemetry is (
        given
    )


_WITHOUT_OTEL = """
import asyncio, importlib.abc, sys

class Hide(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "opentelemetry" or name.startswith("opentelemetry."):
            raise ModuleNotFoundError(f"No module named {name!r}")
        return None

sys.meta_path.insert(0, Hide())
import importlib.util
importlib.util.find_spec = (lambda real: lambda name, *a: None if name.startswith(
    "opentelemetry") else real(name, *a))(importlib.util.find_spec)

from kling_async import ConfigurationError, KlingClient
from kling_async.telemetry import NO_TELEMETRY
from kling_async import Telemetry
from kling_async.testing import FakeKlingServer, Durations

async def main():
    async with FakeKlingServer(api_key="k", durations=Durations(median=0.05, sigma=0.1)) as s:
        async with KlingClient(api_key="k", base_url=s.url) as client:
            assert client.telemetry is NO_TELEMETRY
            task = await client.extend_video("v", task_id="t")
            done = await client.watch(task)
            assert done.status.value == "succeed"
    try:
        Telemetry()
    except ConfigurationError as exc:
        assert "kling-async[otel]" in str(exc)
    else:
        raise AssertionError("Telemetry() without opentelemetry")
    assert not [m for m in sys.modules if m.startswith("opentelemetry")], "imported"
    print("ran without opentelemetry")

asyncio.run(main())
"""


def test_the_package_runs_without_opentelemetry() -> None:
    """With opentelemetry hidden, the package imports, a task is made and watched, nothing of
    opentelemetry is imported, and asking for Telemetry says what to install."""
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_WITHOUT_OTEL)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ran without opentelemetry"


def test_no_metric_attribute_is_unbounded() -> None:
    """Endpoints are named from the path's kind, never its task id."""
    from kling_async.telemetry import _endpoint

    assert _endpoint("GET", "/v1/videos/video-extend/1234") == (
        "videos/video-extend read",
        "/v1/videos/video-extend/{task_id}",
        "1234",
    )
    assert _endpoint("GET", "/v1/videos/video-extend")[0] == "videos/video-extend list"
    assert _endpoint("POST", "/v1/videos/text2video")[0] == "videos/text2video create"
    assert Counter(_endpoint("GET", f"/x/{n}")[0] for n in range(3)) == Counter(other=3)


def test_each_request_is_named_by_its_path_with_routes_made_once() -> None:
    """The routes a base URL keeps name every request as its path does: the create, list
    and read of every kind, a POST to a task's path, an unknown path; a query is never
    recorded."""
    from kling_async.models import TaskKind
    from kling_async.telemetry import _Base, _endpoint

    base = _Base("https://gw.example:8443/kling?sig=s")
    assert (base.url, base.host, base.port) == ("https://gw.example:8443/kling", "gw.example", 8443)
    for kind in TaskKind:
        folder = f"/v1/{kind.value}"
        for method, path in [
            ("POST", folder),
            ("GET", folder),
            ("GET", f"{folder}/874"),
            ("POST", f"{folder}/874"),
            ("GET", f"{folder}/"),
        ]:
            route, task_id = base.route(method, path)
            endpoint, name, in_path = _endpoint(method, path)
            assert (route.endpoint, route.name, route.ok, task_id) == (
                endpoint,
                f"{method} /kling{name}",
                (endpoint, "ok"),
                in_path,
            )
    assert base.route("GET", "/v2/x/1")[0].name == "GET /kling/v2/x/1"

    recorded = Recorded()
    telemetry = Telemetry(tracer_provider=recorded.tracer_provider)
    request = telemetry.request("GET", "https://gw.example", "/v1/videos/effects/874?sig=s")
    request.answered(200, {"code": 0, "request_id": "r-1", "data": {"task_id": "874"}})
    (span,) = recorded.spans()
    assert span.name == "GET /v1/videos/effects/{task_id}"
    assert dict(span.attributes or {}) == {
        "http.request.method": "GET",
        "url.full": "https://gw.example/v1/videos/effects/874",
        "server.address": "gw.example",
        "server.port": 443,
        "http.response.status_code": 200,
        "kling.code": 0,
        "kling.request_id": "r-1",
        "kling.task_id": "874",
    }
    assert telemetry.requests == Counter({("videos/effects read", "ok"): 1})


def test_nothing_is_built_until_the_application_sets_a_provider() -> None:
    """On the global placeholder providers (no SDK configured) a request's hooks are the
    no-ops; once the application has set its own, the next look finds them."""
    telemetry = Telemetry()
    assert not telemetry.live
    assert telemetry.request("GET", "https://gw.example", "/v1/videos/video-extend/1") is (
        NO_TELEMETRY.request("GET", "https://gw.example", "/v1/videos/video-extend/1")
    )
    recorded = Recorded()
    telemetry._providers = (lambda: recorded.tracer_provider, lambda: recorded.meter_provider)
    assert not telemetry.live  # looked a moment ago: not again before a second has passed
    telemetry.quiet_until = 0.0
    assert telemetry.live


async def test_a_request_asks_for_its_trace_only_when_something_may_record() -> None:
    """While the providers are placeholders (looked at less than a second ago) a request
    does not even ask for a trace; once a look is due, the next one does."""
    telemetry = Telemetry()
    asked: list[str] = []
    real_request = telemetry.request

    def request(method: str, base_url: str, path: str) -> Any:
        asked.append(path)
        return real_request(method, base_url, path)

    telemetry.request = request  # type: ignore[method-assign]
    assert not telemetry.live  # a look: quiet for a second
    async with (
        FakeKlingServer(api_key=KEY) as server,
        KlingClient(api_key=KEY, base_url=server.url, telemetry=telemetry) as client,
    ):
        task = await client.extend_video("vid-1", task_id="parent-1")
        await client.get_task(task.id)
        assert asked == []
        telemetry.quiet_until = 0.0  # a second has passed
        await client.get_task(task.id)
    assert asked == [f"/v1/videos/video-extend/{task.id}"]


async def test_callbacks_are_counted_by_outcome(recorded: Recorded) -> None:
    """The client's receiver's callbacks: accepted, and refused by reason."""
    receiver = CallbackReceiver()
    KlingClient(
        api_key=KEY,
        base_url="https://gw.example",
        callbacks=receiver,
        meter_provider=recorded.meter_provider,
    )
    task = b'{"task_id": "t-1", "task_status": "succeed"}'
    assert await receiver.handle(task) == 200
    assert await receiver.handle(b"not json") == 400
    assert await receiver.handle(b"not json either") == 400
    assert recorded.sums("kling.callbacks", "kling.outcome", "kling.reason") == {
        ("accepted", "accepted"): 1,
        ("refused", "not a task object"): 2,
    }


async def test_a_chain_is_a_span_holding_its_steps(recorded: Recorded) -> None:
    """Two chains of two steps in one batch: a chain span each, under the batch's, holding
    its steps' creates and watches; its steps, length and source video as attributes."""
    chains = [ChainRequest(f"vid-{i}", task_id=f"parent-{i}", steps=2) for i in (0, 1)]
    server = FakeKlingServer(api_key=KEY, durations=FAST_TASKS)
    async with server, recorded.client(server) as client:
        outcomes = [o async for o in client.chain_many(chains, concurrency=2)]
    assert all(o.ok for o in outcomes)

    spans = recorded.spans()
    (batch,) = [s for s in spans if s.name == "kling.batch"]
    chain_spans = [s for s in spans if s.name == "kling.chain"]
    assert sorted(children(spans, batch), key=id) == sorted(chain_spans, key=id)
    for outcome in outcomes:
        source = outcome.request.video_id
        (span,) = [s for s in chain_spans if dict(s.attributes or {})["kling.video_id"] == source]
        assert dict(span.attributes or {}) == {
            "kling.video_id": source,
            "kling.chain.steps": 2,
            "kling.chain.duration": float(outcome.chain.duration or 0),
        }
        steps = children(spans, span)
        watched = {
            dict(s.attributes or {})["kling.task_id"] for s in steps if s.name == "kling.watch"
        }
        assert watched == {task.id for task in outcome.chain.tasks}
        assert Counter(s.name for s in steps) == Counter(
            {"POST /kling/v1/videos/video-extend": 2, "kling.watch": 2}
        )


async def test_a_failed_chain_span_names_its_steps_failure(recorded: Recorded) -> None:
    """A chain whose first step fails: its span ends in error with the step's own failure."""
    chain = ChainRequest("vid-0", task_id="parent-0", steps=2)
    server = FakeKlingServer(api_key=KEY, durations=FAST_TASKS, fail_rate=1.0)
    async with server, recorded.client(server) as client:
        (outcome,) = [o async for o in client.chain_many([chain])]
    assert isinstance(outcome.error, ChainError)

    (span,) = [s for s in recorded.spans() if s.name == "kling.chain"]
    assert dict(span.attributes or {}) == {
        "kling.video_id": "vid-0",
        "kling.chain.steps": 0,
        "error.type": "TaskFailedError",
    }
    assert span.status.status_code is StatusCode.ERROR


def is_exception_event_of(span: ReadableSpan, error: BaseException) -> bool:
    """Whether `span`'s only event is the exception event of `error`."""
    (event,) = span.events
    attributes = dict(event.attributes or {})
    kind = f"{type(error).__module__}.{type(error).__qualname__}"
    return event.name == "exception" and (
        attributes["exception.type"],
        attributes["exception.message"],
    ) == (kind, str(error))


async def test_a_chain_whose_source_is_too_old_has_a_span_of_its_refusal(
    recorded: Recorded,
) -> None:
    """A chain stopped before step 1 (its source past 30 days): a span all the same, in
    error, with the refusal as its exception."""
    then = time.time() - 31 * 86400
    server = FakeKlingServer(api_key=KEY, wall_clock=lambda: then)
    async with server, recorded.client(server) as client:
        source = await client.watch(await client.text_to_video("a harbour", duration=5))
        chain = ChainRequest(source.videos[0].id, task_id=source.id, steps=2)
        (outcome,) = [o async for o in client.chain_many([chain])]
    assert outcome.error is not None and outcome.error.step == 1

    (span,) = [s for s in recorded.spans() if s.name == "kling.chain"]
    assert dict(span.attributes or {}) == {
        "kling.video_id": source.videos[0].id,
        "kling.chain.steps": 0,
        "error.type": "ChainError",
    }
    assert span.status.status_code is StatusCode.ERROR
    assert is_exception_event_of(span, outcome.error)


async def test_a_chain_refused_before_anything_is_sent_has_a_span(recorded: Recorded) -> None:
    """A chain refused by the checks made before anything is sent: a span in error."""
    server = FakeKlingServer(api_key=KEY, durations=FAST_TASKS)
    async with server, recorded.client(server) as client:
        with pytest.raises(InvalidArgumentError) as caught:
            client.chain_many([ChainRequest("vid-0", task_id="parent-0")])  # how far: unsaid
    assert server.record.create_count == 0

    (span,) = [s for s in recorded.spans() if s.name == "kling.chain"]
    assert dict(span.attributes or {}) == {
        "kling.video_id": "vid-0",
        "kling.chain.steps": 0,
        "error.type": "InvalidArgumentError",
    }
    assert span.status.status_code is StatusCode.ERROR
    assert is_exception_event_of(span, caught.value)


async def test_slots_of_the_batch_cap_are_counted_held_and_waited_for(
    recorded: Recorded,
) -> None:
    """Four extensions under a cap of two: two slots held at most, none at the end; each of
    the four slots taken is a wait recorded, the first two without waiting, the last two
    after one."""
    held: list[int] = []

    def look(event: BatchEvent) -> None:
        if event.kind is BatchEventKind.SUBMITTED:
            held.append(recorded.sums("kling.slots.held", "kling.slot.scope")[("batch",)])

    items = [VideoExtendRequest(f"vid-{i}", task_id=f"parent-{i}") for i in range(4)]
    server = FakeKlingServer(api_key=KEY, durations=FAST_TASKS)
    async with server, recorded.client(server) as client:
        outcomes = [o async for o in client.extend_many(items, concurrency=2, on_event=look)]
    assert all(o.ok for o in outcomes)
    assert len(held) == 4 and max(held) == 2
    assert recorded.sums("kling.slots.held", "kling.slot.scope") == {("batch",): 0}
    (waits,) = recorded.points("kling.slot.wait")
    assert dict(waits.attributes) == {"kling.slot.scope": "batch"}
    assert waits.count == 4 and waits.min == 0 and waits.max > 0


async def test_the_accounts_slots_are_counted_held_and_waited_for(
    recorded: Recorded, database_url: str
) -> None:
    """With the account's quota shared over a database at one task, the second of two
    creates waits for the first task's slot: a wait of the account's scope. Each task in
    flight holds the account's one slot, given back when it ends."""
    held: list[int] = []

    def look(event: BatchEvent) -> None:
        if event.kind is BatchEventKind.SUBMITTED:
            held.append(recorded.sums("kling.slots.held", "kling.slot.scope")[("account",)])

    items = [VideoExtendRequest(f"vid-{i}", task_id=f"parent-{i}") for i in range(2)]
    async with FakeKlingServer(api_key=KEY, durations=FAST_TASKS) as server:
        client = recorded.client(server, database_url=database_url, parallel_tasks=1)
        async with client:
            outcomes = [o async for o in client.extend_many(items, concurrency=2, on_event=look)]
    assert all(o.ok for o in outcomes)
    assert held == [1, 1]
    assert recorded.sums("kling.slots.held", "kling.slot.scope") == {
        ("batch",): 0,
        ("account",): 0,
    }
    waits = {
        dict(point.attributes)["kling.slot.scope"]: point
        for point in recorded.points("kling.slot.wait")
    }
    assert waits["account"].count == 2
    assert waits["account"].min == 0 and waits["account"].max > 0


async def test_the_account_slot_of_a_create_that_made_nothing_is_given_back(
    recorded: Recorded, database_url: str
) -> None:
    """A create refused in the server's own words made nothing: its entry is forgotten and
    the account's slot it held is counted free again."""
    server = FakeKlingServer(api_key=KEY, durations=FAST_TASKS)
    server.faults.push(Fault.http_error(400, 1201, "bad parameter"), method="POST")
    async with server:
        client = recorded.client(server, database_url=database_url, parallel_tasks=1)
        async with client:
            item = VideoExtendRequest("vid-0", task_id="parent-0")
            outcomes = []
            async for outcome in client.extend_many([item]):
                outcomes.append(outcome)
                held = recorded.sums("kling.slots.held", "kling.slot.scope")  # still running
    assert not outcomes[0].ok and server.record.create_count == 0
    assert held[("account",)] == 0


async def test_a_running_task_taken_over_or_reopened_counts_its_account_slot_held(
    recorded: Recorded, database_url: str
) -> None:
    """A process that takes over another's running task, or reopens a finished entry whose
    task still runs, holds that task's account slot: counted held, not as a wait, until
    its outcome frees it."""
    request = VideoExtendRequest("vid-0", task_id="parent-0")
    running = Task("t-1", TaskKind.VIDEO_EXTEND, TaskStatus.PROCESSING)
    done = Task("t-1", TaskKind.VIDEO_EXTEND, TaskStatus.SUCCEED)

    def held() -> int:
        return recorded.sums("kling.slots.held", "kling.slot.scope").get(("account",), 0)

    async with (
        Coordination(database_url, account="acct", parallel_tasks=3) as first,
        Coordination(database_url, account="acct") as second,
    ):
        second.telemetry = Telemetry(meter_provider=recorded.meter_provider)
        gone, adopter = first.journal("ns"), second.journal("ns")
        await gone.record_intent("k", request)
        await gone.record_task("k", running)
        await gone.close()  # its lease given up: the key is free to take, its task runs on
        await adopter.claim("k", await adopter.entry("k"))
        assert held() == 1
        await adopter.record_outcome("k", running, TimeoutError("watched too long"))
        assert held() == 0
        await adopter.claim("k", await adopter.entry("k"))
        assert held() == 0  # a finished entry holds no slot until reopened
        await adopter.reopen("k")
        assert held() == 1
        await adopter.record_outcome("k", done, None)
        assert held() == 0
    assert recorded.points("kling.slot.wait") == []
