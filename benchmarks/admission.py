"""Spawn admission: z2jh's static limit (64), a low static limit (20) and the governor,
untold and told the node start-up.

The same arrivals, one configuration after the other, each on a fresh hub whose servers run
on a simulated cluster with limited room (:class:`~hub_resilience.tools.simulated_cluster.
SimulatedCluster`, the model below). Users are this package's backoff client, which honours
the hub's Retry-After, and give up after ``PATIENCE`` seconds. docs/benchmarks.md
("Spawn admission") states what is measured and how.
"""

from __future__ import annotations

import asyncio
import json
import math
import statistics
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from benchmarks.common import (
    Row,
    artifact_path,
    bench_hub,
    hub_cpu_seconds,
    log,
    markdown_table,
    scrape,
)
from hub_resilience.tools.loadreport import (
    Arrival,
    HubScrape,
    LoadReport,
    ended_spawns,
    histogram_quantile,
    hub_load,
)
from hub_resilience.tools.localhub import LocalHub
from hub_resilience.tools.simulate import Simulation, SimulationPlan

#: The cluster the servers run on: 8 nodes of 32 servers ready (256 seats), an autoscaler
#: that adds nodes for the servers that fit nowhere up to 40 nodes (1,280 seats), each
#: ready 120 s after it was asked for (clouds take 1-5 min), a 10 s image pull on a node's
#: first server, then 3 s to start a container, four at a time per node.
CLUSTER = """
c.SimulatedCluster.nodes = 8
c.SimulatedCluster.max_nodes = 40
c.SimulatedCluster.servers_per_node = 32
c.SimulatedCluster.scale_up_delay = 120.0
c.SimulatedCluster.image_pull = 10.0
c.SimulatedCluster.parallel_starts = 4
c.SimulatedSpawner.start_delay = 3.0
c.SimulatedSpawner.start_timeout = 300  # z2jh's singleuser.startTimeout (JupyterHub's: 60)
"""
#: What the operator of that cluster would tell the governor a spawn waiting for a node
#: takes (``AdmissionGovernor.scale_up_seconds``): the node, the image pull, the start.
NODE_START_UP = 120.0 + 10.0 + 3.0

#: Seconds a user keeps trying before giving up (a student at the start of a class).
PATIENCE = 600.0
#: Seconds between two readings of the hub's metrics during a run.
SAMPLE_INTERVAL = 1.0
#: A wait for a free slot this long (s) means a scale-up: otherwise one frees every second
#: or two while hundreds of spawns run.
LONG_WAIT = 20.0


@dataclass(frozen=True)
class Configuration:
    name: str
    limit: int
    governor: bool
    told: bool = False
    """The governor is told the cluster's node start-up (``scale_up_seconds``)."""

    def scale_up_seconds(self, node_start_up: float) -> float:
        """What this configuration tells the governor of a cluster whose spawns waiting for
        a node take ``node_start_up``: that, or 0 (unknown)."""
        return node_start_up if self.told else 0.0

    def hub_config(self) -> str:
        return CLUSTER + f"""
from hub_resilience import configure
c.JupyterHub.tornado_settings = {{"slow_spawn_timeout": 0}}  # as z2jh: answer 202 at once
c.AdmissionGovernor.scale_up_seconds = {self.scale_up_seconds(NODE_START_UP)}
configure(
    c, spawner_class=None, stopped_handler=False, cull=False,
    concurrent_spawn_limit={self.limit}, admission_governor={self.governor},
)
"""


STATIC_64 = Configuration("concurrent_spawn_limit 64 (z2jh's default)", 64, False)
STATIC_20 = Configuration("concurrent_spawn_limit 20", 20, False)
GOVERNOR = Configuration("the governor (from 64)", 64, True)
GOVERNOR_TOLD = Configuration("the governor told the node start-up (from 64)", 64, True, True)
GOVERNORS = (GOVERNOR, GOVERNOR_TOLD)
CONFIGURATIONS = (STATIC_64, STATIC_20, *GOVERNORS)

#: JupyterHub's own spawn_throttle_retry_range, which the static configurations keep.
JUPYTERHUB_RETRY_RANGE = (30.0, 60.0)


@dataclass(frozen=True)
class Crowd:
    """Who arrives, and how."""

    title: str
    users: int
    arrival: Arrival
    ramp_seconds: float | None = None
    rate: float | None = None  # users per second, for a steady arrival


CROWDS = (
    Crowd("500 users at once", 500, Arrival.BURST),
    Crowd("1,000 users over 5 minutes", 1000, Arrival.RAMP, 300.0),
)


@dataclass(frozen=True)
class Sample:
    at: float  # seconds since the run started
    scrape: HubScrape


@dataclass(frozen=True)
class Outcome:
    report: LoadReport
    hub_cpu: float
    samples: list[Sample]
    ready_after: tuple[float, ...] = ()
    """Every user's time until ready (s), infinite for a user who never got a server."""

    def time_to_ready(self, q: int) -> float:
        """Percentile ``q`` (nearest rank) of the time until ready over *all* users: a limit
        that turns users away cannot look fast by timing only those it served. Infinite
        when the user at that rank never got a server; NaN without users."""
        times = sorted(self.ready_after)
        if not times:
            return float("nan")
        return times[max(0, math.ceil(q / 100 * len(times)) - 1)]

    @property
    def duration(self) -> float:
        """Seconds from the run's first reading of the hub's metrics to its last."""
        return self.samples[-1].at if self.samples else 0.0

    def loop_p99_within(self, seconds: float) -> float | None:
        """The hub's event-loop interval p99 (s) over the run's first ``seconds``, from the
        readings taken meanwhile; None without two readings in that time."""
        within = [s for s in self.samples if s.at <= seconds]
        if len(within) < 2:
            return None
        return histogram_quantile(
            0.99, within[0].scrape.loop_intervals, within[-1].scrape.loop_intervals
        )

    def honesty(self) -> tuple[float, float, int]:
        """(median suggested Retry-After / wait for a free slot, share within +-50%,
        seconds counted) over the seconds in which the hub refused spawns while the next
        slot was at least LONG_WAIT away (a scale-up)."""
        ratios = retry_after_ratios(self.samples)
        if not ratios:
            return float("nan"), float("nan"), 0
        within = sum(0.5 <= r <= 1.5 for r in ratios) / len(ratios)
        return statistics.median(ratios), within, len(ratios)


def keep(outcome: Outcome, path: Path) -> None:
    """Write a run's per-second readings and every user's time until ready (null: never) to
    ``path`` as JSON, so that a whole run's figures can be looked into afterwards."""
    readings = [
        {
            "at": a.at,
            "refused": hub_load(a.scrape, b.scrape).refused,
            "spawns_ended": spawns_ended_between(a, b),
            "admission": dict(a.scrape.admission),
            "loop_intervals": {str(le): n for le, n in a.scrape.loop_intervals.items()},
        }
        for a, b in zip(outcome.samples, outcome.samples[1:], strict=False)
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({
        "readings": readings,
        "ready_after": [t if math.isfinite(t) else None for t in outcome.ready_after],
        "retry_after_ratios": retry_after_ratios(outcome.samples),
    }))


def spawns_ended_between(a: Sample, b: Sample) -> float:
    """Spawns that ended (ready or failed) between two readings: slots that freed."""
    return sum(ended_spawns(b.scrape.spawns)) - sum(ended_spawns(a.scrape.spawns))


def suggested_retry_after(scrape: HubScrape) -> float:
    """The middle of the range the hub draws its Retry-After from at this reading."""
    low = scrape.admission.get("retry_after_low_seconds")
    high = scrape.admission.get("retry_after_high_seconds")
    if low is None or high is None:
        low, high = JUPYTERHUB_RETRY_RANGE
    return (low + high) / 2


def retry_after_ratios(samples: list[Sample]) -> list[float]:
    """For each second in which the hub answered 429 while no spawn ended for LONG_WAIT or
    more: the Retry-After it suggested divided by the time until a spawn next ended (a slot
    freed), both read from its own metrics."""
    frees = [
        (a.at + b.at) / 2
        for a, b in zip(samples, samples[1:], strict=False)
        if spawns_ended_between(a, b) > 0
    ]
    ratios = []
    for a, b in zip(samples, samples[1:], strict=False):
        if hub_load(a.scrape, b.scrape).refused == 0:
            continue
        later = [f for f in frees if f > a.at]
        if not later or later[0] - a.at < LONG_WAIT:
            continue
        ratios.append(suggested_retry_after(a.scrape) / (later[0] - a.at))
    return ratios


async def sample(hub: LocalHub, started: float, into: list[Sample]) -> None:
    """Read the hub's metrics every SAMPLE_INTERVAL until cancelled."""
    while True:
        try:
            into.append(Sample(time.monotonic() - started, await scrape(hub)))
        except Exception as e:  # a swamped hub is a result, not an abort
            log(f"admission: metrics not read: {e}")
        await asyncio.sleep(SAMPLE_INTERVAL)


async def run_one(crowd: Crowd, configuration: Configuration) -> Outcome:
    async with bench_hub(configuration.hub_config()) as hub:
        return await drive(hub, crowd, configuration.name)


async def drive(hub: LocalHub, crowd: Crowd, label: str) -> Outcome:
    """Let ``crowd`` arrive at ``hub``, reading its metrics meanwhile; what it measured."""
    plan = SimulationPlan(
        users=crowd.users, arrival=crowd.arrival, ramp_seconds=crowd.ramp_seconds,
        rate=crowd.rate, client="backoff", timeout=PATIENCE, user_prefix="u-", cleanup=False,
    )
    log(f"admission: {crowd.title}, {label}")
    cpu = hub_cpu_seconds(hub)
    samples: list[Sample] = []
    sampler = asyncio.ensure_future(sample(hub, time.monotonic(), samples))
    simulation = Simulation(hub.url, hub.token, plan, api_url=hub.api_url)
    try:
        report = await simulation.run()
    finally:
        sampler.cancel()
        await asyncio.gather(sampler, return_exceptions=True)
    ready_after = tuple(math.inf if o.ready_after is None else o.ready_after
                        for o in simulation.outcomes)
    outcome = Outcome(report, hub_cpu_seconds(hub) - cpu, samples, ready_after)
    kept = artifact_path("admission", f"{crowd.title}-{label}", ".json")
    keep(outcome, kept)
    hub_figures = "hub metrics unreadable"
    if report.hub is not None:
        loop = report.hub.loop_interval_p99
        hub_figures = (f"{report.hub.refused} 429s, {report.hub.spawn_failures} failed spawns, "
                       f"loop interval p99 {'?' if loop is None else f'{loop * 1000:.0f} ms'}")
    ratio, within, seconds = outcome.honesty()
    log(f"admission: {label}: ready {report.ready}/{crowd.users}, "
        f"{report.failed} without a server ({report.failures}), "
        f"p50 {p(report, 50):.0f}s p99 {p(report, 99):.0f}s of those served, over all users "
        f"p50 {outcome.time_to_ready(50):.0f}s p99 {outcome.time_to_ready(99):.0f}s, "
        f"{hub_figures}, "
        f"{outcome.hub_cpu:.0f} hub CPU s; Retry-After / wait during scale-ups: median "
        f"{ratio:.2f}, {within:.0%} within ±50% ({seconds} s); its readings: {kept}")
    return outcome


def p(report: LoadReport, q: int) -> float:
    """Time until ready at percentile ``q`` of the users who got a server (NaN: none did)."""
    t = report.time_to_ready
    if t is None:
        return float("nan")
    return {50: t.p50, 99: t.p99}[q]


def rows(title: str, governor: Configuration, baseline: Configuration, static: Outcome,
         ours: Outcome, window: float) -> list[Row]:
    """A governor against one static limit; ``window``: the seconds from the start of the
    crowd's arrival over which every configuration's event loop is compared."""
    comparison = f"{title}: {governor.name} vs {baseline.name}"
    s, o = static.report, ours.report
    nan = float("nan")

    def loop_ms(outcome: Outcome) -> float:
        hub = outcome.report.hub
        if hub is None or hub.loop_interval_p99 is None:
            return nan
        return hub.loop_interval_p99 * 1000

    def window_loop_ms(outcome: Outcome) -> float:
        p99 = outcome.loop_p99_within(window)
        return nan if p99 is None else p99 * 1000

    return [
        Row(comparison, "time until ready, p50 of all users (s)", static.time_to_ready(50),
            ours.time_to_ready(50), "lower"),
        Row(comparison, "time until ready, p99 of all users (s)", static.time_to_ready(99),
            ours.time_to_ready(99), "lower"),
        Row(comparison, "time until ready, p50 of the users served (s)", p(s, 50), p(o, 50),
            "lower"),
        Row(comparison, "users who got no server", s.failed, o.failed, "lower", 0),
        Row(comparison, "failed spawns (the hub's count)",
            s.hub.spawn_failures if s.hub else nan, o.hub.spawn_failures if o.hub else nan,
            "lower", 0),
        Row(comparison, "spawn requests refused (429)",
            s.hub.refused if s.hub else nan, o.hub.refused if o.hub else nan, "lower", 0),
        Row(comparison, "hub CPU seconds", static.hub_cpu, ours.hub_cpu, "lower"),
        Row(comparison, "hub event-loop interval p99 (ms), each over its own run",
            loop_ms(static), loop_ms(ours), "lower"),
        Row(comparison, f"hub event-loop interval p99 (ms), all over the first {window:.0f} s",
            window_loop_ms(static), window_loop_ms(ours), "lower"),
    ]


def common_window(outcomes: Iterable[Outcome]) -> float:
    """The seconds every run lasted (the shortest run's): a p99 over each run's own length
    would favour the configuration that serves the crowd slowest, its quiet tail diluting
    the stalls of the arrival."""
    return min((o.duration for o in outcomes), default=0.0)


def comparison(crowd: Crowd, outcomes: dict[Configuration, Outcome]) -> list[Row]:
    """The table of one crowd: each governor (untold, told) against each static limit, and
    its Retry-After during scale-up waits."""
    table: list[Row] = []
    window = common_window(outcomes.values())
    base = outcomes[STATIC_64].honesty()
    for governor in GOVERNORS:
        for static in (STATIC_64, STATIC_20):
            table += rows(crowd.title, governor, static, outcomes[static], outcomes[governor],
                          window)
        ours = outcomes[governor].honesty()
        title = (f"{crowd.title}, while a scale-up keeps every slot taken (refusing seconds: "
                 f"{base[2]} vs {ours[2]}): {governor.name} vs {STATIC_64.name}")
        table.append(Row(title, "suggested Retry-After ÷ the wait for a free slot (median)",
                         base[0], ours[0], "closer to 1", 2))
        table.append(Row(title,
                         "share of those seconds with Retry-After within ±50% of the wait",
                         base[1], ours[1], "higher", 2))
    return table


async def run(crowds: tuple[Crowd, ...] = CROWDS, *, kubernetes: Crowd | None = None
              ) -> list[Row]:
    """Every crowd on simulated servers, then ``kubernetes`` (default: 500 at once) on the
    local control plane."""
    from benchmarks import admission_k8s

    table: list[Row] = []
    for crowd in crowds:
        table += comparison(crowd, {c: await run_one(crowd, c) for c in CONFIGURATIONS})
        log(f"admission: the table so far\n{markdown_table(table)}")  # a long run's rows kept
    return table + await admission_k8s.run(kubernetes or admission_k8s.CROWD)


async def quick() -> list[Row]:
    """A smoke-sized run (the figures mean little)."""
    return await run((Crowd("300 users at once", 300, Arrival.BURST),),
                     kubernetes=Crowd("150 users at once on Kubernetes", 150, Arrival.BURST))
