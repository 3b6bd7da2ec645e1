"""The k8s-event benchmark's own logic, without a cluster: the two hubs' values (through
z2jh 4.4.0's real configuration), the stock culler's command, and the table."""
from __future__ import annotations

import dataclasses
import math
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from kubernetes.client import V1Container, V1EnvVar, V1ObjectMeta, V1Pod, V1PodSpec

from benchmarks.admission import Crowd, Outcome
from benchmarks.common import Measured
from benchmarks.k8s_event import (
    CULL_EVERY,
    OURS,
    STOCK,
    STOCK_CULLER_CONFIG,
    Result,
    exit_reason,
    failed_spawns_in_log,
    governor_changes,
    handler_kinds,
    measure_unless_exited,
    missed_goals,
    pod_activity_interval,
    rows,
    summary,
)
from hub_resilience.hub.activity import tune_activity
from hub_resilience.tools.loadreport import Arrival, HubLoad, LoadReport
from hub_resilience.tools.localhub import unused_port
from tests.z2jh_hub import load_config

EVENT = Crowd("3,000 users over 15 minutes", 3000, Arrival.RAMP, 900.0)


def test_stock_is_z2jh_with_its_idle_culler_and_ours_adds_the_shipped_values(
    tmp_path: Path,
) -> None:
    stock = load_config(tmp_path / "stock", STOCK.values(EVENT))
    [culler] = [s for s in stock.JupyterHub.services if s["name"] == "jupyterhub-idle-culler"]
    assert f"--cull-every={CULL_EVERY}" in culler["command"]
    assert "--timeout=3600" in culler["command"]
    assert "HubResilience" not in stock
    assert stock.KubeSpawner.cpu_limit == stock.KubeSpawner.cpu_guarantee == 0.1
    assert "pod-ready.stage.kwok.x-k8s.io/delay" in stock.KubeSpawner.extra_annotations

    ours = load_config(tmp_path / "ours", OURS.values(EVENT))
    assert ours.HubResilience.expected_concurrent_servers == EVENT.users
    assert ours.Culler.cull_every == CULL_EVERY
    assert not [s for s in ours.JupyterHub.services if s["name"] == "jupyterhub-idle-culler"]
    assert ours.KubeSpawner.extra_annotations == stock.KubeSpawner.extra_annotations


def test_the_simulated_servers_report_activity_as_each_hubs_pods_would() -> None:
    assert STOCK.activity_interval(STOCK.values(EVENT)) == 300
    values = OURS.values(EVENT)
    budget = values["hub"]["config"]["HubResilience"]["activity_requests_per_second"]
    expected = tune_activity(EVENT.users, budget).singleuser_interval
    assert OURS.activity_interval(values) == expected > 300


def test_the_stock_culler_reaches_the_local_hub_on_the_hubs_python(tmp_path: Path) -> None:
    c = load_config(tmp_path, STOCK.values(EVENT))
    c.JupyterHub.hub_port = 18081
    exec(STOCK_CULLER_CONFIG, {"c": c})
    [culler] = [s for s in c.JupyterHub.services if s["name"] == "jupyterhub-idle-culler"]
    command = culler["command"]
    assert command[:3] == [sys.executable, "-m", "jupyterhub_idle_culler"]
    assert "--url=http://127.0.0.1:18081/hub/api" in command
    assert not [a for a in command if "8081/" in a and "18081" not in a]


def pod(env: list[V1EnvVar] | None) -> V1Pod:
    return V1Pod(metadata=V1ObjectMeta(name="jupyter-u-0001"), spec=V1PodSpec(containers=[
        V1Container(name="notebook", env=env),
    ]))


def test_the_activity_interval_is_read_from_the_pods_environment() -> None:
    assert pod_activity_interval(
        [pod([V1EnvVar(name="JUPYTERHUB_ACTIVITY_INTERVAL", value="600")])]
    ) == 600
    assert pod_activity_interval([pod(None)]) == 300  # JupyterHub's default
    assert pod_activity_interval([]) is None


def result(*, failed: int = 0, loop: float = 0.05, errors: int = 0, guaranteed: float = 1.0,
           by_handler: dict[str, int] | None = None) -> Result:
    by_handler = by_handler or {"UserServerAPIHandler": 900, "MetricsHandler": 5}
    load = HubLoad(requests=sum(by_handler.values()), refused=10, by_handler=by_handler,
                   spawn_failures=failed, loop_interval_p99=loop)
    report = LoadReport(
        target="http://hub", users=10, arrival="ramp", client="backoff", duration=60.0,
        ready=10 - failed, failures={"timeout": failed} if failed else {},
        time_to_ready=None, throttled_absorbed=0, spawn_attempts=10, hub=load,
    )
    ready_after = tuple([5.0] * (10 - failed) + [math.inf] * failed)
    return Result(
        outcome=Outcome(report, 12.0, [], ready_after), arrival=load, loop_max=0.25,
        peak_rss=300.0,
        errors=errors, failed_spawns=failed, guaranteed=guaranteed, api_429s=0,
        activity_interval=300,
        steady=Measured(30.0, 3.0, HubLoad(requests=120, refused=0)),
        stopping=Measured(20.0, 1.0, HubLoad(requests=40, refused=0)),
    )


def measures(table: list) -> dict[str, tuple[float, float]]:
    return {row.measure: (row.baseline, row.ours) for row in table}


def test_the_table_shows_each_goal_met_or_missed_for_ours() -> None:
    stock = result(failed=2, loop=0.4, errors=3, guaranteed=0.0,
                   by_handler={"UserServerAPIHandler": 1500, "UserUrlHandler": 600})
    met = measures(rows(EVENT, stock, result()))
    assert met["users without a server (goal 0: met)"] == (2, 0)
    assert met["  of which timeout"] == (2, 0)
    assert met["hub event-loop interval p99 (ms) (goal < 100: met)"] == (400.0, 50.0)
    assert met["ERROR lines in the hub's log (goal 0: met)"] == (3, 0)
    assert met["user pods with Guaranteed QoS (share) (goal 1: met)"] == (0.0, 1.0)
    assert met["time until ready, max of all users (s)"] == (math.inf, 5.0)
    steady = "steady state, 8+ servers running"
    assert met[f"{steady}: hub requests per minute"] == (240.0, 240.0)
    assert met[f"{steady}: hub CPU seconds per minute"] == (6.0, 6.0)
    assert met["  of which UserUrlHandler"] == (600, 0)

    missed = measures(rows(EVENT, stock, result(failed=1, loop=0.2, errors=1,
                                                guaranteed=0.5)))
    assert "users without a server (goal 0: MISSED)" in missed
    assert "failed spawns (the hub's log) (goal 0: MISSED)" in missed
    assert "hub event-loop interval p99 (ms) (goal < 100: MISSED)" in missed
    assert "ERROR lines in the hub's log (goal 0: MISSED)" in missed
    assert "user pods with Guaranteed QoS (share) (goal 1: MISSED)" in missed
    assert missed_goals(rows(EVENT, stock, result())) == []
    assert {row.measure for row in missed_goals(rows(EVENT, stock, result(errors=1)))} == {
        "ERROR lines in the hub's log (goal 0: MISSED)"
    }


@pytest.mark.parametrize("share", [0.01, 0.5])
def test_handler_rows_are_those_with_a_share_of_either_hubs_requests(share: float) -> None:
    busy = result(by_handler={"UserServerAPIHandler": 90, "ActivityAPIHandler": 9,
                              "RootHandler": 1})
    other = result(by_handler={"UserUrlHandler": 60, "UserServerAPIHandler": 40})
    kinds = handler_kinds(busy, other, share=share)
    if share == 0.01:
        assert kinds == ["UserServerAPIHandler", "UserUrlHandler", "ActivityAPIHandler",
                         "RootHandler"]
    else:
        assert kinds == ["UserServerAPIHandler", "UserUrlHandler"]


def test_the_governors_limit_changes_are_counted_by_reason_from_the_hub_log() -> None:
    hub_log = "\n".join([
        "[I 2026-12-06 21:00:00.000 JupyterHub admission:1] Admission governor: "
        "concurrent_spawn_limit 64 (configured 64; floor 8, ceiling 200), decided every 2s",
        "[I 2026-12-06 21:00:02.000 JupyterHub admission:1] Admission governor: "
        "concurrent_spawn_limit 64 -> 44 (loop_stalled: loop lag 0.40s, ...)",
        "[I 2026-12-06 21:00:08.000 JupyterHub admission:1] Admission governor: "
        "concurrent_spawn_limit 44 -> 30 (loop_stalled: loop lag 0.50s, ...)",
        "[I 2026-12-06 21:00:12.000 JupyterHub admission:1] Admission governor: "
        "concurrent_spawn_limit 30 -> 34 (all_well: loop lag 0.01s, ...)",
        "[I 2026-12-06 21:00:14.000 JupyterHub admission:1] Admission governor: "
        "concurrent_spawn_limit held at 34 (capacity_wait: ...)",
    ])
    assert governor_changes(hub_log) == {"loop_stalled": 2, "all_well": 1}
    assert governor_changes("") == {}


def test_failed_spawns_are_counted_from_the_hub_log_with_those_that_made_it_exit() -> None:
    """Stock z2jh at 3,000 users (2026-12-07): its metrics, last read seconds before it
    exited, had 0 failed spawns; its log had 10. One line per failure, whatever the cause."""
    hub_log = "\n".join([
        "[W 2026-12-07 00:38:38.551 JupyterHub user:998] u-2269's server failed to start in "
        "300 seconds, giving up.",
        "",
        "    Common causes of this timeout, and debugging tips:",
        "[E 2026-12-07 00:38:39.000 JupyterHub user:1008] Error starting broken-user's server: "
        "HTTP 500: Internal Server Error (profile cannot be Guaranteed)",
        "[E 2026-12-07 00:38:40.000 JupyterHub user:1012] Unhandled error starting u-7's "
        "server: TimeoutError",
        "    Traceback (most recent call last):",
        "[W 2026-12-07 00:38:41.000 JupyterHub user:1060] u-8's server never showed up at "
        "http://10.0.0.8:8888/user/u-8/ after 30 seconds. Giving up.",
        "[E 2026-12-07 00:38:42.000 JupyterHub user:1069] Unhandled error waiting for u-9's "
        "server to show up at http://10.0.0.9:8888/user/u-9/: ConnectionRefusedError",
        "[W 2026-12-07 00:40:07.942 JupyterHub base:1213] 4 consecutive spawns failed.",
        "[E 2026-12-07 00:40:08.000 JupyterHub user:1020] Failed to cleanup u-7's server "
        "that failed to start",
        "[I 2026-12-07 00:40:09.000 JupyterHub log:192] 200 GET /hub/api/users/u-2269 "
        "(service@127.0.0.1) 1.90ms",
    ])
    assert failed_spawns_in_log(hub_log) == 5
    assert failed_spawns_in_log("") == 0


def test_a_hub_that_exits_is_a_result_with_its_reason_not_an_abort() -> None:
    """Stock z2jh at 3,000 users (2026-12-07): JupyterHub exits at its consecutive failure
    limit. The table shows it, and what could not be measured afterwards is NaN."""
    hub_log = (
        "[W 2026-12-07 00:40:07.942 JupyterHub base:1213] 4 consecutive spawns failed.\n"
        "[C 2026-12-07 00:40:07.949 JupyterHub base:1220] Aborting due to 5 consecutive "
        "spawn failures\n"
        "[C 2026-12-07 00:40:07.951 JupyterHub base:1220] Aborting due to 6 consecutive "
        "spawn failures\n"
    )
    why = exit_reason(1, 930.0, hub_log)
    assert why == "exited with code 1 after 15.5 min: Aborting due to 5 consecutive spawn failures"
    assert exit_reason(-9, 60.0, "[I nothing]").endswith("no critical line in its log")

    stock = dataclasses.replace(result(failed=3), exited=why, steady=None, stopping=None)
    table = rows(EVENT, stock, result())
    met = measures(table)
    exits = "hub process exits (JupyterHub's consecutive failure limit) (goal 0: met)"
    assert met[exits] == (1, 0)
    assert math.isnan(met["servers stopped as culled: seconds to stop them all"][0])
    assert math.isnan(met["steady state, 7+ servers running: hub requests per minute"][0])
    assert "hub process exits" not in " ".join(r.measure for r in missed_goals(table))
    missed = measures(rows(EVENT, stock, stock))
    assert "hub process exits (JupyterHub's consecutive failure limit) (goal 0: MISSED)" in missed
    assert "exited with code 1 after 15.5 min" in summary(stock)


async def test_a_hub_that_exits_during_a_measurement_ends_it_and_any_other_failure_is_raised(
) -> None:
    """A stand-in for a hub whose process has exited (nothing listens on its port; the real
    exit was seen on a real hub at 3,000 users): the measurement after the arrival ends
    without a figure instead of aborting the benchmark; a hub still running whose metrics
    cannot be read is an error, raised."""
    hub = SimpleNamespace(api_url=f"http://127.0.0.1:{unused_port()}/hub/api", token="t",
                          hub_exit_code=1)
    ran = []

    async def work() -> None:
        ran.append(1)

    assert await measure_unless_exited(hub, work) is None
    hub.hub_exit_code = None
    with pytest.raises(OSError):
        await measure_unless_exited(hub, work)
    assert ran == []
