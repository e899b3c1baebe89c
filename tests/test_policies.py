"""Retry and poll policies: pure schedules, checked exactly and with hypothesis."""

from __future__ import annotations

import math
import random
import statistics

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kling_async import PollPolicy, RetryBudget, RetryPolicy
from kling_async.policies import CompletionTimes, PollPlan, _Smoothed, plan_polls

draws = st.floats(min_value=0.0, max_value=1.0, exclude_max=True)


@given(retry=st.integers(min_value=1, max_value=60), draw=draws)
def test_backoff_is_full_jitter_under_the_cap(retry: int, draw: float) -> None:
    """Every backoff lies in [0, min(cap, base * 2**(n-1))]."""
    policy = RetryPolicy()
    ceiling = min(policy.max_delay, policy.base_delay * 2 ** (retry - 1))
    assert 0.0 <= policy.backoff(retry, draw) <= ceiling


def test_backoff_without_jitter_doubles_then_caps() -> None:
    """With jitter off the waits are 0.5, 1, 2, 4, ... up to max_delay."""
    policy = RetryPolicy(jitter=False, max_delay=3.0)
    assert [policy.backoff(n, 0.0) for n in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]


def test_retry_after_replaces_the_backoff() -> None:
    """The server's Retry-After is waited exactly, jitter or not."""
    assert RetryPolicy().delay(1, 0.9, retry_after=2.0, rate_limited=True) == 2.0


def test_too_long_retry_after_is_not_waited() -> None:
    """A Retry-After beyond max_retry_after gives None: raise instead of hanging."""
    assert RetryPolicy(max_retry_after=30).delay(1, 0.5, retry_after=31, rate_limited=True) is None


def test_retries_drain_the_budget_and_successes_refill_it() -> None:
    """A retry takes 5 tokens (10 after a timeout); a success gives back its last retry's
    cost, or 1 when it needed none; the bucket never holds more than its capacity."""
    budget = RetryBudget(capacity=20)
    assert budget.withdraw(20, timeout=False) == 15
    assert budget.withdraw(20, timeout=True) == 10
    assert budget.withdraw(4.5, timeout=False) is None
    assert budget.deposit(4.5) == 5.5
    assert budget.deposit(4.5, refund=10.0) == 14.5
    assert budget.deposit(19.5, refund=5.0) == 20


def test_a_budget_holding_exactly_one_retry_pays_for_it() -> None:
    """The bucket pays while it holds the whole cost, down to empty, and not a token less."""
    budget = RetryBudget(capacity=20)
    assert budget.withdraw(5, timeout=False) == 0
    assert budget.withdraw(10, timeout=True) == 0
    assert budget.withdraw(9.99, timeout=True) is None


@given(steps=st.lists(st.tuples(st.sampled_from(["retry", "timeout", "success"]), st.booleans())))
def test_the_budget_stays_between_empty_and_full(steps: list[tuple[str, bool]]) -> None:
    """Whatever happens, the tokens stay within [0, capacity] and an unpaid retry is refused."""
    budget = RetryBudget()
    tokens = budget.capacity
    for step, refunded in steps:
        if step == "success":
            tokens = budget.deposit(tokens, budget.retry_cost if refunded else None)
        else:
            left = budget.withdraw(tokens, timeout=step == "timeout")
            assert (left is None) == (tokens < budget.cost(timeout=step == "timeout"))
            tokens = tokens if left is None else left
        assert 0.0 <= tokens <= budget.capacity


@given(retry=st.integers(min_value=1, max_value=10), draw=draws)
def test_rate_limit_waits_at_least_the_floor(retry: int, draw: float) -> None:
    """A rate-limit answer without Retry-After waits at least a second."""
    assert RetryPolicy().delay(retry, draw, retry_after=None, rate_limited=True) >= 1.0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_attempts": 0},
        {"base_delay": 0},
        {"max_delay": -1},
    ],
)
def test_retry_policy_rejects_nonsense(kwargs: dict[str, float]) -> None:
    """Invalid retry settings fail at construction."""
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"min_interval": 0},
        {"min_interval": 40, "max_interval": 30},
        {"multiplier": 0.5},
        {"timeout": 0},
        {"timeout": -5},
    ],
)
def test_poll_policy_rejects_nonsense(kwargs: dict[str, float]) -> None:
    """Invalid poll settings fail at construction."""
    with pytest.raises(ValueError):  # noqa: PT011 - attrs' validators raise plain ValueError
        PollPolicy(**kwargs)  # type: ignore[arg-type]


def test_poll_policy_errors_name_the_setting() -> None:
    """The refusals say which setting is wrong and why; a timeout under a second is fine."""
    with pytest.raises(ValueError, match=r"^timeout must be None or a positive number, not 0$"):
        PollPolicy(timeout=0)
    with pytest.raises(ValueError, match=r"^min_interval \(40 s\) is above max_interval \(30 s\)$"):
        PollPolicy(min_interval=40, max_interval=30)
    assert PollPolicy(timeout=0.5).timeout == 0.5


def test_policies_are_frozen() -> None:
    """Policies are values: they cannot be changed after construction."""
    policy = PollPolicy()
    with pytest.raises(AttributeError):
        policy.timeout = 5.0  # type: ignore[misc]


def _learned(*seconds: float) -> CompletionTimes:
    times = CompletionTimes()
    for value in seconds:
        times.observe(value)
    return times


def test_past_the_learned_tail_backs_off_gently() -> None:
    """A task slower than every learned one backs off from its last wait, not from scratch."""
    policy = PollPolicy(min_interval=2, max_interval=30, multiplier=1.5, jitter=False)
    learned = _learned(100, 110, 120, 130, 140)
    assert policy.next_delay(age=200, polls_done=40, learned=learned, previous=2.0) == 3.0
    assert policy.next_delay(age=200, polls_done=40, learned=learned, previous=None) == 3.0


def test_adaptive_polls_densely_where_tasks_end() -> None:
    """Far from the learned durations the wait is long; amid them it is short."""
    policy = PollPolicy(min_interval=1, max_interval=30, jitter=False)
    learned = _learned(*range(100, 141))
    early = policy.next_delay(age=0, polls_done=0, learned=learned)
    amid = policy.next_delay(age=120, polls_done=5, learned=learned)
    assert early > 15
    assert amid < 5


def test_adaptive_needs_enough_samples() -> None:
    """With fewer than min_samples durations the fixed schedule is used."""
    policy = PollPolicy(initial_delay=10, jitter=False, min_samples=5)
    assert policy.next_delay(age=0, polls_done=0, learned=_learned(1, 2, 3)) == 10


@given(
    samples=st.lists(st.floats(min_value=0, max_value=1e4), min_size=5, max_size=50),
    age=st.floats(min_value=0, max_value=2e4),
    polls=st.integers(min_value=1, max_value=100),
    previous=st.one_of(st.none(), st.floats(min_value=0.01, max_value=100)),
)
def test_adaptive_delay_stays_within_floor_and_ceiling(
    samples: list[float], age: float, polls: int, previous: float | None
) -> None:
    """Whatever was learned, a wait lies within [min_interval, max_interval]."""
    policy = PollPolicy(min_interval=2, max_interval=30, jitter=False)
    delay = policy.next_delay(
        age=age, polls_done=polls, learned=_learned(*samples), previous=previous
    )
    assert 2 <= delay <= 30


@given(samples=st.lists(st.floats(min_value=0, max_value=1e4), min_size=1, max_size=300))
def test_completion_times_quantiles_are_ordered(samples: list[float]) -> None:
    """Quantiles grow with p and stay within the observed range; survival is a share."""
    times = _learned(*samples)
    quantiles = [times.quantile(p / 10) for p in range(11)]
    assert quantiles == sorted(quantiles)
    assert min(samples) <= quantiles[0] <= quantiles[-1] <= max(samples)
    assert 0.0 <= times.survival(samples[0]) <= 1.0


def test_completion_times_forget_the_oldest() -> None:
    """The window keeps the most recent durations only."""
    times = CompletionTimes(window=3)
    for value in (1, 2, 3, 100):
        times.observe(value)
    assert len(times) == 3
    assert times.quantile(0.0) == 2


def test_schedules_never_overflow() -> None:
    """Thousands of retries or polls stay at the ceiling instead of overflowing."""
    assert RetryPolicy(jitter=False).backoff(5000, 0.5) == 20.0
    assert PollPolicy(jitter=False).fixed_delay(100_000) == 30.0


@given(
    samples=st.lists(st.floats(min_value=1, max_value=600), min_size=5, max_size=60),
    slower=st.floats(min_value=2, max_value=50),
    draws=st.lists(draws, min_size=1, max_size=20),
)
def test_a_task_slower_than_anything_seen_is_still_found(
    samples: list[float], slower: float, draws: list[float]
) -> None:
    """Polled from creation, a task far past every learned duration is found within the
    ceiling of its end, no wait ever under the floor (jitter included)."""
    policy = PollPolicy(min_interval=2, max_interval=30)
    learned = _learned(*samples)
    end = max(samples) * slower
    age, previous, polls = 0.0, None, 0
    while age < end:
        delay = policy.next_delay(age=age, polls_done=polls, learned=learned, previous=previous)
        wait = policy.spread(delay, draws[polls % len(draws)])
        assert 2 <= wait <= 30
        age, previous, polls = age + wait, delay, polls + 1
    assert age - end <= 30


@given(delay=st.floats(min_value=0, max_value=1e4), draw=draws)
def test_jitter_never_lengthens_a_wait_nor_shortens_it_below_the_floor(
    delay: float, draw: float
) -> None:
    """Spread waits lie in [min(delay, floor), delay]."""
    policy = PollPolicy(min_interval=2, max_interval=30)
    assert min(delay, 2.0) <= policy.spread(delay, draw) <= delay


def test_no_poll_is_wasted_between_quick_failures_and_slow_successes() -> None:
    """Between the last quick failure and the first slow success the plan waits long: 85 s
    in which nothing ends cost at most five polls (the square-root rule spent eight)."""
    policy = PollPolicy(min_interval=2, max_interval=30, jitter=False)
    learned = _learned(*[3 + i * 0.4 for i in range(30)], *[100 + i * 0.5 for i in range(90)])
    age, polls = 15.0, 0
    while age < 100:
        age += policy.next_delay(age=age, polls_done=polls + 1, learned=learned)
        polls += 1
    assert polls <= 5


def test_the_plan_follows_what_is_learned() -> None:
    """Once the record has turned over, the plan is made again from the new durations."""
    policy = PollPolicy(min_interval=2, max_interval=30, jitter=False)
    learned = CompletionTimes(window=40)
    for seconds in range(100, 140):
        learned.observe(seconds)
    amid_before = policy.next_delay(age=120, polls_done=5, learned=learned)
    for seconds in range(400, 440):
        learned.observe(seconds)
    assert amid_before < 10
    assert policy.next_delay(age=120, polls_done=5, learned=learned) > 25


def test_a_plan_is_made_for_the_bounds_it_is_asked_for() -> None:
    """Asked again at once with another ceiling, floor or price, the plan is made for those:
    no wait of it is longer than the ceiling asked now."""
    learned = CompletionTimes(window=40)
    for seconds in range(100, 140):
        learned.observe(seconds)
    assert learned.plan(1.0, 2.0, 60.0).next_poll(0.0) == pytest.approx(60.0, abs=1)
    for price, floor, ceiling in [(1.0, 2.0, 10.0), (1.0, 5.0, 10.0), (0.1, 5.0, 10.0)]:
        plan = learned.plan(price, floor, ceiling)
        age, waits = 0.0, []
        while (then := plan.next_poll(age)) is not None and age < 200:
            waits.append(then - age)
            age = then
        assert waits and max(waits) <= ceiling + 1e-9, (price, floor, ceiling, waits)


@pytest.mark.parametrize(("window", "fresh"), [(8, 1), (44, 5)])
def test_a_plan_is_made_again_once_an_eighth_of_the_record_is_new(window: int, fresh: int) -> None:
    """The plan costs milliseconds: it is kept while fewer than an eighth of the recorded
    durations (at least one) are new since it was made, then made again."""
    learned = CompletionTimes(window=window)
    for seconds in range(100, 100 + window):
        learned.observe(seconds)
    plan = learned.plan(1.0, 2.0, 30.0)
    for n in range(fresh - 1):
        learned.observe(200 + n)
        assert learned.plan(1.0, 2.0, 30.0) is plan
    learned.observe(300)
    assert learned.plan(1.0, 2.0, 30.0) is not plan


def test_the_plan_is_optimal_on_a_known_case() -> None:
    """Tasks that all end at 60 s: the best plan with a 30 s ceiling polls at 30 and 60."""
    plan = plan_polls([60.0] * 10, price=1.0, floor=2.0, ceiling=30.0)
    first = plan.next_poll(0.0)
    assert first is not None
    assert plan.next_poll(first) == pytest.approx(60.0, abs=0.5)


def test_jitter_spreads_retries_over_the_whole_step() -> None:
    """With jitter, clients failing together wait anything from 0 to the step's ceiling."""
    rng = random.Random(17)
    policy = RetryPolicy()
    waits = [policy.backoff(3, rng.random()) for _ in range(1000)]  # ceiling 2 s
    assert min(waits) < 0.05 and max(waits) > 1.95
    assert statistics.mean(waits) == pytest.approx(1.0, abs=0.1)
    assert len(set(waits)) == 1000
    assert policy.backoff(3, 0.25) == 0.5


@pytest.mark.parametrize(
    ("retry_after", "waited"), [(0.0, 0.0), (30.0, 30.0), (30.000001, None), (12.5, 12.5)]
)
def test_retry_after_is_taken_up_to_and_including_the_cap(
    retry_after: float, waited: float | None
) -> None:
    """Retry-After 0 means at once (past the floor of a rate limit); one equal to
    max_retry_after is still waited."""
    policy = RetryPolicy(max_retry_after=30, rate_limit_floor=0.0)
    for limited in (True, False):
        assert policy.delay(1, 0.9, retry_after=retry_after, rate_limited=limited) == waited


@pytest.mark.parametrize("retry_after", [0.0, 0.2])
def test_a_rate_limit_waits_the_floor_whatever_its_retry_after(retry_after: float) -> None:
    """The API asks for at least a second after 1302: a Retry-After of 0 (or a negative one or
    a date past, both read as 0) does not make a refused request go again at once."""
    policy = RetryPolicy(rate_limit_floor=1.0)
    assert policy.delay(1, 0.9, retry_after=retry_after, rate_limited=True) == 1.0
    assert policy.delay(1, 0.9, retry_after=retry_after, rate_limited=False) == retry_after
    assert policy.delay(1, 0.9, retry_after=2.5, rate_limited=True) == 2.5


def test_the_rate_limit_floor_only_raises_short_waits() -> None:
    """Below the floor a rate-limited wait is lifted to it; above, the backoff stands."""
    policy = RetryPolicy(rate_limit_floor=1.5)
    assert policy.delay(1, 0.5, retry_after=None, rate_limited=True) == 1.5
    assert policy.delay(1, 0.5, retry_after=None, rate_limited=False) == 0.25
    assert policy.delay(5, 0.75, retry_after=None, rate_limited=True) == 6.0
    assert RetryPolicy(rate_limit_floor=0).delay(1, 0, retry_after=None, rate_limited=True) == 0


def test_retry_defaults_are_as_documented() -> None:
    """Five attempts, 0.5 s doubling to 20 s, full jitter, a 1 s floor, at most 60 s Retry-After."""
    policy = RetryPolicy()
    assert (policy.max_attempts, policy.base_delay, policy.max_delay) == (5, 0.5, 20.0)
    assert (policy.jitter, policy.rate_limit_floor, policy.max_retry_after) == (True, 1.0, 60.0)
    assert RetryPolicy(max_attempts=1).max_attempts == 1


def test_poll_defaults_are_as_documented() -> None:
    """First look at 10 s, then 2 s growing by 1.5 up to 30 s; 30 minutes; a net of 300 s."""
    policy = PollPolicy()
    assert (policy.initial_delay, policy.min_interval, policy.max_interval) == (10.0, 2.0, 30.0)
    assert (policy.multiplier, policy.jitter, policy.timeout) == (1.5, True, 1800.0)
    assert (policy.adaptive, policy.completion_step, policy.min_samples) == (True, 0.1, 5)
    assert policy.callback_interval == 300.0
    assert PollPolicy(min_interval=5, max_interval=5, multiplier=1, timeout=None).timeout is None


def test_fixed_schedule_starts_late_then_grows_from_the_floor() -> None:
    """initial_delay first, then min_interval, growing by multiplier, capped at the ceiling."""
    policy = PollPolicy(initial_delay=7, min_interval=2, max_interval=5, multiplier=2)
    assert [policy.fixed_delay(n) for n in range(5)] == [7, 2, 4, 5, 5]
    steep = PollPolicy(initial_delay=7, min_interval=1, max_interval=100, multiplier=3)
    assert [steep.fixed_delay(n) for n in range(6)] == [7, 1, 3, 9, 27, 81]


def test_adaptive_can_be_switched_off() -> None:
    """adaptive=False keeps the fixed schedule whatever was learned."""
    policy = PollPolicy(initial_delay=10, jitter=False, adaptive=False)
    learned = _learned(100, 110, 120, 130, 140)
    assert policy.next_delay(age=0, polls_done=0, learned=learned) == 10
    assert policy.next_delay(age=0, polls_done=0, learned=None) == 10
    exactly_enough = PollPolicy(jitter=False, min_samples=5, max_interval=60)
    assert exactly_enough.next_delay(age=0, polls_done=0, learned=learned) != 10


def test_spread_only_ever_shortens_a_wait_by_up_to_a_tenth() -> None:
    """Poll jitter makes a wait up to 10 % earlier, never later; off, the wait stands."""
    assert PollPolicy().spread(20.0, 0.5) == 19.0
    assert PollPolicy().spread(20.0, 0.0) == 20.0
    assert PollPolicy(jitter=False).spread(20.0, 0.9) == 20.0


@pytest.mark.parametrize("seconds", [math.nan, math.inf, -math.inf, -1.0, -1e-9])
def test_nonsense_durations_are_not_learned(seconds: float) -> None:
    """A NaN, infinite or negative duration (a clock skew) is ignored; zero is fine."""
    times = _learned(100, 110)
    times.observe(seconds)
    assert len(times) == 2 and times.quantile(1.0) == 110
    times.observe(0.0)
    assert len(times) == 3 and times.quantile(0.0) == 0.0


def test_completion_times_interpolate_and_count_survivors() -> None:
    """Quantiles interpolate between recorded durations; survival is the share running."""
    times = _learned(10, 20, 30, 40)
    assert times.quantile(0.5) == 25.0
    assert times.quantile(-1) == 10 and times.quantile(2) == 40
    assert [times.survival(age) for age in (5, 25, 40, 41)] == [1.0, 0.5, 0.0, 0.0]
    assert times.quantile(0.9) == pytest.approx(37.0)  # between the last two
    single = _learned(7)
    assert single.quantile(0.3) == 7 and single.survival(7) == 0.0


def test_completion_times_window_is_checked_and_slides() -> None:
    """A window below one is refused; a full window drops exactly its oldest duration."""
    with pytest.raises(ValueError, match="window must be at least 1"):
        CompletionTimes(window=0)
    times = CompletionTimes(window=2)
    for value in (5, 1, 9):
        times.observe(value)
    assert (times.quantile(0), times.quantile(1)) == (1, 9)
    assert len(CompletionTimes(window=1)) == 0
    default = _learned(*range(1100))
    assert len(default) == 1024 and default.quantile(0) == 76  # the last 1024 by default


class _Reference:
    """The expected cost (reads + price x detection delay) of a poll plan over a grid of
    ages, and the least of it from each age, by the plain recursion over every choice."""

    def __init__(
        self, durations: list[float], ages: tuple[float, ...], price: float, floor: float
    ) -> None:
        ended = _Smoothed(durations)
        self.ages, self.price, self.floor = ages, price, floor
        self.share = [ended(age) for age in ages]
        self.area = [0.0]  # under the share ended, trapezoid by trapezoid, up to each age
        for k in range(1, len(ages)):
            trapezoid = (ages[k] - ages[k - 1]) * (self.share[k - 1] + self.share[k]) / 2
            self.area.append(self.area[k - 1] + trapezoid)

    def move(self, i: int, j: int) -> float:
        """From a poll at age i to the next at age j: the read at j, paid while the task
        still runs at i, and the delay of the tasks that end in between."""
        waited = self.ages[j] - self.ages[i]
        delay = self.area[j] - self.area[i] - self.share[i] * waited
        return (1.0 - self.share[i]) + self.price * delay

    def least(self, ceiling: float) -> list[float]:
        """The least cost on from each age, every wait within [floor, ceiling] (the last
        age may come sooner; where no age fits, the first past the ceiling)."""
        ages, last = self.ages, len(self.ages) - 1
        cost = [0.0] * len(ages)
        for i in reversed(range(last)):
            later = range(i + 1, len(ages))
            fits = [
                j
                for j in later
                if ages[j] - ages[i] <= ceiling and (ages[j] - ages[i] >= self.floor or j == last)
            ]
            choices = fits or [next(j for j in later if ages[j] - ages[i] > ceiling)]
            cost[i] = min(self.move(i, j) + cost[j] for j in choices)
        return cost


_MIXES = {
    "failures and successes": [3 + i * 0.4 for i in range(30)] + [100 + i * 1.5 for i in range(30)],
    "one hump": [60 * math.exp(0.3 * (k - 20) / 20) for k in range(41)],
    "long and spread": [50 * 1.1**k for k in range(25)],
}


@pytest.mark.parametrize("mix", sorted(_MIXES))
@pytest.mark.parametrize(
    ("price", "floor", "ceiling"),
    [(0.05, 2.0, 30.0), (0.5, 2.0, 30.0), (10.0, 2.0, 30.0), (0.5, 5.0, 60.0), (5.0, 2.0, 2.5)],
)
def test_every_planned_poll_is_the_best_one(
    mix: str, price: float, floor: float, ceiling: float
) -> None:
    """At each age of its grid the plan's next poll costs what the best allowed next poll
    costs, as a plain recursion over every choice finds it (even where the grid's steps
    outgrow the window between floor and ceiling)."""
    durations = sorted(_MIXES[mix])
    plan = plan_polls(durations, price, floor, ceiling)
    reference = _Reference(durations, plan.ages, price, floor)
    best = reference.least(ceiling)
    for i, age in enumerate(plan.ages[:-1]):
        j = plan.ages.index(plan.following[i])
        chosen = reference.move(i, j) + best[j]
        assert chosen == pytest.approx(best[i], rel=1e-9, abs=1e-9), (i, age, j)


def test_a_point_mass_is_polled_once_where_it_ends() -> None:
    """Tasks that all end at 1 s, within the floor: one poll, at 1 s, not a grid step later."""
    plan = plan_polls([1.0] * 5, price=1.0, floor=2.0, ceiling=30.0)
    assert plan.next_poll(0.0) == 1.0
    assert plan.next_poll(1.0) is None


def test_a_wait_of_exactly_the_floor_is_allowed() -> None:
    """Where every second of delay is dear, the plan polls every floor, starting at the floor."""
    plan = plan_polls([float(s) for s in range(1, 41)], price=1000.0, floor=2.0, ceiling=30.0)
    assert [plan.next_poll(float(age)) for age in (0, 2, 4)] == [2.0, 4.0, 6.0]


def _silverman_end(durations: list[float]) -> float:
    """The largest duration widened by 2.5 kernel widths: Silverman's rule in log space."""
    logs = sorted(math.log(d) for d in durations)
    n = len(logs)
    quartiles = (logs[3 * n // 4] - logs[n // 4]) / 1.34
    width = 0.9 * min(statistics.stdev(logs), quartiles) * n**-0.2
    return max(durations) * math.exp(2.5 * width)


@pytest.mark.parametrize(
    "durations",
    [
        pytest.param([0.05 * 1.5**k for k in range(6)], id="under a second, spread decides"),
        pytest.param([10.0, 40.0], id="two, spread decides"),
        pytest.param(
            [10.0, 20.0, *(100 * 1.02**k for k in range(16)), 600.0, 900.0],
            id="outliers, quartiles decide",
        ),
    ],
)
def test_the_plan_reaches_past_the_largest_duration_by_the_kernel_width(
    durations: list[float],
) -> None:
    """Learned durations are smoothed in log space by a kernel of Silverman's width (the
    smaller of the spread and the quartile range, shrinking as count**-0.2): the plan runs
    to its reach beyond the largest duration, to within one step of its grid."""
    end = _silverman_end(durations)
    floor = 0.01
    plan = plan_polls(sorted(durations), price=1.0, floor=floor, ceiling=30.0)
    assert end <= plan.ages[-1] <= end + max(floor / 4, end / 100) + 1e-9
    assert plan.ages[-2] < end


def test_the_plan_prices_delay_by_the_median() -> None:
    """A learned record plans with its price per second of delay divided by the median."""
    learned = _learned(10, 20, 30, 40, 500)
    assert learned.plan(300.0, 2.0, 30.0) == plan_polls([10, 20, 30, 40, 500], 10.0, 2.0, 30.0)


def test_the_next_poll_follows_the_nearer_planned_age() -> None:
    """Between two planned ages the nearer one's next poll is taken, the later one's halfway;
    before the first age (a clock set back), the first's; from the last age on, none."""
    plan = PollPlan(ages=(0.0, 10.0, 20.0), following=(20.0, 30.0, 40.0))
    assert [plan.next_poll(age) for age in (4.9, 5.0, 5.1, 15.0, 19.9)] == [20, 30, 30, 40, 40]
    assert plan.next_poll(-3.0) == 20.0
    assert plan.next_poll(20.0) is None


def test_past_every_learned_duration_the_plan_is_left_for_a_back_off() -> None:
    """Just past the slowest task seen, still within the smoothed plan, the wait grows from
    the last one by the multiplier, as the plan knows nothing there."""
    policy = PollPolicy(min_interval=2, max_interval=30, multiplier=1.5, jitter=False)
    learned = _learned(100, 110, 120, 130, 140)
    plan = learned.plan(policy.delay_price, 2.0, 30.0)
    assert plan.next_poll(140.5) is not None
    assert policy.next_delay(age=140.5, polls_done=9, learned=learned, previous=4.0) == 6.0
    assert policy.next_delay(age=140.0, polls_done=9, learned=learned, previous=4.0) == 6.0
