"""Start a real JupyterHub, with its real configurable-http-proxy, for integration tests.

Usage::

    async with running_hub('c.JupyterHub.allow_named_servers = True') as hub:
        async with hub.client() as client:
            await create_users(client, ["alice", "bob"])
            await client.start_server_and_wait("alice")

Both run as subprocesses on free loopback ports, in a temporary directory holding the config,
the sqlite database and the logs. The hub uses :class:`hub_resilience.simulated.
SimulatedSpawner` (one loopback responder stands in for every single-user server) and a
dummy authenticator allowing anyone. The test's config text is appended to the base config,
so it can override anything; to add roles or services, append to ``c.JupyterHub.load_roles``
and ``c.JupyterHub.services`` rather than replacing them, since the base config defines the
test token's service there and gives it the admin role.

The proxy is started by us, not by the hub (``should_start = False``), and the hub leaves
servers and routes in place when it exits (``cleanup_servers = cleanup_proxy = False``), so
:meth:`RunningHub.restart` restarts the hub process alone, as a Kubernetes hub pod restart
does, and servers are found still running.
"""
from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import signal
import socket
import sys
import tempfile
import textwrap
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tornado.httpclient import AsyncHTTPClient, HTTPRequest

from hub_resilience.backoff import BackoffPolicy
from hub_resilience.hubclient import HubClient

SERVICE_NAME = "hub-resilience-tests"

BASE_CONFIG = """\
# Written by tests/support/hub.py; the test's own config follows the marker below.
c = get_config()  # noqa
c.JupyterHub.ip = "127.0.0.1"
c.JupyterHub.port = {proxy_port}
c.JupyterHub.hub_ip = "127.0.0.1"
c.JupyterHub.hub_port = {hub_port}
c.JupyterHub.db_url = "sqlite:///{config_dir}/jupyterhub.sqlite"
c.JupyterHub.cookie_secret_file = "{config_dir}/jupyterhub_cookie_secret"
c.JupyterHub.pid_file = "{config_dir}/jupyterhub.pid"
c.JupyterHub.cleanup_servers = False
c.JupyterHub.cleanup_proxy = False
c.ConfigurableHTTPProxy.should_start = False
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{proxy_api_port}"
c.ConfigurableHTTPProxy.auth_token = "{proxy_token}"
c.JupyterHub.authenticator_class = "dummy"
c.Authenticator.allow_all = True
c.JupyterHub.spawner_class = "hub_resilience.simulated.SimulatedSpawner"
c.SimulatedSpawner.responder_port = {responder_port}
c.JupyterHub.services = [{{"name": "{service}", "api_token": "{token}"}}]
# The admin role (not just its scopes): creating admin users requires an admin requester.
c.JupyterHub.load_roles = [{{"name": "admin", "services": ["{service}"]}}]
# ---- test config ----
"""


def unused_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _executable(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise RuntimeError(
            f"{name} is not on PATH; run `source scripts/env.sh` (after scripts/bootstrap.sh)"
        )
    return path


async def _terminate(proc: asyncio.subprocess.Process | None, timeout: float = 15.0) -> None:
    """SIGTERM, then SIGKILL if needed, and always reap."""
    if proc is None or proc.returncode is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(proc.wait(), timeout)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()


async def _wait_http(
    url: str,
    token_header: str,
    proc: asyncio.subprocess.Process,
    log_path: Path,
    timeout: float,
) -> None:
    """Wait until ``url`` answers 200 with the given Authorization header."""
    http = AsyncHTTPClient(force_instance=True)
    deadline = time.monotonic() + timeout
    try:
        while True:
            if proc.returncode is not None:
                raise RuntimeError(
                    f"process exited with {proc.returncode} before {url} answered; "
                    f"log tail:\n{_tail(log_path)}"
                )
            try:
                response = await http.fetch(
                    HTTPRequest(url, headers={"Authorization": token_header}, request_timeout=5),
                    raise_error=False,
                )
            except OSError:
                response = None
            if response is not None and response.code == 200:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url} did not answer within {timeout}s; log tail:\n"
                                   f"{_tail(log_path)}")
            await asyncio.sleep(0.1)
    finally:
        http.close()


def _append_fd(path: Path) -> int:
    """A file descriptor appending to ``path``, for a child's stdout and stderr."""
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@dataclass
class RunningHub:
    """A JupyterHub and its proxy running as subprocesses (see :func:`running_hub`)."""

    url: str  # public URL, through configurable-http-proxy
    api_url: str  # the hub's REST API, directly
    token: str  # admin-scoped service token
    config_dir: Path
    log_path: Path  # the hub's stdout and stderr, across restarts
    proxy_log_path: Path
    proxy_api_url: str
    proxy_token: str
    config_path: Path
    start_timeout: float = 90.0
    _hub: asyncio.subprocess.Process | None = field(default=None, repr=False)
    _proxy: asyncio.subprocess.Process | None = field(default=None, repr=False)

    def client(self, **kwargs: Any) -> HubClient:
        """A HubClient with the admin token (short backoff, suited to tests)."""
        kwargs.setdefault("component", "tests")
        kwargs.setdefault("concurrency", 8)
        kwargs.setdefault(
            "policy", BackoffPolicy(base=0.1, cap=2.0, max_attempts=8, deadline=60.0)
        )
        return HubClient(self.api_url, self.token, **kwargs)

    def log_text(self) -> str:
        """Everything the hub has logged so far."""
        return self.log_path.read_text(errors="replace")

    @property
    def hub_pid(self) -> int | None:
        return None if self._hub is None else self._hub.pid

    async def _start_proxy(self, proxy_port: int, api_port: int, hub_port: int) -> None:
        env = dict(os.environ, CONFIGPROXY_AUTH_TOKEN=self.proxy_token)
        log = _append_fd(self.proxy_log_path)
        try:
            self._proxy = await asyncio.create_subprocess_exec(
                _executable("configurable-http-proxy"),
                "--ip", "127.0.0.1", "--port", str(proxy_port),
                "--api-ip", "127.0.0.1", "--api-port", str(api_port),
                "--default-target", f"http://127.0.0.1:{hub_port}",
                "--error-target", f"http://127.0.0.1:{hub_port}/hub/error",
                "--log-level", "warn",
                stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log, env=env,
            )
        finally:
            os.close(log)
        await _wait_http(
            f"{self.proxy_api_url}/api/routes",
            f"token {self.proxy_token}",
            self._proxy,
            self.proxy_log_path,
            self.start_timeout,
        )

    async def _start_hub(self) -> None:
        log = _append_fd(self.log_path)
        try:
            self._hub = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "jupyterhub", "-f", str(self.config_path),
                cwd=self.config_dir,
                stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log,
            )
        finally:
            os.close(log)
        await _wait_http(
            f"{self.api_url}/", f"token {self.token}", self._hub, self.log_path,
            self.start_timeout,
        )

    async def restart(self) -> None:
        """Stop the hub process and start it again with the same database and proxy."""
        await _terminate(self._hub)
        await self._start_hub()

    async def stop(self) -> None:
        """Stop the hub, then the proxy (idempotent)."""
        await _terminate(self._hub)
        await _terminate(self._proxy)


@asynccontextmanager
async def running_hub(
    config: str = "",
    *,
    directory: Path | None = None,
    start_timeout: float = 90.0,
) -> AsyncIterator[RunningHub]:
    """Run a JupyterHub with ``config`` (Python source) appended to the base config.

    ``directory`` keeps the config, database and logs (a fresh temporary directory, removed
    afterwards, when None). Everything is stopped on exit, even when the body raised.
    """
    own_dir = directory is None
    config_dir = Path(tempfile.mkdtemp(prefix="hub-resilience-hub-")) if own_dir else directory
    config_dir.mkdir(parents=True, exist_ok=True)
    proxy_port, api_port, hub_port, responder_port = (unused_port() for _ in range(4))
    token = secrets.token_hex(24)
    proxy_token = secrets.token_hex(24)
    config_path = config_dir / "jupyterhub_config.py"
    config_path.write_text(
        BASE_CONFIG.format(
            proxy_port=proxy_port,
            hub_port=hub_port,
            proxy_api_port=api_port,
            responder_port=responder_port,
            config_dir=config_dir,
            proxy_token=proxy_token,
            service=SERVICE_NAME,
            token=token,
        )
        + textwrap.dedent(config)
        + "\n"
    )
    hub = RunningHub(
        url=f"http://127.0.0.1:{proxy_port}",
        api_url=f"http://127.0.0.1:{hub_port}/hub/api",
        token=token,
        config_dir=config_dir,
        log_path=config_dir / "jupyterhub.log",
        proxy_log_path=config_dir / "proxy.log",
        proxy_api_url=f"http://127.0.0.1:{api_port}",
        proxy_token=proxy_token,
        config_path=config_path,
        start_timeout=start_timeout,
    )
    try:
        await hub._start_proxy(proxy_port, api_port, hub_port)
        await hub._start_hub()
        yield hub
    finally:
        await hub.stop()
        if own_dir:
            shutil.rmtree(config_dir, ignore_errors=True)


# -- helpers --------------------------------------------------------------------------------


async def wait_until(
    predicate: Callable[[], bool], *, timeout: float = 60.0, interval: float = 0.02, what: str = ""
) -> None:
    """Poll ``predicate`` until it is true; TimeoutError after ``timeout`` seconds (a safety
    net against hangs, generous on purpose: it is not a timing assertion)."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"not true after {timeout}s: {what or predicate}")
        await asyncio.sleep(interval)




async def create_users(
    client: HubClient, names: Sequence[str], *, admin: bool = False, batch_size: int = 250
) -> None:
    """Create users with ``POST /users`` in batches (much faster than one by one)."""
    for start in range(0, len(names), batch_size):
        await client.create_users(list(names[start : start + batch_size]), admin=admin)


async def gather_limited(coros: Iterable[Any], limit: int) -> list[Any]:
    """Await coroutines with at most ``limit`` running at once; results in order."""
    semaphore = asyncio.Semaphore(limit)

    async def run(coro: Any) -> Any:
        async with semaphore:
            return await coro

    return await asyncio.gather(*(run(c) for c in coros))


async def start_servers(
    client: HubClient,
    servers: Iterable[tuple[str, str] | tuple[str, str, dict[str, Any]]],
    *,
    wait: bool = True,
    limit: int = 8,
) -> None:
    """Start ``(user, server_name[, user_options])`` servers, ``limit`` at a time; with
    ``wait``, until each is ready (so a server meant to stay pending needs ``wait=False``)."""

    async def one(spec: tuple[Any, ...]) -> None:
        name, server_name, *rest = spec
        options = rest[0] if rest else None
        if wait:
            await client.start_server_and_wait(
                name, server_name, user_options=options, poll_interval=0.2, timeout=120
            )
        else:
            await client.start_server(name, server_name, user_options=options)

    await gather_limited((one(tuple(s)) for s in servers), limit)
