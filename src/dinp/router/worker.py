"""One router: the Router (listeners, route table, admin port, graceful stop) and
`run_worker`, a Router that follows the table in Redis: all of `dinp router` with one
worker, or one of its worker processes."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from dinp.config import RouterConfig, split_hostport
from dinp.errors import ConfigError
from dinp.lifecycle import cannot_listen, forced, run_until_stopped, start_site
from dinp.router.accesslog import AccessLog
from dinp.router.admin import admin_app
from dinp.router.clients import ClientConnection
from dinp.router.follower import RedisRouteFollower
from dinp.router.metrics import WorkerStats
from dinp.router.proxy import Proxy
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
    one); `overrides` replace single fields of it (connect_timeout=…)."""

    def __init__(self, config: RouterConfig | None = None, **overrides: Any) -> None:
        config = dataclasses.replace(config or RouterConfig(), **overrides)
        access_log = open_access_log(config.access_log) if config.access_log else None
        self.proxy = Proxy(config, access_log=access_log)
        # Set by whoever feeds the table from Redis, so /health can tell whether it is live.
        self.follower: RedisRouteFollower | None = None
        self.bound_http_port: int | None = None
        self.bound_admin_port: int | None = None
        self._servers: list[asyncio.base_events.Server] = []
        self._admin: web.AppRunner | None = None

    @property
    def table(self) -> RouteTable:
        return self.proxy.table

    def set_table(self, table: RouteTable) -> None:
        """Use `table` from the next request on; requests in flight keep their backend."""
        self.proxy.set_table(table)

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
        return stats

    async def start_http(
        self, host: str, port: int, *, reuse_port: bool = False
    ) -> list[asyncio.base_events.Server]:
        """Listen for clients; port 0 picks a free port (see bound_http_port)."""
        loop = asyncio.get_running_loop()
        proxy = self.proxy
        proxy.start()
        try:
            server = await loop.create_server(
                lambda: ClientConnection(proxy), host, port, reuse_port=reuse_port,
                backlog=2048,
            )
        except OSError as exc:
            raise cannot_listen(host, port, exc, "http_listen") from exc
        self._servers.append(server)
        self.bound_http_port = server.sockets[0].getsockname()[1]
        return [server]

    async def start_admin(self, host: str, port: int) -> None:
        """The admin port: `GET /health` for load balancers, `GET /metrics` for Prometheus."""

        async def stats() -> list[WorkerStats]:
            return [self.stats()]

        self._admin = await start_site(admin_app(stats, lambda: self.stopping),
                                       host, port)
        self.bound_admin_port = self._admin.addresses[0][1]

    async def close(self, *, grace: float = SHUTDOWN_GRACE) -> None:
        """Stop accepting, let requests in flight finish for up to `grace` seconds, then
        cut what is left. Idle keep-alive connections are closed at once."""
        proxy = self.proxy
        proxy.begin_closing()  # from now on a connection closes after its response
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


async def run_worker(config: RouterConfig, *, stop: Awaitable[object], admin: bool,
                     reuse_port: bool = False,
                     on_ready: Callable[[Router], Awaitable[None]] | None = None) -> None:
    """One router with its Redis follower, until `stop` completes (or a signal, when it
    serves the admin port itself, as a single process does).

    It waits up to connect_timeout for the first table; if Redis does not answer by then
    it listens anyway, not ready: /health and every request answer 503 (with
    Retry-After) until the first table arrives, never 404 "no such app".
    """
    http_host, http_port = split_hostport(config.http_listen, default_port=8080)
    router = Router(config)
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
        await router.start_http(http_host, http_port, reuse_port=reuse_port)
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
            log.info("router serving on http://%s:%d, admin on %s, routes from %s "
                     "(%d hosts)", http_host, router.bound_http_port, admin_url, redis_url,
                     len(router.table))
            await run_until_stopped(asyncio.shield(follow), stop)
        else:
            await stop
    finally:
        await router.close()
        follow.cancel()
        await asyncio.gather(follow, return_exceptions=True)
        await follower.close()
