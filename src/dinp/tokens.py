"""Bearer tokens as HTTP carries them, comparing secrets, and the tokens dinp makes.

One place for them, used by every dinp server (the API, the build service): each checks
the header the same way, in constant time. Users' API tokens are random and kept as
digests; agents' credentials are derived from the cluster token (`node_credential`).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets


def bearer_token(authorization: str) -> str | None:
    """The token of an `Authorization: Bearer <token>` header; None when there is none."""
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def same_secret(given: str, expected: str) -> bool:
    """`given` equals `expected`, compared in constant time; never for an empty secret."""
    return bool(expected) and hmac.compare_digest(given.encode(), expected.encode())


# -- tokens dinp makes --------------------------------------------------------------------

USER_TOKEN_PREFIX = "dinp_"
NODE_TOKEN_PREFIX = "dinpn_"


def new_user_token() -> str:
    """A random API token: 32 bytes, shown once; only its digest is kept."""
    return USER_TOKEN_PREFIX + secrets.token_urlsafe(32)


def digest(token: str) -> str:
    """What the database keeps of a token. A plain SHA-256 suffices: the tokens are 256
    random bits, so there is nothing to guess that a slow hash would protect."""
    return hashlib.sha256(token.encode()).hexdigest()


def node_credential(cluster_token: str, node: str, generation: int) -> str:
    """The agent credential of `node`: it lets an agent report for that node only. Made
    from the cluster token (held by the servers), so a server checks it without a
    database read on every heartbeat; a new `generation` revokes the ones before."""
    mac = hmac.new(cluster_token.encode(), f"node:{node}:{generation}".encode(),
                   hashlib.sha256).hexdigest()
    return f"{NODE_TOKEN_PREFIX}{generation}_{node}_{mac}"


def node_of_credential(token: str, cluster_token: str) -> tuple[str, int] | None:
    """(node, generation) of a genuine agent credential; None for anything else."""
    if not token.startswith(NODE_TOKEN_PREFIX) or not cluster_token:
        return None
    parts = token[len(NODE_TOKEN_PREFIX):].split("_")
    if len(parts) != 3 or not parts[0].isdigit() or len(parts[0]) > 9:
        return None
    generation, node = int(parts[0]), parts[1]
    if not same_secret(token, node_credential(cluster_token, node, generation)):
        return None
    return node, generation
