"""What a route check costs at 1,000 and 5,000 routes: JupyterHub's ``proxy.get_all_routes()``
(the proxy's whole table, read) and a whole ``proxy.check_routes()`` (read, then compared with
every server the hub has), with every route present, so the check changes nothing; and the
one check that puts every route back after the proxy restarted with an empty table.

Route repair runs that check every ``HubResilience.route_check_interval`` (30 s), on top of
the one JupyterHub makes every ``last_activity_interval`` (300 s once configure() has tuned
it); docs/service.md ("Routes after a proxy restart") has the figures.

The proxy is the real configurable-http-proxy, its N routes added through its API by
JupyterHub's own ``ConfigurableHTTPProxy.add_user``. The check is JupyterHub's own code too:
its ``ConfigurableHTTPProxy`` and N real ``User`` objects, each with a running default server
(``Spawner`` objects over an in-memory database), in this process, which stands for the hub
(starting 5,000 simulated servers in a real hub would take most of an hour, and a check
reads nothing else of the hub). CPU is this process's own (user + system, so the hub's
share) and, apart, the proxy process's, from ``/proc``.
"""
from __future__ import annotations

import asyncio
import logging
import os
import secrets
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from benchmarks.common import Row, gather_limited, log
from hub_resilience.tools.loadreport import cpu_seconds_from_stat
from hub_resilience.tools.localhub import LOOPBACK, start_proxy, terminate, unused_port

#: JupyterHub's own check with the intervals configure() tunes, and route repair's.
HUB_INTERVAL = 300
REPAIR_INTERVAL = 30
SERVICE_ROUTE = "/user/"  # the stopped-server handler's, one of Proxy.extra_routes


@dataclass(frozen=True)
class Cost:
    """One operation, in milliseconds: the median wall time over the repeats, and the mean
    CPU time (the proxy's is counted in clock ticks of 10 ms: only a mean resolves it)."""

    wall: float
    cpu: float  # this process: the hub's share
    proxy_cpu: float  # the proxy process

    def __str__(self) -> str:
        return (f"{self.wall:.1f} ms wall, {self.cpu:.1f} ms hub CPU, "
                f"{self.proxy_cpu:.1f} ms proxy CPU")


def process_cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        return cpu_seconds_from_stat(f.read(), os.sysconf("SC_CLK_TCK"))


async def cost(operation: Callable[[], Awaitable[Any]], proxy_pid: int, repeats: int) -> Cost:
    walls = []
    proxy_before, cpu_before = process_cpu(proxy_pid), time.process_time()
    for _ in range(repeats):
        started = time.perf_counter()
        await operation()
        walls.append(time.perf_counter() - started)
    cpu = (time.process_time() - cpu_before) / repeats
    proxy_cpu = (process_cpu(proxy_pid) - proxy_before) / repeats
    return Cost(1e3 * statistics.median(walls), 1e3 * cpu, 1e3 * proxy_cpu)


def hub_users(count: int, target_port: int) -> dict[str, Any]:
    """``count`` JupyterHub users, each with a running default server on loopback, as the
    hub's ``UserDict`` holds them (name -> User)."""
    from jupyterhub import orm
    from jupyterhub.objects import Hub
    from jupyterhub.spawner import Spawner
    from jupyterhub.user import User
    from traitlets.config import Config

    db = orm.new_session_factory("sqlite://")()
    settings = {
        "hub": Hub(ip=LOOPBACK, port=unused_port(), base_url="/hub/", routespec="/"),
        "spawner_class": Spawner, "config": Config(), "base_url": "/", "domain": "",
    }
    users: dict[str, Any] = {}
    for i in range(count):
        orm_user = orm.User(name=f"user{i:05d}")
        db.add(orm_user)
        orm_spawner = orm.Spawner(user=orm_user, name="")
        orm_spawner.server = orm.Server(ip=LOOPBACK, port=target_port,
                                        base_url=f"/user/{orm_user.name}/")
        db.add(orm_spawner)
        users[orm_user.name] = orm_user
    db.commit()
    return {name: User(orm_user, settings, db=db) for name, orm_user in users.items()}


@dataclass(frozen=True)
class Figures:
    routes: Cost  # get_all_routes, every route present
    check: Cost  # check_routes, every route present: nothing to change
    repair: Cost  # one check_routes after the proxy restarted empty: every route added


async def measure(count: int, repeats: int, directory: Path) -> Figures:
    """The costs with ``count`` user routes (and the hub's and the handler's)."""
    from jupyterhub.proxy import ConfigurableHTTPProxy

    api_port, token = unused_port(), secrets.token_hex(24)
    hub_port, target_port = unused_port(), unused_port()  # nothing is requested through them

    async def new_proxy() -> asyncio.subprocess.Process:
        return await start_proxy(
            port=unused_port(), api_port=api_port, token=token,
            default_target=f"http://{LOOPBACK}:{hub_port}",
            log_path=directory / f"proxy-{count}.log",
        )

    processes = [await new_proxy()]
    try:
        users = hub_users(count, target_port)
        hub = next(iter(users.values())).settings["hub"]
        quiet = logging.getLogger("benchmarks.route_check.proxy")
        changes: list[logging.LogRecord] = []
        quiet.addHandler(_Recorder(changes))
        quiet.propagate = False
        proxy = ConfigurableHTTPProxy(
            api_url=f"http://{LOOPBACK}:{api_port}", auth_token=token, should_start=False,
            extra_routes={SERVICE_ROUTE: f"http://{LOOPBACK}:{unused_port()}"},
            hub=hub, app=SimpleNamespace(hub=hub, subdomain_host=""), log=quiet,
        )
        began = time.monotonic()
        await proxy.add_hub_route(hub)
        await gather_limited([proxy.add_user(user) for user in users.values()], 20)
        log(f"route check: {count:,} routes added in {time.monotonic() - began:.0f} s")
        await proxy.check_routes(users, {})  # adds the extra route: the table is complete
        changes.clear()
        routes = await cost(proxy.get_all_routes, processes[-1].pid, repeats)
        check = await cost(lambda: proxy.check_routes(users, {}), processes[-1].pid, repeats)
        if changes:  # every route was present: a check that changed one measured something else
            raise RuntimeError(f"the checks changed routes: {changes[0].getMessage()}")
        await terminate(processes[-1])
        processes.append(await new_proxy())
        repair = await cost(lambda: proxy.check_routes(users, {}), processes[-1].pid, 1)
        restored = len(await proxy.get_all_routes())
        if restored != count + 2:
            raise RuntimeError(f"the repair restored {restored} of {count + 2} routes")
        return Figures(routes, check, repair)
    finally:
        for process in processes:
            await terminate(process)


class _Recorder(logging.Handler):
    """Keeps what JupyterHub's proxy logs at WARNING: each route a check added or deleted."""

    def __init__(self, records: list[logging.LogRecord]) -> None:
        super().__init__(logging.WARNING)
        self.records = records

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


async def run(sizes: tuple[int, ...] = (1000, 5000), repeats: int = 50) -> list[Row]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="hub-resilience-route-check-") as directory:
        for count in sizes:
            figures = await measure(count, repeats, Path(directory))
            check = figures.check
            log(f"route check at {count:,} routes (wall: median of {repeats}; CPU: mean): "
                f"get_all_routes {figures.routes}; check_routes {check}; after a proxy "
                f"restart, the check that adds them all back: {figures.repair}")
            title = (f"route check, {count:,} routes all present: JupyterHub's every "
                     f"{HUB_INTERVAL} s vs also route repair's every {REPAIR_INTERVAL} s")
            per_hour = 3600 / HUB_INTERVAL, 3600 / HUB_INTERVAL + 3600 / REPAIR_INTERVAL
            rows += [
                Row(title, "hub CPU seconds per hour", check.cpu / 1e3 * per_hour[0],
                    check.cpu / 1e3 * per_hour[1], "lower", 2),
                Row(title, "proxy CPU seconds per hour", check.proxy_cpu / 1e3 * per_hour[0],
                    check.proxy_cpu / 1e3 * per_hour[1], "lower", 2),
            ]
    return rows
