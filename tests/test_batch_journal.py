"""extend_many with a journal: resume, replay, reconcile; nothing paid twice, nothing lost."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

from kling_async import (
    AmbiguousSubmissionError,
    BatchEvent,
    BatchEventKind,
    BatchOutcome,
    InsufficientBalanceError,
    InvalidArgumentError,
    KlingClient,
    KlingError,
    NotSentError,
    PollPolicy,
    RetryPolicy,
    Task,
    TaskFailedError,
    TaskKind,
    TaskStatus,
    VideoExtendRequest,
)
from kling_async.batch import ConcurrencyWindow
from kling_async.journal import (
    ClaimedElsewhereError,
    EntryState,
    Journal,
    JournalEntry,
    JournalError,
    request_key,
)
from kling_async.testing import Durations, FakeKlingServer, Fault

pytestmark = pytest.mark.anyio

KEY = "test-api-key"
FAST = Durations(submitted_for=5.0, median=60.0, sigma=0.3)
QUICK = PollPolicy(initial_delay=0.01, min_interval=0.01, max_interval=0.04, timeout=30)
PATIENT = RetryPolicy(
    max_attempts=4, base_delay=0.01, max_delay=0.05, rate_limit_floor=0.01, lookup_grace=0.01
)


@pytest.fixture(params=["gateway", "official"])
async def server(request: pytest.FixtureRequest) -> AsyncIterator[FakeKlingServer]:
    async with FakeKlingServer(dialect=request.param, api_key=KEY, durations=FAST) as fake:
        yield fake


def client_for(server: FakeKlingServer) -> KlingClient:
    return KlingClient(
        api_key=KEY, base_url=server.url, dialect=server.dialect, poll=QUICK, retry=PATIENT
    )


def requests(n: int) -> list[VideoExtendRequest]:
    return [VideoExtendRequest(f"vid-{i}", task_id=f"p-{i}", key=f"row-{i}") for i in range(n)]


async def run(
    server: FakeKlingServer, items: list[VideoExtendRequest], journal: Path, stop_after: int = 0
) -> list[BatchOutcome]:
    """Run the batch; with `stop_after`, leave it after that many outcomes (an interruption)."""
    outcomes: list[BatchOutcome] = []
    async with (
        client_for(server) as client,
        client.extend_many(items, concurrency=8, journal=journal) as batch,
    ):
        async for outcome in batch:
            outcomes.append(outcome)
            if len(outcomes) == stop_after:
                break
    return outcomes


async def test_interrupted_batch_resumes_without_paying_twice(
    server: FakeKlingServer, tmp_path: Path
) -> None:
    """Stopped midway then run again: every request created exactly once, every outcome out."""
    items = requests(40)
    journal = tmp_path / "batch.journal"
    first = await run(server, items, journal, stop_after=10)
    assert len(first) == 10
    second = await run(server, items, journal)
    assert Counter(o.request.key for o in second) == Counter(r.key for r in items)
    assert all(o.ok for o in second)
    assert server.record.create_count == 40
    assert all(server.record.creates_for(f"vid-{i}") == 1 for i in range(40))


async def test_finished_batch_is_replayed_without_requests(
    server: FakeKlingServer, tmp_path: Path
) -> None:
    """A second run of a finished batch sends nothing and reports the same outcomes."""
    items = requests(6)
    journal = tmp_path / "batch.journal"
    first = await run(server, items, journal)
    seen = len(server.record.requests)
    second = await run(server, items, journal)
    assert len(server.record.requests) == seen
    assert {o.task.id for o in second if o.task} == {o.task.id for o in first if o.task}
    assert all(o.ok for o in second)


async def test_failed_tasks_are_replayed_as_failures(tmp_path: Path) -> None:
    """A task that failed is reported failed again, not resubmitted."""
    async with FakeKlingServer(api_key=KEY, durations=FAST, fail_rate=1.0) as server:
        journal = tmp_path / "j"
        await run(server, requests(3), journal)
        again = await run(server, requests(3), journal)
        assert server.record.create_count == 3
    assert all(o.task and o.task.status is TaskStatus.FAILED for o in again)
    assert all(o.error is not None and "failed" in str(o.error) for o in again)


async def _journal_an_unanswered_create(
    server: FakeKlingServer, journal_path: Path, request: VideoExtendRequest, *, send: bool
) -> VideoExtendRequest:
    """Journal an intent as a crashed run would have; optionally the create did reach the API."""
    async with client_for(server) as client:
        prepared = client.prepare(request)
        async with Journal(journal_path) as journal:
            await journal.record_intent(request_key(request), prepared)
        if send:
            await client.submit(prepared)
    return prepared


async def test_unrecorded_create_is_reconciled_by_external_id(tmp_path: Path) -> None:
    """Official API: a create sent but never recorded is found by its external id and watched."""
    async with FakeKlingServer(dialect="official", api_key=KEY, durations=FAST) as server:
        journal = tmp_path / "j"
        request = requests(1)[0]
        await _journal_an_unanswered_create(server, journal, request, send=True)
        outcomes = await run(server, [request], journal)
        lookups = [r for r in server.record.requests if "/ka-" in r.path]
        assert server.record.create_count == 1
    assert outcomes[0].ok
    assert lookups


async def test_a_resumed_resend_refused_as_a_duplicate_adopts_the_task(tmp_path: Path) -> None:
    """Official API: the look-up misses a create that did land (a lagging index); the resend
    under the same external id is refused as a duplicate, and that task is adopted."""
    async with FakeKlingServer(dialect="official", api_key=KEY, durations=FAST) as server:
        journal = tmp_path / "j"
        request = requests(1)[0]
        await _journal_an_unanswered_create(server, journal, request, send=True)
        server.faults.push(Fault.http_error(404, 1203, "task does not exist"), method="GET")
        outcomes = await run(server, [request], journal)
        posts = [r.status for r in server.record.requests if r.method == "POST"]
        assert server.record.create_count == 1
        created = server.record.created[0]
    assert posts == [200, 400]
    assert outcomes[0].ok
    assert outcomes[0].task is not None
    assert outcomes[0].task.id == created


async def test_unsent_create_is_sent_once_on_the_official_api(tmp_path: Path) -> None:
    """Official API: an intent whose create never reached the API is sent, once."""
    async with FakeKlingServer(dialect="official", api_key=KEY, durations=FAST) as server:
        journal = tmp_path / "j"
        request = requests(1)[0]
        prepared = await _journal_an_unanswered_create(server, journal, request, send=False)
        outcomes = await run(server, [request], journal)
        assert server.record.create_count == 1
        create = next(r for r in server.record.requests if r.method == "POST")
    assert outcomes[0].ok
    assert create.body is not None
    assert create.body["external_task_id"] == prepared.external_task_id


async def test_unrecorded_create_on_a_gateway_is_reported_not_resent(tmp_path: Path) -> None:
    """Gateway: an intent without a task id cannot be looked up: ambiguous, never re-sent."""
    async with FakeKlingServer(dialect="gateway", api_key=KEY, durations=FAST) as server:
        journal = tmp_path / "j"
        request = requests(1)[0]
        await _journal_an_unanswered_create(server, journal, request, send=True)
        outcomes = await run(server, [request], journal)
        assert server.record.create_count == 1
    assert isinstance(outcomes[0].error, AmbiguousSubmissionError)
    async with Journal(journal) as opened:
        entry = await opened.entry("row-0")
    assert entry is not None
    assert entry.error_type == "AmbiguousSubmissionError"


async def test_ambiguous_create_is_journaled_then_reconciled(tmp_path: Path) -> None:
    """A create whose answer is lost stays reconcilable; the next run finds it, no double pay."""
    async with FakeKlingServer(dialect="official", api_key=KEY, durations=FAST) as server:
        journal = tmp_path / "j"
        server.faults.push(Fault.drop_after_create(), method="POST")
        server.faults.push(Fault.http_error(503, 5001, "lookup down"), method="GET", times=4)
        first = await run(server, requests(1), journal)
        assert isinstance(first[0].error, AmbiguousSubmissionError)
        second = await run(server, requests(1), journal)
        assert server.record.create_count == 1
    assert second[0].ok


async def test_ambiguous_create_that_made_nothing_is_sent_once_more(tmp_path: Path) -> None:
    """Lost before the server, and so was the resend: reported ambiguous, then found absent
    and sent on the next run; journaled."""
    async with FakeKlingServer(dialect="official", api_key=KEY, durations=FAST) as server:
        journal = tmp_path / "j"
        server.faults.push(Fault.drop(), method="POST", times=2)
        first = await run(server, requests(1), journal)
        assert isinstance(first[0].error, AmbiguousSubmissionError)
        assert server.record.create_count == 0
        second = await run(server, requests(1), journal)
        assert server.record.create_count == 1
        created = server.record.created[0]
    assert second[0].ok
    async with Journal(journal) as opened:
        entry = await opened.entry("row-0")
    assert entry is not None
    assert entry.task is not None
    assert entry.task.id == created
    assert entry.state is EntryState.FINISHED


async def test_request_that_made_nothing_is_sent_again(tmp_path: Path) -> None:
    """An outcome that surely created nothing (here: account error) is retried on re-run."""
    async with FakeKlingServer(dialect="gateway", api_key=KEY, durations=FAST) as server:
        journal = tmp_path / "j"
        server.faults.push(Fault.http_error(429, 1102, "resource pack used up"), method="POST")
        first = await run(server, requests(1), journal)
        assert first[0].task is None
        second = await run(server, requests(1), journal)
        assert server.record.create_count == 1
    assert second[0].ok


async def test_identical_requests_are_refused_with_a_journal(tmp_path: Path) -> None:
    """Two identical requests without keys would share a journal entry: refused, unsent."""
    async with FakeKlingServer(api_key=KEY, durations=FAST) as server:
        items = [VideoExtendRequest("v", task_id="p"), VideoExtendRequest("v", task_id="p")]
        with pytest.raises(InvalidArgumentError, match="give each its own key") as caught:
            await run(server, items, tmp_path / "j")
        assert server.record.requests == []
    assert "requests[0] and requests[1] are the same request without a key" in str(caught.value)


async def test_requests_not_sent_after_a_stop_are_sent_by_the_next_run(tmp_path: Path) -> None:
    """After a balance stop the unsent requests are not journaled as done: a re-run sends
    each of them once."""
    async with FakeKlingServer(dialect="gateway", api_key=KEY, durations=FAST) as server:
        journal = tmp_path / "j"
        server.faults.push(Fault.http_error(429, 1102, "resource pack used up"), method="POST")
        async with (
            client_for(server) as client,
            client.extend_many(requests(10), concurrency=1, journal=journal) as batch,
        ):
            first = [o async for o in batch]
        assert sum(isinstance(o.error, NotSentError) for o in first) == 9
        assert server.record.create_count == 0
        again = await run(server, requests(10), journal)
        assert server.record.create_count == 10
    assert len(again) == 10
    assert all(o.ok for o in again)


async def test_journal_records_every_step(tmp_path: Path) -> None:
    """After a run each entry is finished with its task."""
    async with FakeKlingServer(api_key=KEY, durations=FAST) as server:
        journal = tmp_path / "j"
        await run(server, requests(3), journal)
    async with Journal(journal) as opened:
        entries = await opened.entries()
    assert [e.state for e in entries] == [EntryState.FINISHED] * 3
    assert all(e.task is not None and e.task.status is TaskStatus.SUCCEED for e in entries)


async def test_invalid_request_is_not_journaled(tmp_path: Path) -> None:
    """A request rejected before sending leaves no journal entry."""
    async with FakeKlingServer(api_key=KEY, durations=FAST) as server:
        journal = tmp_path / "j"
        outcomes = await run(server, [VideoExtendRequest("", task_id="p", key="bad")], journal)
    assert isinstance(outcomes[0].error, InvalidArgumentError)
    async with Journal(journal) as opened:
        assert await opened.entries() == []


async def test_foreign_journal_is_a_clear_error(tmp_path: Path) -> None:
    """A file that is not a journal stops the batch with JournalError before any request."""
    foreign = tmp_path / "notes.txt"
    foreign.write_text("shopping list: eggs, milk")
    async with FakeKlingServer(api_key=KEY, durations=FAST) as server:
        with pytest.raises(JournalError, match="not a kling_async journal"):
            await run(server, requests(2), foreign)
        assert server.record.requests == []


class FailingJournal(Journal):
    """A journal whose disk 'fills up' at the third task record."""

    recorded = 0

    async def record_task(self, key: str, task: Task) -> None:
        self.recorded += 1
        if self.recorded == 3:
            raise JournalError(self.path, f"The journal {self.path} could not be written.")
        await super().record_task(key, task)


async def test_a_journal_that_fails_stops_the_batch_and_names_the_task(tmp_path: Path) -> None:
    """If a new task cannot be journaled, the batch stops and the error names that task."""
    async with FakeKlingServer(api_key=KEY, durations=FAST) as server:
        journal = FailingJournal(tmp_path / "j")
        async with client_for(server) as client:
            with pytest.raises(JournalError, match="is not journaled") as caught:
                async for _ in client.extend_many(requests(10), concurrency=1, journal=journal):
                    pass
        await journal.close()
        third = server.record.created[2]
    assert caught.value.path == tmp_path / "j"
    assert str(caught.value) == (
        f"The journal {tmp_path / 'j'} could not be written. Task {third} was created for "
        "request 'row-2' but is not journaled: note its id before running the batch again."
    )
    assert server.record.create_count == 3


async def test_a_failed_lookup_never_leads_to_a_second_create(tmp_path: Path) -> None:
    """While the lookup of an unrecorded create keeps failing, nothing is sent again."""
    async with FakeKlingServer(dialect="official", api_key=KEY, durations=FAST) as server:
        journal = tmp_path / "j"
        server.faults.push(Fault.drop_after_create(), method="POST")
        server.faults.push(Fault.http_error(503, 5001, "lookup down"), method="GET", times=4)
        await run(server, requests(1), journal)  # ambiguous: the lookup failed
        server.faults.push(Fault.http_error(503, 5001, "lookup down"), method="GET", times=4)
        second = await run(server, requests(1), journal)  # the lookup fails again
        assert second[0].task is None
        third = await run(server, requests(1), journal)  # now it is found
        assert server.record.create_count == 1
    assert third[0].ok


async def test_an_old_failure_replayed_does_not_trigger_fail_fast(tmp_path: Path) -> None:
    """With fail_fast, a failure replayed from the journal does not stop the new requests."""
    journal = tmp_path / "j"
    async with FakeKlingServer(api_key=KEY, durations=FAST, fail_rate=1.0) as server:
        await run(server, requests(1), journal)
    async with FakeKlingServer(api_key=KEY, durations=FAST) as server:
        async with (
            client_for(server) as client,
            client.extend_many(requests(4), concurrency=1, journal=journal, fail_fast=True) as b,
        ):
            outcomes = [o async for o in b]
        assert server.record.create_count == 3
    assert sorted(o.ok for o in outcomes) == [False, True, True, True]


async def test_1303_refusals_with_a_journal_never_leave_a_request_waiting_for_its_own_slot(
    tmp_path: Path,
) -> None:
    """Another client holds the account's only slot, so every create of the batch is refused
    with 1303 at first: a refused request gives its slot of the window back and takes it
    again while the batch's other requests hold, wait for or retake the rest, and nothing it
    waits for waits for it. Every request is created once and ends (a deadlock would hit
    the bound instead)."""
    async with FakeKlingServer(api_key=KEY, durations=FAST, max_concurrent=1) as server:
        async with client_for(server) as outsider:
            await outsider.extend_video("vid-x", task_id="p-x")  # the account is now full
        items = requests(12)
        with anyio.fail_after(60):
            async with (
                client_for(server) as client,
                client.extend_many(items, concurrency=4, journal=tmp_path / "j") as batch,
            ):
                outcomes = [o async for o in batch]
                window = batch.window
        refused = [r for r in server.record.requests if r.status == 429]
        assert refused and server.record.peak_concurrent == 1
        assert server.record.create_count == 13
    assert sorted(o.request.key or "" for o in outcomes if o.ok) == sorted(
        i.key or "" for i in items
    )
    assert window.in_use == 0


async def test_a_request_stopped_before_sending_is_sent_on_the_next_run(tmp_path: Path) -> None:
    """Refused, then held back by a stop: no journal entry stays, so a re-run sends it."""
    journal = tmp_path / "j"
    async with FakeKlingServer(dialect="gateway", api_key=KEY, durations=FAST) as server:
        server.faults.push(Fault.rate_limited(retry_after=0.3, code=1303), method="POST")
        server.faults.push(Fault.http_error(429, 1102, "resource pack used up"), method="POST")
        await run(server, requests(2), journal)
        assert server.record.create_count == 0
        again = await run(server, requests(2), journal)
        assert server.record.create_count == 2
    assert all(o.ok for o in again)


async def test_a_request_closed_while_waiting_out_refusals_is_sent_on_the_next_run(
    server: FakeKlingServer, tmp_path: Path
) -> None:
    """Refused (1303, nothing made), then the batch is closed while the request waits to try
    again (a Ctrl-C while the account is at its parallel limit): no journal entry stays, so
    the next run sends it, rather than report it ambiguous on a gateway."""
    journal = tmp_path / "j"
    server.faults.push(Fault.rate_limited(retry_after=30, code=1303), method="POST")
    refused = anyio.Event()

    def heard(event: BatchEvent) -> None:
        if event.kind is BatchEventKind.RETRIED:
            refused.set()

    async with client_for(server) as client:
        batch = client.extend_many(requests(1), journal=journal, on_event=heard)
        await batch.__aenter__()
        with anyio.fail_after(10):  # a guard against a hang, not a measurement
            await refused.wait()
        await anyio.wait_all_tasks_blocked()
        await batch.aclose()
    async with Journal(journal) as opened:
        assert await opened.entries() == []
    again = await run(server, requests(1), journal)
    assert [o.ok for o in again] == [True]
    assert server.record.create_count == 1


async def test_an_edited_request_under_an_old_key_is_refused(tmp_path: Path) -> None:
    """Changing a journaled request but keeping its key is reported, not silently ignored."""
    journal = tmp_path / "j"
    async with FakeKlingServer(api_key=KEY, durations=FAST) as server:
        await run(server, requests(1), journal)
        edited = [VideoExtendRequest("vid-0", task_id="p-0", prompt="new idea", key="row-0")]
        outcomes = await run(server, edited, journal)
        assert server.record.create_count == 1
    assert isinstance(outcomes[0].error, InvalidArgumentError)
    assert str(outcomes[0].error) == (
        "Key 'row-0' was journaled for a different request (its fields were edited since); "
        "nothing was sent for it. Give the edited request a new key, or use a new journal."
    )


class AnswerHeldClient(KlingClient):
    """A client whose create is answered (the task exists) but whose answer is held back."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.created = anyio.Event()
        self.answer = anyio.Event()

    async def submit(self, request: VideoExtendRequest, **kwargs: Any) -> Task:
        task = await super().submit(request, **kwargs)
        self.created.set()
        await self.answer.wait()  # the answer is still on its way when the batch is closed
        return task


async def test_closing_a_batch_mid_create_still_journals_the_paid_task(tmp_path: Path) -> None:
    """A create in flight when the batch is cancelled is finished and journaled first."""
    journal = tmp_path / "j.db"
    async with FakeKlingServer(dialect="gateway", api_key=KEY, durations=FAST) as server:
        client = AnswerHeldClient(api_key=KEY, base_url=server.url, dialect="gateway", poll=QUICK)
        async with client:
            batch = client.extend_many(requests(1), journal=journal)
            await batch.__aenter__()
            with anyio.fail_after(10):  # a guard against a hang, not a measurement
                await client.created.wait()
            async with anyio.create_task_group() as group:
                group.start_soon(batch.aclose)
                await anyio.wait_all_tasks_blocked()
                client.answer.set()
        (created,) = server.record.created
    async with Journal(journal) as opened:
        entry = await opened.entry("row-0")
    assert entry is not None and entry.task is not None
    assert entry.task.id == created


async def test_a_task_seen_to_end_without_its_outcome_is_finished_by_the_next_run(
    tmp_path: Path,
) -> None:
    """A run that died between seeing a task end and recording its outcome: the next run
    records it (and so gives the task's slot back), paying nothing again."""
    async with FakeKlingServer(api_key=KEY, durations=FAST) as server:
        journal_path = tmp_path / "j"
        request = requests(1)[0]
        async with client_for(server) as client:
            task = await client.extend_and_wait(request.video_id, task_id=request.task_id)
        async with Journal(journal_path) as journal:
            key = request_key(request)
            await journal.record_intent(key, request)
            await journal.record_task(key, task)
            await journal.record_status(key, task)  # ... and the process died here
        outcomes = await run(server, [request], journal_path)
        async with Journal(journal_path) as journal:
            entry = await journal.entry(key)
        assert server.record.create_count == 1
    assert outcomes[0].ok
    assert entry is not None and entry.state is EntryState.FINISHED


# --- A shared journal: a request another live process holds --------------------------------


class HeldByAnotherProcess(Journal):
    """A journal shared with another process, which holds `key` when this batch reaches it;
    `meanwhile` is what that process records before the key comes free (it finished, or it
    died and its lease ran out)."""

    def __init__(
        self, path: Path, key: str, meanwhile: Callable[[Journal], Awaitable[None]]
    ) -> None:
        super().__init__(path)
        self.key, self.meanwhile, self.refused = key, meanwhile, False

    async def claim(self, key: str, known: JournalEntry | None) -> JournalEntry | None:
        if key == self.key and not self.refused:
            self.refused = True
            raise ClaimedElsewhereError(self.path, f"{key!r} is held by another process")
        return await super().claim(key, known)

    async def released(self, key: str) -> JournalEntry | None:
        if key == self.key:
            await self.meanwhile(self)
        return await super().released(key)


async def run_beside(
    server: FakeKlingServer,
    request: VideoExtendRequest,
    meanwhile: Callable[[Journal, KlingClient], Awaitable[None]],
    path: Path,
) -> tuple[BatchOutcome, list[BatchEvent], ConcurrencyWindow]:
    """Run a batch of `request` and one more while another process holds `request`'s key."""
    events: list[BatchEvent] = []
    async with client_for(server) as client:
        journal = HeldByAnotherProcess(
            path, request_key(request), lambda journal: meanwhile(journal, client)
        )
        items = [request, VideoExtendRequest("vid-other", task_id="p-other", key="other")]
        async with (
            journal,
            client.extend_many(items, concurrency=2, journal=journal, on_event=events.append) as b,
        ):
            outcomes = {o.request.key: o async for o in b}
    assert outcomes["other"].ok
    return outcomes[request.key], [e for e in events if e.request.key == request.key], b.window


FINISHED_ELSEWHERE = [
    ("succeeded", TaskStatus.SUCCEED, None),
    ("failed", TaskStatus.FAILED, "task"),
    ("given up", TaskStatus.PROCESSING, TimeoutError("gave up watching")),
]


@pytest.mark.parametrize(
    ("ended", "status", "error"), FINISHED_ELSEWHERE, ids=[f[0] for f in FINISHED_ELSEWHERE]
)
async def test_a_request_another_process_finished_is_reported_as_it_recorded(
    tmp_path: Path, ended: str, status: TaskStatus, error: Any
) -> None:
    """Its outcome is the other process's, replayed: its task, its error (a failed task's
    own, or the recorded one named as such); nothing is sent for it here."""
    request = VideoExtendRequest("vid-1", task_id="p-1", key="held", external_task_id="ext-1")
    theirs = Task("t-9", TaskKind.VIDEO_EXTEND, status, status_message="refused by review")
    recorded = TaskFailedError(theirs) if error == "task" else error

    async def finishes(journal: Journal, client: KlingClient) -> None:
        await journal.record_intent("held", request)
        await journal.record_task("held", theirs)
        await journal.record_outcome("held", theirs, recorded)

    async with FakeKlingServer(api_key=KEY, durations=FAST) as server:
        outcome, events, _ = await run_beside(server, request, finishes, tmp_path / "j")
        assert server.record.create_count == 1  # the other request's only
    assert (outcome.request, outcome.task) == (request, theirs)
    if ended == "succeeded":
        assert outcome.ok and outcome.error is None
    elif ended == "failed":
        assert isinstance(outcome.error, TaskFailedError) and outcome.error.task == theirs
    else:
        assert type(outcome.error) is KlingError
        assert str(outcome.error) == "gave up watching (TimeoutError, recorded by another process)"
    (finished,) = events
    assert finished.kind is BatchEventKind.FINISHED and finished.replayed
    assert finished.outcome == outcome


async def test_a_request_whose_holder_died_after_creating_is_adopted(tmp_path: Path) -> None:
    """The dead process's task is watched to its end, not created again, and takes no slot
    of this process's window."""
    request = VideoExtendRequest("vid-1", task_id="p-1", key="held")
    made: list[Task] = []

    async def creates_then_dies(journal: Journal, client: KlingClient) -> None:
        prepared = client.prepare(request)
        await journal.record_intent("held", prepared)
        made.append(await client.submit(prepared))
        await journal.record_task("held", made[0])

    async with FakeKlingServer(api_key=KEY, durations=FAST) as server:
        outcome, events, window = await run_beside(
            server, request, creates_then_dies, tmp_path / "j"
        )
        assert server.record.create_count == 2  # theirs and the other request's
    assert outcome.ok and outcome.task is not None and outcome.task.id == made[0].id
    assert events[0].kind is BatchEventKind.SUBMITTED
    assert not any(e.replayed for e in events)
    assert window.in_use == 0 and window.peak <= 2


async def test_a_request_whose_holder_died_before_recording_anything_is_sent(
    tmp_path: Path,
) -> None:
    """Nothing recorded by the dead process: the request is sent here, once."""

    async def dies(journal: Journal, client: KlingClient) -> None:
        return None

    request = VideoExtendRequest("vid-1", task_id="p-1", key="held")
    async with FakeKlingServer(api_key=KEY, durations=FAST) as server:
        outcome, events, window = await run_beside(server, request, dies, tmp_path / "j")
        assert server.record.create_count == 2
    assert outcome.ok and outcome.request.video_id == "vid-1"
    assert events[0].kind is BatchEventKind.SUBMITTED
    assert window.in_use == 0


async def test_identical_streamed_requests_are_refused_with_a_journal(tmp_path: Path) -> None:
    """A stream is checked as it is read: with a journal, the second of two identical
    requests without keys is refused, unsent."""
    item = VideoExtendRequest("vid-1", task_id="p-1", prompt="on")

    async def stream() -> AsyncIterator[VideoExtendRequest]:
        yield item
        yield item

    async with FakeKlingServer(api_key=KEY, durations=FAST) as server:
        async with client_for(server) as client:
            outcomes = [o async for o in client.extend_many(stream(), journal=tmp_path / "j")]
        assert server.record.create_count == 1
    (refused,) = [o for o in outcomes if o.error is not None]
    assert isinstance(refused.error, InvalidArgumentError)
    assert str(refused.error) == (
        "requests[0] and requests[1] are the same request without a key: a journal files "
        "requests by key, so give each its own key to send it twice. Nothing was sent for "
        "requests[1]."
    )


async def test_a_journaled_task_is_still_watched_after_an_account_error_stops_the_batch(
    tmp_path: Path,
) -> None:
    """After a stop, requests not yet sent are not sent, but one whose task an earlier run
    journaled is watched to its end: it is paid for already."""
    first, journaled, unsent = requests(3)
    path = tmp_path / "j"
    stopped = anyio.Event()

    def heard(event: BatchEvent) -> None:
        if event.kind is BatchEventKind.FINISHED and event.request.key == first.key:
            stopped.set()

    async def stream() -> AsyncIterator[VideoExtendRequest]:
        yield first
        with anyio.fail_after(10):  # a guard against a hang, not a measurement
            await stopped.wait()  # the rest come once the batch has stopped
        yield journaled
        yield unsent

    async with FakeKlingServer(api_key=KEY, durations=FAST) as server:
        async with client_for(server) as client:
            task = await client.extend_video(journaled.video_id, task_id=journaled.task_id)
            async with Journal(path) as journal:
                await journal.record_intent(request_key(journaled), journaled)
                await journal.record_task(request_key(journaled), task)
            server.faults.push(Fault.http_error(429, 1102, "resource pack used up"), method="POST")
            outcomes = {
                o.request.key: o
                async for o in client.extend_many(stream(), journal=path, on_event=heard)
            }
        assert server.record.create_count == 1  # the journaled task's, before the batch
    assert isinstance(outcomes[first.key].error, InsufficientBalanceError)
    assert outcomes[journaled.key].ok and outcomes[journaled.key].task is not None
    assert outcomes[journaled.key].task.id == task.id
    assert isinstance(outcomes[unsent.key].error, NotSentError)


async def test_a_create_refused_then_refused_for_its_external_id_adopts_that_task(
    tmp_path: Path,
) -> None:
    """After a refusal, the next attempt counts as a resend: an earlier attempt may have
    landed late, so an answer that its external id is taken adopts the task holding it."""
    request = VideoExtendRequest("vid-1", key="k", external_task_id="ext-k")
    async with FakeKlingServer(dialect="official", api_key=KEY, durations=FAST) as server:
        async with client_for(server) as client:
            landed_late = await client.submit(request)
            server.faults.push(Fault.rate_limited(retry_after=0.01, code=1302), method="POST")
            outcomes = [o async for o in client.extend_many([request], journal=tmp_path / "j")]
        assert server.record.create_count == 1
    (outcome,) = outcomes
    assert outcome.ok and outcome.task is not None and outcome.task.id == landed_late.id


async def test_a_task_found_on_resume_is_journaled_before_it_is_watched(tmp_path: Path) -> None:
    """The next run finds the task of a create whose answer was lost and journals it at
    once: cut short while watching it, the journal already holds the task."""
    journal = tmp_path / "j"
    async with FakeKlingServer(dialect="official", api_key=KEY, durations=FAST) as server:
        server.faults.push(Fault.drop_after_create(), method="POST")
        server.faults.push(Fault.http_error(503, 5001, "lookup down"), method="GET", times=4)
        (first,) = await run(server, requests(1), journal)
        assert isinstance(first.error, AmbiguousSubmissionError)
        submitted = anyio.Event()

        def heard(event: BatchEvent) -> None:
            if event.kind is BatchEventKind.SUBMITTED:
                submitted.set()

        async with (
            client_for(server) as client,
            client.extend_many(requests(1), journal=journal, on_event=heard),
        ):
            with anyio.fail_after(10):  # a guard against a hang, not a measurement
                await submitted.wait()
        (created,) = server.record.created
    async with Journal(journal) as opened:
        entry = await opened.entry("row-0")
    assert entry is not None and entry.state is EntryState.SUBMITTED
    assert entry.task is not None and entry.task.id == created


async def test_a_resumed_create_waits_out_the_parallel_task_limit(tmp_path: Path) -> None:
    """Official API: an intent whose create never reached the API is sent again, and a 1303
    answer to it is waited out like any create's."""
    async with FakeKlingServer(dialect="official", api_key=KEY, durations=FAST) as server:
        journal = tmp_path / "j"
        request = requests(1)[0]
        await _journal_an_unanswered_create(server, journal, request, send=False)
        server.faults.push(Fault.rate_limited(retry_after=0.01, code=1303), method="POST")
        (outcome,) = await run(server, [request], journal)
        assert server.record.create_count == 1
    assert outcome.ok
