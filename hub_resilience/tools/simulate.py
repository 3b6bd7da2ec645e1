"""``hub-resilience simulate``: rehearse an event by driving simulated users against a hub.

Operators want to know, before the workshop, what hundreds of students clicking "Start" at
once will do to their hub. The run is :class:`Simulation` (I/O only, one client per user);
every figure is computed by :mod:`hub_resilience.tools.loadreport`. What it does step by step
is in docs/benchmarks.md; when to use it, in docs/runbook.md.
"""
from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import logging
import math
import os
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, TextIO
from urllib.parse import quote

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

from hub_resilience.backoff import BackoffPolicy
from hub_resilience.hubclient import (
    HUB_API_REGISTRY,
    HubAPIError,
    HubClient,
    HubUnavailableError,
    SpawnFailedError,
    StopResult,
)
from hub_resilience.tools.chart import (
    ChartUnavailable,
    add_chart_argument,
    check_chart_path,
    draw,
)
from hub_resilience.tools.loadreport import (
    FAILURE_REASONS,
    Arrival,
    HubLoad,
    HubScrape,
    LoadReport,
    UserOutcome,
    arrival_offsets,
    build_report,
    describe_arrival,
    format_report,
    hub_load,
    parse_hub_metrics,
    render_progress,
)
from hub_resilience.tools.timeline import Timeline, loop_between, users_at
from hub_resilience.waiting import set_within

log = logging.getLogger(__name__)

#: ``component`` label of the simulated users' spawn requests (hub_resilience_hub_api_*).
USERS_COMPONENT = "simulate"
#: ``component`` label of set-up, activity and clean-up requests.
SETUP_COMPONENT = "simulate_setup"

#: What a JupyterLab tab polls on its server; the simulated tab cycles through these.
TAB_PATHS = ("api/kernels", "api/sessions", "api/terminals", "api/contents?content=0")
#: The headers a browser sends with a page navigation (what the handler sends to the hub).
NAVIGATION_HEADERS = {
    "Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
    "Sec-Fetch-Mode": "navigate",
    "Sec-Fetch-Dest": "document",
}

CLIENTS = ("backoff", "immediate")

#: With a timeline recorded (--chart): seconds between samples of the users, and between
#: readings of the hub's metrics (its event-loop interval), as often as Prometheus might.
SAMPLE_EVERY, SCRAPE_EVERY = 1.0, 5.0


@dataclass(frozen=True)
class SimulationPlan:
    """What to simulate. Validated on creation; errors name the command-line flag."""

    users: int = 100
    arrival: Arrival = Arrival.BURST
    rate: float | None = None  # users per second, for steady arrival
    ramp_seconds: float | None = None  # for ramp arrival
    client: str = "backoff"
    timeout: float = 300.0  # seconds a user keeps trying to get a ready server
    hold: float = 0.0  # seconds a user keeps the server once it is ready
    activity_interval: float = 0.0  # post activity this often while holding (0: never)
    stop: bool = False  # stop the server after the hold
    tab_requests: int = 0  # browser-tab requests to the stopped server
    tab_interval: float = 1.0
    working_tab_interval: float = 0.0  # while holding, the open tab polls the server (0: no)
    user_prefix: str = "sim-"
    cleanup: bool = True
    request_timeout: float = 60.0

    def __post_init__(self) -> None:
        arrival_offsets(self.arrival, self.users, rate=self.rate, ramp_seconds=self.ramp_seconds)
        if self.client not in CLIENTS:
            raise ValueError(f"--client must be one of {', '.join(CLIENTS)}, not {self.client!r}")
        positive = {"--timeout": self.timeout, "--request-timeout": self.request_timeout,
                    "--tab-interval": self.tab_interval}
        for flag, value in positive.items():
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{flag} must be a number of seconds > 0, not {value!r}")
        for flag, value in {"--hold": self.hold,
                            "--activity-interval": self.activity_interval,
                            "--working-tab-interval": self.working_tab_interval}.items():
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{flag} must be a number of seconds >= 0, not {value!r}")
        if self.tab_requests < 0:
            raise ValueError(f"--tab-requests must be >= 0, not {self.tab_requests}")
        if not self.user_prefix or "/" in self.user_prefix:
            raise ValueError(f"--user-prefix must be non-empty without '/', not "
                             f"{self.user_prefix!r}")

    @property
    def stops(self) -> bool:
        """Whether users stop their servers (asked for, or needed for tab traffic)."""
        return self.stop or self.tab_requests > 0

    def user_names(self) -> list[str]:
        digits = max(4, len(str(self.users)))
        return [f"{self.user_prefix}{i:0{digits}d}" for i in range(1, self.users + 1)]

    def describe_arrival(self) -> str:
        return describe_arrival(self.arrival, rate=self.rate, ramp_seconds=self.ramp_seconds)


def client_policy(client: str, timeout: float) -> BackoffPolicy:
    """The retry policy of a simulated user's client.

    ``backoff``: this package's policy, honouring the hub's Retry-After (the hub suggests up
    to a minute by default), retrying for as long as the user is willing to wait (a student
    keeps trying until the workshop gives up on them, not for six attempts). ``immediate``:
    a refused spawn is sent again within a millisecond, ignoring Retry-After.
    """
    if client == "immediate":
        return BackoffPolicy(
            base=0.001, cap=0.001, max_attempts=10**9, deadline=timeout,
            retry_after_cap=0.0, retry_after_jitter=0.0,
        )
    return BackoffPolicy(
        base=0.5, cap=30.0, max_attempts=10**6, deadline=timeout, retry_after_cap=120.0
    )


def _counter(name: str, **labels: str) -> float:
    """Sum of a counter's samples in this process whose labels include ``labels``."""
    total = 0.0
    for family in HUB_API_REGISTRY.collect():
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def _absorbed() -> float:
    return sum(
        _counter("hub_resilience_hub_api_retries_total", component=USERS_COMPONENT, reason=r)
        for r in ("429", "503")
    )


def _spawn_attempts() -> float:
    return _counter(
        "hub_resilience_hub_api_requests_total", component=USERS_COMPONENT, method="POST"
    )


@dataclass(frozen=True)
class Progress:
    """A snapshot for the live progress display."""

    ready: int
    failed: int
    total: int
    absorbed: int
    elapsed: float
    working: int = 0  # ready users who have not left yet
    refused: int = 0  # waiting users waiting out a 429 right now
    loop_p99: float | None = None  # the hub's latest event-loop interval p99, when recorded
    k8s_throttled: float | None = None  # Kubernetes API 429s to the hub during the run

    @property
    def finished(self) -> bool:
        return self.ready + self.failed >= self.total and self.working == 0


def metrics_url_for(api_url: str) -> str:
    """The hub's ``/hub/metrics`` beside its REST API (``<base>/hub/api`` to
    ``<base>/hub/metrics``)."""
    return api_url.rstrip("/").removesuffix("/api") + "/metrics"


async def fetch_status(http: AsyncHTTPClient, request: HTTPRequest) -> str:
    """The HTTP status a request got, as a label ("200", "424", ...), or "connection_error"
    when no answer came (as the hub API metrics count it).

    Never raises for a failed request: a swamped hub is what the caller is measuring. Tornado
    raises its 599 ``HTTPClientError`` for a timeout even with ``raise_error=False``, so that
    is caught along with refused and reset connections.
    """
    try:
        return str((await http.fetch(request, raise_error=False)).code)
    except (OSError, HTTPClientError):
        return "connection_error"


async def read_hub_metrics(url: str, token: str, *, request_timeout: float) -> HubScrape:
    """Read and parse a hub's ``/hub/metrics`` (the token needs ``read:metrics``).

    Raises :class:`OSError` when the hub cannot be reached and tornado's
    :class:`~tornado.httpclient.HTTPClientError` when it answers other than 200 or not in
    time; the caller decides whether a missing reading is fatal (a benchmark) or only leaves
    a figure out of the report (a rehearsal against a real hub).
    """
    http = AsyncHTTPClient(force_instance=True)
    try:
        response = await http.fetch(
            HTTPRequest(
                url, headers={"Authorization": f"token {token}"}, request_timeout=request_timeout
            )
        )
    finally:
        http.close()
    return parse_hub_metrics(response.body.decode("utf-8", "replace"))


def tab_request(url: str, token: str, name: str, i: int, request_timeout: float
                ) -> HTTPRequest:
    """A browser tab's ``i``-th poll of ``name``'s server through the proxy at ``url``,
    cycling through TAB_PATHS, following redirects as a browser does."""
    return HTTPRequest(
        f"{url}/user/{quote(name, safe='')}/{TAB_PATHS[i % len(TAB_PATHS)]}",
        headers={"Authorization": f"token {token}", "Accept": "application/json"},
        follow_redirects=True,
        max_redirects=5,
        request_timeout=request_timeout,
    )


class Simulation:
    """One run of a :class:`SimulationPlan` against a hub.

    ``url`` is the hub's public URL (through its proxy, as browsers see it); ``api_url``
    defaults to ``<url>/hub/api``. ``token`` needs admin rights over the simulated users
    (creating, starting, stopping, deleting them) and ``read:metrics`` for the hub figures.
    """

    def __init__(
        self,
        url: str,
        token: str,
        plan: SimulationPlan,
        *,
        api_url: str | None = None,
        logger: logging.Logger | None = None,
        timeline: str | None = None,
        release: asyncio.Event | None = None,
    ) -> None:
        if not url:
            raise ValueError("--url (the hub's public URL) is empty")
        if not token:
            raise ValueError("no token: set JUPYTERHUB_API_TOKEN or pass --token")
        self.url = url.rstrip("/")
        self.api_url = (api_url or f"{self.url}/hub/api").rstrip("/")
        self.metrics_url = metrics_url_for(self.api_url)
        self.token = token
        self.plan = plan
        self.log = logger or log
        #: When given, ready users keep their servers until it is set instead of for
        #: ``plan.hold`` (a benchmark's steady state with everyone running).
        self._release = release
        # The users' clients log every 429 they wait out; that is the report's job here, so
        # their logger only lets errors through unless someone configured it.
        self._quiet = logging.getLogger(f"{__name__}.users")
        if self._quiet.level == logging.NOTSET:
            self._quiet.setLevel(logging.ERROR)
        #: Each user's outcome, once run() has them (a benchmark's percentiles over them).
        self.outcomes: list[UserOutcome] = []
        self._ready = 0
        self._failed = 0
        self._left = 0  # ready users who have finished (held, stopped, closed their tab)
        self._absorbed_base = 0.0
        self._activity_posts = 0
        self._activity_failures = 0
        self._tab_status: dict[str, int] = {}
        self._working_tab_status: dict[str, int] = {}
        self._created: list[str] = []
        self._started_at = 0.0
        self._last_outcome_at = 0.0
        self._arrived = 0
        #: Users whose start is under way: their client and the attempt (to give up).
        self._starting: dict[str, tuple[HubClient, asyncio.Future[Any]]] = {}
        self._given_up: str | None = None
        #: The run over time, recorded when a label was given (``--chart``).
        self.timeline: Timeline | None = None if timeline is None else Timeline(timeline)
        self._first_reading: HubScrape | None = None
        self._last_reading: HubScrape | None = None

    # -- the hub's own figures --------------------------------------------------------------

    async def scrape(self) -> HubScrape | None:
        """The hub's metrics now, or None when they cannot be read (logged once)."""
        try:
            return await read_hub_metrics(
                self.metrics_url, self.token, request_timeout=self.plan.request_timeout
            )
        except HTTPClientError as e:
            if e.code == 599:  # no answer in time
                self.log.warning("Cannot read %s: %s", self.metrics_url, e)
            else:
                self.log.warning(
                    "Cannot read %s: HTTP %s (the token needs read:metrics)",
                    self.metrics_url, e.code,
                )
        except OSError as e:
            self.log.warning("Cannot read %s: %s", self.metrics_url, e)
        return None

    # -- the run ----------------------------------------------------------------------------

    def progress(self) -> Progress:
        elapsed = self._elapsed()
        loop_p99 = k8s_throttled = None
        if self.timeline is not None and self.timeline.loop:
            loop_p99 = self.timeline.loop[-1].p99
        first, last = self._first_reading, self._last_reading
        if first is not None and last is not None and first.k8s_throttled is not None:
            k8s_throttled = (last.k8s_throttled or 0.0) - first.k8s_throttled
        return Progress(
            self._ready, self._failed, self.plan.users,
            int(_absorbed() - self._absorbed_base), elapsed, self._ready - self._left,
            self._refused(), loop_p99, k8s_throttled,
        )

    @property
    def last_reading(self) -> HubScrape | None:
        """The hub's metrics as last read during the run (with a timeline): what a hub
        that has since exited had served until then."""
        return self._last_reading

    def give_up(self, reason: str) -> None:
        """Users still trying to get a server stop now, and those yet to arrive do not
        try: each is counted without a server for ``reason`` (one of FAILURE_REASONS). A
        benchmark whose hub exited ends its arrival there instead of waiting out every
        user's patience against a hub that is gone."""
        if reason not in FAILURE_REASONS:
            raise ValueError(f"{reason!r} is not one of {FAILURE_REASONS}")
        self._given_up = reason
        for _, attempt in self._starting.values():
            attempt.cancel()

    def _refused(self) -> int:
        return sum(1 for c, _ in self._starting.values() if c.paused_for > 0)

    def _setup_client(self, concurrency: int = 10) -> HubClient:
        return HubClient(
            self.api_url, self.token, component=SETUP_COMPONENT, concurrency=concurrency,
            request_timeout=self.plan.request_timeout,
            policy=BackoffPolicy(base=0.5, cap=10.0, max_attempts=10, deadline=300.0),
        )

    async def run(self, on_progress: Callable[[Progress], None] | None = None) -> LoadReport:
        """Run the plan and return its report (cleaning up afterwards unless told not to)."""
        plan = self.plan
        names = plan.user_names()
        offsets = arrival_offsets(
            plan.arrival, plan.users, rate=plan.rate, ramp_seconds=plan.ramp_seconds
        )
        async with self._setup_client() as setup:
            await setup.version()  # fail early, with a clear error, on a wrong URL or token
            await self._create_users(setup, names)
            before = await self.scrape()
            absorbed_before, attempts_before = _absorbed(), _spawn_attempts()
            self._absorbed_base = absorbed_before
            self._started_at = time.monotonic()
            reporter: asyncio.Future[None] | None = None
            if on_progress is not None:
                reporter = asyncio.ensure_future(self._report_progress(on_progress))
            recorder: asyncio.Future[None] | None = None
            if self.timeline is not None:
                recorder = asyncio.ensure_future(self._record(self.timeline, before))
            try:
                users = zip(names, offsets, strict=True)
                outcomes = await asyncio.gather(*(self._user(setup, n, o) for n, o in users))
                self.outcomes = list(outcomes)
            finally:
                for task in (reporter, recorder):
                    if task is not None:
                        task.cancel()
                        await asyncio.gather(task, return_exceptions=True)
                if on_progress is not None:
                    on_progress(self.progress())
            after = await self.scrape()
            if self.timeline is not None:
                self._sample(self.timeline)
                self._add_reading(self.timeline, after)
            load: HubLoad | None = None
            if before is not None and after is not None:
                load = hub_load(before, after)
            report = build_report(
                outcomes,
                target=self.url,
                arrival=plan.describe_arrival(),
                client=plan.client,
                throttled_absorbed=int(_absorbed() - absorbed_before),
                spawn_attempts=int(_spawn_attempts() - attempts_before),
                hub=load,
                activity_posts=self._activity_posts,
                activity_failures=self._activity_failures,
                tab_requests=self._tab_status,
                working_tab_requests=self._working_tab_status,
                finished_at=self._last_outcome_at - self._started_at,
            )
            if plan.cleanup:
                await self.clean_up(setup, names)
        return report

    async def _report_progress(self, on_progress: Callable[[Progress], None]) -> None:
        while True:
            on_progress(self.progress())
            await asyncio.sleep(0.5)

    def _elapsed(self) -> float:
        """Seconds since the first arrival (0 before the run has begun)."""
        return time.monotonic() - self._started_at if self._started_at else 0.0

    def _sample(self, timeline: Timeline) -> None:
        timeline.users.append(users_at(
            self._elapsed(), arrived=self._arrived, ready=self._ready, failed=self._failed,
            refused=self._refused(),
        ))

    async def _record(self, timeline: Timeline, first: HubScrape | None) -> None:
        """Sample the users every SAMPLE_EVERY seconds and the hub's event loop every
        SCRAPE_EVERY (an unreadable scrape leaves a gap, not an error)."""
        self._first_reading = self._last_reading = first
        next_scrape = SCRAPE_EVERY
        while True:
            self._sample(timeline)
            if self._elapsed() >= next_scrape:
                next_scrape += SCRAPE_EVERY
                self._add_reading(timeline, await self.scrape())
            await asyncio.sleep(SAMPLE_EVERY)

    def _add_reading(self, timeline: Timeline, reading: HubScrape | None) -> None:
        """The hub's event loop since the previous reading; None (unreadable) leaves a gap."""
        if reading is None:
            return
        if self._last_reading is not None:
            timeline.loop.append(loop_between(self._elapsed(), self._last_reading, reading))
        self._last_reading = reading

    async def _create_users(self, client: HubClient, names: list[str]) -> None:
        for start in range(0, len(names), 200):
            created = await client.create_users(names[start : start + 200])
            self._created.extend(u["name"] for u in created if isinstance(u, dict))

    def _user_client(self) -> HubClient:
        return HubClient(
            self.api_url, self.token, component=USERS_COMPONENT,
            policy=client_policy(self.plan.client, self.plan.timeout),
            request_timeout=self.plan.request_timeout, logger=self._quiet,
        )

    async def _user(self, setup: HubClient, name: str, offset: float) -> UserOutcome:
        """One simulated user, from arrival to leaving."""
        await asyncio.sleep(max(0.0, self._started_at + offset - time.monotonic()))
        arrived = time.monotonic()
        arrived_at = arrived - self._started_at
        self._arrived += 1
        failure: str | None
        if self._given_up is not None:
            failure, detail = self._given_up, "the run gave up before this user arrived"
        else:
            failure, detail = await self._get_a_server(name, arrived)
        now = time.monotonic()
        self._last_outcome_at = max(self._last_outcome_at, now)
        if failure is not None:
            self._failed += 1
            self.log.info("User %s: %s (%s)", name, failure, detail)
            return UserOutcome(name, arrived_at, failure=failure, detail=detail)
        self._ready += 1
        outcome = UserOutcome(name, arrived_at, ready_after=now - arrived)
        try:
            await self._hold(setup, name)
            if self.plan.stops:
                await self._stop(setup, name)
                await self._tab_traffic(name)
        finally:
            self._left += 1
        return outcome

    async def _get_a_server(self, name: str, arrived: float) -> tuple[str | None, str]:
        """Start the user's server and wait until it is ready: (None, "") or why not, one
        of FAILURE_REASONS and the error."""
        async with self._user_client() as client:
            attempt = asyncio.ensure_future(
                client.start_server_and_wait(name, timeout=self.plan.timeout, poll_interval=0.5)
            )
            self._starting[name] = client, attempt
            try:
                await attempt
            except asyncio.CancelledError:
                if self._given_up is None or not attempt.cancelled():
                    raise  # the run itself was cancelled
                return self._given_up, "the run gave up"
            except SpawnFailedError as e:
                return "spawn_failed", str(e)
            except HubUnavailableError as e:
                # The hub holds a spawn request up to its slow_spawn_timeout: a request cut
                # short by the user's own time limit is a timeout, not an unreachable hub.
                out_of_time = time.monotonic() - arrived >= self.plan.timeout * 0.99
                return ("timeout" if out_of_time else "unreachable"), str(e)
            except HubAPIError as e:
                return ("refused" if e.status in (429, 503) else "hub_error"), str(e)
            except TimeoutError as e:
                return "timeout", str(e)
            finally:
                del self._starting[name]
        return None, ""

    async def _hold(self, client: HubClient, name: str) -> None:
        """Keep the server until the user is done (``hold`` seconds, or until ``release``
        is set), posting activity as a server would, with the user's tab polling it."""
        plan = self.plan
        done = asyncio.Event()
        activity = tab = None
        if plan.activity_interval:
            activity = asyncio.ensure_future(self._post_activity(client, name, done))
        if plan.working_tab_interval:
            tab = asyncio.ensure_future(self._working_tab(name))
        background = [task for task in (activity, tab) if task is not None]
        try:
            if self._release is None:
                await asyncio.sleep(plan.hold)
            else:
                await self._release.wait()
        except asyncio.CancelledError:
            for task in background:
                task.cancel()
            raise
        finally:
            done.set()  # activity finishes a post in flight (the hub counts it too)
            if tab is not None:
                tab.cancel()  # its requests go to the server, not to the hub
            await asyncio.gather(*background, return_exceptions=True)

    async def _post_activity(self, client: HubClient, name: str, done: asyncio.Event) -> None:
        """Post the server's activity every ``activity_interval`` until ``done`` is set. A
        post in flight then is finished, not cancelled, so the posts counted are the ones
        the hub handled."""
        # Servers started together do not report in step: the first report is spread out.
        interval = self.plan.activity_interval
        if await set_within(done, random.uniform(0, interval)):
            return
        while True:
            now = datetime.now(timezone.utc)
            try:
                await client.post_activity(name, last_activity=now, servers={"": now})
            except HubAPIError as e:
                self._activity_failures += 1
                self.log.info("Activity of %s not recorded: %s", name, e)
            else:
                self._activity_posts += 1
            if await set_within(done, interval):
                return

    async def _stop(self, client: HubClient, name: str) -> None:
        try:
            outcome = await client.stop_server(name)
            if outcome.result is StopResult.STOPPING:
                await client.wait_for_server_stopped(name, timeout=self.plan.timeout)
        except HubAPIError as e:
            self.log.warning("Could not stop %s's server: %s", name, e)

    async def _tab_traffic(self, name: str) -> None:
        """A browser tab left open on a stopped server keeps polling it, through the proxy."""
        if not self.plan.tab_requests:
            return
        http = AsyncHTTPClient(force_instance=True)
        try:
            for i in range(self.plan.tab_requests):
                await self._tab_request(http, name, i, self._tab_status)
                await asyncio.sleep(self.plan.tab_interval)
        finally:
            http.close()

    async def _working_tab(self, name: str) -> None:
        """The tab polls the running server through the proxy while the user works (until
        cancelled), first at a random point of the interval: tabs do not poll in step."""
        interval = self.plan.working_tab_interval
        http = AsyncHTTPClient(force_instance=True)
        try:
            await asyncio.sleep(random.uniform(0, interval))
            for i in itertools.count():
                await self._tab_request(http, name, i, self._working_tab_status)
                await asyncio.sleep(interval)
        finally:
            http.close()

    async def _tab_request(
        self, http: AsyncHTTPClient, name: str, i: int, into: dict[str, int]
    ) -> None:
        """The tab's ``i``-th poll; its final status counted."""
        request = tab_request(self.url, self.token, name, i, self.plan.request_timeout)
        status = await fetch_status(http, request)
        into[status] = into.get(status, 0) + 1

    async def clean_up(self, client: HubClient, names: list[str]) -> None:
        """Stop the simulated users' servers and delete the users this run created."""
        created = set(self._created)

        async def one(name: str) -> None:
            try:
                outcome = await client.stop_server(name)
                if outcome.result is StopResult.STOPPING:
                    await client.wait_for_server_stopped(name, timeout=120)
                if name in created:
                    await client.delete_user(name)
            except HubAPIError as e:
                self.log.warning("Clean-up of %s incomplete: %s", name, e)

        await asyncio.gather(*(one(n) for n in names))


# -- command line ---------------------------------------------------------------------------


def add_plan_arguments(
    parser: argparse.ArgumentParser, defaults: SimulationPlan | None = None
) -> None:
    """The flags describing the simulated workload, defaulting to ``defaults``' values
    (``hub-resilience demo`` shares them with its own workshop as defaults)."""
    d = defaults or SimulationPlan()
    group = parser.add_argument_group("workload")
    group.add_argument("--users", type=int, default=d.users,
                       help=f"simulated users (default {d.users})")
    group.add_argument("--arrival", choices=[a.value for a in Arrival], default=d.arrival.value,
                       help="burst: all at once; steady: --rate users per second; ramp: "
                       "arrivals speed up from zero over --ramp-seconds "
                       f"(default {d.arrival.value})")
    group.add_argument("--rate", type=float, default=d.rate,
                       help="users per second for --arrival steady")
    group.add_argument("--ramp-seconds", type=float, default=d.ramp_seconds,
                       help="seconds over which everyone arrives for --arrival ramp")
    group.add_argument("--client", choices=CLIENTS, default=d.client,
                       help="backoff: wait out 429s as the hub's Retry-After says, with jitter; "
                       f"immediate: resend a refused spawn at once (default {d.client})")
    group.add_argument("--timeout", type=float, default=d.timeout,
                       help="seconds a user keeps trying to get a ready server "
                       f"(default {d.timeout:g})")
    group.add_argument("--hold", type=float, default=d.hold,
                       help=f"seconds each user keeps the server once ready (default {d.hold:g})")
    group.add_argument("--activity-interval", type=float, default=d.activity_interval,
                       help="while holding, post activity every this many seconds, as a "
                       f"single-user server does (default {d.activity_interval:g}; 0: none)")
    group.add_argument("--stop", action=argparse.BooleanOptionalAction, default=d.stop,
                       help=f"each user stops the server after the hold (default {d.stop})")
    group.add_argument("--tab-requests", type=int, default=d.tab_requests,
                       help="after the stop, the user's browser tab makes this many requests "
                       "to the stopped server through the proxy (implies --stop; "
                       f"default {d.tab_requests})")
    group.add_argument("--tab-interval", type=float, default=d.tab_interval,
                       help=f"seconds between those requests (default {d.tab_interval:g})")
    group.add_argument("--working-tab-interval", type=float, default=d.working_tab_interval,
                       help="while holding, the user's tab polls the running server through "
                       "the proxy (kernels, sessions, terminals, contents) every this many "
                       f"seconds (default {d.working_tab_interval:g}; 0: no tab)")


def plan_from_args(args: argparse.Namespace, **overrides: Any) -> SimulationPlan:
    """A validated plan from the parsed flags and ``overrides`` (field name -> value);
    ValueError names a bad flag."""
    fields: dict[str, Any] = {
        "users": args.users,
        "arrival": Arrival(args.arrival),
        "rate": args.rate,
        "ramp_seconds": args.ramp_seconds,
        "client": args.client,
        "timeout": args.timeout,
        "hold": args.hold,
        "activity_interval": args.activity_interval,
        "stop": args.stop,
        "tab_requests": args.tab_requests,
        "tab_interval": args.tab_interval,
        "working_tab_interval": args.working_tab_interval,
        "user_prefix": getattr(args, "user_prefix", SimulationPlan.user_prefix),
        "cleanup": not getattr(args, "keep", False),
    }
    fields.update(overrides)
    return SimulationPlan(**fields)


def progress_printer(stream: TextIO) -> Callable[[Progress], None]:
    """A live progress bar on a terminal; a line every five seconds elsewhere (logs, CI)."""
    interactive = stream.isatty()
    last = [-math.inf]  # elapsed time of the last line written; inf once finished
    width = [0]

    def show(p: Progress) -> None:
        if last[0] == math.inf:
            return  # the final line is out
        line = render_progress(
            ready=p.ready, failed=p.failed, total=p.total, absorbed=p.absorbed,
            elapsed=p.elapsed, working=p.working, refused=p.refused, loop_p99=p.loop_p99,
            k8s_throttled=p.k8s_throttled,
        )
        if interactive:
            # Pad: the line may be shorter than the previous one.
            stream.write("\r" + line.ljust(width[0]) + ("\n" if p.finished else ""))
            width[0] = len(line)
        elif p.finished or p.elapsed - last[0] >= 5:
            stream.write(line + "\n")
            last[0] = p.elapsed
        if p.finished:
            last[0] = math.inf
        stream.flush()

    return show


def emit_report(report: LoadReport, *, as_json: bool, stream: TextIO = sys.stdout) -> None:
    """Print the report, as text or as JSON."""
    if as_json:
        stream.write(json.dumps(report.to_dict(), indent=2) + "\n")
    else:
        stream.write(format_report(report) + "\n")
    stream.flush()


def exit_status(report: LoadReport) -> int:
    """0 when every user got a ready server, 1 otherwise."""
    return 0 if report.failed == 0 else 1


def run_from_args(args: argparse.Namespace) -> int:
    """``hub-resilience simulate``."""
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="[%(levelname).1s %(asctime)s %(name)s] %(message)s",
    )
    logging.getLogger(f"{__name__}.users").setLevel(
        logging.INFO if args.verbose else logging.ERROR
    )
    token = args.token or os.environ.get("JUPYTERHUB_API_TOKEN", "")
    try:
        plan = plan_from_args(args)
        if args.chart is not None:
            check_chart_path(args.chart)
        simulation = Simulation(
            args.url, token, plan, api_url=args.api_url,
            timeline=None if args.chart is None else args.url,
        )
    except (ValueError, ChartUnavailable) as e:
        print(f"hub-resilience simulate: {e}", file=sys.stderr)
        return 2
    on_progress = None if args.no_progress else progress_printer(sys.stderr)
    try:
        report = asyncio.run(simulation.run(on_progress))
    except HubAPIError as e:
        print(f"hub-resilience simulate: the hub refused the set-up: {e}", file=sys.stderr)
        return 2
    emit_report(report, as_json=args.json)
    if simulation.timeline is not None:
        draw([simulation.timeline], args.chart,
             title=f"{plan.users} users, {plan.describe_arrival()}")
        print(f"chart: {args.chart}", file=sys.stderr)
    return exit_status(report)


def register(subparsers: Any) -> None:
    """Add the ``simulate`` subcommand."""
    parser = subparsers.add_parser(
        "simulate",
        help="drive simulated users against a hub and report how it coped",
        description="Rehearse an event: create N users on a hub, let them arrive (all at "
        "once, at a steady rate or ramping up), start their servers through the backoff "
        "client, wait until ready, optionally post activity and keep a browser tab polling "
        "after a stop; then report time to ready (p50/p90/p99/max), 429s absorbed, failures "
        "by reason and the requests the hub served, and clean up. Exit status 1 when a user "
        "got no server, 2 on bad input.",
    )
    target = parser.add_argument_group("hub")
    target.add_argument("--url", required=True,
                        help="the hub's public URL, as browsers see it (through the proxy)")
    target.add_argument("--api-url", default=None,
                        help="the hub's REST API (default: <url>/hub/api)")
    target.add_argument("--token", default=None,
                        help="admin API token (default: $JUPYTERHUB_API_TOKEN; prefer the "
                        "variable, a flag is visible to other users of the machine)")
    target.add_argument("--user-prefix", default="sim-",
                        help="names of the simulated users: <prefix>0001... (default 'sim-'); "
                        "must not be used by real users")
    target.add_argument("--keep", action="store_true",
                        help="keep the users and their servers after the run")
    add_plan_arguments(parser)
    output = parser.add_argument_group("output")
    output.add_argument("--json", action="store_true", help="print the report as JSON")
    add_chart_argument(output)
    output.add_argument("--no-progress", action="store_true", help="no live progress bar")
    output.add_argument("--verbose", action="store_true", help="log every user's outcome")
    parser.set_defaults(func=run_from_args)
