"""The admission governor: the hub's concurrent spawn limit and its Retry-After, live.

Why: a static ``concurrent_spawn_limit`` is either too low (users wait behind idle capacity)
or too high (the hub's loop stalls, the API server throttles, spawns time out), and the 429
says "try again in 30-60 s" whatever the wait really is. The decisions are pure
(:mod:`hub_resilience.hub.admission_policy`); this adapter samples the hub, writes the two
settings JupyterHub's handlers read on every request, logs each change once and exports the
metrics. docs/admission.md says how it decides and when to switch it off.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Coroutine, Iterable, Iterator, MutableMapping
from dataclasses import dataclass
from datetime import timezone
from typing import Any

from jupyterhub.metrics import SERVER_SPAWN_DURATION_SECONDS
from traitlets import Bunch, Float, Integer, TraitError, validate
from traitlets.config import LoggingConfigurable

from hub_resilience.hub.admission_policy import (
    AdmissionDecision,
    AdmissionReason,
    AdmissionSettings,
    AdmissionSignals,
    AdmissionState,
    expected_slot_wait,
    expected_turn_window,
    initial_state,
    next_state,
    retry_after_range,
)
from hub_resilience.hub.request_window import RECENT_K8S_REQUESTS, RequestWindow
from hub_resilience.hub.running_hub import handler_settings, start_in_hub

#: The settings JupyterHub's handlers read on every spawn request.
LIMIT_SETTING = "concurrent_spawn_limit"
RETRY_RANGE_SETTING = "spawn_throttle_retry_range"

#: The label value of a spawn JupyterHub refused at its concurrent spawn limit.
THROTTLED = "throttled"

#: How often the loop probe wakes up to measure the hub's event-loop lag (s).
PROBE_INTERVAL = 0.1

#: The reason that holds the limit where it is, logged when a hold begins.
HELD = AdmissionReason.CAPACITY_WAIT

#: The policy's defaults, which are the AdmissionGovernor options' defaults.
DEFAULTS = AdmissionSettings()
#: The AdmissionGovernor options passed to the policy as they are (floor and start are not:
#: the configured limit may lower the floor and sets the start).
POLICY_OPTIONS = (
    "interval",
    "ceiling",
    "increase",
    "decrease",
    "calm_intervals",
    "cooldown_intervals",
    "loop_lag_threshold",
    "k8s_latency_threshold",
    "k8s_throttled_threshold",
    "capacity_wait_threshold",
    "failure_threshold",
)


@dataclass(frozen=True)
class PendingSpawn:
    """One spawn the hub counts against its limit, as the governor saw it."""

    key: int  # id() of the spawner: stable while the hub holds it
    started: float  # Unix time the hub began the spawn
    waiting_for_node: bool
    spawner: Any

    def age(self, now: float) -> float:
        """Seconds it has run at ``now``; 0 for a spawn begun after ``now`` was read."""
        return max(0.0, now - self.started)


class SpawnTracker:
    """Which spawns were pending at the last look, so the next one learns which finished,
    how long they took (the slot they held), whether they failed, and how fast slots free."""

    def __init__(self, history: int = 200, rate_window: float = 60.0) -> None:
        self._pending: dict[int, PendingSpawn] = {}
        self.durations: deque[float] = deque(maxlen=history)
        self.rate_window = rate_window
        self._ended: deque[float] = deque()  # when spawns ended, within rate_window
        self._first_look: float | None = None

    def update(self, pending: Iterable[PendingSpawn], now: float) -> tuple[int, int]:
        """Take a new look; returns (finished, failed) since the last one."""
        if self._first_look is None:
            self._first_look = now
        current = {spawn.key: spawn for spawn in pending}
        finished = failed = 0
        for key, spawn in self._pending.items():
            if key in current:
                continue
            finished += 1
            self.durations.append(spawn.age(now))
            self._ended.append(now)
            if not getattr(spawn.spawner, "ready", False):
                failed += 1
        self._pending = current
        return finished, failed

    def slots_per_second(self, now: float) -> float:
        """Spawns ended per second over the last ``rate_window`` seconds (or since the
        first look, if that is more recent): how fast the queue of refused users drains."""
        while self._ended and self._ended[0] < now - self.rate_window:
            self._ended.popleft()
        if self._first_look is None:
            return 0.0
        span = min(self.rate_window, now - self._first_look)
        return len(self._ended) / span if span > 0 else 0.0


class RefusedSpawns:
    """Spawns the hub refused at its concurrent spawn limit, from JupyterHub's own
    spawn-duration metric (its status is "throttled" in JupyterHub 5.5, its reason in 6.x),
    counted per look so the governor can ask how many came within a recent window."""

    def __init__(self, history: float = 3600.0) -> None:
        self.history = history
        self._seen: float | None = None
        self._looks: deque[tuple[float, float]] = deque()  # (time, refused since the last)

    @staticmethod
    def total() -> float:
        count = 0.0
        for family in SERVER_SPAWN_DURATION_SECONDS.collect():
            for sample in family.samples:
                labels = sample.labels
                throttled = THROTTLED in (labels.get("status"), labels.get("reason"))
                if sample.name.endswith("_count") and throttled:
                    count += sample.value
        return count

    def look(self, now: float) -> float:
        """Count the refusals since the last look (none are counted at the first); returns
        how many."""
        total = self.total()
        seen, self._seen = self._seen, total
        since = 0.0 if seen is None else max(0.0, total - seen)
        if seen is not None:
            self._looks.append((now, since))
        while self._looks and self._looks[0][0] < now - self.history:
            self._looks.popleft()
        return since

    def within(self, now: float, seconds: float) -> float:
        """Refusals counted by the looks of the last ``seconds``."""
        return sum(count for at, count in self._looks if at >= now - seconds)


def pending_spawns(users: Iterable[Any]) -> Iterator[PendingSpawn]:
    """The spawns JupyterHub counts against concurrent_spawn_limit (pending spawn or proxy),
    from the hub's users (as ``UserDict.count_active_users`` counts them)."""
    for user in users:
        for spawner in user.spawners.values():
            if spawner.pending not in ("spawn", "proxy"):
                continue
            started = getattr(getattr(spawner, "orm_spawner", None), "started", None)
            if started is not None and started.tzinfo is None:  # read back from the database
                started = started.replace(tzinfo=timezone.utc)
            yield PendingSpawn(
                key=id(spawner),
                started=started.timestamp() if started is not None else time.time(),
                waiting_for_node=bool(getattr(spawner, "waiting_for_node", False)),
                spawner=spawner,
            )


class LoopLagProbe:
    """How late the hub's event loop ran since the last drain: the 90th percentile of how
    late a short sleep woke up. JupyterHub measures the same for its own metric; the
    governor needs the last few seconds, not a histogram since start, and a loop that is
    late most of the time, not one slow tick (a database commit, a garbage collection)."""

    def __init__(self, interval: float = PROBE_INTERVAL) -> None:
        self.interval = interval
        self._lags: list[float] = []

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(self.interval)
            self._lags.append(max(0.0, loop.time() - before - self.interval))

    def drain(self) -> float:
        lags, self._lags = sorted(self._lags), []
        if not lags:
            return 0.0
        return lags[math.ceil(0.9 * len(lags)) - 1]


class AdmissionGovernor(LoggingConfigurable):
    """Adjusts ``concurrent_spawn_limit`` between a floor and a ceiling from what the hub
    measures, and ``spawn_throttle_retry_range`` from the expected wait for a free slot."""

    interval = Float(2.0, config=True, help="Seconds between two decisions of the governor.")
    floor = Integer(
        DEFAULTS.floor, config=True, help="The lowest concurrent spawn limit it sets (>= 1)."
    )
    ceiling = Integer(
        DEFAULTS.ceiling,
        config=True,
        help="""
        The highest concurrent spawn limit it sets. It starts at the configured
        JupyterHub.concurrent_spawn_limit (the ceiling when that is 0, unlimited), kept within
        [floor, ceiling].
        """,
    )
    increase = Integer(
        DEFAULTS.increase, config=True, help="Spawns added to the limit after calm intervals."
    )
    decrease = Float(
        DEFAULTS.decrease, config=True, help="Factor the limit is multiplied by on distress."
    )
    calm_intervals = Integer(
        DEFAULTS.calm_intervals,
        config=True,
        help="Calm intervals in a row before the limit may rise (hysteresis).",
    )
    cooldown_intervals = Integer(
        DEFAULTS.cooldown_intervals,
        config=True,
        help="Intervals after a decrease during which it does not decrease again.",
    )
    loop_lag_threshold = Float(
        DEFAULTS.loop_lag_threshold,
        config=True,
        help="Hub event-loop lag (s, its 90th percentile over an interval) that is distress.",
    )
    k8s_latency_threshold = Float(
        DEFAULTS.k8s_latency_threshold,
        config=True,
        help="p90 Kubernetes API latency (s) above which the API is in distress.",
    )
    k8s_throttled_threshold = Float(
        DEFAULTS.k8s_throttled_threshold,
        config=True,
        help="Share of Kubernetes API requests answered 429 that is distress.",
    )
    capacity_wait_threshold = Float(
        DEFAULTS.capacity_wait_threshold,
        config=True,
        help="""
        Share of pending spawns waiting for a node (scheduling, scale-up) above which the
        limit is held: not raised, and not cut either. 1 (the default) never holds it, so a
        cluster autoscaler, which sizes its scale-up by the pods it sees pending, sees the
        whole burst; 0.5 suits a cluster that cannot grow.
        """,
    )
    failure_threshold = Float(
        DEFAULTS.failure_threshold,
        config=True,
        help="Share of finished spawns that failed that is distress.",
    )
    scale_up_seconds = Float(
        0.0,
        config=True,
        help="""
        How long a spawn waiting for a node takes on this cluster (s): from the pod's
        creation to its server ready, a node scale-up included. It is what the Retry-After
        says while the first scale-up of the hub's life is under way, before the hub has
        measured one; 0 (the default): unknown, such a spawn is expected in half as long
        again as it has waited.
        """,
    )
    retry_after_min = Float(
        5.0, config=True, help="The shortest Retry-After (s) the hub's 429 suggests."
    )
    retry_after_max = Float(
        600.0, config=True, help="The longest Retry-After (s) the hub's 429 suggests."
    )

    @validate("interval")
    def _positive_interval(self, proposal: Bunch) -> float:
        if not (math.isfinite(proposal.value) and proposal.value > 0):
            raise TraitError(f"AdmissionGovernor.interval must be > 0 s, got {proposal.value!r}")
        return proposal.value

    @validate("scale_up_seconds")
    def _seconds_or_unknown(self, proposal: Bunch) -> float:
        if not (math.isfinite(proposal.value) and proposal.value >= 0):
            raise TraitError(
                f"AdmissionGovernor.scale_up_seconds must be >= 0 s (0: unknown), "
                f"got {proposal.value!r}"
            )
        return proposal.value

    #: Whether it sets the 429's Retry-After (False when spawn_throttle_retry_range is set).
    honest_retry_after = True
    #: The reason of the last decision (a hold is logged when it begins).
    _last_reason = AdmissionReason.START

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._refused = RefusedSpawns()

    def policy_settings(self, configured_limit: int = 0) -> AdmissionSettings:
        """The policy's settings, starting from ``configured_limit`` (0: no limit; a limit
        below the floor lowers the floor to it); a ValueError names the bad option."""
        start = configured_limit if configured_limit > 0 else self.ceiling
        try:
            if self.ceiling < self.floor:
                raise ValueError(f"ceiling={self.ceiling} must be >= floor ({self.floor})")
            settings = AdmissionSettings(
                floor=min(self.floor, start),
                start=start,
                **{name: getattr(self, name) for name in POLICY_OPTIONS},
            )
            retry_after_range(0.0, low=self.retry_after_min, high=self.retry_after_max)
        except ValueError as e:
            raise ValueError(f"AdmissionGovernor: {e}") from None
        return settings

    async def run(self, users: Any, requests: RequestWindow = RECENT_K8S_REQUESTS) -> None:
        """Govern until cancelled: ``users`` is the hub's UserDict."""
        settings = await wait_for_handler_settings()
        configured = settings.get(LIMIT_SETTING, 0) or 0
        policy = self.policy_settings(configured)
        state = initial_state(policy)
        self.log.info(
            "Admission governor: concurrent_spawn_limit %d (configured %s; floor %d, ceiling "
            "%d), decided every %gs",
            state.limit,
            configured or "unlimited",
            policy.floor,
            policy.ceiling,
            self.interval,
        )
        probe = LoopLagProbe()
        probing = asyncio.ensure_future(probe.run())
        tracker = SpawnTracker()
        try:
            self._apply(settings, state, None, tracker, [], time.time(), policy)
            while True:
                await asyncio.sleep(self.interval)
                try:
                    state = self._decide(settings, state, policy, users, requests, probe, tracker)
                except Exception:  # a bug here must not end the governor: try next time
                    self.log.exception(
                        "Admission governor: a decision failed; the limit stays %d", state.limit
                    )
        finally:
            probing.cancel()

    def _decide(
        self,
        settings: MutableMapping[str, Any],
        state: AdmissionState,
        policy: AdmissionSettings,
        users: Any,
        requests: RequestWindow,
        probe: LoopLagProbe,
        tracker: SpawnTracker,
    ) -> AdmissionState:
        """One look at the hub and one decision; the new state."""
        now = time.time()
        pending = list(pending_spawns(users.values()))
        finished, failed = tracker.update(pending, now)
        refused = self._refused.look(now)
        k8s = requests.drain()
        signals = AdmissionSignals(
            loop_lag=probe.drain(),
            k8s_latency=k8s.p90_seconds,
            k8s_requests=k8s.requests,
            k8s_throttled=k8s.throttled,
            pending=len(pending),
            waiting_for_capacity=sum(p.waiting_for_node for p in pending),
            finished=finished,
            failed=failed,
            refused=round(refused),
        )
        decision = next_state(state, signals, policy)
        self._apply(settings, decision.state, decision, tracker, pending, now, policy, signals)
        horizon = ""
        if decision.state.horizon != state.horizon:
            horizon = f", the refused told to come within {decision.state.horizon:.0f}s at latest"
        if decision.changed:  # logged once it is what the hub enforces
            self.log.info(
                "Admission governor: concurrent_spawn_limit %d -> %d%s (%s: %s)",
                state.limit,
                decision.state.limit,
                horizon,
                decision.reason,
                describe(signals),
            )
        elif horizon or (decision.reason is HELD and self._last_reason is not HELD):
            self.log.info(  # a new horizon, or a capacity wait once per wait
                "Admission governor: concurrent_spawn_limit held at %d%s (%s: %s)",
                decision.state.limit,
                horizon,
                decision.reason,
                describe(signals),
            )
        self._last_reason = decision.reason
        return decision.state

    def _apply(
        self,
        settings: MutableMapping[str, Any],
        state: AdmissionState,
        decision: AdmissionDecision | None,
        tracker: SpawnTracker,
        pending: list[PendingSpawn],
        now: float,
        policy: AdmissionSettings,
        signals: AdmissionSignals | None = None,
    ) -> None:
        ages = [(p.age(now), p.waiting_for_node) for p in pending]
        slot_wait = expected_slot_wait(
            [age for age, waiting in ages if not waiting],
            list(tracker.durations),
            waiting_ages=[age for age, waiting in ages if waiting],
            scale_up=self.scale_up_seconds,
        )
        told = settings.get(RETRY_RANGE_SETTING) or (0, 0)
        soonest, latest = expected_turn_window(
            slot_wait,
            waiting=self._refused.within(now, told[1]),  # each retried within what it was told
            slots_per_second=tracker.slots_per_second(now),
            pending=len(pending),
            oldest=max((age for age, _ in ages), default=0.0),
            horizon=state.horizon,
        )
        retry_range = retry_after_range(
            soonest, latest=latest, low=self.retry_after_min, high=self.retry_after_max
        )
        from hub_resilience.hub.metrics import record_admission  # only in the hub process

        settings[LIMIT_SETTING] = state.limit
        if self.honest_retry_after:
            settings[RETRY_RANGE_SETTING] = retry_range
        else:
            retry_range = tuple(settings[RETRY_RANGE_SETTING])
        record_admission(
            limit=state.limit,
            floor=policy.floor,
            ceiling=policy.ceiling,
            reason=None if decision is None or not decision.changed else decision.reason,
            retry_range=retry_range,
            signals=signals,
        )


def describe(signals: AdmissionSignals) -> str:
    """The signals of one decision, for its log line."""
    latency = "none" if signals.k8s_latency is None else f"{signals.k8s_latency:.2f}s"
    return (
        f"loop lag {signals.loop_lag:.2f}s, Kubernetes API p90 {latency} with "
        f"{signals.k8s_throttled}/{signals.k8s_requests} throttled, {signals.pending} pending "
        f"({signals.waiting_for_capacity} waiting for a node), {signals.failed}/"
        f"{signals.finished} finished spawns failed, {signals.refused} refused"
    )


async def wait_for_handler_settings(poll: float = 0.5) -> MutableMapping[str, Any]:
    """The hub's handler settings, once its tornado application exists."""
    while True:
        settings = handler_settings()
        if settings is not None:
            return settings
        await asyncio.sleep(poll)


def start_governor(config: Any, *, honest_retry_after: bool = True) -> bool:
    """Start the governor in the running hub's event loop (configure() calls this while the
    hub loads its config, inside that loop); False, and nothing started, outside a hub (the
    sidecar and check-config load the same config) or when it runs already."""

    def govern(app: Any) -> Coroutine[Any, Any, None]:
        # The hub's final config: hub.config values may follow the configure() call.
        governor = AdmissionGovernor(parent=app)
        governor.honest_retry_after = honest_retry_after
        return governor.run(app.users)

    return start_in_hub("Admission governor", govern, then="the hub keeps its last limit")
