"""Where a request goes: the route table a worker serves, and what each Host value resolves
to in it, computed once per table (a request costs one dict lookup): the app and its
backends, the X-Forwarded-Host/-Port lines, and its app's HTTPS policy (the redirect for
plain-HTTP requests, the Strict-Transport-Security line for TLS ones)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from dinp.router.metrics import AppCounters, Metrics
from dinp.routes import HttpsPolicy, RouteTable, hostname

log = logging.getLogger("dinp.router")

# Hosts whose resolution is cached (the cache is emptied with each new table).
ROUTE_CACHE = 4096


def host_port(host: bytes, default: bytes = b"80") -> bytes:
    """The port a Host header names, or `default`."""
    if host.startswith(b"["):  # IPv6 literal
        rest = host.partition(b"]")[2]
        return rest[1:] if rest[:1] == b":" and rest[1:].isdigit() else default
    _, sep, port = host.rpartition(b":")
    return port if sep and port.isdigit() else default


class AppState:
    """What the router keeps per app across tables: its round robin and its counters."""

    __slots__ = ("next", "stats")

    def __init__(self, stats: AppCounters) -> None:
        self.next = 0
        self.stats = stats


class Route:
    """What a Host value resolves to in the current table, computed once per table."""

    __slots__ = ("app", "backends", "forwarded", "forwarded_tls", "hsts", "name", "redirect",
                 "state")

    def __init__(self, app: str | None, backends: tuple[str, ...], forwarded: bytes,
                 name: str, state: AppState, *, forwarded_tls: bytes = b"",
                 redirect: bytes | None = None, hsts: bytes = b"") -> None:
        self.app = app  # None: no app is served there
        self.backends = backends
        # The X-Forwarded-Host and -Port lines, for plain HTTP and for TLS (the default
        # port differs).
        self.forwarded = forwarded
        self.forwarded_tls = forwarded_tls or forwarded
        self.name = name  # the host as a person would write it
        self.state = state
        # `https://<name>[:port]`, where plain-HTTP requests are redirected (the URL
        # follows), when the app asks for it.
        self.redirect = redirect
        # The Strict-Transport-Security line for TLS responses, when the app asks for it.
        self.hsts = hsts


class RouteCache:
    """The current table and the Routes of the Host values seen since it came."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self.table = RouteTable()
        # Where redirects to HTTPS go: the port clients use for https (443 is left out).
        self.https_port = 443
        # With a TLS listener: whether it has a certificate for a name. A redirect to a
        # name it would refuse the handshake for is not made.
        self.serves_tls: Callable[[str], bool] | None = None
        self._policies: dict[str, HttpsPolicy | None] = {}  # policy JSON -> policy
        self.table_time = time.monotonic()
        # No table yet (Redis unreachable since the start): every request gets 503 with
        # Retry-After and /health says "starting", never 404 "no such app".
        self.ready = False
        self.routes: dict[bytes | None, Route] = {}
        self.apps: dict[str, AppState] = {}
        self.no_app = AppState(metrics.no_app)  # requests that matched no app

    def set_table(self, table: RouteTable) -> set[str] | None:
        """Swap the snapshot. Returns every backend of the new table when its routes
        changed, else None."""
        addrs = None
        if table is not self.table and not table.same_routes(self.table):
            addrs = {a for backends in table.backends.values() for a in backends}
            self.routes = {}
        self.table = table
        self.table_time = time.monotonic()
        self.ready = True
        return addrs

    def route(self, host: bytes | None) -> Route:
        """Where requests for this Host go (cached for the current table)."""
        route = self.routes.get(host)
        if route is not None:
            return route
        if host is None:
            route = Route(None, (), b"", "", self.no_app)
        else:
            text = host.decode("latin-1")
            app, backends = self.table.resolve(text)
            state = self.no_app if app is None else self.apps.get(app) or self._add_app(app)
            forwarded = b"X-Forwarded-Host: " + host + b"\r\nX-Forwarded-Port: "
            name = hostname(text)
            route = Route(app, backends, forwarded + host_port(host) + b"\r\n", name, state,
                          forwarded_tls=forwarded + host_port(host, b"443") + b"\r\n")
            if app is not None:
                self._apply_policy(route)
        if len(self.routes) >= ROUTE_CACHE:
            self.routes = {}
        self.routes[host] = route
        return route

    def _apply_policy(self, route: Route) -> None:
        """The redirect and HSTS line of the route's app, from its HTTPS policy."""
        policy = self.policy(self.table.https_policy(route.name))
        if policy is None:
            return
        if policy.redirect and (self.serves_tls is None or self.serves_tls(route.name)):
            port = b"" if self.https_port == 443 else b":%d" % self.https_port
            route.redirect = b"https://" + route.name.encode("latin-1") + port
        if policy.hsts:
            route.hsts = b"Strict-Transport-Security: max-age=%d\r\n" % policy.hsts

    def policy(self, text: str | None) -> HttpsPolicy | None:
        """A policy from its JSON (parsed once); one that cannot be read is logged once
        and means no policy."""
        if text is None:
            return None
        if text in self._policies:
            return self._policies[text]
        try:
            policy: HttpsPolicy | None = HttpsPolicy.from_json(text)
        except ValueError as exc:
            log.error("an HTTPS policy in the route table cannot be read (%s): %.200s",
                      exc, text)
            policy = None
        if len(self._policies) >= ROUTE_CACHE:
            self._policies = {}
        self._policies[text] = policy
        return policy

    def flush(self) -> None:
        """Compute every route again (what they depend on besides the table changed)."""
        self.routes = {}

    def _add_app(self, app: str) -> AppState:
        state = self.apps[app] = AppState(self.metrics.app(app))
        return state

    def backend_count(self) -> int:
        """Backend addresses in the table."""
        return len({a for bs in self.table.backends.values() for a in bs})
