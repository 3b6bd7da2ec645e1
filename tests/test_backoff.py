"""BackoffPolicy and Retry-After parsing: pure arithmetic, tested without I/O."""
from __future__ import annotations

import random
from email.utils import formatdate

import pytest

from hub_resilience.backoff import BackoffPolicy, parse_retry_after

NOW = 1_700_000_000.0  # a fixed Unix time for the HTTP-date cases


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("120", 120.0),
        ("0", 0.0),
        ("  7 ", 7.0),
        ("1.5", 1.5),
        ("-1", None),
        ("abc", None),
        ("", None),
        (None, None),
        ("nan", None),
        ("inf", None),
        ("10 seconds", None),
    ],
)
def test_parse_retry_after_delta_seconds(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value, now=NOW) == expected


def test_parse_retry_after_http_date_in_the_future() -> None:
    header = formatdate(timeval=NOW + 30, usegmt=True)  # IMF-fixdate, e.g. "Tue, 14 Nov ..."
    assert parse_retry_after(header, now=NOW) == pytest.approx(30.0)


def test_parse_retry_after_http_date_in_the_past_means_now() -> None:
    header = formatdate(timeval=NOW - 3600, usegmt=True)
    assert parse_retry_after(header, now=NOW) == 0.0


@pytest.mark.parametrize(
    "header",
    [
        "Sun, 06 Nov 1994 08:49:37 GMT",  # IMF-fixdate
        "Sunday, 06-Nov-94 08:49:37 GMT",  # obsolete RFC 850 form
        "Sun Nov  6 08:49:37 1994",  # obsolete asctime form (no zone: GMT)
    ],
)
def test_parse_retry_after_accepts_all_three_http_date_forms(header: str) -> None:
    when = 784111777.0  # 1994-11-06T08:49:37Z
    assert parse_retry_after(header, now=when - 12) == pytest.approx(12.0)


def test_parse_retry_after_defaults_now_to_the_clock() -> None:
    # A date far in the future is far away whatever the current time is.
    assert parse_retry_after("Fri, 31 Dec 9999 23:59:59 GMT") > 1e9


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("base", 0),
        ("cap", 0.1),  # below base
        ("max_attempts", 0),
        ("deadline", 0),
        ("retry_after_cap", -1),
        ("retry_after_jitter", -0.5),
    ],
)
def test_policy_rejects_out_of_range_settings_naming_them(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=f"BackoffPolicy.{field}="):
        BackoffPolicy(**{field: value})


def test_retry_after_is_honoured_with_bounded_jitter() -> None:
    policy = BackoffPolicy(base=0.5, retry_after_cap=60, retry_after_jitter=0.1)
    rng = random.Random(1)
    delays = [policy.delay(0, 30.0, rng) for _ in range(500)]
    assert min(delays) >= 30.0
    assert max(delays) <= 30.0 + 3.0  # 10 % of 30 s
    # A herd told "30 seconds" comes back spread out, not in the same instant.
    assert max(delays) - min(delays) > 2.0


def test_retry_after_is_capped() -> None:
    policy = BackoffPolicy(base=0.5, retry_after_cap=60, retry_after_jitter=0.1)
    rng = random.Random(2)
    delays = [policy.delay(3, 86_400.0, rng) for _ in range(200)]
    assert min(delays) >= 60.0
    assert max(delays) <= 66.0


def test_zero_retry_after_still_gets_jitter_of_at_least_base() -> None:
    policy = BackoffPolicy(base=0.5)
    rng = random.Random(3)
    delays = [policy.delay(0, 0.0, rng) for _ in range(200)]
    assert min(delays) >= 0.0
    assert max(delays) <= 0.5
    assert max(delays) > 0.25


@pytest.mark.parametrize("attempt", [0, 1, 2, 3, 4, 5, 8, 100])
def test_full_jitter_stays_within_the_exponential_ceiling(attempt: int) -> None:
    policy = BackoffPolicy(base=0.5, cap=10.0)
    ceiling = min(10.0, 0.5 * 2**min(attempt, 64))
    assert policy.backoff_ceiling(attempt) == ceiling
    rng = random.Random(attempt)
    delays = [policy.delay(attempt, None, rng) for _ in range(1000)]
    assert all(0.0 <= d <= ceiling for d in delays)
    # Full jitter: the draws cover the whole range, not just its top.
    assert min(delays) < 0.05 * ceiling
    assert max(delays) > 0.95 * ceiling


def test_ceiling_grows_then_caps() -> None:
    policy = BackoffPolicy(base=1.0, cap=8.0)
    assert [policy.backoff_ceiling(n) for n in range(6)] == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    with pytest.raises(ValueError):
        policy.backoff_ceiling(-1)


def test_negative_or_infinite_retry_after_falls_back_to_backoff() -> None:
    policy = BackoffPolicy(base=1.0, cap=4.0)
    rng = random.Random(5)
    assert 0 <= policy.delay(1, -5.0, rng) <= 2.0
    assert 0 <= policy.delay(1, float("inf"), rng) <= 2.0


def test_should_retry_respects_attempts_and_deadline() -> None:
    policy = BackoffPolicy(max_attempts=3, deadline=10.0)
    assert policy.should_retry(1, elapsed=0.0, next_delay=1.0)
    assert policy.should_retry(2, elapsed=5.0, next_delay=5.0)
    assert not policy.should_retry(3, elapsed=0.0, next_delay=0.0)  # attempts used up
    assert not policy.should_retry(1, elapsed=9.5, next_delay=1.0)  # would pass the deadline


def test_policy_is_frozen() -> None:
    policy = BackoffPolicy()
    with pytest.raises(AttributeError):
        policy.base = 2.0  # type: ignore[misc]
