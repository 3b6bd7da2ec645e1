"""The resilience service: one process beside the hub for the stopped-server handler, the
culler, and their metrics.

Why one process: operators switch on one thing (``configure(c)`` starts it as a managed
service), and it must outlive a hub that restarts or dies under it. What it serves, how it
survives the hub and how to run it are in docs/service.md.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import time
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from tornado import web
from tornado.httpclient import AsyncHTTPClient
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets
from traitlets import Bool, Bunch, Enum, Float, Integer, TraitError, Unicode, default, validate
from traitlets.config import LoggingConfigurable

from hub_resilience.backoff import BackoffPolicy
from hub_resilience.hubclient import HubClient
from hub_resilience.service.culler import Culler
from hub_resilience.service.metrics import (
    REGISTRY,
    SERVICE_CULLER_ENABLED,
    SERVICE_ORPHANED,
    STOPPED_SERVER_RESPONSES,
    StoppedKind,
)
from hub_resilience.service.running import RunningServers
from hub_resilience.service.stopped import StoppedServerHandler, StoppedSettings
from hub_resilience.waiting import set_within

log = logging.getLogger("hub_resilience.service")

#: Handlers whose requests are logged at debug level: a storm of stopped-server requests,
#: probes and scrapes must not flood the hub pod's log.
QUIET_HANDLERS = ("StoppedServerHandler", "HealthHandler", "MetricsHandler")


class ResilienceService(LoggingConfigurable):
    """The service process: a tornado app, the culler, and the watch on the parent hub."""

    ip = Unicode(
        "127.0.0.1",
        help='Address to listen on; "" (every interface, IPv4 and IPv6) in a hub pod, so '
        "the proxy pod can connect.",
    ).tag(config=True)

    port = Integer(8181, help="Port to listen on (the proxy's /user/ route targets it).").tag(
        config=True
    )

    base_url = Unicode(
        "/", help="JupyterHub.base_url: the handler answers {base_url}user/..."
    ).tag(config=True)

    stopped_status = Enum(
        [424, 503, 404],
        default_value=424,
        help="Status for requests to stopped servers: the hub's (424, or 503 with "
        "use_legacy_stopped_server_status_code), or 404.",
    ).tag(config=True)

    named_servers = Bool(
        False,
        help="JupyterHub.allow_named_servers: /user/<name>/<segment>/ may name a server.",
    ).tag(config=True)

    stopped_handler = Bool(True, help="Answer requests for stopped servers.").tag(config=True)

    running_servers_max_age = Float(
        30.0,
        help="Seconds the handler trusts its listing of the hub's running servers, by which "
        "it tells a running server whose proxy route is missing (sent where the hub serves "
        "it, counted as kind route_missing) from a stopped one. A request for a stopped "
        "server lists them again (GET /users?state=ready, one listing for all users) when the "
        "last listing is older. 0: never list; every request is answered as stopped.",
    ).tag(config=True)

    cull = Bool(True, help="Run the culler (configured as c.Culler.<option>).").tag(config=True)

    watch_parent = Bool(
        False,
        help="Treat the parent process as the hub that manages this service: when it is gone, "
        "pause the culler and exit once a new service answers on the port (or after "
        "orphan_timeout). configure() sets it.",
    ).tag(config=True)

    parent_check_interval = Float(
        1.0, help="Seconds between checks of the parent hub, and of a successor, when orphaned."
    ).tag(config=True)

    orphan_timeout = Float(
        600.0,
        help="Seconds an orphaned service keeps answering before it exits even without a "
        "successor.",
    ).tag(config=True)

    shutdown_timeout = Float(
        5.0,
        help="Seconds to let requests in progress finish when stopping (below the 10 s the "
        "hub waits for a managed service to stop after SIGINT).",
    ).tag(config=True)

    @default("log")
    def _default_log(self) -> logging.Logger:
        return log

    @validate("port")
    def _valid_port(self, proposal: Bunch) -> int:
        if not 1 <= proposal.value <= 65535:
            raise TraitError(f"ResilienceService.port must be a port number, not {proposal.value}")
        return proposal.value

    @validate("base_url")
    def _valid_base_url(self, proposal: Bunch) -> str:
        value = proposal.value
        if not value.startswith("/"):
            value = "/" + value
        return value if value.endswith("/") else value + "/"

    @validate("running_servers_max_age")
    def _finite_non_negative(self, proposal: Bunch) -> float:
        if not 0 <= proposal.value < float("inf"):
            raise TraitError(
                f"ResilienceService.running_servers_max_age must be >= 0 and finite, not "
                f"{proposal.value}"
            )
        return proposal.value

    @validate("parent_check_interval", "orphan_timeout", "shutdown_timeout")
    def _positive(self, proposal: Bunch) -> float:
        if not proposal.value > 0:
            raise TraitError(
                f"ResilienceService.{proposal.trait.name} must be > 0, not {proposal.value}"
            )
        return proposal.value

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.culler: Culler | None = Culler(parent=self) if self.cull else None
        if self.culler is not None:
            self.culler.client  # noqa: B018 - fail now when JUPYTERHUB_API_URL/TOKEN are unset
        self.orphaned = False
        self.started_at = time.time()
        self._server: HTTPServer | None = None
        self._stopping = asyncio.Event()
        self._culler_paused = False
        self._tasks: list[asyncio.Task] = []
        self.running = self._running_servers()
        if self.culler is not None and self.running is not None:
            self.culler.on_server_stopped = self.running.forget

    def _running_servers(self) -> RunningServers | None:
        """The handler's listing of running servers, with the hub API this service runs
        under; None when off, or when there is no hub API to ask (a warning says so)."""
        if not (self.stopped_handler and self.running_servers_max_age):
            return None
        try:
            client = HubClient.from_environment(
                # A listing holds the requests waiting for it: a few quick tries, then the
                # last listing is used.
                policy=BackoffPolicy(base=0.5, cap=2, max_attempts=3, deadline=10,
                                     retry_after_cap=5),
                request_timeout=10,
                component="stopped_handler",
                logger=self.log,
            )
        except ValueError as e:
            self.log.warning("Running servers are not listed (%s): a running server whose "
                             "route is missing is answered as stopped", e)
            return None
        return RunningServers(client, self.running_servers_max_age)

    # -- the web application ----------------------------------------------------------------

    @property
    def stopped_settings(self) -> StoppedSettings:
        return StoppedSettings(
            base_url=self.base_url, status=self.stopped_status, named_servers=self.named_servers
        )

    def make_app(self) -> web.Application:
        handlers: list[Any] = [
            (r"/health", HealthHandler, {"service": self}),
            (r"/metrics", MetricsHandler),
        ]
        if self.stopped_handler:
            handlers.append((
                rf"{re.escape(self.base_url)}user(?:/.*)?",
                StoppedServerHandler,
                {"settings": self.stopped_settings, "running": self.running},
            ))
        return web.Application(
            handlers, default_handler_class=NotFoundHandler, log_function=log_request
        )

    def health(self) -> dict[str, Any]:
        """What ``/health`` reports."""
        culler: dict[str, Any] | None = None
        if self.culler is not None:
            report = self.culler.last_report
            last = None
            if report is not None:
                last = {
                    "ok": report.error is None,
                    "error": report.error,
                    "seconds_since_end": round(time.monotonic() - report.ended_at, 1),
                    "servers_culled": report.servers_culled,
                    "users_culled": report.users_culled,
                }
            culler = {
                "running": not self._culler_paused,
                "timeout": self.culler.timeout,
                "period": self.culler.period,
                "cycles": self.culler.cycles_run,
                "last_cycle": last,
            }
        return {
            "status": "stopping" if self._stopping.is_set() else "ok",
            "pid": os.getpid(),
            "uptime_seconds": round(time.time() - self.started_at, 1),
            "orphaned": self.orphaned,
            "stopped_handler": self.stopped_handler,
            "stopped_status": self.stopped_status,
            "culler": culler,
        }

    # -- running ----------------------------------------------------------------------------

    def listen(self) -> None:
        """Bind the port (with SO_REUSEPORT, so a successor can bind while an orphan runs)."""
        sockets = bind_sockets(self.port, address=self.ip, reuse_port=True)
        self._server = HTTPServer(self.make_app())
        self._server.add_sockets(sockets)
        self.log.info(
            "hub-resilience service listening on %s:%d (stopped-server handler: %s, "
            "culler: %s)",
            self.ip, self.port,
            f"{self.base_url}user/ -> {self.stopped_status}" if self.stopped_handler else "off",
            "on" if self.culler is not None else "off",
        )

    async def run(self) -> None:
        """Serve until :meth:`stop`; returns after a clean shutdown."""
        settings = self.stopped_settings
        for kind in StoppedKind:  # every series exists from the start, at 0
            for status in settings.statuses_of(kind):
                STOPPED_SERVER_RESPONSES.labels(kind, str(status))
        SERVICE_ORPHANED.set(0)
        if self._server is None:
            self.listen()
        if self.culler is not None:
            SERVICE_CULLER_ENABLED.set(1)
            self._tasks.append(asyncio.create_task(self._run_culler()))
        else:
            SERVICE_CULLER_ENABLED.set(0)
        if self.watch_parent:
            self._tasks.append(asyncio.create_task(self._watch_parent()))
        await self._stopping.wait()
        await self._shutdown()

    def stop(self) -> None:
        """Ask :meth:`run` to shut down (signal handlers call this)."""
        if not self._stopping.is_set():
            self.log.info("Stopping the hub-resilience service")
        self._stopping.set()
        if self.culler is not None:
            self.culler.stop()

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.stop()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.culler is not None:
            await self.culler.close()
        if self.running is not None:
            await self.running.client.close()
        if self._server is not None:
            try:
                await asyncio.wait_for(self._server.close_all_connections(), self.shutdown_timeout)
            except asyncio.TimeoutError:
                self.log.warning("Connections still open after %.0fs; exiting anyway",
                                 self.shutdown_timeout)

    async def _run_culler(self) -> None:
        """Run the culler; if it ever fails outright, restart it after a pause (the handler
        keeps serving whatever happens to the culler)."""
        assert self.culler is not None
        while not self._stopping.is_set() and not self._culler_paused:
            try:
                await self.culler.run_forever()
            except asyncio.CancelledError:
                raise
            except Exception:
                self.log.exception("The culler failed; restarting it in %.0fs",
                                   self.culler.period)
                if await set_within(self._stopping, self.culler.period):
                    return
            else:
                return  # stopped on purpose

    def _pause_culler(self) -> None:
        if self.culler is not None and not self._culler_paused:
            self._culler_paused = True
            SERVICE_CULLER_ENABLED.set(0)
            self.culler.stop()

    async def _watch_parent(self) -> None:
        parent = os.getppid()
        while os.getppid() == parent:
            if await set_within(self._stopping, self.parent_check_interval):
                return
        self.orphaned = True
        SERVICE_ORPHANED.set(1)
        self.log.warning(
            "The hub process (pid %d) that started this service is gone: culler paused; still "
            "answering stopped-server requests until a new hub's service answers on port %d "
            "(at most %.0fs)", parent, self.port, self.orphan_timeout,
        )
        self._pause_culler()
        deadline = time.monotonic() + self.orphan_timeout
        while True:
            if await self._successor_answers():
                self.log.info("A new hub-resilience service answers on port %d; exiting",
                              self.port)
                break
            if time.monotonic() > deadline:
                self.log.warning("No new hub-resilience service after %.0fs; exiting",
                                 self.orphan_timeout)
                break
            if await set_within(self._stopping, self.parent_check_interval):
                return
        self.stop()

    async def _successor_answers(self, attempts: int = 4) -> bool:
        """Whether another process answers /health on our port. Each attempt is a new
        connection, which the kernel hands to one of the listening sockets."""
        host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(self.ip, self.ip)
        if ":" in host:
            host = f"[{host}]"
        http = AsyncHTTPClient(force_instance=True)
        try:
            for _ in range(attempts):
                try:
                    response = await http.fetch(
                        f"http://{host}:{self.port}/health", request_timeout=2, raise_error=False
                    )
                    pid = json.loads(response.body or b"{}").get("pid")
                except Exception:  # not answering, or not JSON: no successor seen this time
                    continue
                if isinstance(pid, int) and pid != os.getpid():
                    return True
        finally:
            http.close()
        return False


class HealthHandler(web.RequestHandler):
    """``GET /health``: 200 and a JSON summary while the service serves."""

    def initialize(self, service: ResilienceService) -> None:
        self.service = service

    def get(self) -> None:
        self.set_header("Content-Type", "application/json")
        self.set_header("Cache-Control", "no-store")
        self.finish(json.dumps(self.service.health()))


class MetricsHandler(web.RequestHandler):
    """``GET /metrics``: this process's Prometheus metrics."""

    def get(self) -> None:
        self.set_header("Content-Type", CONTENT_TYPE_LATEST)
        self.finish(generate_latest(REGISTRY))


class NotFoundHandler(web.RequestHandler):
    """Anything else: a small JSON 404."""

    def prepare(self) -> None:
        self.set_status(404)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"status": 404, "message": "Not found"}))


def log_request(handler: web.RequestHandler) -> None:
    """Tornado's access log, quiet for the handler, probes and scrapes."""
    status = handler.get_status()
    quiet = type(handler).__name__ in QUIET_HANDLERS
    level = logging.ERROR if status >= 500 else (logging.DEBUG if quiet else logging.INFO)
    log.log(level, "%d %s %s %.1fms", status, handler.request.method, handler.request.path,
            1000 * handler.request.request_time())
