"""The local hub's process bookkeeping (hub_resilience.tools.localhub)."""

from __future__ import annotations

import os
import subprocess
import sys

from hub_resilience.tools.localhub import processes_with_env


def test_a_hubs_services_are_found_by_its_api_url_in_their_environment() -> None:
    """JupyterHub leaves its services running when it exits by itself (its consecutive
    failure limit); each carries the hub's JUPYTERHUB_API_URL, which finds it."""
    url = "http://127.0.0.1:1/hub/api"
    env = dict(os.environ, JUPYTERHUB_API_URL=url + "/")
    service = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], env=env)
    try:
        assert processes_with_env("JUPYTERHUB_API_URL", url) == [service.pid]
        assert processes_with_env("JUPYTERHUB_API_URL", "http://127.0.0.1:2/hub/api") == []
    finally:
        service.kill()
        service.wait()
