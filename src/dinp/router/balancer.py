"""Which instance of an app gets the next request: round robin over its backends, skipping
for fail_timeout one that just failed (passive health: no probes, the requests themselves
tell), unless all did."""

from __future__ import annotations

import asyncio
import logging
from typing import cast

from dinp.router.routing import Route

log = logging.getLogger("dinp.router")

# A failing backend's problem is logged at most this often (seconds).
WARN_INTERVAL = 5.0


class Balancer:
    """The round robin of one worker and its memory of the backends that failed."""

    def __init__(self, fail_timeout: float) -> None:
        self.fail_timeout = fail_timeout
        self.loop = cast(asyncio.AbstractEventLoop, None)  # set by Proxy.start
        self.down: dict[str, float] = {}  # backend -> until when it is skipped
        self._warned: dict[str, float] = {}

    def pick(self, route: Route) -> int:
        """The index of the backend for the next request: round robin over the app's
        backends, skipping those that failed within fail_timeout (unless all did)."""
        backends = route.backends
        n = len(backends)
        if n == 1:
            return 0
        state = route.state
        i = state.next % n
        state.next = i + 1
        down = self.down
        if down:
            now = self.loop.time()
            for k in range(n):
                j = (i + k) % n
                if down.get(backends[j], 0.0) <= now:
                    return j
        return i

    def is_down(self, addr: str) -> bool:
        return bool(self.down) and self.down.get(addr, 0.0) > self.loop.time()

    def failed(self, addr: str, kind: str, route: Route, why: str) -> None:
        """Count a failed exchange and skip the backend for fail_timeout."""
        route.state.stats.error(kind)
        if self.fail_timeout > 0:
            self.down[addr] = self.loop.time() + self.fail_timeout
        self.warn(addr, "app %s: instance %s: %s", route.app, addr, why)

    def ok(self, addr: str) -> None:
        """The backend answered: no longer skipped."""
        self.down.pop(addr, None)

    def retain(self, addrs: set[str]) -> None:
        """Forget the backends no longer in the table."""
        self.down = {a: t for a, t in self.down.items() if a in addrs}

    def down_count(self, now: float) -> int:
        """Backends skipped at `now`."""
        return sum(1 for t in self.down.values() if t > now)

    def warn(self, key: str, message: str, *args: object) -> None:
        """Log a backend problem at most every WARN_INTERVAL per backend: a dead instance
        under load must not flood the log."""
        now = self.loop.time()
        if now - self._warned.get(key, -1e9) >= WARN_INTERVAL:
            self._warned[key] = now
            log.warning(message, *args)
