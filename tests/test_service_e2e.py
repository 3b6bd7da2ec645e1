"""The resilience service end to end: a real JupyterHub and configurable-http-proxy, configured
only through the drop-in ``jupyterhub_config.d/hub_resilience.py`` and its environment
variables, exactly as zero-to-jupyterhub loads it (exec'd with the hub's ``c`` in scope).

User servers are simulated by :class:`hub_resilience.tools.simulated_spawner.SimulatedSpawner` (one
loopback responder stands in for the pods, since Kubernetes does not run here); everything
else is real: the hub starts the service as a managed service, the route is installed with
``Proxy.extra_routes``, requests go through the proxy's public URL.
"""
from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from tornado.httpclient import HTTPClientError, HTTPRequest, HTTPResponse
from tornado.websocket import websocket_connect

from hub_resilience.hubclient import HubClient
from hub_resilience.tools.simulate import NAVIGATION_HEADERS
from tests.support.hub import (
    RunningHub,
    create_users,
    fetch,
    gather_limited,
    metric_samples,
    metric_sum,
    route_checks,
    running_hub,
    unused_port,
    user_token,
)

pytestmark = pytest.mark.hub

DROPIN = Path(__file__).resolve().parents[1] / "jupyterhub_config.d" / "hub_resilience.py"

#: Hub config before the drop-in (as z2jh's own config and hub.config run before
#: jupyterhub_config.d), the drop-in, then the test's overrides.
HUB_CONFIG = """
c.JupyterHub.allow_named_servers = True
c.HubResilience.spawner_class = None  # keep the base config's SimulatedSpawner
c.HubResilience.service_port = {port}
{before}
exec(compile(open({dropin!r}).read(), {dropin!r}, "exec"))
{after}
"""

HUB_METRICS_HANDLER = "jupyterhub.handlers.metrics.MetricsHandler"
NAVIGATION = 302  # what the handler answers a browser navigation: a redirect to the hub


def hub_config(port: int, *, before: str = "", after: str = "") -> str:
    return HUB_CONFIG.format(port=port, dropin=str(DROPIN), before=before, after=after)


@pytest.fixture
def service_port() -> int:
    """The service's port (a free one; z2jh: hub.config.HubResilience.service_port)."""
    return unused_port()


# -- helpers --------------------------------------------------------------------------------


async def eventually(
    check: Callable[[], Awaitable[Any]], *, timeout: float = 90.0, what: str = ""
) -> Any:
    """Poll the async ``check`` until it returns something truthy (a safety net against
    hangs, generous on purpose: not a timing assertion)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = await check()
        except (OSError, HTTPClientError, ValueError):
            result = None
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"not true after {timeout}s: {what}")
        await asyncio.sleep(0.2)


async def service_health(port: int) -> dict[str, Any] | None:
    response = await fetch(f"http://127.0.0.1:{port}/health", request_timeout=5)
    return json.loads(response.body) if response.code == 200 else None


async def hub_request_count(hub: RunningHub) -> int:
    """Requests the hub has handled (its own /hub/metrics), the metrics scrapes excepted."""
    samples = await metric_samples(hub.api_url.removesuffix("/api") + "/metrics", hub.token)
    return int(sum(
        s.value for s in samples
        if s.name == "jupyterhub_request_duration_seconds_count"
        and s.labels.get("handler") != HUB_METRICS_HANDLER
    ))


async def stopped_responses(port: int) -> dict[tuple[str, str], float]:
    samples = await metric_samples(f"http://127.0.0.1:{port}/metrics")
    return {
        (s.labels["kind"], s.labels["status"]): s.value
        for s in samples if s.name == "hub_resilience_stopped_server_responses_total"
    }


async def proxy_routes(hub: RunningHub) -> dict[str, Any]:
    response = await fetch(
        f"{hub.proxy_api_url}/api/routes",
        headers={"Authorization": f"token {hub.proxy_token}"},
    )
    assert response.code == 200
    return json.loads(response.body)


async def delete_proxy_route(hub: RunningHub, routespec: str) -> None:
    response = await fetch(
        f"{hub.proxy_api_url}/api/routes{routespec}",
        method="DELETE",
        headers={"Authorization": f"token {hub.proxy_token}"},
    )
    assert response.code == 204


async def wait_for_service(hub: RunningHub, port: int, *, other_than: int | None = None) -> dict:
    """The service answers (a process other than ``other_than``), its route is in the proxy,
    and its culler has finished a cycle (so no culler request falls inside a measurement)."""

    async def ready() -> dict | None:
        health = await service_health(port)
        if not health or health["pid"] == other_than or health["orphaned"]:
            return None
        if not health["culler"]["cycles"]:
            return None
        route = (await proxy_routes(hub)).get("/user")
        return health if route and route["target"] == f"http://127.0.0.1:{port}" else None

    return await eventually(ready, what="the service, its route and a first culler cycle")


async def start(client: HubClient, name: str, server: str = "") -> None:
    await client.start_server_and_wait(name, server, poll_interval=0.2, timeout=120)


async def stop(client: HubClient, name: str, server: str = "") -> None:
    await client.stop_server(name, server)
    assert await client.wait_for_server_stopped(name, server, timeout=60)


async def websocket_status(url: str) -> int | None:
    """The HTTP status a websocket upgrade is answered with (101 would be a connection)."""
    try:
        connection = await websocket_connect(HTTPRequest(url, request_timeout=30))
    except HTTPClientError as e:
        return e.code
    connection.close()
    return 101


def process_gone(pid: int) -> bool:
    """No such process any more, or only its zombie left."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


async def storm(hub: RunningHub, marker: str, *, rounds: int) -> dict[str, list[int]]:
    """Requests for stopped servers through the proxy, as stale browser tabs send them:
    API polls (GET and POST), JSON and XHR requests, websocket upgrades and page loads.
    ``marker`` is in every URL, so the hub's log can be searched for them."""
    url = hub.url
    ws_url = url.replace("http://", "ws://")
    plan: list[tuple[str, Callable[[], Awaitable[int | None]]]] = []
    for i in range(rounds):
        plan += [
            ("api", lambda i=i: _code(fetch(f"{url}/user/bob/api/kernels?{marker}={i}"))),
            ("api", lambda i=i: _code(fetch(
                f"{url}/user/frank/gpu/api/sessions?{marker}={i}", method="POST", body="{}"))),
            ("json", lambda i=i: _code(fetch(
                f"{url}/user/dave/tree?{marker}={i}", headers={"Accept": "application/json"}))),
            ("xhr", lambda i=i: _code(fetch(
                f"{url}/user/bob/lab/workspaces?{marker}={i}",
                headers={"X-Requested-With": "XMLHttpRequest"}))),
            ("page", lambda i=i: _code(fetch(f"{url}/user/dave/lab?{marker}={i}",
                                             headers=NAVIGATION_HEADERS))),
        ]
        if i % 5 == 0:
            plan.append(("websocket", lambda i=i: websocket_status(
                f"{ws_url}/user/bob/api/kernels/k{i}/channels?{marker}={i}")))
    codes = await gather_limited((call() for _, call in plan), 16)
    by_kind: dict[str, list[int]] = {}
    for (kind, _), code in zip(plan, codes, strict=True):
        by_kind.setdefault(kind, []).append(code)
    return by_kind


async def _code(response: Awaitable[HTTPResponse]) -> int:
    return (await response).code


async def handler_listings(port: int) -> int:
    """Requests the handler sent the hub to list its running servers (the service's metric)."""
    return int(await metric_sum(
        f"http://127.0.0.1:{port}/metrics", "hub_resilience_hub_api_requests_total",
        component="stopped_handler",
    ))


async def assert_storm_answered_by_service(
    hub: RunningHub, port: int, *, rounds: int
) -> dict[str, list[int]]:
    """Run a storm; every request answered 424 by the handler, none reaching the hub (the
    hub serves only the handler's listing of running servers, at most one per 30 s)."""
    marker = f"storm{secrets.token_hex(4)}"
    hub_before = await hub_request_count(hub)
    listings_before = await handler_listings(port)
    counted_before = await stopped_responses(port)
    by_kind = await storm(hub, marker, rounds=rounds)
    hub_after = await hub_request_count(hub)
    listings = await handler_listings(port) - listings_before
    counted_after = await stopped_responses(port)

    # Navigations are sent to the hub (302); following them is the browser's next request,
    # not part of the storm the handler takes off the hub.
    expected = {kind: NAVIGATION if kind == "page" else 424 for kind in by_kind}
    assert {kind: set(codes) for kind, codes in by_kind.items()} == {
        kind: {status} for kind, status in expected.items()
    }
    assert listings <= 1, listings
    assert hub_after == hub_before + listings, "requests for stopped servers reached the hub"
    assert marker not in hub.log_text()
    for kind, codes in by_kind.items():
        label = (kind, str(expected[kind]))
        delta = counted_after.get(label, 0) - counted_before.get(label, 0)
        assert delta == len(codes), (kind, delta, len(codes))
    return by_kind


async def assert_navigations_end_where_the_hub_sends_them(
    hub: RunningHub, client: HubClient
) -> None:
    """bob (named servers on, his default server stopped) follows an nbgitpuller link, a
    code-server link and a JupyterLab link: each ends at the hub's own "not running" page for
    his default server (the hub looked his servers up), and no named server is created."""
    browser = {**NAVIGATION_HEADERS, "Authorization": f"token {await user_token(client, 'bob')}"}
    before = sorted((await client.get_json("/users/bob", {"include_stopped_servers": "1"}))
                    ["servers"])
    links = (
        "/user/bob/git-pull?repo=https%3A%2F%2Fgithub.com%2Fx%2Fy&urlpath=lab%2Ftree%2Fy",
        "/user/bob/code-server/",
        "/user/bob/lab",
    )
    for link in links:
        first = await fetch(hub.url + link, headers=browser)
        assert (first.code, first.headers["Location"]) == (NAVIGATION, "/hub" + link), link
        landed = await fetch(hub.url + link, headers=browser, follow_redirects=True,
                             max_redirects=5)
        assert landed.code == 424, (link, landed.code)  # the hub's not_running page
        assert landed.headers["Content-Type"].startswith("text/html"), link
        assert landed.effective_url == hub.url + "/hub" + link, link
        page = landed.body.decode()
        assert "/hub/spawn/bob" in page, link
        assert "/hub/spawn/bob/git-pull" not in page and "/hub/spawn/bob/code-server" not in page
    after = sorted((await client.get_json("/users/bob", {"include_stopped_servers": "1"}))
                   ["servers"])
    assert after == before, "following a link created a named server"
    assert "Traceback" not in hub.log_text()


async def assert_running_servers_reached(hub: RunningHub) -> None:
    for path in ("/user/alice/lab", "/user/carol/lab/tree", "/user/carol/lab/api/status"):
        response = await fetch(hub.url + path, headers=NAVIGATION_HEADERS)
        assert response.code == 200, (path, response.code)
        assert f"simulated single-user server: {path}" in response.body.decode() or (
            path.endswith("/api/status") and b'"simulated": true' in response.body
        )


async def set_up_users(hub: RunningHub, client: HubClient) -> None:
    """alice's default server and carol's named server "lab" run; bob's default server and
    frank's named server "gpu" were started and stopped; dave never started one. (A named
    server is only caught by the handler when its user's default server is not running:
    otherwise the default server's route is the longest prefix, as without the handler.)"""
    await create_users(client, ["alice", "bob", "carol", "dave", "frank"])
    await asyncio.gather(
        start(client, "alice"), start(client, "bob"), start(client, "carol", "lab"),
        start(client, "frank", "gpu"),
    )
    await asyncio.gather(stop(client, "bob"), stop(client, "frank", "gpu"))


# -- tests ----------------------------------------------------------------------------------


async def test_storm_for_stopped_servers_never_reaches_the_hub(service_port: int) -> None:
    # A short last_activity_interval makes the hub's periodic route check frequent.
    config = hub_config(service_port, after="c.JupyterHub.last_activity_interval = 1")
    async with running_hub(config) as hub, hub.client() as client:
        await set_up_users(hub, client)
        await wait_for_service(hub, service_port)

        by_kind = await assert_storm_answered_by_service(hub, service_port, rounds=100)
        assert sum(map(len, by_kind.values())) == 520

        # What the answers say: JSON with the spawn URL (the hub's home page where the path
        # may name a server: the handler never guesses one), navigations sent to the hub.
        api = await fetch(f"{hub.url}/user/bob/api/kernels")
        assert json.loads(api.body)["spawn_url"] == "/hub/spawn/bob"
        named = await fetch(f"{hub.url}/user/frank/gpu/api/kernels")
        assert json.loads(named.body)["spawn_url"] == "/hub/home"
        assert api.headers["Cache-Control"] == "no-store"
        page = await fetch(f"{hub.url}/user/dave/lab/tree/x.ipynb?r=1", headers=NAVIGATION_HEADERS)
        assert page.code == NAVIGATION
        assert page.headers["Location"] == "/hub/user/dave/lab/tree/x.ipynb?r=1"
        await create_users(client, ["eve<b>"])
        evil = await fetch(f"{hub.url}/user/eve%3Cb%3E/lab", headers=NAVIGATION_HEADERS)
        assert (evil.code, evil.headers["Location"]) == (NAVIGATION, "/hub/user/eve%3Cb%3E/lab")

        await assert_navigations_end_where_the_hub_sends_them(hub, client)
        await assert_running_servers_reached(hub)

        # The route survives the hub's periodic check, and is put back if it goes missing.
        routes = await proxy_routes(hub)
        assert routes["/user"]["extra"] is True  # CHP keeps the route data at top level
        assert {"/user/alice", "/user/carol/lab"} <= set(routes)
        assert not {"/user/bob", "/user/frank/gpu"} & set(routes)
        checks = await route_checks(hub)
        await eventually(lambda: _more(route_checks(hub), checks + 2), what="two route checks")
        assert (await proxy_routes(hub))["/user"]["target"] == f"http://127.0.0.1:{service_port}"
        await delete_proxy_route(hub, "/user")
        await eventually(
            lambda: _has_route(hub, "/user"), what="the hub re-adding the /user route"
        )
        await assert_storm_answered_by_service(hub, service_port, rounds=10)


async def _more(count: Awaitable[int], than: int) -> bool:
    return await count >= than


async def _has_route(hub: RunningHub, routespec: str) -> bool:
    return routespec in await proxy_routes(hub)


async def test_service_survives_hub_restarts(service_port: int) -> None:
    async with running_hub(hub_config(service_port)) as hub, hub.client() as client:
        await set_up_users(hub, client)
        first = await wait_for_service(hub, service_port)

        # A clean restart: the hub stops its service, and the new hub starts a new one.
        await hub.restart()
        second = await wait_for_service(hub, service_port, other_than=first["pid"])
        assert process_gone(first["pid"])
        await assert_storm_answered_by_service(hub, service_port, rounds=10)
        await assert_running_servers_reached(hub)

        # The hub dies without cleaning up: its service carries on answering meanwhile...
        hub_pid = hub.hub_pid
        assert hub_pid is not None
        os.kill(hub_pid, signal.SIGKILL)
        await eventually(lambda: _true(process_gone(hub_pid)), what="the hub gone")
        orphan = await eventually(
            lambda: _orphaned(service_port), what="the service noticing the hub is gone"
        )
        assert orphan["pid"] == second["pid"]
        response = await fetch(f"{hub.url}/user/bob/api/kernels")
        assert response.code == 424
        assert not process_gone(second["pid"])

        # ...and hands over to the new hub's service, which starts on the same port.
        await hub.restart()
        third = await wait_for_service(hub, service_port, other_than=second["pid"])
        await eventually(lambda: _true(process_gone(second["pid"])), what="the orphan exiting")
        assert third["orphaned"] is False
        await assert_storm_answered_by_service(hub, service_port, rounds=10)
        await assert_running_servers_reached(hub)


async def _true(value: bool) -> bool:
    return value


async def _orphaned(port: int) -> dict | None:
    health = await service_health(port)
    return health if health and health["orphaned"] else None


async def test_culler_in_the_service_works_with_its_least_scopes(
    service_port: int,
) -> None:
    # max_age culls servers however active they are: no need to wait for idleness. The
    # service's token has only the role configure() gives it (no admin).
    culler = "c.Culler.max_age = 3\nc.Culler.cull_every = 1\nc.Culler.cull_users = True"
    config = hub_config(service_port, before=culler)
    async with running_hub(config) as hub, hub.client() as client:
        await create_users(client, ["old1", "old2"])
        await start(client, "old1")
        await start(client, "old1", "lab")

        async def all_gone() -> bool:
            return await client.get_user("old1") is None and await client.get_user("old2") is None

        await eventually(all_gone, what="the culler stopping old1's servers, deleting both")
        samples = await metric_samples(f"http://127.0.0.1:{service_port}/metrics")
        values = {(s.name, tuple(sorted(s.labels.items()))): s.value for s in samples}
        assert values[("hub_resilience_culler_servers_culled_total", (("reason", "max_age"),))] == 2
        assert values[("hub_resilience_culler_users_culled_total", (("reason", "max_age"),))] == 2
        forbidden = [
            k for k, v in values.items()
            if k[0] == "hub_resilience_hub_api_requests_total" and v
            and dict(k[1]).get("status") == "403"
        ]
        assert forbidden == []
        # The service holds configure()'s role and nothing else (no admin).
        model = await client.get_json("/services/hub-resilience")
        assert model["roles"] == ["hub-resilience"]


# -- the command line -----------------------------------------------------------------------


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("JUPYTERHUB_")}
    environment.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "hub_resilience", "service", *args],
        capture_output=True, text=True, timeout=60, env=environment,
    )


def test_service_help() -> None:
    result = run_cli("--help-all")
    assert result.returncode == 0
    for flag in ("--port", "--base-url", "--stopped-status", "--no-cull", "--watch-parent",
                 "--ResilienceService.orphan_timeout", "--Culler.timeout"):
        assert flag in result.stdout, flag


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--Culler.timout=60"], {}, "unknown setting(s) Culler.timout; valid: api_page_size"),
        (["--Culler.timeout=soon"], {}, "'timeout' trait of a Culler instance expected a float"),
        (["--Culler.cull_users=maybe"], {}, "'cull_users' trait of a Culler instance"),
        (["--port=0"], {}, "ResilienceService.port must be a port number"),
        ([], {}, "JUPYTERHUB_API_URL"),  # the culler needs the hub's URL and a token
        (["--Culler.concurrency=0"], {
            "JUPYTERHUB_API_URL": "http://127.0.0.1:1/hub/api", "JUPYTERHUB_API_TOKEN": "x",
        }, "Culler.concurrency must be >= 1"),
    ],
)
def test_service_refuses_bad_input_by_name(
    args: list[str], env: dict[str, str], message: str
) -> None:
    result = run_cli(*args, env=env)
    assert result.returncode == 2, result
    assert message in result.stderr
