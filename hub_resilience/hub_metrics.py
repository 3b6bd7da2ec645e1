"""Metrics computed in the hub process at scrape time, and the event-loop lag monitor.

Why collectors: a count of running user pods by QoS class is a view of what KubeSpawner's
pod reflector already holds, so it is read when Prometheus scrapes instead of being kept up
to date on every pod event; and spawn outcomes combine the spawner's own counts with the
refusals JupyterHub records before a spawner is involved (``concurrent_spawn_limit`` and
``active_server_limit``), so throttled launches are never counted as failures.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable

from jupyterhub.metrics import SERVER_SPAWN_DURATION_SECONDS
from prometheus_client import REGISTRY
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from hub_resilience import metrics

#: JupyterHub's own failure reasons (jupyterhub.metrics.ServerSpawnFailureReason) that are
#: refusals by the hub, mapped to our outcome names.
HUB_REFUSALS = {"throttled": "throttled", "too-many-users": "over_active_limit"}

QOS_CLASSES = ("Guaranteed", "Burstable", "BestEffort")


def _hub_refusal_counts() -> dict[str, float]:
    """Spawns JupyterHub refused, read from its own spawn-duration histogram."""
    counts = dict.fromkeys(HUB_REFUSALS.values(), 0.0)
    for family in SERVER_SPAWN_DURATION_SECONDS.collect():
        for sample in family.samples:
            if not sample.name.endswith("_count"):
                continue
            outcome = HUB_REFUSALS.get(sample.labels.get("reason", ""))
            if outcome and sample.labels.get("status") == "failure":
                counts[outcome] += sample.value
    return counts


class SpawnOutcomeCollector(Collector):
    """``hub_resilience_spawn_outcomes_total{outcome, profile}``."""

    def describe(self) -> Iterable[CounterMetricFamily]:
        return [CounterMetricFamily(f"{metrics.PREFIX}_spawn_outcomes", "", labels=[])]

    def collect(self) -> Iterable[CounterMetricFamily]:
        # A scrape runs in the hub's event loop: the surest moment to make sure the lag
        # monitor runs there (the spawner module may have been imported before the loop).
        try:
            ensure_event_loop_lag_monitor()
        except RuntimeError:  # collected outside a running loop
            pass
        family = CounterMetricFamily(
            f"{metrics.PREFIX}_spawn_outcomes",
            "Spawn outcomes: success, the hub's own refusals (throttled by "
            "concurrent_spawn_limit, over_active_limit) kept apart from failures "
            "(k8s_throttled, qos_refused, unschedulable, image_pull_failure, crash, timeout, "
            "k8s_api_error, error).",
            labels=["outcome", "profile"],
        )
        for outcome, value in _hub_refusal_counts().items():
            family.add_metric([outcome, metrics.NO_PROFILE], value)
        for sample_family in metrics.SPAWNER_OUTCOMES.collect():
            for sample in sample_family.samples:
                if sample.name.endswith("_total"):
                    family.add_metric(
                        [sample.labels["outcome"], sample.labels["profile"]], sample.value
                    )
        yield family


class UserPodQoSCollector(Collector):
    """``hub_resilience_user_pods{qos_class}`` from the pods the spawner's reflector holds."""

    def __init__(self, pods: Callable[[], Iterable[dict]]) -> None:
        self._pods = pods

    def describe(self) -> Iterable[GaugeMetricFamily]:
        return [GaugeMetricFamily(f"{metrics.PREFIX}_user_pods", "", labels=[])]

    def collect(self) -> Iterable[GaugeMetricFamily]:
        counts = dict.fromkeys(QOS_CLASSES, 0)
        for pod in self._pods():
            status = pod.get("status") or {}
            if status.get("phase") != "Running" or (pod.get("metadata") or {}).get(
                "deletionTimestamp"
            ):
                continue
            qos = status.get("qosClass")
            if qos in counts:
                counts[qos] += 1
        family = GaugeMetricFamily(
            f"{metrics.PREFIX}_user_pods", metrics.USER_PODS_BY_QOS_HELP, labels=["qos_class"]
        )
        for qos, count in counts.items():
            family.add_metric([qos], count)
        yield family


_registered: set[str] = set()


def register_hub_collectors(pods: Callable[[], Iterable[dict]]) -> None:
    """Register the hub-process collectors in the default registry, once per process."""
    if "collectors" in _registered:
        return
    REGISTRY.register(SpawnOutcomeCollector())
    REGISTRY.register(UserPodQoSCollector(pods))
    _registered.add("collectors")


async def monitor_event_loop_lag(interval: float = 0.5) -> None:
    """Observe, forever, how late the loop wakes a coroutine that sleeps ``interval`` s."""
    loop = asyncio.get_running_loop()
    while True:
        before = loop.time()
        await asyncio.sleep(interval)
        metrics.EVENT_LOOP_LAG_SECONDS.observe(max(0.0, loop.time() - before - interval))


_lag_tasks: dict[int, asyncio.Task] = {}


def ensure_event_loop_lag_monitor(interval: float = 0.5) -> None:
    """Start the lag monitor on the running loop unless it runs there already."""
    loop = asyncio.get_running_loop()
    task = _lag_tasks.get(id(loop))
    if task is None or task.done():
        _lag_tasks[id(loop)] = loop.create_task(monitor_event_loop_lag(interval))
