"""Why a spawn failed, and what to tell the user: pure functions, no I/O.

Why: the user should read what happened (no node fits, the image cannot be pulled, the
cluster is throttling and when to try again), not a generic timeout, and the operator's
metrics should count the same cause. The inputs are what the spawner already holds: the
error, the pod and its events from the reflectors, and the state of the watches.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass

from kubernetes_asyncio.client.rest import ApiException

from hub_resilience.hub import qos, spawn_phases
from hub_resilience.hub.k8s_requests import K8sRequestFailed, describe_error
from hub_resilience.hub.metrics import K8sRetryReason
from hub_resilience.hub.spawn_phases import SpawnOutcome

#: What the user reads for an outcome found on the pod.
POD_CAUSES = {
    SpawnOutcome.UNSCHEDULABLE: "no node in the cluster has room for this profile",
    SpawnOutcome.IMAGE_PULL_FAILURE: "its image could not be pulled",
    SpawnOutcome.CRASH: "its server keeps crashing",
}


#: The scheduler's words for a pod waiting for its volume, and what the user reads then.
UNBOUND_CLAIM = "unbound immediate PersistentVolumeClaims"
STORAGE_NOT_READY = "its storage is not ready yet (the volume claim is not bound)"


@dataclass(frozen=True)
class SpawnFailure:
    """The outcome to count and the message for the user (None: the error's own says it)."""

    outcome: SpawnOutcome
    message: str | None = None


@dataclass(frozen=True)
class WatchDown:
    """A watch of the hub's that was down when the spawn failed, and why."""

    reason: K8sRetryReason | None
    seconds: float


#: How much earlier than the hub's start_timeout a cancellation may arrive and still be the
#: hub's (asyncio may run a timer up to its clock resolution early; a busy loop only later).
START_TIMEOUT_SLACK = 0.1


def cancelled_by_start_timeout(waited: float, start_timeout: float) -> bool:
    """Whether a start cancelled after ``waited`` seconds, counted from when the hub began
    to wait for it, was cancelled by the hub's ``start_timeout`` (the value the hub read
    then): the hub cancels exactly then, any other cancellation (a shutdown) comes earlier."""
    return waited >= start_timeout - START_TIMEOUT_SLACK


def try_again_in(seconds: float) -> str:
    """"try again in 30 seconds" for a wait, rounded up to whole seconds (at least 5)."""
    return f"try again in {max(5, math.ceil(seconds))} seconds"


def kubernetes_says(pod: dict | None, events: list[dict]) -> str:
    """The last thing Kubernetes wrote about the pod (an event, else a condition), quoted."""
    messages = [e.get("message") for e in events if e.get("message")]
    if not messages and pod:
        conditions = (pod.get("status") or {}).get("conditions") or []
        messages = [c.get("message") for c in conditions if c.get("message")]
    return f" Kubernetes says: {messages[-1]}" if messages else ""


def api_failure(error: K8sRequestFailed, retry_cap: float) -> SpawnFailure:
    """A request that the retry path gave up on."""
    wait = min(max(error.retry_in, 1.0), retry_cap)
    if error.reason is K8sRetryReason.THROTTLED:
        return SpawnFailure(
            SpawnOutcome.K8S_THROTTLED,
            "The cluster is busy: its Kubernetes API kept throttling the hub's requests "
            f"({error.attempts} attempts over {error.elapsed:.0f} s); {try_again_in(wait)}.",
        )
    return SpawnFailure(
        SpawnOutcome.K8S_API_ERROR,
        "The hub could not get an answer from the cluster's Kubernetes API "
        f"({describe_error(error.last_error)}, {error.attempts} attempts over "
        f"{error.elapsed:.0f} s); {try_again_in(wait)}.",
    )


def classify_failure(
    error: BaseException,
    *,
    pod: dict | None,
    events: list[dict],
    start_timeout: float,
    watch_down: WatchDown | None = None,
    retry_cap: float = 60.0,
    throttled: K8sRequestFailed | None = None,
) -> SpawnFailure:
    """The outcome of a failed start and what to tell the user.

    Order: the profile (QoS), a request the retry path gave up on, what Kubernetes shows on the
    pod (unschedulable, image pull, crash), a request still being throttled when the start
    timed out (``throttled``: the hub's start_timeout cut the retry path short), a dead watch
    (the hub's view is stale: throttled or unreachable API server), then a plain timeout;
    anything else is ``error`` with the error's own message.
    """
    if isinstance(error, qos.QoSError):
        return SpawnFailure(SpawnOutcome.QOS_REFUSED)
    if isinstance(error, K8sRequestFailed):
        return api_failure(error, retry_cap)
    if isinstance(error, ApiException):
        outcome = SpawnOutcome.K8S_THROTTLED if error.status == 429 else SpawnOutcome.K8S_API_ERROR
        return SpawnFailure(
            outcome, f"The cluster's Kubernetes API refused to start it: {describe_error(error)}."
        )
    timed_out = isinstance(error, (TimeoutError, asyncio.TimeoutError))
    cause = spawn_phases.failure_reason(pod, events)
    within = f"did not start within {start_timeout:g} seconds" if timed_out else "could not start"
    if cause is not None:
        says = kubernetes_says(pod, events)
        because = POD_CAUSES[cause]
        if cause is SpawnOutcome.UNSCHEDULABLE and UNBOUND_CLAIM in says:
            because = STORAGE_NOT_READY
        return SpawnFailure(cause, f"Your server {within} because {because}.{says}")
    if timed_out and throttled is not None:
        wait = min(max(throttled.retry_in, 1.0), retry_cap)
        return SpawnFailure(
            SpawnOutcome.K8S_THROTTLED,
            f"Your server {within}: the cluster is busy, its Kubernetes API kept throttling "
            f"the hub's requests ({throttled.attempts} attempts over {throttled.elapsed:.0f} s); "
            f"{try_again_in(wait)}.",
        )
    if watch_down is not None:
        if watch_down.reason is K8sRetryReason.THROTTLED:
            return SpawnFailure(
                SpawnOutcome.K8S_THROTTLED,
                f"Your server {within}: the cluster's Kubernetes API is throttling the hub, "
                f"which has not seen the state of its pod for {watch_down.seconds:.0f} s; "
                f"{try_again_in(retry_cap)}.",
            )
        return SpawnFailure(
            SpawnOutcome.K8S_API_ERROR,
            f"Your server {within}: the hub has lost contact with the cluster's Kubernetes "
            f"API for {watch_down.seconds:.0f} s; {try_again_in(retry_cap)}.",
        )
    if timed_out:
        return SpawnFailure(
            SpawnOutcome.TIMEOUT,
            f"Your server {within}; Kubernetes shows no cause.{kubernetes_says(pod, events)}",
        )
    return SpawnFailure(SpawnOutcome.ERROR)
