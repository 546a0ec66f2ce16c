"""One router: the Router (listeners, route table, admin port, graceful stop) and
`run_worker`, a Router that follows the table in Redis: all of `dinp router` with one
worker, or one of its worker processes."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from dinp.config import RouterConfig, split_hostport
from dinp.errors import ConfigError
from dinp.lifecycle import cannot_listen, forced, run_until_stopped, start_site
from dinp.router.accept import ProxyHeader, Refusals
from dinp.router.accesslog import AccessLog
from dinp.router.admin import admin_app
from dinp.router.clients import ClientConnection, TlsClientConnection
from dinp.router.follower import RedisRouteFollower
from dinp.router.metrics import WorkerStats
from dinp.router.proxy import Proxy
from dinp.router.tickets import SharedTickets
from dinp.router.tls_stream import TlsStream
from dinp.routes import RouteTable, redact

log = logging.getLogger("dinp.router")

# How long a stopping router lets requests in flight finish.
SHUTDOWN_GRACE = 5.0


def open_access_log(path: str) -> AccessLog:
    try:
        return AccessLog(path)
    except OSError as exc:
        raise ConfigError(f"cannot open the access log {path}: {exc.strerror or exc}") from exc


class Router:
    """One router: its listeners, its route table and its pool of backend connections.
    `config` gives its limits, timeouts and access log (RouterConfig's defaults without
    one); `overrides` replace single fields of it (connect_timeout=…); `wildcard_texts`:
    the operator's certificate as its supervisor holds it (else read from its files)."""

    def __init__(self, config: RouterConfig | None = None, *,
                 wildcard_texts: tuple[str, str] | None = None, **overrides: Any) -> None:
        config = dataclasses.replace(config or RouterConfig(), **overrides)
        access_log = open_access_log(config.access_log) if config.access_log else None
        self.proxy = Proxy(config, access_log=access_log, wildcard_texts=wildcard_texts)
        # Set by whoever feeds the table from Redis, so /health can tell whether it is live.
        self.follower: RedisRouteFollower | None = None
        self.bound_http_port: int | None = None
        self.bound_https_port: int | None = None
        self.bound_admin_port: int | None = None
        # Set once the TLS listener takes connections (after the first table's
        # certificates are in).
        self.https_open = asyncio.Event()
        self._servers: list[asyncio.base_events.Server] = []
        self._admin: web.AppRunner | None = None
        self._tls = False
        self._opening: asyncio.Task[None] | None = None
        # Set before start_https: the session ticket keys come from it (the same in every
        # worker of a router, so any worker resumes any worker's sessions).
        self.ticket_secret: bytes | None = None
        self._tickets: SharedTickets | None = None
        https_port = config.https_port
        if not https_port and config.https_listen:
            https_port = split_hostport(config.https_listen, default_port=443)[1]
        self.proxy.routes.https_port = https_port or 443

    @property
    def table(self) -> RouteTable:
        return self.proxy.table

    def set_table(self, table: RouteTable) -> None:
        """Use `table` from the next request on; requests in flight keep their backend.
        Its certificates serve new TLS handshakes once they are made (in a thread)."""
        self.proxy.set_table(table)
        if self._tls:
            self.proxy.certs.update(table.certs)

    @property
    def redis_connected(self) -> bool | None:
        """None when the table does not come from Redis."""
        return None if self.follower is None else self.follower.connected.is_set()

    @property
    def stopping(self) -> bool:
        return self.proxy.closing

    def stats(self) -> WorkerStats:
        stats = self.proxy.stats()
        stats["redis"] = self.redis_connected
        # With a TLS listener, ready only once it takes connections (its certificates
        # are in): a load balancer must not send TLS traffic before.
        if self._tls and not self.https_open.is_set():
            stats["ready"] = False
        return stats

    async def start_http(self, host: str, port: int, *, reuse_port: bool = False,
                         proxy_protocol: bool = False, setting: str = "http_listen",
                         ) -> list[asyncio.base_events.Server]:
        """Listen for clients; port 0 picks a free port (see bound_http_port). With
        `proxy_protocol`, every connection must start with a PROXY header. `setting` is
        what a taken port's error tells the user to change (`dinp up` names its flag)."""
        loop = asyncio.get_running_loop()
        proxy = self.proxy
        proxy.start()
        factory: Callable[[], asyncio.Protocol] = lambda: ClientConnection(proxy)  # noqa: E731
        if proxy_protocol:
            refused = Refusals(proxy, "http_listen")
            factory = lambda: ProxyHeader(  # noqa: E731
                proxy, lambda client: ClientConnection(proxy, peer=client), refused)
        try:
            server = await loop.create_server(factory, host, port, reuse_port=reuse_port,
                                              backlog=2048)
        except OSError as exc:
            raise cannot_listen(host, port, exc, setting) from exc
        self._servers.append(server)
        self.bound_http_port = server.sockets[0].getsockname()[1]
        return [server]

    async def start_https(self, host: str, port: int, *, reuse_port: bool = False,
                          proxy_protocol: bool = False, setting: str = "https_listen") -> None:
        """Listen for TLS clients. The port is bound now (so a taken port fails the
        start) but takes connections only once the certificates of the first route table
        are in: a router never answers a handshake without them (see https_open)."""
        loop = asyncio.get_running_loop()
        proxy = self.proxy
        proxy.start()
        certs = proxy.certs
        self._tls = True
        proxy.routes.serves_tls = certs.serves
        proxy.routes.flush()
        if proxy.routes.ready:  # a table came before the listener
            certs.update(self.table.certs)
        if self.ticket_secret is not None and self._tickets is None:
            self._tickets = SharedTickets(certs.context, self.ticket_secret)
            self._tickets.start(loop)
        context = certs.context

        def tls(client: str | None = None) -> asyncio.Protocol:
            return TlsStream(proxy, context, TlsClientConnection(proxy, peer=client))

        factory: Callable[[], asyncio.Protocol] = tls
        if proxy_protocol:
            refused = Refusals(proxy, "https_listen")
            factory = lambda: ProxyHeader(proxy, tls, refused)  # noqa: E731
        try:
            server = await loop.create_server(factory, host, port, reuse_port=reuse_port,
                                              backlog=2048, start_serving=False)
        except OSError as exc:
            raise cannot_listen(host, port, exc, setting) from exc
        self._servers.append(server)
        self.bound_https_port = server.sockets[0].getsockname()[1]
        if not proxy.config.https_port:
            proxy.routes.https_port = self.bound_https_port
        self._opening = loop.create_task(self._open_when_ready(server, host, port, setting),
                                         name="dinp-https")
        self._opening.add_done_callback(self._opened)

    async def _open_when_ready(self, server: asyncio.base_events.Server, host: str,
                               port: int, setting: str) -> None:
        await self.proxy.certs.ready.wait()
        try:
            await server.start_serving()
        except OSError as exc:  # bound, but another socket listens there by now
            raise cannot_listen(host, port, exc, setting) from exc
        self.https_open.set()
        log.debug("TLS listener on port %s open", self.bound_https_port)

    def _opened(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("%s", task.exception())

    async def watch(self) -> None:
        """Run as long as the router does; raise if its TLS listener could not open."""
        if self._opening is not None:
            await asyncio.shield(self._opening)
        await asyncio.Event().wait()

    async def start_admin(self, host: str, port: int, *, setting: str = "admin_listen") -> None:
        """The admin port: `GET /health` for load balancers, `GET /metrics` for Prometheus."""

        async def stats() -> list[WorkerStats]:
            return [self.stats()]

        self._admin = await start_site(admin_app(stats, lambda: self.stopping),
                                       host, port, setting)
        self.bound_admin_port = self._admin.addresses[0][1]

    async def close(self, *, grace: float = SHUTDOWN_GRACE) -> None:
        """Stop accepting, let requests in flight finish for up to `grace` seconds, then
        cut what is left. Idle keep-alive connections are closed at once."""
        proxy = self.proxy
        proxy.begin_closing()  # from now on a connection closes after its response
        if self._opening is not None:
            self._opening.cancel()
        if self._tickets is not None:
            self._tickets.stop()
        for server in self._servers:
            server.close()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while proxy.connections:
            # Again each round: a connection accepted just before the listener closed
            # may show up late, and it must not hold the stop up for its idle timeout.
            for conn in list(proxy.connections):
                conn.close_if_idle()
            if not proxy.connections or loop.time() >= deadline or forced():
                break
            await asyncio.sleep(0.05)
        if proxy.connections:
            log.warning("cutting %d connection(s) still busy after %g s",
                        len(proxy.connections), grace)
        for conn in list(proxy.connections):
            conn.abort()
        proxy.pool.close()
        proxy.stop()
        if proxy.access_log is not None:
            proxy.access_log.close()
        if self._admin is not None:
            await self._admin.cleanup()
            self._admin = None
        for server in self._servers:
            await server.wait_closed()
        self._servers.clear()


async def _until(stop: Awaitable[object], watch: Awaitable[None]) -> None:
    """Until `stop` completes, or `watch` fails (its error is raised)."""
    stopping = asyncio.ensure_future(stop)
    watching = asyncio.ensure_future(watch)
    try:
        await asyncio.wait([stopping, watching], return_when=asyncio.FIRST_COMPLETED)
        if watching.done():
            watching.result()
    finally:
        watching.cancel()
        stopping.cancel()
        await asyncio.gather(watching, stopping, return_exceptions=True)


async def run_worker(config: RouterConfig, *, stop: Awaitable[object], admin: bool,
                     reuse_port: bool = False,
                     on_ready: Callable[[Router], Awaitable[None]] | None = None,
                     ticket_secret: bytes | None = None,
                     wildcard_texts: tuple[str, str] | None = None) -> None:
    """One router with its Redis follower, until `stop` completes (or a signal, when it
    serves the admin port itself, as a single process does). `ticket_secret`: what the
    TLS session ticket keys come from (the same for every worker of a router; a new one
    without); `wildcard_texts`: the operator's certificate, from the supervisor.

    It waits up to connect_timeout for the first table; if Redis does not answer by then
    it listens anyway, not ready: /health and every request answer 503 (with
    Retry-After) until the first table arrives, never 404 "no such app".
    """
    http_host, http_port = split_hostport(config.http_listen, default_port=8080)
    router = Router(config, wildcard_texts=wildcard_texts)
    router.ticket_secret = ticket_secret or os.urandom(32)
    follower = RedisRouteFollower(config.redis_url, router.set_table,
                                  resync_interval=config.resync_interval)
    router.follower = follower
    redis_url = redact(config.redis_url)
    follow = asyncio.create_task(follower.run(), name="dinp-route-follower")
    try:
        try:
            async with asyncio.timeout(config.connect_timeout):
                await follower.connected.wait()
        except TimeoutError:
            log.warning("Redis at %s does not answer; not ready (503) until the first route "
                        "table arrives", redis_url)
        await router.start_http(http_host, http_port, reuse_port=reuse_port,
                                proxy_protocol=config.http_proxy_protocol)
        https = ""
        if config.https_listen:
            https_host, https_port = split_hostport(config.https_listen, default_port=443)
            await router.start_https(https_host, https_port, reuse_port=reuse_port,
                                     proxy_protocol=config.https_proxy_protocol)
            https = f", https://{https_host}:{router.bound_https_port}"
        admin_url = "disabled"
        if admin and config.admin_listen:
            admin_host, admin_port = split_hostport(config.admin_listen, default_port=8081)
            await router.start_admin(admin_host, admin_port)
            admin_url = f"http://{admin_host}:{router.bound_admin_port}"
        if on_ready is not None:
            await on_ready(router)
        # What exists now lives as long as the process: keep the collector off it, so
        # the collections that requests trigger stay short (no latency spikes).
        gc.collect()
        gc.freeze()
        if admin:
            if router.proxy.cert_files is not None:  # the one process: it warns
                router.proxy.cert_files.warn_for_router()
            log.info("router serving on http://%s:%d%s, admin on %s, routes from %s "
                     "(%d hosts)", http_host, router.bound_http_port, https, admin_url,
                     redis_url, len(router.table))
            await run_until_stopped(asyncio.shield(follow), router.watch(), stop)
        else:
            await _until(stop, router.watch())
    finally:
        await router.close()
        follow.cancel()
        await asyncio.gather(follow, return_exceptions=True)
        await follower.close()
