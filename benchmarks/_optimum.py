"""Task-duration distributions and the optimal poll schedule for each (the polling reference).

For a known distribution of completion times there is a best possible poll schedule: the one
that, for a given price of a second of detection delay in reads, makes the fewest reads per
task. It is found exactly, up to the resolution of a fine time grid, by a dynamic program:
the cheapest schedule from a poll at grid time t onwards, with the task still running at t,
is the cheapest choice of the next poll u > t, each costing the chance of still running at t
(one read), plus the price of the delay of tasks ending between t and u (found at u), plus
the cheapest schedule from u. The price is then chosen so that the optimum's mean delay, on
the very tasks a schedule was measured on, equals that schedule's: the optimum's reads at
the same mean delay are the reference, and a schedule's reads over them its ratio.

The optimum knows the true distribution and obeys no floor or ceiling: no schedule that
learns the distribution from finished tasks, or is held to a polite minimum interval, can
beat it.
"""

from __future__ import annotations

import bisect
import math
import random
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# Grid of the dynamic program: steps of FINE seconds, growing with time by RELATIVE (a 0.24 s
# step at two minutes), up to where fewer than TAIL of the tasks are still running.
FINE = 0.05
RELATIVE = 0.002
TAIL = 1e-6


@dataclass(frozen=True)
class LogNormal:
    """Durations ``median * exp(sigma * N(0, 1))``; `share` of all tasks, ending as `failed`."""

    share: float
    median: float
    sigma: float
    failed: bool = False

    def cdf(self, seconds: float) -> float:
        """The chance that such a task takes at most `seconds`."""
        if seconds <= 0.0:
            return 0.0
        z = math.log(seconds / self.median) / self.sigma
        return 0.5 * math.erfc(-z / math.sqrt(2.0))

    def draw(self, rng: random.Random) -> float:
        """One duration."""
        return self.median * math.exp(self.sigma * rng.gauss(0.0, 1.0))


@dataclass(frozen=True)
class Uniform:
    """Durations uniform in ``[low, high]``; `share` of all tasks, ending as `failed`."""

    share: float
    low: float
    high: float
    failed: bool = True

    def cdf(self, seconds: float) -> float:
        """The chance that such a task takes at most `seconds`."""
        return min(1.0, max(0.0, (seconds - self.low) / (self.high - self.low)))

    def draw(self, rng: random.Random) -> float:
        """One duration."""
        return rng.uniform(self.low, self.high)


Part = LogNormal | Uniform


@dataclass(frozen=True)
class Mixture:
    """A mix of duration distributions; no task ends before `shortest` seconds."""

    name: str
    parts: tuple[Part, ...]
    shortest: float

    def cdf(self, seconds: float) -> float:
        """The chance that a task takes at most `seconds`."""
        if seconds < self.shortest:
            return 0.0
        return sum(part.share * part.cdf(seconds) for part in self.parts)

    def draw(self, rng: random.Random) -> tuple[float, bool]:
        """One task: its duration and whether it fails."""
        pick = rng.random()
        for part in self.parts[:-1]:
            if pick < part.share:
                break
            pick -= part.share
        else:
            part = self.parts[-1]
        return max(self.shortest, part.draw(rng)), part.failed

    def horizon(self) -> float:
        """A time by which all but `TAIL` of the tasks have ended."""
        seconds = self.shortest + 1.0
        while 1.0 - self.cdf(seconds) > TAIL:
            seconds *= 1.25
        return seconds


@dataclass(frozen=True)
class Outcome:
    """A poll schedule measured on a set of tasks."""

    reads_per_task: float
    delay_mean_s: float
    ages: tuple[float, ...]


def measure(ages: Sequence[float], durations: Sequence[float]) -> Outcome:
    """Reads per task and mean detection delay of polling at `ages` (seconds since creation).

    A task still running after the last age is polled on at the last gap.
    """
    last_gap = ages[-1] - (ages[-2] if len(ages) > 1 else 0.0)
    reads, delays = [], []
    for duration in durations:
        index = bisect.bisect_left(ages, duration)
        if index < len(ages):
            reads.append(index + 1)
            delays.append(ages[index] - duration)
        else:
            extra = math.ceil((duration - ages[-1]) / last_gap)
            reads.append(len(ages) + extra)
            delays.append(ages[-1] + extra * last_gap - duration)
    return Outcome(statistics.fmean(reads), statistics.fmean(delays), tuple(ages))


class Optimum:
    """The optimal schedules of one distribution, on one grid, for any price of delay."""

    def __init__(self, mixture: Mixture, *, coarse: float = 1.0) -> None:
        end = mixture.horizon()
        points = [0.0]
        while points[-1] < end:
            points.append(points[-1] + coarse * max(FINE, points[-1] * RELATIVE))
        self.grid = np.array(points)
        self.cdf = np.array([mixture.cdf(t) for t in points])
        middles = (self.grid[1:] + self.grid[:-1]) / 2.0
        # ∫ s dF(s) up to each grid point, by the midpoint of each step
        self.partial_mean = np.concatenate(([0.0], np.cumsum(middles * np.diff(self.cdf))))

    def schedule(self, price: float) -> list[float]:
        """The ages of the optimal polls when a second of delay costs `price` reads."""
        grid, cdf, partial = self.grid, self.cdf, self.partial_mean
        size = len(grid)
        cost = np.zeros(size)
        following = np.full(size, size - 1)
        for i in range(size - 2, -1, -1):
            later = slice(i + 1, size)
            late = grid[later] * (cdf[later] - cdf[i]) - (partial[later] - partial[i])
            choices = (1.0 - cdf[i]) + price * late + cost[later]
            best = int(np.argmin(choices))
            cost[i] = choices[best]
            following[i] = i + 1 + best
        ages, i = [], 0
        while i < size - 1:
            i = int(following[i])
            ages.append(float(grid[i]))
        return ages

    def at_delay(self, durations: Sequence[float], delay: float, *, steps: int = 24) -> Outcome:
        """The optimal schedule whose mean delay on `durations` is `delay` (to within 1 %)."""
        low, high = math.log(1e-4), math.log(1e3)  # bounds of log(price)
        best: Outcome | None = None
        for _ in range(steps):
            middle = (low + high) / 2.0
            outcome = measure(self.schedule(math.exp(middle)), durations)
            if outcome.delay_mean_s > delay:
                low = middle  # too slow to notice: delay must cost more
            else:
                high, best = middle, outcome
                if outcome.delay_mean_s > 0.99 * delay:
                    break
        if best is None:
            raise ValueError(f"no schedule reaches a mean delay of {delay:g} s")
        return best


# The mix the benchmark has always used: the real service's extensions, with a few refusals.
SERVICE = Mixture(
    "log-normal, median 120 s, sigma 0.35, 3 % quick failures",
    (Uniform(0.03, 3.0, 15.0), LogNormal(0.97, 120.0, 0.35)),
    shortest=5.0,
)
# A quarter of the tasks refused or failing early, the rest slow successes.
BIMODAL = Mixture(
    "bimodal: 25 % failures (median 10 s), 75 % successes (median 150 s, sigma 0.3)",
    (LogNormal(0.25, 10.0, 0.5, failed=True), LogNormal(0.75, 150.0, 0.3)),
    shortest=2.0,
)
# Busy hours: the same median, twice the spread in log terms.
WIDE = Mixture(
    "wide log-normal, median 120 s, sigma 0.7, 3 % quick failures",
    (Uniform(0.03, 3.0, 15.0), LogNormal(0.97, 120.0, 0.7)),
    shortest=5.0,
)
DISTRIBUTIONS = (SERVICE, BIMODAL, WIDE)
