"""The Kubernetes API requests of the last few seconds, for the admission governor, and
when the API server last answered one, for the failure limit.

Why: the governor decides from what the spawner saw since it last looked (how slow the API
server answered, how often it refused), not from totals since the hub started; the
Prometheus histograms keep only totals. Bounded, so a storm of requests costs no memory. A
request that timed out while others got answers did not fail for want of an API server
(docs/admission.md, "Capacity waits never restart the hub").
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

#: At most this many latencies are kept between two looks (a p90 of the most recent ones).
MAX_SAMPLES = 5000


@dataclass(frozen=True)
class RequestSummary:
    """Requests finished since the last look: how many, how many got 429, their p90 latency
    (None when there were none)."""

    requests: int
    throttled: int
    p90_seconds: float | None


def p90(values: list[float]) -> float | None:
    """The 90th percentile (nearest rank) of ``values``; None for none."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.9 * len(ordered)) - 1)]


@dataclass
class RequestWindow:
    """Collects each request's latency and whether it was refused with 429, until drained."""

    max_samples: int = MAX_SAMPLES
    _latencies: list[float] = field(default_factory=list)
    _requests: int = 0
    _throttled: int = 0
    #: time.monotonic() when the API server last answered a request (any status); not drained.
    last_answer: float | None = None

    def add(self, seconds: float, throttled: bool, answered: bool = True) -> None:
        """One attempt that took ``seconds``; ``answered``: it got an HTTP answer (any
        status), not a timeout or a connection error."""
        if answered:
            self.last_answer = time.monotonic()
        self._requests += 1
        self._throttled += throttled
        if len(self._latencies) >= self.max_samples:
            self._latencies.pop(0)
        self._latencies.append(seconds)

    def drain(self) -> RequestSummary:
        """What was collected since the last drain; starts a new window."""
        summary = RequestSummary(self._requests, self._throttled, p90(self._latencies))
        self._latencies, self._requests, self._throttled = [], 0, 0
        return summary

    def answered_since(self, since: float) -> bool:
        """Whether the API server answered a request at or after ``since`` (time.monotonic())."""
        return self.last_answer is not None and self.last_answer >= since


#: The hub process's window: ResilientKubeSpawner's requests go in, the governor drains it.
RECENT_K8S_REQUESTS = RequestWindow()
