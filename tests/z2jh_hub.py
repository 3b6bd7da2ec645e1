"""Run zero-to-jupyterhub 4.4.0's own hub configuration, offline or in a real hub.

How the chart's files are run is the package's (:mod:`hub_resilience.tools.z2jh_chart`, which
``hub-resilience check-config`` runs too); this module binds it to the chart files the test
suite uses (``tests/z2jh.py`` finds them) and adds what only tests need: :func:`exec_source`,
which runs the relocated files in a local test hub.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from traitlets.config import Config

from hub_resilience.tools import z2jh_chart
from hub_resilience.tools.z2jh_chart import (
    CHART_ETC,
    CONFIG_D,
    RESOURCE_NAMES,
    SERVICE_ENV,
    service_environment,
)
from tests.z2jh import z2jh_dir

__all__ = [
    "CHART_ETC", "CONFIG_D", "RESOURCE_NAMES", "SERVICE_ENV", "chart_files", "exec_source",
    "load_config", "released_chart", "released_values", "service_environment",
]


def released_chart() -> Path:
    """The folder with the 4.4.0 files."""
    return z2jh_dir() / z2jh_chart.RELEASE


def _chart() -> z2jh_chart.Chart:
    return z2jh_chart.find_chart(released_chart())


def released_values(*overlays: Mapping[str, Any]) -> dict[str, Any]:
    """The 4.4.0 chart's defaults with ``overlays`` merged in, as ``helm -f ... -f`` does."""
    return z2jh_chart.released_values(*overlays, chart=_chart())


def chart_files(directory: Path, values: Mapping[str, Any]) -> Path:
    """The hub pod's ``/usr/local/etc/jupyterhub`` for ``values``, written under
    ``directory`` (:func:`hub_resilience.tools.z2jh_chart.chart_files`)."""
    return z2jh_chart.chart_files(directory, values, _chart())


def load_config(directory: Path, values: Mapping[str, Any]) -> Config:
    """The Config z2jh's hub configuration builds from ``values``, loaded in this process
    (:func:`hub_resilience.tools.z2jh_chart.load_config`)."""
    return z2jh_chart.load_config(directory, values, _chart())


def exec_source(config_path: Path, service_name: str) -> str:
    """Config source for a local test hub (appended to tests/support/hub.py's base config)
    that runs z2jh's (relocated) file with the hub's ``c``.

    The only values added are the test harness's: where this hub listens and finds its
    proxy (loopback ports the base config chose), and the base config's admin-token
    service, which z2jh's file would otherwise drop (it sets ``services = []``).
    """
    etc = config_path.parent
    return f"""
import runpy
from pathlib import Path

import yaml

_etc = Path({str(etc)!r})
_values = yaml.safe_load((_etc / "secret" / "values.yaml").read_text())
_hub = f"http://127.0.0.1:{{c.JupyterHub.hub_port}}"
_config = _values["hub"].setdefault("config", {{}})
_config.setdefault("JupyterHub", {{}}).update(hub_bind_url=_hub, hub_connect_url=_hub)
_config.setdefault("ConfigurableHTTPProxy", {{}})["api_url"] = c.ConfigurableHTTPProxy.api_url
[_tests] = c.JupyterHub.services
_values["hub"].setdefault("services", {{}})[_tests["name"]] = {{}}
(_etc / "secret" / f"hub.services.{{_tests['name']}}.apiToken").write_text(_tests["api_token"])
_values["hub"].setdefault("loadRoles", {{}})["admin"] = {{"services": [_tests["name"]]}}
(_etc / "secret" / "values.yaml").write_text(yaml.safe_dump(_values))
runpy.run_path({str(config_path)!r}, init_globals={{"get_config": get_config}})
"""
