"""The zero-to-jupyterhub values in helm-values/: valid for the chart (its own schema, after
helm's merge into its defaults), consistent with each other, and wired as they say by
z2jh 4.4.0's own hub configuration (tests/z2jh_hub.py)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes.utils.quantity import parse_quantity

from hub_resilience.configure import HubResilience
from tests.z2jh import InvalidValuesError, merge_values, validate_values_overlay
from tests.z2jh_hub import load_config, released_values

ROOT = Path(__file__).resolve().parents[1]
VALUES_DIR = ROOT / "helm-values"
BASE = VALUES_DIR / "hub-resilience.yaml"
EVENT = VALUES_DIR / "event.yaml"
SIDECAR = VALUES_DIR / "hub-resilience-sidecar.yaml"
DROPIN = ROOT / "jupyterhub_config.d" / "hub_resilience.py"
CONFIG_D = "/usr/local/etc/jupyterhub/jupyterhub_config.d/"


def load(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def installed() -> dict[str, Any]:
    """Base values with the event overlay, as `helm -f base -f event` merges them."""
    return merge_values(load(BASE), load(EVENT))


def test_the_values_files_are_the_expected_ones() -> None:
    names = sorted(p.name for p in VALUES_DIR.glob("*.yaml"))
    assert names == ["event.yaml", "hub-resilience-sidecar.yaml", "hub-resilience.yaml"]


@pytest.mark.parametrize("path", sorted(VALUES_DIR.glob("*.yaml")), ids=lambda p: p.name)
def test_each_file_validates_against_the_chart_schema(path: Path) -> None:
    validate_values_overlay(load(path))


def test_base_and_event_together_validate() -> None:
    validate_values_overlay(installed())


def test_validation_would_catch_a_mistake_in_these_values() -> None:
    broken = merge_values(load(BASE), {"hub": {"concurrentSpawnLimit": "50"}, "cull": {"on": 1}})
    with pytest.raises(InvalidValuesError) as error:
        validate_values_overlay(broken)
    assert "hub.concurrentSpawnLimit" in str(error.value) and "cull" in str(error.value)


def test_drop_in_is_the_repository_file_in_the_config_directory() -> None:
    [dropin] = load(BASE)["hub"]["extraFiles"].values()
    assert dropin["mountPath"] == CONFIG_D + "hub_resilience.py"
    assert dropin["stringData"] == DROPIN.read_text()


def test_service_port_is_the_same_everywhere() -> None:
    values = installed()
    port = values["hub"]["config"]["HubResilience"]["service_port"]
    [service_port] = values["hub"]["service"]["extraPorts"]
    assert (service_port["port"], service_port["targetPort"]) == (port, port)
    # The service's port is open to the proxy and to Prometheus, and to nothing else.
    proxy, prometheus = values["hub"]["networkPolicy"]["ingress"]
    assert proxy["ports"] == [{"port": port, "protocol": "TCP"}]
    assert proxy["from"] == [{"podSelector": {"matchLabels": {"component": "proxy"}}}]
    assert {"port": port, "protocol": "TCP"} in prometheus["ports"]
    assert prometheus["from"] == [{
        "namespaceSelector": {},
        "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}},
    }]
    [egress] = values["proxy"]["chp"]["networkPolicy"]["egress"]
    assert egress["ports"] == [{"port": port, "protocol": "TCP"}]
    assert egress["to"] == [{"podSelector": {"matchLabels": {"component": "hub"}}}]


def test_stock_culler_off_guarantees_equal_limits_placeholders_and_prepuller() -> None:
    for values in (load(BASE), installed()):
        assert values["cull"]["enabled"] is False
        singleuser = values["singleuser"]
        for resource in ("cpu", "memory"):
            limits = singleuser[resource]
            assert parse_quantity(limits["guarantee"]) == parse_quantity(limits["limit"])
        assert values["scheduling"]["podPriority"]["enabled"] is True
        assert values["scheduling"]["userPlaceholder"]["enabled"] is True
        assert values["scheduling"]["userPlaceholder"]["replicas"] > 0
        assert values["prePuller"]["hook"]["enabled"] is True
        assert values["prePuller"]["continuous"]["enabled"] is True


def test_spawn_limits_come_only_from_the_event_overlay() -> None:
    # The base values leave the hub's limits as the operator has them (a hub running more
    # servers than a shipped limit would refuse spawns on install); the event overlay, sized
    # with `hub-resilience plan`, sets them.
    assert "concurrentSpawnLimit" not in load(BASE)["hub"]
    assert "activeServerLimit" not in load(BASE)["hub"]
    hub = installed()["hub"]
    expected = hub["config"]["HubResilience"]["expected_concurrent_servers"]
    assert 0 < hub["concurrentSpawnLimit"] < hub["activeServerLimit"]
    assert expected <= hub["activeServerLimit"]
    assert installed()["scheduling"]["userPlaceholder"]["replicas"] > (
        load(BASE)["scheduling"]["userPlaceholder"]["replicas"]
    )


@pytest.mark.parametrize("which", ["base", "base+event"])
def test_z2jh_wires_what_the_values_say(which: str, tmp_path: Path) -> None:
    values = load(BASE) if which == "base" else installed()
    ours = values["hub"]["config"]
    c = load_config(tmp_path, released_values(values))
    assert c.JupyterHub.spawner_class == "resilient-kubespawner"
    [service] = c.JupyterHub.services
    assert service["name"] == "hub-resilience"
    port = ours["HubResilience"]["service_port"]
    assert f"--ResilienceService.port={port}" in service["command"]
    assert f"--Culler.timeout={ours['Culler']['timeout']}" in service["command"]
    assert c.Proxy.extra_routes.get_value({}) == {"/user/": f"http://hub:{port}"}
    settings = HubResilience(config=c)
    assert settings.expected_concurrent_servers == (
        ours["HubResilience"]["expected_concurrent_servers"]
    )
    assert c.JupyterHub.last_activity_interval == settings.activity_settings().hub_interval
    assert c.ResilientKubeSpawner.qos_default_cpu == ours["ResilientKubeSpawner"]["qos_default_cpu"]


def released_schema_errors(values: dict[str, Any]) -> list[str]:
    """Errors of ``values`` (merged into 4.4.0's defaults) against 4.4.0's own schema."""
    from tests.z2jh import schema_errors
    from tests.z2jh_hub import released_chart

    return schema_errors(released_values(values), released_chart())


@pytest.mark.parametrize(
    "files", [[BASE], [BASE, EVENT], [BASE, SIDECAR], [BASE, EVENT, SIDECAR]],
    ids=lambda files: "+".join(f.stem for f in files),
)
def test_values_validate_against_the_released_chart_schema_too(files: list[Path]) -> None:
    values: dict[str, Any] = {}
    for path in files:
        values = merge_values(values, load(path))
    validate_values_overlay(values)  # the main-branch schema
    assert released_schema_errors(values) == []
    assert released_schema_errors({"hub": {"extraContainers": "not a list"}})  # it can fail


def test_the_sidecar_values_wire_the_service_in_its_own_container(tmp_path: Path) -> None:
    values = merge_values(load(BASE), load(SIDECAR))
    c = load_config(tmp_path, released_values(values))
    [service] = [s for s in c.JupyterHub.services if s["name"] == "hub-resilience"]
    # Registered with the token the chart generated (its Secret), and not started by the hub.
    assert "command" not in service and len(service["api_token"]) >= 32
    assert c.Proxy.extra_routes.get_value({}) == {"/user/": "http://hub:8181"}
    [role] = [r for r in c.JupyterHub.load_roles if r["name"] == "hub-resilience"]
    assert role["services"] == ["hub-resilience"]
    [container] = values["hub"]["extraContainers"]
    assert container["command"] == ["python3", "-m", "hub_resilience.service.sidecar"]
    limits, requests = container["resources"]["limits"], container["resources"]["requests"]
    assert {k: parse_quantity(v) for k, v in limits.items()} == {
        k: parse_quantity(v) for k, v in requests.items()
    }
    # The container mounts what the hub container mounts for its configuration, and the
    # drop-in under the key the base values give it.
    mounts = {m["mountPath"]: (m["name"], m.get("subPath")) for m in container["volumeMounts"]}
    [(key, dropin)] = values["hub"]["extraFiles"].items()
    assert mounts == {
        "/usr/local/etc/jupyterhub/jupyterhub_config.py": ("config", "jupyterhub_config.py"),
        "/usr/local/etc/jupyterhub/z2jh.py": ("config", "z2jh.py"),
        "/usr/local/etc/jupyterhub/config/": ("config", None),
        "/usr/local/etc/jupyterhub/secret/": ("secret", None),
        dropin["mountPath"]: ("files", key),
    }
    [port] = container["ports"]
    assert port["containerPort"] == values["hub"]["config"]["HubResilience"]["service_port"]
