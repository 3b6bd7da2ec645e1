"""ResilientKubeSpawner builds Guaranteed pods with the real KubeSpawner (no cluster needed).

The pods come from KubeSpawner's own ``get_pod_manifest`` after its own ``load_user_options``
applied a profile_list with kubespawner_override and profile_options, as in a hub.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from kubernetes.utils.quantity import parse_quantity
from traitlets import TraitError

from hub_resilience.hub.qos import QoSClass, QoSError, qos_class

SIDECAR = {
    "name": "log-shipper",
    "image": "busybox",
    "resources": {
        "requests": {"cpu": "50m", "memory": "32Mi"},
        "limits": {"cpu": "100m", "memory": "64Mi"},
    },
}
INIT = {
    "name": "fetch-material",
    "image": "busybox",
    "resources": {"limits": {"cpu": "200m", "memory": "128Mi"}},
}

PROFILES = [
    {
        "display_name": "Small",
        "slug": "small",
        "default": True,
        "kubespawner_override": {
            "cpu_guarantee": 0.5,
            "cpu_limit": 1,
            "mem_guarantee": "1G",
            "mem_limit": "2G",
        },
    },
    {
        "display_name": "Large, with init and sidecar containers",
        "slug": "large",
        "kubespawner_override": {
            "cpu_limit": 4,
            "mem_limit": "8G",
            "init_containers": [INIT],
            "extra_containers": [SIDECAR],
        },
    },
    {
        "display_name": "Choose your size",
        "slug": "choose",
        "profile_options": {
            "size": {
                "display_name": "Size",
                "choices": {
                    "s": {
                        "display_name": "S",
                        "kubespawner_override": {
                            "cpu_guarantee": 1,
                            "cpu_limit": 1,
                            "mem_guarantee": "2G",
                            "mem_limit": "2G",
                        },
                    },
                    "m": {
                        "display_name": "M",
                        "kubespawner_override": {
                            "cpu_guarantee": 0.25,
                            "cpu_limit": 2,
                            "mem_guarantee": "1G",
                            "mem_limit": "4G",
                        },
                    },
                },
            }
        },
    },
    {
        "display_name": "Unlimited sidecar",
        "slug": "bare-sidecar",
        "kubespawner_override": {
            "cpu_limit": 1,
            "mem_limit": "1G",
            "extra_containers": [{"name": "bare", "image": "busybox"}],
        },
    },
]


async def build(make_spawner: Callable, user_options: dict, **config: object):
    spawner = make_spawner({"profile_list": PROFILES, **config})
    spawner.user_options = user_options
    await spawner.load_user_options()
    return spawner, await spawner.get_pod_manifest()


def resources(container) -> tuple[dict, dict]:
    r = container.resources
    if isinstance(r, dict):
        return dict(r.get("requests") or {}), dict(r.get("limits") or {})
    return dict(r.requests or {}), dict(r.limits or {})


def quantities(resources: dict) -> dict:
    return {k: parse_quantity(v) for k, v in resources.items()}


def assert_requests_equal_limits(pod) -> None:
    containers = list(pod.spec.containers) + list(pod.spec.init_containers or [])
    assert containers
    for c in containers:
        requests, limits = resources(c)
        assert set(limits) >= {"cpu", "memory"}, c.name
        for r in ("cpu", "memory"):
            assert parse_quantity(requests[r]) == parse_quantity(limits[r]), (c.name, r)
    assert qos_class(pod) == QoSClass.GUARANTEED


@pytest.mark.parametrize(
    ("options", "expected_main"),
    [
        # KubeSpawner's byte traits read "2G" as 2 GiB.
        ({"profile": "small"}, {"cpu": "1", "memory": "2Gi"}),
        ({"profile": "large"}, {"cpu": "4", "memory": "8589934592"}),
        ({"profile": "choose", "size": "s"}, {"cpu": "1", "memory": "2147483648"}),
        ({"profile": "choose", "size": "m"}, {"cpu": "2", "memory": "4294967296"}),
    ],
)
async def test_every_profile_gives_a_guaranteed_pod(make_spawner, options, expected_main) -> None:
    _, pod = await build(make_spawner, options)
    assert_requests_equal_limits(pod)
    requests, limits = resources(pod.spec.containers[0])
    assert quantities(limits) == quantities(expected_main)


async def test_init_and_extra_containers_are_made_guaranteed(make_spawner) -> None:
    _, pod = await build(make_spawner, {"profile": "large"})
    names = [c.name for c in pod.spec.containers] + [c.name for c in pod.spec.init_containers]
    assert names == ["notebook", "log-shipper", "fetch-material"]
    sidecar = pod.spec.containers[1]
    assert resources(sidecar) == (
        {"cpu": "100m", "memory": "64Mi"},
        {"cpu": "100m", "memory": "64Mi"},
    )
    init = pod.spec.init_containers[0]
    assert resources(init) == (
        {"cpu": "200m", "memory": "128Mi"},
        {"cpu": "200m", "memory": "128Mi"},
    )


async def test_lower_limits_policy(make_spawner) -> None:
    _, pod = await build(make_spawner, {"profile": "small"}, qos_policy="lower-limits")
    assert_requests_equal_limits(pod)
    assert quantities(resources(pod.spec.containers[0])[1]) == quantities(
        {"cpu": "0.5", "memory": "1Gi"}
    )


async def test_refuse_policy_names_profile_and_container(make_spawner) -> None:
    with pytest.raises(QoSError) as info:
        await build(make_spawner, {"profile": "choose", "size": "m"}, qos_policy="refuse")
    assert "profile 'choose'" in str(info.value)
    assert "container 'notebook'" in str(info.value)


async def test_container_without_resources_is_refused_without_defaults(make_spawner) -> None:
    with pytest.raises(QoSError, match="profile 'bare-sidecar', container 'bare': cpu has neither"):
        await build(make_spawner, {"profile": "bare-sidecar"})


async def test_container_without_resources_gets_configured_defaults(make_spawner) -> None:
    _, pod = await build(
        make_spawner, {"profile": "bare-sidecar"}, qos_default_cpu="100m", qos_default_memory="64Mi"
    )
    assert_requests_equal_limits(pod)
    assert resources(pod.spec.containers[1])[1] == {"cpu": "100m", "memory": "64Mi"}


async def test_memory_only_mode(make_spawner) -> None:
    _, pod = await build(make_spawner, {"profile": "small"}, qos_mode="memory-only")
    requests, limits = resources(pod.spec.containers[0])
    assert parse_quantity(requests["memory"]) == parse_quantity(limits["memory"])
    assert parse_quantity(limits["memory"]) == parse_quantity("2Gi")
    assert quantities({"r": requests["cpu"], "l": limits["cpu"]}) == quantities(
        {"r": "0.5", "l": "1"}
    )
    assert qos_class(pod) == "Burstable"


async def test_modify_pod_hook_containers_are_enforced_before_creation(make_spawner) -> None:
    """The hook runs after get_pod_manifest; the create request enforces its result too."""
    from kubernetes_asyncio.client import V1Container

    def add_unlimited_sidecar(spawner, pod):
        pod.spec.containers.append(V1Container(name="from-hook", image="busybox"))
        return pod

    spawner, pod = await build(make_spawner, {"profile": "small"})
    spawner.modify_pod_hook = add_unlimited_sidecar
    hooked = spawner.modify_pod_hook(spawner, pod)
    created = []

    async def record(namespace, body):
        created.append(body)
        return body  # the API server answers with the stored pod

    spawner.api.create_namespaced_pod = record  # stands in for the API server: no cluster here
    with pytest.raises(QoSError, match="container 'from-hook'"):
        await spawner._make_create_pod_request(hooked, 5)
    assert created == []

    spawner.qos_default_cpu, spawner.qos_default_memory = "10m", "16Mi"
    assert await spawner._make_create_pod_request(hooked, 5) is True
    assert len(created) == 1
    assert_requests_equal_limits(created[0])


async def test_activity_interval_is_in_the_pod_environment(make_spawner) -> None:
    spawner = make_spawner(
        {"expected_concurrent_servers": 10_000, "activity_requests_per_second": 10}
    )
    assert spawner.get_env()["JUPYTERHUB_ACTIVITY_INTERVAL"] == "2010"


async def test_explicit_activity_interval_wins(make_spawner) -> None:
    spawner = make_spawner({"environment": {"JUPYTERHUB_ACTIVITY_INTERVAL": "60"}})
    assert spawner.get_env()["JUPYTERHUB_ACTIVITY_INTERVAL"] == "60"


@pytest.mark.parametrize(
    ("config", "match"),
    [
        ({"qos_policy": "squash"}, "qos_policy"),
        ({"qos_mode": "cpu-only"}, "qos_mode"),
        ({"qos_default_memory": "1.5Gx"}, "qos_default_memory.*1.5Gx"),
        ({"qos_default_cpu": "-1"}, "qos_default_cpu.*negative"),
        ({"activity_requests_per_second": 0}, "activity_requests_per_second must be a finite"),
        ({"retry_max_attempts": 0}, "retry_max_attempts must be >= 1"),
        ({"backoff_base": float("inf")}, "backoff_base must be a finite number of seconds"),
        ({"retry_after_cap": -1.0}, "retry_after_cap must be a finite number of seconds"),
        ({"expected_concurrent_servers": -5}, "expected_concurrent_servers must be >= 1"),
    ],
)
async def test_bad_settings_fail_when_the_spawner_is_configured(
    make_spawner, config, match
) -> None:
    with pytest.raises(TraitError, match=match):
        make_spawner(config)


async def test_malformed_override_quantity_fails_before_the_api(make_spawner) -> None:
    profiles = [
        {
            "display_name": "Broken",
            "slug": "broken",
            "kubespawner_override": {
                "extra_containers": [
                    {
                        "name": "typo",
                        "image": "x",
                        "resources": {"limits": {"cpu": "1", "memory": "1.5Gx"}},
                    }
                ],
            },
        }
    ]
    spawner = make_spawner({"profile_list": profiles, "cpu_limit": 1, "mem_limit": "1G"})
    spawner.user_options = {"profile": "broken"}
    # Refused as soon as the profile is loaded: before the namespace, the PVC or the pod.
    with pytest.raises(
        QoSError,
        match="profile 'broken', container 'typo': memory limit: '1.5Gx' is not a Kubernetes",
    ):
        await spawner.load_user_options()


async def test_profile_label_is_a_configured_slug_or_a_fixed_word(make_spawner) -> None:
    """Metric labels come from the operator's profile_list, never from what a user sent."""
    spawner, _ = await build(make_spawner, {"profile": "large"})
    assert spawner.profile_label == "large"

    spawner = make_spawner({"profile_list": PROFILES})
    spawner.user_options = {"profile": "made-up-by-a-user-1234"}
    with pytest.raises(ValueError):
        await spawner.load_user_options()
    assert spawner.profile_label == "other"

    assert make_spawner({}).profile_label == "default"
