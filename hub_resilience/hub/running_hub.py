"""The JupyterHub process this code runs in: its handlers' settings, and tasks started in it.

Why: JupyterHub's handlers read ``concurrent_spawn_limit``, ``spawn_throttle_retry_range`` and
the consecutive-failure count from the tornado application's settings on every request, a
dict of its own (``web.Application(**tornado_settings)`` copies ``JupyterHub.tornado_settings``).
Changing that dict is how the admission governor adjusts the hub live without patching it.
And ``configure()`` runs while the hub loads its config, inside the hub's event loop, but
also in the sidecar and in check-config, which load the same config with no hub to run in:
:func:`start_in_hub` starts a background job only in a real hub, once.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Coroutine, MutableMapping
from typing import Any

#: The jobs started in this process, by name (a job is started once).
_started: dict[str, asyncio.Future | None] = {}


def handler_settings() -> MutableMapping[str, Any] | None:
    """The running hub's ``tornado_application.settings``; None outside a hub process or
    before the hub has built its tornado application."""
    from jupyterhub.app import JupyterHub

    if not JupyterHub.initialized():
        return None
    application = getattr(JupyterHub.instance(), "tornado_application", None)
    return None if application is None else application.settings


def start_in_hub(
    name: str, run: Callable[[Any], Coroutine[Any, Any, Any]], *, then: str = ""
) -> bool:
    """Run ``run(app)`` (``app``: the JupyterHub instance) as a task in the running hub's
    event loop, from the loop's next turn, when the hub has applied its whole config
    (hub.config values may follow the configure() call). False, and nothing started,
    outside a hub or when ``name`` was started already. A job that ends with an error is
    logged once, at ERROR: "<name> stopped: <error>; <then>"."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return False
    hub_module = sys.modules.get("jupyterhub.app")
    if hub_module is None or not hub_module.JupyterHub.initialized() or name in _started:
        return False
    app = hub_module.JupyterHub.instance()
    _started[name] = None

    def begin() -> None:
        task = asyncio.ensure_future(run(app))
        task.add_done_callback(lambda done: _report_end(app, name, then, done))
        _started[name] = task

    loop.call_soon(begin)
    return True


def _report_end(app: Any, name: str, then: str, task: asyncio.Future) -> None:
    if not task.cancelled() and task.exception() is not None:
        app.log.error("%s stopped: %s%s", name, task.exception(), f"; {then}" if then else "")
