"""The zero-to-jupyterhub values in helm-values/: valid for the chart (its own schema, after
helm's merge into its defaults), consistent with each other, and accepted by configure()."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes.utils.quantity import parse_quantity
from traitlets.config import Config

from hub_resilience.configure import configure_from_environment, options_from_environ
from tests.z2jh import InvalidValuesError, merge_values, validate_values_overlay

ROOT = Path(__file__).resolve().parents[1]
VALUES_DIR = ROOT / "helm-values"
BASE = VALUES_DIR / "hub-resilience.yaml"
EVENT = VALUES_DIR / "event.yaml"
DROPIN = ROOT / "jupyterhub_config.d" / "hub_resilience.py"
CONFIG_D = "/usr/local/etc/jupyterhub/jupyterhub_config.d/"


def load(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def installed() -> dict[str, Any]:
    """Base values with the event overlay, as `helm -f base -f event` merges them."""
    return merge_values(load(BASE), load(EVENT))


def test_the_values_files_are_the_expected_ones() -> None:
    names = sorted(p.name for p in VALUES_DIR.glob("*.yaml"))
    assert names == ["event.yaml", "hub-resilience.yaml"]


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
    port = int(values["hub"]["extraEnv"]["HUB_RESILIENCE_SERVICE_PORT"])
    [service_port] = values["hub"]["service"]["extraPorts"]
    assert (service_port["port"], service_port["targetPort"]) == (port, port)
    [ingress] = values["hub"]["networkPolicy"]["ingress"]
    assert ingress["ports"] == [{"port": port, "protocol": "TCP"}]
    assert ingress["from"] == [{"podSelector": {"matchLabels": {"component": "proxy"}}}]
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


def test_spawn_limits_and_activity_sizing_agree() -> None:
    for values in (load(BASE), installed()):
        hub = values["hub"]
        expected = int(hub["extraEnv"]["HUB_RESILIENCE_EXPECTED_SERVERS"])
        assert 0 < hub["concurrentSpawnLimit"] < hub["activeServerLimit"]
        assert expected <= hub["activeServerLimit"]
    assert installed()["scheduling"]["userPlaceholder"]["replicas"] > (
        load(BASE)["scheduling"]["userPlaceholder"]["replicas"]
    )


def z2jh_config(values: dict[str, Any]) -> Config:
    """What zero-to-jupyterhub's jupyterhub_config.py sets before running the drop-in, for
    the settings configure() reads (the chart's Service is called ``hub``)."""
    c = Config()
    c.JupyterHub.spawner_class = "kubespawner.KubeSpawner"
    c.ConfigurableHTTPProxy.api_url = "http://proxy-api:8001"
    c.ConfigurableHTTPProxy.should_start = False
    c.JupyterHub.hub_bind_url = "http://:8081"
    c.JupyterHub.hub_connect_url = "http://hub:8081"
    c.JupyterHub.port = 80
    c.JupyterHub.base_url = values["hub"].get("baseUrl", "/")
    c.JupyterHub.concurrent_spawn_limit = values["hub"]["concurrentSpawnLimit"]
    c.JupyterHub.active_server_limit = values["hub"]["activeServerLimit"]
    c.JupyterHub.services = []
    c.JupyterHub.load_roles = []
    if values["cull"]["enabled"]:
        c.JupyterHub.services.append({
            "name": "jupyterhub-idle-culler",
            "command": ["python3", "-m", "jupyterhub_idle_culler"],
        })
    return c


@pytest.mark.parametrize("which", ["base", "base+event"])
def test_configure_accepts_the_environment_the_values_set(which: str) -> None:
    values = load(BASE) if which == "base" else installed()
    env = values["hub"]["extraEnv"]
    options, unknown = options_from_environ(env)
    assert unknown == []
    c = z2jh_config(values)
    wiring = configure_from_environment(c, env)
    assert wiring is not None
    assert wiring.route_target == f"http://hub:{options['service_port']}"
    assert wiring.service_ip == "0.0.0.0"
    assert wiring.options.expected_servers == int(env["HUB_RESILIENCE_EXPECTED_SERVERS"])
    assert c.JupyterHub.spawner_class == "resilient-kubespawner"
    assert [s["name"] for s in c.JupyterHub.services] == ["hub-resilience"]
