"""The router's side towards app instances: one connection per exchange, kept alive in a pool.

A BackendConnection carries one request at a time for a client connection (clients.py): it
parses the response with httptools, rewrites its head for the client, and hands the head
and body to the client's transport. Everything a response produces while one
`data_received` is parsed is written with one `writelines` (a small response is one
syscall), and nothing on this path makes a task, a future or a timer: timeouts are checked
by the proxy's tick (`check`).

Back-pressure both ways: when the client's write buffer is full it pauses reading from
this connection (`pause_response`), and when this connection's write buffer is full it
pauses reading from the client (`set_backend_full`), so a body of any size crosses the
router in a few buffers.

This side knows the client side only through two small protocols, `Exchange` (the request
being answered) and `Client` (the connection it came on), so it imports nothing from it.
The BackendPool keeps idle connections per backend and opens new ones, trying the app's
next backend when one refuses; the Balancer (balancer.py) remembers which failed.
"""

from __future__ import annotations

import asyncio
import logging
from http import HTTPStatus
from typing import Any, Generic, Protocol, TypeVar, cast

import httptools

from dinp.router.balancer import Balancer
from dinp.router.http1 import Stop, connection_tokens
from dinp.router.metrics import CLOSED, CONNECT, INVALID, TIMEOUT
from dinp.router.routing import Route

log = logging.getLogger("dinp.router")

# An idle pooled connection older than this is closed: many servers close theirs sooner,
# and a request sent on a connection the server is closing may be lost.
IDLE_BACKEND_TTL = 30.0

# How a response body is framed towards the client.
_NONE, _LENGTH, _CHUNKED, _EOF = range(4)

# Response headers the router handles itself; any other passes through as it came.
_KEEP, _DROP, _CONNECTION, _CONTENT_LENGTH, _TRANSFER_ENCODING, _UPGRADE, _HSTS = range(7)
_RESPONSE_SPECIAL = {
    b"connection": _CONNECTION, b"content-length": _CONTENT_LENGTH,
    b"transfer-encoding": _TRANSFER_ENCODING, b"upgrade": _UPGRADE,
    b"keep-alive": _DROP, b"te": _DROP, b"trailer": _DROP, b"proxy-connection": _DROP,
    # Replaced by the app's HTTPS policy when it sets one, else passed on.
    b"strict-transport-security": _HSTS,
}
# Status lines, with the standard reason phrase (the backend's own is not kept: HTTP/2 has
# none, and taking it would cost a callback per response).
_STATUS_LINES = {s.value: b"HTTP/1.1 %d %s\r\n" % (s.value, s.phrase.encode())
                 for s in HTTPStatus}


# A closed connection's parser (one that calls back nothing).
_SPENT_PARSER = httptools.HttpResponseParser(object())


def status_line(status: int) -> bytes:
    return _STATUS_LINES.get(status) or b"HTTP/1.1 %d \r\n" % status


def split_addr(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    return host.strip("[]"), int(port)


class Exchange(Protocol):
    """The request a BackendConnection carries, as this side sees it (clients.Request)."""

    route: Route
    method: bytes
    http10: bool
    keep_alive: bool
    upgrade: bool
    retryable: bool  # may be sent again on a fresh connection
    tries: int  # backends that hung up on it without a word, so far
    complete: bool  # the client sent all of it
    status: int  # of the response, once its head came
    sent: int  # response body bytes
    close_after: bool  # the client connection closes after this response
    sink: asyncio.Transport | None  # where the rest of the request body goes
    hsts: bytes  # the Strict-Transport-Security line the response gets (b"": none)


R = TypeVar("R", bound=Exchange)
R_contra = TypeVar("R_contra", bound=Exchange, contravariant=True)


class Client(Protocol[R_contra]):
    """The connection the request came on, as this side sees it (clients.ClientConnection):
    where the response goes, and what it is told when the exchange ends."""

    transport: asyncio.Transport
    closed: bool
    tls: bool  # its transport encrypts: one write makes one TLS record

    def close(self) -> None: ...

    def hold_writes(self, hold: bool) -> None:
        """TLS only: while held, what is written is encrypted but not sent, so that the
        close_notify of a close that follows goes out in the same send."""

    def set_backend_full(self, full: bool) -> None:
        """The backend's write buffer is full (or no longer): stop (resume) reading."""

    def retry(self, req: R_contra, *, same: bool) -> None:
        """Send `req` again: on a fresh connection to the same backend (`same`: a pooled
        connection it had closed), or to the next backend (it hung up without a word)."""

    def start_tunnel(self, req: R_contra) -> None:
        """The backend accepted the upgrade: bytes flow raw both ways from now on."""

    def response_done(self, req: R_contra) -> None:
        """The whole response went out."""

    def abort_response(self, req: R_contra) -> None:
        """The response broke after its head went out."""

    def respond_error(self, req: R_contra, status: int, message: str) -> None:
        """No response head went out: answer with the router's own page."""


class NoBackend(Exception):
    """No backend of the app accepted a connection."""

    def __init__(self, tried: int) -> None:
        super().__init__(tried)
        self.tried = tried


class BackendConnection(asyncio.Protocol, Generic[R]):
    """One connection to an app instance; carries one exchange at a time."""

    def __init__(self, pool: BackendPool, addr: str) -> None:
        self.pool = pool
        self.balancer = pool.balancer
        self.addr = addr
        self.loop = pool.loop
        self.transport = cast(asyncio.Transport, None)
        self.parser = httptools.HttpResponseParser(self)
        self.client: Client[R] | None = None
        self.req: R | None = None
        self.closed = False
        self.reused = False  # it came from the pool (so the server may have closed it)
        self.pooled = False
        self.idle_since = 0.0
        self._out: list[bytes] = []  # for the client, written at the end of each read
        self._headers: list[tuple[bytes, bytes]] = []
        self._reading_paused = False
        self._writing_paused = False
        self._request_sent = False
        self._last = 0.0  # when the backend last did something, or we began to wait on it
        self._got_bytes = False  # any byte of a response
        self._started = False  # a final response head is on its way to the client
        self._framing = _NONE
        self._until_eof = False  # the response body ends when the backend closes
        self._interim = False  # parsing a 1xx response
        self._switching = False  # a 101 is on its way to the client; raw bytes follow
        self._tunnel = False
        self._head_only = False  # answering HEAD: the body the head announces never comes
        self._keep = False

    def begin(self, client: Client[R], req: R) -> None:
        """Start an exchange; the caller writes the request."""
        self.client, self.req = client, req
        self._got_bytes = self._started = self._until_eof = self._interim = False
        self._switching = self._head_only = self._request_sent = False
        self._framing = _NONE
        self._headers = []
        self._last = self.loop.time()

    def request_sent(self) -> None:
        """The whole request is with the backend: from now on, waiting is its fault."""
        self._request_sent = True
        self._last = self.loop.time()

    # --- asyncio callbacks ---

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.parser = _SPENT_PARSER  # it held this protocol's callbacks: a cycle
        if self.pooled:
            self.pool.forget(self)
        req, client = self.req, self.client
        if req is None or client is None:
            return
        if self._tunnel:
            self._detach()
            client.close()
        elif self._started and self._until_eof and not self._interim and exc is None:
            self._finish(keep=False)
        elif not self._got_bytes and req.retryable and not client.closed and (
                self.reused or req.tries + 1 < len(req.route.backends)):
            # A pooled connection the server closed as we reused it: nothing was acted on.
            # A new one closed without a word (an instance stopping, whose port Docker's
            # proxy still accepts): an idempotent request goes to the next instance.
            if not self.reused:
                self.balancer.failed(self.addr, CLOSED, req.route,
                                     "closed a new connection without answering")
            self._detach()
            client.retry(req, same=self.reused)
        elif self._started:
            self._fail(502, CLOSED, f"an instance of app {req.route.app} closed the "
                                    "connection in the middle of its response")
        else:
            self._fail(502, CLOSED, f"an instance of app {req.route.app} closed the "
                                    "connection before answering")

    def data_received(self, data: bytes) -> None:
        if self._tunnel:
            client = self.client
            if client is not None and not client.closed:
                client.transport.write(data)
            return
        if self.req is None:  # nothing was asked: a confused backend, don't reuse it
            self.close()
            return
        self._got_bytes = True
        self._last = self.loop.time()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            if self._switching:
                self._start_tunnel(data[exc.args[0]:])
            elif self.req is not None:
                self._fail(502, INVALID,
                           f"an instance of app {self.req.route.app} sent an invalid upgrade")
            return
        except httptools.HttpParserError as exc:
            self._parse_error(exc)
            return
        if self._out:
            self._flush()

    def eof_received(self) -> bool:
        self.closed = True  # not to be taken from the pool any more
        return False

    def pause_writing(self) -> None:
        self._writing_paused = True
        self._last = self.loop.time()
        if self.client is not None:
            self.client.set_backend_full(True)

    def resume_writing(self) -> None:
        self._writing_paused = False
        self._last = self.loop.time()
        if self.client is not None:
            self.client.set_backend_full(False)

    # --- back-pressure from the client ---

    def pause_response(self) -> None:
        if not self._reading_paused and not self.closed:
            self._reading_paused = True
            self.transport.pause_reading()

    def resume_response(self) -> None:
        if self._reading_paused:
            self._reading_paused = False
            self._last = self.loop.time()
            if not self.closed:
                self.transport.resume_reading()

    # --- httptools callbacks ---

    # (No on_message_begin or on_status: _headers is emptied once a head is used, and the
    # status line comes from the code.)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        req = self.req
        if req is None or self.client is None:
            raise Stop("a response nobody asked for")
        status = self.parser.get_status_code()
        if status < 200 and status != 101:
            self._interim = True
            if not req.http10:
                self._out.append(self._interim_head(status))
            self._headers = []
            return
        balancer = self.balancer
        if balancer.down:
            balancer.ok(self.addr)
        self._started = True
        req.status = status
        if status == 101:
            if not req.upgrade:
                raise Stop("101 Switching Protocols without an upgrade request")
            self._switching = True
            self._out.append(self._interim_head(101))
            self._headers = []
            return
        self._out.append(self._final_head(req, status))
        self._headers = []
        if req.method == b"HEAD":
            # The parser can't know this answers a HEAD and would wait for the body the
            # head announces; stop it here and give this connection a fresh one.
            self._keep = self.parser.should_keep_alive()
            self._head_only = True
            raise Stop("HEAD")

    def on_body(self, body: bytes) -> None:
        req = self.req
        if req is None:
            return
        req.sent += len(body)
        if self._framing == _CHUNKED:
            self._out += (b"%x\r\n" % len(body), body, b"\r\n")
        else:
            self._out.append(body)

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
        elif not self._switching:
            self._finish(keep=self.parser.should_keep_alive())

    # --- heads ---

    def _scan(self, status: int) -> tuple[list[bytes], bytes | None, bool, bytes]:
        """The status line and the backend's end-to-end headers (not yet ended by a blank
        line), with its Content-Length, whether it was chunked, and its Upgrade value."""
        out = [status_line(status)]
        length: bytes | None = None
        chunked = False
        upgrade = b""
        drop: set[bytes] | None = None
        for name, value in self._headers:
            lname = name.lower()
            kind = _RESPONSE_SPECIAL.get(lname)
            if kind is None:
                if not lname.startswith(b"proxy-"):
                    out += (name, b": ", value, b"\r\n")
            elif kind == _CONTENT_LENGTH:
                length = value
            elif kind == _TRANSFER_ENCODING:
                chunked = True
            elif kind == _CONNECTION:
                tokens = connection_tokens(value)
                if tokens:
                    drop = tokens if drop is None else drop | tokens
            elif kind == _UPGRADE:
                upgrade = value
            elif kind == _HSTS and not (self.req is not None and self.req.hsts):
                out += (name, b": ", value, b"\r\n")
        if drop is not None:  # rare: scan again without the headers Connection named
            drop.add(b"connection")  # and the Connection header itself, or this repeats
            self._headers = [(n, v) for n, v in self._headers if n.lower() not in drop]
            return self._scan(status)
        return out, length, chunked, upgrade

    def _interim_head(self, status: int) -> bytes:
        out, _, _, upgrade = self._scan(status)
        if status == 101:
            out += (b"Connection: upgrade\r\nUpgrade: ", upgrade, b"\r\n")
        out.append(b"\r\n")
        return b"".join(out)

    def _final_head(self, req: R, status: int) -> bytes:
        """Choose how the body reaches the client, and whether the client connection
        stays open after it: a Content-Length passes through; otherwise an HTTP/1.1
        client gets chunks, an HTTP/1.0 client gets the body until the connection closes."""
        out, length, chunked, _ = self._scan(status)
        hsts = req.hsts
        if hsts:
            out.append(hsts)
        body_allowed = req.method != b"HEAD" and status != 204 and status != 304
        if length is not None and not chunked:
            out += (b"Content-Length: ", length, b"\r\n")
            self._framing = _LENGTH if body_allowed else _NONE
        elif not body_allowed:
            self._framing = _NONE
        elif not req.http10:
            out.append(b"Transfer-Encoding: chunked\r\n")
            self._framing = _CHUNKED
        else:
            self._framing = _EOF
        self._until_eof = body_allowed and length is None and not chunked
        keep = (req.keep_alive and self._framing != _EOF and not req.upgrade
                and not self.pool.closing)
        req.close_after = not keep
        if not keep:
            out.append(b"Connection: close\r\n\r\n")
        elif req.http10:
            out.append(b"Connection: keep-alive\r\n\r\n")
        else:
            out.append(b"\r\n")
        return b"".join(out)

    # --- endings ---

    def _flush(self) -> None:
        out = self._out
        client = self.client
        if client is not None and not client.closed:
            if len(out) == 1:
                client.transport.write(out[0])
            elif client.tls:  # each piece would be a TLS record of its own
                client.transport.write(b"".join(out))
            else:
                client.transport.writelines(out)
        out.clear()

    def _start_tunnel(self, rest: bytes) -> None:
        client, req = self.client, self.req
        if client is None or req is None:
            return
        self._tunnel = True
        self._switching = False
        self._flush()
        client.start_tunnel(req)
        if rest and not client.closed:
            client.transport.write(rest)

    def _detach(self) -> None:
        """Leave the client and its request."""
        req, client = self.req, self.client
        if req is not None:
            req.sink = None
        self.req = self.client = None
        if client is not None and self._writing_paused:
            client.set_backend_full(False)
        if self._reading_paused:
            self.resume_response()

    def _finish(self, *, keep: bool) -> None:
        req, client = self.req, self.client
        if req is None or client is None:
            return
        if self._framing == _CHUNKED:
            self._out.append(b"0\r\n\r\n")
        held = client.tls  # a close that follows: one send for the end and close_notify
        if held:
            client.hold_writes(True)
        try:
            self._flush()
            self._detach()
            if keep and req.complete and not req.upgrade:
                self.pool.put(self)
            else:
                self.close()
            client.response_done(req)
        finally:
            if held:
                client.hold_writes(False)

    def _parse_error(self, exc: httptools.HttpParserError) -> None:
        if self._head_only:
            self._head_only = False
            self.parser = httptools.HttpResponseParser(self)
            self._finish(keep=self._keep)
        elif self.req is None:
            self.close()  # bytes after a complete response: never reuse this one
        else:
            if isinstance(exc, httptools.HttpParserCallbackError) and not isinstance(
                exc.__context__, Stop
            ):
                log.error("router bug while parsing a response", exc_info=exc.__context__ or exc)
            self._fail(502, INVALID,
                       f"an instance of app {self.req.route.app} sent an invalid response")

    def _fail(self, status: int, kind: str, message: str) -> None:
        """The exchange failed: an error page if the client has no response head yet,
        else cut the client connection so it knows its response is incomplete."""
        req, client = self.req, self.client
        if self._out:
            self._flush()  # a head already decided goes out, then the cut shows the rest is missing
        started = self._started
        self._detach()
        self.abort()
        if req is None or client is None or client.closed:
            return
        self.balancer.failed(self.addr, kind, req.route, message)
        if started:
            client.abort_response(req)
        else:
            client.respond_error(req, status, message)

    def check(self, now: float, timeout: float) -> None:
        """Called by the proxy's tick: 504 when the backend owes an answer for longer than
        `timeout` (backend_timeout).

        It owes one when it has the whole request, or has stopped reading it, and the
        client is not the one holding things up (not reading the response)."""
        req = self.req
        if req is None or self._tunnel or self._reading_paused:
            return
        if not (self._request_sent or self._writing_paused):
            return
        if now - self._last >= timeout:
            self._fail(504, TIMEOUT, f"app {req.route.app} did not answer within {timeout:g} s")

    def abandon(self) -> None:
        """The client went away: this exchange can't finish, so neither can the connection."""
        tunnel = self._tunnel
        self._detach()
        if tunnel:
            self.close()
        else:
            self.abort()

    def close(self) -> None:
        self.closed = True
        self.transport.close()

    def abort(self) -> None:
        self.closed = True
        self.transport.abort()


class BackendPool:
    """Idle keep-alive connections per backend address, newest first, and the opening of
    new ones. It holds the connections of whichever client side uses it (any Exchange)."""

    def __init__(self, balancer: Balancer, *, max_idle: int, connect_timeout: float) -> None:
        self.balancer = balancer
        self.loop = cast(asyncio.AbstractEventLoop, None)  # set by Proxy.start
        self.max_idle = max_idle
        self.connect_timeout = connect_timeout
        self.addrs: set[str] = set()  # every backend in the table
        self.closing = False  # the router is stopping: no connection is kept any more
        self._idle: dict[str, list[BackendConnection[Any]]] = {}

    def take(self, addr: str) -> BackendConnection[Any] | None:
        conns = self._idle.get(addr)
        while conns:
            conn = conns.pop()
            conn.pooled = False
            if not conn.closed:
                conn.reused = True
                return conn
        return None

    def put(self, conn: BackendConnection[Any]) -> None:
        conns = self._idle.get(conn.addr)
        if conns is None:
            conns = self._idle[conn.addr] = []
        if (conn.closed or self.closing or len(conns) >= self.max_idle
                or conn.addr not in self.addrs):  # an instance no longer routed
            conn.close()
            return
        conn.idle_since = conn.loop.time()
        conn.pooled = True
        conns.append(conn)

    def forget(self, conn: BackendConnection[Any]) -> None:
        conn.pooled = False
        conns = self._idle.get(conn.addr)
        if conns and conn in conns:
            conns.remove(conn)

    def prune(self, now: float) -> None:
        """Close connections idle for longer than IDLE_BACKEND_TTL (the oldest are first)."""
        for addr, conns in list(self._idle.items()):
            stale = 0
            while stale < len(conns) and now - conns[stale].idle_since > IDLE_BACKEND_TTL:
                stale += 1
            for conn in conns[:stale]:
                conn.pooled = False
                conn.close()
            del conns[:stale]
            if not conns:
                del self._idle[addr]

    def retain(self, addrs: set[str]) -> None:
        """`addrs` are the backends in the table from now on. Close the idle connections to
        the others: their instances are about to stop, and a request must not be sent to
        one that is stopping."""
        self.addrs = addrs
        for addr in [a for a in self._idle if a not in addrs]:
            for conn in self._idle.pop(addr):
                conn.pooled = False
                conn.close()

    def idle_count(self) -> int:
        return sum(len(conns) for conns in self._idle.values())

    async def connect(self, addr: str) -> BackendConnection[Any]:
        host, port = split_addr(addr)
        conn: BackendConnection[Any]
        async with asyncio.timeout(self.connect_timeout):
            _, conn = await self.loop.create_connection(
                lambda: BackendConnection(self, addr), host, port
            )
        return conn

    async def connect_first(self, route: Route, start: int, *,
                            fresh: bool) -> tuple[BackendConnection[Any], int]:
        """A connection to the first of the route's backends that accepts one, from `start`
        on, and that backend's index; NoBackend when none does. `fresh`: not a pooled
        connection to the first (one just turned out closed).

        Trying the next is safe: no byte of the request reached a backend that refused
        the connection. Backends that failed lately are skipped, unless all did."""
        balancer = self.balancer
        backends = route.backends
        n = len(backends)
        skip_down = any(not balancer.is_down(a) for a in backends)
        tried = 0
        for k in range(n):
            index = (start + k) % n
            addr = backends[index]
            if k and skip_down and balancer.is_down(addr):
                continue
            conn = None if fresh and not k else self.take(addr)
            if conn is None:
                tried += 1
                try:
                    conn = await self.connect(addr)
                except (OSError, TimeoutError) as exc:
                    why = "timed out" if isinstance(exc, TimeoutError) else str(exc)
                    balancer.failed(addr, CONNECT, route, f"cannot connect: {why}")
                    continue
            return conn, index
        raise NoBackend(tried)

    def close(self) -> None:
        for conns in self._idle.values():
            for conn in conns:
                conn.pooled = False
                conn.close()
        self._idle.clear()
