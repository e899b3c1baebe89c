"""The account-wide rate limiter: its schedule, and one limit shared by all watchers."""

from __future__ import annotations

import anyio
import pytest

from kling_async import KlingClient, PollPolicy
from kling_async._clock import FakeClock
from kling_async._ratelimit import RateLimiter
from kling_async.testing import Durations, FakeKlingServer

pytestmark = pytest.mark.anyio


def test_slots_are_spaced_by_the_rate() -> None:
    """Past the burst, requests are 1/rate apart."""
    clock = FakeClock()
    limiter = RateLimiter(4.0, clock=clock, burst=1)
    assert [limiter.reserve() for _ in range(4)] == [0.0, 0.25, 0.5, 0.75]


def test_burst_goes_at_once_then_spacing() -> None:
    """Up to `burst` requests go at once; then they are spaced."""
    clock = FakeClock()
    limiter = RateLimiter(10.0, clock=clock, burst=3)
    waits = [limiter.reserve() for _ in range(5)]
    assert waits[:3] == [0.0, 0.0, 0.0]
    assert waits[3] == pytest.approx(0.1)
    assert waits[4] == pytest.approx(0.2)


def test_idle_time_is_not_saved_up_beyond_the_burst() -> None:
    """After a long pause only a burst goes at once, not everything that was missed."""
    clock = FakeClock()
    limiter = RateLimiter(10.0, clock=clock, burst=2)
    clock.advance(100)
    waits = [limiter.reserve() for _ in range(3)]
    assert waits[:2] == [0.0, 0.0]
    assert waits[2] == pytest.approx(0.1)


async def test_acquire_sleeps_on_the_clock() -> None:
    """acquire waits (on the client's clock) for its slot."""
    clock = FakeClock()
    limiter = RateLimiter(2.0, clock=clock, burst=1)
    for _ in range(3):
        await limiter.acquire()
    assert clock.sleeps == [0.5, 0.5]


def test_nonsense_rate_is_refused() -> None:
    """A rate of zero or less is a clear error."""
    with pytest.raises(ValueError, match="positive"):
        RateLimiter(0, clock=FakeClock())


async def test_many_watchers_share_one_limit() -> None:
    """Fifty watchers polling fast cannot together exceed the client's request rate."""
    slow = Durations(submitted_for=5.0, median=10_000.0, sigma=0.0)
    async with FakeKlingServer(api_key="k", durations=slow) as server:
        poll = PollPolicy(initial_delay=0, min_interval=0.001, max_interval=0.001)
        client = KlingClient(api_key="k", base_url=server.url, poll=poll, requests_per_second=40)
        async with client:
            tasks = [await client.extend_video(f"v{n}", task_id="p") for n in range(50)]
            with anyio.move_on_after(1.0):
                async with anyio.create_task_group() as group:
                    for task in tasks:
                        group.start_soon(client.watch(task).result)
        gets = sorted(r.at for r in server.record.requests if r.method == "GET")
    rate = (len(gets) - 1) / (gets[-1] - gets[0])
    assert len(gets) > 20
    assert rate <= 40 * 1.15


async def test_a_cancelled_waiter_gives_its_slot_back() -> None:
    """Requests cancelled while waiting do not push later ones further out."""
    clock = FakeClock()
    limiter = RateLimiter(1.0, clock=clock, burst=1)
    limiter.reserve()  # the slot now
    for _ in range(50):  # fifty callers give up while waiting
        with anyio.CancelScope() as scope:
            scope.cancel()
            await limiter.acquire()
    assert limiter.reserve() == pytest.approx(1.0)


async def test_a_slot_beyond_the_deadline_is_not_taken() -> None:
    """acquire(within=...) waits only `within` and takes no slot when its slot is later."""
    clock = FakeClock()
    limiter = RateLimiter(0.1, clock=clock, burst=1)
    assert await limiter.acquire() is True  # the slot now; the next is 10 s away
    assert await limiter.acquire(within=4.0) is False
    assert await limiter.acquire(within=6.0) is False  # exactly at the deadline: no time left
    assert clock.sleeps == [4.0, 6.0]
    assert limiter.reserve() == pytest.approx(0.0)  # still the slot 10 s after the first


async def test_a_slot_within_the_deadline_is_taken() -> None:
    """acquire(within=...) waits for a slot that starts in time, and answers True."""
    clock = FakeClock()
    limiter = RateLimiter(0.5, clock=clock, burst=1)
    await limiter.acquire()
    assert await limiter.acquire(within=2.5) is True
    assert clock.sleeps == [2.0]


async def test_a_cancelled_last_waiter_does_not_open_a_burst() -> None:
    """After the newest waiter gives up, the next request still waits its turn, at any hour."""
    clock = FakeClock()
    clock.advance(1000)
    limiter = RateLimiter(1.0, clock=clock, burst=1)
    assert limiter.reserve() == 0.0  # the slot now
    assert limiter.reserve() == pytest.approx(1.0)  # a request waiting for the next one
    with anyio.CancelScope() as scope:
        scope.cancel()
        await limiter.acquire()  # gives up while waiting for the slot after that
    assert limiter.reserve() == pytest.approx(2.0)
    assert limiter.reserve() == pytest.approx(3.0)


class StillClock(FakeClock):
    """A clock whose sleeps last until they are cancelled: time moves only by `advance`."""

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        await anyio.sleep_forever()


async def test_a_cancelled_waiter_keeps_a_slot_a_later_request_took() -> None:
    """If someone reserved after the cancelled waiter, the timeline is not pulled back."""
    clock = StillClock()
    clock.advance(50)
    limiter = RateLimiter(2.0, clock=clock, burst=1)
    limiter.reserve()
    async with anyio.create_task_group() as group:
        group.start_soon(limiter.acquire)  # waits 0.5 s for its slot
        await anyio.wait_all_tasks_blocked()
        assert limiter.reserve() == pytest.approx(1.0)  # a later request takes the next
        group.cancel_scope.cancel()
    assert limiter.reserve() == pytest.approx(1.5)


async def test_the_deadline_check_holds_late_in_the_day() -> None:
    """acquire(within=...) compares the wait, not the clock's reading, with the deadline."""
    clock = FakeClock()
    clock.advance(10_000)
    limiter = RateLimiter(0.5, clock=clock, burst=1)
    assert await limiter.acquire() is True
    assert await limiter.acquire(within=2.5) is True
    assert await limiter.acquire(within=1.5) is False
    assert clock.sleeps == [2.0, 1.5]


def test_the_default_burst_is_a_tenth_of_a_seconds_worth() -> None:
    """At 100 requests a second, ten go at once and the eleventh waits; rate is kept."""
    limiter = RateLimiter(100.0, clock=FakeClock())
    waits = [limiter.reserve() for _ in range(12)]
    assert waits[:10] == [0.0] * 10
    assert waits[10] == pytest.approx(0.01)
    assert waits[11] == pytest.approx(0.02)
    assert limiter.rate == 100.0
    slow = RateLimiter(5.0, clock=FakeClock())  # under ten a second: no burst at all
    assert [slow.reserve() for _ in range(2)] == [0.0, pytest.approx(0.2)]
