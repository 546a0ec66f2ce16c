"""What both sides of the data plane share about HTTP/1.x: stopping the parser on purpose,
and the header names a Connection header adds to the hop-by-hop ones."""

from __future__ import annotations

# Connection tokens that name no end-to-end header, so need no second pass.
PLAIN_TOKENS = frozenset({b"keep-alive", b"close", b"upgrade"})


class Stop(Exception):
    """Raised from a parser callback to stop parsing on purpose."""


def connection_tokens(value: bytes) -> set[bytes] | None:
    """Header names listed in a Connection header, beyond the usual ones: hop-by-hop too,
    by the sender's choice. None for the usual values (the fast path)."""
    if value.lower() in PLAIN_TOKENS:
        return None
    return {t.strip().lower() for t in value.split(b",")} - PLAIN_TOKENS - {b""} or None
