"""Pod objects and events as the Kubernetes API returns them for five kinds of spawn.

Transcribed from the shapes kube-scheduler, the kubelet and the cluster autoscaler write
(core/v1 Events: the scheduler sets ``eventTime`` with microseconds, the kubelet
``firstTimestamp``/``lastTimestamp`` in whole seconds; kubelet messages as written by
kubelet 1.30+, including the Go-duration pull time). Names and times are illustrative.
"""

from __future__ import annotations

IMAGE = "quay.io/jupyter/scipy-notebook:2026-10-05"


def _pod(
    name: str,
    created: str,
    conditions: list[dict],
    container_statuses: list[dict],
    phase: str = "Running",
) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": "hub",
            "creationTimestamp": created,
            "labels": {"component": "singleuser-server"},
        },
        "spec": {"containers": [{"name": "notebook", "image": IMAGE}]},
        "status": {
            "phase": phase,
            "qosClass": "Guaranteed",
            "conditions": conditions,
            "containerStatuses": container_statuses,
        },
    }


def _cond(
    kind: str, status: str, when: str, reason: str | None = None, message: str | None = None
) -> dict:
    c = {"type": kind, "status": status, "lastProbeTime": None, "lastTransitionTime": when}
    if reason:
        c["reason"] = reason
    if message:
        c["message"] = message
    return c


def _event(
    reason: str,
    message: str,
    *,
    first: str | None = None,
    last: str | None = None,
    event_time: str | None = None,
    component: str = "kubelet",
    kind: str = "Normal",
    count: int = 1,
) -> dict:
    return {
        "metadata": {"name": f"jupyter-x.{reason.lower()}", "namespace": "hub"},
        "involvedObject": {"kind": "Pod", "namespace": "hub", "name": "jupyter-x"},
        "reason": reason,
        "message": message,
        "type": kind,
        "count": count,
        "source": {"component": component},
        "firstTimestamp": first,
        "lastTimestamp": last or first,
        "eventTime": event_time,
        "reportingComponent": component,
    }


def _running(started: str, restarts: int = 0) -> dict:
    return {
        "name": "notebook",
        "ready": True,
        "restartCount": restarts,
        "image": IMAGE,
        "state": {"running": {"startedAt": started}},
    }


SCHEDULED_AT_ONCE = {
    "pod": _pod(
        "jupyter-x",
        "2026-11-20T10:00:00Z",
        [
            _cond("PodReadyToStartContainers", "True", "2026-11-20T10:00:02Z"),
            _cond("Initialized", "True", "2026-11-20T10:00:01Z"),
            _cond("Ready", "True", "2026-11-20T10:00:04Z"),
            _cond("ContainersReady", "True", "2026-11-20T10:00:04Z"),
            _cond("PodScheduled", "True", "2026-11-20T10:00:01Z"),
        ],
        [_running("2026-11-20T10:00:03Z")],
    ),
    "events": [
        _event(
            "Scheduled",
            "Successfully assigned hub/jupyter-x to node-a",
            event_time="2026-11-20T10:00:00.812345Z",
            component="default-scheduler",
        ),
        _event(
            "Pulled",
            f'Container image "{IMAGE}" already present on machine',
            first="2026-11-20T10:00:02Z",
        ),
        _event("Created", "Created container: notebook", first="2026-11-20T10:00:02Z"),
        _event("Started", "Started container notebook", first="2026-11-20T10:00:03Z"),
    ],
}

SCALE_UP_THEN_SCHEDULED = {
    "pod": _pod(
        "jupyter-x",
        "2026-11-20T10:00:00Z",
        [
            _cond("Initialized", "True", "2026-11-20T10:04:12Z"),
            _cond("Ready", "True", "2026-11-20T10:04:20Z"),
            _cond("ContainersReady", "True", "2026-11-20T10:04:20Z"),
            _cond("PodScheduled", "True", "2026-11-20T10:04:11Z"),
        ],
        [_running("2026-11-20T10:04:19Z")],
    ),
    "events": [
        _event(
            "FailedScheduling",
            "0/3 nodes are available: 3 Insufficient memory. preemption: 0/3 nodes are "
            "available: 3 No preemption victims found for incoming pod.",
            event_time="2026-11-20T10:00:00.500000Z",
            component="default-scheduler",
            kind="Warning",
        ),
        _event(
            "TriggeredScaleUp",
            "pod triggered scale-up: [{user-pool 3->4 (max: 20)}]",
            first="2026-11-20T10:00:10Z",
            component="cluster-autoscaler",
        ),
        _event(
            "Scheduled",
            "Successfully assigned hub/jupyter-x to node-d",
            event_time="2026-11-20T10:04:11.000100Z",
            component="default-scheduler",
        ),
        _event("Pulling", f'Pulling image "{IMAGE}"', first="2026-11-20T10:04:12Z"),
        _event(
            "Pulled",
            f'Successfully pulled image "{IMAGE}" in 5.2s (5.2s including '
            "waiting). Image size: 1523456789 bytes.",
            first="2026-11-20T10:04:17Z",
        ),
        _event("Created", "Created container: notebook", first="2026-11-20T10:04:18Z"),
        _event("Started", "Started container notebook", first="2026-11-20T10:04:19Z"),
    ],
}

SLOW_IMAGE_PULL = {
    "pod": _pod(
        "jupyter-x",
        "2026-11-20T10:00:00Z",
        [
            _cond("Initialized", "True", "2026-11-20T10:00:02Z"),
            _cond("Ready", "True", "2026-11-20T10:03:40Z"),
            _cond("ContainersReady", "True", "2026-11-20T10:03:40Z"),
            _cond("PodScheduled", "True", "2026-11-20T10:00:01Z"),
        ],
        [_running("2026-11-20T10:03:39Z")],
    ),
    "events": [
        _event(
            "Scheduled",
            "Successfully assigned hub/jupyter-x to node-b",
            event_time="2026-11-20T10:00:01.100000Z",
            component="default-scheduler",
        ),
        _event("Pulling", f'Pulling image "{IMAGE}"', first="2026-11-20T10:00:02Z"),
        _event(
            "Pulled",
            f'Successfully pulled image "{IMAGE}" in 3m32.5s (3m34.1s including '
            "waiting). Image size: 4523456789 bytes.",
            first="2026-11-20T10:03:36Z",
        ),
        _event("Created", "Created container: notebook", first="2026-11-20T10:03:37Z"),
        _event("Started", "Started container notebook", first="2026-11-20T10:03:39Z"),
    ],
}

IMAGE_PULL_FAILURE = {
    "pod": _pod(
        "jupyter-x",
        "2026-11-20T10:00:00Z",
        [
            _cond("Initialized", "True", "2026-11-20T10:00:01Z"),
            _cond(
                "Ready",
                "False",
                "2026-11-20T10:00:01Z",
                "ContainersNotReady",
                "containers with unready status: [notebook]",
            ),
            _cond(
                "ContainersReady",
                "False",
                "2026-11-20T10:00:01Z",
                "ContainersNotReady",
                "containers with unready status: [notebook]",
            ),
            _cond("PodScheduled", "True", "2026-11-20T10:00:01Z"),
        ],
        [
            {
                "name": "notebook",
                "ready": False,
                "restartCount": 0,
                "image": IMAGE + "-typo",
                "state": {
                    "waiting": {
                        "reason": "ImagePullBackOff",
                        "message": f'Back-off pulling image "{IMAGE}-typo"',
                    }
                },
            }
        ],
        phase="Pending",
    ),
    "events": [
        _event(
            "Scheduled",
            "Successfully assigned hub/jupyter-x to node-a",
            event_time="2026-11-20T10:00:00.900000Z",
            component="default-scheduler",
        ),
        _event(
            "Pulling",
            f'Pulling image "{IMAGE}-typo"',
            first="2026-11-20T10:00:02Z",
            last="2026-11-20T10:00:45Z",
            count=3,
        ),
        _event(
            "Failed",
            f'Failed to pull image "{IMAGE}-typo": rpc error: code = NotFound '
            "desc = failed to pull and unpack image: not found",
            first="2026-11-20T10:00:03Z",
            last="2026-11-20T10:00:46Z",
            kind="Warning",
            count=3,
        ),
        _event("Failed", "Error: ErrImagePull", first="2026-11-20T10:00:03Z", kind="Warning"),
        _event(
            "BackOff",
            f'Back-off pulling image "{IMAGE}-typo"',
            first="2026-11-20T10:00:04Z",
            last="2026-11-20T10:00:58Z",
            kind="Warning",
            count=4,
        ),
        _event("Failed", "Error: ImagePullBackOff", first="2026-11-20T10:00:04Z", kind="Warning"),
    ],
}

CRASH_LOOP = {
    "pod": _pod(
        "jupyter-x",
        "2026-11-20T10:00:00Z",
        [
            _cond("Initialized", "True", "2026-11-20T10:00:01Z"),
            _cond(
                "Ready",
                "False",
                "2026-11-20T10:00:09Z",
                "ContainersNotReady",
                "containers with unready status: [notebook]",
            ),
            _cond(
                "ContainersReady",
                "False",
                "2026-11-20T10:00:09Z",
                "ContainersNotReady",
                "containers with unready status: [notebook]",
            ),
            _cond("PodScheduled", "True", "2026-11-20T10:00:01Z"),
        ],
        [
            {
                "name": "notebook",
                "ready": False,
                "restartCount": 3,
                "image": IMAGE,
                "state": {
                    "waiting": {
                        "reason": "CrashLoopBackOff",
                        "message": "back-off 40s restarting failed container=notebook",
                    }
                },
                "lastState": {
                    "terminated": {
                        "reason": "Error",
                        "exitCode": 1,
                        "startedAt": "2026-11-20T10:00:30Z",
                        "finishedAt": "2026-11-20T10:00:31Z",
                    }
                },
            }
        ],
    ),
    "events": [
        _event(
            "Scheduled",
            "Successfully assigned hub/jupyter-x to node-c",
            event_time="2026-11-20T10:00:00.700000Z",
            component="default-scheduler",
        ),
        _event(
            "Pulled",
            f'Container image "{IMAGE}" already present on machine',
            first="2026-11-20T10:00:02Z",
            last="2026-11-20T10:00:30Z",
            count=4,
        ),
        _event("Created", "Created container: notebook", first="2026-11-20T10:00:02Z", count=4),
        _event("Started", "Started container notebook", first="2026-11-20T10:00:03Z", count=4),
        _event(
            "BackOff",
            "Back-off restarting failed container notebook in pod "
            "jupyter-x_hub(0b6e1f2a-3c4d-4e5f-8a9b-0c1d2e3f4a5b)",
            first="2026-11-20T10:00:09Z",
            last="2026-11-20T10:00:50Z",
            kind="Warning",
            count=5,
        ),
    ],
}

UNSCHEDULABLE = {
    "pod": _pod(
        "jupyter-x",
        "2026-11-20T10:00:00Z",
        [
            _cond(
                "PodScheduled",
                "False",
                "2026-11-20T10:00:00Z",
                "Unschedulable",
                "0/3 nodes are available: 3 Insufficient cpu. preemption: 0/3 nodes are "
                "available: 3 No preemption victims found for incoming pod.",
            ),
        ],
        [],
        phase="Pending",
    ),
    "events": [
        _event(
            "FailedScheduling",
            "0/3 nodes are available: 3 Insufficient cpu. preemption: 0/3 nodes are "
            "available: 3 No preemption victims found for incoming pod.",
            event_time="2026-11-20T10:00:00.400000Z",
            component="default-scheduler",
            kind="Warning",
        ),
    ],
}
