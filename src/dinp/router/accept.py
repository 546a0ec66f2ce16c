"""Listeners whose connections start with a PROXY protocol header (the router behind a
load balancer that speaks it: HAProxy `send-proxy`, AWS NLB, LVS with a proxy in front).

The event loop's own listeners read whatever arrives, and what a transport has read
cannot be handed back to a TLS handshake. So these listeners accept on their own and read
the header straight from each socket: they look at the bytes waiting (MSG_PEEK) and take
exactly the header, leaving what follows (the HTTP request, the TLS ClientHello) in the
socket for the connection the event loop then makes of it (a ClientConnection, after the
TLS handshake on the TLS listener).

A connection whose header is malformed, oversized, missing (it starts with anything
else) or not whole within header_timeout is closed and counted
(dinp_router_proxy_protocol_errors_total). One that closes before sending a byte is a
load balancer's TCP check, and is not.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import Callable

from dinp.router.proxy import Proxy
from dinp.router.proxy_protocol import MAX_HEADER, ProxyProtocolError, parse

log = logging.getLogger("dinp.router")

# A refused PROXY header is logged at most this often (seconds); the rest are counted.
WARN_INTERVAL = 10.0


def bind_tcp(host: str, port: int, *, reuse_port: bool) -> socket.socket:
    """A non-blocking TCP socket bound to host:port, not listening yet."""
    family, kind, proto, _, addr = socket.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(addr)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


class Preamble:
    """A new connection whose PROXY header has not arrived whole. It counts as one of
    the proxy's connections: the tick ends it after header_timeout, a stopping router
    closes it."""

    def __init__(self, listener: ProxyProtocolListener, sock: socket.socket, peer: str) -> None:
        self.listener = listener
        self.sock = sock
        self.peer = peer
        self.loop = listener.loop
        self.started = self.loop.time()
        self._taken = b""  # the header's bytes read so far
        self._done = False

    def start(self) -> None:
        self.listener.proxy.connections.add(self)
        self.loop.add_reader(self.sock.fileno(), self._readable)

    def _readable(self) -> None:
        sock = self.sock
        try:
            waiting = sock.recv(MAX_HEADER, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._end(None)
            log.debug("connection from %s failed before its PROXY header: %s", self.peer, exc)
            return
        if not waiting:
            # Closed before a byte: a balancer's TCP check, not an error.
            self._end(None if not self._taken else "it closed within its PROXY header")
            return
        data = self._taken + waiting
        try:
            header = parse(data)
        except ProxyProtocolError as exc:
            self._end(str(exc))
            return
        try:
            if header is None:  # every byte waiting is header: take them, wait for more
                sock.recv(len(waiting))
                self._taken = data
                return
            sock.recv(header.length - len(self._taken))
        except OSError as exc:
            self._end(None)
            log.debug("connection from %s failed in its PROXY header: %s", self.peer, exc)
            return
        self._end(None, close=False)
        source = header.source[0] if header.source is not None else self.peer
        self.listener.hand_over(sock, source)

    def _end(self, error: str | None, *, close: bool = True) -> None:
        if self._done:
            return
        self._done = True
        self.listener.proxy.connections.discard(self)
        with contextlib.suppress(OSError, ValueError):
            self.loop.remove_reader(self.sock.fileno())
        if error is not None:
            self.listener.refused(self.peer, error)
        if close:
            self.sock.close()

    # --- as the proxy's tick and a stopping router see it ---

    def check(self, now: float) -> None:
        timeout = self.listener.proxy.config.header_timeout
        if not self._done and now - self.started >= timeout:
            self._end(f"no whole PROXY header within {timeout:g} s")

    def close_if_idle(self) -> None:
        self._end(None)

    def abort(self) -> None:
        self._end(None)


class ProxyProtocolListener:
    """A listener (bound socket) whose connections start with a PROXY header: each
    becomes `make(client address)`'s protocol, after a TLS handshake with `ssl_context`
    when there is one. Like asyncio's Server: start_serving, close, wait_closed."""

    def __init__(self, proxy: Proxy, sock: socket.socket,
                 make: Callable[[str], asyncio.Protocol], *,
                 ssl_context: ssl.SSLContext | None = None, backlog: int = 2048) -> None:
        self.proxy = proxy
        self.loop = proxy.loop
        self.sock = sock
        self.make = make
        self.ssl_context = ssl_context
        self.backlog = backlog
        self._accepting: asyncio.Task[None] | None = None
        self._handing: set[asyncio.Task[None]] = set()
        self._warned_at = -WARN_INTERVAL
        self._unwarned = 0

    @property
    def sockets(self) -> list[socket.socket]:
        return [self.sock]

    async def start_serving(self) -> None:
        if self._accepting is None:
            self.sock.listen(self.backlog)
            self._accepting = self.loop.create_task(self._accept(), name="dinp-accept")

    async def _accept(self) -> None:
        while True:
            try:
                conn, addr = await self.loop.sock_accept(self.sock)
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                continue
            except OSError as exc:  # out of file descriptors, most likely: wait a little
                log.warning("cannot accept connections: %s", exc.strerror or exc)
                await asyncio.sleep(0.1)
                continue
            conn.setblocking(False)
            with contextlib.suppress(OSError):
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            Preamble(self, conn, str(addr[0])).start()

    def hand_over(self, sock: socket.socket, client: str) -> None:
        """The header is read: the rest of the connection is the event loop's."""
        task = self.loop.create_task(self._hand_over(sock, client))
        self._handing.add(task)
        task.add_done_callback(self._handing.discard)

    async def _hand_over(self, sock: socket.socket, client: str) -> None:
        ssl_context = self.ssl_context
        try:
            await self.loop.connect_accepted_socket(
                lambda: self.make(client), sock, ssl=ssl_context,
                ssl_handshake_timeout=None if ssl_context is None
                else self.proxy.config.header_timeout)
        except (OSError, TimeoutError) as exc:  # a failed TLS handshake (its alert is sent)
            log.debug("connection from %s: %s", client, exc)
            with contextlib.suppress(OSError):
                sock.close()

    def refused(self, peer: str, why: str) -> None:
        """Count a refused header; log it now and then (a misconfigured balancer would
        refuse them all)."""
        self.proxy.metrics.proxy_protocol_errors += 1
        now = self.loop.time()
        if now - self._warned_at < WARN_INTERVAL:
            self._unwarned += 1
            return
        more = f" ({self._unwarned} more since the last one)" if self._unwarned else ""
        self._warned_at, self._unwarned = now, 0
        port = self.sock.getsockname()[1]
        log.warning("connection from %s to port %d closed: %s%s; this listener expects a "
                    "PROXY protocol header from the load balancer", peer, port, why, more)

    def close(self) -> None:
        if self._accepting is not None:
            self._accepting.cancel()
        for task in list(self._handing):
            task.cancel()
        with contextlib.suppress(OSError):
            self.sock.close()

    async def wait_closed(self) -> None:
        tasks = [t for t in (self._accepting, *self._handing) if t is not None]
        await asyncio.gather(*tasks, return_exceptions=True)
