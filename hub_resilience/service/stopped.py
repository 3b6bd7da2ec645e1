"""The stopped-server handler: answer requests for servers that are not running, without the hub.

Why: tabs left open on a stopped server keep polling it, and through the proxy's default
route those requests land on the hub, which locked up under them in the incident. The
decision (:func:`decide`) is pure; :class:`StoppedServerHandler` is the tornado adapter.
What each request gets is in docs/service.md ("The stopped-server handler").
"""
from __future__ import annotations

import html
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote, urlencode

from tornado import web

from hub_resilience.service.metrics import STOPPED_SERVER_RESPONSES, StoppedKind

#: First path segments of a *default* server's URLs (Jupyter Server, JupyterLab, classic
#: notebook, common extensions). With named servers on, any other segment after the user
#: name is taken as a server name: ``/user/alice/lab`` is alice's default server,
#: ``/user/alice/gpu/lab`` her server "gpu".
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

NO_STORE_HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
}
PAGE_CSP = "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"


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


@dataclass(frozen=True)
class ServerPath:
    """Whose server a ``{base_url}user/...`` path is for."""

    user: str  # the user name, unescaped
    server: str  # "" for the default server
    rest: list[str]  # the path segments inside the server


@dataclass(frozen=True)
class Answer:
    """What to send back."""

    kind: str
    status: int
    content_type: str
    body: bytes
    headers: Mapping[str, str]


def parse_server_path(path: str, settings: StoppedSettings) -> ServerPath | None:
    """The user and server of a request path, or None when it names no user.

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
    server = ""
    if settings.named_servers and rest and rest[0] not in settings.default_server_paths:
        server = unquote(rest[0], errors="replace")
        rest = rest[1:]
    return ServerPath(user=user, server=server, rest=rest)


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
    """A user or server name as JupyterHub puts it in URLs (its ``url_escape_path``)."""
    return quote(value, safe="@~")


def spawn_url(settings: StoppedSettings, server_path: ServerPath, uri: str | None) -> str:
    """The hub page that starts this server, returning to ``uri`` (the request) afterwards."""
    url = f"{settings.base_url}hub/spawn/{escape_path_segment(server_path.user)}"
    if server_path.server:
        url += "/" + escape_path_segment(server_path.server)
    if uri and uri.startswith(settings.prefix):
        url += "?" + urlencode({"next": uri})
    return url


def describe(server_path: ServerPath) -> str:
    if server_path.server:
        return f"server {server_path.server!r} of user {server_path.user!r}"
    return f"server of user {server_path.user!r}"


def json_answer(
    kind: str, settings: StoppedSettings, path: str, server_path: ServerPath
) -> Answer:
    """The hub's JSON for a stopped server (same ``message`` wording as JupyterHub's)."""
    start = spawn_url(settings, server_path, None)
    shown = path[len(settings.base_url) - 1:]
    body = {
        "status": settings.status,
        "message": f"JupyterHub server no longer running at {shown}. Restart the server at "
        f"{start}",
        "spawn_url": start,
    }
    return Answer(
        kind, settings.status, "application/json", json.dumps(body).encode(), NO_STORE_HEADERS
    )


PAGE_TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="robots" content="noindex">
<title>Server not running</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 36em; margin: 4em auto;
       padding: 0 1em; line-height: 1.5; color: #222; }}
a.start {{ display: inline-block; padding: 0.5em 1.2em; background: #f37726; color: #fff;
          text-decoration: none; border-radius: 4px; }}
</style>
</head>
<body>
<h1>Server not running</h1>
<p>The {what} is not running.</p>
<p><a class="start" href="{start}">Start it</a></p>
<p>Or go to the <a href="{home}">hub home page</a>.</p>
</body>
</html>
"""


def page_answer(settings: StoppedSettings, server_path: ServerPath, uri: str) -> Answer:
    """The static page for a browser navigation; every name in it is HTML-escaped."""
    who = f"<strong>{html.escape(server_path.user)}</strong>"
    if server_path.server:
        what = f"server <strong>{html.escape(server_path.server)}</strong> of {who}"
    else:
        what = f"Jupyter server of {who}"
    page = PAGE_TEMPLATE.format(
        what=what,
        start=html.escape(spawn_url(settings, server_path, uri), quote=True),
        home=html.escape(settings.base_url + "hub/home", quote=True),
    )
    headers = {**NO_STORE_HEADERS, "Content-Security-Policy": PAGE_CSP}
    return Answer(
        StoppedKind.PAGE, settings.status, "text/html; charset=UTF-8", page.encode(), headers
    )


def decide(
    method: str, path: str, uri: str, headers: Mapping[str, str], settings: StoppedSettings
) -> Answer:
    """The whole answer to one request reaching the handler (pure)."""
    server_path = parse_server_path(path, settings)
    kind = classify(method, headers, server_path)
    if server_path is None:
        body = json.dumps({"status": 404, "message": "No user server in this URL."})
        return Answer(StoppedKind.INVALID, 404, "application/json", body.encode(), NO_STORE_HEADERS)
    if kind in JSON_KINDS:
        return json_answer(kind, settings, path, server_path)
    if kind == StoppedKind.PAGE:
        return page_answer(settings, server_path, uri)
    text = f"The {describe(server_path)} is not running.\n"
    return Answer(StoppedKind.RESOURCE, settings.status, "text/plain; charset=UTF-8", text.encode(),
                  NO_STORE_HEADERS)


@web.stream_request_body
class StoppedServerHandler(web.RequestHandler):
    """Tornado adapter for :func:`decide`; every method, websocket upgrades included.

    Request bodies (a stale tab autosaving a large notebook) are streamed and dropped, never
    held in memory.
    """

    def initialize(self, settings: StoppedSettings) -> None:
        self.stopped = settings

    def data_received(self, chunk: bytes) -> None:
        """Drop the body: nothing in it changes the answer."""

    def check_xsrf_cookie(self) -> None:
        """Nothing here acts on a request, so there is nothing to protect."""

    def _answer(self, *args: Any) -> None:
        answer = decide(
            self.request.method or "GET",
            self.request.path,
            self.request.uri or self.request.path,
            self.request.headers,
            self.stopped,
        )
        self.set_status(answer.status)
        self.set_header("Content-Type", answer.content_type)
        for name, value in answer.headers.items():
            self.set_header(name, value)
        STOPPED_SERVER_RESPONSES.labels(answer.kind, str(answer.status)).inc()
        if self.request.method == "HEAD":
            self.finish()
        else:
            self.finish(answer.body)

    get = head = post = put = patch = delete = options = _answer
