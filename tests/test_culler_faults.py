"""The culler under injected faults, and its run loop's guarantees.

A fault proxy sits between the culler and the real hub API and answers a share of requests
with 400, 404, 429 (with Retry-After in seconds, as an HTTP-date, and without), 500,
connection resets and malformed JSON. The culler must keep running through all of it, cull
everything it should once the faults clear, touch no active server, and never delete a user
while one of their servers is still stopping (audited against the hub at the moment each
deletion arrives).

As in test_culler_hub.py, the culler's clock runs an hour ahead so that servers started
during the test count as idle (the hub itself is real, its servers simulated).
"""
from __future__ import annotations

import asyncio
import os
import signal
from datetime import datetime, timedelta, timezone
from urllib.parse import quote

import pytest
from tornado.httpclient import AsyncHTTPClient

from hub_resilience.hubclient import HubClient
from hub_resilience.service.culler import Culler
from hub_resilience.service.metrics import REGISTRY
from tests.support.faultproxy import FAULT_KINDS, DeletionAuditor, FaultProxy
from tests.support.hub import (
    create_users,
    gather_limited,
    running_hub,
    start_servers,
    unused_port,
    wait_until,
)

AHEAD = timedelta(hours=1)

HUB_CONFIG = """
c.JupyterHub.allow_named_servers = True
c.JupyterHub.concurrent_spawn_limit = 0
c.SimulatedSpawner.honour_user_options = True
c.Spawner.start_timeout = 7200
# As z2jh: a start is answered at once (202); the servers meant to stay pending cost no wait.
c.JupyterHub.tornado_settings = {"slow_stop_timeout": 0.5, "slow_spawn_timeout": 0}
"""


class ClockAhead(Culler):
    def now(self) -> datetime:
        return super().now() + AHEAD


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def active_servers(client: HubClient) -> set[tuple[str, str]]:
    found = set()
    async for user in client.iter_users(state="active"):
        found.update((user["name"], s) for s in user["servers"])
    return found


@pytest.mark.hub
async def test_culler_keeps_going_through_faults_and_finishes_once_they_clear() -> None:
    idle_servers = [f"idle{i:02d}" for i in range(30)]
    slow_servers = [f"slow{i:02d}" for i in range(8)]  # 202 on stop: slower than the hub waits
    idle_named = [f"named{i:02d}" for i in range(10)]
    idle_no_server = [f"nosrv{i:02d}" for i in range(25)]
    active = [f"active{i:02d}" for i in range(25)]  # servers in use
    active_no_server = [f"back{i:02d}" for i in range(10)]  # logged in recently, no server
    pending = [f"pending{i:02d}" for i in range(5)]
    every_user = (
        idle_servers + slow_servers + idle_named + idle_no_server + active + active_no_server
        + pending
    )
    async with running_hub(HUB_CONFIG) as hub, hub.client() as client:
        await create_users(client, every_user)
        await create_users(client, ["admin-idle"], admin=True)
        await start_servers(client, [(n, "") for n in idle_servers + active + ["admin-idle"]])
        await start_servers(client, [(n, "", {"stop_delay": 2}) for n in slow_servers])
        await start_servers(client, [(n, "lab") for n in idle_named])
        await start_servers(client, [(n, "", {"start_delay": 3600}) for n in pending], wait=False)
        when = datetime.now(timezone.utc) + AHEAD - timedelta(minutes=5)
        await gather_limited(
            (client.post_activity(n, last_activity=when, servers={"": when}) for n in active), 8
        )
        await gather_limited(
            (client.post_activity(n, last_activity=when) for n in active_no_server), 8
        )

        auditor = DeletionAuditor(client, "/hub/api")
        proxy = FaultProxy(hub.api_url, seed=20240601, rate=0.3, retry_after=0.3,
                           on_forward=auditor)
        async with proxy:
            culler = ClockAhead(
                api_url=proxy.proxied(hub.api_url),
                api_token=hub.token,
                timeout=1800,
                cull_every=0.5,
                cull_users=True,
                api_page_size=10,
                recheck_after=0,  # re-check every server: more requests, more faults
                stop_wait_timeout=1,
                backoff_base=0.05,
                backoff_cap=0.5,
                retry_after_cap=2,
                retry_max_attempts=3,
                retry_deadline=10,
                request_timeout=10,
            )
            skipped_before = sum(
                metric("hub_resilience_culler_skipped_total", reason=r)
                for r in ("error", "malformed")
            )
            task = asyncio.create_task(culler.run_forever())
            await wait_until(lambda: culler.cycles_run >= 4 or task.done(), timeout=600,
                             what="four cycles under faults")
            assert not task.done(), "the culler stopped under faults"
            assert set(proxy.injected) == set(FAULT_KINDS)
            # The faults did hit the culler's work (and were absorbed, not fatal).
            skipped = sum(
                metric("hub_resilience_culler_skipped_total", reason=r)
                for r in ("error", "malformed")
            )
            assert skipped > skipped_before

            proxy.stop_faults()
            faulty_cycles = culler.cycles_run
            # Once the faults clear, a cycle that finds nothing left to do must follow.
            await wait_until(
                lambda: task.done() or (
                    culler.cycles_run > faulty_cycles + 1 and culler.last_report.quiet
                ),
                timeout=600, what="a quiet cycle after the faults cleared",
            )
            culler.stop()
            await asyncio.wait_for(task, 120)  # returns normally: no exception escaped

        # Exactly the right servers and users are left.
        assert await active_servers(client) == {(n, "") for n in active + pending}
        remaining = sorted([u["name"] async for u in client.iter_users()])
        assert remaining == sorted(active + active_no_server + pending + ["admin-idle"])
        # No deletion reached the hub while the user had a server (stopping or otherwise).
        assert auditor.violations == []
        assert set(slow_servers) <= set(auditor.checked)
        # No stop request for an active or pending server was ever forwarded.
        untouchable = {f"/hub/api/users/{quote(n)}/server" for n in active + pending}
        assert not [r for r in proxy.records if r.method == "DELETE" and r.path in untouchable]


async def test_culler_survives_an_unreachable_hub_and_reports_overruns() -> None:
    # Nothing listens on this port: every request is refused and retried until the
    # deadline, so each cycle fails, and lasts longer than the 0.1 s period.
    culler = Culler(
        api_url=f"http://127.0.0.1:{unused_port()}/hub/api",
        api_token="unused",
        timeout=60,
        cull_every=0.1,
        backoff_base=0.05,
        backoff_cap=0.3,
        retry_max_attempts=1000,
        retry_deadline=0.6,
    )
    errors = metric("hub_resilience_culler_cycles_total", result="error")
    overruns = metric("hub_resilience_culler_cycle_overruns_total")
    task = asyncio.create_task(culler.run_forever())
    await wait_until(lambda: culler.cycles_run >= 3 or task.done(), timeout=120,
                     what="three cycles")
    assert not task.done()
    culler.stop()
    await asyncio.wait_for(task, 30)
    assert culler.last_report is not None and culler.last_report.error
    assert metric("hub_resilience_culler_cycles_total", result="error") - errors >= 3
    assert metric("hub_resilience_culler_cycle_overruns_total") - overruns >= 2


async def test_cycles_never_overlap() -> None:
    culler = Culler(
        api_url=f"http://127.0.0.1:{unused_port()}/hub/api",
        api_token="unused",
        timeout=60,
        backoff_base=0.05,
        backoff_cap=0.1,
        retry_max_attempts=1000,
        retry_deadline=0.3,
    )
    first, second = await asyncio.gather(culler.run_cycle(), culler.run_cycle())
    await culler.close()
    assert first.error and second.error
    earlier, later = sorted([first, second], key=lambda r: r.started_at)
    assert later.started_at >= earlier.ended_at


async def test_standalone_culler_serves_metrics_and_stops_promptly_on_sigterm() -> None:
    # Against an unreachable hub a cycle retries for minutes (retry_deadline 300 s by
    # default); SIGTERM, as the hub sends its managed services at shutdown, must still stop
    # the culler promptly and cleanly (exit status 0).
    metrics_port = unused_port()
    env = dict(
        os.environ,
        JUPYTERHUB_API_URL=f"http://127.0.0.1:{unused_port()}/hub/api",
        JUPYTERHUB_API_TOKEN="unused",
    )
    proc = await asyncio.create_subprocess_exec(
        "hub-resilience", "cull", "--timeout=60", f"--metrics-port={metrics_port}",
        env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )
    http = AsyncHTTPClient(force_instance=True)
    try:
        body = ""
        for _ in range(300):
            try:
                body = (await http.fetch(f"http://127.0.0.1:{metrics_port}/metrics")).body.decode()
            except OSError:
                body = ""
            if 'status="connection_error"' in body:
                break
            await asyncio.sleep(0.1)
        assert "# HELP hub_resilience_culler_cycles_total" in body
        assert 'component="culler",method="GET",status="connection_error"' in body
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 30)
        assert proc.returncode == 0, (await proc.stderr.read()).decode()
    finally:
        http.close()
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
