"""``hub_resilience.configure(c, **options)``: switch everything on with one call.

Why: the pieces that keep a large hub standing (the Guaranteed-QoS spawner, tuned activity
intervals, spawn limits, the stopped-server handler, the culler, their metrics) only help
when they are wired together consistently: the handler needs a proxy route the hub keeps in
place, the culler needs a token with the right scopes and a timeout longer than the activity
intervals, the service must not take the hub's port. Doing that by hand is how the hand-made
proxy route of the incident came about (and the hub's route check deleted it as stale).

Usage, in ``jupyterhub_config.py`` (or through the drop-in
``jupyterhub_config.d/hub_resilience.py``, which reads the same options from
``HUB_RESILIENCE_*`` environment variables)::

    from hub_resilience import configure
    configure(c, expected_servers=800, activity_budget=20, cull_timeout=3600)

Keyword options (all optional; :class:`ResilienceOptions` has the full text):

- ``spawner_class`` (``"resilient-kubespawner"``): ``JupyterHub.spawner_class``; None keeps
  the configured one (local tests and demos use the SimulatedSpawner).
- ``service_name`` (``"hub-resilience"``): name of the managed service and of its role.
- ``service_port`` (8181): port the service listens on.
- ``service_ip`` (from the hub's bind address): address the service listens on.
- ``proxy_target_host`` (from ``hub_connect_url``): host the proxy reaches the service by.
- ``api_token`` (None: the hub generates one): the service's API token.
- ``stopped_handler`` (True): route ``{base_url}user/`` to the stopped-server handler.
- ``stopped_status`` (None: the hub's 424, or 503 when legacy): 404 is also allowed.
- ``named_servers`` (None: ``JupyterHub.allow_named_servers``): whether
  ``/user/<name>/<segment>/`` may name a named server.
- ``cull`` (True): run the culler in the service.
- ``cull_timeout`` (3600), ``cull_every`` (0: timeout / 2), ``cull_max_age`` (0: off),
  ``cull_users`` (False), ``cull_admin_users`` (False), ``cull_concurrency`` (2),
  ``remove_named_servers`` (False): the culler's options (docs/culler.md).
- ``culler_options`` ({}): any other ``Culler`` trait, by name (``{"recheck_after": 5}``).
- ``expected_servers`` (100), ``activity_budget`` (10.0 requests/s),
  ``activity_max_interval`` (3600): activity tuning (hub_resilience.activity).
- ``concurrent_spawn_limit``, ``active_server_limit`` (None: leave as configured; 0: no
  limit): the hub's spawn limits.
- ``log_level`` (``"INFO"``): the service's log level.

An unknown option raises :class:`TypeError` listing the valid ones; a bad value or a bad
combination (a culler timeout shorter than the activity staleness, a port clash with the hub
or proxy, another culler already configured, a hand-made ``/user/`` route, ...) raises
:class:`ConfigurationError` naming the setting. Nothing is written to ``c`` unless every
check passes.

Policy is pure (:func:`resolve_options`, :func:`plan_wiring`); :func:`read_hub_facts` and
:func:`apply_wiring` are the thin adapters reading and writing the config object.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import socket
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

from hub_resilience.activity import ActivitySettings, tune_activity

#: Names under which the package's spawner can be given to ``JupyterHub.spawner_class``.
RESILIENT_SPAWNER_NAMES = frozenset(
    {"resilient-kubespawner", "hub_resilience.spawner.ResilientKubeSpawner"}
)

#: Names of the stock idle culler's service (z2jh's and older conventions); with ``cull``
#: on, two cullers would race each other, so one of them is refused.
STOCK_CULLER_NAMES = frozenset({"jupyterhub-idle-culler", "cull-idle", "idle-culler"})

#: Status codes the stopped-server handler may answer with.
HUB_STOPPED_STATUS = 424
HUB_LEGACY_STOPPED_STATUS = 503
NOT_FOUND_STATUS = 404

#: Scopes the culler needs (checked against jupyterhub/scopes.py and the user model's
#: fields in jupyterhub/apihandlers/base.py): list users with their servers and activity,
#: stop servers. Deleting users also needs ``delete:users``, and ``read:users`` for the
#: users' ``created`` time (idle time of a user who never was active, and max_age); this is
#: far less than the ``admin:users`` the stock culler is given.
CULLER_SCOPES = ("list:users", "read:users:activity", "read:servers", "delete:servers")
CULL_USERS_SCOPES = ("read:users", "delete:users")

ENV_PREFIX = "HUB_RESILIENCE_"
#: ``HUB_RESILIENCE_*`` variables that are not options (the drop-in ignores them).
ENV_NOT_OPTIONS = frozenset({"HUB_RESILIENCE_ENABLED", "HUB_RESILIENCE_HOME"})


class ConfigurationError(ValueError):
    """A configure() option, or its combination with the hub's config, is refused."""

    def __init__(self, message: str) -> None:
        super().__init__(f"hub_resilience.configure: {message}")


@dataclass(frozen=True)
class ResilienceOptions:
    """Every option of :func:`configure`, with its default."""

    spawner_class: Any = "resilient-kubespawner"
    """``JupyterHub.spawner_class``; None keeps the spawner already configured (for local
    tests and demos, e.g. ``"hub_resilience.simulated.SimulatedSpawner"``)."""
    service_name: str = "hub-resilience"
    """Name of the managed service, and of the role holding its scopes."""
    service_port: int = 8181
    """Port the service listens on (the proxy's ``/user/`` route points at it)."""
    service_ip: str | None = None
    """Address the service listens on; default: all interfaces when the hub listens on all
    (as in z2jh), else the hub's own ``hub_ip``, else 127.0.0.1."""
    proxy_target_host: str | None = None
    """Host the proxy connects to for the route; default: the host of
    ``JupyterHub.hub_connect_url`` (z2jh: the hub Service), else ``hub_connect_ip``, else the
    service address (or this machine's name when that is a wildcard)."""
    api_token: str | None = None
    """The service's API token; None lets the hub generate one at each start."""
    stopped_handler: bool = True
    """Route ``{base_url}user/`` to the stopped-server handler with ``Proxy.extra_routes``."""
    stopped_status: int | None = None
    """Status for requests to stopped servers: None answers what the hub would (424, or 503
    with ``JupyterHub.use_legacy_stopped_server_status_code``); 404 is allowed."""
    named_servers: bool | None = None
    """Whether ``/user/<name>/<segment>/`` may name a named server; None follows
    ``JupyterHub.allow_named_servers``."""
    cull: bool = True
    """Run the culler (hub_resilience.culler) in the service."""
    cull_timeout: float = 3600
    """Seconds without activity after which a server is culled."""
    cull_every: float = 0
    """Seconds between culler cycles; 0 means cull_timeout / 2."""
    cull_max_age: float = 0
    """Cull servers (and, with cull_users, users) older than this many seconds; 0: off."""
    cull_users: bool = False
    """Also delete users idle for cull_timeout once their servers are gone."""
    cull_admin_users: bool = False
    """With cull_users, delete admin users too."""
    cull_concurrency: int = 2
    """Culler API requests in flight at once."""
    remove_named_servers: bool = False
    """Remove culled named servers instead of only stopping them."""
    culler_options: Mapping[str, Any] = field(default_factory=dict)
    """Any other ``hub_resilience.culler.Culler`` trait, by name (e.g. ``recheck_after``)."""
    expected_servers: int = 100
    """Concurrent user servers the hub is sized for (activity tuning)."""
    activity_budget: float = 10.0
    """Activity requests per second the hub should absorb at expected_servers."""
    activity_max_interval: int = 3600
    """Upper bound on the tuned activity intervals, in seconds."""
    concurrent_spawn_limit: int | None = None
    """``JupyterHub.concurrent_spawn_limit`` (0: unlimited); None leaves it as configured."""
    active_server_limit: int | None = None
    """``JupyterHub.active_server_limit`` (0: unlimited); None leaves it as configured."""
    log_level: str = "INFO"
    """Log level of the service process (DEBUG, INFO, WARNING or ERROR)."""


OPTION_NAMES: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(ResilienceOptions))

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


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

    options: ResilienceOptions
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
    spawner_class: Any

    @property
    def command(self) -> list[str] | None:
        return None if self.service is None else list(self.service["command"])


# -- options --------------------------------------------------------------------------------


def resolve_options(options: Mapping[str, Any]) -> ResilienceOptions:
    """Check option names and value types; :class:`TypeError` lists the valid names."""
    unknown = sorted(set(options) - set(OPTION_NAMES))
    if unknown:
        raise TypeError(
            f"configure() got unknown option(s) {', '.join(map(repr, unknown))}; "
            f"valid options: {', '.join(OPTION_NAMES)}"
        )
    opts = ResilienceOptions(**options)
    _check_types(opts)
    return opts


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)


def _check_types(opts: ResilienceOptions) -> None:
    def fail(name: str, wanted: str) -> None:
        raise ConfigurationError(f"{name} must be {wanted}, got {getattr(opts, name)!r}")

    for name in ("stopped_handler", "cull", "cull_users", "cull_admin_users",
                 "remove_named_servers"):
        if not isinstance(getattr(opts, name), bool):
            fail(name, "True or False")
    if opts.named_servers is not None and not isinstance(opts.named_servers, bool):
        fail("named_servers", "True, False or None")
    for name in ("cull_timeout", "cull_every", "cull_max_age", "activity_budget"):
        if not _is_number(getattr(opts, name)):
            fail(name, "a finite number of seconds" if name != "activity_budget"
                 else "a finite number of requests per second")
    for name in ("service_port", "cull_concurrency", "expected_servers",
                 "activity_max_interval"):
        if not _is_int(getattr(opts, name)):
            fail(name, "a whole number")
    for name in ("concurrent_spawn_limit", "active_server_limit", "stopped_status"):
        value = getattr(opts, name)
        if value is not None and not _is_int(value):
            fail(name, "a whole number or None")
    for name in ("service_ip", "proxy_target_host", "api_token"):
        value = getattr(opts, name)
        if value is not None and (not isinstance(value, str) or not value):
            fail(name, "a non-empty string or None")
    if not isinstance(opts.service_name, str):
        fail("service_name", "a string")
    if not isinstance(opts.culler_options, Mapping):
        fail("culler_options", "a mapping of Culler option names to values")
    if opts.log_level not in LOG_LEVELS:
        fail("log_level", f"one of {', '.join(LOG_LEVELS)}")
    if opts.spawner_class is not None and not (
        isinstance(opts.spawner_class, str | type) and opts.spawner_class
    ):
        fail("spawner_class", "a spawner class, its name, or None")


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
    """Listen where the hub listens: everywhere when it does (the proxy is in another pod)."""
    for candidate in (facts.hub_bind_host, facts.hub_ip):
        if candidate is not None:
            return "0.0.0.0" if candidate in ("", "0.0.0.0") else candidate
    return "127.0.0.1"  # JupyterHub's default hub_ip


def default_proxy_target_host(facts: HubFacts, service_ip: str) -> str:
    """The host the proxy reaches the hub's machine by (the service runs beside the hub)."""
    if facts.hub_connect_host:
        return facts.hub_connect_host
    if not is_wildcard(service_ip):
        return service_ip
    return facts.hostname


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def _check_service_name(name: str) -> None:
    if not name or name != name.strip() or "/" in name or "%" in name or set(name) == {"."}:
        raise ConfigurationError(
            f"service_name {name!r} is not a valid JupyterHub service name (non-empty, no "
            "'/', no '%', no surrounding spaces)"
        )


def stopped_status_for(opts: ResilienceOptions, facts: HubFacts) -> int:
    """The status the handler answers with, consistent with the hub's own."""
    hub_status = HUB_LEGACY_STOPPED_STATUS if facts.legacy_stopped_status else HUB_STOPPED_STATUS
    status = opts.stopped_status
    if status is None or status == hub_status:
        return hub_status
    if status == NOT_FOUND_STATUS:
        return status
    if status in (HUB_STOPPED_STATUS, HUB_LEGACY_STOPPED_STATUS):
        raise ConfigurationError(
            f"stopped_status={status} disagrees with the hub, which answers {hub_status} "
            "for a stopped server (JupyterHub.use_legacy_stopped_server_status_code="
            f"{facts.legacy_stopped_status}); leave stopped_status unset to follow the hub"
        )
    raise ConfigurationError(
        f"stopped_status must be None (the hub's {hub_status}) or {NOT_FOUND_STATUS}, "
        f"got {status}"
    )


def activity_staleness(settings: ActivitySettings) -> int:
    """Seconds by which a server's ``last_activity`` in the hub may lag real activity: the
    longer of the two report intervals, plus the resolution below which writes are dropped."""
    return max(settings.singleuser_interval, settings.hub_interval) + settings.activity_resolution


#: Culler trait -> the configure() option that sets it.
_CULLER_OPTION_NAMES = {
    "timeout": "cull_timeout",
    "cull_every": "cull_every",
    "max_age": "cull_max_age",
    "cull_users": "cull_users",
    "cull_admin_users": "cull_admin_users",
    "concurrency": "cull_concurrency",
    "remove_named_servers": "remove_named_servers",
}


def culler_settings(opts: ResilienceOptions) -> dict[str, Any]:
    """The Culler traits the service is started with: the timeout, the cull_* options that
    differ from their defaults (which are the Culler's own), then culler_options."""
    defaults = ResilienceOptions()
    settings: dict[str, Any] = {"timeout": opts.cull_timeout}
    for trait, option in _CULLER_OPTION_NAMES.items():
        if trait != "timeout" and getattr(opts, option) != getattr(defaults, option):
            settings[trait] = getattr(opts, option)
    overlap = sorted(set(_CULLER_OPTION_NAMES) & set(opts.culler_options))
    if overlap:
        raise ConfigurationError(
            f"culler_options {', '.join(overlap)} duplicate configure() options; use "
            + ", ".join(_CULLER_OPTION_NAMES[n] for n in overlap)
        )
    forbidden = sorted({"api_url", "api_token"} & set(opts.culler_options))
    if forbidden:
        raise ConfigurationError(
            f"culler_options must not set {', '.join(forbidden)}: the service gets the hub's "
            "URL and its token from the hub (use api_token for the token)"
        )
    settings.update(opts.culler_options)
    return settings



def format_option_value(value: Any) -> str:
    """A Culler trait value as the service's ``--culler-option NAME=VALUE`` writes it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(value)


def service_command(
    opts: ResilienceOptions,
    *,
    ip: str,
    base_url: str,
    stopped_status: int,
    named_servers: bool,
    culler: Mapping[str, Any],
    python: str,
) -> list[str]:
    """The managed service's command line (``python -m hub_resilience.service ...``)."""
    command = [
        python, "-m", "hub_resilience.service",
        "--ip", ip,
        "--port", str(opts.service_port),
        "--base-url", base_url,
        "--stopped-status", str(stopped_status),
        "--named-servers" if named_servers else "--no-named-servers",
        "--watch-parent",
        "--log-level", opts.log_level,
    ]
    if not opts.stopped_handler:
        command.append("--no-stopped-handler")
    if not opts.cull:
        command.append("--no-cull")
    else:
        for name, value in culler.items():
            command += ["--culler-option", f"{name}={format_option_value(value)}"]
    return command


def _check_limits(opts: ResilienceOptions) -> None:
    for name in ("concurrent_spawn_limit", "active_server_limit"):
        value = getattr(opts, name)
        if value is not None and value < 0:
            raise ConfigurationError(
                f"{name} must be >= 0 (0 means no limit) or None, got {value}"
            )
    if not 1 <= opts.service_port <= 65535:
        raise ConfigurationError(f"service_port must be a port number, got {opts.service_port}")
    if opts.cull_concurrency < 1:
        raise ConfigurationError(f"cull_concurrency must be >= 1, got {opts.cull_concurrency}")
    for name in ("cull_every", "cull_max_age"):
        if getattr(opts, name) < 0:
            raise ConfigurationError(f"{name} must be >= 0, got {getattr(opts, name)}")
    if opts.cull_timeout <= 0:
        raise ConfigurationError(f"cull_timeout must be > 0, got {opts.cull_timeout}")


def _check_ports(opts: ResilienceOptions, facts: HubFacts) -> None:
    for port, setting in (
        (facts.hub_port, facts.hub_port_setting),
        (facts.proxy_port, facts.proxy_port_setting),
        (facts.proxy_api_port, facts.proxy_api_port_setting),
    ):
        if opts.service_port == port:
            raise ConfigurationError(
                f"service_port {opts.service_port} is already used by {setting}; "
                "choose another port for the resilience service"
            )


def _check_existing(opts: ResilienceOptions, facts: HubFacts) -> None:
    for spec in facts.services:
        name = spec.get("name")
        command = " ".join(str(part) for part in spec.get("command") or ())
        if name == opts.service_name:
            raise ConfigurationError(
                f"JupyterHub.services already has a service named {name!r} "
                "(configure() called twice?); pass another service_name"
            )
        stock = name in STOCK_CULLER_NAMES or "jupyterhub_idle_culler" in command
        if opts.cull and stock:
            raise ConfigurationError(
                f"the stock idle culler is configured as service {name!r}; two cullers "
                "would race each other. Turn it off (z2jh: cull.enabled: false) or pass "
                "cull=False"
            )
    if opts.service_name in facts.role_names:
        raise ConfigurationError(
            f"JupyterHub.load_roles already has a role named {opts.service_name!r}; pass "
            "another service_name"
        )


def plan_wiring(
    opts: ResilienceOptions, facts: HubFacts, *, python: str = sys.executable
) -> Wiring:
    """Decide everything configure() writes; :class:`ConfigurationError` on a bad combination."""
    _check_limits(opts)
    try:
        activity = tune_activity(
            opts.expected_servers, opts.activity_budget, max_interval=opts.activity_max_interval
        )
    except ValueError as e:
        raise ConfigurationError(
            f"activity tuning (expected_servers, activity_budget, activity_max_interval): {e}"
        ) from None
    staleness = activity_staleness(activity)
    if opts.cull and opts.cull_timeout <= staleness:
        raise ConfigurationError(
            f"cull_timeout ({opts.cull_timeout:g} s) must be longer than the time by which the "
            f"hub's view of activity may lag ({staleness} s: single-user interval "
            f"{activity.singleuser_interval} s, hub interval {activity.hub_interval} s, "
            f"resolution {activity.activity_resolution} s), or active servers would be "
            "culled; raise cull_timeout, or lower activity_max_interval / expected_servers"
        )
    _check_service_name(opts.service_name)
    base_url = normalize_base_url(facts.base_url)
    stopped_status = stopped_status_for(opts, facts)
    named = facts.allow_named_servers if opts.named_servers is None else opts.named_servers
    service_ip = opts.service_ip or default_service_ip(facts)
    run_service = opts.stopped_handler or opts.cull
    if run_service:
        _check_ports(opts, facts)
        _check_existing(opts, facts)
    connect_ip = "127.0.0.1" if is_wildcard(service_ip) else service_ip
    service_url = f"http://{_url_host(connect_ip)}:{opts.service_port}"

    routespec = target = None
    if opts.stopped_handler:
        if facts.subdomain_host:
            raise ConfigurationError(
                "stopped_handler needs path-based routing, but JupyterHub.subdomain_host is "
                f"set ({facts.subdomain_host!r}): each user has their own host, so one "
                "/user/ route cannot catch them; pass stopped_handler=False"
            )
        routespec = base_url + "user/"
        host = opts.proxy_target_host or default_proxy_target_host(facts, service_ip)
        target = f"http://{_url_host(host)}:{opts.service_port}"
        existing = facts.extra_routes.get(routespec)
        if existing is not None and existing.rstrip("/") != target:
            raise ConfigurationError(
                f"Proxy.extra_routes already routes {routespec} to {existing} (a hand-made "
                f"stopped-server route?); remove it, the service takes over at {target}"
            )

    culler = culler_settings(opts) if opts.cull else {}
    service = role = None
    if run_service:
        command = service_command(
            opts, ip=service_ip, base_url=base_url, stopped_status=stopped_status,
            named_servers=named, culler=culler, python=python,
        )
        service = {"name": opts.service_name, "command": command, "display": False}
        if opts.api_token:
            service["api_token"] = opts.api_token
        if opts.cull:
            scopes = list(CULLER_SCOPES)
            if culler.get("cull_users"):
                scopes += CULL_USERS_SCOPES
            role = {
                "name": opts.service_name,
                "description": "hub-resilience service: the idle culler's least scopes",
                "scopes": scopes,
                "services": [opts.service_name],
            }
    return Wiring(
        options=opts,
        activity=activity,
        service=service,
        role=role,
        routespec=routespec,
        route_target=target,
        service_ip=service_ip,
        service_url=service_url,
        stopped_status=stopped_status,
        named_servers=named,
        spawner_class=opts.spawner_class,
    )


def validate_culler_settings(settings: Mapping[str, Any]) -> None:
    """Build a Culler from the settings, so a bad name or value fails now, not in the hub."""
    from traitlets import TraitError
    from traitlets.config import Config

    from hub_resilience.culler import Culler

    valid = set(Culler.class_trait_names(config=True)) - {"api_url", "api_token"}
    unknown = sorted(set(settings) - valid)
    if unknown:
        raise ConfigurationError(
            f"culler_options: unknown Culler option(s) {', '.join(unknown)}; valid: "
            f"{', '.join(sorted(valid))}"
        )
    config = Config()
    for name, value in settings.items():
        config.Culler[name] = value
    try:
        Culler(config=config, api_url="http://unused", api_token="unused")
    except TraitError as e:
        name = next((n for n in settings if f"Culler.{n} " in str(e)), None)
        hint = f" (configure option {_CULLER_OPTION_NAMES[name]})" if (
            name in _CULLER_OPTION_NAMES) else ""
        raise ConfigurationError(f"culler settings: {e}{hint}") from None


# -- the adapters ---------------------------------------------------------------------------


def _section(c: Any, name: str) -> Any:
    """A config section for reading, without creating it in ``c`` when it is absent."""
    return c[name] if name in c else {}


def _get(section: Any, key: str) -> Any:
    """A value explicitly set in a config section, or None (never a LazyConfigValue)."""
    from traitlets.config.loader import LazyConfigValue

    if key not in section:
        return None
    value = section[key]
    return None if isinstance(value, LazyConfigValue) else value


def _items(section: Any, key: str, empty: Any) -> Any:
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


def _port(url: Any) -> int | None:
    if not url:
        return None
    parsed = urlparse(str(url))
    if parsed.port:
        return parsed.port
    return {"http": 80, "https": 443}.get(parsed.scheme)


def read_hub_facts(c: Any) -> HubFacts:
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


def _append(section: Any, key: str, item: Any) -> None:
    """Append to a list setting, whether it is already a list or not yet set."""
    section[key].append(item)


def apply_wiring(c: Any, wiring: Wiring) -> None:
    """Write a :class:`Wiring` into the config object."""
    opts = wiring.options
    hub = c.JupyterHub
    if wiring.spawner_class is not None:
        hub.spawner_class = wiring.spawner_class
    activity = wiring.activity
    hub.last_activity_interval = activity.hub_interval
    hub.activity_resolution = activity.activity_resolution
    spawner = c.ResilientKubeSpawner
    spawner.expected_concurrent_servers = opts.expected_servers
    spawner.activity_requests_per_second = float(opts.activity_budget)
    spawner.activity_max_interval = opts.activity_max_interval
    if not _is_resilient_spawner(wiring.spawner_class):
        # ResilientKubeSpawner sets JUPYTERHUB_ACTIVITY_INTERVAL itself; other spawners get
        # it through the environment (an explicitly configured value is kept).
        env = c.Spawner.environment
        current = _items(c.Spawner, "environment", {})
        if "JUPYTERHUB_ACTIVITY_INTERVAL" not in current:
            env.update({"JUPYTERHUB_ACTIVITY_INTERVAL": str(activity.singleuser_interval)})
    if opts.concurrent_spawn_limit is not None:
        hub.concurrent_spawn_limit = opts.concurrent_spawn_limit
    if opts.active_server_limit is not None:
        hub.active_server_limit = opts.active_server_limit
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


def _is_resilient_spawner(spawner_class: Any) -> bool:
    if spawner_class is None:
        return False
    if isinstance(spawner_class, str):
        return spawner_class in RESILIENT_SPAWNER_NAMES
    from hub_resilience.spawner import ResilientKubeSpawner

    return isinstance(spawner_class, type) and issubclass(spawner_class, ResilientKubeSpawner)


def configure(c: Any, **options: Any) -> Wiring:
    """Wire hub-resilience into the JupyterHub config object ``c``; returns what was wired.

    Sets the spawner class, the tuned activity settings (``JupyterHub.last_activity_interval``,
    ``JupyterHub.activity_resolution``, and the ResilientKubeSpawner traits that set the
    single-user interval), the spawn limits, and, unless both ``stopped_handler`` and
    ``cull`` are off, the managed service ``hub-resilience`` (command, port, token, and a
    role with the culler's least scopes) and ``Proxy.extra_routes`` for ``{base_url}user/``.

    The options are listed in this module's docstring and in :class:`ResilienceOptions`.
    Raises :class:`TypeError` for an unknown option (listing the valid ones) and
    :class:`ConfigurationError` (a ValueError) for a bad value or combination; ``c`` is left
    untouched when anything is refused.
    """
    opts = resolve_options(options)
    wiring = plan_wiring(opts, read_hub_facts(c))
    if opts.cull:
        validate_culler_settings(culler_settings(opts))
    apply_wiring(c, wiring)
    return wiring


# -- the drop-in's environment variables ----------------------------------------------------


def env_name(option: str) -> str:
    """``cull_timeout`` -> ``HUB_RESILIENCE_CULL_TIMEOUT``."""
    return ENV_PREFIX + option.upper()


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")
_NONE = ("", "none", "default")


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError(f"expected one of {', '.join(_TRUE + _FALSE)}")


def _parse_env_value(option: str, text: str) -> Any:
    default = getattr(ResilienceOptions(), option)
    optional = option in (
        "spawner_class", "service_ip", "proxy_target_host", "api_token", "stopped_status",
        "named_servers", "concurrent_spawn_limit", "active_server_limit",
    )
    if optional and text.strip().lower() in _NONE:
        return None
    if option == "culler_options":
        value = json.loads(text)
        if not isinstance(value, dict):
            raise ValueError("expected a JSON object of Culler option names to values")
        return value
    if option == "named_servers" or isinstance(default, bool):
        return _parse_bool(text)
    if option in ("stopped_status", "concurrent_spawn_limit", "active_server_limit") or (
        _is_int(default)
    ):
        return int(text.strip())
    if isinstance(default, float):
        return float(text.strip())
    return text.strip()


def options_from_environ(environ: Mapping[str, str]) -> tuple[dict[str, Any], list[str]]:
    """configure() options from ``HUB_RESILIENCE_<OPTION>`` variables, and the names of
    ``HUB_RESILIENCE_*`` variables that are no option (probably typos; the caller warns).

    Raises :class:`ConfigurationError` naming the variable when a value cannot be read.
    """
    options: dict[str, Any] = {}
    by_env = {env_name(o): o for o in OPTION_NAMES}
    unknown = []
    for key, text in environ.items():
        if not key.startswith(ENV_PREFIX) or key in ENV_NOT_OPTIONS:
            continue
        option = by_env.get(key)
        if option is None:
            unknown.append(key)
            continue
        try:
            options[option] = _parse_env_value(option, text)
        except ValueError as e:
            raise ConfigurationError(f"{key}={text!r} cannot be read: {e}") from None
    return options, sorted(unknown)


def configure_from_environment(
    c: Any, environ: Mapping[str, str] | None = None
) -> Wiring | None:
    """What the drop-in does: configure(c) with the options found in the environment.

    ``HUB_RESILIENCE_ENABLED=false`` turns the drop-in off (returns None).
    """
    environ = os.environ if environ is None else environ
    enabled = environ.get("HUB_RESILIENCE_ENABLED", "true")
    try:
        if not _parse_bool(enabled):
            print("hub-resilience: HUB_RESILIENCE_ENABLED is false; not configuring")
            return None
    except ValueError as e:
        raise ConfigurationError(
            f"HUB_RESILIENCE_ENABLED={enabled!r} cannot be read: {e}"
        ) from None
    options, unknown = options_from_environ(environ)
    if unknown:
        print(
            f"hub-resilience: ignoring unknown variable(s) {', '.join(unknown)}; valid: "
            f"{', '.join(env_name(o) for o in OPTION_NAMES)}",
            file=sys.stderr,
        )
    wiring = configure(c, **options)
    print(
        "hub-resilience: configured "
        + (f"service {wiring.options.service_name} on {wiring.service_ip}:"
           f"{wiring.options.service_port}" if wiring.service else "without the service")
        + (f", route {wiring.routespec} -> {wiring.route_target}" if wiring.routespec else "")
    )
    return wiring

