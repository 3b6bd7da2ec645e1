"""A real hub started from zero-to-jupyterhub 4.4.0's own configuration files.

The values are the shipped helm-values/hub-resilience.yaml plus an operator's settings made
only through ``hub.config.HubResilience``, ``hub.config.Culler`` and
``hub.config.ResilientKubeSpawner``, no extraConfig and no environment variables. z2jh's
jupyterhub_config.py applies them and runs the drop-in (tests/z2jh_hub.py says how the chart's
files are used here). Then, on the running processes: the spawner, the service, its proxy
route and its culler settings are what the values say, and each process's /metrics holds its
own families and none of the other's, valid for promtool. The hub spawns no user server here
(no Kubernetes); tests/k8s does that.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from tornado.httpclient import AsyncHTTPClient, HTTPRequest

from hub_resilience.configure import HubResilience
from hub_resilience.hub.spawner import ResilientKubeSpawner
from tests.support.hub import (
    HUB_FAMILY_PREFIXES,
    SERVICE_FAMILY_PREFIXES,
    promtool_check_metrics,
    running_hub,
    unused_port,
)
from tests.z2jh_hub import SERVICE_ENV, chart_files, exec_source, load_config, released_values

pytestmark = pytest.mark.hub

ROOT = Path(__file__).resolve().parents[1]


def operator_values(service_port: int) -> dict:
    """The shipped values and an operator's own settings, all through hub.config."""
    shipped = yaml.safe_load((ROOT / "helm-values" / "hub-resilience.yaml").read_text())
    own = {
        "hub": {
            "config": {
                "HubResilience": {
                    "service_port": service_port,
                    "expected_concurrent_servers": 2000,
                    "activity_requests_per_second": 8,
                },
                "Culler": {"timeout": 7200, "cull_every": 900, "concurrency": 3},
                "ResilientKubeSpawner": {"qos_policy": "refuse", "retry_max_attempts": 7},
            }
        }
    }
    return released_values(shipped, own)


async def get(url: str, token: str | None = None) -> str:
    headers = {"Authorization": f"token {token}"} if token else {}
    response = await AsyncHTTPClient().fetch(HTTPRequest(url, headers=headers, request_timeout=30))
    return response.body.decode()


def family_names(text: str) -> set[str]:
    return {family.name for family in text_string_to_metric_families(text)}


async def test_a_z2jh_hub_is_wired_as_its_values_say(
    tmp_path: Path, offline_kubeconfig: Path
) -> None:
    port = unused_port()
    values = operator_values(port)
    # What z2jh's configuration makes of these values, read offline first.
    offline = load_config(tmp_path / "offline", values)
    settings = HubResilience(config=offline)
    assert settings.expected_concurrent_servers == 2000
    activity = settings.activity_settings()
    assert offline.JupyterHub.last_activity_interval == activity.hub_interval == 510
    spawner = ResilientKubeSpawner(_mock=True, config=offline)
    assert (spawner.qos_policy, spawner.retry_max_attempts) == ("refuse", 7)
    assert spawner.get_env()["JUPYTERHUB_ACTIVITY_INTERVAL"] == str(activity.singleuser_interval)

    config_path = chart_files(tmp_path / "chart", values)
    async with running_hub(exec_source(config_path, "tests"), env=SERVICE_ENV) as hub:
        services = json.loads(await get(f"{hub.api_url}/services", hub.token))
        ours = services["hub-resilience"]
        assert ours["command"][1:3] == ["-m", "hub_resilience.service"]
        command = ours["command"]
        assert f"--ResilienceService.port={port}" in command
        assert "--Culler.timeout=7200" in command and "--Culler.concurrency=3" in command
        # Over loopback, as the hub listens (the harness binds the hub to 127.0.0.1).
        assert f"--Culler.api_url={hub.api_url}" in command
        assert ours["roles"] == ["hub-resilience"]

        service_url = f"http://127.0.0.1:{port}"
        await hub.wait_for_service(f"{service_url}/health")
        health = json.loads(await get(f"{service_url}/health"))
        assert health["culler"]["timeout"] == 7200 and health["culler"]["period"] == 900

        routes = json.loads(await get(f"{hub.proxy_api_url}/api/routes", hub.proxy_token))
        assert routes["/user"]["target"] == service_url

        hub_text = await get(f"{hub.api_url.removesuffix('/api')}/metrics", hub.token)
        service_text = await get(f"{service_url}/metrics")
        hub_families, service_families = family_names(hub_text), family_names(service_text)
        assert {"hub_resilience_spawn_outcomes", "hub_resilience_user_pods"} <= hub_families
        assert "jupyterhub_event_loop_interval_seconds" in hub_families
        assert not [n for n in hub_families if n.startswith(SERVICE_FAMILY_PREFIXES)]
        assert {
            "hub_resilience_stopped_server_responses", "hub_resilience_culler_cycles",
            "hub_resilience_hub_api_requests",
        } <= service_families
        assert not [n for n in service_families if n.startswith(HUB_FAMILY_PREFIXES)]
        assert await promtool_check_metrics(hub_text) == ""
        assert await promtool_check_metrics(service_text) == ""
        log = hub.log_text()
    assert "Loading pass-through config section hub.config.HubResilience" in log
    assert "hub-resilience: configured service hub-resilience" in log
    assert "Traceback" not in log, log[-3000:]


async def test_the_service_in_its_own_container_serves_the_hub(tmp_path: Path) -> None:
    """helm-values/hub-resilience-sidecar.yaml: the hub registers the service with the
    chart's token and does not start it; the sidecar command, run on the same configuration
    files as a container of the hub pod would, becomes that service, and its culler works
    with that token (a cycle ends without error)."""
    import asyncio

    from hub_resilience.tools.localhub import terminate

    port = unused_port()
    sidecar = yaml.safe_load((ROOT / "helm-values" / "hub-resilience-sidecar.yaml").read_text())
    values = released_values(operator_values(port), sidecar)
    config_path = chart_files(tmp_path / "chart", values)
    async with running_hub(exec_source(config_path, "tests"), env=SERVICE_ENV) as hub:
        services = json.loads(await get(f"{hub.api_url}/services", hub.token))
        assert services["hub-resilience"]["command"] == []  # not started by the hub
        log_path = tmp_path / "sidecar.log"
        with log_path.open("wb") as log:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "hub_resilience.service.sidecar", str(config_path),
                stdout=log, stderr=log, env={**os.environ, **SERVICE_ENV}, cwd=tmp_path,
            )
        try:
            service_url = f"http://127.0.0.1:{port}"
            await hub.wait_for_service(f"{service_url}/health")
            for _ in range(600):
                health = json.loads(await get(f"{service_url}/health"))
                if health["culler"]["last_cycle"] is not None:
                    break
                await asyncio.sleep(0.1)
            assert health["culler"]["last_cycle"]["ok"], health
            assert health["culler"]["timeout"] == 7200
            metrics = await get(f"{service_url}/metrics")
            assert 'status="403"' not in metrics and 'status="401"' not in metrics
            routes = json.loads(await get(f"{hub.proxy_api_url}/api/routes", hub.proxy_token))
            assert routes["/user"]["target"] == service_url
        finally:
            await terminate(process)
        hub_log = hub.log_text()
    sidecar_log = log_path.read_text()
    assert "hub-resilience sidecar: starting -m hub_resilience.service" in sidecar_log
    assert "Traceback" not in sidecar_log, sidecar_log[-3000:]
    assert "Traceback" not in hub_log, hub_log[-3000:]
