"""The router's data path: HTTP/1.1 reverse proxying on raw asyncio protocols + httptools.

Why not aiohttp here: every request of every app crosses the router, so bytes go from one
transport to the other inside protocol callbacks, with no task and no queue per chunk; a
task exists only while a new backend connection is being opened.

A ClientConnection answers its requests one at a time and in order: pipelined requests
wait, already parsed, while reading from the client is paused. Each request borrows one
BackendConnection from the BackendPool. The two protocols stream bodies to each other and
pause the other side's reading while their own write buffer is full, so memory per
connection stays bounded whatever the body size.
"""

from __future__ import annotations

import asyncio
import html
import logging
from collections import deque
from http import HTTPStatus
from typing import cast

import httptools

from dinp.routes import RouteTable

log = logging.getLogger("dinp.router")

# Request body held for a request that has no backend yet (connecting, or pipelined).
BUFFER_LIMIT = 256 * 1024
# A request head (request line and headers) larger than this is refused (431).
HEAD_LIMIT = 64 * 1024
# An idle pooled connection older than this is not reused: many servers close theirs sooner.
IDLE_BACKEND_TTL = 30.0
# Requests that may be sent again when a pooled connection turns out to be closed.
IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE"})

# Hop-by-hop headers (RFC 9110 7.6.1) plus the X-Forwarded-* ones the router sets itself.
_REQUEST_DROP = frozenset({
    b"connection", b"keep-alive", b"te", b"trailer",
    b"x-forwarded-proto", b"x-forwarded-host", b"x-forwarded-port",
})
_RESPONSE_DROP = frozenset({b"connection", b"keep-alive", b"te", b"trailer", b"upgrade"})

# Why reading from a client is paused (a bit set: reading resumes when it is empty).
_PIPELINE = 1  # a complete request waits for its response
_BACKEND_FULL = 2  # the backend's write buffer is full
_BUFFER_FULL = 4  # BUFFER_LIMIT reached before a backend was attached
_STOPPED = 8  # the stream cannot be parsed any further

# How a response body is framed towards the client.
_NONE, _LENGTH, _CHUNKED, _EOF = range(4)


class _Stop(Exception):
    """Raised from a parser callback to stop parsing on purpose."""


def error_page(status: int, message: str) -> bytes:
    """A small HTML page whose `<p>` line says, in plain words, what happened."""
    title = f"{status} {HTTPStatus(status).phrase}"
    return (
        f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{title}</title></head>\n'
        f"<body><h1>{title}</h1>\n<p>{html.escape(message)}</p>\n"
        "<hr><p>dinp router</p></body></html>\n"
    ).encode()


def hostname(host: str) -> str:
    """The Host header without its port, as a person would name it."""
    return (host.rsplit(":", 1)[0] if host.count(":") == 1 else host).lower().rstrip(".")


def _host_port(host: bytes) -> bytes:
    if host.startswith(b"["):  # IPv6 literal
        rest = host.partition(b"]")[2]
        return rest[1:] if rest[:1] == b":" and rest[1:].isdigit() else b"80"
    _, sep, port = host.rpartition(b":")
    return port if sep and port.isdigit() else b"80"


def _connection_tokens(headers: list[tuple[bytes, bytes]]) -> set[bytes]:
    """Header names listed in Connection: hop-by-hop too, by the sender's choice."""
    return {
        token.strip().lower()
        for name, value in headers
        if name.lower() == b"connection"
        for token in value.split(b",")
    }


def _split_addr(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    return host.strip("[]"), int(port)


class Request:
    """One client request: its head as sent to the backend, and its body in transit."""

    __slots__ = (
        "app", "backend", "chunked", "close_after", "complete", "done", "has_body", "head",
        "host", "http10", "index", "keep_alive", "method", "order", "pending",
        "pending_size", "sink", "upgrade",
    )

    def __init__(
        self,
        method: bytes,
        url: bytes,
        version: str,
        headers: list[tuple[bytes, bytes]],
        *,
        peer: str,
        keep_alive: bool,
        upgrade: bool,
    ) -> None:
        self.method = method
        self.http10 = version in ("1.0", "0.9")
        self.keep_alive = keep_alive
        self.upgrade = upgrade
        self.complete = False  # the whole request has been parsed
        self.done = False  # its response has been given
        self.close_after = False
        self.pending: list[bytes] = []
        self.pending_size = 0
        self.sink: asyncio.Transport | None = None  # the backend's, once attached
        self.backend: BackendConnection | None = None
        self.app = ""
        self.order: tuple[str, ...] = ()
        self.index = 0
        self.head, self.host, self.chunked, self.has_body = self._forwarded_head(
            url, headers, peer.encode()
        )

    def _forwarded_head(
        self, url: bytes, headers: list[tuple[bytes, bytes]], peer: bytes
    ) -> tuple[bytes, str | None, bool, bool]:
        """The head sent to the backend: HTTP/1.1, hop-by-hop headers removed, the
        X-Forwarded-* headers set. Host and Content-Length always pass through."""
        tokens = _connection_tokens(headers)
        out = [self.method, b" ", url, b" HTTP/1.1\r\n"]
        host: bytes | None = None
        xff: bytes | None = None
        upgrade_to = b""
        chunked = has_body = False
        for name, value in headers:
            lname = name.lower()
            if lname == b"host":
                if host is not None:
                    continue
                host = value
            elif lname == b"content-length":
                has_body = value.strip() != b"0"
            elif lname == b"transfer-encoding":
                chunked = has_body = True
                continue  # re-framed below: the body is decoded and chunked again
            elif lname == b"x-forwarded-for":
                xff = value if xff is None else xff + b", " + value
                continue
            elif lname == b"upgrade":
                upgrade_to = value
                continue
            elif lname in _REQUEST_DROP or lname.startswith(b"proxy-") or lname in tokens:
                continue
            out += (name, b": ", value, b"\r\n")
        if self.upgrade:
            out += (b"Connection: upgrade\r\nUpgrade: ", upgrade_to, b"\r\n")
        if chunked:
            out.append(b"Transfer-Encoding: chunked\r\n")
        out += (b"X-Forwarded-For: ", xff + b", " + peer if xff else peer, b"\r\n")
        out.append(b"X-Forwarded-Proto: http\r\n")
        if host is not None:
            out += (b"X-Forwarded-Host: ", host, b"\r\nX-Forwarded-Port: ", _host_port(host),
                    b"\r\n")
        out.append(b"\r\n")
        return b"".join(out), None if host is None else host.decode("latin-1"), chunked, has_body

    @property
    def retryable(self) -> bool:
        """Safe to send again: no body, and a method that changes nothing."""
        return self.method in IDEMPOTENT and not self.has_body and self.complete


class Proxy:
    """What every connection of one router shares: the table, the pool, the counters."""

    def __init__(
        self,
        *,
        connect_timeout: float,
        backend_timeout: float,
        keepalive_timeout: float,
        max_idle_per_backend: int,
    ) -> None:
        self.table = RouteTable()
        self.connect_timeout = connect_timeout
        self.backend_timeout = backend_timeout
        self.keepalive_timeout = keepalive_timeout
        self.pool = BackendPool(self, max_idle=max_idle_per_backend)
        self.connections: set[ClientConnection] = set()
        self.closing = False
        self._next: dict[str, int] = {}  # app -> index of its next backend
        self._warned: dict[str, float] = {}

    def set_table(self, table: RouteTable) -> None:
        """Swap the snapshot; requests in flight keep the backend they already have."""
        self.table = table
        if self._next:
            apps = set(table.hosts.values())
            self._next = {a: i for a, i in self._next.items() if a in apps}

    def rotation(self, app: str, backends: tuple[str, ...]) -> tuple[str, ...]:
        """The app's backends in the order to try them: round robin, then the others."""
        n = len(backends)
        if n == 1:
            return backends
        i = self._next.get(app, 0) % n
        self._next[app] = i + 1
        return backends[i:] + backends[:i]

    def protocol(self) -> ClientConnection:
        return ClientConnection(self)

    def connection_closed(self, conn: ClientConnection) -> None:
        self.connections.discard(conn)

    def warn(self, key: str, message: str, *args: object) -> None:
        """Log a backend problem at most every few seconds per backend: a dead instance
        under load must not flood the log."""
        now = asyncio.get_running_loop().time()
        if now - self._warned.get(key, -1e9) >= 5.0:
            self._warned[key] = now
            log.warning(message, *args)


class ClientConnection(asyncio.Protocol):
    """One client socket: parses requests, answers them in order, one at a time."""

    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy
        self.loop = asyncio.get_running_loop()
        self.transport = cast(asyncio.Transport, None)
        self.parser = httptools.HttpRequestParser(self)
        self.peer = ""
        self.queue: deque[Request] = deque()  # parsed, not started yet
        self.active: Request | None = None
        self.closed = False
        self._cur: Request | None = None  # the request the parser is in
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._in_head = False
        self._head_size = 0
        self._paused = 0
        self._writing_paused = False
        self._raw = False  # after an upgrade request, the bytes that follow are not HTTP
        self._broken = False  # a parse error after requests that still get their answer
        self._eof = False  # the client sent all it will send
        self._task: asyncio.Task[None] | None = None
        self._idle_since = self.loop.time()
        self._timer: asyncio.TimerHandle | None = None

    # --- asyncio callbacks ---

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self.peer = str(peer[0]) if isinstance(peer, tuple) else "unknown"
        self.proxy.connections.add(self)
        self._timer = self.loop.call_later(self.proxy.keepalive_timeout, self._check_idle)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.proxy.connection_closed(self)
        if self._timer is not None:
            self._timer.cancel()
        if self._task is not None:
            self._task.cancel()
        req = self.active
        if req is not None and req.backend is not None:
            req.backend.abandon()
        self.active = None
        self.queue.clear()

    def data_received(self, data: bytes) -> None:
        if self._raw:
            if self._cur is not None:
                self._feed(self._cur, data)
            return
        if self._in_head:
            # llhttp sets no limit on a head; a client that never ends one gets cut off.
            self._head_size += len(data)
            if self._head_size > HEAD_LIMIT:
                self._parse_failed(None)
                return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self._raw = True
            rest = data[exc.args[0]:]
            if rest and self._cur is not None:
                self._feed(self._cur, rest)
        except httptools.HttpParserError as exc:
            self._parse_failed(exc)
        if self.active is None and self.queue:
            self._start_next()

    def eof_received(self) -> bool:
        """Some clients half-close right after their request: answer what they asked
        (keep the socket open for writing), then close."""
        self._eof = True
        req = self.active
        return (req is not None and req.complete) or bool(self.queue and self.queue[0].complete)

    def pause_writing(self) -> None:
        self._writing_paused = True
        if self.active is not None and self.active.backend is not None:
            self.active.backend.pause_response()

    def resume_writing(self) -> None:
        self._writing_paused = False
        if self.active is not None and self.active.backend is not None:
            self.active.backend.resume_response()

    # --- httptools callbacks ---

    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = []
        self._in_head = True
        self._head_size = 0

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._in_head = False
        p = self.parser
        req = Request(
            p.get_method(), self._url, p.get_http_version(), self._headers,
            peer=self.peer, keep_alive=p.should_keep_alive(), upgrade=p.should_upgrade(),
        )
        self._cur = req
        self.queue.append(req)

    def on_body(self, body: bytes) -> None:
        req = self._cur
        if req is not None:
            self._feed(req, b"%x\r\n%b\r\n" % (len(body), body) if req.chunked else body)

    def on_message_complete(self) -> None:
        req = self._cur
        if req is None:
            return
        if req.chunked:
            self._feed(req, b"0\r\n\r\n")
        req.complete = True
        self._pause(_PIPELINE)
        if req.backend is not None:
            req.backend.request_sent()

    # --- flow control ---

    def _pause(self, reason: int) -> None:
        if not self._paused and not self.closed:
            self.transport.pause_reading()
        self._paused |= reason

    def _unpause(self, reason: int) -> None:
        if self._paused & reason:
            self._paused &= ~reason
            if not self._paused and not self.closed:
                self.transport.resume_reading()

    def _feed(self, req: Request, data: bytes) -> None:
        """Request bytes go straight to the backend, or wait (bounded) until there is one."""
        if req.sink is not None:
            req.sink.write(data)
        elif not req.done:
            req.pending.append(data)
            req.pending_size += len(data)
            if req.pending_size > BUFFER_LIMIT:
                self._pause(_BUFFER_FULL)

    def _check_idle(self) -> None:
        """Close a keep-alive connection idle for keepalive_timeout, and a client that
        takes that long to send a request head."""
        if self.closed:
            return
        left = self.proxy.keepalive_timeout
        if self.active is None:
            left += self._idle_since - self.loop.time()
            if left <= 0:
                self.close()
                return
        self._timer = self.loop.call_later(left, self._check_idle)

    def _parse_failed(self, exc: httptools.HttpParserError | None) -> None:
        """The bytes from the client are not HTTP (None: a head over HEAD_LIMIT)."""
        if isinstance(exc, httptools.HttpParserCallbackError):
            log.error("router bug while parsing a request", exc_info=exc.__context__ or exc)
        self._pause(_STOPPED)
        cur = self._cur
        if cur is not None and not cur.complete:
            if cur is self.active:
                self.close()
                return
            if cur in self.queue:
                self.queue.remove(cur)
        if self.active is None and not self.queue:
            if exc is None:
                self._write_error(431, "the request head is larger than "
                                  f"{HEAD_LIMIT // 1024} KB", keep=False)
            else:
                self._write_error(400, "the request is not valid HTTP/1.1", keep=False)
            self.close()
        else:
            self._broken = True

    # --- answering ---

    def _start_next(self) -> None:
        if self.active is not None or not self.queue or self.closed:
            return
        req = self.active = self.queue.popleft()
        if not req.complete:
            self._unpause(_PIPELINE)
        if req.host is None:
            return self.respond_error(req, 400, "the request has no Host header")
        if req.method == b"CONNECT":
            return self.respond_error(req, 405, "this router does not tunnel CONNECT")
        app, backends = self.proxy.table.resolve(req.host)
        if app is None:
            return self.respond_error(req, 404, f"no app is served at {hostname(req.host)}")
        if not backends:
            return self.respond_error(req, 503, f"app {app} has no healthy instance right now")
        req.app = app
        req.order = self.proxy.rotation(app, backends)
        conn = self.proxy.pool.take(req.order[0])
        if conn is not None:
            self.attach(req, conn, 0)
        else:
            self._task = self.loop.create_task(self._connect(req, 0, fresh=False))

    async def _connect(self, req: Request, start: int, *, fresh: bool) -> None:
        """Open a connection to the first backend that accepts one. Trying the next is
        safe: no byte of the request reached a backend that refused the connection."""
        pool = self.proxy.pool
        for index in range(start, len(req.order)):
            addr = req.order[index]
            conn = None if fresh and index == start else pool.take(addr)
            if conn is None:
                try:
                    conn = await pool.connect(addr)
                except (OSError, TimeoutError) as exc:
                    why = "timed out" if isinstance(exc, TimeoutError) else str(exc)
                    self.proxy.warn(addr, "app %s: cannot connect to %s: %s", req.app, addr, why)
                    continue
            self._task = None
            if self.closed or req.done:
                pool.put(conn)
            else:
                self.attach(req, conn, index)
            return
        self._task = None
        tried = len(req.order) - start
        self.respond_error(
            req, 502,
            f"no instance of app {req.app} accepted a connection "
            f"({tried} tried)",
        )

    def attach(self, req: Request, conn: BackendConnection, index: int) -> None:
        """Send the request head, and what body has arrived, to `conn`."""
        req.index = index
        req.backend = conn
        conn.begin(self, req)
        if req.pending:
            conn.transport.write(b"".join([req.head, *req.pending]))
            req.pending.clear()
            req.pending_size = 0
        else:
            conn.transport.write(req.head)
        req.sink = conn.transport
        self._unpause(_BUFFER_FULL)
        if req.complete:
            conn.request_sent()
        if self._writing_paused:
            conn.pause_response()

    def retry(self, req: Request) -> None:
        """A pooled connection was closed by the backend before it read this request:
        connect afresh to the same backend (then the others)."""
        req.backend = req.sink = None
        self._task = self.loop.create_task(self._connect(req, req.index, fresh=True))

    def start_tunnel(self) -> None:
        """The backend accepted the upgrade: from now on bytes flow raw both ways."""
        self._unpause(_PIPELINE)

    def respond_error(self, req: Request, status: int, message: str) -> None:
        req.done = True
        req.sink = None
        keep = req.keep_alive and req.complete and not self._raw and not self.proxy.closing
        self._write_error(status, message, keep=keep, http10=req.http10,
                          head_only=req.method == b"HEAD")
        req.close_after = not keep
        self.response_done(req)

    def _write_error(
        self, status: int, message: str, *, keep: bool, http10: bool = False,
        head_only: bool = False,
    ) -> None:
        if self.closed:
            return
        body = error_page(status, message)
        connection = b"" if keep and not http10 else (
            b"Connection: keep-alive\r\n" if keep else b"Connection: close\r\n")
        self.transport.write(
            # X-Dinp-Error tells clients (and `--wait`) the router answered, not the app.
            b"HTTP/1.1 %d %s\r\nContent-Type: text/html; charset=utf-8\r\n"
            b"Content-Length: %d\r\nCache-Control: no-store\r\nX-Dinp-Error: %d\r\n"
            b"%b\r\n%b"
            % (status, HTTPStatus(status).phrase.encode(), len(body), status, connection,
               b"" if head_only else body)
        )

    def response_done(self, req: Request) -> None:
        """The response to the active request is complete: on to the next one, or close."""
        req.done = True
        req.sink = None
        req.backend = None
        self.active = None
        self._unpause(_BACKEND_FULL)
        if self.closed:
            return
        no_more = self._broken or self._eof  # only what is parsed already gets answered
        if (
            req.close_after or not req.complete or self._raw or self.proxy.closing
            or (no_more and not (self.queue and self.queue[0].complete))
        ):
            self.close()
            return
        self._idle_since = self.loop.time()
        if self.queue:
            # Not from inside the backend's parser callback that got us here.
            self.loop.call_soon(self._start_next)
        else:
            self._unpause(_PIPELINE)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.transport.close()

    def abort(self) -> None:
        """Cut the connection: the client must see that a started response is incomplete."""
        self.closed = True
        self.transport.abort()

    def close_if_idle(self) -> None:
        if self.active is None and not self.queue:
            self.close()


class BackendConnection(asyncio.Protocol):
    """One connection to an app instance; carries one exchange at a time."""

    def __init__(self, proxy: Proxy, addr: str) -> None:
        self.proxy = proxy
        self.addr = addr
        self.loop = asyncio.get_running_loop()
        self.transport = cast(asyncio.Transport, None)
        self.parser = httptools.HttpResponseParser(self)
        self.client: ClientConnection | None = None
        self.req: Request | None = None
        self.closed = False
        self.reused = False
        self.idle_since = 0.0
        self._reading_paused = False
        self._writing_paused = False
        self._request_sent = False
        self._last = 0.0  # when the backend last did something, or we began to wait on it
        self._timer: asyncio.TimerHandle | None = None
        self._reset()

    def _reset(self) -> None:
        self._reason = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._got_bytes = False  # any byte of a response
        self._started = False  # a response head went to the client
        self._framing = _NONE
        self._until_eof = False  # the response body ends when the backend closes
        self._interim = False  # parsing a 1xx response
        self._switching = False  # a 101 went to the client; raw bytes follow
        self._tunnel = False
        self._head_only = False  # answering HEAD: the body the head announces never comes
        self._keep = False

    def begin(self, client: ClientConnection, req: Request) -> None:
        self.client, self.req = client, req
        self._reset()
        self._request_sent = False
        self._last = self.loop.time()
        self._timer = self.loop.call_later(self.proxy.backend_timeout, self._check_timeout)

    def request_sent(self) -> None:
        """The whole request is with the backend: from now on, waiting is its fault."""
        self._request_sent = True
        self._last = self.loop.time()

    # --- asyncio callbacks ---

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.proxy.pool.forget(self)
        req, client = self.req, self.client
        if req is None or client is None:
            return
        if self._tunnel:
            self._end()
            client.close()
        elif self._started and self._until_eof and not self._interim and exc is None:
            self._finish(keep=False)
        elif not self._got_bytes and self.reused and req.retryable and not client.closed:
            self._end()
            client.retry(req)
        else:
            self._fail(502, f"an instance of app {req.app} closed the connection "
                            "before answering")

    def data_received(self, data: bytes) -> None:
        if self._tunnel:
            if self.client is not None and not self.client.closed:
                self.client.transport.write(data)
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
                self._fail(502, f"an instance of app {self.req.app} sent an invalid upgrade")
        except httptools.HttpParserError as exc:
            if self._head_only:
                self._head_only = False
                self.parser = httptools.HttpResponseParser(self)
                self._finish(keep=self._keep)
            elif self.req is None:
                self.close()  # bytes after a complete response: never reuse this one
            else:
                if isinstance(exc, httptools.HttpParserCallbackError) and not isinstance(
                    exc.__context__, _Stop
                ):
                    log.error("router bug while parsing a response",
                              exc_info=exc.__context__ or exc)
                self._fail(502, f"an instance of app {self.req.app} sent an invalid response")

    def eof_received(self) -> bool:
        return False

    def pause_writing(self) -> None:
        self._writing_paused = True
        self._last = self.loop.time()
        if self.client is not None:
            self.client._pause(_BACKEND_FULL)

    def resume_writing(self) -> None:
        self._writing_paused = False
        self._last = self.loop.time()
        if self.client is not None:
            self.client._unpause(_BACKEND_FULL)

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

    def on_message_begin(self) -> None:
        self._reason = b""
        self._headers = []

    def on_status(self, status: bytes) -> None:
        self._reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        req, client = self.req, self.client
        if req is None or client is None:
            raise _Stop("a response nobody asked for")
        status = self.parser.get_status_code()
        if status < 200 and status != 101:
            self._interim = True
            if not req.http10 and not client.closed:
                client.transport.write(self._head(status, b""))
            return
        self._started = True
        if status == 101:
            if not req.upgrade:
                raise _Stop("101 Switching Protocols without an upgrade request")
            self._switching = True
            upgrade = next((v for n, v in self._headers if n.lower() == b"upgrade"), b"")
            if not client.closed:
                client.transport.write(
                    self._head(101, b"Connection: upgrade\r\nUpgrade: " + upgrade + b"\r\n"))
            return
        head = self._final_head(req, status)
        if not client.closed:
            client.transport.write(head)
        if req.method == b"HEAD":
            # The parser can't know this answers a HEAD and would wait for the body the
            # head announces; stop it here and give this connection a fresh one.
            self._keep = self.parser.should_keep_alive()
            self._head_only = True
            raise _Stop("HEAD")

    def on_body(self, body: bytes) -> None:
        client = self.client
        if client is None or client.closed:
            return
        if self._framing == _CHUNKED:
            client.transport.writelines((b"%x\r\n" % len(body), body, b"\r\n"))
        else:
            client.transport.write(body)

    def on_message_complete(self) -> None:
        if self._interim:
            self._reset()
            self._got_bytes = True
        elif not self._switching:
            self._finish(keep=self.parser.should_keep_alive())

    # --- heads ---

    def _head(self, status: int, extra: bytes) -> bytes:
        """A response head with the backend's end-to-end headers, and `extra`."""
        tokens = _connection_tokens(self._headers)
        out = [b"HTTP/1.1 %d " % status, self._reason, b"\r\n"]
        for name, value in self._headers:
            lname = name.lower()
            if not (lname in _RESPONSE_DROP or lname in tokens or lname.startswith(b"proxy-")
                    or lname == b"transfer-encoding"):
                out += (name, b": ", value, b"\r\n")
        out += (extra, b"\r\n")
        return b"".join(out)

    def _final_head(self, req: Request, status: int) -> bytes:
        """Choose how the body reaches the client, and whether the client connection
        stays open after it: a Content-Length passes through; otherwise an HTTP/1.1
        client gets chunks, an HTTP/1.0 client gets the body until the connection closes."""
        length: bytes | None = None
        chunked = False
        for name, value in self._headers:
            lname = name.lower()
            if lname == b"content-length":
                length = value
            elif lname == b"transfer-encoding":
                chunked = True
        self._headers = [(n, v) for n, v in self._headers if n.lower() != b"content-length"]
        extra = []
        body_allowed = req.method != b"HEAD" and status not in (204, 304)
        if length is not None and not chunked:
            extra.append(b"Content-Length: " + length + b"\r\n")
            self._framing = _LENGTH if body_allowed else _NONE
        elif not body_allowed:
            self._framing = _NONE
        elif not req.http10:
            extra.append(b"Transfer-Encoding: chunked\r\n")
            self._framing = _CHUNKED
        else:
            self._framing = _EOF
        self._until_eof = body_allowed and length is None and not chunked
        keep = (req.keep_alive and self._framing != _EOF and not req.upgrade
                and not self.proxy.closing)
        req.close_after = not keep
        if not keep:
            extra.append(b"Connection: close\r\n")
        elif req.http10:
            extra.append(b"Connection: keep-alive\r\n")
        return self._head(status, b"".join(extra))

    # --- endings ---

    def _start_tunnel(self, rest: bytes) -> None:
        client = self.client
        if client is None:
            return
        self._tunnel = True
        self._switching = False
        if self._timer is not None:  # a tunnel may idle for as long as its ends like
            self._timer.cancel()
            self._timer = None
        client.start_tunnel()
        if rest and not client.closed:
            client.transport.write(rest)

    def _end(self) -> None:
        """Detach from the client and its request."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.req is not None:
            self.req.sink = None
        if self.client is not None:
            self.client._unpause(_BACKEND_FULL)
        self.req = self.client = None
        if self._reading_paused:
            self.resume_response()

    def _finish(self, *, keep: bool) -> None:
        req, client = self.req, self.client
        if req is None or client is None:
            return
        if self._framing == _CHUNKED and not client.closed:
            client.transport.write(b"0\r\n\r\n")
        self._end()
        if keep and req.complete and not req.upgrade:
            self.proxy.pool.put(self)
        else:
            self.close()
        client.response_done(req)

    def _fail(self, status: int, message: str) -> None:
        """The exchange failed: an error page if the client has no response head yet,
        else cut the client connection so it knows its response is incomplete."""
        req, client = self.req, self.client
        self._end()
        self.abort()
        if req is None or client is None or client.closed:
            return
        self.proxy.warn(self.addr, "%d: %s (instance %s)", status, message, self.addr)
        if self._started:
            client.abort()
        else:
            client.respond_error(req, status, message)

    def _check_timeout(self) -> None:
        self._timer = None
        req = self.req
        if req is None or self._tunnel:
            return
        timeout = self.proxy.backend_timeout
        # Waiting on the backend: it has the whole request or stopped reading it, and
        # the client is not the one holding things up.
        if not self._reading_paused and (self._request_sent or self._writing_paused):
            left = self._last + timeout - self.loop.time()
            if left <= 0:
                self._fail(504, f"app {req.app} did not answer within {timeout:g} s")
                return
        else:
            left = timeout
        self._timer = self.loop.call_later(left, self._check_timeout)

    def abandon(self) -> None:
        """The client went away: this exchange can't finish, so neither can the connection."""
        tunnel = self._tunnel
        self._end()
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
    """Idle keep-alive connections per backend address, newest first, a few per address."""

    def __init__(self, proxy: Proxy, *, max_idle: int) -> None:
        self.proxy = proxy
        self.max_idle = max_idle
        self._idle: dict[str, list[BackendConnection]] = {}

    def take(self, addr: str) -> BackendConnection | None:
        conns = self._idle.get(addr)
        now = asyncio.get_running_loop().time()
        while conns:
            conn = conns.pop()
            if conn.closed:
                continue
            if now - conn.idle_since > IDLE_BACKEND_TTL:
                conn.close()
                continue
            conn.reused = True
            return conn
        return None

    def put(self, conn: BackendConnection) -> None:
        conns = self._idle.setdefault(conn.addr, [])
        if conn.closed or self.proxy.closing or len(conns) >= self.max_idle:
            conn.close()
            return
        conn.idle_since = asyncio.get_running_loop().time()
        conns.append(conn)

    def idle_count(self) -> int:
        return sum(len(conns) for conns in self._idle.values())

    def forget(self, conn: BackendConnection) -> None:
        conns = self._idle.get(conn.addr)
        if conns and conn in conns:
            conns.remove(conn)

    async def connect(self, addr: str) -> BackendConnection:
        host, port = _split_addr(addr)
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(self.proxy.connect_timeout):
            _, conn = await loop.create_connection(
                lambda: BackendConnection(self.proxy, addr), host, port
            )
        return conn

    def close(self) -> None:
        for conns in self._idle.values():
            for conn in conns:
                conn.close()
        self._idle.clear()
