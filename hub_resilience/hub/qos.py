"""Guaranteed QoS for user pods: Kubernetes' own QoS rules, and the policy that enforces them.

Why: a Burstable user pod competes for memory on a shared node and its kernels are the first
killed under pressure. Everything here is pure (no I/O), on a pod given as a Kubernetes model
object or a plain dict; the rules, the policy and its modes are in docs/qos.md.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from kubernetes.utils.quantity import parse_quantity

from hub_resilience.labels import LabelEnum


class QoSClass(LabelEnum):
    """The QoS classes Kubernetes gives a pod (``status.qosClass``)."""

    GUARANTEED = "Guaranteed"
    BURSTABLE = "Burstable"
    BEST_EFFORT = "BestEffort"


class QoSMode(LabelEnum):
    """Which resources must have requests equal to limits."""

    GUARANTEED = "guaranteed"  # cpu and memory: QoS class Guaranteed
    MEMORY_ONLY = "memory-only"  # memory only, CPU left burstable


class QoSPolicy(LabelEnum):
    """How a container whose requests differ from its limits is made Guaranteed."""

    RAISE_REQUESTS = "raise-requests"
    LOWER_LIMITS = "lower-limits"
    REFUSE = "refuse"


#: The resources Kubernetes looks at when it decides a pod's QoS class.
QOS_RESOURCES = ("cpu", "memory")


class QoSError(ValueError):
    """A pod cannot be made Guaranteed (or memory-only) under the configured policy.

    The message is meant for the user who asked for the server and for the operator who
    wrote the profile: it names the profile (when known), the container and the resource.
    """


@dataclass(frozen=True)
class ContainerRef:
    """A container of a pod, with the list it belongs to (for messages)."""

    kind: str  # "container" or "init container"
    container: Any

    @property
    def name(self) -> str:
        return str(_get(self.container, "name") or "<unnamed>")

    def describe(self) -> str:
        return f"{self.kind} '{self.name}'"


def parse_resource_quantity(value: Any, *, what: str) -> Decimal:
    """Parse a Kubernetes quantity, raising :class:`QoSError` naming ``what`` if malformed."""
    if isinstance(value, bool):
        raise QoSError(f"{what}: {value!r} is not a Kubernetes quantity")
    try:
        quantity = parse_quantity(value)
    except (ValueError, TypeError, ArithmeticError) as e:  # InvalidOperation is both
        raise QoSError(
            f"{what}: {value!r} is not a Kubernetes quantity (e.g. '500m', '2', '1Gi'): {e}"
        ) from None
    if not quantity.is_finite():
        raise QoSError(f"{what}: {value!r} is not a finite quantity")
    if quantity < 0:
        raise QoSError(f"{what}: {value!r} is negative")
    return quantity


def _get(obj: Any, key: str) -> Any:
    """Read a field from a Kubernetes model object or a dict (camelCase or snake_case)."""
    if obj is None:
        return None
    if isinstance(obj, dict):
        if key in obj:
            return obj[key]
        camel = _camel(key)
        return obj.get(camel)
    return getattr(obj, key, None)


def _camel(snake: str) -> str:
    head, *rest = snake.split("_")
    return head + "".join(part.title() for part in rest)


def iter_containers(pod: Any) -> Iterator[ContainerRef]:
    """Every container of the pod whose resources count for QoS: regular, then init.

    Sidecars (init containers with ``restartPolicy: Always``) are init containers and count.
    """
    spec = _get(pod, "spec")
    for kind, field in (("container", "containers"), ("init container", "init_containers")):
        for container in _get(spec, field) or []:
            yield ContainerRef(kind, container)


def _resources(container: Any) -> tuple[dict, dict]:
    """(requests, limits) of a container, as plain dicts (copies)."""
    resources = _get(container, "resources")
    requests = dict(_get(resources, "requests") or {})
    limits = dict(_get(resources, "limits") or {})
    return requests, limits


def _set_resources(container: Any, requests: dict, limits: dict) -> None:
    resources = _get(container, "resources")
    if resources is None:
        resources = {"requests": requests, "limits": limits}
        if isinstance(container, dict):
            container["resources"] = resources
        else:
            # Some client versions convert an assigned dict into a model (a copy), so the
            # dict is assigned complete. The API client serialises either form.
            container.resources = resources
    elif isinstance(resources, dict):
        resources["requests"] = requests
        resources["limits"] = limits
    else:
        resources.requests = requests
        resources.limits = limits


def _positive(value: Any, what: str) -> Decimal | None:
    """The quantity if set and > 0; Kubernetes treats 0 as unset for QoS."""
    if value is None:
        return None
    quantity = parse_resource_quantity(value, what=what)
    return quantity if quantity > 0 else None


def _pod_level_resources(pod: Any) -> tuple[dict, dict] | None:
    resources = _get(_get(pod, "spec"), "resources")
    if resources is None:
        return None
    requests = dict(_get(resources, "requests") or {})
    limits = dict(_get(resources, "limits") or {})
    if not any(r in requests or r in limits for r in QOS_RESOURCES):
        return None
    return requests, limits


def qos_class(pod: Any) -> QoSClass:
    """The QoS class the API server gives this pod: "Guaranteed", "Burstable" or "BestEffort".

    Follows Kubernetes' ``GetPodQOS`` (pkg/apis/core/v1/helper/qos), applied to the pod as the
    API server stores it, i.e. after defaulting: a container with a limit but no request gets
    a request equal to the limit. With pod-level resources (``spec.resources``) those decide.
    """
    pod_level = _pod_level_resources(pod)
    if pod_level is not None:
        requests, limits = pod_level
        return _classify([(dict(requests), dict(limits), "pod spec.resources")])
    per_container = []
    for ref in iter_containers(pod):
        requests, limits = _resources(ref.container)
        for resource in QOS_RESOURCES:
            if resource in limits and resource not in requests:
                requests[resource] = limits[resource]  # the API server's defaulting
        per_container.append((requests, limits, ref.describe()))
    return _classify(per_container)


def _classify(per_container: list[tuple[dict, dict, str]]) -> QoSClass:
    requests_sum: dict[str, Decimal] = {}
    limits_sum: dict[str, Decimal] = {}
    guaranteed = True
    for requests, limits, where in per_container:
        for resource in QOS_RESOURCES:
            request = _positive(requests.get(resource), f"{where} {resource} request")
            if request is not None:
                requests_sum[resource] = requests_sum.get(resource, Decimal(0)) + request
            limit = _positive(limits.get(resource), f"{where} {resource} limit")
            if limit is not None:
                limits_sum[resource] = limits_sum.get(resource, Decimal(0)) + limit
            else:
                guaranteed = False
    if not requests_sum and not limits_sum:
        return QoSClass.BEST_EFFORT
    if (
        guaranteed
        and all(
            resource in limits_sum and limits_sum[resource] == request
            for resource, request in requests_sum.items()
        )
        and len(requests_sum) == len(limits_sum)
    ):
        return QoSClass.GUARANTEED
    return QoSClass.BURSTABLE


def make_guaranteed(
    pod: Any,
    policy: str = QoSPolicy.RAISE_REQUESTS,
    mode: str = QoSMode.GUARANTEED,
    default_cpu: Any = None,
    default_memory: Any = None,
    profile: str | None = None,
) -> Any:
    """Return a copy of ``pod`` whose containers have requests == limits, or raise QoSError.

    For each container and each enforced resource (cpu and memory; memory only in
    ``memory-only`` mode):

    - request == limit: kept as it is;
    - limit only: the request becomes the limit (what the API server would default);
    - request only: the limit becomes the request, the only Guaranteed choice (under
      ``refuse`` this is refused);
    - request != limit: ``raise-requests`` sets the request to the limit (the container
      keeps what it was allowed to use, and the scheduler reserves it), ``lower-limits``
      sets the limit to the request (the node fits as many pods as before, each gets less
      headroom), ``refuse`` raises;
    - neither: the configured default (``default_cpu`` / ``default_memory``) becomes both
      request and limit; with no default configured it is refused. A pod where every
      container has neither (BestEffort) is treated the same way, container by container.

    Quantities keep the spelling the operator wrote ("1Gi" stays "1Gi").
    """
    if policy not in QoSPolicy.values():
        raise QoSError(
            f"unknown QoS policy {policy!r}; choose one of {', '.join(QoSPolicy.values())}"
        )
    if mode not in QoSMode.values():
        raise QoSError(f"unknown QoS mode {mode!r}; choose one of {', '.join(QoSMode.values())}")
    where = f"profile '{profile}'" if profile else "the default profile"
    if _pod_level_resources(pod) is not None:
        raise QoSError(
            f"{where}: pod-level resources (spec.resources) are set; hub-resilience enforces "
            "QoS per container, so set resources on the containers instead"
        )
    defaults = {"cpu": default_cpu, "memory": default_memory}
    for resource, value in defaults.items():
        if value is not None:
            parse_resource_quantity(value, what=f"default {resource}")
    enforced = QOS_RESOURCES if mode == QoSMode.GUARANTEED else ("memory",)

    pod = copy.deepcopy(pod)
    for ref in iter_containers(pod):
        requests, limits = _resources(ref.container)
        for resource in enforced:
            what = f"{where}, {ref.describe()}: {resource}"
            request = _positive(requests.get(resource), f"{what} request")
            limit = _positive(limits.get(resource), f"{what} limit")
            chosen = _guaranteed_value(
                request,
                limit,
                requests.get(resource),
                limits.get(resource),
                defaults[resource],
                policy,
                what,
            )
            requests[resource] = limits[resource] = chosen
        _set_resources(ref.container, requests, limits)
    return pod


def _guaranteed_value(
    request: Decimal | None,
    limit: Decimal | None,
    request_raw: Any,
    limit_raw: Any,
    default: Any,
    policy: str,
    what: str,
) -> Any:
    """The single quantity a container's request and limit both get for one resource."""
    if request is not None and limit is not None:
        if request == limit:
            return limit_raw
        if request > limit:
            raise QoSError(f"{what} request {request_raw} is above its limit {limit_raw}")
        if policy == QoSPolicy.RAISE_REQUESTS:
            return limit_raw
        if policy == QoSPolicy.LOWER_LIMITS:
            return request_raw
        raise QoSError(
            f"{what} request {request_raw} differs from limit {limit_raw}; a Guaranteed pod "
            "needs them equal (set the guarantee equal to the limit in this profile)"
        )
    if limit is not None:
        return limit_raw
    if request is not None:
        if policy == QoSPolicy.REFUSE:
            raise QoSError(
                f"{what} has a request ({request_raw}) but no limit; a Guaranteed pod needs "
                "a limit equal to the request"
            )
        return request_raw
    if default is None:
        raise QoSError(
            f"{what} has neither a request nor a limit and no default is configured "
            "(ResilientKubeSpawner.qos_default_cpu / qos_default_memory), so the pod "
            "cannot be Guaranteed"
        )
    return default


def check_enforced(pod: Any, mode: str = QoSMode.GUARANTEED, profile: str | None = None) -> None:
    """Raise QoSError unless the pod meets ``mode``, naming the first offending container.

    A last check on the finished pod: in ``guaranteed`` mode the class computed by
    Kubernetes' rules must be Guaranteed; in ``memory-only`` mode every container must have a
    memory limit equal to its request.
    """
    where = f"profile '{profile}'" if profile else "the default profile"
    resources = QOS_RESOURCES if mode == QoSMode.GUARANTEED else ("memory",)
    for ref in iter_containers(pod):
        requests, limits = _resources(ref.container)
        for resource in resources:
            what = f"{where}, {ref.describe()}: {resource}"
            limit = _positive(limits.get(resource), f"{what} limit")
            request = _positive(requests.get(resource, limits.get(resource)), f"{what} request")
            if limit is None or request != limit:
                raise QoSError(
                    f"{what} request {requests.get(resource)} and limit "
                    f"{limits.get(resource)} are not equal, so the pod would not be "
                    f"{'Guaranteed' if mode == 'guaranteed' else 'memory-guaranteed'}"
                )
    if mode == QoSMode.GUARANTEED and qos_class(pod) != QoSClass.GUARANTEED:
        raise QoSError(f"{where}: the pod would be {qos_class(pod)}, not Guaranteed")
