"""Kubernetes' QoS rules and the Guaranteed policy, without I/O."""

from __future__ import annotations

import copy

import pytest
from kubernetes.client import V1Container, V1ObjectMeta, V1Pod, V1PodSpec, V1ResourceRequirements

from hub_resilience.hub.qos import (
    QoSClass,
    QoSError,
    check_enforced,
    make_guaranteed,
    qos_class,
)


def container(name: str, requests: dict | None = None, limits: dict | None = None) -> dict:
    c: dict = {"name": name, "image": "busybox"}
    if requests is not None or limits is not None:
        c["resources"] = {}
        if requests is not None:
            c["resources"]["requests"] = requests
        if limits is not None:
            c["resources"]["limits"] = limits
    return c


def pod(*containers: dict, init: tuple[dict, ...] = ()) -> dict:
    spec: dict = {"containers": list(containers)}
    if init:
        spec["initContainers"] = list(init)
    return {"metadata": {"name": "jupyter-x"}, "spec": spec}


FULL = {"cpu": "1", "memory": "1Gi"}


def resources_of(p: dict, index: int = 0, field: str = "containers") -> tuple[dict, dict]:
    r = p["spec"][field][index]["resources"]
    return r["requests"], r["limits"]


class TestQosClass:
    def test_requests_equal_limits_is_guaranteed(self) -> None:
        assert qos_class(pod(container("a", FULL, FULL))) == QoSClass.GUARANTEED

    def test_limits_only_is_guaranteed_after_api_server_defaulting(self) -> None:
        assert qos_class(pod(container("a", None, FULL))) == QoSClass.GUARANTEED

    def test_no_resources_is_best_effort(self) -> None:
        assert qos_class(pod(container("a"), container("b"))) == QoSClass.BEST_EFFORT

    def test_requests_without_limits_is_burstable(self) -> None:
        assert qos_class(pod(container("a", FULL, None))) == QoSClass.BURSTABLE

    def test_requests_below_limits_is_burstable(self) -> None:
        p = pod(container("a", {"cpu": "500m", "memory": "1Gi"}, {"cpu": "1", "memory": "1Gi"}))
        assert qos_class(p) == QoSClass.BURSTABLE

    def test_init_container_without_limits_makes_pod_burstable(self) -> None:
        p = pod(container("a", FULL, FULL), init=(container("init"),))
        assert qos_class(p) == QoSClass.BURSTABLE

    def test_sidecar_without_memory_limit_makes_pod_burstable(self) -> None:
        sidecar = container("side", {"cpu": "1"}, {"cpu": "1"})
        sidecar["restartPolicy"] = "Always"
        p = pod(container("a", FULL, FULL), init=(sidecar,))
        assert qos_class(p) == QoSClass.BURSTABLE

    @pytest.mark.parametrize(
        ("request_", "limit"),
        [("1Gi", "1073741824"), ("1024Mi", "1Gi"), ("1G", "1000M"), ("1e3", "1k")],
    )
    def test_memory_quantities_compare_as_kubernetes_does(self, request_: str, limit: str) -> None:
        p = pod(container("a", {"cpu": "1", "memory": request_}, {"cpu": "1", "memory": limit}))
        assert qos_class(p) == QoSClass.GUARANTEED

    @pytest.mark.parametrize(("request_", "limit"), [("500m", "0.5"), ("1", "1000m"), (2, "2")])
    def test_cpu_quantities_compare_as_kubernetes_does(self, request_: object, limit: str) -> None:
        p = pod(container("a", {"cpu": request_, "memory": "1"}, {"cpu": limit, "memory": "1"}))
        assert qos_class(p) == QoSClass.GUARANTEED

    def test_unequal_but_close_quantities_are_not_equal(self) -> None:
        p = pod(container("a", {"cpu": "1", "memory": "1G"}, {"cpu": "1", "memory": "1Gi"}))
        assert qos_class(p) == QoSClass.BURSTABLE

    def test_zero_limit_counts_as_unset(self) -> None:
        p = pod(container("a", None, {"cpu": "0", "memory": "1Gi"}))
        assert qos_class(p) == QoSClass.BURSTABLE

    def test_extended_resources_do_not_count(self) -> None:
        p = pod(
            container(
                "a",
                {**FULL, "nvidia.com/gpu": "1"},
                {**FULL, "nvidia.com/gpu": "1", "ephemeral-storage": "1Gi"},
            )
        )
        assert qos_class(p) == QoSClass.GUARANTEED

    def test_model_objects_are_read_like_dicts(self) -> None:
        model = V1Pod(
            metadata=V1ObjectMeta(name="x"),
            spec=V1PodSpec(
                containers=[
                    V1Container(
                        name="a", resources=V1ResourceRequirements(requests=FULL, limits=FULL)
                    )
                ],
                init_containers=[V1Container(name="init")],
            ),
        )
        assert qos_class(model) == QoSClass.BURSTABLE
        model.spec.init_containers = []
        assert qos_class(model) == QoSClass.GUARANTEED

    def test_pod_level_resources_decide_when_set(self) -> None:
        p = pod(container("a"), container("b"))
        p["spec"]["resources"] = {"requests": FULL, "limits": FULL}
        assert qos_class(p) == QoSClass.GUARANTEED

    def test_malformed_quantity_raises_naming_the_container(self) -> None:
        p = pod(container("notebook", None, {"cpu": "1", "memory": "1.5Gx"}))
        with pytest.raises(QoSError, match=r"container 'notebook'.*1\.5Gx"):
            qos_class(p)


class TestMakeGuaranteed:
    def test_raise_requests_sets_requests_to_limits(self) -> None:
        p = pod(container("a", {"cpu": "100m", "memory": "512Mi"}, {"cpu": "2", "memory": "2Gi"}))
        result = make_guaranteed(p, policy="raise-requests")
        assert resources_of(result) == (
            {"cpu": "2", "memory": "2Gi"},
            {"cpu": "2", "memory": "2Gi"},
        )
        assert qos_class(result) == QoSClass.GUARANTEED

    def test_lower_limits_sets_limits_to_requests(self) -> None:
        p = pod(container("a", {"cpu": "100m", "memory": "512Mi"}, {"cpu": "2", "memory": "2Gi"}))
        result = make_guaranteed(p, policy="lower-limits")
        assert resources_of(result) == (
            {"cpu": "100m", "memory": "512Mi"},
            {"cpu": "100m", "memory": "512Mi"},
        )

    def test_refuse_names_profile_container_and_resource(self) -> None:
        p = pod(container("notebook", {"cpu": "1", "memory": "1Gi"}, {"cpu": "1", "memory": "2Gi"}))
        with pytest.raises(QoSError) as info:
            make_guaranteed(p, policy="refuse", profile="large")
        message = str(info.value)
        assert "profile 'large'" in message
        assert "container 'notebook'" in message
        assert "memory request 1Gi differs from limit 2Gi" in message

    def test_refuse_accepts_an_already_guaranteed_pod(self) -> None:
        p = pod(container("a", FULL, FULL))
        assert make_guaranteed(p, policy="refuse") == p

    def test_limit_only_gets_the_request_kubernetes_would_default(self) -> None:
        result = make_guaranteed(pod(container("a", None, FULL)), policy="refuse")
        assert resources_of(result) == (FULL, FULL)

    def test_request_only_gets_an_equal_limit(self) -> None:
        result = make_guaranteed(pod(container("a", FULL, None)))
        assert resources_of(result) == (FULL, FULL)

    def test_request_only_is_refused_under_refuse(self) -> None:
        with pytest.raises(QoSError, match="no limit"):
            make_guaranteed(pod(container("a", FULL, None)), policy="refuse")

    def test_best_effort_pod_gets_configured_defaults(self) -> None:
        p = pod(container("a"), init=(container("init"),))
        result = make_guaranteed(p, default_cpu="100m", default_memory="64Mi")
        for field in ("containers", "initContainers"):
            assert resources_of(result, 0, field) == (
                {"cpu": "100m", "memory": "64Mi"},
                {"cpu": "100m", "memory": "64Mi"},
            )
        assert qos_class(result) == QoSClass.GUARANTEED

    def test_best_effort_pod_without_defaults_is_refused(self) -> None:
        with pytest.raises(QoSError, match="container 'a': cpu has neither a request nor a limit"):
            make_guaranteed(pod(container("a")), profile="tiny")

    def test_sidecar_and_init_containers_are_enforced(self) -> None:
        sidecar = container(
            "proxy", {"cpu": "50m", "memory": "32Mi"}, {"cpu": "100m", "memory": "64Mi"}
        )
        sidecar["restartPolicy"] = "Always"
        p = pod(
            container("notebook", {"cpu": "1", "memory": "1Gi"}, {"cpu": "2", "memory": "2Gi"}),
            container("extra", None, {"cpu": "200m", "memory": "128Mi"}),
            init=(sidecar,),
        )
        result = make_guaranteed(p)
        assert qos_class(result) == QoSClass.GUARANTEED
        assert resources_of(result, 0, "initContainers")[0] == {"cpu": "100m", "memory": "64Mi"}
        assert resources_of(result, 1)[0] == {"cpu": "200m", "memory": "128Mi"}

    def test_memory_only_mode_leaves_cpu_burstable(self) -> None:
        p = pod(container("a", {"cpu": "100m", "memory": "1Gi"}, {"cpu": "4", "memory": "2Gi"}))
        result = make_guaranteed(p, mode="memory-only")
        assert resources_of(result) == (
            {"cpu": "100m", "memory": "2Gi"},
            {"cpu": "4", "memory": "2Gi"},
        )
        assert qos_class(result) == QoSClass.BURSTABLE
        check_enforced(result, mode="memory-only")
        with pytest.raises(QoSError):
            check_enforced(result, mode="guaranteed")

    def test_memory_only_mode_still_needs_memory_everywhere(self) -> None:
        p = pod(container("a", {"cpu": "1"}, {"cpu": "1"}))
        with pytest.raises(QoSError, match="memory has neither"):
            make_guaranteed(p, mode="memory-only")

    def test_request_above_limit_is_refused_whatever_the_policy(self) -> None:
        p = pod(container("a", {"cpu": "2", "memory": "1Gi"}, {"cpu": "1", "memory": "1Gi"}))
        with pytest.raises(QoSError, match="cpu request 2 is above its limit 1"):
            make_guaranteed(p, policy="raise-requests")

    @pytest.mark.parametrize("bad", ["1.5Gx", "lots", "1..5", ""])
    def test_malformed_quantity_is_a_clear_error(self, bad: str) -> None:
        p = pod(container("notebook", {"memory": bad, "cpu": "1"}, {"memory": "1Gi", "cpu": "1"}))
        with pytest.raises(
            QoSError, match=r"container 'notebook': memory request.*not a Kubernetes quantity"
        ):
            make_guaranteed(p)

    @pytest.mark.parametrize("bad", ["NaN", "Infinity", "-Infinity", "inf"])
    def test_non_finite_quantity_is_a_clear_error(self, bad: str) -> None:
        p = pod(container("a", None, {"cpu": bad, "memory": "1Gi"}))
        with pytest.raises(QoSError, match="container 'a': cpu limit"):
            make_guaranteed(p)

    def test_negative_quantity_is_a_clear_error(self) -> None:
        p = pod(container("a", None, {"cpu": "-1", "memory": "1Gi"}))
        with pytest.raises(QoSError, match="cpu limit: '-1' is negative"):
            make_guaranteed(p)

    def test_bad_default_is_a_clear_error(self) -> None:
        with pytest.raises(QoSError, match="default memory"):
            make_guaranteed(pod(container("a", FULL, FULL)), default_memory="1.5Gx")

    @pytest.mark.parametrize(
        ("kwargs", "match"),
        [
            ({"policy": "squash"}, "unknown QoS policy 'squash'"),
            ({"mode": "cpu-only"}, "unknown QoS mode 'cpu-only'"),
        ],
    )
    def test_unknown_policy_or_mode(self, kwargs: dict, match: str) -> None:
        with pytest.raises(QoSError, match=match):
            make_guaranteed(pod(container("a", FULL, FULL)), **kwargs)

    def test_pod_level_resources_are_refused(self) -> None:
        p = pod(container("a", FULL, FULL))
        p["spec"]["resources"] = {"limits": FULL}
        with pytest.raises(QoSError, match="pod-level resources"):
            make_guaranteed(p)

    def test_input_pod_is_not_mutated(self) -> None:
        p = pod(container("a", {"cpu": "1", "memory": "1Gi"}, {"cpu": "2", "memory": "2Gi"}))
        before = copy.deepcopy(p)
        make_guaranteed(p)
        assert p == before

    def test_model_objects_are_returned_as_models(self) -> None:
        model = V1Pod(
            spec=V1PodSpec(
                containers=[
                    V1Container(
                        name="a",
                        resources=V1ResourceRequirements(
                            requests={"cpu": "1", "memory": "1Gi"},
                            limits={"cpu": "2", "memory": "2Gi"},
                        ),
                    ),
                    V1Container(name="no-resources"),
                ]
            )
        )
        result = make_guaranteed(model, default_cpu="50m", default_memory="32Mi")
        assert isinstance(result, V1Pod)
        assert result.spec.containers[0].resources.requests == {"cpu": "2", "memory": "2Gi"}
        assert qos_class(result) == QoSClass.GUARANTEED
