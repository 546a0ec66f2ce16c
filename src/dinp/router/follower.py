"""How a router keeps its route table current from Redis (the server writes it there,
routes.RedisRouteStore): a full read at start, a re-read on each notification and every
`resync_interval`; the last table is kept while Redis is away."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import redis
import redis.asyncio as aioredis

from dinp import const
from dinp.routes import RouteTable, read_redis, redact

# Its log lines keep the logger name they had when this lived in routes.py.
log = logging.getLogger("dinp.routes")


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
                loop = asyncio.get_running_loop()
                while True:
                    timeout = max(0.0, self.last_loaded + self.resync_interval - loop.time())
                    msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=timeout)
                    if msg is not None:
                        # Coalesce a burst of notifications into one read.
                        while await pubsub.get_message(ignore_subscribe_messages=True,
                                                       timeout=0.001):
                            pass
                    # A notification reads only a moved revision; the periodic re-read
                    # reads everything, the safety net for writes that missed the rev.
                    await self._reload(full=msg is None)
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

    async def close(self) -> None:
        await self.client.aclose()
        self._sync.close()
