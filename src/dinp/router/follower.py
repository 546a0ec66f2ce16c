"""How a router keeps its route table current from Redis (the server writes it there,
routes.RedisRouteStore): a full read at start, a re-read on each notification and every
`resync_interval`; the last table is kept while Redis is away."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Callable
from typing import Any

import redis
import redis.asyncio as aioredis

from dinp import const
from dinp.routes import RouteTable, read_redis, redact

# Its log lines keep the logger name they had when this lived in routes.py.
log = logging.getLogger("dinp.routes")

# A router says which table revision it serves this often; the key lives REPORT_TTL, so a
# router that died stops counting soon after.
REPORT_INTERVAL = 3.0
REPORT_TTL = const.ROUTER_REPORT_TTL


def router_id() -> str:
    """This router process: host and pid (each worker process follows on its own)."""
    return f"{socket.gethostname()[:64]}:{os.getpid()}"


class RedisRouteFollower:
    """Keeps a router's table current: full read at start, re-read on each notification
    and every `resync_interval`; keeps the last table while Redis is down and reconnects
    with backoff."""

    def __init__(
        self,
        url: str,
        on_table: Callable[[RouteTable], None],
        *,
        resync_interval: float = 30.0,
    ) -> None:
        self.url = url
        self.on_table = on_table
        self.resync_interval = resync_interval
        self.client: aioredis.Redis = aioredis.Redis.from_url(
            url, socket_timeout=3, socket_connect_timeout=3
        )
        self._sync = redis.Redis.from_url(url, socket_timeout=3, socket_connect_timeout=3)
        self._loaded: RouteTable | None = None
        self.connected = asyncio.Event()
        self.last_loaded = 0.0
        self._last = RouteTable()
        self._ready = False  # handed a table to on_table yet
        self._warned_empty = False
        # Under /dinp/routers/<this>, the revision this router serves: the server waits
        # for every live router to serve a table before stopping what it no longer holds.
        self.report_key = const.ROUTER_KEY_PREFIX + router_id()

    async def load(self, *, full: bool = True) -> RouteTable:
        """The current table. Reading a whole table is Python work that grows with it
        (about 25 ms for 1,000 hosts): it runs in a thread so the event loop keeps serving,
        and, unless `full`, not at all when the revision has not moved (writers bump it in
        the same MULTI as any change). A table without a revision is always read."""
        last = self._loaded
        if not full and last is not None and last.rev:
            rev = await self.client.get(const.ROUTES_REV_KEY)
            if rev is not None and int(rev) == last.rev:
                return last
        table = await asyncio.to_thread(read_redis, self._sync)
        self._loaded = table
        return table

    async def _reload(self, *, full: bool) -> None:
        table = await self.load(full=full)
        self.last_loaded = asyncio.get_running_loop().time()
        if not table.rev and not table.hosts and not table.cnames and not self._ready:
            return  # nothing published yet: no table is not an empty table
        if not table.rev and not table.hosts and len(self._last):
            # Redis restarted empty: the server rewrites the table within a reconcile;
            # until then the last table is better than answering 404 to everything.
            if not self._warned_empty:
                log.warning("Redis holds no route table; serving the last one (rev %d) "
                            "until the server rewrites it", self._last.rev)
                self._warned_empty = True
            return
        self._warned_empty = False
        if table.rev == self._last.rev and table.same_routes(self._last) and len(table):
            return  # nothing new: the router keeps the snapshot it has
        self._last = table
        self._ready = True
        self.on_table(table)
        await self.report()

    async def report(self) -> None:
        """Say which revision this router serves (expires unless said again)."""
        if self._ready and self._last.rev:
            await self.client.set(self.report_key, self._last.rev, ex=REPORT_TTL)

    async def run(self) -> None:
        """Follow Redis until cancelled."""
        backoff = 0.1
        while True:
            pubsub = self.client.pubsub()
            try:
                await pubsub.subscribe(const.ROUTES_CHANNEL)
                await self._reload(full=True)
                self.connected.set()
                backoff = 0.1
                await self._follow(pubsub)
            except asyncio.CancelledError:
                raise
            except (redis.RedisError, OSError) as exc:
                if self.connected.is_set():
                    log.warning("Redis at %s lost (%s); serving the last table",
                                redact(self.url), exc)
                self.connected.clear()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
            finally:
                with contextlib.suppress(redis.RedisError, OSError):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def _follow(self, pubsub: Any) -> None:
        """Re-read on each notification and every resync_interval; report every
        REPORT_INTERVAL."""
        loop = asyncio.get_running_loop()
        next_report = loop.time()
        while True:
            resync_at = self.last_loaded + self.resync_interval
            if loop.time() >= next_report:
                await self.report()
                next_report = loop.time() + REPORT_INTERVAL
            timeout = max(0.0, min(resync_at, next_report) - loop.time())
            msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=timeout)
            if msg is not None:
                # Coalesce a burst of notifications into one read.
                while await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.001):
                    pass
                await self._reload(full=False)  # reads only a moved revision
            elif loop.time() >= resync_at:
                # The safety net for writes that missed the rev: read everything.
                await self._reload(full=True)

    async def close(self) -> None:
        # A router that stops is no longer waited for (one that dies expires).
        with contextlib.suppress(redis.RedisError, OSError):
            await self.client.delete(self.report_key)
        await self.client.aclose()
        self._sync.close()
