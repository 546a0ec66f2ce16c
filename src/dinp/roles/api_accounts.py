"""The API's accounts: signing in and out, users, teams with their quotas, and tokens.

Who may call each route is decided before the handler runs (`roles/auth.py`, from the
route's `need` in `roles/openapi.py`); the handlers below only narrow what a member may
see or do further (their own tokens, their own teams).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from dinp import validation
from dinp.access import Actor
from dinp.const import API_PREFIX
from dinp.errors import Forbidden, InvalidInput
from dinp.quotas import Quota
from dinp.roles.auth import actor, principal
from dinp.roles.forward import client_address
from dinp.roles.handlers import flag, json_body, known_fields, srv


async def login(request: web.Request) -> web.Response:
    """A session token for a user name and password (what `dinp login --user` and the
    Dashboard use); it expires after session_ttl."""
    server = srv(request)
    data = await json_body(request)
    known_fields(data, {"user", "password"})
    name = validation.user_name(data.get("user"))
    password = data.get("password")
    if not isinstance(password, str) or not password or len(password) > 1024:
        raise InvalidInput("password", "expected the user's password")
    token, info = await server.db(server.accounts.login, name, password,
                                  ttl=server.config.session_ttl,
                                  actor=Actor(name, client_address(server, request)))
    return web.json_response({"token": token, "info": info})


async def logout(request: web.Request) -> web.Response:
    """Revoke the session token this request came with; other tokens stay (they are
    revoked with `dinp token revoke`)."""
    server = srv(request)
    who = principal(request)
    if who.session and who.token_id is not None:
        await server.db(server.accounts.revoke_token, who.token_id, who=who,
                        actor=actor(request))
    return web.json_response({"user": who.user, "revoked": who.session})


async def whoami(request: web.Request) -> web.Response:
    who = principal(request)
    return web.json_response({"user": who.user, "role": "admin" if who.admin else "member",
                              "teams": sorted(who.teams), "app": who.app,
                              "token": who.token_id})


# -- users -------------------------------------------------------------------------------

async def list_users(request: web.Request) -> web.Response:
    server = srv(request)
    return web.json_response(await server.db(server.accounts.users))


async def create_user(request: web.Request) -> web.Response:
    server = srv(request)
    data = await json_body(request)
    known_fields(data, {"name", "admin", "password", "teams"})
    admin = flag(data, "admin")
    teams = data.get("teams", [])
    if not isinstance(teams, list) or len(teams) > 100:
        raise InvalidInput("teams", "expected a list of team names")
    password = data.get("password")
    user, token = await server.db(
        server.accounts.create_user, name=validation.user_name(data.get("name"), "name"),
        admin=admin, password=None if password is None else validation.password(password),
        teams=[validation.team_name(t, "teams") for t in teams], actor=actor(request))
    return web.json_response({"user": user, "token": token}, status=201)


async def disable_user(request: web.Request) -> web.Response:
    server = srv(request)
    name = validation.user_name(request.match_info["user"])
    data = await json_body(request)
    known_fields(data, {"undo"})
    undo = flag(data, "undo")
    return web.json_response(await server.db(server.accounts.set_disabled, name, not undo,
                                             actor=actor(request)))


async def set_password(request: web.Request) -> web.Response:
    server = srv(request)
    name = validation.user_name(request.match_info["user"])
    data = await json_body(request)
    known_fields(data, {"password"})
    await server.db(server.accounts.set_password, name, validation.password(
        data.get("password")), actor=actor(request))
    return web.json_response({"user": name, "password": True})


# -- teams -------------------------------------------------------------------------------

def _quota(data: dict[str, Any], base: Quota | None = None) -> Quota:
    base = base or Quota()
    return Quota(
        instances=validation.quota_instances(data["instances"]) if "instances" in data
        else base.instances,
        memory_mb=validation.quota_memory(data["memory"]) if "memory" in data
        else base.memory_mb)


async def list_teams(request: web.Request) -> web.Response:
    server = srv(request)
    who = principal(request)
    views = await server.db(server.accounts.teams, None if who.admin else who.teams)
    return web.json_response([v.to_json() for v in views])


async def create_team(request: web.Request) -> web.Response:
    server = srv(request)
    data = await json_body(request)
    known_fields(data, {"name", "memory", "instances"})
    view = await server.db(server.accounts.create_team,
                           validation.team_name(data.get("name"), "name"), _quota(data),
                           actor=actor(request))
    return web.json_response(view.to_json(), status=201)


def _team_in_path(request: web.Request) -> str:
    return validation.team_name(request.match_info["team"])


async def show_team(request: web.Request) -> web.Response:
    server = srv(request)
    view = await server.db(server.accounts.team, _team_in_path(request))
    return web.json_response(view.to_json())


async def delete_team(request: web.Request) -> web.Response:
    server = srv(request)
    team = _team_in_path(request)
    await server.db(server.accounts.delete_team, team, actor=actor(request))
    return web.json_response({"deleted": team})


async def add_member(request: web.Request) -> web.Response:
    server = srv(request)
    data = await json_body(request)
    known_fields(data, {"user"})
    view = await server.db(server.accounts.add_member, _team_in_path(request),
                           validation.user_name(data.get("user")), actor=actor(request))
    return web.json_response(view.to_json())


async def remove_member(request: web.Request) -> web.Response:
    server = srv(request)
    view = await server.db(server.accounts.remove_member, _team_in_path(request),
                           validation.user_name(request.match_info["user"]),
                           actor=actor(request))
    return web.json_response(view.to_json())


async def set_quota(request: web.Request) -> web.Response:
    """Set what is given (memory, instances; null: no limit); the rest stays."""
    server = srv(request)
    team = _team_in_path(request)
    data = await json_body(request)
    known_fields(data, {"memory", "instances"})
    view = await server.db(server.accounts.team, team)
    quota = _quota(data, Quota(view.team.instances_quota, view.team.memory_quota_mb))
    view = await server.db(server.accounts.set_quota, team, quota, actor=actor(request))
    return web.json_response(view.to_json())


# -- tokens ------------------------------------------------------------------------------

async def list_tokens(request: web.Request) -> web.Response:
    server = srv(request)
    who = principal(request)
    everyone = request.query.get("all", "false")
    if everyone not in ("true", "false"):
        raise InvalidInput("all", "expected true or false")
    if everyone == "true" and not who.admin:
        raise Forbidden(f"{who} may list only their own tokens")
    rows = await server.db(server.accounts.tokens, None if everyone == "true" else who.user)
    return web.json_response(rows)


async def create_token(request: web.Request) -> web.Response:
    """A token of the caller's (an admin may make one for anyone); with `app`, it may
    only read, deploy, restart and roll back that app, which the caller must be allowed
    to change."""
    server = srv(request)
    who = principal(request)
    data = await json_body(request)
    known_fields(data, {"name", "app", "expires_in", "user"})
    owner = validation.user_name(data["user"]) if "user" in data else who.user
    if owner != who.user and not who.admin:
        raise Forbidden(f"{who} may make tokens only for themselves")
    app = data.get("app")
    if app is not None:
        app = validation.app_name(app, allow_reserved=True, field="app")
        row = server.snapshot.apps.get(app) or await server.db(server.store.find_app, app)
        if row is not None and not who.admin and row.team not in who.teams:
            raise Forbidden(f"app {app} belongs to team {row.team}, and {who} is not a "
                            "member of it")
    expires = data.get("expires_in")
    token, info = await server.db(
        server.accounts.create_token, owner=owner,
        name=validation.token_name(data.get("name")), app=app,
        expires_in=None if expires is None else validation.seconds(expires, "expires_in"),
        actor=actor(request))
    return web.json_response({"token": token, "info": info}, status=201)


async def revoke_token(request: web.Request) -> web.Response:
    server = srv(request)
    raw = request.match_info["id"]
    token_id = int(raw) if raw.isascii() and raw.isdigit() and len(raw) <= 13 else 0
    if token_id < 1:
        raise InvalidInput("id", "expected a token's number (see `dinp token list`)")
    info = await server.db(server.accounts.revoke_token, token_id, who=principal(request),
                           actor=actor(request))
    return web.json_response(info)


def add_routes(app: web.Application) -> None:
    p = API_PREFIX
    app.router.add_post(f"{p}/login", login)
    app.router.add_post(f"{p}/logout", logout)
    app.router.add_get(f"{p}/whoami", whoami)
    app.router.add_get(f"{p}/users", list_users)
    app.router.add_post(f"{p}/users", create_user)
    app.router.add_post(f"{p}/users/{{user}}/disable", disable_user)
    app.router.add_post(f"{p}/users/{{user}}/password", set_password)
    app.router.add_get(f"{p}/teams", list_teams)
    app.router.add_post(f"{p}/teams", create_team)
    app.router.add_get(f"{p}/teams/{{team}}", show_team)
    app.router.add_delete(f"{p}/teams/{{team}}", delete_team)
    app.router.add_post(f"{p}/teams/{{team}}/users", add_member)
    app.router.add_delete(f"{p}/teams/{{team}}/users/{{user}}", remove_member)
    app.router.add_post(f"{p}/teams/{{team}}/quota", set_quota)
    app.router.add_get(f"{p}/tokens", list_tokens)
    app.router.add_post(f"{p}/tokens", create_token)
    app.router.add_delete(f"{p}/tokens/{{id}}", revoke_token)
