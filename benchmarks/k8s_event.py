"""An event on the local Kubernetes control plane: stock zero-to-jupyterhub 4.4 against
hub-resilience, the same arrival one after the other on the same 30 fake nodes.

Stock is z2jh 4.4.0's own hub configuration with its defaults (KubeSpawner, its
jupyterhub-idle-culler service); ours adds the package's shipped values
(helm-values/hub-resilience.yaml: ``configure()``, ResilientKubeSpawner, the service). Both
get the same operator values: the users' resources, the event's size, the culler's interval.
docs/benchmarks.md ("An event on Kubernetes") says what is measured, how, and what the
local control plane does and does not simulate.
"""

from __future__ import annotations

import asyncio
import math
import re
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tornado.httpclient import AsyncHTTPClient

from benchmarks.admission import Crowd, Outcome
from benchmarks.common import (
    Measured,
    Row,
    T,
    admin_client,
    artifact_path,
    cache_home,
    gather_limited,
    hub_cpu_seconds,
    log,
    measure,
    scrape,
)
from hub_resilience.hub.activity import DEFAULT_SINGLEUSER_INTERVAL, tune_activity
from hub_resilience.hubclient import HubAPIError, StopResult
from hub_resilience.tools.loadreport import Arrival, HubLoad, LoadReport, hub_load
from hub_resilience.tools.simulate import (
    SCRAPE_EVERY,
    Progress,
    Simulation,
    SimulationPlan,
    fetch_status,
    tab_request,
)
from hub_resilience.tools.timeline import Timeline

#: The cluster: 30 nodes of a common 16-CPU, 64 GiB worker with Kubernetes' 110 pods each.
NODES = 30
NODE_CPU, NODE_MEMORY, NODE_PODS = "16", "64Gi", "110"
#: Every user's pod (the operator's values, the same for both): 100 fit on a node.
USER_RESOURCES = {
    "cpu": {"guarantee": 0.1, "limit": 0.1},
    "memory": {"guarantee": "512M", "limit": "512M"},
}
#: KWOK's container start, read from each pod's own annotations (tests/k8s/stages): Running
#: 2-6 s after the sandbox. No image pull: z2jh's pre-puller has put the image on every
#: node before the event (the local cluster has no image to pull).
POD_START = {
    "pod-ready.stage.kwok.x-k8s.io/delay": "2s",
    "pod-ready.stage.kwok.x-k8s.io/jitter-delay": "6s",
}
#: The culler looks every minute instead of every ten (both culler's option), so the steady
#: window holds several of its passes; its timeout stays an hour: it culls nothing there.
CULL_EVERY = 60
#: Seconds a user keeps trying to get a server (a student at the start of a class).
PATIENCE = 600.0
#: Seconds between two polls of a user's open tab, cycling through kernels, sessions,
#: terminals and contents (JupyterLab polls about four of these every 10 s).
TAB_INTERVAL = 10.0
#: After the event: the servers are stopped as an idle culler would stop them (this many at
#: once, jupyterhub-idle-culler's z2jh default), and every other user's tab, left open,
#: polls its stopped server this many times.
STOP_CONCURRENCY = 10
TAB_POLLS_AFTER_STOP = 6


#: The hub image's virtualenv scripts/bootstrap.sh builds (z2jh 4.4.0's frozen packages:
#: JupyterHub 5.5.0, KubeSpawner 7.0.0, jupyterhub-idle-culler 1.4.0, on Python 3.12).
RELEASED_VENV = "venv-z2jh-4.4.0"


def kept_log(event: Crowd, stack: Stack) -> Path:
    """Where a run's hub log is kept after the run: one file per event and hub."""
    name = f"{event.users}-{event.arrival.value}-{stack.name.split()[0]}"
    return artifact_path("k8s-event", name, ".log")


GOVERNOR_CHANGE = re.compile(r"Admission governor: concurrent_spawn_limit \d+ -> \d+ \((\w+)")


def governor_changes(log_text: str) -> dict[str, int]:
    """How often the admission governor moved the limit, by reason, from the hub's log."""
    return dict(Counter(GOVERNOR_CHANGE.findall(log_text)))


def released_python() -> str:
    """The interpreter both hubs run on: the stack operators run, whatever runs the
    benchmark's simulated users."""
    python = cache_home() / RELEASED_VENV / "bin" / "python"
    if not python.is_file():
        raise RuntimeError(f"{python} is missing: ./benchmarks/run builds it "
                           "(scripts/bootstrap.sh, the released lane)")
    return str(python)


def hub_stack() -> str:
    """The versions the hubs run on (not this process's), for the table's footer."""
    import subprocess

    script = ("import platform; from importlib.metadata import version; print(', '.join("
              "f'{p} {version(p)}' for p in ('jupyterhub', 'jupyterhub-kubespawner', "
              "'jupyterhub-idle-culler')) + ', Python ' + platform.python_version())")
    return subprocess.run([released_python(), "-c", script], capture_output=True, text=True,
                          check=True).stdout.strip()


EVENTS = (
    Crowd("1,000 users over 10 minutes", 1000, Arrival.RAMP, 600.0),
    Crowd("3,000 users over 15 minutes", 3000, Arrival.RAMP, 900.0),
    Crowd("300 users at once", 300, Arrival.BURST),
)
#: Seconds the steady state is measured with every user's server running.
STEADY_SECONDS = 180.0


@dataclass(frozen=True)
class Stack:
    """One of the two hubs compared."""

    name: str
    ours: bool

    def values(self, event: Crowd) -> dict[str, Any]:
        """The z2jh values of this hub for ``event``."""
        from tests.k8s.test_e2e_pressure import HARNESS_VALUES, z2jh_values
        from tests.z2jh_hub import released_values

        operator = {
            "singleuser": {**USER_RESOURCES, "extraAnnotations": dict(POD_START)},
        }
        if self.ours:
            return z2jh_values(**operator, hub={"config": {
                "HubResilience": {"expected_concurrent_servers": event.users},
                "Culler": {"cull_every": CULL_EVERY},
            }})
        return released_values(HARNESS_VALUES, operator, {"cull": {"every": CULL_EVERY}})

    def activity_interval(self, values: Mapping[str, Any]) -> int:
        """The single-user activity interval this hub's servers get (checked against a
        pod's environment during the run)."""
        if not self.ours:
            return DEFAULT_SINGLEUSER_INTERVAL  # JupyterHub's; z2jh does not set it
        settings = values["hub"]["config"]["HubResilience"]
        return tune_activity(
            settings["expected_concurrent_servers"], settings["activity_requests_per_second"]
        ).singleuser_interval


STOCK = Stack("stock z2jh 4.4", ours=False)
OURS = Stack("hub-resilience", ours=True)

#: z2jh's culler command reaches the hub at localhost:8081 with ``python3``; the local hub
#: listens elsewhere and its Python is this one.
STOCK_CULLER_CONFIG = """
import sys as _sys
for _service in c.JupyterHub.services:
    if _service.get("name") == "jupyterhub-idle-culler":
        _service["command"] = [_sys.executable] + [
            f"--url=http://127.0.0.1:{c.JupyterHub.hub_port}/hub/api"
            if _arg.startswith("--url=") else _arg
            for _arg in _service["command"][1:]
        ]
"""


@dataclass
class Result:
    """What one hub did during one event."""

    outcome: Outcome
    arrival: HubLoad | None  # what the hub served until everyone had a server or gave up
    loop_max: float | None  # seconds, the highest bucket the hub's histogram saw meanwhile
    peak_rss: float  # MiB
    errors: int  # ERROR lines in the hub's log
    failed_spawns: int  # spawns the hub's log reports as failed (its exit included)
    guaranteed: float  # share of the user pods
    api_429s: int  # the API server's 429s during the event, all clients
    activity_interval: int | None  # read from a user pod's environment
    steady: Measured | None  # the window with every server running (None: the hub exited)
    stopping: Measured | None  # every server stopped, half the tabs left open (likewise)
    tabs_after_stop: dict[str, int] = field(default_factory=dict)
    timeline: Timeline | None = None
    governor: dict[str, int] = field(default_factory=dict)  # limit changes by reason
    exited: str | None = None  # when and why the hub process exited during the event

    @property
    def report(self) -> LoadReport:
        return self.outcome.report


def peak_rss_mib(pid: int) -> float:
    """The process's peak resident set (VmHWM) in MiB; NaN once it has exited."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return math.nan
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return math.nan


def pod_activity_interval(pods: Sequence[Any]) -> int | None:
    """JUPYTERHUB_ACTIVITY_INTERVAL of the first pod's notebook container (JupyterHub's
    default when the variable is not set), None without pods."""
    for pod in pods:
        for container in pod.spec.containers:
            if container.name == "notebook":
                for env in container.env or []:
                    if env.name == "JUPYTERHUB_ACTIVITY_INTERVAL":
                        return int(env.value)
                return DEFAULT_SINGLEUSER_INTERVAL
    return None


def api_429s(cluster: Any) -> int:
    from tests.k8s.cluster import requests_429

    return sum(requests_429(cluster.api).values())


async def everyone_arrived(simulation: Simulation, running: asyncio.Future[Any], hub: Any
                           ) -> float:
    """Until every user has a server or has given up (or the run ended: it failed); the
    seconds since the first arrival. If the hub process exits, the users still trying (and
    those yet to come) give up there: nobody restarts it here, as Kubernetes would."""
    while not running.done():
        progress = simulation.progress()
        if progress.ready + progress.failed >= progress.total:
            return progress.elapsed
        if hub.hub_exit_code is not None:
            simulation.give_up("hub_exited")
            return progress.elapsed
        await asyncio.sleep(1.0)
    return simulation.progress().elapsed


async def measure_unless_exited(hub: Any, work: Callable[[], Awaitable[T]]
                                ) -> tuple[T, Measured] | None:
    """``measure`` around ``work``, or None when the hub process exits meanwhile: JupyterHub
    can reach its consecutive failure limit after the arrival too, and that is a result to
    report, not a reason to abort the benchmark. Any other failure is raised."""
    try:
        return await measure(hub, work)
    except Exception:
        if hub.hub_exit_code is None:
            raise
        log(f"k8s event: the hub exited (code {hub.hub_exit_code}) during a measurement")
        return None


#: JupyterHub's critical log line when it exits at its consecutive_failure_limit.
HUB_ABORT = re.compile(r"^\[C [^\]]*\] (.*)$", re.MULTILINE)


#: What JupyterHub (5.5 and 6.x, ``jupyterhub/user.py``) logs once for each spawn that fails:
#: in ``Spawner.start`` (a timeout, an HTTP error, anything else) or waiting for the server.
FAILED_SPAWN = re.compile(
    r"failed to start in \S+ seconds, giving up"
    r"|^\[E [^\]]*\] (?:Unhandled error|Error) starting \S+'s server: "
    r"|'s server never showed up at .* Giving up"
    r"|Unhandled error waiting for \S+'s server to show up at ",
    re.MULTILINE,
)


def failed_spawns_in_log(log_text: str) -> int:
    """Spawns the hub's log reports as failed. Unlike its metrics, read every few seconds,
    the log also has the failures that made it exit."""
    return len(FAILED_SPAWN.findall(log_text))


def exit_reason(exit_code: int, seconds: float, log_text: str) -> str:
    """When the hub exited and, from its log, why (its first critical line)."""
    found = HUB_ABORT.search(log_text)
    why = found.group(1).strip() if found else "no critical line in its log"
    return f"exited with code {exit_code} after {seconds / 60:.1f} min: {why}"


async def stop_as_culled(hub: Any, names: Sequence[str], url: str, token: str
                         ) -> dict[str, int]:
    """Stop every server as an idle culler would (STOP_CONCURRENCY at once); every other
    user's tab, left open, then polls the stopped server. The tabs' final statuses."""
    statuses: dict[str, int] = {}
    tabs: list[asyncio.Future[None]] = []

    async def tab(name: str) -> None:
        http = AsyncHTTPClient(force_instance=True)
        try:
            for i in range(TAB_POLLS_AFTER_STOP):
                status = await fetch_status(http, tab_request(url, token, name, i, 60))
                statuses[status] = statuses.get(status, 0) + 1
                await asyncio.sleep(TAB_INTERVAL)
        finally:
            http.close()

    async def stop(client: Any, index: int, name: str) -> None:
        try:
            outcome = await client.stop_server(name)
            if outcome.result is StopResult.STOPPING:
                await client.wait_for_server_stopped(name, timeout=300)
        except HubAPIError as e:
            log(f"k8s event: {name}'s server not stopped: {e}")
            return
        if index % 2 == 0:
            tabs.append(asyncio.ensure_future(tab(name)))

    async with admin_client(hub, concurrency=STOP_CONCURRENCY) as client:
        await gather_limited(
            [stop(client, i, n) for i, n in enumerate(names)], STOP_CONCURRENCY
        )
    await asyncio.gather(*tabs)
    return statuses


#: Given a run's name, what to call with its progress (a fresh display for each run).
ProgressDisplay = Callable[[str], Callable[[Progress], None]]


async def run_one(cluster: Any, work: Path, event: Crowd, stack: Stack, steady: float,
                  progress: ProgressDisplay | None = None) -> Result:
    from tests.k8s.test_e2e_pressure import reset_users, z2jh_hub

    values = stack.values(event)
    expected_interval = stack.activity_interval(values)
    plan = SimulationPlan(
        users=event.users, arrival=event.arrival, ramp_seconds=event.ramp_seconds,
        rate=event.rate, client="backoff", timeout=PATIENCE, activity_interval=expected_interval,
        working_tab_interval=TAB_INTERVAL, user_prefix="u-", cleanup=False,
    )
    directory = Path(tempfile.mkdtemp(dir=work))
    extra = "" if stack.ours else STOCK_CULLER_CONFIG
    log(f"k8s event: {event.title}, {stack.name}")
    try:
        async with z2jh_hub(cluster, directory, cluster.api, cluster.namespace, values,
                            extra, python=released_python()) as hub:
            assert hub.hub_pid is not None
            release = asyncio.Event()
            simulation = Simulation(hub.url, hub.token, plan, api_url=hub.api_url,
                                    timeline=stack.name, release=release)
            throttled, cpu, start = api_429s(cluster), hub_cpu_seconds(hub), await scrape(hub)
            running = asyncio.ensure_future(
                simulation.run(None if progress is None else progress(stack.name))
            )
            steady_window: Measured | None = None
            try:
                arrived = await everyone_arrived(simulation, running, hub)
                arrival_ended = time.monotonic()
                hub_ran = hub.hub_exit_code is None  # through the arrival
                if hub_ran:
                    arrival_cpu = hub_cpu_seconds(hub) - cpu
                    arrival = hub_load(start, await scrape(hub))
                    measured = await measure_unless_exited(hub, lambda: asyncio.sleep(steady))
                    steady_window = None if measured is None else measured[1]
                else:  # what it served until its last reading, by its own count
                    last = simulation.last_reading or start
                    arrival = hub_load(start, last)
                    arrival_cpu = (
                        math.nan if last.cpu_seconds is None or start.cpu_seconds is None
                        else last.cpu_seconds - start.cpu_seconds
                    )
                pods = await asyncio.to_thread(cluster.user_pods)
            finally:
                release.set()
                report = await running
            ready_after = tuple(math.inf if o.ready_after is None else o.ready_after
                                for o in simulation.outcomes)
            outcome = Outcome(report, arrival_cpu, [], ready_after)
            api_throttled = api_429s(cluster) - throttled
            timeline = simulation.timeline
            names = [o.name for o in simulation.outcomes if o.ready_after is not None]
            tabs: dict[str, int] = {}
            stopping: Measured | None = None
            if hub.hub_exit_code is None:
                measured_stop = await measure_unless_exited(
                    hub, lambda: stop_as_culled(hub, names, hub.url, hub.token)
                )
                if measured_stop is not None:
                    tabs, stopping = measured_stop
            hub_log = hub.log_text()
            exit_code = hub.hub_exit_code
            # An exit after the arrival is seen when a measurement fails: about then.
            exit_after = arrived if not hub_ran else arrived + time.monotonic() - arrival_ended
            exited = None if exit_code is None else exit_reason(exit_code, exit_after, hub_log)
            errors = sum("[E " in line for line in hub_log.splitlines())
            failed_spawns = failed_spawns_in_log(hub_log)
            rss = peak_rss_mib(hub.hub_pid)
            kept = kept_log(event, stack)
            kept.parent.mkdir(parents=True, exist_ok=True)
            kept.write_text(hub_log)
            log(f"k8s event: {stack.name}'s hub log kept in {kept}")
    finally:
        # The next hub starts from the same cluster (no pod, claim, volume or event left).
        seconds = await asyncio.to_thread(reset_users, cluster, cluster.namespace)
        log(f"k8s event: cluster put back in {seconds:.0f} s")
    loops = [x.max for x in (timeline.loop if timeline else [])
             if x.max is not None and x.elapsed <= arrived + SCRAPE_EVERY]
    guaranteed = sum(p.status.qos_class == "Guaranteed" for p in pods) / max(1, len(pods))
    result = Result(
        outcome=outcome, arrival=arrival, loop_max=max(loops, default=None), peak_rss=rss,
        errors=errors, failed_spawns=failed_spawns, guaranteed=guaranteed,
        api_429s=api_throttled,
        activity_interval=pod_activity_interval(pods), steady=steady_window,
        stopping=stopping, tabs_after_stop=tabs, timeline=timeline,
        governor=governor_changes(hub_log), exited=exited,
    )
    if result.activity_interval != expected_interval:
        log(f"k8s event: {stack.name}: the pods' activity interval is "
            f"{result.activity_interval} s, the simulated servers posted every "
            f"{expected_interval} s")
    log(f"k8s event: {stack.name}: {summary(result)}")
    return result


def summary(result: Result) -> str:
    r, o, load = result.report, result.outcome, result.arrival
    loop = None if load is None else load.loop_interval_p99
    return (f"ready {r.ready}/{r.users} ({r.failures or 'no failures'}), over all users "
            f"p50 {o.time_to_ready(50):.0f}s p99 {o.time_to_ready(99):.0f}s, "
            f"{'?' if load is None else load.refused} hub 429s, {result.api_429s} API 429s, "
            f"loop p99 {'?' if loop is None else f'{loop * 1000:.0f} ms'}, "
            f"{o.hub_cpu:.0f} hub CPU s, peak RSS {result.peak_rss:.0f} MiB, "
            f"{result.errors} ERROR lines, {result.guaranteed:.0%} Guaranteed; tabs left "
            f"open on stopped servers: {result.tabs_after_stop}; the admission governor's "
            f"limit changes: {result.governor or 'none'}; the hub "
            f"{result.exited or 'ran throughout'}")


def goal(measure: str, met: bool, target: str) -> str:
    """A measure's name with hub-resilience's goal and whether this run met it."""
    return f"{measure} (goal {target}: {'met' if met else 'MISSED'})"


def rows(event: Crowd, stock: Result, ours: Result) -> list[Row]:
    comparison = f"{event.title} on Kubernetes: {OURS.name} vs {STOCK.name}"
    nan = math.nan

    def hub(result: Result, name: str) -> float:
        load = result.arrival
        value = None if load is None else getattr(load, name)
        return nan if value is None else float(value)

    def ms(value: float | None) -> float:
        return nan if value is None else value * 1000

    def per_minute(result: Result) -> tuple[float, float]:
        window = result.steady
        if window is None:
            return nan, nan
        minutes = window.seconds / 60
        return window.load.requests / minutes, window.hub_cpu / minutes

    loop_p99 = hub(ours, "loop_interval_p99") * 1000
    table = [
        Row(comparison, f"time until ready, {label} of all users (s)",
            stock.outcome.time_to_ready(q), ours.outcome.time_to_ready(q), "lower")
        for q, label in ((50, "p50"), (90, "p90"), (99, "p99"), (100, "max"))
    ]
    table += [
        Row(comparison, goal("users without a server", ours.report.failed == 0, "0"),
            stock.report.failed, ours.report.failed, "lower", 0),
    ]
    reasons = sorted(set(stock.report.failures) | set(ours.report.failures))
    table += [Row(comparison, f"  of which {reason}", stock.report.failures.get(reason, 0),
                  ours.report.failures.get(reason, 0), "lower", 0) for reason in reasons]
    table += [
        Row(comparison, goal("hub process exits (JupyterHub's consecutive failure limit)",
                             ours.exited is None, "0"),
            int(stock.exited is not None), int(ours.exited is not None), "lower", 0),
        Row(comparison, goal("failed spawns (the hub's log)", ours.failed_spawns == 0, "0"),
            stock.failed_spawns, ours.failed_spawns, "lower", 0),
        Row(comparison, "spawn requests refused by the hub (429)", hub(stock, "refused"),
            hub(ours, "refused"), "lower", 0),
        Row(comparison, "Kubernetes API 429s (the API server's count)", stock.api_429s,
            ours.api_429s, "lower", 0),
        Row(comparison, "hub CPU seconds during the arrival", stock.outcome.hub_cpu,
            ours.outcome.hub_cpu, "lower"),
        Row(comparison, goal("hub event-loop interval p99 (ms)", loop_p99 < 100, "< 100"),
            hub(stock, "loop_interval_p99") * 1000, loop_p99, "lower"),
        Row(comparison, "hub event-loop interval max (ms, the histogram's bucket)",
            ms(stock.loop_max), ms(ours.loop_max), "lower"),
        Row(comparison, "hub peak RSS (MiB)", stock.peak_rss, ours.peak_rss, "lower", 0),
        Row(comparison, "hub requests during the arrival", hub(stock, "requests"),
            hub(ours, "requests"), "lower", 0),
    ]
    handlers = handler_kinds(stock, ours)
    table += [
        Row(comparison, f"  of which {handler}",
            (stock.arrival.by_handler.get(handler, 0) if stock.arrival else nan),
            (ours.arrival.by_handler.get(handler, 0) if ours.arrival else nan),
            "lower", 0)
        for handler in handlers
    ]
    table += [
        Row(comparison, goal("ERROR lines in the hub's log", ours.errors == 0, "0"),
            stock.errors, ours.errors, "lower", 0),
        Row(comparison, goal("user pods with Guaranteed QoS (share)", ours.guaranteed == 1,
                             "1"),
            stock.guaranteed, ours.guaranteed, "higher", 2),
        Row(comparison, "single-user activity interval (s, from a pod's environment)",
            stock.activity_interval or nan, ours.activity_interval or nan, "higher", 0),
    ]
    running = f"steady state, {min(stock.report.ready, ours.report.ready):,}+ servers running"
    for label, index in (("hub requests per minute", 0), ("hub CPU seconds per minute", 1)):
        table.append(Row(
            comparison, f"{running}: {label}",
            per_minute(stock)[index], per_minute(ours)[index], "lower", 1,
        ))

    def stopping(result: Result, measure: Callable[[Measured], float]) -> float:
        return nan if result.stopping is None else measure(result.stopping)

    table += [
        Row(comparison, "servers stopped as culled: seconds to stop them all",
            stopping(stock, lambda m: m.seconds), stopping(ours, lambda m: m.seconds),
            "lower", 0),
        Row(comparison, "  hub requests meanwhile (half the tabs left open)",
            stopping(stock, lambda m: m.load.requests),
            stopping(ours, lambda m: m.load.requests), "lower", 0),
        Row(comparison, "  hub CPU seconds meanwhile", stopping(stock, lambda m: m.hub_cpu),
            stopping(ours, lambda m: m.hub_cpu), "lower"),
    ]
    return table


def handler_kinds(*results: Result, share: float = 0.01) -> list[str]:
    """The hub's request handlers that served at least ``share`` of either hub's requests
    during the arrival, busiest first."""
    totals: dict[str, int] = {}
    for result in results:
        load = result.arrival
        if load is None or not load.requests:
            continue
        for handler, count in load.by_handler.items():
            if count >= share * load.requests:
                totals[handler] = max(totals.get(handler, 0), count)
    return sorted(totals, key=lambda h: -totals[h])


def nodes_for(users: int) -> int:
    """Enough nodes for ``users`` pods with room to spare (at most NODES)."""
    return min(NODES, max(2, math.ceil(users / 80)))


async def run(events: Sequence[Crowd] = EVENTS, *, steady: float = STEADY_SECONDS,
              nodes: int = NODES, chart: Path | None = None,
              progress: ProgressDisplay | None = None) -> list[Row]:
    """Each event against stock, then ours, on one cluster; the table (and, with ``chart``,
    a picture of each event's two runs: ``chart`` for the first, ``<stem>-2`` and on for
    the others). ``progress`` makes each run's progress display (the demo's line)."""
    from hub_resilience.tools.chart import draw
    from tests.k8s.cluster import LocalCluster, NodeShape, build_binaries

    table: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="hub-resilience-k8s-event-") as tmp:
        work = Path(tmp)
        bin_dir = await asyncio.to_thread(build_binaries, work / "logs" / "build.log")
        cluster = LocalCluster(
            work_dir=work / "cluster", bin_dir=bin_dir, node_count=nodes,
            node_shape=NodeShape(cpu=NODE_CPU, memory=NODE_MEMORY, pods=NODE_PODS),
        )
        await asyncio.to_thread(cluster.start)
        try:
            for number, event in enumerate(events, 1):
                stock = await run_one(cluster, work, event, STOCK, steady, progress)
                ours = await run_one(cluster, work, event, OURS, steady, progress)
                table += rows(event, stock, ours)
                if chart is not None and stock.timeline and ours.timeline:
                    path = chart if number == 1 else chart.with_stem(f"{chart.stem}-{number}")
                    draw([stock.timeline, ours.timeline], path,
                         title=f"{event.title} on Kubernetes ({nodes} nodes)")
                    log(f"k8s event: chart {path}")
        finally:
            await asyncio.to_thread(cluster.stop)
    return table


async def quick(chart: Path | None = None) -> list[Row]:
    """A smoke-sized run (the figures mean little)."""
    return await run((Crowd("60 users over 1 minute", 60, Arrival.RAMP, 60.0),),
                     steady=30.0, nodes=nodes_for(60), chart=chart)


def missed_goals(table: Sequence[Row]) -> list[Row]:
    """The rows whose goal hub-resilience missed in this run."""
    return [row for row in table if row.measure.endswith(": MISSED)")]
