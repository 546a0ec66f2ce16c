"""A server that does not lead forwards every API request to the one that does.

Real state (what agents report) lives in the leader's memory, and only the leader
reconciles: so agents' reports and long-polls, and users' reads and writes, all go to it,
whichever server they reached. The request and its answer are streamed both ways (a
long-poll waits, logs follow). The leader learns the client's address from a header only
a server holding the cluster token can sign, so its audit trail names the client, not
the forwarding server.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from aiohttp import web

from dinp.const import API_PREFIX
from dinp.errors import NotLeaderYet, Unavailable
from dinp.roles.server import Server

log = logging.getLogger(__name__)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
CLIENT = "X-Dinp-Client"
CLIENT_MAC = "X-Dinp-Client-Mac"
# Answered by every server itself, leading or not.
LOCAL = frozenset({f"{API_PREFIX}/health", f"{API_PREFIX}/openapi.json"})
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate",
                        "proxy-authorization", "te", "trailers", "transfer-encoding",
                        "upgrade", "host", "content-length"})
SESSION = web.AppKey("forward-session", aiohttp.ClientSession)


def _mac(server: Server, client: str) -> str:
    return hmac.new(server.config.cluster_token.encode(), f"client:{client}".encode(),
                    hashlib.sha256).hexdigest()


def client_address(server: Server, request: web.Request) -> str | None:
    """Where the request came from: the peer, or the client a fellow server forwarded it
    for (only with a valid signature)."""
    claimed, mac = request.headers.get(CLIENT), request.headers.get(CLIENT_MAC, "")
    if claimed and hmac.compare_digest(mac, _mac(server, claimed)):
        return claimed
    return request.remote


async def _forward(server: Server, request: web.Request) -> web.StreamResponse:
    if server.leader_url == server.url or not server.leader_url:
        raise NotLeaderYet("no server leads right now (the lease is being taken over)",
                           hint="Try again in a few seconds.")
    session = request.app[SESSION]
    headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
    client = client_address(server, request) or ""
    headers[CLIENT], headers[CLIENT_MAC] = client, _mac(server, client)
    url = server.leader_url + request.path_qs
    try:
        async with session.request(request.method, url, headers=headers,
                                   data=request.content if request.body_exists else None,
                                   allow_redirects=False) as answer:
            response = web.StreamResponse(status=answer.status, headers={
                k: v for k, v in answer.headers.items() if k.lower() not in HOP_BY_HOP})
            await response.prepare(request)
            async for chunk in answer.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
            return response
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise Unavailable(f"the leading server at {server.leader_url} is unreachable: "
                          f"{exc or type(exc).__name__}",
                          hint="A standby takes over within a few seconds.") from None


def forward_middleware(server: Server) -> Any:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if server.leading or not request.path.startswith(API_PREFIX) \
                or request.path in LOCAL:
            return await handler(request)
        return await _forward(server, request)

    return middleware


async def open_session(app: web.Application) -> Any:
    # No total timeout: long-polls and followed logs last; the leader bounds them.
    app[SESSION] = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(
        total=None, sock_connect=5))
    yield
    await app[SESSION].close()
