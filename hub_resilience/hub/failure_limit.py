"""Which failed spawns count toward JupyterHub's ``consecutive_failure_limit``.

Why: z2jh sets ``hub.consecutiveFailureLimit: 5`` and JupyterHub exits after that many failed
spawns in a row. During an event most failures are capacity (no node, a scale-up too slow,
an API server throttling) or a user's own profile (its image, its resources): a restart
cannot cure those and costs minutes of hub start-up. JupyterHub 5.5 counts every failure, 6.x
every error, and the spawner's failures are errors for both; so the spawner forgives the ones
a restart cannot cure, taking one off the count that JupyterHub is about to add to
(docs/admission.md).
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

from hub_resilience.hub.spawn_phases import SpawnOutcome

#: Failures a restart of the hub cannot cure: the cluster's capacity or the user's profile.
#: The others (the API server unreachable, a dead watch, an unknown error, a server that
#: never answers the hub) may be the hub's own state, and still count.
NOT_CURED_BY_RESTART = frozenset(
    {
        SpawnOutcome.K8S_THROTTLED,
        SpawnOutcome.QOS_REFUSED,
        SpawnOutcome.UNSCHEDULABLE,
        SpawnOutcome.IMAGE_PULL_FAILURE,
        SpawnOutcome.CRASH,
        SpawnOutcome.TIMEOUT,
    }
)

#: The key JupyterHub keeps its consecutive-failure count under, in the handlers' settings.
FAILURE_COUNT = "failure_count"


def counts_toward_failure_limit(outcome: SpawnOutcome, *, api_answered: bool = False) -> bool:
    """Whether a spawn that failed so may stop the hub at consecutive_failure_limit.

    ``api_answered``: the API server answered other requests while the failed one was being
    tried. It was reachable then: the request's timeouts were load (the API server's, or the
    hub's own event loop too busy to read the answers in time), which a restart does not
    cure; the hub would come back to the same crowd."""
    if outcome is SpawnOutcome.K8S_API_ERROR and api_answered:
        return False
    return outcome not in NOT_CURED_BY_RESTART


def forgive_failure(settings: MutableMapping[str, Any]) -> None:
    """Take one failure off JupyterHub's consecutive count, before JupyterHub adds it (when
    the spawn's future fails, after the spawner has raised): the count stays where it was.
    Another spawn ending in between moves the count by one at most, until the next one ends."""
    settings[FAILURE_COUNT] = settings.get(FAILURE_COUNT, 0) - 1
