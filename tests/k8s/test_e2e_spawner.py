"""A real JupyterHub with ResilientKubeSpawner against the local Kubernetes control plane.

Real parts: JupyterHub and configurable-http-proxy (subprocesses), KubeSpawner (inside
that hub), kube-apiserver, kube-scheduler and etcd. Simulated, because they cannot run here:
kubelets and containers (KWOK), and the notebook servers (the pod responder answers HTTP on
each running pod's IP and port).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from tornado.httpclient import AsyncHTTPClient, HTTPRequest

from hub_resilience.hubclient import HubAPIError
from hub_resilience.service.culler import Culler
from tests.k8s.cluster import LocalCluster
from tests.support.hub import (
    SERVICE_FAMILY_PREFIXES,
    RunningHub,
    create_users,
    gather_limited,
    promtool_check_metrics,
    running_hub,
    wait_until,
)

pytestmark = pytest.mark.k8s

SIDECAR = {
    "name": "log-shipper",
    "image": "busybox",
    "resources": {
        "requests": {"cpu": "50m", "memory": "32Mi"},
        "limits": {"cpu": "100m", "memory": "64Mi"},
    },
}
INIT = {
    "name": "fetch-material",
    "image": "busybox",
    "command": ["true"],
    "resources": {"limits": {"cpu": "100m", "memory": "64M"}},
}

PROFILES = [
    {
        "display_name": "Small",
        "slug": "small",
        "default": True,
        "kubespawner_override": {
            "cpu_guarantee": 0.1,
            "cpu_limit": 0.5,
            "mem_guarantee": "256M",
            "mem_limit": "512M",
        },
    },
    {
        "display_name": "Medium, with init and sidecar",
        "slug": "medium",
        "kubespawner_override": {
            "cpu_limit": 1,
            "mem_limit": "1G",
            "init_containers": [INIT],
            "extra_containers": [SIDECAR],
        },
    },
    {
        "display_name": "Sized",
        "slug": "sized",
        "profile_options": {
            "size": {
                "display_name": "Size",
                "choices": {
                    "s": {
                        "display_name": "S",
                        "default": True,
                        "kubespawner_override": {
                            "cpu_guarantee": 0.25,
                            "cpu_limit": 0.25,
                            "mem_guarantee": "256M",
                            "mem_limit": "256M",
                        },
                    },
                    "m": {
                        "display_name": "M",
                        "kubespawner_override": {
                            "cpu_guarantee": 0.2,
                            "cpu_limit": 0.75,
                            "mem_guarantee": "512M",
                            "mem_limit": "768M",
                        },
                    },
                },
            }
        },
    },
    # Cannot be made Guaranteed: a sidecar with no resources and no configured defaults.
    {
        "display_name": "Broken",
        "slug": "broken",
        "kubespawner_override": {
            "cpu_limit": 0.5,
            "mem_limit": "512M",
            "extra_containers": [{"name": "bare", "image": "busybox"}],
        },
    },
    # Asks for more CPU than any node has (the fake nodes have 4).
    {
        "display_name": "Huge",
        "slug": "huge",
        "kubespawner_override": {"cpu_limit": 64, "mem_limit": "1G", "start_timeout": 20},
    },
]

#: (user_options) for the 20 users of the Guaranteed test, covering every spawnable profile.
SPAWN_OPTIONS = [
    {"profile": "small"},
    {"profile": "medium"},
    {"profile": "sized", "size": "s"},
    {"profile": "sized", "size": "m"},
] * 5


def hub_config(namespace: str) -> str:
    return f"""
c.JupyterHub.spawner_class = "resilient-kubespawner"
c.JupyterHub.authenticate_prometheus = False
c.JupyterHub.concurrent_spawn_limit = 100
c.KubeSpawner.namespace = {namespace!r}
c.KubeSpawner.image = "quay.io/jupyter/base-notebook:2026-11-02"
c.KubeSpawner.cmd = ["jupyterhub-singleuser"]
c.KubeSpawner.start_timeout = 120
c.KubeSpawner.http_timeout = 60
c.KubeSpawner.profile_list = {PROFILES!r}
"""


@contextmanager
def kubeconfig_env(path: Path) -> Iterator[None]:
    """Hub subprocesses started inside inherit this KUBECONFIG."""
    old = os.environ.get("KUBECONFIG")
    os.environ["KUBECONFIG"] = str(path)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("KUBECONFIG", None)
        else:
            os.environ["KUBECONFIG"] = old


@asynccontextmanager
async def k8s_hub(kubeconfig: Path, namespace: str, extra: str = "") -> AsyncIterator[RunningHub]:
    with kubeconfig_env(kubeconfig):
        async with running_hub(hub_config(namespace) + extra, start_timeout=120) as hub:
            try:
                yield hub
            except BaseException:
                # Shown by pytest with the failure: what the hub said about it.
                print("---- hub log (last 200 lines) ----")
                print("\n".join(hub.log_text().splitlines()[-200:]))
                raise


async def scrape(hub: RunningHub) -> dict[str, list]:
    """The hub's /hub/metrics as {family name: [(sample name, labels, value)]}, read with
    the test service's (admin) token, which z2jh's configuration requires."""
    request = HTTPRequest(
        f"{hub.url}/hub/metrics",
        headers={"Authorization": f"token {hub.token}"},
        request_timeout=30,
    )
    response = await AsyncHTTPClient().fetch(request)
    families = {}
    for family in text_string_to_metric_families(response.body.decode()):
        families[family.name] = [(s.name, s.labels, s.value) for s in family.samples]
    return families


def sample(families: dict, family: str, name: str, **labels: str) -> float:
    """Sum of the samples ``name`` in ``family`` whose labels include ``labels``."""
    return sum(
        value
        for sample_name, sample_labels, value in families.get(family, [])
        if sample_name == name and all(sample_labels.get(k) == v for k, v in labels.items())
    )


def user_pods(cluster: LocalCluster) -> dict[str, Any]:
    return {p.metadata.name: p for p in cluster.user_pods()}


@pytest.fixture(scope="module")
async def hub(k8s_cluster: LocalCluster) -> AsyncIterator[RunningHub]:
    async with k8s_hub(k8s_cluster.kubeconfig, k8s_cluster.namespace) as running:
        yield running
        await stop_all_servers(running)


async def stop_all_servers(hub: RunningHub) -> None:
    """Stop every server (and so delete its pod), so later tests have the nodes to themselves."""
    async with hub.client() as client:
        names = [u["name"] async for u in client.iter_users() if u.get("servers")]
        await gather_limited((client.stop_server(n) for n in names), limit=10)
        await gather_limited((client.wait_for_server_stopped(n, timeout=120) for n in names), 10)


async def test_twenty_users_get_guaranteed_pods_for_every_profile(
    hub: RunningHub, k8s_cluster: LocalCluster
) -> None:
    names = [f"student-{i:02d}" for i in range(len(SPAWN_OPTIONS))]
    async with hub.client() as client:
        await create_users(client, names)
        await gather_limited(
            (
                client.start_server_and_wait(
                    name, user_options=options, timeout=240, poll_interval=0.5
                )
                for name, options in zip(names, SPAWN_OPTIONS, strict=True)
            ),
            limit=20,
        )
    pods = user_pods(k8s_cluster)
    for name, options in zip(names, SPAWN_OPTIONS, strict=True):
        pod = pods[f"jupyter-{name}"]
        assert pod.status.phase == "Running", name
        # Decided by the API server, not by our own code:
        assert pod.status.qos_class == "Guaranteed", (name, options)
        containers = [c.name for c in pod.spec.containers]
        init = [c.name for c in pod.spec.init_containers or []]
        if options["profile"] == "medium":
            assert containers == ["notebook", "log-shipper"] and init == ["fetch-material"]
        interval = {e.name: e.value for e in pod.spec.containers[0].env or []}
        assert interval["JUPYTERHUB_ACTIVITY_INTERVAL"] == "300"

    families = await scrape(hub)
    assert sample(
        families, "hub_resilience_user_pods", "hub_resilience_user_pods", qos_class="Guaranteed"
    ) == len(names)
    assert (
        sample(
            families, "hub_resilience_user_pods", "hub_resilience_user_pods", qos_class="Burstable"
        )
        == 0
    )
    outcomes = "hub_resilience_spawn_outcomes"
    assert sample(families, outcomes, f"{outcomes}_total", outcome="success") == len(names)
    for profile in ("small", "medium", "sized"):
        assert (
            sample(families, outcomes, f"{outcomes}_total", outcome="success", profile=profile) > 0
        )


async def test_spawn_phase_metrics_follow_the_real_pods(
    hub: RunningHub, k8s_cluster: LocalCluster
) -> None:
    """Every phase was observed for every spawn of the previous test, from real conditions and
    events; the scheduling phase agrees with the pods' own timestamps."""
    families = await scrape(hub)
    family = "hub_resilience_spawn_phase_seconds"
    count = f"{family}_count"
    spawned = len(SPAWN_OPTIONS)
    for phase in (
        "hub",
        "api_create",
        "scheduling",
        "image_pull",
        "container_start",
        "server_ready",
    ):
        assert sample(families, family, count, phase=phase) == spawned, phase
    pods = user_pods(k8s_cluster)
    expected = 0.0
    for pod in pods.values():
        scheduled = next(c for c in pod.status.conditions if c.type == "PodScheduled")
        expected += (
            scheduled.last_transition_time - pod.metadata.creation_timestamp
        ).total_seconds()
    assert sample(families, family, f"{family}_sum", phase="scheduling") == pytest.approx(expected)
    # KWOK's simulated pull (see tests/k8s/stages) takes time; a real one is never 0 either.
    assert sample(families, family, f"{family}_sum", phase="image_pull") > 0
    api = "hub_resilience_k8s_api_requests"
    assert sample(families, api, f"{api}_total", operation="create_pod", code="ok") == spawned


async def test_hub_metrics_are_complete_and_valid_for_promtool(hub: RunningHub) -> None:
    """/hub/metrics of a hub running ResilientKubeSpawner carries every metric of the package,
    each with its help string, and Prometheus' own checker accepts the exposition."""
    await scrape(hub)
    response = await AsyncHTTPClient().fetch(f"{hub.url}/hub/metrics", request_timeout=30)
    text = response.body.decode()
    expected = {
        "hub_resilience_spawn_phase_seconds": "histogram",
        "hub_resilience_spawn_outcomes": "counter",
        "hub_resilience_spawn_scale_ups": "counter",
        "hub_resilience_k8s_api_request_seconds": "histogram",
        "hub_resilience_k8s_api_requests": "counter",
        "hub_resilience_k8s_api_retries": "counter",
        "hub_resilience_user_pods": "gauge",
        "jupyterhub_event_loop_interval_seconds": "histogram",  # JupyterHub's own
        "process_cpu_seconds": "counter",  # prometheus-client's process metrics
    }
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for name, kind in expected.items():
        assert name in families, name
        assert families[name].type == kind, name
        assert families[name].documentation.strip(), f"{name} has no help string"
    # The hub's saturation signal, sampled whether or not anyone has spawned yet.
    lag = families["jupyterhub_event_loop_interval_seconds"]
    assert any(s.name.endswith("_count") and s.value > 0 for s in lag.samples)
    # Only the hub process's families: none of the service's.
    assert not [n for n in families if n.startswith(SERVICE_FAMILY_PREFIXES)], sorted(families)
    # No per-user label values: user and pod names never appear in our metrics.
    ours = [line for line in text.splitlines() if line.startswith("hub_resilience_")]
    assert ours and not any("student-" in line or "jupyter-" in line for line in ours)
    assert await promtool_check_metrics(text) == ""


async def test_culler_stops_idle_servers_and_their_pods_go(
    hub: RunningHub, k8s_cluster: LocalCluster
) -> None:
    """The package's culler against this hub: idle servers stop and Kubernetes deletes their
    pods; servers active a moment ago, and their pods, are left alone."""
    names = [f"student-{i:02d}" for i in range(len(SPAWN_OPTIONS))]
    active, idle = names[:10], names[10:]
    timeout = 5.0
    # Every server started at least `timeout` seconds ago and nothing has reported activity
    # since, except what this test reports for `active`.
    await asyncio.sleep(timeout + 1)
    async with hub.client() as client:
        now = datetime.now(timezone.utc)
        for name in active:
            await client.post_activity(name, last_activity=now, servers={"": now})
    culler = Culler(api_url=hub.api_url, api_token=hub.token, timeout=timeout, cull_every=60)
    try:
        report = await culler.run_cycle()
    finally:
        await culler.close()
    assert report.error is None
    assert report.servers_culled == len(idle)
    await wait_until(
        lambda: (
            not set(f"jupyter-{n}" for n in idle)
            & set(user_pods(k8s_cluster))
        ),
        timeout=120,
        interval=0.5,
        what="the culled servers' pods are deleted",
    )
    pods = user_pods(k8s_cluster)
    assert all(f"jupyter-{n}" in pods for n in active)
    async with hub.client() as client:
        for name in active:
            server = await client.get_server(name)
            assert server and server.get("ready"), name
        for name in idle:
            assert await client.get_server(name) is None, name


async def test_profile_that_cannot_be_guaranteed_is_refused_before_any_pod(
    hub: RunningHub, k8s_cluster: LocalCluster
) -> None:
    async with hub.client() as client:
        await create_users(client, ["broken-user"])
        with pytest.raises(HubAPIError) as refused:
            await client.start_server("broken-user", user_options={"profile": "broken"})
        await wait_until_stopped(client, "broken-user")
    # What the user (and the operator) is told:
    assert refused.value.status == 500
    assert "Cannot start this server: profile 'broken', container 'bare'" in str(refused.value)
    assert "jupyter-broken-user" not in user_pods(k8s_cluster)
    log = hub.log_text()
    assert "profile 'broken', container 'bare': cpu has neither a request nor a limit" in log
    families = await scrape(hub)
    outcomes = "hub_resilience_spawn_outcomes"
    assert (
        sample(families, outcomes, f"{outcomes}_total", outcome="qos_refused", profile="broken")
        == 1
    )


async def test_unschedulable_pod_fails_with_a_clear_message(
    hub: RunningHub, k8s_cluster: LocalCluster
) -> None:
    async with hub.client() as client:
        await create_users(client, ["greedy"])
        await client.start_server("greedy", user_options={"profile": "huge"})
        await wait_until_stopped(client, "greedy", timeout=120)
    log = hub.log_text()
    assert (
        "Spawn of greedy failed (unschedulable): Your server did not start within 20 seconds "
        "because no node in the cluster has room for this profile."
    ) in log
    assert "Insufficient cpu" in log  # the scheduler's own words, passed on to the user
    families = await scrape(hub)
    outcomes = "hub_resilience_spawn_outcomes"
    assert (
        sample(families, outcomes, f"{outcomes}_total", outcome="unschedulable", profile="huge")
        == 1
    )
    # The failed spawn's pod is cleaned up by the hub's stop.
    await wait_until(
        lambda: "jupyter-greedy" not in user_pods(k8s_cluster),
        timeout=60,
        what="the unschedulable pod is deleted",
    )


async def wait_until_stopped(client, name: str, timeout: float = 60.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        server = await client.get_server(name)
        if server is None:
            return
        await asyncio.sleep(0.5)
    raise TimeoutError(f"{name}'s server was still there after {timeout}s")
