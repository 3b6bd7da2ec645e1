"""The activity-interval formula at small, large and very large hubs."""

from __future__ import annotations

import pytest

from hub_resilience.hub.activity import tune_activity


def test_small_hub_keeps_jupyterhub_defaults() -> None:
    s = tune_activity(10, 10.0)
    assert (s.singleuser_interval, s.hub_interval, s.activity_resolution) == (300, 300, 30)
    assert s.expected_rate == pytest.approx(10 / 300 * 2)
    assert s.budget_met


def test_thousand_servers_fit_the_default_budget_with_default_intervals() -> None:
    s = tune_activity(1_000, 10.0)
    assert (s.singleuser_interval, s.hub_interval, s.activity_resolution) == (300, 300, 30)
    assert s.expected_rate == pytest.approx(1_000 / 300 * 2)
    assert s.expected_rate <= 10.0


def test_ten_thousand_servers_stretch_intervals_to_stay_in_budget() -> None:
    s = tune_activity(10_000, 10.0)
    # 10,000 servers / 5 requests per second each source = 2,000 s, rounded up to 30 s steps.
    assert (s.singleuser_interval, s.hub_interval) == (2_010, 2_010)
    assert s.activity_resolution == 201
    assert s.expected_rate <= 10.0
    assert s.budget_met


def test_thousand_servers_with_a_tight_budget() -> None:
    s = tune_activity(1_000, 2.0)
    assert s.singleuser_interval == 1_020  # 1,000 / 1 per s = 1,000 s -> 1,020
    assert s.expected_rate <= 2.0


def test_uneven_share_between_single_user_and_hub() -> None:
    s = tune_activity(10_000, 10.0, singleuser_share=0.8)
    assert s.singleuser_interval == 1_260  # 10,000 / 8 = 1,250 -> 1,260
    # The hub's share (2 per s) needs 5,010 s, above the default cap of 3,600 s.
    assert s.hub_interval == 3_600
    assert not s.budget_met


def test_cap_reports_an_unmet_budget() -> None:
    s = tune_activity(10_000, 10.0, max_interval=1_800)
    assert s.singleuser_interval == 1_800
    assert not s.budget_met
    assert s.expected_rate > 10.0


def test_zero_servers_is_valid() -> None:
    assert tune_activity(0, 10.0).expected_rate == 0


@pytest.mark.parametrize(
    ("args", "kwargs", "match"),
    [
        ((-1, 10.0), {}, "expected_concurrent_servers must be >= 0"),
        ((1.5, 10.0), {}, "expected_concurrent_servers must be a whole number"),
        ((10, 0), {}, "activity_requests_per_second must be a positive"),
        ((10, -3.0), {}, "activity_requests_per_second must be a positive"),
        ((10, float("nan")), {}, "activity_requests_per_second must be a positive"),
        ((10, 10.0), {"singleuser_share": 1.0}, "singleuser_share"),
        ((10, 10.0), {"max_interval": 60}, "max_interval must be at least"),
    ],
)
def test_bad_input_is_a_clear_error(args: tuple, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        tune_activity(*args, **kwargs)
