"""Passwords, for users who sign in with one (the CLI's `dinp login --user`, the
Dashboard): kept as scrypt hashes, never in the clear.

scrypt comes with Python (hashlib, OpenSSL) and is a slow, memory-hard hash of the kind
OWASP recommends; a library would add a dependency for the same thing. Each hash carries
its own parameters, so they can be raised later without breaking older hashes.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

# N=2^15, r=8: 32 MiB and about 0.1 s per hash on a server core.
N, R, P = 1 << 15, 8, 1
MAXMEM = 64 * 1024 * 1024
MIN_LENGTH = 10
MAX_LENGTH = 1024
SCHEME = "scrypt"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    key = hashlib.scrypt(password.encode(), salt=salt, n=N, r=R, p=P, maxmem=MAXMEM)
    return f"{SCHEME}${N}${R}${P}${_b64(salt)}${_b64(key)}"


def verify(password: str, stored: str | None) -> bool:
    """`password` is the one `stored` was made from. Without a stored hash a dummy one is
    computed, so an unknown user takes as long to refuse as a wrong password."""
    if not stored:
        hashlib.scrypt(password.encode(), salt=b"0" * 16, n=N, r=R, p=P, maxmem=MAXMEM)
        return False
    try:
        scheme, n, r, p, salt, key = stored.split("$")
        if scheme != SCHEME:
            return False
        got = hashlib.scrypt(password.encode(), salt=_unb64(salt), n=int(n), r=int(r),
                             p=int(p), maxmem=MAXMEM)
    except ValueError:
        return False
    return hmac.compare_digest(got, _unb64(key))
