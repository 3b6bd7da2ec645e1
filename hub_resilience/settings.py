"""``HubResilience``: the options of ``configure(c)``, as traits (docs/configuration.md).

Why a module of its own: the hub's spawner reads the same settings (the activity sizing)
from the hub's config, so it imports this and nothing of configure()'s wiring.
"""
from __future__ import annotations

import math

from traitlets import (
    Bool,
    Bunch,
    CaselessStrEnum,
    Float,
    Integer,
    List,
    TraitError,
    Unicode,
    validate,
)
from traitlets.config import Configurable

from hub_resilience.hub.activity import (
    DEFAULT_HUB_INTERVAL,
    DEFAULT_SINGLEUSER_INTERVAL,
    ActivitySettings,
    tune_activity,
)

#: Status codes the stopped-server handler may answer with.
HUB_STOPPED_STATUS = 424
HUB_LEGACY_STOPPED_STATUS = 503
NOT_FOUND_STATUS = 404

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


class ConfigurationError(ValueError):
    """A configure() option, or its combination with the hub's config, is refused."""

    def __init__(self, message: str) -> None:
        super().__init__(f"hub_resilience.configure: {message}")


#: What 0 switches off, for the settings where it does.
SWITCHED_OFF_BY_0 = {
    "route_check_interval": "route repair",
    "running_servers_max_age": "the stopped-server handler's listing of running servers",
}


class HubResilience(Configurable):
    """The options of :func:`configure`; set them as ``c.HubResilience.<option>`` (z2jh:
    ``hub.config.HubResilience``) or as keyword arguments of ``configure(c, ...)``."""

    enabled = Bool(
        True,
        config=True,
        help="Switch hub-resilience on; False makes configure(c) leave the config untouched.",
    )
    spawner_class = Unicode(
        "resilient-kubespawner",
        allow_none=True,
        config=True,
        help="""
        JupyterHub.spawner_class to set; None keeps the spawner already configured (local
        tests and demos use "hub_resilience.tools.simulated_spawner.SimulatedSpawner").
        """,
    )
    service_name = Unicode(
        "hub-resilience",
        config=True,
        help="Name of the managed service, and of the role holding its scopes.",
    )
    service_port = Integer(
        8181, config=True, help="Port the service listens on (the /user/ route points at it)."
    )
    service_ip = Unicode(
        None,
        allow_none=True,
        config=True,
        help="""
        Address the service listens on; None: all interfaces when the hub listens on all
        (as in z2jh), else the hub's own hub_ip, else 127.0.0.1.
        """,
    )
    proxy_target_host = Unicode(
        None,
        allow_none=True,
        config=True,
        help="""
        Host the proxy connects to for the /user/ route; None: the host of
        JupyterHub.hub_connect_url (z2jh: the hub Service), else hub_connect_ip, else the
        service address (or this machine's name when that is a wildcard).
        """,
    )
    api_token = Unicode(
        None,
        allow_none=True,
        config=True,
        help="The service's API token; None lets the hub generate one at each start.",
    )
    service_mode = CaselessStrEnum(
        ["managed", "container"],
        "managed",
        config=True,
        help="""
        How the service runs. "managed": the hub starts it as a managed service, in the hub
        container (sharing its CPU). "container": its own container in the hub pod
        (hub.extraContainers running `python3 -m hub_resilience.service.sidecar`, with
        its own Guaranteed CPU and memory), registered with the hub as an external service
        with a token (z2jh: hub.services.<service_name>: {}); docs/service.md.
        """,
    )
    stopped_handler = Bool(
        True,
        config=True,
        help="Route {base_url}user/ to the stopped-server handler with Proxy.extra_routes.",
    )
    running_servers_max_age = Float(
        30.0,
        config=True,
        help="""
        Seconds the stopped-server handler trusts its listing of the hub's running servers
        (one GET /users?state=ready for all users, made only when a request for a stopped
        server needs it): a server listed as running (checked with the hub for that one
        user when the listing is older than the request) whose route is missing is sent
        where the hub serves it (kind route_missing), never told it stopped. 0: never list (no
        list:users and read:servers scopes for the service); docs/service.md, "A running
        server whose route is missing".
        """,
    )
    stopped_status = Integer(
        None,
        allow_none=True,
        config=True,
        help="""
        Status for requests to stopped servers: None answers what the hub would (424, or 503
        with JupyterHub.use_legacy_stopped_server_status_code); 404 is also allowed.
        """,
    )
    named_servers = Bool(
        None,
        allow_none=True,
        config=True,
        help="""
        Whether /user/<name>/<segment>/ may name a named server; None follows
        JupyterHub.allow_named_servers.
        """,
    )
    cull = Bool(
        True,
        config=True,
        help="Run the culler in the service; its settings are the Culler's (c.Culler.timeout...).",
    )
    expected_concurrent_servers = Integer(
        100,
        config=True,
        help="""
        How many user servers the hub is sized to run at once; with
        activity_requests_per_second it sets the hub's and the single-user activity
        intervals (docs/activity.md).
        """,
    )
    activity_requests_per_second = Float(
        10.0,
        config=True,
        help="""
        Activity reports (single-user POSTs plus the hub's own proxy-poll writes) per second
        the hub should absorb at expected_concurrent_servers. Lower it on a busy hub.
        """,
    )
    activity_max_interval = Integer(
        3600,
        config=True,
        help="""
        Upper bound, in seconds, on the tuned activity intervals; keep it well below the
        culler's timeout so idle servers are still noticed in time.
        """,
    )
    concurrent_spawn_limit = Integer(
        None,
        allow_none=True,
        config=True,
        help="JupyterHub.concurrent_spawn_limit to set (0: unlimited); None leaves it as is.",
    )
    active_server_limit = Integer(
        None,
        allow_none=True,
        config=True,
        help="JupyterHub.active_server_limit to set (0: unlimited); None leaves it as is.",
    )
    spawn_throttle_retry_range = List(
        Integer(),
        default_value=None,
        allow_none=True,
        minlen=2,
        maxlen=2,
        config=True,
        help="""
        [low, high]: the seconds the hub's 429 for concurrent_spawn_limit tells a user to
        wait (a random value between the two), merged into JupyterHub.tornado_settings,
        the only place JupyterHub reads it (keeping z2jh's slow_spawn_timeout there);
        None leaves JupyterHub's (30, 60).
        """,
    )
    admission_governor = Bool(
        True,
        config=True,
        help="""
        Run the admission governor in the hub: it adjusts concurrent_spawn_limit live
        (c.AdmissionGovernor.*) and, unless spawn_throttle_retry_range is set, the 429's
        Retry-After from the expected wait for a free slot (docs/admission.md). False leaves
        both exactly as configured.
        """,
    )
    route_check_interval = Float(
        30.0,
        config=True,
        help="""
        Seconds between two route checks in the hub (route repair): JupyterHub's own
        proxy.check_routes, which puts back every running server's route and the
        stopped-server handler's {base_url}user/ route after a proxy restart. JupyterHub
        checks only every last_activity_interval, which configure() raises to 300 s or more;
        0 leaves it at that (docs/service.md, "Routes after a proxy restart").
        """,
    )
    log_level = CaselessStrEnum(
        list(LOG_LEVELS), "INFO", config=True, help="Log level of the service process."
    )

    @validate("service_port")
    def _valid_port(self, proposal: Bunch) -> int:
        if not 1 <= proposal.value <= 65535:
            raise TraitError(
                f"HubResilience.service_port must be a port number, got {proposal.value}"
            )
        return proposal.value

    @validate("service_name")
    def _valid_service_name(self, proposal: Bunch) -> str:
        name = proposal.value
        if not name or name != name.strip() or "/" in name or "%" in name or set(name) == {"."}:
            raise TraitError(
                f"HubResilience.service_name {name!r} is not a valid JupyterHub service name "
                "(non-empty, no '/', no '%', no surrounding spaces)"
            )
        return name

    @validate("service_ip", "proxy_target_host", "api_token", "spawner_class")
    def _not_empty(self, proposal: Bunch) -> str | None:
        if proposal.value is not None and not proposal.value.strip():
            raise TraitError(
                f"HubResilience.{proposal.trait.name} must be None or a non-empty string"
            )
        return proposal.value

    @validate("stopped_status")
    def _valid_status(self, proposal: Bunch) -> int | None:
        allowed = (HUB_STOPPED_STATUS, HUB_LEGACY_STOPPED_STATUS, NOT_FOUND_STATUS)
        if proposal.value is not None and proposal.value not in allowed:
            raise TraitError(
                "HubResilience.stopped_status must be None (what the hub answers) or "
                f"{NOT_FOUND_STATUS}, got {proposal.value}"
            )
        return proposal.value

    @validate("expected_concurrent_servers")
    def _valid_servers(self, proposal: Bunch) -> int:
        if proposal.value < 1:
            raise TraitError(
                f"HubResilience.expected_concurrent_servers must be >= 1, got {proposal.value}"
            )
        return proposal.value

    @validate("activity_requests_per_second")
    def _valid_budget(self, proposal: Bunch) -> float:
        if not (math.isfinite(proposal.value) and proposal.value > 0):
            raise TraitError(
                "HubResilience.activity_requests_per_second must be a finite number > 0, "
                f"got {proposal.value!r}"
            )
        return proposal.value

    @validate("activity_max_interval")
    def _valid_max_interval(self, proposal: Bunch) -> int:
        least = max(DEFAULT_SINGLEUSER_INTERVAL, DEFAULT_HUB_INTERVAL)
        if proposal.value < least:
            raise TraitError(
                f"HubResilience.activity_max_interval must be >= {least} s (JupyterHub's "
                f"default intervals, which tuning never goes below), got {proposal.value}"
            )
        return proposal.value

    @validate("concurrent_spawn_limit", "active_server_limit")
    def _valid_limit(self, proposal: Bunch) -> int | None:
        if proposal.value is not None and proposal.value < 0:
            raise TraitError(
                f"HubResilience.{proposal.trait.name} must be >= 0 (0 means no limit) or "
                f"None, got {proposal.value}"
            )
        return proposal.value

    @validate("spawn_throttle_retry_range")
    def _valid_retry_range(self, proposal: Bunch) -> list[int] | None:
        value = proposal.value
        if value is not None and not 0 < value[0] <= value[1]:
            raise TraitError(
                "HubResilience.spawn_throttle_retry_range must be [low, high] seconds with "
                f"0 < low <= high, got {value!r}"
            )
        return value

    @validate("route_check_interval", "running_servers_max_age")
    def _valid_seconds_or_off(self, proposal: Bunch) -> float:
        if not (math.isfinite(proposal.value) and proposal.value >= 0):
            off = SWITCHED_OFF_BY_0[proposal.trait.name]
            raise TraitError(
                f"HubResilience.{proposal.trait.name} must be a number of seconds >= 0 "
                f"(0 switches {off} off), got {proposal.value!r}"
            )
        return proposal.value

    def activity_settings(self) -> ActivitySettings:
        """The tuned activity intervals for this hub's size and budget (the validators
        above refuse every value tune_activity would)."""
        return tune_activity(
            self.expected_concurrent_servers,
            self.activity_requests_per_second,
            max_interval=self.activity_max_interval,
        )
