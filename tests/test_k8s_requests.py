"""The spawner's retry path for Kubernetes API requests, with kubernetes_asyncio's own
exceptions (ApiException with the headers an API server sends, aiohttp's connection errors).

No API server here: each request is a coroutine function that raises or answers as a
throttled, failing or unreachable API server would. The real one is in tests/k8s.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import aiohttp
import pytest
from kubernetes_asyncio.client.rest import ApiException
from prometheus_client import REGISTRY

from hub_resilience.backoff import BackoffPolicy
from hub_resilience.hub.k8s_requests import (
    K8sRequester,
    K8sRequestFailed,
    describe_error,
    result_code,
    retry_reason,
    spawn_time_left,
)
from hub_resilience.hub.metrics import K8sOperation, K8sRetryReason


def api_error(status: int, retry_after: str | None = None) -> ApiException:
    """An ApiException as kubernetes_asyncio raises it for an API server's error answer."""
    error = ApiException(status=status, reason={429: "Too Many Requests"}.get(status, "Error"))
    error.headers = {"Retry-After": retry_after} if retry_after is not None else {}
    return error


def connection_refused() -> aiohttp.ClientOSError:
    """What aiohttp raises when nothing listens at the API server's address."""
    return aiohttp.ClientOSError(111, "Connection refused")


class Script:
    """A request that fails with each of ``failures`` in turn, then answers ``answer``."""

    def __init__(self, *failures: BaseException, answer: object = "stored") -> None:
        self.failures = list(failures)
        self.answer = answer
        self.calls = 0

    async def __call__(self) -> object:
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)
        return self.answer


class Sleeps:
    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


def requester(
    sleep: Callable[[float], Awaitable[None]], throttled_deadline: float = 0.0, **policy: float
) -> K8sRequester:
    settings = {"base": 0.5, "cap": 30.0, "max_attempts": 20, "deadline": 30.0, **policy}
    return K8sRequester(
        BackoffPolicy(**settings),  # type: ignore[arg-type]
        logging.getLogger("test"),
        "alice",
        throttled_deadline=throttled_deadline,
        sleep=sleep,
    )


def counted(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (api_error(429), K8sRetryReason.THROTTLED),
        (api_error(500), K8sRetryReason.SERVER_ERROR),
        (api_error(503), K8sRetryReason.SERVER_ERROR),
        (api_error(504), K8sRetryReason.SERVER_ERROR),
        (asyncio.TimeoutError(), K8sRetryReason.TIMEOUT),
        (aiohttp.ServerTimeoutError(), K8sRetryReason.TIMEOUT),
        (connection_refused(), K8sRetryReason.CONNECTION_ERROR),
        (aiohttp.ServerDisconnectedError(), K8sRetryReason.CONNECTION_ERROR),
        (api_error(404), None),
        (api_error(409), None),
        (api_error(403), None),
        (api_error(422), None),
        (ValueError("a bug"), None),
    ],
)
def test_what_is_worth_retrying(error: BaseException, reason: K8sRetryReason | None) -> None:
    assert retry_reason(error) is reason


def test_result_codes_and_descriptions_are_short() -> None:
    assert result_code(None) == "ok"
    assert result_code(api_error(429)) == "429"
    assert result_code(asyncio.TimeoutError()) == "timeout"
    assert result_code(connection_refused()) == "connection_error"
    assert describe_error(api_error(429)) == "429 Too Many Requests"
    assert "Connection refused" in describe_error(connection_refused())
    assert describe_error(asyncio.TimeoutError()) == "TimeoutError"


async def test_throttled_request_honours_retry_after_then_succeeds(caplog) -> None:
    sleeps = Sleeps()
    request = Script(api_error(429, "3"), api_error(429, "3"))
    before = counted(
        "hub_resilience_k8s_api_retries_total", operation="create_pvc", reason="throttled"
    )
    before_429 = counted(
        "hub_resilience_k8s_api_requests_total", operation="create_pvc", code="429"
    )
    with caplog.at_level(logging.WARNING, logger="test"):
        result = await requester(sleeps).call(K8sOperation.CREATE_PVC, request, timeout=3)
    assert result == "stored" and request.calls == 3
    # Retry-After 3 s, plus at most 10% jitter (at least the base, 0.5 s).
    assert len(sleeps.delays) == 2 and all(3 <= d <= 3.5 for d in sleeps.delays)
    assert (
        counted("hub_resilience_k8s_api_retries_total", operation="create_pvc", reason="throttled")
        - before
        == 2
    )
    assert (
        counted("hub_resilience_k8s_api_requests_total", operation="create_pvc", code="429")
        - before_429
        == 2
    )
    # One WARNING line per retry, no traceback.
    retries = [r for r in caplog.records if "retrying" in r.getMessage()]
    assert len(retries) == 2
    assert all(r.levelno == logging.WARNING and r.exc_info is None for r in caplog.records)
    assert "create_pvc for alice: 429 Too Many Requests; retrying in" in retries[0].getMessage()


async def test_without_retry_after_the_backoff_is_jittered_and_bounded() -> None:
    sleeps = Sleeps()
    request = Script(*[api_error(503) for _ in range(8)])
    await requester(sleeps, base=0.5, cap=4.0).call(K8sOperation.READ_POD, request, timeout=3)
    ceilings = [min(4.0, 0.5 * 2**n) for n in range(8)]
    assert all(0 <= d <= c for d, c in zip(sleeps.delays, ceilings, strict=True))


async def test_a_timeout_and_a_refused_connection_are_retried() -> None:
    sleeps = Sleeps()

    async def hangs() -> None:
        await asyncio.sleep(10)

    calls = {"n": 0}

    async def request() -> str:
        calls["n"] += 1
        if calls["n"] == 1:
            await hangs()  # cut by the per-attempt timeout
        if calls["n"] == 2:
            raise connection_refused()
        return "ok"

    result = await requester(sleeps).call(K8sOperation.DELETE_POD, request, timeout=0.05)
    assert result == "ok" and calls["n"] == 3 and len(sleeps.delays) == 2


async def test_an_answer_that_is_not_a_failure_is_raised_at_once() -> None:
    sleeps = Sleeps()
    request = Script(api_error(409))
    with pytest.raises(ApiException) as raised:
        await requester(sleeps).call(K8sOperation.CREATE_POD, request, timeout=3)
    assert raised.value.status == 409 and request.calls == 1 and sleeps.delays == []


class Clock:
    """The retry path's monotonic clock, advanced only by its sleeps."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        import hub_resilience.hub.k8s_requests as module

        self.now = 0.0
        self.delays: list[float] = []
        monkeypatch.setattr(module.time, "monotonic", lambda: self.now)

    async def sleep(self, seconds: float) -> None:
        self.delays.append(seconds)
        self.now += seconds


async def test_throttling_is_waited_out_for_as_long_as_the_spawn_may_take(
    monkeypatch, caplog
) -> None:
    """API Priority and Fairness raises Retry-After (1, 2, 4, 8, 16, 32 s) under sustained
    load: more attempts than retry_max_attempts and longer than k8s_api_request_retry_timeout,
    all within start_timeout (300 s), and then it goes through."""
    clock = Clock(monkeypatch)
    ladder = ["1", "2", "4", "8", "16", "32", "32", "32", "32"]
    request = Script(*[api_error(429, value) for value in ladder])
    result = await requester(clock.sleep, throttled_deadline=300, max_attempts=5).call(
        K8sOperation.CREATE_PVC, request, timeout=3
    )
    assert result == "stored" and request.calls == len(ladder) + 1
    assert clock.now > 30  # past k8s_api_request_retry_timeout


async def test_persistent_throttling_gives_up_at_the_spawns_deadline(monkeypatch, caplog) -> None:
    clock = Clock(monkeypatch)
    request = Script(*[api_error(429, "10") for _ in range(100)])
    with caplog.at_level(logging.WARNING, logger="test"):
        with pytest.raises(K8sRequestFailed) as raised:
            await requester(clock.sleep, throttled_deadline=60).call(
                K8sOperation.CREATE_POD, request, timeout=3
            )
    failed = raised.value
    assert failed.reason is K8sRetryReason.THROTTLED
    # Waits of 10-11 s: five fit in 60 s, the sixth would not.
    assert request.calls == 6 and len(clock.delays) == 5 and clock.now <= 60
    assert 10 <= failed.retry_in <= 11
    assert "giving up after 6 attempts" in caplog.records[-1].getMessage()


async def test_errors_keep_the_attempt_limit_and_the_retry_timeout(monkeypatch) -> None:
    clock = Clock(monkeypatch)
    request = Script(*[api_error(503) for _ in range(100)])
    with pytest.raises(K8sRequestFailed) as raised:
        await requester(clock.sleep, throttled_deadline=300, max_attempts=5).call(
            K8sOperation.CREATE_POD, request, timeout=3
        )
    assert raised.value.reason is K8sRetryReason.SERVER_ERROR
    assert request.calls == 5


async def test_the_deadline_stops_retries_before_a_wait_would_pass_it(monkeypatch) -> None:
    """A 503 with Retry-After 20 s and a 30 s retry timeout: one wait fits, a second not."""
    clock = Clock(monkeypatch)
    request = Script(*[api_error(503, "20") for _ in range(10)])
    with pytest.raises(K8sRequestFailed):
        await requester(clock.sleep, throttled_deadline=300).call(
            K8sOperation.CREATE_POD, request, timeout=3
        )
    assert request.calls == 2 and len(clock.delays) == 1


async def test_a_cancelled_request_is_not_retried() -> None:
    sleeps = Sleeps()

    async def forever() -> None:
        await asyncio.sleep(3600)

    task = asyncio.create_task(requester(sleeps).call(K8sOperation.CREATE_POD, forever, timeout=60))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert sleeps.delays == []


async def test_the_spawner_is_told_of_throttling_until_an_attempt_gets_through(
    monkeypatch,
) -> None:
    """What the spawner keeps for the message when the hub cancels a throttled start: the
    request so far after each 429, cleared by the first other answer."""
    clock = Clock(monkeypatch)
    told: list[K8sRequestFailed | None] = []
    made = requester(clock.sleep, throttled_deadline=300)
    made.throttled = told.append
    request = Script(api_error(429, "4"), api_error(429, "4"))
    assert await made.call(K8sOperation.CREATE_POD, request, timeout=3) == "stored"
    first, second, last = told
    assert first is not None and first.attempts == 1 and 4 <= first.retry_in <= 4.5
    assert second is not None and second.attempts == 2 and second.elapsed == first.retry_in
    assert second.reason is K8sRetryReason.THROTTLED and last is None


@pytest.mark.parametrize(
    ("requested", "start_timeout", "now", "left"),
    [(100.0, 15.0, 101.0, 13.0), (100.0, 15.0, 114.5, 0.0), (100.0, 300.0, 100.0, 299.0)],
)
def test_a_spawns_throttling_budget_is_what_is_left_of_the_hubs_wait(
    requested: float, start_timeout: float, now: float, left: float
) -> None:
    assert spawn_time_left(requested, start_timeout, now) == left
