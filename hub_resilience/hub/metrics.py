"""The hub process's metrics, served by JupyterHub's own ``/hub/metrics``.

Why here: only the hub process imports this module, so ``/hub/metrics`` carries these
families and nothing of the service's. Label values are Enums and every series of a known
label set is created at import (as ``jupyterhub.metrics`` does), so none appears late. The
hub's saturation is JupyterHub's own ``jupyterhub_event_loop_interval_seconds``. Collectors
compute two families at scrape time; docs/metrics.md explains each metric.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from jupyterhub.metrics import SERVER_SPAWN_DURATION_SECONDS
from prometheus_client import REGISTRY, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from hub_resilience.hub.admission_policy import AdmissionReason, AdmissionSignals
from hub_resilience.hub.qos import QoSClass
from hub_resilience.hub.spawn_phases import SpawnOutcome, SpawnPhase
from hub_resilience.labels import LabelEnum

PREFIX = "hub_resilience"


class K8sOperation(LabelEnum):
    """Every Kubernetes API request the spawner makes: all go through one retry path."""

    CREATE_POD = "create_pod"
    READ_POD = "read_pod"
    DELETE_POD = "delete_pod"
    CREATE_PVC = "create_pvc"
    READ_PVC = "read_pvc"
    DELETE_PVC = "delete_pvc"
    CREATE_NAMESPACE = "create_namespace"
    CREATE_SECRET = "create_secret"
    READ_SECRET = "read_secret"
    DELETE_SECRET = "delete_secret"
    CREATE_SERVICE = "create_service"
    READ_SERVICE = "read_service"
    DELETE_SERVICE = "delete_service"


class K8sRetryReason(LabelEnum):
    """Why a Kubernetes API request (or a watch) was retried."""

    THROTTLED = "throttled"  # 429
    SERVER_ERROR = "server_error"  # 5xx
    TIMEOUT = "timeout"  # no answer within k8s_api_request_timeout
    CONNECTION_ERROR = "connection_error"  # refused, reset: the API server is not there
    EXPIRED = "expired"  # 410 Gone: a watch's resource version is too old (watches only)
    OTHER = "other"  # any other error of a watch (watches only: requests raise it)


class WatchedResource(LabelEnum):
    """What the hub's Kubernetes watches (KubeSpawner's reflectors) follow."""

    PODS = "pods"
    EVENTS = "events"


#: The value of the ``profile`` label for a spawn without a profile, or with a slug not in
#: the configured profile_list (so the label set stays bounded).
NO_PROFILE = "default"
OTHER_PROFILE = "other"

#: JupyterHub's spawn refusals, by the value JupyterHub records, mapped to our outcomes.
#: JupyterHub 5.x records them as the ``status`` of its spawn-duration histogram;
#: JupyterHub 6 records ``status="failure"`` with them as its ``reason``.
HUB_REFUSALS = {
    "throttled": SpawnOutcome.THROTTLED,
    "too-many-users": SpawnOutcome.OVER_ACTIVE_LIMIT,
}

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
    "The spawner's Kubernetes API requests (each attempt), by operation and result: 'ok', "
    "the HTTP status of an error (429: the API server throttled it), 'timeout' (no answer "
    "within k8s_api_request_timeout) or 'connection_error'.",
    ["operation", "code"],
)

K8S_API_RETRIES = Counter(
    f"{PREFIX}_k8s_api_retries",
    "Kubernetes API requests the spawner retried, by operation and reason "
    "(throttled: 429; server_error: 5xx; timeout; connection_error).",
    ["operation", "reason"],
)

K8S_WATCH_RESTARTS = Counter(
    f"{PREFIX}_k8s_watch_restarts",
    "Times a Kubernetes watch of the hub (pods, events) failed and was started again after a "
    "wait, by resource and reason; a watch never gives up.",
    ["resource", "reason"],
)

K8S_WATCH_UP_HELP = (
    "1 while every Kubernetes watch of this resource is listed and watching, 0 while one is "
    "failing and waiting to retry (the hub's view of pods or events is then stale)."
)
K8S_WATCH_SINCE_HELP = (
    "Unix time at which the watches of this resource last went up or down."
)

USER_PODS_HELP = (
    "User pods the hub's spawner currently sees running, by the QoS class the API server gave them."
)
SPAWN_OUTCOMES_HELP = (
    "Spawn outcomes: success, the hub's own refusals (throttled by concurrent_spawn_limit, "
    "over_active_limit) kept apart from failures (k8s_throttled, qos_refused, unschedulable, "
    "image_pull_failure, crash, timeout, http_timeout, k8s_api_error, error)."
)

for _phase in SpawnPhase:
    SPAWN_PHASE_SECONDS.labels(_phase, NO_PROFILE)
for _outcome in SpawnOutcome:
    if _outcome not in HUB_REFUSALS.values():
        SPAWNER_OUTCOMES.labels(_outcome, NO_PROFILE)
SPAWN_SCALE_UPS.labels(NO_PROFILE)
#: Retry reasons of single requests (watches have two more).
REQUEST_RETRY_REASONS = (
    K8sRetryReason.THROTTLED,
    K8sRetryReason.SERVER_ERROR,
    K8sRetryReason.TIMEOUT,
    K8sRetryReason.CONNECTION_ERROR,
)
for _operation in K8sOperation:
    K8S_API_REQUEST_SECONDS.labels(_operation)
    K8S_API_REQUESTS.labels(_operation, "ok")
    for _reason in REQUEST_RETRY_REASONS:
        K8S_API_RETRIES.labels(_operation, _reason)
for _resource in WatchedResource:
    for _reason in K8sRetryReason:
        K8S_WATCH_RESTARTS.labels(_resource, _reason)


def hub_refusal_counts(samples: Iterable[tuple[str, dict[str, str], float]]) -> dict[str, float]:
    """Spawns JupyterHub refused, from the ``_count`` samples of its spawn-duration histogram
    (name, labels, value), on JupyterHub 5.x and 6.x alike."""
    counts = {str(outcome): 0.0 for outcome in HUB_REFUSALS.values()}
    for name, labels, value in samples:
        if not name.endswith("_count"):
            continue
        status = labels.get("status", "")
        refusal = status if status in HUB_REFUSALS else (
            labels.get("reason", "") if status == "failure" else ""
        )
        if refusal in HUB_REFUSALS:
            counts[str(HUB_REFUSALS[refusal])] += value
    return counts


class SpawnOutcomeCollector(Collector):
    """``hub_resilience_spawn_outcomes_total{outcome, profile}``: the spawner's outcomes and
    the hub's refusals in one family, so throttled launches are never counted as failures."""

    def describe(self) -> Iterable[CounterMetricFamily]:
        return [CounterMetricFamily(f"{PREFIX}_spawn_outcomes", SPAWN_OUTCOMES_HELP)]

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(
            f"{PREFIX}_spawn_outcomes", SPAWN_OUTCOMES_HELP, labels=["outcome", "profile"]
        )
        hub_samples = (
            (sample.name, sample.labels, sample.value)
            for metric in SERVER_SPAWN_DURATION_SECONDS.collect()
            for sample in metric.samples
        )
        for outcome, value in hub_refusal_counts(hub_samples).items():
            family.add_metric([outcome, NO_PROFILE], value)
        for metric in SPAWNER_OUTCOMES.collect():
            for sample in metric.samples:
                if sample.name.endswith("_total"):
                    family.add_metric(
                        [sample.labels["outcome"], sample.labels["profile"]], sample.value
                    )
        yield family


def count_running_pods_by_qos(pods: Iterable[dict]) -> dict[str, int]:
    """Running, not terminating pods by ``status.qosClass`` (every class present)."""
    counts = {str(qos): 0 for qos in QoSClass}
    for pod in pods:
        status = pod.get("status") or {}
        if status.get("phase") != "Running" or (pod.get("metadata") or {}).get(
            "deletionTimestamp"
        ):
            continue
        qos = status.get("qosClass")
        if qos in counts:
            counts[qos] += 1
    return counts


class UserPodQoSCollector(Collector):
    """``hub_resilience_user_pods{qos_class}``: a view of what KubeSpawner's pod reflector
    already holds, read when Prometheus scrapes instead of kept up to date per pod event."""

    def __init__(self, pods: Callable[[], Iterable[dict]]) -> None:
        self._pods = pods

    def describe(self) -> Iterable[GaugeMetricFamily]:
        return [GaugeMetricFamily(f"{PREFIX}_user_pods", USER_PODS_HELP)]

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(f"{PREFIX}_user_pods", USER_PODS_HELP, labels=["qos_class"])
        for qos, count in count_running_pods_by_qos(self._pods()).items():
            family.add_metric([qos], count)
        yield family


@dataclass(frozen=True)
class WatchStatus:
    """What one watch (one reflector) reports: up or not, and since when (Unix time)."""

    resource: WatchedResource
    up: bool
    since: float


def summarise_watches(watches: Iterable[WatchStatus]) -> dict[WatchedResource, WatchStatus]:
    """Per resource: up only if every watch of it is up; since the latest change among the
    watches in the reported state (a down watch dates the outage, else the latest recovery)."""
    summary: dict[WatchedResource, WatchStatus] = {}
    for watch in watches:
        seen = summary.get(watch.resource)
        if seen is None:
            summary[watch.resource] = watch
        elif seen.up and not watch.up:
            summary[watch.resource] = watch
        elif seen.up == watch.up and watch.since > seen.since:
            summary[watch.resource] = watch
    return summary


class WatchCollector(Collector):
    """``hub_resilience_k8s_watch_up{resource}`` and ``..._k8s_watch_since_timestamp_seconds``:
    read from the reflectors when Prometheus scrapes; a resource nobody watches yet is absent."""

    def __init__(self, watches: Callable[[], Iterable[WatchStatus]]) -> None:
        self._watches = watches

    def _families(self) -> tuple[GaugeMetricFamily, GaugeMetricFamily]:
        return (
            GaugeMetricFamily(f"{PREFIX}_k8s_watch_up", K8S_WATCH_UP_HELP, labels=["resource"]),
            GaugeMetricFamily(
                f"{PREFIX}_k8s_watch_since_timestamp_seconds",
                K8S_WATCH_SINCE_HELP,
                labels=["resource"],
            ),
        )

    def describe(self) -> Iterable[GaugeMetricFamily]:
        return self._families()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        up, since = self._families()
        for resource, status in summarise_watches(self._watches()).items():
            up.add_metric([str(resource)], 1.0 if status.up else 0.0)
            since.add_metric([str(resource)], status.since)
        yield up
        yield since


_registered: list[Collector] = []


def register_hub_collectors(
    pods: Callable[[], Iterable[dict]], watches: Callable[[], Iterable[WatchStatus]]
) -> None:
    """Register the scrape-time collectors in the default registry, once per process."""
    if _registered:
        return
    for collector in (SpawnOutcomeCollector(), UserPodQoSCollector(pods), WatchCollector(watches)):
        REGISTRY.register(collector)
        _registered.append(collector)


# -- the admission governor ----------------------------------------------------------------

ADMISSION_CHANGES = Counter(
    f"{PREFIX}_admission_changes",
    "Changes of the hub's concurrent spawn limit by the admission governor, by the reason it "
    "acted on (all_well: raised; the others: lowered on that distress signal).",
    ["reason"],
)
#: Reasons that keep the limit where it is (a capacity wait holds it, docs/admission.md).
_NOT_CHANGES = (
    AdmissionReason.START,
    AdmissionReason.HOLD,
    AdmissionReason.CAPACITY_WAIT,
    AdmissionReason.REFUSALS,
)
for _change in AdmissionReason:
    if _change not in _NOT_CHANGES:
        ADMISSION_CHANGES.labels(_change)


class AdmissionSignal(LabelEnum):
    """The signals of the governor's last decision (the ``signal`` label)."""

    LOOP_LAG_SECONDS = "loop_lag_seconds"
    K8S_LATENCY_P90_SECONDS = "k8s_latency_p90_seconds"
    K8S_THROTTLED_RATIO = "k8s_throttled_ratio"
    PENDING_SPAWNS = "pending_spawns"
    WAITING_FOR_NODE = "waiting_for_node"
    FAILED_RATIO = "failed_ratio"


def signal_values(signals: AdmissionSignals) -> dict[AdmissionSignal, float]:
    """What each ``signal`` series shows for one decision (ratios of 0 requests are 0)."""
    return {
        AdmissionSignal.LOOP_LAG_SECONDS: signals.loop_lag,
        AdmissionSignal.K8S_LATENCY_P90_SECONDS: signals.k8s_latency or 0.0,
        AdmissionSignal.K8S_THROTTLED_RATIO: signals.k8s_throttled / max(1, signals.k8s_requests),
        AdmissionSignal.PENDING_SPAWNS: float(signals.pending),
        AdmissionSignal.WAITING_FOR_NODE: float(signals.waiting_for_capacity),
        AdmissionSignal.FAILED_RATIO: signals.failed / max(1, signals.finished),
    }


@dataclass
class AdmissionStatus:
    """What the governor last set, for its collector."""

    limit: int
    floor: int
    ceiling: int
    retry_range: tuple[int, int]
    signals: dict[AdmissionSignal, float]


_admission: list[AdmissionStatus] = []


def record_admission(
    *,
    limit: int,
    floor: int,
    ceiling: int,
    reason: AdmissionReason | None,
    retry_range: tuple[int, int],
    signals: AdmissionSignals | None,
) -> None:
    """The governor's latest decision; ``reason`` when it changed the limit."""
    if reason is not None:
        ADMISSION_CHANGES.labels(reason).inc()
    values = signal_values(signals) if signals is not None else dict.fromkeys(AdmissionSignal, 0.0)
    status = AdmissionStatus(limit, floor, ceiling, retry_range, values)
    if _admission:
        _admission[0] = status
        return
    _admission.append(status)
    REGISTRY.register(AdmissionCollector())


ADMISSION_GAUGES = {
    "admission_limit": "The concurrent spawn limit the admission governor has set "
    "(JupyterHub's concurrent_spawn_limit, changed live).",
    "admission_limit_floor": "The lowest concurrent spawn limit the admission governor sets.",
    "admission_limit_ceiling": "The highest concurrent spawn limit the admission governor sets.",
    "admission_retry_after_low_seconds": "The shortest Retry-After the hub's 429 suggests now "
    "(JupyterHub's spawn_throttle_retry_range, from the expected wait for a free slot).",
    "admission_retry_after_high_seconds": "The longest Retry-After the hub's 429 suggests now.",
}
ADMISSION_SIGNAL_HELP = (
    "The signals of the admission governor's last decision, measured in the hub over its "
    "interval: worst event-loop lag, p90 Kubernetes API latency, share of API requests "
    "answered 429, spawns pending, those waiting for a node, share of finished spawns failed."
)


class AdmissionCollector(Collector):
    """The governor's gauges, registered when it first decides: a hub without the governor
    exports none of them (only ``hub_resilience_admission_changes_total``, at 0)."""

    def describe(self) -> Iterable[GaugeMetricFamily]:
        gauges = [GaugeMetricFamily(f"{PREFIX}_{n}", text) for n, text in ADMISSION_GAUGES.items()]
        return [*gauges, self._signal_family()]

    @staticmethod
    def _signal_family() -> GaugeMetricFamily:
        return GaugeMetricFamily(
            f"{PREFIX}_admission_signal", ADMISSION_SIGNAL_HELP, labels=["signal"]
        )

    def collect(self) -> Iterator[GaugeMetricFamily]:
        if not _admission:  # not registered before a decision; empty for the docs
            yield from self.describe()
            return
        status = _admission[0]
        values = (
            status.limit,
            status.floor,
            status.ceiling,
            status.retry_range[0],
            status.retry_range[1],
        )
        for (name, text), value in zip(ADMISSION_GAUGES.items(), values, strict=True):
            yield GaugeMetricFamily(f"{PREFIX}_{name}", text, value=value)
        signal = self._signal_family()
        for key, reading in status.signals.items():
            signal.add_metric([str(key)], reading)
        yield signal
