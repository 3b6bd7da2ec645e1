"""The start path of ResilientKubeSpawner: safe pod creates, outcomes and what the user reads.

A real ResilientKubeSpawner (KubeSpawner's mock user and hub) whose Kubernetes API client is
replaced by a scripted one: each method answers or raises kubernetes_asyncio's own
ApiException as an API server would. The real API server is in tests/k8s.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import pytest
from jupyterhub.utils import format_exception
from kubernetes_asyncio.client import V1ObjectMeta, V1Pod
from kubernetes_asyncio.client.rest import ApiException
from kubespawner import KubeSpawner
from prometheus_client import REGISTRY
from tornado import web

from hub_resilience.hub.k8s_requests import K8sRequestFailed
from hub_resilience.hub.metrics import K8sOperation, K8sRetryReason
from hub_resilience.hub.request_window import RequestWindow
from hub_resilience.hub.spawner import SPAWN_ID_ANNOTATION, ResilientKubeSpawner, SpawnTiming
from tests.test_spawn_failures import UNSCHEDULABLE_POD


def outcome_count(outcome: str, profile: str = "default") -> float:
    labels = {"outcome": outcome, "profile": profile}
    return REGISTRY.get_sample_value("hub_resilience_spawn_outcomes_total", labels) or 0.0


def api_error(status: int, retry_after: str | None = None) -> ApiException:
    error = ApiException(status=status, reason="Error")
    error.headers = {"Retry-After": retry_after} if retry_after else {}
    return error


class ScriptedPods:
    """create_namespaced_pod / read_namespaced_pod / delete_namespaced_pod of an API server
    that fails creates as scripted, storing the pod when ``stored`` says so."""

    def __init__(self, create_failures: list[tuple[ApiException | BaseException, bool]]) -> None:
        self.create_failures = list(create_failures)
        self.stored: V1Pod | None = None
        self.calls: list[str] = []
        self.uids = 0

    def _store(self, body: V1Pod) -> V1Pod:
        self.uids += 1
        stored = V1Pod(
            metadata=V1ObjectMeta(
                name=body.metadata.name,
                uid=f"uid-{self.uids}",
                annotations=body.metadata.annotations,
            )
        )
        self.stored = stored
        return stored

    async def create_namespaced_pod(self, namespace: str, body: V1Pod) -> V1Pod:
        self.calls.append("create")
        if self.stored is not None:
            raise api_error(409)
        if self.create_failures:
            error, stored = self.create_failures.pop(0)
            if stored:
                self._store(body)
            raise error
        return self._store(body)

    async def read_namespaced_pod(self, name: str, namespace: str) -> V1Pod:
        self.calls.append("read")
        if self.stored is None:
            raise api_error(404)
        return self.stored

    async def delete_namespaced_pod(self, **kwargs: Any) -> None:
        self.calls.append("delete")
        self.stored = None


@pytest.fixture
async def spawner(make_spawner) -> ResilientKubeSpawner:
    made = make_spawner(
        {
            "backoff_base": 0.01,
            "backoff_cap": 0.02,
            "retry_after_cap": 0.05,
            "cpu_limit": 0.5,
            "mem_limit": "512M",
        }
    )
    made._spawn_id = "this-spawn"
    return made


async def pod_for(spawner: ResilientKubeSpawner) -> V1Pod:
    return await spawner.get_pod_manifest()


async def test_a_new_spawner_is_not_taken_for_a_failed_one(spawner) -> None:
    """JupyterHub discards a spawner whose ``_failed`` is true on every request, so nothing
    here may shadow its JupyterHub attributes (a method of that name once did)."""
    assert not spawner._failed and not spawner.active and spawner.pending is None
    for name in ("_failed", "active", "pending", "ready", "_spawn_future", "_log_name"):
        assert getattr(ResilientKubeSpawner, name) is getattr(KubeSpawner, name), name


async def test_the_pod_carries_this_spawns_id(spawner) -> None:
    pod = await pod_for(spawner)
    assert pod.metadata.annotations[SPAWN_ID_ANNOTATION] == "this-spawn"


async def test_a_create_whose_answer_was_lost_is_confirmed_by_reading_it_back(spawner) -> None:
    """A 504 after the API server stored the pod: the retry gets 409, the read-back finds
    this spawn's pod, and nothing is deleted or created twice."""
    api = ScriptedPods([(api_error(504), True)])
    spawner.api = api
    assert await spawner._make_create_pod_request(await pod_for(spawner), 3) is True
    assert api.calls == ["create", "create", "read"]
    assert api.uids == 1 and spawner._pod_uid == "uid-1"


async def test_a_create_that_timed_out_but_was_stored_is_not_recreated(spawner) -> None:
    api = ScriptedPods([(asyncio.TimeoutError(), True), (api_error(429, "0.01"), False)])
    spawner.api = api
    assert await spawner._make_create_pod_request(await pod_for(spawner), 3) is True
    assert "delete" not in api.calls and api.uids == 1


async def test_a_pod_left_by_an_earlier_spawn_is_deleted_first(spawner, monkeypatch) -> None:
    api = ScriptedPods([])
    old = V1Pod(metadata=V1ObjectMeta(name="jupyter-x", uid="old", annotations={}))
    api.stored = old
    spawner.api = api

    async def stop(now: bool = False) -> None:  # KubeSpawner's stop deletes and waits
        await api.delete_namespaced_pod()

    monkeypatch.setattr(spawner, "stop", stop)
    assert await spawner._make_create_pod_request(await pod_for(spawner), 3) is True
    assert api.calls == ["create", "read", "delete", "create"]
    assert spawner._pod_uid == "uid-1"


async def test_http_timeout_is_counted_as_such_not_as_success(spawner, monkeypatch) -> None:
    """JupyterHub stops a server that never answered while it waits for it
    (_waiting_for_response), then clears the flag: the outcome is http_timeout."""

    async def stopped(self, now: bool = False) -> None:
        return None

    monkeypatch.setattr(KubeSpawner, "stop", stopped)
    before = outcome_count("http_timeout"), outcome_count("success")
    now = time.monotonic()
    spawner._timing = SpawnTiming(requested=now, start_timeout=300, running=now)
    spawner._waiting_for_response = True
    await spawner.stop()
    spawner._waiting_for_response = False
    assert outcome_count("http_timeout") - before[0] == 1
    assert outcome_count("success") == before[1]


async def test_a_server_that_answers_is_a_success(spawner) -> None:
    before = outcome_count("success")
    now = time.monotonic()
    spawner._timing = SpawnTiming(requested=now, start_timeout=300, running=now)
    spawner._waiting_for_response = True
    spawner._waiting_for_response = False
    assert outcome_count("success") - before == 1


async def test_the_hubs_start_timeout_is_reported_with_the_cause(spawner, monkeypatch) -> None:
    """JupyterHub's start_timeout cancels _start (asyncio.wait_for); the user gets a
    TimeoutError naming the cause instead of a bare cancellation, and it is counted."""

    async def never_runs(self) -> str:
        await asyncio.sleep(3600)
        return "http://never"

    monkeypatch.setattr(KubeSpawner, "_start", never_runs)
    monkeypatch.setattr(ResilientKubeSpawner, "_current_pod", lambda self: UNSCHEDULABLE_POD)
    spawner.start_timeout = 2
    before = outcome_count("unschedulable")
    with pytest.raises(TimeoutError) as raised:
        await hub_waits_for(spawner)
    assert "did not start within 2 seconds because no node in the cluster has room" in str(
        raised.value
    )
    assert "4 Insufficient cpu" in str(raised.value)
    assert outcome_count("unschedulable") - before == 1


async def hub_waits_for(spawner: ResilientKubeSpawner) -> str:
    """What JupyterHub 5.5 and 6.1 do (User.spawn): call start(), then at once wait for it
    for the start_timeout the spawner has then."""
    f = spawner.start()
    return await asyncio.wait_for(f, timeout=spawner.start_timeout)


@pytest.mark.parametrize("why", ["a profile raises start_timeout", "the event loop lags"])
async def test_the_hubs_cancel_is_told_by_the_wait_the_hub_began(
    spawner, monkeypatch, why: str
) -> None:
    """The hub's wait (start_timeout read as start() returns) is what cancels: neither a
    profile's later start_timeout (KubeSpawner's own pod wait) nor a late first step of
    _start makes the cancel pass through unrecorded."""

    async def never_runs(self) -> str:
        if why == "a profile raises start_timeout":
            self.start_timeout = 60  # load_user_options applies kubespawner_override
        await asyncio.sleep(3600)
        return "http://never"

    monkeypatch.setattr(KubeSpawner, "_start", never_runs)
    monkeypatch.setattr(ResilientKubeSpawner, "_current_pod", lambda self: UNSCHEDULABLE_POD)
    spawner.start_timeout = 2
    if why == "the event loop lags":
        # Something else holds the loop before _start's first step, after the hub's timer
        # started.
        asyncio.get_running_loop().call_soon(time.sleep, 1.5)
    before = outcome_count("unschedulable")
    with pytest.raises(TimeoutError) as raised:
        await hub_waits_for(spawner)
    assert "did not start within 2 seconds because no node" in str(raised.value)
    assert outcome_count("unschedulable") - before == 1


class ThrottledPods(ScriptedPods):
    """An API server that throttles every pod create (Retry-After 1 s)."""

    def __init__(self) -> None:
        super().__init__([])
        self.creates = 0

    async def create_namespaced_pod(self, namespace: str, body: V1Pod) -> V1Pod:
        self.creates += 1
        raise api_error(429, "1")


def create_the_pod_after_a_second(monkeypatch: pytest.MonkeyPatch) -> None:
    """KubeSpawner's start stands for one that spends a second (a PVC, a namespace) before
    its pod create; the pod is never seen."""

    async def create_after_a_second(self: ResilientKubeSpawner) -> str:
        await asyncio.sleep(1)
        await self._make_create_pod_request(await pod_for(self), 3)
        return "http://never"

    monkeypatch.setattr(KubeSpawner, "_start", create_after_a_second)
    monkeypatch.setattr(ResilientKubeSpawner, "_current_pod", lambda self: None)


async def test_throttling_cut_off_by_the_hubs_start_timeout_is_k8s_throttled(
    spawner, monkeypatch
) -> None:
    """The start spends 1 s before its pod create, which the API server then throttles until
    the hub's start_timeout (3 s) cancels the start: the outcome is k8s_throttled and the user
    reads that the cluster is throttling and when to try again, not a plain timeout."""
    api = ThrottledPods()
    spawner.api = api

    create_the_pod_after_a_second(monkeypatch)
    spawner.start_timeout = 3
    before = outcome_count("k8s_throttled"), outcome_count("timeout")
    with pytest.raises(TimeoutError) as raised:
        await hub_waits_for(spawner)
    message = str(raised.value)
    assert message.startswith("Your server did not start within 3 seconds: the cluster is busy")
    assert "kept throttling the hub's requests" in message
    assert "try again in 5 seconds" in message  # Retry-After 1 s (capped): at least 5
    assert outcome_count("k8s_throttled") - before[0] == 1
    assert outcome_count("timeout") == before[1]
    assert api.creates >= 2


async def test_throttling_gives_up_before_the_hubs_start_timeout_with_its_own_message(
    make_spawner, monkeypatch
) -> None:
    """A 429 is waited out only for what is left of the hub's start_timeout (less a second),
    counted from the spawn, not from the request: the retry path gives up first and says so."""
    spawner = make_spawner(
        {
            "backoff_base": 0.01,
            "retry_after_cap": 0.05,
            "k8s_api_request_retry_timeout": 1,
            "cpu_limit": 0.5,
            "mem_limit": "512M",
        }
    )
    api = ThrottledPods()
    spawner.api = api

    create_the_pod_after_a_second(monkeypatch)
    spawner.start_timeout = 4
    before = outcome_count("k8s_throttled")
    started = time.monotonic()
    with pytest.raises(web.HTTPError) as raised:
        await hub_waits_for(spawner)
    assert time.monotonic() - started < 3.5  # 4 s, less the second the hub's cancel needs
    assert "kept throttling the hub's requests" in raised.value.log_message
    assert format_exception(raised.value)[0] == raised.value.log_message  # no "HTTP 503: ..."
    assert outcome_count("k8s_throttled") - before == 1


async def test_a_cancellation_that_is_not_the_start_timeout_passes_through(
    spawner, monkeypatch
) -> None:
    async def never_runs(self) -> str:
        await asyncio.sleep(3600)
        return "http://never"

    monkeypatch.setattr(KubeSpawner, "_start", never_runs)
    spawner.start_timeout = 300
    task = asyncio.ensure_future(spawner._start())
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


@pytest.mark.parametrize("user_namespaces", [False, True])
async def test_a_refused_profile_makes_no_api_call(make_spawner, user_namespaces: bool) -> None:
    """The QoS check runs when the profile is loaded, before the namespace, PVC or pod."""
    profiles = [
        {
            "display_name": "Broken",
            "slug": "broken",
            "kubespawner_override": {
                "cpu_limit": 1,
                "mem_limit": "1G",
                "extra_containers": [{"name": "bare", "image": "busybox"}],
            },
        }
    ]
    spawner = make_spawner(
        {
            "profile_list": profiles,
            "storage_pvc_ensure": True,
            "enable_user_namespaces": user_namespaces,
        }
    )
    spawner.user_options = {"profile": "broken"}

    class NoCalls:
        def __getattr__(self, name: str) -> Any:
            raise AssertionError(f"the spawner called the Kubernetes API: {name}")

    spawner.api = NoCalls()
    before = outcome_count("qos_refused", "broken")
    with pytest.raises(web.HTTPError) as raised:
        await spawner._start()
    assert (
        "Cannot start this server: profile 'broken', container 'bare'" in raised.value.log_message
    )
    # The spawn page shows the message itself (JupyterHub's own formatting of the error).
    assert format_exception(raised.value) == (raised.value.log_message, None)
    assert outcome_count("qos_refused", "broken") - before == 1


async def test_capacity_failures_are_forgiven_by_the_failure_limit_api_failures_are_not(
    spawner, monkeypatch
) -> None:
    """JupyterHub adds each failed spawn to its consecutive count after the spawner raised;
    an unschedulable pod is taken off it first, an unreachable API server is not, unless it
    answered other requests while the failed one was tried (it was reachable: the hub or the
    API server was too busy, which a restart does not cure)."""
    settings = {"failure_count": 3}
    requests = RequestWindow()
    monkeypatch.setattr("hub_resilience.hub.spawner.handler_settings", lambda: settings)
    monkeypatch.setattr("hub_resilience.hub.spawner.RECENT_K8S_REQUESTS", requests)
    monkeypatch.setattr(ResilientKubeSpawner, "_current_pod", lambda self: UNSCHEDULABLE_POD)
    spawner._spawn_failed(TimeoutError())
    assert settings["failure_count"] == 2  # JupyterHub's +1 brings it back to 3

    monkeypatch.setattr(ResilientKubeSpawner, "_current_pod", lambda self: None)
    unreachable = K8sRequestFailed(
        K8sOperation.CREATE_POD, 4, 31.0, K8sRetryReason.CONNECTION_ERROR, OSError("refused"), 8
    )
    spawner._spawn_failed(unreachable)
    assert settings["failure_count"] == 2  # counted: JupyterHub's +1 makes it 3

    requests.add(0.5, throttled=False)  # another spawner's request got its answer
    timed_out = K8sRequestFailed(
        K8sOperation.CREATE_POD, 5, 30.0, K8sRetryReason.TIMEOUT, TimeoutError(), 5
    )
    spawner._spawn_failed(timed_out)
    assert settings["failure_count"] == 1  # forgiven: JupyterHub's +1 brings it back to 2
    answered_before = K8sRequestFailed(
        K8sOperation.CREATE_POD, 5, 30.0, K8sRetryReason.TIMEOUT, TimeoutError(), 5,
        started=time.monotonic(),
    )
    spawner._spawn_failed(answered_before)
    assert settings["failure_count"] == 1  # counted: no answer since it began


def phase_count(phase: str, profile: str = "default") -> float:
    labels = {"phase": phase, "profile": profile}
    return REGISTRY.get_sample_value("hub_resilience_spawn_phase_seconds_count", labels) or 0.0


async def test_a_spawn_that_fails_after_its_create_records_no_phases(spawner, monkeypatch) -> None:
    """The hub and api_create phases are measured at the create, but recorded only for a
    spawn that gets its server ready: a failed one leaves the phase histograms alone."""
    api = ScriptedPods([])
    spawner.api = api

    async def create_then_fail(self) -> str:
        await self._make_create_pod_request(await pod_for(self), 3)
        assert [phase for phase, _ in self._phases] == ["hub", "api_create"]
        raise TimeoutError()

    monkeypatch.setattr(KubeSpawner, "_start", create_then_fail)
    monkeypatch.setattr(ResilientKubeSpawner, "_current_pod", lambda self: UNSCHEDULABLE_POD)
    phases = ("hub", "api_create", "scheduling", "server_ready")
    before = [phase_count(p) for p in phases], outcome_count("unschedulable")
    with pytest.raises(TimeoutError):
        await hub_waits_for(spawner)
    assert api.uids == 1
    assert [phase_count(p) for p in phases] == before[0]
    assert outcome_count("unschedulable") - before[1] == 1
    assert spawner._phases == []


def retries(operation: str) -> float:
    return sum(
        REGISTRY.get_sample_value(
            "hub_resilience_k8s_api_retries_total", {"operation": operation, "reason": reason}
        )
        or 0.0
        for reason in ("throttled", "server_error", "timeout", "connection_error")
    )


class ThrottledOnce:
    """Every Kubernetes API method: ``method`` answers 429 (Retry-After) once, then like the
    others (a stored object; a read of something just deleted: 404)."""

    def __init__(self, method: str) -> None:
        self.method = method
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Any:
        async def call(*args: Any, **kwargs: Any) -> V1ObjectMeta:
            self.calls.append(name)
            if name == self.method and self.calls.count(name) == 1:
                raise api_error(429, "0.01")
            if name.startswith("read_") and name != self.method:
                raise api_error(404)
            return V1ObjectMeta(name="stored")

        return call


def manifest(name: str) -> Any:
    return V1Pod(metadata=V1ObjectMeta(name=name))


def resource_requests(kind: str) -> dict[str, tuple[str, Any]]:
    """The create, delete and read rows of OTHER_REQUESTS for a secret or a service."""
    return {
        f"create_{kind}": (
            f"create_namespaced_{kind}",
            lambda s: s._make_create_resource_request(kind, manifest("x")),
        ),
        f"delete_{kind}": (f"delete_namespaced_{kind}", lambda s: s._ensure_not_exists(kind, "x")),
        f"read_{kind}": (f"read_namespaced_{kind}", lambda s: s._ensure_not_exists(kind, "x")),
    }


#: Each request method KubeSpawner's start and stop use besides the pod's: what it calls on
#: the API, the operation label it counts under, and how the spawner makes it.
OTHER_REQUESTS = {
    "create_pvc": (
        "create_namespaced_persistent_volume_claim",
        lambda s: s._make_create_pvc_request(manifest("claim-x"), 3),
    ),
    "delete_pvc": (
        "delete_namespaced_persistent_volume_claim",
        lambda s: s._make_delete_pvc_request("claim-x", 3),
    ),
    "read_pvc": (
        "read_namespaced_persistent_volume_claim",
        lambda s: s._check_pvc_exists("claim-x", s.namespace),
    ),
    "create_namespace": ("create_namespace", lambda s: s._ensure_namespace()),
    **resource_requests("secret"),
    **resource_requests("service"),
}


@pytest.mark.parametrize("operation", list(OTHER_REQUESTS))
async def test_a_429_on_any_other_request_is_retried_once_with_a_warning(
    spawner, caplog, operation: str
) -> None:
    """PVC, namespace, secret and service requests go through the retry path too: a 429 then
    an answer is one retry, counted under its own operation, one WARNING and no ERROR (no
    traceback from KubeSpawner's own handlers)."""
    method, make = OTHER_REQUESTS[operation]
    api = ThrottledOnce(method)
    spawner.api = api
    everything = [op.value for op in K8sOperation]
    before = {op: retries(op) for op in everything}
    with caplog.at_level(logging.DEBUG):
        await make(spawner)
    assert api.calls.count(method) == 2
    moved = {op: retries(op) - before[op] for op in everything if retries(op) != before[op]}
    assert moved == {operation: 1}
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and f"Kubernetes API {operation} for" in warned[0], warned


async def test_an_event_reflector_of_a_namespace_named_pods_is_not_read_as_pods(
    monkeypatch,
) -> None:
    """KubeSpawner keys its reflectors by (kind, namespace): the events of a namespace called
    "team-pods" hold no pods, and /hub/metrics (the user-pods collector) still works."""
    from prometheus_client import generate_latest

    from hub_resilience.hub.watches import ResilientEventReflector, ResilientPodReflector

    events = ResilientEventReflector(namespace="team-pods", fields={"involvedObject.kind": "Pod"})
    events.resources = {
        "team-pods/e1": {"metadata": {"name": "e1"}, "involvedObject": {"uid": "u1"}}
    }
    pods = ResilientPodReflector(namespace="team-pods", labels={"component": "singleuser-server"})
    running = {
        "metadata": {"name": "jupyter-a", "namespace": "team-pods"},
        "status": {"phase": "Running", "qosClass": "Guaranteed"},
    }
    pods.resources = {"team-pods/jupyter-a": running}
    monkeypatch.setattr(
        KubeSpawner, "reflectors", {("events", "team-pods"): events, ("pods", "team-pods"): pods}
    )
    assert list(ResilientKubeSpawner._all_user_pods()) == [running]
    scraped = generate_latest(REGISTRY).decode()
    assert 'hub_resilience_user_pods{qos_class="Guaranteed"} 1.0' in scraped
