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
from tests.support.hub import unused_port

NAMED = StoppedSettings(named_servers=True)
BROWSER = {
    "Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
    "Sec-Fetch-Mode": "navigate",
    "Sec-Fetch-Dest": "document",
}

# -- which server a path is for -------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "settings", "expected"),
    [
        ("/user/alice/lab", StoppedSettings(), ("alice", "", ["lab"])),
        ("/user/alice", StoppedSettings(), ("alice", "", [])),
        ("/user/alice/", StoppedSettings(), ("alice", "", [""])),
        ("/user/alice/gpu/lab", StoppedSettings(), ("alice", "", ["gpu", "lab"])),
        ("/user/alice/gpu/lab", NAMED, ("alice", "gpu", ["lab"])),
        ("/user/alice/gpu", NAMED, ("alice", "gpu", [])),
        ("/user/alice/lab/tree", NAMED, ("alice", "", ["lab", "tree"])),
        ("/user/alice/api/kernels", NAMED, ("alice", "", ["api", "kernels"])),
        ("/user/alice/", NAMED, ("alice", "", [""])),
        ("/user/a%40b.c%2Fd/x%20y/api", NAMED, ("a@b.c/d", "x y", ["api"])),
        ("/jh/user/bob/tree", StoppedSettings(base_url="/jh/"), ("bob", "", ["tree"])),
    ],
)
def test_parse_server_path(
    path: str, settings: StoppedSettings, expected: tuple[str, str, list[str]]
) -> None:
    found = parse_server_path(path, settings)
    assert found is not None
    assert (found.user, found.server, found.rest) == expected


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

ALICE = ServerPath("alice", "", ["lab"])
ALICE_API = ServerPath("alice", "", ["api", "kernels"])


@pytest.mark.parametrize(
    ("method", "headers", "server_path", "kind"),
    [
        ("GET", {"Upgrade": "websocket", "Connection": "Upgrade"}, ALICE_API, Kind.WEBSOCKET),
        ("GET", {"Upgrade": "WebSocket"}, ALICE, Kind.WEBSOCKET),
        ("POST", {}, ALICE, Kind.API),
        ("PUT", BROWSER, ALICE, Kind.API),  # every non-GET is an Kind.API call, as for the hub
        ("DELETE", {}, ALICE_API, Kind.API),
        ("GET", {"X-Requested-With": "XMLHttpRequest"}, ALICE, Kind.XHR),
        ("GET", BROWSER, ALICE_API, Kind.API),  # an "api" segment, whatever the Accept
        ("GET", {"Accept": "application/json"}, ALICE, Kind.JSON),
        ("GET", {"Accept": "text/html;q=0.5, application/json"}, ALICE, Kind.JSON),
        ("GET", {"Accept": "application/json;q=0.2, text/html"}, ALICE, Kind.PAGE),
        ("GET", {"Accept": "text/html, application/json"}, ALICE, Kind.PAGE),
        ("GET", BROWSER, ALICE, Kind.PAGE),
        ("HEAD", BROWSER, ALICE, Kind.PAGE),
        ("GET", {}, ALICE, Kind.PAGE),  # curl: no Accept preference, no fetch metadata
        ("GET", {"Accept": "*/*"}, ALICE, Kind.PAGE),
        ("GET", {"Sec-Fetch-Dest": "script", "Sec-Fetch-Mode": "no-cors"}, ALICE, Kind.RESOURCE),
        ("GET", {"Sec-Fetch-Dest": "image", "Accept": "image/avif,*/*"}, ALICE, Kind.RESOURCE),
        ("GET", {"Sec-Fetch-Dest": "iframe", "Sec-Fetch-Mode": "navigate"}, ALICE, Kind.PAGE),
        ("GET", BROWSER, None, Kind.INVALID),
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
    answer = decide("GET", "/user/alice/gpu/api/kernels", "/user/alice/gpu/api/kernels?x=1",
                    {}, settings)
    assert (answer.kind, answer.status) == (Kind.API, status)
    assert answer.content_type == "application/json"
    assert answer.headers["Cache-Control"] == "no-store"
    body = json.loads(answer.body)
    assert body == {
        "status": status,
        "message": "JupyterHub server no longer running at /user/alice/gpu/api/kernels. "
        "Restart the server at /hub/spawn/alice/gpu",
        "spawn_url": "/hub/spawn/alice/gpu",
    }


def test_page_links_to_the_spawn_page_and_back() -> None:
    answer = decide("GET", "/user/alice/lab/tree/a.ipynb", "/user/alice/lab/tree/a.ipynb?r=1",
                    BROWSER, StoppedSettings())
    assert (answer.kind, answer.status) == (Kind.PAGE, 424)
    assert answer.content_type.startswith("text/html")
    assert answer.headers["Cache-Control"] == "no-store"
    assert "default-src 'none'" in answer.headers["Content-Security-Policy"]
    page = answer.body.decode()
    assert "not running" in page
    assert 'href="/hub/spawn/alice?next=%2Fuser%2Falice%2Flab%2Ftree%2Fa.ipynb%3Fr%3D1"' in page
    assert 'href="/hub/home"' in page
    assert "<script" not in page
    assert len(answer.body) < 2000


def test_page_for_a_named_server_under_a_base_url() -> None:
    settings = StoppedSettings(base_url="/jh/", named_servers=True)
    answer = decide("GET", "/jh/user/bob/gpu/lab", "/jh/user/bob/gpu/lab", BROWSER, settings)
    page = answer.body.decode()
    assert 'href="/jh/hub/spawn/bob/gpu?next=%2Fjh%2Fuser%2Fbob%2Fgpu%2Flab"' in page
    assert 'href="/jh/hub/home"' in page
    assert "<strong>gpu</strong>" in page and "<strong>bob</strong>" in page


def test_names_are_escaped_in_the_page_and_the_links() -> None:
    path = "/user/%3Cscript%3Ealert(1)%3C%2Fscript%3E/x%22onload%3D%22y/lab"
    answer = decide("GET", path, path, BROWSER, NAMED)
    page = answer.body.decode()
    assert "<script>" not in page and '"onload="' not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "x&quot;onload=&quot;y" in page
    assert 'href="/hub/spawn/%3Cscript%3Ealert%281%29%3C%2Fscript%3E/x%22onload%3D%22y?' in page


def test_spawn_url_escapes_like_jupyterhub_and_keeps_next_local() -> None:
    settings = StoppedSettings()
    who = ServerPath("a@b c", "", [])
    assert spawn_url(settings, who, None) == "/hub/spawn/a@b%20c"
    # `next` is only ever the request itself (under the user prefix), never elsewhere.
    assert spawn_url(settings, who, "https://evil.example/") == "/hub/spawn/a@b%20c"


def test_sub_resources_get_plain_text_and_unknown_paths_404() -> None:
    answer = decide("GET", "/user/alice/static/app.js", "/user/alice/static/app.js",
                    {"Sec-Fetch-Dest": "script"}, StoppedSettings(status=503))
    assert (answer.kind, answer.status) == (Kind.RESOURCE, 503)
    assert answer.body == b"The server of user 'alice' is not running.\n"
    nobody = decide("GET", "/user/", "/user/", BROWSER, StoppedSettings())
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
    kinds = (Kind.API, Kind.XHR, Kind.JSON, Kind.PAGE, Kind.RESOURCE, Kind.WEBSOCKET)
    before = {kind: counted(kind) for kind in kinds}
    before_invalid = counted(Kind.INVALID, "404")

    api = await fetch(f"{base}/user/alice/api/kernels")
    xhr = await fetch(f"{base}/user/alice/lab/workspaces",
                      headers={"X-Requested-With": "XMLHttpRequest"})
    as_json = await fetch(f"{base}/user/alice/tree", headers={"Accept": "application/json"})
    page = await fetch(f"{base}/user/alice/gpu/lab", headers=BROWSER)
    head = await fetch(f"{base}/user/alice/lab", method="HEAD", headers=BROWSER)
    script = await fetch(f"{base}/user/alice/static/x.js", headers={"Sec-Fetch-Dest": "script"})
    with pytest.raises(HTTPClientError) as refused:
        await websocket_connect(f"ws://127.0.0.1:{service.port}/user/alice/api/kernels/k/channels")
    invalid = await fetch(f"{base}/user/")

    assert [r.code for r in (api, xhr, as_json, page, head, script)] == [424] * 6
    assert refused.value.code == 424
    assert invalid.code == 404
    assert json.loads(api.body)["spawn_url"] == "/hub/spawn/alice"
    assert b"/hub/spawn/alice/gpu?next=" in page.body
    assert head.body == b""
    assert {r.headers["Cache-Control"] for r in (api, xhr, as_json, page, head, script)} == {
        "no-store"
    }
    expected = {
        Kind.API: 1, Kind.XHR: 1, Kind.JSON: 1, Kind.PAGE: 2, Kind.RESOURCE: 1, Kind.WEBSOCKET: 1
    }
    assert {kind: counted(kind) - before[kind] for kind in expected} == expected
    assert counted(Kind.INVALID, "404") - before_invalid == 1


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
    assert 'hub_resilience_stopped_server_responses_total{kind="page",status="424"}' in metrics
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
