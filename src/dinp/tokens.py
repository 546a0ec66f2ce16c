"""Bearer tokens as HTTP carries them, and comparing secrets.

One place for both, used by every dinp server (the API, the build service): each checks
the header the same way, in constant time.
"""

from __future__ import annotations

import hmac


def bearer_token(authorization: str) -> str | None:
    """The token of an `Authorization: Bearer <token>` header; None when there is none."""
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def same_secret(given: str, expected: str) -> bool:
    """`given` equals `expected`, compared in constant time; never for an empty secret."""
    return bool(expected) and hmac.compare_digest(given.encode(), expected.encode())
