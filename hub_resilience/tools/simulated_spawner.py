"""A lightweight stand-in for single-user servers: tests, the local demo, load rehearsals.

Hundreds of real ``jupyterhub-singleuser`` processes do not fit on a laptop or a two-core
CI runner, so every :class:`SimulatedSpawner` of a hub points at one shared loopback
responder that JupyterHub takes for real servers. How the responder lives and dies, and what
can be simulated, is in docs/benchmarks.md ("Simulated servers").
"""
from __future__ import annotations

import argparse
import asyncio
import atexit
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
from typing import Any, ClassVar
from urllib.parse import urlparse

from jupyterhub.spawner import Spawner
from traitlets import Bool, Bunch, Float, Int, TraitError, validate

from hub_resilience.tools.simulated_cluster import Seat, SimulatedCluster
from hub_resilience.waiting import set_within

LOOPBACK = "127.0.0.1"


class SimulatedStartFailure(Exception):
    """Raised by a start that ``start_failure_rate`` (or ``user_options``) made fail."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


class _Responder:
    """The one responder process of this hub process (class-level bookkeeping)."""

    process: ClassVar[subprocess.Popen | None] = None
    port: ClassVar[int | None] = None
    lock: ClassVar[asyncio.Lock | None] = None
    atexit_registered: ClassVar[bool] = False
    ever_started: ClassVar[bool] = False

    @classmethod
    def alive(cls) -> bool:
        # Popen.poll() also reaps the process if it died, so it never lingers as a zombie.
        return cls.process is not None and cls.process.poll() is None

    @classmethod
    def stop(cls) -> None:
        """Terminate and reap the responder (registered with atexit)."""
        proc, cls.process, cls.port = cls.process, None, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    @staticmethod
    def _spawn(port: int) -> subprocess.Popen:
        # A plain Popen (fork and exec return at once; readiness is awaited asynchronously)
        # rather than an asyncio subprocess, so that atexit can terminate and reap it
        # synchronously after the hub's event loop has closed.
        return subprocess.Popen(
            [
                sys.executable, "-m", "hub_resilience.tools.simulated_spawner",
                "--port", str(port), "--parent-pid", str(os.getpid()),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
        )

    @classmethod
    async def ensure(cls, port: int | None, startup_timeout: float = 15.0) -> int | None:
        """The responder's port, starting it first if needed (on ``port`` when given).

        Returns None when a responder already runs on another port than the one asked for,
        or when none could be started on the port asked for.
        """
        if cls.lock is None:
            cls.lock = asyncio.Lock()
        async with cls.lock:
            if cls.alive():
                return cls.port if port in (None, cls.port) else None
            chosen = port or _free_port()
            proc = cls._spawn(chosen)
            cls.process, cls.port, cls.ever_started = proc, chosen, True
            if not cls.atexit_registered:
                atexit.register(cls.stop)
                cls.atexit_registered = True
            deadline = time.monotonic() + startup_timeout
            while time.monotonic() < deadline:
                if proc.poll() is not None:
                    break
                try:
                    _, writer = await asyncio.open_connection(LOOPBACK, chosen)
                except OSError:
                    await asyncio.sleep(0.05)
                    continue
                writer.close()
                await writer.wait_closed()
                return chosen
            cls.stop()
            return None


class SimulatedSpawner(Spawner):
    """A Spawner whose servers are simulated by one shared loopback responder.

    For tests and demos only: no notebook runs, nothing is isolated. With
    ``honour_user_options``, the ``user_options`` keys ``start_delay``, ``stop_delay``
    (seconds, at most ``max_user_option_delay``) and ``fail`` (bool) override the traits for
    one spawn, so a test can have a few servers stay pending or fail.
    """

    start_delay = Float(
        0.0,
        help="Seconds start() waits before the simulated server is up (a pod's start time; "
        "with a SimulatedCluster, the container start after placement and image pull).",
    ).tag(config=True)

    stop_delay = Float(
        0.0,
        help="Seconds stop() takes; above the hub's slow_stop_timeout, stops answer 202.",
    ).tag(config=True)

    start_failure_rate = Float(
        0.0,
        help="Share of starts (0 to 1) that fail after start_delay, for failure-mode tests.",
    ).tag(config=True)

    responder_port = Int(
        0,
        help="Loopback port of the shared responder; 0 picks a free one at the first spawn.",
    ).tag(config=True)

    honour_user_options = Bool(
        False,
        help="Let user_options start_delay / stop_delay / fail override the traits per spawn "
        "(tests use it to make some servers pending or slow to stop).",
    ).tag(config=True)

    max_user_option_delay = Float(
        3600.0,
        help="Largest start_delay / stop_delay accepted from user_options, in seconds.",
    ).tag(config=True)

    @validate("start_delay", "stop_delay", "max_user_option_delay")
    def _non_negative(self, proposal: Bunch) -> float:
        if proposal.value < 0:
            raise TraitError(
                f"SimulatedSpawner.{proposal.trait.name} must be >= 0, not {proposal.value}"
            )
        return proposal.value

    @validate("start_failure_rate")
    def _share(self, proposal: Bunch) -> float:
        if not 0 <= proposal.value <= 1:
            raise TraitError(
                f"SimulatedSpawner.start_failure_rate must be within [0, 1], not {proposal.value}"
            )
        return proposal.value

    @validate("responder_port")
    def _port(self, proposal: Bunch) -> int:
        if not 0 <= proposal.value <= 65535:
            raise TraitError(
                f"SimulatedSpawner.responder_port must be a port number, not {proposal.value}"
            )
        return proposal.value

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._url: str | None = None
        self._seat: Seat | None = None
        #: Read by the admission governor: True while the server waits for room on a node.
        self.waiting_for_node = False

    def _set_waiting(self, waiting: bool) -> None:
        self.waiting_for_node = waiting

    def _option(self, key: str, default: Any) -> Any:
        options = self.user_options or {}
        if not self.honour_user_options or key not in options:
            return default
        value = options[key]
        if key == "fail":
            if not isinstance(value, bool):
                raise ValueError(f"user_options 'fail' must be true or false, not {value!r}")
            return value
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if not number or not 0 <= value <= self.max_user_option_delay:
            raise ValueError(
                f"user_options {key!r} must be a number of seconds within "
                f"[0, {self.max_user_option_delay}] (SimulatedSpawner.max_user_option_delay), "
                f"not {value!r}"
            )
        return float(value)

    def load_state(self, state: dict[str, Any]) -> None:
        super().load_state(state)
        url = state.get("simulated_url")
        self._url = url if isinstance(url, str) else None

    def get_state(self) -> dict[str, Any]:
        state = super().get_state()
        if self._url:
            state["simulated_url"] = self._url
        return state

    def clear_state(self) -> None:
        super().clear_state()
        self._url = None

    async def start(self) -> str:
        start_delay = self._option("start_delay", self.start_delay)
        fail = self._option("fail", random.random() < self.start_failure_rate)
        port = await _Responder.ensure(self.responder_port or None)
        if port is None:
            raise RuntimeError(
                "the simulated-server responder could not be started "
                f"(SimulatedSpawner.responder_port={self.responder_port})"
            )
        # Set before waiting: poll() must report a server that is starting as running.
        self._url = f"http://{LOOPBACK}:{port}"
        try:
            cluster = SimulatedCluster.shared(self.config, self.log)
            if cluster is None:
                if start_delay:
                    await asyncio.sleep(start_delay)
            else:
                self._seat = await cluster.place(self._set_waiting)
                await self._seat.start(start_delay)
            if fail:
                raise SimulatedStartFailure(f"simulated start failure for {self._log_name}")
        except BaseException:  # failed, or given up by the hub's start_timeout
            self._leave_node()
            raise
        return self._url

    def _leave_node(self) -> None:
        self._url = None
        if self._seat is not None:
            self._seat.release()
            self._seat = None

    async def stop(self, now: bool = False) -> None:
        stop_delay = self._option("stop_delay", self.stop_delay)
        if stop_delay and not now:
            await asyncio.sleep(stop_delay)
        self._leave_node()

    async def poll(self) -> int | None:
        if not self._url:
            return 0
        port = urlparse(self._url).port
        if _Responder.alive():
            return None if port == _Responder.port else 0
        if _Responder.ever_started:
            return 0  # the responder died, and with it every simulated server
        # A restarted hub has no responder yet: start one where the servers were, so they are
        # found running, as real servers outlive a hub restart.
        return None if await _Responder.ensure(port) == port else 0


# -- the responder process ------------------------------------------------------------------


def _responder_app() -> Any:
    from jupyterhub._version import __version__ as hub_version
    from tornado import web

    api_path = re.compile(r".*/api/?$")

    class AnyPath(web.RequestHandler):
        def _answer(self) -> None:
            self.set_header("X-JupyterHub-Version", hub_version)
            if api_path.match(self.request.path):
                self.set_header("Content-Type", "application/json")
                self.finish(json.dumps({"version": hub_version, "simulated": True}))
            else:
                self.set_header("Content-Type", "text/plain")
                self.finish(f"simulated single-user server: {self.request.path}\n")

        get = post = put = patch = delete = options = _answer

        def head(self) -> None:
            self.set_header("X-JupyterHub-Version", hub_version)
            self.finish()

    return web.Application([(r".*", AnyPath)], log_function=lambda handler: None)


async def _serve(port: int, parent_pid: int | None) -> None:
    app = _responder_app()
    server = app.listen(port, address=LOOPBACK)
    done = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, done.set)
    while not done.is_set():
        if parent_pid is not None and os.getppid() != parent_pid:
            break  # the hub is gone: so are its servers
        await set_within(done, 1.0)
    server.stop()


def main(argv: list[str] | None = None) -> int:
    """Run the shared responder (started by SimulatedSpawner, not by hand)."""
    parser = argparse.ArgumentParser(
        prog="python -m hub_resilience.tools.simulated_spawner",
        description="Answer HTTP on 127.0.0.1 for every simulated single-user server of a hub.",
    )
    parser.add_argument("--port", type=int, required=True, help="loopback port to listen on")
    parser.add_argument(
        "--parent-pid", type=int, default=None, help="exit when this process is gone"
    )
    args = parser.parse_args(argv)
    asyncio.run(_serve(args.port, args.parent_pid))
    return 0


if __name__ == "__main__":
    sys.exit(main())
