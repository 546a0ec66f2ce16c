"""What a connection is until its PROXY protocol header is read: on a listener behind a
load balancer that speaks it (HAProxy `send-proxy`, AWS NLB, ...), every connection
starts with one, naming the client.

A ProxyHeader is the connection's first protocol: it reads the header (parsed strictly,
proxy_protocol.py), then hands the connection, and the bytes that came after the header
(the start of the HTTP request, or of the TLS ClientHello), to the protocol `make` returns
for the client's address: a ClientConnection, or a TlsStream in front of one (the
router's own TLS layer, which can be handed bytes already read).

A connection whose header is malformed, oversized, missing (it starts with anything
else) or not whole within header_timeout is closed and counted
(dinp_router_proxy_protocol_errors_total, and a log line now and then). One that closes
before sending a byte is a load balancer's TCP check, and is not.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import cast

from dinp.router.proxy import Proxy
from dinp.router.proxy_protocol import ProxyProtocolError, parse

log = logging.getLogger("dinp.router")

# A refused PROXY header is logged at most this often (seconds); the rest are counted.
WARN_INTERVAL = 10.0

# The protocol that takes the connection over, for the client's address.
Make = Callable[[str], asyncio.Protocol]


class Refusals:
    """Counts refused headers and logs them now and then (a misconfigured balancer would
    have every connection refused)."""

    def __init__(self, proxy: Proxy, key: str) -> None:
        self.proxy = proxy
        self.key = key  # the listener's config key, for the log
        self._warned_at = -WARN_INTERVAL
        self._unwarned = 0

    def __call__(self, peer: str, why: str) -> None:
        self.proxy.metrics.proxy_protocol_errors += 1
        now = self.proxy.loop.time()
        if now - self._warned_at < WARN_INTERVAL:
            self._unwarned += 1
            return
        more = f" ({self._unwarned} more since the last one)" if self._unwarned else ""
        self._warned_at, self._unwarned = now, 0
        log.warning("connection from %s to %s closed: %s%s; this listener expects a PROXY "
                    "protocol header from the load balancer", peer, self.key, why, more)


class ProxyHeader(asyncio.Protocol):
    """A new connection on a PROXY protocol listener, until its header is read. It counts
    as one of the proxy's connections: the tick ends it after header_timeout, a stopping
    router closes it."""

    def __init__(self, proxy: Proxy, make: Make, refused: Refusals) -> None:
        self.proxy = proxy
        self.make = make
        self.refused = refused
        self.transport = cast(asyncio.Transport, None)
        self.peer = "unknown"
        self._data = b""
        self._started = 0.0
        self._done = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple):
            self.peer = str(peer[0])
        self._started = self.proxy.loop.time()
        self.proxy.connections.add(self)

    def data_received(self, data: bytes) -> None:
        if self._done:
            return
        data = self._data + data
        try:
            header = parse(data)
        except ProxyProtocolError as exc:
            self._end(str(exc))
            return
        if header is None:
            self._data = data  # bounded: parse refuses what grows past a header's size
            return
        self._end(None, close=False)
        client = header.source[0] if header.source is not None else self.peer
        protocol = self.make(client)
        self.transport.set_protocol(protocol)
        protocol.connection_made(self.transport)
        rest = data[header.length:]
        if rest:  # the start of the request, or of the ClientHello
            protocol.data_received(rest)

    def eof_received(self) -> bool:
        # Closed before a byte: a balancer's TCP check, not an error.
        self._end("it closed within its PROXY header" if self._data else None)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._done:
            self._done = True
            self.proxy.connections.discard(self)

    def _end(self, error: str | None, *, close: bool = True) -> None:
        if self._done:
            return
        self._done = True
        self.proxy.connections.discard(self)
        if error is not None:
            self.refused(self.peer, error)
        if close:
            self.transport.abort()

    # --- as the proxy's tick and a stopping router see it ---

    def check(self, now: float) -> None:
        timeout = self.proxy.config.header_timeout
        if not self._done and now - self._started >= timeout:
            self._end(f"no whole PROXY header within {timeout:g} s")

    def close_if_idle(self) -> None:
        self._end(None)

    def abort(self) -> None:
        self._end(None)
