"""The load report's arithmetic: arrival schedules, percentiles, hub figures, formatting."""
from __future__ import annotations

import math

import pytest

from hub_resilience.tools.loadreport import (
    METRICS_HANDLER,
    HubScrape,
    Percentiles,
    UserOutcome,
    arrival_offsets,
    build_report,
    cpu_seconds_from_stat,
    ended_spawns,
    format_report,
    histogram_quantile,
    hub_load,
    parse_hub_metrics,
    percentile,
    render_progress,
)

# -- arrivals -------------------------------------------------------------------------------


def test_burst_arrives_all_at_once() -> None:
    assert arrival_offsets("burst", 4) == [0.0, 0.0, 0.0, 0.0]


def test_steady_arrival_is_evenly_spaced_at_the_rate() -> None:
    assert arrival_offsets("steady", 4, rate=2.0) == [0.0, 0.5, 1.0, 1.5]


def test_ramp_arrivals_speed_up_and_end_within_the_ramp() -> None:
    offsets = arrival_offsets("ramp", 100, ramp_seconds=60.0)
    assert offsets[0] == 0.0
    assert offsets == sorted(offsets)
    assert offsets[-1] < 60.0
    gaps = [b - a for a, b in zip(offsets, offsets[1:], strict=False)]
    # The rate grows, so the gaps between arrivals shrink.
    assert gaps[1] > gaps[50] > gaps[-1]
    # A quarter of the users have arrived at half time (the rate grows linearly).
    assert sum(1 for t in offsets if t < 30.0) == 25


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        (("steady", 3), {}, "rate"),
        (("steady", 3), {"rate": 0.0}, "rate"),
        (("steady", 3), {"rate": math.inf}, "rate"),
        (("ramp", 3), {}, "ramp_seconds"),
        (("ramp", 3), {"ramp_seconds": -1.0}, "ramp_seconds"),
        (("burst", 0), {}, "users"),
        (("burst", True), {}, "users"),
        (("wave", 3), {}, "arrival must be one of burst, steady, ramp"),
    ],
)
def test_bad_arrival_settings_name_the_setting(
    args: tuple, kwargs: dict, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        arrival_offsets(*args, **kwargs)


# -- percentiles ----------------------------------------------------------------------------


def test_percentiles_interpolate_between_closest_ranks() -> None:
    values = [4.0, 1.0, 3.0, 2.0]  # order does not matter
    assert percentile(values, 0) == 1.0
    assert percentile(values, 50) == 2.5
    assert percentile(values, 100) == 4.0
    assert percentile(values, 90) == pytest.approx(3.7)
    assert percentile([7.0], 99) == 7.0


def test_percentile_of_nothing_or_out_of_range_is_refused() -> None:
    with pytest.raises(ValueError, match="no values"):
        percentile([], 50)
    with pytest.raises(ValueError, match="within"):
        percentile([1.0], 101)


def test_percentile_summary() -> None:
    summary = Percentiles.of([float(i) for i in range(1, 101)])
    assert summary == Percentiles(p50=50.5, p90=pytest.approx(90.1), p99=pytest.approx(99.01),
                                  max=100.0)
    assert Percentiles.of([]) is None


# -- what the hub served --------------------------------------------------------------------

SERVER_API = "jupyterhub.apihandlers.users.UserServerAPIHandler"
USER_API = "jupyterhub.apihandlers.users.UserAPIHandler"


def exposition(requests: list[tuple[str, str, str, float]], cpu: float) -> str:
    """A hub's Prometheus text with these (method, handler, code, count) request counts."""
    lines = [
        "# HELP jupyterhub_request_duration_seconds Request duration for all HTTP requests",
        "# TYPE jupyterhub_request_duration_seconds histogram",
    ]
    for method, handler, code, count in requests:
        labels = f'code="{code}",handler="{handler}",method="{method}"'
        lines += [
            f'jupyterhub_request_duration_seconds_bucket{{{labels},le="+Inf"}} {count}',
            f"jupyterhub_request_duration_seconds_count{{{labels}}} {count}",
            f"jupyterhub_request_duration_seconds_sum{{{labels}}} 0.5",
        ]
    lines += [
        "# HELP process_cpu_seconds_total Total user and system CPU time spent in seconds.",
        "# TYPE process_cpu_seconds_total counter",
        f"process_cpu_seconds_total {cpu}",
    ]
    return "\n".join(lines) + "\n"


METRICS_BEFORE = exposition(
    [("POST", SERVER_API, "201", 10.0), ("GET", METRICS_HANDLER, "200", 3.0)], 12.5
)
METRICS_AFTER = exposition(
    [
        ("POST", SERVER_API, "201", 30.0),
        ("POST", SERVER_API, "429", 7.0),
        ("GET", USER_API, "200", 25.0),
        ("GET", METRICS_HANDLER, "200", 4.0),
    ],
    15.0,
)


def test_hub_load_is_the_difference_without_metrics_scrapes() -> None:
    load = hub_load(parse_hub_metrics(METRICS_BEFORE), parse_hub_metrics(METRICS_AFTER))
    assert load.requests == 20 + 7 + 25
    assert load.refused == 7
    assert load.by_code == {"200": 25, "201": 20, "429": 7}
    assert load.by_handler == {"UserServerAPIHandler": 27, "UserAPIHandler": 25}
    assert load.cpu_seconds == pytest.approx(2.5)


def test_hub_restart_between_scrapes_counts_what_the_new_process_did() -> None:
    before = HubScrape({("GET", "h.X", "200"): 100.0}, 50.0)
    after = HubScrape({("GET", "h.X", "200"): 8.0}, 2.0)
    load = hub_load(before, after)
    assert load.requests == 8
    assert load.cpu_seconds == 2.0


def test_cpu_seconds_from_proc_stat_handles_odd_command_names() -> None:
    # utime 250 and stime 50 ticks: fields 14 and 15; the name contains ") (" and spaces.
    fields = ["S", "1", "2", "3", "0", "-1", "4194560", "100", "0", "0", "0", "250", "50"]
    line = "1234 (python -m x) (y) " + " ".join(fields + ["0"] * 30)
    assert cpu_seconds_from_stat(line, 100) == 3.0
    with pytest.raises(ValueError, match="clock_ticks"):
        cpu_seconds_from_stat(line, 0)


# -- the report -----------------------------------------------------------------------------


def outcomes() -> list[UserOutcome]:
    return [
        UserOutcome("a", 0.0, ready_after=2.0),
        UserOutcome("b", 0.0, ready_after=4.0),
        UserOutcome("c", 1.0, ready_after=9.0),
        UserOutcome("d", 1.0, failure="refused", detail="429"),
        UserOutcome("e", 2.0, failure="spawn_failed"),
    ]


def test_report_summarises_outcomes() -> None:
    load = hub_load(parse_hub_metrics(METRICS_BEFORE), parse_hub_metrics(METRICS_AFTER))
    report = build_report(
        outcomes(), target="http://hub", arrival="burst", client="backoff",
        throttled_absorbed=7, spawn_attempts=12, hub=load, tab_requests={"424": 6},
        finished_at=11.0,
    )
    assert report.users == 5
    assert report.ready == 3
    assert report.failures == {"refused": 1, "spawn_failed": 1}
    assert report.failed == 2
    assert report.time_to_ready == Percentiles(4.0, pytest.approx(8.0), pytest.approx(8.9), 9.0)
    assert report.duration == 11.0
    data = report.to_dict()
    assert data["failed"] == 2
    assert data["hub"]["refused"] == 7
    assert data["time_to_ready"]["max"] == 9.0

    text = format_report(report)
    assert "3 of 5" in text
    assert "p50 4.0 s" in text and "max 9.0 s" in text
    assert "429s absorbed        7" in text
    assert "refused 1, spawn_failed 1" in text
    assert "52 requests, 7 of them 429, hub CPU 2.5 s" in text
    assert "6 after the stop (424: 6)" in text


def test_report_without_ready_users_or_hub_figures_says_so() -> None:
    report = build_report(
        [UserOutcome("a", 0.0, failure="timeout")], target="http://hub", arrival="burst",
        client="immediate", throttled_absorbed=0, spawn_attempts=1, hub=None,
    )
    assert report.time_to_ready is None
    text = format_report(report)
    assert "time to ready" not in text
    assert "timeout 1" in text
    assert "unknown" in text


def test_an_outcome_is_either_ready_or_failed_for_a_known_reason() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        UserOutcome("a", 0.0)
    with pytest.raises(ValueError, match="exactly one"):
        UserOutcome("a", 0.0, ready_after=1.0, failure="timeout")
    with pytest.raises(ValueError, match="unknown failure reason"):
        UserOutcome("a", 0.0, failure="gremlins")


def test_progress_bar() -> None:
    line = render_progress(ready=5, failed=1, total=10, absorbed=3, elapsed=12.4, width=10)
    assert line.startswith("[#####x----] 5/10 ready, 1 failed, 4 waiting, ")
    assert line.endswith("3 429s absorbed, 12s")
    assert "still working" in render_progress(
        ready=10, failed=0, total=10, absorbed=0, elapsed=1, working=4, width=10
    )
    # With who is waiting out a 429 now, the hub's event loop and the Kubernetes API's 429s.
    assert render_progress(
        ready=2, failed=0, total=10, absorbed=9, elapsed=30, refused=3, loop_p99=0.0734,
        k8s_throttled=12, width=10,
    ) == ("[##--------] 2/10 ready, 0 failed, 8 waiting (3 refused), 9 429s absorbed, "
          "hub loop p99 73 ms, 12 Kubernetes API 429s, 30s")
    with pytest.raises(ValueError, match="total"):
        render_progress(ready=0, failed=0, total=0, absorbed=0, elapsed=0)


def test_histogram_quantile_interpolates_within_the_bucket_as_prometheus_does() -> None:
    before = {0.05: 10.0, 0.1: 10.0, 0.5: 10.0, math.inf: 10.0}
    after = {0.05: 90.0, 0.1: 100.0, 0.5: 110.0, math.inf: 110.0}
    # 100 observations in between: 80 up to 50 ms, 10 more up to 100 ms, 10 up to 500 ms.
    assert histogram_quantile(0.5, before, after) == pytest.approx(0.05 * 50 / 80)
    assert histogram_quantile(0.85, before, after) == pytest.approx(0.05 + 0.05 * 5 / 10)
    assert histogram_quantile(0.99, before, after) == pytest.approx(0.1 + 0.4 * 9 / 10)
    beyond = {**after, math.inf: 120.0}  # the last 10 above every finite bound
    assert histogram_quantile(0.99, before, beyond) == 0.5
    assert histogram_quantile(0.99, after, after) is None  # nothing observed in between
    with pytest.raises(ValueError, match="quantile"):
        histogram_quantile(99, before, after)


def test_spawns_the_hub_refused_are_not_spawns_that_ended() -> None:
    jupyterhub_5 = {("success", ""): 7.0, ("failure", ""): 2.0, ("throttled", ""): 40.0,
                    ("too-many-users", ""): 3.0}
    jupyterhub_6 = {("success", ""): 7.0, ("failure", "SimulatedStartFailure"): 1.0,
                    ("error", "exited"): 1.0, ("failure", "throttled"): 40.0,
                    ("failure", "already-pending"): 5.0}
    assert ended_spawns(jupyterhub_5) == ended_spawns(jupyterhub_6) == (7.0, 2.0)


def test_a_scrape_reads_the_loop_histogram_spawns_and_admission_gauges() -> None:
    text = "\n".join([
        "# TYPE jupyterhub_event_loop_interval_seconds histogram",
        'jupyterhub_event_loop_interval_seconds_bucket{le="0.05"} 3.0',
        'jupyterhub_event_loop_interval_seconds_bucket{le="+Inf"} 4.0',
        "jupyterhub_event_loop_interval_seconds_count 4.0",
        "jupyterhub_event_loop_interval_seconds_sum 0.3",
        "# TYPE jupyterhub_server_spawn_duration_seconds histogram",
        'jupyterhub_server_spawn_duration_seconds_count{reason="throttled",status="failure"} 9.0',
        'jupyterhub_server_spawn_duration_seconds_count{reason="",status="success"} 2.0',
        "# TYPE hub_resilience_admission_limit gauge",
        "hub_resilience_admission_limit 64.0",
        "# TYPE hub_resilience_admission_signal gauge",
        'hub_resilience_admission_signal{signal="pending_spawns"} 12.0',
        "# TYPE hub_resilience_k8s_api_requests counter",
        'hub_resilience_k8s_api_requests_total{code="ok",operation="pod_create"} 30.0',
        'hub_resilience_k8s_api_requests_total{code="429",operation="pod_create"} 5.0',
        'hub_resilience_k8s_api_requests_total{code="429",operation="pvc_create"} 2.0',
    ])
    scrape = parse_hub_metrics(text)
    assert scrape.loop_intervals == {0.05: 3.0, math.inf: 4.0}
    assert ended_spawns(scrape.spawns) == (2.0, 0.0)
    assert scrape.admission == {"limit": 64.0, "signal:pending_spawns": 12.0}
    assert scrape.k8s_throttled == 7.0
    # A hub without ResilientKubeSpawner has no such figure (not 0: unknown).
    assert parse_hub_metrics("\n".join(text.splitlines()[:5])).k8s_throttled is None
