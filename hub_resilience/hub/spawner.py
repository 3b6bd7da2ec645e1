"""ResilientKubeSpawner: KubeSpawner with Guaranteed QoS and tuned activity reporting.

A thin adapter: the policy lives in :mod:`hub_resilience.hub.qos` and
:mod:`hub_resilience.hub.activity`; this class applies it at the two points where KubeSpawner
has the finished pod:

- :meth:`get_pod_manifest`, after profile_list / kubespawner_override / profile_options have
  been applied to the spawner's traits, so every pod it builds is already Guaranteed;
- :meth:`_make_create_pod_request`, right before the API call, so containers that a
  ``modify_pod_hook`` added are enforced too, and nothing that is not Guaranteed is ever
  sent to the API server.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from kubernetes_asyncio.client import V1Pod
from kubernetes_asyncio.client.rest import ApiException
from kubespawner import KubeSpawner
from kubespawner.spawner import PodReflector
from tornado import web
from traitlets import Any as AnyTrait
from traitlets import Bunch, CaselessStrEnum, Float, Integer, TraitError, validate

from hub_resilience.backoff import BackoffPolicy, parse_retry_after
from hub_resilience.hub import activity, qos, spawn_phases
from hub_resilience.hub.metrics import (
    K8S_API_REQUEST_SECONDS,
    K8S_API_REQUESTS,
    K8S_API_RETRIES,
    NO_PROFILE,
    OTHER_PROFILE,
    SPAWN_PHASE_SECONDS,
    SPAWN_SCALE_UPS,
    SPAWNER_OUTCOMES,
    K8sOperation,
    K8sRetryReason,
    SpawnOutcome,
    SpawnPhase,
    register_hub_collectors,
)
from hub_resilience.settings import HubResilience

#: Kubernetes API answers worth retrying: throttling and transient server errors.
RETRY_REASONS = {
    429: K8sRetryReason.THROTTLED,
    500: K8sRetryReason.SERVER_ERROR,
    502: K8sRetryReason.SERVER_ERROR,
    503: K8sRetryReason.SERVER_ERROR,
    504: K8sRetryReason.SERVER_ERROR,
}


@dataclass
class SpawnTiming:
    """Monotonic timestamps of one spawn, for the phases the spawner measures itself."""

    requested: float
    first_create: float | None = None
    running: float | None = None


class ResilientKubeSpawner(KubeSpawner):
    """KubeSpawner that only creates Guaranteed user pods and tunes activity reporting."""

    qos_mode = CaselessStrEnum(
        list(qos.QoSMode.values()),
        default_value=qos.QoSMode.GUARANTEED.value,
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
        list(qos.QoSPolicy.values()),
        default_value=qos.QoSPolicy.RAISE_REQUESTS.value,
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

    backoff_base = Float(
        0.5,
        config=True,
        help="""
        Base delay, in seconds, of the full-jitter exponential backoff used when the
        Kubernetes API answers 429 (throttled) or 5xx without a Retry-After header.
        """,
    )

    backoff_cap = Float(
        30.0,
        config=True,
        help="Longest backoff delay, in seconds, between retries of a Kubernetes API request.",
    )

    retry_after_cap = Float(
        60.0,
        config=True,
        help="""
        Longest Retry-After, in seconds, honoured from the Kubernetes API server; a longer
        one is cut to this (with jitter), so a spawn is not parked for minutes.
        """,
    )

    retry_max_attempts = Integer(
        20,
        config=True,
        help="""
        Attempts at one Kubernetes API request (pod create or delete) before the spawn or
        stop fails; the time they may take is bounded by k8s_api_request_retry_timeout.
        """,
    )

    @validate("qos_default_cpu", "qos_default_memory")
    def _validate_default_quantity(self, proposal: Bunch) -> Any:
        value = proposal["value"]
        if value is not None:
            name = proposal["trait"].name
            try:
                qos.parse_resource_quantity(value, what=f"ResilientKubeSpawner.{name}")
            except qos.QoSError as e:
                raise TraitError(str(e)) from None
        return value

    @validate("backoff_base", "backoff_cap", "retry_after_cap")
    def _validate_positive_seconds(self, proposal: Bunch) -> float:
        value = proposal["value"]
        if not (math.isfinite(value) and value > 0):
            raise TraitError(
                f"ResilientKubeSpawner.{proposal['trait'].name} must be a finite number of "
                f"seconds > 0, got {value!r}"
            )
        return value

    @validate("retry_max_attempts")
    def _validate_attempts(self, proposal: Bunch) -> int:
        if proposal["value"] < 1:
            raise TraitError(
                f"ResilientKubeSpawner.retry_max_attempts must be >= 1, got {proposal['value']!r}"
            )
        return proposal["value"]

    def activity_settings(self) -> activity.ActivitySettings:
        """The tuned activity settings for this hub's size and budget."""
        return self.resilience.activity_settings()

    def get_env(self) -> dict:
        """KubeSpawner's environment plus the tuned single-user activity interval.

        An interval the operator set explicitly in ``environment`` is left as it is.
        """
        env = super().get_env()
        env.setdefault(
            "JUPYTERHUB_ACTIVITY_INTERVAL", str(self.activity_settings().singleuser_interval)
        )
        return env

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # The hub's HubResilience settings (the activity sizing), read and checked now, so a
        # bad value fails when the spawner is made, not in the middle of a spawn.
        self.resilience = HubResilience(config=self.config)
        self._timing: SpawnTiming | None = None
        self._validated_profile: str | None = None
        # Per operation, for the current start or stop: retries so far and when they began.
        self._retry_attempts: dict[K8sOperation, int] = {}
        self._retry_started: dict[K8sOperation, float] = {}

    @classmethod
    def _all_user_pods(cls) -> Iterable[dict]:
        """Pods of every pod reflector of this process (one per namespace in practice)."""
        for reflector in list(cls.reflectors.values()):
            if isinstance(reflector, PodReflector):
                yield from list(reflector.pods.values())

    def backoff_policy(self) -> BackoffPolicy:
        """The retry schedule for Kubernetes API 429s and 5xx, from this spawner's traits."""
        return BackoffPolicy(
            base=self.backoff_base,
            cap=max(self.backoff_cap, self.backoff_base),
            max_attempts=self.retry_max_attempts,
            deadline=max(float(self.k8s_api_request_retry_timeout), 1.0),
            retry_after_cap=self.retry_after_cap,
        )

    async def load_user_options(self) -> None:
        """KubeSpawner's, remembering the profile once it has validated it."""
        self._validated_profile = None
        await super().load_user_options()
        # KubeSpawner refuses a slug that is not in the (possibly callable) profile_list.
        self._validated_profile = self.profile_name

    @property
    def profile_label(self) -> str:
        """The profile as a metric label: a configured slug, never a free-form value."""
        if not self.profile_name:
            return NO_PROFILE
        return self._validated_profile or OTHER_PROFILE

    @property
    def profile_name(self) -> str | None:
        """The slug of the profile this spawn uses (for messages), if any."""
        options = self.user_options or {}
        return options.get("profile") or None

    def enforce_qos(self, pod: V1Pod) -> V1Pod:
        """Return ``pod`` made Guaranteed (or memory-only) by the configured policy.

        Raises :class:`hub_resilience.hub.qos.QoSError` with a message for the user and the
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

    async def get_pod_manifest(self) -> V1Pod:
        """KubeSpawner's pod, with requests equal to limits in every container."""
        return self.enforce_qos(await super().get_pod_manifest())

    async def _make_create_pod_request(self, pod: V1Pod, request_timeout: float) -> bool:
        # Enforced again here: a modify_pod_hook runs after get_pod_manifest and may add
        # containers. Idempotent for a pod that is already Guaranteed.
        pod = self.enforce_qos(pod)
        timing = self._timing
        if timing is not None and timing.first_create is None:
            timing.first_create = time.monotonic()
            self._observe_phase(SpawnPhase.HUB, timing.first_create - timing.requested)
        created = await self._k8s_request(
            K8sOperation.CREATE_POD, super()._make_create_pod_request(pod, request_timeout)
        )
        if created and timing is not None and timing.first_create is not None:
            self._observe_phase(SpawnPhase.API_CREATE, time.monotonic() - timing.first_create)
        return created

    async def _make_delete_pod_request(self, *args: Any, **kwargs: Any) -> bool:
        return await self._k8s_request(
            K8sOperation.DELETE_POD, super()._make_delete_pod_request(*args, **kwargs)
        )

    async def _k8s_request(self, operation: K8sOperation, request: Awaitable[bool]) -> bool:
        """Run one of KubeSpawner's request attempts, timing it and absorbing 429 and 5xx.

        KubeSpawner's attempts return True (done) or False (retry); an ApiException fails the
        spawn. A 429 or 5xx is turned into a wait (Retry-After when the API server sends it,
        full-jitter backoff otherwise) and False, so KubeSpawner's own loop tries again,
        until retry_max_attempts or its k8s_api_request_retry_timeout runs out.
        """
        started = time.monotonic()
        try:
            done = await request
        except ApiException as e:
            K8S_API_REQUEST_SECONDS.labels(operation).observe(time.monotonic() - started)
            K8S_API_REQUESTS.labels(operation, str(e.status)).inc()
            reason = RETRY_REASONS.get(e.status)
            if reason is None:
                raise
            return await self._wait_before_retry(operation, reason, e)
        K8S_API_REQUEST_SECONDS.labels(operation).observe(time.monotonic() - started)
        K8S_API_REQUESTS.labels(operation, "ok" if done else "retry").inc()
        return done

    async def _wait_before_retry(
        self, operation: K8sOperation, reason: K8sRetryReason, error: ApiException
    ) -> bool:
        policy = self.backoff_policy()
        attempts = self._retry_attempts.get(operation, 0) + 1
        self._retry_attempts[operation] = attempts
        first = self._retry_started.setdefault(operation, time.monotonic())
        headers: Mapping[str, str] = error.headers or {}
        retry_after = parse_retry_after(headers.get("Retry-After"))
        delay = policy.delay(attempts - 1, retry_after)
        if not policy.should_retry(attempts, time.monotonic() - first, delay):
            self.log.error(
                "Kubernetes API %s for %s failed %d times (last: %s %s); giving up",
                operation,
                self._log_name,
                attempts,
                error.status,
                error.reason,
            )
            raise error
        K8S_API_RETRIES.labels(operation, reason).inc()
        self.log.warning(
            "Kubernetes API answered %s to %s for %s; retrying in %.1fs (attempt %d)",
            error.status,
            operation,
            self._log_name,
            delay,
            attempts,
        )
        await asyncio.sleep(delay)
        return False

    def _reset_retries(self, operation: K8sOperation) -> None:
        self._retry_attempts.pop(operation, None)
        self._retry_started.pop(operation, None)

    async def stop(self, now: bool = False) -> None:
        """KubeSpawner's stop, with a fresh retry budget for its pod delete."""
        self._reset_retries(K8sOperation.DELETE_POD)
        await super().stop(now=now)

    def _observe_phase(self, phase: SpawnPhase, seconds: float) -> None:
        SPAWN_PHASE_SECONDS.labels(phase, self.profile_label).observe(max(0.0, seconds))

    def _record_outcome(self, outcome: SpawnOutcome) -> None:
        SPAWNER_OUTCOMES.labels(outcome, self.profile_label).inc()

    def _current_pod(self) -> dict | None:
        reflector = self.pod_reflector
        if reflector is None:
            return None
        return reflector.pods.get(f"{self.namespace}/{self.pod_name}")

    async def _start(self) -> str | tuple[str, int]:
        """KubeSpawner's start, timed phase by phase, with failures classified."""
        self._timing = SpawnTiming(requested=time.monotonic())
        self._reset_retries(K8sOperation.CREATE_POD)
        try:
            url = await super()._start()
        except Exception as e:  # a cancelled start is no outcome: it is not recorded
            outcome, message = self._classify_failure(e)
            self._record_outcome(outcome)
            if isinstance(e, qos.QoSError):
                # An HTTPError's message is what JupyterHub shows the user (spawn page and
                # API), and it is logged without a traceback: this is a profile to fix.
                raise web.HTTPError(500, f"Cannot start this server: {e}") from e
            if message:
                # JupyterHub logs its own generic timeout text; the user sees this message
                # on the spawn page, and the operator reads it here.
                self.log.warning("Spawn of %s failed: %s", self._log_name, message)
                raise TimeoutError(message) from e
            raise
        self._timing.running = time.monotonic()
        pod = self._current_pod()
        if pod:
            timeline = spawn_phases.pod_timeline(pod, list(self.events or []))
            for phase, seconds in timeline.phases.items():
                self._observe_phase(phase, seconds)
            if timeline.scaled_up:
                SPAWN_SCALE_UPS.labels(self.profile_label).inc()
        return url

    def _classify_failure(self, error: BaseException) -> tuple[SpawnOutcome, str | None]:
        """The outcome of a failed start, and a clearer message for a timeout, if there is one."""
        if isinstance(error, qos.QoSError):
            return SpawnOutcome.QOS_REFUSED, None
        if isinstance(error, ApiException):
            outcome = (
                SpawnOutcome.K8S_THROTTLED if error.status == 429 else SpawnOutcome.K8S_API_ERROR
            )
            return outcome, None
        events = list(self.events or [])
        reason = spawn_phases.failure_reason(self._current_pod(), events)
        if isinstance(error, (TimeoutError, asyncio.TimeoutError)):
            if reason is None:
                return SpawnOutcome.TIMEOUT, None
            details = [e.get("message") for e in events if e.get("message")]
            explanation = {
                SpawnOutcome.UNSCHEDULABLE: "no node has room for it",
                SpawnOutcome.IMAGE_PULL_FAILURE: "its image could not be pulled",
                SpawnOutcome.CRASH: "its server keeps crashing",
            }[reason]
            last = f" Kubernetes says: {details[-1]}" if details else ""
            return reason, (
                f"Your server did not start within {self.start_timeout} seconds because "
                f"{explanation}.{last}"
            )
        return reason or SpawnOutcome.ERROR, None

    @property
    def _waiting_for_response(self) -> bool:
        """JupyterHub sets this while it waits for the new server to answer HTTP.

        Watching it flip back to False is how the spawner learns the ``server_ready`` phase
        and the final outcome: JupyterHub has no hook after its readiness check.
        """
        return self.__dict__.get("_hr_waiting_for_response", False)

    @_waiting_for_response.setter
    def _waiting_for_response(self, value: bool) -> None:
        was = self.__dict__.get("_hr_waiting_for_response", False)
        self.__dict__["_hr_waiting_for_response"] = value
        timing = self.__dict__.get("_timing")
        if was and not value and timing is not None and timing.running is not None:
            if self._stop_pending:  # the hub gave up waiting and is stopping the server
                self._record_outcome(SpawnOutcome.TIMEOUT)
            else:
                self._observe_phase(SpawnPhase.SERVER_READY, time.monotonic() - timing.running)
                self._record_outcome(SpawnOutcome.SUCCESS)
            timing.running = None


register_hub_collectors(ResilientKubeSpawner._all_user_pods)
