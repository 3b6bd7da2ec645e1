"""Route repair: JupyterHub's own route check, on an interval of its own.

Why: the hub's only periodic ``proxy.check_routes`` runs at the end of
``update_last_activity``, every ``JupyterHub.last_activity_interval``, which configure()
raises to 300 s or more. In z2jh the proxy runs in a pod of its own: after it restarts with
an empty table, every running server's route and the stopped-server handler's ``/user/``
route would stay missing that long, and all their traffic would land on the hub. Checking
every ``HubResilience.route_check_interval`` seconds bounds that gap without making activity
reporting more frequent (docs/service.md, "Routes after a proxy restart").
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from hub_resilience.hub.running_hub import start_in_hub
from hub_resilience.settings import HubResilience

NAME = "Route repair"


async def repair_routes(app: Any, interval: float, log: logging.Logger | None = None) -> None:
    """Every ``interval`` seconds, until cancelled, the route check JupyterHub makes itself
    (it adds missing user, service and ``Proxy.extra_routes`` routes, fixes wrong targets and
    deletes stale routes). A check that fails is one WARNING line; the next one comes
    ``interval`` seconds later, whatever the failure."""
    log = log or app.log
    # JupyterHub's own checks wait for its start to complete (spawners resolved): a check
    # before that would take running servers' routes for stale ones.
    started = getattr(app, "_start_future", None)
    if started is not None:
        await asyncio.shield(started)
    while True:
        await asyncio.sleep(interval)
        try:
            await app.proxy.check_routes(app.users, app._service_map)
        except Exception as e:  # a proxy that is down or slow: try again next time
            log.warning(
                "%s: the route check failed (%s); the next one is in %gs",
                NAME, f"{type(e).__name__}: {e}" if str(e) else type(e).__name__, interval,
            )


async def _repair_as_configured(app: Any) -> None:
    # The hub's final config: hub.config values may follow the configure() call.
    interval = HubResilience(parent=app).route_check_interval
    if interval <= 0:
        return
    app.log.info("%s: the proxy's routes are checked every %gs", NAME, interval)
    await repair_routes(app, interval)


def start_route_repair() -> bool:
    """Start route repair in the running hub (configure() calls this while the hub loads its
    config); False, and nothing started, outside a hub (the sidecar and check-config load
    the same config) or when it runs already."""
    return start_in_hub(NAME, _repair_as_configured, then="routes are checked only every "
                        "JupyterHub.last_activity_interval")
