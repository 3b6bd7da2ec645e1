"""Event planning arithmetic: resource choices, event rules, placeholders and hub limits.

Why: before a workshop, operators sized the hub by hand (how many users fit on a node, which
choices to offer, how much placeholder capacity hides node start-up) and mistakes there
caused 15-minute server starts. This module does that arithmetic once, exactly, and says
which event rules a plan breaks. It is pure: no I/O, no clock, no cluster; the ``plan``
subcommand (:mod:`hub_resilience.tools.plan_cli`) reads nodes and writes files.

Quantities are parsed with Kubernetes' own rules (``parse_quantity``) and counted the way the
scheduler counts them: CPU in whole millicores, each pod's CPU request rounded *up* to a
millicore (``Quantity.MilliValue``), memory in bytes.
"""
from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from fractions import Fraction
from typing import Any

from kubernetes.utils.quantity import parse_quantity

# The spawner's modes: ``guaranteed``: cpu and memory guarantee == limit. ``memory-only``:
# memory guarantee == limit, CPU guaranteed in proportion to memory and limited to the node.
from hub_resilience.hub.qos import QoSMode

MIB = 1024**2
GIB = 1024**3

#: Event rules (see docs/planner.md). Fewer users per node than this and most arrivals wait
#: for a node to start; the issue asks for "at least 3-4".
DEFAULT_MIN_USERS_PER_NODE = 3
#: More than about this many users on one node: one node failure or drain hits too many
#: people, and kubelets default to at most 110 pods per node.
DEFAULT_MAX_USERS_PER_NODE = 100
#: At most this share of the users arriving during one node start-up may have to wait for it.
DEFAULT_MAX_WAITING_FRACTION = Fraction(3, 10)
#: Kubelet's default ``maxPods``, used when the node's own pod capacity is not known.
DEFAULT_MAX_PODS = 110
#: The planner's floor for one user's server; a plan whose smallest choice would be below it
#: has too many choices for the node (lower it with ``--min-memory``).
DEFAULT_MIN_MEMORY = 256 * MIB
#: Share of a node a placeholder leaves free, so system pods that are not daemonsets (DNS,
#: metrics-server, new daemonsets) still fit next to it.
DEFAULT_PLACEHOLDER_HEADROOM = Fraction(1, 20)
#: Minutes a user server takes to start on a node that is already up, image pre-pulled.
DEFAULT_POD_STARTUP_MINUTES = Fraction(1)
#: z2jh chart defaults the plan never goes below.
CHART_START_TIMEOUT_SECONDS = 300
CHART_CONSECUTIVE_FAILURE_LIMIT = 5


class PlanError(ValueError):
    """Bad input to the planner. ``setting`` names the input (as the CLI option, minus
    the leading dashes), so the message can point at what to change."""

    def __init__(self, setting: str, message: str) -> None:
        super().__init__(f"{setting}: {message}")
        self.setting = setting
        self.message = message


# --------------------------------------------------------------------------------------
# Quantities


def parse_cpu(value: Any, *, setting: str = "cpu") -> Decimal:
    """A CPU quantity ("3.485", "3485m") as cores; must be > 0."""
    quantity = _parse(value, setting, "3.485 or 3485m")
    if quantity <= 0:
        raise PlanError(setting, f"{value!r} must be more than zero CPUs")
    return quantity


def parse_memory(value: Any, *, setting: str = "memory") -> int:
    """A memory quantity ("29298290688", "27.3Gi", "28611612Ki") as whole bytes; must be > 0.

    A fractional byte count (possible with "27.3Gi") is rounded down: a pod cannot use it.
    """
    quantity = _parse(value, setting, "29298290688, 27.3Gi or 28611612Ki")
    as_bytes = int(quantity.to_integral_value(rounding=ROUND_FLOOR))
    if as_bytes <= 0:
        raise PlanError(setting, f"{value!r} must be at least one byte")
    return as_bytes


def _parse(value: Any, setting: str, examples: str) -> Decimal:
    # Floats are refused: parse_quantity(3.485) gives 3.48499999..., not the 3.485 typed.
    if isinstance(value, bool) or isinstance(value, float):
        raise PlanError(setting, f"{value!r}: give quantities as strings, e.g. {examples}")
    try:
        quantity = parse_quantity(value)
        if not quantity.is_finite():  # parse_quantity lets "NaN" and "Infinity" through
            raise ValueError(value)
        return quantity
    except (ValueError, TypeError, ArithmeticError):
        raise PlanError(
            setting,
            f"{value!r} is not a Kubernetes quantity (units are Kubernetes' own: "
            f"m, k, M, G, T, Ki, Mi, Gi, Ti...; e.g. {examples})",
        ) from None


def ceil_millicores(cpu: Decimal) -> int:
    """Millicores the scheduler counts for a CPU request (it rounds up)."""
    return int((cpu * 1000).to_integral_value(rounding=ROUND_CEILING))


def floor_millicores(cpu: Decimal) -> int:
    """Whole millicores within ``cpu``."""
    return int((cpu * 1000).to_integral_value(rounding=ROUND_FLOOR))


def format_memory(num_bytes: int) -> str:
    """Memory for people: GiB with one decimal, shown as "GB" (MiB as "MB" below 1 GiB)."""
    if num_bytes < GIB:
        return f"{num_bytes / MIB:.0f} MB"
    return f"{num_bytes / GIB:.1f} GB"


def format_cpu(cpu: Decimal) -> str:
    """CPUs as written, without trailing zeros: 3.485, 0.435625, 4."""
    return format(cpu.normalize(), "f")


def _cpus(cpu: Decimal) -> str:
    return f"{format_cpu(cpu)} CPU" + ("" if cpu == 1 else "s")


# --------------------------------------------------------------------------------------
# The node


@dataclass(frozen=True)
class NodeCapacity:
    """What one node offers user pods: allocatable minus what daemonset pods request.

    ``max_pods`` is how many more pods the node takes (its pod capacity minus daemonset
    pods), ``None`` when unknown (then kubelet's default of 110 applies).
    """

    cpu: Decimal
    memory: int
    max_pods: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.cpu, Decimal) or self.cpu <= 0:
            raise PlanError("cpu", f"the node must offer more than zero CPUs (got {self.cpu})")
        if floor_millicores(self.cpu) < 1:
            raise PlanError("cpu", f"{self.cpu} is less than one millicore")
        if isinstance(self.memory, bool) or not isinstance(self.memory, int) or self.memory <= 0:
            raise PlanError("memory", f"the node must offer memory (got {self.memory!r})")
        if self.max_pods is not None and self.max_pods <= 0:
            raise PlanError("max-pods", f"must be at least 1 (got {self.max_pods})")

    @property
    def millicores(self) -> int:
        return floor_millicores(self.cpu)

    @property
    def pod_limit(self) -> int:
        return DEFAULT_MAX_PODS if self.max_pods is None else self.max_pods

    def describe(self) -> str:
        pods = f", {self.max_pods} pods" if self.max_pods is not None else ""
        return (
            f"{_cpus(self.cpu)}, {format_memory(self.memory)} ({self.memory} bytes){pods} "
            "for user pods"
        )


def is_daemonset_pod(pod: dict) -> bool:
    """True for a pod a DaemonSet owns: such a pod runs on every node, new ones included."""
    owners = (pod.get("metadata") or {}).get("ownerReferences") or []
    return any(owner.get("kind") == "DaemonSet" for owner in owners)


def pod_requests(pod: dict) -> tuple[Decimal, Decimal]:
    """(cpu cores, memory bytes) a pod holds on its node, as the scheduler computes it.

    Kubernetes' effective request: the larger of (app containers + sidecars) and, for each
    ordinary init container, itself plus the sidecars started before it; plus the pod's
    ``overhead``. Sidecars are init containers with ``restartPolicy: Always``.
    """
    spec = pod.get("spec") or {}
    name = (pod.get("metadata") or {}).get("name", "<unnamed pod>")

    def quantity(value: Any, what: str) -> Decimal:
        try:
            return parse_quantity(str(value))
        except (ValueError, TypeError, ArithmeticError):
            raise PlanError(
                "pods-json", f"pod {name}: {what} {value!r} is not a Kubernetes quantity"
            ) from None

    def requests(container: dict) -> tuple[Decimal, Decimal]:
        req = (container.get("resources") or {}).get("requests") or {}
        where = f"container {container.get('name', '?')}"
        cpu = quantity(req.get("cpu", "0"), f"{where} cpu request")
        memory = quantity(req.get("memory", "0"), f"{where} memory request")
        return cpu, memory

    cpu = memory = Decimal(0)
    for container in spec.get("containers") or []:
        c, m = requests(container)
        cpu, memory = cpu + c, memory + m
    sidecar_cpu = sidecar_memory = Decimal(0)
    init_cpu = init_memory = Decimal(0)
    for container in spec.get("initContainers") or []:
        c, m = requests(container)
        if container.get("restartPolicy") == "Always":
            sidecar_cpu, sidecar_memory = sidecar_cpu + c, sidecar_memory + m
        else:
            init_cpu = max(init_cpu, sidecar_cpu + c)
            init_memory = max(init_memory, sidecar_memory + m)
    cpu = max(cpu + sidecar_cpu, init_cpu)
    memory = max(memory + sidecar_memory, init_memory)
    overhead = spec.get("overhead") or {}
    cpu += quantity(overhead.get("cpu", "0"), "overhead cpu")
    memory += quantity(overhead.get("memory", "0"), "overhead memory")
    return cpu, memory


def node_capacity_from_objects(node: dict, pods: Iterable[dict] = ()) -> NodeCapacity:
    """The capacity a node of this kind offers user pods.

    ``node`` is a Node as ``kubectl get node NAME -o json`` prints it; ``pods`` the pods of
    that node (any list: pods of other nodes, finished pods and pods not owned by a
    DaemonSet are ignored). Only daemonset pods are subtracted, because only they will also
    run on every new node; the rest of what runs on the sampled node is not a property of
    the node type.
    """
    if not isinstance(node, dict) or node.get("kind", "Node") != "Node":
        kind = node.get("kind") if isinstance(node, dict) else type(node).__name__
        raise PlanError("node-json", f"expected a Node object, got {kind!r}")
    name = (node.get("metadata") or {}).get("name")
    allocatable = (node.get("status") or {}).get("allocatable") or {}
    for key in ("cpu", "memory"):
        if key not in allocatable:
            raise PlanError("node-json", f"node {name}: status.allocatable has no {key}")
    cpu = parse_cpu(str(allocatable["cpu"]), setting="node-json (status.allocatable.cpu)")
    memory = Decimal(
        parse_memory(str(allocatable["memory"]), setting="node-json (status.allocatable.memory)")
    )
    max_pods = None
    if "pods" in allocatable:
        pods_setting = "node-json (status.allocatable.pods)"
        max_pods = int(_parse(str(allocatable["pods"]), pods_setting, "110"))

    for pod in pods:
        if not is_daemonset_pod(pod):
            continue
        node_name = (pod.get("spec") or {}).get("nodeName")
        if node_name and name and node_name != name:
            continue
        if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
            continue
        pod_cpu, pod_memory = pod_requests(pod)
        cpu -= pod_cpu
        memory -= pod_memory
        if max_pods is not None:
            max_pods -= 1

    if cpu <= 0 or memory <= 0 or (max_pods is not None and max_pods <= 0):
        raise PlanError(
            "pods-json",
            f"daemonset pods on node {name} request more than it has allocatable "
            f"(left: {cpu} CPUs, {memory} bytes, {max_pods} pods)",
        )
    return NodeCapacity(
        cpu=cpu, memory=int(memory.to_integral_value(rounding=ROUND_FLOOR)), max_pods=max_pods
    )


# --------------------------------------------------------------------------------------
# Choices


@dataclass(frozen=True)
class Choice:
    """One resource-allocation choice: a fraction of the node, as kubespawner overrides."""

    key: str
    display_name: str
    fraction: Fraction
    mem_guarantee: int
    mem_limit: int
    cpu_guarantee: Decimal
    cpu_limit: Decimal
    default: bool = False

    def kubespawner_override(self) -> dict:
        """KubeSpawner traits: bytes as int, CPUs as float (what the traits hold)."""
        return {
            "mem_guarantee": self.mem_guarantee,
            "mem_limit": self.mem_limit,
            "cpu_guarantee": float(self.cpu_guarantee),
            "cpu_limit": float(self.cpu_limit),
        }

    def as_profile_option_choice(self) -> dict:
        """The entry under ``profile_options.<option>.choices.<key>`` in a profile_list."""
        entry: dict[str, Any] = {"display_name": self.display_name}
        if self.default:
            entry["default"] = True
        entry["kubespawner_override"] = self.kubespawner_override()
        return entry


def generate_choices(
    node: NodeCapacity,
    count: int,
    mode: str = QoSMode.GUARANTEED,
    *,
    oversubscription: Fraction | int = 1,
    min_memory: int = DEFAULT_MIN_MEMORY,
    default_index: int = 0,
) -> list[Choice]:
    """``count`` choices of 1/2^(count-1), ..., 1/2, 1/1 of the node, smallest first.

    Each choice is half the next: the largest is a whole node (a user who picks it waits for
    a node of their own), the smaller ones share nodes and mostly start at once.

    - ``guaranteed``: cpu and memory guarantee == limit. CPU is rounded *down* to whole
      millicores so that 1/fraction pods really fit (the scheduler rounds requests up).
    - ``memory-only``: memory guarantee == limit (times ``oversubscription``, which events
      keep at 1); CPU guarantee is the same fraction of the node's CPU, exactly, and the
      CPU limit is the node's allocatable CPU, so a user can use idle CPU on the node.
    """
    if mode not in QoSMode.values():
        raise PlanError(
            "mode", f"unknown mode {mode!r}; choose one of {', '.join(QoSMode.values())}"
        )
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise PlanError("choices", f"must be a whole number of at least 1 (got {count!r})")
    oversubscription = Fraction(oversubscription)
    if oversubscription < 1:
        raise PlanError("oversubscription", f"must be 1 or more (got {oversubscription})")
    if mode == QoSMode.GUARANTEED and oversubscription != 1:
        raise PlanError(
            "oversubscription",
            "guaranteed mode means guarantee == limit, so the factor is 1; "
            "oversubscription applies to memory-only mode",
        )
    if not 0 <= default_index < count:
        raise PlanError(
            "default-choice", f"must be between 1 and {count} (the number of choices)"
        )
    if min_memory < 1:
        raise PlanError("min-memory", "must be at least one byte")

    smallest = Fraction(1, 2 ** (count - 1))
    _check_smallest_fits(node, count, mode, smallest, min_memory)

    choices = []
    used_keys: set[str] = set()
    for index in range(count):
        fraction = Fraction(1, 2 ** (count - 1 - index))
        mem_guarantee = node.memory * fraction.numerator // fraction.denominator
        if mode == QoSMode.GUARANTEED:
            cpu = Decimal(node.millicores * fraction.numerator // fraction.denominator) / 1000
            cpu_guarantee = cpu_limit = cpu
            mem_limit = mem_guarantee
            display = f"{format_memory(mem_guarantee)} RAM, {_cpus(cpu)}"
        else:
            cpu_guarantee = node.cpu * fraction.numerator / fraction.denominator
            cpu_limit = node.cpu
            mem_limit = min(
                mem_guarantee * oversubscription.numerator // oversubscription.denominator,
                node.memory,
            )
            memory = f"{format_memory(mem_guarantee)} RAM"
            if mem_limit != mem_guarantee:
                memory += f" (upto {format_memory(mem_limit)})"
            display = f"{memory}, upto {_cpus(cpu_limit)}"
        key = _choice_key(mem_guarantee, used_keys)
        choices.append(
            Choice(
                key=key,
                display_name=display,
                fraction=fraction,
                mem_guarantee=mem_guarantee,
                mem_limit=mem_limit,
                cpu_guarantee=cpu_guarantee,
                cpu_limit=cpu_limit,
                default=index == default_index,
            )
        )
    return choices


def _check_smallest_fits(
    node: NodeCapacity, count: int, mode: str, smallest: Fraction, min_memory: int
) -> None:
    """Refuse a number of choices whose smallest cannot be a useful pod on this node."""
    per_node = smallest.denominator
    memory = node.memory * smallest.numerator // smallest.denominator
    if memory < min_memory:
        raise PlanError(
            "choices",
            f"{count} choices make the smallest 1/{per_node} of the node, "
            f"{format_memory(memory)} ({memory} bytes), below the minimum of "
            f"{format_memory(min_memory)} (--min-memory); offer fewer choices",
        )
    smallest_millicores = node.millicores * smallest.numerator // smallest.denominator
    if mode == QoSMode.GUARANTEED and smallest_millicores < 1:
        raise PlanError(
            "choices",
            f"{count} choices make the smallest 1/{per_node} of {node.millicores}m, "
            "less than one millicore; offer fewer choices",
        )
    if per_node > node.pod_limit:
        raise PlanError(
            "choices",
            f"{count} choices make the smallest 1/{per_node} of the node, but a node takes at "
            f"most {node.pod_limit} user pods (its pod capacity); offer fewer choices",
        )


def _choice_key(mem_guarantee: int, used: set[str]) -> str:
    base = "mem_" + re.sub(r"[^0-9a-z]+", "_", format_memory(mem_guarantee).lower())
    key, n = base, 2
    while key in used:
        key, n = f"{base}_{n}", n + 1
    used.add(key)
    return key


def users_per_node(node: NodeCapacity, choice: Choice) -> int:
    """How many pods of this choice the scheduler fits on one node (by their requests)."""
    by_cpu = node.millicores // max(ceil_millicores(choice.cpu_guarantee), 1)
    by_memory = node.memory // choice.mem_guarantee
    return min(by_cpu, by_memory, node.pod_limit)


def packing_warnings(node: NodeCapacity, choices: list[Choice]) -> list[str]:
    """Choices of which fewer pods fit on a node than their fraction promises, and why.

    This happens when a CPU guarantee is finer than Kubernetes' resolution of one
    millicore: the scheduler counts each request rounded up, so n pods of 1/n of the node
    add up to slightly more than the node has.
    """
    warnings = []
    largest = max((c.fraction.denominator for c in choices), default=1)
    for choice in choices:
        promised = choice.fraction.denominator // choice.fraction.numerator
        per_pod = max(ceil_millicores(choice.cpu_guarantee), 1)
        by_cpu = node.millicores // per_pod
        if by_cpu >= promised:
            continue
        warning = (
            f"only {by_cpu} of the {promised} pods of '{choice.display_name}' fit on a node: "
            f"its CPU guarantee {format_cpu(choice.cpu_guarantee)} is finer than one "
            f"millicore and the scheduler counts {per_pod}m per pod, more than "
            f"{node.millicores}m / {promised}"
        )
        even = node.millicores // largest * largest
        if even > 0:
            warning += (
                f". A --cpu that is a multiple of {largest}m "
                f"(e.g. {format_cpu(Decimal(even) / 1000)}) packs exactly"
            )
        warnings.append(warning)
    return warnings


# --------------------------------------------------------------------------------------
# The event, placeholders and hub limits


@dataclass(frozen=True)
class Event:
    """How users arrive: ``arrivals`` users every ``arrival_minutes`` minutes."""

    arrivals: int
    arrival_minutes: Fraction
    node_startup_minutes: Fraction
    pod_startup_minutes: Fraction = DEFAULT_POD_STARTUP_MINUTES
    users: int | None = None
    max_nodes: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.arrivals, bool) or not isinstance(self.arrivals, int):
            raise PlanError("arrivals", f"must be a whole number (got {self.arrivals!r})")
        if self.arrivals < 1:
            raise PlanError("arrivals", f"must be at least 1 user (got {self.arrivals})")
        if Fraction(self.arrival_minutes) <= 0:
            raise PlanError("arrival-minutes", f"must be more than 0 (got {self.arrival_minutes})")
        if Fraction(self.node_startup_minutes) < 0:
            raise PlanError(
                "node-startup-minutes", f"must be 0 or more (got {self.node_startup_minutes})"
            )
        if Fraction(self.pod_startup_minutes) <= 0:
            raise PlanError(
                "pod-startup-minutes", f"must be more than 0 (got {self.pod_startup_minutes})"
            )
        if self.users is not None and self.users < 1:
            raise PlanError("users", f"must be at least 1 (got {self.users})")
        if self.max_nodes is not None and self.max_nodes < 1:
            raise PlanError("max-nodes", f"must be at least 1 (got {self.max_nodes})")

    @property
    def users_per_minute(self) -> Fraction:
        return Fraction(self.arrivals) / Fraction(self.arrival_minutes)


def seats_to_hold(
    arrivals: int, arrival_minutes: Fraction | int, node_startup_minutes: Fraction | int
) -> int:
    """Seats that must be free ahead of arrivals: users per minute x node start-up minutes.

    Users who arrive while a node starts can only start at once if their seats already
    exist. 60 users every 3 minutes with a 10-minute node start-up: 20/min x 10 = 200.
    """
    rate = Fraction(arrivals) / Fraction(arrival_minutes)
    return math.ceil(rate * Fraction(node_startup_minutes))


@dataclass(frozen=True)
class PlaceholderPlan:
    """Placeholder pods holding ``seats_held`` >= ``seats_needed`` seats, in whole blocks."""

    seats_needed: int
    seats_per_placeholder: int
    replicas: int
    cpu_millicores: int
    memory: int

    @property
    def seats_held(self) -> int:
        return self.replicas * self.seats_per_placeholder

    def resources(self) -> dict:
        """Container resources of one placeholder (requests == limits)."""
        amounts = {"cpu": f"{self.cpu_millicores}m", "memory": str(self.memory)}
        return {"requests": dict(amounts), "limits": dict(amounts)}


def plan_placeholders(
    node: NodeCapacity,
    seat: Choice,
    seats_needed: int,
    *,
    headroom: Fraction = DEFAULT_PLACEHOLDER_HEADROOM,
    max_replicas: int | None = None,
) -> PlaceholderPlan:
    """Placeholders that hold ``seats_needed`` seats of ``seat``, one node-sized block each.

    One large placeholder per node rather than many small ones: a real user preempts one
    placeholder and the whole freed block is usable at once, and the pending placeholder
    asks the autoscaler for one whole node; many small placeholders queue one by one in
    front of each other (head-of-line blocking) and fragment nodes. Each placeholder
    leaves ``headroom`` of the node free for system pods that are not daemonsets.
    """
    headroom = Fraction(headroom)
    if not 0 <= headroom < 1:
        raise PlanError("headroom", f"must be at least 0 and below 1 (got {headroom})")
    if seats_needed < 0:
        raise PlanError("arrivals", f"seats to hold cannot be negative (got {seats_needed})")
    if max_replicas is not None and max_replicas < 0:
        raise PlanError("max-placeholders", f"must be 0 or more (got {max_replicas})")
    usable_cpu = math.floor(node.millicores * (1 - headroom))
    usable_memory = math.floor(node.memory * (1 - headroom))
    seat_cpu = max(ceil_millicores(seat.cpu_guarantee), 1)
    seat_memory = seat.mem_guarantee
    block = min(usable_cpu // seat_cpu, usable_memory // seat_memory, users_per_node(node, seat))
    # A seat bigger than the node minus headroom: a placeholder of node minus headroom still
    # keeps a whole node started for it, because the user cannot fit next to it.
    block = max(block, 1)
    replicas = math.ceil(seats_needed / block) if seats_needed else 0
    if max_replicas is not None:
        replicas = min(replicas, max_replicas)
    return PlaceholderPlan(
        seats_needed=seats_needed,
        seats_per_placeholder=block,
        replicas=replicas,
        cpu_millicores=max(min(block * seat_cpu, usable_cpu), 1),
        memory=max(min(block * seat_memory, usable_memory), 1),
    )


def waiting_fraction(placeholders: PlaceholderPlan) -> Fraction:
    """Share of the users arriving during one node start-up who find no seat ready."""
    if placeholders.seats_needed == 0:
        return Fraction(0)
    uncovered = max(placeholders.seats_needed - placeholders.seats_held, 0)
    return Fraction(uncovered, placeholders.seats_needed)


def concurrent_spawn_limit(event: Event, placeholders: PlaceholderPlan) -> int:
    """``hub.concurrentSpawnLimit`` that lets every arrival start without a 429.

    Spawns pending at once = one burst of arrivals times the bursts that overlap while a
    server starts (Little's law for bursts). Users with a seat ready start in
    ``pod_startup_minutes``; any uncovered user waits for a node as well.
    """
    spawn_minutes = Fraction(event.pod_startup_minutes)
    if waiting_fraction(placeholders) > 0:
        spawn_minutes += Fraction(event.node_startup_minutes)
    overlapping = math.ceil(spawn_minutes / Fraction(event.arrival_minutes))
    return max(event.arrivals * max(overlapping, 1), 1)


def start_timeout_seconds(event: Event) -> int:
    """``singleuser.startTimeout``: twice a start on a new node, at least the chart's 300 s.

    A user without a ready seat waits for a node and a cold image pull; a timeout shorter
    than that turns slow starts into failed ones.
    """
    worst = Fraction(event.node_startup_minutes) + Fraction(event.pod_startup_minutes)
    return max(CHART_START_TIMEOUT_SECONDS, math.ceil(2 * worst * 60))


# --------------------------------------------------------------------------------------
# Rules


@dataclass(frozen=True)
class RuleResult:
    """One event rule applied to one subject (a choice, or the event as a whole)."""

    rule: str
    subject: str
    passed: bool
    reason: str


def check_choice_rules(
    node: NodeCapacity,
    choices: list[Choice],
    *,
    min_users: int = DEFAULT_MIN_USERS_PER_NODE,
    max_users: int = DEFAULT_MAX_USERS_PER_NODE,
) -> list[RuleResult]:
    """Users per node within [min_users, max_users], and oversubscription factor 1."""
    if min_users < 1:
        raise PlanError("min-users-per-node", f"must be at least 1 (got {min_users})")
    if max_users < min_users:
        raise PlanError(
            "max-users-per-node", f"must be at least --min-users-per-node ({min_users})"
        )
    results = []
    for choice in choices:
        subject = f"{choice.key} ({choice.display_name})"
        fits = users_per_node(node, choice)
        if fits < min_users:
            reason = (
                f"{_users(fits)} per node, fewer than {min_users}: most users of this choice "
                "wait for a node of their own to start"
            )
        else:
            reason = f"{_users(fits)} per node (at least {min_users})"
        results.append(RuleResult("min-users-per-node", subject, fits >= min_users, reason))
        if fits > max_users:
            reason = (
                f"{fits} users per node, more than {max_users}: one node failure or drain "
                "stops that many servers at once"
            )
        else:
            reason = f"{_users(fits)} per node (at most {max_users})"
        results.append(RuleResult("max-users-per-node", subject, fits <= max_users, reason))
        factor = Fraction(choice.mem_limit, choice.mem_guarantee)
        passed = factor == 1
        if passed:
            reason = "memory limit == guarantee (factor 1)"
        else:
            reason = (
                f"memory limit is {float(factor):.3g}x the guarantee; events need factor 1, "
                "because everyone runs the same notebook at the same time and oversubscribed "
                "memory gets servers OOM-killed"
            )
        results.append(RuleResult("oversubscription", subject, passed, reason))
    return results


def check_event_rules(
    node: NodeCapacity,
    seat: Choice,
    event: Event,
    placeholders: PlaceholderPlan,
    *,
    max_waiting: Fraction = DEFAULT_MAX_WAITING_FRACTION,
) -> list[RuleResult]:
    """Users waiting for a node within ``max_waiting``; the node quota holds the event."""
    max_waiting = Fraction(max_waiting)
    if not 0 <= max_waiting <= 1:
        raise PlanError("max-waiting", f"must be between 0 and 1 (got {max_waiting})")
    waiting = waiting_fraction(placeholders)
    uncovered = max(placeholders.seats_needed - placeholders.seats_held, 0)
    reason = (
        f"{uncovered} of the {placeholders.seats_needed} users arriving during a "
        f"{_minutes(event.node_startup_minutes)}-minute node start-up wait for a node "
        f"({float(waiting):.0%}; at most {float(max_waiting):.0%})"
    )
    results = [RuleResult("users-waiting", "event", waiting <= max_waiting, reason)]
    if event.users is not None and event.max_nodes is not None:
        # Placeholders are not counted: users preempt them, so a placeholder the quota
        # leaves pending never keeps a user out.
        per_node = users_per_node(node, seat)
        nodes = math.ceil(event.users / per_node)
        passed = nodes <= event.max_nodes
        reason = (
            f"{event.users} users at {per_node} per node need {nodes} nodes; "
            f"the quota is {event.max_nodes}"
        )
        results.append(RuleResult("node-quota", "event", passed, reason))
    return results


def _users(count: int) -> str:
    return f"{count} user" + ("" if count == 1 else "s")


def _minutes(value: Fraction | int) -> str:
    value = Fraction(value)
    return str(value.numerator) if value.denominator == 1 else f"{float(value):g}"


# --------------------------------------------------------------------------------------
# The whole plan and the z2jh values overlay


@dataclass
class Plan:
    """Everything ``hub-resilience plan`` prints and writes."""

    node: NodeCapacity
    mode: str
    choices: list[Choice]
    checks: list[RuleResult]
    warnings: list[str]
    suggestions: list[str]
    event: Event | None = None
    placeholders: PlaceholderPlan | None = None
    hub: dict = field(default_factory=dict)
    start_timeout: int | None = None

    @property
    def seat(self) -> Choice:
        return next(c for c in self.choices if c.default)

    def choices_mapping(self) -> dict:
        """``profile_options.<option>.choices``: key -> display_name, kubespawner_override."""
        return {c.key: c.as_profile_option_choice() for c in self.choices}

    @property
    def failed(self) -> list[RuleResult]:
        return [r for r in self.checks if not r.passed]


def make_plan(
    node: NodeCapacity,
    count: int,
    mode: str = QoSMode.GUARANTEED,
    *,
    event: Event | None = None,
    oversubscription: Fraction | int = 1,
    min_memory: int = DEFAULT_MIN_MEMORY,
    default_index: int = 0,
    headroom: Fraction = DEFAULT_PLACEHOLDER_HEADROOM,
    max_placeholders: int | None = None,
    min_users: int = DEFAULT_MIN_USERS_PER_NODE,
    max_users: int = DEFAULT_MAX_USERS_PER_NODE,
    max_waiting: Fraction = DEFAULT_MAX_WAITING_FRACTION,
) -> Plan:
    """Choices, rule checks, placeholders and hub limits for one node type and one event.

    The default choice (``default_index``, smallest first) is the "seat" placeholders
    reserve: most users keep the default.
    """
    choices = generate_choices(
        node, count, mode, oversubscription=oversubscription, min_memory=min_memory,
        default_index=default_index,
    )
    seat = choices[default_index]
    checks = check_choice_rules(node, choices, min_users=min_users, max_users=max_users)
    warnings = packing_warnings(node, choices)
    suggestions = [
        "prePuller: keep the hook puller (the image is on every node before the upgrade "
        "finishes) and the continuous puller (nodes started for placeholders pull the image "
        "before users arrive) enabled",
    ]
    plan = Plan(node, mode, choices, checks, warnings, suggestions, event=event)
    plan.hub["consecutiveFailureLimit"] = CHART_CONSECUTIVE_FAILURE_LIMIT
    if event is None:
        suggestions.append(
            "give --arrivals, --arrival-minutes and --node-startup-minutes to size "
            "placeholders and hub.concurrentSpawnLimit"
        )
        return plan

    needed = seats_to_hold(event.arrivals, event.arrival_minutes, event.node_startup_minutes)
    placeholders = plan_placeholders(
        node, seat, needed, headroom=headroom, max_replicas=max_placeholders
    )
    plan.placeholders = placeholders
    checks.extend(
        check_event_rules(node, seat, event, placeholders, max_waiting=max_waiting)
    )
    limit = concurrent_spawn_limit(event, placeholders)
    plan.hub["concurrentSpawnLimit"] = limit
    suggestions.append(
        f"hub.concurrentSpawnLimit: {limit} ({event.arrivals} users arrive together; fewer "
        "would answer some of them 429 and make them retry)"
    )
    if event.max_nodes is not None:
        per_node = users_per_node(node, seat)
        plan.hub["activeServerLimit"] = event.max_nodes * per_node
        suggestions.append(
            f"hub.activeServerLimit: {event.max_nodes * per_node} ({event.max_nodes} nodes x "
            f"{per_node} users): beyond the node quota a user gets a clear refusal instead "
            "of a pod that stays pending"
        )
    plan.start_timeout = start_timeout_seconds(event)
    suggestions.append(
        f"singleuser.startTimeout: {plan.start_timeout} s (twice a start on a new node)"
    )
    return plan


def build_values_overlay(
    plan: Plan, *, profile_name: str = "Event", image: str | None = None
) -> dict:
    """A z2jh values overlay: the choices as one profile, placeholders, pre-puller, limits.

    Deep-merge it into the chart's values (``helm upgrade -f overlay.yaml``).
    """
    slug = re.sub(r"[^a-z0-9]+", "-", profile_name.lower()).strip("-") or "event"
    profile: dict[str, Any] = {
        "display_name": profile_name,
        "slug": slug,
        "description": f"Resource choices for a node with {plan.node.describe()}",
        "default": True,
    }
    if image:
        profile["kubespawner_override"] = {"image": image}
    profile["profile_options"] = {
        "resources": {"display_name": "Resource allocation", "choices": plan.choices_mapping()}
    }
    singleuser: dict[str, Any] = {"profileList": [profile]}
    if plan.start_timeout is not None:
        singleuser["startTimeout"] = plan.start_timeout

    scheduling: dict[str, Any]
    if plan.placeholders is not None and plan.placeholders.replicas > 0:
        # Placeholders only give way to users when pod priority is on (users above them).
        scheduling = {
            "podPriority": {"enabled": True},
            "userPlaceholder": {
                "enabled": True,
                "replicas": plan.placeholders.replicas,
                "resources": plan.placeholders.resources(),
            },
        }
    else:
        scheduling = {"userPlaceholder": {"enabled": False, "replicas": 0}}

    return {
        "hub": dict(plan.hub),
        "singleuser": singleuser,
        "scheduling": scheduling,
        "prePuller": {
            "hook": {"enabled": True},
            "continuous": {"enabled": True},
            "pullProfileListImages": True,
        },
    }
