"""Session fixtures for tests that need the local Kubernetes control plane.

``k8s_cluster`` builds the binaries on first use (tests/k8s/build.sh; a no-op once cached),
starts the cluster once per session and stops it at the end, whatever the tests did. It never
skips: if the cluster cannot be built or started, every test using it errors with the reason
(the failing component's log tail), which is what CI must show.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.k8s.cluster import LocalCluster, build_binaries


@pytest.fixture(scope="session")
def k8s_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """A running local cluster: ``.kubeconfig`` (the hub's ServiceAccount), ``.admin_kubeconfig``,
    ``.namespace``, ``.server``, ``.bin_dir``, ``.log_dir``/``.logs``,
    ``.throttled_endpoint(max_requests_inflight, max_mutating_requests_inflight)``,
    ``.apf_endpoint(seats)`` and ``.stop_apiserver``/``.start_apiserver``/``.apiserver_down``
    (docs/kubernetes-harness.md)."""
    work_dir = tmp_path_factory.mktemp("k8s")
    bin_dir = build_binaries(work_dir / "logs" / "build.log")
    cluster = LocalCluster(work_dir=work_dir, bin_dir=bin_dir)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()
