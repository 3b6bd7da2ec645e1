"""Activity intervals that keep activity reporting within what the hub can absorb.

Why: single-user activity POSTs and the hub's proxy poll both grow with the number of
running servers; on a large hub JupyterHub's defaults become a steady storm on one process.
:func:`tune_activity` sizes both intervals for a request budget, as a pure function; the
formula, its guarantees and worked examples are in docs/activity.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

#: JupyterHub's defaults, which tuning never goes below.
DEFAULT_SINGLEUSER_INTERVAL = 300
DEFAULT_HUB_INTERVAL = 300
DEFAULT_RESOLUTION = 30
ROUNDING = 30


@dataclass(frozen=True)
class ActivitySettings:
    """The three settings, and what they cost the hub at the expected number of servers."""

    singleuser_interval: int
    """``JUPYTERHUB_ACTIVITY_INTERVAL`` in each single-user server's environment (s)."""
    hub_interval: int
    """``JupyterHub.last_activity_interval`` (s)."""
    activity_resolution: int
    """``JupyterHub.activity_resolution`` (s)."""
    expected_rate: float
    """Activity requests/writes per second the hub sees with these settings."""
    budget_met: bool
    """False when ``max_interval`` kept an interval below what the budget needs."""


def _interval(servers: int, rate: float, floor: int, cap: int) -> tuple[int, bool]:
    needed = servers / rate
    rounded = max(floor, ROUNDING * math.ceil(needed / ROUNDING))
    return min(rounded, cap), rounded <= cap


def tune_activity(
    expected_concurrent_servers: int,
    activity_requests_per_second: float,
    *,
    singleuser_share: float = 0.5,
    max_interval: int = 3600,
) -> ActivitySettings:
    """Activity settings for ``expected_concurrent_servers`` within
    ``activity_requests_per_second``.

    Raises ValueError naming the argument for a negative server count, a budget that is not
    positive, a share outside (0, 1) or a cap below JupyterHub's defaults.
    """
    servers = expected_concurrent_servers
    if isinstance(servers, bool) or not isinstance(servers, int):
        raise ValueError(f"expected_concurrent_servers must be a whole number, got {servers!r}")
    if servers < 0:
        raise ValueError(f"expected_concurrent_servers must be >= 0, got {servers}")
    if not activity_requests_per_second > 0 or math.isinf(activity_requests_per_second):
        raise ValueError(
            f"activity_requests_per_second must be a positive number of requests per second, "
            f"got {activity_requests_per_second!r}"
        )
    if not 0 < singleuser_share < 1:
        raise ValueError(f"singleuser_share must be between 0 and 1, got {singleuser_share!r}")
    if max_interval < DEFAULT_SINGLEUSER_INTERVAL:
        raise ValueError(
            f"max_interval must be at least JupyterHub's default of "
            f"{DEFAULT_SINGLEUSER_INTERVAL} s, got {max_interval}"
        )
    singleuser, su_met = _interval(
        expected_concurrent_servers,
        activity_requests_per_second * singleuser_share,
        DEFAULT_SINGLEUSER_INTERVAL,
        max_interval,
    )
    hub, hub_met = _interval(
        expected_concurrent_servers,
        activity_requests_per_second * (1 - singleuser_share),
        DEFAULT_HUB_INTERVAL,
        max_interval,
    )
    resolution = max(DEFAULT_RESOLUTION, singleuser // 10)
    rate = expected_concurrent_servers / singleuser + expected_concurrent_servers / hub
    return ActivitySettings(singleuser, hub, resolution, rate, su_met and hub_met)
