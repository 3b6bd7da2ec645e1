"""``hub-resilience plan``: size a hub for an event from one node's capacity.

The arithmetic lives in :mod:`hub_resilience.tools.planner`; this module only gets the node's
capacity (from the command line, from ``kubectl get node -o json`` output plus a pod list,
or from a live cluster), prints the resource choices as YAML on stdout, the rule checks and
suggestions on stderr, and writes the z2jh values overlay.

Exit codes: 0 when a plan was made (failed event rules are reported, not fatal: the plan is
still the best for the node given), 2 on bad input.
"""
from __future__ import annotations

import argparse
import json
import sys
from fractions import Fraction
from pathlib import Path
from typing import Any, TextIO

import yaml

from hub_resilience.hub.qos import QoSMode
from hub_resilience.tools import planner

EXIT_BAD_INPUT = 2


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``plan`` subcommand."""
    parser = subparsers.add_parser(
        "plan",
        help="size profile choices, placeholders and hub limits for an event",
        description=(
            "Generate resource-allocation choices for one node type, check them against the "
            "event rules, size user placeholders and hub limits, and optionally write a "
            "zero-to-jupyterhub values overlay. Quantities use Kubernetes' units "
            "(3485m, 27.3Gi, 28611612Ki)."
        ),
    )
    source = parser.add_argument_group(
        "node capacity (one of: --cpu/--memory, --node-json, --node)"
    )
    source.add_argument(
        "--cpu", metavar="QUANTITY", help="CPUs a node offers user pods, e.g. 3.485 or 3485m"
    )
    source.add_argument(
        "--memory", metavar="QUANTITY",
        help="memory a node offers user pods, e.g. 29298290688 or 27.3Gi",
    )
    source.add_argument(
        "--max-pods", type=int, metavar="N",
        help="user pods a node takes (default: the node's pods allocatable, else 110)",
    )
    source.add_argument(
        "--node-json", metavar="FILE",
        help="a node object, as `kubectl get node NAME -o json` prints it ('-' for stdin)",
    )
    source.add_argument(
        "--pods-json", metavar="FILE",
        help="pods of that node (`kubectl get pods -A -o json --field-selector "
        "spec.nodeName=NAME`); requests of its daemonset pods are subtracted",
    )
    source.add_argument("--node", metavar="NAME", help="read this node from a live cluster")
    source.add_argument("--kubeconfig", metavar="FILE", help="kubeconfig for --node")
    source.add_argument("--context", help="kubeconfig context for --node")

    choices = parser.add_argument_group("choices")
    choices.add_argument(
        "--choices", type=int, default=4, metavar="N", help="how many choices to offer (default 4)"
    )
    choices.add_argument(
        "--mode", choices=QoSMode.values(), default=QoSMode.GUARANTEED.value,
        help="guaranteed: cpu and memory guarantee == limit (default); memory-only: memory "
        "guarantee == limit, CPU guaranteed in proportion, limited to the node",
    )
    choices.add_argument(
        "--oversubscription", type=Fraction, default=Fraction(1), metavar="FACTOR",
        help="memory limit / guarantee in memory-only mode (events: 1, the default)",
    )
    choices.add_argument(
        "--min-memory", default="256Mi", metavar="QUANTITY",
        help="smallest memory a choice may have (default 256Mi)",
    )
    choices.add_argument(
        "--default-choice", type=int, default=1, metavar="N",
        help="which choice is the default, 1 = smallest (default 1); placeholders hold seats "
        "of this size",
    )

    event = parser.add_argument_group("event (sizes placeholders and hub limits)")
    event.add_argument(
        "--arrivals", type=int, metavar="USERS", help="users who arrive together, e.g. 60"
    )
    event.add_argument(
        "--arrival-minutes", type=Fraction, default=None, metavar="MINUTES",
        help="minutes between groups of arrivals, e.g. 3",
    )
    event.add_argument(
        "--node-startup-minutes", type=Fraction, default=None, metavar="MINUTES",
        help="minutes from a pending pod to a new node ready, e.g. 10",
    )
    event.add_argument(
        "--pod-startup-minutes", type=Fraction, default=planner.DEFAULT_POD_STARTUP_MINUTES,
        metavar="MINUTES",
        help="minutes a server takes to start on a ready node (default 1)",
    )
    event.add_argument(
        "--users", type=int, metavar="N", help="users expected in total (for --max-nodes)"
    )
    event.add_argument(
        "--max-nodes", type=int, metavar="N", help="most nodes the cloud quota / node pool allows"
    )
    event.add_argument(
        "--max-placeholders", type=int, metavar="N",
        help="cap on placeholder pods (cost); default: no cap",
    )
    event.add_argument(
        "--headroom", type=Fraction, default=planner.DEFAULT_PLACEHOLDER_HEADROOM,
        metavar="SHARE",
        help="share of a node a placeholder leaves for system pods (default 1/20)",
    )

    rules = parser.add_argument_group("event rules")
    rules.add_argument(
        "--min-users-per-node", type=int, default=planner.DEFAULT_MIN_USERS_PER_NODE, metavar="N",
        help="a choice fitting fewer users on a node fails "
        f"(default {planner.DEFAULT_MIN_USERS_PER_NODE})",
    )
    rules.add_argument(
        "--max-users-per-node", type=int, default=planner.DEFAULT_MAX_USERS_PER_NODE, metavar="N",
        help="a choice fitting more users on a node fails "
        f"(default {planner.DEFAULT_MAX_USERS_PER_NODE})",
    )
    rules.add_argument(
        "--max-waiting", type=Fraction, default=planner.DEFAULT_MAX_WAITING_FRACTION,
        metavar="SHARE",
        help="largest share of arriving users who may wait for a node (default 3/10)",
    )

    output = parser.add_argument_group("output")
    output.add_argument("--overlay", metavar="FILE", help="write the z2jh values overlay here")
    output.add_argument(
        "--profile-name", default="Event", metavar="NAME",
        help="display name of the profile (default Event)",
    )
    output.add_argument("--image", metavar="NAME:TAG", help="user image the profile sets")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace, stdout: TextIO | None = None,
        stderr: TextIO | None = None) -> int:
    """Make the plan; print choices (stdout) and checks (stderr); write the overlay."""
    stdout = stdout or sys.stdout
    stderr = stderr or sys.stderr
    try:
        node = node_capacity(args)
        event = event_from_args(args)
        plan = planner.make_plan(
            node,
            args.choices,
            args.mode,
            event=event,
            oversubscription=args.oversubscription,
            min_memory=planner.parse_memory(args.min_memory, setting="min-memory"),
            default_index=args.default_choice - 1,
            headroom=args.headroom,
            max_placeholders=args.max_placeholders,
            min_users=args.min_users_per_node,
            max_users=args.max_users_per_node,
            max_waiting=args.max_waiting,
        )
        overlay = planner.build_values_overlay(
            plan, profile_name=args.profile_name, image=args.image
        )
    except planner.PlanError as e:
        print(f"hub-resilience plan: error: --{e.setting}: {e.message}", file=stderr)
        return EXIT_BAD_INPUT

    yaml.safe_dump(plan.choices_mapping(), stdout, sort_keys=False)
    print(report(plan), file=stderr)
    if args.overlay:
        try:
            Path(args.overlay).write_text(yaml.safe_dump(overlay, sort_keys=False))
        except OSError as e:
            print(f"hub-resilience plan: error: --overlay: cannot write: {e}", file=stderr)
            return EXIT_BAD_INPUT
        print(f"values overlay written to {args.overlay}", file=stderr)
    return 0


def node_capacity(args: argparse.Namespace) -> planner.NodeCapacity:
    """The node's capacity from exactly one of the three sources."""
    given = [
        name for name, present in (
            ("cpu/--memory", args.cpu is not None or args.memory is not None),
            ("node-json", args.node_json is not None),
            ("node", args.node is not None),
        ) if present
    ]
    if len(given) != 1:
        raise planner.PlanError(
            "cpu/--memory, --node-json or --node",
            "give exactly one source of the node's capacity"
            + (f" (got --{' and --'.join(given)})" if given else ""),
        )
    if args.pods_json is not None and args.node_json is None:
        raise planner.PlanError("pods-json", "only goes with --node-json")
    if (args.kubeconfig or args.context) and args.node is None:
        raise planner.PlanError("kubeconfig", "--kubeconfig and --context go with --node")

    if given[0] == "cpu/--memory":
        if args.cpu is None or args.memory is None:
            missing = "cpu" if args.cpu is None else "memory"
            raise planner.PlanError(missing, "--cpu and --memory go together")
        return planner.NodeCapacity(
            cpu=planner.parse_cpu(args.cpu, setting="cpu"),
            memory=planner.parse_memory(args.memory, setting="memory"),
            max_pods=args.max_pods,
        )
    if given[0] == "node-json":
        node = single_node(load_json(args.node_json, "node-json"))
        pods = pod_items(load_json(args.pods_json, "pods-json")) if args.pods_json else []
        capacity = planner.node_capacity_from_objects(node, pods)
    else:
        node, pods = read_live_node(args.node, args.kubeconfig, args.context)
        try:
            capacity = planner.node_capacity_from_objects(node, pods)
        except planner.PlanError as e:
            raise planner.PlanError("node", f"node {args.node}: {e.message}") from None
    if args.max_pods is not None:
        capacity = planner.NodeCapacity(capacity.cpu, capacity.memory, args.max_pods)
    return capacity


def event_from_args(args: argparse.Namespace) -> planner.Event | None:
    """The event, if its arrival pattern was given (all three options, or none)."""
    parts = {
        "arrivals": args.arrivals,
        "arrival-minutes": args.arrival_minutes,
        "node-startup-minutes": args.node_startup_minutes,
    }
    missing = [name for name, value in parts.items() if value is None]
    if len(missing) == len(parts):
        for name, value in (("users", args.users), ("max-nodes", args.max_nodes),
                            ("max-placeholders", args.max_placeholders)):
            if value is not None:
                raise planner.PlanError(
                    name, "needs --arrivals, --arrival-minutes and --node-startup-minutes"
                )
        return None
    if missing:
        raise planner.PlanError(
            missing[0], "--arrivals, --arrival-minutes and --node-startup-minutes go together"
        )
    return planner.Event(
        arrivals=args.arrivals,
        arrival_minutes=args.arrival_minutes,
        node_startup_minutes=args.node_startup_minutes,
        pod_startup_minutes=args.pod_startup_minutes,
        users=args.users,
        max_nodes=args.max_nodes,
    )


def load_json(path: str, setting: str) -> Any:
    """Parse a JSON file ('-': stdin), with errors naming the option."""
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text()
    except OSError as e:
        raise planner.PlanError(setting, f"cannot read {path}: {e.strerror}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise planner.PlanError(setting, f"{path} is not JSON: {e}") from None


def single_node(obj: Any) -> dict:
    """A Node, or a List holding exactly one (``kubectl get nodes -o json`` for one node)."""
    if isinstance(obj, dict) and obj.get("kind") == "List":
        items = obj.get("items") or []
        if len(items) != 1:
            raise planner.PlanError(
                "node-json", f"the list holds {len(items)} nodes; give exactly one"
            )
        obj = items[0]
    if not isinstance(obj, dict):
        raise planner.PlanError("node-json", "expected a Node object")
    return obj


def pod_items(obj: Any) -> list[dict]:
    """Pods of a ``kind: List`` / ``PodList`` (or a bare JSON list of pods)."""
    items = obj.get("items") if isinstance(obj, dict) else obj
    if not isinstance(items, list) or not all(isinstance(p, dict) for p in items):
        raise planner.PlanError("pods-json", "expected a pod list (kind: List with items)")
    return items


def read_live_node(
    name: str, kubeconfig: str | None = None, context: str | None = None
) -> tuple[dict, list[dict]]:
    """The node object and the pods scheduled on it, from the cluster of the kubeconfig.

    Uses a client of its own (``new_client_from_config``) rather than the process-wide
    default configuration, so nothing else in the process is redirected.
    """
    import urllib3
    from kubernetes import client, config
    from kubernetes.client.rest import ApiException
    from kubernetes.config.config_exception import ConfigException

    try:
        api_client = config.new_client_from_config(config_file=kubeconfig, context=context)
    except (ConfigException, OSError) as e:
        raise planner.PlanError("kubeconfig", f"cannot load: {e}") from None
    with api_client:
        v1 = client.CoreV1Api(api_client)
        try:
            node = v1.read_node(name)
            pods = v1.list_pod_for_all_namespaces(field_selector=f"spec.nodeName={name}")
        except ApiException as e:
            if e.status == 404:
                raise planner.PlanError("node", f"the cluster has no node named {name!r}") from None
            raise planner.PlanError(
                "node", f"reading node {name!r} failed: {e.status} {e.reason}"
            ) from None
        except (urllib3.exceptions.HTTPError, OSError) as e:
            raise planner.PlanError(
                "kubeconfig", f"cannot reach the API server of the kubeconfig: {e}"
            ) from None
        serialize = api_client.sanitize_for_serialization
        return serialize(node), [serialize(pod) for pod in pods.items]


def report(plan: planner.Plan) -> str:
    """The human part of the output: node, rule checks, warnings, placeholders, advice."""
    lines = [f"node: {plan.node.describe()}", f"mode: {plan.mode}", "checks:"]
    for result in plan.checks:
        status = "ok  " if result.passed else "FAIL"
        lines.append(f"  {status} {result.rule} [{result.subject}]: {result.reason}")
    failed = len(plan.failed)
    lines.append(f"  {failed} of {len(plan.checks)} checks failed")
    for warning in plan.warnings:
        lines.append(f"warning: {warning}")
    if plan.placeholders is not None:
        p = plan.placeholders
        lines.append(
            f"placeholders: {p.replicas} x ({p.cpu_millicores}m CPU, "
            f"{planner.format_memory(p.memory)}), {p.seats_per_placeholder} seats of "
            f"'{plan.seat.display_name}' each: {p.seats_held} seats held for the "
            f"{p.seats_needed} users who arrive during a node start-up"
        )
    for suggestion in plan.suggestions:
        lines.append(f"suggest: {suggestion}")
    return "\n".join(lines)
