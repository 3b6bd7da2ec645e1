"""Which servers the hub lists as running: how the stopped-server handler tells a lost route
from a stopped server.

Why: a request reaching the handler is for a stopped server, or for a running one whose proxy
route is missing (a proxy restart, until route repair puts it back); telling the second
"stopped" makes JupyterLab offer to restart a server that runs. One listing of the hub's
ready servers (``GET /users?state=ready``, paginated) answers for every user at once, and is
made only when a request needs it and the last one is older than ``max_age``: a storm of
stale tabs for stopped servers costs the hub at most one listing per ``max_age``, never a
lookup per request. A listing goes stale the moment a server stops, so a request for a server
it lists is checked with the hub for that one user (``GET /users/{name}``, at most once per
user per ``CONFIRMED_FOR``) before its tab is sent to the hub; a request the listing itself
was made for needs no check. docs/service.md ("A running server whose route is missing") has
the trade-offs.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from hub_resilience.hubclient import HubAPIError, HubClient
from hub_resilience.service.cull_policy import MalformedModel, user_name, user_servers

log = logging.getLogger("hub_resilience.service")

#: The scopes a listing of ready servers needs (the culler's token has them too).
LISTING_SCOPES = ("list:users", "read:servers")

#: How long the hub's answer about one listed user's servers stands (seconds): the requests of
#: a running server whose route is missing cost the hub at most one user lookup per this, on
#: top of the redirect each GET gets to the hub; it matches the Retry-After those get.
CONFIRMED_FOR = 5.0


def ready_servers(users: Iterable[Any]) -> dict[str, frozenset[str]]:
    """Each listed user's ready servers by name (pure); unreadable models are left out."""
    ready: dict[str, frozenset[str]] = {}
    for user in users:
        try:
            name = user_name(user)
            servers = user_servers(user)
        except MalformedModel:
            continue
        names = frozenset(s for s, server in servers.items() if server.get("ready"))
        if names:
            ready[name] = names
    return ready


@dataclass
class Listing:
    """The hub's ready servers as of ``listed_at`` (``time.monotonic()``)."""

    ready: dict[str, frozenset[str]] = field(default_factory=dict)
    listed_at: float = float("-inf")
    #: When the hub was last asked about a user since the listing: its answer (or, if the
    #: lookup failed, the listing's) stands for CONFIRMED_FOR.
    confirmed_at: dict[str, float] = field(default_factory=dict)


class RunningServers:
    """The last listing of ready servers, refreshed on demand (one listing at a time).

    A failed listing keeps the previous one and is not tried again before ``max_age``: a hub
    that answers 500 or 429 is not asked once per request.
    """

    def __init__(
        self,
        client: HubClient,
        max_age: float,
        *,
        page_size: int = 200,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not max_age > 0:
            raise ValueError(f"max_age must be > 0, not {max_age}")
        self.client = client
        self.max_age = max_age
        self.page_size = page_size
        self.clock = clock
        self.listing = Listing()
        self._tried_at = float("-inf")
        self._refresh: asyncio.Future[None] | None = None
        self._confirming: dict[str, asyncio.Future[None]] = {}

    async def servers_of(self, user: str) -> frozenset[str]:
        """The names of ``user``'s servers the hub lists as ready: from a listing (made again
        first when the last listing or failed try is older than ``max_age``), checked with the
        hub for this user when the listing, older than the request, says one runs."""
        asked = self.clock()
        idle = self._refresh is None or self._refresh.done()
        if idle and asked - self._tried_at >= self.max_age:
            self._refresh = asyncio.ensure_future(self._list())
        if self._refresh is not None and not self._refresh.done():
            await asyncio.shield(self._refresh)  # every request waits for the one listing
        listing = self.listing
        if user in listing.ready and listing.listed_at < asked:
            confirmed = listing.confirmed_at.get(user, float("-inf"))
            if asked - confirmed >= CONFIRMED_FOR:
                await self._confirm(user)
        return self.listing.ready.get(user, frozenset())

    async def _confirm(self, user: str) -> None:
        """One lookup of ``user`` at a time; concurrent requests wait for it."""
        lookup = self._confirming.get(user)
        if lookup is None:
            lookup = self._confirming[user] = asyncio.ensure_future(self._look_up(user))
            lookup.add_done_callback(lambda _: self._confirming.pop(user, None))
        await asyncio.shield(lookup)

    async def _look_up(self, user: str) -> None:
        listing = self.listing
        started = self.clock()
        try:
            model = await self.client.get_user(user)
        except HubAPIError as e:
            # The listing's answer stands (telling a running server it stopped is the worse
            # mistake), and the hub is not asked again for this user before CONFIRMED_FOR.
            log.warning("Could not check %s's servers with the hub (%s); the listing says "
                        "one runs", user, e)
            listing.confirmed_at[user] = started
            return
        if self.listing is not listing and self.listing.listed_at >= started:
            return  # a newer listing answers
        now_ready = ready_servers([model]).get(user, frozenset()) if model else frozenset()
        if now_ready:
            self.listing.ready[user] = now_ready
        else:
            self.listing.ready.pop(user, None)
        self.listing.confirmed_at[user] = started

    def forget(self, user: str, server: str) -> None:
        """A server stopped since the listing (the culler stopped it): its tabs are answered
        here at once, without the hub."""
        names = self.listing.ready.get(user)
        if names is not None and server in names:
            rest = names - {server}
            if rest:
                self.listing.ready[user] = rest
            else:
                del self.listing.ready[user]
                self.listing.confirmed_at.pop(user, None)

    async def _list(self) -> None:
        started = self._tried_at = self.clock()
        ready: dict[str, frozenset[str]] = {}
        try:
            async for page in self.client.iter_user_pages(
                page_size=self.page_size, state="ready"
            ):
                if any(not isinstance(u, dict) or "servers" not in u for u in page.items):
                    log.warning("The hub lists users without their servers: the service's "
                                "token needs %s", " and ".join(LISTING_SCOPES))
                ready.update(ready_servers(page.items))
        except HubAPIError as e:
            kept = ("none listed yet" if self.listing.listed_at == float("-inf")
                    else f"keeping the one from {started - self.listing.listed_at:.0f} s ago")
            log.warning("Could not list the running servers (%s); %s", e, kept)
            return
        self.listing = Listing(ready, started)
