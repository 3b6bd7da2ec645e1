"""What a JupyterLab user sees when their server stops, or loses its route (issue 17).

The storms the package absorbs come from real JupyterLab tabs, so here the tab is real:
JupyterLab from PyPI served by ``jupyterhub-singleuser`` (SimpleLocalProcessSpawner), behind
the real configurable-http-proxy and JupyterHub with the package switched on by
``configure(c)``, open in headless Chromium (Debian's) driven by Playwright, the user logged
in through the hub's login form.

- The server stopped from the hub (``DELETE /users/alice/server``, as an admin does): the
  tab's polling is answered by the stopped-server handler and none of it reaches the hub,
  JupyterLab says that the server is gone, and its Restart button starts the same server.
- The route deleted from the proxy while the server runs: the tab is never told that its
  server stopped, and works again once the hub's route repair (every 30 s) has put the
  route back.

Screenshots go to ``$HUB_RESILIENCE_ARTIFACTS/<case>/`` (``scripts/test`` sets it to
``$HUB_RESILIENCE_HOME/artifacts/<lane>``), or to ``artifacts/`` in the test's temporary
directory; each test prints where.
"""
from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from playwright.async_api import BrowserContext, Locator, Page

from hub_resilience.hubclient import HubAPIError, HubClient
from hub_resilience.settings import HubResilience
from tests.support.browser import (
    DIALOG,
    Exchange,
    Recorder,
    chromium,
    jupyterlab_config,
    log_in,
    wait_for_lab,
)
from tests.support.hub import (
    SERVICE_NAME,
    RunningHub,
    handler_answers,
    route_checks,
    running_hub,
    unused_port,
)

pytestmark = [pytest.mark.hub, pytest.mark.browser]

USER = "alice"
#: The resilience service's name in the hub (HubResilience.service_name's default).
RESILIENCE_SERVICE = HubResilience.class_traits()["service_name"].default_value
SERVER_PREFIX = f"/user/{USER}/"

CONFIG = """
c.JupyterHub.allow_named_servers = {named}
c.HubResilience.service_port = {port}
c.HubResilience.cull = False  # no culler requests among the hub's
from hub_resilience import configure
configure(c)  # route_check_interval keeps its default, 30 s
"""

#: What JupyterLab 4 (@jupyterlab/hub-extension) shows when its server is gone.
STOPPED_DIALOG = (
    "Server unavailable or unreachable "
    f"Your server at {SERVER_PREFIX} is not running. Would you like to restart it? "
    "Restart Dismiss"
)
#: The stopped status (JupyterHub's and the handler's): "the server is not running".
STOPPED = 424

#: One line of JupyterHub's access log: ``302 GET /user/alice/lab -> ... (alice@127.0.0.1)``.
ACCESS_LOG = re.compile(
    r"^\[\w \S+ \S+ JupyterHub log:\d+\] (?P<status>\d{3}) (?P<method>[A-Z]+) (?P<uri>\S+)"
    r".* \((?P<user>[^@()]*)@[^)]*\) [\d.]+ms$"
)

#: Safety nets against hangs, generous on purpose (not timing assertions): JupyterLab polls
#: its kernels and sessions every 10 s, backing off to 30 s after failures; route repair
#: checks every 30 s.
SHOWN_WITHIN = 60.0
REPAIRED_WITHIN = 75.0


@dataclass
class Session:
    """alice's JupyterLab open in a browser tab, on a hub with the package switched on."""

    hub: RunningHub
    client: HubClient  # the admin's
    service_port: int
    browser: BrowserContext
    tab: Page
    requests: Recorder  # the tab's


@asynccontextmanager
async def lab_session(tmp_path: Path, *, named: bool = False) -> AsyncIterator[Session]:
    """A hub serving JupyterLab, and alice logged in through its login form with JupyterLab
    open; the hub's log has no traceback at the end."""
    port = unused_port()
    config = jupyterlab_config(tmp_path / "homes") + CONFIG.format(named=named, port=port)
    async with running_hub(config) as hub, hub.client() as client:
        await hub.wait_for_service(f"http://127.0.0.1:{port}/health")
        async with chromium(tmp_path / "chromium-profile") as browser:
            tab = browser.pages[0] if browser.pages else await browser.new_page()
            requests = Recorder(tab)
            started = time.monotonic()
            await log_in(tab, hub.url, USER)
            await wait_for_lab(tab)
            print(f"JupyterLab open {time.monotonic() - started:.1f}s after the login page")
            try:
                yield Session(hub, client, port, browser, tab, requests)
            finally:
                await stop_servers_of(client, USER)
        assert "Traceback" not in hub.log_text()


async def stop_servers_of(client: HubClient, name: str) -> None:
    """Stop a user's JupyterLab servers: the local hub leaves servers running when it stops
    (``cleanup_servers = False``, so that tests can restart it), and each run of these
    tests left one behind."""
    with contextlib.suppress(HubAPIError, TimeoutError):  # a hub already gone: nothing to do
        user = await client.get_user(name)
        for server_name in (user or {}).get("servers", {}):
            await client.stop_server(name, server_name)
            await client.wait_for_server_stopped(name, server_name, timeout=60)


def artifacts(tmp_path: Path, case: str) -> Path:
    """Where a case's screenshots go (printed, so that the run's output says where)."""
    root = os.environ.get("HUB_RESILIENCE_ARTIFACTS")
    directory = Path(root) / case if root else tmp_path / "artifacts"
    shutil.rmtree(directory, ignore_errors=True)  # no screenshot of an earlier run
    directory.mkdir(parents=True)
    print(f"screenshots of {case}: {directory}")
    return directory


def hub_requests(log: str) -> list[dict[str, str]]:
    """The requests in JupyterHub's access log (the hub's own lines, not its servers')."""
    return [m.groupdict() for line in log.splitlines() if (m := ACCESS_LOG.match(line))]


async def next_route_check(hub: RunningHub, timeout: float = REPAIRED_WITHIN) -> None:
    """Wait until the hub has run its next route check."""
    checks, deadline = await route_checks(hub), time.monotonic() + timeout
    while True:
        if await route_checks(hub) > checks:
            return
        assert time.monotonic() < deadline, f"no route check in {timeout:g}s"
        await asyncio.sleep(0.2)


def flat(text: str) -> str:
    """A dialog's text on one line (the DOM's line breaks vary with the layout)."""
    return re.sub(r"\s+", " ", text).strip()


def summary(exchanges: list[Exchange]) -> list[tuple[str, str, int | None, bool]]:
    """For assertion messages: method, path, status, answered by JupyterHub's code."""
    return [(e.method, e.path, e.status, e.from_jupyterhub) for e in exchanges]


async def visible_dialog(tab: Page) -> Locator | None:
    """JupyterLab's dialog if one is shown now (checked without waiting)."""
    dialog = tab.locator(DIALOG)
    return dialog.first if await dialog.count() and await dialog.first.is_visible() else None


@pytest.mark.parametrize("named", [False, True], ids=["default-only", "named-servers"])
async def test_a_stopped_server_shows_in_the_tab_and_restarts(
    tmp_path: Path, named: bool
) -> None:
    shots = artifacts(tmp_path, f"stopped-{'named-servers' if named else 'default-only'}")
    async with lab_session(tmp_path, named=named) as s:
        await s.tab.screenshot(path=shots / "1-lab.png")
        log_offset = len(s.hub.log_text())
        answered_before = await handler_answers(s.service_port)
        await s.client.stop_server(USER)  # DELETE /users/alice/server, as an admin would
        assert await s.client.wait_for_server_stopped(USER, timeout=60)
        stopped = time.time()

        # JupyterLab says that its server is gone...
        dialog = s.tab.locator(DIALOG)
        await dialog.wait_for(state="visible", timeout=SHOWN_WITHIN * 1000)
        await s.tab.screenshot(path=shots / "2-server-stopped.png")
        assert flat(await dialog.inner_text()) == STOPPED_DIALOG

        # JupyterLab 4.6 puts its polls in standby while that dialog is open
        # (@jupyterlab/services-extension: standby while not connected), so what reached the
        # handler so far is the tab's last round of polls. Dismissed, the tab polls again, is
        # answered by the handler again, and says so again (once: the same in both cases,
        # and its backoff makes it 10 to 30 s).
        first_round = [e for e in s.requests.since(stopped, SERVER_PREFIX) if e.status]
        assert first_round, summary(s.requests.since(stopped))
        if not named:
            # Stamped before the click: the tab may poll, and the handler answer, in the
            # moment before Playwright sees the dialog hidden (seen once: "shown again 0.0s
            # after Dismiss", that poll stamped just before a stamp taken after it).
            dismissed = time.time()
            await dialog.get_by_role("button", name="Dismiss").click()
            await dialog.wait_for(state="hidden", timeout=10_000)
            await dialog.wait_for(state="visible", timeout=SHOWN_WITHIN * 1000)
            print(f"shown again {time.time() - dismissed:.1f}s after Dismiss")
            assert flat(await dialog.inner_text()) == STOPPED_DIALOG
            assert [e for e in s.requests.since(dismissed, SERVER_PREFIX) if e.status]

        # Every request of the tab after the stop was answered by the handler, none by the
        # hub: since the DELETE, the hub's access log has no request of alice's or of no one
        # (a /user/ path the hub redirects), only API requests of services (this test's, and
        # the handler's listing of running servers).
        polled = [e for e in s.requests.since(stopped, SERVER_PREFIX) if e.status is not None]
        answered = await handler_answers(s.service_port) - answered_before
        print(f"after the stop: {len(polled)} requests, {len(s.requests.websockets)} "
              f"websocket handshakes in all; the handler answered {answered:g}")
        assert all(e.status == STOPPED and not e.from_jupyterhub for e in polled), (
            summary(polled)
        )
        assert answered >= len(polled)
        since_delete = hub_requests(s.hub.log_text()[log_offset:])
        print("the hub's requests since the DELETE:",
              dict(Counter((r["user"], r["method"], r["uri"]) for r in since_delete)))
        assert [r for r in since_delete if r["user"] in ("", USER)] == []
        assert all(
            r["user"] in (SERVICE_NAME, RESILIENCE_SERVICE) and r["uri"].startswith("/hub/api/")
            for r in since_delete
        ), since_delete

        # Its Restart button opens the hub in a new tab, which starts the same server.
        everything = Recorder(s.browser)
        async with s.browser.expect_page() as opened:
            await dialog.get_by_role("button", name="Restart").click()
        restarted = await opened.value
        await wait_for_lab(restarted)
        await restarted.screenshot(path=shots / "3-restarted.png")
        navigations = [e for e in everything.exchanges if e.navigation]
        print("the restart went through", " -> ".join(e.path for e in navigations))
        # The hub's spawn page for the default server (JupyterLab 4.6: /hub/spawn).
        assert navigations[0].path in ("/hub/spawn", f"/hub/spawn/{USER}"), summary(navigations)
        assert restarted.url.startswith(f"{s.hub.url}{SERVER_PREFIX}lab"), restarted.url
        user = await s.client.get_json(f"/users/{USER}", {"include_stopped_servers": "1"})
        assert list(user["servers"]) == [""], user["servers"]  # no named server, even stopped
        assert user["servers"][""]["ready"]


async def test_a_lost_route_is_repaired_under_the_open_tab(tmp_path: Path) -> None:
    shots = artifacts(tmp_path, "route-lost")
    async with lab_session(tmp_path) as s:
        routespec = SERVER_PREFIX.rstrip("/")
        assert routespec in await s.hub.proxy_routes()
        # Right after a route check, so that the tab polls through a whole interval (30 s)
        # without its route.
        await next_route_check(s.hub)
        await s.hub.remove_proxy_route(routespec)
        deleted, since = time.time(), time.monotonic()

        while routespec not in await s.hub.proxy_routes():
            dialog = await visible_dialog(s.tab)
            if dialog is not None:
                await s.tab.screenshot(path=shots / "told-stopped.png")
                pytest.fail(
                    "JupyterLab told the user their server stopped while only its route was "
                    f"missing: {flat(await dialog.inner_text())!r}; the tab's requests: "
                    f"{summary(s.requests.since(deleted, SERVER_PREFIX))}"
                )
            assert time.monotonic() - since < REPAIRED_WITHIN, "the route was not repaired"
            await asyncio.sleep(0.2)
        repaired = time.time()
        gap = s.requests.since(deleted, SERVER_PREFIX)
        print(f"route back after {repaired - deleted:.1f}s; the tab's requests meanwhile "
              f"(method, status: count): {dict(Counter((e.method, e.status) for e in gap))}")
        assert [e for e in gap if e.started < repaired], "the tab sent nothing without its route"

        # The tab works again: a new text file from its launcher (a POST to its server).
        await s.tab.locator(".jp-LauncherCard", has_text="Text File").click()
        await s.tab.locator(".lm-TabBar-tabLabel", has_text="untitled.txt").wait_for(
            state="visible", timeout=30_000
        )
        await s.tab.locator(".jp-DirListing-item", has_text="untitled.txt").wait_for(
            state="visible", timeout=30_000
        )  # and its file browser lists it
        await s.tab.screenshot(path=shots / "after-repair.png")
        created = [e for e in s.requests.since(repaired, SERVER_PREFIX)
                   if e.method == "POST" and e.path == f"{SERVER_PREFIX}api/contents"]
        assert [e.status for e in created] == [201], summary(created)
        assert created[0].from_jupyterhub  # the server itself answered
        assert (tmp_path / "homes" / USER / "untitled.txt").exists()
        dialog = await visible_dialog(s.tab)
        assert dialog is None, flat(await dialog.inner_text())
        told_stopped = [e for e in s.requests.since(deleted, SERVER_PREFIX)
                        if e.status == STOPPED]
        assert told_stopped == [], summary(told_stopped)
        # JupyterHub's own route check put it back (route repair runs it every 30 s).
        assert f"Adding missing route for {SERVER_PREFIX}" in s.hub.log_text()
