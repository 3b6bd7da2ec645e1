"""What every benchmark shares: the local hub, its CPU time and request counts, the table.

Hub CPU seconds are read from ``/proc/<hub pid>/stat`` (user + system time of the hub
process alone, not of the proxy, the service or the benchmark's own clients); requests the
hub served from its own ``jupyterhub_request_duration_seconds_count`` on ``/hub/metrics``
(its metrics scrapes left out), see :mod:`hub_resilience.tools.loadreport`.
"""
from __future__ import annotations

import asyncio
import math
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from hub_resilience.backoff import BackoffPolicy
from hub_resilience.hubclient import HubClient
from hub_resilience.tools.loadreport import HubLoad, HubScrape, cpu_seconds_from_stat, hub_load
from hub_resilience.tools.localhub import LocalHub, local_hub
from hub_resilience.tools.simulate import metrics_url_for, read_hub_metrics

T = TypeVar("T")

#: Component label of the benchmarks' own hub API clients.
COMPONENT = "benchmark"


@dataclass(frozen=True)
class Row:
    """One line of the results table: the same measure for the baseline and for ours."""

    comparison: str
    measure: str
    baseline: float
    ours: float
    better: str  # "higher" or "lower"
    digits: int = 1

    @property
    def ratio(self) -> float | None:
        """ours / baseline (None when the baseline is zero, either was not measured, or
        either is infinite: "never")."""
        values = (self.baseline, self.ours)
        if self.baseline == 0 or not all(math.isfinite(v) for v in values):
            return None
        return self.ours / self.baseline


def _number(value: float, digits: int) -> str:
    # An infinite time is a user who never got there (a percentile among users without one).
    return "never" if value == math.inf else f"{value:,.{digits}f}"


def format_ratio(ratio: float) -> str:
    """Two decimals, or two significant digits for ratios below 0.1 (0.00083×, not 0.00×)."""
    if ratio == 0:
        return "0×"
    return f"{ratio:.2f}×" if ratio >= 0.1 else f"{ratio:.2g}×"


def markdown_table(rows: Sequence[Row], baseline: str = "baseline", ours: str = "hub-resilience"
                   ) -> str:
    """The rows as a GitHub markdown table."""
    lines = [
        f"| comparison | measure | {baseline} | {ours} | ratio (ours / baseline) |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for row in rows:
        ratio = "n/a"
        if row.ratio is not None:
            ratio = f"{format_ratio(row.ratio)} ({row.better} is better)"
        lines.append(
            f"| {row.comparison} | {row.measure} | {_number(row.baseline, row.digits)} | "
            f"{_number(row.ours, row.digits)} | {ratio} |"
        )
    return "\n".join(lines)


def hub_cpu_seconds(hub: LocalHub) -> float:
    """User + system CPU seconds of the hub process so far."""
    if hub.hub_pid is None:
        raise RuntimeError("the hub is not running")
    with open(f"/proc/{hub.hub_pid}/stat") as f:
        return cpu_seconds_from_stat(f.read(), os.sysconf("SC_CLK_TCK"))


async def scrape(hub: LocalHub) -> HubScrape:
    """The hub's /hub/metrics, read directly from the hub with the admin token."""
    return await read_hub_metrics(metrics_url_for(hub.api_url), hub.token, request_timeout=60)


@dataclass(frozen=True)
class Measured:
    """A piece of work and what it cost the hub."""

    seconds: float  # wall-clock
    hub_cpu: float  # hub process CPU seconds, from /proc
    load: HubLoad  # requests the hub served


async def measure(hub: LocalHub, work: Callable[[], Awaitable[T]]) -> tuple[T, Measured]:
    """Run ``work`` and measure the hub around it."""
    before = await scrape(hub)
    cpu = hub_cpu_seconds(hub)
    started = time.monotonic()
    result = await work()
    seconds = time.monotonic() - started
    cpu = hub_cpu_seconds(hub) - cpu
    after = await scrape(hub)
    return result, Measured(seconds, cpu, hub_load(before, after))


def admin_client(hub: LocalHub, concurrency: int = 20) -> HubClient:
    """A client for setting up and checking (not what is being measured)."""
    return hub.client(
        component=COMPONENT, concurrency=concurrency, request_timeout=120,
        policy=BackoffPolicy(base=0.5, cap=5.0, max_attempts=20, deadline=600.0),
    )


async def gather_limited(coros: Sequence[Awaitable[Any]], limit: int) -> list[Any]:
    """Await with at most ``limit`` at once."""
    semaphore = asyncio.Semaphore(limit)

    async def one(coro: Awaitable[Any]) -> Any:
        async with semaphore:
            return await coro

    return await asyncio.gather(*(one(c) for c in coros))


async def create_users(client: HubClient, names: Sequence[str], batch: int = 500) -> None:
    for start in range(0, len(names), batch):
        await client.create_users(list(names[start : start + batch]))


async def start_servers(client: HubClient, names: Sequence[str], limit: int = 40) -> None:
    """Start servers as fast as the hub takes them, until every one is ready."""
    await gather_limited(
        [client.start_server_and_wait(n, poll_interval=0.5, timeout=900) for n in names], limit
    )


async def count_active(client: HubClient) -> int:
    return sum([1 async for _ in client.iter_users(state="active", page_size=200)])


@asynccontextmanager
async def bench_hub(config: str, **kwargs: Any) -> AsyncIterator[LocalHub]:
    """A local hub for a benchmark, logging as JupyterHub does by default (every request at
    INFO: part of what a request costs a real hub)."""
    async with local_hub(config, start_timeout=300, service_name="benchmark-admin",
                         **kwargs) as hub:
        yield hub


def cache_home() -> Path:
    """$HUB_RESILIENCE_HOME, where scripts/bootstrap.sh keeps what it builds."""
    home = os.environ.get("HUB_RESILIENCE_HOME")
    return Path(home) if home else Path.home() / ".cache/hub-resilience"


def artifact_path(benchmark: str, name: str, suffix: str) -> Path:
    """Where a benchmark keeps what a run leaves for a later look (its own folder is
    removed): ``$HUB_RESILIENCE_HOME/artifacts/<benchmark>/``, one file per ``name``, which
    the next run of the same overwrites."""
    slug = "".join(c if c.isalnum() else "-" for c in name).lower()
    return cache_home() / "artifacts" / benchmark / f"{slug}{suffix}"


def log(message: str) -> None:
    """Progress on stderr (the table goes to stdout)."""
    import sys

    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)
