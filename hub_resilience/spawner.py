"""ResilientKubeSpawner: KubeSpawner with Guaranteed QoS and tuned activity reporting.

A thin adapter: the policy lives in :mod:`hub_resilience.qos` and
:mod:`hub_resilience.activity`; this class applies it at the two points where KubeSpawner
has the finished pod:

- :meth:`get_pod_manifest`, after profile_list / kubespawner_override / profile_options have
  been applied to the spawner's traits, so every pod it builds is already Guaranteed;
- :meth:`_make_create_pod_request`, right before the API call, so containers that a
  ``modify_pod_hook`` added are enforced too, and nothing that is not Guaranteed is ever
  sent to the API server.
"""

from __future__ import annotations

from typing import Any

from kubespawner import KubeSpawner
from traitlets import Any as AnyTrait
from traitlets import CaselessStrEnum, Float, Integer, TraitError, validate

from hub_resilience import activity, qos


class ResilientKubeSpawner(KubeSpawner):
    """KubeSpawner that only creates Guaranteed user pods and tunes activity reporting."""

    qos_mode = CaselessStrEnum(
        list(qos.MODES),
        default_value="guaranteed",
        config=True,
        help="""
        Which resources must have requests equal to limits in every container of a user pod.

        "guaranteed": cpu and memory (the pod's QoS class is Guaranteed: it is never starved
        of CPU nor the first to be killed under memory pressure).
        "memory-only": memory only; CPU stays burstable, so idle users' CPU can be used by
        busy ones on the same node. CPU is compressible (a busy pod is slowed, not killed),
        which is why many operators choose this; the trade-off is that a kernel can be slowed
        by its neighbours, and the pod's QoS class is Burstable.
        """,
    )

    qos_policy = CaselessStrEnum(
        list(qos.POLICIES),
        default_value="raise-requests",
        config=True,
        help="""
        What to do with a container whose request differs from its limit.

        "raise-requests": the request becomes the limit (each user keeps what the profile
        allowed; fewer pods fit on a node). "lower-limits": the limit becomes the request
        (as many pods fit as before; each gets no headroom). "refuse": the spawn fails with a
        message naming the profile and the container, so the operator fixes the profile.
        A container with only a limit gets the request Kubernetes would default (the limit).
        """,
    )

    qos_default_cpu = AnyTrait(
        None,
        allow_none=True,
        config=True,
        help="""
        CPU request and limit (a Kubernetes quantity such as "100m" or 0.5) for a container
        that has neither, e.g. a sidecar added without resources. None refuses such a pod,
        naming the container.
        """,
    )

    qos_default_memory = AnyTrait(
        None,
        allow_none=True,
        config=True,
        help="""
        Memory request and limit (a Kubernetes quantity such as "128Mi") for a container that
        has neither. None refuses such a pod, naming the container.
        """,
    )

    expected_concurrent_servers = Integer(
        100,
        min=0,
        config=True,
        help="""
        How many user servers the hub is expected to run at once. With
        activity_requests_per_second it sets JUPYTERHUB_ACTIVITY_INTERVAL in every user pod
        (see hub_resilience.activity); use the same values in hub_resilience.configure().
        """,
    )

    activity_requests_per_second = Float(
        10.0,
        config=True,
        help="""
        Activity reports (single-user POSTs plus the hub's own proxy-poll writes) per second
        the hub should absorb at expected_concurrent_servers. Lower it on a busy hub.
        """,
    )

    activity_max_interval = Integer(
        3600,
        config=True,
        help="""
        Upper bound, in seconds, on the tuned activity intervals; keep it well below the
        culler's inactivity timeout so idle servers are still noticed in time.
        """,
    )

    @validate("qos_default_cpu", "qos_default_memory")
    def _validate_default_quantity(self, proposal: dict) -> Any:
        value = proposal["value"]
        if value is not None:
            name = proposal["trait"].name
            try:
                qos.parse_resource_quantity(value, what=f"ResilientKubeSpawner.{name}")
            except qos.QoSError as e:
                raise TraitError(str(e)) from None
        return value

    @validate("activity_requests_per_second")
    def _validate_budget(self, proposal: dict) -> float:
        if not proposal["value"] > 0:
            raise TraitError(
                "ResilientKubeSpawner.activity_requests_per_second must be > 0, "
                f"got {proposal['value']!r}"
            )
        return proposal["value"]

    def activity_settings(self) -> activity.ActivitySettings:
        """The tuned activity settings for this hub's configured size and budget."""
        return activity.tune_activity(
            self.expected_concurrent_servers,
            self.activity_requests_per_second,
            max_interval=self.activity_max_interval,
        )

    def get_env(self) -> dict:
        """KubeSpawner's environment plus the tuned single-user activity interval.

        An interval the operator set explicitly in ``environment`` is left as it is.
        """
        env = super().get_env()
        env.setdefault(
            "JUPYTERHUB_ACTIVITY_INTERVAL", str(self.activity_settings().singleuser_interval)
        )
        return env

    @property
    def profile_name(self) -> str | None:
        """The slug of the profile this spawn uses (for messages), if any."""
        options = self.user_options or {}
        return options.get("profile") or None

    def enforce_qos(self, pod: Any) -> Any:
        """Return ``pod`` made Guaranteed (or memory-only) by the configured policy.

        Raises :class:`hub_resilience.qos.QoSError` with a message for the user and the
        operator when the pod cannot be, so the spawn fails before any API call.
        """
        profile = self.profile_name
        pod = qos.make_guaranteed(
            pod,
            policy=self.qos_policy,
            mode=self.qos_mode,
            default_cpu=self.qos_default_cpu,
            default_memory=self.qos_default_memory,
            profile=profile,
        )
        qos.check_enforced(pod, mode=self.qos_mode, profile=profile)
        return pod

    async def get_pod_manifest(self) -> Any:
        """KubeSpawner's pod, with requests equal to limits in every container."""
        return self.enforce_qos(await super().get_pod_manifest())

    async def _make_create_pod_request(self, pod: Any, request_timeout: float) -> bool:
        # Enforced again here: a modify_pod_hook runs after get_pod_manifest and may add
        # containers. Idempotent for a pod that is already Guaranteed.
        pod = self.enforce_qos(pod)
        return await super()._make_create_pod_request(pod, request_timeout)
