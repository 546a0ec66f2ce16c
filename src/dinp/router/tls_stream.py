"""TLS between a socket's transport and a client connection: the router's own TLS layer.

A TlsStream is the protocol of the raw (TCP) transport and the transport of the
ClientConnection above it: it runs the handshake, then decrypts what arrives and encrypts
what is written, OpenSSL working on memory buffers (ssl.MemoryBIO). asyncio's and
uvloop's TLS transports do the same, and this one exists for what they do not:

- a failed handshake's alert reaches the client (they drop it: CPython gh-98078), so a
  name without a certificate gets `unrecognized_name`, an old client `protocol_version`;
- the session ticket OpenSSL makes at the end of the handshake goes out with the first
  response instead of in a send of its own; a closing connection sends its close_notify
  and is closed, without waiting for the client's;
- no timer or future per connection: the handshake's timeout (header_timeout) is checked
  by the proxy's tick like every other one;
- bytes read before the handshake (after a PROXY header) can be handed to it;
- half-closes both ways, as over plain TCP: a client that sends close_notify (or a FIN)
  after its request still gets the answer, and `write_eof` (close_notify, then FIN) lets
  the router answer early and still read what the client sends before closing.

Every write is encrypted and handed to the raw transport at once (one TLS record per
write, one send), unless the app corks the stream for a moment (the end of a response
and the close that follows it share a send); the raw transport's buffer is what flow
control watches, both ways.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from typing import Any, cast

from dinp.router.proxy import Proxy

log = logging.getLogger("dinp.router")

# The most plaintext taken from OpenSSL in one read (it returns at most one record, 16 KB).
READ_SIZE = 256 * 1024
# What a stream's app is once the connection is gone.
_GONE = asyncio.Protocol()


class TlsStream(asyncio.Protocol, asyncio.Transport):
    """TLS for one client connection: the raw transport's protocol, and the transport of
    `app`, the protocol the plaintext goes to (its connection_made is called with this
    stream once the handshake is done)."""

    def __init__(self, proxy: Proxy, context: ssl.SSLContext, app: asyncio.Protocol) -> None:
        asyncio.Transport.__init__(self)
        self.proxy = proxy
        self.context = context
        self.app = app
        self.raw = cast(asyncio.Transport, None)
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._ssl = context.wrap_bio(self._incoming, self._outgoing, server_side=True)
        self._handshaking = True
        self._reading = True  # the app wants data
        self._closing = False
        self._eof_sent = False  # close_notify went out: nothing more is written
        # TLS 1.3: the session ticket made at the end of the handshake waits for the
        # first response.
        self._holding = False
        self._corked = False  # writes wait in the outgoing buffer (see cork)
        self._started = 0.0

    # --- the raw transport's protocol ---

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.raw = cast(asyncio.Transport, transport)
        self._started = self.proxy.loop.time()
        self.proxy.connections.add(self)  # until the handshake is done (its timeout)

    def data_received(self, data: bytes) -> None:
        self._incoming.write(data)
        if self._handshaking and (self._closing or not self._handshake()):
            return
        if self._reading:
            self._read()

    def eof_received(self) -> bool:
        """The client sent all it will send (TCP FIN): as after its close_notify."""
        if self._handshaking or self._closing:
            self._close_raw()
            return False
        if self._reading and self._incoming.pending:
            self._read()  # what arrived with the FIN first
            if self._closing:
                return False
        return self._app_eof()

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        if self._handshaking:
            self.proxy.connections.discard(self)
            return
        app, self.app = self.app, _GONE
        # Without the app's reference back (its transport is this stream), the two are
        # freed as soon as nothing else holds them: OpenSSL's state with them, at once,
        # instead of by the collector in a batch (a pause of 100 ms every thousand
        # connections).
        app.connection_lost(exc)

    def pause_writing(self) -> None:
        if not self._handshaking:
            self.app.pause_writing()

    def resume_writing(self) -> None:
        if not self._handshaking:
            self.app.resume_writing()

    # --- the handshake ---

    def _handshake(self) -> bool:
        """Go on with the handshake; True once it is done."""
        try:
            self._ssl.do_handshake()
        except ssl.SSLWantReadError:
            self._flush()
            return False
        except (ssl.SSLError, OSError) as exc:
            # Its alert (unrecognized_name, protocol_version, ...) goes out before the
            # connection closes: the client then knows why.
            log.debug("TLS handshake failed: %s", exc)
            self._flush()
            self._close_raw()
            return False
        self._handshaking = False
        self.proxy.connections.discard(self)
        if self._ssl.version() == "TLSv1.3":
            self._holding = True  # only session tickets are left to send: they can wait
        else:
            self._flush()  # TLS 1.2: the client waits for our Finished
        self.app.connection_made(self)
        return not self._closing

    def check(self, now: float) -> None:
        """The proxy's tick, while the handshake runs: it must end in header_timeout."""
        if self._handshaking and now - self._started >= self.proxy.config.header_timeout:
            self.abort()

    def close_if_idle(self) -> None:
        if self._handshaking:
            self.abort()

    # --- records ---

    def _read(self) -> None:
        """Decrypt what has arrived and hand it to the app."""
        sslobj, incoming = self._ssl, self._incoming
        chunks: list[bytes] = []
        eof = False
        try:
            while incoming.pending or sslobj.pending():
                chunk = sslobj.read(READ_SIZE)
                if not chunk:
                    eof = True
                    break
                chunks.append(chunk)
        except ssl.SSLWantReadError:
            pass  # a record is not whole yet
        except ssl.SSLZeroReturnError:
            eof = True  # close_notify
        except (ssl.SSLError, OSError) as exc:
            log.debug("TLS record refused: %s", exc)
            self._flush()  # its alert
            self._close_raw()
            return
        if chunks:
            self.app.data_received(chunks[0] if len(chunks) == 1 else b"".join(chunks))
        if self._outgoing.pending and not self._holding:
            self._flush()  # what OpenSSL answers to a record (a KeyUpdate), at once
        if eof and not self._closing:
            self._app_eof()

    def _app_eof(self) -> bool:
        """Tell the app the client is done sending; True if it keeps the connection open
        to answer (else it is closed)."""
        keep = bool(self.app.eof_received())
        if not keep:
            self.close()
        return keep

    def _flush(self) -> None:
        self._holding = False
        if self._outgoing.pending:
            self.raw.write(self._outgoing.read())

    def _close_raw(self) -> None:
        self._closing = True
        self.raw.close()

    # --- the app's transport ---

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closing or self._eof_sent or not data:
            return
        try:
            self._ssl.write(data)
        except (ssl.SSLError, OSError) as exc:  # pragma: no cover - a memory BIO takes all
            log.debug("TLS write failed: %s", exc)
            self.abort()
            return
        self._holding = False
        if not self._corked:
            self.raw.write(self._outgoing.read())

    def cork(self) -> None:
        """Keep what is written encrypted in the outgoing buffer until `uncork`: a close
        in between sends it with its close_notify, in one send instead of two (one
        system call less for every connection that ends after its response)."""
        self._corked = True

    def uncork(self) -> None:
        self._corked = False
        if not self._closing and not self._holding and self._outgoing.pending:
            self._flush()

    def writelines(self, list_of_data: Any) -> None:
        self.write(b"".join(list_of_data))

    def can_write_eof(self) -> bool:
        return not self._handshaking

    def write_eof(self) -> None:
        """close_notify, then FIN: nothing more is written, what arrives is still read."""
        if self._closing or self._eof_sent:
            return
        self._notify_close()
        if self.raw.can_write_eof():
            self.raw.write_eof()

    def _notify_close(self) -> None:
        self._eof_sent = True
        try:  # noqa: SIM105 - a try is cheaper than contextlib.suppress, once per close
            self._ssl.unwrap()
        except (ssl.SSLError, OSError):
            pass  # SSLWantReadError: the client's close_notify is not waited for
        self._flush()

    def close(self) -> None:
        """Send close_notify after what was written, and close."""
        if self._closing:
            return
        self._closing = True
        if not self._handshaking and not self._eof_sent:
            self._notify_close()
        self.raw.close()

    def abort(self) -> None:
        self._closing = True
        self.raw.abort()

    def is_closing(self) -> bool:
        return self._closing or self.raw.is_closing()

    def is_reading(self) -> bool:
        return self._reading and not self._closing

    def pause_reading(self) -> None:
        if self._reading:
            self._reading = False
            self.raw.pause_reading()

    def resume_reading(self) -> None:
        if not self._reading and not self._closing:
            self._reading = True
            self.raw.resume_reading()
            if self._incoming.pending or self._ssl.pending():
                # Records that arrived before the pause: from the loop, not from inside
                # the app's own call.
                self.proxy.loop.call_soon(self._read_if_reading)

    def _read_if_reading(self) -> None:
        if self._reading and not self._closing:
            self._read()

    def get_write_buffer_size(self) -> int:
        return self.raw.get_write_buffer_size()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self.raw.set_write_buffer_limits(high, low)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "ssl_object":
            return self._ssl
        if name == "sslcontext":
            return self.context
        if name == "cipher":
            return self._ssl.cipher()
        return self.raw.get_extra_info(name, default)
