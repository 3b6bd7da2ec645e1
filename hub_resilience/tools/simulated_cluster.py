"""A capacity model for simulated servers: nodes with room for so many servers, a scale-up
that takes time, an image pull on a node's first server, and a node that starts only so many
servers at once.

Why: with room for everyone at once, a higher spawn limit always wins and no benchmark can
tell a good admission policy from a bad one. What the model does and does not simulate is in
docs/benchmarks.md ("A cluster with limited room").
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import Callable
from typing import Any, ClassVar

from traitlets import Bunch, Float, Integer, TraitError, validate
from traitlets.config import LoggingConfigurable


def nodes_to_add(
    waiting: int, *, provisioning: int, servers_per_node: int, nodes: int, max_nodes: int
) -> int:
    """How many nodes an autoscaler adds for ``waiting`` servers that fit on no node: enough
    for those the ``provisioning`` nodes will not hold, within ``max_nodes`` in all (as the
    cluster autoscaler sizes a scale-up by the pending pods)."""
    if min(waiting, provisioning, nodes) < 0 or servers_per_node < 1:
        raise ValueError("counts must be >= 0 and servers_per_node >= 1")
    uncovered = max(0, waiting - provisioning * servers_per_node)
    room = max(0, max_nodes - nodes - provisioning)
    return min(room, math.ceil(uncovered / servers_per_node))


class _Node:
    def __init__(self, servers: int, parallel_starts: int) -> None:
        self.free = servers
        self.pulled: asyncio.Future[None] | None = None  # the image pull, once begun
        self.starts = asyncio.Semaphore(parallel_starts)


class Seat:
    """A server's place on a node, from placement until it is given back."""

    def __init__(self, cluster: SimulatedCluster, node: _Node) -> None:
        self._cluster, self._node = cluster, node
        self._held = True

    async def start(self, container_start: float) -> None:
        """Pull the image (once per node; later servers wait for that pull), then start the
        container when one of the node's parallel starts is free."""
        node = self._node
        if node.pulled is None:
            node.pulled = asyncio.ensure_future(asyncio.sleep(self._cluster.image_pull))
        await asyncio.shield(node.pulled)
        async with node.starts:
            await asyncio.sleep(container_start)

    def release(self) -> None:
        """Give the seat back (idempotent): a stopped or failed server leaves its node."""
        if self._held:
            self._held = False
            self._node.free += 1
            self._cluster._dispatch()


class SimulatedCluster(LoggingConfigurable):
    """The nodes simulated servers run on; one per hub process, shared by its spawners.

    ``nodes`` 0 (the default) means unlimited room: every server starts at once, as
    SimulatedSpawner always did.
    """

    nodes = Integer(
        0,
        config=True,
        help="Nodes ready when the hub starts (0: no capacity model, room for every server).",
    )
    max_nodes = Integer(
        0,
        config=True,
        help="Most nodes the autoscaler may grow the cluster to (0 or below nodes: no scale-up).",
    )
    servers_per_node = Integer(16, config=True, help="Servers that fit on one node.")
    scale_up_delay = Float(
        120.0,
        config=True,
        help="Seconds from a server that fits on no node to the new node being ready.",
    )
    image_pull = Float(
        10.0, config=True, help="Seconds a node's first server pulls the image (once per node)."
    )
    parallel_starts = Integer(
        4,
        config=True,
        help="Servers a node starts at once; more wait their turn (start time grows).",
    )

    @validate("nodes", "max_nodes")
    def _count(self, proposal: Bunch) -> int:
        if proposal.value < 0:
            raise TraitError(f"SimulatedCluster.{proposal.trait.name} must be >= 0")
        return proposal.value

    @validate("servers_per_node", "parallel_starts")
    def _at_least_one(self, proposal: Bunch) -> int:
        if proposal.value < 1:
            raise TraitError(f"SimulatedCluster.{proposal.trait.name} must be >= 1")
        return proposal.value

    @validate("scale_up_delay", "image_pull")
    def _seconds(self, proposal: Bunch) -> float:
        if not (math.isfinite(proposal.value) and proposal.value >= 0):
            raise TraitError(f"SimulatedCluster.{proposal.trait.name} must be seconds >= 0")
        return proposal.value

    _shared: ClassVar[SimulatedCluster | None] = None

    @classmethod
    def shared(cls, config: Any, log: Any = None) -> SimulatedCluster | None:
        """The hub process's cluster (None without a capacity model), made at first use,
        logging to ``log`` (the hub's)."""
        if cls._shared is None:
            cls._shared = cls(config=config, **({"log": log} if log is not None else {}))
        return cls._shared if cls._shared.nodes else None

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._nodes = [_Node(self.servers_per_node, self.parallel_starts)
                       for _ in range(self.nodes)]
        self._provisioning = 0
        self._queue: deque[asyncio.Future[Seat]] = deque()

    @property
    def node_count(self) -> int:
        return len(self._nodes)

    async def place(self, on_wait: Callable[[bool], None]) -> Seat:
        """A seat for one server; while none is free, ``on_wait(True)`` (the pod would be
        Pending, unschedulable or waiting for a scale-up), then ``on_wait(False)``."""
        waiter: asyncio.Future[Seat] = asyncio.get_running_loop().create_future()
        self._queue.append(waiter)
        self._dispatch()
        waited = not waiter.done()
        if waited:
            on_wait(True)
            self._scale_up()
        try:
            return await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                waiter.result().release()  # placed just as the spawn was given up
            elif waiter in self._queue:
                self._queue.remove(waiter)
            raise
        finally:
            if waited:
                on_wait(False)

    def _dispatch(self) -> None:
        """Seat waiting servers, first come first served, on the fullest node with room (as
        z2jh's user scheduler packs nodes)."""
        while self._queue:
            if self._queue[0].done():  # given up (cancelled) before its turn
                self._queue.popleft()
                continue
            open_nodes = [n for n in self._nodes if n.free > 0]
            if not open_nodes:
                return
            node = min(open_nodes, key=lambda n: n.free)
            node.free -= 1
            self._queue.popleft().set_result(Seat(self, node))

    def _scale_up(self) -> None:
        add = nodes_to_add(
            len(self._queue), provisioning=self._provisioning,
            servers_per_node=self.servers_per_node, nodes=len(self._nodes),
            max_nodes=max(self.max_nodes, self.nodes),
        )
        if not add:
            return
        self._provisioning += add
        self.log.info("Simulated cluster: adding %d node(s) in %gs", add, self.scale_up_delay)
        asyncio.get_running_loop().call_later(self.scale_up_delay, self._node_ready, add)

    def _node_ready(self, count: int) -> None:
        self._provisioning -= count
        self._nodes.extend(_Node(self.servers_per_node, self.parallel_starts)
                           for _ in range(count))
        self._dispatch()
        if self._queue:
            self._scale_up()  # more arrived than the scale-up was sized for
