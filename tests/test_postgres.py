"""Coordination on PostgreSQL: schema, claims, leases and fencing, the account's slots, and
batches of several clients sharing one database. Runs against a real server (see conftest)."""

from __future__ import annotations

import asyncio
import random
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta

import anyio
import anyio.lowlevel
import asyncpg
import pytest

from kling_async import (
    BatchEventKind,
    CallbackReceiver,
    ChainEvent,
    KlingClient,
    PollPolicy,
    RetryPolicy,
    Task,
    TaskKind,
    TaskStatus,
    VideoExtendRequest,
)
from kling_async._clock import FakeClock
from kling_async.journal import ClaimedElsewhereError, EntryState, JournalError, stored_request
from kling_async.postgres import SCHEMA_VERSION, Coordination, SharedRateLimiter
from kling_async.postgres.journal import _Turns
from kling_async.testing import Durations, FakeKlingServer, Fault

pytestmark = pytest.mark.anyio

KEY = "test-api-key"
REQUEST = VideoExtendRequest("vid_1", task_id="task_0", key="k")
FAST = Durations(submitted_for=5.0, median=60.0, sigma=0.3)
QUICK = PollPolicy(initial_delay=0.01, min_interval=0.01, max_interval=0.04, timeout=30)
PATIENT = RetryPolicy(max_attempts=4, base_delay=0.01, max_delay=0.05, rate_limit_floor=0.01)


def task(status: TaskStatus, task_id: str = "t-1") -> Task:
    return Task(task_id, TaskKind.VIDEO_EXTEND, status)


@asynccontextmanager
async def coordination(url: str, **options: object) -> AsyncIterator[Coordination]:
    settings: dict[str, object] = {"account": "acct", **options}
    async with Coordination(url, **settings) as opened:  # type: ignore[arg-type]
        yield opened


async def sql(url: str, statement: str, *args: object) -> object:
    connection = await asyncpg.connect(url)
    try:
        return await connection.fetchval(statement, *args)
    finally:
        await connection.close()


async def until(condition: Callable[[], Awaitable[bool]]) -> None:
    """Wait until `condition` holds: a condition of the database, not a time."""
    while not await condition():  # noqa: ASYNC110 - the database cannot set an Event
        await anyio.sleep(0.01)


async def expire_leases(url: str) -> None:
    """Time passing for the leases, without waiting: every lease ran out a second ago."""
    await sql(url, "UPDATE kling_entry SET lease_until = clock_timestamp() - interval '1 s'")


# --- schema ------------------------------------------------------------------------------


async def test_schema_is_created_on_first_use_with_its_version(database_url: str) -> None:
    """An empty database gets the tables and the version on first use; reopening keeps them."""
    async with coordination(database_url):
        pass
    async with coordination(database_url):
        pass
    assert await sql(database_url, "SELECT version FROM kling_meta") == SCHEMA_VERSION
    assert await sql(database_url, "SELECT count(*) FROM kling_meta") == 1


async def test_a_newer_schema_is_refused_clearly(database_url: str) -> None:
    """A database set up by a newer version is refused, naming both versions; nothing sent."""
    async with coordination(database_url):
        pass
    await sql(database_url, "UPDATE kling_meta SET version = $1", SCHEMA_VERSION + 1)
    with pytest.raises(JournalError, match=f"schema {SCHEMA_VERSION + 1}; this version reads"):
        async with coordination(database_url):
            pass


async def test_an_unreachable_database_is_a_clear_error_and_nothing_is_sent() -> None:
    """No server on the URL: the client's `async with` fails with words; the fake saw nothing.
    The password in the URL is never shown."""
    url = "postgresql://kling:hunter2@127.0.0.1:1/nowhere"
    async with FakeKlingServer(api_key=KEY) as server:
        client = KlingClient(api_key=KEY, base_url=server.url, database_url=url)
        with pytest.raises(JournalError, match="cannot be reached") as info:
            async with client:
                pass
        assert server.record.requests == []
    assert "hunter2" not in str(info.value) and "***" in str(info.value)


def test_the_package_imports_and_runs_without_asyncpg() -> None:
    """Without asyncpg: the package imports, a client without a database works, and one
    with a database URL says which extra to install."""
    script = """
import sys
sys.modules["asyncpg"] = None  # as if it were not installed
import kling_async
from kling_async import KlingClient, ConfigurationError
KlingClient(api_key="k", base_url="https://gw.example")
assert "kling_async.postgres" not in sys.modules
try:
    KlingClient(api_key="k", base_url="https://gw.example", database_url="postgresql://x/y")
except ConfigurationError as exc:
    print(exc)
"""
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    assert "kling-async[postgres]" in result.stdout


# --- claims, leases, fencing ---------------------------------------------------------------


async def test_a_key_is_claimed_by_one_process_at_a_time(database_url: str) -> None:
    """While A's lease lives, B's intent and claim are refused; B may not write either."""
    async with coordination(database_url) as a, coordination(database_url) as b:
        mine, theirs = a.journal("ns"), b.journal("ns")
        await mine.record_intent("k", REQUEST)
        with pytest.raises(ClaimedElsewhereError):
            await theirs.record_intent("k", REQUEST)
        entry = await theirs.entry("k")
        with pytest.raises(ClaimedElsewhereError):
            await theirs.claim("k", entry)
        with pytest.raises(ClaimedElsewhereError):
            await theirs.record_task("k", task(TaskStatus.SUBMITTED))
        await mine.record_task("k", task(TaskStatus.SUBMITTED))


async def test_an_expired_lease_is_adopted_and_the_old_owner_is_fenced_off(
    database_url: str,
) -> None:
    """B adopts A's key once A's lease ran out; A (paused meanwhile) can write nothing more."""
    async with coordination(database_url) as a, coordination(database_url) as b:
        paused, adopter = a.journal("ns"), b.journal("ns")
        await paused.record_intent("k", REQUEST)
        await paused.record_task("k", task(TaskStatus.SUBMITTED))
        await expire_leases(database_url)
        adopted = await adopter.claim("k", await adopter.entry("k"))
        assert adopted is not None and adopted.task == task(TaskStatus.SUBMITTED)
        with pytest.raises(ClaimedElsewhereError):
            await paused.record_status("k", task(TaskStatus.PROCESSING))
        with pytest.raises(ClaimedElsewhereError):
            await paused.record_outcome("k", task(TaskStatus.SUCCEED), None)
        await adopter.record_outcome("k", task(TaskStatus.SUCCEED), None)
        entry = await adopter.entry("k")
    assert entry is not None and entry.state is EntryState.FINISHED


async def test_leases_are_renewed_by_one_statement_and_given_up_on_close(
    database_url: str,
) -> None:
    """hold() keeps every claim of the process alive, one statement per tick for all of
    them; close() frees them for adoption."""
    clock = FakeClock()
    async with coordination(database_url, clock=clock) as a, coordination(database_url) as b:
        holder = a.journal("ns")
        for n in range(5):
            await holder.record_intent(f"k{n}", VideoExtendRequest(f"v{n}", task_id="p"))
        await expire_leases(database_url)
        before = a.round_trips

        async def all_renewed() -> bool:
            live = "SELECT count(*) FROM kling_entry WHERE lease_until > clock_timestamp()"
            return await sql(database_url, live) == 5

        async with anyio.create_task_group() as group:
            group.start_soon(holder.hold)
            await until(all_renewed)
            group.cancel_scope.cancel()
        assert 1 <= a.round_trips - before <= len(clock.sleeps)  # one statement per tick
        other = b.journal("ns")
        for n in range(5):
            with pytest.raises(ClaimedElsewhereError):
                await other.claim(f"k{n}", await other.entry(f"k{n}"))
        await holder.close()
        assert await other.claim("k0", await other.entry("k0")) is not None


async def test_a_waiter_hears_when_the_holder_finishes(database_url: str) -> None:
    """released() returns once the holder recorded its outcome (seen by hold's look)."""
    async with coordination(database_url) as a, coordination(database_url) as b:
        holder, waiter = a.journal("ns"), b.journal("ns")
        await holder.record_intent("k", REQUEST)
        async with anyio.create_task_group() as group:
            group.start_soon(waiter.hold)
            await holder.record_outcome("k", task(TaskStatus.SUCCEED), None)
            entry = await waiter.released("k")
            group.cancel_scope.cancel()
    assert entry is not None and entry.state is EntryState.FINISHED


# --- the account's slots --------------------------------------------------------------------


async def test_a_queued_intent_gets_the_next_free_slot_without_asking_again(
    database_url: str,
) -> None:
    """Quota 1, shared by two processes: B's intent is recorded queued (no entry yet to a
    reader: nothing was sent) and is handed A's slot when A's task ends; B sent one statement
    in all, and polled for nothing."""
    async with (
        coordination(database_url, parallel_tasks=1) as a,
        coordination(database_url) as b,
    ):
        first, second = a.journal("ns-a"), b.journal("ns-b")  # namespaces share the account
        await first.record_intent("k1", REQUEST)
        assert await a.slots_in_use() == 1
        before = b.round_trips

        async def queued() -> bool:
            return await sql(database_url, "SELECT queued FROM kling_entry WHERE key = 'k2'")

        async with anyio.create_task_group() as group:
            group.start_soon(second.record_intent, "k2", REQUEST)
            await until(queued)
            reader = a.journal("ns-b")
            assert await reader.entry("k2") is None and await reader.entries() == []
            await first.record_outcome("k1", task(TaskStatus.SUCCEED), None)
        assert b.round_trips == before + 1
        assert await a.slots_in_use() == 1 and await second.entry("k2") is not None


async def test_a_cancelled_queued_intent_leaves_nothing_behind(database_url: str) -> None:
    """An intent cancelled while it waits for a slot is removed: its key is free, and no
    slot is handed to it later."""
    async with coordination(database_url, parallel_tasks=1) as a:
        journal = a.journal("ns")
        await journal.record_intent("k1", REQUEST)

        async def queued() -> bool:
            return bool(await sql(database_url, "SELECT count(*) FROM kling_entry WHERE queued"))

        async with anyio.create_task_group() as group:
            group.start_soon(journal.record_intent, "k2", REQUEST)
            await until(queued)
            group.cancel_scope.cancel()
        assert await sql(database_url, "SELECT count(*) FROM kling_entry") == 1
        await journal.record_outcome("k1", task(TaskStatus.SUCCEED), None)
        assert await a.slots_in_use() == 0


async def test_a_queued_intent_of_a_dead_process_is_taken_over_as_new(database_url: str) -> None:
    """A process died while its intent was queued (nothing sent): no slot is handed to it,
    and the next process to ask for the key takes it over at once, with a new fence."""
    async with (
        coordination(database_url, parallel_tasks=1) as a,
        coordination(database_url) as b,
    ):
        holder, heir = a.journal("ns"), b.journal("ns")
        await holder.record_intent("k1", REQUEST)
        dead = "SELECT outcome FROM kling_intent('ns', 'k2', 'acct', $1, 0, 'gone', 0, 30, true)"
        assert await sql(database_url, dead, stored_request(REQUEST)) == "queued"
        await expire_leases(database_url)
        await holder.record_outcome("k1", task(TaskStatus.SUCCEED), None)
        assert await b.slots_in_use() == 0
        assert await heir.entry("k2") is None  # nothing was sent for it
        await heir.record_intent("k2", REQUEST)
        assert await sql(database_url, "SELECT fence FROM kling_entry WHERE key = 'k2'") == 2
        assert await b.slots_in_use() == 1


async def test_a_duration_one_process_saw_is_learned_by_the_others(database_url: str) -> None:
    """A journals the end of a task that ran 42 s: B, which saw no task end, learns that
    duration with no statement of its own (a NOTIFY in A's statement); A, whose watcher
    learned it already, does not count it twice."""
    async with coordination(database_url) as a, coordination(database_url) as b:
        journal = a.journal("ns")
        await journal.record_intent("k", REQUEST)
        start = datetime(2026, 1, 1, tzinfo=UTC)
        ended = Task(
            "t-1", TaskKind.VIDEO_EXTEND, TaskStatus.SUCCEED,
            created_at=start, updated_at=start + timedelta(seconds=42),
        )  # fmt: skip
        before = (a.round_trips, b.round_trips)
        await journal.record_outcome("k", ended, None)

        async def heard() -> bool:
            return TaskKind.VIDEO_EXTEND in b.completion

        await until(heard)
        assert b.completion[TaskKind.VIDEO_EXTEND].quantile(0.5) == 42.0
        assert (a.round_trips, b.round_trips) == (before[0] + 1, before[1])
        assert a.completion == {}


async def test_a_batchs_intents_take_turns_one_at_a_time_in_random_order() -> None:
    """Fifty intents asked at once go one at a time, each once, not in the order asked (so
    processes that start one batch together do not all ask for the same key first)."""
    turns, asking, most, order = _Turns(random.Random(7)), [0], [0], []

    async def ask(n: int) -> None:
        async with turns.turn():
            asking[0] += 1
            most[0] = max(most[0], asking[0])
            await anyio.lowlevel.checkpoint()
            order.append(n)
            asking[0] -= 1

    async with anyio.create_task_group() as group:
        for n in range(50):
            group.start_soon(ask, n)
    assert most == [1] and sorted(order) == list(range(50)) and order != list(range(50))


class First(random.Random):
    def randrange(self, *_: object) -> int:  # type: ignore[override]
        return 0


async def test_an_intent_cancelled_as_its_turn_comes_hands_the_turn_on() -> None:
    """The turn is handed to an intent whose task is cancelled before it runs (asyncio's own
    cancellation, as a web framework's): the next waiting intent gets it, none waits forever."""
    turns, ran = _Turns(First()), []

    async def ask(name: str) -> None:
        try:
            async with turns.turn():
                ran.append(name)
        except asyncio.CancelledError:
            ran.append(f"{name} cancelled")
            raise

    async with turns.turn():
        b = asyncio.create_task(ask("b"))
        c = asyncio.create_task(ask("c"))
        await anyio.wait_all_tasks_blocked()
    b.cancel()  # "b" was handed the turn as this turn ended, and has not run yet
    with anyio.fail_after(10):
        await asyncio.gather(b, c, return_exceptions=True)
    assert ran == ["b cancelled", "c"]


async def test_a_key_another_process_took_is_skipped_without_a_statement(
    database_url: str,
) -> None:
    """B hears (by NOTIFY) that A took a key: B's claim of it is refused at once, and B
    waits for A's outcome instead of asking the database about it."""
    async with coordination(database_url) as a, coordination(database_url) as b:
        mine, theirs = a.journal("ns"), b.journal("ns")
        await mine.record_intent("k", REQUEST)
        before = b.round_trips

        async def refused() -> bool:
            try:
                await theirs.claim("k", None)
            except ClaimedElsewhereError:
                return True
            return False

        await until(refused)
        assert b.round_trips == before


async def test_an_older_schema_is_brought_up_to_date(database_url: str) -> None:
    """A database of schema 1 (no queued intents) is upgraded on first use."""
    await schema_1(database_url)
    async with coordination(database_url, parallel_tasks=1) as a:
        await a.journal("ns").record_intent("k", REQUEST)
    assert await sql(database_url, "SELECT version FROM kling_meta") == SCHEMA_VERSION
    assert await sql(database_url, "SELECT holds_slot AND NOT queued FROM kling_entry") is True


async def schema_1(url: str) -> None:
    """The database as schema 1 left it (no queued intents)."""
    async with coordination(url):
        pass
    await sql(url, "ALTER TABLE kling_entry DROP COLUMN queued")
    await sql(url, "UPDATE kling_meta SET version = 1")


async def test_processes_starting_together_upgrade_an_older_schema_once(
    database_url: str,
) -> None:
    """Four new processes open a schema 1 database at once: the upgrade runs under an
    advisory lock, so one makes it and the others find it made (two at once would add the
    same column twice, and the second would fail)."""
    await schema_1(database_url)

    async def open_one() -> None:
        async with coordination(database_url):
            pass

    async with anyio.create_task_group() as group:
        for _ in range(4):
            group.start_soon(open_one)
    assert await sql(database_url, "SELECT version FROM kling_meta") == SCHEMA_VERSION


async def test_an_upgrade_waits_until_no_older_process_works_there(database_url: str) -> None:
    """An older process holds a key under a live lease: a newer one refuses to upgrade the
    schema under it, saying why and what to do; once no lease lives, it upgrades."""
    await schema_1(database_url)
    await sql(
        database_url,
        "INSERT INTO kling_entry (namespace, key, account, request, state, updated_at, owner, "
        "lease_until) VALUES ('ns', 'k', 'acct', '{}', 'intent', 0, 'old/1', "
        "clock_timestamp() + interval '1 hour')",
    )
    with pytest.raises(JournalError, match="1 key is held under a live lease") as info:
        async with coordination(database_url):
            pass
    assert "Stop the processes of the older version" in str(info.value)
    assert await sql(database_url, "SELECT version FROM kling_meta") == 1
    await expire_leases(database_url)
    async with coordination(database_url):
        pass
    assert await sql(database_url, "SELECT version FROM kling_meta") == SCHEMA_VERSION


async def test_a_slot_outlives_its_lease_and_is_freed_only_by_an_outcome(
    database_url: str,
) -> None:
    """A dead process's task keeps its slot through adoption; the adopter's outcome frees it."""
    async with coordination(database_url, parallel_tasks=3) as a, coordination(database_url) as b:
        dead, adopter = a.journal("ns"), b.journal("ns")
        await dead.record_intent("k", REQUEST)
        await dead.record_task("k", task(TaskStatus.PROCESSING))
        await expire_leases(database_url)
        assert await b.slots_in_use() == 1
        await adopter.claim("k", await adopter.entry("k"))
        assert await b.slots_in_use() == 1
        await adopter.record_outcome("k", task(TaskStatus.SUCCEED), None)
        assert await b.slots_in_use() == 0


async def test_forgetting_a_create_that_made_nothing_frees_its_slot(database_url: str) -> None:
    async with coordination(database_url, parallel_tasks=1) as a:
        journal = a.journal("ns")
        await journal.record_intent("k", REQUEST)
        await journal.forget("k")
        assert await a.slots_in_use() == 0
        await journal.record_intent("k2", REQUEST)  # the freed slot is taken at once


async def test_a_1303_halves_the_window_of_every_process_once_and_successes_widen_it(
    database_url: str,
) -> None:
    """Quota 4: A's create is refused with 1303 (another client uses the account), so the
    account's window halves to 2 for every process: B's third intent queues although the
    quota has room. B's 1303 for a slot asked before that halving is the same news and
    changes nothing; each created task widens the window by 1/window."""

    async def window() -> object:
        return await sql(database_url, "SELECT window_size FROM kling_account")

    async with (
        coordination(database_url, parallel_tasks=4) as a,
        coordination(database_url) as b,
    ):
        mine, theirs = a.journal("ns"), b.journal("ns")
        await mine.record_intent("k1", REQUEST)
        await theirs.record_intent("k2", REQUEST)
        await mine.narrow("k1")
        assert await window() == 2.0
        await theirs.narrow("k2")
        assert await window() == 2.0

        async def queued() -> bool:
            return await sql(database_url, "SELECT queued FROM kling_entry WHERE key = 'k3'")

        async with anyio.create_task_group() as group:
            group.start_soon(theirs.record_intent, "k3", REQUEST)
            await until(queued)
            await mine.record_task("k1", task(TaskStatus.SUBMITTED))
            assert await window() == 2.5
            await mine.record_outcome("k1", task(TaskStatus.SUCCEED), None)  # k3's turn
        assert await b.slots_in_use() == 2


async def test_a_batch_of_two_processes_narrows_the_shared_window_on_1303(
    database_url: str,
) -> None:
    """Another client holds half the account: the fake takes 2 tasks at once though the
    quota says 4. Two processes sharing a batch meet 1303s, halve the account's window (its
    epoch moves on), and still finish every request, each created once."""
    items = [VideoExtendRequest(f"vid-{i}", task_id=f"p-{i}", key=f"row-{i}") for i in range(10)]
    async with FakeKlingServer(api_key=KEY, durations=FAST, max_concurrent=2) as server:

        async def worker() -> None:
            async with (
                client_for(server, database_url, parallel_tasks=4) as client,
                client.extend_many(items, concurrency=4, journal="shared") as batch,
            ):
                assert all([outcome.ok async for outcome in batch])

        async with anyio.create_task_group() as group:
            group.start_soon(worker)
            group.start_soon(worker)
        assert server.record.create_count == 10
        assert any(r.status == 429 for r in server.record.requests if r.method == "POST")
    assert await sql(database_url, "SELECT epoch FROM kling_account") >= 1


# --- batches of several clients ------------------------------------------------------------


def client_for(server: FakeKlingServer, url: str, **options: object) -> KlingClient:
    return KlingClient(
        api_key=KEY,
        base_url=server.url,
        dialect=server.dialect,
        poll=QUICK,
        retry=PATIENT,
        database_url=url,
        **options,  # type: ignore[arg-type]
    )


async def test_two_clients_share_one_batch_each_request_created_once(database_url: str) -> None:
    """Two clients (two processes' worth) run the same batch under one name at once: every
    request is created once in all, both hear every outcome, and the account's quota of 4
    holds across both (the fake refuses a fifth task, and never had to)."""
    items = [VideoExtendRequest(f"vid-{i}", task_id=f"p-{i}", key=f"row-{i}") for i in range(30)]
    async with FakeKlingServer(api_key=KEY, durations=FAST, max_concurrent=4) as server:
        heard: list[list[str]] = []

        async def worker() -> None:
            outcomes = []
            async with (
                client_for(server, database_url, parallel_tasks=4) as client,
                client.extend_many(items, concurrency=4, journal="nightly") as batch,
            ):
                async for outcome in batch:
                    assert outcome.ok, outcome.error
                    outcomes.append(outcome.request.key)
            heard.append(outcomes)

        async with anyio.create_task_group() as group:
            group.start_soon(worker)
            group.start_soon(worker)
        assert server.record.create_count == 30
        assert all(server.record.creates_for(f"vid-{i}") == 1 for i in range(30))
        assert server.record.peak_concurrent <= 4
    assert [Counter(keys) for keys in heard] == [Counter(r.key for r in items)] * 2


async def test_a_batch_costs_four_statements_a_request_and_a_second_client_one_more(
    database_url: str,
) -> None:
    """Statements for the requests (the lease ticks aside): one client sends four per request
    (intent with its slot, task, one status, outcome with the slot handed on), one to read the
    journal and one to give up its leases; a second client sharing the batch adds at most one
    per request (asking for a key the other took at the same moment), since it hears of the
    others' keys by NOTIFY."""
    items = [VideoExtendRequest(f"vid-{i}", task_id=f"p-{i}", key=f"row-{i}") for i in range(20)]

    async def statements(clients: int, name: str) -> int:
        sent = 0

        async def worker() -> None:
            nonlocal sent
            async with client_for(server, database_url, parallel_tasks=4) as client:
                assert client.coordination is not None
                async with client.extend_many(items, concurrency=4, journal=name) as batch:
                    assert all([outcome.ok async for outcome in batch])
                co = client.coordination
                sent += co.round_trips - co.periodic_round_trips

        async with anyio.create_task_group() as group:
            for _ in range(clients):
                group.start_soon(worker)
        return sent

    async with FakeKlingServer(api_key=KEY, durations=FAST, max_concurrent=4) as server:
        assert await statements(1, "alone") <= 4 * len(items) + 2
        assert await statements(2, "shared") <= 5 * len(items) + 4
        assert server.record.create_count == 2 * len(items)


async def test_a_batch_without_a_name_still_keeps_to_the_account_quota(
    database_url: str,
) -> None:
    """With a database, even an unnamed batch journals its intents, so the quota holds."""
    items = [VideoExtendRequest(f"vid-{i}", task_id=f"p-{i}") for i in range(12)]
    async with FakeKlingServer(api_key=KEY, durations=FAST, max_concurrent=3) as server:
        async with (
            client_for(server, database_url, parallel_tasks=3) as one,
            client_for(server, database_url) as other,
        ):
            results: list[bool] = []

            async def run(client: KlingClient, part: list[VideoExtendRequest]) -> None:
                async with client.extend_many(part, concurrency=8) as batch:
                    results.extend([outcome.ok async for outcome in batch])

            async with anyio.create_task_group() as group:
                group.start_soon(run, one, items[:6])
                group.start_soon(run, other, items[6:])
        assert results == [True] * 12
        assert server.record.peak_concurrent <= 3 and server.record.create_count == 12


# --- the account's request rate ------------------------------------------------------------


async def test_two_clients_keep_to_one_request_rate_for_the_account(database_url: str) -> None:
    """Two clients on separate connection pools (two processes' worth), each configured for
    20 requests a second, read as fast as they may: in every second the fake saw at most the
    account's 20 (plus the burst of a tenth of a second and a slot's slack), where the two
    alone would have sent 40; each client took its slots a couple at a time."""
    rate, reads = 20.0, 30
    async with FakeKlingServer(api_key=KEY, durations=FAST) as server:
        async with client_for(server, database_url) as setup:
            made = await setup.extend_video("vid-1", task_id="p-1")
        server.record.requests.clear()

        async def reader(statements: list[int]) -> None:
            async with client_for(server, database_url, requests_per_second=rate) as client:
                assert client.coordination is not None
                before = client.coordination.round_trips
                async with anyio.create_task_group() as group:
                    for _ in range(reads):
                        group.start_soon(client.get_task, made.id)
                statements.append(client.coordination.round_trips - before)

        statements: list[int] = []
        async with anyio.create_task_group() as group:
            group.start_soon(reader, statements)
            group.start_soon(reader, statements)
        arrivals = sorted(r.at for r in server.record.requests)
    assert len(arrivals) == 2 * reads
    busiest = max(sum(1 for t in arrivals if start <= t < start + 1.0) for start in arrivals)
    assert busiest <= rate + 2 + 2
    assert all(sent <= 0.75 * reads for sent in statements)


async def test_a_shared_slot_too_far_away_is_kept_for_the_next_request(
    database_url: str,
) -> None:
    """At one request a second, the first request goes at once; the next slot is a second
    away, so a request that may wait only half a second takes none (and waits that half);
    the request after it takes the kept slot, waiting the rest: two statements in all."""
    clock = FakeClock()
    async with coordination(database_url, clock=clock) as co:
        rate = co.request_rate(1.0)
        before = co.round_trips
        assert await rate.acquire() is True
        assert await rate.acquire(within=0.5) is False
        assert await rate.acquire() is True
        assert co.round_trips - before == 2
    assert clock.sleeps == [0.5, pytest.approx(0.5, abs=0.2)]


# --- one task per key, across processes --------------------------------------------------

ONE_SUBMISSION = """
import asyncio, sys
from kling_async import KlingClient

async def main():
    key, url, database = sys.argv[1:4]
    async with KlingClient(api_key=key, base_url=url, dialect="official",
                           database_url=database) as client:
        task = await client.extend_video("vid-1", prompt="on and on", key="order-42")
    print(task.id, flush=True)

asyncio.run(main())
"""


async def test_two_processes_submitting_one_key_at_once_make_one_task(
    database_url: str,
) -> None:
    """Two processes send the same keyed extension at once (the first create is slow to be
    answered): one task is created, and both get it."""
    async with FakeKlingServer(dialect="official", api_key=KEY, durations=FAST) as server:
        server.faults.push(Fault.delay(1.0), method="POST")
        command = [sys.executable, "-c", ONE_SUBMISSION, KEY, server.url, database_url]
        ids: list[str] = []

        async def one() -> None:
            result = await anyio.run_process(command)
            ids.append(result.stdout.decode().strip())

        async with anyio.create_task_group() as group:
            group.start_soon(one)
            group.start_soon(one)
        assert server.record.create_count == 1
    assert ids[0] == ids[1] == server.record.created[0]


async def test_a_key_returns_its_task_to_any_client_and_refuses_another_request(
    database_url: str,
) -> None:
    async with (
        FakeKlingServer(api_key=KEY, durations=FAST) as server,
        client_for(server, database_url) as a,
        client_for(server, database_url) as b,
    ):
        first = await a.extend_video("vid-1", task_id="p-1", key="order-7")
        again = await b.extend_video("vid-1", task_id="p-1", key="order-7")
        assert again.id == first.id and server.record.create_count == 1
        with pytest.raises(JournalError, match="different prompt"):
            await b.extend_video("vid-1", task_id="p-1", prompt="zoom", key="order-7")
        other = await b.extend_video("vid-1", task_id="p-1", key="order-8")
        assert other.id != first.id and server.record.create_count == 2


async def test_a_key_awaited_from_another_client_returns_on_its_holders_notice(
    database_url: str,
) -> None:
    """B asks for a key while A's create for it is in flight: B reads the key, is woken by
    A's NOTIFY the moment A records the task (its fallback read is an hour away), reads it
    again and returns A's task."""
    async with (
        FakeKlingServer(api_key=KEY, durations=FAST) as server,
        client_for(server, database_url) as a,
        client_for(server, database_url) as b,
    ):
        assert b.coordination is not None
        b.coordination.recheck = 3600.0
        server.faults.push(Fault.delay(2.0), method="POST")  # two ticks of a looking waiter
        made: list[Task] = []

        async def intent_recorded() -> bool:
            return bool(await sql(database_url, "SELECT count(*) FROM kling_entry"))

        async def first() -> None:
            made.append(await a.extend_video("vid-1", task_id="p-1", key="order-5"))

        with anyio.fail_after(30):  # a missed notice would hang for the hour: fail instead
            async with anyio.create_task_group() as group:
                group.start_soon(first)
                await until(intent_recorded)
                before = b.coordination.round_trips
                again = await b.extend_video("vid-1", task_id="p-1", key="order-5")
        assert again.id == made[0].id and server.record.create_count == 1
        # Its intent, a read of the key, and one more once woken.
        assert b.coordination.round_trips - before == 3


async def test_a_key_awaited_without_a_notice_is_found_by_the_fallback_read(
    database_url: str,
) -> None:
    """The holder's notice is lost (it records the task and says nothing): the waiter reads
    the key again after `recheck` and returns the task all the same."""
    async with coordination(database_url) as a, coordination(database_url) as b:
        b.recheck = 0.05
        holder, waiter = a.journal("ns"), b.journal("ns")
        await holder.record_intent("k", REQUEST, slot=False)
        found: list[object] = []

        async def wait() -> None:
            found.append(await waiter.settled("k"))

        async def looked_again() -> bool:  # read, waited, heard nothing, read again
            return b.periodic_round_trips > 0

        with anyio.fail_after(30):
            async with anyio.create_task_group() as group:
                group.start_soon(wait)
                await until(looked_again)
                await holder.record_task("k", task(TaskStatus.SUBMITTED, "t-9"))
        entry = found[0]
        assert entry is not None and entry.task is not None  # type: ignore[attr-defined]
        assert entry.task.id == "t-9"  # type: ignore[attr-defined]


async def test_a_key_whose_holder_died_mid_create_is_found_by_its_external_id(
    database_url: str,
) -> None:
    """The holder journaled its intent, sent the create and died before recording the
    task: the next process asking for the key finds that task instead of paying again."""
    async with FakeKlingServer(dialect="official", api_key=KEY, durations=FAST) as server:
        async with client_for(server, database_url) as dead, client_for(server, database_url) as b:
            request = dead.prepare(VideoExtendRequest("vid-1", key="order-9"))
            assert dead.coordination is not None
            await dead.coordination.journal("default").record_intent("order-9", request, slot=False)
            made = await dead.submit(request)  # sent; its answer never journaled
            await expire_leases(database_url)
            found = await b.extend_video("vid-1", key="order-9")
        assert found.id == made.id and server.record.create_count == 1


async def test_a_key_whose_submission_was_cancelled_mid_create_goes_to_the_next_asker(
    database_url: str,
) -> None:
    """A's keyed extension is cancelled while its create is in flight (a web request
    dropped): the task the create made is journaled under the key all the same, so B, asking
    for the key while A's client lives on and renews its lease, gets that task at once."""
    async with (
        FakeKlingServer(api_key=KEY, durations=FAST) as server,
        client_for(server, database_url) as a,
        client_for(server, database_url) as b,
    ):
        server.faults.push(Fault.hold_answer(), method="POST")
        with anyio.fail_after(20):  # B would wait for A's client to close: fail instead
            async with anyio.create_task_group() as group:

                async def dropped() -> None:
                    await a.extend_video("vid-1", task_id="p-1", key="order-3")

                group.start_soon(dropped)
                await server.held()
                group.cancel_scope.cancel()
                server.release_held()
            again = await b.extend_video("vid-1", task_id="p-1", key="order-3")
        assert [again.id] == server.record.created
        assert [orphan.task.id for orphan in a.orphaned_tasks] == [again.id]


async def test_a_keyed_submission_once_recorded_holds_no_lease(database_url: str) -> None:
    """Each keyed task, once journaled, is given up by its process: the lease tick of a
    client that submitted many renews none of them, and no key stays under a live lease (a
    schema upgrade is not held off by an idle replica)."""
    async with (
        FakeKlingServer(api_key=KEY, durations=FAST) as server,
        client_for(server, database_url) as a,
    ):
        assert a.coordination is not None
        for n in range(5):
            await a.extend_video("vid-1", task_id="p-1", key=f"order-{n}")
        live = "SELECT count(*) FROM kling_entry WHERE lease_until > clock_timestamp()"
        assert await sql(database_url, live) == 0
        assert (
            await sql(database_url, "SELECT count(*) FROM kling_entry WHERE owner IS NOT NULL") == 0
        )
        again = await a.extend_video("vid-1", task_id="p-1", key="order-0")
        assert again.id == server.record.created[0] and server.record.create_count == 5


async def test_a_key_adopted_from_a_dead_holder_wakes_the_other_waiters(
    database_url: str,
) -> None:
    """The holder died mid-create; B and C ask for its key at once. One of them adopts it
    (its look-up slow to answer) and records the task it found: the other, waiting for the
    key under the adopter's live lease, is woken by the adopter's notice and gets the task."""
    async with FakeKlingServer(dialect="official", api_key=KEY, durations=FAST) as server:
        async with (
            client_for(server, database_url) as dead,
            client_for(server, database_url) as b,
            client_for(server, database_url) as c,
        ):
            request = dead.prepare(VideoExtendRequest("vid-1", key="order-11"))
            assert dead.coordination is not None
            await dead.coordination.journal("default").record_intent(
                "order-11", request, slot=False
            )
            made = await dead.submit(request)  # sent; its answer never journaled
            await expire_leases(database_url)
            server.faults.push(Fault.delay(1.0), method="GET")  # the adopter's look-up
            found: list[Task] = []

            async def ask(client: KlingClient) -> None:
                assert client.coordination is not None
                client.coordination.recheck = 3600.0
                found.append(await client.extend_video("vid-1", key="order-11"))

            with anyio.fail_after(20):  # the other waiter would sleep out the lease
                async with anyio.create_task_group() as group:
                    group.start_soon(ask, b)
                    group.start_soon(ask, c)
        assert [task.id for task in found] == [made.id, made.id]
        assert server.record.create_count == 1


async def test_a_duration_is_learned_only_by_its_accounts_processes_and_only_once_journaled(
    database_url: str,
) -> None:
    """B runs for the account, C for another account in the same schema, and A ends three
    tasks: one for the other account, one whose write is fenced out (the key was taken over
    meanwhile: nothing is journaled, so nothing is told), then one of B's account. B learns
    that last duration alone, C the other account's alone."""
    async with (
        coordination(database_url) as a,
        coordination(database_url, account="other") as other,
        coordination(database_url) as b,
        coordination(database_url, account="other") as c,
    ):
        start = datetime(2026, 1, 1, tzinfo=UTC)

        def ended(seconds: float) -> Task:
            return Task(
                "t-1", TaskKind.VIDEO_EXTEND, TaskStatus.SUCCEED,
                created_at=start, updated_at=start + timedelta(seconds=seconds),
            )  # fmt: skip

        elsewhere = other.journal("ns2")
        await elsewhere.record_intent("k", REQUEST)
        await elsewhere.record_outcome("k", ended(5.0), None)
        fenced, heir = a.journal("ns"), b.journal("ns")
        await fenced.record_intent("k", REQUEST)
        await expire_leases(database_url)
        assert await heir.claim("k", await heir.entry("k")) is not None
        with pytest.raises(ClaimedElsewhereError):
            await fenced.record_outcome("k", ended(7.0), None)
        mine = a.journal("ns3")
        await mine.record_intent("k", REQUEST)
        await mine.record_outcome("k", ended(42.0), None)

        async def heard() -> bool:
            return TaskKind.VIDEO_EXTEND in b.completion and TaskKind.VIDEO_EXTEND in c.completion

        await mine.record_intent("k2", REQUEST)  # a later notice, heard after all the others
        await mine.record_outcome("k2", ended(43.0), None)
        with anyio.fail_after(30):  # a guard against a hang, not a measure
            await until(heard)
            await until(lambda: _learned(b, 43.0))
        assert len(b.completion[TaskKind.VIDEO_EXTEND]) == 2  # 42 and 43, not the fenced 7
        assert b.completion[TaskKind.VIDEO_EXTEND].quantile(0.0) == 42.0
        assert len(c.completion[TaskKind.VIDEO_EXTEND]) == 1
        assert c.completion[TaskKind.VIDEO_EXTEND].quantile(0.5) == 5.0


async def _learned(co: Coordination, longest: float) -> bool:
    return co.completion[TaskKind.VIDEO_EXTEND].quantile(1.0) == longest


# --- callbacks between processes ------------------------------------------------------------

TOKEN = "shared-token-of-the-replicas"
WATCHER = """
import asyncio, sys
from kling_async import CallbackReceiver, KlingClient, PollPolicy

async def main():
    key, url, database, public = sys.argv[1:5]
    hooks = CallbackReceiver(base_url=public, token=sys.argv[5])  # served by another replica
    patient = PollPolicy(callback_interval=600, timeout=120)  # no safety-net read comes first
    async with KlingClient(api_key=key, base_url=url, dialect="gateway", database_url=database,
                           callbacks=hooks, poll=patient) as client:
        task = await client.extend_video("vid-1", task_id="p-1")
        final = await client.watch(task)
    print(final.id, final.status.value, flush=True)

asyncio.run(main())
"""


async def test_a_chain_stopped_mid_step_resumes_from_the_shared_journal(database_url: str) -> None:
    """A chain stopped while step 3 runs goes on, in another client, from the journal in the
    database: step 3's task is watched again, and the server saw each step created once; run
    again, the finished chain replays without a request."""
    stop = anyio.Event()

    def stop_in_step_three(event: ChainEvent) -> None:
        if event.step == 3 and event.kind is BatchEventKind.SUBMITTED:
            stop.set()

    async def interrupted(client: KlingClient) -> None:
        async with anyio.create_task_group() as group:

            async def run() -> None:
                await client.extend_chain(
                    "v0", task_id="t0", steps=5, journal="long", on_event=stop_in_step_three
                )

            group.start_soon(run)
            await stop.wait()
            group.cancel_scope.cancel()

    async with FakeKlingServer(api_key=KEY, durations=FAST) as server:
        with anyio.fail_after(60):  # a guard against a hang, not a measure
            async with client_for(server, database_url) as first:
                await interrupted(first)
            assert server.record.create_count == 3
            async with client_for(server, database_url) as second:
                chain = await second.extend_chain("v0", task_id="t0", steps=5, journal="long")
            seen = len(server.record.requests)
            async with client_for(server, database_url) as third:
                again = await third.extend_chain("v0", task_id="t0", steps=5, journal="long")
        assert [task.id for task in chain.tasks] == server.record.created
        assert server.record.create_count == 5
        sources = ["v0", *(task.videos[0].id for task in chain.tasks[:-1])]
        assert all(server.record.creates_for(video) == 1 for video in sources)
        assert again == chain and len(server.record.requests) == seen


async def test_a_callback_received_by_one_process_finishes_a_watcher_in_another(
    database_url: str,
) -> None:
    """Process B creates a task whose callbacks go to the replica in this process (A); A's
    receiver takes the callback and B's watcher finishes with one read."""
    async with (
        FakeKlingServer(api_key=KEY, durations=FAST) as server,
        CallbackReceiver(token=TOKEN) as hooks,
    ):
        public = await hooks.start()
        public = public.removesuffix(hooks.path)
        async with client_for(server, database_url, callbacks=hooks):  # replica A
            command = [sys.executable, "-c", WATCHER, KEY, server.url, database_url, public, TOKEN]
            with anyio.fail_after(120):  # a guard against a hang, not a measure
                result = await anyio.run_process(command)
        task_id, status = result.stdout.decode().split()
        assert status == "succeed"
        assert hooks.stats["accepted"] >= 1
        assert server.record.polls(task_id) == 1


async def test_a_hint_published_by_one_process_wakes_the_waiter_in_another(
    database_url: str,
) -> None:
    """Hints go out over the database; each is taken once, and another task's hint (an
    unknown or forged id) wakes nobody."""
    async with (
        coordination(database_url) as a,
        coordination(database_url) as b,
        CallbackReceiver() as heard,
    ):
        b.share_hints(heard)
        await a.publish_hint("t-unknown", "succeed")
        await a.publish_hint("t-1", "succeed")
        with anyio.fail_after(30):
            assert await heard.wait("t-1", 30) is True
        assert heard.take_hint("t-1") is False  # taken once


async def test_installations_in_two_schemas_never_hear_each_other(
    database_url: str, other_database_url: str
) -> None:
    """Two installations in two schemas of one database (NOTIFY reaches the whole database):
    a task's end told in one is heard by its own processes only, and a callback's hint too."""

    def ended(seconds: int) -> Task:
        start = datetime(2026, 1, 1, tzinfo=UTC)
        return Task(
            f"t-{seconds}", TaskKind.VIDEO_EXTEND, TaskStatus.SUCCEED,
            created_at=start, updated_at=start + timedelta(seconds=seconds),
        )  # fmt: skip

    async with (
        coordination(database_url) as here,
        coordination(other_database_url) as there,
        coordination(other_database_url) as there_too,
    ):
        hints: list[tuple[str, str]] = []
        there.share_hints(_HintSink(hints))
        await here.publish_hint("task-of-here", "succeed")
        journal = here.journal("ns")
        await journal.record_intent("k", REQUEST)
        await journal.record_outcome("k", ended(42), None)
        # Told later in the other schema: heard there after anything told before it.
        journal = there_too.journal("ns")
        await journal.record_intent("k", REQUEST)
        await journal.record_outcome("k", ended(7), None)
        await there_too.publish_hint("task-of-there", "succeed")

        async def heard() -> bool:
            return TaskKind.VIDEO_EXTEND in there.completion and bool(hints)

        await until(heard)
        assert there.completion[TaskKind.VIDEO_EXTEND].quantile(0.5) == 7.0
        assert hints == [("task-of-there", "succeed")]


class _HintSink:
    """A stand-in for a callback receiver: keeps the hints relayed to it."""

    def __init__(self, hints: list[tuple[str, str]]) -> None:
        self.hints = hints
        self.relay: object = None

    def hint(self, task_id: str, status: str) -> None:
        self.hints.append((task_id, status))


def test_a_shared_request_rate_must_be_positive() -> None:
    """A shared rate of zero is refused, naming the setting; a positive one is kept."""
    with pytest.raises(ValueError, match=r"^requests_per_second must be positive, not 0$"):
        SharedRateLimiter(None, 0, clock=FakeClock())
    assert SharedRateLimiter(None, 0.5, clock=FakeClock()).rate == 0.5
