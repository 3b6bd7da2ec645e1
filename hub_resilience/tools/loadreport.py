"""The arithmetic of a load rehearsal: when users arrive, and what the run amounts to.

Pure functions and data, no I/O, so that the simulator (:mod:`hub_resilience.tools.simulate`),
the demo and the benchmarks share one definition of every figure they print (arrival
schedules, percentiles, what the hub served, the report), and the figures can be tested
without a hub. The definitions are in docs/benchmarks.md ("The figures").
"""
from __future__ import annotations

import enum
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from prometheus_client.parser import text_string_to_metric_families


class Arrival(enum.Enum):
    """How simulated users arrive."""

    BURST = "burst"  # all at the same moment
    STEADY = "steady"  # one after the other at a fixed rate
    RAMP = "ramp"  # at a rate growing linearly from zero over ramp_seconds


#: Why a simulated user did not get a ready server (a fixed set: report keys, JSON keys).
FAILURE_REASONS = (
    "refused",  # the hub kept answering 429/503 until the user's retries ran out
    "spawn_failed",  # the spawn failed, or the server stopped before it was ready
    "timeout",  # not ready within the user's time limit
    "hub_error",  # any other error answer from the hub
    "unreachable",  # no answer at all (connection refused or reset, request timeout)
    "hub_exited",  # still trying when the hub process exited (a benchmark stops there)
)

#: JupyterHub's handler serving /hub/metrics: its own requests are not part of a run.
METRICS_HANDLER = "jupyterhub.handlers.metrics.MetricsHandler"
REQUESTS_SAMPLE = "jupyterhub_request_duration_seconds_count"
CPU_SAMPLE = "process_cpu_seconds_total"
LOOP_INTERVAL_BUCKET = "jupyterhub_event_loop_interval_seconds_bucket"
SPAWNS_SAMPLE = "jupyterhub_server_spawn_duration_seconds_count"
ADMISSION_PREFIX = "hub_resilience_admission_"
K8S_REQUESTS_SAMPLE = "hub_resilience_k8s_api_requests_total"


def arrival_offsets(
    pattern: Arrival | str,
    users: int,
    *,
    rate: float | None = None,
    ramp_seconds: float | None = None,
) -> list[float]:
    """Seconds after the start at which each of ``users`` users arrives, in order.

    ``rate`` (users per second) is required for ``steady``; ``ramp_seconds`` (the time over
    which everyone arrives) for ``ramp``. Raises ValueError naming the setting when a value
    is missing or out of range.
    """
    try:
        pattern = Arrival(pattern)
    except ValueError:
        choices = ", ".join(a.value for a in Arrival)
        raise ValueError(f"arrival must be one of {choices}, not {pattern!r}") from None
    if isinstance(users, bool) or not isinstance(users, int) or users < 1:
        raise ValueError(f"users must be a whole number >= 1, not {users!r}")
    if pattern is Arrival.BURST:
        return [0.0] * users
    if pattern is Arrival.STEADY:
        if rate is None or not math.isfinite(rate) or rate <= 0:
            raise ValueError(f"steady arrival needs rate > 0 (users per second), not {rate!r}")
        return [i / rate for i in range(users)]
    if ramp_seconds is None or not math.isfinite(ramp_seconds) or ramp_seconds <= 0:
        raise ValueError(f"ramp arrival needs ramp_seconds > 0, not {ramp_seconds!r}")
    return [ramp_seconds * math.sqrt(i / users) for i in range(users)]


def describe_arrival(
    pattern: Arrival | str, *, rate: float | None = None, ramp_seconds: float | None = None
) -> str:
    """A short human description of an arrival pattern, for the report's title."""
    pattern = Arrival(pattern)
    if pattern is Arrival.STEADY:
        return f"steady arrival, {rate:g} users/s"
    if pattern is Arrival.RAMP:
        return f"ramp arrival over {ramp_seconds:g} s"
    return "burst arrival (all at once)"


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) of ``values``, interpolating between closest ranks.

    Raises ValueError for no values or ``q`` outside [0, 100].
    """
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile q must be within [0, 100], not {q!r}")
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = math.floor(position)
    high = math.ceil(position)
    fraction = position - low
    return ordered[low] + (ordered[high] - ordered[low]) * fraction


@dataclass(frozen=True)
class Percentiles:
    """Summary of a distribution of durations, in seconds."""

    p50: float
    p90: float
    p99: float
    max: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Percentiles | None:
        """The summary of ``values``, or None when there are none."""
        if not values:
            return None
        return cls(
            percentile(values, 50), percentile(values, 90), percentile(values, 99), max(values)
        )


@dataclass(frozen=True)
class UserOutcome:
    """What happened to one simulated user."""

    name: str
    arrived_at: float  # seconds after the run started
    ready_after: float | None = None  # seconds from arrival to a ready server
    failure: str | None = None  # one of FAILURE_REASONS
    detail: str = ""  # the error, for the log

    def __post_init__(self) -> None:
        if (self.ready_after is None) == (self.failure is None):
            raise ValueError(f"user {self.name}: exactly one of ready_after and failure")
        if self.failure is not None and self.failure not in FAILURE_REASONS:
            raise ValueError(f"unknown failure reason {self.failure!r}")


# -- what the hub served, from its Prometheus text -----------------------------------------


@dataclass(frozen=True)
class HubScrape:
    """One reading of a hub's ``/hub/metrics``: request counts, CPU time, the event-loop
    interval histogram, spawns by status and the admission governor's gauges."""

    requests: Mapping[tuple[str, str, str], float]  # (method, handler, code) -> count
    cpu_seconds: float | None
    loop_intervals: Mapping[float, float] = field(default_factory=dict)  # le -> cumulative
    spawns: Mapping[tuple[str, str], float] = field(default_factory=dict)  # (status, reason)
    admission: Mapping[str, float] = field(default_factory=dict)  # "limit", "signal:pending"..
    #: The Kubernetes API's 429s to ResilientKubeSpawner's requests; None for another spawner.
    k8s_throttled: float | None = None


def parse_hub_metrics(text: str) -> HubScrape:
    """Read the figures of a :class:`HubScrape` from a hub's Prometheus exposition."""
    requests: dict[tuple[str, str, str], float] = {}
    cpu: float | None = None
    loop: dict[float, float] = {}
    spawns: dict[tuple[str, str], float] = {}
    admission: dict[str, float] = {}
    k8s_throttled: float | None = None
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == REQUESTS_SAMPLE:
                key = (
                    sample.labels.get("method", ""),
                    sample.labels.get("handler", ""),
                    sample.labels.get("code", ""),
                )
                requests[key] = requests.get(key, 0.0) + sample.value
            elif sample.name == CPU_SAMPLE:
                cpu = sample.value
            elif sample.name == LOOP_INTERVAL_BUCKET:
                loop[float(sample.labels["le"])] = sample.value
            elif sample.name == SPAWNS_SAMPLE:
                key2 = (sample.labels.get("status", ""), sample.labels.get("reason", ""))
                spawns[key2] = spawns.get(key2, 0.0) + sample.value
            elif sample.name == K8S_REQUESTS_SAMPLE:
                throttled = sample.value if sample.labels.get("code") == "429" else 0.0
                k8s_throttled = (k8s_throttled or 0.0) + throttled
            elif sample.name.startswith(ADMISSION_PREFIX):
                name = sample.name.removeprefix(ADMISSION_PREFIX)
                if "signal" in sample.labels:
                    name = f"{name}:{sample.labels['signal']}"
                admission[name] = sample.value
    return HubScrape(requests, cpu, loop, spawns, admission, k8s_throttled)


#: Spawn "durations" JupyterHub records for a spawn it refused (a status in 5.5, a reason
#: in 6.x): not spawns that ended.
REFUSED_SPAWNS = frozenset({"throttled", "too-many-users", "already-pending"})


def ended_spawns(spawns: Mapping[tuple[str, str], float]) -> tuple[float, float]:
    """(succeeded, failed) of the spawns a hub ran, from its spawn-duration counts by
    (status, reason), its refusals left out."""
    succeeded = failed = 0.0
    for (status, reason), count in spawns.items():
        if status in REFUSED_SPAWNS or reason in REFUSED_SPAWNS:
            continue
        if status == "success":
            succeeded += count
        else:
            failed += count
    return succeeded, failed


def histogram_quantile(q: float, before: Mapping[float, float],
                       after: Mapping[float, float]) -> float | None:
    """The ``q`` quantile (0..1) of what a cumulative histogram (upper bound -> count)
    observed between two readings, interpolated within its bucket as Prometheus's
    ``histogram_quantile`` does; the highest finite bound when it falls in ``+Inf``; None
    when nothing was observed."""
    if not 0 <= q <= 1:
        raise ValueError(f"quantile q must be within [0, 1], not {q!r}")
    bounds = sorted(after)
    counts = [after[b] - before.get(b, 0.0) for b in bounds]
    if not counts or counts[-1] <= 0:
        return None
    rank = q * counts[-1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in zip(bounds, counts, strict=True):
        if count >= rank:
            if math.isinf(bound):
                return lower_bound
            if count == lower_count:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (
                count - lower_count
            )
        lower_bound, lower_count = bound, count
    return lower_bound


@dataclass(frozen=True)
class HubLoad:
    """What the hub did between two scrapes (its own metrics requests left out)."""

    requests: int  # requests the hub answered, any status
    refused: int  # of which 429 (too many spawns pending, or too many active servers)
    by_code: dict[str, int] = field(default_factory=dict)
    by_handler: dict[str, int] = field(default_factory=dict)
    cpu_seconds: float | None = None
    spawn_failures: int = 0  # spawns the hub recorded as failed
    loop_interval_p99: float | None = None  # seconds, JupyterHub's event-loop interval


def hub_load(before: HubScrape, after: HubScrape) -> HubLoad:
    """The difference between two scrapes of the same hub process.

    A counter that went down means the hub restarted in between; its count after the restart
    is taken as the increase (Prometheus's ``increase()`` rule), so nothing goes negative.
    """
    by_code: dict[str, int] = {}
    by_handler: dict[str, int] = {}
    total = 0
    for key, value in after.requests.items():
        method, handler, code = key
        if handler == METRICS_HANDLER:
            continue
        previous = before.requests.get(key, 0.0)
        increase = int(round(value - previous if value >= previous else value))
        if increase <= 0:
            continue
        total += increase
        by_code[code] = by_code.get(code, 0) + increase
        short = handler.rsplit(".", 1)[-1]
        by_handler[short] = by_handler.get(short, 0) + increase
    cpu = None
    if before.cpu_seconds is not None and after.cpu_seconds is not None:
        cpu = after.cpu_seconds - before.cpu_seconds
        if cpu < 0:
            cpu = after.cpu_seconds
    failures = ended_spawns(after.spawns)[1] - ended_spawns(before.spawns)[1]
    return HubLoad(total, by_code.get("429", 0), dict(sorted(by_code.items())),
                   dict(sorted(by_handler.items(), key=lambda kv: -kv[1])), cpu,
                   spawn_failures=int(round(max(0.0, failures))),
                   loop_interval_p99=histogram_quantile(
                       0.99, before.loop_intervals, after.loop_intervals))


def cpu_seconds_from_stat(stat_line: str, clock_ticks: int) -> float:
    """User plus system CPU seconds of a process from its ``/proc/<pid>/stat`` line.

    The command name (field 2) may contain spaces and parentheses, so fields are counted
    from the last ``)``: utime and stime are fields 14 and 15 of the line.
    """
    if clock_ticks <= 0:
        raise ValueError(f"clock_ticks must be > 0, not {clock_ticks}")
    rest = stat_line[stat_line.rindex(")") + 2 :].split()
    # rest[0] is field 3 (state): field n is rest[n - 3].
    return (int(rest[11]) + int(rest[12])) / clock_ticks


# -- the report -----------------------------------------------------------------------------


@dataclass(frozen=True)
class LoadReport:
    """Everything a simulation run measured."""

    target: str
    users: int
    arrival: str
    client: str
    duration: float  # seconds from the first arrival to the last outcome
    ready: int
    failures: dict[str, int]
    time_to_ready: Percentiles | None
    throttled_absorbed: int  # 429/503 answers the clients waited out and retried
    spawn_attempts: int  # spawn requests sent, retries included
    hub: HubLoad | None
    activity_posts: int = 0
    activity_failures: int = 0
    tab_requests: dict[str, int] = field(default_factory=dict)  # final HTTP status -> count
    #: The open tab's polls of the running server while the user works: status -> count.
    working_tab_requests: dict[str, int] = field(default_factory=dict)

    @property
    def failed(self) -> int:
        return sum(self.failures.values())

    def to_dict(self) -> dict[str, Any]:
        """The report as plain data (``--json``)."""
        data = asdict(self)
        data["failed"] = self.failed
        return data


def build_report(
    outcomes: Iterable[UserOutcome],
    *,
    target: str,
    arrival: str,
    client: str,
    throttled_absorbed: int,
    spawn_attempts: int,
    hub: HubLoad | None,
    activity_posts: int = 0,
    activity_failures: int = 0,
    tab_requests: Mapping[str, int] | None = None,
    working_tab_requests: Mapping[str, int] | None = None,
    finished_at: float | None = None,
) -> LoadReport:
    """Summarise per-user outcomes; ``finished_at`` (seconds after the start) ends the run
    when given, else the last user's outcome does."""
    outcomes = list(outcomes)
    ready_times = [o.ready_after for o in outcomes if o.ready_after is not None]
    failures = dict.fromkeys(FAILURE_REASONS, 0)
    for outcome in outcomes:
        if outcome.failure is not None:
            failures[outcome.failure] += 1
    ends = [o.arrived_at + (o.ready_after or 0.0) for o in outcomes]
    start = min((o.arrived_at for o in outcomes), default=0.0)
    end = finished_at if finished_at is not None else max(ends, default=start)
    return LoadReport(
        target=target,
        users=len(outcomes),
        arrival=arrival,
        client=client,
        duration=max(0.0, end - start),
        ready=len(ready_times),
        failures={k: v for k, v in failures.items() if v},
        time_to_ready=Percentiles.of(ready_times),
        throttled_absorbed=throttled_absorbed,
        spawn_attempts=spawn_attempts,
        hub=hub,
        activity_posts=activity_posts,
        activity_failures=activity_failures,
        tab_requests=dict(sorted((tab_requests or {}).items())),
        working_tab_requests=dict(sorted((working_tab_requests or {}).items())),
    )


def _seconds(value: float) -> str:
    return f"{value:.1f} s" if value < 100 else f"{value:.0f} s"


def format_report(report: LoadReport) -> str:
    """The report as text for a terminal."""
    lines = [
        f"Simulated {report.users} users against {report.target}: {report.arrival}, "
        f"{report.client} client",
        f"  ready                {report.ready} of {report.users} "
        f"(run took {_seconds(report.duration)})",
    ]
    if report.time_to_ready is not None:
        t = report.time_to_ready
        lines.append(
            f"  time to ready        p50 {_seconds(t.p50)}   p90 {_seconds(t.p90)}   "
            f"p99 {_seconds(t.p99)}   max {_seconds(t.max)}"
        )
    lines.append(
        f"  429s absorbed        {report.throttled_absorbed} "
        f"({report.spawn_attempts} spawn requests sent for {report.users} users)"
    )
    if report.failures:
        failures = ", ".join(f"{reason} {count}" for reason, count in report.failures.items())
        lines.append(f"  failures             {report.failed}: {failures}")
    else:
        lines.append("  failures             none")
    if report.hub is not None:
        hub = report.hub
        cpu = "" if hub.cpu_seconds is None else f", hub CPU {hub.cpu_seconds:.1f} s"
        lines.append(
            f"  hub served           {hub.requests} requests, {hub.refused} of them 429{cpu}"
        )
        codes = ", ".join(f"{code}: {count}" for code, count in hub.by_code.items())
        if codes:
            lines.append(f"                       by status: {codes}")
    else:
        lines.append("  hub served           unknown (could not read the hub's /hub/metrics)")
    if report.activity_posts or report.activity_failures:
        lines.append(
            f"  activity posts       {report.activity_posts} "
            f"({report.activity_failures} failed)"
        )
    for counts, when in ((report.working_tab_requests, "while working"),
                         (report.tab_requests, "after the stop")):
        if counts:
            tabs = ", ".join(f"{status}: {count}" for status, count in counts.items())
            lines.append(f"  tab requests         {sum(counts.values())} {when} ({tabs})")
    return "\n".join(lines)


def render_progress(
    *,
    ready: int,
    failed: int,
    total: int,
    absorbed: int,
    elapsed: float,
    working: int = 0,
    refused: int = 0,
    loop_p99: float | None = None,
    k8s_throttled: float | None = None,
    width: int = 30,
) -> str:
    """One line of the live progress bar: ``[###x----] 12/20 ready, ...``.

    ``#`` are users with a ready server, ``x`` users who failed, ``-`` users still waiting;
    ``working`` counts ready users who have not left yet (holding, stopping, tab traffic);
    ``refused``, the waiting users who are waiting out a 429 right now. When known: the hub's
    latest event-loop interval p99 (seconds) and the Kubernetes API's 429s to the hub.
    """
    if total < 1:
        raise ValueError(f"total must be >= 1, not {total}")
    width = max(1, width)
    done = min(total, ready + failed)
    filled_ready = ready * width // total
    filled_failed = min(width - filled_ready, (done * width // total) - filled_ready)
    bar = "#" * filled_ready + "x" * filled_failed + "-" * (width - filled_ready - filled_failed)
    line = f"[{bar}] {ready}/{total} ready, {failed} failed, {total - done} waiting"
    line += f" ({refused} refused), " if refused else ", "
    if working:
        line += f"{working} still working, "
    line += f"{absorbed} 429s absorbed, "
    if loop_p99 is not None:
        line += f"hub loop p99 {loop_p99 * 1000:.0f} ms, "
    if k8s_throttled is not None:
        line += f"{k8s_throttled:.0f} Kubernetes API 429s, "
    return line + f"{elapsed:.0f}s"
