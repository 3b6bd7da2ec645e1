"""A live ``concurrent_spawn_limit``: AIMD between a floor and a ceiling, and an honest
Retry-After for the 429 the hub sends when the limit is reached.

Why: JupyterHub's limit is a constant (z2jh: 64). Too low, and a burst of users queues
behind an idle cluster; too high, and the hub's event loop, the Kubernetes API or the
autoscaler drowns. The admission governor in the hub calls :func:`next_state` once per
control interval with what it measured; everything here is pure arithmetic, so the policy
can be replayed and tested exhaustively. Time is always passed in.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TypeGuard

from hub_resilience.labels import LabelEnum

#: Tolerance for float products meant to be whole (``0.7 * 90`` is ``62.99999999999999``).
_EPSILON = 1e-9
#: A spawn that has outlived every recent spawn is expected to last this share of its age
#: again. Half, not as long again: a scale-up ends, and a user told too early costs one 429
#: where one told too late leaves a slot idle (docs/admission.md has the measurements).
_OVERDUE_SHARE = 0.5
_OVERDUE_MIN = 1.0
#: Failure shares from fewer finished spawns are noise.
_MIN_FINISHED = 3
#: The latest turn a refused user is told is at most this many times the wait for the next
#: slot, or the horizon if that is later: JupyterHub's own latest Retry-After (60 s), longer
#: while refusals load the hub (:func:`next_state`). An overestimate leaves slots idle while
#: the users who would fill them stay away.
TURN_STRETCH = 1.5
TURN_HORIZON = 60.0
TURN_HORIZON_MAX = 600.0


class AdmissionReason(LabelEnum):
    """Why the limit moved (or did not); values are metric label values, fixed set."""

    START = "start"  # initial limit
    ALL_WELL = "all_well"  # additive increase
    LOOP_STALLED = "loop_stalled"  # hub event loop lag above threshold
    K8S_SLOW = "k8s_slow"  # Kubernetes API latency above threshold
    K8S_THROTTLED = "k8s_throttled"  # share of Kubernetes API requests answered 429 too high
    CAPACITY_WAIT = "capacity_wait"  # most admitted spawns wait for a node: held
    REFUSALS = "refusals"  # loop stalled while refusals outnumber pending spawns: held
    FAILURES = "failures"  # share of finished spawns that failed above threshold
    HOLD = "hold"  # no change: not calm long enough, limit not binding, or cooling down


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_count(value: object) -> TypeGuard[int]:
    return _is_int(value) and value >= 0


def _is_number(value: object) -> TypeGuard[float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_seconds(value: object) -> TypeGuard[float]:
    return _is_number(value) and math.isfinite(value) and value >= 0


def _check(owner: object, checks: dict[str, tuple[bool, str]]) -> None:
    for name, (ok, allowed) in checks.items():
        if not ok:
            raise ValueError(
                f"{type(owner).__name__}.{name}={getattr(owner, name)!r} is out of range "
                f"({allowed})"
            )


@dataclass(frozen=True)
class AdmissionSignals:
    """What the hub measured over the last control interval."""

    loop_lag: float
    """Seconds: the 90th percentile of the hub event-loop lag in the interval."""
    k8s_latency: float | None
    """Seconds: p90 Kubernetes API request latency in the interval; None without requests."""
    k8s_requests: int
    """Kubernetes API requests finished in the interval."""
    k8s_throttled: int
    """Of those, answered 429."""
    pending: int
    """Spawns pending right now (admitted, not yet ready)."""
    waiting_for_capacity: int
    """Of those, pods waiting to be scheduled (no node yet / scale-up)."""
    finished: int
    """Spawns that finished (ready or failed) in the interval."""
    failed: int
    """Of those, failed."""
    refused: int = 0
    """Spawn requests the hub refused at its limit (429) in the interval."""

    def __post_init__(self) -> None:
        # Checked in order, so a bad total is reported before the part that exceeds it.
        requests_ok = _is_count(self.k8s_requests)
        pending_ok = _is_count(self.pending)
        finished_ok = _is_count(self.finished)
        _check(
            self,
            {
                "loop_lag": (_is_seconds(self.loop_lag), "finite seconds >= 0"),
                "k8s_latency": (
                    self.k8s_latency is None or _is_seconds(self.k8s_latency),
                    "None or finite seconds >= 0",
                ),
                "k8s_requests": (requests_ok, "whole number >= 0"),
                "k8s_throttled": (
                    _is_count(self.k8s_throttled) and self.k8s_throttled <= self.k8s_requests,
                    "whole number, 0 <= k8s_throttled <= k8s_requests",
                ),
                "pending": (pending_ok, "whole number >= 0"),
                "waiting_for_capacity": (
                    _is_count(self.waiting_for_capacity)
                    and self.waiting_for_capacity <= self.pending,
                    "whole number, 0 <= waiting_for_capacity <= pending",
                ),
                "finished": (finished_ok, "whole number >= 0"),
                "failed": (
                    _is_count(self.failed) and self.failed <= self.finished,
                    "whole number, 0 <= failed <= finished",
                ),
                "refused": (_is_count(self.refused), "whole number >= 0"),
            },
        )


@dataclass(frozen=True)
class AdmissionSettings:
    """Bounds, steps and distress thresholds of the governor (z2jh's 64 as the start)."""

    floor: int = 8
    """Never below this limit (>= 1)."""
    ceiling: int = 200
    """Never above this limit (>= floor)."""
    start: int = 64
    """Initial limit (>= 1), clamped into [floor, ceiling]."""
    increase: int = 4
    """Additive step (>= 1)."""
    decrease: float = 0.7
    """Multiplicative factor on distress, in (0, 1)."""
    interval: float = 2.0
    """Seconds between two decisions (> 0): a stretched horizon is kept that long without a
    stall before it halves."""
    calm_intervals: int = 2
    """Consecutive calm intervals needed before an increase (hysteresis, >= 1)."""
    cooldown_intervals: int = 2
    """After a decrease, this many intervals with no further decrease (>= 0)."""
    binding_share: float = 0.8
    """The limit binds while pending >= binding_share * limit, in (0, 1]. Only a binding
    limit is raised (or it drifts to the ceiling while nobody tests it) and only a binding
    limit is cut (one that holds nobody back is not what loads the hub)."""
    loop_lag_threshold: float = 0.25
    """Seconds of hub event-loop lag above which the hub is stalled (> 0)."""
    k8s_latency_threshold: float = 2.0
    """Seconds of p90 Kubernetes API latency above which the API server is slow (> 0)."""
    k8s_throttled_threshold: float = 0.1
    """Share of Kubernetes API requests answered 429 above which it is throttling, in [0, 1]."""
    capacity_wait_threshold: float = 1.0
    """Share of pending spawns waiting for a node above which the limit is held (neither
    raised nor cut), in [0, 1]; considered only when pending >= floor. The default, 1, never
    holds it: a cluster autoscaler sizes its scale-up by the pods it sees pending, so a limit
    that keeps rising while pods wait for nodes gets the whole burst its nodes at once. A
    cluster that cannot grow wants a hold (0.5): spawns admitted there wait for someone
    else's server to stop."""
    failure_threshold: float = 0.5
    """Share of finished spawns that failed above which spawning is in trouble, in [0, 1];
    considered only when at least 3 spawns finished."""

    def __post_init__(self) -> None:
        def whole(value: object, least: int) -> bool:
            return _is_int(value) and value >= least

        def share(value: object, *, open_low: bool = False) -> bool:
            if not _is_number(value):
                return False
            return (0 < value if open_low else 0 <= value) and value <= 1

        def positive_seconds(value: object) -> bool:
            return _is_seconds(value) and value > 0

        floor_ok = whole(self.floor, 1)
        _check(
            self,
            {
                "floor": (floor_ok, "whole number >= 1"),
                "ceiling": (whole(self.ceiling, self.floor), "whole number >= floor"),
                "start": (whole(self.start, 1), "whole number >= 1"),
                "increase": (whole(self.increase, 1), "whole number >= 1"),
                "decrease": (
                    _is_number(self.decrease) and 0 < self.decrease < 1,
                    "0 < decrease < 1",
                ),
                "interval": (positive_seconds(self.interval), "finite seconds > 0"),
                "calm_intervals": (whole(self.calm_intervals, 1), "whole number >= 1"),
                "cooldown_intervals": (whole(self.cooldown_intervals, 0), "whole number >= 0"),
                "binding_share": (share(self.binding_share, open_low=True), "0 < share <= 1"),
                "loop_lag_threshold": (
                    positive_seconds(self.loop_lag_threshold),
                    "finite seconds > 0",
                ),
                "k8s_latency_threshold": (
                    positive_seconds(self.k8s_latency_threshold),
                    "finite seconds > 0",
                ),
                "k8s_throttled_threshold": (
                    share(self.k8s_throttled_threshold),
                    "0 <= share <= 1",
                ),
                "capacity_wait_threshold": (
                    share(self.capacity_wait_threshold),
                    "0 <= share <= 1",
                ),
                "failure_threshold": (share(self.failure_threshold), "0 <= share <= 1"),
            },
        )

    def clamp(self, limit: int) -> int:
        """``limit`` moved into [floor, ceiling]."""
        return max(self.floor, min(self.ceiling, limit))


@dataclass(frozen=True)
class AdmissionState:
    """What the governor carries from one control interval to the next."""

    limit: int
    """The effective concurrent_spawn_limit."""
    calm: int = 0
    """Consecutive calm intervals so far."""
    cooldown: int = 0
    """Intervals left before another decrease (or stretch of ``horizon``) is allowed."""
    horizon: float = TURN_HORIZON
    """Seconds: the latest a refused user's turn window may end (:func:`expected_turn_window`),
    from TURN_HORIZON up to TURN_HORIZON_MAX."""
    quiet: int = 0
    """Intervals without a loop stall since the horizon last changed."""
    refused_before: int = 0
    """Spawn requests refused in the previous interval: users who may be coming back."""

    def __post_init__(self) -> None:
        # An out-of-range limit is allowed (settings may have changed); next_state clamps it.
        _check(
            self,
            {
                "limit": (_is_int(self.limit), "whole number"),
                "calm": (_is_count(self.calm), "whole number >= 0"),
                "cooldown": (_is_count(self.cooldown), "whole number >= 0"),
                "horizon": (_is_seconds(self.horizon), "finite seconds >= 0"),
                "quiet": (_is_count(self.quiet), "whole number >= 0"),
                "refused_before": (_is_count(self.refused_before), "whole number >= 0"),
            },
        )


@dataclass(frozen=True)
class AdmissionDecision:
    """The outcome of one control interval."""

    state: AdmissionState
    """The next state; its ``limit`` is the new limit."""
    reason: AdmissionReason
    changed: bool
    """``state.limit`` differs from the limit of the state passed in (clamping included)."""


def initial_state(settings: AdmissionSettings) -> AdmissionState:
    """The state before the first interval: ``start`` clamped into [floor, ceiling]."""
    return AdmissionState(limit=settings.clamp(settings.start))


def distress(signals: AdmissionSignals, settings: AdmissionSettings) -> AdmissionReason | None:
    """The first distress signal found, in this priority order: LOOP_STALLED, K8S_THROTTLED,
    K8S_SLOW, FAILURES, CAPACITY_WAIT; None when calm.

    The order puts the hub's own health first and the slowest-moving cause (waiting for
    nodes) last. "Above" is strict: a share exactly at its threshold is calm.
    """
    s = signals
    if s.loop_lag > settings.loop_lag_threshold:
        return AdmissionReason.LOOP_STALLED
    if s.k8s_requests > 0 and s.k8s_throttled / s.k8s_requests > settings.k8s_throttled_threshold:
        return AdmissionReason.K8S_THROTTLED
    if s.k8s_latency is not None and s.k8s_latency > settings.k8s_latency_threshold:
        return AdmissionReason.K8S_SLOW
    if s.finished >= _MIN_FINISHED and s.failed / s.finished > settings.failure_threshold:
        return AdmissionReason.FAILURES
    if (
        s.pending >= settings.floor
        and s.waiting_for_capacity / s.pending > settings.capacity_wait_threshold
    ):
        return AdmissionReason.CAPACITY_WAIT
    return None


def _decreased(limit: int, settings: AdmissionSettings) -> int:
    lowered = math.floor(limit * settings.decrease + _EPSILON)
    if lowered >= limit:
        # Only a factor within _EPSILON of 1 gets here; a decrease must still decrease.
        lowered = limit - 1
    return max(settings.floor, lowered)


def refusals_load_the_hub(state: AdmissionState, signals: AdmissionSignals) -> bool:
    """Whether more spawn requests were refused in the interval than spawns are pending,
    and some were refused in the interval before, so that the refused can be coming back.

    JupyterHub counts every user's servers to answer each spawn request, refused or not
    (``UserDict.count_active_users``); at thousands of users a crowd retrying every minute
    is most of a stalled hub's work (docs/admission.md has the profile). Cutting the limit
    then only lengthens the queue that retries. The first refusals of a burst are not that
    crowd: nobody has been told to come back yet."""
    return signals.refused > signals.pending and state.refused_before > 0


def next_state(
    state: AdmissionState, signals: AdmissionSignals, settings: AdmissionSettings
) -> AdmissionDecision:
    """The state after one control interval with ``signals`` (:func:`_decide`), which
    remembers the interval's refusals for the next."""
    decision = _decide(state, signals, settings)
    return replace(decision, state=replace(decision.state, refused_before=signals.refused))


def _decide(
    state: AdmissionState, signals: AdmissionSignals, settings: AdmissionSettings
) -> AdmissionDecision:
    """The state after one control interval with ``signals``.

    Distress cuts the limit by ``decrease`` (at least by 1, never below the floor) unless a
    previous cut is still cooling down, so one episode is not punished once per interval
    before the last cut has had an effect. A capacity wait (``capacity_wait_threshold``) only
    holds it (reason CAPACITY_WAIT, no change): the spawns waiting for nodes are what an
    autoscaler sizes its scale-up by, and spawns that then fail are the FAILURES signal. So
    does distress while the limit does not bind (pending spawns fill less than
    ``binding_share`` of it): admission is not what loads the hub or the API server then (a
    hub creating users in bulk, a slow database commit), and a cut would refuse the next
    users for a stall they did not cause. Calm raises it by ``increase`` only after
    ``calm_intervals`` calm intervals in a row and only while it binds.

    A loop stall while refusals load the hub (:func:`refusals_load_the_hub`) holds the limit
    (reason REFUSALS) and doubles ``horizon``, the latest turn the refused are told, up to
    TURN_HORIZON_MAX, once per cooldown like a cut: fewer of them come back each second. It
    halves back towards TURN_HORIZON after as many seconds without a loop stall as it is
    long: the refused told it come back over that long, so a shorter wait shows its effect
    no sooner.
    """
    previous = state.limit
    limit = settings.clamp(previous)
    horizon = min(TURN_HORIZON_MAX, max(TURN_HORIZON, state.horizon))
    reason = distress(signals, settings)
    binding = signals.pending + _EPSILON >= settings.binding_share * limit
    stalled = reason is AdmissionReason.LOOP_STALLED
    if stalled and refusals_load_the_hub(state, signals):
        if state.cooldown > 0:
            nxt = AdmissionState(limit, 0, state.cooldown - 1, horizon)
        else:
            stretched = min(TURN_HORIZON_MAX, 2 * horizon)
            nxt = AdmissionState(limit, 0, settings.cooldown_intervals, stretched)
        return AdmissionDecision(nxt, AdmissionReason.REFUSALS, nxt.limit != previous)
    quiet = 0 if stalled or horizon <= TURN_HORIZON else state.quiet + 1
    if quiet * settings.interval >= horizon - _EPSILON:
        horizon, quiet = max(TURN_HORIZON, horizon / 2), 0
    if reason is AdmissionReason.CAPACITY_WAIT or (reason is not None and not binding):
        nxt = AdmissionState(limit, 0, max(0, state.cooldown - 1), horizon, quiet)
        return AdmissionDecision(nxt, reason, nxt.limit != previous)
    if reason is not None:
        if state.cooldown > 0:
            nxt = AdmissionState(limit, 0, state.cooldown - 1, horizon, quiet)
        else:
            lowered = _decreased(limit, settings)
            nxt = AdmissionState(lowered, 0, settings.cooldown_intervals, horizon, quiet)
        return AdmissionDecision(nxt, reason, nxt.limit != previous)
    calm = state.calm + 1
    cooldown = max(0, state.cooldown - 1)
    if calm >= settings.calm_intervals and binding and limit < settings.ceiling:
        raised = min(settings.ceiling, limit + settings.increase)
        nxt = AdmissionState(raised, 0, cooldown, horizon, quiet)
        return AdmissionDecision(nxt, AdmissionReason.ALL_WELL, True)
    nxt = AdmissionState(limit, calm, cooldown, horizon, quiet)
    return AdmissionDecision(nxt, AdmissionReason.HOLD, nxt.limit != previous)


def _check_seconds(name: str, values: Sequence[float]) -> None:
    for value in values:
        if not _is_seconds(value):
            raise ValueError(f"{name} must be finite seconds >= 0, got {value!r}")


def expected_slot_wait(
    pending_ages: Sequence[float],
    recent_durations: Sequence[float],
    *,
    waiting_ages: Sequence[float] = (),
    scale_up: float = 0.0,
    default: float = 30.0,
) -> float:
    """Seconds until the first admitted spawn is expected to finish, freeing a slot.

    ``pending_ages``: how long each pending spawn whose pod has a node (or needs none) has
    been running; ``waiting_ages``: the same for those whose pod waits for a node;
    ``recent_durations``: how long recently finished spawns took (ready or failed), scale-up
    waits included. A spawn of age ``a`` is one of the slow ones, so its remaining time is
    the median of the recent durations longer than ``a``, minus ``a``; one that has outlived
    them all is overdue and expected in ``max(a / 2, 1.0)`` (half as long again). Pods
    waiting for a node are placed first come first served, so of those only the oldest can
    be next. The answer is the minimum over the spawns that can be next; with none pending,
    what a spawn starting now takes (the median of the recent durations), or ``default``
    with no history. With spawns pending but none finished yet (a hub just started, the
    first burst), each is taken as overdue: the refused are told "half as long again" and
    come back each time their spawns outlive it, instead of a fixed ``default`` that makes
    them wait half a minute for spawns of seconds. ``scale_up``: what the operator says a
    spawn waiting for a node takes here (0: unknown); the oldest waiting spawn, once it has
    outlived every recent spawn, is expected at ``scale_up`` rather than taken as overdue
    until it outlives that too: the first scale-up of a hub's life has no measured one to go
    by. ValueError for negative or non-finite values.
    """
    _check_seconds("pending_ages", pending_ages)
    _check_seconds("waiting_ages", waiting_ages)
    _check_seconds("recent_durations", recent_durations)
    for name, value in (("scale_up", scale_up), ("default", default)):
        if not _is_seconds(value):
            raise ValueError(f"{name} must be finite seconds >= 0, got {value!r}")
    # (age, what it is said to take in all): only a spawn waiting for a node has a statement.
    candidates = [(age, 0.0) for age in pending_ages]
    if waiting_ages:
        candidates.append((max(waiting_ages), scale_up))
    if not candidates:
        # The next 429 comes once spawns are pending: they will take about this long.
        return float(statistics.median(recent_durations)) if recent_durations else float(default)
    durations = sorted(recent_durations)
    best = math.inf
    for age, stated in candidates:
        longer = [d for d in durations if d > age]
        if longer:
            remaining = statistics.median(longer) - age
        elif stated > age:
            remaining = stated - age
        else:
            remaining = max(age * _OVERDUE_SHARE, _OVERDUE_MIN)
        best = min(best, remaining)
    return float(best)


def expected_turn_window(
    slot_wait: float,
    *,
    waiting: float,
    slots_per_second: float,
    pending: int,
    oldest: float = 0.0,
    horizon: float = TURN_HORIZON,
) -> tuple[float, float]:
    """(soonest, latest) seconds until a refused user's turn, not just until the next slot.

    ``waiting``: the users refused recently (the spawns the hub refused within the last
    Retry-After it gave: each waiting user was refused about once in that time, and a new
    arrival once too). The queue drains at ``slots_per_second`` (spawns ending per second): the
    first in it is served in ``slot_wait`` (:func:`expected_slot_wait`), the last once all of it
    has drained, ``waiting / slots_per_second``, but never later than ``max(TURN_STRETCH *
    slot_wait, horizon)`` (``AdmissionState.horizon``). With no spawn ended lately (a hub's
    first burst, a scale-up) the rate is Little's law's: the ``pending`` spawns over what one
    of them takes, at least ``oldest`` (how long the oldest pending spawn has run) plus
    ``slot_wait``. Taken as all ending when the first does (``pending / slot_wait``), a hub's
    first burst told its whole queue the same few seconds again and again while its loop
    stalled (measured: docs/admission.md). With nothing pending, the next user refused is one
    of a burst that filled the whole limit before the governor could look again, of a size
    nobody knows yet: the window runs to the horizon (JupyterHub's own 30-60 s when nothing
    has been measured either), where ``slot_wait`` +- 25% brought a burst's first 436 refused
    back within the same 15 s. Spreading the waiting users' Retry-After over
    the window brings them back a few at a time. Clients that ignore Retry-After only make the
    queue look longer. ValueError for negative or non-finite values.
    """
    values = {
        "slot_wait": slot_wait,
        "waiting": waiting,
        "slots_per_second": slots_per_second,
        "oldest": oldest,
        "horizon": horizon,
    }
    for name, value in values.items():
        if not _is_seconds(value):
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    if not _is_count(pending):
        raise ValueError(f"pending must be a whole number >= 0, got {pending!r}")
    slot_wait = float(slot_wait)
    if pending == 0:
        return slot_wait, float(max(slot_wait, horizon))
    rate = float(slots_per_second)
    if rate <= 0 and slot_wait > 0:
        rate = pending / (oldest + slot_wait)
    if rate <= 0:
        return slot_wait, slot_wait
    cap = max(TURN_STRETCH * slot_wait, horizon)
    return slot_wait, float(max(slot_wait, min(cap, waiting / rate)))


def _round(value: float) -> int:
    # Half up, not Python's half-to-even, so 2.5 s is 3 s like everyone expects.
    return math.floor(value + 0.5)


def retry_after_range(
    wait: float,
    *,
    latest: float | None = None,
    low: float = 5.0,
    high: float = 600.0,
    spread: float = 0.25,
) -> tuple[int, int]:
    """JupyterHub's ``spawn_throttle_retry_range`` for a wait of ``wait`` seconds, or of
    ``wait`` to ``latest`` (:func:`expected_turn_window`).

    Centred on the middle ``m`` of ``[wait, latest]``, ``m`` +- the larger of ``m * spread``
    and half the window; rounded to whole seconds, clamped into [low, high] and at least one
    second wide. The ``int(random.uniform(lo, hi))`` the hub sends as Retry-After is then
    within ``spread`` of a single wait, and spreads a queue over its window, unless a bound
    intervened. ValueError for a negative or non-finite wait, a latest below it, low < 1,
    high <= low (or no whole-second range between them) and a spread outside (0, 1).
    """
    if not _is_seconds(wait):
        raise ValueError(f"wait must be finite seconds >= 0, got {wait!r}")
    if latest is None:
        latest = wait
    if not (_is_seconds(latest) and latest >= wait):
        raise ValueError(f"latest must be finite seconds >= wait ({wait!r}), got {latest!r}")
    if not (_is_number(low) and math.isfinite(low) and low >= 1):
        raise ValueError(f"low must be finite seconds >= 1, got {low!r}")
    if not (_is_number(high) and math.isfinite(high) and high > low):
        raise ValueError(f"high must be finite seconds > low ({low!r}), got {high!r}")
    if not (_is_number(spread) and 0 < spread < 1):
        raise ValueError(f"spread must be between 0 and 1 (exclusive), got {spread!r}")
    bottom, top = math.ceil(low), math.floor(high)
    if top < bottom + 1:
        raise ValueError(
            f"high must leave at least one whole second above low, got low={low!r}, high={high!r}"
        )
    middle = (wait + latest) / 2
    half = max(middle * spread, (latest - wait) / 2)
    lo = max(bottom, min(top, _round(middle - half)))
    hi = max(bottom, min(top, _round(middle + half)))
    if hi < lo + 1:
        if lo + 1 <= top:
            hi = lo + 1
        else:
            lo, hi = top - 1, top
    return lo, hi
