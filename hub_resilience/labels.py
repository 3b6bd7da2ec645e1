"""The one base class for fixed sets of values (metric labels, modes, policies).

Why: a value that is an Enum member cannot drift from the set it belongs to, and a metric
whose label values are known up front can export every series at zero from the start (as
``jupyterhub.metrics`` does). ``str(member)`` is its value, so a member can be passed to
``prometheus_client`` and compared with the plain strings found in config and pods.
"""

from __future__ import annotations

import enum


class LabelEnum(str, enum.Enum):
    """A string Enum whose ``str()`` is its value (``enum.StrEnum`` from Python 3.11)."""

    def __str__(self) -> str:
        return str(self.value)

    @classmethod
    def values(cls) -> tuple[str, ...]:
        """Every member's value, in declaration order (for traitlets' Enum traits)."""
        return tuple(member.value for member in cls)
