"""``configure(c)``: switch hub-resilience on in a JupyterHub config, wired consistently.

Why: the pieces (the Guaranteed-QoS spawner, tuned activity intervals, spawn limits, the
stopped-server handler, the culler, their metrics) only help when wired together: the
handler needs a proxy route the hub keeps, the culler a token with the right scopes and a
timeout longer than the activity intervals, the service a port nobody else uses. The
options are the traits of :class:`HubResilience` (z2jh: ``hub.config.HubResilience.*``), the
culler's are the :class:`~hub_resilience.service.culler.Culler`'s own (``hub.config.Culler.*``);
docs/configuration.md has the whole story. Policy is pure (:func:`plan_wiring`);
:func:`read_hub_facts` and :func:`apply_wiring` are the adapters around the config object.
"""
from __future__ import annotations

import copy
import logging
import socket
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from traitlets import TraitError
from traitlets.config import Config

from hub_resilience.hub.activity import ActivitySettings
from hub_resilience.hub.route_repair import start_route_repair
from hub_resilience.service.running import LISTING_SCOPES
from hub_resilience.settings import (
    HUB_LEGACY_STOPPED_STATUS,
    HUB_STOPPED_STATUS,
    NOT_FOUND_STATUS,
    ConfigurationError,
    HubResilience,
)

if TYPE_CHECKING:
    from hub_resilience.service.culler import Culler

#: Names under which the package's spawner can be given to ``JupyterHub.spawner_class``.
RESILIENT_SPAWNER_NAMES = frozenset(
    {"resilient-kubespawner", "hub_resilience.hub.spawner.ResilientKubeSpawner"}
)

#: Names of the stock idle culler's service (z2jh's and older conventions); with ``cull``
#: on, two cullers would race each other, so one of them is refused.
STOCK_CULLER_NAMES = frozenset({"jupyterhub-idle-culler", "cull-idle", "idle-culler"})

#: Culler traits the service sets itself (from the hub), never taken from ``c.Culler``.
CULLER_CONNECTION_TRAITS = frozenset({"api_url", "api_token"})


@dataclass(frozen=True)
class CullerPlan:
    """What configure() needs of the culler's settings (read from ``c.Culler``)."""

    settings: Mapping[str, Any] = field(default_factory=dict)
    """The Culler traits set in the hub's config, passed to the service as given."""
    timeout: float = 3600
    cull_users: bool = False
    scopes: tuple[str, ...] = ()
    """The scopes the culler's token needs with these settings."""


@dataclass(frozen=True)
class HubFacts:
    """What configure() needs to know about the config it is wiring into."""

    base_url: str = "/"
    hub_bind_host: str | None = None  # None: not set; "": all interfaces
    hub_ip: str | None = None
    hub_port: int = 8081
    hub_port_setting: str = "JupyterHub.hub_port"
    hub_connect_host: str | None = None
    proxy_port: int = 8000
    proxy_port_setting: str = "JupyterHub.port"
    proxy_api_port: int = 8001
    proxy_api_port_setting: str = "ConfigurableHTTPProxy.api_url"
    allow_named_servers: bool = False
    legacy_stopped_status: bool = False
    subdomain_host: str = ""
    services: tuple[Mapping[str, Any], ...] = ()
    role_names: tuple[str, ...] = ()
    extra_routes: Mapping[str, str] = field(default_factory=dict)
    hostname: str = "localhost"



@dataclass(frozen=True)
class Wiring:
    """Everything configure() writes, decided before anything is written."""

    activity: ActivitySettings
    service: dict[str, Any] | None
    role: dict[str, Any] | None
    routespec: str | None
    route_target: str | None
    service_ip: str
    service_url: str
    """Where the service answers (health, metrics), as seen from the hub's machine."""
    stopped_status: int
    named_servers: bool
    spawner_class: str | None
    concurrent_spawn_limit: int | None
    active_server_limit: int | None
    spawn_throttle_retry_range: tuple[int, int] | None
    command: list[str] | None = None
    """The service's command line (in the service entry in "managed" mode; what the sidecar
    runs in "container" mode)."""
    service_mode: str = "managed"
    adopted_service: bool = False
    """In "container" mode: the service entry is the one already declared (z2jh's
    hub.services, with the token the chart keeps in its Secret), not a new one."""


# -- the plan (pure) ------------------------------------------------------------------------


def normalize_base_url(base_url: str) -> str:
    """JupyterHub's normalization: a leading and a trailing slash."""
    if not base_url.startswith("/"):
        base_url = "/" + base_url
    if not base_url.endswith("/"):
        base_url += "/"
    return base_url


def is_wildcard(ip: str) -> bool:
    return ip in ("", "0.0.0.0", "::")


def default_service_ip(facts: HubFacts) -> str:
    """Listen where the hub listens: everywhere when it does (the proxy is in another pod),
    as "" (every interface of every address family, so an IPv6-only cluster works too)."""
    for candidate in (facts.hub_bind_host, facts.hub_ip):
        if candidate is not None:
            return candidate
    return "127.0.0.1"  # JupyterHub's default hub_ip


def hub_api_url_beside_the_hub(facts: HubFacts) -> str:
    """The hub's API as a process beside the hub (same pod) reaches it: over loopback when
    the hub listens everywhere, never through the hub's Service, which z2jh's network
    policy closes to the hub pod itself (z2jh's own culler uses localhost for this)."""
    host = facts.hub_bind_host if facts.hub_bind_host is not None else facts.hub_ip
    if host is None:
        host = "127.0.0.1"  # JupyterHub's default hub_ip
    elif is_wildcard(host):
        host = "localhost"
    base_url = normalize_base_url(facts.base_url)
    return f"http://{_url_host(host)}:{facts.hub_port}{base_url}hub/api"


def default_proxy_target_host(facts: HubFacts, service_ip: str) -> str:
    """The host the proxy reaches the hub's machine by (the service runs beside the hub)."""
    if facts.hub_connect_host:
        return facts.hub_connect_host
    if not is_wildcard(service_ip):
        return service_ip
    return facts.hostname


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def stopped_status_for(requested: int | None, facts: HubFacts) -> int:
    """The status the handler answers with, consistent with the hub's own."""
    hub_status = HUB_LEGACY_STOPPED_STATUS if facts.legacy_stopped_status else HUB_STOPPED_STATUS
    status = requested
    if status is None or status == hub_status:
        return hub_status
    if status == NOT_FOUND_STATUS:
        return status
    if status in (HUB_STOPPED_STATUS, HUB_LEGACY_STOPPED_STATUS):
        raise ConfigurationError(
            f"HubResilience.stopped_status={status} disagrees with the hub, which answers "
            f"{hub_status} for a stopped server (JupyterHub.use_legacy_stopped_server_status_code="
            f"{facts.legacy_stopped_status}); leave stopped_status unset to follow the hub"
        )
    raise ConfigurationError(
        f"HubResilience.stopped_status must be None (the hub's {hub_status}) or "
        f"{NOT_FOUND_STATUS}, got {status}"
    )


def activity_staleness(settings: ActivitySettings) -> int:
    """Seconds by which a server's ``last_activity`` in the hub may lag real activity: the
    longer of the two report intervals, plus the resolution below which writes are dropped."""
    return max(settings.singleuser_interval, settings.hub_interval) + settings.activity_resolution


def format_trait_value(value: Any) -> str:
    """A trait value as traitlets reads it back from ``--Class.trait=VALUE``."""
    if isinstance(value, str):
        return value
    return repr(value)


def service_command(
    settings: HubResilience,
    culler: CullerPlan,
    *,
    ip: str,
    base_url: str,
    stopped_status: int,
    named_servers: bool,
    hub_api_url: str,
    watch_parent: bool,
    python: str,
) -> list[str]:
    """The service's command line (the hub runs it, or the sidecar): ``python -m
    hub_resilience.service`` with every setting as ``--Class.trait=value``."""
    service = {
        "ip": ip,
        "port": settings.service_port,
        "base_url": base_url,
        "stopped_status": stopped_status,
        "named_servers": named_servers,
        "stopped_handler": settings.stopped_handler,
        "running_servers_max_age": settings.running_servers_max_age,
        "cull": settings.cull,
        "watch_parent": watch_parent,
    }
    command = [python, "-m", "hub_resilience.service"]
    command += [f"--ResilienceService.{k}={format_trait_value(v)}" for k, v in service.items()]
    # The Application's log_level takes logging's numbers (its names lack "WARNING").
    command.append(f"--ServiceApp.log_level={logging.getLevelName(settings.log_level.upper())}")
    if settings.cull:
        command.append(f"--Culler.api_url={hub_api_url}")
        command += [f"--Culler.{k}={format_trait_value(v)}" for k, v in culler.settings.items()]
    return command


def service_scopes(settings: HubResilience, culler: CullerPlan) -> list[str]:
    """The service token's least scopes: the culler's, and the handler's listing of running
    servers (docs/service.md)."""
    scopes = list(culler.scopes) if settings.cull else []
    if settings.stopped_handler and settings.running_servers_max_age:
        scopes += [s for s in LISTING_SCOPES if s not in scopes]
    return scopes


def _check_ports(settings: HubResilience, facts: HubFacts) -> None:
    for port, setting in (
        (facts.hub_port, facts.hub_port_setting),
        (facts.proxy_port, facts.proxy_port_setting),
        (facts.proxy_api_port, facts.proxy_api_port_setting),
    ):
        if settings.service_port == port:
            raise ConfigurationError(
                f"HubResilience.service_port {settings.service_port} is already used by "
                f"{setting}; "
                "choose another port for the resilience service"
            )


def _runs_our_culler(command: str) -> bool:
    """Whether a service command line runs ``hub-resilience cull`` (any spelling)."""
    words = command.replace("/", " ").split()
    return any(
        word in ("hub-resilience", "hub_resilience") and words[i + 1 : i + 2] == ["cull"]
        for i, word in enumerate(words)
    )


def _check_existing(settings: HubResilience, facts: HubFacts) -> None:
    for spec in facts.services:
        name = spec.get("name")
        command = " ".join(str(part) for part in spec.get("command") or ())
        declared_for_container = settings.service_mode == "container" and not command
        if name == settings.service_name and not declared_for_container:
            raise ConfigurationError(
                f"JupyterHub.services already has a service named {name!r} "
                "(configure() called twice?); set another HubResilience.service_name"
            )
        stock = name in STOCK_CULLER_NAMES or "jupyterhub_idle_culler" in command
        if settings.cull and stock:
            raise ConfigurationError(
                f"the stock idle culler is configured as service {name!r}; two cullers "
                "would race each other. Turn it off (z2jh: cull.enabled: false) or set "
                "HubResilience.cull = False"
            )
        if settings.cull and _runs_our_culler(command):
            raise ConfigurationError(
                f"service {name!r} already runs hub-resilience's culler ({command!r}); two "
                "cullers would race each other. Remove that service or set "
                "HubResilience.cull = False"
            )
    if settings.service_name in facts.role_names:
        raise ConfigurationError(
            f"JupyterHub.load_roles already has a role named {settings.service_name!r}; set "
            "another HubResilience.service_name"
        )


def plan_wiring(
    settings: HubResilience,
    culler: CullerPlan,
    facts: HubFacts,
    *,
    python: str = sys.executable,
) -> Wiring:
    """Decide everything configure() writes; :class:`ConfigurationError` on a bad combination."""
    activity = settings.activity_settings()
    staleness = activity_staleness(activity)
    if settings.cull and culler.timeout <= staleness:
        raise ConfigurationError(
            f"Culler.timeout ({culler.timeout:g} s) must be longer than the time by which the "
            f"hub's view of activity may lag ({staleness} s: single-user interval "
            f"{activity.singleuser_interval} s, hub interval {activity.hub_interval} s, "
            f"resolution {activity.activity_resolution} s), or active servers would be "
            "culled; raise Culler.timeout, or lower HubResilience.activity_max_interval / "
            "expected_concurrent_servers"
        )
    base_url = normalize_base_url(facts.base_url)
    stopped_status = stopped_status_for(settings.stopped_status, facts)
    named = facts.allow_named_servers if settings.named_servers is None else settings.named_servers
    service_ip = settings.service_ip or default_service_ip(facts)
    run_service = settings.stopped_handler or settings.cull
    if run_service:
        _check_ports(settings, facts)
        _check_existing(settings, facts)
    connect_ip = "127.0.0.1" if is_wildcard(service_ip) else service_ip
    service_url = f"http://{_url_host(connect_ip)}:{settings.service_port}"

    routespec = target = None
    if settings.stopped_handler:
        if facts.subdomain_host:
            raise ConfigurationError(
                "the stopped-server handler needs path-based routing, but "
                f"JupyterHub.subdomain_host is set ({facts.subdomain_host!r}): each user has "
                "their own host, so one /user/ route cannot catch them; set "
                "HubResilience.stopped_handler = False"
            )
        routespec = base_url + "user/"
        host = settings.proxy_target_host or default_proxy_target_host(facts, service_ip)
        target = f"http://{_url_host(host)}:{settings.service_port}"
        existing = facts.extra_routes.get(routespec)
        if existing is not None and existing.rstrip("/") != target:
            raise ConfigurationError(
                f"Proxy.extra_routes already routes {routespec} to {existing} (a hand-made "
                f"stopped-server route?); remove it, the service takes over at {target}"
            )

    service = role = command = None
    container = settings.service_mode == "container"
    declared = next((s for s in facts.services if s.get("name") == settings.service_name), None)
    if run_service:
        command = service_command(
            settings, culler, ip=service_ip, base_url=base_url,
            stopped_status=stopped_status, named_servers=named,
            hub_api_url=hub_api_url_beside_the_hub(facts), watch_parent=not container,
            python=python,
        )
        if container and not (settings.api_token or (declared or {}).get("api_token")):
            raise ConfigurationError(
                'HubResilience.service_mode "container" needs a token the hub and the '
                f"container share: declare the service (z2jh: hub.services.{settings.service_name}"
                ": {} makes the chart generate one) or set HubResilience.api_token"
            )
        if container and declared is None:
            service = {"name": settings.service_name, "display": False}
        elif not container:
            service = {"name": settings.service_name, "command": command, "display": False}
        if service is not None and settings.api_token:
            service["api_token"] = settings.api_token
        scopes = service_scopes(settings, culler)
        if scopes:
            role = {
                "name": settings.service_name,
                "description": "hub-resilience service: the least scopes of its culler and "
                "stopped-server handler",
                "scopes": scopes,
                "services": [settings.service_name],
            }
    return Wiring(
        activity=activity,
        service=service,
        role=role,
        routespec=routespec,
        route_target=target,
        service_ip=service_ip,
        service_url=service_url,
        stopped_status=stopped_status,
        named_servers=named,
        spawner_class=settings.spawner_class,
        concurrent_spawn_limit=settings.concurrent_spawn_limit,
        active_server_limit=settings.active_server_limit,
        spawn_throttle_retry_range=(
            None if settings.spawn_throttle_retry_range is None
            else (settings.spawn_throttle_retry_range[0], settings.spawn_throttle_retry_range[1])
        ),
        command=command,
        service_mode=settings.service_mode,
        adopted_service=run_service and container and declared is not None,
    )


# -- the adapters ---------------------------------------------------------------------------


def _section(c: Config, name: str) -> Config:
    """A config section for reading, without creating it in ``c`` when it is absent."""
    return c[name] if name in c else Config()


def _get(section: Config, key: str) -> Any:
    """A value explicitly set in a config section, or None (never a LazyConfigValue)."""
    from traitlets.config.loader import LazyConfigValue

    if key not in section:
        return None
    value = section[key]
    return None if isinstance(value, LazyConfigValue) else value


def _items(section: Config, key: str, empty: Any) -> Any:
    """A container value, with the appends of a LazyConfigValue applied to ``empty``.

    A copy is evaluated: ``LazyConfigValue.get_value`` caches its result, so calling it on
    the config's own object would make it forget anything appended afterwards.
    """
    from traitlets.config.loader import LazyConfigValue

    if key not in section:
        return empty
    value = section[key]
    if isinstance(value, LazyConfigValue):
        return copy.deepcopy(value).get_value(empty)
    return value


def _port(url: object) -> int | None:
    if not url:
        return None
    parsed = urlparse(str(url))
    if parsed.port:
        return parsed.port
    return {"http": 80, "https": 443}.get(parsed.scheme)


def read_hub_facts(c: Config) -> HubFacts:
    """Read what :func:`plan_wiring` needs from a JupyterHub config object (read only)."""
    hub = _section(c, "JupyterHub")
    facts: dict[str, Any] = {}
    base_url = _get(hub, "base_url")
    if base_url:
        facts["base_url"] = str(base_url)
    bind_url = _get(hub, "hub_bind_url")
    if bind_url:
        parsed = urlparse(str(bind_url))
        facts["hub_bind_host"] = parsed.hostname or ""
        if _port(bind_url):
            facts["hub_port"] = _port(bind_url)
            facts["hub_port_setting"] = "JupyterHub.hub_bind_url"
    if _get(hub, "hub_ip") is not None:
        facts["hub_ip"] = str(_get(hub, "hub_ip"))
    if _get(hub, "hub_port") is not None and "hub_port" not in facts:
        facts["hub_port"] = int(_get(hub, "hub_port"))
    connect_url = _get(hub, "hub_connect_url")
    if connect_url:
        facts["hub_connect_host"] = urlparse(str(connect_url)).hostname
    elif _get(hub, "hub_connect_ip"):
        facts["hub_connect_host"] = str(_get(hub, "hub_connect_ip"))
    public = _get(hub, "bind_url")
    if public and _port(public):
        facts["proxy_port"] = _port(public)
        facts["proxy_port_setting"] = "JupyterHub.bind_url"
    elif _get(hub, "port") is not None:
        facts["proxy_port"] = int(_get(hub, "port"))
    api_url = _get(_section(c, "ConfigurableHTTPProxy"), "api_url")
    if api_url and _port(api_url):
        facts["proxy_api_port"] = _port(api_url)
    else:
        facts["proxy_api_port"] = facts.get("proxy_port", 8000) + 1
        facts["proxy_api_port_setting"] = "the proxy API (JupyterHub.port + 1)"
    facts["allow_named_servers"] = bool(_get(hub, "allow_named_servers"))
    facts["legacy_stopped_status"] = bool(_get(hub, "use_legacy_stopped_server_status_code"))
    facts["subdomain_host"] = str(_get(hub, "subdomain_host") or "")
    facts["services"] = tuple(s for s in _items(hub, "services", []) if isinstance(s, Mapping))
    facts["role_names"] = tuple(
        str(r.get("name")) for r in _items(hub, "load_roles", []) if isinstance(r, Mapping)
    )
    routes: dict[str, str] = {}
    for section in ("Proxy", "ConfigurableHTTPProxy"):
        routes.update(_items(_section(c, section), "extra_routes", {}))
    facts["extra_routes"] = routes
    facts["hostname"] = socket.gethostname()
    return HubFacts(**facts)


def _append(section: Config, key: str, item: Mapping[str, Any]) -> None:
    """Append to a list setting, whether it is already a list or not yet set."""
    section[key].append(item)


def read_culler_plan(c: Config) -> CullerPlan:
    """The Culler settings in ``c.Culler``, checked by building a Culler from them now, so a
    bad name or value fails when the hub starts, not later in the service."""
    from hub_resilience.service.culler import Culler

    given = dict(_section(c, "Culler"))
    valid = set(Culler.class_trait_names(config=True)) - CULLER_CONNECTION_TRAITS
    unknown = sorted(set(given) - valid)
    if unknown:
        raise ConfigurationError(
            f"unknown Culler setting(s) {', '.join(unknown)}; the service sets "
            f"{', '.join(sorted(CULLER_CONNECTION_TRAITS))} itself; valid: "
            f"{', '.join(sorted(valid))}"
        )
    try:
        culler: Culler = Culler(
            config=Config({"Culler": given}), api_url="http://unused", api_token="unused"
        )
    except TraitError as e:
        raise ConfigurationError(f"Culler settings: {e}") from None
    return CullerPlan(
        settings=given,
        timeout=culler.timeout,
        cull_users=culler.cull_users,
        scopes=tuple(culler.required_scopes()),
    )


def apply_wiring(c: Config, wiring: Wiring) -> None:
    """Write a :class:`Wiring` into the config object."""
    hub = c.JupyterHub
    if wiring.spawner_class is not None:
        hub.spawner_class = wiring.spawner_class
    activity = wiring.activity
    hub.last_activity_interval = activity.hub_interval
    hub.activity_resolution = activity.activity_resolution
    if not _is_resilient_spawner(wiring.spawner_class):
        # ResilientKubeSpawner sets JUPYTERHUB_ACTIVITY_INTERVAL itself from
        # c.HubResilience; other spawners get it through the environment: in Spawner, and in
        # every spawner section that sets its own (z2jh sets KubeSpawner.environment, which
        # hides Spawner's). An explicitly configured value is kept.
        sections = ["Spawner"] + [
            name for name in c
            if name.endswith("Spawner") and name != "Spawner" and "environment" in c[name]
        ]
        for name in sections:
            if "JUPYTERHUB_ACTIVITY_INTERVAL" not in _items(c[name], "environment", {}):
                c[name].environment.update(
                    {"JUPYTERHUB_ACTIVITY_INTERVAL": str(activity.singleuser_interval)}
                )
    if wiring.concurrent_spawn_limit is not None:
        hub.concurrent_spawn_limit = wiring.concurrent_spawn_limit
    if wiring.active_server_limit is not None:
        hub.active_server_limit = wiring.active_server_limit
    if wiring.spawn_throttle_retry_range is not None:
        # A copy with the range added: JupyterHub reads it only from tornado_settings, and
        # replacing the dict would drop what is already there (z2jh's slow_spawn_timeout).
        tornado = dict(_items(hub, "tornado_settings", {}))
        tornado["spawn_throttle_retry_range"] = wiring.spawn_throttle_retry_range
        hub.tornado_settings = tornado
    if wiring.service is not None:
        _append(hub, "services", wiring.service)
    if wiring.role is not None:
        _append(hub, "load_roles", wiring.role)
    if wiring.routespec is not None:
        # Added to every section where extra_routes is set (a subclass's setting would hide
        # the base class's), and always to Proxy.
        for section in ("Proxy", "ConfigurableHTTPProxy"):
            if section == "Proxy" or "extra_routes" in _section(c, section):
                c[section].extra_routes.update({wiring.routespec: wiring.route_target})


def _is_resilient_spawner(spawner_class: str | None) -> bool:
    if spawner_class is None:
        return False
    if isinstance(spawner_class, str):
        return spawner_class in RESILIENT_SPAWNER_NAMES
    from hub_resilience.hub.spawner import ResilientKubeSpawner

    return isinstance(spawner_class, type) and issubclass(spawner_class, ResilientKubeSpawner)


def resolve_settings(c: Config, options: Mapping[str, Any]) -> HubResilience:
    """``c.HubResilience`` with ``options`` on top, every value checked by its trait."""
    valid = HubResilience.class_trait_names(config=True)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise TypeError(
            f"configure() got unknown option(s) {', '.join(map(repr, unknown))}; "
            f"valid options (HubResilience traits): {', '.join(sorted(valid))}"
        )
    section = dict(_section(c, "HubResilience"))
    misspelt = sorted(set(section) - set(valid))
    if misspelt:
        # traitlets would only warn, and the hub would run with the defaults.
        raise ConfigurationError(
            f"unknown setting(s) {', '.join(f'HubResilience.{n}' for n in misspelt)}; "
            f"valid: {', '.join(sorted(valid))}"
        )
    try:
        return HubResilience(config=Config({"HubResilience": {**section, **options}}))
    except TraitError as e:
        raise ConfigurationError(str(e)) from None


@dataclass
class ConfigureCall:
    """One :func:`configure` call: the config it was given, what it wired or raised."""

    config: Config
    wiring: Wiring | None = None
    error: BaseException | None = None


_last_call: list[ConfigureCall] = []


def start_admission_governor(c: Config) -> bool:
    """Check the governor's settings against ``c`` (a ConfigurationError names a bad one)
    and, when this runs in a hub loading its config, start it there. The governor's code is
    imported only in the hub: the sidecar and check-config run this too."""
    from hub_resilience.hub.admission import AdmissionGovernor, start_governor

    hub = _section(c, "JupyterHub")
    limit = _get(hub, "concurrent_spawn_limit") or 0
    try:
        AdmissionGovernor(config=c).policy_settings(limit)
    except (ValueError, TraitError) as e:
        raise ConfigurationError(str(e)) from None
    pinned = "spawn_throttle_retry_range" in dict(_items(hub, "tornado_settings", {}))
    return start_governor(c, honest_retry_after=not pinned)


def last_call() -> ConfigureCall | None:
    """The last :func:`configure` call in this process: the sidecar and check-config run the
    hub's config file (whose drop-in calls configure()) and read what it did here."""
    return _last_call[-1] if _last_call else None


def configure(c: Config, **options: Any) -> Wiring | None:
    """Wire hub-resilience into the JupyterHub config object ``c``; returns what was wired,
    or None when ``HubResilience.enabled`` is False.

    The options are ``c.HubResilience``'s traits, and keyword arguments override them (and
    are written back to ``c.HubResilience``, so the spawner sees the same values). Raises
    :class:`TypeError` for an unknown option and :class:`ConfigurationError` (a ValueError)
    for a bad value or combination; ``c`` is left untouched when anything is refused.
    """
    call = ConfigureCall(c)
    _last_call[:] = [call]
    try:
        call.wiring = _configure(c, options)
    except BaseException as e:
        call.error = e
        raise
    return call.wiring


def _configure(c: Config, options: Mapping[str, Any]) -> Wiring | None:
    settings = resolve_settings(c, options)
    if not settings.enabled:
        print("hub-resilience: HubResilience.enabled is False; not configuring")
        return None
    culler = read_culler_plan(c) if settings.cull else CullerPlan()
    wiring = plan_wiring(settings, culler, read_hub_facts(c))
    for name, value in options.items():
        c.HubResilience[name] = value
    apply_wiring(c, wiring)
    if settings.admission_governor:
        start_admission_governor(c)
    if settings.route_check_interval > 0:
        start_route_repair()
    where = "in its own container" if settings.service_mode == "container" else "by the hub"
    print(
        "hub-resilience: configured "
        + (f"service {settings.service_name} on {wiring.service_ip}:"
           f"{settings.service_port}, run {where}" if wiring.command else "without the service")
        + (f", route {wiring.routespec} -> {wiring.route_target}" if wiring.routespec else "")
    )
    return wiring
