"""A storm of requests from browser tabs left open on stopped servers: the hub's default route
against the stopped-server handler.

When servers stop (culled, crashed, deleted pods), the tabs open on them keep polling
``/user/<name>/api/kernels`` and friends. Without the handler, the proxy sends each of those
to the hub (its default route), which redirects to ``/hub/user/...`` and then answers 424
after looking the user up; with :func:`hub_resilience.configure`'s handler, the proxy's
``/user/`` route sends them to the resilience service, which answers the same 424 without the
hub. Two hubs, one after the other, each with 100 users whose servers are stopped; the same
number of tab requests (``requests``, ``concurrency`` at a time, following redirects as a
browser does, with a token as a logged-in browser has a cookie) through the proxy. Measured:
requests per second served, and the hub's CPU seconds for the whole storm. Apart from the
storm, ``navigations`` browser page loads of those servers (``/user/<name>/lab``) show what a
navigation costs the hub: the handler sends each to the hub (one request, the hub's own
"not running" page), where the stock hub takes two (its redirect, then that page).

The load generator, the proxy and (with the handler) the service share this machine's cores
with the hub, so the handler's requests per second are bounded by them, not by the hub.
"""
from __future__ import annotations

import asyncio
import itertools

from tornado.httpclient import AsyncHTTPClient, HTTPRequest

from benchmarks.common import (
    Row,
    admin_client,
    bench_hub,
    create_users,
    gather_limited,
    log,
    measure,
)
from hub_resilience.tools.localhub import LocalHub, unused_port
from hub_resilience.tools.simulate import NAVIGATION_HEADERS, TAB_PATHS, fetch_status


async def storm(hub: LocalHub, names: list[str], requests: int, concurrency: int) -> dict:
    """``requests`` tab requests, ``concurrency`` at a time; the final statuses counted."""
    http = AsyncHTTPClient(force_instance=True, max_clients=concurrency)
    targets = itertools.cycle(
        f"{hub.url}/user/{name}/{path}" for path in TAB_PATHS for name in names
    )
    remaining = iter(range(requests))
    statuses: dict[str, int] = {}

    async def tab() -> None:
        for _ in remaining:
            request = HTTPRequest(
                next(targets),
                headers={"Authorization": f"token {hub.token}", "Accept": "application/json"},
                follow_redirects=True, max_redirects=5, request_timeout=120,
            )
            status = await fetch_status(http, request)
            statuses[status] = statuses.get(status, 0) + 1

    try:
        await asyncio.gather(*(tab() for _ in range(concurrency)))
    finally:
        http.close()
    return statuses




async def navigate(hub: LocalHub, names: list[str], count: int, concurrency: int) -> dict:
    """``count`` browser navigations to the users' stopped servers; final statuses counted."""
    http = AsyncHTTPClient(force_instance=True, max_clients=concurrency)
    targets = itertools.cycle(f"{hub.url}/user/{name}/lab" for name in names)
    requests = [
        HTTPRequest(next(targets),
                    headers={**NAVIGATION_HEADERS, "Authorization": f"token {hub.token}"},
                    follow_redirects=True, max_redirects=5, request_timeout=120)
        for _ in range(count)
    ]
    statuses: dict[str, int] = {}
    try:
        for status in await gather_limited([fetch_status(http, r) for r in requests],
                                           concurrency):
            statuses[status] = statuses.get(status, 0) + 1
    finally:
        http.close()
    return statuses


async def run(
    users: int = 100, requests: int = 5000, concurrency: int = 50, navigations: int = 100
) -> list[Row]:
    names = [f"t{i:04d}" for i in range(users)]
    handler_port = unused_port()
    configs = {
        "hub": "",
        "handler": f"""
from hub_resilience import configure
configure(c, spawner_class=None, service_port={handler_port}, cull=False)
""",
    }
    results, paged = {}, {}
    for label, config in configs.items():
        async with bench_hub(config) as hub:
            async with admin_client(hub) as client:
                await create_users(client, names)
            if label == "handler":
                await hub.wait_for_service(f"http://127.0.0.1:{handler_port}/health")
            log(f"stopped-server storm: {requests} tab requests, {label}")
            statuses, measured = await measure(
                hub, lambda hub=hub: storm(hub, names, requests, concurrency)
            )
            if set(statuses) != {"424"}:
                raise RuntimeError(f"stopped-server storm ({label}): statuses {statuses}")
            results[label] = measured
            pages, measured = await measure(
                hub, lambda hub=hub: navigate(hub, names, navigations, concurrency)
            )
            if set(pages) != {"424"}:  # the hub's own "not running" page, in both
                raise RuntimeError(f"navigations ({label}): statuses {pages}")
            paged[label] = measured
    title = f"stopped-server storm: {requests:,} tab requests, {concurrency} at a time"
    hub, ours = results["hub"], results["handler"]
    return [
        Row(title, "requests per second served", requests / hub.seconds,
            requests / ours.seconds, "higher"),
        Row(title, "hub CPU seconds", hub.hub_cpu, ours.hub_cpu, "lower", 2),
        Row(title, "requests reaching the hub", hub.load.requests, ours.load.requests,
            "lower", 0),
        Row(f"browser navigations to stopped servers: {navigations:,}",
            "requests reaching the hub", paged["hub"].load.requests,
            paged["handler"].load.requests, "lower", 0),
    ]

