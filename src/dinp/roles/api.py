"""The server's HTTP API (aiohttp, JSON under /api/v1/), the dashboard and OpenAPI.

Handlers validate input, call the Server, and shape JSON; errors become JSON bodies with
a status code and a message naming the field. Users authenticate with an API token,
agents with the cluster token (both as `Authorization: Bearer …`).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any

import redis
from aiohttp import web

from dinp import releases, rollouts, scheduler, validation, wire
from dinp.config import ServerConfig, require_secret, split_hostport
from dinp.const import API_PREFIX, DEFAULT_APP_PORT
from dinp.errors import Conflict, DinpError, InvalidInput, Unauthorized, Unavailable
from dinp.lifecycle import run_until_stopped, start_site
from dinp.models import AppRow
from dinp.roles.openapi import MAX_BODY
from dinp.roles.openapi import document as openapi_document
from dinp.roles.server import Server
from dinp.routes import RedisRouteStore, RouteStore, redis_error
from dinp.store import Store
from dinp.tokens import bearer_token, same_secret

log = logging.getLogger(__name__)
SERVER_KEY = web.AppKey("server", Server)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

AGENT_ENDPOINTS = frozenset({"heartbeat", "assignments", "cluster"})
PUBLIC = {f"{API_PREFIX}/health", f"{API_PREFIX}/openapi.json", "/", "/favicon.ico"}
OPENAPI = openapi_document()
# Who made a change, for releases and events (users and their tokens come later).
WHO = "admin"
# An app's settings that are not part of its releases, with their checks.
SETTINGS: dict[str, Callable[[object], float]] = {
    "surge": validation.surge, "deploy_timeout": validation.deploy_timeout,
    "stop_grace": validation.stop_grace,
}
JSON_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The API's one translation of errors: the class says the status and the body."""
    try:
        return await handler(request)
    except DinpError as exc:
        return web.json_response(exc.to_json(), status=exc.http_status)


class TokenCache:
    """Remembers valid user tokens for a minute so every request does not hit the database."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self._valid: dict[str, float] = {}

    async def role(self, token: str) -> str | None:
        if self._valid.get(token, 0) > time.monotonic():
            return "admin"
        role = await self.server.db(self.server.store.token_role, token)
        if role:
            self._valid[token] = time.monotonic() + 60
        return role


def bearer(request: web.Request) -> str:
    token = bearer_token(request.headers.get("Authorization", ""))
    if token is None:
        raise Unauthorized("missing API token",
                           hint="Run `dinp login`, or set DINP_TOKEN.")
    return token


def auth_middleware(server: Server) -> Any:
    cache = TokenCache(server)

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        path = request.path
        if path in PUBLIC or not path.startswith(API_PREFIX):
            return await handler(request)
        token = bearer(request)
        if path.startswith(f"{API_PREFIX}/nodes/") and path.count("/") == 5 \
                and path.rsplit("/", 1)[1] in AGENT_ENDPOINTS:
            # Agent endpoints: /api/v1/nodes/{name}/heartbeat|assignments|cluster
            if not same_secret(token, server.config.cluster_token):
                raise Unauthorized("invalid cluster token",
                                   hint="The agent's cluster_token must match the server's.")
        elif await cache.role(token) is None:
            raise Unauthorized("invalid API token", hint="Run `dinp login` again.")
        return await handler(request)

    return middleware


async def json_body(request: web.Request) -> dict[str, Any]:
    try:
        data = await request.json()
    except (ValueError, LookupError, RecursionError) as exc:  # bad JSON, charset, nesting
        raise InvalidInput("body", f"not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise InvalidInput("body", "expected a JSON object")
    return data


def srv(request: web.Request) -> Server:
    return request.app[SERVER_KEY]


def app_in_path(request: web.Request) -> str:
    """The app named in the URL, checked as on create: a name that could not have been
    created is a 400, never a lookup the database might match loosely."""
    return validation.app_name(request.match_info["name"], allow_reserved=True)


# -- handlers ---------------------------------------------------------------------------

async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def list_apps(request: web.Request) -> web.Response:
    server = srv(request)
    apps = sorted(server.snapshot.apps.values(), key=lambda a: a.name)
    return web.json_response([server.app_view(a, detail=False) for a in apps])


async def create_app(request: web.Request) -> web.Response:
    server = srv(request)
    data = await json_body(request)
    unknown = set(data) - {"name", "image", "instances", "memory", "port", "env", "health_path",
                           *SETTINGS}
    if unknown:
        raise InvalidInput(sorted(unknown)[0], "unknown field")
    spec = {
        "name": validation.app_name(data.get("name")),
        "image": validation.image(data.get("image")),
        "instances": validation.instances(data.get("instances", 1)),
        "memory_mb": validation.memory_field(data.get("memory", "256m")),
        "port": validation.port(data.get("port", DEFAULT_APP_PORT)),
        "env": validation.env(data.get("env")),
        "health_path": validation.health_path(data.get("health_path")),
        "surge": validation.surge(data.get("surge", 0)),
        "deploy_timeout": validation.deploy_timeout(data.get("deploy_timeout", 120)),
        "stop_grace": validation.stop_grace(data.get("stop_grace", 10)),
    }
    app = await server.db(server.store.create_app, **spec, by=WHO)
    await server.desired_changed()
    log.info("app %s created: %s x%d", app.name, app.image, app.instances)
    return web.json_response(server.app_view(app, detail=True), status=201)


async def get_app(request: web.Request) -> web.Response:
    server = srv(request)
    name = app_in_path(request)
    app = server.snapshot.apps.get(name)
    if app is None:
        # The snapshot may lag a write made through another server: ask the database.
        app = await server.db(server.store.get_app, name)
    return web.json_response(server.app_view(app, detail=True))


async def scale_app(request: web.Request) -> web.Response:
    server = srv(request)
    name = app_in_path(request)
    data = await json_body(request)
    unknown = set(data) - {"instances"}
    if unknown:
        raise InvalidInput(sorted(unknown)[0], "unknown field")
    count = validation.instances(data.get("instances"))
    app = await server.db(server.store.scale_app, name, count)
    await server.desired_changed()
    return web.json_response(server.app_view(app, detail=True))


async def app_settings(request: web.Request) -> web.Response:
    """How the app is rolled out and stopped: takes effect from the next rollout (and
    containers started from now on), without a release."""
    server = srv(request)
    name = app_in_path(request)
    data = await json_body(request)
    _known_fields(data, set(SETTINGS))
    app = await server.db(server.store.update_settings, name,
                          {k: SETTINGS[k](v) for k, v in data.items()})
    await server.desired_changed()
    return web.json_response(server.app_view(app, detail=True))


def _known_fields(data: dict[str, Any], known: set[str]) -> None:
    unknown = set(data) - known
    if unknown:
        raise InvalidInput(sorted(unknown)[0], "unknown field")


async def _released(request: web.Request, app: AppRow) -> web.Response:
    """After a new release: the planner rolls the app to it; answer with the app."""
    server = srv(request)
    await server.desired_changed()
    log.info("app %s: release %d", app.name, app.release)
    return web.json_response(server.app_view(app, detail=True))


async def deploy_app(request: web.Request) -> web.Response:
    """A new release from the current one with the changes asked for, rolled out."""
    server = srv(request)
    name = app_in_path(request)
    change = releases.parse_change(await json_body(request))
    app = await server.db(server.store.deploy, name, change, by=WHO)
    return await _released(request, app)


async def rollback_app(request: web.Request) -> web.Response:
    server = srv(request)
    name = app_in_path(request)
    data = await json_body(request)
    _known_fields(data, {"release"})
    version = data.get("release")
    if version is not None:
        version = validation.whole_number(version)
        if version is None or version < 1:
            raise InvalidInput("release", "expected a release number (1 or more)")
    app = await server.db(server.store.rollback, name, version, by=WHO)
    return await _released(request, app)


async def restart_app(request: web.Request) -> web.Response:
    """A new release equal to the current one: every instance replaced, rolling."""
    server = srv(request)
    name = app_in_path(request)
    app = await server.db(server.store.deploy, name, releases.Change(restart=True), by=WHO)
    return await _released(request, app)


async def set_env(request: web.Request) -> web.Response:
    server = srv(request)
    name = app_in_path(request)
    data = await json_body(request)
    _known_fields(data, {"set", "unset"})
    change = releases.parse_change({"env": data.get("set") or {},
                                    "unset": data.get("unset") or []})
    app = await server.db(server.store.deploy, name, change, by=WHO)
    return await _released(request, app)


async def list_releases(request: web.Request) -> web.Response:
    server = srv(request)
    name = app_in_path(request)
    app = await server.db(server.store.get_app, name)
    rows = await server.db(server.store.releases, name)
    return web.json_response([{
        "version": r.version, "current": r.version == app.release,
        **r.spec(app).to_json(), "env": sorted(r.spec(app).env),
        "change": r.change, "created_by": r.created_by, "created_at": r.created_at,
        "status": r.status, "failure": r.failure,
    } for r in rows])


async def list_domains(request: web.Request) -> web.Response:
    server = srv(request)
    rows = await server.db(server.store.domains, app_in_path(request))
    return web.json_response([{"domain": r.domain, "created_at": r.created_at} for r in rows])


async def add_domain(request: web.Request) -> web.Response:
    """Route a custom domain to the app (written as the original's /cname/<domain>)."""
    server = srv(request)
    name = app_in_path(request)
    data = await json_body(request)
    _known_fields(data, {"domain"})
    domain = validation.domain(data.get("domain"), platform=server.config.domain)
    await server.db(server.store.add_domain, name, domain)
    await server.desired_changed()
    return web.json_response({"app": name, "domain": domain}, status=201)


async def remove_domain(request: web.Request) -> web.Response:
    server = srv(request)
    name = app_in_path(request)
    domain = validation.domain(request.match_info["domain"])
    await server.db(server.store.remove_domain, name, domain)
    await server.desired_changed()
    return web.json_response({"app": name, "removed": domain})


async def cancel_deploy(request: web.Request) -> web.Response:
    """Halt the rollout in progress as a failed one would be: back to the release before."""
    server = srv(request)
    name = app_in_path(request)
    app = await server.db(server.store.get_app, name)
    current = next((r for r in await server.db(server.store.releases, name)
                    if r.version == app.release), None)
    if current is None or current.status != rollouts.DEPLOYING or app.release == 1:
        raise Conflict(f"{name} has no deploy in progress to cancel")
    app = await server.db(server.store.record_verdict, name, app.release,
                          rollouts.CANCELLED, f"cancelled by {WHO}")
    return await _released(request, app)


async def delete_app(request: web.Request) -> web.Response:
    server = srv(request)
    name = app_in_path(request)
    await server.db(server.store.delete_app, name)
    await server.desired_changed()
    return web.json_response({"deleted": name})


async def list_nodes(request: web.Request) -> web.Response:
    return web.json_response(srv(request).node_views())


async def drain_node(request: web.Request) -> web.Response:
    """Move every instance off a node (new ones start elsewhere first); `undo` makes it
    take instances again."""
    server = srv(request)
    node = validation.node_name(request.match_info["node"])
    data = await json_body(request)
    _known_fields(data, {"undo"})
    undo = data.get("undo", False)
    if not isinstance(undo, bool):
        raise InvalidInput("undo", "expected true or false")
    row = await server.db(server.store.set_node_status, node,
                          scheduler.READY if undo else scheduler.DRAINING)
    await server.desired_changed()
    return web.json_response({"name": row.name, "status": row.status})


async def list_events(request: web.Request) -> web.Response:
    server = srv(request)
    app = request.query.get("app")
    if app is not None:
        app = validation.app_name(app, allow_reserved=True, field="app")
    raw = request.query.get("limit", "50")
    limit = int(raw) if re.fullmatch(r"[0-9]{1,4}", raw) else 0
    if not 1 <= limit <= 1000:
        raise InvalidInput("limit", "expected a whole number from 1 to 1000")
    rows = await server.db(server.store.events, app=app, limit=limit)
    return web.json_response([
        {"at": r.at, "app": r.app, "node": r.node, "message": r.message} for r in rows
    ])


async def heartbeat(request: web.Request) -> web.Response:
    server = srv(request)
    data = await json_body(request)
    hb = wire.parse_heartbeat(request.match_info["node"], data)
    return web.json_response(await server.heartbeat(hb))


async def node_cluster(request: web.Request) -> web.Response:
    """The cluster a node belongs to: an agent asks before it lists any container."""
    node = validation.node_name(request.match_info["node"])
    return web.json_response({"node": node, "cluster": srv(request).cluster_id})


def _query_number(request: web.Request, name: str, default: float, low: float,
                  high: float) -> float:
    raw = request.query.get(name)
    if raw is None:
        return default
    # A number as JSON writes it: float() would also take "1_0", "inf" or " 5".
    value = float(raw) if len(raw) <= 40 and JSON_NUMBER.fullmatch(raw) else float("nan")
    if not low <= value <= high:  # NaN fails too
        raise InvalidInput(name, f"expected a number from {low:g} to {high:g}")
    return value


def _query_text(request: web.Request, name: str, *, max_len: int,
                min_len: int = 0) -> str | None:
    raw = request.query.get(name)
    if raw is not None and not min_len <= len(raw) <= max_len:
        raise InvalidInput(name, f"expected {min_len} to {max_len} characters")
    return raw


async def assignments(request: web.Request) -> web.Response:
    server = srv(request)
    node = validation.node_name(request.match_info["node"])
    wait = _query_number(request, "wait", 0.0, 0.0, wire.MAX_LONG_POLL)
    rev = _query_text(request, "rev", max_len=64) or ""
    agent = request.query.get("agent")
    if agent is not None and not (agent and wire.ID_TEXT.fullmatch(agent)):
        raise InvalidInput("agent", f"expected 1 to {wire.MAX_ID} printable ASCII characters")
    reply = await server.wait_assignment(node, rev, wait, agent)
    return web.json_response(reply)


async def dashboard(request: web.Request) -> web.Response:
    page = resources.files("dinp").joinpath("static/dashboard.html").read_text()
    return web.Response(text=page, content_type="text/html")


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(OPENAPI)


def make_app(server: Server) -> web.Application:
    app = web.Application(
        middlewares=[errors_middleware, auth_middleware(server)], client_max_size=MAX_BODY
    )
    app[SERVER_KEY] = server
    p = API_PREFIX
    app.router.add_get("/", dashboard)
    app.router.add_get(f"{p}/health", health)
    app.router.add_get(f"{p}/openapi.json", openapi)
    app.router.add_get(f"{p}/apps", list_apps)
    app.router.add_post(f"{p}/apps", create_app)
    app.router.add_get(f"{p}/apps/{{name}}", get_app)
    app.router.add_post(f"{p}/apps/{{name}}/scale", scale_app)
    app.router.add_post(f"{p}/apps/{{name}}/settings", app_settings)
    app.router.add_post(f"{p}/apps/{{name}}/deploy", deploy_app)
    app.router.add_post(f"{p}/apps/{{name}}/deploy/cancel", cancel_deploy)
    app.router.add_post(f"{p}/apps/{{name}}/rollback", rollback_app)
    app.router.add_post(f"{p}/apps/{{name}}/restart", restart_app)
    app.router.add_post(f"{p}/apps/{{name}}/env", set_env)
    app.router.add_get(f"{p}/apps/{{name}}/releases", list_releases)
    app.router.add_get(f"{p}/apps/{{name}}/domains", list_domains)
    app.router.add_post(f"{p}/apps/{{name}}/domains", add_domain)
    app.router.add_delete(f"{p}/apps/{{name}}/domains/{{domain}}", remove_domain)
    app.router.add_delete(f"{p}/apps/{{name}}", delete_app)
    app.router.add_get(f"{p}/nodes", list_nodes)
    app.router.add_post(f"{p}/nodes/{{node}}/drain", drain_node)
    app.router.add_get(f"{p}/events", list_events)
    app.router.add_post(f"{p}/nodes/{{node}}/heartbeat", heartbeat)
    app.router.add_get(f"{p}/nodes/{{node}}/assignments", assignments)
    app.router.add_get(f"{p}/nodes/{{node}}/cluster", node_cluster)
    return app


async def start(config: ServerConfig, route_store: RouteStore | None = None) -> tuple[
    Server, web.AppRunner
]:
    """Open the database and Redis, make the first admin token, listen. Fails with a
    clear error when any of them is unreachable, before anything is served."""
    require_secret(config.cluster_token, key="cluster_token", section="server")
    require_secret(config.admin_token, key="admin_token", section="server", needed=False)
    store = await asyncio.to_thread(Store, config.database_url)
    if route_store is None:
        redis_store = RedisRouteStore(config.redis_url)
        try:
            await asyncio.to_thread(redis_store.client.ping)
        except redis.RedisError as exc:
            store.close()
            raise redis_error(config.redis_url, exc) from exc
        route_store = redis_store
    token = await asyncio.to_thread(store.ensure_admin_token, config.admin_token)
    if token and not config.admin_token:
        # Shown once: only its digest is stored.
        print(f"dinp: admin API token (shown once, keep it): {token}", flush=True)
    try:
        inherited = await asyncio.to_thread(route_store.current)
    except Unavailable:
        store.close()
        raise
    server = Server(config, store, route_store, inherited=inherited)
    host, port = split_hostport(config.api_listen, default_port=7070)
    try:
        runner = await start_site(make_app(server), host, port)
    except Unavailable:
        server.close()
        raise
    log.info("server API on http://%s:%d%s (database %s, domain %s)", host, port, API_PREFIX,
             store.safe_url, config.domain)
    return server, runner


async def serve(config: ServerConfig) -> None:
    """`dinp server`: the API and the reconcile loop until a signal."""
    server, runner = await start(config)
    try:
        await run_until_stopped(server.run())
    finally:
        server.release_waiters()
        await runner.cleanup()
        server.close()
