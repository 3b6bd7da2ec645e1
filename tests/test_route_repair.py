"""Route repair in the hub: the loop, its setting, and where it starts (only in a hub).

The hub is a stand-in here (its proxy records the checks); tests/test_route_repair_e2e.py
runs the real JupyterHub and configurable-http-proxy.
"""
from __future__ import annotations

import asyncio
import logging
import math
import sys
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from traitlets import TraitError
from traitlets.config import Config, LoggingConfigurable

from hub_resilience.configure import configure
from hub_resilience.hub import running_hub
from hub_resilience.hub.route_repair import NAME, repair_routes, start_route_repair
from hub_resilience.settings import ConfigurationError, HubResilience

INTERVAL = 0.01


class RecordingProxy:
    """Records each check_routes call; raises the queued errors first, one per call."""

    def __init__(self, *errors: BaseException) -> None:
        self.calls: list[tuple[Any, Any]] = []
        self.errors = list(errors)
        self.checked = asyncio.Condition()

    async def check_routes(self, user_dict: Any, service_dict: Any, routes: Any = None) -> None:
        async with self.checked:
            self.calls.append((user_dict, service_dict))
            self.checked.notify_all()
        if self.errors:
            raise self.errors.pop(0)

    async def wait_for(self, calls: int, timeout: float = 5.0) -> None:
        async with self.checked:
            await asyncio.wait_for(
                self.checked.wait_for(lambda: len(self.calls) >= calls), timeout
            )


class FakeHub(LoggingConfigurable):
    """What route repair uses of the JupyterHub app."""

    def __init__(self, proxy: RecordingProxy, *, started: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.proxy = proxy
        self.users: dict[str, Any] = {"alice": object()}
        self._service_map: dict[str, Any] = {"hub-resilience": object()}
        self._start_future: asyncio.Future = asyncio.get_running_loop().create_future()
        if started:
            self._start_future.set_result(None)


@pytest.fixture
def in_a_hub(monkeypatch: pytest.MonkeyPatch) -> Iterator[SimpleNamespace]:
    """This process looks like a hub loading its config: ``jupyterhub.app`` is imported and
    its JupyterHub instance exists (set ``hub.app``). Nothing started before is remembered."""
    hub = SimpleNamespace(app=None)

    class JupyterHub:
        @staticmethod
        def initialized() -> bool:
            return hub.app is not None

        @staticmethod
        def instance() -> Any:
            return hub.app

    monkeypatch.setitem(sys.modules, "jupyterhub.app", SimpleNamespace(JupyterHub=JupyterHub))
    monkeypatch.setattr(running_hub, "_started", {})
    yield hub
    for task in running_hub._started.values():
        if task is not None:
            task.cancel()


async def run_until(proxy: RecordingProxy, calls: int, app: FakeHub) -> None:
    task = asyncio.ensure_future(repair_routes(app, INTERVAL))
    try:
        await proxy.wait_for(calls)
    finally:
        task.cancel()
    assert not task.done() or task.cancelled(), task  # it was still running


# -- the loop -------------------------------------------------------------------------------


async def test_the_loop_checks_the_hubs_users_and_services_every_interval() -> None:
    proxy = RecordingProxy()
    app = FakeHub(proxy)
    loop = asyncio.get_running_loop()
    began = loop.time()
    await run_until(proxy, 3, app)
    assert loop.time() - began >= 3 * INTERVAL  # one interval before each check
    assert all(users is app.users and services is app._service_map
               for users, services in proxy.calls)


async def test_a_failed_check_is_one_warning_line_and_the_loop_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    proxy = RecordingProxy(
        ConnectionRefusedError(111, "Connection refused"),
        TimeoutError('Repeated api_request to proxy path "" failed.'),
        RuntimeError(),
    )
    app = FakeHub(proxy)
    with caplog.at_level(logging.DEBUG, logger=app.log.name):
        await run_until(proxy, 4, app)
    warnings = [r for r in caplog.records if r.name == app.log.name]
    assert [r.levelname for r in warnings] == ["WARNING"] * 3
    assert all(r.exc_info is None for r in warnings)  # no traceback
    messages = [r.getMessage() for r in warnings]
    assert "ConnectionRefusedError: [Errno 111] Connection refused" in messages[0]
    assert 'TimeoutError: Repeated api_request to proxy path "" failed.' in messages[1]
    assert messages[2] == f"{NAME}: the route check failed (RuntimeError); the next one is in " \
        f"{INTERVAL:g}s"


async def test_no_check_before_the_hub_has_started() -> None:
    """JupyterHub's own checks wait for its start (spawners resolved), or they would take
    running servers' routes for stale ones."""
    proxy = RecordingProxy()
    app = FakeHub(proxy, started=False)
    task = asyncio.ensure_future(repair_routes(app, INTERVAL))
    try:
        await asyncio.sleep(10 * INTERVAL)
        assert proxy.calls == []
        app._start_future.set_result(None)
        await proxy.wait_for(1)
    finally:
        task.cancel()


# -- the setting ----------------------------------------------------------------------------


def test_the_interval_is_30_seconds_by_default_and_0_is_allowed() -> None:
    assert HubResilience().route_check_interval == 30
    assert HubResilience(route_check_interval=0).route_check_interval == 0
    assert HubResilience(route_check_interval=2.5).route_check_interval == 2.5


@pytest.mark.parametrize("value", [-1, -0.5, math.inf, math.nan])
def test_an_interval_below_0_or_not_finite_is_refused_naming_the_setting(value: float) -> None:
    with pytest.raises(TraitError, match=r"HubResilience.route_check_interval must be a "
                       r"number of seconds >= 0 \(0 switches route repair off\), got"):
        HubResilience(route_check_interval=value)
    c = Config()
    c.JupyterHub.spawner_class = "simple"
    with pytest.raises(ConfigurationError, match="route_check_interval"):
        configure(c, spawner_class=None, route_check_interval=value)
    assert "services" not in c.JupyterHub  # refused before anything was written


def test_the_setting_has_a_help_string() -> None:
    help_text = HubResilience.class_traits()["route_check_interval"].help
    assert "check_routes" in help_text and "last_activity_interval" in help_text


# -- where it starts ------------------------------------------------------------------------


async def test_outside_a_hub_nothing_is_started(
    in_a_hub: SimpleNamespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sidecar and check-config run configure() too: no hub, nothing to repair."""
    assert start_route_repair() is False  # jupyterhub.app imported, but no JupyterHub made
    monkeypatch.delitem(sys.modules, "jupyterhub.app")
    assert await asyncio.to_thread(start_route_repair) is False  # no running loop
    assert start_route_repair() is False  # a loop, but JupyterHub not even imported
    before = asyncio.all_tasks()
    c = Config()
    c.JupyterHub.spawner_class = "simple"
    assert configure(c, spawner_class=None, admission_governor=False) is not None
    await asyncio.sleep(0)
    assert asyncio.all_tasks() == before
    assert running_hub._started == {}


async def test_in_a_hub_it_starts_once_with_the_hubs_final_interval(
    in_a_hub: SimpleNamespace,
) -> None:
    proxy = RecordingProxy()
    in_a_hub.app = app = FakeHub(proxy, config=Config())
    c = Config()
    c.JupyterHub.spawner_class = "simple"
    configure(c, spawner_class=None, admission_governor=False)
    assert NAME in running_hub._started
    assert start_route_repair() is False  # once
    # The config the hub ends with (hub.config may follow the configure() call) decides.
    app.config = Config({"HubResilience": {"route_check_interval": INTERVAL}})
    await proxy.wait_for(2)
    task = running_hub._started[NAME]
    assert task is not None and not task.done()


async def test_in_a_hub_0_starts_nothing(in_a_hub: SimpleNamespace) -> None:
    proxy = RecordingProxy()
    in_a_hub.app = FakeHub(proxy, config=Config())
    c = Config()
    c.JupyterHub.spawner_class = "simple"
    configure(c, spawner_class=None, admission_governor=False, route_check_interval=0)
    await asyncio.sleep(0)
    assert NAME not in running_hub._started
    # Set to 0 after configure() (in hub.config): the job ends at once, having checked nothing.
    in_a_hub.app.config = Config({"HubResilience": {"route_check_interval": 0}})
    assert start_route_repair() is True
    await asyncio.sleep(0)
    task = running_hub._started[NAME]
    assert task is not None
    await asyncio.wait_for(task, 1)
    assert proxy.calls == []


async def test_a_job_that_ends_with_an_error_is_logged_once(
    in_a_hub: SimpleNamespace, caplog: pytest.LogCaptureFixture
) -> None:
    in_a_hub.app = app = FakeHub(RecordingProxy(), config=Config(
        {"HubResilience": {"route_check_interval": -1}}  # refused when the job reads it
    ))
    with caplog.at_level(logging.INFO, logger=app.log.name):
        assert start_route_repair() is True
        await asyncio.sleep(0)
        task = running_hub._started[NAME]
        assert task is not None
        with pytest.raises(TraitError):
            await task
        await asyncio.sleep(0)  # the done-callback
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1
    assert errors[0].getMessage().startswith(f"{NAME} stopped: HubResilience.route_check_")
    assert errors[0].getMessage().endswith(
        "; routes are checked only every JupyterHub.last_activity_interval"
    )
