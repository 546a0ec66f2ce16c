"""The API's authentication and authorization, applied to every route before its handler.

Each route's rule comes from its entry in the OpenAPI table (`roles/openapi.OPERATIONS`,
field `need`): a route the table does not know is refused, so none can go without a rule.
Who asks comes from the bearer token, looked up on every request (no cache: a revoked or
expired token, or a disabled user, is refused at once by every server process); agents'
credentials are checked without the database (`tokens.node_credential`). The decision
itself is `access.check`.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from dinp import access, tokens, validation
from dinp.access import ANY_NODE, Actor, Need, Principal, Target
from dinp.const import API_PREFIX
from dinp.errors import Unauthorized
from dinp.roles.forward import client_address
from dinp.roles.handlers import SERVER_KEY
from dinp.roles.openapi import OPERATIONS, Operation
from dinp.roles.server import Server

log = logging.getLogger(__name__)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
PRINCIPAL = web.RequestKey("principal", Principal)
# Pages that are not part of the API: the Dashboard signs in through the API itself.
PAGES = frozenset({"/", "/favicon.ico"})
RULES: dict[tuple[str, str], Operation] = {
    (op.method.upper(), API_PREFIX + op.path): op for op in OPERATIONS}


def principal(request: web.Request) -> Principal:
    """Who makes this request (every handler behind the middleware has one, unless its
    route is public)."""
    return request[PRINCIPAL]


def actor(request: web.Request) -> Actor:
    """Who makes this request and from where, for the audit trail."""
    return Actor.of(principal(request), client_address(request.app[SERVER_KEY], request))


def _rule(request: web.Request) -> Operation | None:
    route = request.match_info.route
    resource = route.resource
    if resource is None:
        return None
    return RULES.get((route.method, resource.canonical))


async def _who(server: Server, request: web.Request) -> Principal:
    token = tokens.bearer_token(request.headers.get("Authorization", ""))
    if token is None:
        raise Unauthorized("missing API token", hint="Run `dinp login`, or set DINP_TOKEN.")
    if tokens.same_secret(token, server.config.cluster_token):
        return Principal(node=ANY_NODE)
    credential = tokens.node_of_credential(token, server.config.cluster_token)
    if credential is not None:
        node, generation = credential
        if server.snapshot.node_generations.get(node) != generation:
            raise Unauthorized(f"this agent credential of node {node} was replaced by a "
                               "newer one", hint="Give the agent its current credential "
                               "(`dinp node credential NODE`).")
        return Principal(node=node)
    if token.startswith(tokens.NODE_TOKEN_PREFIX):
        raise Unauthorized("invalid agent credential",
                           hint="The agent's cluster_token must be the cluster token or "
                           "its node's credential (`dinp node credential NODE`).")
    return await server.db(server.accounts.principal, token)


def _target(server: Server, request: web.Request, need: Need) -> Target:
    info = request.match_info
    app = info.get("name") if need in access.APP_NEEDS else None
    team = None
    if app is not None:
        app = validation.app_name(app, allow_reserved=True)
        row = server.snapshot.apps.get(app)
        team = row.team if row is not None else None
    return Target(app=app, app_team=team, team=info.get("team"), node=info.get("node"),
                  user=info.get("user"))


def auth_middleware(server: Server) -> Any:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        rule = _rule(request)
        if rule is None:
            if request.path in PAGES or not request.path.startswith(API_PREFIX):
                return await handler(request)
            if request.match_info.http_exception is not None:
                raise request.match_info.http_exception  # 404, 405 as aiohttp says
            log.error("route %s %s has no access rule: refused", request.method,
                      request.path)
            raise web.HTTPForbidden(text="this route has no access rule")
        if rule.need is Need.PUBLIC:
            return await handler(request)
        who = await _who(server, request)
        target = _target(server, request, rule.need)
        if target.app is not None and target.app_team is None and not who.is_agent:
            # The snapshot may lag a write through another server: ask the database.
            row = await server.db(server.store.find_app, target.app)
            if row is not None:
                target = Target(app=target.app, app_team=row.team)
        access.check(who, rule.need, target)
        request[PRINCIPAL] = who
        return await handler(request)

    return middleware
