"""Activity load from 1,000 running servers: zero-to-jupyterhub's default intervals against the
intervals :func:`hub_resilience.configure` tunes.

Every single-user server POSTs its activity to the hub every ``JUPYTERHUB_ACTIVITY_INTERVAL``
seconds, and the hub polls the proxy's routes every ``JupyterHub.last_activity_interval``
seconds. The defaults (300 s, 300 s, ``activity_resolution`` 30 s) are what z2jh runs; the
tuned ones are what ``configure(c, expected_concurrent_servers=1000,
activity_requests_per_second=BUDGET)`` sets.

1,000 simulated servers (SimulatedSpawner, really running as far as the hub and the proxy
know) report activity through a client loop that posts to ``/hub/api/users/:name/activity``
at each server's interval, with the servers' first reports spread over one interval as real
servers' are. Time is compressed: every interval is divided by ``speedup`` (30 by default,
so the default 300 s becomes 10 s), the hub runs with its intervals divided the same way,
and both configurations are measured over the same window. Rates are therefore ``speedup``
times the real ones; the ratio between the two configurations is what carries over.
"""
from __future__ import annotations

import asyncio
import math
import random
from datetime import datetime, timezone

from traitlets.config import Config

from benchmarks.common import (
    Row,
    admin_client,
    bench_hub,
    create_users,
    hub_cpu_seconds,
    log,
    scrape,
    start_servers,
)
from hub_resilience import configure
from hub_resilience.hub.activity import (
    DEFAULT_HUB_INTERVAL,
    DEFAULT_RESOLUTION,
    DEFAULT_SINGLEUSER_INTERVAL,
)
from hub_resilience.hubclient import HubAPIError, HubClient
from hub_resilience.tools.loadreport import hub_load
from hub_resilience.tools.localhub import LocalHub


def tuned_intervals(servers: int, budget: float) -> tuple[int, int, int]:
    """(single-user interval, hub interval, resolution) as configure() sets them."""
    c = Config()
    wiring = configure(
        c, spawner_class=None, stopped_handler=False, cull=False,
        expected_concurrent_servers=servers, activity_requests_per_second=budget,
    )
    a = wiring.activity
    return a.singleuser_interval, a.hub_interval, a.activity_resolution


def hub_config(hub_interval: float, resolution: float) -> str:
    # JupyterHub's settings are whole seconds.
    return f"""
c.JupyterHub.concurrent_spawn_limit = 0
c.JupyterHub.last_activity_interval = {max(1, round(hub_interval))}
c.JupyterHub.activity_resolution = {max(1, round(resolution))}
"""


async def post_activity_forever(client: HubClient, names: list[str], interval: float) -> None:
    """Each server reports every ``interval`` seconds, the first report at a random time."""

    async def server(name: str) -> None:
        await asyncio.sleep(random.uniform(0, interval))
        while True:
            now = datetime.now(timezone.utc)
            try:
                await client.post_activity(name, last_activity=now, servers={"": now})
            except HubAPIError:
                pass  # counted by the hub's metrics like any request it answered
            await asyncio.sleep(interval)

    await asyncio.gather(*(server(n) for n in names))


async def measure_window(
    hub: LocalHub, client: HubClient, names: list[str], interval: float, window: float
) -> tuple[float, float]:
    """(hub requests per second, hub CPU seconds) over ``window`` seconds of activity."""
    posting = asyncio.ensure_future(post_activity_forever(client, names, interval))
    try:
        await asyncio.sleep(min(interval, 5.0))  # the reports are under way
        before, cpu = await scrape(hub), hub_cpu_seconds(hub)
        await asyncio.sleep(window)
        cpu = hub_cpu_seconds(hub) - cpu
        load = hub_load(before, await scrape(hub))
    finally:
        posting.cancel()
        await asyncio.gather(posting, return_exceptions=True)
    return load.requests / window, cpu


async def run(servers: int = 1000, budget: float = 2.0, speedup: float = 30.0) -> list[Row]:
    tuned = tuned_intervals(servers, budget)
    default = (DEFAULT_SINGLEUSER_INTERVAL, DEFAULT_HUB_INTERVAL, DEFAULT_RESOLUTION)
    # One longest interval of either configuration: with the servers' reports spread evenly
    # over their interval, every server reports the same number of times in any such window.
    window = max(max(tuned[:2]), max(default[:2])) / speedup
    results = {}
    async with bench_hub(hub_config(default[1] / speedup, default[2] / speedup)) as hub:
        async with admin_client(hub, concurrency=50) as client:
            names = [f"a{i:05d}" for i in range(servers)]
            log(f"activity: creating and starting {servers} servers")
            await create_users(client, names)
            await start_servers(client, names)
            for label, (singleuser, hub_interval, resolution) in (
                ("default", default), ("tuned", tuned)
            ):
                if label == "tuned":
                    hub.write_config(
                        hub_config(hub_interval / speedup, resolution / speedup)
                    )
                    log("activity: restarting the hub with the tuned intervals")
                    await hub.restart()
                log(f"activity: {label} intervals {singleuser}/{hub_interval}/{resolution} s, "
                    f"{window:.0f} s window at {speedup:g}x speed")
                results[label] = await measure_window(
                    hub, client, names, singleuser / speedup, window
                )
            await asyncio.gather(*(client.stop_server(n) for n in names))
    title = (f"activity from {servers:,} servers (time {speedup:g}x; tuned for "
             f"{budget:g} requests/s: {tuned[0]}/{tuned[1]}/{tuned[2]} s vs "
             f"{default[0]}/{default[1]}/{default[2]} s)")
    simulated_minutes = math.floor(window * speedup / 60)
    return [
        Row(title, "hub requests per second", results["default"][0], results["tuned"][0],
            "lower"),
        Row(title, f"hub CPU seconds per {window:.0f} s ({simulated_minutes} simulated min)",
            results["default"][1], results["tuned"][1], "lower", 2),
    ]
