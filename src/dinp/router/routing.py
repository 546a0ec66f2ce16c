"""Where a request goes: the route table a worker serves, and what each Host value resolves
to in it, computed once per table (a request costs one dict lookup)."""

from __future__ import annotations

import time

from dinp.router.metrics import AppCounters, Metrics
from dinp.routes import RouteTable, hostname

# Hosts whose resolution is cached (the cache is emptied with each new table).
ROUTE_CACHE = 4096


def host_port(host: bytes) -> bytes:
    """The port a Host header names, or 80."""
    if host.startswith(b"["):  # IPv6 literal
        rest = host.partition(b"]")[2]
        return rest[1:] if rest[:1] == b":" and rest[1:].isdigit() else b"80"
    _, sep, port = host.rpartition(b":")
    return port if sep and port.isdigit() else b"80"


class AppState:
    """What the router keeps per app across tables: its round robin and its counters."""

    __slots__ = ("next", "stats")

    def __init__(self, stats: AppCounters) -> None:
        self.next = 0
        self.stats = stats


class Route:
    """What a Host value resolves to in the current table, computed once per table."""

    __slots__ = ("app", "backends", "forwarded", "name", "state")

    def __init__(self, app: str | None, backends: tuple[str, ...], forwarded: bytes,
                 name: str, state: AppState) -> None:
        self.app = app  # None: no app is served there
        self.backends = backends
        self.forwarded = forwarded  # the X-Forwarded-Host and -Port lines
        self.name = name  # the host as a person would write it
        self.state = state


class RouteCache:
    """The current table and the Routes of the Host values seen since it came."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self.table = RouteTable()
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
            forwarded = (b"X-Forwarded-Host: " + host + b"\r\nX-Forwarded-Port: "
                         + host_port(host) + b"\r\n")
            route = Route(app, backends, forwarded, hostname(text), state)
        if len(self.routes) >= ROUTE_CACHE:
            self.routes = {}
        self.routes[host] = route
        return route

    def _add_app(self, app: str) -> AppState:
        state = self.apps[app] = AppState(self.metrics.app(app))
        return state

    def backend_count(self) -> int:
        """Backend addresses in the table."""
        return len({a for bs in self.table.backends.values() for a in bs})
