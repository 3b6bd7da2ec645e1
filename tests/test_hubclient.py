"""HubClient against a real JupyterHub, directly and through the fault proxy.

The fault proxy scripts exact answer sequences (429 with and without Retry-After, 500,
resets, malformed JSON) in front of the real hub API, so retry behaviour is observed on the
wire: how many requests reached the proxy, and when.
"""
from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import pytest
import pytest_asyncio
from tornado.httpclient import AsyncHTTPClient, HTTPClientError

from hub_resilience.backoff import BackoffPolicy
from hub_resilience.hubclient import (
    DeleteUserResult,
    HubAPIError,
    HubClient,
    HubUnavailableError,
    MalformedResponseError,
    SpawnFailedError,
    StartResult,
    StopResult,
    parse_user_page,
    request_was_sent,
    retry_reason,
)
from tests.support.faultproxy import FaultProxy
from tests.support.hub import RunningHub, create_users, running_hub, unused_port, wait_until

# -- pure parts -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "retry_safe", "sent", "expected"),
    [
        (429, False, True, "429"),  # refused before processing: any method may retry
        (503, False, True, "503"),
        (500, True, True, "5xx"),
        (502, True, True, "5xx"),
        (500, False, True, None),  # may have been processed: never repeat a POST
        (None, True, True, "connection"),
        (None, False, True, None),
        (None, False, False, "connect"),  # never reached the hub
        (400, True, True, None),
        (404, True, True, None),
        (409, True, True, None),
    ],
)
def test_retry_reason(
    status: int | None, retry_safe: bool, sent: bool, expected: str | None
) -> None:
    assert retry_reason(status, retry_safe=retry_safe, request_sent=sent) == expected


def test_request_was_sent_classification() -> None:
    assert not request_was_sent(ConnectionRefusedError())
    assert not request_was_sent(HTTPClientError(599, "Timeout while connecting"))
    assert not request_was_sent(HTTPClientError(599, "Timeout in request queue"))
    assert request_was_sent(HTTPClientError(599, "Timeout during request"))
    assert request_was_sent(ConnectionResetError())
    assert request_was_sent(HTTPClientError(599, "Stream closed"))


def test_parse_user_page_shapes() -> None:
    page = parse_user_page(
        {"items": [{"name": "a"}], "_pagination": {"offset": 5, "limit": 1, "total": 9,
                                                   "next": {"offset": 6, "limit": 1}}},
        offset=5, limit=10, fetched_at=1.0,
    )
    assert (page.offset, page.limit, page.total, page.next_offset) == (5, 1, 9, 6)
    last = parse_user_page(
        {"items": [], "_pagination": {"offset": 9, "limit": 10, "total": 9, "next": None}},
        offset=9, limit=10, fetched_at=1.0,
    )
    assert last.next_offset is None
    legacy = parse_user_page([{"name": "a"}, {"name": "b"}], offset=0, limit=10, fetched_at=1.0)
    assert legacy.next_offset is None and len(legacy.items) == 2
    for bad in ({"items": {}}, {"items": []}, "users", 3,
                {"items": [], "_pagination": {"offset": 5, "next": {"offset": 2}}}):
        with pytest.raises(ValueError):
            parse_user_page(bad, offset=0, limit=10, fetched_at=1.0)


def test_client_rejects_bad_settings_naming_them() -> None:
    with pytest.raises(ValueError, match="JUPYTERHUB_API_URL"):
        HubClient("", "token")
    with pytest.raises(ValueError, match="JUPYTERHUB_API_TOKEN"):
        HubClient("http://127.0.0.1:1/hub/api", "")
    with pytest.raises(ValueError, match="concurrency"):
        HubClient("http://127.0.0.1:1/hub/api", "t", concurrency=0)


# -- against the real hub -------------------------------------------------------------------

HUB_CONFIG = """
c.JupyterHub.allow_named_servers = True
c.SimulatedSpawner.honour_user_options = True
c.JupyterHub.tornado_settings = {"slow_stop_timeout": 0.5, "slow_spawn_timeout": 0.5}
"""


@pytest_asyncio.fixture(scope="module")
async def hub() -> AsyncIterator[RunningHub]:
    async with running_hub(HUB_CONFIG) as running:
        yield running


@pytest_asyncio.fixture
async def client(hub: RunningHub) -> AsyncIterator[HubClient]:
    async with hub.client() as c:
        yield c


FAST = BackoffPolicy(base=0.05, cap=0.2, max_attempts=5, deadline=30.0, retry_after_cap=5.0)


@pytest_asyncio.fixture
async def proxy(hub: RunningHub) -> AsyncIterator[FaultProxy]:
    async with FaultProxy(hub.api_url, rate=0.0) as p:
        yield p


def via(proxy: FaultProxy, hub: RunningHub, policy: BackoffPolicy = FAST) -> HubClient:
    return HubClient(proxy.proxied(hub.api_url), hub.token, policy=policy, component="tests")


@pytest.mark.hub
async def test_pagination_streams_pages_with_the_pagination_media_type(
    hub: RunningHub, client: HubClient
) -> None:
    names = [f"page-{i:02d}" for i in range(23)]
    await create_users(client, names, batch_size=10)
    pages = [p async for p in client.iter_user_pages(page_size=10, name_filter="page-")]
    assert [len(p.items) for p in pages] == [10, 10, 3]
    assert [p.offset for p in pages] == [0, 10, 20]
    assert pages[0].total == 23 and pages[-1].next_offset is None
    listed = [u["name"] async for u in client.iter_users(page_size=7, name_filter="page-")]
    assert listed == names


@pytest.mark.hub
async def test_state_filter_and_spawn_semantics(hub: RunningHub, client: HubClient) -> None:
    await create_users(client, ["st-run", "st-slow", "st-idle"])
    assert await client.supports_state_filter()
    # 201, or 202 if the hub took longer than its slow_spawn_timeout (a loaded machine).
    assert await client.start_server("st-run") in (StartResult.STARTED, StartResult.PENDING)
    assert (await client.start_server_and_wait("st-run", poll_interval=0.2))["ready"]
    # Starting again is not an error: the server is already running.
    assert await client.start_server("st-run") is StartResult.ALREADY_RUNNING
    assert await client.start_server("st-slow", user_options={"start_delay": 60}) is (
        StartResult.PENDING
    )
    assert await client.start_server("st-slow") is StartResult.PENDING
    active = [u["name"] async for u in client.iter_users(state="active", name_filter="st-")]
    inactive = [u["name"] async for u in client.iter_users(state="inactive", name_filter="st-")]
    assert sorted(active) == ["st-run", "st-slow"]
    assert inactive == ["st-idle"]
    stop = await client.stop_server("st-slow")  # interrupting a pending spawn
    assert stop.result in (StopResult.STOPPED, StopResult.STOPPING)
    assert await client.wait_for_server_stopped("st-slow", timeout=30, poll_interval=0.2)


@pytest.mark.hub
async def test_start_server_and_wait(hub: RunningHub, client: HubClient) -> None:
    await create_users(client, ["sw-ok", "sw-fail"])
    # Longer than the hub's slow_spawn_timeout: the start answers 202 and we poll.
    model = await client.start_server_and_wait(
        "sw-ok", "lab", user_options={"start_delay": 1.5}, poll_interval=0.2
    )
    assert model["ready"] and model["name"] == "lab"
    # A spawn failing while we poll, and one failing before the hub answers (500).
    for delay in (1.5, 0):
        with pytest.raises(SpawnFailedError):
            await client.start_server_and_wait(
                "sw-fail", user_options={"start_delay": delay, "fail": True}, poll_interval=0.2
            )


@pytest.mark.hub
async def test_stop_and_delete_outcomes(hub: RunningHub, client: HubClient) -> None:
    await create_users(client, ["sd-fast", "sd-slow"])
    await client.start_server_and_wait("sd-fast", poll_interval=0.2)
    await client.start_server_and_wait("sd-slow", user_options={"stop_delay": 3}, poll_interval=0.2)
    assert (await client.stop_server("sd-fast")).result is StopResult.STOPPED
    assert (await client.stop_server("sd-slow")).result is StopResult.STOPPING
    # The hub refuses to delete a user whose server is still stopping.
    refused = await client.delete_user("sd-slow")
    assert refused.result is DeleteUserResult.REFUSED and "stopping" in refused.message
    assert (await client.stop_server("sd-fast", "no-such-server")).result is StopResult.GONE
    assert await client.wait_for_server_stopped("sd-slow", timeout=30, poll_interval=0.2)
    assert (await client.delete_user("sd-slow")).result is DeleteUserResult.DELETED
    assert (await client.delete_user("sd-slow")).result is DeleteUserResult.GONE
    assert await client.get_user("sd-slow") is None


@pytest.mark.hub
async def test_retry_after_in_seconds_is_honoured(hub: RunningHub, proxy: FaultProxy) -> None:
    proxy.retry_after = 0.6
    proxy.queue("429", "429")
    async with via(proxy, hub) as c:
        assert await c.version()
    times = [r.at for r in proxy.records]
    assert [r.outcome for r in proxy.records] == ["429", "429", "forwarded"]
    assert times[1] - times[0] >= 0.6 and times[2] - times[1] >= 0.6


@pytest.mark.hub
async def test_retry_after_as_http_date_is_honoured(hub: RunningHub, proxy: FaultProxy) -> None:
    # The proxy sends now + 1 + 1 s as an HTTP-date; dates have whole seconds, so the date is
    # between 1 and 2 seconds ahead when sent.
    proxy.retry_after = 1.0
    proxy.queue("429-date")
    async with via(proxy, hub) as c:
        assert await c.version()
    assert [r.outcome for r in proxy.records] == ["429-date", "forwarded"]
    # We must not have come back before the date (less the time the answer took to arrive).
    assert proxy.records[1].at - proxy.records[0].at > 0.8


@pytest.mark.hub
async def test_429_pauses_every_request_of_the_client(hub: RunningHub, proxy: FaultProxy) -> None:
    proxy.retry_after = 1.0
    proxy.queue("429")
    async with via(proxy, hub) as c:
        first = asyncio.create_task(c.version())
        # Once the 429 has been answered and the client paused...
        await wait_until(lambda: c.paused_for > 0 or first.done(), what="client paused")
        await c.get_user("nobody-at-all")  # ...a second, unrelated request waits too
        await first
    refused = proxy.records[0]
    others = proxy.records[1:]
    assert refused.outcome == "429" and len(others) == 2
    assert all(r.at - refused.at >= 1.0 for r in others)


@pytest.mark.hub
async def test_bare_429_and_5xx_back_off_then_succeed(hub: RunningHub, proxy: FaultProxy) -> None:
    proxy.queue("429-bare", "500", "reset", None)
    async with via(proxy, hub) as c:
        assert await c.version()
    assert [r.outcome for r in proxy.records] == ["429-bare", "500", "reset", "forwarded"]


@pytest.mark.hub
async def test_requests_that_must_not_repeat_are_not_retried(
    hub: RunningHub, proxy: FaultProxy
) -> None:
    proxy.queue("500")
    async with via(proxy, hub) as c:
        with pytest.raises(HubAPIError) as raised:
            await c.create_users(["never-twice"])
        assert raised.value.status == 500
        assert proxy.count("POST", "/hub/api/users") == 1
        proxy.queue("reset")
        with pytest.raises(HubUnavailableError):
            await c.create_users(["never-twice"])
        assert proxy.count("POST", "/hub/api/users") == 2
        # A refusal (429) is safe to retry even for a POST: the hub did nothing.
        proxy.queue("429-bare")
        assert [u["name"] for u in await c.create_users(["never-twice"])] == ["never-twice"]
        assert proxy.count("POST", "/hub/api/users") == 4


@pytest.mark.hub
async def test_a_start_whose_answer_was_lost_is_confirmed_not_sent_twice(
    hub: RunningHub, client: HubClient, proxy: FaultProxy
) -> None:
    """A swamped hub may carry out a start and answer after the client gave up: the server's
    model, not a second POST, settles it. A start the hub never saw is sent again."""
    await create_users(client, ["lost-answer", "never-seen"])
    path = "/hub/api/users/lost-answer/server"
    proxy.queue("lost")
    async with via(proxy, hub) as c:
        assert await c.start_server("lost-answer", user_options={"start_delay": 2}) is (
            StartResult.PENDING
        )
        assert proxy.count("POST", path) == 1
        assert [r.outcome for r in proxy.records if r.path == path] == ["lost"]
        assert (await c.start_server_and_wait("lost-answer", poll_interval=0.2))["ready"]
        assert proxy.count("POST", path) == 2  # the wait's own start, answered 202 or 400

        proxy.queue("reset")
        assert await c.start_server("never-seen") in (StartResult.STARTED, StartResult.PENDING)
    seen = [r.outcome for r in proxy.records if r.path == "/hub/api/users/never-seen/server"]
    assert seen == ["reset", "forwarded"]
    assert (await client.start_server_and_wait("never-seen", poll_interval=0.2))["ready"]


@pytest.mark.hub
async def test_attempts_are_bounded(hub: RunningHub, proxy: FaultProxy) -> None:
    proxy.queue(*["500"] * 10)
    async with via(proxy, hub, BackoffPolicy(base=0.01, cap=0.02, max_attempts=3)) as c:
        with pytest.raises(HubAPIError) as raised:
            await c.version()
    assert raised.value.status == 500
    assert len(proxy.records) == 3


@pytest.mark.hub
async def test_deadline_stops_retrying_before_attempts_run_out(
    hub: RunningHub, proxy: FaultProxy
) -> None:
    proxy.retry_after = 1.0
    proxy.queue(*["429"] * 20)
    policy = BackoffPolicy(base=0.01, cap=0.02, max_attempts=20, deadline=1.5)
    async with via(proxy, hub, policy) as c:
        with pytest.raises(HubAPIError) as raised:
            await c.version()
    assert raised.value.status == 429 and raised.value.retry_after == 1.0
    # Each wait is >= 1 s and the deadline is 1.5 s: at most one retry fits.
    assert 1 <= len(proxy.records) <= 2


@pytest.mark.hub
async def test_malformed_json_is_an_error_not_a_retry(hub: RunningHub, proxy: FaultProxy) -> None:
    proxy.queue("malformed")
    async with via(proxy, hub) as c:
        with pytest.raises(MalformedResponseError):
            await c.list_users_page(limit=5)
    assert [r.outcome for r in proxy.records] == ["malformed"]


async def test_unreachable_hub_fails_within_the_deadline() -> None:
    # Nothing listens on this port: connections are refused, which is always retryable.
    url = f"http://127.0.0.1:{unused_port()}/hub/api"
    policy = BackoffPolicy(base=0.05, cap=0.1, max_attempts=1000, deadline=1.0)
    async with HubClient(url, "token", policy=policy) as c:
        with pytest.raises(HubUnavailableError):
            await c.version()


@pytest.mark.hub
async def test_servers_survive_a_hub_restart_and_the_proxy_routes_to_them(
    hub: RunningHub, client: HubClient
) -> None:
    await create_users(client, ["rs-user"])
    before = await client.start_server_and_wait("rs-user", poll_interval=0.2)
    http = AsyncHTTPClient(force_instance=True)
    try:
        routed = await http.fetch(f"{hub.url}/user/rs-user/api", follow_redirects=False)
        assert json.loads(routed.body)["simulated"] is True
        await hub.restart()
        after = await client.get_server("rs-user")
        assert after is not None and after["ready"] and after["started"] == before["started"]
        assert await client.start_server("rs-user") is StartResult.ALREADY_RUNNING
        routed = await http.fetch(f"{hub.url}/user/rs-user/api", follow_redirects=False)
        assert routed.code == 200
    finally:
        http.close()


@pytest.mark.hub
async def test_the_responder_goes_away_with_the_hub() -> None:
    async with running_hub() as short_lived, short_lived.client() as c:
        await create_users(c, ["tidy"])
        server = await c.start_server_and_wait("tidy", poll_interval=0.2)
        port = urlsplit(server["state"]["simulated_url"]).port
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.close()
        await writer.wait_closed()
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", port)
