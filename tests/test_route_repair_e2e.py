"""Route repair end to end: a real JupyterHub and configurable-http-proxy, the package
switched on by configure() with the activity intervals tuned for 1,000 servers (so the hub's
own route check runs only every 300 s), and the proxy killed and restarted with an empty
route table, as when z2jh's proxy pod is replaced.

User servers are simulated (:class:`hub_resilience.tools.simulated_spawner.SimulatedSpawner`);
the hub, the proxy, the service and every request through the proxy are real.
"""
from __future__ import annotations

import asyncio
import math
import time

import pytest

from hub_resilience.service.running import CONFIRMED_FOR
from hub_resilience.settings import HubResilience
from tests.support.hub import (
    RunningHub,
    create_users,
    fetch,
    handler_answers,
    metric_sum,
    running_hub,
    start_servers,
    unused_port,
    user_token,
)

pytestmark = pytest.mark.hub

SERVERS = 1000  # the hub's size: last_activity_interval 300 s
RUNNING = ("alice", "bob", "carol")
STOPPED = "dave"
#: Within this many seconds of the proxy's restart, every route is back (issue 17).
REPAIRED_WITHIN = 60.0
#: How often the open tab polls its server's status, and how many of the hub's redirects
#: it follows (a browser's fetch follows them; the hub's second one would wait 2 s).
POLL_EVERY = 0.1
HOPS = 2

CONFIG = """
c.HubResilience.spawner_class = None  # keep the base config's SimulatedSpawner
c.HubResilience.service_port = {port}
c.HubResilience.expected_concurrent_servers = {servers}
c.HubResilience.cull = False  # no culler requests among the hub's
{extra}
from hub_resilience import configure
configure(c)
print("last_activity_interval =", c.JupyterHub.last_activity_interval, flush=True)
"""


def hub_config(port: int, extra: str = "") -> str:
    return CONFIG.format(port=port, servers=SERVERS, extra=extra)


class Tab:
    """An open JupyterLab tab of alice's running server, polling its status through the
    proxy with her credentials and following the hub's redirects as a browser would; every
    answer of every poll is kept."""

    def __init__(self, hub: RunningHub, token: str) -> None:
        self.hub = hub
        self.headers = {"Authorization": f"token {token}"}
        self.polls: list[list[tuple[int, str]]] = []  # (status, Location) of each hop

    async def poll(self) -> list[tuple[int, str]]:
        url, hops = f"{self.hub.url}/user/alice/api/status", []
        for _ in range(HOPS):
            response = await fetch(url, headers=self.headers)
            location = response.headers.get("Location", "")
            hops.append((response.code, location))
            if response.code != 302:
                break
            url = self.hub.url + location
        self.polls.append(hops)
        return hops

    async def run(self) -> None:
        while True:
            await self.poll()
            await asyncio.sleep(POLL_EVERY)


async def missing_routes(hub: RunningHub, expected: set[str]) -> set[str]:
    return expected - set(await hub.proxy_routes())


async def test_routes_are_back_within_a_minute_of_a_proxy_restart() -> None:
    port = unused_port()
    assert HubResilience(expected_concurrent_servers=SERVERS).activity_settings().hub_interval \
        >= 300
    async with running_hub(hub_config(port)) as hub, hub.client() as client:
        await create_users(client, [*RUNNING, STOPPED])
        await start_servers(client, [(name, "") for name in (*RUNNING, STOPPED)])
        await client.stop_server(STOPPED)
        assert await client.wait_for_server_stopped(STOPPED, timeout=60)
        log = hub.log_text()
        assert "last_activity_interval = 300" in log  # the hub's own check: every 5 minutes
        assert "Route repair: the proxy's routes are checked every 30s" in log
        token = await user_token(client, "alice")
        expected = {f"/user/{name}" for name in RUNNING} | {"/user"}
        assert not await missing_routes(hub, expected)

        await hub.restart_proxy()
        restarted = time.monotonic()
        assert await missing_routes(hub, expected) == expected  # an empty route table
        tab = Tab(hub, token)
        polling = asyncio.ensure_future(tab.run())
        try:
            while missing := await missing_routes(hub, expected):
                assert time.monotonic() - restarted < REPAIRED_WITHIN, (
                    f"routes still missing {REPAIRED_WITHIN:g} s after the proxy restart: "
                    f"{sorted(missing)}"
                )
                await asyncio.sleep(0.2)
            repaired = time.monotonic() - restarted
        finally:
            polling.cancel()
        for _ in range(3):
            await tab.poll()

        # The tab was never told that its server stopped: during the gap the hub sent it
        # back to the server (its route missing), after it the server answered.
        answers = [hop for poll in tab.polls for hop in poll]
        assert all(status in (200, 302) for status, _ in answers), tab.polls
        assert tab.polls[-1] == [(200, "")], tab.polls
        gap = [poll for poll in tab.polls if poll[0][0] == 302]
        assert gap, f"no poll fell into the gap (repaired after {repaired:.1f} s)"
        assert all(poll == [(302, "/hub/user/alice/api/status"),
                            (302, "/user/alice/api/status?redirects=1")] for poll in gap), gap

        # Every running server answers through its own route again...
        for name in RUNNING:
            path = f"/user/{name}/api/status"
            response = await fetch(hub.url + path)
            assert response.code == 200, (name, response.code)
            assert response.body.decode() == f"simulated single-user server: {path}\n"
        # ...and a stopped one through the handler's route, not the hub.
        before = await handler_answers(port)
        response = await fetch(f"{hub.url}/user/{STOPPED}/api/kernels")
        assert response.code == 424
        assert await handler_answers(port) == before + 1

        log = hub.log_text()
        assert "Adding missing route for /user/alice/" in log  # JupyterHub's own check did it
        assert "Traceback" not in log


async def test_a_running_server_whose_route_alone_is_lost_is_never_told_it_stopped() -> None:
    """alice's route alone is deleted from the proxy while her server runs: her tab's polls
    now reach the stopped-server handler, which finds her server in its one listing of the
    hub's running servers and sends them to the hub (GET) or asks to retry (POST), never
    "stopped", until route repair (the default 30 s) puts the route back. dave's stopped
    server is still answered by the handler alone, from that same listing."""
    port = unused_port()
    async with running_hub(hub_config(port)) as hub, hub.client() as client:
        await create_users(client, ["alice", STOPPED])
        await start_servers(client, [("alice", "")])
        token = await user_token(client, "alice")
        headers = {"Authorization": f"token {token}"}
        await hub.remove_proxy_route("/user/alice")
        removed = time.monotonic()
        route_missing = await handler_answers(port, kind="route_missing")
        tab = Tab(hub, token)
        polling = asyncio.ensure_future(tab.run())
        try:
            save = await fetch(f"{hub.url}/user/alice/api/contents/a.ipynb", method="PUT",
                               body="{}", headers=headers)
            while await missing_routes(hub, {"/user/alice"}):
                assert time.monotonic() - removed < REPAIRED_WITHIN, "alice's route not back"
                await asyncio.sleep(0.2)
        finally:
            polling.cancel()
        await tab.poll()
        stopped = await fetch(f"{hub.url}/user/{STOPPED}/api/kernels", headers=headers)

        assert (save.code, save.headers.get("Retry-After")) == (503, "5"), save.body
        assert b"is running" in save.body
        answers = [hop for poll in tab.polls for hop in poll]
        assert all(status in (200, 302) for status, _ in answers), tab.polls
        assert tab.polls[-1] == [(200, "")], tab.polls
        gap = [poll for poll in tab.polls if poll[0][0] == 302]
        assert gap and all(poll[0] == (302, "/hub/user/alice/api/status") for poll in gap), gap
        assert await handler_answers(port, kind="route_missing") >= route_missing + len(gap) + 1
        assert stopped.code == 424  # dave: stopped, answered without asking the hub again
        # What the gap cost the hub beyond the redirects: one listing of running servers
        # (max_age 30 s; the gap lasts up to the 30 s of route repair, so at most one more)
        # and one check of alice with the hub per CONFIRMED_FOR, however many polls.
        asked = await metric_sum(
            f"http://127.0.0.1:{port}/metrics", "hub_resilience_hub_api_requests_total",
            component="stopped_handler",
        )
        lookups = math.ceil((time.monotonic() - removed) / CONFIRMED_FOR)
        assert 1 <= asked <= 2 + lookups, (asked, len(tab.polls))
        assert len(tab.polls) > 2 + lookups  # so the bound says something
        log = hub.log_text()
        assert "Adding missing route for /user/alice/" in log
        assert "Traceback" not in log
