"""Smoke tests of the local Kubernetes harness: the properties the end-to-end tests rely on.

The tests marked ``k8s`` run against the real control plane (tests/k8s/conftest.py). Only the
kubelet and the containers are simulated (KWOK stages and responder.py); what the tests assert
about scheduling, validation, QoS, RBAC and 429s comes from the real kube-apiserver and
kube-scheduler. The unmarked tests check the harness's pure helpers without starting anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import urllib3
from kubernetes import client
from kubernetes.client.rest import ApiException

from tests.k8s.cluster import (
    APF_MATCHING_PRECEDENCE,
    HOSTPATH_PROVISIONER,
    POD_NETWORK,
    ApfEndpoint,
    ApfThrottle,
    LocalCluster,
    NodeShape,
    Throttle,
    apf_flow_schema_manifest,
    apf_nominal_seats,
    apf_priority_level_manifest,
    apf_shares_for_seats,
    apiserver_command,
    apiserver_ready,
    by_verb,
    controller_manager_command,
    count_429s,
    decode_proc_net_address,
    default_storage_class_manifest,
    hold_seat,
    last_ca_certificate,
    node_manifest,
    requests_429,
    tail,
    wait_until,
)
from tests.k8s.responder import desired_endpoints, pod_endpoints

#: Bound for a pod to reach a state. KWOK's stages take about 1-3 s; the bound is for a slow,
#: loaded machine and only turns "never" into a failure with a message.
STATE_TIMEOUT = 90.0


# --------------------------------------------------------------------------------------------
# Pure helpers (no cluster)
# --------------------------------------------------------------------------------------------


def test_fake_node_is_schedulable_with_realistic_capacity_and_loopback_pods() -> None:
    node = node_manifest(2, NodeShape(cpu="4", memory="16Gi", pods="110"))
    assert node["status"]["allocatable"]["cpu"] == "4"
    assert node["status"]["allocatable"]["memory"] == "16Gi"
    assert node["status"]["allocatable"]["pods"] == "110"
    assert "taints" not in node["spec"]
    assert node["metadata"]["annotations"]["kwok.x-k8s.io/node"] == "fake"
    cidr = ipaddress.ip_network(node["spec"]["podCIDR"])
    assert cidr.subnet_of(ipaddress.ip_network(POD_NETWORK))
    assert cidr.network_address.is_loopback
    other = ipaddress.ip_network(node_manifest(3, NodeShape())["spec"]["podCIDR"])
    assert not cidr.overlaps(other)


def test_throttle_refuses_zero_because_kube_apiserver_reads_it_as_unlimited() -> None:
    with pytest.raises(ValueError, match="max_mutating_requests_inflight"):
        Throttle(max_requests_inflight=2, max_mutating_requests_inflight=0)


def apiserver_args(tmp_path: Any) -> dict[str, Any]:
    """The arguments every apiserver_command test passes (ports and files do not matter)."""
    return dict(
        etcd_port=1,
        secure_port=2,
        cert_dir=tmp_path,
        token_file=tmp_path / "t",
        service_account_key=tmp_path / "k",
    )


def test_apiserver_command_binds_loopback_and_throttles_only_when_asked(tmp_path: Any) -> None:
    common = apiserver_args(tmp_path)
    plain = apiserver_command(tmp_path / "kube-apiserver", **common)
    assert "--bind-address=127.0.0.1" in plain
    assert not any(arg.startswith("--max-requests-inflight") for arg in plain)
    throttled = apiserver_command(tmp_path / "kube-apiserver", throttle=Throttle(3, 2), **common)
    assert "--enable-priority-and-fairness=false" in throttled
    assert "--max-requests-inflight=3" in throttled
    assert "--max-mutating-requests-inflight=2" in throttled


def test_apiserver_command_with_apf_keeps_apf_on_with_a_small_total_limit(tmp_path: Any) -> None:
    common = apiserver_args(tmp_path)
    command = apiserver_command(tmp_path / "kube-apiserver", apf=ApfThrottle(1, 20, 10), **common)
    assert "--enable-priority-and-fairness=true" in command
    assert "--max-requests-inflight=20" in command
    assert "--max-mutating-requests-inflight=10" in command
    with pytest.raises(ValueError, match="exclude"):
        apiserver_command(
            tmp_path / "kube-apiserver", throttle=Throttle(1, 1), apf=ApfThrottle(), **common
        )


def test_apf_throttle_refuses_seats_the_server_cannot_give() -> None:
    assert ApfThrottle().server_concurrency_limit == 30
    with pytest.raises(ValueError, match="seats"):
        ApfThrottle(seats=0)
    with pytest.raises(ValueError, match="below the server's concurrency limit"):
        ApfThrottle(seats=30, max_requests_inflight=20, max_mutating_requests_inflight=10)


def test_apf_shares_give_exactly_the_seats_asked_for() -> None:
    # v1.36's suggested and mandatory priority levels hold 245 shares in all.
    assert apf_nominal_seats(30, 1, 245) == 1  # ceil(30 * 1 / 246)
    assert apf_shares_for_seats(1, 30, 245) == 1
    assert apf_shares_for_seats(2, 30, 245) == 9  # ceil(270 / 254) == 2, ceil(240 / 253) == 1
    for seats in (1, 2, 3, 5):
        shares = apf_shares_for_seats(seats, 30, 245)
        assert apf_nominal_seats(30, shares, 245) == seats
    with pytest.raises(ValueError, match="no nominalConcurrencyShares"):
        apf_shares_for_seats(31, 30, 245)


def test_apf_manifests_reject_at_once_and_match_only_the_throttled_service_account() -> None:
    level = apf_priority_level_manifest("hub-throttled", 3)["spec"]
    assert level["type"] == "Limited"
    assert level["limited"] == {
        "nominalConcurrencyShares": 3,
        "lendablePercent": 0,
        "borrowingLimitPercent": 0,
        "limitResponse": {"type": "Reject"},
    }
    schema = apf_flow_schema_manifest("hub-throttled", "hub-throttled", "hub-throttled", "hub")
    spec = schema["spec"]
    assert spec["priorityLevelConfiguration"] == {"name": "hub-throttled"}
    # Before "service-accounts" (9000) and "global-default" (9900), which would match it too.
    assert spec["matchingPrecedence"] == APF_MATCHING_PRECEDENCE < 9000
    (rule,) = spec["rules"]
    assert rule["subjects"] == [
        {"kind": "ServiceAccount", "serviceAccount": {"name": "hub-throttled", "namespace": "hub"}}
    ]
    (resources,) = rule["resourceRules"]
    assert resources["verbs"] == resources["apiGroups"] == resources["resources"] == ["*"]
    assert resources["clusterScope"] is True and resources["namespaces"] == ["*"]
    assert rule["nonResourceRules"] == [{"verbs": ["*"], "nonResourceURLs": ["*"]}]


def test_controller_manager_runs_only_the_pv_binder_on_loopback(tmp_path: Any) -> None:
    command = controller_manager_command(tmp_path / "kcm", tmp_path / "admin.kubeconfig", 5)
    assert "--controllers=persistentvolume-binder-controller" in command
    assert "--enable-hostpath-provisioner=true" in command
    assert "--kube-api-qps=100" in command and "--kube-api-burst=100" in command
    assert "--leader-elect=false" in command
    assert "--bind-address=127.0.0.1" in command
    assert "--secure-port=5" in command
    assert f"--kubeconfig={tmp_path / 'admin.kubeconfig'}" in command


def test_default_storage_class_binds_at_once_and_deletes_with_the_claim() -> None:
    storage_class = default_storage_class_manifest()
    annotations = storage_class["metadata"]["annotations"]
    assert annotations["storageclass.kubernetes.io/is-default-class"] == "true"
    assert storage_class["provisioner"] == HOSTPATH_PROVISIONER == "kubernetes.io/host-path"
    assert storage_class["volumeBindingMode"] == "Immediate"
    assert storage_class["reclaimPolicy"] == "Delete"


#: As kube-apiserver writes it, minus labels the count ignores (component, group, scope, ...).
METRICS_SAMPLE = """\
# HELP apiserver_request_total [STABLE] Counter of apiserver requests
# TYPE apiserver_request_total counter
apiserver_request_total{code="200",dry_run="",resource="pods",verb="LIST",version="v1"} 7
apiserver_request_total{code="429",dry_run="All",resource="pods",verb="POST",version="v1"} 4
apiserver_request_total{code="429",dry_run="",resource="pods",verb="POST",version="v1"} 1
apiserver_request_total{code="429",dry_run="",resource="pods",verb="WATCH",version="v1"} 3
apiserver_request_total{code="429",dry_run="",resource="secrets",verb="LIST",version="v1"} 2
apiserver_request_total{code="429",dry_run="",resource="",verb="GET",version=""} 0
apiserver_request_total_other{code="429",verb="GET",resource="pods"} 9
"""


def test_429s_are_counted_by_verb_and_resource_from_the_metrics_text() -> None:
    counts = count_429s(METRICS_SAMPLE)
    assert counts == {("POST", "pods"): 5, ("WATCH", "pods"): 3, ("LIST", "secrets"): 2}
    assert by_verb(counts) == {"POST": 5, "WATCH": 3, "LIST": 2}
    assert count_429s("") == {}


def test_ca_is_taken_from_the_self_signed_bundle() -> None:
    leaf = b"-----BEGIN CERTIFICATE-----\nLEAF\n-----END CERTIFICATE-----\n"
    ca = b"-----BEGIN CERTIFICATE-----\nCA\n-----END CERTIFICATE-----\n"
    assert last_ca_certificate(leaf + ca) == ca


def test_proc_net_addresses_are_decoded_for_the_loopback_check() -> None:
    assert decode_proc_net_address("0100007F:1F90") == ("127.0.0.1", 8080)
    assert decode_proc_net_address("00000000:0016") == ("0.0.0.0", 22)
    assert decode_proc_net_address("00000000000000000000000001000000:0050") == ("::1", 80)


def _is_gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            # A zombie waiting for a (container) init that never reaps it is gone too.
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_started_processes_die_with_the_process_that_started_them(tmp_path: Any) -> None:
    # A killed pytest (SIGKILL: no finalizers run) must not leave the control plane running.
    starter = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "from pathlib import Path\n"
            "from tests.k8s.cluster import ManagedProcess\n"
            "p = ManagedProcess('sleeper', ['sleep', '300'], Path(sys.argv[1]))\n"
            "p.start()\n"
            "print(p.pid, flush=True)\n"
            "time.sleep(300)\n",
            str(tmp_path / "sleeper.log"),
        ],
        stdout=subprocess.PIPE,
        cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
    )
    try:
        sleeper = int(starter.stdout.readline())
        assert not _is_gone(sleeper)
        starter.send_signal(signal.SIGKILL)
        starter.wait()
        wait_until(lambda: _is_gone(sleeper), timeout=30, what="the orphaned child to be killed")
    finally:
        starter.kill()
        starter.wait()
        starter.stdout.close()


def _pod(phase: str = "Running", ip: str = "127.42.1.7", **extra_meta: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "jupyter-a", "namespace": "hub", "uid": "u1", **extra_meta},
        "spec": {
            "containers": [
                {"name": "notebook", "ports": [{"containerPort": 8888}]},
                {"name": "sidecar", "ports": [{"containerPort": 9000, "protocol": "UDP"}]},
            ]
        },
        "status": {
            "phase": phase,
            "podIP": ip,
            "containerStatuses": [
                {"name": "notebook", "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}}},
                {"name": "sidecar", "state": {"running": {}}},
            ],
        },
    }


def test_responder_serves_declared_tcp_ports_of_running_containers() -> None:
    endpoints = pod_endpoints(_pod())
    assert [(e.ip, e.port) for e in endpoints] == [("127.42.1.7", 8888)]
    assert next(iter(endpoints.values())).pod == "jupyter-a"


def test_responder_serves_nothing_for_pods_that_are_not_up_or_not_on_loopback() -> None:
    assert pod_endpoints(_pod(phase="Pending")) == {}
    assert pod_endpoints(_pod(deletionTimestamp="2026-01-01T00:00:00Z")) == {}
    assert pod_endpoints(_pod(ip="10.0.0.5")) == {}
    crashed = _pod()
    crashed["status"]["containerStatuses"][0]["state"] = {"waiting": {"reason": "CrashLoopBackOff"}}
    assert pod_endpoints(crashed) == {}
    assert desired_endpoints([]) == {}


# --------------------------------------------------------------------------------------------
# Against the local cluster
# --------------------------------------------------------------------------------------------


@pytest.fixture
def core_admin(k8s_cluster: LocalCluster) -> Iterator[client.CoreV1Api]:
    with k8s_cluster.admin_client() as api_client:
        yield client.CoreV1Api(api_client)


@pytest.fixture
def core_hub(k8s_cluster: LocalCluster) -> Iterator[client.CoreV1Api]:
    """The API as the hub sees it: its ServiceAccount token and zero-to-jupyterhub's Role."""
    with k8s_cluster.hub_client() as api_client:
        yield client.CoreV1Api(api_client)


@pytest.fixture
def make_pod(
    k8s_cluster: LocalCluster, core_hub: client.CoreV1Api, core_admin: client.CoreV1Api
) -> Iterator[Callable[..., str]]:
    """Create pods as the hub; whatever is left is removed at the end of the test."""
    names: list[str] = []

    def create(prefix: str, **spec: Any) -> str:
        name = f"{prefix}-{secrets.token_hex(3)}"
        annotations = spec.pop("annotations", {})
        body = {"metadata": {"name": name, "annotations": annotations}, "spec": spec}
        core_hub.create_namespaced_pod(k8s_cluster.namespace, body)
        names.append(name)
        return name

    yield create
    for name in names:
        try:
            core_admin.delete_namespaced_pod(name, k8s_cluster.namespace, grace_period_seconds=0)
        except ApiException as error:
            if error.status != 404:
                raise


def notebook_container(
    image: str = "quay.io/jupyter/base-notebook:2025-01-01", cpu: str = "500m"
) -> dict[str, Any]:
    """What KubeSpawner's pod looks like in the parts that matter here: requests == limits
    (Guaranteed QoS) and the notebook port 8888."""
    resources = {"cpu": cpu, "memory": "1Gi"}
    return {
        "name": "notebook",
        "image": image,
        "ports": [{"name": "notebook-port", "containerPort": 8888}],
        "resources": {"requests": dict(resources), "limits": dict(resources)},
    }


def read_pod(core: client.CoreV1Api, cluster: LocalCluster, name: str) -> client.V1Pod:
    return core.read_namespaced_pod(name, cluster.namespace)


def wait_pod(
    core: client.CoreV1Api,
    cluster: LocalCluster,
    name: str,
    what: str,
    check: Callable[[client.V1Pod], bool],
) -> client.V1Pod:
    found: list[client.V1Pod] = []

    def condition() -> bool:
        pod = read_pod(core, cluster, name)
        found[:] = [pod]
        return check(pod)

    try:
        wait_until(condition, timeout=STATE_TIMEOUT, what=f"pod {name} {what}")
    except Exception as error:
        status = found[0].status.to_dict() if found else None
        kwok_log = cluster.logs["kwok"]
        raise AssertionError(
            f"{error}; last status: {status}; last lines of {kwok_log}:\n{tail(kwok_log, 15)}"
        ) from error
    return found[0]


def condition_of(pod: client.V1Pod, kind: str) -> client.V1PodCondition | None:
    return next((c for c in pod.status.conditions or [] if c.type == kind), None)


def is_running_and_ready(pod: client.V1Pod) -> bool:
    ready = condition_of(pod, "Ready")
    return pod.status.phase == "Running" and ready is not None and ready.status == "True"


def event_reasons(core: client.CoreV1Api, cluster: LocalCluster, pod_name: str) -> list[str]:
    events = core.list_namespaced_event(
        cluster.namespace, field_selector=f"involvedObject.kind=Pod,involvedObject.name={pod_name}"
    ).items
    return [event.reason for event in events]


def http_get(url: str) -> tuple[int, dict[str, Any]]:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.status, json.loads(response.read())


def refuses_connections(url: str) -> bool:
    try:
        urllib.request.urlopen(url, timeout=5)
    except urllib.error.URLError as error:
        return isinstance(error.reason, ConnectionRefusedError)
    return False


@pytest.mark.k8s
def test_fake_nodes_are_ready_with_the_configured_capacity(
    k8s_cluster: LocalCluster, core_admin: client.CoreV1Api
) -> None:
    nodes = core_admin.list_node(label_selector="type=kwok").items
    assert len(nodes) == k8s_cluster.node_count
    for node in nodes:
        ready = next(c for c in node.status.conditions if c.type == "Ready")
        assert ready.status == "True"
        assert node.status.allocatable["cpu"] == k8s_cluster.node_shape.cpu
        assert node.status.allocatable["memory"] == k8s_cluster.node_shape.memory
        assert node.status.allocatable["pods"] == k8s_cluster.node_shape.pods
        assert not node.spec.taints
        assert ipaddress.ip_network(node.spec.pod_cidr).network_address.is_loopback


@pytest.mark.k8s
def test_every_process_listens_on_loopback_only(k8s_cluster: LocalCluster) -> None:
    sockets = k8s_cluster.listening_sockets()
    expected = {"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok"}
    assert expected | {"responder"} <= set(sockets)
    for name, addresses in sockets.items():
        assert addresses, f"{name} listens on nothing"
        outside = [a for a in addresses if not ipaddress.ip_address(a[0]).is_loopback]
        assert not outside, f"{name} listens beyond loopback: {outside}"


@pytest.mark.k8s
def test_api_server_accepts_a_loopback_pod_ip(
    k8s_cluster: LocalCluster, core_admin: client.CoreV1Api
) -> None:
    # A pod no scheduler and no KWOK node will touch, so only our status write sets its IP.
    name = f"ip-probe-{secrets.token_hex(3)}"
    core_admin.create_namespaced_pod(
        k8s_cluster.namespace,
        {
            "metadata": {"name": name},
            "spec": {"schedulerName": "nobody", "containers": [{"name": "c", "image": "x"}]},
        },
    )
    try:
        core_admin.patch_namespaced_pod_status(
            name,
            k8s_cluster.namespace,
            {"status": {"podIP": "127.42.250.9", "podIPs": [{"ip": "127.42.250.9"}]}},
        )
        assert read_pod(core_admin, k8s_cluster, name).status.pod_ip == "127.42.250.9"
    finally:
        core_admin.delete_namespaced_pod(name, k8s_cluster.namespace, grace_period_seconds=0)


@pytest.mark.k8s
def test_hub_pod_runs_is_guaranteed_answers_http_and_disappears_on_delete(
    k8s_cluster: LocalCluster,
    core_hub: client.CoreV1Api,
    core_admin: client.CoreV1Api,
    make_pod: Callable[..., str],
) -> None:
    name = make_pod("jupyter-smoke", containers=[notebook_container()])

    pod = wait_pod(core_hub, k8s_cluster, name, "to be Running and Ready", is_running_and_ready)

    assert pod.status.qos_class == "Guaranteed"  # computed by the API server, not by KWOK
    for kind in ("PodScheduled", "Initialized", "ContainersReady", "Ready"):
        condition = condition_of(pod, kind)
        assert condition is not None and condition.status == "True", kind
        assert condition.last_transition_time is not None, kind
    assert pod.status.container_statuses[0].ready
    node = core_admin.read_node(pod.spec.node_name)
    ip = ipaddress.ip_address(pod.status.pod_ip)
    assert ip.is_loopback and ip in ipaddress.ip_network(node.spec.pod_cidr)

    url = f"http://{pod.status.pod_ip}:8888/user/smoke/api"
    wait_until(
        lambda: not refuses_connections(url),
        timeout=STATE_TIMEOUT,
        what="the responder to serve the pod",
    )
    status, body = http_get(url)
    assert status == 200
    assert body["pod"] == name and body["path"] == "/user/smoke/api"

    # Kubelet-like events from KWOK, next to the real scheduler's.
    wait_until(
        lambda: (
            {"Scheduled", "Pulling", "Pulled", "Created", "Started"}
            <= set(event_reasons(core_hub, k8s_cluster, name))
        ),
        timeout=STATE_TIMEOUT,
        what=f"Scheduled/Pulling/Pulled/Created/Started events for {name}",
    )

    # KubeSpawner deletes with a grace period (delete_grace_period, 1 s): with no kubelet the
    # pod would stay Terminating forever; KWOK's pod-delete stage must finish it.
    core_hub.delete_namespaced_pod(name, k8s_cluster.namespace, grace_period_seconds=1)

    def gone() -> bool:
        try:
            read_pod(core_hub, k8s_cluster, name)
        except ApiException as error:
            return error.status == 404
        return False

    wait_until(
        gone, timeout=STATE_TIMEOUT, what=f"pod {name} to be removed after a graceful delete"
    )
    wait_until(
        lambda: refuses_connections(url),
        timeout=STATE_TIMEOUT,
        what="the responder to stop serving",
    )
    # KWOK records events asynchronously: wait for them rather than expect them at once.
    wait_until(
        lambda: "Killing" in event_reasons(core_hub, k8s_cluster, name),
        timeout=STATE_TIMEOUT,
        what="the Killing event",
    )


@pytest.mark.k8s
def test_init_containers_complete_before_the_pod_runs(
    k8s_cluster: LocalCluster, core_hub: client.CoreV1Api, make_pod: Callable[..., str]
) -> None:
    name = make_pod(
        "jupyter-init",
        # The API field names: kubernetes 36 (the 4.4.0 pins) sends dict keys as given.
        initContainers=[{"name": "block-metadata", "image": "busybox:1.36"}],
        containers=[notebook_container()],
    )
    pod = wait_pod(core_hub, k8s_cluster, name, "to be Running and Ready", is_running_and_ready)
    init = pod.status.init_container_statuses[0]
    assert init.state.terminated is not None and init.state.terminated.reason == "Completed"
    assert init.state.terminated.started_at <= condition_of(pod, "Initialized").last_transition_time


@pytest.mark.k8s
def test_pod_larger_than_any_node_stays_pending_with_the_schedulers_reason(
    k8s_cluster: LocalCluster, core_hub: client.CoreV1Api, make_pod: Callable[..., str]
) -> None:
    name = make_pod("jupyter-huge", containers=[notebook_container(cpu="64")])

    def unschedulable(pod: client.V1Pod) -> bool:
        scheduled = condition_of(pod, "PodScheduled")
        return (
            scheduled is not None
            and scheduled.status == "False"
            and scheduled.reason == "Unschedulable"
        )

    pod = wait_pod(core_hub, k8s_cluster, name, "to be marked Unschedulable", unschedulable)
    assert pod.status.phase == "Pending" and not pod.status.pod_ip and not pod.spec.node_name
    wait_until(
        lambda: "FailedScheduling" in event_reasons(core_hub, k8s_cluster, name),
        timeout=STATE_TIMEOUT,
        what="the scheduler's FailedScheduling event",
    )
    events = core_hub.list_namespaced_event(
        k8s_cluster.namespace, field_selector=f"involvedObject.name={name},reason=FailedScheduling"
    ).items
    assert "Insufficient cpu" in events[0].message


@pytest.mark.k8s
def test_image_tag_simulates_an_image_pull_failure(
    k8s_cluster: LocalCluster, core_hub: client.CoreV1Api, make_pod: Callable[..., str]
) -> None:
    name = make_pod(
        "jupyter-pull",
        containers=[notebook_container(image="example.org/missing:image-pull-error")],
    )

    def pull_failed(pod: client.V1Pod) -> bool:
        statuses = pod.status.container_statuses or []
        return (
            bool(statuses)
            and statuses[0].state.waiting is not None
            and statuses[0].state.waiting.reason
            in (
                "ErrImagePull",
                "ImagePullBackOff",
            )
        )

    pod = wait_pod(core_hub, k8s_cluster, name, "to fail pulling its image", pull_failed)
    assert pod.status.phase == "Pending"
    assert not is_running_and_ready(pod)
    wait_until(
        lambda: {"Failed", "BackOff"} <= set(event_reasons(core_hub, k8s_cluster, name)),
        timeout=STATE_TIMEOUT,
        what="Failed and BackOff events",
    )


@pytest.mark.k8s
def test_annotation_simulates_a_crash_loop(
    k8s_cluster: LocalCluster, core_hub: client.CoreV1Api, make_pod: Callable[..., str]
) -> None:
    name = make_pod(
        "jupyter-crash",
        annotations={
            "hub-resilience.test/simulate": "crash-loop",
            # KWOK's per-stage delay convention: restart after 1 s instead of the 10 s back-off.
            "pod-crash-loop-restart.stage.kwok.x-k8s.io/delay": "1s",
        },
        containers=[notebook_container()],
    )

    def restarted_and_back_off(pod: client.V1Pod) -> bool:
        statuses = pod.status.container_statuses or []
        return (
            bool(statuses)
            and statuses[0].restart_count >= 1
            and statuses[0].state.waiting is not None
            and statuses[0].state.waiting.reason == "CrashLoopBackOff"
        )

    pod = wait_pod(
        core_hub, k8s_cluster, name, "to restart and be in CrashLoopBackOff", restarted_and_back_off
    )
    assert pod.status.phase == "Running" and not is_running_and_ready(pod)
    assert pod.status.container_statuses[0].last_state.terminated.exit_code == 1
    wait_until(
        lambda: "BackOff" in event_reasons(core_hub, k8s_cluster, name),
        timeout=STATE_TIMEOUT,
        what="the BackOff event",
    )
    served = {(e["ip"], e["port"]) for e in k8s_cluster.responder_endpoints()}
    assert (pod.status.pod_ip, 8888) not in served


@pytest.mark.k8s
def test_hub_role_is_enforced(k8s_cluster: LocalCluster, core_hub: client.CoreV1Api) -> None:
    # zero-to-jupyterhub's hub Role covers pods, PVCs, secrets, services and events in its
    # namespace only: anything else is a real 403 from RBAC.
    with pytest.raises(ApiException) as raised:
        core_hub.list_node()
    assert raised.value.status == 403
    with pytest.raises(ApiException) as raised:
        core_hub.list_namespaced_pod("default")
    assert raised.value.status == 403


@pytest.mark.k8s
async def test_throttled_endpoint_answers_429_to_the_hub_under_concurrent_load(
    k8s_cluster: LocalCluster,
) -> None:
    from kubernetes_asyncio import client as aclient
    from kubernetes_asyncio import config as aconfig

    endpoint = k8s_cluster.throttled_endpoint(
        max_requests_inflight=1, max_mutating_requests_inflight=1
    )
    api_client = await aconfig.new_client_from_config(config_file=str(endpoint.kubeconfig))
    statuses: list[int] = []

    async def one(index: int) -> None:
        core = aclient.CoreV1Api(api_client)
        try:
            if index % 2:
                await core.list_namespaced_pod(k8s_cluster.namespace)
            else:  # a mutating request (dry run: nothing is stored)
                await core.create_namespaced_pod(
                    k8s_cluster.namespace,
                    {
                        "metadata": {"name": f"dry-{index}"},
                        "spec": {"containers": [notebook_container()]},
                    },
                    dry_run="All",
                )
            statuses.append(200)
        except aclient.ApiException as error:
            statuses.append(error.status)

    try:
        for _ in range(5):  # rounds, in case one round happens to be served without overlap
            await asyncio.gather(*(one(i) for i in range(60)))
            if 429 in statuses:
                break
    finally:
        await api_client.close()

    counts = {status: statuses.count(status) for status in set(statuses)}
    print(f"throttled endpoint {endpoint.server}: status counts {counts}")
    assert counts.get(429, 0) > 0, counts
    assert counts.get(200, 0) > 0, counts
    assert set(counts) <= {200, 429}, counts


def pvc_manifest(name: str) -> dict[str, Any]:
    """What KubeSpawner creates with z2jh's default (singleuser.storage.type: dynamic):
    storage_class unset, ReadWriteOnce, 10Gi."""
    return {
        "metadata": {"name": name},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "10Gi"}}},
    }


def gone(read: Callable[[], Any]) -> bool:
    try:
        read()
    except ApiException as error:
        return error.status == 404
    return False


@pytest.mark.k8s
def test_pvc_is_bound_a_pod_mounting_it_runs_and_deleting_the_claim_deletes_the_volume(
    k8s_cluster: LocalCluster,
    core_hub: client.CoreV1Api,
    core_admin: client.CoreV1Api,
    make_pod: Callable[..., str],
) -> None:
    ns = k8s_cluster.namespace
    claim = f"claim-{secrets.token_hex(3)}"
    started = time.monotonic()
    core_hub.create_namespaced_persistent_volume_claim(ns, pvc_manifest(claim))
    try:
        wait_until(
            lambda: (
                core_hub.read_namespaced_persistent_volume_claim(claim, ns).status.phase == "Bound"
            ),
            timeout=STATE_TIMEOUT,
            what=f"PVC {claim} to be Bound (kube-controller-manager's PV binder)",
        )
        bound_after = time.monotonic() - started
        pvc = core_hub.read_namespaced_persistent_volume_claim(claim, ns)
        assert pvc.spec.storage_class_name == "standard"  # the default StorageClass
        volume = core_admin.read_persistent_volume(pvc.spec.volume_name)
        assert volume.spec.host_path is not None and volume.spec.capacity["storage"] == "10Gi"
        assert volume.spec.persistent_volume_reclaim_policy == "Delete"
        assert not pvc.metadata.finalizers  # nothing will keep a deleted claim Terminating
        host_dir = volume.spec.host_path.path
        assert os.path.isdir(host_dir)

        name = make_pod(
            "jupyter-pvc",
            containers=[
                {**notebook_container(), "volumeMounts": [{"name": "home", "mountPath": "/home"}]}
            ],
            volumes=[{"name": "home", "persistentVolumeClaim": {"claimName": claim}}],
        )
        pod = wait_pod(core_hub, k8s_cluster, name, "to be Running and Ready", is_running_and_ready)
        assert pod.spec.node_name
        ready_after = time.monotonic() - started
        print(f"PVC {claim} Bound after {bound_after:.1f}s to {volume.metadata.name} ({host_dir})")

        core_hub.delete_namespaced_pod(name, ns, grace_period_seconds=1)
        wait_until(
            lambda: gone(lambda: read_pod(core_hub, k8s_cluster, name)),
            timeout=STATE_TIMEOUT,
            what=f"pod {name} to be removed",
        )
        pod_gone_after = time.monotonic() - started
    finally:
        with contextlib.suppress(ApiException):
            core_hub.delete_namespaced_persistent_volume_claim(claim, ns)
    wait_until(
        lambda: gone(lambda: core_hub.read_namespaced_persistent_volume_claim(claim, ns)),
        timeout=STATE_TIMEOUT,
        what=f"PVC {claim} to be deleted",
    )
    claim_gone_after = time.monotonic() - started
    # Reclaim policy Delete: the binder deletes the PV (and the hostPath deleter its directory).
    wait_until(
        lambda: gone(lambda: core_admin.read_persistent_volume(volume.metadata.name)),
        timeout=STATE_TIMEOUT,
        what=f"PV {volume.metadata.name} to be deleted with its claim",
    )
    assert not os.path.exists(host_dir)
    print(
        f"pod Ready {ready_after:.1f}s, pod gone {pod_gone_after:.1f}s, PVC gone "
        f"{claim_gone_after:.1f}s, PV gone {time.monotonic() - started:.1f}s"
    )


async def throttled_burst(
    endpoint: ApfEndpoint,
    namespace: str,
    per_kind: int = 15,
    rounds: int = 10,
    concurrent: bool = True,
) -> tuple[dict[str, dict[int, int]], set[str]]:
    """Concurrent dry-run creates, GETs, LISTs and WATCHes through kubernetes_asyncio (the
    client KubeSpawner uses) with the endpoint's throttled identity, in rounds until each kind
    has seen a 429 (one after the other when not ``concurrent``, so that they never take each
    other's seat). Returns {kind: {status: count}} and the Retry-After values seen."""
    from kubernetes_asyncio import client as aclient
    from kubernetes_asyncio import config as aconfig

    configuration = aclient.Configuration()
    await aconfig.load_kube_config(
        config_file=str(endpoint.kubeconfig), client_configuration=configuration
    )
    configuration.connection_pool_maxsize = 4 * per_kind
    api_client = aclient.ApiClient(configuration)
    core = aclient.CoreV1Api(api_client)
    statuses: dict[str, dict[int, int]] = {k: {} for k in ("create", "get", "list", "watch")}
    retry_after: set[str] = set()

    def record(kind: str, status: int, headers: Any) -> None:
        statuses[kind][status] = statuses[kind].get(status, 0) + 1
        if status == 429 and headers is not None and headers.get("Retry-After"):
            retry_after.add(headers["Retry-After"])

    async def one(kind: str, index: int) -> None:
        try:
            if kind == "create":
                body = {
                    "metadata": {"name": f"dry-{index}"},
                    "spec": {"containers": [notebook_container()]},
                }
                await core.create_namespaced_pod(namespace, body, dry_run="All")
            elif kind == "get":
                await core.read_namespaced_pod("no-such-pod", namespace)
            elif kind == "list":
                await core.list_namespaced_pod(namespace)
            else:  # a real WATCH request, closed as soon as its status is known
                response = await core.list_namespaced_pod(
                    namespace, watch=True, timeout_seconds=1, _preload_content=False
                )
                record(kind, response.status, response.headers)
                response.close()
                return
            record(kind, 200, None)
        except aclient.ApiException as error:
            record(kind, error.status, error.headers)

    try:
        for _ in range(rounds):
            calls = [one(kind, i) for i in range(per_kind) for kind in statuses]
            if concurrent:
                await asyncio.gather(*calls)
            else:
                for call in calls:
                    await call
            if all(429 in by_status for by_status in statuses.values()):
                break
    finally:
        await api_client.close()
    return statuses, retry_after


@pytest.mark.k8s
async def test_apf_endpoint_answers_429_to_creates_reads_and_watches(
    k8s_cluster: LocalCluster,
) -> None:
    endpoint = k8s_cluster.apf_endpoint(seats=1)
    assert endpoint.service_account == "hub-throttled" and endpoint.seats == 1
    before = requests_429(endpoint)

    statuses, retry_after = await throttled_burst(endpoint, k8s_cluster.namespace)

    after = requests_429(endpoint)
    delta = {
        key: after[key] - before.get(key, 0) for key in after if after[key] > before.get(key, 0)
    }
    print(f"APF endpoint {endpoint.server} ({endpoint.seats} seat, shares {endpoint.shares}):")
    print(f"  client saw {statuses}; Retry-After {sorted(retry_after)}")
    print(f"  apiserver_request_total{{code=429}} by (verb, resource): {delta}")
    for kind, by_status in statuses.items():
        assert by_status.get(429, 0) > 0, (kind, statuses)
        # What got through was served (a GET of a missing pod is a served 404).
        assert set(by_status) <= {200, 404, 429}, (kind, statuses)
    # kube-apiserver's verb labels follow the HTTP method: a create is POST; reads are GET,
    # LIST and WATCH.
    verbs = by_verb(delta)
    assert verbs.get("POST", 0) > 0 and verbs.get("WATCH", 0) > 0, delta
    assert verbs.get("GET", 0) + verbs.get("LIST", 0) > 0, delta
    assert retry_after and all(value.isdigit() and int(value) >= 1 for value in retry_after)


@pytest.mark.k8s
async def test_held_creates_fill_a_level_so_its_other_requests_get_429(
    k8s_cluster: LocalCluster,
) -> None:
    """The seat holder turns "the API server refuses this identity for N s" into a
    deterministic condition: while it holds the one-seat level's seat, a create, a get, a
    list and a watch of the throttled identity are each refused. Its watches can be given a
    level of their own, so that a hold there refuses its watches and nothing else."""
    endpoint = k8s_cluster.apf_endpoint(seats=1)
    k8s_cluster.seat_holder(endpoint)
    watch_blocker = k8s_cluster.apf_watch_level(endpoint)
    namespace = k8s_cluster.namespace
    kinds = ("create", "get", "list", "watch")

    async def during(*kubeconfigs: Any) -> dict[str, set[int]]:
        """What a request of each kind got while the given identities held their seats."""
        held_before = k8s_cluster.seat_holds()["total"]
        started = time.monotonic()
        holders = [asyncio.create_task(hold_seat(k, namespace, 5)) for k in kubeconfigs]
        await asyncio.to_thread(
            wait_until,
            lambda: k8s_cluster.seat_holds()["now"] == len(holders),
            timeout=STATE_TIMEOUT,
            what="the seat holder to hold the creates",
        )
        statuses, _ = await throttled_burst(
            endpoint, namespace, per_kind=1, rounds=1, concurrent=False
        )
        assert not any(h.done() for h in holders)  # the requests ran inside the holds
        await asyncio.gather(*holders)
        assert time.monotonic() - started >= 5
        assert k8s_cluster.seat_holds() == {"now": 0, "total": held_before + len(holders)}
        return {kind: set(statuses[kind]) for kind in kinds}

    refused = {kind: {429} for kind in kinds}
    assert await during(endpoint.kubeconfig, watch_blocker) == refused
    # Only the main level held: the watch goes through its own level.
    assert await during(endpoint.kubeconfig) == {**refused, "watch": {200}}
    # Only the watch level held: only the watch is refused.
    assert await during(watch_blocker) == {
        "create": {200}, "get": {404}, "list": {200}, "watch": {429}
    }
    statuses, _ = await throttled_burst(endpoint, namespace, per_kind=1, rounds=1, concurrent=False)
    assert all(429 not in by_status for by_status in statuses.values()), statuses


@pytest.mark.k8s
async def test_apf_endpoint_restarts_on_the_same_address_and_still_throttles(
    k8s_cluster: LocalCluster,
) -> None:
    from kubernetes import config

    endpoint = k8s_cluster.apf_endpoint(seats=1)
    host, port = endpoint.server.removeprefix("https://").rsplit(":", 1)
    # A client created before the restart, holding the kubeconfig: it must reconnect.
    held = config.new_client_from_config(config_file=str(endpoint.kubeconfig))
    try:
        core = client.CoreV1Api(held)
        core.list_namespaced_pod(k8s_cluster.namespace)
        with k8s_cluster.apiserver_down(endpoint):
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection((host, int(port)), timeout=5).close()
            with pytest.raises(urllib3.exceptions.MaxRetryError) as raised:
                core.list_namespaced_pod(k8s_cluster.namespace, _request_timeout=5)
            assert isinstance(raised.value.reason, urllib3.exceptions.NewConnectionError)
            assert k8s_cluster.exited_process() is None  # a stop on purpose is no failure
        assert apiserver_ready(endpoint)
        core.list_namespaced_pod(k8s_cluster.namespace)  # the held client reconnects
    finally:
        held.close()

    # Counters start again at 0 with the new process; the FlowSchema (in etcd) still applies.
    statuses, retry_after = await throttled_burst(endpoint, k8s_cluster.namespace)
    print(f"after restart: client saw {statuses}; Retry-After {sorted(retry_after)}")
    assert any(by_status.get(429, 0) for by_status in statuses.values()), statuses
    assert sum(requests_429(endpoint).values()) > 0
