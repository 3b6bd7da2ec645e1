"""configure(): the pure plan, the refusals, what it writes into a real config object (read
back through JupyterHub's own classes), the service command line it writes, and the drop-in."""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
from traitlets.config import Config

import hub_resilience
from hub_resilience.configure import (
    ConfigurationError,
    HubFacts,
    HubResilience,
    Wiring,
    activity_staleness,
    configure,
    plan_wiring,
    read_culler_plan,
    read_hub_facts,
)
from hub_resilience.hub.activity import tune_activity
from hub_resilience.service.commands import ServiceApp
from hub_resilience.service.culler import SCOPES, Culler
from hub_resilience.service.running import LISTING_SCOPES

DROPIN = Path(__file__).resolve().parents[1] / "jupyterhub_config.d" / "hub_resilience.py"
PYTHON = "/usr/bin/python3"


def plan(
    facts: HubFacts | None = None, *, culler: dict[str, Any] | None = None, **options: Any
) -> Wiring:
    """The pure plan for ``HubResilience`` options and ``Culler`` settings."""
    c = Config({"HubResilience": options, "Culler": culler or {}})
    return plan_wiring(
        HubResilience(config=c), read_culler_plan(c), facts or HubFacts(), python=PYTHON
    )


def z2jh_config() -> Config:
    """The parts of zero-to-jupyterhub's jupyterhub_config.py that configure() reads (the
    real file is run in tests/test_z2jh_hub.py)."""
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


def flag(command: list[str], name: str) -> str:
    """The value of ``--name=value`` in a command line."""
    [value] = [part.split("=", 1)[1] for part in command if part.startswith(f"--{name}=")]
    return value


# -- options --------------------------------------------------------------------------------


def test_unknown_option_lists_the_valid_ones() -> None:
    with pytest.raises(TypeError) as error:
        configure(Config(), expected_servers=3600)
    message = str(error.value)
    assert "'expected_servers'" in message
    assert "expected_concurrent_servers" in message and "service_port" in message


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"cull": "yes"}, "'cull' trait of a HubResilience instance expected a boolean"),
        ({"service_port": "8181"}, "'service_port' trait of a HubResilience instance"),
        ({"activity_requests_per_second": float("nan")}, "activity_requests_per_second must be"),
        ({"active_server_limit": 1.5}, "'active_server_limit' trait of a HubResilience"),
        ({"expected_concurrent_servers": 0}, "expected_concurrent_servers must be >= 1"),
        ({"log_level": "LOUD"}, "'log_level' trait of a HubResilience instance"),
        ({"service_ip": " "}, "HubResilience.service_ip must be None or a non-empty string"),
        ({"concurrent_spawn_limit": -1}, "concurrent_spawn_limit must be >= 0"),
        ({"service_port": 70000}, "service_port must be a port number"),
        ({"stopped_status": 500}, "stopped_status must be None"),
        ({"service_name": "a/b"}, "not a valid JupyterHub service name"),
        ({"activity_max_interval": 60}, "activity_max_interval must be >= 300 s"),
    ],
)
def test_bad_values_are_refused_naming_the_trait(options: dict[str, Any], named: str) -> None:
    with pytest.raises(ConfigurationError, match=named):
        configure(Config(), **options)
    # The same value set in the config (z2jh: hub.config.HubResilience) is refused alike.
    c = Config({"HubResilience": options})
    with pytest.raises(ConfigurationError, match=named):
        configure(c)


def test_every_option_is_a_documented_trait() -> None:
    traits = HubResilience.class_traits(config=True)
    assert {"enabled", "expected_concurrent_servers", "cull", "service_port"} <= set(traits)
    for name, trait in traits.items():
        assert trait.help.strip(), f"HubResilience.{name} has no help"


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
            PYTHON, "-m", "hub_resilience.service",
            "--ResilienceService.ip=127.0.0.1", "--ResilienceService.port=8181",
            "--ResilienceService.base_url=/", "--ResilienceService.stopped_status=424",
            "--ResilienceService.named_servers=False", "--ResilienceService.stopped_handler=True",
            "--ResilienceService.running_servers_max_age=30.0", "--ResilienceService.cull=True",
            "--ResilienceService.watch_parent=True",
            "--ServiceApp.log_level=20", "--Culler.api_url=http://127.0.0.1:8081/hub/api",
        ],
    }
    assert wiring.role is not None
    assert wiring.role["scopes"] == list(SCOPES)
    assert wiring.role["services"] == ["hub-resilience"]
    assert wiring.activity == tune_activity(100, 10.0, max_interval=3600)


def test_z2jh_hub_listens_everywhere_and_the_proxy_reaches_the_hub_service() -> None:
    wiring = plan(read_hub_facts(z2jh_config()))
    assert wiring.service_ip == ""  # every interface, IPv4 and IPv6
    assert wiring.route_target == "http://hub:8181"
    assert wiring.service_url == "http://127.0.0.1:8181"
    assert flag(wiring.command, "ResilienceService.ip") == ""
    # The culler reaches the hub over loopback, not through the hub Service, which z2jh's
    # network policy does not open to the hub pod itself.
    assert flag(wiring.command, "Culler.api_url") == "http://localhost:8081/hub/api"


def test_base_url_named_servers_and_legacy_status_follow_the_hub() -> None:
    facts = HubFacts(base_url="jh", allow_named_servers=True, legacy_stopped_status=True)
    wiring = plan(facts)
    assert wiring.routespec == "/jh/user/"
    assert wiring.stopped_status == 503
    command = wiring.command
    assert flag(command, "ResilienceService.base_url") == "/jh/"
    assert flag(command, "ResilienceService.named_servers") == "True"
    assert flag(command, "ResilienceService.stopped_status") == "503"
    assert flag(command, "Culler.api_url") == "http://127.0.0.1:8081/jh/hub/api"
    assert plan(facts, named_servers=False).named_servers is False
    assert plan(facts, stopped_status=404).stopped_status == 404


@pytest.mark.parametrize(
    ("legacy", "status", "message"),
    [
        (False, 503, "disagrees with the hub, which answers 424"),
        (True, 424, "disagrees with the hub, which answers 503"),
        (False, 404, None),
    ],
)
def test_stopped_status_must_match_the_hub_or_be_404(
    legacy: bool, status: int, message: str | None
) -> None:
    if message is None:
        wiring = plan(HubFacts(legacy_stopped_status=legacy), stopped_status=status)
        assert wiring.stopped_status == 404
        return
    with pytest.raises(ConfigurationError, match=message):
        plan(HubFacts(legacy_stopped_status=legacy), stopped_status=status)


def test_the_handlers_listing_of_running_servers_needs_only_its_scopes() -> None:
    """With the culler off, the service's token may list users' servers, nothing more; with
    the listing off too (or the handler off), the service gets no role."""
    listing = configure(z2jh_config(), cull=False).role
    assert listing is not None and listing["scopes"] == ["list:users", "read:servers"]
    assert configure(z2jh_config(), cull=False, running_servers_max_age=0).role is None
    assert configure(z2jh_config(), cull=False, stopped_handler=False).role is None
    with pytest.raises(ConfigurationError, match="running_servers_max_age must be"):
        configure(z2jh_config(), running_servers_max_age=float("nan"))
    assert flag(configure(z2jh_config(), running_servers_max_age=5).command,
                "ResilienceService.running_servers_max_age") == "5.0"


def test_cull_users_adds_only_the_scopes_deletion_needs() -> None:
    wiring = plan(culler={"cull_users": True, "max_age": 7200, "recheck_after": 5})
    assert wiring.role["scopes"] == [*SCOPES, "read:users", "delete:users"]
    assert "admin:users" not in wiring.role["scopes"]
    options = [part for part in wiring.command if part.startswith("--Culler.")]
    assert options == [
        "--Culler.api_url=http://127.0.0.1:8081/hub/api",
        "--Culler.cull_users=True", "--Culler.max_age=7200", "--Culler.recheck_after=5",
    ]


def test_culler_timeout_must_outlast_the_activity_intervals() -> None:
    settings = tune_activity(4500, 10.0, max_interval=3600)
    # 4500 servers at 5 reports/s each way: 900 s intervals, resolution a tenth of that.
    assert activity_staleness(settings) == 900 + 90
    longer = r"Culler.timeout \(990 s\) must be longer .*990 s"
    with pytest.raises(ConfigurationError, match=longer):
        plan(expected_concurrent_servers=4500, culler={"timeout": 990})
    assert plan(expected_concurrent_servers=4500, culler={"timeout": 991}).role is not None
    # Without the culler, nothing to protect.
    assert plan(expected_concurrent_servers=4500, culler={"timeout": 990}, cull=False)


@pytest.mark.parametrize(
    ("culler", "message"),
    [
        ({"concurrency": 0}, "Culler.concurrency must be >= 1"),
        ({"cull_every": -1}, "Culler.cull_every must be >= 0"),
        ({"timeout": 0}, "Culler.timeout must be > 0"),
        ({"timeout": "soon"}, "'timeout' trait of a Culler instance expected a float"),
        ({"api_token": "x"}, "unknown Culler setting.*api_token.*the service sets api_token"),
        ({"recheck_afer": 5}, "unknown Culler setting.*recheck_afer"),
    ],
)
def test_bad_culler_settings_fail_in_configure_not_in_the_service(
    culler: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message):
        configure(Config({"Culler": culler}))


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
    assert wiring.role is not None and wiring.role["scopes"] == list(LISTING_SCOPES)
    assert flag(wiring.command, "ResilienceService.cull") == "False"


@pytest.mark.parametrize(
    "command",
    [
        ["hub-resilience", "cull", "--timeout=3600"],
        ["/usr/bin/python3", "-m", "hub_resilience", "cull"],
        ["/opt/venv/bin/hub-resilience", "cull", "--once"],
    ],
)
def test_our_own_culler_as_another_service_is_refused(command: list[str]) -> None:
    c = z2jh_config()
    c.JupyterHub.services.append({"name": "my-culler", "command": command})
    with pytest.raises(ConfigurationError, match="already runs hub-resilience's culler"):
        configure(c)
    assert configure(c, cull=False).role["scopes"] == list(LISTING_SCOPES)  # type: ignore[index]


def test_a_misspelt_setting_is_refused_not_ignored() -> None:
    c = z2jh_config()
    c.HubResilience.expected_servers = 800  # the old name
    with pytest.raises(ConfigurationError, match="unknown setting.*HubResilience.expected_servers"):
        configure(c)


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


def test_nothing_is_written_when_refused() -> None:
    c = z2jh_config()
    before = copy.deepcopy(c)
    with pytest.raises(ConfigurationError):
        configure(c, expected_concurrent_servers=50_000)  # intervals beyond Culler.timeout
    assert c == before
    c.Culler.timeout = 10
    before = copy.deepcopy(c)
    with pytest.raises(ConfigurationError):
        configure(c)
    assert c == before


def test_retry_range_is_merged_into_the_tornado_settings_jupyterhub_reads() -> None:
    from jupyterhub.app import JupyterHub

    c = z2jh_config()
    c.JupyterHub.tornado_settings = {"slow_spawn_timeout": 0}  # as z2jh sets it
    c.HubResilience.spawn_throttle_retry_range = [5, 15]
    configure(c)
    app = JupyterHub(config=c)
    assert app.tornado_settings == {
        "slow_spawn_timeout": 0, "spawn_throttle_retry_range": (5, 15),
    }
    with pytest.raises(ConfigurationError, match="0 < low <= high"):
        configure(z2jh_config(), spawn_throttle_retry_range=[20, 10])


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
    c.Culler.timeout = 7200
    wiring = configure(
        c, expected_concurrent_servers=2000, activity_requests_per_second=10,
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
    c.Culler.timeout = 7200
    wiring = configure(c, expected_concurrent_servers=2000, activity_requests_per_second=10)
    assert c.HubResilience.expected_concurrent_servers == 2000  # written back for the spawner
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


async def test_a_spawner_section_with_its_own_environment_gets_the_interval_too(
    offline_kubeconfig: Path,
) -> None:
    """z2jh sets c.KubeSpawner.environment, which hides c.Spawner.environment for a plain
    KubeSpawner (HubResilience.spawner_class None keeps the chart's)."""
    from kubespawner import KubeSpawner

    c = z2jh_config()
    c.KubeSpawner.environment = {"OTHER": "1"}
    wiring = configure(c, spawner_class=None)
    interval = str(wiring.activity.singleuser_interval)
    assert c.KubeSpawner.environment == {"OTHER": "1", "JUPYTERHUB_ACTIVITY_INTERVAL": interval}
    assert KubeSpawner(_mock=True, config=c).environment["JUPYTERHUB_ACTIVITY_INTERVAL"] == (
        interval
    )


def test_the_service_reads_the_command_configure_writes() -> None:
    wiring = plan(
        read_hub_facts(z2jh_config()),
        culler={
            "cull_users": True, "cull_every": 300, "remove_named_servers": True,
            "recheck_after": 2.5, "api_page_size": 50,
        },
    )
    app = ServiceApp()
    app.parse_command_line(wiring.command[3:])
    assert dict(app.config.ResilienceService) == {
        "ip": "", "port": 8181, "base_url": "/", "stopped_status": 424,
        "named_servers": False, "stopped_handler": True, "cull": True, "watch_parent": True,
        "running_servers_max_age": 30.0,
    }
    culler = Culler(config=app.config, api_url="http://unused", api_token="unused")
    assert (culler.timeout, culler.cull_every, culler.cull_users) == (3600.0, 300.0, True)
    assert (culler.remove_named_servers, culler.recheck_after, culler.api_page_size) == (
        True, 2.5, 50
    )


def test_the_service_command_refuses_a_bad_value_naming_the_trait(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert ServiceApp.main(["--ResilienceService.port=http"]) == 2
    assert "'port' trait of a ResilienceService instance" in capsys.readouterr().err


# -- the drop-in ----------------------------------------------------------------------------


def test_drop_in_file_configures_from_the_config(capsys: pytest.CaptureFixture[str]) -> None:
    c = z2jh_config()
    # As z2jh's hub.config would have set them, before it runs the drop-in.
    c.HubResilience.service_port = 9010
    c.Culler.timeout = 5400
    # As zero-to-jupyterhub runs the files of jupyterhub_config.d: exec'd with `c` in scope.
    exec(compile(DROPIN.read_text(), str(DROPIN), "exec"), {"c": c})
    [service] = c.JupyterHub.services
    assert flag(service["command"], "ResilienceService.port") == "9010"
    assert flag(service["command"], "Culler.timeout") == "5400"
    assert c.Proxy.extra_routes.get_value({}) == {"/user/": "http://hub:9010"}
    assert "route /user/ -> http://hub:9010" in capsys.readouterr().out


def test_drop_in_can_be_switched_off() -> None:
    c = z2jh_config()
    c.HubResilience.enabled = False
    before = copy.deepcopy(c)
    exec(compile(DROPIN.read_text(), str(DROPIN), "exec"), {"c": c})
    assert c == before


def test_configure_is_the_package_level_name() -> None:
    assert hub_resilience.configure is configure
