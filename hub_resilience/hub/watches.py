"""KubeSpawner's pod and event reflectors, made to survive what an event does to a watch.

Why: KubeSpawner's watch loop backs off without reading Retry-After, logs a traceback per
failure and gives up after about 51 s (the pod cache then freezes, or with user namespaces the
hub exits); a failed first list leaves a reflector that fails every later spawn. These
subclasses keep KubeSpawner's data model (``resources``, ``pods``, ``events``,
``first_load_future``) and replace only the loop: it never gives up, honours Retry-After,
relists when the watch expires, logs one line per failure and says whether it is up.
docs/architecture.md ("Watches") has the details.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Iterable
from functools import partial
from typing import Any

from kubernetes_asyncio import watch
from kubernetes_asyncio.client.rest import ApiException
from kubespawner.spawner import EventReflector, PodReflector

from hub_resilience.backoff import BackoffPolicy
from hub_resilience.hub.k8s_requests import describe_error, retry_after_of, retry_reason
from hub_resilience.hub.metrics import (
    K8S_WATCH_RESTARTS,
    K8sRetryReason,
    WatchedResource,
    WatchStatus,
)

#: How a failed watch waits: full jitter from 0.5 s up to 30 s, forever (no attempt limit and
#: no deadline: the hub needs its view of pods for as long as it runs).
WATCH_BACKOFF = BackoffPolicy(
    base=0.5, cap=30.0, max_attempts=2**62, deadline=float("inf"), retry_after_cap=60.0
)


def watch_failure_reason(error: BaseException) -> K8sRetryReason:
    """Why a list or watch failed, as a retry reason (410 Gone: the watch expired)."""
    if isinstance(error, ApiException) and error.status == 410:
        return K8sRetryReason.EXPIRED
    return retry_reason(error) or K8sRetryReason.OTHER


async def checked_response(request: Callable[[], Any]) -> Any:
    """``await request()`` for a ``_preload_content=False`` call, raising an ApiException that
    keeps the status, reason and headers (Retry-After) when the API server refused it.

    kubernetes_asyncio returns the raw response for such calls whatever its status."""
    response = await request()
    if 200 <= response.status <= 299:
        return response
    body = await response.read()
    response.release()
    error = ApiException(status=response.status, reason=response.reason)
    error.headers = response.headers
    error.body = body
    raise error


class ResilientReflectorMixin:
    """The watch loop and status shared by the pod and event reflectors below."""

    resource: WatchedResource
    # Provided by kubespawner's ResourceReflector:
    api: Any
    log: Any
    kind: str
    list_method_name: str
    label_selector: str
    field_selector: str
    omit_namespace: bool
    namespace: str | None
    request_timeout: int
    timeout_seconds: int
    restart_seconds: int
    resources: dict
    first_load_future: asyncio.Future
    watch_task: asyncio.Task | None
    _stopping: bool

    def _init_status(self) -> None:
        self.backoff = WATCH_BACKOFF
        self.sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
        self.up = False
        self.since = time.time()
        self.last_failure: K8sRetryReason | None = None

    def watch_status(self) -> WatchStatus:
        return WatchStatus(self.resource, self.up, self.since)

    def _set_up(self, up: bool) -> None:
        if up != self.up:
            self.up = up
            self.since = time.time()

    def _replace_all(self, items: Iterable[dict]) -> None:
        """A full list: the new cache, in one assignment (readers never see half of it)."""
        self.resources = {f'{i["metadata"]["namespace"]}/{i["metadata"]["name"]}': i for i in items}

    def _store(self, key: str, item: dict) -> None:
        self.resources[key] = item

    def _remove(self, key: str) -> None:
        self.resources.pop(key, None)

    def _list_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "label_selector": self.label_selector,
            "field_selector": self.field_selector,
            "_preload_content": False,
        }
        if not self.omit_namespace:
            kwargs["namespace"] = self.namespace
        return kwargs

    async def _list_and_update(self, resource_version: str | None = None) -> str:
        """A full list into the cache; returns its resourceVersion for the watch."""
        kwargs = self._list_kwargs()
        kwargs["_request_timeout"] = self.request_timeout
        if resource_version is not None:
            kwargs["resource_version"] = resource_version
            kwargs["resource_version_match"] = "NotOlderThan"
        method = getattr(self.api, self.list_method_name)
        response = await checked_response(partial(method, **kwargs))
        listed = json.loads(await response.read())
        self._replace_all(listed["items"])
        if not self.first_load_future.done():
            self.first_load_future.set_result(None)
        return listed["metadata"]["resourceVersion"]

    async def start(self) -> None:
        """Start the loop; the first list happens in it, retried like any other failure.

        ``first_load_future`` resolves when a list has succeeded. KubeSpawner's version fails
        the reflector for good when its first list fails, and every later spawn with it."""
        if self.watch_task and not self.watch_task.done():
            raise RuntimeError(f"Task watching for {self.kind} is already running")
        self.watch_task = asyncio.create_task(self._watch_and_update())

    async def stop(self) -> None:
        """End the loop. Unlike KubeSpawner's, the loop's cancellation is not raised into
        the caller (a spawn replacing a reflector would otherwise be cancelled with it)."""
        self._stopping = True
        task = self.watch_task
        if task is not None and not task.done():
            task.cancel()
            done, _ = await asyncio.wait([task], timeout=5)
            if not done:
                self.log.warning("Watch of %s did not stop within 5 s", self.kind)
        self.watch_task = None

    async def _watch_and_update(self) -> None:
        where = "all namespaces" if self.omit_namespace else f"namespace {self.namespace}"
        self.log.info(
            "Watching %s (labels %r, fields %r) in %s",
            self.kind,
            self.label_selector,
            self.field_selector,
            where,
        )
        resource_version: str | None = "0"  # the API server's cache is fine for a first list
        failures = 0
        while not self._stopping:
            try:
                resource_version = await self._list_and_update(resource_version)
                self._set_up(True)
                if failures:
                    self.log.info("Watch of %s in %s recovered", self.kind, where)
                failures = 0
                resource_version = await self._follow(resource_version)
            except asyncio.CancelledError:
                raise
            except Exception as error:  # every failure waits and relists; none ends the loop
                reason = watch_failure_reason(error)
                K8S_WATCH_RESTARTS.labels(self.resource, reason).inc()
                self.last_failure = reason
                # Relist from the API server's cache, as KubeSpawner does (cheapest for a
                # struggling API server); the watch then catches up from that version.
                resource_version = "0"
                if reason is K8sRetryReason.EXPIRED:
                    continue  # not a failure of the API server: relist at once
                self._set_up(False)
                delay = self.backoff.delay(min(failures, 16), retry_after_of(error))
                failures += 1
                self.log.warning(
                    "Watch of %s in %s failed (%s); retrying in %.1fs (failure %d)",
                    self.kind,
                    where,
                    describe_error(error),
                    delay,
                    failures,
                )
                await self.sleep(delay)
        self.log.info("Watch of %s in %s stopped", self.kind, where)

    async def _follow(self, resource_version: str) -> str:
        """Apply watch events to the cache until the watch times out, restarts or fails;
        returns the last resourceVersion seen, for the next (cheap, cached) list."""
        kwargs = self._list_kwargs()
        kwargs["resource_version"] = resource_version
        if self.request_timeout:
            kwargs["_request_timeout"] = self.request_timeout
        if self.timeout_seconds:
            kwargs["timeout_seconds"] = self.timeout_seconds
        kwargs.pop("_preload_content")
        method = getattr(self.api, self.list_method_name)

        async def open_watch(**call_kwargs: Any) -> Any:
            return await checked_response(partial(method, **call_kwargs))

        # No docstring, so the Watch finds no return type and leaves each event a dict
        # instead of building a model object from it (KubeSpawner's partial does the same).
        started = time.monotonic()
        w = watch.Watch()
        try:
            async with w.stream(open_watch, **kwargs) as stream:
                async for event in stream:
                    item = event["raw_object"]
                    key = f'{item["metadata"]["namespace"]}/{item["metadata"]["name"]}'
                    if event["type"] == "DELETED":
                        self._remove(key)
                    else:
                        self._store(key, item)
                        resource_version = item["metadata"].get("resourceVersion") or (
                            resource_version
                        )
                    if self._stopping or time.monotonic() - started >= self.restart_seconds:
                        break
        except asyncio.TimeoutError:
            # A read timeout on a quiet watch: reconnect (a relist, as KubeSpawner does).
            pass
        finally:
            w.stop()
        return resource_version


class ResilientPodReflector(ResilientReflectorMixin, PodReflector):
    """KubeSpawner's PodReflector with the watch loop above."""

    resource = WatchedResource.PODS

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._init_status()


class ResilientEventReflector(ResilientReflectorMixin, EventReflector):
    """KubeSpawner's EventReflector with the watch loop above, and events indexed by the uid
    of the pod they are about, so a spawn reads its own events without sorting them all
    (kubespawner #913: hubs ran out of memory sorting ~35k events per spawn)."""

    resource = WatchedResource.EVENTS

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._init_status()
        self._by_pod: dict[str, dict[str, dict]] = {}

    @staticmethod
    def _pod_uid(event: dict) -> str | None:
        return (event.get("involvedObject") or {}).get("uid")

    def _replace_all(self, items: Iterable[dict]) -> None:
        items = list(items)
        index: dict[str, dict[str, dict]] = {}
        for event in items:
            uid = self._pod_uid(event)
            if uid:
                key = f'{event["metadata"]["namespace"]}/{event["metadata"]["name"]}'
                index.setdefault(uid, {})[key] = event
        super()._replace_all(items)
        self._by_pod = index

    def _store(self, key: str, item: dict) -> None:
        old = self.resources.get(key)
        if old is not None and self._pod_uid(old) != self._pod_uid(item):
            self._unindex(key, old)
        super()._store(key, item)
        uid = self._pod_uid(item)
        if uid:
            self._by_pod.setdefault(uid, {})[key] = item

    def _remove(self, key: str) -> None:
        old = self.resources.get(key)
        super()._remove(key)
        if old is not None:
            self._unindex(key, old)

    def _unindex(self, key: str, event: dict) -> None:
        uid = self._pod_uid(event)
        events = self._by_pod.get(uid or "")
        if events is not None:
            events.pop(key, None)
            if not events:
                self._by_pod.pop(uid or "", None)

    def events_for(self, pod_uid: str) -> list[dict]:
        """The events about the pod with this uid, oldest first."""
        events = list(self._by_pod.get(pod_uid, {}).values())
        return sorted(
            events, key=lambda e: e.get("lastTimestamp") or e.get("eventTime") or ""
        )
