"""Retry and poll policies: immutable values and the pure maths of their schedules.

Nothing here sleeps, reads a clock or draws a random number: callers pass the time and the
randomness in, so every schedule can be checked exactly (and with hypothesis).
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from collections.abc import Sequence
from typing import Any

import attrs
from attrs import validators as v

__all__ = [
    "CompletionTimes",
    "PollPlan",
    "PollPolicy",
    "RetryBudget",
    "RetryPolicy",
    "plan_polls",
]

# Past this many doublings every schedule is at its ceiling; capping avoids float overflow.
_MAX_DOUBLINGS = 64

# The adaptive schedule prices a second of detection delay at _DELAY_PRICE / median reads
# (scaled by (0.1 / completion_step) ** 2): on the mixes of benchmarks/polling.py this keeps
# the mean detection delay near 2 % of the median duration, as the schedule before it did.
_DELAY_PRICE = 1000.0

# The plan's grid of poll times: steps of a quarter of the floor, growing by 1 % of the age.
_GRID_FLOOR_SHARE = 0.25
_GRID_GROWTH = 0.01

# Learned durations are smoothed in log space by a Gaussian kernel, integrated over these
# nodes (in kernel widths) with these weights; the width is Silverman's rule of thumb.
_NODES = tuple(k / 2.0 for k in range(-5, 6))
_WEIGHTS = tuple(math.exp(-z * z / 2.0) for z in _NODES)
_WEIGHTS = tuple(w / math.fsum(_WEIGHTS) for w in _WEIGHTS)

# Plans whose costs differ by less than this (in reads) are taken as equal.
_TIE = 1e-9

_positive = v.gt(0.0)
_non_negative = v.ge(0.0)


def _none_or_positive(_: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None and not (isinstance(value, int | float) and value > 0):
        raise ValueError(f"{attribute.name} must be None or a positive number, not {value!r}")


@attrs.frozen
class RetryPolicy:
    """How one HTTP request is retried after a retryable failure.

    Capped exponential backoff with full jitter: before retry ``n`` (1-based) the client waits
    a uniform random time in ``[0, min(max_delay, base_delay * 2 ** (n - 1))]``. A
    ``Retry-After`` from the server replaces that draw (it knows best), and a rate-limit answer
    waits at least `rate_limit_floor` seconds, as the API asks, whatever its ``Retry-After``
    says (one of 0, negative or in the past would have a refused request sent again at once,
    and a batch waiting out 1303 send thousands a second). A ``Retry-After``
    longer than `max_retry_after` is not waited out inside a request: the error is raised with
    its ``retry_after`` so the caller can plan. After a create whose answer was lost, the
    client looks the task up by its external id, and once more `lookup_grace` seconds later
    (a server still busy with the create may not know it yet) before it sends it again.

    A `TaskWatcher` does not retry its reads inside the request: its own schedule is their
    retry. After a failed read it waits the whole `max_delay` before the next (longer if its
    schedule or a ``Retry-After`` says so), so an outage of T seconds costs a watcher at most
    ``1 + T / max_delay`` reads, and it reads again at most `max_delay` after the outage.

    Defaults: five attempts over at most ~15 s of backoff ride out a gateway restart or a burst
    of 5xx without leaving a web request hanging; full jitter spreads thousands of requests that
    failed together.

    >>> RetryPolicy().backoff(3, 0.5)
    1.0
    """

    max_attempts: int = attrs.field(default=5, validator=v.ge(1))
    base_delay: float = attrs.field(default=0.5, validator=_positive)
    max_delay: float = attrs.field(default=20.0, validator=_positive)
    jitter: bool = True
    rate_limit_floor: float = attrs.field(default=1.0, validator=_non_negative)
    max_retry_after: float = attrs.field(default=60.0, validator=_non_negative)
    lookup_grace: float = attrs.field(default=2.0, validator=_non_negative)

    def ceiling(self, retry: int) -> float:
        """The longest wait before retry number `retry` (1-based): the backoff before jitter."""
        return min(self.max_delay, self.base_delay * 2.0 ** min(retry - 1, _MAX_DOUBLINGS))

    def backoff(self, retry: int, draw: float) -> float:
        """Seconds to wait before retry number `retry` (1-based); `draw` is uniform in [0, 1)."""
        ceiling = self.ceiling(retry)
        return ceiling * draw if self.jitter else ceiling

    def delay(
        self, retry: int, draw: float, *, retry_after: float | None, rate_limited: bool
    ) -> float | None:
        """Seconds to wait before retry `retry`, or None when the wait is too long to take."""
        if retry_after is not None and retry_after > self.max_retry_after:
            return None
        wait = self.backoff(retry, draw) if retry_after is None else retry_after
        return max(wait, self.rate_limit_floor) if rate_limited else wait


@attrs.frozen
class RetryBudget:
    """A client-wide allowance of retries: a token bucket in the shape the AWS SDKs use.

    The bucket starts full. Every retry takes `retry_cost` tokens from it, or `timeout_cost`
    after a connection failure or a timeout (those hold the server's resources longest);
    every success puts tokens back: the cost of its own last retry when it needed one, else
    `success_refill`. When the bucket cannot pay for a retry, none is made and the error
    surfaces at once. So while most requests succeed, failures are retried freely; in an
    outage the client stops multiplying its load after ``capacity / retry_cost`` retries, and
    earns them back as the service recovers. (A watcher's reads take nothing from it: they
    make no retries inside the request, see `RetryPolicy`.)

    Defaults: 100 tokens are 20 retries of headroom for one client: enough for scattered
    failures (a retry that then succeeds gives its tokens back), spent within the first
    seconds of an outage, as the AWS SDKs' 500 would not be for a client of a few watchers;
    ``capacity=math.inf`` turns the budget off.

    >>> budget = RetryBudget(capacity=10)
    >>> budget.withdraw(10, timeout=False), budget.withdraw(4, timeout=False)
    (5.0, None)
    """

    capacity: float = attrs.field(default=100.0, validator=_non_negative)
    retry_cost: float = attrs.field(default=5.0, validator=_positive)
    timeout_cost: float = attrs.field(default=10.0, validator=_positive)
    success_refill: float = attrs.field(default=1.0, validator=_non_negative)

    def cost(self, *, timeout: bool) -> float:
        """The tokens one retry takes (`timeout`: after a timeout or connection failure)."""
        return self.timeout_cost if timeout else self.retry_cost

    def withdraw(self, tokens: float, *, timeout: bool) -> float | None:
        """The tokens left after paying for one retry, or None when `tokens` cannot pay."""
        cost = self.cost(timeout=timeout)
        return tokens - cost if tokens >= cost else None

    def deposit(self, tokens: float, refund: float | None = None) -> float:
        """The tokens after a success: `refund` (its last retry's cost) or `success_refill`."""
        return min(self.capacity, tokens + (self.success_refill if refund is None else refund))


@attrs.frozen
class PollPolicy:
    """When a `TaskWatcher` reads its task, and for how long it keeps watching.

    Without any knowledge of how long tasks take, the first poll comes `initial_delay` after
    the watch starts and the interval grows from `min_interval` by `multiplier` up to
    `max_interval`. With `adaptive`, the client learns from the tasks it sees finish and
    places polls where completion is likely instead (see `next_delay`; `completion_step`
    scales the spacing of those polls, and `min_samples` is the number of finished tasks
    needed before learning is trusted). When callbacks wake the watcher, polls are only a
    safety net, every `callback_interval`. `jitter` makes each wait up to 10 % shorter (never
    longer, and never below `min_interval`), so watchers started together drift apart.
    `timeout` (seconds, or None for no deadline) bounds the whole watch.

    Defaults suit the real service, where an extension takes one to four minutes: a first
    look after 10 s catches an instant failure (a policy refusal) early, a 2 s floor keeps the
    fastest cadence polite, a 30 s ceiling bounds the detection delay of a slow task, and the
    30-minute timeout is far beyond any normal extension. With callbacks, a safety-net poll
    every five minutes finds a task whose callback was lost without costing a poll per task.

    >>> PollPolicy(jitter=False).fixed_delay(0)
    10.0
    """

    initial_delay: float = attrs.field(default=10.0, validator=_non_negative)
    min_interval: float = attrs.field(default=2.0, validator=_positive)
    max_interval: float = attrs.field(default=30.0, validator=_positive)
    multiplier: float = attrs.field(default=1.5, validator=v.ge(1.0))
    jitter: bool = True
    timeout: float | None = attrs.field(default=1800.0, validator=_none_or_positive)
    adaptive: bool = True
    completion_step: float = attrs.field(default=0.1, validator=[v.gt(0.0), v.lt(1.0)])
    min_samples: int = attrs.field(default=5, validator=v.ge(1))
    callback_interval: float = attrs.field(default=300.0, validator=_positive)

    def __attrs_post_init__(self) -> None:
        if self.min_interval > self.max_interval:
            raise ValueError(
                f"min_interval ({self.min_interval:g} s) is above "
                f"max_interval ({self.max_interval:g} s)"
            )

    def clamp(self, interval: float) -> float:
        """`interval` held between the policy's floor and ceiling."""
        return min(self.max_interval, max(self.min_interval, interval))

    def fixed_delay(self, polls_done: int) -> float:
        """The wait before the next poll when nothing has been learned yet."""
        if polls_done == 0:
            return self.initial_delay
        growth = self.multiplier ** min(polls_done - 1, _MAX_DOUBLINGS)
        return self.clamp(self.min_interval * growth)

    def next_delay(
        self,
        *,
        age: float,
        polls_done: int,
        learned: CompletionTimes | None = None,
        previous: float | None = None,
    ) -> float:
        """Seconds until the next poll of a task `age` seconds old, before jitter.

        Adaptive rule: follow the optimal plan for the learned durations (see
        `CompletionTimes.plan`), which places the fewest polls for its expected detection
        delay: sparse while completion is unlikely, dense where tasks usually end, none
        wasted in a gap between quick failures and slow successes. A second of delay is
        priced at ``1000 / median * (0.1 / completion_step) ** 2`` reads, so the spacing
        scales with the durations (and with `completion_step`). A task older than every
        learned duration backs off from the `previous` wait by `multiplier`. Before
        `min_samples` durations are known, the fixed schedule applies. The result always
        lies within ``[min_interval, max_interval]``, except the very first poll of a task
        with no history, which comes after `initial_delay`.
        """
        if not self.adaptive or learned is None or len(learned) < self.min_samples:
            return self.fixed_delay(polls_done)
        plan = learned.plan(self.delay_price, self.min_interval, self.max_interval)
        following = plan.next_poll(age) if learned.survival(age) > 0.0 else None
        if following is None:
            return self.clamp((previous or self.min_interval) * self.multiplier)
        return self.clamp(following - age)

    @property
    def delay_price(self) -> float:
        """Reads a second of detection delay is worth, times the median duration."""
        return _DELAY_PRICE * (0.1 / self.completion_step) ** 2

    def spread(self, delay: float, draw: float) -> float:
        """`delay` shortened by up to 10 % (`draw` uniform in [0, 1)) when jitter is on.

        Only ever earlier: watchers started together still drift apart, and none notices
        its task later than the schedule meant.
        """
        if not self.jitter:
            return delay
        return max(min(delay, self.min_interval), delay * (1.0 - 0.1 * draw))


@attrs.frozen
class PollPlan:
    """The best next poll after a poll at each of a grid of ages (seconds since creation).

    >>> PollPlan(ages=(0.0, 10.0, 20.0), following=(20.0, 30.0, 30.0)).next_poll(9.0)
    30.0
    """

    ages: tuple[float, ...]
    following: tuple[float, ...]

    def next_poll(self, age: float) -> float | None:
        """The age of the next poll after one at `age` (the nearest grid age's); None past
        the end of the plan."""
        ages = self.ages
        index = bisect.bisect_right(ages, age)
        if index == len(ages):
            return None
        if index > 0 and age - ages[index - 1] < ages[index] - age:
            index -= 1
        return self.following[index]


def plan_polls(durations: Sequence[float], price: float, floor: float, ceiling: float) -> PollPlan:
    """The poll plan that minimises expected reads + `price` x expected detection delay for
    tasks whose durations are distributed as the sorted `durations` (smoothed), with every
    wait within ``[floor, ceiling]``.

    A dynamic program over a grid of ages, from the last back to 0: the best plan after a
    poll at age ``t`` (the task still running) is the best next poll ``u``, costing the
    chance of running at ``t`` (one read) plus the price of the lateness of the tasks that
    end between ``t`` and ``u``, plus the best plan after ``u``.
    """
    ended = _Smoothed(durations)
    ages = _grid(ended.end, floor)
    shares = [ended(age) for age in ages]
    lateness = [0.0]  # the integral of the share ended, from 0 to each age
    for i in range(1, len(ages)):
        step = ages[i] - ages[i - 1]
        lateness.append(lateness[-1] + (shares[i] + shares[i - 1]) / 2.0 * step)
    last = len(ages) - 1
    cost = [0.0] * len(ages)
    following = [ages[last]] * len(ages)
    for i in range(last - 1, -1, -1):
        age, share, late = ages[i], shares[i], lateness[i]
        best, choice = math.inf, last
        for j in range(i + 1, len(ages)):
            wait = ages[j] - age
            if wait > ceiling and best < math.inf:
                break
            if wait >= floor or j == last:
                value = price * (lateness[j] - late - share * wait) + cost[j]
                if value <= best + _TIE:  # of equal plans, the one that waits longest
                    best, choice = min(best, value), j
        cost[i] = (1.0 - share) + best
        following[i] = ages[choice]
    return PollPlan(tuple(ages), tuple(following))


def _grid(end: float, floor: float) -> list[float]:
    """Ages from 0 past `end`, a quarter of the `floor` apart, the steps growing with age."""
    ages = [0.0]
    while ages[-1] < end:
        ages.append(ages[-1] + max(floor * _GRID_FLOOR_SHARE, ages[-1] * _GRID_GROWTH))
    return ages


class _Smoothed:
    """The share of tasks ended by an age: `durations` smoothed in log space."""

    def __init__(self, durations: Sequence[float]) -> None:
        logs = [math.log(max(d, 1e-3)) for d in durations]
        count = len(logs)
        mean = math.fsum(logs) / count
        spread = math.sqrt(math.fsum((x - mean) ** 2 for x in logs) / max(1, count - 1))
        quartiles = (logs[(3 * count) // 4] - logs[count // 4]) / 1.34
        width = 0.9 * min(spread, quartiles or spread) * count**-0.2
        self._durations = durations
        self._scales = tuple(math.exp(-width * z) for z in _NODES)
        self.end = durations[-1] * math.exp(width * _NODES[-1])

    def __call__(self, age: float) -> float:
        return math.fsum(
            w * _interpolated_share(self._durations, age * s)
            for w, s in zip(_WEIGHTS, self._scales, strict=True)
        )


def _interpolated_share(durations: Sequence[float], age: float) -> float:
    """The share of the sorted `durations` below `age`, interpolated between them."""
    above = bisect.bisect_right(durations, age)
    if above == 0:
        return 0.0
    if above == len(durations):
        return 1.0
    low, high = durations[above - 1], durations[above]
    return (above - 1 + (age - low) / (high - low)) / (len(durations) - 1)


class CompletionTimes:
    """A running record of how long tasks of one kind took, for placing polls.

    Keeps the last `window` durations in sorted order, so quantiles and survival are a binary
    search away, and the poll plan made from them (`plan`). Pure state, no I/O: the client
    keeps one per task kind, shared by its watchers, and feeds it each finished task's
    duration. A thousand durations pin the shape of a distribution well enough for the plan
    to come within a few percent of the optimum for the true one (benchmarks/polling.py).

    >>> times = CompletionTimes()
    >>> for seconds in (100, 110, 120, 130, 140):
    ...     times.observe(seconds)
    >>> times.quantile(0.5)
    120.0
    """

    def __init__(self, window: int = 1024) -> None:
        if window < 1:
            raise ValueError(f"window must be at least 1, not {window}")
        self._window = window
        self._arrivals: deque[float] = deque()
        self._sorted: list[float] = []
        self._observed = 0
        self._plan: tuple[int, tuple[float, float, float], PollPlan] | None = None

    def __len__(self) -> int:
        return len(self._sorted)

    def observe(self, seconds: float) -> None:
        """Record one task's duration (from its creation to its end)."""
        if not math.isfinite(seconds) or seconds < 0:
            return
        if len(self._arrivals) == self._window:
            oldest = self._arrivals.popleft()
            del self._sorted[bisect.bisect_left(self._sorted, oldest)]
        self._arrivals.append(seconds)
        bisect.insort(self._sorted, seconds)
        self._observed += 1

    def plan(self, price: float, floor: float, ceiling: float) -> PollPlan:
        """The optimal poll plan (`plan_polls`) for the recorded durations, where a second
        of delay costs `price` / median reads and every wait lies in ``[floor, ceiling]``.

        Made again once an eighth of the record is new, so its cost (milliseconds) is
        shared by that many finished tasks.
        """
        key = (price, floor, ceiling)
        if self._plan is not None:
            made_at, made_for, plan = self._plan
            if made_for == key and self._observed - made_at < max(1, len(self._sorted) // 8):
                return plan
        per_second = price / max(self.quantile(0.5), floor)
        plan = plan_polls(self._sorted, per_second, floor, ceiling)
        self._plan = (self._observed, key, plan)
        return plan

    def survival(self, age: float) -> float:
        """The share of recorded tasks that took longer than `age` seconds (interpolated
        between the recorded durations, as `quantile`)."""
        return 1.0 - _interpolated_share(self._sorted, age)

    def quantile(self, p: float) -> float:
        """The duration below which a share `p` of recorded tasks finished (interpolated)."""
        position = min(max(p, 0.0), 1.0) * (len(self._sorted) - 1)
        low = math.floor(position)
        high = min(low + 1, len(self._sorted) - 1)
        fraction = position - low
        below, above = self._sorted[low], self._sorted[high]
        return below + (above - below) * fraction
