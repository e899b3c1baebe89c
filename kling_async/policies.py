"""Retry and poll policies: immutable values and the pure maths of their schedules.

Nothing here sleeps, reads a clock or draws a random number: callers pass the time and the
randomness in, so every schedule can be checked exactly (and with hypothesis).
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from typing import Any

import attrs
from attrs import validators as v

__all__ = ["CompletionTimes", "PollPolicy", "RetryPolicy"]

# Past this many doublings every schedule is at its ceiling; capping avoids float overflow.
_MAX_DOUBLINGS = 64

# The adaptive wait is sqrt(horizon * median * _SPACING); 1/40 was chosen on a log-normal
# mix like the real service's (benchmarks/polling.py): about a sixth fewer polls than a
# fixed 5 s loop with a lower mean and a like p95 detection delay.
_SPACING = 1.0 / 40.0

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
    without one waits at least `rate_limit_floor` seconds, as the API asks. A ``Retry-After``
    longer than `max_retry_after` is not waited out inside a request: the error is raised with
    its ``retry_after`` so the caller can plan.

    Defaults: five attempts over at most ~15 s of backoff ride out a gateway restart or a burst
    of 5xx without leaving a web request hanging; full jitter spreads thousands of watchers that
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

    def backoff(self, retry: int, draw: float) -> float:
        """Seconds to wait before retry number `retry` (1-based); `draw` is uniform in [0, 1)."""
        ceiling = min(self.max_delay, self.base_delay * 2.0 ** min(retry - 1, _MAX_DOUBLINGS))
        return ceiling * draw if self.jitter else ceiling

    def delay(
        self, retry: int, draw: float, *, retry_after: float | None, rate_limited: bool
    ) -> float | None:
        """Seconds to wait before retry `retry`, or None when the wait is too long to take."""
        if retry_after is not None:
            return retry_after if retry_after <= self.max_retry_after else None
        wait = self.backoff(retry, draw)
        return max(wait, self.rate_limit_floor) if rate_limited else wait


@attrs.frozen
class PollPolicy:
    """When a `TaskWatcher` reads its task, and for how long it keeps watching.

    Without any knowledge of how long tasks take, the first poll comes `initial_delay` after
    the watch starts and the interval grows from `min_interval` by `multiplier` up to
    `max_interval`. With `adaptive`, the client learns from the tasks it sees finish and
    places polls where completion is likely instead (see `next_delay`; `completion_step`
    tunes the spacing, and `min_samples` is the number of finished tasks needed before
    learning is trusted). When callbacks wake the watcher, polls are only a safety net,
    every `callback_interval`. `jitter` makes each wait up to 10 % shorter (never longer), so
    watchers started together drift apart. `timeout` (seconds, or None for no deadline)
    bounds the whole watch.

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

        Adaptive rule: let ``h`` be the time until a further `completion_step` share of the
        tasks still running at this age would have finished, going by the learned durations.
        The wait is ``sqrt(h * median / 40)``: the square-root spacing that balances the cost
        of a poll against the cost of noticing late. Polls are therefore sparse while
        completion is unlikely and dense where tasks usually end. A task older than every
        learned duration backs off from the `previous` wait by `multiplier`. Before
        `min_samples` durations are known, the fixed schedule applies. The result always lies
        within ``[min_interval, max_interval]``, except the very first poll of a task with no
        history, which comes after `initial_delay`.
        """
        if not self.adaptive or learned is None or len(learned) < self.min_samples:
            return self.fixed_delay(polls_done)
        remaining = learned.survival(age)
        if remaining <= 0.0:
            return self.clamp((previous or self.min_interval) * self.multiplier)
        horizon = learned.quantile(1.0 - remaining * (1.0 - self.completion_step)) - age
        scale = learned.quantile(0.5) * _SPACING
        return self.clamp(math.sqrt(max(horizon, 0.0) * scale))

    def spread(self, delay: float, draw: float) -> float:
        """`delay` shortened by up to 10 % (`draw` uniform in [0, 1)) when jitter is on.

        Only ever earlier: watchers started together still drift apart, and none notices
        its task later than the schedule meant.
        """
        return delay * (1.0 - 0.1 * draw) if self.jitter else delay


class CompletionTimes:
    """A running record of how long tasks of one kind took, for placing polls.

    Keeps the last `window` durations in sorted order, so quantiles and survival are a binary
    search away. Pure state, no I/O: the client keeps one per task kind, shared by its
    watchers, and feeds it each finished task's duration.

    >>> times = CompletionTimes()
    >>> for seconds in (100, 110, 120, 130, 140):
    ...     times.observe(seconds)
    >>> times.quantile(0.5)
    120.0
    """

    def __init__(self, window: int = 256) -> None:
        if window < 1:
            raise ValueError(f"window must be at least 1, not {window}")
        self._window = window
        self._arrivals: deque[float] = deque()
        self._sorted: list[float] = []

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

    def survival(self, age: float) -> float:
        """The share of recorded tasks that took longer than `age` seconds."""
        return 1.0 - bisect.bisect_right(self._sorted, age) / len(self._sorted)

    def quantile(self, p: float) -> float:
        """The duration below which a share `p` of recorded tasks finished (interpolated)."""
        position = min(max(p, 0.0), 1.0) * (len(self._sorted) - 1)
        low = math.floor(position)
        high = min(low + 1, len(self._sorted) - 1)
        fraction = position - low
        below, above = self._sorted[low], self._sorted[high]
        return below + (above - below) * fraction
