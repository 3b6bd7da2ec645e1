"""The handler's listing of running servers: which users' servers the hub lists as ready, and
when it asks again. The hub is stood in for by a scripted page source (a real hub lists them
in tests/test_service_e2e.py); what is tested here is how often the hub is asked."""
from __future__ import annotations

import asyncio
from typing import Any

import pytest

from hub_resilience.hubclient import HubAPIError, UserPage
from hub_resilience.service.running import CONFIRMED_FOR, RunningServers, ready_servers


def user(name: str, **servers: bool) -> dict[str, Any]:
    return {"name": name, "servers": {s or "": {"ready": r} for s, r in servers.items()}}


def test_ready_servers_keeps_ready_ones_and_skips_unreadable_models() -> None:
    listed = [user("alice", **{"": True, "gpu": False}), user("bob", gpu=True),
              user("carol", **{"": False}), {"name": "dave"}, "garbage"]
    assert ready_servers(listed) == {"alice": frozenset({""}), "bob": frozenset({"gpu"})}


class ScriptedHub:
    """Answers iter_user_pages from a list of pages and get_user from ``users`` (the listed
    users unless set); counts listings and lookups and can fail them."""

    def __init__(self, pages: list[list[dict[str, Any]]]) -> None:
        self.pages = pages
        self.users: dict[str, dict[str, Any]] | None = None
        self.listings = 0
        self.lookups = 0
        self.fail = False
        self.gate: asyncio.Event | None = None

    async def get_user(self, name: str) -> dict[str, Any] | None:
        self.lookups += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.fail:
            raise HubAPIError(f"GET /users/{name}: 503", method="GET", path=f"/users/{name}")
        users = self.users
        if users is None:
            users = {u["name"]: u for page in self.pages for u in page}
        return users.get(name)

    async def iter_user_pages(self, *, page_size: int, state: str):
        assert state == "ready"
        self.listings += 1
        if self.gate is not None:
            await self.gate.wait()
        for i, items in enumerate(self.pages):
            if self.fail:
                raise HubAPIError("GET /users: 500", method="GET", path="/users")
            more = i + 1 < len(self.pages)
            yield UserPage(items=items, offset=i, limit=page_size,
                           next_offset=i + 1 if more else None, total=None, fetched_at=0.0)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_one_listing_answers_every_user_until_it_is_older_than_max_age() -> None:
    hub = ScriptedHub([[user("alice", **{"": True})], [user("bob", gpu=True)]])
    clock = Clock()
    running = RunningServers(hub, max_age=30, clock=clock)  # type: ignore[arg-type]
    for name in ["alice", "bob", "nobody"] * 100:
        await running.servers_of(name)
    assert hub.listings == 1
    assert await running.servers_of("bob") == {"gpu"}
    clock.now += 29.9
    assert await running.servers_of("nobody") == frozenset()
    assert hub.listings == 1
    clock.now += 0.2
    await running.servers_of("nobody")
    assert hub.listings == 2


async def test_concurrent_requests_share_one_listing() -> None:
    hub = ScriptedHub([[user("alice", **{"": True})]])
    hub.gate = asyncio.Event()
    running = RunningServers(hub, max_age=30, clock=Clock())  # type: ignore[arg-type]
    waiting = [asyncio.ensure_future(running.servers_of("alice")) for _ in range(25)]
    await asyncio.sleep(0.01)  # the listing has started: later requests wait for it too
    waiting += [asyncio.ensure_future(running.servers_of("alice")) for _ in range(25)]
    await asyncio.sleep(0.01)
    hub.gate.set()
    assert set(await asyncio.gather(*waiting)) == {frozenset({""})}
    assert hub.listings == 1


async def test_a_failed_listing_keeps_the_last_one_and_is_not_retried_per_request(
    caplog: pytest.LogCaptureFixture,
) -> None:
    hub = ScriptedHub([[user("alice", **{"": True})]])
    clock = Clock()
    running = RunningServers(hub, max_age=30, clock=clock)  # type: ignore[arg-type]
    await running.servers_of("alice")
    hub.fail = True
    clock.now += 31
    for _ in range(20):
        assert await running.servers_of("alice") == {""}
    assert hub.listings == 2
    assert "Could not list the running servers" in caplog.text
    assert "keeping the one from 31 s ago" in caplog.text
    # The check with the hub failed too: the listing's answer stands, asked once.
    assert hub.lookups == 1
    assert "Could not check alice's servers with the hub" in caplog.text


async def test_a_server_stopped_since_the_listing_is_checked_with_the_hub_and_forgotten() -> None:
    hub = ScriptedHub([[user("alice", **{"": True}), user("bob", **{"": True})]])
    clock = Clock()
    running = RunningServers(hub, max_age=30, clock=clock)  # type: ignore[arg-type]
    assert await running.servers_of("alice") == {""}  # the listing was made for this request
    assert hub.lookups == 0
    hub.users = {"alice": user("alice", **{"": False}), "bob": user("bob", **{"": True})}
    clock.now += 0.1  # alice stopped her server just after the listing; bob's route is lost
    assert await running.servers_of("alice") == frozenset()
    assert await running.servers_of("bob") == {""}
    assert hub.lookups == 2
    for _ in range(50):  # alice is answered from the listing now, bob from the hub's answer
        assert await running.servers_of("alice") == frozenset()
        assert await running.servers_of("bob") == {""}
    assert hub.lookups == 2
    clock.now += CONFIRMED_FOR
    assert await running.servers_of("bob") == {""}
    assert hub.lookups == 3
    hub.users = {}  # bob was deleted
    clock.now += CONFIRMED_FOR
    assert await running.servers_of("bob") == frozenset()
    assert (hub.listings, hub.lookups) == (1, 4)


async def test_concurrent_requests_for_one_listed_user_share_one_lookup() -> None:
    hub = ScriptedHub([[user("alice", **{"": True})]])
    clock = Clock()
    running = RunningServers(hub, max_age=30, clock=clock)  # type: ignore[arg-type]
    await running.servers_of("alice")
    clock.now += 1
    hub.gate = asyncio.Event()
    waiting = [asyncio.ensure_future(running.servers_of("alice")) for _ in range(25)]
    await asyncio.sleep(0.01)
    hub.gate.set()
    assert set(await asyncio.gather(*waiting)) == {frozenset({""})}
    assert hub.lookups == 1


async def test_a_server_the_culler_stopped_is_forgotten_at_once() -> None:
    hub = ScriptedHub([[user("alice", **{"": True, "gpu": True})]])
    running = RunningServers(hub, max_age=30, clock=Clock())  # type: ignore[arg-type]
    await running.servers_of("alice")
    running.forget("alice", "")
    assert await running.servers_of("alice") == {"gpu"}
    running.forget("alice", "gpu")
    running.forget("nobody", "")
    assert await running.servers_of("alice") == frozenset()
    assert hub.listings == 1


def test_max_age_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_age"):
        RunningServers(ScriptedHub([]), max_age=0)  # type: ignore[arg-type]
