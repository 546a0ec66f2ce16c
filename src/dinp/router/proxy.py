"""What the connections of one router worker share (the Proxy), and the request ids.

The Proxy holds the parts, each with one job: the route cache (routing.py), the balancer
and its memory of failing backends (balancer.py), the pool of backend connections
(backends.py), the certificates (tls.py), the counters (metrics.py) and the access log;
and it runs the tick that checks every connection's timeouts, so that no request makes a
timer.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import time
from collections.abc import Iterable
from typing import Protocol, cast

from dinp.config import RouterConfig
from dinp.errors import ConfigError
from dinp.router.accesslog import AccessLog
from dinp.router.backends import BackendPool
from dinp.router.balancer import Balancer
from dinp.router.cert_files import CertFiles
from dinp.router.metrics import Metrics, WorkerStats
from dinp.router.routing import RouteCache
from dinp.router.tls import CertStore
from dinp.routes import RouteTable

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
# Client addresses whose trust is remembered (the cache is emptied when full).
TRUST_CACHE = 4096


def tick_interval(config: RouterConfig) -> float:
    """How often timeouts are checked: often enough to be a fraction of the shortest."""
    shortest = min(config.backend_timeout, config.client_timeout, config.header_timeout)
    return min(1.0, max(0.02, shortest / 5))


class RequestIds:
    """New X-Request-Id values: this worker's random prefix and a counter."""

    def __init__(self) -> None:
        self._prefix = os.urandom(8).hex().encode() + b"-"
        self._count = 0

    def next(self) -> bytes:
        self._count += 1
        return b"%s%x" % (self._prefix, self._count)


def trusted_networks(cidrs: Iterable[str]) -> tuple[Network, ...]:
    """trusted_proxies as networks; ConfigError naming the one that is not a CIDR."""
    networks = []
    for cidr in cidrs:
        try:
            networks.append(ipaddress.ip_network(cidr.strip(), strict=False))
        except ValueError as exc:
            raise ConfigError(f"trusted_proxies: {cidr!r} is not an address or a CIDR "
                              "(10.0.0.0/8, 2001:db8::/32)") from exc
    return tuple(networks)


class Trust:
    """Which client addresses are trusted proxies (their X-Forwarded-For is appended to,
    their X-Forwarded-Proto kept), asked once per connection and remembered."""

    def __init__(self, networks: tuple[Network, ...]) -> None:
        self.networks = networks
        self._seen: dict[str, bool] = {}

    def __call__(self, address: str) -> bool:
        if not self.networks:
            return False
        known = self._seen.get(address)
        if known is None:
            known = self._check(address)
            if len(self._seen) >= TRUST_CACHE:
                self._seen = {}
            self._seen[address] = known
        return known

    def _check(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        mapped = getattr(ip, "ipv4_mapped", None)
        return any((mapped or ip) in net for net in self.networks)


class Connection(Protocol):
    """A client connection, as the tick and a stopping router see it."""

    def check(self, now: float) -> None:
        """Act on the timeouts that ran out by `now`."""

    def close_if_idle(self) -> None: ...

    def abort(self) -> None: ...


class Proxy:
    """What every connection of one router worker shares. `config` gives the limits and
    timeouts (the data plane reads only those fields of it)."""

    def __init__(self, config: RouterConfig, *, access_log: AccessLog | None = None,
                 wildcard_texts: tuple[str, str] | None = None) -> None:
        self.config = config
        self.tick = tick_interval(config)
        self.loop = cast(asyncio.AbstractEventLoop, None)  # set by start()
        self.metrics = Metrics()
        self.routes = RouteCache(self.metrics)
        self.balancer = Balancer(config.fail_timeout)
        self.pool = BackendPool(self.balancer, max_idle=config.max_idle_per_backend,
                                connect_timeout=config.connect_timeout)
        self.access_log = access_log
        self.trusted = Trust(trusted_networks(config.trusted_proxies))
        # The operator's certificate, reloaded when its files change (once started);
        # `wildcard_texts`: the pair in use, from a supervisor (see cert_files.py).
        self.cert_files = (CertFiles(config.tls_cert_file, config.tls_key_file,
                                     texts=wildcard_texts)
                           if config.tls_cert_file else None)
        self.certs = CertStore(self.metrics, self.cert_files.certificate
                               if self.cert_files is not None else None)
        self.certs.listeners.append(self.routes.flush)
        self.connections: set[Connection] = set()
        self.closing = False  # see begin_closing
        # Reached by every request through the proxy it already holds: one attribute
        # lookup each, not two.
        self.route = self.routes.route
        self.request_id = RequestIds().next
        self._tick: asyncio.TimerHandle | None = None

    def start(self) -> None:
        """Bind to the running loop and start the tick (idempotent)."""
        if self.loop is None:
            self.loop = self.balancer.loop = self.pool.loop = asyncio.get_running_loop()
        if self._tick is None:
            self._tick = self.loop.call_later(self.tick, self._on_tick)
        if self.cert_files is not None:
            self.cert_files.start(self.certs.set_wildcard)

    def stop(self) -> None:
        self.certs.close()
        if self.cert_files is not None:
            self.cert_files.stop()
        if self._tick is not None:
            self._tick.cancel()
            self._tick = None
        if self.access_log is not None:
            self.access_log.flush()

    def begin_closing(self) -> None:
        """From now on a connection closes after its response, and no backend connection
        goes back to the pool."""
        self.closing = self.pool.closing = True

    @property
    def table(self) -> RouteTable:
        return self.routes.table

    def set_table(self, table: RouteTable) -> None:
        """Swap the snapshot; requests in flight keep the backend they already have."""
        addrs = self.routes.set_table(table)
        if addrs is not None:
            self.pool.retain(addrs)
            self.balancer.retain(addrs)

    def _on_tick(self) -> None:
        now = self.loop.time()
        try:
            for conn in list(self.connections):
                conn.check(now)
            self.pool.prune(now)
            if self.access_log is not None:
                self.access_log.flush()
        finally:
            self._tick = self.loop.call_later(self.tick, self._on_tick)

    def stats(self) -> WorkerStats:
        now = self.loop.time() if self.loop is not None else 0.0
        routes, files = self.routes, self.cert_files
        return {
            "apps": self.metrics.stats(),
            "connections": len(self.connections),
            "idle_backends": self.pool.idle_count(),
            "backends_down": self.balancer.down_count(now),
            "routes": len(routes.table),
            "backends": routes.backend_count(),
            "rev": routes.table.rev,
            "ready": routes.ready,
            "table_age": round(time.monotonic() - routes.table_time, 3),
            "redis": None,
            "workers": 1,
            "proxy_protocol_errors": self.metrics.proxy_protocol_errors,
            "tls_refused": self.metrics.tls_refused,
            "tls_certificates": self.certs.loaded,
            "tls_certificates_refused": self.certs.refused,
            "tls_file_expires": files.expires if files is not None else None,
            "tls_file_stale": files is not None and files.stale,
        }
