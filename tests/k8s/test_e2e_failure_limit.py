"""zero-to-jupyterhub's ``consecutiveFailureLimit: 5`` with ResilientKubeSpawner.

JupyterHub exits after that many failed spawns in a row. Capacity failures (here: pods no
node has room for) must not make it exit, whatever their number: a restart cannot make
room. Failures a restart may cure (the Kubernetes API server unreachable) still must. The
hub runs z2jh 4.4.0's configuration with the chart's defaults, against the cluster's API
Priority and Fairness endpoint: its own kube-apiserver, which the test stops, while the
scheduler and KWOK keep using the main one. Both lanes run it (JupyterHub 5.5 counts every
failure, 6.x every error).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.k8s.cluster import LocalCluster
from tests.k8s.test_e2e_pressure import (
    remove_user_pods_and_claims,
    total,
    wait_for,
    z2jh_hub,
    z2jh_values,
)
from tests.support.hub import create_users, gather_limited

pytestmark = pytest.mark.k8s

HUGE = {
    "display_name": "Too big for any node",
    "slug": "huge",
    "kubespawner_override": {"cpu_limit": 64, "cpu_guarantee": 64},
}


async def test_capacity_failures_leave_the_hub_running_an_unreachable_api_server_stops_it(
    k8s_cluster: LocalCluster, tmp_path: Path
) -> None:
    endpoint = k8s_cluster.apf_endpoint(seats=1)
    values = z2jh_values(singleuser={"startTimeout": 15, "profileList": [HUGE]})
    assert values["hub"]["consecutiveFailureLimit"] == 5  # the chart's default, unchanged
    full = [f"full-{i}" for i in range(10)]
    unreached = [f"unreached-{i}" for i in range(5)]
    async with z2jh_hub(k8s_cluster, tmp_path, endpoint, k8s_cluster.namespace, values) as hub:
        async with hub.client() as client:
            await create_users(client, full + unreached)
            # Ten spawns no node has room for, each ended by the hub's start_timeout; the
            # admission governor sees their pods wait for a node.
            seen_waiting = asyncio.ensure_future(wait_for(
                lambda f: total(f, "hub_resilience_admission_signal", signal="waiting_for_node")
                >= len(full),
                hub,
                timeout=60,
            ))
            await asyncio.gather(
                *(client.start_server(n, user_options={"profile": "huge"}) for n in full)
            )
            await seen_waiting
            await gather_limited(
                (client.wait_for_server_stopped(n, timeout=120) for n in full), 10
            )
            await wait_for(
                lambda f: total(f, "hub_resilience_spawn_outcomes_total", outcome="unschedulable")
                >= len(full),
                hub,
                timeout=60,
            )
            assert await hub.wait_for_exit(timeout=5) is None  # JupyterHub waits 2 s to exit
            assert "consecutive spawn failures" not in hub.log_text()
            assert (await client.get_user(full[0]))["name"] == full[0]  # still answering

            # Five spawns that cannot reach the API server: JupyterHub's limit applies.
            with k8s_cluster.apiserver_down(endpoint):
                await asyncio.gather(
                    *(client.start_server(n, user_options={"profile": "huge"}) for n in unreached)
                )
                exit_code = await hub.wait_for_exit(timeout=120)
        log = hub.log_text()
    remove_user_pods_and_claims(k8s_cluster, k8s_cluster.namespace)  # the users' PVCs
    assert exit_code == 1, log[-3000:]
    assert "Aborting due to 5 consecutive spawn failures" in log
    for name in unreached:
        assert f"Spawn of {name} failed (k8s_api_error)" in log, name
