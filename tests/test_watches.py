"""The pod and event watches: they never give up, honour Retry-After, relist on 410, say
whether they are up, and index events by pod uid.

The API server is played by a scripted client here (the answers a throttled, restarting or
expiring API server gives, through kubernetes_asyncio's own Watch); tests/k8s runs the same
reflectors against a real one that is throttled and stopped.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from prometheus_client import REGISTRY

from hub_resilience.hub.metrics import WatchedResource, WatchStatus, summarise_watches
from hub_resilience.hub.watches import ResilientEventReflector, ResilientPodReflector


class Content:
    def __init__(self, lines: list[bytes], then_quiet: bool = False) -> None:
        self.lines = list(lines)
        self.then_quiet = then_quiet

    async def readline(self) -> bytes:
        await asyncio.sleep(0)
        if not self.lines and self.then_quiet:
            await asyncio.Event().wait()  # a quiet watch: nothing happens
        return self.lines.pop(0) if self.lines else b""  # b"": the server ended the watch


class Response:
    """What kubernetes_asyncio returns for a ``_preload_content=False`` call."""

    def __init__(
        self, status: int = 200, body: Any = None, lines: list[bytes] | None = None, **headers: str
    ) -> None:
        self.status = status
        self.reason = {200: "OK", 429: "Too Many Requests", 410: "Gone"}.get(status, "Error")
        self.headers = headers
        self._body = json.dumps(body or {}).encode()
        self.content = Content(lines or [])

    async def read(self) -> bytes:
        return self._body

    def release(self) -> None:
        pass

    def close(self) -> None:
        pass


def pod(name: str, version: str, uid: str = "") -> dict:
    return {
        "metadata": {
            "name": name,
            "namespace": "hub",
            "resourceVersion": version,
            "uid": uid or f"uid-{name}",
        }
    }


def listing(*items: dict, version: str = "100") -> Response:
    return Response(body={"items": list(items), "metadata": {"resourceVersion": version}})


def events(*changes: tuple[str, dict]) -> Response:
    lines = [json.dumps({"type": kind, "object": obj}).encode() + b"\n" for kind, obj in changes]
    return Response(lines=lines)


class ScriptedAPI:
    """Answers list and watch calls from two scripts; once a script is used up, a list
    answers as the last one did and a watch stays quiet."""

    def __init__(self, lists: list[Any], watches: list[Any]) -> None:
        self.lists = list(lists)
        self.watches = list(watches)
        self.calls: list[dict] = []
        self.last_list: Any = listing()

    async def _answer(self, **kwargs: Any) -> Response:
        self.calls.append(kwargs)
        if kwargs.get("watch"):
            answer = self.watches.pop(0) if self.watches else Response()
            if isinstance(answer, Response) and not self.watches:
                answer.content.then_quiet = True
        else:
            answer = self.lists.pop(0) if self.lists else self.last_list
            if isinstance(answer, Response):
                self.last_list = answer
        if isinstance(answer, BaseException):
            raise answer
        return answer

    list_namespaced_pod = _answer
    list_namespaced_event = _answer


class Sleeps:
    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)
        await asyncio.sleep(0)


def reflector(cls: type, api: ScriptedAPI) -> Any:
    made = cls(namespace="hub", labels={"component": "singleuser-server"})
    made.api = api
    made.sleep = Sleeps()
    return made


async def run_until(made: Any, condition, timeout: float = 5.0) -> None:
    """Start ``made`` (once) and wait until ``condition()``."""
    if made.watch_task is None:
        await made.start()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, "the reflector never got there"
        await asyncio.sleep(0.001)


def restarts(resource: str, reason: str) -> float:
    labels = {"resource": resource, "reason": reason}
    return REGISTRY.get_sample_value("hub_resilience_k8s_watch_restarts_total", labels) or 0.0


async def test_a_first_list_throttled_many_times_still_loads_and_honours_retry_after() -> None:
    throttled = [Response(429, {"code": 429}, **{"Retry-After": "2"}) for _ in range(40)]
    api = ScriptedAPI(lists=[*throttled, listing(pod("jupyter-a", "5"))], watches=[])
    made = reflector(ResilientPodReflector, api)
    before = restarts("pods", "throttled")
    try:
        await run_until(made, lambda: made.first_load_future.done())
        assert "hub/jupyter-a" in made.pods
        assert made.up
        # 40 failures (KubeSpawner gives up after 9): each waited Retry-After plus jitter.
        assert len(made.sleep.delays) == 40
        assert all(2 <= d <= 2.5 for d in made.sleep.delays)
        assert restarts("pods", "throttled") - before == 40
    finally:
        await made.stop()


async def test_watch_events_update_the_cache_and_the_next_list_starts_from_them() -> None:
    api = ScriptedAPI(
        lists=[listing(pod("jupyter-a", "5"), version="10"), listing(pod("jupyter-b", "11"))],
        watches=[
            events(("ADDED", pod("jupyter-b", "11")), ("DELETED", pod("jupyter-a", "12"))),
            Response(),  # the API server ends the watch (timeout_seconds): relist
        ],
    )
    made = reflector(ResilientPodReflector, api)
    try:
        await run_until(made, lambda: len(api.calls) >= 3)
        assert set(made.pods) == {"hub/jupyter-b"}
        watch_call = next(c for c in api.calls if c.get("watch"))
        assert watch_call["resource_version"] == "10"
        relist = [c for c in api.calls if not c.get("watch")][1]
        assert relist["resource_version"] == "11"
        assert relist["resource_version_match"] == "NotOlderThan"
    finally:
        await made.stop()


async def test_an_api_server_that_goes_away_marks_the_watch_down_until_it_is_back() -> None:
    import aiohttp

    refused = [aiohttp.ClientOSError(111, "Connection refused") for _ in range(5)]
    api = ScriptedAPI(
        lists=[listing(version="1"), *refused, listing(version="2")],
        watches=[Response(), Response()],  # the first watch ends: the relists are refused
    )
    made = reflector(ResilientPodReflector, api)
    before = restarts("pods", "connection_error")
    states: list[tuple[bool, float]] = []
    try:
        await made.start()
        for _ in range(5000):
            if not states or states[-1] != (made.up, made.since):
                states.append((made.up, made.since))
            if len(made.sleep.delays) == 5 and made.up:
                break
            await asyncio.sleep(0)
        # down (never listed), up, down (refused), up again, each change timestamped
        assert [up for up, _ in states] == [False, True, False, True]
        assert [since for _, since in states] == sorted(since for _, since in states)
        assert restarts("pods", "connection_error") - before == 5
        assert str(made.last_failure) == "connection_error"
    finally:
        await made.stop()


async def test_an_expired_watch_relists_at_once_without_waiting() -> None:
    expired = {"type": "ERROR", "object": {"code": 410, "reason": "Expired", "message": "old"}}
    gone = Response(lines=[json.dumps(expired).encode() + b"\n"])
    api = ScriptedAPI(lists=[listing(version="1"), listing(version="2")], watches=[gone])
    made = reflector(ResilientPodReflector, api)
    before = restarts("pods", "expired")
    try:
        await run_until(made, lambda: restarts("pods", "expired") > before)
        await run_until(made, lambda: len([c for c in api.calls if not c.get("watch")]) >= 2)
        assert made.sleep.delays == []  # no backoff for an expired watch
        assert made.up
    finally:
        await made.stop()


async def test_events_are_found_by_pod_uid_and_follow_updates_and_deletes() -> None:
    def event(name: str, uid: str, when: str) -> dict:
        return {
            "metadata": {"name": name, "namespace": "hub", "resourceVersion": "1"},
            "involvedObject": {"kind": "Pod", "name": "jupyter-a", "uid": uid},
            "lastTimestamp": when,
            "reason": "Scheduled",
        }

    old = event("e-old", "uid-old", "2026-12-01T10:00:00Z")
    late = event("e2", "uid-new", "2026-12-01T10:05:02Z")
    early = event("e1", "uid-new", "2026-12-01T10:05:01Z")
    api = ScriptedAPI(
        lists=[listing(old, late, version="3")],
        watches=[events(("ADDED", early), ("DELETED", old))],
    )
    made = reflector(ResilientEventReflector, api)
    try:
        await run_until(made, lambda: "hub/e1" in made.resources)
        # Only this pod's events, oldest first; the previous pod of the same name is apart.
        assert [e["metadata"]["name"] for e in made.events_for("uid-new")] == ["e1", "e2"]
        await run_until(made, lambda: "hub/e-old" not in made.resources)
        assert made.events_for("uid-old") == []
        assert made.events_for("nobody") == []
    finally:
        await made.stop()


@pytest.mark.parametrize(
    ("watches", "up", "since"),
    [
        ([(True, 5.0), (True, 7.0)], True, 7.0),
        ([(True, 5.0), (False, 3.0)], False, 3.0),
        ([(False, 4.0), (False, 6.0)], False, 6.0),
    ],
)
def test_the_gauge_of_several_watches_is_down_if_any_is(watches, up, since) -> None:
    summary = summarise_watches(
        WatchStatus(WatchedResource.PODS, is_up, when) for is_up, when in watches
    )
    assert summary[WatchedResource.PODS].up is up
    assert summary[WatchedResource.PODS].since == since
