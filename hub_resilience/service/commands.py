"""The service process's command lines, as ``traitlets.config.Application``s.

Why Applications: like jupyterhub-idle-culler and dask-gateway, every trait is settable as
``--Class.trait=value`` or in a config file, ``--help-all`` lists them all, and a bad value
is refused naming the trait. ``python -m hub_resilience.service`` runs :class:`ServiceApp`
(configure() writes its command line); ``hub-resilience cull`` runs :class:`CullerApp`.
"""
from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Callable
from typing import cast

from tornado import web
from traitlets import Bool, Enum, Integer, TraitError, Unicode
from traitlets.config import Application

from hub_resilience.service.app import MetricsHandler, ResilienceService
from hub_resilience.service.culler import Culler

LOG_FORMAT = "[%(levelname).1s %(asctime)s %(name)s] %(message)s"


class ServiceCommand(Application):
    """What both commands share: a config file, logging, a run in a fresh event loop, and
    exit status 2 with one line for a setting that cannot be used."""

    config_file = Unicode(
        "", config=True, help="A traitlets config file (Python: c.Class.trait = ...)."
    )

    log_level = Enum(
        (0, 10, 20, 30, 40, 50, "DEBUG", "INFO", "WARN", "ERROR", "CRITICAL"),
        default_value=logging.INFO,
        config=True,
        help="Log level, by number or name.",
    )

    def initialize(self, argv: list[str] | None = None) -> None:
        self.refuse_unknown_options(sys.argv[1:] if argv is None else argv)
        super().initialize(argv)
        if self.config_file:
            self.load_config_file(self.config_file)
        self.refuse_unknown_settings()
        # Application validates log_level into a logging level number.
        logging.basicConfig(level=cast(int, self.log_level), format=LOG_FORMAT)

    def refuse_unknown_options(self, argv: list[str]) -> None:
        """A misspelt shorthand (``--timout=60``) is an error too; traitlets only warns."""
        known = {"help", "help-all", "version", *self.aliases, *self.flags}
        for arg in argv:
            if arg == "--":
                break
            name = arg[2:].split("=", 1)[0]
            if arg.startswith("--") and "." not in name and name not in known:
                raise TraitError(
                    f"unknown option --{name}; the options are --{', --'.join(sorted(known))} "
                    "and --<Class>.<trait>=<value> (see --help-all)"
                )

    def refuse_unknown_settings(self) -> None:
        """A misspelt setting is an error, not the warning traitlets gives: a culler that
        silently runs with its default timeout is the failure this command exists to avoid."""
        for cls in [type(self), *self.classes]:
            section = self.config.get(cls.__name__, {})
            unknown = sorted(set(section) - set(cls.class_trait_names(config=True)))
            if unknown:
                valid = ", ".join(sorted(cls.class_trait_names(config=True)))
                raise TraitError(
                    f"unknown setting(s) {', '.join(f'{cls.__name__}.{n}' for n in unknown)}; "
                    f"valid: {valid}"
                )

    async def serve(self) -> int:
        raise NotImplementedError

    def start(self) -> None:
        try:
            status = asyncio.run(self.serve())
        except (TraitError, ValueError, OSError) as e:
            print(f"{self.name}: {e}", file=sys.stderr)
            status = 2
        self.exit(status)

    @classmethod
    def main(cls, argv: list[str] | None = None) -> int:
        """Run the command; returns its exit status (a bad flag value gives 2)."""
        app = cls()
        try:
            app.initialize(argv)
        except SystemExit as e:  # --help (0), or a value traitlets could not parse
            return 2 if e.code else 0
        except (TraitError, ValueError) as e:
            print(f"{cls.name}: {e}", file=sys.stderr)
            return 2
        try:
            app.start()
        except SystemExit as e:
            return int(e.code or 0)
        return 0


def stop_on_signals(stop: Callable[[], None]) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop)


class ServiceApp(ServiceCommand):
    """``python -m hub_resilience.service``: the resilience service beside the hub."""

    name = "hub-resilience service"
    description = (
        "Run the hub-resilience service beside JupyterHub (a managed service that "
        "hub_resilience.configure() sets up): answers requests for stopped servers under "
        "{base_url}user/ without the hub, culls idle servers, and serves /metrics and "
        "/health on its port. The culler uses JUPYTERHUB_API_URL and JUPYTERHUB_API_TOKEN."
    )
    classes = [ResilienceService, Culler]
    aliases = {
        "ip": "ResilienceService.ip",
        "port": "ResilienceService.port",
        "base-url": "ResilienceService.base_url",
        "stopped-status": "ResilienceService.stopped_status",
        "orphan-timeout": "ResilienceService.orphan_timeout",
        "config": "ServiceApp.config_file",
        "log-level": "ServiceApp.log_level",
    }
    flags = {
        name: ({"ResilienceService": {trait: value}}, help)
        for name, trait, value, help in (
            ("named-servers", "named_servers", True, "/user/<name>/<segment>/ may name a server."),
            ("no-named-servers", "named_servers", False, "No named servers."),
            ("no-stopped-handler", "stopped_handler", False, "Do not answer stopped servers."),
            ("no-cull", "cull", False, "Do not run the culler."),
            ("watch-parent", "watch_parent", True, "The parent process is the hub."),
        )
    }

    async def serve(self) -> int:
        # Constructed inside the loop: its asyncio primitives belong to it.
        service = ResilienceService(parent=self)
        stop_on_signals(service.stop)
        try:
            service.listen()
        except OSError as e:
            service.log.error("Cannot listen on %s:%d: %s", service.ip, service.port, e)
            return 1
        await service.run()
        return 0


class CullerApp(ServiceCommand):
    """``hub-resilience cull``: the culler on its own, as a JupyterHub service."""

    name = "hub-resilience cull"
    description = (
        "Stop idle single-user servers, and optionally delete idle users, using "
        "JUPYTERHUB_API_URL and JUPYTERHUB_API_TOKEN like any JupyterHub service. Every "
        "Culler trait is --<trait-with-dashes>=<value> (jupyterhub-idle-culler's --timeout, "
        "--cull-every, --max-age, --concurrency, --cull-users, ... as z2jh writes them) and "
        "--Culler.<trait>=<value>."
    )
    classes = [Culler]
    # Every Culler trait by its dashed name (--cull-every=600), as jupyterhub-idle-culler
    # and z2jh write them; a Bool also as a bare flag (--cull-users).
    aliases = {
        "url": "Culler.api_url",
        **{
            name.replace("_", "-"): f"Culler.{name}"
            for name in Culler.class_trait_names(config=True)
            if name not in ("api_url", "api_token")
        },
        "config": "CullerApp.config_file",
        "metrics-port": "CullerApp.metrics_port",
        "metrics-ip": "CullerApp.metrics_ip",
        "log-level": "CullerApp.log_level",
    }
    flags = {
        name.replace("_", "-"): ({"Culler": {name: True}}, trait.help)
        for name, trait in Culler.class_traits(config=True).items()
        if isinstance(trait, Bool)
    } | {
        "once": (
            {"CullerApp": {"once": True}},
            "Run a single cycle and exit (status 1 if it failed), e.g. from a cron job.",
        ),
    }

    once = Bool(False, config=True, help="Run a single cycle and exit (1 if it failed).")
    metrics_port = Integer(
        0, config=True, help="Serve Prometheus metrics on this port at /metrics (0: don't)."
    )
    metrics_ip = Unicode("127.0.0.1", config=True, help="Address for metrics_port.")

    async def serve(self) -> int:
        culler = Culler(parent=self)
        culler.client  # noqa: B018 - fail now, with a clear message, on a missing URL/token
        culler.backoff_policy()
        metrics_server = None
        if self.metrics_port:
            metrics_server = web.Application([(r"/metrics", MetricsHandler)]).listen(
                self.metrics_port, address=self.metrics_ip
            )
        try:
            if self.once:
                try:
                    report = await culler.run_cycle()
                finally:
                    await culler.close()
                return 1 if report.error else 0
            stop_on_signals(culler.stop)
            await culler.run_forever()
            return 0
        finally:
            if metrics_server is not None:
                metrics_server.stop()


#: The ``hub-resilience`` subcommands that are these Applications.
COMMANDS: dict[str, type[ServiceCommand]] = {"service": ServiceApp, "cull": CullerApp}

