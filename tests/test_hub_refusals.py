"""The hub's own refusals counted apart from failures, on the JupyterHub this lane runs.

JupyterHub 5.x records a spawn refused by ``concurrent_spawn_limit`` or ``active_server_limit``
as the ``status`` of its spawn-duration histogram ("throttled", "too-many-users"); JupyterHub
6 as ``status="failure"`` with that word as its ``reason``. ``hub_resilience_spawn_outcomes``
must count both the same way (throttled, over_active_limit), and the retry range
configure() merges into ``tornado_settings`` must reach the hub's 429, so the test runs in
both lanes. Real hub and proxy; the servers are SimulatedSpawner's (the collector reads only
JupyterHub's metric, whatever the spawner), and the package's hub metrics are switched on by
importing the spawner module, as ``spawner_class = "resilient-kubespawner"`` does in a hub.
"""
from __future__ import annotations

import asyncio

import pytest
from prometheus_client.parser import text_string_to_metric_families
from tornado.httpclient import AsyncHTTPClient, HTTPRequest, HTTPResponse

from tests.support.hub import RunningHub, create_users, running_hub

pytestmark = pytest.mark.hub

CONFIG = """
import hub_resilience.hub.spawner  # noqa: F401 - registers the hub's collectors
from hub_resilience import configure
c.SimulatedSpawner.start_delay = 2
c.JupyterHub.tornado_settings = {"slow_spawn_timeout": 0}  # as z2jh: answer 202 at once
configure(
    c, spawner_class=None, stopped_handler=False, cull=False,
    concurrent_spawn_limit=1, active_server_limit=2, spawn_throttle_retry_range=[2, 3],
)
"""


async def post_spawn(hub: RunningHub, name: str) -> HTTPResponse:
    """The hub's answer to one spawn request, not retried (HubClient would retry a 429)."""
    request = HTTPRequest(
        f"{hub.api_url}/users/{name}/server", method="POST", body="",
        headers={"Authorization": f"token {hub.token}"}, request_timeout=30,
    )
    return await AsyncHTTPClient().fetch(request, raise_error=False)


async def outcomes(hub: RunningHub) -> dict[str, float]:
    request = HTTPRequest(
        f"{hub.api_url.removesuffix('/api')}/metrics",
        headers={"Authorization": f"token {hub.token}"},
    )
    text = (await AsyncHTTPClient().fetch(request)).body.decode()
    [family] = [
        f for f in text_string_to_metric_families(text)
        if f.name == "hub_resilience_spawn_outcomes"
    ]
    return {s.labels["outcome"]: s.value for s in family.samples if s.name.endswith("_total")}


async def test_refusals_are_counted_as_refusals_not_failures() -> None:
    async with running_hub(CONFIG) as hub, hub.client() as client:
        await create_users(client, ["first", "second", "third"])
        before = await outcomes(hub)

        async def ready(name: str) -> None:
            async def is_ready() -> bool:
                user = await client.get_user(name)
                return bool(user and user["servers"].get("", {}).get("ready"))

            for _ in range(300):
                if await is_ready():
                    return
                await asyncio.sleep(0.1)
            raise AssertionError(f"{name}'s server never became ready")

        assert (await post_spawn(hub, "first")).code == 202  # pending for start_delay
        throttled = await post_spawn(hub, "second")  # concurrent_spawn_limit 1
        assert throttled.code == 429
        # The retry range configure() merged into tornado_settings is what the hub suggests.
        assert 2 <= int(throttled.headers["Retry-After"]) <= 3, throttled.headers
        await ready("first")
        assert (await post_spawn(hub, "second")).code == 202
        await ready("second")
        assert (await post_spawn(hub, "third")).code == 429  # active_server_limit 2
        after = await outcomes(hub)
        log = hub.log_text()
    assert "Traceback" not in log, log[-3000:]
    assert after["throttled"] - before["throttled"] == 1
    assert after["over_active_limit"] - before["over_active_limit"] == 1
    # Refusals are never failures: no failure outcome moved.
    failures = set(after) - {"success", "throttled", "over_active_limit"}
    assert {k: after[k] - before.get(k, 0.0) for k in failures} == dict.fromkeys(failures, 0.0)
