"""``hub-resilience simulate`` against a real local JupyterHub and configurable-http-proxy.

Everything is real except the single-user servers, which are
:class:`hub_resilience.tools.simulated_spawner.SimulatedSpawner`'s (dozens of notebook
servers cannot run here). The hub's ``spawn_throttle_retry_range`` is shortened (through
``tornado_settings``: JupyterHub does not accept it as a config option) so that the 429s
the hub sends ask for a second or two of patience instead of a minute.
"""
from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from tornado.httpclient import AsyncHTTPClient, HTTPRequest

from hub_resilience.tools.loadreport import Arrival
from hub_resilience.tools.localhub import unused_port
from hub_resilience.tools.simulate import (
    Simulation,
    SimulationPlan,
    client_policy,
    fetch_status,
    metrics_url_for,
)
from tests.support.hub import RunningHub, running_hub

THROTTLED_HUB = """
c.JupyterHub.concurrent_spawn_limit = 5
c.SimulatedSpawner.start_delay = 0.5
c.JupyterHub.tornado_settings = {"spawn_throttle_retry_range": (1, 2)}
"""


@pytest.fixture(scope="module")
async def throttled_hub() -> AsyncIterator[RunningHub]:
    async with running_hub(THROTTLED_HUB) as hub:
        yield hub


async def user_names(hub: RunningHub, prefix: str) -> list[str]:
    async with hub.client() as client:
        return [u["name"] async for u in client.iter_users() if u["name"].startswith(prefix)]


# -- the plan (no hub) ----------------------------------------------------------------------


def test_metrics_url_sits_beside_the_rest_api() -> None:
    assert metrics_url_for("http://hub:8081/hub/api") == "http://hub:8081/hub/metrics"
    assert metrics_url_for("https://hub.example.org/prefix/hub/api/") == (
        "https://hub.example.org/prefix/hub/metrics"
    )


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"users": 0}, "users must be"),
        ({"arrival": Arrival.STEADY}, "rate"),
        ({"arrival": Arrival.RAMP, "ramp_seconds": 0.0}, "ramp_seconds"),
        ({"client": "eager"}, "--client must be one of backoff, immediate"),
        ({"timeout": 0.0}, "--timeout"),
        ({"hold": -1.0}, "--hold"),
        ({"activity_interval": float("nan")}, "--activity-interval"),
        ({"tab_requests": -1}, "--tab-requests"),
        ({"working_tab_interval": -0.5}, "--working-tab-interval"),
        ({"user_prefix": "a/b"}, "--user-prefix"),
    ],
)
def test_bad_plans_name_the_flag(fields: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SimulationPlan(**fields)


def test_plan_names_and_policies() -> None:
    plan = SimulationPlan(users=3, user_prefix="w-")
    assert plan.user_names() == ["w-0001", "w-0002", "w-0003"]
    assert SimulationPlan(users=12345).user_names()[-1] == "sim-12345"
    assert SimulationPlan(tab_requests=2).stops
    # The backoff client believes the hub's Retry-After; the immediate one does not wait.
    assert client_policy("backoff", 60).delay(0, 40.0) >= 40.0
    assert client_policy("immediate", 60).delay(0, 40.0) <= 0.001
    assert client_policy("immediate", 60).deadline == 60


def test_command_line_refuses_bad_input_with_status_2() -> None:
    env = dict(os.environ, JUPYTERHUB_API_TOKEN="x")
    result = subprocess.run(
        [sys.executable, "-m", "hub_resilience", "simulate", "--url", "http://127.0.0.1:9",
         "--arrival", "steady"],
        capture_output=True, text=True, env=env, timeout=60,
    )
    assert result.returncode == 2
    assert "steady arrival needs rate > 0" in result.stderr
    env.pop("JUPYTERHUB_API_TOKEN")
    result = subprocess.run(
        [sys.executable, "-m", "hub_resilience", "simulate", "--url", "http://127.0.0.1:9"],
        capture_output=True, text=True, env=env, timeout=60,
    )
    assert result.returncode == 2
    assert "JUPYTERHUB_API_TOKEN" in result.stderr


# -- against the hub ------------------------------------------------------------------------


@pytest.mark.hub
@pytest.mark.parametrize("client", ["backoff", "immediate"])
async def test_a_burst_through_the_spawn_limit_is_absorbed(
    throttled_hub: RunningHub, client: str
) -> None:
    prefix = f"burst-{client}-"
    plan = SimulationPlan(users=30, client=client, timeout=240, user_prefix=prefix)
    seen = []
    simulation = Simulation(
        throttled_hub.url, throttled_hub.token, plan, api_url=throttled_hub.api_url,
        timeline=client,
    )
    report = await simulation.run(seen.append)

    assert report.ready == 30
    assert report.failures == {}
    # 30 users, at most 5 spawns pending at once: the hub refused some, and each refusal was
    # waited out and retried (none ended a user's attempt).
    assert report.hub is not None
    assert report.hub.refused > 0
    assert report.throttled_absorbed == report.hub.refused
    assert report.spawn_attempts == 30 + report.throttled_absorbed
    assert report.hub.by_code.get("201", 0) + report.hub.by_code.get("202", 0) == 30
    # Every user polled their server at least once, and the hub's CPU time was read.
    assert report.hub.requests >= report.spawn_attempts + 30
    assert report.hub.cpu_seconds is not None and report.hub.cpu_seconds > 0
    t = report.time_to_ready
    assert t is not None
    # Each simulated server takes 0.5 s to start: a lower bound, not a timing assertion.
    assert 0.5 <= t.p50 <= t.p90 <= t.p99 <= t.max <= report.duration
    assert seen and seen[-1].ready == 30 and seen[-1].finished
    # The timeline (--chart): each sample accounts for the users who had arrived; the
    # backoff client's users were seen waiting out the hub's Retry-After (1-2 s); at the end
    # all are ready. The hub's event loop was read at least at the end.
    timeline = simulation.timeline
    assert timeline is not None and timeline.label == client
    assert all(u.ready + u.pending + u.refused + u.failed <= 30 for u in timeline.users)
    assert [u.elapsed for u in timeline.users] == sorted(u.elapsed for u in timeline.users)
    if client == "backoff":
        assert max(u.refused for u in timeline.users) > 0
    last = timeline.users[-1]
    assert (last.ready, last.pending, last.refused, last.failed) == (30, 0, 0, 0)
    assert timeline.loop and all(x.p99 is not None and x.p99 > 0 for x in timeline.loop)
    # Clean-up: the run's users are gone.
    assert await user_names(throttled_hub, prefix) == []


@pytest.mark.hub
async def test_command_line_json_report_with_activity_and_tabs(
    throttled_hub: RunningHub, tmp_path: Path
) -> None:
    """Steady arrivals that hold their server posting activity, stop it and keep a tab open
    on it: with no stopped-server handler, the proxy sends the tab to the hub (a redirect to
    /hub/user/..., then the hub's 424)."""
    env = dict(os.environ, JUPYTERHUB_API_TOKEN=throttled_hub.token)
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "hub_resilience", "simulate",
        "--url", throttled_hub.url, "--users", "4", "--arrival", "steady", "--rate", "8",
        "--hold", "1.5", "--activity-interval", "0.5", "--tab-requests", "2",
        "--tab-interval", "0.1", "--user-prefix", "cli-", "--json",
        "--chart", str(tmp_path / "run.png"),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 300)
    assert process.returncode == 0, stderr.decode()
    report = json.loads(stdout)
    assert report["users"] == 4
    assert report["ready"] == 4
    assert report["failed"] == 0
    assert report["arrival"] == "steady arrival, 8 users/s"
    assert report["activity_posts"] > 0
    assert report["activity_failures"] == 0
    assert report["hub"]["by_handler"]["ActivityAPIHandler"] == report["activity_posts"]
    assert report["tab_requests"] == {"424": 8}
    assert report["hub"]["by_handler"]["UserUrlHandler"] == 8
    assert b"4/4 ready" in stderr  # the progress lines
    assert f"chart: {tmp_path / 'run.png'}".encode() in stderr
    assert (tmp_path / "run.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert await user_names(throttled_hub, "cli-") == []


@pytest.mark.hub
async def test_users_hold_their_servers_until_released_with_their_tab_polling(
    throttled_hub: RunningHub,
) -> None:
    """A benchmark's steady state: every user keeps the server, posting activity, with a tab
    polling it through the proxy (the server answers, the hub sees none of it), until the
    run is released."""
    release = asyncio.Event()
    plan = SimulationPlan(users=3, user_prefix="held-", activity_interval=0.5,
                          working_tab_interval=0.2)
    simulation = Simulation(throttled_hub.url, throttled_hub.token, plan,
                            api_url=throttled_hub.api_url, release=release)
    running = asyncio.ensure_future(simulation.run())
    for _ in range(600):
        if simulation.progress().ready == 3:
            break
        await asyncio.sleep(0.1)
    await asyncio.sleep(1.5)
    assert not running.done()
    assert simulation.progress().working == 3
    release.set()
    report = await asyncio.wait_for(running, 120)
    assert report.ready == 3
    assert set(report.working_tab_requests) == {"200"}
    assert report.working_tab_requests["200"] >= 3 * 4
    assert report.hub is not None
    assert "UserUrlHandler" not in report.hub.by_handler
    assert report.activity_posts >= 3
    assert report.hub.by_handler["ActivityAPIHandler"] == report.activity_posts
    assert await user_names(throttled_hub, "held-") == []


@pytest.mark.hub
async def test_failures_are_reported_by_reason() -> None:
    config = """
c.SimulatedSpawner.honour_user_options = True
c.SimulatedSpawner.start_failure_rate = 1.0
"""
    async with running_hub(config) as hub:
        plan = SimulationPlan(users=3, user_prefix="doomed-", timeout=60)
        report = await Simulation(hub.url, hub.token, plan, api_url=hub.api_url).run()
        assert report.ready == 0
        assert report.failures == {"spawn_failed": 3}
        assert report.time_to_ready is None
        assert await user_names(hub, "doomed-") == []


@pytest.mark.hub
async def test_giving_up_counts_every_user_still_trying_or_yet_to_arrive() -> None:
    """A benchmark whose hub exited stops its users there: the one waiting for its server
    and the two who arrive later are each counted without a server, for that reason, at
    once instead of after their patience."""
    config = """
c.SimulatedSpawner.start_delay = 30
c.JupyterHub.tornado_settings = {"slow_spawn_timeout": 0.2}
"""
    async with running_hub(config) as hub:
        plan = SimulationPlan(users=3, user_prefix="abandoned-", arrival=Arrival.RAMP,
                              ramp_seconds=4.0, timeout=300)
        simulation = Simulation(hub.url, hub.token, plan, api_url=hub.api_url)
        running = asyncio.ensure_future(simulation.run())
        for _ in range(600):  # until the first is trying and the rest are yet to come
            if simulation.progress().elapsed >= 0.5:
                break
            await asyncio.sleep(0.05)
        simulation.give_up("hub_exited")
        report = await asyncio.wait_for(running, 30)
        assert report.ready == 0
        assert report.failures == {"hub_exited": 3}
        assert [o.detail for o in simulation.outcomes] == [
            "the run gave up"] + ["the run gave up before this user arrived"] * 2
        with pytest.raises(ValueError, match="not one of"):
            simulation.give_up("bored")


@pytest.mark.hub
async def test_a_server_slower_than_the_users_patience_is_a_timeout() -> None:
    config = """
c.SimulatedSpawner.start_delay = 20
c.JupyterHub.tornado_settings = {"slow_spawn_timeout": 0.2}
"""
    async with running_hub(config) as hub:
        plan = SimulationPlan(users=2, user_prefix="slow-", timeout=2)
        report = await Simulation(hub.url, hub.token, plan, api_url=hub.api_url).run()
        assert report.ready == 0
        assert report.failures == {"timeout": 2}


async def test_unreadable_metrics_leave_the_figure_out_instead_of_failing(
    throttled_hub: RunningHub, caplog: pytest.LogCaptureFixture
) -> None:
    plan = SimulationPlan(users=1)
    refused = Simulation(throttled_hub.url, "not-a-token", plan)
    assert await refused.scrape() is None
    assert "the token needs read:metrics" in caplog.text
    unreachable = Simulation(f"http://127.0.0.1:{unused_port()}", "any-token", plan)
    assert await unreachable.scrape() is None
    assert unreachable.metrics_url in caplog.text
    # The admin token reads them.
    assert await Simulation(throttled_hub.url, throttled_hub.token, plan).scrape() is not None


async def test_fetch_status_labels_silence_and_refusal_instead_of_raising(
    throttled_hub: RunningHub,
) -> None:
    http = AsyncHTTPClient(force_instance=True)
    silent = socket.socket()  # accepts connections and never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen()
    try:
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/"
        assert await fetch_status(http, HTTPRequest(url, request_timeout=0.5)) == (
            "connection_error"
        )
        closed = f"http://127.0.0.1:{unused_port()}/"
        assert await fetch_status(http, HTTPRequest(closed, request_timeout=5)) == (
            "connection_error"
        )
        answered = HTTPRequest(f"{throttled_hub.url}/hub/api", request_timeout=30)
        assert await fetch_status(http, answered) == "200"
    finally:
        silent.close()
        http.close()
