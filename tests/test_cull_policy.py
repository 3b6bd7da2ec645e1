"""The culler's decisions, tested as pure functions (no hub)."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from hub_resilience.service.cull_policy import (
    CullSettings,
    MalformedModel,
    ServerOutcome,
    cycle_delay,
    decide_server,
    decide_user,
    format_duration,
    left_listing,
    listing_state,
    may_delete_after,
    needs_recheck,
    next_page_offset,
    parse_timestamp,
    user_name,
    user_servers,
)

NOW = datetime(2025, 3, 1, 12, 0, 0, tzinfo=timezone.utc)


def iso(delta: timedelta) -> str:
    """A JupyterHub-style timestamp ``delta`` before NOW."""
    return (NOW - delta).isoformat().replace("+00:00", "Z")


def server(idle: timedelta | None, age: timedelta = timedelta(days=1), **fields: object) -> dict:
    model = {
        "ready": True,
        "pending": None,
        "started": iso(age),
        "last_activity": None if idle is None else iso(idle),
    }
    model.update(fields)
    return model


SETTINGS = CullSettings(timeout=3600)


def test_idle_server_is_culled_at_the_timeout_not_before() -> None:
    assert not decide_server(server(timedelta(seconds=3599)), "", NOW, SETTINGS).cull
    decision = decide_server(server(timedelta(seconds=3600)), "", NOW, SETTINGS)
    assert decision.cull and decision.reason == "inactive"
    assert decision.inactive == timedelta(seconds=3600)


def test_server_without_activity_is_measured_from_its_start() -> None:
    young = server(None, age=timedelta(minutes=5))
    old = server(None, age=timedelta(hours=2))
    assert decide_server(young, "", NOW, SETTINGS).reason == "active"
    assert decide_server(old, "", NOW, SETTINGS).reason == "inactive"


@pytest.mark.parametrize(
    ("pending", "reason"), [("spawn", "pending"), ("stop", "stopping"), ("rename", "pending")]
)
def test_pending_servers_are_never_culled(pending: str, reason: str) -> None:
    model = server(timedelta(days=3), pending=pending, ready=False)
    decision = decide_server(model, "", NOW, SETTINGS)
    assert not decision.cull and decision.reason == reason


def test_not_ready_servers_are_not_culled() -> None:
    decision = decide_server(server(timedelta(days=3), ready=False), "", NOW, SETTINGS)
    assert not decision.cull and decision.reason == "not_ready"


def test_max_age_culls_active_servers() -> None:
    settings = CullSettings(timeout=3600, max_age=8 * 3600)
    busy_old = server(timedelta(seconds=5), age=timedelta(hours=9))
    busy_young = server(timedelta(seconds=5), age=timedelta(hours=7))
    assert decide_server(busy_old, "", NOW, settings).reason == "max_age"
    assert not decide_server(busy_young, "", NOW, settings).cull
    assert not decide_server(busy_old, "", NOW, SETTINGS).cull  # max_age off


def test_default_and_named_servers_can_be_excluded() -> None:
    idle = server(timedelta(days=1))
    no_default = CullSettings(timeout=3600, cull_default_servers=False)
    no_named = CullSettings(timeout=3600, cull_named_servers=False)
    assert decide_server(idle, "", NOW, no_default).reason == "disabled"
    assert decide_server(idle, "lab", NOW, no_default).cull
    assert decide_server(idle, "lab", NOW, no_named).reason == "disabled"
    assert decide_server(idle, "", NOW, no_named).cull


def test_activity_in_the_future_counts_as_active() -> None:
    model = server(-timedelta(minutes=10))
    assert not decide_server(model, "", NOW, SETTINGS).cull


def test_unreadable_server_timestamps_are_malformed() -> None:
    with pytest.raises(MalformedModel):
        decide_server(server(None, started="yesterday"), "", NOW, SETTINGS)
    with pytest.raises(MalformedModel):
        decide_server(server(None, last_activity=12345), "", NOW, SETTINGS)
    with pytest.raises(MalformedModel):
        decide_server(["not", "a", "dict"], "", NOW, SETTINGS)  # type: ignore[arg-type]


def user(idle: timedelta | None, *, admin: bool = False, servers: dict | None = None,
         age: timedelta = timedelta(days=10)) -> dict:
    return {
        "name": "someone",
        "admin": admin,
        "created": iso(age),
        "last_activity": None if idle is None else iso(idle),
        "servers": servers or {},
    }


def test_users_are_kept_unless_cull_users() -> None:
    assert decide_user(user(timedelta(days=5)), NOW, SETTINGS).reason == "disabled"


def test_idle_user_without_servers_is_deleted() -> None:
    settings = CullSettings(timeout=3600, cull_users=True)
    assert decide_user(user(timedelta(hours=2)), NOW, settings).cull
    assert not decide_user(user(timedelta(minutes=2)), NOW, settings).cull


def test_user_with_any_active_server_is_never_deleted() -> None:
    settings = CullSettings(timeout=3600, cull_users=True)
    stopping = {"": server(timedelta(days=2), pending="stop", ready=False)}
    decision = decide_user(user(timedelta(days=5), servers=stopping), NOW, settings)
    assert not decision.cull and decision.reason == "has_servers"


def test_admins_are_deleted_only_when_asked() -> None:
    keep = CullSettings(timeout=3600, cull_users=True)
    delete = CullSettings(timeout=3600, cull_users=True, cull_admin_users=True)
    admin = user(timedelta(days=5), admin=True)
    assert decide_user(admin, NOW, keep).reason == "admin"
    assert decide_user(admin, NOW, delete).cull


def test_user_without_activity_is_measured_from_creation_and_max_age_applies() -> None:
    settings = CullSettings(timeout=3600, cull_users=True, max_age=86400)
    assert not decide_user(user(None, age=timedelta(minutes=30)), NOW, settings).cull
    assert decide_user(user(None, age=timedelta(hours=3)), NOW, settings).reason == "inactive"
    busy_old = user(timedelta(seconds=1), age=timedelta(days=2))
    assert decide_user(busy_old, NOW, settings).reason == "max_age"


def test_user_models_without_servers_are_malformed_not_empty() -> None:
    # A token lacking read:servers gets no 'servers' key: treating that as "no servers"
    # would delete users whose servers run.
    settings = CullSettings(timeout=3600, cull_users=True)
    with pytest.raises(MalformedModel):
        decide_user({"name": "x", "admin": False, "last_activity": None}, NOW, settings)
    with pytest.raises(MalformedModel):
        user_servers({"name": "x", "servers": {"": "running"}})
    with pytest.raises(MalformedModel):
        user_name({"servers": {}})
    assert user_name({"name": "x"}) == "x"


def test_settings_are_validated() -> None:
    with pytest.raises(ValueError, match="Culler.timeout"):
        CullSettings(timeout=0)
    with pytest.raises(ValueError, match="Culler.max_age"):
        CullSettings(timeout=10, max_age=-1)


def test_parse_timestamp_forms() -> None:
    assert parse_timestamp(None) is None
    assert parse_timestamp("2025-03-01T12:00:00Z") == NOW
    assert parse_timestamp("2025-03-01T12:00:00.000000") == NOW  # naive means UTC
    assert parse_timestamp("2025-03-01T13:00:00+01:00") == NOW


def test_recheck_threshold() -> None:
    assert not needs_recheck(page_age=4.9, recheck_after=5)
    assert needs_recheck(page_age=5.0, recheck_after=5)
    assert needs_recheck(page_age=0.0, recheck_after=0)


def test_user_deletion_waits_for_confirmed_stops() -> None:
    assert may_delete_after([])
    assert may_delete_after([ServerOutcome.STOPPED, ServerOutcome.GONE])
    for blocking in (ServerOutcome.STOPPING, ServerOutcome.KEPT, ServerOutcome.SKIPPED):
        assert not may_delete_after([ServerOutcome.STOPPED, blocking])


def test_left_listing() -> None:
    stopped = [ServerOutcome.STOPPED, ServerOutcome.STOPPING]
    assert left_listing("active", stopped, user_removed=False)
    assert not left_listing("active", [ServerOutcome.STOPPED, ServerOutcome.KEPT], False)
    assert not left_listing("active", [], False)
    assert not left_listing("inactive", stopped, False)
    assert left_listing("inactive", [], True)
    assert left_listing(None, [], True)


def simulate_paging(
    population: list[str], page_size: int, removes: set[str], claims: frozenset[str] = frozenset()
) -> list[str]:
    """Page through a live, id-ordered listing the way the culler does, removing ``removes``
    as it goes and counting ``claims`` as removed although they stay (a stop that did not
    complete); returns the users in the order they were handled."""
    live = list(population)
    handled: list[str] = []
    offset = 0
    previous: set[str] = set()
    while True:
        page = live[offset : offset + page_size]
        next_offset = offset + page_size if offset + page_size < len(live) else None
        todo = [name for name in page if name not in previous]
        handled.extend(todo)
        gone = [name for name in todo if name in removes]
        for name in gone:
            live.remove(name)
        counted = len(gone) + len([name for name in todo if name in claims])
        previous = set(page)
        following = next_page_offset(offset, next_offset, counted)
        if following is None:
            return handled
        offset = following


@pytest.mark.parametrize("page_size", [1, 3, 7, 50])
def test_paging_a_shrinking_listing_skips_and_repeats_no_one(page_size: int) -> None:
    population = [f"u{i:03d}" for i in range(100)]
    removes = {name for i, name in enumerate(population) if i % 3 != 1}
    handled = simulate_paging(population, page_size, removes)
    assert sorted(handled) == population


@pytest.mark.parametrize("page_size", [2, 5, 20])
def test_overcounted_removals_cause_no_repeats(page_size: int) -> None:
    population = [f"u{i:03d}" for i in range(60)]
    removes = {name for i, name in enumerate(population) if i % 2 == 0}
    claims = frozenset(name for i, name in enumerate(population) if i % 5 == 1)
    handled = simulate_paging(population, page_size, removes, claims)
    assert sorted(handled) == population


def test_naive_offset_paging_would_skip_users() -> None:
    # The failure the step-back prevents: advancing by the page size skips users.
    population = [f"u{i:03d}" for i in range(20)]
    live = list(population)
    handled = []
    for offset in range(0, 20, 5):
        page = live[offset : offset + 5]
        handled.extend(page)
        for name in page:
            live.remove(name)
    assert len(handled) < len(population)
    assert next_page_offset(0, 5, 5) == 0
    assert next_page_offset(10, 15, 2) == 13
    assert next_page_offset(10, None, 2) is None
    assert next_page_offset(10, 15, 99) == 10  # never goes backwards past the page


def test_listing_state() -> None:
    assert listing_state(state_filter=True, cull_users=False) == "active"
    assert listing_state(state_filter=True, cull_users=True) is None
    assert listing_state(state_filter=False, cull_users=True) is None
    assert listing_state(state_filter=False, cull_users=False) is None


def test_cycle_delay_keeps_the_schedule_and_reports_overruns() -> None:
    assert cycle_delay(10, 60) == (50, False)
    assert cycle_delay(60, 60) == (0, False)
    assert cycle_delay(70, 60) == (50, True)
    assert cycle_delay(130, 60) == (50, True)
    with pytest.raises(ValueError):
        cycle_delay(1, 0)


def test_format_duration() -> None:
    assert format_duration(None) == "unknown"
    assert format_duration(timedelta(hours=1, minutes=2, seconds=3)) == "01:02:03"
    assert format_duration(timedelta(days=2)) == "48:00:00"
    assert format_duration(timedelta(seconds=-61)) == "-00:01:01"
