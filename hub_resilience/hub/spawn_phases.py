"""Where a spawn spent its time, and why it failed, read from a pod and its events.

Pure functions over the pod and event dicts that KubeSpawner's reflectors already hold, so
measuring a launch costs no request. How each phase is read from Kubernetes is in
docs/architecture.md ("A launch"); the phases as metrics in docs/metrics.md.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from hub_resilience.labels import LabelEnum


class SpawnPhase(LabelEnum):
    """Phases of one spawn, in order (the ``phase`` metric label)."""

    HUB = "hub"  # in the hub: spawn requested -> pod create request sent
    API_CREATE = "api_create"  # the Kubernetes API call that creates the pod, retries included
    SCHEDULING = "scheduling"  # pod created -> scheduled (a node scale-up included)
    IMAGE_PULL = "image_pull"  # Pulling -> Pulled, only when the image was pulled
    CONTAINER_START = "container_start"  # image ready (or pod scheduled) -> containers ready
    SERVER_READY = "server_ready"  # pod running -> the hub reached the server over HTTP


class SpawnOutcome(LabelEnum):
    """Outcomes of a spawn (the ``outcome`` label); the hub's own refusals are read from
    JupyterHub's metrics."""

    SUCCESS = "success"
    THROTTLED = "throttled"  # the hub answered 429: concurrent_spawn_limit reached
    OVER_ACTIVE_LIMIT = "over_active_limit"  # the hub refused: active_server_limit reached
    K8S_THROTTLED = "k8s_throttled"  # the Kubernetes API kept answering 429
    QOS_REFUSED = "qos_refused"  # the profile cannot be made Guaranteed
    UNSCHEDULABLE = "unschedulable"
    IMAGE_PULL_FAILURE = "image_pull_failure"
    CRASH = "crash"
    TIMEOUT = "timeout"  # the pod was not running within start_timeout, no cause known
    HTTP_TIMEOUT = "http_timeout"  # the pod ran; its server never answered within http_timeout
    K8S_API_ERROR = "k8s_api_error"
    ERROR = "error"  # anything else


#: Container waiting reasons that mean the image cannot be pulled.
IMAGE_PULL_FAILURES = frozenset(
    {"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull"}
)
#: Container waiting/terminated reasons that mean the server process keeps dying.
CRASH_REASONS = frozenset({"CrashLoopBackOff", "Error", "OOMKilled", "RunContainerError"})

#: "Successfully pulled image "x" in 1m32.5s (1m33s including waiting)": a Go duration.
_PULL_DURATION = re.compile(r" in (?P<duration>(?:[0-9.]+(?:h|ms|m|s|us|µs|ns))+)")
_DURATION_PART = re.compile(r"([0-9.]+)(h|ms|m|s|us|µs|ns)")
_UNIT_SECONDS = {"h": 3600, "m": 60, "s": 1, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}


def parse_time(value: Any) -> datetime | None:
    """A Kubernetes timestamp (RFC 3339, "Z" or offset, optional fraction) as a datetime."""
    if not value:
        return None
    if isinstance(value, datetime):
        return value
    text = str(value).replace("Z", "+00:00")
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return None


def _event_time(event: dict) -> datetime | None:
    for key in ("eventTime", "firstTimestamp", "lastTimestamp"):
        when = parse_time(event.get(key))
        if when is not None:
            return when
    return parse_time((event.get("metadata") or {}).get("creationTimestamp"))


def _event_last_time(event: dict) -> datetime | None:
    for key in ("lastTimestamp", "eventTime", "firstTimestamp"):
        when = parse_time(event.get(key))
        if when is not None:
            return when
    return None


#: The scheduler's message for a pod whose PVC is not bound yet (not a lack of room).
UNBOUND_CLAIMS = "unbound immediate PersistentVolumeClaims"


def _condition(pod: dict, kind: str) -> dict | None:
    for condition in (pod.get("status") or {}).get("conditions") or []:
        if condition.get("type") == kind:
            return condition
    return None


def _condition_true_at(pod: dict, kind: str) -> datetime | None:
    condition = _condition(pod, kind)
    if condition and condition.get("status") == "True":
        return parse_time(condition.get("lastTransitionTime"))
    return None


def pulled_seconds(message: str) -> float | None:
    """The pull duration the kubelet wrote in a ``Pulled`` message, if it wrote one."""
    if "already present" in message:
        return None
    match = _PULL_DURATION.search(message)
    if not match:
        return None
    try:
        return sum(
            float(number) * _UNIT_SECONDS[unit]
            for number, unit in _DURATION_PART.findall(match["duration"])
        )
    except ValueError:
        return None


@dataclass
class PodTimeline:
    """The phases of one pod's start that Kubernetes recorded."""

    phases: dict[SpawnPhase, float] = field(default_factory=dict)
    scaled_up: bool = False


def _sorted_events(events: list[dict]) -> list[dict]:
    timed = [(when, e) for e in events if (when := _event_time(e)) is not None]
    return [e for _, e in sorted(timed, key=lambda pair: pair[0])]


def pod_timeline(pod: dict, events: list[dict]) -> PodTimeline:
    """Phases of ``pod``'s start so far, from its conditions and ``events`` (this pod's)."""
    timeline = PodTimeline()
    events = _sorted_events(events)
    created = parse_time((pod.get("metadata") or {}).get("creationTimestamp"))
    scheduled = _condition_true_at(pod, "PodScheduled")
    ready = _condition_true_at(pod, "ContainersReady")
    timeline.scaled_up = any(e.get("reason") == "TriggeredScaleUp" for e in events)

    if created and scheduled:
        timeline.phases[SpawnPhase.SCHEDULING] = max(0.0, (scheduled - created).total_seconds())

    pulling = [e for e in events if e.get("reason") == "Pulling"]
    pulled = [
        e
        for e in events
        if e.get("reason") == "Pulled" and "already present" not in (e.get("message") or "")
    ]
    image_ready = None
    if pulled:
        image_ready = _event_last_time(pulled[-1])
        exact = [pulled_seconds(e.get("message") or "") for e in pulled]
        if all(seconds is not None for seconds in exact):
            timeline.phases[SpawnPhase.IMAGE_PULL] = float(sum(exact))  # type: ignore[arg-type]
        elif pulling and image_ready:
            start = _event_time(pulling[0])
            if start:
                pull = (image_ready - start).total_seconds()
                timeline.phases[SpawnPhase.IMAGE_PULL] = max(0.0, pull)

    start_from = image_ready or scheduled
    if ready and start_from:
        timeline.phases[SpawnPhase.CONTAINER_START] = max(0.0, (ready - start_from).total_seconds())
    return timeline


def _container_statuses(pod: dict) -> list[dict]:
    status = pod.get("status") or {}
    return list(status.get("initContainerStatuses") or []) + list(
        status.get("containerStatuses") or []
    )


def failure_reason(pod: dict | None, events: list[dict]) -> SpawnOutcome | None:
    """Why a pod did not start, as a spawn outcome, or None when Kubernetes shows no cause.

    Reads, in order: the ``PodScheduled`` condition (Unschedulable), container states
    (image pull failures, crashes), then the pod's events (FailedScheduling, Failed pulls,
    BackOff restarts) for pods the reflector saw only briefly.
    """
    if pod:
        scheduled = _condition(pod, "PodScheduled")
        if (
            scheduled
            and scheduled.get("status") == "False"
            and (scheduled.get("reason") == "Unschedulable")
        ):
            return SpawnOutcome.UNSCHEDULABLE
        for status in _container_statuses(pod):
            state = status.get("state") or {}
            waiting = (state.get("waiting") or {}).get("reason")
            terminated = (state.get("terminated") or {}).get("reason")
            last = ((status.get("lastState") or {}).get("terminated") or {}).get("reason")
            if waiting in IMAGE_PULL_FAILURES:
                return SpawnOutcome.IMAGE_PULL_FAILURE
            if waiting in CRASH_REASONS or terminated in CRASH_REASONS or last in CRASH_REASONS:
                return SpawnOutcome.CRASH
            if (status.get("restartCount") or 0) > 0:
                return SpawnOutcome.CRASH
    reasons = [e.get("reason") for e in events]
    if "FailedScheduling" in reasons and not _scheduled(pod):
        return SpawnOutcome.UNSCHEDULABLE
    if (
        any(
            e.get("reason") in {"Failed", "BackOff"} and "pull" in (e.get("message") or "").lower()
            for e in events
        )
        or "ErrImagePull" in reasons
    ):
        return SpawnOutcome.IMAGE_PULL_FAILURE
    if "BackOff" in reasons:
        return SpawnOutcome.CRASH
    return None


def _scheduled(pod: dict | None) -> bool:
    return bool(pod) and _condition_true_at(pod, "PodScheduled") is not None  # type: ignore[arg-type]


def waits_for_node(pod: dict | None) -> bool:
    """Whether the pod is pending because the scheduler found no node for it (yet): no room,
    or a scale-up under way. The admission governor's capacity signal. Not while its PVC
    is being bound (a StorageClass with Immediate binding), which the scheduler reports as
    unschedulable too, for a second or two."""
    if not pod or (pod.get("status") or {}).get("phase") not in (None, "Pending"):
        return False
    scheduled = _condition(pod, "PodScheduled")
    if not scheduled or scheduled.get("status") != "False":
        return False
    return UNBOUND_CLAIMS not in (scheduled.get("message") or "")

