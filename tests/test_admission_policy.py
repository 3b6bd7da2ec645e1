"""The admission governor's AIMD policy and Retry-After estimate, interval by interval."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable
from dataclasses import replace
from typing import Any

import pytest

from hub_resilience.hub.admission_policy import (
    AdmissionDecision,
    AdmissionReason,
    AdmissionSettings,
    AdmissionSignals,
    AdmissionState,
    distress,
    expected_slot_wait,
    expected_turn_window,
    initial_state,
    next_state,
    retry_after_range,
)

R = AdmissionReason
DEFAULTS = AdmissionSettings()
#: A cluster that cannot grow: the limit is held while most pending spawns wait for a node.
HOLDING = replace(DEFAULTS, capacity_wait_threshold=0.5)


def calm(pending: int = 0, **overrides: Any) -> AdmissionSignals:
    """A quiet interval: fast loop, fast API, nothing failing, ``pending`` spawns in flight."""
    fields: dict[str, Any] = dict(
        loop_lag=0.01,
        k8s_latency=0.1,
        k8s_requests=100,
        k8s_throttled=0,
        pending=pending,
        waiting_for_capacity=0,
        finished=10,
        failed=0,
    )
    fields.update(overrides)
    return AdmissionSignals(**fields)


#: Pending spawns that fill any limit of these tests: distress cuts only a limit that binds.
FULL = 200


def stall(pending: int = FULL) -> AdmissionSignals:
    return calm(pending, loop_lag=1.0)


def throttled(pending: int = FULL) -> AdmissionSignals:
    return calm(pending, k8s_requests=100, k8s_throttled=30)


def capacity_wait(pending: int = 20) -> AdmissionSignals:
    return calm(pending, waiting_for_capacity=pending * 3 // 4)


def run(
    state: AdmissionState, signals: Iterable[AdmissionSignals], settings: AdmissionSettings
) -> list[AdmissionDecision]:
    decisions = []
    for s in signals:
        decision = next_state(state, s, settings)
        decisions.append(decision)
        state = decision.state
    return decisions


def binding_run(
    state: AdmissionState, intervals: int, settings: AdmissionSettings
) -> list[AdmissionDecision]:
    """Calm intervals with every slot taken (pending == limit), as during a burst."""
    decisions = []
    for _ in range(intervals):
        decision = next_state(state, calm(pending=state.limit), settings)
        decisions.append(decision)
        state = decision.state
    return decisions


# --- validation -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"floor": 0}, "floor"),
        ({"floor": 2.5}, "floor"),
        ({"floor": 50, "ceiling": 40}, "ceiling"),
        ({"start": 0}, "start"),
        ({"increase": 0}, "increase"),
        ({"decrease": 1.0}, "decrease"),
        ({"decrease": 0.0}, "decrease"),
        ({"decrease": math.nan}, "decrease"),
        ({"calm_intervals": 0}, "calm_intervals"),
        ({"cooldown_intervals": -1}, "cooldown_intervals"),
        ({"binding_share": 0.0}, "binding_share"),
        ({"binding_share": 1.5}, "binding_share"),
        ({"loop_lag_threshold": 0.0}, "loop_lag_threshold"),
        ({"k8s_latency_threshold": math.inf}, "k8s_latency_threshold"),
        ({"k8s_throttled_threshold": -0.1}, "k8s_throttled_threshold"),
        ({"capacity_wait_threshold": 1.1}, "capacity_wait_threshold"),
        ({"failure_threshold": math.nan}, "failure_threshold"),
    ],
)
def test_bad_settings_name_the_field(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match=rf"AdmissionSettings\.{field}=.*out of range"):
        AdmissionSettings(**kwargs)


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"loop_lag": -0.1}, "loop_lag"),
        ({"loop_lag": math.inf}, "loop_lag"),
        ({"loop_lag": math.nan}, "loop_lag"),
        ({"k8s_latency": -1.0}, "k8s_latency"),
        ({"k8s_latency": math.inf}, "k8s_latency"),
        ({"k8s_requests": -1}, "k8s_requests"),
        ({"k8s_requests": 5, "k8s_throttled": 6}, "k8s_throttled"),
        ({"pending": -1, "waiting_for_capacity": 0}, "pending"),
        ({"pending": 3, "waiting_for_capacity": 4}, "waiting_for_capacity"),
        ({"finished": -2}, "finished"),
        ({"finished": 2, "failed": 3}, "failed"),
        ({"failed": 1.0}, "failed"),
        ({"pending": True}, "pending"),
    ],
)
def test_bad_signals_name_the_field(overrides: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match=rf"AdmissionSignals\.{field}=.*out of range"):
        calm(**overrides)


def test_valid_edge_signals_are_accepted() -> None:
    s = calm(loop_lag=0, k8s_latency=None, k8s_requests=0, finished=0, pending=0)
    assert distress(s, DEFAULTS) is None


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [({"limit": 10, "calm": -1}, "calm"), ({"limit": 10, "cooldown": -1}, "cooldown")],
)
def test_bad_state_names_the_field(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match=rf"AdmissionState\.{field}="):
        AdmissionState(**kwargs)


# --- start ----------------------------------------------------------------------------------


def test_initial_state_is_the_start_clamped() -> None:
    assert initial_state(DEFAULTS) == AdmissionState(limit=64, calm=0, cooldown=0)
    assert initial_state(AdmissionSettings(floor=8, ceiling=50, start=64)).limit == 50
    assert initial_state(AdmissionSettings(floor=16, ceiling=50, start=4)).limit == 16


# --- increase -------------------------------------------------------------------------------


def test_burst_on_idle_cluster_rises_every_calm_intervals_to_exactly_the_ceiling() -> None:
    settings = AdmissionSettings(floor=8, ceiling=28, start=10, increase=4, calm_intervals=2)
    decisions = binding_run(initial_state(settings), 16, settings)
    assert [d.state.limit for d in decisions] == [
        10, 14, 14, 18, 18, 22, 22, 26, 26, 28, 28, 28, 28, 28, 28, 28,
    ]  # fmt: skip
    assert [d.reason for d in decisions[:4]] == [R.HOLD, R.ALL_WELL, R.HOLD, R.ALL_WELL]
    assert decisions[9].reason is R.ALL_WELL and decisions[9].changed
    at_ceiling = decisions[10:]
    assert all(d.reason is R.HOLD and not d.changed for d in at_ceiling)


def test_calm_intervals_three_means_two_holds_between_steps() -> None:
    settings = replace(DEFAULTS, calm_intervals=3)
    decisions = binding_run(initial_state(settings), 6, settings)
    assert [d.state.limit for d in decisions] == [64, 64, 68, 68, 68, 72]


def test_not_binding_never_rises() -> None:
    state = initial_state(DEFAULTS)  # 64; binding needs pending >= 51.2
    decisions = run(state, [calm(pending=51)] * 20, DEFAULTS)
    assert all(d.state.limit == 64 and d.reason is R.HOLD and not d.changed for d in decisions)
    assert decisions[-1].state.calm == 20  # still counting: the first binding interval raises
    assert next_state(decisions[-1].state, calm(pending=52), DEFAULTS).state.limit == 68


def test_binding_share_at_exactly_the_product_counts_as_binding() -> None:
    # 0.7 * 10 is 7.000000000000001 in floats; 7 pending spawns fill 70% of 10 slots.
    settings = AdmissionSettings(floor=1, ceiling=100, start=10, binding_share=0.7)
    state = AdmissionState(limit=10, calm=1)
    assert next_state(state, calm(pending=7), settings).state.limit == 14
    assert next_state(state, calm(pending=6), settings).state.limit == 10


# --- decrease -------------------------------------------------------------------------------


def test_loop_stall_cuts_then_cooldown_holds_then_cuts_again() -> None:
    state = initial_state(DEFAULTS)
    first = next_state(state, stall(pending=64), DEFAULTS)
    assert first.state == AdmissionState(limit=44, calm=0, cooldown=2)  # floor(64 * 0.7)
    assert first.reason is R.LOOP_STALLED and first.changed
    held = run(first.state, [stall(pending=64)] * DEFAULTS.cooldown_intervals, DEFAULTS)
    assert [(d.state.limit, d.state.cooldown) for d in held] == [(44, 1), (44, 0)]
    assert all(d.reason is R.LOOP_STALLED and not d.changed for d in held)
    again = next_state(held[-1].state, stall(pending=64), DEFAULTS)
    assert again.state.limit == 30 and again.reason is R.LOOP_STALLED and again.changed


def test_a_stall_while_refusals_outnumber_pending_spawns_holds_and_stretches_the_horizon() -> None:
    """At 3,000 users each refused request costs the hub a pass over every user: a stall
    with more refusals than spawns in flight is the retrying crowd's, so the limit is held
    and the refused are told to stay away longer (doubling once per cooldown, up to 600 s);
    calm halves it back to 60 s."""
    state = AdmissionState(limit=24, refused_before=60)
    crowd = calm(24, loop_lag=1.0, refused=60)
    first = next_state(state, crowd, DEFAULTS)
    assert first.state == AdmissionState(limit=24, calm=0, cooldown=2, horizon=120.0,
                                         refused_before=60)
    assert first.reason is R.REFUSALS and not first.changed
    decisions = run(first.state, [crowd] * 12, DEFAULTS)
    assert [d.state.horizon for d in decisions] == [120, 120, 240, 240, 240, 480, 480, 480,
                                                    600, 600, 600, 600]
    assert {d.state.limit for d in decisions} == {24}
    # It halves after as long without a stall as it is (2 s intervals): 600 s at 600, then
    # 300 s at 300, and so on down to 60.
    horizons = [d.state.horizon for d in run(decisions[-1].state, [calm(FULL)] * 600, DEFAULTS)]
    assert [horizons.index(h) + 1 for h in (300, 150, 75, 60)] == [300, 450, 525, 563]
    assert horizons[-1] == 60
    # A stall the spawns cause keeps it (the cut is the answer there), and starts the count
    # again.
    spawns_stall = calm(FULL, loop_lag=1.0, refused=0)
    kept = run(decisions[-1].state, [calm(FULL)] * 299 + [spawns_stall] + [calm(FULL)], DEFAULTS)
    assert [d.state.horizon for d in kept[-3:]] == [600, 600, 600]
    # Fewer refusals than spawns pending: the spawns load the hub, the limit is cut.
    cut = next_state(state, calm(24, loop_lag=1.0, refused=24), DEFAULTS)
    assert cut.reason is R.LOOP_STALLED and cut.state.limit == 16 and cut.state.horizon == 60


def test_the_first_refusals_of_a_burst_are_not_a_returning_crowd() -> None:
    """300 users at once on Kubernetes (2026-12-07): the burst's first interval stalled the
    hub with 204 refused and 64 pending. Telling those 204 to stay away for up to 120 s left
    slots idle while they did. Nobody refused then had been told anything yet, so the stall
    is the spawns' and the limit is cut; a stall in the next interval, while the refused can
    be coming back, holds it and stretches the horizon."""
    burst = calm(64, loop_lag=1.7, refused=204)
    first = next_state(AdmissionState(limit=64), burst, DEFAULTS)
    assert first.reason is R.LOOP_STALLED and first.state.limit == 44
    assert first.state.horizon == 60 and first.state.refused_before == 204
    again = next_state(replace(first.state, cooldown=0), calm(44, loop_lag=1.0, refused=100),
                       DEFAULTS)
    assert again.reason is R.REFUSALS and again.state.limit == 44
    assert again.state.horizon == 120
    # A calm interval with no refusal forgets them: the next stall's refusals are new.
    forgotten = next_state(again.state, calm(44), DEFAULTS).state
    assert forgotten.refused_before == 0
    assert next_state(forgotten, calm(44, loop_lag=1.0, refused=100), DEFAULTS).reason is (
        R.LOOP_STALLED
    )


def test_no_cooldown_cuts_every_interval() -> None:
    settings = replace(DEFAULTS, cooldown_intervals=0)
    decisions = run(initial_state(settings), [stall()] * 3, settings)
    assert [d.state.limit for d in decisions] == [44, 30, 21]


def test_decrease_floors_the_product_of_whole_numbers_exactly() -> None:
    # 90 * 0.7 is 62.99999999999999 in floats; the cut must still be to 63.
    state = AdmissionState(limit=90)
    assert next_state(state, stall(), DEFAULTS).state.limit == 63


def test_decrease_goes_down_by_at_least_one() -> None:
    settings = AdmissionSettings(floor=1, ceiling=200, decrease=1 - 1e-12)
    decision = next_state(AdmissionState(limit=100), stall(), settings)
    assert decision.state.limit == 99 and decision.changed


def test_k8s_throttled_share_above_threshold() -> None:
    assert distress(calm(k8s_requests=100, k8s_throttled=11), DEFAULTS) is R.K8S_THROTTLED
    assert distress(calm(k8s_requests=100, k8s_throttled=10), DEFAULTS) is None  # at, not above
    assert distress(calm(k8s_requests=10, k8s_throttled=1), DEFAULTS) is None
    decision = next_state(initial_state(DEFAULTS), throttled(), DEFAULTS)
    assert (decision.state.limit, decision.reason) == (44, R.K8S_THROTTLED)


def test_k8s_latency_above_threshold() -> None:
    assert distress(calm(k8s_latency=2.5), DEFAULTS) is R.K8S_SLOW
    assert distress(calm(k8s_latency=2.0), DEFAULTS) is None
    assert distress(calm(k8s_latency=None, k8s_requests=0), DEFAULTS) is None
    decision = next_state(initial_state(DEFAULTS), calm(64, k8s_latency=5.0), DEFAULTS)
    assert (decision.state.limit, decision.reason) == (44, R.K8S_SLOW)


def test_distress_priority_order() -> None:
    everything = dict(
        loop_lag=1.0,
        k8s_latency=5.0,
        k8s_requests=10,
        k8s_throttled=5,
        finished=10,
        failed=9,
        pending=20,
        waiting_for_capacity=20,
    )
    order = [R.LOOP_STALLED, R.K8S_THROTTLED, R.K8S_SLOW, R.FAILURES, R.CAPACITY_WAIT]
    cured = [
        {"loop_lag": 0.0},
        {"k8s_throttled": 0},
        {"k8s_latency": 0.1},
        {"failed": 0},
        {"waiting_for_capacity": 0},
    ]
    fields = dict(everything)
    for expected, cure in zip(order, cured, strict=True):
        assert distress(AdmissionSignals(**fields), HOLDING) is expected
        fields.update(cure)
    assert distress(AdmissionSignals(**fields), HOLDING) is None


def test_by_default_the_limit_keeps_rising_while_pods_wait_for_nodes() -> None:
    """A cluster autoscaler sizes its scale-up by the pods it sees pending: a limit that
    keeps rising while they wait gets the whole burst its nodes in one scale-up, instead of
    one limit's worth per node start-up."""
    assert distress(calm(pending=100, waiting_for_capacity=100), DEFAULTS) is None
    decisions = run(initial_state(DEFAULTS), [capacity_wait(pending=200)] * 8, DEFAULTS)
    assert [d.state.limit for d in decisions] == [64, 68, 68, 72, 72, 76, 76, 80]
    # Spawns that time out waiting still cut it.
    failing = calm(pending=80, waiting_for_capacity=80, finished=10, failed=8)
    assert next_state(decisions[-1].state, failing, DEFAULTS).state.limit == 56


def test_capacity_wait_holds_the_limit_without_cutting_it() -> None:
    """On a cluster that cannot grow, admitting more spawns than it has room for only makes
    them time out; fewer would slow a scale-up down. The limit neither drops nor rises."""
    settings = replace(HOLDING, start=100)
    waits = [capacity_wait(pending=100)] * 30
    decisions = run(initial_state(settings), waits, settings)
    assert [d.state.limit for d in decisions] == [100] * 30
    assert all(d.reason is R.CAPACITY_WAIT and not d.changed for d in decisions)
    # Calm intervals start over after a wait: hysteresis before the next increase.
    after = run(decisions[-1].state, [calm(pending=100)] * 2, settings)
    assert [d.state.limit for d in after] == [100, 104]


def test_capacity_wait_lets_a_cut_cool_down_and_failures_still_cut() -> None:
    cut = next_state(initial_state(HOLDING), throttled(pending=64), HOLDING)
    assert (cut.state.limit, cut.state.cooldown) == (44, 2)
    held = next_state(cut.state, capacity_wait(pending=44), HOLDING)
    assert (held.state.limit, held.state.cooldown, held.reason) == (44, 1, R.CAPACITY_WAIT)
    failing = calm(pending=44, waiting_for_capacity=40, finished=10, failed=8)
    assert distress(failing, HOLDING) is R.FAILURES  # spawns timing out while they wait


def test_capacity_wait_needs_floor_pending_spawns() -> None:
    assert distress(calm(pending=7, waiting_for_capacity=7), HOLDING) is None  # floor is 8
    assert distress(calm(pending=8, waiting_for_capacity=5), HOLDING) is R.CAPACITY_WAIT
    assert distress(calm(pending=8, waiting_for_capacity=4), HOLDING) is None  # half, not most


def test_failures_count_only_with_three_finished() -> None:
    assert distress(calm(finished=2, failed=2), DEFAULTS) is None
    assert distress(calm(finished=3, failed=2), DEFAULTS) is R.FAILURES
    assert distress(calm(finished=4, failed=2), DEFAULTS) is None  # at the threshold
    assert distress(calm(finished=0, failed=0), DEFAULTS) is None


def test_distress_at_the_floor_keeps_its_reason() -> None:
    settings = replace(DEFAULTS, cooldown_intervals=0)
    decision = next_state(AdmissionState(limit=8), stall(), settings)
    assert decision.state.limit == 8 and not decision.changed
    assert decision.reason is R.LOOP_STALLED


# --- recovery and hysteresis ----------------------------------------------------------------


def test_recovery_climbs_back_additively() -> None:
    after_stall = next_state(initial_state(DEFAULTS), stall(pending=64), DEFAULTS).state
    decisions = binding_run(after_stall, 8, DEFAULTS)
    assert [d.state.limit for d in decisions] == [44, 48, 48, 52, 52, 56, 56, 60]
    # Calm intervals also run the cooldown down.
    assert [d.state.cooldown for d in decisions[:3]] == [1, 0, 0]


def test_single_calm_interval_between_distress_never_raises() -> None:
    settings = replace(DEFAULTS, cooldown_intervals=0, start=100)
    state = initial_state(settings)
    signals = [stall(pending=200), calm(pending=200)] * 10
    decisions = run(state, signals, settings)
    limits = [d.state.limit for d in decisions]
    assert all(b <= a for a, b in zip([100, *limits[:-1]], limits, strict=True))
    assert all(d.reason is R.HOLD for d in decisions[1::2])
    assert all(d.state.calm == 1 for d in decisions[1::2])
    assert all(d.state.calm == 0 for d in decisions[0::2])


def test_increase_is_not_blocked_by_cooldown_but_needs_the_calm_run() -> None:
    state = AdmissionState(limit=50, calm=1, cooldown=2)
    decision = next_state(state, calm(pending=50), DEFAULTS)
    assert decision.state == AdmissionState(limit=54, calm=0, cooldown=1)
    assert decision.reason is R.ALL_WELL and decision.changed


# --- out-of-range state ---------------------------------------------------------------------


def test_out_of_range_state_is_clamped() -> None:
    above = next_state(AdmissionState(limit=500), calm(), DEFAULTS)
    assert above.state.limit == 200 and above.changed and above.reason is R.HOLD
    below = next_state(AdmissionState(limit=2), calm(), DEFAULTS)
    assert below.state.limit == 8 and below.changed
    below_cut = next_state(AdmissionState(limit=2), stall(), DEFAULTS)
    assert below_cut.state.limit == 8 and below_cut.reason is R.LOOP_STALLED
    assert below_cut.changed  # 2 -> 8: the adapter must apply it


def test_limit_always_within_bounds_over_a_sweep() -> None:
    settings = AdmissionSettings(floor=5, ceiling=40, start=20, increase=7, cooldown_intervals=1,
                                 capacity_wait_threshold=0.5)
    kinds = [calm(pending=40), stall(), throttled(), capacity_wait(), calm(pending=3)]
    for sequence in itertools.product(kinds, repeat=5):
        for start in (1, 20, 999):
            for d in run(AdmissionState(limit=start), sequence, settings):
                assert settings.floor <= d.state.limit <= settings.ceiling


# --- replay ---------------------------------------------------------------------------------


def test_replay_of_a_recorded_burst_stall_and_recovery() -> None:
    def burst(limit: int) -> AdmissionSignals:
        return calm(pending=limit, finished=limit // 4)

    # Pending spawns as recorded: the burst keeps every slot taken throughout.
    recorded = (
        [burst(n) for n in (64, 64, 68, 68, 72, 72, 76, 76, 80, 80)]  # 1-10: burst, calm
        + [stall(pending=84), stall(pending=58), stall(pending=58), stall(pending=58)]  # 11-14
        + [burst(n) for n in (40, 40, 44, 44, 48, 48)]  # 15-20: recovery
        + [throttled(pending=52)]  # 21: one interval of API 429s
        + [burst(n) for n in (36, 36, 40, 40, 44, 44, 48, 48, 52)]  # 22-30
    )
    assert len(recorded) == 30
    decisions = run(initial_state(DEFAULTS), recorded, DEFAULTS)
    assert [d.state.limit for d in decisions] == [
        64, 68, 68, 72, 72, 76, 76, 80, 80, 84,
        58, 58, 58, 40,
        40, 44, 44, 48, 48, 52,
        36,
        36, 40, 40, 44, 44, 48, 48, 52, 52,
    ]  # fmt: skip
    reasons = [d.reason for d in decisions]
    assert reasons[10:14] == [R.LOOP_STALLED] * 4
    assert reasons[20] is R.K8S_THROTTLED
    assert reasons.count(R.ALL_WELL) == 5 + 3 + 4
    # Deterministic: the same recording gives the same decisions.
    assert run(initial_state(DEFAULTS), recorded, DEFAULTS) == decisions


# --- expected_slot_wait ---------------------------------------------------------------------


def test_slot_wait_without_pending_spawns_is_what_a_new_spawn_takes() -> None:
    """The range is set before the burst that makes the hub refuse: it must already say how
    long a spawn takes, not "now"."""
    assert expected_slot_wait([], [10.0, 20.0, 60.0]) == 20.0
    assert expected_slot_wait([], []) == 30.0


def test_slot_wait_without_history_takes_each_pending_spawn_as_overdue() -> None:
    """The first burst on a fresh hub: nothing has finished, so the pending spawns are
    expected in half as long again as they have run (at least a second), not in
    ``default``."""
    assert expected_slot_wait([5.0], []) == 2.5
    assert expected_slot_wait([0.3], [], default=12.5) == 1.0
    assert expected_slot_wait([20.0, 8.0], [], waiting_ages=[40.0, 3.0]) == 4.0
    assert expected_slot_wait([], [], waiting_ages=[40.0, 3.0]) == 20.0


def test_slot_wait_during_a_scale_up() -> None:
    assert expected_slot_wait([10.0, 20.0], [300.0] * 10) == pytest.approx(280.0)


def test_slot_wait_for_overdue_spawns() -> None:
    """A spawn that outlived every recent one (waiting for nodes that take longer than the
    last scale-up) is expected to last half as long again: a scale-up ends, and a user told
    too early costs a 429 where one told too late leaves the slot idle."""
    assert expected_slot_wait([400.0], [300.0] * 10) == pytest.approx(200.0)
    assert expected_slot_wait([0.5], [0.2]) == pytest.approx(1.0)  # max(0.25, 1.0)
    # A young spawn in a slow queue is expected before the straggler.
    assert expected_slot_wait([700.0, 10.0], [300.0] * 10) == pytest.approx(290.0)
    # The first scale-up of an event: every pending spawn outlived the quick ones before it.
    assert expected_slot_wait([60.0, 70.0], [20.0, 30.0, 35.0]) == pytest.approx(30.0)


def test_slot_wait_for_a_node_goes_by_the_stated_scale_up_until_one_is_measured() -> None:
    """The first scale-up of a hub's life: only what the operator says a node takes can tell
    the wait; a spawn outliving that is overdue again, and measured durations win."""
    quick = [20.0, 30.0, 35.0]
    assert expected_slot_wait([], quick, waiting_ages=[40.0, 5.0], scale_up=120.0) == 80.0
    assert expected_slot_wait([], [], waiting_ages=[40.0], scale_up=120.0) == 80.0
    assert expected_slot_wait([], quick, waiting_ages=[40.0]) == 20.0  # unknown: overdue
    assert expected_slot_wait([], quick, waiting_ages=[150.0], scale_up=120.0) == 75.0
    # A spawn with a node (or needing none) is not waiting for one: the statement is not its.
    assert expected_slot_wait([40.0], quick, scale_up=120.0) == 20.0
    # Once a scale-up was measured, the measurement goes.
    assert expected_slot_wait([], [*quick, 100.0], waiting_ages=[40.0], scale_up=200.0) == 60.0
    with pytest.raises(ValueError, match="scale_up"):
        expected_slot_wait([], [], waiting_ages=[1.0], scale_up=-1.0)


def test_slot_wait_uses_the_median_of_longer_durations_only() -> None:
    durations = [10.0, 20.0, 30.0, 100.0, 200.0]
    assert expected_slot_wait([5.0], durations) == pytest.approx(25.0)  # median 30 - 5
    assert expected_slot_wait([25.0], durations) == pytest.approx(75.0)  # median(30,100,200)-25
    assert expected_slot_wait([25.0, 5.0], durations) == pytest.approx(25.0)
    # Even count: the mean of the two middle values, median(40, 60) - 20.
    assert expected_slot_wait([20.0], [10.0, 40.0, 60.0]) == pytest.approx(30.0)
    # A duration equal to the age does not count as longer.
    assert expected_slot_wait([30.0], [30.0, 50.0]) == pytest.approx(20.0)


def test_slot_wait_for_pods_waiting_for_a_node_counts_the_oldest_only() -> None:
    """Waiting pods are placed first come first served: the one that has waited longest
    gets the next node. A young waiting pod is not about to finish because quick spawns
    were quick: during the first scale-up of an event it would say "seconds" for minutes."""
    quick = [20.0, 30.0, 35.0]
    assert expected_slot_wait([], quick, waiting_ages=[5.0, 80.0, 2.0]) == pytest.approx(40.0)
    assert expected_slot_wait([5.0, 80.0, 2.0], quick) == pytest.approx(25.0)  # had they a node
    # A pod that has its node is still next when it is expected first.
    assert expected_slot_wait([10.0], quick, waiting_ages=[80.0]) == pytest.approx(20.0)
    # After a scale-up, its waits are in the history: the oldest waiting pod's remainder.
    after = [20.0, 30.0, 150.0, 160.0, 170.0]
    assert expected_slot_wait([], after, waiting_ages=[100.0, 40.0]) == pytest.approx(60.0)


@pytest.mark.parametrize(
    ("ages", "durations", "kwargs", "name"),
    [
        ([1.0], [10.0], {"waiting_ages": [-2.0]}, "waiting_ages"),
        ([-1.0], [10.0], {}, "pending_ages"),
        ([math.nan], [10.0], {}, "pending_ages"),
        ([1.0], [math.inf], {}, "recent_durations"),
        ([1.0], [], {"default": -5.0}, "default"),
    ],
)
def test_slot_wait_errors_name_the_argument(
    ages: list[float], durations: list[float], kwargs: dict[str, Any], name: str
) -> None:
    with pytest.raises(ValueError, match=name):
        expected_slot_wait(ages, durations, **kwargs)


# --- retry_after_range ----------------------------------------------------------------------


def test_retry_range_is_centred_on_the_wait() -> None:
    assert retry_after_range(100.0) == (75, 125)
    assert retry_after_range(10.0) == (8, 13)  # 7.5 and 12.5 round half up
    lo, hi = retry_after_range(280.0)
    assert (lo, hi) == (210, 350)
    assert isinstance(lo, int) and isinstance(hi, int)


def test_retry_range_clamps_to_low_and_high() -> None:
    assert retry_after_range(0.0) == (5, 6)
    assert retry_after_range(2.0) == (5, 6)
    assert retry_after_range(6.0) == (5, 8)  # 4.5 -> 5 is the low bound anyway
    assert retry_after_range(10_000.0) == (599, 600)
    assert retry_after_range(700.0) == (525, 600)
    assert retry_after_range(100.0, low=30, high=60) == (59, 60)
    assert retry_after_range(0.0, low=30, high=60) == (30, 31)


def test_retry_range_always_has_lo_below_hi_within_bounds() -> None:
    for wait in [x / 4 for x in range(0, 4_000)]:
        for low, high, spread in [(5.0, 600.0, 0.25), (1.0, 2.0, 0.5), (30.0, 60.0, 0.1)]:
            lo, hi = retry_after_range(wait, low=low, high=high, spread=spread)
            assert low <= lo < hi <= high, (wait, low, high, spread)


@pytest.mark.parametrize(
    ("wait", "kwargs", "name"),
    [
        (math.nan, {}, "wait"),
        (math.inf, {}, "wait"),
        (-1.0, {}, "wait"),
        (10.0, {"low": 0.5}, "low"),
        (10.0, {"low": 10.0, "high": 10.0}, "high"),
        (10.0, {"low": 10.0, "high": 5.0}, "high"),
        (10.0, {"low": 5.2, "high": 5.8}, "high"),
        (10.0, {"spread": 0.0}, "spread"),
        (10.0, {"spread": 1.0}, "spread"),
    ],
)
def test_retry_range_errors_name_the_argument(
    wait: float, kwargs: dict[str, Any], name: str
) -> None:
    with pytest.raises(ValueError, match=rf"^{name} must"):
        retry_after_range(wait, **kwargs)


# --- expected_turn_window -------------------------------------------------------------------


def test_turn_window_runs_from_the_next_slot_to_the_queue_drained() -> None:
    # 100 users refused within the last Retry-After; 2 slots free per second.
    assert expected_turn_window(1.0, waiting=100, slots_per_second=2.0, pending=64) == (1.0, 50.0)


def test_turn_window_ends_within_half_again_the_slot_wait_or_a_minute() -> None:
    """Telling the last of a long queue to stay away for minutes leaves slots idle whenever
    the queue drains faster than it did (a node arrives): the window ends no later than
    JupyterHub's own 60 s, or half as long again as the wait for the next slot."""
    assert expected_turn_window(1.0, waiting=180, slots_per_second=2.0, pending=64) == (1.0, 60.0)
    assert expected_turn_window(100.0, waiting=300, slots_per_second=0.1, pending=64) == (
        100.0, 150.0)
    assert expected_turn_window(30.0, waiting=300, slots_per_second=1.0, pending=64) == (30.0, 60.0)


def test_a_stretched_horizon_lets_the_window_run_to_the_queue_drained() -> None:
    # 1,500 refused, 2 slots a second: 750 s to drain; the horizon decides how much is told.
    window = expected_turn_window(5.0, waiting=1500, slots_per_second=2.0, pending=24,
                                  horizon=480.0)
    assert window == (5.0, 480.0)
    assert expected_turn_window(5.0, waiting=100, slots_per_second=2.0, pending=24,
                                horizon=480.0) == (5.0, 50.0)


def test_turn_window_is_never_earlier_than_the_wait_for_a_slot() -> None:
    # A scale-up: no slot frees for two minutes, whatever the queue.
    assert expected_turn_window(120.0, waiting=30, slots_per_second=0.5, pending=64) == (
        120.0, 120.0)
    # Nobody refused, or nothing finishing soon: the slot wait alone.
    assert expected_turn_window(8.0, waiting=0, slots_per_second=2.0, pending=64) == (8.0, 8.0)
    assert expected_turn_window(0.0, waiting=300, slots_per_second=0.0, pending=64) == (0.0, 0.0)


@pytest.mark.parametrize("waiting, slots_per_second", [(0, 0.0), (300, 0.0), (300, 2.0)])
def test_with_nothing_pending_the_next_burst_is_spread_to_the_horizon(
    waiting: float, slots_per_second: float
) -> None:
    """The next refusal will be one of a burst that filled the limit between two decisions
    (2026-12-07 23:56, 500 at once: its first 436 refused were all told 23-38 s, the slot
    wait of a hub that had measured nothing, and came back within 15 s of each other while
    the loop stalled). Whatever the queue, it is told up to the horizon: JupyterHub's own
    30-60 s when nothing is known; from the last spawns' duration on, once one is."""
    window = expected_turn_window(30.0, waiting=waiting, slots_per_second=slots_per_second,
                                  pending=0)
    assert window == (30.0, 60.0)
    assert retry_after_range(window[0], latest=window[1]) == (30, 60)
    assert expected_turn_window(8.0, waiting=waiting, slots_per_second=slots_per_second,
                                pending=0) == (8.0, 60.0)
    assert expected_turn_window(8.0, waiting=waiting, slots_per_second=slots_per_second,
                                pending=0, horizon=240.0) == (8.0, 240.0)
    # A slot wait beyond the horizon is not cut.
    assert expected_turn_window(90.0, waiting=waiting, slots_per_second=slots_per_second,
                                pending=0) == (90.0, 90.0)


def test_with_no_spawn_ended_lately_the_queue_drains_as_the_pending_spawns_end() -> None:
    """Little's law: with no measured rate, the pending spawns end at ``pending`` over what a
    spawn takes, at least as long as the oldest has run plus the slot wait."""
    # A hub's first burst: 64 pending, the oldest 10 s in, the first expected in 5 s; 100
    # refused drain in 100 / (64 / 15 s) = 23.4 s.
    soonest, latest = expected_turn_window(5.0, waiting=100, slots_per_second=0.0, pending=64,
                                           oldest=10.0)
    assert (soonest, latest) == (5.0, pytest.approx(23.4375))
    # Without an age, no spawn is taken as longer than the slot wait: the fastest drain.
    assert expected_turn_window(5.0, waiting=100, slots_per_second=0.0, pending=64) == (
        5.0, pytest.approx(7.8125))
    # During a scale-up (200 admitted, none ending for minutes), 400 waiting: cut to half as
    # long again as the slot wait.
    assert expected_turn_window(80.0, waiting=400, slots_per_second=0.0, pending=200,
                                oldest=50.0) == (80.0, 120.0)
    # A measured rate, however low, is evidence and is used as it is.
    assert expected_turn_window(80.0, waiting=4, slots_per_second=0.1, pending=200,
                                oldest=50.0) == (80.0, 80.0)


def test_a_first_burst_is_told_its_turns_over_a_minute_not_the_same_few_seconds() -> None:
    """A hub's first burst (2026-12-07, 300 at once on Kubernetes, limit 64): no spawn had
    ended and the pending spawns were taken to end all together when the first did, so the
    ~240 refused were told 5-6 s, again and again, while the hub's loop stalled (its loop
    interval p99 over the first 314 s 153 ms, against 83 ms at a static 64). Little's law
    spreads them up to JupyterHub's own 60 s."""
    # 64 pending, the youngest 2 s in (overdue: expected in 1 s), the oldest 4 s in.
    before = expected_turn_window(1.0, waiting=240, slots_per_second=0.0, pending=64)
    now = expected_turn_window(1.0, waiting=240, slots_per_second=0.0, pending=64, oldest=4.0)
    assert retry_after_range(before[0], latest=before[1]) == (5, 6)
    assert now == (1.0, pytest.approx(18.75))
    assert retry_after_range(now[0], latest=now[1]) == (5, 19)
    # Ten seconds later, the spawns still running: a minute, JupyterHub's own latest.
    assert expected_turn_window(7.0, waiting=240, slots_per_second=0.0, pending=64,
                                oldest=14.0) == (7.0, 60.0)


@pytest.mark.parametrize("bad", [-1.0, math.inf, math.nan])
def test_turn_window_refuses_bad_values(bad: float) -> None:
    with pytest.raises(ValueError, match="slots_per_second"):
        expected_turn_window(1.0, waiting=1.0, slots_per_second=bad, pending=1)
    with pytest.raises(ValueError, match="oldest"):
        expected_turn_window(1.0, waiting=1.0, slots_per_second=0.0, pending=1, oldest=bad)


@pytest.mark.parametrize("bad", [-1, 1.5, math.nan, True])
def test_turn_window_refuses_a_pending_count_that_is_not_one(bad: object) -> None:
    with pytest.raises(ValueError, match="pending"):
        expected_turn_window(1.0, waiting=1.0, slots_per_second=1.0, pending=bad)  # type: ignore[arg-type]


def test_retry_range_spreads_a_queue_over_its_window() -> None:
    # The queue above: Retry-After drawn from 1-90 s would bring back 2 users a second,
    # as fast as slots free; the low bound keeps the first 5 s.
    assert retry_after_range(1.0, latest=90.0) == (5, 90)
    assert retry_after_range(100.0, latest=300.0) == (100, 300)
    # A window narrower than the spread: centred on its middle, +-25%.
    assert retry_after_range(100.0, latest=110.0) == (79, 131)
    assert retry_after_range(100.0, latest=100.0) == retry_after_range(100.0) == (75, 125)
    assert retry_after_range(100.0, latest=10_000.0) == (100, 600)


@pytest.mark.parametrize("latest", [99.0, math.nan, math.inf])
def test_retry_range_refuses_a_latest_before_the_wait(latest: float) -> None:
    with pytest.raises(ValueError, match="^latest must"):
        retry_after_range(100.0, latest=latest)


def test_distress_while_the_limit_does_not_bind_holds_it() -> None:
    """A slow tick of a hub with few spawns pending (a database commit, users created in
    bulk) or API 429s for its other requests: admitting fewer spawns would change nothing, so
    nothing is cut; from the moment pending spawns fill 80% of the limit, it is cut."""
    for pending in (0, 1, 51):  # 51 < 0.8 * 64
        for signals in (stall(pending), throttled(pending), calm(pending, failed=9)):
            decision = next_state(initial_state(DEFAULTS), signals, DEFAULTS)
            assert (decision.state.limit, decision.changed) == (64, False)
            assert decision.reason is distress(signals, DEFAULTS)  # still said why it holds
            assert decision.state.calm == 0  # and it is not calm either
    for signals in (stall(pending=52), throttled(pending=52), calm(52, failed=9)):
        assert next_state(initial_state(DEFAULTS), signals, DEFAULTS).state.limit == 44


def test_replay_of_a_ramp_whose_hub_stalled_at_start_and_at_its_peak() -> None:
    """The 1,000-user ramp on Kubernetes of 2026-12-06 (hub log): the benchmark created the
    users in batches at the start, stalling the loop with 1 spawn pending; that cut the limit
    to 44 and kept it there for ten minutes. At the ramp's peak a 1.5 s stall came with 56
    spawns pending: with the limit at 64 they fill 80% of it, and a cut is what the governor
    is for."""
    recorded = (
        [stall(pending=1)] * 3  # users created in bulk
        + [calm(pending=n, finished=n // 4) for n in (5, 12, 20, 30, 36, 40, 43)]
        + [stall(pending=56)]
    )
    decisions = run(initial_state(DEFAULTS), recorded, DEFAULTS)
    assert [d.state.limit for d in decisions] == [64] * 10 + [44]
    assert [d.reason for d in decisions[:3]] == [R.LOOP_STALLED] * 3
    assert decisions[-1].reason is R.LOOP_STALLED and decisions[-1].changed
