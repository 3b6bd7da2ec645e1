"""The arithmetic of a run's timeline (--chart), without a hub."""
from __future__ import annotations

import math

import pytest

from hub_resilience.tools.loadreport import HubScrape
from hub_resilience.tools.timeline import (
    LoopAt,
    Timeline,
    UsersAt,
    highest_observed,
    loop_between,
    loop_series,
    users_at,
)

INF = math.inf


def test_pending_is_what_is_left_of_the_arrived() -> None:
    assert users_at(3.0, arrived=10, ready=4, failed=1, refused=2) == UsersAt(3.0, 4, 3, 2, 1)
    assert users_at(0.0, arrived=0, ready=0, failed=0, refused=0).pending == 0


@pytest.mark.parametrize(
    "counts",
    [
        {"arrived": 3, "ready": 4, "failed": 0, "refused": 0},  # more ready than arrived
        {"arrived": 3, "ready": 1, "failed": 1, "refused": 2},  # pending would be -1
        {"arrived": 3, "ready": -1, "failed": 0, "refused": 0},
    ],
)
def test_contradictory_counts_are_an_error_not_a_negative_line(counts: dict) -> None:
    with pytest.raises(ValueError, match="inconsistent counts"):
        users_at(1.0, **counts)


def test_highest_observed_is_the_bound_below_which_every_new_observation_fell() -> None:
    before = {0.05: 10.0, 0.1: 12.0, 0.5: 12.0, 1.0: 12.0, INF: 12.0}
    # Since then: 5 observations up to 0.05 s, 2 between 0.1 and 0.5 s.
    after = {0.05: 15.0, 0.1: 17.0, 0.5: 19.0, 1.0: 19.0, INF: 19.0}
    assert highest_observed(before, after) == 0.5
    # One observation beyond the highest finite bound: that bound, the most that is known.
    assert highest_observed(after, {**after, INF: 20.0}) == 1.0
    # Nothing new, no histogram, a histogram of +Inf alone.
    assert highest_observed(after, after) is None
    assert highest_observed({}, {}) is None
    assert highest_observed({}, {INF: 3.0}) is None


def test_loop_between_two_scrapes() -> None:
    before = HubScrape({}, 1.0, {0.05: 100.0, 0.5: 100.0, INF: 100.0})
    after = HubScrape({}, 2.0, {0.05: 199.0, 0.5: 200.0, INF: 200.0})
    reading = loop_between(12.5, before, after)
    assert reading.elapsed == 12.5
    assert reading.max == 0.5
    assert reading.p99 is not None and 0.05 <= reading.p99 <= 0.5
    # A hub that observed nothing in between (no reading of its loop): no figure, not 0.
    assert loop_between(1.0, after, after) == LoopAt(1.0, None, None)


def test_loop_series_in_milliseconds_skips_readings_without_a_figure() -> None:
    timeline = Timeline("ours", loop=[LoopAt(5.0, 0.1, 0.5), LoopAt(10.0, None, None),
                                      LoopAt(15.0, 0.025, 0.05)])
    assert loop_series(timeline) == ([5.0, 15.0], [100.0, 25.0])


def test_to_dict_for_json() -> None:
    timeline = Timeline("stock", users=[UsersAt(1.0, 0, 2, 1, 0)], loop=[LoopAt(5.0, 0.2, 0.5)])
    assert timeline.to_dict() == {
        "label": "stock",
        "users": [{"elapsed": 1.0, "ready": 0, "pending": 2, "refused": 1, "failed": 0}],
        "loop": [{"elapsed": 5.0, "p99": 0.2, "max": 0.5}],
    }
