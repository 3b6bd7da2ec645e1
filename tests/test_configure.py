"""configure(): the pure plan, the refusals, what it writes into a real config object (read
back through JupyterHub's own classes), and the drop-in's environment variables."""
from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
from traitlets.config import Config

import hub_resilience
from hub_resilience.configure import (
    CULLER_SCOPES,
    ConfigurationError,
    HubFacts,
    ResilienceOptions,
    Wiring,
    activity_staleness,
    configure,
    configure_from_environment,
    env_name,
    options_from_environ,
    plan_wiring,
    read_hub_facts,
    resolve_options,
)
from hub_resilience.hub.activity import tune_activity
from hub_resilience.service import add_arguments, config_from_args
from hub_resilience.service.culler import Culler

DROPIN = Path(__file__).resolve().parents[1] / "jupyterhub_config.d" / "hub_resilience.py"
PYTHON = "/usr/bin/python3"


def plan(facts: HubFacts | None = None, **options: Any) -> Wiring:
    return plan_wiring(resolve_options(options), facts or HubFacts(), python=PYTHON)


def z2jh_config() -> Config:
    """The parts of zero-to-jupyterhub's jupyterhub_config.py that configure() reads."""
    c = Config()
    c.JupyterHub.spawner_class = "kubespawner.KubeSpawner"
    c.ConfigurableHTTPProxy.api_url = "http://proxy-api:8001"
    c.ConfigurableHTTPProxy.should_start = False
    c.JupyterHub.last_activity_interval = 60
    c.JupyterHub.hub_bind_url = "http://:8081"
    c.JupyterHub.hub_connect_url = "http://hub:8081"
    c.JupyterHub.ip = "10.0.0.10"
    c.JupyterHub.port = 80
    c.JupyterHub.concurrent_spawn_limit = 64
    c.JupyterHub.allow_named_servers = False
    c.JupyterHub.services = []
    c.JupyterHub.load_roles = []
    return c


# -- options --------------------------------------------------------------------------------


def test_unknown_option_lists_the_valid_ones() -> None:
    with pytest.raises(TypeError) as error:
        configure(Config(), cull_timout=3600)
    message = str(error.value)
    assert "'cull_timout'" in message
    assert "cull_timeout" in message and "service_port" in message and "spawner_class" in message


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"cull": "yes"}, "cull must be True or False"),
        ({"service_port": "8181"}, "service_port must be a whole number"),
        ({"cull_timeout": float("nan")}, "cull_timeout must be a finite number"),
        ({"active_server_limit": 1.5}, "active_server_limit must be a whole number or None"),
        ({"expected_servers": True}, "expected_servers must be a whole number"),
        ({"log_level": "LOUD"}, "log_level must be one of"),
        ({"service_ip": ""}, "service_ip must be a non-empty string"),
        ({"culler_options": [("timeout", 1)]}, "culler_options must be a mapping"),
    ],
)
def test_bad_value_types_are_named(options: dict[str, Any], named: str) -> None:
    with pytest.raises(ConfigurationError, match=named):
        resolve_options(options)


def test_defaults_of_the_cull_options_are_the_cullers() -> None:
    """Only options that differ from these defaults are passed to the service, so they must
    stay equal to the Culler's own (cull_timeout excepted: it is always passed)."""
    traits = Culler.class_traits()
    defaults = ResilienceOptions()
    for option, trait in [
        ("cull_every", "cull_every"), ("cull_max_age", "max_age"), ("cull_users", "cull_users"),
        ("cull_admin_users", "cull_admin_users"), ("cull_concurrency", "concurrency"),
        ("remove_named_servers", "remove_named_servers"),
    ]:
        assert getattr(defaults, option) == traits[trait].default(), option


# -- the plan -------------------------------------------------------------------------------


def test_defaults_for_a_plain_local_hub() -> None:
    wiring = plan()
    assert wiring.spawner_class == "resilient-kubespawner"
    assert wiring.service_ip == "127.0.0.1"
    assert (wiring.routespec, wiring.route_target) == ("/user/", "http://127.0.0.1:8181")
    assert wiring.stopped_status == 424
    assert wiring.service == {
        "name": "hub-resilience",
        "display": False,
        "command": [
            PYTHON, "-m", "hub_resilience.service", "--ip", "127.0.0.1", "--port", "8181",
            "--base-url", "/", "--stopped-status", "424", "--no-named-servers",
            "--watch-parent", "--log-level", "INFO", "--culler-option", "timeout=3600",
        ],
    }
    assert wiring.role is not None
    assert wiring.role["scopes"] == list(CULLER_SCOPES)
    assert wiring.role["services"] == ["hub-resilience"]
    assert wiring.activity == tune_activity(100, 10.0, max_interval=3600)


def test_z2jh_hub_listens_everywhere_and_the_proxy_reaches_the_hub_service() -> None:
    wiring = plan(read_hub_facts(z2jh_config()))
    assert wiring.service_ip == "0.0.0.0"
    assert wiring.route_target == "http://hub:8181"
    assert wiring.service_url == "http://127.0.0.1:8181"
    assert "--ip" in wiring.command and wiring.command[wiring.command.index("--ip") + 1] == (
        "0.0.0.0"
    )


def test_base_url_named_servers_and_legacy_status_follow_the_hub() -> None:
    facts = HubFacts(base_url="jh", allow_named_servers=True, legacy_stopped_status=True)
    wiring = plan(facts)
    assert wiring.routespec == "/jh/user/"
    assert wiring.stopped_status == 503
    command = wiring.command
    assert command[command.index("--base-url") + 1] == "/jh/"
    assert "--named-servers" in command
    assert command[command.index("--stopped-status") + 1] == "503"
    assert plan(facts, named_servers=False).named_servers is False
    assert plan(facts, stopped_status=404).stopped_status == 404


@pytest.mark.parametrize(
    ("legacy", "status", "message"),
    [
        (False, 503, "disagrees with the hub, which answers 424"),
        (True, 424, "disagrees with the hub, which answers 503"),
        (False, 500, "must be None"),
    ],
)
def test_stopped_status_must_match_the_hub_or_be_404(
    legacy: bool, status: int, message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message):
        plan(HubFacts(legacy_stopped_status=legacy), stopped_status=status)


def test_cull_users_adds_only_the_scopes_deletion_needs() -> None:
    wiring = plan(cull_users=True, cull_max_age=7200, culler_options={"recheck_after": 5})
    assert wiring.role["scopes"] == [*CULLER_SCOPES, "read:users", "delete:users"]
    assert "admin:users" not in wiring.role["scopes"]
    options = [
        wiring.command[i + 1] for i, part in enumerate(wiring.command) if part == "--culler-option"
    ]
    assert options == ["timeout=3600", "max_age=7200", "cull_users=true", "recheck_after=5"]


def test_culler_timeout_must_outlast_the_activity_intervals() -> None:
    settings = tune_activity(4500, 10.0, max_interval=3600)
    # 4500 servers at 5 reports/s each way: 900 s intervals, resolution a tenth of that.
    assert activity_staleness(settings) == 900 + 90
    with pytest.raises(ConfigurationError, match=r"cull_timeout \(990 s\) must be longer .*990 s"):
        plan(expected_servers=4500, cull_timeout=990)
    assert plan(expected_servers=4500, cull_timeout=991).role is not None
    # Without the culler, nothing to protect.
    assert plan(expected_servers=4500, cull_timeout=990, cull=False).role is None


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"concurrent_spawn_limit": -1}, "concurrent_spawn_limit must be >= 0"),
        ({"active_server_limit": -5}, "active_server_limit must be >= 0"),
        ({"service_port": 70000}, "service_port must be a port number"),
        ({"cull_concurrency": 0}, "cull_concurrency must be >= 1"),
        ({"cull_every": -1}, "cull_every must be >= 0"),
        ({"cull_timeout": 0}, "cull_timeout must be > 0"),
        ({"activity_budget": 0.0}, "activity tuning"),
        ({"service_name": "a/b"}, "not a valid JupyterHub service name"),
        ({"culler_options": {"timeout": 5}}, "duplicate configure.. options; use cull_timeout"),
        ({"culler_options": {"api_token": "x"}}, "must not set api_token"),
    ],
)
def test_bad_values_are_refused_with_the_setting_named(
    options: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message):
        plan(**options)


@pytest.mark.parametrize(
    ("facts", "setting"),
    [
        (HubFacts(hub_port=8181), "JupyterHub.hub_port"),
        (HubFacts(proxy_port=8181), "JupyterHub.port"),
        (HubFacts(proxy_api_port=8181), "ConfigurableHTTPProxy.api_url"),
    ],
)
def test_port_clashes_are_refused(facts: HubFacts, setting: str) -> None:
    with pytest.raises(ConfigurationError, match=f"already used by {setting}"):
        plan(facts)


def test_port_clash_read_from_the_config_object() -> None:
    c = Config()
    c.JupyterHub.hub_bind_url = "http://0.0.0.0:9000"
    with pytest.raises(ConfigurationError, match="JupyterHub.hub_bind_url"):
        configure(c, service_port=9000)
    c = Config()
    c.JupyterHub.port = 9100
    with pytest.raises(ConfigurationError, match="proxy API"):
        configure(c, service_port=9101)


def test_stock_culler_is_refused_unless_ours_is_off() -> None:
    c = z2jh_config()
    c.JupyterHub.services.append({
        "name": "jupyterhub-idle-culler",
        "command": ["python3", "-m", "jupyterhub_idle_culler", "--timeout=3600"],
    })
    with pytest.raises(ConfigurationError, match="cull.enabled: false"):
        configure(c)
    wiring = configure(c, cull=False)
    assert wiring.role is None
    assert "--no-cull" in wiring.command


def test_second_call_and_role_clash_are_refused() -> None:
    c = Config()
    configure(c, spawner_class=None)
    with pytest.raises(ConfigurationError, match="called twice"):
        configure(c, spawner_class=None)
    c = Config()
    c.JupyterHub.load_roles = [{"name": "hub-resilience", "scopes": []}]
    with pytest.raises(ConfigurationError, match="load_roles already has a role"):
        configure(c)


def test_a_hand_made_user_route_is_refused() -> None:
    c = Config()
    c.Proxy.extra_routes = {"/user/": "http://static-responder:8080"}
    with pytest.raises(ConfigurationError, match="hand-made"):
        configure(c)
    same = Config()
    same.Proxy.extra_routes = {"/user/": "http://127.0.0.1:8181/"}
    assert configure(same).routespec == "/user/"


def test_subdomains_need_the_handler_off() -> None:
    c = Config()
    c.JupyterHub.subdomain_host = "https://hub.example.org"
    with pytest.raises(ConfigurationError, match="subdomain_host"):
        configure(c)
    assert configure(c, stopped_handler=False).routespec is None


def test_bad_culler_option_fails_in_configure_not_in_the_hub() -> None:
    with pytest.raises(ConfigurationError, match="unknown Culler option.*recheck_afer"):
        configure(Config(), culler_options={"recheck_afer": 5})
    with pytest.raises(ConfigurationError, match="Culler.recheck_after must be >= 0"):
        configure(Config(), culler_options={"recheck_after": -1})


def test_nothing_is_written_when_refused() -> None:
    c = z2jh_config()
    before = copy.deepcopy(c)
    with pytest.raises(ConfigurationError):
        configure(c, cull_timeout=10)
    assert c == before


def test_handler_and_culler_off_means_no_service() -> None:
    c = Config()
    wiring = configure(c, stopped_handler=False, cull=False, concurrent_spawn_limit=20)
    assert wiring.service is None and wiring.routespec is None
    assert "services" not in c.JupyterHub
    assert c.JupyterHub.concurrent_spawn_limit == 20


# -- what JupyterHub reads back -------------------------------------------------------------


def test_jupyterhub_reads_what_configure_wrote() -> None:
    from jupyterhub.app import JupyterHub
    from jupyterhub.proxy import ConfigurableHTTPProxy

    c = z2jh_config()
    wiring = configure(
        c, expected_servers=2000, activity_budget=10, cull_timeout=7200,
        concurrent_spawn_limit=50, active_server_limit=1500,
    )
    # A config file loaded after the drop-in (z2jh's extraConfig) may still append.
    c.JupyterHub.services.append({"name": "other"})
    app = JupyterHub(config=c)
    assert app.spawner_class.__name__ == "ResilientKubeSpawner"
    assert app.last_activity_interval == wiring.activity.hub_interval == 420  # 2000 / 5, up to 30s
    assert app.activity_resolution == wiring.activity.activity_resolution == 42
    assert app.concurrent_spawn_limit == 50 and app.active_server_limit == 1500
    assert [s["name"] for s in app.services] == ["hub-resilience", "other"]
    assert app.load_roles == [wiring.role]
    proxy = ConfigurableHTTPProxy(config=c, app=app, auth_token="not-used")
    assert proxy.extra_routes == {"/user/": "http://hub:8181"}


def test_lazy_config_values_keep_later_appends() -> None:
    """configure() on a config where services, roles and routes were never set: reading
    them must not freeze the lazy values (traitlets caches LazyConfigValue.get_value)."""
    from jupyterhub.app import JupyterHub
    from jupyterhub.proxy import Proxy

    c = Config()
    c.Proxy.extra_routes.update({"/other/": "http://127.0.0.1:9999"})
    configure(c, spawner_class=None)
    c.JupyterHub.load_roles.append({"name": "later", "scopes": ["read:users"]})
    app = JupyterHub(config=c)
    assert [s["name"] for s in app.services] == ["hub-resilience"]
    assert [r["name"] for r in app.load_roles] == ["hub-resilience", "later"]
    assert Proxy(config=c, app=app).extra_routes == {
        "/other/": "http://127.0.0.1:9999", "/user/": "http://127.0.0.1:8181",
    }


async def test_single_user_activity_interval_matches_the_hub(offline_kubeconfig: Path) -> None:
    from hub_resilience.hub.spawner import ResilientKubeSpawner

    c = z2jh_config()
    wiring = configure(c, expected_servers=2000, activity_budget=10, cull_timeout=7200)
    spawner = ResilientKubeSpawner(_mock=True, config=c)
    assert spawner.get_env()["JUPYTERHUB_ACTIVITY_INTERVAL"] == str(
        wiring.activity.singleuser_interval
    )


def test_other_spawners_get_the_interval_through_the_environment() -> None:
    c = Config()
    c.Spawner.environment = {"JUPYTERHUB_ACTIVITY_INTERVAL": "900", "OTHER": "1"}
    configure(c, spawner_class="hub_resilience.tools.simulated_spawner.SimulatedSpawner")
    assert c.Spawner.environment["JUPYTERHUB_ACTIVITY_INTERVAL"] == "900"  # kept
    c = Config()
    wiring = configure(c, spawner_class="hub_resilience.tools.simulated_spawner.SimulatedSpawner")
    assert c.Spawner.environment.get_value({}) == {
        "JUPYTERHUB_ACTIVITY_INTERVAL": str(wiring.activity.singleuser_interval)
    }


def test_the_service_parses_the_command_configure_writes() -> None:
    import argparse

    wiring = plan(
        read_hub_facts(z2jh_config()), cull_users=True, cull_every=300, remove_named_servers=True,
        culler_options={"recheck_after": 2.5, "api_page_size": 50},
    )
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(wiring.command[3:])
    config = config_from_args(args)
    assert dict(config.ResilienceService) == {
        "ip": "0.0.0.0", "port": 8181, "base_url": "/", "stopped_status": 424,
        "named_servers": False, "watch_parent": True,
    }
    assert dict(config.Culler) == {
        "timeout": 3600.0, "cull_every": 300.0, "cull_users": True,
        "remove_named_servers": True, "recheck_after": 2.5, "api_page_size": 50,
    }
    culler = Culler(config=config, api_url="http://unused", api_token="unused")
    assert (culler.timeout, culler.cull_users, culler.api_page_size) == (3600.0, True, 50)


# -- the drop-in ----------------------------------------------------------------------------


def test_options_from_the_environment() -> None:
    options, unknown = options_from_environ({
        "HUB_RESILIENCE_SERVICE_PORT": "9000",
        "HUB_RESILIENCE_CULL_TIMEOUT": "7200",
        "HUB_RESILIENCE_CULL_USERS": "yes",
        "HUB_RESILIENCE_STOPPED_STATUS": "404",
        "HUB_RESILIENCE_NAMED_SERVERS": "default",
        "HUB_RESILIENCE_SPAWNER_CLASS": "none",
        "HUB_RESILIENCE_CULLER_OPTIONS": '{"recheck_after": 5}',
        "HUB_RESILIENCE_ACTIVITY_BUDGET": "12.5",
        "HUB_RESILIENCE_CULL_TIMOUT": "1",
        "HUB_RESILIENCE_HOME": "/root/.cache",
        "HUB_RESILIENCE_ENABLED": "true",
        "PATH": "/usr/bin",
    })
    assert options == {
        "service_port": 9000, "cull_timeout": 7200.0, "cull_users": True,
        "stopped_status": 404, "named_servers": None, "spawner_class": None,
        "culler_options": {"recheck_after": 5}, "activity_budget": 12.5,
    }
    assert unknown == ["HUB_RESILIENCE_CULL_TIMOUT"]
    assert env_name("cull_timeout") == "HUB_RESILIENCE_CULL_TIMEOUT"


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("HUB_RESILIENCE_SERVICE_PORT", "eighty"),
        ("HUB_RESILIENCE_CULL", "maybe"),
        ("HUB_RESILIENCE_CULLER_OPTIONS", "[1, 2]"),
        ("HUB_RESILIENCE_CULLER_OPTIONS", "{not json"),
        ("HUB_RESILIENCE_CULL_TIMEOUT", "1h"),
    ],
)
def test_unreadable_variables_are_named(variable: str, value: str) -> None:
    with pytest.raises(ConfigurationError, match=re.escape(f"{variable}={value!r} cannot be read")):
        options_from_environ({variable: value})


def test_drop_in_file_configures_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("HUB_RESILIENCE_SERVICE_PORT", "9010")
    monkeypatch.setenv("HUB_RESILIENCE_CULL_TIMEOUT", "5400")
    monkeypatch.setenv("HUB_RESILIENCE_CULL_TIMOUT", "1")
    c = z2jh_config()
    # As zero-to-jupyterhub runs the files of jupyterhub_config.d: exec'd with `c` in scope.
    exec(compile(DROPIN.read_text(), str(DROPIN), "exec"), {"c": c})
    [service] = c.JupyterHub.services
    assert "--port" in service["command"] and "9010" in service["command"]
    assert "timeout=5400" in service["command"]
    assert c.Proxy.extra_routes.get_value({}) == {"/user/": "http://hub:9010"}
    captured = capsys.readouterr()
    assert "ignoring unknown variable(s) HUB_RESILIENCE_CULL_TIMOUT" in captured.err
    assert "route /user/ -> http://hub:9010" in captured.out


def test_drop_in_can_be_switched_off() -> None:
    c = z2jh_config()
    before = copy.deepcopy(c)
    assert configure_from_environment(c, {"HUB_RESILIENCE_ENABLED": "false"}) is None
    assert c == before
    with pytest.raises(ConfigurationError, match="HUB_RESILIENCE_ENABLED='nah'"):
        configure_from_environment(c, {"HUB_RESILIENCE_ENABLED": "nah"})


def test_configure_is_the_package_level_name() -> None:
    assert hub_resilience.configure is configure
