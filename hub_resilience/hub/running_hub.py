"""The settings of the JupyterHub process this code runs in, as its request handlers see them.

Why: JupyterHub's handlers read ``concurrent_spawn_limit``, ``spawn_throttle_retry_range`` and
the consecutive-failure count from the tornado application's settings on every request, a
dict of its own (``web.Application(**tornado_settings)`` copies ``JupyterHub.tornado_settings``).
Changing that dict is how the admission governor adjusts the hub live without patching it.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any


def handler_settings() -> MutableMapping[str, Any] | None:
    """The running hub's ``tornado_application.settings``; None outside a hub process or
    before the hub has built its tornado application."""
    from jupyterhub.app import JupyterHub

    if not JupyterHub.initialized():
        return None
    application = getattr(JupyterHub.instance(), "tornado_application", None)
    return None if application is None else application.settings
