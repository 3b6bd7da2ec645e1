"""Run zero-to-jupyterhub 4.4.0's own hub configuration, offline or in a real hub.

z2jh's ``jupyterhub_config.py`` and ``z2jh.py`` (``../shared/z2jh/4.4.0/``, see its README)
read the chart's values from ``/usr/local/etc/jupyterhub/secret/values.yaml``, resource names
from ``config/``, secrets from ``secret/``, and run every file of ``jupyterhub_config.d/``
at the end. :func:`chart_files` writes that tree for some values into a folder of the test's
and copies the two files with that folder in place of ``/usr/local/etc/jupyterhub``, which is
the only change made to them. ``hub.extraFiles`` mounted into ``jupyterhub_config.d`` are
written there, as the chart's Secret would mount them.

What the Kubernetes Services would provide (``*_SERVICE_PORT``) is in :data:`SERVICE_ENV`;
resource names are the chart's defaults (``hub``, ``proxy-api``, ...).
"""
from __future__ import annotations

import os
import secrets
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml
from tornado.httpclient import AsyncHTTPClient
from traitlets.config import Config
from traitlets.config.loader import PyFileConfigLoader

from tests.z2jh import merge_values, z2jh_dir

#: Where the chart mounts the hub's configuration in the hub pod.
CHART_ETC = "/usr/local/etc/jupyterhub"
CONFIG_D = f"{CHART_ETC}/jupyterhub_config.d/"

#: The ConfigMap's resource names (z2jh's defaults, without a fullnameOverride prefix).
RESOURCE_NAMES = (
    "hub", "proxy-api", "proxy-public", "image-pull-secret", "user-scheduler", "priority",
    "singleuser", "hub-existing-secret",
)

#: What Kubernetes sets in the hub pod for the chart's Services, as the config reads it.
SERVICE_ENV = {
    "HUB_SERVICE_PORT": "8081",
    "PROXY_API_SERVICE_PORT": "8001",
    "POD_NAMESPACE": "jhub",
}


def released_chart() -> Path:
    """The folder with the 4.4.0 files."""
    return z2jh_dir() / "4.4.0"


def released_values(*overlays: Mapping[str, Any]) -> dict[str, Any]:
    """The 4.4.0 chart's defaults with ``overlays`` merged in, as ``helm -f ... -f`` does."""
    values = yaml.safe_load((released_chart() / "values.yaml").read_text())
    for overlay in overlays:
        values = merge_values(values, dict(overlay))
    return values


def chart_files(directory: Path, values: Mapping[str, Any]) -> Path:
    """Write the hub pod's ``/usr/local/etc/jupyterhub`` for ``values`` under ``directory``;
    returns the path of the (relocated) ``jupyterhub_config.py``."""
    etc = directory / "etc"
    for sub in ("secret", "config", "jupyterhub_config.d"):
        (etc / sub).mkdir(parents=True, exist_ok=True)
    (etc / "secret" / "values.yaml").write_text(yaml.safe_dump(dict(values)))
    (etc / "secret" / "hub.config.JupyterHub.cookie_secret").write_text(secrets.token_hex(32))
    (etc / "secret" / "hub.config.CryptKeeper.keys").write_text(secrets.token_hex(32))
    for key, service in (values.get("hub", {}).get("services") or {}).items():
        token = service.get("apiToken") or secrets.token_hex(24)
        (etc / "secret" / f"hub.services.{key}.apiToken").write_text(token)
    for name in RESOURCE_NAMES:
        (etc / "config" / name).write_text(name)
    for spec in (values.get("hub", {}).get("extraFiles") or {}).values():
        mount = spec.get("mountPath", "")
        if mount.startswith(CONFIG_D) and "stringData" in spec:
            (etc / "jupyterhub_config.d" / mount[len(CONFIG_D):]).write_text(spec["stringData"])
    for name in ("jupyterhub_config.py", "z2jh.py"):
        text = (released_chart() / name).read_text().replace(CHART_ETC, str(etc))
        (etc / name).write_text(text)
    return etc / "jupyterhub_config.py"


@contextmanager
def service_environment(extra: Mapping[str, str] | None = None) -> Iterator[None]:
    """:data:`SERVICE_ENV` (and ``extra``) in this process's environment, then restored."""
    env = {**SERVICE_ENV, **(extra or {})}
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def load_config(directory: Path, values: Mapping[str, Any]) -> Config:
    """The Config z2jh's hub configuration builds from ``values``, loaded here (offline, as
    ``jupyterhub -f`` loads it), with the drop-ins of ``hub.extraFiles`` run at its end."""
    path = chart_files(directory, values)
    # z2jh.py is imported by name and caches the values it read: forget an earlier copy.
    sys.modules.pop("z2jh", None)
    # The file switches tornado's AsyncHTTPClient to curl for the whole process, as a hub
    # wants; this process's other clients must keep their own.
    saved = AsyncHTTPClient._save_configuration()
    try:
        with service_environment():
            return PyFileConfigLoader(path.name, path=str(path.parent)).load_config()
    finally:
        AsyncHTTPClient._restore_configuration(saved)


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
