"""The admission benchmark's event-loop comparison (benchmarks/admission.py): every
configuration's loop is compared over the same seconds of the arrival, so a configuration
that serves the crowd slowly cannot dilute its stalls with a quiet tail."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from benchmarks.admission import Outcome, Sample, common_window, keep
from benchmarks.common import artifact_path
from hub_resilience.tools.loadreport import HubScrape

BOUNDS = (0.05, 0.1, 0.25, float("inf"))


def reading(at: float, quick: int, stalled: int) -> Sample:
    """A reading after ``quick`` on-time ticks and ``stalled`` ticks 50-100 ms late."""
    counts = (quick, quick + stalled, quick + stalled, quick + stalled)
    return Sample(at, HubScrape({}, None, dict(zip(BOUNDS, counts, strict=True))))


def outcome(*samples: Sample) -> Outcome:
    report: Any = None  # only the readings are used here
    return Outcome(report, 0.0, list(samples))


def test_the_loop_is_compared_over_the_shortest_run_not_each_runs_own_length() -> None:
    # Both hubs stall 30 times in the first 100 s of the arrival, 2,000 ticks in all.
    fast = outcome(reading(0, 0, 0), reading(100, 1970, 30))
    # The slow one then runs 400 s more without a stall, which halves its stalls' share.
    slow = outcome(reading(0, 0, 0), reading(100, 1970, 30), reading(500, 9970, 30))
    assert common_window([fast, slow]) == 100
    whole_fast = fast.loop_p99_within(fast.duration)
    whole_slow = slow.loop_p99_within(slow.duration)
    assert whole_fast is not None and whole_slow is not None
    assert whole_slow < whole_fast  # over its own run, the slow hub looks smoother
    assert whole_slow <= 0.05  # within the first bucket: no stall in its top 1%
    assert slow.loop_p99_within(100) == whole_fast  # over the same 100 s, they are equal
    assert whole_fast > 0.05


def test_no_comparison_without_two_readings_in_the_window() -> None:
    only_start = outcome(reading(0, 0, 0), reading(200, 100, 5))
    assert only_start.loop_p99_within(100) is None
    assert common_window([only_start, outcome()]) == 0.0


def test_a_runs_readings_are_kept_for_a_later_look(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setenv("HUB_RESILIENCE_HOME", str(tmp_path))
    run = outcome(reading(0, 0, 0), reading(1, 20, 0), reading(2, 38, 1))
    run = Outcome(run.report, 0.0, run.samples, ready_after=(12.5, math.inf))
    path = artifact_path("admission", "500 users at once-the governor (from 64)", ".json")
    assert path == tmp_path / "artifacts" / "admission" / (
        "500-users-at-once-the-governor--from-64-.json"
    )
    keep(run, path)
    kept = json.loads(path.read_text())
    assert [r["at"] for r in kept["readings"]] == [0, 1]
    assert kept["readings"][1]["loop_intervals"]["0.05"] == 20
    assert kept["ready_after"] == [12.5, None]
    assert kept["retry_after_ratios"] == []


def test_only_the_told_governor_is_told_the_node_start_up() -> None:
    from traitlets.config import Config

    from benchmarks.admission import CONFIGURATIONS, GOVERNOR_TOLD, NODE_START_UP

    told = {}
    for configuration in CONFIGURATIONS:
        c = Config()
        exec(configuration.hub_config(), {"c": c})  # as JupyterHub loads a config file
        told[configuration] = c.AdmissionGovernor.scale_up_seconds
    assert told == {configuration: NODE_START_UP if configuration is GOVERNOR_TOLD else 0.0
                    for configuration in CONFIGURATIONS}
    assert NODE_START_UP == 133.0
