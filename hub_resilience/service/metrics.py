"""The resilience service process's metrics, served by the service's own ``/metrics``.

Why a registry of its own: the service's families (the stopped-server handler, the culler,
the hub API client) must never appear on the hub's ``/hub/metrics``, which serves the
default registry, even where the hub process imports the culler to check its configuration;
and the service's ``/metrics`` serves this registry only, so no hub family shows there.
Label values are Enums, and every series of a known label set is created at import, so
none appears late. docs/metrics.md explains each metric.
"""
from __future__ import annotations

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
)

from hub_resilience.hubclient import HUB_API_REGISTRY
from hub_resilience.labels import LabelEnum
from hub_resilience.service.cull_policy import CullReason

PREFIX = "hub_resilience"

#: What the service's ``/metrics`` serves: its own families, its hub API client's and its
#: process's.
REGISTRY = CollectorRegistry(auto_describe=True)
for _collector in (HUB_API_REGISTRY, PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
    REGISTRY.register(_collector)


class StoppedKind(LabelEnum):
    """How a request for a stopped server was classified (the ``kind`` label)."""

    API = "api"  # a non-GET request, or a path with an "api" segment
    XHR = "xhr"  # X-Requested-With: XMLHttpRequest
    WEBSOCKET = "websocket"  # an Upgrade: websocket request
    JSON = "json"  # Accept prefers application/json
    PAGE = "page"  # a browser navigation: redirected (302) to the hub, which knows the user
    RESOURCE = "resource"  # a sub-resource (script, image...): a plain-text answer
    INVALID = "invalid"  # no user name in the path: 404
    #: the hub listed the server as running: its route alone is missing (302 to the hub for
    #: a GET, else 503 and Retry-After), never told it stopped
    ROUTE_MISSING = "route_missing"


class CycleResult(LabelEnum):
    """How a culler cycle ended."""

    OK = "ok"
    ERROR = "error"


class SkipReason(LabelEnum):
    """Why the culler left a user, server or page for a later cycle."""

    ERROR = "error"  # the API failed after retries
    MALFORMED = "malformed"  # an unreadable answer
    SLOW_STOP = "slow_stop"  # still stopping after the follow-up wait
    BECAME_ACTIVE = "became_active"  # re-checked and found active


CULLER_CYCLES = Counter(
    f"{PREFIX}_culler_cycles_total",
    "Culler cycles run, by result: ok (finished; single users may have been skipped) or "
    "error (stopped early by an error; the culler carries on with the next cycle).",
    ["result"],
    registry=REGISTRY,
)
CULLER_CYCLE_DURATION = Histogram(
    f"{PREFIX}_culler_cycle_duration_seconds",
    "Wall-clock duration of one culler cycle.",
    buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, float("inf")),
    registry=REGISTRY,
)
CULLER_CYCLE_OVERRUNS = Counter(
    f"{PREFIX}_culler_cycle_overruns_total",
    "Culler cycles that ran longer than the culling period (the next cycle was delayed, "
    "cycles never overlap).",
    registry=REGISTRY,
)
CULLER_LAST_CYCLE_END = Gauge(
    f"{PREFIX}_culler_last_cycle_end_timestamp_seconds",
    "Unix time at which the last culler cycle that finished without error ended.",
    registry=REGISTRY,
)
CULLER_SERVERS_CULLED = Counter(
    f"{PREFIX}_culler_servers_culled_total",
    "Servers the culler stopped, by reason: inactive (idle past the timeout) or max_age.",
    ["reason"],
    registry=REGISTRY,
)
CULLER_USERS_CULLED = Counter(
    f"{PREFIX}_culler_users_culled_total",
    "Users the culler deleted, by reason: inactive or max_age.",
    ["reason"],
    registry=REGISTRY,
)
CULLER_SKIPPED = Counter(
    f"{PREFIX}_culler_skipped_total",
    "Users, servers or pages the culler left for a later cycle, by reason: error (the API "
    "failed after retries), malformed (unreadable answer), slow_stop (still stopping after "
    "the follow-up wait) or became_active (re-checked and found active).",
    ["reason"],
    registry=REGISTRY,
)


STOPPED_SERVER_RESPONSES = Counter(
    f"{PREFIX}_stopped_server_responses_total",
    "Requests reaching the stopped-server handler (the proxy had no route for their server), "
    "answered by the resilience service instead of the hub, by kind of request and HTTP "
    "status: the hub's stopped status (424, 503 or 404), 302 for a browser navigation sent "
    "to the hub, 404 for a path naming no user; kind route_missing is a server the hub "
    "listed as running whose route is missing (302 to the hub for a GET, else 503).",
    ["kind", "status"],
    registry=REGISTRY,
)

SERVICE_ORPHANED = Gauge(
    f"{PREFIX}_service_orphaned",
    "1 while the hub process that started the resilience service is gone (its culler is "
    "paused, stopped-server requests are still answered until a new hub's service takes "
    "over), else 0.",
    registry=REGISTRY,
)

SERVICE_CULLER_ENABLED = Gauge(
    f"{PREFIX}_service_culler_enabled",
    "1 when the resilience service runs the culler (and it is not paused), else 0.",
    registry=REGISTRY,
)


for _result in CycleResult:
    CULLER_CYCLES.labels(_result)
for _reason in CullReason:
    CULLER_SERVERS_CULLED.labels(_reason)
    CULLER_USERS_CULLED.labels(_reason)
for _skip in SkipReason:
    CULLER_SKIPPED.labels(_skip)
