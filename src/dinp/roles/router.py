"""`dinp router`: the HTTP reverse proxy in front of every app.

It routes by Host (custom domains through the table's cnames) to the healthy instances of
an app, round robin, and answers 404 (no such app), 503 (no healthy instance), 502 (no
instance accepted the request or it failed before answering) and 504 (no answer within
backend_timeout) with a short page saying what happened. The data path lives in
proxy_http.py (asyncio protocols + httptools); this module is the role around it: the
listeners, the admin port (aiohttp, `GET /health`), following the route table, shutdown.

Two ways to feed it a table:

- `serve(config)`: `dinp router`, following Redis with a RedisRouteFollower; when Redis
  goes away it keeps serving the last table it read and /health says `"redis": false`.
- in-process (`dinp up`): build a Router, `store.subscribe(router.set_table)` on a
  MemoryRouteStore, then `start_http`, `start_admin` and finally `close`.
"""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from dinp.config import RouterConfig, split_hostport
from dinp.errors import Unavailable
from dinp.roles.lifecycle import run_until_stopped, start_site
from dinp.roles.proxy_http import Proxy
from dinp.routes import RedisRouteFollower, RouteTable, redact

log = logging.getLogger("dinp.router")

# How long a stopping router lets requests in flight finish.
SHUTDOWN_GRACE = 5.0


class Router:
    """One router: its listeners, its route table and its pool of backend connections."""

    def __init__(
        self,
        *,
        connect_timeout: float = 3.0,
        backend_timeout: float = 60.0,
        keepalive_timeout: float = 60.0,
        max_idle_per_backend: int = 32,
    ) -> None:
        self.proxy = Proxy(
            connect_timeout=connect_timeout,
            backend_timeout=backend_timeout,
            keepalive_timeout=keepalive_timeout,
            max_idle_per_backend=max_idle_per_backend,
        )
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

    async def start_http(
        self, host: str, port: int, *, reuse_port: bool = False
    ) -> list[asyncio.base_events.Server]:
        """Listen for clients; port 0 picks a free port (see bound_http_port)."""
        loop = asyncio.get_running_loop()
        try:
            server = await loop.create_server(
                self.proxy.protocol, host, port, reuse_port=reuse_port, backlog=1024
            )
        except OSError as exc:
            raise Unavailable(
                f"cannot listen on {host}:{port}: {exc.strerror or exc}",
                hint="Another process uses that port? Choose another http_listen.",
            ) from exc
        self._servers.append(server)
        self.bound_http_port = server.sockets[0].getsockname()[1]
        return [server]

    async def start_admin(self, host: str, port: int) -> None:
        """The admin port: `GET /health` for load balancers and operators."""
        app = web.Application()
        app.router.add_get("/health", self._health)
        self._admin = await start_site(app, host, port)
        self.bound_admin_port = self._admin.addresses[0][1]

    async def _health(self, request: web.Request) -> web.Response:
        table = self.proxy.table
        return web.json_response({
            "status": "ok",
            "routes": len(table),  # hosts in the table
            "rev": table.rev,
            "redis": self.redis_connected,
        })

    async def close(self, *, grace: float = SHUTDOWN_GRACE) -> None:
        """Stop accepting, let requests in flight finish for up to `grace` seconds, then
        cut what is left. Idle keep-alive connections are closed at once."""
        proxy = self.proxy
        proxy.closing = True  # from now on a connection closes after its response
        for server in self._servers:
            server.close()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while proxy.connections:
            # Again each round: a connection accepted just before the listener closed
            # may show up late, and it must not hold the stop up for its idle timeout.
            for conn in list(proxy.connections):
                conn.close_if_idle()
            if not proxy.connections or loop.time() >= deadline:
                break
            await asyncio.sleep(0.05)
        if proxy.connections:
            log.warning("cutting %d connection(s) still busy after %g s",
                        len(proxy.connections), grace)
        for conn in list(proxy.connections):
            conn.abort()
        proxy.pool.close()
        if self._admin is not None:
            await self._admin.cleanup()
            self._admin = None
        for server in self._servers:
            await server.wait_closed()
        self._servers.clear()


async def serve(config: RouterConfig) -> None:
    """`dinp router`: serve HTTP with the table from Redis until SIGTERM/SIGINT (or until
    cancelled), then stop gracefully.

    It waits up to connect_timeout for the first table so that it does not answer 404 to
    everything right after a restart; if Redis does not answer by then it starts with an
    empty table and picks up the real one as soon as Redis is back.
    """
    http_host, http_port = split_hostport(config.http_listen, default_port=8080)
    router = Router(connect_timeout=config.connect_timeout,
                    backend_timeout=config.backend_timeout)
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
            log.warning("Redis at %s does not answer; starting with an empty route table",
                        redis_url)
        await router.start_http(http_host, http_port)
        admin = "disabled"
        if config.admin_listen:
            admin_host, admin_port = split_hostport(config.admin_listen, default_port=8081)
            await router.start_admin(admin_host, admin_port)
            admin = f"http://{admin_host}:{router.bound_admin_port}"
        log.info("router serving on http://%s:%d, admin on %s, routes from %s (%d hosts)",
                 http_host, router.bound_http_port, admin, redis_url, len(router.table))
        await run_until_stopped(asyncio.shield(follow))
    finally:
        log.info("router stopping")
        await router.close()
        follow.cancel()
        await asyncio.gather(follow, return_exceptions=True)
        await follower.close()
