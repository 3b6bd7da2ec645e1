"""A small HTTP proxy in front of the real hub API that answers a share of requests badly.

Fault-injection tests point a client at :attr:`FaultProxy.url` instead of the hub. Each
request is forwarded to the hub unchanged, except that, with probability ``rate``, it gets
one of these instead (drawn from a ``random.Random(seed)``, so a run is repeatable):

- ``400``, ``404``, ``500``: that status with a JupyterHub-style JSON error, hub not asked;
- ``429``: "too many requests" with ``Retry-After`` in seconds; ``429-date``: with
  ``Retry-After`` as an HTTP-date; ``429-bare``: without ``Retry-After`` (as JupyterHub's
  active-server limit answers);
- ``reset``: the connection is reset (TCP RST) without an answer, hub not asked;
- ``lost``: the request is forwarded and carried out, then the connection is reset instead
  of answering (what a client sees when the hub's answer comes after its timeout);
- ``malformed``: the request is forwarded and the hub's answer is corrupted into invalid
  JSON (for requests whose answer has a body; others pass through).

:meth:`FaultProxy.stop_faults` turns injection off ("the faults clear"). Every request is
recorded (:attr:`FaultProxy.records`), and an optional ``on_forward`` coroutine runs before a
request is forwarded, so a test can audit the hub's state at the moment the request arrives.
"""
from __future__ import annotations

import random
import socket
import struct
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from email.utils import formatdate
from urllib.parse import unquote, urlsplit

from tornado import httpserver, web
from tornado.httpclient import AsyncHTTPClient, HTTPRequest

from hub_resilience.hubclient import HubClient
from tests.support.hub import unused_port

FAULT_KINDS: tuple[str, ...] = (
    "400", "404", "429", "429-date", "429-bare", "500", "reset", "lost", "malformed",
)

_HOP_BY_HOP = {
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
    "trailers", "transfer-encoding", "upgrade", "content-length", "host",
}


@dataclass(frozen=True)
class Record:
    """One request the proxy saw: ``outcome`` is a fault kind or ``forwarded``; ``status``
    is what the client was sent (None for a reset)."""

    method: str
    path: str
    outcome: str
    status: int | None
    at: float  # time.monotonic() when the proxy answered (or reset)


class FaultProxy:
    """Forward to ``upstream`` (``http://host:port``), injecting faults (see module doc)."""

    def __init__(
        self,
        upstream: str,
        *,
        seed: int = 0,
        rate: float = 0.25,
        kinds: Sequence[str] = FAULT_KINDS,
        retry_after: float = 1.0,
        on_forward: Callable[[str, str], Awaitable[None]] | None = None,
    ) -> None:
        unknown = set(kinds) - set(FAULT_KINDS)
        if unknown:
            raise ValueError(f"unknown fault kinds {sorted(unknown)}; known: {FAULT_KINDS}")
        if not 0 <= rate <= 1:
            raise ValueError(f"rate must be within [0, 1], not {rate}")
        parts = urlsplit(upstream)
        self.upstream = f"{parts.scheme}://{parts.netloc}"
        self.rate = rate
        self.kinds = tuple(kinds)
        self.retry_after = retry_after
        self.on_forward = on_forward
        self.injecting = rate > 0
        self.injected: Counter[str] = Counter()
        self.records: list[Record] = []
        self._rng = random.Random(seed)
        self._script: deque[str | None] = deque()
        self._port = unused_port()
        self._server: httpserver.HTTPServer | None = None
        self._http: AsyncHTTPClient | None = None

    @property
    def url(self) -> str:
        """Base URL of the proxy (same paths as upstream)."""
        return f"http://127.0.0.1:{self._port}"

    def proxied(self, url: str) -> str:
        """``url`` on the upstream rewritten to go through the proxy."""
        parts = urlsplit(url)
        return self.url + parts.path + (f"?{parts.query}" if parts.query else "")

    def stop_faults(self) -> None:
        """Forward everything from now on."""
        self.injecting = False

    def queue(self, *outcomes: str | None) -> None:
        """Script the next requests: each gets the given fault kind, or None to forward it,
        before random injection (if any) resumes. For tests of exact sequences."""
        unknown = {o for o in outcomes if o is not None} - set(FAULT_KINDS)
        if unknown:
            raise ValueError(f"unknown fault kinds {sorted(unknown)}; known: {FAULT_KINDS}")
        self._script.extend(outcomes)

    def choose(self) -> str | None:
        """The fault for the next request, or None to forward it."""
        if self._script:
            return self._script.popleft()
        if not self.injecting or self._rng.random() >= self.rate:
            return None
        return self._rng.choice(self.kinds)

    async def start(self) -> FaultProxy:
        self._http = AsyncHTTPClient(force_instance=True, max_clients=50)
        app = web.Application([(r".*", _ProxyHandler, {"proxy": self})])
        self._server = httpserver.HTTPServer(app)
        self._server.listen(self._port, address="127.0.0.1")
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            await self._server.close_all_connections()
            self._server = None
        if self._http is not None:
            self._http.close()
            self._http = None

    async def __aenter__(self) -> FaultProxy:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def count(
        self, method: str | None = None, path_prefix: str = "", outcome: str | None = None
    ) -> int:
        """How many recorded requests match."""
        return sum(
            1 for r in self.records
            if (method is None or r.method == method)
            and r.path.startswith(path_prefix)
            and (outcome is None or r.outcome == outcome)
        )


class _ProxyHandler(web.RequestHandler):
    SUPPORTED_METHODS = ("GET", "HEAD", "POST", "DELETE", "PATCH", "PUT", "OPTIONS")

    def initialize(self, proxy: FaultProxy) -> None:
        self.proxy = proxy

    def check_xsrf_cookie(self) -> None:
        return None

    def _record(self, outcome: str, status: int | None) -> None:
        self.proxy.records.append(
            Record(self.request.method or "", self.request.path, outcome, status, time.monotonic())
        )

    def _error(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        for key, value in (headers or {}).items():
            self.set_header(key, value)
        self.finish(f'{{"status": {status}, "message": "{message} (injected fault)"}}')

    async def _handle(self) -> None:
        fault = self.proxy.choose()
        if fault is not None and fault != "malformed":  # counted when actually corrupted
            self.proxy.injected[fault] += 1
        if fault in ("400", "404", "500"):
            self._record(fault, int(fault))
            self._error(int(fault), f"simulated {fault}")
            return
        if fault == "429":
            self._record(fault, 429)
            self._error(429, "slow down", {"Retry-After": f"{self.proxy.retry_after:g}"})
            return
        if fault == "429-date":
            self._record(fault, 429)
            # HTTP-dates have whole seconds: round up so the wait is not zero.
            when = formatdate(timeval=time.time() + self.proxy.retry_after + 1, usegmt=True)
            self._error(429, "slow down", {"Retry-After": when})
            return
        if fault == "429-bare":
            self._record(fault, 429)
            self._error(429, "Active user limit exceeded")
            return
        if fault == "reset":
            self._record(fault, None)
            self._reset()
            return
        await self._forward(corrupt=fault == "malformed", lose=fault == "lost")

    def _reset(self) -> None:
        stream = self.detach()
        # SO_LINGER with a zero timeout makes close() send RST instead of FIN.
        stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        stream.close()

    async def _forward(self, corrupt: bool, lose: bool = False) -> None:
        if self.proxy.on_forward is not None:
            await self.proxy.on_forward(self.request.method or "", self.request.path)
        headers = {
            k: v for k, v in self.request.headers.get_all() if k.lower() not in _HOP_BY_HOP
        }
        method = self.request.method or "GET"
        body = self.request.body if method in ("POST", "PUT", "PATCH", "DELETE") else None
        assert self.proxy._http is not None
        try:
            response = await self.proxy._http.fetch(
                HTTPRequest(
                    self.proxy.upstream + self.request.uri,
                    method=method,
                    headers=headers,
                    body=body if body or method in ("POST", "PUT", "PATCH") else None,
                    allow_nonstandard_methods=True,
                    follow_redirects=False,
                    request_timeout=120,
                ),
                raise_error=False,
            )
        except OSError as e:
            self._record("upstream_error", 502)
            self._error(502, f"upstream unreachable: {e}")
            return
        status = response.code
        if lose:
            self._record("lost", None)
            self._reset()
            return
        payload = response.body or b""
        outcome = "forwarded"
        if corrupt and payload and status not in (204, 304):
            payload = payload[: len(payload) // 2] + b"\x00<not json"
            outcome = "malformed"
            self.proxy.injected[outcome] += 1
        self._record(outcome, status)
        self.set_status(status, response.reason)
        for key, value in response.headers.get_all():
            if key.lower() not in _HOP_BY_HOP and key.lower() != "content-encoding":
                self.set_header(key, value)
        if status in (204, 304):
            self.finish()
        else:
            self.finish(payload)

    get = head = post = delete = patch = put = options = _handle  # type: ignore[assignment]


class DeletionAuditor:
    """An ``on_forward`` hook recording every user deletion that reaches the hub while the
    user still has an active server (running, starting or stopping): the hub's state is
    read directly, at the moment the ``DELETE /users/:name`` arrives."""

    def __init__(self, client: HubClient, api_prefix: str) -> None:
        self.client = client
        self.prefix = api_prefix.rstrip("/") + "/users/"
        self.checked: list[str] = []
        self.violations: list[tuple[str, dict]] = []

    async def __call__(self, method: str, path: str) -> None:
        if method != "DELETE" or not path.startswith(self.prefix):
            return
        rest = path[len(self.prefix) :]
        if "/" in rest:
            return  # a server, not a user
        name = unquote(rest)
        self.checked.append(name)
        model = await self.client.get_user(name)
        if model is not None and model.get("servers"):
            self.violations.append((name, model["servers"]))
