"""The stopped-server handler: answer requests for servers that are not running, without the hub.

Why: tabs left open on a stopped server keep polling it, and through the proxy's default
route those requests land on the hub, which locked up under them in the incident. What needs
no knowledge of the user (API, JSON, websocket, sub-resources: the bulk) is answered here; a
browser navigation is sent to the hub, which knows the user's servers. A request for a server
the hub listed as running lost only its route (a proxy restart, until route repair): it is
sent where the hub can serve it, never told the server stopped. The decision
(:func:`decide`) is pure; :class:`StoppedServerHandler` is the tornado adapter.
What each request gets is in docs/service.md ("The stopped-server handler").
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote

from tornado import web
from tornado.http1connection import HTTP1Connection

from hub_resilience.service.metrics import STOPPED_SERVER_RESPONSES, StoppedKind
from hub_resilience.service.running import RunningServers

#: First path segments of a *default* server's URLs (Jupyter Server, JupyterLab, classic
#: notebook, common extensions). With named servers on, a path whose segment after the user
#: name is one of these is certainly for the default server; any other segment may be a
#: server's name or a path of an extension (``git-pull``, ``code-server``), which only the
#: hub can tell apart, so the handler never guesses.
DEFAULT_SERVER_PATHS = frozenset({
    "", "api", "lab", "tree", "notebooks", "edit", "view", "files", "static", "custom",
    "nbconvert", "nbextensions", "kernelspecs", "terminals", "login", "logout", "doc",
    "voila", "proxy", "rstudio", "vscode", "desktop", "metrics", "favicon.ico", "apps",
    "retro", "consoles", "extensions", "lsp", "git", "jupyterlab-git",
})

#: Kinds answered with JSON.
JSON_KINDS = frozenset({StoppedKind.API, StoppedKind.XHR, StoppedKind.WEBSOCKET, StoppedKind.JSON})
#: ``Sec-Fetch-Dest`` values of a navigation (a page the browser shows).
DOCUMENT_DESTINATIONS = frozenset({"", "document", "iframe", "frame", "embed", "object"})
#: What a browser navigation gets: a redirect to the hub, which knows the user.
NAVIGATION_STATUS = 302

NO_STORE_HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
}
#: A refused websocket upgrade also closes its connection: nothing is held open for it.
WEBSOCKET_HEADERS = {**NO_STORE_HEADERS, "Connection": "close"}
#: What a request that cannot follow a redirect (a websocket upgrade, a non-GET: the hub
#: fails every non-GET for /user/ with "not running") gets when its server runs but its route
#: is missing: try again shortly, by when route repair has put the route back.
ROUTE_MISSING_STATUS = 503
ROUTE_MISSING_RETRY_AFTER = 5


@dataclass(frozen=True)
class StoppedSettings:
    """How the handler answers (set by the service from configure()'s wiring)."""

    base_url: str = "/"
    status: int = 424
    named_servers: bool = False
    default_server_paths: frozenset[str] = DEFAULT_SERVER_PATHS

    def __post_init__(self) -> None:
        if not (self.base_url.startswith("/") and self.base_url.endswith("/")):
            raise ValueError(f"base_url must start and end with '/', got {self.base_url!r}")
        if self.status not in (404, 424, 503):
            raise ValueError(f"stopped-server status must be 404, 424 or 503, not {self.status}")

    @property
    def prefix(self) -> str:
        """The path prefix the proxy routes here: ``{base_url}user/``."""
        return self.base_url + "user/"

    def statuses_of(self, kind: StoppedKind) -> tuple[int, ...]:
        """The statuses answers of this kind get (the ``status`` metric label)."""
        if kind == StoppedKind.INVALID:
            return (404,)
        if kind == StoppedKind.ROUTE_MISSING:
            return (NAVIGATION_STATUS, ROUTE_MISSING_STATUS)
        return (NAVIGATION_STATUS,) if kind == StoppedKind.PAGE else (self.status,)


@dataclass(frozen=True)
class ServerPath:
    """Whose server a ``{base_url}user/...`` path is for."""

    user: str  # the user name, unescaped
    rest: list[str]  # the path segments after the user name
    #: Certainly the user's default server: named servers are off, or the segment after the
    #: user name is one of the default server's paths. Otherwise only the hub knows.
    default_server: bool = True


@dataclass(frozen=True)
class Answer:
    """What to send back."""

    kind: str
    status: int
    content_type: str
    body: bytes
    headers: Mapping[str, str]


def parse_server_path(path: str, settings: StoppedSettings) -> ServerPath | None:
    """The user of a request path, or None when it names no user.

    ``path`` is the raw (percent-encoded) request path, as the proxy forwards it.
    """
    prefix = settings.prefix
    if not path.startswith(prefix):
        return None
    segments = path[len(prefix):].split("/")
    user = unquote(segments[0], errors="replace")
    if not user:
        return None
    rest = segments[1:]
    default_server = not (
        settings.named_servers and rest and rest[0] not in settings.default_server_paths
    )
    return ServerPath(user=user, rest=rest, default_server=default_server)


def _header(headers: Mapping[str, str], name: str) -> str:
    return (headers.get(name) or "").strip()


def _prefers_json(accept: str) -> bool:
    """JupyterHub's test (utils.get_accepted_mimetype): the first of JSON and HTML in the
    ``Accept`` header, ordered by quality, is JSON."""
    ranked = []
    for position, item in enumerate(accept.split(",")):
        mime, _, params = item.strip().partition(";")
        quality = 1.0
        for param in params.split(";"):
            key, _, value = param.strip().partition("=")
            if key == "q":
                try:
                    quality = float(value)
                except ValueError:
                    pass  # as JupyterHub: an unreadable q counts as 1
        ranked.append((-quality, position, mime.strip().lower()))
    for _, _, mime in sorted(ranked):
        if mime in ("application/json", "text/html"):
            return mime == "application/json"
    return False


def classify(
    method: str, headers: Mapping[str, str], server_path: ServerPath | None
) -> StoppedKind:
    """The kind of a request for a stopped server (the ``kind`` metric label)."""
    if server_path is None:
        return StoppedKind.INVALID
    if _header(headers, "Upgrade").lower() == "websocket":
        return StoppedKind.WEBSOCKET
    if method.upper() not in ("GET", "HEAD"):
        return StoppedKind.API  # the hub fails every non-GET request with JSON
    if _header(headers, "X-Requested-With").lower() == "xmlhttprequest":
        return StoppedKind.XHR
    if "api" in server_path.rest:
        return StoppedKind.API
    if _prefers_json(_header(headers, "Accept")):
        return StoppedKind.JSON
    destination = _header(headers, "Sec-Fetch-Dest").lower()
    if _header(headers, "Sec-Fetch-Mode").lower() == "navigate" or (
        destination in DOCUMENT_DESTINATIONS
    ):
        return StoppedKind.PAGE
    return StoppedKind.RESOURCE


def escape_path_segment(value: str) -> str:
    """A user name as JupyterHub puts it in URLs (its ``url_escape_path``)."""
    return quote(value, safe="@~")


def spawn_url(settings: StoppedSettings, server_path: ServerPath) -> str:
    """Where to start this server: the default server's spawn page, or the hub's home page
    when the path may be a named server's (the hub lists the user's servers there)."""
    if not server_path.default_server:
        return f"{settings.base_url}hub/home"
    return f"{settings.base_url}hub/spawn/{escape_path_segment(server_path.user)}"


def hub_url(settings: StoppedSettings, path: str, uri: str) -> str:
    """The hub's own URL for a request under ``{base_url}user/`` (JupyterHub's
    PrefixRedirectHandler sends ``/user/...`` to ``/hub/user/...`` the same way); always a
    local path under ``{base_url}hub/``."""
    request = uri if uri.startswith(settings.prefix) else path
    return f"{settings.base_url}hub/{request[len(settings.base_url):]}"


def shown_path(settings: StoppedSettings, path: str) -> str:
    """The request path as the hub's messages show it: from the ``/user/`` on."""
    return path[len(settings.base_url) - 1:]


def json_answer(
    kind: StoppedKind, settings: StoppedSettings, path: str, server_path: ServerPath
) -> Answer:
    """The hub's JSON for a stopped server (same ``message`` wording as JupyterHub's)."""
    start = spawn_url(settings, server_path)
    shown = shown_path(settings, path)
    body = {
        "status": settings.status,
        "message": f"JupyterHub server no longer running at {shown}. Restart the server at "
        f"{start}",
        "spawn_url": start,
    }
    headers = WEBSOCKET_HEADERS if kind == StoppedKind.WEBSOCKET else NO_STORE_HEADERS
    return Answer(kind, settings.status, "application/json", json.dumps(body).encode(), headers)


def navigation_answer(
    settings: StoppedSettings, path: str, uri: str, kind: StoppedKind = StoppedKind.PAGE
) -> Answer:
    """A browser navigation goes to the hub: it looks the user's servers up, shows the spawn
    pending page, spawns implicitly, renders the operator's templates or asks for a login.
    (So does any GET for a running server whose route is missing, as ``kind``.)"""
    location = hub_url(settings, path, uri)
    body = f"Redirecting to {location}\n".encode()
    headers = {**NO_STORE_HEADERS, "Location": location}
    return Answer(kind, NAVIGATION_STATUS, "text/plain; charset=UTF-8", body, headers)


def server_of(server_path: ServerPath, running: frozenset[str], settings: StoppedSettings) -> str:
    """The name of the running server a path is for, as the hub's ``UserUrlHandler`` picks it:
    with named servers on, the segment after the user name when it names one of the user's
    running servers, else the default server ("")."""
    first = server_path.rest[0] if server_path.rest else ""
    if settings.named_servers and first and first in running:
        return first
    return ""


def route_missing_answer(
    method: str, kind: StoppedKind, settings: StoppedSettings, path: str, uri: str
) -> Answer:
    """A running server whose route alone is missing: a GET goes to the hub, which redirects
    it back (with its own backoff) until the route returns; a request that cannot follow that
    (an upgrade, a non-GET) is told to retry shortly. Never "stopped"."""
    if method.upper() in ("GET", "HEAD") and kind != StoppedKind.WEBSOCKET:
        return navigation_answer(settings, path, uri, StoppedKind.ROUTE_MISSING)
    message = {
        "status": ROUTE_MISSING_STATUS,
        "message": f"The server at {shown_path(settings, path)} is running; its route is "
        "being restored. "
        f"Retry in {ROUTE_MISSING_RETRY_AFTER} s.",
    }
    base = WEBSOCKET_HEADERS if kind == StoppedKind.WEBSOCKET else NO_STORE_HEADERS
    headers = {**base, "Retry-After": str(ROUTE_MISSING_RETRY_AFTER)}
    return Answer(StoppedKind.ROUTE_MISSING, ROUTE_MISSING_STATUS, "application/json",
                  json.dumps(message).encode(), headers)


def decide(
    method: str,
    path: str,
    uri: str,
    headers: Mapping[str, str],
    settings: StoppedSettings,
    running: frozenset[str] = frozenset(),
) -> Answer:
    """The whole answer to one request reaching the handler (pure). ``running`` holds the
    names of the user's servers the hub last listed as ready."""
    server_path = parse_server_path(path, settings)
    kind = classify(method, headers, server_path)
    if server_path is None:
        body = json.dumps({"status": 404, "message": "No user server in this URL."})
        return Answer(StoppedKind.INVALID, 404, "application/json", body.encode(), NO_STORE_HEADERS)
    if server_of(server_path, running, settings) in running:
        return route_missing_answer(method, kind, settings, path, uri)
    if kind in JSON_KINDS:
        return json_answer(kind, settings, path, server_path)
    if kind == StoppedKind.PAGE:
        return navigation_answer(settings, path, uri)
    whose = "The" if server_path.default_server else "A"
    text = f"{whose} server of user {server_path.user!r} is not running.\n"
    return Answer(StoppedKind.RESOURCE, settings.status, "text/plain; charset=UTF-8", text.encode(),
                  NO_STORE_HEADERS)


@web.stream_request_body
class StoppedServerHandler(web.RequestHandler):
    """Tornado adapter for :func:`decide`; every method, websocket upgrades included.

    Request bodies (a stale tab autosaving a large notebook) are streamed and dropped, never
    held in memory.
    """

    def initialize(self, settings: StoppedSettings, running: RunningServers | None = None) -> None:
        self.stopped = settings
        self.running = running

    def data_received(self, chunk: bytes) -> None:
        """Drop the body: nothing in it changes the answer."""

    def check_xsrf_cookie(self) -> None:
        """Nothing here acts on a request, so there is nothing to protect."""

    async def _answer(self, *args: Any) -> None:
        path = self.request.path
        server_path = parse_server_path(path, self.stopped)
        running: frozenset[str] = frozenset()
        if self.running is not None and server_path is not None:
            running = await self.running.servers_of(server_path.user)
        answer = decide(
            self.request.method or "GET",
            path,
            self.request.uri or path,
            self.request.headers,
            self.stopped,
            running,
        )
        self.set_status(answer.status)
        self.set_header("Content-Type", answer.content_type)
        for name, value in answer.headers.items():
            self.set_header(name, value)
        STOPPED_SERVER_RESPONSES.labels(answer.kind, str(answer.status)).inc()
        await self.finish(None if self.request.method == "HEAD" else answer.body)
        connection = self.request.connection
        if answer.headers.get("Connection") == "close" and isinstance(connection, HTTP1Connection):
            # Tornado would keep an upgrade's connection alive (it asked for "Upgrade", not
            # "close"): the answer that says "close" (a refused upgrade) closes it, so no
            # socket is held for a stale tab.
            connection.close()

    get = head = post = put = patch = delete = options = _answer
