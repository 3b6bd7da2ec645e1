"""Spawn admission on the local Kubernetes control plane (tests/k8s): the same four
configurations as :mod:`benchmarks.admission`, with ResilientKubeSpawner in a hub running
z2jh 4.4.0's own configuration.

The nodes are KWOK's; a stand-in autoscaler (below) adds nodes for the pods the scheduler
cannot place, after ``SCALE_UP_DELAY``, as the cluster autoscaler does. docs/benchmarks.md
("Spawn admission") says what this does and does not simulate.
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.admission import (
    CONFIGURATIONS,
    Configuration,
    Crowd,
    Outcome,
    comparison,
    drive,
)
from benchmarks.common import Row, log
from hub_resilience.tools.loadreport import Arrival
from hub_resilience.tools.simulated_cluster import nodes_to_add

#: Nodes ready at the start, the most the autoscaler may have, and what fits on one: user
#: pods of 1/8 CPU and 448 MiB (Guaranteed), so 32 fit on a 4-CPU, 16 GiB node.
NODES, MAX_NODES, PODS_PER_NODE = 4, 20, 32
USER_RESOURCES = {
    "cpu": {"guarantee": 0.125, "limit": 0.125},
    "memory": {"guarantee": "448M", "limit": "448M"},
}
SCALE_UP_DELAY = 120.0
#: How often the stand-in autoscaler looks for pods that fit on no node (the cluster
#: autoscaler's default scan interval is 10 s).
SCAN_INTERVAL = 5.0
#: What the operator would tell the governor a spawn waiting for a node takes here: the
#: node, after the autoscaler has noticed the pod (KWOK starts containers at once).
NODE_START_UP = SCALE_UP_DELAY + SCAN_INTERVAL

CROWD = Crowd("300 users at once on Kubernetes", 300, Arrival.BURST)


def unschedulable(pod: Any) -> bool:
    """Pending because no node has room for it (what triggers a scale-up); not while its
    PVC is still being bound, which the scheduler also reports as unschedulable."""
    if pod.status is None or pod.status.phase != "Pending":
        return False
    return any(
        c.type == "PodScheduled" and c.status == "False" and c.reason == "Unschedulable"
        and "Insufficient" in (c.message or "")
        for c in pod.status.conditions or []
    )


class StandInAutoscaler:
    """Adds KWOK nodes for unschedulable user pods, sized as the cluster autoscaler sizes a
    scale-up (:func:`~hub_resilience.tools.simulated_cluster.nodes_to_add`), each ready
    ``SCALE_UP_DELAY`` after it was asked for. Not a real autoscaler: no node groups, no
    scale-down, no expander."""

    def __init__(self, cluster: Any, namespace: str) -> None:
        self.cluster, self.namespace = cluster, namespace
        self.nodes = NODES
        self.provisioning = 0
        self._pending: set[asyncio.Future[None]] = set()

    async def run(self) -> None:
        while True:
            waiting = await asyncio.to_thread(self._unschedulable)
            add = nodes_to_add(
                waiting, provisioning=self.provisioning, servers_per_node=PODS_PER_NODE,
                nodes=self.nodes, max_nodes=MAX_NODES,
            )
            if add:
                self.provisioning += add
                log(f"stand-in autoscaler: {waiting} pods unschedulable, adding {add} node(s)")
                self._pending.add(asyncio.ensure_future(self._add(add)))
            self._pending = {f for f in self._pending if not f.done()}
            await asyncio.sleep(SCAN_INTERVAL)

    async def stop(self) -> None:
        """Stop scanning and adding (a scale-up under way is dropped)."""
        for task in self._pending:
            task.cancel()
        await asyncio.gather(*self._pending, return_exceptions=True)

    def _unschedulable(self) -> int:
        return sum(unschedulable(p) for p in self.cluster.user_pods())

    async def _add(self, count: int) -> None:
        await asyncio.sleep(SCALE_UP_DELAY)
        first = self.nodes
        self.nodes += count
        self.provisioning -= count
        await asyncio.to_thread(self.cluster.add_nodes, range(first, first + count))


async def run_one(cluster: Any, work: Path, crowd: Crowd, configuration: Configuration
                  ) -> Outcome:
    from tests.k8s.test_e2e_pressure import reset_users, z2jh_hub, z2jh_values

    values = z2jh_values(
        singleuser=dict(USER_RESOURCES),
        hub={
            "concurrentSpawnLimit": configuration.limit,
            "config": {
                "HubResilience": {"admission_governor": configuration.governor},
                "AdmissionGovernor": {
                    "scale_up_seconds": configuration.scale_up_seconds(NODE_START_UP),
                },
            },
        },
    )
    autoscaler = StandInAutoscaler(cluster, cluster.namespace)
    scaling = asyncio.ensure_future(autoscaler.run())
    directory = Path(tempfile.mkdtemp(dir=work))
    try:
        async with z2jh_hub(cluster, directory, cluster.api, cluster.namespace, values) as hub:
            outcome = await drive(hub, crowd, configuration.name)
            errors = [line for line in hub.log_text().splitlines() if "[E " in line]
            log(f"admission on Kubernetes: {configuration.name}: {len(errors)} ERROR lines "
                f"in the hub log, {autoscaler.nodes} nodes at the end")
    finally:
        scaling.cancel()
        await asyncio.gather(scaling, return_exceptions=True)
        await autoscaler.stop()
        # The next configuration starts from the same cluster: no user pod, claim, volume
        # or event left, NODES nodes.
        await asyncio.to_thread(reset_users, cluster, cluster.namespace)
        await asyncio.to_thread(cluster.remove_nodes_from, NODES)
    return outcome


async def run(crowd: Crowd = CROWD) -> list[Row]:
    from tests.k8s.cluster import LocalCluster, NodeShape, build_binaries

    with tempfile.TemporaryDirectory(prefix="hub-resilience-admission-k8s-") as tmp:
        work = Path(tmp)
        bin_dir = await asyncio.to_thread(build_binaries, work / "logs" / "build.log")
        cluster = LocalCluster(work_dir=work / "cluster", bin_dir=bin_dir, node_count=NODES,
                               node_shape=NodeShape(cpu="4", memory="16Gi", pods="110"))
        await asyncio.to_thread(cluster.start)
        try:
            outcomes = {c: await run_one(cluster, work, crowd, c) for c in CONFIGURATIONS}
        finally:
            await asyncio.to_thread(cluster.stop)
    return comparison(crowd, outcomes)
