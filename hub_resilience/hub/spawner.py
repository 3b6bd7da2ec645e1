"""ResilientKubeSpawner: KubeSpawner with Guaranteed pods, safe Kubernetes API calls,
watches that survive, and every spawn's outcome counted and explained.

A thin adapter over pure policy: QoS (:mod:`~hub_resilience.hub.qos`), activity sizing
(:mod:`~hub_resilience.hub.activity`), the retry path (:mod:`~hub_resilience.hub.k8s_requests`),
phases and failures (:mod:`~hub_resilience.hub.spawn_phases`,
:mod:`~hub_resilience.hub.spawn_failures`) and the reflectors
(:mod:`~hub_resilience.hub.watches`). It overrides each of KubeSpawner's request methods so
that every API call goes through one retry path; where and why: docs/architecture.md.
"""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from kubernetes_asyncio.client import V1Pod
from kubernetes_asyncio.client.rest import ApiException
from kubespawner import KubeSpawner
from kubespawner.objects import make_namespace
from kubespawner.spawner import EventReflector, PodReflector
from tornado import web
from traitlets import Any as AnyTrait
from traitlets import Bunch, CaselessStrEnum, Float, Integer, TraitError, validate

from hub_resilience.backoff import BackoffPolicy
from hub_resilience.hub import activity, qos, spawn_failures, spawn_phases
from hub_resilience.hub.failure_limit import counts_toward_failure_limit, forgive_failure
from hub_resilience.hub.k8s_requests import K8sRequester, K8sRequestFailed, spawn_time_left
from hub_resilience.hub.metrics import (
    NO_PROFILE,
    OTHER_PROFILE,
    SPAWN_PHASE_SECONDS,
    SPAWN_SCALE_UPS,
    SPAWNER_OUTCOMES,
    K8sOperation,
    SpawnOutcome,
    SpawnPhase,
    WatchStatus,
    register_hub_collectors,
)
from hub_resilience.hub.request_window import RECENT_K8S_REQUESTS
from hub_resilience.hub.running_hub import handler_settings
from hub_resilience.hub.spawn_failures import WatchDown
from hub_resilience.hub.watches import (
    ResilientEventReflector,
    ResilientPodReflector,
    ResilientReflectorMixin,
)
from hub_resilience.settings import HubResilience

#: The pod annotation that tells this spawn's pod from one an earlier spawn left behind.
SPAWN_ID_ANNOTATION = "hub-resilience.jupyter.org/spawn-id"

#: How many times a start deletes a pod an earlier spawn left before it gives up.
STALE_POD_DELETES = 3

#: The create, delete and read operations of the other resources KubeSpawner manages.
RESOURCE_OPERATIONS = {
    "secret": (K8sOperation.CREATE_SECRET, K8sOperation.DELETE_SECRET, K8sOperation.READ_SECRET),
    "service": (
        K8sOperation.CREATE_SERVICE,
        K8sOperation.DELETE_SERVICE,
        K8sOperation.READ_SERVICE,
    ),
}


@dataclass
class SpawnTiming:
    """Monotonic timestamps of one spawn, for the phases the spawner measures itself, and the
    hub's wait for it: from ``requested`` for ``start_timeout`` seconds."""

    requested: float
    start_timeout: float
    first_create: float | None = None
    running: float | None = None


def user_facing(error: web.HTTPError) -> web.HTTPError:
    """The error with its message as JupyterHub's spawn page and progress stream show it
    (``jupyterhub_message``), not as "HTTP 503: Service Unavailable (...)"."""
    error.jupyterhub_message = error.log_message  # type: ignore[attr-defined]
    return error


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
        Attempts at one Kubernetes API request (any create, read or delete of a pod, PVC,
        namespace, secret or service) that fail with a 5xx, a timeout or a refused
        connection, before the spawn or stop fails; the time they may take is bounded by
        k8s_api_request_retry_timeout, each attempt by k8s_api_request_timeout. Throttled
        attempts (429) do not count: they are retried, honouring Retry-After, for as long as
        start_timeout allows.
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
        self._hub_wait: SpawnTiming | None = None  # set by start(), taken by _start()
        self._in_start = False
        self._throttled: K8sRequestFailed | None = None
        self._validated_profile: str | None = None
        self._spawn_id: str | None = None
        self._pod_uid: str | None = None
        self._phases: list[tuple[SpawnPhase, float]] = []
        self._stopped_while_waiting = False

    @classmethod
    def _all_user_pods(cls) -> Iterable[dict]:
        """Pods of every pod reflector of this process (one per namespace in practice)."""
        for reflector in list(cls.reflectors.values()):
            if isinstance(reflector, PodReflector):
                yield from list(reflector.pods.values())

    @classmethod
    def _all_watches(cls) -> Iterable[WatchStatus]:
        for reflector in list(cls.reflectors.values()):
            if isinstance(reflector, ResilientReflectorMixin):
                yield reflector.watch_status()

    def backoff_policy(self) -> BackoffPolicy:
        """The retry schedule for Kubernetes API requests, from this spawner's traits."""
        return BackoffPolicy(
            base=self.backoff_base,
            cap=max(self.backoff_cap, self.backoff_base),
            max_attempts=self.retry_max_attempts,
            deadline=max(float(self.k8s_api_request_retry_timeout), 1.0),
            retry_after_cap=self.retry_after_cap,
        )

    @property
    def k8s(self) -> K8sRequester:
        """The retry path every Kubernetes API request of this spawner goes through.

        Throttling is waited out for what is left of the hub's start_timeout during a start
        (start_timeout from the request's first attempt otherwise, e.g. a stop), and the
        last throttled request is kept for the message if the hub cancels the start."""
        timing = self._timing
        throttled_deadline = float(self.start_timeout)
        if self._in_start and timing is not None:
            throttled_deadline = spawn_time_left(
                timing.requested, timing.start_timeout, time.monotonic()
            )
        return K8sRequester(
            self.backoff_policy(),
            self.log,
            self._log_name,
            throttled_deadline=throttled_deadline,
            throttled=self._note_throttled,
        )

    def _note_throttled(self, so_far: K8sRequestFailed | None) -> None:
        self._throttled = so_far

    # -- reflectors -------------------------------------------------------------------------

    async def _start_watching_pods(self, replace: bool = False) -> PodReflector:
        return await self._start_reflector(
            kind="pods",
            reflector_class=ResilientPodReflector,
            labels={"component": self.component_label},
            omit_namespace=self.enable_user_namespaces,
            replace=replace,
        )

    async def _start_watching_events(self, replace: bool = False) -> EventReflector:
        return await self._start_reflector(
            kind="events",
            reflector_class=ResilientEventReflector,
            fields={"involvedObject.kind": "Pod"},
            omit_namespace=self.enable_user_namespaces,
            replace=replace,
        )

    @property
    def events(self) -> list[dict]:
        """Events of this spawn's pod (by its uid), oldest first, without sorting the
        namespace's events; before the pod exists, none (never an older pod's)."""
        reflector = self.event_reflector
        uid = self._pod_uid or self._uid_of(self._current_pod())
        if reflector is None or uid is None:
            return []
        if isinstance(reflector, ResilientEventReflector):
            return reflector.events_for(uid)
        return [e for e in reflector.events if (e.get("involvedObject") or {}).get("uid") == uid]

    def _uid_of(self, pod: dict | None) -> str | None:
        """The uid of ``pod`` if it is this spawn's (or, after a hub restart, any) pod."""
        if not pod:
            return None
        metadata = pod.get("metadata") or {}
        theirs = (metadata.get("annotations") or {}).get(SPAWN_ID_ANNOTATION)
        if self._spawn_id is not None and theirs != self._spawn_id:
            return None
        return metadata.get("uid")

    def _current_pod(self) -> dict | None:
        reflector = self.pod_reflector
        if reflector is None:
            return None
        return reflector.pods.get(f"{self.namespace}/{self.pod_name}")

    @property
    def waiting_for_node(self) -> bool:
        """Whether this spawn's pod waits for the scheduler to find it a node: what the
        admission governor counts as a capacity wait."""
        return spawn_phases.waits_for_node(self._current_pod())

    def _watch_down(self) -> WatchDown | None:
        """The pod watch, if it is down: the hub's view of the pod is then stale."""
        reflector = self.pod_reflector
        if isinstance(reflector, ResilientReflectorMixin) and not reflector.up:
            return WatchDown(reflector.last_failure, time.time() - reflector.since)
        return None

    # -- profile and QoS --------------------------------------------------------------------

    async def load_user_options(self) -> None:
        """KubeSpawner's, then the QoS check of the profile's pod, before any API call (the
        user's namespace and PVC are created after this)."""
        self._validated_profile = None
        await super().load_user_options()
        # KubeSpawner refuses a slug that is not in the (possibly callable) profile_list.
        self._validated_profile = self.profile_name
        await self.get_pod_manifest()

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
        """KubeSpawner's pod, with requests equal to limits in every container, marked with
        this spawn's id (so a create retried after a lost answer recognises its own pod)."""
        pod = self.enforce_qos(await super().get_pod_manifest())
        if self._spawn_id is not None:
            pod.metadata.annotations = dict(pod.metadata.annotations or {})
            pod.metadata.annotations[SPAWN_ID_ANNOTATION] = self._spawn_id
        return pod

    # -- Kubernetes API requests, all through the retry path --------------------------------

    async def _make_create_pod_request(self, pod: V1Pod, request_timeout: float) -> bool:
        """Create the pod once: a create that may have been stored (lost answer, 5xx) is
        confirmed by reading the pod back and matching this spawn's id, never deleted and
        created again. Only a pod left by an earlier spawn is deleted first, as KubeSpawner
        does. Returns True or raises (KubeSpawner's own retry loop is not needed)."""
        # Enforced again here: a modify_pod_hook runs after get_pod_manifest and may add
        # containers. Idempotent for a pod that is already Guaranteed.
        pod = self.enforce_qos(pod)
        timing = self._timing
        if timing is not None and timing.first_create is None:
            timing.first_create = time.monotonic()
            self._phases.append((SpawnPhase.HUB, timing.first_create - timing.requested))
        for _ in range(STALE_POD_DELETES + 1):
            try:
                created = await self.k8s.call(
                    K8sOperation.CREATE_POD,
                    lambda: self.api.create_namespaced_pod(self.namespace, pod),
                    timeout=request_timeout,
                )
            except ApiException as e:
                if e.status != 409:
                    raise
                existing = await self._read_own_pod()
                if existing is None:
                    self.log.info("Found an earlier pod %s; deleting it first", self.pod_name)
                    await self.stop(now=True)
                    continue
                created = existing
            self._pod_uid = created.metadata.uid
            if timing is not None and timing.first_create is not None:
                self._phases.append(
                    (SpawnPhase.API_CREATE, time.monotonic() - timing.first_create)
                )
            return True
        raise web.HTTPError(
            500, f"Cannot start this server: an earlier pod {self.pod_name} would not go away"
        )

    async def _read_own_pod(self) -> V1Pod | None:
        """The pod named like ours if this spawn created it (a retried create that was
        stored), None if it is an earlier spawn's or gone."""
        try:
            existing = await self.k8s.call(
                K8sOperation.READ_POD,
                lambda: self.api.read_namespaced_pod(self.pod_name, self.namespace),
                timeout=self.k8s_api_request_timeout,
            )
        except ApiException as e:
            if e.status == 404:
                return None
            raise
        annotations = existing.metadata.annotations or {}
        if self._spawn_id is not None and annotations.get(SPAWN_ID_ANNOTATION) == self._spawn_id:
            self.log.info("Pod %s was created by an earlier attempt; using it", self.pod_name)
            return existing
        return None

    async def _make_delete_pod_request(
        self, pod_name: str, delete_options: Any, grace_seconds: int, request_timeout: float
    ) -> bool:
        self.log.info("Deleting pod %s/%s", self.namespace, pod_name)
        return await self._delete(
            K8sOperation.DELETE_POD,
            lambda: self.api.delete_namespaced_pod(
                name=pod_name,
                namespace=self.namespace,
                body=delete_options,
                grace_period_seconds=grace_seconds,
            ),
            request_timeout,
        )

    async def _make_delete_pvc_request(self, pvc_name: str, request_timeout: float) -> bool:
        self.log.info("Deleting pvc %s", pvc_name)
        return await self._delete(
            K8sOperation.DELETE_PVC,
            lambda: self.api.delete_namespaced_persistent_volume_claim(
                name=pvc_name, namespace=self.namespace
            ),
            request_timeout,
        )

    async def _delete(
        self, operation: K8sOperation, request: Callable[[], Awaitable[Any]], timeout: float
    ) -> bool:
        """A delete through the retry path; already gone (404) is done too."""
        try:
            await self.k8s.call(operation, request, timeout=timeout)
        except ApiException as e:
            if e.status != 404:
                raise
        return True

    async def _make_create_pvc_request(self, pvc: Any, request_timeout: float) -> bool:
        """Create the user's PVC; one that exists (409, or a 403 from a quota on a PVC that
        exists, as KubeSpawner checks) is fine."""
        name = pvc.metadata.name
        try:
            await self.k8s.call(
                K8sOperation.CREATE_PVC,
                lambda: self.api.create_namespaced_persistent_volume_claim(
                    namespace=self.namespace, body=pvc
                ),
                timeout=request_timeout,
            )
        except ApiException as e:
            if e.status == 409:
                self.log.info("PVC %s already exists", name)
                return True
            if e.status == 403 and await self._check_pvc_exists(name, self.namespace):
                self.log.info("PVC %s already exists (a quota refused a new one)", name)
                return True
            raise
        return True

    async def _check_pvc_exists(self, pvc_name: str, namespace: str) -> bool:
        return await self._exists(
            K8sOperation.READ_PVC,
            lambda: self.api.read_namespaced_persistent_volume_claim(
                name=pvc_name, namespace=namespace
            ),
        )

    async def _exists(
        self, operation: K8sOperation, read: Callable[[], Awaitable[Any]]
    ) -> bool:
        """A read through the retry path: False for 404, True for an answer."""
        try:
            await self.k8s.call(operation, read, timeout=self.k8s_api_request_timeout)
        except ApiException as e:
            if e.status == 404:
                return False
            raise
        return True

    async def _ensure_namespace(self) -> None:
        """The user's namespace (enable_user_namespaces); one that exists is fine."""
        namespace = make_namespace(
            self.namespace,
            labels=self._expand_all(self.user_namespace_labels),
            annotations=self._expand_all(self.user_namespace_annotations),
        )
        try:
            await self.k8s.call(
                K8sOperation.CREATE_NAMESPACE,
                lambda: self.api.create_namespace(namespace),
                timeout=self.k8s_api_request_timeout,
            )
        except ApiException as e:
            if e.status != 409:
                raise

    async def _ensure_not_exists(self, kind: str, name: str) -> bool:
        """Delete a secret or service (internal_ssl, services_enabled) and report whether it
        is gone; KubeSpawner's loop calls again while it is not."""
        delete_op, read_op = RESOURCE_OPERATIONS[kind][1:]
        delete = getattr(self.api, f"delete_namespaced_{kind}")
        read = getattr(self.api, f"read_namespaced_{kind}")
        self.log.info("Deleting %s/%s", kind, name)
        await self._delete(
            delete_op,
            lambda: delete(namespace=self.namespace, name=name),
            self.k8s_api_request_timeout,
        )
        return not await self._exists(read_op, lambda: read(namespace=self.namespace, name=name))

    async def _make_create_resource_request(self, kind: str, manifest: Any) -> bool:
        """Create a secret or service; one that exists (409) is fine, as in KubeSpawner."""
        create = getattr(self.api, f"create_namespaced_{kind}")
        self.log.info("Creating %s %s", kind, manifest.metadata.name)
        try:
            await self.k8s.call(
                RESOURCE_OPERATIONS[kind][0],
                lambda: create(self.namespace, manifest),
                timeout=self.k8s_api_request_timeout,
            )
        except ApiException as e:
            if e.status != 409:
                raise
        return True

    # -- start, stop and outcomes -----------------------------------------------------------

    async def stop(self, now: bool = False) -> None:
        """KubeSpawner's stop; a stop while the hub waits for the new server to answer is
        how an http_timeout shows (JupyterHub calls no hook after its readiness check)."""
        if self._waiting_for_response:
            self._stopped_while_waiting = True
        await super().stop(now=now)

    def _record_outcome(self, outcome: SpawnOutcome) -> None:
        SPAWNER_OUTCOMES.labels(outcome, self.profile_label).inc()

    def _record_phases(self) -> None:
        for phase, seconds in self._phases:
            SPAWN_PHASE_SECONDS.labels(phase, self.profile_label).observe(max(0.0, seconds))
        self._phases = []

    def start(self) -> Any:
        """KubeSpawner's start, noting when the hub begins to wait for it and for how long.

        JupyterHub 5.5 and 6.1 (User.spawn) call this, then, before anything else runs,
        ``asyncio.wait_for(f, timeout=spawner.start_timeout)``: the value read now is the
        hub's, whatever a profile's override sets once _start loads it (that changes only
        KubeSpawner's own pod wait).
        """
        self._hub_wait = SpawnTiming(
            requested=time.monotonic(), start_timeout=float(self.start_timeout)
        )
        return super().start()

    async def _start(self) -> str | tuple[str, int]:
        """KubeSpawner's start, timed phase by phase, with every failure classified,
        counted and explained to the user."""
        timing = self._hub_wait or SpawnTiming(
            requested=time.monotonic(), start_timeout=float(self.start_timeout)
        )
        self._hub_wait = None
        self._timing = timing
        self._spawn_id = uuid.uuid4().hex
        self._pod_uid = None
        self._phases = []
        self._stopped_while_waiting = False
        self._throttled = None
        self._in_start = True
        try:
            url = await super()._start()
        except asyncio.CancelledError:
            # JupyterHub's start_timeout cancels the start it waits for (asyncio.wait_for).
            # Raising a TimeoutError instead makes JupyterHub report it as the timeout it is,
            # with our message for the user; any other cancellation is passed on.
            waited = time.monotonic() - timing.requested
            if not spawn_failures.cancelled_by_start_timeout(waited, timing.start_timeout):
                raise
            raise self._spawn_failed(
                TimeoutError(), start_timeout=timing.start_timeout
            ) from None
        except Exception as e:
            raise self._spawn_failed(e) from e
        finally:
            self._in_start = False
        self._timing.running = time.monotonic()
        pod = self._current_pod()
        if pod:
            timeline = spawn_phases.pod_timeline(pod, self.events)
            self._phases.extend(timeline.phases.items())
            if timeline.scaled_up:
                SPAWN_SCALE_UPS.labels(self.profile_label).inc()
        return url

    def _spawn_failed(
        self, error: BaseException, start_timeout: float | None = None
    ) -> BaseException:
        """Count a failed start and return what to raise: JupyterHub shows its message to
        the user and logs it without a traceback (an HTTPError or a TimeoutError).

        ``start_timeout``: the wait that ran out, when it is the hub's (not KubeSpawner's
        own, which a profile may have changed)."""
        failure = spawn_failures.classify_failure(
            error,
            pod=self._current_pod(),
            events=self.events,
            start_timeout=self.start_timeout if start_timeout is None else start_timeout,
            watch_down=self._watch_down(),
            retry_cap=self.retry_after_cap,
            throttled=self._throttled,
        )
        self._record_outcome(failure.outcome)
        self._phases = []
        api_answered = isinstance(error, K8sRequestFailed) and (
            RECENT_K8S_REQUESTS.answered_since(error.started)
        )
        if not counts_toward_failure_limit(failure.outcome, api_answered=api_answered):
            settings = handler_settings()
            if settings is not None:
                forgive_failure(settings)
        if isinstance(error, qos.QoSError):
            return user_facing(web.HTTPError(500, f"Cannot start this server: {error}"))
        if failure.message is None:
            return error
        self.log.warning(
            "Spawn of %s failed (%s): %s", self._log_name, failure.outcome, failure.message
        )
        if isinstance(error, (TimeoutError, asyncio.TimeoutError)):
            return TimeoutError(failure.message)
        return user_facing(web.HTTPError(503, failure.message))

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
            if self.__dict__.get("_stopped_while_waiting"):
                # The hub stopped the server it was waiting for: it never answered.
                self.log.warning(
                    "Spawn of %s failed (%s): its pod ran but the server never answered "
                    "the hub within http_timeout (%s s)",
                    self._log_name,
                    SpawnOutcome.HTTP_TIMEOUT,
                    self.http_timeout,
                )
                self._record_outcome(SpawnOutcome.HTTP_TIMEOUT)
                self._phases = []
            else:
                self._phases.append((SpawnPhase.SERVER_READY, time.monotonic() - timing.running))
                self._record_phases()
                self._record_outcome(SpawnOutcome.SUCCESS)
            timing.running = None


register_hub_collectors(ResilientKubeSpawner._all_user_pods, ResilientKubeSpawner._all_watches)
