"""The router's side towards clients: connections, request parsing, pipelining, error pages.

Why not aiohttp here: every request of every app crosses the router, so bytes go from one
transport to the other inside protocol callbacks. In the steady state (a keep-alive client,
a pooled backend connection) a request makes no task, no future and no timer: it is parsed,
its head rewritten (mostly from pre-encoded pieces: the X-Forwarded-* lines are computed
once per connection and per Host), written to the backend in one call, and its response
goes back in one `writelines` per read (backends.py). Timeouts are checked by one tick
per worker over all connections (proxy.py), and metrics are a dict update and a bisect
(metrics.py). A task exists only while a new backend connection is being opened.

A ClientConnection answers its requests one at a time and in order: pipelined requests
wait, already parsed, and reading from the client pauses when too many wait or their
bodies fill BUFFER_LIMIT. Each request borrows one BackendConnection from the pool. The two
protocols pause each other's reading while their own write buffer is full, so memory per
connection stays bounded whatever the body size.
"""

from __future__ import annotations

import asyncio
import html
import logging
import time
from collections import deque
from http import HTTPStatus
from typing import cast

import httptools

from dinp.router.backends import BackendConnection, NoBackend
from dinp.router.http1 import Stop, connection_tokens
from dinp.router.proxy import Proxy
from dinp.router.tls_stream import TlsStream

log = logging.getLogger("dinp.router")

# Request body held for a request that has no backend yet (connecting, or pipelined).
BUFFER_LIMIT = 256 * 1024
# Parsed requests waiting behind the one being answered before reading pauses.
PIPELINE_LIMIT = 16
# How long a connection closed after an error keeps reading what the client still sends,
# so that closing it does not reset the connection before the client reads the answer.
LINGER = 2.0
# Requests that may be sent again when a pooled connection turns out to be closed.
IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE"})

_clock = time.perf_counter

# Request headers the router handles itself; any other passes through as it came.
(_DROP, _HOST, _CONTENT_LENGTH, _TRANSFER_ENCODING, _CONNECTION, _XFF, _XFP, _UPGRADE,
 _REQUEST_ID, _REFERER, _USER_AGENT) = range(11)
_REQUEST_SPECIAL = {
    b"host": _HOST, b"content-length": _CONTENT_LENGTH,
    b"transfer-encoding": _TRANSFER_ENCODING, b"connection": _CONNECTION,
    b"upgrade": _UPGRADE, b"x-request-id": _REQUEST_ID,
    # Hop-by-hop (RFC 9110 7.6.1), and the X-Forwarded-* headers the router sets itself:
    # from a client that is not a trusted proxy, its X-Forwarded-For and -Proto are
    # replaced too.
    b"keep-alive": _DROP, b"te": _DROP, b"trailer": _DROP, b"proxy-connection": _DROP,
    b"x-forwarded-for": _DROP, b"x-forwarded-proto": _DROP, b"x-forwarded-host": _DROP,
    b"x-forwarded-port": _DROP,
}
# From a trusted proxy: its X-Forwarded-For is appended to, its X-Forwarded-Proto kept.
_REQUEST_SPECIAL_TRUSTED = {**_REQUEST_SPECIAL, b"x-forwarded-for": _XFF,
                            b"x-forwarded-proto": _XFP}
# With an access log, two more are noted on the way (and still passed on).
_LOGGED = {b"referer": _REFERER, b"user-agent": _USER_AGENT}
# The table a connection uses, by (trusted, logged).
_SPECIAL = {
    (False, False): _REQUEST_SPECIAL, (True, False): _REQUEST_SPECIAL_TRUSTED,
    (False, True): {**_REQUEST_SPECIAL, **_LOGGED},
    (True, True): {**_REQUEST_SPECIAL_TRUSTED, **_LOGGED},
}
# Where the router answers ACME HTTP-01 challenges itself, for any Host, on plain HTTP.
ACME_PATH = b"/.well-known/acme-challenge/"
# A closed connection's parser (one that calls back nothing).
_SPENT_PARSER = httptools.HttpRequestParser(object())

# Why reading from a client is paused (a bit set: reading resumes when it is empty).
_PIPELINE = 1  # PIPELINE_LIMIT requests wait for their responses
_BACKEND_FULL = 2  # the backend's write buffer is full
_BUFFER_FULL = 4  # BUFFER_LIMIT reached before a backend was attached
_STOPPED = 8  # the stream cannot be parsed any further


# What a 503 asks clients to wait before trying again.
RETRY_AFTER_SECONDS = 1


def error_page(status: int, message: str) -> bytes:
    """A small HTML page whose `<p>` line says, in plain words, what happened."""
    title = f"{status} {HTTPStatus(status).phrase}"
    return (
        f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{title}</title></head>\n'
        f"<body><h1>{title}</h1>\n<p>{html.escape(message)}</p>\n"
        "<hr><p>dinp router</p></body></html>\n"
    ).encode()


class Request:
    """One client request: its head as sent to the backend, and its body in transit.

    What a backend connection reads and sets of it is backends.Exchange."""

    __slots__ = (
        "agent", "backend", "chunked", "close_after", "complete", "done", "error",
        "has_body", "head", "host", "hsts", "http10", "index", "keep_alive", "method",
        "pending", "pending_size", "referer", "request_id", "retryable", "route", "secure",
        "sent", "sink", "start", "status", "tries", "upgrade", "url",
    )
    error: str | None  # why it is a bad request (400)
    referer: bytes | None  # noted only with an access log
    agent: bytes | None

    def __init__(self, conn: ClientConnection, url: bytes,
                 headers: list[tuple[bytes, bytes]]) -> None:
        parser = conn.parser
        self.start = _clock()
        self.method = method = parser.get_method()
        self.url = url
        self.http10 = parser.get_http_version() != "1.1"
        self.keep_alive = parser.should_keep_alive()
        self.upgrade = upgrade = parser.should_upgrade()
        self.complete = False  # the whole request has been parsed
        self.done = False  # its response has been given
        self.close_after = False
        self.pending: list[bytes] | None = None  # body waiting for a backend
        self.pending_size = 0
        self.sink: asyncio.Transport | None = None  # the backend's, once attached
        self.backend: BackendConnection[Request] | None = None
        self.index = 0  # of the backend in route.backends
        self.tries = 0
        self.status = 0
        self.sent = 0  # response body bytes
        self._read_head(conn, method, url, upgrade, headers)

    def _read_head(self, conn: ClientConnection, method: bytes, url: bytes, upgrade: bool,
                   headers: list[tuple[bytes, bytes]]) -> None:
        """The headers the router handles, and the head for the backend: HTTP/1.1,
        hop-by-hop headers removed, X-Forwarded-* and X-Request-Id set. Host and
        Content-Length pass through."""
        self.error = self.referer = self.agent = None
        special = conn.special
        out = [method, b" ", url, b" HTTP/1.1\r\n"]
        host: bytes | None = None
        xff: bytes | None = None
        xfp: bytes | None = None
        request_id: bytes | None = None
        upgrade_to = b""
        chunked = has_body = False
        drop: set[bytes] | None = None
        for name, value in headers:
            lname = name.lower()
            kind = special.get(lname)
            if kind is None:
                if not lname.startswith(b"proxy-"):
                    out += (name, b": ", value, b"\r\n")
                continue
            if kind == _HOST:
                if host is not None:
                    self.error = "the request has more than one Host header"
                host = value
            elif kind == _CONTENT_LENGTH:
                has_body = value.strip() != b"0"
            elif kind == _TRANSFER_ENCODING:
                chunked = has_body = True
                continue  # re-framed below: the body is decoded and chunked again
            elif kind == _CONNECTION:
                tokens = connection_tokens(value)
                if tokens:
                    drop = tokens if drop is None else drop | tokens
                continue
            elif kind == _XFF:
                xff = value if xff is None else xff + b", " + value
                continue
            elif kind == _XFP:
                xfp = value if xfp is None else xfp
                continue
            elif kind == _UPGRADE:
                upgrade_to = value
                continue
            elif kind == _REQUEST_ID:
                request_id = value
            elif kind == _REFERER:
                self.referer = value
            elif kind == _USER_AGENT:
                self.agent = value
            else:  # _DROP
                continue
            out += (name, b": ", value, b"\r\n")
        if drop is not None:  # rare: the headers the client's Connection header names go
            drop.add(b"connection")  # and the Connection header itself, or this repeats
            self._read_head(conn, method, url, upgrade,
                            [(n, v) for n, v in headers if n.lower() not in drop])
            return
        proxy = conn.proxy
        self.host = host
        self.route = route = proxy.route(host)
        self.chunked = chunked
        self.has_body = has_body
        self.retryable = method in IDEMPOTENT and not has_body
        if upgrade:
            out += (b"Connection: upgrade\r\nUpgrade: ", upgrade_to, b"\r\n")
        if chunked:
            out.append(b"Transfer-Encoding: chunked\r\n")
        secure = conn.tls
        if xff is None and xfp is None:
            out.append(conn.forwarded)  # X-Forwarded-For and -Proto
        else:  # what a trusted proxy says
            if xff is not None:
                out += (b"X-Forwarded-For: ", xff, b", ", conn.peer, b"\r\n")
            else:
                out += (b"X-Forwarded-For: ", conn.peer, b"\r\n")
            if xfp is not None:
                out += (b"X-Forwarded-Proto: ", xfp, b"\r\n")
                secure = xfp.partition(b",")[0].strip().lower() == b"https"
            else:
                out += (b"X-Forwarded-Proto: ", conn.scheme, b"\r\n")
        self.secure = secure  # the client's side of it is TLS
        self.hsts = route.hsts if secure else b""
        out.append(route.forwarded_tls if secure else route.forwarded)
        if request_id is None:
            request_id = proxy.request_id()
            out += (b"X-Request-Id: ", request_id, b"\r\n\r\n")
        else:
            out.append(b"\r\n")
        self.request_id = request_id
        self.head = b"".join(out)


class ClientConnection(asyncio.Protocol):
    """One client socket: parses requests, answers them in order, one at a time.

    `peer`: the client's address when a PROXY header gave it (else the socket's peer)."""

    tls = False  # TlsClientConnection: the client connected over TLS
    scheme = b"http"

    def __init__(self, proxy: Proxy, *, peer: str | None = None) -> None:
        self.proxy = proxy
        self.loop = proxy.loop
        self.transport = cast(asyncio.Transport, None)
        self.parser = httptools.HttpRequestParser(self)
        self.peer = b"unknown" if peer is None else peer.encode()
        self._given_peer = peer is not None
        self.forwarded = b""  # the X-Forwarded-For and -Proto lines for this client
        # The request headers the router handles (Referer and User-Agent when it logs).
        self.special = _REQUEST_SPECIAL
        self.queue: deque[Request] = deque()  # parsed, not started yet
        self.active: Request | None = None
        self.closed = False
        self._cur: Request | None = None  # the request the parser is in
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._in_head = False
        self._head_size = 0  # bytes of a head received in earlier reads
        self._chunk = 0  # bytes of the read being parsed
        self._refusal: tuple[int, str] | None = None  # why parsing stopped on purpose
        self._paused = 0
        self._writing_paused = False
        self._raw = False  # after an upgrade request, the bytes that follow are not HTTP
        self._broken = False  # a parse error after requests that still get their answer
        self._eof = False  # the client sent all it will send
        self._lingering = False
        self._answered = 0
        self._task: asyncio.Task[None] | None = None
        now = self.loop.time()
        self._last_read = now
        self._idle_since = now
        self._head_began = now
        self._write_paused_at = now

    # --- asyncio callbacks ---

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        proxy = self.proxy
        if not self._given_peer:
            peer = transport.get_extra_info("peername")
            if isinstance(peer, tuple):
                self.peer = str(peer[0]).encode()
        trusted = proxy.trusted(self.peer.decode())
        self.special = _SPECIAL[trusted, proxy.access_log is not None]
        self.forwarded = (b"X-Forwarded-For: " + self.peer + b"\r\nX-Forwarded-Proto: "
                          + self.scheme + b"\r\n")
        proxy.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.proxy.connections.discard(self)
        if self._task is not None:
            self._task.cancel()
            self._task = None
        req = self.active
        if req is not None:
            backend = req.backend
            if backend is not None:
                backend.abandon()
            if not req.done:
                req.done = True
                req.status = 499  # as nginx logs it: the client closed the request
                self._record(req, backend.addr if backend else "")
        self.active = self._cur = None
        self.queue.clear()
        # The parser holds this protocol's callbacks: without this cycle the connection
        # is freed when its last reference goes, not by the collector in a batch.
        self.parser = _SPENT_PARSER

    def data_received(self, data: bytes) -> None:
        self._last_read = self.loop.time()
        if self._raw:
            if self._cur is not None:
                self._feed(self._cur, data)
            return
        if self._lingering:
            return
        self._chunk = len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self._raw = True
            rest = data[exc.args[0]:]
            if rest and self._cur is not None:
                self._feed(self._cur, rest)
        except httptools.HttpParserError as exc:
            self._parse_failed(exc)
        if self._in_head:
            # llhttp sets no limit on a head; one that grows past the limit is refused
            # without waiting for its end.
            self._head_size += len(data)
            if self._head_size > self.proxy.config.max_header_size:
                self._refuse(431, "the request head is larger than "
                                  f"{self.proxy.config.max_header_size // 1024} KB")
                return
        if self.active is None and self.queue:
            self._start_next()

    def eof_received(self) -> bool:
        """Some clients half-close right after their request: answer what they asked
        (keep the socket open for writing), then close."""
        self._eof = True
        req = self.active
        if self._raw and req is not None and req.backend is not None:
            transport = req.backend.transport
            if transport.can_write_eof():
                transport.write_eof()  # a tunnel passes the half-close on
            return True
        return (req is not None and req.complete) or bool(self.queue and self.queue[0].complete)

    def pause_writing(self) -> None:
        self._writing_paused = True
        self._write_paused_at = self.loop.time()
        if self.active is not None and self.active.backend is not None:
            self.active.backend.pause_response()

    def resume_writing(self) -> None:
        self._writing_paused = False
        if self.active is not None and self.active.backend is not None:
            self.active.backend.resume_response()

    # --- httptools callbacks ---

    # (No on_message_begin: on_url comes first in every request, and one callback less
    # per request is worth it.)

    def on_url(self, url: bytes) -> None:
        if self._in_head:  # the URL came in pieces
            url = self._url + url
        else:  # a new request
            self._headers = []
            self._in_head = True
            self._head_size = 0
            self._head_began = self._last_read
        self._url = url
        if len(url) > self.proxy.config.max_request_line:
            self._refusal = (414, "the request's URL is longer than "
                                  f"{self.proxy.config.max_request_line} bytes")
            raise Stop("URL too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._in_head = False
        limit = self.proxy.config.max_header_size
        if self._head_size + self._chunk > limit:  # else it is surely within the limit
            size = len(self._url) + sum(len(n) + len(v) + 4 for n, v in self._headers)
            if size > limit:
                self._refusal = (431, f"the request head is larger than {limit // 1024} KB")
                raise Stop("head too large")
        req = self._cur = Request(self, self._url, self._headers)
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
        if req.backend is not None:
            req.backend.request_sent()
        elif len(self.queue) > PIPELINE_LIMIT:
            self._pause(_PIPELINE)

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

    def set_backend_full(self, full: bool) -> None:
        """The backend's write buffer is full (or no longer): stop (resume) reading."""
        if full:
            self._pause(_BACKEND_FULL)
        else:
            self._unpause(_BACKEND_FULL)

    def _feed(self, req: Request, data: bytes) -> None:
        """Request bytes go straight to the backend, or wait (bounded) until there is one."""
        sink = req.sink
        if sink is not None:
            sink.write(data)
        elif not req.done:
            if req.pending is None:
                req.pending = [data]
            else:
                req.pending.append(data)
            req.pending_size += len(data)
            if req.pending_size > BUFFER_LIMIT:
                self._pause(_BUFFER_FULL)

    # --- timeouts (from the proxy's tick) ---

    def check(self, now: float) -> None:
        if self.closed:
            return
        config = self.proxy.config
        req = self.active
        if self._lingering:
            if now - self._idle_since >= LINGER:
                self.transport.close()
        elif req is None:
            if self.queue or self._task is not None:
                return
            if self._in_head or not self._answered:
                # A head must arrive whole within header_timeout of its first byte (or of
                # the connection, for the first one): a client that trickles it is cut.
                if now - self._head_began >= config.header_timeout:
                    if self._in_head:
                        self._refuse(408, "the request head did not arrive within "
                                          f"{config.header_timeout:g} s")
                    else:
                        self.close()
            elif now - self._idle_since >= config.client_timeout:
                self.close()  # an idle keep-alive connection
        elif self._raw and req.done:
            pass  # a tunnel idles as long as its ends like
        else:
            if req.backend is not None:
                req.backend.check(now, config.backend_timeout)
                if self.closed or req.done:
                    return
            if self._writing_paused and now - self._write_paused_at >= config.client_timeout:
                self.abort()  # the client stopped reading its response
            elif (not req.complete and not self._paused
                  and now - self._last_read >= config.client_timeout):
                # The client stopped sending its body.
                if req.status:
                    self.abort()
                else:
                    self._fail_active(408, "the request body stopped arriving for "
                                           f"{config.client_timeout:g} s")

    def _fail_active(self, status: int, message: str) -> None:
        req = self.active
        if req is None:
            return
        if req.backend is not None:
            req.backend.abandon()
            req.backend = None
        self.respond_error(req, status, message)

    # --- refusing bad input ---

    def _parse_failed(self, exc: httptools.HttpParserError) -> None:
        """The bytes from the client are not HTTP, or a callback stopped the parser."""
        if self._refusal is not None:
            self._refuse(*self._refusal)
            return
        if isinstance(exc, httptools.HttpParserCallbackError) and not isinstance(
            exc.__context__, Stop
        ):
            log.error("router bug while parsing a request", exc_info=exc.__context__ or exc)
        self._refuse(400, "the request is not valid HTTP/1.1")

    def _refuse(self, status: int, message: str) -> None:
        """Stop reading requests: answer those already parsed, or `status` if none."""
        self._pause(_STOPPED)
        self._in_head = False
        cur = self._cur
        if cur is not None and not cur.complete:
            if cur is self.active:
                # The body of the request being answered is broken: the response can't
                # be trusted to end where the client expects.
                if cur.status:
                    self.abort()
                else:
                    self._broken = True
                    self._fail_active(status, message)
                return
            if cur in self.queue:
                self.queue.remove(cur)
        if self.active is None and not self.queue:
            self._write_error(status, message, keep=False)
            self.proxy.metrics.no_app.record(status, 0.0)
            self._linger()
        else:
            self._broken = True

    # --- answering ---

    def _start_next(self) -> None:
        if self.active is not None or not self.queue or self.closed:
            return
        req = self.active = self.queue.popleft()
        if not self.queue:
            self._unpause(_PIPELINE)
        route = req.route
        if (not route.backends or req.error is not None or req.method == b"CONNECT"
                or (route.redirect is not None and not req.secure)
                or (not self.tls and req.url.startswith(ACME_PATH))):
            self._answer(req)
            return
        proxy = self.proxy
        index = proxy.balancer.pick(route)
        conn = proxy.pool.take(route.backends[index])
        if conn is not None:
            self.attach(req, conn, index)
        else:
            self._task = self.loop.create_task(self._connect(req, index, fresh=False))

    def _answer(self, req: Request) -> None:
        """Answer a request the router answers itself: an error, an ACME challenge, a
        redirect to HTTPS."""
        if req.error is None and req.host is not None and req.method != b"CONNECT":
            if not self.tls and req.url.startswith(ACME_PATH):
                self._answer_challenge(req)
                return
            route = req.route
            if route.redirect is not None and not req.secure:
                path = req.url
                if not path.startswith(b"/"):  # absolute-form (or `*`): its path only
                    _, sep, rest = path.partition(b"://")
                    path = b"/" + rest.partition(b"/")[2] if sep else b"/"
                self._respond(req, 308, b"", b"Location: " + route.redirect + path + b"\r\n")
                return
        self.respond_error(req, *self._refusal_of(req))

    def _answer_challenge(self, req: Request) -> None:
        """ACME HTTP-01: the key authorization for the token, as text (never redirected:
        the CA asks over plain HTTP, for any Host)."""
        token = req.url[len(ACME_PATH):].partition(b"?")[0].decode("latin-1")
        answer = self.proxy.routes.table.challenges.get(token) if token else None
        if answer is None:
            self.respond_error(req, 404, "no ACME challenge is pending for this token")
        elif req.method not in (b"GET", b"HEAD"):
            self.respond_error(req, 405, "ACME challenges are answered to GET")
        else:
            self._respond(req, 200, answer.encode(), b"Cache-Control: no-store\r\n",
                          content_type=b"text/plain")

    def _refusal_of(self, req: Request) -> tuple[int, str]:
        """The status and message for a request the router answers itself."""
        route = req.route
        if req.error is not None:
            return 400, req.error
        if req.host is None:
            return 400, "the request has no Host header"
        if req.method == b"CONNECT":
            return 405, "this router does not tunnel CONNECT"
        if route.app is None:
            if not self.proxy.routes.ready:
                return 503, "this router has no route table yet (Redis is unreachable)"
            return 404, f"no app is served at {route.name}"
        return 503, f"app {route.app} has no healthy instance right now"

    async def _connect(self, req: Request, start: int, *, fresh: bool) -> None:
        """Attach `req` to a connection to the first backend that accepts one, from
        `start` on (see BackendPool.connect_first), or answer 502."""
        pool = self.proxy.pool
        try:
            conn, index = await pool.connect_first(req.route, start, fresh=fresh)
        except NoBackend as exc:
            self._task = None
            self.respond_error(
                req, 502, f"no instance of app {req.route.app} accepted a connection "
                          f"({exc.tried} tried)",
            )
            return
        self._task = None
        if self.closed or req.done:
            pool.put(conn)
        else:
            self.attach(req, conn, index)

    def attach(self, req: Request, conn: BackendConnection[Request], index: int) -> None:
        """Send the request head, and what body has arrived, to `conn`."""
        req.index = index
        req.backend = conn
        conn.begin(self, req)
        pending = req.pending
        if pending is not None:
            pending.insert(0, req.head)
            conn.transport.writelines(pending)
            req.pending = None
            req.pending_size = 0
            self._unpause(_BUFFER_FULL)
        else:
            conn.transport.write(req.head)
        req.sink = conn.transport
        if req.complete:
            conn.request_sent()
        if self._writing_paused:
            conn.pause_response()

    def retry(self, req: Request, *, same: bool) -> None:
        """The backend closed the connection before answering: connect afresh to the same
        backend if it was a pooled connection (then the others), else to the next one."""
        req.backend = req.sink = None
        if same:
            start = req.index
        else:
            req.tries += 1
            start = (req.index + 1) % len(req.route.backends)
        self._task = self.loop.create_task(self._connect(req, start, fresh=same))

    def start_tunnel(self, req: Request) -> None:
        """The backend accepted the upgrade: from now on bytes flow raw both ways."""
        req.done = True
        self._unpause(_PIPELINE)
        backend = req.backend
        self._record(req, backend.addr if backend else "")

    def respond_error(self, req: Request, status: int, message: str) -> None:
        """Answer `req` with the router's own page."""
        self._respond(req, status, error_page(status, message), b"", error=True)

    def _respond(self, req: Request, status: int, body: bytes, headers: bytes, *,
                 content_type: bytes = b"text/html; charset=utf-8",
                 error: bool = False) -> None:
        """Answer `req` with the router's own response (`headers`: whole header lines)."""
        req.done = True
        req.sink = None
        req.status = status
        keep = (req.keep_alive and req.complete and status != 400 and not self._raw
                and not self.proxy.closing)
        held = self.tls  # a close that follows: one send for the answer and close_notify
        if held:
            self.hold_writes(True)
        try:
            req.sent = self._write_response(status, body, headers + req.hsts, keep=keep,
                                            http10=req.http10,
                                            head_only=req.method == b"HEAD",
                                            content_type=content_type, error=error)
            req.close_after = not keep
            self.response_done(req)
        finally:
            if held:
                self.hold_writes(False)

    def _write_error(self, status: int, message: str, *, keep: bool) -> int:
        return self._write_response(status, error_page(status, message), b"", keep=keep,
                                    error=True)

    def _write_response(self, status: int, body: bytes, headers: bytes, *, keep: bool,
                        http10: bool = False, head_only: bool = False,
                        content_type: bytes = b"text/html; charset=utf-8",
                        error: bool = False) -> int:
        if self.closed:
            return 0
        connection = b"" if keep and not http10 else (
            b"Connection: keep-alive\r\n" if keep else b"Connection: close\r\n")
        if status == 503:  # a moment's wait helps: an instance or the table is on its way
            connection += b"Retry-After: %d\r\n" % RETRY_AFTER_SECONDS
        if error:
            # X-Dinp-Error tells clients (and `--wait`) the router answered, not the app.
            headers += b"Cache-Control: no-store\r\nX-Dinp-Error: %d\r\n" % status
        self.transport.write(
            b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n%b%b\r\n%b"
            % (status, HTTPStatus(status).phrase.encode(), content_type, len(body),
               headers, connection, b"" if head_only else body)
        )
        return 0 if head_only else len(body)

    def response_done(self, req: Request) -> None:
        """The response to the active request is complete: on to the next one, or close."""
        backend = req.backend
        req.done = True
        req.sink = None
        req.backend = None
        self.active = None
        self._answered += 1
        if self.proxy.access_log is None:
            req.route.state.stats.record(req.status, _clock() - req.start)
        else:
            self._record(req, backend.addr if backend is not None else "")
        if self._paused & _BACKEND_FULL:
            self._unpause(_BACKEND_FULL)
        if self.closed:
            return
        if not req.complete:
            self._linger()
            return
        if (
            req.close_after or self._raw or self.proxy.closing
            # After a parse error or the client's EOF only what is parsed gets answered.
            or ((self._broken or self._eof) and not (self.queue and self.queue[0].complete))
        ):
            self.close()
            return
        self._idle_since = self.loop.time()
        if self.queue:
            # Not from inside the backend's parser callback that got us here.
            self.loop.call_soon(self._start_next)

    def abort_response(self, req: Request) -> None:
        """The backend failed after the response head went out: the client must see
        that its response is incomplete."""
        req.done = True
        self._record(req, req.backend.addr if req.backend is not None else "")
        self.abort()

    def _record(self, req: Request, backend: str) -> None:
        """Count a response given (and log it, with an access log)."""
        seconds = _clock() - req.start
        req.route.state.stats.record(req.status, seconds)
        access_log = self.proxy.access_log
        if access_log is not None:
            access_log.write(
                peer=self.peer, method=req.method, url=req.url, http10=req.http10,
                status=req.status, size=req.sent, referer=req.referer, agent=req.agent,
                host=req.host, app=req.route.app or "", backend=backend, seconds=seconds,
                request_id=req.request_id,
            )

    def _linger(self) -> None:
        """Close after an answer given before the whole request arrived: stop writing, but
        read (and drop) what the client still sends for a moment, so that closing does
        not reset the connection before it read the answer."""
        if self.closed:
            return
        self._lingering = True
        self._idle_since = self.loop.time()
        self._unpause(self._paused)
        if self.transport.can_write_eof():  # TLS too: close_notify, then FIN
            self.transport.write_eof()
        else:
            self.close()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.transport.close()

    def hold_writes(self, hold: bool) -> None:
        """Over plain TCP each write is its own send already (see TlsClientConnection)."""

    def abort(self) -> None:
        """Cut the connection: the client must see that a started response is incomplete."""
        self.closed = True
        self.transport.abort()

    def close_if_idle(self) -> None:
        if self.active is None and not self.queue and self._task is None:
            self.close()


class TlsClientConnection(ClientConnection):
    """A client connection over TLS (its transport, a TlsStream, decrypts):
    X-Forwarded-Proto https, HSTS where the app asks for it, never redirected."""

    tls = True
    scheme = b"https"
    transport: TlsStream

    def hold_writes(self, hold: bool) -> None:
        if hold:
            self.transport.cork()
        else:
            self.transport.uncork()
