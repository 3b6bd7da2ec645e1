"""Every Prometheus metric the package exports, defined in one place.

Rules: every metric has a help string; label values come from small, fixed sets (never a
user name, pod name or server name), so cardinality stays bounded however many users a hub
has. Metrics recorded inside the hub process (by the spawner) live in the default registry,
which JupyterHub serves at ``/hub/metrics``; metrics of the resilience service process are
served by that service's own ``/metrics``.
"""
from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

PREFIX = "hub_resilience"


# --- The spawn path, recorded by ResilientKubeSpawner in the hub process -------------------

#: Phases of one spawn, in order (see hub_resilience.spawn_phases for how each is measured).
SPAWN_PHASES = (
    "hub",  # in the hub: spawn requested -> pod create request sent
    "api_create",  # the Kubernetes API call that creates the pod, retries included
    "scheduling",  # pod created -> scheduled (a node scale-up, if any, included)
    "image_pull",  # Pulling -> Pulled, only when the image was pulled
    "container_start",  # image ready (or pod scheduled) -> containers ready
    "server_ready",  # pod running -> the hub reached the server over HTTP
)

#: Outcomes of a spawn. The hub's own refusals are read from JupyterHub's metrics.
SPAWN_OUTCOMES = (
    "success",
    "throttled",  # the hub answered 429: concurrent_spawn_limit reached
    "over_active_limit",  # the hub refused: active_server_limit reached
    "k8s_throttled",  # the Kubernetes API kept answering 429 until retries ran out
    "qos_refused",  # the profile cannot be made Guaranteed
    "unschedulable",
    "image_pull_failure",
    "crash",
    "timeout",
    "k8s_api_error",
    "error",  # anything else
)

#: The value of the ``profile`` label for a spawn without a profile, or with a slug not in
#: the configured profile_list (so the label set stays bounded).
NO_PROFILE = "default"
OTHER_PROFILE = "other"

SPAWN_PHASE_SECONDS = Histogram(
    f"{PREFIX}_spawn_phase_seconds",
    "Duration of each phase of a user server spawn, from the hub's request to a reachable "
    "server; read from the pod's conditions and events and the spawner's own timing.",
    ["phase", "profile"],
    buckets=(0.1, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 900, 1800, float("inf")),
)

SPAWNER_OUTCOMES = Counter(
    f"{PREFIX}_spawner_outcomes",
    "Spawns that reached the Kubernetes spawner, by outcome (internal; exported as "
    f"{PREFIX}_spawn_outcomes_total together with the hub's own refusals).",
    ["outcome", "profile"],
    registry=None,
)

SPAWN_SCALE_UPS = Counter(
    f"{PREFIX}_spawn_scale_ups",
    "Spawns whose pod waited for a node scale-up (cluster autoscaler TriggeredScaleUp event).",
    ["profile"],
)

K8S_API_REQUEST_SECONDS = Histogram(
    f"{PREFIX}_k8s_api_request_seconds",
    "Latency of the spawner's Kubernetes API requests, by operation.",
    ["operation"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, float("inf")),
)

K8S_API_REQUESTS = Counter(
    f"{PREFIX}_k8s_api_requests",
    "The spawner's Kubernetes API requests, by operation and result: 'ok', 'retry' (no "
    "answer in time, or a conflict KubeSpawner resolves and retries) or the HTTP status of "
    "an error; code 429 counts requests the API server throttled.",
    ["operation", "code"],
)

K8S_API_RETRIES = Counter(
    f"{PREFIX}_k8s_api_retries",
    "Kubernetes API requests the spawner retried, by operation and reason "
    "(throttled: 429; server_error: 5xx; timeout).",
    ["operation", "reason"],
)

#: Bounded values of the ``operation`` label.
K8S_OPERATIONS = ("create_pod", "delete_pod")

USER_PODS_BY_QOS_HELP = (
    "User pods the hub's spawner currently sees running, by the QoS class the API server gave them."
)

# --- Hub saturation --------------------------------------------------------------------------

EVENT_LOOP_LAG_SECONDS = Histogram(
    f"{PREFIX}_event_loop_lag_seconds",
    "How late the hub's event loop ran a callback scheduled at a fixed interval: the first "
    "sign of a swamped single-process hub.",
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, float("inf")),
)


# --- Hub API client and culler (hub_resilience.hubclient, hub_resilience.culler) ------------
# `component` names the caller from a fixed set ("culler", "service", "client", ...);
# `status` is the HTTP status code or "connection_error"; `reason` is one of
# "429", "503", "5xx", "connect", "connection".

HUB_API_REQUESTS = Counter(
    f"{PREFIX}_hub_api_requests_total",
    "Requests sent to the JupyterHub REST API, every attempt counted, by caller, method and "
    "HTTP status (or connection_error when no answer came).",
    ["component", "method", "status"],
)
HUB_API_RETRIES = Counter(
    f"{PREFIX}_hub_api_retries_total",
    "JupyterHub API requests retried after backing off, by caller and reason.",
    ["component", "reason"],
)
CULLER_CYCLES = Counter(
    f"{PREFIX}_culler_cycles_total",
    "Culler cycles run, by result: ok (finished; single users may have been skipped) or "
    "error (stopped early by an error; the culler carries on with the next cycle).",
    ["result"],
)
CULLER_CYCLE_DURATION = Histogram(
    f"{PREFIX}_culler_cycle_duration_seconds",
    "Wall-clock duration of one culler cycle.",
    buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, float("inf")),
)
CULLER_CYCLE_OVERRUNS = Counter(
    f"{PREFIX}_culler_cycle_overruns_total",
    "Culler cycles that ran longer than the culling period (the next cycle was delayed, "
    "cycles never overlap).",
)
CULLER_LAST_CYCLE_END = Gauge(
    f"{PREFIX}_culler_last_cycle_end_timestamp_seconds",
    "Unix time at which the last culler cycle that finished without error ended.",
)
CULLER_SERVERS_CULLED = Counter(
    f"{PREFIX}_culler_servers_culled_total",
    "Servers the culler stopped, by reason: inactive (idle past the timeout) or max_age.",
    ["reason"],
)
CULLER_USERS_CULLED = Counter(
    f"{PREFIX}_culler_users_culled_total",
    "Users the culler deleted, by reason: inactive or max_age.",
    ["reason"],
)
CULLER_SKIPPED = Counter(
    f"{PREFIX}_culler_skipped_total",
    "Users, servers or pages the culler left for a later cycle, by reason: error (the API "
    "failed after retries), malformed (unreadable answer), slow_stop (still stopping after "
    "the follow-up wait) or became_active (re-checked and found active).",
    ["reason"],
)


# --- The resilience service (hub_resilience.service, hub_resilience.stopped) ----------------
# Served by the service's own /metrics (its process's default registry), together with the
# culler's and the hub API client's metrics above.

#: Values of the ``kind`` label: how a request for a stopped server was classified.
STOPPED_SERVER_KINDS = (
    "api",  # a non-GET request, or a path with an "api" segment
    "xhr",  # X-Requested-With: XMLHttpRequest
    "websocket",  # an Upgrade: websocket request
    "json",  # Accept prefers application/json
    "page",  # a browser navigation: answered with the static "not running" page
    "resource",  # a sub-resource (script, image...): a plain-text answer
    "invalid",  # no user name in the path: 404
)

STOPPED_SERVER_RESPONSES = Counter(
    f"{PREFIX}_stopped_server_responses_total",
    "Requests for servers that are not running, answered by the resilience service instead "
    "of the hub, by kind of request and HTTP status (424, 503 or 404).",
    ["kind", "status"],
)

SERVICE_ORPHANED = Gauge(
    f"{PREFIX}_service_orphaned",
    "1 while the hub process that started the resilience service is gone (its culler is "
    "paused, stopped-server requests are still answered until a new hub's service takes "
    "over), else 0.",
)

SERVICE_CULLER_ENABLED = Gauge(
    f"{PREFIX}_service_culler_enabled",
    "1 when the resilience service runs the culler (and it is not paused), else 0.",
)
