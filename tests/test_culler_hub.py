"""The culler against a real JupyterHub and configurable-http-proxy.

Idleness needs time to pass, and the hub only accepts activity timestamps that move forward
(and at most an hour ahead). So instead of waiting an hour, these tests run the culler with
its clock an hour ahead (:class:`ClockAhead`): a server started during the test has been idle
for an hour from the culler's point of view, while a server whose activity we report 50
minutes "ahead" was active 10 minutes ago. Everything else (the hub, its API, the proxy, the
spawns and stops) is real; servers are simulated by
:class:`hub_resilience.tools.simulated_spawner.SimulatedSpawner`, since hundreds of real
notebook servers cannot run here.
"""
from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterable
from datetime import datetime, timedelta, timezone
from urllib.parse import quote

import pytest

from hub_resilience.hubclient import HubClient
from hub_resilience.service.culler import Culler, CycleReport
from hub_resilience.service.metrics import REGISTRY
from tests.support.faultproxy import DeletionAuditor, FaultProxy
from tests.support.hub import (
    create_users,
    gather_limited,
    running_hub,
    start_servers,
)

pytestmark = pytest.mark.hub

AHEAD = timedelta(hours=1)
TIMEOUT = 1800  # seconds: culled when idle for 30 minutes (by the culler's clock)

HUB_CONFIG = """
c.JupyterHub.allow_named_servers = True
c.JupyterHub.concurrent_spawn_limit = 0
c.SimulatedSpawner.honour_user_options = True
c.Spawner.start_timeout = 7200  # servers meant to stay pending must not time out
# As z2jh: a start is answered at once (202), not after 10 s, so the servers meant to stay
# pending cost no wait; the others are polled until ready.
c.JupyterHub.tornado_settings = {"slow_stop_timeout": 0.5, "slow_spawn_timeout": 0}
"""

#: For a hub that is never restarted: its database in memory, which spares the 2,000-user
#: seeding a file commit (and fsync) for every user and spawn.
IN_MEMORY_DB = """
c.JupyterHub.db_url = "sqlite:///:memory:"
"""


class ClockAhead(Culler):
    """The culler with its clock an hour ahead (see the module docstring)."""

    def now(self) -> datetime:
        return super().now() + AHEAD


def recent() -> datetime:
    """A timestamp that the culler's clock sees as 10 minutes old."""
    return datetime.now(timezone.utc) + AHEAD - timedelta(minutes=10)


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def active_servers(client: HubClient) -> dict[tuple[str, str], dict]:
    """Every active server of the hub, by (user, server name)."""
    found = {}
    async for user in client.iter_users(state="active"):
        for server_name, model in user["servers"].items():
            found[(user["name"], server_name)] = model
    return found


async def mark_active(client: HubClient, servers: Iterable[tuple[str, str]]) -> None:
    when = recent()
    await gather_limited(
        (client.post_activity(u, last_activity=when, servers={s: when}) for u, s in servers), 8
    )


def server_path(api_prefix: str, user: str, server: str) -> str:
    if server:
        return f"{api_prefix}/users/{quote(user, safe='')}/servers/{quote(server, safe='')}"
    return f"{api_prefix}/users/{quote(user, safe='')}/server"


async def test_culls_exactly_the_idle_servers_of_a_2000_user_hub() -> None:
    names = [f"u{i:04d}" for i in range(2000)]
    idle_default = [(n, "") for n in names[0:150]]
    active_default = [(n, "") for n in names[150:300]]
    idle_named = [(n, "lab") for n in names[300:330]]
    active_named = [(n, "lab") for n in names[330:360]]
    mixed_a_idle = [(n, "") for n in names[360:400]]  # default idle, named active
    mixed_a_active = [(n, "lab") for n in names[360:400]]
    mixed_b_active = [(n, "") for n in names[400:420]]  # default active, named idle
    mixed_b_idle = [(n, "lab") for n in names[400:420]]
    pending = [(n, "") for n in names[420:440]]  # starting (for an hour), and "idle"
    admin_idle = [("admin-idle", "")]
    idle = idle_default + idle_named + mixed_a_idle + mixed_b_idle + admin_idle
    active = active_default + active_named + mixed_a_active + mixed_b_active

    async with running_hub(HUB_CONFIG + IN_MEMORY_DB) as hub, hub.client() as client:
        await create_users(client, names)
        await create_users(client, ["admin-idle"], admin=True)
        await start_servers(client, idle + active)
        await start_servers(
            client, [(u, s, {"start_delay": 3600}) for u, s in pending], wait=False
        )
        await mark_active(client, active)
        before = await active_servers(client)
        assert set(before) == set(idle) | set(active) | set(pending)

        async with FaultProxy(hub.api_url, rate=0.0) as recorder:  # records, injects nothing
            culler = ClockAhead(
                api_url=recorder.proxied(hub.api_url),
                api_token=hub.token,
                timeout=TIMEOUT,
                api_page_size=50,
            )
            culled_before = metric("hub_resilience_culler_servers_culled_total", reason="inactive")
            report = await culler.run_cycle()
            second = await culler.run_cycle()
            await culler.close()

        assert report.error is None and report.skipped == 0
        assert report.servers_culled == len(idle)
        # More than one page of users, and the shrinking listing skipped nobody.
        assert report.pages > 1
        after = await active_servers(client)
        assert set(after) == set(active) | set(pending)
        for key in active:  # untouched: the very same server, not a restarted one
            assert after[key]["started"] == before[key]["started"]
        for key in pending:
            assert after[key]["pending"] == "spawn"

        # Every DELETE sent: one per idle server, none twice, none for an active or pending
        # server, and no user deletion (cull_users is off).
        deletes = [r.path for r in recorder.records if r.method == "DELETE"]
        assert sorted(deletes) == sorted(server_path("/hub/api", u, s) for u, s in idle)
        assert await client.get_user("admin-idle") is not None
        assert len([u async for u in client.iter_users()]) == len(names) + 1

        assert second.error is None and second.servers_culled == 0 and second.quiet
        assert (
            metric("hub_resilience_culler_servers_culled_total", reason="inactive")
            - culled_before
            == len(idle)
        )


async def test_user_active_since_the_page_was_listed_is_not_culled() -> None:
    names = [f"rc{i}" for i in range(6)]
    async with running_hub(HUB_CONFIG + IN_MEMORY_DB) as hub, hub.client() as client:
        await create_users(client, names)
        await start_servers(client, [(n, "") for n in names])
        page = await client.list_users_page(state="active", limit=50)
        assert sorted(u["name"] for u in page.items) == names
        # After the listing, rc0 (re-checked) and rc1 (not re-checked) come back.
        await mark_active(client, [("rc0", ""), ("rc1", "")])

        trusting = ClockAhead(
            api_url=hub.api_url, api_token=hub.token, timeout=TIMEOUT, recheck_after=3600
        )
        checking = ClockAhead(
            api_url=hub.api_url, api_token=hub.token, timeout=TIMEOUT, recheck_after=0
        )
        by_name = {u["name"]: u for u in page.items}
        report = CycleReport()
        # Without a re-check the stale page gets rc1 culled: the hazard being guarded against.
        await trusting.handle_users(
            trusting.client, [by_name["rc1"]], page.fetched_at, "active", report
        )
        await checking.handle_users(
            checking.client, [by_name[n] for n in names if n != "rc1"], page.fetched_at,
            "active", report,
        )
        await trusting.close()
        await checking.close()

        remaining = await active_servers(client)
        assert set(remaining) == {("rc0", "")}
        assert report.servers_culled == 5


async def test_deletes_idle_users_but_never_admins_or_users_with_a_server_stopping() -> None:
    idle_users = [f"gone{i}" for i in range(10)]
    idle_with_server = [f"gone-srv{i}" for i in range(5)]
    slow = [f"slow{i}" for i in range(5)]
    active_users = [f"here{i}" for i in range(5)]
    async with running_hub(HUB_CONFIG) as hub, hub.client() as client:
        await create_users(client, idle_users + idle_with_server + slow + active_users)
        await create_users(client, ["boss"], admin=True)
        await create_users(client, ["busy"])
        await start_servers(client, [(n, "") for n in idle_with_server + ["boss", "busy"]])
        await start_servers(client, [(n, "lab") for n in idle_with_server[:2]])
        await start_servers(client, [(n, "", {"stop_delay": 3}) for n in slow])
        await mark_active(client, [("busy", "")])
        when = recent()
        await gather_limited((client.post_activity(n, last_activity=when) for n in active_users), 4)

        auditor = DeletionAuditor(client, "/hub/api")
        async with FaultProxy(hub.api_url, rate=0.0, on_forward=auditor) as recorder:
            culler = ClockAhead(
                api_url=recorder.proxied(hub.api_url),
                api_token=hub.token,
                timeout=TIMEOUT,
                cull_users=True,
                stop_wait_timeout=0.2,  # shorter than the slow stops
                api_page_size=4,
            )
            first = await culler.run_cycle()
            # The slow servers were asked to stop but had not stopped: users kept for now.
            for name in slow:
                assert await client.get_user(name) is not None
            assert first.still_stopping == len(slow)
            # A cycle while they may still be stopping follows them up: never "quiet" while
            # a deletion is still owed (each is either still stopping or now deleted).
            between = await culler.run_cycle()
            assert not between.quiet
            assert between.still_stopping + between.users_culled == len(slow)
            for name in slow:
                assert await client.wait_for_server_stopped(name, timeout=60, poll_interval=0.2)
            second = await culler.run_cycle()
            third = await culler.run_cycle()
            await culler.close()

        assert first.error is None and between.error is None and second.error is None
        assert first.users_culled == len(idle_users) + len(idle_with_server)
        assert between.users_culled + second.users_culled == len(slow)
        assert third.quiet
        remaining = sorted([u["name"] async for u in client.iter_users()])
        assert remaining == sorted(active_users + ["boss", "busy"])
        assert set(await active_servers(client)) == {("busy", "")}
        assert auditor.violations == []
        assert sorted(auditor.checked) == sorted(idle_users + idle_with_server + slow)


CULLER_ROLE = """
c.JupyterHub.services.append({{
    "name": "idle-culler",
    "command": [{python!r}, "-m", "hub_resilience", "cull", "--timeout=1", "--cull-every=1",
                "--concurrency=2", "--api-page-size=3"],
}})
c.JupyterHub.load_roles.append({{
    "name": "idle-culler",
    "scopes": ["list:users", "read:users:activity", "read:servers", "delete:servers"],
    "services": ["idle-culler"],
}})
"""


async def test_runs_as_a_hub_managed_service_with_the_documented_scopes() -> None:
    # The drop-in: a JupyterHub service started by the hub, configured by command-line flags
    # and the JUPYTERHUB_API_* environment, with only the scopes docs/culler.md lists.
    # Real clock here: idle means 1 second without activity. The servers are started, and
    # svc-busy's activity reported, before the culler exists (the hub is then restarted with
    # it, servers kept): with a 1 s timeout, a culler already running could rightly cull a
    # server in the moment between its start and the first activity report.
    async with running_hub(HUB_CONFIG) as hub, hub.client() as client:
        await create_users(client, ["svc-idle", "svc-busy"])
        await start_servers(client, [("svc-busy", ""), ("svc-idle", ""), ("svc-idle", "lab")])
        # Activity reported 50 minutes ahead keeps svc-busy active for the whole test.
        ahead = datetime.now(timezone.utc) + timedelta(minutes=50)
        await client.post_activity("svc-busy", last_activity=ahead, servers={"": ahead})
        hub.write_config(HUB_CONFIG + CULLER_ROLE.format(python=sys.executable))
        await hub.restart()

        async def idle_gone() -> bool:
            return not {k for k in await active_servers(client) if k[0] == "svc-idle"}

        for _ in range(600):
            if await idle_gone():
                break
            await asyncio.sleep(0.2)
        assert await idle_gone(), "the culler service did not cull svc-idle"
        assert set(await active_servers(client)) == {("svc-busy", "")}
        log = hub.log_text()
        assert "Culling server svc-idle" in log
        assert "Traceback" not in log


def test_command_line_help_and_bad_settings() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JUPYTERHUB_")}
    shown = subprocess.run(
        ["hub-resilience", "cull", "--help"], capture_output=True, text=True, env=env
    )
    assert shown.returncode == 0
    for flag in ("--timeout", "--cull-every", "--max-age", "--concurrency", "--cull-users",
                 "--cull-admin-users", "--remove-named-servers", "--api-page-size"):
        assert flag in shown.stdout
    every = subprocess.run(
        [sys.executable, "-m", "hub_resilience", "cull", "--help-all"],
        capture_output=True, text=True, env=env,
    )
    assert every.returncode == 0
    for trait in Culler.class_trait_names(config=True):
        assert f"--Culler.{trait}=" in every.stdout, trait
    typo = subprocess.run(
        ["hub-resilience", "cull", "--once", "--Culler.timeout=x"],
        capture_output=True, text=True, env=env,
    )
    assert typo.returncode == 2
    assert "The 'timeout' trait of a Culler instance expected a float" in typo.stderr

    no_env = subprocess.run(
        ["hub-resilience", "cull", "--once"], capture_output=True, text=True, env=env
    )
    assert no_env.returncode == 2 and "JUPYTERHUB_API_URL" in no_env.stderr
    bad = subprocess.run(
        ["hub-resilience", "cull", "--once", "--concurrency=0"],
        capture_output=True, text=True,
        env=dict(env, JUPYTERHUB_API_URL="http://127.0.0.1:9/hub/api", JUPYTERHUB_API_TOKEN="t"),
    )
    assert bad.returncode == 2 and "Culler.concurrency" in bad.stderr
