"""A run over time: how many users were ready, pending or refused, and how the hub's event
loop kept up, second by second.

Pure data and arithmetic, no I/O: :class:`~hub_resilience.tools.simulate.Simulation` records
it when asked (``--chart``), :mod:`hub_resilience.tools.chart` draws it, and the figures can
be tested without a hub. docs/benchmarks.md ("Charts") says what each line means.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from hub_resilience.tools.loadreport import HubScrape, histogram_quantile


@dataclass(frozen=True)
class UsersAt:
    """Where the users of a run stood ``elapsed`` seconds after it began."""

    elapsed: float
    ready: int  # got a ready server (including those who have left since)
    pending: int  # arrived, waiting for a server the hub accepted to start (or about to ask)
    refused: int  # arrived, waiting out a 429 or 503 before asking again
    failed: int  # gave up, or their spawn failed


@dataclass(frozen=True)
class LoopAt:
    """JupyterHub's event-loop interval between two readings of its metrics, the later one
    ``elapsed`` seconds after the run began: its 99th percentile (None when nothing was
    observed) and the highest bucket bound it reached."""

    elapsed: float
    p99: float | None
    max: float | None


def users_at(
    elapsed: float, *, arrived: int, ready: int, failed: int, refused: int
) -> UsersAt:
    """The users' standing from a run's counters; pending is what is left of the arrived.

    Raises ValueError when the counters contradict each other (a bug in the caller), so that
    a chart never shows a negative count.
    """
    pending = arrived - ready - failed - refused
    if min(arrived, ready, failed, refused, pending) < 0:
        raise ValueError(
            f"inconsistent counts: {arrived} arrived, {ready} ready, {failed} failed, "
            f"{refused} refused"
        )
    return UsersAt(elapsed, ready, pending, refused, failed)


def highest_observed(before: Mapping[float, float], after: Mapping[float, float]) -> float | None:
    """The upper bound of the highest bucket of a cumulative histogram (upper bound -> count)
    that gained an observation between two readings: the smallest bound below which every
    new observation fell (the highest finite bound when one fell in ``+Inf``); None when
    nothing was observed."""
    bounds = sorted(after)
    if not bounds:
        return None
    total = after[bounds[-1]] - before.get(bounds[-1], 0.0)
    if total <= 0:
        return None
    finite = [b for b in bounds if not math.isinf(b)]
    for bound in bounds:
        if after[bound] - before.get(bound, 0.0) >= total:
            if math.isinf(bound):
                return finite[-1] if finite else None
            return bound
    return None


def loop_between(elapsed: float, before: HubScrape, after: HubScrape) -> LoopAt:
    """The hub's event-loop interval between two scrapes of the same hub process."""
    return LoopAt(
        elapsed,
        histogram_quantile(0.99, before.loop_intervals, after.loop_intervals),
        highest_observed(before.loop_intervals, after.loop_intervals),
    )


@dataclass
class Timeline:
    """One run's users and event loop over time, named for the chart's column."""

    label: str
    users: list[UsersAt] = field(default_factory=list)
    loop: list[LoopAt] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "users": [asdict(u) for u in self.users],
            "loop": [asdict(x) for x in self.loop],
        }


def loop_series(timeline: Timeline) -> tuple[Sequence[float], Sequence[float]]:
    """(elapsed, p99 in milliseconds) of the readings that observed something."""
    points = [(x.elapsed, x.p99 * 1000) for x in timeline.loop if x.p99 is not None]
    return [t for t, _ in points], [v for _, v in points]
