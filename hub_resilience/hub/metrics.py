"""The hub process's metrics, served by JupyterHub's own ``/hub/metrics``.

Why here: only the hub process imports this module, so ``/hub/metrics`` carries these
families and nothing of the service's. Label values are Enums and every series of a known
label set is created at import (as ``jupyterhub.metrics`` does), so none appears late. The
hub's saturation is JupyterHub's own ``jupyterhub_event_loop_interval_seconds``. Collectors
compute two families at scrape time; docs/metrics.md explains each metric.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from jupyterhub.metrics import SERVER_SPAWN_DURATION_SECONDS
from prometheus_client import REGISTRY, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from hub_resilience.hub.qos import QoSClass
from hub_resilience.hub.spawn_phases import SpawnOutcome, SpawnPhase
from hub_resilience.labels import LabelEnum

PREFIX = "hub_resilience"


class K8sOperation(LabelEnum):
    """The spawner's Kubernetes API requests that are timed and retried."""

    CREATE_POD = "create_pod"
    DELETE_POD = "delete_pod"


class K8sRetryReason(LabelEnum):
    """Why a Kubernetes API request was retried."""

    THROTTLED = "throttled"  # 429
    SERVER_ERROR = "server_error"  # 5xx


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
    "The spawner's Kubernetes API requests, by operation and result: 'ok', 'retry' (no "
    "answer in time, or a conflict KubeSpawner resolves and retries) or the HTTP status of "
    "an error; code 429 counts requests the API server throttled.",
    ["operation", "code"],
)

K8S_API_RETRIES = Counter(
    f"{PREFIX}_k8s_api_retries",
    "Kubernetes API requests the spawner retried, by operation and reason "
    "(throttled: 429; server_error: 5xx).",
    ["operation", "reason"],
)

USER_PODS_HELP = (
    "User pods the hub's spawner currently sees running, by the QoS class the API server gave them."
)
SPAWN_OUTCOMES_HELP = (
    "Spawn outcomes: success, the hub's own refusals (throttled by concurrent_spawn_limit, "
    "over_active_limit) kept apart from failures (k8s_throttled, qos_refused, unschedulable, "
    "image_pull_failure, crash, timeout, k8s_api_error, error)."
)

for _phase in SpawnPhase:
    SPAWN_PHASE_SECONDS.labels(_phase, NO_PROFILE)
for _outcome in SpawnOutcome:
    if _outcome not in HUB_REFUSALS.values():
        SPAWNER_OUTCOMES.labels(_outcome, NO_PROFILE)
SPAWN_SCALE_UPS.labels(NO_PROFILE)
for _operation in K8sOperation:
    K8S_API_REQUEST_SECONDS.labels(_operation)
    K8S_API_REQUESTS.labels(_operation, "ok")
    for _reason in K8sRetryReason:
        K8S_API_RETRIES.labels(_operation, _reason)


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


_registered: list[Collector] = []


def register_hub_collectors(pods: Callable[[], Iterable[dict]]) -> None:
    """Register the scrape-time collectors in the default registry, once per process."""
    if _registered:
        return
    for collector in (SpawnOutcomeCollector(), UserPodQoSCollector(pods)):
        REGISTRY.register(collector)
        _registered.append(collector)
