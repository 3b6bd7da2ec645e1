"""The governor's thin parts, without a hub: what it reads from the hub's users, how it
learns which spawns finished, the request window, its settings and where it starts.

The real hub is in tests/test_admission_hub.py; the policy in tests/test_admission_policy.py.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from types import SimpleNamespace
from typing import Any

import pytest
from traitlets.config import Config

from hub_resilience import configure
from hub_resilience.hub.admission import (
    AdmissionGovernor,
    LoopLagProbe,
    PendingSpawn,
    RefusedSpawns,
    SpawnTracker,
    pending_spawns,
    start_governor,
)
from hub_resilience.hub.admission_policy import initial_state, retry_after_range
from hub_resilience.hub.failure_limit import counts_toward_failure_limit, forgive_failure
from hub_resilience.hub.request_window import RequestWindow, p90
from hub_resilience.hub.spawn_phases import SpawnOutcome
from hub_resilience.settings import ConfigurationError


@dataclass
class FakeSpawner:
    pending: str | None
    started: datetime | None = None
    ready: bool = False
    waiting_for_node: bool = False
    orm_spawner: Any = field(init=False)

    def __post_init__(self) -> None:
        self.orm_spawner = SimpleNamespace(started=self.started)


def user(*spawners: FakeSpawner) -> Any:
    return SimpleNamespace(spawners={str(i): s for i, s in enumerate(spawners)})


def at(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, timezone.utc)


def test_pending_spawns_are_the_ones_jupyterhub_counts_against_its_limit() -> None:
    spawning = FakeSpawner("spawn", at(100), waiting_for_node=True)
    proxying = FakeSpawner("proxy", at(90))
    stopping = FakeSpawner("stop", at(50))
    running = FakeSpawner(None, at(10), ready=True)
    found = list(pending_spawns([user(spawning, running), user(proxying, stopping)]))
    assert [(p.spawner, p.started, p.waiting_for_node) for p in found] == [
        (spawning, 100.0, True),
        (proxying, 90.0, False),
    ]


def test_the_tracker_learns_which_spawns_finished_how_long_they_took_and_which_failed() -> None:
    tracker = SpawnTracker()
    ok, bad, slow = FakeSpawner("spawn"), FakeSpawner("spawn"), FakeSpawner("spawn")

    def look(*spawners: FakeSpawner) -> list[PendingSpawn]:
        starts = {id(ok): 0.0, id(bad): 5.0, id(slow): 10.0}
        return [PendingSpawn(id(s), starts[id(s)], False, s) for s in spawners]

    assert tracker.update(look(ok, bad, slow), now=12.0) == (0, 0)
    ok.ready = True
    assert tracker.update(look(slow), now=20.0) == (2, 1)  # ok ready, bad gone: failed
    assert list(tracker.durations) == [20.0, 15.0]
    slow.ready = True
    assert tracker.update([], now=70.0) == (1, 0)
    assert list(tracker.durations) == [20.0, 15.0, 60.0]


def test_the_request_window_summarises_and_starts_again_bounded() -> None:
    window = RequestWindow(max_samples=3)
    assert window.drain() == (window.drain())  # nothing: (0, 0, None) each time
    assert window.drain().p90_seconds is None
    for seconds, throttled in [(9.0, False), (0.1, True), (0.2, False), (0.3, True)]:
        window.add(seconds, throttled)
    summary = window.drain()
    # Every request counted; the oldest latency (9 s) no longer among the 3 kept.
    assert (summary.requests, summary.throttled, summary.p90_seconds) == (4, 2, 0.3)
    assert window.drain().requests == 0
    assert p90([float(i) for i in range(1, 11)]) == 9.0 and p90([]) is None


def test_the_request_window_remembers_the_last_answer_across_drains() -> None:
    window = RequestWindow()
    before = time.monotonic()
    window.add(3.0, False, answered=False)  # a timeout: no answer
    assert not window.answered_since(before)
    window.add(0.2, True)  # a 429 is an answer
    window.drain()
    assert window.answered_since(before)
    assert not window.answered_since(time.monotonic() + 1)


def test_capacity_and_profile_failures_do_not_count_toward_the_limit() -> None:
    counted = {o for o in SpawnOutcome if counts_toward_failure_limit(o)}
    assert SpawnOutcome.UNSCHEDULABLE not in counted
    assert SpawnOutcome.K8S_THROTTLED not in counted
    assert SpawnOutcome.QOS_REFUSED not in counted
    assert {SpawnOutcome.K8S_API_ERROR, SpawnOutcome.ERROR, SpawnOutcome.HTTP_TIMEOUT} <= counted
    # An API server that answered other requests meanwhile was reachable: not counted.
    answered = {o for o in SpawnOutcome if counts_toward_failure_limit(o, api_answered=True)}
    assert answered == counted - {SpawnOutcome.K8S_API_ERROR}
    settings: dict[str, Any] = {}
    forgive_failure(settings)  # before JupyterHub's first +1: it ends at 0
    assert settings == {"failure_count": -1}


def test_a_configured_limit_below_the_floor_lowers_the_floor_and_0_starts_at_the_ceiling() -> None:
    governor = AdmissionGovernor()
    low = governor.policy_settings(1)
    assert (low.floor, low.start, low.ceiling) == (1, 1, 200)
    unlimited = governor.policy_settings(0)
    assert (unlimited.floor, unlimited.start) == (8, 200)


def test_a_bad_governor_setting_is_refused_by_configure_naming_it() -> None:
    c = Config()
    c.JupyterHub.spawner_class = "simple"
    c.AdmissionGovernor.ceiling = 4  # below the floor (8)
    with pytest.raises(ConfigurationError, match="ceiling"):
        configure(c, spawner_class=None, stopped_handler=False, cull=False)
    c.AdmissionGovernor.ceiling = 200
    c.AdmissionGovernor.retry_after_max = 2  # below retry_after_min (5)
    with pytest.raises(ConfigurationError, match="high"):
        configure(c, spawner_class=None, stopped_handler=False, cull=False)
    with pytest.raises(ConfigurationError, match="interval"):
        c.AdmissionGovernor.retry_after_max = 600
        c.AdmissionGovernor.interval = 0
        configure(c, spawner_class=None, stopped_handler=False, cull=False)
    with pytest.raises(ConfigurationError, match="scale_up_seconds"):
        c.AdmissionGovernor.interval = 2
        c.AdmissionGovernor.scale_up_seconds = -120
        configure(c, spawner_class=None, stopped_handler=False, cull=False)


async def test_outside_a_hub_nothing_is_started() -> None:
    """The sidecar and check-config load the hub's config too: there is no hub to govern."""
    assert start_governor(Config()) is False
    assert await asyncio.to_thread(start_governor, Config()) is False  # no running loop


def test_a_decision_writes_what_the_hub_enforces_even_for_a_spawn_newer_than_the_look() -> None:
    """A spawn can start between the governor taking the time and reading the users: its
    age is 0, not negative (which once made the decision fail)."""
    governor = AdmissionGovernor()
    policy = governor.policy_settings(4)
    settings: dict[str, Any] = {"concurrent_spawn_limit": 4, "spawn_throttle_retry_range": (30, 60)}
    newer = FakeSpawner("spawn", at(time.time() + 5))
    state = governor._decide(
        settings,
        initial_state(policy),
        policy,
        {1: user(newer)},
        RequestWindow(),
        LoopLagProbe(),
        SpawnTracker(),
    )
    assert settings["concurrent_spawn_limit"] == state.limit == 4
    # No spawn has finished yet: the new one is expected in half as long again as it has
    # run, at least a second, so the range is the lowest the governor tells (not 30 s).
    assert settings["spawn_throttle_retry_range"] == retry_after_range(1.0) == (5, 6)


def test_the_stated_scale_up_is_what_the_hub_tells_before_one_is_measured() -> None:
    """A spawn that has waited 40 s for a node, none measured yet: with scale_up_seconds
    120, the 429 says about 80 s, not the 20 s of "half as long again"."""
    governor = AdmissionGovernor(scale_up_seconds=120.0)
    policy = governor.policy_settings(4)
    settings: dict[str, Any] = {"concurrent_spawn_limit": 4, "spawn_throttle_retry_range": (30, 60)}
    waiting = FakeSpawner("spawn", at(time.time() - 40), waiting_for_node=True)
    governor._decide(settings, initial_state(policy), policy, {1: user(waiting)},
                     RequestWindow(), LoopLagProbe(), SpawnTracker())
    low, high = settings["spawn_throttle_retry_range"]
    assert 60 <= low <= 80 <= high <= 100


@dataclass
class CrowdOfRefusals:
    """Stands in for JupyterHub's refusal counter: ``per_look`` refused since each look,
    ``waiting`` within any window asked about."""

    per_look: float = 60.0
    waiting: float = 1500.0

    def look(self, now: float) -> float:
        return self.per_look

    def within(self, now: float, seconds: float) -> float:
        return self.waiting


def test_a_first_burst_s_queue_is_told_turns_as_long_as_its_spawns_take() -> None:
    """8 spawns 4 s in, none ended, 40 users refused: the first slot in 2 s (half as long
    again), and the queue drains at 8 spawns per 4 + 2 s, so the last turn is 30 s away, not
    the 10 s of taking all 8 to end with the first."""
    governor = AdmissionGovernor()
    governor._refused = CrowdOfRefusals(per_look=0.0, waiting=40.0)  # type: ignore[assignment]
    policy = governor.policy_settings(8)
    settings: dict[str, Any] = {"concurrent_spawn_limit": 8, "spawn_throttle_retry_range": (30, 60)}
    spawns = {i: user(FakeSpawner("spawn", at(time.time() - 4))) for i in range(8)}
    governor._decide(settings, initial_state(policy), policy, spawns, RequestWindow(),
                     LoopLagProbe(), SpawnTracker())
    assert settings["spawn_throttle_retry_range"] == retry_after_range(2.0, latest=30.0) == (5, 30)


def test_a_stall_from_refusals_holds_the_limit_and_tells_the_refused_a_later_turn(
    caplog: pytest.LogCaptureFixture,
) -> None:
    governor = AdmissionGovernor()
    governor._refused = CrowdOfRefusals()  # type: ignore[assignment]
    policy = governor.policy_settings(4)
    settings: dict[str, Any] = {"concurrent_spawn_limit": 4, "spawn_throttle_retry_range": (30, 60)}
    spawns = {i: user(FakeSpawner("spawn", at(time.time() - 10))) for i in range(4)}
    stalled = LoopLagProbe()
    stalled._lags = [1.0]
    caplog.set_level("INFO")
    # The refused of the interval before can be coming back (a burst's first refusals cannot).
    before = replace(initial_state(policy), refused_before=60)
    state = governor._decide(
        settings, before, policy, spawns, RequestWindow(), stalled, SpawnTracker()
    )
    assert (state.limit, state.horizon) == (4, 120.0)
    assert settings["concurrent_spawn_limit"] == 4
    # 4 spawns of 10 s, none finished: the next slot in 5 s; 1,500 waiting drain in
    # 5,625 s at 4 / (10 + 5 s) a second, told up to the horizon.
    assert settings["spawn_throttle_retry_range"] == retry_after_range(5.0, latest=120.0)
    [line] = [r.getMessage() for r in caplog.records]
    assert line.startswith(
        "Admission governor: concurrent_spawn_limit held at 4, the refused told to come within "
        "120s at latest (refusals: loop lag 1.00s"
    )
    assert line.endswith("(0 waiting for a node), 0/0 finished spawns failed, 60 refused)")


def test_a_capacity_hold_is_logged_once_when_it_begins(caplog: pytest.LogCaptureFixture) -> None:
    """Holding is not a change, but an operator asking why the limit does not rise needs to
    see it: one line when most pending spawns start waiting for nodes, not one per interval.
    Only a cluster that cannot grow holds (the default never does)."""
    governor = AdmissionGovernor(capacity_wait_threshold=0.5)
    policy = governor.policy_settings(8)
    settings: dict[str, Any] = {"concurrent_spawn_limit": 8, "spawn_throttle_retry_range": (30, 60)}
    waiting = {i: user(FakeSpawner("spawn", at(time.time()), waiting_for_node=True))
               for i in range(8)}
    state, tracker = initial_state(policy), SpawnTracker()
    caplog.set_level("INFO")
    for _ in range(3):
        state = governor._decide(
            settings, state, policy, waiting, RequestWindow(), LoopLagProbe(), tracker
        )
    held = [r.getMessage() for r in caplog.records if "held at" in r.getMessage()]
    assert held == [
        "Admission governor: concurrent_spawn_limit held at 8 (capacity_wait: loop lag 0.00s, "
        "Kubernetes API p90 none with 0/0 throttled, 8 pending (8 waiting for a node), 0/0 "
        "finished spawns failed, 0 refused)"
    ]
    assert settings["concurrent_spawn_limit"] == 8


def test_slots_per_second_counts_spawns_ended_within_the_window() -> None:
    tracker = SpawnTracker(rate_window=10.0)
    spawns = [PendingSpawn(key=i, started=0.0, waiting_for_node=False,
                           spawner=FakeSpawner("spawn")) for i in range(6)]
    tracker.update(spawns, now=100.0)
    assert tracker.slots_per_second(100.0) == 0.0
    tracker.update(spawns[2:], now=102.0)  # two ended in the first 2 s
    assert tracker.slots_per_second(102.0) == pytest.approx(1.0)
    tracker.update([], now=108.0)  # four more
    assert tracker.slots_per_second(108.0) == pytest.approx(6 / 8)
    assert tracker.slots_per_second(113.0) == pytest.approx(4 / 10)  # the first two aged out


def test_refusals_are_read_from_jupyterhub_s_own_metric_on_this_lane_s_version() -> None:
    """JupyterHub 5.5 records a refused spawn with status "throttled", 6.x with status
    "failure" and reason "throttled": the governor counts both, and nothing else."""
    from jupyterhub import metrics

    statuses = {s.value for s in metrics.ServerSpawnStatus}
    if "throttled" in statuses:  # JupyterHub 5.5 (z2jh 4.4.0)
        throttled = metrics.SERVER_SPAWN_DURATION_SECONDS.labels(status="throttled")
        other = metrics.SERVER_SPAWN_DURATION_SECONDS.labels(status="failure")
    else:
        throttled = metrics.SERVER_SPAWN_DURATION_SECONDS.labels(
            status="failure", reason="throttled"
        )
        other = metrics.SERVER_SPAWN_DURATION_SECONDS.labels(
            status="failure", reason="too-many-users"
        )
    refused = RefusedSpawns()
    refused.look(10.0)  # the first look only takes the count
    for _ in range(6):
        throttled.observe(0.01)
    other.observe(0.01)
    refused.look(12.0)
    throttled.observe(0.01)
    refused.look(14.0)
    assert refused.within(14.0, 30.0) == 7
    assert refused.within(14.0, 1.0) == 1  # only the last look's
    assert refused.within(60.0, 30.0) == 0  # long ago
