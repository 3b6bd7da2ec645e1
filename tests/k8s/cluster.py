"""A throwaway, real Kubernetes control plane on loopback: etcd, kube-apiserver, kube-scheduler
and KWOK's fake nodes, plus a responder that answers HTTP for every running pod.

Why: the hub's Kubernetes code (KubeSpawner and what hub-resilience adds to it) must be tested
against the real API server -- its validation, defaulting (QoS class), RBAC, 429s and watch
semantics -- and the real scheduler, not a mock. Only the kubelet and the containers are
simulated: KWOK plays the pod lifecycle (``stages/pod-lifecycle.yaml``) and ``responder.py``
stands in for the notebook servers.

Everything listens on 127.0.0.1 (pods get addresses in 127.42.0.0/16, which Linux routes to the
loopback interface), all state lives in a temporary directory, and every process is started in
its own process group with a parent-death signal, so nothing outlives the test session even
when pytest is killed.

Use it from pytest through the ``k8s_cluster`` fixture (tests/k8s/conftest.py), or by hand::

    python -m tests.k8s.cluster up        # prints the KUBECONFIG export, runs until Ctrl-C
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import ctypes
import ipaddress
import json
import math
import os
import re
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    from kubernetes.client import ApiClient

HERE = Path(__file__).resolve().parent
BUILD_SCRIPT = HERE / "build.sh"
POD_STAGES = HERE / "stages" / "pod-lifecycle.yaml"
RESPONDER = HERE / "responder.py"
SEAT_HOLDER = HERE / "seat_holder.py"

LOOPBACK = "127.0.0.1"
#: Pod addresses: node N gets 127.42.N.0/24. All of 127.0.0.0/8 is local on Linux, so the
#: responder can bind these addresses without any network setup.
POD_NETWORK = "127.42.0.0/16"
SERVICE_CIDR = "10.96.0.0/24"
KWOK_NODE_ANNOTATION = "kwok.x-k8s.io/node"

ADMIN_USER = "kube-admin"
#: The hub's identity, as in zero-to-jupyterhub: a ServiceAccount named "hub" in the hub's
#: namespace, authenticated by a real ServiceAccount token, authorised by RBAC.
HUB_SERVICE_ACCOUNT = "hub"

#: zero-to-jupyterhub's hub Role (jupyterhub/templates/hub/rbac.yaml), so a missing
#: permission fails here the way it would in production.
Z2JH_HUB_ROLE_RULES: tuple[dict[str, Any], ...] = (
    {
        "apiGroups": [""],
        "resources": ["pods", "persistentvolumeclaims", "secrets", "services"],
        "verbs": ["get", "watch", "list", "create", "delete"],
    },
    {"apiGroups": [""], "resources": ["events"], "verbs": ["get", "watch", "list"]},
)

#: A second identity with the hub's Role, the only one the APF throttle (FlowSchema) matches.
HUB_THROTTLED_SERVICE_ACCOUNT = "hub-throttled"

#: kube-controller-manager runs only these of its controllers. The PersistentVolume binder
#: binds PVCs to PVs, provisions PVs through the in-tree hostPath provisioner
#: (--enable-hostpath-provisioner) and deletes them by their reclaim policy. Nothing else runs:
#: no garbage collector, namespace, node-lifecycle, ServiceAccount or workload controllers.
CONTROLLER_MANAGER_CONTROLLERS = ("persistentvolume-binder-controller",)

#: kube-controller-manager's own API rate (requests a second, and burst), as Kubernetes'
#: scalability jobs set it for large clusters, instead of its defaults of 20 and 30. At 20
#: the PV binder provisions, binds and deletes about three volumes a second (measured
#: 2026-12-06: 1,000 claims' volumes took five minutes to go), so a hub's 3,000 users
#: arriving over 15 minutes (3.3 a second) would wait on this one client's rate limit,
#: which the local control plane is not meant to measure. docs/kubernetes-harness.md.
CONTROLLER_MANAGER_API_QPS = 100
CONTROLLER_MANAGER_API_BURST = 100

#: The label selectors of a user's pod and of its PVC, as KubeSpawner labels them with z2jh's
#: values.
USER_POD_SELECTOR = "component=singleuser-server"
USER_CLAIM_SELECTOR = "component=singleuser-storage"

#: The default StorageClass created at start: what a PVC without storageClassName gets (the
#: DefaultStorageClass admission plugin fills it in), bound at once, its PV deleted with it.
DEFAULT_STORAGE_CLASS = "standard"
HOSTPATH_PROVISIONER = "kubernetes.io/host-path"
#: Where the in-tree hostPath provisioner creates each PV's directory (hard-coded upstream,
#: /tmp/hostpath_pv/<uuid>, outside the work directory); its deleter removes it with the PV,
#: and ``LocalCluster.stop()`` removes what is left of this cluster's.
HOSTPATH_PV_ROOT = Path("/tmp/hostpath_pv")

#: Admission plugins switched off because the controller that would complete their work does
#: not run (kube-controller-manager runs only CONTROLLER_MANAGER_CONTROLLERS):
#: - ServiceAccount: needs each namespace's "default" ServiceAccount, which the serviceaccount
#:   controller creates;
#: - TaintNodesByCondition: taints new nodes not-ready until the node-lifecycle controller
#:   removes the taint;
#: - StorageObjectInUseProtection: puts kubernetes.io/pvc-protection and pv-protection
#:   finalizers on every PVC and PV, which only the pvc-protection and pv-protection
#:   controllers remove. Without it a deleted PVC disappears at once (in production it stays
#:   Terminating until no pod uses it); with it but without those controllers, deleted PVCs
#:   would stay Terminating forever. The PV binder's own kubernetes.io/pv-controller finalizer
#:   on provisioned PVs is removed by the binder, which runs.
DISABLED_ADMISSION_PLUGINS = (
    "ServiceAccount",
    "TaintNodesByCondition",
    "StorageObjectInUseProtection",
)

#: Shares the one-seat priority level of an APF endpoint's watches (LocalCluster.apf_watch_level):
#: its held creates fill that level, so the throttled identity's watches get 429.
WATCH_BLOCKER_SERVICE_ACCOUNT = "watch-blocker"

#: The APF FlowSchema for HUB_THROTTLED_SERVICE_ACCOUNT: evaluated before the suggested
#: "service-accounts" (9000) and "global-default" (9900) schemas that would otherwise match it,
#: after the "exempt" (1) and system ones.
APF_MATCHING_PRECEDENCE = 1000

# Bounds on how long each start-up step may take before the fixture gives up and reports the
# process's log. Generous on purpose: a loaded CI machine is slow, not broken.
ETCD_START_TIMEOUT = 60.0
APISERVER_START_TIMEOUT = 180.0
COMPONENT_START_TIMEOUT = 90.0
NODES_READY_TIMEOUT = 90.0
STOP_TIMEOUT = 15.0
#: How long stop_apiserver lets a kube-apiserver shut down before SIGKILL. It stops listening
#: at once on SIGTERM, but with watches open it was still running 15 s later.
APISERVER_STOP_GRACE = 3.0
LOG_TAIL_LINES = 40

PR_SET_PDEATHSIG = 1


class ClusterError(RuntimeError):
    """The local cluster could not be built, started or used; the message says why."""


# --------------------------------------------------------------------------------------------
# Pure helpers: manifests, command lines and config files (no I/O, tested in the smoke tests).
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NodeShape:
    """What one fake node offers the scheduler (defaults: a common 4 CPU / 16 GiB worker)."""

    cpu: str = "4"
    memory: str = "16Gi"
    pods: str = "110"
    ephemeral_storage: str = "100Gi"


def node_pod_cidr(index: int) -> str:
    """The pod CIDR of node ``index`` (0-based): 127.42.<index+1>.0/24, inside POD_NETWORK."""
    if not 0 <= index < 254:
        raise ValueError(f"node index must be between 0 and 253, got {index}")
    return f"127.42.{index + 1}.0/24"


def node_name(index: int) -> str:
    """Name of fake node ``index``."""
    return f"kwok-node-{index}"


def node_manifest(index: int, shape: NodeShape) -> dict[str, Any]:
    """A fake Node KWOK manages: realistic allocatable resources, a loopback pod CIDR and no
    KWOK taint, so ordinary pods (like KubeSpawner's) schedule on it without tolerations."""
    resources = {
        "cpu": shape.cpu,
        "memory": shape.memory,
        "pods": shape.pods,
        "ephemeral-storage": shape.ephemeral_storage,
    }
    cidr = node_pod_cidr(index)
    name = node_name(index)
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {KWOK_NODE_ANNOTATION: "fake"},
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                # zero-to-jupyterhub's user pods prefer (or, configured so, require) this.
                "hub.jupyter.org/node-purpose": "user",
                "type": "kwok",
            },
        },
        "spec": {"podCIDR": cidr, "podCIDRs": [cidr]},
        "status": {"allocatable": dict(resources), "capacity": dict(resources)},
    }


def kubeconfig(server: str, ca_pem: bytes, user: str, token: str, namespace: str) -> dict[str, Any]:
    """A kubeconfig for ``server`` that verifies the API server's certificate against
    ``ca_pem``, authenticates with a bearer token and defaults to ``namespace`` (kubectl)."""
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "local",
                "cluster": {
                    "server": server,
                    "certificate-authority-data": base64.b64encode(ca_pem).decode(),
                },
            }
        ],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [
            {"name": "local", "context": {"cluster": "local", "user": user, "namespace": namespace}}
        ],
        "current-context": "local",
    }


def kubeconfig_ca(path: Path) -> bytes:
    """The CA certificate (PEM) a kubeconfig written by :func:`kubeconfig` trusts."""
    config = yaml.safe_load(path.read_text())
    return base64.b64decode(config["clusters"][0]["cluster"]["certificate-authority-data"])


def token_auth_csv(entries: Sequence[tuple[str, str, str, Sequence[str]]]) -> str:
    """kube-apiserver's --token-auth-file: ``token,user,uid,"group1,group2"`` per line."""
    return "".join(
        f'{token},{user},{uid},"{",".join(groups)}"\n' for token, user, uid, groups in entries
    )


def etcd_command(binary: Path, data_dir: Path, client_port: int, peer_port: int) -> list[str]:
    """etcd serving plain HTTP on loopback; fsync off because the data is thrown away."""
    client = f"http://{LOOPBACK}:{client_port}"
    peer = f"http://{LOOPBACK}:{peer_port}"
    return [
        str(binary),
        "--name=local",
        f"--data-dir={data_dir}",
        f"--listen-client-urls={client}",
        f"--advertise-client-urls={client}",
        f"--listen-peer-urls={peer}",
        f"--initial-advertise-peer-urls={peer}",
        f"--initial-cluster=local={peer}",
        "--listen-metrics-urls=",
        "--unsafe-no-fsync=true",
        "--log-level=warn",
    ]


@dataclass(frozen=True)
class Throttle:
    """Request limits of a throttled API server. kube-apiserver enforces these only with API
    Priority and Fairness turned off; requests beyond them get HTTP 429 (system:masters and
    long-running requests such as watches are exempt)."""

    max_requests_inflight: int
    max_mutating_requests_inflight: int

    def __post_init__(self) -> None:
        for name in ("max_requests_inflight", "max_mutating_requests_inflight"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                # 0 would mean "unlimited" to kube-apiserver: the opposite of what was asked.
                raise ValueError(f"{name} must be a positive integer, got {value!r}")


@dataclass(frozen=True)
class ApfThrottle:
    """Throttling by API Priority and Fairness, the way managed clusters throttle: a priority
    level with ``seats`` concurrency seats (no borrowing, no lending, no queues: Reject) that
    only the ServiceAccount HUB_THROTTLED_SERVICE_ACCOUNT's requests -- every verb, watches
    included -- are classified into, on an API server whose total concurrency limit is
    ``max_requests_inflight + max_mutating_requests_inflight`` (APF shares that total out among
    the priority levels by their nominalConcurrencyShares)."""

    seats: int = 1
    max_requests_inflight: int = 20
    max_mutating_requests_inflight: int = 10

    def __post_init__(self) -> None:
        for name in ("seats", "max_requests_inflight", "max_mutating_requests_inflight"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.seats >= self.server_concurrency_limit:
            raise ValueError(
                f"seats ({self.seats}) must be below the server's concurrency limit "
                f"({self.server_concurrency_limit}), which the other priority levels share too"
            )

    @property
    def server_concurrency_limit(self) -> int:
        return self.max_requests_inflight + self.max_mutating_requests_inflight


def apf_nominal_seats(server_concurrency_limit: int, shares: int, other_shares: int) -> int:
    """A priority level's nominal concurrency limit as kube-apiserver computes it:
    ceil(ServerCL * NCS / sum of all levels' NCS)."""
    return math.ceil(server_concurrency_limit * shares / (other_shares + shares))


def apf_shares_for_seats(seats: int, server_concurrency_limit: int, other_shares: int) -> int:
    """The smallest nominalConcurrencyShares that give a priority level exactly ``seats``
    seats, next to levels holding ``other_shares`` shares in all."""
    shares = 1
    while apf_nominal_seats(server_concurrency_limit, shares, other_shares) < seats:
        shares += 1
        if shares > 1_000_000:
            break
    got = apf_nominal_seats(server_concurrency_limit, shares, other_shares)
    if got != seats:
        raise ValueError(
            f"no nominalConcurrencyShares gives {seats} seats out of {server_concurrency_limit} "
            f"next to {other_shares} other shares (closest: {got})"
        )
    return shares


def apf_priority_level_manifest(name: str, shares: int) -> dict[str, Any]:
    """A Limited priority level that rejects (429) at once when its seats are taken: no
    queues, lends nothing and borrows nothing, so its limit is exactly its nominal seats."""
    return {
        "apiVersion": "flowcontrol.apiserver.k8s.io/v1",
        "kind": "PriorityLevelConfiguration",
        "metadata": {"name": name},
        "spec": {
            "type": "Limited",
            "limited": {
                "nominalConcurrencyShares": shares,
                "lendablePercent": 0,
                "borrowingLimitPercent": 0,
                "limitResponse": {"type": "Reject"},
            },
        },
    }


def apf_flow_schema_manifest(
    name: str,
    priority_level: str,
    service_account: str,
    namespace: str,
    matching_precedence: int = APF_MATCHING_PRECEDENCE,
) -> dict[str, Any]:
    """A FlowSchema sending every request of one ServiceAccount (all verbs, resources and
    non-resource URLs) to ``priority_level``; nobody else matches it."""
    return {
        "apiVersion": "flowcontrol.apiserver.k8s.io/v1",
        "kind": "FlowSchema",
        "metadata": {"name": name},
        "spec": {
            "priorityLevelConfiguration": {"name": priority_level},
            "matchingPrecedence": matching_precedence,
            "distinguisherMethod": {"type": "ByUser"},
            "rules": [
                {
                    "subjects": [
                        {
                            "kind": "ServiceAccount",
                            "serviceAccount": {"name": service_account, "namespace": namespace},
                        }
                    ],
                    "resourceRules": [
                        {
                            "verbs": ["*"],
                            "apiGroups": ["*"],
                            "resources": ["*"],
                            "clusterScope": True,
                            "namespaces": ["*"],
                        }
                    ],
                    "nonResourceRules": [{"verbs": ["*"], "nonResourceURLs": ["*"]}],
                }
            ],
        },
    }


def apf_watch_flow_schema_manifest(
    name: str, priority_level: str, watcher: str, blocker: str, namespace: str
) -> dict[str, Any]:
    """A FlowSchema sending the watches of ServiceAccount ``watcher`` and every request of
    ServiceAccount ``blocker`` to ``priority_level``, matched before
    :func:`apf_flow_schema_manifest`'s (which takes the watcher's other requests)."""
    manifest = apf_flow_schema_manifest(
        name, priority_level, blocker, namespace, APF_MATCHING_PRECEDENCE - 1
    )
    manifest["spec"]["rules"].append(
        {
            "subjects": [
                {
                    "kind": "ServiceAccount",
                    "serviceAccount": {"name": watcher, "namespace": namespace},
                }
            ],
            "resourceRules": [
                {
                    "verbs": ["watch"],
                    "apiGroups": ["*"],
                    "resources": ["*"],
                    "clusterScope": True,
                    "namespaces": ["*"],
                }
            ],
        }
    )
    return manifest


def default_storage_class_manifest(name: str = DEFAULT_STORAGE_CLASS) -> dict[str, Any]:
    """The cluster's default StorageClass: hostPath PVs, bound at once, deleted with the PVC."""
    return {
        "apiVersion": "storage.k8s.io/v1",
        "kind": "StorageClass",
        "metadata": {
            "name": name,
            "annotations": {"storageclass.kubernetes.io/is-default-class": "true"},
        },
        "provisioner": HOSTPATH_PROVISIONER,
        "reclaimPolicy": "Delete",
        "volumeBindingMode": "Immediate",
    }


#: The seat holder's ValidatingWebhookConfiguration (tests/k8s/seat_holder.py).
SEAT_HOLDER_WEBHOOK = "hub-resilience-test-seat-holder"


def seat_holder_webhook_manifest(url: str, ca_pem: bytes) -> dict[str, Any]:
    """Secrets created with the seat holder's label are sent to it (and only those)."""
    from tests.k8s.seat_holder import HOLD_LABEL

    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": SEAT_HOLDER_WEBHOOK},
        "webhooks": [
            {
                "name": "seat-holder.hub-resilience.test",
                "clientConfig": {"url": url, "caBundle": base64.b64encode(ca_pem).decode()},
                "rules": [
                    {
                        "apiGroups": [""],
                        "apiVersions": ["v1"],
                        "operations": ["CREATE"],
                        "resources": ["secrets"],
                        "scope": "Namespaced",
                    }
                ],
                "objectSelector": {
                    "matchExpressions": [{"key": HOLD_LABEL, "operator": "Exists"}]
                },
                "sideEffects": "None",
                "admissionReviewVersions": ["v1"],
                "timeoutSeconds": 30,
                "failurePolicy": "Fail",
            }
        ],
    }


def held_secret_manifest(seconds: float) -> dict[str, Any]:
    """A Secret the seat holder keeps in admission for ``seconds``, then denies (403)."""
    from tests.k8s.seat_holder import HOLD_LABEL

    return {"metadata": {"generateName": "seat-hold-", "labels": {HOLD_LABEL: f"{seconds:g}"}}}


async def hold_seat(kubeconfig_path: Path, namespace: str, seconds: float) -> int:
    """Create a held Secret (:func:`held_secret_manifest`) with ``kubeconfig_path``'s
    identity, retrying its 429s until it gets a seat, and return once the seat holder has
    denied it, ``seconds`` later: the number of 429s it got first.
    ``LocalCluster.seat_holder(endpoint)`` must have been called for its API server."""
    from kubernetes_asyncio import client as aclient
    from kubernetes_asyncio import config as aconfig

    from tests.k8s.seat_holder import DENIAL_PREFIX

    refused = 0
    api_client = await aconfig.new_client_from_config(config_file=str(kubeconfig_path))
    async with api_client:
        core = aclient.CoreV1Api(api_client)
        while True:
            try:
                made = await core.create_namespaced_secret(
                    namespace, held_secret_manifest(seconds)
                )
            except aclient.ApiException as e:
                if e.status == 429:
                    refused += 1
                    await asyncio.sleep(0.05)
                    continue
                if e.status == 403 and DENIAL_PREFIX in (e.body or ""):
                    return refused
                raise
            await core.delete_namespaced_secret(made.metadata.name, namespace)
            raise ClusterError(f"a held Secret was stored via {kubeconfig_path}: no seat holder")


_METRIC_LINE = re.compile(r"^([A-Za-z_:][A-Za-z0-9_:]*)(?:\{(.*)\})?\s+(\S+)")
_METRIC_LABEL = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"')


def metric_samples(metrics_text: str, name: str) -> list[tuple[dict[str, str], float]]:
    """The samples of metric ``name`` in Prometheus text format, as (labels, value)."""
    samples = []
    for line in metrics_text.splitlines():
        if not line.startswith(name):
            continue
        match = _METRIC_LINE.match(line)
        if match is None or match.group(1) != name:
            continue
        labels = {key: value for key, value in _METRIC_LABEL.findall(match.group(2) or "")}
        samples.append((labels, float(match.group(3))))
    return samples


def count_429s(metrics_text: str) -> dict[tuple[str, str], int]:
    """HTTP 429s kube-apiserver answered, by (verb, resource), from its /metrics
    (``apiserver_request_total{code="429"}``; verbs as it labels them, after the HTTP method:
    a create is POST, reads are GET, LIST and WATCH, then PUT, PATCH, APPLY, DELETE; resource
    "" for non-resource URLs). Dry-run and real requests are summed."""
    counts: dict[tuple[str, str], int] = {}
    for labels, value in metric_samples(metrics_text, "apiserver_request_total"):
        if labels.get("code") == "429" and value:
            key = (labels.get("verb", ""), labels.get("resource", ""))
            counts[key] = counts.get(key, 0) + int(value)
    return counts


def by_verb(counts: Mapping[tuple[str, str], int]) -> dict[str, int]:
    """``count_429s`` summed over resources: {verb: count}."""
    totals: dict[str, int] = {}
    for (verb, _resource), count in counts.items():
        totals[verb] = totals.get(verb, 0) + count
    return totals


def apiserver_command(
    binary: Path,
    *,
    etcd_port: int,
    secure_port: int,
    cert_dir: Path,
    token_file: Path,
    service_account_key: Path,
    throttle: Throttle | None = None,
    apf: ApfThrottle | None = None,
) -> list[str]:
    """kube-apiserver on loopback with RBAC, a static admin token and ServiceAccount tokens.
    ``throttle``: APF off, small in-flight limits; ``apf``: APF on (the default) with a small
    total concurrency limit."""
    if throttle is not None and apf is not None:
        raise ValueError("throttle (APF off) and apf (APF on) exclude each other")
    command = [
        str(binary),
        f"--etcd-servers=http://{LOOPBACK}:{etcd_port}",
        f"--bind-address={LOOPBACK}",
        f"--advertise-address={LOOPBACK}",
        f"--secure-port={secure_port}",
        f"--cert-dir={cert_dir}",
        f"--token-auth-file={token_file}",
        "--authorization-mode=RBAC",
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
        f"--service-account-key-file={service_account_key}",
        f"--service-account-signing-key-file={service_account_key}",
        f"--service-cluster-ip-range={SERVICE_CIDR}",
        # The default reconciler would publish 127.0.0.1 as the kubernetes Service's endpoint,
        # which Endpoints validation rejects.
        "--endpoint-reconciler-type=none",
        "--allow-privileged=true",
        f"--disable-admission-plugins={','.join(DISABLED_ADMISSION_PLUGINS)}",
        "--profiling=false",
    ]
    if throttle is not None:
        command += [
            "--enable-priority-and-fairness=false",
            f"--max-requests-inflight={throttle.max_requests_inflight}",
            f"--max-mutating-requests-inflight={throttle.max_mutating_requests_inflight}",
        ]
    if apf is not None:
        command += [
            "--enable-priority-and-fairness=true",
            f"--max-requests-inflight={apf.max_requests_inflight}",
            f"--max-mutating-requests-inflight={apf.max_mutating_requests_inflight}",
        ]
    return command


def controller_manager_command(
    binary: Path,
    admin_kubeconfig: Path,
    secure_port: int,
    controllers: Sequence[str] = CONTROLLER_MANAGER_CONTROLLERS,
) -> list[str]:
    """The real kube-controller-manager running only ``controllers`` (no leader election),
    with the hostPath provisioner on and a large cluster's API rate, serving health on
    loopback."""
    return [
        str(binary),
        f"--kubeconfig={admin_kubeconfig}",
        f"--controllers={','.join(controllers)}",
        "--enable-hostpath-provisioner=true",
        f"--kube-api-qps={CONTROLLER_MANAGER_API_QPS}",
        f"--kube-api-burst={CONTROLLER_MANAGER_API_BURST}",
        "--use-service-account-credentials=false",
        "--leader-elect=false",
        f"--bind-address={LOOPBACK}",
        f"--secure-port={secure_port}",
        "--profiling=false",
    ]


def scheduler_command(binary: Path, admin_kubeconfig: Path, secure_port: int) -> list[str]:
    """The real kube-scheduler, alone (no leader election), serving health on loopback."""
    return [
        str(binary),
        f"--kubeconfig={admin_kubeconfig}",
        "--leader-elect=false",
        f"--bind-address={LOOPBACK}",
        f"--secure-port={secure_port}",
    ]


def kwok_command(
    binary: Path, admin_kubeconfig: Path, stage_files: Sequence[Path], server_port: int
) -> list[str]:
    """KWOK managing the nodes annotated ``kwok.x-k8s.io/node=fake`` with our stages.

    ``--server-address`` keeps KWOK's own server on loopback (and gives us /healthz); with no
    ``--node-port`` it never opens the kubelet port on 0.0.0.0."""
    command = [
        str(binary),
        f"--kubeconfig={admin_kubeconfig}",
        f"--manage-nodes-with-annotation-selector={KWOK_NODE_ANNOTATION}=fake",
        f"--node-ip={LOOPBACK}",
        # Only used for nodes without a podCIDR; ours all have one.
        "--cidr=127.42.0.0/24",
        f"--server-address={LOOPBACK}:{server_port}",
    ]
    for stage_file in stage_files:
        command.append(f"--config={stage_file}")
    return command


def last_ca_certificate(pem_bundle: bytes) -> bytes:
    """The CA from kube-apiserver's self-signed ``apiserver.crt``, which holds the serving
    certificate followed by the CA that signed it."""
    marker = b"-----BEGIN CERTIFICATE-----"
    blocks = [marker + part for part in pem_bundle.split(marker)[1:]]
    if len(blocks) < 2:
        raise ClusterError("kube-apiserver's apiserver.crt does not contain a CA certificate")
    return blocks[-1].strip() + b"\n"


def tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last ``lines`` lines of a log file, for error messages."""
    try:
        text = path.read_text(errors="replace")
    except OSError as error:
        return f"(cannot read {path}: {error})"
    return "\n".join(text.splitlines()[-lines:])


# --------------------------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------------------------


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Ask Linux to SIGKILL this child when the process that started it dies, so a killed
    pytest leaves no control plane behind. (Tied to the starting thread: start the cluster
    from the main thread.)"""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def free_port() -> int:
    """A currently free TCP port on loopback."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


@dataclass
class ManagedProcess:
    """One control-plane process: its own process group, output in ``log``, stopped with
    SIGTERM then SIGKILL."""

    name: str
    command: list[str]
    log: Path
    popen: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as log:
            log.write(f"$ {' '.join(self.command)}\n".encode())
            log.flush()
            self.popen = subprocess.Popen(
                self.command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen else None

    def exit_code(self) -> int | None:
        """None while running (or never started)."""
        return self.popen.poll() if self.popen else None

    def check_running(self) -> None:
        """Raise with the log tail if the process has exited."""
        code = self.exit_code()
        if code is not None:
            raise ClusterError(
                f"{self.name} exited with code {code} during start-up; last lines of "
                f"{self.log}:\n{tail(self.log)}"
            )

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        if self.popen is None or self.popen.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, timeout)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, sig)
            try:
                self.popen.wait(wait)
                break
            except subprocess.TimeoutExpired:
                continue
        # The group may still hold children that ignored SIGTERM (none of ours fork, but
        # the responder's interpreter could): make sure the whole group is gone.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)


def wait_until(
    condition: Callable[[], bool],
    *,
    timeout: float,
    what: str,
    process: ManagedProcess | None = None,
    interval: float = 0.2,
) -> None:
    """Poll ``condition`` until true; fail fast if ``process`` dies, and on timeout raise with
    the process's log so CI says why."""
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        if process is not None:
            process.check_running()
        try:
            if condition():
                return
        except Exception as error:  # noqa: BLE001 - reported if we time out
            last_error = error
        if time.monotonic() > deadline:
            message = f"timed out after {timeout:.0f}s waiting for {what}"
            if last_error is not None:
                message += f" (last error: {last_error!r})"
            if process is not None:
                message += f"; last lines of {process.log}:\n{tail(process.log)}"
            raise ClusterError(message)
        time.sleep(interval)


def http_ok(url: str, *, context: ssl.SSLContext | None = None, token: str | None = None) -> bool:
    """True if GET ``url`` answers 200."""
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=5, context=context) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def decode_proc_net_address(text: str) -> tuple[str, int]:
    """``0100007F:1F90`` from /proc/net/tcp{,6} as ("127.0.0.1", 8080): the address is
    hex in 32-bit words of host (little-endian) byte order, the port big-endian hex."""
    host_hex, port_hex = text.split(":")
    raw = bytes.fromhex(host_hex)
    raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    return str(ipaddress.ip_address(raw)), int(port_hex, 16)


def listening_sockets(pid: int) -> set[tuple[str, int]]:
    """Every (address, port) process ``pid`` listens on over TCP, read from Linux's /proc:
    how the harness proves nothing listens beyond loopback."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[len("socket:[") : -1])
    found = set()
    for table in ("tcp", "tcp6"):
        path = Path(f"/proc/{pid}/net/{table}")
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            listening = fields[3] == "0A"  # TCP_LISTEN
            if listening and fields[9] in inodes:
                found.add(decode_proc_net_address(fields[1]))
    return found


def unverified_tls() -> ssl.SSLContext:
    """For health probes of our own child processes on loopback, whose self-signed
    certificates are not known yet (kube-apiserver) or never written (kube-scheduler)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


# --------------------------------------------------------------------------------------------
# Building
# --------------------------------------------------------------------------------------------


def build_binaries(log_path: Path | None = None) -> Path:
    """Run tests/k8s/build.sh (a no-op when the binaries are cached) and return the directory
    holding etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kwok and
    kwok-stages/."""
    if shutil.which("bash") is None:
        raise ClusterError("bash is required to run tests/k8s/build.sh")
    log_path = log_path or Path(tempfile.gettempdir()) / "hub-resilience-k8s-build.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        result = subprocess.run(
            ["bash", str(BUILD_SCRIPT)], stdout=subprocess.PIPE, stderr=log, check=False
        )
    if result.returncode != 0:
        raise ClusterError(
            f"tests/k8s/build.sh failed with code {result.returncode}; last lines of "
            f"{log_path}:\n{tail(log_path)}"
        )
    lines = result.stdout.decode().strip().splitlines()
    bin_dir = Path(lines[-1]) if lines else None
    missing = [
        name
        for name in (
            "etcd",
            "kube-apiserver",
            "kube-controller-manager",
            "kube-scheduler",
            "kwok",
            "kwok-stages",
        )
        if bin_dir is None or not (bin_dir / name).exists()
    ]
    if missing:
        raise ClusterError(f"build.sh printed {bin_dir!s} but it lacks {', '.join(missing)}")
    return bin_dir


# --------------------------------------------------------------------------------------------
# The cluster
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ApiEndpoint:
    """One kube-apiserver as clients see it."""

    server: str
    #: The hub's credentials (ServiceAccount hub, zero-to-jupyterhub's Role): what the hub uses.
    kubeconfig: Path
    #: system:masters: for test set-up and assertions. Exempt from max-inflight limits.
    admin_kubeconfig: Path
    log: Path


@dataclass(frozen=True)
class ApfEndpoint(ApiEndpoint):
    """A kube-apiserver with API Priority and Fairness on, where ``kubeconfig``'s identity (the
    ServiceAccount ``service_account``, with the hub's Role) is classified by the FlowSchema
    ``flow_schema`` into the priority level ``priority_level`` of ``seats`` seats: its creates,
    reads and watches beyond that get 429. ``admin_kubeconfig`` is exempt."""

    service_account: str
    priority_level: str
    flow_schema: str
    seats: int
    shares: int
    throttle: ApfThrottle


def admin_get(endpoint: ApiEndpoint, path: str, timeout: float = 10.0) -> str:
    """GET ``path`` from ``endpoint`` with its admin kubeconfig's token, verifying the server
    against that kubeconfig's CA; raises urllib.error.URLError/HTTPError as urlopen does."""
    config = yaml.safe_load(endpoint.admin_kubeconfig.read_text())
    token = config["users"][0]["user"]["token"]
    ca_pem = kubeconfig_ca(endpoint.admin_kubeconfig)
    context = ssl.create_default_context(cadata=ca_pem.decode())
    request = urllib.request.Request(f"{endpoint.server}{path}")
    request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=timeout, context=context) as response:
        return response.read().decode()


def apiserver_ready(endpoint: ApiEndpoint) -> bool:
    """True if ``endpoint``'s /readyz answers ok (its certificate verified by the kubeconfig)."""
    try:
        return admin_get(endpoint, "/readyz", timeout=5).strip() == "ok"
    except (urllib.error.URLError, OSError):
        return False


def apiserver_metrics(endpoint: ApiEndpoint, timeout: float = 10.0) -> str:
    """kube-apiserver's own /metrics (Prometheus text), read with the admin token."""
    return admin_get(endpoint, "/metrics", timeout)


def requests_429(endpoint: ApiEndpoint) -> dict[tuple[str, str], int]:
    """The 429s ``endpoint``'s kube-apiserver has answered since it (re)started, by
    (verb, resource), e.g. ``{("POST", "pods"): 12, ("WATCH", "pods"): 3}``."""
    return count_429s(apiserver_metrics(endpoint))


def requests_429_by_verb(endpoint: ApiEndpoint) -> dict[str, int]:
    """``requests_429`` summed over resources, e.g. ``{"POST": 12, "WATCH": 3}``."""
    return by_verb(requests_429(endpoint))


@dataclass
class LocalCluster:
    """The control plane and its fake nodes. ``start()`` brings everything up and raises
    ``ClusterError`` (with the failing component's log) if anything does not come up;
    ``stop()`` stops it all, and is safe to call at any point, more than once."""

    work_dir: Path
    bin_dir: Path
    namespace: str = "hub"
    node_count: int = 4
    node_shape: NodeShape = field(default_factory=NodeShape)
    hub_role_rules: Sequence[Mapping[str, Any]] = Z2JH_HUB_ROLE_RULES

    def __post_init__(self) -> None:
        if not 1 <= self.node_count <= 253:
            raise ValueError(f"node_count must be between 1 and 253, got {self.node_count}")
        self.work_dir = Path(self.work_dir)
        self.log_dir = self.work_dir / "logs"
        self._processes: list[ManagedProcess] = []
        self._throttled: dict[Throttle, ApiEndpoint] = {}
        self._apf: dict[ApfThrottle, ApfEndpoint] = {}
        #: Each API server's process, by endpoint.server, for stop_apiserver/start_apiserver.
        self._apiservers: dict[str, ManagedProcess] = {}
        self._paused: set[str] = set()
        self._admin_token = secrets.token_hex(24)
        self._hub_token: str | None = None
        self._etcd_data: Path | None = None
        self._etcd_port = 0
        self.api: ApiEndpoint | None = None
        self.responder_url: str | None = None
        self._seat_holder_url: str | None = None
        #: Watch-blocker kubeconfig of each APF endpoint given a watch level, by endpoint.server.
        self._watch_levels: dict[str, Path] = {}
        self.startup_seconds: float | None = None
        self._stopped = False

    # -- what tests use ----------------------------------------------------------------------

    @property
    def server(self) -> str:
        return self._require_api().server

    @property
    def kubeconfig(self) -> Path:
        """The hub's kubeconfig (an ordinary, RBAC-limited ServiceAccount token)."""
        return self._require_api().kubeconfig

    @property
    def admin_kubeconfig(self) -> Path:
        return self._require_api().admin_kubeconfig

    @property
    def logs(self) -> dict[str, Path]:
        """Log file of every process started, by process name."""
        return {process.name: process.log for process in self._processes}

    def exited_process(self) -> ManagedProcess | None:
        """The first process that is no longer running, if any (they should all run; an API
        server stopped by ``stop_apiserver`` does not count)."""
        return next(
            (
                p
                for p in self._processes
                if p.exit_code() is not None and id(p) not in self._paused_ids()
            ),
            None,
        )

    def _paused_ids(self) -> set[int]:
        return {id(self._apiservers[server]) for server in self._paused}

    def admin_client(self) -> ApiClient:
        """A ``kubernetes.client.ApiClient`` with admin rights (close it when done)."""
        from kubernetes import config

        return config.new_client_from_config(config_file=str(self.admin_kubeconfig))

    def user_pods(self) -> list[Any]:
        """The user pods (``V1Pod``) in the cluster's namespace, as an admin lists them."""
        from kubernetes import client as k8s

        with self.admin_client() as api:
            return list(k8s.CoreV1Api(api).list_namespaced_pod(
                self.namespace, label_selector=USER_POD_SELECTOR
            ).items)

    def hub_client(self) -> ApiClient:
        """A ``kubernetes.client.ApiClient`` with the hub's rights (close it when done)."""
        from kubernetes import config

        return config.new_client_from_config(config_file=str(self.kubeconfig))

    def throttled_endpoint(
        self, max_requests_inflight: int = 1, max_mutating_requests_inflight: int = 1
    ) -> ApiEndpoint:
        """A second kube-apiserver on the same etcd that answers 429 beyond these in-flight
        limits (started on first use, reused for the same limits)."""
        throttle = Throttle(max_requests_inflight, max_mutating_requests_inflight)
        if self._stopped:
            raise ClusterError("the cluster is stopped")
        if throttle not in self._throttled:
            name = (
                f"kube-apiserver-throttled-{throttle.max_requests_inflight}"
                f"-{throttle.max_mutating_requests_inflight}"
            )
            self._throttled[throttle] = self._start_apiserver(name, throttle)
        return self._throttled[throttle]

    def apf_endpoint(
        self,
        seats: int = 1,
        max_requests_inflight: int = 20,
        max_mutating_requests_inflight: int = 10,
    ) -> ApfEndpoint:
        """A second kube-apiserver on the same etcd, API Priority and Fairness on, whose
        ``kubeconfig`` is a ServiceAccount with the hub's Role that a FlowSchema puts in a
        priority level of ``seats`` seats (Reject, no queues, no borrowing): its creates,
        gets, lists and watches beyond that get 429, as on a managed cluster. Started on first
        use and reused for the same arguments; the first such endpoint's ServiceAccount,
        FlowSchema and priority level are all named "hub-throttled"."""
        apf = ApfThrottle(seats, max_requests_inflight, max_mutating_requests_inflight)
        if self._stopped:
            raise ClusterError("the cluster is stopped")
        if apf not in self._apf:
            self._apf[apf] = self._start_apf_endpoint(apf, index=len(self._apf))
        return self._apf[apf]

    def seat_holder(self, endpoint: ApiEndpoint) -> None:
        """Make held creates possible through ``endpoint``: start the admission webhook of
        tests/k8s/seat_holder.py (once) and register it, then wait until ``endpoint`` applies
        it. From then on, creating :func:`held_secret_manifest` there keeps the creator's APF
        seat for the seconds it names, then fails with 403."""
        if self._stopped:
            raise ClusterError("the cluster is stopped")
        if self._seat_holder_url is None:
            self._start_seat_holder()
        self._wait_seat_holder_applied(endpoint)

    def seat_holds(self) -> dict[str, int]:
        """The seat holder's count of creates held right now ("now") and so far ("total")."""
        if self._seat_holder_url is None:
            raise ClusterError("the seat holder is not started (call seat_holder first)")
        url = self._seat_holder_url.removesuffix("/hold") + "/holding"
        with urllib.request.urlopen(url, timeout=5, context=unverified_tls()) as response:
            return dict(json.loads(response.read()))

    def _start_seat_holder(self) -> None:
        from kubernetes import client

        port = free_port()
        cert, key = self.work_dir / "seat-holder.crt", self.work_dir / "seat-holder.key"
        subprocess.run(
            [
                "openssl", "req", "-x509", "-nodes", "-days", "7",
                "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                "-keyout", str(key), "-out", str(cert),
                "-subj", f"/CN={LOOPBACK}", "-addext", f"subjectAltName=IP:{LOOPBACK}",
            ],
            check=True,
            capture_output=True,
        )  # fmt: skip
        address = f"{LOOPBACK}:{port}"
        process = self._launch(
            "seat-holder",
            [sys.executable, str(SEAT_HOLDER), f"--address={address}",
             f"--cert={cert}", f"--key={key}"],
        )  # fmt: skip
        wait_until(
            lambda: http_ok(f"https://{address}/healthz", context=unverified_tls()),
            timeout=COMPONENT_START_TIMEOUT,
            what="the seat-holder webhook",
            process=process,
        )
        with self.admin_client() as api_client:
            client.AdmissionregistrationV1Api(
                api_client
            ).create_validating_webhook_configuration(
                seat_holder_webhook_manifest(f"https://{address}/hold", cert.read_bytes())
            )
        self._seat_holder_url = f"https://{address}/hold"

    def _wait_seat_holder_applied(self, endpoint: ApiEndpoint) -> None:
        """Until ``endpoint`` sends a held create (of no seconds) to the webhook: API servers
        pick webhook configurations up through a watch."""
        from kubernetes import client, config

        from tests.k8s.seat_holder import DENIAL_PREFIX

        def denied() -> bool:
            with config.new_client_from_config(
                config_file=str(endpoint.admin_kubeconfig)
            ) as api_client:
                core = client.CoreV1Api(api_client)
                try:
                    made = core.create_namespaced_secret(self.namespace, held_secret_manifest(0))
                except client.ApiException as e:
                    return e.status == 403 and DENIAL_PREFIX in (e.body or "")
                core.delete_namespaced_secret(made.metadata.name, self.namespace)
                return False

        wait_until(denied, timeout=COMPONENT_START_TIMEOUT, what="the seat holder to apply")

    # -- restarting an API server ------------------------------------------------------------

    def _apiserver_process(self, endpoint: ApiEndpoint) -> ManagedProcess:
        try:
            return self._apiservers[endpoint.server]
        except KeyError:
            raise ClusterError(f"no API server of this cluster serves {endpoint.server}") from None

    def stop_apiserver(self, endpoint: ApiEndpoint, grace: float = APISERVER_STOP_GRACE) -> None:
        """Stop ``endpoint``'s kube-apiserver: SIGTERM, then SIGKILL after ``grace`` seconds.
        On SIGTERM it stops listening at once (new connections are refused from then on until
        ``start_apiserver``) and finishes short requests, but open watches keep it alive until
        the SIGKILL. etcd and everything in it stay."""
        process = self._apiserver_process(endpoint)
        self._paused.add(endpoint.server)
        process.stop(timeout=grace)

    def start_apiserver(self, endpoint: ApiEndpoint) -> None:
        """Start ``endpoint``'s kube-apiserver again, with the same command line: the same port
        and the same self-signed certificate (kept in its --cert-dir), so clients holding the
        endpoint's kubeconfigs reconnect to it unchanged. Returns once /readyz is OK. Call it
        from the main thread, like ``start()``: the parent-death signal that kills the new
        process with pytest is tied to the starting thread, so a process started from a worker
        thread (``asyncio.to_thread``) would die when that thread ends."""
        process = self._apiserver_process(endpoint)
        if self._stopped:
            raise ClusterError("the cluster is stopped")
        if process.exit_code() is None and endpoint.server not in self._paused:
            return  # running already
        process.start()
        self._paused.discard(endpoint.server)
        self._wait_apiserver_ready(process.name, endpoint.server, process)
        ca_now = last_ca_certificate((self._cert_dir(process.name) / "apiserver.crt").read_bytes())
        if ca_now != kubeconfig_ca(endpoint.admin_kubeconfig):
            raise ClusterError(f"{process.name} came back with a different certificate")
        if isinstance(endpoint, ApfEndpoint):
            self._wait_apf_applied(endpoint)

    @contextlib.contextmanager
    def apiserver_down(
        self, endpoint: ApiEndpoint, grace: float = APISERVER_STOP_GRACE
    ) -> Iterator[None]:
        """``with cluster.apiserver_down(endpoint): ...``: the API server is stopped inside the
        block and started again (ready) when it ends, whatever happened in it."""
        self.stop_apiserver(endpoint, grace)
        try:
            yield
        finally:
            if not self._stopped:
                self.start_apiserver(endpoint)

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> LocalCluster:
        started = time.monotonic()
        try:
            self.work_dir.mkdir(parents=True, exist_ok=True)
            self._write_credentials()
            self._start_etcd()
            self.api = self._start_apiserver("kube-apiserver", None)
            self._configure_hub_access()
            self._create_default_storage_class()
            self._start_scheduler()
            self._start_controller_manager()
            self._start_kwok()
            self._create_nodes()
            self._start_responder()
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - started
        return self

    def stop(self) -> None:
        # Reverse start order: clients of the API server first, etcd last (kube-apiserver
        # hangs in shutdown if etcd is already gone).
        self._stopped = True
        self._remove_hostpath_volumes()
        for process in reversed(self._processes):
            process.stop()
        if self._etcd_data is not None:
            shutil.rmtree(self._etcd_data, ignore_errors=True)

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- steps -------------------------------------------------------------------------------

    def _require_api(self) -> ApiEndpoint:
        if self.api is None:
            raise ClusterError("the cluster is not started")
        return self.api

    def _launch(self, name: str, command: list[str]) -> ManagedProcess:
        process = ManagedProcess(name, command, self.log_dir / f"{name}.log")
        self._processes.append(process)
        process.start()
        return process

    def _write_credentials(self) -> None:
        self._token_file = self.work_dir / "tokens.csv"
        self._token_file.write_text(
            token_auth_csv([(self._admin_token, ADMIN_USER, "kube-admin-uid", ["system:masters"])])
        )
        self._token_file.chmod(0o600)
        self._sa_key = self.work_dir / "service-account.key"
        if shutil.which("openssl") is None:
            raise ClusterError("openssl is required to make the ServiceAccount signing key")
        subprocess.run(
            ["openssl", "genrsa", "-out", str(self._sa_key), "2048"],
            check=True,
            capture_output=True,
        )

    def _start_etcd(self) -> None:
        # Inside the work directory (not tmpfs), so even a killed session leaves nothing
        # behind that pytest's temporary-directory rotation would not remove.
        self._etcd_data = self.work_dir / "etcd-data"
        self._etcd_port = free_port()
        process = self._launch(
            "etcd",
            etcd_command(self.bin_dir / "etcd", self._etcd_data, self._etcd_port, free_port()),
        )
        wait_until(
            lambda: http_ok(f"http://{LOOPBACK}:{self._etcd_port}/health"),
            timeout=ETCD_START_TIMEOUT,
            what="etcd to report healthy",
            process=process,
        )

    def _cert_dir(self, name: str) -> Path:
        return self.work_dir / f"{name}-certs"

    def _wait_apiserver_ready(self, name: str, server: str, process: ManagedProcess) -> None:
        # Unverified only for this probe of our own child: its certificate file is complete
        # once it serves, and every kubeconfig then verifies against that certificate's CA.
        context = unverified_tls()
        wait_until(
            lambda: http_ok(f"{server}/readyz", context=context, token=self._admin_token),
            timeout=APISERVER_START_TIMEOUT,
            what=f"{name} /readyz",
            process=process,
        )

    def _start_apiserver(
        self, name: str, throttle: Throttle | None, apf: ApfThrottle | None = None
    ) -> ApiEndpoint:
        port = free_port()
        cert_dir = self._cert_dir(name)
        process = self._launch(
            name,
            apiserver_command(
                self.bin_dir / "kube-apiserver",
                etcd_port=self._etcd_port,
                secure_port=port,
                cert_dir=cert_dir,
                token_file=self._token_file,
                service_account_key=self._sa_key,
                throttle=throttle,
                apf=apf,
            ),
        )
        server = f"https://{LOOPBACK}:{port}"
        self._apiservers[server] = process
        self._wait_apiserver_ready(name, server, process)
        ca_pem = last_ca_certificate((cert_dir / "apiserver.crt").read_bytes())
        admin = self.work_dir / f"{name}-admin.kubeconfig"
        self._write_kubeconfig(
            admin, kubeconfig(server, ca_pem, ADMIN_USER, self._admin_token, self.namespace)
        )
        hub = self.work_dir / f"{name}-hub.kubeconfig"
        if self._hub_token is not None:
            self._write_kubeconfig(
                hub,
                kubeconfig(server, ca_pem, HUB_SERVICE_ACCOUNT, self._hub_token, self.namespace),
            )
        return ApiEndpoint(server=server, kubeconfig=hub, admin_kubeconfig=admin, log=process.log)

    @staticmethod
    def _write_kubeconfig(path: Path, content: dict[str, Any]) -> None:
        path.write_text(yaml.safe_dump(content, sort_keys=False))
        path.chmod(0o600)

    def _configure_hub_access(self) -> None:
        """Namespace, ServiceAccount, Role and RoleBinding for the hub, then a real
        ServiceAccount token (TokenRequest) written into the hub's kubeconfig."""
        from kubernetes import client

        api = self._require_api()
        with self.admin_client() as api_client:
            core = client.CoreV1Api(api_client)
            rbac = client.RbacAuthorizationV1Api(api_client)
            ns = self.namespace
            core.create_namespace({"metadata": {"name": ns}})
            rbac.create_namespaced_role(
                ns,
                {
                    "metadata": {"name": "hub"},
                    "rules": [dict(rule) for rule in self.hub_role_rules],
                },
            )
        self._hub_token = self._bound_service_account_token(HUB_SERVICE_ACCOUNT)
        ca_pem = kubeconfig_ca(api.admin_kubeconfig)
        self._write_kubeconfig(
            api.kubeconfig,
            kubeconfig(api.server, ca_pem, HUB_SERVICE_ACCOUNT, self._hub_token, self.namespace),
        )

    def _bound_service_account_token(self, name: str) -> str:
        """A ServiceAccount ``name`` in the hub namespace bound to the hub's Role, and a real
        token for it from the TokenRequest API."""
        from kubernetes import client

        ns = self.namespace
        with self.admin_client() as api_client:
            core = client.CoreV1Api(api_client)
            rbac = client.RbacAuthorizationV1Api(api_client)
            core.create_namespaced_service_account(ns, {"metadata": {"name": name}})
            rbac.create_namespaced_role_binding(
                ns,
                {
                    "metadata": {"name": name},
                    "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": ns}],
                    "roleRef": {
                        "apiGroup": "rbac.authorization.k8s.io",
                        "kind": "Role",
                        "name": "hub",
                    },
                },
            )
            token_request = core.create_namespaced_service_account_token(
                name, ns, {"spec": {"expirationSeconds": 7 * 24 * 3600}}
            )
        if token_request.status is None:
            raise ClusterError(f"the TokenRequest for ServiceAccount {name} returned no token")
        return str(token_request.status.token)

    def _start_apf_endpoint(self, apf: ApfThrottle, index: int) -> ApfEndpoint:
        from kubernetes import client

        name = (
            HUB_THROTTLED_SERVICE_ACCOUNT
            if index == 0
            else f"{HUB_THROTTLED_SERVICE_ACCOUNT}-{index + 1}"
        )
        token = self._bound_service_account_token(name)
        shares = self._create_priority_level(name, apf.seats, apf.server_concurrency_limit)
        with self.admin_client() as api_client:
            client.FlowcontrolApiserverV1Api(api_client).create_flow_schema(
                apf_flow_schema_manifest(name, name, name, self.namespace)
            )
        process_name = (
            f"kube-apiserver-apf-{apf.seats}-{apf.max_requests_inflight}"
            f"-{apf.max_mutating_requests_inflight}"
        )
        plain = self._start_apiserver(process_name, None, apf)
        ca_pem = kubeconfig_ca(plain.admin_kubeconfig)
        throttled_kubeconfig = self.work_dir / f"{process_name}-{name}.kubeconfig"
        self._write_kubeconfig(
            throttled_kubeconfig, kubeconfig(plain.server, ca_pem, name, token, self.namespace)
        )
        endpoint = ApfEndpoint(
            server=plain.server,
            kubeconfig=throttled_kubeconfig,
            admin_kubeconfig=plain.admin_kubeconfig,
            log=plain.log,
            service_account=name,
            priority_level=name,
            flow_schema=name,
            seats=apf.seats,
            shares=shares,
            throttle=apf,
        )
        self._wait_apf_applied(endpoint)
        return endpoint

    def _create_priority_level(self, name: str, seats: int, server_limit: int) -> int:
        """A Reject priority level of exactly ``seats`` seats next to the existing ones, on an
        API server of total concurrency ``server_limit``; returns its shares."""
        from kubernetes import client

        with self.admin_client() as api_client:
            flowcontrol = client.FlowcontrolApiserverV1Api(api_client)
            other_shares = 0
            for level in flowcontrol.list_priority_level_configuration().items:
                spec = level.spec
                if spec.limited is not None:
                    other_shares += spec.limited.nominal_concurrency_shares or 0
                elif spec.exempt is not None:
                    other_shares += spec.exempt.nominal_concurrency_shares or 0
            shares = apf_shares_for_seats(seats, server_limit, other_shares)
            flowcontrol.create_priority_level_configuration(
                apf_priority_level_manifest(name, shares)
            )
        return shares

    def apf_watch_level(self, endpoint: ApfEndpoint) -> Path:
        """Give the watches of ``endpoint``'s throttled identity a priority level of their own
        (one seat, Reject), shared only with the ServiceAccount WATCH_BLOCKER_SERVICE_ACCOUNT,
        whose kubeconfig on ``endpoint`` is returned. With the seat holder, a held create by
        that identity (:func:`hold_seat`) fills the level: the throttled identity's watches
        get 429 for as long, and its other requests are not affected. Created on first use."""
        if endpoint.server in self._watch_levels:
            return self._watch_levels[endpoint.server]
        from kubernetes import client

        name = f"{endpoint.priority_level}-watches"
        blocker = WATCH_BLOCKER_SERVICE_ACCOUNT
        token = self._bound_service_account_token(blocker)
        self._create_priority_level(name, 1, endpoint.throttle.server_concurrency_limit)
        with self.admin_client() as api_client:
            client.FlowcontrolApiserverV1Api(api_client).create_flow_schema(
                apf_watch_flow_schema_manifest(
                    name, name, endpoint.service_account, blocker, self.namespace
                )
            )
        ca_pem = kubeconfig_ca(endpoint.admin_kubeconfig)
        path = self.work_dir / f"{name}-{blocker}.kubeconfig"
        self._write_kubeconfig(
            path, kubeconfig(endpoint.server, ca_pem, blocker, token, self.namespace)
        )
        self._watch_levels[endpoint.server] = path
        self._wait_apf_applied(endpoint)
        return path

    def _wait_apf_applied(self, endpoint: ApfEndpoint) -> None:
        """Wait until the API server applies the endpoint's priority levels (it reads APF
        objects from etcd through a watch) with the numbers of seats asked for."""
        process = self._apiservers[endpoint.server]
        wanted = {endpoint.priority_level: float(endpoint.seats)}
        if endpoint.server in self._watch_levels:
            wanted[f"{endpoint.priority_level}-watches"] = 1.0
        seen: dict[str, list[float]] = {}

        def applied() -> bool:
            samples = metric_samples(
                apiserver_metrics(endpoint), "apiserver_flowcontrol_nominal_limit_seats"
            )
            seen.clear()
            for labels, value in samples:
                if labels.get("priority_level") in wanted:
                    seen.setdefault(labels["priority_level"], []).append(value)
            return all(seen.get(level) == [seats] for level, seats in wanted.items())

        try:
            wait_until(
                applied,
                timeout=COMPONENT_START_TIMEOUT,
                what=f"{process.name} to give priority levels {wanted} seats",
                process=process,
            )
        except ClusterError as error:
            raise ClusterError(
                f"{error} (apiserver_flowcontrol_nominal_limit_seats: {seen})"
            ) from None

    def _create_default_storage_class(self) -> None:
        from kubernetes import client

        with self.admin_client() as api_client:
            client.StorageV1Api(api_client).create_storage_class(default_storage_class_manifest())

    def _start_controller_manager(self) -> None:
        port = free_port()
        self._launch_until_healthy(
            "kube-controller-manager",
            controller_manager_command(
                self.bin_dir / "kube-controller-manager", self.admin_kubeconfig, port
            ),
            port,
        )

    def _launch_until_healthy(self, name: str, command: list[str], port: int) -> None:
        """Start a control-plane component and wait for its /healthz on ``port``."""
        process = self._launch(name, command)
        context = unverified_tls()
        wait_until(
            lambda: http_ok(f"https://{LOOPBACK}:{port}/healthz", context=context),
            timeout=COMPONENT_START_TIMEOUT,
            what=f"{name} /healthz",
            process=process,
        )

    def _remove_hostpath_volumes(self) -> None:
        """Remove the directories the hostPath provisioner made for this cluster's PVs that
        are still there (it makes them under /tmp/hostpath_pv/, outside the work directory;
        its deleter removes each one with its PV)."""
        api = self.api
        if api is None or self._apiservers.get(api.server) is None:
            return
        if self._apiservers[api.server].exit_code() is not None:
            return
        try:
            from kubernetes import client

            with self.admin_client() as api_client:
                volumes = (
                    client.CoreV1Api(api_client).list_persistent_volume(_request_timeout=5).items
                )
        except Exception:  # noqa: BLE001 - best effort, at shutdown
            return
        for volume in volumes:
            if volume.metadata is None or volume.spec is None:
                continue
            annotations = volume.metadata.annotations or {}
            host_path = volume.spec.host_path
            if annotations.get("pv.kubernetes.io/provisioned-by") != HOSTPATH_PROVISIONER:
                continue
            if host_path is None or Path(host_path.path).parent != HOSTPATH_PV_ROOT:
                continue
            shutil.rmtree(host_path.path, ignore_errors=True)

    def _start_scheduler(self) -> None:
        port = free_port()
        self._launch_until_healthy(
            "kube-scheduler",
            scheduler_command(self.bin_dir / "kube-scheduler", self.admin_kubeconfig, port),
            port,
        )

    def _start_kwok(self) -> None:
        port = free_port()
        stages = self.bin_dir / "kwok-stages" / "node"
        stage_files = [
            stages / "fast" / "node-initialize.yaml",
            stages / "heartbeat" / "node-heartbeat.yaml",
            POD_STAGES,
        ]
        for stage_file in stage_files:
            if not stage_file.is_file():
                raise ClusterError(
                    f"KWOK stage file {stage_file} is missing (run tests/k8s/build.sh)"
                )
        process = self._launch(
            "kwok", kwok_command(self.bin_dir / "kwok", self.admin_kubeconfig, stage_files, port)
        )
        self._kwok = process
        wait_until(
            lambda: http_ok(f"http://{LOOPBACK}:{port}/healthz"),
            timeout=COMPONENT_START_TIMEOUT,
            what="kwok /healthz",
            process=process,
        )

    def _create_nodes(self) -> None:
        self.add_nodes(range(self.node_count))

    def add_nodes(self, indexes: Iterable[int]) -> None:
        """Create fake nodes ``indexes`` (of ``node_shape``) and wait until KWOK has made
        every node of the cluster Ready (a benchmark's stand-in autoscaler adds nodes)."""
        from kubernetes import client

        with self.admin_client() as api_client:
            core = client.CoreV1Api(api_client)
            for index in indexes:
                core.create_node(node_manifest(index, self.node_shape))

            def all_ready() -> bool:
                nodes = core.list_node(label_selector="type=kwok").items
                return all(
                    any(c.type == "Ready" and c.status == "True"
                        for c in node.status.conditions or [])
                    for node in nodes
                )

            wait_until(
                all_ready,
                timeout=NODES_READY_TIMEOUT,
                what="fake nodes to be Ready",
                process=self._kwok,
            )

    def remove_nodes_from(self, first: int) -> None:
        """Delete the fake nodes of index ``first`` and above (those add_nodes added)."""
        from kubernetes import client

        keep = {node_name(index) for index in range(first)}
        with self.admin_client() as api_client:
            core = client.CoreV1Api(api_client)
            for node in core.list_node(label_selector="type=kwok").items:
                if node.metadata.name not in keep:
                    core.delete_node(node.metadata.name)

    def _start_responder(self) -> None:
        port = free_port()
        process = self._launch(
            "responder",
            [
                sys.executable,
                str(RESPONDER),
                f"--kubeconfig={self.admin_kubeconfig}",
                f"--namespace={self.namespace}",
                f"--health-address={LOOPBACK}:{port}",
            ],
        )
        self.responder_url = f"http://{LOOPBACK}:{port}"
        wait_until(
            lambda: http_ok(f"{self.responder_url}/healthz"),
            timeout=COMPONENT_START_TIMEOUT,
            what="the pod responder to sync with the API server",
            process=process,
        )

    def listening_sockets(self) -> dict[str, set[tuple[str, int]]]:
        """What each running process listens on, by process name."""
        return {
            process.name: listening_sockets(process.pid)
            for process in self._processes
            if process.pid is not None and process.exit_code() is None
        }

    def responder_endpoints(self) -> list[dict[str, Any]]:
        """What the responder serves right now: ``[{"ip", "port", "pod"}]``."""
        with urllib.request.urlopen(f"{self.responder_url}/endpoints", timeout=5) as response:
            return json.loads(response.read())


# --------------------------------------------------------------------------------------------
# python -m tests.k8s.cluster up
# --------------------------------------------------------------------------------------------


def _run_up(args: argparse.Namespace) -> int:
    bin_dir = build_binaries()
    work_dir = Path(args.work_dir or tempfile.mkdtemp(prefix="hub-resilience-k8s-"))
    cluster = LocalCluster(
        work_dir=work_dir, bin_dir=bin_dir, namespace=args.namespace, node_count=args.nodes
    )
    stop_requested = False

    def request_stop(signum: int, frame: object) -> None:
        nonlocal stop_requested
        stop_requested = True

    # Both set explicitly: a shell starting us in the background may have SIGINT ignored.
    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    with cluster:
        lines = [
            f"# local Kubernetes {bin_dir.name} up in {cluster.startup_seconds:.1f}s "
            f"({args.nodes} fake nodes, namespace {args.namespace!r})",
            f"export KUBECONFIG={cluster.kubeconfig}",
            f"# admin (system:masters): export KUBECONFIG={cluster.admin_kubeconfig}",
        ]
        if args.throttled:
            reads, writes = args.throttled
            endpoint = cluster.throttled_endpoint(reads, writes)
            lines.append(
                f"# throttled API server ({reads}/{writes} in flight): "
                f"export KUBECONFIG={endpoint.kubeconfig}"
            )
        if args.apf is not None:
            apf = cluster.apf_endpoint(seats=args.apf)
            lines.append(
                f"# APF-throttled API server ({apf.seats} seat(s) for ServiceAccount "
                f"{apf.service_account}): export KUBECONFIG={apf.kubeconfig}"
            )
        lines.append(f"# logs: {cluster.log_dir}")
        lines.append("# Ctrl-C stops the cluster")
        print("\n".join(lines), flush=True)
        while not stop_requested:
            exited = cluster.exited_process()
            if exited is not None:
                print(f"# {exited.name} exited; see {exited.log}", file=sys.stderr)
                return 1
            time.sleep(1)
    print("# stopped", flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.k8s.cluster", description=__doc__.split("\n\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start the cluster and keep it running until Ctrl-C")
    up.add_argument("--nodes", type=int, default=4, help="number of fake nodes (default 4)")
    up.add_argument(
        "--namespace", default="hub", help="namespace created for the hub (default hub)"
    )
    up.add_argument(
        "--work-dir",
        help="directory for certificates, kubeconfigs and logs (default: a new temporary one)",
    )
    up.add_argument(
        "--throttled",
        nargs=2,
        type=int,
        metavar=("READS", "WRITES"),
        help="also start a throttled API server with these --max-requests-inflight and "
        "--max-mutating-requests-inflight",
    )
    up.add_argument(
        "--apf",
        type=int,
        metavar="SEATS",
        help="also start the API Priority and Fairness throttled API server, its priority "
        "level given SEATS seats",
    )
    args = parser.parse_args(list(argv) if argv is not None else None)
    try:
        return _run_up(args)
    except ClusterError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
