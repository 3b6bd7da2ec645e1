"""The idle culler: stops idle servers (and optionally deletes idle users) without falling over.

A drop-in replacement for ``jupyterhub-idle-culler`` (same options and flags) that fixes what
made the stock culler fail during a launch spike: it never exits on an error, pages through
users with bounded memory, re-checks stale decisions and never deletes a user whose server
is still stopping. docs/culler.md has the guarantees, the options and how to run it.
"""
from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from traitlets import Bool, Bunch, Float, Integer, TraitError, Unicode, default, validate
from traitlets.config import LoggingConfigurable

from hub_resilience.backoff import BackoffPolicy
from hub_resilience.hubclient import (
    DeleteUserResult,
    HubAPIError,
    HubClient,
    MalformedResponseError,
    StopResult,
)
from hub_resilience.service.cull_policy import (
    STOPPING,
    CullSettings,
    MalformedModel,
    ServerOutcome,
    cycle_delay,
    decide_server,
    decide_user,
    format_duration,
    is_stopping,
    left_listing,
    listing_state,
    may_delete_after,
    needs_recheck,
    next_page_offset,
    user_name,
    user_servers,
)
from hub_resilience.service.metrics import (
    CULLER_CYCLE_DURATION,
    CULLER_CYCLE_OVERRUNS,
    CULLER_CYCLES,
    CULLER_LAST_CYCLE_END,
    CULLER_SERVERS_CULLED,
    CULLER_SKIPPED,
    CULLER_USERS_CULLED,
    CycleResult,
    SkipReason,
)
from hub_resilience.waiting import set_within


class CycleAborted(Exception):
    """Too many pages in a row could not be read; the rest waits for the next cycle."""


@dataclass
class CycleReport:
    """What one cycle did (also logged at its end)."""

    pages: int = 0
    users_seen: int = 0
    servers_culled: int = 0
    users_culled: int = 0
    skipped: int = 0
    failed_pages: int = 0
    still_stopping: int = 0
    duration: float = 0.0
    error: str | None = None
    started_at: float = 0.0  # time.monotonic()
    ended_at: float = 0.0

    @property
    def quiet(self) -> bool:
        """Nothing culled, nothing left over: the hub is in the state the culler wants."""
        return not (
            self.servers_culled or self.users_culled or self.skipped or self.failed_pages
            or self.still_stopping or self.error
        )


def _server_label(user: str, server: str) -> str:
    return f"{user}/{server}" if server else user


#: Scopes the culler needs (checked against jupyterhub/scopes.py and the user model's fields
#: in jupyterhub/apihandlers/base.py): list users with their servers and activity, stop
#: servers. Deleting users (cull_users) also needs ``delete:users``, and ``read:users`` for
#: the users' ``created`` time; far less than the ``admin:users`` the stock culler is given.
SCOPES = ("list:users", "read:users:activity", "read:servers", "delete:servers")
CULL_USERS_SCOPES = ("read:users", "delete:users")


class Culler(LoggingConfigurable):
    """Periodically stop idle servers and, optionally, delete idle users.

    The option names match ``jupyterhub-idle-culler``'s (``timeout``, ``cull_every``,
    ``max_age``, ``concurrency``, ``api_page_size``, ``cull_users``, ``cull_admin_users``,
    ``cull_default_servers``, ``cull_named_servers``, ``remove_named_servers``); defaults
    differ where the stock ones hurt a large hub (concurrency 2, 200 users per page, admins
    not deleted).

    The token's scopes are :meth:`required_scopes` (docs/culler.md).
    """

    api_url = Unicode(
        help="The JupyterHub API URL (default: $JUPYTERHUB_API_URL, as for a hub service)."
    ).tag(config=True)

    @default("api_url")
    def _default_api_url(self) -> str:
        return os.environ.get("JUPYTERHUB_API_URL", "")

    api_token = Unicode(
        help="Token for the hub API (default: $JUPYTERHUB_API_TOKEN, as for a hub service)."
    ).tag(config=True)

    @default("api_token")
    def _default_api_token(self) -> str:
        return os.environ.get("JUPYTERHUB_API_TOKEN", "")

    timeout = Float(
        3600,
        help="Seconds without activity after which a server (or, with cull_users, a user "
        "without servers) is culled.",
    ).tag(config=True)

    cull_every = Float(
        0,
        help="Seconds between the starts of two cycles; 0 means timeout / 2. A cycle that "
        "takes longer delays the next one (cycles never overlap) and is reported.",
    ).tag(config=True)

    max_age = Float(
        0,
        help="Seconds after which a server is culled even if active (and, with cull_users, a "
        "user is deleted after that long since creation); 0 disables.",
    ).tag(config=True)

    concurrency = Integer(
        2,
        help="Most API requests in flight at once, and most users handled at once. Low by "
        "default: culling is never urgent, and the hub is busiest exactly when it runs.",
    ).tag(config=True)

    api_page_size = Integer(
        200,
        help="Users per page when listing (the hub caps it at its api_page_max_limit, 200 "
        "by default). Memory use is bounded by one page, whatever the number of users.",
    ).tag(config=True)

    cull_users = Bool(
        False,
        help="Also delete users who have been inactive for timeout (or older than max_age) "
        "and have no server left. For temporary-user deployments; off by default.",
    ).tag(config=True)

    cull_admin_users = Bool(
        False,
        help="With cull_users, delete admin users too. Off by default: admins are never "
        "deleted unless asked (their servers are culled like anyone's).",
    ).tag(config=True)

    cull_default_servers = Bool(True, help="Cull users' default servers.").tag(config=True)

    cull_named_servers = Bool(True, help="Cull users' named servers.").tag(config=True)

    remove_named_servers = Bool(
        False,
        help="Remove culled named servers from the hub instead of only stopping them.",
    ).tag(config=True)

    recheck_after = Float(
        10,
        help="When the page a server was listed on is at least this many seconds old, fetch "
        "that user again and re-decide before stopping, so a user who became active since "
        "is not culled. 0 re-checks every server.",
    ).tag(config=True)

    stop_wait_timeout = Float(
        60,
        help="Seconds to follow up a server the hub is slow to stop (202) before leaving it "
        "for the next cycle; its user is not deleted until it is gone.",
    ).tag(config=True)

    request_timeout = Float(
        60,
        help="Timeout in seconds of one API request (listing a page of a big hub is slow).",
    ).tag(config=True)

    retry_max_attempts = Integer(
        6, help="Attempts per API request, including the first, for 429/503/5xx/errors."
    ).tag(config=True)

    retry_deadline = Float(
        300,
        help="Seconds after which an API request is no longer retried, waits included.",
    ).tag(config=True)

    retry_after_cap = Float(
        120, help="Longest Retry-After, in seconds, the culler honours from the hub."
    ).tag(config=True)

    backoff_base = Float(
        1.0, help="Seconds: first full-jitter backoff ceiling when the hub gave no Retry-After."
    ).tag(config=True)

    backoff_cap = Float(
        60.0, help="Seconds: largest full-jitter backoff ceiling."
    ).tag(config=True)

    max_page_failures = Integer(
        3,
        help="Consecutive pages that cannot be read (errors after retries, malformed JSON) "
        "before the cycle gives up until the next period.",
    ).tag(config=True)

    @default("log")
    def _default_log(self) -> logging.Logger:
        return logging.getLogger("hub_resilience.service.culler")

    @validate("timeout", "request_timeout", "retry_deadline", "backoff_base", "backoff_cap")
    def _positive(self, proposal: Bunch) -> float:
        if not proposal.value > 0:
            raise TraitError(f"Culler.{proposal.trait.name} must be > 0, not {proposal.value}")
        return proposal.value

    @validate("concurrency", "api_page_size", "retry_max_attempts", "max_page_failures")
    def _at_least_one(self, proposal: Bunch) -> int:
        if proposal.value < 1:
            raise TraitError(f"Culler.{proposal.trait.name} must be >= 1, not {proposal.value}")
        return proposal.value

    @validate(
        "cull_every", "max_age", "recheck_after", "stop_wait_timeout", "retry_after_cap"
    )
    def _non_negative(self, proposal: Bunch) -> float:
        if proposal.value < 0:
            raise TraitError(f"Culler.{proposal.trait.name} must be >= 0, not {proposal.value}")
        return proposal.value

    def __init__(self, client: HubClient | None = None, **kwargs: Any) -> None:
        """``client`` lets a host process (the resilience service) share its HubClient;
        by default the culler makes its own from the traits."""
        super().__init__(**kwargs)
        self._client = client
        self._own_client = client is None
        self._cycle_lock = asyncio.Lock()
        self._stopping: asyncio.Event | None = None
        self._current: asyncio.Future[CycleReport] | None = None
        self._slots: asyncio.Semaphore | None = None
        self.cycles_run = 0
        self.last_report: CycleReport | None = None
        #: Told of each server the culler stopped (the service forgets it was running).
        self.on_server_stopped: Callable[[str, str], None] | None = None

    # -- configuration ----------------------------------------------------------------------

    def required_scopes(self) -> list[str]:
        """The least scopes the culler's token needs with these settings."""
        return list(SCOPES) + (list(CULL_USERS_SCOPES) if self.cull_users else [])

    @property
    def period(self) -> float:
        """Seconds between cycle starts."""
        return self.cull_every or self.timeout / 2

    @property
    def settings(self) -> CullSettings:
        return CullSettings(
            timeout=self.timeout,
            max_age=self.max_age,
            cull_default_servers=self.cull_default_servers,
            cull_named_servers=self.cull_named_servers,
            cull_users=self.cull_users,
            cull_admin_users=self.cull_admin_users,
        )

    def backoff_policy(self) -> BackoffPolicy:
        return BackoffPolicy(
            base=self.backoff_base,
            cap=max(self.backoff_cap, self.backoff_base),
            max_attempts=self.retry_max_attempts,
            deadline=self.retry_deadline,
            retry_after_cap=self.retry_after_cap,
        )

    def now(self) -> datetime:
        """The time decisions are made at (a method, so a test can move the clock)."""
        return datetime.now(timezone.utc)

    @property
    def client(self) -> HubClient:
        if self._client is None:
            if not self.api_url:
                raise ValueError("Culler.api_url is not set (nor JUPYTERHUB_API_URL)")
            if not self.api_token:
                raise ValueError("Culler.api_token is not set (nor JUPYTERHUB_API_TOKEN)")
            self._client = HubClient(
                self.api_url,
                self.api_token,
                policy=self.backoff_policy(),
                concurrency=self.concurrency,
                request_timeout=self.request_timeout,
                component="culler",
                logger=self.log,
            )
        return self._client

    async def close(self) -> None:
        """Close the HubClient if the culler made it."""
        if self._own_client and self._client is not None:
            await self._client.close()
            self._client = None

    # -- running ----------------------------------------------------------------------------

    async def run_forever(self) -> None:
        """Run a cycle now and then every ``period`` seconds until :meth:`stop`."""
        self._stopping = asyncio.Event()
        self.log.info(
            "Culling servers idle for %s every %s (max age %s, users: %s, page size %d, "
            "concurrency %d)",
            format_duration_seconds(self.timeout), format_duration_seconds(self.period),
            format_duration_seconds(self.max_age) if self.max_age else "off",
            "delete" if self.cull_users else "keep", self.api_page_size, self.concurrency,
        )
        try:
            while not self._stopping.is_set():
                self._current = asyncio.ensure_future(self.run_cycle())
                try:
                    report = await self._current
                except asyncio.CancelledError:
                    if self._stopping.is_set():
                        self.log.info("Culler stopped during a cycle")
                        return
                    raise
                finally:
                    self._current = None
                delay, overran = cycle_delay(report.duration, self.period)
                if overran:
                    CULLER_CYCLE_OVERRUNS.inc()
                    self.log.warning(
                        "Culling cycle took %.1fs, longer than the %.1fs period; "
                        "next cycle in %.1fs",
                        report.duration, self.period, delay,
                    )
                await set_within(self._stopping, delay)
        finally:
            await self.close()

    def stop(self) -> None:
        """Make :meth:`run_forever` return now, abandoning a cycle in progress (its requests
        in flight still reach the hub; nothing is left half-decided on our side)."""
        if self._stopping is not None:
            self._stopping.set()
        if self._current is not None and not self._current.done():
            self._current.cancel()

    async def run_cycle(self) -> CycleReport:
        """One pass over the hub's users; never raises (except on cancellation).

        Concurrent calls wait for each other: cycles never overlap.
        """
        async with self._cycle_lock:
            started = time.monotonic()
            report = CycleReport(started_at=started)
            self._slots = asyncio.Semaphore(self.concurrency)
            try:
                client = self.client
                state_filter = await client.supports_state_filter()
                await self._page_through_users(
                    client, listing_state(state_filter, self.cull_users), report
                )
            except (HubAPIError, CycleAborted, ValueError) as e:
                report.error = str(e)
                self.log.error("Culling cycle stopped early: %s", e)
            except Exception as e:
                report.error = f"{type(e).__name__}: {e}"
                self.log.exception("Unexpected error in culling cycle")
            report.ended_at = time.monotonic()
            report.duration = report.ended_at - started
            self.cycles_run += 1
            self.last_report = report
            CULLER_CYCLE_DURATION.observe(report.duration)
            CULLER_CYCLES.labels(CycleResult.ERROR if report.error else CycleResult.OK).inc()
            if not report.error:
                CULLER_LAST_CYCLE_END.set(time.time())
            self.log.info(
                "Culling cycle %s in %.1fs: %d users on %d pages, %d servers and %d users "
                "culled, %d skipped, %d still stopping, %d unreadable pages",
                "failed" if report.error else "done", report.duration, report.users_seen,
                report.pages, report.servers_culled, report.users_culled, report.skipped,
                report.still_stopping, report.failed_pages,
            )
            return report

    async def _page_through_users(
        self, client: HubClient, state: str | None, report: CycleReport
    ) -> None:
        """Page through ``GET /users?state=...``, handling each page before the next."""
        offset = 0
        limit = self.api_page_size
        previous_names: set[str] = set()
        failures = 0
        while True:
            try:
                page = await client.list_users_page(offset=offset, limit=limit, state=state)
            except HubAPIError as e:
                failures += 1
                report.failed_pages += 1
                kind = (
                    SkipReason.MALFORMED
                    if isinstance(e, MalformedResponseError)
                    else SkipReason.ERROR
                )
                CULLER_SKIPPED.labels(kind).inc()
                self.log.error(
                    "Skipping the page of users at offset %d (state=%s): %s", offset, state, e
                )
                if failures >= self.max_page_failures:
                    raise CycleAborted(
                        f"{failures} pages of users in a row could not be read"
                    ) from None
                offset += limit
                continue
            failures = 0
            limit = page.limit
            report.pages += 1
            names: set[str] = set()
            todo = []
            for item in page.items:
                try:
                    name = user_name(item)
                except MalformedModel as e:
                    report.skipped += 1
                    CULLER_SKIPPED.labels(SkipReason.MALFORMED).inc()
                    self.log.error("Skipping a malformed user model: %s", e)
                    continue
                names.add(name)
                if name not in previous_names:
                    todo.append(item)
            report.users_seen += len(todo)
            left = await self.handle_users(client, todo, page.fetched_at, state, report)
            previous_names = names
            following = next_page_offset(page.offset, page.next_offset, left)
            if following is None:
                return
            offset = following

    async def handle_users(
        self,
        client: HubClient,
        users: list[Any],
        fetched_at: float,
        state: str | None,
        report: CycleReport,
    ) -> int:
        """Handle the users of one page (listed at ``time.monotonic()`` ``fetched_at``);
        returns how many may have dropped out of the ``state`` listing."""
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.concurrency)
        results = await asyncio.gather(
            *(self._handle_user_safely(client, u, fetched_at, state, report) for u in users)
        )
        return sum(results)

    async def _handle_user_safely(
        self, client: HubClient, user: Any, fetched_at: float, state: str | None,
        report: CycleReport,
    ) -> bool:
        try:
            return await self._handle_user(client, user, fetched_at, state, report)
        except Exception:
            # A bug must cost one user, not the cycle; HubAPIErrors are handled below.
            report.skipped += 1
            CULLER_SKIPPED.labels(SkipReason.ERROR).inc()
            self.log.exception("Unexpected error handling user %s", user.get("name"))
            return False

    async def _handle_user(
        self, client: HubClient, user: Any, fetched_at: float, state: str | None,
        report: CycleReport,
    ) -> bool:
        name = user_name(user)
        try:
            servers = user_servers(user)
        except MalformedModel as e:
            report.skipped += 1
            CULLER_SKIPPED.labels(SkipReason.MALFORMED).inc()
            self.log.error("Skipping user %s: %s", name, e)
            return False
        outcomes: dict[str, ServerOutcome] = {}
        assert self._slots is not None
        async with self._slots:
            for server_name, server in servers.items():
                outcomes[server_name] = await self._handle_server(
                    client, name, server_name, server, fetched_at, report
                )
        stopping = [s for s, o in outcomes.items() if o is ServerOutcome.STOPPING]
        if stopping:
            followed = await asyncio.gather(
                *(self._follow_up_stop(client, name, s, report) for s in stopping)
            )
            outcomes.update(zip(stopping, followed, strict=True))
        removed = False
        if self.cull_users and may_delete_after(outcomes.values()):
            async with self._slots:
                removed = await self._maybe_delete_user(client, user, report)
        return left_listing(state, outcomes.values(), removed)

    async def _handle_server(
        self,
        client: HubClient,
        name: str,
        server_name: str,
        server: Any,
        fetched_at: float,
        report: CycleReport,
    ) -> ServerOutcome:
        label = _server_label(name, server_name)
        settings = self.settings
        try:
            decision = decide_server(server, server_name, self.now(), settings)
        except MalformedModel as e:
            report.skipped += 1
            CULLER_SKIPPED.labels(SkipReason.MALFORMED).inc()
            self.log.error("Skipping server %s: %s", label, e)
            return ServerOutcome.SKIPPED
        if decision.reason == STOPPING:
            return self._already_stopping(label)
        if not decision.cull:
            self.log.debug(
                "Not culling server %s (%s, inactive for %s)",
                label, decision.reason, format_duration(decision.inactive),
            )
            return ServerOutcome.KEPT
        try:
            if needs_recheck(time.monotonic() - fetched_at, self.recheck_after):
                fresh = await client.get_server(name, server_name)
                if fresh is None:
                    self.log.info("Server %s is already stopped", label)
                    return ServerOutcome.GONE
                decision = decide_server(fresh, server_name, self.now(), settings)
                if decision.reason == STOPPING:
                    return self._already_stopping(label)
                if not decision.cull:
                    CULLER_SKIPPED.labels(SkipReason.BECAME_ACTIVE).inc()
                    self.log.info(
                        "Not culling server %s: re-checked, now %s (inactive for %s)",
                        label, decision.reason, format_duration(decision.inactive),
                    )
                    return ServerOutcome.KEPT
            self.log.info(
                "Culling server %s (%s: inactive for %s, age %s)",
                label, decision.reason, format_duration(decision.inactive),
                format_duration(decision.age),
            )
            outcome = await client.stop_server(
                name, server_name, remove=self.remove_named_servers
            )
        except (HubAPIError, MalformedModel) as e:
            report.skipped += 1
            CULLER_SKIPPED.labels(
                SkipReason.MALFORMED
                if isinstance(e, MalformedResponseError | MalformedModel)
                else SkipReason.ERROR
            ).inc()
            self.log.error("Not culling server %s this cycle: %s", label, e)
            return ServerOutcome.SKIPPED
        if outcome.result in (StopResult.STOPPED, StopResult.STOPPING):
            report.servers_culled += 1
            CULLER_SERVERS_CULLED.labels(decision.reason).inc()
            if self.on_server_stopped is not None:
                self.on_server_stopped(name, server_name)
        if outcome.result is StopResult.STOPPED:
            return ServerOutcome.STOPPED
        if outcome.result is StopResult.STOPPING:
            self.log.info("Server %s is slow to stop; following up", label)
            return ServerOutcome.STOPPING
        if outcome.result is StopResult.REFUSED:
            return await self._after_refusal(client, name, server_name, outcome.message, report)
        self.log.info("Server %s is already gone: %s", label, outcome.message or "404")
        return ServerOutcome.GONE

    def _already_stopping(self, label: str) -> ServerOutcome:
        """A listed server whose stop is in progress: followed up like a stop of our own."""
        self.log.info("Server %s is stopping; following up", label)
        return ServerOutcome.STOPPING

    async def _after_refusal(
        self, client: HubClient, name: str, server_name: str, message: str, report: CycleReport
    ) -> ServerOutcome:
        """A 400 to a stop: usually "already stopping"; the server's model says for sure."""
        label = _server_label(name, server_name)
        try:
            server = await client.get_server(name, server_name)
        except HubAPIError as e:
            report.skipped += 1
            CULLER_SKIPPED.labels(SkipReason.ERROR).inc()
            self.log.error("Server %s: stop refused (%s), state unreadable: %s", label, message, e)
            return ServerOutcome.SKIPPED
        if server is None:
            self.log.info("Server %s is already stopped (%s)", label, message)
            return ServerOutcome.STOPPED
        if is_stopping(server):
            self.log.info("Server %s is already stopping (%s); following up", label, message)
            return ServerOutcome.STOPPING
        report.skipped += 1
        CULLER_SKIPPED.labels(SkipReason.ERROR).inc()
        self.log.info("Hub refused to stop server %s (%s); next cycle will retry", label, message)
        return ServerOutcome.SKIPPED

    async def _follow_up_stop(
        self, client: HubClient, name: str, server_name: str, report: CycleReport
    ) -> ServerOutcome:
        label = _server_label(name, server_name)
        try:
            stopped = await client.wait_for_server_stopped(
                name, server_name, timeout=self.stop_wait_timeout
            )
        except HubAPIError as e:
            self.log.warning("Could not follow up the stop of %s: %s", label, e)
            stopped = False
        if stopped:
            self.log.info("Server %s has stopped", label)
            return ServerOutcome.STOPPED
        report.still_stopping += 1
        CULLER_SKIPPED.labels(SkipReason.SLOW_STOP).inc()
        self.log.warning(
            "Server %s is still stopping after %.0fs; its user is left for a later cycle",
            label, self.stop_wait_timeout,
        )
        return ServerOutcome.STOPPING

    async def _maybe_delete_user(self, client: HubClient, user: Any, report: CycleReport) -> bool:
        """Delete a user whose servers are all confirmed stopped, after re-reading them.

        Returns whether the user is gone from the hub.
        """
        name = user_name(user)
        settings = self.settings
        try:
            # Cheap filter on the listed model (its servers are the ones just stopped)...
            if not decide_user({**user, "servers": {}}, self.now(), settings).cull:
                return False
            # ...then the decision that counts, on a fresh model: deleting is irreversible.
            fresh = await client.get_user(name)
            if fresh is None:
                self.log.info("User %s is already gone", name)
                return True
            decision = decide_user(fresh, self.now(), settings)
            if not decision.cull:
                self.log.info("Not deleting user %s: %s", name, decision.reason)
                return False
            self.log.info(
                "Culling user %s (%s: inactive for %s, age %s)",
                name, decision.reason, format_duration(decision.inactive),
                format_duration(decision.age),
            )
            outcome = await client.delete_user(name)
        except (HubAPIError, MalformedModel) as e:
            report.skipped += 1
            CULLER_SKIPPED.labels(
                SkipReason.MALFORMED
                if isinstance(e, MalformedResponseError | MalformedModel)
                else SkipReason.ERROR
            ).inc()
            self.log.error("Not deleting user %s this cycle: %s", name, e)
            return False
        if outcome.result is DeleteUserResult.DELETED:
            report.users_culled += 1
            CULLER_USERS_CULLED.labels(decision.reason).inc()
            return True
        if outcome.result is DeleteUserResult.REFUSED:
            self.log.info("User %s not deleted this cycle: %s", name, outcome.message)
            return False
        self.log.info("User %s is already gone: %s", name, outcome.message or "404")
        return True


def format_duration_seconds(seconds: float) -> str:
    """``HH:MM:SS`` for a number of seconds."""
    return format_duration(timedelta(seconds=seconds))


# -- command line ---------------------------------------------------------------------------
