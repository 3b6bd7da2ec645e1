"""Culling a hub of 5,000 users: jupyterhub-idle-culler (from PyPI) against this culler.

One hub with 5,000 users, 1,000 of whom have a running (simulated) server. Two cycles per
culler, each culler in its own process (:mod:`benchmarks.cull_runner`), one after the other
on the same hub:

- a *steady* cycle, when nobody is idle yet (the culler's timeout is an hour): what every
  cycle costs the hub while a workshop runs;
- a *cull* cycle, when every server has been idle longer than the timeout (one second here,
  so nobody has to wait an hour): the 1,000 servers are stopped. Between the two cullers'
  cull cycles the servers are started again.

Measured per cycle: the hub API requests it served (from its own metrics), its CPU seconds
(from /proc), and the cycle's wall-clock time as the culler itself measures it. Both cullers
run with zero-to-jupyterhub's defaults (jupyterhub-idle-culler: ``--concurrency=10``, the
hub's page size; ours: its defaults), and neither deletes users (z2jh's ``cull.users`` is off).
"""
from __future__ import annotations

import asyncio
import json
import os
import sys

from benchmarks.common import (
    Measured,
    Row,
    admin_client,
    bench_hub,
    count_active,
    create_users,
    log,
    measure,
    start_servers,
)
from hub_resilience.tools.localhub import LocalHub

CULLERS = ("jupyterhub-idle-culler", "hub-resilience")


async def run_culler(hub: LocalHub, culler: str, timeout: float) -> tuple[dict, Measured]:
    async def cycle() -> dict:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "benchmarks.cull_runner", culler,
            "--api-url", hub.api_url, "--timeout", str(timeout),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env=dict(os.environ, JUPYTERHUB_API_TOKEN=hub.token),
        )
        out, err = await process.communicate()
        if process.returncode != 0:
            raise RuntimeError(f"{culler} failed ({process.returncode}): {err.decode()[-2000:]}")
        return json.loads(out.decode().strip().splitlines()[-1])

    return await measure(hub, cycle)


async def run(users: int = 5000, servers: int = 1000) -> list[Row]:
    title = f"culling {users:,} users ({servers:,} with a server)"
    config = """
c.JupyterHub.concurrent_spawn_limit = 0
c.SimulatedSpawner.start_delay = 0
"""
    steady: dict[str, tuple[dict, Measured]] = {}
    cull: dict[str, tuple[dict, Measured]] = {}
    async with bench_hub(config) as hub, admin_client(hub) as client:
        names = [f"u{i:05d}" for i in range(users)]
        log(f"culling: creating {users} users")
        await create_users(client, names)
        with_server = names[:: max(1, users // servers)][:servers]
        log(f"culling: starting {len(with_server)} servers")
        await start_servers(client, with_server)
        for culler in CULLERS:
            log(f"culling: steady cycle, {culler}")
            steady[culler] = await run_culler(hub, culler, timeout=3600)
            if await count_active(client) != len(with_server):
                raise RuntimeError(f"{culler} culled servers that were not idle")
        for culler in CULLERS:
            if await count_active(client) != len(with_server):
                log(f"culling: starting {len(with_server)} servers again")
                await start_servers(client, with_server)
            await asyncio.sleep(2.5)  # everyone idle for longer than the 1 s timeout
            log(f"culling: cull cycle, {culler}")
            cull[culler] = await run_culler(hub, culler, timeout=1)
            left = await count_active(client)
            if left:
                raise RuntimeError(f"{culler} left {left} idle servers running")
    rows = []
    for phase, results in (("steady cycle (nobody idle)", steady),
                           (f"cull cycle ({servers:,} idle servers)", cull)):
        (_, stock), (_, ours) = results[CULLERS[0]], results[CULLERS[1]]
        (stock_run, _), (ours_run, _) = results[CULLERS[0]], results[CULLERS[1]]
        rows += [
            Row(title, f"{phase}: hub API requests", stock.load.requests, ours.load.requests,
                "lower", 0),
            Row(title, f"{phase}: hub CPU seconds", stock.hub_cpu, ours.hub_cpu, "lower", 2),
            Row(title, f"{phase}: cycle seconds", stock_run["seconds"], ours_run["seconds"],
                "lower", 2),
        ]
    return rows
