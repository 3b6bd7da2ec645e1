"""Real JupyterLab in a real browser, for the tests of what a user sees (issue 17).

The storms the stopped-server handler absorbs come from open JupyterLab tabs, so these tests
serve JupyterLab from PyPI with ``jupyterhub-singleuser`` (JupyterHub's
``SimpleLocalProcessSpawner``, one process per server) and drive it in headless Chromium
from Debian's ``chromium`` package through Playwright. Playwright's own browser builds are
never used (they are downloads, blocked on CI machines): ``scripts/bootstrap.sh`` installs
the Debian package and the test extra brings Playwright, whose wheel carries its driver.

Usage::

    config = jupyterlab_config(tmp_path / "homes") + "from hub_resilience import configure\n"
    async with running_hub(config + "configure(c)") as hub:
        async with chromium(tmp_path / "profile") as browser:
            tab = await browser.new_page()
            await log_in(tab, hub.url, "alice")  # the hub starts her server: JupyterLab
            await wait_for_lab(tab)
"""
from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from playwright.async_api import BrowserContext, Page, Request, Response, async_playwright

#: Debian's Chromium (``apt-get install chromium``); HUB_RESILIENCE_CHROMIUM points elsewhere.
CHROMIUM = os.environ.get("HUB_RESILIENCE_CHROMIUM", "/usr/bin/chromium")
#: Headless, no sandbox (we run as root), and nothing that talks to the network by itself.
CHROMIUM_ARGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
)
#: What the hub extension's "connection lost" dialog shows (@jupyterlab/hub-extension 4.x).
DIALOG = ".jp-Dialog"

#: The single-user servers' Jupyter configuration: no news feed or update check (they would
#: fetch from the internet), root allowed (CI runs as root).
JUPYTER_CONFIG = """\
c.ServerApp.allow_root = True
c.LabApp.news_url = None
c.LabApp.check_for_updates_class = "jupyterlab.NeverCheckForUpdate"
"""
#: JupyterLab's user setting that answers its "get notified about Jupyter news?" toast,
#: which would otherwise cover part of every screenshot.
NO_NEWS_SETTING = ("@jupyterlab/apputils-extension", "notification", '{"fetchNews": "false"}')

#: Hub config for JupyterLab servers started by SimpleLocalProcessSpawner; formatted by
#: :func:`jupyterlab_config`, then the caller's own config (and configure(c)) follows.
SPAWNER_CONFIG = """
c.JupyterHub.spawner_class = "simple"
c.HubResilience.spawner_class = None  # keep this spawner (no Kubernetes here)
c.SimpleLocalProcessSpawner.home_dir_template = {homes!r} + "/{{username}}"
c.Spawner.cmd = [{singleuser!r}]
c.Spawner.default_url = "/lab"
c.Spawner.environment = {{"JUPYTER_CONFIG_DIR": {config_dir!r}}}
c.Spawner.start_timeout = 120
c.Spawner.http_timeout = 120
"""


def singleuser_command() -> str:
    """The ``jupyterhub-singleuser`` to serve JupyterLab with: HUB_RESILIENCE_SINGLEUSER, else
    the one beside this Python (the lane's virtualenv), else the one on PATH."""
    given = os.environ.get("HUB_RESILIENCE_SINGLEUSER")
    if given:
        return given
    beside = Path(sys.executable).with_name("jupyterhub-singleuser")
    if beside.exists():
        return str(beside)
    found = shutil.which("jupyterhub-singleuser")
    if found is None:
        raise RuntimeError("jupyterhub-singleuser not found: run scripts/bootstrap.sh")
    return found


def jupyterlab_config(directory: Path) -> str:
    """Hub config serving JupyterLab per user, homes and Jupyter config under ``directory``."""
    config_dir = directory / "jupyter-config"
    config_dir.mkdir(parents=True, exist_ok=True)
    (config_dir / "jupyter_server_config.py").write_text(JUPYTER_CONFIG)
    package, plugin, value = NO_NEWS_SETTING
    settings = config_dir / "lab" / "user-settings" / package
    settings.mkdir(parents=True, exist_ok=True)
    (settings / f"{plugin}.jupyterlab-settings").write_text(value)
    return SPAWNER_CONFIG.format(
        homes=str(directory), singleuser=singleuser_command(), config_dir=str(config_dir)
    )


@asynccontextmanager
async def chromium(user_data_dir: Path) -> AsyncIterator[BrowserContext]:
    """Debian's headless Chromium with a fresh profile in ``user_data_dir``, driven by
    Playwright; closed on exit."""
    if not os.access(CHROMIUM, os.X_OK):
        raise RuntimeError(f"{CHROMIUM} is missing: run scripts/bootstrap.sh (Debian's chromium)")
    async with async_playwright() as playwright:
        context = await playwright.chromium.launch_persistent_context(
            str(user_data_dir),
            executable_path=CHROMIUM,
            headless=True,
            args=list(CHROMIUM_ARGS),
            viewport={"width": 1280, "height": 800},
        )
        try:
            yield context
        finally:
            await context.close()


async def log_in(page: Page, hub_url: str, name: str, password: str = "any") -> None:
    """Log in through the hub's own login form (DummyAuthenticator takes any password)."""
    await page.goto(f"{hub_url}/hub/login")
    await page.fill("#username_input", name)
    await page.fill("#password_input", password)
    await page.click("#login_submit")


async def wait_for_lab(page: Page, timeout: float = 120.0) -> None:
    """Wait until JupyterLab has started in ``page`` (its launcher is shown)."""
    await page.wait_for_selector(".jp-Launcher", state="visible", timeout=timeout * 1000)


@dataclass
class Exchange:
    """One request a tab made, and what answered it."""

    started: float  # wall-clock seconds (time.time()), when the browser sent it
    method: str
    url: str
    navigation: bool  # a document the tab navigates to, not a fetch or a resource
    status: int | None = None  # None while unanswered (or failed without an answer)
    headers: dict[str, str] = field(default_factory=dict)  # the response's, lower-case names

    @property
    def from_jupyterhub(self) -> bool:
        """Answered by JupyterHub's code (the hub and jupyterhub-singleuser set this header on
        every answer; the stopped-server handler and the proxy do not)."""
        return "x-jupyterhub-version" in self.headers

    @property
    def path(self) -> str:
        """The URL's path, which says whose server (and which proxy route) it is for."""
        return urlsplit(self.url).path


class Recorder:
    """Every request of a page, or of every page of a browser (``fetch``/XHR, documents,
    resources), with its answer, in the order they were sent; a page's websocket handshakes
    are in ``websockets``."""

    def __init__(self, source: Page | BrowserContext) -> None:
        self.exchanges: list[Exchange] = []
        self.websockets: list[tuple[float, str]] = []
        self._by_request: dict[Request, Exchange] = {}
        source.on("request", self._request)
        source.on("response", self._response)
        if isinstance(source, Page):
            source.on("websocket", lambda ws: self.websockets.append((time.time(), ws.url)))

    def _request(self, request: Request) -> None:
        exchange = Exchange(
            started=time.time(), method=request.method, url=request.url,
            navigation=request.is_navigation_request(),
        )
        self._by_request[request] = exchange
        self.exchanges.append(exchange)

    def _response(self, response: Response) -> None:
        exchange = self._by_request.get(response.request)
        if exchange is not None:
            exchange.status = response.status
            exchange.headers = dict(response.headers)

    def since(self, moment: float, prefix: str = "/") -> list[Exchange]:
        """Requests sent at or after ``moment`` (time.time()) for paths under ``prefix``."""
        return [e for e in self.exchanges if e.started >= moment and e.path.startswith(prefix)]
