"""Session tickets that every worker of a router can read, so that a client resumes its TLS
session whichever worker the kernel hands its next connection to.

OpenSSL gives each context random ticket keys of its own, so each worker process could
only resume the sessions it began itself (with N workers, N-1 of N resumptions would fail),
and Python's ssl module has no call to set them. They are set here with OpenSSL's
SSL_CTX_ctrl (`dinp.router.openssl`), on the listening context (OpenSSL keeps tickets
there, also for handshakes whose certificate comes from another context). Where that call
cannot be made safely, the worker keeps OpenSSL's own keys and says so once: resumption
then works within a worker only.

The keys come from a secret the router makes at start (kept in memory only, handed to its
worker processes as they spawn) and the current period of ROTATION seconds: every worker
takes the next keys at the same moment without a word between them, and a ticket older
than one period is refused (a full handshake), which bounds how long one key could
decrypt recorded sessions.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import ssl
import time
from typing import Any

from dinp.router.openssl import OpenSSL, openssl

log = logging.getLogger("dinp.router")

ROTATION = 12 * 3600  # seconds a set of ticket keys is used
_KEYS_SIZE = 80  # OpenSSL's: a 16-byte name, a 32-byte HMAC key, a 32-byte AES key


def ticket_keys(secret: bytes, period: int) -> bytes:
    """The keys of one period, the same in every worker given the same secret."""
    out = b""
    block = 0
    while len(out) < _KEYS_SIZE:
        block += 1
        out += hmac.new(secret, b"dinp session tickets %d %d" % (period, block),
                        hashlib.sha256).digest()
    return out[:_KEYS_SIZE]


def current_period(now: float | None = None) -> int:
    return int((time.time() if now is None else now) // ROTATION)


class SharedTickets:
    """Keeps the ticket keys of a listening context those of the current period."""

    def __init__(self, ctx: ssl.SSLContext, secret: bytes) -> None:
        self.ctx = ctx
        self.secret = secret
        self.period = -1
        self._openssl: OpenSSL | None = None
        self._timer: Any = None

    def start(self, loop: Any) -> bool:
        """Set the current keys, and the next ones when their period begins; False (and
        a warning) when they cannot be set."""
        try:
            self._openssl = openssl()
            self._set(current_period())
        except (OSError, AttributeError, ValueError) as exc:
            log.warning("TLS session tickets are not shared by the workers (%s): a client "
                        "resumes only on the worker it met first", exc)
            return False
        self._loop = loop
        self._schedule()
        return True

    def _set(self, period: int) -> None:
        assert self._openssl is not None
        self._openssl.set_ticket_keys(self.ctx, ticket_keys(self.secret, period))
        self.period = period

    def _schedule(self) -> None:
        wait = (self.period + 1) * ROTATION - time.time()
        self._timer = self._loop.call_later(max(1.0, wait), self._rotate)

    def _rotate(self) -> None:
        try:
            self._set(current_period())
        except OSError as exc:  # pragma: no cover - it worked a period ago
            log.error("cannot change the TLS ticket keys: %s", exc)
        self._schedule()

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
