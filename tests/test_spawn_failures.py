"""What a failed spawn is counted as, and what the user reads (pure; no I/O)."""

from __future__ import annotations

import asyncio

import pytest
from kubernetes_asyncio.client.rest import ApiException

from hub_resilience.hub.k8s_requests import K8sRequestFailed
from hub_resilience.hub.metrics import K8sOperation, K8sRetryReason
from hub_resilience.hub.qos import QoSError
from hub_resilience.hub.spawn_failures import (
    WatchDown,
    cancelled_by_start_timeout,
    classify_failure,
    try_again_in,
)
from hub_resilience.hub.spawn_phases import SpawnOutcome

UNSCHEDULABLE_POD = {
    "metadata": {"name": "jupyter-alice", "uid": "u1"},
    "status": {
        "phase": "Pending",
        "conditions": [
            {
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "message": "0/4 nodes are available: 4 Insufficient cpu.",
            }
        ],
    },
}
PULL_FAILING_POD = {
    "metadata": {"name": "jupyter-alice", "uid": "u1"},
    "status": {
        "phase": "Pending",
        "containerStatuses": [
            {"name": "notebook", "state": {"waiting": {"reason": "ErrImagePull"}}}
        ],
    },
}
PENDING_POD = {"metadata": {"name": "jupyter-alice", "uid": "u1"}, "status": {"phase": "Pending"}}


def gave_up(reason: K8sRetryReason, last: BaseException, retry_in: float = 1.2) -> K8sRequestFailed:
    return K8sRequestFailed(K8sOperation.CREATE_POD, 20, 29.6, reason, last, retry_in)


def classify(error: BaseException, **kwargs):
    kwargs.setdefault("pod", None)
    kwargs.setdefault("events", [])
    kwargs.setdefault("start_timeout", 300)
    return classify_failure(error, **kwargs)


def test_a_profile_that_cannot_be_guaranteed_is_qos_refused() -> None:
    failure = classify(QoSError("profile 'x', container 'y': cpu has neither"))
    assert failure.outcome is SpawnOutcome.QOS_REFUSED and failure.message is None


def test_persistent_throttling_says_when_to_try_again() -> None:
    failure = classify(gave_up(K8sRetryReason.THROTTLED, ApiException(status=429)))
    assert failure.outcome is SpawnOutcome.K8S_THROTTLED
    assert "kept throttling" in failure.message and "try again in 5 seconds" in failure.message


@pytest.mark.parametrize(
    "reason",
    [K8sRetryReason.CONNECTION_ERROR, K8sRetryReason.TIMEOUT, K8sRetryReason.SERVER_ERROR],
)
def test_an_api_server_that_does_not_answer_is_an_api_error(reason: K8sRetryReason) -> None:
    failure = classify(gave_up(reason, asyncio.TimeoutError(), retry_in=12))
    assert failure.outcome is SpawnOutcome.K8S_API_ERROR
    assert "could not get an answer" in failure.message and "try again in 12 seconds" in (
        failure.message
    )


def test_a_refused_request_is_an_api_error_with_its_status() -> None:
    failure = classify(ApiException(status=422, reason="Unprocessable Entity"))
    assert failure.outcome is SpawnOutcome.K8S_API_ERROR
    assert "422 Unprocessable Entity" in failure.message


def test_a_timeout_on_an_unschedulable_pod_names_the_cause_and_the_scheduler_words() -> None:
    failure = classify(TimeoutError(), pod=UNSCHEDULABLE_POD, start_timeout=20)
    assert failure.outcome is SpawnOutcome.UNSCHEDULABLE
    assert failure.message.startswith("Your server did not start within 20 seconds because no node")
    # Without events (events_enabled=False) the pod's condition gives Kubernetes' words.
    assert "Kubernetes says: 0/4 nodes are available: 4 Insufficient cpu." in failure.message


def test_a_pod_waiting_for_its_volume_says_so() -> None:
    events = [
        {
            "reason": "FailedScheduling",
            "message": "0/4 nodes are available: pod has unbound immediate "
            "PersistentVolumeClaims. not found",
        }
    ]
    failure = classify(TimeoutError(), pod=UNSCHEDULABLE_POD, events=events, start_timeout=15)
    assert failure.outcome is SpawnOutcome.UNSCHEDULABLE
    assert "because its storage is not ready yet (the volume claim is not bound)" in (
        failure.message
    )


def test_an_event_message_is_preferred_to_the_condition() -> None:
    events = [
        {"reason": "FailedScheduling", "message": "0/30 nodes are available: 30 Too many pods."}
    ]
    failure = classify(TimeoutError(), pod=UNSCHEDULABLE_POD, events=events)
    assert failure.message.endswith("Kubernetes says: 0/30 nodes are available: 30 Too many pods.")


def test_an_image_that_cannot_be_pulled() -> None:
    failure = classify(TimeoutError(), pod=PULL_FAILING_POD, start_timeout=300)
    assert failure.outcome is SpawnOutcome.IMAGE_PULL_FAILURE
    assert "its image could not be pulled" in failure.message


def test_a_timeout_while_the_watch_is_throttled_is_k8s_throttled() -> None:
    down = WatchDown(K8sRetryReason.THROTTLED, 95)
    failure = classify(TimeoutError(), pod=PENDING_POD, watch_down=down, retry_cap=60)
    assert failure.outcome is SpawnOutcome.K8S_THROTTLED
    assert "throttling the hub" in failure.message and "95 s" in failure.message
    assert "try again in 60 seconds" in failure.message


def test_a_timeout_while_the_api_server_is_unreachable_is_an_api_error() -> None:
    down = WatchDown(K8sRetryReason.CONNECTION_ERROR, 61)
    failure = classify(TimeoutError(), pod=None, watch_down=down)
    assert failure.outcome is SpawnOutcome.K8S_API_ERROR
    assert "lost contact" in failure.message


def test_what_the_pod_shows_wins_over_a_watch_that_is_down() -> None:
    down = WatchDown(K8sRetryReason.THROTTLED, 10)
    failure = classify(TimeoutError(), pod=UNSCHEDULABLE_POD, watch_down=down)
    assert failure.outcome is SpawnOutcome.UNSCHEDULABLE


def test_a_plain_timeout_and_anything_else() -> None:
    failure = classify(TimeoutError(), pod=PENDING_POD, start_timeout=120)
    assert failure.outcome is SpawnOutcome.TIMEOUT
    assert "did not start within 120 seconds; Kubernetes shows no cause" in failure.message
    assert classify(ValueError("bug")).outcome is SpawnOutcome.ERROR
    assert classify(ValueError("bug")).message is None


def test_try_again_rounds_up_and_never_says_less_than_five_seconds() -> None:
    assert try_again_in(0.2) == "try again in 5 seconds"
    assert try_again_in(30.1) == "try again in 31 seconds"


def test_a_start_timeout_cutting_off_throttling_is_k8s_throttled() -> None:
    """The hub's start_timeout cancelled a start whose request was still being throttled."""
    throttled = gave_up(K8sRetryReason.THROTTLED, ApiException(status=429), retry_in=21.5)
    failure = classify(TimeoutError(), pod=PENDING_POD, start_timeout=15, throttled=throttled)
    assert failure.outcome is SpawnOutcome.K8S_THROTTLED
    assert failure.message.startswith("Your server did not start within 15 seconds: the cluster")
    assert "20 attempts over 30 s" in failure.message and "try again in 22 seconds" in (
        failure.message
    )
    # What the pod shows still wins; an error that is not a timeout keeps its own outcome.
    assert classify(TimeoutError(), pod=UNSCHEDULABLE_POD, throttled=throttled).outcome is (
        SpawnOutcome.UNSCHEDULABLE
    )
    assert classify(ValueError("bug"), throttled=throttled).outcome is SpawnOutcome.ERROR


@pytest.mark.parametrize(
    ("waited", "start_timeout", "hubs"),
    [(15.0, 15.0, True), (14.95, 15.0, True), (16.2, 15.0, True), (14.0, 15.0, False),
     (0.3, 300.0, False)],
)
def test_the_hubs_cancel_is_the_one_at_its_start_timeout(
    waited: float, start_timeout: float, hubs: bool
) -> None:
    assert cancelled_by_start_timeout(waited, start_timeout) is hubs
