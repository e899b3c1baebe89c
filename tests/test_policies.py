"""Retry and poll policies: pure schedules, checked exactly and with hypothesis."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kling_async import PollPolicy, RetryPolicy

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


def test_policies_are_frozen() -> None:
    """Policies are values: they cannot be changed after construction."""
    policy = PollPolicy()
    with pytest.raises(AttributeError):
        policy.timeout = 5.0  # type: ignore[misc]
