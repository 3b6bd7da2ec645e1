"""Run zero-to-jupyterhub's own hub configuration for some helm values, offline.

Why: what a z2jh hub does with its values is decided by the chart's ``jupyterhub_config.py``
and ``z2jh.py``, not by the values alone; running those two files is the only faithful way to
know, before a ``helm upgrade``, what the hub will be configured with (``hub-resilience
check-config``, and the tests).

The files read the chart's values from ``/usr/local/etc/jupyterhub/secret/values.yaml``,
resource names from ``config/``, secrets from ``secret/``, and run every file of
``jupyterhub_config.d/`` at the end. :func:`chart_files` writes that tree for some values into
a folder and copies the two files with that folder in place of ``/usr/local/etc/jupyterhub``,
which is the only change made to them. ``hub.extraFiles`` mounted into
``jupyterhub_config.d`` are written there, as the chart's Secret would mount them. What the
Kubernetes Services would provide (``*_SERVICE_PORT``) is in :data:`SERVICE_ENV`; resource
names are the chart's defaults (``hub``, ``proxy-api``, ...).

The chart's files are found in a folder laid out like ``shared/z2jh/4.4.0`` (the files side
by side) or in an unpacked chart (``helm pull jupyterhub/jupyterhub --version 4.4.0
--untar``); :func:`default_chart` looks where the repository's workspace keeps them.
"""
from __future__ import annotations

import copy
import os
import secrets
import sys
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from tornado.httpclient import AsyncHTTPClient
from traitlets.config import Config
from traitlets.config.loader import PyFileConfigLoader

#: Environment variable naming the folder that holds the z2jh files (``shared/z2jh``).
Z2JH_DIR_ENV = "HUB_RESILIENCE_Z2JH_DIR"

#: The z2jh release whose hub configuration is run by default (a subfolder of that folder).
RELEASE = "4.4.0"

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

#: The two layouts of the chart's files, relative to the folder given: (values,
#: jupyterhub_config.py, z2jh.py).
LAYOUTS = (
    ("values.yaml", "jupyterhub_config.py", "z2jh.py"),  # shared/z2jh/4.4.0
    ("values.yaml", "files/hub/jupyterhub_config.py", "files/hub/z2jh.py"),  # helm pull --untar
)


class ChartNotFoundError(FileNotFoundError):
    """The z2jh chart's files are not where they were looked for; the message says where."""


@dataclass(frozen=True)
class Chart:
    """Where one z2jh chart's files are."""

    folder: Path
    values: Path
    """The chart's default ``values.yaml``."""
    jupyterhub_config: Path
    z2jh: Path

    def default_values(self) -> dict[str, Any]:
        """A fresh copy of the chart's default values."""
        values = yaml.safe_load(self.values.read_text())
        return values if isinstance(values, dict) else {}

    def to_json(self) -> dict[str, str]:
        return {name: str(getattr(self, name)) for name in
                ("folder", "values", "jupyterhub_config", "z2jh")}

    @classmethod
    def from_json(cls, data: Mapping[str, str]) -> Chart:
        return cls(**{name: Path(value) for name, value in data.items()})


def find_chart(folder: Path | str) -> Chart:
    """The chart files in ``folder`` (either layout, or an unpacked chart's ``jupyterhub/``
    inside it); :class:`ChartNotFoundError` saying what was expected otherwise."""
    folder = Path(folder)
    for base in (folder, folder / "jupyterhub"):
        for layout in LAYOUTS:
            paths = [base / name for name in layout]
            if all(path.is_file() for path in paths):
                return Chart(base, *paths)
    raise ChartNotFoundError(
        f"{folder} does not hold z2jh's chart files: expected jupyterhub_config.py, z2jh.py "
        "and values.yaml side by side (like shared/z2jh/4.4.0), or an unpacked chart "
        "(`helm pull jupyterhub/jupyterhub --version 4.4.0 --untar`: values.yaml and "
        "files/hub/jupyterhub_config.py, files/hub/z2jh.py)"
    )


def candidate_dirs(*starts: Path) -> list[Path]:
    """Folders that may hold the z2jh files (``shared/z2jh``), in the order they are tried:
    the one :data:`Z2JH_DIR_ENV` names, then ``shared/z2jh`` in each of ``starts`` and every
    folder above it."""
    candidates = []
    if os.environ.get(Z2JH_DIR_ENV):
        candidates.append(Path(os.environ[Z2JH_DIR_ENV]))
    for start in starts:
        start = Path(start).resolve()
        candidates += [folder / "shared" / "z2jh" for folder in (start, *start.parents)]
    return list(dict.fromkeys(candidates))


def default_chart(starts: Iterable[Path] | None = None) -> Chart:
    """The :data:`RELEASE` chart files of the first candidate folder that has them, looking
    from the current directory and from this package (or from ``starts``)."""
    if starts is None:
        starts = (Path.cwd(), Path(__file__).parent)
    tried = [folder / RELEASE for folder in candidate_dirs(*starts)]
    for folder in tried:
        try:
            return find_chart(folder)
        except ChartNotFoundError:
            continue
    listed = "".join(f"\n  - {folder}" for folder in tried)
    raise ChartNotFoundError(
        f"z2jh {RELEASE}'s chart files were not found; pass --chart DIR (an unpacked chart, "
        f"`helm pull jupyterhub/jupyterhub --version {RELEASE} --untar`) or set {Z2JH_DIR_ENV} "
        f"to a folder with a {RELEASE}/ subfolder. Tried:{listed}"
    )


def merge_values(base: Mapping[str, Any], overlay: Mapping[str, Any]) -> dict:
    """Helm's merge of user values into chart values, as a new dict.

    Maps merge key by key; lists and scalars replace; an overlay value of ``None`` deletes
    the key (helm's way to unset a chart default).
    """
    merged = copy.deepcopy(dict(base))
    for key, value in overlay.items():
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = merge_values(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def released_values(*overlays: Mapping[str, Any], chart: Chart | None = None) -> dict[str, Any]:
    """The chart's defaults with ``overlays`` merged in, as ``helm -f ... -f`` does."""
    values = (chart or default_chart()).default_values()
    for overlay in overlays:
        values = merge_values(values, overlay)
    return values


def chart_files(directory: Path, values: Mapping[str, Any], chart: Chart | None = None) -> Path:
    """Write the hub pod's ``/usr/local/etc/jupyterhub`` for ``values`` under ``directory``;
    returns the path of the (relocated) ``jupyterhub_config.py``."""
    chart = chart or default_chart()
    etc = directory / "etc"
    for sub in ("secret", "config", "jupyterhub_config.d"):
        (etc / sub).mkdir(parents=True, exist_ok=True)
    (etc / "secret" / "values.yaml").write_text(yaml.safe_dump(dict(values)))
    (etc / "secret" / "hub.config.JupyterHub.cookie_secret").write_text(secrets.token_hex(32))
    (etc / "secret" / "hub.config.CryptKeeper.keys").write_text(secrets.token_hex(32))
    hub = values.get("hub") or {}
    for key, service in (hub.get("services") or {}).items():
        token = (service or {}).get("apiToken") or secrets.token_hex(24)
        (etc / "secret" / f"hub.services.{key}.apiToken").write_text(token)
    for name in RESOURCE_NAMES:
        (etc / "config" / name).write_text(name)
    for spec in (hub.get("extraFiles") or {}).values():
        mount = (spec or {}).get("mountPath", "")
        if mount.startswith(CONFIG_D) and "stringData" in spec:
            (etc / "jupyterhub_config.d" / mount[len(CONFIG_D):]).write_text(spec["stringData"])
    for source in (chart.jupyterhub_config, chart.z2jh):
        text = source.read_text().replace(CHART_ETC, str(etc))
        (etc / source.name).write_text(text)
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


def load_config(directory: Path, values: Mapping[str, Any], chart: Chart | None = None) -> Config:
    """The Config z2jh's hub configuration builds from ``values``, loaded here (offline, as
    ``jupyterhub -f`` loads it), with the drop-ins of ``hub.extraFiles`` run at its end.

    Exceptions of the configuration (and z2jh's ``sys.exit``) propagate as they are.
    """
    path = chart_files(directory, values, chart)
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
        sys.modules.pop("z2jh", None)
