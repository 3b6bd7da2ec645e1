"""What the culler decides, as pure functions of API models and the clock.

Kept apart from :mod:`hub_resilience.service.culler` (which does the talking) so every rule can be
tested without a hub: which servers are idle or too old, which users may be deleted, when a
decision made on a listed page must be re-checked, how to page through a listing that the
culler itself shrinks, and when the next cycle starts.
"""
from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from dateutil.parser import isoparse

from hub_resilience.labels import LabelEnum


class MalformedModel(ValueError):
    """A user or server model from the hub that the culler cannot safely act on."""


@dataclass(frozen=True)
class CullSettings:
    """The culling rules (see :class:`hub_resilience.service.culler.Culler` for their meaning)."""

    timeout: float
    max_age: float = 0.0
    cull_default_servers: bool = True
    cull_named_servers: bool = True
    cull_users: bool = False
    cull_admin_users: bool = False

    def __post_init__(self) -> None:
        if not self.timeout > 0:
            raise ValueError(f"Culler.timeout must be > 0 seconds, not {self.timeout!r}")
        if self.max_age < 0:
            raise ValueError(f"Culler.max_age must be >= 0 (0 = off), not {self.max_age!r}")


class CullReason(LabelEnum):
    """Why a server or user is culled (a metric label)."""

    INACTIVE = "inactive"
    MAX_AGE = "max_age"


@dataclass(frozen=True)
class Decision:
    """Whether to cull, and why (``reason`` is a log word and, when culling, a metric label:
    ``inactive`` or ``max_age``; otherwise ``active``, ``pending``, ``stopping``, ``not_ready``,
    ``disabled``, ``admin`` or ``has_servers``)."""

    cull: bool
    reason: str
    inactive: timedelta | None = None
    age: timedelta | None = None


class ServerOutcome(enum.Enum):
    """What became of one server the culler looked at."""

    KEPT = "kept"  # not culled (active, pending, disabled, or re-checked and found active)
    STOPPED = "stopped"  # the hub confirmed it is no longer active
    STOPPING = "stopping"  # stop requested; not yet confirmed
    GONE = "gone"  # the hub no longer knew it (404, or absent on re-check)
    SKIPPED = "skipped"  # an error left it for the next cycle


def parse_timestamp(value: Any) -> datetime | None:
    """A JupyterHub ISO 8601 timestamp as an aware UTC datetime (None stays None).

    Naive timestamps are UTC, as JupyterHub writes them. Anything else is
    :class:`MalformedModel`: a culler must not guess at times it cannot read.
    """
    if value is None:
        return None
    if not isinstance(value, str):
        raise MalformedModel(f"timestamp is not a string: {value!r}")
    try:
        when = isoparse(value)
    except (ValueError, OverflowError) as e:
        raise MalformedModel(f"unreadable timestamp {value!r}: {e}") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return when.astimezone(timezone.utc)


def format_duration(delta: timedelta | None) -> str:
    """``HH:MM:SS`` for logs (``unknown`` for None)."""
    if delta is None:
        return "unknown"
    seconds = int(delta.total_seconds())
    sign = "-" if seconds < 0 else ""
    seconds = abs(seconds)
    return f"{sign}{seconds // 3600:02}:{seconds % 3600 // 60:02}:{seconds % 60:02}"


def user_name(user: Any) -> str:
    """A user model's name; :class:`MalformedModel` if it has none."""
    if not isinstance(user, Mapping) or not isinstance(user.get("name"), str) or not user["name"]:
        raise MalformedModel(f"not a user model: {str(user)[:120]}")
    return user["name"]


def user_servers(user: Any) -> dict[str, Mapping[str, Any]]:
    """A user model's active servers by name; :class:`MalformedModel` if unreadable.

    A missing ``servers`` key is malformed rather than "no servers": it is what a token
    without ``read:servers`` gets, and treating it as empty would delete users whose
    servers are running.
    """
    user_name(user)
    servers = user.get("servers")
    if not isinstance(servers, Mapping):
        raise MalformedModel(f"user {user['name']!r} has no 'servers' object")
    for name, server in servers.items():
        if not isinstance(name, str) or not isinstance(server, Mapping):
            raise MalformedModel(f"user {user['name']!r} has a malformed server {name!r}")
    return dict(servers)


def _elapsed(now: datetime, since: datetime | None) -> timedelta | None:
    return None if since is None else now - since


#: The reason of a server whose stop is in progress (:func:`decide_server`).
STOPPING = "stopping"


def is_stopping(server: Mapping[str, Any]) -> bool:
    """Whether a server model shows a stop in progress (whoever asked for it)."""
    return server.get("pending") == "stop"


def decide_server(
    server: Mapping[str, Any], server_name: str, now: datetime, settings: CullSettings
) -> Decision:
    """Whether to stop one active server.

    Pending servers (starting or stopping) and servers that are not ready are never culled;
    a stop in progress says ``stopping``, so that the culler can follow it up (a user whose
    server is still stopping is work left for a later cycle, not a quiet hub).
    Idle time is measured from ``last_activity``, or from ``started`` when the server has
    reported no activity yet; a server idle for at least ``timeout`` seconds is culled, and
    with ``max_age`` set, so is one started at least that long ago, however active.
    """
    if not isinstance(server, Mapping):
        raise MalformedModel(f"server {server_name!r} is not an object")
    if is_stopping(server):
        return Decision(False, STOPPING)
    if server.get("pending"):
        return Decision(False, "pending")
    if not server.get("ready", False):
        return Decision(False, "not_ready")
    enabled = settings.cull_named_servers if server_name else settings.cull_default_servers
    started = parse_timestamp(server.get("started"))
    last_activity = parse_timestamp(server.get("last_activity"))
    age = _elapsed(now, started)
    inactive = _elapsed(now, last_activity) if last_activity is not None else age
    if not enabled:
        return Decision(False, "disabled", inactive, age)
    if inactive is not None and inactive.total_seconds() >= settings.timeout:
        return Decision(True, CullReason.INACTIVE, inactive, age)
    if settings.max_age and age is not None and age.total_seconds() >= settings.max_age:
        return Decision(True, CullReason.MAX_AGE, inactive, age)
    return Decision(False, "active", inactive, age)


def decide_user(user: Mapping[str, Any], now: datetime, settings: CullSettings) -> Decision:
    """Whether to delete a user, judged on a model fetched just before the deletion.

    Only with ``cull_users``; never while the user has any active server (running, starting
    or stopping); admins only with ``cull_admin_users``. Idle time is measured from the
    user's ``last_activity``, or from ``created`` when there was none.
    """
    if not settings.cull_users:
        return Decision(False, "disabled")
    if user_servers(user):
        return Decision(False, "has_servers")
    if user.get("admin") and not settings.cull_admin_users:
        return Decision(False, "admin")
    created = parse_timestamp(user.get("created"))
    last_activity = parse_timestamp(user.get("last_activity"))
    age = _elapsed(now, created)
    inactive = _elapsed(now, last_activity) if last_activity is not None else age
    if inactive is not None and inactive.total_seconds() >= settings.timeout:
        return Decision(True, CullReason.INACTIVE, inactive, age)
    if settings.max_age and age is not None and age.total_seconds() >= settings.max_age:
        return Decision(True, CullReason.MAX_AGE, inactive, age)
    return Decision(False, "active", inactive, age)


def needs_recheck(page_age: float, recheck_after: float) -> bool:
    """Whether a decision taken on a page fetched ``page_age`` seconds ago must be confirmed
    with a fresh model before acting (the user may have come back meanwhile)."""
    return page_age >= recheck_after


def may_delete_after(outcomes: Iterable[ServerOutcome]) -> bool:
    """Whether, after handling a user's servers, deleting the user is worth checking: only
    when every server is confirmed no longer active (a stop still in progress is not)."""
    return all(o in (ServerOutcome.STOPPED, ServerOutcome.GONE) for o in outcomes)


def left_listing(state: str | None, outcomes: Iterable[ServerOutcome], user_removed: bool) -> bool:
    """Whether the culler's actions may have removed a user from the listing it pages
    through: ``state=active`` loses users whose every server was stopped (or is stopping);
    any listing loses deleted users. Erring towards True only costs a re-read user."""
    if user_removed:
        return True
    if state != "active":
        return False
    outcomes = list(outcomes)
    return bool(outcomes) and all(
        o in (ServerOutcome.STOPPED, ServerOutcome.STOPPING, ServerOutcome.GONE) for o in outcomes
    )


def next_page_offset(offset: int, next_offset: int | None, left: int) -> int | None:
    """Where the next page starts after a page at ``offset`` from which ``left`` users
    dropped out of the listing because of the culler's own actions.

    Offset paging over a set that shrinks behind the cursor skips as many users as left, so
    we step back by that many; the overlap this creates when fewer actually left is removed
    by skipping names already seen on the previous page. None when there is no next page.
    """
    if next_offset is None:
        return None
    return max(offset, next_offset - max(0, left))


def listing_state(state_filter: bool, cull_users: bool) -> str | None:
    """The ``state`` filter a cycle lists users with, in its one pass over them.

    With the filter and only servers to cull, just the users with active servers are
    listed. Deleting users needs every user, listed once (None): split into an ``inactive``
    and an ``active`` listing, a user whose stop ends between the two is in neither. Without
    the filter (JupyterHub < 1.3) every user is listed too.
    """
    return "active" if state_filter and not cull_users else None


def cycle_delay(elapsed: float, period: float) -> tuple[float, bool]:
    """Seconds until the next cycle, and whether this one overran its period.

    An overrunning cycle is followed by the next slot on the period grid (missed slots are
    dropped, as a periodic timer does) so cycles never overlap and never bunch up.
    """
    if period <= 0:
        raise ValueError(f"culling period must be > 0, not {period}")
    if elapsed <= period:
        return period - elapsed, False
    return period - (elapsed % period), True
