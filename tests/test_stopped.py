"""The stopped-server handler: the pure decision, then the handler served by the real service
process code (tornado on a loopback port, the culler off: nothing here talks to a hub)."""
from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import pytest_asyncio
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest, HTTPResponse
from tornado.websocket import websocket_connect
from traitlets.config import Config

from hub_resilience.service.app import ResilienceService
from hub_resilience.service.metrics import REGISTRY
from hub_resilience.service.metrics import StoppedKind as Kind
from hub_resilience.service.stopped import (
    ServerPath,
    StoppedSettings,
    classify,
    decide,
    parse_server_path,
    spawn_url,
)
from hub_resilience.tools.simulate import NAVIGATION_HEADERS
from tests.support.hub import unused_port

NAMED = StoppedSettings(named_servers=True)

# -- which server a path is for -------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "settings", "expected"),
    [
        ("/user/alice/lab", StoppedSettings(), ("alice", ["lab"], True)),
        ("/user/alice", StoppedSettings(), ("alice", [], True)),
        ("/user/alice/", StoppedSettings(), ("alice", [""], True)),
        ("/user/alice/gpu/lab", StoppedSettings(), ("alice", ["gpu", "lab"], True)),
        # With named servers on, only the hub knows whether "gpu" or "git-pull" is a server.
        ("/user/alice/gpu/lab", NAMED, ("alice", ["gpu", "lab"], False)),
        ("/user/alice/git-pull", NAMED, ("alice", ["git-pull"], False)),
        ("/user/alice/lab/tree", NAMED, ("alice", ["lab", "tree"], True)),
        ("/user/alice/api/kernels", NAMED, ("alice", ["api", "kernels"], True)),
        ("/user/alice/", NAMED, ("alice", [""], True)),
        ("/user/alice", NAMED, ("alice", [], True)),
        ("/user/a%40b.c%2Fd/x%20y/api", NAMED, ("a@b.c/d", ["x%20y", "api"], False)),
        ("/jh/user/bob/tree", StoppedSettings(base_url="/jh/"), ("bob", ["tree"], True)),
    ],
)
def test_parse_server_path(
    path: str, settings: StoppedSettings, expected: tuple[str, list[str], bool]
) -> None:
    found = parse_server_path(path, settings)
    assert found is not None
    assert (found.user, found.rest, found.default_server) == expected


@pytest.mark.parametrize(
    ("path", "settings"),
    [
        ("/user/", StoppedSettings()),
        ("/user", StoppedSettings()),
        ("/hub/home", StoppedSettings()),
        ("/user/bob/", StoppedSettings(base_url="/jh/")),  # outside the base URL
    ],
)
def test_paths_without_a_user(path: str, settings: StoppedSettings) -> None:
    assert parse_server_path(path, settings) is None


def test_settings_refuse_bad_values() -> None:
    with pytest.raises(ValueError, match="base_url"):
        StoppedSettings(base_url="jh")
    with pytest.raises(ValueError, match="404, 424 or 503"):
        StoppedSettings(status=500)


# -- what kind of request it is -------------------------------------------------------------

ALICE = ServerPath("alice", ["lab"])
ALICE_API = ServerPath("alice", ["api", "kernels"])


@pytest.mark.parametrize(
    ("method", "headers", "server_path", "kind"),
    [
        ("GET", {"Upgrade": "websocket", "Connection": "Upgrade"}, ALICE_API, Kind.WEBSOCKET),
        ("GET", {"Upgrade": "WebSocket"}, ALICE, Kind.WEBSOCKET),
        ("POST", {}, ALICE, Kind.API),
        ("PUT", NAVIGATION_HEADERS, ALICE, Kind.API),  # every non-GET is API, as for the hub
        ("DELETE", {}, ALICE_API, Kind.API),
        ("GET", {"X-Requested-With": "XMLHttpRequest"}, ALICE, Kind.XHR),
        ("GET", NAVIGATION_HEADERS, ALICE_API, Kind.API),  # an "api" segment, whatever the Accept
        ("GET", {"Accept": "application/json"}, ALICE, Kind.JSON),
        ("GET", {"Accept": "text/html;q=0.5, application/json"}, ALICE, Kind.JSON),
        ("GET", {"Accept": "application/json;q=0.2, text/html"}, ALICE, Kind.PAGE),
        ("GET", {"Accept": "text/html, application/json"}, ALICE, Kind.PAGE),
        ("GET", NAVIGATION_HEADERS, ALICE, Kind.PAGE),
        ("HEAD", NAVIGATION_HEADERS, ALICE, Kind.PAGE),
        ("GET", {}, ALICE, Kind.PAGE),  # curl: no Accept preference, no fetch metadata
        ("GET", {"Accept": "*/*"}, ALICE, Kind.PAGE),
        ("GET", {"Sec-Fetch-Dest": "script", "Sec-Fetch-Mode": "no-cors"}, ALICE, Kind.RESOURCE),
        ("GET", {"Sec-Fetch-Dest": "image", "Accept": "image/avif,*/*"}, ALICE, Kind.RESOURCE),
        ("GET", {"Sec-Fetch-Dest": "iframe", "Sec-Fetch-Mode": "navigate"}, ALICE, Kind.PAGE),
        ("GET", NAVIGATION_HEADERS, None, Kind.INVALID),
    ],
)
def test_classify(
    method: str, headers: dict[str, str], server_path: ServerPath | None, kind: str
) -> None:
    assert classify(method, headers, server_path) == kind


# -- the answers ----------------------------------------------------------------------------


@pytest.mark.parametrize("status", [424, 503, 404])
def test_api_answer_is_the_hubs_json_with_the_configured_status(status: int) -> None:
    settings = StoppedSettings(status=status, named_servers=True)
    answer = decide("GET", "/user/alice/api/kernels", "/user/alice/api/kernels?x=1", {}, settings)
    assert (answer.kind, answer.status) == (Kind.API, status)
    assert answer.content_type == "application/json"
    assert answer.headers["Cache-Control"] == "no-store"
    assert "Connection" not in answer.headers  # API polls keep their keep-alive connection
    body = json.loads(answer.body)
    assert body == {
        "status": status,
        "message": "JupyterHub server no longer running at /user/alice/api/kernels. "
        "Restart the server at /hub/spawn/alice",
        "spawn_url": "/hub/spawn/alice",
    }


def test_a_path_that_may_name_a_server_points_to_the_hub_home_not_a_guessed_spawn() -> None:
    for path in ("/user/alice/gpu/api/kernels", "/user/alice/git-pull/api/x"):
        answer = decide("GET", path, path, {}, NAMED)
        assert json.loads(answer.body)["spawn_url"] == "/hub/home", path
    script = decide("GET", "/user/alice/code-server/app.js", "/user/alice/code-server/app.js",
                    {"Sec-Fetch-Dest": "script"}, NAMED)
    assert script.body == b"A server of user 'alice' is not running.\n"


@pytest.mark.parametrize(
    ("settings", "path", "uri", "location"),
    [
        (StoppedSettings(), "/user/alice/lab/tree/a.ipynb", "/user/alice/lab/tree/a.ipynb?r=1",
         "/hub/user/alice/lab/tree/a.ipynb?r=1"),
        (NAMED, "/user/alice/git-pull", "/user/alice/git-pull?repo=https%3A%2F%2Fx&urlpath=lab",
         "/hub/user/alice/git-pull?repo=https%3A%2F%2Fx&urlpath=lab"),
        (NAMED, "/user/alice/code-server/", "/user/alice/code-server/",
         "/hub/user/alice/code-server/"),
        (StoppedSettings(base_url="/jh/", named_servers=True), "/jh/user/bob/gpu/lab",
         "/jh/user/bob/gpu/lab", "/jh/hub/user/bob/gpu/lab"),
        # Names stay escaped as they came; the target is always a path under the hub.
        (NAMED, "/user/%3Cscript%3E/x%22y/lab", "/user/%3Cscript%3E/x%22y/lab",
         "/hub/user/%3Cscript%3E/x%22y/lab"),
        (StoppedSettings(), "/user/alice", "https://evil.example/", "/hub/user/alice"),
    ],
)
def test_a_navigation_is_sent_to_the_hub(
    settings: StoppedSettings, path: str, uri: str, location: str
) -> None:
    answer = decide("GET", path, uri, NAVIGATION_HEADERS, settings)
    assert (answer.kind, answer.status) == (Kind.PAGE, 302)
    assert answer.headers["Location"] == location
    assert answer.headers["Cache-Control"] == "no-store"
    assert settings.statuses_of(Kind.PAGE) == (302,)


def test_a_refused_websocket_upgrade_closes_its_connection() -> None:
    headers = {"Upgrade": "websocket", "Connection": "Upgrade"}
    answer = decide("GET", "/user/alice/api/kernels/k/channels",
                    "/user/alice/api/kernels/k/channels", headers, StoppedSettings())
    assert (answer.kind, answer.status) == (Kind.WEBSOCKET, 424)
    assert answer.headers["Connection"] == "close"


@pytest.mark.parametrize(
    ("method", "path", "headers", "running", "status", "location"),
    [
        # A tab's poll and a navigation of a running server: to the hub, which redirects back
        ("GET", "/user/alice/api/kernels?x=1", {}, {""}, 302, "/hub/user/alice/api/kernels?x=1"),
        ("GET", "/user/alice/lab", NAVIGATION_HEADERS, {""}, 302, "/hub/user/alice/lab"),
        # What cannot follow a redirect is told to retry, not that the server stopped
        ("PUT", "/user/alice/api/contents/a.ipynb", {}, {""}, 503, None),
        ("GET", "/user/alice/api/kernels/k/channels", {"Upgrade": "websocket"}, {""}, 503, None),
        # With named servers, the running server the path names (as the hub picks it)
        ("GET", "/user/alice/gpu/api/status", {}, {"gpu"}, 302, "/hub/user/alice/gpu/api/status"),
    ],
)
def test_a_running_server_whose_route_is_missing_is_never_told_it_stopped(
    method: str, path: str, headers: dict, running: set, status: int, location: str | None
) -> None:
    answer = decide(method, path.split("?")[0], path, headers, NAMED, frozenset(running))
    assert (answer.kind, answer.status) == (Kind.ROUTE_MISSING, status)
    assert status in NAMED.statuses_of(Kind.ROUTE_MISSING)
    if location is None:
        assert answer.headers["Retry-After"] == "5"
        assert b"is running" in answer.body and b"no longer running" not in answer.body
    else:
        assert answer.headers["Location"] == location
    closes = answer.headers.get("Connection") == "close"
    assert closes == ("Upgrade" in headers)


def test_only_the_running_server_counts_as_route_missing() -> None:
    """alice's named server "gpu" runs, her default server does not: a request for the
    default server is answered as stopped; without named servers every path is the default
    server's, so "gpu" in the path names nothing."""
    gpu = frozenset({"gpu"})
    default = decide("GET", "/user/alice/api/status", "/user/alice/api/status", {}, NAMED, gpu)
    assert (default.kind, default.status) == (Kind.API, 424)
    plain = decide("GET", "/user/alice/gpu/api/status", "/user/alice/gpu/api/status", {},
                   StoppedSettings(), gpu)
    assert (plain.kind, plain.status) == (Kind.API, 424)
    nobody = decide("GET", "/user/", "/user/", {}, NAMED, frozenset({""}))
    assert nobody.kind == Kind.INVALID


def test_spawn_url_escapes_like_jupyterhub() -> None:
    assert spawn_url(StoppedSettings(), ServerPath("a@b c", [])) == "/hub/spawn/a@b%20c"
    assert spawn_url(StoppedSettings(base_url="/jh/"), ServerPath("x/y", [])) == (
        "/jh/hub/spawn/x%2Fy"
    )


def test_sub_resources_get_plain_text_and_unknown_paths_404() -> None:
    answer = decide("GET", "/user/alice/static/app.js", "/user/alice/static/app.js",
                    {"Sec-Fetch-Dest": "script"}, StoppedSettings(status=503))
    assert (answer.kind, answer.status) == (Kind.RESOURCE, 503)
    assert answer.body == b"The server of user 'alice' is not running.\n"
    nobody = decide("GET", "/user/", "/user/", NAVIGATION_HEADERS, StoppedSettings())
    assert (nobody.kind, nobody.status) == (Kind.INVALID, 404)


# -- the handler, served by the service -----------------------------------------------------


@asynccontextmanager
async def running_service(**settings: object) -> AsyncIterator[ResilienceService]:
    """The real service, culler off, listening on a loopback port, with these settings."""
    config = Config()
    config.ResilienceService.port = unused_port()
    config.ResilienceService.cull = False
    for name, value in settings.items():
        setattr(config.ResilienceService, name, value)
    running = ResilienceService(config=config)
    running.listen()
    task = asyncio.create_task(running.run())
    try:
        yield running
    finally:
        running.stop()
        await asyncio.wait_for(task, 30)


@pytest_asyncio.fixture
async def service() -> AsyncIterator[ResilienceService]:
    """The service with named servers on, as the stopped-server tests expect."""
    async with running_service(named_servers=True) as running:
        yield running


async def fetch(url: str, **kwargs: object) -> HTTPResponse:
    http = AsyncHTTPClient(force_instance=True)
    try:
        return await http.fetch(HTTPRequest(url, **kwargs), raise_error=False)
    finally:
        http.close()


def counted(kind: str, status: str = "424") -> float:
    value = REGISTRY.get_sample_value(
        "hub_resilience_stopped_server_responses_total", {"kind": kind, "status": status}
    )
    return value or 0.0


async def test_handler_answers_every_kind_and_counts_it(service: ResilienceService) -> None:
    base = f"http://127.0.0.1:{service.port}"
    statuses = {Kind.API: "424", Kind.XHR: "424", Kind.JSON: "424", Kind.PAGE: "302",
                Kind.RESOURCE: "424", Kind.WEBSOCKET: "424", Kind.INVALID: "404"}
    before = {kind: counted(kind, status) for kind, status in statuses.items()}

    api = await fetch(f"{base}/user/alice/api/kernels")
    xhr = await fetch(f"{base}/user/alice/lab/workspaces",
                      headers={"X-Requested-With": "XMLHttpRequest"})
    as_json = await fetch(f"{base}/user/alice/tree", headers={"Accept": "application/json"})
    page = await fetch(f"{base}/user/alice/gpu/lab?x=1", headers=NAVIGATION_HEADERS,
                       follow_redirects=False)
    head = await fetch(f"{base}/user/alice/lab", method="HEAD", headers=NAVIGATION_HEADERS,
                       follow_redirects=False)
    script = await fetch(f"{base}/user/alice/static/x.js", headers={"Sec-Fetch-Dest": "script"})
    with pytest.raises(HTTPClientError) as refused:
        await websocket_connect(f"ws://127.0.0.1:{service.port}/user/alice/api/kernels/k/channels")
    invalid = await fetch(f"{base}/user/")

    assert [r.code for r in (api, xhr, as_json, script)] == [424] * 4
    assert (page.code, head.code) == (302, 302)
    assert page.headers["Location"] == "/hub/user/alice/gpu/lab?x=1"
    assert head.headers["Location"] == "/hub/user/alice/lab"
    assert refused.value.code == 424
    assert invalid.code == 404
    assert json.loads(api.body)["spawn_url"] == "/hub/spawn/alice"
    assert head.body == b""
    assert {r.headers["Cache-Control"] for r in (api, xhr, as_json, page, head, script)} == {
        "no-store"
    }
    expected = {Kind.API: 1, Kind.XHR: 1, Kind.JSON: 1, Kind.PAGE: 2, Kind.RESOURCE: 1,
                Kind.WEBSOCKET: 1, Kind.INVALID: 1}
    assert {kind: counted(kind, statuses[kind]) - before[kind] for kind in expected} == expected


async def raw_exchange(port: int, request: bytes) -> tuple[bytes, bool]:
    """Send ``request`` on a new connection; the response, and whether the service closed
    the connection after it (the read ends instead of waiting for more)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        await reader.readexactly(length)
        try:
            rest = await asyncio.wait_for(reader.read(1), 5)
        except asyncio.TimeoutError:
            return head, False  # still open
        return head, rest == b""
    finally:
        writer.close()


async def test_refused_upgrades_close_the_connection_and_polls_keep_it(
    service: ResilienceService,
) -> None:
    upgrade = (
        b"GET /user/alice/api/kernels/k/channels HTTP/1.1\r\nHost: x\r\n"
        b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
    head, closed = await raw_exchange(service.port, upgrade)
    assert head.startswith(b"HTTP/1.1 424 ")
    assert b"\r\nConnection: close\r\n" in head
    assert closed, "the refused upgrade's connection was left open"

    poll = b"GET /user/alice/api/status HTTP/1.1\r\nHost: x\r\n\r\n"
    head, closed = await raw_exchange(service.port, poll)
    assert head.startswith(b"HTTP/1.1 424 ")
    assert not closed  # an API poll keeps its keep-alive connection


async def test_large_bodies_are_dropped_unread(service: ResilienceService) -> None:
    body = b"x" * (8 * 1024 * 1024)  # a stale tab autosaving a big notebook
    response = await fetch(
        f"http://127.0.0.1:{service.port}/user/alice/api/contents/big.ipynb",
        method="PUT", body=body, request_timeout=60,
    )
    assert response.code == 424


async def test_health_and_metrics(service: ResilienceService) -> None:
    base = f"http://127.0.0.1:{service.port}"
    health = json.loads((await fetch(f"{base}/health")).body)
    assert health["status"] == "ok"
    assert health["culler"] is None and health["orphaned"] is False
    assert health["stopped_status"] == 424
    metrics = (await fetch(f"{base}/metrics")).body.decode()
    assert 'hub_resilience_stopped_server_responses_total{kind="page",status="302"}' in metrics
    assert 'hub_resilience_stopped_server_responses_total{kind="api",status="424"}' in metrics
    assert "hub_resilience_service_orphaned 0.0" in metrics
    other = await fetch(f"{base}/somewhere")
    assert other.code == 404


async def test_handler_off_leaves_only_health_and_metrics() -> None:
    async with running_service(stopped_handler=False) as running:
        base = f"http://127.0.0.1:{running.port}"
        assert (await fetch(f"{base}/user/alice/api")).code == 404
        assert (await fetch(f"{base}/health")).code == 200


async def test_listening_everywhere_answers_on_ipv4_and_ipv6() -> None:
    """ip "" (what configure() gives a hub that listens everywhere, as in z2jh) binds every
    address family, so the service works on an IPv6-only cluster too. Loopback only here."""
    async with running_service(ip="") as everywhere:
        for host in ("127.0.0.1", "[::1]"):
            response = await fetch(f"http://{host}:{everywhere.port}/user/alice/api/status")
            assert response.code == 424, host
