"""The event planner's arithmetic (hub_resilience.tools.planner): pure functions, no I/O."""
from __future__ import annotations

import copy
import json
from decimal import Decimal
from fractions import Fraction
from pathlib import Path

import pytest

from hub_resilience.tools import planner
from hub_resilience.tools.planner import (
    Event,
    NodeCapacity,
    PlanError,
    generate_choices,
    parse_cpu,
    parse_memory,
)

DATA = Path(__file__).parent / "data" / "planner"

#: The issue's worked example: a node offering 3.485 CPUs and 29298290688 bytes.
WORKED_NODE = NodeCapacity(cpu=Decimal("3.485"), memory=29298290688)
GIB = 1024**3


def clean_node(cpu: str = "4", memory: int = 32 * GIB, max_pods: int | None = None):
    return NodeCapacity(cpu=parse_cpu(cpu), memory=memory, max_pods=max_pods)


def load(name: str) -> dict:
    return json.loads((DATA / name).read_text())


# -- the worked example -----------------------------------------------------------------


def test_worked_example_memory_only_matches_the_issue_exactly():
    choices = generate_choices(WORKED_NODE, 4, "memory-only")

    assert [c.fraction for c in choices] == [
        Fraction(1, 8), Fraction(1, 4), Fraction(1, 2), Fraction(1)
    ]
    smallest, second = choices[0], choices[1]
    assert smallest.kubespawner_override() == {
        "mem_guarantee": 3662286336,
        "mem_limit": 3662286336,
        "cpu_guarantee": 0.435625,
        "cpu_limit": 3.485,
    }
    assert smallest.display_name == "3.4 GB RAM, upto 3.485 CPUs"
    assert second.mem_guarantee == second.mem_limit == 7324572672
    assert second.cpu_guarantee == Decimal("0.87125")
    assert second.cpu_limit == Decimal("3.485")
    # The largest is the whole node; every memory guarantee equals its limit.
    assert choices[-1].mem_guarantee == 29298290688
    assert choices[-1].cpu_guarantee == Decimal("3.485")
    assert [c.display_name for c in choices] == [
        "3.4 GB RAM, upto 3.485 CPUs",
        "6.8 GB RAM, upto 3.485 CPUs",
        "13.6 GB RAM, upto 3.485 CPUs",
        "27.3 GB RAM, upto 3.485 CPUs",
    ]
    assert all(c.mem_guarantee == c.mem_limit for c in choices)
    assert [c.default for c in choices] == [True, False, False, False]
    assert [c.key for c in choices] == ["mem_3_4_gb", "mem_6_8_gb", "mem_13_6_gb", "mem_27_3_gb"]


def test_worked_example_as_a_profile_option_choice():
    choice = generate_choices(WORKED_NODE, 4, "memory-only")[0]
    assert choice.as_profile_option_choice() == {
        "display_name": "3.4 GB RAM, upto 3.485 CPUs",
        "default": True,
        "kubespawner_override": {
            "mem_guarantee": 3662286336,
            "mem_limit": 3662286336,
            "cpu_guarantee": 0.435625,
            "cpu_limit": 3.485,
        },
    }


def test_worked_example_cpu_guarantees_finer_than_a_millicore_are_reported():
    """0.435625 CPUs is counted as 436m by the scheduler: 8 x 436m > 3485m, so only 7 fit."""
    choices = generate_choices(WORKED_NODE, 4, "memory-only")
    assert [planner.users_per_node(WORKED_NODE, c) for c in choices] == [7, 3, 1, 1]
    warnings = planner.packing_warnings(WORKED_NODE, choices)
    assert len(warnings) == 3
    assert "only 7 of the 8 pods" in warnings[0]
    assert "436m per pod" in warnings[0]
    assert "e.g. 3.48" in warnings[0]

    # The suggested CPU packs exactly.
    even = NodeCapacity(cpu=Decimal("3.48"), memory=29298290688)
    even_choices = generate_choices(even, 4, "memory-only")
    assert planner.packing_warnings(even, even_choices) == []
    assert [planner.users_per_node(even, c) for c in even_choices] == [8, 4, 2, 1]


# -- guaranteed mode ---------------------------------------------------------------------


def test_guaranteed_mode_sets_guarantee_equal_to_limit_in_whole_millicores():
    choices = generate_choices(WORKED_NODE, 4)  # guaranteed is the default mode

    for choice in choices:
        assert choice.cpu_guarantee == choice.cpu_limit
        assert choice.mem_guarantee == choice.mem_limit
        assert choice.cpu_guarantee * 1000 == int(choice.cpu_guarantee * 1000)
    assert [c.cpu_guarantee for c in choices] == [
        Decimal("0.435"), Decimal("0.871"), Decimal("1.742"), Decimal("3.485")
    ]
    assert [c.mem_guarantee for c in choices] == [
        3662286336, 7324572672, 14649145344, 29298290688
    ]
    assert choices[0].display_name == "3.4 GB RAM, 0.435 CPUs"
    # Rounding the CPU down means 1/fraction pods really fit on the node.
    assert [planner.users_per_node(WORKED_NODE, c) for c in choices] == [8, 4, 2, 1]
    assert planner.packing_warnings(WORKED_NODE, choices) == []


def test_single_choice_is_the_whole_node():
    (choice,) = generate_choices(clean_node("2", 8 * GIB), 1)
    assert choice.fraction == 1
    assert choice.cpu_guarantee == choice.cpu_limit == 2
    assert choice.mem_guarantee == 8 * GIB
    assert choice.display_name == "8.0 GB RAM, 2 CPUs"


def test_small_choices_are_shown_in_mb_and_one_cpu_in_singular():
    choices = generate_choices(clean_node("8", 4 * GIB), 4)
    assert choices[0].display_name == "512 MB RAM, 1 CPU"
    assert choices[0].key == "mem_512_mb"


def test_memory_only_oversubscription_raises_limits_and_caps_them_at_the_node():
    choices = generate_choices(WORKED_NODE, 3, "memory-only", oversubscription=2)
    assert [c.mem_limit for c in choices] == [
        2 * choices[0].mem_guarantee, 2 * choices[1].mem_guarantee, 29298290688
    ]
    assert choices[0].display_name == "6.8 GB RAM (upto 13.6 GB), upto 3.485 CPUs"


# -- bad input ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("29298290688", 29298290688),
        ("28611612Ki", 29298290688),
        ("27.3Gi", 29313151795),  # 29313151795.2 bytes, rounded down
        ("32G", 32_000_000_000),
    ],
)
def test_memory_quantities_use_kubernetes_units(text, expected):
    assert parse_memory(text) == expected


@pytest.mark.parametrize("text, expected", [("3.485", "3.485"), ("3485m", "3.485"), ("4", "4")])
def test_cpu_quantities_use_kubernetes_units(text, expected):
    assert parse_cpu(text) == Decimal(expected)


@pytest.mark.parametrize("text", ["27.3GB", "27.3 gigs", "lots", "", "NaN", "Infinity"])
def test_unknown_memory_units_name_the_setting(text):
    with pytest.raises(PlanError) as info:
        parse_memory(text, setting="memory")
    assert info.value.setting == "memory"
    assert "not a Kubernetes quantity" in str(info.value)
    assert "27.3Gi" in str(info.value)  # the message shows how to write it


@pytest.mark.parametrize("text", ["0", "-1", "0m", "-3.485"])
def test_zero_or_negative_cpu_is_refused(text):
    with pytest.raises(PlanError, match="more than zero") as info:
        parse_cpu(text, setting="cpu")
    assert info.value.setting == "cpu"


@pytest.mark.parametrize("text", ["0", "-1Gi", "0.5"])
def test_zero_negative_or_sub_byte_memory_is_refused(text):
    with pytest.raises(PlanError, match="at least one byte"):
        parse_memory(text)


def test_floats_are_refused_because_they_are_not_the_number_typed():
    with pytest.raises(PlanError, match="as strings"):
        parse_cpu(3.485)


def test_node_capacity_refuses_nonsense():
    with pytest.raises(PlanError, match="cpu"):
        NodeCapacity(cpu=Decimal("0.0001"), memory=GIB)
    with pytest.raises(PlanError, match="memory"):
        NodeCapacity(cpu=Decimal(1), memory=0)
    with pytest.raises(PlanError, match="max-pods"):
        NodeCapacity(cpu=Decimal(1), memory=GIB, max_pods=0)


@pytest.mark.parametrize("count", [0, -1])
def test_zero_or_negative_choices_are_refused(count):
    with pytest.raises(PlanError, match="at least 1") as info:
        generate_choices(WORKED_NODE, count)
    assert info.value.setting == "choices"


def test_more_choices_than_fit_in_memory_are_refused():
    # 8 choices: the smallest is 1/128 of 27.3 GB = 218 MB, below the 256 MiB minimum.
    generate_choices(WORKED_NODE, 7)
    with pytest.raises(PlanError, match="1/128 of the node, 218 MB") as info:
        generate_choices(WORKED_NODE, 8)
    assert info.value.setting == "choices"
    assert "min-memory" in str(info.value)
    # A lower minimum makes room, as long as the node takes that many pods (default 110).
    with pytest.raises(PlanError, match="at most 110 user pods"):
        generate_choices(WORKED_NODE, 8, min_memory=128 * 1024**2)
    roomy = NodeCapacity(cpu=Decimal("3.485"), memory=29298290688, max_pods=128)
    choices = generate_choices(roomy, 8, min_memory=128 * 1024**2)
    assert choices[0].mem_guarantee == 29298290688 // 128


def test_more_choices_than_the_node_takes_pods_are_refused():
    node = clean_node("64", 512 * GIB, max_pods=58)
    generate_choices(node, 6)  # 32 pods
    with pytest.raises(PlanError, match="at most 58 user pods"):
        generate_choices(node, 7)  # 64 pods


def test_more_choices_than_millicores_are_refused_in_guaranteed_mode():
    node = NodeCapacity(cpu=Decimal("0.004"), memory=64 * GIB)
    generate_choices(node, 3)  # 1m each
    with pytest.raises(PlanError, match="less than one millicore"):
        generate_choices(node, 4)


def test_mode_oversubscription_and_default_choice_are_checked():
    with pytest.raises(PlanError, match="unknown mode 'burstable'"):
        generate_choices(WORKED_NODE, 4, "burstable")
    with pytest.raises(PlanError, match="oversubscription applies to memory-only") as info:
        generate_choices(WORKED_NODE, 4, "guaranteed", oversubscription=2)
    assert info.value.setting == "oversubscription"
    with pytest.raises(PlanError, match="must be 1 or more"):
        generate_choices(WORKED_NODE, 4, "memory-only", oversubscription=Fraction(1, 2))
    with pytest.raises(PlanError, match="between 1 and 4") as info:
        generate_choices(WORKED_NODE, 4, default_index=4)
    assert info.value.setting == "default-choice"


# -- event rules ------------------------------------------------------------------------


def _by_rule(results, rule):
    return {r.subject.split(" ")[0]: r for r in results if r.rule == rule}


def test_rules_fail_for_choices_with_too_few_users_per_node():
    choices = generate_choices(WORKED_NODE, 4, "memory-only")
    results = planner.check_choice_rules(WORKED_NODE, choices)

    min_users = _by_rule(results, "min-users-per-node")
    assert {k: r.passed for k, r in min_users.items()} == {
        "mem_3_4_gb": True, "mem_6_8_gb": True, "mem_13_6_gb": False, "mem_27_3_gb": False,
    }
    assert "1 user per node, fewer than 3" in min_users["mem_13_6_gb"].reason
    assert all(r.passed for r in _by_rule(results, "max-users-per-node").values())
    assert all(r.passed for r in _by_rule(results, "oversubscription").values())


def test_rules_fail_for_more_than_about_100_users_per_node():
    node = clean_node("128", 1024 * GIB, max_pods=250)
    choices = generate_choices(node, 8)  # the smallest: 1/128 of the node
    results = planner.check_choice_rules(node, choices)
    max_users = _by_rule(results, "max-users-per-node")
    assert not max_users[choices[0].key].passed
    assert "128 users per node, more than 100" in max_users[choices[0].key].reason
    assert max_users[choices[1].key].passed  # 64


def test_rules_fail_for_oversubscribed_memory():
    choices = generate_choices(WORKED_NODE, 2, "memory-only", oversubscription=Fraction(3, 2))
    over = _by_rule(planner.check_choice_rules(WORKED_NODE, choices), "oversubscription")
    assert not over[choices[0].key].passed
    assert "1.5x the guarantee" in over[choices[0].key].reason
    # The whole-node choice cannot be oversubscribed: its limit is capped at the node.
    assert over[choices[1].key].passed


def test_rule_thresholds_are_settings():
    choices = generate_choices(WORKED_NODE, 4, "memory-only")
    results = planner.check_choice_rules(WORKED_NODE, choices, min_users=4)
    assert not _by_rule(results, "min-users-per-node")["mem_6_8_gb"].passed  # 3 < 4
    with pytest.raises(PlanError, match="min-users-per-node"):
        planner.check_choice_rules(WORKED_NODE, choices, min_users=0)
    with pytest.raises(PlanError) as info:
        planner.check_choice_rules(WORKED_NODE, choices, min_users=5, max_users=4)
    assert info.value.setting == "max-users-per-node"


# -- placeholders -----------------------------------------------------------------------


def test_placeholder_example_60_users_every_3_minutes_10_minute_start_needs_200_seats():
    assert planner.seats_to_hold(60, 3, 10) == 200


@pytest.mark.parametrize(
    "arrivals, minutes, startup, seats",
    [(100, 3, 10, 334), (60, 3, 0, 0), (1, 60, 5, 1), (30, Fraction(1, 2), Fraction(5, 2), 150)],
)
def test_seats_to_hold_rounds_up(arrivals, minutes, startup, seats):
    assert planner.seats_to_hold(arrivals, minutes, startup) == seats


def test_placeholders_cover_whole_node_blocks_and_leave_headroom():
    node = clean_node("4", 32 * GIB)
    seat = generate_choices(node, 4)[0]  # 500m, 4 GiB: 8 per node
    assert (seat.cpu_guarantee, seat.mem_guarantee) == (Decimal("0.5"), 4 * GIB)

    plan = planner.plan_placeholders(node, seat, 200)
    # 5% headroom: 3800m and 30.4 GiB usable -> 7 seats per placeholder.
    assert plan.seats_per_placeholder == 7
    assert plan.replicas == 29
    assert plan.seats_held == 203
    assert (plan.cpu_millicores, plan.memory) == (3500, 28 * GIB)
    assert plan.resources() == {
        "requests": {"cpu": "3500m", "memory": str(28 * GIB)},
        "limits": {"cpu": "3500m", "memory": str(28 * GIB)},
    }

    whole = planner.plan_placeholders(node, seat, 200, headroom=0)
    assert (whole.seats_per_placeholder, whole.replicas, whole.seats_held) == (8, 25, 200)
    assert (whole.cpu_millicores, whole.memory) == (4000, 32 * GIB)


def test_a_seat_larger_than_node_minus_headroom_gets_one_node_per_placeholder():
    node = clean_node("4", 32 * GIB)
    whole_node_seat = generate_choices(node, 2)[1]
    plan = planner.plan_placeholders(node, whole_node_seat, 5)
    assert (plan.seats_per_placeholder, plan.replicas) == (1, 5)
    # The placeholder stays within the node minus headroom, so it fits next to system pods.
    assert plan.cpu_millicores == 3800
    assert plan.memory == int(32 * GIB * Fraction(19, 20))


def test_placeholders_use_the_scheduler_count_of_the_seat():
    seat = generate_choices(WORKED_NODE, 4, "memory-only")[0]  # counted as 436m
    plan = planner.plan_placeholders(WORKED_NODE, seat, 200)
    assert plan.seats_per_placeholder == 7
    assert plan.cpu_millicores == 7 * 436
    assert plan.memory == 7 * 3662286336
    assert plan.replicas == 29


def test_placeholder_settings_are_checked():
    seat = generate_choices(WORKED_NODE, 4)[0]
    with pytest.raises(PlanError) as info:
        planner.plan_placeholders(WORKED_NODE, seat, 10, headroom=1)
    assert info.value.setting == "headroom"
    with pytest.raises(PlanError) as info:
        planner.plan_placeholders(WORKED_NODE, seat, 10, max_replicas=-1)
    assert info.value.setting == "max-placeholders"


def test_users_waiting_rule_fails_when_placeholders_are_capped_below_70_percent():
    node = clean_node("4", 32 * GIB)
    seat = generate_choices(node, 4)[0]
    event = Event(arrivals=60, arrival_minutes=Fraction(3), node_startup_minutes=Fraction(10))

    full = planner.plan_placeholders(node, seat, 200)
    (waiting,) = planner.check_event_rules(node, seat, event, full)
    assert waiting.passed and waiting.reason.startswith("0 of the 200 users")

    twenty = planner.plan_placeholders(node, seat, 200, max_replicas=20)  # 140 seats: 30%
    (waiting,) = planner.check_event_rules(node, seat, event, twenty)
    assert waiting.passed
    assert "60 of the 200 users" in waiting.reason

    nineteen = planner.plan_placeholders(node, seat, 200, max_replicas=19)  # 133: 33.5%
    (waiting,) = planner.check_event_rules(node, seat, event, nineteen)
    assert not waiting.passed
    assert "67 of the 200 users arriving during a 10-minute node start-up" in waiting.reason


def test_node_quota_rule():
    node = clean_node("4", 32 * GIB)
    seat = generate_choices(node, 4)[0]  # 8 per node
    placeholders = planner.plan_placeholders(node, seat, 200)
    for users, max_nodes, passed in ((320, 40, True), (321, 40, False)):
        event = Event(60, Fraction(3), Fraction(10), users=users, max_nodes=max_nodes)
        quota = planner.check_event_rules(node, seat, event, placeholders)[1]
        assert quota.rule == "node-quota"
        assert quota.passed is passed


@pytest.mark.parametrize(
    "kwargs, setting",
    [
        ({"arrivals": 0}, "arrivals"),
        ({"arrival_minutes": Fraction(0)}, "arrival-minutes"),
        ({"node_startup_minutes": Fraction(-1)}, "node-startup-minutes"),
        ({"pod_startup_minutes": Fraction(0)}, "pod-startup-minutes"),
        ({"users": 0}, "users"),
        ({"max_nodes": 0}, "max-nodes"),
    ],
)
def test_event_settings_are_checked(kwargs, setting):
    values = {"arrivals": 60, "arrival_minutes": Fraction(3), "node_startup_minutes": Fraction(10)}
    with pytest.raises(PlanError) as info:
        Event(**{**values, **kwargs})
    assert info.value.setting == setting


# -- hub limits --------------------------------------------------------------------------


def test_concurrent_spawn_limit_covers_overlapping_bursts():
    node = clean_node("4", 32 * GIB)
    seat = generate_choices(node, 4)[0]
    covered = planner.plan_placeholders(node, seat, 200)
    event = Event(60, Fraction(3), Fraction(10))
    assert planner.concurrent_spawn_limit(event, covered) == 60
    # Bursts every 30 s with 1-minute starts: two bursts pending at once.
    often = Event(60, Fraction(1, 2), Fraction(10))
    assert planner.concurrent_spawn_limit(often, covered) == 120
    # Users without a ready seat also wait for a node: 11 minutes span 4 bursts.
    capped = planner.plan_placeholders(node, seat, 200, max_replicas=10)
    assert planner.concurrent_spawn_limit(event, capped) == 240


def test_start_timeout_covers_a_start_on_a_new_node():
    assert planner.start_timeout_seconds(Event(60, Fraction(3), Fraction(10))) == 1320
    assert planner.start_timeout_seconds(Event(60, Fraction(3), Fraction(1))) == 300


def test_make_plan_for_the_placeholder_example():
    event = Event(60, Fraction(3), Fraction(10), users=300, max_nodes=40)
    plan = planner.make_plan(clean_node("4", 32 * GIB), 4, event=event)
    assert plan.seat.key == "mem_4_0_gb"
    assert plan.placeholders.replicas == 29
    assert plan.hub == {
        "consecutiveFailureLimit": 5, "concurrentSpawnLimit": 60, "activeServerLimit": 320,
    }
    assert plan.start_timeout == 1320
    assert [r.rule for r in plan.failed] == ["min-users-per-node", "min-users-per-node"]


def test_make_plan_without_an_event_has_no_placeholders():
    plan = planner.make_plan(WORKED_NODE, 4, "memory-only")
    assert plan.placeholders is None
    assert "concurrentSpawnLimit" not in plan.hub
    overlay = planner.build_values_overlay(plan)
    assert overlay["scheduling"] == {"userPlaceholder": {"enabled": False, "replicas": 0}}


def test_overlay_holds_choices_placeholders_priority_and_limits():
    event = Event(60, Fraction(3), Fraction(10))
    plan = planner.make_plan(WORKED_NODE, 4, "memory-only", event=event)
    overlay = planner.build_values_overlay(plan, profile_name="Climate Workshop", image="x:1")

    (profile,) = overlay["singleuser"]["profileList"]
    assert profile["slug"] == "climate-workshop"
    assert profile["kubespawner_override"] == {"image": "x:1"}
    choices = profile["profile_options"]["resources"]["choices"]
    assert choices["mem_3_4_gb"]["kubespawner_override"]["cpu_guarantee"] == 0.435625
    assert overlay["scheduling"]["podPriority"] == {"enabled": True}
    assert overlay["scheduling"]["userPlaceholder"]["replicas"] == 29
    assert overlay["hub"]["concurrentSpawnLimit"] == 60
    assert overlay["singleuser"]["startTimeout"] == 1320
    assert overlay["prePuller"]["continuous"] == {"enabled": True}


# -- the node from recorded kubectl output ------------------------------------------------


def test_node_json_minus_daemonset_requests_is_the_worked_example():
    """tests/data/planner: an r5.xlarge node (3920m, 29079580Ki, 58 pods) and its pods.

    Its 9 daemonset pods request 435m and 457Mi (aws-node's init container runs alone, the
    fluent-bit sidecar runs alongside); a user pod, a coredns pod and a daemonset pod of
    another node are not subtracted. What remains is the issue's worked example.
    """
    node = planner.node_capacity_from_objects(
        load("node-r5-xlarge.json"), load("pods-r5-xlarge.json")["items"]
    )
    assert node == NodeCapacity(cpu=Decimal("3.485"), memory=29298290688, max_pods=49)
    assert generate_choices(node, 4, "memory-only") == generate_choices(
        WORKED_NODE, 4, "memory-only"
    )


def test_node_json_without_pods_is_its_allocatable():
    node = planner.node_capacity_from_objects(load("node-r5-xlarge.json"))
    assert node == NodeCapacity(cpu=Decimal("3.92"), memory=29079580 * 1024, max_pods=58)


def _ds_pod(containers, init=None, phase="Running", overhead=None):
    spec = {"containers": containers}
    if init:
        spec["initContainers"] = init
    if overhead:
        spec["overhead"] = overhead
    return {
        "metadata": {"name": "p", "ownerReferences": [{"kind": "DaemonSet", "name": "ds"}]},
        "spec": spec,
        "status": {"phase": phase},
    }


def _c(cpu=None, memory=None, **extra):
    requests = {k: v for k, v in (("cpu", cpu), ("memory", memory)) if v is not None}
    return {"name": "c", "resources": {"requests": requests}, **extra}


def test_pod_requests_follow_kubernetes_effective_request():
    # Sum of app containers.
    assert planner.pod_requests(_ds_pod([_c("100m", "64Mi"), _c("50m")])) == (
        Decimal("0.15"), Decimal(64 * 1024**2)
    )
    # An ordinary init container larger than the app containers sets the request.
    assert planner.pod_requests(_ds_pod([_c("100m")], init=[_c("1", "1Gi")])) == (
        Decimal(1), Decimal(GIB)
    )
    # A sidecar adds to the app containers, and to init containers started after it.
    pod = _ds_pod(
        [_c("100m", "100Mi")],
        init=[_c("200m", "10Mi", restartPolicy="Always"), _c("250m", "10Mi")],
    )
    assert planner.pod_requests(pod) == (Decimal("0.45"), Decimal(110 * 1024**2))
    # Pod overhead (RuntimeClass) is added.
    pod = _ds_pod([_c("100m", "100Mi")], overhead={"cpu": "250m", "memory": "120Mi"})
    assert planner.pod_requests(pod) == (Decimal("0.35"), Decimal(220 * 1024**2))


def test_finished_and_foreign_pods_are_not_subtracted():
    node = load("node-r5-xlarge.json")
    failed = _ds_pod([_c("1", "1Gi")], phase="Failed")
    not_ds = copy.deepcopy(_ds_pod([_c("1", "1Gi")]))
    not_ds["metadata"]["ownerReferences"] = [{"kind": "ReplicaSet", "name": "rs"}]
    running = _ds_pod([_c("1", "1Gi")])
    capacity = planner.node_capacity_from_objects(node, [failed, not_ds, running])
    assert capacity.cpu == Decimal("2.92")
    assert capacity.max_pods == 57


def test_bad_node_objects_are_refused():
    node = load("node-r5-xlarge.json")
    with pytest.raises(PlanError, match="expected a Node object, got 'Pod'"):
        planner.node_capacity_from_objects({"kind": "Pod"})
    no_memory = copy.deepcopy(node)
    del no_memory["status"]["allocatable"]["memory"]
    with pytest.raises(PlanError, match="status.allocatable has no memory"):
        planner.node_capacity_from_objects(no_memory)
    with pytest.raises(PlanError, match="request more than it has allocatable") as info:
        planner.node_capacity_from_objects(node, [_ds_pod([_c("4")])])
    assert info.value.setting == "pods-json"
    with pytest.raises(PlanError, match="container c cpu request 'four'") as info:
        planner.node_capacity_from_objects(node, [_ds_pod([_c("four")])])
    assert info.value.setting == "pods-json"
