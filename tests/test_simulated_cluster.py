"""The capacity model behind the admission benchmark: placement, scale-up, image pulls and
parallel starts, with delays of milliseconds (no hub: the model is in-process asyncio)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from traitlets import TraitError
from traitlets.config import Config

from hub_resilience.tools.simulated_cluster import SimulatedCluster, nodes_to_add


def test_nodes_to_add_covers_what_provisioning_nodes_will_not_hold() -> None:
    assert nodes_to_add(0, provisioning=0, servers_per_node=16, nodes=4, max_nodes=10) == 0
    assert nodes_to_add(1, provisioning=0, servers_per_node=16, nodes=4, max_nodes=10) == 1
    assert nodes_to_add(33, provisioning=0, servers_per_node=16, nodes=4, max_nodes=10) == 3
    assert nodes_to_add(33, provisioning=2, servers_per_node=16, nodes=4, max_nodes=10) == 1
    assert nodes_to_add(32, provisioning=2, servers_per_node=16, nodes=4, max_nodes=10) == 0
    # Never beyond max_nodes, counting the nodes on their way.
    assert nodes_to_add(500, provisioning=2, servers_per_node=16, nodes=4, max_nodes=10) == 4
    assert nodes_to_add(500, provisioning=0, servers_per_node=16, nodes=10, max_nodes=10) == 0
    with pytest.raises(ValueError):
        nodes_to_add(1, provisioning=0, servers_per_node=0, nodes=1, max_nodes=1)


@pytest.mark.parametrize(
    ("name", "value"),
    [("nodes", -1), ("max_nodes", -1), ("servers_per_node", 0), ("parallel_starts", 0),
     ("scale_up_delay", -1.0), ("image_pull", float("nan"))],
)
def test_bad_settings_are_refused_by_name(name: str, value: Any) -> None:
    with pytest.raises(TraitError, match=name):
        SimulatedCluster(**{name: value})


def cluster(**settings: Any) -> SimulatedCluster:
    c = Config()
    for name, value in settings.items():
        setattr(c.SimulatedCluster, name, value)
    return SimulatedCluster(config=c)


async def test_servers_wait_for_a_scale_up_sized_by_the_waiting_ones() -> None:
    model = cluster(nodes=1, max_nodes=4, servers_per_node=2, scale_up_delay=0.2, image_pull=0)
    waits: dict[int, list[bool]] = {i: [] for i in range(5)}
    started = time.monotonic()
    placed_at: dict[int, float] = {}

    async def one(i: int) -> None:
        await model.place(waits[i].append)
        placed_at[i] = time.monotonic() - started

    await asyncio.gather(*(one(i) for i in range(5)))
    assert waits[0] == waits[1] == []  # room on the first node: never waited
    assert all(waits[i] == [True, False] for i in (2, 3, 4))
    assert max(placed_at[0], placed_at[1]) < 0.1
    assert all(0.2 <= placed_at[i] < 0.5 for i in (2, 3, 4))
    assert model.node_count == 3  # two nodes for three waiting servers, added at once


async def test_no_scale_up_beyond_max_nodes_until_a_seat_is_given_back() -> None:
    model = cluster(nodes=1, max_nodes=1, servers_per_node=1, scale_up_delay=0.01)
    first = await model.place(lambda waiting: None)
    second = asyncio.ensure_future(model.place(lambda waiting: None))
    await asyncio.sleep(0.1)
    assert not second.done() and model.node_count == 1
    first.release()
    first.release()  # idempotent: the node does not gain a second free seat
    seat = await asyncio.wait_for(second, 1)
    third = asyncio.ensure_future(model.place(lambda waiting: None))
    await asyncio.sleep(0.05)
    assert not third.done()
    third.cancel()  # a spawn given up while it waits leaves the queue
    with pytest.raises(asyncio.CancelledError):
        await third
    seat.release()
    assert (await asyncio.wait_for(model.place(lambda waiting: None), 1)) is not None


async def test_start_time_grows_when_a_node_starts_too_many_at_once() -> None:
    model = cluster(nodes=1, servers_per_node=8, parallel_starts=2, image_pull=0.1)
    seats = [await model.place(lambda waiting: None) for _ in range(6)]
    started = time.monotonic()
    ended: list[float] = []

    async def start(seat: Any) -> None:
        await seat.start(0.1)
        ended.append(time.monotonic() - started)

    await asyncio.gather(*(start(s) for s in seats))
    # One pull for the node (0.1 s), then three rounds of two parallel starts.
    assert sorted(ended)[0] == pytest.approx(0.2, abs=0.08)
    assert sorted(ended)[-1] == pytest.approx(0.4, abs=0.1)
