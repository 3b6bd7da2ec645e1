"""500 users arriving at once at a hub with ``concurrent_spawn_limit`` 20.

A client that resends a refused spawn at once (as an impatient user hammering "Start", or a
naive script) against this package's backoff client, which waits out the hub's 429s as its
``Retry-After`` says, with jitter. Both are :mod:`hub_resilience.tools.simulate` runs on the same
hub, one after the other; measured: the requests the hub had to refuse (its 429s), the time
until every user has a ready server, and the hub's CPU seconds meanwhile.

The hub keeps JupyterHub's default ``spawn_throttle_retry_range`` (30 to 60 s), and each
simulated server takes ``start_delay`` seconds to start.
"""
from __future__ import annotations

from benchmarks.common import Row, bench_hub, hub_cpu_seconds, log
from hub_resilience.tools.loadreport import LoadReport
from hub_resilience.tools.simulate import Simulation, SimulationPlan

TITLE = "500 users at once, concurrent_spawn_limit 20"


async def run(users: int = 500, spawn_limit: int = 20, start_delay: float = 2.0) -> list[Row]:
    config = f"""
c.JupyterHub.concurrent_spawn_limit = {spawn_limit}
c.SimulatedSpawner.start_delay = {start_delay!r}
"""
    title = f"{users} users at once, concurrent_spawn_limit {spawn_limit}"
    results = {}
    for client in ("immediate", "backoff"):
        # A fresh hub for each client: the same starting point, and no clean-up to wait for.
        async with bench_hub(config) as hub:
            plan = SimulationPlan(
                users=users, client=client, timeout=900, user_prefix="u-", cleanup=False
            )
            log(f"spawn burst: {users} users, {client} client")
            cpu = hub_cpu_seconds(hub)
            report = await Simulation(hub.url, hub.token, plan, api_url=hub.api_url).run()
            results[client] = (report, hub_cpu_seconds(hub) - cpu)
            log(f"spawn burst: {client}: ready {report.ready}/{users} in "
                f"{report.duration:.1f}s, {report.hub.refused if report.hub else '?'} refused")
    naive, naive_cpu = results["immediate"]
    ours, ours_cpu = results["backoff"]
    # A client that breaks the hub (users who never got a server, a hub too swamped to be
    # scraped) is the result this table exists to show: reported, never an abort.
    for client, (report, _) in results.items():
        if report.failed or report.hub is None:
            log(f"spawn burst: {client}: {report.failed} users without a server "
                f"({report.failures}); hub metrics {'read' if report.hub else 'unreadable'}")
    return [
        Row(title, "users with a ready server", naive.ready, ours.ready, "higher", 0),
        Row(title, "users who got no server (failed or gave up)", naive.failed, ours.failed,
            "lower", 0),
        Row(title, "spawn requests the hub refused (429)", refused(naive), refused(ours),
            "lower", 0),
        Row(title, "seconds until the last user's outcome", naive.duration, ours.duration,
            "lower"),
        Row(title, "hub CPU seconds", naive_cpu, ours_cpu, "lower"),
    ]


def refused(report: LoadReport) -> float:
    """The hub's 429s during the run; NaN when the hub's metrics could not be read."""
    return float("nan") if report.hub is None else report.hub.refused
