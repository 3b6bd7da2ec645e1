"""How long to wait before trying an overloaded API again.

Pure arithmetic, no I/O, so the same policy serves the JupyterHub API client and the
Kubernetes API calls of the spawner, and can be tested exhaustively. Why full jitter, and
how ``Retry-After`` is honoured: docs/architecture.md ("Talking to overloaded APIs").
"""
from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from datetime import timezone
from email.utils import parsedate_to_datetime


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait according to a ``Retry-After`` header value, or None when unusable.

    Accepts both forms of RFC 9110: delta-seconds (``"120"``; a decimal fraction is tolerated)
    and an HTTP-date (``"Wed, 21 Oct 2015 07:28:00 GMT"``, measured against ``now``, a Unix
    time defaulting to the current time; a date in the past means "now", 0.0). Missing,
    garbage, negative or non-finite values give None, so the caller falls back to its own
    backoff instead of trusting a broken header.
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        if not math.isfinite(seconds) or seconds < 0:
            return None
        return seconds
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    if when.tzinfo is None:
        # HTTP-dates are always GMT; email.utils returns a naive datetime for "-0000".
        when = when.replace(tzinfo=timezone.utc)
    reference = time.time() if now is None else now
    return max(0.0, when.timestamp() - reference)


@dataclass(frozen=True)
class BackoffPolicy:
    """When and how often to retry a request the server refused or failed.

    - ``base``, ``cap``: full-jitter exponential backoff, ``uniform(0, min(cap, base*2**n))``
      after the n-th failed attempt (n counts from 0).
    - ``max_attempts``: attempts in total, the first one included.
    - ``deadline``: seconds from the first attempt after which no new attempt starts.
    - ``retry_after_cap``: a server's ``Retry-After`` is honoured up to this many seconds, so a
      misconfigured hub cannot park a client for a day.
    - ``retry_after_jitter``: the fraction of the ``Retry-After`` delay added at random on top
      of it (at least ``base`` seconds' worth), so clients told the same delay spread out.
    """

    base: float = 0.5
    cap: float = 30.0
    max_attempts: int = 6
    deadline: float = 120.0
    retry_after_cap: float = 60.0
    retry_after_jitter: float = 0.1

    def __post_init__(self) -> None:
        checks = {
            "base": self.base > 0,
            "cap": self.cap >= self.base,
            "max_attempts": self.max_attempts >= 1,
            "deadline": self.deadline > 0,
            "retry_after_cap": self.retry_after_cap >= 0,
            "retry_after_jitter": self.retry_after_jitter >= 0,
        }
        for name, ok in checks.items():
            if not ok:
                raise ValueError(
                    f"BackoffPolicy.{name}={getattr(self, name)!r} is out of range "
                    "(base > 0, cap >= base, max_attempts >= 1, deadline > 0, "
                    "retry_after_cap >= 0, retry_after_jitter >= 0)"
                )

    def backoff_ceiling(self, attempt: int) -> float:
        """Upper bound of the jittered delay after failed attempt number ``attempt`` (from 0)."""
        if attempt < 0:
            raise ValueError(f"attempt must be >= 0, not {attempt}")
        # 2**attempt overflows float for absurd attempt numbers; the cap wins long before.
        if attempt >= 64:
            return self.cap
        return min(self.cap, self.base * (2**attempt))

    def retry_after_spread(self, retry_after: float) -> float:
        """The most jitter added on top of a (capped) ``Retry-After`` delay."""
        return max(min(retry_after, self.retry_after_cap) * self.retry_after_jitter, self.base)

    def delay(
        self, attempt: int, retry_after: float | None, rng: random.Random | None = None
    ) -> float:
        """Seconds to wait after failed attempt ``attempt`` (0 for the first failure).

        With a usable ``retry_after`` (seconds, see :func:`parse_retry_after`): that value,
        capped at ``retry_after_cap``, plus ``uniform(0, retry_after_spread)``. Without one:
        ``uniform(0, backoff_ceiling(attempt))``.
        """
        draw = (rng or random).uniform
        if retry_after is not None and retry_after >= 0 and math.isfinite(retry_after):
            honoured = min(retry_after, self.retry_after_cap)
            return honoured + draw(0.0, self.retry_after_spread(retry_after))
        return draw(0.0, self.backoff_ceiling(attempt))

    def should_retry(self, attempts_made: int, elapsed: float, next_delay: float) -> bool:
        """Whether another attempt may start after ``attempts_made`` attempts took ``elapsed``
        seconds and the next one would wait ``next_delay`` more."""
        return attempts_made < self.max_attempts and elapsed + next_delay <= self.deadline
