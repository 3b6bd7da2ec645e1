"""Spawn phases and failure reasons read from recorded pod conditions and events."""

from __future__ import annotations

import pytest

from hub_resilience.hub.spawn_phases import (
    failure_reason,
    pod_timeline,
    pulled_seconds,
    waits_for_node,
)
from tests.data import pod_sequences as seq


def test_scheduled_at_once_with_image_present() -> None:
    t = pod_timeline(seq.SCHEDULED_AT_ONCE["pod"], seq.SCHEDULED_AT_ONCE["events"])
    assert t.phases == {"scheduling": 1.0, "container_start": 3.0}
    assert not t.scaled_up
    assert failure_reason(seq.SCHEDULED_AT_ONCE["pod"], seq.SCHEDULED_AT_ONCE["events"]) is None


def test_scale_up_is_part_of_scheduling_and_flagged() -> None:
    t = pod_timeline(seq.SCALE_UP_THEN_SCHEDULED["pod"], seq.SCALE_UP_THEN_SCHEDULED["events"])
    assert t.scaled_up
    assert t.phases["scheduling"] == 251.0  # 10:00:00 -> 10:04:11
    assert t.phases["image_pull"] == pytest.approx(5.2)  # the kubelet's own figure
    assert t.phases["container_start"] == 3.0  # Pulled 10:04:17 -> ready 10:04:20


def test_slow_image_pull_uses_the_go_duration_in_the_message() -> None:
    t = pod_timeline(seq.SLOW_IMAGE_PULL["pod"], seq.SLOW_IMAGE_PULL["events"])
    assert t.phases["image_pull"] == pytest.approx(212.5)  # 3m32.5s
    assert t.phases["scheduling"] == 1.0
    assert t.phases["container_start"] == 4.0


def test_image_pull_falls_back_to_event_times_without_a_duration() -> None:
    events = [dict(e) for e in seq.SLOW_IMAGE_PULL["events"]]
    for e in events:
        if e["reason"] == "Pulled":
            e["message"] = f'Successfully pulled image "{seq.IMAGE}"'
    t = pod_timeline(seq.SLOW_IMAGE_PULL["pod"], events)
    assert t.phases["image_pull"] == 214.0  # 10:00:02 -> 10:03:36


def test_image_pull_failure() -> None:
    pod, events = seq.IMAGE_PULL_FAILURE["pod"], seq.IMAGE_PULL_FAILURE["events"]
    assert failure_reason(pod, events) == "image_pull_failure"
    assert "container_start" not in pod_timeline(pod, events).phases
    # Seen only through events (the pod already gone from the reflector):
    assert failure_reason(None, events) == "image_pull_failure"


def test_crash_loop() -> None:
    pod, events = seq.CRASH_LOOP["pod"], seq.CRASH_LOOP["events"]
    assert failure_reason(pod, events) == "crash"
    assert failure_reason(None, events) == "crash"
    assert "image_pull" not in pod_timeline(pod, events).phases


def test_unschedulable() -> None:
    pod, events = seq.UNSCHEDULABLE["pod"], seq.UNSCHEDULABLE["events"]
    assert failure_reason(pod, events) == "unschedulable"
    assert failure_reason(None, events) == "unschedulable"
    assert pod_timeline(pod, events).phases == {}


def test_only_a_pod_the_scheduler_has_not_placed_waits_for_a_node() -> None:
    """The admission governor's capacity signal: unschedulable (no room, or a scale-up under
    way) until the pod is scheduled; never once it is, nor for no pod."""
    assert waits_for_node(seq.UNSCHEDULABLE["pod"])
    assert not waits_for_node(seq.SCALE_UP_THEN_SCHEDULED["pod"])
    assert not waits_for_node(seq.SCHEDULED_AT_ONCE["pod"])
    assert not waits_for_node(None)
    assert not waits_for_node({"status": {"phase": "Pending"}})  # not looked at yet
    binding = {"status": {"phase": "Pending", "conditions": [{
        "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
        "message": "0/4 nodes are available: pod has unbound immediate PersistentVolumeClaims."
    }]}}
    assert not waits_for_node(binding)  # its PVC is being bound: not a lack of room


def test_failed_scheduling_then_scheduled_is_not_unschedulable() -> None:
    pod, events = seq.SCALE_UP_THEN_SCHEDULED["pod"], seq.SCALE_UP_THEN_SCHEDULED["events"]
    assert failure_reason(pod, events) is None


@pytest.mark.parametrize(
    ("message", "seconds"),
    [
        ('Successfully pulled image "x" in 2.53s (2.53s including waiting)', 2.53),
        ('Successfully pulled image "x" in 850ms (850ms including waiting)', 0.85),
        ('Successfully pulled image "x" in 1h2m3s (1h2m3s including waiting)', 3723.0),
        ('Container image "x" already present on machine', None),
        ("Successfully pulled image", None),
    ],
)
def test_pulled_seconds(message: str, seconds: float | None) -> None:
    assert pulled_seconds(message) == (pytest.approx(seconds) if seconds else None)
