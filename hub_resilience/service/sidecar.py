"""``python -m hub_resilience.service.sidecar``: the service in its own container of the hub pod.

Why: with ``HubResilience.service_mode = "container"`` the hub does not start the service, so
that the stopped-server handler and the culler never compete with the hub for its CPU. This
container runs the hub's own configuration file (the same mounts as the hub container), takes
the command configure() decided there, and becomes that service (docs/service.md).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from traitlets.config.loader import PyFileConfigLoader

from hub_resilience.configure import last_call, read_hub_facts
from hub_resilience.settings import HubResilience

#: Where z2jh's hub container finds its configuration; the sidecar mounts the same files.
Z2JH_CONFIG = "/usr/local/etc/jupyterhub/jupyterhub_config.py"


class SidecarError(RuntimeError):
    """The hub's configuration does not describe a service for this container to run."""


def service_to_run(config_file: Path) -> tuple[list[str], dict[str, str]]:
    """The command and environment of the service the hub's config wires, read by running
    that config file as the hub does (its drop-in calls configure())."""
    config = PyFileConfigLoader(config_file.name, path=str(config_file.parent)).load_config()
    call = last_call()
    wiring = call.wiring if call is not None else None
    if wiring is None or wiring.command is None:
        raise SidecarError(
            f"{config_file} did not wire a hub-resilience service (is the drop-in there, and "
            "HubResilience.enabled true?)"
        )
    if wiring.service_mode != "container":
        raise SidecarError(
            'HubResilience.service_mode is "managed": the hub starts the service itself, so '
            'this container must not; set it to "container" or remove the container'
        )
    name = HubResilience(config=config).service_name
    services = [s for s in read_hub_facts(config).services if s.get("name") == name]
    token = next((s.get("api_token") for s in services if s.get("api_token")), None)
    if not token:
        raise SidecarError(f"the hub's config gives the service {name!r} no api_token")
    return wiring.command, {"JUPYTERHUB_API_TOKEN": token, "JUPYTERHUB_SERVICE_NAME": name}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m hub_resilience.service.sidecar",
        description="Run the hub-resilience service as the hub's config wires it, in a "
        "container of its own in the hub pod.",
    )
    parser.add_argument(
        "config_file", nargs="?", default=Z2JH_CONFIG,
        help=f"the hub's jupyterhub_config.py (default: {Z2JH_CONFIG}, as z2jh mounts it)",
    )
    args = parser.parse_args(argv)
    try:
        command, env = service_to_run(Path(args.config_file))
    except (SidecarError, OSError, ValueError) as e:
        print(f"hub-resilience sidecar: {e}", file=sys.stderr)
        return 2
    print(f"hub-resilience sidecar: starting {' '.join(command[1:3])}, as the hub's config says")
    sys.stdout.flush()
    os.execve(command[0], command, {**os.environ, **env})
    return 0  # pragma: no cover - execve does not return


if __name__ == "__main__":
    sys.exit(main())
