"""Start a real JupyterHub, with its real configurable-http-proxy, for integration tests.

The launching itself lives in :mod:`hub_resilience.tools.localhub` (the demo and the benchmarks use
it too); this module keeps the tests' names for it and adds test helpers.

Usage::

    async with running_hub('c.JupyterHub.allow_named_servers = True') as hub:
        async with hub.client() as client:
            await create_users(client, ["alice", "bob"])
            await client.start_server_and_wait("alice")

Both run as subprocesses on free loopback ports, in a temporary directory holding the config,
the sqlite database and the logs. The hub uses :class:`hub_resilience.tools.simulated_spawner.
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
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from tornado.httpclient import AsyncHTTPClient, HTTPRequest, HTTPResponse

from hub_resilience.hubclient import HubClient
from hub_resilience.tools.localhub import BASE_CONFIG, LocalHub, local_hub, unused_port

__all__ = [
    "BASE_CONFIG",
    "HUB_FAMILY_PREFIXES",
    "SERVICE_FAMILY_PREFIXES",
    "SERVICE_NAME",
    "RunningHub",
    "create_users",
    "fetch",
    "gather_limited",
    "handler_answers",
    "metric_samples",
    "metric_sum",
    "promtool_check_metrics",
    "route_checks",
    "running_hub",
    "start_servers",
    "unused_port",
    "user_token",
    "wait_until",
]

SERVICE_NAME = "hub-resilience-tests"

#: Family name prefixes only the resilience service exports (hub_resilience.service.metrics).
SERVICE_FAMILY_PREFIXES = (
    "hub_resilience_hub_api_", "hub_resilience_culler_", "hub_resilience_stopped_server_",
    "hub_resilience_service_",
)
#: Family name prefixes only the hub exports (hub_resilience.hub.metrics, JupyterHub's own).
HUB_FAMILY_PREFIXES = (
    "hub_resilience_spawn", "hub_resilience_k8s_", "hub_resilience_user_pods", "jupyterhub_",
)


class RunningHub(LocalHub):
    """A JupyterHub and its proxy running as subprocesses (see :func:`running_hub`); its
    clients are labelled ``tests`` in the package's metrics."""

    client_component = "tests"


@asynccontextmanager
async def running_hub(
    config: str = "",
    *,
    directory: Path | None = None,
    start_timeout: float = 90.0,
    env: Mapping[str, str] | None = None,
    python: str | None = None,
) -> AsyncIterator[RunningHub]:
    """Run a JupyterHub with ``config`` (Python source) appended to the base config.

    ``directory`` keeps the config, database and logs (a fresh temporary directory, removed
    afterwards, when None); ``env`` is added to the hub's environment; ``python`` runs the
    hub (this interpreter when None). Everything is stopped on exit, even when the body
    raised.
    """
    async with local_hub(
        config,
        directory=directory,
        start_timeout=start_timeout,
        env=env,
        service_name=SERVICE_NAME,
        hub_class=RunningHub,
        python=python,
    ) as hub:
        yield hub


# -- helpers --------------------------------------------------------------------------------


async def fetch(url: str, **kwargs: Any) -> HTTPResponse:
    """One request, its response whatever the status (redirects not followed, 30 s timeout,
    unless given)."""
    http = AsyncHTTPClient(force_instance=True)
    try:
        kwargs.setdefault("request_timeout", 30)
        kwargs.setdefault("follow_redirects", False)
        return await http.fetch(HTTPRequest(url, **kwargs), raise_error=False)
    finally:
        http.close()


async def metric_samples(url: str, token: str | None = None) -> list[Any]:
    """Every sample at a Prometheus endpoint (the hub's needs a token)."""
    headers = {"Authorization": f"token {token}"} if token else {}
    response = await fetch(url, headers=headers)
    assert response.code == 200, (url, response.code)
    return [
        sample
        for family in text_string_to_metric_families(response.body.decode())
        for sample in family.samples
    ]


async def metric_sum(url: str, name: str, token: str | None = None, **labels: str) -> float:
    """The sum of the samples of ``name`` that have these labels, at a Prometheus endpoint."""
    return sum(
        sample.value for sample in await metric_samples(url, token)
        if sample.name == name and labels.items() <= sample.labels.items()
    )


async def handler_answers(port: int, **labels: str) -> float:
    """Requests the stopped-server handler has answered, from the service on ``port``."""
    return await metric_sum(
        f"http://127.0.0.1:{port}/metrics", "hub_resilience_stopped_server_responses_total",
        **labels,
    )


async def route_checks(hub: LocalHub) -> float:
    """Route checks the hub has run (JupyterHub's metric; route repair's checks included)."""
    return await metric_sum(
        hub.api_url.removesuffix("/api") + "/metrics",
        "jupyterhub_check_routes_duration_seconds_count", hub.token,
    )


async def user_token(client: HubClient, name: str) -> str:
    """A token of user ``name``, so a test browser (or tab) is logged in as that user."""
    response = await client.request(
        "POST", f"/users/{name}/tokens", body={"note": "test browser"}, retry_safe=False
    )
    return str(response.json()["token"])


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


async def promtool_check_metrics(text: str) -> str:
    """``promtool check metrics`` on an exposition; returns what it printed (empty when the
    exposition is valid and lint-clean), after asserting it exited 0."""
    promtool = await asyncio.create_subprocess_exec(
        "promtool", "check", "metrics",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await promtool.communicate(text.encode())
    # promtool exits non-zero on an invalid exposition and prints lint problems (e.g. a
    # counter without _total, a missing help string).
    assert promtool.returncode == 0, output.decode()
    return output.decode().strip()
