"""One retry path for every Kubernetes API request the spawner makes.

Why: an event is when the API server throttles (429) and times out, and KubeSpawner retries
only some calls, without reading Retry-After, logging a traceback per failure. Here a request
is tried until it succeeds, fails for a reason retrying cannot fix, or the
:class:`~hub_resilience.backoff.BackoffPolicy` runs out; each retry is one WARNING line and a
counter. What is retried, and how a create that may have been stored is confirmed:
docs/architecture.md ("Talking to overloaded APIs").
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

import aiohttp
from kubernetes_asyncio.client.rest import ApiException

from hub_resilience.backoff import BackoffPolicy, parse_retry_after
from hub_resilience.hub.metrics import (
    K8S_API_REQUEST_SECONDS,
    K8S_API_REQUESTS,
    K8S_API_RETRIES,
    K8sOperation,
    K8sRetryReason,
)
from hub_resilience.hub.request_window import RECENT_K8S_REQUESTS

T = TypeVar("T")

#: HTTP statuses worth another attempt: throttling and transient server errors.
RETRY_STATUSES = {
    429: K8sRetryReason.THROTTLED,
    500: K8sRetryReason.SERVER_ERROR,
    502: K8sRetryReason.SERVER_ERROR,
    503: K8sRetryReason.SERVER_ERROR,
    504: K8sRetryReason.SERVER_ERROR,
}


def retry_reason(error: BaseException) -> K8sRetryReason | None:
    """Why ``error`` from a Kubernetes client call is worth retrying, or None if it is not.

    A 409, 404, 403 or 422 is an answer, not a failure to answer: the caller decides.
    """
    if isinstance(error, ApiException):
        return RETRY_STATUSES.get(error.status or 0)
    # aiohttp's ServerTimeoutError is both a TimeoutError and a ClientError: a timeout.
    if isinstance(error, (asyncio.TimeoutError, TimeoutError)):
        return K8sRetryReason.TIMEOUT
    if isinstance(error, (aiohttp.ClientError, ConnectionError, OSError)):
        return K8sRetryReason.CONNECTION_ERROR
    return None


def result_code(error: BaseException | None) -> str:
    """The ``code`` label of one attempt's result."""
    if error is None:
        return "ok"
    if isinstance(error, ApiException):
        return str(error.status)
    reason = retry_reason(error)
    return str(reason) if reason is not None else "error"


def retry_after_of(error: BaseException) -> float | None:
    """The Retry-After an API server sent with ``error``, in seconds, if any."""
    if not isinstance(error, ApiException):
        return None
    headers: Mapping[str, str] = error.headers or {}
    return parse_retry_after(headers.get("Retry-After"))


class K8sRequestFailed(Exception):
    """A Kubernetes API request failed every attempt the retry policy allowed.

    ``reason`` says why the last attempt failed (throttled, server_error, timeout,
    connection_error); ``retry_in`` is how long the API server or the backoff would have had
    the spawner wait next, for the message that tells the user when to try again.
    """

    def __init__(
        self,
        operation: K8sOperation,
        attempts: int,
        elapsed: float,
        reason: K8sRetryReason,
        last_error: BaseException,
        retry_in: float,
        started: float | None = None,
    ) -> None:
        self.operation = operation
        self.attempts = attempts
        self.elapsed = elapsed
        self.reason = reason
        self.last_error = last_error
        self.retry_in = retry_in
        #: time.monotonic() of the first attempt
        self.started = time.monotonic() - elapsed if started is None else started
        super().__init__(
            f"Kubernetes API {operation} failed {attempts} times in {elapsed:.0f}s "
            f"(last: {describe_error(last_error)})"
        )


def describe_error(error: BaseException) -> str:
    """One line for a log or a user: the request, the status, the reason and the API
    server's own message, never a traceback."""
    if isinstance(error, ApiException):
        text = f"{error.status} {error.reason or ''}".strip()
        message = api_message(error)
        if message:
            text = f"{text}: {message}"
        operation = getattr(error, "operation", None)
        return f"{operation} answered {text}" if operation else text
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


def api_message(error: ApiException) -> str:
    """The ``message`` of the Status object the API server sent with an error, if any."""
    raw: object = error.body
    body = raw.decode(errors="replace") if isinstance(raw, bytes) else raw
    if not isinstance(body, str) or not body.startswith("{"):
        return ""
    try:
        status = json.loads(body)
    except ValueError:
        return ""
    message = status.get("message") if isinstance(status, dict) else None
    return str(message)[:500] if message else ""


def spawn_time_left(requested: float, start_timeout: float, now: float) -> float:
    """Seconds a throttled request of a spawn may still wait: what is left of the hub's
    ``start_timeout`` (counted from ``requested``, when the hub began to wait), less a second,
    so the retry path gives up, and says why, before the hub cancels the start."""
    return max(0.0, requested + start_timeout - now - 1.0)


def may_retry(
    policy: BackoffPolicy,
    reason: K8sRetryReason,
    attempts: int,
    elapsed: float,
    delay: float,
    throttled_deadline: float,
) -> bool:
    """Whether to try again after ``attempts`` took ``elapsed`` seconds, the last failing for
    ``reason``, when the next attempt would wait ``delay`` more.

    A 429 is the API server saying when it can take the request (Retry-After, which API
    Priority and Fairness raises to 32 s under sustained load), not a failure to answer: it
    is retried until ``throttled_deadline`` (what is left of the spawn's start_timeout, see
    :func:`spawn_time_left`, but never less than the policy's deadline), however many
    attempts that takes. Errors (5xx, timeouts, refused connections) keep the policy's
    attempt limit and deadline (k8s_api_request_retry_timeout).
    """
    if reason is K8sRetryReason.THROTTLED:
        return elapsed + delay <= max(throttled_deadline, policy.deadline)
    return policy.should_retry(attempts, elapsed, delay)


@dataclass
class K8sRequester:
    """Runs Kubernetes API requests through the retry path, for one spawner (``what`` names
    it in log lines: the user and server). ``throttled_deadline``: see :func:`may_retry`.

    ``throttled`` is told after every attempt: the request so far, as it would fail if it
    gave up now, while it is being throttled (429), None once an attempt got any other
    result. Why: when the hub's start_timeout cancels a start stuck in a throttled request,
    the spawner can still say the cluster was throttling and when to try again.
    """

    policy: BackoffPolicy
    log: logging.Logger | logging.LoggerAdapter
    what: str
    throttled_deadline: float = 0.0
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    throttled: Callable[[K8sRequestFailed | None], None] = lambda _: None

    async def call(
        self,
        operation: K8sOperation,
        request: Callable[[], Awaitable[T]],
        *,
        timeout: float,
    ) -> T:
        """``await request()`` (a fresh coroutine per attempt), each attempt bounded by
        ``timeout`` seconds, retried on 429, 5xx, timeouts and connection errors (how long:
        :func:`may_retry`).

        Raises the ApiException of an answer that is not retried (the caller handles 404 or
        409), or :class:`K8sRequestFailed` when the policy runs out.
        """
        first = time.monotonic()
        attempts = 0
        failures = 0  # attempts that failed for a reason other than throttling
        while True:
            attempts += 1
            started = time.monotonic()
            error: BaseException | None = None
            try:
                result = await asyncio.wait_for(request(), timeout)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # classified below; anything unknown is re-raised
                error = e
            seconds, code = time.monotonic() - started, result_code(error)
            K8S_API_REQUEST_SECONDS.labels(operation).observe(seconds)
            K8S_API_REQUESTS.labels(operation, code).inc()
            RECENT_K8S_REQUESTS.add(
                seconds,
                throttled=code == "429",
                answered=error is None or isinstance(error, ApiException),
            )
            reason = None if error is None else retry_reason(error)
            if reason is not K8sRetryReason.THROTTLED:
                self.throttled(None)
            if error is None:
                return result
            if reason is None:
                if isinstance(error, ApiException):
                    error.operation = operation  # type: ignore[attr-defined]
                raise error
            if reason is not K8sRetryReason.THROTTLED:
                failures += 1
            delay = self.policy.delay(attempts - 1, retry_after_of(error))
            elapsed = time.monotonic() - first
            so_far = K8sRequestFailed(operation, attempts, elapsed, reason, error, delay, first)
            if reason is K8sRetryReason.THROTTLED:
                self.throttled(so_far)
            if not may_retry(
                self.policy, reason, failures, elapsed, delay, self.throttled_deadline
            ):
                self.log.warning(
                    "Kubernetes API %s for %s: giving up after %d attempts in %.0fs (last: %s)",
                    operation,
                    self.what,
                    attempts,
                    elapsed,
                    describe_error(error),
                )
                raise so_far
            K8S_API_RETRIES.labels(operation, reason).inc()
            self.log.warning(
                "Kubernetes API %s for %s: %s; retrying in %.1fs (attempt %d)",
                operation,
                self.what,
                describe_error(error),
                delay,
                attempts,
            )
            await self.sleep(delay)
