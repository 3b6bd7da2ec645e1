"""Run a real JupyterHub with its real configurable-http-proxy on this machine, on loopback.

The demo, the benchmarks and the integration tests all need the same thing: a throwaway hub
that is the real program, started in seconds, reachable only from this machine, and gone
without a trace afterwards, whose hub process can be restarted alone. Usage, the base config
and its guarantees are in docs/benchmarks.md ("The local hub").
"""
from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import secrets
import shutil
import signal
import socket
import sys
import tempfile
import textwrap
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlparse

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

from hub_resilience.backoff import BackoffPolicy
from hub_resilience.hubclient import HubClient

LOOPBACK = "127.0.0.1"

BASE_CONFIG = """\
# Written by hub_resilience.tools.localhub; the caller's own config follows the marker below.
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
c.JupyterHub.spawner_class = "hub_resilience.tools.simulated_spawner.SimulatedSpawner"
c.SimulatedSpawner.responder_port = {responder_port}
c.JupyterHub.services = [{{"name": "{service}", "api_token": "{token}"}}]
# The admin role (not just its scopes): creating admin users requires an admin requester.
c.JupyterHub.load_roles = [{{"name": "admin", "services": ["{service}"]}}]
# ---- caller's config ----
"""

#: Linux prctl(2) option: the signal a child receives when the thread that forked it exits.
_PR_SET_PDEATHSIG = 1


def unused_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def executable(name: str) -> str:
    """The full path of a program on PATH, or a RuntimeError saying how to get it."""
    path = shutil.which(name)
    if path is None:
        raise RuntimeError(
            f"{name} is not on PATH; run `source scripts/env.sh` (after scripts/bootstrap.sh)"
        )
    return path


def _terminate_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        except (OSError, AttributeError):
            pass


async def terminate(proc: asyncio.subprocess.Process | None, timeout: float = 15.0) -> None:
    """SIGTERM, then SIGKILL if needed, and always reap."""
    if proc is None or proc.returncode is not None:
        return
    try:
        proc.send_signal(signal.SIGTERM)
    except ProcessLookupError:
        pass
    try:
        await asyncio.wait_for(proc.wait(), timeout)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()


def processes_with_env(name: str, value: str) -> list[int]:
    """This user's processes whose environment sets ``name`` to ``value`` (a trailing
    slash aside): a hub's services carry its JUPYTERHUB_API_URL."""
    wanted = f"{name}={value.rstrip('/')}".encode()
    found = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            variables = environ.read_bytes().split(b"\0")
        except OSError:  # another user's, or gone
            continue
        if any(v.rstrip(b"/") == wanted for v in variables):
            found.append(int(environ.parent.name))
    return found


def tail(path: Path, lines: int = 40) -> str:
    """The last lines of a log file, for error messages."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


async def wait_http(
    url: str,
    token_header: str | None,
    proc: asyncio.subprocess.Process,
    log_path: Path,
    timeout: float,
) -> None:
    """Wait until ``url`` answers 200 (with the given Authorization header, if any), failing
    early with the log's tail when ``proc``, which is to serve it, has exited."""
    http = AsyncHTTPClient(force_instance=True)
    deadline = time.monotonic() + timeout
    try:
        while True:
            if proc.returncode is not None:
                raise RuntimeError(
                    f"process exited with {proc.returncode} before {url} answered; "
                    f"log tail:\n{tail(log_path)}"
                )
            try:
                response = await http.fetch(
                    HTTPRequest(
                        url,
                        headers={"Authorization": token_header} if token_header else None,
                        request_timeout=5,
                    ),
                    raise_error=False,
                )
            except (OSError, HTTPClientError):  # refused, reset, or no answer in time (599)
                response = None
            if response is not None and response.code == 200:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{url} did not answer within {timeout}s; log tail:\n{tail(log_path)}"
                )
            await asyncio.sleep(0.1)
    finally:
        http.close()


def _append_fd(path: Path) -> int:
    """A file descriptor appending to ``path``, for a child's stdout and stderr."""
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)


def _port(url: str) -> int:
    port = urlparse(url).port
    if port is None:
        raise ValueError(f"no port in {url}")
    return port


async def start_proxy(
    *,
    port: int,
    api_port: int,
    default_target: str,
    token: str,
    log_path: Path,
    timeout: float = 90.0,
) -> asyncio.subprocess.Process:
    """configurable-http-proxy on loopback with an empty route table, once its API answers
    (a RuntimeError with its log's tail otherwise); its output is appended to ``log_path``.
    Requests no route matches go to ``default_target``, as with JupyterHub's own proxy."""
    env = dict(os.environ, CONFIGPROXY_AUTH_TOKEN=token)
    log = _append_fd(log_path)
    try:
        proxy = await asyncio.create_subprocess_exec(
            executable("configurable-http-proxy"),
            "--ip", LOOPBACK, "--port", str(port),
            "--api-ip", LOOPBACK, "--api-port", str(api_port),
            "--default-target", default_target,
            "--error-target", f"{default_target}/hub/error",
            "--log-level", "warn",
            stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log, env=env,
            preexec_fn=_terminate_with_parent,
        )
    finally:
        os.close(log)
    await wait_http(
        f"http://{LOOPBACK}:{api_port}/api/routes", f"token {token}", proxy, log_path, timeout
    )
    return proxy


@dataclass
class LocalHub:
    """A JupyterHub and its proxy running as subprocesses (see :func:`local_hub`)."""

    url: str  # public URL, through configurable-http-proxy
    api_url: str  # the hub's REST API, directly
    token: str  # admin token (of the service named in the base config)
    config_dir: Path
    log_path: Path  # the hub's stdout and stderr, across restarts
    proxy_log_path: Path
    proxy_api_url: str
    proxy_token: str
    config_path: Path
    start_timeout: float = 90.0
    env: Mapping[str, str] | None = None  # extra environment for the hub process
    base_config: str = ""
    python: str = sys.executable  # the interpreter (and so the packages) the hub runs on
    _hub: asyncio.subprocess.Process | None = field(default=None, repr=False)
    _proxy: asyncio.subprocess.Process | None = field(default=None, repr=False)

    #: ``component`` label of this hub's clients in the hub_resilience_hub_api_* metrics.
    client_component = "local"

    def client(self, **kwargs: Any) -> HubClient:
        """A HubClient with the admin token (short backoff)."""
        kwargs.setdefault("component", self.client_component)
        kwargs.setdefault("concurrency", 8)
        kwargs.setdefault(
            "policy", BackoffPolicy(base=0.1, cap=2.0, max_attempts=8, deadline=60.0)
        )
        return HubClient(self.api_url, self.token, **kwargs)

    @property
    def metrics_url(self) -> str:
        """The hub's Prometheus endpoint, through the proxy."""
        return f"{self.url}/hub/metrics"

    def log_text(self) -> str:
        """Everything the hub has logged so far."""
        return self.log_path.read_text(errors="replace")

    @property
    def hub_pid(self) -> int | None:
        return None if self._hub is None else self._hub.pid

    @property
    def hub_exit_code(self) -> int | None:
        """The hub process's exit code once it has exited by itself (as JupyterHub does at
        its consecutive_failure_limit), None while it runs."""
        return None if self._hub is None else self._hub.returncode

    @property
    def proxy_pid(self) -> int | None:
        return None if self._proxy is None else self._proxy.pid

    def write_config(self, config: str) -> None:
        """Replace the caller's part of the config (takes effect at the next (re)start)."""
        self.config_path.write_text(self.base_config + textwrap.dedent(config) + "\n")

    async def _start_proxy(self) -> None:
        """A proxy on this hub's ports (read from its URLs), with an empty route table."""
        self._proxy = await start_proxy(
            port=_port(self.url),
            api_port=_port(self.proxy_api_url),
            default_target=f"http://{LOOPBACK}:{_port(self.api_url)}",
            token=self.proxy_token,
            log_path=self.proxy_log_path,
            timeout=self.start_timeout,
        )

    async def _start_hub(self) -> None:
        log = _append_fd(self.log_path)
        env = dict(os.environ, **(self.env or {}))
        try:
            self._hub = await asyncio.create_subprocess_exec(
                self.python, "-m", "jupyterhub", "-f", str(self.config_path),
                cwd=self.config_dir, env=env,
                stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log,
                preexec_fn=_terminate_with_parent,
            )
        finally:
            os.close(log)
        await wait_http(
            f"{self.api_url}/", f"token {self.token}", self._hub, self.log_path,
            self.start_timeout,
        )

    async def wait_for_service(self, url: str, timeout: float = 60.0) -> None:
        """Wait until a service the hub starts (in the background, after the hub itself
        answers) answers 200 at ``url``; a RuntimeError with the hub's log tail otherwise."""
        if self._hub is None:
            raise RuntimeError("the hub is not running")
        await wait_http(url, None, self._hub, self.log_path, timeout)

    async def wait_for_exit(self, timeout: float) -> int | None:
        """Wait up to ``timeout`` seconds for the hub process to exit by itself (as
        JupyterHub does at its consecutive_failure_limit); its exit code, or None if it
        still runs."""
        if self._hub is None:
            raise RuntimeError("the hub is not running")
        try:
            return await asyncio.wait_for(self._hub.wait(), timeout)
        except asyncio.TimeoutError:
            return None

    async def restart(self) -> None:
        """Stop the hub process and start it again with the same database and proxy."""
        await terminate(self._hub)
        await self._start_hub()

    async def proxy_routes(self) -> dict[str, Any]:
        """The proxy's route table, from its API: routespec (no trailing slash) -> route."""
        http = AsyncHTTPClient(force_instance=True)
        try:
            response = await http.fetch(HTTPRequest(
                f"{self.proxy_api_url}/api/routes",
                headers={"Authorization": f"token {self.proxy_token}"}, request_timeout=30,
            ))
        finally:
            http.close()
        routes: dict[str, Any] = json.loads(response.body)
        return routes

    async def remove_proxy_route(self, routespec: str) -> None:
        """Delete one route from the proxy, as a lost route looks (the hub is not told)."""
        http = AsyncHTTPClient(force_instance=True)
        try:
            await http.fetch(HTTPRequest(
                f"{self.proxy_api_url}/api/routes{routespec}", method="DELETE",
                headers={"Authorization": f"token {self.proxy_token}"}, request_timeout=30,
            ))
        finally:
            http.close()

    async def restart_proxy(self) -> None:
        """Kill the proxy (SIGKILL, as when its pod is deleted or crashes) and start a new one
        on the same ports with an empty route table, as a new proxy pod starts; the hub is
        not told (it finds out at its next route check)."""
        if self._proxy is not None and self._proxy.returncode is None:
            self._proxy.kill()
            await self._proxy.wait()
        await self._start_proxy()

    async def stop(self) -> None:
        """Stop the hub, then the proxy (idempotent); after a hub that exited by itself,
        also the services it started, which JupyterHub then leaves running."""
        exited = self.hub_exit_code is not None
        await terminate(self._hub)
        await terminate(self._proxy)
        if exited:
            for pid in processes_with_env("JUPYTERHUB_API_URL", self.api_url):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)


HubT = TypeVar("HubT", bound=LocalHub)


@asynccontextmanager
async def local_hub(
    config: str = "",
    *,
    directory: Path | None = None,
    start_timeout: float = 90.0,
    service_name: str = "hub-resilience-admin",
    env: Mapping[str, str] | None = None,
    hub_class: type[HubT] = LocalHub,  # type: ignore[assignment]
    python: str | None = None,
) -> AsyncIterator[HubT]:
    """Run a JupyterHub with ``config`` (Python source) appended to the base config.

    ``directory`` keeps the config, database and logs (a fresh temporary directory, removed
    afterwards, when None). ``env`` is added to the hub process's environment; ``python``
    runs the hub (this process's interpreter when None). Everything is stopped on exit,
    even when the body raised.
    """
    own_dir = directory is None
    config_dir = (
        Path(tempfile.mkdtemp(prefix="hub-resilience-hub-")) if directory is None else directory
    )
    config_dir.mkdir(parents=True, exist_ok=True)
    proxy_port, api_port, hub_port, responder_port = (unused_port() for _ in range(4))
    token = secrets.token_hex(24)
    proxy_token = secrets.token_hex(24)
    base = BASE_CONFIG.format(
        proxy_port=proxy_port,
        hub_port=hub_port,
        proxy_api_port=api_port,
        responder_port=responder_port,
        config_dir=config_dir,
        proxy_token=proxy_token,
        service=service_name,
        token=token,
    )
    hub = hub_class(
        url=f"http://{LOOPBACK}:{proxy_port}",
        api_url=f"http://{LOOPBACK}:{hub_port}/hub/api",
        token=token,
        config_dir=config_dir,
        log_path=config_dir / "jupyterhub.log",
        proxy_log_path=config_dir / "proxy.log",
        proxy_api_url=f"http://{LOOPBACK}:{api_port}",
        proxy_token=proxy_token,
        config_path=config_dir / "jupyterhub_config.py",
        start_timeout=start_timeout,
        env=env,
        base_config=base,
        python=python or sys.executable,
    )
    hub.write_config(config)
    try:
        await hub._start_proxy()
        await hub._start_hub()
        yield hub
    finally:
        await hub.stop()
        if own_dir:
            shutil.rmtree(config_dir, ignore_errors=True)
