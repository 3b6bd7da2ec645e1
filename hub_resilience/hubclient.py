"""An async client for the JupyterHub REST API that stays polite when the hub is overloaded.

Everything in this package that talks to the hub goes through :class:`HubClient`, so its
rules (Retry-After and full-jitter retries that never repeat an unsafe request, one pause
for the whole client, paged listings, idempotent spawn and stop) hold everywhere; the numbers
come from :class:`hub_resilience.backoff.BackoffPolicy`. See docs/culler.md ("The API client").
"""
from __future__ import annotations

import asyncio
import enum
import json
import logging
import os
import random
import socket
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any
from urllib.parse import quote, urlencode

from prometheus_client import CollectorRegistry, Counter
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

from hub_resilience import __version__
from hub_resilience.backoff import BackoffPolicy, parse_retry_after
from hub_resilience.labels import LabelEnum

PAGINATION_MEDIA_TYPE = "application/jupyterhub-pagination+json"

#: Methods whose repetition has the same effect as doing them once (RFC 9110, 9.2.2).
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})

#: JupyterHub gained the ``state`` filter on ``GET /users`` in 1.3.
STATE_FILTER_MIN_VERSION = (1, 3)

log = logging.getLogger(__name__)


class HubAPIRetryReason(LabelEnum):
    """Why a failed hub API request was retried (the ``reason`` label)."""

    THROTTLED = "429"  # the hub refused: concurrent_spawn_limit or an overload
    UNAVAILABLE = "503"
    SERVER_ERROR = "5xx"  # another 5xx, for a request that is safe to repeat
    CONNECT = "connect"  # no connection was made
    CONNECTION = "connection"  # the connection was lost, for a request safe to repeat


#: The client's own metrics, in a registry of their own: the process that uses the client
#: exports it (the service adds it to its /metrics; the tools read it), and importing the
#: client registers nothing anywhere else.
HUB_API_REGISTRY = CollectorRegistry(auto_describe=True)

# ``component`` names the caller from a fixed set given by the code ("culler", ...);
# ``status`` is the HTTP status code or "connection_error".
HUB_API_REQUESTS = Counter(
    "hub_resilience_hub_api_requests_total",
    "Requests sent to the JupyterHub REST API, every attempt counted, by caller, method and "
    "HTTP status (or connection_error when no answer came).",
    ["component", "method", "status"],
    registry=HUB_API_REGISTRY,
)
HUB_API_RETRIES = Counter(
    "hub_resilience_hub_api_retries_total",
    "JupyterHub API requests retried after backing off, by caller and reason.",
    ["component", "reason"],
    registry=HUB_API_REGISTRY,
)


class HubAPIError(Exception):
    """A hub API call failed for good (after any retries it was allowed)."""

    def __init__(
        self,
        message: str,
        *,
        method: str,
        path: str,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.method = method
        self.path = path
        self.status = status
        self.retry_after = retry_after

    def __str__(self) -> str:
        status = self.status if self.status is not None else "no response"
        return f"{self.method} {self.path}: {status}: {self.message}"


class HubUnavailableError(HubAPIError):
    """No HTTP answer at all: connection refused or reset, timeout, or deadline reached."""


class MalformedResponseError(HubAPIError):
    """The hub answered, but not with the JSON shape this client expects."""


class SpawnFailedError(HubAPIError):
    """A server we started and waited for stopped being active before it became ready."""


class StartResult(enum.Enum):
    """What ``start_server`` found; none of these is an error."""

    STARTED = "started"  # 201: the server is up
    PENDING = "pending"  # 202: the spawn is in progress (ours or an earlier one)
    ALREADY_RUNNING = "already_running"  # 400 "already running", confirmed by a GET


class StopResult(enum.Enum):
    """How the hub answered ``DELETE .../server``."""

    STOPPED = "stopped"  # 204
    STOPPING = "stopping"  # 202: slow to stop, still in progress
    REFUSED = "refused"  # 400: e.g. "already stopping" on older hubs, or a rename in progress
    GONE = "gone"  # 404: no such user or server


class DeleteUserResult(enum.Enum):
    """How the hub answered ``DELETE /users/:name``."""

    DELETED = "deleted"  # 204
    REFUSED = "refused"  # 400: a server is still stopping ("please wait")
    GONE = "gone"  # 404


@dataclass(frozen=True)
class StopOutcome:
    """The result of a stop request and the hub's own words about it."""

    result: StopResult
    message: str = ""


@dataclass(frozen=True)
class DeleteUserOutcome:
    """The result of a user deletion and the hub's own words about it."""

    result: DeleteUserResult
    message: str = ""


@dataclass(frozen=True)
class HubResponse:
    """A final HTTP answer from the hub."""

    method: str
    path: str
    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        """The body as JSON; :class:`MalformedResponseError` when it is not JSON."""
        try:
            return json.loads(self.body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            raise MalformedResponseError(
                f"response is not valid JSON ({e}); starts with {self.body[:80]!r}",
                method=self.method,
                path=self.path,
                status=self.status,
            ) from None

    def message(self) -> str:
        """The hub's error message (its JSON ``message``), or the raw body."""
        try:
            model = json.loads(self.body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            return self.body[:200].decode("utf-8", "replace")
        if isinstance(model, dict) and isinstance(model.get("message"), str):
            return model["message"]
        return self.body[:200].decode("utf-8", "replace")


@dataclass(frozen=True)
class UserPage:
    """One page of ``GET /users``.

    ``offset`` and ``limit`` are what the hub applied (it caps ``limit`` at its
    ``api_page_max_limit``); ``next_offset`` is None on the last page. ``fetched_at`` is the
    ``time.monotonic()`` at which the answer arrived, so callers can tell how stale it is.
    """

    items: list[Any]
    offset: int
    limit: int
    total: int | None
    next_offset: int | None
    fetched_at: float


def parse_user_page(payload: Any, *, offset: int, limit: int, fetched_at: float) -> UserPage:
    """Interpret a ``GET /users`` body, paginated (JupyterHub >= 2) or a plain list (older).

    Raises ValueError when the shape is neither. Items are not validated here: one bad user
    model should cost that user, not the whole page.
    """
    if isinstance(payload, list):
        return UserPage(payload, offset, limit, len(payload), None, fetched_at)
    if not isinstance(payload, dict):
        raise ValueError(f"expected a JSON object or list, got {type(payload).__name__}")
    items = payload.get("items")
    pagination = payload.get("_pagination")
    if not isinstance(items, list) or not isinstance(pagination, dict):
        raise ValueError("paginated response lacks an 'items' list or a '_pagination' object")
    try:
        page_offset = int(pagination.get("offset", offset))
        page_limit = int(pagination.get("limit", limit))
        total_raw = pagination.get("total")
        total = None if total_raw is None else int(total_raw)
        following = pagination.get("next")
        next_offset = None if not following else int(following["offset"])
    except (TypeError, ValueError, KeyError) as e:
        raise ValueError(f"bad '_pagination' object: {e}") from None
    backwards = next_offset is not None and next_offset <= page_offset
    if page_offset < 0 or page_limit < 1 or backwards:
        raise ValueError(f"inconsistent '_pagination' object: {pagination!r}")
    return UserPage(items, page_offset, page_limit, total, next_offset, fetched_at)


def retry_reason(
    status: int | None, *, retry_safe: bool, request_sent: bool
) -> HubAPIRetryReason | None:
    """Why a failed attempt may be retried, or None when it must not be.

    ``status`` is the HTTP status, or None when no answer arrived. 429 and 503 mean the hub
    refused before doing anything, so any request may be retried; so may one whose connection
    was never established. Other 5xx answers and lost connections may hide a request the hub
    did carry out, so only requests that are ``retry_safe`` are repeated. The returned reason
    is a metric label from a fixed set.
    """
    if status is None:
        if not request_sent:
            return HubAPIRetryReason.CONNECT
        return HubAPIRetryReason.CONNECTION if retry_safe else None
    if status == 429:
        return HubAPIRetryReason.THROTTLED
    if status == 503:
        return HubAPIRetryReason.UNAVAILABLE
    if status >= 500:
        return HubAPIRetryReason.SERVER_ERROR if retry_safe else None
    return None


def request_was_sent(error: BaseException) -> bool:
    """Whether a transport error may have happened after the request reached the hub.

    Only failures to connect (refused, unresolvable, timed out while connecting or while
    queued in the client) prove that the hub never saw the request.
    """
    if isinstance(error, ConnectionRefusedError | socket.gaierror):
        return False
    if isinstance(error, HTTPClientError) and error.code == 599:
        text = str(error)
        if "while connecting" in text or "in request queue" in text:
            return False
    return True


def _parse_version(text: str) -> tuple[int, ...]:
    parts = []
    for piece in text.split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit()) or "0"
        parts.append(int(digits))
        if not piece.isdigit():
            break
    return tuple(parts)


def _user_path(name: str, server_name: str = "") -> str:
    if server_name:
        return f"/users/{quote(name, safe='')}/servers/{quote(server_name, safe='')}"
    return f"/users/{quote(name, safe='')}/server"


def _isoformat(when: datetime) -> str:
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return when.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


class HubClient:
    """Async JupyterHub REST API client with token auth, paging, and overload-safe retries.

    ``api_url`` is the hub API root (``.../hub/api``), ``token`` an API token with the scopes
    the caller needs. ``concurrency`` bounds the requests in flight (None: unbounded).
    ``component`` names the caller in the ``hub_resilience_hub_api_*`` metrics; it must come
    from a small fixed set (``"culler"``, ``"service"``...).
    """

    def __init__(
        self,
        api_url: str,
        token: str,
        *,
        policy: BackoffPolicy | None = None,
        concurrency: int | None = None,
        request_timeout: float = 30.0,
        component: str = "client",
        rng: random.Random | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        if not api_url:
            raise ValueError("HubClient api_url is empty (set JUPYTERHUB_API_URL)")
        if not token:
            raise ValueError("HubClient token is empty (set JUPYTERHUB_API_TOKEN)")
        if concurrency is not None and concurrency < 1:
            raise ValueError(f"HubClient concurrency must be >= 1 or None, not {concurrency}")
        if request_timeout <= 0:
            raise ValueError(f"HubClient request_timeout must be > 0, not {request_timeout}")
        self.api_url = api_url.rstrip("/")
        self.token = token
        self.policy = policy or BackoffPolicy()
        self.concurrency = concurrency
        self.request_timeout = request_timeout
        self.component = component
        self.log = logger or log
        self._rng = rng or random.Random()
        self._semaphore = asyncio.Semaphore(concurrency) if concurrency else None
        self._http: AsyncHTTPClient | None = None
        self._paused_until = 0.0
        self._state_filter: bool | None = None

    @classmethod
    def from_environment(cls, **kwargs: Any) -> HubClient:
        """A client for the hub this process runs under, as a JupyterHub service does."""
        url = os.environ.get("JUPYTERHUB_API_URL", "")
        token = os.environ.get("JUPYTERHUB_API_TOKEN", "")
        if not url:
            raise ValueError("JUPYTERHUB_API_URL is not set")
        if not token:
            raise ValueError("JUPYTERHUB_API_TOKEN is not set")
        return cls(url, token, **kwargs)

    async def __aenter__(self) -> HubClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Release the HTTP connections."""
        if self._http is not None:
            self._http.close()
            self._http = None

    # -- the request loop -------------------------------------------------------------------

    @property
    def paused_for(self) -> float:
        """Seconds this client still holds all requests because the hub asked it to wait."""
        return max(0.0, self._paused_until - time.monotonic())

    def _url(self, path: str, params: Mapping[str, Any] | None) -> str:
        url = self.api_url + (path if path.startswith("/") else "/" + path)
        if params:
            query = {k: v for k, v in params.items() if v is not None}
            if query:
                url += "?" + urlencode(query)
        return url

    async def _wait_out_pause(self, method: str, path: str, started: float) -> None:
        while True:
            wait = self._paused_until - time.monotonic()
            if wait <= 0:
                return
            if time.monotonic() - started + wait > self.policy.deadline:
                raise HubAPIError(
                    f"the hub asked clients to wait {wait:.1f}s, past this call's deadline",
                    method=method,
                    path=path,
                    status=429,
                    retry_after=wait,
                )
            await asyncio.sleep(wait)

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        body: Any = None,
        headers: Mapping[str, str] | None = None,
        retry_safe: bool | None = None,
        allowed: Iterable[int] = (),
    ) -> HubResponse:
        """Send one API request, retrying as the policy allows.

        Returns the response when its status is below 400 or in ``allowed``; raises
        :class:`HubAPIError` (or a subclass) otherwise. ``body`` is sent as JSON.
        ``retry_safe`` defaults to whether ``method`` is idempotent; pass True only for a
        request whose repetition is harmless (the caller's docstring should say why).
        """
        method = method.upper()
        if retry_safe is None:
            retry_safe = method in IDEMPOTENT_METHODS
        allowed = frozenset(allowed)
        url = self._url(path, params)
        request_headers = {
            "Authorization": f"token {self.token}",
            "Accept": "application/json",
            "User-Agent": f"hub-resilience/{__version__}",
        }
        request_headers.update(headers or {})
        payload: bytes | None = None
        if body is not None:
            payload = json.dumps(body).encode("utf-8")
            request_headers["Content-Type"] = "application/json"
        elif method in ("POST", "PUT", "PATCH"):
            payload = b""
        if self._http is None:
            self._http = AsyncHTTPClient(
                force_instance=True, max_clients=max(10, self.concurrency or 10)
            )

        started = time.monotonic()
        attempt = 0
        while True:
            await self._wait_out_pause(method, path, started)
            remaining = self.policy.deadline - (time.monotonic() - started)
            if remaining <= 0:
                raise HubUnavailableError(
                    "deadline reached before the request could be sent", method=method, path=path
                )
            timeout = min(self.request_timeout, remaining)
            request = HTTPRequest(
                url,
                method=method,
                headers=request_headers,
                body=payload,
                connect_timeout=timeout,
                request_timeout=timeout,
                allow_nonstandard_methods=True,
                follow_redirects=False,
            )
            status: int | None = None
            retry_after: float | None = None
            sent = True
            if self._semaphore is not None:
                await self._semaphore.acquire()
            try:
                response = await self._http.fetch(request, raise_error=False)
            except Exception as e:  # transport errors: refused, reset, timeout, TLS...
                sent = request_was_sent(e)
                HUB_API_REQUESTS.labels(self.component, method, "connection_error").inc()
                failure: HubAPIError = HubUnavailableError(
                    f"{type(e).__name__}: {e}", method=method, path=path
                )
            else:
                status = response.code
                HUB_API_REQUESTS.labels(self.component, method, str(status)).inc()
                result = HubResponse(
                    method, path, status, dict(response.headers), response.body or b""
                )
                if status < 400 or status in allowed:
                    return result
                if status in (429, 503):
                    retry_after = parse_retry_after(response.headers.get("Retry-After"))
                failure = HubAPIError(
                    result.message(),
                    method=method,
                    path=path,
                    status=status,
                    retry_after=retry_after,
                )
            finally:
                if self._semaphore is not None:
                    self._semaphore.release()
            attempt += 1
            reason = retry_reason(status, retry_safe=retry_safe, request_sent=sent)
            if reason is None:
                raise failure
            delay = self.policy.delay(attempt - 1, retry_after, self._rng)
            if not self.policy.should_retry(attempt, time.monotonic() - started, delay):
                raise failure
            HUB_API_RETRIES.labels(self.component, reason).inc()
            if status in (429, 503):
                # The hub is overloaded for every request of ours, not just this one.
                self._paused_until = max(self._paused_until, time.monotonic() + delay)
                self.log.warning(
                    "Hub answered %s to %s %s; pausing requests for %.1fs (Retry-After: %s)",
                    status, method, path, delay,
                    "none" if retry_after is None else f"{retry_after:g}s",
                )
            else:
                self.log.info(
                    "Retrying %s %s in %.1fs after %s (attempt %d of %d)",
                    method, path, delay, failure, attempt, self.policy.max_attempts,
                )
            await asyncio.sleep(delay)

    async def get_json(self, path: str, params: Mapping[str, Any] | None = None) -> Any:
        """GET a path and decode its JSON body."""
        return (await self.request("GET", path, params=params)).json()

    # -- hub and users ----------------------------------------------------------------------

    async def version(self) -> str:
        """The hub's version string (``GET /``)."""
        model = await self.get_json("/")
        if not isinstance(model, dict) or not isinstance(model.get("version"), str):
            raise MalformedResponseError("no 'version' in the hub's answer", method="GET", path="/")
        return model["version"]

    async def supports_state_filter(self) -> bool:
        """Whether ``GET /users`` accepts ``state=active|ready|inactive`` (JupyterHub >= 1.3)."""
        if self._state_filter is None:
            self._state_filter = _parse_version(await self.version()) >= STATE_FILTER_MIN_VERSION
        return self._state_filter

    async def list_users_page(
        self,
        *,
        offset: int = 0,
        limit: int = 200,
        state: str | None = None,
        sort: str | None = None,
        include_stopped_servers: bool = False,
        name_filter: str | None = None,
    ) -> UserPage:
        """One page of users (``state`` is ``active``, ``ready``, ``inactive`` or None)."""
        if offset < 0 or limit < 1:
            raise ValueError(f"offset must be >= 0 and limit >= 1, not {offset}, {limit}")
        params: dict[str, Any] = {"offset": offset, "limit": limit, "state": state, "sort": sort}
        if include_stopped_servers:
            params["include_stopped_servers"] = "1"
        if name_filter:
            params["name_filter"] = name_filter
        response = await self.request(
            "GET", "/users", params=params, headers={"Accept": PAGINATION_MEDIA_TYPE}
        )
        try:
            return parse_user_page(
                response.json(), offset=offset, limit=limit, fetched_at=time.monotonic()
            )
        except ValueError as e:
            raise MalformedResponseError(str(e), method="GET", path="/users") from None

    async def iter_user_pages(
        self, *, page_size: int = 200, state: str | None = None, **kwargs: Any
    ) -> AsyncIterator[UserPage]:
        """Every page of users in order, one request at a time.

        Plain forward paging: a caller that removes users from the listed set while iterating
        (as the culler does) must adjust offsets itself, see :mod:`hub_resilience.service.culler`.
        """
        offset = 0
        while True:
            page = await self.list_users_page(offset=offset, limit=page_size, state=state, **kwargs)
            yield page
            if page.next_offset is None:
                return
            offset = page.next_offset

    async def iter_users(
        self, *, page_size: int = 200, state: str | None = None, **kwargs: Any
    ) -> AsyncIterator[Any]:
        """Every user model, fetched page by page."""
        async for page in self.iter_user_pages(page_size=page_size, state=state, **kwargs):
            for item in page.items:
                yield item

    async def get_user(self, name: str) -> dict[str, Any] | None:
        """A user's model, or None when the hub does not know the user."""
        path = f"/users/{quote(name, safe='')}"
        response = await self.request("GET", path, allowed=(404,))
        if response.status == 404:
            return None
        model = response.json()
        if not isinstance(model, dict) or model.get("name") != name:
            raise MalformedResponseError("not a user model", method="GET", path=path)
        return model

    async def get_server(self, name: str, server_name: str = "") -> dict[str, Any] | None:
        """An active (running or pending) server's model, or None when it is not active."""
        model = await self.get_user(name)
        if model is None:
            return None
        servers = model.get("servers")
        if not isinstance(servers, dict):
            raise MalformedResponseError(
                "user model has no 'servers' (does the token have read:servers?)",
                method="GET",
                path=f"/users/{quote(name, safe='')}",
            )
        server = servers.get(server_name)
        return server if isinstance(server, dict) else None

    async def create_users(self, names: list[str], *, admin: bool = False) -> list[dict[str, Any]]:
        """Create users in one request; existing names are skipped. Never retried after the
        request may have reached the hub (a repeat would answer 409 for the users it made)."""
        body: dict[str, Any] = {"usernames": list(names)}
        if admin:
            body["admin"] = True
        response = await self.request("POST", "/users", body=body, allowed=(409,))
        if response.status == 409:
            return []
        created = response.json()
        if not isinstance(created, list):
            raise MalformedResponseError("expected a list of users", method="POST", path="/users")
        return created

    async def post_activity(
        self,
        name: str,
        *,
        last_activity: datetime | None = None,
        servers: Mapping[str, datetime] | None = None,
    ) -> None:
        """Report activity for a user and/or their servers.

        Safe to retry: the hub keeps the latest timestamp, so a repeat changes nothing.
        """
        body: dict[str, Any] = {}
        if last_activity is not None:
            body["last_activity"] = _isoformat(last_activity)
        if servers:
            body["servers"] = {k: {"last_activity": _isoformat(v)} for k, v in servers.items()}
        await self.request(
            "POST", f"/users/{quote(name, safe='')}/activity", body=body, retry_safe=True
        )

    async def delete_user(self, name: str) -> DeleteUserOutcome:
        """Delete a user. 400 (a server still stopping) and 404 are outcomes, not errors."""
        path = f"/users/{quote(name, safe='')}"
        response = await self.request("DELETE", path, allowed=(400, 404))
        kind = {400: DeleteUserResult.REFUSED, 404: DeleteUserResult.GONE}.get(
            response.status, DeleteUserResult.DELETED
        )
        return DeleteUserOutcome(kind, response.message() if response.status >= 400 else "")

    # -- servers ----------------------------------------------------------------------------

    async def start_server(
        self, name: str, server_name: str = "", *, user_options: Mapping[str, Any] | None = None
    ) -> StartResult:
        """Ask the hub to start a server; a server already starting or running is fine.

        Retried when the hub refused (429, 503) or was not reached. A start whose answer was
        lost (a timeout on a swamped hub, a reset connection) may have reached the hub: the
        server's model says whether it did, and the start is sent again only when the hub has
        no such server. A 5xx answer means the spawn itself failed, and spawning again is the
        caller's decision.
        """
        body = None if user_options is None else dict(user_options)
        path = _user_path(name, server_name)
        attempts = 0
        while True:
            try:
                response = await self.request("POST", path, body=body, allowed=(400,))
                break
            except HubUnavailableError:
                # Bounded by attempts, not by the deadline: each request() has its own, and
                # waiting out the hub's 429s may have used most of it before the answer
                # was lost.
                attempts += 1
                found = await self._start_in_progress(name, server_name)
                if found is not None:
                    return found
                if attempts >= self.policy.max_attempts:
                    raise
                await asyncio.sleep(self.policy.delay(attempts - 1, None, self._rng))
        if response.status == 201:
            return StartResult.STARTED
        if response.status == 202:
            return StartResult.PENDING
        if response.status == 400:
            # 400 means "already running" or "pending stop" (or a bad request); the server's
            # model says which, so we do not depend on the wording of the message.
            found = await self._start_in_progress(name, server_name)
            if found is not None:
                return found
            raise HubAPIError(response.message(), method="POST", path=path, status=400)
        return StartResult.STARTED

    async def _start_in_progress(self, name: str, server_name: str) -> StartResult | None:
        """ALREADY_RUNNING or PENDING when the hub's model shows the server so, else None."""
        server = await self.get_server(name, server_name)
        if server and server.get("ready"):
            return StartResult.ALREADY_RUNNING
        if server and server.get("pending") == "spawn":
            return StartResult.PENDING
        return None

    async def stop_server(
        self, name: str, server_name: str = "", *, remove: bool = False
    ) -> StopOutcome:
        """Ask the hub to stop a server (and, for a named server, forget it if ``remove``)."""
        body = {"remove": True} if remove and server_name else None
        response = await self.request(
            "DELETE", _user_path(name, server_name), body=body, allowed=(400, 404)
        )
        kind = {
            202: StopResult.STOPPING,
            400: StopResult.REFUSED,
            404: StopResult.GONE,
        }.get(response.status, StopResult.STOPPED)
        return StopOutcome(kind, response.message() if response.status >= 400 else "")

    async def wait_for_server_stopped(
        self,
        name: str,
        server_name: str = "",
        *,
        timeout: float = 60.0,
        poll_interval: float = 1.0,
    ) -> bool:
        """Poll until a server is no longer active; False if it still is after ``timeout``."""
        deadline = time.monotonic() + timeout
        interval = poll_interval
        while True:
            if await self.get_server(name, server_name) is None:
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            await asyncio.sleep(min(remaining, interval * self._rng.uniform(0.5, 1.0)))
            interval = min(interval * 1.5, 10.0)

    async def start_server_and_wait(
        self,
        name: str,
        server_name: str = "",
        *,
        user_options: Mapping[str, Any] | None = None,
        timeout: float = 300.0,
        poll_interval: float = 1.0,
    ) -> dict[str, Any]:
        """Start a server (or join a start in progress) and return its model once ready.

        For tools that pre-warm servers before an event. Polls with growing, jittered
        intervals so that many callers do not poll in step. Raises
        :class:`SpawnFailedError` when the server stops being active before it is ready
        and ``TimeoutError`` when it is not ready after ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        path = _user_path(name, server_name)
        try:
            await self.start_server(name, server_name, user_options=user_options)
        except HubAPIError as e:
            if e.status is not None and e.status >= 500:
                # The hub waits up to its slow_spawn_timeout and reports a failed spawn so.
                raise SpawnFailedError(
                    e.message, method="POST", path=path, status=e.status
                ) from e
            raise
        interval = poll_interval
        while True:
            server = await self.get_server(name, server_name)
            if server is None or server.get("pending") == "stop":
                raise SpawnFailedError(
                    "the server stopped before it became ready (see the hub log)",
                    method="POST",
                    path=path,
                )
            if server.get("ready"):
                return server
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"{name}/{server_name} not ready after {timeout}s")
            await asyncio.sleep(min(remaining, interval * self._rng.uniform(0.5, 1.0)))
            interval = min(interval * 1.5, 10.0)
