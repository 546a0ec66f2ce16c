"""The server's HTTP API (aiohttp, JSON under /api/v1/), the dashboard and OpenAPI.

Handlers validate input, call the Server, and shape JSON; errors become JSON bodies with
a status code and a message naming the field. Who may call what is decided before any
handler runs (`roles/auth.py`); handlers only filter lists to what the caller may see.
Users authenticate with an API token, agents with their node's credential or the cluster
token (both as `Authorization: Bearer …`). The accounts' routes are in
`roles/api_accounts.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import gzip
import hashlib
import logging
import re
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib import resources

import redis
from aiohttp import web

from dinp import access, acme_orders, releases, rollouts, scheduler, tokens, validation, wire
from dinp.access import DEFAULT_TEAM, Need
from dinp.accounts import Accounts
from dinp.acme_client import validity
from dinp.config import ServerConfig, require_secret, split_hostport
from dinp.const import API_PREFIX, DEFAULT_APP_PORT
from dinp.errors import Conflict, DinpError, Forbidden, InvalidInput, Unavailable
from dinp.lifecycle import run_until_stopped, start_site
from dinp.metrics import metrics_served
from dinp.models import AppRow, CertificateRow
from dinp.roles import api_accounts, certificates, logs_api
from dinp.roles.auth import actor, auth_middleware, principal
from dinp.roles.forward import forward_middleware, open_session
from dinp.roles.handlers import SERVER_KEY, flag, json_body, known_fields, srv
from dinp.roles.openapi import MAX_BODY
from dinp.roles.openapi import document as openapi_document
from dinp.roles.server import Server
from dinp.routes import RedisRouteStore, RouteStore, redis_error
from dinp.store import Store, cert_rules

log = logging.getLogger(__name__)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

OPENAPI = openapi_document()
# An app's settings that are not part of its releases, with their checks.
SETTINGS: dict[str, Callable[[object], float]] = {
    "surge": validation.surge, "deploy_timeout": validation.deploy_timeout,
    "stop_grace": validation.stop_grace, "https_redirect": validation.https_redirect,
    "hsts": validation.hsts,
}
JSON_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The API's one translation of errors: the class says the status and the body."""
    try:
        return await handler(request)
    except DinpError as exc:
        return web.json_response(exc.to_json(), status=exc.http_status)


def app_in_path(request: web.Request) -> str:
    """The app named in the URL, checked as on create: a name that could not have been
    created is a 400, never a lookup the database might match loosely."""
    return validation.app_name(request.match_info["name"], allow_reserved=True)


# -- handlers ---------------------------------------------------------------------------

async def health(request: web.Request) -> web.Response:
    """Liveness, and whether this server leads (the others forward to it)."""
    server = srv(request)
    return web.json_response({"status": "ok", "leader": server.leading,
                              "leader_url": server.leader_url})


async def list_apps(request: web.Request) -> web.Response:
    server = srv(request)
    who = principal(request)
    apps = sorted((a for a in server.snapshot.apps.values()
                   if access.visible_app(who, a.name, a.team)), key=lambda a: a.name)
    return web.json_response([server.app_view(a, detail=False) for a in apps])


def _team_for_new_app(who: access.Principal, asked: object) -> str:
    """The team a new app goes to: the one asked for (a member must be in it), else the
    caller's only team, else (an admin in no team) team default."""
    if asked is not None:
        team = validation.team_name(asked)
        if not who.admin and team not in who.teams:
            raise Forbidden(f"{who} is not a member of team {team}")
        return team
    if len(who.teams) == 1:
        return next(iter(who.teams))
    if who.admin and not who.teams:
        return DEFAULT_TEAM
    if not who.teams:
        raise Forbidden(f"{who} is in no team, so cannot create apps",
                        hint="An admin can add you to one: `dinp team add-user TEAM USER`.")
    raise InvalidInput("team", f"you are in several teams ({', '.join(sorted(who.teams))}): "
                       "say which")


async def create_app(request: web.Request) -> web.Response:
    server = srv(request)
    data = await json_body(request)
    unknown = set(data) - {"name", "image", "instances", "memory", "port", "env", "health_path",
                           "team", *SETTINGS}
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
        "https_redirect": validation.https_redirect(data.get("https_redirect", False)),
        "hsts": validation.hsts(data.get("hsts", 0)),
    }
    who = principal(request)
    team = _team_for_new_app(who, data.get("team"))
    app = await server.db(server.store.create_app, **spec, team=team, actor=actor(request))
    await server.desired_changed(lambda snapshot: snapshot.apps.get(app.name) is app)
    log.info("app %s created: %s x%d", app.name, app.image, app.instances)
    return web.json_response(server.app_view(app, detail=True), status=201)


async def get_app(request: web.Request) -> web.Response:
    server = srv(request)
    name = app_in_path(request)
    app = server.snapshot.apps.get(name)
    if app is None:
        # The snapshot may lag a write made through another server: ask the database.
        app = await server.db(server.store.get_app, name)
    show_env = _query_flag(request, "show_env")
    if show_env:  # values only for who may change the app (deploy a new env)
        access.check(principal(request), Need.APP_DEPLOY,
                     access.Target(app=name, app_team=app.team))
    view = server.app_view(app, detail=True, show_env=show_env)
    view["custom_domains"] = await _custom_domains(server, name, view["domains"])
    return web.json_response(view)


async def _custom_domains(server: Server, name: str,
                          domains: list[str]) -> list[dict[str, object]] | None:
    """The app's domains with their certificates, read only for an app that has
    domains (most have none: polling an app's page costs no query). None when the
    database does not answer: the rest of the app still shows."""
    if not domains:
        return []
    try:
        return await domain_views(server, name)
    except Unavailable as exc:
        log.warning("app %s: its domains' certificates not shown: %s", name, exc)
        return None


def _query_flag(request: web.Request, name: str) -> bool:
    raw = request.query.get(name, "false")
    if raw not in ("true", "false"):
        raise InvalidInput(name, "expected true or false")
    return raw == "true"


async def app_access(request: web.Request) -> web.Response:
    """What the caller may do with the app (the Dashboard shows its buttons from it; the
    build service asks it before building for a token that is not its own)."""
    server = srv(request)
    name = app_in_path(request)
    app = server.snapshot.apps.get(name)
    if app is None:
        app = await server.db(server.store.get_app, name)
    who = principal(request)
    target = access.Target(app=name, app_team=app.team)

    def may(need: Need) -> bool:
        try:
            access.check(who, need, target)
        except Forbidden:
            return False
        return True

    return web.json_response({"app": name, "team": app.team, "user": who.user,
                              "read": True, "deploy": may(Need.APP_DEPLOY),
                              "change": may(Need.APP_CHANGE)})


async def scale_app(request: web.Request) -> web.Response:
    server = srv(request)
    name = app_in_path(request)
    data = await json_body(request)
    unknown = set(data) - {"instances"}
    if unknown:
        raise InvalidInput(sorted(unknown)[0], "unknown field")
    count = validation.instances(data.get("instances"))
    app = await server.db(server.store.scale_app, name, count, actor=actor(request))
    await server.desired_changed()
    return web.json_response(server.app_view(app, detail=True))


async def app_settings(request: web.Request) -> web.Response:
    """How the app is rolled out and stopped: takes effect from the next rollout (and
    containers started from now on), without a release."""
    server = srv(request)
    name = app_in_path(request)
    data = await json_body(request)
    known_fields(data, set(SETTINGS))
    app = await server.db(server.store.update_settings, name,
                          {k: SETTINGS[k](v) for k, v in data.items()}, actor=actor(request))
    await server.desired_changed()
    return web.json_response(server.app_view(app, detail=True))


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
    app = await server.db(server.store.deploy, name, change, actor=actor(request))
    return await _released(request, app)


async def rollback_app(request: web.Request) -> web.Response:
    server = srv(request)
    name = app_in_path(request)
    data = await json_body(request)
    known_fields(data, {"release"})
    version = data.get("release")
    if version is not None:
        version = validation.whole_number(version)
        if version is None or not 1 <= version <= wire.MAX_NUMBER:
            raise InvalidInput("release", "expected a release number (1 or more)")
    app = await server.db(server.store.rollback, name, version, actor=actor(request))
    return await _released(request, app)


async def restart_app(request: web.Request) -> web.Response:
    """A new release equal to the current one: every instance replaced, rolling."""
    server = srv(request)
    name = app_in_path(request)
    app = await server.db(server.store.deploy, name, releases.Change(restart=True),
                          actor=actor(request))
    return await _released(request, app)


async def set_env(request: web.Request) -> web.Response:
    server = srv(request)
    name = app_in_path(request)
    data = await json_body(request)
    known_fields(data, {"set", "unset"})
    change = releases.parse_change({"env": data.get("set") or {},
                                    "unset": data.get("unset") or []})
    app = await server.db(server.store.deploy, name, change, actor=actor(request))
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
    """The app's domains and their certificates: state, expiry, the last error (never
    the key)."""
    server = srv(request)
    return web.json_response(await domain_views(server, app_in_path(request)))


async def domain_views(server: Server, name: str) -> list[dict[str, object]]:
    """The app's domains as GET /apps/NAME/domains shows them (and GET /apps/NAME)."""
    rows = await server.db(server.store.domains, name)
    return [{"domain": d.domain, "created_at": d.created_at, "tls": c is not None,
             "certificate": certificate_view(c) if c else None} for d, c in rows]


def certificate_view(row: CertificateRow) -> dict[str, object]:
    rules = cert_rules(row)
    return {"state": row.state, "summary": acme_orders.describe(rules, row.last_error),
            "attention": acme_orders.attention(rules, row.last_error),
            "serial": validity(row.chain_pem)[2] if row.chain_pem else None,
            "not_after": row.not_after, "issued_at": row.issued_at,
            "last_error": row.last_error, "attempts": row.attempts,
            "next_attempt_at": row.next_attempt_at or None}


async def add_domain(request: web.Request) -> web.Response:
    """Route a custom domain to the app (written as the original's /cname/<domain>);
    with `tls`, the leader orders its certificate by ACME."""
    server = srv(request)
    name = app_in_path(request)
    data = await json_body(request)
    known_fields(data, {"domain", "tls"})
    domain = validation.domain(data.get("domain"), platform=server.config.domain)
    tls = data.get("tls", False)
    if not isinstance(tls, bool):
        raise InvalidInput("tls", f"{tls!r} is not true or false")
    if tls and not server.config.acme_directory:
        # A valid request this server cannot carry out: a conflict with its setup.
        raise Conflict("--tls: this server has no ACME directory to order certificates "
                       "from; nothing was added",
                       hint="An operator sets acme_directory in [server] of dinp.toml "
                       "(DINP_ACME_DIRECTORY; with dinp up: --acme-directory, or [up]), "
                       "e.g. Let's Encrypt's https://acme-v02.api.letsencrypt.org/directory.")
    await server.db(server.store.add_domain, name, domain, tls=tls, actor=actor(request))
    await server.desired_changed()
    if tls:
        server.certifier.wake()
    return web.json_response({"app": name, "domain": domain, "tls": tls}, status=201)


async def remove_domain(request: web.Request) -> web.Response:
    server = srv(request)
    name = app_in_path(request)
    domain = validation.domain(request.match_info["domain"])
    await server.db(server.store.remove_domain, name, domain, actor=actor(request))
    await server.desired_changed()
    server.certifier.wake()  # to revoke its certificate
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
    who = actor(request)
    app = await server.db(server.store.record_verdict, name, app.release,
                          rollouts.CANCELLED, f"cancelled by {who.user}", actor=who)
    return await _released(request, app)


async def delete_app(request: web.Request) -> web.Response:
    server = srv(request)
    name = app_in_path(request)
    await server.db(server.store.delete_app, name, actor=actor(request))
    await server.desired_changed()
    server.certifier.wake()  # to revoke its domains' certificates
    return web.json_response({"deleted": name})


async def list_nodes(request: web.Request) -> web.Response:
    return web.json_response(srv(request).node_views())


async def status(request: web.Request) -> web.Response:
    """The whole platform at a glance: nodes, the apps the caller may see with their
    state, and the routers with the route table revision each serves."""
    server = srv(request)
    who = principal(request)
    apps = sorted((a for a in server.snapshot.apps.values()
                   if access.visible_app(who, a.name, a.team)), key=lambda a: a.name)
    return web.json_response({
        "nodes": server.node_views(),
        "apps": [{k: v for k, v in server.app_view(a, detail=False).items()
                  if k in STATUS_FIELDS} for a in apps],
        "routers": server.router_views(),
        "route_table": {"rev": server.routes.rev, "hosts": len(server.routes.hosts)},
        "cluster": server.cluster_id,
    })


STATUS_FIELDS = frozenset({"name", "team", "state", "instances", "status", "release",
                           "url", "memory_mb"})


async def drain_node(request: web.Request) -> web.Response:
    """Move every instance off a node (new ones start elsewhere first); `undo` makes it
    take instances again."""
    server = srv(request)
    node = validation.node_name(request.match_info["node"])
    data = await json_body(request)
    known_fields(data, {"undo"})
    undo = flag(data, "undo")
    row = await server.db(server.store.set_node_status, node,
                          scheduler.READY if undo else scheduler.DRAINING, actor=actor(request))
    await server.desired_changed()
    return web.json_response({"name": row.name, "status": row.status})


async def list_events(request: web.Request) -> web.Response:
    """Events newest first: an admin sees all; a member those of their teams' apps and
    their own changes; a CI token its app's."""
    server = srv(request)
    who = principal(request)
    app = request.query.get("app")
    if app is not None:
        app = validation.app_name(app, allow_reserved=True, field="app")
    user = request.query.get("user")
    if user is not None:
        user = validation.user_name(user)
    raw = request.query.get("limit", "50")
    limit = int(raw) if re.fullmatch(r"[0-9]{1,4}", raw) else 0
    if not 1 <= limit <= 1000:
        raise InvalidInput("limit", "expected a whole number from 1 to 1000")
    raw = request.query.get("after", "0")
    after = int(raw) if re.fullmatch(r"[0-9]{1,13}", raw) else -1
    if not 0 <= after <= wire.MAX_NUMBER:
        raise InvalidInput("after", f"expected an event id from 0 to {wire.MAX_NUMBER}")
    visible = None
    if who.app is not None:
        visible = (frozenset({who.app}), "")
    elif not who.admin:
        visible = (frozenset(a.name for a in server.snapshot.apps.values()
                             if a.team in who.teams), who.user)
    with contextlib.suppress(Unavailable):  # the events read below says so
        await server.write_events()  # the heartbeats' latest, not a batch later
    rows = await server.db(server.store.events, app=app, user=user, visible=visible,
                           after=after, limit=limit)
    return web.json_response([
        {"id": r.id, "at": r.at, "app": r.app, "node": r.node, "message": r.message,
         "user": r.user, "source": r.source} for r in rows
    ])


async def heartbeat(request: web.Request) -> web.Response:
    server = srv(request)
    data = await json_body(request)
    node = request.match_info["node"]
    hb = (wire.parse_beat(node, data) if isinstance(data, dict) and "same_as" in data
          else wire.parse_heartbeat(node, data))
    return web.json_response(await server.heartbeat(hb))


async def node_credential(request: web.Request) -> web.Response:
    """A new agent credential for a node: it reports for that node only. The one made
    before stops working once the servers read the new generation (within a reconcile)."""
    server = srv(request)
    node = validation.node_name(request.match_info["node"])
    generation = await server.db(server.accounts.new_node_generation, node,
                                 actor=actor(request))
    await server.desired_changed()
    return web.json_response({"node": node, "credential": tokens.node_credential(
        server.config.cluster_token, node, generation)})


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


@dataclass(frozen=True)
class StaticFile:
    body: bytes
    gzipped: bytes
    content_type: str
    etag: str


STATIC_TYPES = {".html": "text/html", ".css": "text/css", ".js": "text/javascript",
                ".svg": "image/svg+xml"}
# The Dashboard loads nothing but its own files and talks to this server only.
DASHBOARD_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
                 "connect-src 'self'; base-uri 'none'; form-action 'self'; "
                 "frame-ancestors 'none'")


def _static_files() -> dict[str, StaticFile]:
    """The Dashboard's files (src/dinp/static/), read and compressed once: they are small
    and do not change while the server runs."""
    files = {}
    for entry in resources.files("dinp").joinpath("static").iterdir():
        kind = STATIC_TYPES.get("." + entry.name.rpartition(".")[2])
        if kind is None or not entry.is_file():
            continue
        body = entry.read_bytes()
        files[entry.name] = StaticFile(body, gzip.compress(body, mtime=0), kind,
                                       '"' + hashlib.sha256(body).hexdigest()[:20] + '"')
    return files


STATIC = _static_files()


def _serve_static(request: web.Request, name: str) -> web.Response:
    item = STATIC.get(name)
    if item is None:
        raise web.HTTPNotFound()
    # no-cache: the browser asks again each time, and gets a bodiless 304 while unchanged.
    headers = {"ETag": item.etag, "Cache-Control": "no-cache", "Vary": "Accept-Encoding",
               "X-Content-Type-Options": "nosniff", "Content-Security-Policy": DASHBOARD_CSP,
               "Referrer-Policy": "no-referrer"}
    if item.etag in request.headers.get("If-None-Match", ""):
        return web.Response(status=304, headers=headers)
    body = item.body
    if "gzip" in request.headers.get("Accept-Encoding", ""):
        body, headers["Content-Encoding"] = item.gzipped, "gzip"
    return web.Response(body=body, headers=headers, content_type=item.content_type,
                        charset="utf-8")


async def dashboard(request: web.Request) -> web.Response:
    return _serve_static(request, "dashboard.html")


async def static_file(request: web.Request) -> web.Response:
    """The Dashboard's scripts and styles (public, like the page: it signs in itself)."""
    return _serve_static(request, request.match_info["file"])


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(OPENAPI)


def make_app(server: Server) -> web.Application:
    app = web.Application(
        middlewares=[errors_middleware, forward_middleware(server), auth_middleware(server)],
        client_max_size=MAX_BODY,
    )
    app.cleanup_ctx.append(open_session)
    api_accounts.add_routes(app)
    app[SERVER_KEY] = server
    p = API_PREFIX
    app.router.add_get("/", dashboard)
    app.router.add_get("/static/{file}", static_file)
    app.router.add_get(f"{p}/health", health)
    app.router.add_get(f"{p}/openapi.json", openapi)
    app.router.add_get(f"{p}/apps", list_apps)
    app.router.add_post(f"{p}/apps", create_app)
    app.router.add_get(f"{p}/apps/{{name}}", get_app)
    app.router.add_post(f"{p}/apps/{{name}}/scale", scale_app)
    app.router.add_post(f"{p}/apps/{{name}}/settings", app_settings)
    app.router.add_get(f"{p}/apps/{{name}}/access", app_access)
    app.router.add_post(f"{p}/apps/{{name}}/deploy", deploy_app)
    app.router.add_post(f"{p}/apps/{{name}}/deploy/cancel", cancel_deploy)
    app.router.add_post(f"{p}/apps/{{name}}/rollback", rollback_app)
    app.router.add_post(f"{p}/apps/{{name}}/restart", restart_app)
    app.router.add_post(f"{p}/apps/{{name}}/env", set_env)
    app.router.add_get(f"{p}/apps/{{name}}/releases", list_releases)
    app.router.add_get(f"{p}/apps/{{name}}/logs", logs_api.app_logs)
    app.router.add_get(f"{p}/apps/{{name}}/domains", list_domains)
    app.router.add_post(f"{p}/apps/{{name}}/domains", add_domain)
    app.router.add_delete(f"{p}/apps/{{name}}/domains/{{domain}}", remove_domain)
    app.router.add_delete(f"{p}/apps/{{name}}", delete_app)
    app.router.add_get(f"{p}/nodes", list_nodes)
    app.router.add_get(f"{p}/status", status)
    app.router.add_post(f"{p}/nodes/{{node}}/drain", drain_node)
    app.router.add_post(f"{p}/nodes/{{node}}/credential", node_credential)
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
    certificates.policy(config)  # a bad ACME setting is refused before anything opens
    store = await asyncio.to_thread(Store, config.database_url)
    if route_store is None:
        redis_store = RedisRouteStore(config.redis_url)
        try:
            await asyncio.to_thread(redis_store.client.ping)
        except redis.RedisError as exc:
            store.close()
            raise redis_error(config.redis_url, exc) from exc
        route_store = redis_store
    token = await asyncio.to_thread(Accounts(store).ensure_defaults, config.admin_token)
    if token and not config.admin_token:
        # Shown once: only its digest is stored.
        print(f"dinp: admin API token (shown once, keep it): {token}", flush=True)
    try:
        inherited = await asyncio.to_thread(route_store.current)
    except Unavailable:
        store.close()
        raise
    server = Server(config, store, route_store, inherited=inherited)
    server.leading = False  # until the lease says otherwise, at once
    try:
        await server.claim()
    except BaseException:
        server.close()
        raise
    host, port = split_hostport(config.api_listen, default_port=7070)
    try:
        runner = await start_site(make_app(server), host, port)
    except Unavailable:
        server.close()
        raise
    log.info("server API on http://%s:%d%s (database %s, domain %s); %s", host, port,
             API_PREFIX, store.safe_url, config.domain,
             "leading" if server.leading else f"standby, forwarding to {server.leader_url}")
    return server, runner


def tune_gc() -> None:
    """Keep the cyclic garbage collector's full passes rare and short. A 5,000-node
    server holds millions of objects (instance rows, reports, assignments), almost none
    in reference cycles, and a full pass over them stopped everything for most of a
    second every few seconds: what the server holds at its start is set aside
    (`gc.freeze`, it is freed by reference counting as before, only not scanned), and
    young collections run after 50,000 allocations instead of 700, so objects that die
    young never get promoted toward a full pass."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)


async def serve(config: ServerConfig) -> None:
    """`dinp server`: the API and the reconcile loop until a signal."""
    # The reconcile pass plans in a thread; a shorter switch interval than Python's 5 ms
    # hands the event loop the interpreter sooner, so heartbeats wait less meanwhile.
    sys.setswitchinterval(0.001)
    server, runner = await start(config)
    tune_gc()
    try:
        async with metrics_served(server.metrics.registry, config.metrics_listen,
                                  key="metrics_listen in [server]", default_port=7073):
            await run_until_stopped(server.run())
    finally:
        server.release_waiters()
        await runner.cleanup()
        await asyncio.to_thread(server.resign)
        server.close()
